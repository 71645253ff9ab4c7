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
//! works; a worker lends its idle slots for the length of one pass.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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
}

/// The shared state of a fold: the accumulator, the next shard it takes,
/// and the shards computed ahead of it.
struct Fold<T> {
    acc: Option<T>,
    next: usize,
    ready: BTreeMap<usize, T>,
    merging: bool,
}

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
    if count == 0 {
        return None;
    }
    let want = max_threads.max(1).min(count) - 1;
    let borrowed = Borrowed { lender, n: if want > 0 { lender.borrow(want).min(want) } else { 0 } };
    let fold = Mutex::new(Fold { acc: None, next: 0, ready: BTreeMap::new(), merging: false });
    let (next_shard, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
    let work = || {
        loop {
            let k = next_shard.fetch_add(1, Ordering::Relaxed);
            if k >= count || failed.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(out) = compute(k) else {
                failed.store(true, Ordering::Relaxed);
                return;
            };
            let Ok(mut st) = fold.lock() else { return failed.store(true, Ordering::Relaxed) };
            st.ready.insert(k, out);
            if st.merging {
                continue;
            }
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
                    Err(_) => return failed.store(true, Ordering::Relaxed),
                };
                st.acc = Some(acc);
                st.merging = false;
            }
        }
    };
    if borrowed.n == 0 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..borrowed.n {
                s.spawn(work);
            }
            work();
        });
    }
    let threads = 1 + borrowed.n;
    drop(borrowed);
    let st = fold.into_inner().ok()?;
    if failed.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) || st.next != count {
        return None;
    }
    st.acc.map(|value| Folded { value, threads })
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
        assert_eq!(one, Folded { value: want.clone(), threads: 1 });
        let lender = Counting(AtomicUsize::new(0), AtomicUsize::new(0));
        for threads in [2, 3, 8] {
            let many = fold_in_order(40, threads, &lender, &stop, &compute, &merge).unwrap();
            assert_eq!(many, Folded { value: want.clone(), threads });
        }
        assert_eq!(lender.0.load(Ordering::SeqCst), 1 + 2 + 7);
        assert_eq!(lender.1.load(Ordering::SeqCst), 1 + 2 + 7);
        let failing = |k: usize| (k != 17).then(|| format!("{k},"));
        assert_eq!(fold_in_order(40, 3, &FixedThreads(2), &stop, &failing, &merge), None);
        stop.store(true, Ordering::SeqCst);
        assert_eq!(fold_in_order(40, 3, &FixedThreads(2), &stop, &compute, &merge), None);
    }
}
