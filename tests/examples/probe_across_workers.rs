//! One probe of small-lenet on MNIST, computed by workers of several shapes
//! side by side in one process: the probe's wall time on the run's worker,
//! who computed its shards, and whether every result is the same bits.
//!
//! ```text
//! cargo run --release -p gradsweep-tests --example probe_across_workers -- [DATA_DIR] [ELL] [SHAPES]
//! ```
//!
//! `DATA_DIR` holds `mnist/` (default `data`; `deploy/fetch-data.sh mnist`);
//! `ELL` is the probe's fixed sketch size (default 1024); `SHAPES` lists
//! the worker sets to try, each as slots per worker joined by `+` (default
//! `1,2,1+1,2+2`: one slot; two slots; two workers of one slot; two workers
//! of two). Every shape runs the same one-epoch run (batch 128, lr 0.1,
//! momentum 0.9) against its own in-process coordinator, with real gRPC
//! between the coordinator and its workers; the probe after the epoch
//! covers all 60,000 training samples in 8 shards. Each worker runs with
//! its slots as threads of this process, so the shapes share this
//! machine's cores: on a machine with fewer cores than slots, more workers
//! cannot go faster, and the table shows what the wire costs instead.

#![allow(clippy::print_stdout)] // the report is this tool's output

use std::time::Duration;

use gradsweep_cli::client::fetch_results;
use gradsweep_tests::{InProcess, InProcessWorkers, fast_config, submit, wait_sweep_completed};

fn grid(data_dir: &str, ell: u32) -> String {
    format!(
        r#"
[sweep]
name = "probe-across-workers"
seeds = [0]
[train]
model = "small-lenet"
dataset = "mnist"
data_dir = "{data_dir}"
normalize = true
epochs = 1
batch_size = 128
lr = 0.1
momentum = 0.9
[probe]
every_epochs = 1
sketch_rank = {ell}
projections = 4
max_lag = 4
"#
    )
}

/// What one shape gave.
struct Outcome {
    shape: String,
    probe_seconds: f64,
    threads_lent: f64,
    shards_elsewhere: f64,
    result: gradsweep_shared::results::RunResult,
}

async fn run_shape(grid: &str, shape: &[u32]) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let mut config = fast_config(&dir.path().join("state.db"));
    // A probe at ℓ = 1,024 keeps the run's worker busy for minutes: leases
    // as in production.
    config.lease_ttl = Duration::from_secs(15);
    config.heartbeat_interval = Duration::from_secs(3);
    let server = InProcess::start(config).await;
    let mut control = server.control().await;
    let sweep = submit(&mut control, grid).await.sweep_id;
    let workers = InProcessWorkers::start(&server.url, shape).await;
    wait_sweep_completed(&control, &sweep, Duration::from_secs(3600)).await;
    let sum = |name: &'static str| workers.metric_sum(name);
    let probe_seconds = sum("gradsweep_worker_probe_seconds_sum").await.unwrap_or(0.0);
    let threads_lent = sum("gradsweep_worker_probe_slots_lent_total").await.unwrap_or(0.0);
    let shards_elsewhere = sum("gradsweep_worker_probe_shards_computed_total").await.unwrap_or(0.0);
    workers.stop().await;
    let (cells, _) = fetch_results(&mut control, &sweep).await?;
    server.stop().await;
    let mut result =
        cells.into_iter().next().and_then(|c| c.runs.into_iter().next()).ok_or_else(|| anyhow::anyhow!("no run"))?;
    result.run_id.clear();
    let shape = shape.iter().map(u32::to_string).collect::<Vec<_>>().join("+");
    Ok(Outcome { shape, probe_seconds, threads_lent, shards_elsewhere, result })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data_dir = args.first().map_or("data", String::as_str);
    let ell: u32 = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    let shapes: Vec<Vec<u32>> = args
        .get(2)
        .map_or("1,2,1+1,2+2", String::as_str)
        .split(',')
        .map(|s| s.split('+').map(str::parse).collect::<Result<Vec<u32>, _>>())
        .collect::<Result<_, _>>()?;
    let grid = grid(data_dir, ell);
    println!("small-lenet, MNIST (60,000 samples, 8 shards), one probe at ℓ = {ell}, {} cores", num_cpus());
    println!(
        "{:>10} {:>12} {:>10} {:>14} {:>14}  result",
        "workers", "probe (s)", "ratio", "slots lent", "shards remote"
    );
    let mut first: Option<Outcome> = None;
    for shape in &shapes {
        let o = run_shape(&grid, shape).await?;
        let (ratio, same) = match &first {
            None => (1.0, "reference".to_string()),
            Some(f) => (
                o.probe_seconds / f.probe_seconds,
                if gradsweep_tests::same(&f.result, &o.result) { "bit-identical".into() } else { "DIFFERS".into() },
            ),
        };
        println!(
            "{:>10} {:>12.1} {:>9.2}× {:>14} {:>14}  {same}",
            o.shape, o.probe_seconds, ratio, o.threads_lent, o.shards_elsewhere
        );
        if first.is_none() {
            first = Some(o);
        } else if same != "bit-identical" {
            anyhow::bail!("shape {} gave another result", o.shape);
        }
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
