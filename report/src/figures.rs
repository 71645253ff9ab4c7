//! The paper's figures, from a [`ReportInput`]: each is a [`Plot`] built
//! from the results document (and the spectra and epochs the exports write),
//! drawn to SVG.
//!
//! Sweep figures: every scored statistic against η/b, coloured by batch
//! size, with 95 % intervals across seeds and the collapse score; rank/d
//! against η/b with its certified brackets. Cell figures: D's spectrum
//! (merged, its certified band, the paper's and the user's thresholds, the
//! successive probes of one seed overlaid), rank/d and tr D over training,
//! learning curves, and the drift of the trajectories (power spectrum with
//! its fitted background and peak, autocorrelation with its 99 % band, MSD
//! with its fitted exponent, ‖∇f‖/√d over training).

use std::collections::BTreeMap;

use gradsweep_shared::results::{CellEpochs, CellResult, SpectrumOf};
use gradsweep_shared::stats::SpectrumStats;
use gradsweep_shared::trajectory::DriftStats;

use crate::ReportError;
use crate::format::{bracket, num};
use crate::input::{ReportInput, RunRow};
use crate::plot::{Axis, Plot, Series};

/// One drawn figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Identifier: the HTML element's id and the SVG file's stem
    /// (`eta-b-tr-d`, `cell3-spectrum`, …).
    pub id: String,
    /// What it shows (its title).
    pub title: String,
    /// How to read it: what the bands and lines are, what was left out.
    pub caption: String,
    /// The SVG document.
    pub svg: String,
}

/// `plot` as a figure, or `None` when it has nothing to show; points its
/// axes cannot show are counted in the caption.
fn figure(id: String, plot: Plot, caption: String) -> Option<Result<Figure, ReportError>> {
    if !plot.has_data() {
        return None;
    }
    let hidden = plot.hidden_points();
    let caption = if hidden > 0 {
        format!("{caption} {hidden} point(s) a log axis cannot show (≤ 0 or not finite) are not drawn.")
    } else {
        caption
    };
    Some(plot.svg().map(|svg| Figure { id, title: plot.title.clone(), caption, svg }))
}

/// A statistic's name as an id (`tr D` → `tr-d`).
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            'a'..='z' | '0'..='9' => out.push(c),
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            'λ' => out.push_str("lambda"),
            'η' => out.push_str("eta"),
            '∇' => out.push_str("grad"),
            _ if !out.ends_with('-') && !out.is_empty() => out.push('-'),
            _ => {}
        }
    }
    out.trim_end_matches('-').to_string()
}

/// Most cells whose 95 % intervals the η/b figures draw as bars.
pub const MAX_ERROR_BARS: usize = 1000;

