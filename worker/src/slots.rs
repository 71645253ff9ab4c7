//! The worker's slots, and lending the idle ones to running probes.
//!
//! Each run holds one slot (a permit of [`Slots::semaphore`]) while it
//! executes. A probe splits into shards (`gradsweep_shared::shards`) and
//! asks, at each pass, for more threads: [`Slots`] lends it the slots that
//! are idle for the length of that pass, so they take no new run meanwhile.
//! A slot that the acquisition loop holds only to long-poll the coordinator
//! for work is idle too: the loop is asked to let go of it
//! ([`Slots::release_requested`]) and waits while a probe borrows
//! ([`Slots::wait_for_borrowers`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gradsweep_shared::shards::ThreadLender;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::metrics::WorkerMetrics;

/// How long a probe waits for the acquisition loop to let go of a slot it
/// holds only to wait for work.
const BORROW_WAIT: Duration = Duration::from_millis(200);

/// The worker's slots: one permit per run, lent to probes when idle.
#[derive(Debug)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    /// Permits lent to probes.
    lent: Mutex<Vec<OwnedSemaphorePermit>>,
    /// Probes asking for threads right now.
    borrowers: AtomicUsize,
    /// Whether the acquisition loop holds a slot while it waits for work.
    polling: AtomicBool,
    /// Wakes the acquisition loop: a probe wants the slot it holds.
    release: Notify,
    /// Where lent slots are counted.
    metrics: Arc<WorkerMetrics>,
}

impl Slots {
    /// `n` slots, all free; lending is counted in `metrics`.
    pub fn new(n: usize, metrics: Arc<WorkerMetrics>) -> Self {
        Slots {
            semaphore: Arc::new(Semaphore::new(n)),
            lent: Mutex::new(Vec::new()),
            borrowers: AtomicUsize::new(0),
            polling: AtomicBool::new(false),
            release: Notify::new(),
            metrics,
        }
    }

    /// The permits: a run holds one while it executes.
    pub fn semaphore(&self) -> Arc<Semaphore> {
        self.semaphore.clone()
    }

    /// Slots lent to probes right now.
    pub fn lent(&self) -> usize {
        self.lent.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Resolves when a probe asks for the slot the acquisition loop holds
    /// while it waits for work (the loop then drops its request and the
    /// slot). Spurious wake-ups are possible: check [`Slots::wanted`].
    pub async fn release_requested(&self) {
        self.release.notified().await
    }

    /// The acquisition loop says whether it holds a slot only to wait for
    /// work (a probe then asks for it, and waits for it a little).
    pub fn set_polling(&self, polling: bool) {
        self.polling.store(polling, Ordering::SeqCst);
    }

    /// Whether a probe is asking for threads right now.
    pub fn wanted(&self) -> bool {
        self.borrowers.load(Ordering::SeqCst) > 0
    }

    /// Waits (at most `limit`, looking every 10 ms) until no probe is asking
    /// for threads, so that the acquisition loop does not take back the slot
    /// it just let go of. A borrow asks for at most `BORROW_WAIT`.
    pub async fn wait_for_borrowers(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.wanted() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl ThreadLender for Slots {
    fn borrow(&self, want: usize) -> usize {
        let mut got = Vec::new();
        let take = |got: &mut Vec<OwnedSemaphorePermit>| {
            while got.len() < want {
                match self.semaphore.clone().try_acquire_owned() {
                    Ok(p) => got.push(p),
                    Err(_) => break,
                }
            }
        };
        take(&mut got);
        if got.len() < want && self.polling.load(Ordering::SeqCst) {
            // The acquisition loop holds a slot only to wait for work.
            self.borrowers.fetch_add(1, Ordering::SeqCst);
            self.release.notify_one();
            let until = Instant::now() + BORROW_WAIT;
            while got.len() < want && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
                take(&mut got);
            }
            self.borrowers.fetch_sub(1, Ordering::SeqCst);
        }
        let n = got.len();
        if n > 0 {
            tracing::debug!(threads = n, asked = want, "slots lent to a probe");
            self.metrics.probe_slots_lent.add(n as u64);
            if let Ok(mut l) = self.lent.lock() {
                l.extend(got);
            }
        }
        n
    }

    fn give_back(&self, n: usize) {
        if let Ok(mut l) = self.lent.lock() {
            let keep = l.len().saturating_sub(n);
            l.truncate(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idle slots are lent and come back; a slot held by a run is not; a
    /// slot the acquisition loop holds is let go of when it listens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lends_idle_slots_and_takes_them_back() {
        let metrics = Arc::new(WorkerMetrics::default());
        let slots = Arc::new(Slots::new(3, metrics.clone()));
        let run = slots.semaphore().acquire_owned().await.unwrap();
        let s = slots.clone();
        assert_eq!(tokio::task::spawn_blocking(move || s.borrow(5)).await.unwrap(), 2);
        assert_eq!((slots.lent(), slots.semaphore().available_permits()), (2, 0));
        slots.give_back(2);
        assert_eq!(slots.semaphore().available_permits(), 2);
        // The loop holds one slot while it long-polls; it lets go when asked.
        let polling = slots.semaphore().acquire_owned().await.unwrap();
        slots.set_polling(true);
        let l = slots.clone();
        let loop_task = tokio::spawn(async move {
            while !l.wanted() {
                l.release_requested().await;
            }
            drop(polling);
            l.set_polling(false);
            l.wait_for_borrowers(Duration::from_secs(5)).await;
        });
        let s = slots.clone();
        assert_eq!(tokio::task::spawn_blocking(move || s.borrow(5)).await.unwrap(), 2);
        loop_task.await.unwrap();
        slots.give_back(2);
        assert_eq!(metrics.probe_slots_lent.get(), 4);
        drop(run);
        assert_eq!(slots.semaphore().available_permits(), 3);
    }
}
