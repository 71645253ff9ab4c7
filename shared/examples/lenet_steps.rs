//! Runs a fixed number of small-lenet train steps at batch 128 (for
//! instruction-count comparisons: `perf stat -e instructions`).
use gradsweep_shared::model::Model;
use gradsweep_shared::rng::{Rng, Stream};

fn main() {
    let steps: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let m = Model::parse("small-lenet").unwrap();
    let p = m.init(0);
    let mut buf = m.init_buffers();
    let mut r = Rng::new(1, Stream::Other(9));
    let x: Vec<f32> = (0..128 * m.input_dim()).map(|_| r.uniform() as f32).collect();
    let y: Vec<u32> = (0..128).map(|_| r.below(10) as u32).collect();
    let mut g = vec![0.0; m.param_count()];
    let t = std::time::Instant::now();
    let mut acc = 0.0;
    for _ in 0..steps {
        acc += m.batch_gradient(&p, &mut buf, &x, &y, &mut g, &mut Rng::new(0, Stream::Dropout(0)));
    }
    let dt = t.elapsed().as_secs_f64();
    eprintln!("{:.0} samples/s (loss sum {acc:.3})", (steps * 128) as f64 / dt);
}
