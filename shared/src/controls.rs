//! Processes with known answers, simulated by the project itself, that
//! validate the drift statistics (issue: "analytic controls").
//!
//! * [`simulate_ou`] — a 2-d Ornstein–Uhlenbeck process
//!   `dx = −F x dt + √(2T·D) dW` (Euler–Maruyama). Its stationary covariance
//!   Σ solves `FΣ + ΣFᵀ = 2T·D` ([`lyapunov_2d`]); the antisymmetric part of
//!   its lagged covariance is `A(τ) ≈ −τ (FΣ − ΣFᵀ)/2`, so the area-enclosing
//!   rate of the pair (0, 1) per unit time is `(ΣFᵀ − FΣ)₁₀ / 2`
//!   ([`ou_area_rate`]). It vanishes under detailed balance (`FD = DFᵀ`).
//! * [`simulate_double_well`] — the paper's Example 19: `Φ = (x₁² − 1)²/4 +
//!   x₂²/2`, `dx = (−∇Φ + j) dt + √2 dW` with the rotational force
//!   `j = λ e^{Φ} e^{−(x₁² + x₂²)²/4} (−x₂, x₁)`.
//!
//! Both return per-batch [`TrajectorySums`], so a confidence interval comes
//! from batch means ([`area_rate_ci`]).

use crate::rng::{Rng, Stream};
use crate::stats::Summary;
use crate::trajectory::{TrajectoryRecorder, TrajectorySums};

/// A 2×2 matrix, row-major.
pub type M2 = [[f64; 2]; 2];

/// Stationary covariance Σ of `dx = −F x dt + √(2T·D) dW`: the symmetric
/// solution of `FΣ + ΣFᵀ = 2T·D`. `None` if F is not stable.
pub fn lyapunov_2d(f: M2, d: M2, t: f64) -> Option<M2> {
    // Unknowns (s11, s12, s22).
    let a = [
        [2.0 * f[0][0], 2.0 * f[0][1], 0.0],
        [f[1][0], f[0][0] + f[1][1], f[0][1]],
        [0.0, 2.0 * f[1][0], 2.0 * f[1][1]],
    ];
    let b = [2.0 * t * d[0][0], 2.0 * t * d[0][1], 2.0 * t * d[1][1]];
    let s = solve3(a, b)?;
    let sigma = [[s[0], s[1]], [s[1], s[2]]];
    (sigma[0][0] > 0.0 && sigma[0][0] * sigma[1][1] > sigma[0][1] * sigma[0][1]).then_some(sigma)
}

