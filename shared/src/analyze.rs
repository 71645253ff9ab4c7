//! Statistics of data produced by any framework (`gradsweep analyze`):
//! per-sample gradients (an `n × d` matrix) and trajectories (a `T × d`
//! matrix of weights or projections).

use serde::{Deserialize, Serialize};

use crate::linalg::random_orthonormal;
use crate::npy::Array2;
use crate::rng::{Rng, Stream};
use crate::sketch::{ExactCovariance, FdSketch};
use crate::stats::{RankThresholds, SpectrumStats, Summary};
use crate::trajectory::{DriftStats, TrajectoryRecorder, default_lags};

/// How to analyse a gradient matrix.
#[derive(Debug, Clone, Copy)]
pub struct GradsOptions {
    /// Frequent Directions rows ℓ when sketching.
    pub sketch_rank: usize,
    /// Use the exact dense path when d is at most this.
    pub exact_max_dim: usize,
}

/// The spectrum of `D` for a gradient matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradsReport {
    /// `exact` (dense D, symmetric eigendecomposition) or `sketch`.
    pub method: String,
    /// The statistics (brackets collapse on the exact path).
    pub spectrum: SpectrumStats,
}

/// Input that has no statistics to give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnalyzeError {
    /// Too few samples or columns for a covariance.
    #[error("{rows} samples × {cols} parameters: D needs at least 2 samples (rows) of at least 1 parameter")]
    TooSmall {
        /// Rows given.
        rows: usize,
        /// Columns given.
        cols: usize,
    },
}

/// Spectrum of `D = (1/n) Σ gᵢgᵢᵀ − ḡḡᵀ` for the rows of `a`, with ranks
/// at the user's thresholds `th` too. Fewer than 2 rows (or no column) is
/// an error, never a table of zeros.
pub fn analyze_grads(a: &Array2, opts: GradsOptions, th: &RankThresholds) -> Result<GradsReport, AnalyzeError> {
    if a.rows < 2 || a.cols == 0 {
        return Err(AnalyzeError::TooSmall { rows: a.rows, cols: a.cols });
    }
    let rows: Vec<f32> = a.data.iter().map(|&v| v as f32).collect();
    if a.cols <= opts.exact_max_dim {
        let mut ex = ExactCovariance::new(a.cols);
        for block in rows.chunks(a.cols * 256) {
            ex.insert_block(block);
        }
        let eig = ex.eigenvalues();
        let mut spectrum =
            SpectrumStats::from_parts(&eig, 0.0, a.cols, a.rows as u64, 0, ex.trace(), ex.grad_norm_sq_unbiased());
        spectrum.add_thresholds(&eig, th);
        Ok(GradsReport { method: "exact".into(), spectrum })
    } else {
        let mut sk = FdSketch::new(a.cols, opts.sketch_rank.max(1));
        for block in rows.chunks(a.cols * 256) {
            sk.insert_block(block);
        }
        Ok(GradsReport { method: "sketch".into(), spectrum: SpectrumStats::from_sketch_with(&sk, th) })
    }
}

/// How to analyse a trajectory.
#[derive(Debug, Clone, Copy)]
pub struct TrajectoryOptions {
    /// Project onto this many random directions when there are more columns.
    pub projections: usize,
    /// Seed of the projection directions.
    pub seed: u64,
    /// Largest lag.
    pub max_lag: usize,
    /// Batches for the confidence interval of the area rate.
    pub batches: usize,
    /// Welch window of the power spectrum (0: none; else a power of two in 8..=4096).
    pub psd_window: usize,
}

/// Drift statistics of a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryReport {
    /// Points (rows).
    pub points: usize,
    /// Columns in the file.
    pub columns: usize,
    /// Coordinates analysed (columns, or random projections of them).
    pub coordinates: usize,
    /// Whether the columns were projected.
    pub projected: bool,
    /// Statistics over the whole trajectory.
    pub drift: DriftStats,
    /// Area rate of the first pair per step: mean over consecutive batches
    /// with its 95 % interval.
    pub area_rate: Summary,
}

