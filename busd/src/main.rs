//! busd: see the library crate and docs/busd.md.

use std::process::ExitCode;

use minos_common::logging::{self, StderrLogger};

static LOGGER: StderrLogger = StderrLogger::new("busd");

fn main() -> ExitCode {
    logging::init(&LOGGER);
    minos_busd::cli::main(std::env::args_os().skip(1))
}
