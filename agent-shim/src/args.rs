//! Command line of agent-shim.
//!
//! kata-agent takes its settings from the kernel command line (`agent.*`)
//! and is started without arguments; the options here exist for tests and
//! benchmarks that want a particular lifecycle, and take precedence over
//! the same settings on the kernel command line (see [`crate::cmdline`]).

use std::ffi::OsString;
use std::time::Duration;

use minos_common::args::Arg;

use crate::address::{Address, AddressError};
use crate::client::DEFAULT_TIMEOUT;
use crate::duration::{parse_duration, DurationError};

pub const USAGE: &str = "\
usage: agent-shim [OPTIONS]
       agent-shim check ADDR [--timeout DURATION]

A stand-in for kata-agent: answers the agent's ttRPC health check
(grpc.Health), prints a readiness marker, notifies NOTIFY_SOCKET (sd_notify
READY=1) and runs until SIGTERM or SIGINT.

options:
  --version              print the version and the commit it was built from
  --server-addr ADDR     listen on ADDR (unix://PATH or vsock://CID:PORT);
                         default vsock://-1:1024, skipped with a warning where
                         there is no vsock
  --exit-after DURATION  exit with status 0 after DURATION (e.g. 500ms, 2s, 1min)
  --fail-after DURATION  exit with status 1 after DURATION
  --self-check           print one line checking what kata-agent relies on: pid
                         (not 1), RLIMIT_NOFILE 1073741824, oom_score_adj -997,
                         stdin /dev/null, stdout the console, proc, sysfs,
                         devtmpfs, devpts, /dev/shm, /run and /tmp (tmpfs)
                         mounted, cgroup2 (or v1) on /sys/fs/cgroup, PATH,
                         hostname, lo up, /run writable, /tmp mode 1777; and
                         `gaps=` naming the checks that fail (or `none`). With
                         `container` set, /dev may be a tmpfs and stdout a
                         pipe or /dev/pts/N
  --strict               with --self-check (implied): exit 2 before the ready
                         line on any gap, each named on stderr
  --bench                after ready, print the boot benchmark's figures (kernel
                         log marks, TSC, memory, processes) and again 1 s later
  -h, --help             print this help

kernel command line (/proc/cmdline), for what the options leave unset:
  agent.exit_after=DURATION  as --exit-after
  agent.fail_after=DURATION  as --fail-after
  agent.server_addr=ADDR     as --server-addr
  agent.self_check[=BOOL]    as --self-check
  agent.strict[=BOOL]        as --strict
  agent.bench[=BOOL]         as --bench
";

pub const CHECK_USAGE: &str = "\
usage: agent-shim check ADDR [--timeout DURATION]

Sends grpc.Health/Check to the agent at ADDR and prints the status it reports
(SERVING, NOT_SERVING, UNKNOWN). Exits 0 only for SERVING, 1 otherwise, 2 for
bad usage.

ADDR: unix://PATH, vsock://CID:PORT, or hvsock://PATH:PORT (hybrid vsock of
Firecracker and Cloud Hypervisor: CONNECT PORT on the unix socket PATH).

options:
  --timeout DURATION  give up after DURATION (default 5s)
  -h, --help          print this help
";

/// When the shim ends on its own, and with what status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// `--exit-after`: exit 0 after the duration.
    ExitAfter(Duration),
    /// `--fail-after`: exit 1 after the duration.
    FailAfter(Duration),
}

/// Everything `run` needs from the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub timer: Option<Timer>,
    pub self_check: bool,
    pub strict: bool,
    /// `--bench`: the boot benchmark's lines (see `bench`).
    pub bench: bool,
    /// `--server-addr`; `None` leaves it to the kernel command line or the
    /// default.
    pub server_addr: Option<Address>,
}

pub type Command = minos_common::args::Command<Options>;

/// `agent-shim check ADDR [--timeout DURATION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    pub address: Address,
    pub timeout: Duration,
}

pub type CheckCommand = minos_common::args::Command<CheckOptions>;

