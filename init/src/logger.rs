//! Logging to /dev/kmsg (VM) or stderr (container), from the first instruction.
//!
//! Until /dev/kmsg can be opened (devtmpfs may not be mounted yet, or fds
//! 0-2 may be closed in an initrd), lines are kept in a fixed buffer and
//! flushed once the sink exists. kmsg records carry the kernel's timestamp,
//! so they also appear in dmesg and on the console at the right level.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Longest line written in one kmsg record (the kernel's limit is ~1 KiB).
const LINE_MAX: usize = 976;
/// Lines kept before a sink exists.
const EARLY_LINES: usize = 32;

type Line = heapless::String<LINE_MAX>;

#[derive(Debug)]
enum Sink {
    /// Nothing opened yet: keep lines in `early`.
    Pending,
    Kmsg(OwnedFd),
    Stderr,
}

#[derive(Debug)]
struct State {
    sink: Sink,
    early: heapless::Vec<(Level, Line), EARLY_LINES>,
    dropped: usize,
    /// User-space kmsg lines are still rate-limited (`printk_devkmsg` not
    /// yet `on`, see [`unlimit_kmsg_later`]).
    kmsg_limited: bool,
    /// Lines written to the kmsg sink so far.
    kmsg_lines: u32,
    /// Warnings, info and debug lines wait in `early` (see [`hold_info_lines`]).
    hold: bool,
}

/// The kernel lets 10 lines through one /dev/kmsg descriptor in 5 s while
/// `printk_devkmsg` is `ratelimit` (its default); the rest are dropped.
/// Lines are unlimited from this many on, at the latest.
const KMSG_FREE_LINES: u32 = 8;

/// The process-wide logger (`log` facade).
#[derive(Debug)]
pub struct Logger {
    state: Mutex<State>,
}

static LOGGER: Logger = Logger {
    state: Mutex::new(State {
        sink: Sink::Pending,
        early: heapless::Vec::new(),
        dropped: 0,
        kmsg_limited: false,
        kmsg_lines: 0,
        hold: false,
    }),
};

/// Installs the logger; lines are buffered until [`use_kmsg`] or [`use_stderr`].
pub fn install(level: LevelFilter) {
    // A second install is a no-op; the level still applies.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// Opens /dev/kmsg as the sink; falls back to stderr when it cannot.
pub fn use_kmsg() {
    let sink = match rustix::fs::open(
        "/dev/kmsg",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => Sink::Kmsg(fd),
        Err(_) => Sink::Stderr,
    };
    LOGGER.set_sink(sink);
}

/// Leaves `printk_devkmsg` as the kernel set it for now: it becomes `on`
/// (user-space kmsg lines unlimited, as timeline lines need) when
/// [`unlimit_kmsg`] is called, or before the line that would reach the
/// kernel's limit, whichever comes first. For the boot path: the sysctl
/// write costs about 50 µs of guest time before the agent starts.
pub fn unlimit_kmsg_later() {
    if let Ok(mut state) = LOGGER.state.lock() {
        state.kmsg_limited = true;
    }
}

/// Keeps warnings, info and debug lines (the timeline's among them) in
/// memory until [`release_held_lines`]: each kmsg record costs the boot
/// path several µs of printk before the agent has started (a
/// distribution's unit with keys init ignores warns about each). Errors go
/// out at once, after the lines held so far; each line keeps the time it
/// carries.
pub fn hold_info_lines() {
    if let Ok(mut state) = LOGGER.state.lock() {
        state.hold = true;
    }
}

/// Writes the lines [`hold_info_lines`] kept, and from now on each at once.
/// Also from the panic hook (never blocking: a panic may come from inside
/// the logger).
pub fn release_held_lines() {
    if let Ok(mut state) = LOGGER.state.try_lock() {
        state.hold = false;
        flush_early(&mut state);
    }
}

/// Sets `printk_devkmsg` to `on` now if [`unlimit_kmsg_later`] left it.
pub fn unlimit_kmsg() {
    if let Ok(mut state) = LOGGER.state.lock() {
        unlimit(&mut state);
    }
}

fn unlimit(state: &mut State) {
    if !std::mem::take(&mut state.kmsg_limited) {
        return;
    }
    // The kernel takes "on" only with its newline.
    if let Err(e) = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n") {
        let mut line = Line::new();
        let _ = write!(
            line,
            "minos-init: write /proc/sys/kernel/printk_devkmsg: {e}; the kernel drops kmsg lines beyond 10 in 5 s"
        );
        emit(state, Level::Warn, &line);
    }
}

