//! The multi-call front end: `init` as PID 1 or as a client, `poweroff`,
//! `reboot`, `halt` and `systemctl` (its verbs in [`crate::systemctl`]).

use std::path::Path;

use crate::supervisor::{PowerKind, ShutdownRequest, Urgency};
use crate::{boot, control, Mode, CONTROL_SOCKET};

const USAGE: &str = "\
usage: init                      run as PID 1 (of a VM, or of a container when $container is set)
       init status [--json]      list units: state, pid, restarts, uptime
       init poweroff|reboot|halt [--force]
       poweroff|reboot|halt [-f]  ask init to shut down (-f: sync and reboot(2) at once)
       systemctl [--force [--force]] poweroff|reboot|halt
       systemctl status|list-units|is-active|is-failed|is-enabled|show|is-system-running
                                  (systemctl --help)
";

/// Dispatches on argv[0]; returns the exit status (PID 1 never returns).
pub fn main(args: &[String]) -> i32 {
    if rustix::process::getpid() == rustix::process::Pid::INIT {
        // Before anything that could panic: as PID 1 a panic syncs and
        // powers off instead of ending PID 1 (a kernel panic in a VM).
        boot::install_panic_hook();
    }
    let argv0 = args.first().map(String::as_str).unwrap_or("init");
    let name = Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("init");
    let rest = args.get(1..).unwrap_or_default();
    match name {
        "poweroff" => power_command(PowerKind::Poweroff, rest),
        "reboot" => power_command(PowerKind::Reboot, rest),
        "halt" => power_command(PowerKind::Halt, rest),
        "systemctl" => crate::systemctl::main(rest),
        // Only as init's own child at shutdown (see boot::filesystems_down).
        // One file system's sync, for the shutdown child (any process may
        // sync a file system).
        boot::SHUTDOWN_FS if rest.first().is_some_and(|a| a == "--syncfs") => {
            shutdown_logger();
            match rest.get(1) {
                Some(path) => boot::syncfs_one(path).into(),
                None => 2,
            }
        }
        boot::SHUTDOWN_FS => {
            if rustix::process::getppid() != Some(rustix::process::Pid::INIT) {
                eprintln!("{name}: internal to init's shutdown; refusing to run");
                return 2;
            }
            shutdown_logger();
            boot::shutdown_fs(rest.iter().any(|a| a == "--unmount"));
            0
        }
        // For minimal rootfs images without coreutils (kata-agent.service's
        // ExecStop runs /bin/sync).
        "sync" => {
            rustix::fs::sync();
            0
        }
        _ if rustix::process::getpid().is_init() => boot::run(rest),
        _ => init_client(rest),
    }
}

/// The log of init's shutdown personalities: stderr in a container, else
/// the kernel log.
fn shutdown_logger() {
    crate::logger::install(log::LevelFilter::Info);
    if std::env::var_os("container").is_some() {
        crate::logger::use_stderr();
    } else {
        crate::logger::use_kmsg();
    }
}

fn init_client(args: &[String]) -> i32 {
    let force = args.iter().any(|a| a == "--force" || a == "-f");
    let verbs: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match verbs.as_slice() {
        ["status"] if args.iter().any(|a| a == "--json") => status_json(),
        ["status"] => status(),
        ["poweroff"] => ask(PowerKind::Poweroff, force),
        ["reboot"] => ask(PowerKind::Reboot, force),
        ["halt"] => ask(PowerKind::Halt, force),
        [] if args.iter().any(|a| a == "--version") => {
            println!("minos init {}", minos_common::version());
            0
        }
        [] if args.iter().any(|a| a == "--help" || a == "-h") => {
            print!("{USAGE}");
            0
        }
        _ => {
            eprintln!(
                "init: not PID 1, and {:?} is not a command\n{USAGE}",
                args.join(" ")
            );
            2
        }
    }
}

