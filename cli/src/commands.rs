//! Client subcommands: submit, status, watch, results, cancel, workers, drain.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::{ClientError, Remote, fetch_results_with};
use crate::report;
use anyhow::{Context, bail};
use gradsweep_proto::v1 as pb;
use gradsweep_report::ResultsDocument;
use gradsweep_shared::grid::{GridLimits, parse_grid};
use gradsweep_shared::stats::RankThresholds;

use crate::args::{ConnectArgs, OutputFormat, Source};
use gradsweep_coordinator::offline::Offline;

/// Reads and validates a grid file locally within `limits`; errors carry
/// file:line:col.
pub fn read_grid(file: &Path, limits: GridLimits) -> anyhow::Result<(String, String, gradsweep_shared::SweepPlan)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read grid file {}", file.display()))?;
    let name = file.display().to_string();
    let plan = parse_grid(&text, &name, limits).map_err(|e| anyhow::anyhow!("invalid grid file:\n{e}"))?;
    Ok((text, name, plan))
}

/// Refuses, before anything is sent, a grid whose text would not fit one
/// gRPC message (the coordinator's limit), naming the file and what to do,
/// instead of letting the transport fail with an opaque protocol error.
pub fn fits_one_message(text: &str, name: &str) -> anyhow::Result<()> {
    // Room for the request's other fields and framing.
    let limit = gradsweep_proto::MAX_MESSAGE_BYTES - 64 * 1024;
    if text.len() > limit {
        anyhow::bail!(
            "grid file {name} is {:.1} MiB; a grid sent to a coordinator may be at most {:.1} MiB. Write long lists \
             compactly: `seeds = N` for seeds 0..N, and `{{ lin = [a, b], num = n }}` or `{{ log = [a, b], num = n }}` \
             for axes",
            text.len() as f64 / (1 << 20) as f64,
            limit as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// `gradsweep submit`.
pub async fn submit(connect: &ConnectArgs, file: &Path, new: bool, check: bool) -> anyhow::Result<()> {
    // The coordinator applies its own run cap (`serve --max-runs`).
    let (text, name, plan) = read_grid(file, GridLimits { max_runs: usize::MAX })?;
    if check {
        crate::outln!(
            "{name}: valid: {} cells × {} seeds = {} runs",
            plan.cells.len(),
            plan.seeds.len(),
            plan.run_count()
        )?;
        for line in left_to_trainers(&plan) {
            crate::outln!("{line}")?;
        }
        return Ok(());
    }
    fits_one_message(&text, &name)?;
    let mut client = connect.remote()?.connect().await?;
    let r = client
        .submit(pb::SubmitRequest { grid_toml: text, file_name: name, force_new: new })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    if r.existing {
        crate::outln!("{} (existing sweep with the same grid; pass --new for another)", r.sweep_id)?;
    } else {
        crate::outln!("{}", r.sweep_id)?;
    }
    eprintln!("{} cells, {} runs", r.cells, r.runs);
    Ok(())
}

/// What `submit --check` could not check, per `python:` trainer: the
/// model, the data and the `[user]` keys mean what the trainer makes of
/// them, and only a worker that declares the trainer runs its cells.
fn left_to_trainers(plan: &gradsweep_shared::SweepPlan) -> Vec<String> {
    let mut by_trainer: std::collections::BTreeMap<String, (usize, std::collections::BTreeSet<&str>)> =
        Default::default();
    for c in plan.cells.iter().filter(|c| !c.train.trainer.is_builtin()) {
        let e = by_trainer.entry(c.train.trainer.name()).or_default();
        e.0 += 1;
        e.1.extend(c.user.keys().map(String::as_str));
    }
    by_trainer
        .into_iter()
        .map(|(trainer, (cells, keys))| {
            let user = if keys.is_empty() {
                String::new()
            } else {
                format!(", the [user] keys {}", keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
            };
            format!(
                "{cells} cell(s) train with `{trainer}`: checked are the probe and trajectory keys and the run \
                 schedule; left to the trainer are `model`, `dataset`, the data and optimiser keys{user} — it \
                 reads them from run.params — and only workers that declare `{trainer}` take these runs"
            )
        })
        .collect()
}

fn status_line(s: &pb::SweepStatus) -> String {
    format!(
        "{}  {:<10} {:>4}/{:<4} done  {:>3} running  {:>3} queued  {:>2} failed  {:>2} diverged  {:>2} cancelled  ({} cells)",
        s.sweep_id,
        s.state().word(),
        s.runs_completed,
        s.runs_total,
        s.runs_running,
        s.runs_queued,
        s.runs_failed,
        s.runs_diverged,
        s.runs_cancelled,
        s.cells
    )
}

/// One sweep's status as a JSON object (`status --format json`).
fn status_json(s: &pb::SweepStatus) -> serde_json::Value {
    serde_json::json!({
        "sweep_id": s.sweep_id,
        "name": s.name,
        "state": s.state().word(),
        "cells": s.cells,
        "runs_total": s.runs_total,
        "runs_queued": s.runs_queued,
        "runs_running": s.runs_running,
        "runs_completed": s.runs_completed,
        "runs_diverged": s.runs_diverged,
        "runs_failed": s.runs_failed,
        "runs_cancelled": s.runs_cancelled,
        "progress": s.progress,
        "created_at_ms": s.created_at_ms,
        "ended_at_ms": (s.ended_at_ms > 0).then_some(s.ended_at_ms),
        "grid_file": s.grid_file,
        "failures": s.failures.iter().map(|f| serde_json::json!({
            "error": f.error, "runs": f.runs, "example_run_id": f.example_run_id
        })).collect::<Vec<_>>(),
    })
}

/// The columns of `status --format csv`: [`status_json`]'s scalars (the
/// failure groups are in the JSON, and in `runs --state failed`).
const STATUS_COLUMNS: [&str; 16] = [
    "sweep_id",
    "name",
    "state",
    "cells",
    "runs_total",
    "runs_queued",
    "runs_running",
    "runs_completed",
    "runs_diverged",
    "runs_failed",
    "runs_cancelled",
    "progress",
    "created_at_ms",
    "ended_at_ms",
    "grid_file",
    "failure_groups",
];

/// A JSON scalar as one CSV field (`null` as empty).
fn csv_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => crate::runs::csv_field(s),
        serde_json::Value::Array(a) => a.len().to_string(),
        other => crate::runs::csv_field(&other.to_string()),
    }
}

/// Prints `objects` as one JSON document, or as CSV with `columns` (each
/// field from `field`); returns false, printing nothing, for a table,
/// which the caller prints.
fn print_data(
    format: OutputFormat,
    objects: &[serde_json::Value],
    columns: &[&str],
    field: impl Fn(&serde_json::Value, &str) -> String,
) -> anyhow::Result<bool> {
    match format {
        OutputFormat::Table => return Ok(false),
        OutputFormat::Json => crate::outln!("{}", serde_json::to_string_pretty(objects)?)?,
        OutputFormat::Csv => {
            crate::outln!("{}", columns.join(","))?;
            for j in objects {
                crate::outln!("{}", columns.iter().map(|c| field(j, c)).collect::<Vec<_>>().join(","))?;
            }
        }
    }
    Ok(true)
}

/// `gradsweep status`: from a coordinator, or from a database file.
pub async fn status(source: &Source, sweep: Option<&str>, format: OutputFormat) -> anyhow::Result<()> {
    let rows = match source {
        Source::Db(path) => Offline::open(path)?.status(sweep)?,
        Source::Remote(remote) => {
            let mut client = remote.connect().await?;
            match sweep {
                Some(id) => vec![
                    client
                        .status(pb::StatusRequest { sweep_id: id.into() })
                        .await
                        .map_err(ClientError::from)?
                        .into_inner(),
                ],
                None => {
                    client.list_sweeps(pb::ListSweepsRequest {}).await.map_err(ClientError::from)?.into_inner().sweeps
                }
            }
        }
    };
    let objects: Vec<serde_json::Value> = rows.iter().map(status_json).collect();
    let field = |j: &serde_json::Value, c: &str| match c {
        "failure_groups" => j["failures"].as_array().map_or(0, Vec::len).to_string(),
        _ => csv_value(&j[c]),
    };
    if print_data(format, &objects, &STATUS_COLUMNS, field)? {
        return Ok(());
    }
    if rows.is_empty() {
        crate::outln!("no sweeps")?;
    }
    for r in rows {
        crate::outln!("{}", status_line(&r))?;
        if let Some(t) = crate::runs::failures_text(&r) {
            crate::outln!("  {}", t.replace('\n', "\n  "))?;
        }
    }
    Ok(())
}

fn finished(s: &pb::SweepStatus) -> bool {
    s.runs_queued + s.runs_running == 0
}

/// Polls the sweep's status, drawing a progress bar on stderr, until no run
/// is queued or running. Returns the final status.
pub async fn watch(remote: &Remote, sweep: &str) -> anyhow::Result<pb::SweepStatus> {
    let mut client = remote.connect().await?;
    watch_with(&mut client, sweep, || Ok(())).await
}

/// [`watch`] on an open client, calling `check` each poll (to notice that
/// local workers died).
pub async fn watch_with(
    client: &mut crate::client::ControlClient,
    sweep: &str,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<pb::SweepStatus> {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    loop {
        let s =
            client.status(pb::StatusRequest { sweep_id: sweep.into() }).await.map_err(ClientError::from)?.into_inner();
        let done = finished(&s);
        let total = s.runs_total.max(1) as f64;
        let frac = (s.progress / total).clamp(0.0, 1.0);
        let width = 30;
        let filled = (frac * width as f64).round() as usize;
        let line = format!(
            "[{}{}] {:>5.1}%  {}/{} runs done, {} running, {} failed  {:>4}s",
            "#".repeat(filled),
            ".".repeat(width - filled),
            frac * 100.0,
            s.runs_completed + s.runs_diverged,
            s.runs_total,
            s.runs_running,
            s.runs_failed,
            start.elapsed().as_secs()
        );
        let mut err = std::io::stderr();
        if tty {
            let _ = write!(err, "\r{line}");
            if done {
                let _ = writeln!(err);
            }
        } else if done || last_print.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(err, "{line}");
            last_print = Instant::now();
        }
        if done {
            return Ok(s);
        }
        check()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Writes `body` to `dir/name` through a temporary name: the file appears
/// whole or not at all.
fn write_atomic(dir: &Path, name: &str, body: &[u8]) -> anyhow::Result<()> {
    let mut f = crate::runs::AtomicFile::create(dir, name)?;
    f.out.write_all(body).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    f.commit()
}

/// Writes every export of a sweep into `dir`: results.csv and results.json
/// (from `doc`), runs.csv and epochs.csv, `spectra/` (one NPY file per
/// spectrum, [`CellResult::spectrum_files`]), and the report — report.html
/// and `figures/*.svg`, drawn from the same document and files
/// ([`gradsweep_report::render`]), with sections for `cells` (or the
/// report's choice), from `spectra` when the caller has read them already;
/// from a coordinator, also the gradient rows the probes
/// kept ([`write_saved_gradients`]). Reads runs and spectra from `source`;
/// says what it wrote on stderr.
///
/// [`CellResult::spectrum_files`]: gradsweep_shared::results::CellResult::spectrum_files
pub async fn write_exports(
    source: &Source,
    dir: &Path,
    doc: &ResultsDocument,
    th: &RankThresholds,
    cells: Option<&[u32]>,
    spectra: Option<Spectra>,
) -> anyhow::Result<()> {
    let sweep = doc.provenance.sweep_id.as_str();
    let detail = gradsweep_report::detail_cells(doc, cells)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_atomic(dir, "results.csv", report::csv(&doc.cells, th).as_bytes())?;
    write_atomic(dir, "results.json", doc.to_json().as_bytes())?;
    let spectra = match (spectra, source) {
        (Some(s), _) => s,
        (None, Source::Remote(remote)) => crate::client::export_spectra(&mut remote.connect().await?, sweep).await?,
        (None, Source::Db(path)) => {
            let (path, id) = (path.clone(), sweep.to_string());
            tokio::task::spawn_blocking(move || Offline::open(&path)?.spectra(&id)).await??
        }
    };
    let n = write_spectra(dir, &doc.cells, &spectra)?;
    write_report(source, dir, doc.clone(), detail, spectra, n).await
}

/// The exports that follow results.csv, results.json and the spectra's
/// files (`spectra_files` of them): runs.csv and epochs.csv, the report
/// drawn from `doc` with sections for the `detail` cells and their
/// `spectra`, and, from a coordinator, the gradient rows the probes kept.
/// `doc` needs only the cells the report shows whole
/// ([`gradsweep_report::report_cells`]).
async fn write_report(
    source: &Source,
    dir: &Path,
    doc: ResultsDocument,
    detail: Vec<u32>,
    spectra: Spectra,
    spectra_files: usize,
) -> anyhow::Result<()> {
    let sweep = doc.provenance.sweep_id.clone();
    let hosts = match source {
        Source::Remote(remote) => {
            let ws =
                remote.connect().await?.list_workers(pb::ListWorkersRequest {}).await.map_err(ClientError::from)?;
            gradsweep_report::input::hosts(&ws.into_inner().workers)
        }
        Source::Db(_) => Default::default(),
    };
    let (_, epochs, runs) = crate::runs::write_runs_csv(source, &sweep, dir, &hosts, &detail).await?;
    let input = gradsweep_report::ReportInput {
        results: doc,
        spectra,
        runs,
        made_at_ms: gradsweep_report::format::now_ms(),
        detail_cells: Some(detail),
        refresh_s: None,
    };
    let rendered = tokio::task::spawn_blocking(move || gradsweep_report::render(&input)).await??;
    let figures = dir.join("figures");
    std::fs::create_dir_all(&figures).with_context(|| format!("cannot create {}", figures.display()))?;
    for f in &rendered.figures {
        write_atomic(&figures, &format!("{}.svg", f.id), f.svg.as_bytes())?;
    }
    // A figure of an earlier report into the same folder (other cells, a
    // statistic since withheld) would not match the page: remove it.
    let current: std::collections::BTreeSet<String> =
        rendered.figures.iter().map(|f| format!("{}.svg", f.id)).collect();
    for entry in std::fs::read_dir(&figures).with_context(|| format!("cannot list {}", figures.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".svg") && !current.contains(&name) {
            std::fs::remove_file(figures.join(&name)).with_context(|| format!("cannot remove stale figure {name}"))?;
        }
    }
    write_atomic(dir, "report.html", rendered.html.as_bytes())?;
    eprintln!(
        "wrote {0}/results.csv, {0}/results.json, {0}/runs.csv, {0}/epochs.csv ({epochs} epochs), {spectra_files} \
         spectra ({0}/spectra/*.spectrum.npy), and the report: {0}/report.html with {1} figures ({0}/figures/*.svg)",
        dir.display(),
        rendered.figures.len()
    );
    match source {
        Source::Remote(remote) => {
            write_saved_gradients(&mut remote.connect().await?, &sweep, dir).await?;
        }
        Source::Db(_) => {
            eprintln!("(gradient rows kept by `save_gradients` are exported by `results --out` from a coordinator)")
        }
    }
    Ok(())
}

/// Writes each cell's spectra as NPY files into `dir/spectra/`; returns
/// how many.
fn write_spectra(
    dir: &Path,
    cells: &[gradsweep_shared::results::CellResult],
    spectra: &[(u32, gradsweep_shared::digest::CellSpectra)],
) -> anyhow::Result<usize> {
    let mut n = 0;
    for (index, sp) in spectra {
        let cell =
            cells.iter().find(|c| c.index == *index).with_context(|| format!("spectra of unknown cell {index}"))?;
        n += write_cell_spectra(dir, cell, sp)?;
    }
    Ok(n)
}

/// Writes one cell's spectra as NPY files into `dir/spectra/`
/// ([`CellResult::spectrum_files`]); returns how many.
///
/// [`CellResult::spectrum_files`]: gradsweep_shared::results::CellResult::spectrum_files
fn write_cell_spectra(
    dir: &Path,
    cell: &gradsweep_shared::results::CellResult,
    spectra: &gradsweep_shared::digest::CellSpectra,
) -> anyhow::Result<usize> {
    let files = cell
        .spectrum_files(spectra)
        .with_context(|| format!("cell {}: its spectra do not match its results; fetch both again", cell.index))?;
    let out = dir.join("spectra");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, bytes) in &files {
        write_atomic(&out, name, bytes)?;
    }
    Ok(files.len())
}

/// Writes the gradient rows and weights that the sweep's probes kept
/// (`[probe] save_gradients`) into `dir/gradients/`, one NPY file each;
/// says so on stderr when there were any. Returns how many.
pub async fn write_saved_gradients(
    client: &mut crate::client::ControlClient,
    sweep: &str,
    dir: &Path,
) -> anyhow::Result<usize> {
    let out = dir.join("gradients");
    let mut write = |f: crate::client::SavedGradientsFile| -> std::io::Result<()> {
        std::fs::create_dir_all(&out)?;
        write_atomic(&out, &f.file_name(), &f.npy).map_err(std::io::Error::other)
    };
    let n = crate::client::export_gradients(client, sweep, &mut write).await?;
    if n > 0 {
        eprintln!("wrote {n} gradient and weight files (NPY) to {}", out.display());
    }
    Ok(n)
}

/// Prints results on stdout in `format`.
pub fn print_results(format: OutputFormat, doc: &ResultsDocument, th: &RankThresholds) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            let mut tables = report::Tables::new(th);
            doc.cells.iter().for_each(|c| tables.add(c));
            crate::out!("{}", tables.render(&doc.summary))?;
        }
        OutputFormat::Csv => crate::out!("{}", report::csv(&doc.cells, th))?,
        OutputFormat::Json => crate::outln!("{}", doc.to_json())?,
    }
    Ok(())
}

