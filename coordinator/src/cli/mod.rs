//! Implementations of the `gradsweep` subcommands.
//!
//! This module is the command line's output: the only code that writes to
//! stdout (logs go to stderr through `tracing`).
#![allow(clippy::print_stdout)]

pub mod analyze;
pub mod commands;
pub mod local;
pub mod serve;

use gradsweep_shared::stats::RankThresholds;

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
