//! Group commit: one thread owns the database's write connection.
//!
//! Every state transition (a grant, a heartbeat, a report, a finish, a
//! submit…) is sent to the writer thread as a job. The thread takes every
//! job waiting, runs them in one SQLite transaction, each in its own
//! savepoint ([`Store::batch`]), and commits once. Nothing is acknowledged
//! before it is durable, and a transition that fails rolls back alone.
//!
//! The commit itself skips its fsync ([`Store::defer_sync`]): the batch,
//! with its answers, goes to a second thread, the syncer, which syncs the
//! WAL file and only then answers each caller. While one fsync is on the
//! disk the writer goes on running and committing the next batches, and
//! the syncer's next fsync covers every batch committed meanwhile. So a
//! slow fsync delays the answers of the batches it covers, not the work
//! queued behind them, and under load one fsync covers hundreds of
//! transitions. A failed sync is never retried: no batch is acknowledged
//! after it (the storage failure halts the coordinator, [`crate::state`]).
//!
//! The writer thread also holds the coordinator's [`DbLock`]: the lock is
//! released only after the syncer has answered every batch and the write
//! connection is closed, so a coordinator started right after this one
//! stopped never overlaps it on the file.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{CoordinatorError, Result};
use crate::lock::DbLock;
use crate::metrics::CoordinatorMetrics;
use crate::store::Store;

/// Most transitions committed together (a bound on one batch's latency).
const MAX_BATCH: usize = 1024;

/// A batch slower than this, from its start to its answers, is logged (a
/// warning naming its size and where the time went): every transition
/// queued behind it waited as long.
const SLOW_BATCH: Duration = Duration::from_millis(100);

/// What the writer runs for one caller: the transition, which returns how
/// to answer once the batch's commit is known.
type Job = Box<dyn FnOnce(&mut Store) -> Answer + Send>;
type Answer = Box<dyn FnOnce(&CommitOutcome) + Send>;

/// How a batch's commit went, to be told to every transition in it.
enum CommitOutcome {
    Durable,
    /// The commit failed: nothing of the batch was kept.
    Lost(rusqlite::ffi::Error, Option<String>),
    LostOther(String),
    /// Committed, but the sync that was to make it durable failed (or an
    /// earlier one did): it may or may not survive a power loss, so it is
    /// not acknowledged.
    NotDurable(String),
}

impl CommitOutcome {
    fn from(r: Result<()>) -> Self {
        match r {
            Ok(()) => CommitOutcome::Durable,
            Err(CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(e, m))) => CommitOutcome::Lost(e, m),
            Err(e) => CommitOutcome::LostOther(e.to_string()),
        }
    }

    /// The error each transition of a failed batch reports (a full disk or
    /// a failed sync stays recognisable as a storage failure).
    fn error(&self) -> Option<CoordinatorError> {
        match self {
            CommitOutcome::Durable => None,
            CommitOutcome::Lost(e, m) => Some(CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(*e, m.clone()))),
            CommitOutcome::LostOther(m) => Some(CoordinatorError::Internal(format!("commit failed: {m}"))),
            CommitOutcome::NotDurable(why) => Some(CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                Some(format!("the database's WAL could not be synced: {why}")),
            ))),
        }
    }
}

/// How the syncer makes committed batches durable.
pub(crate) enum Durability {
    /// SQLite synced inside each commit (a database not in WAL mode):
    /// nothing is left to do.
    AtCommit,
    /// Commits skipped their fsync: `fdatasync` this file, the WAL.
    Wal(std::fs::File),
    /// A stand-in for the fsync, for tests to hold or fail it.
    #[cfg(test)]
    Hook(Box<dyn FnMut() -> std::io::Result<()> + Send>),
}

impl Durability {
    /// The durability of `store`'s commits, switching it to deferred syncs
    /// when its database is in WAL mode. The WAL's directory is synced
    /// once, so the file itself survives a power loss whatever its age.
    fn of(store: &mut Store) -> Result<Durability> {
        let Some(wal) = store.defer_sync()? else { return Ok(Durability::AtCommit) };
        let unusable = |e: std::io::Error| CoordinatorError::Database {
            path: wal.display().to_string(),
            message: format!("cannot open the WAL to sync it: {e}"),
        };
        let file = std::fs::File::open(&wal).map_err(unusable)?;
        if let Some(dir) = wal.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(unusable)?;
        }
        Ok(Durability::Wal(file))
    }

    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Durability::AtCommit => Ok(()),
            Durability::Wal(f) => f.sync_data(),
            #[cfg(test)]
            Durability::Hook(f) => f(),
        }
    }
}

