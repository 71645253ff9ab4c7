//! Every run accounted for: `gradsweep runs`, and the failures that
//! `status`, `watch`, `local` and `results` show.
//!
//! `runs` lists a sweep's runs one row each — the cell's axis values in
//! their own columns, seed, state, attempts, last worker, duration and
//! error — as a table, CSV or JSON, streamed a page at a time. A sweep that
//! ends with failed runs makes `watch` and `local` fail with [`RunsFailed`]
//! (exit code 3), naming the reasons.

use std::io::Write;
use std::path::Path;

use gradsweep_report::input::RunRow;

use anyhow::Context;

use gradsweep_proto::v1 as pb;

use gradsweep_coordinator::offline::Offline;
use gradsweep_coordinator::store::now_ms;

use crate::args::{OutputFormat, Source};
use crate::client::list_runs;

/// Exit code of `watch` and `local` when the sweep ended with failed runs.
pub const EXIT_RUNS_FAILED: u8 = 3;

/// The sweep ended, but some of its runs failed: what `watch` and `local`
/// return then (exit code [`EXIT_RUNS_FAILED`]); the message names the
/// reasons.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunsFailed(pub String);

/// A sweep's failed runs grouped by reason, one line per reason, with where
/// to look next; `None` when no run failed.
pub fn failures_text(s: &pb::SweepStatus) -> Option<String> {
    if s.runs_failed == 0 {
        return None;
    }
    let mut t = format!("{} of {} runs failed", s.runs_failed, s.runs_total);
    let shown: u32 = s.failures.iter().map(|f| f.runs).sum();
    for f in &s.failures {
        t.push_str(&format!("\n  {} × {} (e.g. run {})", f.runs, f.error, f.example_run_id));
    }
    if shown < s.runs_failed {
        t.push_str(&format!("\n  {} more with other reasons", s.runs_failed - shown));
    }
    t.push_str(&format!("\n  every run: gradsweep runs {} --state failed", s.sweep_id));
    Some(t)
}

/// Fails with [`RunsFailed`] when the sweep ended with failed runs.
pub fn require_no_failures(s: &pb::SweepStatus) -> anyhow::Result<()> {
    match failures_text(s) {
        Some(t) => Err(RunsFailed(t).into()),
        None => Ok(()),
    }
}

/// `gradsweep runs`: from a coordinator, or from a database file read
/// without one.
pub async fn runs(source: &Source, sweep: &str, states: &[pb::RunState], format: OutputFormat) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut printer = RunsPrinter::new(format);
    let n = for_each_page(source, sweep, states, false, &mut |axes, page| printer.page(&mut out, axes, page)).await?;
    printer.finish(&mut out, n)?;
    out.flush()?;
    Ok(())
}

/// A file written through a temporary name and synced before it takes
/// its own: it appears whole or not at all. Every export goes through it.
pub(crate) struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    /// Where to write the contents.
    pub(crate) out: std::io::BufWriter<std::fs::File>,
}

