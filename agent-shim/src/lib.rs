//! agent-shim: a small stand-in for kata-agent, for tests and boot benchmarks.
//!
//! Lifecycle as kata-agent's under kata-agent.service: start, announce
//! readiness, run until SIGTERM/SIGINT. Stdout carries the markers tests wait
//! for (one line each, flushed at once):
//!
//! ```text
//! agent-shim: self-check pid=N nofile=SOFT/HARD oom_score_adj=N stdin=T stdout=T
//! agent-shim: ready boottime_us=N
//! agent-shim: mem_used_kib=N|unknown
//! agent-shim: exiting status=N reason=sigterm|sigint|exit-after|fail-after|self-check|error
//! ```
//!
//! Settings come from the arguments and, as kata-agent's do, from `agent.*`
//! keys on the kernel command line (see [`cmdline`]); arguments win.
//! Diagnostics go to stderr through `log`.

#![forbid(unsafe_code)]

pub mod args;
pub mod cmdline;
pub mod duration;
pub mod memory;
pub mod notify;
pub mod selfcheck;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use args::{Command, Options, Timer};
use memory::MemLine;
use minos_common::signals::{BlockedSignals, Signal};
pub use minos_common::Report;
use selfcheck::SelfCheck;

/// Exit status for bad usage and a failed `--strict` self-check.
pub const STATUS_USAGE: u8 = 2;

/// Why the shim ends; decides the exit status and the `reason=` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Sigterm,
    Sigint,
    ExitAfter,
    FailAfter,
    SelfCheckFailed,
    Error,
}

impl Exit {
    pub fn status(self) -> u8 {
        match self {
            Exit::Sigterm | Exit::Sigint | Exit::ExitAfter => 0,
            Exit::FailAfter | Exit::Error => 1,
            Exit::SelfCheckFailed => STATUS_USAGE,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Exit::Sigterm => "sigterm",
            Exit::Sigint => "sigint",
            Exit::ExitAfter => "exit-after",
            Exit::FailAfter => "fail-after",
            Exit::SelfCheckFailed => "self-check",
            Exit::Error => "error",
        }
    }
}

/// What the shim reads from its surroundings, as parameters so tests can
/// substitute them.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Normally `/proc/self`.
    pub proc_self: PathBuf,
    /// The procfs root for `meminfo` and `zoneinfo`, normally `/proc`.
    pub proc: PathBuf,
    /// The kernel command line, normally `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// The value of `NOTIFY_SOCKET`, if set.
    pub notify_socket: Option<OsString>,
}

impl Environment {
    pub fn from_process() -> Self {
        Self {
            proc_self: PathBuf::from("/proc/self"),
            proc: PathBuf::from("/proc"),
            cmdline: PathBuf::from(cmdline::PROC_CMDLINE),
            notify_socket: notify::socket_from_env(),
        }
    }
}

/// Runs the shim with the arguments after the program name; returns the
/// exit status.
pub fn run<I>(args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    let started = Instant::now();
    // First, so that a SIGTERM that comes early still ends the shim through
    // the normal exit path instead of the default action.
    let signals = match BlockedSignals::block() {
        Ok(signals) => signals,
        Err(err) => {
            log::error!("cannot block SIGTERM and SIGINT: {err}");
            return Exit::Error.status();
        }
    };
    let mut stdout = io::stdout().lock();
    match args::parse_args(args) {
        Ok(Command::Help) => {
            emit(&mut stdout, args::USAGE.trim_end());
            0
        }
        Ok(Command::Run(options)) => {
            let env = Environment::from_process();
            serve(&options, &env, &signals, started, &mut stdout).status()
        }
        Err(err) => {
            log::error!("{} (see --help)", Report(&err));
            STATUS_USAGE
        }
    }
}

/// The shim's life after argument parsing: kernel command line, self-check,
/// readiness, memory, wait, exit marker. `started` is when the process
/// began, the origin of the timers.
pub fn serve<W: Write>(
    options: &Options,
    env: &Environment,
    signals: &BlockedSignals,
    started: Instant,
    out: &mut W,
) -> Exit {
    let exit = serve_until_exit(options, env, signals, started, out);
    emit(
        out,
        format_args!(
            "agent-shim: exiting status={} reason={}",
            exit.status(),
            exit.reason()
        ),
    );
    exit
}

