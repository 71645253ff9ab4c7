//! Trajectory projections and their drift statistics.
//!
//! Every SGD step the weights are projected onto `k` fixed orthonormal
//! directions. A [`TrajectorySums`] accumulates sums from which every drift
//! statistic is read, and sums from disjoint windows, segments or runs add up
//! ([`TrajectorySums::merge`]):
//!
//! - at lag 0, `Σ x_t` and `Σ x_t x_tᵀ` (the stationary covariance `C(0)`);
//! - for a set of lags `τ`, the sums that define the centred lagged
//!   covariance `C(τ) = ⟨x_{t+τ} x_tᵀ⟩ − ⟨x_{t+τ}⟩⟨x_t⟩ᵀ` and the
//!   mean-squared displacement `⟨‖x_{t+τ} − x_t‖²⟩`;
//! - optionally the Welch-averaged power spectrum of each coordinate
//!   (Hann windows of `W` points, hop `W/2`, each window's mean removed).
//!
//! The antisymmetric part `A(τ) = (C(τ) − C(τ)ᵀ)/2` vanishes under detailed
//! balance; `A_ji(1)` is the area-enclosing rate `½⟨x_i dx_j − x_j dx_i⟩`
//! per step of the pair `(i, j)`, and `2 A_ji(1) / (C_ii(0) + C_jj(0))` its
//! cycling frequency (mean angular velocity, radians per step).

use serde::{Deserialize, Serialize};

use crate::json_f64::F64;

/// Lags `1, 2, 4, …` up to `max_lag`.
pub fn default_lags(max_lag: usize) -> Vec<usize> {
    let mut lags = vec![];
    let mut t = 1;
    while t <= max_lag.max(1) {
        lags.push(t);
        t *= 2;
    }
    lags
}

/// Whether `w` is an accepted Welch window length: 0 (no spectrum) or a
/// power of two in `8..=4096`.
pub fn valid_psd_window(w: usize) -> bool {
    w == 0 || (w.is_power_of_two() && (8..=4096).contains(&w))
}

/// Mergeable sums over a projected trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectorySums {
    /// Number of coordinates `k`.
    pub k: usize,
    /// The lags.
    pub lags: Vec<usize>,
    /// Per lag: number of pairs `(t, t+τ)`.
    pub count: Vec<u64>,
    /// Per lag: Σ x_{t+τ} x_tᵀ (k×k row-major: `[a*k + b] = Σ x_{t+τ,a} x_{t,b}`).
    pub cross: Vec<Vec<f64>>,
    /// Per lag: Σ x_{t+τ}.
    pub sum_lead: Vec<Vec<f64>>,
    /// Per lag: Σ x_t.
    pub sum_lag: Vec<Vec<f64>>,
    /// Per lag: Σ ‖x_{t+τ} − x_t‖².
    pub msd: Vec<f64>,
    /// Points seen.
    pub points: u64,
    /// Σ x_t over all points (k values; empty in sums written by versions
    /// without lag-0 sums, whose lag-0 statistics then read NaN).
    #[serde(default)]
    pub sum: Vec<f64>,
    /// Σ x_t x_tᵀ over all points (k×k, row-major; empty as for `sum`).
    #[serde(default)]
    pub second: Vec<f64>,
    /// Welch window length `W` (0: no spectrum recorded).
    #[serde(default)]
    pub psd_window: usize,
    /// Σ over windows of each coordinate's one-sided periodogram:
    /// `k × (W/2 + 1)` values, coordinate-major; bin `m` is frequency `m/W`
    /// cycles per step.
    #[serde(default)]
    pub psd: Vec<f64>,
    /// Windows summed into `psd`.
    #[serde(default)]
    pub psd_windows: u64,
    /// Σ over windows of the quadrature cross-spectrum `Im S₀₁(f)` of the
    /// first two coordinates (`W/2 + 1` bins; empty without a spectrum or
    /// with k < 2): the frequency-resolved counterpart of `A₁₀(τ)`.
    #[serde(default)]
    pub quadrature: Vec<f64>,
    /// The same run recorded once per epoch (`[probe] epoch_psd_window`),
    /// see [`crate::epochs`]. A run's own: [`merge`](Self::merge) and
    /// [`pool`](Self::pool) leave it out, and cells read it run by run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<Box<crate::epochs::EpochSums>>,
}

impl TrajectorySums {
    /// Empty sums for `k` coordinates and the given lags, without a spectrum.
    pub fn new(k: usize, lags: Vec<usize>) -> Self {
        Self::with_spectrum(k, lags, 0)
    }

    /// Empty sums for `k` coordinates, the given lags and Welch windows of
    /// `window` points (0: none; otherwise see [`valid_psd_window`]).
    pub fn with_spectrum(k: usize, lags: Vec<usize>, window: usize) -> Self {
        let nl = lags.len();
        TrajectorySums {
            k,
            count: vec![0; nl],
            cross: vec![vec![0.0; k * k]; nl],
            sum_lead: vec![vec![0.0; k]; nl],
            sum_lag: vec![vec![0.0; k]; nl],
            msd: vec![0.0; nl],
            lags,
            points: 0,
            sum: vec![0.0; k],
            second: vec![0.0; k * k],
            psd_window: window,
            psd: if window > 0 { vec![0.0; k * (window / 2 + 1)] } else { vec![] },
            psd_windows: 0,
            quadrature: if window > 0 && k >= 2 { vec![0.0; window / 2 + 1] } else { vec![] },
            epochs: None,
        }
    }