/// A committed batch on its way to the syncer, with its callers' answers.
struct Committed {
    answers: Vec<Answer>,
    outcome: CommitOutcome,
    transitions: usize,
    started: Instant,
    ran: Duration,
    committed: Duration,
}

/// The handle to the writer thread. Dropping the last one stops the
/// thread after the jobs already sent (each answered), closes the
/// connection and releases the database lock.
pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `store`, holding `lock` until it stops,
    /// and its syncer.
    pub fn start(mut store: Store, lock: DbLock, metrics: Arc<CoordinatorMetrics>) -> Result<Writer> {
        let durability = Durability::of(&mut store)?;
        Self::start_with(store, lock, metrics, durability)
    }

    /// [`Writer::start`] with the given durability.
    pub(crate) fn start_with(
        mut store: Store,
        lock: DbLock,
        metrics: Arc<CoordinatorMetrics>,
        durability: Durability,
    ) -> Result<Writer> {
        let cannot = |e: std::io::Error| CoordinatorError::Internal(format!("cannot start the store writer: {e}"));
        let (to_sync, committed) = mpsc::channel::<Committed>();
        let m = metrics.clone();
        let syncer = std::thread::Builder::new()
            .name("gradsweep-store-syncer".into())
            .spawn(move || sync_batches(committed, durability, &m))
            .map_err(cannot)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("gradsweep-store-writer".into())
            .spawn(move || {
                run(&mut store, rx, to_sync, &metrics);
                if syncer.join().is_err() {
                    tracing::error!("the store syncer thread panicked");
                }
                drop(store);
                drop(lock);
            })
            .map_err(cannot)?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Runs the transition `f` in the next batch and returns its value once
    /// the batch is durable; an error of `f` (its own changes rolled back)
    /// or of the batch's commit or sync otherwise.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T>>();
        let job: Job = Box::new(move |store: &mut Store| {
            let r = store.transition(f);
            Box::new(move |commit: &CommitOutcome| {
                let r = match (r, commit.error()) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(e)) => Err(e),
                    (Ok(v), None) => Ok(v),
                };
                let _ = tx.send(r);
            })
        });
        let stopped = || CoordinatorError::Internal("the store writer stopped".into());
        self.jobs.as_ref().ok_or_else(stopped)?.send(job).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// The writer thread: runs and commits batches until every sender is
/// gone, handing each to the syncer.
fn run(store: &mut Store, rx: mpsc::Receiver<Job>, to_sync: mpsc::Sender<Committed>, metrics: &CoordinatorMetrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        let started = Instant::now();
        let mut answers = Vec::with_capacity(n);
        if let Err(e) = store.begin_batch() {
            // Each transition then commits alone, and says so if it cannot.
            tracing::warn!(error = %e, "could not begin a batch; committing transitions one by one");
        }
        for job in jobs {
            // A transition that panics is rolled back (its savepoint
            // unwinds) and its caller hears that the writer stopped for it;
            // the batch goes on.
            if let Ok(answer) = std::panic::catch_unwind(AssertUnwindSafe(|| job(store))) {
                answers.push(answer);
            }
            if store.batch_lost() {
                // SQLite rolled back the whole batch (a full disk, say): the
                // transitions so far were not kept (the failing one reports
                // its own error); the rest go in a new batch.
                let lost = CommitOutcome::LostOther(
                    "rolled back with its batch after a storage error in another transition".into(),
                );
                answers.drain(..).for_each(|a: Answer| a(&lost));
                if let Err(e) = store.begin_batch() {
                    tracing::warn!(error = %e, "could not begin a batch; committing transitions one by one");
                }
            }
        }
        let ran = started.elapsed();
        let outcome = CommitOutcome::from(store.end_batch());
        let committed = started.elapsed();
        metrics.commits.inc();
        metrics.committed_transitions.add(n as u64);
        let batch = Committed { answers, outcome, transitions: n, started, ran, committed };
        if let Err(mpsc::SendError(batch)) = to_sync.send(batch) {
            // The syncer is gone (it panicked): nobody can vouch for this
            // batch's durability.
            let gone = CommitOutcome::NotDurable("the store syncer stopped".into());
            batch.answers.into_iter().for_each(|a| a(&gone));
        }
        store.after_commit();
    }
}

