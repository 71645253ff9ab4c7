//! The gradsweep coordinator: the server behind `gradsweep serve`.
//!
//! The coordinator turns a grid file into runs, leases them to workers,
//! fences every report with the lease's epoch and a sequence number, stores
//! everything durably in SQLite, and merges finished runs into per-cell and
//! sweep-level statistics. Handlers are thin: they convert the wire message,
//! send the transition to the store's writer thread (group commit: one
//! commit covers every transition waiting, and none is answered before a
//! sync made it durable) or read on a read-only connection, and map errors to a gRPC
//! status in one place. Merges are heavy (sketch shrinks and
//! eigendecompositions) and run on a merger task with the store unlocked,
//! never inside a worker's request, on two threads of their own below the
//! runtime's priority.
//!
//! The command line (`gradsweep`, in the `gradsweep-cli` crate) starts it
//! through [`serve_with_metrics`]; nothing here parses flags or prints.
//!
//! # Layout
//! * [`error`] — [`CoordinatorError`] and its mapping to `tonic::Status`.
//! * [`lock`] — [`lock::DbLock`]: one coordinator per database file.
//! * [`store`] — the SQLite store, by concern (schema, states, sweeps, leases, reports, merges); every transition
//!   atomic, many per commit.
//! * [`writer`] — [`writer::Writer`]: group commit; one thread owns the write connection and the lock.
//! * [`merge_pool`] — [`merge_pool::MergePool`]: the merges' two threads, below the runtime's priority.
//! * [`shards`] — [`shards::ShardBoard`]: probe shards leased to idle workers, in memory.
//! * [`state`] — [`Coordinator`]: transitions to the writer, reads on read-only connections, work notification,
//!   the lease reaper, the cell merger.
//! * [`convert`] — wire ↔ domain conversions: run specs and results out, reports and final figures in.
//! * [`service`] — the `WorkerService` and `ControlService` handlers.
//! * [`server`] — [`serve`]: both services, health and reflection on a listener until shutdown; token and TLS.
//! * [`metrics`] — the Prometheus metrics the coordinator serves.
//! * [`pages`] — the live pages beside them: the sweeps, and each sweep's report as it runs.
//! * [`offline`] — [`offline::Offline`]: a database read without a coordinator (`--db FILE`), read-only.

pub mod convert;
pub mod error;
pub mod lock;
pub mod merge_pool;
pub mod metrics;
pub mod offline;
pub mod pages;
pub mod server;
pub mod service;
pub mod shards;
pub mod state;
pub mod store;
pub mod writer;

pub use error::CoordinatorError;
pub use server::{serve, serve_with_metrics};
pub use state::{Coordinator, CoordinatorConfig, ServerSecurity, TlsIdentity};
