//! A minimal `log` backend: one line per record on stderr, prefixed with the
//! program name, so each program's diagnostics are recognisable on a shared
//! console.
//!
//! The logger is a `static` in the program (`log` wants a `&'static` logger,
//! and a const constructor needs no allocation or lazy state):
//!
//! ```
//! use minos_common::logging::{self, StderrLogger};
//!
//! static LOGGER: StderrLogger = StderrLogger::new("timesync");
//! logging::init(&LOGGER);
//! ```

use std::fmt;
use std::io::Write;

/// Writes info and above to stderr, one line each, prefixed with `program`.
#[derive(Debug)]
pub struct StderrLogger {
    program: &'static str,
}

impl StderrLogger {
    pub const fn new(program: &'static str) -> Self {
        Self { program }
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format_line(self.program, record.level(), record.args());
            // Nowhere left to report a failed write to stderr; dropping the
            // line is the only option.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs `logger`; info and above are printed. A second call (or a
/// logger installed by someone else) is left alone.
pub fn init(logger: &'static StderrLogger) {
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// `PROGRAM: error: MESSAGE`, `PROGRAM: warning: MESSAGE`,
/// `PROGRAM: MESSAGE` (info), newline included.
pub fn format_line(program: &str, level: log::Level, args: &fmt::Arguments<'_>) -> String {
    match level {
        log::Level::Error => format!("{program}: error: {args}\n"),
        log::Level::Warn => format!("{program}: warning: {args}\n"),
        _ => format!("{program}: {args}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_per_level() {
        use log::Level::{Error, Info, Warn};
        let line = |program, level| format_line(program, level, &format_args!("x {}", 1));
        assert_eq!(line("agent-shim", Error), "agent-shim: error: x 1\n");
        assert_eq!(line("agent-shim", Warn), "agent-shim: warning: x 1\n");
        assert_eq!(line("agent-shim", Info), "agent-shim: x 1\n");
        assert_eq!(line("timesync", Error), "timesync: error: x 1\n");
        assert_eq!(line("timesync", Warn), "timesync: warning: x 1\n");
        assert_eq!(line("timesync", Info), "timesync: x 1\n");
    }
}
