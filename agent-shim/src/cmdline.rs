//! Settings from the kernel command line, as kata-agent takes its `agent.*`
//! keys: kata-agent.service starts the agent without arguments, so a guest
//! that runs the unmodified unit can only configure the shim here.
//!
//! Keys:
//!
//! - `agent.exit_after=DURATION`: as `--exit-after DURATION`;
//! - `agent.fail_after=DURATION`: as `--fail-after DURATION`;
//! - `agent.server_addr=ADDR`: as `--server-addr ADDR` (kata-agent's own
//!   key for where its ttRPC server listens);
//! - `agent.self_check[=BOOL]`: as `--self-check`;
//! - `agent.strict[=BOOL]`: as `--strict` (implies `agent.self_check`);
//! - `agent.bench[=BOOL]`: as `--bench`.
//!
//! A boolean key alone means true, as kata-agent's flags
//! (`agent.debug_console`) do; with a value it is `1`, `y`, `yes`, `t`,
//! `true`, `on` or `0`, `n`, `no`, `f`, `false`, `off` (any case: the one
//! grammar of `minos_common::cmdline`, which also splits the line).
//!
//! As in the kernel's own parameter names, `-` and `_` in a key are the same
//! (`agent.exit-after` works too). A repeated key: the last valid value wins,
//! as kata-agent does. A malformed value is reported and the word ignored;
//! both keys set is reported and neither is applied. Other `agent.*` keys
//! belong to the real agent and are ignored silently. Like kata-agent, every
//! word of `/proc/cmdline` counts, including those after `--`.
//!
//! Arguments take precedence: a timer given with `--exit-after` or
//! `--fail-after` replaces any from the kernel command line, and
//! `--server-addr` replaces `agent.server_addr` ([`apply`]). `--self-check`
//! and `--strict` can only turn their check on, so the kernel's keys apply
//! when the arguments leave them off.
//!
//! [`parse_cmdline`] is pure (text in, values and every warning out);
//! [`read_cmdline`] takes the file's path so tests can use a fixture.

use std::io;
use std::path::{Path, PathBuf};

use crate::address::{Address, AddressError};
use crate::args::{Options, Timer};
use crate::duration::{parse_duration, DurationError};
use minos_common::cmdline::flag as bool_value;
pub use minos_common::cmdline::{key_is, params, Param};

/// The normal place of the kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";

const EXIT_AFTER: &str = "agent.exit_after";
const FAIL_AFTER: &str = "agent.fail_after";
const SERVER_ADDR: &str = "agent.server_addr";
const SELF_CHECK: &str = "agent.self_check";
const STRICT: &str = "agent.strict";
const BENCH: &str = "agent.bench";

/// What the kernel command line asks of the shim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelOptions {
    pub timer: Option<Timer>,
    pub server_addr: Option<Address>,
    /// `agent.self_check`.
    pub self_check: bool,
    /// `agent.strict`.
    pub strict: bool,
    /// `agent.bench`.
    pub bench: bool,
}

/// A word of the kernel command line that was not applied, or a file that
/// could not be read. None of them stops the shim.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ignoring `{word}` on the kernel command line: no value")]
    MissingValue { word: String },
    #[error("ignoring `{word}` on the kernel command line")]
    InvalidDuration {
        word: String,
        #[source]
        source: DurationError,
    },
    #[error("ignoring `{word}` on the kernel command line")]
    InvalidAddress {
        word: String,
        #[source]
        source: AddressError,
    },
    #[error(
        "ignoring `{word}` on the kernel command line: not a boolean \
         (use 1, y, yes, t, true, on, 0, n, no, f, false or off)"
    )]
    InvalidBool { word: String },
    #[error(
        "ignoring `{exit_after}` and `{fail_after}` on the kernel command line: \
         they exclude each other"
    )]
    ConflictingTimers {
        exit_after: String,
        fail_after: String,
    },
}

