//! The `gradsweep` command: what a user types, and what it prints.
//!
//! Client commands talk to a running coordinator over gRPC (`submit`,
//! `status`, `watch`, `results`, `runs`, `cancel`, `workers`, `drain`); `serve`
//! starts one (the server itself is the `gradsweep-coordinator` crate);
//! `local` runs a whole sweep on this machine; `analyze` and `models` work
//! offline. Connection flags belong to the commands that connect
//! ([`args::ConnectArgs`]), never to the others.
//!
//! This crate is the command line's output: the only code of gradsweep that
//! writes to stdout (logs go to stderr through `tracing`).
//!
//! # Layout
//! * [`args`] — flags shared by several commands: connection, output format, rank thresholds.
//! * [`client`] — connecting to a coordinator, and the one place a gRPC status becomes a client error.
//! * [`commands`] — the client commands.
//! * [`convert`] — results requests to the wire, typed cells and summary from it: the client's one wire↔domain module.
//! * [`local`] — `gradsweep local`: a coordinator on loopback, worker processes, the results.
//! * [`serve`] — `gradsweep serve`: the coordinator daemon's flags and signals.
//! * [`analyze`] — `gradsweep analyze`: statistics of NPY files from any framework.
//! * [`report`] — results as a table, CSV or JSON.
//! * [`runs`] — `gradsweep runs`, and the failures `status`, `watch`, `local` and `results` show.
#![allow(clippy::print_stdout)]

pub mod analyze;
pub mod args;
pub mod client;
pub mod commands;
pub mod convert;
pub mod local;
pub mod report;
pub mod runs;
pub mod serve;

/// `println!` that hands back the write's error instead of panicking, so a
/// closed pipe (`gradsweep … | head`) ends the command quietly
/// ([`closed_pipe`]) rather than with a panic.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `print!` that hands back the write's error: see [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Whether `e` comes from writing to a pipe whose reader has gone: not a
/// failure of the command, so it exits quietly.
pub fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<std::io::Error>()).any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
