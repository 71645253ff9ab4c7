//! One run on a worker: the compute thread and its acknowledged report stream.
//!
//! The compute thread (tokio's blocking pool) turns run events into report
//! bodies and pushes them into a bounded channel, so a slow coordinator
//! slows the computation instead of growing memory. The reporter numbers
//! each body (`seq` from 1), keeps it until acknowledged, and sends what is
//! pending as one client stream per batch. A failed stream is retried with
//! backoff, re-sending everything unacknowledged; the coordinator applies
//! each sequence number once. When the compute ends, `Finish` names the
//! last sequence number.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gradsweep_proto::transport::AuthChannel;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::report_request::Body;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_shared::checkpoint::Checkpoint;
use gradsweep_shared::run::{RunError, RunEvent};
use gradsweep_shared::shards::ProbeHelp;
use gradsweep_shared::spec::RunSpec;
use tokio::sync::mpsc;
use tonic::Code;

use crate::config::{Backoff, WorkerConfig};
use crate::convert::event_bodies;
use crate::metrics::WorkerMetrics;
use crate::shards::RemoteExchange;
use crate::slots::Slots;

/// How a run ended on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Finished and acknowledged (completed, diverged or failed).
    Finished,
    /// The coordinator says the lease is gone; nothing more was sent.
    Lost,
    /// Stopped on request (shutdown); the lease is to be handed back.
    Stopped,
    /// Not this worker's to run (another trainer's): handed back at once,
    /// untouched.
    Refused,
}

/// Everything one run needs.
pub struct RunContext {
    /// Settings.
    pub cfg: WorkerConfig,
    /// Client (a lazily reconnecting channel).
    pub client: WorkerServiceClient<AuthChannel>,
    /// This worker's id.
    pub worker_id: String,
    /// The assignment.
    pub run: pb::RunAssignment,
    /// Raised to stop the run (shutdown or lost lease).
    pub stop: Arc<AtomicBool>,
    /// Raised when the lease is known lost.
    pub lost: Arc<AtomicBool>,
    /// Raised to hand the run back at its next checkpoint (drain, SIGTERM).
    pub handback: Arc<AtomicBool>,
    /// Where throughput and probe times are recorded.
    pub metrics: Arc<WorkerMetrics>,
    /// The worker's slots: the idle ones compute this run's probe shards.
    pub slots: Arc<Slots>,
}

enum FetchEnd {
    Lost(String),
    Failed(String),
    Stopped,
}

enum SendError {
    Lost(String),
    Rejected(String),
    Stopped,
}

impl RunContext {
    fn classify(&self, status: &tonic::Status) -> Option<SendError> {
        match status.code() {
            Code::FailedPrecondition | Code::NotFound => Some(SendError::Lost(status.message().to_string())),
            Code::InvalidArgument => Some(SendError::Rejected(status.message().to_string())),
            _ => None, // transient: retry
        }
    }

