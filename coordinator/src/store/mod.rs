//! Durable state in SQLite: sweeps, runs, leases, workers, partial and
//! merged results.
//!
//! Every state transition is atomic: a coordinator killed at any instant
//! restarts on the same file in a consistent state, and a report is either
//! applied (and its sequence number recorded) or not at all. The database
//! runs in WAL mode with `synchronous = FULL`, so what was acknowledged
//! survives power loss; the coordinator's writer instead commits with
//! `synchronous = NORMAL` and syncs the WAL itself before it acknowledges
//! anything ([`Store::defer_sync`], [`crate::writer`]).
//!
//! A transition is its own `IMMEDIATE` transaction when called alone. Under
//! [`Store::batch`] (the coordinator's group commit, [`crate::state`]) many
//! transitions share one transaction and one fsync, each inside its own
//! savepoint: a transition that fails rolls back alone, and nobody hears of
//! a transition's success before the batch's commit.
//!
//! Methods are synchronous; the async layer ([`crate::state`]) calls them
//! on its writer thread (transitions) or the blocking pool (reads).
//!
//! # Layout
//! * [`schema`] — tables, version, upgrades and the file checks.
//! * [`states`] — [`RunState`], [`WorkerState`], [`SweepState`].
//! * [`sweeps`] — submit, plan, status and cancel of sweeps.
//! * [`leases`] — workers, grants, heartbeats, releases, expiry and fencing.
//! * [`reports`] — reports, chunk reassembly, checkpoints and finishes.
//! * [`merges`] — what a cell merge reads and where its result is kept.
//! * [`runs`] — every run of a sweep, paged, and its failures grouped by reason.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::{CoordinatorError, Result};

pub mod leases;
pub mod merges;
pub mod reports;
pub mod runs;
pub mod schema;
pub mod states;
pub mod sweeps;

pub use leases::{BUILTIN_ONLY, HeartbeatAnswer, Lease, LeaseRef, Seen, WorkerRow};
pub use merges::{CellInputs, CellSource, EncodedMerge, SavedProbeRef, StoredCell};
pub use reports::{BlobKind, Chunk, Finished, Outcome, Progress, Report, ReportBody};
pub use runs::{EpochRow, FailureGroup, RunRow};
pub use schema::SCHEMA_VERSION;
pub use states::{RunState, SweepState, UnknownState, WorkerState};
pub use sweeps::{Submitted, SweepRow};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Numbers of runs and workers per state.
#[derive(Debug, Clone, Default)]
pub struct StateCounts {
    /// (run state, count), for the states that have runs.
    pub runs: Vec<(RunState, u64)>,
    /// (worker state, count), for the states that have workers.
    pub workers: Vec<(WorkerState, u64)>,
}

/// Timing and limits of leases.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease lapses this long after the last heartbeat or report.
    pub ttl_ms: i64,
    /// A run whose lease lapsed this many times is failed.
    pub max_attempts: u32,
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
    policy: LeasePolicy,
    /// Inside [`Store::batch`]: transitions open savepoints.
    in_batch: bool,
    /// A prune freed pages: [`Store::after_commit`] may return them.
    pages_freed: bool,
}

/// One transition's transaction: its own `IMMEDIATE` transaction, or a
/// savepoint inside a batch. Dropped without [`Tx::commit`], it rolls back.
pub(crate) enum Tx<'c> {
    Own(rusqlite::Transaction<'c>),
    Nested(rusqlite::Savepoint<'c>),
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match self {
            Tx::Own(t) => t,
            Tx::Nested(s) => s,
        }
    }
}

