//! minos init: PID 1 for container micro-VMs (and containers).
//!
//! See docs/init.md for what it does at boot and shutdown, docs/units.md for
//! the unit-file subset, and docs/ARCHITECTURE.md for how the modules fit.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]
// `unsafe` only where docs/ARCHITECTURE.md's table says (checked by xtask's
// docs_check test): these modules allow it, every other denies it.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod arena;
pub mod boot;
pub mod cgroup;
pub mod cli;
pub mod cmdline;
pub mod condition;
pub mod control;
pub mod fstab;
pub mod generators;
pub mod load;
#[allow(unsafe_code)]
pub mod logger;
pub mod mounts;
pub mod names;
pub mod search;
pub mod socket;
#[allow(unsafe_code)]
pub mod spawn;
pub mod supervisor;
#[allow(unsafe_code)]
pub mod sys;
pub mod systemctl;
pub mod timeline;
pub mod unit;
pub use minos_common::users;

/// Where init runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a VM: global setup (sysctls, Ctrl-Alt-Del, devtmpfs).
    Vm,
    /// PID 1 of a container (`container` set in the environment): its own
    /// stdio is the console, /dev is a fresh tmpfs, nothing global changes.
    Container,
}

pub const UNITS_DIR: &str = "/etc/minos/units";
pub const RUN_DIR: &str = "/run/minos";
pub const CONTROL_SOCKET: &str = "/run/minos/control.sock";
pub const NOTIFY_SOCKET: &str = "/run/minos/notify";

/// Formats an error and its causes on one line: `a: b: c`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
