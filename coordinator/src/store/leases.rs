//! Workers and leases: registration, grants, heartbeats, releases, expiry,
//! and the fencing every report and finish goes through.
//!
//! A grant bumps the run's epoch; every later message about the run names
//! (worker, run, epoch) and is refused unless that is the current lease
//! ([`check_lease`]). A lease lapses a TTL after its last heartbeat or
//! report; the run goes back to the queue rewound to its last checkpoint
//! ([`requeue`]), or fails after too many lapses.

use gradsweep_shared::spec::{RunSpec, Trainer};
use rusqlite::{Connection, OptionalExtension, params};

use super::Cached;
use super::sweeps::{run_spec, spec_with_seed};
use super::{RunState, Store, SweepState, WorkerState, now_ms};
use crate::error::{CoordinatorError, Result};
use crate::shards::PassOwner;

/// A run granted to a worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// Run identifier.
    pub run_id: String,
    /// Lease epoch.
    pub epoch: u64,
    /// Sweep identifier.
    pub sweep_id: String,
    /// The run's spec (its cell's, with its seed).
    pub spec: RunSpec,
    /// 0, or the sequence number of the checkpoint to resume from.
    pub resume_seq: u64,
}

/// A worker as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRow {
    /// Identifier.
    pub id: String,
    /// Name given by the worker.
    pub name: String,
    /// Host.
    pub hostname: String,
    /// Concurrent runs.
    pub slots: u32,
    /// What the coordinator knows of it.
    pub state: WorkerState,
    /// Runs it holds.
    pub runs: Vec<String>,
    /// Last heartbeat.
    pub last_heartbeat_ms: i64,
    /// The trainers it runs (it is leased only their runs).
    pub trainers: Vec<String>,
}

/// What a Rust worker runs, and what a worker that declares nothing is
/// taken to run (workers built before trainers existed).
pub const BUILTIN_ONLY: &[Trainer] = &[Trainer::Builtin];

/// How the `workers` table keeps a worker's trainers: names, one a line
/// (a valid name has no line break).
fn trainers_column(trainers: &[Trainer]) -> String {
    let names: Vec<String> =
        if trainers.is_empty() { BUILTIN_ONLY } else { trainers }.iter().map(Trainer::name).collect();
    names.join("\n")
}

/// A lease named by run and epoch.
pub type LeaseRef = (String, u64);

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatAnswer {
    /// Leases the worker named but no longer holds.
    pub lost: Vec<LeaseRef>,
    /// The worker is asked to drain.
    pub drain: bool,
}

impl Store {
    /// After a restart: give every outstanding lease a fresh TTL so workers
    /// that kept computing while the coordinator was away can reconnect.
    pub fn grant_restart_grace(&mut self) -> Result<usize> {
        let until = now_ms() + self.policy.ttl_ms;
        Ok(self.conn.exec(
            "UPDATE runs SET lease_expires_ms = max(lease_expires_ms, ?1) WHERE state = ?2",
            params![until, RunState::Leased],
        )?)
    }

    /// Registers a worker that runs `trainers` (none: the built-in engine).
    pub fn register_worker(
        &mut self,
        name: &str,
        hostname: &str,
        slots: u32,
        pid: u32,
        trainers: &[Trainer],
    ) -> Result<String> {
        let now = now_ms();
        let trainers = trainers_column(trainers);
        let tx = self.tx()?;
        let n: i64 = tx.row("SELECT count(*) FROM workers", [], |r| r.get(0))?;
        let id = format!("w{}-{:x}", n + 1, (now as u64 ^ ((pid as u64) << 20)) & 0xff_ffff);
        tx.exec(
            "INSERT INTO workers (id, name, hostname, slots, state, registered_ms, last_heartbeat_ms, trainers) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            params![id, name, hostname, slots, WorkerState::Active, now, trainers],
        )?;
        tx.commit()?;
        tracing::info!(worker_id = %id, name, hostname, slots, trainers = %trainers.replace('\n', ","), "worker registered");
        Ok(id)
    }

