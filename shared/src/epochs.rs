//! The trajectory recorded once per epoch, as the paper records it (its
//! Fig. 3), next to the per-step trajectory of [`crate::trajectory`].
//!
//! With `[probe] epoch_psd_window = W` a run keeps, from the end of its
//! burn-in (and its basis probe) on, at the end of every epoch:
//!
//! - the projected coordinates, into a [`TrajectoryRecorder`] of their own
//!   (lags `1, 2, 4, …, W` epochs, Welch windows of `W` epochs): area rates,
//!   cycling frequencies, autocorrelation and spectrum *per epoch*;
//! - every weight's increment `x_e − x_{e−1}`, whose Welch periodogram (Hann
//!   windows of `W` epochs, hop `W/2`) is summed per weight: the paper's "FFT
//!   of the increments", read as the mean ± standard deviation over weights
//!   ([`IncrementSpectrum`]);
//! - the weight norm `‖x_e‖`, whose least-squares trend over the recorded
//!   epochs is the BatchNorm confound: scale-invariant layers let the norm
//!   grow without bound, which reads as slow drift in every statistic above
//!   ([`NormTrend`]).
//!
//! At the end of the run [`EpochRecorder::into_sums`] adds a
//! phase-randomised surrogate test for spectral peaks ([`peak_test`]): is
//! the strongest peak of the per-epoch spectra above what a process with the
//! same smooth spectrum and no line would show?
//!
//! Everything here is pure and seeded: the same run gives the same bits on
//! any worker, resumed or not.

use serde::{Deserialize, Serialize};

use crate::json_f64::F64;
use crate::rng::{Rng, Stream};
use crate::trajectory::{Periodogram, TrajectoryRecorder, TrajectorySums, default_lags, fft};

/// Phase-randomised surrogates per run in [`peak_test`]: p-values come in
/// steps of 1/100.
pub const SURROGATES: usize = 99;

/// Least-squares sums of the weight norm against the epoch: enough for its
/// trend, its mean, and its first and last values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NormTrend {
    /// Epochs seen.
    pub n: u64,
    /// Σ e (e counted from the first recorded epoch).
    pub sum_e: f64,
    /// Σ e².
    pub sum_ee: f64,
    /// Σ ‖x‖.
    pub sum_r: f64,
    /// Σ e·‖x‖.
    pub sum_er: f64,
    /// ‖x‖ at the first recorded epoch.
    #[serde(with = "crate::json_f64")]
    pub first: f64,
    /// ‖x‖ at the last recorded epoch.
    #[serde(with = "crate::json_f64")]
    pub last: f64,
}

impl Default for NormTrend {
    fn default() -> Self {
        NormTrend { n: 0, sum_e: 0.0, sum_ee: 0.0, sum_r: 0.0, sum_er: 0.0, first: f64::NAN, last: f64::NAN }
    }
}

impl NormTrend {
    /// Records the norm `r` of the next epoch.
    pub fn push(&mut self, r: f64) {
        let e = self.n as f64;
        if self.n == 0 {
            self.first = r;
        }
        self.last = r;
        self.n += 1;
        self.sum_e += e;
        self.sum_ee += e * e;
        self.sum_r += r;
        self.sum_er += e * r;
    }

    /// Mean norm over the recorded epochs (NaN before any).
    pub fn mean(&self) -> f64 {
        if self.n == 0 { f64::NAN } else { self.sum_r / self.n as f64 }
    }

    /// Least-squares slope of ‖x‖ per epoch (NaN with fewer than 2 epochs).
    pub fn slope(&self) -> f64 {
        let n = self.n as f64;
        let den = n * self.sum_ee - self.sum_e * self.sum_e;
        if self.n < 2 || den <= 0.0 { f64::NAN } else { (n * self.sum_er - self.sum_e * self.sum_r) / den }
    }

    /// The trend as a relative change per 1,000 epochs: slope · 1000 / mean
    /// (0.01: the norm grows by 1 % every 10³ epochs).
    pub fn relative_per_kilo_epoch(&self) -> f64 {
        self.slope() * 1000.0 / self.mean()
    }
}

