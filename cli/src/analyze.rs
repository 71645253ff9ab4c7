//! `gradsweep analyze`: spectra of per-sample gradients and drift of
//! trajectories stored as NumPy `.npy` files by any framework.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use gradsweep_shared::analyze::{
    GradsOptions, GradsReport, TrajectoryOptions, TrajectoryReport, analyze_grads, analyze_trajectory,
};
use gradsweep_shared::npy;
use gradsweep_shared::stats::Bracket;

use crate::args::OutputFormat as Format;

/// What to analyse.
#[derive(Subcommand, Debug)]
pub enum AnalyzeCommand {
    /// Spectrum of D for an n×d matrix of per-sample gradients (f32 or f64).
    Grads(GradsArgs),
    /// Drift statistics of a T×d (weights) or T×k (projections) trajectory.
    Trajectory(TrajectoryArgs),
}

/// Options of `analyze grads`.
#[derive(Args, Debug)]
pub struct GradsArgs {
    /// The `.npy` file (rows are samples).
    pub file: PathBuf,
    /// Frequent Directions rows ℓ when d is too large for the exact path.
    #[arg(long, default_value_t = 256)]
    pub sketch_rank: usize,
    /// Compute D densely (exactly) when d is at most this.
    #[arg(long, default_value_t = 4096)]
    pub exact_max_dim: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Extra rank thresholds.
    #[command(flatten)]
    pub thresholds: crate::args::ThresholdArgs,
}

/// Options of `analyze trajectory`.
#[derive(Args, Debug)]
pub struct TrajectoryArgs {
    /// The `.npy` file (rows are time points).
    pub file: PathBuf,
    /// Random directions to project on when there are more columns.
    #[arg(long, default_value_t = 8)]
    pub projections: usize,
    /// Seed of the projection directions.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Largest lag of the MSD curve.
    #[arg(long, default_value_t = 64)]
    pub max_lag: usize,
    /// Welch window of the power spectrum (a power of two in 8..=4096; 0: none).
    #[arg(long, default_value_t = 64)]
    pub psd_window: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn fmt(x: f64) -> String {
    if x.is_finite() { format!("{x:.6e}") } else { "-".into() }
}

/// A header row and one row of values, as CSV: every field one value
/// (a bracket is two columns, `_lo` and `_hi`; a missing number is empty).
#[derive(Default)]
struct CsvRow {
    names: Vec<String>,
    values: Vec<String>,
}

impl CsvRow {
    fn text(&mut self, name: &str, v: &str) {
        self.names.push(name.into());
        self.values.push(crate::runs::csv_field(v));
    }

    fn num(&mut self, name: &str, x: f64) {
        self.text(name, &if x.is_finite() { format!("{x}") } else { String::new() });
    }

    fn bracket(&mut self, name: &str, b: &Bracket) {
        self.num(&format!("{name}_lo"), b.lo);
        self.num(&format!("{name}_hi"), b.hi);
    }

