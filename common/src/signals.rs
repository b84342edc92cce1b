//! Waiting for SIGTERM/SIGINT without signal handlers.
//!
//! The signals are blocked with `pthread_sigmask` and collected with
//! `sigtimedwait`, so no handler ever runs and nothing async-signal-unsafe can
//! happen. rustix offers neither call outside its `runtime` feature, so
//! they come from libc (as `startup.rs`'s start-up calls do).
//!
//! The mask is per thread: [`BlockedSignals::block`] must run on the main
//! thread before any other thread exists (agent-shim and timesync have no
//! other threads), otherwise a process-directed signal could be delivered,
//! with its default action, to a thread that does not block it.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Longest single wait; longer deadlines loop. Keeps the timespec far from
/// any overflow in the kernel's timeout arithmetic.
const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

/// A signal that ends the program.
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
    /// pending until [`wait`](Self::wait) or [`wait_until`](Self::wait_until)
    /// collects them.
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
            // Without a deadline `wait_until` returns only with a signal or an
            // error; looping on `None` keeps that promise out of the types.
            if let Some(signal) = self.wait_until(None)? {
                return Ok(signal);
            }
        }
    }

    /// Waits until SIGTERM or SIGINT arrives (`Some`) or `deadline` passes
    /// (`None`); without a deadline waits for a signal only.
    ///
    /// EINTR (a stop/continue, a debugger) restarts the wait with the time
    /// left, so the deadline holds however often the wait is interrupted.
    pub fn wait_until(&self, deadline: Option<Instant>) -> io::Result<Option<Signal>> {
        loop {
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(timespec(left.min(MAX_WAIT)))
                }
            };
            let timeout_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `self.set` is an initialised sigset_t; the siginfo
            // pointer may be null; `timeout_ptr` is null (wait forever) or
            // points to `timeout`, which lives until the call returns.
            let rc = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), timeout_ptr) };
            match rc {
                libc::SIGTERM => return Ok(Some(Signal::Term)),
                libc::SIGINT => return Ok(Some(Signal::Int)),
                -1 => {
                    let err = io::Error::last_os_error();
                    match err.raw_os_error() {
                        // Timed out: loop, the deadline check above returns.
                        Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                        _ => return Err(err),
                    }
                }
                // Only signals in the set are returned; be robust anyway.
                _ => continue,
            }
        }
    }
}

/// A signalfd for the blocked signals, for a poll(2) loop: readable when
/// SIGTERM or SIGINT is pending; [`SignalFd::read`] collects it.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl BlockedSignals {
    /// A non-blocking, close-on-exec signalfd for SIGTERM and SIGINT. The
    /// signals stay blocked, so they are only ever collected through it (or
    /// through [`BlockedSignals::wait`]).
    pub fn signalfd(&self) -> io::Result<SignalFd> {
        // SAFETY: `self.set` is an initialised sigset_t; -1 asks for a new
        // descriptor; the flags are valid. The call touches no other memory.
        let raw = unsafe { libc::signalfd(-1, &self.set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(SignalFd { fd })
    }
}

impl SignalFd {
    /// Collects one pending signal; `None` when none is pending.
    pub fn read(&self) -> io::Result<Option<Signal>> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: `info` is writable memory of `size` bytes; the kernel
            // writes whole signalfd_siginfo records only.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => return Ok(None),
                    _ => return Err(err),
                }
            }
            if usize::try_from(n).ok() != Some(size) {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("short read of {n} bytes from a signalfd"),
                ));
            }
            // SAFETY: the kernel filled all `size` bytes (checked above).
            let info = unsafe { info.assume_init() };
            return Ok(match i32::try_from(info.ssi_signo) {
                Ok(libc::SIGTERM) => Some(Signal::Term),
                Ok(libc::SIGINT) => Some(Signal::Int),
                _ => None,
            });
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(duration.as_secs()).unwrap_or(libc::time_t::MAX),
        // c_long is 64 bits on the targets minos builds for (x86_64, aarch64).
        tv_nsec: duration.subsec_nanos().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each test runs on its own thread; the mask and a thread-directed signal
    // stay with that thread, so the tests cannot disturb each other or the
    // harness.

    #[test]
    fn deadline_passes_without_signal() {
        let signals = BlockedSignals::block().unwrap();
        let start = Instant::now();
        let got = signals
            .wait_until(Some(start + Duration::from_millis(30)))
            .unwrap();
        assert_eq!(got, None);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn past_deadline_returns_at_once() {
        let signals = BlockedSignals::block().unwrap();
        assert_eq!(signals.wait_until(Some(Instant::now())).unwrap(), None);
    }

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
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        raise_in_this_thread(libc::SIGTERM);
        assert_eq!(signals.wait_until(deadline).unwrap(), Some(Signal::Term));
        raise_in_this_thread(libc::SIGINT);
        assert_eq!(signals.wait_until(None).unwrap(), Some(Signal::Int));
    }

    #[test]
    fn wait_collects_sigterm_and_sigint() {
        let signals = BlockedSignals::block().unwrap();
        raise_in_this_thread(libc::SIGTERM);
        assert_eq!(signals.wait().unwrap(), Signal::Term);
        raise_in_this_thread(libc::SIGINT);
        assert_eq!(signals.wait().unwrap(), Signal::Int);
    }

    #[test]
    fn signalfd_collects_pending_signals_and_is_nonblocking() {
        let signals = BlockedSignals::block().unwrap();
        let fd = signals.signalfd().unwrap();
        assert_eq!(fd.read().unwrap(), None, "nothing pending: no wait");
        raise_in_this_thread(libc::SIGTERM);
        let mut poll = [rustix_free_pollfd(&fd)];
        // SAFETY: one valid pollfd, count 1, 5 s timeout.
        assert_eq!(unsafe { libc::poll(poll.as_mut_ptr(), 1, 5000) }, 1);
        assert_eq!(fd.read().unwrap(), Some(Signal::Term));
        raise_in_this_thread(libc::SIGINT);
        assert_eq!(fd.read().unwrap(), Some(Signal::Int));
        assert_eq!(fd.read().unwrap(), None);
    }

    fn rustix_free_pollfd(fd: &SignalFd) -> libc::pollfd {
        libc::pollfd {
            fd: fd.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }
    }

    #[test]
    fn timespec_conversion() {
        let t = timespec(Duration::new(3, 500));
        assert_eq!((t.tv_sec, t.tv_nsec), (3, 500));
        let t = timespec(Duration::MAX);
        assert_eq!(t.tv_sec, libc::time_t::MAX);
    }
}
