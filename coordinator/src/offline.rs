//! Reading a database without a coordinator: what `gradsweep status`,
//! `results` and `runs` show with `--db FILE`, read-only.
//!
//! The answers are the wire messages the control service sends, built by
//! the same store reads, conversions and merges, so a command reads the
//! same from a file as from a running coordinator. Nothing is written: a
//! cell whose stored merge is behind is merged here and not kept, and the
//! file may be in use by a coordinator meanwhile (WAL readers do not block
//! it).

use std::path::Path;

use gradsweep_proto::v1 as pb;
use gradsweep_shared::results::{CellResult, SweepSummary};
use gradsweep_shared::stats::RankThresholds;

use crate::convert;
use crate::error::Result;
use crate::store::{LeasePolicy, Store};

/// Each cell's spectra (the eigenvalue lists behind its spectrum files), by
/// cell index.
pub type SpectraByCell = Vec<(u32, gradsweep_shared::digest::CellSpectra)>;

/// Cells merged with their spectra, as the cells and the spectra by cell.
pub fn split_spectra(
    merged: Vec<(CellResult, Option<gradsweep_shared::digest::CellSpectra>)>,
) -> (Vec<CellResult>, SpectraByCell) {
    let mut spectra = vec![];
    let mut cells = Vec::with_capacity(merged.len());
    for (c, sp) in merged {
        if let Some(sp) = sp {
            spectra.push((c.index, sp));
        }
        cells.push(c);
    }
    (cells, spectra)
}

/// A gradsweep database opened read-only.
pub struct Offline {
    store: Store,
}

impl Offline {
    /// Opens `path` read-only; refuses a file that is not a gradsweep
    /// database of this build's schema, saying what to do.
    pub fn open(path: &Path) -> Result<Offline> {
        let store = Store::open_reader(path, LeasePolicy { ttl_ms: 0, max_attempts: 1 })?;
        store.check_readable(path)?;
        Ok(Offline { store })
    }

    /// One sweep's status, or every sweep's, as `Status`/`ListSweeps` send them.
    pub fn status(&self, sweep_id: Option<&str>) -> Result<Vec<pb::SweepStatus>> {
        match sweep_id {
            Some(id) => Ok(vec![convert::sweep_status(&self.store, id)?]),
            None => {
                let ids: Vec<String> = self.store.sweeps()?.into_iter().map(|r| r.id).collect();
                ids.iter().map(|id| convert::sweep_status(&self.store, id)).collect()
            }
        }
    }

    /// A sweep's per-cell results and summary with ranks at `th` too, as
    /// `Results` sends them (stale cells merged here, not stored).
    pub fn results(&self, sweep_id: &str, th: &RankThresholds) -> Result<(Vec<CellResult>, SweepSummary)> {
        let row = self.store.sweep(sweep_id)?;
        let sources = self.store.cell_sources(sweep_id, th)?;
        let (cells, _fresh) = crate::state::merge_all(sources, th);
        let summary = SweepSummary::new(row.id.clone(), row.name.clone(), row.total() as usize, &cells);
        Ok((cells, summary))
    }

    /// [`Self::results`] and [`Self::spectra`] from one merge of the stale
    /// cells (each would merge them again).
    pub fn results_and_spectra(
        &self,
        sweep_id: &str,
        th: &RankThresholds,
    ) -> Result<(Vec<CellResult>, SweepSummary, SpectraByCell)> {
        let row = self.store.sweep(sweep_id)?;
        let sources = self.store.cell_sources_for(sweep_id, th, true)?;
        let (merged, _fresh) = crate::state::merge_all_keeping(sources, th);
        let (cells, spectra) = split_spectra(merged);
        let summary = SweepSummary::new(row.id.clone(), row.name.clone(), row.total() as usize, &cells);
        Ok((cells, summary, spectra))
    }

    /// Every cell's spectra, as `ExportSpectra` sends them (merged here
    /// where the stored merge did not keep them, and not stored).
    pub fn spectra(&self, sweep_id: &str) -> Result<SpectraByCell> {
        let th = RankThresholds::default();
        let sources = self.store.cell_sources_for(sweep_id, &th, true)?;
        let (cells, _fresh) = crate::state::merge_all_keeping(sources, &th);
        Ok(cells.into_iter().filter_map(|(c, sp)| sp.map(|sp| (c.index, sp))).collect())
    }

    /// A sweep's runs (only those in `states`, unless empty) in (cell,
    /// seed) order, a page at a time as `ListRuns` streams them.
    pub fn runs(&self, sweep_id: &str, states: &[pb::RunState]) -> Result<RunPages<'_>> {
        self.runs_with(sweep_id, states, false)
    }

    /// [`Self::runs`], each run with its epochs when `with_epochs` (as
    /// `ListRuns` sends them when asked).
    pub fn runs_with(&self, sweep_id: &str, states: &[pb::RunState], with_epochs: bool) -> Result<RunPages<'_>> {
        let states = convert::run_states_from_wire(&states.iter().map(|&s| s as i32).collect::<Vec<_>>())?;
        let plan = std::sync::Arc::new(self.store.plan(sweep_id)?);
        Ok(RunPages {
            store: &self.store,
            cursor: convert::RunsCursor::new(sweep_id.into(), states, plan, with_epochs),
        })
    }
}

/// The pages of [`Offline::runs`], read one at a time by a
/// [`convert::RunsCursor`], so a sweep of any size is listed in bounded
/// memory.
pub struct RunPages<'a> {
    store: &'a Store,
    cursor: convert::RunsCursor,
}

impl RunPages<'_> {
    /// The grid's axis keys, in the order of each run's `axis_values`.
    pub fn axes(&self) -> &[String] {
        self.cursor.axes()
    }
}

impl Iterator for RunPages<'_> {
    type Item = Result<Vec<pb::RunInfo>>;

    fn next(&mut self) -> Option<Self::Item> {
        // The last page may be empty; it is not a page to hand out.
        self.cursor.next_page(self.store).filter(|p| p.as_ref().map_or(true, |runs| !runs.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{store, submit};

    #[test]
    fn runs_come_in_full_pages_then_the_rest_in_order_and_unknown_states_are_refused() {
        let (dir, mut s) = store();
        let sweep = submit(&mut s, 3, 400);
        let db = Offline::open(&dir.path().join("t.db")).unwrap();
        let pages: Vec<Vec<pb::RunInfo>> = db.runs(&sweep, &[]).unwrap().map(Result::unwrap).collect();
        assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [convert::RUNS_PER_PAGE, 200]);
        let keys: Vec<(u32, u64)> = pages.iter().flatten().map(|r| (r.cell, r.seed)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted, "every run once, in (cell, seed) order");
        assert_eq!(db.runs(&sweep, &[]).unwrap().axes(), ["lr"]);
        assert_eq!(pages[0][0].axis_values, ["0.01"]);
        assert_eq!(db.runs(&sweep, &[pb::RunState::Failed]).unwrap().count(), 0);
        assert!(db.runs(&sweep, &[pb::RunState::Unspecified]).is_err());
        assert!(matches!(db.runs("nope", &[]), Err(crate::CoordinatorError::NotFound { .. })));
        let st = db.status(None).unwrap();
        assert_eq!((st.len(), st[0].runs_total, st[0].runs_queued), (1, 1200, 1200));
    }
}
