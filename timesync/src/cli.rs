//! Command line of timesync.

use std::ffi::OsString;
use std::path::PathBuf;

use minos_common::args::Arg;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/timesync.conf";

pub const USAGE: &str = "\
usage: timesync [--config PATH] [--observe] [--once] [--check-config]
                [--status-file PATH] [--user USER]
       timesync status [--json] [--status-file PATH]

Time-sync daemon in chronyd's role: disciplines CLOCK_REALTIME from PTP
hardware clocks (/dev/ptpN), NTP servers and, at start, the RTC.

options:
  --config PATH       configuration in chrony syntax (default /etc/timesync.conf)
  --observe           measure and report, never touch the clock
  --once              take one measurement from each source, print each
                      offset and exit (like chronyd -Q; implies --observe)
  --check-config      parse the configuration, print diagnostics, exit 0 when
                      it has no errors and 1 otherwise
  --status-file PATH  where the daemon publishes its status
                      (default /run/timesync/status)
  --user USER         started as root: open the devices, then become USER
                      keeping CAP_SYS_TIME only (like chronyd -u)
  -h, --help          print this help
      --version       print the version and the commit it was built from

status: print the running daemon's status (chronyc tracking's lines, or one
JSON object); exit 0 when synchronised, 2 when not, 1 without a status.

Kernel command line (read at start; arguments win): timesync.observe,
timesync.config=PATH, timesync.server=HOST (an extra NTP server, iburst),
timesync.max_step=SECONDS (refuse larger steps).
";

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The daemon.
    Run,
    CheckConfig,
    /// One measurement per source, then exit.
    Once,
    /// Print the status file.
    Status {
        json: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub action: Action,
    pub config: PathBuf,
    /// `--config` given (so `timesync.config=` does not override it).
    pub config_given: bool,
    pub observe: bool,
    pub status_file: PathBuf,
    /// `--user`: the account to switch to after opening the devices.
    pub user: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            action: Action::Run,
            config: PathBuf::from(DEFAULT_CONFIG_PATH),
            config_given: false,
            observe: false,
            status_file: PathBuf::from(crate::status::STATUS_PATH),
            user: None,
        }
    }
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
    #[error("option `{0}` given more than once")]
    Repeated(&'static str),
    #[error("options `{0}` and `{1}` exclude each other")]
    Conflict(&'static str, &'static str),
    #[error("option `{0}` does not apply to `status`")]
    NotForStatus(&'static str),
}

/// Parses the arguments after the program name. Options take their value
/// as the next argument or after `=`; paths are kept as bytes, so any path
/// works. `-h`/`--help` wins over what follows it; the first error ends
/// parsing. `status` must come first.
pub fn parse_args<I>(args: I) -> Result<Command, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut options = Options::default();
    let mut status_file_seen = false;
    let mut args = args.into_iter().peekable();
    let status = args.peek().is_some_and(|first| first == "status");
    if status {
        args.next();
        options.action = Action::Status { json: false };
    }
    let set_action = |options: &mut Options, action: Action, name: &'static str| {
        if status {
            return Err(ArgsError::NotForStatus(name));
        }
        match options.action {
            Action::Run => {
                options.action = action;
                Ok(())
            }
            current if current == action => Err(ArgsError::Repeated(name)),
            Action::CheckConfig => Err(ArgsError::Conflict("--check-config", name)),
            _ => Err(ArgsError::Conflict("--once", name)),
        }
    };
    while let Some(arg) = args.next() {
        let arg = Arg::new(arg);
        match arg.name() {
            "-h" | "--help" => {
                arg.flag(ArgsError::UnexpectedValue("--help"))?;
                return Ok(Command::Help);
            }
            "--version" => {
                arg.flag(ArgsError::UnexpectedValue("--version"))?;
                return Ok(Command::Version);
            }
            "--check-config" => {
                arg.flag(ArgsError::UnexpectedValue("--check-config"))?;
                set_action(&mut options, Action::CheckConfig, "--check-config")?;
            }
            "--once" => {
                arg.flag(ArgsError::UnexpectedValue("--once"))?;
                set_action(&mut options, Action::Once, "--once")?;
                options.observe = true;
            }
            "--observe" => {
                arg.flag(ArgsError::UnexpectedValue("--observe"))?;
                if status {
                    return Err(ArgsError::NotForStatus("--observe"));
                }
                options.observe = true;
            }
            "--json" => {
                arg.flag(ArgsError::UnexpectedValue("--json"))?;
                match &mut options.action {
                    Action::Status { json } if !*json => *json = true,
                    Action::Status { .. } => return Err(ArgsError::Repeated("--json")),
                    _ => return Err(ArgsError::UnknownArgument("--json".into())),
                }
            }
            "--config" => {
                if status {
                    return Err(ArgsError::NotForStatus("--config"));
                }
                if options.config_given {
                    return Err(ArgsError::Repeated("--config"));
                }
                options.config_given = true;
                options.config = path_value(&arg, &mut args, "--config")?;
            }
            "--user" => {
                if status {
                    return Err(ArgsError::NotForStatus("--user"));
                }
                if options.user.is_some() {
                    return Err(ArgsError::Repeated("--user"));
                }
                match arg.value(&mut args) {
                    Some(value) if !value.is_empty() => {
                        options.user = Some(value.to_string_lossy().into_owned());
                    }
                    _ => return Err(ArgsError::MissingValue("--user")),
                }
            }
            "--status-file" => {
                if status_file_seen {
                    return Err(ArgsError::Repeated("--status-file"));
                }
                status_file_seen = true;
                options.status_file = path_value(&arg, &mut args, "--status-file")?;
            }
            _ => return Err(ArgsError::UnknownArgument(arg.into_text())),
        }
    }
    Ok(Command::Run(options))
}

