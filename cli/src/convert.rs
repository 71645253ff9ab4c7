//! The client's wire↔domain module: results requests out, and the results
//! a coordinator streams (`CellResult`, `SweepSummary`) read back into
//! `gradsweep-shared`'s types. The coordinator's `convert` module writes
//! them; a message this client cannot read is refused naming the field,
//! never guessed.

use gradsweep_proto::FieldError;
use gradsweep_proto::v1 as pb;
use gradsweep_shared::epochs::{EpochStats, PeakTest};
use gradsweep_shared::json_f64::F64;
use gradsweep_shared::results::{
    BracketKind, CellBracket, CellEpochs, CellResult, ProbeSummary, RunResult, SweepSummary,
};
use gradsweep_shared::run::{ProbeMeta, ProbeSizing, SizingStop};
use gradsweep_shared::scaling::CollapseScore;
use gradsweep_shared::spec::RunFinal;
use gradsweep_shared::stats::{Bracket, RankThresholds, SpectrumStats, Summary};
use gradsweep_shared::trajectory::DriftStats;

/// A results message this client cannot read, naming the field
/// (`runs[2].probes[0].spectrum`).
pub type WireError = FieldError;

type Result<T> = std::result::Result<T, WireError>;

/// A required message field.
fn req<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| FieldError::missing(field))
}

/// The wire form of a results request: a sweep, with ranks at extra
/// thresholds `th` too.
pub fn results_request(sweep_id: &str, th: &RankThresholds) -> pb::ResultsRequest {
    pb::ResultsRequest {
        sweep_id: sweep_id.to_string(),
        rank_thresholds_relative: th.relative.clone(),
        rank_thresholds_absolute: th.absolute.clone(),
    }
}

/// A cell's results from the wire.
pub fn cell_from_wire(c: pb::CellResult) -> Result<CellResult> {
    let params = gradsweep_proto::grid_value::map_from_wire("params", c.params)?;
    let s = |v: Option<pb::Summary>, f: &str| req(v, f).map(summary_from_wire);
    Ok(gradsweep_proto::moved_fields!(c => CellResult {
        results_version, index, lr, batch_size, eta_over_b, temperature, area_rate_detectable,
        cycling_frequency_detectable;
        params: params,
        seeds_total: c.seeds_total as usize,
        seeds_done: c.seeds_done as usize,
        seeds_diverged: c.seeds_diverged as usize,
        d: c.d as usize,
        train_loss: s(c.train_loss, "train_loss")?,
        test_accuracy: s(c.test_accuracy, "test_accuracy")?,
        merged_final: c.merged_final.map(|x| spectrum_from_wire(x, "merged_final")).transpose()?,
        rank: s(c.rank, "rank")?,
        rank_fraction: s(c.rank_fraction, "rank_fraction")?,
        rank_certified: c.rank_certified.map(cell_bracket_from_wire).transpose()?,
        trace: s(c.trace, "trace")?,
        lambda_max: s(c.lambda_max, "lambda_max")?,
        area_rate: s(c.area_rate, "area_rate")?,
        eigenspace_overlap: s(c.eigenspace_overlap, "eigenspace_overlap")?,
        cycling_frequency: s(c.cycling_frequency, "cycling_frequency")?,
        msd_exponent: s(c.msd_exponent, "msd_exponent")?,
        autocorrelation: s(c.autocorrelation, "autocorrelation")?,
        spectral_exponent: s(c.spectral_exponent, "spectral_exponent")?,
        peak_to_background: s(c.peak_to_background, "peak_to_background")?,
        grad_norm: s(c.grad_norm, "grad_norm")?,
        merged_drift: c.merged_drift.map(|d| drift_from_wire(d, "merged_drift")).transpose()?,
        epochs: c.epochs.map(cell_epochs_from_wire).transpose()?,
        runs: c
            .runs
            .into_iter()
            .enumerate()
            .map(|(i, r)| run_result_from_wire(r, &format!("runs[{i}]")))
            .collect::<Result<_>>()?,
    }))
}

