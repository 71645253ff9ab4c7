//! Every run accounted for: the runs of a sweep as `gradsweep runs` lists
//! them, and a sweep's failures grouped by reason for `status`.
//!
//! Both read indexes only: runs page by (sweep, cell, seed) through the
//! primary key order of the cell index, and failures through the
//! `(state, queue_order)` index (failed runs are few, whatever the size of
//! the sweep).

use rusqlite::params;

use super::{RunState, Store};
use crate::error::Result;

/// One run as `gradsweep runs` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Identifier.
    pub id: String,
    /// Its cell (index into the plan's cells).
    pub cell: u32,
    /// Its seed.
    pub seed: u64,
    /// Where it stands.
    pub state: RunState,
    /// Leases granted so far.
    pub attempts: u32,
    /// The last worker that held it, with its name when still known.
    pub worker: Option<(String, Option<String>)>,
    /// Steps done of its total, as last reported.
    pub step: u64,
    /// Steps in the whole run.
    pub total_steps: u64,
    /// When it was first leased (ms since the epoch); unknown for runs that
    /// ended before gradsweep recorded it.
    pub started_ms: Option<i64>,
    /// When it ended (completed, diverged, failed or cancelled).
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Failed runs of a sweep that share one reason.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureGroup {
    /// The reason, as the worker or the coordinator gave it.
    pub error: String,
    /// How many runs failed with it.
    pub runs: u64,
    /// One of them (the first in queue order), to look up.
    pub example: String,
}

impl Store {
    /// Up to `limit` runs of a sweep after `after` (a (cell, seed) already
    /// listed), in (cell, seed) order; only those in `states` unless it is
    /// empty. A sweep that does not exist has no runs: check it first.
    pub fn runs_page(
        &self,
        sweep_id: &str,
        states: &[RunState],
        after: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<RunRow>> {
        let (cell, seed) = after.map_or((-1, -1), |(c, s)| (i64::from(c), s as i64));
        let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let filter = serde_json::to_string(&words).unwrap_or_else(|_| "[]".into());
        let mut stmt = self.conn.prepare_cached(
            "SELECT r.id, r.cell, r.seed, r.state, r.attempts, r.last_worker, w.name, r.step, r.total_steps, \
             r.started_ms, r.finished_ms, r.error FROM runs r LEFT JOIN workers w ON w.id = r.last_worker \
             WHERE r.sweep_id = ?1 AND (r.cell, r.seed) > (?2, ?3) \
             AND (?4 = '[]' OR r.state IN (SELECT value FROM json_each(?4))) \
             ORDER BY r.cell, r.seed LIMIT ?5",
        )?;
        let rows = stmt
            .query_map(params![sweep_id, cell, seed, filter, limit as i64], |r| {
                let worker: Option<String> = r.get(5)?;
                let name: Option<String> = r.get(6)?;
                Ok(RunRow {
                    id: r.get(0)?,
                    cell: r.get(1)?,
                    seed: r.get::<_, i64>(2)? as u64,
                    state: r.get(3)?,
                    attempts: r.get(4)?,
                    worker: worker.map(|w| (w, name)),
                    step: r.get::<_, i64>(7)? as u64,
                    total_steps: r.get::<_, i64>(8)? as u64,
                    started_ms: r.get(9)?,
                    finished_ms: r.get(10)?,
                    error: r.get(11)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A sweep's failed runs grouped by reason, the commonest first, at
    /// most `limit` groups.
    pub fn failure_groups(&self, sweep_id: &str, limit: usize) -> Result<Vec<FailureGroup>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT coalesce(error, 'no reason recorded'), count(*), min(id) FROM runs \
             WHERE state = ?1 AND sweep_id = ?2 GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?3",
        )?;
        let groups = stmt
            .query_map(params![RunState::Failed, sweep_id, limit as i64], |r| {
                Ok(FailureGroup { error: r.get(0)?, runs: r.get::<_, i64>(1)? as u64, example: r.get(2)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{Outcome, RunState};

    #[test]
    fn runs_are_listed_in_pages_by_cell_and_seed_with_who_held_them_and_why_they_failed() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 3, 2);
        let w = worker(&mut s, "w-1");
        let mut failed = vec![];
        for reason in ["data set not found", "data set not found", "out of memory"] {
            let l = s.acquire(&w).unwrap().unwrap();
            s.finish(&w, &l.run_id, l.epoch, 0, &Outcome::Failed(reason.into())).unwrap();
            failed.push(l.run_id);
        }

        let all = s.runs_page(&sweep, &[], None, 100).unwrap();
        assert_eq!(all.len(), 6);
        let order: Vec<(u32, u64)> = all.iter().map(|r| (r.cell, r.seed)).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "(cell, seed) order");
        let mut paged = vec![];
        let mut after = None;
        loop {
            let page = s.runs_page(&sweep, &[], after, 4).unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.cell, last.seed));
            paged.extend(page);
        }
        assert_eq!(paged, all, "pages add up to the whole list");

        let f = s.runs_page(&sweep, &[RunState::Failed], None, 100).unwrap();
        assert_eq!(f.len(), 3);
        for r in &f {
            assert!(failed.contains(&r.id));
            assert_eq!((r.attempts, r.worker.clone()), (1, Some((w.clone(), Some("w-1".to_string())))));
            assert!(r.started_ms.is_some() && r.finished_ms >= r.started_ms && r.error.is_some());
        }
        let queued = s.runs_page(&sweep, &[RunState::Queued, RunState::Leased], None, 100).unwrap();
        assert_eq!(queued.len(), 3);
        assert!(queued.iter().all(|r| r.worker.is_none() && r.started_ms.is_none() && r.finished_ms.is_none()));

        let g = s.failure_groups(&sweep, 10).unwrap();
        assert_eq!(
            g.iter().map(|g| (g.error.as_str(), g.runs)).collect::<Vec<_>>(),
            [("data set not found", 2), ("out of memory", 1)]
        );
        assert!(failed.contains(&g[0].example));
        assert_eq!(s.failure_groups(&sweep, 1).unwrap().len(), 1);
        assert!(s.failure_groups("nope", 10).unwrap().is_empty());
    }
}
