//! Fencing and idempotence, driven through the worker RPCs directly
//! (acceptance 5), and cell merges checked against an offline merge
//! (acceptance 7).

use std::ops::ControlFlow;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use gradsweep_coordinator::store::{LeasePolicy, RunState, Store};
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::report_request::Body;
use gradsweep_shared::run::{RunEvent, execute};
use gradsweep_shared::spec::{RunFinal, RunSpec};
use gradsweep_shared::stats::SpectrumStats;
use gradsweep_tests::{InProcess, fast_config, submit};
use gradsweep_worker::convert::{assigned_spec, event_bodies, final_to_wire};
use tonic::Code;

const ONE_RUN: &str = r#"
[sweep]
name = "fence"
seeds = [3]
[train]
model = "mlp:64-8-10"
dataset = "digits"
epochs = 2
batch_size = 64
[probe]
every_epochs = 1
sketch_rank = 8
projections = 3
max_lag = 4
"#;

/// The spec a run assignment carries, read as a worker reads it.
fn spec_of(run: &pb::RunAssignment) -> RunSpec {
    assigned_spec(run.spec.clone()).unwrap()
}

/// Computes a run offline and returns its report bodies and final figures.
fn bodies_of(spec: &RunSpec) -> (Vec<Body>, RunFinal) {
    let mut bodies = vec![];
    let fin = execute(spec, &AtomicBool::new(false), &mut |e: RunEvent| {
        bodies.extend(event_bodies(e, f64::NAN));
        ControlFlow::Continue(())
    })
    .unwrap();
    (bodies, fin)
}

fn msg(worker: &str, run: &pb::RunAssignment, epoch: u64, seq: u64, body: Body) -> pb::ReportRequest {
    pb::ReportRequest { worker_id: worker.into(), run_id: run.run_id.clone(), epoch, seq, body: Some(body) }
}

async fn register(
    c: &mut pb::worker_service_client::WorkerServiceClient<tonic::transport::Channel>,
    name: &str,
) -> String {
    c.register(gradsweep_tests::register_request(name)).await.unwrap().into_inner().worker_id
}

fn open_store(db: &std::path::Path) -> Store {
    Store::open(db, LeasePolicy { ttl_ms: 1500, max_attempts: 10 }).unwrap()
}

fn finish(worker: &str, run: &pb::RunAssignment, epoch: u64, last_seq: u64, fin: &RunFinal) -> pb::FinishRequest {
    pb::FinishRequest {
        worker_id: worker.into(),
        run_id: run.run_id.clone(),
        epoch,
        last_seq,
        outcome: pb::RunOutcome::Completed as i32,
        error: String::new(),
        final_figures: Some(final_to_wire(fin)),
    }
}

