//! Test harness for gradsweep's end-to-end and fault tests.
//!
//! Starts real coordinator and worker processes (the binaries cargo built
//! for this workspace) or in-process servers on port 0, and offers the
//! small helpers the tests share.
//!
//! # Layout
//! * [`bin`] — locate the built binaries.
//! * [`CoordinatorProc`] / [`WorkerProc`] — child processes with signals.
//! * [`InProcess`] — a coordinator served in this process on port 0.
//! * [`grids`] — small, fast grid files.
//! * [`wait_until`] — polling with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gradsweep_coordinator::CoordinatorConfig;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::control_service_client::ControlServiceClient;
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

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `gradsweep serve` child process.
pub struct CoordinatorProc {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Database file.
    pub db: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl CoordinatorProc {
    /// Starts a coordinator on `port` (0 picks one) with the database `db`.
    pub fn start(db: &Path, port: u16, extra: &[&str], log_dir: &Path) -> Self {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let log = log_dir.join("coordinator.log");
        let mut me = CoordinatorProc { child: None, port, db: db.to_path_buf(), args, log };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let port_file = self.db.with_extension("port");
        let _ = std::fs::remove_file(&port_file);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(bin("gradsweep"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
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
        let start = Instant::now();
        loop {
            if let Ok(p) = std::fs::read_to_string(&port_file)
                && let Ok(p) = p.trim().parse()
            {
                self.port = p;
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "coordinator did not start; see {}", self.log.display());
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("worker log");
        let child = Command::new(bin("gradsweep-worker"))
            .args(["--coordinator", url, "--name", name, "--slots", &slots.to_string()])
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

/// Runs the `gradsweep` CLI and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin("gradsweep")).args(args).stdin(Stdio::null()).output().expect("run gradsweep")
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
    pub async fn control(&self) -> ControlServiceClient<Channel> {
        ControlServiceClient::connect(self.url.clone()).await.expect("connect control client")
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

/// Fast coordinator settings for tests: short leases.
pub fn fast_config(db: &Path) -> CoordinatorConfig {
    let mut c = CoordinatorConfig::new(db);
    c.lease_ttl = Duration::from_millis(1500);
    c.heartbeat_interval = Duration::from_millis(300);
    c
}

/// Submits a grid through the control API.
pub async fn submit(client: &mut ControlServiceClient<Channel>, toml: &str) -> pb::SubmitResponse {
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
        format!(
            r#"
[sweep]
name = "{name}"
seeds = [0, 1]
[train]
model = "mlp:64-16-10"
dataset = "digits"
epochs = {epochs}
[probe]
every_epochs = 2
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

/// Re-executes every run of `grid` offline with the science core and checks
/// that the coordinator's results hold each run exactly once, bit-identical:
/// same final figures (including the weights' hash), the same number of
/// probes with identical spectra, the same trajectory statistics. Returns
/// the number of runs checked.
pub fn verify_against_offline(grid: &str, cells: &[gradsweep_shared::results::CellResult]) -> usize {
    use gradsweep_shared::results::{RunData, run_result};
    use gradsweep_shared::run::{RunEvent, execute};
    use std::ops::ControlFlow;
    use std::sync::atomic::AtomicBool;

    let plan = gradsweep_shared::parse_grid(grid, "grid", Default::default()).expect("grid parses");
    assert_eq!(cells.len(), plan.cells.len(), "every cell is reported");
    let mut checked = 0;
    for (cell, got) in plan.cells.iter().zip(cells) {
        assert_eq!(got.index, cell.index);
        assert_eq!(got.seeds_done, plan.seeds.len(), "cell {}: every seed done once", cell.index);
        let seeds: Vec<u64> = got.runs.iter().map(|r| r.seed).collect();
        assert_eq!(seeds, plan.seeds, "cell {}: each seed exactly once, in order", cell.index);
        for (r, &seed) in got.runs.iter().zip(&plan.seeds) {
            let spec = cell.run_spec(seed);
            let mut probes = vec![];
            let mut trajectory = None;
            let fin = execute(&spec, &AtomicBool::new(false), &mut |e| {
                match e {
                    RunEvent::Probe(p) => probes.push(*p),
                    RunEvent::Trajectory(t) => trajectory = Some(t),
                    RunEvent::Progress { .. } => {}
                }
                ControlFlow::Continue(())
            })
            .expect("offline run");
            let want = run_result(&RunData { run_id: r.run_id.clone(), seed, fin, probes, trajectory });
            assert_eq!(r, &want, "run {} differs from an undisturbed offline run", r.run_id);
            checked += 1;
        }
    }
    checked
}

/// Waits until every run of `sweep` completed.
pub async fn wait_sweep_completed(client: &ControlServiceClient<Channel>, sweep: &str, timeout: Duration) {
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

/// Waits until the worker named `name` holds at least one run.
pub async fn wait_worker_holds_run(client: &ControlServiceClient<Channel>, name: &str, timeout: Duration) {
    wait_until(timeout, &format!("worker {name} to hold a run"), || {
        let mut c = client.clone();
        async move {
            let ws = c.list_workers(pb::ListWorkersRequest {}).await.expect("workers").into_inner().workers;
            ws.iter().any(|w| w.name == name && !w.runs.is_empty())
        }
    })
    .await;
}
