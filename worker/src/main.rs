//! `gradsweep-worker`: executes runs for a gradsweep coordinator.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use gradsweep_proto::transport::ClientSecurity;
use gradsweep_worker::{Shutdown, WorkerConfig, run_worker_with_metrics};
use tokio::signal::unix::{SignalKind, signal};

/// Pulls runs from a gradsweep coordinator, executes them, streams results back.
#[derive(Parser, Debug)]
#[command(name = "gradsweep-worker", version, about)]
struct Args {
    /// Coordinator address (host:port or URL).
    #[arg(long, env = "GRADSWEEP_COORDINATOR", default_value = "127.0.0.1:7878")]
    coordinator: String,
    /// Runs executed at once; each takes one core.
    #[arg(long, env = "GRADSWEEP_SLOTS", default_value_t = 1)]
    slots: u32,
    /// Name shown by `gradsweep workers` (default: host-pid).
    #[arg(long, env = "GRADSWEEP_WORKER_NAME")]
    name: Option<String>,
    /// File holding the shared token (else $GRADSWEEP_TOKEN).
    #[arg(long, env = "GRADSWEEP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Connect with TLS, trusting this CA certificate (PEM).
    #[arg(long, env = "GRADSWEEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Name to verify in the coordinator's certificate (default: its host).
    #[arg(long, env = "GRADSWEEP_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Serve Prometheus metrics (GET /metrics) and /healthz on this address.
    #[arg(long, env = "GRADSWEEP_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Write the bound metrics port to this file once listening.
    #[arg(long, requires = "metrics_listen")]
    metrics_port_file: Option<PathBuf>,
    /// Exit after holding no run for this many seconds (frees a batch
    /// allocation once the grid is done); 0 waits for work forever.
    #[arg(long, env = "GRADSWEEP_IDLE_EXIT_SECS", default_value_t = 0)]
    idle_exit_secs: u64,
    /// On drain or SIGTERM, seconds a run may continue to reach its next
    /// checkpoint before it is stopped (keep below the cluster's kill grace).
    #[arg(long, env = "GRADSWEEP_HANDBACK_GRACE_SECS", default_value_t = 20)]
    handback_grace_secs: u64,
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "GRADSWEEP_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let mut cfg = WorkerConfig::new(args.coordinator, args.slots);
    if let Some(n) = args.name {
        cfg.name = n;
    }
    cfg.handback_grace = std::time::Duration::from_secs(args.handback_grace_secs);
    cfg.idle_exit = (args.idle_exit_secs > 0).then(|| std::time::Duration::from_secs(args.idle_exit_secs));
    cfg.security = ClientSecurity::load(args.token_file.as_deref(), args.tls_ca.as_deref(), args.tls_domain)?;
    let metrics = match &args.metrics_listen {
        Some(a) => Some(gradsweep_proto::metrics::bind(a, args.metrics_port_file.as_deref()).await?),
        None => None,
    };
    let (tx, rx) = tokio::sync::watch::channel(Shutdown::None);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        let _ = tx.send(Shutdown::Terminate);
    });
    run_worker_with_metrics(cfg, metrics, rx).await?;
    Ok(())
}
