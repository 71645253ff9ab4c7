//! Issue 15: the controls with known answers run as sweeps, through a real
//! coordinator and real worker processes, and the whole path — worker, wire,
//! merge, statistics, report — recovers a known circulation and reads zero
//! under detailed balance.

use std::time::Duration;

use gradsweep_cli::client::{connect_control, fetch_results};
use gradsweep_shared::controls::Control;
use gradsweep_tests::{CoordinatorProc, WorkerProc, cli, verify_against_offline, wait_sweep_completed};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The acceptance test: `examples/double-well.toml` cut to λ ∈ {0, 1.5}
/// through a coordinator and two workers, one of them SIGKILLed after its
/// first checkpoint. At λ = 0 the area rate's 95 % interval across the 8
/// seeds contains 0; at λ = 1.5 it excludes 0 and its mean (per unit time:
/// per step over `lr`) is within 10 % of the exact λπ/Z. Every run is
/// bit-identical to an undisturbed offline run, and the report is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_well_sweep_recovers_the_known_circulation_through_coordinator_and_workers() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/double-well.toml")).unwrap();
    let grid = example.replace("control_lambda = [0.0, 0.5, 1.5]", "control_lambda = [0.0, 1.5]");
    assert_ne!(grid, example, "the example's λ axis");
    let file = dir.path().join("double-well.toml");
    std::fs::write(&file, &grid).unwrap();

    let coord = CoordinatorProc::start(&dir.path().join("state.db"), 0, &[], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut w1 = WorkerProc::start(&coord.url(), "w-a", 1, dir.path());
    let _w2 = WorkerProc::start(&coord.url(), "w-b", 1, dir.path());
    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let sweep = text(&o.stdout).trim().to_string();

    // Kill w-a once it holds a run that has checkpointed: its run resumes
    // on w-b (or a restarted w-a) from that checkpoint.
    let client = connect_control(&addr).await.unwrap();
    gradsweep_tests::wait_worker_holds_run(&client, "w-a", Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w1.kill9();
    let _w3 = WorkerProc::start(&coord.url(), "w-c", 1, dir.path());
    wait_sweep_completed(&client, &sweep, Duration::from_secs(600)).await;

    let (cells, _) = fetch_results(&mut client.clone(), &sweep).await.unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 16, "every run once, bit-identical to an undisturbed one");
    let dt = 0.005;
    for cell in &cells {
        let lambda = cell.params["control_lambda"].as_f64().unwrap();
        let rate = cell.area_rate.scaled(1.0 / dt);
        assert_eq!((rate.count, cell.d), (8, 2), "λ = {lambda}: 8 seeds of a 2-d process");
        let (lo, hi) = (rate.mean - rate.ci95, rate.mean + rate.ci95);
        let exact = Control::DoubleWell.area_rate(lambda);
        eprintln!("λ = {lambda}: area rate {:.4} ± {:.4} per unit time, exact {exact:.4}", rate.mean, rate.ci95);
        if lambda == 0.0 {
            assert!(lo <= 0.0 && 0.0 <= hi, "λ = 0: the interval [{lo}, {hi}] should contain 0");
            // The power statement: circulation, if any, is below this — and
            // it is small enough that λ = 1.5's rate would have been seen.
            let detectable = cell.area_rate_detectable / dt;
            assert!(detectable > rate.ci95 && detectable < 0.25 * Control::DoubleWell.area_rate(1.5), "{detectable}");
        } else {
            assert!(lo > 0.0, "λ = {lambda}: the interval [{lo}, {hi}] should exclude 0");
            assert!((rate.mean - exact).abs() <= 0.1 * exact, "λ = {lambda}: {} vs exact {exact}", rate.mean);
            let omega = cell.cycling_frequency.mean / dt;
            let want = Control::DoubleWell.cycling_frequency(lambda);
            assert!((omega - want).abs() <= 0.1 * want, "cycling frequency {omega} vs exact {want}");
        }
    }

    // The CLI's table and the report take a sweep with no probes and no
    // held-out set.
    let out = dir.path().join("res");
    let o = cli(&["results", "--coordinator", &addr, &sweep, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    assert!(table.contains("control_lambda") || table.contains("area rate"), "{table}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("control_lambda 1.5"), "the report has the λ = 1.5 cell");
}

/// Issue 15, item 3: a sweep recorded once per epoch as well (the paper's
/// time scale) prints the per-epoch table (weight-norm trend, surrogate
/// test for spectral peaks) and the per-epoch pairs with their bootstrap
/// intervals, fills the CSV's per-epoch columns, keeps each run's
/// per-epoch statistics in results.json, and draws the weights' increment
/// spectrum and the per-epoch drift figures.
#[test]
fn a_sweep_recorded_per_epoch_prints_tests_and_draws_the_papers_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let grid = r#"
[sweep]
name = "per-epoch"
seeds = 3
[train]
model = "mlp:64-16-10"
dataset = "digits"
epochs = 60
lr = 0.05
batch_size = 32
[probe]
at_epochs = [10]
sketch_rank = 32
basis = "eigen"
projections = 4
max_lag = 16
psd_window = 16
epoch_psd_window = 16
"#;
    let file = dir.path().join("g.toml");
    std::fs::write(&file, grid).unwrap();
    let out = dir.path().join("out");
    let o = cli(&["local", file.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    for want in [
        "per-epoch recording",
        "norm trend /10³ ep",
        " of 3 ",
        "area rate of every pair of directions, per step",
        "area rate of every pair of directions, per epoch",
        "bootstrap 95 %",
    ] {
        assert!(table.contains(want), "the tables lack `{want}`:\n{table}");
    }
    // results.json: every run's per-epoch statistics, 50 epochs after the
    // basis probe at epoch 10, increment spectra of W/2 = 8 bins.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let cell = &doc["cells"][0];
    for run in cell["runs"].as_array().unwrap() {
        let e = &run["epochs"];
        assert_eq!(e["epochs"], 50, "{e}");
        assert_eq!(e["increment_spectrum"].as_array().unwrap().len(), 8);
        let p = e["peaks"]["p_value"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0);
        // The trend has the sign of the change it summarises.
        let (first, last) = (e["weight_norm_first"].as_f64().unwrap(), e["weight_norm_last"].as_f64().unwrap());
        assert_eq!(e["weight_norm_trend"].as_f64().unwrap() > 0.0, last > first, "{e}");
    }
    assert_eq!(cell["epochs"]["peaks_tested"], 3);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let col = |n: &str| row[head.iter().position(|h| *h == n).unwrap_or_else(|| panic!("no column {n}"))];
    assert!(col("weight_norm_trend_per_kepoch").parse::<f64>().unwrap().is_finite());
    assert_eq!(col("epoch_peaks_tested"), "3");
    for fig in ["cell0-increment-spectrum", "cell0-epoch-power", "cell0-epoch-autocorrelation", "cell0-power"] {
        assert!(out.join("figures").join(format!("{fig}.svg")).exists(), "figure {fig}");
    }
}
