//! Merging per-run results into per-cell and sweep-level statistics.
//!
//! The coordinator stores each run's probe sketches, trajectory sums and
//! final figures; [`cell_result`] turns the completed runs of one cell into
//! a [`CellResult`]. The function is deterministic (runs are merged in seed
//! order), so recomputing a cell from the same runs gives the same bytes:
//! merges are idempotent by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::{CellSpectra, ProbeDigest};
use crate::epochs::{EpochStats, EpochSums, PeakTest};
use crate::grid::Cell;
use crate::json_f64::F64;
use crate::run::{ProbeMeta, ProbeRecord, SizingStop};
use crate::sketch::FdSketch;
use crate::spec::RunFinal;
use crate::stats::{Bracket, RankThresholds, SketchMoments, SpectrumStats, Summary};
use crate::trajectory::{DriftStats, TrajectorySums};

/// A completed run as stored by the coordinator.
#[derive(Debug, Clone)]
pub struct RunData {
    /// Run identifier.
    pub run_id: String,
    /// Seed.
    pub seed: u64,
    /// Final figures.
    pub fin: RunFinal,
    /// Probes in order.
    pub probes: Vec<ProbeRecord>,
    /// Trajectory sums.
    pub trajectory: Option<TrajectorySums>,
}

/// Per-run statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Run identifier.
    pub run_id: String,
    /// Seed.
    pub seed: u64,
    /// Final figures.
    pub fin: RunFinal,
    /// Spectrum at each probe.
    pub probes: Vec<ProbeSummary>,
    /// Spectrum of all the run's probes merged (pooled over training).
    pub pooled: Option<SpectrumStats>,
    /// Drift statistics of the trajectory.
    pub drift: Option<DriftStats>,
    /// Overlap of the top-[`OVERLAP_K`] eigenspaces of `D` at successive
    /// probes (entry i: probes i and i+1), in [0, 1]: how much the dominant
    /// diffusion directions persist as training moves on.
    #[serde(default)]
    pub eigenspace_overlap: Vec<crate::json_f64::F64>,
    /// Full-gradient norm per coordinate `‖∇f‖/√d` at each probe, as
    /// (epoch, value): how far from a critical point training sits (the
    /// paper's limit cycles keep it from decaying). From the unbiased
    /// ‖∇f‖² estimate, clamped at 0.
    #[serde(default)]
    pub grad_norm: Vec<(u32, crate::json_f64::F64)>,
    /// The run recorded once per epoch (`epoch_psd_window`), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<EpochStats>,
}

/// Dimension of the eigenspaces compared between successive probes.
pub const OVERLAP_K: usize = 10;

/// One probe's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSummary {
    /// Where it was taken.
    pub meta: ProbeMeta,
    /// Spectrum of D there.
    pub spectrum: SpectrumStats,
}

/// A bracketed statistic of a cell at its seeds' last probes: the mean over
/// seeds lies in `[lo, hi]` (the means of the seeds' certified ends), with
/// the spread across seeds and, when it is not resolved, what would resolve
/// it. The one place that says how such a number reads
/// ([`CellBracket::display`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellBracket {
    /// Mean over seeds of the certified lower ends.
    #[serde(with = "crate::json_f64")]
    pub lo: f64,
    /// Mean over seeds of the certified upper ends.
    #[serde(with = "crate::json_f64")]
    pub hi: f64,
    /// 95 % interval half-width across seeds of the brackets' midpoints
    /// (NaN with one seed): how much the seeds differ, not the bracket.
    #[serde(with = "crate::json_f64")]
    pub ci95: f64,
    /// Seeds counted.
    pub seeds: usize,
    /// The largest value the statistic can take (d for a rank): an upper
    /// end there carries no information.
    pub ceiling: f64,
    /// Whether every seed's bracket is resolved ([`RESOLVE_WIDTH`]).
    ///
    /// [`RESOLVE_WIDTH`]: crate::stats::RESOLVE_WIDTH
    pub resolved: bool,
    /// For an unresolved rank: the largest sketch size among the seeds'
    /// estimates of what would resolve it.
    #[serde(default)]
    pub needs_ell: Option<u64>,
    /// For an unresolved rank whose auto probe the memory cap stopped: the
    /// largest ℓ the cap allowed, and the cap in MiB.
    #[serde(default)]
    pub memory_cap: Option<(u32, u32)>,
    /// For the rank at the paper's threshold: the size at which its
    /// sketches would be exact ([`crate::sketch::exact_size`]).
    #[serde(default)]
    pub exact_ell: Option<u64>,
    /// What the bracket is of, which decides what [`CellBracket::display`]
    /// says when it is not resolved.
    #[serde(default)]
    pub kind: BracketKind,
}

/// What a [`CellBracket`] is of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BracketKind {
    /// The rank at the paper's threshold: an unresolved one says what
    /// would resolve it.
    #[default]
    PaperRank,
    /// Another count (a rank at a user's threshold): an unresolved one
    /// says so.
    Count,
    /// A real value (λ_max, rank/d): the bracket alone.
    Value,
}

impl CellBracket {
    /// The cell bracket of one bracket per seed (`None` for none), against
    /// `ceiling`.
    pub fn of(brackets: &[Bracket], ceiling: f64, kind: BracketKind) -> Option<Self> {
        if brackets.is_empty() {
            return None;
        }
        let k = brackets.len() as f64;
        Some(CellBracket {
            lo: brackets.iter().map(|b| b.lo).sum::<f64>() / k,
            hi: brackets.iter().map(|b| b.hi).sum::<f64>() / k,
            ci95: Summary::of(brackets.iter().map(|b| 0.5 * (b.lo + b.hi))).ci95,
            seeds: brackets.len(),
            ceiling,
            resolved: brackets.iter().all(|b| b.is_resolved(crate::stats::RESOLVE_WIDTH)),
            needs_ell: None,
            memory_cap: None,
            exact_ell: None,
            kind,
        })
    }

