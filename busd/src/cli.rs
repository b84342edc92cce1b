//! Command line, the listening socket (socket activation or `--listen`) and
//! the runtime.

use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use minos_common::args::{Arg, Command};

use crate::cgroup::Layout;
use crate::dbus::{self, Shared};
use crate::manager::Manager;

const HELP: &str = "\
usage: busd [--cgroup-root PATH] [--listen PATH | --system-bus | --address ADDRESS]

org.freedesktop.systemd1 (transient scopes and slices) over cgroupfs.

  (no mode)          be the system bus on the socket passed by socket
                     activation (LISTEN_FDS, fd 3)
  --listen PATH      be the system bus on a socket bound at PATH
  --system-bus       connect to the system bus and own org.freedesktop.systemd1
  --address ADDRESS  the same on the bus at a D-Bus address (unix:path=...)
  --cgroup-root PATH where the cgroup hierarchies are (default /sys/fs/cgroup)
  --version          print the version and the commit it was built from
";

/// What to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Be the bus on the socket-activated descriptor.
    Activated,
    /// Be the bus on a socket bound here.
    Listen(PathBuf),
    /// Own the name on a bus daemon (`None`: the system bus).
    Bus(Option<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    pub cgroup_root: PathBuf,
}

/// A refused command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown option {0}")]
    Unknown(String),
    #[error("option {0} needs a value")]
    Missing(String),
    #[error("option {0} takes no value")]
    Unexpected(String),
    #[error("--listen, --system-bus and --address exclude each other")]
    Modes,
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command<Options>, ArgsError> {
    let mut args = args.into_iter();
    let mut mode = None;
    let mut root = PathBuf::from("/sys/fs/cgroup");
    let set_mode = |m: Mode, mode: &mut Option<Mode>| {
        if mode.replace(m).is_some() {
            Err(ArgsError::Modes)
        } else {
            Ok(())
        }
    };
    while let Some(raw) = args.next() {
        let arg = Arg::new(raw);
        let name = arg.name().to_string();
        let value = |args: &mut dyn Iterator<Item = OsString>| {
            let mut it = args;
            arg.value(&mut it)
                .ok_or_else(|| ArgsError::Missing(name.clone()))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--version" => return Ok(Command::Version),
            "--listen" => set_mode(Mode::Listen(value(&mut args)?.into()), &mut mode)?,
            "--address" => {
                let a = value(&mut args)?.to_string_lossy().into_owned();
                set_mode(Mode::Bus(Some(a)), &mut mode)?;
            }
            "--system-bus" => {
                arg.flag(ArgsError::Unexpected(name.clone()))?;
                set_mode(Mode::Bus(None), &mut mode)?;
            }
            "--cgroup-root" => root = value(&mut args)?.into(),
            _ => return Err(ArgsError::Unknown(arg.into_text())),
        }
    }
    Ok(Command::Run(Options {
        mode: mode.unwrap_or(Mode::Activated),
        cgroup_root: root,
    }))
}

/// The program: parse, set up, serve. Errors are logged; the exit status
/// is 2 for a bad command line, 1 for anything else.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let opts = match parse(args) {
        Ok(Command::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("busd {}", minos_common::version());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(o)) => o,
        Err(e) => {
            log::error!("{e} (busd --help)");
            return ExitCode::from(2);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: &Options) -> Result<(), String> {
    let layout =
        Layout::detect(&opts.cgroup_root).map_err(|e| minos_common::Report(&e).to_string())?;
    log::info!("units in {}", layout.describe());
    let shared = Shared::new(Manager::new(layout));
    crate::rt::block_on(async {
        crate::rt::spawn(dbus::watch_scopes(shared.clone())).detach();
        match &opts.mode {
            Mode::Bus(address) => {
                let what = address.as_deref().unwrap_or("the system bus");
                dbus::serve_bus(shared.clone(), address.as_deref())
                    .await
                    .map_err(|e| format!("{what}: {e}"))
            }
            Mode::Activated | Mode::Listen(_) => {
                let listener = listener(&opts.mode)?;
                notify_ready();
                accept_loop(shared, listener).await
            }
        }
    })
}