/// Drift statistics of the rows of `a` (time along rows).
pub fn analyze_trajectory(a: &Array2, opts: TrajectoryOptions) -> TrajectoryReport {
    let projected = a.cols > opts.projections;
    let k = if projected { opts.projections.max(2) } else { a.cols };
    let dirs = projected.then(|| random_orthonormal(k, a.cols, &mut Rng::new(opts.seed, Stream::Projection)));
    let point = |r: usize| -> Vec<f64> {
        let row = &a.data[r * a.cols..(r + 1) * a.cols];
        match &dirs {
            Some(q) => (0..k)
                .map(|i| q[i * a.cols..(i + 1) * a.cols].iter().zip(row).map(|(&u, &x)| u as f64 * x).sum())
                .collect(),
            None => row.to_vec(),
        }
    };
    let lags = default_lags(opts.max_lag);
    let mut whole = TrajectoryRecorder::with_spectrum(k, lags, opts.psd_window);
    let batches = opts.batches.max(2);
    let per = (a.rows / batches).max(2);
    let mut rates = vec![];
    let mut batch = TrajectoryRecorder::new(k, vec![1]);
    for r in 0..a.rows {
        let p = point(r);
        whole.push(&p);
        batch.push(&p);
        if (r + 1) % per == 0 {
            rates.push(batch.sums().area_rate(0, 1));
            batch = TrajectoryRecorder::new(k, vec![1]);
        }
    }
    TrajectoryReport {
        points: a.rows,
        columns: a.cols,
        coordinates: k,
        projected,
        drift: DriftStats::from_sums(whole.sums()),
        area_rate: Summary::of(rates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_sketch_agree_on_a_low_rank_gradient_matrix() {
        let (n, d) = (300, 40);
        let mut r = Rng::new(3, Stream::Other(1));
        let basis: Vec<f64> = (0..3 * d).map(|_| r.normal()).collect();
        let mut data = Vec::with_capacity(n * d);
        for _ in 0..n {
            let c = [r.normal() * 3.0, r.normal() * 2.0, r.normal()];
            data.extend((0..d).map(|j| c[0] * basis[j] + c[1] * basis[d + j] + c[2] * basis[2 * d + j] + 0.1));
        }
        let a = Array2 { rows: n, cols: d, data, was_f32: false };
        let th = RankThresholds { relative: vec![1e-6], absolute: vec![1e-6] };
        let exact = analyze_grads(&a, GradsOptions { sketch_rank: 8, exact_max_dim: 100 }, &th).unwrap();
        let sketch = analyze_grads(&a, GradsOptions { sketch_rank: 8, exact_max_dim: 10 }, &th).unwrap();
        for (rows, cols) in [(0, 40), (1, 40), (5, 0)] {
            let tiny = Array2 { rows, cols, data: vec![0.5; rows * cols], was_f32: false };
            let e = analyze_grads(&tiny, GradsOptions { sketch_rank: 8, exact_max_dim: 100 }, &th).unwrap_err();
            assert_eq!(e, AnalyzeError::TooSmall { rows, cols });
        }
        assert_eq!(exact.method, "exact");
        assert_eq!(sketch.method, "sketch");
        assert_eq!(exact.spectrum.rank.value, 3.0);
        assert_eq!((exact.spectrum.rank.lo, exact.spectrum.rank.hi), (3.0, 3.0));
        let (ex, sk) = (&exact.spectrum, &sketch.spectrum);
        assert!((ex.trace - sk.trace).abs() < 1e-6 * ex.trace);
        // The user's thresholds: exactly 3 on the exact path, bracketing 3 on the sketch.
        let rel = |s: &SpectrumStats| s.ranks_relative.iter().find(|x| x.0 == 1e-6).unwrap().1;
        assert_eq!((rel(ex).lo, rel(ex).hi), (3.0, 3.0));
        assert_eq!(ex.ranks_absolute, vec![(1e-6, crate::stats::Bracket { value: 3.0, lo: 3.0, hi: 3.0 })]);
        for b in [rel(sk), sk.ranks_absolute[0].1] {
            assert!(b.lo <= 3.0 && 3.0 <= b.hi, "{b:?}");
        }
        for i in 0..3 {
            let (e, s) = (ex.top_eigenvalues[i], sk.top_eigenvalues[i]);
            assert!(
                s <= e + 1e-6 * e && e <= s + sk.eig_error + 1e-6 * e,
                "λ{i}: exact {e}, sketch {s} + {}",
                sk.eig_error
            );
        }
    }

    #[test]
    fn trajectory_rotation_is_detected_and_projection_keeps_it() {
        let t = 20_000;
        let theta = 0.05f64;
        let data: Vec<f64> = (0..t).flat_map(|i| [(theta * i as f64).cos(), (theta * i as f64).sin()]).collect();
        let a = Array2 { rows: t, cols: 2, data, was_f32: false };
        let rep = analyze_trajectory(
            &a,
            TrajectoryOptions { projections: 8, seed: 0, max_lag: 16, batches: 10, psd_window: 64 },
        );
        assert!(!rep.projected);
        assert!((rep.drift.area_rate - 0.5 * theta.sin()).abs() < 1e-3, "{}", rep.drift.area_rate);
        assert!((rep.drift.cycling_frequency - theta.sin()).abs() < 2e-3, "{}", rep.drift.cycling_frequency);
        assert!(!rep.drift.spectrum.is_empty());
        assert!(rep.area_rate.mean > 0.0 && rep.area_rate.count == 10);
    }
}