    /// The rank at the paper's threshold of the runs' last probes, with the
    /// probes' own account of what would resolve it.
    pub fn rank_of(runs: &[RunResult]) -> Option<Self> {
        let last: Vec<&ProbeSummary> = runs.iter().filter_map(|r| r.probes.last()).collect();
        let stops: Vec<Option<SizingStop>> = last.iter().map(|p| p.meta.sizing.as_ref().map(|s| s.stop)).collect();
        Self::rank_of_spectra(&last.iter().map(|p| &p.spectrum).collect::<Vec<_>>(), &stops)
    }

    /// The rank at the paper's threshold of some spectra (one per seed),
    /// with what would resolve it; `stops` says why each one's probe stopped
    /// growing (`None` where unknown, as for `analyze grads`).
    pub fn rank_of_spectra(spectra: &[&SpectrumStats], stops: &[Option<SizingStop>]) -> Option<Self> {
        let first = spectra.first()?;
        let mut c =
            Self::of(&spectra.iter().map(|s| s.rank).collect::<Vec<_>>(), first.d as f64, BracketKind::PaperRank)?;
        c.exact_ell = Some(crate::sketch::exact_size(first.d, first.n as usize) as u64);
        let unresolved = || spectra.iter().zip(stops).filter(|(s, _)| !s.rank_resolved);
        c.needs_ell = unresolved().filter_map(|(s, _)| s.rank_needs_ell).max();
        c.memory_cap = unresolved()
            .filter_map(|(_, stop)| match stop {
                Some(SizingStop::MemoryCap { max_ell, memory_mb }) => Some((*max_ell, *memory_mb)),
                _ => None,
            })
            .min();
        Some(c)
    }

    /// The same statistic multiplied by a known factor `k > 0` (rank → rank/d).
    pub fn scaled(&self, k: f64) -> Self {
        CellBracket {
            lo: self.lo * k,
            hi: self.hi * k,
            ci95: self.ci95 * k,
            ceiling: self.ceiling * k,
            kind: BracketKind::Value,
            ..self.clone()
        }
    }

    /// How the statistic reads, each number formatted by `fmt`: one number
    /// when both ends print the same, `[lo, hi]` otherwise, `≥ lo` when the
    /// upper end says nothing; `±` the spread across seeds; and, when not
    /// resolved, why and what would resolve it. Never the sketch's estimate.
    pub fn display(&self, fmt: impl Fn(f64) -> String) -> String {
        let b = Bracket { value: f64::NAN, lo: self.lo, hi: self.hi };
        let mut out = b.display(self.ceiling, &fmt);
        if self.seeds > 1 && self.ci95.is_finite() && self.ci95 > 0.0 {
            out.push_str(&format!(" ±{}", fmt(self.ci95)));
        }
        if self.resolved || self.kind == BracketKind::Value {
            return out;
        }
        if self.kind == BracketKind::Count {
            out.push_str(" (unresolved)");
            return out;
        }
        {
            let needs = self.needs_ell.map(|l| {
                if Some(l) == self.exact_ell {
                    format!("needs ℓ ≈ {l}, where the sketch is exact")
                } else {
                    format!("needs ℓ ≈ {l}")
                }
            });
            let why = match (self.memory_cap, needs) {
                (Some((ell, mb)), Some(n)) => format!("memory_mb = {mb} allows ℓ ≤ {ell}; {n}"),
                (Some((ell, mb)), None) => format!("memory_mb = {mb} allows ℓ ≤ {ell}"),
                (None, Some(n)) => n,
                (None, None) => "too few resolved eigenvalues to say what would resolve it".into(),
            };
            out.push_str(&format!(" (unresolved: {why})"));
        }
        out
    }
}

/// Version of the statistics [`cell_result`] computes. A stored cell with
/// an older version lacks some of them and is recomputed from its runs
/// when read.
pub const RESULTS_VERSION: u32 = 6;

/// Statistics of one cell across its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    /// [`RESULTS_VERSION`] of the code that computed it (0: before versions).
    #[serde(default)]
    pub results_version: u32,
    /// Cell index.
    pub index: u32,
    /// Axis values.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Learning rate η.
    pub lr: f64,
    /// Batch size b.
    pub batch_size: u32,
    /// η / b.
    pub eta_over_b: f64,
    /// β⁻¹ = η / (2b).
    pub temperature: f64,
    /// Seeds in the sweep.
    pub seeds_total: usize,
    /// Seeds completed (including diverged).
    pub seeds_done: usize,
    /// Seeds that diverged.
    pub seeds_diverged: usize,
    /// Parameter dimension.
    pub d: usize,
    /// Final mini-batch training loss across seeds.
    pub train_loss: Summary,
    /// Test accuracy across seeds.
    pub test_accuracy: Summary,
    /// Spectrum of the final probes of all seeds merged into one sketch.
    pub merged_final: Option<SpectrumStats>,
    /// The sketches' estimates of the numerical rank at the final probe,
    /// across seeds (for the collapse score; not certified: see
    /// `rank_certified`).
    pub rank: Summary,
    /// The estimates of rank / d at the final probe, across seeds (likewise).
    pub rank_fraction: Summary,
    /// The numerical rank at the paper's threshold at the final probe: the
    /// certified bracket of its mean over seeds, and what would resolve it.
    #[serde(default)]
    pub rank_certified: Option<CellBracket>,
    /// tr D at the final probe, across seeds.
    pub trace: Summary,
    /// λ_max at the final probe, across seeds.
    pub lambda_max: Summary,
    /// Area-enclosing rate of the first projection pair, across seeds.
    pub area_rate: Summary,
    /// Top-[`OVERLAP_K`] eigenspace overlap between the last two probes, across seeds.
    #[serde(default = "Summary::empty")]
    pub eigenspace_overlap: Summary,
    /// Cycling frequency (radians per step) of the first projection pair, across seeds.
    #[serde(default = "Summary::empty")]
    pub cycling_frequency: Summary,
    /// The power statement of `area_rate`: the smallest area rate per step
    /// these seeds would have told from 0 ([`Summary::detectable`]); a cell
    /// whose interval contains 0 reads "circulation, if any, is below this".
    #[serde(default = "nan", with = "crate::json_f64")]
    pub area_rate_detectable: f64,
    /// The same for `cycling_frequency` (radians per step).
    #[serde(default = "nan", with = "crate::json_f64")]
    pub cycling_frequency_detectable: f64,
    /// MSD exponent, across seeds.
    #[serde(default = "Summary::empty")]
    pub msd_exponent: Summary,
    /// Autocorrelation at the largest lag, across seeds.
    #[serde(default = "Summary::empty")]
    pub autocorrelation: Summary,
    /// Spectral background exponent α (P ∝ f^(−α)), across seeds.
    #[serde(default = "Summary::empty")]
    pub spectral_exponent: Summary,
    /// Spectral peak over background, across seeds.
    #[serde(default = "Summary::empty")]
    pub peak_to_background: Summary,
    /// ‖∇f‖/√d at the final probe, across seeds.
    #[serde(default = "Summary::empty")]
    pub grad_norm: Summary,
    /// Drift statistics of the seeds' trajectories pooled: each run's sums
    /// centred on its own means, then added ([`TrajectorySums::pool`]), so
    /// the spread between where the seeds settle is not counted as motion.
    #[serde(default)]
    pub merged_drift: Option<DriftStats>,
    /// The seeds recorded once per epoch, if they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<CellEpochs>,
    /// The runs.
    pub runs: Vec<RunResult>,
}

