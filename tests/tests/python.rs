//! Issue 16: the `gradsweep` Python package (python/, PyO3 and maturin) over
//! the same Rust code. A sketch built from Python has the very bytes the
//! Rust sketch has on the same input, merged or not;
//! `gradsweep.analyze_grads` equals `gradsweep analyze grads --format json`;
//! the package's own tests (python/tests) pass; and Python workers of the
//! NumPy example (examples/numpy) run a sweep through a real coordinator,
//! one SIGKILLed mid-run and resumed elsewhere, with results equal to an
//! undisturbed sweep's. Runs when python3 can
//! import the package; CI installs it (`pip install ./python`) and sets
//! `GRADSWEEP_REQUIRE_PYPKG=1`, so there the tests cannot skip.

use std::path::Path;
use std::process::Command;

use gradsweep_shared::rng::{Rng, Stream};
use gradsweep_shared::sketch::FdSketch;
use gradsweep_tests::cli;

/// Whether python3 imports the installed package (or must: CI).
fn package_installed() -> bool {
    let ok = Command::new("python3").args(["-c", "import gradsweep, numpy"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("GRADSWEEP_REQUIRE_PYPKG").is_none(),
            "GRADSWEEP_REQUIRE_PYPKG is set, but python3 cannot import gradsweep (pip install ./python)"
        );
        eprintln!("skipped: the gradsweep Python package is not installed (pip install ./python)");
    }
    ok
}

fn python(script: &str, args: &[&Path]) -> String {
    let o = Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "python3 failed:\n{text}");
    text
}

const SKETCH: &str = r#"
import pathlib, sys
import numpy as np
import gradsweep
d = pathlib.Path(sys.argv[1])
g = np.load(d / "g.npy")
whole = gradsweep.FdSketch(g.shape[1], 24)
for i in range(0, len(g), 64):
    whole.insert(g[i:i + 64])
(d / "whole.bin").write_bytes(whole.to_bytes())
a, b = gradsweep.FdSketch(g.shape[1], 24), gradsweep.FdSketch(g.shape[1], 24)
a.insert(g[:200]); b.insert(g[200:])
a.merge(b)
(d / "merged.bin").write_bytes(a.to_bytes())
back = gradsweep.FdSketch.from_bytes(whole.to_bytes(), d=g.shape[1])
assert back.to_bytes() == whole.to_bytes() and back.count == len(g)
lo, hi = whole.rank()
print("rank", lo, hi)
"#;

/// The acceptance item: `FdSketch` from Python and from Rust give
/// bit-identical bytes on the same input, inserted in the same blocks, and
/// merged the same way.
#[test]
fn a_sketch_from_python_has_the_bytes_of_the_rust_sketch() {
    if !package_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (333, 40);
    let mut rng = Rng::new(16, Stream::Other(16));
    // Low-rank signal plus noise, in f32 (what the sketch keeps).
    let basis: Vec<f64> = (0..5 * d).map(|_| rng.normal()).collect();
    let mut g: Vec<f32> = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c: Vec<f64> = (0..5).map(|_| rng.normal()).collect();
        let noise: Vec<f64> = (0..d).map(|_| 0.01 * rng.normal()).collect();
        g.extend((0..d).map(|j| ((0..5).map(|k| c[k] * basis[k * d + j]).sum::<f64>() + noise[j]) as f32));
    }
    std::fs::write(dir.path().join("g.npy"), gradsweep_shared::npy::write_f32(n, d, &g)).unwrap();
    let out = python(SKETCH, &[dir.path()]);

    let mut whole = FdSketch::new(d, 24);
    for block in g.chunks(64 * d) {
        whole.insert_block(block);
    }
    assert!(std::fs::read(dir.path().join("whole.bin")).unwrap() == whole.encode(), "whole sketch bytes");
    let (mut a, mut b) = (FdSketch::new(d, 24), FdSketch::new(d, 24));
    a.insert_block(&g[..200 * d]);
    b.insert_block(&g[200 * d..]);
    a.merge(&b).unwrap();
    assert!(std::fs::read(dir.path().join("merged.bin")).unwrap() == a.encode(), "merged sketch bytes");
    let stats = gradsweep_shared::stats::SpectrumStats::from_sketch(&whole);
    assert!(out.contains(&format!("rank {} {}", stats.rank.lo, stats.rank.hi)), "{out}");
}

