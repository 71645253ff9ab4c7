//! `gradsweep serve`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use gradsweep_coordinator::{CoordinatorConfig, TlsIdentity, serve_with_metrics};
use gradsweep_proto::transport::Token;

/// Options of the coordinator daemon.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "GRADSWEEP_LISTEN", default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// SQLite database file (created if missing; reopen it to resume).
    #[arg(long, env = "GRADSWEEP_DB", default_value = "gradsweep.db")]
    pub db: PathBuf,
    /// Lease time-to-live in milliseconds.
    #[arg(long, env = "GRADSWEEP_LEASE_TTL_MS", default_value_t = 15_000)]
    pub lease_ttl_ms: u64,
    /// Heartbeat interval asked of workers, in milliseconds.
    #[arg(long, env = "GRADSWEEP_HEARTBEAT_MS", default_value_t = 3_000)]
    pub heartbeat_ms: u64,
    /// Largest number of runs one grid may expand to.
    #[arg(long, env = "GRADSWEEP_MAX_RUNS", default_value_t = gradsweep_shared::grid::DEFAULT_MAX_RUNS)]
    pub max_runs: usize,
    /// A run whose lease lapses this many times is failed.
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// Write the bound port to this file once listening.
    #[arg(long)]
    pub port_file: Option<PathBuf>,
    /// Cap the database at this many MiB: past it the coordinator stops
    /// accepting work (as on a full disk) and says why; nothing is lost.
    #[arg(long, env = "GRADSWEEP_MAX_DB_MIB")]
    pub max_db_mib: Option<u64>,
    /// Hold at most this many MiB of probe shard results computed by
    /// helpers for their runs' workers; past it a helper's result is
    /// refused and its shard computed by the run's own worker.
    #[arg(long, env = "GRADSWEEP_MAX_SHARD_RESULTS_MIB", default_value_t = 2048)]
    pub max_shard_results_mib: u64,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "GRADSWEEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "GRADSWEEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// File holding the shared token every call must carry (else
    /// $GRADSWEEP_TOKEN); required to listen off loopback.
    #[arg(long, env = "GRADSWEEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Allow a non-loopback --listen without a token (a private network only).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// Serve Prometheus metrics (GET /metrics) and /healthz on this address.
    #[arg(long, env = "GRADSWEEP_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Write the bound metrics port to this file once listening.
    #[arg(long, requires = "metrics_listen")]
    pub metrics_port_file: Option<PathBuf>,
}

impl ServeArgs {
    /// The library configuration, with the token (from `--token-file` or
    /// `$GRADSWEEP_TOKEN`) and TLS files read.
    pub fn config(&self) -> anyhow::Result<CoordinatorConfig> {
        let mut c = CoordinatorConfig::new(&self.db);
        c.lease_ttl = Duration::from_millis(self.lease_ttl_ms);
        c.heartbeat_interval = Duration::from_millis(self.heartbeat_ms);
        c.max_attempts = self.max_attempts;
        c.grid_limits.max_runs = self.max_runs;
        c.max_db_bytes = self.max_db_mib.map(|m| m * 1024 * 1024);
        c.max_shard_result_bytes = (self.max_shard_results_mib * 1024 * 1024) as usize;
        c.security.token = Token::load(self.token_file.as_deref())?;
        c.security.allow_unauthenticated = self.insecure_no_auth;
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let read = |p: &Path, what: &str| {
                std::fs::read(p).with_context(|| format!("cannot read TLS {what} `{}`", p.display()))
            };
            c.security.tls = Some(TlsIdentity { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? });
        }
        Ok(c)
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    if let Some(f) = &args.port_file {
        std::fs::write(f, port.to_string()).with_context(|| format!("cannot write port file {}", f.display()))?;
    }
    let metrics = match &args.metrics_listen {
        Some(a) => Some(gradsweep_proto::metrics::bind(a, args.metrics_port_file.as_deref()).await?),
        None => None,
    };
    serve_with_metrics(config, listener, metrics, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
