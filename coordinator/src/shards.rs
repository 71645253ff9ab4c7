//! Probe shards leased to idle workers: the [`ShardBoard`].
//!
//! A run's worker publishes a probe pass (its weights and its shard count,
//! fenced by its run lease). Idle workers are granted its free shards one
//! at a time, each under a shard lease with its own epoch (grown at each
//! grant) that their heartbeats renew and that lapses like a run lease.
//! The run's worker claims free shards for itself and takes the others'
//! results in shard order, folding them itself, so the result never
//! depends on who computed what.
//!
//! The board lives in memory, behind its own lock (never the store's):
//! shard traffic touches no database. A pass ends with its run lease (the
//! reaper drops passes whose lease is gone), with its worker's `ClosePass`
//! or with the next pass of the same run; a coordinator restart forgets
//! every pass. Whatever was lost is computed by the run's worker itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradsweep_shared::spec::RunSpec;

use crate::error::{CoordinatorError, Result};

/// Who published a pass: the run's worker under its run lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassOwner {
    /// The worker that holds the run lease.
    pub worker_id: String,
    /// The run.
    pub run_id: String,
    /// The run lease's epoch.
    pub epoch: u64,
}

/// The lease of one shard: its pass, its index, and its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLease {
    /// The pass.
    pub pass_id: u64,
    /// The shard's index in the pass.
    pub shard: u32,
    /// Grows each time the shard is granted.
    pub epoch: u64,
}

/// A shard granted to a helper, with what it needs to compute it.
#[derive(Debug, Clone)]
pub struct ShardGrant {
    /// The lease.
    pub lease: ShardLease,
    /// The run whose probe it belongs to.
    pub run_id: String,
    /// That run's sweep.
    pub sweep_id: String,
    /// That run's spec.
    pub spec: Arc<RunSpec>,
}

/// Where a shard stands for the run's worker ([`ShardBoard::take`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ShardView {
    /// Computed elsewhere: the encoded result.
    Done(Arc<Vec<u8>>),
    /// A helper holds it.
    Pending,
    /// The run's worker claimed it.
    Claimed,
    /// It was free: the run's worker now holds it, to compute it.
    Compute,
}

#[derive(Debug, Clone)]
enum Held {
    Free,
    Claimed,
    Leased {
        worker_id: String,
        epoch: u64,
        until: Instant,
    },
    Done(Arc<Vec<u8>>),
    /// Taken by the run's worker and folded past: the result is dropped.
    Folded,
}

#[derive(Debug)]
struct Pass {
    owner: PassOwner,
    sweep_id: String,
    spec: Arc<RunSpec>,
    blob: Arc<Vec<u8>>,
    shards: Vec<(Held, u64)>,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoardCounts {
    /// Passes open.
    pub passes: usize,
    /// Shards leased to helpers.
    pub leased: usize,
    /// Bytes of results waiting for their run's worker.
    pub result_bytes: usize,
}

/// The open probe passes and their shards.
#[derive(Debug)]
pub struct ShardBoard {
    passes: BTreeMap<u64, Pass>,
    next_id: u64,
    ttl: Duration,
    /// Most bytes of results held at once.
    max_result_bytes: usize,
    /// Bytes of results held now.
    result_bytes: usize,
}

fn gone(what: String) -> CoordinatorError {
    CoordinatorError::ShardGone(what)
}

impl ShardBoard {
    /// An empty board whose shard leases last `ttl` past each renewal, and
    /// which holds at most `max_result_bytes` of results. Pass ids start
    /// from the clock, so a restarted coordinator never reuses one that
    /// helpers may still name.
    pub fn new(ttl: Duration, max_result_bytes: usize) -> Self {
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis());
        ShardBoard {
            passes: BTreeMap::new(),
            next_id: (base as u64).saturating_mul(1000),
            ttl,
            max_result_bytes,
            result_bytes: 0,
        }
    }

    /// Drops the results a pass holds (it ends), counting them out.
    fn forget(&mut self, pass_id: u64) {
        if let Some(p) = self.passes.remove(&pass_id) {
            self.result_bytes -= p.shards.iter().map(|(h, _)| held_bytes(h)).sum::<usize>();
        }
    }

    /// Whether a shard of another worker's run is free for `worker_id`.
    pub fn has_free(&self, worker_id: &str) -> bool {
        self.passes
            .values()
            .any(|p| p.owner.worker_id != worker_id && p.shards.iter().any(|(h, _)| matches!(h, Held::Free)))
    }

