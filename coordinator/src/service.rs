//! gRPC handlers: validate, call the [`Coordinator`], map the error. No
//! state lives here.

use std::pin::Pin;
use std::time::Duration;

use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_server::ControlService;
use gradsweep_proto::v1::worker_service_server::WorkerService;
use gradsweep_shared::results::SweepSummary;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::CoordinatorError;
use crate::state::Coordinator;

/// Longest an `Acquire` call is held open.
const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(20);

/// The worker-facing service.
#[derive(Clone)]
pub struct WorkerApi {
    /// Shared state.
    pub state: Coordinator,
}

/// The user-facing service.
#[derive(Clone)]
pub struct ControlApi {
    /// Shared state.
    pub state: Coordinator,
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        if r.protocol_version != gradsweep_proto::PROTOCOL_VERSION {
            tracing::warn!(worker = %r.name, version = r.protocol_version, "worker refused: protocol mismatch");
            return Err(CoordinatorError::ProtocolMismatch {
                worker: r.protocol_version,
                coordinator: gradsweep_proto::PROTOCOL_VERSION,
            }
            .into());
        }
        let slots = r.slots.max(1);
        let id = self.state.with_store(move |s| s.register_worker(&r.name, &r.hostname, slots, r.pid)).await?;
        let cfg = self.state.config();
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            lease_ttl_ms: cfg.lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let runs = convert::leases_from_wire(&r.runs);
        let answer = self.state.with_store(move |s| s.heartbeat(&r.worker_id, &runs)).await?;
        Ok(Response::new(match answer {
            None => pb::HeartbeatResponse { lost: vec![], drain: false, unknown_worker: true },
            Some(a) => {
                pb::HeartbeatResponse { lost: convert::leases_to_wire(a.lost), drain: a.drain, unknown_worker: false }
            }
        }))
    }

    async fn acquire(&self, req: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        let r = req.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_ACQUIRE_WAIT);
        loop {
            let worker = r.worker_id.clone();
            if let Some(lease) = self.state.with_store(move |s| s.acquire(&worker)).await? {
                return Ok(Response::new(pb::AcquireResponse { run: Some(convert::lease_to_wire(lease)) }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::AcquireResponse { run: None }));
            }
            // Re-check at least every second: a run may be requeued by a
            // reaper tick that raced with this wait.
            self.state.wait_for_work((deadline - now).min(Duration::from_secs(1))).await;
        }
    }

    async fn report(&self, req: Request<Streaming<pb::ReportRequest>>) -> Result<Response<pb::ReportResponse>, Status> {
        let mut stream = req.into_inner();
        let mut applied = 0;
        while let Some(msg) = stream.next().await {
            let msg = msg?;
            let bytes = prost::Message::encoded_len(&msg) as u64;
            let report = convert::report_from_wire(msg)?;
            applied = self.state.with_store(move |s| s.apply_report(&report)).await?;
            let m = self.state.metrics();
            m.report_bytes.add(bytes);
            m.reports.inc();
        }
        Ok(Response::new(pb::ReportResponse { applied_seq: applied }))
    }

    async fn finish(&self, req: Request<pb::FinishRequest>) -> Result<Response<pb::FinishResponse>, Status> {
        let r = req.into_inner();
        let outcome = convert::outcome_from_wire(&r)?;
        let stale =
            self.state.with_store(move |s| s.finish(&r.worker_id, &r.run_id, r.epoch, r.last_seq, &outcome)).await?;
        // The cell's merge runs on the merger, not while this worker waits.
        if let Some((sweep_id, cell)) = stale {
            self.state.cell_changed(sweep_id, cell);
        }
        self.state.metrics().runs_finished.inc();
        Ok(Response::new(pb::FinishResponse {}))
    }

    type FetchCheckpointStream = CheckpointStream;

    async fn fetch_checkpoint(
        &self,
        req: Request<pb::FetchCheckpointRequest>,
    ) -> Result<Response<Self::FetchCheckpointStream>, Status> {
        let r = req.into_inner();
        let data = self.state.with_store(move |s| s.checkpoint_for_lease(&r.worker_id, &r.run_id, r.epoch)).await?;
        let chunks = convert::checkpoint_chunks(&data);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn release(&self, req: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let runs = convert::leases_from_wire(&r.runs);
        self.state.with_store(move |s| s.release(&r.worker_id, &runs, r.leaving, &r.reason)).await?;
        self.state.notify_work();
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}

type CheckpointStream = Pin<Box<dyn Stream<Item = Result<pb::CheckpointChunk, Status>> + Send>>;

type ResultsStream = Pin<Box<dyn Stream<Item = Result<pb::ResultsChunk, Status>> + Send>>;

type GradientsStream = Pin<Box<dyn Stream<Item = Result<pb::GradientsChunk, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for ControlApi {
    async fn submit(&self, req: Request<pb::SubmitRequest>) -> Result<Response<pb::SubmitResponse>, Status> {
        let r = req.into_inner();
        let limits = self.state.config().grid_limits;
        let file = if r.file_name.is_empty() { "<grid>".to_string() } else { r.file_name.clone() };
        let s = self.state.with_store(move |s| s.submit(&r.grid_toml, &file, r.force_new, limits)).await?;
        self.state.notify_work();
        Ok(Response::new(pb::SubmitResponse {
            sweep_id: s.sweep_id,
            existing: s.existing,
            cells: s.cells,
            runs: s.runs,
        }))
    }

    async fn list_sweeps(
        &self,
        _req: Request<pb::ListSweepsRequest>,
    ) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let rows = self.state.read_store(|s| s.sweeps()).await?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps: rows.iter().map(convert::sweep_to_wire).collect() }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::SweepStatus>, Status> {
        let id = req.into_inner().sweep_id;
        let row = self.state.read_store(move |s| s.sweep(&id)).await?;
        Ok(Response::new(convert::sweep_to_wire(&row)))
    }

    type ResultsStream = ResultsStream;

    async fn results(&self, req: Request<pb::ResultsRequest>) -> Result<Response<Self::ResultsStream>, Status> {
        let req = req.into_inner();
        let th = convert::thresholds_from_wire(&req)?;
        let id = req.sweep_id;
        let id2 = id.clone();
        let row = self.state.read_store(move |s| s.sweep(&id2)).await?;
        let cells = self.state.cell_results(id, th).await?;
        let summary = SweepSummary::new(row.id.clone(), row.name.clone(), row.total() as usize, &cells);
        let to_json = |v: serde_json::Result<String>| v.map_err(|e| Status::internal(e.to_string()));
        let mut items = Vec::with_capacity(cells.len() + 1);
        for c in &cells {
            items.push(
                to_json(serde_json::to_string(c))
                    .map(|j| pb::ResultsChunk { body: Some(pb::results_chunk::Body::CellJson(j)) }),
            );
        }
        items.push(
            to_json(serde_json::to_string(&summary))
                .map(|j| pb::ResultsChunk { body: Some(pb::results_chunk::Body::SummaryJson(j)) }),
        );
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    type ExportGradientsStream = GradientsStream;

    /// One probe at a time: read and decoded off the runtime, converted to
    /// NPY chunks, sent through a bounded channel (a slow client slows the
    /// reads instead of growing memory).
    async fn export_gradients(
        &self,
        req: Request<pb::ExportGradientsRequest>,
    ) -> Result<Response<Self::ExportGradientsStream>, Status> {
        let id = req.into_inner().sweep_id;
        let id2 = id.clone();
        self.state.read_store(move |s| s.sweep(&id2)).await?;
        let refs = self.state.read_store(move |s| s.saved_gradient_probes(&id)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            for r in refs {
                let (run_id, index) = (r.run_id.clone(), r.index);
                let blob = state.read_store(move |s| s.probe_blob(&run_id, index)).await;
                // Decoded and converted off the store's lock and off the runtime.
                let chunks = match blob {
                    Ok(b) => tokio::task::spawn_blocking(move || convert::saved_gradients_from_blob(&r, &b))
                        .await
                        .unwrap_or_else(|e| Err(CoordinatorError::Internal(format!("export task failed: {e}")))),
                    Err(e) => Err(e),
                };
                match chunks {
                    Ok(chunks) => {
                        for c in chunks {
                            if tx.send(Ok(c)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let id = req.into_inner().sweep_id;
        let n = self.state.with_store(move |s| s.cancel(&id)).await?;
        Ok(Response::new(pb::CancelResponse { runs_cancelled: n }))
    }

    async fn list_workers(
        &self,
        _req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let rows = self.state.read_store(|s| s.workers()).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers: rows.into_iter().map(convert::worker_to_wire).collect() }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let id = req.into_inner().worker_id;
        self.state.with_store(move |s| s.drain(&id)).await?;
        Ok(Response::new(pb::DrainResponse {}))
    }
}
