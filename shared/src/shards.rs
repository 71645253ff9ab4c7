//! Probes split into shards by sample range, computed by as many threads as
//! are free and folded in shard order.
//!
//! A probe is a sum over the training samples, and sketches merge, so a
//! probe splits into shards: contiguous sample ranges of
//! `[probe] shard_samples` samples ([`shard_ranges`]). The layout is part of
//! the run's spec, never of how many threads or machines compute it, and the
//! shards' results are folded strictly in shard order ([`fold_in_order`]):
//! the result is bit-identical whether one thread computes every shard or
//! many do.
//!
//! Threads come from a [`ThreadLender`]: the caller's own thread always
//! works; a worker lends its idle slots for the length of one pass. Other
//! machines come through a [`ShardExchange`]: a pass is published (as
//! bytes), this machine claims shards one at a time ([`ShardClaims`]) and
//! takes the others' results in order ([`fold_claimed`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

/// Default `[probe] shard_samples`: 60,000 MNIST samples make 8 shards.
pub const DEFAULT_SHARD_SAMPLES: u32 = 8192;

/// The shard layout of `n` samples: consecutive ranges of `shard_samples`
/// samples, the last one shorter; one range of all samples when
/// `shard_samples` is 0 or at least `n`. Never empty ranges (and no range
/// at all when `n` is 0).
pub fn shard_ranges(n: usize, shard_samples: u32) -> Vec<Range<usize>> {
    let size = if shard_samples == 0 { n.max(1) } else { shard_samples as usize };
    (0..n).step_by(size).map(|s| s..(s + size).min(n)).collect()
}

/// Lends a computation threads besides the caller's own, for a while.
pub trait ThreadLender: Sync {
    /// Asks for up to `want` more threads; returns how many are granted
    /// (possibly 0), to be handed back with [`ThreadLender::give_back`].
    fn borrow(&self, want: usize) -> usize;
    /// Hands back `n` threads granted by [`ThreadLender::borrow`].
    fn give_back(&self, n: usize);
}

/// Lends nothing: every shard runs on the caller's thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoThreads;

impl ThreadLender for NoThreads {
    fn borrow(&self, _want: usize) -> usize {
        0
    }
    fn give_back(&self, _n: usize) {}
}

/// Lends up to a fixed number of threads, whenever asked (for `local` runs
/// with a known core count, tests and benchmarks).
#[derive(Debug, Clone, Copy)]
pub struct FixedThreads(pub usize);

impl ThreadLender for FixedThreads {
    fn borrow(&self, want: usize) -> usize {
        want.min(self.0)
    }
    fn give_back(&self, _n: usize) {}
}

/// Threads borrowed from a lender, handed back when dropped.
struct Borrowed<'a> {
    lender: &'a dyn ThreadLender,
    n: usize,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if self.n > 0 {
            self.lender.give_back(self.n);
        }
    }
}

/// What [`fold_in_order`] returns: the folded value, and how many threads
/// computed it (for logs: the value does not depend on them).
#[derive(Debug, Clone, PartialEq)]
pub struct Folded<T> {
    /// The fold of every shard's result, in shard order.
    pub value: T,
    /// Threads that computed shards: the caller's plus those borrowed.
    pub threads: usize,
    /// Shards computed by other machines.
    pub remote: usize,
}

/// Where a shard of a pass stands, as seen by the machine that folds it
/// ([`ShardClaims::take`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Taken<T> {
    /// Computed elsewhere: its result.
    Done(T),
    /// Claimed by this machine: one of its threads delivers it.
    Local,
    /// Being computed elsewhere: ask again.
    Pending,
    /// Nobody holds it any more (a helper's lease lapsed, or its result was
    /// unusable): it is now this machine's, to compute right away.
    Compute,
}

/// Who computes which shard of one pass: this machine claims shards one at
/// a time, and the shards other machines computed are taken from here.
pub trait ShardClaims<T>: Sync {
    /// The next shard for this machine to compute (the lowest nobody holds),
    /// or `None` when none is left to claim now.
    fn claim(&self) -> Option<usize>;
    /// Where shard `k` stands, waiting up to `wait` for a result computed
    /// elsewhere.
    fn take(&self, k: usize, wait: std::time::Duration) -> Taken<T>;
}

/// Every shard computed on this machine, in order.
#[derive(Debug)]
pub struct LocalClaims {
    next: AtomicUsize,
    count: usize,
}

impl LocalClaims {
    /// Claims for shards `0 … count − 1`.
    pub fn new(count: usize) -> Self {
        LocalClaims { next: AtomicUsize::new(0), count }
    }
}

