//! The database's tables, its version, and the upgrade of older files.
//!
//! A gradsweep database carries an `application_id` ("GSWP") and a schema
//! version in its `meta` table. A new file gets the current schema; an
//! older version is upgraded in one transaction per step; a foreign file, a
//! newer version or a file that fails SQLite's quick check is refused with
//! an error saying what to do.
//!
//! What makes big sweeps cheap (version 3):
//! * a run row holds no spec: a cell's spec is stored once (`cell_specs`,
//!   seed 0) and a run's is that with the run's seed;
//! * `run_counts` holds each sweep's number of runs per state, kept by a
//!   trigger in the same transaction as every change of a run's state, so
//!   `status`, the metrics and a finish never count a sweep's runs;
//! * a sweep row holds its numbers of cells and seeds (no plan to parse);
//! * runs are indexed by (sweep, cell, state): whether a cell has open runs
//!   is one index probe, whatever the number of seeds.
//!
//! What keeps a database small (version 4): once a cell's merge covers all
//! its seeds, its runs' probe sketches are replaced by digests
//! (`probe_digests`), and the cell row keeps the eigenvalues behind its
//! spectra (`cells.spectra`), from which ranks at any threshold are added;
//! `cells.pruned` marks such a cell, which is never merged again. Runs
//! remember the last worker that held them and when they were first
//! leased and when they ended (`gradsweep runs`).
//!
//! Version 6: each run carries its trainer (`builtin` or
//! `python:MODULE:FUNCTION`) and each worker the trainers it declared; the
//! queue's index leads with (state, trainer), so a worker finds the first
//! queued run of its trainers in one index probe per trainer, however many
//! runs of other trainers wait before it.

use gradsweep_shared::grid::SweepPlan;

use super::SweepState;
use rusqlite::Connection;

use crate::error::{CoordinatorError, Result};

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 6;

/// Bytes a WAL file keeps after a checkpoint resets it (`journal_size_limit`).
pub const WAL_SIZE_LIMIT: i64 = 64 << 20;
/// SQLite `application_id` marking a gradsweep database ("GSWP").
const APPLICATION_ID: i64 = 0x4753_5750;

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
    created_ms INTEGER NOT NULL,
    cells INTEGER NOT NULL DEFAULT 0,
    seeds INTEGER NOT NULL DEFAULT 0,
    ended_ms INTEGER
);
CREATE TABLE cell_specs (
    sweep_id TEXT NOT NULL, cell INTEGER NOT NULL, spec_json TEXT NOT NULL, PRIMARY KEY (sweep_id, cell)
) WITHOUT ROWID;
CREATE INDEX sweeps_fingerprint ON sweeps(fingerprint);
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    sweep_id TEXT NOT NULL REFERENCES sweeps(id),
    cell INTEGER NOT NULL,
    seed INTEGER NOT NULL,
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
    updated_ms INTEGER NOT NULL,
    last_worker TEXT,
    started_ms INTEGER,
    finished_ms INTEGER,
    trainer TEXT NOT NULL DEFAULT 'builtin'
);
CREATE INDEX runs_queue ON runs(state, trainer, queue_order);
CREATE INDEX runs_sweep ON runs(sweep_id, cell, state);
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
    spectra BLOB, pruned INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (sweep_id, cell));
