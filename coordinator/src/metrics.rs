//! The coordinator's Prometheus metrics. Counters are bumped by the handlers
//! and the reaper; run and worker counts per state are read from the store at
//! each scrape, so they are never out of step with the database.

use std::time::Instant;

use gradsweep_proto::metrics::{CALL_BUCKETS, Counter, Exposition, Gauge, Histogram, Kind, LATENCY_BUCKETS};

use crate::store::StateCounts;
use crate::store::{RunState, WorkerState};

/// Counters and histograms updated as the coordinator works.
#[derive(Debug)]
pub struct CoordinatorMetrics {
    /// Leases that lapsed and were requeued or failed by the reaper.
    pub lease_expiries: Counter,
    /// Encoded bytes of report messages received.
    pub report_bytes: Counter,
    /// Report messages applied (duplicates included, rejections not).
    pub reports: Counter,
    /// Run sketches combined by cell merges.
    pub sketch_merges: Counter,
    /// Runs finished (any outcome).
    pub runs_finished: Counter,
    /// Time to merge a cell (done by the merger, off the request path).
    pub merge_seconds: Histogram,
    /// Cells waiting for the merger.
    pub cells_pending_merge: Gauge,
    /// Probe shards granted to helpers.
    pub shards_granted: Counter,
    /// Shard results received from helpers.
    pub shards_submitted: Counter,
    /// Shard leases that lapsed (the shard was free again).
    pub shard_expiries: Counter,
    /// Probe passes open for helpers.
    pub shard_passes: Gauge,
    /// Shards leased to helpers right now.
    pub shards_leased: Gauge,
    /// Bytes of shard results waiting for their run's worker.
    pub shard_result_bytes: Gauge,
    /// Batches of transitions committed by the store writer (one sync may
    /// cover several).
    pub commits: Counter,
    /// Transitions committed (their ratio to `commits` is the batch size).
    pub committed_transitions: Counter,
    /// Seconds per batch from its start to its answers: its transitions
    /// run, the commit, then the wait for the sync that makes it durable.
    pub store_batch_seconds: Histogram,
    /// Seconds per sync of the WAL (each covers every batch committed
    /// since the last one).
    pub store_sync_seconds: Histogram,
    /// Seconds each worker call took in the coordinator, by [`Call`].
    call_seconds: Vec<Histogram>,
    started: Instant,
}

/// The worker calls whose time in the coordinator is recorded
/// (`gradsweep_call_seconds{call=…}`): from the handler's start to its
/// answer, so an `Acquire` that long-polls for work counts its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Call {
    /// `Register`.
    Register,
    /// `Heartbeat`.
    Heartbeat,
    /// `Acquire` (a wait for work included).
    Acquire,
    /// `Report` (a whole stream of reports).
    Report,
    /// `Finish`.
    Finish,
    /// `Release`.
    Release,
}

impl Call {
    /// Every call, in the order of the exposition (their declaration
    /// order, which indexes their histograms).
    pub const ALL: &[Call] =
        &[Call::Register, Call::Heartbeat, Call::Acquire, Call::Report, Call::Finish, Call::Release];

    /// The gRPC method's name (the metric's label).
    pub fn name(self) -> &'static str {
        match self {
            Call::Register => "Register",
            Call::Heartbeat => "Heartbeat",
            Call::Acquire => "Acquire",
            Call::Report => "Report",
            Call::Finish => "Finish",
            Call::Release => "Release",
        }
    }
}

/// Records a call's time when dropped ([`CoordinatorMetrics::time`]):
/// every way out of a handler, an error's included, is counted.
#[must_use = "the call is timed until this is dropped"]
pub struct CallTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        CoordinatorMetrics {
            lease_expiries: Counter::default(),
            report_bytes: Counter::default(),
            reports: Counter::default(),
            sketch_merges: Counter::default(),
            runs_finished: Counter::default(),
            merge_seconds: Histogram::new(LATENCY_BUCKETS),
            cells_pending_merge: Gauge::default(),
            shards_granted: Counter::default(),
            shards_submitted: Counter::default(),
            shard_expiries: Counter::default(),
            shard_passes: Gauge::default(),
            shards_leased: Gauge::default(),
            shard_result_bytes: Gauge::default(),
            commits: Counter::default(),
            committed_transitions: Counter::default(),
            store_batch_seconds: Histogram::new(CALL_BUCKETS),
            store_sync_seconds: Histogram::new(CALL_BUCKETS),
            call_seconds: Call::ALL.iter().map(|_| Histogram::new(CALL_BUCKETS)).collect(),
            started: Instant::now(),
        }
    }
}

/// Every state with its count (0 when absent), in declaration order.
fn by_state<S: Copy + PartialEq + std::fmt::Display>(all: &[S], counts: &[(S, u64)]) -> Vec<(String, f64)> {
    all.iter().map(|k| (k.to_string(), counts.iter().find(|(s, _)| s == k).map_or(0.0, |(_, n)| *n as f64))).collect()
}

