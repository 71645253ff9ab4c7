//! The coordinator's errors and their one mapping to gRPC status codes.

use tonic::{Code, Status};

/// Everything that can go wrong in the coordinator's state machine.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// A grid file failed validation (file:line:col messages).
    #[error("{0}")]
    InvalidGrid(#[from] gradsweep_shared::GridError),
    /// A request is malformed or its payload was rejected; nothing changed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named sweep, run or worker does not exist.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What was looked up.
        kind: &'static str,
        /// Its identifier.
        id: String,
    },
    /// A message from a lease the run no longer has (stale epoch or other
    /// worker). Nothing is merged.
    #[error("stale lease for run `{run_id}`: message epoch {epoch}, {current}")]
    StaleEpoch {
        /// The run.
        run_id: String,
        /// The epoch the message carried.
        epoch: u64,
        /// What the run's current lease is.
        current: String,
    },
    /// A report arrived out of order; the worker must re-send from `expected`.
    #[error("run `{run_id}`: report {got} out of order, expected {expected}")]
    OutOfOrder {
        /// The run.
        run_id: String,
        /// Sequence number received.
        got: u64,
        /// Sequence number the coordinator needs next.
        expected: u64,
    },
    /// A probe pass or shard lease that no longer exists for the caller
    /// (its run lease ended, the shard was granted again, the coordinator
    /// restarted): the caller computes the shard itself, or drops it.
    #[error("{0}")]
    ShardGone(String),
    /// The worker speaks another protocol version.
    #[error("protocol version mismatch: worker speaks {worker}, coordinator speaks {coordinator}")]
    ProtocolMismatch {
        /// Worker's version.
        worker: u32,
        /// Coordinator's version.
        coordinator: u32,
    },
    /// The database file is not usable by this build.
    #[error("database {path}: {message}")]
    Database {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The coordinator stopped accepting work after its storage filled up
    /// (or failed); nothing was written. Restart it once there is room.
    #[error("coordinator stopped accepting work: {0}")]
    Halted(String),
    /// A call without the shared token, or with a wrong one.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// SQLite failed.
    #[error("storage error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An internal invariant broke or a blocking task panicked.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    /// Whether this is the storage refusing to grow (SQLite's "database or
    /// disk is full", or the `--max-db-mib` cap).
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DiskFull
        )
    }

    /// A failure of the storage itself (full, or an I/O error such as a
    /// failed sync): the coordinator halts rather than go on.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            CoordinatorError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
        )
    }
}

/// Result alias for the coordinator.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

/// A blob whose chunks did not add up is a rejected payload.
impl From<gradsweep_proto::AssemblyError> for CoordinatorError {
    fn from(e: gradsweep_proto::AssemblyError) -> Self {
        CoordinatorError::InvalidArgument(e.0)
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        let code = match &e {
            CoordinatorError::InvalidGrid(_) | CoordinatorError::InvalidArgument(_) => Code::InvalidArgument,
            CoordinatorError::NotFound { .. } => Code::NotFound,
            CoordinatorError::StaleEpoch { .. }
            | CoordinatorError::ShardGone(_)
            | CoordinatorError::ProtocolMismatch { .. } => Code::FailedPrecondition,
            CoordinatorError::OutOfOrder { .. } => Code::OutOfRange,
            CoordinatorError::Unauthenticated(_) => Code::Unauthenticated,
            CoordinatorError::Halted(_) => Code::Unavailable,
            CoordinatorError::Database { .. } | CoordinatorError::Sqlite(_) | CoordinatorError::Internal(_) => {
                Code::Internal
            }
        };
        match code {
            Code::Internal => tracing::error!(error = %e, "internal error"),
            // Refusals protect the state; operators should see them.
            Code::FailedPrecondition | Code::InvalidArgument | Code::OutOfRange | Code::Unauthenticated => {
                tracing::warn!(code = ?code, error = %e, "request refused")
            }
            _ => {}
        }
        Status::new(code, e.to_string())
    }
}
