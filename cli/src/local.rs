//! `gradsweep local`: a whole sweep on one machine.
//!
//! Starts a coordinator on a loopback port with its database in the output
//! folder, launches N `gradsweep-worker` processes, submits the grid, shows
//! progress, prints the per-cell table, writes `results.csv` and
//! `results.json`, then drains the workers and stops. Re-running the same
//! command on the same output folder resumes an interrupted sweep.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::args::Source;
use crate::client::{ClientError, Remote, connect_control, fetch_results_with};
use anyhow::{Context, bail};
use clap::Args;
use gradsweep_coordinator::store::{LeasePolicy, Store};
use gradsweep_coordinator::{CoordinatorConfig, serve};
use gradsweep_proto::v1 as pb;
use gradsweep_report::ResultsDocument;
use gradsweep_shared::grid::GridLimits;
use tokio::process::{Child, Command};

use super::commands::{fits_one_message, print_results, read_grid, watch_with, write_exports};
use crate::args::OutputFormat;

/// Options of `gradsweep local`.
#[derive(Args, Debug)]
pub struct LocalArgs {
    /// The grid file (TOML).
    pub file: PathBuf,
    /// Number of worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Slots per worker: concurrent runs, and threads for the probe shards
    /// of a running run while slots are idle (default: one per CPU when
    /// there is one worker, else one).
    #[arg(long)]
    pub slots: Option<u32>,
    /// Output folder (default: gradsweep-out/<sweep name>, or
    /// gradsweep-out/<sweep name>-2, -3, … when that folder holds a
    /// different grid of the same name). A folder that holds another
    /// grid's sweep is never written over.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Largest number of runs the grid may expand to (as `serve --max-runs`).
    #[arg(long, env = "GRADSWEEP_MAX_RUNS", default_value_t = gradsweep_shared::grid::DEFAULT_MAX_RUNS)]
    pub max_runs: usize,
    /// The worker binary (default: gradsweep-worker next to this program).
    #[arg(long, env = "GRADSWEEP_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,
    /// How the table is printed.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Extra rank thresholds.
    #[command(flatten)]
    pub thresholds: crate::args::ThresholdArgs,
}

fn worker_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("cannot locate this program")?;
    let candidate = me.with_file_name("gradsweep-worker");
    if candidate.exists() {
        return Ok(candidate);
    }
    bail!(
        "gradsweep-worker not found at {}; build it (cargo build --release --workspace) or pass --worker-bin",
        candidate.display()
    )
}

/// Runs the sweep.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    args.thresholds.thresholds()?; // bad thresholds fail before anything starts
    let limits = GridLimits { max_runs: args.max_runs };
    let (text, file_name, plan) = read_grid(&args.file, limits)?;
    fits_one_message(&text, &file_name)?;
    if let Some(c) = plan.cells.iter().find(|c| !c.train.trainer.is_builtin()) {
        anyhow::bail!(
            "{file_name}: cell {} trains with `{}`, which `local`'s workers (gradsweep's engine) do not run: start \
             `gradsweep serve`, `gradsweep submit` the grid, and run workers that declare the trainer",
            c.index,
            c.train.trainer
        );
    }
    let worker_bin = worker_binary(args.worker_bin.as_deref())?;
    let out = output_folder(args.out.as_deref(), &plan)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let workers = args.workers.max(1);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let slots = args.slots.unwrap_or(if workers == 1 { cpus } else { 1 }).max(1);

    let mut config = CoordinatorConfig::new(out.join("state.db"));
    config.lease_ttl = Duration::from_secs(6);
    config.heartbeat_interval = Duration::from_secs(1);
    config.grid_limits = limits;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind a loopback port")?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(config, listener, async move {
        let _ = stop_rx.await;
    }));

    let result = drive(&args, &addr, &text, &file_name, &out, &logs, &worker_bin, (workers, slots)).await;

    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("coordinator: {e}"),
        Err(e) => eprintln!("coordinator task: {e}"),
    }
    result
}

/// What an output folder holds, as far as one grid is concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum Folder {
    /// No sweep yet: the grid may start there.
    Fresh,
    /// This grid's sweep: running again resumes it.
    Resume,
    /// Sweeps of other grids (their identifiers): not to be written over.
    Other(Vec<String>),
}

/// What `dir` holds for a grid of this fingerprint, read from its database
/// without changing it.
pub fn folder_state(dir: &Path, fingerprint: &str) -> anyhow::Result<Folder> {
    let db = dir.join("state.db");
    if !db.exists() {
        return Ok(Folder::Fresh);
    }
    let policy = LeasePolicy { ttl_ms: 0, max_attempts: 1 };
    let store = Store::open_reader(&db, policy).with_context(|| format!("cannot read {}", db.display()))?;
    if store.sweep_with_fingerprint(fingerprint)?.is_some() {
        return Ok(Folder::Resume);
    }
    let others: Vec<String> = store.sweeps()?.into_iter().map(|s| s.id).collect();
    Ok(if others.is_empty() { Folder::Fresh } else { Folder::Other(others) })
}