/// The sweep-level figures: every statistic against η/b, coloured by b.
pub fn sweep_figures(input: &ReportInput) -> Result<Vec<Figure>, ReportError> {
    let summary = &input.results.summary;
    let rows = &summary.by_eta_over_b;
    let batches: Vec<u32> = {
        let mut b: Vec<u32> = rows.iter().map(|r| r.batch_size).collect();
        b.sort_unstable();
        b.dedup();
        b
    };
    let colour = |b: u32| batches.iter().position(|&x| x == b).unwrap_or(0);
    let score_text = |name: &str| match summary.collapse.iter().find(|c| c.statistic == name) {
        None => " — not scored".to_string(),
        Some(c) if c.score.is_finite() => {
            format!(" — collapse {} [{}, {}] over {} cells", num(c.score), num(c.ci_lo), num(c.ci_hi), c.cells)
        }
        Some(_) => " — collapse withheld (see below)".to_string(),
    };
    // Why a score is withheld is a sentence: the caption holds it.
    let withheld = |name: &str| match summary.collapse.iter().find(|c| c.statistic == name) {
        Some(c) if !c.score.is_finite() => {
            format!(" Collapse score withheld: {}.", c.note.as_deref().unwrap_or("not enough cells"))
        }
        _ => String::new(),
    };
    let mut out = vec![];
    // rank/d with its certified brackets (not a CI: the sketch's bound).
    let series: Vec<Series> = batches
        .iter()
        .flat_map(|&b| {
            let of_b: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter(|r| r.batch_size == b)
                .map(|r| (r.eta_over_b, r.rank_fraction_lo, r.rank_fraction_hi))
                .collect();
            brackets(format!("b = {b}"), colour(b), &of_b)
        })
        .collect();
    let plot = Plot::new(
        format!("rank/d against η/b{}", score_text("rank/d")),
        Axis::log("η/b (learning rate / batch size)"),
        Axis::linear("rank/d at λmax·d·ε_f32"),
        series,
    );
    let caption = format!(
        "Each cell's certified bracket of the mean rank/d over seeds (the sketch's bound, not a confidence \
         interval). {BRACKETS} The collapse score says how much of the variation across the grid η/b explains."
    ) + &withheld("rank/d");
    out.extend(figure("eta-b-rank-d-bracket".into(), plot, caption));
    let mut names: Vec<&str> = gradsweep_shared::scaling::STATISTICS
        .iter()
        .map(|s| s.name)
        .filter(|n| rows.iter().any(|r| r.statistics.contains_key(*n)))
        .collect();
    for r in rows {
        for k in r.statistics.keys() {
            if !names.contains(&k.as_str()) {
                names.push(k);
            }
        }
    }
    // Beyond MAX_ERROR_BARS cells the bars would outweigh the page: the
    // means alone, and the caption says where the intervals are.
    let bars = rows.len() <= MAX_ERROR_BARS;
    for name in names {
        let series: Vec<Series> = batches
            .iter()
            .map(|&b| Series::Points {
                name: Some(format!("b = {b}")),
                color: colour(b),
                points: rows
                    .iter()
                    .filter(|r| r.batch_size == b)
                    .filter_map(|r| r.statistics.get(name).map(|s| (s, r)))
                    .map(|(s, r)| {
                        let ci = if s.ci95.is_finite() && bars { s.ci95 } else { 0.0 };
                        (r.eta_over_b, s.mean, s.mean - ci, s.mean + ci)
                    })
                    .collect(),
            })
            .collect();
        let plot =
            Plot::new(format!("{name} against η/b{}", score_text(name)), Axis::log("η/b"), Axis::linear(name), series);
        let intervals = if bars {
            "bars are 95 % intervals across seeds".to_string()
        } else {
            format!("with {} cells the 95 % intervals are left out of the figure (they are in results.csv)", rows.len())
        };
        let caption = format!(
            "Mean of {name} over each cell's seeds against η/b, coloured by batch size; {intervals}. If the dynamics \
             depend on η and b only through η/b, the colours fall on one curve.{}",
            withheld(name)
        );
        out.extend(figure(format!("eta-b-{}", slug(name)), plot, caption));
    }
    out.into_iter().collect()
}

/// How brackets are drawn, for captions.
const BRACKETS: &str = "A dot marks a resolved bracket (its ends within 5 % of each other); an unresolved one is \
                        drawn as a bar alone: the value lies somewhere on it.";

/// Certified brackets (x, lo, hi) as series named `name`: resolved ones as
/// points (a dot at the middle, which is within 2.5 % of either end),
/// unresolved ones as bare intervals — never a dot that would read as the
/// value.
fn brackets(name: String, color: usize, b: &[(f64, f64, f64)]) -> Vec<Series> {
    let resolved = |lo: f64, hi: f64| {
        gradsweep_shared::stats::Bracket { value: f64::NAN, lo, hi }.is_resolved(gradsweep_shared::stats::RESOLVE_WIDTH)
    };
    let (dots, bars): (Vec<_>, Vec<_>) = b.iter().partition(|&&(_, lo, hi)| resolved(lo, hi));
    let mut out = vec![];
    if !dots.is_empty() {
        let points = dots.iter().map(|&(x, lo, hi)| (x, 0.5 * (lo + hi), lo, hi)).collect();
        out.push(Series::Points { name: Some(name.clone()), color, points });
    }
    if !bars.is_empty() {
        let name = if out.is_empty() { name } else { format!("{name} (unresolved)") };
        out.push(Series::Intervals { name: Some(name), color, points: bars });
    }
    out
}