impl Tx<'_> {
    /// Commits the transaction, or releases the savepoint into its batch.
    pub(crate) fn commit(self) -> Result<()> {
        match self {
            Tx::Own(t) => t.commit()?,
            Tx::Nested(s) => s.commit()?,
        }
        Ok(())
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, policy: LeasePolicy) -> Result<Self> {
        let conn = Connection::open(path).map_err(|e| db_error(path, format!("cannot open: {e}")))?;
        schema::prepare(&conn).map_err(|e| file_error(path, e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Store { conn, policy, in_batch: false, pages_freed: false })
    }

    /// Makes this connection's commits skip their fsync (`synchronous =
    /// NORMAL`), for a caller that syncs the WAL file itself before it
    /// tells anyone a commit happened: returns that file's path. A commit
    /// in WAL mode appends its frames to the WAL and nothing else, so one
    /// `fdatasync` of the WAL after the commit returned makes it durable,
    /// as `synchronous = FULL` would have inside the commit; checkpoints
    /// and a WAL's reuse still sync on their own. `None` (and nothing
    /// changed) when the database is not in WAL mode: commits then keep
    /// their own fsync.
    pub fn defer_sync(&mut self) -> Result<Option<std::path::PathBuf>> {
        let mode: String = self.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        let Some(db) = self.conn.path().filter(|p| !p.is_empty()) else { return Ok(None) };
        if !mode.eq_ignore_ascii_case("wal") {
            return Ok(None);
        }
        let wal = std::path::PathBuf::from(format!("{db}-wal"));
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Some(wal))
    }

    /// Opens a read-only connection to a database a [`Store::open`] already
    /// prepared: reads on it (status, results, merge inputs) go on while the
    /// writer commits (WAL), and any write on it fails.
    pub fn open_reader(path: &Path, policy: LeasePolicy) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| db_error(path, format!("cannot open: {e}")))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| file_error(path, e.into()))?;
        schema::set_cache(&conn).map_err(|e| file_error(path, e))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Store { conn, policy, in_batch: false, pages_freed: false })
    }

    /// Refuses a database this build cannot read as it is (see
    /// [`Store::open_reader`], which does not upgrade): a foreign file, or
    /// another schema version, naming `path` and what to do.
    pub fn check_readable(&self, path: &Path) -> Result<()> {
        schema::check_readable(&self.conn).map_err(|e| file_error(path, e))
    }

    /// Caps the database at about `bytes` (SQLite `max_page_count`); a write
    /// past the cap fails like a full disk, and its transaction rolls back.
    pub fn limit_size(&mut self, bytes: u64) -> Result<()> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (bytes / page.max(1) as u64).max(1);
        let _: i64 = self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
        Ok(())
    }

    /// Runs `f` as one batch: every transition it makes shares a single
    /// `IMMEDIATE` transaction, each in its own savepoint, and one commit
    /// (one fsync) makes them all durable. Returns `f`'s value with the
    /// commit's outcome; when the commit fails, nothing `f` did is kept.
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Store) -> T) -> (T, Result<()>) {
        if let Err(e) = self.begin_batch() {
            tracing::warn!(error = %e, "could not begin a batch; each transition commits alone");
        }
        let out = f(self);
        (out, self.end_batch())
    }

    /// Runs the reads of `f` on one snapshot of the database (one read
    /// transaction, unless a transaction is already open): a transition
    /// committed meanwhile (a cell pruned, a run finished) is seen by all
    /// of them or by none.
    pub(crate) fn snapshot<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f(self);
        }
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let out = f(self);
        // A read transaction has nothing to keep: ending it cannot lose data.
        let end = self.conn.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
        let out = out?;
        end?;
        Ok(out)
    }

    /// Begins a batch ([`Store::batch`]): transitions until
    /// [`Store::end_batch`] share one transaction.
    pub fn begin_batch(&mut self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_batch = true;
        Ok(())
    }

    /// True when SQLite rolled the open batch back on its own: some errors
    /// (a full disk, an I/O error) end the whole transaction, not just the
    /// failing statement. Nothing of the batch so far was kept, and the
    /// batch is closed: transitions after it commit alone until the next
    /// [`Store::begin_batch`].
    pub fn batch_lost(&mut self) -> bool {
        let lost = self.in_batch && self.conn.is_autocommit();
        if lost {
            self.in_batch = false;
        }
        lost
    }

    /// Commits the open batch (one fsync, unless [`Store::defer_sync`] left
    /// it to the caller); when the commit fails, nothing
    /// of the batch is kept.
    /// Without an open batch (none began, or it was lost) there is nothing
    /// to commit: each transition since was its own transaction.
    pub fn end_batch(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.in_batch, false) {
            return Ok(());
        }
        if self.conn.is_autocommit() {
            return Err(CoordinatorError::Internal("the batch was rolled back by SQLite after an error".into()));
        }
        let committed = self.conn.execute_batch("COMMIT").map_err(CoordinatorError::from);
        if committed.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        committed
    }

    /// Runs `f` as one transition of the current batch: what `f` changed is
    /// kept if it returns `Ok` and undone if it fails or panics (a panic goes
    /// on unwinding). Outside a batch, `f` just runs; each store method is
    /// atomic on its own.
    pub fn transition<T>(&mut self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T> {
        if !self.in_batch {
            return f(self);
        }
        self.conn.execute_batch("SAVEPOINT transition")?;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self)));
        let end =
            if matches!(r, Ok(Ok(_))) { "RELEASE transition" } else { "ROLLBACK TO transition; RELEASE transition" };
        // After some errors SQLite has already rolled the whole batch back
        // (the savepoint is gone): the caller sees `f`'s own error, and the
        // writer sees [`Store::batch_lost`].
        let ended = if self.conn.is_autocommit() { Ok(()) } else { self.conn.execute_batch(end) };
        match r {
            Ok(Ok(v)) => ended.map(|()| v).map_err(CoordinatorError::from),
            Ok(Err(e)) => Err(e),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// How many runs and workers are in each state (for metrics): the runs
    /// from the per-sweep counts, without reading a run.
    pub fn counts(&self) -> Result<StateCounts> {
        let mut runs = self
            .conn
            .prepare_cached("SELECT state, sum(n) FROM run_counts GROUP BY state HAVING sum(n) > 0 ORDER BY state")?;
        let runs =
            runs.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<rusqlite::Result<_>>()?;
        let mut workers = self.conn.prepare_cached("SELECT state, count(*) FROM workers GROUP BY state")?;
        let workers =
            workers.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?.collect::<rusqlite::Result<_>>()?;
        Ok(StateCounts { runs, workers })
    }

    fn tx(&mut self) -> Result<Tx<'_>> {
        Ok(if self.in_batch {
            Tx::Nested(self.conn.savepoint()?)
        } else {
            Tx::Own(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
        })
    }
}

