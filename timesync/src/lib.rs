//! timesync: the time-sync daemon in chronyd's role (observe-only skeleton).
//!
//! This version reads `/etc/timesync.conf` (chrony syntax, see [`config`]),
//! reports its sources and waits for SIGTERM/SIGINT. It never adjusts any
//! clock: there is no call to `clock_settime`, `adjtimex` or
//! `clock_adjtime` anywhere in the crate.
//!
//! Output, all on stderr through `log`:
//!
//! ```text
//! timesync: warning: /etc/timesync.conf:LINE: MESSAGE    (configuration diagnostics)
//! timesync: error: /etc/timesync.conf:LINE: MESSAGE
//! timesync: started sources=N (observe-only skeleton)
//! timesync: phc /dev/ptp0 present, not read yet (observe-only)   (only if it exists)
//! ```

// Unsafe code lives in `sys` alone (ioctls and clock_adjtime), each block
// with its SAFETY argument.
#![deny(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod discipline;
pub mod ntp;
pub mod phc;
pub mod resolve;
pub mod rtc;
pub mod simclock;
pub mod status;
#[allow(unsafe_code)]
pub mod sys;
pub mod sysclock;

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use cli::{Command, Options};
use config::{Config, Diagnostic, Severity};
use minos_common::signals::BlockedSignals;
pub use minos_common::Report;

/// Exit status for bad usage.
pub const STATUS_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read configuration {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LoadError {
    fn is_not_found(&self) -> bool {
        match self {
            LoadError::Read { source, .. } => source.kind() == io::ErrorKind::NotFound,
        }
    }
}

/// Reads and parses a configuration file. Invalid UTF-8 is replaced (and
/// then shows up as an unknown word in a diagnostic), never fatal.
pub fn load_config(path: &Path) -> Result<(Config, Vec<Diagnostic>), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(config::parse_config(&String::from_utf8_lossy(&bytes)))
}

/// Logs each diagnostic as `PATH:LINE: MESSAGE` at its severity.
pub fn log_diagnostics(path: &Path, diagnostics: &[Diagnostic]) {
    for diagnostic in diagnostics {
        let level = match diagnostic.severity {
            Severity::Warning => log::Level::Warn,
            Severity::Error => log::Level::Error,
        };
        log::log!(
            level,
            "{}:{}: {}",
            path.display(),
            diagnostic.line,
            diagnostic.message
        );
    }
}

/// Counts (errors, warnings).
pub fn count_diagnostics(diagnostics: &[Diagnostic]) -> (usize, usize) {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    (errors, diagnostics.len() - errors)
}

/// The messages printed once the daemon has started, in order: the started
/// marker, then a note for each configured PHC device that exists
/// (`device_exists` is asked for each). A missing device is not reported:
/// Kata's guest has /dev/ptp0 only when the hypervisor offers ptp_kvm.
pub fn startup_messages(config: &Config, device_exists: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut messages = vec![format!(
        "started sources={} (observe-only skeleton)",
        config.source_count()
    )];
    for refclock in &config.refclocks {
        if device_exists(&refclock.device) {
            messages.push(format!(
                "phc {} present, not read yet (observe-only)",
                refclock.device.display()
            ));
        }
    }
    messages
}

/// Runs timesync with the arguments after the program name; returns the exit
/// status.
pub fn run<I>(args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    // First, so that a SIGTERM during start-up still ends the daemon through
    // the normal exit path instead of the default action.
    let signals = match BlockedSignals::block() {
        Ok(signals) => signals,
        Err(err) => {
            log::error!("cannot block SIGTERM and SIGINT: {err}");
            return 1;
        }
    };
    match cli::parse_args(args) {
        Ok(Command::Help) => {
            let mut stdout = io::stdout().lock();
            if let Err(err) = stdout
                .write_all(cli::USAGE.as_bytes())
                .and_then(|()| stdout.flush())
            {
                log::warn!("cannot write to stdout: {err}");
            }
            0
        }
        Ok(Command::Run(options)) if options.check_config => check_config(&options),
        Ok(Command::Run(options)) => daemon(&options, &signals),
        Err(err) => {
            log::error!("{} (see --help)", Report(&err));
            STATUS_USAGE
        }
    }
}

/// `--check-config`: diagnostics on stderr, a summary line on stdout, status
/// 0 without errors and 1 with errors or an unreadable file.
fn check_config(options: &Options) -> u8 {
    let (config, diagnostics) = match load_config(&options.config) {
        Ok(loaded) => loaded,
        Err(err) => {
            log::error!("{}", Report(&err));
            return 1;
        }
    };
    log_diagnostics(&options.config, &diagnostics);
    let (errors, warnings) = count_diagnostics(&diagnostics);
    let mut stdout = io::stdout().lock();
    if let Err(err) = writeln!(
        stdout,
        "timesync: {}: sources={} errors={errors} warnings={warnings}",
        options.config.display(),
        config.source_count()
    )
    .and_then(|()| stdout.flush())
    {
        log::warn!("cannot write to stdout: {err}");
    }
    u8::from(errors > 0)
}