const ANALYZE: &str = r#"
import json, pathlib, sys
import numpy as np
import gradsweep
d = pathlib.Path(sys.argv[1])
g = np.load(d / "g.npy")
for name, kw in [("exact", {}), ("sketch", {"exact_max_dim": 8, "sketch_rank": 16, "relative": [1e-3]})]:
    (d / f"{name}.json").write_text(json.dumps(gradsweep.analyze_grads(g, **kw)))
"#;

/// The acceptance item: `analyze_grads` equals `gradsweep analyze grads
/// --format json`, on the exact path and on the sketch path.
#[test]
fn analyze_grads_from_python_equals_the_cli() {
    if !package_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (n, d) = (150, 30);
    let mut rng = Rng::new(7, Stream::Other(7));
    let g: Vec<f64> = (0..n * d).map(|i| rng.normal() * (1.0 + (i % d) as f64).recip()).collect();
    let file = dir.path().join("g.npy");
    std::fs::write(&file, gradsweep_shared::npy::write(n, d, &g, false)).unwrap();
    python(ANALYZE, &[dir.path()]);
    let f = file.to_str().unwrap();
    for (name, extra) in [
        ("exact", vec![]),
        ("sketch", vec!["--exact-max-dim", "8", "--sketch-rank", "16", "--rank-threshold-rel", "1e-3"]),
    ] {
        let mut args = vec!["analyze", "grads", f, "--format", "json"];
        args.extend(extra);
        let o = cli(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let from_cli: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let from_python: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(format!("{name}.json"))).unwrap()).unwrap();
        assert_eq!(from_python, from_cli, "{name} path");
        assert_eq!(from_cli["method"], name);
    }
}

/// The package's own tests (python/tests): errors that name what and
/// where, torch-like inputs, the trajectory analysis on a known rotation.
#[test]
fn the_python_packages_own_tests_pass() {
    if !package_installed() {
        return;
    }
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/../python/tests");
    let o = Command::new("python3").args(["-m", "unittest", "discover", "-s", tests, "-v"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && text.contains("OK"), "{text}");
}

/// A Python worker process of the NumPy example (`examples/numpy/worker.py`).
fn python_worker(url: &str, name: &str, log_dir: &Path) -> std::process::Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/numpy/worker.py");
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).unwrap();
    Command::new("python3")
        .args([script, "--coordinator", url, "--name", name, "--idle-exit", "1"])
        // One BLAS thread: the same arithmetic on every worker.
        .env("OPENBLAS_NUM_THREADS", "1")
        .env("OMP_NUM_THREADS", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start a python worker")
}

/// `examples/numpy/grid.toml`, longer, so a worker can die mid-run.
fn numpy_grid(dir: &Path) -> std::path::PathBuf {
    let grid = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/numpy/grid.toml")).unwrap();
    assert!(grid.contains("epochs = 6\n") && grid.contains("every_epochs = 3\n"));
    let file = dir.join("numpy.toml");
    std::fs::write(
        &file,
        grid.replace("epochs = 6\n", "epochs = 24\n").replace("every_epochs = 3\n", "every_epochs = 8\n"),
    )
    .unwrap();
    file
}

