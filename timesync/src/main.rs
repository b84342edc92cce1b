//! timesync: see the library crate and README.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    timesync::logging::init();
    ExitCode::from(timesync::run(std::env::args_os().skip(1)))
}
