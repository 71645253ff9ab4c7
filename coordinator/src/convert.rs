//! Conversions between wire messages and the store's domain types — the
//! only place that knows both.

use gradsweep_proto::v1 as pb;
use gradsweep_shared::epochs::{EpochStats, PeakTest};
use gradsweep_shared::json_f64::F64;
use gradsweep_shared::results::{BracketKind, CellBracket, CellEpochs, CellResult, RunResult, SweepSummary};
use gradsweep_shared::run::{ProbeMeta, SizingStop};
use gradsweep_shared::scaling::CollapseScore;
use gradsweep_shared::spec::{ProbeConfig, ProjectionBasis, RunFinal, RunSpec, SketchSize, TrainConfig, WirePrecision};
use gradsweep_shared::stats::RankThresholds;
use gradsweep_shared::stats::{Bracket, SpectrumStats, Summary};
use gradsweep_shared::trajectory::DriftStats;

use crate::error::{CoordinatorError, Result};
use crate::shards::{PassOwner, ShardGrant, ShardLease, ShardView};
use crate::store::{
    BlobKind, Chunk, EpochRow, FailureGroup, Lease, Outcome, Progress, Report, ReportBody, RunRow, RunState,
    SavedProbeRef, SweepRow, WorkerRow,
};

/// A stored probe's saved gradient rows and weights as NPY files (rows × d,
/// and d), each cut into chunks under the message limit. Nothing when the
/// probe kept none.
pub fn saved_gradients_from_blob(r: &SavedProbeRef, blob: &[u8]) -> Result<Vec<pb::GradientsChunk>> {
    let p = gradsweep_shared::ProbeRecord::decode(blob, Some(r.params))
        .map_err(|e| CoordinatorError::Internal(format!("run {} probe {}: {e}", r.run_id, r.index)))?;
    Ok(saved_gradients_to_wire(r, &p))
}

/// A cell's spectra to the wire, in chunks under the message limit.
pub fn spectra_to_wire(cell: u32, spectra: &gradsweep_shared::digest::CellSpectra) -> Vec<pb::SpectraChunk> {
    let bytes = spectra.encode();
    let parts = gradsweep_proto::chunk_slices(&bytes);
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, data)| pb::SpectraChunk { cell, chunk_index: i as u32, chunk_count: count, data: data.to_vec() })
        .collect()
}

fn saved_gradients_to_wire(r: &SavedProbeRef, p: &gradsweep_shared::ProbeRecord) -> Vec<pb::GradientsChunk> {
    let Some(s) = &p.saved else { return vec![] };
    let d = s.weights.len();
    let files = [
        (false, gradsweep_shared::npy::write_f32(s.rows as usize, d, &s.gradients)),
        (true, gradsweep_shared::npy::write_f32_vector(&s.weights)),
    ];
    let mut out = vec![];
    for (weights, bytes) in files {
        let parts = gradsweep_proto::chunk_slices(&bytes);
        let count = parts.len() as u32;
        out.extend(parts.into_iter().enumerate().map(|(i, data)| pb::GradientsChunk {
            cell: r.cell,
            seed: r.seed,
            probe_index: r.index,
            epoch: p.meta.epoch,
            weights,
            chunk_index: i as u32,
            chunk_count: count,
            data: data.to_vec(),
        }));
    }
    out
}

fn bad(m: impl Into<String>) -> CoordinatorError {
    CoordinatorError::InvalidArgument(m.into())
}

