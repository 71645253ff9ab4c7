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
    /// Width of every eigenvalue's bracket: `Δ/n`, plus the lower slack
    /// `s/n` for f16 rows (0 when the sketch is exact).
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
    /// Numerical rank at thresholds relative to λ_max: `(r, rank)` counts
    /// eigenvalues above `r·λ_max` ([`RELATIVE_RANK_THRESHOLDS`] and any
    /// the user asked for).
    pub ranks_relative: Vec<(f64, Bracket)>,
    /// Numerical rank at absolute thresholds the user asked for: `(τ, rank)`
    /// counts eigenvalues above `τ`.
    #[serde(default)]
    pub ranks_absolute: Vec<(f64, Bracket)>,
    /// Stable rank tr D / λ_max.
    pub stable_rank: Bracket,
    /// Isotropy ratio λ_max · d / tr D (1 for isotropic noise).
    pub isotropy: Bracket,
    /// Effective rank (Roy & Vetterli 2007) of D's eigenvalues: exp of the
    /// entropy of λᵢ / Σλ. The trace the sketch does not resolve,
    /// tr D − Σλ̂ᵢ, is spread evenly over the other d − r directions.
    #[serde(with = "crate::json_f64")]
    pub effective_rank: f64,
    /// Fraction of tr D carried by the sketched eigenvalues Σλ̂ᵢ / tr D.
    #[serde(with = "crate::json_f64")]
    pub resolved_trace_fraction: f64,
    /// Fewest eigenvalues holding 90 % of tr D.
    pub energy_rank_90: Bracket,
    /// Fewest eigenvalues holding 99 % of tr D.
    pub energy_rank_99: Bracket,
    /// Gradient noise scale B_simple = tr D / ‖∇f‖² (McCandlish et al. 2018).
    #[serde(with = "crate::json_f64")]
    pub noise_scale: f64,
}

/// Thresholds, relative to λ_max, at which ranks are also reported.
pub const RELATIVE_RANK_THRESHOLDS: [f64; 3] = [1e-2, 1e-3, 1e-4];

/// Rank bracket at threshold τ(λ) where λ is λ_max's value: uses λ's lower
/// and upper ends for the threshold's ends (see the module doc).
fn rank_bracket(eig: &[f64], e: f64, d: usize, tau_lo: f64, tau_hi: f64, tau: f64) -> Bracket {
    let estimate = eig.iter().filter(|&&l| l > tau).count();
    let lo = eig.iter().filter(|&&l| l > tau_hi).count();
    let hi = if e > tau_lo { d } else { eig.iter().filter(|&&l| l + e > tau_lo).count() };
    Bracket { value: estimate as f64, lo: lo as f64, hi: hi as f64 }
}

/// Fewest eigenvalues holding `frac` of `trace`: the lower end uses the
/// upper bounds λ̂ᵢ + e (at most d of them), the upper end the lower bounds
/// λ̂ᵢ (or d when they never reach it).
fn energy_rank(eig: &[f64], e: f64, d: usize, trace: f64, frac: f64) -> Bracket {
    let target = frac * trace;
    let first = |bonus: f64| {
        let mut acc = 0.0;
        for (i, &l) in eig.iter().enumerate() {
            acc += l.max(0.0) + bonus;
            if acc >= target {
                return Some(i + 1);
            }
        }
        None
    };
    let hi = first(0.0).unwrap_or(d);
    let lo = first(e).unwrap_or_else(|| {
        // The other d − r eigenvalues are each at most e.
        let rest = (target - eig.iter().map(|l| l.max(0.0) + e).sum::<f64>()).max(0.0);
        (eig.len() + (rest / e.max(f64::MIN_POSITIVE)).ceil() as usize).min(d)
    });
    Bracket { value: hi as f64, lo: lo.min(hi) as f64, hi: hi as f64 }
}

