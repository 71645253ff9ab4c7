//! Issue 3, acceptance 5: the same seed gives bit-identical weights after
//! training, across runs and across `--slots` settings, for a model with
//! BatchNorm and dropout (small-lenet on small MNIST-format files written
//! here). Issue 11, acceptance 2: a probe split into shards gives the same
//! bits whether one slot computes it or idle slots help.

use std::path::Path;
use std::time::Duration;

use gradsweep_cli::client::fetch_results;
use gradsweep_tests::{InProcess, InProcessWorkers, fast_config, submit, verify_against_offline, wait_sweep_completed};

fn idx_images(n: u32, seed: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        b.extend(v.to_be_bytes());
    }
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    b.extend((0..n * 784).map(|_| {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        (s >> 24) as u8
    }));
    b
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend(n.to_be_bytes());
    b.extend((0..n).map(|i| (i * 7 % 10) as u8));
    b
}

fn write_fake_mnist(dir: &Path) {
    let m = dir.join("mnist");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("train-images-idx3-ubyte"), idx_images(256, 1)).unwrap();
    std::fs::write(m.join("train-labels-idx1-ubyte"), idx_labels(256)).unwrap();
    std::fs::write(m.join("t10k-images-idx3-ubyte"), idx_images(64, 2)).unwrap();
    std::fs::write(m.join("t10k-labels-idx1-ubyte"), idx_labels(64)).unwrap();
}

/// What the workers of [`run_on_workers`] say they did.
#[derive(Debug, Default)]
struct Help {
    /// Idle slots lent to probe passes.
    lent: f64,
    /// Probe shards computed for another worker's run.
    shards: f64,
}

/// Runs `grid` on one worker per entry of `slots` (with that many slots);
/// checks every run against an undisturbed offline run (probes included)
/// and returns the runs' weight hashes, and what the workers' metrics say
/// of slots lent and shards computed for others.
async fn run_on_workers(grid: &str, db: &Path, slots: &[u32], runs: usize) -> (Vec<(String, u64)>, Help) {
    let server = InProcess::start(fast_config(db)).await;
    let mut control = server.control().await;
    let sweep = submit(&mut control, grid).await.sweep_id;
    let workers = InProcessWorkers::start(&server.url, slots).await;
    wait_sweep_completed(&control, &sweep, Duration::from_secs(300)).await;
    let help = Help {
        lent: workers
            .metric_sum("gradsweep_worker_probe_slots_lent_total")
            .await
            .expect("the workers export slot lending"),
        shards: workers.metric_sum("gradsweep_worker_probe_shards_computed_total").await.expect("and shards computed"),
    };
    workers.stop().await;
    let (cells, _) = fetch_results(&mut control, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(grid, &cells), runs);
    server.stop().await;
    (cells.iter().flat_map(|c| c.runs.iter().map(|r| (r.run_id.clone(), r.fin.weights_hash))).collect(), help)
}

/// [`run_on_workers`] with one worker.
async fn run_with_slots(grid: &str, db: &Path, slots: u32, runs: usize) -> (Vec<(String, u64)>, f64) {
    let (hashes, help) = run_on_workers(grid, db, &[slots], runs).await;
    assert_eq!(help.shards, 0.0, "one worker computes no shard for another");
    (hashes, help.lent)
}

/// small-lenet on the fake MNIST in `dir`, 2 epochs at batch 32, a probe
/// after each; the rest as given (TOML fragments).
fn lenet_grid(dir: &Path, name: &str, seeds: &str, train: &str, probe: &str, lrs: &str) -> String {
    format!(
        r#"
[sweep]
name = "{name}"
seeds = {seeds}
[train]
model = "small-lenet"
dataset = "mnist"
data_dir = "{}"
normalize = true
epochs = 2
batch_size = 32
{train}
[probe]
every_epochs = 1
{probe}
projections = 4
max_lag = 4
[grid]
lr = {lrs}
"#,
        dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_weights_across_slots() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_mnist(dir.path());
    let grid = lenet_grid(
        dir.path(),
        "determinism",
        "[0, 1]",
        "momentum = 0.9\nnesterov = true\nweight_decay = 1e-4\nlr_schedule = \"cosine\"",
        "sketch_rank = 8",
        "[0.05, 0.1]",
    );
    let one = run_with_slots(&grid, &dir.path().join("a.db"), 1, 4).await.0;
    let three = run_with_slots(&grid, &dir.path().join("b.db"), 3, 4).await.0;
    assert_eq!(one.len(), 4);
    assert_eq!(one, three, "weights differ between --slots 1 and --slots 3");
    let distinct: std::collections::BTreeSet<u64> = one.iter().map(|r| r.1).collect();
    assert_eq!(distinct.len(), 4, "different seeds and rates give different weights");
}

/// One run whose probes split into four shards (64 samples each): on a
/// worker with one slot every shard runs on the run's own thread; on a
/// worker with two, the idle slot (held by the acquisition loop while it
/// waits for work) is lent to each probe pass. Both give exactly the
/// undisturbed offline run (single-threaded), probes and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shards_use_idle_slots_and_change_no_bit() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_mnist(dir.path());
    let grid = lenet_grid(dir.path(), "shards", "[3]", "", "sketch_rank = \"auto\"\nshard_samples = 64", "[0.05]");
    let (one, lent_one) = run_with_slots(&grid, &dir.path().join("a.db"), 1, 1).await;
    let (two, lent_two) = run_with_slots(&grid, &dir.path().join("b.db"), 2, 1).await;
    assert_eq!(one, two);
    assert_eq!(lent_one, 0.0, "one slot: nothing to lend");
    assert!(lent_two >= 2.0, "two slots: the idle one helps each probe pass (lent {lent_two})");
}

/// Issue 11, acceptance 2, across workers: the same run on two workers of
/// one slot each. The one without a run is idle, so it is leased shards of
/// the other's probe passes, computes them from the published pass and
/// sends them back; the run's worker folds them in shard order. The result
/// is the undisturbed offline run's, bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shards_on_two_workers_change_no_bit() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_mnist(dir.path());
    let grid = lenet_grid(dir.path(), "workers", "[3]", "", "sketch_rank = \"auto\"\nshard_samples = 32", "[0.05]");
    let (alone, _) = run_with_slots(&grid, &dir.path().join("a.db"), 1, 1).await;
    let (two, help) = run_on_workers(&grid, &dir.path().join("b.db"), &[1, 1], 1).await;
    assert_eq!(alone, two);
    assert!(help.shards >= 1.0, "the idle worker computed shards of the other's probes ({help:?})");
}