/// A report from the wire.
pub fn report_from_wire(r: pb::ReportRequest) -> Result<Report> {
    use pb::report_request::Body;
    if r.run_id.is_empty() || r.worker_id.is_empty() {
        return Err(bad("report without run or worker id"));
    }
    if r.seq == 0 {
        return Err(bad(format!("run `{}`: sequence numbers start at 1", r.run_id)));
    }
    let chunk = |kind, c: pb::BlobChunk| {
        ReportBody::Chunk(Chunk {
            kind,
            index: c.index,
            chunk_index: c.chunk_index,
            chunk_count: c.chunk_count,
            data: c.data,
        })
    };
    let body = match r.body {
        Some(Body::Progress(p)) => ReportBody::Progress(Progress {
            step: p.step,
            total_steps: p.total_steps,
            train_loss: p.train_loss,
            epoch: p.epoch,
            lr: p.lr,
            seconds: p.seconds,
        }),
        Some(Body::Probe(c)) => chunk(BlobKind::Probe, c),
        Some(Body::Trajectory(c)) => chunk(BlobKind::Trajectory, c),
        Some(Body::Checkpoint(c)) => chunk(BlobKind::Checkpoint, c),
        None => return Err(bad(format!("run `{}`: report {} has no body", r.run_id, r.seq))),
    };
    Ok(Report { worker_id: r.worker_id, run_id: r.run_id, epoch: r.epoch, seq: r.seq, body })
}

/// The rank thresholds a results request asks for.
pub fn thresholds_from_wire(r: &pb::ResultsRequest) -> Result<RankThresholds> {
    let th =
        RankThresholds { relative: r.rank_thresholds_relative.clone(), absolute: r.rank_thresholds_absolute.clone() };
    th.validate().map_err(|m| bad(format!("sweep `{}`: {m}", r.sweep_id)))?;
    Ok(th)
}

/// A finish request's outcome.
pub fn outcome_from_wire(f: &pb::FinishRequest) -> Result<Outcome> {
    let fin = || -> Result<RunFinal> {
        f.final_figures
            .as_ref()
            .map(final_from_wire)
            .ok_or_else(|| bad(format!("run `{}`: finished without its final figures", f.run_id)))
    };
    match pb::RunOutcome::try_from(f.outcome) {
        Ok(pb::RunOutcome::Completed) => Ok(Outcome::Completed(fin()?)),
        Ok(pb::RunOutcome::Diverged) => Ok(Outcome::Diverged(fin()?)),
        Ok(pb::RunOutcome::Failed) => {
            Ok(Outcome::Failed(if f.error.is_empty() { "unspecified failure".into() } else { f.error.clone() }))
        }
        _ => Err(bad(format!("run `{}`: unknown outcome {}", f.run_id, f.outcome))),
    }
}

fn final_to_wire(f: RunFinal) -> pb::RunFinal {
    gradsweep_proto::moved_fields!(f => pb::RunFinal {
        steps, train_loss, final_train_loss, test_accuracy, test_loss, diverged, weights_hash;
        params: f.params as u64,
    })
}

fn final_from_wire(f: &pb::RunFinal) -> RunFinal {
    let f = *f;
    gradsweep_proto::moved_fields!(f => RunFinal {
        steps, train_loss, final_train_loss, test_accuracy, test_loss, diverged, weights_hash;
        params: f.params as usize,
    })
}

/// A run's spec to the wire (every field; the worker side reads it back in
/// `gradsweep_worker::convert::spec_from_wire`).
pub fn spec_to_wire(s: &RunSpec) -> pb::RunSpec {
    let RunSpec { train, probe, seed, user } = s;
    pb::RunSpec {
        train: Some(train_to_wire(train)),
        probe: Some(probe_to_wire(probe)),
        seed: *seed,
        user: gradsweep_proto::grid_value::map_to_wire(user),
    }
}

fn train_to_wire(t: &TrainConfig) -> pb::TrainConfig {
    let t = t.clone();
    gradsweep_proto::moved_fields!(t => pb::TrainConfig {
        model, dataset, epochs, lr, batch_size, momentum, weight_decay, replacement, test_fraction, split_seed,
        data_dir, classes, downsample, normalize, nesterov, lr_schedule, lr_step_epochs, lr_milestones, lr_gamma,
        checkpoint_every_epochs, checkpoint_every_steps, control_lambda, control_steps;
        trainer: t.trainer.name(),
    })
}

