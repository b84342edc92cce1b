//! Command line of agent-shim.
//!
//! kata-agent takes its settings from the kernel command line (`agent.*`)
//! and is started without arguments; the options here exist for tests and
//! benchmarks that want a particular lifecycle, and take precedence over
//! the same settings on the kernel command line (see [`crate::cmdline`]).

use std::ffi::OsString;
use std::time::Duration;

use minos_common::args::Arg;

use crate::duration::{parse_duration, DurationError};

pub const USAGE: &str = "\
usage: agent-shim [OPTIONS]

A stand-in for kata-agent: prints a readiness marker, notifies NOTIFY_SOCKET
(sd_notify READY=1) and runs until SIGTERM or SIGINT.

options:
  --exit-after DURATION  exit with status 0 after DURATION (e.g. 500ms, 2s, 1min)
  --fail-after DURATION  exit with status 1 after DURATION
  --self-check           print pid, RLIMIT_NOFILE, oom_score_adj, stdin and stdout
  --strict               with --self-check (implied): exit 2 unless oom_score_adj
                         is -997 and the RLIMIT_NOFILE soft limit is 1073741824,
                         as kata-agent.service sets them
  -h, --help             print this help

kernel command line (/proc/cmdline), used when no timer option is given:
  agent.exit_after=DURATION  as --exit-after
  agent.fail_after=DURATION  as --fail-after
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub timer: Option<Timer>,
    pub self_check: bool,
    pub strict: bool,
}

pub type Command = minos_common::args::Command<Options>;

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
            "--self-check" => {
                arg.flag(ArgsError::UnexpectedValue("--self-check"))?;
                if self_check_seen {
                    return Err(ArgsError::Repeated("--self-check"));
                }
                self_check_seen = true;
                options.self_check = true;
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
            _ => return Err(ArgsError::UnknownArgument(arg.into_text())),
        }
    }
    Ok(Command::Run(options))
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
        assert_eq!(parse(&["--exit-after", "500ms"]), run(exit));
        assert_eq!(parse(&["--exit-after=500ms"]), run(exit));
        let fail = Options {
            timer: Some(Timer::FailAfter(Duration::from_secs(60))),
            ..Options::default()
        };
        assert_eq!(parse(&["--fail-after", "1min"]), run(fail));
        assert_eq!(parse(&["--fail-after=1min"]), run(fail));
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
        assert_eq!(parse(&["--self-check", "--strict"]), run(strict));
        // --strict implies the check it is strict about.
        assert_eq!(parse(&["--strict"]), run(strict));
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
}