/// Statements through the connection's cache of prepared statements: the
/// hot transitions (grants, reports, finishes) run the same few dozen
/// statements thousands of times a second, and parsing and planning them
/// each time cost more than running them.
pub(crate) trait Cached {
    /// `execute`, with the statement prepared once per connection.
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    /// `query_row`, with the statement prepared once per connection.
    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P: rusqlite::Params, F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Prepared statements each connection keeps (rusqlite's default is 16).
const STATEMENT_CACHE: usize = 128;

fn db_error(path: &Path, message: String) -> CoordinatorError {
    CoordinatorError::Database { path: path.display().to_string(), message }
}

/// Names the file in an error met while opening it, and says what to do
/// with a corrupt one.
fn file_error(path: &Path, e: CoordinatorError) -> CoordinatorError {
    match e {
        CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(f, m))
            if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) =>
        {
            db_error(
                path,
                format!(
                    "the file is corrupted or not a database ({}); restore it from a backup or start a new file",
                    m.unwrap_or_else(|| f.to_string())
                ),
            )
        }
        CoordinatorError::Sqlite(s) => db_error(path, s.to_string()),
        CoordinatorError::Database { message, .. } => db_error(path, message),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A store on a temporary file, and the small grids the unit tests use.

    use super::*;
    use gradsweep_shared::grid::GridLimits;

    /// A store on a fresh file in a temporary directory (kept alive with
    /// it): one-minute leases, three attempts.
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        store_with(LeasePolicy { ttl_ms: 60_000, max_attempts: 3 })
    }