/// Per-weight Welch spectra of the epoch increments, reduced to what the
/// paper plots: per frequency, the sum and sum of squares over weights of
/// each weight's mean periodogram. Sums of runs add up (more weights).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncrementSpectrum {
    /// Welch window `W`, in epochs; bin `m` is `m/W` cycles per epoch.
    pub window: usize,
    /// Weights (of every run added) whose spectra are summed.
    pub coords: u64,
    /// Welch windows per weight (of the last run added).
    pub windows: u64,
    /// Per bin `0..=W/2`: Σ over weights of the mean periodogram.
    pub sum: Vec<f64>,
    /// Per bin: Σ over weights of its square.
    pub sum_sq: Vec<f64>,
}

impl IncrementSpectrum {
    /// `(frequency in cycles per epoch, mean, standard deviation)` over
    /// weights, for bins above 0; empty before the first window.
    pub fn mean_std(&self) -> Vec<(f64, f64, f64)> {
        if self.coords == 0 || self.windows == 0 {
            return vec![];
        }
        let n = self.coords as f64;
        (1..self.sum.len())
            .map(|m| {
                let mean = self.sum[m] / n;
                let var = if self.coords > 1 { (self.sum_sq[m] - n * mean * mean) / (n - 1.0) } else { 0.0 };
                (m as f64 / self.window as f64, mean, var.max(0.0).sqrt())
            })
            .collect()
    }

    /// Adds another run's spectra (same window).
    pub fn merge(&mut self, other: &IncrementSpectrum) -> Result<(), String> {
        if other.window != self.window || other.sum.len() != self.sum.len() {
            return Err(format!("increment spectra of windows {} and {} do not add", self.window, other.window));
        }
        self.coords += other.coords;
        self.windows = self.windows.min(other.windows);
        self.sum.iter_mut().zip(&other.sum).for_each(|(a, b)| *a += b);
        self.sum_sq.iter_mut().zip(&other.sum_sq).for_each(|(a, b)| *a += b);
        Ok(())
    }
}

/// The surrogate test for spectral peaks of one run's per-epoch spectra
/// ([`peak_test`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeakTest {
    /// The largest ratio of a coordinate's Welch power to its own smooth
    /// background, over coordinates and frequencies above 0.
    #[serde(with = "crate::json_f64")]
    pub statistic: f64,
    /// Where it is, in cycles per epoch.
    #[serde(with = "crate::json_f64")]
    pub frequency: f64,
    /// The coordinate it is in.
    pub coordinate: usize,
    /// `(1 + #surrogates at least as large) / (1 + surrogates)`.
    #[serde(with = "crate::json_f64")]
    pub p_value: f64,
    /// Surrogates drawn.
    pub surrogates: usize,
}

/// What a run's per-epoch recording sends: added to its
/// [`TrajectorySums`] as `epochs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// The projected coordinates, one point per epoch.
    pub trajectory: TrajectorySums,
    /// The weights' increment spectra.
    pub increments: IncrementSpectrum,
    /// The weight norm's trend.
    pub weight_norm: NormTrend,
    /// The surrogate test for peaks of `trajectory`'s spectra (none before a
    /// whole window was recorded).
    #[serde(default)]
    pub peaks: Option<PeakTest>,
}

impl EpochSums {
    /// Checks shapes and values.
    pub fn validate(&self) -> Result<(), String> {
        self.trajectory.validate().map_err(|e| format!("per-epoch trajectory: {e}"))?;
        let i = &self.increments;
        if !crate::trajectory::valid_psd_window(i.window)
            || i.window == 0
            || i.sum.len() != i.window / 2 + 1
            || i.sum_sq.len() != i.sum.len()
            || i.sum.iter().chain(&i.sum_sq).any(|v| !v.is_finite() || *v < 0.0)
        {
            return Err(format!("increment spectrum of window {} has inconsistent shapes or values", i.window));
        }
        let n = &self.weight_norm;
        if ![n.sum_e, n.sum_ee, n.sum_r, n.sum_er].iter().all(|v| v.is_finite()) {
            return Err("weight-norm sums are not finite".into());
        }
        Ok(())
    }
}

