//! The states of runs, workers and sweeps, declared once.
//!
//! Each is a Rust enum stored in SQLite as a lowercase word: the word of
//! the wire's enum of the same name ([`gradsweep_proto::states`], where
//! the words are declared once), which is what `status`, `workers` and the
//! metrics show. Reading a word that no
//! variant spells is an error naming the column and the word, never a
//! silent default.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

use gradsweep_proto::v1 as pb;

/// A stored word that names no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{word}` is not a {what} state (expected one of: {expected})")]
pub struct UnknownState {
    /// Which kind of state was read.
    pub what: &'static str,
    /// The word read.
    pub word: String,
    /// The words that would have been accepted.
    pub expected: String,
}

/// Declares a state enum, `ALL`, its word (`as_str`: the wire enum's
/// word, [`gradsweep_proto::states`], declared there once), parsing, the
/// wire conversions and the SQLite conversions. Each variant has the name
/// of the wire enum's.
macro_rules! stored_state {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word stored and shown for this state.
            pub fn as_str(self) -> &'static str {
                self.to_wire().word()
            }

            /// The wire's state.
            pub fn to_wire(self) -> pb::$name {
                match self {
                    $($name::$variant => pb::$name::$variant,)+
                }
            }

            /// The state the wire names (none for `Unspecified` or one of
            /// a newer contract).
            pub fn from_wire(s: pb::$name) -> Option<Self> {
                match s {
                    $(pb::$name::$variant => Some($name::$variant),)+
                    pb::$name::Unspecified => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                pb::$name::from_word(s).ok().and_then($name::from_wire).ok_or_else(|| UnknownState {
                    what: $what,
                    word: s.to_string(),
                    expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e: UnknownState| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

stored_state! {
    /// Where a run is in its life.
    RunState, "run" {
        /// Waiting for a worker.
        Queued,
        /// Leased to a worker.
        Leased,
        /// Finished with results.
        Completed,
        /// Finished with a diverged loss (its results so far are kept).
        Diverged,
        /// Ended with an error.
        Failed,
        /// Cancelled by the user.
        Cancelled,
    }
}

stored_state! {
    /// What the coordinator knows of a worker.
    WorkerState, "worker" {
        /// Heartbeating and taking work.
        Active,
        /// Heartbeating, finishing what it holds, taking nothing new.
        Draining,
        /// Silent for longer than a lease TTL (a heartbeat revives it).
        Lost,
        /// Said goodbye; its leases went back to the queue.
        Left,
    }
}

stored_state! {
    /// Whether a sweep still has work.
    SweepState, "sweep" {
        /// Some run is queued or leased.
        Active,
        /// Every run ended.
        Completed,
        /// Cancelled by the user.
        Cancelled,
    }
}

impl RunState {
    /// Queued or leased: the run still needs a worker's time.
    pub fn is_open(self) -> bool {
        matches!(self, RunState::Queued | RunState::Leased)
    }

    /// Completed or diverged: the run's results count in its cell.
    pub fn has_results(self) -> bool {
        matches!(self, RunState::Completed | RunState::Diverged)
    }
}

impl WorkerState {
    /// Active or lost (a lost worker that calls again is active): the
    /// worker may be granted runs and probe shards.
    pub fn takes_work(self) -> bool {
        matches!(self, WorkerState::Active | WorkerState::Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_word_and_sqlite() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for &s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
            let back: RunState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        for &s in WorkerState::ALL {
            let back: WorkerState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
        for &s in SweepState::ALL {
            let back: SweepState = conn.query_row("SELECT ?1", [s], |r| r.get(0)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn an_unknown_word_is_an_error_that_names_it() {
        let e = "runing".parse::<RunState>().unwrap_err();
        assert_eq!(e.word, "runing");
        assert!(e.to_string().contains("not a run state") && e.to_string().contains("leased"), "{e}");
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let r: rusqlite::Result<WorkerState> = conn.query_row("SELECT 'gone'", [], |r| r.get(0));
        assert!(r.unwrap_err().to_string().contains("`gone` is not a worker state"));
    }

    #[test]
    fn open_and_finished_runs_partition_the_states_that_matter() {
        for &s in RunState::ALL {
            assert!(!(s.is_open() && s.has_results()), "{s}");
        }
        assert!(WorkerState::Lost.takes_work() && !WorkerState::Draining.takes_work());
    }
}
