//! The coordinator's state machine over the [`Store`].
//!
//! [`Coordinator`] sends every state transition to the store's writer
//! thread ([`crate::writer`]: group commit, a sync beside it, answers
//! only once durable) and runs reads on read-only connections on tokio's
//! blocking pool, so neither SQLite I/O nor result merging stalls the async
//! workers, and status and results never wait for a commit. It wakes
//! long-polling `Acquire` calls when runs become available and runs the
//! lease reaper and the cell merger.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gradsweep_proto::transport::Token;
use gradsweep_shared::digest::CellSpectra;
use gradsweep_shared::grid::GridLimits;
use gradsweep_shared::results::CellResult;
use gradsweep_shared::stats::RankThresholds;
use tokio::sync::Notify;

use crate::error::{CoordinatorError, Result};
use crate::merge_pool::MergePool;
use crate::metrics::CoordinatorMetrics;
use crate::shards::ShardBoard;
use crate::store::{CellSource, EncodedMerge, HeartbeatAnswer, LeasePolicy, LeaseRef, Seen, Store, now_ms};
use crate::writer::Writer;

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// SQLite file.
    pub db_path: PathBuf,
    /// A lease lapses this long after the last heartbeat or report.
    pub lease_ttl: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// A run whose lease lapsed this many times is failed.
    pub max_attempts: u32,
    /// Largest grid accepted.
    pub grid_limits: GridLimits,
    /// Token and TLS.
    pub security: ServerSecurity,
    /// Largest size the database may grow to (SQLite `max_page_count`); at
    /// the cap the coordinator stops accepting work, as on a full disk.
    pub max_db_bytes: Option<u64>,
    /// Most bytes of probe shard results held in memory for their runs'
    /// workers; past it a helper's result is refused (the run's worker
    /// computes that shard itself).
    pub max_shard_result_bytes: usize,
    /// TCP_NODELAY on accepted connections (on by default; off only to
    /// measure what Nagle's algorithm costs each call).
    pub tcp_nodelay: bool,
}

/// Who may call the coordinator, and over what.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// Required (as `authorization: Bearer <token>`) on every gRPC call of
    /// both services when set. Health and reflection stay open.
    pub token: Option<Token>,
    /// Serve TLS with this certificate chain and key.
    pub tls: Option<TlsIdentity>,
    /// Allow listening on a non-loopback address without a token.
    pub allow_unauthenticated: bool,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl CoordinatorConfig {
    /// Defaults for a database at `db_path`: 15 s leases, 3 s heartbeats.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            db_path: db_path.into(),
            lease_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            max_attempts: 10,
            grid_limits: GridLimits::default(),
            security: ServerSecurity::default(),
            max_db_bytes: None,
            max_shard_result_bytes: 2 << 30,
            tcp_nodelay: true,
        }
    }

    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() || self.lease_ttl < self.heartbeat_interval * 2 {
            return Err(CoordinatorError::InvalidArgument(format!(
                "lease TTL ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.lease_ttl, self.heartbeat_interval
            )));
        }
        if self.max_attempts == 0 {
            return Err(CoordinatorError::InvalidArgument("max attempts must be at least 1".into()));
        }
        Ok(())
    }
}

/// Every cell's results from its source, merging the stale ones on as many
/// threads as the machine has (cells are independent, so the results do not
/// depend on the thread count). Returns the cells in order, and the ones
/// merged here with their sweep, to store whatever `th` was: a stored
/// merge keeps its spectra, so later thresholds are added from it.
pub fn merge_all(sources: Vec<CellSource>, th: &RankThresholds) -> (Vec<CellResult>, Vec<FreshMerge>) {
    let (cells, fresh) = merge_all_keeping(sources, th);
    (cells.into_iter().map(|(c, _)| c).collect(), fresh)
}

