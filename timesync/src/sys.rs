//! The system calls rustix has no wrapper for: the PTP and RTC ioctls,
//! `clock_adjtime`, and the `fork` and `close` of the device opener. Every
//! `unsafe` block of timesync lives in this module, each with its SAFETY
//! argument.
//!
//! Kernel ABI structures are written out here with `#[repr(C)]` exactly as in
//! `linux/ptp_clock.h` and `linux/rtc.h` (checked by const assertions on
//! their sizes and field offsets, and against libc's copies); the PTP
//! request numbers are libc's, and `RTC_RD_TIME`, which libc lacks, is
//! computed with the asm-generic `_IOR` encoding x86_64 uses.
//!
//! `clock_adjtime` is reached only through four narrow functions:
//! [`adjtime_read`] always passes `modes = 0` (a read-only query, which
//! needs no privilege and cannot change the clock: the one tests may call),
//! and [`adjtime_set_frequency`], [`adjtime_step`], [`adjtime_set_status`]
//! each pass exactly their own mode bits. Only `sysclock::SystemClock` calls
//! the last three (the `sources_never_set_the_clock` test in `lib.rs` checks
//! it).

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

use crate::clock::ClockError;

// ---------------------------------------------------------------------------
// ioctl request encoding (include/uapi/asm-generic/ioctl.h)

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < 1 << IOC_SIZEBITS, "ioctl argument too large");
    (dir << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// `_IOR(type, nr, T)`: the kernel writes a `T`.
pub const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

// ---------------------------------------------------------------------------
// linux/ptp_clock.h

/// `PTP_MAX_SAMPLES`: most readings one offset ioctl takes.
pub const PTP_MAX_SAMPLES: usize = 25;

/// `struct ptp_clock_time`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PtpClockTime {
    pub sec: i64,
    pub nsec: u32,
    pub reserved: u32,
}

impl PtpClockTime {
    /// Nanoseconds since the clock's epoch.
    pub fn as_nanos(self) -> i128 {
        i128::from(self.sec) * 1_000_000_000 + i128::from(self.nsec)
    }
}

/// `struct ptp_sys_offset` (`PTP_SYS_OFFSET`): `ts` interleaves system and
/// PHC times, sys, phc, sys, ..., `2 * n_samples + 1` of them.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PtpSysOffset {
    pub n_samples: u32,
    pub rsv: [u32; 3],
    pub ts: [PtpClockTime; 2 * PTP_MAX_SAMPLES + 1],
}

/// `struct ptp_sys_offset_extended` (`PTP_SYS_OFFSET_EXTENDED`): each
/// `ts[i]` is [system before, PHC, system after]; `clockid` chooses the
/// system clock (0, `CLOCK_REALTIME`, is what we ask for; kernels before the
/// field existed required it, then `rsv[0]`, to be zero).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PtpSysOffsetExtended {
    pub n_samples: u32,
    pub clockid: i32,
    pub rsv: [u32; 2],
    pub ts: [[PtpClockTime; 3]; PTP_MAX_SAMPLES],
}

/// `struct ptp_sys_offset_precise` (`PTP_SYS_OFFSET_PRECISE`): a hardware
/// cross-timestamp of the PHC and the system clocks.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PtpSysOffsetPrecise {
    pub device: PtpClockTime,
    pub sys_realtime: PtpClockTime,
    pub sys_monoraw: PtpClockTime,
    pub rsv: [u32; 4],
}

const _: () = {
    assert!(size_of::<PtpClockTime>() == 16);
    assert!(offset_of!(PtpClockTime, nsec) == 8);
    assert!(offset_of!(PtpClockTime, reserved) == 12);
    // 16 + (2 * 25 + 1) * 16
    assert!(size_of::<PtpSysOffset>() == 832);
    assert!(offset_of!(PtpSysOffset, rsv) == 4);
    assert!(offset_of!(PtpSysOffset, ts) == 16);
    // 16 + 25 * 3 * 16
    assert!(size_of::<PtpSysOffsetExtended>() == 1216);
    assert!(offset_of!(PtpSysOffsetExtended, clockid) == 4);
    assert!(offset_of!(PtpSysOffsetExtended, rsv) == 8);
    assert!(offset_of!(PtpSysOffsetExtended, ts) == 16);
    // 3 * 16 + 4 * 4
    assert!(size_of::<PtpSysOffsetPrecise>() == 64);
    assert!(offset_of!(PtpSysOffsetPrecise, sys_realtime) == 16);
    assert!(offset_of!(PtpSysOffsetPrecise, sys_monoraw) == 32);
    assert!(offset_of!(PtpSysOffsetPrecise, rsv) == 48);
};

