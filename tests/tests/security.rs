//! The shared token and TLS (issue 5, acceptance 5): off loopback the
//! coordinator refuses to start without a token; with one, every call of both
//! services must carry it; with a certificate it serves TLS, and workers and
//! the CLI connect through it.

use std::time::Duration;

use gradsweep_cli::client::{ClientError, Remote, connect_control, fetch_results};
use gradsweep_proto::transport::{ClientSecurity, Token};
use gradsweep_proto::v1 as pb;
use gradsweep_tests::{CoordinatorProc, WorkerProc, bin, cli_env, grids};

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn off_loopback_without_token_is_refused_unless_opted_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let out = std::process::Command::new(bin("gradsweep"))
        .args(["serve", "--listen", "0.0.0.0:0", "--db", db.to_str().unwrap()])
        .env_remove("GRADSWEEP_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("refusing to listen on 0.0.0.0") && t.contains("--token-file"), "{t}");
    assert!(!db.exists(), "nothing is created when the coordinator refuses to start");

    // The explicit opt-out starts it.
    let coord = CoordinatorProc::start_on("0.0.0.0", &db, 0, &["--insecure-no-auth"], dir.path());
    assert!(coord.port > 0);
    assert!(coord.log().contains("without a token (--insecure-no-auth)"), "{}", coord.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_on_every_call_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "correct-horse-battery-staple\n").unwrap();
    let tf = token_file.to_str().unwrap();
    let coord = CoordinatorProc::start_on(
        "0.0.0.0",
        &dir.path().join("state.db"),
        0,
        &["--token-file", tf, "--lease-ttl-ms", "1500", "--heartbeat-ms", "300"],
        dir.path(),
    );
    let addr = format!("127.0.0.1:{}", coord.port);

    // CLI: no token, wrong token, right token (from the environment).
    let none = cli_env(&["status", "--coordinator", &addr], &[]);
    assert!(!none.status.success());
    assert!(text(&none).contains("requires a token"), "{}", text(&none));
    let wrong = cli_env(&["status", "--coordinator", &addr], &[("GRADSWEEP_TOKEN", "guess")]);
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("wrong token"), "{}", text(&wrong));
    let right = cli_env(&["status", "--coordinator", &addr], &[("GRADSWEEP_TOKEN", "correct-horse-battery-staple")]);
    assert!(right.status.success(), "{}", text(&right));

    // Worker service without a token: refused, and nothing registered.
    let mut raw = pb::worker_service_client::WorkerServiceClient::connect(format!("http://{addr}")).await.unwrap();
    let reg = raw.register(gradsweep_tests::register_request("rogue")).await.unwrap_err();
    assert_eq!(reg.code(), tonic::Code::Unauthenticated);
    let authed = Remote {
        addr: addr.clone(),
        security: ClientSecurity {
            token: Some(Token::new("correct-horse-battery-staple", "test").unwrap()),
            ..Default::default()
        },
    };
    let mut client = authed.connect().await.unwrap();
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert!(workers.is_empty(), "a refused call leaves no trace: {workers:?}");
    let err = connect_control(&addr).await.unwrap().list_sweeps(pb::ListSweepsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // A worker without the token gives up with a clear error.
    let mut bad = WorkerProc::start(&coord.url(), "no-token", 1, dir.path());
    let status = tokio::task::spawn_blocking(move || bad.child.wait().unwrap()).await.unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("no-token.log")).unwrap();
    assert!(log.contains("refused registration") && log.contains("token"), "{log}");

    // With the token file, a sweep runs to the end.
    let _w = WorkerProc::start_with(&coord.url(), "w", 2, &["--token-file", tf], dir.path());
    let grid = grids::tiny("token", 2);
    let sweep = gradsweep_tests::submit(&mut client, &grid).await.sweep_id;
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(gradsweep_tests::verify_against_offline(&grid, &cells), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_generated_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["gradsweep.test".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tls-token").unwrap();
    let (c, k, tf) = (cert.to_str().unwrap(), key.to_str().unwrap(), token_file.to_str().unwrap());
    let coord = CoordinatorProc::start(
        &dir.path().join("state.db"),
        0,
        &["--tls-cert", c, "--tls-key", k, "--token-file", tf, "--lease-ttl-ms", "1500", "--heartbeat-ms", "300"],
        dir.path(),
    );
    let addr = format!("127.0.0.1:{}", coord.port);

    // Plain text cannot talk to a TLS coordinator.
    let plain = Remote { addr: addr.clone(), security: ClientSecurity::load(Some(&token_file), None, None).unwrap() };
    let refused = match plain.connect().await {
        Ok(mut c) => c.list_sweeps(pb::ListSweepsRequest {}).await.is_err(),
        Err(ClientError::Connect(..)) => true,
        Err(e) => panic!("unexpected error {e}"),
    };
    assert!(refused, "a plain-text call must fail against TLS");
    // TLS that does not trust the certificate fails too.
    let other = rcgen::generate_simple_self_signed(vec!["gradsweep.test".to_string()]).unwrap();
    let untrusted = Remote {
        addr: addr.clone(),
        security: ClientSecurity {
            tls_ca: Some(other.cert.pem().into_bytes()),
            tls_domain: Some("gradsweep.test".into()),
            ..plain.security.clone()
        },
    };
    let untrusted_failed = match untrusted.connect().await {
        Ok(mut c) => c.list_sweeps(pb::ListSweepsRequest {}).await.is_err(),
        Err(_) => true,
    };
    assert!(untrusted_failed, "a certificate from another CA must be rejected");

    // The worker and the CLI over TLS, verifying the name in the certificate.
    let tls_args = ["--tls-ca", c, "--tls-domain", "gradsweep.test", "--token-file", tf];
    let _w = WorkerProc::start_with(&addr, "tls-worker", 2, &tls_args, dir.path());
    let grid_file = dir.path().join("grid.toml");
    let grid = grids::tiny("tls", 2);
    std::fs::write(&grid_file, &grid).unwrap();
    let mut args = vec!["--coordinator", &addr];
    args.extend_from_slice(&tls_args);
    let submit = cli_env(&[&["submit", grid_file.to_str().unwrap()], &args[..]].concat(), &[]);
    assert!(submit.status.success(), "{}", text(&submit));
    let secure = Remote {
        addr: addr.clone(),
        security: ClientSecurity::load(Some(&token_file), Some(&cert), Some("gradsweep.test".into())).unwrap(),
    };
    let mut client = secure.connect().await.unwrap();
    let sweep = client.list_sweeps(pb::ListSweepsRequest {}).await.unwrap().into_inner().sweeps[0].sweep_id.clone();
    gradsweep_tests::wait_sweep_completed(&client, &sweep, Duration::from_secs(120)).await;
    let results = cli_env(&[&["results", &sweep, "--format", "csv"], &args[..]].concat(), &[]);
    assert!(results.status.success(), "{}", text(&results));
    assert_eq!(String::from_utf8_lossy(&results.stdout).lines().count(), 5, "header + 4 cells");
    let (cells, _) = fetch_results(&mut client, &sweep).await.unwrap();
    assert_eq!(gradsweep_tests::verify_against_offline(&grid, &cells), 8);
}
