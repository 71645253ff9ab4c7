//! End-to-end: the README's commands, real processes, real gRPC.

use std::time::Duration;

use gradsweep_cli::client::{connect_control, fetch_results};
use gradsweep_tests::{CoordinatorProc, WorkerProc, cli, grids, log_field, verify_against_offline};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Acceptance 1: the quickstart on the bundled default prints the table and
/// writes both result files.
#[test]
fn quickstart_local_prints_table_and_writes_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qs");
    let grid = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart.toml");
    let o = cli(&["local", grid, "--workers", "2", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "local failed:\n{}", stderr(&o));
    let table = stdout(&o);
    for col in [
        "lr",
        "η/b",
        "seeds",
        "train loss",
        "test acc",
        "rank/d",
        "tr D",
        "λ_max",
        "β⁻¹",
        "β⁻¹·trD/d",
        "area rate",
        "eig overlap",
    ] {
        assert!(table.contains(col), "table lacks column {col}:\n{table}");
    }
    assert_eq!(table.lines().filter(|l| l.contains(" 2/2 ")).count(), 12, "12 cells with both seeds:\n{table}");
    for col in ["cycling ω", "MSD exp", "autocorr@max", "spectral α", "peak/bg", "‖∇f‖/√d", "collapse onto η/b"]
    {
        assert!(table.contains(col), "drift or η/b tables lack {col}:\n{table}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 13, "header + 12 cells");
    // The temperature columns: β⁻¹ = η/(2b), and β⁻¹·tr D/d from the same row.
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    for line in csv.lines().skip(1) {
        let row: Vec<&str> = line.split(',').collect();
        let col = |n: &str| row[head.iter().position(|h| *h == n).unwrap()].parse::<f64>().unwrap();
        assert_eq!(col("temperature"), col("lr") / (2.0 * col("batch_size")));
        let want = col("temperature") * col("trace") / col("d");
        assert!((col("temperature_trace_per_d") - want).abs() <= 1e-12 * want.abs(), "{line}");
    }
    // One row per run, one column per axis, every run completed (issue 13).
    let runs = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(lines[0], "run,cell,lr,batch_size,seed,state,attempts,worker,duration_s,error");
    assert_eq!(lines.len(), 25, "header + 24 runs");
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!((f.len(), f[5], f[9]), (10, "completed", ""), "{l}");
        assert!(f[2].parse::<f64>().is_ok() && f[3].parse::<u32>().is_ok() && f[8].parse::<f64>().is_ok(), "{l}");
    }
    // One row per run and epoch (issue 13): 24 runs × 30 epochs, in order,
    // the test figures on each run's last epoch only.
    let epochs = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    let lines: Vec<&str> = epochs.lines().collect();
    assert_eq!(
        lines[0],
        "run,cell,lr,batch_size,seed,epoch,step,lr_at_epoch,train_loss,test_accuracy,test_loss,seconds"
    );
    assert_eq!(lines.len(), 1 + 24 * 30);
    for (i, l) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f.len(), 12, "{l}");
        let epoch = i % 30 + 1;
        assert_eq!(f[5], epoch.to_string(), "{l}");
        assert_eq!(f[7], f[2], "a constant schedule: {l}");
        assert!(f[8].parse::<f64>().is_ok_and(|x| x > 0.0) && f[11].parse::<f64>().is_ok_and(|s| s >= 0.0), "{l}");
        let test = f[9].parse::<f64>();
        assert_eq!(test.is_ok(), epoch == 30, "{l}");
        assert!(epoch < 30 || test.is_ok_and(|a| a > 0.5 && a <= 1.0), "{l}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["cells"].as_array().unwrap().len(), 12);
    assert_eq!(json["summary"]["runs_done"], 24);
    // Where the numbers come from (issue 13).
    let p = &json["provenance"];
    assert_eq!(p["sweep_id"], json["summary"]["sweep_id"]);
    assert_eq!(
        (p["name"].as_str(), p["gradsweep_version"].as_str()),
        (Some("quickstart"), Some(env!("CARGO_PKG_VERSION")))
    );
    assert!(p["grid_file"].as_str().is_some_and(|f| f.ends_with("examples/quickstart.toml")), "{p}");
    assert!(p["submitted_at_ms"].as_i64().is_some_and(|t| t > 1_700_000_000_000), "{p}");
    let (submitted, ended) = (p["submitted_at_ms"].as_i64().unwrap(), p["ended_at_ms"].as_i64());
    assert!(ended.is_some_and(|t| t >= submitted), "an ended sweep says when: {p}");
    assert_eq!((p["runs"]["total"].as_u64(), p["runs"]["completed"].as_u64()), (Some(24), Some(24)), "{p}");
    let cell = &json["cells"][0];
    assert_eq!(cell["d"], 2410);
    let frac = cell["rank_fraction"]["mean"].as_f64().unwrap();
    assert!(frac > 0.0 && frac < 0.5, "rank/d {frac}");
    // The certified bracket of the mean rank over seeds, ends in order.
    let (lo, hi) = (cell["rank_certified"]["lo"].as_f64().unwrap(), cell["rank_certified"]["hi"].as_f64().unwrap());
    assert!(0.0 < lo && lo <= hi && hi <= 2410.0, "[{lo}, {hi}]");
    // Three probes per run: two overlaps of top-10 eigenspaces, each in [0, 1];
    // ‖∇f‖/√d at each probe; drift statistics per run and merged per cell.
    for c in json["cells"].as_array().unwrap() {
        let mut points = 0;
        for r in c["runs"].as_array().unwrap() {
            let ov = r["eigenspace_overlap"].as_array().unwrap();
            assert_eq!(ov.len(), 2);
            assert!(ov.iter().all(|x| (0.0..=1.0 + 1e-9).contains(&x.as_f64().unwrap())), "{ov:?}");
            let g = r["grad_norm"].as_array().unwrap();
            assert_eq!(g.iter().map(|p| p[0].as_u64().unwrap()).collect::<Vec<_>>(), vec![10, 20, 30]);
            assert!(g.iter().all(|p| p[1].as_f64().unwrap() >= 0.0), "{g:?}");
            let drift = &r["drift"];
            points += drift["points"].as_u64().unwrap();
            assert!(drift["cycling_frequency"].as_f64().unwrap().is_finite(), "{drift}");
            assert!(drift["peak_to_background"].as_f64().unwrap() >= 1.0, "{drift}");
            assert!(!drift["spectrum"].as_array().unwrap().is_empty());
            for (lag, rho) in drift["autocorrelation"].as_array().unwrap().iter().map(|a| (a[0].clone(), a[1].clone()))
            {
                assert!(lag.as_u64().unwrap() >= 1 && rho.as_f64().unwrap().abs() <= 1.0 + 1e-9, "{drift}");
            }
        }
        assert_eq!(c["merged_drift"]["points"].as_u64().unwrap(), points, "merged sums hold every run's points");
    }
    // The η/b rows carry every scored statistic with its interval, sorted by η/b.
    let rows = json["summary"]["by_eta_over_b"].as_array().unwrap();
    assert_eq!(rows.len(), 12);
    let ratios: Vec<f64> = rows.iter().map(|r| r["eta_over_b"].as_f64().unwrap()).collect();
    assert!(ratios.windows(2).all(|w| w[0] <= w[1]), "{ratios:?}");
    for r in rows {
        let cell = json["cells"].as_array().unwrap().iter().find(|c| c["index"] == r["cell"]).unwrap();
        assert_eq!(r["statistics"]["test acc"]["mean"], cell["test_accuracy"]["mean"]);
        assert!(r["statistics"]["cycling freq"]["ci95"].as_f64().is_some(), "{r}");
    }
    // The collapse score of each statistic, with its bootstrap interval.
    let collapse = json["summary"]["collapse"].as_array().unwrap();
    assert!(collapse.len() >= 8, "{collapse:?}");
    for c in collapse {
        // The quickstart's fixed ℓ = 64 leaves every rank unresolved: rank/d
        // is not scored from estimates, and the note says why.
        if c["statistic"] == "rank/d" {
            assert!(c["score"].is_null(), "{c}");
            assert!(c["note"].as_str().unwrap().contains("24 runs with an unresolved rank left out"), "{c}");
            continue;
        }
        assert_eq!(c["cells"], 12);
        // A statistic η and b do not explain (F-test p ≥ 0.05) gets no score.
        let p = c["p_value"].as_f64().unwrap();
        if p >= 0.05 {
            assert!(c["score"].is_null() && c["note"].as_str().unwrap().starts_with("withheld"), "{c}");
            continue;
        }
        let (s, lo, hi) = (c["score"].as_f64().unwrap(), c["ci_lo"].as_f64().unwrap(), c["ci_hi"].as_f64().unwrap());
        // Percentile intervals need not contain the estimate when it sits at the boundary 1.
        assert!([s, lo, hi].iter().all(|x| (0.0..=1.0).contains(x)) && lo <= hi, "{c}");
    }
}

/// Acceptance 2: serve, two workers, submit, watch, results — as the README
/// documents them; every run is reported once and matches an offline run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_process_serve_submit_watch_results() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("state.db"), 0, &[], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let _w1 = WorkerProc::start(&coord.url(), "w-a", 1, dir.path());
    let _w2 = WorkerProc::start(&coord.url(), "w-b", 1, dir.path());
    let grid = grids::tiny("multi", 4);
    let file = dir.path().join("grid.toml");
    std::fs::write(&file, &grid).unwrap();

    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sweep = stdout(&o).trim().to_string();
    assert!(sweep.starts_with("multi-"), "{sweep}");

    let o = cli(&["watch", "--coordinator", &addr, &sweep]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("8/8 runs done"), "{}", stderr(&o));

    let o = cli(&["status", "--coordinator", &addr, &sweep]);
    assert!(stdout(&o).contains("completed"), "{}", stdout(&o));
    // The same for scripts: JSON, and CSV with a header.
    let o = cli(&["status", "--coordinator", &addr, &sweep, "--format", "json"]);
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((st[0]["sweep_id"].as_str(), st[0]["state"].as_str()), (Some(sweep.as_str()), Some("completed")));
    assert_eq!((st[0]["runs_total"].as_u64(), st[0]["runs_completed"].as_u64()), (Some(8), Some(8)), "{st}");
    assert!(st[0]["ended_at_ms"].as_i64() >= st[0]["created_at_ms"].as_i64(), "{st}");
    let o = cli(&["status", "--coordinator", &addr, &sweep, "--format", "csv"]);
    let csv = stdout(&o);
    let (head, row) = (csv.lines().next().unwrap(), csv.lines().nth(1).unwrap());
    assert!(head.starts_with("sweep_id,name,state,cells,runs_total,"), "{csv}");
    assert_eq!(head.split(',').count(), row.split(',').count(), "{csv}");

    let o = cli(&["workers", "--coordinator", &addr]);
    let workers = stdout(&o);
    assert!(workers.contains("w-a") && workers.contains("w-b"), "{workers}");
    let o = cli(&["workers", "--coordinator", &addr, "--format", "json"]);
    let ws: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let mut names: Vec<&str> = ws.as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["w-a", "w-b"], "{ws}");

    let out = dir.path().join("res");
    let o = cli(&["results", "--coordinator", &addr, &sweep, "--format", "csv", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 5);
    assert!(out.join("results.json").exists());

    // Submitting the same grid again returns the same sweep; --new makes another.
    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    assert!(stdout(&o).starts_with(&format!("{sweep} (existing")), "{}", stdout(&o));
    let o = cli(&["submit", "--coordinator", &addr, "--new", file.to_str().unwrap()]);
    let second = stdout(&o).trim().to_string();
    assert_ne!(second, sweep);
    let o = cli(&["cancel", "--coordinator", &addr, &second]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut client = connect_control(&addr).await.unwrap();
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 8);

    // Ranks at the user's thresholds, recomputed from the stored sketches:
    // a relative threshold the defaults also hold gives the same counts,
    // and an absolute one gives a bracket around its count.
    let o = cli(&[
        "results",
        "--coordinator",
        &addr,
        &sweep,
        "--format",
        "csv",
        "--rank-threshold-rel",
        "1e-2,1e-1",
        "--rank-threshold-abs",
        "1e-6",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = stdout(&o);
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    // Brackets only: no point estimate is presented as the count.
    for col in ["rank_rel_1e-2_lo", "rank_rel_1e-1_hi", "rank_abs_1e-6_lo", "rank_abs_1e-6_resolved", "rank_lo"] {
        assert!(head.contains(&col), "{col} in {head:?}");
    }
    assert!(!head.contains(&"rank") && !head.contains(&"rank_rel_1e-2"), "{head:?}");
    for (line, cell) in csv.lines().skip(1).zip(&cells) {
        let row: Vec<&str> = line.split(',').collect();
        let field = |n: &str| row[head.iter().position(|h| *h == n).unwrap()];
        let col = |n: &str| field(n).parse::<f64>().unwrap();
        let stored: Vec<gradsweep_shared::stats::Bracket> = cell
            .runs
            .iter()
            .map(|r| r.probes.last().unwrap().spectrum.ranks_relative.iter().find(|x| x.0 == 1e-2).unwrap().1)
            .collect();
        let mean =
            |f: fn(&gradsweep_shared::stats::Bracket) -> f64| stored.iter().map(f).sum::<f64>() / stored.len() as f64;
        assert_eq!((col("rank_rel_1e-2_lo"), col("rank_rel_1e-2_hi")), (mean(|b| b.lo), mean(|b| b.hi)), "{line}");
        assert!(col("rank_rel_1e-1_hi") <= col("rank_rel_1e-2_hi"), "a higher threshold counts fewer: {line}");
        assert!(col("rank_abs_1e-6_lo") <= col("rank_abs_1e-6_hi"), "{line}");
        let resolved = field("rank_resolved").parse::<bool>().unwrap();
        if resolved {
            assert!(col("rank_hi") - col("rank_lo") <= 0.05 * col("rank_lo"), "{line}");
        } else {
            assert!(!field("rank_needs_ell").is_empty() || col("rank_hi") > col("rank_lo"), "{line}");
        }
    }
    let o = cli(&["results", "--coordinator", &addr, &sweep, "--rank-threshold-rel", "2"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("relative rank threshold 2 is not in (0, 1]"), "{}", stderr(&o));
    // The coordinator checks too, for clients that do not.
    let bad = gradsweep_proto::v1::ResultsRequest {
        sweep_id: sweep.clone(),
        rank_thresholds_relative: vec![],
        rank_thresholds_absolute: vec![-1.0],
    };
    let err = client.results(bad).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("absolute rank threshold -1 is not a positive number"), "{}", err.message());

    // Issue 11, item 7: every cell is merged over all its seeds, so its
    // probes keep digests, not sketches, and the ranks at new thresholds
    // above came from the eigenvalues the merges kept.
    let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT count(*) FROM cells WHERE pruned = 1 AND spectra IS NOT NULL"), 4);
    assert_eq!(count("SELECT count(*) FROM probes"), 0);
    assert_eq!(count("SELECT count(*) FROM probe_digests"), 8 * 2, "8 runs × 2 probes");

    // Cells merged by an older build (no results version, fewer statistics)
    // are recomputed when read while their sketches are kept
    // (`keep_sketches`), to the same statistics; a pruned cell's merge is
    // final and is served as it was stored.
    let strip = "UPDATE cells SET result_json = json_remove(result_json, '$.results_version', '$.cycling_frequency', \
                 '$.merged_drift') WHERE sweep_id = ?1";
    assert_eq!(db.execute(strip, [&sweep]).unwrap(), 4);
    let (old, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert!(old.iter().all(|c| c.merged_drift.is_none() && c.results_version == 0));
    let kept_grid = grid.replace("[probe]\n", "[probe]\nkeep_sketches = true\n");
    assert_ne!(kept_grid, grid);
    let kept = gradsweep_tests::submit(&mut client, &kept_grid).await.sweep_id;
    gradsweep_tests::wait_sweep_completed(&client, &kept, Duration::from_secs(120)).await;
    let before = serde_json::to_string(&fetch_results(&mut client, &kept).await.unwrap().0).unwrap();
    assert_eq!(count("SELECT count(*) FROM cells WHERE pruned = 1"), 4, "the kept sweep's cells are not pruned");
    assert_eq!(count("SELECT count(*) FROM probes"), 8 * 2);
    assert_eq!(db.execute(strip, [&kept]).unwrap(), 4);
    let (after, _) = fetch_results(&mut client, &kept).await.unwrap();
    assert!(after.iter().all(|c| c.merged_drift.is_some()));
    assert_eq!(serde_json::to_string(&after).unwrap(), before);
}

/// A coordinator whose leases lapse 1.5 s after a worker's last heartbeat
/// (sent every 0.3 s), so that a killed worker's run is requeued quickly.
fn short_lease_coordinator(dir: &std::path::Path) -> CoordinatorProc {
    CoordinatorProc::start(&dir.join("state.db"), 0, &["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"], dir)
}

/// Acceptance 3: a worker SIGKILLed mid-sweep; the sweep completes and each
/// run appears exactly once, identical to an undisturbed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let coord = short_lease_coordinator(dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut victim = WorkerProc::start(&coord.url(), "victim", 1, dir.path());
    let grid = grids::tiny("kill-worker", 12);
    let mut client = connect_control(&addr).await.unwrap();
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;

    // Kill the victim while it holds a run that has made progress.
    gradsweep_tests::freeze_holding_run(&client, &victim, Duration::from_millis(400)).await;
    victim.kill9();
    let _survivor = WorkerProc::start(&coord.url(), "survivor", 2, dir.path());

    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    assert!(coord.log().contains("lease lapsed; run requeued"), "the kill must have interrupted a run");
    let (cells, summary) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(summary.runs_done, 8);
    assert_eq!(verify_against_offline(&grid, &cells), 8);
}

/// A wider net (d = 26,378), so that a probe pass at ℓ ≥ 256 takes a
/// second or more: one run, one probe at the end, auto-sized, in shards of
/// `shard_samples` of the digits' samples.
fn wide_net_grid(name: &str, train_extra: &str, shard_samples: u32) -> String {
    grids::mlp(name, "[0]", 2, train_extra, 2)
        .replace("mlp:64-16-10", "mlp:64-128-128-10")
        .replace("sketch_rank = 16", &format!("sketch_rank = \"auto\"\nshard_samples = {shard_samples}"))
        .replace("lr = [0.05, 0.1]", "lr = [0.05]")
        .replace("batch_size = [16, 64]", "batch_size = [64]")
}

/// Waits until the worker logging to `log_path` has finished a probe's
/// first pass without resolving the rank (its next pass is under way);
/// returns the probe's index.
async fn wait_first_pass_unresolved(log_path: &std::path::Path) -> String {
    let first_pass = |log: &str| {
        log.lines()
            .filter(|l| l.contains("probe pass"))
            .find(|l| log_field(l, "pass") == Some("0") && log_field(l, "resolved") == Some("false"))
            .and_then(|l| log_field(l, "probe").map(str::to_string))
    };
    gradsweep_tests::wait_until(Duration::from_secs(120), "a probe's first pass, unresolved", || {
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        async move { first_pass(&log).is_some() }
    })
    .await;
    first_pass(&std::fs::read_to_string(log_path).unwrap()).unwrap()
}

/// Issue 11, acceptance 2: the worker computing a probe's shards (its run's
/// thread and its idle slot) is SIGKILLed in the middle of a probe pass;
/// the run's lease lapses, another worker resumes it from its checkpoint
/// and computes the probe again, and the result is bit-identical to an
/// undisturbed single-threaded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigkill_mid_probe_shard() {
    let dir = tempfile::tempdir().unwrap();
    let coord = short_lease_coordinator(dir.path());
    let grid = wide_net_grid("kill-mid-shard", "checkpoint_every_epochs = 1", 300);
    let mut victim = WorkerProc::start(&coord.url(), "victim", 2, dir.path());
    let mut client = connect_control(&format!("127.0.0.1:{}", coord.port)).await.unwrap();
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    // Kill it as soon as a probe's first pass is over and left the rank
    // unresolved: the next pass, in shards on both slots, is under way.
    let log_path = dir.path().join("victim.log");
    let probe = wait_first_pass_unresolved(&log_path).await;
    victim.kill9();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let later = log.lines().filter(|l| l.contains("probe pass") && log_field(l, "probe") == Some(probe.as_str()));
    assert_eq!(later.count(), 1, "killed after its first pass, before its next one ended:\n{log}");
    let _survivor = WorkerProc::start(&coord.url(), "survivor", 2, dir.path());
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(300)).await;
    assert!(coord.log().contains("lease lapsed; run requeued"), "the kill must have interrupted the run");
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 1);
}