/// The daemon: load the configuration (a missing or unreadable file means
/// no sources, not a crash), report, then wait for SIGTERM/SIGINT.
fn daemon(options: &Options, signals: &BlockedSignals) -> u8 {
    let config = match load_config(&options.config) {
        Ok((config, diagnostics)) => {
            log_diagnostics(&options.config, &diagnostics);
            config
        }
        Err(err) => {
            if err.is_not_found() {
                log::warn!("{}; running without sources", Report(&err));
            } else {
                log::error!("{}; running without sources", Report(&err));
            }
            Config::default()
        }
    };
    for message in startup_messages(&config, Path::exists) {
        log::info!("{message}");
    }
    match signals.wait() {
        Ok(_) => 0,
        Err(err) => {
            log::error!("waiting for signals failed: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_messages_for_kata_config() {
        let (config, _) =
            config::parse_config("refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0\nmakestep 1 -1");
        assert_eq!(
            startup_messages(&config, |device| device == Path::new("/dev/ptp0")),
            [
                "started sources=1 (observe-only skeleton)",
                "phc /dev/ptp0 present, not read yet (observe-only)",
            ]
        );
        assert_eq!(
            startup_messages(&config, |_| false),
            ["started sources=1 (observe-only skeleton)"]
        );
    }

    #[test]
    fn startup_messages_without_sources() {
        assert_eq!(
            startup_messages(&Config::default(), |_| unreachable!()),
            ["started sources=0 (observe-only skeleton)"]
        );
    }

    /// Guard for the clock-setting calls: the system calls that set or
    /// adjust a clock appear only in `sys.rs`, and its setting wrappers only
    /// in `sys.rs` and `sysclock.rs` (`SystemClock`). Any other source file
    /// of timesync, or of the minos-common code it runs, containing one
    /// fails the test.
    #[test]
    fn sources_never_set_the_clock() {
        fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    rust_files(&path, files);
                } else if path.extension().is_some_and(|ext| ext == "rs") {
                    files.push(path);
                }
            }
        }
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        // Built with format! so that this file does not contain them.
        let syscalls = [
            "clock_settime",
            "settimeofday",
            "adjtimex",
            "clock_adjtime",
            "adjtime",
        ]
        .map(|name| format!("{name}("));
        let wrappers = ["set_", "step"].map(|name| format!("adjtime_{name}"));
        let src = crate_dir.join("src");
        let (sys, sysclock) = (src.join("sys.rs"), src.join("sysclock.rs"));
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        rust_files(&crate_dir.join("../common/src"), &mut files);
        assert!(
            files.contains(&sys) && files.contains(&sysclock),
            "{files:?}"
        );
        for path in &files {
            let text = std::fs::read_to_string(path).unwrap();
            if path != &sys {
                for call in &syscalls {
                    assert!(
                        !text.contains(call.as_str()),
                        "{} calls {call}",
                        path.display()
                    );
                }
            }
            if path != &sys && path != &sysclock {
                for wrapper in &wrappers {
                    assert!(
                        !text.contains(wrapper.as_str()),
                        "{} calls {wrapper}",
                        path.display()
                    );
                }
            }
        }
        // The check finds what it looks for where it is allowed.
        let sys_text = std::fs::read_to_string(&sys).unwrap();
        assert!(sys_text.contains(syscalls[3].as_str()));
        assert!(wrappers.iter().all(|w| sys_text.contains(w.as_str())));
    }

    #[test]
    fn load_config_reports_path_and_cause() {
        let path = Path::new("/nonexistent/timesync.conf");
        let err = load_config(path).unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            Report(&err).to_string(),
            "cannot read configuration /nonexistent/timesync.conf: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn load_config_tolerates_invalid_utf8() {
        let path = std::env::temp_dir().join(format!("timesync-test-{}.conf", std::process::id()));
        std::fs::write(&path, b"server \xff\xfe iburst\nmakestep 1 -1\n").unwrap();
        let (config, diagnostics) = load_config(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        assert_eq!(config.ntp_sources.len(), 1);
        assert!(config.makestep.is_some());
    }

    #[test]
    fn counts_errors_and_warnings() {
        let (_, diagnostics) = config::parse_config("bogus\nmakestep x\ndriftfile /x\n");
        assert_eq!(count_diagnostics(&diagnostics), (1, 2));
    }
}
