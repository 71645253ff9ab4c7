//! What a cell merge reads and where its result is kept.
//!
//! A cell's merged statistics are stored with the number of runs they
//! cover. They are current when that number equals the cell's finished
//! runs and they were computed by this build; otherwise the merge's inputs
//! (the finished runs, sketches decoded, in seed order) are read here and
//! merged by the caller with the store released. A merge never replaces
//! one that covers more runs, so merges finishing out of order are safe.
//!
//! A merge keeps the eigenvalues behind its spectra, so results at the
//! user's rank thresholds are served from it without touching a sketch.
//! Once a merge covers every seed of its cell, the cell is pruned (unless
//! its grid says `keep_sketches` or saves gradients): each probe's sketch
//! gives way to its digest ([`ProbeDigest`]: eigenvalues, Δ, moments, top
//! eigenvectors), and the stored merge is final: a later build serves it
//! as it is rather than recomputing it.

use std::collections::BTreeMap;

use gradsweep_shared::SweepPlan;
use gradsweep_shared::digest::{CellSpectra, ProbeDigest};
use gradsweep_shared::results::{CellMerge, CellResult, RESULTS_VERSION, RunData, merge_cell};
use gradsweep_shared::run::ProbeRecord;
use gradsweep_shared::spec::RunFinal;
use gradsweep_shared::stats::RankThresholds;
use gradsweep_shared::trajectory::TrajectorySums;
use rusqlite::{Connection, OptionalExtension, params};

use super::Cached;
use super::{RunState, Store};
use crate::error::{CoordinatorError, Result};

impl Store {
    /// What each cell's results need: a stored merge when it can serve them
    /// (it covers every finished run of the cell, was computed by this
    /// build, and, when rank thresholds `th` are asked for, kept the
    /// eigenvalues to add them; or its sketches were pruned, so it is
    /// final), otherwise the inputs to compute it from. Loading is quick;
    /// merging is not, so the caller merges after releasing the store
    /// ([`CellSource::compute`]).
    pub fn cell_sources(&self, sweep_id: &str, th: &RankThresholds) -> Result<Vec<CellSource>> {
        self.cell_sources_for(sweep_id, th, false)
    }

    /// [`Self::cell_sources`]; with `spectra`, a stored merge serves only
    /// when it kept its spectra (as when thresholds are asked for), so
    /// every source can give them ([`CellSource::compute_keeping`]).
    pub fn cell_sources_for(&self, sweep_id: &str, th: &RankThresholds, spectra: bool) -> Result<Vec<CellSource>> {
        self.cell_sources_in(&self.plan(sweep_id)?, sweep_id, th, spectra, 0..u32::MAX)
    }

    /// [`Self::cell_sources_for`] of the cells whose index is in `cells`
    /// only, given the sweep's `plan` (read once by a caller that pages): a
    /// page of a sweep too large to read at once.
    pub fn cell_sources_in(
        &self,
        plan: &SweepPlan,
        sweep_id: &str,
        th: &RankThresholds,
        spectra: bool,
        cells: std::ops::Range<u32>,
    ) -> Result<Vec<CellSource>> {
        // One snapshot: a cell pruned between reading its row and its runs
        // would otherwise be merged from runs whose sketches are gone.
        self.snapshot(|s| s.cell_sources_now(plan, sweep_id, th, spectra, cells))
    }

