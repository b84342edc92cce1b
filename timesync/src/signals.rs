//! Waiting for SIGTERM/SIGINT without signal handlers.
//!
//! The signals are blocked with `pthread_sigmask` and collected with
//! `sigwaitinfo`, so no handler ever runs. rustix offers neither call outside
//! its `runtime` feature, so this is the crate's only `unsafe` and its only
//! use of libc. (agent-shim has the same module with a deadline; a shared
//! crate can take both once a third user appears.)
//!
//! The mask is per thread: [`BlockedSignals::block`] must run on the main
//! thread before any other thread exists, otherwise a process-directed
//! signal could be delivered, with its default action, to a thread that does
//! not block it. The planned daemon loop will read the same set through a
//! signalfd next to its sockets and timers.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;

/// A signal that ends the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
}

/// SIGTERM and SIGINT blocked in the calling thread, ready to be waited for.
pub struct BlockedSignals {
    set: libc::sigset_t,
}

impl fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockedSignals(SIGTERM, SIGINT)")
    }
}

impl BlockedSignals {
    /// Blocks SIGTERM and SIGINT in the calling thread. From here on they stay
    /// pending until [`wait`](Self::wait) collects them.
    pub fn block() -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `set.as_mut_ptr()` points to writable memory of the right
        // type; sigemptyset initialises all of it and cannot fail for a valid
        // pointer.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            set.assume_init()
        };
        let mut blocked = Self { set };
        for signal in [libc::SIGTERM, libc::SIGINT] {
            // SAFETY: `blocked.set` is an initialised sigset_t and the signal
            // numbers are valid, so sigaddset only writes inside the set.
            if unsafe { libc::sigaddset(&mut blocked.set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `blocked.set` is initialised; the old mask is not requested
        // (null is allowed). Blocking signals has no memory-safety effect.
        let rc =
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &blocked.set, std::ptr::null_mut()) };
        if rc != 0 {
            // pthread_sigmask returns the error number instead of setting errno.
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(blocked)
    }

    /// Waits until SIGTERM or SIGINT arrives. EINTR (a stop/continue, a
    /// debugger) restarts the wait.
    pub fn wait(&self) -> io::Result<Signal> {
        loop {
            // SAFETY: `self.set` is an initialised sigset_t; the siginfo
            // pointer may be null.
            let rc = unsafe { libc::sigwaitinfo(&self.set, std::ptr::null_mut()) };
            match rc {
                libc::SIGTERM => return Ok(Signal::Term),
                libc::SIGINT => return Ok(Signal::Int),
                -1 => {
                    let err = io::Error::last_os_error();
                    if err.raw_os_error() != Some(libc::EINTR) {
                        return Err(err);
                    }
                }
                // Only signals in the set are returned; be robust anyway.
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on its own thread; the mask and a thread-directed signal
    // stay with that thread, so the tests cannot disturb each other or the
    // harness.

    fn raise_in_this_thread(signal: libc::c_int) {
        // SAFETY: pthread_self() is the calling thread, which blocks `signal`,
        // so the signal stays pending on this thread and no handler or
        // default action runs.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), signal) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn pending_sigterm_and_sigint_are_collected() {
        let signals = BlockedSignals::block().unwrap();
        raise_in_this_thread(libc::SIGTERM);
        assert_eq!(signals.wait().unwrap(), Signal::Term);
        raise_in_this_thread(libc::SIGINT);
        assert_eq!(signals.wait().unwrap(), Signal::Int);
    }
}
