//! Engine benchmark: training steps and per-sample gradients of small-lenet
//! and an MLP at batch 128 on one thread, against an sgemm of similar shape
//! measured in the same run; Frequent Directions updates and merges; and
//! tiny-fc's training with and without per-step trajectory recording.
//!
//! `cargo bench -p gradsweep-shared --bench engine` prints criterion's
//! timings and then a summary: samples/s, achieved GFLOP/s, the fraction of
//! the sgemm rate, and the per-sample/batch cost ratio.

// The report on stdout is this benchmark's output.
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use gradsweep_shared::linalg::{project_rows, random_orthonormal, sgemm};
use gradsweep_shared::model::Model;
use gradsweep_shared::nn::LayerKind;
use gradsweep_shared::rng::{Rng, Stream};
use gradsweep_shared::sketch::{ExactCovariance, FdSketch};
use gradsweep_shared::trajectory::{TrajectoryRecorder, default_lags};

const BATCH: usize = 128;
const MLP: &str = "mlp:784-256-128-10";

struct Setup {
    model: Model,
    params: Vec<f32>,
    buffers: Vec<f32>,
    x: Vec<f32>,
    y: Vec<u32>,
}

fn setup(name: &str) -> Setup {
    let model = Model::parse(name).unwrap();
    let params = model.init(0);
    let buffers = model.init_buffers();
    let mut r = Rng::new(1, Stream::Other(9));
    let x = (0..BATCH * model.input_dim()).map(|_| r.uniform() as f32).collect();
    let y = (0..BATCH).map(|_| r.below(model.classes() as u64) as u32).collect();
    Setup { model, params, buffers, x, y }
}

impl Setup {
    fn train_step(&mut self, grad: &mut [f32]) -> f64 {
        self.model.batch_gradient(
            &self.params,
            &mut self.buffers,
            &self.x,
            &self.y,
            grad,
            &mut Rng::new(0, Stream::Dropout(0)),
        )
    }

    fn per_sample(&self, out: &mut [f32]) -> f64 {
        self.model.per_sample_gradients(&self.params, &self.buffers, &self.x, &self.y, out)
    }

    /// FLOPs of one train step over the batch in dense and conv layers:
    /// forward, weight gradient, and input gradient (not for the first
    /// layer with parameters, whose input gradient is never needed).
    fn train_flops(&self) -> f64 {
        let mut f = 0.0;
        let mut first = true;
        for l in self.model.layers() {
            let fwd = match l.kind {
                LayerKind::Linear { out } => 2.0 * (l.input.size() * out) as f64,
                LayerKind::Conv2d { out, k, .. } => 2.0 * (out * l.input.c * k * k * l.output.h * l.output.w) as f64,
                _ => continue,
            };
            f += if first { 2.0 * fwd } else { 3.0 * fwd };
            first = false;
        }
        f * BATCH as f64
    }
}