fn serve_until_exit<W: Write>(
    options: &Options,
    env: &Environment,
    signals: &BlockedSignals,
    started: Instant,
    out: &mut W,
) -> Exit {
    let (kernel, errors) = cmdline::read_cmdline(&env.cmdline);
    for err in &errors {
        log::warn!("{}", Report(err));
    }
    let options = &cmdline::apply(*options, &kernel);

    if options.self_check {
        let check = SelfCheck::gather(&env.proc_self);
        for err in check.errors() {
            log::warn!("self-check: {}", Report(err));
        }
        emit(out, &check);
        if options.strict {
            let violations = check.strict_violations();
            for violation in &violations {
                log::error!("strict self-check: {violation}");
            }
            if !violations.is_empty() {
                return Exit::SelfCheckFailed;
            }
        }
    }

    emit(
        out,
        format_args!("agent-shim: ready boottime_us={}", boottime_us()),
    );
    // Measured before notifying, while init is still waiting for us.
    let used = memory::read_mem_used_kib(&env.proc)
        .inspect_err(|err| log::warn!("memory: {}", Report(err)))
        .ok();
    emit(out, MemLine(used));
    if let Some(socket) = &env.notify_socket {
        if let Err(err) = notify::notify(socket, "READY=1") {
            log::error!("{}", Report(&err));
        }
    }

    let deadline = options.timer.map(|timer| match timer {
        Timer::ExitAfter(after) | Timer::FailAfter(after) => started + after,
    });
    match signals.wait_until(deadline) {
        Ok(Some(Signal::Term)) => Exit::Sigterm,
        Ok(Some(Signal::Int)) => Exit::Sigint,
        // The deadline passed; without a timer the wait only ends on a signal.
        Ok(None) => match options.timer {
            Some(Timer::FailAfter(_)) => Exit::FailAfter,
            _ => Exit::ExitAfter,
        },
        Err(err) => {
            log::error!("waiting for signals failed: {err}");
            Exit::Error
        }
    }
}

/// Writes one marker line and flushes it, so a reader sees it at once. A
/// closed or broken stdout is reported, not fatal.
fn emit<W: Write>(out: &mut W, line: impl fmt::Display) {
    if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        log::warn!("cannot write to stdout: {err}");
    }
}

