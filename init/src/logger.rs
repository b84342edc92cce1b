//! Logging to /dev/kmsg (VM) or stderr (container), from the first instruction.
//!
//! Until /dev/kmsg can be opened (devtmpfs may not be mounted yet, or fds
//! 0-2 may be closed in an initrd), lines are kept in a fixed buffer and
//! flushed once the sink exists. kmsg records carry the kernel's timestamp,
//! so they also appear in dmesg and on the console at the right level.
//!
//! stderr never blocks init: a console pipe nobody drains (a unit flooding
//! it, a runtime that stopped reading) would otherwise freeze PID 1 in a
//! write. Lines go out non-blocking ([`StderrSink`]); what does not fit
//! waits in a bounded queue, written as the pipe drains (the supervisor's
//! loop calls [`drain`]), and lines beyond the queue are counted and
//! reported once it has drained ("N log lines dropped").

use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Longest line written in one kmsg record (the kernel's limit is ~1 KiB).
const LINE_MAX: usize = 976;
/// Lines kept before a sink exists.
const EARLY_LINES: usize = 32;

type Line = heapless::String<LINE_MAX>;

/// `repr(u8)` with `Pending` first: the logger's static (with its 31 KiB
/// `early` buffer) starts all zeros and stays in .bss, out of the file;
/// left to rustc, `Pending` took a niche in `StdioSink` and the static
/// moved to .data.
#[derive(Debug)]
#[repr(u8)]
enum Sink {
    /// Nothing opened yet: keep lines in `early`.
    Pending,
    Kmsg(OwnedFd),
    Stderr(StdioSink),
}

/// The most bytes of log lines waiting for stderr to drain.
const STDERR_QUEUE_MAX: usize = 64 * 1024;

/// init's stderr (its log) or stdout (unit status lines in a container),
/// written without ever blocking.
#[derive(Debug)]
struct StdioSink {
    /// 1 or 2.
    stdio: i32,
    /// A non-blocking descriptor of its own on what `stdio` is (opened
    /// through /proc/self/fd/N: a new open file description, so the units
    /// that share init's stdio keep theirs blocking). Without one (no
    /// /proc yet, a socket), `stdio` itself, written only when poll(2)
    /// says it has room.
    own: Option<OwnedFd>,
    /// Lines that did not fit yet; the first may be partly written
    /// (`sent` bytes of it).
    queue: std::collections::VecDeque<Vec<u8>>,
    queued: usize,
    sent: usize,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: usize,
}

/// What one non-blocking write did.
enum Wrote {
    All,
    Part(usize),
    /// No room now: try again later.
    Later,
    /// The descriptor is gone (closed, EPIPE): the line is lost.
    Lost,
}

impl StdioSink {
    fn new(stdio: i32) -> StdioSink {
        StdioSink {
            stdio,
            own: None,
            queue: std::collections::VecDeque::new(),
            queued: 0,
            sent: 0,
            dropped: 0,
        }
    }

    /// `stdio` borrowed for one call.
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: fds 1 and 2 are init's stdio for the whole process's
        // life (init never closes them); borrowed for one call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.stdio) }
    }

    /// Opens the descriptor of its own (see [`stderr_own_descriptor`]).
    fn open_own(&mut self) {
        use rustix::fs::{Mode, OFlags};
        if self.own.is_some() {
            return;
        }
        let Ok(fd) = rustix::fs::open(
            format!("/proc/self/fd/{}", self.stdio).as_str(),
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
        ) else {
            return;
        };
        let same = match (rustix::fs::fstat(&fd), rustix::fs::fstat(self.fd())) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        };
        if same {
            self.own = Some(fd);
        }
    }

    fn write(&self, bytes: &[u8]) -> Wrote {
        use rustix::event::{PollFd, PollFlags};
        let result = match &self.own {
            Some(fd) => rustix::io::write(fd, bytes),
            None => {
                let fd = self.fd();
                let mut fds = [PollFd::new(&fd, PollFlags::OUT)];
                match rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())) {
                    Ok(1) if fds[0].revents().contains(PollFlags::OUT) => {
                        rustix::io::write(fd, bytes)
                    }
                    Ok(_) => Err(rustix::io::Errno::AGAIN),
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(n) if n >= bytes.len() => Wrote::All,
            Ok(n) => Wrote::Part(n),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Wrote::Later,
            Err(_) => Wrote::Lost,
        }
    }

    fn waiting(&self) -> bool {
        !self.queue.is_empty() || self.dropped > 0
    }

    /// Writes what waits, as far as there is room; reports dropped lines
    /// once everything before them is out.
    fn drain(&mut self) {
        while let Some(front) = self.queue.front() {
            let rest = front.get(self.sent..).unwrap_or_default();
            match self.write(rest) {
                Wrote::All | Wrote::Lost => {
                    self.queued -= front.len();
                    self.sent = 0;
                    self.queue.pop_front();
                }
                Wrote::Part(n) => {
                    self.sent += n;
                    return;
                }
                Wrote::Later => return,
            }
        }
        if self.dropped > 0 {
            let line = match self.stdio {
                1 => format!(
                    "minos-init: {} status lines dropped (stdout full)\n",
                    self.dropped
                ),
                _ => format!(
                    "minos-init: {} log lines dropped (stderr full)\n",
                    self.dropped
                ),
            };
            self.dropped = 0;
            self.push(line.into_bytes());
        }
    }

    /// Writes one line, or queues it behind those waiting.
    fn push(&mut self, rec: Vec<u8>) {
        self.drain();
        if self.queue.is_empty() {
            match self.write(&rec) {
                Wrote::All | Wrote::Lost => return,
                Wrote::Part(n) => self.sent = n,
                Wrote::Later => {}
            }
        }
        if self.queued + rec.len() > STDERR_QUEUE_MAX {
            self.dropped += 1;
            return;
        }
        self.queued += rec.len();
        self.queue.push_back(rec);
    }
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
        Err(_) => Sink::Stderr(StdioSink::new(2)),
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