fn probe_to_wire(p: &ProbeConfig) -> pb::ProbeConfig {
    use pb::probe_config::SketchRank;
    let p = p.clone();
    gradsweep_proto::moved_fields!(p => pb::ProbeConfig {
        every_epochs, at_epochs, memory_mb, shard_samples, save_gradients, keep_sketches, digest_vectors,
        projections, basis_probe, max_lag, burn_in_epochs, projection_seed, block_size, psd_window, epoch_psd_window,
        exact;
        sketch_rank: Some(match p.sketch_rank {
            SketchSize::Auto => SketchRank::SketchAuto(pb::SketchAuto {}),
            SketchSize::Fixed(l) => SketchRank::SketchFixed(l),
        }),
        basis: match p.basis {
            ProjectionBasis::Random => pb::ProjectionBasis::Random,
            ProjectionBasis::Eigen => pb::ProjectionBasis::Eigen,
        } as i32,
        wire_precision: match p.wire_precision {
            WirePrecision::F32 => pb::WirePrecision::F32,
            WirePrecision::F16 => pb::WirePrecision::F16,
        } as i32,
    })
}

/// A cell's results to the wire (its typed `CellResult`; the client reads
/// it back in `gradsweep_cli::convert`).
pub fn cell_to_wire(c: CellResult) -> pb::CellResult {
    gradsweep_proto::moved_fields!(c => pb::CellResult {
        results_version, index, lr, batch_size, eta_over_b, temperature, area_rate_detectable,
        cycling_frequency_detectable;
        params: gradsweep_proto::grid_value::map_to_wire(&c.params),
        seeds_total: c.seeds_total as u64,
        seeds_done: c.seeds_done as u64,
        seeds_diverged: c.seeds_diverged as u64,
        d: c.d as u64,
        train_loss: Some(summary_to_wire(c.train_loss)),
        test_accuracy: Some(summary_to_wire(c.test_accuracy)),
        merged_final: c.merged_final.map(spectrum_to_wire),
        rank: Some(summary_to_wire(c.rank)),
        rank_fraction: Some(summary_to_wire(c.rank_fraction)),
        rank_certified: c.rank_certified.map(cell_bracket_to_wire),
        trace: Some(summary_to_wire(c.trace)),
        lambda_max: Some(summary_to_wire(c.lambda_max)),
        area_rate: Some(summary_to_wire(c.area_rate)),
        eigenspace_overlap: Some(summary_to_wire(c.eigenspace_overlap)),
        cycling_frequency: Some(summary_to_wire(c.cycling_frequency)),
        msd_exponent: Some(summary_to_wire(c.msd_exponent)),
        autocorrelation: Some(summary_to_wire(c.autocorrelation)),
        spectral_exponent: Some(summary_to_wire(c.spectral_exponent)),
        peak_to_background: Some(summary_to_wire(c.peak_to_background)),
        grad_norm: Some(summary_to_wire(c.grad_norm)),
        merged_drift: c.merged_drift.map(drift_to_wire),
        epochs: c.epochs.map(cell_epochs_to_wire),
        runs: c.runs.into_iter().map(run_result_to_wire).collect(),
    })
}

/// A sweep's summary to the wire, without its η/b rows (the client
/// rebuilds them from the cells).
pub fn sweep_summary_to_wire(s: SweepSummary) -> pb::SweepSummary {
    gradsweep_proto::moved_fields!(s => pb::SweepSummary {
        sweep_id, name;
        cells: s.cells as u64,
        runs_total: s.runs_total as u64,
        runs_done: s.runs_done as u64,
        collapse: s.collapse.into_iter().map(collapse_to_wire).collect(),
    })
}

fn collapse_to_wire(c: CollapseScore) -> pb::CollapseScore {
    gradsweep_proto::moved_fields!(c => pb::CollapseScore {
        statistic, score, ci_lo, ci_hi, r2_separate, r2_ratio, slope_ratio, p_value, note;
        cells: c.cells as u64,
    })
}

fn summary_to_wire(s: Summary) -> pb::Summary {
    gradsweep_proto::moved_fields!(s => pb::Summary { mean, std, ci95; count: s.count as u64 })
}

fn bracket_to_wire(b: Bracket) -> Option<pb::Bracket> {
    Some(pb::Bracket { estimate: b.value, lo: b.lo, hi: b.hi })
}