/// A cell's seeds recorded once per epoch ([`crate::epochs`]): the paper's
/// statistics at its own time scale, with the confounds next to them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellEpochs {
    /// Epochs each seed recorded, across seeds.
    pub epochs: Summary,
    /// Drift of the seeds' per-epoch trajectories pooled (centred, as
    /// `merged_drift`): rates per epoch, lags and frequencies in epochs.
    pub merged_drift: Option<DriftStats>,
    /// `(cycles per epoch, mean, std)` of the weights' increment spectra over
    /// every weight of every seed: the paper's FFT of the increments.
    pub increment_spectrum: Vec<(F64, F64, F64)>,
    /// The weight norm's trend, relative per 1,000 epochs, across seeds
    /// (a scale-invariant net's norm grows, and reads as drift).
    pub weight_norm_trend: Summary,
    /// Seeds whose surrogate test found a spectral peak at p ≤ 0.05.
    pub peaks_significant: usize,
    /// Seeds tested.
    pub peaks_tested: usize,
    /// The most significant seed's test (smallest p, then largest ratio),
    /// with its seed.
    pub strongest_peak: Option<(u64, PeakTest)>,
}

impl CellEpochs {
    /// From a cell's runs and their sums; `None` when no seed recorded
    /// once per epoch.
    fn of(runs: &[&RunData], results: &[RunResult]) -> Option<CellEpochs> {
        let sums: Vec<&EpochSums> =
            runs.iter().filter_map(|r| r.trajectory.as_ref().and_then(|t| t.epochs.as_deref())).collect();
        if sums.is_empty() {
            return None;
        }
        let stats: Vec<(u64, &EpochStats)> =
            results.iter().filter_map(|r| Some((r.seed, r.epochs.as_ref()?))).collect();
        let mut inc = sums[0].increments.clone();
        let spectrum_ok = sums[1..].iter().all(|s| inc.merge(&s.increments).is_ok());
        let tests: Vec<(u64, &PeakTest)> =
            stats.iter().filter_map(|(seed, s)| Some((*seed, s.peaks.as_ref()?))).collect();
        let strongest = tests
            .iter()
            .min_by(|a, b| a.1.p_value.total_cmp(&b.1.p_value).then(b.1.statistic.total_cmp(&a.1.statistic)))
            .map(|(seed, t)| (*seed, (*t).clone()));
        Some(CellEpochs {
            epochs: Summary::of(sums.iter().map(|s| s.trajectory.points as f64)),
            merged_drift: TrajectorySums::pool(sums.iter().map(|s| &s.trajectory))
                .ok()
                .flatten()
                .map(|m| DriftStats::from_sums(&m)),
            increment_spectrum: if spectrum_ok {
                inc.mean_std().into_iter().map(|(f, m, d)| (F64(f), F64(m), F64(d))).collect()
            } else {
                vec![]
            },
            weight_norm_trend: Summary::of(stats.iter().map(|(_, s)| s.weight_norm_trend)),
            peaks_significant: tests.iter().filter(|(_, t)| t.p_value <= 0.05).count(),
            peaks_tested: tests.len(),
            strongest_peak: strongest,
        })
    }
}

impl CellResult {
    /// β⁻¹·tr D/d at the final probe across seeds: the mean diffusion per
    /// coordinate at this cell's temperature.
    pub fn temperature_trace_per_d(&self) -> Summary {
        if self.d > 0 { self.trace.scaled(self.temperature / self.d as f64) } else { Summary::empty() }
    }
}

/// Statistics of one run, with ranks at the user's thresholds `th` too.
pub fn run_result(r: &RunData, th: &RankThresholds) -> RunResult {
    run_merge(r, th, &mut CellSpectra::default(), None)
}