use gradsweep_coordinator::offline::SpectraByCell as Spectra;

/// A sweep's results document and status, from a coordinator or computed
/// from a database file by the coordinator's own code (stale cells merged,
/// nothing written). From a file, with `spectra`, also the cells' spectra
/// from the same merge.
async fn read_results(
    source: &Source,
    sweep: &str,
    th: &RankThresholds,
    spectra: bool,
) -> anyhow::Result<(ResultsDocument, pb::SweepStatus, Option<Spectra>)> {
    let (cells, summary, status, spectra) = match source {
        Source::Remote(remote) => {
            let mut client = remote.connect().await?;
            let (cells, summary) = fetch_results_with(&mut client, sweep, th).await?;
            // The status after the results: the counts the files describe.
            let status =
                client.status(pb::StatusRequest { sweep_id: sweep.into() }).await.map_err(ClientError::from)?;
            (cells, summary, status.into_inner(), None)
        }
        Source::Db(path) => {
            let (path, id, th2) = (path.clone(), sweep.to_string(), th.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let db = Offline::open(&path)?;
                let (cells, summary, spectra) = if spectra {
                    let (c, s, sp) = db.results_and_spectra(&id, &th2)?;
                    (c, s, Some(sp))
                } else {
                    let (c, s) = db.results(&id, &th2)?;
                    (c, s, None)
                };
                let status = db.status(Some(&id))?.remove(0);
                Ok((cells, summary, status, spectra))
            })
            .await??
        }
    };
    Ok((ResultsDocument { provenance: report::Provenance::of(&status), summary, cells }, status, spectra))
}