fn threshold_ranks_to_wire(v: Vec<(f64, Bracket)>) -> Vec<pb::ThresholdRank> {
    v.into_iter().map(|(threshold, b)| pb::ThresholdRank { threshold, rank: bracket_to_wire(b) }).collect()
}

fn spectrum_to_wire(s: SpectrumStats) -> pb::SpectrumStats {
    gradsweep_proto::moved_fields!(s => pb::SpectrumStats {
        n, eig_error, trace, top_eigenvalues, rank_threshold, rank_resolved, rank_needs_ell, grad_norm_sq,
        effective_rank, resolved_trace_fraction, noise_scale;
        d: s.d as u64,
        ell: s.ell as u64,
        lambda_max: bracket_to_wire(s.lambda_max),
        rank: bracket_to_wire(s.rank),
        rank_fraction: bracket_to_wire(s.rank_fraction),
        ranks_relative: threshold_ranks_to_wire(s.ranks_relative),
        ranks_absolute: threshold_ranks_to_wire(s.ranks_absolute),
        stable_rank: bracket_to_wire(s.stable_rank),
        isotropy: bracket_to_wire(s.isotropy),
        energy_rank_90: bracket_to_wire(s.energy_rank_90),
        energy_rank_99: bracket_to_wire(s.energy_rank_99),
    })
}

fn cell_bracket_to_wire(b: CellBracket) -> pb::CellBracket {
    gradsweep_proto::moved_fields!(b => pb::CellBracket {
        lo, hi, ci95, ceiling, resolved, needs_ell, exact_ell;
        seeds: b.seeds as u64,
        memory_cap: b.memory_cap.map(|(max_ell, memory_mb)| pb::MemoryCap { max_ell, memory_mb }),
        kind: match b.kind {
            BracketKind::PaperRank => pb::BracketKind::PaperRank,
            BracketKind::Count => pb::BracketKind::Count,
            BracketKind::Value => pb::BracketKind::Value,
        } as i32,
    })
}

fn drift_to_wire(d: DriftStats) -> pb::DriftStats {
    let lags =
        |v: Vec<(usize, f64)>| v.into_iter().map(|(lag, value)| pb::LagValue { lag: lag as u64, value }).collect();
    let freqs = |v: Vec<(f64, f64)>| v.into_iter().map(|(frequency, value)| pb::FrequencyValue { frequency, value });
    let rows = |m: Vec<Vec<F64>>| {
        m.into_iter().map(|r| pb::DoubleRow { values: r.into_iter().map(|x| x.0).collect() }).collect()
    };
    gradsweep_proto::moved_fields!(d => pb::DriftStats {
        points, area_rate, max_area_rate, cycling_frequency, max_pair_cycling_frequency, msd_exponent,
        spectral_exponent, peak_frequency, peak_to_background, circulation_frequency;
        max_area_pair: Some(pb::IndexPair { i: d.max_area_pair.0 as u64, j: d.max_area_pair.1 as u64 }),
        msd: lags(d.msd),
        autocorrelation: lags(d.autocorrelation),
        spectrum: freqs(d.spectrum).collect(),
        quadrature_spectrum: freqs(d.quadrature_spectrum).collect(),
        area_rates: rows(d.area_rates),
        cycling_frequencies: rows(d.cycling_frequencies),
    })
}

fn increments_to_wire(v: Vec<(F64, F64, F64)>) -> Vec<pb::IncrementPower> {
    v.into_iter().map(|(f, m, s)| pb::IncrementPower { frequency: f.0, mean: m.0, std: s.0 }).collect()
}

fn peak_to_wire(p: PeakTest) -> pb::PeakTest {
    gradsweep_proto::moved_fields!(p => pb::PeakTest {
        statistic, frequency, p_value;
        coordinate: p.coordinate as u64,
        surrogates: p.surrogates as u64,
    })
}

