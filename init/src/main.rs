//! `init` and its other names: `poweroff`, `reboot`, `halt`, `systemctl`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]
// Unit-test builds keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]

/// Boot's allocations from a bump arena (see `minos_init::arena`).
#[global_allocator]
static ALLOCATOR: minos_init::arena::BootAlloc = minos_init::arena::BootAlloc;

/// init's entry, called by the C runtime without Rust's start-up code (8
/// page faults and about 40 µs of guest time before boot's first step):
/// see `minos_common::startup`.
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    minos_common::startup::c_main_prelude();
    // std reads argv from glibc's init_array hook, as with `fn main`. A word
    // that is not UTF-8 (the kernel hands init the words of its command
    // line it does not know) is taken with U+FFFD in place of its bad
    // bytes: `env::args` would panic on it.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(minos_init::cli::main(&args));
}