/// `gradsweep results`: prints them in `format`, and writes every export
/// into `out` when given.
pub async fn results(
    source: &Source,
    sweep: &str,
    format: OutputFormat,
    out: Option<&Path>,
    th: &RankThresholds,
) -> anyhow::Result<()> {
    match (source, out) {
        (Source::Remote(remote), None) => return stream_results_out(remote, sweep, format, th).await,
        (Source::Remote(remote), Some(dir)) => {
            let status = stream_exports(remote, sweep, dir, th, None, Some(format)).await?;
            if let Some(t) = crate::runs::failures_text(&status) {
                eprintln!("note: {t}");
            }
            return Ok(());
        }
        (Source::Db(_), _) => {}
    }
    let (doc, status, spectra) = read_results(source, sweep, th, out.is_some()).await?;
    // Files first: a reader that stops early (`| head`) loses none of them.
    if let Some(dir) = out {
        write_exports(source, dir, &doc, th, None, spectra).await?;
    }
    print_results(format, &doc, th)?;
    // Failed runs are missing from the statistics: say which and why.
    if let Some(t) = crate::runs::failures_text(&status) {
        eprintln!("note: {t}");
    }
    Ok(())
}

/// `results` from a coordinator, with no files to write. CSV and JSON: each
/// cell is printed as it arrives and dropped, so a sweep of any size prints
/// in the memory of its η/b rows; the CSV is results.csv and the JSON
/// results.json, byte for byte ([`ResultsDocument`]'s keys are in the order
/// they can be written). The table: each cell leaves only its rows' text
/// ([`report::Tables`]), printed aligned once the last cell is in.
async fn stream_results_out(
    remote: &crate::client::Remote,
    sweep: &str,
    format: OutputFormat,
    th: &RankThresholds,
) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let mut axes = None::<Vec<String>>;
    let mut tables = report::Tables::new(th);
    let mut json = JsonCells::default();
    if format == OutputFormat::Json {
        crate::out!("{}", JsonCells::HEAD)?;
    }
    let summary = crate::client::stream_results(&mut client, sweep, th, &mut |c| match format {
        OutputFormat::Json => crate::out!("{}", json.cell(&c)?),
        OutputFormat::Table => {
            tables.add(&c);
            Ok(())
        }
        OutputFormat::Csv => {
            // A grid gives every cell the same axes: the first cell's name
            // the columns, and a cell that differs is an error, not a
            // silently dropped value.
            let mine = report::csv_axes(std::slice::from_ref(&c));
            let cols = match &axes {
                Some(a) if *a != mine => {
                    return Err(std::io::Error::other(format!(
                        "cell {} has the axes {mine:?}, cell 0 {a:?}: write the results with --out instead",
                        c.index
                    )));
                }
                Some(a) => a,
                None => {
                    crate::out!("{}", report::csv_header(&mine, th))?;
                    axes.insert(mine)
                }
            };
            crate::out!("{}", report::csv_row(&c, cols, th))
        }
    })
    .await?;
    let status = client.status(pb::StatusRequest { sweep_id: sweep.into() }).await.map_err(ClientError::from)?;
    let status = status.into_inner();
    match format {
        OutputFormat::Json => {
            let mut out = std::io::stdout().lock();
            json.write_tail(&mut out, &summary, &status)?;
            out.write_all(b"\n")?;
        }
        OutputFormat::Table => crate::out!("{}", tables.render(&summary))?,
        OutputFormat::Csv if axes.is_none() => crate::out!("{}", report::csv_header(&[], th))?,
        OutputFormat::Csv => {}
    }
    if let Some(t) = crate::runs::failures_text(&status) {
        eprintln!("note: {t}");
    }
    Ok(())
}