/// A sweep's summary from the wire; its η/b rows are empty (the caller
/// rebuilds them from the cells).
pub fn sweep_summary_from_wire(s: pb::SweepSummary) -> SweepSummary {
    gradsweep_proto::moved_fields!(s => SweepSummary {
        sweep_id, name;
        cells: s.cells as usize,
        runs_total: s.runs_total as usize,
        runs_done: s.runs_done as usize,
        by_eta_over_b: vec![],
        collapse: s.collapse.into_iter().map(collapse_from_wire).collect(),
    })
}

fn collapse_from_wire(c: pb::CollapseScore) -> CollapseScore {
    gradsweep_proto::moved_fields!(c => CollapseScore {
        statistic, score, ci_lo, ci_hi, r2_separate, r2_ratio, slope_ratio, p_value, note;
        cells: c.cells as usize,
    })
}

fn summary_from_wire(s: pb::Summary) -> Summary {
    gradsweep_proto::moved_fields!(s => Summary { mean, std, ci95; count: s.count as usize })
}

fn bracket_from_wire(b: Option<pb::Bracket>, field: &str) -> Result<Bracket> {
    let b = req(b, field)?;
    Ok(Bracket { value: b.estimate, lo: b.lo, hi: b.hi })
}

fn threshold_ranks_from_wire(v: Vec<pb::ThresholdRank>, field: &str) -> Result<Vec<(f64, Bracket)>> {
    v.into_iter()
        .enumerate()
        .map(|(i, t)| Ok((t.threshold, bracket_from_wire(t.rank, &format!("{field}[{i}].rank"))?)))
        .collect()
}

fn spectrum_from_wire(s: pb::SpectrumStats, field: &str) -> Result<SpectrumStats> {
    let f = |name: &str| format!("{field}.{name}");
    Ok(gradsweep_proto::moved_fields!(s => SpectrumStats {
        n, eig_error, trace, top_eigenvalues, rank_threshold, rank_resolved, rank_needs_ell, grad_norm_sq,
        effective_rank, resolved_trace_fraction, noise_scale;
        d: s.d as usize,
        ell: s.ell as usize,
        lambda_max: bracket_from_wire(s.lambda_max, &f("lambda_max"))?,
        rank: bracket_from_wire(s.rank, &f("rank"))?,
        rank_fraction: bracket_from_wire(s.rank_fraction, &f("rank_fraction"))?,
        ranks_relative: threshold_ranks_from_wire(s.ranks_relative, &f("ranks_relative"))?,
        ranks_absolute: threshold_ranks_from_wire(s.ranks_absolute, &f("ranks_absolute"))?,
        stable_rank: bracket_from_wire(s.stable_rank, &f("stable_rank"))?,
        isotropy: bracket_from_wire(s.isotropy, &f("isotropy"))?,
        energy_rank_90: bracket_from_wire(s.energy_rank_90, &f("energy_rank_90"))?,
        energy_rank_99: bracket_from_wire(s.energy_rank_99, &f("energy_rank_99"))?,
    }))
}

fn cell_bracket_from_wire(b: pb::CellBracket) -> Result<CellBracket> {
    let kind = match pb::BracketKind::try_from(b.kind) {
        Ok(pb::BracketKind::PaperRank) => BracketKind::PaperRank,
        Ok(pb::BracketKind::Count) => BracketKind::Count,
        Ok(pb::BracketKind::Value) => BracketKind::Value,
        _ => {
            let problem = format!("unknown bracket kind {}", b.kind);
            return Err(FieldError::new("rank_certified.kind", problem));
        }
    };
    Ok(gradsweep_proto::moved_fields!(b => CellBracket {
        lo, hi, ci95, ceiling, resolved, needs_ell, exact_ell;
        seeds: b.seeds as usize,
        memory_cap: b.memory_cap.map(|m| (m.max_ell, m.memory_mb)),
        kind: kind,
    }))
}

