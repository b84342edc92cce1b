//! Unit files: the documented subset of systemd's syntax (see docs/units.md).
//!
//! Parsing is pure: [`parse`] takes the file's text and returns a [`Unit`] plus
//! every diagnostic found, so one bad line never hides the next one and never
//! stops the other units.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
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
    /// Started once the process exited successfully, leaving a daemon
    /// behind: its pid is read from `PIDFile=`.
    Forking,
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

/// A `Condition…=` line: what it tests, which must hold (or must not,
/// with `!` in front: `negate`) for the unit to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub test: ConditionTest,
    pub negate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConditionTest {
    /// `ConditionPathExists=`: the path exists.
    PathExists(PathBuf),
    /// `ConditionPathIsMountPoint=`: a file system is mounted on the path.
    PathIsMountPoint(PathBuf),
    /// `ConditionKernelCommandLine=`: a word of the command line is this
    /// one (`KEY=VALUE`), or (`KEY`) is it or starts with `KEY=`.
    KernelCommandLine(String),
    /// `ConditionVirtualization=`: `vm`, `container`, a boolean (any
    /// virtualisation), or a technology's name.
    Virtualization(String),
}

impl Condition {
    /// The key and the value as a unit file writes them.
    pub fn show(&self) -> String {
        let not = if self.negate { "!" } else { "" };
        match &self.test {
            ConditionTest::PathExists(p) => format!("ConditionPathExists={not}{}", p.display()),
            ConditionTest::PathIsMountPoint(p) => {
                format!("ConditionPathIsMountPoint={not}{}", p.display())
            }
            ConditionTest::KernelCommandLine(w) => format!("ConditionKernelCommandLine={not}{w}"),
            ConditionTest::Virtualization(v) => format!("ConditionVirtualization={not}{v}"),
        }
    }
}

/// `RuntimeDirectoryPreserve=`: whether the runtime directories outlive a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preserve {
    /// Removed whenever the service stops, also before an automatic restart.
    #[default]
    No,
    /// Never removed by init (they go with /run).
    Yes,
    /// Kept across automatic restarts, removed when the service stops for good.
    Restart,
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
    /// `OnFailure=`: units started when this one fails;
    /// `poweroff.target`, `reboot.target` and `halt.target` power off,
    /// reboot or halt instead.
    pub on_failure: Vec<String>,
    /// `RequiresMountsFor=`: paths whose /etc/fstab mounts must be there
    /// when the unit starts.
    pub requires_mounts_for: Vec<PathBuf>,
    pub conditions: Vec<Condition>,
    pub start_limit_interval: Duration,
    pub start_limit_burst: u32,
    pub success_action: Action,
    pub failure_action: Action,
    pub service: Service,
    /// The `[Socket]` section: `Some` for a `.socket` unit (which has no
    /// `[Service]`).
    pub socket: Option<Box<Socket>>,
    /// Loaded only to be started by its socket unit: not started at boot
    /// (set by `boot::select`, never by the parser).
    pub on_demand: bool,
}

/// A `ListenStream=` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// A socket file: an absolute path.
    Path(PathBuf),
    /// A Linux abstract socket (`@name`): no file, no owner or mode.
    Abstract(String),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Path(p) => write!(f, "{}", p.display()),
            ListenAddress::Abstract(n) => write!(f, "@{n}"),
        }
    }
}

/// The `[Socket]` section of a `.socket` unit (stream sockets, `Accept=no`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// `ListenStream=` addresses, in file order: the service's fds 3, 4, ...
    pub listen: Vec<ListenAddress>,
    /// `SocketMode=`: the socket file's mode.
    pub socket_mode: u32,
    /// `DirectoryMode=`: the mode of parent directories init creates.
    pub directory_mode: u32,
    /// `SocketUser=`, `SocketGroup=`: names or numeric ids, resolved at start.
    pub user: Option<String>,
    pub group: Option<String>,
    /// `Service=`, else the socket's own name with `.service` (set once the
    /// file is read).
    pub service: String,
    /// `FileDescriptorName=` (`None`: the socket unit's name).
    pub fd_name: Option<String>,
    pub remove_on_stop: bool,
    /// `Backlog=` (`None`: as many as the kernel allows, net.core.somaxconn).
    pub backlog: Option<u32>,
}

/// `SocketMode=` default (systemd's).
pub const DEFAULT_SOCKET_MODE: u32 = 0o666;
/// `DirectoryMode=` default (systemd's).
pub const DEFAULT_DIRECTORY_MODE: u32 = 0o755;
/// The longest socket path or abstract name (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

impl Default for Socket {
    fn default() -> Self {
        Socket {
            listen: Vec::new(),
            socket_mode: DEFAULT_SOCKET_MODE,
            directory_mode: DEFAULT_DIRECTORY_MODE,
            user: None,
            group: None,
            service: String::new(),
            fd_name: None,
            remove_on_stop: false,
            backlog: None,
        }
    }
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
    /// `RuntimeDirectory=`: names relative to [`RUNTIME_DIRECTORY_ROOT`]
    /// (no `..`, `.` or empty components), created when the unit starts.
    pub runtime_directory: Vec<String>,
    /// `RuntimeDirectoryMode=`: the mode of each named directory.
    pub runtime_directory_mode: u32,
    pub runtime_directory_preserve: Preserve,
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
    /// `PIDFile=` (Type=forking): where the daemon's pid is read; a
    /// relative name is below /run, as systemd has it.
    pub pid_file: Option<PathBuf>,
    pub timeout_start: Duration,
    pub kill_signal: i32,
    pub timeout_stop: Duration,
    /// Capability numbers (CAP_SYS_TIME = 25 ...).
    pub ambient_capabilities: Vec<u32>,
    /// `None` = not set (keep all).
    pub capability_bounding_set: Option<Vec<u32>>,
    pub no_new_privileges: bool,
    /// `TasksMax=`: the pids limit of the unit's cgroup (`None` = not set).
    pub tasks_max: Option<TasksMax>,
}

/// `TasksMax=`: how many tasks (processes and threads) the unit's cgroup may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TasksMax {
    /// An absolute number of tasks.
    Count(u64),
    /// Per ten thousand of the system's limit (`kernel.pid_max`): `15%` = 1500.
    Permyriad(u32),
    /// `infinity`: a cgroup with no limit.
    Infinity,
}

impl TasksMax {
    /// The value for the cgroup's `pids.max` file, given `kernel.pid_max`.
    pub fn pids_max(self, pid_max: u64) -> String {
        match self {
            TasksMax::Count(n) => n.to_string(),
            TasksMax::Permyriad(p) => (pid_max.saturating_mul(u64::from(p)) / 10_000)
                .max(1)
                .to_string(),
            TasksMax::Infinity => "max".to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------
// Defaults and constructors
// ---------------------------------------------------------------------------

/// `RestartSec=` default (systemd's).
pub const DEFAULT_RESTART_SEC: Duration = Duration::from_millis(100);
/// `TimeoutStartSec=` / `TimeoutStopSec=` default (systemd's `DefaultTimeout*Sec=`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// `StartLimitIntervalSec=` default.
pub const DEFAULT_START_LIMIT_INTERVAL: Duration = Duration::from_secs(10);
/// `StartLimitBurst=` default.
pub const DEFAULT_START_LIMIT_BURST: u32 = 5;
/// `KillSignal=` default: SIGTERM.
pub const DEFAULT_KILL_SIGNAL: i32 = 15;
/// Where `RuntimeDirectory=` names are created.
pub const RUNTIME_DIRECTORY_ROOT: &str = "/run";
/// `RuntimeDirectoryMode=` default.
pub const DEFAULT_RUNTIME_DIRECTORY_MODE: u32 = 0o755;
/// `TTYPath=` default.
pub const DEFAULT_TTY_PATH: &str = "/dev/console";
/// [`load`] refuses files larger than this.
pub const MAX_FILE_SIZE: u64 = crate::sys::MAX_READ;
/// Highest capability number known here (`CAP_CHECKPOINT_RESTORE`).
pub const CAP_LAST: u32 = 40;

impl Default for Service {
    fn default() -> Self {
        Service {
            kind: ServiceType::Simple,
            exec_start_pre: Vec::new(),
            exec_start: Vec::new(),
            exec_stop: Vec::new(),
            environment: Vec::new(),
            environment_files: Vec::new(),
            working_directory: None,
            runtime_directory: Vec::new(),
            runtime_directory_mode: DEFAULT_RUNTIME_DIRECTORY_MODE,
            runtime_directory_preserve: Preserve::No,
            user: None,
            group: None,
            umask: None,
            limits: Vec::new(),
            oom_score_adjust: None,
            stdin: Stdio::Null,
            stdout: Stdio::Inherit,
            stderr: Stdio::Inherit,
            tty_path: PathBuf::from(DEFAULT_TTY_PATH),
            restart: Restart::No,
            restart_sec: DEFAULT_RESTART_SEC,
            remain_after_exit: false,
            pid_file: None,
            timeout_start: DEFAULT_TIMEOUT,
            kill_signal: DEFAULT_KILL_SIGNAL,
            timeout_stop: DEFAULT_TIMEOUT,
            ambient_capabilities: Vec::new(),
            capability_bounding_set: None,
            no_new_privileges: false,
            tasks_max: None,
        }
    }
}

impl Unit {
    /// A unit with every setting at its default.
    pub fn new(name: impl Into<String>) -> Self {
        Unit {
            name: name.into(),
            description: None,
            after: Vec::new(),
            before: Vec::new(),
            requires: Vec::new(),
            wants: Vec::new(),
            on_failure: Vec::new(),
            requires_mounts_for: Vec::new(),
            conditions: Vec::new(),
            start_limit_interval: DEFAULT_START_LIMIT_INTERVAL,
            start_limit_burst: DEFAULT_START_LIMIT_BURST,
            success_action: Action::None,
            failure_action: Action::None,
            service: Service::default(),
            socket: None,
            on_demand: false,
        }
    }

    /// A `.target` unit: `[Unit]` only, no process.
    pub fn is_target(&self) -> bool {
        self.name.ends_with(".target")
    }

    /// A `.socket` unit (parsed with a `[Socket]` section).
    pub fn is_socket(&self) -> bool {
        self.socket.is_some()
    }
}

impl Default for Unit {
    fn default() -> Self {
        Unit::new(String::new())
    }
}

impl Command {
    /// A command with no prefixes (environment expansion on).
    pub fn new(argv: Vec<String>) -> Self {
        Command {
            argv,
            argv0: None,
            ignore_failure: false,
            expand_env: true,
            privileged: false,
        }
    }
}

impl LimitResource {
    /// Every resource with its key, in systemd's order.
    pub const ALL: [(LimitResource, &'static str); 16] = [
        (LimitResource::Cpu, "LimitCPU"),
        (LimitResource::Fsize, "LimitFSIZE"),
        (LimitResource::Data, "LimitDATA"),
        (LimitResource::Stack, "LimitSTACK"),
        (LimitResource::Core, "LimitCORE"),
        (LimitResource::Rss, "LimitRSS"),
        (LimitResource::Nofile, "LimitNOFILE"),
        (LimitResource::As, "LimitAS"),
        (LimitResource::Nproc, "LimitNPROC"),
        (LimitResource::Memlock, "LimitMEMLOCK"),
        (LimitResource::Locks, "LimitLOCKS"),
        (LimitResource::Sigpending, "LimitSIGPENDING"),
        (LimitResource::Msgqueue, "LimitMSGQUEUE"),
        (LimitResource::Nice, "LimitNICE"),
        (LimitResource::Rtprio, "LimitRTPRIO"),
        (LimitResource::Rttime, "LimitRTTIME"),
    ];

    /// The unit-file key, e.g. `LimitNOFILE`.
    pub fn key(self) -> &'static str {
        LimitResource::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("", |(_, k)| k)
    }

    /// The resource for a unit-file key.
    pub fn from_key(key: &str) -> Option<LimitResource> {
        LimitResource::ALL
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(r, _)| *r)
    }

    fn unit_of_value(self) -> LimitValue {
        match self {
            LimitResource::Fsize
            | LimitResource::Data
            | LimitResource::Stack
            | LimitResource::Core
            | LimitResource::Rss
            | LimitResource::As
            | LimitResource::Memlock
            | LimitResource::Msgqueue => LimitValue::Bytes,
            LimitResource::Cpu => LimitValue::Seconds,
            LimitResource::Rttime => LimitValue::Micros,
            LimitResource::Nice => LimitValue::Nice,
            LimitResource::Nofile
            | LimitResource::Nproc
            | LimitResource::Locks
            | LimitResource::Sigpending
            | LimitResource::Rtprio => LimitValue::Count,
        }
    }
}

#[derive(Clone, Copy)]
enum LimitValue {
    Bytes,
    Seconds,
    Micros,
    Nice,
    Count,
}

// ---------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The line or key was ignored; the unit is otherwise fine.
    Warning,
    /// A value was wrong (the key keeps its previous value), or, when
    /// [`Parsed::unit`] is `None`, the unit cannot run.
    Error,
}

/// One finding about a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The path used in messages.
    pub file: String,
    /// 1-based line number (the first line of a continued line); 0 = the whole file.
    pub line: usize,
    pub key: Option<String>,
    pub severity: Severity,
    /// Lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE: KEY: message`; `:LINE` is left out for 0, `KEY: ` when there is no key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// What [`parse`] and [`load`] return.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// `None` when the unit cannot run (malformed file, unusable `ExecStart=`).
    pub unit: Option<Unit>,
    /// Every finding, in file order (whole-file findings last).
    pub diagnostics: Vec<Diagnostic>,
    /// Keys of the silently accepted lists that were set (not
    /// `Documentation=`), each with `FILE:LINE`: the loader warns once
    /// per key and boot that they have no effect.
    pub ignored: Vec<(String, String)>,
}

