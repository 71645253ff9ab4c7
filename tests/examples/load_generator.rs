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
//! heartbeats every 3 s on its own task (the first at its id's phase, as a
//! real worker's), and loops: `Acquire` (wait 1 s),
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
//! With `GRADSWEEP_BIG_FINISH=ELL` set, one more worker holds a real run of
//! `mlp:64-177-10` (d = 13,285) on the digits with one probe at sketch rank
//! `ELL`, computed here beforehand, and a third of the way into the load
//! sends its reports (the probe's sketch, tens of MB at ELL = 1024) and
//! finishes it, which makes the coordinator store and merge it. A line then
//! gives the simulated workers' Heartbeat p99 from the big report's start
//! to 10 s after its finish, beside the p99 outside that window.
//!
//! After each load, two more lines: the p99 of `Acquire` and `Heartbeat`
//! per time window (as seen by the simulated workers, so a latency that
//! grows with the sweep shows), and the coordinator's own view from its
//! `/metrics` histograms (`gradsweep_call_seconds`,
//! `gradsweep_store_batch_seconds`): the bucket each p99 falls in, printed as
//! that bucket's bracket. Their difference from the workers' figures is time
//! spent outside the coordinator's handlers (the network stack, both
//! processes' schedulers on a shared machine).
//!
//! With `GRADSWEEP_BASELINE=/path/to/an/older/gradsweep` set, each worker
//! count runs first against that build, then against this one, and a ratio
//! line compares them: a side-by-side measure on the same machine, minutes
//! apart.

#![allow(clippy::print_stdout, clippy::print_stderr)] // the report is this tool's output; retries are told on stderr

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
    /// Each heartbeat's start, for windows: when (since the epoch of the
    /// load) and how long.
    heartbeat_at: Vec<(Instant, f64)>,
    /// Each granted `Acquire`'s start and duration.
    acquire_at: Vec<(Instant, f64)>,
}

/// The grid of the big run (`GRADSWEEP_BIG_FINISH`).
fn big_grid(ell: usize) -> String {
    format!(
        "[sweep]\nname = \"big\"\n[train]\nmodel = \"mlp:64-177-10\"\ndataset = \"digits\"\nepochs = 1\n\
         batch_size = 64\nlr = 0.05\n[probe]\nevery_epochs = 1\nsketch_rank = {ell}\nmemory_mb = 4096\n"
    )
}

/// A worker holding the big run: registered, its run acquired and
/// computed, its lease kept alive; `send` reports and finishes it.
struct BigRun {
    client: WorkerServiceClient<tonic::transport::Channel>,
    id: String,
    run: pb::RunAssignment,
    bodies: Vec<pb::report_request::Body>,
    fin: gradsweep_shared::spec::RunFinal,
    beats: tokio::task::JoinHandle<()>,
}

impl BigRun {
    async fn start(url: &str, control: &mut gradsweep_cli::client::ControlClient, ell: usize) -> anyhow::Result<Self> {
        submit(control, &big_grid(ell)).await;
        let mut client = WorkerServiceClient::connect(url.to_string()).await?;
        let id = client.register(register_request("big")).await?.into_inner().worker_id;
        let run = client
            .acquire(pb::AcquireRequest { worker_id: id.clone(), wait_ms: 1000 })
            .await?
            .into_inner()
            .run
            .ok_or_else(|| anyhow::anyhow!("the big run was not granted"))?;
        let beats = {
            let (mut c, id, lease) =
                (client.clone(), id.clone(), pb::RunLease { run_id: run.run_id.clone(), epoch: run.epoch });
            tokio::spawn(async move {
                loop {
                    let _ = c
                        .heartbeat(pb::HeartbeatRequest {
                            worker_id: id.clone(),
                            runs: vec![lease.clone()],
                            shards: vec![],
                        })
                        .await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
            })
        };
        let spec = gradsweep_worker::convert::assigned_spec(run.spec.clone())?;
        let (bodies, fin) = tokio::task::spawn_blocking(move || {
            let mut bodies = vec![];
            let fin = gradsweep_shared::run::execute(&spec, &AtomicBool::new(false), &mut |e| {
                bodies.extend(gradsweep_worker::convert::event_bodies(e, f64::NAN));
                std::ops::ControlFlow::Continue(())
            });
            fin.map(|f| (bodies, f))
        })
        .await??;
        Ok(BigRun { client, id, run, bodies, fin, beats })
    }

    /// Reports every body in one stream and finishes the run; returns the
    /// report's and the finish's durations and the bytes sent.
    async fn send(mut self) -> anyhow::Result<(Duration, Duration, usize)> {
        let bytes = self
            .bodies
            .iter()
            .map(|b| match b {
                pb::report_request::Body::Probe(c)
                | pb::report_request::Body::Trajectory(c)
                | pb::report_request::Body::Checkpoint(c) => c.data.len(),
                _ => 0,
            })
            .sum();
        let n = self.bodies.len() as u64;
        let msgs: Vec<pb::ReportRequest> = self
            .bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| pb::ReportRequest {
                worker_id: self.id.clone(),
                run_id: self.run.run_id.clone(),
                epoch: self.run.epoch,
                seq: i as u64 + 1,
                body: Some(body),
            })
            .collect();
        let t = Instant::now();
        self.client.report(tokio_stream::iter(msgs)).await?;
        let reported = t.elapsed();
        let t = Instant::now();
        self.client
            .finish(pb::FinishRequest {
                worker_id: self.id.clone(),
                run_id: self.run.run_id.clone(),
                epoch: self.run.epoch,
                last_seq: n,
                outcome: pb::RunOutcome::Completed as i32,
                error: String::new(),
                final_figures: Some(gradsweep_worker::convert::final_to_wire(&self.fin)),
            })
            .await?;
        self.beats.abort();
        Ok((reported, t.elapsed(), bytes))
    }
}