/// Records a run once per epoch (see the module doc). Serialisable, so a
/// checkpoint carries it and a resumed run goes on bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecorder {
    trajectory: TrajectoryRecorder,
    window: usize,
    /// The last recorded epoch's weights (empty before the first).
    prev: Vec<f32>,
    /// The last `W` increments, `W × d`, row `i mod W` holding increment `i`.
    ring: Vec<f32>,
    /// Increments seen.
    increments: u64,
    /// Increments since the last Welch window.
    since_window: usize,
    /// Per weight, Σ over windows of its periodogram (`d × (W/2 + 1)`).
    coord_psd: Vec<f64>,
    /// Welch windows summed into `coord_psd`.
    windows: u64,
    weight_norm: NormTrend,
}

impl EpochRecorder {
    /// A recorder of `k` projected coordinates and `d` weights with Welch
    /// windows of `window` epochs (a power of two, see
    /// [`crate::trajectory::valid_psd_window`]).
    pub fn new(k: usize, d: usize, window: usize) -> Self {
        EpochRecorder {
            trajectory: TrajectoryRecorder::with_spectrum(k, default_lags(window), window),
            window,
            prev: vec![],
            ring: vec![0.0; window * d],
            increments: 0,
            since_window: 0,
            coord_psd: vec![0.0; d * (window / 2 + 1)],
            windows: 0,
            weight_norm: NormTrend::default(),
        }
    }

    /// Whether this recorder was made for `k` coordinates, `d` weights and
    /// `window` (checked when a checkpoint is read), and its values are
    /// finite and consistent.
    pub fn fits(&self, k: usize, d: usize, window: usize) -> bool {
        let s = self.trajectory.sums();
        self.window == window
            && s.k == k
            && s.psd_window == window
            && self.ring.len() == window * d
            && self.coord_psd.len() == d * (window / 2 + 1)
            && (self.prev.is_empty() || self.prev.len() == d)
            && self.since_window <= window
            && self.trajectory.is_finite()
            && self.coord_psd.iter().all(|v| v.is_finite() && *v >= 0.0)
            && self.ring.iter().chain(&self.prev).all(|v| v.is_finite())
    }

    /// Records the end of an epoch: the weights `x` and their projections.
    pub fn push(&mut self, x: &[f32], projected: &[f64]) {
        self.trajectory.push(projected);
        self.weight_norm.push(x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt());
        if !self.prev.is_empty() {
            let d = x.len();
            let w = self.window;
            let row = (self.increments % w as u64) as usize;
            for ((r, &a), &b) in self.ring[row * d..(row + 1) * d].iter_mut().zip(x).zip(&self.prev) {
                *r = a - b;
            }
            self.increments += 1;
            self.since_window += 1;
            if self.increments >= w as u64 && self.since_window >= w / 2 {
                self.add_window(d);
                self.since_window = 0;
            }
        }
        self.prev.clear();
        self.prev.extend_from_slice(x);
    }

    /// Adds each weight's periodogram of the last `W` increments.
    fn add_window(&mut self, d: usize) {
        let w = self.window;
        let bins = w / 2 + 1;
        let oldest = self.increments - w as u64;
        let mut pg = Periodogram::new(w);
        for i in 0..d {
            let ring = &self.ring;
            pg.transform(|t| ring[((oldest + t as u64) % w as u64) as usize * d + i] as f64);
            pg.add_power(&mut self.coord_psd[i * bins..(i + 1) * bins]);
        }
        self.windows += 1;
    }

    /// The sums of the run, with the surrogate test drawn from `seed`'s
    /// own stream.
    pub fn into_sums(self, seed: u64) -> EpochSums {
        let w = self.window;
        let bins = w / 2 + 1;
        let mut increments = IncrementSpectrum {
            window: w,
            coords: 0,
            windows: self.windows,
            sum: vec![0.0; bins],
            sum_sq: vec![0.0; bins],
        };
        if self.windows > 0 {
            for c in self.coord_psd.chunks(bins) {
                increments.coords += 1;
                for (m, &p) in c.iter().enumerate() {
                    let p = p / self.windows as f64;
                    increments.sum[m] += p;
                    increments.sum_sq[m] += p * p;
                }
            }
        }
        let trajectory = self.trajectory.into_sums();
        let peaks = peak_test(&trajectory, SURROGATES, &mut Rng::new(seed, Stream::Surrogates));
        EpochSums { trajectory, increments, weight_norm: self.weight_norm, peaks }
    }
}