/// Issue 11, acceptance 2, across workers: a helper computing a shard of
/// another worker's probe pass is SIGKILLed mid-shard. Its shard lease
/// lapses, the run's worker computes the shard itself, and the run is
/// bit-identical to an undisturbed single-threaded run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helper_sigkill_mid_probe_shard() {
    let dir = tempfile::tempdir().unwrap();
    let coord = short_lease_coordinator(dir.path());
    // Two shards of 900 samples per pass, so that a shard at ℓ ≥ 256 takes
    // a second or more.
    let grid = wide_net_grid("kill-helper", "", 900);
    let owner = WorkerProc::start(&coord.url(), "owner", 1, dir.path());
    let mut client = connect_control(&format!("127.0.0.1:{}", coord.port)).await.unwrap();
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    // The helper joins once the probe's first pass left the rank
    // unresolved: the next, longer pass is the one it helps with.
    wait_first_pass_unresolved(&dir.path().join("owner.log")).await;
    let mut helper = WorkerProc::start(&coord.url(), "helper", 1, dir.path());
    let helper_log = dir.path().join("helper.log");
    gradsweep_tests::wait_until(Duration::from_secs(60), "the helper computing a shard", || {
        let log = std::fs::read_to_string(&helper_log).unwrap_or_default();
        async move { log.contains("computing a probe shard for another worker") }
    })
    .await;
    helper.kill9();
    let log = std::fs::read_to_string(&helper_log).unwrap();
    assert!(!log.contains("probe shard computed for another worker"), "killed mid-shard:\n{log}");
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(300)).await;
    assert!(coord.log().contains("shard lease lapsed"), "the kill must have interrupted a leased shard");
    assert!(!coord.log().contains("lease lapsed; run requeued"), "the run itself was never interrupted");
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 1);
    drop(owner);
}

