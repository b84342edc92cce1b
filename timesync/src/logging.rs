//! A minimal `log` backend: one line per record on stderr, prefixed with the
//! program name, so timesync's messages are recognisable on a shared
//! console. Its markers (`timesync: started ...`) are info records.

use std::fmt;
use std::io::Write;

const PROGRAM: &str = "timesync";

#[derive(Debug)]
struct StderrLogger;

static LOGGER: StderrLogger = StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format_line(record.level(), record.args());
            // Nowhere left to report a failed write to stderr; dropping the
            // line is the only option.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; info and above are printed. A second call (or a
/// logger installed by someone else) is left alone.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// `timesync: error: MESSAGE`, `timesync: warning: MESSAGE`,
/// `timesync: MESSAGE` (info), newline included.
pub fn format_line(level: log::Level, args: &fmt::Arguments<'_>) -> String {
    match level {
        log::Level::Error => format!("{PROGRAM}: error: {args}\n"),
        log::Level::Warn => format!("{PROGRAM}: warning: {args}\n"),
        _ => format!("{PROGRAM}: {args}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format_per_level() {
        let line = |level| format_line(level, &format_args!("x {}", 1));
        assert_eq!(line(log::Level::Error), "timesync: error: x 1\n");
        assert_eq!(line(log::Level::Warn), "timesync: warning: x 1\n");
        assert_eq!(line(log::Level::Info), "timesync: x 1\n");
    }
}