/// Where the sweep's state and results go: `given`, unless it holds other
/// grids' sweeps (an error: nothing is written over); by default
/// `gradsweep-out/<name>`, or the first of `<name>-2`, `<name>-3`, … that
/// is free or already this grid's, said on stderr.
pub fn output_folder(given: Option<&Path>, plan: &gradsweep_shared::SweepPlan) -> anyhow::Result<PathBuf> {
    let fingerprint = plan.fingerprint();
    if let Some(dir) = given {
        return match folder_state(dir, &fingerprint)? {
            Folder::Fresh | Folder::Resume => Ok(dir.to_path_buf()),
            Folder::Other(ids) => bail!(
                "{} holds sweep {} of a different grid; its results stay as they are. Pass another --out, or delete \
                 the folder to start over",
                dir.display(),
                ids.join(", ")
            ),
        };
    }
    let base = PathBuf::from("gradsweep-out");
    for n in 1..=1000 {
        let dir = if n == 1 { base.join(&plan.name) } else { base.join(format!("{}-{n}", plan.name)) };
        match folder_state(&dir, &fingerprint)? {
            Folder::Fresh | Folder::Resume => {
                if n > 1 {
                    eprintln!(
                        "{} holds a different grid named {:?}; this one goes to {}",
                        base.join(&plan.name).display(),
                        plan.name,
                        dir.display()
                    );
                }
                return Ok(dir);
            }
            Folder::Other(_) => continue,
        }
    }
    bail!("gradsweep-out holds 1000 different grids named {:?}; pass --out", plan.name)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &LocalArgs,
    addr: &str,
    text: &str,
    file_name: &str,
    out: &Path,
    logs: &Path,
    worker_bin: &Path,
    (workers, slots): (usize, u32),
) -> anyhow::Result<()> {
    let mut client = connect_control(addr).await?;
    let sub = client
        .submit(pb::SubmitRequest { grid_toml: text.to_string(), file_name: file_name.to_string(), force_new: false })
        .await
        .map_err(ClientError::from)?
        .into_inner();
    eprintln!(
        "sweep {}{}: {} cells, {} runs, {} workers × {slots} slots; state in {}",
        sub.sweep_id,
        if sub.existing { " (resumed)" } else { "" },
        sub.cells,
        sub.runs,
        workers,
        out.join("state.db").display()
    );

    let tag = format!("local-{}", std::process::id());
    let mut children: Vec<Child> = Vec::with_capacity(workers);
    for i in 0..workers {
        let log = std::fs::File::create(logs.join(format!("worker-{i}.log"))).context("cannot create worker log")?;
        let child = Command::new(worker_bin)
            .arg("--coordinator")
            .arg(addr)
            .arg("--slots")
            .arg(slots.to_string())
            .arg("--name")
            .arg(format!("{tag}-{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", worker_bin.display()))?;
        children.push(child);
    }

    let watched = tokio::select! {
        r = watch_with(&mut client, &sub.sweep_id, || {
            let alive = children.iter_mut().map(|c| c.try_wait()).filter(|w| matches!(w, Ok(None))).count();
            if alive == 0 {
                bail!("all workers exited before the sweep finished; see {}", logs.display());
            }
            Ok(())
        }) => r,
        _ = super::serve::shutdown_signal() => Err(anyhow::anyhow!(
            "interrupted; run the same command again to resume from {}", out.join("state.db").display()
        )),
    };

    stop_workers(&mut client, &tag, &mut children).await;
    let status = watched?;

    let th = args.thresholds.thresholds()?;
    let (cells, summary) = fetch_results_with(&mut client, &sub.sweep_id, &th).await?;
    // Files first: a reader that stops early (`| head`) loses none of them.
    // The status after the results: the counts the files describe.
    let ended = client.status(pb::StatusRequest { sweep_id: sub.sweep_id.clone() }).await.map_err(ClientError::from)?;
    let doc = ResultsDocument { provenance: crate::report::Provenance::of(&ended.into_inner()), summary, cells };
    let source = Source::Remote(Remote::plain(addr));
    write_exports(&source, out, &doc, &th, None, None).await?;
    print_results(args.format, &doc, &th)?;
    crate::runs::require_no_failures(&status)
}

/// Drains our workers through the coordinator, waits for them to exit, and
/// kills any that do not within 10 s.
async fn stop_workers(client: &mut crate::client::ControlClient, tag: &str, children: &mut [Child]) {
    if let Ok(ws) = client.list_workers(pb::ListWorkersRequest {}).await {
        for w in ws
            .into_inner()
            .workers
            .into_iter()
            .filter(|w| w.name.starts_with(tag) && w.state() != pb::WorkerState::Left)
        {
            let _ = client.drain(pb::DrainRequest { worker_id: w.worker_id }).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for c in children.iter_mut() {
        match tokio::time::timeout_at(deadline, c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }
}