/// Acceptance 4: the coordinator SIGKILLed mid-sweep and restarted on the
/// same database; workers reconnect, the sweep completes, nothing lost or
/// merged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &["--lease-ttl-ms", "2000", "--heartbeat-ms", "300"],
        dir.path(),
    );
    let addr = format!("127.0.0.1:{}", coord.port);
    let _w1 = WorkerProc::start(&coord.url(), "w1", 1, dir.path());
    let _w2 = WorkerProc::start(&coord.url(), "w2", 1, dir.path());
    let grid = grids::tiny("kill-coordinator", 12);
    let mut client = connect_control(&addr).await.unwrap();
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    // Kill it while runs are leased, as its database says once it is dead
    // (a status read just before the kill could be stale by then).
    for attempt in 0.. {
        assert!(attempt < 5, "never killed the coordinator with runs in flight:\n{}", coord.log());
        gradsweep_tests::wait_until(Duration::from_secs(60), "two runs done", || {
            let mut c = client.clone();
            let id = sweep.clone();
            async move {
                let s = c.status(gradsweep_proto::v1::StatusRequest { sweep_id: id }).await.unwrap().into_inner();
                s.runs_completed >= 2 && s.runs_running > 0
            }
        })
        .await;
        coord.kill9();
        let db = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        let leased: i64 = db.query_row("SELECT count(*) FROM runs WHERE state = 'leased'", [], |r| r.get(0)).unwrap();
        drop(db);
        tokio::time::sleep(Duration::from_millis(1500)).await; // workers keep computing, reports fail and wait
        coord.restart();
        assert_eq!(format!("127.0.0.1:{}", coord.port), addr);
        client = connect_control(&addr).await.unwrap();
        if leased > 0 {
            break;
        }
    }
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    let log = coord.log();
    let resumed = log.rsplit("leases_resumed=").next().and_then(|t| t.split_whitespace().next()).unwrap_or("0");
    assert_ne!(resumed, "0", "the restart must have found leases in flight:\n{log}");
    let (cells, summary) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(summary.runs_done, 8);
    assert_eq!(verify_against_offline(&grid, &cells), 8);
}