CREATE TABLE probe_digests (run_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (run_id, idx));
CREATE TABLE epochs (
    run_id TEXT NOT NULL, epoch INTEGER NOT NULL, step INTEGER NOT NULL, lr REAL, train_loss REAL, seconds REAL,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE TABLE workers (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, hostname TEXT NOT NULL, slots INTEGER NOT NULL, state TEXT NOT NULL,
    registered_ms INTEGER NOT NULL, last_heartbeat_ms INTEGER NOT NULL, trainers TEXT NOT NULL DEFAULT 'builtin'
);
"#;

/// Each sweep's runs per state, and the trigger that keeps it exact as runs
/// change state. A submit adds its sweep's row itself (one row, not a
/// trigger per inserted run).
const RUN_COUNTS: &str = r#"
CREATE TABLE run_counts (
    sweep_id TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (sweep_id, state)
) WITHOUT ROWID;
CREATE TRIGGER run_counts_move AFTER UPDATE OF state ON runs WHEN OLD.state IS NOT NEW.state BEGIN
    UPDATE run_counts SET n = n - 1 WHERE sweep_id = OLD.sweep_id AND state = OLD.state;
    INSERT INTO run_counts (sweep_id, state, n) VALUES (NEW.sweep_id, NEW.state, 1)
        ON CONFLICT (sweep_id, state) DO UPDATE SET n = n + 1;
END;
"#;

/// Whether a database opened read-only can be read by this build: a
/// gradsweep file of this schema version. Nothing is upgraded on a
/// read-only connection, so an older file is refused with what to do.
pub(super) fn check_readable(conn: &Connection) -> Result<()> {
    let refuse = |message: String| CoordinatorError::Database { path: String::new(), message };
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if app != APPLICATION_ID {
        return Err(refuse("not a gradsweep database".into()));
    }
    let version: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))?
        .parse()
        .map_err(|_| refuse("unreadable schema_version".into()))?;
    match version.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(refuse(format!(
            "schema version {version}, this build reads version {SCHEMA_VERSION}; start `gradsweep serve --db` on \
             it once to upgrade it (or read it with the build that wrote it)"
        ))),
        std::cmp::Ordering::Greater => Err(refuse(format!(
            "schema version {version} was written by a newer gradsweep; this build reads up to version \
             {SCHEMA_VERSION}"
        ))),
    }
}

/// Makes `conn` a current gradsweep database: creates the schema in an
/// empty file, upgrades an older one, refuses anything else, checks the
/// file's integrity and sets WAL with `synchronous = FULL`.
pub(super) fn prepare(conn: &Connection) -> Result<()> {
    let refuse = |message: String| CoordinatorError::Database { path: String::new(), message };
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
    if app == 0 && tables == 0 {
        // Pages freed by pruning can be given back to the file system
        // (`Store::return_free_pages`); only settable before any table.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} {RUN_COUNTS} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); \
             PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
        ))?;
    } else if app != APPLICATION_ID {
        return Err(refuse("not a gradsweep database (foreign application id); refusing to touch it".into()));
    }
    let version: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))?
        .parse()
        .map_err(|_| CoordinatorError::Internal("unreadable schema_version".into()))?;
    if version > SCHEMA_VERSION {
        return Err(refuse(format!(
            "schema version {version} was written by a newer gradsweep; this build reads up to version \
             {SCHEMA_VERSION}. Use the newer build, or another database file"
        )));
    }
    if version < 1 {
        return Err(refuse(format!("schema version {version}, this build reads version {SCHEMA_VERSION}")));
    }
    if version < 2 {
        // Version 2 added checkpoints; nothing else changed.
        conn.execute_batch(
            "BEGIN IMMEDIATE; CREATE TABLE checkpoints (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, \
             step INTEGER NOT NULL, probes_done INTEGER NOT NULL, data BLOB NOT NULL); \
             UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;",
        )?;
        tracing::info!("database upgraded from schema version 1 to 2");
    }
    if version < 3 {
        upgrade_2_to_3(conn)?;
        tracing::info!("database upgraded from schema version 2 to 3");
    }
    if version < 4 {
        // Version 4 keeps, per merged cell, the eigenvalues behind its
        // spectra, and per probe of a pruned cell its digest; runs learn
        // their last worker and times (unknown for runs already ended).
        conn.execute_batch(
            "BEGIN IMMEDIATE; ALTER TABLE cells ADD COLUMN spectra BLOB; \
             ALTER TABLE cells ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0; \
             CREATE TABLE probe_digests (run_id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, \
             PRIMARY KEY (run_id, idx)); \
             ALTER TABLE runs ADD COLUMN last_worker TEXT; ALTER TABLE runs ADD COLUMN started_ms INTEGER; \
             ALTER TABLE runs ADD COLUMN finished_ms INTEGER; \
             UPDATE meta SET value = '4' WHERE key = 'schema_version'; COMMIT;",
        )?;
        tracing::info!("database upgraded from schema version 3 to 4");
    }
    if version < 5 {
        // Version 5 records when a sweep ended (its last open run ended,
        // or it was cancelled; for sweeps already ended, the last time one
        // of their runs finished, where runs recorded it), and each run's
        // epochs from now on (runs already ended have none).
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; ALTER TABLE sweeps ADD COLUMN ended_ms INTEGER; \
             UPDATE sweeps SET ended_ms = (SELECT max(finished_ms) FROM runs WHERE runs.sweep_id = sweeps.id) \
             WHERE state != '{}'; \
             CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, step INTEGER NOT NULL, lr REAL, \
             train_loss REAL, seconds REAL, PRIMARY KEY (run_id, epoch)) WITHOUT ROWID; \
             UPDATE meta SET value = '5' WHERE key = 'schema_version'; COMMIT;",
            SweepState::Active
        ))?;
        tracing::info!("database upgraded from schema version 4 to 5");
    }
    if version < 6 {
        // Version 6: trainers. Every run and worker before it is the
        // built-in engine's; the queue index gains the trainer.
        conn.execute_batch(
            "BEGIN IMMEDIATE; ALTER TABLE runs ADD COLUMN trainer TEXT NOT NULL DEFAULT 'builtin'; \
             ALTER TABLE workers ADD COLUMN trainers TEXT NOT NULL DEFAULT 'builtin'; \
             DROP INDEX runs_queue; CREATE INDEX runs_queue ON runs(state, trainer, queue_order); \
             UPDATE meta SET value = '6' WHERE key = 'schema_version'; COMMIT;",
        )?;
        tracing::info!("database upgraded from schema version 5 to 6");
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(refuse(format!(
            "the file is corrupted (integrity check: {check}); restore it from a backup or start a new file"
        )));
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // A WAL that grew while readers held old snapshots (long merges) is
    // cut back to this size at its next reset, not kept at its peak.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    set_cache(conn)?;
    Ok(())
}