/// The first argument that selects the health-check client.
pub const CHECK: &str = "check";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("unknown argument `{0}`")]
    UnknownArgument(String),
    #[error("option `{0}` needs a value")]
    MissingValue(&'static str),
    #[error("option `{0}` takes no value")]
    UnexpectedValue(&'static str),
    #[error("invalid value for `{option}`")]
    InvalidDuration {
        option: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("option `{0}` given more than once")]
    Repeated(&'static str),
    #[error("options `--exit-after` and `--fail-after` exclude each other")]
    ConflictingTimers,
    #[error("invalid value for `{option}`")]
    InvalidAddress {
        option: &'static str,
        #[source]
        source: AddressError,
    },
    #[error("`check` needs the agent's address")]
    MissingAddress,
}

/// Parses the arguments after the program name.
///
/// Options take their value as the next argument or after `=`
/// (`--exit-after 2s`, `--exit-after=2s`). `-h`/`--help` anywhere wins over
/// what follows it; the first error ends parsing.
pub fn parse_args<I>(args: I) -> Result<Command, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut options = Options::default();
    let mut args = args.into_iter();
    let mut self_check_seen = false;
    while let Some(arg) = args.next() {
        // Non-UTF-8 arguments are never valid options; the lossy form names them.
        let arg = Arg::new(arg);
        let name = arg.name();
        match name {
            "-h" | "--help" => {
                arg.flag(ArgsError::UnexpectedValue("--help"))?;
                return Ok(Command::Help);
            }
            "--version" => {
                arg.flag(ArgsError::UnexpectedValue("--version"))?;
                return Ok(Command::Version);
            }
            "--self-check" => {
                arg.flag(ArgsError::UnexpectedValue("--self-check"))?;
                if self_check_seen {
                    return Err(ArgsError::Repeated("--self-check"));
                }
                self_check_seen = true;
                options.self_check = true;
            }
            "--bench" => {
                arg.flag(ArgsError::UnexpectedValue("--bench"))?;
                if options.bench {
                    return Err(ArgsError::Repeated("--bench"));
                }
                options.bench = true;
            }
            "--strict" => {
                arg.flag(ArgsError::UnexpectedValue("--strict"))?;
                if options.strict {
                    return Err(ArgsError::Repeated("--strict"));
                }
                options.strict = true;
                options.self_check = true;
            }
            "--exit-after" | "--fail-after" => {
                let option = if name == "--exit-after" {
                    "--exit-after"
                } else {
                    "--fail-after"
                };
                let value = arg
                    .value(&mut args)
                    .ok_or(ArgsError::MissingValue(option))?;
                let duration = parse_duration(&value.to_string_lossy())
                    .map_err(|source| ArgsError::InvalidDuration { option, source })?;
                let timer = if option == "--exit-after" {
                    Timer::ExitAfter(duration)
                } else {
                    Timer::FailAfter(duration)
                };
                options.timer = match (options.timer, timer) {
                    (None, timer) => Some(timer),
                    (Some(Timer::ExitAfter(_)), Timer::ExitAfter(_))
                    | (Some(Timer::FailAfter(_)), Timer::FailAfter(_)) => {
                        return Err(ArgsError::Repeated(option))
                    }
                    (Some(_), _) => return Err(ArgsError::ConflictingTimers),
                };
            }
            "--server-addr" => {
                let option = "--server-addr";
                let value = arg
                    .value(&mut args)
                    .ok_or(ArgsError::MissingValue(option))?;
                if options.server_addr.is_some() {
                    return Err(ArgsError::Repeated(option));
                }
                let address = Address::parse_listen(&value.to_string_lossy())
                    .map_err(|source| ArgsError::InvalidAddress { option, source })?;
                options.server_addr = Some(address);
            }
            _ => return Err(ArgsError::UnknownArgument(arg.into_text())),
        }
    }
    Ok(Command::Run(options))
}

/// Parses the arguments after `check`: one address and `--timeout`, in
/// any order.
pub fn parse_check_args<I>(args: I) -> Result<CheckCommand, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut address = None;
    let mut timeout = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = Arg::new(arg);
        match arg.name() {
            "-h" | "--help" => {
                arg.flag(ArgsError::UnexpectedValue("--help"))?;
                return Ok(CheckCommand::Help);
            }
            "--timeout" => {
                let option = "--timeout";
                let value = arg
                    .value(&mut args)
                    .ok_or(ArgsError::MissingValue(option))?;
                if timeout.is_some() {
                    return Err(ArgsError::Repeated(option));
                }
                let duration = parse_duration(&value.to_string_lossy())
                    .map_err(|source| ArgsError::InvalidDuration { option, source })?;
                timeout = Some(duration);
            }
            name if name.starts_with('-') || address.is_some() => {
                return Err(ArgsError::UnknownArgument(arg.into_text()))
            }
            _ => {
                let text = arg.into_text();
                let parsed = Address::parse(&text).map_err(|source| ArgsError::InvalidAddress {
                    option: "ADDR",
                    source,
                })?;
                address = Some(parsed);
            }
        }
    }
    Ok(CheckCommand::Run(CheckOptions {
        address: address.ok_or(ArgsError::MissingAddress)?,
        timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ArgsError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run(options: Options) -> Result<Command, ArgsError> {
        Ok(Command::Run(options))
    }

    #[test]
    fn no_arguments_runs_until_signal() {
        assert_eq!(parse(&[]), run(Options::default()));
    }

    #[test]
    fn timers_with_separate_or_inline_value() {
        let exit = Options {
            timer: Some(Timer::ExitAfter(Duration::from_millis(500))),
            ..Options::default()
        };
        assert_eq!(parse(&["--exit-after", "500ms"]), run(exit.clone()));
        assert_eq!(parse(&["--exit-after=500ms"]), run(exit));
        let fail = Options {
            timer: Some(Timer::FailAfter(Duration::from_secs(60))),
            ..Options::default()
        };
        assert_eq!(parse(&["--fail-after", "1min"]), run(fail.clone()));
        assert_eq!(parse(&["--fail-after=1min"]), run(fail));
    }

    #[test]
    fn bench_flag() {
        let bench = Options {
            bench: true,
            ..Options::default()
        };
        assert_eq!(parse(&["--bench"]), run(bench));
        assert!(matches!(
            parse(&["--bench", "--bench"]),
            Err(ArgsError::Repeated("--bench"))
        ));
        assert!(matches!(
            parse(&["--bench=1"]),
            Err(ArgsError::UnexpectedValue("--bench"))
        ));
    }

    #[test]
    fn self_check_and_strict() {
        let check = Options {
            self_check: true,
            ..Options::default()
        };
        assert_eq!(parse(&["--self-check"]), run(check));
        let strict = Options {
            self_check: true,
            strict: true,
            ..Options::default()
        };
        assert_eq!(parse(&["--self-check", "--strict"]), run(strict.clone()));
        // --strict implies the check it is strict about.
        assert_eq!(parse(&["--strict"]), run(strict.clone()));
        assert_eq!(
            parse(&["--strict", "--self-check", "--exit-after", "2s"]),
            run(Options {
                timer: Some(Timer::ExitAfter(Duration::from_secs(2))),
                ..strict
            })
        );
    }

    #[test]
    fn help() {
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
        assert_eq!(
            parse(&["--self-check", "--help", "--bogus"]),
            Ok(Command::Help)
        );
    }

    #[test]
    fn unknown_argument_is_named() {
        let err = parse(&["--self-check", "--bogus"]).unwrap_err();
        assert_eq!(err, ArgsError::UnknownArgument("--bogus".into()));
        assert_eq!(err.to_string(), "unknown argument `--bogus`");
        assert_eq!(
            parse(&["extra"]),
            Err(ArgsError::UnknownArgument("extra".into()))
        );
        assert_eq!(
            parse(&["--bogus=1"]),
            Err(ArgsError::UnknownArgument("--bogus=1".into()))
        );
    }

    #[test]
    fn missing_value() {
        assert_eq!(
            parse(&["--exit-after"]),
            Err(ArgsError::MissingValue("--exit-after"))
        );
        assert_eq!(
            parse(&["--fail-after"]),
            Err(ArgsError::MissingValue("--fail-after"))
        );
    }

    #[test]
    fn invalid_duration_keeps_the_cause() {
        let err = parse(&["--exit-after", "5"]).unwrap_err();
        assert_eq!(
            err,
            ArgsError::InvalidDuration {
                option: "--exit-after",
                source: DurationError::MissingUnit("5".into())
            }
        );
        assert_eq!(err.to_string(), "invalid value for `--exit-after`");
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("duration `5` has no unit (use us, ms, s, min or h)")
        );
    }

    #[test]
    fn flags_take_no_value() {
        assert_eq!(
            parse(&["--self-check=yes"]),
            Err(ArgsError::UnexpectedValue("--self-check"))
        );
        assert_eq!(
            parse(&["--strict=1"]),
            Err(ArgsError::UnexpectedValue("--strict"))
        );
        assert_eq!(
            parse(&["--help=1"]),
            Err(ArgsError::UnexpectedValue("--help"))
        );
    }

    #[test]
    fn repeats_and_conflicts() {
        assert_eq!(
            parse(&["--exit-after", "1s", "--exit-after", "2s"]),
            Err(ArgsError::Repeated("--exit-after"))
        );
        assert_eq!(
            parse(&["--fail-after=1s", "--fail-after=2s"]),
            Err(ArgsError::Repeated("--fail-after"))
        );
        assert_eq!(
            parse(&["--exit-after", "1s", "--fail-after", "2s"]),
            Err(ArgsError::ConflictingTimers)
        );
        assert_eq!(
            parse(&["--self-check", "--self-check"]),
            Err(ArgsError::Repeated("--self-check"))
        );
        assert_eq!(
            parse(&["--strict", "--strict"]),
            Err(ArgsError::Repeated("--strict"))
        );
    }

    #[test]
    fn non_utf8_argument_is_named_lossily() {
        use std::os::unix::ffi::OsStringExt;
        let arg = OsString::from_vec(vec![b'-', b'-', 0xff]);
        assert_eq!(
            parse_args([arg]),
            Err(ArgsError::UnknownArgument("--\u{fffd}".into()))
        );
    }

    #[test]
    fn server_addr() {
        let expected = Options {
            server_addr: Some(Address::Unix("/run/agent.sock".into())),
            ..Options::default()
        };
        assert_eq!(
            parse(&["--server-addr", "unix:///run/agent.sock"]),
            run(expected.clone())
        );
        assert_eq!(
            parse(&["--server-addr=unix:///run/agent.sock"]),
            run(expected)
        );
        assert_eq!(
            parse(&["--server-addr", "vsock://-1:1024"]),
            run(Options {
                server_addr: Some(crate::address::DEFAULT_SERVER_ADDR),
                ..Options::default()
            })
        );
        assert_eq!(
            parse(&["--server-addr"]),
            Err(ArgsError::MissingValue("--server-addr"))
        );
        assert_eq!(
            parse(&["--server-addr=unix:///a", "--server-addr=unix:///b"]),
            Err(ArgsError::Repeated("--server-addr"))
        );
        let err = parse(&["--server-addr", "hvsock:///h.sock:1024"]).unwrap_err();
        assert_eq!(
            crate::Report(&err).to_string(),
            "invalid value for `--server-addr`: address `hvsock:///h.sock:1024`: \
             hvsock is for the host's side (the `check` client) only"
        );
        assert!(matches!(
            parse(&["--server-addr", "/run/agent.sock"]),
            Err(ArgsError::InvalidAddress {
                option: "--server-addr",
                ..
            })
        ));
    }

    fn check(args: &[&str]) -> Result<CheckCommand, ArgsError> {
        parse_check_args(args.iter().map(OsString::from))
    }

    #[test]
    fn check_arguments() {
        let address = Address::Unix("/run/a.sock".into());
        assert_eq!(
            check(&["unix:///run/a.sock"]),
            Ok(CheckCommand::Run(CheckOptions {
                address: address.clone(),
                timeout: DEFAULT_TIMEOUT
            }))
        );
        let quick = Ok(CheckCommand::Run(CheckOptions {
            address,
            timeout: Duration::from_millis(300),
        }));
        assert_eq!(check(&["unix:///run/a.sock", "--timeout", "300ms"]), quick);
        assert_eq!(check(&["--timeout=300ms", "unix:///run/a.sock"]), quick);
        assert_eq!(
            check(&["hvsock:///run/h.sock:1024"]),
            Ok(CheckCommand::Run(CheckOptions {
                address: Address::HybridVsock {
                    path: "/run/h.sock".into(),
                    port: 1024
                },
                timeout: DEFAULT_TIMEOUT
            }))
        );
        assert_eq!(check(&["--help"]), Ok(CheckCommand::Help));
        assert_eq!(check(&[]), Err(ArgsError::MissingAddress));
        assert_eq!(
            check(&["unix:///a", "unix:///b"]),
            Err(ArgsError::UnknownArgument("unix:///b".into()))
        );
        assert_eq!(
            check(&["unix:///a", "--bogus"]),
            Err(ArgsError::UnknownArgument("--bogus".into()))
        );
        assert_eq!(
            check(&["unix:///a", "--timeout"]),
            Err(ArgsError::MissingValue("--timeout"))
        );
        assert_eq!(
            check(&["unix:///a", "--timeout=1s", "--timeout=2s"]),
            Err(ArgsError::Repeated("--timeout"))
        );
        let err = check(&["vsock://x"]).unwrap_err();
        assert_eq!(
            crate::Report(&err).to_string(),
            "invalid value for `ADDR`: address `vsock://x`: \
             expected CID:PORT, CID a number or -1, PORT a number"
        );
    }
}
