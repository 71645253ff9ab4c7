//! Processes with known answers, simulated by the project itself, that
//! validate the drift statistics — as library functions and as runnable
//! "models" of a grid (`model = "control:ou"`, `"control:double-well"`),
//! executed by workers and merged through the same pipeline as networks.
//!
//! * [`simulate_ou`] — a 2-d Ornstein–Uhlenbeck process
//!   `dx = −F x dt + √(2T·D) dW` (Euler–Maruyama). Its stationary covariance
//!   Σ solves `FΣ + ΣFᵀ = 2T·D` ([`lyapunov_2d`]); the antisymmetric part of
//!   its lagged covariance is `A(τ) ≈ −τ (FΣ − ΣFᵀ)/2`, so the area-enclosing
//!   rate of the pair (0, 1) per unit time is `(ΣFᵀ − FΣ)₁₀ / 2`
//!   ([`ou_area_rate`]). It vanishes under detailed balance (`FD = DFᵀ`).
//! * [`simulate_double_well`] — the paper's Example 19: `Φ = (x₁² − 1)²/4 +
//!   x₂²/2`, `dx = (−∇Φ + j) dt + √2 dW` with the rotational force
//!   `j = λ e^{Φ} e^{−(x₁² + x₂²)²/4} (−x₂, x₁)`. The density `∝ e^{−Φ}`
//!   stays stationary whatever λ (`j e^{−Φ}` is divergence-free), so the
//!   area rate is known in closed form: `½ E[x₁j₂ − x₂j₁] = λπ / Z` with
//!   `Z = ∫ e^{−Φ}` ([`Control::area_rate`]).
//! * [`Control`] and [`execute_control`] — the grid's `control:` models: a
//!   run integrates the process with time step `lr` for `control_steps`
//!   steps per epoch, records its two coordinates as the trajectory, and
//!   checkpoints and resumes bit-identically, like an SGD run.
//!
//! The simulators return per-batch [`TrajectorySums`], so a confidence
//! interval comes from batch means ([`area_rate_ci`]).

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::checkpoint::{Checkpoint, CheckpointHeader, spec_fingerprint};
use crate::rng::{Rng, Stream};
use crate::run::{RunError, RunEvent};
use crate::spec::{RunFinal, RunSpec, hash_f64};
use crate::stats::Summary;
use crate::trajectory::{TrajectoryRecorder, TrajectorySums, default_lags};

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
        let drift = Control::DoubleWell.drift(lambda, *x);
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

/// The prefix of the grid's model names that run a [`Control`].
pub const CONTROL_PREFIX: &str = "control:";

/// A process with a known answer that a grid runs as its model. Both move
/// by Euler–Maruyama, `x ← x + drift(x)·dt + √(2·dt)·ξ` (temperature 1, as
/// in the paper's Example 19), with `dt` the grid's `lr`, and both have the
/// rotational strength `λ` (`control_lambda`), zero under detailed balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// `control:ou` — the Ornstein–Uhlenbeck process `dx = −F x dt + √2 dW`
    /// with `F = [[1, λ], [−λ, 1]]`: stationary covariance `I`, area rate
    /// `λ` and cycling frequency `λ` per unit time.
    Ou,
    /// `control:double-well` — the paper's Example 19 (see the module doc).
    DoubleWell,
}

impl Control {
    /// Every control, for listings.
    pub const ALL: [Control; 2] = [Control::Ou, Control::DoubleWell];

    /// The control a model name asks for: `Ok(None)` when the name is not a
    /// `control:` one, an error when it is one this build does not know.
    pub fn of_model(name: &str) -> Result<Option<Control>, crate::model::ModelError> {
        let Some(which) = name.strip_prefix(CONTROL_PREFIX) else { return Ok(None) };
        Control::ALL.into_iter().find(|c| c.name() == which).map(Some).ok_or_else(|| {
            crate::model::ModelError::Unknown(format!("{name} (controls: control:ou, control:double-well)"))
        })
    }