    /// Checks shapes and values: every array has the length its `k`, lags
    /// and window imply, every value is finite, spectra are non-negative.
    pub fn validate(&self) -> Result<(), String> {
        let (k, nl) = (self.k, self.lags.len());
        let shapes = self.count.len() == nl
            && self.msd.len() == nl
            && self.cross.len() == nl
            && self.sum_lead.len() == nl
            && self.sum_lag.len() == nl
            && self.cross.iter().all(|c| c.len() == k * k)
            && self.sum_lead.iter().chain(&self.sum_lag).all(|v| v.len() == k)
            && self.lags.iter().all(|&t| t > 0)
            && (self.sum.is_empty() && self.second.is_empty() || self.sum.len() == k && self.second.len() == k * k)
            && valid_psd_window(self.psd_window)
            && self.psd.len() == if self.psd_window > 0 { k * (self.psd_window / 2 + 1) } else { 0 }
            && (self.quadrature.is_empty() || self.psd_window > 0 && self.quadrature.len() == self.psd_window / 2 + 1);
        if !shapes {
            return Err(format!("inconsistent shapes for k={k}, lags={:?}, window={}", self.lags, self.psd_window));
        }
        let finite = self
            .msd
            .iter()
            .chain(self.cross.iter().flatten())
            .chain(self.sum_lead.iter().flatten())
            .chain(self.sum_lag.iter().flatten())
            .chain(&self.sum)
            .chain(&self.second)
            .chain(&self.psd)
            .chain(&self.quadrature)
            .all(|v| v.is_finite());
        if !finite {
            return Err("non-finite values".into());
        }
        if self.psd.iter().any(|&p| p < 0.0) {
            return Err("negative power".into());
        }
        self.epochs.as_ref().map_or(Ok(()), |e| e.validate())
    }

    /// Adds the sums of another window with the same shape.
    pub fn merge(&mut self, other: &TrajectorySums) -> Result<(), String> {
        if self.k != other.k || self.lags != other.lags || self.psd_window != other.psd_window {
            return Err(format!(
                "trajectory shapes differ: k={} lags={:?} window={} vs k={} lags={:?} window={}",
                self.k, self.lags, self.psd_window, other.k, other.lags, other.psd_window
            ));
        }
        fn add(a: &mut [f64], b: &[f64]) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for l in 0..self.lags.len() {
            self.count[l] += other.count[l];
            add(&mut self.cross[l], &other.cross[l]);
            add(&mut self.sum_lead[l], &other.sum_lead[l]);
            add(&mut self.sum_lag[l], &other.sum_lag[l]);
            self.msd[l] += other.msd[l];
        }
        if other.sum.is_empty() {
            // Lag-0 sums are known only if every part has them.
            self.sum.clear();
            self.second.clear();
        } else if !self.sum.is_empty() {
            add(&mut self.sum, &other.sum);
            add(&mut self.second, &other.second);
        }
        add(&mut self.psd, &other.psd);
        if other.quadrature.len() != self.quadrature.len() {
            // Known only if every part has it.
            self.quadrature.clear();
        }
        add(&mut self.quadrature, &other.quadrature);
        self.psd_windows += other.psd_windows;
        self.points += other.points;
        self.epochs = None;
        Ok(())
    }

    /// The sums with every moment centred on the trajectory's own means:
    /// at each lag `Σ (x_{t+τ} − μ_lead)(x_t − μ_lag)ᵀ` with the first
    /// moments then zero, and likewise at lag 0. The statistics of one
    /// trajectory read the same from either form; what changes is a merge.
    /// Adding centred sums pools the *within*-trajectory moments, so
    /// trajectories that settle around different points (seeds in different
    /// minima, or each projected on its own eigenvectors) do not count the
    /// spread between their means as motion. Segments of one trajectory
    /// must be merged raw, before centring. The spectra are already
    /// centred per window and are kept as they are.
    pub fn centred(&self) -> TrajectorySums {
        let mut c = self.clone();
        c.epochs = None;
        for l in 0..c.lags.len() {
            let n = c.count[l] as f64;
            c.cross[l] = self.lagged_covariance(l).into_iter().map(|v| v * n).collect();
            c.sum_lead[l].fill(0.0);
            c.sum_lag[l].fill(0.0);
        }
        if let Some(cov) = self.covariance() {
            let n = c.points as f64;
            c.second = cov.into_iter().map(|v| v * n).collect();
            c.sum.fill(0.0);
        }
        c
    }

