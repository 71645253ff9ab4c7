//! Runs trained by the user's own code (`python:` trainers): the user's
//! code trains and hands gradsweep per-sample gradients and weights;
//! gradsweep keeps the run's position, sizes and sketches its probes,
//! records its trajectory, writes and reads its checkpoints, and sums it up
//! in the same [`RunEvent`]s and [`RunFinal`] as a run of its own engine —
//! so the coordinator merges, reports and resumes both alike.
//!
//! An [`ExternalRun`] enforces what keeps a sweep's runs comparable and
//! resumable: probes only at the epochs the spec schedules (every seed of a
//! cell probes at the same epochs), one dimension `d` for every probe and
//! trajectory point, the trajectory recorded after the burn-in onto the
//! sweep's seeded random directions, and a run that ends only after its
//! last epoch and probe. Its checkpoint holds its own position and sums and
//! the user's state as opaque bytes, so a resumed run ends bit-identical to
//! an undisturbed one whenever the user's code is deterministic.

use crate::checkpoint::{Checkpoint, CheckpointHeader, spec_fingerprint};
use crate::linalg::{project_rows, random_orthonormal};
use crate::rng::{Rng, Stream};
use crate::run::{ProbeMeta, ProbeRecord, RunError, RunEvent, sized_sketch};
use crate::sketch::FdSketch;
use crate::spec::{RunFinal, RunSpec, WirePrecision, hash_f32};
use crate::stats::SpectrumStats;
use crate::trajectory::{TrajectoryRecorder, TrajectorySums, default_lags};

/// The state of one run trained by user code, between its events.
#[derive(Debug, Clone)]
pub struct ExternalRun {
    spec: RunSpec,
    fingerprint: String,
    probe_epochs: Vec<u32>,
    /// Epochs done.
    epoch: u32,
    step: u64,
    step_in_epoch: u64,
    /// Σ of this epoch's mini-batch losses.
    loss_sum: f64,
    last_epoch_loss: f64,
    probes_done: u32,
    d: Option<usize>,
    /// `projections × d` random orthonormal directions, drawn at the first
    /// trajectory point (a pure function of the projection seed and `d`).
    dirs: Vec<f32>,
    recorder: TrajectoryRecorder,
    weights_hash: u64,
    test_accuracy: f64,
    test_loss: f64,
    diverged: bool,
    resume_state: Option<Vec<u8>>,
}

/// How many f64 a checkpoint's `state` holds for an external run.
const STATE_LEN: usize = 7;

fn spec_error(m: String) -> RunError {
    RunError::Spec(m)
}

impl ExternalRun {
    /// A run of `spec` from its start, or from `resume` (a checkpoint it
    /// wrote), checked to fit.
    pub fn new(spec: &RunSpec, resume: Option<Checkpoint>) -> Result<ExternalRun, RunError> {
        let k = spec.probe.projections as usize;
        let recorder = TrajectoryRecorder::with_spectrum(
            k,
            default_lags(spec.probe.max_lag as usize),
            spec.probe.psd_window as usize,
        );
        let mut run = ExternalRun {
            spec: spec.clone(),
            fingerprint: spec_fingerprint(spec),
            probe_epochs: spec.probe_epochs(),
            epoch: 0,
            step: 0,
            step_in_epoch: 0,
            loss_sum: 0.0,
            last_epoch_loss: f64::NAN,
            probes_done: 0,
            d: None,
            dirs: vec![],
            recorder,
            weights_hash: 0,
            test_accuracy: f64::NAN,
            test_loss: f64::NAN,
            diverged: false,
            resume_state: None,
        };
        if let Some(c) = resume {
            let h = c.header;
            let fresh = run.recorder.sums();
            let fits = crate::checkpoint::written_for(spec, &h.spec_fingerprint)
                && c.params.is_empty()
                && c.buffers.is_empty()
                && c.velocity.is_empty()
                && c.basis.is_empty()
                && h.state.len() == STATE_LEN
                && h.recorder.sums().k == k
                && h.recorder.sums().lags == fresh.lags
                && h.recorder.sums().psd_window == fresh.psd_window
                && h.epoch <= spec.train.epochs
                && h.probes_done as usize <= run.probe_epochs.len();
            if !fits {
                return Err(spec_error(format!(
                    "checkpoint at epoch {} step {} does not fit this python: run",
                    h.epoch, h.step
                )));
            }
            let s = &h.state;
            let optional = |flag: f64, v: f64| if flag == 1.0 { v } else { f64::NAN };
            run.d = (s[0] > 0.0).then_some(s[0] as usize);
            run.weights_hash = ((s[1] as u64) << 32) | s[2] as u64;
            (run.test_accuracy, run.test_loss) = (optional(s[3], s[4]), optional(s[5], s[6]));
            (run.epoch, run.step, run.step_in_epoch) = (h.epoch, h.step, h.step_in_epoch);
            (run.loss_sum, run.last_epoch_loss, run.probes_done) = (h.loss_sum, h.last_epoch_loss, h.probes_done);
            run.recorder = h.recorder;
            if let Some(d) = run.d
                && k <= d
            {
                run.dirs = random_orthonormal(k, d, &mut Rng::new(spec.probe.projection_seed, Stream::Projection));
            }
            run.resume_state = Some(c.user_state);
        }
        Ok(run)
    }