fn cell_epochs_to_wire(e: CellEpochs) -> pb::CellEpochs {
    pb::CellEpochs {
        epochs: Some(summary_to_wire(e.epochs)),
        merged_drift: e.merged_drift.map(drift_to_wire),
        increment_spectrum: increments_to_wire(e.increment_spectrum),
        weight_norm_trend: Some(summary_to_wire(e.weight_norm_trend)),
        peaks_significant: e.peaks_significant as u64,
        peaks_tested: e.peaks_tested as u64,
        strongest_peak: e.strongest_peak.map(|(seed, t)| pb::SeedPeak { seed, test: Some(peak_to_wire(t)) }),
    }
}

fn epoch_stats_to_wire(e: EpochStats) -> pb::EpochStats {
    gradsweep_proto::moved_fields!(e => pb::EpochStats {
        epochs, weight_norm_first, weight_norm_last, weight_norm_trend;
        drift: Some(drift_to_wire(e.drift)),
        increment_spectrum: increments_to_wire(e.increment_spectrum),
        peaks: e.peaks.map(peak_to_wire),
    })
}

fn probe_meta_to_wire(m: ProbeMeta) -> pb::ProbeMeta {
    use pb::probe_sizing::Stop;
    gradsweep_proto::moved_fields!(m => pb::ProbeMeta {
        index, epoch, step, train_loss, train_accuracy, saved_rows;
        exact: m.exact.map(spectrum_to_wire),
        sizing: m.sizing.map(|s| pb::ProbeSizing {
            passes: s.passes,
            stop: Some(match s.stop {
                SizingStop::Fixed => Stop::Fixed(pb::SizingFixed {}),
                SizingStop::Resolved => Stop::Resolved(pb::SizingResolved {}),
                SizingStop::MemoryCap { max_ell, memory_mb } => Stop::MemoryCap(pb::MemoryCap { max_ell, memory_mb }),
                SizingStop::ExactSize => Stop::ExactSize(pb::SizingExactSize {}),
            }),
        }),
    })
}

fn run_result_to_wire(r: RunResult) -> pb::RunResult {
    gradsweep_proto::moved_fields!(r => pb::RunResult {
        run_id, seed;
        final_figures: Some(final_to_wire(r.fin)),
        probes: r
            .probes
            .into_iter()
            .map(|p| pb::ProbeSummary {
                meta: Some(probe_meta_to_wire(p.meta)),
                spectrum: Some(spectrum_to_wire(p.spectrum)),
            })
            .collect(),
        pooled: r.pooled.map(spectrum_to_wire),
        drift: r.drift.map(drift_to_wire),
        eigenspace_overlap: r.eigenspace_overlap.into_iter().map(|x| x.0).collect(),
        grad_norm: r.grad_norm.into_iter().map(|(epoch, x)| pb::EpochValue { epoch, value: x.0 }).collect(),
        epochs: r.epochs.map(epoch_stats_to_wire),
    })
}

/// Leases named on the wire.
pub fn leases_from_wire(runs: &[pb::RunLease]) -> Vec<(String, u64)> {
    runs.iter().map(|l| (l.run_id.clone(), l.epoch)).collect()
}

/// Leases to the wire.
pub fn leases_to_wire(runs: Vec<(String, u64)>) -> Vec<pb::RunLease> {
    runs.into_iter().map(|(run_id, epoch)| pb::RunLease { run_id, epoch }).collect()
}

/// A granted run to the wire.
pub fn lease_to_wire(l: Lease) -> pb::RunAssignment {
    pb::RunAssignment {
        run_id: l.run_id,
        epoch: l.epoch,
        sweep_id: l.sweep_id,
        spec: Some(spec_to_wire(&l.spec)),
        resume_seq: l.resume_seq,
    }
}

/// Shard leases from the wire.
pub fn shard_leases_from_wire(leases: &[pb::ShardLease]) -> Vec<ShardLease> {
    leases.iter().map(shard_lease_from_wire).collect()
}

fn shard_lease_from_wire(l: &pb::ShardLease) -> ShardLease {
    ShardLease { pass_id: l.pass_id, shard: l.shard, epoch: l.epoch }
}

/// A shard lease named in a request (required).
pub fn shard_lease_required(l: Option<&pb::ShardLease>) -> Result<ShardLease> {
    l.map(shard_lease_from_wire).ok_or_else(|| bad("request without a shard lease"))
}