/// [`run_result`], appending the eigenvalue lower ends behind each of its
/// spectra to `spectra` (probes in order, then the pooled one) and, when
/// `digests` is given, each probe's [`ProbeDigest`] to it.
fn run_merge(
    r: &RunData,
    th: &RankThresholds,
    spectra: &mut CellSpectra,
    mut digests: Option<&mut Vec<(String, ProbeDigest)>>,
) -> RunResult {
    // One decomposition per probe gives its spectrum and its eigenspace.
    let mut spaces: Vec<Vec<Vec<f64>>> = Vec::with_capacity(r.probes.len());
    let mut probes = Vec::with_capacity(r.probes.len());
    for p in &r.probes {
        let (values, vectors) = p.sketch.eigen_summary(OVERLAP_K);
        let (spectrum, eig) = SpectrumStats::from_sketch_eigenvalues_keeping(&p.sketch, &values, th);
        spectra.lists.push(eig);
        if let Some(out) = digests.as_deref_mut() {
            let top_vectors = vectors.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect();
            let moments = SketchMoments::of(&p.sketch);
            out.push((
                r.run_id.clone(),
                ProbeDigest { meta: p.meta.clone(), moments, eigenvalues: values, top_vectors },
            ));
        }
        probes.push(ProbeSummary { meta: p.meta.clone(), spectrum });
        spaces.push(vectors);
    }
    let pooled = merge_sketches(r.probes.iter().map(|p| &p.sketch)).map(|s| {
        let (stats, eig) = SpectrumStats::from_sketch_eigenvalues_keeping(&s, &s.eigenvalues(), th);
        spectra.lists.push(eig);
        stats
    });
    let eigenspace_overlap =
        spaces.windows(2).map(|w| crate::json_f64::F64(crate::sketch::subspace_overlap(&w[0], &w[1]))).collect();
    let grad_norm = probes
        .iter()
        .map(|p| {
            let s = &p.spectrum;
            (p.meta.epoch, crate::json_f64::F64(s.grad_norm_sq.max(0.0).sqrt() / (s.d.max(1) as f64).sqrt()))
        })
        .collect();
    RunResult {
        run_id: r.run_id.clone(),
        seed: r.seed,
        fin: r.fin.clone(),
        probes,
        pooled,
        drift: r.trajectory.as_ref().map(DriftStats::from_sums),
        eigenspace_overlap,
        grad_norm,
        epochs: r.trajectory.as_ref().and_then(|t| t.epochs.as_deref()).map(EpochStats::from_sums),
    }
}

/// Merges sketches in the order given; `None` if there are none or their
/// shapes differ.
pub fn merge_sketches<'a>(sketches: impl IntoIterator<Item = &'a FdSketch>) -> Option<FdSketch> {
    let mut it = sketches.into_iter();
    let mut acc = it.next()?.clone();
    for s in it {
        acc.merge(s).ok()?;
    }
    Some(acc)
}

/// Statistics of `cell` from its completed runs (any order: they are sorted
/// by seed), with ranks at the user's thresholds `th` too.
pub fn cell_result(cell: &Cell, seeds_total: usize, runs: &[RunData], th: &RankThresholds) -> CellResult {
    merge_runs(cell, seeds_total, runs, th, None).result
}

/// A cell merged at the default thresholds, with what lets it do without
/// its runs' sketches from then on: the eigenvalues behind its spectra
/// (to add any thresholds, [`CellResult::add_thresholds`]) and each
/// probe's digest, by run.
#[derive(Debug, Clone)]
pub struct CellMerge {
    /// The statistics (no user thresholds).
    pub result: CellResult,
    /// The eigenvalue lower ends behind every spectrum of `result`.
    pub spectra: CellSpectra,
    /// (run, digest) for every probe of every run, in the runs' seed order.
    pub digests: Vec<(String, ProbeDigest)>,
}

/// Merges `cell` from its completed runs ([`cell_result`] with no user
/// thresholds), keeping its spectra's eigenvalues and its probes' digests.
pub fn merge_cell(cell: &Cell, seeds_total: usize, runs: &[RunData]) -> CellMerge {
    let mut digests = Vec::new();
    let mut m = merge_runs(cell, seeds_total, runs, &RankThresholds::default(), Some(&mut digests));
    let keep = cell.probe.digest_vectors as usize;
    for (_, d) in &mut digests {
        d.top_vectors.truncate(keep);
    }
    m.digests = digests;
    m
}

fn merge_runs(
    cell: &Cell,
    seeds_total: usize,
    runs: &[RunData],
    th: &RankThresholds,
    mut digests: Option<&mut Vec<(String, ProbeDigest)>>,
) -> CellMerge {
    let mut runs: Vec<&RunData> = runs.iter().collect();
    runs.sort_by_key(|r| r.seed);
    let mut spectra = CellSpectra::default();
    let results: Vec<RunResult> = runs.iter().map(|r| run_merge(r, th, &mut spectra, digests.as_deref_mut())).collect();
    let finals: Vec<&SpectrumStats> = results.iter().filter_map(|r| r.probes.last().map(|p| &p.spectrum)).collect();
    let merged_final = merge_sketches(runs.iter().filter_map(|r| r.probes.last().map(|p| &p.sketch))).map(|s| {
        let (stats, eig) = SpectrumStats::from_sketch_eigenvalues_keeping(&s, &s.eigenvalues(), th);
        spectra.lists.push(eig);
        stats
    });
    let lr = cell.train.lr;
    let b = cell.train.batch_size;
    let drifts: Vec<&DriftStats> = results.iter().filter_map(|r| r.drift.as_ref()).collect();
    let drift_summary = |f: fn(&DriftStats) -> f64| Summary::of(drifts.iter().map(|d| f(d)));
    let merged_drift = TrajectorySums::pool(runs.iter().filter_map(|r| r.trajectory.as_ref()))
        .ok()
        .flatten()
        .map(|m| DriftStats::from_sums(&m));
    let area_rate = Summary::of(drifts.iter().map(|d| d.area_rate));
    let cycling_frequency = drift_summary(|d| d.cycling_frequency);
    let result = CellResult {
        results_version: RESULTS_VERSION,
        index: cell.index,
        params: cell.params.clone(),
        lr,
        batch_size: b,
        eta_over_b: lr / b as f64,
        temperature: lr / (2.0 * b as f64),
        seeds_total,
        seeds_done: runs.len(),
        seeds_diverged: runs.iter().filter(|r| r.fin.diverged).count(),
        d: runs.first().map(|r| r.fin.params).unwrap_or(0),
        train_loss: Summary::of(runs.iter().map(|r| r.fin.train_loss)),
        test_accuracy: Summary::of(runs.iter().map(|r| r.fin.test_accuracy)),
        merged_final,
        rank_certified: CellBracket::rank_of(&results),
        rank: Summary::of(finals.iter().map(|s| s.rank.value)),
        rank_fraction: Summary::of(finals.iter().map(|s| s.rank_fraction.value)),
        trace: Summary::of(finals.iter().map(|s| s.trace)),
        lambda_max: Summary::of(finals.iter().map(|s| s.lambda_max.value)),
        area_rate,
        eigenspace_overlap: Summary::of(results.iter().filter_map(|r| r.eigenspace_overlap.last().map(|x| x.0))),
        cycling_frequency,
        area_rate_detectable: area_rate.detectable(),
        cycling_frequency_detectable: cycling_frequency.detectable(),
        msd_exponent: drift_summary(|d| d.msd_exponent),
        autocorrelation: drift_summary(DriftStats::autocorrelation_at_max_lag),
        spectral_exponent: drift_summary(|d| d.spectral_exponent),
        peak_to_background: drift_summary(|d| d.peak_to_background),
        grad_norm: Summary::of(results.iter().filter_map(|r| r.grad_norm.last().map(|x| x.1.0))),
        merged_drift,
        epochs: CellEpochs::of(&runs, &results),
        runs: results,
    };
    CellMerge { result, spectra, digests: vec![] }
}

