//! The science core of gradsweep.
//!
//! Everything that defines *what* gradsweep measures lives here, free of
//! networking and async code: data sets, models with exact per-sample
//! gradients, SGD, Frequent Directions sketches of the per-sample-gradient
//! covariance `D(x)`, trajectory statistics, the grid file format, and the
//! merging of results. Every function is deterministic given its seeds, so
//! the coordinator and any worker compute bit-identical results.
//!
//! # Layout
//! * [`rng`] — seeded, splittable random streams (xoshiro256++).
//! * [`linalg`] — matrix products and the symmetric eigensolver.
//! * [`data`] — the bundled digits and the synthetic teacher set; train/test split.
//! * [`nn`] — layers (linear, conv, pooling, BatchNorm, dropout, activations) with per-sample gradients.
//! * [`model`] — networks by name (the paper's four and generic MLPs) with batch and per-sample gradients.
//! * [`sketch`] — the Frequent Directions sketch with its Δ certificate, and the exact path.
//! * [`shards`] — probes split by sample range, computed by free threads and other machines (claims, an
//!   exchange of encoded passes and results), folded in shard order.
//! * [`stats`] — spectral statistics of `D` with certified brackets; seed summaries.
//! * [`trajectory`] — projected trajectories: lagged covariances, area-enclosing rates, cycling
//!   frequencies, MSD, autocorrelation, Welch spectra.
//! * [`epochs`] — the trajectory once per epoch, as the paper records it: per-epoch drift, the weights'
//!   increment spectra, the weight-norm trend, and a phase-randomised surrogate test for spectral peaks.
//! * [`spec`] — the configuration of one run and its final figures.
//! * [`external`] — runs trained by user code (`python:` trainers): position, probes, trajectory, checkpoints.
//! * [`grid`] — the grid file: parse, validate (file:line:col errors), expand.
//! * [`run`] — execute one run (from the start or a checkpoint) and emit its probes, trajectory and checkpoints.
//! * [`checkpoint`] — run state at a segment boundary: encoding, validation, bit-identical resume.
//! * [`json_f64`] — NaN-safe JSON for statistics that may be undefined.
//! * [`analyze`] — statistics of gradients and trajectories from any framework (NPY input).
//! * [`controls`] — OU and double-well processes with known drift, validating the statistics; runnable as the
//!   grid's `control:` models, through workers and merging like networks.
//! * [`npy`] — NumPy `.npy` arrays (read and write).
//! * [`results`] — per-run, per-cell and sweep-level statistics.
//! * [`digest`] — what is kept of a probe once its cell is merged, and the eigenvalues that add thresholds later.
//! * [`scaling`] — does η/b govern a statistic: the collapse score across the grid, with bootstrap intervals.

pub mod analyze;
pub mod checkpoint;
pub mod controls;
pub mod data;
pub mod digest;
pub mod epochs;
pub mod external;
pub mod grid;
pub mod json_f64;
pub mod linalg;
pub mod model;
pub mod nn;
pub mod npy;
pub mod results;
pub mod rng;
pub mod run;
pub mod scaling;
pub mod shards;
pub mod sketch;
pub mod spec;
pub mod stats;
pub mod trajectory;

pub use grid::{GridError, GridLimits, SweepPlan, parse_grid};
pub use run::{ProbeRecord, RunError, RunEvent, execute};
pub use sketch::FdSketch;
pub use spec::{RunFinal, RunSpec};