    fn cell_sources_now(
        &self,
        plan: &SweepPlan,
        sweep_id: &str,
        th: &RankThresholds,
        need_spectra: bool,
        range: std::ops::Range<u32>,
    ) -> Result<Vec<CellSource>> {
        let need_spectra = need_spectra || !th.is_empty();
        let mut stored: BTreeMap<u32, (usize, bool, StoredCell)> = BTreeMap::new();
        let mut stmt = self.conn.prepare(
            "SELECT cell, runs_merged, result_json, spectra, pruned FROM cells \
             WHERE sweep_id = ?1 AND cell >= ?2 AND cell < ?3",
        )?;
        let mut rows = stmt.query(rusqlite::params![sweep_id, i64::from(range.start), i64::from(range.end)])?;
        while let Some(r) = rows.next()? {
            let cell: u32 = r.get(0)?;
            let unreadable = |what: &str, e: String| {
                CoordinatorError::Internal(format!("sweep {sweep_id} cell {cell}: stored {what} unreadable: {e}"))
            };
            let json: String = r.get(2)?;
            let result: CellResult = serde_json::from_str(&json).map_err(|e| unreadable("results", e.to_string()))?;
            let spectra = r
                .get::<_, Option<Vec<u8>>>(3)?
                .map(|b| CellSpectra::decode(&b))
                .transpose()
                .map_err(|e| unreadable("spectra", e.to_string()))?
                .filter(|sp| result.fits(sp));
            stored.insert(cell, (r.get::<_, i64>(1)? as usize, r.get(4)?, StoredCell { result, spectra }));
        }
        let done = self.finished_per_cell(sweep_id, &range)?;
        plan.cells
            .iter()
            .filter(|cell| range.contains(&cell.index))
            .map(|cell| {
                let finished = done.get(&cell.index).copied().unwrap_or(0);
                match stored.remove(&cell.index) {
                    Some((_, true, s)) if !need_spectra || s.spectra.is_some() => Ok(CellSource::Ready(Box::new(s))),
                    Some((_, true, _)) => Err(CoordinatorError::Internal(format!(
                        "sweep {sweep_id} cell {}: its sketches were pruned and no spectra were kept to add \
                         thresholds to",
                        cell.index
                    ))),
                    Some((merged, false, s))
                        if merged == finished
                            && s.result.results_version >= RESULTS_VERSION
                            && (!need_spectra || s.spectra.is_some()) =>
                    {
                        Ok(CellSource::Ready(Box::new(s)))
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
    fn finished_per_cell(&self, sweep_id: &str, cells: &std::ops::Range<u32>) -> Result<BTreeMap<u32, usize>> {
        let mut stmt = self.conn.prepare(
            "SELECT cell, count(*) FROM runs WHERE sweep_id = ?1 AND state IN (?2, ?3) AND cell >= ?4 AND cell < ?5 \
             GROUP BY cell",
        )?;
        let (lo, hi) = (i64::from(cells.start), i64::from(cells.end));
        let rows = stmt
            .query_map(params![sweep_id, RunState::Completed, RunState::Diverged, lo, hi], |r| {
                Ok((r.get::<_, u32>(0)?, r.get::<_, i64>(1)? as usize))
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The inputs of one cell's merge: its finished runs as they are now.
    /// `None` when the cell is pruned: its merge is final.
    pub fn cell_inputs(&self, sweep_id: &str, cell: u32) -> Result<Option<CellInputs>> {
        self.snapshot(|s| s.cell_inputs_now(sweep_id, cell))
    }

    fn cell_inputs_now(&self, sweep_id: &str, cell: u32) -> Result<Option<CellInputs>> {
        let pruned: bool = self
            .conn
            .row("SELECT pruned FROM cells WHERE sweep_id = ?1 AND cell = ?2", params![sweep_id, cell], |r| r.get(0))
            .optional()?
            .unwrap_or(false);
        if pruned {
            return Ok(None);
        }
        let plan = self.plan(sweep_id)?;
        let c = plan
            .cells
            .iter()
            .find(|c| c.index == cell)
            .ok_or_else(|| CoordinatorError::Internal(format!("no cell {cell} in sweep {sweep_id}")))?;
        Ok(Some(CellInputs {
            sweep_id: sweep_id.to_string(),
            cell: c.clone(),
            seeds_total: plan.seeds.len(),
            runs: load_cell_runs(&self.conn, sweep_id, cell)?,
        }))
    }

    /// Stores a cell's merge unless what is stored already covers as many
    /// runs and was computed by this build, or is pruned: merges that
    /// finish out of order never replace a newer one. When the merge covers
    /// every seed of the cell and the grid neither keeps sketches nor saves
    /// gradients, the cell is pruned in the same transaction: each probe's
    /// sketch is replaced by its digest. Returns whether it was stored.
    pub fn store_cell(&mut self, sweep_id: &str, m: &EncodedMerge) -> Result<bool> {
        let tx = self.tx()?;
        // SQLite reads the version out of the stored JSON: no parse of a
        // whole cell inside the transition.
        let current: Option<(i64, i64, bool)> = tx
            .query_row(
                "SELECT runs_merged, coalesce(json_extract(result_json, '$.results_version'), 0), pruned FROM cells \
                 WHERE sweep_id = ?1 AND cell = ?2",
                params![sweep_id, m.cell],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let newer = match current {
            None => true,
            Some((_, _, true)) => false,
            Some((merged, version, false)) => (merged as usize) < m.seeds_done || version < RESULTS_VERSION as i64,
        };
        if !newer {
            return Ok(false);
        }
        let prune = m.seeds_done == m.seeds_total && m.seeds_total > 0 && prunable(&tx, sweep_id, m)?;
        tx.exec(
            "INSERT OR REPLACE INTO cells (sweep_id, cell, runs_merged, result_json, spectra, pruned) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![sweep_id, m.cell, m.seeds_done as i64, m.result_json, m.spectra, prune],
        )?;
        if prune {
            for (run_id, idx, blob) in &m.digests {
                tx.exec(
                    "INSERT OR REPLACE INTO probe_digests (run_id, idx, data) VALUES (?1, ?2, ?3)",
                    params![run_id, idx, blob],
                )?;
            }
            tx.exec(
                "DELETE FROM probes WHERE run_id IN (SELECT id FROM runs WHERE sweep_id = ?1 AND cell = ?2)",
                params![sweep_id, m.cell],
            )?;
        }
        tx.commit()?;
        self.pages_freed |= prune;
        Ok(true)
    }

    /// Upkeep between transactions, for the writer to call after each
    /// commit: once a prune has freed pages, [`Self::return_free_pages`]
    /// as soon as no work remains (it needs no transaction open, which is
    /// why a prune does not call it itself). Failures are logged; nothing
    /// depends on them.
    pub fn after_commit(&mut self) {
        if self.pages_freed && self.conn.is_autocommit() {
            match self.return_free_pages() {
                Ok(Some(_)) => self.pages_freed = false,
                Ok(None) => {}
                Err(e) => {
                    self.pages_freed = false;
                    tracing::warn!(error = %e, "free pages not returned");
                }
            }
        }
    }

    /// Gives the pages that pruning freed back to the file system once no
    /// run is queued or leased anywhere, and truncates the WAL: while work
    /// remains, the next cells' sketches reuse them, and shrinking the file
    /// only to grow it again would be wasted writes. Needs a file created
    /// with incremental auto-vacuum (every file this build creates); older
    /// files keep their free pages (with the coordinator stopped,
    /// `PRAGMA auto_vacuum = INCREMENTAL; VACUUM` converts one). Returns
    /// the pages given back, or `None` when work remains or a transaction
    /// is open (nothing was done), or a reader kept the WAL from being
    /// truncated (the pages were given back; the WAL waits).
    pub fn return_free_pages(&mut self) -> Result<Option<i64>> {
        if !self.conn.is_autocommit() {
            return Ok(None);
        }
        let busy: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM runs WHERE state IN (?1, ?2) LIMIT 1",
                params![RunState::Queued, RunState::Leased],
                |r| r.get(0),
            )
            .optional()?;
        if busy.is_some() {
            return Ok(None);
        }
        let free: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free > 0 {
            // The pragma returns a row per page it frees; step through them.
            let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        let left: i64 = self.conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        // Idle, so the WAL can be copied back and cut to nothing. Without
        // waiting: a reader holding a snapshot (a long `results`) would
        // otherwise keep the writer in the busy handler; the writer tries
        // again after a later commit instead.
        self.conn.busy_timeout(std::time::Duration::ZERO)?;
        let wal = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)));
        self.conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let truncated = wal.is_ok_and(|(busy, _)| busy == 0);
        tracing::info!(pages = free - left, wal_truncated = truncated, "free pages returned to the file system");
        Ok(truncated.then_some(free - left))
    }

    /// A pruned cell's probe digests, by run (seed order) and probe.
    pub fn probe_digests(&self, sweep_id: &str, cell: u32) -> Result<Vec<(String, ProbeDigest)>> {
        let rows: Vec<(String, i64, Vec<u8>)> = self
            .conn
            .prepare(
                "SELECT r.id, r.params, p.data FROM runs r JOIN probe_digests p ON p.run_id = r.id \
                 WHERE r.sweep_id = ?1 AND r.cell = ?2 ORDER BY r.seed, p.idx",
            )?
            .query_map(params![sweep_id, cell], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(run_id, d, blob)| {
                let digest = ProbeDigest::decode(&blob, Some(d as usize))
                    .map_err(|e| CoordinatorError::Internal(format!("run {run_id} probe digest: {e}")))?;
                Ok((run_id, digest))
            })
            .collect()
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

/// Whether a merge covering every seed may drop its cell's sketches: the
/// grid does not ask to keep them nor to save gradient rows (which travel
/// in the probe records), every run of the cell has finished, and the
/// merge carries a digest for each stored probe.
fn prunable(tx: &Connection, sweep_id: &str, m: &EncodedMerge) -> Result<bool> {
    let (keep, saves): (bool, i64) = tx.row(
        "SELECT coalesce(json_extract(spec_json, '$.probe.keep_sketches'), 0), \
         coalesce(json_extract(spec_json, '$.probe.save_gradients'), 0) FROM cell_specs \
         WHERE sweep_id = ?1 AND cell = ?2",
        params![sweep_id, m.cell],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if keep || saves > 0 {
        return Ok(false);
    }
    let (runs, finished, probes): (i64, i64, i64) = tx.row(
        "SELECT count(*), sum(state IN (?3, ?4)), \
         (SELECT count(*) FROM probes p JOIN runs r ON p.run_id = r.id WHERE r.sweep_id = ?1 AND r.cell = ?2) \
         FROM runs WHERE sweep_id = ?1 AND cell = ?2",
        params![sweep_id, m.cell, RunState::Completed, RunState::Diverged],
        |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0), r.get(2)?)),
    )?;
    Ok(runs == finished && finished as usize == m.seeds_done && probes as usize == m.digests.len())
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

/// A stored merge as [`Store::cell_sources`] read it.
#[derive(Debug)]
pub struct StoredCell {
    /// The statistics at the default thresholds.
    pub result: CellResult,
    /// The eigenvalues behind its spectra, when kept (and this cell's).
    pub spectra: Option<CellSpectra>,
}

/// A cell's results, stored or to be computed ([`Store::cell_sources`]).
#[derive(Debug)]
pub enum CellSource {
    /// A stored merge that can serve the request.
    Ready(Box<StoredCell>),
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
    /// Merges the cell (at the default thresholds, keeping its spectra and
    /// digests): the heavy part, to run off the store's connections.
    pub fn merge(&self) -> CellMerge {
        merge_cell(&self.cell, self.seeds_total, &self.runs)
    }
}

/// A merge ready to store, encoded off the writer: what
/// [`Store::store_cell`] writes.
#[derive(Debug)]
pub struct EncodedMerge {
    /// The cell.
    pub cell: u32,
    /// Runs the merge covers.
    pub seeds_done: usize,
    /// Seeds per cell in the sweep.
    pub seeds_total: usize,
    /// The statistics (no user thresholds), as JSON.
    pub result_json: String,
    /// [`CellSpectra::encode`].
    pub spectra: Vec<u8>,
    /// (run, probe index, [`ProbeDigest::encode`]) for every probe merged.
    pub digests: Vec<(String, u32, Vec<u8>)>,
}

impl EncodedMerge {
    /// Encodes `m` (heavy for big d: the digests' eigenvectors).
    pub fn of(m: &CellMerge) -> Result<Self> {
        let r = &m.result;
        Ok(EncodedMerge {
            cell: r.index,
            seeds_done: r.seeds_done,
            seeds_total: r.seeds_total,
            result_json: serde_json::to_string(r).map_err(|e| CoordinatorError::Internal(e.to_string()))?,
            spectra: m.spectra.encode(),
            digests: m.digests.iter().map(|(run, d)| (run.clone(), d.meta.index, d.encode())).collect(),
        })
    }
}

impl CellSource {
    /// The cell's results with ranks at the user's thresholds `th`: the
    /// stored ones, or merged now (heavy). A fresh merge of finished runs
    /// comes back too, to be stored.
    pub fn compute(self, th: &RankThresholds) -> (CellResult, Option<CellMerge>) {
        let (result, _, merge) = self.compute_keeping(th);
        (result, merge)
    }

    /// [`Self::compute`], with the eigenvalues behind the cell's spectra
    /// when the source has them (always, from
    /// [`Store::cell_sources_for`] with spectra asked for).
    pub fn compute_keeping(self, th: &RankThresholds) -> (CellResult, Option<CellSpectra>, Option<CellMerge>) {
        let (mut result, spectra, merge) = match self {
            CellSource::Ready(s) => (s.result, s.spectra, None),
            CellSource::Compute(i) => {
                let m = i.merge();
                let fresh = !i.runs.is_empty();
                (m.result.clone(), Some(m.spectra.clone()), fresh.then_some(m))
            }
        };
        if !th.is_empty()
            && let Some(sp) = &spectra
            && let Err(e) = result.add_thresholds(sp, th)
        {
            // Loaded spectra were checked to fit and fresh ones are the
            // cell's own: this would be a bug.
            tracing::error!(cell = result.index, error = %e, "thresholds not added");
        }
        (result, spectra, merge)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{BlobKind, Chunk, Outcome, ReportBody};
    use super::*;
    use gradsweep_shared::grid::GridLimits;

    fn result(index: u32, seeds_done: usize) -> EncodedMerge {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 1, 1);
        let mut m = s.cell_inputs(&sweep, 0).unwrap().unwrap().merge();
        m.result.index = index;
        m.result.seeds_done = seeds_done;
        m.result.seeds_total = 3;
        EncodedMerge::of(&m).unwrap()
    }

    /// Computes every queued run of the store for real (one epoch of
    /// [`grid`]'s small net, `extra` lines in its `[probe]` section) on one
    /// worker and reports it as a worker does: each probe and the
    /// trajectory in one chunk, then the finish. Returns the cells whose
    /// last run ended.
    fn run_all(s: &mut Store) -> Vec<(String, u32)> {
        let w = worker(s, "w");
        let mut to_merge = vec![];
        while let Some(l) = s.acquire(&w).unwrap() {
            let spec = l.spec.clone();
            let mut blobs = vec![];
            let stop = std::sync::atomic::AtomicBool::new(false);
            let fin = gradsweep_shared::run::execute(&spec, &stop, &mut |e| {
                match e {
                    gradsweep_shared::RunEvent::Probe(p) => blobs.push((BlobKind::Probe, p.meta.index, p.encode())),
                    gradsweep_shared::RunEvent::Trajectory(t) => {
                        blobs.push((BlobKind::Trajectory, 0, serde_json::to_vec(&*t).unwrap()))
                    }
                    _ => {}
                }
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            for (seq, (kind, index, data)) in blobs.into_iter().enumerate() {
                let chunk = Chunk { kind, index, chunk_index: 0, chunk_count: 1, data };
                s.apply_report(&report(&w, &l, seq as u64 + 1, ReportBody::Chunk(chunk))).unwrap();
            }
            let seq = s.run_state(&l.run_id).unwrap().2;
            to_merge.extend(s.finish(&w, &l.run_id, l.epoch, seq, &Outcome::Completed(fin)).unwrap().cell_done);
        }
        to_merge
    }

    fn count(s: &Store, table: &str) -> i64 {
        s.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    fn merge_and_store(s: &mut Store, sweep: &str, cell: u32) -> CellMerge {
        let m = s.cell_inputs(sweep, cell).unwrap().expect("not pruned").merge();
        assert!(s.store_cell(sweep, &EncodedMerge::of(&m).unwrap()).unwrap());
        m
    }

    fn ready(s: &Store, sweep: &str, th: &RankThresholds) -> Vec<CellResult> {
        s.cell_sources(sweep, th)
            .unwrap()
            .into_iter()
            .map(|src| {
                assert!(matches!(src, CellSource::Ready(_)), "served from the store");
                src.compute(th).0
            })
            .collect()
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

    /// Issue 11, item 7: once a cell's merge covers all its seeds, its
    /// probes keep digests instead of sketches; results, with or without
    /// new thresholds, are served from the store and equal a merge from the
    /// sketches; the merge is final.
    #[test]
    fn a_cell_merged_over_all_its_seeds_keeps_digests_and_answers_any_threshold() {
        let (_dir, mut s) = store();
        // ℓ well above the digest's 10 eigenvectors, as in any real probe.
        let wide = grid(1, 2).replace("sketch_rank = 8\n", "sketch_rank = 48\n");
        let sweep = s.submit(&wide, "unit.toml", false, GridLimits::default()).unwrap().sweep_id;
        assert_eq!(run_all(&mut s), vec![(sweep.clone(), 0)]);
        let th = RankThresholds { relative: vec![1e-4, 0.3], absolute: vec![1e-7] };
        // From the sketches, before anything is stored.
        let inputs = s.cell_inputs(&sweep, 0).unwrap().unwrap();
        let (plain, with_th) = (inputs.merge().result, cell_result_with(&inputs, &th));
        let sketch_bytes: i64 = s.conn.query_row("SELECT sum(length(data)) FROM probes", [], |r| r.get(0)).unwrap();
        let m = merge_and_store(&mut s, &sweep, 0);
        assert_eq!((count(&s, "probes"), count(&s, "probe_digests")), (0, 2), "sketches gave way to digests");
        let digest_bytes: i64 =
            s.conn.query_row("SELECT sum(length(data)) FROM probe_digests", [], |r| r.get(0)).unwrap();
        assert!(digest_bytes * 2 < sketch_bytes, "{digest_bytes} B of digests for {sketch_bytes} B of sketches");
        let json = |c: &[CellResult]| serde_json::to_string(c).unwrap();
        assert_eq!(json(&ready(&s, &sweep, &RankThresholds::default())), json(&[plain]));
        assert_eq!(json(&ready(&s, &sweep, &th)), json(&[with_th]));
        let digests = s.probe_digests(&sweep, 0).unwrap();
        assert_eq!(digests, m.digests);
        assert!(s.cell_inputs(&sweep, 0).unwrap().is_none(), "a pruned cell is not merged again");
        assert!(!s.store_cell(&sweep, &EncodedMerge::of(&m).unwrap()).unwrap());
        assert!(s.stale_cells().unwrap().is_empty());
    }

    /// Issue 12: pruned sketches' pages stay in the file for the next
    /// cells while work is queued, and go back to the file system once none
    /// is; the digests stay readable.
    #[test]
    fn pages_freed_by_pruning_are_returned_once_no_work_is_queued() {
        let (dir, mut s) = store();
        let wide = grid(1, 2).replace("sketch_rank = 8\n", "sketch_rank = 48\n");
        let sweep = s.submit(&wide, "unit.toml", false, GridLimits::default()).unwrap().sweep_id;
        run_all(&mut s);
        let waiting = s.submit(&grid(2, 1), "later.toml", false, GridLimits::default()).unwrap().sweep_id;
        let pragma =
            |s: &Store, p: &str| -> i64 { s.conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0)).unwrap() };
        let before = pragma(&s, "page_count");
        merge_and_store(&mut s, &sweep, 0);
        s.after_commit();
        assert_eq!(count(&s, "probes"), 0, "pruned");
        let free = pragma(&s, "freelist_count");
        assert!(free > 10, "{free} pages of sketches are free but kept while another sweep waits");
        let after = pragma(&s, "page_count");
        assert!(after >= before, "the file did not shrink: {after} pages, {before} before");
        assert_eq!(s.return_free_pages().unwrap(), None, "work remains");
        s.cancel(&waiting).unwrap();
        // The writer's upkeep after the cancel's commit gives them back,
        // even while a reader holds a snapshot: then the WAL stays, and
        // the writer does not wait for the reader (5 s of busy handler).
        let reader = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        reader.execute_batch("BEGIN; SELECT count(*) FROM runs;").unwrap();
        let t = std::time::Instant::now();
        s.after_commit();
        assert!(t.elapsed() < std::time::Duration::from_millis(2500), "waited {:?} for the reader", t.elapsed());
        let wal = |d: &std::path::Path| std::fs::metadata(d.join("t.db-wal")).map_or(0, |m| m.len());
        assert!(wal(dir.path()) > 0, "not truncated under a reader");
        assert_eq!((pragma(&s, "freelist_count"), pragma(&s, "page_count")), (0, after - free));
        assert_eq!(s.return_free_pages().unwrap(), None, "the reader still keeps the WAL");
        drop(reader);
        // The next commit's upkeep truncates it.
        s.after_commit();
        assert_eq!(s.return_free_pages().unwrap(), Some(0), "given back already");
        assert_eq!(s.probe_digests(&sweep, 0).unwrap().len(), 2);
        assert_eq!(pragma(&s, "auto_vacuum"), 2, "incremental");
        assert_eq!(pragma(&s, "journal_size_limit"), crate::store::schema::WAL_SIZE_LIMIT);
        assert_eq!(wal(dir.path()), 0, "the WAL was checkpointed and truncated once the reader left");
    }

    /// A cell pruned by the writer while a reader loads a merge's inputs:
    /// the reader's snapshot still holds the sketches (it never merges runs
    /// whose probes vanished halfway), and the next read sees the prune.
    #[test]
    fn reads_for_a_merge_see_one_snapshot_while_the_writer_prunes() {
        let (dir, mut s) = store();
        let sweep = submit(&mut s, 1, 2);
        run_all(&mut s);
        let m = s.cell_inputs(&sweep, 0).unwrap().unwrap().merge();
        let r = Store::open_reader(&dir.path().join("t.db"), s.policy).unwrap();
        r.snapshot(|r| {
            let before = count(r, "probes");
            assert!(before > 0);
            assert!(s.store_cell(&sweep, &EncodedMerge::of(&m).unwrap()).unwrap(), "pruned meanwhile");
            assert_eq!(count(r, "probes"), before, "the snapshot keeps what it started with");
            let inputs = r.cell_inputs(&sweep, 0)?.expect("unpruned in this snapshot");
            assert_eq!(inputs.runs.iter().map(|x| x.probes.len()).sum::<usize>(), before as usize);
            Ok(())
        })
        .unwrap();
        assert_eq!(count(&r, "probes"), 0);
        assert!(r.cell_inputs(&sweep, 0).unwrap().is_none(), "then the prune");
    }

    fn cell_result_with(inputs: &CellInputs, th: &RankThresholds) -> CellResult {
        gradsweep_shared::results::cell_result(&inputs.cell, inputs.seeds_total, &inputs.runs, th)
    }

    /// Sketches stay while a cell has seeds to come, and always when the
    /// grid says `keep_sketches` (or saves gradient rows); a stored merge
    /// still serves thresholds from its kept eigenvalues.
    #[test]
    fn sketches_stay_for_seeds_to_come_and_when_the_grid_keeps_them() {
        let (_dir, mut s) = store();
        let kept = grid(1, 2).replace("sketch_rank = 8\n", "sketch_rank = 8\nkeep_sketches = true\n");
        let sweep = s.submit(&kept, "keep.toml", false, GridLimits::default()).unwrap().sweep_id;
        run_all(&mut s);
        merge_and_store(&mut s, &sweep, 0);
        assert_eq!((count(&s, "probes"), count(&s, "probe_digests")), (2, 0));
        let th = RankThresholds { relative: vec![], absolute: vec![1e-6] };
        let inputs = s.cell_inputs(&sweep, 0).unwrap().expect("kept cells may be merged again");
        let served = ready(&s, &sweep, &th);
        assert_eq!(
            serde_json::to_string(&served).unwrap(),
            serde_json::to_string(&[cell_result_with(&inputs, &th)]).unwrap()
        );

        // One seed of two merged: nothing is dropped yet.
        let (_dir2, mut s2) = store();
        let sweep2 = submit(&mut s2, 1, 2);
        let w = worker(&mut s2, "x");
        let first = s2.acquire(&w).unwrap().unwrap();
        s2.finish(&w, &first.run_id, first.epoch, 0, &Outcome::Failed("x".into())).unwrap();
        let rest = run_all(&mut s2);
        assert_eq!(rest, vec![(sweep2.clone(), 0)]);
        let m = merge_and_store(&mut s2, &sweep2, 0);
        assert_eq!((m.result.seeds_done, m.result.seeds_total), (1, 2));
        assert_eq!((count(&s2, "probes"), count(&s2, "probe_digests")), (1, 0), "a failed seed may be retried");
    }
}