/// Why stored spectra cannot give a cell's thresholds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the stored spectra hold {got} eigenvalue lists, the cell's results have {want} spectra")]
pub struct SpectraMismatch {
    /// Lists stored.
    pub got: usize,
    /// Spectra in the results.
    pub want: usize,
}

/// What one of a cell's spectra is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpectrumOf {
    /// A run's probe.
    Probe {
        /// The run's seed.
        seed: u64,
        /// The probe's index in the run.
        index: u32,
        /// The epoch it was taken at.
        epoch: u32,
    },
    /// A run's probes pooled.
    Pooled {
        /// The run's seed.
        seed: u64,
    },
    /// The seeds' last probes merged.
    Merged,
}

impl SpectrumOf {
    /// The name of its file in cell `cell`, without extension
    /// (`c3-s1-probe0-epoch5`, `c3-s1-pooled`, `c3-merged`).
    pub fn file_stem(&self, cell: u32) -> String {
        match self {
            SpectrumOf::Probe { seed, index, epoch } => format!("c{cell}-s{seed}-probe{index}-epoch{epoch}"),
            SpectrumOf::Pooled { seed } => format!("c{cell}-s{seed}-pooled"),
            SpectrumOf::Merged => format!("c{cell}-merged"),
        }
    }
}

/// Every pair's drift across the seeds' `drifts` (see
/// [`CellResult::pair_drift`]); bootstrap draws are seeded by the pair.
fn pairs_of(drifts: Vec<&DriftStats>) -> Vec<PairDrift> {
    let k = drifts.iter().map(|d| d.area_rates.len()).min().unwrap_or(0);
    let at = |m: &Vec<Vec<F64>>, i: usize, j: usize| m.get(i).and_then(|r| r.get(j)).map(|x| x.0);
    let mut out = vec![];
    for i in 0..k {
        for j in (i + 1)..k {
            let rates: Vec<f64> = drifts.iter().filter_map(|d| at(&d.area_rates, i, j)).collect();
            let mut rng = crate::rng::Rng::new((i * k + j) as u64, crate::rng::Stream::Bootstrap(0));
            out.push(PairDrift {
                i,
                j,
                area_rate: Summary::of(rates.iter().copied()),
                cycling_frequency: Summary::of(drifts.iter().filter_map(|d| at(&d.cycling_frequencies, i, j))),
                area_rate_bootstrap95: crate::stats::bootstrap_mean95(
                    &rates,
                    crate::stats::BOOTSTRAP_RESAMPLES,
                    &mut rng,
                ),
            });
        }
    }
    out
}

/// The drift of one pair of a cell's projected coordinates across its
/// seeds: with `basis = "eigen"`, of one pair of D's top eigenvectors.
#[derive(Debug, Clone, PartialEq)]
pub struct PairDrift {
    /// The pair's first coordinate.
    pub i: usize,
    /// Its second (`i < j`).
    pub j: usize,
    /// Area-enclosing rate per step, across seeds (zero under detailed balance).
    pub area_rate: Summary,
    /// Cycling frequency (radians per step), across seeds.
    pub cycling_frequency: Summary,
    /// Seeded percentile-bootstrap 95 % interval of the mean area rate,
    /// resampling seeds ([`crate::stats::bootstrap_mean95`]): a check on the
    /// t interval that assumes no distribution (and, with few seeds, is a
    /// little narrower than it).
    pub area_rate_bootstrap95: (f64, f64),
}

impl PairDrift {
    /// Whether the area rate's 95 % interval excludes 0.
    pub fn excludes_zero(&self) -> bool {
        self.area_rate.ci95.is_finite() && self.area_rate.mean.abs() > self.area_rate.ci95
    }
}

impl CellResult {
    /// Every pair `i < j` of the cell's projected coordinates, from its
    /// seeds' per-pair area rates and cycling frequencies (in order (0, 1),
    /// (0, 2), …, (1, 2), …): the decisive statistic of circulation, pair by
    /// pair. Empty when no seed recorded a trajectory.
    pub fn pair_drift(&self) -> Vec<PairDrift> {
        pairs_of(self.runs.iter().filter_map(|r| r.drift.as_ref()).collect())
    }