/// results.json written as its cells stream past: the text
/// [`ResultsDocument::to_json`] gives, byte for byte, a cell at a time
/// (its keys are in the order they can be written).
#[derive(Default)]
struct JsonCells {
    /// Cells written so far.
    written: usize,
}

impl JsonCells {
    /// What comes before the first cell.
    const HEAD: &str = "{\n  \"cells\": [";

    /// The text of the next cell `c`.
    fn cell(&mut self, c: &gradsweep_shared::results::CellResult) -> std::io::Result<String> {
        let mut text: Vec<u8> = if self.written == 0 { b"\n    ".to_vec() } else { b",\n    ".to_vec() };
        serde_json::to_writer_pretty(Indented { out: &mut text, pad: b"\n    " }, c)?;
        self.written += 1;
        String::from_utf8(text).map_err(std::io::Error::other)
    }

    /// Writes what follows the last cell to `out`: the summary and the
    /// provenance (`status`), serialised straight into it (a summary's η/b
    /// rows are a few kB a cell: no copy of their text is held).
    fn write_tail(
        &self,
        out: &mut dyn Write,
        summary: &gradsweep_shared::results::SweepSummary,
        status: &pb::SweepStatus,
    ) -> std::io::Result<()> {
        out.write_all(if self.written == 0 { b"" } else { b"\n  " })?;
        out.write_all(b"],\n  \"summary\": ")?;
        serde_json::to_writer_pretty(Indented { out: &mut *out, pad: b"\n  " }, summary)?;
        out.write_all(b",\n  \"provenance\": ")?;
        serde_json::to_writer_pretty(Indented { out: &mut *out, pad: b"\n  " }, &report::Provenance::of(status))?;
        out.write_all(b"\n}")
    }
}