/// `poweroff`, `reboot`, `halt` as systemd's legacy commands take them.
fn power_command(mut kind: PowerKind, args: &[String]) -> i32 {
    let mut force = false;
    let mut sync = true;
    for a in args {
        match a.as_str() {
            "-f" | "--force" => force = true,
            "-p" | "--poweroff" => kind = PowerKind::Poweroff,
            "--reboot" => kind = PowerKind::Reboot,
            "--halt" => kind = PowerKind::Halt,
            "-n" | "--no-sync" => sync = false,
            "-w" | "--wtmp-only" => return 0,
            "-d" | "--no-wtmp" | "--no-wall" | "-i" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return 0;
            }
            other => {
                eprintln!("{}: unknown option {other}", kind.name());
                return 2;
            }
        }
    }
    if force {
        // As systemd's: -f does not contact init.
        immediate(kind, sync)
    } else {
        ask(kind, false)
    }
}

/// `systemctl poweroff|reboot|halt` with `forces` times `--force`.
pub(crate) fn power(kind: PowerKind, forces: usize) -> i32 {
    match forces {
        0 => ask(kind, false),
        1 => ask(kind, true),
        _ => immediate(kind, true),
    }
}

/// `init status --json`: the `units` answer as JSON.
#[inline(never)]
#[cold]
fn status_json() -> i32 {
    let text = match control::request(Path::new(CONTROL_SOCKET), "units") {
        Ok(text) if !text.starts_with("error:") => text,
        Ok(text) => {
            eprint!("status: {text}");
            return 1;
        }
        Err(e) => {
            eprintln!("status: connect to {CONTROL_SOCKET}: {e}");
            return 1;
        }
    };
    println!("{}", crate::systemctl::Units::parse(&text).to_json());
    0
}

pub(crate) fn status() -> i32 {
    match control::request(Path::new(CONTROL_SOCKET), "status") {
        Ok(text) => {
            print!("{text}");
            i32::from(text.starts_with("error:"))
        }
        Err(e) => {
            eprintln!("status: connect to {CONTROL_SOCKET}: {e}");
            1
        }
    }
}

/// Asks init over the control socket; falls back to the signal systemd's
/// PID 1 understands too.
fn ask(kind: PowerKind, force: bool) -> i32 {
    let line = format!("{}{}", kind.name(), if force { " force" } else { "" });
    match control::request(Path::new(CONTROL_SOCKET), &line) {
        Ok(text) if text.starts_with("ok") => 0,
        Ok(text) => {
            eprint!("{}: {text}", kind.name());
            1
        }
        Err(e) => {
            let rt = crate::sys::sigrtmin();
            let sig = match kind {
                PowerKind::Halt => rt + 3,
                PowerKind::Poweroff => rt + 4,
                PowerKind::Reboot => rt + 5,
            };
            match crate::sys::kill_pid(1, sig) {
                Ok(()) => 0,
                Err(e2) => {
                    eprintln!(
                        "{}: connect to {CONTROL_SOCKET}: {e}; signal PID 1: {e2}",
                        kind.name()
                    );
                    1
                }
            }
        }
    }
}

/// sync (unless -n) and reboot(2) at once.
fn immediate(kind: PowerKind, sync: bool) -> i32 {
    if sync {
        rustix::fs::sync();
    }
    let req = ShutdownRequest {
        kind,
        urgency: Urgency::Immediate,
    };
    if rustix::process::getpid().is_init() {
        let mode = if std::env::var_os("container").is_some() {
            Mode::Container
        } else {
            Mode::Vm
        };
        boot::finish(req, mode);
    }
    let cmd = match kind {
        PowerKind::Poweroff => rustix::system::RebootCommand::PowerOff,
        PowerKind::Reboot => rustix::system::RebootCommand::Restart,
        PowerKind::Halt => rustix::system::RebootCommand::Halt,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: reboot(2): {e}", kind.name());
            1
        }
    }
}