    /// Opens a pass of `count` shards for `owner` (whose run lease the
    /// caller checked), replacing the run's previous pass; returns its id.
    pub fn publish(
        &mut self,
        owner: PassOwner,
        sweep_id: String,
        spec: Arc<RunSpec>,
        blob: Vec<u8>,
        count: u32,
    ) -> u64 {
        self.passes.retain(|_, p| p.owner.run_id != owner.run_id);
        self.next_id += 1;
        let id = self.next_id;
        let shards = vec![(Held::Free, 0); count as usize];
        self.passes.insert(id, Pass { owner, sweep_id, spec, blob: Arc::new(blob), shards });
        id
    }

    fn owned(&mut self, pass_id: u64, owner: &PassOwner) -> Result<&mut Pass> {
        match self.passes.get_mut(&pass_id) {
            Some(p) if p.owner == *owner => Ok(p),
            Some(_) => Err(gone(format!("probe pass {pass_id} belongs to another run lease"))),
            None => {
                Err(gone(format!("probe pass {pass_id} is closed (its run lease ended, or the coordinator restarted)")))
            }
        }
    }

    /// The run's worker claims the lowest free shard.
    pub fn claim(&mut self, pass_id: u64, owner: &PassOwner) -> Result<Option<u32>> {
        let pass = self.owned(pass_id, owner)?;
        let Some(k) = pass.shards.iter().position(|(h, _)| matches!(h, Held::Free)) else { return Ok(None) };
        pass.shards[k].0 = Held::Claimed;
        Ok(Some(k as u32))
    }

    /// Where shard `k` stands for the run's worker. A free shard becomes
    /// the worker's ([`ShardView::Compute`]). Taking shard `k` means every
    /// shard before it was folded: their results are dropped.
    pub fn take(&mut self, pass_id: u64, owner: &PassOwner, k: u32) -> Result<ShardView> {
        let pass = self.owned(pass_id, owner)?;
        let k = k as usize;
        if k >= pass.shards.len() {
            return Err(CoordinatorError::InvalidArgument(format!(
                "probe pass {pass_id} has {} shards, not {}",
                pass.shards.len(),
                k + 1
            )));
        }
        let mut freed = 0;
        for (h, _) in &mut pass.shards[..k] {
            if let Held::Done(d) = h {
                freed += d.len();
                *h = Held::Folded;
            }
        }
        let (held, _) = &mut pass.shards[k];
        let view = match held {
            Held::Done(data) => ShardView::Done(data.clone()),
            Held::Leased { .. } => ShardView::Pending,
            Held::Claimed | Held::Folded => ShardView::Claimed,
            Held::Free => {
                *held = Held::Claimed;
                ShardView::Compute
            }
        };
        self.result_bytes -= freed;
        Ok(view)
    }

    /// The run's worker withdraws its pass (helpers' later messages about
    /// it are refused).
    pub fn close(&mut self, pass_id: u64, owner: &PassOwner) -> Result<()> {
        self.owned(pass_id, owner)?;
        self.forget(pass_id);
        Ok(())
    }

    /// Grants `worker_id` the lowest free shard of the oldest pass of
    /// another worker's run, if any (a worker's own idle slots help its
    /// runs' probes directly).
    pub fn grant(&mut self, worker_id: &str, now: Instant) -> Option<ShardGrant> {
        let ttl = self.ttl;
        let (&pass_id, pass) = self
            .passes
            .iter_mut()
            .find(|(_, p)| p.owner.worker_id != worker_id && p.shards.iter().any(|(h, _)| matches!(h, Held::Free)))?;
        let k = pass.shards.iter().position(|(h, _)| matches!(h, Held::Free))?;
        let (held, epoch) = &mut pass.shards[k];
        *epoch += 1;
        *held = Held::Leased { worker_id: worker_id.to_string(), epoch: *epoch, until: now + ttl };
        Some(ShardGrant {
            lease: ShardLease { pass_id, shard: k as u32, epoch: *epoch },
            run_id: pass.owner.run_id.clone(),
            sweep_id: pass.sweep_id.clone(),
            spec: pass.spec.clone(),
        })
    }

    fn leased(&mut self, worker_id: &str, lease: ShardLease) -> Result<&mut (Held, u64)> {
        let slot = self
            .passes
            .get_mut(&lease.pass_id)
            .and_then(|p| p.shards.get_mut(lease.shard as usize))
            .ok_or_else(|| gone(format!("probe pass {} is closed", lease.pass_id)))?;
        match &slot.0 {
            Held::Leased { worker_id: w, epoch, .. } if w == worker_id && *epoch == lease.epoch => Ok(slot),
            _ => Err(gone(format!(
                "shard {} of probe pass {} is no longer leased to this worker at epoch {}",
                lease.shard, lease.pass_id, lease.epoch
            ))),
        }
    }