    /// The name after `control:`.
    pub fn name(self) -> &'static str {
        match self {
            Control::Ou => "ou",
            Control::DoubleWell => "double-well",
        }
    }

    /// What the process is, for `gradsweep models`.
    pub fn describe(self) -> &'static str {
        match self {
            Control::Ou => {
                "2-d Ornstein–Uhlenbeck, F = [[1, λ], [−λ, 1]], D = I: area rate λ, cycling frequency λ per unit time"
            }
            Control::DoubleWell => {
                "the paper's Example 19 double well with rotational force λ: area rate λπ/Z per unit time"
            }
        }
    }

    /// The deterministic force at `x` (`−∇Φ` plus the rotation).
    pub fn drift(self, lambda: f64, x: [f64; 2]) -> [f64; 2] {
        let [a, b] = x;
        match self {
            Control::Ou => [-a - lambda * b, lambda * a - b],
            Control::DoubleWell => {
                let r2 = a * a + b * b;
                let s = lambda * (self.potential(x) - r2 * r2 / 4.0).exp();
                [-a * (a * a - 1.0) - s * b, -b + s * a]
            }
        }
    }

    /// The potential Φ, whose `e^{−Φ}` is the stationary density (the
    /// run's "loss").
    pub fn potential(self, x: [f64; 2]) -> f64 {
        let [a, b] = x;
        match self {
            Control::Ou => 0.5 * (a * a + b * b),
            Control::DoubleWell => (a * a - 1.0).powi(2) / 4.0 + b * b / 2.0,
        }
    }

    /// The stationary `E‖x‖²` (the mean is 0 for both).
    pub fn second_moment(self) -> f64 {
        match self {
            Control::Ou => 2.0,
            Control::DoubleWell => {
                let (i0, i2) = double_well_integrals();
                i2 / i0 + 1.0
            }
        }
    }

    /// The exact area-enclosing rate of the pair (0, 1) per unit time in
    /// the continuous-time process (Euler–Maruyama with step `dt` differs
    /// by O(dt)).
    pub fn area_rate(self, lambda: f64) -> f64 {
        match self {
            Control::Ou => lambda,
            Control::DoubleWell => {
                let (i0, _) = double_well_integrals();
                lambda * std::f64::consts::PI / ((2.0 * std::f64::consts::PI).sqrt() * i0)
            }
        }
    }

    /// The exact cycling frequency (radians per unit time) of the pair
    /// (0, 1): `2 · area rate / E‖x‖²`.
    pub fn cycling_frequency(self, lambda: f64) -> f64 {
        2.0 * self.area_rate(lambda) / self.second_moment()
    }
}

/// `(∫ e^{−(x²−1)²/4} dx, ∫ x² e^{−(x²−1)²/4} dx)` over ℝ by Simpson's rule
/// on [−10, 10] (the integrand is below e^{−2000} outside).
fn double_well_integrals() -> (f64, f64) {
    let (lo, hi, n) = (-10.0f64, 10.0f64, 20_000usize);
    let h = (hi - lo) / n as f64;
    let (mut i0, mut i2) = (0.0, 0.0);
    for k in 0..=n {
        let x = lo + k as f64 * h;
        let w = if k == 0 || k == n {
            1.0
        } else if k % 2 == 1 {
            4.0
        } else {
            2.0
        };
        let e = (-(x * x - 1.0).powi(2) / 4.0).exp();
        i0 += w * e;
        i2 += w * x * x * e;
    }
    (i0 * h / 3.0, i2 * h / 3.0)
}

