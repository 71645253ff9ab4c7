//! The gradsweep worker: pulls runs from a coordinator, executes them on the
//! science core, and streams the results back.
//!
//! A worker registers (with the protocol version), heartbeats on its own
//! task so compute can never starve it, long-polls for runs while it has
//! free slots, and executes each run on tokio's blocking pool. Results flow
//! from the compute thread through a bounded channel to a reporter that
//! numbers every message, keeps it until the coordinator acknowledges it,
//! and re-sends after reconnecting with backoff. A lease the coordinator says
//! is lost stops its run without side effects. On SIGTERM the worker stops
//! its runs and hands their leases back; asked to drain, it finishes its
//! runs, takes no new ones, and exits. An idle worker helps with other
//! workers' probes: it computes shards of their passes.
//!
//! # Layout
//! * [`config`] — [`WorkerConfig`].
//! * [`executor`] — what computes a run: the built-in engine, or another trainer ([`executor::Executor`]).
//! * [`convert`] — run specs from the wire, run events → wire reports (chunked blobs), final figures to the wire; the only wire↔domain code here.
//! * [`runner`] — one run: compute thread + acknowledged, re-sendable report stream.
//! * [`slots`] — the worker's slots; idle ones lent to running probes for their shards.
//! * [`shards`] — probe shards across workers: offering a run's passes, computing other runs' shards.
//! * [`worker`] — registration, heartbeats, acquisition, drain and shutdown.
//! * [`metrics`] — Prometheus metrics (throughput, probe time, runs), served on `--metrics-listen`.

pub mod config;
pub mod convert;
pub mod executor;
pub mod metrics;
pub mod runner;
pub mod shards;
pub mod slots;
pub mod worker;

pub use config::WorkerConfig;
pub use worker::{Shutdown, run_worker, run_worker_with_metrics};