    /// [`pair_drift`](Self::pair_drift) of the trajectories recorded once per
    /// epoch (rates per epoch); empty when the seeds did not record them.
    pub fn epoch_pair_drift(&self) -> Vec<PairDrift> {
        pairs_of(self.runs.iter().filter_map(|r| r.epochs.as_ref().map(|e| &e.drift)).collect())
    }

    /// Every spectrum of the cell, in the order [`CellSpectra`] lists them.
    fn spectra_mut(&mut self) -> impl Iterator<Item = &mut SpectrumStats> {
        self.runs
            .iter_mut()
            .flat_map(|r| r.probes.iter_mut().map(|p| &mut p.spectrum).chain(r.pooled.as_mut()))
            .chain(self.merged_final.as_mut())
    }

    /// Every spectrum of the cell as an NPY file (`r × 2` f64: each
    /// sketched eigenvalue's certified lower and upper end, descending; the
    /// other `d − r` eigenvalues of D lie in `[0, eig_error]`), named by what
    /// it is: `c{cell}-s{seed}-probe{k}-epoch{e}.spectrum.npy` for a probe,
    /// `c{cell}-s{seed}-pooled.spectrum.npy` for a run's probes pooled, and
    /// `c{cell}-merged.spectrum.npy` for the seeds' last probes merged.
    /// `None` when `spectra` are not this cell's.
    pub fn spectrum_files(&self, spectra: &CellSpectra) -> Option<Vec<(String, Vec<u8>)>> {
        Some(
            self.named_spectra(spectra)?
                .into_iter()
                .map(|(of, s, lower)| {
                    let data: Vec<f64> = lower.iter().flat_map(|&l| [l, l + s.eig_error]).collect();
                    (
                        format!("{}.spectrum.npy", of.file_stem(self.index)),
                        crate::npy::write(lower.len(), 2, &data, false),
                    )
                })
                .collect(),
        )
    }

    /// Every spectrum of the cell with what it is of and its eigenvalues'
    /// lower ends (from `spectra`), in the order [`CellSpectra`] lists
    /// them. `None` when `spectra` are not this cell's.
    pub fn named_spectra<'a>(
        &'a self,
        spectra: &'a CellSpectra,
    ) -> Option<Vec<(SpectrumOf, &'a SpectrumStats, &'a [f64])>> {
        if !self.fits(spectra) {
            return None;
        }
        let mut named = vec![];
        for r in &self.runs {
            for p in &r.probes {
                named.push((SpectrumOf::Probe { seed: r.seed, index: p.meta.index, epoch: p.meta.epoch }, &p.spectrum));
            }
            if let Some(s) = &r.pooled {
                named.push((SpectrumOf::Pooled { seed: r.seed }, s));
            }
        }
        if let Some(s) = &self.merged_final {
            named.push((SpectrumOf::Merged, s));
        }
        Some(named.into_iter().zip(&spectra.lists).map(|((of, s), l)| (of, s, l.as_slice())).collect())
    }

    /// Whether `spectra` are this cell's (one list per spectrum).
    pub fn fits(&self, spectra: &CellSpectra) -> bool {
        let want = self.runs.iter().map(|r| r.probes.len() + r.pooled.is_some() as usize).sum::<usize>()
            + self.merged_final.is_some() as usize;
        want == spectra.lists.len()
    }

    /// Adds ranks at the user's thresholds `th` to every spectrum of the
    /// cell, from the eigenvalues its merge kept ([`merge_cell`]): the same
    /// statistics as a merge with `th` from the sketches. Spectra that are
    /// not this cell's are refused and nothing is changed.
    pub fn add_thresholds(&mut self, spectra: &CellSpectra, th: &RankThresholds) -> Result<(), SpectraMismatch> {
        if !self.fits(spectra) {
            let got = spectra.lists.len();
            let want = self.spectra_mut().count();
            return Err(SpectraMismatch { got, want });
        }
        if !th.is_empty() {
            for (s, eig) in self.spectra_mut().zip(&spectra.lists) {
                s.add_thresholds(eig, th);
            }
        }
        Ok(())
    }
}

/// A row of the sweep-level η/b table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtaOverBRow {
    /// η / b.
    pub eta_over_b: f64,
    /// Learning rate.
    pub lr: f64,
    /// Batch size.
    pub batch_size: u32,
    /// Cell index.
    pub cell: u32,
    /// Mean of the sketches' estimates of rank/d at the final probe (not
    /// certified; the bracket is `rank_fraction_lo..rank_fraction_hi`).
    #[serde(with = "crate::json_f64")]
    pub rank_fraction: f64,
    /// Certified lower end of the mean rank/d over seeds.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub rank_fraction_lo: f64,
    /// Certified upper end of the mean rank/d over seeds.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub rank_fraction_hi: f64,
    /// Mean tr D at the final probe.
    #[serde(with = "crate::json_f64")]
    pub trace: f64,
    /// β⁻¹·tr D/d at the final probe (mean over seeds).
    #[serde(default = "nan", with = "crate::json_f64")]
    pub temperature_trace_per_d: f64,
    /// Mean area-enclosing rate.
    #[serde(with = "crate::json_f64")]
    pub area_rate: f64,
    /// Mean cycling frequency (radians per step).
    #[serde(default = "nan", with = "crate::json_f64")]
    pub cycling_frequency: f64,
    /// Mean ‖∇f‖/√d at the final probe.
    #[serde(default = "nan", with = "crate::json_f64")]
    pub grad_norm: f64,
    /// Mean test accuracy.
    #[serde(with = "crate::json_f64")]
    pub test_accuracy: f64,
    /// Every statistic the collapse score covers ([`crate::scaling::STATISTICS`]),
    /// with its mean and 95 % interval across seeds.
    #[serde(default)]
    pub statistics: BTreeMap<String, Summary>,
}

