//! The words of the wire's state enums (`SweepState`, `RunState`,
//! `WorkerState`): what `status`, `runs`, `workers` and the report print,
//! and what `runs --state` reads. They are the words the coordinator
//! stores (its `store::states`; a coordinator test holds the two to each
//! other).

use crate::v1::{RunState, SweepState, WorkerState};

/// Declares each state's word, and the reverse lookup.
macro_rules! words {
    ($ty:ident, $what:literal { $($variant:ident = $word:literal,)+ }) => {
        impl $ty {
            /// Every state but `Unspecified`, in declaration order.
            pub const KNOWN: &'static [$ty] = &[$($ty::$variant),+];

            /// The state's word (`unspecified` for a message that named none).
            pub fn word(self) -> &'static str {
                match self {
                    $ty::Unspecified => "unspecified",
                    $($ty::$variant => $word,)+
                }
            }

            /// The state a word names, or what the words are.
            pub fn from_word(word: &str) -> Result<Self, String> {
                match word {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(format!(
                        "`{word}` is not a {} state (expected one of: {})",
                        $what,
                        [$($word),+].join(", ")
                    )),
                }
            }
        }
    };
}

words!(SweepState, "sweep" { Active = "active", Completed = "completed", Cancelled = "cancelled", });

words!(RunState, "run" {
    Queued = "queued",
    Leased = "leased",
    Completed = "completed",
    Diverged = "diverged",
    Failed = "failed",
    Cancelled = "cancelled",
});

words!(WorkerState, "worker" { Active = "active", Draining = "draining", Lost = "lost", Left = "left", });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_names_its_state_and_others_are_refused() {
        for &s in RunState::KNOWN {
            assert_eq!(RunState::from_word(s.word()), Ok(s));
        }
        for &s in WorkerState::KNOWN {
            assert_eq!(WorkerState::from_word(s.word()), Ok(s));
        }
        for &s in SweepState::KNOWN {
            assert_eq!(SweepState::from_word(s.word()), Ok(s));
        }
        let e = RunState::from_word("runing").unwrap_err();
        assert!(
            e.contains("`runing` is not a run state")
                && e.contains("queued, leased, completed, diverged, failed, cancelled"),
            "{e}"
        );
        assert!(RunState::from_word("unspecified").is_err());
    }
}
