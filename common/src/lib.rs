//! What agent-shim and timesync share: the stderr logger, waiting for
//! SIGTERM/SIGINT without handlers, the pieces of a command-line parser that
//! do not depend on the program's options, sd_notify, and printing an error
//! chain.
//!
//! Each program keeps what is its own: its options, its argument errors
//! (their variants are the program's vocabulary), its program name.

#![deny(unsafe_code)]

pub mod args;
pub mod logging;
pub mod notify;
mod report;
#[allow(unsafe_code)]
pub mod signals;
pub mod users;

pub use report::Report;
