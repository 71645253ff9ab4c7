//! Sweeps: a grid file becomes a sweep and its runs; status, plan and
//! cancellation.
//!
//! A submit validates the grid ([`parse_grid`]), stores its normalised plan
//! and one queued run per (cell, seed). Runs are queued in the grid's
//! [`QueueOrder`](gradsweep_shared::grid::QueueOrder): by default a cell's
//! seeds together, so cells complete (and their sketches give way to
//! digests) one after another. Submitting an identical
//! normalised grid again returns the existing sweep.

use std::collections::BTreeMap;

use gradsweep_shared::grid::{GridLimits, SweepPlan, parse_grid};
use gradsweep_shared::spec::RunSpec;
use rusqlite::{Connection, OptionalExtension, params};

use super::Cached;
use super::{RunState, Store, SweepState, now_ms};
use crate::error::{CoordinatorError, Result};

/// Counts of a sweep's runs by state.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    /// Identifier.
    pub id: String,
    /// Name.
    pub name: String,
    /// Whether it still has work.
    pub state: SweepState,
    /// Cells.
    pub cells: u32,
    /// Runs by state.
    pub counts: BTreeMap<RunState, u32>,
    /// Completed-run equivalents (leased runs count by their step fraction).
    pub progress: f64,
    /// Creation time.
    pub created_ms: i64,
    /// The grid file's name as it was submitted.
    pub file_name: String,
    /// When it ended (its last open run ended, or it was cancelled); `None`
    /// while it has work, or when it ended before gradsweep recorded it.
    pub ended_ms: Option<i64>,
}

impl SweepRow {
    /// Runs in all.
    pub fn total(&self) -> u32 {
        self.counts.values().sum()
    }

    /// Runs in `state`.
    pub fn count(&self, state: RunState) -> u32 {
        self.counts.get(&state).copied().unwrap_or(0)
    }

    /// True when no run is queued or leased.
    pub fn finished(&self) -> bool {
        self.count(RunState::Queued) + self.count(RunState::Leased) == 0
    }
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

impl Store {
    /// Validates and stores a grid. An identical normalised grid returns the
    /// existing sweep unless `force_new`.
    pub fn submit(&mut self, text: &str, file_name: &str, force_new: bool, limits: GridLimits) -> Result<Submitted> {
        let plan = parse_grid(text, file_name, limits)?;
        let fingerprint = plan.fingerprint();
        let tx = self.tx()?;
        if !force_new && let Some(id) = first_with_fingerprint(&tx, &fingerprint)? {
            return Ok(Submitted {
                sweep_id: id,
                existing: true,
                cells: plan.cells.len() as u32,
                runs: plan.run_count() as u32,
            });
        }
        let same: i64 = tx.row("SELECT count(*) FROM sweeps WHERE fingerprint = ?1", [&fingerprint], |r| r.get(0))?;
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
        tx.exec(
            "INSERT INTO sweeps (id, name, fingerprint, file_name, grid_toml, plan_json, state, created_ms, cells, seeds) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                id,
                plan.name,
                fingerprint,
                file_name,
                text,
                plan_json,
                SweepState::Active,
                now,
                plan.cells.len() as i64,
                plan.seeds.len() as i64
            ],
        )?;
        // A cell's spec once (seed 0), with its parameter count (0 for a
        // python: trainer's model, which only the trainer knows) and its
        // trainer.
        let mut params_of = Vec::with_capacity(plan.cells.len());
        {
            let mut ins = tx.prepare("INSERT INTO cell_specs (sweep_id, cell, spec_json) VALUES (?1, ?2, ?3)")?;
            for cell in &plan.cells {
                let spec = cell.run_spec(0);
                let d = if spec.train.trainer.is_builtin() {
                    gradsweep_shared::run::param_count(&spec)
                        .map_err(|e| CoordinatorError::InvalidArgument(format!("cell {}: {e}", cell.index)))?
                } else {
                    0
                };
                params_of.push((d as i64, spec.train.trainer.name()));
                let json = serde_json::to_string(&spec).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
                ins.execute(params![id, cell.index, json])?;
            }
        }
        let base_order: i64 = tx.row("SELECT coalesce(max(queue_order), 0) FROM runs", [], |r| r.get(0))?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO runs (id, sweep_id, cell, seed, params, state, queue_order, updated_ms, trainer) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            // Queued in the grid's order (cells or seeds outermost), but
            // inserted cell by cell: a cell's rows are neighbours in the id
            // and (sweep, cell) indexes, so a big sweep fills their pages in
            // order instead of touching a page per run.
            let (cells, seeds) = (plan.cells.len(), plan.seeds.len());
            let mut run_id = String::with_capacity(id.len() + 24);
            for (pos, (cell, (d, trainer))) in plan.cells.iter().zip(&params_of).enumerate() {
                for (k, &seed) in plan.seeds.iter().enumerate() {
                    let order = base_order + plan.order.position(pos, k, cells, seeds) as i64 + 1;
                    run_id.clear();
                    use std::fmt::Write as _;
                    let _ = write!(run_id, "{id}/c{}/s{seed}", cell.index);
                    ins.execute(params![
                        run_id,
                        id,
                        cell.index,
                        seed as i64,
                        d,
                        RunState::Queued,
                        order,
                        now,
                        trainer
                    ])?;
                }
            }
        }
        tx.exec(
            "INSERT INTO run_counts (sweep_id, state, n) VALUES (?1, ?2, ?3)",
            params![id, RunState::Queued, plan.run_count() as i64],
        )?;
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

