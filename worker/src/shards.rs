//! Probe shards across workers: this worker's runs offer their probe passes
//! to idle workers ([`RemoteExchange`]), and this worker, when idle,
//! computes shards of other workers' runs ([`ShardJob`]).
//!
//! The run's worker publishes each pass of more than one shard through the
//! coordinator, claims shards for its own threads, and takes the others'
//! results in shard order (`gradsweep_shared::shards::fold_claimed`); when
//! the coordinator cannot be reached or forgot the pass, it computes every
//! remaining shard itself. A helper computes exactly the shard the run's
//! worker would have ([`gradsweep_shared::run::compute_shard`]) and sends
//! its encoded result; a helper whose shard lease is lost stops and sends
//! nothing.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gradsweep_proto::transport::AuthChannel;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_shared::data::Dataset;
use gradsweep_shared::run::{RunError, compute_shard, load_train};
use gradsweep_shared::shards::{OpenPass, ShardExchange, Taken};
use gradsweep_shared::spec::RunSpec;
use tonic::Code;

use crate::config::{Backoff, WorkerConfig};
use crate::metrics::WorkerMetrics;
use crate::runner::RunEnd;

/// Longest wait for a quick call (publish, claim, close) of a pass.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The training set last used by a shard, kept for the next one (a helper
/// usually computes several shards of one run in a row).
#[derive(Debug, Default)]
pub struct TrainCache(Mutex<Option<(String, Arc<Dataset>)>>);

impl TrainCache {
    /// The training set of `spec`'s run, loaded unless the last one is it.
    pub fn get(&self, spec: &RunSpec) -> Result<Arc<Dataset>, RunError> {
        let key = serde_json::to_string(&(&spec.train.model, &spec.train.dataset, spec.train.data_options()))
            .unwrap_or_default();
        if let Ok(g) = self.0.lock()
            && let Some((k, d)) = g.as_ref()
            && *k == key
        {
            return Ok(d.clone());
        }
        let d = Arc::new(load_train(spec)?);
        if let Ok(mut g) = self.0.lock() {
            *g = Some((key, d.clone()));
        }
        Ok(d)
    }
}

/// Whether a refusal means the shard or pass is gone (drop it), as opposed
/// to a transient failure (retry).
fn gone(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument)
}

/// One shard of another worker's probe, granted to this worker.
pub struct ShardJob {
    /// Settings (backoff).
    pub cfg: WorkerConfig,
    /// Client (a lazily reconnecting channel).
    pub client: WorkerServiceClient<AuthChannel>,
    /// This worker's id.
    pub worker_id: String,
    /// The grant.
    pub assignment: pb::ShardAssignment,
    /// Raised to stop (lease lost, shutdown).
    pub stop: Arc<AtomicBool>,
    /// Where computed and lost shards are counted.
    pub metrics: Arc<WorkerMetrics>,
    /// The last training set used.
    pub cache: Arc<TrainCache>,
}