impl<T> ShardClaims<T> for LocalClaims {
    fn claim(&self) -> Option<usize> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        (k < self.count).then_some(k)
    }
    fn take(&self, _k: usize, _wait: std::time::Duration) -> Taken<T> {
        Taken::Local
    }
}

/// Offers the shards of a pass to other machines (a worker offers them
/// through its coordinator to idle workers). Bytes only: what a pass and a
/// shard's result are is [`crate::run`]'s business.
pub trait ShardExchange: Sync {
    /// Publishes a pass of `count` shards, described by `pass` to the
    /// machines that help; `None` when it is not offered (every shard is
    /// then computed here). The pass is withdrawn when the handle drops.
    fn open(&self, pass: &[u8], count: usize) -> Option<Box<dyn OpenPass + '_>>;
}

/// A published pass: [`ShardClaims`] over the encoded results of shards
/// computed elsewhere.
pub trait OpenPass: Sync {
    /// The next shard for this machine to compute, or `None` when none is
    /// left to claim now.
    fn claim(&self) -> Option<usize>;
    /// Where shard `k` stands ([`ShardClaims::take`]), its result encoded.
    fn take(&self, k: usize, wait: std::time::Duration) -> Taken<Vec<u8>>;
}

/// Offers nothing to anyone: every shard is computed here.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExchange;

impl ShardExchange for NoExchange {
    fn open(&self, _pass: &[u8], _count: usize) -> Option<Box<dyn OpenPass + '_>> {
        None
    }
}

/// What a probe may use besides the caller's thread: threads lent by this
/// machine, and other machines through an exchange.
#[derive(Clone, Copy)]
pub struct ProbeHelp<'a> {
    /// Threads of this machine (a worker's idle slots).
    pub threads: &'a dyn ThreadLender,
    /// Other machines (idle workers, through the coordinator).
    pub exchange: &'a dyn ShardExchange,
}

impl ProbeHelp<'static> {
    /// No help: every shard on the caller's thread.
    pub fn none() -> Self {
        ProbeHelp { threads: &NoThreads, exchange: &NoExchange }
    }
}

impl<'a> ProbeHelp<'a> {
    /// Threads from `threads`, no other machine.
    pub fn threads(threads: &'a dyn ThreadLender) -> Self {
        ProbeHelp { threads, exchange: &NoExchange }
    }
}

/// The shared state of a fold: the accumulator, the next shard it takes,
/// and the shards computed ahead of it.
struct Fold<T> {
    acc: Option<T>,
    next: usize,
    ready: BTreeMap<usize, T>,
    merging: bool,
}

/// How long the folding thread waits for a shard computed elsewhere before
/// it looks again (at its own threads, and at the stop flag).
const TAKE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Computes `compute(0) … compute(count − 1)` and folds them in that order
/// with `merge` (`acc = compute(0)`, then `merge(&mut acc, compute(k))` for
/// k = 1, 2, …): on the caller's thread plus up to `max_threads − 1` threads
/// borrowed from `lender` for the duration. Shards are handed out in order;
/// whichever thread completes the next shard in line folds it (and any that
/// follow it, already computed) outside the lock, while the others go on
/// computing. The fold's order never depends on the threads, so neither
/// does the result. `None` when `count` is 0, when `stop` is raised, or
/// when `compute` returns `None` (it should when it sees `stop`).
pub fn fold_in_order<T: Send>(
    count: usize,
    max_threads: usize,
    lender: &dyn ThreadLender,
    stop: &AtomicBool,
    compute: &(dyn Fn(usize) -> Option<T> + Sync),
    merge: &(dyn Fn(&mut T, T) + Sync),
) -> Option<Folded<T>> {
    fold_claimed(count, max_threads, lender, &LocalClaims::new(count), stop, compute, merge)
}

