//! `gradsweep`: the coordinator daemon and every user command.

mod cli;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use gradsweep_coordinator::client::Remote;
use gradsweep_proto::transport::ClientSecurity;

/// Distributed sweeps of SGD hyperparameters that measure the diffusion
/// matrix D(x) and the non-equilibrium drift of the trajectories.
#[derive(Parser, Debug)]
#[command(name = "gradsweep", version, about)]
struct Cli {
    /// Coordinator address for client commands.
    #[arg(long, global = true, env = "GRADSWEEP_COORDINATOR", default_value = "127.0.0.1:7878")]
    coordinator: String,
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GRADSWEEP_LOG_FORMAT")]
    log_format: LogFormat,
    /// File holding the shared token (else $GRADSWEEP_TOKEN). `serve`
    /// requires it on every call; client commands send it.
    #[arg(long, global = true, env = "GRADSWEEP_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Client commands: connect with TLS, trusting this CA (PEM).
    #[arg(long, global = true, env = "GRADSWEEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Client commands: the name to verify in the coordinator's certificate.
    #[arg(long, global = true, env = "GRADSWEEP_TLS_DOMAIN")]
    tls_domain: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the coordinator daemon.
    Serve(cli::serve::ServeArgs),
    /// Validate a grid file and submit it.
    Submit {
        /// The grid file (TOML).
        file: PathBuf,
        /// Create a new sweep even if the same grid was submitted before.
        #[arg(long)]
        new: bool,
        /// Only validate the file; submit nothing.
        #[arg(long)]
        check: bool,
    },
    /// Show one sweep, or all of them.
    Status {
        /// Sweep identifier.
        sweep: Option<String>,
    },
    /// Show a progress bar until the sweep finishes.
    Watch {
        /// Sweep identifier.
        sweep: String,
    },
    /// Print a sweep's per-cell statistics.
    Results {
        /// Sweep identifier.
        sweep: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Also write results.csv and results.json into this folder.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra rank thresholds.
        #[command(flatten)]
        thresholds: cli::ThresholdArgs,
    },
    /// Cancel a sweep's unfinished runs.
    Cancel {
        /// Sweep identifier.
        sweep: String,
    },
    /// List workers with their state, runs and last heartbeat.
    Workers,
    /// Ask a worker to take no new runs and exit when idle.
    Drain {
        /// Worker identifier.
        worker: String,
    },
    /// List the named models with their parameter counts and layer shapes.
    Models,
    /// Statistics of NPY data produced by any framework.
    #[command(subcommand)]
    Analyze(cli::analyze::AnalyzeCommand),
    /// Run a whole sweep on this machine: a coordinator on loopback, N worker
    /// processes, progress, the table, and results.csv / results.json.
    Local(cli::local::LocalArgs),
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    init_tracing(cli.log_format, level);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let remote = || -> anyhow::Result<Remote> {
        Ok(Remote {
            addr: cli.coordinator.clone(),
            security: ClientSecurity::load(cli.token_file.as_deref(), cli.tls_ca.as_deref(), cli.tls_domain.clone())?,
        })
    };
    let addr = &remote;
    match cli.command {
        Command::Serve(args) => cli::serve::run(args, cli.token_file.as_deref()).await,
        Command::Submit { file, new, check } => cli::commands::submit(&addr()?, &file, new, check).await,
        Command::Status { sweep } => cli::commands::status(&addr()?, sweep.as_deref()).await,
        Command::Watch { sweep } => cli::commands::watch(&addr()?, &sweep).await.map(|_| ()),
        Command::Results { sweep, format, out, thresholds } => {
            cli::commands::results(&addr()?, &sweep, format, out.as_deref(), &thresholds.thresholds()?).await
        }
        Command::Cancel { sweep } => cli::commands::cancel(&addr()?, &sweep).await,
        Command::Workers => cli::commands::workers(&addr()?).await,
        Command::Drain { worker } => cli::commands::drain(&addr()?, &worker).await,
        Command::Local(args) => cli::local::run(args).await,
        Command::Models => cli::commands::models(),
        Command::Analyze(cmd) => cli::analyze::run(cmd),
    }
}

pub(crate) use Format as OutputFormat;