    /// Status of one sweep: its runs per state from the per-sweep counts,
    /// and the progress of the leased runs (a range of the queue index, as
    /// many rows as leases out). Reads neither the plan nor the sweep's
    /// other runs.
    pub fn sweep(&self, sweep_id: &str) -> Result<SweepRow> {
        let mut row = self
            .conn
            .prepare_cached("SELECT id, name, state, cells, created_ms, file_name, ended_ms FROM sweeps WHERE id = ?1")?
            .query_row([sweep_id], |r| {
                Ok(SweepRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    state: r.get(2)?,
                    cells: r.get(3)?,
                    counts: BTreeMap::new(),
                    progress: 0.0,
                    created_ms: r.get(4)?,
                    file_name: r.get(5)?,
                    ended_ms: r.get(6)?,
                })
            })
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "sweep", id: sweep_id.into() })?;
        let mut stmt = self.conn.prepare_cached("SELECT state, n FROM run_counts WHERE sweep_id = ?1 AND n > 0")?;
        let mut rows = stmt.query([sweep_id])?;
        while let Some(r) = rows.next()? {
            let state: RunState = r.get(0)?;
            let n: u32 = r.get(1)?;
            if !state.is_open() {
                row.progress += n as f64;
            }
            row.counts.insert(state, n);
        }
        row.progress += self
            .conn
            .prepare_cached(
                "SELECT coalesce(sum(CASE WHEN total_steps > 0 THEN CAST(step AS REAL) / total_steps ELSE 0 END), 0) \
             FROM runs INDEXED BY runs_queue WHERE state = ?2 AND sweep_id = ?1",
            )?
            .query_row(params![sweep_id, RunState::Leased], |r| r.get::<_, f64>(0))?;
        Ok(row)
    }

    /// The first sweep submitted with this grid fingerprint
    /// ([`SweepPlan::fingerprint`]), if any: what `submit` resumes.
    pub fn sweep_with_fingerprint(&self, fingerprint: &str) -> Result<Option<String>> {
        first_with_fingerprint(&self.conn, fingerprint)
    }

    /// All sweeps, newest first.
    pub fn sweeps(&self) -> Result<Vec<SweepRow>> {
        let ids: Vec<String> = self
            .conn
            .prepare_cached("SELECT id FROM sweeps ORDER BY created_ms DESC, id")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter().map(|id| self.sweep(id)).collect()
    }

    /// Cancels a sweep: its queued and leased runs end as cancelled.
    pub fn cancel(&mut self, sweep_id: &str) -> Result<u32> {
        let tx = self.tx()?;
        let n = tx.exec(
            "UPDATE sweeps SET state = ?1, ended_ms = ?4 WHERE id = ?2 AND state = ?3",
            params![SweepState::Cancelled, sweep_id, SweepState::Active, now_ms()],
        )?;
        if n == 0 {
            let exists: bool = tx.row("SELECT count(*) > 0 FROM sweeps WHERE id = ?1", [sweep_id], |r| r.get(0))?;
            if !exists {
                return Err(CoordinatorError::NotFound { kind: "sweep", id: sweep_id.into() });
            }
        }
        let runs = tx.exec(
            "UPDATE runs SET state = ?1, worker_id = NULL, lease_expires_ms = NULL, updated_ms = ?2, finished_ms = ?2 \
             WHERE sweep_id = ?3 AND state IN (?4, ?5)",
            params![RunState::Cancelled, now_ms(), sweep_id, RunState::Queued, RunState::Leased],
        )?;
        tx.exec(
            "DELETE FROM chunks WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?1 AND state = ?2)",
            params![sweep_id, RunState::Cancelled],
        )?;
        tx.commit()?;
        tracing::info!(sweep_id, runs_cancelled = runs, "sweep cancelled");
        Ok(runs as u32)
    }
}