    /// The spec.
    pub fn spec(&self) -> &RunSpec {
        &self.spec
    }

    /// Epochs done (where a resumed run continues).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Probes taken (the next probe's index).
    pub fn probes_done(&self) -> u32 {
        self.probes_done
    }

    /// The parameter dimension, once a probe or trajectory point gave it.
    pub fn dim(&self) -> Option<usize> {
        self.d
    }

    /// The user's state from the checkpoint the run resumed from (`None`
    /// on a fresh start).
    pub fn resume_state(&self) -> Option<&[u8]> {
        self.resume_state.as_deref()
    }

    /// Epochs after which this run probes, in order.
    pub fn probe_epochs(&self) -> &[u32] {
        &self.probe_epochs
    }

    /// Whether a probe is due now: the epoch just ended is the next
    /// scheduled probe's (a probe is taken after its epoch's end, before
    /// the next step, as the engine takes it).
    pub fn probe_due(&self) -> bool {
        self.probe_epochs.get(self.probes_done as usize) == Some(&self.epoch)
    }

    /// Refuses `what` while the probe of the epoch just ended is not taken.
    fn no_probe_due(&self, what: &str) -> Result<(), RunError> {
        if self.probe_due() {
            return Err(spec_error(format!(
                "{what} before the probe due after epoch {}: call run.probe() after epoch_end() of each epoch in {:?}",
                self.epoch, self.probe_epochs
            )));
        }
        Ok(())
    }

    fn check_dim(&mut self, d: usize, what: &str) -> Result<(), RunError> {
        match self.d {
            Some(known) if known != d => {
                Err(spec_error(format!("{what} has d = {d}, but this run's earlier probes or weights had d = {known}")))
            }
            _ if d == 0 => Err(spec_error(format!("{what} has d = 0"))),
            _ => {
                self.d = Some(d);
                Ok(())
            }
        }
    }

    /// One SGD step with its mini-batch loss.
    pub fn record_step(&mut self, loss: f64) -> Result<(), RunError> {
        if self.epoch >= self.spec.train.epochs {
            return Err(spec_error(format!("a step after the run's last epoch ({})", self.spec.train.epochs)));
        }
        self.no_probe_due("a step")?;
        self.step += 1;
        self.step_in_epoch += 1;
        self.loss_sum += loss;
        self.diverged |= !loss.is_finite();
        Ok(())
    }