impl AtomicFile {
    /// Starts `dir/name` (as `dir/.name.tmp`).
    pub(crate) fn create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let (path, tmp) = (dir.join(name), dir.join(format!(".{name}.tmp")));
        let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        Ok(AtomicFile { path, tmp, out: std::io::BufWriter::new(file) })
    }

    /// Syncs the contents and gives the file its name.
    pub(crate) fn commit(self) -> anyhow::Result<()> {
        self.out.into_inner().map_err(|e| e.into_error()).and_then(|f| f.sync_all())?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Writes `dir/runs.csv`, one row per run (as `gradsweep runs --format
/// csv` prints it), and `dir/epochs.csv`, one row per run and epoch
/// ([`epochs_header`]), from a coordinator or a database file, in one pass
/// over the runs; each file appears whole or not at all. Returns how many
/// runs and epochs, and the runs as the report reads them (with `hosts`;
/// with their epochs for the cells in `detail`, sorted).
pub async fn write_runs_csv(
    source: &Source,
    sweep: &str,
    dir: &Path,
    hosts: &std::collections::BTreeMap<String, String>,
    detail: &[u32],
) -> anyhow::Result<(usize, usize, Vec<RunRow>)> {
    let (mut runs, mut epochs) = (AtomicFile::create(dir, "runs.csv")?, AtomicFile::create(dir, "epochs.csv")?);
    let mut printer = RunsPrinter::new(OutputFormat::Csv);
    let (mut first, mut rows) = (true, 0usize);
    let mut report_rows = vec![];
    let n = for_each_page(source, sweep, &[], true, &mut |axes, page| {
        printer.page(&mut runs.out, axes, page)?;
        report_rows.extend(page.iter().map(|r| RunRow::from_wire(r, hosts, detail.binary_search(&r.cell).is_ok())));
        if std::mem::take(&mut first) {
            writeln!(epochs.out, "{}", epochs_header(axes).iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
        }
        for r in page {
            for e in &r.epochs {
                writeln!(
                    epochs.out,
                    "{}",
                    epoch_fields(r, e).iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",")
                )?;
                rows += 1;
            }
        }
        Ok(())
    })
    .await?;
    runs.commit()?;
    epochs.commit()?;
    Ok((n, rows, report_rows))
}

/// The columns of epochs.csv: run, cell, one per axis, seed, then the
/// epoch's figures (the test ones on a run's last epoch only).
pub fn epochs_header(axes: &[String]) -> Vec<String> {
    let mut h = vec!["run".to_string(), "cell".to_string()];
    h.extend(axes.iter().cloned());
    h.extend(
        ["seed", "epoch", "step", "lr_at_epoch", "train_loss", "test_accuracy", "test_loss", "seconds"]
            .map(String::from),
    );
    h
}

/// One epoch's values in [`epochs_header`]'s order ("" for what is not
/// known, such as the test figures before the last epoch).
pub fn epoch_fields(r: &pb::RunInfo, e: &pb::EpochInfo) -> Vec<String> {
    let num = |x: f64| if x.is_finite() { format!("{x}") } else { String::new() };
    let mut f = vec![r.run_id.clone(), r.cell.to_string()];
    f.extend(r.axis_values.iter().map(|v| axis_text(v)));
    f.extend([
        r.seed.to_string(),
        e.epoch.to_string(),
        e.step.to_string(),
        num(e.lr),
        num(e.train_loss),
        num(e.test_accuracy),
        num(e.test_loss),
        num(e.seconds),
    ]);
    f
}

/// An axis value as a CSV field: a string unquoted, anything else as its
/// JSON.
fn axis_text(v: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => v.to_string(),
    }
}

/// Streams a sweep's runs (with their epochs when `with_epochs`) from
/// `source` to `on_page`, a page at a time (the first, even empty, before
/// any other); returns how many runs.
async fn for_each_page(
    source: &Source,
    sweep: &str,
    states: &[pb::RunState],
    with_epochs: bool,
    on_page: &mut crate::client::RunsPageSink<'_>,
) -> anyhow::Result<usize> {
    Ok(match source {
        Source::Remote(remote) => {
            let mut client = remote.connect().await?;
            list_runs(&mut client, sweep, states, with_epochs, on_page).await?
        }
        Source::Db(path) => {
            let db = Offline::open(path)?;
            let mut pages = db.runs_with(sweep, states, with_epochs)?;
            let axes = pages.axes().to_vec();
            on_page(&axes, &[])?;
            let mut n = 0;
            for page in pages.by_ref() {
                let page = page?;
                on_page(&axes, &page)?;
                n += page.len();
            }
            n
        }
    })
}

/// Prints runs page by page in one format: a sweep of any size prints as
/// it streams (a table takes its widths from the first page).
pub struct RunsPrinter {
    format: OutputFormat,
    widths: Option<Vec<usize>>,
    first: bool,
    now: i64,
}

impl RunsPrinter {
    /// A printer that has printed nothing yet.
    pub fn new(format: OutputFormat) -> Self {
        RunsPrinter { format, widths: None, first: true, now: now_ms() }
    }

    /// Prints one page (the first, even empty, gives a CSV its header).
    pub fn page(&mut self, out: &mut dyn Write, axes: &[String], page: &[pb::RunInfo]) -> std::io::Result<()> {
        let head = header(axes);
        let now = self.now;
        match self.format {
            OutputFormat::Csv => {
                if self.first {
                    writeln!(out, "{}", head.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
                }
                for r in page {
                    writeln!(out, "{}", fields(r, now).iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","))?;
                }
            }
            OutputFormat::Json => {
                for r in page {
                    let sep = if self.first { "[\n" } else { ",\n" };
                    write!(out, "{sep}{}", json_row(axes, r, now))?;
                    self.first = false;
                }
                return Ok(());
            }
            OutputFormat::Table if page.is_empty() => return Ok(()),
            OutputFormat::Table => {
                let w = self.widths.get_or_insert_with(|| {
                    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
                    for r in page {
                        for (i, f) in fields(r, now).iter().enumerate().take(w.len() - 1) {
                            w[i] = w[i].max(f.chars().count());
                        }
                    }
                    w
                });
                if self.first {
                    writeln!(out, "{}", pad(&head, w))?;
                }
                for r in page {
                    writeln!(out, "{}", pad(&fields(r, now), w))?;
                }
            }
        }
        self.first = false;
        Ok(())
    }

