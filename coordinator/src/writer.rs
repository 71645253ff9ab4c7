//! Group commit: one thread owns the database's write connection.
//!
//! Every state transition (a grant, a heartbeat, a report, a finish, a
//! submit…) is sent to the writer thread as a job. The thread takes every
//! job waiting, runs them in one SQLite transaction, each in its own
//! savepoint ([`Store::batch`]), commits once — one fsync for the lot — and
//! only then answers each caller. So under load a single fsync covers
//! hundreds of transitions, nothing is acknowledged before it is durable,
//! and a transition that fails rolls back alone.
//!
//! The thread also holds the coordinator's [`DbLock`]: the lock is released
//! only after the write connection is closed, so a coordinator started
//! right after this one stopped never overlaps it on the file.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use crate::error::{CoordinatorError, Result};
use crate::lock::DbLock;
use crate::metrics::CoordinatorMetrics;
use crate::store::Store;

/// Most transitions committed together (a bound on one batch's latency).
const MAX_BATCH: usize = 1024;

/// A batch slower than this is logged (a warning naming its size and
/// where the time went): every transition queued behind it waited as long.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

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
}

impl CommitOutcome {
    fn from(r: Result<()>) -> Self {
        match r {
            Ok(()) => CommitOutcome::Durable,
            Err(CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(e, m))) => CommitOutcome::Lost(e, m),
            Err(e) => CommitOutcome::LostOther(e.to_string()),
        }
    }

    /// The error each transition of a failed batch reports (a full disk
    /// stays recognisable as a storage failure).
    fn error(&self) -> Option<CoordinatorError> {
        match self {
            CommitOutcome::Durable => None,
            CommitOutcome::Lost(e, m) => Some(CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(*e, m.clone()))),
            CommitOutcome::LostOther(m) => Some(CoordinatorError::Internal(format!("commit failed: {m}"))),
        }
    }
}

/// The handle to the writer thread. Dropping the last one stops the
/// thread after the jobs already sent, closes the connection and releases
/// the database lock.
pub struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread on `store`, holding `lock` until it stops.
    pub fn start(store: Store, lock: DbLock, metrics: Arc<CoordinatorMetrics>) -> Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("gradsweep-store-writer".into())
            .spawn(move || run(store, lock, rx, &metrics))
            .map_err(|e| CoordinatorError::Internal(format!("cannot start the store writer: {e}")))?;
        Ok(Writer { jobs: Some(jobs), thread: Some(thread) })
    }

    /// Runs the transition `f` in the next batch and returns its value once
    /// the batch is durable; an error of `f` (its own changes rolled back)
    /// or of the batch's commit otherwise.
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

fn run(mut store: Store, lock: DbLock, rx: mpsc::Receiver<Job>, metrics: &CoordinatorMetrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        let started = std::time::Instant::now();
        let mut answers = Vec::with_capacity(n);
        if let Err(e) = store.begin_batch() {
            // Each transition then commits alone, and says so if it cannot.
            tracing::warn!(error = %e, "could not begin a batch; committing transitions one by one");
        }
        for job in jobs {
            // A transition that panics is rolled back (its savepoint
            // unwinds) and its caller hears that the writer stopped for it;
            // the batch goes on.
            if let Ok(answer) = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut store))) {
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
        let committed = store.end_batch();
        let took = started.elapsed();
        metrics.store_batch_seconds.observe(took.as_secs_f64());
        if took > SLOW_BATCH {
            tracing::warn!(
                transitions = n,
                run_ms = ran.as_millis() as u64,
                commit_ms = (took - ran).as_millis() as u64,
                "store batch slow"
            );
        }
        metrics.commits.inc();
        metrics.committed_transitions.add(n as u64);
        let outcome = CommitOutcome::from(committed);
        for answer in answers {
            answer(&outcome);
        }
        store.after_commit();
    }
    drop(store);
    drop(lock);
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
