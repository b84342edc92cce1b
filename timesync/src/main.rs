//! timesync: see the library crate and README.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use minos_common::logging::{self, StderrLogger};

static LOGGER: StderrLogger = StderrLogger::new("timesync");

fn main() -> ExitCode {
    logging::init(&LOGGER);
    ExitCode::from(timesync::run(std::env::args_os().skip(1)))
}