    /// Pools trajectories that are separate runs: their
    /// [`centred`](Self::centred) sums added (`None` for none; an error if
    /// their shapes differ).
    pub fn pool<'a>(runs: impl IntoIterator<Item = &'a TrajectorySums>) -> Result<Option<TrajectorySums>, String> {
        let mut acc: Option<TrajectorySums> = None;
        for t in runs {
            match &mut acc {
                None => acc = Some(t.centred()),
                Some(m) => m.merge(&t.centred())?,
            }
        }
        Ok(acc)
    }

    /// Whether these sums were written by a build without lag-0 sums and
    /// spectra (a recorder resumed from such a checkpoint goes on without
    /// them).
    pub fn is_legacy(&self) -> bool {
        self.sum.is_empty() && self.psd_window == 0
    }

    /// Centred covariance `C(0)` of the points (k×k), if lag-0 sums exist.
    pub fn covariance(&self) -> Option<Vec<f64>> {
        if self.sum.is_empty() || self.points == 0 {
            return None;
        }
        let (k, n) = (self.k, self.points as f64);
        let mut c = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                c[a * k + b] = self.second[a * k + b] / n - (self.sum[a] / n) * (self.sum[b] / n);
            }
        }
        Some(c)
    }

    /// Centred lagged covariance `C(τ)` at lag index `l` (k×k).
    pub fn lagged_covariance(&self, l: usize) -> Vec<f64> {
        let k = self.k;
        let n = self.count[l].max(1) as f64;
        let mut c = vec![0.0; k * k];
        for a in 0..k {
            for b in 0..k {
                c[a * k + b] = self.cross[l][a * k + b] / n - (self.sum_lead[l][a] / n) * (self.sum_lag[l][b] / n);
            }
        }
        c
    }

    /// Area-enclosing rate per step of pair `(i, j)`: `A_ji(1)`, from the
    /// smallest lag (which must be 1).
    pub fn area_rate(&self, i: usize, j: usize) -> f64 {
        self.pairs().area(i, j)
    }

    /// Cycling frequency of pair `(i, j)` in radians per step: the mean
    /// angular velocity `⟨x_i dx_j − x_j dx_i⟩ / ⟨x_i² + x_j²⟩` of the
    /// centred coordinates, i.e. `2 A_ji(1) / (C_ii(0) + C_jj(0))`.
    pub fn cycling_frequency(&self, i: usize, j: usize) -> f64 {
        self.pairs().cycling(i, j)
    }

    /// `C(0)` and `C(1)`, computed once for any number of pair statistics.
    fn pairs(&self) -> PairMoments {
        PairMoments {
            k: self.k,
            c0: self.covariance(),
            c1: (self.lags.first() == Some(&1) && self.count[0] > 0).then(|| self.lagged_covariance(0)),
        }
    }

    /// Autocorrelation per lag, averaged over the coordinates that move:
    /// `mean_a C_aa(τ) / C_aa(0)`.
    pub fn autocorrelation(&self) -> Vec<(usize, f64)> {
        let Some(c0) = self.covariance() else { return vec![] };
        let k = self.k;
        let moving: Vec<usize> = (0..k).filter(|&a| c0[a * k + a] > 0.0).collect();
        if moving.is_empty() {
            return vec![];
        }
        (0..self.lags.len())
            .filter(|&l| self.count[l] > 0)
            .map(|l| {
                let c = self.lagged_covariance(l);
                let r = moving.iter().map(|&a| c[a * k + a] / c0[a * k + a]).sum::<f64>() / moving.len() as f64;
                (self.lags[l], r)
            })
            .collect()
    }

    /// Welch power spectrum per coordinate: `(frequencies in cycles per
    /// step, for each coordinate the mean periodogram over windows)`, bins
    /// `0..=W/2`; `None` without a spectrum or before the first window.
    pub fn power_spectrum(&self) -> Option<(Vec<f64>, Vec<Vec<f64>>)> {
        if self.psd_window == 0 || self.psd_windows == 0 {
            return None;
        }
        let (w, bins) = (self.psd_window, self.psd_window / 2 + 1);
        let freqs = (0..bins).map(|m| m as f64 / w as f64).collect();
        let per = self.psd.chunks(bins).map(|c| c.iter().map(|p| p / self.psd_windows as f64).collect()).collect();
        Some((freqs, per))
    }

    /// Mean-squared displacement per lag.
    pub fn msd_curve(&self) -> Vec<(usize, f64)> {
        self.lags
            .iter()
            .zip(self.msd.iter().zip(&self.count))
            .filter(|(_, (_, c))| **c > 0)
            .map(|(&t, (m, c))| (t, m / *c as f64))
            .collect()
    }

    /// Least-squares slope of log MSD against log τ (1: Brownian).
    pub fn msd_exponent(&self) -> f64 {
        let pts: Vec<(f64, f64)> =
            self.msd_curve().into_iter().filter(|(_, m)| *m > 0.0).map(|(t, m)| ((t as f64).ln(), m.ln())).collect();
        log_log_fit(&pts).map_or(f64::NAN, |(_, slope)| slope)
    }
}

/// The covariances every pair statistic reads: `C(0)` (if lag-0 sums
/// exist) and `C(1)` (if the smallest lag is 1 and has pairs).
struct PairMoments {
    k: usize,
    c0: Option<Vec<f64>>,
    c1: Option<Vec<f64>>,
}

impl PairMoments {
    /// `A_ji(1) = ½(C_ji(1) − C_ij(1))`.
    fn area(&self, i: usize, j: usize) -> f64 {
        let k = self.k;
        self.c1.as_ref().map_or(f64::NAN, |c| 0.5 * (c[j * k + i] - c[i * k + j]))
    }

    /// `2 A_ji(1) / (C_ii(0) + C_jj(0))`, NaN when neither coordinate moves.
    fn cycling(&self, i: usize, j: usize) -> f64 {
        let k = self.k;
        match &self.c0 {
            Some(c) if c[i * k + i] + c[j * k + j] > 0.0 => 2.0 * self.area(i, j) / (c[i * k + i] + c[j * k + j]),
            _ => f64::NAN,
        }
    }
}

