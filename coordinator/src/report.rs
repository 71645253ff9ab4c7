//! Results as a terminal table, CSV, or JSON.

use gradsweep_shared::results::{CellResult, SweepSummary};
use gradsweep_shared::stats::Summary;

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
    rank: Summary,
    rank_lo: f64,
    rank_hi: f64,
    rank_fraction: Summary,
    trace: Summary,
    lambda_max: Summary,
    area_rate: Summary,
    /// β⁻¹ = η/(2b).
    temperature: f64,
    /// β⁻¹·tr D/d: the mean diffusion per coordinate at that temperature.
    temp_trace_per_d: Summary,
    /// Top-k eigenspace overlap between the last two probes.
    overlap: Summary,
}

fn row(c: &CellResult) -> Row {
    let finals = c.runs.iter().filter_map(|r| r.probes.last().map(|p| &p.spectrum));
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in finals {
        lo = lo.min(s.rank.lo);
        hi = hi.max(s.rank.hi);
    }
    if c.runs.is_empty() {
        (lo, hi) = (f64::NAN, f64::NAN);
    }
    Row {
        cell: c.index,
        lr: c.lr,
        batch: c.batch_size,
        eta_over_b: c.eta_over_b,
        seeds: format!("{}/{}", c.seeds_done, c.seeds_total),
        train_loss: c.train_loss,
        test_accuracy: c.test_accuracy,
        d: c.d,
        rank: c.rank,
        rank_lo: lo,
        rank_hi: hi,
        rank_fraction: c.rank_fraction,
        trace: c.trace,
        lambda_max: c.lambda_max,
        area_rate: c.area_rate,
        temperature: c.temperature,
        temp_trace_per_d: if c.d > 0 { c.trace.scaled(c.temperature / c.d as f64) } else { Summary::empty() },
        overlap: c.eigenspace_overlap,
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) { format!("{x:.3e}") } else { format!("{x:.4}") }
}

fn pm(s: Summary) -> String {
    if s.count == 0 {
        "-".into()
    } else if s.ci95.is_finite() {
        format!("{}±{}", num(s.mean), num(s.ci95))
    } else {
        num(s.mean)
    }
}

/// Exact spectra at the last probe of each run (probe option `exact`).
fn exact(c: &CellResult) -> impl Iterator<Item = &gradsweep_shared::stats::SpectrumStats> {
    c.runs.iter().filter_map(|r| r.probes.last().and_then(|p| p.meta.exact.as_ref()))
}

/// The per-cell table, aligned for a terminal. ± is the 95 % interval across
/// seeds; the rank bracket is certified by the sketches' Δ.
pub fn table(cells: &[CellResult]) -> String {
    let mut header = vec![
        "cell",
        "lr",
        "b",
        "η/b",
        "seeds",
        "train loss",
        "test acc",
        "d",
        "rank",
        "rank [lo,hi]",
        "rank/d",
        "tr D",
        "λ_max",
        "β⁻¹",
        "β⁻¹·trD/d",
        "area rate",
        "eig overlap",
    ];
    // Exact spectra (probe option `exact`) get their own columns.
    let with_exact = cells.iter().any(|c| exact(c).next().is_some());
    if with_exact {
        header.extend(["exact rank", "exact λ_max"]);
    }
    // Axes other than lr and batch size, so that cells stay distinguishable.
    let other = |c: &CellResult| {
        let mut p = c.params.clone();
        p.remove("lr");
        p.remove("batch_size");
        gradsweep_shared::grid::fmt_params(&p)
    };
    let with_axes = cells.iter().any(|c| !other(c).is_empty());
    if with_axes {
        header.push("axes");
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for c in cells {
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
            pm(r.rank),
            if r.rank_lo.is_finite() { format!("[{},{}]", r.rank_lo, r.rank_hi) } else { "-".into() },
            pm(r.rank_fraction),
            pm(r.trace),
            pm(r.lambda_max),
            num(r.temperature),
            pm(r.temp_trace_per_d),
            pm(r.area_rate),
            pm(r.overlap),
        ];
        if with_exact {
            line.push(pm(Summary::of(exact(c).map(|s| s.rank.value))));
            line.push(pm(Summary::of(exact(c).map(|s| s.lambda_max.value))));
        }
        if with_axes {
            line.push(other(c));
        }
        rows.push(line);
    }
    let widths: Vec<usize> =
        (0..header.len()).map(|j| rows.iter().map(|r| r[j].chars().count()).max().unwrap_or(0)).collect();
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

/// The sweep-level η/b table.
pub fn eta_table(summary: &SweepSummary) -> String {
    let mut out = String::from("η/b table (cells sorted by η/b; means over seeds)\n");
    out.push_str(&format!(
        "{:>12}  {:>10}  {:>5}  {:>10}  {:>12}  {:>12}  {:>9}\n",
        "η/b", "lr", "b", "rank/d", "tr D", "area rate", "test acc"
    ));
    for r in &summary.by_eta_over_b {
        out.push_str(&format!(
            "{:>12}  {:>10}  {:>5}  {:>10}  {:>12}  {:>12}  {:>9}\n",
            num(r.eta_over_b),
            num(r.lr),
            r.batch_size,
            num(r.rank_fraction),
            num(r.trace),
            num(r.area_rate),
            num(r.test_accuracy)
        ));
    }
    out
}

/// One CSV row per cell, with the confidence intervals and bracket ends.
pub fn csv(cells: &[CellResult]) -> String {
    let mut out = String::from(
        "cell,lr,batch_size,eta_over_b,seeds_done,seeds_total,train_loss,train_loss_ci95,test_accuracy,test_accuracy_ci95,d,\
         rank,rank_ci95,rank_lo,rank_hi,rank_fraction,trace,trace_ci95,lambda_max,lambda_max_ci95,temperature,\
         temperature_trace_per_d,temperature_trace_per_d_ci95,area_rate,area_rate_ci95,eigenspace_overlap,\
         eigenspace_overlap_ci95,params\n",
    );
    let f = |x: f64| if x.is_finite() { format!("{x}") } else { String::new() };
    for c in cells {
        let r = row(c);
        let params = gradsweep_shared::grid::fmt_params(&c.params).replace('"', "'");
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\"\n",
            r.cell,
            f(r.lr),
            r.batch,
            f(r.eta_over_b),
            c.seeds_done,
            c.seeds_total,
            f(r.train_loss.mean),
            f(r.train_loss.ci95),
            f(r.test_accuracy.mean),
            f(r.test_accuracy.ci95),
            r.d,
            f(r.rank.mean),
            f(r.rank.ci95),
            f(r.rank_lo),
            f(r.rank_hi),
            f(r.rank_fraction.mean),
            f(r.trace.mean),
            f(r.trace.ci95),
            f(r.lambda_max.mean),
            f(r.lambda_max.ci95),
            f(r.temperature),
            f(r.temp_trace_per_d.mean),
            f(r.temp_trace_per_d.ci95),
            f(r.area_rate.mean),
            f(r.area_rate.ci95),
            f(r.overlap.mean),
            f(r.overlap.ci95),
            params
        ));
    }
    out
}

/// Everything as one JSON document: `{ "summary": …, "cells": […] }`.
pub fn json(cells: &[CellResult], summary: &SweepSummary) -> String {
    serde_json::to_string_pretty(&serde_json::json!({ "summary": summary, "cells": cells })).unwrap_or_default()
}