/// Shard leases to the wire.
pub fn shard_leases_to_wire(leases: Vec<ShardLease>) -> Vec<pb::ShardLease> {
    leases.into_iter().map(|l| pb::ShardLease { pass_id: l.pass_id, shard: l.shard, epoch: l.epoch }).collect()
}

/// A granted shard to the wire.
pub fn shard_grant_to_wire(g: ShardGrant) -> pb::ShardAssignment {
    let l = g.lease;
    pb::ShardAssignment {
        lease: Some(pb::ShardLease { pass_id: l.pass_id, shard: l.shard, epoch: l.epoch }),
        run_id: g.run_id,
        sweep_id: g.sweep_id,
        spec: Some(spec_to_wire(&g.spec)),
    }
}

/// The pass a run's worker names, and the run lease it names it under.
pub fn pass_ref_from_wire(p: Option<pb::PassRef>) -> Result<(u64, PassOwner)> {
    let p = p.ok_or_else(|| bad("request without a probe pass"))?;
    if p.worker_id.is_empty() || p.run_id.is_empty() {
        return Err(bad("probe pass named without run or worker id"));
    }
    Ok((p.pass_id, PassOwner { worker_id: p.worker_id, run_id: p.run_id, epoch: p.epoch }))
}

/// Where a shard stands, to the wire: one message, or the result's chunks.
pub fn shard_view_to_wire(v: ShardView) -> Vec<pb::TakeShardChunk> {
    let state =
        |s: pb::ShardState| pb::TakeShardChunk { state: s as i32, chunk_index: 0, chunk_count: 0, data: vec![] };
    match v {
        ShardView::Pending => vec![state(pb::ShardState::Pending)],
        ShardView::Claimed => vec![state(pb::ShardState::Claimed)],
        ShardView::Compute => vec![state(pb::ShardState::Compute)],
        ShardView::Done(data) => {
            let parts = gradsweep_proto::chunk_slices(&data);
            let count = parts.len() as u32;
            parts
                .into_iter()
                .enumerate()
                .map(|(i, d)| pb::TakeShardChunk {
                    state: pb::ShardState::Done as i32,
                    chunk_index: i as u32,
                    chunk_count: count,
                    data: d.to_vec(),
                })
                .collect()
        }
    }
}

/// A stored checkpoint as wire chunks, each under the message size limit.
pub fn checkpoint_chunks(data: &[u8]) -> Vec<pb::CheckpointChunk> {
    let parts = gradsweep_proto::chunk_slices(data);
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, d)| pb::CheckpointChunk { chunk_index: i as u32, chunk_count: count, data: d.to_vec() })
        .collect()
}

/// A sweep's status to the wire.
pub fn sweep_to_wire(s: &SweepRow, failures: &[FailureGroup]) -> pb::SweepStatus {
    pb::SweepStatus {
        sweep_id: s.id.clone(),
        name: s.name.clone(),
        state: s.state.to_wire() as i32,
        cells: s.cells,
        runs_total: s.total(),
        runs_queued: s.count(RunState::Queued),
        runs_running: s.count(RunState::Leased),
        runs_completed: s.count(RunState::Completed),
        runs_failed: s.count(RunState::Failed),
        runs_diverged: s.count(RunState::Diverged),
        runs_cancelled: s.count(RunState::Cancelled),
        progress: s.progress,
        created_at_ms: s.created_ms,
        ended_at_ms: s.ended_ms.unwrap_or(0),
        grid_file: s.file_name.clone(),
        failures: failures
            .iter()
            .map(|f| pb::FailureGroup {
                error: f.error.clone(),
                runs: f.runs as u32,
                example_run_id: f.example.clone(),
            })
            .collect(),
    }
}

/// A sweep's status as `Status` sends it: its counts and its failures
/// grouped by reason.
pub fn sweep_status(store: &crate::store::Store, sweep_id: &str) -> Result<pb::SweepStatus> {
    Ok(sweep_to_wire(&store.sweep(sweep_id)?, &store.failure_groups(sweep_id, FAILURE_GROUPS)?))
}

