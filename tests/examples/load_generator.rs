//! Drives simulated workers against a real `gradsweep serve` process over
//! real gRPC, and prints lease grants per second and call latencies.
//!
//! ```text
//! cargo build --release --workspace
//! cargo run --release -p gradsweep-tests --example load_generator -- [WORKERS,...] [RUNS] [SECONDS] [HOLD_MS]
//! ```
//!
//! For each worker count (default `1,10,100`), a fresh coordinator (its
//! database in a temporary folder on this machine's disk, production lease
//! settings: 15 s TTL, 3 s heartbeats) gets a sweep of `RUNS` runs (default
//! 2,000). Each simulated worker registers on its own connection,
//! heartbeats every 3 s on its own task, and loops: `Acquire` (wait 1 s),
//! then, after `HOLD_MS` (default 0) standing in for the run's compute,
//! `Finish`, as a run that failed without computing (the same transaction
//! as any finish, without a cell merge). With no hold the workers form a
//! closed loop without think time: every call waits for the one before, so
//! grants/s is the coordinator's saturation throughput and latency is
//! queueing (workers ÷ throughput). A hold offers a fixed load instead,
//! up to workers ÷ hold grants/s. It stops when the
//! sweep is done or after `SECONDS` (default 60). Latencies of `Acquire`
//! count only calls that were granted a run (work queued); `lost` counts
//! the run leases the coordinator let lapse (its log's lines for them):
//! what a heartbeat answers cannot tell a lapsed lease from one whose
//! finish was committed while the heartbeat was under way.
//!
//! With `GRADSWEEP_BASELINE=/path/to/an/older/gradsweep` set, each worker
//! count runs first against that build, then against this one, and a ratio
//! line compares them: a side-by-side measure on the same machine, minutes
//! apart.

#![allow(clippy::print_stdout)] // the report is this tool's output

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_tests::{CoordinatorProc, finish_uncomputed, register_request, submit};
use tokio::sync::Mutex;

fn grid(runs: usize) -> String {
    format!(
        "[sweep]\nname = \"load\"\nseeds = {runs}\n[train]\nmodel = \"mlp:64-8-10\"\ndataset = \"digits\"\nepochs = 1\n\
         batch_size = 64\nlr = 0.05\n"
    )
}

/// Latencies in milliseconds, per call kind.
#[derive(Default)]
struct Samples {
    acquire: Vec<f64>,
    finish: Vec<f64>,
    heartbeat: Vec<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn simulated_worker(
    url: String,
    name: String,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    granted: Arc<AtomicU64>,
    samples: Arc<Mutex<Samples>>,
    hold: Duration,
) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::connect(url.clone()).await?;
    let id = client.register(register_request(&name)).await?.into_inner().worker_id;
    let held: Arc<Mutex<Option<pb::RunLease>>> = Arc::default();
    let heartbeats = {
        let (mut c, id, held, stop, samples) =
            (client.clone(), id.clone(), held.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let runs: Vec<pb::RunLease> = held.lock().await.iter().cloned().collect();
                let t = Instant::now();
                if c.heartbeat(pb::HeartbeatRequest { worker_id: id.clone(), runs, shards: vec![] }).await.is_ok() {
                    samples.lock().await.heartbeat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        })
    };
    let mut mine = Samples::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let t = Instant::now();
        let a = client.acquire(pb::AcquireRequest { worker_id: id.clone(), wait_ms: 1000 }).await?.into_inner();
        let Some(run) = a.run else { continue };
        mine.acquire.push(t.elapsed().as_secs_f64() * 1e3);
        granted.fetch_add(1, Ordering::Relaxed);
        *held.lock().await = Some(pb::RunLease { run_id: run.run_id.clone(), epoch: run.epoch });
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        let t = Instant::now();
        let finished = client.finish(finish_uncomputed(&id, &run, "load generator: not computed")).await;
        match finished {
            Ok(_) => mine.finish.push(t.elapsed().as_secs_f64() * 1e3),
            // The lease lapsed before the finish arrived (the run was
            // granted again, to another worker): counted from the log.
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
            Err(s) => return Err(s.into()),
        }
        *held.lock().await = None;
    }
    heartbeats.abort();
    let mut s = samples.lock().await;
    s.acquire.extend(mine.acquire);
    s.finish.extend(mine.finish);
    Ok(())
}