async fn accept_loop(shared: Arc<Shared>, listener: Listener) -> Result<(), String> {
    loop {
        match listener.accept().await.and_then(|(s, _)| s.into_inner()) {
            Ok(stream) => {
                crate::rt::spawn(dbus::serve_peer(shared.clone(), stream)).detach();
            }
            Err(e) => {
                // EMFILE and the like: wait a moment rather than spin.
                log::error!("cannot accept a connection: {e}");
                crate::rt::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

type Listener = async_io::Async<std::os::unix::net::UnixListener>;

/// `READY=1` to the service manager when it asked (`NOTIFY_SOCKET`).
pub(crate) fn notify_ready() {
    if let Some(socket) = minos_common::notify::socket_from_env() {
        if let Err(e) = minos_common::notify::notify(&socket, "READY=1") {
            log::warn!("{}", minos_common::Report(&e));
        }
    }
}

/// The socket to accept on: fd 3 from socket activation, or a new one
/// bound at the `--listen` path (a stale socket there — nothing accepts a
/// connection — is replaced, a live one refused; the
/// socket is world-connectable as a system bus is, calls are checked).
fn listener(mode: &Mode) -> Result<Listener, String> {
    let std_listener = match mode {
        Mode::Listen(path) => {
            use std::os::unix::fs::{FileTypeExt, PermissionsExt};
            if let Ok(m) = std::fs::symlink_metadata(path) {
                if m.file_type().is_socket() {
                    // Stale only if nothing listens: a live bus is not ours
                    // to take over.
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(format!(
                            "cannot listen on {}: another process listens there",
                            path.display()
                        ));
                    }
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
                }
            }
            let l = std::os::unix::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
                .map_err(|e| format!("cannot make {} connectable: {e}", path.display()))?;
            log::info!("listening on {}", path.display());
            l
        }
        _ => activated()?,
    };
    async_io::Async::new(std_listener).map_err(|e| format!("cannot use the listening socket: {e}"))
}

/// systemd's socket activation: `LISTEN_PID` is this process and
/// `LISTEN_FDS` at least 1; the first descriptor is 3.
fn activated() -> Result<std::os::unix::net::UnixListener, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let me = std::process::id().to_string();
    let n: u32 = match (pid.as_deref(), fds.as_deref()) {
        (Some(p), Some(n)) if p == me => n
            .parse()
            .map_err(|_| format!("LISTEN_FDS={n} is not a number"))?,
        (Some(p), Some(_)) => {
            return Err(format!(
                "LISTEN_PID={p} is not this process ({me}); no socket to serve (--listen PATH?)"
            ))
        }
        _ => {
            return Err(
                "no socket: neither socket activation (LISTEN_FDS) nor --listen PATH".into(),
            )
        }
    };
    if n == 0 {
        return Err("LISTEN_FDS=0: no socket passed".into());
    }
    if n > 1 {
        log::warn!("LISTEN_FDS={n}: only the first socket (fd 3) is served");
    }
    const FD: i32 = 3;
    // Check before taking ownership that fd 3 is open and a socket.
    // SAFETY: LISTEN_PID names this process, so the service manager passed
    // fd 3 and it stays open for this function (busd opens and closes no
    // descriptor of its own in between); should the manager have lied,
    // fcntl reports EBADF before anything else uses the borrow.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(FD) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| format!("LISTEN_FDS: fd 3 is not open: {e}"))?;
    let st = rustix::fs::fstat(borrowed).map_err(|e| format!("fd 3: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err("LISTEN_FDS: fd 3 is not a socket".into());
    }
    if !rustix::net::sockopt::socket_acceptconn(borrowed).unwrap_or(false) {
        return Err("LISTEN_FDS: fd 3 is not a listening socket".into());
    }
    // SAFETY: the service manager passed fd 3 to this process (LISTEN_PID
    // is ours), it is open and a listening socket (checked above), and it is
    // taken over exactly once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(FD) };
    rustix::io::fcntl_setfd(fd.as_fd(), rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("fd 3: {e}"))?;
    log::info!("serving the socket passed by socket activation");
    Ok(std::os::unix::net::UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command<Options>, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn listen_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bus");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = listener(&Mode::Listen(path.clone())).err().unwrap();
        assert!(err.contains("another process listens there"), "{err}");
        // The live one still has its file.
        assert!(path.exists());
        drop(live);
        // Now stale (nobody accepts): replaced.
        let ours = listener(&Mode::Listen(path.clone())).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(ours);
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            p(&[]).unwrap(),
            Command::Run(Options {
                mode: Mode::Activated,
                cgroup_root: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(
            p(&["--listen=/tmp/s", "--cgroup-root", "/x"]).unwrap(),
            Command::Run(Options {
                mode: Mode::Listen("/tmp/s".into()),
                cgroup_root: "/x".into()
            })
        );
        assert_eq!(
            p(&["--address", "unix:path=/b"]).unwrap(),
            Command::Run(Options {
                mode: Mode::Bus(Some("unix:path=/b".into())),
                cgroup_root: "/sys/fs/cgroup".into()
            })
        );
        assert_eq!(p(&["-h"]).unwrap(), Command::Help);
        assert_eq!(p(&["--version"]).unwrap(), Command::Version);
        assert_eq!(p(&["--bogus"]), Err(ArgsError::Unknown("--bogus".into())));
        assert_eq!(p(&["--listen"]), Err(ArgsError::Missing("--listen".into())));
        assert_eq!(
            p(&["--system-bus=1"]),
            Err(ArgsError::Unexpected("--system-bus".into()))
        );
        assert_eq!(
            p(&["--system-bus", "--listen", "/s"]),
            Err(ArgsError::Modes)
        );
    }
}