    /// Answers a heartbeat without writing: which of the named leases the
    /// worker no longer holds, and whether it is asked to drain. `None` for
    /// an unknown worker. Runs on a read connection: the renewal itself is
    /// recorded in memory ([`Seen`]) and written by the next
    /// [`Store::expire_leases`], so heartbeats never wait for a commit.
    pub fn heartbeat(&self, worker_id: &str, runs: &[LeaseRef]) -> Result<Option<HeartbeatAnswer>> {
        let state: Option<WorkerState> = self
            .conn
            .prepare_cached("SELECT state FROM workers WHERE id = ?1")?
            .query_row([worker_id], |r| r.get(0))
            .optional()?;
        let Some(state) = state else { return Ok(None) };
        let mut lost = vec![];
        for (run_id, epoch) in runs {
            if !holds_lease(&self.conn, worker_id, run_id, *epoch)? {
                lost.push((run_id.clone(), *epoch));
            }
        }
        Ok(Some(HeartbeatAnswer { lost, drain: state == WorkerState::Draining }))
    }

    /// Grants the oldest queued run of an active sweep, among the runs of
    /// the trainers the worker declared, to the worker.
    pub fn acquire(&mut self, worker_id: &str) -> Result<Option<Lease>> {
        let now = now_ms();
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        let worker: Option<(WorkerState, String)> = tx
            .row("SELECT state, trainers FROM workers WHERE id = ?1", [worker_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let trainers = match worker {
            None => return Err(CoordinatorError::NotFound { kind: "worker", id: worker_id.into() }),
            Some((s, _)) if !s.takes_work() => return Ok(None),
            Some((_, t)) => t,
        };
        // The first queued run of each trainer, read off the queue's index
        // (state, trainer, queue_order): the first of an active sweep,
        // without sorting a sweep's runs (CROSS JOIN keeps runs the outer
        // loop); the earliest of them is granted.
        let mut next: Option<(i64, String, String, i64, i64, String, i64)> = None;
        for trainer in trainers.lines() {
            let first: Option<(i64, String, String, i64, i64, String, i64)> = tx
                .prepare_cached(
                    "SELECT r.queue_order, r.id, r.sweep_id, r.epoch, r.seed, c.spec_json, r.attempts \
                     FROM runs r INDEXED BY runs_queue \
                     CROSS JOIN sweeps s ON s.id = r.sweep_id \
                     CROSS JOIN cell_specs c ON c.sweep_id = r.sweep_id AND c.cell = r.cell \
                     WHERE r.state = ?1 AND r.trainer = ?3 AND s.state = ?2 ORDER BY r.queue_order LIMIT 1",
                )?
                .query_row(params![RunState::Queued, SweepState::Active, trainer], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                })
                .optional()?;
            if let Some(f) = first
                && next.as_ref().is_none_or(|n| f.0 < n.0)
            {
                next = Some(f);
            }
        }
        let Some((_, run_id, sweep_id, epoch, seed, cell_spec, attempts)) = next else { return Ok(None) };
        let spec = spec_with_seed(&cell_spec, seed as u64)?;
        let epoch = epoch + 1;
        // A run leased before is rewound to its last checkpoint (a no-op
        // when its requeue did it); one never leased has nothing to rewind,
        // and its grant skips those writes (most grants of a sweep).
        let resume_seq = if attempts > 0 { requeue(&tx, &run_id)? } else { 0 };
        tx.exec(
            "UPDATE runs SET state = ?1, epoch = ?2, worker_id = ?3, last_worker = ?3, lease_expires_ms = ?4, \
             attempts = attempts + 1, updated_ms = ?5, started_ms = coalesce(started_ms, ?5) WHERE id = ?6",
            params![RunState::Leased, epoch, worker_id, now + ttl, now, run_id],
        )?;
        tx.exec(
            "UPDATE workers SET last_heartbeat_ms = ?1, state = ?2 WHERE id = ?3 AND state = ?4",
            params![now, WorkerState::Active, worker_id, WorkerState::Lost],
        )?;
        tx.commit()?;
        // Logged by the caller once the batch is durable.
        Ok(Some(Lease { run_id, epoch: epoch as u64, sweep_id, spec, resume_seq }))
    }

    /// Whether the worker takes probe shards: registered, neither draining
    /// nor gone, and running the built-in engine (a shard is the engine's
    /// gradients of its model; a worker of another trainer cannot compute
    /// it).
    pub fn takes_work(&self, worker_id: &str) -> Result<bool> {
        let worker: Option<(WorkerState, String)> = self
            .conn
            .row("SELECT state, trainers FROM workers WHERE id = ?1", [worker_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(worker
            .is_some_and(|(state, trainers)| state.takes_work() && trainers.lines().any(|t| t == Trainer::BUILTIN)))
    }

    /// The sweep and spec of a run whose lease `owner` holds (to publish a
    /// probe pass of it); refused like a report from a stale lease.
    pub fn pass_source(&mut self, owner: &PassOwner) -> Result<(String, RunSpec)> {
        let tx = self.tx()?;
        check_lease(&tx, &owner.worker_id, &owner.run_id, owner.epoch)?;
        let sweep_id: String = tx.row("SELECT sweep_id FROM runs WHERE id = ?1", [&owner.run_id], |r| r.get(0))?;
        let spec = run_spec(&tx, &owner.run_id)?;
        tx.commit()?;
        Ok((sweep_id, spec))
    }

    /// Of the `owners` of probe passes, those whose run lease is current.
    pub fn current_owners(&self, owners: Vec<PassOwner>) -> Result<Vec<PassOwner>> {
        let mut keep = Vec::with_capacity(owners.len());
        for o in owners {
            if holds_lease(&self.conn, &o.worker_id, &o.run_id, o.epoch)? {
                keep.push(o);
            }
        }
        Ok(keep)
    }

    /// Marks a worker as draining: it gets no new runs.
    pub fn drain(&mut self, worker_id: &str) -> Result<()> {
        let n = self.conn.exec(
            "UPDATE workers SET state = ?1 WHERE id = ?2 AND state != ?3",
            params![WorkerState::Draining, worker_id, WorkerState::Left],
        )?;
        if n == 0 {
            return Err(CoordinatorError::NotFound { kind: "worker", id: worker_id.into() });
        }
        tracing::info!(worker_id, "worker draining");
        Ok(())
    }

    /// Returns leases to the queue (epoch fencing makes any late message
    /// from them stale); `leaving` returns all the worker's leases and
    /// forgets the worker.
    pub fn release(&mut self, worker_id: &str, runs: &[(String, u64)], leaving: bool, reason: &str) -> Result<()> {
        let tx = self.tx()?;
        for (run_id, epoch) in runs {
            if holds_lease(&tx, worker_id, run_id, *epoch)? {
                requeue(&tx, run_id)?;
                tracing::info!(run_id = %run_id, epoch, worker_id, reason, "lease released");
            }
        }
        if leaving {
            // A leaving worker gives back every lease it holds, including any
            // whose grant it never saw (an Acquire answer lost to shutdown).
            let held: Vec<String> = tx
                .prepare("SELECT id FROM runs WHERE worker_id = ?1 AND state = ?2")?
                .query_map(params![worker_id, RunState::Leased], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for run_id in held {
                requeue(&tx, &run_id)?;
                tracing::info!(run_id = %run_id, worker_id, reason, "lease released");
            }
            tx.exec("UPDATE workers SET state = ?1 WHERE id = ?2", params![WorkerState::Left, worker_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Workers, with the runs they hold.
    pub fn workers(&self) -> Result<Vec<WorkerRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, hostname, slots, state, last_heartbeat_ms, trainers FROM workers \
             ORDER BY registered_ms, id",
        )?;
        let mut out: Vec<WorkerRow> = stmt
            .query_map([], |r| {
                Ok(WorkerRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    hostname: r.get(2)?,
                    slots: r.get(3)?,
                    state: r.get(4)?,
                    runs: vec![],
                    last_heartbeat_ms: r.get(5)?,
                    trainers: r.get::<_, String>(6)?.lines().map(str::to_string).collect(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare("SELECT worker_id, id FROM runs WHERE state = ?1 ORDER BY id")?;
        let held: Vec<(String, String)> =
            stmt.query_map([RunState::Leased], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        for (w, run) in held {
            if let Some(row) = out.iter_mut().find(|x| x.id == w) {
                row.runs.push(run);
            }
        }
        Ok(out)
    }

    // ------------------------------------------------------------ reports

    /// Writes the heartbeats `seen` since the last call (workers' last
    /// heartbeats, revived lost workers, renewed leases), then requeues
    /// runs whose lease lapsed by `now` (or fails them after too many
    /// attempts) and marks silent workers lost. Returns the runs requeued.
    /// One transaction: a lease is judged with every renewal heard.
    pub fn expire_leases(&mut self, now: i64, seen: &Seen) -> Result<Vec<String>> {
        let max_attempts = self.policy.max_attempts as i64;
        let ttl = self.policy.ttl_ms;
        let tx = self.tx()?;
        {
            let mut worker = tx.prepare_cached(
                "UPDATE workers SET last_heartbeat_ms = max(last_heartbeat_ms, ?1), \
                 state = CASE WHEN state = ?2 THEN ?3 ELSE state END WHERE id = ?4",
            )?;
            for (id, &at) in &seen.workers {
                worker.execute(params![at, WorkerState::Lost, WorkerState::Active, id])?;
            }
            let mut lease = tx.prepare_cached(
                "UPDATE runs SET lease_expires_ms = max(coalesce(lease_expires_ms, 0), ?1) \
                 WHERE id = ?2 AND epoch = ?3 AND worker_id = ?4 AND state = ?5",
            )?;
            for ((run_id, epoch), (worker_id, at)) in &seen.leases {
                lease.execute(params![at + ttl, run_id, *epoch as i64, worker_id, RunState::Leased])?;
            }
        }
        let lapsed: Vec<(String, i64, Option<String>)> = tx
            .prepare("SELECT id, attempts, worker_id FROM runs WHERE state = ?1 AND lease_expires_ms < ?2")?
            .query_map(params![RunState::Leased, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut requeued = vec![];
        for (run_id, attempts, worker) in lapsed {
            if attempts >= max_attempts {
                tx.exec(
                    "UPDATE runs SET state = ?1, error = ?2, worker_id = NULL, lease_expires_ms = NULL, updated_ms = ?3, \
                     finished_ms = ?3 WHERE id = ?4",
                    params![RunState::Failed, format!("lease lapsed {attempts} times"), now, run_id],
                )?;
                tracing::warn!(run_id = %run_id, attempts, "run failed: too many lapsed leases");
            } else {
                requeue(&tx, &run_id)?;
                tracing::warn!(run_id = %run_id, worker_id = ?worker, "lease lapsed; run requeued");
                requeued.push(run_id);
            }
        }
        tx.exec(
            "UPDATE workers SET state = ?1 WHERE state IN (?2, ?3) AND last_heartbeat_ms < ?4",
            params![WorkerState::Lost, WorkerState::Active, WorkerState::Draining, now - ttl],
        )?;
        // A sweep whose last open run just failed is finished.
        tx.exec(
            "UPDATE sweeps SET state = ?1, ended_ms = ?5 WHERE state = ?2 AND NOT EXISTS \
             (SELECT 1 FROM run_counts k WHERE k.sweep_id = sweeps.id AND k.state IN (?3, ?4) AND k.n > 0)",
            params![SweepState::Completed, SweepState::Active, RunState::Queued, RunState::Leased, now],
        )?;
        tx.commit()?;
        Ok(requeued)
    }
}

/// Heartbeats heard since the last [`Store::expire_leases`]: when each
/// worker last called, and when each lease it still held was last renewed
/// (milliseconds since the Unix epoch). Kept in memory by the coordinator;
/// losing it (a restart) loses nothing, as a restart grants every lease a
/// fresh TTL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    /// Worker → last heartbeat.
    pub workers: std::collections::HashMap<String, i64>,
    /// (run, epoch) → (holder, last renewal).
    pub leases: std::collections::HashMap<(String, u64), (String, i64)>,
}

impl Seen {
    /// Records a heartbeat of `worker_id` at `at` that renewed `held`.
    pub fn record(&mut self, worker_id: &str, held: impl IntoIterator<Item = LeaseRef>, at: i64) {
        self.workers.insert(worker_id.to_string(), at);
        for lease in held {
            self.leases.insert(lease, (worker_id.to_string(), at));
        }
    }
}

/// Whether `worker_id` holds `run_id`'s lease at `epoch` right now.
fn holds_lease(conn: &Connection, worker_id: &str, run_id: &str, epoch: u64) -> Result<bool> {
    Ok(conn.row(
        "SELECT count(*) > 0 FROM runs WHERE id = ?1 AND epoch = ?2 AND worker_id = ?3 AND state = ?4",
        params![run_id, epoch as i64, worker_id, RunState::Leased],
        |r| r.get(0),
    )?)
}

/// Checks that `worker_id` holds `run_id`'s lease at `epoch`; returns the
/// run's applied sequence number and its parameter count d. A lease that
/// lapsed, moved on or ended is [`CoordinatorError::StaleEpoch`].
pub(super) fn check_lease(tx: &Connection, worker_id: &str, run_id: &str, epoch: u64) -> Result<(u64, i64)> {
    let row: Option<(RunState, i64, Option<String>, i64, i64)> = tx
        .row("SELECT state, epoch, worker_id, applied_seq, params FROM runs WHERE id = ?1", [run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((state, cur_epoch, holder, applied, d)) = row else {
        return Err(CoordinatorError::NotFound { kind: "run", id: run_id.into() });
    };
    if state != RunState::Leased || cur_epoch as u64 != epoch || holder.as_deref() != Some(worker_id) {
        return Err(CoordinatorError::StaleEpoch {
            run_id: run_id.into(),
            epoch,
            current: format!("run is {state} at epoch {cur_epoch}"),
        });
    }
    Ok((applied as u64, d))
}

/// The run's last checkpoint: (report seq, step, probes done), if any.
pub(super) fn checkpoint_position(tx: &Connection, run_id: &str) -> Result<Option<(u64, u64, u32)>> {
    Ok(tx
        .row("SELECT seq, step, probes_done FROM checkpoints WHERE run_id = ?1", [run_id], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64, r.get(2)?))
        })
        .optional()?)
}

/// Puts a run back in the queue, rewound to its last checkpoint: the
/// reports after it (partial blobs, later probes, the trajectory) are
/// discarded, the ones up to it are kept. Without a checkpoint the run
/// starts over. Returns the sequence number to resume after (0: none).
pub(super) fn requeue(tx: &Connection, run_id: &str) -> Result<u64> {
    let (seq, step, probes) = checkpoint_position(tx, run_id)?.unwrap_or((0, 0, 0));
    tx.exec(
        "UPDATE runs SET state = ?1, worker_id = NULL, lease_expires_ms = NULL, applied_seq = ?2, step = ?3, \
         updated_ms = ?4 WHERE id = ?5",
        params![RunState::Queued, seq as i64, step as i64, now_ms(), run_id],
    )?;
    tx.exec("DELETE FROM chunks WHERE run_id = ?1", [run_id])?;
    tx.exec("DELETE FROM probes WHERE run_id = ?1 AND idx >= ?2", params![run_id, probes])?;
    tx.exec("DELETE FROM trajectories WHERE run_id = ?1", [run_id])?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::super::LeasePolicy;
    use super::super::testing::*;
    use super::*;
    use gradsweep_shared::grid::GridLimits;

    /// A grid of 2 cells × 1 seed trained by `trainer`.
    fn trainer_grid(name: &str, trainer: &str) -> String {
        format!(
            "[sweep]\nname = \"{name}\"\n[train]\ntrainer = \"{trainer}\"\nmodel = \"theirs\"\nepochs = 2\n\
             [probe]\nsketch_rank = 8\n[user]\nwidth = 4\n[grid]\nwidth = [4, 8]\n"
        )
    }

    #[test]
    fn a_worker_is_granted_only_runs_of_the_trainers_it_declared_in_queue_order() {
        let (_dir, mut s) = store();
        let limits = GridLimits::default();
        let py = "python:my_pkg.train:main";
        let first = s.submit(&trainer_grid("theirs", py), "p.toml", false, limits).unwrap().sweep_id;
        let builtin = submit(&mut s, 1, 1);
        let rust = worker(&mut s, "rust");
        let parse = |n: &str| Trainer::parse(n).unwrap();
        let python = s.register_worker("py", "h", 1, 2, &[parse(py)]).unwrap();
        let other = s.register_worker("other", "h", 1, 3, &[parse("python:other:main")]).unwrap();
        let both = s.register_worker("both", "h", 1, 4, &[Trainer::Builtin, parse(py)]).unwrap();
        let names: Vec<Vec<String>> = s.workers().unwrap().into_iter().map(|w| w.trainers).collect();
        assert_eq!(names, [vec!["builtin"], vec![py], vec!["python:other:main"], vec!["builtin", py]]);

        // The Rust worker passes over the python runs queued before its own.
        let l = s.acquire(&rust).unwrap().unwrap();
        assert_eq!(l.sweep_id, builtin);
        assert!(s.acquire(&rust).unwrap().is_none(), "a Rust worker never takes a python run");
        assert!(s.acquire(&other).unwrap().is_none(), "nor does a worker of another trainer");
        assert!(s.takes_work(&rust).unwrap() && !s.takes_work(&python).unwrap(), "probe shards are the engine's");
        // The python worker gets its runs, with their user keys, in order.
        let l = s.acquire(&python).unwrap().unwrap();
        assert_eq!((l.sweep_id.as_str(), l.run_id.as_str()), (first.as_str(), format!("{first}/c0/s0").as_str()));
        let spec = l.spec;
        assert_eq!((spec.train.trainer, spec.user["width"].as_i64()), (parse(py), Some(4)));
        // A worker of both takes the earliest queued run of either.
        s.release(&rust, &[], true, "bye").unwrap();
        assert_eq!(s.acquire(&both).unwrap().unwrap().run_id, format!("{first}/c1/s0"));
        assert_eq!(s.acquire(&both).unwrap().unwrap().sweep_id, builtin);
        assert!(s.acquire(&both).unwrap().is_none());
    }

    #[test]
    fn a_heartbeat_keeps_held_leases_and_names_the_others_lost() {
        let (_dir, s, w, l) = leased(2, 1);
        let gone = ("elsewhere/c0/s0".to_string(), 1);
        let a = s.heartbeat(&w, &[(l.run_id.clone(), l.epoch), (l.run_id.clone(), l.epoch + 1), gone.clone()]);
        let a = a.unwrap().unwrap();
        assert_eq!(a.lost, vec![(l.run_id.clone(), l.epoch + 1), gone]);
        assert!(!a.drain);
        assert!(s.heartbeat("nobody", &[]).unwrap().is_none(), "an unknown worker is told so");
    }

    #[test]
    fn a_lapsed_lease_requeues_its_run_and_fences_its_holder() {
        let (_dir, mut s) = store_with(LeasePolicy { ttl_ms: -1000, max_attempts: 3 });
        submit(&mut s, 1, 1);
        let (a, b) = (worker(&mut s, "a"), worker(&mut s, "b"));
        let first = s.acquire(&a).unwrap().unwrap();
        assert_eq!(s.expire_leases(now_ms(), &Seen::default()).unwrap(), vec![first.run_id.clone()]);
        assert!(s.workers().unwrap().iter().all(|w| w.state == WorkerState::Lost), "both were silent");
        let second = s.acquire(&b).unwrap().unwrap();
        assert_eq!((second.run_id.as_str(), second.epoch), (first.run_id.as_str(), first.epoch + 1));
        let stale = s.apply_report(&report(&a, &first, 1, progress(1))).unwrap_err();
        assert!(matches!(stale, CoordinatorError::StaleEpoch { .. }), "{stale}");
        assert_eq!(s.apply_report(&report(&b, &second, 1, progress(1))).unwrap(), 1);
        assert_eq!(s.workers().unwrap()[1].state, WorkerState::Active, "a grant revives a lost worker");
    }

    #[test]
    fn renewals_heard_keep_a_lease_and_revive_a_lost_worker() {
        let (_dir, mut s) = store_with(LeasePolicy { ttl_ms: 1000, max_attempts: 3 });
        submit(&mut s, 2, 1);
        let w = worker(&mut s, "a");
        let l = s.acquire(&w).unwrap().unwrap();
        let t = now_ms();
        // Silent for 5 s: the worker is lost, but a renewal heard at
        // t + 4.5 s keeps its lease to t + 5.5 s.
        let mut seen = Seen::default();
        seen.record("someone-else", [(l.run_id.clone(), l.epoch)], t + 4_500);
        assert_eq!(s.expire_leases(t + 5_000, &seen).unwrap(), vec![l.run_id.clone()], "only its holder renews it");
        let l = s.acquire(&w).unwrap().unwrap();
        let mut seen = Seen::default();
        seen.record(&w, [(l.run_id.clone(), l.epoch)], t + 4_500);
        assert!(s.expire_leases(t + 5_000, &seen).unwrap().is_empty());
        assert_eq!(s.workers().unwrap()[0].last_heartbeat_ms, t + 4_500);
        assert!(s.expire_leases(t + 5_400, &Seen::default()).unwrap().is_empty());
        assert_eq!(s.expire_leases(t + 5_600, &Seen::default()).unwrap(), vec![l.run_id.clone()]);
        assert_eq!(s.workers().unwrap()[0].state, WorkerState::Lost);
        let mut seen = Seen::default();
        seen.record(&w, [], t + 5_700);
        s.expire_leases(t + 5_800, &seen).unwrap();
        assert_eq!(s.workers().unwrap()[0].state, WorkerState::Active, "a heartbeat heard revives it");
    }

    #[test]
    fn a_run_that_lapses_too_often_fails_and_ends_its_sweep() {
        let (_dir, mut s) = store_with(LeasePolicy { ttl_ms: -1000, max_attempts: 2 });
        let sweep = submit(&mut s, 1, 1);
        let w = worker(&mut s, "a");
        for _ in 0..2 {
            s.acquire(&w).unwrap().unwrap();
            s.expire_leases(now_ms(), &Seen::default()).unwrap();
        }
        let row = s.sweep(&sweep).unwrap();
        assert_eq!((row.count(RunState::Failed), row.state), (1, SweepState::Completed));
        assert!(s.acquire(&w).unwrap().is_none());
    }

    #[test]
    fn release_and_leave_return_leases_and_draining_takes_nothing_new() {
        let (_dir, mut s) = store();
        let sweep = submit(&mut s, 3, 1);
        let w = worker(&mut s, "a");
        let l1 = s.acquire(&w).unwrap().unwrap();
        let l2 = s.acquire(&w).unwrap().unwrap();
        s.release(&w, &[(l1.run_id.clone(), l1.epoch)], false, "test").unwrap();
        assert_eq!(s.sweep(&sweep).unwrap().count(RunState::Queued), 2);
        s.drain(&w).unwrap();
        assert!(s.heartbeat(&w, &[]).unwrap().unwrap().drain);
        assert!(s.acquire(&w).unwrap().is_none(), "a draining worker is granted nothing");
        assert!(!s.takes_work(&w).unwrap());
        // Leaving returns every lease, including one never named.
        s.release(&w, &[], true, "bye").unwrap();
        assert_eq!(s.sweep(&sweep).unwrap().count(RunState::Queued), 3);
        let row = s.workers().unwrap().remove(0);
        assert_eq!((row.state, row.runs.len()), (WorkerState::Left, 0));
        assert!(s.apply_report(&report(&w, &l2, 1, progress(1))).is_err(), "its late reports are fenced");
        assert!(matches!(s.drain("nobody"), Err(CoordinatorError::NotFound { .. })));
    }

    #[test]
    fn pass_owners_are_current_only_while_their_lease_is() {
        let (_dir, mut s, w, l) = leased(1, 1);
        let owner = PassOwner { worker_id: w.clone(), run_id: l.run_id.clone(), epoch: l.epoch };
        assert_eq!(s.pass_source(&owner).unwrap().0, l.sweep_id);
        assert_eq!(s.current_owners(vec![owner.clone()]).unwrap().len(), 1);
        s.release(&w, &[(l.run_id.clone(), l.epoch)], false, "test").unwrap();
        assert!(s.current_owners(vec![owner.clone()]).unwrap().is_empty());
        assert!(matches!(s.pass_source(&owner), Err(CoordinatorError::StaleEpoch { .. })));
    }
}