/// The syncer thread: takes every batch committed so far, makes them
/// durable with one sync, and answers their callers, in commit order.
fn sync_batches(rx: mpsc::Receiver<Committed>, mut durability: Durability, metrics: &CoordinatorMetrics) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let synced = Instant::now();
        if failed.is_none() && group.iter().any(|b| matches!(b.outcome, CommitOutcome::Durable)) {
            if let Err(e) = durability.sync() {
                tracing::error!(error = %e, "the database's WAL could not be synced: nothing more is acknowledged");
                failed = Some(e.to_string());
            }
            metrics.store_sync_seconds.observe(synced.elapsed().as_secs_f64());
        }
        let sync = synced.elapsed();
        for batch in group {
            let outcome = match (batch.outcome, &failed) {
                (CommitOutcome::Durable, Some(why)) => CommitOutcome::NotDurable(why.clone()),
                (o, _) => o,
            };
            for answer in batch.answers {
                answer(&outcome);
            }
            let took = batch.started.elapsed();
            metrics.store_batch_seconds.observe(took.as_secs_f64());
            if took > SLOW_BATCH {
                tracing::warn!(
                    transitions = batch.transitions,
                    run_ms = batch.ran.as_millis() as u64,
                    commit_ms = (batch.committed - batch.ran).as_millis() as u64,
                    sync_ms = sync.as_millis() as u64,
                    "store batch slow"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LeasePolicy;

    fn writer(dir: &std::path::Path) -> (Writer, Arc<CoordinatorMetrics>) {
        let path = dir.join("w.db");
        let lock = DbLock::acquire(&path).unwrap();
        let store = Store::open(&path, LeasePolicy { ttl_ms: 60_000, max_attempts: 3 }).unwrap();
        let metrics = Arc::new(CoordinatorMetrics::default());
        (Writer::start(store, lock, metrics.clone()).unwrap(), metrics)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_transitions_share_commits_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (w, metrics) = writer(dir.path());
        let w = Arc::new(w);
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move {
                    w.run(move |s| {
                        if i % 10 == 9 {
                            // Fails inside its batch: its own write is undone.
                            s.register_worker(&format!("bad{i}"), "h", 1, 1, crate::store::BUILTIN_ONLY)?;
                            return Err(CoordinatorError::InvalidArgument(format!("no {i}")));
                        }
                        s.register_worker(&format!("w{i}"), "h", 1, 1, crate::store::BUILTIN_ONLY)
                    })
                    .await
                })
            })
            .collect();
        let mut ok = 0;
        for (i, c) in calls.into_iter().enumerate() {
            match c.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.to_string(), CoordinatorError::InvalidArgument(format!("no {i}")).to_string()),
            }
        }
        assert_eq!(ok, 180);
        let names: Vec<String> = w.run(|s| Ok(s.workers()?.into_iter().map(|r| r.name).collect())).await.unwrap();
        assert_eq!(names.len(), 180, "the failed transitions left nothing behind");
        assert!(names.iter().all(|n| n.starts_with('w')));
        assert_eq!(metrics.committed_transitions.get(), 201);
        assert!(metrics.commits.get() <= 201);
    }

    /// A writer whose syncs each wait for a token on the returned sender,
    /// then give the hook's next result.
    fn held_writer(
        dir: &std::path::Path,
        mut results: impl FnMut() -> std::io::Result<()> + Send + 'static,
    ) -> (Arc<Writer>, mpsc::Sender<()>) {
        let path = dir.join("w.db");
        let lock = DbLock::acquire(&path).unwrap();
        let mut store = Store::open(&path, LeasePolicy { ttl_ms: 60_000, max_attempts: 3 }).unwrap();
        store.defer_sync().unwrap().expect("a file database is in WAL mode");
        let (tokens, gate) = mpsc::channel::<()>();
        let hook = Durability::Hook(Box::new(move || {
            gate.recv().map_err(|_| std::io::Error::other("gate closed"))?;
            results()
        }));
        (Arc::new(Writer::start_with(store, lock, Arc::new(CoordinatorMetrics::default()), hook).unwrap()), tokens)
    }

    fn register(w: &Arc<Writer>, name: &'static str) -> tokio::task::JoinHandle<Result<String>> {
        let w = w.clone();
        tokio::spawn(
            async move { w.run(move |s| s.register_worker(name, "h", 1, 1, crate::store::BUILTIN_ONLY)).await },
        )
    }

    /// Waits until a reader sees the worker `name` committed.
    async fn committed(dir: &std::path::Path, name: &str) {
        let reader = Store::open_reader(&dir.join("w.db"), LeasePolicy { ttl_ms: 60_000, max_attempts: 3 }).unwrap();
        for _ in 0..500 {
            if reader.workers().unwrap().iter().any(|r| r.name == name) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{name} was never committed");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn answers_wait_for_their_sync_while_later_batches_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (w, tokens) = held_writer(dir.path(), || Ok(()));
        let a = register(&w, "a");
        committed(dir.path(), "a").await;
        // `a`'s sync is held: the writer goes on and commits `b`.
        let b = register(&w, "b");
        committed(dir.path(), "b").await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!a.is_finished() && !b.is_finished(), "committed but not yet synced: nobody is answered");
        tokens.send(()).unwrap();
        a.await.unwrap().expect("answered once its sync is done");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!b.is_finished(), "`b` came after the sync began: it waits for the next one");
        tokens.send(()).unwrap();
        b.await.unwrap().expect("answered after its own sync");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn after_a_failed_sync_nothing_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // The first sync fails; later ones would claim success (as an
        // fsync may after the kernel dropped the pages it could not write).
        let mut first = true;
        let (w, tokens) = held_writer(dir.path(), move || {
            if std::mem::replace(&mut first, false) { Err(std::io::Error::other("EIO")) } else { Ok(()) }
        });
        for _ in 0..4 {
            tokens.send(()).unwrap();
        }
        let a = register(&w, "a").await.unwrap().unwrap_err();
        assert!(a.is_storage_failure() && a.to_string().contains("could not be synced: EIO"), "{a}");
        let b = register(&w, "b").await.unwrap().unwrap_err();
        assert!(b.is_storage_failure(), "a later batch is not acknowledged either: {b}");
    }

    #[tokio::test]
    async fn a_file_database_defers_its_syncs_to_its_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("w.db"), LeasePolicy { ttl_ms: 60_000, max_attempts: 3 }).unwrap();
        let wal = store.defer_sync().unwrap().expect("WAL mode");
        assert_eq!(wal, dir.path().join("w.db-wal"));
        assert!(matches!(Durability::of(&mut store).unwrap(), Durability::Wal(_)), "the WAL exists and opens");
    }

    #[tokio::test]
    async fn a_panicking_transition_fails_alone_and_the_lock_is_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let (w, _) = writer(dir.path());
        let r: Result<()> = w.run(|_| panic!("boom")).await;
        assert!(r.unwrap_err().to_string().contains("writer stopped"));
        assert!(
            w.run(|s| s.register_worker("a", "h", 1, 1, crate::store::BUILTIN_ONLY)).await.is_ok(),
            "the writer goes on"
        );
        drop(w);
        DbLock::acquire(&dir.path().join("w.db")).expect("the lock is released once the writer is dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn when_a_full_disk_rolls_back_a_batch_nobody_in_it_is_told_ok() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let lock = DbLock::acquire(&path).unwrap();
        let mut store = Store::open(&path, LeasePolicy { ttl_ms: 60_000, max_attempts: 3 }).unwrap();
        store.limit_size(256 << 10).unwrap();
        let w = Arc::new(Writer::start(store, lock, Arc::new(CoordinatorMetrics::default())).unwrap());
        // Hold the writer so the next three transitions share one batch.
        let hold = {
            let w = w.clone();
            tokio::spawn(async move {
                w.run(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let before = {
            let w = w.clone();
            tokio::spawn(
                async move { w.run(|s| s.register_worker("before", "h", 1, 1, crate::store::BUILTIN_ONLY)).await },
            )
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let huge = {
            let w = w.clone();
            // A grid whose text alone (a comment of 1 MiB) outgrows the cap.
            let text = format!("# {}\n{}", "x".repeat(1 << 20), crate::store::testing::grid(1, 1));
            tokio::spawn(async move {
                w.run(move |s| s.submit(&text, "huge.toml", false, Default::default()).map(|_| ())).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let after = {
            let w = w.clone();
            tokio::spawn(
                async move { w.run(|s| s.register_worker("after", "h", 1, 1, crate::store::BUILTIN_ONLY)).await },
            )
        };
        hold.await.unwrap().unwrap();
        let huge = huge.await.unwrap().unwrap_err();
        assert!(huge.is_storage_failure(), "the failing transition says why: {huge}");
        let (before, after) = (before.await.unwrap(), after.await.unwrap());
        let names: Vec<String> = w.run(|s| Ok(s.workers()?.into_iter().map(|r| r.name).collect())).await.unwrap();
        // Acknowledged exactly when kept, on either side of the failure
        // (SQLite may roll back the whole batch on a full disk, or only the
        // failing statement).
        assert_eq!(before.is_ok(), names.contains(&"before".to_string()), "{before:?} {names:?}");
        assert_eq!(after.is_ok(), names.contains(&"after".to_string()), "{after:?} {names:?}");
        assert!(after.is_ok(), "a transition after the failure goes on in a new batch: {after:?}");
        assert!(w.run(|s| s.sweeps()).await.unwrap().is_empty());
    }
}
