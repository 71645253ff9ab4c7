//! The worker's one wire↔domain module: run specs from the wire, run events
//! to wire reports, final figures to the wire.

use gradsweep_proto::FieldError;
use gradsweep_proto::v1 as pb;
use gradsweep_proto::v1::report_request::Body;
use gradsweep_shared::run::RunEvent;
use gradsweep_shared::spec::{
    ProbeConfig, ProjectionBasis, RunFinal, RunSpec, SketchSize, TrainConfig, Trainer, WirePrecision,
};

/// A run spec the worker cannot read, naming the field (`probe.basis`,
/// `user.widths[1]`).
pub type SpecError = FieldError;

fn spec_error(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    FieldError::new(field, problem)
}

/// The spec of an assignment (a run's or a probe shard's), which must
/// carry one.
pub fn assigned_spec(spec: Option<pb::RunSpec>) -> Result<RunSpec, SpecError> {
    spec_from_wire(spec.ok_or_else(|| spec_error("spec", "the assignment carries none"))?)
}

/// A run's spec from the wire. Every enum and oneof must be set to a value
/// this worker knows: a spec from a coordinator of the same protocol always
/// is, so anything else is refused rather than guessed.
pub fn spec_from_wire(s: pb::RunSpec) -> Result<RunSpec, SpecError> {
    let pb::RunSpec { train, probe, seed, user } = s;
    let train = train.ok_or_else(|| FieldError::missing("train"))?;
    let probe = probe.ok_or_else(|| FieldError::missing("probe"))?;
    let user = gradsweep_proto::grid_value::map_from_wire("user", user)?;
    Ok(RunSpec { train: train_from_wire(train)?, probe: probe_from_wire(probe)?, seed, user })
}

fn train_from_wire(t: pb::TrainConfig) -> Result<TrainConfig, SpecError> {
    let trainer = Trainer::parse(&t.trainer).map_err(|m| spec_error("train.trainer", m))?;
    Ok(gradsweep_proto::moved_fields!(t => TrainConfig {
        model, dataset, epochs, lr, batch_size, momentum, weight_decay, replacement, test_fraction, split_seed,
        data_dir, classes, downsample, normalize, nesterov, lr_schedule, lr_step_epochs, lr_milestones, lr_gamma,
        checkpoint_every_epochs, checkpoint_every_steps, control_lambda, control_steps;
        trainer: trainer,
    }))
}

fn probe_from_wire(p: pb::ProbeConfig) -> Result<ProbeConfig, SpecError> {
    use pb::probe_config::SketchRank;
    let sketch_rank = match p.sketch_rank {
        Some(SketchRank::SketchAuto(pb::SketchAuto {})) => SketchSize::Auto,
        Some(SketchRank::SketchFixed(0)) => return Err(spec_error("probe.sketch_rank", "a fixed ℓ must be ≥ 1")),
        Some(SketchRank::SketchFixed(l)) => SketchSize::Fixed(l),
        None => return Err(spec_error("probe.sketch_rank", "missing (neither auto nor fixed)")),
    };
    let basis = match pb::ProjectionBasis::try_from(p.basis) {
        Ok(pb::ProjectionBasis::Random) => ProjectionBasis::Random,
        Ok(pb::ProjectionBasis::Eigen) => ProjectionBasis::Eigen,
        _ => return Err(spec_error("probe.basis", format!("unknown projection basis {}", p.basis))),
    };
    let wire_precision = match pb::WirePrecision::try_from(p.wire_precision) {
        Ok(pb::WirePrecision::F32) => WirePrecision::F32,
        Ok(pb::WirePrecision::F16) => WirePrecision::F16,
        _ => return Err(spec_error("probe.wire_precision", format!("unknown precision {}", p.wire_precision))),
    };
    Ok(gradsweep_proto::moved_fields!(p => ProbeConfig {
        every_epochs, at_epochs, memory_mb, shard_samples, save_gradients, keep_sketches, digest_vectors,
        projections, basis_probe, max_lag, burn_in_epochs, projection_seed, block_size, psd_window, epoch_psd_window,
        exact;
        sketch_rank: sketch_rank, basis: basis, wire_precision: wire_precision,
    }))
}

/// A run's final figures to the wire.
pub fn final_to_wire(f: &RunFinal) -> pb::RunFinal {
    let f = f.clone();
    gradsweep_proto::moved_fields!(f => pb::RunFinal {
        steps, train_loss, final_train_loss, test_accuracy, test_loss, diverged, weights_hash;
        params: f.params as u64,
    })
}

