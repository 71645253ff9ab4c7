//! Durable state in SQLite: sweeps, runs, leases, workers, partial and
//! merged results.
//!
//! Every state transition is one `IMMEDIATE` transaction, so a coordinator
//! killed at any instant restarts on the same file in a consistent state: a
//! report is either applied (and its sequence number recorded) or not at
//! all. The database runs in WAL mode with `synchronous = FULL`, so what was
//! acknowledged survives power loss. The file carries an application id and
//! a schema version; a foreign or newer file is refused.
//!
//! Methods are synchronous; the async layer ([`crate::state`]) calls them
//! on the blocking pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use gradsweep_shared::checkpoint::Checkpoint;
use gradsweep_shared::grid::{GridLimits, SweepPlan, parse_grid};
use gradsweep_shared::results::{CellResult, RESULTS_VERSION, RunData, cell_result};
use gradsweep_shared::run::ProbeRecord;
use gradsweep_shared::spec::{RunFinal, RunSpec};
use gradsweep_shared::stats::RankThresholds;
use gradsweep_shared::trajectory::TrajectorySums;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{CoordinatorError, Result};
use crate::shards::PassOwner;

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 2;
/// SQLite `application_id` marking a gradsweep database ("GSWP").
const APPLICATION_ID: i64 = 0x4753_5750;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Numbers of runs and workers per state.
#[derive(Debug, Clone, Default)]
pub struct StateCounts {
    /// (run state, count).
    pub runs: Vec<(String, u64)>,
    /// (worker state, count).
    pub workers: Vec<(String, u64)>,
}

/// Run states as stored.
pub mod run_state {
    /// Waiting for a worker.
    pub const QUEUED: &str = "queued";
    /// Leased to a worker.
    pub const LEASED: &str = "leased";
    /// Finished with results.
    pub const COMPLETED: &str = "completed";
    /// Finished with a diverged loss (results kept).
    pub const DIVERGED: &str = "diverged";
    /// Ended with an error.
    pub const FAILED: &str = "failed";
    /// Cancelled by the user.
    pub const CANCELLED: &str = "cancelled";
}
use run_state::*;

/// A run granted to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Run identifier.
    pub run_id: String,
    /// Lease epoch.
    pub epoch: u64,
    /// Sweep identifier.
    pub sweep_id: String,
    /// The run spec as JSON.
    pub spec_json: String,
    /// 0, or the sequence number of the checkpoint to resume from.
    pub resume_seq: u64,
}

/// Which result a blob chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A probe's [`ProbeRecord`].
    Probe,
    /// The run's [`TrajectorySums`] (JSON).
    Trajectory,
    /// The run's [`Checkpoint`] at a segment boundary.
    Checkpoint,
}

/// One piece of a serialised result.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Probe or trajectory.
    pub kind: BlobKind,
    /// Probe index (0 for the trajectory).
    pub index: u32,
    /// Position of this chunk.
    pub chunk_index: u32,
    /// Number of chunks of the blob.
    pub chunk_count: u32,
    /// Payload.
    pub data: Vec<u8>,
}

/// What a report carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportBody {
    /// Training progress.
    Progress {
        /// Steps done.
        step: u64,
        /// Steps in all.
        total_steps: u64,
        /// Recent training loss.
        train_loss: f64,
    },
    /// A piece of a result.
    Chunk(Chunk),
}

/// A report from a worker about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Sender.
    pub worker_id: String,
    /// The run.
    pub run_id: String,
    /// Lease epoch.
    pub epoch: u64,
    /// Sequence number within (run, epoch), from 1.
    pub seq: u64,
    /// Content.
    pub body: ReportBody,
}

/// How a worker ended a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All results sent.
    Completed(RunFinal),
    /// The loss diverged; the results sent so far are kept.
    Diverged(RunFinal),
    /// The run could not be executed.
    Failed(String),
}

/// Counts of a sweep's runs by state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepRow {
    /// Identifier.
    pub id: String,
    /// Name.
    pub name: String,
    /// active, completed or cancelled.
    pub state: String,
    /// Cells.
    pub cells: u32,
    /// Runs by state.
    pub counts: BTreeMap<String, u32>,
    /// Completed-run equivalents (leased runs count by their step fraction).
    pub progress: f64,
    /// Creation time.
    pub created_ms: i64,
}

impl SweepRow {
    /// Runs in all.
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    /// Runs in `state`.
    pub fn count(&self, state: &str) -> u32 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// True when no run is queued or leased.
    pub fn finished(&self) -> bool {
        self.count(QUEUED) + self.count(LEASED) == 0
    }
}

/// A worker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Identifier.
    pub id: String,
    /// Name given by the worker.
    pub name: String,
    /// Host.
    pub hostname: String,
    /// Concurrent runs.
    pub slots: u32,
    /// active, draining, lost or left.
    pub state: String,
    /// Runs it holds.
    pub runs: Vec<String>,
    /// Last heartbeat.
    pub last_heartbeat_ms: i64,
}

/// A lease named by run and epoch.
pub type LeaseRef = (String, u64);

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatAnswer {
    /// Leases the worker named but no longer holds.
    pub lost: Vec<LeaseRef>,
    /// The worker is asked to drain.
    pub drain: bool,
}

/// Timing and limits of leases.
#[derive(Debug, Clone, Copy)]
pub struct LeasePolicy {
    /// A lease lapses this long after the last heartbeat or report.
    pub ttl_ms: i64,
    /// A run whose lease lapsed this many times is failed.
    pub max_attempts: u32,
}

/// Outcome of a successful submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// Sweep identifier.
    pub sweep_id: String,
    /// True when an identical sweep already existed and was returned.
    pub existing: bool,
    /// Cells.
    pub cells: u32,
    /// Runs.
    pub runs: u32,
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
    policy: LeasePolicy,
}

