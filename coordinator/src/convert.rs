//! Conversions between wire messages and the store's domain types — the
//! only place that knows both.

use gradsweep_proto::v1 as pb;
use gradsweep_shared::spec::RunFinal;
use gradsweep_shared::stats::RankThresholds;

use crate::error::{CoordinatorError, Result};
use crate::store::{
    BlobKind, Chunk, Lease, Outcome, Report, ReportBody, SavedProbeRef, SweepRow, WorkerRow, run_state,
};

/// A stored probe's saved gradient rows and weights as NPY files (rows × d,
/// and d), each cut into chunks under the message limit. Nothing when the
/// probe kept none.
pub fn saved_gradients_from_blob(r: &SavedProbeRef, blob: &[u8]) -> Result<Vec<pb::GradientsChunk>> {
    let p = gradsweep_shared::ProbeRecord::decode(blob, Some(r.params))
        .map_err(|e| CoordinatorError::Internal(format!("run {} probe {}: {e}", r.run_id, r.index)))?;
    Ok(saved_gradients_to_wire(r, &p))
}

fn saved_gradients_to_wire(r: &SavedProbeRef, p: &gradsweep_shared::ProbeRecord) -> Vec<pb::GradientsChunk> {
    let Some(s) = &p.saved else { return vec![] };
    let d = s.weights.len();
    let files = [
        (false, gradsweep_shared::npy::write_f32(s.rows as usize, d, &s.gradients)),
        (true, gradsweep_shared::npy::write_f32_vector(&s.weights)),
    ];
    let mut out = vec![];
    for (weights, bytes) in files {
        let parts = gradsweep_proto::chunk_slices(&bytes);
        let count = parts.len() as u32;
        out.extend(parts.into_iter().enumerate().map(|(i, data)| pb::GradientsChunk {
            cell: r.cell,
            seed: r.seed,
            probe_index: r.index,
            epoch: p.meta.epoch,
            weights,
            chunk_index: i as u32,
            chunk_count: count,
            data: data.to_vec(),
        }));
    }
    out
}

fn bad(m: impl Into<String>) -> CoordinatorError {
    CoordinatorError::InvalidArgument(m.into())
}

/// A report from the wire.
pub fn report_from_wire(r: pb::ReportRequest) -> Result<Report> {
    use pb::report_request::Body;
    if r.run_id.is_empty() || r.worker_id.is_empty() {
        return Err(bad("report without run or worker id"));
    }
    if r.seq == 0 {
        return Err(bad(format!("run `{}`: sequence numbers start at 1", r.run_id)));
    }
    let chunk = |kind, c: pb::BlobChunk| {
        ReportBody::Chunk(Chunk {
            kind,
            index: c.index,
            chunk_index: c.chunk_index,
            chunk_count: c.chunk_count,
            data: c.data,
        })
    };
    let body = match r.body {
        Some(Body::Progress(p)) => {
            ReportBody::Progress { step: p.step, total_steps: p.total_steps, train_loss: p.train_loss }
        }
        Some(Body::Probe(c)) => chunk(BlobKind::Probe, c),
        Some(Body::Trajectory(c)) => chunk(BlobKind::Trajectory, c),
        Some(Body::Checkpoint(c)) => chunk(BlobKind::Checkpoint, c),
        None => return Err(bad(format!("run `{}`: report {} has no body", r.run_id, r.seq))),
    };
    Ok(Report { worker_id: r.worker_id, run_id: r.run_id, epoch: r.epoch, seq: r.seq, body })
}

/// The rank thresholds a results request asks for.
pub fn thresholds_from_wire(r: &pb::ResultsRequest) -> Result<RankThresholds> {
    let th =
        RankThresholds { relative: r.rank_thresholds_relative.clone(), absolute: r.rank_thresholds_absolute.clone() };
    th.validate().map_err(|m| bad(format!("sweep `{}`: {m}", r.sweep_id)))?;
    Ok(th)
}

/// The wire form of a results request.
pub fn results_request(sweep_id: &str, th: &RankThresholds) -> pb::ResultsRequest {
    pb::ResultsRequest {
        sweep_id: sweep_id.to_string(),
        rank_thresholds_relative: th.relative.clone(),
        rank_thresholds_absolute: th.absolute.clone(),
    }
}

/// A finish request's outcome.
pub fn outcome_from_wire(f: &pb::FinishRequest) -> Result<Outcome> {
    let fin = || -> Result<RunFinal> {
        serde_json::from_str(&f.final_json)
            .map_err(|e| bad(format!("run `{}`: final figures unreadable: {e}", f.run_id)))
    };
    match pb::RunOutcome::try_from(f.outcome) {
        Ok(pb::RunOutcome::Completed) => Ok(Outcome::Completed(fin()?)),
        Ok(pb::RunOutcome::Diverged) => Ok(Outcome::Diverged(fin()?)),
        Ok(pb::RunOutcome::Failed) => {
            Ok(Outcome::Failed(if f.error.is_empty() { "unspecified failure".into() } else { f.error.clone() }))
        }
        _ => Err(bad(format!("run `{}`: unknown outcome {}", f.run_id, f.outcome))),
    }
}

/// Leases named on the wire.
pub fn leases_from_wire(runs: &[pb::RunLease]) -> Vec<(String, u64)> {
    runs.iter().map(|l| (l.run_id.clone(), l.epoch)).collect()
}

/// Leases to the wire.
pub fn leases_to_wire(runs: Vec<(String, u64)>) -> Vec<pb::RunLease> {
    runs.into_iter().map(|(run_id, epoch)| pb::RunLease { run_id, epoch }).collect()
}

/// A granted run to the wire.
pub fn lease_to_wire(l: Lease) -> pb::RunAssignment {
    pb::RunAssignment {
        run_id: l.run_id,
        epoch: l.epoch,
        sweep_id: l.sweep_id,
        spec_json: l.spec_json,
        resume_seq: l.resume_seq,
    }
}

/// A stored checkpoint as wire chunks, each under the message size limit.
pub fn checkpoint_chunks(data: &[u8]) -> Vec<pb::CheckpointChunk> {
    let parts = gradsweep_proto::chunk_slices(data);
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, d)| pb::CheckpointChunk { chunk_index: i as u32, chunk_count: count, data: d.to_vec() })
        .collect()
}

/// A sweep's status to the wire.
pub fn sweep_to_wire(s: &SweepRow) -> pb::SweepStatus {
    pb::SweepStatus {
        sweep_id: s.id.clone(),
        name: s.name.clone(),
        state: s.state.clone(),
        cells: s.cells,
        runs_total: s.total(),
        runs_queued: s.count(run_state::QUEUED),
        runs_running: s.count(run_state::LEASED),
        runs_completed: s.count(run_state::COMPLETED),
        runs_failed: s.count(run_state::FAILED),
        runs_diverged: s.count(run_state::DIVERGED),
        runs_cancelled: s.count(run_state::CANCELLED),
        progress: s.progress,
        created_at_ms: s.created_ms,
    }
}

/// A worker to the wire.
pub fn worker_to_wire(w: WorkerRow) -> pb::WorkerInfo {
    pb::WorkerInfo {
        worker_id: w.id,
        name: w.name,
        hostname: w.hostname,
        slots: w.slots,
        state: w.state,
        runs: w.runs,
        last_heartbeat_ms: w.last_heartbeat_ms,
    }
}