/// Least-squares line `y = a + s·x` through `pts`: `(a, s)`, if at least two
/// distinct x.
fn log_log_fit(pts: &[(f64, f64)]) -> Option<(f64, f64)> {
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let s = sxy / sxx;
    Some((my - s * mx, s))
}

/// Shape of one coordinate's spectrum: a power law `P ∝ f^(−α)` fitted in
/// log–log over the non-zero bins is the background; the peak is the bin
/// furthest above it. Returns `(α, peak frequency, peak / background)`.
pub fn spectral_peak(freqs: &[f64], power: &[f64]) -> Option<(f64, f64, f64)> {
    let bins: Vec<(f64, f64)> =
        freqs.iter().copied().zip(power.iter().copied()).skip(1).filter(|b| b.1 > 0.0).collect();
    let pts: Vec<(f64, f64)> = bins.iter().map(|(f, p)| (f.ln(), p.ln())).collect();
    let (a, s) = log_log_fit(&pts)?;
    let (mut best_f, mut best_r) = (f64::NAN, f64::NEG_INFINITY);
    for (&(f, _), &(lf, lp)) in bins.iter().zip(&pts) {
        let r = (lp - (a + s * lf)).exp();
        if r > best_r {
            (best_f, best_r) = (f, r);
        }
    }
    Some((-s, best_f, best_r))
}

/// In-place iterative radix-2 FFT of `(re, im)`; the length is a power of two.
/// Each stage's twiddle factors are computed once (the same values as one
/// per butterfly, so the result is bit-identical).
pub(crate) fn fft(re: &mut [f64], im: &mut [f64]) {
    let n = re.len();
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    let mut twiddles: Vec<(f64, f64)> = Vec::with_capacity(n / 2);
    while len <= n {
        let ang = -2.0 * std::f64::consts::PI / len as f64;
        twiddles.clear();
        twiddles.extend((0..len / 2).map(|m| ((ang * m as f64).cos(), (ang * m as f64).sin())));
        for start in (0..n).step_by(len) {
            for (m, &(wr, wi)) in twiddles.iter().enumerate() {
                let (a, b) = (start + m, start + m + len / 2);
                let (xr, xi) = (re[b] * wr - im[b] * wi, re[b] * wi + im[b] * wr);
                re[b] = re[a] - xr;
                im[b] = im[a] - xi;
                re[a] += xr;
                im[a] += xi;
            }
        }
        len <<= 1;
    }
}

/// One Welch window's periodogram: each window's mean removed, a periodic
/// Hann taper, one-sided, normalised by Σ taper² so white noise of variance
/// σ² reads 2σ² per bin. Holds the taper and the work buffers, so one value
/// serves every window and coordinate of the same length.
pub(crate) struct Periodogram {
    taper: Vec<f64>,
    norm: f64,
    /// Real part of the last window's transform (bins `0..=W/2` are read).
    pub(crate) re: Vec<f64>,
    /// Imaginary part of the last window's transform.
    pub(crate) im: Vec<f64>,
}

impl Periodogram {
    /// For windows of `w` points (a power of two).
    pub(crate) fn new(w: usize) -> Self {
        let taper: Vec<f64> =
            (0..w).map(|t| 0.5 * (1.0 - (2.0 * std::f64::consts::PI * t as f64 / w as f64).cos())).collect();
        let norm = taper.iter().map(|v| v * v).sum();
        Periodogram { taper, norm, re: vec![0.0; w], im: vec![0.0; w] }
    }

    /// Transforms the window whose point `t` is `value(t)`, mean removed
    /// and tapered, into `re`/`im`.
    pub(crate) fn transform(&mut self, value: impl Fn(usize) -> f64) {
        let w = self.taper.len();
        let mean = (0..w).map(&value).sum::<f64>() / w as f64;
        for t in 0..w {
            self.re[t] = (value(t) - mean) * self.taper[t];
            self.im[t] = 0.0;
        }
        fft(&mut self.re, &mut self.im);
    }

    /// The one-sided weight of bin `m` (1 at 0 and W/2, 2 between).
    fn one_sided(&self, m: usize, p: f64) -> f64 {
        if m == 0 || m == self.taper.len() / 2 { p } else { 2.0 * p }
    }

    /// Power of bin `m` of the last transform.
    pub(crate) fn power(&self, m: usize) -> f64 {
        self.one_sided(m, (self.re[m] * self.re[m] + self.im[m] * self.im[m]) / self.norm)
    }

    /// Adds the last transform's power at bins `0..=W/2` to `out`.
    pub(crate) fn add_power(&self, out: &mut [f64]) {
        for (m, o) in out.iter_mut().enumerate() {
            *o += self.power(m);
        }
    }

    /// `Im(X₀ · conj X₁)` at bin `m`, one-sided and normalised, for the
    /// transform `(r0, i0)` of coordinate 0 and the last one of coordinate 1.
    fn quadrature(&self, m: usize, r0: &[f64], i0: &[f64]) -> f64 {
        self.one_sided(m, (i0[m] * self.re[m] - r0[m] * self.im[m]) / self.norm)
    }
}

/// Feeds points one at a time into [`TrajectorySums`], keeping the last
/// points the lags and the spectrum window need. Serialisable, so a
/// checkpoint can carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryRecorder {
    sums: TrajectorySums,
    history: std::collections::VecDeque<Vec<f64>>,
    /// Points since the last spectrum window was taken.
    #[serde(default)]
    since_window: usize,
}