/// Sweep-level summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    /// Sweep identifier.
    pub sweep_id: String,
    /// Sweep name.
    pub name: String,
    /// Number of cells.
    pub cells: usize,
    /// Runs in the sweep.
    pub runs_total: usize,
    /// Runs completed.
    pub runs_done: usize,
    /// Cells sorted by η/b, with their main statistics.
    pub by_eta_over_b: Vec<EtaOverBRow>,
    /// Per statistic, how much of its variation η/b explains
    /// (see [`crate::scaling`]).
    #[serde(default)]
    pub collapse: Vec<crate::scaling::CollapseScore>,
}

impl SweepSummary {
    /// The summary of a sweep's cells.
    pub fn new(sweep_id: String, name: String, runs_total: usize, cells: &[CellResult]) -> Self {
        let mut b = SummaryBuilder::new(sweep_id, name, runs_total);
        for c in cells {
            b.add(c);
        }
        b.finish()
    }
}

/// A [`SweepSummary`] built one cell at a time: it keeps of each cell only
/// its η/b row and what the collapse scores need, so a sweep's cells can
/// stream past it (the `Results` call sends each page of cells as it is
/// merged). Cells added in index order give [`SweepSummary::new`]'s summary.
pub struct SummaryBuilder {
    sweep_id: String,
    name: String,
    runs_total: usize,
    cells: usize,
    runs_done: usize,
    /// The η/b rows, unless the summary is sent without them.
    rows: Option<Vec<EtaOverBRow>>,
    collapse: crate::scaling::CollapseInputs,
}

impl SummaryBuilder {
    /// An empty summary of the sweep `sweep_id` called `name`, of `runs_total` runs.
    pub fn new(sweep_id: String, name: String, runs_total: usize) -> Self {
        SummaryBuilder {
            sweep_id,
            name,
            runs_total,
            cells: 0,
            runs_done: 0,
            rows: Some(vec![]),
            collapse: crate::scaling::CollapseInputs::default(),
        }
    }

    /// [`Self::new`] for a summary sent beside its cells: it keeps no η/b
    /// rows (a row per cell, 1 kB each), and its `by_eta_over_b` is empty
    /// until the receiver fills it from the cells ([`eta_over_b_table`]).
    pub fn without_rows(sweep_id: String, name: String, runs_total: usize) -> Self {
        SummaryBuilder { rows: None, ..Self::new(sweep_id, name, runs_total) }
    }

    /// Adds one cell.
    pub fn add(&mut self, c: &CellResult) {
        self.cells += 1;
        self.runs_done += c.seeds_done;
        if let Some(rows) = &mut self.rows {
            rows.push(eta_over_b_row(c));
        }
        self.collapse.add(c);
    }

    /// The summary of the cells added.
    pub fn finish(self) -> SweepSummary {
        let mut rows = self.rows.unwrap_or_default();
        sort_by_eta_over_b(&mut rows);
        SweepSummary {
            sweep_id: self.sweep_id,
            name: self.name,
            cells: self.cells,
            runs_total: self.runs_total,
            runs_done: self.runs_done,
            by_eta_over_b: rows,
            collapse: self.collapse.scores(),
        }
    }
}

fn nan() -> f64 {
    f64::NAN
}

/// The η/b table of a set of cells.
pub fn eta_over_b_table(cells: &[CellResult]) -> Vec<EtaOverBRow> {
    let mut rows: Vec<EtaOverBRow> = cells.iter().map(eta_over_b_row).collect();
    sort_by_eta_over_b(&mut rows);
    rows
}

/// Sorts η/b rows as the table lists them: η/b, then the cell index.
pub fn sort_by_eta_over_b(rows: &mut [EtaOverBRow]) {
    rows.sort_by(|a, b| a.eta_over_b.total_cmp(&b.eta_over_b).then(a.cell.cmp(&b.cell)));
}