    /// Ends the listing of `n` runs.
    pub fn finish(self, out: &mut dyn Write, n: usize) -> std::io::Result<()> {
        match self.format {
            OutputFormat::Json if n == 0 => writeln!(out, "[]"),
            OutputFormat::Json => writeln!(out, "\n]"),
            OutputFormat::Table if n == 0 => writeln!(out, "no runs"),
            _ => Ok(()),
        }
    }
}

/// The columns: run, cell, one per axis, seed, state, attempts, worker,
/// duration in seconds, error.
pub fn header(axes: &[String]) -> Vec<String> {
    let mut h = vec!["run".to_string(), "cell".to_string()];
    h.extend(axes.iter().cloned());
    h.extend(["seed", "state", "attempts", "worker", "duration_s", "error"].map(String::from));
    h
}

/// A run's values in [`header`]'s order, as text: an axis's string value
/// unquoted, the duration so far for a running run, "" for what is unknown.
pub fn fields(r: &pb::RunInfo, now_ms: i64) -> Vec<String> {
    let mut f = vec![r.run_id.clone(), r.cell.to_string()];
    f.extend(r.axis_values.iter().map(|v| axis_text(v)));
    let worker = if r.worker_name.is_empty() { r.worker_id.clone() } else { r.worker_name.clone() };
    f.extend([
        r.seed.to_string(),
        r.state().word().to_string(),
        r.attempts.to_string(),
        worker,
        duration_s(r, now_ms).map(|d| format!("{d:.1}")).unwrap_or_default(),
        r.error.clone(),
    ]);
    f
}

/// Seconds from the first lease to the end (or to now, while it runs);
/// `None` when never leased or not recorded.
pub fn duration_s(r: &pb::RunInfo, now_ms: i64) -> Option<f64> {
    if r.started_at_ms == 0 {
        return None;
    }
    let end = match (r.finished_at_ms, r.state()) {
        (0, pb::RunState::Leased) => now_ms,
        (0, _) => return None,
        (t, _) => t,
    };
    Some((end - r.started_at_ms).max(0) as f64 / 1000.0)
}