/// SIGTERM: the worker stops its run and hands the lease back at once (the
/// 60 s TTL would otherwise hold the run). Drain: a worker finishes its run,
/// takes no new one and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_leases_back_and_drain_exits_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &["--lease-ttl-ms", "60000", "--heartbeat-ms", "300"],
        dir.path(),
    );
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut client = connect_control(&addr).await.unwrap();
    let mut term = WorkerProc::start(&coord.url(), "term", 1, dir.path());
    let grid = grids::tiny("sigterm", 12);
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    gradsweep_tests::wait_worker_holds_run(&client, "term", Duration::from_secs(60)).await;
    term.signal(libc::SIGTERM);
    let status = term.child.wait().unwrap();
    assert!(status.success(), "worker exits cleanly on SIGTERM: {status:?}");
    assert!(coord.log().contains("lease released"), "{}", coord.log());

    // A drained worker finishes what it holds and exits; another completes the sweep.
    let mut drained = WorkerProc::start(&coord.url(), "drained", 1, dir.path());
    gradsweep_tests::wait_worker_holds_run(&client, "drained", Duration::from_secs(60)).await;
    let id = gradsweep_tests::worker_named(&client, "drained").await.expect("registered").worker_id;
    // By the name `workers` lists (issue 13); an unknown one says where to look.
    let o = cli(&["drain", "--coordinator", &addr, "nobody"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no worker has the identifier or name `nobody`"),
        "{}",
        stderr(&o)
    );
    let o = cli(&["drain", "--coordinator", &addr, "drained"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with(&format!("{id} (drained): draining")), "{}", stdout(&o));
    let status = drained.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let _rest = WorkerProc::start(&coord.url(), "rest", 2, dir.path());
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    let log = coord.log();
    assert!(!log.contains("lease lapsed"), "no lease had to lapse:\n{log}");
    let o = cli(&["workers", "--coordinator", &addr]);
    assert!(stdout(&o).lines().filter(|l| l.contains(" left ")).count() >= 2, "{}", stdout(&o));
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 8);
}