/// Every sweep's status, newest first.
pub fn all_sweep_statuses(store: &crate::store::Store) -> Result<Vec<pb::SweepStatus>> {
    store.sweeps()?.into_iter().map(|r| Ok(sweep_to_wire(&r, &store.failure_groups(&r.id, FAILURE_GROUPS)?))).collect()
}

/// Failure groups a sweep's status carries.
pub const FAILURE_GROUPS: usize = 10;

/// Runs per `ListRuns` page: well under the message limit (a run is a few
/// hundred bytes with a long error).
pub const RUNS_PER_PAGE: usize = 1000;

/// One page of a sweep's runs on the wire ([`runs_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunsPage {
    /// The runs, in (cell, seed) order.
    pub runs: Vec<pb::RunInfo>,
    /// The last run's (cell, seed): where the next page starts.
    pub last: Option<(u32, u64)>,
    /// Whether the page is full, so more may follow.
    pub full: bool,
}

/// Epochs per `ListRuns` page when runs come with their epochs: a page
/// holds as many runs as keep it under this many epochs (an epoch is about
/// 50 bytes on the wire).
pub const EPOCHS_PER_PAGE: usize = 40_000;

/// Runs per page of `plan`'s sweep: [`RUNS_PER_PAGE`], or fewer when each
/// comes with its epochs.
pub fn runs_per_page(plan: &gradsweep_shared::SweepPlan, with_epochs: bool) -> usize {
    if !with_epochs {
        return RUNS_PER_PAGE;
    }
    let most = plan.cells.iter().map(|c| c.train.epochs as usize).max().unwrap_or(1).max(1);
    (EPOCHS_PER_PAGE / most).clamp(1, RUNS_PER_PAGE)
}

/// Where a listing of a sweep's runs stands: the one paging loop behind
/// `ListRuns` and the offline [`crate::offline::RunPages`]. Each page is
/// read on its own (a read connection's short transaction), so a sweep of
/// any size is listed in bounded memory.
#[derive(Debug, Clone)]
pub struct RunsCursor {
    sweep_id: String,
    states: Vec<RunState>,
    plan: std::sync::Arc<gradsweep_shared::SweepPlan>,
    with_epochs: bool,
    after: Option<(u32, u64)>,
    done: bool,
}

impl RunsCursor {
    /// A listing of `sweep_id`'s runs in (cell, seed) order, only those in
    /// `states` unless empty, each with its epochs when `with_epochs`.
    pub fn new(
        sweep_id: String,
        states: Vec<RunState>,
        plan: std::sync::Arc<gradsweep_shared::SweepPlan>,
        with_epochs: bool,
    ) -> Self {
        RunsCursor { sweep_id, states, plan, with_epochs, after: None, done: false }
    }

    /// The grid's axis keys, in the order of each run's `axis_values`.
    pub fn axes(&self) -> &[String] {
        &self.plan.axes
    }

    /// The next page, read from `store`: `None` once the listing is over.
    /// A page is empty only when it is the last (no more runs match); an
    /// error ends the listing.
    pub fn next_page(&mut self, store: &crate::store::Store) -> Option<Result<Vec<pb::RunInfo>>> {
        if self.done {
            return None;
        }
        let page = runs_page(store, &self.sweep_id, &self.states, self.after, &self.plan, self.with_epochs);
        Some(match page {
            Err(e) => {
                self.done = true;
                Err(e)
            }
            Ok(RunsPage { runs, last, full }) => {
                (self.after, self.done) = (last, !full);
                Ok(runs)
            }
        })
    }
}

/// One page of a sweep's runs after `after` (a (cell, seed) already
/// listed), with the cells' axis values from `plan`, and each run's epochs
/// when `with_epochs`.
pub fn runs_page(
    store: &crate::store::Store,
    sweep_id: &str,
    states: &[RunState],
    after: Option<(u32, u64)>,
    plan: &gradsweep_shared::SweepPlan,
    with_epochs: bool,
) -> Result<RunsPage> {
    let limit = runs_per_page(plan, with_epochs);
    let rows = store.runs_page(sweep_id, states, after, limit)?;
    let full = rows.len() == limit;
    let last = rows.last().map(|r| (r.cell, r.seed));
    let mut runs = Vec::with_capacity(rows.len());
    for r in rows {
        let epochs = if with_epochs { store.run_epochs(&r.id)? } else { vec![] };
        let mut info = run_to_wire(r, plan);
        info.epochs = epochs.into_iter().map(epoch_to_wire).collect();
        runs.push(info);
    }
    Ok(RunsPage { runs, last, full })
}