/// One run as a JSON object: axes as their JSON values, times in ms.
fn json_row(axes: &[String], r: &pb::RunInfo, now: i64) -> String {
    let mut params = serde_json::Map::new();
    for (a, v) in axes.iter().zip(&r.axis_values) {
        params.insert(a.clone(), serde_json::from_str(v).unwrap_or(serde_json::Value::Null));
    }
    let opt = |t: i64| if t == 0 { serde_json::Value::Null } else { t.into() };
    serde_json::json!({
        "run": r.run_id,
        "cell": r.cell,
        "params": params,
        "seed": r.seed,
        "state": r.state().word(),
        "attempts": r.attempts,
        "worker_id": r.worker_id,
        "worker": r.worker_name,
        "step": r.step,
        "total_steps": r.total_steps,
        "started_at_ms": opt(r.started_at_ms),
        "finished_at_ms": opt(r.finished_at_ms),
        "duration_s": duration_s(r, now),
        "error": if r.error.is_empty() { serde_json::Value::Null } else { r.error.clone().into() },
    })
    .to_string()
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Columns padded to `w` (the last, the error, is not padded).
fn pad(f: &[String], w: &[usize]) -> String {
    let mut line = String::new();
    for (i, v) in f.iter().enumerate() {
        if i + 1 == f.len() {
            line.push_str(v);
        } else {
            let width = w.get(i).copied().unwrap_or(0);
            line.push_str(&format!("{v:<width$}  "));
        }
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &str, started: i64, finished: i64, error: &str) -> pb::RunInfo {
        pb::RunInfo {
            run_id: "s-c1-s7".into(),
            cell: 1,
            seed: 7,
            axis_values: vec!["0.1".into(), "\"mlp:64-32-10\"".into()],
            state: pb::RunState::from_word(state).unwrap() as i32,
            attempts: 2,
            worker_id: "w-abc".into(),
            worker_name: "node-3".into(),
            step: 5,
            total_steps: 10,
            started_at_ms: started,
            finished_at_ms: finished,
            error: error.into(),
            epochs: vec![],
            compute_seconds: 0.0,
        }
    }

    #[test]
    fn an_epoch_is_one_row_with_the_runs_axes_and_blanks_for_what_is_unknown() {
        let axes = vec!["lr".to_string(), "model".to_string()];
        let e = pb::EpochInfo {
            epoch: 3,
            step: 30,
            lr: 0.01,
            train_loss: 0.25,
            seconds: f64::NAN,
            test_accuracy: f64::NAN,
            test_loss: f64::NAN,
        };
        let h = epochs_header(&axes);
        let f = epoch_fields(&run("completed", 1, 2, ""), &e);
        assert_eq!(h.len(), f.len());
        let at = |name: &str| f[h.iter().position(|x| x == name).unwrap()].clone();
        assert_eq!(
            (at("model"), at("seed"), at("epoch"), at("step")),
            ("mlp:64-32-10".into(), "7".into(), "3".into(), "30".into())
        );
        assert_eq!((at("lr"), at("lr_at_epoch"), at("train_loss")), ("0.1".into(), "0.01".into(), "0.25".into()));
        assert_eq!(
            (at("test_accuracy"), at("test_loss"), at("seconds")),
            (String::new(), String::new(), String::new())
        );
    }

    #[test]
    fn a_run_is_one_row_with_one_column_per_axis_and_no_packed_strings() {
        let axes = vec!["lr".to_string(), "model".to_string()];
        let h = header(&axes);
        let r = run("failed", 1_000, 13_500, "data: not found, run fetch-data.sh");
        let f = fields(&r, 0);
        assert_eq!(h.len(), f.len());
        let at = |k: &str| f[h.iter().position(|c| c == k).unwrap()].clone();
        assert_eq!((at("lr"), at("model"), at("seed")), ("0.1".into(), "mlp:64-32-10".into(), "7".into()));
        assert_eq!((at("worker"), at("duration_s"), at("attempts")), ("node-3".into(), "12.5".into(), "2".into()));
        assert_eq!(csv_field(&at("error")), "\"data: not found, run fetch-data.sh\"");
        assert_eq!(csv_field("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_field("plain"), "plain");

        let running = run("leased", 1_000, 0, "");
        assert_eq!(duration_s(&running, 4_000), Some(3.0), "a running run's duration so far");
        assert_eq!(duration_s(&run("queued", 0, 0, ""), 4_000), None);
        assert_eq!(duration_s(&run("completed", 0, 9_000, ""), 9_000), None, "not recorded is not zero");

        let j: serde_json::Value = serde_json::from_str(&json_row(&axes, &r, 0)).unwrap();
        assert_eq!(j["params"]["lr"], 0.1);
        assert_eq!(j["params"]["model"], "mlp:64-32-10");
        assert_eq!(j["duration_s"], 12.5);
        assert!(json_row(&axes, &run("queued", 0, 0, ""), 0).contains("\"started_at_ms\":null"));
    }

    #[test]
    fn failures_are_told_by_reason_with_where_to_look() {
        let mut s = pb::SweepStatus { sweep_id: "q-1".into(), runs_total: 8, ..Default::default() };
        assert!(failures_text(&s).is_none() && require_no_failures(&s).is_ok());
        s.runs_failed = 5;
        s.failures = vec![
            pb::FailureGroup { error: "data dir not found".into(), runs: 3, example_run_id: "q-1-c0-s0".into() },
            pb::FailureGroup { error: "lease lapsed 10 times".into(), runs: 1, example_run_id: "q-1-c1-s0".into() },
        ];
        let t = failures_text(&s).unwrap();
        assert!(t.starts_with("5 of 8 runs failed"), "{t}");
        assert!(t.contains("3 × data dir not found (e.g. run q-1-c0-s0)"), "{t}");
        assert!(t.contains("1 more with other reasons"), "{t}");
        assert!(t.contains("gradsweep runs q-1 --state failed"), "{t}");
        let e = require_no_failures(&s).unwrap_err();
        assert!(e.downcast_ref::<RunsFailed>().is_some());
    }
}