/// A run's spec: its cell's, with the run's seed.
pub(super) fn run_spec(conn: &Connection, run_id: &str) -> Result<RunSpec> {
    let (json, seed): (String, i64) = conn
        .prepare_cached(
            "SELECT c.spec_json, r.seed FROM runs r JOIN cell_specs c ON c.sweep_id = r.sweep_id AND c.cell = r.cell \
             WHERE r.id = ?1",
        )?
        .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .ok_or_else(|| CoordinatorError::NotFound { kind: "run", id: run_id.into() })?;
    spec_with_seed(&json, seed as u64)
}

/// A cell's stored spec with `seed`.
pub(super) fn spec_with_seed(cell_spec_json: &str, seed: u64) -> Result<RunSpec> {
    let mut spec: RunSpec = serde_json::from_str(cell_spec_json)
        .map_err(|e| CoordinatorError::Internal(format!("stored cell spec unreadable: {e}")))?;
    spec.seed = seed;
    Ok(spec)
}

fn first_with_fingerprint(conn: &Connection, fingerprint: &str) -> Result<Option<String>> {
    Ok(conn
        .row("SELECT id FROM sweeps WHERE fingerprint = ?1 ORDER BY created_ms LIMIT 1", [fingerprint], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    #[test]
    fn an_identical_grid_returns_its_sweep_unless_forced() {
        let (_dir, mut s) = store();
        let a = s.submit(&grid(2, 3), "a.toml", false, GridLimits::default()).unwrap();
        assert!(!a.existing);
        assert_eq!((a.cells, a.runs), (2, 6));
        let again = s.submit(&grid(2, 3), "b.toml", false, GridLimits::default()).unwrap();
        assert!(again.existing);
        assert_eq!(again.sweep_id, a.sweep_id);
        let forced = s.submit(&grid(2, 3), "a.toml", true, GridLimits::default()).unwrap();
        assert!(!forced.existing);
        assert_ne!(forced.sweep_id, a.sweep_id);
        assert_eq!(s.sweeps().unwrap().len(), 2);
        assert_eq!(s.sweep(&a.sweep_id).unwrap().count(RunState::Queued), 6);
    }

    #[test]
    fn a_bad_grid_stores_nothing() {
        let (_dir, mut s) = store();
        let e = s.submit("[sweep]\nname = 1\n", "bad.toml", false, GridLimits::default()).unwrap_err();
        assert!(e.to_string().contains("bad.toml"), "{e}");
        assert!(s.sweeps().unwrap().is_empty());
    }

    #[test]
    fn runs_queue_in_the_grids_order_and_a_later_sweep_after_an_earlier_one() {
        let (_dir, mut s) = store();
        submit(&mut s, 2, 2);
        let seeds_first = grid(3, 2).replace("name = \"unit\"\n", "name = \"unit\"\norder = \"seeds\"\n");
        s.submit(&seeds_first, "s.toml", false, GridLimits::default()).unwrap();
        let w = worker(&mut s, "a");
        let order: Vec<String> = (0..10).map(|_| s.acquire(&w).unwrap().unwrap().run_id).collect();
        let tails: Vec<&str> = order.iter().map(|id| id.rsplit_once("/c").unwrap().1).collect();
        assert_eq!(
            tails,
            ["0/s0", "0/s1", "1/s0", "1/s1", "0/s0", "1/s0", "2/s0", "0/s1", "1/s1", "2/s1"],
            "the default sweep by cells, then the second sweep by seeds"
        );
        assert!(s.acquire(&w).unwrap().is_none());
    }

    #[test]
    fn cancel_ends_open_runs_and_keeps_finished_sweeps_alone() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 2, 1);
        let w = worker(&mut s, "a");
        s.acquire(&w).unwrap().unwrap();
        assert_eq!(s.sweep(&sweep).unwrap().ended_ms, None, "not ended while it has work");
        let before = now_ms();
        assert_eq!(s.cancel(&sweep).unwrap(), 2, "the leased run and the queued one");
        let row = s.sweep(&sweep).unwrap();
        assert_eq!((row.state, row.count(RunState::Cancelled)), (SweepState::Cancelled, 2));
        let ended = row.ended_ms.expect("a cancelled sweep has ended");
        assert!(ended >= before && ended <= now_ms(), "{ended}");
        assert_eq!(s.cancel(&sweep).unwrap(), 0, "cancelling twice changes nothing");
        assert_eq!(s.sweep(&sweep).unwrap().ended_ms, Some(ended), "and keeps its end");
        assert!(matches!(s.cancel("nope"), Err(CoordinatorError::NotFound { .. })));
        assert!(s.acquire(&w).unwrap().is_none());
    }
}
