//! The shim's logger: the shared stderr logger (`minos_common::logging`),
//! minus the info, debug and trace records of the `ttrpc` crate, which
//! narrates every server start and stop ("server listen started", ...).
//! Its warnings and errors are kept.

use minos_common::logging::StderrLogger;

#[derive(Debug)]
pub struct Logger {
    inner: StderrLogger,
}

impl Logger {
    pub const fn new(program: &'static str) -> Self {
        Self {
            inner: StderrLogger::new(program),
        }
    }
}

/// True for records the shim prints.
fn wanted(metadata: &log::Metadata<'_>) -> bool {
    let from_ttrpc = metadata.target() == "ttrpc" || metadata.target().starts_with("ttrpc::");
    !from_ttrpc || metadata.level() <= log::Level::Warn
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        wanted(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if wanted(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs `logger`; info and above are printed. A second call (or a
/// logger installed by someone else) is left alone.
pub fn init(logger: &'static Logger) {
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(target: &str, level: log::Level) -> log::Metadata<'_> {
        log::Metadata::builder().target(target).level(level).build()
    }

    #[test]
    fn ttrpc_chatter_is_dropped() {
        assert!(!wanted(&metadata("ttrpc::sync::server", log::Level::Info)));
        assert!(!wanted(&metadata("ttrpc", log::Level::Debug)));
        assert!(wanted(&metadata("ttrpc::sync::server", log::Level::Warn)));
        assert!(wanted(&metadata("ttrpc::sync::server", log::Level::Error)));
        assert!(wanted(&metadata("agent_shim::server", log::Level::Info)));
        assert!(wanted(&metadata("ttrpcx", log::Level::Info)));
    }
}
