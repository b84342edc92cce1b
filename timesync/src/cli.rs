//! Command line of timesync.

use std::ffi::OsString;
use std::path::PathBuf;

use minos_common::args::Arg;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/timesync.conf";

pub const USAGE: &str = "\
usage: timesync [--config PATH] [--check-config]

Time-sync daemon in chronyd's role. This version is an observe-only
skeleton: it reads the configuration, reports its sources and waits for
SIGTERM or SIGINT. It never adjusts any clock.

options:
  --config PATH   configuration in chrony syntax (default /etc/timesync.conf)
  --check-config  parse the configuration, print diagnostics, exit 0 when it
                  has no errors and 1 otherwise
  -h, --help      print this help
";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub config: PathBuf,
    pub check_config: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: PathBuf::from(DEFAULT_CONFIG_PATH),
            check_config: false,
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
}

/// Parses the arguments after the program name. `--config` takes its value
/// as the next argument or after `=`; the path is kept as bytes, so any path
/// works. `-h`/`--help` wins over what follows it; the first error ends
/// parsing.
pub fn parse_args<I>(args: I) -> Result<Command, ArgsError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut options = Options::default();
    let mut config_seen = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = Arg::new(arg);
        match arg.name() {
            "-h" | "--help" => {
                arg.flag(ArgsError::UnexpectedValue("--help"))?;
                return Ok(Command::Help);
            }
            "--check-config" => {
                arg.flag(ArgsError::UnexpectedValue("--check-config"))?;
                if options.check_config {
                    return Err(ArgsError::Repeated("--check-config"));
                }
                options.check_config = true;
            }
            "--config" => {
                if config_seen {
                    return Err(ArgsError::Repeated("--config"));
                }
                config_seen = true;
                let value = arg
                    .value(&mut args)
                    .ok_or(ArgsError::MissingValue("--config"))?;
                if value.is_empty() {
                    return Err(ArgsError::MissingValue("--config"));
                }
                options.config = PathBuf::from(value);
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

    fn run(config: &str, check_config: bool) -> Result<Command, ArgsError> {
        Ok(Command::Run(Options {
            config: config.into(),
            check_config,
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
                    check_config: false
                }))
            );
        }
    }

    #[test]
    fn help() {
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
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
