//! Issue 5: runs interrupted at segment boundaries resume elsewhere and end
//! bit-identical (acceptance 2), the zombie worker leaves no trace
//! (acceptance 3), and the chaos suite (acceptance 1): a sweep on real
//! processes survives worker SIGKILLs, coordinator SIGKILLs, a SIGSTOPped
//! worker, workers joining and draining, and cut connections — and ends
//! with every run once, bit-identical to an undisturbed run, checkpoints
//! included.

use std::time::Duration;

use gradsweep_cli::client::{connect_control, fetch_results};
use gradsweep_proto::v1 as pb;
use gradsweep_tests::{
    Audit, CoordinatorProc, Proxy, WorkerProc, audit, cli, log_field, poll_until, wait_until, worker_holds_run,
    worker_named,
};

/// 2 × 2 cells × `seeds` seeds of a small MLP on digits; segments every
/// 2 epochs and every 25 steps (so boundaries fall mid-epoch too). The
/// trajectory is projected onto the top eigenvectors of `D` at the first
/// probe, so segments after it must carry those directions, and recorded
/// once per epoch too (`epoch_psd_window`), so they carry that recorder's
/// weights, increments and spectra as well. A faulted run
/// must still be running when its fault lands: an epoch takes about 10 ms
/// on a 2-core machine of 2026 (16 epochs, 0.2 s, let a whole sweep end
/// before the first fault), so the suites ask for tens of epochs.
fn grid(name: &str, seeds: u32, epochs: u32) -> String {
    let segments = "momentum = 0.9\ncheckpoint_every_epochs = 2\ncheckpoint_every_steps = 25";
    let g = gradsweep_tests::grids::mlp(name, &seeds.to_string(), epochs, segments, 4);
    g.replace("projections = 4", "projections = 4\nbasis = \"eigen\"\npsd_window = 16\nepoch_psd_window = 16")
}

/// (run, resume_seq) of every grant that resumed from a checkpoint.
fn resumes(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter(|l| l.contains("run leased"))
        .filter_map(|l| {
            let seq: u64 = log_field(l, "resume_seq")?.parse().ok()?;
            (seq > 0).then(|| (log_field(l, "run_id").unwrap_or("").to_string(), seq))
        })
        .collect()
}

/// Where the last complete line of a log ends.
fn line_end(log: &str) -> usize {
    log.rfind('\n').map_or(0, |i| i + 1)
}

/// Whether the coordinator's log shows `run` leased to the worker `worker_id`.
fn leased_to(log: &str, run: &str, worker_id: &str) -> bool {
    log.lines()
        .filter(|l| l.contains("run leased") && log_field(l, "run_id") == Some(run))
        .any(|l| log_field(l, "worker_id").is_some_and(|w| w.trim_matches('"') == worker_id))
}

/// Acceptance 2: workers with different slot counts take turns; each is
/// sent SIGTERM mid-run and hands its runs back at the next checkpoint; the
/// next one resumes them. Every run ends bit-identical to an undisturbed
/// run, and so does its last stored checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_resume_from_checkpoints_across_workers_and_slots() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let coord = CoordinatorProc::start(&db, 0, &["--lease-ttl-ms", "60000", "--heartbeat-ms", "300"], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut client = connect_control(&addr).await.unwrap();
    let g = grid("resume", 1, 40);
    let sweep = gradsweep_tests::submit(&mut client, &g).await.sweep_id;
    let slots = [1u32, 3, 2];
    let mut turn = 0;
    loop {
        let st = client.status(pb::StatusRequest { sweep_id: sweep.clone() }).await.unwrap().into_inner();
        if st.runs_completed == st.runs_total {
            break;
        }
        assert!(turn < 40, "the sweep does not progress");
        let name = format!("turn{turn}");
        let mut w = WorkerProc::start(&coord.url(), &name, slots[turn % 3], dir.path());
        turn += 1;
        // Let it work for a while, then hand back at the next boundary. A
        // turn that takes only a short last segment can finish it between
        // two polls, so a completed sweep counts as having held it.
        let held = poll_until(Duration::from_secs(60), || {
            let mut c = client.clone();
            let (name, sweep) = (name.clone(), sweep.clone());
            async move {
                let st = c.status(pb::StatusRequest { sweep_id: sweep }).await.expect("status").into_inner();
                worker_holds_run(&c, &name).await || st.runs_completed == st.runs_total
            }
        })
        .await;
        assert!(held, "{name} never held a run");
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.signal(libc::SIGTERM);
        let status = tokio::task::spawn_blocking(move || w.child.wait().unwrap()).await.unwrap();
        assert!(status.success(), "{name} exits cleanly after handing back");
    }
    let log = coord.log();
    let resumed = resumes(&log);
    let distinct: std::collections::BTreeSet<_> = resumed.iter().collect();
    assert!(distinct.len() >= 3, "resumed from at least three interruption points: {resumed:?}");
    assert!(!log.contains("lease lapsed"), "hand-backs are clean, no lease lapsed");
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    let a = audit(&g, &sweep, &cells, Some(&db));
    assert_eq!(a, Audit { runs: 4, ..Audit::default() }, "after {turn} turns, {} resumes", resumed.len());
}