impl Parsed {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Reads and parses a unit file. A path that is not a regular file (after
/// following symlinks), is larger than [`MAX_FILE_SIZE`] or is not UTF-8 gives
/// no unit and one error naming the problem. The unit's name is the file name.
pub fn load(path: &Path) -> Parsed {
    load_listed(path, false)
}

/// [`load`] for a path a directory listing gave as a regular file
/// (`listed_regular`): the stat before opening, which keeps init from ever
/// opening a device or FIFO by name, is then already done by the listing
/// (the opened file is checked again either way).
pub fn load_listed(path: &Path, listed_regular: bool) -> Parsed {
    let file = path.to_string_lossy();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    match read_unit_file(path, listed_regular) {
        Ok(text) => parse(&name, &file, &text),
        Err(message) => Parsed {
            unit: None,
            diagnostics: vec![Diagnostic {
                file: file.into_owned(),
                line: 0,
                key: None,
                severity: Severity::Error,
                message,
            }],
            ignored: Vec::new(),
        },
    }
}

/// A unit file's text, read with the guards every file in the units
/// directory gets (`.service`, `.socket`, `.target`): never a device or a
/// FIFO, never more than the size limit; the error says why not.
pub fn read_unit_file(path: &Path, listed_regular: bool) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;

    // stat first so that a device or FIFO is never opened; then fstat the
    // opened file in case the path was swapped in between. O_NONBLOCK keeps a
    // FIFO from blocking PID 1, O_NOCTTY keeps a tty from becoming its
    // controlling terminal.
    if !listed_regular {
        let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
        check_metadata(&meta)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    check_metadata(&meta)?;
    let bytes = crate::sys::read_sized(file, meta.len()).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("cannot read: {e}"),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

fn check_metadata(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;

    let t = meta.file_type();
    if !t.is_file() {
        let kind = if t.is_dir() {
            "a directory"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a file"
        };
        return Err(format!("not a regular file ({kind})"));
    }
    if meta.len() > MAX_FILE_SIZE {
        return Err("larger than 1 MiB".to_owned());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Keys of `[Unit]` that systemd knows and that have no meaning here:
/// accepted without a diagnostic, value not checked.
const UNIT_IGNORED: &[&str] = &[
    "Documentation",
    "DefaultDependencies",
    "AllowIsolate",
    "IgnoreOnIsolate",
    "RefuseManualStart",
    "RefuseManualStop",
    "Conflicts",
    "PartOf",
    "BindsTo",
    "JoinsNamespaceOf",
];

/// Keys of `[Service]` accepted without a diagnostic, as [`UNIT_IGNORED`].
const SERVICE_IGNORED: &[&str] = &[
    "Slice",
    "Delegate",
    "KillMode",
    "IgnoreSIGPIPE",
    "MemoryMax",
    "CPUQuota",
    "LogLevelMax",
    "SyslogIdentifier",
];

/// Keys of `[Socket]` accepted without a diagnostic, as [`UNIT_IGNORED`].
const SOCKET_IGNORED: &[&str] = &["PassCredentials", "PassSecurity", "ReusePort", "Symlinks"];

/// `[Socket]` keys for kinds of socket init does not make: the unit is
/// refused (its service would miss a descriptor it expects).
const SOCKET_UNSUPPORTED: &[&str] = &[
    "ListenDatagram",
    "ListenSequentialPacket",
    "ListenFIFO",
    "ListenSpecial",
    "ListenNetlink",
    "ListenMessageQueue",
    "ListenUSBFunction",
];

/// Parses a unit file's text. `name` is the unit's file name (e.g.
/// `kata-agent.service`; a name ending in `.target` makes a target, which has
/// no `[Service]` section and needs no `ExecStart=`), `file` the path used in
/// messages. Never panics; every problem found is in
/// [`Parsed::diagnostics`], and [`Parsed::unit`] is `None` only when the
/// unit cannot run at all.
pub fn parse(name: &str, file: &str, text: &str) -> Parsed {
    parse_fragments(name, &[(file, text)])
}

/// [`parse`] over a unit file and its drop-ins (`NAME.d/*.conf`), in the
/// order given: each fragment starts outside any section (a drop-in needs
/// its own header) and its diagnostics name its own file; the checks of
/// the whole unit (a missing `ExecStart=` …) come after the last one, so a
/// drop-in may reset and replace what the file set (`ExecStart=` then
/// `ExecStart=/new`).
pub fn parse_fragments(name: &str, fragments: &[(&str, &str)]) -> Parsed {
    let mut parser = Parser::new(name, fragments.first().map_or("", |f| f.0));
    for (file, text) in fragments {
        parser.file = (*file).to_owned();
        parser.section = Section::None;
        logical_lines(text, |line, content| parser.line(line, content));
        parser.report_unknown();
    }
    parser.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Before the first header.
    None,
    Unit,
    Service,
    Socket,
    /// `[Install]`, `X-` sections and unknown ones: keys ignored.
    Ignored,
}

struct Parser {
    file: String,
    /// Unknown keys of the current file (line, key), reported as one
    /// warning at `unknown_at` in `diagnostics`.
    unknown: Vec<(usize, String)>,
    unknown_at: usize,
    unknown_file: String,
    ignored: Vec<(String, String)>,
    unit: Unit,
    section: Section,
    diagnostics: Vec<Diagnostic>,
    malformed: bool,
    /// The line of each command in `exec_start`.
    exec_start_lines: Vec<usize>,
    exec_start_failed: bool,
}

/// Splits text into logical lines, as systemd reads them: comment lines are
/// dropped first (so they neither continue nor break a continued line), a
/// line ending in an odd number of backslashes continues on the next one
/// (that backslash becomes a space), and a leading UTF-8 byte order mark is
/// skipped. Gives `each` the 1-based number of each logical line's first
/// line, and the line. A line that continues none is passed as a slice of
/// the text (no allocation per line).
fn logical_lines(text: &str, mut each: impl FnMut(usize, &str)) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let start = raw.trim_start_matches(is_ws);
        if start.starts_with('#') || start.starts_with(';') {
            continue;
        }
        let raw = raw.trim_end_matches(is_ws);
        let continues = raw.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1;
        let body = if continues {
            raw.strip_suffix('\\').unwrap_or(raw)
        } else {
            raw
        };
        if !continues && pending.is_none() {
            each(number, body);
            continue;
        }
        let (first, mut buf) = pending.take().unwrap_or((number, String::new()));
        buf.push_str(body);
        if continues {
            buf.push(' ');
            pending = Some((first, buf));
        } else {
            each(first, &buf);
        }
    }
    if let Some((first, buf)) = pending {
        each(first, &buf);
    }
}

/// systemd's WHITESPACE set.
fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Parser {
    fn new(name: &str, file: &str) -> Self {
        let mut unit = Unit::new(name);
        if name.ends_with(".socket") {
            unit.socket = Some(Box::default());
        }
        Parser {
            file: file.to_owned(),
            unknown: Vec::new(),
            unknown_at: 0,
            unknown_file: String::new(),
            ignored: Vec::new(),
            unit,
            section: Section::None,
            diagnostics: Vec::new(),
            malformed: false,
            exec_start_lines: Vec::new(),
            exec_start_failed: false,
        }
    }

    fn push(&mut self, line: usize, key: Option<&str>, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            file: self.file.clone(),
            line,
            key: key.map(str::to_owned),
            severity,
            message,
        });
    }

    /// Notes an unknown key: one warning for all of a file's, at the place
    /// of the first (a distribution's unit may have dozens of sandboxing
    /// keys, and each warning is a kmsg record on the boot path).
    fn unknown_key(&mut self, line: usize, key: &str) {
        if self.unknown.iter().any(|(_, k)| k == key) {
            return;
        }
        if self.unknown.is_empty() {
            self.unknown_at = self.diagnostics.len();
            self.unknown_file.clone_from(&self.file);
        }
        self.unknown.push((line, key.to_owned()));
    }

    /// The warning for the unknown keys noted, in its place.
    fn report_unknown(&mut self) {
        let Some((first_line, first_key)) = self.unknown.first().cloned() else {
            return;
        };
        let (key, message) = if self.unknown.len() == 1 {
            (Some(first_key), "unknown key, ignored".to_owned())
        } else {
            let list: Vec<String> = self
                .unknown
                .iter()
                .map(|(line, key)| format!("{key}:{line}"))
                .collect();
            (
                None,
                format!(
                    "{} unknown keys, ignored (key:line): {}",
                    self.unknown.len(),
                    list.join(" ")
                ),
            )
        };
        let d = Diagnostic {
            file: std::mem::take(&mut self.unknown_file),
            line: first_line,
            key,
            severity: Severity::Warning,
            message,
        };
        let at = self.unknown_at.min(self.diagnostics.len());
        self.diagnostics.insert(at, d);
        self.unknown.clear();
    }

    fn warn(&mut self, line: usize, key: Option<&str>, message: String) {
        self.push(line, key, Severity::Warning, message);
    }

    /// An error that makes the unit unusable.
    fn fatal(&mut self, line: usize, key: Option<&str>, message: String) {
        self.malformed = true;
        self.push(line, key, Severity::Error, message);
    }

    fn line(&mut self, line: usize, text: &str) {
        let text = text.trim_matches(is_ws);
        if text.is_empty() || text.starts_with('#') || text.starts_with(';') {
            return;
        }
        if let Some(header) = text.strip_prefix('[') {
            self.header(line, text, header);
            return;
        }
        let Some((key, value)) = text.split_once('=') else {
            self.fatal(
                line,
                None,
                format!(
                    "not a section header, assignment or comment: {}",
                    show(text)
                ),
            );
            return;
        };
        let key = key.trim_end_matches(is_ws);
        let value = value.trim_start_matches(is_ws);
        if !valid_key(key) {
            self.fatal(line, None, format!("invalid key name {}", show(key)));
            return;
        }
        match self.section {
            Section::None => self.fatal(
                line,
                Some(key),
                "assignment before any section header".to_owned(),
            ),
            Section::Ignored => {}
            Section::Unit | Section::Service | Section::Socket => self.assign(line, key, value),
        }
    }

    fn header(&mut self, line: usize, text: &str, header: &str) {
        let Some(name) = header.strip_suffix(']') else {
            self.fatal(line, None, format!("invalid section header {}", show(text)));
            // Keys up to the next valid header belong nowhere.
            self.section = Section::Ignored;
            return;
        };
        self.section = match name {
            "Unit" => Section::Unit,
            "Service" if !self.unit.is_target() && !self.unit.is_socket() => Section::Service,
            "Socket" if self.unit.is_socket() => Section::Socket,
            "Install" => Section::Ignored,
            _ if name.starts_with("X-") => Section::Ignored,
            _ => {
                self.warn(
                    line,
                    None,
                    format!("unknown section [{name}], its keys are ignored"),
                );
                Section::Ignored
            }
        };
    }

    fn assign(&mut self, line: usize, key: &str, value: &str) {
        if value.contains('\0') {
            if key == "ExecStart" {
                self.exec_start_failed = true;
                self.fatal(line, Some(key), "value contains a NUL character".to_owned());
            } else {
                self.push(
                    line,
                    Some(key),
                    Severity::Error,
                    "value contains a NUL character, ignored".to_owned(),
                );
            }
            return;
        }
        let outcome = match self.section {
            Section::Unit => self.unit_key(key, value),
            Section::Service => self.service_key(line, key, value),
            Section::Socket => self.socket_key(line, key, value),
            Section::None | Section::Ignored => return,
        };
        match outcome {
            Some(Ok(())) => {}
            Some(Err(message)) => self.push(
                line,
                Some(key),
                Severity::Error,
                format!("{message}, ignored"),
            ),
            None => {
                let ignored = match self.section {
                    Section::Unit => UNIT_IGNORED,
                    Section::Socket => SOCKET_IGNORED,
                    _ => SERVICE_IGNORED,
                };
                if ignored.contains(&key) {
                    if key != "Documentation" && !self.ignored.iter().any(|(k, _)| k == key) {
                        self.ignored
                            .push((key.to_owned(), format!("{}:{line}", self.file)));
                    }
                } else if !key.starts_with("X-") {
                    self.unknown_key(line, key);
                }
            }
        }
    }

    /// Keys valid in both `[Unit]` and `[Service]` (systemd still accepts these
    /// in `[Service]`, where old units such as kata-agent.service have them);
    /// `None` for other keys.
    fn common_key(&mut self, key: &str, value: &str) -> Option<Result<(), String>> {
        let u = &mut self.unit;
        Some(match key {
            "StartLimitIntervalSec" | "StartLimitInterval" => set(
                &mut u.start_limit_interval,
                value,
                DEFAULT_START_LIMIT_INTERVAL,
                timespan,
            ),
            "StartLimitBurst" => set(
                &mut u.start_limit_burst,
                value,
                DEFAULT_START_LIMIT_BURST,
                |v| {
                    v.parse::<u32>()
                        .map_err(|_| format!("invalid number {}", show(v)))
                },
            ),
            "SuccessAction" => set(&mut u.success_action, value, Action::None, action),
            "FailureAction" => set(&mut u.failure_action, value, Action::None, action),
            _ => return None,
        })
    }

    fn unit_key(&mut self, key: &str, value: &str) -> Option<Result<(), String>> {
        if let Some(outcome) = self.common_key(key, value) {
            return Some(outcome);
        }
        let u = &mut self.unit;
        let name = u.name.as_str();
        Some(match key {
            "Description" => {
                u.description = (!value.is_empty()).then(|| value.to_owned());
                Ok(())
            }
            "After" => unit_list(&mut u.after, value, name),
            "Before" => unit_list(&mut u.before, value, name),
            "Requires" => unit_list(&mut u.requires, value, name),
            "Wants" => unit_list(&mut u.wants, value, name),
            "OnFailure" => unit_list(&mut u.on_failure, value, name),
            "RequiresMountsFor" => {
                if value.is_empty() {
                    u.requires_mounts_for.clear();
                    Ok(())
                } else {
                    value
                        .split_whitespace()
                        .map(|p| absolute_path(p, name))
                        .collect::<Result<Vec<_>, _>>()
                        .map(|paths| {
                            for p in paths {
                                if !u.requires_mounts_for.contains(&p) {
                                    u.requires_mounts_for.push(p);
                                }
                            }
                        })
                }
            }
            "ConditionPathExists"
            | "ConditionPathIsMountPoint"
            | "ConditionKernelCommandLine"
            | "ConditionVirtualization" => {
                // As systemd: an empty value resets every condition.
                if value.is_empty() {
                    u.conditions.clear();
                    Ok(())
                } else {
                    condition(key, value, name).map(|c| u.conditions.push(c))
                }
            }
            _ => return None,
        })
    }

    fn service_key(&mut self, line: usize, key: &str, value: &str) -> Option<Result<(), String>> {
        if let Some(outcome) = self.common_key(key, value) {
            return Some(outcome);
        }
        if matches!(key, "ExecStart" | "ExecStartPre" | "ExecStop") {
            return Some(self.exec(line, key, value));
        }
        let name = self.unit.name.as_str();
        let s = &mut self.unit.service;
        if let Some(resource) = LimitResource::from_key(key) {
            return Some(set_limit(&mut s.limits, resource, value));
        }
        Some(match key {
            "Type" => set(&mut s.kind, value, ServiceType::Simple, service_type),
            "Environment" => environment(&mut s.environment, value, name),
            "EnvironmentFile" => {
                if value.is_empty() {
                    s.environment_files.clear();
                    Ok(())
                } else {
                    let (optional, path) = match value.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, value),
                    };
                    absolute_path(path, name).map(|p| s.environment_files.push((p, optional)))
                }
            }
            "WorkingDirectory" => set(&mut s.working_directory, value, None, |v| {
                let v = v.strip_prefix('-').unwrap_or(v);
                if v == "~" {
                    Ok(Some(PathBuf::from("~")))
                } else {
                    absolute_path(v, name).map(Some)
                }
            }),
            "User" => set(&mut s.user, value, None, |v| user_or_group(v).map(Some)),
            "Group" => set(&mut s.group, value, None, |v| user_or_group(v).map(Some)),
            "UMask" => set(&mut s.umask, value, None, |v| octal_mode(v).map(Some)),
            "RuntimeDirectory" => runtime_directories(&mut s.runtime_directory, value, name),
            "RuntimeDirectoryMode" => set(
                &mut s.runtime_directory_mode,
                value,
                DEFAULT_RUNTIME_DIRECTORY_MODE,
                octal_mode,
            ),
            "RuntimeDirectoryPreserve" => set(
                &mut s.runtime_directory_preserve,
                value,
                Preserve::No,
                preserve,
            ),
            "OOMScoreAdjust" => set(&mut s.oom_score_adjust, value, None, |v| {
                oom_score_adjust(v).map(Some)
            }),
            "StandardInput" => set(&mut s.stdin, value, Stdio::Null, input),
            "StandardOutput" => set(&mut s.stdout, value, Stdio::Inherit, |v| output(v, name)),
            "StandardError" => set(&mut s.stderr, value, Stdio::Inherit, |v| output(v, name)),
            "TTYPath" => set(
                &mut s.tty_path,
                value,
                PathBuf::from(DEFAULT_TTY_PATH),
                |v| absolute_path(v, name),
            ),
            "Restart" => set(&mut s.restart, value, Restart::No, restart),
            "RestartSec" => set(&mut s.restart_sec, value, DEFAULT_RESTART_SEC, timespan),
            "RemainAfterExit" => set(&mut s.remain_after_exit, value, false, boolean),
            "PIDFile" => set(&mut s.pid_file, value, None, |v| {
                let v = specifiers(v, name)?;
                Ok(Some(if v.starts_with('/') {
                    PathBuf::from(v.into_owned())
                } else {
                    Path::new("/run").join(v.as_ref())
                }))
            }),
            "TasksMax" => set(&mut s.tasks_max, value, None, |v| tasks_max(v).map(Some)),
            "TimeoutStartSec" => set(&mut s.timeout_start, value, DEFAULT_TIMEOUT, timeout),
            "TimeoutStopSec" => set(&mut s.timeout_stop, value, DEFAULT_TIMEOUT, timeout),
            "TimeoutSec" => set(&mut s.timeout_start, value, DEFAULT_TIMEOUT, timeout).map(|()| {
                s.timeout_stop = s.timeout_start;
            }),
            "KillSignal" => set(&mut s.kill_signal, value, DEFAULT_KILL_SIGNAL, |v| {
                signal_number(v).ok_or_else(|| format!("unknown signal {}", show(v)))
            }),
            "AmbientCapabilities" => {
                if value.is_empty() {
                    s.ambient_capabilities.clear();
                    Ok(())
                } else {
                    capabilities(value).map(|set| {
                        s.ambient_capabilities = union(&s.ambient_capabilities, &set);
                    })
                }
            }
            "CapabilityBoundingSet" => {
                if value.is_empty() {
                    s.capability_bounding_set = None;
                    Ok(())
                } else {
                    capabilities(value).map(|set| {
                        s.capability_bounding_set = Some(match &s.capability_bounding_set {
                            Some(old) => union(old, &set),
                            None => set,
                        });
                    })
                }
            }
            "NoNewPrivileges" => set(&mut s.no_new_privileges, value, false, boolean),
            _ => return None,
        })
    }

    /// `[Socket]` keys. A `ListenStream=` that init cannot listen on, a
    /// bad `Service=`, `Accept=yes` and the other `Listen*=` kinds refuse
    /// the unit; other bad values are ignored with an error.
    fn socket_key(&mut self, line: usize, key: &str, value: &str) -> Option<Result<(), String>> {
        if SOCKET_UNSUPPORTED.contains(&key) {
            self.fatal(
                line,
                Some(key),
                "not supported: init makes stream sockets only (ListenStream=)".to_owned(),
            );
            return Some(Ok(()));
        }
        let name = self.unit.name.as_str();
        let sock = self.unit.socket.as_deref_mut()?;
        let fatal = match key {
            "ListenStream" if value.is_empty() => {
                sock.listen.clear();
                None
            }
            "ListenStream" => match listen_address(value, name) {
                Ok(a) if sock.listen.contains(&a) => {
                    return Some(Err(format!("{a} is already listed")))
                }
                Ok(a) => {
                    sock.listen.push(a);
                    None
                }
                Err(e) => Some(e),
            },
            "Service" if value.is_empty() => {
                sock.service.clear();
                None
            }
            "Service" => match specifiers(value, name) {
                Ok(n) if n.ends_with(".service") && valid_unit_name(&n) => {
                    sock.service = n.into_owned();
                    None
                }
                Ok(n) => Some(format!("{} is not a service name", show(&n))),
                Err(e) => Some(e),
            },
            "Accept" => match boolean(value) {
                Ok(true) => Some(
                    "Accept=yes (a service instance per connection) is not supported, only Accept=no"
                        .to_owned(),
                ),
                _ if value.is_empty() => None,
                Ok(false) => None,
                Err(e) => Some(e),
            },
            _ => {
                return Some(match key {
                    "SocketMode" => {
                        set(&mut sock.socket_mode, value, DEFAULT_SOCKET_MODE, octal_mode)
                    }
                    "DirectoryMode" => set(
                        &mut sock.directory_mode,
                        value,
                        DEFAULT_DIRECTORY_MODE,
                        octal_mode,
                    ),
                    "SocketUser" => set(&mut sock.user, value, None, |v| user_or_group(v).map(Some)),
                    "SocketGroup" => {
                        set(&mut sock.group, value, None, |v| user_or_group(v).map(Some))
                    }
                    "FileDescriptorName" => set(&mut sock.fd_name, value, None, |v| {
                        fd_name(v).map(|n| Some(n.to_owned()))
                    }),
                    "RemoveOnStop" => set(&mut sock.remove_on_stop, value, false, boolean),
                    "Backlog" => set(&mut sock.backlog, value, None, |v| {
                        v.parse::<u32>()
                            .map(Some)
                            .map_err(|_| format!("invalid number {}", show(v)))
                    }),
                    _ => return None,
                });
            }
        };
        if let Some(message) = fatal {
            self.fatal(line, Some(key), message);
        }
        Some(Ok(()))
    }

    /// `ExecStart=`, `ExecStartPre=`, `ExecStop=`. An unusable `ExecStart=`
    /// makes the unit malformed; the others are ignored with an error.
    fn exec(&mut self, line: usize, key: &str, value: &str) -> Result<(), String> {
        let is_start = key == "ExecStart";
        let parsed = if value.is_empty() {
            Ok((Vec::new(), Vec::new()))
        } else {
            exec_line(value, &self.unit.name)
        };
        let (commands, warnings) = match parsed {
            Ok(ok) => ok,
            Err(message) if is_start => {
                self.exec_start_failed = true;
                self.fatal(line, Some(key), message);
                return Ok(());
            }
            Err(message) => return Err(message),
        };
        for warning in warnings {
            self.warn(line, Some(key), warning);
        }
        let s = &mut self.unit.service;
        let list = match key {
            "ExecStart" => &mut s.exec_start,
            "ExecStartPre" => &mut s.exec_start_pre,
            _ => &mut s.exec_stop,
        };
        if value.is_empty() {
            list.clear();
            if is_start {
                self.exec_start_lines.clear();
            }
            return Ok(());
        }
        if is_start {
            self.exec_start_lines
                .extend(std::iter::repeat_n(line, commands.len()));
        }
        list.extend(commands);
        Ok(())
    }

    fn finish(mut self) -> Parsed {
        let u = &mut self.unit;
        for list in [
            &mut u.after,
            &mut u.before,
            &mut u.requires,
            &mut u.wants,
            &mut u.service.runtime_directory,
        ] {
            dedup_keep_first(list);
        }
        if let Some(sock) = self.unit.socket.as_deref_mut() {
            if sock.service.is_empty() {
                let stem = self.unit.name.strip_suffix(".socket").unwrap_or_default();
                sock.service = format!("{stem}.service");
            }
            // As systemd: a socket is set up before the service it starts.
            if !self.unit.before.contains(&sock.service) {
                self.unit.before.push(sock.service.clone());
            }
            if sock.listen.is_empty() && !self.malformed {
                self.fatal(
                    0,
                    None,
                    "missing ListenStream=, nothing to listen on".to_owned(),
                );
            }
        } else if !self.unit.is_target() {
            let s = &self.unit.service;
            if s.exec_start.is_empty() {
                if !self.exec_start_failed {
                    self.fatal(0, None, "missing ExecStart".to_owned());
                }
            } else if s.kind != ServiceType::Oneshot && s.exec_start.len() > 1 {
                let line = self.exec_start_lines.get(1).copied().unwrap_or(0);
                self.fatal(
                    line,
                    Some("ExecStart"),
                    "more than one command, which only Type=oneshot allows".to_owned(),
                );
            }
        }
        Parsed {
            unit: (!self.malformed).then_some(self.unit),
            diagnostics: self.diagnostics,
            ignored: self.ignored,
        }
    }
}

/// Quotes a value for a message (escaped, at most 64 characters).
fn show(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((end, _)) => format!("{:?}...", s.get(..end).unwrap_or_default()),
        None => format!("{s:?}"),
    }
}

/// Assigns `parse(value)` to `slot`, or `default` for an empty value.
fn set<T>(
    slot: &mut T,
    value: &str,
    default: T,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<(), String> {
    *slot = if value.is_empty() {
        default
    } else {
        parse(value)?
    };
    Ok(())
}

fn timespan(v: &str) -> Result<Duration, String> {
    parse_timespan(v).ok_or_else(|| format!("invalid time span {}", show(v)))
}

/// `TimeoutStartSec=`/`TimeoutStopSec=`: 0 means no timeout, as in systemd.
fn timeout(v: &str) -> Result<Duration, String> {
    timespan(v).map(|d| if d.is_zero() { Duration::MAX } else { d })
}

fn boolean(v: &str) -> Result<bool, String> {
    parse_bool(v).ok_or_else(|| format!("invalid boolean {}", show(v)))
}

fn service_type(v: &str) -> Result<ServiceType, String> {
    match v {
        "simple" => Ok(ServiceType::Simple),
        "exec" => Ok(ServiceType::Exec),
        "oneshot" => Ok(ServiceType::Oneshot),
        "notify" => Ok(ServiceType::Notify),
        "forking" => Ok(ServiceType::Forking),
        "dbus" | "idle" | "notify-reload" => Err(format!("{} is not supported", show(v))),
        _ => Err(format!("unknown service type {}", show(v))),
    }
}

fn restart(v: &str) -> Result<Restart, String> {
    Ok(match v {
        "no" => Restart::No,
        "always" => Restart::Always,
        "on-success" => Restart::OnSuccess,
        "on-failure" => Restart::OnFailure,
        "on-abnormal" => Restart::OnAbnormal,
        "on-abort" => Restart::OnAbort,
        "on-watchdog" => Restart::OnWatchdog,
        _ => return Err(format!("unknown restart policy {}", show(v))),
    })
}

fn action(v: &str) -> Result<Action, String> {
    Ok(match v {
        "none" => Action::None,
        "exit" => Action::Exit,
        "exit-force" => Action::ExitForce,
        "poweroff" => Action::Poweroff,
        "poweroff-force" => Action::PoweroffForce,
        "poweroff-immediate" => Action::PoweroffImmediate,
        "reboot" => Action::Reboot,
        "reboot-force" => Action::RebootForce,
        "reboot-immediate" => Action::RebootImmediate,
        "halt" => Action::Halt,
        "halt-force" => Action::HaltForce,
        "halt-immediate" => Action::HaltImmediate,
        _ => return Err(format!("unknown action {}", show(v))),
    })
}

fn input(v: &str) -> Result<Stdio, String> {
    match v {
        "null" => Ok(Stdio::Null),
        "tty" | "tty-force" | "tty-fail" => Ok(Stdio::Tty),
        "socket" | "data" => Err(format!("{} is not supported", show(v))),
        _ if v.starts_with("fd") || v.starts_with("file:") => {
            Err(format!("{} is not supported", show(v)))
        }
        _ => Err(format!("unknown input {}", show(v))),
    }
}

fn output(v: &str, unit_name: &str) -> Result<Stdio, String> {
    Ok(match v {
        "null" => Stdio::Null,
        "tty" => Stdio::Tty,
        "inherit" => Stdio::Inherit,
        "kmsg" | "kmsg+console" | "journal" | "journal+console" | "syslog" | "syslog+console" => {
            Stdio::Kmsg
        }
        "socket" | "fd" => return Err(format!("{} is not supported", show(v))),
        _ => {
            if let Some(p) = v.strip_prefix("file:") {
                Stdio::File(absolute_path(p, unit_name)?)
            } else if let Some(p) = v.strip_prefix("append:") {
                Stdio::Append(absolute_path(p, unit_name)?)
            } else if let Some(p) = v.strip_prefix("truncate:") {
                Stdio::Truncate(absolute_path(p, unit_name)?)
            } else if v.starts_with("fd:") {
                return Err(format!("{} is not supported", show(v)));
            } else {
                return Err(format!("unknown output {}", show(v)));
            }
        }
    })
}

/// Expands specifiers and requires an absolute path.
fn absolute_path(v: &str, unit_name: &str) -> Result<PathBuf, String> {
    let v = specifiers(v, unit_name)?;
    if v.starts_with('/') {
        Ok(PathBuf::from(v.into_owned()))
    } else {
        Err(format!("{} is not an absolute path", show(&v)))
    }
}

fn condition(key: &str, v: &str, unit_name: &str) -> Result<Condition, String> {
    if v.starts_with('|') {
        return Err("triggering conditions (\"|\") are not supported".to_owned());
    }
    let (negate, v) = match v.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let test = match key {
        "ConditionPathIsMountPoint" => {
            ConditionTest::PathIsMountPoint(absolute_path(v, unit_name)?)
        }
        "ConditionKernelCommandLine" => {
            let w = specifiers(v, unit_name)?;
            if w.is_empty() || w.contains(char::is_whitespace) {
                return Err(format!("{} is not one command-line word", show(&w)));
            }
            ConditionTest::KernelCommandLine(w.into_owned())
        }
        "ConditionVirtualization" => {
            if v.is_empty() || v.contains(char::is_whitespace) {
                return Err(format!("{} is not a virtualisation name", show(v)));
            }
            ConditionTest::Virtualization(v.to_owned())
        }
        _ => ConditionTest::PathExists(absolute_path(v, unit_name)?),
    };
    Ok(Condition { test, negate })
}

/// A unit name as systemd allows it: `prefix[@instance].type`.
fn valid_unit_name(n: &str) -> bool {
    const TYPES: &[&str] = &[
        "service",
        "target",
        "mount",
        "socket",
        "device",
        "swap",
        "path",
        "timer",
        "slice",
        "scope",
        "automount",
    ];
    let Some((prefix, suffix)) = n.rsplit_once('.') else {
        return false;
    };
    n.len() <= 255
        && !prefix.is_empty()
        && !prefix.starts_with('@')
        && TYPES.contains(&suffix)
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@'))
}

/// `ListenStream=`: an absolute socket path or an `@abstract` name, with
/// specifiers expanded.
fn listen_address(value: &str, unit_name: &str) -> Result<ListenAddress, String> {
    let v = specifiers(value, unit_name)?;
    let too_long = || {
        format!(
            "{} is longer than {MAX_SOCKET_PATH} bytes, the limit of a unix socket address",
            show(&v)
        )
    };
    if let Some(name) = v.strip_prefix('@') {
        if name.is_empty() {
            return Err("empty abstract socket name".to_owned());
        }
        if v.len() > MAX_SOCKET_PATH {
            return Err(too_long());
        }
        return Ok(ListenAddress::Abstract(name.to_owned()));
    }
    if v.starts_with('/') {
        if v.ends_with('/') {
            return Err(format!("{} names a directory, not a socket", show(&v)));
        }
        if v.len() > MAX_SOCKET_PATH {
            return Err(too_long());
        }
        return Ok(ListenAddress::Path(PathBuf::from(v.into_owned())));
    }
    let kind = if v.starts_with("vsock:") {
        "a vsock address"
    } else if v.bytes().all(|b| b.is_ascii_digit()) || v.contains(':') {
        "a port or IP address"
    } else {
        "a relative path"
    };
    Err(format!(
        "{} is {kind}: only absolute unix socket paths and @abstract names are supported",
        show(&v)
    ))
}

/// `FileDescriptorName=`: 1 to 255 printable ASCII characters, no `:`
/// (sd_listen_fds_with_names(3) splits `LISTEN_FDNAMES` at colons).
fn fd_name(v: &str) -> Result<&str, String> {
    if v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        Ok(v)
    } else {
        Err(format!(
            "invalid descriptor name {} (at most 255 printable ASCII characters, no ':' or space)",
            show(v)
        ))
    }
}