/// A writer that indents every line after the first as it is written:
/// each newline becomes `pad` (a newline and the indentation), so nested
/// JSON is written in place without a copy of its text.
struct Indented<'a> {
    out: &'a mut dyn Write,
    pad: &'static [u8],
}

impl Write for Indented<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for (i, line) in buf.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                self.out.write_all(self.pad)?;
            }
            self.out.write_all(line)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What `results --out` prints while it writes the files: a stdout that
/// fails (a reader that stopped early) stops the printing, not the files,
/// and its error is handed back once they are written.
struct Echo {
    failed: Option<std::io::Error>,
}

impl Echo {
    fn say(&mut self, text: &str) {
        self.write(|out| out.write_all(text.as_bytes()));
    }

    /// Prints what `f` writes, unless printing failed already.
    fn write(&mut self, f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) {
        if self.failed.is_none() {
            let mut out = std::io::stdout().lock();
            if let Err(e) = f(&mut out).and_then(|()| out.flush()) {
                self.failed = Some(e);
            }
        }
    }
}

/// Every export of a sweep on a coordinator into `dir`, as
/// [`write_exports`] writes them, in two passes over the results stream,
/// so that the client holds the η/b rows and only the cells the report
/// shows whole ([`gradsweep_report::report_cells`]: the cells with figure
/// sections, `asked` or chosen over η/b, and the rows of its cells table),
/// never the whole sweep. The first pass reads the cells' axes and η/b
/// rows and chooses those cells. The second writes results.json and
/// results.csv as the cells go by (each file appears whole at the end),
/// writes each cell's spectra, keeps the chosen cells, and prints the
/// results in `print` when asked. The spectra are fetched between the
/// passes. Returns the sweep's status after the second pass (the counts the
/// files describe).
async fn stream_exports(
    remote: &Remote,
    sweep: &str,
    dir: &Path,
    th: &RankThresholds,
    asked: Option<&[u32]>,
    print: Option<OutputFormat>,
) -> anyhow::Result<pb::SweepStatus> {
    use gradsweep_shared::results::CellResult;
    let mut client = remote.connect().await?;
    let mut axes = std::collections::BTreeSet::<String>::new();
    let first = crate::client::stream_results(&mut client, sweep, th, &mut |c| {
        axes.extend(report::csv_axes(std::slice::from_ref(&c)));
        Ok(())
    })
    .await?;
    let mut all: Vec<u32> = first.by_eta_over_b.iter().map(|r| r.cell).collect();
    all.sort_unstable();
    let detail = gradsweep_report::detail_cells_among(&all, &first.by_eta_over_b, asked)?;
    let keep = gradsweep_report::report_cells(&all, &detail);
    drop(first);
    let axes: Vec<String> = axes.into_iter().collect();
    let mut spectra: std::collections::HashMap<u32, gradsweep_shared::digest::CellSpectra> =
        crate::client::export_spectra(&mut client, sweep).await?.into_iter().collect();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (mut json_file, mut csv_file) =
        (crate::runs::AtomicFile::create(dir, "results.json")?, crate::runs::AtomicFile::create(dir, "results.csv")?);
    let (mut json, mut echo, mut tables) = (JsonCells::default(), Echo { failed: None }, report::Tables::new(th));
    let header = report::csv_header(&axes, th);
    json_file.out.write_all(JsonCells::HEAD.as_bytes())?;
    csv_file.out.write_all(header.as_bytes())?;
    match print {
        Some(OutputFormat::Json) => echo.say(JsonCells::HEAD),
        Some(OutputFormat::Csv) => echo.say(&header),
        _ => {}
    }
    let (mut kept, mut kept_spectra, mut spectra_files) = (Vec::<CellResult>::new(), vec![], 0);
    let summary = crate::client::stream_results(&mut client, sweep, th, &mut |c| {
        let text = json.cell(&c)?;
        json_file.out.write_all(text.as_bytes())?;
        let row = report::csv_row(&c, &axes, th);
        csv_file.out.write_all(row.as_bytes())?;
        match print {
            Some(OutputFormat::Json) => echo.say(&text),
            Some(OutputFormat::Csv) => echo.say(&row),
            Some(OutputFormat::Table) => tables.add(&c),
            None => {}
        }
        if let Some(sp) = spectra.remove(&c.index) {
            spectra_files += write_cell_spectra(dir, &c, &sp).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            if detail.binary_search(&c.index).is_ok() {
                kept_spectra.push((c.index, sp));
            }
        }
        if keep.contains(&c.index) {
            kept.push(c);
        }
        Ok(())
    })
    .await?;
    if let Some(index) = spectra.keys().min() {
        bail!("spectra of unknown cell {index}");
    }
    let status = client.status(pb::StatusRequest { sweep_id: sweep.into() }).await.map_err(ClientError::from)?;
    let status = status.into_inner();
    json.write_tail(&mut json_file.out, &summary, &status)?;
    json_file.commit()?;
    csv_file.commit()?;
    match print {
        Some(OutputFormat::Json) => echo.write(|out| {
            json.write_tail(out, &summary, &status)?;
            out.write_all(b"\n")
        }),
        Some(OutputFormat::Table) => echo.say(&tables.render(&summary)),
        _ => {}
    }
    let doc = ResultsDocument { provenance: report::Provenance::of(&status), summary, cells: kept };
    write_report(&Source::Remote(remote.clone()), dir, doc, detail, kept_spectra, spectra_files).await?;
    match echo.failed {
        Some(e) => Err(e.into()),
        None => Ok(status),
    }
}

