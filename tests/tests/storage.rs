//! Coordinator durability (issue 5): a full disk halts the coordinator
//! cleanly — it stops accepting work, says why, health turns NOT_SERVING —
//! and after a restart with room the sweep completes with nothing lost or
//! merged twice; a corrupted, foreign or newer database file is refused at
//! start with a message naming the file.

use std::process::Command;
use std::time::Duration;

use gradsweep_cli::client::{connect_control, fetch_results};
use gradsweep_tests::{Audit, CoordinatorProc, WorkerProc, audit, bin, cli, grids, wait_until};

/// Starts `gradsweep serve` on `db`, expects it to refuse the file within
/// 20 s, and returns what it said.
fn serve_fails(db: &std::path::Path) -> String {
    let mut child = Command::new(bin("gradsweep"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db", db.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            child.kill().ok();
            child.wait().ok();
            panic!("the coordinator accepted {} and kept serving", db.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the coordinator must refuse this file: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_halts_the_coordinator_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    // 1 MiB holds the sweep's first few results but not all 48 probes.
    let mut coord = CoordinatorProc::start(
        &db,
        0,
        &["--lease-ttl-ms", "2000", "--heartbeat-ms", "300", "--max-db-mib", "1"],
        dir.path(),
    );
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut client = connect_control(&addr).await.unwrap();
    let g = grids::tiny("full", 12);
    let sweep = gradsweep_tests::submit(&mut client, &g).await.sweep_id;
    let _w = WorkerProc::start(&coord.url(), "w", 2, dir.path());
    wait_until(Duration::from_secs(120), "the database to fill up", || {
        let log = coord.log();
        async move { log.contains("storage failure: no longer accepting work") }
    })
    .await;

    // It says why, to workers and users alike, and health turns NOT_SERVING.
    let grid_file = dir.path().join("g.toml");
    std::fs::write(&grid_file, grids::tiny("other", 2)).unwrap();
    let o = cli(&["submit", "--coordinator", &addr, grid_file.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("stopped accepting work") && err.contains("cannot grow"), "{err}");
    let o = cli(&["status", "--coordinator", &addr, &sweep]);
    assert!(o.status.success(), "reads still work: {}", String::from_utf8_lossy(&o.stderr));
    let ch = tonic::transport::Endpoint::from_shared(coord.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "gradsweep.v1.WorkerService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::NotServing as i32);

    // With room again (the same file, no cap), the sweep completes intact.
    coord.kill9();
    let mut restarted =
        CoordinatorProc::start(&db, coord.port, &["--lease-ttl-ms", "2000", "--heartbeat-ms", "300"], dir.path());
    let mut client = connect_control(&addr).await.unwrap();
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(180)).await;
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    restarted.kill9();
    assert_eq!(audit(&g, &sweep, &cells, Some(&db)), Audit { runs: 8, ..Audit::default() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_foreign_and_newer_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A real database with a finished sweep in it.
    let db = dir.path().join("state.db");
    {
        let coord = CoordinatorProc::start(&db, 0, &[], dir.path());
        let mut client = connect_control(&format!("127.0.0.1:{}", coord.port)).await.unwrap();
        let sweep = gradsweep_tests::submit(&mut client, &grids::tiny("db", 2)).await.sweep_id;
        let _w = WorkerProc::start(&coord.url(), "w", 2, dir.path());
        gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(60)).await;
    }
    // Fold the write-ahead log into the main file, as a clean shutdown would.
    rusqlite_free_update(&db, "PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let healthy = std::fs::read(&db).unwrap();
    assert!(healthy.len() > 64 * 1024, "the checkpointed database has many pages");

    // Garbage over the header.
    let mut bytes = healthy.clone();
    bytes[..100].fill(0x5a);
    std::fs::write(&db, &bytes).unwrap();
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let err = serve_fails(&db);
    assert!(err.contains(&db.display().to_string()) && err.contains("not a database"), "{err}");

    // Damaged b-tree pages inside an intact header: found by the integrity
    // check at open. (Damage inside stored results is caught later by their
    // own checksums.)
    let mut bytes = healthy.clone();
    let page = 4096;
    for p in 1..4 {
        bytes[p * page..p * page + 24].fill(0xa5);
    }
    std::fs::write(&db, &bytes).unwrap();
    let err = serve_fails(&db);
    assert!(err.contains(&db.display().to_string()) && err.contains("corrupt"), "{err}");

    // A newer schema.
    std::fs::write(&db, &healthy).unwrap();
    {
        let c = rusqlite_free_update(&db, "UPDATE meta SET value = '99' WHERE key = 'schema_version'");
        assert!(c.is_ok(), "{c:?}");
    }
    let err = serve_fails(&db);
    assert!(err.contains("schema version 99") && err.contains("newer gradsweep"), "{err}");

    // Another program's SQLite file.
    let foreign = dir.path().join("foreign.db");
    rusqlite_free_update(&foreign, "CREATE TABLE t (x INTEGER)").unwrap();
    let err = serve_fails(&foreign);
    assert!(err.contains("not a gradsweep database"), "{err}");
}

/// Runs one SQL statement on a database file, bypassing the store.
fn rusqlite_free_update(db: &std::path::Path, sql: &str) -> Result<(), String> {
    let c = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    c.execute_batch(sql).map_err(|e| e.to_string())
}

// The upgrade of files written by older schemas (1 and 2, with real rows in
// them) is `gradsweep_coordinator::store::schema`'s unit test
// `a_version_1_file_is_upgraded_with_its_runs_counted_and_their_specs_kept`.

/// Issue 12, item 4: one coordinator per database. A second `gradsweep
/// serve` on a file in use refuses to start and names the holder (host,
/// pid, since when); once the holder is SIGKILLed, its lock is gone with
/// it and a restart on the same file serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_one_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut first = CoordinatorProc::start(&db, 0, &[], dir.path());
    let err = serve_fails(&db);
    assert!(err.contains("in use by another coordinator"), "{err}");
    assert!(err.contains(&format!("pid {}", first.pid())) && err.contains("since 20"), "names the holder: {err}");
    assert!(err.contains("state.db.lock"), "names the lock file: {err}");
    first.kill9();
    first.restart();
    let mut client = connect_control(&format!("127.0.0.1:{}", first.port)).await.unwrap();
    let sweeps = client.list_sweeps(gradsweep_proto::v1::ListSweepsRequest {}).await.unwrap().into_inner();
    assert!(sweeps.sweeps.is_empty());
}

/// Issue 12, item 3: `Results` streams a sweep a page of cells at a time
/// (`RESULTS_PAGE_CELLS`), merging each page as it goes; across pages no
/// cell is lost, repeated or reordered, and the summary built cell by cell
/// equals the one computed from all cells at once (as `results --db`
/// computes it), with some cells finished and some not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_a_large_sweep_page_by_page_as_one_document() {
    use gradsweep_coordinator::service::RESULTS_PAGE_CELLS;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let server = gradsweep_tests::InProcess::start(gradsweep_tests::fast_config(&db)).await;
    let mut control = server.control().await;
    let cells = 2 * RESULTS_PAGE_CELLS + 37;
    let grid = grids::mlp("pages", "[0]", 1, "", 1)
        .replace("lr = [0.05, 0.1]", &format!("lr = {{ log = [0.01, 0.2], num = {} }}", cells / 2 + 1))
        .replace("batch_size = [16, 64]", "batch_size = [32, 64]");
    let sweep = gradsweep_tests::submit(&mut control, &grid).await.sweep_id;
    // Finish some runs: the first pages hold merged cells, the last ones
    // cells with no run done.
    let workers = gradsweep_tests::InProcessWorkers::start(&server.url, &[2]).await;
    wait_until(Duration::from_secs(120), "a few runs done", || {
        let mut c = control.clone();
        let id = sweep.clone();
        async move {
            c.status(gradsweep_proto::v1::StatusRequest { sweep_id: id }).await.unwrap().into_inner().runs_completed
                >= 6
        }
    })
    .await;
    workers.stop().await;
    let (streamed, summary) = fetch_results(&mut control, &sweep).await.unwrap();
    let offline = gradsweep_coordinator::offline::Offline::open(&db).unwrap();
    let (all, all_summary) = offline.results(&sweep, &Default::default()).unwrap();
    assert!(streamed.len() as u32 > 2 * RESULTS_PAGE_CELLS, "{} cells", streamed.len());
    assert_eq!(streamed.iter().map(|c| c.index).collect::<Vec<_>>(), (0..streamed.len() as u32).collect::<Vec<_>>());
    assert!(summary.runs_done >= 6 && summary.cells == streamed.len(), "{} {}", summary.runs_done, summary.cells);
    // NaN-bearing statistics compare as their JSON.
    assert_eq!(json(&streamed), json(&all), "the streamed cells are those of one read");
    assert_eq!(json(&summary), json(&all_summary), "and so is the summary");
    // The CLI prints CSV and JSON as the cells arrive: the same file and
    // the same document as from all cells at once.
    let run = |format: &'static str| {
        let (sweep, url) = (sweep.clone(), server.url.clone());
        tokio::task::spawn_blocking(move || cli(&["results", &sweep, "--format", format, "--coordinator", &url]))
    };
    let o = run("csv").await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let th = Default::default();
    assert_eq!(String::from_utf8(o.stdout).unwrap(), gradsweep_cli::report::csv(&all, &th));
    let o = run("json").await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let value = |v: &str| serde_json::from_str::<serde_json::Value>(v).unwrap();
    assert_eq!(doc["cells"], value(&json(&all)));
    assert_eq!(doc["summary"], value(&json(&all_summary)));
    assert_eq!(doc["provenance"]["sweep_id"], sweep.as_str());
    server.stop().await;
}

/// JSON of anything serialisable, for comparisons where NaN ≠ NaN.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}