fn chunks(index: u32, bytes: &[u8], wrap: fn(pb::BlobChunk) -> Body) -> Vec<Body> {
    let parts = gradsweep_proto::chunk_slices(bytes);
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, data)| wrap(pb::BlobChunk { index, chunk_index: i as u32, chunk_count: count, data: data.to_vec() }))
        .collect()
}

/// The report bodies for one event, each under the message size limit.
/// `epoch_seconds` is how long a progress event's epoch trained on this
/// worker (NaN when unknown).
pub fn event_bodies(event: RunEvent, epoch_seconds: f64) -> Vec<Body> {
    match event {
        RunEvent::Progress { epoch, step, total_steps, train_loss, lr } => {
            vec![Body::Progress(pb::Progress { step, total_steps, train_loss, epoch, lr, seconds: epoch_seconds })]
        }
        RunEvent::Probe(p) => chunks(p.meta.index, &p.encode(), Body::Probe),
        RunEvent::Trajectory(t) => chunks(0, &serde_json::to_vec(&t).unwrap_or_default(), Body::Trajectory),
        RunEvent::Checkpoint(c) => chunks(0, &c.encode(), Body::Checkpoint),
        // A probe's passes are logged by the worker, not reported.
        RunEvent::ProbePass(_) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradsweep_proto::MAX_CHUNK_BYTES;

    /// A wire spec as a coordinator sends it: the defaults, set explicitly.
    fn wire_spec() -> pb::RunSpec {
        pb::RunSpec {
            train: Some(pb::TrainConfig { trainer: "builtin".into(), ..Default::default() }),
            probe: Some(pb::ProbeConfig {
                sketch_rank: Some(pb::probe_config::SketchRank::SketchAuto(pb::SketchAuto {})),
                basis: pb::ProjectionBasis::Random as i32,
                wire_precision: pb::WirePrecision::F32 as i32,
                ..Default::default()
            }),
            seed: 1,
            user: Default::default(),
        }
    }

    fn refused(s: pb::RunSpec) -> SpecError {
        spec_from_wire(s).expect_err("the spec should be refused")
    }

    #[test]
    fn a_spec_the_worker_cannot_read_is_refused_naming_the_field() {
        assert!(spec_from_wire(wire_spec()).is_ok());
        assert_eq!(assigned_spec(None).unwrap_err().field, "spec");
        let mut s = wire_spec();
        s.probe = None;
        assert_eq!(refused(s).field, "probe");
        let probe = |f: fn(&mut pb::ProbeConfig)| {
            let mut s = wire_spec();
            f(s.probe.as_mut().unwrap());
            refused(s)
        };
        assert_eq!(probe(|p| p.sketch_rank = None).field, "probe.sketch_rank");
        let e = probe(|p| p.sketch_rank = Some(pb::probe_config::SketchRank::SketchFixed(0)));
        assert!(e.to_string().contains("probe.sketch_rank") && e.to_string().contains("≥ 1"), "{e}");
        assert_eq!(probe(|p| p.basis = 0).field, "probe.basis", "unspecified");
        assert_eq!(probe(|p| p.basis = 9).field, "probe.basis", "from a newer contract");
        assert_eq!(probe(|p| p.wire_precision = 3).field, "probe.wire_precision");
        let mut s = wire_spec();
        s.train.as_mut().unwrap().trainer = "julia:x".into();
        assert_eq!(refused(s).field, "train.trainer");
        // User values: named down to the element.
        let number = |x| pb::GridValue { kind: Some(pb::grid_value::Kind::Number(x)) };
        let list = pb::GridValue {
            kind: Some(pb::grid_value::Kind::List(pb::GridList { items: vec![number(1.0), number(f64::INFINITY)] })),
        };
        let mut s = wire_spec();
        s.user.insert("widths".into(), list);
        assert_eq!(refused(s).field, "user.widths[1]");
        let mut s = wire_spec();
        s.user.insert("depth".into(), pb::GridValue { kind: None });
        assert_eq!(refused(s).field, "user.depth");
    }

    #[test]
    fn large_blobs_are_split_under_the_limit() {
        let bytes = vec![7u8; MAX_CHUNK_BYTES * 2 + 5];
        let parts = chunks(3, &bytes, Body::Probe);
        assert_eq!(parts.len(), 3);
        let mut joined = vec![];
        for (i, p) in parts.iter().enumerate() {
            let Body::Probe(c) = p else { panic!("wrong body") };
            assert_eq!((c.index, c.chunk_index, c.chunk_count), (3, i as u32, 3));
            assert!(c.data.len() <= MAX_CHUNK_BYTES);
            joined.extend_from_slice(&c.data);
        }
        assert_eq!(joined, bytes);
    }
}
