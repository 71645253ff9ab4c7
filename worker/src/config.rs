//! Worker settings.

use std::sync::Arc;
use std::time::Duration;

use gradsweep_proto::transport::ClientSecurity;

use crate::executor::{Builtin, Executor};

/// Settings of a worker process.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator URL, e.g. `http://10.0.0.5:7878`.
    pub coordinator: String,
    /// Runs executed at once (each takes one core).
    pub slots: u32,
    /// Name shown by `gradsweep workers`.
    pub name: String,
    /// How long one `Acquire` call may wait for work.
    pub acquire_wait: Duration,
    /// First retry delay after a failed call; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// TLS and token used to reach the coordinator.
    pub security: ClientSecurity,
    /// On drain or SIGTERM, how long runs may continue to reach their next
    /// checkpoint before they are stopped.
    pub handback_grace: Duration,
    /// Leave after holding no run for this long (work finished, or the
    /// coordinator unreachable); `None` waits for work forever.
    pub idle_exit: Option<Duration>,
    /// What computes the runs, and so which trainers the worker declares
    /// (the built-in engine unless the Python package sets its own).
    pub executor: Arc<dyn Executor>,
}

impl WorkerConfig {
    /// Defaults for a coordinator address and slot count.
    pub fn new(coordinator: impl Into<String>, slots: u32) -> Self {
        let host = hostname::get().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "worker".into());
        WorkerConfig {
            coordinator: coordinator.into(),
            slots: slots.max(1),
            name: format!("{host}-{}", std::process::id()),
            acquire_wait: Duration::from_secs(10),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(3),
            security: ClientSecurity::default(),
            idle_exit: None,
            handback_grace: Duration::from_secs(20),
            executor: Arc::new(Builtin),
        }
    }
}

/// Exponential backoff between retries.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// From the config's bounds.
    pub fn new(cfg: &WorkerConfig) -> Self {
        Backoff { next: cfg.min_backoff, min: cfg.min_backoff, max: cfg.max_backoff }
    }

    /// The delay to wait now; the next one is twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}
