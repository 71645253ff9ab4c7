//! Trajectory projections and their drift statistics.
//!
//! Every SGD step the weights are projected onto `k` fixed orthonormal
//! directions. A [`TrajectorySums`] accumulates, for a set of lags `τ`, the
//! sums that define the centred lagged covariance
//! `C(τ) = ⟨x_{t+τ} x_tᵀ⟩ − ⟨x_{t+τ}⟩⟨x_t⟩ᵀ` and the mean-squared
//! displacement `⟨‖x_{t+τ} − x_t‖²⟩`. Sums from disjoint windows or runs add
//! up ([`TrajectorySums::merge`]).
//!
//! The antisymmetric part `A(τ) = (C(τ) − C(τ)ᵀ)/2` vanishes under detailed
//! balance; `A_ji(1)` is the area-enclosing rate `½⟨x_i dx_j − x_j dx_i⟩`
//! per step of the pair `(i, j)`.

use serde::{Deserialize, Serialize};

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
}

impl TrajectorySums {
    /// Empty sums for `k` coordinates and the given lags.
    pub fn new(k: usize, lags: Vec<usize>) -> Self {
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
        }
    }

    /// Adds the sums of another window with the same shape.
    pub fn merge(&mut self, other: &TrajectorySums) -> Result<(), String> {
        if self.k != other.k || self.lags != other.lags {
            return Err(format!(
                "trajectory shapes differ: k={} lags={:?} vs k={} lags={:?}",
                self.k, self.lags, other.k, other.lags
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
        self.points += other.points;
        Ok(())
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
        if self.lags.first() != Some(&1) || self.count[0] == 0 {
            return f64::NAN;
        }
        let c = self.lagged_covariance(0);
        let k = self.k;
        0.5 * (c[j * k + i] - c[i * k + j])
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
        if pts.len() < 2 {
            return f64::NAN;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        sxy / sxx
    }
}

/// Feeds points one at a time into [`TrajectorySums`], keeping the last
/// `max lag` points. Serialisable, so a checkpoint can carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrajectoryRecorder {
    sums: TrajectorySums,
    history: std::collections::VecDeque<Vec<f64>>,
}

impl TrajectoryRecorder {
    /// A recorder of `k` coordinates at `lags`.
    pub fn new(k: usize, lags: Vec<usize>) -> Self {
        TrajectoryRecorder { sums: TrajectorySums::new(k, lags), history: Default::default() }
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
        s.points += 1;
        let max_lag = s.lags.iter().copied().max().unwrap_or(1);
        self.history.push_back(x.to_vec());
        if self.history.len() > max_lag {
            self.history.pop_front();
        }
    }

    /// Whether every sum and remembered point is finite and the window is
    /// consistent with the lags (checked when a checkpoint is read).
    pub fn is_finite(&self) -> bool {
        let s = &self.sums;
        let fin = |v: &[f64]| v.iter().all(|x| x.is_finite());
        let nl = s.lags.len();
        s.count.len() == nl
            && s.msd.len() == nl
            && s.cross.iter().all(|c| c.len() == s.k * s.k && fin(c))
            && s.sum_lead.iter().chain(&s.sum_lag).all(|c| c.len() == s.k && fin(c))
            && s.cross.len() == nl
            && fin(&s.msd)
            && self.history.iter().all(|p| p.len() == s.k && fin(p))
            && self.history.len() <= s.lags.iter().copied().max().unwrap_or(1)
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
    /// Fitted exponent of MSD(τ) ∝ τ^c.
    #[serde(with = "crate::json_f64")]
    pub msd_exponent: f64,
    /// (lag, MSD) points.
    pub msd: Vec<(usize, f64)>,
}

impl DriftStats {
    /// Statistics of the sums.
    pub fn from_sums(s: &TrajectorySums) -> Self {
        let mut best = (f64::NAN, (0, 1));
        for i in 0..s.k {
            for j in (i + 1)..s.k {
                let r = s.area_rate(i, j);
                if best.0.is_nan() || r.abs() > best.0.abs() {
                    best = (r, (i, j));
                }
            }
        }
        DriftStats {
            points: s.points,
            area_rate: if s.k >= 2 { s.area_rate(0, 1) } else { f64::NAN },
            max_area_rate: best.0,
            max_area_pair: best.1,
            msd_exponent: s.msd_exponent(),
            msd: s.msd_curve(),
        }
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
