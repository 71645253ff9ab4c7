//! The report as one self-contained HTML page: header, the cells' numbers,
//! the figures inlined as SVG, the runs; no script, no fetch, no external
//! asset — it opens offline in any browser.
//!
//! Every number a reader can check against results.json carries its raw
//! value in `data-*` attributes (`data-cell`, `data-key`, `data-lo`,
//! `data-hi`, `data-value`), so a test compares the page with the document.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use gradsweep_proto::v1::RunState;
use gradsweep_shared::results::CellResult;

use crate::figures::Figure;
use crate::format::{bracket, count, duration, html, num, pm, utc};
use crate::input::ReportInput;

/// Most cells the cells table lists; the rest are in results.csv.
pub const MAX_TABLE_CELLS: usize = 2000;

/// Most completed runs the run table lists (every run that did not
/// complete is always listed); the rest are in runs.csv.
pub const MAX_COMPLETED_ROWS: usize = 500;

/// The pages' style sheet (inlined: the pages fetch nothing).
pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1400px;padding:0 16px;color:#222}\
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}\
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dl.meta dt{color:#555}dl.meta dd{margin:0}\
table{border-collapse:collapse;font-size:.85em;margin:8px 0}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}\
th{background:#f4f4f4}td.text{text-align:left}.figs{display:flex;flex-wrap:wrap;gap:12px}\
figure{margin:0;width:640px}progress{width:160px}figure svg{width:100%;height:auto}figcaption{font-size:.8em;color:#444}\
.note{color:#8a4b00}nav a{margin-right:12px}";

/// A `<td>` with its text and raw value.
fn td(key: &str, text: &str, value: f64) -> String {
    format!("<td data-key=\"{key}\" data-value=\"{value:?}\">{}</td>", html(text))
}

/// A `<td>` of a certified bracket: its text and both ends.
fn td_bracket(key: &str, b: Option<&gradsweep_shared::results::CellBracket>, fmt: fn(f64) -> String) -> String {
    match b {
        Some(x) => format!(
            "<td data-key=\"{key}\" data-lo=\"{:?}\" data-hi=\"{:?}\" data-resolved=\"{}\">{}</td>",
            x.lo,
            x.hi,
            x.resolved,
            html(&bracket(Some(x), fmt))
        ),
        None => format!("<td data-key=\"{key}\">-</td>"),
    }
}

fn header(out: &mut String, input: &ReportInput) {
    let p = &input.results.provenance;
    let workers: BTreeSet<&str> = input.runs.iter().map(|r| r.worker.as_str()).filter(|w| !w.is_empty()).collect();
    let hosts: BTreeSet<&str> = input.runs.iter().filter_map(|r| r.host.as_deref()).collect();
    let compute: f64 = input.runs.iter().map(|r| r.compute_s).sum();
    let wall = p.ended_at_ms.unwrap_or(input.made_at_ms) - p.submitted_at_ms;
    let state =
        if p.ended_at_ms.is_some() { "ended".to_string() } else { format!("running ({} runs open)", p.runs.open) };
    let mut rows: Vec<(&str, String, &str)> = vec![
        ("sweep", p.sweep_id.clone(), "sweep_id"),
        ("name", p.name.clone(), "name"),
        ("grid file", p.grid_file.clone(), "grid_file"),
        ("gradsweep", p.gradsweep_version.clone(), "version"),
        ("state", state, "state"),
        ("submitted", utc(p.submitted_at_ms), "submitted"),
        ("ended", p.ended_at_ms.map_or("-".into(), utc), "ended"),
        ("wall time", duration(wall as f64 / 1000.0), "wall"),
        (
            "runs",
            format!(
                "{} in all: {} completed, {} diverged, {} failed, {} cancelled, {} open",
                p.runs.total, p.runs.completed, p.runs.diverged, p.runs.failed, p.runs.cancelled, p.runs.open
            ),
            "runs",
        ),
        ("cells", input.results.summary.cells.to_string(), "cells"),
        (
            "workers used",
            format!("{} ({})", workers.len(), workers.iter().copied().collect::<Vec<_>>().join(", ")),
            "workers",
        ),
        ("compute time", format!("{} (sum of the epochs' times on their workers)", duration(compute)), "compute"),
        ("made", utc(input.made_at_ms), "made"),
    ];
    if !hosts.is_empty() {
        let text = format!("{} ({})", hosts.len(), hosts.iter().copied().collect::<Vec<_>>().join(", "));
        rows.insert(11, ("machines", text, "machines"));
    }
    out.push_str("<dl class=\"meta\" id=\"provenance\">");
    for (k, v, key) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd data-key=\"{key}\">{}</dd>", html(&v));
    }
    out.push_str("</dl>");
}

/// The cells the cells table lists, of a sweep whose cells are `all`
/// (sorted indices): every one up to [`MAX_TABLE_CELLS`]; past it the
/// `detailed` ones and others spread evenly over the rest, up to the cap.
pub fn table_cells(all: &[u32], detailed: &BTreeSet<u32>) -> BTreeSet<u32> {
    if all.len() <= MAX_TABLE_CELLS {
        return all.iter().copied().collect();
    }
    let mut set = detailed.clone();
    let room = MAX_TABLE_CELLS.saturating_sub(set.len()).max(2);
    set.extend((0..room).map(|k| all[k * (all.len() - 1) / (room - 1).max(1)]));
    set
}

/// The cells table: the rows of `listed` among `cells`, of a sweep of
/// `all` cells.
fn cells_table(out: &mut String, cells: &[CellResult], all: usize, listed: &BTreeSet<u32>, detailed: &BTreeSet<u32>) {
    out.push_str(
        "<h2 id=\"cells\">Cells</h2><p>Means over seeds, ± their 95 % intervals. Ranks, rank/d and λmax are \
                  certified brackets of the mean over seeds, never the sketches' point estimates; an unresolved rank \
                  says what would resolve it.</p><table id=\"cells-table\"><thead><tr><th>cell</th><th>η</th><th>b</th>\
                  <th>η/b</th><th>seeds</th><th>test acc</th><th>train loss</th><th>d</th><th>rank</th><th>rank/d</th>\
                  <th>λmax</th><th>tr D</th><th>area rate</th><th>‖∇f‖/√d</th></tr></thead><tbody>",
    );
    // A sweep of many cells lists its drawn cells and others spread over
    // the rest, up to the cap; every cell is in results.csv.
    for c in cells.iter().filter(|c| listed.contains(&c.index)) {
        let link = if detailed.contains(&c.index) {
            format!("<a href=\"#cell-{0}\">{0}</a>", c.index)
        } else {
            c.index.to_string()
        };
        let seeds = match c.seeds_diverged {
            0 => format!("{}/{}", c.seeds_done, c.seeds_total),
            k => format!("{}/{} ({k} diverged)", c.seeds_done, c.seeds_total),
        };
        let lambda = c.merged_final.as_ref().and_then(|_| {
            let b: Vec<_> = c.runs.iter().filter_map(|r| r.probes.last().map(|p| p.spectrum.lambda_max)).collect();
            gradsweep_shared::results::CellBracket::of(&b, f64::INFINITY, gradsweep_shared::results::BracketKind::Value)
        });
        let _ = write!(
            out,
            "<tr data-cell=\"{}\"><td>{link}</td>{}{}{}<td data-key=\"seeds\">{}</td>{}{}{}{}{}{}{}{}{}</tr>",
            c.index,
            td("lr", &num(c.lr), c.lr),
            td("batch_size", &c.batch_size.to_string(), c.batch_size as f64),
            td("eta_over_b", &num(c.eta_over_b), c.eta_over_b),
            html(&seeds),
            td("test_accuracy", &pm(c.test_accuracy), c.test_accuracy.mean),
            td("train_loss", &pm(c.train_loss), c.train_loss.mean),
            td("d", &c.d.to_string(), c.d as f64),
            td_bracket("rank", c.rank_certified.as_ref(), count),
            td_bracket(
                "rank_fraction",
                c.rank_certified.as_ref().map(|b| b.scaled(1.0 / c.d.max(1) as f64)).as_ref(),
                num
            ),
            td_bracket("lambda_max", lambda.as_ref(), num),
            td("trace", &pm(c.trace), c.trace.mean),
            td("area_rate", &pm(c.area_rate), c.area_rate.mean),
            td("grad_norm", &pm(c.grad_norm), c.grad_norm.mean),
        );
    }
    out.push_str("</tbody></table>");
    if listed.len() < all {
        let _ = write!(
            out,
            "<p class=\"note\" id=\"cells-omitted\">{} of {all} cells are listed (those with figures, and others spread \
             over the sweep); every cell is in results.csv and results.json.</p>",
            listed.len(),
        );
    }
}

fn figures(out: &mut String, figs: &[Figure]) {
    out.push_str("<div class=\"figs\">");
    for f in figs {
        let _ = write!(
            out,
            "<figure id=\"fig-{}\" data-figure=\"{0}\">{}<figcaption>{}</figcaption></figure>",
            f.id,
            f.svg.trim_start_matches("<?xml version=\"1.0\" encoding=\"UTF-8\"?>").trim(),
            html(&f.caption)
        );
    }
    out.push_str("</div>");
}

fn runs_table(out: &mut String, input: &ReportInput) {
    let runs = &input.runs;
    let failed: Vec<_> = runs.iter().filter(|r| r.state == RunState::Failed).collect();
    out.push_str("<h2 id=\"runs\">Runs</h2>");
    if !failed.is_empty() {
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &failed {
            *reasons.entry(r.error.as_str()).or_default() += 1;
        }
        let _ = write!(
            out,
            "<p class=\"note\" id=\"failures\">{} run(s) failed and are missing from the statistics:</p><ul>",
            failed.len()
        );
        for (why, n) in reasons {
            let _ = write!(out, "<li data-runs=\"{n}\">{n} × {}</li>", html(why));
        }
        out.push_str("</ul>");
    }
    let completed = runs.iter().filter(|r| r.state == RunState::Completed).count();
    let mut shown = 0;
    out.push_str("<table id=\"runs-table\"><thead><tr><th>run</th><th>cell</th><th>seed</th><th>state</th><th>attempts</th>\
                  <th>worker</th><th>host</th><th>duration</th><th>compute</th><th>epochs</th><th>error</th></tr></thead><tbody>");
    for r in runs {
        if r.state == RunState::Completed {
            if shown == MAX_COMPLETED_ROWS {
                continue;
            }
            shown += 1;
        }
        let _ = write!(
            out,
            "<tr data-run=\"{}\" data-state=\"{}\"><td class=\"text\">{0}</td><td>{}</td><td>{}</td><td class=\"text\">{1}</td>\
             <td>{}</td><td class=\"text\">{}</td><td class=\"text\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"text\">{}</td></tr>",
            html(&r.run_id),
            html(r.state.word()),
            r.cell,
            r.seed,
            r.attempts,
            html(&r.worker),
            html(r.host.as_deref().unwrap_or("-")),
            r.duration_s(input.made_at_ms).map_or("-".into(), duration),
            duration(r.compute_s),
            r.epochs.len(),
            html(&r.error)
        );
    }
    out.push_str("</tbody></table>");
    if completed > shown {
        let _ = write!(
            out,
            "<p class=\"note\">{} of {completed} completed runs are listed; every run is in runs.csv (`gradsweep results \
             --out DIR`).</p>",
            shown
        );
    }
}

/// The whole page: `detailed` are the cells with their own sections, with
/// their figures; `omitted` is how many cells have none.
pub fn page(input: &ReportInput, sweep_figs: &[Figure], detailed: &[(&CellResult, Vec<Figure>)]) -> String {
    let doc = &input.results;
    let p = &doc.provenance;
    let mut out = String::with_capacity(1 << 20);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>gradsweep — {}</title>",
        html(&p.name)
    );
    if let (Some(s), None) = (input.refresh_s, p.ended_at_ms) {
        let _ = write!(out, "<meta http-equiv=\"refresh\" content=\"{s}\">");
    }
    let _ = write!(out, "<style>{STYLE}</style></head><body><h1>Sweep {} — {}</h1>", html(&p.name), html(&p.sweep_id));
    header(&mut out, input);
    out.push_str("<nav><a href=\"#cells\">cells</a><a href=\"#eta-b\">η/b</a>");
    for (c, _) in detailed {
        let _ = write!(out, "<a href=\"#cell-{0}\">cell {0}</a>", c.index);
    }
    out.push_str("<a href=\"#runs\">runs</a></nav>");
    let set: BTreeSet<u32> = detailed.iter().map(|(c, _)| c.index).collect();
    let all = crate::all_cells(doc);
    cells_table(&mut out, &doc.cells, all.len(), &table_cells(&all, &set), &set);
    out.push_str("<h2 id=\"eta-b\">Against η/b</h2>");
    if sweep_figs.is_empty() {
        out.push_str("<p class=\"note\">No cell has results yet.</p>");
    }
    figures(&mut out, sweep_figs);
    if detailed.len() < all.len() {
        let _ = write!(
            out,
            "<p class=\"note\" id=\"omitted\">Figures of {} of {} cells follow (spread over η/b); choose others with \
             `gradsweep report --cells`. Every cell's numbers are in the table above and in results.json.</p>",
            detailed.len(),
            all.len()
        );
    }
    for (c, figs) in detailed {
        let _ = write!(out, "<section id=\"cell-{}\"><h2>{}</h2>", c.index, html(&crate::figures::cell_heading(c)));
        if figs.is_empty() {
            out.push_str("<p class=\"note\">No probe or epoch of this cell has been reported yet.</p>");
        }
        figures(&mut out, figs);
        out.push_str("</section>");
    }
    runs_table(&mut out, input);
    out.push_str("</body></html>\n");
    out
}
