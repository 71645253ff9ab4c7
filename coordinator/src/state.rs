//! The coordinator's state machine over the [`Store`].
//!
//! [`Coordinator`] owns the store behind a mutex and runs every store call on
//! tokio's blocking pool, so SQLite I/O and result merging never stall the
//! async workers. It wakes long-polling `Acquire` calls when runs become
//! available and runs the lease reaper.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gradsweep_proto::transport::Token;
use gradsweep_shared::grid::GridLimits;
use tokio::sync::Notify;

use crate::error::{CoordinatorError, Result};
use crate::metrics::CoordinatorMetrics;
use crate::store::{LeasePolicy, Store};

/// Settings of a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// SQLite file.
    pub db_path: PathBuf,
    /// A lease lapses this long after the last heartbeat or report.
    pub lease_ttl: Duration,
    /// How often workers should heartbeat.
    pub heartbeat_interval: Duration,
    /// A run whose lease lapsed this many times is failed.
    pub max_attempts: u32,
    /// Largest grid accepted.
    pub grid_limits: GridLimits,
    /// Token and TLS.
    pub security: ServerSecurity,
    /// Largest size the database may grow to (SQLite `max_page_count`); at
    /// the cap the coordinator stops accepting work, as on a full disk.
    pub max_db_bytes: Option<u64>,
}

/// Who may call the coordinator, and over what.
#[derive(Debug, Clone, Default)]
pub struct ServerSecurity {
    /// Required (as `authorization: Bearer <token>`) on every gRPC call of
    /// both services when set. Health and reflection stay open.
    pub token: Option<Token>,
    /// Serve TLS with this certificate chain and key.
    pub tls: Option<TlsIdentity>,
    /// Allow listening on a non-loopback address without a token.
    pub allow_unauthenticated: bool,
}

/// A PEM certificate chain and its PEM private key.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("cert_pem_bytes", &self.cert_pem.len()).finish_non_exhaustive()
    }
}

impl CoordinatorConfig {
    /// Defaults for a database at `db_path`: 15 s leases, 3 s heartbeats.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            db_path: db_path.into(),
            lease_ttl: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(3),
            max_attempts: 10,
            grid_limits: GridLimits::default(),
            security: ServerSecurity::default(),
            max_db_bytes: None,
        }
    }

    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() || self.lease_ttl < self.heartbeat_interval * 2 {
            return Err(CoordinatorError::InvalidArgument(format!(
                "lease TTL ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.lease_ttl, self.heartbeat_interval
            )));
        }
        if self.max_attempts == 0 {
            return Err(CoordinatorError::InvalidArgument("max attempts must be at least 1".into()));
        }
        Ok(())
    }
}

/// Shared handle to the coordinator's state.
#[derive(Clone)]
pub struct Coordinator {
    store: Arc<Mutex<Store>>,
    work_available: Arc<Notify>,
    config: Arc<CoordinatorConfig>,
    metrics: Arc<CoordinatorMetrics>,
    /// Why the coordinator stopped accepting work (storage full or failing).
    halted: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

impl Coordinator {
    /// Opens the database and reconciles: outstanding leases get a fresh TTL
    /// so their workers can reconnect.
    pub fn open(config: CoordinatorConfig) -> Result<Self> {
        config.validate()?;
        let policy = LeasePolicy { ttl_ms: config.lease_ttl.as_millis() as i64, max_attempts: config.max_attempts };
        let mut store = Store::open(&config.db_path, policy)?;
        if let Some(bytes) = config.max_db_bytes {
            store.limit_size(bytes)?;
        }
        let resumed = store.grant_restart_grace()?;
        tracing::info!(db = %config.db_path.display(), leases_resumed = resumed, "coordinator state opened");
        Ok(Coordinator {
            store: Arc::new(Mutex::new(store)),
            work_available: Arc::new(Notify::new()),
            config: Arc::new(config),
            metrics: Arc::new(CoordinatorMetrics::default()),
            halted: Arc::new(tokio::sync::watch::channel(None).0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The metrics this coordinator updates.
    pub fn metrics(&self) -> &CoordinatorMetrics {
        &self.metrics
    }

    /// The Prometheus exposition: counters plus the store's current counts.
    pub async fn render_metrics(&self) -> Result<String> {
        let counts = self.read_store(|s| s.counts()).await?;
        Ok(self.metrics.render(&counts))
    }

    /// Why the coordinator stopped accepting work, as it changes.
    pub fn halted(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.halted.subscribe()
    }

    /// Runs `f` (which may write) on the store, on the blocking pool. Once
    /// the storage has failed, nothing more is attempted: every call is
    /// refused with the reason, and the state on disk stays as it was at
    /// the last committed transaction.
    pub async fn with_store<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        if let Some(why) = self.halted.borrow().clone() {
            return Err(CoordinatorError::Halted(why));
        }
        let r = self.read_store(f).await;
        if let Err(e) = &r
            && e.is_storage_failure()
        {
            let why = format!(
                "the database {} cannot grow ({e}); free space (or raise --max-db-mib) and restart `gradsweep serve` \
                 on the same file: every acknowledged result is kept",
                self.config.db_path.display()
            );
            tracing::error!(reason = %why, "storage failure: no longer accepting work");
            self.halted.send_replace(Some(why.clone()));
            return Err(CoordinatorError::Halted(why));
        }
        r
    }

    /// Runs a read-only `f` on the store; allowed after a storage failure,
    /// so status and results stay available.
    pub async fn read_store<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = store.lock().map_err(|_| CoordinatorError::Internal("store mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| CoordinatorError::Internal(format!("store task failed: {e}")))?
    }

    /// Wakes every waiting `Acquire`.
    pub fn notify_work(&self) {
        self.work_available.notify_waiters();
    }

    /// Waits until work may be available or `timeout` passes.
    pub async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.work_available.notified()).await;
    }

    /// Expires lapsed leases every quarter TTL until `shutdown` resolves.
    pub async fn run_reaper(self, shutdown: impl std::future::Future<Output = ()>) {
        let period = (self.config.lease_ttl / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if self.halted.borrow().is_some() {
                        continue;
                    }
                    match self.with_store(|s| s.expire_leases()).await {
                        Ok(requeued) if !requeued.is_empty() => {
                            self.metrics.lease_expiries.add(requeued.len() as u64);
                            self.notify_work();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "lease reaper failed"),
                    }
                }
            }
        }
    }
}
