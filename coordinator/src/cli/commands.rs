//! Client subcommands: submit, status, watch, results, cancel, workers, drain.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gradsweep_coordinator::client::{Remote, fetch_results_with};
use gradsweep_coordinator::report;
use gradsweep_proto::v1 as pb;
use gradsweep_shared::grid::{GridLimits, parse_grid};
use gradsweep_shared::stats::RankThresholds;

use crate::OutputFormat;

/// Reads and validates a grid file locally; errors carry file:line:col.
pub fn read_grid(file: &Path) -> anyhow::Result<(String, String, gradsweep_shared::SweepPlan)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read grid file {}", file.display()))?;
    let name = file.display().to_string();
    let plan = parse_grid(&text, &name, GridLimits { max_runs: usize::MAX })
        .map_err(|e| anyhow::anyhow!("invalid grid file:\n{e}"))?;
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
pub async fn submit(remote: &Remote, file: &Path, new: bool, check: bool) -> anyhow::Result<()> {
    let (text, name, plan) = read_grid(file)?;
    if check {
        println!("{name}: valid: {} cells × {} seeds = {} runs", plan.cells.len(), plan.seeds.len(), plan.run_count());
        return Ok(());
    }
    fits_one_message(&text, &name)?;
    let mut client = remote.connect().await?;
    let r = client
        .submit(pb::SubmitRequest { grid_toml: text, file_name: name, force_new: new })
        .await
        .map_err(status_err)?
        .into_inner();
    if r.existing {
        println!("{} (existing sweep with the same grid; pass --new for another)", r.sweep_id);
    } else {
        println!("{}", r.sweep_id);
    }
    eprintln!("{} cells, {} runs", r.cells, r.runs);
    Ok(())
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn status_line(s: &pb::SweepStatus) -> String {
    format!(
        "{}  {:<10} {:>4}/{:<4} done  {:>3} running  {:>3} queued  {:>2} failed  {:>2} diverged  {:>2} cancelled  ({} cells)",
        s.sweep_id,
        s.state,
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

/// `gradsweep status`.
pub async fn status(remote: &Remote, sweep: Option<&str>) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let rows = match sweep {
        Some(id) => {
            vec![client.status(pb::StatusRequest { sweep_id: id.into() }).await.map_err(status_err)?.into_inner()]
        }
        None => client.list_sweeps(pb::ListSweepsRequest {}).await.map_err(status_err)?.into_inner().sweeps,
    };
    if rows.is_empty() {
        println!("no sweeps");
    }
    for r in rows {
        println!("{}", status_line(&r));
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
    client: &mut gradsweep_coordinator::client::ControlClient,
    sweep: &str,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<pb::SweepStatus> {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_print = Instant::now() - Duration::from_secs(60);
    loop {
        let s = client.status(pb::StatusRequest { sweep_id: sweep.into() }).await.map_err(status_err)?.into_inner();
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

/// Writes results.csv and results.json into `dir`.
pub fn write_result_files(
    dir: &Path,
    cells: &[gradsweep_shared::results::CellResult],
    summary: &gradsweep_shared::results::SweepSummary,
    th: &RankThresholds,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, body) in [("results.csv", report::csv(cells, th)), ("results.json", report::json(cells, summary))] {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes the gradient rows and weights that the sweep's probes kept
/// (`[probe] save_gradients`) into `dir/gradients/`, one NPY file each;
/// says so on stderr when there were any. Returns how many.
pub async fn write_saved_gradients(
    client: &mut gradsweep_coordinator::client::ControlClient,
    sweep: &str,
    dir: &Path,
) -> anyhow::Result<usize> {
    let out = dir.join("gradients");
    let mut write = |f: gradsweep_coordinator::client::SavedGradientsFile| -> std::io::Result<()> {
        std::fs::create_dir_all(&out)?;
        let (path, tmp) = (out.join(f.file_name()), out.join(format!(".{}.tmp", f.file_name())));
        std::fs::write(&tmp, &f.npy)?;
        std::fs::rename(&tmp, &path)
    };
    let n = gradsweep_coordinator::client::export_gradients(client, sweep, &mut write).await?;
    if n > 0 {
        eprintln!("wrote {n} gradient and weight files (NPY) to {}", out.display());
    }
    Ok(n)
}

/// Prints results on stdout in `format`.
pub fn print_results(
    format: OutputFormat,
    cells: &[gradsweep_shared::results::CellResult],
    summary: &gradsweep_shared::results::SweepSummary,
    th: &RankThresholds,
) {
    match format {
        OutputFormat::Table => {
            print!("{}", report::table(cells, th));
            println!();
            print!("{}", report::drift_table(cells));
            println!();
            print!("{}", report::eta_table(summary));
        }
        OutputFormat::Csv => print!("{}", report::csv(cells, th)),
        OutputFormat::Json => println!("{}", report::json(cells, summary)),
    }
}

/// `gradsweep results`.
pub async fn results(
    remote: &Remote,
    sweep: &str,
    format: OutputFormat,
    out: Option<&Path>,
    th: &RankThresholds,
) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let (cells, summary) = fetch_results_with(&mut client, sweep, th).await?;
    print_results(format, &cells, &summary, th);
    if let Some(dir) = out {
        write_result_files(dir, &cells, &summary, th)?;
        eprintln!("wrote {0}/results.csv and {0}/results.json", dir.display());
        write_saved_gradients(&mut client, sweep, dir).await?;
    }
    Ok(())
}

/// `gradsweep cancel`.
pub async fn cancel(remote: &Remote, sweep: &str) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let r = client.cancel(pb::CancelRequest { sweep_id: sweep.into() }).await.map_err(status_err)?.into_inner();
    println!("{sweep}: {} runs cancelled", r.runs_cancelled);
    Ok(())
}

/// `gradsweep workers`.
pub async fn workers(remote: &Remote) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    let ws = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_err)?.into_inner().workers;
    if ws.is_empty() {
        println!("no workers");
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    println!("{:<14} {:<9} {:<20} {:<16} {:>5} {:>9}  runs", "worker", "state", "name", "host", "slots", "last beat");
    for w in ws {
        let age = (now - w.last_heartbeat_ms).max(0) as f64 / 1000.0;
        println!(
            "{:<14} {:<9} {:<20} {:<16} {:>5} {:>8.1}s  {}",
            w.worker_id,
            w.state,
            w.name,
            w.hostname,
            w.slots,
            age,
            if w.runs.is_empty() { "-".to_string() } else { w.runs.join(",") }
        );
    }
    Ok(())
}

/// `gradsweep drain`.
pub async fn drain(remote: &Remote, worker: &str) -> anyhow::Result<()> {
    let mut client = remote.connect().await?;
    client.drain(pb::DrainRequest { worker_id: worker.into() }).await.map_err(status_err)?;
    println!("{worker}: draining (finishes its runs, takes no new ones, then exits)");
    Ok(())
}

/// Fails unless the sweep ended with every run accounted for.
pub fn require_complete(s: &pb::SweepStatus) -> anyhow::Result<()> {
    if s.runs_failed > 0 {
        bail!("{} of {} runs failed; see the coordinator log", s.runs_failed, s.runs_total);
    }
    Ok(())
}

/// `gradsweep models`: one model per line, starting with its name.
pub fn models() -> anyhow::Result<()> {
    use gradsweep_shared::model::{Model, NAMED_MODELS};
    for name in NAMED_MODELS.iter().copied().chain(["linear:49-10", "mlp:64-32-10", "mlp:64-32-10+bn"]) {
        let m = Model::parse(name)?;
        println!("{name}  {}", m.describe());
    }
    println!("(linear:IN-OUT and mlp:W0-W1-...-Wk[+bn] take any widths)");
    Ok(())
}