fn path_value(
    arg: &Arg,
    args: &mut impl Iterator<Item = OsString>,
    name: &'static str,
) -> Result<PathBuf, ArgsError> {
    match arg.value(args) {
        Some(value) if !value.is_empty() => Ok(PathBuf::from(value)),
        _ => Err(ArgsError::MissingValue(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ArgsError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run(config: &str, check_config: bool) -> Result<Command, ArgsError> {
        Ok(Command::Run(Options {
            action: if check_config {
                Action::CheckConfig
            } else {
                Action::Run
            },
            config: config.into(),
            config_given: config != DEFAULT_CONFIG_PATH,
            ..Options::default()
        }))
    }

    #[test]
    fn defaults() {
        assert_eq!(parse(&[]), run("/etc/timesync.conf", false));
    }

    #[test]
    fn config_and_check() {
        assert_eq!(
            parse(&["--config", "/tmp/t.conf"]),
            run("/tmp/t.conf", false)
        );
        assert_eq!(
            parse(&["--config=/tmp/a=b.conf"]),
            run("/tmp/a=b.conf", false)
        );
        assert_eq!(
            parse(&["--check-config", "--config", "x.conf"]),
            run("x.conf", true)
        );
        assert_eq!(parse(&["--check-config"]), run("/etc/timesync.conf", true));
    }

    #[test]
    fn observe_once_status() {
        let Ok(Command::Run(o)) = parse(&["--observe"]) else {
            panic!()
        };
        assert!(o.observe && o.action == Action::Run);
        let Ok(Command::Run(o)) = parse(&["--once", "--config", "c"]) else {
            panic!()
        };
        assert!(o.observe && o.action == Action::Once);
        let Ok(Command::Run(o)) = parse(&["status", "--json", "--status-file", "/tmp/s"]) else {
            panic!()
        };
        assert_eq!(o.action, Action::Status { json: true });
        assert_eq!(o.status_file, PathBuf::from("/tmp/s"));
        let Ok(Command::Run(o)) = parse(&["status"]) else {
            panic!()
        };
        assert_eq!(o.action, Action::Status { json: false });
        assert_eq!(o.status_file, PathBuf::from("/run/timesync/status"));
        assert_eq!(
            parse(&["status", "--once"]),
            Err(ArgsError::NotForStatus("--once"))
        );
        assert_eq!(
            parse(&["status", "--config", "x"]),
            Err(ArgsError::NotForStatus("--config"))
        );
        assert_eq!(
            parse(&["--json"]),
            Err(ArgsError::UnknownArgument("--json".into()))
        );
        assert_eq!(
            parse(&["--once", "--check-config"]),
            Err(ArgsError::Conflict("--once", "--check-config"))
        );
        assert_eq!(
            parse(&["--check-config", "--once"]),
            Err(ArgsError::Conflict("--check-config", "--once"))
        );
        assert_eq!(
            parse(&["--once", "--once"]),
            Err(ArgsError::Repeated("--once"))
        );
        let Ok(Command::Run(o)) = parse(&["--user", "timesync"]) else {
            panic!()
        };
        assert_eq!(o.user.as_deref(), Some("timesync"));
        assert_eq!(parse(&["--user"]), Err(ArgsError::MissingValue("--user")));
        assert_eq!(
            parse(&["status", "--user", "x"]),
            Err(ArgsError::NotForStatus("--user"))
        );
        assert_eq!(
            parse(&["--status-file"]),
            Err(ArgsError::MissingValue("--status-file"))
        );
        // `status` is a command only in first place.
        assert_eq!(
            parse(&["--observe", "status"]),
            Err(ArgsError::UnknownArgument("status".into()))
        );
    }

    #[test]
    fn non_utf8_config_path_is_kept_exactly() {
        use std::os::unix::ffi::OsStringExt;
        let path = OsString::from_vec(b"/tmp/\xff.conf".to_vec());
        let mut inline = b"--config=".to_vec();
        inline.extend_from_slice(b"/tmp/\xff.conf");
        for args in [
            vec![OsString::from("--config"), path.clone()],
            vec![OsString::from_vec(inline)],
        ] {
            assert_eq!(
                parse_args(args),
                Ok(Command::Run(Options {
                    config: PathBuf::from(path.clone()),
                    config_given: true,
                    ..Options::default()
                }))
            );
        }
    }

    #[test]
    fn help() {
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
        assert_eq!(parse(&["--version"]), Ok(Command::Version));
        assert_eq!(parse(&["-h", "--bogus"]), Ok(Command::Help));
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&["--bogus"]),
            Err(ArgsError::UnknownArgument("--bogus".into()))
        );
        assert_eq!(
            parse(&["-f", "x"]),
            Err(ArgsError::UnknownArgument("-f".into()))
        );
        assert_eq!(
            parse(&["--config"]),
            Err(ArgsError::MissingValue("--config"))
        );
        assert_eq!(
            parse(&["--config="]),
            Err(ArgsError::MissingValue("--config"))
        );
        assert_eq!(
            parse(&["--config", "a", "--config", "b"]),
            Err(ArgsError::Repeated("--config"))
        );
        assert_eq!(
            parse(&["--check-config", "--check-config"]),
            Err(ArgsError::Repeated("--check-config"))
        );
        assert_eq!(
            parse(&["--check-config=yes"]),
            Err(ArgsError::UnexpectedValue("--check-config"))
        );
        assert_eq!(
            ArgsError::UnknownArgument("--bogus".into()).to_string(),
            "unknown argument `--bogus`"
        );
    }
}
