//! What a probe costs: per-sample gradients over a training set, the
//! Frequent Directions sketch at a given ℓ (or `auto`), and the statistics
//! read off it, against an sgemm measured in the same run; then the same
//! probe on more threads (its shards computed in parallel, as a worker's
//! idle slots compute them), timed side by side and checked bit-identical.
//!
//! `cargo run --release -p gradsweep-shared --example probe_profile [MODEL] [DATASET] [SAMPLES] [ELL|auto] [THREADS,…]`
//!
//! Defaults: `small-lenet mnist 8192 1024` (MNIST from `GRADSWEEP_DATA_DIR`,
//! else `data/`, as laid out by `deploy/fetch-data.sh`; with `digits` it
//! needs no files). `SAMPLES` takes the first samples of the training set
//! (0: all). The weights are the model's initial ones: the cost of a pass
//! does not depend on them, an auto probe's number of passes does.
//! `THREADS` (default `1,2`): the thread counts to compare; the first one's
//! run gives the breakdown.
#![allow(clippy::print_stdout)] // the report is this tool's output

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use gradsweep_shared::data::{DatasetName, load_split};
use gradsweep_shared::linalg::sgemm;
use gradsweep_shared::model::Model;
use gradsweep_shared::rng::{Rng, Stream};
use gradsweep_shared::run::{ProbeInput, probe};
use gradsweep_shared::shards::{FixedThreads, ProbeHelp};
use gradsweep_shared::spec::{ProbeConfig, RunSpec, SketchSize, TrainConfig};
use gradsweep_shared::stats::SpectrumStats;

