//! The Python worker: gradsweep's worker (registration, heartbeats,
//! leases, fencing, the acknowledged report stream, checkpoints, drain and
//! SIGTERM hand-back — the `gradsweep-worker` crate, not a second copy)
//! with an executor that calls the user's `train(run)` for each run.
//!
//! The user's code sees a [`RunHandle`]: it reports steps and epochs,
//! streams per-sample gradients into the probe's sketch, hands over its
//! weights for the trajectory, and checkpoints its own state as bytes. The
//! bookkeeping is [`ExternalRun`]'s (in `gradsweep-shared`); this module
//! moves events from it to the worker's report stream and turns a stopped
//! or handed-back run into the Python exception `gradsweep.RunStopped`,
//! which unwinds the user's code.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use gradsweep_proto::transport::{ClientSecurity, Token};
use gradsweep_shared::checkpoint::Checkpoint;
use gradsweep_shared::external::ExternalRun;
use gradsweep_shared::run::{ProbePass, RunError, RunEvent};
use gradsweep_shared::shards::ProbeHelp;
use gradsweep_shared::sketch::FdSketch;
use gradsweep_shared::spec::{RunFinal, RunSpec, Trainer};
use gradsweep_worker::executor::{EventSink, Executor};
use gradsweep_worker::{Shutdown, WorkerConfig};
use numpy::{PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::value_error;

pyo3::create_exception!(
    _gradsweep,
    RunStopped,
    pyo3::exceptions::PyException,
    "The run was stopped (its lease was lost, the worker is shutting down, or it is handed back at this \
     checkpoint): let it propagate out of train(run)."
);

/// A run's state, shared by its handle (Python) and its executor; taken
/// by the executor when `train(run)` returns.
type SharedRun = Arc<Mutex<Option<ExternalRun>>>;

/// Where a run's events go, shared the same way.
type SharedSink = Arc<Mutex<EventSink>>;

/// One run, as `train(run)` receives it (wrapped by `gradsweep.Run`).
#[pyclass(module = "gradsweep._gradsweep")]
pub struct RunHandle {
    run: SharedRun,
    sink: SharedSink,
    stop: Arc<AtomicBool>,
    spec_json: String,
}

/// Sends `event` to the report stream without the GIL (it may wait for
/// the coordinator); a sink that breaks raises `stop`.
fn send(py: Python<'_>, sink: &SharedSink, stop: &AtomicBool, event: RunEvent) -> PyResult<()> {
    let sink = sink.clone();
    match py.detach(move || sink.lock().map(|mut s| s(event)).map_err(|_| ())) {
        Ok(ControlFlow::Continue(())) => Ok(()),
        Ok(ControlFlow::Break(())) => {
            stop.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(()) => Err(PyRuntimeError::new_err("run state poisoned")),
    }
}

impl RunHandle {
    fn with_run<T>(&self, f: impl FnOnce(&mut ExternalRun) -> Result<T, RunError>) -> PyResult<T> {
        let mut run = self.run.lock().map_err(|_| PyRuntimeError::new_err("run state poisoned"))?;
        let run = run.as_mut().ok_or_else(|| PyRuntimeError::new_err("the run has ended"))?;
        f(run).map_err(value_error)
    }

    fn check_stop(&self) -> PyResult<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(RunStopped::new_err("the run was stopped"));
        }
        Ok(())
    }

    /// Sends `event` to the report stream; raises `RunStopped` once the
    /// run is to stop (a sink that breaks: the run is handed back here).
    fn emit(&self, py: Python<'_>, event: RunEvent) -> PyResult<()> {
        send(py, &self.sink, &self.stop, event)?;
        if self.stop.load(Ordering::Relaxed) {
            return Err(RunStopped::new_err("the run is stopped or handed back here (the worker drains or stops)"));
        }
        Ok(())
    }
}

#[pymethods]
impl RunHandle {
    /// The run's spec as JSON (train and probe settings, seed, user keys).
    #[getter]
    fn spec_json(&self) -> &str {
        &self.spec_json
    }

    /// Epochs done: where the run (re)starts.
    #[getter]
    fn epoch(&self) -> PyResult<u32> {
        self.with_run(|r| Ok(r.epoch()))
    }

    /// Steps done.
    #[getter]
    fn step(&self) -> PyResult<u64> {
        self.with_run(|r| Ok(r.step()))
    }

    /// Epochs after which the run probes.
    #[getter]
    fn probe_epochs(&self) -> PyResult<Vec<u32>> {
        self.with_run(|r| Ok(r.probe_epochs().to_vec()))
    }

    /// Whether a probe is due now.
    #[getter]
    fn probe_due(&self) -> PyResult<bool> {
        self.with_run(|r| Ok(r.probe_due()))
    }

