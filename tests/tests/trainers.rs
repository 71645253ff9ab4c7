//! Issue 16, item 4: grids for user code. A grid names its trainer
//! (`python:MODULE:FUNCTION`) and declares its own `[user]` keys; runs go
//! only to workers that declared their trainer at registration. Real
//! processes and real gRPC: a Rust worker completes the built-in sweep
//! queued after a Python one and never takes a Python run; a worker that
//! declares the trainer is granted its runs, user keys included; `submit
//! --check` says what it leaves to the trainer, and `local` refuses what its
//! workers cannot run.

use std::time::Duration;

use gradsweep_cli::client::connect_control;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::worker_service_client::WorkerServiceClient;
use gradsweep_shared::spec::{RunSpec, Trainer};
use gradsweep_tests::{CoordinatorProc, WorkerProc, cli, grids, register_request, wait_sweep_completed};

const TRAINER: &str = "python:examples.numpy.mlp:train";

fn python_grid() -> String {
    format!(
        r#"
[sweep]
name = "numpy-mlp"
seeds = [0, 1]
[train]
trainer = "{TRAINER}"
model = "numpy mlp"
dataset = "digits"
epochs = 2
lr = 0.05
[probe]
sketch_rank = 8
[user]
hidden = 16
[grid]
hidden = [16, 32]
"#
    )
}

fn text(o: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_only_to_workers_that_declared_their_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let py_file = dir.path().join("py.toml");
    std::fs::write(&py_file, python_grid()).unwrap();
    let py = py_file.to_str().unwrap();

    // What the check cannot check, it says; `local` refuses at once.
    let (out, err) = text(&cli(&["submit", "--check", py]));
    assert!(out.contains("valid: 2 cells × 2 seeds = 4 runs"), "{out}{err}");
    assert!(
        out.contains(&format!("2 cell(s) train with `{TRAINER}`"))
            && out.contains("left to the trainer are `model`, `dataset`")
            && out.contains("the [user] keys `hidden`"),
        "{out}"
    );
    let o = cli(&["local", py, "--out", dir.path().join("out").to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success() && err.contains(&format!("trains with `{TRAINER}`")), "{err}");

    let coord = CoordinatorProc::start(&dir.path().join("state.db"), 0, &[], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    // The Python sweep is queued first, the built-in one after it.
    let o = cli(&["submit", "--coordinator", &addr, py]);
    let (py_sweep, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let builtin_file = dir.path().join("builtin.toml");
    std::fs::write(&builtin_file, grids::mlp("builtin", "[0]", 1, "", 1)).unwrap();
    let o = cli(&["submit", "--coordinator", &addr, builtin_file.to_str().unwrap()]);
    let (builtin_sweep, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let (py_sweep, builtin_sweep) = (py_sweep.trim().to_string(), builtin_sweep.trim().to_string());

    // A Rust worker completes the built-in sweep and leaves the other alone.
    let _rust = WorkerProc::start(&coord.url(), "rust", 2, dir.path());
    let control = connect_control(&addr).await.unwrap();
    wait_sweep_completed(&control, &builtin_sweep, Duration::from_secs(120)).await;
    let st = control.clone().status(pb::StatusRequest { sweep_id: py_sweep.clone() }).await.unwrap().into_inner();
    assert_eq!((st.runs_queued, st.runs_total), (4, 4), "no Python run was taken: {st:?}");
    let log = std::fs::read_to_string(dir.path().join("rust.log")).unwrap();
    assert!(!log.contains(&py_sweep) && !log.contains("run refused"), "the Rust worker was never offered one:\n{log}");
    let (out, _) = text(&cli(&["workers", "--coordinator", &addr, "--format", "json"]));
    let ws: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ws[0]["trainers"], serde_json::json!(["builtin"]), "{ws}");

    // A worker that declares the trainer is granted its runs, in order, with
    // the cell's user keys; a malformed declaration is refused by name.
    let mut w = WorkerServiceClient::connect(coord.url()).await.unwrap();
    let bad = pb::RegisterRequest { trainers: vec!["python:no function".into()], ..register_request("bad") };
    let e = w.register(bad).await.unwrap_err();
    assert!(e.code() == tonic::Code::InvalidArgument && e.message().contains("no function"), "{e:?}");
    let reg = pb::RegisterRequest { trainers: vec![TRAINER.into()], ..register_request("numpy") };
    let id = w.register(reg).await.unwrap().into_inner().worker_id;
    let mut hidden = vec![];
    for _ in 0..4 {
        let run = w.acquire(pb::AcquireRequest { worker_id: id.clone(), ..Default::default() }).await.unwrap();
        let run = run.into_inner().run.expect("a python run");
        let spec: RunSpec = gradsweep_worker::convert::assigned_spec(run.spec.clone()).unwrap();
        assert_eq!(spec.train.trainer, Trainer::parse(TRAINER).unwrap());
        assert!(run.run_id.starts_with(&py_sweep), "{}", run.run_id);
        hidden.push(spec.user["hidden"].as_i64().unwrap());
    }
    assert_eq!(hidden, [16, 16, 32, 32], "cells in the grid's order, each with its seeds");
}
