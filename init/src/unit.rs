//! Unit files: the documented subset of systemd's syntax (see docs/units.md).
//!
//! Parsing is pure: [`parse`] takes the file's text and returns a [`Unit`] plus
//! every diagnostic found, so one bad line never hides the next one and never
//! stops the other units.

use std::path::PathBuf;
use std::time::Duration;

/// How a service tells init that it has started (`Type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// Started as soon as the process is forked.
    #[default]
    Simple,
    /// Started once `execve` succeeded.
    Exec,
    /// Started once the process exited successfully.
    Oneshot,
    /// Started once the process sent `READY=1` on `NOTIFY_SOCKET`.
    Notify,
}

/// `Restart=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    #[default]
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
    OnWatchdog,
}

/// `SuccessAction=` / `FailureAction=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    #[default]
    None,
    /// Orderly shutdown: stop units, kill the rest, sync, unmount, reboot(2).
    Poweroff,
    Reboot,
    Halt,
    /// Skip stopping units; kill everything, sync, unmount, reboot(2).
    PoweroffForce,
    RebootForce,
    HaltForce,
    /// sync and reboot(2) at once.
    PoweroffImmediate,
    RebootImmediate,
    HaltImmediate,
    /// `exit`/`exit-force`: like poweroff (init's exit ends the VM or container).
    Exit,
    ExitForce,
}

/// Where a standard stream goes (`StandardInput=`, `StandardOutput=`, `StandardError=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdio {
    Null,
    /// The unit's `TTYPath=` (default `/dev/console`).
    Tty,
    /// init's own stream (for stderr: whatever stdout is, as systemd does).
    Inherit,
    /// `/dev/kmsg` (`kmsg`, `journal`, `journal+console`, `kmsg+console` map here).
    Kmsg,
    /// `file:PATH` (open for writing, no truncation).
    File(PathBuf),
    /// `append:PATH`.
    Append(PathBuf),
    /// `truncate:PATH`.
    Truncate(PathBuf),
}

/// One command line of `ExecStart=` and friends, already split into words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The words of the command line, `argv[0]` first: an absolute path or a
    /// bare name looked up in PATH. Unexpanded: `$VAR`/`${VAR}` are replaced
    /// at start time by [`expand`] when `expand_env` is set.
    pub argv: Vec<String>,
    /// Prefix `@`: the second word is passed as argv[0].
    pub argv0: Option<String>,
    /// Prefix `-`: a non-zero exit of this command is not a failure.
    pub ignore_failure: bool,
    /// Prefix `:` clears it: no environment variable substitution.
    pub expand_env: bool,
    /// Prefix `+`: runs with full privileges (User=, Group=, capability and
    /// NoNewPrivileges settings do not apply).
    pub privileged: bool,
}

/// `ConditionPathExists=`: `path` must exist, or must not when `negate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCondition {
    pub path: PathBuf,
    pub negate: bool,
}

/// A resource limit (`LimitNOFILE=` ...): soft and hard, `None` = infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub resource: LimitResource,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitResource {
    Cpu,
    Fsize,
    Data,
    Stack,
    Core,
    Rss,
    Nofile,
    As,
    Nproc,
    Memlock,
    Locks,
    Sigpending,
    Msgqueue,
    Nice,
    Rtprio,
    Rttime,
}

/// A parsed unit: `[Unit]` and `[Service]` sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// File name, e.g. `kata-agent.service`.
    pub name: String,
    pub description: Option<String>,
    pub after: Vec<String>,
    pub before: Vec<String>,
    pub requires: Vec<String>,
    pub wants: Vec<String>,
    pub conditions: Vec<PathCondition>,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    pub success_action: Action,
    pub failure_action: Action,
    pub service: Service,
}

/// The `[Service]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub kind: ServiceType,
    pub exec_start_pre: Vec<Command>,
    /// Exactly one command, except for oneshot (which may have several).
    pub exec_start: Vec<Command>,
    pub exec_stop: Vec<Command>,
    /// `Environment=` assignments, in order.
    pub environment: Vec<(String, String)>,
    /// `EnvironmentFile=`, read when the unit starts; `optional` for a leading `-`.
    pub environment_files: Vec<(PathBuf, bool)>,
    pub working_directory: Option<PathBuf>,
    /// User name or numeric uid, resolved against /etc/passwd at start.
    pub user: Option<String>,
    pub group: Option<String>,
    pub umask: Option<u32>,
    pub limits: Vec<Limit>,
    pub oom_score_adjust: Option<i32>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    pub tty_path: PathBuf,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub remain_after_exit: bool,
    pub timeout_start: Duration,
    pub kill_signal: i32,
    pub timeout_stop: Duration,
    /// Capability numbers (CAP_SYS_TIME = 25 ...).
    pub ambient_capabilities: Vec<u32>,
    /// `None` = not set (keep all).
    pub capability_bounding_set: Option<Vec<u32>>,
    pub no_new_privileges: bool,
}
