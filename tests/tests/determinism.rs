//! Issue 3, acceptance 5: the same seed gives bit-identical weights after
//! training, across runs and across `--slots` settings, for a model with
//! BatchNorm and dropout (small-lenet on small MNIST-format files written
//! here).

use std::path::Path;
use std::time::Duration;

use gradsweep_coordinator::client::fetch_results;
use gradsweep_tests::{InProcess, fast_config, submit, verify_against_offline, wait_sweep_completed};

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

async fn run_with_slots(grid: &str, db: &Path, slots: u32) -> Vec<(String, u64)> {
    let server = InProcess::start(fast_config(db)).await;
    let mut control = server.control().await;
    let sweep = submit(&mut control, grid).await.sweep_id;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(gradsweep_worker::Shutdown::None);
    let mut cfg = gradsweep_worker::WorkerConfig::new(server.url.clone(), slots);
    cfg.name = format!("slots-{slots}");
    let worker = tokio::spawn(gradsweep_worker::run_worker(cfg, stop_rx));
    wait_sweep_completed(&control, &sweep, Duration::from_secs(300)).await;
    let _ = stop_tx.send(gradsweep_worker::Shutdown::Terminate);
    worker.await.unwrap().unwrap();
    let (cells, _) = fetch_results(&mut control, &sweep).await.unwrap();
    assert_eq!(verify_against_offline(grid, &cells), 4);
    server.stop().await;
    cells.iter().flat_map(|c| c.runs.iter().map(|r| (r.run_id.clone(), r.fin.weights_hash))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_seed_same_weights_across_slots() {
    let dir = tempfile::tempdir().unwrap();
    write_fake_mnist(dir.path());
    let grid = format!(
        r#"
[sweep]
name = "determinism"
seeds = [0, 1]
[train]
model = "small-lenet"
dataset = "mnist"
data_dir = "{}"
normalize = true
epochs = 2
batch_size = 32
momentum = 0.9
nesterov = true
weight_decay = 1e-4
lr_schedule = "cosine"
[probe]
every_epochs = 1
sketch_rank = 8
projections = 4
max_lag = 4
[grid]
lr = [0.05, 0.1]
"#,
        dir.path().display()
    );
    let one = run_with_slots(&grid, &dir.path().join("a.db"), 1).await;
    let three = run_with_slots(&grid, &dir.path().join("b.db"), 3).await;
    assert_eq!(one.len(), 4);
    assert_eq!(one, three, "weights differ between --slots 1 and --slots 3");
    let distinct: std::collections::BTreeSet<u64> = one.iter().map(|r| r.1).collect();
    assert_eq!(distinct.len(), 4, "different seeds and rates give different weights");
}