impl ShardJob {
    /// Retries `call` on transient failures until it succeeds, the shard is
    /// gone, or the job is stopped.
    async fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, RunEnd>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut backoff = Backoff::new(&self.cfg);
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(RunEnd::Stopped);
            }
            match call().await {
                Ok(v) => return Ok(v),
                Err(s) if gone(&s) => {
                    tracing::info!(error = %s.message(), "{what}: probe shard gone; dropped");
                    return Err(RunEnd::Lost);
                }
                Err(s) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(code = ?s.code(), error = %s.message(), retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Fetches the pass, computes the shard off the runtime, sends its
    /// result.
    pub async fn execute(self) -> RunEnd {
        let end = self.compute().await;
        match end {
            RunEnd::Finished => self.metrics.probe_shards_computed.inc(),
            RunEnd::Lost => self.metrics.probe_shards_lost.inc(),
            RunEnd::Stopped | RunEnd::Refused => {}
        }
        end
    }

    async fn compute(&self) -> RunEnd {
        let Some(lease) = self.assignment.lease else { return RunEnd::Lost };
        let spec: RunSpec = match crate::convert::assigned_spec(self.assignment.spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(run_id = %self.assignment.run_id, error = %e, "unreadable run spec; shard dropped");
                return RunEnd::Lost;
            }
        };
        let started = std::time::Instant::now();
        let req = pb::FetchPassRequest { worker_id: self.worker_id.clone(), lease: Some(lease) };
        let pass = self
            .retry("fetching the probe pass", || {
                let (mut c, req) = (self.client.clone(), req.clone());
                async move {
                    let mut stream = c.fetch_pass(req).await?.into_inner();
                    let mut data = vec![];
                    while let Some(chunk) = stream.message().await? {
                        data.extend_from_slice(&chunk.data);
                    }
                    Ok(data)
                }
            })
            .await;
        let pass = match pass {
            Ok(p) => p,
            Err(end) => return end,
        };
        tracing::info!(run_id = %self.assignment.run_id, pass_id = lease.pass_id, shard = lease.shard, epoch = lease.epoch, "computing a probe shard for another worker");
        let (stop, cache) = (self.stop.clone(), self.cache.clone());
        let k = lease.shard as usize;
        let out = tokio::task::spawn_blocking(move || {
            let train = cache.get(&spec)?;
            compute_shard(&spec, &train, &pass, k, &stop)
        })
        .await;
        let data = match out {
            Ok(Ok(d)) => d,
            Ok(Err(RunError::Stopped)) => {
                return if self.stop.load(Ordering::Relaxed) { RunEnd::Stopped } else { RunEnd::Lost };
            }
            Ok(Err(e)) => {
                tracing::error!(run_id = %self.assignment.run_id, shard = lease.shard, error = %e, "cannot compute the probe shard; dropped (its run's worker computes it)");
                return RunEnd::Lost;
            }
            Err(e) => {
                tracing::error!(error = %e, "probe shard task failed");
                return RunEnd::Lost;
            }
        };
        let parts = gradsweep_proto::chunk_slices(&data);
        let count = parts.len() as u32;
        let chunks: Vec<pb::ShardResultChunk> = parts
            .into_iter()
            .enumerate()
            .map(|(i, d)| pb::ShardResultChunk {
                worker_id: self.worker_id.clone(),
                lease: Some(lease),
                chunk_index: i as u32,
                chunk_count: count,
                data: d.to_vec(),
            })
            .collect();
        let sent = self
            .retry("sending the probe shard", || {
                let (mut c, chunks) = (self.client.clone(), chunks.clone());
                async move { c.submit_shard(tokio_stream::iter(chunks)).await }
            })
            .await;
        match sent {
            Ok(_) => {
                tracing::info!(run_id = %self.assignment.run_id, pass_id = lease.pass_id, shard = lease.shard, bytes = data.len(), seconds = started.elapsed().as_secs_f64(), "probe shard computed for another worker");
                RunEnd::Finished
            }
            Err(end) => end,
        }
    }
}

/// Offers a run's probe passes to idle workers through the coordinator,
/// under the run's lease.
pub struct RemoteExchange {
    /// Client (a lazily reconnecting channel).
    pub client: WorkerServiceClient<AuthChannel>,
    /// This worker's id.
    pub worker_id: String,
    /// The run.
    pub run_id: String,
    /// Its lease's epoch.
    pub epoch: u64,
    /// The runtime the calls run on (the probe's threads block on them).
    pub handle: tokio::runtime::Handle,
    /// Where published passes are counted.
    pub metrics: Arc<WorkerMetrics>,
}

impl RemoteExchange {
    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, tonic::Status>>,
        limit: Duration,
    ) -> Result<T, tonic::Status> {
        self.handle.block_on(async {
            tokio::time::timeout(limit, f).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer")))
        })
    }
}

impl ShardExchange for RemoteExchange {
    fn open(&self, pass: &[u8], count: usize) -> Option<Box<dyn OpenPass + '_>> {
        let parts = gradsweep_proto::chunk_slices(pass);
        let n = parts.len() as u32;
        let chunks: Vec<pb::PassChunk> = parts
            .into_iter()
            .enumerate()
            .map(|(i, d)| pb::PassChunk {
                worker_id: self.worker_id.clone(),
                run_id: self.run_id.clone(),
                epoch: self.epoch,
                shards: count as u32,
                chunk_index: i as u32,
                chunk_count: n,
                data: d.to_vec(),
            })
            .collect();
        let mut c = self.client.clone();
        match self.call(async move { c.publish_pass(tokio_stream::iter(chunks)).await }, CALL_TIMEOUT) {
            Ok(r) => {
                let pass_id = r.into_inner().pass_id;
                self.metrics.probe_passes_published.inc();
                tracing::debug!(run_id = %self.run_id, pass_id, shards = count, "probe pass offered to other workers");
                Some(Box::new(RemotePass {
                    exchange: self,
                    pass: pb::PassRef {
                        worker_id: self.worker_id.clone(),
                        run_id: self.run_id.clone(),
                        epoch: self.epoch,
                        pass_id,
                    },
                    count,
                    broken: AtomicBool::new(false),
                    here: Mutex::new(BTreeSet::new()),
                }))
            }
            Err(s) => {
                tracing::warn!(run_id = %self.run_id, code = ?s.code(), error = %s.message(), "cannot offer the probe pass; computing every shard here");
                None
            }
        }
    }
}

