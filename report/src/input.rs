//! What a report is drawn from: the results document, the spectra the
//! exports write as NPY, and the runs with their epochs — and the one place
//! the wire's run rows become the report's.

use std::collections::BTreeMap;

use gradsweep_proto::v1 as pb;
use gradsweep_shared::digest::CellSpectra;

use crate::document::ResultsDocument;

/// One epoch of a run, as its worker reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    /// Epoch number (1-based: the epoch just ended).
    pub epoch: u32,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Test accuracy at the epoch's end (NaN when not evaluated).
    pub test_accuracy: f64,
    /// Seconds the epoch took on its worker.
    pub seconds: f64,
}

/// One run: where it stands and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Run identifier.
    pub run_id: String,
    /// Its cell.
    pub cell: u32,
    /// Its seed.
    pub seed: u64,
    /// Its state (its word: [`pb::RunState::word`]).
    pub state: pb::RunState,
    /// Times it was leased.
    pub attempts: u32,
    /// The worker that ran it last (its name; empty if never leased).
    pub worker: String,
    /// That worker's host, when the coordinator still knows it.
    pub host: Option<String>,
    /// When its last attempt started (ms since the Unix epoch; 0: never).
    pub started_at_ms: i64,
    /// When it ended (ms since the Unix epoch; 0: not yet).
    pub finished_at_ms: i64,
    /// Why it failed, or why its last attempt was lost (empty: no error).
    pub error: String,
    /// Seconds of compute its epochs took on their workers.
    pub compute_s: f64,
    /// Its epochs so far (kept only for the cells the report draws).
    pub epochs: Vec<EpochPoint>,
}

impl RunRow {
    /// A run row from the wire's, with `hosts` mapping worker ids to host
    /// names; its epochs are kept when `with_epochs` (their total time,
    /// which the wire carries without them, always).
    pub fn from_wire(r: &pb::RunInfo, hosts: &BTreeMap<String, String>, with_epochs: bool) -> Self {
        RunRow {
            run_id: r.run_id.clone(),
            cell: r.cell,
            seed: r.seed,
            state: r.state(),
            attempts: r.attempts,
            worker: r.worker_name.clone(),
            host: hosts.get(&r.worker_id).cloned(),
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            error: r.error.clone(),
            compute_s: r.compute_seconds,
            epochs: r
                .epochs
                .iter()
                .filter(|_| with_epochs)
                .map(|e| EpochPoint {
                    epoch: e.epoch,
                    train_loss: e.train_loss,
                    test_accuracy: e.test_accuracy,
                    seconds: e.seconds,
                })
                .collect(),
        }
    }

    /// Seconds from start to end (to `now_ms` while running), `None` when
    /// never started.
    pub fn duration_s(&self, now_ms: i64) -> Option<f64> {
        if self.started_at_ms <= 0 {
            return None;
        }
        let end = if self.finished_at_ms > 0 { self.finished_at_ms } else { now_ms };
        Some((end - self.started_at_ms).max(0) as f64 / 1000.0)
    }
}

/// Host names by worker id, from the coordinator's worker list.
pub fn hosts(workers: &[pb::WorkerInfo]) -> BTreeMap<String, String> {
    workers.iter().map(|w| (w.worker_id.clone(), w.hostname.clone())).collect()
}

/// Everything a report is drawn from.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// results.json.
    pub results: ResultsDocument,
    /// Each cell's spectra (the lists behind `spectra/*.spectrum.npy`).
    pub spectra: Vec<(u32, CellSpectra)>,
    /// Every run, with its epochs.
    pub runs: Vec<RunRow>,
    /// When the report was made (ms since the Unix epoch).
    pub made_at_ms: i64,
    /// Cells that get their own section of figures; `None`: the report
    /// chooses ([`crate::DETAIL_CELLS`] spread over η/b).
    pub detail_cells: Option<Vec<u32>>,
    /// For a live page: reload every this many seconds while the sweep has
    /// work.
    pub refresh_s: Option<u32>,
}
