//! agent-shim: see the library crate and README.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    agent_shim::logging::init();
    ExitCode::from(agent_shim::run(std::env::args_os().skip(1)))
}
