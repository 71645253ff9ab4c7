//! Latency of one worker's calls to a coordinator with work queued, with
//! TCP_NODELAY off and on side by side in one run: `Acquire` (each grants a
//! run) and `Heartbeat`, over real gRPC on loopback, with the database on
//! this machine's disk.
//!
//! ```text
//! cargo run --release -p gradsweep-tests --example acquire_latency -- [CALLS]
//! ```

#![allow(clippy::print_stdout)] // the report is this tool's output

use std::time::{Duration, Instant};

use gradsweep_proto::v1 as pb;
use gradsweep_tests::{InProcess, fast_config, submit};

fn grid(runs: usize) -> String {
    let seeds: Vec<String> = (0..runs).map(|s| s.to_string()).collect();
    format!(
        r#"
[sweep]
name = "acquire-latency"
seeds = [{}]
[train]
model = "mlp:64-8-10"
dataset = "digits"
epochs = 1
batch_size = 64
lr = 0.05
"#,
        seeds.join(", ")
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Milliseconds of each call, sorted.
async fn measure(nodelay: bool, calls: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let mut config = fast_config(&dir.path().join("state.db"));
    config.tcp_nodelay = nodelay;
    config.lease_ttl = Duration::from_secs(60);
    let server = InProcess::start(config).await;
    let mut control = server.control().await;
    submit(&mut control, &grid(calls)).await;
    let mut wc = server.worker_client().await;
    let worker_id = wc.register(gradsweep_tests::register_request("latency")).await?.into_inner().worker_id;
    let (mut acquire, mut heartbeat) = (vec![], vec![]);
    for _ in 0..calls {
        let t = Instant::now();
        let granted =
            wc.acquire(pb::AcquireRequest { worker_id: worker_id.clone(), wait_ms: 1000 }).await?.into_inner().run;
        acquire.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(granted.is_some(), "work was queued, yet no run was granted");
        let t = Instant::now();
        wc.heartbeat(pb::HeartbeatRequest { worker_id: worker_id.clone(), runs: vec![], shards: vec![] }).await?;
        heartbeat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    server.stop().await;
    acquire.sort_by(f64::total_cmp);
    heartbeat.sort_by(f64::total_cmp);
    Ok((acquire, heartbeat))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let calls: usize = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    println!("one worker, work queued, {calls} calls each; milliseconds");
    println!(
        "{:>12} {:>12} {:>12} {:>14} {:>14}",
        "TCP_NODELAY", "Acquire p50", "Acquire p99", "Heartbeat p50", "Heartbeat p99"
    );
    let mut p50 = vec![];
    for nodelay in [false, true] {
        let (a, h) = measure(nodelay, calls).await?;
        println!(
            "{:>12} {:>12.2} {:>12.2} {:>14.2} {:>14.2}",
            if nodelay { "on" } else { "off" },
            percentile(&a, 0.5),
            percentile(&a, 0.99),
            percentile(&h, 0.5),
            percentile(&h, 0.99)
        );
        p50.push(percentile(&a, 0.5));
    }
    println!("Acquire p50, on ÷ off: {:.3}", p50[1] / p50[0]);
    Ok(())
}