fn solve3(mut a: [[f64; 3]; 3], mut b: [f64; 3]) -> Option<[f64; 3]> {
    for col in 0..3 {
        let piv = (col..3).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for r in (col + 1)..3 {
            let m = a[r][col] / a[col][col];
            for c in col..3 {
                a[r][c] -= m * a[col][c];
            }
            b[r] -= m * b[col];
        }
    }
    let mut x = [0.0; 3];
    for r in (0..3).rev() {
        let s: f64 = ((r + 1)..3).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Analytic area-enclosing rate per unit time of the pair (0, 1):
/// `(ΣFᵀ − FΣ)₁₀ / 2`.
pub fn ou_area_rate(f: M2, sigma: M2) -> f64 {
    let fs = |i: usize, j: usize| f[i][0] * sigma[0][j] + f[i][1] * sigma[1][j];
    let sft = |i: usize, j: usize| sigma[i][0] * f[j][0] + sigma[i][1] * f[j][1];
    0.5 * (sft(1, 0) - fs(1, 0))
}

/// Analytic cycling frequency per unit time of the pair (0, 1): the area
/// rate over half the stationary spread, `2·rate / (Σ₀₀ + Σ₁₁)`.
pub fn ou_cycling_frequency(f: M2, sigma: M2) -> f64 {
    2.0 * ou_area_rate(f, sigma) / (sigma[0][0] + sigma[1][1])
}

fn cholesky_2d(d: M2) -> M2 {
    let l00 = d[0][0].max(0.0).sqrt();
    let l10 = if l00 > 0.0 { d[1][0] / l00 } else { 0.0 };
    let l11 = (d[1][1] - l10 * l10).max(0.0).sqrt();
    [[l00, 0.0], [l10, l11]]
}

/// Runs `step` from `x` for `burn_in` steps, then records `batches` batches
/// of `steps_per_batch` points (lag-1 sums per batch).
fn record_batches(
    mut x: [f64; 2],
    rng: &mut Rng,
    step: impl Fn(&mut [f64; 2], &mut Rng),
    burn_in: usize,
    batches: usize,
    steps_per_batch: usize,
) -> Vec<TrajectorySums> {
    for _ in 0..burn_in {
        step(&mut x, rng);
    }
    (0..batches)
        .map(|_| {
            let mut rec = TrajectoryRecorder::new(2, vec![1]);
            for _ in 0..steps_per_batch {
                step(&mut x, rng);
                rec.push(&x);
            }
            rec.into_sums()
        })
        .collect()
}

/// Simulates the OU process for `batches × steps_per_batch` steps of size
/// `dt` after `burn_in` steps, recording lag-1 sums per batch.
#[allow(clippy::too_many_arguments)]
pub fn simulate_ou(
    f: M2,
    d: M2,
    t: f64,
    dt: f64,
    burn_in: usize,
    batches: usize,
    steps_per_batch: usize,
    seed: u64,
) -> Vec<TrajectorySums> {
    let l = cholesky_2d(d);
    let noise = (2.0 * t * dt).sqrt();
    let mut rng = Rng::new(seed, Stream::Other(0x0u64));
    let x = [0.0f64; 2];
    let step = |x: &mut [f64; 2], rng: &mut Rng| {
        let (z0, z1) = (rng.normal(), rng.normal());
        let dx0 = -(f[0][0] * x[0] + f[0][1] * x[1]) * dt + noise * l[0][0] * z0;
        let dx1 = -(f[1][0] * x[0] + f[1][1] * x[1]) * dt + noise * (l[1][0] * z0 + l[1][1] * z1);
        x[0] += dx0;
        x[1] += dx1;
    };
    record_batches(x, &mut rng, step, burn_in, batches, steps_per_batch)
}

/// Simulates Example 19 with rotational strength `lambda`.
pub fn simulate_double_well(
    lambda: f64,
    dt: f64,
    burn_in: usize,
    batches: usize,
    steps_per_batch: usize,
    seed: u64,
) -> Vec<TrajectorySums> {
    let mut rng = Rng::new(seed, Stream::Other(0x19));
    let noise = (2.0 * dt).sqrt();
    let x = [1.0f64, 0.0];
    let step = |x: &mut [f64; 2], rng: &mut Rng| {
        let (a, b) = (x[0], x[1]);
        let phi = (a * a - 1.0).powi(2) / 4.0 + b * b / 2.0;
        let r2 = a * a + b * b;
        let s = lambda * (phi - r2 * r2 / 4.0).exp();
        let drift = [-a * (a * a - 1.0) - s * b, -b + s * a];
        x[0] += drift[0] * dt + noise * rng.normal();
        x[1] += drift[1] * dt + noise * rng.normal();
    };
    record_batches(x, &mut rng, step, burn_in, batches, steps_per_batch)
}

/// Area rate of the pair (0, 1) per unit time (`dt` per step): the mean of
/// the batches with its 95 % confidence interval (batch means).
pub fn area_rate_ci(batches: &[TrajectorySums], dt: f64) -> Summary {
    Summary::of(batches.iter().map(|b| b.area_rate(0, 1) / dt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lyapunov_solution_satisfies_the_equation() {
        let f = [[1.0, 2.0], [-1.0, 1.5]];
        let d = [[1.0, 0.3], [0.3, 0.5]];
        let s = lyapunov_2d(f, d, 0.7).unwrap();
        for i in 0..2 {
            for j in 0..2 {
                let lhs: f64 = (0..2).map(|k| f[i][k] * s[k][j] + s[i][k] * f[j][k]).sum();
                assert!((lhs - 2.0 * 0.7 * d[i][j]).abs() < 1e-12);
            }
        }
        assert!(lyapunov_2d([[-1.0, 0.0], [0.0, 1.0]], d, 1.0).is_none(), "unstable F");
    }

    /// Detailed balance: F symmetric positive definite, D = I (the Euler
    /// chain is then exactly reversible too). The area rate reads zero: the
    /// test allows |mean| up to 3.88 standard errors (t₁₉ at 99.9 %, a false
    /// alarm rate fixed at 0.1 %) and requires the interval to be tight
    /// compared with the broken-balance rates below (≥ 0.1).
    #[test]
    fn detailed_balance_reads_zero() {
        let f = [[2.0, 0.5], [0.5, 1.0]];
        let d = [[1.0, 0.0], [0.0, 1.0]];
        let s = lyapunov_2d(f, d, 1.0).unwrap();
        assert!(ou_area_rate(f, s).abs() < 1e-12);
        let b = simulate_ou(f, d, 1.0, 0.005, 2_000, 20, 200_000, 1);
        let ci = area_rate_ci(&b, 0.005);
        let se = ci.ci95 / 2.093;
        assert!(ci.mean.abs() <= 3.88 * se, "rate {} ± {} (95 %)", ci.mean, ci.ci95);
        assert!(ci.ci95 < 0.03, "the interval is informative: ±{}", ci.ci95);
    }

    /// Broken detailed balance — a non-normal F, and a symmetric F with an
    /// anisotropic D that does not commute with it: the measured rate
    /// matches the analytic one within 5 %.
    #[test]
    fn broken_detailed_balance_matches_the_analytic_rate() {
        let cases: [(M2, M2); 2] = [
            ([[1.0, 2.0], [-1.0, 1.5]], [[1.0, 0.0], [0.0, 1.0]]),
            ([[2.0, 1.0], [1.0, 2.0]], [[1.0, 0.0], [0.0, 0.1]]),
        ];
        for (i, (f, d)) in cases.into_iter().enumerate() {
            let s = lyapunov_2d(f, d, 1.0).unwrap();
            let want = ou_area_rate(f, s);
            assert!(want.abs() > 0.1, "case {i}: analytic rate {want} should be clearly non-zero");
            let dt = 0.002;
            let b = simulate_ou(f, d, 1.0, dt, 5_000, 20, 150_000, 2 + i as u64);
            let got = area_rate_ci(&b, dt);
            let rel = (got.mean - want).abs() / want.abs();
            assert!(
                rel < 0.05,
                "case {i}: measured {} ± {} vs analytic {want} ({:.1} %)",
                got.mean,
                got.ci95,
                100.0 * rel
            );
            // The cycling frequency, from the merged batches' lag-0 and lag-1 sums.
            let mut all = b[0].clone();
            b[1..].iter().for_each(|s| all.merge(s).unwrap());
            let (want, got) = (ou_cycling_frequency(f, s), all.cycling_frequency(0, 1) / dt);
            let rel = (got - want).abs() / want.abs();
            assert!(rel < 0.05, "case {i}: cycling frequency {got} vs analytic {want} ({:.1} %)", 100.0 * rel);
        }
    }

    /// Example 19: the rotational force makes trajectories circulate; the
    /// area rate rises with λ and is zero within its interval at λ = 0.
    #[test]
    fn double_well_circulation_rises_with_lambda() {
        let dt = 0.002;
        let rates: Vec<Summary> = [0.0, 0.5, 1.5]
            .iter()
            .map(|&l| area_rate_ci(&simulate_double_well(l, dt, 5_000, 20, 50_000, 7), dt))
            .collect();
        // Zero at λ = 0 with the same 0.1 % false-alarm rule as above.
        assert!(rates[0].mean.abs() <= 3.88 * rates[0].ci95 / 2.093, "λ = 0: {} ± {}", rates[0].mean, rates[0].ci95);
        assert!(rates[1].mean - rates[1].ci95 > rates[0].mean + rates[0].ci95, "{rates:?}");
        assert!(rates[2].mean - rates[2].ci95 > rates[1].mean + rates[1].ci95, "{rates:?}");
    }
}
