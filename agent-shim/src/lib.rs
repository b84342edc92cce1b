//! agent-shim: a small stand-in for kata-agent, for tests and boot benchmarks.
//!
//! Lifecycle as kata-agent's under kata-agent.service: start, listen for the
//! runtime's ttRPC health check ([`server`]), announce readiness, run until
//! SIGTERM/SIGINT. Stdout carries the markers tests wait for (one line each,
//! flushed at once):
//!
//! ```text
//! agent-shim: self-check pid=N nofile=SOFT/HARD oom_score_adj=N stdin=T stdout=T ... gaps=NAME,...|none
//! agent-shim: ready boottime_us=N
//! agent-shim: mem_used_kib=N|unknown
//! agent-shim: bench ready ...      (with --bench / agent.bench, see [`bench`])
//! agent-shim: bench late ...
//! agent-shim: exiting status=N reason=sigterm|sigint|exit-after|fail-after|self-check|server|error
//! ```
//!
//! The self-check line (`--self-check`) has one `KEY=VALUE` per check and
//! the names of the checks that failed ([`selfcheck`], docs/agent-shim.md).
//!
//! `agent-shim check ADDR` is the other side, the runtime's health check
//! ([`client`]).
//!
//! Settings come from the arguments and, as kata-agent's do, from `agent.*`
//! keys on the kernel command line (see [`cmdline`]); arguments win.
//! Diagnostics go to stderr through `log`.
//!
//! As PID 1 (Kata's agent-as-init image) the shim first does what init
//! would have done and powers off instead of exiting ([`asinit`]).

// The two exceptions, reading the TSC in [`bench`] and registering a socket
// with tokio's reactor in [`limits`], carry their invariants.
#![deny(unsafe_code)]

pub mod address;
pub mod args;
pub mod asinit;
pub mod bench;
pub mod client;
pub mod cmdline;
pub mod duration;
pub mod limits;
pub mod logging;
pub mod memory;
pub use minos_common::notify;
pub mod protocols;
pub mod selfcheck;
pub mod server;
mod vsock;

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use address::Address;
use args::{CheckCommand, Command, Options, Timer};
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
    /// The agent server could not listen where it was asked to.
    ServerFailed,
    Error,
}

impl Exit {
    pub fn status(self) -> u8 {
        match self {
            Exit::Sigterm | Exit::Sigint | Exit::ExitAfter => 0,
            Exit::FailAfter | Exit::ServerFailed | Exit::Error => 1,
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
            Exit::ServerFailed => "server",
            Exit::Error => "error",
        }
    }
}

/// What the shim reads from its surroundings, as parameters so tests can
/// substitute them.
#[derive(Debug, Clone)]
pub struct Environment {
    /// Where `--self-check` looks: normally `/proc/self`, `/sys`, `/run`,
    /// `/tmp` and the process's `PATH` and `container` variables.
    pub self_check: selfcheck::Sources,
    /// The procfs root for `meminfo` and `zoneinfo`, normally `/proc`.
    pub proc: PathBuf,
    /// The kernel command line, normally `/proc/cmdline`.
    pub cmdline: PathBuf,
    /// Where `kmsg` is, for the benchmark's marks: normally `/dev`.
    pub dev: PathBuf,
    /// sysfs, for the benchmark's ACPI tables: normally `/sys`.
    pub sys: PathBuf,
    /// The value of `NOTIFY_SOCKET`, if set.
    pub notify_socket: Option<OsString>,
    /// Where the server listens when neither `--server-addr` nor
    /// `agent.server_addr` says: normally kata-agent's `vsock://-1:1024`.
    pub default_server_addr: Address,
}

impl Environment {
    pub fn from_process() -> Self {
        Self {
            self_check: selfcheck::Sources::from_process(),
            proc: PathBuf::from("/proc"),
            cmdline: PathBuf::from(cmdline::PROC_CMDLINE),
            dev: PathBuf::from("/dev"),
            sys: PathBuf::from("/sys"),
            notify_socket: notify::socket_from_env(),
            default_server_addr: address::DEFAULT_SERVER_ADDR,
        }
    }
}

/// When the process began: the origin of the timers, and the clocks the
/// benchmark line reports the agent's exec by.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub instant: Instant,
    pub clocks: bench::Clocks,
}

