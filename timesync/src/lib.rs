//! timesync: the time-sync daemon in chronyd's role.
//!
//! Sources: PTP hardware clocks (`/dev/ptpN`, [`phc`]), NTP servers
//! ([`ntp`], names through [`resolve`] without glibc's NSS) and, at start,
//! the RTC ([`rtc`]). The [`discipline`] turns the selected source's samples
//! into frequency and step corrections of a [`clock::Clock`]: the real
//! `CLOCK_REALTIME` ([`sysclock::SystemClock`], whose `clock_adjtime` calls
//! live in [`sys`]) or, in observe-only mode, [`sysclock::ObserveClock`],
//! which never touches the kernel. [`daemon`] is the poll(2) loop; [`status`]
//! the file `timesync status` reads. The configuration is chrony's syntax
//! ([`config`]), so Kata's lines work unchanged.
//!
//! Output, all on stderr through `log`:
//!
//! ```text
//! timesync: warning: /etc/timesync.conf:LINE: MESSAGE    (configuration diagnostics)
//! timesync: started sources=N mode=discipline|observe
//! timesync: using PHC /dev/ptp0 (ptp_kvm) through PTP_SYS_OFFSET_PRECISE
//! timesync: selected PHC /dev/ptp0 (ptp_kvm)
//! timesync: stepped the clock by +1.500000123 s (PHC /dev/ptp0 (ptp_kvm))
//! timesync: synchronised to PHC /dev/ptp0 (ptp_kvm) (offset +0.000000120 s)
//! ```

// Unsafe code lives in `sys` alone (ioctls and clock_adjtime), each block
// with its SAFETY argument.
#![deny(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod discipline;
pub mod ntp;
pub mod opener;
pub mod phc;
pub mod privileges;
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

use cli::{Action, Command, Options};
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
        Ok(Command::Version) => {
            println!("timesync {}", minos_common::version());
            0
        }
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
        Ok(Command::Run(options)) => match options.action {
            Action::CheckConfig => check_config(&options),
            Action::Status { json } => show_status(&options.status_file, json),
            Action::Once => run_once(options),
            Action::Run => daemon(options, &signals),
        },
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

/// `timesync status [--json]`: the running daemon's status file, printed.
/// `timesync status`'s exit status when the clock is not synchronised (1:
/// the status cannot be read or written).
pub const STATUS_NOT_SYNCHRONISED: u8 = 2;

/// `timesync status`: 0 synchronised, 2 not, 1 no status to show.
fn show_status(path: &Path, json: bool) -> u8 {
    let status = match status::read(path) {
        Ok(status) => status,
        Err(err) => {
            log::error!(
                "cannot read {}: {err} (is the daemon running?)",
                path.display()
            );
            return 1;
        }
    };
    let text = if json {
        format!("{}\n", status.to_json())
    } else {
        status.to_text(sysclock::realtime_now())
    };
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) if status.synchronised => 0,
        // Scripts wait with `until timesync status >/dev/null; do ...`.
        Ok(()) => STATUS_NOT_SYNCHRONISED,
        Err(err) => {
            log::warn!("cannot write to stdout: {err}");
            1
        }
    }
}

/// Applies the kernel command line's `timesync.*` keys to the options
/// (arguments win) and loads the configuration: a missing or unreadable
/// file means no sources, not a crash.
fn prepare(mut options: Options) -> (Options, Config, Vec<config::NtpSource>) {
    let keys = daemon::read_cmdline(Path::new("/proc/cmdline"))
        .map(|text| daemon::parse_cmdline(&text))
        .unwrap_or_default();
    options.observe |= keys.observe;
    // A container does not own the clock (systemd-timesyncd has
    // ConditionVirtualization=!container for the same reason): measure only.
    if let Some(manager) = std::env::var_os("container").filter(|v| !v.is_empty()) {
        if !options.observe && options.action == Action::Run {
            log::info!(
                "running in a container (container={}): observe-only, the clock is the host's",
                manager.to_string_lossy()
            );
        }
        options.observe = true;
    }
    if let (Some(path), false) = (&keys.config, options.config_given) {
        options.config = path.clone();
    }
    let config = match load_config(&options.config) {
        Ok((config, diagnostics)) => {
            log_diagnostics(&options.config, &diagnostics);
            config
        }
        Err(err) => {
            if err.is_not_found() {
                log::warn!("{}; running without configured sources", Report(&err));
            } else {
                log::error!("{}; running without configured sources", Report(&err));
            }
            Config::default()
        }
    };
    let config = Config {
        max_step: keys.max_step,
        ..config
    };
    (options, config, keys.servers)
}

/// `--once`: status 0 when at least one source was measured.
fn run_once(options: Options) -> u8 {
    let (_, config, extra) = prepare(options);
    let mut stdout = io::stdout().lock();
    let any = daemon::once(&config, &extra, &mut stdout);
    let _ = stdout.flush();
    u8::from(!any)
}

/// The daemon, until SIGTERM/SIGINT.
fn daemon(options: Options, signals: &BlockedSignals) -> u8 {
    let signalfd = match signals.signalfd() {
        Ok(fd) => fd,
        Err(err) => {
            log::error!("signalfd: {err}");
            return 1;
        }
    };
    let (options, config, extra_servers) = prepare(options);
    let clock: Box<dyn clock::Clock> = if options.observe {
        match sysclock::ObserveClock::from_system() {
            Ok(clock) => Box::new(clock),
            Err(err) => {
                log::warn!("{err}; observing from 0 ppm");
                Box::new(sysclock::ObserveClock::new(0.0))
            }
        }
    } else {
        initial_rtc_step();
        Box::new(sysclock::SystemClock::new())
    };
    let mut daemon = daemon::Daemon::new(
        &config,
        clock,
        daemon::DaemonOptions {
            observe: options.observe,
            status_file: options.status_file.clone(),
            notify_socket: minos_common::notify::socket_from_env(),
            extra_servers,
        },
    );
    daemon.open_devices();
    if let Some(user) = &options.user {
        if daemon.phc_missing() && rustix::process::geteuid().is_root() {
            daemon.spawn_opener();
        }
        let status_dir = options.status_file.parent();
        match privileges::drop_to(user, Path::new("/etc/passwd"), status_dir) {
            Ok(()) => log::info!("running as user {user} with CAP_SYS_TIME only"),
            Err(err) => {
                log::error!("{}", Report(&err));
                return 1;
            }
        }
    }
    daemon.run(&signalfd)
}

/// Steps the clock from the RTC when the clock is unset (before 2024) or
/// more than a minute from the RTC; a missing RTC is normal in micro-VMs.
fn initial_rtc_step() {
    let rtc = match rtc::read_rtc(rtc::RTC_DEVICE) {
        Ok(seconds) => Some(seconds),
        Err(err) => {
            log::debug!("{}", Report(&err));
            None
        }
    };
    match rtc::initial_step(sysclock::realtime_now(), rtc, 60.0, rtc::CLOCK_FLOOR) {
        rtc::InitialStep::NotNeeded => {}
        rtc::InitialStep::Step { offset, reason } => {
            let mut clock = sysclock::SystemClock::new();
            match clock::Clock::step(&mut clock, offset) {
                Ok(()) => {
                    log::info!("stepped the clock by {offset:+.3} s from the RTC ({reason:?})")
                }
                Err(err) => log::error!("initial step from the RTC failed: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