/// Reads the shim's keys from the text of `/proc/cmdline`; returns what
/// applies and every word that was ignored, with the reason.
pub fn parse_cmdline(text: &str) -> (KernelOptions, Vec<CmdlineError>) {
    let mut errors = Vec::new();
    // The last valid word of each key, with its duration.
    let mut exit_after = None;
    let mut fail_after = None;
    let mut server_addr = None;
    let mut self_check = false;
    let mut strict = false;
    let mut bench = false;
    for param in params(text) {
        let flag = if key_is(param.key, SELF_CHECK) {
            Some(&mut self_check)
        } else if key_is(param.key, STRICT) {
            Some(&mut strict)
        } else if key_is(param.key, BENCH) {
            Some(&mut bench)
        } else {
            None
        };
        if let Some(flag) = flag {
            match bool_value(param.value) {
                Some(on) => *flag = on,
                None => errors.push(CmdlineError::InvalidBool {
                    word: param.word.to_owned(),
                }),
            }
            continue;
        }
        if key_is(param.key, SERVER_ADDR) {
            match param.value.map(Address::parse_listen) {
                None => errors.push(CmdlineError::MissingValue {
                    word: param.word.to_owned(),
                }),
                Some(Ok(address)) => server_addr = Some(address),
                Some(Err(source)) => errors.push(CmdlineError::InvalidAddress {
                    word: param.word.to_owned(),
                    source,
                }),
            }
            continue;
        }
        let slot = if key_is(param.key, EXIT_AFTER) {
            &mut exit_after
        } else if key_is(param.key, FAIL_AFTER) {
            &mut fail_after
        } else {
            continue;
        };
        let Some(value) = param.value else {
            errors.push(CmdlineError::MissingValue {
                word: param.word.to_owned(),
            });
            continue;
        };
        match parse_duration(value) {
            Ok(duration) => *slot = Some((param.word, duration)),
            Err(source) => errors.push(CmdlineError::InvalidDuration {
                word: param.word.to_owned(),
                source,
            }),
        }
    }
    let timer = match (exit_after, fail_after) {
        (None, None) => None,
        (Some((_, after)), None) => Some(Timer::ExitAfter(after)),
        (None, Some((_, after))) => Some(Timer::FailAfter(after)),
        (Some((exit_word, _)), Some((fail_word, _))) => {
            errors.push(CmdlineError::ConflictingTimers {
                exit_after: exit_word.to_owned(),
                fail_after: fail_word.to_owned(),
            });
            None
        }
    };
    (
        KernelOptions {
            timer,
            server_addr,
            self_check,
            strict,
            bench,
        },
        errors,
    )
}