fn effective_rank(eig: &[f64], d: usize, trace: f64) -> f64 {
    if trace <= 0.0 {
        return f64::NAN;
    }
    let pos: Vec<f64> = eig.iter().map(|l| l.max(0.0)).filter(|&l| l > 0.0).collect();
    let resolved: f64 = pos.iter().sum();
    let rest = (trace - resolved).max(0.0);
    let others = d.saturating_sub(pos.len());
    let mut h = 0.0;
    for l in &pos {
        let p = l / trace;
        h -= p * p.ln();
    }
    if rest > 0.0 && others > 0 {
        let p = rest / trace / others as f64;
        h -= others as f64 * p * p.ln();
    }
    h.exp()
}

/// Rank thresholds a user asks for, besides the paper's `λ_max·d·ε_f32`
/// and [`RELATIVE_RANK_THRESHOLDS`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankThresholds {
    /// Fractions of λ_max, each in (0, 1].
    pub relative: Vec<f64>,
    /// Absolute eigenvalue thresholds, each > 0.
    pub absolute: Vec<f64>,
}

/// Most thresholds of each kind a request may ask for.
pub const MAX_USER_THRESHOLDS: usize = 16;

impl RankThresholds {
    /// Checks the values; the error names the offending one.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, list) in [("relative", &self.relative), ("absolute", &self.absolute)] {
            if list.len() > MAX_USER_THRESHOLDS {
                return Err(format!("at most {MAX_USER_THRESHOLDS} {kind} rank thresholds, got {}", list.len()));
            }
        }
        if let Some(r) = self.relative.iter().find(|r| !(r.is_finite() && **r > 0.0 && **r <= 1.0)) {
            return Err(format!("relative rank threshold {r} is not in (0, 1]"));
        }
        if let Some(t) = self.absolute.iter().find(|t| !(t.is_finite() && **t > 0.0)) {
            return Err(format!("absolute rank threshold {t} is not a positive number"));
        }
        Ok(())
    }

    /// Whether no threshold was asked for.
    pub fn is_empty(&self) -> bool {
        self.relative.is_empty() && self.absolute.is_empty()
    }
}

/// How many leading eigenvalues [`SpectrumStats`] keeps.
pub const TOP_EIGENVALUES: usize = 16;

impl SpectrumStats {
    /// Statistics of the sketch.
    pub fn from_sketch(sk: &FdSketch) -> Self {
        Self::from_sketch_with(sk, &RankThresholds::default())
    }

    /// Statistics of the sketch, with ranks at the user's thresholds too.
    pub fn from_sketch_with(sk: &FdSketch, th: &RankThresholds) -> Self {
        let n = sk.count();
        let (e, lower) = if n == 0 { (0.0, 0.0) } else { (sk.delta() / n as f64, sk.slack() / n as f64) };
        // With a lower slack s (f16 rows), λᵢ ∈ [λ̂ᵢ − s, λ̂ᵢ + e]: pass the
        // lower ends and the whole width.
        let eig: Vec<f64> = sk.eigenvalues().iter().map(|l| l - lower).collect();
        let mut s = Self::from_parts(&eig, e + lower, sk.dim(), n, sk.ell(), sk.trace(), sk.grad_norm_sq_unbiased());
        if !th.is_empty() {
            s.add_thresholds(&eig, th);
        }
        s
    }

    /// Adds rank brackets at the user's thresholds, from the same
    /// eigenvalue lower bounds `eig` the statistics were made from.
    pub fn add_thresholds(&mut self, eig: &[f64], th: &RankThresholds) {
        let (e, d, lmax) = (self.eig_error, self.d, self.lambda_max.value);
        for &r in &th.relative {
            if !self.ranks_relative.iter().any(|x| x.0 == r) {
                self.ranks_relative.push((r, rank_bracket(eig, e, d, r * lmax, r * (lmax + e), r * lmax)));
            }
        }
        for &t in &th.absolute {
            if !self.ranks_absolute.iter().any(|x| x.0 == t) {
                self.ranks_absolute.push((t, rank_bracket(eig, e, d, t, t, t)));
            }
        }
    }