/// The successive probes' spectra of a cell's first seed, and the cell's
/// merged spectrum, with their eigenvalue lists.
struct CellSpectraView<'a> {
    merged: Option<(&'a SpectrumStats, &'a [f64])>,
    probes: Vec<(u32, &'a SpectrumStats, &'a [f64])>,
    seed: Option<u64>,
}

fn spectra_view<'a>(
    cell: &'a CellResult,
    lists: Option<&'a gradsweep_shared::digest::CellSpectra>,
) -> CellSpectraView<'a> {
    let mut v = CellSpectraView { merged: None, probes: vec![], seed: None };
    let Some(named) = lists.and_then(|l| cell.named_spectra(l)) else { return v };
    for (of, s, list) in named {
        match of {
            SpectrumOf::Merged => v.merged = Some((s, list)),
            SpectrumOf::Probe { seed, epoch, .. } if v.seed.is_none_or(|x| x == seed) => {
                v.seed = Some(seed);
                v.probes.push((epoch, s, list));
            }
            _ => {}
        }
    }
    v
}

/// Eigenvalue lists as (index from 1, value).
fn indexed(list: &[f64]) -> Vec<(f64, f64)> {
    list.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect()
}

/// The cell's title: its index and hyperparameters.
pub fn cell_heading(c: &CellResult) -> String {
    let axes: Vec<String> = c
        .params
        .iter()
        .filter(|(k, _)| *k != "lr" && *k != "batch_size")
        .map(|(k, v)| format!("{k} {}", v.as_str().map_or_else(|| v.to_string(), str::to_string)))
        .collect();
    let mut t = format!("cell {} (η {}, b {}", c.index, num(c.lr), c.batch_size);
    for a in axes {
        t.push_str(", ");
        t.push_str(&a);
    }
    t.push(')');
    t
}

/// D's spectrum of a cell: merged band and line, the thresholds, and one
/// seed's successive probes.
fn spectrum_figure(c: &CellResult, view: &CellSpectraView<'_>) -> Option<Result<Figure, ReportError>> {
    let (merged, list) = view.merged.or_else(|| view.probes.last().map(|(_, s, l)| (*s, *l)))?;
    let mut series = vec![Series::Band {
        name: Some("certified bracket".into()),
        color: 0,
        points: list.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l, l + merged.eig_error)).collect(),
    }];
    for (k, (epoch, _, l)) in view.probes.iter().enumerate() {
        series.push(Series::Line {
            name: Some(format!("seed {} epoch {epoch}", view.seed.unwrap_or(0))),
            color: 1 + k % 6,
            points: indexed(l),
            dashed: false,
        });
    }
    series.push(Series::Line {
        name: Some(if view.merged.is_some() { "merged over seeds".into() } else { "last probe".into() }),
        color: 0,
        points: indexed(list),
        dashed: false,
    });
    series.push(Series::HLine { name: Some("λmax·d·ε_f32 (paper)".into()), color: 8, y: merged.rank_threshold });
    for &(r, _) in &merged.ranks_relative {
        series.push(Series::HLine { name: Some(format!("{r:e}·λmax")), color: 6, y: r * merged.lambda_max.lo });
    }
    for &(t, _) in &merged.ranks_absolute {
        series.push(Series::HLine { name: Some(format!("τ = {t:e}")), color: 3, y: t });
    }
    let rank = bracket(c.rank_certified.as_ref(), crate::format::count);
    let plot = Plot::new(
        format!("{}: spectrum of D — rank {rank}", cell_heading(c)),
        Axis::linear("eigenvalue index"),
        Axis::log("eigenvalue of D"),
        series,
    );
    let caption = format!(
        "The {} leading eigenvalues of D (lower ends; each eigenvalue lies in the shaded band, of width {} from the \
         sketch), with the paper's rank threshold λmax·d·ε_f32 and the relative and absolute thresholds as dashed \
         lines. The other d − {} = {} eigenvalues lie in [0, {}]. Coloured lines: one seed's spectrum at each probe.",
        list.len(),
        num(merged.eig_error),
        list.len(),
        merged.d.saturating_sub(list.len()),
        num(merged.eig_error)
    );
    figure(format!("cell{}-spectrum", c.index), plot, caption)
}