    fn finish(self) -> String {
        format!("{}\n{}\n", self.names.join(","), self.values.join(","))
    }
}

/// `analyze grads --format csv`: one row of the spectrum's statistics.
fn grads_csv(file: &str, r: &GradsReport) -> String {
    let s = &r.spectrum;
    let mut row = CsvRow::default();
    row.text("file", file);
    row.text("method", &r.method);
    row.num("n", s.n as f64);
    row.num("d", s.d as f64);
    row.num("eig_error", s.eig_error);
    row.num("trace", s.trace);
    row.bracket("lambda_max", &s.lambda_max);
    row.bracket("rank", &s.rank);
    row.text("rank_resolved", &s.rank_resolved.to_string());
    row.text("rank_needs_ell", &s.rank_needs_ell.map_or(String::new(), |l| l.to_string()));
    row.bracket("rank_fraction", &s.rank_fraction);
    row.bracket("stable_rank", &s.stable_rank);
    row.num("effective_rank", s.effective_rank);
    row.bracket("energy_rank_90", &s.energy_rank_90);
    row.bracket("energy_rank_99", &s.energy_rank_99);
    row.bracket("isotropy", &s.isotropy);
    row.num("grad_norm_sq", s.grad_norm_sq);
    row.num("noise_scale", s.noise_scale);
    for (rel, b) in &s.ranks_relative {
        row.bracket(&format!("rank_rel_{rel:e}"), b);
    }
    for (t, b) in &s.ranks_absolute {
        row.bracket(&format!("rank_abs_{t:e}"), b);
    }
    row.finish()
}

/// `analyze trajectory --format csv`: one row of the scalar drift
/// statistics (the curves are in the JSON).
fn trajectory_csv(file: &str, r: &TrajectoryReport) -> String {
    let d = &r.drift;
    let mut row = CsvRow::default();
    row.text("file", file);
    row.num("points", r.points as f64);
    row.num("columns", r.columns as f64);
    row.num("coordinates", r.coordinates as f64);
    row.text("projected", &r.projected.to_string());
    row.num("area_rate", d.area_rate);
    row.num("area_rate_batch_mean", r.area_rate.mean);
    row.num("area_rate_batch_ci95", r.area_rate.ci95);
    row.num("max_area_rate", d.max_area_rate);
    row.num("max_area_pair_i", d.max_area_pair.0 as f64);
    row.num("max_area_pair_j", d.max_area_pair.1 as f64);
    row.num("cycling_frequency", d.cycling_frequency);
    row.num("max_pair_cycling_frequency", d.max_pair_cycling_frequency);
    row.num("msd_exponent", d.msd_exponent);
    row.num("spectral_exponent", d.spectral_exponent);
    row.num("peak_frequency", d.peak_frequency);
    row.num("peak_to_background", d.peak_to_background);
    let kinds: Vec<String> = r
        .warnings
        .iter()
        .map(|w| serde_json::to_value(w.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
        .collect();
    row.text("warnings", &kinds.join(" "));
    row.finish()
}

/// Runs the subcommand.
pub fn run(cmd: AnalyzeCommand) -> anyhow::Result<()> {
    match cmd {
        AnalyzeCommand::Grads(a) => {
            let m = npy::read(&a.file)?;
            let th = a.thresholds.thresholds()?;
            let opts = GradsOptions { sketch_rank: a.sketch_rank, exact_max_dim: a.exact_max_dim };
            let r = analyze_grads(&m, opts, &th).with_context(|| format!("{}", a.file.display()))?;
            match a.format {
                Format::Json => crate::outln!("{}", serde_json::to_string_pretty(&r).context("encoding the report")?)?,
                Format::Csv => crate::out!("{}", grads_csv(&a.file.display().to_string(), &r))?,
                Format::Table => {
                    let s = &r.spectrum;
                    crate::outln!(
                        "{}: {} samples × d = {} ({}, eigenvalue error ≤ {})",
                        a.file.display(),
                        s.n,
                        s.d,
                        r.method,
                        fmt(s.eig_error)
                    )?;
                    crate::outln!("tr D                 {}", fmt(s.trace))?;
                    // Certified brackets as brackets; never a sketch's point estimate.
                    let dd = s.d as f64;
                    let count = |b: &gradsweep_shared::stats::Bracket| b.display(dd, |x| format!("{x}"));
                    let real = |b: &gradsweep_shared::stats::Bracket| b.display(f64::INFINITY, fmt);
                    crate::outln!("λ_max                {}", real(&s.lambda_max))?;
                    // The same reading as the results tables, reason included.
                    let rank = gradsweep_shared::results::CellBracket::rank_of_spectra(&[s], &[None])
                        .map_or_else(|| count(&s.rank), |b| b.display(|x| format!("{x}")));
                    crate::outln!(
                        "rank (λ_max·d·ε_f32) {rank}  rank/d {}",
                        s.rank_fraction.display(1.0, |x| format!("{x:.5}"))
                    )?;
                    for (rel, b) in &s.ranks_relative {
                        crate::outln!("rank (λ_max·{rel:e})   {}", count(b))?;
                    }
                    for (t, b) in &s.ranks_absolute {
                        crate::outln!("rank (> {t:e})       {}", count(b))?;
                    }
                    crate::outln!("stable rank          {}", real(&s.stable_rank))?;
                    crate::outln!("effective rank       {}", fmt(s.effective_rank))?;
                    crate::outln!("energy rank r90/r99  {} / {}", count(&s.energy_rank_90), count(&s.energy_rank_99))?;
                    crate::outln!("isotropy λ_max·d/tr  {}", real(&s.isotropy))?;
                    crate::outln!(
                        "‖∇f‖² (unbiased)     {}   noise scale B_simple {}",
                        fmt(s.grad_norm_sq),
                        fmt(s.noise_scale)
                    )?;
                    let top: Vec<String> = s.top_eigenvalues.iter().take(8).map(|&l| fmt(l)).collect();
                    crate::outln!("top eigenvalues      {}", top.join(" "))?;
                }
            }
        }
        AnalyzeCommand::Trajectory(a) => {
            let m = npy::read(&a.file)?;
            anyhow::ensure!(
                m.rows >= 3 && m.cols >= 2,
                "{}: need at least 3 rows and 2 columns, got {}×{}",
                a.file.display(),
                m.rows,
                m.cols
            );
            anyhow::ensure!(
                (2..=gradsweep_shared::spec::MAX_PROJECTIONS as usize).contains(&a.projections),
                "--projections must be in 2..={}, got {}",
                gradsweep_shared::spec::MAX_PROJECTIONS,
                a.projections
            );
            anyhow::ensure!(
                gradsweep_shared::trajectory::valid_psd_window(a.psd_window),
                "--psd-window must be 0 or a power of two in 8..=4096, got {}",
                a.psd_window
            );
            let opts = TrajectoryOptions {
                projections: a.projections,
                seed: a.seed,
                max_lag: a.max_lag,
                batches: 10,
                psd_window: a.psd_window,
            };
            let r = analyze_trajectory(&m, opts);
            match a.format {
                Format::Json => crate::outln!("{}", serde_json::to_string_pretty(&r).context("encoding the report")?)?,
                Format::Csv => crate::out!("{}", trajectory_csv(&a.file.display().to_string(), &r))?,
                Format::Table => {
                    crate::outln!(
                        "{}: {} points × {} columns ({} coordinates{})",
                        a.file.display(),
                        r.points,
                        r.columns,
                        r.coordinates,
                        if r.projected { ", random projections" } else { "" }
                    )?;
                    crate::outln!(
                        "area rate (0,1) per step {}  (batch means {} ± {})",
                        fmt(r.drift.area_rate),
                        fmt(r.area_rate.mean),
                        fmt(r.area_rate.ci95)
                    )?;
                    crate::outln!(
                        "largest |area rate|      {} on pair {:?}",
                        fmt(r.drift.max_area_rate),
                        r.drift.max_area_pair
                    )?;
                    let d = &r.drift;
                    crate::outln!(
                        "cycling frequency (0,1)  {} rad/step  (pair {:?}: {})",
                        fmt(d.cycling_frequency),
                        d.max_area_pair,
                        fmt(d.max_pair_cycling_frequency)
                    )?;
                    crate::outln!("MSD exponent             {}", fmt(d.msd_exponent))?;
                    let msd: Vec<String> = d.msd.iter().map(|(t, m)| format!("{t}:{}", fmt(*m))).collect();
                    crate::outln!("MSD(τ)                   {}", msd.join(" "))?;
                    let ac: Vec<String> = d.autocorrelation.iter().map(|(t, c)| format!("{t}:{c:.4}")).collect();
                    crate::outln!("autocorrelation(τ)       {}", ac.join(" "))?;
                    crate::outln!(
                        "spectrum                 background exponent α {}, peak at {} cycles/step, {}× background",
                        fmt(d.spectral_exponent),
                        fmt(d.peak_frequency),
                        fmt(d.peak_to_background)
                    )?;
                    for w in &r.warnings {
                        crate::outln!("warning: {}", w.message)?;
                    }
                }
            }
        }
    }
    Ok(())
}
