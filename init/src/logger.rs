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
}

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
        let early = std::mem::take(&mut state.early);
        for (level, line) in &early {
            emit(&state.sink, *level, line);
        }
        if state.dropped > 0 {
            let mut line = Line::new();
            let _ = write!(
                line,
                "minos-init: {} early log lines dropped",
                state.dropped
            );
            emit(&state.sink, Level::Warn, &line);
            state.dropped = 0;
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
        if matches!(state.sink, Sink::Pending) {
            if state.early.push((level, line)).is_err() {
                state.dropped += 1;
            }
            return;
        }
        emit(&state.sink, level, &line);
    }
}

fn emit(sink: &Sink, level: Level, line: &str) {
    match sink {
        Sink::Pending => {}
        Sink::Kmsg(fd) => {
            let mut rec = heapless::Vec::<u8, { LINE_MAX + 8 }>::new();
            let _ = rec.extend_from_slice(&[b'<', kmsg_prefix(level), b'>']);
            let _ = rec.extend_from_slice(line.as_bytes());
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
    fn level_names() {
        assert_eq!(parse_level("debug"), Some(LevelFilter::Debug));
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("3"), Some(LevelFilter::Error));
        assert_eq!(parse_level("notice"), Some(LevelFilter::Info));
        assert_eq!(parse_level("loud"), None);
    }
}