    /// A store with the given lease policy (a negative TTL makes every
    /// lease lapse at once).
    pub(crate) fn store_with(policy: LeasePolicy) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("t.db"), policy).unwrap();
        (dir, s)
    }

    /// A grid of `cells` learning rates × `seeds` seeds of a small net on
    /// the bundled digits, one epoch, one probe at the end.
    pub(crate) fn grid(cells: usize, seeds: usize) -> String {
        let lrs: Vec<String> = (0..cells).map(|i| format!("{}", 0.01 * (i + 1) as f64)).collect();
        let seeds: Vec<String> = (0..seeds).map(|i| i.to_string()).collect();
        format!(
            "[sweep]\nname = \"unit\"\nseeds = [{}]\n[train]\nmodel = \"mlp:64-8-10\"\ndataset = \"digits\"\n\
             epochs = 1\n[probe]\nevery_epochs = 1\nsketch_rank = 8\n[grid]\nlr = [{}]\n",
            seeds.join(", "),
            lrs.join(", ")
        )
    }

    /// [`grid`]'s plan.
    pub(crate) fn plan(cells: usize, seeds: usize) -> gradsweep_shared::grid::SweepPlan {
        gradsweep_shared::grid::parse_grid(&grid(cells, seeds), "unit.toml", GridLimits::default()).unwrap()
    }

    /// Submits [`grid`] and returns the sweep's identifier.
    pub(crate) fn submit(s: &mut Store, cells: usize, seeds: usize) -> String {
        s.submit(&grid(cells, seeds), "unit.toml", false, GridLimits::default()).unwrap().sweep_id
    }

    /// Registers a worker of one slot.
    pub(crate) fn worker(s: &mut Store, name: &str) -> String {
        s.register_worker(name, "host", 1, 1, crate::store::BUILTIN_ONLY).unwrap()
    }

    /// A store with a sweep of `cells` × `seeds` runs and one worker `a`
    /// holding the first run's lease.
    pub(crate) fn leased(cells: usize, seeds: usize) -> (tempfile::TempDir, Store, String, Lease) {
        let (dir, mut s) = store();
        submit(&mut s, cells, seeds);
        let w = worker(&mut s, "a");
        let l = s.acquire(&w).unwrap().unwrap();
        (dir, s, w, l)
    }

    /// Report `seq` of lease `l` from worker `w`.
    pub(crate) fn report(w: &str, l: &Lease, seq: u64, body: ReportBody) -> Report {
        Report { worker_id: w.into(), run_id: l.run_id.clone(), epoch: l.epoch, seq, body }
    }

    /// A progress report body at `step` of 10 (epoch `step` of 10, one
    /// step an epoch).
    pub(crate) fn progress(step: u64) -> ReportBody {
        ReportBody::Progress(super::Progress {
            step,
            total_steps: 10,
            train_loss: 0.5,
            epoch: step as u32,
            lr: 0.1,
            seconds: 0.25,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_batch_commits_its_transitions_together_and_a_failed_one_alone_rolls_back() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 2, 1);
        let w = worker(&mut s, "a");
        let (out, committed) = s.batch(|s| {
            let first = s.acquire(&w).unwrap().unwrap();
            // Fenced: a report from an epoch that never was fails inside
            // the batch and takes nothing else with it.
            let bad = s.apply_report(&Report {
                worker_id: w.clone(),
                run_id: first.run_id.clone(),
                epoch: first.epoch + 7,
                seq: 1,
                body: progress(1),
            });
            let second = s.acquire(&w).unwrap().unwrap();
            (first, bad.is_err(), second)
        });
        committed.unwrap();
        assert!(out.1, "the stale report was refused");
        let row = s.sweep(&sweep).unwrap();
        assert_eq!(row.count(RunState::Leased), 2, "both grants of the batch were committed");
        assert_ne!(out.0.run_id, out.2.run_id);
    }

    #[test]
    fn a_reader_sees_what_the_writer_committed_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let policy = LeasePolicy { ttl_ms: 1000, max_attempts: 1 };
        let mut w = Store::open(&path, policy).unwrap();
        let mut r = Store::open_reader(&path, policy).unwrap();
        let sweep = submit(&mut w, 1, 2);
        assert_eq!(r.sweep(&sweep).unwrap().total(), 2);
        assert!(r.cancel(&sweep).is_err(), "a reader refuses writes");
        assert_eq!(w.sweep(&sweep).unwrap().state, SweepState::Active);
    }

    #[test]
    fn counts_are_typed_states() {
        let (_dir, mut s) = store();
        submit(&mut s, 3, 1);
        worker(&mut s, "a");
        let c = s.counts().unwrap();
        assert_eq!(c.runs, vec![(RunState::Queued, 3)]);
        assert_eq!(c.workers, vec![(WorkerState::Active, 1)]);
    }
}