fn drift_from_wire(d: pb::DriftStats, field: &str) -> Result<DriftStats> {
    let lags = |v: Vec<pb::LagValue>| v.into_iter().map(|p| (p.lag as usize, p.value)).collect();
    let freqs = |v: Vec<pb::FrequencyValue>| v.into_iter().map(|p| (p.frequency, p.value)).collect();
    let rows = |m: Vec<pb::DoubleRow>| m.into_iter().map(|r| r.values.into_iter().map(F64).collect()).collect();
    let pair = req(d.max_area_pair, &format!("{field}.max_area_pair"))?;
    Ok(gradsweep_proto::moved_fields!(d => DriftStats {
        points, area_rate, max_area_rate, cycling_frequency, max_pair_cycling_frequency, msd_exponent,
        spectral_exponent, peak_frequency, peak_to_background, circulation_frequency;
        max_area_pair: (pair.i as usize, pair.j as usize),
        msd: lags(d.msd),
        autocorrelation: lags(d.autocorrelation),
        spectrum: freqs(d.spectrum),
        quadrature_spectrum: freqs(d.quadrature_spectrum),
        area_rates: rows(d.area_rates),
        cycling_frequencies: rows(d.cycling_frequencies),
    }))
}

fn increments_from_wire(v: Vec<pb::IncrementPower>) -> Vec<(F64, F64, F64)> {
    v.into_iter().map(|p| (F64(p.frequency), F64(p.mean), F64(p.std))).collect()
}

fn peak_from_wire(p: pb::PeakTest) -> PeakTest {
    gradsweep_proto::moved_fields!(p => PeakTest {
        statistic, frequency, p_value;
        coordinate: p.coordinate as usize,
        surrogates: p.surrogates as usize,
    })
}

fn cell_epochs_from_wire(e: pb::CellEpochs) -> Result<CellEpochs> {
    Ok(CellEpochs {
        epochs: summary_from_wire(req(e.epochs, "epochs.epochs")?),
        merged_drift: e.merged_drift.map(|d| drift_from_wire(d, "epochs.merged_drift")).transpose()?,
        increment_spectrum: increments_from_wire(e.increment_spectrum),
        weight_norm_trend: summary_from_wire(req(e.weight_norm_trend, "epochs.weight_norm_trend")?),
        peaks_significant: e.peaks_significant as usize,
        peaks_tested: e.peaks_tested as usize,
        strongest_peak: match e.strongest_peak {
            Some(p) => Some((p.seed, peak_from_wire(req(p.test, "epochs.strongest_peak.test")?))),
            None => None,
        },
    })
}

fn epoch_stats_from_wire(e: pb::EpochStats, field: &str) -> Result<EpochStats> {
    let drift = drift_from_wire(req(e.drift, &format!("{field}.drift"))?, &format!("{field}.drift"))?;
    Ok(gradsweep_proto::moved_fields!(e => EpochStats {
        epochs, weight_norm_first, weight_norm_last, weight_norm_trend;
        drift: drift,
        increment_spectrum: increments_from_wire(e.increment_spectrum),
        peaks: e.peaks.map(peak_from_wire),
    }))
}

fn probe_meta_from_wire(m: pb::ProbeMeta, field: &str) -> Result<ProbeMeta> {
    use pb::probe_sizing::Stop;
    let sizing = match m.sizing {
        None => None,
        Some(s) => Some(ProbeSizing {
            passes: s.passes,
            stop: match req(s.stop, &format!("{field}.sizing.stop"))? {
                Stop::Fixed(pb::SizingFixed {}) => SizingStop::Fixed,
                Stop::Resolved(pb::SizingResolved {}) => SizingStop::Resolved,
                Stop::MemoryCap(pb::MemoryCap { max_ell, memory_mb }) => SizingStop::MemoryCap { max_ell, memory_mb },
                Stop::ExactSize(pb::SizingExactSize {}) => SizingStop::ExactSize,
            },
        }),
    };
    Ok(gradsweep_proto::moved_fields!(m => ProbeMeta {
        index, epoch, step, train_loss, train_accuracy, saved_rows;
        exact: m.exact.map(|x| spectrum_from_wire(x, &format!("{field}.exact"))).transpose()?,
        sizing: sizing,
    }))
}

