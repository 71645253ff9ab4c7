//! Where a Frequent Directions shrink's time goes: the f64 Gram matrix of
//! the 2ℓ buffered rows (in steady state only its blocks that involve the ℓ
//! new rows), its eigendecomposition, and the whole block update
//! (which adds the rotation and the moment bookkeeping), against an sgemm
//! measured in the same run. Best of several repetitions, one thread.
//!
//! `cargo run --release -p gradsweep-shared --example fd_profile [D] [ELL]`
#![allow(clippy::print_stdout)] // the report is this tool's output

use std::time::Instant;

use gradsweep_shared::linalg::{
    EigenSolver, Split, gram_f64_of_f32, gram_f64_of_f32_groups, sgemm, sym_eigen, sym_eigen_with,
};
use gradsweep_shared::rng::{Rng, Stream};
use gradsweep_shared::sketch::FdSketch;

/// Best time of up to `reps` repetitions, stopping early once 20 s are spent.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        if start.elapsed().as_secs_f64() > 20.0 {
            break;
        }
    }
    best
}

fn main() {
    let arg = |i: usize, default: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (d, ell) = (arg(1, 13_338), arg(2, 64));
    let block = 4 * ell;
    let mut rng = Rng::new(3, Stream::Other(4));
    let rows: Vec<f32> = (0..block * d).map(|_| rng.normal() as f32).collect();
    let a: Vec<f32> = (0..128 * 784).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..784 * 256).map(|_| rng.normal() as f32).collect();
    let mut c = vec![0f32; 128 * 256];
    let rate = 2.0 * 128.0 * 784.0 * 256.0 / best(200, || sgemm(128, 784, 256, 1.0, &a, &b, 0.0, &mut c));
    let r = 2 * ell;
    let buf = &rows[..r * d];
    // In steady state the ℓ rows the last shrink left are orthogonal, and
    // only the blocks that involve the ℓ new rows are computed.
    let t_gram = best(10, || {
        std::hint::black_box(gram_f64_of_f32_groups(r, d, buf, &[0..ell]));
    });
    let t_gram_full = best(10, || {
        std::hint::black_box(gram_f64_of_f32(r, d, buf));
    });
    let g = gram_f64_of_f32(r, d, buf);
    let t_eig = best(10, || {
        std::hint::black_box(sym_eigen(r, &g));
    });
    let t_by = |solver| {
        best(10, || {
            std::hint::black_box(sym_eigen_with(r, &g, solver, Split::Whole));
        })
    };
    let (t_eispack, t_faer) = (t_by(EigenSolver::Eispack), t_by(EigenSolver::Faer));
    // The rotation alone, as one product over the whole width.
    let coef: Vec<f32> = (0..ell * r).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0f32; ell * d];
    let t_rot = best(10, || sgemm(ell, r, d, 1.0, &coef, buf, 0.0, &mut out));
    let mut sk = FdSketch::new(d, ell);
    sk.insert_block(&rows);
    let t_block = best(5, || sk.insert_block(&rows));
    let per_shrink = t_block / (block / ell) as f64;
    // A merge of two compact sketches (ℓ orthogonal rows each), decoded as
    // the coordinator has them: only the cross Gram block is computed.
    let t_cross = best(10, || {
        std::hint::black_box(gram_f64_of_f32_groups(r, d, buf, &[0..ell, ell..r]));
    });
    let mut compact = sk.clone();
    compact.compact();
    let wire = compact.encode();
    let other = FdSketch::decode(&wire, Some(d)).expect("own encoding");
    // A merge is cut in two (`linalg::Split::Halves`); a pool of one
    // thread runs the halves one after the other, a pool of two side by
    // side, with the same bits. Rounds alternate between the two pools.
    let pools = [1, 2].map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a thread pool"));
    let mut t_merge = [f64::INFINITY; 2];
    let mut bits: [Option<Vec<u8>>; 2] = [None, None];
    for _ in 0..3 {
        for (i, pool) in pools.iter().enumerate() {
            let t = best(1, || {
                let mut a = FdSketch::decode(&wire, Some(d)).expect("own encoding");
                pool.install(|| a.merge(&other).expect("same shape"));
                bits[i] = Some(a.encode());
            });
            t_merge[i] = t_merge[i].min(t);
        }
    }
    assert_eq!(bits[0], bits[1], "a merge's bits depend on its pool");
    let t_decode = best(5, || {
        std::hint::black_box(FdSketch::decode(&wire, Some(d)).expect("own encoding"));
    });
    // The benchmark's count: the full 2ℓ×d×2ℓ Gram plus the ℓ×2ℓ×d rotation.
    let flops = 2.0 * (r * r * d) as f64 + 2.0 * (ell * r * d) as f64;
    println!("d = {d}, ℓ = {ell}; sgemm 128x784x256 {:.1} GFLOP/s", rate / 1e9);
    println!("  Gram (f64, new rows)     {:>7.2} ms (all lower blocks: {:.2} ms)", t_gram * 1e3, t_gram_full * 1e3);
    println!(
        "  eigendecomposition       {:>7.2} ms (EISPACK pair {:.2} ms, faer {:.2} ms)",
        t_eig * 1e3,
        t_eispack * 1e3,
        t_faer * 1e3
    );
    println!("  rotation (sgemm ℓ×2ℓ×d)  {:>7.2} ms", t_rot * 1e3);
    println!("  the rest (moments, copies) {:>5.2} ms", (per_shrink - t_gram - t_eig - t_rot).max(0.0) * 1e3);
    println!(
        "  whole shrink             {:>7.2} ms = {:.1} GFLOP/s ({:.1} % of sgemm)",
        per_shrink * 1e3,
        flops / per_shrink / 1e9,
        100.0 * flops / per_shrink / rate
    );
    println!(
        "  merge of two compact sketches ({} rows each, {:.1} MB on the wire; decoding one {:.2} ms, not counted; cross Gram, one thread, {:.2} ms):",
        compact.rows(),
        wire.len() as f64 / 1e6,
        t_decode * 1e3,
        t_cross * 1e3
    );
    let [one, two] = t_merge.map(|t| (t - t_decode).max(0.0));
    println!(
        "    one thread {:>8.2} ms, two threads {:>8.2} ms = {:.2}x (the same bits)",
        one * 1e3,
        two * 1e3,
        two / one
    );
}