    /// The pass a helper's shard belongs to (fenced by its lease).
    pub fn pass_blob(&mut self, worker_id: &str, lease: ShardLease) -> Result<Arc<Vec<u8>>> {
        self.leased(worker_id, lease)?;
        Ok(self.passes[&lease.pass_id].blob.clone())
    }

    /// A helper's result for its shard (fenced by its lease). Refused when
    /// the board would hold more than its cap of results: the shard is then
    /// free again, for its run's worker to compute.
    pub fn submit(&mut self, worker_id: &str, lease: ShardLease, data: Vec<u8>) -> Result<()> {
        let (held, cap, len) = (self.result_bytes, self.max_result_bytes, data.len());
        let slot = self.leased(worker_id, lease)?;
        if held + len > cap {
            slot.0 = Held::Free;
            return Err(gone(format!(
                "the coordinator holds {held} bytes of shard results (cap {cap}); shard {} of probe pass {} is \
                 left to its run's worker",
                lease.shard, lease.pass_id
            )));
        }
        slot.0 = Held::Done(Arc::new(data));
        self.result_bytes += len;
        Ok(())
    }

    /// Renews the shard leases a helper names; returns those it no longer
    /// holds.
    pub fn heartbeat(&mut self, worker_id: &str, leases: &[ShardLease], now: Instant) -> Vec<ShardLease> {
        let ttl = self.ttl;
        leases
            .iter()
            .filter(|&&l| match self.leased(worker_id, l) {
                Ok((Held::Leased { until, .. }, _)) => {
                    *until = now + ttl;
                    false
                }
                _ => true,
            })
            .copied()
            .collect()
    }

    /// Frees shards a helper hands back (it is shutting down).
    pub fn release(&mut self, worker_id: &str, leases: &[ShardLease]) -> usize {
        leases.iter().filter(|&&l| self.leased(worker_id, l).map(|s| s.0 = Held::Free).is_ok()).count()
    }

    /// Frees every shard whose lease lapsed before `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut n = 0;
        for (id, pass) in &mut self.passes {
            for (k, (held, epoch)) in pass.shards.iter_mut().enumerate() {
                if let Held::Leased { worker_id, until, .. } = held
                    && *until < now
                {
                    tracing::info!(pass_id = id, shard = k, epoch = *epoch, worker_id = %worker_id, "shard lease lapsed");
                    *held = Held::Free;
                    n += 1;
                }
            }
        }
        n
    }

    /// The owners of the open passes.
    pub fn owners(&self) -> Vec<PassOwner> {
        self.passes.values().map(|p| p.owner.clone()).collect()
    }

    /// Drops the passes of owners not in `current` (their run lease ended);
    /// returns how many.
    pub fn keep_owners(&mut self, current: &[PassOwner]) -> usize {
        let ended: Vec<u64> =
            self.passes.iter().filter(|(_, p)| !current.contains(&p.owner)).map(|(&id, _)| id).collect();
        ended.iter().for_each(|&id| self.forget(id));
        ended.len()
    }

    /// Counts for metrics.
    pub fn counts(&self) -> BoardCounts {
        let leased = self.passes.values().flat_map(|p| &p.shards).filter(|(h, _)| matches!(h, Held::Leased { .. }));
        BoardCounts { passes: self.passes.len(), leased: leased.count(), result_bytes: self.result_bytes }
    }
}