/// Uses stderr as the sink (container mode: the console is init's own stdio).
pub fn use_stderr() {
    LOGGER.set_sink(Sink::Stderr);
}

/// Writes one line straight to the sink, bypassing the level filter: for
/// boot timeline markers, which benchmarks rely on at any log level.
pub fn marker(args: std::fmt::Arguments<'_>) {
    LOGGER.write_line(Level::Info, args);
}

fn kmsg_prefix(level: Level) -> u8 {
    // Syslog priorities: err 3, warning 4, info 6, debug 7 (user facility is
    // applied by the kernel for records written from user space).
    match level {
        Level::Error => b'3',
        Level::Warn => b'4',
        Level::Info => b'6',
        Level::Debug | Level::Trace => b'7',
    }
}

impl Logger {
    fn set_sink(&self, sink: Sink) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.sink = sink;
        if !state.hold {
            flush_early(&mut state);
        }
    }

    fn write_line(&self, level: Level, args: std::fmt::Arguments<'_>) {
        let mut line = Line::new();
        // Overlong messages are cut at LINE_MAX; `write!` stops at the limit.
        let _ = line.push_str("minos-init: ");
        let _ = write!(line, "{args}");
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let held = state.hold && level >= Level::Warn;
        if matches!(state.sink, Sink::Pending) || held {
            let Err(line) = state.early.push((level, line)) else {
                return;
            };
            if matches!(state.sink, Sink::Pending) {
                state.dropped += 1;
                return;
            }
            // Full: out with the held lines, then this one.
            flush_early(&mut state);
            emit(&mut state, level, &line.1);
            return;
        }
        // An error goes out at once, after what was held.
        flush_early(&mut state);
        emit(&mut state, level, &line);
    }
}

/// Writes the lines kept in `early`, in order.
fn flush_early(state: &mut State) {
    if matches!(state.sink, Sink::Pending) {
        return;
    }
    // Emitted in place and cleared: taken out, the 31 KiB buffer would be
    // copied to the stack, a dozen page faults at boot.
    for i in 0..state.early.len() {
        if let Some((level, line)) = state.early.get(i).cloned() {
            emit(state, level, &line);
        }
    }
    state.early.clear();
    if state.dropped > 0 {
        let mut line = Line::new();
        let _ = write!(
            line,
            "minos-init: {} early log lines dropped",
            state.dropped
        );
        emit(state, Level::Warn, &line);
        state.dropped = 0;
    }
}

fn emit(state: &mut State, level: Level, line: &str) {
    if matches!(state.sink, Sink::Kmsg(_)) {
        state.kmsg_lines = state.kmsg_lines.saturating_add(1);
        if state.kmsg_lines >= KMSG_FREE_LINES {
            unlimit(state);
        }
    }
    match &state.sink {
        Sink::Pending => {}
        Sink::Kmsg(fd) => {
            let mut rec = heapless::Vec::<u8, { LINE_MAX + 8 }>::new();
            let _ = rec.extend_from_slice(&[b'<', kmsg_prefix(level), b'>']);
            let _ = rec.extend_from_slice(line.as_bytes());
            // The newline ends the record: without it the kernel keeps the
            // record open for a continuation, and no reader (dmesg, a
            // journal) sees it until the next record is written.
            let _ = rec.push(b'\n');
            let _ = rustix::io::write(fd, &rec);
        }
        Sink::Stderr => {
            // One write(2) per line: stderr is unbuffered, and a reader of a
            // pipe shared with the units' output must never see a line cut
            // by another process's write between its text and its newline.
            let mut rec = Vec::with_capacity(line.len() + 1);
            rec.extend_from_slice(line.as_bytes());
            rec.push(b'\n');
            let _ = std::io::stderr().lock().write_all(&rec);
        }
    }
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            self.write_line(record.level(), *record.args());
        }
    }

    fn flush(&self) {}
}