/// `After=` and friends: whitespace-separated unit names, appended (duplicates
/// are removed once the whole file is read); an empty value clears the list.
fn unit_list(list: &mut Vec<String>, value: &str, unit_name: &str) -> Result<(), String> {
    if value.is_empty() {
        list.clear();
        return Ok(());
    }
    let mut bad = Vec::new();
    for word in value.split(is_ws).filter(|w| !w.is_empty()) {
        match specifiers(word, unit_name) {
            Ok(n) if valid_unit_name(&n) => list.push(n.into_owned()),
            Ok(n) => bad.push(format!("invalid unit name {}", show(&n))),
            Err(e) => bad.push(e),
        }
    }
    joined(bad)
}

/// Removes repeated names, keeping the first of each (linear, whatever the size).
fn dedup_keep_first(list: &mut Vec<String>) {
    if list.len() < 2 {
        return;
    }
    if list.len() <= 16 {
        // Few names (nearly always): compared in place, nothing hashed or copied.
        let mut kept: Vec<String> = Vec::with_capacity(list.len());
        for n in list.drain(..) {
            if !kept.contains(&n) {
                kept.push(n);
            }
        }
        *list = kept;
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    list.retain(|n| seen.insert(n.clone()));
}

/// The errors about the words of one line, as one message (the first three).
fn joined(errors: Vec<String>) -> Result<(), String> {
    const SHOWN: usize = 3;
    let mut message = match errors.get(..SHOWN) {
        Some(first) => first.join("; "),
        None if errors.is_empty() => return Ok(()),
        None => errors.join("; "),
    };
    if errors.len() > SHOWN {
        message.push_str(&format!(" (and {} more)", errors.len() - SHOWN));
    }
    Err(message)
}

/// A user or group: a name (letters, digits, `_`, `-`, `.`, not starting
/// with a digit or `-`, optional trailing `$`, at most 32 characters) or a
/// numeric id (not 65535 or 4294967295).
fn user_or_group(v: &str) -> Result<String, String> {
    let valid = if v.bytes().all(|b| b.is_ascii_digit()) {
        v.parse::<u32>()
            .is_ok_and(|id| id != u32::MAX && id != 65535)
    } else {
        let name = v.strip_suffix('$').unwrap_or(v);
        let mut chars = name.chars();
        name.len() <= 32
            && chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    if valid {
        Ok(v.to_owned())
    } else {
        Err(format!("invalid user or group name {}", show(v)))
    }
}

/// `UMask=`, `RuntimeDirectoryMode=`: 1 to 4 octal digits (at most 07777).
fn octal_mode(v: &str) -> Result<u32, String> {
    if !v.is_empty() && v.len() <= 4 && v.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        u32::from_str_radix(v, 8).map_err(|_| format!("invalid octal mode {}", show(v)))
    } else {
        Err(format!("invalid octal mode {}", show(v)))
    }
}

/// `RuntimeDirectory=`: whitespace-separated names relative to /run, with
/// specifiers expanded; repeated lines append (duplicates are removed once
/// the whole file is read), an empty value clears the list. One bad name
/// makes the whole line an error (as for capabilities): a unit should not
/// run with half of its directories.
fn runtime_directories(list: &mut Vec<String>, value: &str, unit_name: &str) -> Result<(), String> {
    if value.is_empty() {
        list.clear();
        return Ok(());
    }
    let mut names = Vec::new();
    let mut bad = Vec::new();
    for word in value.split(is_ws).filter(|w| !w.is_empty()) {
        match specifiers(word, unit_name)
            .map(Cow::into_owned)
            .and_then(runtime_directory_name)
        {
            Ok(n) => names.push(n),
            Err(e) => bad.push(e),
        }
    }
    joined(bad)?;
    list.extend(names);
    Ok(())
}

/// A relative path without empty, `.` or `..` components (systemd rejects
/// `..` and quietly normalises the others; here they are errors, so that a
/// name is exactly the directory that is created and removed). `:` would
/// split `$RUNTIME_DIRECTORY` (and is systemd's symlink syntax, which is not
/// supported).
fn runtime_directory_name(n: String) -> Result<String, String> {
    if n.starts_with('/') {
        Err(format!("{} is not a relative path", show(&n)))
    } else if n.split('/').any(|c| matches!(c, "" | "." | "..")) {
        Err(format!(
            "{} has an empty, \".\" or \"..\" component",
            show(&n)
        ))
    } else if n.contains(':') {
        Err(format!("{} contains \":\"", show(&n)))
    } else {
        Ok(n)
    }
}

/// `RuntimeDirectoryPreserve=`: `restart` or a boolean (`yes`/`no`).
fn preserve(v: &str) -> Result<Preserve, String> {
    if v == "restart" {
        return Ok(Preserve::Restart);
    }
    match parse_bool(v) {
        Some(true) => Ok(Preserve::Yes),
        Some(false) => Ok(Preserve::No),
        None => Err(format!(
            "invalid value {} (expected no, yes or restart)",
            show(v)
        )),
    }
}

fn oom_score_adjust(v: &str) -> Result<i32, String> {
    match v.parse::<i32>() {
        Ok(n) if (-1000..=1000).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{} is out of range -1000..1000", show(v))),
        Err(_) => Err(format!("invalid number {}", show(v))),
    }
}

/// `TasksMax=`: `N`, `N%` (of `kernel.pid_max`, up to two decimals) or
/// `infinity`. `0` is refused, as systemd refuses it.
fn tasks_max(v: &str) -> Result<TasksMax, String> {
    if v == "infinity" {
        return Ok(TasksMax::Infinity);
    }
    if let Some(pct) = v.strip_suffix('%') {
        let (whole, frac) = pct.split_once('.').unwrap_or((pct, ""));
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !(frac.is_empty() || (digits(frac) && frac.len() <= 2)) {
            return Err(format!("invalid percentage {}", show(v)));
        }
        let whole: u32 = whole
            .parse()
            .map_err(|_| format!("invalid percentage {}", show(v)))?;
        let frac: u32 = format!("{frac:0<2}").parse().unwrap_or(0);
        let permyriad = whole.saturating_mul(100).saturating_add(frac);
        return match permyriad {
            1..=10_000 => Ok(TasksMax::Permyriad(permyriad)),
            _ => Err(format!("{} is out of range (0%, 100%]", show(v))),
        };
    }
    match v.parse::<u64>() {
        Ok(0) => Err("0 is not allowed (use infinity for no limit)".to_owned()),
        Ok(n) => Ok(TasksMax::Count(n)),
        Err(_) => Err(format!("invalid number of tasks {}", show(v))),
    }
}

/// `Environment=`: whitespace-separated `NAME=value` words, quoted and
/// escaped like exec lines; a bad word is reported and skipped.
fn environment(
    env: &mut Vec<(String, String)>,
    value: &str,
    unit_name: &str,
) -> Result<(), String> {
    if value.is_empty() {
        env.clear();
        return Ok(());
    }
    let mut bad = Vec::new();
    for word in split_words(value)? {
        let word = match specifiers(&word.text, unit_name) {
            Ok(w) => w,
            Err(e) => {
                bad.push(e);
                continue;
            }
        };
        match word.split_once('=') {
            Some((name, val)) if valid_env_name(name) => {
                env.push((name.to_owned(), val.to_owned()))
            }
            _ => bad.push(format!("invalid assignment {}", show(&word))),
        }
    }
    joined(bad)
}

fn valid_env_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A capability list line; `~` inverts it. An error if any name is unknown
/// (the line is then ignored as a whole).
fn capabilities(value: &str) -> Result<Vec<u32>, String> {
    let (invert, list) = match value.strip_prefix('~') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let mut mask: u64 = 0;
    let mut bad = Vec::new();
    for word in list.split(is_ws).filter(|w| !w.is_empty()) {
        match capability_number(word) {
            Some(n) => mask |= 1 << n,
            None => bad.push(format!("unknown capability {}", show(word))),
        }
    }
    joined(bad)?;
    if invert {
        mask = !mask;
    }
    Ok((0..=CAP_LAST).filter(|n| mask & (1 << n) != 0).collect())
}

fn union(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = a.iter().chain(b).copied().collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn set_limit(limits: &mut Vec<Limit>, resource: LimitResource, value: &str) -> Result<(), String> {
    if value.is_empty() {
        limits.retain(|l| l.resource != resource);
        return Ok(());
    }
    let kind = resource.unit_of_value();
    let (soft, hard) = match value.split_once(':') {
        Some((soft, hard)) => (limit_value(kind, soft)?, limit_value(kind, hard)?),
        None => {
            let v = limit_value(kind, value)?;
            (v, v)
        }
    };
    let soft_above_hard = match (soft, hard) {
        (None, Some(_)) => true,
        (Some(s), Some(h)) => s > h,
        _ => false,
    };
    if soft_above_hard {
        return Err(format!("soft limit above hard limit in {}", show(value)));
    }
    let limit = Limit {
        resource,
        soft,
        hard,
    };
    match limits.iter_mut().find(|l| l.resource == resource) {
        Some(existing) => *existing = limit,
        None => limits.push(limit),
    }
    Ok(())
}

/// One side of a limit; `None` = infinity.
fn limit_value(kind: LimitValue, v: &str) -> Result<Option<u64>, String> {
    let v = v.trim_matches(is_ws);
    if v == "infinity" {
        return Ok(None);
    }
    let bad = || format!("invalid limit {}", show(v));
    let n = match kind {
        LimitValue::Bytes => parse_size(v).ok_or_else(bad)?,
        LimitValue::Count => v
            .parse::<u64>()
            .ok()
            .filter(|_| all_digits(v))
            .ok_or_else(bad)?,
        LimitValue::Seconds => {
            let ns = parse_time_ns(v, NANOS_PER_SEC).ok_or_else(bad)?;
            u64::try_from(ns.div_ceil(NANOS_PER_SEC)).map_err(|_| bad())?
        }
        LimitValue::Micros => {
            let ns = parse_time_ns(v, 1_000).ok_or_else(bad)?;
            u64::try_from(ns / 1_000).map_err(|_| bad())?
        }
        LimitValue::Nice => nice_limit(v).ok_or_else(bad)?,
    };
    Ok((n != u64::MAX).then_some(n))
}

/// `LimitNICE=`: `+N`/`-N` is a nice level (-20..19, mapped to 20 - N);
/// a bare number is the raw limit (0..40).
fn nice_limit(v: &str) -> Option<u64> {
    if let Some(n) = v.strip_prefix('+') {
        let n: u64 = all_digits(n).then(|| n.parse().ok()).flatten()?;
        (n <= 19).then(|| 20 - n)
    } else if let Some(n) = v.strip_prefix('-') {
        let n: u64 = all_digits(n).then(|| n.parse().ok()).flatten()?;
        (n <= 20).then(|| 20 + n)
    } else {
        let n: u64 = all_digits(v).then(|| v.parse().ok()).flatten()?;
        (n <= 40).then_some(n)
    }
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A size with an optional base-1024 suffix (`B`, `K`, `M`, `G`, `T`, `P`, `E`).
fn parse_size(v: &str) -> Option<u64> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, suffix) = v.split_at_checked(digits)?;
    let shift = match suffix.trim_start_matches(is_ws) {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    number.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

// ---------------------------------------------------------------------------
// Exec lines
// ---------------------------------------------------------------------------

/// A word of an exec or `Environment=` line: a slice of the line unless
/// quotes or escapes made it differ.
struct Word<'l> {
    text: Cow<'l, str>,
    /// A bare `;`: separates commands.
    separator: bool,
}

/// systemd's word splitting (`extract_first_word` with unquoting and C
/// escapes): whitespace separates words, `"..."` and `'...'` group (also in
/// the middle of a word), backslash escapes everywhere.
fn split_words(s: &str) -> Result<Vec<Word<'_>>, String> {
    // Most lines quote and escape nothing: their words are slices.
    if !s.contains(['"', '\'', '\\']) {
        return Ok(s
            .split(is_ws)
            .filter(|w| !w.is_empty())
            .map(|w| Word {
                separator: w == ";",
                text: Cow::Borrowed(w),
            })
            .collect());
    }
    split_quoted_words(s)
}

/// [`split_words`] with quotes and escapes, char by char.
fn split_quoted_words(s: &str) -> Result<Vec<Word<'static>>, String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|&c| is_ws(c)).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut text = String::new();
        let mut quote: Option<char> = None;
        let mut plain = true;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (_, '\\') => {
                    plain = false;
                    text.push(unescape(&mut chars)?);
                }
                (None, '"' | '\'') => {
                    plain = false;
                    quote = Some(c);
                }
                (Some(q), _) if c == q => quote = None,
                (None, _) if is_ws(c) => break,
                _ => text.push(c),
            }
        }
        if let Some(q) = quote {
            return Err(format!("unterminated {q} quote"));
        }
        let separator = plain && text == ";";
        words.push(Word {
            text: Cow::Owned(text),
            separator,
        });
    }
}

fn unescape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    let Some(c) = chars.next() else {
        return Err("trailing backslash".to_owned());
    };
    let code = match c {
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'n' => 0x0a,
        'r' => 0x0d,
        't' => 0x09,
        'v' => 0x0b,
        's' => 0x20,
        '\\' | '"' | '\'' | ';' => u32::from(c),
        'x' => ascii_escape(c, digits(chars, 2, 16))?,
        'u' => digits(chars, 4, 16).ok_or("invalid \\u escape")?,
        'U' => digits(chars, 8, 16).ok_or("invalid \\U escape")?,
        '0'..='7' => {
            let rest = digits(chars, 2, 8);
            ascii_escape(c, rest.map(|r| c.to_digit(8).unwrap_or(0) * 64 + r))?
        }
        _ => return Err(format!("invalid escape \\{c}")),
    };
    match char::from_u32(code) {
        Some(ch) if code != 0 => Ok(ch),
        _ => Err(format!(
            "escape \\{c} does not give a valid non-NUL character"
        )),
    }
}

/// `\xNN` and `\NNN` give one byte, which must be ASCII to keep the text UTF-8.
fn ascii_escape(kind: char, code: Option<u32>) -> Result<u32, String> {
    match code {
        Some(n) if n < 0x80 => Ok(n),
        Some(_) => Err(format!("escape \\{kind} above 0x7f is not supported")),
        None => Err(format!("invalid \\{kind} escape")),
    }
}

/// Reads exactly `n` digits in `radix`.
fn digits(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    n: usize,
    radix: u32,
) -> Option<u32> {
    let mut value: u32 = 0;
    for _ in 0..n {
        let d = chars.next()?.to_digit(radix)?;
        value = value.checked_mul(radix)?.checked_add(d)?;
    }
    Some(value)
}

/// Expands `%%`, `%n` (unit name), `%N` (name without type suffix) and `%p`
/// (prefix: the part before `@`, or `%N`).
/// systemd's unescaping of a unit name part (`unit_name_unescape`): `-` is
/// `/`, `\xNN` the byte NN; invalid escapes stay as they are.
pub fn unescape_name(s: &str) -> String {
    let mut bytes = Vec::with_capacity(s.len());
    let raw = s.as_bytes();
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'-' {
            bytes.push(b'/');
            i += 1;
            continue;
        }
        if b == b'\\' && raw.get(i + 1) == Some(&b'x') {
            let hex = raw
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                bytes.push(v);
                i += 4;
                continue;
            }
        }
        bytes.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The instance of `name@instance.type`, when it has one.
pub fn instance_of(unit_name: &str) -> Option<&str> {
    let without_suffix = unit_name.rsplit_once('.').map_or(unit_name, |(n, _)| n);
    without_suffix
        .split_once('@')
        .map(|(_, i)| i)
        .filter(|i| !i.is_empty())
}

/// The template of an instance: `name@instance.type` → `name@.type`.
pub fn template_of(unit_name: &str) -> Option<String> {
    let (stem, suffix) = unit_name.rsplit_once('.')?;
    let (prefix, instance) = stem.split_once('@')?;
    (!instance.is_empty()).then(|| format!("{prefix}@.{suffix}"))
}

/// A path as systemd's `%f` gives it: `/` and the unescaped part, or `/`
/// for `-`.
fn unescape_path(s: &str) -> String {
    let u = unescape_name(s);
    if u.starts_with('/') {
        u
    } else {
        format!("/{u}")
    }
}

fn specifiers<'s>(s: &'s str, unit_name: &str) -> Result<Cow<'s, str>, String> {
    if !s.contains('%') {
        return Ok(Cow::Borrowed(s));
    }
    let without_suffix = unit_name.rsplit_once('.').map_or(unit_name, |(n, _)| n);
    let prefix = without_suffix
        .split_once('@')
        .map_or(without_suffix, |(p, _)| p);
    let instance = instance_of(unit_name);
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(unit_name),
            Some('N') => out.push_str(without_suffix),
            Some('p') => out.push_str(prefix),
            Some('i') => out.push_str(instance.unwrap_or_default()),
            Some('I') => out.push_str(&unescape_name(instance.unwrap_or_default())),
            Some('f') => out.push_str(&unescape_path(instance.unwrap_or(prefix))),
            // The system manager's runtime directory.
            Some('t') => out.push_str(RUNTIME_DIRECTORY_ROOT),
            Some(other) => return Err(format!("unsupported specifier %{other}")),
            None => return Err("incomplete specifier % at the end".to_owned()),
        }
    }
    Ok(Cow::Owned(out))
}

/// One exec line: commands separated by `;` words. Returns the commands and
/// warnings (unsupported prefixes).
fn exec_line(value: &str, unit_name: &str) -> Result<(Vec<Command>, Vec<String>), String> {
    let words = split_words(value)?;
    let mut groups: Vec<&[Word]> = words.split(|w| w.separator).collect();
    // A trailing `;` is harmless, as in systemd.
    if groups.len() > 1 && groups.last().is_some_and(|g| g.is_empty()) {
        groups.pop();
    }
    let mut commands = Vec::new();
    let mut warnings = Vec::new();
    for group in groups {
        commands.push(command(group, unit_name, &mut warnings)?);
    }
    Ok((commands, warnings))
}

fn command(words: &[Word], unit_name: &str, warnings: &mut Vec<String>) -> Result<Command, String> {
    let mut words = words.iter();
    let first = words.next().ok_or("empty command")?;
    let mut cmd = Command::new(Vec::new());
    let mut separate_argv0 = false;
    let mut plus = false;
    let mut bangs = 0u8;
    let mut rest = &*first.text;
    loop {
        let mut chars = rest.chars();
        match chars.next() {
            Some('-') if !cmd.ignore_failure => cmd.ignore_failure = true,
            Some('@') if !separate_argv0 => separate_argv0 = true,
            Some(':') if cmd.expand_env => cmd.expand_env = false,
            Some('+') if !plus && bangs == 0 => plus = true,
            Some('!') if !plus && bangs < 2 => bangs += 1,
            _ => break,
        }
        rest = chars.as_str();
    }
    if bangs > 0 {
        let prefix = if bangs == 1 { "!" } else { "!!" };
        warnings.push(format!(
            "prefix \"{prefix}\" is not supported, treated as \"+\""
        ));
    }
    cmd.privileged = plus || bangs > 0;
    let path = specifiers(rest, unit_name)?;
    if path.is_empty() {
        return Err("empty executable path".to_owned());
    }
    let is_file_name = !path.contains('/') && path != "." && path != "..";
    if !(is_file_name || path.starts_with('/') && !path.ends_with('/')) {
        return Err(format!(
            "{} is neither an absolute path nor a file name",
            show(&path)
        ));
    }
    if separate_argv0 {
        let argv0 = words
            .next()
            .ok_or("prefix \"@\" needs a word for argv[0] after the path")?;
        cmd.argv0 = Some(specifiers(&argv0.text, unit_name)?.into_owned());
    }
    cmd.argv.push(path.into_owned());
    for word in words {
        cmd.argv
            .push(specifiers(&word.text, unit_name)?.into_owned());
    }
    Ok(cmd)
}

