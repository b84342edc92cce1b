//! What agent-shim and timesync (and init, for its start-up) share: the
//! stderr logger, waiting for SIGTERM/SIGINT without handlers, the pieces of
//! a command-line parser that do not depend on the program's options,
//! sd_notify, printing an error chain, and what a `#![no_main]` program does
//! in place of Rust's start-up code.
//!
//! Each program keeps what is its own: its options, its argument errors
//! (their variants are the program's vocabulary), its program name.

#![deny(unsafe_code)]

pub mod args;
pub mod cmdline;
pub mod json;
pub mod logging;
pub mod notify;
mod report;
#[allow(unsafe_code)]
pub mod signals;
#[allow(unsafe_code)]
pub mod startup;
pub mod users;

/// The git commit the binaries were built from: `MINOS_COMMIT`, which
/// `cargo xtask build` sets; "unknown" in a plain `cargo build`.
pub const COMMIT: &str = match option_env!("MINOS_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// The release, as `--version` prints it: the workspace's version and the
/// commit (`0.1.0 (commit 1a2b3c4d5e6f)`).
pub fn version() -> String {
    format!("{} (commit {COMMIT})", env!("CARGO_PKG_VERSION"))
}

pub use report::Report;