impl TrajectoryRecorder {
    /// A recorder of `k` coordinates at `lags`, without a spectrum.
    pub fn new(k: usize, lags: Vec<usize>) -> Self {
        Self::with_spectrum(k, lags, 0)
    }

    /// A recorder of `k` coordinates at `lags` with Welch windows of
    /// `window` points (0: none).
    pub fn with_spectrum(k: usize, lags: Vec<usize>, window: usize) -> Self {
        TrajectoryRecorder {
            sums: TrajectorySums::with_spectrum(k, lags, window),
            history: Default::default(),
            since_window: 0,
        }
    }

    fn keep(&self) -> usize {
        self.sums.lags.iter().copied().max().unwrap_or(1).max(self.sums.psd_window)
    }

    /// Records the next point.
    pub fn push(&mut self, x: &[f64]) {
        let s = &mut self.sums;
        let k = s.k;
        for (l, &tau) in s.lags.iter().enumerate() {
            if tau > self.history.len() {
                continue;
            }
            let past = &self.history[self.history.len() - tau];
            s.count[l] += 1;
            let mut m = 0.0;
            for a in 0..k {
                s.sum_lead[l][a] += x[a];
                s.sum_lag[l][a] += past[a];
                m += (x[a] - past[a]).powi(2);
                for b in 0..k {
                    s.cross[l][a * k + b] += x[a] * past[b];
                }
            }
            s.msd[l] += m;
        }
        if !s.sum.is_empty() {
            for a in 0..k {
                s.sum[a] += x[a];
                for b in 0..k {
                    s.second[a * k + b] += x[a] * x[b];
                }
            }
        }
        s.points += 1;
        let keep = self.keep();
        self.history.push_back(x.to_vec());
        if self.history.len() > keep {
            self.history.pop_front();
        }
        let w = self.sums.psd_window;
        if w > 0 {
            self.since_window += 1;
            if self.history.len() >= w && self.since_window >= w / 2 {
                self.add_window();
                self.since_window = 0;
            }
        }
    }

    /// Adds the periodogram of the last `W` points (each coordinate's
    /// window mean removed, periodic Hann taper, one-sided, normalised by
    /// Σ taper² so white noise of variance σ² reads 2σ² per bin).
    fn add_window(&mut self) {
        let s = &mut self.sums;
        let (w, k) = (s.psd_window, s.k);
        let bins = w / 2 + 1;
        let start = self.history.len() - w;
        let mut pg = Periodogram::new(w);
        let mut first: Option<(Vec<f64>, Vec<f64>)> = None;
        for a in 0..k {
            let history = &self.history;
            pg.transform(|t| history[start + t][a]);
            pg.add_power(&mut s.psd[a * bins..(a + 1) * bins]);
            match (a, &first) {
                (0, _) => first = Some((pg.re[..bins].to_vec(), pg.im[..bins].to_vec())),
                // Im(X₀ · conj X₁): positive when coordinate 1 lags 0 by a quarter turn.
                (1, Some((r0, i0))) if !s.quadrature.is_empty() => {
                    for m in 0..bins {
                        s.quadrature[m] += pg.quadrature(m, r0, i0);
                    }
                }
                _ => {}
            }
        }
        s.psd_windows += 1;
    }

    /// Whether the sums and remembered points are consistent and finite
    /// (checked when a checkpoint is read).
    pub fn is_finite(&self) -> bool {
        let s = &self.sums;
        s.validate().is_ok()
            && self.history.iter().all(|p| p.len() == s.k && p.iter().all(|x| x.is_finite()))
            && self.history.len() <= self.keep()
            && self.since_window <= s.psd_window.max(1)
    }

    /// The sums so far.
    pub fn sums(&self) -> &TrajectorySums {
        &self.sums
    }

    /// Consumes the recorder.
    pub fn into_sums(self) -> TrajectorySums {
        self.sums
    }
}

/// Drift statistics of one trajectory (or merged trajectories).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftStats {
    /// Points recorded.
    pub points: u64,
    /// Area-enclosing rate per step of the pair of the first two directions.
    #[serde(with = "crate::json_f64")]
    pub area_rate: f64,
    /// Largest |area rate| over all pairs, with its sign.
    #[serde(with = "crate::json_f64")]
    pub max_area_rate: f64,
    /// The pair `(i, j)` of `max_area_rate`.
    pub max_area_pair: (usize, usize),
    /// Cycling frequency (radians per step) of the first two directions.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub cycling_frequency: f64,
    /// Cycling frequency of the pair `max_area_pair`.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub max_pair_cycling_frequency: f64,
    /// Fitted exponent of MSD(τ) ∝ τ^c.
    #[serde(with = "crate::json_f64")]
    pub msd_exponent: f64,
    /// (lag, MSD) points.
    pub msd: Vec<(usize, f64)>,
    /// (lag, autocorrelation averaged over coordinates).
    #[serde(default)]
    pub autocorrelation: Vec<(usize, f64)>,
    /// Exponent α of the spectral background `P ∝ f^(−α)`, averaged over
    /// coordinates (0: white; 2: a random walk).
    #[serde(default = "nan", with = "crate::json_f64")]
    pub spectral_exponent: f64,
    /// Frequency (cycles per step) of the strongest peak above the
    /// background, over all coordinates.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub peak_frequency: f64,
    /// That peak's power over the fitted background at its frequency.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub peak_to_background: f64,
    /// (frequency in cycles per step, power averaged over coordinates), for
    /// frequencies above 0.
    #[serde(default)]
    pub spectrum: Vec<(f64, f64)>,
    /// (frequency in cycles per step, `Im S₀₁`): the quadrature
    /// cross-spectrum of the first two directions, averaged over windows; its
    /// sign at a frequency says which way the pair circulates there.
    #[serde(default)]
    pub quadrature_spectrum: Vec<(f64, f64)>,
    /// The frequency (cycles per step) where `|Im S₀₁|` is largest.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub circulation_frequency: f64,
    /// Area-enclosing rate per step of every pair: `[i][j]` is that of
    /// `(i, j)` (antisymmetric, zero diagonal).
    #[serde(default)]
    pub area_rates: Vec<Vec<F64>>,
    /// Cycling frequency (radians per step) of every pair: `[i][j]` is that
    /// of `(i, j)` (antisymmetric; NaN where a coordinate does not move).
    #[serde(default)]
    pub cycling_frequencies: Vec<Vec<F64>>,
}