/// Parses a log level name as `init.log=` and `systemd.log_level=` take it
/// (syslog names and numbers are accepted too).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.to_ascii_lowercase().as_str() {
        "off" | "none" => LevelFilter::Off,
        "emerg" | "alert" | "crit" | "err" | "error" | "0" | "1" | "2" | "3" => LevelFilter::Error,
        "warning" | "warn" | "4" => LevelFilter::Warn,
        "notice" | "info" | "5" | "6" => LevelFilter::Info,
        "debug" | "7" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kmsg_record_is_one_line_with_its_level_and_newline() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut state = State {
            sink: Sink::Kmsg(w),
            early: heapless::Vec::new(),
            dropped: 0,
            kmsg_limited: false,
            kmsg_lines: 0,
            hold: false,
        };
        emit(&mut state, Level::Warn, "minos-init: a");
        emit(&mut state, Level::Info, "minos-init: b");
        let mut buf = [0u8; 64];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        // A record without its newline stays open for a continuation and
        // readers of the kernel log do not see it until the next one.
        assert_eq!(&buf[..n], b"<4>minos-init: a\n<6>minos-init: b\n");
        assert_eq!(state.kmsg_lines, 2);
    }

    #[test]
    fn held_lines_go_out_in_order_before_an_error_or_at_release() {
        let (r, w) = rustix::pipe::pipe().unwrap();
        let logger = Logger {
            state: Mutex::new(State {
                sink: Sink::Kmsg(w),
                early: heapless::Vec::new(),
                dropped: 0,
                kmsg_limited: false,
                kmsg_lines: 0,
                hold: true,
            }),
        };
        let read = || {
            let mut buf = [0u8; 256];
            rustix::fs::fcntl_setfl(&r, rustix::fs::OFlags::NONBLOCK).unwrap();
            let n = rustix::io::read(&r, &mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        logger.write_line(Level::Info, format_args!("one"));
        logger.write_line(Level::Debug, format_args!("two"));
        logger.write_line(Level::Warn, format_args!("warned"));
        assert_eq!(read(), "");
        logger.write_line(Level::Error, format_args!("three"));
        assert_eq!(
            read(),
            "<6>minos-init: one\n<7>minos-init: two\n<4>minos-init: warned\n<3>minos-init: three\n"
        );
        logger.write_line(Level::Info, format_args!("four"));
        assert_eq!(read(), "");
        {
            let mut state = logger.state.lock().unwrap();
            state.hold = false;
            flush_early(&mut state);
        }
        assert_eq!(read(), "<6>minos-init: four\n");
        // Held lines beyond the buffer are not lost: out in order.
        logger.state.lock().unwrap().hold = true;
        for i in 0..EARLY_LINES + 3 {
            logger.write_line(Level::Info, format_args!("{i}"));
        }
        let mut all = String::new();
        loop {
            let chunk = read();
            if chunk.is_empty() {
                break;
            }
            all.push_str(&chunk);
        }
        let want: String = (0..=EARLY_LINES)
            .map(|i| format!("<6>minos-init: {i}\n"))
            .collect();
        assert_eq!(all, want);
    }

    #[test]
    fn level_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("3"), Some(LevelFilter::Error));
        assert_eq!(parse_level("notice"), Some(LevelFilter::Info));
        assert_eq!(parse_level("loud"), None);
    }
}