/// One line per seed: `f` gives a run's seed and its points.
fn seed_lines<T>(runs: impl IntoIterator<Item = T>, f: impl Fn(T) -> (u64, Vec<(f64, f64)>)) -> Vec<Series> {
    runs.into_iter()
        .enumerate()
        .map(|(k, r)| {
            let (seed, points) = f(r);
            Series::Line { name: Some(format!("seed {seed}")), color: k, points, dashed: false }
        })
        .collect()
}

/// Runs of a cell by seed.
fn by_seed(runs: &[RunRow], cell: u32) -> BTreeMap<u64, &RunRow> {
    runs.iter().filter(|r| r.cell == cell).map(|r| (r.seed, r)).collect()
}

/// The figures of one cell.
pub fn cell_figures(input: &ReportInput, c: &CellResult) -> Result<Vec<Figure>, ReportError> {
    let lists = input.spectra.iter().find(|(i, _)| *i == c.index).map(|(_, s)| s);
    let view = spectra_view(c, lists);
    let title = cell_heading(c);
    let mut out = vec![];
    out.extend(spectrum_figure(c, &view));
    // rank/d and tr D over training, per seed.
    let rank: Vec<Series> = c
        .runs
        .iter()
        .enumerate()
        .flat_map(|(k, r)| {
            let b: Vec<(f64, f64, f64)> = r
                .probes
                .iter()
                .map(|p| (p.meta.epoch as f64, p.spectrum.rank_fraction.lo, p.spectrum.rank_fraction.hi))
                .collect();
            brackets(format!("seed {}", r.seed), k, &b)
        })
        .collect();
    out.extend(figure(
        format!("cell{}-rank-epoch", c.index),
        Plot::new(format!("{title}: rank/d over training"), Axis::linear("epoch"), Axis::linear("rank/d"), rank),
        format!("rank/d at the paper's threshold at each probe, per seed, as certified brackets. {BRACKETS}"),
    ));
    let trace =
        seed_lines(&c.runs, |r| (r.seed, r.probes.iter().map(|p| (p.meta.epoch as f64, p.spectrum.trace)).collect()));
    out.extend(figure(
        format!("cell{}-trace-epoch", c.index),
        Plot::new(format!("{title}: tr D over training"), Axis::linear("epoch"), Axis::log("tr D"), trace),
        "tr D (exact, from the probes' moments) at each probe, per seed.".into(),
    ));
    // Learning curves, from the epochs the workers reported.
    let seeds = by_seed(&input.runs, c.index);
    let curve = |f: fn(&crate::input::EpochPoint) -> f64| {
        seed_lines(seeds.values(), |r| (r.seed, r.epochs.iter().map(|e| (e.epoch as f64, f(e))).collect()))
    };
    out.extend(figure(
        format!("cell{}-train-loss", c.index),
        Plot::new(
            format!("{title}: training loss"),
            Axis::linear("epoch"),
            Axis::log("mean training loss"),
            curve(|e| e.train_loss),
        ),
        "Mean training loss of each epoch, per seed.".into(),
    ));
    out.extend(figure(
        format!("cell{}-test-accuracy", c.index),
        Plot::new(
            format!("{title}: test accuracy"),
            Axis::linear("epoch"),
            Axis::linear("test accuracy"),
            curve(|e| e.test_accuracy),
        ),
        "Test accuracy at the end of each epoch, per seed.".into(),
    ));
    if let Some(d) = &c.merged_drift {
        out.extend(drift_figures(c.index, d, &title, TimeScale::Step));
    }
    if let Some(e) = &c.epochs {
        if let Some(d) = &e.merged_drift {
            out.extend(drift_figures(c.index, d, &title, TimeScale::Epoch));
        }
        out.extend(increment_figure(c.index, e, &title));
    }
    let grad = seed_lines(&c.runs, |r| (r.seed, r.grad_norm.iter().map(|&(e, v)| (e as f64, v.0)).collect()));
    out.extend(figure(
        format!("cell{}-grad-norm", c.index),
        Plot::new(format!("{title}: ‖∇f‖/√d over training"), Axis::linear("epoch"), Axis::log("‖∇f‖/√d"), grad),
        "Full-gradient norm per coordinate at each probe (unbiased estimate, clamped at 0), per seed: how far from \
         a critical point training sits."
            .into(),
    ));
    out.into_iter().collect()
}