/// Acceptance 3: a worker frozen (SIGSTOP) past its lease and then thawed
/// finds its reports refused by epoch, drops its run, and leaves no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_worker_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let coord = CoordinatorProc::start(&db, 0, &["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut client = connect_control(&addr).await.unwrap();
    let g = grid("zombie", 1, 64);
    let sweep = gradsweep_tests::submit(&mut client, &g).await.sweep_id;
    let zombie = WorkerProc::start(&coord.url(), "zombie", 1, dir.path());
    let held = gradsweep_tests::freeze_holding_run(&client, &zombie, Duration::from_millis(600)).await;
    // Frozen, it writes nothing more: what its log says from here on, it
    // said after the thaw.
    let zlog = dir.path().join("zombie.log");
    let zombie_mark = line_end(&std::fs::read_to_string(&zlog).unwrap_or_default());
    // Its lease lapses and a worker that joined after the freeze takes the
    // run over, however long that worker's other runs take.
    let _heir = WorkerProc::start(&coord.url(), "heir", 1, dir.path());
    wait_until(Duration::from_secs(60), "the heir to register", || async {
        worker_named(&client, "heir").await.is_some()
    })
    .await;
    let heir_id = worker_named(&client, "heir").await.expect("registered").worker_id;
    let re_leased = poll_until(Duration::from_secs(120), || {
        let log = coord.log();
        let all = held.iter().all(|r| leased_to(&log, r, &heir_id));
        async move { all }
    })
    .await;
    assert!(
        re_leased,
        "the frozen worker's runs {held:?} were not leased to the heir {heir_id}; coordinator log:\n{}",
        coord.log()
    );
    zombie.signal(libc::SIGCONT);
    wait_until(Duration::from_secs(60), "the thawed worker to drop its run", || {
        let log = std::fs::read_to_string(&zlog).unwrap_or_default();
        let lost = log.get(zombie_mark..).is_some_and(|l| l.contains("lease lost"));
        async move { lost }
    })
    .await;
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    // Whether its heartbeat or its next report told it first, the thawed
    // worker learnt that its epoch is gone; anything it sent was refused.
    assert!(coord.log().contains("lease lapsed; run requeued"), "{}", coord.log());
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    let a = audit(&g, &sweep, &cells, Some(&db));
    assert_eq!(a, Audit { runs: 4, ..Audit::default() });
}

/// Acceptance 1: the chaos suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_suite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut coord = CoordinatorProc::start(&db, 0, &["--lease-ttl-ms", "1500", "--heartbeat-ms", "300"], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    let proxy = Proxy::start(coord.port).await;
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let mut client = connect_control(&addr).await.unwrap();
    let g = grid("chaos", 3, 96);
    let sweep = gradsweep_tests::submit(&mut client, &g).await.sweep_id;
    let mut faults = 0;
    let mut workers = vec![
        WorkerProc::start(&coord.url(), "direct-0", 1, dir.path()),
        WorkerProc::start(&via_proxy, "proxied-0", 2, dir.path()),
    ];
    let progressed = |c: &gradsweep_cli::client::ControlClient, min: u32| {
        let mut c = c.clone();
        let sweep = sweep.clone();
        async move {
            let s = c.status(pb::StatusRequest { sweep_id: sweep }).await.map(|r| r.into_inner());
            s.is_ok_and(|s| s.runs_completed >= min || s.runs_completed == s.runs_total)
        }
    };

    // (a) SIGKILL a worker three times, each time while it holds a run.
    for i in 1..=3 {
        gradsweep_tests::wait_worker_holds_run(&client, &workers[0].name.clone(), Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        workers[0].kill9();
        faults += 1;
        workers[0] = WorkerProc::start(&coord.url(), &format!("direct-{i}"), 1, dir.path());
    }
    // (e) cut every connection through the proxy, three times.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.cut();
        faults += 1;
    }
    // (b) SIGKILL the coordinator and restart it on the same database, twice.
    for _ in 0..2 {
        wait_until(Duration::from_secs(60), "some progress", || progressed(&client, 1)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        coord.kill9();
        faults += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
        coord.restart();
        client = connect_control(&addr).await.unwrap();
    }
    // (c) SIGSTOP a worker past its lease, then SIGCONT it.
    let name = workers[1].name.clone();
    gradsweep_tests::wait_worker_holds_run(&client, &name, Duration::from_secs(60)).await;
    workers[1].signal(libc::SIGSTOP);
    faults += 1;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    workers[1].signal(libc::SIGCONT);
    // (d) add a worker and drain another.
    workers.push(WorkerProc::start(&via_proxy, "joiner", 1, dir.path()));
    faults += 1;
    let victim = worker_named(&client, &workers[0].name).await.expect("direct worker registered").worker_id;
    let o = cli(&["drain", "--coordinator", &addr, &victim]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    faults += 1;
    workers.push(WorkerProc::start(&coord.url(), "finisher", 2, dir.path()));

    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(300)).await;
    let (cells, summary) = fetch_results(&mut client, &sweep).await.unwrap();
    let log = coord.log();
    let resumed = resumes(&log).len();
    let lapsed = log.matches("lease lapsed; run requeued").count();
    let a = audit(&g, &sweep, &cells, Some(&db));
    // Written to the stream directly so that it shows even when cargo test
    // captures the output of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "chaos: faults injected {faults}, runs {}, lost {}, duplicated {}, mismatched {} \
         (checkpoints mismatched {}; {resumed} resumes from checkpoints, {lapsed} leases lapsed)",
        a.runs,
        a.lost,
        a.duplicated,
        a.mismatched,
        a.checkpoint_mismatched
    );
    assert_eq!(summary.runs_done, 12);
    assert_eq!(a, Audit { runs: 12, ..Audit::default() });
    assert!(resumed >= 1, "some run resumed from a checkpoint");
}
