//! agent-shim: see the library crate and README.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use minos_common::logging::{self, StderrLogger};

static LOGGER: StderrLogger = StderrLogger::new("agent-shim");

fn main() -> ExitCode {
    logging::init(&LOGGER);
    ExitCode::from(agent_shim::run(std::env::args_os().skip(1)))
}