/// [`merge_all`], each cell with the eigenvalues behind its spectra when
/// its source has them ([`CellSource::compute_keeping`]).
pub fn merge_all_keeping(
    sources: Vec<CellSource>,
    th: &RankThresholds,
) -> (Vec<(CellResult, Option<CellSpectra>)>, Vec<FreshMerge>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(sources.len()).max(1);
    let mut parts: Vec<Vec<(usize, CellSource)>> = (0..threads).map(|_| vec![]).collect();
    for (i, src) in sources.into_iter().enumerate() {
        parts[i % threads].push((i, src));
    }
    type Done = (usize, (CellResult, Option<CellSpectra>), Option<FreshMerge>);
    let mut done: Vec<Done> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|(i, src)| {
                            let sweep_id = match &src {
                                CellSource::Compute(inp) => Some(inp.sweep_id.clone()),
                                CellSource::Ready(_) => None,
                            };
                            let (result, spectra, merge) = src.compute_keeping(th);
                            // A fresh merge is kept for next time; one that
                            // cannot be encoded is merely not kept.
                            let encoded = merge.and_then(|m| {
                                EncodedMerge::of(&m)
                                    .inspect_err(
                                        |e| tracing::warn!(cell = m.result.index, error = %e, "merge not kept"),
                                    )
                                    .ok()
                            });
                            let fresh = encoded.zip(sweep_id).map(|(e, id)| (id, e));
                            (i, (result, spectra), fresh)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    done.sort_by_key(|x| x.0);
    let mut fresh = Vec::new();
    let cells = done
        .into_iter()
        .map(|(_, c, f)| {
            fresh.extend(f);
            c
        })
        .collect();
    (cells, fresh)
}

/// A merge computed while serving results, with its sweep: stored after.
pub type FreshMerge = (String, EncodedMerge);

/// Shared handle to the coordinator's state.
#[derive(Clone)]
pub struct Coordinator {
    /// The write connection's thread (group commit).
    writer: Arc<Writer>,
    /// Read-only connections for short reads (heartbeats, status).
    quick: Arc<Readers>,
    /// Read-only connections for long reads (merge inputs, results).
    bulk: Arc<Readers>,
    work_available: Arc<Notify>,
    config: Arc<CoordinatorConfig>,
    metrics: Arc<CoordinatorMetrics>,
    /// Why the coordinator stopped accepting work (storage full or failing).
    halted: Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// Cells whose merged statistics are behind their finished runs.
    stale_cells: Arc<Mutex<std::collections::BTreeSet<(String, u32)>>>,
    /// Wakes the merger ([`Coordinator::run_merger`]).
    merge_wanted: Arc<Notify>,
    /// Probe shards leased to idle workers (in memory, its own lock).
    board: Arc<Mutex<ShardBoard>>,
    /// Wakes run workers waiting for a shard's result.
    shards_changed: Arc<Notify>,
    /// Heartbeats heard since the reaper last wrote them.
    seen: Arc<Mutex<Seen>>,
    /// The threads that merge sketches (cell merges and results).
    merge_pool: Arc<MergePool>,
}

/// Read-only connections: a read takes whichever is free, or waits for the
/// first one freed (never for one connection in particular, which a long
/// read may hold).
struct Readers {
    free: Mutex<Vec<Store>>,
    freed: std::sync::Condvar,
}

/// A connection taken from [`Readers`], handed back when dropped (also
/// when the read panics).
struct Taken<'a> {
    readers: &'a Readers,
    store: Option<Store>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            // A poisoned pool lends nothing more; the reads fail cleanly.
            if let Ok(mut free) = self.readers.free.lock() {
                free.push(store);
                self.readers.freed.notify_one();
            }
        }
    }
}

impl Readers {
    fn open(path: &std::path::Path, policy: LeasePolicy, n: usize) -> Result<Self> {
        let free = (0..n.max(1)).map(|_| Store::open_reader(path, policy)).collect::<Result<_>>()?;
        Ok(Readers { free: Mutex::new(free), freed: std::sync::Condvar::new() })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        let poisoned = || CoordinatorError::Internal("the store readers' pool is poisoned".into());
        let mut free = self.free.lock().map_err(|_| poisoned())?;
        let store = loop {
            match free.pop() {
                Some(s) => break s,
                None => free = self.freed.wait(free).map_err(|_| poisoned())?,
            }
        };
        drop(free);
        let mut taken = Taken { readers: self, store: Some(store) };
        f(taken.store.as_mut().expect("taken above"))
    }
}