/// A published pass. Once a call fails, the pass is given up on: every
/// shard not taken yet is computed here.
struct RemotePass<'a> {
    exchange: &'a RemoteExchange,
    pass: pb::PassRef,
    count: usize,
    broken: AtomicBool,
    /// Shards this worker holds.
    here: Mutex<BTreeSet<usize>>,
}

impl RemotePass<'_> {
    fn hold(&self, k: usize) -> bool {
        self.here.lock().map(|mut h| h.insert(k)).unwrap_or(false)
    }

    fn give_up(&self, s: &tonic::Status) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            tracing::warn!(run_id = %self.pass.run_id, pass_id = self.pass.pass_id, code = ?s.code(), error = %s.message(), "probe pass lost; computing the remaining shards here");
        }
    }

    /// Without the coordinator: the lowest shard not held here.
    fn claim_here(&self) -> Option<usize> {
        let mut h = self.here.lock().ok()?;
        let k = (0..self.count).find(|k| !h.contains(k))?;
        h.insert(k);
        Some(k)
    }
}

impl OpenPass for RemotePass<'_> {
    fn claim(&self) -> Option<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return self.claim_here();
        }
        let mut c = self.exchange.client.clone();
        let req = pb::ClaimShardRequest { pass: Some(self.pass.clone()) };
        match self.exchange.call(async move { c.claim_shard(req).await }, CALL_TIMEOUT) {
            Ok(r) => r.into_inner().shard.map(|k| {
                self.hold(k as usize);
                k as usize
            }),
            Err(s) => {
                self.give_up(&s);
                self.claim_here()
            }
        }
    }

    fn take(&self, k: usize, wait: Duration) -> Taken<Vec<u8>> {
        if !self.broken.load(Ordering::Relaxed) {
            let mut c = self.exchange.client.clone();
            let req = pb::TakeShardRequest {
                pass: Some(self.pass.clone()),
                shard: k as u32,
                wait_ms: wait.as_millis() as u32,
            };
            let answer = self.exchange.call(
                async move {
                    let mut stream = c.take_shard(req).await?.into_inner();
                    let lost = |e: gradsweep_proto::AssemblyError| tonic::Status::data_loss(e.0);
                    let mut state = pb::ShardState::Unspecified;
                    let mut blob = gradsweep_proto::Assembly::new(format!("probe shard {k}'s result"), usize::MAX);
                    while let Some(chunk) = stream.message().await? {
                        state = chunk.state();
                        // Only a computed shard's answer carries chunks.
                        if state == pb::ShardState::Done {
                            blob.push(chunk.chunk_index, chunk.chunk_count, &chunk.data).map_err(lost)?;
                        }
                    }
                    let data = if state == pb::ShardState::Done { blob.finish().map_err(lost)? } else { vec![] };
                    Ok((state, data))
                },
                wait + CALL_TIMEOUT,
            );
            match answer {
                Ok((pb::ShardState::Done, data)) => return Taken::Done(data),
                Ok((pb::ShardState::Pending, _)) => return Taken::Pending,
                Ok((pb::ShardState::Claimed, _)) => return Taken::Local,
                Ok((pb::ShardState::Compute, _)) => {
                    self.hold(k);
                    return Taken::Compute;
                }
                Ok((pb::ShardState::Unspecified, _)) => self.give_up(&tonic::Status::internal("shard state missing")),
                Err(s) => self.give_up(&s),
            }
        }
        if self.hold(k) { Taken::Compute } else { Taken::Local }
    }
}

impl Drop for RemotePass<'_> {
    fn drop(&mut self) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let mut c = self.exchange.client.clone();
        let req = pb::ClosePassRequest { pass: Some(self.pass.clone()) };
        if let Err(s) = self.exchange.call(async move { c.close_pass(req).await }, Duration::from_secs(5)) {
            tracing::debug!(pass_id = self.pass.pass_id, error = %s.message(), "closing the probe pass failed (it ends with the run lease)");
        }
    }
}