fn run_result_from_wire(r: pb::RunResult, field: &str) -> Result<RunResult> {
    let f = |name: &str| format!("{field}.{name}");
    let fin = req(r.final_figures, &f("final_figures"))?;
    let fin = gradsweep_proto::moved_fields!(fin => RunFinal {
        steps, train_loss, final_train_loss, test_accuracy, test_loss, diverged, weights_hash;
        params: fin.params as usize,
    });
    let probes = r
        .probes
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let at = f(&format!("probes[{i}]"));
            Ok(ProbeSummary {
                meta: probe_meta_from_wire(req(p.meta, &format!("{at}.meta"))?, &format!("{at}.meta"))?,
                spectrum: spectrum_from_wire(req(p.spectrum, &format!("{at}.spectrum"))?, &format!("{at}.spectrum"))?,
            })
        })
        .collect::<Result<_>>()?;
    Ok(gradsweep_proto::moved_fields!(r => RunResult {
        run_id, seed;
        fin: fin,
        probes: probes,
        pooled: r.pooled.map(|x| spectrum_from_wire(x, &f("pooled"))).transpose()?,
        drift: r.drift.map(|x| drift_from_wire(x, &f("drift"))).transpose()?,
        eigenspace_overlap: r.eigenspace_overlap.into_iter().map(F64).collect(),
        grad_norm: r.grad_norm.into_iter().map(|p| (p.epoch, F64(p.value))).collect(),
        epochs: r.epochs.map(|x| epoch_stats_from_wire(x, &f("epochs"))).transpose()?,
    }))
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use gradsweep_coordinator::convert::{cell_to_wire, sweep_summary_to_wire};
    use gradsweep_shared::results::{RunData, cell_result};
    use gradsweep_shared::run::RunEvent;

    /// Two cells of two seeds, recorded per step and per epoch, with exact
    /// spectra beside the sketches and saved rows: every optional part of
    /// a cell's results is there.
    const GRID: &str = r#"
