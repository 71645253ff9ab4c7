//! Spectral statistics of `D` read off a sketch, each with its certified
//! bracket.
//!
//! With `D̂` the sketch's estimate and `e = Δ/n`, every eigenvalue obeys
//! `λᵢ(D̂) ≤ λᵢ(D) ≤ λᵢ(D̂) + e`. The numerical rank at the paper's
//! threshold `τ = λ_max · d · ε_f32` is therefore bracketed by
//! `#{i : λᵢ(D̂) > τ_hi}` and `#{i : λᵢ(D̂) + e > τ_lo}` (where `τ_lo`,
//! `τ_hi` use the lower and upper ends of `λ_max`; if `e > τ_lo` every one of
//! the `d` eigenvalues could be above the threshold and the upper end is `d`).

use serde::{Deserialize, Serialize};

use crate::sketch::FdSketch;

/// Machine epsilon of f32, the paper's rank-threshold unit (2⁻²³).
pub const EPS_F32: f64 = f32::EPSILON as f64;

/// A value known to lie in `[lo, hi]`, with a point estimate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bracket {
    /// Point estimate (the sketch's value).
    pub value: f64,
    /// Certified lower bound.
    pub lo: f64,
    /// Certified upper bound.
    pub hi: f64,
}

/// Spectrum of `D` at one probe (or of a merged set of probes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpectrumStats {
    /// Number of per-sample gradients.
    pub n: u64,
    /// Parameter dimension.
    pub d: usize,
    /// Sketch size ℓ.
    pub ell: usize,
    /// Eigenvalue uncertainty `Δ/n` (0 when the sketch is exact).
    pub eig_error: f64,
    /// `tr D`, exact.
    pub trace: f64,
    /// Largest eigenvalue.
    pub lambda_max: Bracket,
    /// Leading eigenvalues (lower ends; add `eig_error` for the upper ends).
    pub top_eigenvalues: Vec<f64>,
    /// Rank-threshold `λ_max · d · ε_f32` (point estimate).
    pub rank_threshold: f64,
    /// Numerical rank at the paper's threshold.
    pub rank: Bracket,
    /// `rank / d`.
    pub rank_fraction: Bracket,
    /// ‖∇f‖², unbiased estimate from exact moments.
    #[serde(with = "crate::json_f64")]
    pub grad_norm_sq: f64,
}

/// How many leading eigenvalues [`SpectrumStats`] keeps.
pub const TOP_EIGENVALUES: usize = 16;

impl SpectrumStats {
    /// Statistics of the sketch.
    pub fn from_sketch(sk: &FdSketch) -> Self {
        let d = sk.dim();
        let n = sk.count();
        let e = if n == 0 { 0.0 } else { sk.delta() / n as f64 };
        let eig = sk.eigenvalues();
        let lmax = eig.first().copied().unwrap_or(0.0).max(0.0);
        let lmax_hi = lmax + e;
        let tau = lmax * d as f64 * EPS_F32;
        let tau_hi = lmax_hi * d as f64 * EPS_F32;
        let estimate = eig.iter().filter(|&&l| l > tau).count();
        let lo = eig.iter().filter(|&&l| l > tau_hi).count();
        let hi = if e > tau { d } else { eig.iter().filter(|&&l| l + e > tau).count() };
        let rank = Bracket { value: estimate as f64, lo: lo as f64, hi: hi as f64 };
        let frac = |x: f64| x / d as f64;
        SpectrumStats {
            n,
            d,
            ell: sk.ell(),
            eig_error: e,
            trace: sk.trace(),
            lambda_max: Bracket { value: lmax, lo: lmax, hi: lmax_hi },
            top_eigenvalues: eig.iter().take(TOP_EIGENVALUES).map(|&l| l.max(0.0)).collect(),
            rank_threshold: tau,
            rank_fraction: Bracket { value: frac(rank.value), lo: frac(rank.lo), hi: frac(rank.hi) },
            rank,
            grad_norm_sq: sk.grad_norm_sq_unbiased(),
        }
    }
}

/// Mean, sample standard deviation and a 95 % confidence half-width
/// (Student t) of a set of values; NaN values are left out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of finite values.
    pub count: usize,
    /// Mean.
    #[serde(with = "crate::json_f64")]
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    #[serde(with = "crate::json_f64")]
    pub std: f64,
    /// Half-width of the 95 % confidence interval of the mean.
    #[serde(with = "crate::json_f64")]
    pub ci95: f64,
}

impl Summary {
    /// Summarises `values`.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        let count = v.len();
        if count == 0 {
            return Summary { count, mean: f64::NAN, std: f64::NAN, ci95: f64::NAN };
        }
        let mean = v.iter().sum::<f64>() / count as f64;
        if count == 1 {
            return Summary { count, mean, std: f64::NAN, ci95: f64::NAN };
        }
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (count - 1) as f64;
        let std = var.sqrt();
        Summary { count, mean, std, ci95: student_t95(count - 1) * std / (count as f64).sqrt() }
    }
}

/// Two-sided 95 % quantile of Student's t with `dof` degrees of freedom.
fn student_t95(dof: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match dof {
        0 => f64::NAN,
        1..=30 => TABLE[dof - 1],
        _ => 1.96 + 2.4 / dof as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_of_exact_low_rank_matrix() {
        // 3 independent directions in d = 20, plus a mean: D has rank 3.
        let d = 20;
        let mut rows = Vec::new();
        let mut r = crate::rng::Rng::new(2, crate::rng::Stream::Other(5));
        for _ in 0..30 {
            let (a, b, c) = (r.normal(), r.normal(), r.normal());
            for j in 0..d {
                let v = match j {
                    0 => 3.0 * a,
                    1 => 2.0 * b,
                    2 => c,
                    _ => 0.0,
                } + 0.5;
                rows.push(v as f32);
            }
        }
        let mut sk = FdSketch::new(d, 32);
        sk.insert_block(&rows);
        let s = SpectrumStats::from_sketch(&sk);
        assert_eq!(s.eig_error, 0.0);
        assert_eq!(s.rank.value, 3.0);
        assert_eq!((s.rank.lo, s.rank.hi), (3.0, 3.0));
        assert!((s.rank_fraction.value - 0.15).abs() < 1e-12);
    }

    #[test]
    fn summary_ci() {
        let s = Summary::of([1.0, 2.0, 3.0, f64::NAN]);
        assert_eq!(s.count, 3);
        assert!((s.mean - 2.0).abs() < 1e-12);
        assert!((s.std - 1.0).abs() < 1e-12);
        assert!((s.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-9);
    }
}
