//! results.json: the one document every view of a sweep's results is made
//! from — `results --format json`, `results --out`, the report and the
//! live page.

use gradsweep_proto::v1 as pb;
use gradsweep_shared::results::{CellResult, SweepSummary};
use serde::{Deserialize, Serialize};

/// Where results come from: the sweep, its grid file, when it was
/// submitted, and the gradsweep that wrote them (results.json's
/// `provenance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Sweep identifier.
    pub sweep_id: String,
    /// Sweep name.
    pub name: String,
    /// The grid file's name as it was submitted.
    pub grid_file: String,
    /// When the sweep was submitted (ms since the Unix epoch).
    pub submitted_at_ms: i64,
    /// When it ended (ms since the Unix epoch): its last open run ended,
    /// or it was cancelled. `null` while it has work (or when unknown).
    pub ended_at_ms: Option<i64>,
    /// Runs in the sweep, and how many ended each way.
    pub runs: RunCounts,
    /// The version of gradsweep that wrote the file.
    pub gradsweep_version: String,
}

/// A sweep's runs by how they ended (or not yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunCounts {
    /// All runs.
    pub total: u32,
    /// Completed.
    pub completed: u32,
    /// Diverged (a result).
    pub diverged: u32,
    /// Failed (no result; see `gradsweep runs --state failed`).
    pub failed: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Queued or running.
    pub open: u32,
}

impl Provenance {
    /// The provenance of results read alongside `status`.
    pub fn of(status: &pb::SweepStatus) -> Self {
        Provenance {
            sweep_id: status.sweep_id.clone(),
            name: status.name.clone(),
            grid_file: status.grid_file.clone(),
            submitted_at_ms: status.created_at_ms,
            ended_at_ms: (status.ended_at_ms > 0).then_some(status.ended_at_ms),
            runs: RunCounts {
                total: status.runs_total,
                completed: status.runs_completed,
                diverged: status.runs_diverged,
                failed: status.runs_failed,
                cancelled: status.runs_cancelled,
                open: status.runs_queued + status.runs_running,
            },
            gradsweep_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Everything `results --format json` prints:
/// `{ "cells": […], "summary": …, "provenance": … }`, in the order a
/// streamed document can be written (each cell as it arrives, the summary
/// once they all have), so the streamed and the whole document are the
/// same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsDocument {
    /// Every cell's statistics.
    pub cells: Vec<CellResult>,
    /// The sweep-level summary (η/b table, collapse scores).
    pub summary: SweepSummary,
    /// Where the results come from.
    pub provenance: Provenance,
}

impl ResultsDocument {
    /// The document as results.json holds it (pretty-printed).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