    /// The end of an epoch: its mean loss (the given one, else the mean of
    /// its steps' losses), and the test figures when the trainer has them.
    pub fn epoch_end(
        &mut self,
        train_loss: Option<f64>,
        test_accuracy: Option<f64>,
        test_loss: Option<f64>,
    ) -> Result<RunEvent, RunError> {
        let epochs = self.spec.train.epochs;
        if self.epoch >= epochs {
            return Err(spec_error(format!("epoch_end after the run's last epoch ({epochs})")));
        }
        self.no_probe_due("epoch_end")?;
        let mean = train_loss.unwrap_or(if self.step_in_epoch == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.step_in_epoch as f64
        });
        self.diverged |= train_loss.is_some_and(|l| !l.is_finite());
        self.epoch += 1;
        (self.last_epoch_loss, self.loss_sum, self.step_in_epoch) = (mean, 0.0, 0);
        if let Some(a) = test_accuracy {
            self.test_accuracy = a;
        }
        if let Some(l) = test_loss {
            self.test_loss = l;
        }
        // The steps so far, extrapolated to the whole run.
        let total_steps = self.step * u64::from(epochs) / u64::from(self.epoch);
        let lr = self.spec.train.lr_at(self.epoch - 1, self.step, total_steps);
        Ok(RunEvent::Progress { epoch: self.epoch, step: self.step, total_steps, train_loss: mean, lr })
    }

    /// The scheduled probe: `pass(ℓ)` sketches the per-sample gradients of
    /// all `n` training samples (dimension `d`) once at ℓ; with `sketch_rank
    /// = "auto"` it is called again at larger ℓ until the rank is resolved
    /// ([`sized_sketch`]). `on_pass` hears of each pass. `Ok(None)` when a
    /// pass was stopped.
    pub fn probe(
        &mut self,
        n: usize,
        d: usize,
        pass: &mut dyn FnMut(usize) -> Option<FdSketch>,
        on_pass: &mut dyn FnMut(&FdSketch, &SpectrumStats, usize),
        train_loss: f64,
        train_accuracy: f64,
    ) -> Result<Option<ProbeRecord>, RunError> {
        if !self.probe_due() {
            return Err(spec_error(format!(
                "no probe is due after epoch {}: this run probes after epochs {:?} ({} done)",
                self.epoch, self.probe_epochs, self.probes_done
            )));
        }
        if n == 0 {
            return Err(spec_error("a probe of no samples".into()));
        }
        self.check_dim(d, "the probe's gradients")?;
        let mut one = |ell: usize, _first: bool| pass(ell).map(|sk| (sk, ()));
        let Some((mut sketch, sizing)) =
            sized_sketch(&self.spec, d, n, &mut one, &mut |sk, st, k, _: &()| on_pass(sk, st, k))
        else {
            return Ok(None);
        };
        if sketch.dim() != d || sketch.count() != n as u64 {
            return Err(spec_error(format!(
                "a probe pass sketched {} rows of d = {}, expected {n} of d = {d}",
                sketch.count(),
                sketch.dim()
            )));
        }
        if self.spec.probe.wire_precision == WirePrecision::F16 {
            sketch.round_rows_to_f16();
        }
        let meta = ProbeMeta {
            index: self.probes_done,
            epoch: self.epoch,
            step: self.step,
            train_loss,
            train_accuracy,
            exact: None,
            sizing: Some(sizing),
            saved_rows: None,
        };
        self.probes_done += 1;
        Ok(Some(ProbeRecord { meta, sketch, saved: None }))
    }

    /// One point of the trajectory: the flat weights after a step. Before
    /// the burn-in ends it only updates the final weights' hash; after, it
    /// is projected onto the sweep's random directions and recorded.
    /// Returns whether it was recorded.
    pub fn trajectory(&mut self, weights: &[f32]) -> Result<bool, RunError> {
        self.check_dim(weights.len(), "the weights")?;
        let d = weights.len();
        self.weights_hash = hash_f32(weights);
        if !weights.iter().all(|w| w.is_finite()) {
            self.diverged = true;
            return Ok(false);
        }
        if self.epoch < self.spec.probe.burn_in_epochs {
            return Ok(false);
        }
        let k = self.spec.probe.projections as usize;
        if k > d {
            return Err(spec_error(format!("`projections` = {k} exceeds the model's {d} weights")));
        }
        if self.dirs.is_empty() {
            self.dirs = random_orthonormal(k, d, &mut Rng::new(self.spec.probe.projection_seed, Stream::Projection));
        }
        let mut proj = vec![0.0f64; k];
        project_rows(&self.dirs, weights, &mut proj);
        self.recorder.push(&proj);
        Ok(true)
    }

    /// A checkpoint of the run here, with the user's `state`; refused while
    /// a probe is due (a checkpoint sits after its epoch's probe).
    pub fn checkpoint(&self, user_state: Vec<u8>) -> Result<Checkpoint, RunError> {
        self.no_probe_due("a checkpoint")?;
        let flag = |v: f64| if v.is_finite() { (1.0, v) } else { (0.0, 0.0) };
        let (ha, a) = flag(self.test_accuracy);
        let (hl, l) = flag(self.test_loss);
        let hash = self.weights_hash;
        Ok(Checkpoint {
            header: CheckpointHeader {
                spec_fingerprint: self.fingerprint.clone(),
                epoch: self.epoch,
                step_in_epoch: self.step_in_epoch,
                step: self.step,
                probes_done: self.probes_done,
                loss_sum: if self.loss_sum.is_finite() { self.loss_sum } else { 0.0 },
                last_epoch_loss: self.last_epoch_loss,
                recorder: self.recorder.clone(),
                state: vec![self.d.unwrap_or(0) as f64, (hash >> 32) as f64, (hash & 0xffff_ffff) as f64, ha, a, hl, l],
                epoch_recorder: None,
            },
            params: vec![],
            buffers: vec![],
            velocity: vec![],
            basis: vec![],
            user_state,
        })
    }

    /// The run's end: its trajectory sums and final figures. Refused
    /// unless every epoch ended and every scheduled probe was taken (a
    /// diverged run may end early).
    pub fn finish(self) -> Result<(TrajectorySums, RunFinal), RunError> {
        let epochs = self.spec.train.epochs;
        if !self.diverged && (self.epoch < epochs || (self.probes_done as usize) < self.probe_epochs.len()) {
            return Err(spec_error(format!(
                "train() returned after {} of {epochs} epochs and {} of {} probes",
                self.epoch,
                self.probes_done,
                self.probe_epochs.len()
            )));
        }
        let fin = RunFinal {
            steps: self.step,
            params: self.d.unwrap_or(0),
            train_loss: self.last_epoch_loss,
            final_train_loss: self.last_epoch_loss,
            test_accuracy: self.test_accuracy,
            test_loss: self.test_loss,
            diverged: self.diverged || !self.last_epoch_loss.is_finite(),
            weights_hash: self.weights_hash,
        };
        Ok((self.recorder.into_sums(), fin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ProbeConfig, SketchSize, TrainConfig, Trainer};

    fn spec() -> RunSpec {
        RunSpec {
            train: TrainConfig {
                epochs: 4,
                trainer: Trainer::Python { module: "m".into(), function: "f".into() },
                ..TrainConfig::default()
            },
            probe: ProbeConfig {
                every_epochs: 2,
                sketch_rank: SketchSize::Fixed(4),
                projections: 2,
                max_lag: 4,
                psd_window: 8,
                burn_in_epochs: 1,
                ..ProbeConfig::default()
            },
            seed: 3,
            user: Default::default(),
        }
    }

    /// A deterministic "training": weights and gradients from the step.
    fn drive(run: &mut ExternalRun, until_epoch: u32, checkpoints: &mut Vec<Checkpoint>) {
        let d = 6;
        while run.epoch() < until_epoch {
            for _ in 0..5 {
                let s = run.step() as f32;
                run.record_step(1.0 / (1.0 + s as f64)).unwrap();
                let w: Vec<f32> = (0..d).map(|i| (s * 0.1 + i as f32).sin()).collect();
                run.trajectory(&w).unwrap();
            }
            run.epoch_end(None, Some(0.5), None).unwrap();
            if run.probe_due() {
                let e = run.epoch() as f32;
                let g: Vec<f32> = (0..10 * d).map(|i| ((i as f32) * 0.37 + e).cos()).collect();
                let mut pass = |ell: usize| {
                    let mut sk = FdSketch::new(d, ell);
                    sk.insert_block(&g);
                    Some(sk)
                };
                run.probe(10, d, &mut pass, &mut |_, _, _| {}, 0.1, 0.9).unwrap().unwrap();
            }
            checkpoints.push(run.checkpoint(vec![run.epoch() as u8; 3]).unwrap());
        }
    }

    #[test]
    fn a_resumed_external_run_ends_as_an_undisturbed_one() {
        let mut whole = ExternalRun::new(&spec(), None).unwrap();
        let mut cks = vec![];
        drive(&mut whole, 4, &mut cks);
        let (sums, fin) = whole.finish().unwrap();
        for ck in &cks[..3] {
            let bytes = ck.encode();
            let back = Checkpoint::decode(&bytes, &spec(), 0).unwrap();
            assert_eq!(&back, ck, "the checkpoint round-trips, user state included");
            let mut run = ExternalRun::new(&spec(), Some(back)).unwrap();
            assert_eq!(run.resume_state(), Some(&[ck.header.epoch as u8; 3][..]));
            drive(&mut run, 4, &mut vec![]);
            let (s2, f2) = run.finish().unwrap();
            // Debug text: NaN test loss (none reported) compares equal.
            assert_eq!(
                format!("{s2:?} {f2:?}"),
                format!("{sums:?} {fin:?}"),
                "resumed after epoch {}",
                ck.header.epoch
            );
        }
        assert_eq!((fin.steps, fin.params, fin.test_accuracy), (20, 6, 0.5));
        assert!(sums.count.iter().any(|&c| c > 0), "recorded after the burn-in");
    }

    #[test]
    fn the_schedule_and_the_dimension_are_enforced() {
        let mut run = ExternalRun::new(&spec(), None).unwrap();
        let mut pass = |ell: usize| Some(FdSketch::new(6, ell));
        let e = run.probe(10, 6, &mut pass, &mut |_, _, _| {}, 0.0, 0.0).unwrap_err();
        assert!(e.to_string().contains("no probe is due after epoch 0"), "{e}");
        run.epoch_end(None, None, None).unwrap();
        run.epoch_end(None, None, None).unwrap();
        assert!(run.probe_due());
        for e in [
            run.record_step(1.0).unwrap_err(),
            run.epoch_end(None, None, None).unwrap_err(),
            run.checkpoint(vec![]).unwrap_err(),
        ] {
            assert!(e.to_string().contains("before the probe due after epoch 2"), "{e}");
        }
        run.trajectory(&[0.0; 6]).unwrap();
        let e = run.trajectory(&[0.0; 7]).unwrap_err();
        assert!(e.to_string().contains("d = 7") && e.to_string().contains("d = 6"), "{e}");
        let e = ExternalRun::new(&spec(), None).unwrap().finish().unwrap_err();
        assert!(e.to_string().contains("after 0 of 4 epochs and 0 of 2 probes"), "{e}");
    }
}
