//! agent-shim: see the library crate and README.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use agent_shim::logging::{self, Logger};

static LOGGER: Logger = Logger::new("agent-shim");

fn main() -> ExitCode {
    logging::init(&LOGGER);
    ExitCode::from(agent_shim::run(std::env::args_os().skip(1)))
}