impl Started {
    pub fn now() -> Self {
        Self {
            clocks: bench::Clocks::now(),
            instant: Instant::now(),
        }
    }
}

/// Runs the shim with the arguments after the program name; returns the
/// exit status. As PID 1 it powers the machine off instead, and returns
/// only when that is refused (a container without CAP_SYS_BOOT).
pub fn run<I>(args: I) -> u8
where
    I: IntoIterator<Item = OsString>,
{
    let started = Started::now();
    let pid1 = rustix::process::getpid().is_init();
    if pid1 {
        for err in asinit::setup() {
            log::warn!("as PID 1: {}", Report(&err));
        }
    }
    let status = run_command(args, started);
    if pid1 {
        log::info!("as PID 1: exit status {status}: powering off");
        let err = asinit::power_off();
        // Without CAP_SYS_BOOT (PID 1 of a container) reboot(2) fails:
        // exiting ends the namespace, which is what a container manager
        // waits for.
        log::error!("as PID 1: cannot power off: {err}; exiting");
    }
    status
}

fn run_command<I>(args: I, started: Started) -> u8
where
    I: IntoIterator<Item = OsString>,
{
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
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|first| first == args::CHECK) {
        args.next();
        return run_check(args, &mut stdout);
    }
    match args::parse_args(args) {
        Ok(Command::Help) => {
            emit(&mut stdout, args::USAGE.trim_end());
            0
        }
        Ok(Command::Version) => {
            emit(
                &mut stdout,
                format!("agent-shim {}", minos_common::version()),
            );
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

/// `agent-shim check ...`: prints the agent's status; 0 only for SERVING.
fn run_check<I, W>(args: I, out: &mut W) -> u8
where
    I: IntoIterator<Item = OsString>,
    W: Write,
{
    match args::parse_check_args(args) {
        Ok(CheckCommand::Help) => {
            emit(out, args::CHECK_USAGE.trim_end());
            0
        }
        Ok(CheckCommand::Version) => {
            emit(out, format!("agent-shim {}", minos_common::version()));
            0
        }
        Ok(CheckCommand::Run(check)) => match client::check(&check.address, check.timeout) {
            Ok(status) => {
                emit(out, status);
                u8::from(!status.is_serving())
            }
            Err(err) => {
                log::error!("{}", Report(&err));
                1
            }
        },
        Err(err) => {
            log::error!("{} (see agent-shim check --help)", Report(&err));
            STATUS_USAGE
        }
    }
}

/// The shim's life after argument parsing: kernel command line, self-check,
/// agent server, readiness, memory, wait, exit marker (the server is shut
/// down before the marker). `started` is when the process
/// began, the origin of the timers.
pub fn serve<W: Write>(
    options: &Options,
    env: &Environment,
    signals: &BlockedSignals,
    started: Started,
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
    started: Started,
    out: &mut W,
) -> Exit {
    let (kernel, errors) = cmdline::read_cmdline(&env.cmdline);
    for err in &errors {
        log::warn!("{}", Report(err));
    }
    let options = &cmdline::apply(options.clone(), &kernel);

    if options.self_check {
        let check = SelfCheck::gather(&env.self_check);
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

    // The PM timer is found before ready, so that reading it then costs
    // one instruction.
    let pm_timer = if options.bench {
        bench::PmTimer::open(&env.sys)
            .inspect_err(|err| log::warn!("bench: no ACPI PM timer to read: {err}"))
            .ok()
    } else {
        None
    };

    // Listening before the ready line, so that whoever waits for it can
    // connect at once. Dropped (shut down) on every way out of here.
    let _server = match server::start(options.server_addr.as_ref(), &env.default_server_addr) {
        Ok(server) => server,
        Err(err) => {
            log::error!("{}", Report(&err));
            return Exit::ServerFailed;
        }
    };

    let ready = bench::Clocks::now();
    let pm = pm_timer.map(|timer| bench::PmReading {
        ticks: timer.read(),
        bits: timer.bits,
        boottime_ns: bench::Clocks::now().boottime_ns,
    });
    // The kernel-log mark first, with the clock read right after it, so
    // that the ready line's console write is in neither.
    let mut mark_boottime_ns = None;
    if options.bench {
        match bench::mark(&env.dev, bench::READY_MARK) {
            Ok(()) => mark_boottime_ns = Some(bench::Clocks::now().boottime_ns),
            Err(err) => log::warn!("bench: cannot write to {}/kmsg: {err}", env.dev.display()),
        }
    }
    emit(
        out,
        format_args!("agent-shim: ready boottime_us={}", ready.boottime_ns / 1000),
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
    let mut late_at = None;
    let mut rss_at = None;
    if options.bench {
        let marks = bench::read_marks(&env.dev)
            .inspect_err(|err| log::warn!("bench: cannot read {}/kmsg: {err}", env.dev.display()))
            .unwrap_or_default();
        let line = bench::ReadyLine {
            marks,
            exec: started.clocks,
            ready,
            mark_boottime_ns,
            pm,
            memory: bench::Memory::read(&env.proc),
        };
        emit(out, line);
        late_at = Some(Instant::now() + Duration::from_millis(bench::LATE_AFTER_MS));
        rss_at = Some(Instant::now() + Duration::from_millis(bench::RSS_AFTER_MS));
    }

    let deadline = options.timer.map(|timer| match timer {
        Timer::ExitAfter(after) | Timer::FailAfter(after) => started.instant + after,
    });
    loop {
        let wake = [deadline, late_at, rss_at].into_iter().flatten().min();
        match signals.wait_until(wake) {
            Ok(Some(Signal::Term)) => return Exit::Sigterm,
            Ok(Some(Signal::Int)) => return Exit::Sigint,
            Ok(None) if late_at.is_some_and(|l| Instant::now() >= l) => {
                late_at = None;
                let line = bench::LateLine {
                    after_ms: bench::LATE_AFTER_MS,
                    memory: bench::Memory::read(&env.proc),
                };
                emit(out, line);
            }
            Ok(None) if rss_at.is_some_and(|l| Instant::now() >= l) => {
                rss_at = None;
                let processes = bench::read_process_rss(&env.proc)
                    .inspect_err(|err| {
                        log::warn!("bench: cannot list {}: {err}", env.proc.display())
                    })
                    .unwrap_or_default();
                let line = bench::RssLine {
                    after_ms: bench::RSS_AFTER_MS,
                    processes,
                };
                emit(out, line);
            }
            // The deadline passed; without a timer the wait only ends on a signal.
            Ok(None) => {
                return match options.timer {
                    Some(Timer::FailAfter(_)) => Exit::FailAfter,
                    _ => Exit::ExitAfter,
                }
            }
            Err(err) => {
                log::error!("waiting for signals failed: {err}");
                return Exit::Error;
            }
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
            self_check: selfcheck::Sources::from_process(),
            proc: PathBuf::from("/proc"),
            cmdline: PathBuf::from("/nonexistent/agent-shim/cmdline"),
            dev: PathBuf::from("/nonexistent/agent-shim/dev"),
            sys: PathBuf::from("/nonexistent/agent-shim/sys"),
            notify_socket: None,
            default_server_addr: unique_abstract_addr(),
        }
    }

    /// A fresh abstract unix socket: tests run in parallel, and must not
    /// take the host's vsock port 1024 or leave files behind.
    fn unique_abstract_addr() -> Address {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        Address::Unix(PathBuf::from(format!(
            "@agent-shim-lib-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )))
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
        let exit = serve(&options, env, &signals, Started::now(), &mut out);
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
            bench: false,
            server_addr: None,
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
        assert!(
            lines[0].starts_with("agent-shim: ready boottime_us="),
            "{out}"
        );
        let used: u64 = lines[1]
            .strip_prefix("agent-shim: mem_used_kib=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(used > 0);
    }

    #[test]
    fn bench_lines_follow_ready_and_come_again_a_second_later() {
        let dev = std::env::temp_dir().join(format!("agent-shim-bench-dev-{}", std::process::id()));
        std::fs::create_dir_all(&dev).unwrap();
        // A plain file stands in for /dev/kmsg: the mark is written to it,
        // and it holds no kernel record, so the kernel's marks are unknown.
        std::fs::write(dev.join("kmsg"), "").unwrap();
        let env = Environment {
            dev: dev.clone(),
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::from_millis(3000))),
            bench: true,
            ..Options::default()
        };
        let (exit, out) = serve_to_string(options, &env);
        let kmsg = std::fs::read_to_string(dev.join("kmsg")).unwrap();
        std::fs::remove_dir_all(&dev).unwrap();
        assert_eq!(exit, Exit::ExitAfter);
        assert_eq!(kmsg, "<6>agent-shim: ready\n");
        assert!(out.contains(" mark_boottime_ns="), "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{out}");
        assert!(
            lines[0].starts_with("agent-shim: ready boottime_us="),
            "{out}"
        );
        assert!(lines[1].starts_with("agent-shim: mem_used_kib="));
        let ready = lines[2];
        assert!(
            ready.starts_with(
                "agent-shim: bench ready init_exec_us=unknown agent_ready_us=unknown sched_clock_offset_ns=unknown tsc_exec="
            ),
            "{ready}"
        );
        let value = |line: &str, key: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in {line}"))
                .parse()
                .unwrap_or_else(|_| panic!("{key} in {line}"))
        };
        assert!(value(ready, "tsc_ready=") > value(ready, "tsc_exec="));
        assert!(value(ready, "boottime_ready_ns=") > value(ready, "boottime_exec_ns="));
        assert!(value(ready, "processes=") >= 1);
        assert!(value(ready, "mem_used_kib=") > 0);
        let late = lines[3];
        assert!(
            late.starts_with("agent-shim: bench late after_ms=1000 "),
            "{late}"
        );
        assert!(value(late, "rss_kib=") > 0);
        assert_eq!(lines[4], "agent-shim: exiting status=0 reason=exit-after");
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
            self_check: selfcheck::Sources {
                proc_self: std::env::temp_dir().join("agent-shim-no-such-proc-self"),
                ..selfcheck::Sources::from_process()
            },
            ..env()
        };
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            self_check: true,
            strict: true,
            bench: false,
            server_addr: None,
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
            (Exit::ServerFailed, 1, "server"),
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

    /// Runs `serve` on a thread for `run_for`, while `probe` runs here
    /// once the server at `wait_for` answers.
    fn serve_while(
        options: Options,
        env: Environment,
        wait_for: &Address,
        probe: impl FnOnce(),
    ) -> Exit {
        let server = std::thread::spawn(move || serve_to_string(options, &env).0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while client::check(wait_for, Duration::from_secs(1)).is_err() {
            assert!(Instant::now() < deadline, "{wait_for} never answered");
            std::thread::sleep(Duration::from_millis(10));
        }
        probe();
        server.join().unwrap()
    }

    #[test]
    fn server_address_precedence_argument_kernel_default() {
        let from_kernel = unique_abstract_addr();
        let from_args = unique_abstract_addr();
        let default = unique_abstract_addr();
        let cmdline = CmdlineFile::new(&format!("quiet agent.server_addr={from_kernel}\n"));
        let env = Environment {
            cmdline: cmdline.0.clone(),
            default_server_addr: default.clone(),
            ..env()
        };
        let timer = Some(Timer::ExitAfter(Duration::from_secs(1)));
        let not_answering = |address: &Address| {
            assert!(
                client::check(address, Duration::from_secs(2)).is_err(),
                "{address}"
            );
        };

        // --server-addr wins over agent.server_addr and the default.
        let options = Options {
            timer,
            server_addr: Some(from_args.clone()),
            ..Options::default()
        };
        let exit = serve_while(options, env.clone(), &from_args, || {
            not_answering(&from_kernel);
            not_answering(&default);
        });
        assert_eq!(exit, Exit::ExitAfter);

        // agent.server_addr wins over the default.
        let options = Options {
            timer,
            ..Options::default()
        };
        let exit = serve_while(options.clone(), env.clone(), &from_kernel, || {
            not_answering(&default);
        });
        assert_eq!(exit, Exit::ExitAfter);

        // Neither: the default.
        let env = Environment {
            cmdline: PathBuf::from("/nonexistent/agent-shim/cmdline"),
            ..env
        };
        let exit = serve_while(options, env, &default, || {});
        assert_eq!(exit, Exit::ExitAfter);
    }

    #[test]
    fn explicit_server_failure_exits_1_without_ready() {
        let options = Options {
            timer: Some(Timer::ExitAfter(Duration::ZERO)),
            server_addr: Some(Address::Unix("/nonexistent/agent-shim/agent.sock".into())),
            ..Options::default()
        };
        let (exit, out) = serve_to_string(options, &env());
        assert_eq!((exit.status(), exit.reason()), (1, "server"));
        assert_eq!(out, "agent-shim: exiting status=1 reason=server\n");
    }
}
