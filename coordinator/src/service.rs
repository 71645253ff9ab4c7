//! gRPC handlers: validate, call the [`Coordinator`], map the error. No
//! state lives here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_server::ControlService;
use gradsweep_proto::v1::worker_service_server::WorkerService;
use gradsweep_shared::results::SummaryBuilder;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::error::CoordinatorError;
use crate::metrics::Call;
use crate::shards::{PassOwner, ShardView};
use crate::state::{Coordinator, Read};

/// Longest an `Acquire` call is held open.
const MAX_ACQUIRE_WAIT: Duration = Duration::from_secs(20);

/// Longest a `TakeShard` call waits for a result.
const MAX_TAKE_WAIT: Duration = Duration::from_secs(5);

/// Largest probe pass or shard result accepted (an exact covariance at the
/// largest d it is offered for is 128 MiB).
const MAX_SHARD_BYTES: usize = 1 << 30;

/// What an `Acquire` found in the store.
enum Found {
    /// A granted run (boxed: a lease carries its whole spec).
    Run(Box<crate::store::Lease>),
    /// No run queued; whether this worker takes work (then a shard may do).
    Nothing { takes_work: bool },
}

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
        let _timed = self.state.metrics().time(Call::Register);
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
        let trainers = convert::trainers_from_wire(&r.trainers)?;
        let id =
            self.state.with_store(move |s| s.register_worker(&r.name, &r.hostname, slots, r.pid, &trainers)).await?;
        let cfg = self.state.config();
        Ok(Response::new(pb::RegisterResponse {
            worker_id: id,
            lease_ttl_ms: cfg.lease_ttl.as_millis() as u64,
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
        }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let _timed = self.state.metrics().time(Call::Heartbeat);
        let r = req.into_inner();
        let runs = convert::leases_from_wire(&r.runs);
        let shards = convert::shard_leases_from_wire(&r.shards);
        let answer = self.state.heartbeat(r.worker_id.clone(), runs).await?;
        let now = std::time::Instant::now();
        let lost_shards = if shards.is_empty() {
            vec![]
        } else {
            convert::shard_leases_to_wire(self.state.with_board(|b| Ok(b.heartbeat(&r.worker_id, &shards, now)))?)
        };
        Ok(Response::new(match answer {
            None => pb::HeartbeatResponse { lost: vec![], drain: false, unknown_worker: true, lost_shards },
            Some(a) => pb::HeartbeatResponse {
                lost: convert::leases_to_wire(a.lost),
                drain: a.drain,
                unknown_worker: false,
                lost_shards,
            },
        }))
    }

    async fn acquire(&self, req: Request<pb::AcquireRequest>) -> Result<Response<pb::AcquireResponse>, Status> {
        let _timed = self.state.metrics().time(Call::Acquire);
        let r = req.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_ACQUIRE_WAIT);
        loop {
            let worker = r.worker_id.clone();
            // Whether this worker takes work is asked only when a shard
            // is free for it: an idle worker's polls cost one query.
            let shard_free = self.state.with_board(|b| Ok(b.has_free(&worker)))?;
            let found = self
                .state
                .with_store(move |s| {
                    Ok(match s.acquire(&worker)? {
                        Some(lease) => Found::Run(Box::new(lease)),
                        None => Found::Nothing { takes_work: shard_free && s.takes_work(&worker)? },
                    })
                })
                .await?;
            match found {
                Found::Run(lease) => {
                    // Durable now (the batch committed).
                    tracing::info!(
                        run_id = %lease.run_id,
                        epoch = lease.epoch,
                        worker_id = %r.worker_id,
                        resume_seq = lease.resume_seq,
                        "run leased"
                    );
                    return Ok(Response::new(pb::AcquireResponse {
                        run: Some(convert::lease_to_wire(*lease)),
                        shard: None,
                    }));
                }
                // No run waits: an idle worker helps with another's probe.
                Found::Nothing { takes_work: true } => {
                    let now = std::time::Instant::now();
                    if let Some(g) = self.state.with_board(|b| Ok(b.grant(&r.worker_id, now)))? {
                        tracing::info!(worker_id = %r.worker_id, run_id = %g.run_id, pass_id = g.lease.pass_id, shard = g.lease.shard, epoch = g.lease.epoch, "probe shard leased");
                        self.state.metrics().shards_granted.inc();
                        return Ok(Response::new(pb::AcquireResponse {
                            run: None,
                            shard: Some(convert::shard_grant_to_wire(g)),
                        }));
                    }
                }
                Found::Nothing { takes_work: false } => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Response::new(pb::AcquireResponse { run: None, shard: None }));
            }
            // Re-check at least every second: a run may be requeued by a
            // reaper tick that raced with this wait.
            self.state.wait_for_work((deadline - now).min(Duration::from_secs(1))).await;
        }
    }

    async fn report(&self, req: Request<Streaming<pb::ReportRequest>>) -> Result<Response<pb::ReportResponse>, Status> {
        let _timed = self.state.metrics().time(Call::Report);
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
        let _timed = self.state.metrics().time(Call::Finish);
        let r = req.into_inner();
        let outcome = convert::outcome_from_wire(&r)?;
        let (worker_id, run_id, epoch) = (r.worker_id.clone(), r.run_id.clone(), r.epoch);
        let finished =
            self.state.with_store(move |s| s.finish(&r.worker_id, &r.run_id, r.epoch, r.last_seq, &outcome)).await?;
        // Durable now: told once, and never for a repeat.
        if let Some(state) = finished.ended {
            tracing::info!(run_id, epoch, worker_id, state = %state, "run finished");
        }
        // The cell's merge runs on the merger, not while this worker waits.
        if let Some((sweep_id, cell)) = finished.cell_done {
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
        let _timed = self.state.metrics().time(Call::Release);
        let r = req.into_inner();
        let runs = convert::leases_from_wire(&r.runs);
        let shards = convert::shard_leases_from_wire(&r.shards);
        if !shards.is_empty() {
            let freed = self.state.with_board(|b| Ok(b.release(&r.worker_id, &shards)))?;
            tracing::info!(worker_id = %r.worker_id, shards = freed, reason = %r.reason, "probe shards handed back");
            self.state.notify_shards();
        }
        self.state.with_store(move |s| s.release(&r.worker_id, &runs, r.leaving, &r.reason)).await?;
        self.state.notify_work();
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn publish_pass(
        &self,
        req: Request<Streaming<pb::PassChunk>>,
    ) -> Result<Response<pb::PublishPassResponse>, Status> {
        let ((owner, count), blob) = gather(req.into_inner(), "probe pass", |c: &pb::PassChunk| {
            let owner = PassOwner { worker_id: c.worker_id.clone(), run_id: c.run_id.clone(), epoch: c.epoch };
            Ok(((owner, c.shards), (c.chunk_index, c.chunk_count)))
        })
        .await?;
        if count < 2 {
            return Err(Status::invalid_argument(format!("a probe pass of {count} shards has nothing to share")));
        }
        let o = owner.clone();
        let (sweep_id, spec) = self.state.with_store(move |s| s.pass_source(&o)).await?;
        let (run_id, bytes) = (owner.run_id.clone(), blob.len());
        let id = self.state.with_board(|b| Ok(b.publish(owner, sweep_id, spec.into(), blob, count)))?;
        tracing::info!(run_id = %run_id, pass_id = id, shards = count, bytes, "probe pass published");
        self.state.notify_work();
        Ok(Response::new(pb::PublishPassResponse { pass_id: id }))
    }

    async fn claim_shard(
        &self,
        req: Request<pb::ClaimShardRequest>,
    ) -> Result<Response<pb::ClaimShardResponse>, Status> {
        let (id, owner) = convert::pass_ref_from_wire(req.into_inner().pass)?;
        let shard = self.state.with_board(|b| b.claim(id, &owner))?;
        Ok(Response::new(pb::ClaimShardResponse { shard }))
    }

    type TakeShardStream = TakeShardStream;

    async fn take_shard(&self, req: Request<pb::TakeShardRequest>) -> Result<Response<Self::TakeShardStream>, Status> {
        let r = req.into_inner();
        let (id, owner) = convert::pass_ref_from_wire(r.pass)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.wait_ms as u64).min(MAX_TAKE_WAIT);
        let view = loop {
            let view = self.state.with_board(|b| b.take(id, &owner, r.shard))?;
            let now = tokio::time::Instant::now();
            if view != ShardView::Pending || now >= deadline {
                break view;
            }
            self.state.wait_for_shards((deadline - now).min(Duration::from_secs(1))).await;
        };
        let chunks = convert::shard_view_to_wire(view);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn close_pass(&self, req: Request<pb::ClosePassRequest>) -> Result<Response<pb::ClosePassResponse>, Status> {
        let (id, owner) = convert::pass_ref_from_wire(req.into_inner().pass)?;
        self.state.with_board(|b| b.close(id, &owner))?;
        Ok(Response::new(pb::ClosePassResponse {}))
    }

    type FetchPassStream = CheckpointStream;

    async fn fetch_pass(&self, req: Request<pb::FetchPassRequest>) -> Result<Response<Self::FetchPassStream>, Status> {
        let r = req.into_inner();
        let lease = convert::shard_lease_required(r.lease.as_ref())?;
        let blob = self.state.with_board(|b| b.pass_blob(&r.worker_id, lease))?;
        let chunks = convert::checkpoint_chunks(&blob);
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn submit_shard(
        &self,
        req: Request<Streaming<pb::ShardResultChunk>>,
    ) -> Result<Response<pb::SubmitShardResponse>, Status> {
        let ((worker, lease), data) = gather(req.into_inner(), "probe shard result", |c: &pb::ShardResultChunk| {
            let lease = convert::shard_lease_required(c.lease.as_ref())?;
            Ok(((c.worker_id.clone(), lease), (c.chunk_index, c.chunk_count)))
        })
        .await?;
        let bytes = data.len();
        self.state.with_board(|b| b.submit(&worker, lease, data))?;
        tracing::info!(worker_id = %worker, pass_id = lease.pass_id, shard = lease.shard, epoch = lease.epoch, bytes, "probe shard computed");
        let m = self.state.metrics();
        m.shards_submitted.inc();
        m.report_bytes.add(bytes as u64);
        self.state.notify_shards();
        Ok(Response::new(pb::SubmitShardResponse {}))
    }
}

/// Collects a blob streamed in chunks: `head` reads each chunk's header
/// (who sends it) and its (index, count); the first chunk's header is kept.
async fn gather<M, H>(
    mut stream: Streaming<M>,
    what: &'static str,
    head: impl Fn(&M) -> crate::error::Result<(H, (u32, u32))>,
) -> Result<(H, Vec<u8>), Status>
where
    M: ChunkData,
{
    let bad = crate::error::CoordinatorError::from;
    let mut blob = gradsweep_proto::Assembly::new(what, MAX_SHARD_BYTES);
    let mut first = None;
    while let Some(c) = stream.next().await {
        let c = c?;
        let (h, (index, count)) = head(&c)?;
        blob.push(index, count, c.data()).map_err(bad)?;
        first.get_or_insert(h);
    }
    let first = first.ok_or_else(|| Status::invalid_argument(format!("{what} without chunks")))?;
    Ok((first, blob.finish().map_err(bad)?))
}

/// A streamed chunk's payload.
trait ChunkData {
    fn data(&self) -> &[u8];
}

impl ChunkData for pb::PassChunk {
    fn data(&self) -> &[u8] {
        &self.data
    }
}

impl ChunkData for pb::ShardResultChunk {
    fn data(&self) -> &[u8] {
        &self.data
    }
}

type TakeShardStream = Pin<Box<dyn Stream<Item = Result<pb::TakeShardChunk, Status>> + Send>>;

type CheckpointStream = Pin<Box<dyn Stream<Item = Result<pb::CheckpointChunk, Status>> + Send>>;

/// Cells the `Results` call reads, merges and sends at a time.
pub const RESULTS_PAGE_CELLS: u32 = 256;

type ResultsStream = Pin<Box<dyn Stream<Item = Result<pb::ResultsChunk, Status>> + Send>>;

type GradientsStream = Pin<Box<dyn Stream<Item = Result<pb::GradientsChunk, Status>> + Send>>;

type RunsStream = Pin<Box<dyn Stream<Item = Result<pb::RunsPage, Status>> + Send>>;

type SpectraStream = Pin<Box<dyn Stream<Item = Result<pb::SpectraChunk, Status>> + Send>>;

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
        let sweeps = self.state.read_store(Read::Quick, |s| convert::all_sweep_statuses(s)).await?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps }))
    }

    async fn status(&self, req: Request<pb::StatusRequest>) -> Result<Response<pb::SweepStatus>, Status> {
        let id = req.into_inner().sweep_id;
        let status = self.state.read_store(Read::Quick, move |s| convert::sweep_status(s, &id)).await?;
        Ok(Response::new(status))
    }

    type ResultsStream = ResultsStream;

    async fn results(&self, req: Request<pb::ResultsRequest>) -> Result<Response<Self::ResultsStream>, Status> {
        let req = req.into_inner();
        let th = convert::thresholds_from_wire(&req)?;
        let id = req.sweep_id;
        let id2 = id.clone();
        let (row, plan) = self.state.read_store(Read::Bulk, move |s| Ok((s.sweep(&id2)?, s.plan(&id2)?))).await?;
        let plan = Arc::new(plan);
        // A page of cells at a time: read, merged where stale, sent, and
        // kept only as the summary needs it, so a sweep of any size streams
        // in bounded memory (the channel holds a few messages; a slow
        // client slows the reads).
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let state = self.state.clone();
        tokio::spawn(async move {
            // The η/b rows are left to the client, which has the cells.
            let mut summary = SummaryBuilder::without_rows(row.id.clone(), row.name.clone(), row.total() as usize);
            for start in (0..row.cells).step_by(RESULTS_PAGE_CELLS as usize) {
                let end = start.saturating_add(RESULTS_PAGE_CELLS).min(row.cells);
                let page = match state.cell_results_in(plan.clone(), id.clone(), th.clone(), false, start..end).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                for (c, _) in page {
                    summary.add(&c);
                    let chunk =
                        pb::ResultsChunk { body: Some(pb::results_chunk::Body::Cell(convert::cell_to_wire(c))) };
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
            }
            let last = convert::sweep_summary_to_wire(summary.finish());
            let _ = tx.send(Ok(pb::ResultsChunk { body: Some(pb::results_chunk::Body::Summary(last)) })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ExportSpectraStream = SpectraStream;

    /// Every cell's spectra, merged where the stored merge did not keep
    /// them (as for results with thresholds), encoded and chunked.
    async fn export_spectra(
        &self,
        req: Request<pb::ExportSpectraRequest>,
    ) -> Result<Response<Self::ExportSpectraStream>, Status> {
        let id = req.into_inner().sweep_id;
        let cells =
            self.state.cell_results_keeping(id, gradsweep_shared::stats::RankThresholds::default(), true).await?;
        let chunks: Vec<Result<pb::SpectraChunk, Status>> = cells
            .iter()
            .filter_map(|(c, sp)| sp.as_ref().map(|sp| convert::spectra_to_wire(c.index, sp)))
            .flatten()
            .map(Ok)
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
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
        self.state.read_store(Read::Quick, move |s| s.sweep(&id2)).await?;
        let refs = self.state.read_store(Read::Bulk, move |s| s.saved_gradient_probes(&id)).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            for r in refs {
                let (run_id, index) = (r.run_id.clone(), r.index);
                let blob = state.read_store(Read::Bulk, move |s| s.probe_blob(&run_id, index)).await;
                // Decoded and converted off the store's connections and off the runtime.
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

    type ListRunsStream = RunsStream;

    /// A page of runs at a time, read on a reader connection and sent
    /// through a bounded channel: a sweep of a million runs streams without
    /// being held in memory, and a slow client slows the reads.
    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<Self::ListRunsStream>, Status> {
        let req = req.into_inner();
        let states = convert::run_states_from_wire(&req.states)?;
        let with_epochs = req.with_epochs;
        let id = req.sweep_id;
        let id2 = id.clone();
        let plan = Arc::new(self.state.read_store(Read::Bulk, move |s| s.plan(&id2)).await?);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut cursor = Some(convert::RunsCursor::new(id, states, plan, with_epochs));
            let mut first = true;
            while let Some(mut c) = cursor.take() {
                let read = state.read_store(Read::Bulk, move |s| Ok((c.next_page(s), c))).await;
                let runs = match read {
                    Ok((None, _)) => return,
                    Ok((Some(Ok(runs)), c)) => {
                        cursor = Some(c);
                        runs
                    }
                    Ok((Some(Err(e)), _)) | Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                // The first page, even empty, names the axes.
                if !runs.is_empty() || first {
                    let axes = match (first, &cursor) {
                        (true, Some(c)) => c.axes().to_vec(),
                        _ => vec![],
                    };
                    if tx.send(Ok(pb::RunsPage { axes, runs })).await.is_err() {
                        return;
                    }
                }
                first = false;
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
        let rows = self.state.read_store(Read::Quick, |s| s.workers()).await?;
        Ok(Response::new(pb::ListWorkersResponse { workers: rows.into_iter().map(convert::worker_to_wire).collect() }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainResponse>, Status> {
        let id = req.into_inner().worker_id;
        self.state.with_store(move |s| s.drain(&id)).await?;
        Ok(Response::new(pb::DrainResponse {}))
    }
}
