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
#![no_main]

/// init's entry, called by the C runtime without Rust's start-up code: that
/// installs a stack-overflow handler (a signal stack mapped, handlers set)
/// and looks up the main thread's stack, about 40 µs of guest time and 8
/// page faults before boot's first step. What of it matters is done here:
/// descriptors 0-2 are made to exist, and SIGPIPE is ignored as Rust
/// programs have it (a unit starts with the default again, spawn.rs).
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    stdio_open();
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // std reads argv from glibc's init_array hook, as with `fn main`.
    let args: Vec<String> = std::env::args().collect();
    std::process::exit(minos_init::cli::main(&args));
}

/// Fills closed descriptors 0-2 (the kernel starts init with them closed
/// when it cannot open /dev/console), so that no file init opens later
/// lands there and is taken for stdio: with /dev/null, else with "/".
fn stdio_open() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the three pollfd structs above.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } <= 0 {
        return;
    }
    for pfd in fds {
        if pfd.revents & libc::POLLNVAL == 0 {
            continue;
        }
        // Opened in order, each lands on the lowest free descriptor:
        // the closed one.
        // SAFETY: open with NUL-terminated literal paths.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if fd < 0 {
            // SAFETY: as above.
            unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        }
    }
}