/// Read connections for short reads (heartbeats, status, the worker list,
/// lease owners): a heartbeat never queues behind a sketch or a plan.
const QUICK_READERS: usize = 2;

/// Read connections for long reads (merge inputs, results pages, plans,
/// stored probes, run pages), so that two results calls and a merge can
/// read side by side.
const BULK_READERS: usize = 3;

/// Which connections a read uses ([`Coordinator::read_store`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A few rows by key: answered in well under a millisecond.
    Quick,
    /// Sketches, plans, pages of runs or cells: may take seconds.
    Bulk,
}

impl Coordinator {
    /// Opens the database and reconciles: outstanding leases get a fresh TTL
    /// so their workers can reconnect.
    pub fn open(config: CoordinatorConfig) -> Result<Self> {
        config.validate()?;
        // Before anything touches the file: one coordinator per database.
        let lock = crate::lock::DbLock::acquire(&config.db_path)?;
        let policy = LeasePolicy { ttl_ms: config.lease_ttl.as_millis() as i64, max_attempts: config.max_attempts };
        let mut store = Store::open(&config.db_path, policy)?;
        if let Some(bytes) = config.max_db_bytes {
            store.limit_size(bytes)?;
        }
        let resumed = store.grant_restart_grace()?;
        // Merges a previous coordinator did not get to: the merger catches up.
        let stale: std::collections::BTreeSet<(String, u32)> = store.stale_cells()?.into_iter().collect();
        tracing::info!(
            db = %config.db_path.display(),
            leases_resumed = resumed,
            cells_to_merge = stale.len(),
            "coordinator state opened"
        );
        let metrics = Arc::new(CoordinatorMetrics::default());
        metrics.cells_pending_merge.set(stale.len() as f64);
        let quick = Readers::open(&config.db_path, policy, QUICK_READERS)?;
        let bulk = Readers::open(&config.db_path, policy, BULK_READERS)?;
        let writer = Writer::start(store, lock, metrics.clone())?;
        Ok(Coordinator {
            writer: Arc::new(writer),
            quick: Arc::new(quick),
            bulk: Arc::new(bulk),
            work_available: Arc::new(Notify::new()),
            metrics,
            halted: Arc::new(tokio::sync::watch::channel(None).0),
            stale_cells: Arc::new(Mutex::new(stale)),
            merge_wanted: Arc::new(Notify::new()),
            board: Arc::new(Mutex::new(ShardBoard::new(config.lease_ttl, config.max_shard_result_bytes))),
            shards_changed: Arc::new(Notify::new()),
            seen: Arc::new(Mutex::new(Seen::default())),
            merge_pool: Arc::new(MergePool::start()?),
            config: Arc::new(config),
        })
    }

    /// Asks the merger to recompute a cell's merged statistics.
    pub fn cell_changed(&self, sweep_id: String, cell: u32) {
        if let Ok(mut set) = self.stale_cells.lock() {
            set.insert((sweep_id, cell));
            self.metrics.cells_pending_merge.set(set.len() as f64);
        }
        self.merge_wanted.notify_one();
    }