/// `gradsweep report`: every export, the report among them, into `out`,
/// with figure sections for `cells` (else the report's choice).
pub async fn report(
    source: &Source,
    sweep: &str,
    out: &Path,
    cells: Option<&[u32]>,
    th: &RankThresholds,
) -> anyhow::Result<()> {
    let status = match source {
        Source::Remote(remote) => stream_exports(remote, sweep, out, th, cells, None).await?,
        Source::Db(_) => {
            let (doc, status, spectra) = read_results(source, sweep, th, true).await?;
            write_exports(source, out, &doc, th, cells, spectra).await?;
            status
        }
    };
    if let Some(t) = crate::runs::failures_text(&status) {
        eprintln!("note: {t}");
    }
    Ok(())
}

/// `gradsweep cancel`.
pub async fn cancel(remote: &Remote, sweep: &str) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let r = client.cancel(pb::CancelRequest { sweep_id: sweep.into() }).await.map_err(ClientError::from)?.into_inner();
    crate::outln!("{sweep}: {} runs cancelled", r.runs_cancelled)?;
    Ok(())
}

/// `gradsweep workers`.
pub async fn workers(remote: &Remote, format: OutputFormat) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let ws = client.list_workers(pb::ListWorkersRequest {}).await.map_err(ClientError::from)?.into_inner().workers;
    let json = |w: &pb::WorkerInfo| {
        serde_json::json!({
            "worker_id": w.worker_id,
            "state": w.state().word(),
            "name": w.name,
            "hostname": w.hostname,
            "slots": w.slots,
            "last_heartbeat_ms": w.last_heartbeat_ms,
            "trainers": w.trainers,
            "runs": w.runs,
        })
    };
    // In CSV, `runs` is how many it holds (their ids are in the JSON), and
    // `trainers` the names separated by spaces.
    let cols = ["worker_id", "state", "name", "hostname", "slots", "last_heartbeat_ms", "trainers", "runs"];
    let objects: Vec<serde_json::Value> = ws.iter().map(json).collect();
    let field = |j: &serde_json::Value, c: &str| match (c, j[c].as_array()) {
        ("trainers", Some(names)) => {
            crate::runs::csv_field(&names.iter().filter_map(|n| n.as_str()).collect::<Vec<_>>().join(" "))
        }
        _ => csv_value(&j[c]),
    };
    if print_data(format, &objects, &cols, field)? {
        return Ok(());
    }
    if ws.is_empty() {
        crate::outln!("no workers")?;
    }
    let now = gradsweep_coordinator::store::now_ms();
    crate::outln!(
        "{:<14} {:<9} {:<20} {:<16} {:>5} {:>9}  {:<10} runs",
        "worker",
        "state",
        "name",
        "host",
        "slots",
        "last beat",
        "trainers"
    )?;
    for w in ws {
        let age = (now - w.last_heartbeat_ms).max(0) as f64 / 1000.0;
        crate::outln!(
            "{:<14} {:<9} {:<20} {:<16} {:>5} {:>8.1}s  {:<10} {}",
            w.worker_id,
            w.state().word(),
            w.name,
            w.hostname,
            w.slots,
            age,
            w.trainers.join(","),
            if w.runs.is_empty() { "-".to_string() } else { w.runs.join(",") }
        )?;
    }
    Ok(())
}