/// Uses stderr as the sink (container mode: the console is init's own
/// stdio), written without blocking; a descriptor of its own once /proc
/// is there ([`stderr_own_descriptor`]).
pub fn use_stderr() {
    LOGGER.set_sink(Sink::Stderr(StdioSink::new(2)));
    stderr_own_descriptor();
}

/// Opens a non-blocking descriptor of the stderr sink's own on what fd 2
/// is, through /proc/self/fd/2, when it has none yet: a new open file
/// description (`O_APPEND` for a file), so that setting `O_NONBLOCK` on it
/// changes nothing for the units sharing init's stderr. Checked to be the
/// same file as fd 2; where it cannot be opened (no /proc yet, a socket,
/// a pipe without a reader), fd 2 stays, written only when poll(2) says it
/// has room.
pub fn stderr_own_descriptor() {
    if let Ok(mut state) = LOGGER.state.lock() {
        if let Sink::Stderr(sink) = &mut state.sink {
            sink.open_own();
        }
    }
}

/// Unit status lines on stdout (container mode), written as the log is.
static STATUS: Mutex<Option<StdioSink>> = Mutex::new(None);

/// Writes one unit status line to stdout without blocking (queued, or
/// counted when the queue is full, as log lines are).
pub fn status_line(line: &str) {
    if let Ok(mut status) = STATUS.lock() {
        let sink = status.get_or_insert_with(|| {
            let mut sink = StdioSink::new(1);
            sink.open_own();
            sink
        });
        sink.push(line.as_bytes().to_vec());
    }
}

