//! Implementations of the `gradsweep` subcommands.

pub mod commands;
pub mod local;
pub mod serve;