/// `gradsweep drain`: `worker` is an identifier or a name, as `gradsweep
/// workers` lists them; a name drains every live worker that bears it.
pub async fn drain(remote: &Remote, worker: &str) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let ws = client.list_workers(pb::ListWorkersRequest {}).await.map_err(ClientError::from)?.into_inner().workers;
    let ids = drain_targets(&ws, worker)?;
    for id in &ids {
        client.drain(pb::DrainRequest { worker_id: id.clone() }).await.map_err(ClientError::from)?;
        let named = if id == worker { String::new() } else { format!(" ({worker})") };
        crate::outln!("{id}{named}: draining (finishes its runs, takes no new ones, then exits)")?;
    }
    Ok(())
}

/// The workers `drain WORKER` means: the one whose identifier it is, else
/// every one of that name; none is an error that says where to look.
pub fn drain_targets(ws: &[pb::WorkerInfo], worker: &str) -> anyhow::Result<Vec<String>> {
    if let Some(w) = ws.iter().find(|w| w.worker_id == worker) {
        return Ok(vec![w.worker_id.clone()]);
    }
    let named: Vec<String> = ws.iter().filter(|w| w.name == worker).map(|w| w.worker_id.clone()).collect();
    if named.is_empty() {
        bail!("no worker has the identifier or name `{worker}`; `gradsweep workers` lists them");
    }
    Ok(named)
}

