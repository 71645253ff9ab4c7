//! A sweep of a million runs against a real `gradsweep serve` (issue 12,
//! item 3): how long the submit takes, what it costs the coordinator in
//! memory and disk, and how fast `status` answers on it, idle and while
//! simulated workers take and finish its runs.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p gradsweep-tests --example big_sweep -- [CELLS] [SEEDS] [STATUS_CALLS] [WORKERS]
//! ```
//!
//! Defaults: 1,000 cells (learning rates) × 1,000 seeds = 1,000,000 runs,
//! 500 `Status` calls, 100 simulated workers. The coordinator runs with its
//! default run cap and its database in a temporary folder on this
//! machine's disk. Memory is the coordinator process's peak resident set
//! (`VmHWM`), read from `/proc`.

#![allow(clippy::print_stdout)] // the report is this tool's output

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_tests::{CoordinatorProc, finish_uncomputed, register_request};

fn grid(cells: usize, seeds: usize) -> String {
    format!(
        "[sweep]\nname = \"big\"\nseeds = {seeds}\n[train]\nmodel = \"mlp:64-8-10\"\ndataset = \"digits\"\n\
         epochs = 1\nbatch_size = 64\n[grid]\nlr = {{ log = [0.0001, 1.0], num = {cells} }}\n"
    )
}

/// A `/proc/<pid>/status` field in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or(f64::NAN)
}

/// `calls` sequential `Status` calls; their latencies in ms.
async fn status_latencies(
    control: &mut gradsweep_cli::client::ControlClient,
    sweep: &str,
    calls: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        control.status(pb::StatusRequest { sweep_id: sweep.into() }).await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// A worker that acquires and at once finishes (as failed) until `stop`.
async fn churn(url: String, name: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::connect(url).await?;
    let id = client.register(register_request(&name)).await?.into_inner().worker_id;
    while !stop.load(Ordering::Relaxed) {
        let a = client.acquire(pb::AcquireRequest { worker_id: id.clone(), wait_ms: 200 }).await?.into_inner();
        let Some(run) = a.run else { continue };
        client.finish(finish_uncomputed(&id, &run, "big_sweep: not computed")).await?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let cells = args.first().copied().unwrap_or(1000);
    let seeds = args.get(1).copied().unwrap_or(1000);
    let calls = args.get(2).copied().unwrap_or(500);
    let workers = args.get(3).copied().unwrap_or(100);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("state.db");
    let coord = CoordinatorProc::start(&db, 0, &[], dir.path());
    let mut control = gradsweep_cli::client::connect_control(&format!("127.0.0.1:{}", coord.port)).await?;
    let rss_before = proc_kb(coord.pid(), "VmRSS");

    let t = Instant::now();
    let s = control
        .submit(pb::SubmitRequest { grid_toml: grid(cells, seeds), file_name: "big.toml".into(), force_new: false })
        .await?
        .into_inner();
    let submit_s = t.elapsed().as_secs_f64();
    let peak_kb = proc_kb(coord.pid(), "VmHWM");
    let disk: u64 = ["", "-wal"]
        .iter()
        .filter_map(|x| std::fs::metadata(format!("{}{x}", db.display())).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "submit of {} runs ({} cells × {seeds} seeds): {submit_s:.2} s; coordinator peak RSS {:.0} MiB \
         ({:.0} MiB before); database {:.0} MiB ({:.0} bytes per run)",
        s.runs,
        s.cells,
        peak_kb as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        disk as f64 / (1 << 20) as f64,
        disk as f64 / s.runs.max(1) as f64
    );

    let mut idle = status_latencies(&mut control, &s.sweep_id, calls).await?;
    println!("status, idle: p50 {:.2} ms, p99 {:.2} ms ({calls} calls)", pct(&mut idle, 0.5), pct(&mut idle, 0.99));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..workers {
        tasks.spawn(churn(coord.url(), format!("big-{i}"), stop.clone(), done.clone()));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = done.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut busy = status_latencies(&mut control, &s.sweep_id, calls).await?;
    let rate = (done.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    println!(
        "status, {workers} workers granting and finishing ({rate:.0} runs/s meanwhile): p50 {:.2} ms, p99 {:.2} ms",
        pct(&mut busy, 0.5),
        pct(&mut busy, 0.99)
    );
    let st = control.status(pb::StatusRequest { sweep_id: s.sweep_id.clone() }).await?.into_inner();
    println!(
        "counts after: {} queued, {} failed (finished by the simulated workers) of {}",
        st.runs_queued, st.runs_failed, st.runs_total
    );
    println!("coordinator peak RSS at the end: {:.0} MiB", proc_kb(coord.pid(), "VmHWM") as f64 / 1024.0);
    Ok(())
}