/// The level `A` of a power law `y = A·x^k` fitted by least squares in
/// log–log at a given exponent `k`, over the positive points.
fn level(points: &[(f64, f64)], k: f64) -> Option<f64> {
    let logs: Vec<f64> =
        points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).map(|(x, y)| y.log10() - k * x.log10()).collect();
    (!logs.is_empty() && k.is_finite()).then(|| 10f64.powf(logs.iter().sum::<f64>() / logs.len() as f64))
}

/// The time scale of a trajectory: one point per SGD step, or one per epoch
/// (`epoch_psd_window`).
#[derive(Clone, Copy)]
enum TimeScale {
    Step,
    Epoch,
}

impl TimeScale {
    /// "step" or "epoch".
    fn unit(self) -> &'static str {
        match self {
            TimeScale::Step => "step",
            TimeScale::Epoch => "epoch",
        }
    }

    /// The figure id's infix: none per step (the ids figures always had),
    /// `-epoch` per epoch.
    fn infix(self) -> &'static str {
        match self {
            TimeScale::Step => "",
            TimeScale::Epoch => "-epoch",
        }
    }
}

/// The paper's FFT of the increments: each weight's Welch spectrum of its
/// per-epoch increments, mean ± one standard deviation over the weights of
/// every seed.
fn increment_figure(cell: u32, e: &CellEpochs, title: &str) -> Option<Result<Figure, ReportError>> {
    let pts: Vec<(f64, f64, f64)> = e.increment_spectrum.iter().map(|(f, m, d)| (f.0, m.0, d.0)).collect();
    if pts.is_empty() {
        return None;
    }
    let series = vec![
        Series::Band {
            name: Some("± one standard deviation over weights".into()),
            color: 6,
            // A log axis cannot show mean − std below 0: the band is cut at a
            // thousandth of the mean there.
            points: pts.iter().map(|&(f, m, d)| (f, (m - d).max(m * 1e-3), m + d)).collect(),
        },
        Series::Line {
            name: Some("mean over weights".into()),
            color: 0,
            points: pts.iter().map(|&(f, m, _)| (f, m)).collect(),
            dashed: false,
        },
    ];
    figure(
        format!("cell{cell}-increment-spectrum"),
        Plot::new(
            format!("{title}: spectrum of the weights' per-epoch increments"),
            Axis::log("frequency (cycles per epoch)"),
            Axis::log("power"),
            series,
        ),
        format!(
            "Welch spectrum of each weight's increment from one epoch to the next (the paper's Fig. 3a), mean and \
             standard deviation over the weights of {} seeds ({} epochs each). A limit cycle would stand out as a \
             line at its frequency in every weight; the surrogate test in the results asks whether any line stands \
             above its background by more than chance. Where the deviation exceeds the mean, the band is cut at a \
             thousandth of the mean (a log axis has no 0).",
            e.peaks_tested.max(e.epochs.count),
            num(e.epochs.mean)
        ),
    )
}