/// Every field of a run spec and of a run's final figures crosses the wire
/// unchanged: the coordinator's conversion out and the worker's back in
/// (and the reverse for the figures) give the value back. Every field
/// differs from its default, so a field either side dropped would show, and
/// the struct literals name every field, so a new one must be added here.
#[test]
fn specs_and_final_figures_cross_the_wire_unchanged() {
    use gradsweep_shared::spec::{ProbeConfig, ProjectionBasis, SketchSize, TrainConfig, Trainer, WirePrecision};
    let train = TrainConfig {
        model: "lenet".into(),
        dataset: "mnist".into(),
        epochs: 12,
        lr: 0.05,
        batch_size: 128,
        momentum: 0.9,
        weight_decay: 5e-4,
        replacement: true,
        test_fraction: 0.25,
        split_seed: 7,
        data_dir: "/data/x".into(),
        classes: vec![3, 1],
        downsample: 4,
        normalize: true,
        nesterov: true,
        lr_schedule: "multistep".into(),
        lr_step_epochs: 3,
        lr_milestones: vec![6, 10],
        lr_gamma: 0.2,
        checkpoint_every_epochs: 2,
        checkpoint_every_steps: 500,
        control_lambda: 0.5,
        control_steps: 20,
        trainer: Trainer::parse("python:pkg.train:main").unwrap(),
    };
    let probe = ProbeConfig {
        every_epochs: 3,
        at_epochs: vec![2, 5, 12],
        sketch_rank: SketchSize::Fixed(300),
        memory_mb: 512,
        shard_samples: 1000,
        save_gradients: 16,
        keep_sketches: true,
        digest_vectors: 4,
        projections: 5,
        basis: ProjectionBasis::Eigen,
        basis_probe: 1,
        max_lag: 32,
        burn_in_epochs: 2,
        projection_seed: 11,
        block_size: 32,
        wire_precision: WirePrecision::F16,
        psd_window: 128,
        epoch_psd_window: 16,
        exact: true,
    };
    let user = serde_json::json!({
        "width": 3, "scale": 3.0, "negative": -2, "huge": u64::MAX, "name": "x", "on": true, "nothing": null,
        "layers": [1, [2.5, "y"]], "opt": {"inner": {"flag": false}, "empty": []},
    });
    let user = user.as_object().unwrap().clone().into_iter().collect();
    let spec = RunSpec { train, probe, seed: 42, user };
    let wire = gradsweep_coordinator::convert::spec_to_wire(&spec);
    assert_eq!(assigned_spec(Some(wire.clone())).unwrap(), spec);
    assert_eq!(spec_of(&pb::RunAssignment { spec: Some(wire), ..Default::default() }), spec);
    // 3 and 3.0 stay apart, as a Python trainer reads them.
    let back = assigned_spec(Some(gradsweep_coordinator::convert::spec_to_wire(&spec))).unwrap();
    assert!(back.user["width"].is_i64() && back.user["scale"].is_f64());
    // The auto size too.
    let auto = RunSpec { probe: ProbeConfig { sketch_rank: SketchSize::Auto, ..spec.probe.clone() }, ..spec.clone() };
    assert_eq!(assigned_spec(Some(gradsweep_coordinator::convert::spec_to_wire(&auto))).unwrap(), auto);

    let fin = RunFinal {
        steps: 5600,
        params: 13_338,
        train_loss: 0.031,
        final_train_loss: 0.029,
        test_accuracy: 0.9909,
        test_loss: 0.027,
        diverged: true,
        weights_hash: 0xdead_beef_0123_4567,
    };
    let run = pb::RunAssignment { run_id: "s/c0/s42".into(), epoch: 3, ..Default::default() };
    let req = finish("w", &run, 3, 9, &fin);
    match gradsweep_coordinator::convert::outcome_from_wire(&req).unwrap() {
        gradsweep_coordinator::store::Outcome::Completed(f) => assert_eq!(f, fin),
        other => panic!("{other:?}"),
    }
    // A completed run without its figures is refused, naming the run.
    let bare = pb::FinishRequest { final_figures: None, ..req };
    let err = gradsweep_coordinator::convert::outcome_from_wire(&bare).unwrap_err();
    assert!(err.to_string().contains("s/c0/s42") && err.to_string().contains("final figures"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_refused_and_duplicates_merge_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let server = InProcess::start(fast_config(&db)).await;
    let mut control = server.control().await;
    let mut wc = server.worker_client().await;
    let a = register(&mut wc, "a").await;
    let b = register(&mut wc, "b").await;
    let sweep = submit(&mut control, ONE_RUN).await.sweep_id;

    let run =
        wc.acquire(pb::AcquireRequest { worker_id: a.clone(), wait_ms: 1000 }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(run.epoch, 1);
    let (bodies, fin) = bodies_of(&spec_of(&run));
    assert!(bodies.len() >= 4, "progress, probes and the trajectory");

    // Seq 1 applied; re-sent seq 1 acknowledged without being applied again.
    let ack = wc.report(tokio_stream::iter(vec![msg(&a, &run, 1, 1, bodies[0].clone())])).await.unwrap();
    assert_eq!(ack.into_inner().applied_seq, 1);
    let ack = wc.report(tokio_stream::iter(vec![msg(&a, &run, 1, 1, bodies[0].clone())])).await.unwrap();
    assert_eq!(ack.into_inner().applied_seq, 1);
    // A gap is refused.
    let err = wc.report(tokio_stream::iter(vec![msg(&a, &run, 1, 3, bodies[2].clone())])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap(), (RunState::Leased, 1, 1));

    // A stops heartbeating; its lease lapses and B gets the run at epoch 2.
    let run_b =
        wc.acquire(pb::AcquireRequest { worker_id: b.clone(), wait_ms: 5000 }).await.unwrap().into_inner().run.unwrap();
    assert_eq!((run_b.run_id.as_str(), run_b.epoch), (run.run_id.as_str(), 2));
    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap(), (RunState::Leased, 2, 0));

    // A's late messages carry epoch 1: refused, nothing changes.
    let err = wc.report(tokio_stream::iter(vec![msg(&a, &run, 1, 2, bodies[1].clone())])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = wc.finish(finish(&a, &run, 1, bodies.len() as u64, &fin)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Even A with the current epoch number is not the holder.
    let err = wc.report(tokio_stream::iter(vec![msg(&a, &run, 2, 1, bodies[0].clone())])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap(), (RunState::Leased, 2, 0));
    let hb = wc
        .heartbeat(pb::HeartbeatRequest {
            worker_id: a.clone(),
            runs: vec![pb::RunLease { run_id: run.run_id.clone(), epoch: 1 }],
            shards: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost.len(), 1, "A is told its lease is gone");

    // B sends everything twice: within one stream and again in a second stream.
    let all: Vec<pb::ReportRequest> =
        bodies.iter().enumerate().map(|(i, bd)| msg(&b, &run_b, 2, i as u64 + 1, bd.clone())).collect();
    let doubled: Vec<pb::ReportRequest> = all.iter().flat_map(|m| [m.clone(), m.clone()]).collect();
    let ack = wc.report(tokio_stream::iter(doubled)).await.unwrap().into_inner();
    assert_eq!(ack.applied_seq, all.len() as u64);
    let ack = wc.report(tokio_stream::iter(all.clone())).await.unwrap().into_inner();
    assert_eq!(ack.applied_seq, all.len() as u64);
    wc.finish(finish(&b, &run_b, 2, all.len() as u64, &fin)).await.unwrap();
    // A finish retried after a lost answer is harmless.
    wc.finish(finish(&b, &run_b, 2, all.len() as u64, &fin)).await.unwrap();

    let (cells, _) = gradsweep_cli::client::fetch_results(&mut control, &sweep).await.unwrap();
    assert_eq!(gradsweep_tests::verify_against_offline(ONE_RUN, &cells), 1);
    assert_eq!(cells[0].runs[0].probes.len(), 2, "each probe stored once");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_rejected_without_changing_state() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let server = InProcess::start(fast_config(&db)).await;
    let mut control = server.control().await;
    let mut wc = server.worker_client().await;

    let err = wc
        .register(pb::RegisterRequest { protocol_version: 99, name: "old".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("protocol version"), "{}", err.message());

    let w = register(&mut wc, "w").await;
    submit(&mut control, ONE_RUN).await;
    let run =
        wc.acquire(pb::AcquireRequest { worker_id: w.clone(), wait_ms: 1000 }).await.unwrap().into_inner().run.unwrap();

    // A sketch of the wrong dimension (from another model).
    let mut other = spec_of(&run);
    other.train.model = "mlp:64-9-10".into();
    let (wrong, _) = bodies_of(&other);
    let wrong_probe = wrong.into_iter().find(|b| matches!(b, Body::Probe(_))).unwrap();
    let err = wc.report(tokio_stream::iter(vec![msg(&w, &run, 1, 1, wrong_probe)])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("dimension"), "{}", err.message());

    // Corrupted bytes, an impossible chunk header, an unknown run, no body.
    let (bodies, fin) = bodies_of(&spec_of(&run));
    let Some(Body::Probe(mut p)) = bodies.iter().find(|b| matches!(b, Body::Probe(_))).cloned() else { panic!() };
    let n = p.data.len();
    p.data[n / 2] ^= 0xff;
    let err = wc.report(tokio_stream::iter(vec![msg(&w, &run, 1, 1, Body::Probe(p.clone()))])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("checksum"), "{}", err.message());
    p.chunk_index = 5;
    p.chunk_count = 2;
    let err = wc.report(tokio_stream::iter(vec![msg(&w, &run, 1, 1, Body::Probe(p))])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut unknown = msg(&w, &run, 1, 1, bodies[0].clone());
    unknown.run_id = "no-such-run".into();
    assert_eq!(wc.report(tokio_stream::iter(vec![unknown])).await.unwrap_err().code(), Code::NotFound);
    let mut empty = msg(&w, &run, 1, 1, bodies[0].clone());
    empty.body = None;
    assert_eq!(wc.report(tokio_stream::iter(vec![empty])).await.unwrap_err().code(), Code::InvalidArgument);
    // Finishing before all probes arrived is refused.
    let err = wc.finish(finish(&w, &run, 1, 0, &fin)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap(), (RunState::Leased, 1, 0), "nothing was applied");

    // The honest reports still go through afterwards.
    let all: Vec<pb::ReportRequest> =
        bodies.iter().enumerate().map(|(i, bd)| msg(&w, &run, 1, i as u64 + 1, bd.clone())).collect();
    wc.report(tokio_stream::iter(all.clone())).await.unwrap();
    wc.finish(finish(&w, &run, 1, all.len() as u64, &fin)).await.unwrap();
    server.stop().await;
}

/// Acceptance 7: the coordinator's cell statistics equal an offline merge of
/// its runs' sketches (in-process coordinator and workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cell_statistics_equal_offline_merge() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(fast_config(&dir.path().join("state.db"))).await;
    let mut control = server.control().await;
    let grid = gradsweep_tests::grids::tiny("merge", 4);
    let sweep = submit(&mut control, &grid).await.sweep_id;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(gradsweep_worker::Shutdown::None);
    let mut workers = vec![];
    for i in 0..2 {
        let mut cfg = gradsweep_worker::WorkerConfig::new(server.url.clone(), 1);
        cfg.name = format!("inproc-{i}");
        workers.push(tokio::spawn(gradsweep_worker::run_worker(cfg, stop_rx.clone())));
    }
    gradsweep_tests::wait_sweep_completed(&control, &sweep, Duration::from_secs(120)).await;
    let _ = stop_tx.send(gradsweep_worker::Shutdown::Terminate);
    for w in workers {
        w.await.unwrap().unwrap();
    }
    let (cells, _) = gradsweep_cli::client::fetch_results(&mut control, &sweep).await.unwrap();
    let plan = gradsweep_shared::parse_grid(&grid, "g", Default::default()).unwrap();
    for (cell, got) in plan.cells.iter().zip(&cells) {
        let mut merged: Option<gradsweep_shared::FdSketch> = None;
        for &seed in &plan.seeds {
            let mut last = None;
            execute(&cell.run_spec(seed), &AtomicBool::new(false), &mut |e| {
                if let RunEvent::Probe(p) = e {
                    last = Some(p.sketch);
                }
                ControlFlow::Continue(())
            })
            .unwrap();
            let s = last.unwrap();
            match merged.as_mut() {
                None => merged = Some(s),
                Some(m) => m.merge(&s).unwrap(),
            }
        }
        let want = SpectrumStats::from_sketch(&merged.unwrap());
        assert_eq!(got.merged_final.as_ref(), Some(&want), "cell {}", cell.index);
    }
    server.stop().await;
}

/// A worker that leaves hands back every lease it holds, even one whose
/// grant it never saw (an Acquire answer lost to its shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_worker_returns_unlisted_leases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut cfg = fast_config(&db);
    cfg.lease_ttl = Duration::from_secs(60);
    let server = InProcess::start(cfg).await;
    let mut control = server.control().await;
    let mut wc = server.worker_client().await;
    let w = register(&mut wc, "w").await;
    submit(&mut control, ONE_RUN).await;
    let run =
        wc.acquire(pb::AcquireRequest { worker_id: w.clone(), wait_ms: 1000 }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap().0, RunState::Leased);
    wc.release(pb::ReleaseRequest {
        worker_id: w.clone(),
        runs: vec![],
        reason: "shutdown".into(),
        leaving: true,
        shards: vec![],
    })
    .await
    .unwrap();
    assert_eq!(open_store(&db).run_state(&run.run_id).unwrap(), (RunState::Queued, 1, 0));
    // Its late report is refused.
    let (bodies, _) = bodies_of(&spec_of(&run));
    let err = wc.report(tokio_stream::iter(vec![msg(&w, &run, 1, 1, bodies[0].clone())])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

/// Issue 5, acceptance 4: NaN and Inf in a sketch, an oversized message, a
/// replayed chunk, a checkpoint of another run, a truncated or corrupted or
/// non-finite checkpoint — each refused with a clear error, nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_sizes_replays_and_checkpoints_are_refused() {
    use gradsweep_shared::checkpoint::Checkpoint;

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let server = InProcess::start(fast_config(&db)).await;
    let mut control = server.control().await;
    let mut wc = server.worker_client().await;
    let w = register(&mut wc, "w").await;
    let sweep = submit(&mut control, ONE_RUN).await.sweep_id;
    let run =
        wc.acquire(pb::AcquireRequest { worker_id: w.clone(), wait_ms: 1000 }).await.unwrap().into_inner().run.unwrap();
    let (bodies, fin) = bodies_of(&spec_of(&run));
    let applied = |db: &std::path::Path| open_store(db).run_state(&run.run_id).unwrap().2;
    let send = |seq: u64, body: Body| {
        let mut c = wc.clone();
        let m = msg(&w, &run, 1, seq, body);
        async move { c.report(tokio_stream::iter(vec![m])).await }
    };
    // A probe blob is [u32 header length][header][sketch]; the sketch's
    // CRC covers the sketch alone.
    let reseal = |mut bytes: Vec<u8>| {
        let start = 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[start..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    };

    // NaN and Inf inside a well-formed, correctly checksummed sketch.
    let Some(Body::Probe(probe)) = bodies.iter().find(|b| matches!(b, Body::Probe(_))).cloned() else { panic!() };
    assert_eq!(probe.chunk_count, 1);
    for bad in [f32::NAN, f32::INFINITY] {
        let mut p = probe.clone();
        let n = p.data.len();
        p.data[n - 8..n - 4].copy_from_slice(&bad.to_le_bytes());
        p.data = reseal(p.data);
        let err = send(1, Body::Probe(p)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("non-finite"), "{}", err.message());
    }
    // An oversized message never reaches the state machine.
    let mut huge = probe.clone();
    huge.data = vec![0u8; gradsweep_proto::MAX_MESSAGE_BYTES + 1024];
    let err = send(1, Body::Probe(huge)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted | Code::Internal),
        "{:?} {}",
        err.code(),
        err.message()
    );
    assert_eq!(applied(&db), 0, "nothing was applied");

    // Honest reports up to the first probe, then that probe replayed under a new seq.
    let first_probe = bodies.iter().position(|b| matches!(b, Body::Probe(_))).unwrap();
    for (i, b) in bodies[..=first_probe].iter().enumerate() {
        send(i as u64 + 1, b.clone()).await.unwrap();
    }
    let at = first_probe as u64 + 1;
    let err = send(at + 1, bodies[first_probe].clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("already stored"), "{}", err.message());
    assert_eq!(applied(&db), at);

    // Honest reports up to the checkpoint; then hostile checkpoints in its place.
    let ck = bodies.iter().position(|b| matches!(b, Body::Checkpoint(_))).unwrap();
    for (i, b) in bodies.iter().enumerate().take(ck).skip(first_probe + 1) {
        send(i as u64 + 1, b.clone()).await.unwrap();
    }
    let seq = ck as u64 + 1;
    let Body::Checkpoint(honest) = bodies[ck].clone() else { panic!() };
    let mut other = spec_of(&run);
    other.seed += 1;
    let (other_bodies, _) = bodies_of(&other);
    let Some(Body::Checkpoint(foreign)) = other_bodies.into_iter().find(|b| matches!(b, Body::Checkpoint(_))) else {
        panic!()
    };
    let err = send(seq, Body::Checkpoint(foreign)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("does not belong to this run"), "{}", err.message());
    let mut truncated = honest.clone();
    truncated.data.truncate(truncated.data.len() - 100);
    let err = send(seq, Body::Checkpoint(truncated)).await.unwrap_err();
    assert!(err.message().contains("checksum"), "{}", err.message());
    let mut corrupted = honest.clone();
    corrupted.data[40] ^= 0x10;
    let err = send(seq, Body::Checkpoint(corrupted)).await.unwrap_err();
    assert!(err.message().contains("checksum"), "{}", err.message());
    let spec = spec_of(&run);
    let d = gradsweep_shared::run::param_count(&spec).unwrap();
    let mut nan = Checkpoint::decode(&honest.data, &spec, d).unwrap();
    nan.params[3] = f32::NAN;
    let mut nan_chunk = honest.clone();
    nan_chunk.data = nan.encode();
    let err = send(seq, Body::Checkpoint(nan_chunk)).await.unwrap_err();
    assert!(err.message().contains("non-finite"), "{}", err.message());
    assert_eq!(applied(&db), seq - 1, "no hostile checkpoint was applied");
    assert!(open_store(&db).last_checkpoint(&run.run_id).unwrap().is_none(), "and none was stored");

    // The honest rest goes through, and the run matches the oracle.
    for (i, b) in bodies.iter().enumerate().skip(ck) {
        send(i as u64 + 1, b.clone()).await.unwrap();
    }
    wc.finish(finish(&w, &run, 1, bodies.len() as u64, &fin)).await.unwrap();
    let (cells, _) = gradsweep_cli::client::fetch_results(&mut control, &sweep).await.unwrap();
    assert_eq!(gradsweep_tests::verify_against_offline(ONE_RUN, &cells), 1);
    server.stop().await;
}

fn pass_ref(worker: &str, run: &pb::RunAssignment, pass_id: u64) -> Option<pb::PassRef> {
    Some(pb::PassRef { worker_id: worker.into(), run_id: run.run_id.clone(), epoch: run.epoch, pass_id })
}

fn result_chunk(worker: &str, lease: pb::ShardLease, data: &[u8]) -> pb::ShardResultChunk {
    pb::ShardResultChunk {
        worker_id: worker.into(),
        lease: Some(lease),
        chunk_index: 0,
        chunk_count: 1,
        data: data.to_vec(),
    }
}

/// Issue 11: probe shards are fenced like runs, over the wire. A pass is
/// published only under the current run lease; an idle worker is granted
/// its shards (never its own run's); a helper whose shard lease lapsed is
/// refused and told so by its heartbeat, and the shard is granted again at
/// a higher epoch; the run's worker takes the result in order; the pass
/// ends with the run lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_shards_are_fenced_like_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(fast_config(&dir.path().join("state.db"))).await;
    let mut control = server.control().await;
    let mut wc = server.worker_client().await;
    let (owner, h1, h2) =
        (register(&mut wc, "owner").await, register(&mut wc, "h1").await, register(&mut wc, "h2").await);
    submit(&mut control, ONE_RUN).await;
    let run = wc
        .acquire(pb::AcquireRequest { worker_id: owner.clone(), wait_ms: 1000 })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let chunk = |worker: &str, epoch: u64| pb::PassChunk {
        worker_id: worker.into(),
        run_id: run.run_id.clone(),
        epoch,
        shards: 3,
        chunk_index: 0,
        chunk_count: 1,
        data: b"the pass".to_vec(),
    };
    // Only the run lease's holder, at its epoch, publishes.
    for (w, e) in [(h1.as_str(), 1), (owner.as_str(), 2)] {
        let err = wc.publish_pass(tokio_stream::iter(vec![chunk(w, e)])).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    }
    let pass_id = wc.publish_pass(tokio_stream::iter(vec![chunk(&owner, 1)])).await.unwrap().into_inner().pass_id;
    let claimed = wc.claim_shard(pb::ClaimShardRequest { pass: pass_ref(&owner, &run, pass_id) }).await.unwrap();
    assert_eq!(claimed.into_inner().shard, Some(0));
    let base = wc.clone();
    let grant = |w: String| {
        let mut wc = base.clone();
        async move {
            let a = wc.acquire(pb::AcquireRequest { worker_id: w, wait_ms: 200 }).await.unwrap().into_inner();
            assert!(a.run.is_none());
            a.shard
        }
    };
    assert!(grant(owner.clone()).await.is_none(), "no shard of its own run");
    let first = grant(h1.clone()).await.expect("an idle worker helps");
    let lease = first.lease.unwrap();
    assert_eq!((first.run_id.as_str(), lease.shard, lease.epoch), (run.run_id.as_str(), 1, 1));
    let fetched = wc.fetch_pass(pb::FetchPassRequest { worker_id: h1.clone(), lease: Some(lease) }).await.unwrap();
    let mut stream = fetched.into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().data, b"the pass");
    // h1 goes silent while the owner heartbeats: h1's shard lease lapses
    // (fast_config's TTL), h2 gets the shard at epoch 2, and h1 is refused
    // and told.
    for _ in 0..10 {
        let runs = vec![pb::RunLease { run_id: run.run_id.clone(), epoch: run.epoch }];
        let hb = wc.heartbeat(pb::HeartbeatRequest { worker_id: owner.clone(), runs, shards: vec![] }).await.unwrap();
        assert!(hb.into_inner().lost.is_empty());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let again = grant(h2.clone()).await.expect("the lapsed shard is granted again").lease.unwrap();
    assert_eq!((again.shard, again.epoch), (1, 2));
    let err = wc.submit_shard(tokio_stream::iter(vec![result_chunk(&h1, lease, b"stale")])).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let hb = wc
        .heartbeat(pb::HeartbeatRequest { worker_id: h1.clone(), runs: vec![], shards: vec![lease] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost_shards, vec![lease]);
    wc.submit_shard(tokio_stream::iter(vec![result_chunk(&h2, again, b"shard one")])).await.unwrap();
    // The run's worker: shard 0 is its own, shard 1 is done elsewhere,
    // shard 2 is free and becomes its own.
    let take = |k: u32| {
        let mut wc = base.clone();
        let req = pb::TakeShardRequest { pass: pass_ref(&owner, &run, pass_id), shard: k, wait_ms: 100 };
        async move {
            let mut s = wc.take_shard(req).await.unwrap().into_inner();
            let (mut state, mut data) = (pb::ShardState::Unspecified, vec![]);
            while let Some(c) = s.message().await.unwrap() {
                state = c.state();
                data.extend(c.data);
            }
            (state, data)
        }
    };
    assert_eq!(take(0).await.0, pb::ShardState::Claimed);
    assert_eq!(take(1).await, (pb::ShardState::Done, b"shard one".to_vec()));
    assert_eq!(take(2).await.0, pb::ShardState::Compute);
    // The run lease ends (the owner stops heartbeating): the pass goes too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = wc.claim_shard(pb::ClaimShardRequest { pass: pass_ref(&owner, &run, pass_id) }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    server.stop().await;
}