/// Reads and parses the kernel command line at `path` (normally
/// [`PROC_CMDLINE`]). A missing file is no error: outside a VM, or with
/// procfs not mounted, there is simply nothing to apply. Non-UTF-8 bytes
/// are replaced; they cannot be part of a valid shim key anyway.
pub fn read_cmdline(path: &Path) -> (KernelOptions, Vec<CmdlineError>) {
    match std::fs::read(path) {
        Ok(bytes) => parse_cmdline(&String::from_utf8_lossy(&bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => (KernelOptions::default(), Vec::new()),
        Err(source) => (
            KernelOptions::default(),
            vec![CmdlineError::Read {
                path: path.to_owned(),
                source,
            }],
        ),
    }
}

/// The options in effect: the arguments, with what they leave unset taken
/// from the kernel command line.
pub fn apply(args: Options, kernel: &KernelOptions) -> Options {
    let strict = args.strict || kernel.strict;
    Options {
        timer: args.timer.or(kernel.timer),
        server_addr: args.server_addr.or_else(|| kernel.server_addr.clone()),
        self_check: args.self_check || kernel.self_check || strict,
        strict,
        bench: args.bench || kernel.bench,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A guest's /proc/cmdline as our QEMU runner writes it, newline included.
    const GUEST: &str = "console=ttyS0 reboot=t panic=-1 quiet loglevel=3 \
        root=/dev/vda ro init=/sbin/init agent.log=debug agent.debug_console \
        agent.exit_after=2s systemd.unit=kata-containers.target\n";

    fn parse(text: &str) -> (Option<Timer>, Vec<String>) {
        let (options, errors) = parse_cmdline(text);
        let errors = errors
            .iter()
            .map(|e| crate::Report(e).to_string())
            .collect();
        (options.timer, errors)
    }

    #[test]
    fn exit_after_from_a_guest_command_line() {
        assert_eq!(
            parse(GUEST),
            (Some(Timer::ExitAfter(Duration::from_secs(2))), vec![])
        );
    }

    #[test]
    fn fail_after_quoted_and_dashed() {
        assert_eq!(
            parse("quiet agent.fail_after=\"1.5s\"\n"),
            (Some(Timer::FailAfter(Duration::from_millis(1500))), vec![])
        );
        assert_eq!(
            parse("agent.fail-after=500ms"),
            (Some(Timer::FailAfter(Duration::from_millis(500))), vec![])
        );
    }

    #[test]
    fn nothing_for_the_shim() {
        assert_eq!(parse(""), (None, vec![]));
        // Other agent keys belong to kata-agent; similar names are not ours.
        assert_eq!(
            parse(
                "agent.log=debug agent.trace agent.exit_afterwards=1s \
                 exit_after=1s xagent.exit_after=1s agent.exitafter=1s"
            ),
            (None, vec![])
        );
    }

    #[test]
    fn malformed_values_are_named_and_ignored() {
        assert_eq!(
            parse("agent.exit_after=5 agent.fail_after agent.fail_after=soon"),
            (
                None,
                vec![
                    "ignoring `agent.exit_after=5` on the kernel command line: \
                     duration `5` has no unit (use us, ms, s, min or h)"
                        .to_owned(),
                    "ignoring `agent.fail_after` on the kernel command line: no value".to_owned(),
                    "ignoring `agent.fail_after=soon` on the kernel command line: \
                     duration `soon` does not start with a number"
                        .to_owned(),
                ]
            )
        );
        assert_eq!(
            parse("agent.exit_after= quiet").1,
            ["ignoring `agent.exit_after=` on the kernel command line: empty duration"]
        );
    }

    #[test]
    fn a_malformed_word_does_not_hide_a_valid_one() {
        let (timer, errors) = parse("agent.exit_after=3s agent.exit_after=3 agent.fail_after=x");
        assert_eq!(timer, Some(Timer::ExitAfter(Duration::from_secs(3))));
        assert_eq!(errors.len(), 2);
    }

    #[test]
    fn last_valid_value_wins() {
        assert_eq!(
            parse("agent.exit_after=1s agent.exit_after=4s"),
            (Some(Timer::ExitAfter(Duration::from_secs(4))), vec![])
        );
    }

    #[test]
    fn both_timers_apply_neither() {
        assert_eq!(
            parse("agent.fail_after=1s agent.exit_after=2s"),
            (
                None,
                vec![
                    "ignoring `agent.exit_after=2s` and `agent.fail_after=1s` on the \
                      kernel command line: they exclude each other"
                        .to_owned()
                ]
            )
        );
    }

    #[test]
    fn arguments_take_precedence() {
        let kernel = KernelOptions {
            timer: Some(Timer::FailAfter(Duration::from_secs(1))),
            ..KernelOptions::default()
        };
        let args = Options {
            timer: Some(Timer::ExitAfter(Duration::from_secs(9))),
            self_check: true,
            strict: false,
            bench: false,
            server_addr: None,
        };
        assert_eq!(apply(args.clone(), &kernel), args);
        let args = Options {
            timer: None,
            ..args
        };
        assert_eq!(
            apply(args.clone(), &kernel),
            Options {
                timer: kernel.timer,
                ..args.clone()
            }
        );
        assert_eq!(apply(args.clone(), &KernelOptions::default()), args);
    }

    #[test]
    fn reads_a_fixture_file() {
        let path = std::env::temp_dir().join(format!("agent-shim-cmdline-{}", std::process::id()));
        std::fs::write(&path, GUEST).unwrap();
        let (options, errors) = read_cmdline(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            options.timer,
            Some(Timer::ExitAfter(Duration::from_secs(2)))
        );
    }

    #[test]
    fn missing_file_is_not_an_error() {
        let (options, errors) = read_cmdline(Path::new("/nonexistent/agent-shim/cmdline"));
        assert_eq!(options, KernelOptions::default());
        assert!(errors.is_empty(), "{errors:?}");
    }

    #[test]
    fn unreadable_file_is_reported() {
        // A directory cannot be read as a file (EISDIR).
        let (options, errors) = read_cmdline(&std::env::temp_dir());
        assert_eq!(options, KernelOptions::default());
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [format!("cannot read {}", std::env::temp_dir().display())]
        );
    }

    #[test]
    fn server_addr_from_the_kernel_command_line() {
        let (options, errors) = parse_cmdline(
            "quiet agent.server_addr=vsock://-1:1024 agent.server-addr=\"unix:///run/a.sock\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            options.server_addr,
            Some(Address::Unix("/run/a.sock".into()))
        );
        assert_eq!(options.timer, None);
    }

    #[test]
    fn malformed_server_addr_is_named_and_ignored() {
        let (options, errors) = parse_cmdline(
            "agent.server_addr=vsock://3:1025 agent.server_addr=tcp://x:1 \
             agent.server_addr agent.server_addr=hvsock:///h:1",
        );
        assert_eq!(
            options.server_addr,
            Some(Address::Vsock { cid: 3, port: 1025 })
        );
        let errors: Vec<String> = errors
            .iter()
            .map(|e| crate::Report(e).to_string())
            .collect();
        assert_eq!(
            errors,
            [
                "ignoring `agent.server_addr=tcp://x:1` on the kernel command line: address \
                 `tcp://x:1`: use unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT",
                "ignoring `agent.server_addr` on the kernel command line: no value",
                "ignoring `agent.server_addr=hvsock:///h:1` on the kernel command line: address \
                 `hvsock:///h:1`: hvsock is for the host's side (the `check` client) only",
            ]
        );
    }

    #[test]
    fn bench_from_the_kernel_command_line() {
        let bench = |line: &str| parse_cmdline(line).0.bench;
        assert!(bench("quiet agent.bench panic=1"));
        assert!(bench("agent.bench=1"));
        assert!(!bench("agent.bench=0"));
        assert!(!bench("agent.benchmark"));
        let kernel = parse_cmdline("agent.bench").0;
        assert!(apply(Options::default(), &kernel).bench);
    }

    #[test]
    fn self_check_and_strict_from_the_kernel_command_line() {
        let flags = |text: &str| {
            let (options, errors) = parse_cmdline(text);
            let errors: Vec<String> = errors
                .iter()
                .map(|e| crate::Report(e).to_string())
                .collect();
            ((options.self_check, options.strict), errors)
        };
        assert_eq!(flags("quiet"), ((false, false), vec![]));
        assert_eq!(flags("agent.self_check"), ((true, false), vec![]));
        assert_eq!(
            flags("agent.self-check=yes agent.strict=0"),
            ((true, false), vec![])
        );
        assert_eq!(
            flags("agent.strict agent.self_check=off"),
            ((false, true), vec![])
        );
        assert_eq!(
            flags("agent.strict=\"ON\" agent.strict=maybe agent.self_check="),
            (
                (false, true),
                vec![
                    "ignoring `agent.strict=maybe` on the kernel command line: not a boolean \
                     (use 1, y, yes, t, true, on, 0, n, no, f, false or off)"
                        .to_owned(),
                    "ignoring `agent.self_check=` on the kernel command line: not a boolean \
                     (use 1, y, yes, t, true, on, 0, n, no, f, false or off)"
                        .to_owned(),
                ]
            )
        );
        // The last valid value wins; similar names are not ours.
        assert_eq!(
            flags("agent.strict agent.strict=false agent.self_checks agent.stricter"),
            ((false, false), vec![])
        );
    }

    #[test]
    fn kernel_flags_turn_the_check_on_arguments_cannot_turn_it_off() {
        let strict = KernelOptions {
            strict: true,
            ..KernelOptions::default()
        };
        let applied = apply(Options::default(), &strict);
        assert!(
            applied.self_check && applied.strict,
            "strict implies the check"
        );
        let check = KernelOptions {
            self_check: true,
            ..KernelOptions::default()
        };
        let applied = apply(Options::default(), &check);
        assert!(applied.self_check && !applied.strict);
        let args = Options {
            self_check: true,
            strict: true,
            ..Options::default()
        };
        assert_eq!(apply(args.clone(), &KernelOptions::default()), args);
    }

    #[test]
    fn server_addr_precedence() {
        let from_args = Address::Unix("/args.sock".into());
        let from_kernel = Address::Unix("/kernel.sock".into());
        let kernel = KernelOptions {
            server_addr: Some(from_kernel.clone()),
            ..KernelOptions::default()
        };
        let args = Options {
            server_addr: Some(from_args.clone()),
            ..Options::default()
        };
        // --server-addr, then agent.server_addr, then (None) the default.
        assert_eq!(apply(args, &kernel).server_addr, Some(from_args));
        assert_eq!(
            apply(Options::default(), &kernel).server_addr,
            Some(from_kernel)
        );
        assert_eq!(
            apply(Options::default(), &KernelOptions::default()).server_addr,
            None
        );
    }
}