[sweep]
name = "wire"
seeds = [1, 2]
[train]
model = "mlp:64-6-10"
dataset = "digits"
epochs = 9
batch_size = 64
[probe]
every_epochs = 5
exact = true
save_gradients = 2
projections = 3
max_lag = 4
psd_window = 8
epoch_psd_window = 8
[grid]
lr = [0.05, 0.1]
"#;

    /// The grid's cells, computed once for the tests, and its run count.
    fn cells() -> (Vec<CellResult>, usize) {
        static CELLS: std::sync::OnceLock<(Vec<CellResult>, usize)> = std::sync::OnceLock::new();
        CELLS.get_or_init(compute).clone()
    }

    fn compute() -> (Vec<CellResult>, usize) {
        let plan = gradsweep_shared::parse_grid(GRID, "grid", Default::default()).unwrap();
        let th = RankThresholds { relative: vec![0.01], absolute: vec![1e-6] };
        let cells = plan
            .cells
            .iter()
            .map(|cell| {
                let runs: Vec<RunData> = plan
                    .seeds
                    .iter()
                    .map(|&seed| {
                        let (mut probes, mut trajectory) = (vec![], None);
                        let fin = gradsweep_shared::execute(&cell.run_spec(seed), &AtomicBool::new(false), &mut |e| {
                            match e {
                                RunEvent::Probe(p) => probes.push(*p),
                                RunEvent::Trajectory(t) => trajectory = Some(*t),
                                _ => {}
                            }
                            ControlFlow::Continue(())
                        })
                        .unwrap();
                        RunData { run_id: format!("wire/c{}/s{seed}", cell.index), seed, fin, probes, trajectory }
                    })
                    .collect();
                cell_result(cell, plan.seeds.len(), &runs, &th)
            })
            .collect();
        (cells, plan.run_count())
    }

    /// NaN-aware equality: the JSON form keeps every finite f64 exactly.
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    /// Every field of a cell's results and of a sweep's summary crosses the
    /// wire unchanged: the coordinator's conversion out and this client's
    /// back in give the value back, for real cells whose optional parts are
    /// all present (those a short run leaves out are set by hand, each
    /// sizing stop among them).
    #[test]
    fn results_cross_the_wire_unchanged() {
        let (mut cells, runs) = cells();
        let stops = [
            SizingStop::Fixed,
            SizingStop::Resolved,
            SizingStop::MemoryCap { max_ell: 512, memory_mb: 64 },
            SizingStop::ExactSize,
        ];
        for c in &mut cells {
            // Counts that a finished cell has equal are set apart, so a
            // field read into another would show.
            (c.seeds_total, c.seeds_diverged) = (c.seeds_done + 3, 1);
            let b = c.rank_certified.as_mut().expect("a certified rank");
            (b.needs_ell, b.memory_cap, b.exact_ell, b.kind) =
                (Some(900), Some((512, 64)), Some(6), BracketKind::Value);
            c.merged_final.as_mut().expect("a merged spectrum").rank_needs_ell = Some(77);
            let e = c.epochs.as_mut().expect("per-epoch statistics");
            let peak = PeakTest { statistic: 4.5, frequency: 0.125, coordinate: 2, p_value: 0.03, surrogates: 99 };
            e.strongest_peak.get_or_insert((2, peak.clone()));
            assert!(e.merged_drift.is_some() && c.merged_drift.is_some());
            for (i, r) in c.runs.iter_mut().enumerate() {
                assert!(r.pooled.is_some() && r.drift.is_some() && !r.grad_norm.is_empty());
                r.epochs.as_mut().expect("a run's per-epoch statistics").peaks.get_or_insert(peak.clone());
                for (k, p) in r.probes.iter_mut().enumerate() {
                    assert!(p.meta.exact.is_some() && p.meta.saved_rows.is_some(), "exact spectra and saved rows");
                    assert!(!p.spectrum.ranks_relative.is_empty() && !p.spectrum.ranks_absolute.is_empty());
                    p.meta.sizing = Some(ProbeSizing { passes: vec![64, 128 + k as u32], stop: stops[(i + k) % 4] });
                }
            }
            let want = json(c);
            assert_eq!(json(&cell_from_wire(cell_to_wire(c.clone())).unwrap()), want);
        }
        let mut summary = SweepSummary::new("wire".into(), "wire".into(), runs, &cells);
        assert!(!summary.collapse.is_empty());
        summary.collapse[0].note = Some("too few cells".into());
        summary.runs_total += 1;
        let back = sweep_summary_from_wire(sweep_summary_to_wire(summary.clone()));
        summary.by_eta_over_b.clear();
        assert_eq!(json(&back), json(&summary));
    }

    #[test]
    fn a_cell_this_client_cannot_read_is_refused_naming_the_field() {
        let (cells, _) = cells();
        let wire = cell_to_wire(cells[0].clone());
        let mut w = wire.clone();
        w.runs[1].probes[0].spectrum = None;
        assert_eq!(cell_from_wire(w).unwrap_err().field, "runs[1].probes[0].spectrum");
        let mut w = wire.clone();
        w.rank_certified.as_mut().unwrap().kind = 9;
        assert_eq!(cell_from_wire(w).unwrap_err().field, "rank_certified.kind");
        let mut w = wire.clone();
        w.runs[0].epochs.as_mut().unwrap().drift.as_mut().unwrap().max_area_pair = None;
        assert_eq!(cell_from_wire(w).unwrap_err().field, "runs[0].epochs.drift.max_area_pair");
        let mut w = wire;
        w.params.insert("width".into(), pb::GridValue { kind: None });
        assert_eq!(cell_from_wire(w).unwrap_err().field, "params.width");
    }
}