fn main() {
    let arg = |i: usize, default: &str| std::env::args().nth(i).unwrap_or_else(|| default.to_string());
    let (model_name, dataset) = (arg(1, "small-lenet"), arg(2, "mnist"));
    let samples: usize = arg(3, "8192").parse().expect("SAMPLES is a number");
    let size = match arg(4, "1024").as_str() {
        "auto" => SketchSize::Auto,
        l => SketchSize::Fixed(l.parse().expect("ELL is a number or auto")),
    };
    let train =
        TrainConfig { model: model_name.clone(), dataset: dataset.clone(), normalize: true, ..Default::default() };
    let spec = RunSpec {
        train,
        probe: ProbeConfig { sketch_rank: size, ..Default::default() },
        seed: 0,
        user: Default::default(),
    };
    let model = Model::parse(&model_name).expect("model");
    let mut split = load_split(&DatasetName::parse(&dataset).expect("dataset"), &spec.train.data_options())
        .expect("data (run deploy/fetch-data.sh for MNIST)");
    if samples > 0 && samples < split.train.len() {
        split.train.x.truncate(samples * split.train.dim);
        split.train.y.truncate(samples);
    }
    let n = split.train.len();
    let d = model.param_count();
    let (params, buffers) = (model.init(0), model.init_buffers());

    // The same run's sgemm rate, best of many.
    let mut rng = Rng::new(3, Stream::Other(4));
    let a: Vec<f32> = (0..128 * 784).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..784 * 256).map(|_| rng.normal() as f32).collect();
    let mut c = vec![0f32; 128 * 256];
    let mut best = f64::INFINITY;
    for _ in 0..200 {
        let t = Instant::now();
        sgemm(128, 784, 256, 1.0, &a, &b, 0.0, &mut c);
        best = best.min(t.elapsed().as_secs_f64());
    }
    let sgemm_rate = 2.0 * 128.0 * 784.0 * 256.0 / best;

    // Per-sample gradients alone.
    let block = spec.probe.block_size as usize;
    let mut out = vec![0f32; block * d];
    let (mut xb, mut yb) = (vec![], vec![]);
    let t = Instant::now();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(block) {
        split.train.gather(chunk, &mut xb, &mut yb);
        model.per_sample_gradients(&params, &buffers, &xb, &yb, &mut out[..chunk.len() * d]);
    }
    let t_grads = t.elapsed().as_secs_f64();

    // The whole probe, as a worker runs it.
    let t = Instant::now();
    let mut passes = vec![];
    let mut last = Instant::now();
    let mut on_pass = |p: gradsweep_shared::run::ProbePass| {
        passes.push((p.ell, p.rank, last.elapsed().as_secs_f64()));
        last = Instant::now();
    };
    let threads: Vec<usize> =
        arg(5, "1,2").split(',').map(|s| s.trim().parse().expect("THREADS is a list of numbers")).collect();
    let input = ProbeInput { model: &model, params: &params, buffers: &buffers, train: &split.train, spec: &spec };
    let stop = AtomicBool::new(false);
    let lend = FixedThreads(threads[0].saturating_sub(1));
    let record = probe(input, (0, 0, 0), &stop, ProbeHelp::threads(&lend), &mut on_pass).expect("not stopped");
    let t_probe = t.elapsed().as_secs_f64();
    // The same probe on the other thread counts, side by side.
    let mut side_by_side = vec![];
    for &th in &threads[1..] {
        let t = Instant::now();
        let other =
            probe(input, (0, 0, 0), &stop, ProbeHelp::threads(&FixedThreads(th.saturating_sub(1))), &mut |_| {})
                .expect("not stopped");
        side_by_side.push((th, t.elapsed().as_secs_f64(), other == record));
    }
    let t = Instant::now();
    let st = SpectrumStats::from_sketch(&record.sketch);
    let t_stats = t.elapsed().as_secs_f64();
    // Two seeds' sketches merged as the coordinator merges them: decoded.
    let bytes = record.sketch.encode();
    let (mut a, b) = (
        gradsweep_shared::sketch::FdSketch::decode(&bytes, Some(d)).expect("decodes"),
        gradsweep_shared::sketch::FdSketch::decode(&bytes, Some(d)).expect("decodes"),
    );
    let t = Instant::now();
    a.merge(&b).expect("same shape");
    let t_merge = t.elapsed().as_secs_f64();
    let sizing = record.meta.sizing.expect("probes record their sizing");
    // FD flops of one pass at ℓ, counted as for full shrinks: per row, the
    // 2ℓ-row Gram's share (4ℓd) plus the rotation's (2ℓd), times 2.
    let fd_flops: f64 = sizing.passes.iter().map(|&l| 12.0 * l as f64 * d as f64 * n as f64).sum();
    let t_fd = (t_probe - t_grads * sizing.passes.len() as f64).max(1e-9);
    println!("{model_name} (d = {d}) on {n} samples of {dataset}; sgemm 128×784×256 {:.1} GFLOP/s", sgemm_rate / 1e9);
    println!("  per-sample gradients      {:>8.2} s = {:.0} samples/s", t_grads, n as f64 / t_grads);
    println!(
        "  probe (passes at ℓ = {:?}) {:>8.2} s = {:.0} samples/s per pass; stop: {:?}",
        sizing.passes,
        t_probe,
        n as f64 * sizing.passes.len() as f64 / t_probe,
        sizing.stop
    );
    for (ell, rank, secs) in &passes {
        println!("    pass at ℓ = {ell:<5} {secs:>8.2} s (statistics included), rank in [{}, {}]", rank.lo, rank.hi);
    }
    println!(
        "  of which sketching         {:>8.2} s = {:.1} GFLOP/s ({:.1} % of sgemm)",
        t_fd,
        fd_flops / t_fd / 1e9,
        100.0 * fd_flops / t_fd / sgemm_rate
    );
    println!("  statistics (eigenvalues)   {:>8.2} s", t_stats);
    println!(
        "  merge of two such sketches {:>8.2} s (ℓ = {}, {:.1} MB each on the wire)",
        t_merge,
        record.sketch.ell(),
        bytes.len() as f64 / 1e6
    );
    let width = |x: f64| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x:.1}") };
    println!(
        "  rank at λ_max·d·ε_f32      {} ({})",
        st.rank.display(d as f64, width),
        if st.rank_resolved {
            "resolved".to_string()
        } else {
            format!("unresolved; needs ℓ ≈ {:?}", st.rank_needs_ell)
        }
    );
    println!(
        "  shards                     {} of {} samples",
        n.div_ceil(spec.probe.shard_samples.max(1) as usize),
        spec.probe.shard_samples
    );
    for (th, secs, same) in side_by_side {
        println!(
            "  on {th} threads              {:>8.2} s = {:.2}× the time on {} ({})",
            secs,
            secs / t_probe,
            threads[0],
            if same { "bit-identical" } else { "DIFFERENT RESULT" }
        );
    }
}
