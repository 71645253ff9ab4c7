//! The worker's lifecycle: register, heartbeat, acquire, drain, shut down.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gradsweep_proto::transport::AuthChannel;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_proto::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tonic::Code;

use crate::config::{Backoff, WorkerConfig};
use crate::metrics::WorkerMetrics;
use crate::runner::{RunContext, RunEnd};
use crate::shards::{ShardJob, TrainCache};
use crate::slots::Slots;

/// Errors that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The address, TLS or token settings are unusable.
    #[error(transparent)]
    Transport(#[from] gradsweep_proto::transport::TransportError),
    /// The coordinator refused this worker for good (e.g. protocol version).
    #[error("coordinator refused registration: {0}")]
    Refused(String),
}

/// Why the worker should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Keep going.
    None,
    /// Stop now: stop runs, hand leases back (SIGTERM / SIGINT).
    Terminate,
}

struct ActiveRun {
    epoch: u64,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    handback: Arc<AtomicBool>,
}

/// A shard of another worker's probe being computed here.
struct ActiveShard {
    lease: pb::ShardLease,
    stop: Arc<AtomicBool>,
}

struct Shared {
    cfg: WorkerConfig,
    client: WorkerServiceClient<AuthChannel>,
    worker_id: Mutex<String>,
    runs: Mutex<HashMap<String, ActiveRun>>,
    /// Other workers' probe shards computed here, by (pass, shard).
    shards: Mutex<HashMap<(u64, u32), ActiveShard>>,
    /// The training set the last shard used.
    train_cache: Arc<TrainCache>,
    draining: AtomicBool,
    drain_requested: Notify,
    heartbeat_ms: AtomicU64,
}

impl Shared {
    fn worker_id(&self) -> String {
        self.worker_id.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn leases(&self) -> Vec<pb::RunLease> {
        self.runs
            .lock()
            .map(|m| m.iter().map(|(id, r)| pb::RunLease { run_id: id.clone(), epoch: r.epoch }).collect())
            .unwrap_or_default()
    }

    fn shard_leases(&self) -> Vec<pb::ShardLease> {
        self.shards.lock().map(|m| m.values().map(|a| a.lease).collect()).unwrap_or_default()
    }

    /// Stops every shard computed here (they have no checkpoint to wait for).
    fn stop_shards(&self) {
        if let Ok(m) = self.shards.lock() {
            m.values().for_each(|a| a.stop.store(true, Ordering::Relaxed));
        }
    }

    /// Registers, retrying transient failures until `shutdown` says stop.
    async fn register(&self, shutdown: &mut watch::Receiver<Shutdown>) -> Result<Option<String>, WorkerError> {
        let mut backoff = Backoff::new(&self.cfg);
        let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        loop {
            let req = pb::RegisterRequest {
                protocol_version: PROTOCOL_VERSION,
                name: self.cfg.name.clone(),
                hostname: host.clone(),
                slots: self.cfg.slots,
                pid: std::process::id(),
                build_version: env!("CARGO_PKG_VERSION").to_string(),
                // Runs of these trainers only are leased to it.
                trainers: self.cfg.executor.trainers().iter().map(|t| t.name()).collect(),
            };
            match self.client.clone().register(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if let Ok(mut g) = self.worker_id.lock() {
                        g.clone_from(&r.worker_id);
                    }
                    self.heartbeat_ms.store(r.heartbeat_interval_ms.clamp(100, 60_000), Ordering::Relaxed);
                    tracing::info!(worker_id = %r.worker_id, slots = self.cfg.slots, coordinator = %self.cfg.coordinator, "registered");
                    return Ok(Some(r.worker_id));
                }
                Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::Unauthenticated) => {
                    return Err(WorkerError::Refused(s.message().to_string()));
                }
                Err(s) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(code = ?s.code(), error = %s.message(), retry_in_ms = delay.as_millis() as u64, "cannot register; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return Ok(None),
                    }
                }
            }
        }
    }
}

