//! agent-shim: see the library crate and README.md.

#![deny(unsafe_code)]
// Unit-test builds keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use agent_shim::logging::{self, Logger};

#[cfg(not(test))]
static LOGGER: Logger = Logger::new("agent-shim");

/// The entry, called by the C runtime without Rust's start-up code, as
/// kata-agent's musl build starts: glibc's Rust start-up reads
/// /proc/self/maps to find the main thread's stack, which musl's skips — in
/// a benchmark, about 50 µs that the real agent does not spend, and only
/// when /proc is mounted (under an init, not as PID 1). See
/// `minos_common::startup`.
#[allow(unsafe_code)]
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    minos_common::startup::c_main_prelude();
    logging::init(&LOGGER);
    // std reads argv from glibc's init_array hook, as with `fn main`.
    let code = agent_shim::run(std::env::args_os().skip(1));
    // As returning from `fn main` would: flush stdout, then exit.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    libc::c_int::from(code)
}
