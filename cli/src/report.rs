//! Results as terminal tables, CSV, or JSON.
//!
//! The table format ([`Tables`], built one cell at a time) prints the
//! spectrum of `D` per cell, the drift statistics per cell, the area rate of
//! every pair of directions when a cell projects on more than two (per step,
//! and per epoch), what the seeds recorded once per epoch, and the
//! sweep-level η/b table with the collapse scores ([`eta_table`]).

use std::fmt::Write as _;

use gradsweep_shared::results::{BracketKind, CellBracket, CellEpochs, CellResult, PairDrift, SweepSummary};
use gradsweep_shared::stats::{Bracket, RankThresholds, SpectrumStats, Summary};

pub use gradsweep_report::document::{Provenance, RunCounts};
use gradsweep_report::format::{bracket, count, num, pm};

/// The per-cell columns shared by the table and the CSV.
struct Row {
    cell: u32,
    lr: f64,
    batch: u32,
    eta_over_b: f64,
    seeds: String,
    train_loss: Summary,
    test_accuracy: Summary,
    d: usize,
    /// Certified bracket of the mean rank over seeds, with what resolves it.
    rank: Option<CellBracket>,
    trace: Summary,
    /// Certified bracket of the mean λ_max over seeds.
    lambda_max: Option<CellBracket>,
    area_rate: Summary,
    /// β⁻¹ = η/(2b).
    temperature: f64,
    /// β⁻¹·tr D/d: the mean diffusion per coordinate at that temperature.
    temp_trace_per_d: Summary,
    /// Top-k eigenspace overlap between the last two probes.
    overlap: Summary,
}

/// Aligns `rows` (the first is the header) for a terminal, with a rule
/// under the header.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|j| rows.iter().map(|r| r[j].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r.iter().zip(&widths).map(|(s, w)| format!("{s:>w$}", w = w)).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
            out.push('\n');
        }
    }
    out
}

fn row(c: &CellResult) -> Row {
    Row {
        cell: c.index,
        lr: c.lr,
        batch: c.batch_size,
        eta_over_b: c.eta_over_b,
        // A diverged seed is a result, and the table says so.
        seeds: match c.seeds_diverged {
            0 => format!("{}/{}", c.seeds_done, c.seeds_total),
            k => format!("{}/{} ({k} diverged)", c.seeds_done, c.seeds_total),
        },
        train_loss: c.train_loss,
        test_accuracy: c.test_accuracy,
        d: c.d,
        rank: c.rank_certified.clone(),
        trace: c.trace,
        lambda_max: CellBracket::of(&final_brackets(c, |s| Some(s.lambda_max)), f64::INFINITY, BracketKind::Value),
        area_rate: c.area_rate,
        temperature: c.temperature,
        temp_trace_per_d: c.temperature_trace_per_d(),
        overlap: c.eigenspace_overlap,
    }
}

/// A user threshold's column: its label, CSV name, and where its bracket
/// sits in a spectrum.
struct ThresholdColumn {
    label: String,
    csv: String,
    list: fn(&SpectrumStats) -> &Vec<(f64, Bracket)>,
    threshold: f64,
}

impl ThresholdColumn {
    fn pick(&self, s: &SpectrumStats) -> Option<Bracket> {
        (self.list)(s).iter().find(|x| x.0 == self.threshold).map(|x| x.1)
    }
}

fn threshold_columns(th: &RankThresholds) -> Vec<ThresholdColumn> {
    let rel = th.relative.iter().map(|&r| ThresholdColumn {
        label: format!("rank>{r:e}·λmax"),
        csv: format!("rank_rel_{r:e}"),
        list: |s| &s.ranks_relative,
        threshold: r,
    });
    let abs = th.absolute.iter().map(|&t| ThresholdColumn {
        label: format!("rank>{t:e}"),
        csv: format!("rank_abs_{t:e}"),
        list: |s| &s.ranks_absolute,
        threshold: t,
    });
    rel.chain(abs).collect()
}

/// A threshold column of a cell: the certified bracket of the mean count
/// across seeds at their last probes.
fn threshold_cell(c: &CellResult, col: &ThresholdColumn) -> Option<CellBracket> {
    CellBracket::of(&final_brackets(c, |s| col.pick(s)), c.d as f64, BracketKind::Count)
}