/// Substitutes environment variables in a command's arguments, as systemd
/// does at start time: a word that is exactly `$NAME` becomes the variable's
/// value split at whitespace (no word if unset or empty); `${NAME}` anywhere
/// in a word is replaced by the value (empty if unset); `$$` gives `$`; any
/// other `$` is kept. The command path (`argv[0]`) is never expanded. The
/// last assignment of a name in `env` wins. With `expand_env` unset (prefix
/// `:`), the words are returned unchanged.
pub fn expand(cmd: &Command, env: &[(String, String)]) -> Vec<String> {
    if !cmd.expand_env {
        return cmd.argv.clone();
    }
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut out = Vec::with_capacity(cmd.argv.len());
    let mut words = cmd.argv.iter();
    out.extend(words.next().cloned());
    for word in words {
        let whole = word
            .strip_prefix('$')
            .filter(|n| !n.starts_with('{') && !n.starts_with('$') && !n.is_empty());
        match whole {
            Some(name) => {
                let value = lookup(name).unwrap_or_default();
                out.extend(
                    value
                        .split(is_ws)
                        .filter(|w| !w.is_empty())
                        .map(str::to_owned),
                );
            }
            None => out.push(expand_word(word, &lookup)),
        }
    }
    out
}

fn expand_word<'e>(word: &str, lookup: &impl Fn(&str) -> Option<&'e str>) -> String {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some((before, after)) = rest.split_once('$') {
        out.push_str(before);
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) {
            out.push_str(lookup(name).unwrap_or_default());
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Values shared with the rest of init (command line, control socket)
// ---------------------------------------------------------------------------

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a systemd time span: one or more `NUMBER[UNIT]` parts (whitespace
/// optional), summed; a number without unit is seconds; fractions allowed
/// (`1.5h`); `infinity` gives `Duration::MAX`. Units: `us`/`usec`/`µs`,
/// `ms`/`msec`, `s`/`sec`/`second(s)`, `m`/`min`/`minute(s)`,
/// `h`/`hr`/`hour(s)`, `d`/`day(s)`, `w`/`week(s)`, `M`/`month(s)` (30.44 d),
/// `y`/`year(s)` (365.25 d).
pub fn parse_timespan(s: &str) -> Option<Duration> {
    if s.trim_matches(is_ws) == "infinity" {
        return Some(Duration::MAX);
    }
    let ns = parse_time_ns(s, NANOS_PER_SEC)?;
    let secs = u64::try_from(ns / NANOS_PER_SEC).ok()?;
    let nanos = u32::try_from(ns % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, nanos))
}

/// A time span in nanoseconds; `default_unit` (in ns) applies to bare numbers.
fn parse_time_ns(s: &str, default_unit: u128) -> Option<u128> {
    let mut rest = s.trim_matches(is_ws);
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (int_part, after) = rest.split_at_checked(
            rest.find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len()),
        )?;
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(a) => {
                a.split_at_checked(a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len()))?
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let spaced = after.trim_start_matches(is_ws);
        let (unit, tail) = spaced.split_at_checked(
            spaced
                .find(|c: char| !c.is_alphabetic())
                .unwrap_or(spaced.len()),
        )?;
        // A bare number ends at whitespace or at the end: "1.2.3" is no time span.
        if unit.is_empty() && !spaced.is_empty() && spaced.len() == after.len() {
            return None;
        }
        let multiplier = if unit.is_empty() {
            default_unit
        } else {
            time_unit_ns(unit)?
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().ok()?
        };
        let mut value = int.checked_mul(multiplier)?;
        let (mut frac, mut scale) = (0u128, 1u128);
        for d in frac_part.chars().take(18) {
            frac = frac * 10 + u128::from(d.to_digit(10)?);
            scale *= 10;
        }
        value = value.checked_add(frac.checked_mul(multiplier)? / scale)?;
        total = total.checked_add(value)?;
        rest = tail.trim_start_matches(is_ws);
    }
    Some(total)
}

fn time_unit_ns(unit: &str) -> Option<u128> {
    const SEC: u128 = NANOS_PER_SEC;
    Some(match unit {
        "us" | "usec" | "µs" | "μs" => 1_000,
        "ms" | "msec" => 1_000_000,
        "s" | "sec" | "second" | "seconds" => SEC,
        "m" | "min" | "minute" | "minutes" => 60 * SEC,
        "h" | "hr" | "hour" | "hours" => 3_600 * SEC,
        "d" | "day" | "days" => 86_400 * SEC,
        "w" | "week" | "weeks" => 7 * 86_400 * SEC,
        "M" | "month" | "months" => 2_629_800 * SEC,
        "y" | "year" | "years" => 31_557_600 * SEC,
        _ => return None,
    })
}

/// systemd booleans: `1`/`yes`/`y`/`true`/`t`/`on` and
/// `0`/`no`/`n`/`false`/`f`/`off`, case-insensitive.
/// (`minos_common::cmdline`'s grammar, the one the command lines use too.)
pub fn parse_bool(s: &str) -> Option<bool> {
    minos_common::cmdline::parse_bool(s.trim_matches(is_ws))
}

/// Standard signal names of Linux on x86_64, by number (index = number - 1).
const SIGNALS: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];
/// glibc's SIGRTMIN (the kernel's 32 and 33 are reserved by the C library).
const SIGRTMIN: i32 = 34;
const SIGRTMAX: i32 = 64;

/// A signal by name (`SIGTERM` or `TERM`, case-insensitive; also `IOT`,
/// `POLL`, `SIGRTMIN+N`, `SIGRTMAX-N`) or number (1..=64), for Linux on x86_64.
pub fn signal_number(s: &str) -> Option<i32> {
    let s = s.trim_matches(is_ws);
    if all_digits(s) {
        return s.parse::<i32>().ok().filter(|n| (1..=SIGRTMAX).contains(n));
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let offset = |rest: &str, sign: char| -> Option<i32> {
        if rest.is_empty() {
            return Some(0);
        }
        let n = rest.strip_prefix(sign)?;
        all_digits(n)
            .then(|| n.parse::<i32>().ok())
            .flatten()
            .filter(|n| *n <= SIGRTMAX - SIGRTMIN)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return offset(rest, '+').map(|n| SIGRTMIN + n);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return offset(rest, '-').map(|n| SIGRTMAX - n);
    }
    let name = match name {
        "IOT" => "ABRT",
        "POLL" => "IO",
        other => other,
    };
    SIGNALS
        .iter()
        .position(|&n| n == name)
        .and_then(|i| i32::try_from(i + 1).ok())
}

/// Capability names in number order (CAP_CHOWN = 0 .. CAP_CHECKPOINT_RESTORE = 40).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability by name (`CAP_SYS_TIME` → 25, case-insensitive) or by
/// number (0..=40).
pub fn capability_number(s: &str) -> Option<u32> {
    let s = s.trim_matches(is_ws);
    if all_digits(s) {
        return s.parse::<u32>().ok().filter(|n| *n <= CAP_LAST);
    }
    let name = s
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("CAP_"))
        .and_then(|_| s.get(4..))?;
    CAPABILITIES
        .iter()
        .position(|&c| c.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i).ok())
}