/// Half-width, in bins, of the running median that is a spectrum's smooth
/// background: 9 bins, of which a line (its Hann main lobe) fills at most 3.
const MEDIAN_HALF_WIDTH: usize = 4;

/// Bins this close to either end of a spectrum (bin 0 aside) are not
/// tested: their window is too narrow to tell a line from its background.
const UNTESTED_EDGE: usize = 2;

/// A smooth background of one coordinate's Welch spectrum: at each bin
/// above 0, the median of the bins within [`MEDIAN_HALF_WIDTH`] of it on
/// both sides (fewer near the ends, so a monotone spectrum's median is its
/// own value there). A line moves a median of 9 little, a broad shoulder is
/// followed; what stands above it is a peak. `None` for a spectrum with no
/// positive power.
fn background(power: &[f64]) -> Option<Vec<f64>> {
    let bins = power.len();
    if bins < 3 || power.iter().skip(1).all(|&p| p <= 0.0) {
        return None;
    }
    let last = bins - 1;
    let mut out = vec![0.0; bins];
    let mut near = Vec::with_capacity(2 * MEDIAN_HALF_WIDTH + 1);
    for (m, o) in out.iter_mut().enumerate().skip(1) {
        let h = MEDIAN_HALF_WIDTH.min(m - 1).min(last - m);
        near.clear();
        near.extend_from_slice(&power[m - h..=m + h]);
        near.sort_by(f64::total_cmp);
        *o = near[h];
    }
    Some(out)
}

/// The background `bg` (per Welch bin of `w` points) at any frequency `f`
/// in (0, ½]: interpolated linearly in log–log between bins; below the
/// first bin, continued with the slope of bins 1–2 kept in [−2.5, 0]
/// (steeper would pour more power into the windows' leakage than any
/// trajectory recorded here shows).
fn background_at(bg: &[f64], w: usize, f: f64) -> f64 {
    let x = f * w as f64;
    let ln = |m: usize| bg[m].max(f64::MIN_POSITIVE).ln();
    let last = bg.len() - 1;
    if x <= 1.0 {
        let slope = if last >= 2 { ((ln(2) - ln(1)) / 2f64.ln()).clamp(-2.5, 0.0) } else { 0.0 };
        return (ln(1) + slope * x.ln()).exp();
    }
    let m = (x.floor() as usize).min(last - 1);
    let t = ((x.ln() - (m as f64).ln()) / (((m + 1) as f64).ln() - (m as f64).ln())).clamp(0.0, 1.0);
    (ln(m) * (1.0 - t) + ln(m + 1) * t).exp()
}

/// The largest ratio of power to background over the bins above 0 of
/// per-coordinate spectra: `(ratio, bin, coordinate)`, each coordinate's
/// background its own running median.
fn largest_ratio(per: &[Vec<f64>]) -> Option<(f64, usize, usize)> {
    let mut best: Option<(f64, usize, usize)> = None;
    for (a, p) in per.iter().enumerate() {
        let Some(bg) = background(p) else { continue };
        for m in (1 + UNTESTED_EDGE)..p.len().saturating_sub(UNTESTED_EDGE) {
            let r = p[m] / bg[m];
            if r.is_finite() && best.is_none_or(|b| r > b.0) {
                best = Some((r, m, a));
            }
        }
    }
    best
}

