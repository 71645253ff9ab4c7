//! Test harness for gradsweep's end-to-end and fault tests.
//!
//! Starts real coordinator and worker processes (the binaries cargo built
//! for this workspace) or in-process servers on port 0, and offers the
//! small helpers the tests share.
//!
//! # Layout
//! * [`bin`] — locate the built binaries.
//! * [`browser`] — headless Chromium: a page's DOM, console, requests and screenshot.
//! * [`CoordinatorProc`] / [`WorkerProc`] — child processes with signals.
//! * [`InProcess`] — a coordinator served in this process on port 0.
//! * [`grids`] — small, fast grid files.
//! * [`wait_until`] — polling with a deadline.
//! * [`cli`] / [`cli_env`] — run the `gradsweep` CLI.
//! * [`http_get`] / [`metric`] — scrape a `/metrics` endpoint and read a sample.
//! * [`Proxy`] — a TCP proxy whose connections a test can cut.
//! * [`offline_runs`] / [`audit`] / [`verify_against_offline`] — undisturbed runs as the oracle.

pub mod browser;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gradsweep_cli::client::{ControlClient, connect_control};
use gradsweep_coordinator::CoordinatorConfig;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use tonic::transport::Channel;

/// Path of a workspace binary (`gradsweep` or `gradsweep-worker`) built by
/// cargo next to this test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; panics
/// naming `what` if it never does.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(poll_until(timeout, cond).await, "timed out after {timeout:?} waiting for {what}");
}

/// Polls `cond` every 50 ms until it holds (true) or `timeout` passes
/// (false), so that the caller can say what it saw when it gives up.
pub async fn poll_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The value of `key=` in one line of a coordinator or worker log.
pub fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(&format!(" {key}=")).nth(1).and_then(|v| v.split_whitespace().next())
}

/// A `gradsweep serve` child process.
pub struct CoordinatorProc {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Database file.
    pub db: PathBuf,
    args: Vec<String>,
    host: String,
    log: PathBuf,
    binary: PathBuf,
}

impl CoordinatorProc {
    /// Starts a coordinator on 127.0.0.1:`port` (0 picks one) with the database `db`.
    pub fn start(db: &Path, port: u16, extra: &[&str], log_dir: &Path) -> Self {
        Self::start_on("127.0.0.1", db, port, extra, log_dir)
    }

    /// Starts a coordinator listening on `host` (e.g. `0.0.0.0`, still
    /// reached through 127.0.0.1 by the tests).
    pub fn start_on(host: &str, db: &Path, port: u16, extra: &[&str], log_dir: &Path) -> Self {
        Self::start_binary(&bin("gradsweep"), host, db, port, extra, log_dir)
    }