fn cli_json(args: &[&str]) -> serde_json::Value {
    let o = cli(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Submits the NumPy grid to a fresh coordinator in `dir`; returns it and the sweep.
fn numpy_sweep(dir: &Path) -> (gradsweep_tests::CoordinatorProc, String, String) {
    let coord = gradsweep_tests::CoordinatorProc::start(
        &dir.join("state.db"),
        0,
        &["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"],
        dir,
    );
    let addr = format!("127.0.0.1:{}", coord.port);
    let grid = numpy_grid(dir);
    let o = cli(&["submit", "--coordinator", &addr, grid.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sweep = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (coord, addr, sweep)
}

async fn wait_completed(addr: &str, sweep: &str) {
    gradsweep_tests::wait_until(std::time::Duration::from_secs(240), "the python sweep to complete", || {
        let st = cli_json(&["status", "--coordinator", addr, sweep, "--format", "json"]);
        async move { st[0]["state"] == "completed" }
    })
    .await;
}

/// Acceptance (issue 16): a sweep run by two NumPy-example Python workers
/// and one Rust coordinator completes with one Python worker SIGKILLed
/// mid-run and its run resumed elsewhere from its last checkpoint; its
/// results equal those of an undisturbed sweep, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_workers_survive_a_sigkill_and_match_an_undisturbed_sweep() {
    if !package_installed() {
        return;
    }
    // Undisturbed: one Python worker.
    let calm = tempfile::tempdir().unwrap();
    let (_c1, addr1, sweep1) = numpy_sweep(calm.path());
    let mut w = python_worker(&_c1.url(), "calm", calm.path());
    wait_completed(&addr1, &sweep1).await;
    w.wait().unwrap();

    // Disturbed: two workers, one killed after its run checkpointed.
    let dir = tempfile::tempdir().unwrap();
    let (coord, addr, sweep) = numpy_sweep(dir.path());
    let mut victim = python_worker(&coord.url(), "victim", dir.path());
    let mut other = python_worker(&coord.url(), "other", dir.path());
    let mut killed_run = String::new();
    gradsweep_tests::wait_until(std::time::Duration::from_secs(120), "the victim to be mid-run", || {
        let runs = cli_json(&["runs", "--coordinator", &addr, &sweep, "--format", "json"]);
        let found = runs.as_array().unwrap().iter().find(|r| {
            r["state"] == "leased" && r["worker"] == "victim" && r["step"].as_u64().is_some_and(|s| s >= 3 * 32)
        });
        if let Some(r) = found {
            killed_run = r["run"].as_str().unwrap().to_string();
        }
        let found = found.is_some();
        async move { found }
    })
    .await;
    victim.kill().unwrap();
    victim.wait().unwrap();
    let mut third = python_worker(&coord.url(), "third", dir.path());
    wait_completed(&addr, &sweep).await;
    for w in [&mut other, &mut third] {
        w.wait().unwrap();
    }
    let runs = cli_json(&["runs", "--coordinator", &addr, &sweep, "--format", "json"]);
    let resumed = runs.as_array().unwrap().iter().find(|r| r["run"] == killed_run.as_str()).unwrap();
    assert!(resumed["attempts"].as_u64() >= Some(2) && resumed["state"] == "completed", "{resumed}");
    let logs = ["other", "third"].map(|n| std::fs::read_to_string(dir.path().join(format!("{n}.log"))).unwrap());
    assert!(
        logs.iter().any(|l| l.lines().any(|x| x.contains(&killed_run) && x.contains("resume_step="))),
        "the killed run resumed from its checkpoint:\n{}",
        logs.join("\n")
    );

    let calm_cells = cli_json(&["results", "--coordinator", &addr1, &sweep1, "--format", "json"])["cells"].clone();
    let cells = cli_json(&["results", "--coordinator", &addr, &sweep, "--format", "json"])["cells"].clone();
    assert_eq!(cells.as_array().unwrap().len(), 2);
    assert!(cells.as_array().unwrap().iter().all(|c| c["seeds_done"] == 2), "{cells}");
    assert!(cells == calm_cells, "results differ from the undisturbed sweep:\n{cells}\n{calm_cells}");
}
