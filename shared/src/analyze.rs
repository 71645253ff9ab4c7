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
    /// What makes these statistics less trustworthy than they look (empty
    /// when nothing was found).
    #[serde(default)]
    pub warnings: Vec<TrajectoryWarning>,
}

/// A reason to distrust a trajectory's statistics, found while computing
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryWarning {
    /// What was found.
    pub kind: WarningKind,
    /// The finding with its numbers, and what to change.
    pub message: String,
}

/// The kinds of [`TrajectoryWarning`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// A coordinate's mean drifts along the trajectory (the trend of its
    /// batch means is significant): not a stationary state, or correlated
    /// over more than a batch.
    NonStationary,
    /// Fewer than [`MIN_LAG_WINDOWS`] disjoint stretches of the longest
    /// lag: MSD and autocorrelation there are noise.
    ShortForLag,
    /// Fewer than [`MIN_PSD_SEGMENTS`] Welch segments: the power spectrum
    /// is noise.
    ShortForWindow,
    /// The power rises more than [`LOW_BIN_RISE`]-fold from the second
    /// lowest frequency bin to the lowest: a cycle slower than the window,
    /// which the window cannot resolve.
    PeakAtLowestBin,
}

/// The rise of the power from the second lowest to the lowest frequency
/// bin beyond which the spectrum's peak counts as unresolved: steeper than
/// f⁻³, which neither a stationary background (flat at low frequencies) nor
/// a random walk (f⁻², 4×) reaches.
pub const LOW_BIN_RISE: f64 = 8.0;

/// Disjoint stretches of the longest lag a trajectory should hold.
pub const MIN_LAG_WINDOWS: usize = 10;

/// Welch segments (hop W/2) a power spectrum should average.
pub const MIN_PSD_SEGMENTS: usize = 8;

/// Family-wise false-alarm rate of the non-stationarity check (Bonferroni
/// over the coordinates).
pub const STATIONARITY_LEVEL: f64 = 0.01;

/// Two-sided tail `P(|T| > t)` of Student's t with `nu ≥ 1` degrees of
/// freedom, in closed form (Abramowitz & Stegun 26.7.3–4).
pub fn student_t_two_sided(t: f64, nu: usize) -> f64 {
    if t.is_nan() || nu == 0 {
        return f64::NAN;
    }
    let theta = (t.abs() / (nu as f64).sqrt()).atan();
    let (s, c) = theta.sin_cos();
    let c2 = c * c;
    let within = if nu % 2 == 1 {
        let mut sum = 0.0;
        if nu > 1 {
            let mut term = c;
            sum = c;
            for k in (3..=nu - 2).step_by(2) {
                term *= c2 * (k - 1) as f64 / k as f64;
                sum += term;
            }
        }
        2.0 / std::f64::consts::PI * (theta + s * sum)
    } else {
        let (mut term, mut sum) = (1.0, 1.0);
        for k in (2..=nu - 2).step_by(2) {
            term *= c2 * (k - 1) as f64 / k as f64;
            sum += term;
        }
        s * sum
    };
    (1.0 - within).clamp(0.0, 1.0)
}

/// Smallest change of a coordinate's mean across the trajectory, in units
/// of its standard deviation, that counts as a drift (a significant but
/// smaller trend, such as a deterministic cycle's leftover in batch means,
/// changes no statistic).
pub const MIN_DRIFT_SD: f64 = 0.1;

/// The most significant linear trend among the coordinates' batch means
/// (`means[b][i]`: batch b, coordinate i) that moves the mean by at least
/// [`MIN_DRIFT_SD`] of the coordinate's deviation `sd[i]`: `(coordinate,
/// t, p)`.
fn strongest_trend(means: &[Vec<f64>], sd: &[f64]) -> Option<(usize, f64, f64)> {
    let b = means.len();
    if b < 4 {
        return None;
    }
    let k = means[0].len();
    let xbar = (b - 1) as f64 / 2.0;
    let sxx: f64 = (0..b).map(|j| (j as f64 - xbar).powi(2)).sum();
    let mut best: Option<(usize, f64, f64)> = None;
    for i in 0..k {
        let y: Vec<f64> = means.iter().map(|m| m[i]).collect();
        let ybar = y.iter().sum::<f64>() / b as f64;
        let slope = y.iter().enumerate().map(|(j, v)| (j as f64 - xbar) * (v - ybar)).sum::<f64>() / sxx;
        let rss: f64 = y.iter().enumerate().map(|(j, v)| (v - ybar - slope * (j as f64 - xbar)).powi(2)).sum();
        let se = (rss / (b - 2) as f64 / sxx).sqrt();
        let t = if se > 0.0 {
            slope / se
        } else if slope != 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        let p = student_t_two_sided(t, b - 2);
        let material = slope.abs() * (b - 1) as f64 >= MIN_DRIFT_SD * sd[i];
        if material && best.is_none_or(|(_, _, bp)| p < bp) {
            best = Some((i, t, p));
        }
    }
    best
}