    /// Whether the run was asked to stop.
    #[getter]
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The user's state of the checkpoint the run resumes from.
    fn resume_state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.with_run(|r| Ok(r.resume_state().map(|b| PyBytes::new(py, b))))
    }

    /// One SGD step with its mini-batch loss.
    fn record_step(&self, loss: f64) -> PyResult<()> {
        self.check_stop()?;
        self.with_run(|r| r.record_step(loss))
    }

    /// The end of an epoch (reported to the coordinator).
    #[pyo3(signature = (train_loss = None, test_accuracy = None, test_loss = None))]
    fn epoch_end(
        &self,
        py: Python<'_>,
        train_loss: Option<f64>,
        test_accuracy: Option<f64>,
        test_loss: Option<f64>,
    ) -> PyResult<()> {
        self.check_stop()?;
        let event = self.with_run(|r| r.epoch_end(train_loss, test_accuracy, test_loss))?;
        self.emit(py, event)
    }

    /// The scheduled probe: `blocks()` returns an iterable of C-contiguous
    /// float32 `(rows, d)` arrays covering all `n` training samples, in the
    /// same order each time it is called (an auto-sized probe calls it once
    /// per pass).
    #[pyo3(signature = (blocks, n, d, train_loss = f64::NAN, train_accuracy = f64::NAN))]
    fn _probe(
        &self,
        py: Python<'_>,
        blocks: Bound<'_, PyAny>,
        n: usize,
        d: usize,
        train_loss: f64,
        train_accuracy: f64,
    ) -> PyResult<()> {
        self.check_stop()?;
        let mut failure: Option<PyErr> = None;
        let stop = self.stop.clone();
        let mut pass = |ell: usize| -> Option<FdSketch> {
            let mut sk = FdSketch::new(d, ell.min(d).max(1));
            let mut run = || -> PyResult<Option<FdSketch>> {
                for block in blocks.call0()?.try_iter()? {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    let block = block?;
                    let a: PyReadonlyArray2<'_, f32> = block.extract()?;
                    let (rows, cols) = (a.shape()[0], a.shape()[1]);
                    if cols != d {
                        return Err(value_error(format!("a gradient block of {rows} × {cols}: this probe's d is {d}")));
                    }
                    let data = a.as_slice().map_err(value_error)?;
                    crate::all_finite(data, cols, "non-finite per-sample gradient in a block")?;
                    py.detach(|| sk.insert_block(data));
                }
                Ok(Some(std::mem::replace(&mut sk, FdSketch::new(1, 1))))
            };
            match run() {
                Ok(Some(mut s)) => {
                    py.detach(|| s.compact());
                    Some(s)
                }
                Ok(None) => None,
                Err(e) => {
                    failure = Some(e);
                    None
                }
            }
        };
        // Each pass is logged as it ends (the worker times it).
        let index = self.with_run(|r| Ok(r.probes_done()))?;
        let mut sent: PyResult<()> = Ok(());
        let (sink, stop) = (&self.sink, &*self.stop);
        let mut on_pass = |sk: &FdSketch, st: &gradsweep_shared::stats::SpectrumStats, k: usize| {
            let p = ProbePass {
                index,
                pass: k as u32,
                ell: sk.ell() as u32,
                rank: st.rank,
                resolved: st.rank_resolved,
                threads: 1,
                remote: 0,
            };
            if sent.is_ok() {
                sent = send(py, sink, stop, RunEvent::ProbePass(p));
            }
        };
        let got = {
            let mut run = self.run.lock().map_err(|_| PyRuntimeError::new_err("run state poisoned"))?;
            let run = run.as_mut().ok_or_else(|| PyRuntimeError::new_err("the run has ended"))?;
            run.probe(n, d, &mut pass, &mut on_pass, train_loss, train_accuracy)
        };
        if let Some(e) = failure {
            return Err(e);
        }
        sent?;
        let record = got.map_err(value_error)?;
        let Some(record) = record else {
            return Err(RunStopped::new_err("the run was stopped during its probe"));
        };
        self.emit(py, RunEvent::Probe(Box::new(record)))
    }

    /// One trajectory point: the flat float32 weights after a step.
    /// Returns whether it was recorded (after the burn-in).
    fn _trajectory(&self, weights: PyReadonlyArray1<'_, f32>) -> PyResult<bool> {
        self.check_stop()?;
        let w = weights.as_slice().map_err(value_error)?;
        self.with_run(|r| r.trajectory(w))
    }

    /// A checkpoint with the user's state; raises `RunStopped` when the run
    /// is to be handed back here.
    fn checkpoint(&self, py: Python<'_>, state: &[u8]) -> PyResult<()> {
        self.check_stop()?;
        let ck = self.with_run(|r| r.checkpoint(state.to_vec()))?;
        self.emit(py, RunEvent::Checkpoint(Box::new(ck)))
    }
}

