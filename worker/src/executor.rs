//! What computes a run: gradsweep's own engine, or another trainer (a
//! Python function, through the `gradsweep` Python package).
//!
//! Everything else a worker does — registration with the trainers it runs,
//! heartbeats, leases, fencing, the acknowledged report stream, checkpoints
//! and their hand-back on drain or SIGTERM — is the same for every
//! executor: an executor turns a run's spec (and the checkpoint it resumes
//! from) into [`RunEvent`]s and a [`RunFinal`].

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use gradsweep_shared::checkpoint::Checkpoint;
use gradsweep_shared::run::{RunError, RunEvent, execute_with, param_count};
use gradsweep_shared::shards::ProbeHelp;
use gradsweep_shared::spec::{RunFinal, RunSpec, Trainer};

/// Where a run's events go, in order; `Break` stops the run (its reporter
/// is gone, or it is being handed back after a checkpoint).
pub type EventSink = Box<dyn FnMut(RunEvent) -> ControlFlow<()> + Send>;

/// Computes runs of the trainers it declares.
pub trait Executor: Send + Sync + fmt::Debug {
    /// The trainers it runs: declared when the worker registers, and the
    /// only runs it accepts.
    fn trainers(&self) -> Vec<Trainer>;

    /// The checkpoint in `bytes` (as a run of `spec` reported it), checked
    /// to belong to that run.
    fn resume(&self, spec: &RunSpec, bytes: &[u8]) -> Result<Checkpoint, String>;

    /// Runs `spec` to its end, from `resume` when given, handing events to
    /// `sink`; returns [`RunError::Stopped`] once `stop` is raised. Called
    /// on a blocking thread.
    fn execute(
        &self,
        spec: &RunSpec,
        resume: Option<Checkpoint>,
        stop: Arc<AtomicBool>,
        help: ProbeHelp<'_>,
        sink: EventSink,
    ) -> Result<RunFinal, RunError>;
}

/// gradsweep's engine: the named models, `mlp:`, `linear:` and `control:`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Builtin;

impl Executor for Builtin {
    fn trainers(&self) -> Vec<Trainer> {
        vec![Trainer::Builtin]
    }

    fn resume(&self, spec: &RunSpec, bytes: &[u8]) -> Result<Checkpoint, String> {
        let d = param_count(spec).map_err(|e| e.to_string())?;
        Checkpoint::decode(bytes, spec, d).map_err(|e| e.to_string())
    }

    fn execute(
        &self,
        spec: &RunSpec,
        resume: Option<Checkpoint>,
        stop: Arc<AtomicBool>,
        help: ProbeHelp<'_>,
        mut sink: EventSink,
    ) -> Result<RunFinal, RunError> {
        execute_with(spec, resume, &stop, help, &mut *sink)
    }
}