/// One bracket per run, picked from the spectrum at its last probe.
fn final_brackets(c: &CellResult, pick: impl Fn(&SpectrumStats) -> Option<Bracket>) -> Vec<Bracket> {
    c.runs.iter().filter_map(|r| r.probes.last().and_then(|p| pick(&p.spectrum))).collect()
}

/// Exact spectra at the last probe of each run (probe option `exact`).
fn exact(c: &CellResult) -> impl Iterator<Item = &gradsweep_shared::stats::SpectrumStats> {
    c.runs.iter().filter_map(|r| r.probes.last().and_then(|p| p.meta.exact.as_ref()))
}

/// The table format's sections, built one cell at a time: each section
/// keeps of a cell only the text of its rows, so `results` prints a sweep
/// as it streams in, in the memory of its rows rather than of its cells
/// (a cell holds every run's spectra). [`Tables::render`] gives the
/// sections in order, then the η/b table of the summary.
pub struct Tables {
    main: MainTable,
    drift: TextRows,
    pairs: PairsSection,
    epochs: TextRows,
    epoch_pairs: PairsSection,
}

impl Tables {
    /// Empty sections; each of the user's rank thresholds `th` adds a
    /// column to the main table.
    pub fn new(th: &RankThresholds) -> Self {
        Tables {
            main: MainTable {
                user: threshold_columns(th),
                lines: TextRows::default(),
                with_exact: false,
                with_axes: false,
            },
            drift: TextRows::default(),
            pairs: PairsSection::new(CellResult::pair_drift, "step"),
            epochs: TextRows::default(),
            epoch_pairs: PairsSection::new(CellResult::epoch_pair_drift, "epoch"),
        }
    }

    /// Adds one cell's rows to every section (cells in index order).
    pub fn add(&mut self, c: &CellResult) {
        self.main.add(c);
        self.drift.push(&drift_row(c));
        self.pairs.add(c);
        if let Some(e) = &c.epochs {
            self.epochs.push(&epochs_row(c, e));
        }
        self.epoch_pairs.add(c);
    }

    /// Every section, aligned, with a blank line after each, and the η/b
    /// table of `summary` last.
    pub fn render(&self, summary: &SweepSummary) -> String {
        let mut out = self.main.render();
        out.push('\n');
        out.push_str(&self.drift.render(DRIFT_HEADER, &|_| true));
        out.push('\n');
        let epochs = if self.epochs.is_empty() {
            String::new()
        } else {
            format!("{EPOCHS_INTRO}{}", self.epochs.render(EPOCHS_HEADER, &|_| true))
        };
        for section in [self.pairs.render(), epochs, self.epoch_pairs.render()] {
            if !section.is_empty() {
                out.push_str(&section);
                out.push('\n');
            }
        }
        out.push_str(&eta_table(summary));
        out
    }
}

/// `header` and `rows`, aligned.
fn aligned(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    all.extend(rows.iter().cloned());
    align(&all)
}

/// Separates a row's fields in [`TextRows`] (a field that holds it has it
/// replaced by a space).
const FIELD_SEP: char = '\u{1f}';

/// A table's rows kept as text, one allocation a row (its fields joined by
/// [`FIELD_SEP`]), aligned as [`align`] aligns when rendered: a sweep's
/// rows cost their text and little more.
#[derive(Default)]
struct TextRows {
    rows: Vec<Box<str>>,
}