/// CLOCK_BOOTTIME in microseconds: the time since the kernel started,
/// comparable with kmsg timestamps and across runs under QEMU `-icount`.
pub fn boottime_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1_000).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The real /proc, but no kernel command line: the host's must not
    /// change what the tests see.
    fn env() -> Environment {
        Environment {
            proc_self: PathBuf::from("/proc/self"),
            proc: PathBuf::from("/proc"),
            cmdline: PathBuf::from("/nonexistent/agent-shim/cmdline"),
            notify_socket: None,
        }
    }

    /// A temporary file holding a kernel command line.
    struct CmdlineFile(PathBuf);

    impl CmdlineFile {
        fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "agent-shim-lib-cmdline-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for CmdlineFile {
        fn drop(&mut self) {
            // Best effort: a leftover temp file must not fail a test.
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn serve_to_string(options: Options, env: &Environment) -> (Exit, String) {
        let signals = BlockedSignals::block().unwrap();
        let mut out = Vec::new();
        let exit = serve(&options, env, &signals, Instant::now(), &mut out);
        (exit, String::from_utf8(out).unwrap())
    }

    fn ready_value(line: &str) -> u64 {
        line.strip_prefix("agent-shim: ready boottime_us=")
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn exit_after_prints_ready_then_exiting() {
        let before = boottime_us();
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::from_millis(20))),
            ..Options::default()
        };
        let start = Instant::now();
        let (exit, out) = serve_to_string(options, &env());
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert_eq!(exit, Exit::ExitAfter);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let ready = ready_value(lines[0]);
        assert!(ready >= before && ready <= boottime_us());
        assert_eq!(lines[2], "agent-shim: exiting status=0 reason=exit-after");
    }

    #[test]
    fn fail_after_exits_1() {
        let options = Options {
            timer: Some(Timer::FailAfter(Duration::ZERO)),
            ..Options::default()
        };
        let (exit, out) = serve_to_string(options, &env());
        assert_eq!(exit.status(), 1);
        assert!(out.ends_with("agent-shim: exiting status=1 reason=fail-after\n"));
    }

    #[test]
    fn self_check_line_comes_before_ready() {
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            self_check: true,
            strict: false,
        };
        let (exit, out) = serve_to_string(options, &env());
        assert_eq!(exit, Exit::ExitAfter);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with(&format!(
            "agent-shim: self-check pid={} nofile=",
            std::process::id()
        )));
        assert!(lines[1].starts_with("agent-shim: ready boottime_us="));
        assert!(lines[2].starts_with("agent-shim: mem_used_kib="));
    }

    #[test]
    fn memory_line_follows_ready() {
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            ..Options::default()
        };
        let (_, out) = serve_to_string(options, &env());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("agent-shim: ready boottime_us="));
        let used: u64 = lines[1]
            .strip_prefix("agent-shim: mem_used_kib=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(used > 0);
    }

    #[test]
    fn memory_unknown_does_not_stop_the_shim() {
        let env = Environment {
            proc: std::env::temp_dir().join("agent-shim-no-such-proc"),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            ..Options::default()
        };
        let (exit, out) = serve_to_string(options, &env);
        assert_eq!(exit, Exit::ExitAfter);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(lines[1], "agent-shim: mem_used_kib=unknown");
    }

    #[test]
    fn kernel_command_line_sets_the_timer() {
        let cmdline = CmdlineFile::new("console=ttyS0 agent.log=debug agent.fail_after=0s\n");
        let env = Environment {
            cmdline: cmdline.0.clone(),
            ..env()
        };
        let (exit, out) = serve_to_string(Options::default(), &env);
        assert_eq!(exit, Exit::FailAfter);
        assert!(out.ends_with("agent-shim: exiting status=1 reason=fail-after\n"));
    }

    #[test]
    fn arguments_take_precedence_over_the_kernel_command_line() {
        let cmdline = CmdlineFile::new("agent.fail_after=0s");
        let env = Environment {
            cmdline: cmdline.0.clone(),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::from_millis(20))),
            ..Options::default()
        };
        let start = Instant::now();
        let (exit, _) = serve_to_string(options, &env);
        assert_eq!(exit, Exit::ExitAfter);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn malformed_kernel_timer_is_ignored() {
        // Were the malformed word applied, it would conflict with the other.
        let cmdline = CmdlineFile::new("agent.fail_after=0 agent.exit_after=0s");
        let env = Environment {
            cmdline: cmdline.0.clone(),
            ..env()
        };
        let (exit, _) = serve_to_string(Options::default(), &env);
        assert_eq!(exit, Exit::ExitAfter);
    }

    #[test]
    fn strict_failure_exits_2_without_ready() {
        // The unit-test process does not run with kata's oom_score_adj (a
        // fixture without the file makes that certain).
        let env = Environment {
            proc_self: std::env::temp_dir().join("agent-shim-no-such-proc-self"),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            self_check: true,
            strict: true,
        };
        let (exit, out) = serve_to_string(options, &env);
        assert_eq!(exit, Exit::SelfCheckFailed);
        assert_eq!(exit.status(), 2);
        assert!(!out.contains("ready"), "{out}");
        assert!(out.ends_with("agent-shim: exiting status=2 reason=self-check\n"));
    }

    #[test]
    fn notify_failure_does_not_stop_the_shim() {
        let env = Environment {
            notify_socket: Some("/nonexistent/notify".into()),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            ..Options::default()
        };
        let (exit, out) = serve_to_string(options, &env);
        assert_eq!(exit, Exit::ExitAfter);
        assert!(out.contains("agent-shim: ready boottime_us="));
    }

    #[test]
    fn notify_reaches_the_socket() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("agent-shim-lib-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let env = Environment {
            notify_socket: Some(path.clone().into_os_string()),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            ..Options::default()
        };
        serve_to_string(options, &env);
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_statuses_and_reasons() {
        let table = [
            (Exit::Sigterm, 0, "sigterm"),
            (Exit::Sigint, 0, "sigint"),
            (Exit::ExitAfter, 0, "exit-after"),
            (Exit::FailAfter, 1, "fail-after"),
            (Exit::SelfCheckFailed, 2, "self-check"),
            (Exit::Error, 1, "error"),
        ];
        for (exit, status, reason) in table {
            assert_eq!((exit.status(), exit.reason()), (status, reason));
        }
    }

    #[test]
    fn report_prints_the_chain_once() {
        let err = args::parse_args([OsString::from("--exit-after=2")]).unwrap_err();
        assert_eq!(
            Report(&err).to_string(),
            "invalid value for `--exit-after`: duration `2` has no unit (use us, ms, s, min or h)"
        );
    }

    #[test]
    fn write_errors_are_not_fatal() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        emit(&mut Broken, "line");
    }
}