/// The p99 of each `window` of the load from `start`, as text.
fn p99_by_window(at: &[(Instant, f64)], start: Instant, window: Duration) -> String {
    let mut windows: Vec<Vec<f64>> = vec![];
    for &(t, ms) in at {
        let i = (t.saturating_duration_since(start).as_secs_f64() / window.as_secs_f64()) as usize;
        if windows.len() <= i {
            windows.resize(i + 1, vec![]);
        }
        windows[i].push(ms);
    }
    windows.iter_mut().map(|w| format!("{:.0}", pct(w, 0.99))).collect::<Vec<_>>().join(" ")
}

/// The bucket of a Prometheus histogram `name{labels}` that holds its
/// quantile `q`, as `(lower, upper]` in milliseconds (`upper` infinite
/// past the last bound); `None` when absent or empty.
fn bucket_of(text: &str, name: &str, labels: &str, q: f64) -> Option<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = vec![];
    let prefix = format!("{name}_bucket{{{labels}le=\"");
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(&prefix) else { continue };
        let (le, count) = rest.split_once("\"} ")?;
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
        buckets.push((le * 1e3, count.trim().parse().ok()?));
    }
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let i = buckets.iter().position(|&(_, c)| c >= q * total)?;
    Some((if i == 0 { 0.0 } else { buckets[i - 1].0 }, buckets[i].0))
}