/// The name of a capability number (`25` → `CAP_SYS_TIME`).
pub fn capability_name(n: u32) -> Option<String> {
    let index = usize::try_from(n).ok()?;
    CAPABILITIES.get(index).map(|c| format!("CAP_{c}"))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    const KATA_AGENT: &str = include_str!("../../tests/fixtures/kata/kata-agent.service");
    const KATA_TARGET: &str = include_str!("../../tests/fixtures/kata/kata-containers.target");

    fn s(v: &str) -> String {
        v.to_owned()
    }

    fn words(v: &[&str]) -> Vec<String> {
        v.iter().map(|w| s(w)).collect()
    }

    #[test]
    fn a_files_unknown_keys_are_one_warning_in_their_place() {
        let text = "[Unit]\nConditionCapability=CAP_SYS_TIME\n[Service]\nPrivateTmp=yes\n\
                    RestartSec=abc\nProtectHome=yes\nPrivateTmp=no\nExecStart=/bin/a\n";
        let p = parse_fragments(
            "c.service",
            &[
                ("c.service", text),
                ("c.service.d/x.conf", "[Service]\nProtectSystem=strict\n"),
            ],
        );
        let shown: Vec<String> = p.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "c.service:2: 3 unknown keys, ignored (key:line): ConditionCapability:2 PrivateTmp:4 ProtectHome:6",
                "c.service:5: RestartSec: invalid time span \"abc\", ignored",
                "c.service.d/x.conf:2: ProtectSystem: unknown key, ignored",
            ],
        );
    }

    #[test]
    fn instance_specifiers() {
        let name = "kata-extension-mount@usr-lib-ext\\x2dfoo.service";
        let words = |v: &str| specifiers(v, name).unwrap().into_owned();
        assert_eq!(words("%i"), "usr-lib-ext\\x2dfoo");
        assert_eq!(words("%I"), "usr/lib/ext-foo");
        assert_eq!(words("%f"), "/usr/lib/ext-foo");
        assert_eq!(words("%p %t %%"), "kata-extension-mount /run %");
        assert_eq!(words("%N"), "kata-extension-mount@usr-lib-ext\\x2dfoo");
        // No instance: %i empty, %f the prefix as a path.
        assert_eq!(specifiers("[%i] %f", "a-b.service").unwrap(), "[] /a/b");
        assert_eq!(instance_of("a@x.service"), Some("x"));
        assert_eq!(instance_of("a@.service"), None);
        assert_eq!(template_of("a@x.y.service").as_deref(), Some("a@.service"));
        assert_eq!(template_of("a@.service"), None);
        assert_eq!(template_of("a.service"), None);
        assert_eq!(unescape_name("a\\xZZ-b"), "a\\xZZ/b");
        let p = parse(
            name,
            "f",
            "[Service]\nExecStart=/bin/mount-ext %f\nEnvironment=WHAT=%I\n",
        );
        let u = p.unit.expect("unit");
        assert_eq!(
            u.service.exec_start[0].argv,
            vec!["/bin/mount-ext", "/usr/lib/ext-foo"]
        );
    }

    #[test]
    fn dropins_parse_after_the_file_each_naming_its_own_lines() {
        let p = parse_fragments(
            "a.service",
            &[
                (
                    "/usr/lib/systemd/system/a.service",
                    "[Service]\nExecStart=/bin/a\n",
                ),
                (
                    "/etc/systemd/system/a.service.d/x.conf",
                    "[Unit]\nAfter=b.service\n",
                ),
                (
                    "/etc/systemd/system/a.service.d/y.conf",
                    "[Service]\nExecStart=\nExecStart=/bin/b\nFrobnicate=1\n",
                ),
            ],
        );
        let u = p.unit.expect("unit");
        assert_eq!(u.service.exec_start.len(), 1);
        assert_eq!(u.service.exec_start[0].argv, vec!["/bin/b"]);
        let shown: Vec<String> = p.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("/etc/systemd/system/a.service.d/y.conf:4: Frobnicate"),
            "{shown:?}"
        );
        // Each drop-in starts outside any section: a key before its own
        // header is as malformed as in the file.
        let p = parse_fragments(
            "a.service",
            &[
                ("a.service", "[Service]\nExecStart=/bin/a\n"),
                ("a.service.d/x.conf", "User=nobody\n"),
            ],
        );
        assert!(p.unit.is_none());
        assert_eq!(
            p.diagnostics[0].to_string(),
            "a.service.d/x.conf:1: User: assignment before any section header"
        );
    }
    proptest::proptest! {
        /// The slice path of split_words gives what the char-by-char one
        /// gives, on lines without quotes and escapes.

    #[test]
        fn plain_lines_split_as_quoted_ones(line in "([a-z/;=.%-]|[ \t\r\n]|\u{a0}|é){0,60}") {
            let fast: Vec<(String, bool)> =
                split_words(&line).unwrap().into_iter().map(|w| (w.text.into_owned(), w.separator)).collect();
            let slow: Vec<(String, bool)> =
                split_quoted_words(&line).unwrap().into_iter().map(|w| (w.text.into_owned(), w.separator)).collect();
            proptest::prop_assert_eq!(fast, slow);
        }
    }

    fn cmd(v: &[&str]) -> Command {
        Command::new(words(v))
    }

    /// `[Service]` with an `ExecStart=` on lines 1-2; `body` starts on line 3.
    fn svc(body: &str) -> Parsed {
        parse(
            "t.service",
            "t.service",
            &format!("[Service]\nExecStart=/bin/true\n{body}\n"),
        )
    }

    fn ok_svc(body: &str) -> Service {
        let p = svc(body);
        assert!(p.diagnostics.is_empty(), "{body:?}: {:?}", p.diagnostics);
        p.unit.expect("unit").service
    }

    /// One error on line 3 for `key`; the unit still loads.
    fn bad_svc(body: &str, key: &str) -> (Service, Diagnostic) {
        let p = svc(body);
        assert_eq!(p.diagnostics.len(), 1, "{body:?}: {:?}", p.diagnostics);
        let d = p.diagnostics[0].clone();
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (3, Some(key), Severity::Error),
            "{body:?}: {d}"
        );
        assert!(d.message.ends_with(", ignored"), "{d}");
        (p.unit.expect("unit still loads").service, d)
    }

    /// `[Unit]` on line 1, `body` from line 2, then a `[Service]`.
    fn unit_sec(body: &str) -> Parsed {
        parse(
            "t.service",
            "t.service",
            &format!("[Unit]\n{body}\n[Service]\nExecStart=/bin/true\n"),
        )
    }

    fn ok_unit(body: &str) -> Unit {
        let p = unit_sec(body);
        assert!(p.diagnostics.is_empty(), "{body:?}: {:?}", p.diagnostics);
        p.unit.expect("unit")
    }

    fn bad_unit(body: &str, key: &str) -> Unit {
        let p = unit_sec(body);
        assert_eq!(p.diagnostics.len(), 1, "{body:?}: {:?}", p.diagnostics);
        let d = &p.diagnostics[0];
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (2, Some(key), Severity::Error),
            "{d}"
        );
        p.unit.expect("unit still loads")
    }

    fn exec_start(value: &str) -> Vec<Command> {
        ok_svc_exec(&format!("ExecStart={value}"))
    }

    fn ok_svc_exec(line: &str) -> Vec<Command> {
        let p = parse("kata-agent.service", "f", &format!("[Service]\n{line}\n"));
        assert!(p.diagnostics.is_empty(), "{line:?}: {:?}", p.diagnostics);
        p.unit.expect("unit").service.exec_start
    }

    /// The fatal error of an unusable `ExecStart=` on line 2.
    fn fatal_exec(value: &str) -> Diagnostic {
        let p = parse("t.service", "f", &format!("[Service]\nExecStart={value}\n"));
        assert!(p.unit.is_none(), "{value:?} accepted: {:?}", p.unit);
        assert_eq!(p.diagnostics.len(), 1, "{value:?}: {:?}", p.diagnostics);
        let d = p.diagnostics[0].clone();
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (2, Some("ExecStart"), Severity::Error)
        );
        d
    }

    // --- the Kata fixtures -------------------------------------------------

    #[test]
    fn kata_agent_service_parses_exactly() {
        let p = parse("kata-agent.service", "kata-agent.service", KATA_AGENT);
        assert_eq!(p.diagnostics, vec![]);
        let mut want = Unit::new("kata-agent.service");
        want.description = Some(s("Kata Containers Agent"));
        want.wants = words(&["kata-containers.target"]);
        want.failure_action = Action::Poweroff;
        let sv = &mut want.service;
        sv.stdout = Stdio::Tty;
        sv.kind = ServiceType::Simple;
        sv.exec_start = vec![cmd(&["/usr/bin/kata-agent"])];
        sv.limits = vec![Limit {
            resource: LimitResource::Nofile,
            soft: Some(1_073_741_824),
            hard: Some(1_073_741_824),
        }];
        sv.exec_stop = vec![
            cmd(&["/bin/sync"]),
            cmd(&["/usr/bin/systemctl", "--force", "poweroff"]),
        ];
        sv.oom_score_adjust = Some(-997);
        assert_eq!(p.unit, Some(want));
    }

    #[test]
    fn kata_target_parses_without_diagnostics() {
        let p = parse(
            "kata-containers.target",
            "kata-containers.target",
            KATA_TARGET,
        );
        assert_eq!(p.diagnostics, vec![]);
        let u = p.unit.unwrap();
        assert!(u.is_target());
        assert_eq!(
            u.description.as_deref(),
            Some("Kata Containers Agent Target")
        );
        assert_eq!(
            u.requires,
            words(&["basic.target", "tmp.mount", "kata-agent.service"])
        );
        assert_eq!(u.wants, words(&["chronyd.service"]));
        assert_eq!(
            u.after,
            words(&["basic.target", "rescue.service", "rescue.target"])
        );
        assert_eq!(u.service, Service::default());
    }

    #[test]
    fn target_has_no_service_section() {
        let p = parse(
            "x.target",
            "x.target",
            "[Unit]\nWants=a.service\n[Service]\nExecStart=/bin/a\n",
        );
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(
            p.diagnostics[0].to_string(),
            "x.target:3: unknown section [Service], its keys are ignored"
        );
        assert!(p.unit.unwrap().service.exec_start.is_empty());
    }

    // --- defaults and diagnostics -------------------------------------------

    #[test]
    fn defaults_are_systemds() {
        let sv = Service::default();
        assert_eq!(sv.kind, ServiceType::Simple);
        assert_eq!(sv.restart, Restart::No);
        assert_eq!(sv.restart_sec, Duration::from_millis(100));
        assert_eq!(
            (sv.timeout_start, sv.timeout_stop),
            (Duration::from_secs(90), Duration::from_secs(90))
        );
        assert_eq!(sv.kill_signal, 15);
        assert_eq!(
            (sv.stdin, sv.stdout, sv.stderr),
            (Stdio::Null, Stdio::Inherit, Stdio::Inherit)
        );
        assert_eq!(sv.tty_path, PathBuf::from("/dev/console"));
        let u = Unit::new("a.service");
        assert_eq!(
            (u.start_limit_interval, u.start_limit_burst),
            (Duration::from_secs(10), 5)
        );
        assert_eq!(
            (u.success_action, u.failure_action),
            (Action::None, Action::None)
        );
        assert_eq!(Unit::default().name, "");
        let c = Command::new(words(&["/bin/a"]));
        assert!(c.expand_env && !c.ignore_failure && !c.privileged && c.argv0.is_none());
    }

    #[test]
    fn diagnostic_display() {
        let mut d = Diagnostic {
            file: s("/etc/a.service"),
            line: 7,
            key: Some(s("RestartSec")),
            severity: Severity::Error,
            message: s("invalid time span \"abc\", ignored"),
        };
        assert_eq!(
            d.to_string(),
            "/etc/a.service:7: RestartSec: invalid time span \"abc\", ignored"
        );
        d.line = 0;
        assert_eq!(
            d.to_string(),
            "/etc/a.service: RestartSec: invalid time span \"abc\", ignored"
        );
        d.key = None;
        assert_eq!(
            d.to_string(),
            "/etc/a.service: invalid time span \"abc\", ignored"
        );
    }

    #[test]
    fn messages_are_lowercase_without_period() {
        let text = "Foo=1\n[Unit]\nBogus=1\nAfter=x\n[Weird]\n[Service]\nType=forking\nRestartSec=abc\nExecStart=a/b\n";
        let p = parse("t.service", "t.service", text);
        assert!(p.diagnostics.len() >= 6, "{:?}", p.diagnostics);
        for d in &p.diagnostics {
            let first = d.message.chars().next().unwrap();
            assert!(!first.is_uppercase(), "{d}");
            assert!(!d.message.ends_with('.'), "{d}");
        }
    }

    // --- structure: sections, keys, malformed lines --------------------------

    #[test]
    fn unknown_key_warns_with_line_and_key() {
        let p = svc("# comment\nFrobnicate=yes");
        assert_eq!(p.diagnostics.len(), 1);
        let d = &p.diagnostics[0];
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (4, Some("Frobnicate"), Severity::Warning)
        );
        assert_eq!(
            d.to_string(),
            "t.service:4: Frobnicate: unknown key, ignored"
        );
        assert!(p.unit.is_some());
    }

    #[test]
    fn keys_are_case_sensitive() {
        let p = svc("restartsec=5");
        assert_eq!(p.diagnostics[0].severity, Severity::Warning);
        assert_eq!(p.unit.unwrap().service.restart_sec, DEFAULT_RESTART_SEC);
    }

    #[test]
    fn unknown_section_warns_once_and_ignores_its_keys() {
        let text = "[Unit]\nDescription=x\n\n[Timer]\nOnBootSec=5\nWhatever=1\n[Service]\nExecStart=/bin/a\n";
        let p = parse("t.service", "t.service", text);
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        let d = &p.diagnostics[0];
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (4, None, Severity::Warning)
        );
        assert!(d.message.contains("[Timer]"), "{d}");
        assert!(p.unit.is_some());
    }

    #[test]
    fn install_and_x_sections_and_keys_are_silent() {
        let text = "[Unit]\nX-Foo=1\n[Service]\nExecStart=/bin/a\nX-Bar=2\n[Install]\nWantedBy=multi-user.target\n\
                    RequiredBy=a.target\nAlias=b.service\nAlso=c.service\nAnything=1\n[X-Mine]\nKey=1\n";
        let p = parse("t.service", "t.service", text);
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(p.unit.unwrap().service.exec_start, vec![cmd(&["/bin/a"])]);
    }

    #[test]
    fn systemd_keys_without_meaning_are_silent() {
        let unit_keys: String = UNIT_IGNORED.iter().map(|k| format!("{k}=x\n")).collect();
        let service_keys: String = SERVICE_IGNORED.iter().map(|k| format!("{k}=x\n")).collect();
        let text = format!("[Unit]\n{unit_keys}[Service]\n{service_keys}ExecStart=/bin/a\n");
        let p = parse("t.service", "t.service", &text);
        assert_eq!(p.diagnostics, vec![]);
        // ...but only in their own section.
        let p = parse(
            "t.service",
            "t",
            "[Service]\nExecStart=/bin/a\nDocumentation=x\n",
        );
        assert_eq!(p.diagnostics[0].severity, Severity::Warning);
    }

    #[test]
    fn malformed_lines_are_all_reported_and_refuse_the_unit() {
        let text = "Description=early\n[Unit]\nthis is not valid\n[Service\nExecStart=/bin/a\n[Service]\n=value\n\
                    ExecStart=/bin/a\nbad key=1\n";
        let p = parse("t.service", "t.service", text);
        assert!(p.unit.is_none());
        let got: Vec<(usize, Option<&str>, Severity)> = p
            .diagnostics
            .iter()
            .map(|d| (d.line, d.key.as_deref(), d.severity))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some("Description"), Severity::Error),
                (3, None, Severity::Error),
                (4, None, Severity::Error),
                (7, None, Severity::Error),
                (9, None, Severity::Error),
            ]
        );
        assert!(p.diagnostics[0].message.contains("before any section"));
        assert!(p.diagnostics[1].message.contains("\"this is not valid\""));
        assert!(p.diagnostics[2].message.contains("section header"));
    }

    #[test]
    fn whitespace_comments_and_blank_lines() {
        let text = "  # c\n; c\n\n  [Unit]  \n\tDescription  =  spaced out  \n[Service]\n ExecStart = /bin/a  x \r\n";
        let p = parse("t.service", "t", text);
        assert_eq!(p.diagnostics, vec![]);
        let u = p.unit.unwrap();
        assert_eq!(u.description.as_deref(), Some("spaced out"));
        assert_eq!(u.service.exec_start, vec![cmd(&["/bin/a", "x"])]);
    }

    #[test]
    fn continuation_lines() {
        let text = "[Service]\nExecStart=/bin/a \\\n  one \\\n# comment inside\n  two\nBogus=1\nExecStop=/bin/b \\\\\n";
        let p = parse("t.service", "t", text);
        // The warning is for line 6: line numbers count physical lines.
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        assert_eq!(p.diagnostics[0].line, 6);
        let sv = p.unit.unwrap().service;
        assert_eq!(sv.exec_start, vec![cmd(&["/bin/a", "one", "two"])]);
        // An escaped backslash at the end is not a continuation.
        assert_eq!(sv.exec_stop, vec![cmd(&["/bin/b", "\\"])]);
        // Continuation at end of file, and a continued line reports its first line.
        let p = parse(
            "t.service",
            "t",
            "[Service]\nExecStart=/bin/a\nBogus=x \\\ny\nDescription=z\\",
        );
        // Both unknown keys in one warning, at the first one's line.
        assert_eq!(
            p.diagnostics.iter().map(|d| d.line).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(
            p.diagnostics[0].to_string(),
            "t:3: 2 unknown keys, ignored (key:line): Bogus:3 Description:5"
        );
        let p = parse(
            "t.service",
            "t",
            "[Unit]\nDescription=a \\\n   b\n[Service]\nExecStart=/bin/a\n",
        );
        assert_eq!(p.unit.unwrap().description.as_deref(), Some("a     b"));
    }

    #[test]
    fn comments_never_continue_and_bom_is_skipped() {
        let text = "\u{feff}[Service]\n# note \\\nExecStart=/bin/a \\\n; inside\n  b\n";
        let p = parse("t.service", "t", text);
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(
            p.unit.unwrap().service.exec_start,
            vec![cmd(&["/bin/a", "b"])]
        );
    }

    /// A 1 MiB file of the same dependency, of unknown keys and of one long
    /// continued line: parsing stays linear (this would take minutes if not).
    #[test]
    fn large_files_parse_in_linear_time() {
        for line in [
            "After=a.service",
            "Bogus=1",
            "After=a.service b.service \\",
            "ExecStartPre=/bin/a x ; \\",
            "RuntimeDirectory=a b/c %N \\",
        ] {
            let section = if line.starts_with("After") {
                "Unit"
            } else {
                "Service"
            };
            let mut text = format!("[Service]\nExecStart=/bin/a\n[{section}]\n");
            while text.len() < MAX_FILE_SIZE as usize {
                text.push_str(line);
                text.push('\n');
            }
            let p = parse("t.service", "t", &text);
            if line == "After=a.service" {
                assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics.first());
            }
            // A long list of bad words gives a short message.
            assert!(p.diagnostics.iter().all(|d| d.message.len() < 1000));
        }
    }

    #[test]
    fn nul_in_value_is_rejected() {
        let (sv, d) = bad_svc("User=ro\0ot", "User");
        assert_eq!(sv.user, None);
        assert!(d.message.contains("NUL"));
        let d = fatal_exec("/bin/a\0b");
        assert!(d.message.contains("NUL"));
    }

    // --- [Unit] keys ---------------------------------------------------------

    #[test]
    fn description() {
        assert_eq!(
            ok_unit("Description=a %n b").description.as_deref(),
            Some("a %n b")
        );
        assert_eq!(ok_unit("Description=a\nDescription=").description, None);
    }

    #[test]
    fn dependency_lists_append_dedup_and_reset() {
        let u = ok_unit("After=a.service b.target\nAfter=c.mount a.service\nBefore=d.service\nRequires=e.service\nWants=f@g.service %n");
        assert_eq!(u.after, words(&["a.service", "b.target", "c.mount"]));
        assert_eq!(u.before, words(&["d.service"]));
        assert_eq!(u.requires, words(&["e.service"]));
        assert_eq!(u.wants, words(&["f@g.service", "t.service"]));
        assert_eq!(
            ok_unit("After=a.service\nAfter=\nAfter=b.service").after,
            words(&["b.service"])
        );
    }

    #[test]
    fn bad_unit_name_is_skipped() {
        let u = bad_unit("After=a.service bogus b.target", "After");
        assert_eq!(u.after, words(&["a.service", "b.target"]));
        let u = bad_unit("Wants=%z.service", "Wants");
        assert!(u.wants.is_empty());
    }

    #[test]
    fn silently_accepted_keys_are_reported_each_once() {
        let p = parse(
            "a.service",
            "/x/a.service",
            "[Unit]\nDocumentation=man:a\nConflicts=b.service\nConflicts=c.service\n\
             [Service]\nExecStart=/bin/a\nKillMode=mixed\n",
        );
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        assert_eq!(
            p.ignored,
            [
                ("Conflicts".to_string(), "/x/a.service:3".to_string()),
                ("KillMode".to_string(), "/x/a.service:7".to_string())
            ]
        );
    }

    #[test]
    fn requires_mounts_for_and_on_failure() {
        let u = ok_unit(
            "RequiresMountsFor=/data /srv/%i\nRequiresMountsFor=/data /var\n\
             OnFailure=poweroff.target report.service",
        );
        let paths: Vec<&str> = u
            .requires_mounts_for
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect();
        assert_eq!(paths, ["/data", "/srv/", "/var"]);
        assert_eq!(u.on_failure, ["poweroff.target", "report.service"]);
        assert!(ok_unit("RequiresMountsFor=/a\nRequiresMountsFor=")
            .requires_mounts_for
            .is_empty());
        let u = bad_unit("RequiresMountsFor=/a relative", "RequiresMountsFor");
        assert!(u.requires_mounts_for.is_empty());
    }

    #[test]
    fn condition_path_exists() {
        let u = ok_unit("ConditionPathExists=/dev/ptp0\nConditionPathExists=!/run/%N.flag");
        assert_eq!(
            u.conditions,
            vec![
                Condition {
                    test: ConditionTest::PathExists(PathBuf::from("/dev/ptp0")),
                    negate: false
                },
                Condition {
                    test: ConditionTest::PathExists(PathBuf::from("/run/t.flag")),
                    negate: true
                },
            ]
        );
        let u = ok_unit(
            "ConditionKernelCommandLine=!agent.debug_console\n\
             ConditionVirtualization=vm\nConditionPathIsMountPoint=/proc/sys/fs/binfmt_misc",
        );
        let shown: Vec<String> = u.conditions.iter().map(Condition::show).collect();
        assert_eq!(
            shown,
            vec![
                "ConditionKernelCommandLine=!agent.debug_console",
                "ConditionVirtualization=vm",
                "ConditionPathIsMountPoint=/proc/sys/fs/binfmt_misc"
            ]
        );
        // An empty value of any of them resets them all, as systemd.
        assert!(
            ok_unit("ConditionVirtualization=vm\nConditionKernelCommandLine=")
                .conditions
                .is_empty()
        );
        assert!(bad_unit(
            "ConditionKernelCommandLine=a b",
            "ConditionKernelCommandLine"
        )
        .conditions
        .is_empty());
        assert!(ok_unit("ConditionPathExists=/a\nConditionPathExists=")
            .conditions
            .is_empty());
        assert!(
            bad_unit("ConditionPathExists=relative", "ConditionPathExists")
                .conditions
                .is_empty()
        );
        assert!(bad_unit("ConditionPathExists=|/a", "ConditionPathExists")
            .conditions
            .is_empty());
    }

    #[test]
    fn start_limits_in_unit_and_service() {
        let u = ok_unit("StartLimitIntervalSec=1min\nStartLimitBurst=3");
        assert_eq!(
            (u.start_limit_interval, u.start_limit_burst),
            (Duration::from_secs(60), 3)
        );
        let p = svc("StartLimitInterval=0\nStartLimitBurst=0");
        assert_eq!(p.diagnostics, vec![]);
        let u = p.unit.unwrap();
        assert_eq!(
            (u.start_limit_interval, u.start_limit_burst),
            (Duration::ZERO, 0)
        );
        let u = bad_unit("StartLimitBurst=-1", "StartLimitBurst");
        assert_eq!(u.start_limit_burst, 5);
        let u = bad_unit("StartLimitIntervalSec=soon", "StartLimitIntervalSec");
        assert_eq!(u.start_limit_interval, Duration::from_secs(10));
    }

    #[test]
    fn actions() {
        let all = [
            ("none", Action::None),
            ("exit", Action::Exit),
            ("exit-force", Action::ExitForce),
            ("poweroff", Action::Poweroff),
            ("poweroff-force", Action::PoweroffForce),
            ("poweroff-immediate", Action::PoweroffImmediate),
            ("reboot", Action::Reboot),
            ("reboot-force", Action::RebootForce),
            ("reboot-immediate", Action::RebootImmediate),
            ("halt", Action::Halt),
            ("halt-force", Action::HaltForce),
            ("halt-immediate", Action::HaltImmediate),
        ];
        for (text, want) in all {
            let u = ok_unit(&format!("SuccessAction={text}\nFailureAction={text}"));
            assert_eq!((u.success_action, u.failure_action), (want, want));
        }
        let u = bad_unit("FailureAction=explode", "FailureAction");
        assert_eq!(u.failure_action, Action::None);
        let u = ok_unit("FailureAction=reboot\nFailureAction=");
        assert_eq!(u.failure_action, Action::None);
    }

    // --- [Service] keys ------------------------------------------------------

    #[test]
    fn service_type() {
        for (text, want) in [
            ("simple", ServiceType::Simple),
            ("exec", ServiceType::Exec),
            ("oneshot", ServiceType::Oneshot),
            ("notify", ServiceType::Notify),
        ] {
            assert_eq!(ok_svc(&format!("Type={text}")).kind, want);
        }
        assert_eq!(ok_svc("Type=forking").kind, ServiceType::Forking);
        assert_eq!(
            ok_svc("PIDFile=/run/chrony/chronyd.pid").pid_file,
            Some(PathBuf::from("/run/chrony/chronyd.pid"))
        );
        assert_eq!(
            ok_svc("PIDFile=d.pid").pid_file,
            Some(PathBuf::from("/run/d.pid"))
        );
        assert_eq!(
            ok_svc("PIDFile=%t/x.pid").pid_file,
            Some(PathBuf::from("/run/x.pid"))
        );
        for text in ["dbus", "idle"] {
            let (sv, d) = bad_svc(
                &format!("Type=notify\nType={text}").replacen("Type=notify\n", "", 1),
                "Type",
            );
            assert_eq!(sv.kind, ServiceType::Simple);
            assert!(d.message.contains("not supported"), "{d}");
        }
        let (sv, d) = bad_svc("Type=bogus", "Type");
        assert_eq!(sv.kind, ServiceType::Simple);
        assert!(d.message.contains("\"bogus\""), "{d}");
    }

    #[test]
    fn bad_value_keeps_previous_value() {
        let p = svc("RestartSec=5\nRestartSec=abc");
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(p.diagnostics[0].line, 4);
        assert_eq!(p.unit.unwrap().service.restart_sec, Duration::from_secs(5));
    }

    #[test]
    fn environment() {
        let sv =
            ok_svc("Environment=\"A=1 2\" B=3\nEnvironment=C= 'D=x\\ty' E=%n\nEnvironment=A=again");
        let want = [
            ("A", "1 2"),
            ("B", "3"),
            ("C", ""),
            ("D", "x\ty"),
            ("E", "t.service"),
            ("A", "again"),
        ];
        assert_eq!(sv.environment, want.map(|(k, v)| (s(k), s(v))).to_vec());
        assert!(ok_svc("Environment=A=1\nEnvironment=")
            .environment
            .is_empty());
        let (sv, d) = bad_svc("Environment=A=1 NOEQUALS 2B=x B=2", "Environment");
        assert_eq!(sv.environment, vec![(s("A"), s("1")), (s("B"), s("2"))]);
        assert!(
            d.message.contains("\"NOEQUALS\"") && d.message.contains("\"2B=x\""),
            "{d}"
        );
        let (sv, _) = bad_svc("Environment=\"A=1", "Environment");
        assert!(sv.environment.is_empty());
    }

    #[test]
    fn environment_file() {
        let sv = ok_svc("EnvironmentFile=/etc/a\nEnvironmentFile=-/etc/%N.env");
        assert_eq!(
            sv.environment_files,
            vec![
                (PathBuf::from("/etc/a"), false),
                (PathBuf::from("/etc/t.env"), true)
            ]
        );
        assert!(ok_svc("EnvironmentFile=/etc/a\nEnvironmentFile=")
            .environment_files
            .is_empty());
        assert!(bad_svc("EnvironmentFile=etc/a", "EnvironmentFile")
            .0
            .environment_files
            .is_empty());
    }

    #[test]
    fn working_directory() {
        assert_eq!(
            ok_svc("WorkingDirectory=/srv").working_directory,
            Some(PathBuf::from("/srv"))
        );
        assert_eq!(
            ok_svc("WorkingDirectory=-/srv").working_directory,
            Some(PathBuf::from("/srv"))
        );
        assert_eq!(
            ok_svc("WorkingDirectory=~").working_directory,
            Some(PathBuf::from("~"))
        );
        assert_eq!(
            ok_svc("WorkingDirectory=-~").working_directory,
            Some(PathBuf::from("~"))
        );
        assert_eq!(
            ok_svc("WorkingDirectory=/srv\nWorkingDirectory=").working_directory,
            None
        );
        assert_eq!(
            bad_svc("WorkingDirectory=srv", "WorkingDirectory")
                .0
                .working_directory,
            None
        );
    }

    #[test]
    fn user_and_group() {
        for ok in [
            "root",
            "kata",
            "_x",
            "a-b.c",
            "0",
            "1000",
            "4294967294",
            "machine$",
        ] {
            let sv = ok_svc(&format!("User={ok}\nGroup={ok}"));
            assert_eq!(
                (sv.user.as_deref(), sv.group.as_deref()),
                (Some(ok), Some(ok))
            );
        }
        for bad in [
            "a b",
            "-x",
            "1x",
            "ro:ot",
            "65535",
            "4294967295",
            "é",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(
                bad_svc(&format!("User={bad}"), "User").0.user,
                None,
                "{bad}"
            );
            assert_eq!(
                bad_svc(&format!("Group={bad}"), "Group").0.group,
                None,
                "{bad}"
            );
        }
        assert_eq!(ok_svc("User=a\nUser=").user, None);
    }

    #[test]
    fn umask() {
        assert_eq!(ok_svc("UMask=0022").umask, Some(0o22));
        assert_eq!(ok_svc("UMask=077").umask, Some(0o77));
        for bad in ["0o22", "8", "22a", "17777", "-1"] {
            assert_eq!(
                bad_svc(&format!("UMask={bad}"), "UMask").0.umask,
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn runtime_directory() {
        let sv = ok_svc("RuntimeDirectory=timesync");
        assert_eq!(sv.runtime_directory, words(&["timesync"]));
        assert_eq!(sv.runtime_directory_mode, 0o755);
        assert_eq!(sv.runtime_directory_preserve, Preserve::No);
        // Several names per line, repeated lines append, duplicates go,
        // specifiers are expanded.
        let sv = ok_svc("RuntimeDirectory=foo/bar  baz\tfoo/bar\nRuntimeDirectory=%N a.b/-c_d baz");
        assert_eq!(
            sv.runtime_directory,
            words(&["foo/bar", "baz", "t", "a.b/-c_d"])
        );
        // An empty assignment resets the list, as in systemd.
        assert!(ok_svc("RuntimeDirectory=a b\nRuntimeDirectory=")
            .runtime_directory
            .is_empty());
        assert_eq!(
            ok_svc("RuntimeDirectory=a\nRuntimeDirectory=\nRuntimeDirectory=b").runtime_directory,
            words(&["b"])
        );
    }

    #[test]
    fn bad_runtime_directory_ignores_the_line() {
        for (bad, why) in [
            ("/run/foo", "not a relative path"),
            ("../etc", "component"),
            ("foo/../../etc", "component"),
            ("foo/..", "component"),
            ("..", "component"),
            (".", "component"),
            ("./foo", "component"),
            ("foo//bar", "component"),
            ("foo/", "component"),
            ("a:b", "\":\""),
            ("%z", "unsupported specifier %z"),
        ] {
            let (sv, d) = bad_svc(&format!("RuntimeDirectory=good {bad}"), "RuntimeDirectory");
            // The whole line is ignored, the good name too.
            assert!(sv.runtime_directory.is_empty(), "{bad}: {sv:?}");
            assert!(d.message.contains(why), "{bad}: {d}");
            assert_eq!(
                d.to_string(),
                format!("t.service:3: RuntimeDirectory: {}", d.message),
            );
        }
        // An earlier line stays.
        let p = svc("RuntimeDirectory=kept\nRuntimeDirectory=/abs other");
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        assert_eq!(
            p.diagnostics[0].to_string(),
            "t.service:4: RuntimeDirectory: \"/abs\" is not a relative path, ignored"
        );
        assert_eq!(p.unit.unwrap().service.runtime_directory, words(&["kept"]));
    }

    #[test]
    fn runtime_directory_mode() {
        assert_eq!(
            ok_svc("RuntimeDirectoryMode=0750").runtime_directory_mode,
            0o750
        );
        assert_eq!(
            ok_svc("RuntimeDirectoryMode=700").runtime_directory_mode,
            0o700
        );
        assert_eq!(
            ok_svc("RuntimeDirectoryMode=2770").runtime_directory_mode,
            0o2770
        );
        assert_eq!(ok_svc("RuntimeDirectoryMode=0").runtime_directory_mode, 0);
        assert_eq!(
            ok_svc("RuntimeDirectoryMode=0700\nRuntimeDirectoryMode=").runtime_directory_mode,
            0o755
        );
        for bad in ["0o750", "8", "75a", "17777", "-1", "rwx", "0x1ed"] {
            let (sv, d) = bad_svc(
                &format!("RuntimeDirectoryMode={bad}"),
                "RuntimeDirectoryMode",
            );
            assert_eq!(sv.runtime_directory_mode, 0o755, "{bad}");
            assert!(d.message.contains("invalid octal mode"), "{d}");
        }
        // The previous value is kept.
        let p = svc("RuntimeDirectoryMode=0700\nRuntimeDirectoryMode=999");
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(p.unit.unwrap().service.runtime_directory_mode, 0o700);
    }

    #[test]
    fn runtime_directory_preserve() {
        for (text, want) in [
            ("no", Preserve::No),
            ("yes", Preserve::Yes),
            ("restart", Preserve::Restart),
            ("true", Preserve::Yes),
            ("0", Preserve::No),
            ("On", Preserve::Yes),
        ] {
            assert_eq!(
                ok_svc(&format!("RuntimeDirectoryPreserve={text}")).runtime_directory_preserve,
                want,
                "{text}"
            );
        }
        assert_eq!(
            ok_svc("RuntimeDirectoryPreserve=yes\nRuntimeDirectoryPreserve=")
                .runtime_directory_preserve,
            Preserve::No
        );
        for bad in ["always", "Restart", "maybe"] {
            let (sv, d) = bad_svc(
                &format!("RuntimeDirectoryPreserve={bad}"),
                "RuntimeDirectoryPreserve",
            );
            assert_eq!(sv.runtime_directory_preserve, Preserve::No);
            assert!(d.message.contains(&format!("{bad:?}")), "{d}");
        }
    }

    fn limit(body: &str) -> Vec<(LimitResource, Option<u64>, Option<u64>)> {
        ok_svc(body)
            .limits
            .iter()
            .map(|l| (l.resource, l.soft, l.hard))
            .collect()
    }

    #[test]
    fn limits() {
        use LimitResource::*;
        assert_eq!(
            limit("LimitNOFILE=1073741824"),
            vec![(Nofile, Some(1_073_741_824), Some(1_073_741_824))]
        );
        assert_eq!(
            limit("LimitNOFILE=1024:4096"),
            vec![(Nofile, Some(1024), Some(4096))]
        );
        assert_eq!(
            limit("LimitNOFILE=1024:infinity"),
            vec![(Nofile, Some(1024), None)]
        );
        assert_eq!(limit("LimitCORE=infinity"), vec![(Core, None, None)]);
        assert_eq!(
            limit("LimitMEMLOCK=64K:1G"),
            vec![(Memlock, Some(64 << 10), Some(1 << 30))]
        );
        assert_eq!(
            limit("LimitFSIZE=2T"),
            vec![(Fsize, Some(2 << 40), Some(2 << 40))]
        );
        assert_eq!(
            limit("LimitSTACK=8M"),
            vec![(Stack, Some(8 << 20), Some(8 << 20))]
        );
        assert_eq!(limit("LimitCPU=90"), vec![(Cpu, Some(90), Some(90))]);
        assert_eq!(
            limit("LimitCPU=1min 500ms"),
            vec![(Cpu, Some(61), Some(61))]
        );
        assert_eq!(limit("LimitRTTIME=5"), vec![(Rttime, Some(5), Some(5))]);
        assert_eq!(
            limit("LimitRTTIME=1s"),
            vec![(Rttime, Some(1_000_000), Some(1_000_000))]
        );
        assert_eq!(limit("LimitNICE=-5"), vec![(Nice, Some(25), Some(25))]);
        assert_eq!(limit("LimitNICE=+19"), vec![(Nice, Some(1), Some(1))]);
        assert_eq!(limit("LimitNICE=0:40"), vec![(Nice, Some(0), Some(40))]);
        assert_eq!(
            limit("LimitNPROC=10\nLimitNOFILE=5\nLimitNPROC=20"),
            vec![(Nproc, Some(20), Some(20)), (Nofile, Some(5), Some(5))]
        );
        assert_eq!(
            limit("LimitNPROC=10\nLimitNOFILE=5\nLimitNPROC="),
            vec![(Nofile, Some(5), Some(5))]
        );
        for (_, key) in LimitResource::ALL {
            let want = LimitResource::from_key(key).unwrap();
            assert_eq!(want.key(), key);
            assert_eq!(limit(&format!("{key}=infinity")), vec![(want, None, None)]);
            assert_eq!(limit(&format!("{key}=7:8")), vec![(want, Some(7), Some(8))]);
        }
    }

    #[test]
    fn bad_limits() {
        for bad in [
            "LimitNOFILE=lots",
            "LimitNOFILE=-1",
            "LimitNOFILE=4096:1024",
            "LimitNOFILE=infinity:10",
            "LimitNOFILE=10K",
            "LimitNOFILE=1:2:3",
            "LimitAS=5Q",
            "LimitAS=99999999999E",
            "LimitNICE=41",
            "LimitNICE=+20",
            "LimitNICE=-21",
            "LimitCPU=fast",
        ] {
            let key = bad.split_once('=').unwrap().0;
            let (sv, _) = bad_svc(
                &format!("LimitNOFILE=7\n{bad}").replacen("LimitNOFILE=7\n", "", 1),
                key,
            );
            assert!(sv.limits.is_empty(), "{bad}: {:?}", sv.limits);
        }
        // The previous value is kept.
        let p = svc("LimitNOFILE=7\nLimitNOFILE=x");
        assert_eq!(p.unit.unwrap().service.limits[0].soft, Some(7));
    }

    #[test]
    fn tasks_max() {
        assert_eq!(ok_svc("TasksMax=64").tasks_max, Some(TasksMax::Count(64)));
        assert_eq!(
            ok_svc("TasksMax=infinity").tasks_max,
            Some(TasksMax::Infinity)
        );
        assert_eq!(
            ok_svc("TasksMax=15%").tasks_max,
            Some(TasksMax::Permyriad(1500))
        );
        assert_eq!(
            ok_svc("TasksMax=0.5%").tasks_max,
            Some(TasksMax::Permyriad(50))
        );
        assert_eq!(ok_svc("TasksMax=64\nTasksMax=").tasks_max, None);
        for bad in ["0", "-1", "lots", "101%", "0%", "1.234%", "%", ".5%", "1e3"] {
            let (sv, d) = bad_svc(&format!("TasksMax={bad}"), "TasksMax");
            assert_eq!(sv.tasks_max, None, "{bad}");
            assert!(d.message.ends_with("ignored"), "{d}");
        }
        assert_eq!(TasksMax::Count(64).pids_max(32768), "64");
        assert_eq!(TasksMax::Permyriad(1500).pids_max(32768), "4915");
        assert_eq!(TasksMax::Permyriad(1).pids_max(100), "1");
        assert_eq!(TasksMax::Infinity.pids_max(32768), "max");
    }

    #[test]
    fn oom_score_adjust() {
        assert_eq!(ok_svc("OOMScoreAdjust=-997").oom_score_adjust, Some(-997));
        assert_eq!(ok_svc("OOMScoreAdjust=1000").oom_score_adjust, Some(1000));
        assert_eq!(ok_svc("OOMScoreAdjust=-1000").oom_score_adjust, Some(-1000));
        let (sv, d) = bad_svc("OOMScoreAdjust=5000", "OOMScoreAdjust");
        assert_eq!(sv.oom_score_adjust, None);
        assert!(d.message.contains("range"), "{d}");
        assert_eq!(
            bad_svc("OOMScoreAdjust=low", "OOMScoreAdjust")
                .0
                .oom_score_adjust,
            None
        );
    }

    #[test]
    fn standard_input() {
        assert_eq!(ok_svc("StandardInput=null").stdin, Stdio::Null);
        for tty in ["tty", "tty-force", "tty-fail"] {
            assert_eq!(ok_svc(&format!("StandardInput={tty}")).stdin, Stdio::Tty);
        }
        for bad in ["socket", "fd:foo", "data", "file:/x", "kmsg"] {
            assert_eq!(
                bad_svc(&format!("StandardInput={bad}"), "StandardInput")
                    .0
                    .stdin,
                Stdio::Null
            );
        }
    }

    #[test]
    fn standard_output_and_error() {
        let cases = [
            ("null", Stdio::Null),
            ("tty", Stdio::Tty),
            ("inherit", Stdio::Inherit),
            ("kmsg", Stdio::Kmsg),
            ("journal", Stdio::Kmsg),
            ("journal+console", Stdio::Kmsg),
            ("kmsg+console", Stdio::Kmsg),
            ("file:/var/log/a", Stdio::File(PathBuf::from("/var/log/a"))),
            (
                "append:/var/log/%N",
                Stdio::Append(PathBuf::from("/var/log/t")),
            ),
            ("truncate:/tmp/x", Stdio::Truncate(PathBuf::from("/tmp/x"))),
        ];
        for (text, want) in cases {
            let sv = ok_svc(&format!("StandardOutput={text}\nStandardError={text}"));
            assert_eq!((sv.stdout, sv.stderr), (want.clone(), want));
        }
        for bad in ["socket", "fd:x", "fd", "file:relative", "nowhere"] {
            assert_eq!(
                bad_svc(&format!("StandardOutput={bad}"), "StandardOutput")
                    .0
                    .stdout,
                Stdio::Inherit
            );
            assert_eq!(
                bad_svc(&format!("StandardError={bad}"), "StandardError")
                    .0
                    .stderr,
                Stdio::Inherit
            );
        }
        assert_eq!(
            ok_svc("StandardOutput=tty\nStandardOutput=").stdout,
            Stdio::Inherit
        );
    }

    #[test]
    fn tty_path() {
        assert_eq!(
            ok_svc("TTYPath=/dev/hvc0").tty_path,
            PathBuf::from("/dev/hvc0")
        );
        assert_eq!(
            bad_svc("TTYPath=hvc0", "TTYPath").0.tty_path,
            PathBuf::from("/dev/console")
        );
    }

    #[test]
    fn restart() {
        for (text, want) in [
            ("no", Restart::No),
            ("always", Restart::Always),
            ("on-success", Restart::OnSuccess),
            ("on-failure", Restart::OnFailure),
            ("on-abnormal", Restart::OnAbnormal),
            ("on-abort", Restart::OnAbort),
            ("on-watchdog", Restart::OnWatchdog),
        ] {
            assert_eq!(ok_svc(&format!("Restart={text}")).restart, want);
        }
        assert_eq!(
            bad_svc("Restart=sometimes", "Restart").0.restart,
            Restart::No
        );
    }

    #[test]
    fn time_keys() {
        let sv = ok_svc("RestartSec=2\nTimeoutStartSec=1min 30s\nTimeoutStopSec=500ms");
        assert_eq!(sv.restart_sec, Duration::from_secs(2));
        assert_eq!(sv.timeout_start, Duration::from_secs(90));
        assert_eq!(sv.timeout_stop, Duration::from_millis(500));
        let sv = ok_svc("TimeoutSec=5");
        assert_eq!(
            (sv.timeout_start, sv.timeout_stop),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        let sv = ok_svc("TimeoutSec=0");
        assert_eq!(
            (sv.timeout_start, sv.timeout_stop),
            (Duration::MAX, Duration::MAX)
        );
        let sv = ok_svc("TimeoutStopSec=infinity\nRestartSec=0");
        assert_eq!(
            (sv.timeout_stop, sv.restart_sec),
            (Duration::MAX, Duration::ZERO)
        );
        let sv = ok_svc("TimeoutSec=5\nTimeoutSec=");
        assert_eq!(
            (sv.timeout_start, sv.timeout_stop),
            (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
        );
        assert_eq!(
            bad_svc("RestartSec=abc", "RestartSec").0.restart_sec,
            DEFAULT_RESTART_SEC
        );
        assert_eq!(
            bad_svc("TimeoutStartSec=-1", "TimeoutStartSec")
                .0
                .timeout_start,
            DEFAULT_TIMEOUT
        );
        let (sv, _) = bad_svc("TimeoutSec=5x", "TimeoutSec");
        assert_eq!(
            (sv.timeout_start, sv.timeout_stop),
            (DEFAULT_TIMEOUT, DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn booleans() {
        let sv = ok_svc("RemainAfterExit=yes\nNoNewPrivileges=true");
        assert!(sv.remain_after_exit && sv.no_new_privileges);
        let sv =
            ok_svc("RemainAfterExit=yes\nRemainAfterExit=off\nNoNewPrivileges=1\nNoNewPrivileges=");
        assert!(!sv.remain_after_exit && !sv.no_new_privileges);
        assert!(
            !bad_svc("RemainAfterExit=maybe", "RemainAfterExit")
                .0
                .remain_after_exit
        );
        assert!(
            !bad_svc("NoNewPrivileges=2", "NoNewPrivileges")
                .0
                .no_new_privileges
        );
    }

    #[test]
    fn kill_signal() {
        assert_eq!(ok_svc("KillSignal=SIGINT").kill_signal, 2);
        assert_eq!(ok_svc("KillSignal=KILL").kill_signal, 9);
        assert_eq!(ok_svc("KillSignal=SIGRTMIN+3").kill_signal, 37);
        assert_eq!(bad_svc("KillSignal=SIGFOO", "KillSignal").0.kill_signal, 15);
        assert_eq!(bad_svc("KillSignal=0", "KillSignal").0.kill_signal, 15);
    }

    #[test]
    fn capabilities() {
        let sv = ok_svc(
            "AmbientCapabilities=CAP_SYS_TIME\nAmbientCapabilities=cap_net_admin CAP_SYS_TIME",
        );
        assert_eq!(sv.ambient_capabilities, vec![12, 25]);
        let sv =
            ok_svc("CapabilityBoundingSet=CAP_SYS_TIME CAP_CHOWN\nCapabilityBoundingSet=CAP_KILL");
        assert_eq!(sv.capability_bounding_set, Some(vec![0, 5, 25]));
        let sv = ok_svc("CapabilityBoundingSet=~CAP_SYS_ADMIN CAP_SYS_MODULE");
        let want: Vec<u32> = (0..=40).filter(|c| *c != 21 && *c != 16).collect();
        assert_eq!(sv.capability_bounding_set, Some(want));
        let sv =
            ok_svc("CapabilityBoundingSet=~CAP_SYS_ADMIN\nCapabilityBoundingSet=CAP_SYS_ADMIN");
        assert_eq!(sv.capability_bounding_set, Some((0..=40).collect()));
        let sv = ok_svc("CapabilityBoundingSet=~");
        assert_eq!(sv.capability_bounding_set, Some((0..=40).collect()));
        let sv = ok_svc("CapabilityBoundingSet=CAP_KILL\nCapabilityBoundingSet=\nAmbientCapabilities=CAP_KILL\nAmbientCapabilities=");
        assert_eq!(
            (sv.capability_bounding_set, sv.ambient_capabilities),
            (None, vec![])
        );
        let (sv, d) = bad_svc(
            "CapabilityBoundingSet=CAP_KILL CAP_FLY",
            "CapabilityBoundingSet",
        );
        assert_eq!(sv.capability_bounding_set, None);
        assert!(d.message.contains("\"CAP_FLY\""), "{d}");
        assert!(
            bad_svc("AmbientCapabilities=SYS_TIME", "AmbientCapabilities")
                .0
                .ambient_capabilities
                .is_empty()
        );
    }

    // --- exec lines -----------------------------------------------------------

    #[test]
    fn exec_quoting_and_escapes() {
        let c = exec_start(
            r#"/bin/sh -c "echo 'a b'" 'x "y"' a"b c"d "" \\ \" \' \n\t\s \; \x41\101\u00e9\U0001F600 \a\b\f\r\v"#,
        );
        assert_eq!(
            c,
            vec![cmd(&[
                "/bin/sh",
                "-c",
                "echo 'a b'",
                "x \"y\"",
                "ab cd",
                "",
                "\\",
                "\"",
                "'",
                "\n\t ",
                ";",
                "AAé😀",
                "\x07\x08\x0c\r\x0b",
            ])]
        );
        // Escapes work inside quotes too.
        assert_eq!(
            exec_start(r#"/bin/a "x\"y\\z" 'it\'s'"#),
            vec![cmd(&["/bin/a", "x\"y\\z", "it's"])]
        );
    }

    #[test]
    fn exec_bad_quoting_is_fatal_for_exec_start() {
        for bad in [
            r#"/bin/a "open"#,
            "/bin/a 'open",
            r"/bin/a \q",
            r"/bin/a \x",
            r"/bin/a \xff",
            r"/bin/a \x00",
            r"/bin/a \777",
            r"/bin/a \uD800",
        ] {
            let d = fatal_exec(bad);
            assert!(!d.message.ends_with("ignored"), "{d}");
        }
    }

    #[test]
    fn exec_prefixes() {
        let c = &exec_start("-/bin/a x")[0];
        assert!(c.ignore_failure && c.expand_env && !c.privileged && c.argv0.is_none());
        let c = &exec_start(":+/bin/a")[0];
        assert!(!c.ignore_failure && !c.expand_env && c.privileged);
        let c = &exec_start("+-:@/bin/busybox sh -c true")[0];
        assert!(c.ignore_failure && !c.expand_env && c.privileged);
        assert_eq!(c.argv0.as_deref(), Some("sh"));
        assert_eq!(c.argv, words(&["/bin/busybox", "-c", "true"]));
        let c = &exec_start("@/bin/busybox init")[0];
        assert_eq!(
            (c.argv.clone(), c.argv0.as_deref()),
            (words(&["/bin/busybox"]), Some("init"))
        );
        // A prefix in quotes still counts (systemd unquotes first), and a bare name is allowed.
        let c = &exec_start("\"-true\"")[0];
        assert!(c.ignore_failure);
        assert_eq!(c.argv, words(&["true"]));
    }

    #[test]
    fn exec_bang_prefix_warns_and_acts_as_plus() {
        for (prefix, shown) in [("!", "\"!\""), ("!!", "\"!!\""), ("-!!", "\"!!\"")] {
            let p = parse(
                "t.service",
                "t",
                &format!("[Service]\nExecStart={prefix}/bin/a\n"),
            );
            assert_eq!(p.diagnostics.len(), 1);
            let d = &p.diagnostics[0];
            assert_eq!(
                (d.line, d.key.as_deref(), d.severity),
                (2, Some("ExecStart"), Severity::Warning)
            );
            assert!(d.message.contains(shown), "{d}");
            assert!(p.unit.unwrap().service.exec_start[0].privileged);
        }
    }

    #[test]
    fn exec_repeated_or_conflicting_prefix_is_part_of_the_path() {
        for bad in [
            "--/bin/a",
            "@@/bin/a x",
            "+!/bin/a",
            "!!!/bin/a",
            "::/bin/a",
            "|/bin/a",
        ] {
            let d = fatal_exec(bad);
            assert!(d.message.contains("neither an absolute path"), "{bad}: {d}");
        }
    }

    #[test]
    fn exec_paths() {
        assert_eq!(exec_start("true")[0].argv, words(&["true"]));
        for bad in [
            "bin/true", "./true", "/bin/", ".", "..", "-", "@/bin/a", "\"\"",
        ] {
            fatal_exec(bad);
        }
    }

    #[test]
    fn exec_separators() {
        let p = svc("ExecStop=/bin/sync ; /usr/bin/systemctl --force poweroff\nExecStartPre=/bin/a \";\" \\; b; ;\nExecStartPre=/bin/c ;");
        assert_eq!(p.diagnostics, vec![]);
        let sv = p.unit.unwrap().service;
        assert_eq!(
            sv.exec_stop,
            vec![
                cmd(&["/bin/sync"]),
                cmd(&["/usr/bin/systemctl", "--force", "poweroff"])
            ]
        );
        // Only a bare `;` word separates; `b;` is an argument; a trailing `;` is harmless.
        assert_eq!(
            sv.exec_start_pre,
            vec![cmd(&["/bin/a", ";", ";", "b;"]), cmd(&["/bin/c"])]
        );
        for bad in ["; /bin/a", "/bin/a ; ; /bin/b", ";"] {
            fatal_exec(bad);
        }
    }

    #[test]
    fn exec_start_count() {
        let p = parse(
            "t.service",
            "t",
            "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n",
        );
        assert!(p.unit.is_none());
        assert_eq!(p.diagnostics.len(), 1);
        assert_eq!(
            p.diagnostics[0].to_string(),
            "t:3: ExecStart: more than one command, which only Type=oneshot allows"
        );
        let p = parse("t.service", "t", "[Service]\nExecStart=/bin/a ; /bin/b\n");
        assert_eq!((p.unit.is_none(), p.diagnostics[0].line), (true, 2));
        let p = parse(
            "t.service",
            "t",
            "[Service]\nExecStart=/bin/a ; /bin/b\nExecStart=/bin/c\nType=oneshot\n",
        );
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(p.unit.unwrap().service.exec_start.len(), 3);
        // An empty assignment resets the list.
        let p = parse(
            "t.service",
            "t",
            "[Service]\nExecStart=/bin/a\nExecStart=\nExecStart=/bin/b\n",
        );
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(p.unit.unwrap().service.exec_start, vec![cmd(&["/bin/b"])]);
    }

    #[test]
    fn missing_exec_start() {
        for text in [
            "[Unit]\nDescription=x\n",
            "",
            "[Service]\nExecStart=/bin/a\nExecStart=\n",
            "[Service]\nType=oneshot\n",
        ] {
            let p = parse("t.service", "t.service", text);
            assert!(p.unit.is_none());
            assert_eq!(p.diagnostics.len(), 1);
            assert_eq!(p.diagnostics[0].to_string(), "t.service: missing ExecStart");
        }
    }

    #[test]
    fn exec_stop_and_pre_errors_are_not_fatal() {
        let p = svc("ExecStop=relative/path\nExecStartPre=/bin/a \"open\nExecStop=/bin/ok %q\nExecStartPre=/bin/pre");
        assert_eq!(
            p.diagnostics
                .iter()
                .map(|d| (d.line, d.severity))
                .collect::<Vec<_>>(),
            vec![
                (3, Severity::Error),
                (4, Severity::Error),
                (5, Severity::Error)
            ]
        );
        let sv = p.unit.unwrap().service;
        assert!(sv.exec_stop.is_empty());
        assert_eq!(sv.exec_start_pre, vec![cmd(&["/bin/pre"])]);
        let p = svc("ExecStop=/bin/a\nExecStop=/bin/b\nExecStop=\nExecStop=/bin/c");
        assert_eq!(p.unit.unwrap().service.exec_stop, vec![cmd(&["/bin/c"])]);
    }

    #[test]
    fn exec_specifiers() {
        let p = parse(
            "foo@bar.service",
            "f",
            "[Service]\nExecStart=/bin/%p \"%n\" %N %%n 100%% x%ny\n",
        );
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(
            p.unit.unwrap().service.exec_start,
            vec![cmd(&[
                "/bin/foo",
                "foo@bar.service",
                "foo@bar",
                "%n",
                "100%",
                "xfoo@bar.servicey"
            ])]
        );
        let d = fatal_exec("/bin/a %j");
        assert!(d.message.contains("%j"), "{d}");
        let d = fatal_exec("/bin/a 100%");
        assert!(d.message.contains("specifier"), "{d}");
        let d = fatal_exec("@/bin/a %Z");
        assert!(d.message.contains("%Z"), "{d}");
    }

    // --- expand ---------------------------------------------------------------

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
    }

    #[test]
    fn expand_semantics() {
        let e = env(&[
            ("A", "one two  three"),
            ("B", "x y"),
            ("EMPTY", ""),
            ("A2", "a"),
            ("B", "last"),
        ]);
        let c = cmd(&[
            "/bin/$A",
            "$A",
            "${A}",
            "pre${B}post",
            "$B",
            "$UNSET",
            "${UNSET}",
            "$EMPTY",
            "$$A",
            "a$$b",
            "x$A",
            "$",
            "${open",
            "$A2",
            "${A}${A2}",
        ]);
        assert_eq!(
            expand(&c, &e),
            words(&[
                "/bin/$A",
                "one",
                "two",
                "three",
                "one two  three",
                "prelastpost",
                "last",
                "",
                "$A",
                "a$b",
                "x$A",
                "$",
                "${open",
                "a",
                "one two  threea",
            ])
        );
        let mut c = cmd(&["/bin/a", "$A", "$$"]);
        c.expand_env = false;
        assert_eq!(expand(&c, &e), words(&["/bin/a", "$A", "$$"]));
        assert_eq!(expand(&cmd(&[]), &e), Vec::<String>::new());
    }

    #[test]
    fn expand_after_parse() {
        let c = exec_start("/bin/echo $FOO \"${FOO}!\" '$$FOO'");
        assert_eq!(
            expand(&c[0], &env(&[("FOO", "a b")])),
            words(&["/bin/echo", "a", "b", "a b!", "$FOO"])
        );
    }

    // --- value parsers ----------------------------------------------------------

    #[test]
    fn timespans() {
        let cases: &[(&str, Duration)] = &[
            ("5", Duration::from_secs(5)),
            ("5s", Duration::from_secs(5)),
            (" 5 s ", Duration::from_secs(5)),
            ("100ms", Duration::from_millis(100)),
            ("1min 30s", Duration::from_secs(90)),
            ("1min30s", Duration::from_secs(90)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("1w", Duration::from_secs(604_800)),
            ("1M", Duration::from_secs(2_629_800)),
            ("1y", Duration::from_secs(31_557_600)),
            ("10us", Duration::from_micros(10)),
            ("10usec", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("3msec", Duration::from_millis(3)),
            ("2 hours 3 minutes 4 seconds", Duration::from_secs(7384)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.5", Duration::from_millis(500)),
            (".25s", Duration::from_millis(250)),
            ("1.5s 1", Duration::from_millis(2500)),
            ("0", Duration::ZERO),
            ("infinity", Duration::MAX),
            ("18446744073709551615s", Duration::from_secs(u64::MAX)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timespan(text), Some(*want), "{text}");
        }
        for bad in [
            "",
            " ",
            "abc",
            "-1",
            "5x",
            "s",
            "1.2.3",
            "5 infinity",
            "+5",
            "1e3",
            "18446744073709551616s",
            "1hh",
            ".",
        ] {
            assert_eq!(parse_timespan(bad), None, "{bad}");
        }
    }

    #[test]
    fn bools() {
        for t in ["1", "yes", "YES", "y", "true", "True", "t", "on", "On"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["0", "no", "n", "false", "FALSE", "f", "off"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "2", "yess", "enable"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn signals() {
        let cases = [
            ("SIGTERM", 15),
            ("TERM", 15),
            ("sigterm", 15),
            ("15", 15),
            ("SIGHUP", 1),
            ("SIGKILL", 9),
            ("SIGUSR1", 10),
            ("SIGCHLD", 17),
            ("SIGPWR", 30),
            ("SIGSYS", 31),
            ("SIGIOT", 6),
            ("SIGPOLL", 29),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+1", 35),
            ("RTMIN+30", 64),
            ("SIGRTMAX", 64),
            ("SIGRTMAX-2", 62),
            ("64", 64),
        ];
        for (text, want) in cases {
            assert_eq!(signal_number(text), Some(want), "{text}");
        }
        for bad in [
            "",
            "0",
            "65",
            "-1",
            "SIGFOO",
            "SIG",
            "SIGRTMIN+31",
            "SIGRTMIN-1",
            "SIGRTMAX+1",
            "SIGRTMIN++1",
            "+15",
        ] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn capability_numbers() {
        assert_eq!(capability_number("CAP_SYS_TIME"), Some(25));
        assert_eq!(capability_number("cap_sys_time"), Some(25));
        assert_eq!(capability_number("CAP_CHOWN"), Some(0));
        assert_eq!(capability_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("CAP_BPF"), Some(39));
        assert_eq!(capability_number("12"), Some(12));
        for bad in ["SYS_TIME", "CAP_", "CAP_FOO", "41", "", "-1"] {
            assert_eq!(capability_number(bad), None, "{bad}");
        }
        for n in 0..=CAP_LAST {
            assert_eq!(capability_number(&capability_name(n).unwrap()), Some(n));
        }
        assert_eq!(capability_name(41), None);
    }

    // --- load -----------------------------------------------------------------

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("minos-unit-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn load_error(path: &Path) -> String {
        let p = load(path);
        assert!(p.unit.is_none());
        assert_eq!(p.diagnostics.len(), 1);
        let d = &p.diagnostics[0];
        assert_eq!(
            (d.line, d.key.as_deref(), d.severity),
            (0, None, Severity::Error)
        );
        assert_eq!(d.file, path.display().to_string());
        d.message.clone()
    }

    #[test]
    fn load_reads_and_names_the_unit() {
        let dir = TempDir::new("ok");
        let path = dir.0.join("kata-agent.service");
        std::fs::write(&path, KATA_AGENT).unwrap();
        let p = load(&path);
        assert_eq!(p.diagnostics, vec![]);
        assert_eq!(p.unit.unwrap().name, "kata-agent.service");
        // Diagnostics carry the path.
        let path = dir.0.join("b.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/a\nBogus=1\n").unwrap();
        assert_eq!(
            load(&path).diagnostics[0].to_string(),
            format!("{}:3: Bogus: unknown key, ignored", path.display())
        );
    }

    #[test]
    fn load_refuses_bad_files() {
        let dir = TempDir::new("bad");
        assert!(load_error(&dir.0).contains("not a regular file (a directory)"));
        assert!(
            load_error(Path::new("/dev/null")).contains("not a regular file (a character device)")
        );
        assert!(load_error(&dir.0.join("missing.service")).contains("cannot read"));
        let big = dir.0.join("big.service");
        std::fs::write(&big, vec![b'#'; 1024 * 1024 + 1]).unwrap();
        assert!(load_error(&big).contains("larger than 1 MiB"));
        let exact = dir.0.join("exact.service");
        let mut text = b"[Service]\nExecStart=/bin/a\n".to_vec();
        text.resize(1024 * 1024, b'\n');
        std::fs::write(&exact, text).unwrap();
        assert!(load(&exact).unit.is_some());
        let latin1 = dir.0.join("latin1.service");
        std::fs::write(&latin1, b"[Unit]\nDescription=caf\xe9\n").unwrap();
        assert_eq!(
            load_error(&latin1),
            "not valid UTF-8 (invalid byte at offset 22)"
        );
    }

    // --- properties -------------------------------------------------------------

    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::select;

        const KEYS: &[&str] = &[
            "Description",
            "After",
            "Before",
            "Requires",
            "Wants",
            "ConditionPathExists",
            "StartLimitIntervalSec",
            "StartLimitBurst",
            "SuccessAction",
            "FailureAction",
            "Type",
            "ExecStartPre",
            "ExecStart",
            "ExecStop",
            "Environment",
            "EnvironmentFile",
            "WorkingDirectory",
            "User",
            "Group",
            "UMask",
            "RuntimeDirectory",
            "RuntimeDirectoryMode",
            "RuntimeDirectoryPreserve",
            "LimitNOFILE",
            "LimitCPU",
            "LimitNICE",
            "LimitRTTIME",
            "LimitAS",
            "OOMScoreAdjust",
            "StandardInput",
            "StandardOutput",
            "StandardError",
            "TTYPath",
            "Restart",
            "RestartSec",
            "RemainAfterExit",
            "TasksMax",
            "TimeoutStartSec",
            "TimeoutStopSec",
            "TimeoutSec",
            "KillSignal",
            "AmbientCapabilities",
            "CapabilityBoundingSet",
            "NoNewPrivileges",
            "Documentation",
            "Bogus",
            "X-Foo",
            "WantedBy",
        ];

        const TOKENS: &[&str] = &[
            "-",
            "@",
            ":",
            "+",
            "!",
            "!!",
            "|",
            "~",
            "/bin/sh",
            "sh",
            "a/b",
            "\"",
            "'",
            "\\",
            ";",
            "\\;",
            "%n",
            "%",
            "%%",
            "%x",
            "$FOO",
            "${FOO}",
            "$$",
            "${",
            "infinity",
            "1min",
            "5",
            "-1000",
            "5000",
            "1.5",
            "CAP_SYS_TIME",
            "~CAP_CHOWN",
            "file:",
            "file:/x",
            "1:2",
            "K",
            "18446744073709551616",
            "\\x41",
            "\\xff",
            "\\u00e9",
            "\\777",
            "\\x",
            "\\U0010FFFF",
            "\\UFFFFFFFF",
            "=",
            "A=1",
            "\"A=1 2\"",
            "SIGRTMIN+40",
            "yes",
            "oneshot",
            "µs",
            "\u{0}",
        ];

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                select(vec![
                    "[Unit]",
                    "[Service]",
                    "[Install]",
                    "[X-Foo]",
                    "[Bogus]",
                    "[Unit",
                    "[]",
                    "[[Service]]"
                ])
                .prop_map(str::to_owned),
                (
                    select(KEYS),
                    vec(select(TOKENS), 0..6),
                    select(vec!["=", " = ", "=\t"])
                )
                    .prop_map(|(k, t, eq)| { format!("{k}{eq}{}", t.join(" ")) }),
                (select(KEYS), vec(select(TOKENS), 0..6))
                    .prop_map(|(k, t)| format!("{k}={}", t.concat())),
                vec(select(TOKENS), 0..4).prop_map(|t| t.join("")),
                "\\PC{0,20}",
                Just(String::new()),
                Just("# comment \\".to_owned()),
                Just("; comment".to_owned()),
            ]
            .prop_flat_map(|l| (Just(l), any::<bool>()))
            .prop_map(|(l, cont)| if cont { format!("{l} \\") } else { l })
        }

        fn check(name: &str, text: &str) {
            let p = parse(name, "f", text);
            let lines = text.lines().count();
            for d in &p.diagnostics {
                assert!(d.line <= lines, "{d} (only {lines} lines)");
                let _ = d.to_string();
            }
            match &p.unit {
                None => assert!(p.has_errors(), "no unit but no error: {:?}", p.diagnostics),
                Some(u) => {
                    let e = env(&[("FOO", "a b"), ("", "x")]);
                    let sv = &u.service;
                    for c in sv
                        .exec_start
                        .iter()
                        .chain(&sv.exec_start_pre)
                        .chain(&sv.exec_stop)
                    {
                        assert!(!c.argv.is_empty());
                        let _ = expand(c, &e);
                    }
                    if !u.is_target() {
                        assert!(!sv.exec_start.is_empty());
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn parse_never_panics_on_strings(text in any::<String>(), name in "[a-z.@%]{0,12}") {
                check(&name, &text);
            }

            #[test]
            fn parse_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..1024)) {
                check("t.service", &String::from_utf8_lossy(&bytes));
            }

            #[test]
            fn parse_never_panics_on_unit_like_text(lines in vec(line(), 0..40), target in any::<bool>()) {
                check(if target { "t.target" } else { "t@i.service" }, &lines.join("\n"));
            }

            #[test]
            fn value_parsers_never_panic(v in "\\PC{0,24}") {
                let _ = (parse_timespan(&v), parse_bool(&v), signal_number(&v), capability_number(&v));
                let c = Command::new(vec![v.clone(), v.clone(), format!("${v}"), format!("${{{v}}}")]);
                let _ = expand(&c, &env(&[("A", &v)]));
            }

            #[test]
            fn valid_units_round_trip(spec in unit_spec()) {
                let (want, text) = spec;
                let p = parse("gen.service", "gen.service", &text);
                prop_assert_eq!(&p.diagnostics, &vec![], "text:\n{}", text);
                prop_assert_eq!(p.unit.as_ref(), Some(&want), "text:\n{}", text);
            }
        }

        // --- the generator of valid units -----------------------------------

        /// Quotes a word so that the parser gives it back unchanged.
        fn quote(word: &str) -> String {
            let mut out = String::from("\"");
            for c in word.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '%' => out.push_str("%%"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    _ => out.push(c),
                }
            }
            out.push('"');
            out
        }

        fn path() -> impl Strategy<Value = String> {
            "/[a-z0-9_]{1,8}(/[a-z0-9._-]{1,8}){0,2}"
        }

        /// A time span and a spelling of it.
        fn span() -> impl Strategy<Value = (Duration, String)> {
            (
                0u64..30,
                0u64..60,
                0u64..60,
                0u64..1000,
                0u64..1000,
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(h, m, s, ms, us, long, spaced)| {
                    let d = Duration::from_secs(h * 3600 + m * 60 + s)
                        + Duration::from_millis(ms)
                        + Duration::from_micros(us);
                    let units = if long {
                        ["hours", "minutes", "sec", "msec", "usec"]
                    } else {
                        ["h", "min", "s", "ms", "us"]
                    };
                    let parts: Vec<String> = [h, m, s, ms, us]
                        .iter()
                        .zip(units)
                        .filter(|(n, _)| **n != 0)
                        .map(|(n, u)| {
                            if spaced {
                                format!("{n} {u}")
                            } else {
                                format!("{n}{u}")
                            }
                        })
                        .collect();
                    let text = if parts.is_empty() {
                        "0".to_owned()
                    } else {
                        parts.join(" ")
                    };
                    (d, text)
                })
        }

        fn boolean() -> impl Strategy<Value = (bool, String)> {
            (any::<bool>(), 0usize..4).prop_map(|(b, i)| {
                let t = if b {
                    ["yes", "true", "on", "1"]
                } else {
                    ["no", "False", "off", "0"]
                };
                (b, t[i].to_owned())
            })
        }

        fn command() -> impl Strategy<Value = (Command, String)> {
            let exe = prop_oneof![path(), "[a-z][a-z0-9-]{0,7}"];
            let arg = "[ -~\t\n]{0,8}";
            (
                any::<bool>(),
                proptest::option::of("[a-z]{1,6}"),
                any::<bool>(),
                any::<bool>(),
                exe,
                vec(arg, 0..4),
            )
                .prop_map(|(ignore, argv0, no_expand, plus, exe, args)| {
                    let mut text = String::new();
                    if plus {
                        text.push('+');
                    }
                    if argv0.is_some() {
                        text.push('@');
                    }
                    if ignore {
                        text.push('-');
                    }
                    if no_expand {
                        text.push(':');
                    }
                    text.push_str(&exe);
                    if let Some(a) = &argv0 {
                        text.push(' ');
                        text.push_str(&quote(a));
                    }
                    for a in &args {
                        text.push(' ');
                        text.push_str(&quote(a));
                    }
                    let mut argv = vec![exe];
                    argv.extend(args);
                    let c = Command {
                        argv,
                        argv0,
                        ignore_failure: ignore,
                        expand_env: !no_expand,
                        privileged: plus,
                    };
                    (c, text)
                })
        }

        fn commands() -> impl Strategy<Value = (Vec<Command>, String)> {
            (vec(command(), 1..4), any::<bool>()).prop_map(|(cmds, one_line)| {
                let texts: Vec<String> = cmds.iter().map(|(_, t)| t.clone()).collect();
                let sep = if one_line { " ; " } else { "\n__KEY__=" };
                (cmds.into_iter().map(|(c, _)| c).collect(), texts.join(sep))
            })
        }

        fn unit_name() -> impl Strategy<Value = String> {
            "[a-z][a-z0-9-]{0,8}(@[a-z0-9]{1,4})?\\.(service|target|mount|socket)"
        }

        fn limit() -> impl Strategy<Value = Limit> {
            (
                select(LimitResource::ALL.to_vec()),
                any::<u64>(),
                any::<u64>(),
                0u8..3,
            )
                .prop_map(|((r, _), a, b, inf)| {
                    let (a, b) = match r {
                        LimitResource::Nice => (a % 41, b % 41),
                        _ => (a % u64::MAX, b % u64::MAX),
                    };
                    let (lo, hi) = (a.min(b), a.max(b));
                    let (soft, hard) = match inf {
                        0 => (Some(lo), Some(hi)),
                        1 => (Some(lo), None),
                        _ => (None, None),
                    };
                    Limit {
                        resource: r,
                        soft,
                        hard,
                    }
                })
        }

        fn output() -> impl Strategy<Value = (Stdio, String)> {
            prop_oneof![
                select(vec![
                    (Stdio::Null, "null"),
                    (Stdio::Tty, "tty"),
                    (Stdio::Inherit, "inherit"),
                    (Stdio::Kmsg, "kmsg"),
                    (Stdio::Kmsg, "journal+console"),
                ])
                .prop_map(|(s, t)| (s, t.to_owned())),
                path().prop_map(|p| (Stdio::File(PathBuf::from(&p)), format!("file:{p}"))),
                path().prop_map(|p| (Stdio::Append(PathBuf::from(&p)), format!("append:{p}"))),
                path().prop_map(|p| (Stdio::Truncate(PathBuf::from(&p)), format!("truncate:{p}"))),
            ]
        }

        fn caps() -> impl Strategy<Value = Vec<u32>> {
            vec(0..=CAP_LAST, 1..5)
        }

        /// One assignment: the key's effect on the unit, its section and text.
        #[derive(Debug, Clone)]
        enum Entry {
            Description(String),
            Deps(usize, Vec<String>),
            Condition(String, bool),
            StartLimitInterval(Duration, String),
            StartLimitBurst(u32),
            Action(bool, Action, String),
            ExecStartPre(Vec<Command>, String),
            ExecStop(Vec<Command>, String),
            Environment(Vec<(String, String)>),
            EnvironmentFile(String, bool),
            WorkingDirectory(String, bool),
            User(String),
            Group(String),
            UMask(u32),
            RuntimeDirectory(Vec<String>),
            RuntimeDirectoryMode(u32),
            RuntimeDirectoryPreserve(Preserve, String),
            Limit(Limit),
            Oom(i32),
            Stdin(Stdio, String),
            Stdout(Stdio, String),
            Stderr(Stdio, String),
            TtyPath(String),
            Restart(Restart, String),
            RestartSec(Duration, String),
            RemainAfterExit(bool, String),
            Timeout(u8, Duration, String),
            KillSignal(i32, String),
            Ambient(Vec<u32>),
            Bounding(Vec<u32>),
            NoNewPrivileges(bool, String),
        }

        fn entry() -> impl Strategy<Value = Entry> {
            let user = prop_oneof![
                "[a-z_][a-z0-9_-]{0,15}",
                (0u32..65535).prop_map(|n| n.to_string())
            ];
            let actions = select(vec![
                (Action::None, "none"),
                (Action::Exit, "exit"),
                (Action::ExitForce, "exit-force"),
                (Action::Poweroff, "poweroff"),
                (Action::PoweroffForce, "poweroff-force"),
                (Action::PoweroffImmediate, "poweroff-immediate"),
                (Action::Reboot, "reboot"),
                (Action::RebootForce, "reboot-force"),
                (Action::RebootImmediate, "reboot-immediate"),
                (Action::Halt, "halt"),
                (Action::HaltForce, "halt-force"),
                (Action::HaltImmediate, "halt-immediate"),
            ]);
            let restarts = select(vec![
                (Restart::No, "no"),
                (Restart::Always, "always"),
                (Restart::OnSuccess, "on-success"),
                (Restart::OnFailure, "on-failure"),
                (Restart::OnAbnormal, "on-abnormal"),
                (Restart::OnAbort, "on-abort"),
                (Restart::OnWatchdog, "on-watchdog"),
            ]);
            let signal = prop_oneof![
                (1i32..=64).prop_map(|n| (n, n.to_string())),
                (1usize..=31).prop_map(|i| (i as i32, format!("SIG{}", SIGNALS[i - 1]))),
                (0i32..=30).prop_map(|n| (34 + n, format!("SIGRTMIN+{n}"))),
            ];
            prop_oneof![
                "[A-Za-z0-9]([A-Za-z0-9 ,.()%$-]{0,20}[A-Za-z0-9])?".prop_map(Entry::Description),
                (0usize..4, vec(unit_name(), 1..4)).prop_map(|(i, n)| Entry::Deps(i, n)),
                (path(), any::<bool>()).prop_map(|(p, n)| Entry::Condition(p, n)),
                span().prop_map(|(d, t)| Entry::StartLimitInterval(d, t)),
                any::<u32>().prop_map(Entry::StartLimitBurst),
                (any::<bool>(), actions).prop_map(|(ok, (a, t))| Entry::Action(
                    ok,
                    a,
                    t.to_owned()
                )),
                commands().prop_map(|(c, t)| Entry::ExecStartPre(c, t)),
                commands().prop_map(|(c, t)| Entry::ExecStop(c, t)),
                vec(("[A-Za-z_][A-Za-z0-9_]{0,8}", "[ -~\t]{0,10}"), 1..4)
                    .prop_map(Entry::Environment),
                (path(), any::<bool>()).prop_map(|(p, o)| Entry::EnvironmentFile(p, o)),
                (prop_oneof![path(), Just("~".to_owned())], any::<bool>())
                    .prop_map(|(p, d)| Entry::WorkingDirectory(p, d)),
                user.clone().prop_map(Entry::User),
                user.prop_map(Entry::Group),
                (0u32..=0o777).prop_map(Entry::UMask),
                vec(
                    "[a-z0-9_][a-z0-9_.-]{0,7}(/[a-z0-9_][a-z0-9_.-]{0,7}){0,2}",
                    1..4
                )
                .prop_map(Entry::RuntimeDirectory),
                (0u32..=0o7777).prop_map(Entry::RuntimeDirectoryMode),
                select(vec![
                    (Preserve::No, "no"),
                    (Preserve::Yes, "yes"),
                    (Preserve::Restart, "restart"),
                    (Preserve::No, "false"),
                ])
                .prop_map(|(p, t)| Entry::RuntimeDirectoryPreserve(p, t.to_owned())),
                limit().prop_map(Entry::Limit),
                (-1000i32..=1000).prop_map(Entry::Oom),
                select(vec![
                    (Stdio::Null, "null"),
                    (Stdio::Tty, "tty"),
                    (Stdio::Tty, "tty-force")
                ])
                .prop_map(|(s, t)| Entry::Stdin(s, t.to_owned())),
                output().prop_map(|(s, t)| Entry::Stdout(s, t)),
                output().prop_map(|(s, t)| Entry::Stderr(s, t)),
                path().prop_map(Entry::TtyPath),
                restarts.prop_map(|(r, t)| Entry::Restart(r, t.to_owned())),
                span().prop_map(|(d, t)| Entry::RestartSec(d, t)),
                boolean().prop_map(|(b, t)| Entry::RemainAfterExit(b, t)),
                (0u8..3, span()).prop_map(|(which, (d, t))| Entry::Timeout(which, d, t)),
                signal.prop_map(|(n, t)| Entry::KillSignal(n, t)),
                caps().prop_map(Entry::Ambient),
                caps().prop_map(Entry::Bounding),
                boolean().prop_map(|(b, t)| Entry::NoNewPrivileges(b, t)),
            ]
        }

        fn limit_text(l: &Limit) -> String {
            let v = |x: Option<u64>| x.map_or("infinity".to_owned(), |n| n.to_string());
            if l.soft == l.hard {
                v(l.soft)
            } else {
                format!("{}:{}", v(l.soft), v(l.hard))
            }
        }

        fn cap_names(c: &[u32]) -> String {
            c.iter()
                .map(|n| capability_name(*n).unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        }

        /// Applies an entry to `u` as the parser should; returns (in [Unit]?, lines).
        fn apply(e: &Entry, u: &mut Unit) -> (bool, String) {
            let sv = &mut u.service;
            let timeout = |d: Duration| if d.is_zero() { Duration::MAX } else { d };
            match e {
                Entry::Description(d) => {
                    u.description = Some(d.clone());
                    (true, format!("Description={d}"))
                }
                Entry::Deps(i, names) => {
                    let (key, list) = match i {
                        0 => ("After", &mut u.after),
                        1 => ("Before", &mut u.before),
                        2 => ("Requires", &mut u.requires),
                        _ => ("Wants", &mut u.wants),
                    };
                    for n in names {
                        if !list.contains(n) {
                            list.push(n.clone());
                        }
                    }
                    (true, format!("{key}={}", names.join(" ")))
                }
                Entry::Condition(p, negate) => {
                    u.conditions.push(Condition {
                        test: ConditionTest::PathExists(PathBuf::from(p)),
                        negate: *negate,
                    });
                    (
                        true,
                        format!("ConditionPathExists={}{p}", if *negate { "!" } else { "" }),
                    )
                }
                Entry::StartLimitInterval(d, t) => {
                    u.start_limit_interval = *d;
                    (true, format!("StartLimitIntervalSec={t}"))
                }
                Entry::StartLimitBurst(n) => {
                    u.start_limit_burst = *n;
                    (true, format!("StartLimitBurst={n}"))
                }
                Entry::Action(success, a, t) => {
                    if *success {
                        u.success_action = *a;
                        (true, format!("SuccessAction={t}"))
                    } else {
                        u.failure_action = *a;
                        (true, format!("FailureAction={t}"))
                    }
                }
                Entry::ExecStartPre(c, t) => {
                    sv.exec_start_pre.extend(c.iter().cloned());
                    (
                        false,
                        format!("ExecStartPre={}", t.replace("__KEY__", "ExecStartPre")),
                    )
                }
                Entry::ExecStop(c, t) => {
                    sv.exec_stop.extend(c.iter().cloned());
                    (
                        false,
                        format!("ExecStop={}", t.replace("__KEY__", "ExecStop")),
                    )
                }
                Entry::Environment(pairs) => {
                    sv.environment.extend(pairs.iter().cloned());
                    let words: Vec<String> = pairs
                        .iter()
                        .map(|(k, v)| quote(&format!("{k}={v}")))
                        .collect();
                    (false, format!("Environment={}", words.join(" ")))
                }
                Entry::EnvironmentFile(p, optional) => {
                    sv.environment_files.push((PathBuf::from(p), *optional));
                    (
                        false,
                        format!("EnvironmentFile={}{p}", if *optional { "-" } else { "" }),
                    )
                }
                Entry::WorkingDirectory(p, dash) => {
                    sv.working_directory = Some(PathBuf::from(p));
                    (
                        false,
                        format!("WorkingDirectory={}{p}", if *dash { "-" } else { "" }),
                    )
                }
                Entry::User(n) => {
                    sv.user = Some(n.clone());
                    (false, format!("User={n}"))
                }
                Entry::Group(n) => {
                    sv.group = Some(n.clone());
                    (false, format!("Group={n}"))
                }
                Entry::UMask(m) => {
                    sv.umask = Some(*m);
                    (false, format!("UMask={m:04o}"))
                }
                Entry::RuntimeDirectory(names) => {
                    for n in names {
                        if !sv.runtime_directory.contains(n) {
                            sv.runtime_directory.push(n.clone());
                        }
                    }
                    (false, format!("RuntimeDirectory={}", names.join(" ")))
                }
                Entry::RuntimeDirectoryMode(m) => {
                    sv.runtime_directory_mode = *m;
                    (false, format!("RuntimeDirectoryMode={m:04o}"))
                }
                Entry::RuntimeDirectoryPreserve(p, t) => {
                    sv.runtime_directory_preserve = *p;
                    (false, format!("RuntimeDirectoryPreserve={t}"))
                }
                Entry::Limit(l) => {
                    match sv.limits.iter_mut().find(|x| x.resource == l.resource) {
                        Some(x) => *x = *l,
                        None => sv.limits.push(*l),
                    }
                    (false, format!("{}={}", l.resource.key(), limit_text(l)))
                }
                Entry::Oom(n) => {
                    sv.oom_score_adjust = Some(*n);
                    (false, format!("OOMScoreAdjust={n}"))
                }
                Entry::Stdin(s, t) => {
                    sv.stdin = s.clone();
                    (false, format!("StandardInput={t}"))
                }
                Entry::Stdout(s, t) => {
                    sv.stdout = s.clone();
                    (false, format!("StandardOutput={t}"))
                }
                Entry::Stderr(s, t) => {
                    sv.stderr = s.clone();
                    (false, format!("StandardError={t}"))
                }
                Entry::TtyPath(p) => {
                    sv.tty_path = PathBuf::from(p);
                    (false, format!("TTYPath={p}"))
                }
                Entry::Restart(r, t) => {
                    sv.restart = *r;
                    (false, format!("Restart={t}"))
                }
                Entry::RestartSec(d, t) => {
                    sv.restart_sec = *d;
                    (false, format!("RestartSec={t}"))
                }
                Entry::RemainAfterExit(b, t) => {
                    sv.remain_after_exit = *b;
                    (false, format!("RemainAfterExit={t}"))
                }
                Entry::Timeout(which, d, t) => {
                    let key = match which {
                        0 => {
                            sv.timeout_start = timeout(*d);
                            "TimeoutStartSec"
                        }
                        1 => {
                            sv.timeout_stop = timeout(*d);
                            "TimeoutStopSec"
                        }
                        _ => {
                            sv.timeout_start = timeout(*d);
                            sv.timeout_stop = timeout(*d);
                            "TimeoutSec"
                        }
                    };
                    (false, format!("{key}={t}"))
                }
                Entry::KillSignal(n, t) => {
                    sv.kill_signal = *n;
                    (false, format!("KillSignal={t}"))
                }
                Entry::Ambient(c) => {
                    sv.ambient_capabilities = union(&sv.ambient_capabilities, c);
                    (false, format!("AmbientCapabilities={}", cap_names(c)))
                }
                Entry::Bounding(c) => {
                    let mut set = c.clone();
                    set.sort_unstable();
                    set.dedup();
                    sv.capability_bounding_set = Some(match &sv.capability_bounding_set {
                        Some(old) => union(old, &set),
                        None => set,
                    });
                    (false, format!("CapabilityBoundingSet={}", cap_names(c)))
                }
                Entry::NoNewPrivileges(b, t) => {
                    sv.no_new_privileges = *b;
                    (false, format!("NoNewPrivileges={t}"))
                }
            }
        }

        fn unit_spec() -> impl Strategy<Value = (Unit, String)> {
            let kind = proptest::option::of(select(vec![
                (ServiceType::Simple, "simple"),
                (ServiceType::Exec, "exec"),
                (ServiceType::Oneshot, "oneshot"),
                (ServiceType::Notify, "notify"),
            ]));
            (
                kind,
                vec(command(), 1..4),
                vec(entry(), 0..24),
                select(vec!["=", " = ", "= "]),
            )
                .prop_map(|(kind, starts, entries, eq)| {
                    let mut u = Unit::new("gen.service");
                    let (mut unit_lines, mut service_lines) = (Vec::new(), Vec::new());
                    if let Some((k, t)) = kind {
                        u.service.kind = k;
                        service_lines.push(format!("Type={t}"));
                    }
                    let n = if u.service.kind == ServiceType::Oneshot {
                        starts.len()
                    } else {
                        1
                    };
                    for (c, t) in starts.into_iter().take(n) {
                        u.service.exec_start.push(c);
                        service_lines.push(format!("ExecStart={t}"));
                    }
                    for e in &entries {
                        let (in_unit, text) = apply(e, &mut u);
                        if in_unit {
                            &mut unit_lines
                        } else {
                            &mut service_lines
                        }
                        .push(text);
                    }
                    let body = |lines: Vec<String>| {
                        lines
                            .join("\n")
                            .lines()
                            .map(|l| l.replacen('=', eq, 1))
                            .collect::<Vec<_>>()
                            .join("\n")
                    };
                    let text = format!(
                        "[Unit]\n{}\n\n[Service]\n{}\n",
                        body(unit_lines),
                        body(service_lines)
                    );
                    (u, text)
                })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod socket_tests {
    use super::*;

    fn sock(body: &str) -> Parsed {
        parse("echo.socket", "echo.socket", body)
    }

    fn ok_sock(body: &str) -> (Unit, Socket) {
        let p = sock(body);
        assert!(p.diagnostics.is_empty(), "{:?}", p.diagnostics);
        let u = p.unit.unwrap();
        let s = (*u.socket.clone().unwrap()).clone();
        (u, s)
    }

    /// The one diagnostic of `body`, which must still give a unit.
    fn bad_sock(body: &str) -> (Socket, String) {
        let p = sock(body);
        assert_eq!(p.diagnostics.len(), 1, "{:?}", p.diagnostics);
        let d = p.diagnostics[0].to_string();
        (*p.unit.unwrap().socket.unwrap(), d)
    }

    /// The diagnostics of a body that gives no unit.
    fn refused(body: &str) -> Vec<String> {
        let p = sock(body);
        assert!(p.unit.is_none(), "{body}");
        p.diagnostics.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_systemds() {
        let (u, s) = ok_sock("[Socket]\nListenStream=/run/dbus/system_bus_socket\n");
        assert!(u.is_socket() && !u.is_target());
        assert_eq!(
            s.listen,
            vec![ListenAddress::Path("/run/dbus/system_bus_socket".into())]
        );
        assert_eq!(s.socket_mode, 0o666);
        assert_eq!(s.directory_mode, 0o755);
        assert_eq!((s.user, s.group), (None, None));
        assert_eq!(s.service, "echo.service");
        assert_eq!(s.fd_name, None);
        assert!(!s.remove_on_stop);
        assert_eq!(s.backlog, None);
        // Set up before the service it starts.
        assert_eq!(u.before, vec!["echo.service".to_string()]);
        assert!(!u.on_demand);
    }

    #[test]
    fn dbus_socket_of_a_distribution_parses() {
        let (u, s) = ok_sock(
            "[Unit]\nDescription=D-Bus System Message Bus Socket\n\n\
             [Socket]\nListenStream=/run/dbus/system_bus_socket\n",
        );
        assert_eq!(
            u.description.as_deref(),
            Some("D-Bus System Message Bus Socket")
        );
        assert_eq!(s.listen.len(), 1);
    }

    #[test]
    fn every_key() {
        let (u, s) = ok_sock(
            "[Unit]\nDescription=d\nAfter=x.service\n[Socket]\n\
             ListenStream=/run/a.sock\nListenStream=@abstract-%N\n\
             SocketMode=0600\nDirectoryMode=0750\nSocketUser=busd\nSocketGroup=1234\n\
             Service=busd.service\nFileDescriptorName=dbus\nRemoveOnStop=yes\n\
             Backlog=16\nAccept=no\nPassCredentials=yes\n\
             [Install]\nWantedBy=sockets.target\n",
        );
        assert_eq!(
            s.listen,
            vec![
                ListenAddress::Path("/run/a.sock".into()),
                ListenAddress::Abstract("abstract-echo".into()),
            ]
        );
        assert_eq!(s.socket_mode, 0o600);
        assert_eq!(s.directory_mode, 0o750);
        assert_eq!(s.user.as_deref(), Some("busd"));
        assert_eq!(s.group.as_deref(), Some("1234"));
        assert_eq!(s.service, "busd.service");
        assert_eq!(s.fd_name.as_deref(), Some("dbus"));
        assert!(s.remove_on_stop);
        assert_eq!(s.backlog, Some(16));
        assert_eq!(u.after, vec!["x.service".to_string()]);
        assert_eq!(u.before, vec!["busd.service".to_string()]);
        assert_eq!(s.listen[1].to_string(), "@abstract-echo");
    }

    #[test]
    fn empty_values_reset() {
        let (_, s) = ok_sock(
            "[Socket]\nListenStream=/a\nListenStream=\nListenStream=/b\nSocketMode=0600\n\
             SocketMode=\nSocketUser=x\nSocketUser=\nService=a.service\nService=\n\
             FileDescriptorName=n\nFileDescriptorName=\nBacklog=3\nBacklog=\n\
             RemoveOnStop=yes\nRemoveOnStop=\nAccept=\n",
        );
        assert_eq!(s, {
            let mut d = Socket {
                listen: vec![ListenAddress::Path("/b".into())],
                ..Socket::default()
            };
            d.service = "echo.service".into();
            d
        });
    }

    #[test]
    fn bad_values_name_file_line_and_key_and_keep_the_default() {
        let cases: &[(&str, &str)] = &[
            (
                "SocketMode=0999",
                "echo.socket:3: SocketMode: invalid octal mode \"0999\", ignored",
            ),
            (
                "DirectoryMode=rwx",
                "echo.socket:3: DirectoryMode: invalid octal mode \"rwx\", ignored",
            ),
            (
                "SocketUser=-bad",
                "echo.socket:3: SocketUser: invalid user or group name \"-bad\", ignored",
            ),
            (
                "SocketGroup=65535",
                "echo.socket:3: SocketGroup: invalid user or group name \"65535\", ignored",
            ),
            (
                "FileDescriptorName=a:b",
                "echo.socket:3: FileDescriptorName: invalid descriptor name \"a:b\" (at most \
                 255 printable ASCII characters, no ':' or space), ignored",
            ),
            (
                "RemoveOnStop=maybe",
                "echo.socket:3: RemoveOnStop: invalid boolean \"maybe\", ignored",
            ),
            (
                "Backlog=-1",
                "echo.socket:3: Backlog: invalid number \"-1\", ignored",
            ),
            (
                "ListenStream=/run/a.sock",
                "echo.socket:3: ListenStream: /run/a.sock is already listed, ignored",
            ),
        ];
        for (line, want) in cases {
            let (s, d) = bad_sock(&format!("[Socket]\nListenStream=/run/a.sock\n{line}\n"));
            assert_eq!(&d, want);
            let mut default = Socket {
                listen: vec![ListenAddress::Path("/run/a.sock".into())],
                ..Socket::default()
            };
            default.service = "echo.service".into();
            assert_eq!(s, default, "{line}");
        }
        let long = "x".repeat(256);
        let (s, d) = bad_sock(&format!(
            "[Socket]\nListenStream=/a\nFileDescriptorName={long}\n"
        ));
        assert!(d.starts_with("echo.socket:3: FileDescriptorName: invalid descriptor name"));
        assert_eq!(s.fd_name, None);
    }

    #[test]
    fn what_init_cannot_listen_on_refuses_the_unit() {
        let cases: &[(&str, &str)] = &[
            (
                "ListenStream=8080",
                "echo.socket:2: ListenStream: \"8080\" is a port or IP address: only absolute \
                 unix socket paths and @abstract names are supported",
            ),
            (
                "ListenStream=127.0.0.1:53",
                "echo.socket:2: ListenStream: \"127.0.0.1:53\" is a port or IP address: only \
                 absolute unix socket paths and @abstract names are supported",
            ),
            (
                "ListenStream=[::1]:80",
                "echo.socket:2: ListenStream: \"[::1]:80\" is a port or IP address: only \
                 absolute unix socket paths and @abstract names are supported",
            ),
            (
                "ListenStream=vsock:2:1024",
                "echo.socket:2: ListenStream: \"vsock:2:1024\" is a vsock address: only \
                 absolute unix socket paths and @abstract names are supported",
            ),
            (
                "ListenStream=run/a.sock",
                "echo.socket:2: ListenStream: \"run/a.sock\" is a relative path: only absolute \
                 unix socket paths and @abstract names are supported",
            ),
            (
                "ListenStream=/run/dir/",
                "echo.socket:2: ListenStream: \"/run/dir/\" names a directory, not a socket",
            ),
            (
                "ListenStream=@",
                "echo.socket:2: ListenStream: empty abstract socket name",
            ),
            (
                "ListenStream=/run/%z",
                "echo.socket:2: ListenStream: unsupported specifier %z",
            ),
            (
                "Accept=yes",
                "echo.socket:2: Accept: Accept=yes (a service instance per connection) is not \
                 supported, only Accept=no",
            ),
            (
                "Accept=sometimes",
                "echo.socket:2: Accept: invalid boolean \"sometimes\"",
            ),
            (
                "Service=other.socket",
                "echo.socket:2: Service: \"other.socket\" is not a service name",
            ),
            (
                "ListenDatagram=/run/d.sock",
                "echo.socket:2: ListenDatagram: not supported: init makes stream sockets only \
                 (ListenStream=)",
            ),
            (
                "ListenFIFO=/run/fifo",
                "echo.socket:2: ListenFIFO: not supported: init makes stream sockets only \
                 (ListenStream=)",
            ),
        ];
        for (line, want) in cases {
            let d = refused(&format!("[Socket]\n{line}\nListenStream=/run/ok.sock\n"));
            assert_eq!(d, vec![want.to_string()], "{line}");
        }
        let long = format!("/{}", "x".repeat(107));
        let d = refused(&format!("[Socket]\nListenStream={long}\n"));
        assert!(d[0].contains("is longer than 107 bytes"), "{d:?}");
        let ok = format!("/{}", "x".repeat(106));
        ok_sock(&format!("[Socket]\nListenStream={ok}\n"));
    }

    #[test]
    fn a_socket_without_listen_stream_is_refused() {
        assert_eq!(
            refused("[Unit]\nDescription=x\n"),
            vec!["echo.socket: missing ListenStream=, nothing to listen on".to_string()]
        );
        assert_eq!(
            refused("[Socket]\nListenStream=/a\nListenStream=\n"),
            vec!["echo.socket: missing ListenStream=, nothing to listen on".to_string()]
        );
    }

    #[test]
    fn sections_and_unknown_keys() {
        let p = sock(
            "[Socket]\nListenStream=/a\nFreeBind=yes\n[Service]\nExecStart=/bin/x\n\
             [X-Mine]\nFoo=1\n",
        );
        let d: Vec<String> = p.diagnostics.iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            vec![
                "echo.socket:3: FreeBind: unknown key, ignored".to_string(),
                "echo.socket:4: unknown section [Service], its keys are ignored".to_string(),
            ]
        );
        let u = p.unit.unwrap();
        assert!(u.service.exec_start.is_empty());
        // A service has no [Socket] section.
        let p = parse(
            "a.service",
            "a.service",
            "[Service]\nExecStart=/bin/x\n[Socket]\nListenStream=/a\n",
        );
        assert_eq!(
            p.diagnostics[0].to_string(),
            "a.service:3: unknown section [Socket], its keys are ignored"
        );
        assert!(!p.unit.unwrap().is_socket());
    }

    proptest::proptest! {
        /// Any mix of socket keys and values parses without a panic, and a
        /// unit that parses listens on something.
        #[test]
        fn socket_parser_never_panics(
            text in "(\\[Socket\\]\n|\\[Unit\\]\n|ListenStream=[ -~]{0,40}\n|Accept=[a-z]{0,4}\n|\
                     (SocketMode|Backlog|Service|FileDescriptorName|SocketUser)=[ -~]{0,20}\n){0,10}"
        ) {
            let p = parse("p.socket", "p.socket", &text);
            if let Some(u) = p.unit {
                proptest::prop_assert!(u.socket.is_some_and(|s| !s.listen.is_empty()));
            }
        }
    }

    #[test]
    fn service_names_and_specifiers() {
        let (u, s) = ok_sock("[Socket]\nListenStream=/run/%n\nService=%N-d.service\n");
        assert_eq!(
            s.listen,
            vec![ListenAddress::Path("/run/echo.socket".into())]
        );
        assert_eq!(s.service, "echo-d.service");
        assert_eq!(u.before, vec!["echo-d.service".to_string()]);
        // An explicit Before= of the same service is not repeated.
        let (u, _) = ok_sock("[Unit]\nBefore=echo.service\n[Socket]\nListenStream=/a\n");
        assert_eq!(u.before, vec!["echo.service".to_string()]);
    }
}