impl CoordinatorMetrics {
    /// Times one `call` until the returned timer is dropped.
    pub fn time(&self, call: Call) -> CallTimer<'_> {
        CallTimer { histogram: &self.call_seconds[call as usize], started: Instant::now() }
    }

    /// The text exposition, with the store's counts.
    pub fn render(&self, counts: &StateCounts) -> String {
        let queued = counts.runs.iter().filter(|(s, _)| s.is_open()).map(|(_, n)| *n).sum::<u64>();
        let mut e = Exposition::default();
        e.family("gradsweep_runs", "Runs by state.", Kind::Gauge, "state", &by_state(RunState::ALL, &counts.runs))
            .single(
                "gradsweep_pending_runs",
                "Runs queued or leased: the work an autoscaler should size workers for.",
                Kind::Gauge,
                queued as f64,
            )
            .family(
                "gradsweep_workers",
                "Registered workers by state.",
                Kind::Gauge,
                "state",
                &by_state(WorkerState::ALL, &counts.workers),
            )
            .histogram(
                "gradsweep_merge_seconds",
                "Time to merge a cell's runs (off the request path: finishes do not wait for it).",
                &self.merge_seconds,
            )
            .histograms(
                "gradsweep_call_seconds",
                "Time worker calls took in the coordinator, by call (an Acquire's wait for work included).",
                "call",
                &Call::ALL.iter().zip(&self.call_seconds).map(|(c, h)| (c.name(), h)).collect::<Vec<_>>(),
            )
            .histogram(
                "gradsweep_store_batch_seconds",
                "Time per batch of transitions from its start to its answers: running them, the commit, and the \
                 sync that made it durable.",
                &self.store_batch_seconds,
            )
            .histogram(
                "gradsweep_store_sync_seconds",
                "Time per sync of the database's WAL (one covers every batch committed since the last).",
                &self.store_sync_seconds,
            )
            .single(
                "gradsweep_cells_pending_merge",
                "Cells whose merged statistics are behind their finished runs, queued for the merger.",
                Kind::Gauge,
                self.cells_pending_merge.get(),
            )
            .single(
                "gradsweep_probe_passes_open",
                "Probe passes whose shards are offered to idle workers.",
                Kind::Gauge,
                self.shard_passes.get(),
            )
            .single(
                "gradsweep_probe_shards_leased",
                "Probe shards leased to helper workers right now.",
                Kind::Gauge,
                self.shards_leased.get(),
            )
            .single(
                "gradsweep_probe_shard_result_bytes",
                "Bytes of probe shard results held for their run's worker.",
                Kind::Gauge,
                self.shard_result_bytes.get(),
            )
            .single(
                "gradsweep_uptime_seconds",
                "Seconds since this coordinator process opened its state.",
                Kind::Gauge,
                self.started.elapsed().as_secs_f64(),
            );
        let counters = [
            (
                "gradsweep_lease_expiries_total",
                "Leases that lapsed and whose runs were requeued.",
                &self.lease_expiries,
            ),
            ("gradsweep_report_bytes_total", "Encoded bytes of report messages received.", &self.report_bytes),
            ("gradsweep_reports_total", "Report messages accepted (re-sent duplicates included).", &self.reports),
            ("gradsweep_sketch_merges_total", "Run sketches combined by cell merges.", &self.sketch_merges),
            ("gradsweep_runs_finished_total", "Finish calls accepted (retries included).", &self.runs_finished),
            (
                "gradsweep_store_commits_total",
                "Store commits, each of a batch of transitions (one sync may cover several).",
                &self.commits,
            ),
            (
                "gradsweep_store_transitions_total",
                "State transitions committed (divided by commits: the group-commit batch size).",
                &self.committed_transitions,
            ),
            ("gradsweep_probe_shards_granted_total", "Probe shards granted to helper workers.", &self.shards_granted),
            (
                "gradsweep_probe_shards_submitted_total",
                "Probe shard results received from helpers.",
                &self.shards_submitted,
            ),
            (
                "gradsweep_probe_shard_expiries_total",
                "Probe shard leases that lapsed (the shard was free again).",
                &self.shard_expiries,
            ),
        ];
        for (name, help, c) in counters {
            e.single(name, help, Kind::Counter, c.get() as f64);
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_timed_call_lands_in_its_own_histogram() {
        let m = CoordinatorMetrics::default();
        drop(m.time(Call::Heartbeat));
        drop(m.time(Call::Heartbeat));
        drop(m.time(Call::Finish));
        let text = m.render(&StateCounts { runs: vec![], workers: vec![] });
        for call in Call::ALL {
            let n = match call {
                Call::Heartbeat => 2,
                Call::Finish => 1,
                _ => 0,
            };
            let line = format!("gradsweep_call_seconds_count{{call=\"{}\"}} {n}\n", call.name());
            assert!(text.contains(&line), "{line} in:\n{text}");
        }
        assert!(text.contains("# TYPE gradsweep_store_batch_seconds histogram\n"), "{text}");
        assert!(text.contains("# TYPE gradsweep_store_sync_seconds histogram\n"), "{text}");
    }
}