/// The coordinator's own p99s, from its `/metrics`, as brackets.
fn coordinator_view(metrics: &str) -> String {
    let bracket = |b: Option<(f64, f64)>| match b {
        Some((lo, hi)) if hi.is_finite() => format!("in ({lo}, {hi}] ms"),
        Some((lo, _)) => format!("above {lo} ms"),
        None => "not recorded".into(),
    };
    let calls = ["Acquire", "Heartbeat", "Finish", "Report"]
        .iter()
        .map(|c| {
            format!(
                "{c} p99 {}",
                bracket(bucket_of(metrics, "gradsweep_call_seconds", &format!("call=\"{c}\","), 0.99))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sync = match bucket_of(metrics, "gradsweep_store_sync_seconds", "", 0.99) {
        None => String::new(),
        b => format!(", sync p99 {}", bracket(b)),
    };
    format!("{calls}; store batch p99 {}{sync}", bracket(bucket_of(metrics, "gradsweep_store_batch_seconds", "", 0.99)))
}

/// The coordinator's slow store batches (its `store batch slow` warnings):
/// how many, and the slowest with where its time went.
fn slow_batches(log: &str) -> String {
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .unwrap_or(0)
    };
    // (transitions, running, committing, syncing); builds before the
    // deferred sync logged no `sync_ms` (their commit held the fsync).
    let slow: Vec<[u64; 4]> = log
        .lines()
        .filter(|l| l.contains("store batch slow"))
        .map(|l| [field(l, "transitions="), field(l, "run_ms="), field(l, "commit_ms="), field(l, "sync_ms=")])
        .collect();
    match slow.iter().max_by_key(|[_, run, commit, sync]| run + commit + sync) {
        None => "no store batch over 100 ms".into(),
        Some([n, run, commit, sync]) => format!(
            "{} store batches over 100 ms ({} of them mostly commit and sync); the slowest: {n} transitions, {run} ms \
             running them, {commit} ms committing, {sync} ms syncing",
            slow.len(),
            slow.iter().filter(|[_, r, c, s]| c + s > *r).count()
        ),
    }
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
    // As a real worker: a connection refused or reset while a thousand
    // others open (the listener's backlog) is tried again after a pause.
    let mut attempt = 0;
    let (mut client, id) = loop {
        let registered = async {
            let mut c = WorkerServiceClient::connect(url.clone()).await?;
            let id = c.register(register_request(&name)).await?.into_inner().worker_id;
            anyhow::Ok((c, id))
        };
        match registered.await {
            Ok(r) => break r,
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("{name}: registration failed ({e}); again in {attempt}00 ms");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let held: Arc<Mutex<Option<pb::RunLease>>> = Arc::default();
    let heartbeats = {
        let (mut c, id, held, stop, samples) =
            (client.clone(), id.clone(), held.clone(), stop.clone(), samples.clone());
        tokio::spawn(async move {
            // As a real worker: the first beat at the id's phase, then
            // every 3 s.
            let mut wait = gradsweep_worker::worker::heartbeat_phase(&id, Duration::from_secs(3));
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(std::mem::replace(&mut wait, Duration::from_secs(3))).await;
                let runs: Vec<pb::RunLease> = held.lock().await.iter().cloned().collect();
                let t = Instant::now();
                if c.heartbeat(pb::HeartbeatRequest { worker_id: id.clone(), runs, shards: vec![] }).await.is_ok() {
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let mut s = samples.lock().await;
                    s.heartbeat.push(ms);
                    s.heartbeat_at.push((t, ms));
                }
            }
        })
    };
    let mut mine = Samples::default();
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let t = Instant::now();
        let a = client.acquire(pb::AcquireRequest { worker_id: id.clone(), wait_ms: 1000 }).await?.into_inner();
        let Some(run) = a.run else { continue };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        mine.acquire.push(ms);
        mine.acquire_at.push((t, ms));
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
    s.acquire_at.extend(mine.acquire_at);
    s.finish.extend(mine.finish);
    Ok(())
}

/// What one load run measured.
struct Measured {
    grants_per_s: f64,
    acquire_p99: f64,
    heartbeat_p99: f64,
    /// The coordinator's CPU time (user + system, every thread) per run
    /// granted during the load: far steadier than latencies on a shared
    /// machine, so the figure to compare two builds by.
    cpu_us_per_run: f64,
}

/// CPU seconds (user + system, all threads) process `pid` has used.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command's closing parenthesis: field 3 (state) onwards;
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    #[allow(unsafe_code)]
    // SAFETY: sysconf reads a configuration value and touches no memory.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
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
    let metrics_port_file = dir.path().join("metrics.port");
    let metrics_port_arg = metrics_port_file.display().to_string();
    let coord = CoordinatorProc::start_binary(
        binary,
        "127.0.0.1",
        &dir.path().join("state.db"),
        0,
        &[
            "--lease-ttl-ms",
            "15000",
            "--heartbeat-ms",
            "3000",
            "--max-runs",
            &max_runs,
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-port-file",
            &metrics_port_arg,
        ],
        dir.path(),
    );
    let mut control = gradsweep_cli::client::connect_control(&format!("127.0.0.1:{}", coord.port)).await?;
    let big_ell: Option<usize> = std::env::var("GRADSWEEP_BIG_FINISH").ok().map(|v| v.parse()).transpose()?;
    let big = match big_ell {
        Some(ell) => Some(BigRun::start(&coord.url(), &mut control, ell).await?),
        None => None,
    };
    submit(&mut control, &grid(runs)).await;
    let (stop, granted) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let cpu_before = cpu_seconds(coord.pid())?;
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
    let big = big.map(|b| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds / 3)).await;
            let at = Instant::now();
            b.send().await.map(|(rep, fin, bytes)| (at, rep, fin, bytes))
        })
    });
    // Until every run is granted (and so finished), or time is up.
    while granted.load(Ordering::Relaxed) < runs as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let big = match big {
        Some(h) => Some(h.await??),
        None => None,
    };
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    let n = granted.load(Ordering::Relaxed);
    let cpu = cpu_seconds(coord.pid())? - cpu_before;
    let mut s = samples.lock().await;
    if let Some((at, rep, fin, bytes)) = big {
        let (reported, end) = (at + rep, at + rep + fin + Duration::from_secs(10));
        let (mut inside, mut outside): (Vec<f64>, Vec<f64>) = (vec![], vec![]);
        let (mut during_report, mut after_report): (Vec<f64>, Vec<f64>) = (vec![], vec![]);
        for &(t, ms) in &s.heartbeat_at {
            if t >= at && t <= end {
                inside.push(ms);
                if t <= reported { during_report.push(ms) } else { after_report.push(ms) }
            } else {
                outside.push(ms)
            }
        }
        println!(
            "big finish: {:.1} MB reported in {:.2} s, finished in {:.2} s; others' Heartbeat p99 {:.2} ms over {} \
             beats from the report's start to 10 s after the finish, {:.2} ms over {} other beats",
            bytes as f64 / 1e6,
            rep.as_secs_f64(),
            fin.as_secs_f64(),
            pct(&mut inside, 0.99),
            inside.len(),
            pct(&mut outside, 0.99),
            outside.len()
        );
        println!(
            "big finish, by phase: others' Heartbeat p99 {:.2} ms over {} beats while it reported, {:.2} ms over {} \
             beats from the end of its report to 10 s after its finish (its cell's merge)",
            pct(&mut during_report, 0.99),
            during_report.len(),
            pct(&mut after_report, 0.99),
            after_report.len()
        );
        let near: Vec<(Instant, f64)> = s.heartbeat_at.iter().copied().filter(|&(t, _)| t >= at && t <= end).collect();
        println!(
            "big finish, by second from the report's start: others' Heartbeat p99 {} ms (reported after {:.1} s)",
            p99_by_window(&near, at, Duration::from_secs(1)),
            rep.as_secs_f64()
        );
        // With RUST_LOG=info,gradsweep_coordinator=debug the coordinator
        // logs each cell merge's time.
        let merges: Vec<f64> = coord
            .log()
            .lines()
            .filter(|l| l.contains("cell merged"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("seconds=")).and_then(|v| v.parse().ok()))
            .collect();
        if let Some(slowest) = merges.iter().copied().reduce(f64::max) {
            println!("big finish: {} cell merges logged, the slowest {slowest:.2} s", merges.len());
        }
    }
    let m = Measured {
        grants_per_s: n as f64 / elapsed,
        acquire_p99: pct(&mut s.acquire, 0.99),
        heartbeat_p99: pct(&mut s.heartbeat, 0.99),
        cpu_us_per_run: cpu * 1e6 / n.max(1) as f64,
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
    let window = Duration::from_secs((seconds / 10).max(10));
    println!(
        "{:>9} {workers:>8}  p99 per {} s, seen by the workers: Acquire {} ms; Heartbeat {} ms",
        "windows",
        window.as_secs(),
        p99_by_window(&s.acquire_at, started, window),
        p99_by_window(&s.heartbeat_at, started, window)
    );
    let metrics = match std::fs::read_to_string(&metrics_port_file).ok().and_then(|p| p.trim().parse::<u16>().ok()) {
        Some(port) => tokio::task::spawn_blocking(move || gradsweep_tests::http_get(port, "/metrics").2).await?,
        None => String::new(),
    };
    println!("{:>9} {workers:>8}  in the coordinator: {}", "server", coordinator_view(&metrics));
    println!("{:>9} {workers:>8}  {}", "stalls", slow_batches(&coord.log()));
    println!(
        "{:>9} {workers:>8}  the coordinator used {cpu:.1} s of CPU over the load: {:.0} µs per run granted (its grant, \
         finish and share of heartbeats)",
        "cpu", m.cpu_us_per_run
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
            "{:>9} {w:>8}  grants/s ×{:.2}, Acquire p99 ×{:.3}, Heartbeat p99 ×{:.3}, coordinator CPU per run ×{:.3} \
             (this / baseline)",
            "ratio",
            after.grants_per_s / before.grants_per_s,
            after.acquire_p99 / before.acquire_p99,
            after.heartbeat_p99 / before.heartbeat_p99,
            after.cpu_us_per_run / before.cpu_us_per_run
        );
    }
    Ok(())
}
