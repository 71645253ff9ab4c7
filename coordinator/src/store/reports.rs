//! Reports and finishes: what a lease holder sends about its run.
//!
//! Reports are applied exactly once, in order: each carries the lease's
//! epoch and a sequence number, a re-sent one is acknowledged without being
//! applied again, and a gap is refused. Results arrive as chunks that are
//! reassembled and validated (probe records, trajectory sums, checkpoints)
//! before they are stored. A finish checks that every result arrived.

use gradsweep_shared::checkpoint::Checkpoint;
use gradsweep_shared::run::ProbeRecord;
use gradsweep_shared::spec::RunFinal;
use gradsweep_shared::trajectory::TrajectorySums;
use rusqlite::{Connection, OptionalExtension, params};

use super::Cached;
use super::leases::check_lease;
use super::merges::SavedProbeRef;
use super::sweeps::run_spec;
use super::{RunState, Store, SweepState, now_ms};
use crate::error::{CoordinatorError, Result};

/// Which result a blob chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobKind {
    /// A probe's [`ProbeRecord`].
    Probe,
    /// The run's [`TrajectorySums`] (JSON).
    Trajectory,
    /// The run's [`Checkpoint`] at a segment boundary.
    Checkpoint,
}

/// One piece of a serialised result.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Probe or trajectory.
    pub kind: BlobKind,
    /// Probe index (0 for the trajectory).
    pub index: u32,
    /// Position of this chunk.
    pub chunk_index: u32,
    /// Number of chunks of the blob.
    pub chunk_count: u32,
    /// Payload.
    pub data: Vec<u8>,
}

/// The end of an epoch, as a worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Steps done.
    pub step: u64,
    /// Steps in all.
    pub total_steps: u64,
    /// Mean mini-batch loss of the epoch.
    pub train_loss: f64,
    /// Epochs done (from 1; 0 from a worker that does not say, and then no
    /// epoch is recorded).
    pub epoch: u32,
    /// The learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall-clock seconds the epoch trained (NaN when unknown).
    pub seconds: f64,
}

/// What a report carries.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportBody {
    /// Training progress: an epoch ended.
    Progress(Progress),
    /// A piece of a result.
    Chunk(Chunk),
}

/// A report from a worker about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Sender.
    pub worker_id: String,
    /// The run.
    pub run_id: String,
    /// Lease epoch.
    pub epoch: u64,
    /// Sequence number within (run, epoch), from 1.
    pub seq: u64,
    /// Content.
    pub body: ReportBody,
}

/// What a finish did ([`Store::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The state the run ended in; `None` for a finish repeated after it
    /// took effect (nothing changed).
    pub ended: Option<RunState>,
    /// The run's (sweep, cell) when this finish ended the cell's last open
    /// run: the cell's merge is due.
    pub cell_done: Option<(String, u32)>,
}

/// How a worker ended a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// All results sent.
    Completed(RunFinal),
    /// The loss diverged; the results sent so far are kept.
    Diverged(RunFinal),
    /// The run could not be executed.
    Failed(String),
}

impl Store {
    /// Applies one report exactly once. Returns the run's applied sequence
    /// number (a re-sent report is acknowledged and not applied again).
    pub fn apply_report(&mut self, r: &Report) -> Result<u64> {
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let (applied, d) = check_lease(&tx, &r.worker_id, &r.run_id, r.epoch)?;
        if r.seq <= applied {
            return Ok(applied);
        }
        if r.seq != applied + 1 {
            return Err(CoordinatorError::OutOfOrder { run_id: r.run_id.clone(), got: r.seq, expected: applied + 1 });
        }
        match &r.body {
            ReportBody::Progress(p) => {
                tx.exec(
                    "UPDATE runs SET step = ?1, total_steps = ?2, last_loss = ?3 WHERE id = ?4",
                    params![p.step as i64, p.total_steps as i64, p.train_loss, r.run_id],
                )?;
                // A resumed or retried attempt reports its epochs again,
                // with the same figures: the latest report of each stays.
                if p.epoch > 0 {
                    let nan = |x: f64| x.is_finite().then_some(x);
                    tx.exec(
                        "INSERT OR REPLACE INTO epochs (run_id, epoch, step, lr, train_loss, seconds) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![r.run_id, p.epoch, p.step as i64, nan(p.lr), nan(p.train_loss), nan(p.seconds)],
                    )?;
                }
            }
            ReportBody::Chunk(c) => apply_chunk(&tx, &r.run_id, r.seq, d as usize, c)?,
        }
        tx.exec(
            "UPDATE runs SET applied_seq = ?1, lease_expires_ms = ?2, updated_ms = ?3 WHERE id = ?4",
            params![r.seq as i64, now_ms() + ttl, now_ms(), r.run_id],
        )?;
        tx.commit()?;
        Ok(r.seq)
    }