    /// Sends `pending` until acknowledged; drops what was acknowledged.
    async fn flush(&self, pending: &mut VecDeque<pb::ReportRequest>, backoff: &mut Backoff) -> Result<(), SendError> {
        while !pending.is_empty() {
            if self.lost.load(Ordering::Relaxed) {
                return Err(SendError::Lost("lease lost".into()));
            }
            let batch: Vec<pb::ReportRequest> = pending.iter().cloned().collect();
            let mut client = self.client.clone();
            match client.report(tokio_stream::iter(batch)).await {
                Ok(resp) => {
                    let applied = resp.into_inner().applied_seq;
                    let before = pending.len();
                    pending.retain(|m| m.seq > applied);
                    self.metrics.reports_acked.add((before - pending.len()) as u64);
                    backoff.reset();
                }
                Err(status) => {
                    if let Some(e) = self.classify(&status) {
                        return Err(e);
                    }
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(SendError::Stopped);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(run_id = %self.run.run_id, code = ?status.code(), error = %status.message(), retry_in_ms = delay.as_millis() as u64, "report failed; will re-send");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Ok(())
    }

    async fn finish(&self, req: pb::FinishRequest, backoff: &mut Backoff) -> RunEnd {
        loop {
            let mut client = self.client.clone();
            match client.finish(req.clone()).await {
                Ok(_) => return RunEnd::Finished,
                Err(status) => match self.classify(&status) {
                    Some(SendError::Lost(m)) => {
                        tracing::warn!(run_id = %req.run_id, reason = %m, "finish refused: lease lost");
                        return RunEnd::Lost;
                    }
                    Some(_) => {
                        tracing::error!(run_id = %req.run_id, error = %status.message(), "finish rejected");
                        return RunEnd::Lost;
                    }
                    None if status.code() == Code::OutOfRange => {
                        tracing::error!(run_id = %req.run_id, error = %status.message(), "finish refused: reports missing");
                        return RunEnd::Lost;
                    }
                    None => {
                        if self.stop.load(Ordering::Relaxed) {
                            return RunEnd::Stopped;
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(run_id = %req.run_id, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "finish failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    }

    /// Fetches the checkpoint the run resumes from, retrying transient
    /// failures. `Err` carries the end to report (lost lease, or a failure).
    async fn fetch_checkpoint(&self, spec: &RunSpec, backoff: &mut Backoff) -> Result<Checkpoint, FetchEnd> {
        let req = pb::FetchCheckpointRequest {
            worker_id: self.worker_id.clone(),
            run_id: self.run.run_id.clone(),
            epoch: self.run.epoch,
        };
        loop {
            let got = async {
                let mut stream = self.client.clone().fetch_checkpoint(req.clone()).await?.into_inner();
                let lost = |e: gradsweep_proto::AssemblyError| tonic::Status::data_loss(e.0);
                let mut blob = gradsweep_proto::Assembly::new("checkpoint", usize::MAX);
                while let Some(c) = stream.message().await? {
                    blob.push(c.chunk_index, c.chunk_count, &c.data).map_err(lost)?;
                }
                blob.finish().map_err(lost)
            }
            .await;
            match got {
                Ok(bytes) => {
                    return self
                        .cfg
                        .executor
                        .resume(spec, &bytes)
                        .map_err(|e| FetchEnd::Failed(format!("cannot resume from the stored checkpoint: {e}")));
                }
                Err(status) => match self.classify(&status) {
                    Some(SendError::Lost(m)) => return Err(FetchEnd::Lost(m)),
                    Some(_) => return Err(FetchEnd::Failed(status.message().to_string())),
                    None if self.stop.load(Ordering::Relaxed) => return Err(FetchEnd::Stopped),
                    None => {
                        let delay = backoff.next_delay();
                        tracing::warn!(run_id = %self.run.run_id, error = %status.message(), retry_in_ms = delay.as_millis() as u64, "fetching the checkpoint failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    }

    fn finish_request(
        &self,
        last_seq: u64,
        outcome: pb::RunOutcome,
        error: String,
        final_figures: Option<pb::RunFinal>,
    ) -> pb::FinishRequest {
        pb::FinishRequest {
            worker_id: self.worker_id.clone(),
            run_id: self.run.run_id.clone(),
            epoch: self.run.epoch,
            last_seq,
            outcome: outcome as i32,
            error,
            final_figures,
        }
    }

    /// Hands back a run of a trainer this worker does not run, which a
    /// coordinator leases only by mistake (it grants a worker only the
    /// trainers it declared): nothing is computed or reported, and the run
    /// goes back to the queue for a worker that runs `trainer`.
    async fn refuse(&self, trainer: &gradsweep_shared::spec::Trainer) -> RunEnd {
        let declared: Vec<String> = self.cfg.executor.trainers().iter().map(|t| t.name()).collect();
        let reason = format!("this worker runs {}; the run needs `{trainer}`", declared.join(", "));
        tracing::error!(run_id = %self.run.run_id, %trainer, "run refused: {reason}");
        let req = pb::ReleaseRequest {
            worker_id: self.worker_id.clone(),
            runs: vec![pb::RunLease { run_id: self.run.run_id.clone(), epoch: self.run.epoch }],
            reason,
            leaving: false,
            shards: vec![],
        };
        if let Err(s) = self.client.clone().release(req).await {
            tracing::warn!(run_id = %self.run.run_id, error = %s.message(), "could not hand the run back; its lease will lapse");
        }
        RunEnd::Refused
    }

    /// Executes the run to its end.
    pub async fn execute(self) -> RunEnd {
        let run_id = self.run.run_id.clone();
        let mut backoff = Backoff::new(&self.cfg);
        let spec: RunSpec = match crate::convert::assigned_spec(self.run.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                let req = self.finish_request(0, pb::RunOutcome::Failed, format!("unreadable run spec: {e}"), None);
                return self.finish(req, &mut backoff).await;
            }
        };
        if !self.cfg.executor.trainers().contains(&spec.train.trainer) {
            return self.refuse(&spec.train.trainer).await;
        }
        let resume = if self.run.resume_seq > 0 {
            match self.fetch_checkpoint(&spec, &mut backoff).await {
                Ok(c) => Some(c),
                Err(FetchEnd::Lost(m)) => {
                    tracing::warn!(run_id = %run_id, reason = %m, "lease lost before resuming");
                    return RunEnd::Lost;
                }
                Err(FetchEnd::Stopped) => return RunEnd::Stopped,
                Err(FetchEnd::Failed(m)) => {
                    let req = self.finish_request(self.run.resume_seq, pb::RunOutcome::Failed, m, None);
                    return self.finish(req, &mut backoff).await;
                }
            }
        } else {
            None
        };
        tracing::info!(
            run_id = %run_id,
            epoch = self.run.epoch,
            lr = spec.train.lr,
            batch_size = spec.train.batch_size,
            seed = spec.seed,
            resume_step = resume.as_ref().map(|c| c.header.step),
            "run started"
        );
        if resume.is_some() {
            self.metrics.runs_resumed.inc();
        }
        let (tx, mut rx) = mpsc::channel::<Body>(8);
        let stop = self.stop.clone();
        let handback = self.handback.clone();
        let metrics = self.metrics.clone();
        let batch = spec.train.batch_size as u64;
        let pass_run_id = self.run.run_id.clone();
        let slots = self.slots.clone();
        // Probe passes are offered to idle workers under this run's lease.
        let exchange = RemoteExchange {
            client: self.client.clone(),
            worker_id: self.worker_id.clone(),
            run_id: self.run.run_id.clone(),
            epoch: self.run.epoch,
            handle: tokio::runtime::Handle::current(),
            metrics: self.metrics.clone(),
        };
        let executor = self.cfg.executor.clone();
        let compute = tokio::task::spawn_blocking(move || {
            let (mut last_step, mut last_at) = (0u64, std::time::Instant::now());
            let mut pass_at = std::time::Instant::now();
            let help = ProbeHelp { threads: &*slots, exchange: &exchange };
            let sink = Box::new(move |event: RunEvent| {
                let boundary = matches!(event, RunEvent::Checkpoint(_));
                let mut epoch_seconds = f64::NAN;
                match &event {
                    RunEvent::Progress { step, .. } => {
                        let (steps, secs) = (step - last_step, last_at.elapsed().as_secs_f64());
                        epoch_seconds = secs;
                        metrics.steps.add(steps);
                        metrics.samples.add(steps * batch);
                        if secs > 0.0 {
                            metrics.epoch_samples_per_second.set((steps * batch) as f64 / secs);
                        }
                        (last_step, last_at) = (*step, std::time::Instant::now());
                    }
                    // The probe runs right after its epoch's progress event.
                    RunEvent::Probe(_) => {
                        metrics.probe_seconds.observe(last_at.elapsed().as_secs_f64());
                        last_at = std::time::Instant::now();
                    }
                    RunEvent::ProbePass(p) => {
                        let since = if p.pass == 0 { last_at } else { pass_at };
                        tracing::info!(
                            run_id = %pass_run_id,
                            probe = p.index,
                            pass = p.pass,
                            ell = p.ell,
                            rank_lo = p.rank.lo,
                            rank_hi = p.rank.hi,
                            resolved = p.resolved,
                            threads = p.threads,
                            remote_shards = p.remote,
                            seconds = since.elapsed().as_secs_f64(),
                            "probe pass"
                        );
                        pass_at = std::time::Instant::now();
                    }
                    RunEvent::Trajectory(_) | RunEvent::Checkpoint(_) => {}
                }
                for body in event_bodies(event, epoch_seconds) {
                    if tx.blocking_send(body).is_err() {
                        return ControlFlow::Break(());
                    }
                }
                // Handing back: stop right after a checkpoint; the reporter
                // still delivers it (and everything before it).
                if boundary && handback.load(Ordering::Relaxed) {
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            });
            executor.execute(&spec, resume, stop, help, sink)
        });

        let mut pending: VecDeque<pb::ReportRequest> = VecDeque::new();
        let mut next_seq = self.run.resume_seq + 1;
        let mut failure: Option<SendError> = None;
        loop {
            let Some(first) = rx.recv().await else { break };
            let mut bodies = vec![first];
            while let Ok(b) = rx.try_recv() {
                bodies.push(b);
            }
            for body in bodies {
                pending.push_back(pb::ReportRequest {
                    worker_id: self.worker_id.clone(),
                    run_id: run_id.clone(),
                    epoch: self.run.epoch,
                    seq: next_seq,
                    body: Some(body),
                });
                next_seq += 1;
            }
            if let Err(e) = self.flush(&mut pending, &mut backoff).await {
                failure = Some(e);
                break;
            }
        }
        if let Some(f) = failure {
            self.stop.store(true, Ordering::Relaxed);
            drop(rx);
            let _ = compute.await;
            return match f {
                SendError::Lost(m) => {
                    tracing::warn!(run_id = %run_id, reason = %m, "lease lost; run dropped");
                    RunEnd::Lost
                }
                SendError::Stopped => RunEnd::Stopped,
                SendError::Rejected(m) => {
                    tracing::error!(run_id = %run_id, error = %m, "coordinator rejected a report");
                    let req = self.finish_request(0, pb::RunOutcome::Failed, format!("report rejected: {m}"), None);
                    self.finish(req, &mut backoff).await
                }
            };
        }
        let last_seq = next_seq - 1;
        let req = match compute.await {
            Ok(Ok(fin)) => {
                let outcome = if fin.diverged { pb::RunOutcome::Diverged } else { pb::RunOutcome::Completed };
                tracing::info!(run_id = %run_id, test_accuracy = fin.test_accuracy, diverged = fin.diverged, "run computed");
                self.finish_request(last_seq, outcome, String::new(), Some(crate::convert::final_to_wire(&fin)))
            }
            Ok(Err(RunError::Stopped)) => {
                return if self.lost.load(Ordering::Relaxed) { RunEnd::Lost } else { RunEnd::Stopped };
            }
            Ok(Err(e)) => self.finish_request(last_seq, pb::RunOutcome::Failed, e.to_string(), None),
            Err(e) => self.finish_request(last_seq, pb::RunOutcome::Failed, format!("compute panicked: {e}"), None),
        };
        self.finish(req, &mut backoff).await
    }
}