impl TextRows {
    fn push(&mut self, fields: &[String]) {
        let mut row = String::with_capacity(fields.iter().map(|f| f.len() + 1).sum());
        for (j, f) in fields.iter().enumerate() {
            if j > 0 {
                row.push(FIELD_SEP);
            }
            row.extend(f.chars().map(|c| if c == FIELD_SEP { ' ' } else { c }));
        }
        self.rows.push(row.into_boxed_str());
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The columns of `header` that `keep` keeps, over the rows, aligned
    /// with a rule under the header (as [`align`] does).
    fn render(&self, header: &[&str], keep: &dyn Fn(usize) -> bool) -> String {
        let kept = |fields: &mut dyn Iterator<Item = &str>| -> Vec<usize> {
            fields.enumerate().filter(|(j, _)| keep(*j)).map(|(_, f)| f.chars().count()).collect()
        };
        let mut widths = kept(&mut header.iter().copied());
        for r in &self.rows {
            for (w, n) in widths.iter_mut().zip(kept(&mut r.split(FIELD_SEP))) {
                *w = (*w).max(n);
            }
        }
        let (mut out, mut line) = (String::new(), String::new());
        let mut write = |fields: &mut dyn Iterator<Item = &str>, out: &mut String| {
            line.clear();
            for (k, f) in fields.enumerate().filter(|(j, _)| keep(*j)).map(|(_, f)| f).enumerate() {
                if k > 0 {
                    line.push_str("  ");
                }
                let _ = write!(line, "{f:>w$}", w = widths[k]);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        };
        write(&mut header.iter().copied(), &mut out);
        out.push_str(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
        out.push('\n');
        for r in &self.rows {
            write(&mut r.split(FIELD_SEP), &mut out);
        }
        out
    }
}

/// The main table's columns that every sweep has, before the optional ones.
const MAIN_FIXED: usize = 16;

/// The per-cell table, aligned for a terminal. ± is the 95 % interval across
/// seeds. Ranks, rank/d and λ_max are certified brackets (by the sketches'
/// Δ) of their mean over seeds, never the sketches' point estimates; an
/// unresolved one says what would resolve it. Each of the user's rank
/// thresholds `th` adds a column.
struct MainTable {
    user: Vec<ThresholdColumn>,
    /// Per cell: the fixed columns, exact rank and λ_max, the user's
    /// thresholds, the other axes (the optional ones dropped at render
    /// when no cell has them).
    lines: TextRows,
    with_exact: bool,
    with_axes: bool,
}

impl MainTable {
    fn add(&mut self, c: &CellResult) {
        let r = row(c);
        let mut line = vec![
            r.cell.to_string(),
            num(r.lr),
            r.batch.to_string(),
            num(r.eta_over_b),
            r.seeds,
            pm(r.train_loss),
            pm(r.test_accuracy),
            if r.d > 0 { r.d.to_string() } else { "-".into() },
            bracket(r.rank.as_ref(), count),
            bracket(r.rank.as_ref().map(|b| b.scaled(1.0 / r.d.max(1) as f64)).as_ref(), num),
            pm(r.trace),
            bracket(r.lambda_max.as_ref(), num),
            num(r.temperature),
            pm(r.temp_trace_per_d),
            pm(r.area_rate),
            pm(r.overlap),
        ];
        self.with_exact |= exact(c).next().is_some();
        line.push(pm(Summary::of(exact(c).map(|s| s.rank.value))));
        line.push(pm(Summary::of(exact(c).map(|s| s.lambda_max.value))));
        line.extend(self.user.iter().map(|col| bracket(threshold_cell(c, col).as_ref(), count)));
        let mut p = c.params.clone();
        p.remove("lr");
        p.remove("batch_size");
        let axes = gradsweep_shared::grid::fmt_params(&p);
        self.with_axes |= !axes.is_empty();
        line.push(axes);
        self.lines.push(&line);
    }

    fn render(&self) -> String {
        let mut header: Vec<&str> = vec![
            "cell",
            "lr",
            "b",
            "η/b",
            "seeds",
            "train loss",
            "test acc",
            "d",
            "rank (certified)",
            "rank/d",
            "tr D",
            "λ_max",
            "β⁻¹",
            "β⁻¹·trD/d",
            "area rate",
            "eig overlap",
            "exact rank",
            "exact λ_max",
        ];
        header.extend(self.user.iter().map(|c| c.label.as_str()));
        header.push("axes");
        let axes = header.len() - 1;
        let keep = |j: usize| match j {
            j if j < MAIN_FIXED => true,
            j if j < MAIN_FIXED + 2 => self.with_exact,
            j if j == axes => self.with_axes,
            _ => true,
        };
        self.lines.render(&header, &keep)
    }
}

/// The drift section's columns and one cell's row. The drift statistics per cell: ± is the 95 % interval across seeds;
/// "merged" columns read the seeds' trajectory sums added together;
/// "area detectable" is the power statement: the smallest area rate the
/// seeds would have told from 0 (5 % test, 80 % power).
const DRIFT_HEADER: &[&str] = &[
    "cell",
    "η/b",
    "points",
    "area rate",
    "area detectable",
    "cycling ω",
    "merged ω",
    "MSD exp",
    "autocorr@max",
    "spectral α",
    "peak f",
    "peak/bg",
    "‖∇f‖/√d",
];

fn drift_row(c: &CellResult) -> Vec<String> {
    let merged = c.merged_drift.as_ref();
    vec![
        c.index.to_string(),
        num(c.eta_over_b),
        merged.map_or("-".into(), |d| d.points.to_string()),
        pm(c.area_rate),
        num(c.area_rate_detectable),
        pm(c.cycling_frequency),
        merged.map_or("-".into(), |d| num(d.cycling_frequency)),
        pm(c.msd_exponent),
        pm(c.autocorrelation),
        pm(c.spectral_exponent),
        merged.map_or("-".into(), |d| num(d.peak_frequency)),
        pm(c.peak_to_background),
        pm(c.grad_norm),
    ]
}

/// Cells whose pairs the pairs section lists in full; past this, one summary
/// line per cell.
const PAIR_TABLE_CELLS: usize = 4;

/// Pairs listed per cell, the strongest first.
const PAIR_TABLE_ROWS: usize = 12;

/// A 95 % upper bound as it reads: `≤ x` (`-` when there is none).
fn at_most(x: f64) -> String {
    if x.is_finite() { format!("≤ {}", num(x)) } else { "-".into() }
}

/// An interval `[lo, hi]` (`-` when it is not finite).
fn interval((lo, hi): (f64, f64)) -> String {
    if lo.is_finite() && hi.is_finite() { format!("[{}, {}]", num(lo), num(hi)) } else { "-".into() }
}

/// The pairs section: the area rate of every pair of projected coordinates
/// (with `basis = "eigen"`, of D's eigenvectors), for cells that project on
/// more than two directions: per cell, how many pairs' 95 % intervals
/// exclude 0 against how many would by chance alone (5 % of the pairs),
/// then, for the first [`PAIR_TABLE_CELLS`] such cells, the pairs with the
/// largest |mean|/interval, each with its seeded bootstrap interval and its
/// power statements. Empty when no cell has more than one pair. Of the
/// trajectories recorded once per epoch (`epoch_psd_window`) too, per epoch.
struct PairsSection {
    pairs_of: fn(&CellResult) -> Vec<PairDrift>,
    unit: &'static str,
    /// Cells with more than one pair so far.
    cells: usize,
    text: String,
}

impl PairsSection {
    fn new(pairs_of: fn(&CellResult) -> Vec<PairDrift>, unit: &'static str) -> Self {
        PairsSection { pairs_of, unit, cells: 0, text: String::new() }
    }

    fn add(&mut self, c: &CellResult) {
        let pairs = (self.pairs_of)(c);
        if pairs.len() <= 1 {
            return;
        }
        let excl = pairs.iter().filter(|p| p.excludes_zero()).count();
        self.text.push_str(&format!(
            "cell {}: {excl} of {} pairs exclude 0 (chance alone: {:.1}); largest detectable {}; largest |rate| {}\n",
            c.index,
            pairs.len(),
            0.05 * pairs.len() as f64,
            num(pairs.iter().map(|p| p.area_rate.detectable()).fold(f64::NAN, f64::max)),
            at_most(pairs.iter().map(|p| p.area_rate.rms_upper95()).fold(f64::NAN, f64::max)),
        ));
        self.cells += 1;
        if self.cells > PAIR_TABLE_CELLS {
            return;
        }
        let mut sorted: Vec<&PairDrift> = pairs.iter().collect();
        let strength = |p: &PairDrift| (p.area_rate.mean / p.area_rate.ci95).abs();
        sorted.sort_by(|a, b| strength(b).total_cmp(&strength(a)));
        let rows: Vec<Vec<String>> = sorted
            .into_iter()
            .take(PAIR_TABLE_ROWS)
            .map(|p| {
                vec![
                    format!("({}, {})", p.i, p.j),
                    pm(p.area_rate),
                    interval(p.area_rate_bootstrap95),
                    num(p.area_rate.detectable()),
                    at_most(p.area_rate.rms_upper95()),
                    pm(p.cycling_frequency),
                    at_most(p.cycling_frequency.rms_upper95()),
                    if p.excludes_zero() { "yes".into() } else { "no".into() },
                ]
            })
            .collect();
        let header = ["pair", "area rate", "bootstrap 95 %", "detectable", "|rate|", "cycling ω", "|ω|", "excludes 0"];
        self.text.push_str(&aligned(&header, &rows));
    }

    fn render(&self) -> String {
        if self.cells == 0 {
            return String::new();
        }
        let mut out = format!(
            "area rate of every pair of directions, per {} (± 95 % across seeds; bootstrap: seeded percentile \
             interval resampling seeds; detectable: the smallest mean rate the seeds would have told from 0; |rate|: a \
             95 % bound on each seed's rate whatever its sign, for directions each seed chooses itself)\n",
            self.unit
        );
        out.push_str(&self.text);
        if self.cells > PAIR_TABLE_CELLS {
            out.push_str(&format!(
                "(pairs listed for the first {PAIR_TABLE_CELLS} cells; results.json holds every run's)\n"
            ));
        }
        out
    }
}

/// The per-epoch section: the cells recorded once per epoch
/// (`epoch_psd_window`): epochs recorded (mean over seeds); the weight norm
/// at the first and last recorded epoch (means over seeds); its trend
/// (relative, per 1,000 epochs, ± 95 % across seeds: a scale-invariant
/// net's growing norm reads as drift); the surrogate test for spectral
/// peaks of the per-epoch trajectory — how many seeds find a peak at
/// p ≤ 0.05 against how many would by chance alone, and the most
/// significant one. Empty when no cell recorded per epoch.
const EPOCHS_INTRO: &str = "per-epoch recording (norm trend: least-squares change of ‖x‖ per 10³ epochs, relative, \
                            ± 95 % across seeds; peaks: phase-randomised surrogate test per seed, the strongest line \
                            over its running-median background among every direction and frequency)\n";

const EPOCHS_HEADER: &[&str] = &[
    "cell",
    "epochs",
    "‖x‖ first→last (mean)",
    "norm trend /10³ ep",
    "peaks p ≤ 0.05",
    "chance",
    "strongest",
    "at (cycles/epoch)",
    "p",
];

fn epochs_row(c: &CellResult, e: &CellEpochs) -> Vec<String> {
    let norms = |f: fn(&gradsweep_shared::epochs::EpochStats) -> f64| {
        Summary::of(c.runs.iter().filter_map(|r| r.epochs.as_ref().map(f))).mean
    };
    let strongest = e.strongest_peak.as_ref();
    vec![
        c.index.to_string(),
        count(e.epochs.mean),
        format!("{}→{}", num(norms(|s| s.weight_norm_first)), num(norms(|s| s.weight_norm_last))),
        if e.weight_norm_trend.count > 0 {
            format!(
                "{}%{}",
                num(100.0 * e.weight_norm_trend.mean),
                if e.weight_norm_trend.ci95.is_finite() {
                    format!("±{}", num(100.0 * e.weight_norm_trend.ci95))
                } else {
                    String::new()
                }
            )
        } else {
            "-".into()
        },
        format!("{} of {}", e.peaks_significant, e.peaks_tested),
        format!("{:.1}", 0.05 * e.peaks_tested as f64),
        strongest.map_or("-".into(), |(seed, t)| format!("×{} (seed {seed}, dir {})", num(t.statistic), t.coordinate)),
        strongest.map_or("-".into(), |(_, t)| num(t.frequency)),
        strongest.map_or("-".into(), |(_, t)| num(t.p_value)),
    ]
}

/// The sweep-level η/b table, then the collapse score of each statistic.
pub fn eta_table(summary: &SweepSummary) -> String {
    let mut out = String::from("η/b table (cells sorted by η/b; means over seeds)\n");
    let header = ["η/b", "lr", "b", "rank/d", "tr D", "β⁻¹·trD/d", "area rate", "cycling ω", "‖∇f‖/√d", "test acc"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in &summary.by_eta_over_b {
        rows.push(vec![
            num(r.eta_over_b),
            num(r.lr),
            r.batch_size.to_string(),
            bracket(
                CellBracket::of(
                    &[Bracket { value: f64::NAN, lo: r.rank_fraction_lo, hi: r.rank_fraction_hi }],
                    1.0,
                    BracketKind::Value,
                )
                .as_ref(),
                num,
            ),
            num(r.trace),
            num(r.temperature_trace_per_d),
            num(r.area_rate),
            num(r.cycling_frequency),
            num(r.grad_norm),
            num(r.test_accuracy),
        ]);
    }
    out.push_str(&align(&rows));
    if summary.collapse.is_empty() {
        return out;
    }
    out.push_str(
        "\ncollapse onto η/b: R²(ln η/b) / R²(ln η, ln b) within groups of the other axes \
         (1: only η/b matters), 95 % bootstrap interval over seeds; withheld when the F-test of η, b \
         against noise gives p ≥ 0.05\n",
    );
    let header = ["statistic", "cells", "score", "95 % CI", "R² η,b", "p (F)", "R² η/b", "−β_b/β_η", "note"];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for c in &summary.collapse {
        rows.push(vec![
            c.statistic.clone(),
            c.cells.to_string(),
            num(c.score),
            if c.ci_lo.is_finite() { format!("[{:.3}, {:.3}]", c.ci_lo, c.ci_hi) } else { "-".into() },
            num(c.r2_separate),
            if c.p_value.is_finite() { format!("{:.2e}", c.p_value) } else { "-".into() },
            num(c.r2_ratio),
            num(c.slope_ratio),
            c.note.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&align(&rows));
    out
}

/// One CSV row per cell, with the confidence intervals and the certified
/// bracket ends (`_lo`, `_hi`; `rank_resolved` says whether the rank's is
/// within 5 % of its lower end, `rank_needs_ell` what would resolve it);
/// each of the user's rank thresholds `th` adds three columns (lo, hi,
/// resolved), and each axis of the grid other than `lr` and `batch_size`
/// (already columns) one column named by its key, last. Every field is one
/// value: no packed strings.
pub fn csv(cells: &[CellResult], th: &RankThresholds) -> String {
    let axes = csv_axes(cells);
    let mut out = csv_header(&axes, th);
    for c in cells {
        out.push_str(&csv_row(c, &axes, th));
    }
    out
}

/// The axes results.csv has a column for: every key of the cells' params
/// but lr and batch size (which have their own), sorted.
pub fn csv_axes(cells: &[CellResult]) -> Vec<String> {
    cells
        .iter()
        .flat_map(|c| c.params.keys())
        .filter(|k| !matches!(k.as_str(), "lr" | "batch_size"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect()
}

/// results.csv's header row for `axes` and the user's thresholds `th`.
pub fn csv_header(axes: &[String], th: &RankThresholds) -> String {
    let user = threshold_columns(th);
    let mut out = String::from(
        "cell,lr,batch_size,eta_over_b,seeds_done,seeds_total,seeds_diverged,train_loss,train_loss_ci95,test_accuracy,test_accuracy_ci95,d,\
         rank_lo,rank_hi,rank_ci95,rank_resolved,rank_needs_ell,rank_fraction_lo,rank_fraction_hi,trace,trace_ci95,\
         lambda_max_lo,lambda_max_hi,lambda_max_ci95,temperature,\
         temperature_trace_per_d,temperature_trace_per_d_ci95,area_rate,area_rate_ci95,eigenspace_overlap,\
         eigenspace_overlap_ci95,cycling_frequency,cycling_frequency_ci95,msd_exponent,msd_exponent_ci95,\
         autocorrelation_max_lag,autocorrelation_max_lag_ci95,spectral_exponent,spectral_exponent_ci95,\
         peak_to_background,peak_to_background_ci95,grad_norm_per_sqrt_d,grad_norm_per_sqrt_d_ci95,\
         area_rate_detectable,cycling_frequency_detectable,weight_norm_trend_per_kepoch,\
         weight_norm_trend_per_kepoch_ci95,epoch_peaks_significant,epoch_peaks_tested,",
    );
    for col in &user {
        out.push_str(&format!("{0}_lo,{0}_hi,{0}_resolved,", col.csv));
    }
    let names: Vec<String> = axes.iter().map(|k| crate::runs::csv_field(k)).collect();
    out.push_str(&names.join(","));
    if out.ends_with(',') {
        out.pop();
    }
    out.push('\n');
    out
}

/// One cell's row of results.csv, for `axes` and the thresholds `th`.
pub fn csv_row(c: &CellResult, axes: &[String], th: &RankThresholds) -> String {
    let user = threshold_columns(th);
    let f = |x: f64| if x.is_finite() { format!("{x}") } else { String::new() };
    {
        let r = row(c);
        let params: Vec<String> = axes
            .iter()
            .map(|k| match c.params.get(k) {
                None => String::new(),
                Some(serde_json::Value::String(s)) => crate::runs::csv_field(s),
                Some(v) => crate::runs::csv_field(&v.to_string()),
            })
            .collect();
        let mut line = format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}{}",
            r.cell,
            f(r.lr),
            r.batch,
            f(r.eta_over_b),
            c.seeds_done,
            c.seeds_total,
            c.seeds_diverged,
            f(r.train_loss.mean),
            f(r.train_loss.ci95),
            f(r.test_accuracy.mean),
            f(r.test_accuracy.ci95),
            r.d,
            f(r.rank.as_ref().map_or(f64::NAN, |b| b.lo)),
            f(r.rank.as_ref().map_or(f64::NAN, |b| b.hi)),
            f(r.rank.as_ref().map_or(f64::NAN, |b| b.ci95)),
            r.rank.as_ref().map_or(String::new(), |b| b.resolved.to_string()),
            r.rank.as_ref().and_then(|b| b.needs_ell).map_or(String::new(), |l| l.to_string()),
            f(r.rank.as_ref().map_or(f64::NAN, |b| b.lo / r.d.max(1) as f64)),
            f(r.rank.as_ref().map_or(f64::NAN, |b| b.hi / r.d.max(1) as f64)),
            f(r.trace.mean),
            f(r.trace.ci95),
            f(r.lambda_max.as_ref().map_or(f64::NAN, |b| b.lo)),
            f(r.lambda_max.as_ref().map_or(f64::NAN, |b| b.hi)),
            f(r.lambda_max.as_ref().map_or(f64::NAN, |b| b.ci95)),
            f(r.temperature),
            f(r.temp_trace_per_d.mean),
            f(r.temp_trace_per_d.ci95),
            f(r.area_rate.mean),
            f(r.area_rate.ci95),
            f(r.overlap.mean),
            f(r.overlap.ci95),
            [
                c.cycling_frequency,
                c.msd_exponent,
                c.autocorrelation,
                c.spectral_exponent,
                c.peak_to_background,
                c.grad_norm
            ]
            .iter()
            .map(|s| format!("{},{}", f(s.mean), f(s.ci95)))
            .chain([format!("{},{}", f(c.area_rate_detectable), f(c.cycling_frequency_detectable))])
            .chain([match &c.epochs {
                Some(e) => format!(
                    "{},{},{},{}",
                    f(e.weight_norm_trend.mean),
                    f(e.weight_norm_trend.ci95),
                    e.peaks_significant,
                    e.peaks_tested
                ),
                None => ",,,".into(),
            }])
            .collect::<Vec<_>>()
            .join(","),
            user.iter()
                .map(|col| match threshold_cell(c, col) {
                    Some(b) => format!("{},{},{},", f(b.lo), f(b.hi), b.resolved),
                    None => ",,,".into(),
                })
                .collect::<String>(),
            params.join(",")
        );
        if line.ends_with(',') {
            line.pop();
        }
        line.push('\n');
        line
    }
}