    /// Merges stale cells one at a time until `shutdown` resolves: the
    /// cell's runs are read on a read connection, merged on the merge pool
    /// (heartbeats, grants and reports go on, ahead of it for the CPU), and
    /// stored by the writer unless a merge of as many runs already was. A
    /// worker's `Finish` never waits for this.
    pub async fn run_merger(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let next = self.stale_cells.lock().ok().and_then(|mut set| {
                let first = set.pop_first();
                self.metrics.cells_pending_merge.set(set.len() as f64);
                first
            });
            let Some((sweep_id, cell)) = next else {
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = self.merge_wanted.notified() => continue,
                }
            };
            if self.halted.borrow().is_some() {
                continue;
            }
            let started = std::time::Instant::now();
            let merged = tokio::select! {
                _ = &mut shutdown => return,
                r = self.merge_cell(sweep_id.clone(), cell) => r,
            };
            match merged {
                Ok(runs) => {
                    self.metrics.merge_seconds.observe(started.elapsed().as_secs_f64());
                    self.metrics.sketch_merges.add(runs as u64);
                    tracing::debug!(sweep_id, cell, runs, seconds = started.elapsed().as_secs_f64(), "cell merged");
                }
                Err(e) => {
                    tracing::error!(sweep_id, cell, error = %e, "cell merge failed; results will merge it when read")
                }
            }
        }
    }

    /// One cell's merge, off the lock; returns how many runs it combined
    /// (none when the cell is pruned: its merge is final).
    async fn merge_cell(&self, sweep_id: String, cell: u32) -> Result<usize> {
        // The read of its inputs (a large sketch is tens of MB to decode)
        // and its encoding run on the merge pool too, below everything
        // else, on a long-read connection.
        let (pool, bulk) = (self.merge_pool.clone(), self.bulk.clone());
        let merged = tokio::task::spawn_blocking(move || {
            pool.run(|| -> Result<Option<(usize, String, EncodedMerge)>> {
                let Some(inputs) = bulk.with(|s| s.cell_inputs(&sweep_id, cell))? else { return Ok(None) };
                let encoded = EncodedMerge::of(&inputs.merge())?;
                Ok(Some((inputs.runs.len(), inputs.sweep_id, encoded)))
            })
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("merge task failed: {e}")))??;
        let Some((runs, sweep_id, merge)) = merged else { return Ok(0) };
        self.with_store(move |s| s.store_cell(&sweep_id, &merge)).await?;
        Ok(runs)
    }

    /// Every cell's results, with ranks at the user's thresholds `th` too;
    /// with `spectra`, each with the eigenvalues behind its spectra (merged
    /// now where the stored merge did not keep them). Stored merges that
    /// can serve them are read (thresholds added from their kept
    /// eigenvalues); the rest are merged here, off the writer, and stored
    /// for next time.
    pub async fn cell_results_keeping(
        &self,
        sweep_id: String,
        th: RankThresholds,
        spectra: bool,
    ) -> Result<Vec<(CellResult, Option<CellSpectra>)>> {
        let id = sweep_id.clone();
        let plan = Arc::new(self.read_store(Read::Bulk, move |s| s.plan(&id)).await?);
        self.cell_results_in(plan, sweep_id, th, spectra, 0..u32::MAX).await
    }

    /// [`Self::cell_results_keeping`] of the cells whose index is in
    /// `cells` only, given the sweep's `plan` (read once by a caller that
    /// pages): one page of a sweep streamed a page at a time.
    pub async fn cell_results_in(
        &self,
        plan: Arc<gradsweep_shared::SweepPlan>,
        sweep_id: String,
        th: RankThresholds,
        spectra: bool,
        cells: std::ops::Range<u32>,
    ) -> Result<Vec<(CellResult, Option<CellSpectra>)>> {
        let th2 = th.clone();
        let sources =
            self.read_store(Read::Bulk, move |s| s.cell_sources_in(&plan, &sweep_id, &th2, spectra, cells)).await?;
        // The cells merged here need no merger: take them off its queue.
        if let Ok(mut set) = self.stale_cells.lock() {
            for src in &sources {
                if let CellSource::Compute(i) = src {
                    set.remove(&(i.sweep_id.clone(), i.cell.index));
                }
            }
            self.metrics.cells_pending_merge.set(set.len() as f64);
        }
        let pool = self.merge_pool.clone();
        let (cells, fresh) = tokio::task::spawn_blocking(move || pool.run(|| merge_all_keeping(sources, &th)))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("results task failed: {e}")))?;
        if !fresh.is_empty() && self.halted.borrow().is_none() {
            let stored =
                self.with_store(move |s| fresh.iter().try_for_each(|(id, c)| s.store_cell(id, c).map(|_| ()))).await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "could not keep freshly merged cells");
            }
        }
        Ok(cells)
    }

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The metrics this coordinator updates.
    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// The Prometheus exposition: counters plus the store's current counts.
    pub async fn render_metrics(&self) -> Result<String> {
        let counts = self.read_store(Read::Quick, |s| s.counts()).await?;
        Ok(self.metrics.render(&counts))
    }

    /// Why the coordinator stopped accepting work, as it changes.
    pub fn halted(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.halted.subscribe()
    }

    /// Runs the transition `f` on the writer thread, in the next batch, and
    /// returns once it is durable. Once the storage has failed, nothing more
    /// is attempted: every call is refused with the reason, and the state on
    /// disk stays as it was at the last commit.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        if let Some(why) = self.halted.borrow().clone() {
            return Err(CoordinatorError::Halted(why));
        }
        let r = self.writer.run(f).await;
        if let Err(e) = &r
            && e.is_storage_failure()
        {
            let db = self.config.db_path.display();
            let why = if e.is_disk_full() {
                format!(
                    "the database {db} cannot grow ({e}); free space (or raise --max-db-mib) and restart \
                     `gradsweep serve` on the same file: every acknowledged result is kept"
                )
            } else {
                format!(
                    "the database {db} could not be written ({e}); check the disk and restart `gradsweep serve` \
                     on the same file: every acknowledged result is kept"
                )
            };
            tracing::error!(reason = %why, "storage failure: no longer accepting work");
            self.halted.send_replace(Some(why.clone()));
            return Err(CoordinatorError::Halted(why));
        }
        r
    }

    /// Runs a read-only `f` on a read connection of `kind`, on the blocking
    /// pool; it sees every acknowledged transition (and those committed
    /// whose sync is still on the disk) and never waits for a
    /// commit. Allowed after a storage failure, so status and results stay
    /// available. A write in `f` fails.
    pub async fn read_store<T, F>(&self, kind: Read, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let readers = match kind {
            Read::Quick => self.quick.clone(),
            Read::Bulk => self.bulk.clone(),
        };
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| CoordinatorError::Internal(format!("store task failed: {e}")))?
    }

    /// Runs `f` on the shard board. Quick, in memory, never inside a store
    /// transition; refused once the coordinator halted.
    pub fn with_board<T>(&self, f: impl FnOnce(&mut ShardBoard) -> Result<T>) -> Result<T> {
        if let Some(why) = self.halted.borrow().clone() {
            return Err(CoordinatorError::Halted(why));
        }
        let mut board = self.board.lock().map_err(|_| CoordinatorError::Internal("shard board poisoned".into()))?;
        let r = f(&mut board);
        let c = board.counts();
        drop(board);
        self.metrics.shard_passes.set(c.passes as f64);
        self.metrics.shards_leased.set(c.leased as f64);
        self.metrics.shard_result_bytes.set(c.result_bytes as f64);
        r
    }

    /// Wakes run workers waiting for a shard (a result arrived, a shard
    /// became free).
    pub fn notify_shards(&self) {
        self.shards_changed.notify_waiters();
    }

    /// Waits until a shard may have changed or `timeout` passes.
    pub async fn wait_for_shards(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.shards_changed.notified()).await;
    }

    /// Frees lapsed shard leases and drops the passes whose run lease
    /// ended; wakes whoever waits for them.
    async fn reap_shards(&self) -> Result<()> {
        let now = std::time::Instant::now();
        let (expired, owners) = self.with_board(|b| Ok((b.expire(now), b.owners())))?;
        if expired > 0 {
            self.metrics.shard_expiries.add(expired as u64);
        }
        let dropped = if owners.is_empty() {
            0
        } else {
            let current = self.read_store(Read::Quick, move |s| s.current_owners(owners)).await?;
            self.with_board(|b| Ok(b.keep_owners(&current)))?
        };
        if dropped > 0 {
            tracing::info!(passes = dropped, "probe passes dropped: their run leases ended");
        }
        if expired > 0 || dropped > 0 {
            self.notify_shards();
            self.notify_work();
        }
        Ok(())
    }

    /// Answers a worker's heartbeat from a read connection (no write, no
    /// wait for a commit) and records, in memory, the renewal of the leases
    /// it still holds; the reaper writes renewals once per tick, in the
    /// transition that judges which leases lapsed. `None` for an unknown
    /// worker.
    pub async fn heartbeat(&self, worker_id: String, runs: Vec<LeaseRef>) -> Result<Option<HeartbeatAnswer>> {
        if let Some(why) = self.halted.borrow().clone() {
            return Err(CoordinatorError::Halted(why));
        }
        let at = now_ms();
        let (id, named) = (worker_id.clone(), runs.clone());
        let answer = self.read_store(Read::Quick, move |s| s.heartbeat(&id, &named)).await?;
        if let Some(a) = &answer {
            let held = runs.into_iter().filter(|l| !a.lost.contains(l));
            self.seen
                .lock()
                .map_err(|_| CoordinatorError::Internal("heartbeats mutex poisoned".into()))?
                .record(&worker_id, held, at);
        }
        Ok(answer)
    }

    /// Wakes every waiting `Acquire`.
    pub fn notify_work(&self) {
        self.work_available.notify_waiters();
    }

    /// Waits until work may be available or `timeout` passes.
    pub async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.work_available.notified()).await;
    }

    /// Expires lapsed leases every quarter TTL until `shutdown` resolves.
    pub async fn run_reaper(self, shutdown: impl std::future::Future<Output = ()>) {
        let period = (self.config.lease_ttl / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if self.halted.borrow().is_some() {
                        continue;
                    }
                    // The heartbeats heard are taken when the transition
                    // runs, so every renewal before it counts.
                    let seen = self.seen.clone();
                    let expired = self
                        .with_store(move |s| {
                            let heard = seen.lock().map(|mut g| std::mem::take(&mut *g)).unwrap_or_default();
                            s.expire_leases(now_ms(), &heard)
                        })
                        .await;
                    match expired {
                        Ok(requeued) if !requeued.is_empty() => {
                            self.metrics.lease_expiries.add(requeued.len() as u64);
                            self.notify_work();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "lease reaper failed"),
                    }
                    if let Err(e) = self.reap_shards().await {
                        tracing::error!(error = %e, "shard reaper failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn readers(dir: &std::path::Path, n: usize) -> Arc<Readers> {
        let path = dir.join("r.db");
        let policy = LeasePolicy { ttl_ms: 60_000, max_attempts: 3 };
        drop(Store::open(&path, policy).unwrap());
        Arc::new(Readers::open(&path, policy, n).unwrap())
    }

    /// Starts a read on its own thread that holds its connection until told
    /// to let go; returns once the connection is held.
    fn hold(r: &Arc<Readers>) -> (mpsc::Sender<()>, std::thread::JoinHandle<Result<()>>) {
        let (holds, held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let r = r.clone();
        let t = std::thread::spawn(move || {
            r.with(|_| {
                holds.send(()).unwrap();
                released.recv().unwrap();
                Ok(())
            })
        });
        held.recv().unwrap();
        (release, t)
    }

    /// With one connection held by a long read and the other busy, a third
    /// read gets the first connection freed, not the one the long read
    /// holds (which it would wait for here until the test fails).
    #[test]
    fn a_read_takes_the_first_connection_freed() {
        let dir = tempfile::tempdir().unwrap();
        let r = readers(dir.path(), 2);
        let (release_long, long) = hold(&r);
        let (release_short, short) = hold(&r);
        let (done, third_done) = mpsc::channel();
        let third = {
            let r = r.clone();
            std::thread::spawn(move || {
                r.with(|s| s.sweeps()).unwrap();
                done.send(()).unwrap();
            })
        };
        release_short.send(()).unwrap();
        let waited = third_done.recv_timeout(Duration::from_secs(30));
        release_long.send(()).unwrap();
        assert!(waited.is_ok(), "the third read waited for the long read's connection");
        for t in [long, short] {
            t.join().unwrap().unwrap();
        }
        third.join().unwrap();
        assert_eq!(r.free.lock().unwrap().len(), 2, "every connection is back");
    }

    #[test]
    fn a_read_that_panics_hands_its_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let r = readers(dir.path(), 1);
        let r2 = r.clone();
        let panicked = std::thread::spawn(move || r2.with(|_| -> Result<()> { panic!("a read failed") })).join();
        assert!(panicked.is_err());
        assert!(r.with(|s| s.sweeps()).unwrap().is_empty(), "the one connection is free again");
    }
}