/// Runs a grid's `control:` run: integrates the process from a seeded
/// start for `epochs × control_steps` steps of size `lr` (the schedule
/// applies), reports each epoch's mean potential as its loss, records the
/// two coordinates after `burn_in_epochs` as the trajectory, and
/// checkpoints at segment boundaries. The noise of epoch `e` comes from
/// its own stream, so a resumed run (from [`Checkpoint::header`]'s exact
/// `state`) ends bit-identical to one that never stopped. A control has no
/// probes and no held-out set (its test figures are NaN).
pub fn execute_control(
    spec: &RunSpec,
    control: Control,
    resume: Option<Checkpoint>,
    stop: &AtomicBool,
    sink: &mut dyn FnMut(RunEvent) -> ControlFlow<()>,
) -> Result<RunFinal, RunError> {
    let t = &spec.train;
    let lambda = t.control_lambda;
    let steps_per_epoch = u64::from(t.control_steps.max(1));
    let total_steps = steps_per_epoch * u64::from(t.epochs);
    let new_recorder = || {
        TrajectoryRecorder::with_spectrum(2, default_lags(spec.probe.max_lag as usize), spec.probe.psd_window as usize)
    };
    let fingerprint = spec_fingerprint(spec);
    let mut x = {
        let mut r = Rng::new(spec.seed, Stream::Init);
        [r.normal(), r.normal()]
    };
    let mut recorder = new_recorder();
    let (mut start_epoch, mut start_s, mut resume_loss_sum, mut step, mut last_epoch_loss) =
        (0u32, 0u64, 0.0f64, 0u64, f64::NAN);
    if let Some(c) = resume {
        let h = c.header;
        let fresh = new_recorder();
        let sums = h.recorder.sums();
        if !crate::checkpoint::written_for(spec, &h.spec_fingerprint)
            || h.state.len() != 2
            || h.state.iter().any(|v| !v.is_finite())
            || sums.k != 2
            || sums.lags != fresh.sums().lags
            || sums.psd_window != fresh.sums().psd_window
            || h.epoch >= t.epochs
            || h.step_in_epoch >= steps_per_epoch
            || h.step != u64::from(h.epoch) * steps_per_epoch + h.step_in_epoch
        {
            return Err(RunError::Spec(format!(
                "checkpoint at epoch {} step {} does not fit this control run",
                h.epoch, h.step
            )));
        }
        x = [h.state[0], h.state[1]];
        (start_epoch, start_s, resume_loss_sum) = (h.epoch, h.step_in_epoch, h.loss_sum);
        (step, last_epoch_loss, recorder) = (h.step, h.last_epoch_loss, h.recorder);
    }
    let snapshot =
        |epoch: u32, step_in_epoch: u64, step: u64, loss_sum: f64, last: f64, x: [f64; 2], rec: &TrajectoryRecorder| {
            Box::new(Checkpoint {
                header: CheckpointHeader {
                    spec_fingerprint: fingerprint.clone(),
                    epoch,
                    step_in_epoch,
                    step,
                    probes_done: 0,
                    loss_sum,
                    last_epoch_loss: last,
                    recorder: rec.clone(),
                    state: x.to_vec(),
                    epoch_recorder: None,
                },
                params: x.iter().map(|&v| v as f32).collect(),
                buffers: vec![],
                velocity: vec![0.0; 2],
                basis: vec![],
                user_state: vec![],
            })
        };
    let (every_epochs, every_steps) = (t.checkpoint_every_epochs, t.checkpoint_every_steps);
    let mut diverged = false;
    'epochs: for epoch in start_epoch..t.epochs {
        let mut rng = Rng::new(spec.seed, Stream::Noise(u64::from(epoch)));
        let first = epoch == start_epoch;
        let s0 = if first { start_s } else { 0 };
        // The draws of the steps a resumed epoch has already taken.
        for _ in 0..2 * s0 {
            rng.normal();
        }
        let mut loss_sum = if first { resume_loss_sum } else { 0.0 };
        for s in s0..steps_per_epoch {
            if stop.load(Ordering::Relaxed) {
                return Err(RunError::Stopped);
            }
            let dt = t.lr_at(epoch, step, total_steps);
            let noise = (2.0 * dt).sqrt();
            let f = control.drift(lambda, x);
            let (z0, z1) = (rng.normal(), rng.normal());
            x = [x[0] + f[0] * dt + noise * z0, x[1] + f[1] * dt + noise * z1];
            step += 1;
            let phi = control.potential(x);
            if !phi.is_finite() {
                diverged = true;
                break 'epochs;
            }
            loss_sum += phi;
            if epoch >= spec.probe.burn_in_epochs {
                recorder.push(&x);
            }
            if every_steps > 0 && step.is_multiple_of(every_steps) && s + 1 < steps_per_epoch {
                let c = snapshot(epoch, s + 1, step, loss_sum, last_epoch_loss, x, &recorder);
                if sink(RunEvent::Checkpoint(c)).is_break() {
                    return Err(RunError::Stopped);
                }
            }
        }
        last_epoch_loss = loss_sum / steps_per_epoch as f64;
        let lr = t.lr_at(epoch, step.saturating_sub(1), total_steps);
        if sink(RunEvent::Progress { epoch: epoch + 1, step, total_steps, train_loss: last_epoch_loss, lr }).is_break()
        {
            return Err(RunError::Stopped);
        }
        let boundary = (every_epochs > 0 && (epoch + 1).is_multiple_of(every_epochs))
            || (every_steps > 0 && step.is_multiple_of(every_steps));
        if boundary && epoch + 1 < t.epochs {
            let c = snapshot(epoch + 1, 0, step, 0.0, last_epoch_loss, x, &recorder);
            if sink(RunEvent::Checkpoint(c)).is_break() {
                return Err(RunError::Stopped);
            }
        }
    }
    if sink(RunEvent::Trajectory(Box::new(recorder.into_sums()))).is_break() {
        return Err(RunError::Stopped);
    }
    Ok(RunFinal {
        steps: step,
        params: 2,
        train_loss: last_epoch_loss,
        final_train_loss: control.potential(x),
        test_accuracy: f64::NAN,
        test_loss: f64::NAN,
        diverged,
        weights_hash: hash_f64(&x),
    })
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

    /// The closed forms of [`Control`] against long simulations: the OU's
    /// are exact algebra ([`ou_area_rate`] on its Σ = I); the double well's
    /// `λπ/Z` and `2·rate/E‖x‖²` come from the stationary density `e^{−Φ}`,
    /// and the simulation at dt = 0.002 (Euler bias O(dt)) must agree
    /// within 4 %.
    #[test]
    fn the_controls_closed_forms_match_simulation() {
        let f = [[1.0, 0.7], [-0.7, 1.0]];
        let s = lyapunov_2d(f, [[1.0, 0.0], [0.0, 1.0]], 1.0).unwrap();
        assert!((ou_area_rate(f, s) - Control::Ou.area_rate(0.7)).abs() < 1e-12);
        assert!((ou_cycling_frequency(f, s) - Control::Ou.cycling_frequency(0.7)).abs() < 1e-12);
        let (got, want) = (Control::Ou.drift(0.7, [0.3, -0.2]), [-0.3 + 0.7 * 0.2, 0.7 * 0.3 + 0.2]);
        assert!((got[0] - want[0]).abs() < 1e-15 && (got[1] - want[1]).abs() < 1e-15);
        assert_eq!(Control::DoubleWell.area_rate(0.0), 0.0);
        let dt = 0.002;
        let b = simulate_double_well(1.5, dt, 5_000, 20, 100_000, 11);
        let (want, got) = (Control::DoubleWell.area_rate(1.5), area_rate_ci(&b, dt));
        assert!(
            (got.mean - want).abs() < 0.04 * want,
            "double well: measured {} ± {} vs exact {want}",
            got.mean,
            got.ci95
        );
        let mut all = b[0].clone();
        b[1..].iter().for_each(|x| all.merge(x).unwrap());
        let (want, got) = (Control::DoubleWell.cycling_frequency(1.5), all.cycling_frequency(0, 1) / dt);
        assert!((got - want).abs() < 0.04 * want, "cycling frequency {got} vs exact {want}");
    }

    fn control_spec(model: &str, lambda: f64) -> RunSpec {
        let mut spec = RunSpec {
            train: crate::spec::TrainConfig {
                model: model.into(),
                dataset: crate::grid::CONTROL_DATASET.into(),
                epochs: 6,
                lr: 0.01,
                control_lambda: lambda,
                control_steps: 700,
                checkpoint_every_steps: 1000,
                ..Default::default()
            },
            probe: crate::spec::ProbeConfig { burn_in_epochs: 1, max_lag: 8, psd_window: 64, ..Default::default() },
            seed: 5,
            user: Default::default(),
        };
        spec.probe.projections = 2;
        spec
    }

    /// A control run through [`crate::run::execute`]: no probes, one
    /// trajectory of the two coordinates, and a resume from any of its
    /// checkpoints (mid-epoch ones included) ends bit-identical.
    #[test]
    fn a_control_run_resumes_bit_identically_from_every_checkpoint() {
        for model in ["control:ou", "control:double-well"] {
            let spec = control_spec(model, 1.5);
            let stop = AtomicBool::new(false);
            let mut events = vec![];
            let fin = crate::run::execute(&spec, &stop, &mut |e| {
                events.push(e);
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!((fin.steps, fin.params, fin.diverged), (4200, 2, false));
            assert!(fin.test_accuracy.is_nan() && fin.final_train_loss.is_finite());
            let mut checkpoints = vec![];
            let (mut progress, mut traj) = (0, None);
            for e in events {
                match e {
                    RunEvent::Checkpoint(c) => checkpoints.push(*c),
                    RunEvent::Progress { .. } => progress += 1,
                    RunEvent::Trajectory(t) => traj = Some(*t),
                    other => panic!("{model}: unexpected event {other:?}"),
                }
            }
            assert_eq!(progress, 6);
            let traj = traj.unwrap();
            assert_eq!((traj.k, traj.points), (2, 3500), "{model}: recorded after one epoch of burn-in");
            assert!(checkpoints.iter().any(|c| c.header.step_in_epoch > 0), "{model}: a mid-epoch checkpoint");
            for c in checkpoints {
                let bytes = c.encode();
                let c = Checkpoint::decode(&bytes, &spec, 2).unwrap();
                let mut again = None;
                let resumed = crate::run::execute_from(&spec, Some(c), &stop, &mut |e| {
                    if let RunEvent::Trajectory(t) = e {
                        again = Some(*t);
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
                let key =
                    |f: &RunFinal| (f.steps, f.weights_hash, f.train_loss.to_bits(), f.final_train_loss.to_bits());
                assert_eq!(key(&resumed), key(&fin), "{model}");
                assert_eq!(again.as_ref(), Some(&traj), "{model}");
            }
            let other =
                crate::run::execute(&RunSpec { seed: 6, ..spec.clone() }, &stop, &mut |_| ControlFlow::Continue(()))
                    .unwrap();
            assert_ne!(other.weights_hash, fin.weights_hash, "{model}: seeds differ");
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