/// Connects lazily: the channel reconnects by itself when the coordinator
/// comes back. TLS and the token come from the config's security settings.
fn client(cfg: &WorkerConfig) -> Result<WorkerServiceClient<AuthChannel>, WorkerError> {
    let ep = cfg.security.endpoint(&cfg.coordinator)?.connect_timeout(Duration::from_secs(3));
    Ok(WorkerServiceClient::new(cfg.security.authorize(ep.connect_lazy()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Runs a worker until it is drained by the coordinator or `shutdown`
/// becomes [`Shutdown::Terminate`].
pub async fn run_worker(cfg: WorkerConfig, shutdown: watch::Receiver<Shutdown>) -> Result<(), WorkerError> {
    run_worker_with_metrics(cfg, None, shutdown).await
}

/// [`run_worker`], plus Prometheus metrics served on `metrics` when given.
pub async fn run_worker_with_metrics(
    cfg: WorkerConfig,
    metrics: Option<tokio::net::TcpListener>,
    mut shutdown: watch::Receiver<Shutdown>,
) -> Result<(), WorkerError> {
    let registry = Arc::new(WorkerMetrics::default());
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    let metrics_task = metrics.map(|l| {
        let (m, slots) = (registry.clone(), cfg.slots);
        let mut stopped = metrics_stopped.clone();
        tokio::spawn(gradsweep_proto::metrics::serve_metrics(
            l,
            move || {
                let m = m.clone();
                async move { m.render(slots) }
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ))
    });
    let result = work(cfg, registry, &mut shutdown).await;
    let _ = metrics_stop.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    result
}

async fn work(
    cfg: WorkerConfig,
    metrics: Arc<WorkerMetrics>,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> Result<(), WorkerError> {
    let shared = Arc::new(Shared {
        client: client(&cfg)?,
        cfg,
        worker_id: Mutex::new(String::new()),
        runs: Mutex::new(HashMap::new()),
        shards: Mutex::new(HashMap::new()),
        train_cache: Arc::new(TrainCache::default()),
        draining: AtomicBool::new(false),
        drain_requested: Notify::new(),
        heartbeat_ms: AtomicU64::new(1000),
    });
    let Some(_) = shared.register(shutdown).await? else { return Ok(()) };
    let (hb_stop_tx, hb_stop_rx) = watch::channel(false);
    let hb = tokio::spawn(heartbeat_loop(shared.clone(), hb_stop_rx));

    let lender = Arc::new(Slots::new(shared.cfg.slots as usize, metrics.clone()));
    let slots = lender.semaphore();
    let mut tasks: JoinSet<(String, u64, RunEnd)> = JoinSet::new();
    let mut backoff = Backoff::new(&shared.cfg);
    // Since when this worker has held no run (for --idle-exit-secs).
    let mut idle_since = Some(tokio::time::Instant::now());
    let terminated = loop {
        if let (Some(limit), Some(since)) = (shared.cfg.idle_exit, idle_since)
            && tasks.is_empty()
            && since.elapsed() >= limit
        {
            tracing::info!(idle_secs = since.elapsed().as_secs(), "idle for the configured time; leaving");
            break false;
        }
        if *shutdown.borrow() == Shutdown::Terminate {
            break true;
        }
        if shared.draining.load(Ordering::Relaxed) {
            break false;
        }
        // Reap finished runs.
        while let Some(done) = tasks.try_join_next() {
            log_end(done);
        }
        if tasks.is_empty() {
            idle_since.get_or_insert_with(tokio::time::Instant::now);
        }
        // A probe borrowing idle slots goes first.
        lender.wait_for_borrowers(Duration::from_secs(1)).await;
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break false },
            _ = shutdown.changed() => continue,
            _ = shared.drain_requested.notified() => continue,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => { log_end(done); continue; }
        };
        let req =
            pb::AcquireRequest { worker_id: shared.worker_id(), wait_ms: shared.cfg.acquire_wait.as_millis() as u32 };
        let mut c = shared.client.clone();
        let acquire = c.acquire(req);
        tokio::pin!(acquire);
        lender.set_polling(true);
        let answer = loop {
            tokio::select! {
                a = &mut acquire => break Some(a),
                _ = shutdown.changed() => break None,
                _ = shared.drain_requested.notified() => break None,
                // A running probe wants this slot for its shards: it is
                // idle while we wait for work, so let go of it.
                _ = lender.release_requested() => if lender.wanted() { break None },
            }
        };
        lender.set_polling(false);
        let Some(answer) = answer else { continue };
        match answer {
            Ok(r) => {
                backoff.reset();
                let r = r.into_inner();
                if let Some(assignment) = r.shard {
                    idle_since = None;
                    let Some(lease) = assignment.lease else { continue };
                    let stop = Arc::new(AtomicBool::new(false));
                    if let Ok(mut m) = shared.shards.lock() {
                        m.insert((lease.pass_id, lease.shard), ActiveShard { lease, stop: stop.clone() });
                    }
                    let job = ShardJob {
                        cfg: shared.cfg.clone(),
                        client: shared.client.clone(),
                        worker_id: shared.worker_id(),
                        assignment,
                        stop,
                        metrics: metrics.clone(),
                        cache: shared.train_cache.clone(),
                    };
                    let shared2 = shared.clone();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let what = format!("probe shard {} of pass {}", lease.shard, lease.pass_id);
                        let end = job.execute().await;
                        if end != RunEnd::Stopped
                            && let Ok(mut m) = shared2.shards.lock()
                        {
                            m.remove(&(lease.pass_id, lease.shard));
                        }
                        (what, lease.epoch, end)
                    });
                    continue;
                }
                let Some(run) = r.run else {
                    if tasks.is_empty() {
                        idle_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    continue;
                };
                idle_since = None;
                let stop = Arc::new(AtomicBool::new(false));
                let lost = Arc::new(AtomicBool::new(false));
                let handback = Arc::new(AtomicBool::new(false));
                if let Ok(mut m) = shared.runs.lock() {
                    m.insert(
                        run.run_id.clone(),
                        ActiveRun {
                            epoch: run.epoch,
                            stop: stop.clone(),
                            lost: lost.clone(),
                            handback: handback.clone(),
                        },
                    );
                }
                let ctx = RunContext {
                    cfg: shared.cfg.clone(),
                    client: shared.client.clone(),
                    worker_id: shared.worker_id(),
                    run,
                    stop,
                    lost,
                    handback,
                    metrics: metrics.clone(),
                    slots: lender.clone(),
                };
                let shared2 = shared.clone();
                let m = metrics.clone();
                tasks.spawn(async move {
                    let _permit = permit;
                    let (id, epoch) = (ctx.run.run_id.clone(), ctx.run.epoch);
                    m.runs_started.inc();
                    m.active_runs.add(1.0);
                    let end = ctx.execute().await;
                    m.active_runs.add(-1.0);
                    match end {
                        RunEnd::Finished => m.runs_finished.inc(),
                        RunEnd::Lost => m.runs_lost.inc(),
                        RunEnd::Stopped | RunEnd::Refused => {}
                    }
                    if end != RunEnd::Stopped
                        && let Ok(mut m) = shared2.runs.lock()
                    {
                        m.remove(&id);
                    }
                    (id, epoch, end)
                });
            }
            Err(s) if s.code() == Code::NotFound => {
                tracing::warn!("coordinator does not know this worker; registering again");
                if shared.register(shutdown).await?.is_none() {
                    break true;
                }
            }
            Err(s) => {
                let delay = backoff.next_delay();
                tracing::warn!(code = ?s.code(), error = %s.message(), retry_in_ms = delay.as_millis() as u64, "acquire failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    };

    // Drain and SIGTERM alike: each run stops right after its next
    // checkpoint is acknowledged, so its successor resumes from there. Runs
    // that reach no checkpoint within the grace period are stopped (they
    // resume from their last checkpoint, or from the start).
    let grace = shared.cfg.handback_grace;
    tracing::info!(
        runs = tasks.len(),
        grace_ms = grace.as_millis() as u64,
        why = if terminated { "terminated" } else { "drained" },
        "handing runs back at their next checkpoint"
    );
    if let Ok(m) = shared.runs.lock() {
        m.values().for_each(|r| r.handback.store(true, Ordering::Relaxed));
    }
    // Shards of other workers' probes: finished when draining, handed back
    // at once when terminated.
    if terminated {
        shared.stop_shards();
    }
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    let mut stopped = false;
    loop {
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(d) => log_end(d),
                None => break,
            },
            _ = &mut deadline, if !stopped => {
                stopped = true;
                tracing::warn!(runs = tasks.len(), "no checkpoint within the grace period; stopping runs now");
                if let Ok(m) = shared.runs.lock() {
                    m.values().for_each(|r| r.stop.store(true, Ordering::Relaxed));
                }
                shared.stop_shards();
            }
        }
    }
    // Leases of stopped runs go back to the queue; the worker leaves.
    let leases = shared.leases();
    let req = pb::ReleaseRequest {
        worker_id: shared.worker_id(),
        runs: leases,
        shards: shared.shard_leases(),
        reason: if terminated { "worker terminated".into() } else { "worker drained".into() },
        leaving: true,
    };
    match tokio::time::timeout(Duration::from_secs(5), shared.client.clone().release(req)).await {
        Ok(Ok(_)) => tracing::info!("leases handed back; worker leaving"),
        Ok(Err(s)) => tracing::warn!(error = %s.message(), "could not hand leases back; they will lapse"),
        Err(_) => tracing::warn!("coordinator did not answer; leases will lapse"),
    }
    let _ = hb_stop_tx.send(true);
    let _ = hb.await;
    Ok(())
}

fn log_end(done: Result<(String, u64, RunEnd), tokio::task::JoinError>) {
    match done {
        Ok((task, epoch, end)) => tracing::info!(task = %task, epoch, end = ?end, "task ended"),
        Err(e) => tracing::error!(error = %e, "run task failed"),
    }
}

/// How far into the heartbeat interval a worker's first heartbeat falls: a
/// fraction of `interval` fixed by the worker's id (FNV-1a), never more
/// than the interval. Workers started together (a Slurm array, a
/// Kubernetes rollout) then spread their heartbeats over the interval
/// instead of sending them all in the same few milliseconds, each burst a
/// queue at the coordinator; leases see no change, since every later
/// heartbeat follows the one before by exactly the interval.
pub fn heartbeat_phase(worker_id: &str, interval: Duration) -> Duration {
    let h = gradsweep_shared::spec::fnv1a(worker_id.bytes());
    interval.mul_f64((h % 1024) as f64 / 1024.0)
}

/// Heartbeats on their own task, so compute never starves them.
/// The interval is the one the coordinator asked for at registration; the
/// first heartbeat comes at the worker's [`heartbeat_phase`].
async fn heartbeat_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let interval = Duration::from_millis(shared.heartbeat_ms.load(Ordering::Relaxed));
        let wait = if std::mem::take(&mut first) { heartbeat_phase(&shared.worker_id(), interval) } else { interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let req = pb::HeartbeatRequest {
            worker_id: shared.worker_id(),
            runs: shared.leases(),
            shards: shared.shard_leases(),
        };
        match tokio::time::timeout(interval * 3, shared.client.clone().heartbeat(req)).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.unknown_worker {
                    tracing::warn!("coordinator forgot this worker; its runs are lost");
                    shared.stop_shards();
                    if let Ok(m) = shared.runs.lock() {
                        m.values().for_each(|a| {
                            a.lost.store(true, Ordering::Relaxed);
                            a.stop.store(true, Ordering::Relaxed);
                        });
                    }
                }
                for l in r.lost {
                    if let Ok(m) = shared.runs.lock()
                        && let Some(a) = m.get(&l.run_id)
                        && a.epoch == l.epoch
                    {
                        tracing::warn!(run_id = %l.run_id, epoch = l.epoch, "lease lost; stopping run");
                        a.lost.store(true, Ordering::Relaxed);
                        a.stop.store(true, Ordering::Relaxed);
                    }
                }
                for l in r.lost_shards {
                    // Lost: stopped, and no longer named in heartbeats.
                    if let Ok(mut m) = shared.shards.lock()
                        && m.get(&(l.pass_id, l.shard)).is_some_and(|a| a.lease.epoch == l.epoch)
                        && let Some(a) = m.remove(&(l.pass_id, l.shard))
                    {
                        tracing::info!(
                            pass_id = l.pass_id,
                            shard = l.shard,
                            epoch = l.epoch,
                            "probe shard lease lost; stopping it"
                        );
                        a.stop.store(true, Ordering::Relaxed);
                    }
                }
                if r.drain && !shared.draining.swap(true, Ordering::Relaxed) {
                    tracing::info!("coordinator asked this worker to drain");
                    shared.drain_requested.notify_one();
                }
            }
            Ok(Err(s)) => tracing::warn!(code = ?s.code(), error = %s.message(), "heartbeat failed"),
            Err(_) => tracing::warn!("heartbeat timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_registered_together_spread_their_heartbeats_over_the_interval() {
        let interval = Duration::from_secs(3);
        // Ids as the coordinator makes them: a count and a few hex digits.
        let phases: Vec<Duration> =
            (1..=1000).map(|n| heartbeat_phase(&format!("w{n}-{:x}", 0x5a3c00 + n), interval)).collect();
        assert!(phases.iter().all(|p| *p < interval));
        let mut quarters = [0; 4];
        for p in &phases {
            quarters[(p.as_secs_f64() / interval.as_secs_f64() * 4.0) as usize] += 1;
        }
        assert!(quarters.iter().all(|&q| (150..=350).contains(&q)), "{quarters:?}");
        assert_eq!(heartbeat_phase("w7-1f", interval), heartbeat_phase("w7-1f", interval), "fixed by the id");
    }
}
