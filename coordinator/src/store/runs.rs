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
    /// Seconds its reported epochs took on their workers, summed.
    pub compute_s: f64,
}

/// One epoch of a run, as its worker reported it (epochs.csv).
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRow {
    /// Epochs done, this one included (from 1).
    pub epoch: u32,
    /// Steps done at its end.
    pub step: u64,
    /// The learning rate of its last step (NaN when not reported).
    pub lr: f64,
    /// Mean mini-batch loss of the epoch (NaN when it diverged).
    pub train_loss: f64,
    /// Wall-clock seconds it trained on its worker (NaN when unknown).
    pub seconds: f64,
    /// The run's final test accuracy, on its last epoch only (else NaN).
    pub test_accuracy: f64,
    /// The run's final test loss, on its last epoch only (else NaN).
    pub test_loss: f64,
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
             r.started_ms, r.finished_ms, r.error, \
             (SELECT TOTAL(e.seconds) FROM epochs e WHERE e.run_id = r.id) \
             FROM runs r LEFT JOIN workers w ON w.id = r.last_worker \
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
                    compute_s: r.get(12)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// A run's epochs in order, the last one with the run's final test
    /// figures once it ended with them. Reads the run's rows of the epochs
    /// table by its primary key.
    pub fn run_epochs(&self, run_id: &str) -> Result<Vec<EpochRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.epoch, e.step, e.lr, e.train_loss, e.seconds, \
             CASE WHEN e.step = json_extract(r.final_json, '$.steps') THEN json_extract(r.final_json, '$.test_accuracy') END, \
             CASE WHEN e.step = json_extract(r.final_json, '$.steps') THEN json_extract(r.final_json, '$.test_loss') END \
             FROM epochs e JOIN runs r ON r.id = e.run_id WHERE e.run_id = ?1 ORDER BY e.epoch",
        )?;
        let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(EpochRow {
                    epoch: r.get(0)?,
                    step: r.get::<_, i64>(1)? as u64,
                    lr: nan(r.get(2)?),
                    train_loss: nan(r.get(3)?),
                    seconds: nan(r.get(4)?),
                    test_accuracy: nan(r.get(5)?),
                    test_loss: nan(r.get(6)?),
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

    /// Issue 13: every epoch a worker reports is kept once; a retried
    /// attempt that reports it again replaces it; the run's final test
    /// figures go with its last epoch.
    #[test]
    fn epochs_are_kept_once_each_in_order_with_the_final_test_figures_on_the_last() {
        let (_dir, mut s, w, l) = leased(1, 1);
        for seq in 1..=3 {
            s.apply_report(&report(&w, &l, seq, progress(seq))).unwrap();
        }
        // The lease lapses; the next attempt resumes from epoch 2 and
        // reports epochs 2 and 3 again.
        s.conn.execute("UPDATE runs SET lease_expires_ms = 0", []).unwrap();
        s.expire_leases(super::super::now_ms(), &super::super::Seen::default()).unwrap();
        let l2 = s.acquire(&w).unwrap().unwrap();
        assert_eq!(l2.run_id, l.run_id);
        for (seq, epoch) in [(1, 2), (2, 3)] {
            let mut body = progress(epoch);
            if let super::super::ReportBody::Progress(p) = &mut body {
                p.seconds = 9.0;
            }
            s.apply_report(&report(&w, &l2, seq, body)).unwrap();
        }
        let e = s.run_epochs(&l.run_id).unwrap();
        assert_eq!(e.iter().map(|e| (e.epoch, e.step)).collect::<Vec<_>>(), [(1, 1), (2, 2), (3, 3)]);
        assert_eq!(e.iter().map(|e| e.seconds).collect::<Vec<_>>(), [0.25, 9.0, 9.0], "the latest report stays");
        assert!(e.iter().all(|e| e.lr == 0.1 && e.train_loss == 0.5 && e.test_accuracy.is_nan()));
        // The run ended after 3 steps with its test figures: on epoch 3 only.
        s.conn
            .execute(
                "UPDATE runs SET final_json = '{\"steps\":3,\"test_accuracy\":0.75,\"test_loss\":0.5}' WHERE id = ?1",
                [&l.run_id],
            )
            .unwrap();
        let e = s.run_epochs(&l.run_id).unwrap();
        assert!(e[..2].iter().all(|e| e.test_accuracy.is_nan() && e.test_loss.is_nan()));
        assert_eq!((e[2].test_accuracy, e[2].test_loss), (0.75, 0.5));
        assert!(s.run_epochs("nope").unwrap().is_empty());
    }
}
