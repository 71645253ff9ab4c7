//! The worker's Prometheus metrics: training throughput, probe time, runs.

use std::time::Instant;

use gradsweep_proto::metrics::{Counter, Exposition, Gauge, Histogram, Kind};

/// Probe durations span milliseconds (tiny models) to minutes (exact D of a
/// large model), so the buckets reach 10 minutes.
const PROBE_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Counters and gauges updated by the worker's runs.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Training samples processed (mini-batch rows).
    pub samples: Counter,
    /// SGD steps taken.
    pub steps: Counter,
    /// Throughput of the most recently finished epoch of any run.
    pub epoch_samples_per_second: Gauge,
    /// Wall time of each probe (per-sample gradients, sketch, statistics).
    pub probe_seconds: Histogram,
    /// Runs started on this worker.
    pub runs_started: Counter,
    /// Runs finished and acknowledged.
    pub runs_finished: Counter,
    /// Runs resumed from a checkpoint.
    pub runs_resumed: Counter,
    /// Runs whose lease was lost.
    pub runs_lost: Counter,
    /// Runs executing now.
    pub active_runs: Gauge,
    /// Report messages sent and acknowledged.
    pub reports_acked: Counter,
    /// Idle slots lent to probe passes (one per slot per pass).
    pub probe_slots_lent: Counter,
    /// Probe passes this worker's runs offered to other workers.
    pub probe_passes_published: Counter,
    /// Other workers' probe shards computed and delivered here.
    pub probe_shards_computed: Counter,
    /// Other workers' probe shards dropped (lease lost, pass closed).
    pub probe_shards_lost: Counter,
    started: Instant,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            samples: Counter::default(),
            steps: Counter::default(),
            epoch_samples_per_second: Gauge::default(),
            probe_seconds: Histogram::new(PROBE_BUCKETS),
            runs_started: Counter::default(),
            runs_finished: Counter::default(),
            runs_resumed: Counter::default(),
            runs_lost: Counter::default(),
            active_runs: Gauge::default(),
            reports_acked: Counter::default(),
            probe_slots_lent: Counter::default(),
            probe_passes_published: Counter::default(),
            probe_shards_computed: Counter::default(),
            probe_shards_lost: Counter::default(),
            started: Instant::now(),
        }
    }
}

impl WorkerMetrics {
    /// The text exposition.
    pub fn render(&self, slots: u32) -> String {
        let mut e = Exposition::default();
        let counters = [
            ("gradsweep_worker_samples_total", "Training samples processed.", &self.samples),
            ("gradsweep_worker_steps_total", "SGD steps taken.", &self.steps),
            ("gradsweep_worker_runs_started_total", "Runs started.", &self.runs_started),
            ("gradsweep_worker_runs_finished_total", "Runs finished and acknowledged.", &self.runs_finished),
            ("gradsweep_worker_runs_lost_total", "Runs whose lease was lost.", &self.runs_lost),
            ("gradsweep_worker_runs_resumed_total", "Runs resumed from a checkpoint.", &self.runs_resumed),
            (
                "gradsweep_worker_reports_acked_total",
                "Report messages acknowledged by the coordinator.",
                &self.reports_acked,
            ),
            (
                "gradsweep_worker_probe_slots_lent_total",
                "Idle slots lent to a running probe's shards, counted once per slot and pass.",
                &self.probe_slots_lent,
            ),
            (
                "gradsweep_worker_probe_passes_published_total",
                "Probe passes of this worker's runs offered to other workers.",
                &self.probe_passes_published,
            ),
            (
                "gradsweep_worker_probe_shards_computed_total",
                "Probe shards of other workers' runs computed and delivered.",
                &self.probe_shards_computed,
            ),
            (
                "gradsweep_worker_probe_shards_lost_total",
                "Probe shards of other workers' runs dropped (lease lost or pass closed).",
                &self.probe_shards_lost,
            ),
        ];
        for (name, help, c) in counters {
            e.single(name, help, Kind::Counter, c.get() as f64);
        }
        let gauges = [
            (
                "gradsweep_worker_samples_per_second",
                "Training throughput of the most recently finished epoch (one run, one core).",
                self.epoch_samples_per_second.get(),
            ),
            ("gradsweep_worker_active_runs", "Runs executing now.", self.active_runs.get()),
            ("gradsweep_worker_slots", "Runs this worker executes at once.", slots as f64),
            (
                "gradsweep_worker_uptime_seconds",
                "Seconds since the worker started.",
                self.started.elapsed().as_secs_f64(),
            ),
        ];
        for (name, help, v) in gauges {
            e.single(name, help, Kind::Gauge, v);
        }
        e.histogram("gradsweep_worker_probe_seconds", "Wall time of one probe.", &self.probe_seconds);
        e.finish()
    }
}