    /// Ends a run. Completed runs must have had every report up to
    /// `last_seq` applied and all their probes and trajectory stored.
    /// Repeating a finish that already took effect is a no-op. Returns the
    /// state the run ended in and, when this finish ended the cell's last
    /// open run, the cell ([`Finished`]): merges are deferred to then, once
    /// per cell, instead of once per seed, and the caller runs that merge
    /// off the writer ([`Store::cell_inputs`], [`Store::store_cell`]). A
    /// cell read before it is complete is merged on demand by `results`.
    /// The caller logs the end once the batch is durable.
    pub fn finish(
        &mut self,
        worker_id: &str,
        run_id: &str,
        epoch: u64,
        last_seq: u64,
        outcome: &Outcome,
    ) -> Result<Finished> {
        let tx = self.tx()?;
        let done: Option<(RunState, i64, Option<String>)> = tx
            .row("SELECT state, epoch, worker_id FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        if let Some((state, e, _)) = &done
            && (state.has_results() || *state == RunState::Failed)
            && *e as u64 == epoch
        {
            return Ok(Finished { ended: None, cell_done: None }); // a retried finish whose answer was lost
        }
        let (applied, _) = check_lease(&tx, worker_id, run_id, epoch)?;
        let (sweep_id, cell): (String, u32) =
            tx.row("SELECT sweep_id, cell FROM runs WHERE id = ?1", [run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (state, fin_json, error) = match outcome {
            Outcome::Failed(msg) => (RunState::Failed, None, Some(msg.clone())),
            Outcome::Completed(fin) | Outcome::Diverged(fin) => {
                if applied != last_seq {
                    return Err(CoordinatorError::OutOfOrder {
                        run_id: run_id.into(),
                        got: last_seq,
                        expected: applied,
                    });
                }
                let probes: i64 = tx.row("SELECT count(*) FROM probes WHERE run_id = ?1", [run_id], |r| r.get(0))?;
                let has_traj: bool =
                    tx.row("SELECT count(*) > 0 FROM trajectories WHERE run_id = ?1", [run_id], |r| r.get(0))?;
                let spec = run_spec(&tx, run_id)?;
                let completed = matches!(outcome, Outcome::Completed(_));
                if completed && (probes as usize != spec.probe_epochs().len() || !has_traj) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "run `{run_id}` finished with {probes} of {} probes and {} trajectory",
                        spec.probe_epochs().len(),
                        if has_traj { "a" } else { "no" }
                    )));
                }
                let test_ok = !spec.has_test_set() || fin.test_accuracy.is_finite();
                if completed && !(test_ok && fin.final_train_loss.is_finite()) {
                    return Err(CoordinatorError::InvalidArgument(format!(
                        "run `{run_id}` completed with non-finite final figures"
                    )));
                }
                let json = serde_json::to_string(fin).map_err(|e| CoordinatorError::Internal(e.to_string()))?;
                (if completed { RunState::Completed } else { RunState::Diverged }, Some(json), None)
            }
        };
        tx.exec(
            "UPDATE runs SET state = ?1, final_json = ?2, error = ?3, worker_id = NULL, lease_expires_ms = NULL, \
             updated_ms = ?4, finished_ms = ?4 WHERE id = ?5",
            params![state, fin_json, error, now_ms(), run_id],
        )?;
        tx.exec("DELETE FROM chunks WHERE run_id = ?1", [run_id])?;
        let cell_open: bool = tx
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE sweep_id = ?1 AND cell = ?2 AND state IN (?3, ?4))",
            )?
            .query_row(params![sweep_id, cell, RunState::Queued, RunState::Leased], |r| r.get(0))?;
        let cell_done = (!cell_open).then(|| (sweep_id.clone(), cell));
        let open: i64 = tx.row(
            "SELECT coalesce(sum(n), 0) FROM run_counts WHERE sweep_id = ?1 AND state IN (?2, ?3)",
            params![sweep_id, RunState::Queued, RunState::Leased],
            |r| r.get(0),
        )?;
        if open == 0 {
            tx.exec(
                "UPDATE sweeps SET state = ?1, ended_ms = ?4 WHERE id = ?2 AND state = ?3",
                params![SweepState::Completed, sweep_id, SweepState::Active, now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(Finished { ended: Some(state), cell_done })
    }

    /// The checkpoint a granted run resumes from, for the lease holder only.
    pub fn checkpoint_for_lease(&mut self, worker_id: &str, run_id: &str, epoch: u64) -> Result<Vec<u8>> {
        let tx = self.tx()?;
        check_lease(&tx, worker_id, run_id, epoch)?;
        let data: Option<Vec<u8>> =
            tx.row("SELECT data FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?;
        data.ok_or_else(|| CoordinatorError::NotFound { kind: "checkpoint of run", id: run_id.into() })
    }

    /// The last stored checkpoint of a run (kept after it finishes), for
    /// tests and tools.
    pub fn last_checkpoint(&self, run_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.conn.row("SELECT data FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?)
    }

    /// The probes of `sweep_id`'s finished runs whose spec kept gradient
    /// rows (`[probe] save_gradients`), in (cell, seed, probe) order.
    pub fn saved_gradient_probes(&self, sweep_id: &str) -> Result<Vec<SavedProbeRef>> {
        Ok(self
            .conn
            .prepare(
                "SELECT r.id, r.cell, r.seed, p.idx, r.params FROM runs r JOIN probes p ON p.run_id = r.id \
                 WHERE r.sweep_id = ?1 AND r.state IN (?2, ?3) \
                 AND coalesce((SELECT json_extract(c.spec_json, '$.probe.save_gradients') FROM cell_specs c \
                 WHERE c.sweep_id = r.sweep_id AND c.cell = r.cell), 0) > 0 \
                 ORDER BY r.cell, r.seed, p.idx",
            )?
            .query_map(params![sweep_id, RunState::Completed, RunState::Diverged], |r| {
                Ok(SavedProbeRef {
                    run_id: r.get(0)?,
                    cell: r.get(1)?,
                    seed: r.get::<_, i64>(2)? as u64,
                    index: r.get(3)?,
                    params: r.get::<_, i64>(4)? as usize,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// One stored probe of a run, as stored (decode it with
    /// [`ProbeRecord::decode`] off the store's connections).
    pub fn probe_blob(&self, run_id: &str, index: u32) -> Result<Vec<u8>> {
        self.conn
            .query_row("SELECT data FROM probes WHERE run_id = ?1 AND idx = ?2", params![run_id, index], |r| r.get(0))
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "probe", id: format!("{run_id}#{index}") })
    }

    /// A run's current lease state, for tests and tools: (state, epoch, applied_seq).
    pub fn run_state(&self, run_id: &str) -> Result<(RunState, u64, u64)> {
        self.conn
            .query_row("SELECT state, epoch, applied_seq FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get::<_, i64>(2)? as u64))
            })
            .optional()?
            .ok_or_else(|| CoordinatorError::NotFound { kind: "run", id: run_id.into() })
    }
}

fn apply_chunk(tx: &Connection, run_id: &str, seq: u64, d: usize, c: &Chunk) -> Result<()> {
    let bad = |m: String| CoordinatorError::InvalidArgument(format!("run `{run_id}`: {m}"));
    if c.chunk_count == 0 || c.chunk_index >= c.chunk_count {
        return Err(bad(format!("chunk {} of {} is impossible", c.chunk_index, c.chunk_count)));
    }
    if c.data.len() > gradsweep_proto::MAX_CHUNK_BYTES {
        return Err(bad(format!("chunk of {} bytes exceeds {}", c.data.len(), gradsweep_proto::MAX_CHUNK_BYTES)));
    }
    let kind = match c.kind {
        BlobKind::Probe => 0,
        BlobKind::Trajectory => 1,
        BlobKind::Checkpoint => 2,
    };
    tx.exec(
        "INSERT OR REPLACE INTO chunks (run_id, kind, idx, chunk, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![run_id, kind, c.index, c.chunk_index, c.data],
    )?;
    if c.chunk_index + 1 < c.chunk_count {
        return Ok(());
    }
    let parts: Vec<(u32, Vec<u8>)> = tx
        .prepare("SELECT chunk, data FROM chunks WHERE run_id = ?1 AND kind = ?2 AND idx = ?3 ORDER BY chunk")?
        .query_map(params![run_id, kind, c.index], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if parts.len() as u32 != c.chunk_count || parts.iter().enumerate().any(|(i, p)| p.0 != i as u32) {
        return Err(bad(format!("blob {} arrived with {} of {} chunks", c.index, parts.len(), c.chunk_count)));
    }
    let blob: Vec<u8> = parts.into_iter().flat_map(|p| p.1).collect();
    match c.kind {
        BlobKind::Probe => {
            // d = 0: a python: trainer's model, whose dimension its first
            // probe tells (every later probe and checkpoint must agree).
            let rec =
                ProbeRecord::decode(&blob, (d > 0).then_some(d)).map_err(|e| bad(format!("probe {}: {e}", c.index)))?;
            if d == 0 {
                tx.exec("UPDATE runs SET params = ?1 WHERE id = ?2", params![rec.sketch.dim() as i64, run_id])?;
            }
            if rec.meta.index != c.index {
                return Err(bad(format!("probe record says index {} but was sent as {}", rec.meta.index, c.index)));
            }
            let exists: bool = tx.row(
                "SELECT count(*) > 0 FROM probes WHERE run_id = ?1 AND idx = ?2",
                params![run_id, c.index],
                |r| r.get(0),
            )?;
            if exists {
                return Err(bad(format!("probe {} was already stored", c.index)));
            }
            tx.exec("INSERT INTO probes (run_id, idx, data) VALUES (?1, ?2, ?3)", params![run_id, c.index, blob])?;
        }
        BlobKind::Trajectory => {
            let sums: TrajectorySums = serde_json::from_slice(&blob).map_err(|e| bad(format!("trajectory: {e}")))?;
            sums.validate().map_err(|m| bad(format!("trajectory: {m}")))?;
            tx.exec("INSERT OR REPLACE INTO trajectories (run_id, data) VALUES (?1, ?2)", params![run_id, blob])?;
        }
        BlobKind::Checkpoint => {
            let spec = run_spec(tx, run_id)?;
            // A python: trainer's checkpoint keeps no weights of gradsweep's
            // (its state is the user's bytes).
            let weights = if spec.train.trainer.is_builtin() { d } else { 0 };
            let ck = Checkpoint::decode(&blob, &spec, weights).map_err(|e| bad(format!("checkpoint: {e}")))?;
            let h = &ck.header;
            let prev: Option<i64> =
                tx.row("SELECT step FROM checkpoints WHERE run_id = ?1", [run_id], |r| r.get(0)).optional()?;
            if prev.is_some_and(|p| p as u64 >= h.step) {
                return Err(bad(format!("checkpoint at step {} is not after the stored one", h.step)));
            }
            let probes: i64 = tx.row("SELECT count(*) FROM probes WHERE run_id = ?1", [run_id], |r| r.get(0))?;
            if probes as u32 != h.probes_done {
                return Err(bad(format!(
                    "checkpoint at step {} counts {} probes, {probes} were reported",
                    h.step, h.probes_done
                )));
            }
            tx.exec(
                "INSERT OR REPLACE INTO checkpoints (run_id, seq, step, probes_done, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![run_id, seq as i64, h.step as i64, h.probes_done, blob],
            )?;
        }
    }
    tx.exec("DELETE FROM chunks WHERE run_id = ?1 AND kind = ?2 AND idx = ?3", params![run_id, kind, c.index])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::Lease;
    use super::super::testing::*;
    use super::*;

    fn partial_probe() -> ReportBody {
        ReportBody::Chunk(Chunk { kind: BlobKind::Probe, index: 0, chunk_index: 0, chunk_count: 2, data: vec![7; 16] })
    }

    fn chunks(s: &Store, run_id: &str) -> i64 {
        s.conn.query_row("SELECT count(*) FROM chunks WHERE run_id = ?1", [run_id], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_report_applies_once_in_order() {
        let (_dir, mut s, w, l) = leased(1, 1);
        assert_eq!(s.apply_report(&report(&w, &l, 1, progress(3))).unwrap(), 1);
        // Re-sent (its answer was lost): acknowledged, not applied again.
        assert_eq!(s.apply_report(&report(&w, &l, 1, progress(99))).unwrap(), 1);
        let gap = s.apply_report(&report(&w, &l, 3, progress(4))).unwrap_err();
        assert!(matches!(gap, CoordinatorError::OutOfOrder { got: 3, expected: 2, .. }), "{gap}");
        let step: i64 = s.conn.query_row("SELECT step FROM runs WHERE id = ?1", [&l.run_id], |r| r.get(0)).unwrap();
        assert_eq!(step, 3, "the re-sent report changed nothing");
        assert_eq!(s.run_state(&l.run_id).unwrap(), (RunState::Leased, l.epoch, 1));
    }

    #[test]
    fn chunks_of_a_lapsed_lease_are_dropped_and_replayed_by_the_next() {
        let (_dir, mut s, w, l) = leased(1, 1);
        s.apply_report(&report(&w, &l, 1, partial_probe())).unwrap();
        // A chunk re-sent after its answer was lost is not stored twice.
        s.apply_report(&report(&w, &l, 1, partial_probe())).unwrap();
        assert_eq!(chunks(&s, &l.run_id), 1);
        s.release(&w, &[(l.run_id.clone(), l.epoch)], false, "test").unwrap();
        assert_eq!(chunks(&s, &l.run_id), 0, "a requeue drops half-sent blobs");
        let again = s.acquire(&w).unwrap().unwrap();
        assert_eq!((again.epoch, again.resume_seq), (l.epoch + 1, 0), "no checkpoint: it starts over");
        assert_eq!(s.apply_report(&report(&w, &again, 1, partial_probe())).unwrap(), 1);
        assert_eq!(chunks(&s, &l.run_id), 1);
    }

    #[test]
    fn impossible_chunks_are_refused_with_the_run_named() {
        let (_dir, mut s, w, l) = leased(1, 1);
        let bad =
            ReportBody::Chunk(Chunk { kind: BlobKind::Probe, index: 0, chunk_index: 2, chunk_count: 2, data: vec![] });
        let e = s.apply_report(&report(&w, &l, 1, bad)).unwrap_err().to_string();
        assert!(e.contains(&l.run_id) && e.contains("chunk 2 of 2"), "{e}");
        let garbage = ReportBody::Chunk(Chunk {
            kind: BlobKind::Probe,
            index: 0,
            chunk_index: 0,
            chunk_count: 1,
            data: vec![1; 8],
        });
        let e = s.apply_report(&report(&w, &l, 1, garbage)).unwrap_err().to_string();
        assert!(e.contains("probe 0"), "{e}");
        assert_eq!(s.run_state(&l.run_id).unwrap().2, 0, "nothing was applied");
    }

    #[test]
    fn a_cell_is_merged_once_when_its_last_run_ends() {
        let (_dir, mut s, w, l) = leased(2, 2);
        let cell0: Vec<Lease> = std::iter::once(l).chain((0..3).map(|_| s.acquire(&w).unwrap().unwrap())).collect();
        let fail = |s: &mut Store, l: &Lease| {
            s.finish(&w, &l.run_id, l.epoch, 0, &Outcome::Failed("x".into())).unwrap().cell_done
        };
        // Queue order (a cell's seeds together): c0/s0, c0/s1, c1/s0, c1/s1.
        assert_eq!(fail(&mut s, &cell0[0]), None, "c0 still has s1 open");
        assert_eq!(fail(&mut s, &cell0[2]), None, "c1 still has s1 open");
        assert_eq!(fail(&mut s, &cell0[1]), Some((cell0[1].sweep_id.clone(), 0)));
        assert_eq!(fail(&mut s, &cell0[3]), Some((cell0[3].sweep_id.clone(), 1)));
    }

    #[test]
    fn a_finish_needs_every_result_and_repeats_are_harmless() {
        let (_dir, mut s, w, l) = leased(1, 1);
        let sweep = l.sweep_id.clone();
        s.apply_report(&report(&w, &l, 1, progress(1))).unwrap();
        let fin = RunFinal {
            steps: 1,
            params: 0,
            train_loss: 0.1,
            final_train_loss: 0.1,
            test_accuracy: 0.9,
            test_loss: 0.2,
            diverged: false,
            weights_hash: 0,
        };
        let e = s.finish(&w, &l.run_id, l.epoch, 1, &Outcome::Completed(fin)).unwrap_err().to_string();
        assert!(e.contains("0 of 1 probes") && e.contains("no trajectory"), "{e}");
        let e = s.finish(&w, &l.run_id, l.epoch, 5, &Outcome::Failed("x".into()));
        let ended = Finished { ended: Some(RunState::Failed), cell_done: Some((sweep.clone(), 0)) };
        assert_eq!(e.unwrap(), ended, "the cell's last run ended: merge it now");
        let repeated = s.finish(&w, &l.run_id, l.epoch, 5, &Outcome::Failed("x".into())).unwrap();
        assert_eq!(repeated, Finished { ended: None, cell_done: None }, "a repeat changes nothing");
        let row = s.sweep(&sweep).unwrap();
        assert_eq!((row.count(RunState::Failed), row.state), (1, SweepState::Completed));
    }
}