/// Median seconds of `f` over runs lasting about `budget`.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let mut samples = vec![];
    let start = Instant::now();
    while start.elapsed() < budget || samples.len() < 5 {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn sgemm_rate(m: usize, k: usize, n: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let t = time(Duration::from_millis(300), || sgemm(m, k, n, 1.0, black_box(&a), black_box(&b), 0.0, &mut c));
    2.0 * (m * k * n) as f64 / t
}

fn benches(c: &mut Criterion) {
    for name in ["small-lenet", MLP] {
        let mut s = setup(name);
        let d = s.model.param_count();
        let mut g = vec![0.0; d];
        let mut out = vec![0.0; BATCH * d];
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function("train step", |b| b.iter(|| black_box(s.train_step(&mut g))));
        group.bench_function("per-sample gradients", |b| b.iter(|| black_box(s.per_sample(&mut out))));
        group.finish();
    }
    let mut group = c.benchmark_group("sgemm");
    let (m, k, n) = (BATCH, 784, 256);
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut cc = vec![0.0f32; m * n];
    group.throughput(Throughput::Elements((2 * m * k * n) as u64));
    group.bench_function("128x784x256", |bn| {
        bn.iter(|| sgemm(m, k, n, 1.0, black_box(&a), black_box(&b), 0.0, &mut cc))
    });
    group.finish();
}

fn summary() {
    println!("\nsummary (one thread, batch {BATCH}; GFLOP/s counts forward, weight- and input-gradient products)");
    let reference = sgemm_rate(BATCH, 784, 256);
    println!("sgemm 128x784x256: {:.2} GFLOP/s", reference / 1e9);
    for name in ["small-lenet", MLP] {
        let mut s = setup(name);
        let d = s.model.param_count();
        let mut g = vec![0.0; d];
        let mut out = vec![0.0; BATCH * d];
        let t_train = time(Duration::from_secs(2), || {
            black_box(s.train_step(&mut g));
        });
        let t_batch_eval = time(Duration::from_secs(1), || {
            black_box(s.model.eval_gradient(&s.params, &s.buffers, &s.x, &s.y, &mut g));
        });
        let t_ps = time(Duration::from_secs(2), || {
            black_box(s.per_sample(&mut out));
        });
        let flops = s.train_flops();
        println!(
            "{name:<20} d={d:<7} train {:>8.0} samples/s  {:>6.2} GFLOP/s ({:>5.1} % of sgemm)  per-sample {:>8.0} samples/s  per-sample/batch cost {:.2}x",
            BATCH as f64 / t_train,
            flops / t_train / 1e9,
            100.0 * flops / t_train / reference,
            BATCH as f64 / t_ps,
            t_ps / t_batch_eval,
        );
    }
}

/// Frequent Directions on per-sample-gradient-sized rows: the block update
/// (append + shrinks), a merge of two full sketches, and the exact path's
/// accumulate step.
fn sketch_summary(reference: f64) {
    let (d, ell, block) = (13_338, 64, 256);
    let mut r = Rng::new(3, Stream::Other(4));
    let rows: Vec<f32> = (0..block * d).map(|_| r.normal() as f32).collect();
    let mut sk = FdSketch::new(d, ell);
    sk.insert_block(&rows);
    let t = time(Duration::from_secs(2), || {
        sk.insert_block(black_box(&rows));
    });
    // Each shrink (every ℓ rows) is counted as the 2ℓ×d×2ℓ Gram plus the
    // ℓ×2ℓ×d rotation, although in steady state it computes only the Gram
    // blocks of the ℓ new rows (the rows the last shrink left are orthogonal).
    let shrinks = block as f64 / ell as f64;
    let flops = shrinks * (2.0 * (2 * ell * 2 * ell * d) as f64 + 2.0 * (ell * 2 * ell * d) as f64);
    println!(
        "FD update d={d} ℓ={ell}: {:>8.0} rows/s  {:>6.2} GFLOP/s ({:>5.1} % of sgemm)",
        block as f64 / t,
        flops / t / 1e9,
        100.0 * flops / t / reference
    );
    // As the coordinator merges them: decoded, so no Gram block is known.
    let base = FdSketch::decode(&sk.encode(), Some(d)).expect("own encoding");
    let other = base.clone();
    let t = time(Duration::from_secs(1), || {
        let mut m = base.clone();
        m.merge(black_box(&other)).unwrap();
        black_box(m);
    });
    println!("FD merge of two ℓ={ell} sketches, d={d}: {:.2} ms", t * 1e3);
    let small_d = 917;
    let rows_small: Vec<f32> = (0..block * small_d).map(|_| r.normal() as f32).collect();
    let mut ex = ExactCovariance::new(small_d);
    let t = time(Duration::from_secs(1), || ex.insert_block(black_box(&rows_small)));
    let flops = 2.0 * (block * small_d * small_d) as f64;
    println!("exact accumulate d={small_d}: {:>8.0} rows/s  {:>6.2} GFLOP/s (f64)", block as f64 / t, flops / t / 1e9);
}

/// tiny-fc as the limit-cycles experiment trains it (issue 15): SGD steps
/// at batch 128, then the same steps with the trajectory recorded at every
/// step as `examples/limit-cycles.toml` asks (projection on 8 directions,
/// lags up to 4,096, a 4,096-point Welch window), side by side: samples/s
/// and the recording's share of the time.
fn trajectory_summary(reference: f64) {
    let mut s = setup("tiny-fc");
    let d = s.model.param_count();
    let k = 8;
    let dirs = random_orthonormal(k, d, &mut Rng::new(5, Stream::Projection));
    let mut g = vec![0.0; d];
    let mut rec = TrajectoryRecorder::with_spectrum(k, default_lags(4096), 4096);
    let mut proj = vec![0.0f64; k];
    let lr = 1e-3f32;
    let step = |s: &mut Setup, g: &mut [f32]| {
        black_box(s.train_step(g));
        for (p, gi) in s.params.iter_mut().zip(g.iter()) {
            *p -= lr * gi;
        }
    };
    // Interleaved rounds, so that the host's drift hits both alike; the
    // share is the median of the rounds' ratios.
    let (mut t_trains, mut t_recs, mut shares, mut rowwise) = (vec![], vec![], vec![], vec![]);
    for _ in 0..7 {
        let t_train = time(Duration::from_millis(300), || step(&mut s, &mut g));
        let t_rec = time(Duration::from_millis(300), || {
            step(&mut s, &mut g);
            project_rows(&dirs, &s.params, &mut proj);
            rec.push(black_box(&proj));
        });
        // The same recording with the projection one row at a time (how it
        // was computed before `project_rows`; the same bits).
        let t_rowwise = time(Duration::from_millis(300), || {
            step(&mut s, &mut g);
            for (i, pr) in proj.iter_mut().enumerate() {
                *pr = dirs[i * d..(i + 1) * d].iter().zip(&s.params).map(|(&a, &x)| a as f64 * x as f64).sum();
            }
            rec.push(black_box(&proj));
        });
        t_trains.push(t_train);
        t_recs.push(t_rec);
        shares.push((t_rec - t_train) / t_train);
        rowwise.push((t_rowwise - t_train) / t_train);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (t_train, t_rec, share, rowwise) = (median(t_trains), median(t_recs), median(shares), median(rowwise));
    let flops = s.train_flops();
    println!(
        "tiny-fc d={d}: train {:>9.0} samples/s  {:>6.2} GFLOP/s ({:>5.1} % of sgemm); recording every step (k={k}, lags ≤ 4096, Welch 4096): {:>9.0} samples/s, {:.1} % of the step ({:.1} % projecting one row at a time; medians of 7 interleaved rounds)",
        BATCH as f64 / t_train,
        flops / t_train / 1e9,
        100.0 * flops / t_train / reference,
        BATCH as f64 / t_rec,
        100.0 * share,
        100.0 * rowwise,
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args().measurement_time(Duration::from_secs(3));
    benches(&mut c);
    c.final_summary();
    summary();
    sketch_summary(sgemm_rate(BATCH, 784, 256));
    trajectory_summary(sgemm_rate(BATCH, 784, 256));
}
