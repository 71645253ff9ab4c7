//! `gradsweep`: the coordinator daemon and every user command.

use clap::{Parser, Subcommand, ValueEnum};
use gradsweep_cli::args::{ConnectArgs, OutputFormat, ReadArgs, ThresholdArgs};
use gradsweep_cli::{analyze, commands, local, runs, serve};

/// Distributed sweeps of SGD hyperparameters that measure the diffusion
/// matrix D(x) and the non-equilibrium drift of the trajectories.
#[derive(Parser, Debug)]
#[command(name = "gradsweep", version, about)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GRADSWEEP_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the coordinator daemon.
    Serve(serve::ServeArgs),
    /// Validate a grid file and submit it.
    Submit {
        /// The grid file (TOML).
        file: std::path::PathBuf,
        /// Create a new sweep even if the same grid was submitted before.
        #[arg(long)]
        new: bool,
        /// Only validate the file; submit nothing (needs no coordinator).
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show one sweep, or all of them, with failed runs grouped by reason.
    Status {
        /// Sweep identifier.
        sweep: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Show a progress bar until the sweep finishes (exit code 3 if runs failed).
    Watch {
        /// Sweep identifier.
        sweep: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Print a sweep's per-cell statistics.
    Results {
        /// Sweep identifier.
        sweep: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Also write every export into this folder: results.csv and .json, runs.csv, epochs.csv, spectra/, and the
        /// report (report.html, figures/).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Extra rank thresholds.
        #[command(flatten)]
        thresholds: ThresholdArgs,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Write a sweep's report — report.html and figures/*.svg — with every other export (results.json, the CSVs,
    /// the spectra) into a folder.
    Report {
        /// Sweep identifier.
        sweep: String,
        /// The folder to write into (created if missing).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Cells that get a section of figures (comma-separated; default: every cell up to 48, else 48 spread over
        /// η/b).
        #[arg(long, value_delimiter = ',', value_name = "CELL,...")]
        cells: Vec<u32>,
        #[command(flatten)]
        thresholds: ThresholdArgs,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// List a sweep's runs: axes, seed, state, attempts, worker, duration, error.
    Runs {
        /// Sweep identifier.
        sweep: String,
        /// Only runs in these states (comma-separated: queued, leased, completed, failed, diverged, cancelled).
        #[arg(long, value_delimiter = ',', value_name = "STATE,...", value_parser = gradsweep_proto::v1::RunState::from_word)]
        state: Vec<gradsweep_proto::v1::RunState>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Cancel a sweep's unfinished runs.
    Cancel {
        /// Sweep identifier.
        sweep: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List workers with their state, runs and last heartbeat.
    Workers {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Ask a worker to take no new runs and exit when idle.
    Drain {
        /// The worker's identifier or its name, as `gradsweep workers` lists them.
        worker: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List the named models with their parameter counts and layer shapes.
    Models,
    /// List every grid key: section, values, default and meaning.
    Keys {
        /// Print docs/grid.md (Markdown) instead of a table.
        #[arg(long)]
        markdown: bool,
    },
    /// Statistics of NPY data produced by any framework.
    #[command(subcommand)]
    Analyze(analyze::AnalyzeCommand),
    /// Run a whole sweep on this machine: a coordinator on loopback, N worker
    /// processes, progress, the table, and results.csv / results.json.
    Local(local::LocalArgs),
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
        // The reader went away (`gradsweep … | head`): nothing to say.
        Err(e) if gradsweep_cli::closed_pipe(&e) => std::process::ExitCode::SUCCESS,
        // The sweep ended, with failed runs: say why, with its own code.
        Err(e) if e.downcast_ref::<runs::RunsFailed>().is_some() => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(runs::EXIT_RUNS_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Submit { file, new, check, connect } => commands::submit(&connect, &file, new, check).await,
        Command::Status { sweep, format, read } => commands::status(&read.source()?, sweep.as_deref(), format).await,
        Command::Watch { sweep, connect } => {
            let status = commands::watch(&connect.remote()?, &sweep).await?;
            runs::require_no_failures(&status)
        }
        Command::Results { sweep, format, out, thresholds, read } => {
            commands::results(&read.source()?, &sweep, format, out.as_deref(), &thresholds.thresholds()?).await
        }
        Command::Report { sweep, out, cells, thresholds, read } => {
            let cells = (!cells.is_empty()).then_some(cells.as_slice());
            commands::report(&read.source()?, &sweep, &out, cells, &thresholds.thresholds()?).await
        }
        Command::Runs { sweep, state, format, read } => runs::runs(&read.source()?, &sweep, &state, format).await,
        Command::Cancel { sweep, connect } => commands::cancel(&connect.remote()?, &sweep).await,
        Command::Workers { format, connect } => commands::workers(&connect.remote()?, format).await,
        Command::Drain { worker, connect } => commands::drain(&connect.remote()?, &worker).await,
        Command::Local(args) => local::run(args).await,
        Command::Models => commands::models(),
        Command::Keys { markdown } => commands::keys(markdown),
        Command::Analyze(cmd) => analyze::run(cmd),
    }
}