/// A phase-randomised surrogate test for peaks of the trajectory's Welch
/// spectra: is the largest ratio of any coordinate's power to its own
/// smooth background (over every coordinate and frequency, so the test
/// accounts for looking everywhere) larger than chance?
///
/// Each surrogate replaces each coordinate by a Gaussian series with that
/// coordinate's fitted background as its spectrum — Fourier amplitudes from
/// the background, phases uniform at random — of the same length, and runs
/// it through the same Welch windows and the same fit. Under the null (a
/// smooth spectrum, no line) the observed statistic is one more draw, so
/// `p = (1 + #{T* ≥ T}) / (1 + surrogates)`. `None` without a whole window.
pub fn peak_test(sums: &TrajectorySums, surrogates: usize, rng: &mut Rng) -> Option<PeakTest> {
    let (freqs, per) = sums.power_spectrum()?;
    let (statistic, bin, coordinate) = largest_ratio(&per)?;
    let w = sums.psd_window;
    let bins = w / 2 + 1;
    let len = sums.points as usize;
    let n = (2 * len).next_power_of_two().max(2 * w);
    let backgrounds: Vec<Option<Vec<f64>>> = per
        .iter()
        .map(|p| {
            let bg = background(p)?;
            Some((0..=n / 2).map(|j| if j == 0 { 0.0 } else { background_at(&bg, w, j as f64 / n as f64) }).collect())
        })
        .collect();
    let mut pg = Periodogram::new(w);
    let (mut re, mut im) = (vec![0.0; n], vec![0.0; n]);
    let mut exceed = 0usize;
    for _ in 0..surrogates {
        let mut spectra = Vec::with_capacity(per.len());
        for b in &backgrounds {
            let Some(b) = b else {
                spectra.push(vec![0.0; bins]);
                continue;
            };
            // Hermitian coefficients, complex Gaussian with E|c_j|² ∝ B(f_j):
            // uniform phases and Rayleigh amplitudes, as a Gaussian process
            // with that spectrum has (fixed amplitudes would make every
            // surrogate's spectrum smoother than any real series'). The real
            // part of the transform is the series.
            re.fill(0.0);
            im.fill(0.0);
            for j in 1..n / 2 {
                let amp = (b[j] / 2.0).sqrt();
                (re[j], im[j]) = (amp * rng.normal(), amp * rng.normal());
                (re[n - j], im[n - j]) = (re[j], -im[j]);
            }
            re[n / 2] = b[n / 2].sqrt() * rng.normal();
            fft(&mut re, &mut im);
            let series = &re[..len];
            let mut psd = vec![0.0; bins];
            let mut windows = 0usize;
            let mut start = 0;
            while start + w <= len {
                pg.transform(|t| series[start + t]);
                pg.add_power(&mut psd);
                windows += 1;
                start += w / 2;
            }
            psd.iter_mut().for_each(|p| *p /= windows.max(1) as f64);
            spectra.push(psd);
        }
        if largest_ratio(&spectra).is_some_and(|t| t.0 >= statistic) {
            exceed += 1;
        }
    }
    Some(PeakTest {
        statistic,
        frequency: freqs[bin],
        coordinate,
        p_value: (1 + exceed) as f64 / (1 + surrogates) as f64,
        surrogates,
    })
}

/// The per-epoch statistics of one run, as results show them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// Epochs recorded.
    pub epochs: u64,
    /// Drift statistics of the projected coordinates per epoch (rates per
    /// epoch, lags and frequencies in epochs).
    pub drift: crate::trajectory::DriftStats,
    /// `(cycles per epoch, mean, std)` over weights of the increment spectra.
    pub increment_spectrum: Vec<(F64, F64, F64)>,
    /// ‖x‖ at the first recorded epoch.
    #[serde(with = "crate::json_f64")]
    pub weight_norm_first: f64,
    /// ‖x‖ at the last.
    #[serde(with = "crate::json_f64")]
    pub weight_norm_last: f64,
    /// Least-squares trend of ‖x‖, relative, per 1,000 epochs.
    #[serde(with = "crate::json_f64")]
    pub weight_norm_trend: f64,
    /// The surrogate test for spectral peaks.
    pub peaks: Option<PeakTest>,
}