fn held_bytes(h: &Held) -> usize {
    if let Held::Done(d) = h { d.len() } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(epoch: u64) -> PassOwner {
        PassOwner { worker_id: "w-owner".into(), run_id: "run-1".into(), epoch }
    }

    fn board_with_pass(count: u32) -> (ShardBoard, u64) {
        let mut b = ShardBoard::new(Duration::from_secs(10), 4);
        let id = b.publish(owner(1), "s".into(), Arc::new(RunSpec::default()), vec![1, 2, 3], count);
        (b, id)
    }

    /// Helpers and the owner share out the shards lowest first; results are
    /// taken in order and dropped once folded past; fencing refuses a
    /// helper whose lease is not the current one.
    #[test]
    fn shares_shards_and_fences_helpers() {
        let (mut b, id) = board_with_pass(4);
        let now = Instant::now();
        let g0 = b.grant("w-a", now).unwrap();
        assert_eq!((g0.lease.shard, g0.lease.epoch, g0.run_id.as_str()), (0, 1, "run-1"));
        assert_eq!(b.claim(id, &owner(1)).unwrap(), Some(1));
        let g2 = b.grant("w-b", now).unwrap();
        assert_eq!(g2.lease.shard, 2);
        assert_eq!(*b.pass_blob("w-a", g0.lease).unwrap(), vec![1, 2, 3]);
        assert!(b.pass_blob("w-b", g0.lease).is_err(), "another worker's lease");
        assert_eq!(b.take(id, &owner(1), 0).unwrap(), ShardView::Pending);
        assert_eq!(b.take(id, &owner(1), 1).unwrap(), ShardView::Claimed);
        b.submit("w-a", g0.lease, vec![9]).unwrap();
        assert!(b.submit("w-a", g0.lease, vec![9]).is_err(), "submitted twice");
        assert_eq!(b.take(id, &owner(1), 0).unwrap(), ShardView::Done(Arc::new(vec![9])));
        assert_eq!(b.counts().result_bytes, 1);
        // Shard 3 is free: taking it makes it the owner's; taking it drops
        // the results before it.
        assert_eq!(b.take(id, &owner(1), 3).unwrap(), ShardView::Compute);
        assert_eq!(b.counts(), BoardCounts { passes: 1, leased: 1, result_bytes: 0 });
        assert!(b.grant("w-c", now).is_none(), "nothing free");
        let (mut b, _) = board_with_pass(2);
        assert!(b.grant("w-owner", now).is_none(), "a worker is not granted its own run's shards");
        assert!(b.claim(id, &owner(2)).is_err(), "another run lease");
        assert!(b.take(id, &owner(1), 4).is_err(), "no such shard");
    }

    /// A lapsed shard lease frees the shard, which is granted again at a
    /// higher epoch; the old helper is refused and told it lost it.
    #[test]
    fn lapsed_shards_are_granted_again_at_a_new_epoch() {
        let (mut b, id) = board_with_pass(2);
        let t0 = Instant::now();
        let first = b.grant("w-a", t0).unwrap();
        assert!(b.heartbeat("w-a", &[first.lease], t0 + Duration::from_secs(8)).is_empty());
        assert_eq!(b.expire(t0 + Duration::from_secs(15)), 0, "renewed by the heartbeat");
        assert_eq!(b.expire(t0 + Duration::from_secs(19)), 1);
        assert_eq!(b.heartbeat("w-a", &[first.lease], t0), vec![first.lease]);
        let again = b.grant("w-b", t0).unwrap();
        assert_eq!((again.lease.shard, again.lease.epoch), (0, 2));
        assert!(b.submit("w-a", first.lease, vec![1]).is_err());
        assert_eq!(b.release("w-b", &[again.lease]), 1);
        assert_eq!(b.take(id, &owner(1), 0).unwrap(), ShardView::Compute);
    }

    /// A pass ends with its run lease, with its owner's close, and with the
    /// next pass of its run; helpers of an ended pass are refused.
    #[test]
    fn passes_end_with_their_run_lease() {
        let (mut b, id) = board_with_pass(2);
        let g = b.grant("w-a", Instant::now()).unwrap();
        assert_eq!(b.keep_owners(&[owner(1)]), 0);
        assert_eq!(b.keep_owners(&[owner(2)]), 1);
        assert!(b.submit("w-a", g.lease, vec![1]).is_err());
        assert!(b.claim(id, &owner(1)).is_err());
        let id2 = b.publish(owner(2), "s".into(), Arc::new(RunSpec::default()), vec![], 2);
        let id3 = b.publish(owner(2), "s".into(), Arc::new(RunSpec::default()), vec![], 2);
        assert!(id3 > id2 && id2 > id);
        assert_eq!(b.counts().passes, 1, "the next pass replaces the previous");
        b.close(id3, &owner(2)).unwrap();
        assert_eq!(b.counts().passes, 0);
    }

    /// Results past the cap are refused and their shard is free again; the
    /// bytes held are counted out when results are folded past or their
    /// pass ends.
    #[test]
    fn results_are_held_up_to_the_cap() {
        let (mut b, id) = board_with_pass(3);
        let now = Instant::now();
        let (g0, g1) = (b.grant("w-a", now).unwrap(), b.grant("w-b", now).unwrap());
        b.submit("w-a", g0.lease, vec![0; 3]).unwrap();
        assert!(b.submit("w-b", g1.lease, vec![0; 2]).is_err(), "3 + 2 bytes are over the cap of 4");
        assert!(b.has_free("w-c"));
        assert_eq!(b.take(id, &owner(1), 1).unwrap(), ShardView::Compute);
        assert_eq!(b.counts().result_bytes, 0, "shard 0 was folded past");
        let g2 = b.grant("w-b", now).unwrap();
        b.submit("w-b", g2.lease, vec![0; 4]).unwrap();
        assert_eq!(b.counts().result_bytes, 4);
        assert_eq!(b.keep_owners(&[]), 1);
        assert_eq!(b.counts().result_bytes, 0);
    }
}
