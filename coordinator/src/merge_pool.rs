//! [`MergePool`]: the threads that merge sketches, below the runtime's
//! priority.
//!
//! A cell merge at ℓ = 1,024 and d = 13,338 is seconds of dense linear
//! algebra. Sketch merges are cut in two (`gradsweep_shared::linalg::Split`),
//! which decides their bits; this pool's two threads run the halves side by
//! side. The threads run below every other thread of the process: on
//! Linux, under the `SCHED_IDLE` policy, which any other thread preempts
//! as soon as it wakes (a nice value alone only shrinks the merge's share:
//! at nice +10 it still took 60 % of a core beside a loaded coordinator),
//! and at nice [`MERGE_NICE`] below the caller where that policy is
//! refused. So when heartbeats, grants and reports want a core the merge
//! gives it up, and when they do not, the merge has both. A merge's
//! reads of its inputs and its encoding run on these threads too.

use crate::error::{CoordinatorError, Result};

/// Threads of the pool: the two halves of a cut computation.
pub const MERGE_THREADS: usize = 2;

/// How many nice levels the pool's threads sit below the thread that
/// started them (the runtime's threads keep the process's own).
pub const MERGE_NICE: i32 = 10;

/// A rayon pool of [`MERGE_THREADS`] low-priority threads for merges.
pub struct MergePool {
    pool: rayon::ThreadPool,
}

impl std::fmt::Debug for MergePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergePool").field("threads", &self.pool.current_num_threads()).finish()
    }
}

impl MergePool {
    /// Starts the pool's threads (named `gradsweep-merge-N`).
    pub fn start() -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(MERGE_THREADS)
            .thread_name(|i| format!("gradsweep-merge-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(|e| CoordinatorError::Internal(format!("cannot start the merge threads: {e}")))?;
        Ok(MergePool { pool })
    }

    /// Runs `f` on the pool (blocking the caller until it returns): the
    /// parallel parts of the merges inside it use the pool's threads.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.pool.install(f)
    }
}

/// Puts the calling thread under `SCHED_IDLE` and lowers its nice value by
/// [`MERGE_NICE`] levels (to 19 at most); logs and goes on where it cannot
/// (the merges are then only as polite as the OS makes them).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: sched_setscheduler reads the parameter struct we pass by
        // reference and touches no other memory; pid 0 is this thread.
        let idle = unsafe {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        };
        if idle != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "merge thread not under SCHED_IDLE");
        }
        #[allow(unsafe_code)]
        // SAFETY: gettid, getpriority and setpriority take and return plain
        // integers and touch no memory of ours; on Linux, PRIO_PROCESS with
        // a thread id reads and sets that thread's nice value only.
        let status = unsafe {
            let tid = libc::gettid() as libc::id_t;
            let now = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, (now + MERGE_NICE).min(19))
        };
        if status != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "merge thread keeps the default priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's threads run at the lower priority, and the caller's
    /// thread keeps its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_merge_threads_run_below_the_callers_priority() {
        let nice_of_this_thread = || {
            // /proc/thread-self/stat: field 19 is the nice value.
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            after.split(' ').nth(16).unwrap().parse::<i32>().unwrap()
        };
        #[allow(unsafe_code)]
        // SAFETY: reads this thread's scheduling policy; no memory.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let mine = nice_of_this_thread();
        let pool = MergePool::start().unwrap();
        let theirs = pool.run(nice_of_this_thread);
        assert_eq!(theirs, (mine + MERGE_NICE).min(19));
        assert_eq!(pool.run(policy), libc::SCHED_IDLE);
        assert_eq!(nice_of_this_thread(), mine);
        assert_eq!(policy(), libc::SCHED_OTHER, "the caller keeps its own policy");
        let (a, b) = pool.run(|| rayon::join(nice_of_this_thread, nice_of_this_thread));
        assert_eq!((a, b), (theirs, theirs));
    }
}