// The request numbers are libc's (which encodes them from its own
// definitions of the structures); ours must be the same size, which the
// numbers encode, and lay out as the kernel's header (asserted above).
const _: () = {
    assert!(PTP_MAX_SAMPLES == libc::PTP_MAX_SAMPLES as usize);
    assert!(size_of::<PtpClockTime>() == size_of::<libc::ptp_clock_time>());
    assert!(size_of::<PtpSysOffset>() == size_of::<libc::ptp_sys_offset>());
    assert!(size_of::<PtpSysOffsetExtended>() == size_of::<libc::ptp_sys_offset_extended>());
    assert!(size_of::<PtpSysOffsetPrecise>() == size_of::<libc::ptp_sys_offset_precise>());
};

/// `_IOW('=', 5, struct ptp_sys_offset)`.
pub const PTP_SYS_OFFSET: u32 = libc::PTP_SYS_OFFSET as u32;
/// `_IOWR('=', 8, struct ptp_sys_offset_precise)`.
pub const PTP_SYS_OFFSET_PRECISE: u32 = libc::PTP_SYS_OFFSET_PRECISE as u32;
/// `_IOWR('=', 9, struct ptp_sys_offset_extended)`.
pub const PTP_SYS_OFFSET_EXTENDED: u32 = libc::PTP_SYS_OFFSET_EXTENDED as u32;

// ---------------------------------------------------------------------------
// linux/rtc.h

/// `struct rtc_time` (the fields of C's `struct tm` the RTC uses: `tm_year`
/// counts from 1900, `tm_mon` from 0).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcTime {
    pub tm_sec: i32,
    pub tm_min: i32,
    pub tm_hour: i32,
    pub tm_mday: i32,
    pub tm_mon: i32,
    pub tm_year: i32,
    pub tm_wday: i32,
    pub tm_yday: i32,
    pub tm_isdst: i32,
}

const _: () = {
    assert!(size_of::<RtcTime>() == 36);
    assert!(offset_of!(RtcTime, tm_mday) == 12);
    assert!(offset_of!(RtcTime, tm_year) == 20);
    assert!(offset_of!(RtcTime, tm_isdst) == 32);
};

/// `_IOR('p', 0x09, struct rtc_time)` (libc does not define it).
pub const RTC_RD_TIME: u32 = ior(b'p', 0x09, size_of::<RtcTime>());

// ---------------------------------------------------------------------------
// The ioctls