/// The drift figures of a cell, from its seeds' trajectories pooled, at
/// one time scale.
fn drift_figures(cell: u32, d: &DriftStats, title: &str, scale: TimeScale) -> Vec<Result<Figure, ReportError>> {
    let (unit, infix) = (scale.unit(), scale.infix());
    let mut out = vec![];
    let mut power =
        vec![Series::Line { name: Some("power".into()), color: 0, points: d.spectrum.clone(), dashed: false }];
    if let Some(a) = level(&d.spectrum, -d.spectral_exponent) {
        power.push(Series::Line {
            name: Some(format!("background ∝ f^−{}", num(d.spectral_exponent))),
            color: 1,
            points: d.spectrum.iter().map(|&(f, _)| (f, a * f.powf(-d.spectral_exponent))).collect(),
            dashed: true,
        });
    }
    if d.peak_frequency.is_finite() {
        power.push(Series::VLine {
            name: Some(format!("peak ×{} over background", num(d.peak_to_background))),
            color: 2,
            x: d.peak_frequency,
        });
    }
    out.extend(figure(
        format!("cell{cell}{infix}-power"),
        Plot::new(
            format!("{title}: power spectrum of the weights, per {unit}"),
            Axis::log(format!("frequency (cycles per {unit})")),
            Axis::log("power"),
            power,
        ),
        "Power spectrum of the trajectory, averaged over coordinates and seeds. The dashed line is the background \
         f^−α at the exponent α in the results, at its least-squares level; the vertical line marks the strongest \
         peak above it."
            .into(),
    ));
    let band = 2.576 / (d.points.max(1) as f64).sqrt();
    let lags: Vec<f64> = d.autocorrelation.iter().map(|&(l, _)| l as f64).collect();
    let acf = vec![
        Series::Band {
            name: Some("99 % band of white noise".into()),
            color: 6,
            points: lags.iter().map(|&l| (l, -band, band)).collect(),
        },
        Series::Line {
            name: Some("autocorrelation".into()),
            color: 0,
            points: d.autocorrelation.iter().map(|&(l, v)| (l as f64, v)).collect(),
            dashed: false,
        },
    ];
    out.extend(figure(
        format!("cell{cell}{infix}-autocorrelation"),
        Plot::new(
            format!("{title}: autocorrelation of the weights, per {unit}"),
            Axis::linear(format!("lag ({unit}s)")),
            Axis::linear("autocorrelation"),
            acf,
        ),
        format!(
            "Autocorrelation averaged over coordinates; the band is ±2.576/√n (n = {} points), where 99 % of a \
             white-noise sequence's would fall.",
            d.points
        ),
    ));
    let msd: Vec<(f64, f64)> = d.msd.iter().map(|&(l, v)| (l as f64, v)).collect();
    let mut series = vec![Series::Line { name: Some("MSD".into()), color: 0, points: msd.clone(), dashed: false }];
    if let Some(a) = level(&msd, d.msd_exponent) {
        series.push(Series::Line {
            name: Some(format!("∝ τ^{}", num(d.msd_exponent))),
            color: 1,
            points: msd.iter().map(|&(t, _)| (t, a * t.powf(d.msd_exponent))).collect(),
            dashed: true,
        });
    }
    out.extend(figure(
        format!("cell{cell}{infix}-msd"),
        Plot::new(
            format!("{title}: mean squared displacement per {unit} — exponent {}", num(d.msd_exponent)),
            Axis::log(format!("lag τ ({unit}s)")),
            Axis::log("MSD"),
            series,
        ),
        "Mean squared displacement against lag; dashed: τ^c at the fitted exponent c (1: diffusion; below 1: \
         confined; above 1: drift)."
            .into(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_ids() {
        assert_eq!(slug("tr D"), "tr-d");
        assert_eq!(slug("‖∇f‖/√d"), "gradf-d");
        assert_eq!(slug("λ_max"), "lambda-max");
        assert_eq!(slug("area rate/η"), "area-rate-eta");
    }

    #[test]
    fn unresolved_brackets_are_drawn_without_a_value() {
        let s = brackets("b".into(), 0, &[(1.0, 0.10, 0.102), (2.0, 0.02, 1.0)]);
        assert_eq!(s.len(), 2);
        assert!(matches!(&s[0], Series::Points { points, .. } if points == &vec![(1.0, 0.101, 0.10, 0.102)]));
        assert!(matches!(&s[1], Series::Intervals { points, .. } if points == &vec![(2.0, 0.02, 1.0)]));
        assert!(matches!(&brackets("b".into(), 0, &[(2.0, 0.02, 1.0)])[0], Series::Intervals { .. }));
    }

    #[test]
    fn a_power_law_level_is_recovered() {
        let pts: Vec<(f64, f64)> = (1..20).map(|i| (i as f64, 3.0 * (i as f64).powf(-1.5))).collect();
        assert!((level(&pts, -1.5).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(level(&[(0.0, 1.0)], 1.0), None);
    }
}
