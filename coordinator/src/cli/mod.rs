//! Implementations of the `gradsweep` subcommands.
//!
//! This module is the command line's output: the only code that writes to
//! stdout (logs go to stderr through `tracing`).
#![allow(clippy::print_stdout)]

pub mod analyze;
pub mod commands;
pub mod local;
pub mod serve;
