//! Flags shared by several commands: where the coordinator is and how to
//! reach it, output formats, extra rank thresholds.

use std::path::PathBuf;

use clap::ValueEnum;
use gradsweep_proto::transport::ClientSecurity;
use gradsweep_shared::stats::RankThresholds;

use crate::client::Remote;

/// How a command prints what it returns.
#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned columns for a terminal.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON document.
    Json,
}

/// The flags of every command that talks to a running coordinator, and
/// only of those: its address, the token and TLS.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Coordinator address (`host:port`, or an http/https URL).
    #[arg(long, env = "GRADSWEEP_COORDINATOR", default_value = "127.0.0.1:7878")]
    pub coordinator: String,
    /// File holding the shared token sent with every call (else $GRADSWEEP_TOKEN).
    #[arg(long, env = "GRADSWEEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Connect with TLS, trusting this CA certificate (PEM).
    #[arg(long, env = "GRADSWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// The name to verify in the coordinator's certificate (default: the address's host).
    #[arg(long, env = "GRADSWEEP_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

impl ConnectArgs {
    /// The coordinator these flags name, with its token and TLS settings
    /// read (an unreadable file is an error naming it).
    pub fn remote(&self) -> anyhow::Result<Remote> {
        Ok(Remote {
            addr: self.coordinator.clone(),
            security: ClientSecurity::load(
                self.token_file.as_deref(),
                self.tls_ca.as_deref(),
                self.tls_domain.clone(),
            )?,
        })
    }
}

/// Extra rank thresholds (`--rank-threshold-rel`, `--rank-threshold-abs`),
/// shared by `results`, `local` and `analyze grads`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ThresholdArgs {
    /// Also count eigenvalues of D above these fractions of λ_max (comma-separated, each in (0, 1]).
    #[arg(long = "rank-threshold-rel", value_delimiter = ',', value_name = "R,...")]
    pub relative: Vec<f64>,
    /// Also count eigenvalues of D above these absolute values (comma-separated, each > 0).
    #[arg(long = "rank-threshold-abs", value_delimiter = ',', value_name = "T,...")]
    pub absolute: Vec<f64>,
}

impl ThresholdArgs {
    /// The validated thresholds.
    pub fn thresholds(&self) -> anyhow::Result<RankThresholds> {
        let th = RankThresholds { relative: self.relative.clone(), absolute: self.absolute.clone() };
        th.validate().map_err(|m| anyhow::anyhow!("{m}"))?;
        Ok(th)
    }
}

/// Where a reading command (`status`, `results`, `runs`) reads from: a
/// running coordinator, or a database file opened read-only.
#[derive(Debug, Clone)]
pub enum Source {
    /// A coordinator, over gRPC.
    Remote(Remote),
    /// A database file, read without a coordinator (`--db FILE`).
    Db(PathBuf),
}

/// The flags of a command that reads a sweep: a coordinator's, or `--db`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReadArgs {
    /// Read this database file (read-only, without a coordinator; one may be running on it) instead of asking a
    /// coordinator.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["coordinator", "token_file", "tls_ca", "tls_domain"])]
    pub db: Option<PathBuf>,
    /// The coordinator to ask otherwise.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl ReadArgs {
    /// Where to read from.
    pub fn source(&self) -> anyhow::Result<Source> {
        match &self.db {
            Some(path) => Ok(Source::Db(path.clone())),
            None => Ok(Source::Remote(self.connect.remote()?)),
        }
    }
}
