//! What a `#![no_main]` program does in place of Rust's start-up code.
//!
//! Rust's runtime start (`fn main`) installs a stack-overflow handler — an
//! alternate signal stack mapped, SIGSEGV/SIGBUS handlers set, and on glibc
//! the main thread's stack looked up in /proc/self/maps — and checks that
//! descriptors 0-2 are open. In a micro-VM's boot path that is tens of µs
//! and several page faults before `main`; musl builds of Rust programs
//! (kata-agent's) skip the /proc/self/maps part. The programs here that
//! leave it out call [`c_main_prelude`] first thing instead.

/// Fills closed descriptors 0-2 (the kernel starts PID 1 with them closed
/// when it cannot open /dev/console), so that no file opened later lands
/// there and is taken for stdio — with /dev/null, else with "/" (Rust's
/// start-up aborts when /dev/null cannot be opened, which PID 1 cannot
/// afford); and ignores SIGPIPE, as Rust programs do (a write to a closed
/// pipe or socket is an EPIPE error, not death).
pub fn c_main_prelude() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: poll reads and writes the three pollfd structs above.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } > 0 {
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
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}
