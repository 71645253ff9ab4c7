//! Acceptance 6: every grid error names file:line:col and the rule, the CLI
//! exits non-zero, and no sweep is stored — checked through the real CLI
//! against a real coordinator, and through the Submit RPC directly.

use gradsweep_proto::v1 as pb;
use gradsweep_tests::{CoordinatorProc, InProcess, cli, fast_config};

const BASE: &str = r#"[sweep]
name = "bad"
seeds = [0, 1]
[train]
model = "mlp:64-32-10"
dataset = "digits"
epochs = 3
[probe]
every_epochs = 1
[grid]
lr = { log = [0.02, 0.2], num = 4 }
batch_size = [8, 32, 128]
"#;

/// (name, edit of BASE, expected line:col, words the message must contain)
fn cases() -> Vec<(&'static str, String, &'static str, &'static str)> {
    vec![
        (
            "unknown key",
            BASE.replace("epochs = 3", "epochs = 3\nlearning_rate = 0.1"),
            "8:1",
            "unknown key `learning_rate`",
        ),
        (
            "unknown section key",
            BASE.replace("seeds = [0, 1]", "seeds = [0, 1]\ncolor = 1"),
            "4:1",
            "unknown field `color`",
        ),
        ("wrong type", BASE.replace("epochs = 3", "epochs = \"three\""), "7:10", "`epochs` must be an integer"),
        (
            "too large for the field",
            BASE.replace("epochs = 3", "epochs = 5000000000"),
            "7:10",
            "`epochs` = 5000000000 does not fit",
        ),
        (
            "lr not positive",
            BASE.replace("lr = { log = [0.02, 0.2], num = 4 }", "lr = [0.1, 0.0]"),
            "11:6",
            "`lr` must be a number > 0",
        ),
        (
            "log range not positive",
            BASE.replace("log = [0.02, 0.2]", "log = [-0.02, 0.2]"),
            "11:6",
            "needs positive ends",
        ),
        (
            "batch size below 1",
            BASE.replace("batch_size = [8, 32, 128]", "batch_size = [0, 8]"),
            "12:14",
            "`batch_size` must be ≥ 1",
        ),
        (
            "batch size above data",
            BASE.replace("batch_size = [8, 32, 128]", "batch_size = [8, 4096]"),
            "12:14",
            "larger than the training set",
        ),
        (
            "empty axis",
            BASE.replace("batch_size = [8, 32, 128]", "batch_size = []"),
            "12:14",
            "axis `batch_size` is empty",
        ),
        (
            "zip lengths",
            BASE.replace("batch_size = [8, 32, 128]", "[[grid.zip]]\nbatch_size = [8, 32]\nmomentum = [0.0, 0.5, 0.9]"),
            "12:1",
            "zip lists must have equal lengths",
        ),
        ("syntax", BASE.replace("[probe]", "[probe"), "8:7", ""),
        (
            "sketch size neither a number nor auto",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nsketch_rank = \"big\""),
            "10:15",
            "`sketch_rank` must be an integer ≥ 1 or \"auto\"",
        ),
        (
            "sketch over the memory cap",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nsketch_rank = 4096"),
            "10:15",
            "`sketch_rank` 4096 needs about 2275 MiB per probe at d = 2410, more than `memory_mb` = 2048",
        ),
        (
            "saved gradients over the memory cap",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nmemory_mb = 16\nsave_gradients = 2000"),
            "11:18",
            "`save_gradients` 2000 keeps 19 MiB of rows per probe at d = 2410, more than `memory_mb` = 16",
        ),
        (
            "probe epoch outside the run",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nat_epochs = [2, 7]"),
            "10:13",
            "`at_epochs` has 7, outside 1..=3",
        ),
        (
            "spectrum window",
            BASE.replace("every_epochs = 1", "every_epochs = 1\npsd_window = 48"),
            "10:14",
            "`psd_window` must be 0 or a power of two",
        ),
        (
            "too many projections",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nprojections = 300"),
            "10:15",
            "`projections` must be at most 256",
        ),
        (
            "unknown basis",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nbasis = \"pca\""),
            "10:9",
            "`basis` must be one of \"random\", \"eigen\"",
        ),
        (
            "eigen basis probe out of range",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nbasis = \"eigen\"\nbasis_probe = 3"),
            "11:15",
            "`basis_probe` is 3, but there are 3 probes",
        ),
        (
            "eigen basis at the last probe",
            BASE.replace("every_epochs = 1", "every_epochs = 1\nbasis = \"eigen\"\nbasis_probe = 2"),
            "11:15",
            "no trajectory would be recorded",
        ),
        (
            "model does not fit data",
            BASE.replace("mlp:64-32-10", "mlp:49-32-10"),
            "5:9",
            "takes input 49 and 10 classes",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_errors_name_place_and_rule_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coord = CoordinatorProc::start(&dir.path().join("state.db"), 0, &["--max-runs", "20"], dir.path());
    let addr = format!("127.0.0.1:{}", coord.port);
    for (name, text, at, words) in cases() {
        let file = dir.path().join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&file, &text).unwrap();
        let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{name}: submit must fail");
        let place = format!("{}:{at}:", file.display());
        assert!(err.contains(&place), "{name}: expected {place} in:\n{err}");
        assert!(err.contains(words), "{name}: expected `{words}` in:\n{err}");
    }
    // The cap is the coordinator's (--max-runs 20; the grid has 24 runs).
    let file = dir.path().join("big.toml");
    std::fs::write(&file, BASE).unwrap();
    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("{}:10:1:", file.display())) && err.contains("24 runs, more than the limit of 20"),
        "{err}"
    );

    // A valid grid too long for one message (800,000 seeds listed one by
    // one, 6 MB) is refused by the CLI with what to do, not a transport error.
    let seeds: Vec<String> = (0..800_000).map(|s| s.to_string()).collect();
    let long = BASE.replace("seeds = [0, 1]", &format!("seeds = [{}]", seeds.join(", ")));
    let file = dir.path().join("long.toml");
    std::fs::write(&file, long).unwrap();
    let o = cli(&["submit", "--coordinator", &addr, file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(&format!("grid file {} is", file.display())) && err.contains("`seeds = N`"), "{err}");

    let o = cli(&["status", "--coordinator", &addr]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no sweeps");
}

/// The coordinator validates on its own too (a client cannot bypass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_rpc_rejects_invalid_grids() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(fast_config(&dir.path().join("state.db"))).await;
    let mut control = server.control().await;
    for (name, text, at, words) in cases() {
        let err = control
            .submit(pb::SubmitRequest { grid_toml: text, file_name: "sent.toml".into(), force_new: false })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(
            err.message().contains(&format!("sent.toml:{at}:")) && err.message().contains(words),
            "{name}: {}",
            err.message()
        );
    }
    let sweeps = control.list_sweeps(pb::ListSweepsRequest {}).await.unwrap().into_inner().sweeps;
    assert!(sweeps.is_empty());
    server.stop().await;
}
