//! What a cell merge reads and where its result is kept.
//!
//! A cell's merged statistics are stored with the number of runs they
//! cover. They are current when that number equals the cell's finished
//! runs and they were computed by this build; otherwise the merge's inputs
//! (the finished runs, sketches decoded, in seed order) are read here and
//! merged by the caller with the store released. A merge never replaces
//! one that covers more runs, so merges finishing out of order are safe.

use std::collections::BTreeMap;

use gradsweep_shared::results::{CellResult, RESULTS_VERSION, RunData, cell_result};
use gradsweep_shared::run::ProbeRecord;
use gradsweep_shared::spec::RunFinal;
use gradsweep_shared::stats::RankThresholds;
use gradsweep_shared::trajectory::TrajectorySums;
use rusqlite::{Connection, OptionalExtension, params};

use super::Cached;
use super::{RunState, Store};
use crate::error::{CoordinatorError, Result};

impl Store {
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
            .query_map(params![sweep_id, RunState::Completed, RunState::Diverged], |r| {
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
        // whole cell inside the transition.
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
            tx.exec(
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
            .query_map(params![RunState::Completed, RunState::Diverged], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}

fn load_cell_runs(conn: &Connection, sweep_id: &str, cell: u32) -> Result<Vec<RunData>> {
    let internal = |m: String| CoordinatorError::Internal(m);
    let runs: Vec<(String, i64, String, i64)> = conn
        .prepare("SELECT id, seed, final_json, params FROM runs WHERE sweep_id = ?1 AND cell = ?2 AND state IN (?3, ?4) ORDER BY seed")?
        .query_map(params![sweep_id, cell, RunState::Completed, RunState::Diverged], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
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
            conn.row("SELECT data FROM trajectories WHERE run_id = ?1", [&run_id], |r| r.get(0)).optional()?;
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
    /// Merges the cell: the heavy part, to run off the store's connections.
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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn result(index: u32, seeds_done: usize) -> CellResult {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 1, 1);
        let mut c = s.cell_inputs(&sweep, 0).unwrap().compute(&RankThresholds::default());
        c.index = index;
        c.seeds_done = seeds_done;
        c
    }

    #[test]
    fn a_merge_never_replaces_one_that_covers_more_runs() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 1, 3);
        assert!(s.store_cell(&sweep, &result(0, 2)).unwrap());
        assert!(!s.store_cell(&sweep, &result(0, 1)).unwrap(), "an older merge arriving late is dropped");
        assert!(!s.store_cell(&sweep, &result(0, 2)).unwrap());
        assert!(s.store_cell(&sweep, &result(0, 3)).unwrap());
    }

    #[test]
    fn a_cell_with_no_finished_run_is_computed_from_nothing_and_is_not_stale() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 2, 2);
        let sources = s.cell_sources(&sweep, &RankThresholds::default()).unwrap();
        assert_eq!(sources.len(), 2);
        for src in &sources {
            assert!(matches!(src, CellSource::Compute(i) if i.runs.is_empty() && i.seeds_total == 2));
        }
        assert!(s.stale_cells().unwrap().is_empty());
        assert!(matches!(s.cell_inputs(&sweep, 9), Err(CoordinatorError::Internal(_))));
    }
}