/// An epoch to the wire.
pub fn epoch_to_wire(e: EpochRow) -> pb::EpochInfo {
    pb::EpochInfo {
        epoch: e.epoch,
        step: e.step,
        lr: e.lr,
        train_loss: e.train_loss,
        seconds: e.seconds,
        test_accuracy: e.test_accuracy,
        test_loss: e.test_loss,
    }
}

/// The run states a `ListRuns` request names; one this coordinator does
/// not know (unspecified, or of a newer contract) is refused.
pub fn run_states_from_wire(states: &[i32]) -> Result<Vec<RunState>> {
    states
        .iter()
        .map(|&s| {
            pb::RunState::try_from(s)
                .ok()
                .and_then(RunState::from_wire)
                .ok_or_else(|| bad(format!("--state: {s} is not a run state this coordinator knows")))
        })
        .collect()
}

/// A run to the wire, with its cell's axis values (in `plan.axes` order).
pub fn run_to_wire(r: RunRow, plan: &gradsweep_shared::SweepPlan) -> pb::RunInfo {
    let params = plan.cells.get(r.cell as usize).map(|c| &c.params);
    let axis_values =
        plan.axes.iter().map(|a| params.and_then(|p| p.get(a)).map(|v| v.to_string()).unwrap_or_default()).collect();
    let (worker_id, worker_name) = match r.worker {
        Some((id, name)) => (id, name.unwrap_or_default()),
        None => (String::new(), String::new()),
    };
    pb::RunInfo {
        run_id: r.id,
        cell: r.cell,
        seed: r.seed,
        axis_values,
        state: r.state.to_wire() as i32,
        attempts: r.attempts,
        worker_id,
        worker_name,
        step: r.step,
        total_steps: r.total_steps,
        started_at_ms: r.started_ms.unwrap_or(0),
        finished_at_ms: r.finished_ms.unwrap_or(0),
        error: r.error.unwrap_or_default(),
        epochs: vec![],
        compute_seconds: r.compute_s,
    }
}

/// A worker to the wire.
pub fn worker_to_wire(w: WorkerRow) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.id,
        name: w.name,
        hostname: w.hostname,
        slots: w.slots,
        state: w.state.to_wire() as i32,
        runs: w.runs,
        last_heartbeat_ms: w.last_heartbeat_ms,
        trainers: w.trainers,
    }
}

/// The trainers a registering worker declared (none: the built-in
/// engine), each checked; a malformed name is refused with its reason.
pub fn trainers_from_wire(names: &[String]) -> Result<Vec<gradsweep_shared::spec::Trainer>> {
    names
        .iter()
        .map(|n| {
            gradsweep_shared::spec::Trainer::parse(n)
                .map_err(|e| CoordinatorError::InvalidArgument(format!("a worker declared a trainer: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SweepState, WorkerState};

    /// The wire's state words are the stored words: what `status`, `runs`
    /// and `workers` print from a coordinator is what its database holds.
    #[test]
    fn every_state_crosses_the_wire_as_its_stored_word() {
        for &s in RunState::ALL {
            assert_eq!(run_states_from_wire(&[s.to_wire() as i32]).unwrap(), vec![s]);
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        assert_eq!(RunState::ALL.len(), pb::RunState::KNOWN.len());
        assert_eq!(SweepState::ALL.len(), pb::SweepState::KNOWN.len());
        assert_eq!(WorkerState::ALL.len(), pb::WorkerState::KNOWN.len());
        assert!(run_states_from_wire(&[0]).is_err() && run_states_from_wire(&[99]).is_err());
    }
}