/// A cell's row of the η/b table.
pub fn eta_over_b_row(c: &CellResult) -> EtaOverBRow {
    EtaOverBRow {
        eta_over_b: c.eta_over_b,
        lr: c.lr,
        batch_size: c.batch_size,
        cell: c.index,
        rank_fraction: c.rank_fraction.mean,
        rank_fraction_lo: c.rank_certified.as_ref().map_or(f64::NAN, |r| r.lo / c.d.max(1) as f64),
        rank_fraction_hi: c.rank_certified.as_ref().map_or(f64::NAN, |r| r.hi / c.d.max(1) as f64),
        trace: c.trace.mean,
        temperature_trace_per_d: c.temperature_trace_per_d().mean,
        area_rate: c.area_rate.mean,
        cycling_frequency: c.cycling_frequency.mean,
        grad_norm: c.grad_norm.mean,
        test_accuracy: c.test_accuracy.mean,
        statistics: crate::scaling::cell_statistics(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(lo: f64, hi: f64) -> Bracket {
        Bracket { value: lo, lo, hi }
    }

    /// Issue 11: a cell's bracket reads as a bracket; an unresolved rank at
    /// the paper's threshold says what would resolve it (the cap, the ℓ, the
    /// exact size), another count only that it is unresolved, and a value
    /// nothing more than its bracket.
    #[test]
    fn cell_brackets_say_what_they_are_and_what_would_resolve_them() {
        let f = |x: f64| format!("{x}");
        let mut rank = CellBracket::of(&[b(270.0, 282.0), b(272.0, 284.0)], 13338.0, BracketKind::PaperRank).unwrap();
        assert!(rank.resolved && (rank.lo, rank.hi) == (271.0, 283.0));
        assert!(rank.display(f).starts_with("[271, 283] ±"), "{}", rank.display(f));
        let mut wide = CellBracket::of(&[b(37.0, 13338.0)], 13338.0, BracketKind::PaperRank).unwrap();
        assert!(!wide.resolved);
        assert_eq!(wide.display(f), "≥ 37 (unresolved: too few resolved eigenvalues to say what would resolve it)");
        wide.needs_ell = Some(900);
        assert_eq!(wide.display(f), "≥ 37 (unresolved: needs ℓ ≈ 900)");
        wide.exact_ell = Some(900);
        assert_eq!(wide.display(f), "≥ 37 (unresolved: needs ℓ ≈ 900, where the sketch is exact)");
        wide.memory_cap = Some((640, 256));
        assert_eq!(
            wide.display(f),
            "≥ 37 (unresolved: memory_mb = 256 allows ℓ ≤ 640; needs ℓ ≈ 900, where the sketch is exact)"
        );
        let count = CellBracket::of(&[b(10.0, 20.0)], 100.0, BracketKind::Count).unwrap();
        assert_eq!(count.display(f), "[10, 20] (unresolved)");
        let value = CellBracket::of(&[b(0.5, 0.7)], f64::INFINITY, BracketKind::Value).unwrap();
        assert_eq!(value.display(f), "[0.5, 0.7]");
        rank.seeds = 1;
        let frac = rank.scaled(0.5);
        assert_eq!((frac.kind, frac.display(f)), (BracketKind::Value, "[135.5, 141.5]".to_string()));
    }

    /// Two seeds of a small net on the digits, two probes each.
    pub(crate) fn tiny_cell() -> (Cell, Vec<RunData>) {
        let grid = "[sweep]\nname = \"t\"\nseeds = 2\n[train]\nmodel = \"mlp:64-8-10\"\ndataset = \"digits\"\n\
                    epochs = 2\n[probe]\nevery_epochs = 1\nsketch_rank = 12\nwire_precision = \"f16\"\n";
        let plan = crate::parse_grid(grid, "t.toml", Default::default()).unwrap();
        let cell = plan.cells[0].clone();
        let runs = plan
            .seeds
            .iter()
            .map(|&seed| {
                let (mut probes, mut trajectory) = (vec![], None);
                let stop = std::sync::atomic::AtomicBool::new(false);
                let fin = crate::run::execute(&cell.run_spec(seed), &stop, &mut |e| {
                    match e {
                        crate::run::RunEvent::Probe(p) => probes.push(*p),
                        crate::run::RunEvent::Trajectory(t) => trajectory = Some(*t),
                        _ => {}
                    }
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap();
                RunData { run_id: format!("t/c0/s{seed}"), seed, fin, probes, trajectory }
            })
            .collect();
        (cell, runs)
    }

    /// Issue 11, item 7: a merged cell answers new thresholds from the
    /// eigenvalues it kept exactly as a merge from the sketches would, and
    /// its probes' digests state the same spectra.
    #[test]
    fn thresholds_added_from_kept_spectra_equal_a_merge_from_the_sketches() {
        let (cell, runs) = tiny_cell();
        let th = RankThresholds { relative: vec![1e-3, 0.2], absolute: vec![1e-6, 1e-2] };
        let m = merge_cell(&cell, 2, &runs);
        assert_eq!(m.result, cell_result(&cell, 2, &runs, &RankThresholds::default()));
        let json = |c: &CellResult| serde_json::to_string(c).unwrap();
        let mut added = m.result.clone();
        added.add_thresholds(&m.spectra, &th).unwrap();
        assert_eq!(json(&added), json(&cell_result(&cell, 2, &runs, &th)));
        assert_ne!(json(&added), json(&m.result), "the thresholds were added");
        // 2 runs × (2 probes + pooled) + the merged final spectrum.
        assert_eq!(m.spectra.lists.len(), 7);
        assert_eq!(m.digests.len(), 4);
        for ((run, digest), r) in
            m.digests.iter().zip(m.result.runs.iter().flat_map(|r| r.probes.iter().map(move |p| (r, p))))
        {
            assert_eq!((run, &digest.meta), (&r.0.run_id, &r.1.meta));
            assert_eq!(digest.spectrum(&RankThresholds::default()), r.1.spectrum);
            assert!(digest.top_vectors.is_empty(), "no eigenvectors kept by default");
        }
        // `digest_vectors` keeps that many, and changes no statistic.
        let mut keeping = cell.clone();
        keeping.probe.digest_vectors = 3;
        let kept = merge_cell(&keeping, 2, &runs);
        assert_eq!(kept.result, m.result);
        for (_, digest) in &kept.digests {
            assert_eq!(digest.top_vectors.len(), 3.min(digest.eigenvalues.len()));
            assert_eq!(digest.top_vectors[0].len(), digest.moments.d);
        }
        // Every spectrum as a named NPY file of certified [lower, upper]
        // ends: the runs' probes and pooled spectra, then the merged one.
        let files = m.result.spectrum_files(&m.spectra).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names.len(), 7);
        assert_eq!(names[2], "c0-s0-pooled.spectrum.npy");
        assert_eq!(names[6], "c0-merged.spectrum.npy");
        assert!(names[0].starts_with("c0-s0-probe0-epoch") && names[3].starts_with("c0-s1-probe0-epoch"), "{names:?}");
        for ((name, bytes), (lower, s)) in files.iter().zip(
            m.spectra
                .lists
                .iter()
                .zip(m.result.runs.iter().flat_map(|r| r.probes.iter().map(|p| &p.spectrum).chain(r.pooled.as_ref()))),
        ) {
            let a = crate::npy::parse(bytes, name).unwrap();
            assert_eq!((a.rows, a.cols, a.was_f32), (lower.len(), 2, false));
            for (i, &l) in lower.iter().enumerate() {
                assert_eq!((a.data[2 * i], a.data[2 * i + 1]), (l, l + s.eig_error), "{name}");
            }
        }
        // Spectra of another cell are refused, not misapplied.
        let mut short = m.spectra.clone();
        short.lists.pop();
        let mut other = m.result.clone();
        assert_eq!(other.add_thresholds(&short, &th).unwrap_err(), SpectraMismatch { got: 6, want: 7 });
        assert_eq!(other, m.result, "nothing changed");
    }
}