/// Runs `python:` runs by calling the user's function.
struct PyExecutor {
    trainer: Trainer,
    train: Py<PyAny>,
}

impl std::fmt::Debug for PyExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyExecutor").field("trainer", &self.trainer).finish()
    }
}

impl Executor for PyExecutor {
    fn trainers(&self) -> Vec<Trainer> {
        vec![self.trainer.clone()]
    }

    fn resume(&self, spec: &RunSpec, bytes: &[u8]) -> Result<Checkpoint, String> {
        Checkpoint::decode(bytes, spec, 0).map_err(|e| e.to_string())
    }

    fn execute(
        &self,
        spec: &RunSpec,
        resume: Option<Checkpoint>,
        stop: Arc<AtomicBool>,
        _help: ProbeHelp<'_>,
        sink: EventSink,
    ) -> Result<RunFinal, RunError> {
        let run = ExternalRun::new(spec, resume)?;
        let (shared_run, sink): (SharedRun, SharedSink) = (Arc::new(Mutex::new(Some(run))), Arc::new(Mutex::new(sink)));
        let spec_json = serde_json::to_string(spec).map_err(|e| RunError::Spec(e.to_string()))?;
        let called = Python::attach(|py| -> PyResult<()> {
            let handle = RunHandle { run: shared_run.clone(), sink: sink.clone(), stop: stop.clone(), spec_json };
            self.train.call1(py, (Py::new(py, handle)?,))?;
            Ok(())
        });
        if let Err(e) = called {
            let stopped = Python::attach(|py| e.is_instance_of::<RunStopped>(py));
            if stopped || stop.load(Ordering::Relaxed) {
                return Err(RunError::Stopped);
            }
            let text = Python::attach(|py| {
                let tb = e.traceback(py).and_then(|t| t.format().ok()).unwrap_or_default();
                format!("{tb}{e}")
            });
            return Err(RunError::Spec(format!("train() raised: {text}")));
        }
        let run = shared_run.lock().map_err(|_| RunError::Spec("run state poisoned".into()))?.take();
        let (sums, fin) = run.ok_or_else(|| RunError::Spec("the run ended twice".into()))?.finish()?;
        let mut sink = sink.lock().map_err(|_| RunError::Spec("run state poisoned".into()))?;
        if sink(RunEvent::Trajectory(Box::new(sums))).is_break() {
            return Err(RunError::Stopped);
        }
        Ok(fin)
    }
}

/// Serves runs of `trainer` from the coordinator at `coordinator`, calling
/// `train(run)` for each, until SIGTERM/SIGINT, a drain, or `idle_exit_secs`
/// without work. Blocks (without the GIL).
#[pyfunction]
#[pyo3(signature = (coordinator, trainer, train, slots = 1, name = None, token = None, token_file = None,
                    tls_ca = None, tls_domain = None, idle_exit_secs = 0.0, handback_grace_secs = 20.0))]
#[allow(clippy::too_many_arguments)]
pub fn _serve(
    py: Python<'_>,
    coordinator: String,
    trainer: String,
    train: Py<PyAny>,
    slots: u32,
    name: Option<String>,
    token: Option<String>,
    token_file: Option<std::path::PathBuf>,
    tls_ca: Option<std::path::PathBuf>,
    tls_domain: Option<String>,
    idle_exit_secs: f64,
    handback_grace_secs: f64,
) -> PyResult<()> {
    let trainer = Trainer::parse(&trainer).map_err(value_error)?;
    if trainer.is_builtin() {
        return Err(value_error("a Python worker runs python: trainers; `builtin` runs are gradsweep-worker's"));
    }
    let mut security =
        ClientSecurity::load(token_file.as_deref(), tls_ca.as_deref(), tls_domain).map_err(value_error)?;
    if let Some(t) = token {
        security.token = Some(Token::new(&t, "Worker(token=…)").map_err(value_error)?);
    }
    let url = security.url(&coordinator);
    let mut cfg = WorkerConfig::new(url, slots);
    if let Some(n) = name {
        cfg.name = n;
    }
    cfg.security = security;
    cfg.idle_exit = (idle_exit_secs > 0.0).then(|| std::time::Duration::from_secs_f64(idle_exit_secs));
    cfg.handback_grace = std::time::Duration::from_secs_f64(handback_grace_secs.max(0.0));
    cfg.executor = Arc::new(PyExecutor { trainer, train });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let result = py.detach(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(slots.max(1) as usize + 4)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (tx, rx) = tokio::sync::watch::channel(Shutdown::None);
            let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
            let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                let _ = tx.send(Shutdown::Terminate);
            });
            gradsweep_worker::run_worker(cfg, rx).await.map_err(|e| e.to_string())
        })
    });
    result.map_err(PyRuntimeError::new_err)
}