/// Writes the log and status lines waiting for stderr and stdout to
/// drain, as far as there is room; never blocks. Called by the supervisor
/// at every turn of its loop.
pub fn drain() {
    if let Ok(mut state) = LOGGER.state.try_lock() {
        if let Sink::Stderr(sink) = &mut state.sink {
            if sink.waiting() {
                sink.drain();
            }
        }
    }
    if let Ok(mut status) = STATUS.try_lock() {
        if let Some(sink) = status.as_mut().filter(|s| s.waiting()) {
            sink.drain();
        }
    }
}

/// Whether lines wait for stderr or stdout to drain (the supervisor then
/// wakes to retry).
pub fn waiting() -> bool {
    let log = LOGGER
        .state
        .try_lock()
        .is_ok_and(|state| matches!(&state.sink, Sink::Stderr(sink) if sink.waiting()));
    let status = STATUS
        .try_lock()
        .is_ok_and(|s| s.as_ref().is_some_and(StdioSink::waiting));
    log || status
}

/// One line to stderr at once, for the panic hook: never blocks (lost
/// when stderr has no room), never waits for the logger's lock.
pub fn stderr_now(line: &str) {
    if let Ok(mut state) = LOGGER.state.try_lock() {
        if let Sink::Stderr(sink) = &mut state.sink {
            let _ = sink.write(line.as_bytes());
            return;
        }
    }
    let _ = StdioSink::new(2).write(line.as_bytes());
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
    match &mut state.sink {
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
        Sink::Stderr(sink) => {
            // One write(2) per line: a reader of a pipe shared with the
            // units' output must never see a line cut by another process's
            // write between its text and its newline (a line is less than
            // PIPE_BUF: all of it or nothing).
            let mut rec = Vec::with_capacity(line.len() + 1);
            rec.extend_from_slice(line.as_bytes());
            rec.push(b'\n');
            sink.push(rec);
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
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io::Read;

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

    // stdout and stderr that nobody drains.

    /// A sink on a pipe of its own, the pipe full; the read end.
    fn full_pipe() -> (StdioSink, std::fs::File) {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )
        .unwrap();
        let chunk = [b'.'; 4096];
        while rustix::io::write(&write, &chunk).is_ok() {}
        let mut sink = StdioSink::new(2);
        sink.own = Some(write);
        (sink, std::fs::File::from(read))
    }

    fn read_all(pipe: &mut std::fs::File) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).replace('.', "")
    }

    #[test]
    fn a_full_pipe_queues_then_counts_and_reports_once_drained() {
        let (mut sink, mut pipe) = full_pipe();
        rustix::fs::fcntl_setfl(&pipe, rustix::fs::OFlags::NONBLOCK).unwrap();
        let line = |i: usize| format!("line {i:05} {}\n", "x".repeat(90)).into_bytes();
        let n = STDERR_QUEUE_MAX / line(0).len() + 50;
        for i in 0..n {
            sink.push(line(i));
        }
        // Nothing written, nothing lost but what the queue could not hold.
        assert!(sink.queued <= STDERR_QUEUE_MAX);
        assert_eq!(sink.queue.len() + sink.dropped, n);
        let kept = sink.queue.len();
        // The reader comes back: the queue goes out in order, then the count.
        let mut text = read_all(&mut pipe);
        for _ in 0..100 {
            sink.drain();
            text.push_str(&read_all(&mut pipe));
            if !sink.waiting() {
                break;
            }
        }
        assert!(!sink.waiting());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), kept + 1, "{}", lines.len());
        for (i, l) in lines[..kept].iter().enumerate() {
            assert!(l.starts_with(&format!("line {i:05} ")), "{l}");
        }
        assert_eq!(
            lines[kept],
            format!("minos-init: {} log lines dropped (stderr full)", n - kept)
        );
    }

    #[test]
    fn a_line_to_a_pipe_with_room_goes_out_at_once() {
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let mut sink = StdioSink::new(1);
        sink.own = Some(write);
        sink.push(b"hello\n".to_vec());
        assert!(!sink.waiting());
        let mut pipe = std::fs::File::from(read);
        let mut buf = [0u8; 6];
        pipe.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n");
    }
}