/// `gradsweep keys`: every grid key with its section, values, default and
/// meaning; `--markdown` prints docs/grid.md.
pub fn keys(markdown: bool) -> anyhow::Result<()> {
    if markdown {
        crate::out!("{}", gradsweep_shared::grid::grid_reference_markdown())?;
        return Ok(());
    }
    let keys = gradsweep_shared::grid::key_reference();
    let w = keys.iter().map(|k| k.name.len()).max().unwrap_or(0);
    let wd = keys.iter().map(|k| k.default.chars().count()).max().unwrap_or(0);
    crate::outln!("{:<w$}  {:<7}  {:<wd$}  meaning (values)", "key", "section", "default")?;
    for k in keys {
        crate::outln!("{:<w$}  {:<7}  {:<wd$}  {} ({})", k.name, k.section, k.default, k.meaning, k.values)?;
    }
    crate::outln!("(any key may be an axis of [grid]; see docs/grid.md)")?;
    Ok(())
}

/// `gradsweep models`: one model per line, starting with its name.
pub fn models() -> anyhow::Result<()> {
    use gradsweep_shared::model::{Model, NAMED_MODELS};
    for name in NAMED_MODELS.iter().copied().chain(["linear:49-10", "mlp:64-32-10", "mlp:64-32-10+bn"]) {
        let m = Model::parse(name)?;
        crate::outln!("{name}  {}", m.describe())?;
    }
    crate::outln!("(linear:IN-OUT and mlp:W0-W1-...-Wk[+bn] take any widths)")?;
    for c in gradsweep_shared::controls::Control::ALL {
        crate::outln!("{}{}  {}", gradsweep_shared::controls::CONTROL_PREFIX, c.name(), c.describe())?;
    }
    crate::outln!("(control: models take no data set; `lr` is their time step, `control_lambda` their rotation)")?;
    Ok(())
}