/// [`fold_in_order`], with the shards shared out by `claims`: this
/// machine's threads compute the shards they claim, and the caller's thread,
/// once nothing is left to claim, takes the others in order from `claims`
/// as other machines finish them (computing any whose helper went away).
/// A result taken twice, or one that arrives after its shard was folded,
/// is ignored, so the fold is the same whoever computed what.
pub fn fold_claimed<T: Send>(
    count: usize,
    max_threads: usize,
    lender: &dyn ThreadLender,
    claims: &dyn ShardClaims<T>,
    stop: &AtomicBool,
    compute: &(dyn Fn(usize) -> Option<T> + Sync),
    merge: &(dyn Fn(&mut T, T) + Sync),
) -> Option<Folded<T>> {
    if count == 0 {
        return None;
    }
    let want = max_threads.max(1).min(count) - 1;
    let borrowed = Borrowed { lender, n: if want > 0 { lender.borrow(want).min(want) } else { 0 } };
    let fold = Mutex::new(Fold { acc: None, next: 0, ready: BTreeMap::new(), merging: false });
    let changed = Condvar::new();
    let failed = AtomicBool::new(false);
    let remote = AtomicUsize::new(0);
    let halted = || failed.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
    let fail = || {
        failed.store(true, Ordering::Relaxed);
        changed.notify_all();
    };
    // Adds shard k's result and folds as far as the results in line go.
    let deliver = |k: usize, out: T| {
        let Ok(mut st) = fold.lock() else { return fail() };
        if k < st.next || st.ready.contains_key(&k) {
            return;
        }
        st.ready.insert(k, out);
        if !st.merging {
            loop {
                let next = st.next;
                let Some(item) = st.ready.remove(&next) else { break };
                st.next += 1;
                st.merging = true;
                let acc = st.acc.take();
                drop(st);
                let acc = match acc {
                    None => item,
                    Some(mut a) => {
                        merge(&mut a, item);
                        a
                    }
                };
                st = match fold.lock() {
                    Ok(s) => s,
                    Err(_) => return fail(),
                };
                st.acc = Some(acc);
                st.merging = false;
            }
        }
        drop(st);
        changed.notify_all();
    };
    let compute_here = |k: usize| match compute(k) {
        Some(out) => deliver(k, out),
        None => fail(),
    };
    // The shard the fold waits for, unless it is in hand or being merged.
    let awaited = || {
        let st = fold.lock().ok()?;
        (st.next < count && !st.merging && !st.ready.contains_key(&st.next)).then_some(st.next)
    };
    // Takes shard k from elsewhere if it is done there (or computes it here
    // if nobody holds it); `Some(local)` when it is still out, `local`
    // telling whether one of this machine's threads has it.
    let from_elsewhere = |k: usize, wait: std::time::Duration| match claims.take(k, wait) {
        Taken::Done(out) => {
            remote.fetch_add(1, Ordering::Relaxed);
            deliver(k, out);
            None
        }
        Taken::Compute => {
            compute_here(k);
            None
        }
        Taken::Local => Some(true),
        Taken::Pending => Some(false),
    };
    let work = |folder: bool| {
        while !halted() {
            let Some(k) = claims.claim() else { return };
            compute_here(k);
            // The folding thread keeps the fold moving with shards computed
            // elsewhere, between its own.
            if folder && let Some(next) = awaited() {
                let _ = from_elsewhere(next, std::time::Duration::ZERO);
            }
        }
    };
    let collect = || {
        while !halted() {
            let Some(next) = ({
                let Ok(st) = fold.lock() else { return fail() };
                if st.next == count && !st.merging {
                    return;
                }
                if st.merging || st.ready.contains_key(&st.next) {
                    let _ = changed.wait_timeout(st, std::time::Duration::from_millis(50));
                    None
                } else {
                    Some(st.next)
                }
            }) else {
                continue;
            };
            if from_elsewhere(next, TAKE_WAIT) == Some(true) {
                // One of this machine's threads has it: wait for it.
                let Ok(st) = fold.lock() else { return fail() };
                if st.next == next && !st.ready.contains_key(&next) {
                    let _ = changed.wait_timeout(st, std::time::Duration::from_millis(200));
                }
            }
        }
    };
    if borrowed.n == 0 {
        work(true);
        collect();
    } else {
        std::thread::scope(|s| {
            for _ in 0..borrowed.n {
                s.spawn(|| work(false));
            }
            work(true);
            collect();
        });
    }
    let threads = 1 + borrowed.n;
    drop(borrowed);
    let st = fold.into_inner().ok()?;
    if halted() || st.next != count {
        return None;
    }
    st.acc.map(|value| Folded { value, threads, remote: remote.into_inner() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_cover_the_samples_in_order() {
        assert_eq!(shard_ranges(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(shard_ranges(8, 4), vec![0..4, 4..8]);
        assert_eq!(shard_ranges(3, 0), vec![0..3]);
        assert_eq!(shard_ranges(3, 100), vec![0..3]);
        assert!(shard_ranges(0, 4).is_empty());
    }

    /// A fold whose merge does not commute (string concatenation) gives
    /// the same answer on one thread and on several, with shards of very
    /// different costs finishing out of order; a lender's threads come
    /// back; a raised stop or a failed shard gives `None`.
    #[test]
    fn folds_in_shard_order_whatever_the_threads() {
        struct Counting(AtomicUsize, AtomicUsize);
        impl ThreadLender for Counting {
            fn borrow(&self, want: usize) -> usize {
                self.0.fetch_add(want, Ordering::SeqCst);
                want
            }
            fn give_back(&self, n: usize) {
                self.1.fetch_add(n, Ordering::SeqCst);
            }
        }
        let compute = |k: usize| {
            // Early shards are slow, so later ones finish first.
            std::thread::sleep(std::time::Duration::from_millis(((20 - k as u64 % 20) % 7) * 2));
            Some(format!("{k},"))
        };
        let merge = |a: &mut String, b: String| a.push_str(&b);
        let stop = AtomicBool::new(false);
        let one = fold_in_order(40, 1, &NoThreads, &stop, &compute, &merge).unwrap();
        let want: String = (0..40).map(|k| format!("{k},")).collect();
        assert_eq!(one, Folded { value: want.clone(), threads: 1, remote: 0 });
        let lender = Counting(AtomicUsize::new(0), AtomicUsize::new(0));
        for threads in [2, 3, 8] {
            let many = fold_in_order(40, threads, &lender, &stop, &compute, &merge).unwrap();
            assert_eq!(many, Folded { value: want.clone(), threads, remote: 0 });
        }
        assert_eq!(lender.0.load(Ordering::SeqCst), 1 + 2 + 7);
        assert_eq!(lender.1.load(Ordering::SeqCst), 1 + 2 + 7);
        let failing = |k: usize| (k != 17).then(|| format!("{k},"));
        assert_eq!(fold_in_order(40, 3, &FixedThreads(2), &stop, &failing, &merge), None);
        stop.store(true, Ordering::SeqCst);
        assert_eq!(fold_in_order(40, 3, &FixedThreads(2), &stop, &compute, &merge), None);
    }

    /// Shards shared with another machine: it takes the lowest free shard,
    /// sometimes goes away mid-shard (the shard is free again), and its
    /// results are taken in order; the fold is the one computed alone.
    #[test]
    fn folds_shards_computed_elsewhere_in_shard_order() {
        #[derive(Clone, PartialEq)]
        enum S {
            Free,
            Here,
            There,
            Done(String),
            Taken,
        }
        struct Board(Mutex<Vec<S>>, AtomicUsize);
        impl ShardClaims<String> for Board {
            fn claim(&self) -> Option<usize> {
                let mut b = self.0.lock().unwrap();
                let k = b.iter().position(|s| *s == S::Free)?;
                b[k] = S::Here;
                Some(k)
            }
            fn take(&self, k: usize, wait: std::time::Duration) -> Taken<String> {
                let mut b = self.0.lock().unwrap();
                match b[k].clone() {
                    S::Done(v) => {
                        b[k] = S::Taken;
                        Taken::Done(v)
                    }
                    S::Free => {
                        b[k] = S::Here;
                        Taken::Compute
                    }
                    S::Here => Taken::Local,
                    S::There | S::Taken => {
                        drop(b);
                        std::thread::sleep(wait.min(std::time::Duration::from_millis(2)));
                        Taken::Pending
                    }
                }
            }
        }
        let count = 30;
        let board = Board(Mutex::new(vec![S::Free; count]), AtomicUsize::new(0));
        let compute = |k: usize| {
            std::thread::sleep(std::time::Duration::from_millis(3));
            Some(format!("{k},"))
        };
        let merge = |a: &mut String, b: String| a.push_str(&b);
        let stop = AtomicBool::new(false);
        let want: String = (0..count).map(|k| format!("{k},")).collect();
        let folded = std::thread::scope(|s| {
            s.spawn(|| {
                // The other machine: every third shard it holds, it dies.
                let mut held = 0;
                loop {
                    let k = {
                        let mut b = board.0.lock().unwrap();
                        let Some(k) = b.iter().position(|s| *s == S::Free) else { return };
                        b[k] = S::There;
                        k
                    };
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    held += 1;
                    let mut b = board.0.lock().unwrap();
                    b[k] = if held % 3 == 0 { S::Free } else { S::Done(format!("{k},")) };
                    board.1.fetch_add(1, Ordering::SeqCst);
                }
            });
            fold_claimed(count, 2, &FixedThreads(1), &board, &stop, &compute, &merge).unwrap()
        });
        assert_eq!(folded.value, want);
        assert!(folded.remote > 0 && folded.remote < count, "{} shards came from elsewhere", folded.remote);
        assert!(board.1.load(Ordering::SeqCst) > 0);
    }
}