/// `gradsweep local` interrupted (SIGINT) mid-sweep and run again on the same
/// output folder resumes the sweep and completes it, every run once and
/// identical to an undisturbed run — as the README promises. The runs
/// project onto eigenvectors of `D` chosen at their first probe, so resumed
/// segments must carry those directions in their checkpoints; their probe
/// sketches travel with f16 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_interrupted_and_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let grid = grids::tiny("resume", 12)
        .replace("projections = 4", "projections = 4\nbasis = \"eigen\"\npsd_window = 8\nwire_precision = \"f16\"");
    assert!(grid.contains("basis = \"eigen\""));
    let file = dir.path().join("grid.toml");
    std::fs::write(&file, &grid).unwrap();
    let out = dir.path().join("out");
    let args = ["local", file.to_str().unwrap(), "--workers", "2", "--out", out.to_str().unwrap()];
    let first = std::process::Command::new(gradsweep_tests::bin("gradsweep"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once some run has finished and others are under way.
    let db = out.join("state.db");
    gradsweep_tests::wait_until(Duration::from_secs(60), "a first run to complete", || {
        let db = db.clone();
        async move {
            db.exists()
                && gradsweep_coordinator::store::Store::open(
                    &db,
                    gradsweep_coordinator::store::LeasePolicy { ttl_ms: 6000, max_attempts: 10 },
                )
                .and_then(|s| s.sweeps())
                .map(|s| s.first().is_some_and(|r| r.count(gradsweep_coordinator::store::RunState::Completed) >= 1))
                .unwrap_or(false)
        }
    })
    .await;
    gradsweep_tests::signal(first.id(), libc::SIGINT);
    let o = first.wait_with_output().unwrap();
    assert!(!o.status.success(), "an interrupted run exits non-zero");
    assert!(String::from_utf8_lossy(&o.stderr).contains("run the same command again to resume"));
    assert!(!out.join("results.json").exists(), "no results file from the interrupted run");

    let o = cli(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("(resumed)"), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let cells: Vec<gradsweep_shared::results::CellResult> = serde_json::from_value(json["cells"].clone()).unwrap();
    assert_eq!(verify_against_offline(&grid, &cells), 8);
}

/// `--idle-exit-secs`: a worker with nothing to do leaves by itself (batch
/// allocations are freed when the grid is done) and is shown as left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_worker_leaves_after_its_idle_limit() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("state.db"), 0, &[], dir.path());
    let started = std::time::Instant::now();
    let mut w = WorkerProc::start_with(&coord.url(), "idler", 1, &["--idle-exit-secs", "1"], dir.path());
    let status = tokio::task::spawn_blocking(move || w.child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "an idle exit is a clean exit");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited for its idle limit");
    let log = std::fs::read_to_string(dir.path().join("idler.log")).unwrap();
    assert!(log.contains("idle for the configured time; leaving"), "{log}");
    let mut client = connect_control(&format!("127.0.0.1:{}", coord.port)).await.unwrap();
    let ws = client.list_workers(gradsweep_proto::v1::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].state(), gradsweep_proto::v1::WorkerState::Left);
}
