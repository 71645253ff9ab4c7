//! Issue 6, acceptance 3: `/metrics` on the coordinator and the worker serves
//! the listed metrics in Prometheus text format during a sweep; the gRPC
//! health service and server reflection answer.

use std::time::Duration;

use gradsweep_cli::client::{connect_control, fetch_results};
use gradsweep_tests::{CoordinatorProc, WorkerProc, grids, http_get, metric, read_port_file};
use tokio_stream::StreamExt;

/// Every sample line is `name{labels} value` with a parseable value, and
/// every family has HELP and TYPE lines.
fn assert_well_formed(text: &str) {
    let mut families = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families += 1;
            let kind = rest.split(' ').nth(1).unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line `{line}`"));
        assert!(name.chars().next().is_some_and(|c| c.is_ascii_alphabetic()), "{line}");
        assert!(value == "NaN" || value == "+Inf" || value.parse::<f64>().is_ok(), "bad value in `{line}`");
    }
    assert!(families >= 8, "too few metric families:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_reflection_during_a_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let mport_file = dir.path().join("metrics.port");
    let coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &[
            "--lease-ttl-ms",
            "1500",
            "--heartbeat-ms",
            "300",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-port-file",
            mport_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    let mport = read_port_file(&mport_file, "coordinator metrics");
    let addr = format!("127.0.0.1:{}", coord.port);
    let mut client = connect_control(&addr).await.unwrap();

    // Health: both services SERVING, an unknown one NOT_FOUND.
    let ch = tonic::transport::Endpoint::from_shared(coord.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for svc in ["gradsweep.v1.WorkerService", "gradsweep.v1.ControlService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest { service: svc.into() })
            .await
            .unwrap_or_else(|e| panic!("health check of {svc}: {e}"))
            .into_inner();
        assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{svc}");
    }
    let unknown = health.check(tonic_health::pb::HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);

    // Reflection lists the services, and resolves a message type.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(ch);
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("gradsweep.v1.ReportRequest".into())),
        },
    ];
    let mut answers = refl.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
    let first = answers.next().await.unwrap().unwrap().message_response.unwrap();
    let MessageResponse::ListServicesResponse(list) = first else { panic!("expected a service list, got {first:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["gradsweep.v1.WorkerService", "gradsweep.v1.ControlService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "reflection lists {names:?}, missing {want}");
    }
    let second = answers.next().await.unwrap().unwrap().message_response.unwrap();
    let MessageResponse::FileDescriptorResponse(fd) = second else { panic!("expected a descriptor, got {second:?}") };
    assert!(!fd.file_descriptor_proto.is_empty());

    // A sweep submitted with no worker yet: every run is pending.
    let grid = grids::tiny("metrics", 4);
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    let (status, headers, body) = http_get(mport, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("content-type: text/plain; version=0.0.4"), "{headers}");
    assert_well_formed(&body);
    assert_eq!(metric(&body, "gradsweep_pending_runs"), Some(8.0), "{body}");
    assert_eq!(metric(&body, "gradsweep_runs{state=\"queued\"}"), Some(8.0));
    assert_eq!(metric(&body, "gradsweep_runs{state=\"completed\"}"), Some(0.0));
    assert_eq!(http_get(mport, "/healthz").2, "ok\n");

    // A worker with its own metrics endpoint runs the sweep.
    let wport_file = dir.path().join("worker-metrics.port");
    let _w = WorkerProc::start_with(
        &coord.url(),
        "w1",
        2,
        &["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", wport_file.to_str().unwrap()],
        dir.path(),
    );
    let wport = read_port_file(&wport_file, "worker metrics");
    gradsweep_tests::wait_worker_holds_run(&client, "w1", Duration::from_secs(60)).await;
    let during = http_get(mport, "/metrics").2;
    assert_eq!(metric(&during, "gradsweep_workers{state=\"active\"}"), Some(1.0), "{during}");
    assert!(metric(&during, "gradsweep_runs{state=\"leased\"}").unwrap() >= 1.0, "{during}");
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    // A handler bumps its counters just after its transaction commits, so
    // the status can show the last run done a moment before the metrics do.
    gradsweep_tests::wait_until(Duration::from_secs(30), "the last finish to be counted", || async move {
        metric(&http_get(mport, "/metrics").2, "gradsweep_runs_finished_total").unwrap_or(0.0) >= 8.0
    })
    .await;

    let after = http_get(mport, "/metrics").2;
    assert_well_formed(&after);
    assert_eq!(metric(&after, "gradsweep_runs{state=\"completed\"}"), Some(8.0), "{after}");
    assert_eq!(metric(&after, "gradsweep_pending_runs"), Some(0.0));
    assert!(metric(&after, "gradsweep_report_bytes_total").unwrap() > 1000.0);
    // Cells are merged by the merger once each, after the finish that ends
    // the cell's last run (finishes do not wait): 4 merges of 2 sketches.
    gradsweep_tests::wait_until(Duration::from_secs(60), "the merger to catch up", || async move {
        let m = http_get(mport, "/metrics").2;
        metric(&m, "gradsweep_cells_pending_merge") == Some(0.0)
            && metric(&m, "gradsweep_sketch_merges_total").unwrap_or(0.0) >= 8.0
    })
    .await;
    let after = http_get(mport, "/metrics").2;
    assert_eq!(metric(&after, "gradsweep_sketch_merges_total"), Some(8.0), "{after}");
    assert_eq!(metric(&after, "gradsweep_merge_seconds_count"), Some(4.0), "one merge per cell: {after}");
    // Group commit: every transition was committed, never more commits
    // than transitions.
    let commits = metric(&after, "gradsweep_store_commits_total").unwrap();
    let transitions = metric(&after, "gradsweep_store_transitions_total").unwrap();
    assert!(commits >= 1.0 && transitions >= commits, "{commits} commits of {transitions} transitions");
    assert_eq!(metric(&after, "gradsweep_lease_expiries_total"), Some(0.0));

    // Likewise the worker counts a run finished only once its final report
    // is acknowledged, which can land after the coordinator shows it done.
    gradsweep_tests::wait_until(Duration::from_secs(30), "the worker to count its last finish", || async move {
        let w = http_get(wport, "/metrics").2;
        metric(&w, "gradsweep_worker_runs_finished_total").unwrap_or(0.0) >= 8.0
            && metric(&w, "gradsweep_worker_active_runs") == Some(0.0)
    })
    .await;
    let w = http_get(wport, "/metrics").2;
    assert_well_formed(&w);
    assert_eq!(metric(&w, "gradsweep_worker_runs_finished_total"), Some(8.0), "{w}");
    assert_eq!(metric(&w, "gradsweep_worker_active_runs"), Some(0.0));
    let (samples, steps) =
        (metric(&w, "gradsweep_worker_samples_total").unwrap(), metric(&w, "gradsweep_worker_steps_total").unwrap());
    assert!(steps > 0.0 && samples > steps, "samples {samples}, steps {steps}");
    assert!(metric(&w, "gradsweep_worker_samples_per_second").unwrap() > 0.0);
    // 4 epochs with a probe every 2: two probes per run.
    assert_eq!(metric(&w, "gradsweep_worker_probe_seconds_count"), Some(16.0), "{w}");
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(gradsweep_tests::verify_against_offline(&grid, &cells), 8);
}