/// ioctl(2) with a pointer argument.
///
/// # Safety
///
/// `request` must be an ioctl whose argument is a `T` the kernel may read
/// and write (and nothing beyond it), and `T` must be plain data for which
/// any bytes the kernel writes are a valid value.
unsafe fn ioctl_ptr<T>(fd: BorrowedFd<'_>, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: `fd` is open for the duration of the borrow; the caller
    // guarantees that `request` reads and writes at most one `T`, which
    // `arg` points to and exclusively borrows.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            request as libc::Ioctl,
            std::ptr::from_mut(arg),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PTP_SYS_OFFSET_PRECISE`: one cross-timestamp.
pub fn ptp_sys_offset_precise(fd: BorrowedFd<'_>) -> io::Result<PtpSysOffsetPrecise> {
    let mut arg = PtpSysOffsetPrecise::default();
    // SAFETY: PTP_SYS_OFFSET_PRECISE's argument is a struct
    // ptp_sys_offset_precise (size checked above and encoded in the
    // request), all-integer plain data.
    unsafe { ioctl_ptr(fd, PTP_SYS_OFFSET_PRECISE, &mut arg)? };
    Ok(arg)
}

/// `PTP_SYS_OFFSET_EXTENDED` with `n_samples` readings (at most
/// [`PTP_MAX_SAMPLES`]) against `CLOCK_REALTIME`.
pub fn ptp_sys_offset_extended(
    fd: BorrowedFd<'_>,
    n_samples: usize,
) -> io::Result<PtpSysOffsetExtended> {
    let mut arg = PtpSysOffsetExtended {
        n_samples: sample_count(n_samples)?,
        clockid: libc::CLOCK_REALTIME,
        rsv: [0; 2],
        ts: [[PtpClockTime::default(); 3]; PTP_MAX_SAMPLES],
    };
    // SAFETY: PTP_SYS_OFFSET_EXTENDED's argument is a struct
    // ptp_sys_offset_extended (size checked above and encoded in the
    // request), all-integer plain data; the kernel fills at most
    // PTP_MAX_SAMPLES entries, the array's length.
    unsafe { ioctl_ptr(fd, PTP_SYS_OFFSET_EXTENDED, &mut arg)? };
    Ok(arg)
}

/// `PTP_SYS_OFFSET` with `n_samples` readings (at most
/// [`PTP_MAX_SAMPLES`]).
pub fn ptp_sys_offset(fd: BorrowedFd<'_>, n_samples: usize) -> io::Result<PtpSysOffset> {
    let mut arg = PtpSysOffset {
        n_samples: sample_count(n_samples)?,
        rsv: [0; 3],
        ts: [PtpClockTime::default(); 2 * PTP_MAX_SAMPLES + 1],
    };
    // SAFETY: PTP_SYS_OFFSET's argument is a struct ptp_sys_offset (size
    // checked above and encoded in the request), all-integer plain data;
    // the kernel fills at most 2 * PTP_MAX_SAMPLES + 1 entries.
    unsafe { ioctl_ptr(fd, PTP_SYS_OFFSET, &mut arg)? };
    Ok(arg)
}

fn sample_count(n_samples: usize) -> io::Result<u32> {
    if n_samples > PTP_MAX_SAMPLES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // At most 25: always fits.
    Ok(n_samples as u32)
}

/// `RTC_RD_TIME`: the RTC's broken-down time.
pub fn rtc_rd_time(fd: BorrowedFd<'_>) -> io::Result<RtcTime> {
    let mut arg = RtcTime::default();
    // SAFETY: RTC_RD_TIME's argument is a struct rtc_time (size checked
    // above and encoded in the request), nine ints.
    unsafe { ioctl_ptr(fd, RTC_RD_TIME, &mut arg)? };
    Ok(arg)
}

// ---------------------------------------------------------------------------
// The device opener's process (crate::opener)

/// `fork(2)`: `Some(child pid)` in the parent, `None` in the child.
/// Called once, before the privilege drop, while timesync has one thread.
pub fn fork() -> io::Result<Option<i32>> {
    // SAFETY: fork has no memory-safety preconditions of its own; in a
    // single-threaded process (timesync's daemon, and the test that calls
    // this with one test thread) no other thread can hold a lock the child
    // would need.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// The calling process gets SIGKILL when its parent dies.
pub fn die_with_parent() -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    // The parent may have died before the call: then we are adopted.
    if rustix::process::getppid().is_none_or(|pid| pid.as_raw_nonzero().get() == 1) {
        return Err(io::Error::other("the daemon is gone"));
    }
    Ok(())
}

/// Closes `fd`, which nothing else in the process owns (the opener's
/// inherited descriptors, listed from /proc/self/fd; the listing's own,
/// closed by then, gives EBADF, which is ignored).
pub fn close_fd(fd: i32) {
    // SAFETY: the opener closes descriptors it inherited and never uses
    // again; no Rust object in the forked child refers to them afterwards
    // (the child only runs the opener's loop and exits).
    unsafe { libc::close(fd) };
}

// ---------------------------------------------------------------------------
// clock_adjtime(CLOCK_REALTIME, ...)

/// What `clock_adjtime` reports about `CLOCK_REALTIME` (a subset of
/// `struct timex`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adjtime {
    /// Return value: the clock state (`TIME_OK`, `TIME_ERROR`, ...).
    pub state: i32,
    /// Frequency offset, scaled ppm (ppm × 2¹⁶); positive runs faster.
    pub freq: i64,
    /// `STA_*` bits.
    pub status: i32,
    /// Maximum error, µs.
    pub maxerror: i64,
    /// Estimated error, µs.
    pub esterror: i64,
    /// Microseconds per tick.
    pub tick: i64,
}

/// The kernel's bound for `maxerror` (`NTP_PHASE_LIMIT`), µs.
pub const MAX_ERROR_LIMIT_US: i64 = 16_000_000;

fn empty_timex() -> libc::timex {
    // SAFETY: struct timex is plain integers (and a timeval of integers);
    // all-zero, with modes 0, is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The one place `clock_adjtime` is called.
fn clock_adjtime_realtime(tx: &mut libc::timex, call: &'static str) -> Result<Adjtime, ClockError> {
    // SAFETY: `tx` is a valid, exclusively borrowed struct timex; the
    // kernel reads and writes only that struct.
    let state = unsafe { libc::clock_adjtime(libc::CLOCK_REALTIME, tx) };
    if state < 0 {
        return Err(clock_error(call, io::Error::last_os_error()));
    }
    Ok(Adjtime {
        state,
        freq: tx.freq,
        status: tx.status,
        maxerror: tx.maxerror,
        esterror: tx.esterror,
        tick: tx.tick,
    })
}

fn clock_error(call: &'static str, err: io::Error) -> ClockError {
    let hint = match err.raw_os_error() {
        Some(libc::EPERM) => " (needs CAP_SYS_TIME)",
        _ => "",
    };
    ClockError {
        call,
        message: format!("{err}{hint}"),
    }
}

/// Reads the kernel's state of `CLOCK_REALTIME`. Always passes `modes = 0`:
/// a query, which changes nothing and needs no privilege.
pub fn adjtime_read() -> Result<Adjtime, ClockError> {
    let mut tx = empty_timex();
    clock_adjtime_realtime(&mut tx, "clock_adjtime(CLOCK_REALTIME, modes=0)")
}

/// Sets the tick length, µs, and the frequency offset, scaled ppm
/// (`ADJ_TICK | ADJ_FREQUENCY`, in one call so the clock never runs with
/// one changed and not the other).
pub fn adjtime_set_frequency(tick_us: i64, scaled_ppm: i64) -> Result<(), ClockError> {
    let mut tx = empty_timex();
    tx.modes = libc::ADJ_TICK | libc::ADJ_FREQUENCY;
    tx.tick = tick_us;
    tx.freq = scaled_ppm;
    clock_adjtime_realtime(
        &mut tx,
        "clock_adjtime(CLOCK_REALTIME, ADJ_TICK|ADJ_FREQUENCY)",
    )
    .map(drop)
}

/// Steps the clock by `offset_ns` nanoseconds (`ADJ_SETOFFSET | ADJ_NANO`).
pub fn adjtime_step(offset_ns: i64) -> Result<(), ClockError> {
    let mut tx = empty_timex();
    tx.modes = libc::ADJ_SETOFFSET | libc::ADJ_NANO;
    // With ADJ_NANO, `time` is seconds and nanoseconds, the nanoseconds in
    // [0, 1e9) also for a negative offset.
    tx.time.tv_sec = offset_ns.div_euclid(1_000_000_000);
    tx.time.tv_usec = offset_ns.rem_euclid(1_000_000_000);
    clock_adjtime_realtime(
        &mut tx,
        "clock_adjtime(CLOCK_REALTIME, ADJ_SETOFFSET|ADJ_NANO)",
    )
    .map(drop)
}

/// Sets the status word and error estimates (`ADJ_STATUS | ADJ_MAXERROR |
/// ADJ_ESTERROR`); errors in µs.
pub fn adjtime_set_status(
    status: i32,
    maxerror_us: i64,
    esterror_us: i64,
) -> Result<(), ClockError> {
    let mut tx = empty_timex();
    tx.modes = libc::ADJ_STATUS | libc::ADJ_MAXERROR | libc::ADJ_ESTERROR;
    tx.status = status;
    tx.maxerror = maxerror_us;
    tx.esterror = esterror_us;
    clock_adjtime_realtime(
        &mut tx,
        "clock_adjtime(CLOCK_REALTIME, ADJ_STATUS|ADJ_MAXERROR|ADJ_ESTERROR)",
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request numbers (libc's for PTP), worked out by hand from the
    /// headers:
    /// dir << 30 | size << 16 | type << 8 | nr, with '=' = 0x3d, 'p' = 0x70,
    /// _IOW = 1, _IOR = 2, _IOWR = 3.
    #[test]
    fn structs_match_libc() {
        assert_eq!(size_of::<PtpClockTime>(), size_of::<libc::ptp_clock_time>());
        assert_eq!(size_of::<PtpSysOffset>(), size_of::<libc::ptp_sys_offset>());
        assert_eq!(
            size_of::<PtpSysOffsetExtended>(),
            size_of::<libc::ptp_sys_offset_extended>()
        );
        assert_eq!(
            size_of::<PtpSysOffsetPrecise>(),
            size_of::<libc::ptp_sys_offset_precise>()
        );
        assert_eq!(
            offset_of!(PtpSysOffsetExtended, ts),
            offset_of!(libc::ptp_sys_offset_extended, ts)
        );
        assert_eq!(
            offset_of!(PtpSysOffsetPrecise, sys_realtime),
            offset_of!(libc::ptp_sys_offset_precise, sys_realtime)
        );
        // struct timex on x86_64: the layout clock_adjtime expects.
        assert_eq!(size_of::<libc::timex>(), 208);
    }

    #[test]
    fn ioctl_numbers_match_the_headers() {
        // _IOW('=', 5, 832 = 0x340)
        assert_eq!(PTP_SYS_OFFSET, 0x4340_3d05);
        // _IOWR('=', 8, 64 = 0x40)
        assert_eq!(PTP_SYS_OFFSET_PRECISE, 0xc040_3d08);
        // _IOWR('=', 9, 1216 = 0x4c0)
        assert_eq!(PTP_SYS_OFFSET_EXTENDED, 0xc4c0_3d09);
        // _IOR('p', 0x09, 36 = 0x24)
        assert_eq!(RTC_RD_TIME, 0x8024_7009);
        // The encoder itself, on well-known requests: RTC_UIE_ON = _IO('p',
        // 0x03) and PTP_CLOCK_GETCAPS = _IOR('=', 1, 80 bytes).
        assert_eq!(ioc(0, b'p', 0x03, 0), 0x7003);
        assert_eq!(ior(b'=', 1, 80), 0x8050_3d01);
    }

    #[test]
    fn ptp_clock_time_nanos() {
        let t = PtpClockTime {
            sec: -2,
            nsec: 500_000_000,
            reserved: 0,
        };
        assert_eq!(t.as_nanos(), -1_500_000_000);
        let t = PtpClockTime {
            sec: 1_700_000_000,
            nsec: 999_999_999,
            reserved: 0,
        };
        assert_eq!(t.as_nanos(), 1_700_000_000_999_999_999);
    }

    #[test]
    fn too_many_samples_is_einval_without_a_syscall() {
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let err = ptp_sys_offset(file.as_fd(), PTP_MAX_SAMPLES + 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let err = ptp_sys_offset_extended(file.as_fd(), 100).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn ioctls_on_a_non_device_fail_with_enotty() {
        let file = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        for err in [
            ptp_sys_offset_precise(file.as_fd()).map(drop).unwrap_err(),
            ptp_sys_offset(file.as_fd(), 5).map(drop).unwrap_err(),
            rtc_rd_time(file.as_fd()).map(drop).unwrap_err(),
        ] {
            assert_eq!(err.raw_os_error(), Some(libc::ENOTTY), "{err}");
        }
    }

    /// The read-only query: no privilege needed, the frequency is within the
    /// kernel's ±500 ppm and the tick near 10000 µs (USER_HZ 100).
    #[test]
    fn adjtime_read_is_sane() {
        let state = adjtime_read().unwrap();
        assert!((0..=5).contains(&state.state), "{state:?}");
        assert!(state.freq.abs() <= 500 << 16, "{state:?}");
        assert!((9000..=11000).contains(&state.tick), "{state:?}");
        assert!(
            (0..=MAX_ERROR_LIMIT_US).contains(&state.maxerror),
            "{state:?}"
        );
    }

    #[test]
    fn clock_errors_name_the_call_and_hint_at_the_capability() {
        let err = clock_error(
            "clock_adjtime(X)",
            io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(err.call, "clock_adjtime(X)");
        assert_eq!(
            err.to_string(),
            "clock_adjtime(X): Operation not permitted (os error 1) (needs CAP_SYS_TIME)"
        );
        let err = clock_error("c", io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(err.to_string(), "c: Invalid argument (os error 22)");
    }
}