/// The warnings of a trajectory of `points` rows analysed with `opts`.
fn trajectory_warnings(
    points: usize,
    coordinates: usize,
    batch_means: &[Vec<f64>],
    sd: &[f64],
    drift: &DriftStats,
    opts: &TrajectoryOptions,
) -> Vec<TrajectoryWarning> {
    let mut out = vec![];
    let longest = default_lags(opts.max_lag).last().copied().unwrap_or(1);
    if points < MIN_LAG_WINDOWS * longest {
        out.push(TrajectoryWarning {
            kind: WarningKind::ShortForLag,
            message: format!(
                "{points} points hold {} disjoint stretches of the longest lag {longest} (fewer than \
                 {MIN_LAG_WINDOWS}): MSD and autocorrelation at the longest lags are noise; use --max-lag ≤ {}",
                points / longest,
                (points / MIN_LAG_WINDOWS).max(1)
            ),
        });
    }
    let w = opts.psd_window;
    if w > 0 {
        let segments = if points >= w { (points - w) / (w / 2) + 1 } else { 0 };
        if segments < MIN_PSD_SEGMENTS {
            // The longest window that gives enough segments: T ≥ W·(S + 1)/2.
            let fits = 2 * points / (MIN_PSD_SEGMENTS + 1);
            let suggest = if fits >= 8 {
                format!("use --psd-window ≤ {}", 1usize << fits.ilog2())
            } else {
                "record a longer trajectory".to_string()
            };
            out.push(TrajectoryWarning {
                kind: WarningKind::ShortForWindow,
                message: format!(
                    "{points} points give {segments} Welch segments of window {w} (fewer than {MIN_PSD_SEGMENTS}): \
                     the power spectrum is noise; {suggest}"
                ),
            });
        } else if let [(_, low), (_, next), ..] = drift.spectrum[..]
            && low > LOW_BIN_RISE * next
        {
            out.push(TrajectoryWarning {
                kind: WarningKind::PeakAtLowestBin,
                message: format!(
                    "the power rises {:.0}-fold into the lowest frequency bin (1/{w} cycles/step): a cycle slower \
                     than window {w}, which it cannot resolve; a longer --psd-window may",
                    low / next
                ),
            });
        }
    }
    if let Some((i, t, p)) = strongest_trend(batch_means, sd) {
        let adjusted = (p * coordinates as f64).min(1.0);
        if adjusted < STATIONARITY_LEVEL {
            out.push(TrajectoryWarning {
                kind: WarningKind::NonStationary,
                message: format!(
                    "coordinate {i}'s mean drifts along the trajectory (trend of its {} batch means: t = {t:.1}, \
                     p = {adjusted:.1e} over {coordinates} coordinates): not a stationary state, or correlated over \
                     more than a tenth of its length; the drift statistics assume a stationary one (record after a \
                     longer burn-in)",
                    batch_means.len()
                ),
            });
        }
    }
    out
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
    let mut means = vec![];
    let mut sum = vec![0.0; k];
    let (mut total, mut total_sq) = (vec![0.0; k], vec![0.0; k]);
    let mut batch = TrajectoryRecorder::new(k, vec![1]);
    for r in 0..a.rows {
        let p = point(r);
        whole.push(&p);
        batch.push(&p);
        sum.iter_mut().zip(&p).for_each(|(s, x)| *s += x);
        total.iter_mut().zip(&p).for_each(|(s, x)| *s += x);
        total_sq.iter_mut().zip(&p).for_each(|(s, x)| *s += x * x);
        if (r + 1) % per == 0 {
            rates.push(batch.sums().area_rate(0, 1));
            batch = TrajectoryRecorder::new(k, vec![1]);
            means.push(sum.iter().map(|s| s / per as f64).collect::<Vec<f64>>());
            sum.iter_mut().for_each(|s| *s = 0.0);
        }
    }
    let drift = DriftStats::from_sums(whole.sums());
    let n = a.rows.max(1) as f64;
    let sd: Vec<f64> = total.iter().zip(&total_sq).map(|(s, q)| (q / n - (s / n).powi(2)).max(0.0).sqrt()).collect();
    let warnings = trajectory_warnings(a.rows, k, &means, &sd, &drift, &opts);
    TrajectoryReport {
        points: a.rows,
        columns: a.cols,
        coordinates: k,
        projected,
        drift,
        area_rate: Summary::of(rates),
        warnings,
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
        // Its period (126 steps) is longer than the window: said so; a
        // window of 512 resolves it.
        assert_eq!(rep.warnings.iter().map(|w| w.kind).collect::<Vec<_>>(), vec![WarningKind::PeakAtLowestBin]);
        assert_eq!(kinds(&a, 16, 512), vec![]);
    }

    #[test]
    fn the_t_tail_matches_tabulated_critical_values() {
        // Two-sided 5 % points of t(1), t(3), t(8), t(30); 1 % of t(8).
        for (t, nu, p) in [(12.706, 1, 0.05), (3.182, 3, 0.05), (2.306, 8, 0.05), (2.042, 30, 0.05), (3.355, 8, 0.01)] {
            let got = student_t_two_sided(t, nu);
            assert!((got - p).abs() < 2e-4 * (p / 0.01), "t({nu}) at {t}: {got}");
        }
        assert_eq!(student_t_two_sided(0.0, 8), 1.0);
        assert_eq!(student_t_two_sided(f64::INFINITY, 8), 0.0);
    }

    /// `rows` points of `k` coordinates of an AR(1) process `x ← φx + ε`
    /// (φ = 1: a random walk).
    fn ar1(seed: u64, rows: usize, k: usize, phi: f64) -> Array2 {
        let mut r = Rng::new(seed, Stream::Other(2));
        let mut x = vec![0.0; k];
        let mut data = Vec::with_capacity(rows * k);
        for _ in 0..rows {
            x.iter_mut().for_each(|v| *v = phi * *v + r.normal());
            data.extend_from_slice(&x);
        }
        Array2 { rows, cols: k, data, was_f32: false }
    }

    fn kinds(a: &Array2, max_lag: usize, psd_window: usize) -> Vec<WarningKind> {
        let opts = TrajectoryOptions { projections: 8, seed: 0, max_lag, batches: 10, psd_window };
        analyze_trajectory(a, opts).warnings.iter().map(|w| w.kind).collect()
    }

    /// Issue 13, item 6: what makes a trajectory's statistics untrustworthy
    /// is said, and a stationary one long enough for its lags and window
    /// raises nothing.
    #[test]
    fn trajectories_get_warnings_for_what_makes_them_untrustworthy() {
        assert_eq!(kinds(&ar1(1, 20_000, 4, 0.5), 64, 64), vec![]);
        assert_eq!(kinds(&ar1(1, 20_000, 4, 1.0), 64, 64), vec![WarningKind::NonStationary], "a random walk");
        assert_eq!(kinds(&ar1(1, 200, 4, 0.5), 64, 64), vec![WarningKind::ShortForLag, WarningKind::ShortForWindow]);
        // The messages say what to change.
        let opts = TrajectoryOptions { projections: 8, seed: 0, max_lag: 64, batches: 10, psd_window: 64 };
        let w = analyze_trajectory(&ar1(1, 200, 4, 0.5), opts).warnings;
        assert!(w[0].message.contains("use --max-lag ≤ 20"), "{}", w[0].message);
        assert!(w[1].message.contains("use --psd-window ≤ 32"), "{}", w[1].message);
        // A slow rotation, of a period longer than the window: its power
        // sits in the lowest bin.
        let t = 20_000;
        let data: Vec<f64> = (0..t)
            .flat_map(|i| {
                let a = 2.0 * std::f64::consts::PI * i as f64 / 400.0;
                [a.cos(), a.sin()]
            })
            .collect();
        let slow = Array2 { rows: t, cols: 2, data, was_f32: false };
        assert_eq!(kinds(&slow, 16, 64), vec![WarningKind::PeakAtLowestBin]);
        assert_eq!(kinds(&slow, 16, 1024), vec![], "a window longer than the period resolves it");
    }

    /// The non-stationarity check raises false alarms on stationary
    /// trajectories at about its level (1 %), not more.
    #[test]
    fn stationary_trajectories_rarely_look_non_stationary() {
        let trials = 300;
        let alarms =
            (0..trials).filter(|&s| kinds(&ar1(s, 4_000, 3, 0.3), 16, 0).contains(&WarningKind::NonStationary)).count();
        // Binomial(300, ≤ 0.01): mean ≤ 3; 10 or more has probability < 0.1 %.
        assert!(alarms < 10, "{alarms} of {trials}");
    }
}