const SCHEMA: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sweeps (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    file_name TEXT NOT NULL,
    grid_toml TEXT NOT NULL,
    plan_json TEXT NOT NULL,
    state TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX sweeps_fingerprint ON sweeps(fingerprint);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    cell INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    spec_json TEXT NOT NULL,
    params INTEGER NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    lease_expires_ms INTEGER,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    last_loss REAL,
    error TEXT,
    final_json TEXT,
    queue_order INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX runs_queue ON runs(state, queue_order);
CREATE INDEX runs_sweep ON runs(sweep_id, cell);
CREATE TABLE probes (run_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (run_id, idx));
CREATE TABLE trajectories (run_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE checkpoints (
    run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, step INTEGER NOT NULL, probes_done INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE chunks (
    run_id TEXT NOT NULL, kind INTEGER NOT NULL, idx INTEGER NOT NULL, chunk INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (run_id, kind, idx, chunk)
);
CREATE TABLE cells (sweep_id TEXT NOT NULL, cell INTEGER NOT NULL, runs_merged INTEGER NOT NULL, result_json TEXT NOT NULL,
    PRIMARY KEY (sweep_id, cell));
CREATE TABLE workers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hostname TEXT NOT NULL, slots INTEGER NOT NULL, state TEXT NOT NULL,
    registered_ms INTEGER NOT NULL, last_heartbeat_ms INTEGER NOT NULL
);
"#;

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, policy: LeasePolicy) -> Result<Self> {
        let db_err = |message: String| CoordinatorError::Database { path: path.display().to_string(), message };
        let conn = Connection::open(path).map_err(|e| db_err(format!("cannot open: {e}")))?;
        Self::init(conn, policy).map_err(|e| match e {
            CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(f, m))
                if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) =>
            {
                db_err(format!(
                    "the file is corrupted or not a database ({}); restore it from a backup or start a new file",
                    m.unwrap_or_else(|| f.to_string())
                ))
            }
            CoordinatorError::Sqlite(s) => db_err(s.to_string()),
            CoordinatorError::Database { message, .. } => db_err(message),
            other => other,
        })
    }

    fn init(conn: Connection, policy: LeasePolicy) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
        if app == 0 && tables == 0 {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); \
                 PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
            ))?;
        } else if app != APPLICATION_ID {
            return Err(CoordinatorError::Database {
                path: String::new(),
                message: "not a gradsweep database (foreign application id); refusing to touch it".into(),
            });
        }
        let version: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))?
            .parse()
            .map_err(|_| CoordinatorError::Internal("unreadable schema_version".into()))?;
        if version > SCHEMA_VERSION {
            return Err(CoordinatorError::Database {
                path: String::new(),
                message: format!(
                    "schema version {version} was written by a newer gradsweep; this build reads up to version \
                     {SCHEMA_VERSION}. Use the newer build, or another database file"
                ),
            });
        }
        if version == 1 {
            // Version 2 added checkpoints; nothing else changed.
            conn.execute_batch(
                "BEGIN IMMEDIATE; CREATE TABLE checkpoints (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, \
                 step INTEGER NOT NULL, probes_done INTEGER NOT NULL, data BLOB NOT NULL); \
                 UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;",
            )?;
            tracing::info!("database upgraded from schema version 1 to 2");
        } else if version != SCHEMA_VERSION {
            return Err(CoordinatorError::Database {
                path: String::new(),
                message: format!("schema version {version}, this build reads version {SCHEMA_VERSION}"),
            });
        }
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(CoordinatorError::Database {
                path: String::new(),
                message: format!(
                    "the file is corrupted (integrity check: {check}); restore it from a backup or start a new file"
                ),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let store = Store { conn, policy };
        Ok(store)
    }

    /// Caps the database at about `bytes` (SQLite `max_page_count`); a write
    /// past the cap fails like a full disk, and its transaction rolls back.
    pub fn limit_size(&mut self, bytes: u64) -> Result<()> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (bytes / page.max(1) as u64).max(1);
        let _: i64 = self.conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| r.get(0))?;
        Ok(())
    }

    /// After a restart: give every outstanding lease a fresh TTL so workers
    /// that kept computing while the coordinator was away can reconnect.
    pub fn grant_restart_grace(&mut self) -> Result<usize> {
        let until = now_ms() + self.policy.ttl_ms;
        Ok(self.conn.execute(
            "UPDATE runs SET lease_expires_ms = max(lease_expires_ms, ?1) WHERE state = ?2",
            params![until, LEASED],
        )?)
    }

    fn tx(&mut self) -> Result<rusqlite::Transaction<'_>> {
        Ok(self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    // ------------------------------------------------------------- sweeps

    /// Validates and stores a grid. An identical normalised grid returns the
    /// existing sweep unless `force_new`.
    pub fn submit(&mut self, text: &str, file_name: &str, force_new: bool, limits: GridLimits) -> Result<Submitted> {
        let plan = parse_grid(text, file_name, limits)?;
        let fingerprint = plan.fingerprint();
        let tx = self.tx()?;
        if !force_new {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT id FROM sweeps WHERE fingerprint = ?1 ORDER BY created_ms LIMIT 1",
                    [&fingerprint],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = existing {
                return Ok(Submitted {
                    sweep_id: id,
                    existing: true,
                    cells: plan.cells.len() as u32,
                    runs: plan.run_count() as u32,
                });
            }
        }
        let same: i64 =
            tx.query_row("SELECT count(*) FROM sweeps WHERE fingerprint = ?1", [&fingerprint], |r| r.get(0))?;
        let slug: String = plan
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' })
            .take(40)
            .collect();
        let id = if same == 0 {
            format!("{slug}-{}", &fingerprint[..8])
        } else {
            format!("{slug}-{}-{}", &fingerprint[..8], same + 1)
        };
        let now = now_ms();
        let plan_json = serde_json::to_string(&plan).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        tx.execute(
            "INSERT INTO sweeps (id, name, fingerprint, file_name, grid_toml, plan_json, state, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![id, plan.name, fingerprint, file_name, text, plan_json, now],
        )?;
        let base_order: i64 = tx.query_row("SELECT coalesce(max(queue_order), 0) FROM runs", [], |r| r.get(0))?;
        let mut order = base_order;
        {
            let mut ins = tx.prepare(
                "INSERT INTO runs (id, sweep_id, cell, seed, spec_json, params, state, queue_order, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // Seeds outermost: the first replica of every cell finishes first.
            for &seed in &plan.seeds {
                for cell in &plan.cells {
                    order += 1;
                    let spec = cell.run_spec(seed);
                    let d = gradsweep_shared::run::param_count(&spec)
                        .map_err(|e| CoordinatorError::InvalidArgument(e.to_string()))?;
                    let spec_json =
                        serde_json::to_string(&spec).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
                    let run_id = format!("{id}/c{}/s{seed}", cell.index);
                    ins.execute(params![run_id, id, cell.index, seed as i64, spec_json, d as i64, QUEUED, order, now])?;
                }
            }
        }
        tx.commit()?;
        tracing::info!(sweep_id = %id, cells = plan.cells.len(), runs = plan.run_count(), "sweep submitted");
        Ok(Submitted { sweep_id: id, existing: false, cells: plan.cells.len() as u32, runs: plan.run_count() as u32 })
    }

    /// The sweep's expanded plan.
    pub fn plan(&self, sweep_id: &str) -> Result<SweepPlan> {
        let json: String = self
            .conn
            .query_row("SELECT plan_json FROM sweeps WHERE id = ?1", [sweep_id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "sweep", id: sweep_id.into() })?;
        serde_json::from_str(&json).map_err(|e| CoordinatorError::Internal(format!("stored plan unreadable: {e}")))
    }

    /// Status of one sweep.
    pub fn sweep(&self, sweep_id: &str) -> Result<SweepRow> {
        let mut row = self
            .conn
            .query_row("SELECT id, name, state, plan_json, created_ms FROM sweeps WHERE id = ?1", [sweep_id], |r| {
                let plan_json: String = r.get(3)?;
                let cells = serde_json::from_str::<SweepPlan>(&plan_json).map(|p| p.cells.len() as u32).unwrap_or(0);
                Ok(SweepRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    state: r.get(2)?,
                    cells,
                    created_ms: r.get(4)?,
                    ..Default::default()
                })
            })
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "sweep", id: sweep_id.into() })?;
        let mut stmt = self.conn.prepare(
            "SELECT state, count(*), sum(CASE WHEN total_steps > 0 THEN CAST(step AS REAL) / total_steps ELSE 0 END) \
             FROM runs WHERE sweep_id = ?1 GROUP BY state",
        )?;
        let mut rows = stmt.query([sweep_id])?;
        while let Some(r) = rows.next()? {
            let state: String = r.get(0)?;
            let n: u32 = r.get(1)?;
            let frac: f64 = r.get(2)?;
            row.progress += match state.as_str() {
                LEASED | QUEUED => frac,
                _ => n as f64,
            };
            row.counts.insert(state, n);
        }
        Ok(row)
    }

    /// All sweeps, newest first.
    pub fn sweeps(&self) -> Result<Vec<SweepRow>> {
        let ids: Vec<String> = self
            .conn
            .prepare("SELECT id FROM sweeps ORDER BY created_ms DESC, id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter().map(|id| self.sweep(id)).collect()
    }

    /// Cancels a sweep: its queued and leased runs end as cancelled.
    pub fn cancel(&mut self, sweep_id: &str) -> Result<u32> {
        let tx = self.tx()?;
        let n = tx.execute("UPDATE sweeps SET state = 'cancelled' WHERE id = ?1 AND state = 'active'", [sweep_id])?;
        if n == 0 {
            let exists: bool =
                tx.query_row("SELECT count(*) > 0 FROM sweeps WHERE id = ?1", [sweep_id], |r| r.get(0))?;
            if !exists {
                return Err(CoordinatorError::NotFound { kind: "sweep", id: sweep_id.into() });
            }
        }
        let runs = tx.execute(
            "UPDATE runs SET state = ?1, worker_id = NULL, lease_expires_ms = NULL, updated_ms = ?2 \
             WHERE sweep_id = ?3 AND state IN (?4, ?5)",
            params![CANCELLED, now_ms(), sweep_id, QUEUED, LEASED],
        )?;
        tx.execute(
            "DELETE FROM chunks WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?1 AND state = ?2)",
            params![sweep_id, CANCELLED],
        )?;
        tx.commit()?;
        tracing::info!(sweep_id, runs_cancelled = runs, "sweep cancelled");
        Ok(runs as u32)
    }

    /// What each cell's results need: a stored merge when it is current
    /// (it covers every finished run of the cell, was computed by this
    /// build, and no rank thresholds `th` are asked for), otherwise the
    /// inputs to compute it from. Loading is quick; merging is not, so the
    /// caller merges after releasing the store ([`CellSource::compute`]).
    pub fn cell_sources(&self, sweep_id: &str, th: &RankThresholds) -> Result<Vec<CellSource>> {
        let plan = self.plan(sweep_id)?;
        let mut stored: BTreeMap<u32, (usize, CellResult)> = BTreeMap::new();
        if th.is_empty() {
            let mut stmt = self.conn.prepare("SELECT cell, runs_merged, result_json FROM cells WHERE sweep_id = ?1")?;
            let mut rows = stmt.query([sweep_id])?;
            while let Some(r) = rows.next()? {
                let json: String = r.get(2)?;
                let c: CellResult = serde_json::from_str(&json)
                    .map_err(|e| CoordinatorError::Internal(format!("stored cell unreadable: {e}")))?;
                stored.insert(r.get(0)?, (r.get::<_, i64>(1)? as usize, c));
            }
        }
        let done = self.finished_per_cell(sweep_id)?;
        plan.cells
            .iter()
            .map(|cell| {
                let finished = done.get(&cell.index).copied().unwrap_or(0);
                match stored.remove(&cell.index) {
                    Some((merged, c)) if merged == finished && c.results_version >= RESULTS_VERSION => {
                        Ok(CellSource::Ready(Box::new(c)))
                    }
                    _ => Ok(CellSource::Compute(Box::new(CellInputs {
                        sweep_id: sweep_id.to_string(),
                        cell: cell.clone(),
                        seeds_total: plan.seeds.len(),
                        runs: if finished > 0 { load_cell_runs(&self.conn, sweep_id, cell.index)? } else { vec![] },
                    }))),
                }
            })
            .collect()
    }

    /// Completed and diverged runs per cell of a sweep.
    fn finished_per_cell(&self, sweep_id: &str) -> Result<BTreeMap<u32, usize>> {
        let mut stmt = self
            .conn
            .prepare("SELECT cell, count(*) FROM runs WHERE sweep_id = ?1 AND state IN (?2, ?3) GROUP BY cell")?;
        let rows = stmt
            .query_map(params![sweep_id, COMPLETED, DIVERGED], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as usize))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The inputs of one cell's merge: its finished runs as they are now.
    pub fn cell_inputs(&self, sweep_id: &str, cell: u32) -> Result<CellInputs> {
        let plan = self.plan(sweep_id)?;
        let c = plan
            .cells
            .iter()
            .find(|c| c.index == cell)
            .ok_or_else(|| CoordinatorError::Internal(format!("no cell {cell} in sweep {sweep_id}")))?;
        Ok(CellInputs {
            sweep_id: sweep_id.to_string(),
            cell: c.clone(),
            seeds_total: plan.seeds.len(),
            runs: load_cell_runs(&self.conn, sweep_id, cell)?,
        })
    }

    /// Stores a cell's merged statistics (computed with no user thresholds)
    /// unless what is stored already covers as many runs and was computed
    /// by this build: merges that finish out of order never replace a newer
    /// one. Returns whether it was stored.
    pub fn store_cell(&mut self, sweep_id: &str, result: &CellResult) -> Result<bool> {
        let json = serde_json::to_string(result).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
        let tx = self.tx()?;
        // SQLite reads the version out of the stored JSON: no parse of a
        // whole cell under the lock.
        let current: Option<(i64, i64)> = tx
            .query_row(
                "SELECT runs_merged, coalesce(json_extract(result_json, '$.results_version'), 0) FROM cells \
                 WHERE sweep_id = ?1 AND cell = ?2",
                params![sweep_id, result.index],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let newer = match current {
            None => true,
            Some((merged, version)) => (merged as usize) < result.seeds_done || version < RESULTS_VERSION as i64,
        };
        if newer {
            tx.execute(
                "INSERT OR REPLACE INTO cells (sweep_id, cell, runs_merged, result_json) VALUES (?1, ?2, ?3, ?4)",
                params![sweep_id, result.index, result.seeds_done as i64, json],
            )?;
            tx.commit()?;
        }
        Ok(newer)
    }

    /// Cells whose stored merge is missing or behind their finished runs
    /// (a coordinator stopped before merging them), to merge after a restart.
    pub fn stale_cells(&self) -> Result<Vec<(String, u32)>> {
        let mut stmt = self.conn.prepare(
            "SELECT r.sweep_id, r.cell FROM runs r LEFT JOIN cells c ON c.sweep_id = r.sweep_id AND c.cell = r.cell \
             WHERE r.state IN (?1, ?2) GROUP BY r.sweep_id, r.cell \
             HAVING count(*) > coalesce(max(c.runs_merged), 0)",
        )?;
        let rows = stmt
            .query_map(params![COMPLETED, DIVERGED], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    // ------------------------------------------------------------ workers

    /// Registers a worker.
    pub fn register_worker(&mut self, name: &str, hostname: &str, slots: u32, pid: u32) -> Result<String> {
        let now = now_ms();
        let tx = self.tx()?;
        let n: i64 = tx.query_row("SELECT count(*) FROM workers", [], |r| r.get(0))?;
        let id = format!("w{}-{:x}", n + 1, (now as u64 ^ ((pid as u64) << 20)) & 0xff_ffff);
        tx.execute(
            "INSERT INTO workers (id, name, hostname, slots, state, registered_ms, last_heartbeat_ms) VALUES (?1, ?2, ?3, ?4, 'active', ?5, ?5)",
            params![id, name, hostname, slots, now],
        )?;
        tx.commit()?;
        tracing::info!(worker_id = %id, name, hostname, slots, "worker registered");
        Ok(id)
    }

    /// Records a heartbeat and extends the leases the worker still holds.
    /// `None` for an unknown worker.
    pub fn heartbeat(&mut self, worker_id: &str, runs: &[LeaseRef]) -> Result<Option<HeartbeatAnswer>> {
        let now = now_ms();
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let state: Option<String> =
            tx.query_row("SELECT state FROM workers WHERE id = ?1", [worker_id], |r| r.get(0)).optional()?;
        let Some(state) = state else { return Ok(None) };
        let state = if state == "lost" { "active".to_string() } else { state };
        tx.execute(
            "UPDATE workers SET last_heartbeat_ms = ?1, state = ?2 WHERE id = ?3",
            params![now, state, worker_id],
        )?;
        let mut lost = vec![];
        for (run_id, epoch) in runs {
            let n = tx.execute(
                "UPDATE runs SET lease_expires_ms = ?1 WHERE id = ?2 AND epoch = ?3 AND worker_id = ?4 AND state = ?5",
                params![now + ttl, run_id, *epoch as i64, worker_id, LEASED],
            )?;
            if n == 0 {
                lost.push((run_id.clone(), *epoch));
            }
        }
        tx.commit()?;
        Ok(Some(HeartbeatAnswer { lost, drain: state == "draining" }))
    }

    /// Grants the oldest queued run of an active sweep to the worker.
    pub fn acquire(&mut self, worker_id: &str) -> Result<Option<Lease>> {
        let now = now_ms();
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let state: Option<String> =
            tx.query_row("SELECT state FROM workers WHERE id = ?1", [worker_id], |r| r.get(0)).optional()?;
        match state.as_deref() {
            None => return Err(CoordinatorError::NotFound { kind: "worker", id: worker_id.into() }),
            Some("draining") | Some("left") => return Ok(None),
            _ => {}
        }
        let next: Option<(String, String, i64, String)> = tx
            .query_row(
                "SELECT r.id, r.sweep_id, r.epoch, r.spec_json FROM runs r JOIN sweeps s ON s.id = r.sweep_id \
                 WHERE r.state = ?1 AND s.state = 'active' ORDER BY r.queue_order LIMIT 1",
                [QUEUED],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((run_id, sweep_id, epoch, spec_json)) = next else { return Ok(None) };
        let epoch = epoch + 1;
        // Rewinds to the last checkpoint (a no-op for a run requeued that way).
        let resume_seq = requeue(&tx, &run_id)?;
        tx.execute(
            "UPDATE runs SET state = ?1, epoch = ?2, worker_id = ?3, lease_expires_ms = ?4, \
             attempts = attempts + 1, updated_ms = ?5 WHERE id = ?6",
            params![LEASED, epoch, worker_id, now + ttl, now, run_id],
        )?;
        tx.execute(
            "UPDATE workers SET last_heartbeat_ms = ?1, state = 'active' WHERE id = ?2 AND state = 'lost'",
            params![now, worker_id],
        )?;
        tx.commit()?;
        tracing::info!(run_id = %run_id, epoch, worker_id, resume_seq, "run leased");
        Ok(Some(Lease { run_id, epoch: epoch as u64, sweep_id, spec_json, resume_seq }))
    }

    /// Whether the worker takes work: registered, neither draining nor gone
    /// (a helper gets probe shards only then).
    pub fn takes_work(&self, worker_id: &str) -> Result<bool> {
        let state: Option<String> =
            self.conn.query_row("SELECT state FROM workers WHERE id = ?1", [worker_id], |r| r.get(0)).optional()?;
        Ok(matches!(state.as_deref(), Some(s) if s != "draining" && s != "left"))
    }

    /// The sweep and spec of a run whose lease `owner` holds (to publish a
    /// probe pass of it); refused like a report from a stale lease.
    pub fn pass_source(&mut self, owner: &PassOwner) -> Result<(String, String)> {
        let tx = self.tx()?;
        Self::check_lease(&tx, &owner.worker_id, &owner.run_id, owner.epoch)?;
        let row = tx.query_row("SELECT sweep_id, spec_json FROM runs WHERE id = ?1", [&owner.run_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        tx.commit()?;
        Ok(row)
    }

    /// Of the `owners` of probe passes, those whose run lease is current.
    pub fn current_owners(&self, owners: Vec<PassOwner>) -> Result<Vec<PassOwner>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT count(*) > 0 FROM runs WHERE id = ?1 AND epoch = ?2 AND worker_id = ?3 AND state = ?4",
        )?;
        let mut keep = Vec::with_capacity(owners.len());
        for o in owners {
            if stmt.query_row(params![o.run_id, o.epoch as i64, o.worker_id, LEASED], |r| r.get::<_, bool>(0))? {
                keep.push(o);
            }
        }
        Ok(keep)
    }

    /// Marks a worker as draining: it gets no new runs.
    pub fn drain(&mut self, worker_id: &str) -> Result<()> {
        let n = self
            .conn
            .execute("UPDATE workers SET state = 'draining' WHERE id = ?1 AND state != 'left'", [worker_id])?;
        if n == 0 {
            return Err(CoordinatorError::NotFound { kind: "worker", id: worker_id.into() });
        }
        tracing::info!(worker_id, "worker draining");
        Ok(())
    }

    /// Returns leases to the queue (epoch fencing makes any late message
    /// from them stale); `leaving` returns all the worker's leases and
    /// forgets the worker.
    pub fn release(&mut self, worker_id: &str, runs: &[(String, u64)], leaving: bool, reason: &str) -> Result<()> {
        let tx = self.tx()?;
        for (run_id, epoch) in runs {
            let holds: bool = tx.query_row(
                "SELECT count(*) > 0 FROM runs WHERE id = ?1 AND epoch = ?2 AND worker_id = ?3 AND state = ?4",
                params![run_id, *epoch as i64, worker_id, LEASED],
                |r| r.get(0),
            )?;
            if holds {
                requeue(&tx, run_id)?;
                tracing::info!(run_id = %run_id, epoch, worker_id, reason, "lease released");
            }
        }
        if leaving {
            // A leaving worker gives back every lease it holds, including any
            // whose grant it never saw (an Acquire answer lost to shutdown).
            let held: Vec<String> = tx
                .prepare("SELECT id FROM runs WHERE worker_id = ?1 AND state = ?2")?
                .query_map(params![worker_id, LEASED], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for run_id in held {
                requeue(&tx, &run_id)?;
                tracing::info!(run_id = %run_id, worker_id, reason, "lease released");
            }
            tx.execute("UPDATE workers SET state = 'left' WHERE id = ?1", [worker_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// How many runs and workers are in each state (for metrics).
    pub fn counts(&self) -> Result<StateCounts> {
        let group = |sql: &str| -> Result<Vec<(String, u64)>> {
            let mut stmt = self.conn.prepare(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        };
        Ok(StateCounts {
            runs: group("SELECT state, count(*) FROM runs GROUP BY state")?,
            workers: group("SELECT state, count(*) FROM workers GROUP BY state")?,
        })
    }

    /// Workers, with the runs they hold.
    pub fn workers(&self) -> Result<Vec<WorkerRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, hostname, slots, state, last_heartbeat_ms FROM workers ORDER BY registered_ms, id",
        )?;
        let mut out: Vec<WorkerRow> = stmt
            .query_map([], |r| {
                Ok(WorkerRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hostname: r.get(2)?,
                    slots: r.get(3)?,
                    state: r.get(4)?,
                    runs: vec![],
                    last_heartbeat_ms: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare("SELECT worker_id, id FROM runs WHERE state = ?1 ORDER BY id")?;
        let held: Vec<(String, String)> =
            stmt.query_map([LEASED], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        for (w, run) in held {
            if let Some(row) = out.iter_mut().find(|x| x.id == w) {
                row.runs.push(run);
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ reports

    fn check_lease(tx: &rusqlite::Transaction<'_>, worker_id: &str, run_id: &str, epoch: u64) -> Result<(u64, i64)> {
        let row: Option<(String, i64, Option<String>, i64, i64)> = tx
            .query_row("SELECT state, epoch, worker_id, applied_seq, params FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((state, cur_epoch, holder, applied, d)) = row else {
            return Err(CoordinatorError::NotFound { kind: "run", id: run_id.into() });
        };
        if state != LEASED || cur_epoch as u64 != epoch || holder.as_deref() != Some(worker_id) {
            return Err(CoordinatorError::StaleEpoch {
                run_id: run_id.into(),
                epoch,
                current: format!("run is {state} at epoch {cur_epoch}"),
            });
        }
        Ok((applied as u64, d))
    }

    /// Applies one report exactly once. Returns the run's applied sequence
    /// number (a re-sent report is acknowledged and not applied again).
    pub fn apply_report(&mut self, r: &Report) -> Result<u64> {
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let (applied, d) = Self::check_lease(&tx, &r.worker_id, &r.run_id, r.epoch)?;
        if r.seq <= applied {
            return Ok(applied);
        }
        if r.seq != applied + 1 {
            return Err(CoordinatorError::OutOfOrder { run_id: r.run_id.clone(), got: r.seq, expected: applied + 1 });
        }
        match &r.body {
            ReportBody::Progress { step, total_steps, train_loss } => {
                tx.execute(
                    "UPDATE runs SET step = ?1, total_steps = ?2, last_loss = ?3 WHERE id = ?4",
                    params![*step as i64, *total_steps as i64, train_loss, r.run_id],
                )?;
            }
            ReportBody::Chunk(c) => apply_chunk(&tx, &r.run_id, r.seq, d as usize, c)?,
        }
        tx.execute(
            "UPDATE runs SET applied_seq = ?1, lease_expires_ms = ?2, updated_ms = ?3 WHERE id = ?4",
            params![r.seq as i64, now_ms() + ttl, now_ms(), r.run_id],
        )?;
        tx.commit()?;
        Ok(r.seq)
    }

    /// Ends a run. Completed runs must have had every report up to
    /// `last_seq` applied and all their probes and trajectory stored.
    /// Repeating a finish that already took effect is a no-op. Returns the
    /// cell whose merged statistics are now stale (`None` for a failed run
    /// or a repeat): the caller merges it off the lock ([`Store::cell_inputs`],
    /// [`Store::store_cell`]).
    pub fn finish(
        &mut self,
        worker_id: &str,
        run_id: &str,
        epoch: u64,
        last_seq: u64,
        outcome: &Outcome,
    ) -> Result<Option<(String, u32)>> {
        let tx = self.tx()?;
        let done: Option<(String, i64, Option<String>)> = tx
            .query_row("SELECT state, epoch, worker_id FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((state, e, _)) = &done
            && [COMPLETED, DIVERGED, FAILED].contains(&state.as_str())
            && *e as u64 == epoch
        {
            return Ok(None); // a retried finish whose answer was lost
        }
        let (applied, _) = Self::check_lease(&tx, worker_id, run_id, epoch)?;
        let (sweep_id, cell, spec_json): (String, u32, String) =
            tx.query_row("SELECT sweep_id, cell, spec_json FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        let (state, fin_json, error) = match outcome {
            Outcome::Failed(msg) => (FAILED, None, Some(msg.clone())),
            Outcome::Completed(fin) | Outcome::Diverged(fin) => {
                if applied != last_seq {
                    return Err(CoordinatorError::OutOfOrder {
                        run_id: run_id.into(),
                        got: last_seq,
                        expected: applied,
                    });
                }
                let probes: i64 =
                    tx.query_row("SELECT count(*) FROM probes WHERE run_id = ?1", [run_id], |r| r.get(0))?;
                let has_traj: bool =
                    tx.query_row("SELECT count(*) > 0 FROM trajectories WHERE run_id = ?1", [run_id], |r| r.get(0))?;
                let spec: RunSpec =
                    serde_json::from_str(&spec_json).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
                let completed = matches!(outcome, Outcome::Completed(_));
                if completed && (probes as usize != spec.probe_epochs().len() || !has_traj) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "run `{run_id}` finished with {probes} of {} probes and {} trajectory",
                        spec.probe_epochs().len(),
                        if has_traj { "a" } else { "no" }
                    )));
                }
                if completed && !(fin.test_accuracy.is_finite() && fin.final_train_loss.is_finite()) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "run `{run_id}` completed with non-finite final figures"
                    )));
                }
                let json = serde_json::to_string(fin).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
                (if completed { COMPLETED } else { DIVERGED }, Some(json), None)
            }
        };
        tx.execute(
            "UPDATE runs SET state = ?1, final_json = ?2, error = ?3, worker_id = NULL, lease_expires_ms = NULL, updated_ms = ?4 WHERE id = ?5",
            params![state, fin_json, error, now_ms(), run_id],
        )?;
        tx.execute("DELETE FROM chunks WHERE run_id = ?1", [run_id])?;
        let stale = (state != FAILED).then(|| (sweep_id.clone(), cell));
        let open: i64 = tx.query_row(
            "SELECT count(*) FROM runs WHERE sweep_id = ?1 AND state IN (?2, ?3)",
            params![sweep_id, QUEUED, LEASED],
            |r| r.get(0),
        )?;
        if open == 0 {
            tx.execute("UPDATE sweeps SET state = 'completed' WHERE id = ?1 AND state = 'active'", [&sweep_id])?;
        }
        tx.commit()?;
        tracing::info!(run_id, epoch, worker_id, state, "run finished");
        Ok(stale)
    }

    /// Requeues runs whose lease lapsed (or fails them after too many
    /// attempts) and marks silent workers lost. Returns the runs requeued.
    pub fn expire_leases(&mut self) -> Result<Vec<String>> {
        let now = now_ms();
        let max_attempts = self.policy.max_attempts as i64;
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let lapsed: Vec<(String, i64, Option<String>)> = tx
            .prepare("SELECT id, attempts, worker_id FROM runs WHERE state = ?1 AND lease_expires_ms < ?2")?
            .query_map(params![LEASED, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut requeued = vec![];
        for (run_id, attempts, worker) in lapsed {
            if attempts >= max_attempts {
                tx.execute(
                    "UPDATE runs SET state = ?1, error = ?2, worker_id = NULL, lease_expires_ms = NULL, updated_ms = ?3 WHERE id = ?4",
                    params![FAILED, format!("lease lapsed {attempts} times"), now, run_id],
                )?;
                tracing::warn!(run_id = %run_id, attempts, "run failed: too many lapsed leases");
            } else {
                requeue(&tx, &run_id)?;
                tracing::warn!(run_id = %run_id, worker_id = ?worker, "lease lapsed; run requeued");
                requeued.push(run_id);
            }
        }
        tx.execute(
            "UPDATE workers SET state = 'lost' WHERE state IN ('active', 'draining') AND last_heartbeat_ms < ?1",
            [now - ttl],
        )?;
        // A sweep whose last open run just failed is finished.
        tx.execute(
            "UPDATE sweeps SET state = 'completed' WHERE state = 'active' AND NOT EXISTS \
             (SELECT 1 FROM runs WHERE runs.sweep_id = sweeps.id AND runs.state IN (?1, ?2))",
            params![QUEUED, LEASED],
        )?;
        tx.commit()?;
        Ok(requeued)
    }

    /// The checkpoint a granted run resumes from, for the lease holder only.
    pub fn checkpoint_for_lease(&mut self, worker_id: &str, run_id: &str, epoch: u64) -> Result<Vec<u8>> {
        let tx = self.tx()?;
        Self::check_lease(&tx, worker_id, run_id, epoch)?;
        let data: Option<Vec<u8>> =
            tx.query_row("SELECT data FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?;
        data.ok_or_else(|| CoordinatorError::NotFound { kind: "checkpoint of run", id: run_id.into() })
    }

    /// The last stored checkpoint of a run (kept after it finishes), for
    /// tests and tools.
    pub fn last_checkpoint(&self, run_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.query_row("SELECT data FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?)
    }

    /// The probes of `sweep_id`'s finished runs whose spec kept gradient
    /// rows (`[probe] save_gradients`), in (cell, seed, probe) order.
    pub fn saved_gradient_probes(&self, sweep_id: &str) -> Result<Vec<SavedProbeRef>> {
        Ok(self
            .conn
            .prepare(
                "SELECT r.id, r.cell, r.seed, p.idx, r.params FROM runs r JOIN probes p ON p.run_id = r.id \
                 WHERE r.sweep_id = ?1 AND r.state IN (?2, ?3) \
                 AND coalesce(json_extract(r.spec_json, '$.probe.save_gradients'), 0) > 0 \
                 ORDER BY r.cell, r.seed, p.idx",
            )?
            .query_map(params![sweep_id, COMPLETED, DIVERGED], |r| {
                Ok(SavedProbeRef {
                    run_id: r.get(0)?,
                    cell: r.get(1)?,
                    seed: r.get::<_, i64>(2)? as u64,
                    index: r.get(3)?,
                    params: r.get::<_, i64>(4)? as usize,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// One stored probe of a run, as stored (decode it with
    /// [`ProbeRecord::decode`] outside the store's lock).
    pub fn probe_blob(&self, run_id: &str, index: u32) -> Result<Vec<u8>> {
        self.conn
            .query_row("SELECT data FROM probes WHERE run_id = ?1 AND idx = ?2", params![run_id, index], |r| r.get(0))
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "probe", id: format!("{run_id}#{index}") })
    }

    /// A run's current lease state, for tests and tools: (state, epoch, applied_seq).
    pub fn run_state(&self, run_id: &str) -> Result<(String, u64, u64)> {
        self.conn
            .query_row("SELECT state, epoch, applied_seq FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
            })
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "run", id: run_id.into() })
    }
}

/// The run's last checkpoint: (report seq, step, probes done), if any.
fn checkpoint_position(tx: &rusqlite::Transaction<'_>, run_id: &str) -> Result<Option<(u64, u64, u32)>> {
    Ok(tx
        .query_row("SELECT seq, step, probes_done FROM checkpoints WHERE run_id = ?1", [run_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })
        .optional()?)
}

/// Puts a run back in the queue, rewound to its last checkpoint: the
/// reports after it (partial blobs, later probes, the trajectory) are
/// discarded, the ones up to it are kept. Without a checkpoint the run
/// starts over. Returns the sequence number to resume after (0: none).
fn requeue(tx: &rusqlite::Transaction<'_>, run_id: &str) -> Result<u64> {
    let (seq, step, probes) = checkpoint_position(tx, run_id)?.unwrap_or((0, 0, 0));
    tx.execute(
        "UPDATE runs SET state = ?1, worker_id = NULL, lease_expires_ms = NULL, applied_seq = ?2, step = ?3, \
         updated_ms = ?4 WHERE id = ?5",
        params![QUEUED, seq as i64, step as i64, now_ms(), run_id],
    )?;
    tx.execute("DELETE FROM chunks WHERE run_id = ?1", [run_id])?;
    tx.execute("DELETE FROM probes WHERE run_id = ?1 AND idx >= ?2", params![run_id, probes])?;
    tx.execute("DELETE FROM trajectories WHERE run_id = ?1", [run_id])?;
    Ok(seq)
}

fn apply_chunk(tx: &rusqlite::Transaction<'_>, run_id: &str, seq: u64, d: usize, c: &Chunk) -> Result<()> {
    let bad = |m: String| CoordinatorError::InvalidArgument(format!("run `{run_id}`: {m}"));
    if c.chunk_count == 0 || c.chunk_index >= c.chunk_count {
        return Err(bad(format!("chunk {} of {} is impossible", c.chunk_index, c.chunk_count)));
    }
    if c.data.len() > gradsweep_proto::MAX_CHUNK_BYTES {
        return Err(bad(format!("chunk of {} bytes exceeds {}", c.data.len(), gradsweep_proto::MAX_CHUNK_BYTES)));
    }
    let kind = match c.kind {
        BlobKind::Probe => 0,
        BlobKind::Trajectory => 1,
        BlobKind::Checkpoint => 2,
    };
    tx.execute(
        "INSERT OR REPLACE INTO chunks (run_id, kind, idx, chunk, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, kind, c.index, c.chunk_index, c.data],
    )?;
    if c.chunk_index + 1 < c.chunk_count {
        return Ok(());
    }
    let parts: Vec<(u32, Vec<u8>)> = tx
        .prepare("SELECT chunk, data FROM chunks WHERE run_id = ?1 AND kind = ?2 AND idx = ?3 ORDER BY chunk")?
        .query_map(params![run_id, kind, c.index], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if parts.len() as u32 != c.chunk_count || parts.iter().enumerate().any(|(i, p)| p.0 != i as u32) {
        return Err(bad(format!("blob {} arrived with {} of {} chunks", c.index, parts.len(), c.chunk_count)));
    }
    let blob: Vec<u8> = parts.into_iter().flat_map(|p| p.1).collect();
    match c.kind {
        BlobKind::Probe => {
            let rec = ProbeRecord::decode(&blob, Some(d)).map_err(|e| bad(format!("probe {}: {e}", c.index)))?;
            if rec.meta.index != c.index {
                return Err(bad(format!("probe record says index {} but was sent as {}", rec.meta.index, c.index)));
            }
            let exists: bool = tx.query_row(
                "SELECT count(*) > 0 FROM probes WHERE run_id = ?1 AND idx = ?2",
                params![run_id, c.index],
                |r| r.get(0),
            )?;
            if exists {
                return Err(bad(format!("probe {} was already stored", c.index)));
            }
            tx.execute("INSERT INTO probes (run_id, idx, data) VALUES (?1, ?2, ?3)", params![run_id, c.index, blob])?;
        }
        BlobKind::Trajectory => {
            let sums: TrajectorySums = serde_json::from_slice(&blob).map_err(|e| bad(format!("trajectory: {e}")))?;
            sums.validate().map_err(|m| bad(format!("trajectory: {m}")))?;
            tx.execute("INSERT OR REPLACE INTO trajectories (run_id, data) VALUES (?1, ?2)", params![run_id, blob])?;
        }
        BlobKind::Checkpoint => {
            let spec_json: String = tx.query_row("SELECT spec_json FROM runs WHERE id = ?1", [run_id], |r| r.get(0))?;
            let spec: RunSpec =
                serde_json::from_str(&spec_json).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
            let ck = Checkpoint::decode(&blob, &spec, d).map_err(|e| bad(format!("checkpoint: {e}")))?;
            let h = &ck.header;
            let prev: Option<i64> =
                tx.query_row("SELECT step FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?;
            if prev.is_some_and(|p| p as u64 >= h.step) {
                return Err(bad(format!("checkpoint at step {} is not after the stored one", h.step)));
            }
            let probes: i64 = tx.query_row("SELECT count(*) FROM probes WHERE run_id = ?1", [run_id], |r| r.get(0))?;
            if probes as u32 != h.probes_done {
                return Err(bad(format!(
                    "checkpoint at step {} counts {} probes, {probes} were reported",
                    h.step, h.probes_done
                )));
            }
            tx.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, seq, step, probes_done, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, seq as i64, h.step as i64, h.probes_done, blob],
            )?;
        }
    }
    tx.execute("DELETE FROM chunks WHERE run_id = ?1 AND kind = ?2 AND idx = ?3", params![run_id, kind, c.index])?;
    Ok(())
}

fn load_cell_runs(conn: &Connection, sweep_id: &str, cell: u32) -> Result<Vec<RunData>> {
    let internal = |m: String| CoordinatorError::Internal(m);
    let runs: Vec<(String, i64, String, i64)> = conn
        .prepare("SELECT id, seed, final_json, params FROM runs WHERE sweep_id = ?1 AND cell = ?2 AND state IN (?3, ?4) ORDER BY seed")?
        .query_map(params![sweep_id, cell, COMPLETED, DIVERGED], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = vec![];
    for (run_id, seed, fin_json, d) in runs {
        let fin: RunFinal =
            serde_json::from_str(&fin_json).map_err(|e| internal(format!("run {run_id} final: {e}")))?;
        let blobs: Vec<Vec<u8>> = conn
            .prepare("SELECT data FROM probes WHERE run_id = ?1 ORDER BY idx")?
            .query_map([&run_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let probes = blobs
            .iter()
            .map(|b| ProbeRecord::decode(b, Some(d as usize)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| internal(format!("run {run_id} probe: {e}")))?;
        let traj: Option<Vec<u8>> =
            conn.query_row("SELECT data FROM trajectories WHERE run_id = ?1", [&run_id], |r| r.get(0)).optional()?;
        let trajectory = traj
            .map(|b| serde_json::from_slice::<TrajectorySums>(&b))
            .transpose()
            .map_err(|e| internal(format!("run {run_id} trajectory: {e}")))?;
        out.push(RunData { run_id, seed: seed as u64, fin, probes, trajectory });
    }
    Ok(out)
}

/// A probe that kept gradient rows ([`Store::saved_gradient_probes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedProbeRef {
    /// The run.
    pub run_id: String,
    /// Its cell.
    pub cell: u32,
    /// Its seed.
    pub seed: u64,
    /// The probe's index within the run.
    pub index: u32,
    /// The run's parameter count d.
    pub params: usize,
}

/// A cell's results, stored or to be computed ([`Store::cell_sources`]).
#[derive(Debug)]
pub enum CellSource {
    /// A current stored merge.
    Ready(Box<CellResult>),
    /// The inputs to merge from.
    Compute(Box<CellInputs>),
}

/// What a cell merge reads: the cell, its sweep's seed count and its
/// finished runs (sketches decoded).
#[derive(Debug)]
pub struct CellInputs {
    /// The sweep.
    pub sweep_id: String,
    /// The cell.
    pub cell: gradsweep_shared::grid::Cell,
    /// Seeds per cell in the sweep.
    pub seeds_total: usize,
    /// The cell's completed and diverged runs, by seed.
    pub runs: Vec<RunData>,
}

impl CellInputs {
    /// Merges the cell: the heavy part, to run without the store's lock.
    pub fn compute(&self, th: &RankThresholds) -> CellResult {
        cell_result(&self.cell, self.seeds_total, &self.runs, th)
    }
}

impl CellSource {
    /// The cell's results: the stored ones, or merged now (heavy).
    pub fn compute(self, th: &RankThresholds) -> CellResult {
        match self {
            CellSource::Ready(c) => *c,
            CellSource::Compute(i) => i.compute(th),
        }
    }
}