    /// Statistics from eigenvalue lower bounds `eig` (descending) with
    /// uncertainty `e` each, for dimension `d`, `n` samples, sketch size
    /// `ell` (0 for the exact path), the exact trace and ‖∇f‖².
    pub fn from_parts(eig: &[f64], e: f64, d: usize, n: u64, ell: usize, trace: f64, grad_norm_sq: f64) -> Self {
        let eig = eig.to_vec();
        let lmax = eig.first().copied().unwrap_or(0.0).max(0.0);
        let lmax_hi = lmax + e;
        let tau = lmax * d as f64 * EPS_F32;
        let tau_hi = lmax_hi * d as f64 * EPS_F32;
        let rank = rank_bracket(&eig, e, d, tau, tau_hi, tau);
        let frac = |x: f64| x / d as f64;
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
        let resolved: f64 = eig.iter().map(|l| l.max(0.0)).sum();
        SpectrumStats {
            n,
            d,
            ell,
            eig_error: e,
            trace,
            lambda_max: Bracket { value: lmax, lo: lmax, hi: lmax_hi },
            top_eigenvalues: eig.iter().take(TOP_EIGENVALUES).map(|&l| l.max(0.0)).collect(),
            rank_threshold: tau,
            rank_fraction: Bracket { value: frac(rank.value), lo: frac(rank.lo), hi: frac(rank.hi) },
            rank,
            grad_norm_sq,
            ranks_relative: RELATIVE_RANK_THRESHOLDS
                .iter()
                .map(|&r| (r, rank_bracket(&eig, e, d, r * lmax, r * lmax_hi, r * lmax)))
                .collect(),
            ranks_absolute: vec![],
            stable_rank: Bracket { value: ratio(trace, lmax), lo: ratio(trace, lmax_hi), hi: ratio(trace, lmax) },
            isotropy: Bracket {
                value: ratio(lmax * d as f64, trace),
                lo: ratio(lmax * d as f64, trace),
                hi: ratio(lmax_hi * d as f64, trace),
            },
            effective_rank: effective_rank(&eig, d, trace),
            resolved_trace_fraction: ratio(resolved, trace),
            energy_rank_90: energy_rank(&eig, e, d, trace, 0.90),
            energy_rank_99: energy_rank(&eig, e, d, trace, 0.99),
            noise_scale: ratio(trace, grad_norm_sq),
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

    /// The summary of no values.
    pub fn empty() -> Summary {
        Summary::of([])
    }

    /// The summary of the same values multiplied by `k` (a known, exact
    /// factor such as β⁻¹/d): mean, deviation and interval scale with it.
    pub fn scaled(&self, k: f64) -> Summary {
        Summary { count: self.count, mean: self.mean * k, std: self.std * k.abs(), ci95: self.ci95 * k.abs() }
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
        // Exact sketch: brackets collapse; derived statistics follow from the spectrum.
        let l: Vec<f64> = s.top_eigenvalues.clone();
        assert!((s.stable_rank.value - s.trace / l[0]).abs() < 1e-9 * s.stable_rank.value);
        assert_eq!(s.stable_rank.lo, s.stable_rank.hi);
        assert!((s.isotropy.value - l[0] * 20.0 / s.trace).abs() < 1e-9);
        assert!((s.resolved_trace_fraction - 1.0).abs() < 1e-9);
        let p: Vec<f64> = l.iter().filter(|&&x| x > 0.0).map(|x| x / s.trace).collect();
        let h: f64 = -p.iter().map(|x| x * x.ln()).sum::<f64>();
        assert!((s.effective_rank - h.exp()).abs() < 1e-9);
        assert!(s.effective_rank > 1.0 && s.effective_rank < 3.0);
        assert_eq!(s.energy_rank_99.lo, s.energy_rank_99.hi);
        assert!(s.energy_rank_90.value <= 3.0 && s.energy_rank_90.value >= 1.0);
        assert_eq!(s.ranks_relative.len(), 3);
        assert!(s.noise_scale > 0.0);
    }

    #[test]
    fn isotropic_noise_has_isotropy_one_and_full_effective_rank() {
        // Rows ±e_j: D = I/d·(stuff) up to sampling; use exact construction.
        let d = 8;
        let mut rows = Vec::new();
        for j in 0..d {
            for sign in [1.0f32, -1.0] {
                let mut r = vec![0.0f32; d];
                r[j] = sign;
                rows.extend(r);
            }
        }
        let mut sk = FdSketch::new(d, 16);
        sk.insert_block(&rows);
        let s = SpectrumStats::from_sketch(&sk);
        assert!((s.isotropy.value - 1.0).abs() < 1e-9, "{}", s.isotropy.value);
        assert!((s.effective_rank - d as f64).abs() < 1e-9);
        assert_eq!(s.rank.value, d as f64);
        assert_eq!(s.energy_rank_90.value, 8.0);
    }

    #[test]
    fn energy_rank_brackets_with_unresolved_trace() {
        // Sketch eigenvalues 5, 3 with e = 1 in d = 10, trace 12:
        // 90 % = 10.8: the lower bounds never reach it (hi = d); with +e each,
        // 6 + 4 = 10, then one more direction of at most 1 → lo = 3.
        let b = energy_rank(&[5.0, 3.0], 1.0, 10, 12.0, 0.9);
        assert_eq!((b.lo, b.hi), (3.0, 10.0));
        let exact = energy_rank(&[5.0, 3.0, 2.0], 0.0, 10, 10.0, 0.5);
        assert_eq!((exact.lo, exact.hi), (1.0, 1.0));
    }

    #[test]
    fn user_thresholds_bracket_like_the_paper_threshold() {
        // Eigenvalues 5, 3, 1, 0.1 with uncertainty e = 0.5 in d = 10.
        let eig = [5.0, 3.0, 1.0, 0.1];
        let mut s = SpectrumStats::from_parts(&eig, 0.5, 10, 100, 8, 9.5, 1.0);
        let th = RankThresholds { relative: vec![0.5, 1e-2], absolute: vec![0.8, 0.3] };
        assert!(th.validate().is_ok());
        s.add_thresholds(&eig, &th);
        // 0.5·λ_max: λ_max ∈ [5, 5.5] → τ ∈ [2.5, 2.75]: 5, 3 above for sure; nothing else reaches 2.5 with +0.5.
        let half = s.ranks_relative.iter().find(|x| x.0 == 0.5).unwrap().1;
        assert_eq!((half.lo, half.value, half.hi), (2.0, 2.0, 2.0));
        // 1e-2 was already a default threshold: not repeated.
        assert_eq!(s.ranks_relative.iter().filter(|x| x.0 == 1e-2).count(), 1);
        // τ = 0.8: 5, 3, 1 above; 0.1 + 0.5 is not. τ = 0.3: 0.1 + 0.5 could be, and the rest of d (≤ e each) too.
        assert_eq!(s.ranks_absolute[0], (0.8, Bracket { value: 3.0, lo: 3.0, hi: 3.0 }));
        assert_eq!(s.ranks_absolute[1], (0.3, Bracket { value: 3.0, lo: 3.0, hi: 10.0 }));
        for bad in [
            RankThresholds { relative: vec![0.0], absolute: vec![] },
            RankThresholds { relative: vec![1.5], absolute: vec![] },
            RankThresholds { relative: vec![], absolute: vec![f64::NAN] },
            RankThresholds { relative: vec![], absolute: vec![-1.0] },
            RankThresholds { relative: vec![0.1; 17], absolute: vec![] },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
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
