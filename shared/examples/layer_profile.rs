//! Where a train step's time goes, layer by layer: forward and backward of
//! each layer of a model at batch 128 on one thread.
//!
//! `cargo run --release -p gradsweep-shared --example layer_profile [MODEL]`
#![allow(clippy::print_stdout)] // the report is this tool's output

use std::time::Instant;

use gradsweep_shared::model::Model;
use gradsweep_shared::nn::Mode;
use gradsweep_shared::rng::{Rng, Stream};

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "small-lenet".into());
    let m = Model::parse(&name).expect("model");
    let b = 128;
    let p = m.init(0);
    let mut buf = m.init_buffers();
    let mut r = Rng::new(1, Stream::Other(9));
    let x: Vec<f32> = (0..b * m.input_dim()).map(|_| r.uniform() as f32).collect();
    let layers = m.layers();
    let (mut fwd, mut bwd) = (vec![0.0f64; layers.len()], vec![0.0f64; layers.len()]);
    let reps = 30;
    for _ in 0..reps {
        let mut rng = Rng::new(0, Stream::Dropout(0));
        let mut caches = vec![];
        let mut a = x.clone();
        for (i, l) in layers.iter().enumerate() {
            let t = Instant::now();
            let (y, c) = l.forward(
                &p[l.offset..l.offset + l.params],
                &mut buf[l.buf_offset..l.buf_offset + l.buffers],
                a,
                b,
                Mode::Train,
                &mut rng,
            );
            fwd[i] += t.elapsed().as_secs_f64();
            caches.push(c);
            a = y;
        }
        let mut g = vec![0.0f32; m.param_count()];
        let mut delta = vec![1e-3f32; a.len()];
        for (i, l) in layers.iter().enumerate().rev() {
            let need_dx = layers[..i].iter().any(|l| l.params > 0);
            let t = Instant::now();
            delta = l.backward(
                &p[l.offset..l.offset + l.params],
                &caches[i],
                &delta,
                b,
                need_dx,
                Some(&mut g[l.offset..l.offset + l.params]),
                None,
            );
            bwd[i] += t.elapsed().as_secs_f64();
            if !need_dx {
                break;
            }
        }
    }
    let total: f64 = fwd.iter().sum::<f64>() + bwd.iter().sum::<f64>();
    println!("{name}, batch {b}: {:.0} samples/s in layers", (reps * b) as f64 / total);
    for (i, l) in layers.iter().enumerate() {
        println!(
            "{:>5.1} %  fwd {:>5.1} %  bwd {:>5.1} %  {}",
            100.0 * (fwd[i] + bwd[i]) / total,
            100.0 * fwd[i] / total,
            100.0 * bwd[i] / total,
            l.describe()
        );
    }
}