/// What one load run measured.
struct Measured {
    grants_per_s: f64,
    acquire_p99: f64,
    heartbeat_p99: f64,
}

async fn load(
    binary: &std::path::Path,
    label: &str,
    workers: usize,
    runs: usize,
    seconds: u64,
    hold: Duration,
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let max_runs = runs.max(10_000).to_string();
    let coord = CoordinatorProc::start_binary(
        binary,
        "127.0.0.1",
        &dir.path().join("state.db"),
        0,
        &["--lease-ttl-ms", "15000", "--heartbeat-ms", "3000", "--max-runs", &max_runs],
        dir.path(),
    );
    let mut control = gradsweep_cli::client::connect_control(&format!("127.0.0.1:{}", coord.port)).await?;
    submit(&mut control, &grid(runs)).await;
    let (stop, granted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..workers {
        tasks.spawn(simulated_worker(
            coord.url(),
            format!("sim-{i}"),
            deadline,
            stop.clone(),
            granted.clone(),
            samples.clone(),
            hold,
        ));
    }
    // Until every run is granted (and so finished), or time is up.
    while granted.load(Ordering::Relaxed) < runs as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    let n = granted.load(Ordering::Relaxed);
    let mut s = samples.lock().await;
    let m = Measured {
        grants_per_s: n as f64 / elapsed,
        acquire_p99: pct(&mut s.acquire, 0.99),
        heartbeat_p99: pct(&mut s.heartbeat, 0.99),
    };
    println!(
        "{label:>9} {workers:>8} {n:>7} {elapsed:>8.1} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6}",
        m.grants_per_s,
        pct(&mut s.acquire, 0.5),
        pct(&mut s.acquire, 0.99),
        pct(&mut s.finish, 0.5),
        pct(&mut s.finish, 0.99),
        pct(&mut s.heartbeat, 0.99),
        {
            let log = coord.log();
            log.matches("lease lapsed; run requeued").count() + log.matches("too many lapsed leases").count()
        }
    );
    Ok(m)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts: Vec<usize> =
        args.first().map_or("1,10,100", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let runs: usize = args.get(1).map_or(Ok(2000), |s| s.parse())?;
    let seconds: u64 = args.get(2).map_or(Ok(60), |s| s.parse())?;
    let hold = Duration::from_millis(args.get(3).map_or(Ok(0), |s| s.parse())?);
    println!(
        "simulated workers against `gradsweep serve`, {runs} runs, at most {seconds} s each, each run held {} ms; \
         latencies in ms",
        hold.as_millis()
    );
    println!(
        "{:>9} {:>8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "build",
        "workers",
        "granted",
        "seconds",
        "grants/s",
        "acq p50",
        "acq p99",
        "fin p50",
        "fin p99",
        "hb p99",
        "lost"
    );
    let baseline = std::env::var_os("GRADSWEEP_BASELINE").map(std::path::PathBuf::from);
    let this = gradsweep_tests::bin("gradsweep");
    for w in counts {
        let Some(old) = &baseline else {
            load(&this, "this", w, runs, seconds, hold).await?;
            continue;
        };
        let before = load(old, "baseline", w, runs, seconds, hold).await?;
        let after = load(&this, "this", w, runs, seconds, hold).await?;
        println!(
            "{:>9} {w:>8}  grants/s ×{:.2}, Acquire p99 ×{:.3}, Heartbeat p99 ×{:.3} (this / baseline)",
            "ratio",
            after.grants_per_s / before.grants_per_s,
            after.acquire_p99 / before.acquire_p99,
            after.heartbeat_p99 / before.heartbeat_p99
        );
    }
    Ok(())
}
