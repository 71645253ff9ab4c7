//! The database's tables, its version, and the upgrade of older files.
//!
//! A gradsweep database carries an `application_id` ("GSWP") and a schema
//! version in its `meta` table. A new file gets the current schema; an
//! older version is upgraded in one transaction; a foreign file, a newer
//! version or a file that fails SQLite's quick check is refused with an
//! error saying what to do.

use rusqlite::Connection;

use crate::error::{CoordinatorError, Result};

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 2;
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

/// Makes `conn` a current gradsweep database: creates the schema in an
/// empty file, upgrades an older one, refuses anything else, checks the
/// file's integrity and sets WAL with `synchronous = FULL`.
pub(super) fn prepare(conn: &Connection) -> Result<()> {
    let refuse = |message: String| CoordinatorError::Database { path: String::new(), message };
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0))?;
    if app == 0 && tables == 0 {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); \
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
    if version == 1 {
        // Version 2 added checkpoints; nothing else changed.
        conn.execute_batch(
            "BEGIN IMMEDIATE; CREATE TABLE checkpoints (run_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, \
             step INTEGER NOT NULL, probes_done INTEGER NOT NULL, data BLOB NOT NULL); \
             UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;",
        )?;
        tracing::info!("database upgraded from schema version 1 to 2");
    } else if version != SCHEMA_VERSION {
        return Err(refuse(format!("schema version {version}, this build reads version {SCHEMA_VERSION}")));
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(refuse(format!(
            "the file is corrupted (integrity check: {check}); restore it from a backup or start a new file"
        )));
    }
    // Finishes and status count a sweep's runs by state: an index range,
    // not a scan of the sweep. Files written before it get it here (an
    // older build reading the file ignores it).
    conn.execute_batch("CREATE INDEX IF NOT EXISTS runs_sweep_state ON runs(sweep_id, state)")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    set_cache(conn)?;
    Ok(())
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

    #[test]
    fn a_version_1_file_is_upgraded_and_a_newer_or_foreign_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("v1.db");
        {
            let conn = Connection::open(&old).unwrap();
            prepare(&conn).unwrap();
            conn.execute_batch("DROP TABLE checkpoints; UPDATE meta SET value = '1' WHERE key = 'schema_version';")
                .unwrap();
        }
        let conn = Connection::open(&old).unwrap();
        prepare(&conn).unwrap();
        assert_eq!(version(&conn), 2);
        let n: i64 = conn.query_row("SELECT count(*) FROM checkpoints", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the upgrade created the checkpoints table");

        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", []).unwrap();
        let e = prepare(&Connection::open(&old).unwrap()).unwrap_err().to_string();
        assert!(e.contains("schema version 99") && e.contains("newer gradsweep"), "{e}");

        let foreign = dir.path().join("other.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x);").unwrap();
        let e = prepare(&Connection::open(&foreign).unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a gradsweep database"), "{e}");
    }
}