fn nan() -> f64 {
    f64::NAN
}

/// The k×k matrix of an antisymmetric pair statistic `f(i, j)`, i < j.
fn pairwise(k: usize, f: impl Fn(usize, usize) -> f64) -> Vec<Vec<F64>> {
    let mut m = vec![vec![F64(0.0); k]; k];
    for i in 0..k {
        for j in (i + 1)..k {
            let v = f(i, j);
            (m[i][j], m[j][i]) = (F64(v), F64(-v));
        }
    }
    m
}

impl DriftStats {
    /// Statistics of the sums.
    pub fn from_sums(s: &TrajectorySums) -> Self {
        let k = s.k;
        let pm = s.pairs();
        let area = |i: usize, j: usize| pm.area(i, j);
        let cycling = |i: usize, j: usize| pm.cycling(i, j);
        let mut best = (f64::NAN, (0, 1));
        for i in 0..k {
            for j in (i + 1)..k {
                let r = area(i, j);
                if best.0.is_nan() || r.abs() > best.0.abs() {
                    best = (r, (i, j));
                }
            }
        }
        let (mut alpha, mut peak_f, mut peak_r, mut spectrum) = (f64::NAN, f64::NAN, f64::NAN, vec![]);
        let quadrature: Vec<(f64, f64)> = if s.psd_windows > 0 && !s.quadrature.is_empty() {
            let w = s.psd_window as f64;
            (1..s.quadrature.len()).map(|m| (m as f64 / w, s.quadrature[m] / s.psd_windows as f64)).collect()
        } else {
            vec![]
        };
        if let Some((freqs, per)) = s.power_spectrum() {
            let shapes: Vec<(f64, f64, f64)> = per.iter().filter_map(|p| spectral_peak(&freqs, p)).collect();
            if !shapes.is_empty() {
                alpha = shapes.iter().map(|x| x.0).sum::<f64>() / shapes.len() as f64;
                let top =
                    shapes.iter().max_by(|a, b| a.2.total_cmp(&b.2)).copied().unwrap_or((0.0, f64::NAN, f64::NAN));
                (peak_f, peak_r) = (top.1, top.2);
            }
            spectrum = (1..freqs.len())
                .map(|m| (freqs[m], per.iter().map(|p| p[m]).sum::<f64>() / per.len().max(1) as f64))
                .collect();
        }
        DriftStats {
            points: s.points,
            area_rate: if k >= 2 { area(0, 1) } else { f64::NAN },
            max_area_rate: best.0,
            max_area_pair: best.1,
            cycling_frequency: if k >= 2 { cycling(0, 1) } else { f64::NAN },
            max_pair_cycling_frequency: if k >= 2 { cycling(best.1.0, best.1.1) } else { f64::NAN },
            msd_exponent: s.msd_exponent(),
            msd: s.msd_curve(),
            autocorrelation: s.autocorrelation(),
            spectral_exponent: alpha,
            peak_frequency: peak_f,
            peak_to_background: peak_r,
            spectrum,
            circulation_frequency: quadrature
                .iter()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map_or(f64::NAN, |x| x.0),
            quadrature_spectrum: quadrature,
            area_rates: pairwise(k, area),
            cycling_frequencies: pairwise(k, cycling),
        }
    }