impl EpochStats {
    /// Statistics of one run's sums.
    pub fn from_sums(s: &EpochSums) -> Self {
        EpochStats {
            epochs: s.trajectory.points,
            drift: crate::trajectory::DriftStats::from_sums(&s.trajectory),
            increment_spectrum: s.increments.mean_std().into_iter().map(|(f, m, d)| (F64(f), F64(m), F64(d))).collect(),
            weight_norm_first: s.weight_norm.first,
            weight_norm_last: s.weight_norm.last,
            weight_norm_trend: s.weight_norm.relative_per_kilo_epoch(),
            peaks: s.peaks.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AR(1) coordinates: a smooth spectrum.
    fn ar1(k: usize, len: usize, phi: f64, line: Option<(f64, f64)>, seed: u64) -> TrajectorySums {
        let mut rng = Rng::new(seed, Stream::Other(1));
        let mut rec = TrajectoryRecorder::with_spectrum(k, default_lags(64), 64);
        let mut x = vec![0.0; k];
        for t in 0..len {
            for (a, v) in x.iter_mut().enumerate() {
                *v = phi * *v + rng.normal();
                if let (0, Some((f, amp))) = (a, line) {
                    *v += amp * (2.0 * std::f64::consts::PI * f * t as f64).cos();
                }
            }
            rec.push(&x);
        }
        rec.into_sums()
    }

    #[test]
    fn the_surrogate_test_holds_its_level_and_finds_a_line() {
        // Under the null (AR(1): smooth red spectra) p ≤ 0.05 about 5 % of
        // the time; 40 trials, seeded: at most 6 rejections (7 or more have
        // probability 0.0034 at the nominal rate).
        let mut rejections = 0;
        for trial in 0..40 {
            // Half of them nearly a random walk: red, as weights are.
            let s = ar1(4, 2048, if trial % 2 == 0 { 0.9 } else { 0.999 }, None, trial);
            let t = peak_test(&s, 39, &mut Rng::new(trial, Stream::Surrogates)).expect("windows");
            assert!(t.p_value > 0.0 && t.p_value <= 1.0);
            if t.p_value <= 0.05 {
                rejections += 1;
            }
        }
        assert!(rejections <= 6, "{rejections} of 40 null trials rejected at 5 %");
        // A line at 0.125 cycles per step in coordinate 0 is found there.
        let s = ar1(4, 2048, 0.9, Some((0.125, 1.5)), 7);
        let t = peak_test(&s, 39, &mut Rng::new(7, Stream::Surrogates)).expect("windows");
        assert_eq!((t.coordinate, t.frequency), (0, 0.125));
        assert!(t.p_value <= 0.025, "{t:?}");
    }

    #[test]
    fn increments_spectra_and_the_norm_trend_read_what_was_recorded() {
        // Weights x_e = (e·g, sin(2π e/8)·1, white noise): the first grows
        // linearly (a flat increment spectrum of zero variance after the
        // mean is removed), the second oscillates at 1/8 cycles per epoch.
        let (d, w) = (3, 32);
        let mut rec = EpochRecorder::new(2, d, w);
        let mut rng = Rng::new(3, Stream::Other(2));
        for e in 0..400 {
            let x = [
                0.01 * e as f32,
                (2.0 * std::f64::consts::PI * e as f64 / 8.0).sin() as f32,
                0.1 * rng.normal() as f32,
            ];
            rec.push(&x, &[x[1] as f64, x[2] as f64]);
        }
        assert!(rec.fits(2, d, w));
        let json = serde_json::to_string(&rec).expect("serialise");
        assert_eq!(serde_json::from_str::<EpochRecorder>(&json).expect("parse"), rec);
        let s = rec.into_sums(1);
        s.validate().expect("valid");
        assert_eq!(s.increments.coords, 3);
        let spec = s.increments.mean_std();
        let top = spec.iter().max_by(|a, b| a.1.total_cmp(&b.1)).expect("bins");
        assert_eq!(top.0, 0.125, "the oscillation's increments peak at its frequency");
        // The norm grows: ‖x‖ ≈ 0.01 e dominates by the end.
        assert!(s.weight_norm.slope() > 0.0 && s.weight_norm.last > s.weight_norm.first);
        assert!(s.peaks.is_some());
    }

    #[test]
    fn the_norm_trend_of_a_line_is_its_slope() {
        let mut n = NormTrend::default();
        for e in 0..100 {
            n.push(2.0 + 0.01 * e as f64);
        }
        assert!((n.slope() - 0.01).abs() < 1e-12);
        assert!((n.relative_per_kilo_epoch() - 10.0 / n.mean()).abs() < 1e-9);
    }
}