/// Version 3: specs move from runs to cells, sweeps learn their sizes, and
/// runs are counted per state by triggers. One transaction: a failure
/// leaves the file at version 2.
fn upgrade_2_to_3(conn: &Connection) -> Result<()> {
    let bad = |m: String| CoordinatorError::Database { path: String::new(), message: m };
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| -> Result<()> {
        conn.execute_batch(
            "ALTER TABLE sweeps ADD COLUMN cells INTEGER NOT NULL DEFAULT 0; \
             ALTER TABLE sweeps ADD COLUMN seeds INTEGER NOT NULL DEFAULT 0; \
             CREATE TABLE cell_specs (sweep_id TEXT NOT NULL, cell INTEGER NOT NULL, spec_json TEXT NOT NULL, \
             PRIMARY KEY (sweep_id, cell)) WITHOUT ROWID;",
        )?;
        let plans: Vec<(String, String)> = conn
            .prepare("SELECT id, plan_json FROM sweeps")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (id, json) in plans {
            let plan: SweepPlan =
                serde_json::from_str(&json).map_err(|e| bad(format!("sweep {id}: stored plan unreadable: {e}")))?;
            conn.execute(
                "UPDATE sweeps SET cells = ?1, seeds = ?2 WHERE id = ?3",
                rusqlite::params![plan.cells.len() as i64, plan.seeds.len() as i64, id],
            )?;
            let mut ins = conn.prepare("INSERT INTO cell_specs (sweep_id, cell, spec_json) VALUES (?1, ?2, ?3)")?;
            for cell in &plan.cells {
                let spec = serde_json::to_string(&cell.run_spec(0)).map_err(|e| bad(e.to_string()))?;
                ins.execute(rusqlite::params![id, cell.index, spec])?;
            }
        }
        conn.execute_batch(&format!(
            "ALTER TABLE runs DROP COLUMN spec_json; \
             DROP INDEX runs_sweep; CREATE INDEX runs_sweep ON runs(sweep_id, cell, state); {RUN_COUNTS} \
             INSERT INTO run_counts (sweep_id, state, n) SELECT sweep_id, state, count(*) FROM runs GROUP BY 1, 2; \
             UPDATE meta SET value = '3' WHERE key = 'schema_version';"
        ))?;
        Ok(())
    })();
    match r {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A page cache of 64 MiB per connection (SQLite's default is 2 MiB): the
/// hot part of a sweep of a million runs stays in memory instead of being
/// read back from the OS on every transition.
pub(super) fn set_cache(conn: &Connection) -> Result<()> {
    conn.pragma_update(None, "cache_size", -65_536)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> i64 {
        conn.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn a_new_file_gets_the_current_schema_and_keeps_it_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        prepare(&Connection::open(&path).unwrap()).unwrap();
        let conn = Connection::open(&path).unwrap();
        prepare(&conn).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    /// The schema of versions 1 and 2 (version 1 had no `checkpoints`),
    /// as gradsweep wrote it before version 3.
    const SCHEMA_V2: &str = r#"
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

    /// A version-1 file as an old gradsweep left it: one sweep of two
    /// cells × two seeds, one run finished, one leased.
    fn version_1_file(path: &std::path::Path) {
        let conn = Connection::open(path).unwrap();
        let plan = crate::store::testing::plan(2, 2);
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V2} DROP TABLE checkpoints; INSERT INTO meta VALUES ('schema_version', '1'); \
             PRAGMA application_id = {APPLICATION_ID}; COMMIT;"
        ))
        .unwrap();
        conn.execute(
            "INSERT INTO sweeps VALUES ('old', 'old', 'f', 'old.toml', '', ?1, 'active', 1)",
            [serde_json::to_string(&plan).unwrap()],
        )
        .unwrap();
        let mut order = 0;
        for &seed in &plan.seeds {
            for cell in &plan.cells {
                order += 1;
                let state = match order {
                    1 => "completed",
                    2 => "leased",
                    _ => "queued",
                };
                conn.execute(
                    "INSERT INTO runs (id, sweep_id, cell, seed, spec_json, params, state, queue_order, updated_ms) \
                     VALUES (?1, 'old', ?2, ?3, ?4, 650, ?5, ?6, 1)",
                    rusqlite::params![
                        format!("old/c{}/s{seed}", cell.index),
                        cell.index,
                        seed as i64,
                        serde_json::to_string(&cell.run_spec(seed)).unwrap(),
                        state,
                        order
                    ],
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn a_version_1_file_is_upgraded_with_its_runs_counted_and_their_specs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        version_1_file(&path);
        let policy = crate::store::LeasePolicy { ttl_ms: 60_000, max_attempts: 3 };
        let mut s = crate::store::Store::open(&path, policy).unwrap();
        let row = s.sweep("old").unwrap();
        assert_eq!((row.cells, row.total()), (2, 4));
        use crate::store::RunState;
        assert_eq!(
            (row.count(RunState::Completed), row.count(RunState::Leased), row.count(RunState::Queued)),
            (1, 1, 2)
        );
        // The queued runs' specs are their cells' with their own seeds.
        let w = s.register_worker("a", "h", 1, 1, crate::store::BUILTIN_ONLY).unwrap();
        let l = s.acquire(&w).unwrap().unwrap();
        assert_eq!(l.run_id, "old/c0/s1");
        let plan = crate::store::testing::plan(2, 2);
        assert_eq!(l.spec, plan.cells[0].run_spec(1));
        assert_eq!(s.sweep("old").unwrap().count(RunState::Leased), 2, "the counts follow transitions");
        drop(s);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(version(&conn), SCHEMA_VERSION);
        let n: i64 = conn.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the upgrade created the checkpoints table");
        // Version 6: every run and worker from before is the built-in engine's.
        let n: i64 = conn.query_row("SELECT count(*) FROM runs WHERE trainer = 'builtin'", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 4);
        let cols: String =
            conn.query_row("SELECT group_concat(name) FROM pragma_index_info('runs_queue')", [], |r| r.get(0)).unwrap();
        assert_eq!(cols, "state,trainer,queue_order");
    }

    #[test]
    fn a_newer_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let conn = Connection::open(&path).unwrap();
        prepare(&conn).unwrap();
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
        let e = prepare(&Connection::open(&path).unwrap()).unwrap_err().to_string();
        assert!(e.contains("schema version 99") && e.contains("newer gradsweep"), "{e}");

        let foreign = dir.path().join("other.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x);").unwrap();
        let e = prepare(&Connection::open(&foreign).unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a gradsweep database"), "{e}");
    }
}