    /// Starts the `gradsweep` executable at `binary` (another build, for a
    /// side-by-side benchmark) as [`CoordinatorProc::start_on`] does.
    pub fn start_binary(binary: &Path, host: &str, db: &Path, port: u16, extra: &[&str], log_dir: &Path) -> Self {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let log = log_dir.join("coordinator.log");
        let mut me = CoordinatorProc {
            child: None,
            port,
            db: db.to_path_buf(),
            args,
            host: host.into(),
            log,
            binary: binary.to_path_buf(),
        };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let port_file = self.db.with_extension("port");
        let _ = std::fs::remove_file(&port_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg("--listen")
            .arg(format!("{}:{}", self.host, self.port))
            .arg("--db")
            .arg(&self.db)
            .arg("--port-file")
            .arg(&port_file)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start coordinator");
        self.child = Some(child);
        self.port = read_port_file(&port_file, &format!("coordinator (log: {})", self.log.display()));
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("coordinator running")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// Starts again on the same database and port.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits up to 20 s for a port file written by a starting process.
pub fn read_port_file(path: &Path, who: &str) -> u16 {
    let start = Instant::now();
    loop {
        if let Ok(p) = std::fs::read_to_string(path)
            && let Ok(p) = p.trim().parse()
        {
            return p;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{who} did not write {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over plain HTTP/1.1 on 127.0.0.1:`port`; returns (status
/// line, headers, body).
pub fn http_get(port: u16, path: &str) -> (String, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response has a header");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_lowercase(), body.to_string())
}

/// The value of the sample `name_and_labels` (e.g. `x{state="a"}`) in a
/// Prometheus text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A `gradsweep-worker` child process.
pub struct WorkerProc {
    /// The child.
    pub child: Child,
    /// Name given to it.
    pub name: String,
}

impl WorkerProc {
    /// Starts a worker against `url`; its log goes to `log_dir/<name>.log`.
    pub fn start(url: &str, name: &str, slots: u32, log_dir: &Path) -> Self {
        Self::start_with(url, name, slots, &[], log_dir)
    }

    /// [`WorkerProc::start`] with extra command-line arguments.
    pub fn start_with(url: &str, name: &str, slots: u32, extra: &[&str], log_dir: &Path) -> Self {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("worker log");
        let child = Command::new(bin("gradsweep-worker"))
            .args(["--coordinator", url, "--name", name, "--slots", &slots.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start worker");
        WorkerProc { child, name: name.to_string() }
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        signal(self.child.id(), sig);
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A TCP proxy on 127.0.0.1:0 in front of a local port, whose connections
/// the test can cut at any moment (the network-fault injector).
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` (chosen) to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
        let list = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                let mut l = list.lock().unwrap();
                l.retain(|t| !t.is_finished());
                l.push(task);
            }
        });
        Proxy { port, conns, accept }
    }

    /// Drops every open connection (both directions close at once).
    /// Returns how many were cut.
    pub fn cut(&self) -> usize {
        let mut l = self.conns.lock().unwrap();
        let n = l.iter().filter(|t| !t.is_finished()).count();
        l.drain(..).for_each(|t| t.abort());
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Runs the `gradsweep` CLI and returns its output.
pub fn cli(args: &[&str]) -> Output {
    cli_env(args, &[])
}

/// Runs the `gradsweep` CLI with extra environment variables.
pub fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin("gradsweep"));
    c.args(args).stdin(Stdio::null()).env_remove("GRADSWEEP_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run gradsweep")
}

/// A coordinator served inside the test process on port 0.
pub struct InProcess {
    /// Its address.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Serves `config` on 127.0.0.1:0.
    pub async fn start(config: CoordinatorConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            gradsweep_coordinator::serve(config, listener, async move {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        InProcess { url, stop: Some(tx), task: Some(task) }
    }

    /// A worker-service client.
    pub async fn worker_client(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::connect(self.url.clone()).await.expect("connect worker client")
    }

    /// A control client.
    pub async fn control(&self) -> ControlClient {
        connect_control(&self.url).await.expect("connect control client")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// Workers run in this process, each with its Prometheus endpoint on a
/// port of its own.
pub struct InProcessWorkers {
    stop: tokio::sync::watch::Sender<gradsweep_worker::Shutdown>,
    workers: Vec<(u16, tokio::task::JoinHandle<Result<(), gradsweep_worker::worker::WorkerError>>)>,
}

impl InProcessWorkers {
    /// One worker per entry of `slots` (with that many slots), named
    /// `w{i}-slots-{n}`, against the coordinator at `url`.
    pub async fn start(url: &str, slots: &[u32]) -> Self {
        let (stop, stop_rx) = tokio::sync::watch::channel(gradsweep_worker::Shutdown::None);
        let mut workers = vec![];
        for (i, &n) in slots.iter().enumerate() {
            let mut cfg = gradsweep_worker::WorkerConfig::new(url, n);
            cfg.name = format!("w{i}-slots-{n}");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a metrics port");
            let port = listener.local_addr().expect("metrics port").port();
            let task = tokio::spawn(gradsweep_worker::run_worker_with_metrics(cfg, Some(listener), stop_rx.clone()));
            workers.push((port, task));
        }
        InProcessWorkers { stop, workers }
    }

    /// The sum over the workers of metric `name`; `None` if one of them
    /// does not export it.
    pub async fn metric_sum(&self, name: &str) -> Option<f64> {
        let mut sum = 0.0;
        for &(port, _) in &self.workers {
            let text = tokio::task::spawn_blocking(move || http_get(port, "/metrics").2).await.ok()?;
            sum += metric(&text, name)?;
        }
        Some(sum)
    }

    /// Terminates every worker and waits for them; panics if one failed.
    pub async fn stop(self) {
        let _ = self.stop.send(gradsweep_worker::Shutdown::Terminate);
        for (_, task) in self.workers {
            task.await.expect("worker task").expect("worker");
        }
    }
}

/// A worker's registration as a test or benchmark sends it: this build's
/// protocol version, one slot.
pub fn register_request(name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        protocol_version: gradsweep_proto::PROTOCOL_VERSION,
        name: name.into(),
        hostname: "test".into(),
        slots: 1,
        pid: std::process::id(),
        build_version: "test".into(),
        trainers: vec![],
    }
}

/// A simulated worker's finish of a granted run, as failed without
/// computing: the same transaction as any finish, without a cell merge
/// (the load benchmarks' way to end a run at once).
pub fn finish_uncomputed(worker_id: &str, run: &pb::RunAssignment, why: &str) -> pb::FinishRequest {
    pb::FinishRequest {
        worker_id: worker_id.into(),
        run_id: run.run_id.clone(),
        epoch: run.epoch,
        last_seq: 0,
        outcome: pb::RunOutcome::Failed as i32,
        error: why.into(),
        final_figures: None,
    }
}

/// Fast coordinator settings for tests: short leases.
pub fn fast_config(db: &Path) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(db);
    c.lease_ttl = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(300);
    c
}

/// Submits a grid through the control API.
pub async fn submit(client: &mut ControlClient, toml: &str) -> pb::SubmitResponse {
    client
        .submit(pb::SubmitRequest { grid_toml: toml.into(), file_name: "test.toml".into(), force_new: false })
        .await
        .expect("submit")
        .into_inner()
}

/// Small grid files.
pub mod grids {
    /// A tiny sweep: 2 lr × 2 batch sizes × 2 seeds of a 64-16-10 net on
    /// digits; `epochs` sets its length.
    pub fn tiny(name: &str, epochs: u32) -> String {
        mlp(name, "[0, 1]", epochs, "", 2)
    }

    /// A 64-16-10 net on digits over lr ∈ {0.05, 0.1} × batch ∈ {16, 64}:
    /// `seeds` (TOML), `epochs`, extra `[train]` lines, probes every `probe_every` epochs.
    pub fn mlp(name: &str, seeds: &str, epochs: u32, train_extra: &str, probe_every: u32) -> String {
        format!(
            r#"
[sweep]
name = "{name}"
seeds = {seeds}
[train]
model = "mlp:64-16-10"
dataset = "digits"
epochs = {epochs}
{train_extra}
[probe]
every_epochs = {probe_every}
sketch_rank = 16
projections = 4
max_lag = 8
[grid]
lr = [0.05, 0.1]
batch_size = [16, 64]
"#
        )
    }
}

/// What an undisturbed run produces: its result (as the coordinator would
/// report it) and its last checkpoint.
pub struct Offline {
    /// The run's result, with `run_id` as the coordinator names it.
    pub result: gradsweep_shared::results::RunResult,
    /// The encoding of its last checkpoint (none for runs too short to have one).
    pub last_checkpoint: Option<Vec<u8>>,
}

/// Executes every run of `grid` offline, undisturbed, on all cores; keyed by
/// (cell, seed). `sweep` names the runs as the coordinator does.
pub fn offline_runs(grid: &str, sweep: &str) -> std::collections::BTreeMap<(u32, u64), Offline> {
    use gradsweep_shared::results::{RunData, run_result};
    use gradsweep_shared::run::{RunEvent, execute};
    use std::ops::ControlFlow;
    use std::sync::atomic::AtomicBool;

    let plan = gradsweep_shared::parse_grid(grid, "grid", Default::default()).expect("grid parses");
    let jobs: Vec<(&gradsweep_shared::grid::Cell, u64)> =
        plan.cells.iter().flat_map(|c| plan.seeds.iter().map(move |&s| (c, s))).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(jobs.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(std::collections::BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&(cell, seed)) = jobs.get(i) else { return };
                    let (mut probes, mut trajectory, mut last) = (vec![], None, None);
                    let fin = execute(&cell.run_spec(seed), &AtomicBool::new(false), &mut |e| {
                        match e {
                            RunEvent::Probe(p) => probes.push(*p),
                            RunEvent::Trajectory(t) => trajectory = Some(*t),
                            RunEvent::Checkpoint(c) => last = Some(c.encode()),
                            RunEvent::Progress { .. } | RunEvent::ProbePass(_) => {}
                        }
                        ControlFlow::Continue(())
                    })
                    .expect("offline run");
                    let run_id = format!("{sweep}/c{}/s{seed}", cell.index);
                    let result = run_result(&RunData { run_id, seed, fin, probes, trajectory }, &Default::default());
                    out.lock().unwrap().insert((cell.index, seed), Offline { result, last_checkpoint: last });
                }
            });
        }
    });
    out.into_inner().unwrap()
}

/// Bit-for-bit equality of two run results, where a statistic that is
/// undefined (NaN) in both counts as equal (`==` on f64 would say no). The
/// JSON form keeps every finite f64 exactly (`float_roundtrip`).
pub fn same(a: &gradsweep_shared::results::RunResult, b: &gradsweep_shared::results::RunResult) -> bool {
    serde_json::to_string(a).ok() == serde_json::to_string(b).ok()
}

/// How a sweep's results compare with undisturbed offline runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Runs the grid defines.
    pub runs: usize,
    /// Runs missing from the results.
    pub lost: usize,
    /// Extra copies of a run in the results (a run merged twice).
    pub duplicated: usize,
    /// Runs present whose result differs from the undisturbed run's.
    pub mismatched: usize,
    /// Runs whose stored last checkpoint differs (only when a database is given).
    pub checkpoint_mismatched: usize,
}

/// Compares the coordinator's cells (and, with `db`, its stored last
/// checkpoints) with undisturbed offline runs, counting instead of failing.
pub fn audit(grid: &str, sweep: &str, cells: &[gradsweep_shared::results::CellResult], db: Option<&Path>) -> Audit {
    let offline = offline_runs(grid, sweep);
    let mut a = Audit { runs: offline.len(), ..Audit::default() };
    let mut seen: std::collections::BTreeMap<(u32, u64), usize> = Default::default();
    for c in cells {
        for r in &c.runs {
            *seen.entry((c.index, r.seed)).or_default() += 1;
            match offline.get(&(c.index, r.seed)) {
                Some(o) if same(&o.result, r) => {}
                Some(o) => {
                    a.mismatched += 1;
                    eprintln!(
                        "run {} differs from the undisturbed run:\n  got  {r:?}\n  want {:?}",
                        r.run_id, o.result
                    );
                }
                None => a.mismatched += 1,
            }
        }
    }
    a.lost = offline.keys().filter(|k| !seen.contains_key(k)).count();
    a.duplicated = seen.values().map(|n| n - 1).sum();
    if let Some(db) = db {
        let store = gradsweep_coordinator::store::Store::open(
            db,
            gradsweep_coordinator::store::LeasePolicy { ttl_ms: 15_000, max_attempts: 10 },
        )
        .expect("open the database");
        for (k, o) in &offline {
            let stored = store.last_checkpoint(&o.result.run_id).expect("read checkpoint");
            if stored != o.last_checkpoint {
                a.checkpoint_mismatched += 1;
                eprintln!("checkpoint of {:?} differs", k);
            }
        }
    }
    a
}

/// Re-executes every run of `grid` offline with the science core and checks
/// that the coordinator's results hold each run exactly once, bit-identical:
/// same final figures (including the weights' hash), the same number of
/// probes with identical spectra, the same trajectory statistics. Returns
/// the number of runs checked.
pub fn verify_against_offline(grid: &str, cells: &[gradsweep_shared::results::CellResult]) -> usize {
    let plan = gradsweep_shared::parse_grid(grid, "grid", Default::default()).expect("grid parses");
    assert_eq!(cells.len(), plan.cells.len(), "every cell is reported");
    let sweep = cells.iter().flat_map(|c| &c.runs).next().map(|r| r.run_id.split('/').next().unwrap().to_string());
    let offline = offline_runs(grid, sweep.as_deref().unwrap_or(""));
    let mut checked = 0;
    for (cell, got) in plan.cells.iter().zip(cells) {
        assert_eq!(got.index, cell.index);
        assert_eq!(got.seeds_done, plan.seeds.len(), "cell {}: every seed done once", cell.index);
        let seeds: Vec<u64> = got.runs.iter().map(|r| r.seed).collect();
        assert_eq!(seeds, plan.seeds, "cell {}: each seed exactly once, in order", cell.index);
        for r in &got.runs {
            let want = &offline[&(cell.index, r.seed)].result;
            assert!(same(r, want), "run {} differs from an undisturbed offline run:\n{r:?}\n{want:?}", r.run_id);
            checked += 1;
        }
    }
    checked
}

/// Waits until every run of `sweep` completed.
pub async fn wait_sweep_completed(client: &ControlClient, sweep: &str, timeout: Duration) {
    wait_until(timeout, &format!("sweep {sweep} to complete"), || {
        let mut c = client.clone();
        let id = sweep.to_string();
        async move {
            let s = c.status(pb::StatusRequest { sweep_id: id }).await.expect("status").into_inner();
            s.runs_completed == s.runs_total
        }
    })
    .await;
}

/// The coordinator's record of the worker called `name`, if it has
/// registered.
pub async fn worker_named(client: &ControlClient, name: &str) -> Option<pb::WorkerInfo> {
    let ws = client.clone().list_workers(pb::ListWorkersRequest {}).await.expect("workers").into_inner().workers;
    ws.into_iter().find(|w| w.name == name)
}

/// Whether the worker called `name` holds at least one run.
pub async fn worker_holds_run(client: &ControlClient, name: &str) -> bool {
    worker_named(client, name).await.is_some_and(|w| !w.runs.is_empty())
}

/// Waits until the worker named `name` holds at least one run.
pub async fn wait_worker_holds_run(client: &ControlClient, name: &str, timeout: Duration) {
    wait_until(timeout, &format!("worker {name} to hold a run"), || worker_holds_run(client, name)).await;
}

/// Stops `worker` (SIGSTOP) while it holds a run that has been going for
/// `progress`, and returns the runs the coordinator says it holds. They are
/// read after the freeze, once anything the worker had already sent has
/// landed: a run it finished just before the signal is not one it can lose.
/// If it froze between runs, it is thawed and the attempt repeated.
pub async fn freeze_holding_run(client: &ControlClient, worker: &WorkerProc, progress: Duration) -> Vec<String> {
    for _ in 0..5 {
        wait_worker_holds_run(client, &worker.name, Duration::from_secs(60)).await;
        tokio::time::sleep(progress).await;
        worker.signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = worker_named(client, &worker.name).await.map(|w| w.runs).unwrap_or_default();
        if !held.is_empty() {
            return held;
        }
        worker.signal(libc::SIGCONT);
    }
    panic!("worker {} never froze holding a run", worker.name);
}