    /// The autocorrelation at the largest lag recorded (NaN if none).
    pub fn autocorrelation_at_max_lag(&self) -> f64 {
        self.autocorrelation.last().map_or(f64::NAN, |x| x.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_has_area_and_reversible_noise_does_not() {
        // Deterministic rotation by θ per step on a unit circle: A_10(1) =
        // ½(⟨x1' x0⟩ − ⟨x0' x1⟩) = ½ sin θ · (x0² + x1²) averaged = ½ sin θ.
        let theta = 0.1f64;
        let mut rec = TrajectoryRecorder::new(2, default_lags(8));
        for t in 0..20_000 {
            let a = theta * t as f64;
            rec.push(&[a.cos(), a.sin()]);
        }
        let r = rec.sums().area_rate(0, 1);
        assert!((r - 0.5 * theta.sin()).abs() < 1e-3, "{r}");
        // Reversing time flips the sign.
        let mut back = TrajectoryRecorder::new(2, default_lags(8));
        for t in (0..20_000).rev() {
            let a = theta * t as f64;
            back.push(&[a.cos(), a.sin()]);
        }
        assert!((back.sums().area_rate(0, 1) + r).abs() < 1e-3);
    }

    /// Two seeds circling at the same rate around points far apart: pooled,
    /// they cycle at that rate; their raw sums added would count the gap
    /// between the centres as variance and read a far slower rotation.
    #[test]
    fn pooled_runs_cycle_at_their_own_rate_wherever_they_settle() {
        let theta = 0.05f64;
        let run = |cx: f64, cy: f64, seed: u64| {
            let mut r = crate::rng::Rng::new(seed, crate::rng::Stream::Other(7));
            let mut rec = TrajectoryRecorder::with_spectrum(2, vec![1, 2, 4], 64);
            for t in 0..20_000 {
                let a = theta * t as f64;
                rec.push(&[cx + a.cos() + 0.1 * r.normal(), cy + a.sin() + 0.1 * r.normal()]);
            }
            rec.into_sums()
        };
        let (one, other) = (run(0.0, 0.0, 1), run(30.0, -40.0, 2));
        let own = DriftStats::from_sums(&one);
        // Centring does not change a single trajectory's statistics.
        let centred = DriftStats::from_sums(&one.centred());
        for (x, y) in [
            (own.cycling_frequency, centred.cycling_frequency),
            (own.area_rate, centred.area_rate),
            (own.msd_exponent, centred.msd_exponent),
        ] {
            assert!((x - y).abs() <= 1e-9 * x.abs().max(1e-12), "{x} vs {y}");
        }
        let pooled = DriftStats::from_sums(&TrajectorySums::pool([&one, &other]).unwrap().unwrap());
        let expect = theta.sin();
        assert!(
            (pooled.cycling_frequency.abs() - expect).abs() < 0.05 * expect,
            "pooled ω {}",
            pooled.cycling_frequency
        );
        let mut raw = one.clone();
        raw.merge(&other).unwrap();
        let raw = DriftStats::from_sums(&raw);
        assert!(raw.cycling_frequency.abs() < 0.01 * expect, "raw ω {} counts the gap", raw.cycling_frequency);
        assert_eq!(pooled.points, 40_000);
        // Shapes must match, as for a merge.
        let odd = TrajectorySums::new(3, vec![1, 2, 4]);
        assert!(TrajectorySums::pool([&one, &odd]).is_err());
        assert!(TrajectorySums::pool([]).unwrap().is_none());
    }

    #[test]
    fn rotation_cycles_at_its_angular_velocity() {
        // Unit circle, θ per step: ⟨x_i dx_j − x_j dx_i⟩ = sin θ, ⟨x_i² + x_j²⟩ = 1.
        for theta in [0.05f64, 0.3] {
            let mut rec = TrajectoryRecorder::new(2, vec![1]);
            (0..20_000).for_each(|t| rec.push(&[(theta * t as f64).cos(), (theta * t as f64).sin()]));
            let w = rec.sums().cycling_frequency(0, 1);
            assert!((w - theta.sin()).abs() < 2e-3, "θ = {theta}: {w}");
            let st = DriftStats::from_sums(rec.sums());
            assert_eq!(st.cycling_frequencies[0][1].0, w);
            assert_eq!(st.cycling_frequencies[1][0].0, -w);
            assert_eq!(st.area_rates[0][1].0, st.area_rate);
        }
    }

    #[test]
    fn ar1_autocorrelation_decays_as_phi_to_the_lag() {
        let phi = 0.9f64;
        let mut r = crate::rng::Rng::new(5, crate::rng::Stream::Other(9));
        let mut rec = TrajectoryRecorder::new(2, default_lags(16));
        let mut x = [0.0f64; 2];
        for _ in 0..400_000 {
            x.iter_mut().for_each(|v| *v = phi * *v + r.normal());
            rec.push(&x);
        }
        let ac = rec.sums().autocorrelation();
        assert_eq!(ac.iter().map(|a| a.0).collect::<Vec<_>>(), vec![1, 2, 4, 8, 16]);
        for (tau, rho) in ac {
            let want = phi.powi(tau as i32);
            assert!((rho - want).abs() < 0.02, "τ = {tau}: {rho} vs {want}");
        }
    }

    /// White noise: flat background (α ≈ 0) and no peak; a sinusoid in that
    /// noise: the peak sits at its frequency, far above the background; a
    /// random walk: α near 2.
    #[test]
    fn welch_spectrum_finds_peaks_and_power_laws() {
        let mut r = crate::rng::Rng::new(2, crate::rng::Stream::Other(4));
        let spectrum = |f: &mut dyn FnMut(usize) -> [f64; 2]| {
            let mut rec = TrajectoryRecorder::with_spectrum(2, vec![1], 64);
            (0..64 * 400).for_each(|t| rec.push(&f(t)));
            DriftStats::from_sums(rec.sums())
        };
        let white = spectrum(&mut |_| [r.normal(), r.normal()]);
        assert!(white.spectral_exponent.abs() < 0.15, "white α {}", white.spectral_exponent);
        assert!(white.peak_to_background < 1.6, "white peak/bg {}", white.peak_to_background);
        // Periodogram level of unit white noise: 2σ² per one-sided bin.
        let level = white.spectrum.iter().map(|p| p.1).sum::<f64>() / white.spectrum.len() as f64;
        assert!((level - 2.0).abs() < 0.1, "white level {level}");

        let f0 = 0.125;
        let tone =
            spectrum(&mut |t| [2.0 * (2.0 * std::f64::consts::PI * f0 * t as f64).sin() + r.normal(), r.normal()]);
        assert_eq!(tone.peak_frequency, f0);
        assert!(tone.peak_to_background > 10.0, "tone peak/bg {}", tone.peak_to_background);

        // A noisy rotation at f0: the quadrature spectrum peaks there, positive
        // (coordinate 1 lags 0, as for a positive area rate A₁₀); reversed, negative.
        let rot = |dir: f64, r: &mut crate::rng::Rng| {
            let mut rec = TrajectoryRecorder::with_spectrum(2, vec![1], 64);
            for t in 0..64 * 400 {
                let a = 2.0 * std::f64::consts::PI * f0 * t as f64;
                rec.push(&[a.cos() + 0.5 * r.normal(), dir * a.sin() + 0.5 * r.normal()]);
            }
            DriftStats::from_sums(rec.sums())
        };
        let ccw = rot(1.0, &mut r);
        assert_eq!(ccw.circulation_frequency, f0);
        assert!(ccw.area_rate > 0.0);
        let at = |d: &DriftStats| d.quadrature_spectrum.iter().find(|x| x.0 == f0).unwrap().1;
        assert!(at(&ccw) > 0.0);
        let cw = rot(-1.0, &mut r);
        assert!(at(&cw) < 0.0 && cw.area_rate < 0.0);
        // White noise: no frequency carries circulation beyond noise.
        let q = white.quadrature_spectrum.iter().map(|x| x.1.abs()).fold(0.0, f64::max);
        assert!(q < 0.1 * at(&ccw), "white-noise quadrature {q} vs rotation {}", at(&ccw));

        let mut walk = [0.0f64; 2];
        let rw = spectrum(&mut |_| {
            walk.iter_mut().for_each(|v| *v += r.normal());
            walk
        });
        assert!((rw.spectral_exponent - 2.0).abs() < 0.4, "random-walk α {}", rw.spectral_exponent);
        assert!(rw.peak_to_background < 3.0, "a power law alone is no peak: {}", rw.peak_to_background);
    }

    #[test]
    fn spectra_of_segments_add_up_and_shapes_must_match() {
        let pts: Vec<[f64; 2]> = (0..512).map(|t| [(t as f64 * 0.3).sin(), (t as f64 * 0.05).cos()]).collect();
        let mut whole = TrajectoryRecorder::with_spectrum(2, vec![1, 2], 16);
        pts.iter().for_each(|p| whole.push(p));
        // A recorder carried across a checkpoint continues the same windows.
        let mut first = TrajectoryRecorder::with_spectrum(2, vec![1, 2], 16);
        pts[..200].iter().for_each(|p| first.push(p));
        let json = serde_json::to_string(&first).unwrap();
        let mut resumed: TrajectoryRecorder = serde_json::from_str(&json).unwrap();
        pts[200..].iter().for_each(|p| resumed.push(p));
        assert_eq!(resumed, whole);
        assert_eq!(whole.sums().psd_windows, (512 - 16) / 8 + 1);
        // Runs of a cell merge; spectra of different windows do not.
        let mut m = whole.sums().clone();
        m.merge(whole.sums()).unwrap();
        assert_eq!(m.psd_windows, 2 * whole.sums().psd_windows);
        assert_eq!(m.power_spectrum(), whole.sums().power_spectrum());
        assert!(m.merge(&TrajectorySums::with_spectrum(2, vec![1, 2], 32)).is_err());
        // Sums written before lag-0 sums existed still read, without them.
        let mut legacy = whole.sums().clone();
        (legacy.sum, legacy.second) = (vec![], vec![]);
        assert!(legacy.validate().is_ok());
        assert!(legacy.cycling_frequency(0, 1).is_nan());
        m.merge(&legacy).unwrap();
        assert!(m.covariance().is_none());
        let mut bad = whole.sums().clone();
        bad.psd[3] = -1.0;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn merge_of_windows_equals_sums_over_pairs_inside_windows() {
        let pts: Vec<[f64; 2]> = (0..100).map(|t| [(t as f64 * 0.3).sin(), (t as f64 * 0.7).cos()]).collect();
        let mut a = TrajectoryRecorder::new(2, vec![1, 2]);
        let mut b = TrajectoryRecorder::new(2, vec![1, 2]);
        pts[..50].iter().for_each(|p| a.push(p));
        pts[50..].iter().for_each(|p| b.push(p));
        let mut m = a.into_sums();
        m.merge(b.sums()).unwrap();
        assert_eq!(m.points, 100);
        assert_eq!(m.count, vec![98, 96]);
    }

    #[test]
    fn brownian_msd_exponent_near_one() {
        let mut r = crate::rng::Rng::new(1, crate::rng::Stream::Other(3));
        let mut rec = TrajectoryRecorder::new(3, default_lags(32));
        let mut x = [0.0f64; 3];
        for _ in 0..50_000 {
            x.iter_mut().for_each(|v| *v += r.normal());
            rec.push(&x);
        }
        let c = DriftStats::from_sums(rec.sums()).msd_exponent;
        assert!((c - 1.0).abs() < 0.1, "{c}");
    }
}
