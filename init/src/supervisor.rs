//! Service supervision: starting units in dependency order, reaping,
//! restarts with start limits, success/failure actions, and stopping units
//! in reverse order at shutdown. One thread, one poll(2) loop.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};

use crate::names::NameIndex;
use crate::spawn::{self, Child, ExecContext};
use crate::sys::SignalFd;
use crate::timeline::{Event, Timeline};
use crate::unit::{Action, Command, Preserve, Restart, ServiceType, Unit};
use crate::{control, Mode};

/// init's nice value while it starts the boot's units in a VM: the lowest
/// priority, so that a unit it just started (the agent) gets the CPU before
/// init goes on to the next one. Each unit's processes are set back to 0.
pub const BOOT_NICE: i32 = 19;

/// The longest init stays at [`BOOT_NICE`].
pub const DEFER_MAX: Duration = Duration::from_millis(100);

/// While it holds back the next unit, how often init looks whether the
/// ones it started have stopped running.
pub const HOLD_POLL: Duration = Duration::from_micros(250);

/// After the first service's fork, how often init looks whether that
/// process has stopped running before it makes the held-back sockets
/// ([`Supervisor::start_sockets_now`]): longer than an exec takes to reach
/// `main`, so init does not wake in between.
pub const SOCKETS_POLL: Duration = Duration::from_millis(1);

/// The longest the held-back sockets wait for the first service to stop
/// running.
pub const SOCKETS_WAIT_MAX: Duration = Duration::from_millis(20);

/// How often init tries again to write log lines waiting for a full
/// stderr (container mode).
pub const LOG_RETRY: Duration = Duration::from_millis(100);

/// The most listening sockets init watches at once (all socket units).
pub const MAX_LISTEN_FDS: usize = 64;

/// A socket unit that starts its service more often than this within
/// [`TRIGGER_LIMIT_INTERVAL`] fails (systemd's `TriggerLimitBurst=`
/// default), so that a service that never accepts cannot make init spin.
pub const TRIGGER_LIMIT_BURST: usize = 20;
/// systemd's `TriggerLimitIntervalSec=` default.
pub const TRIGGER_LIMIT_INTERVAL: Duration = Duration::from_secs(2);

/// What [`Supervisor::defer_setup`] leaves for later: paths.
#[derive(Debug, Clone)]
pub struct LateSetup {
    pub run_dir: PathBuf,
    pub timeline: PathBuf,
    pub control_socket: PathBuf,
}

/// How the machine (or container) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerKind {
    Poweroff,
    Reboot,
    Halt,
}

impl PowerKind {
    pub fn name(self) -> &'static str {
        match self {
            PowerKind::Poweroff => "poweroff",
            PowerKind::Reboot => "reboot",
            PowerKind::Halt => "halt",
        }
    }
}

/// How much of the orderly shutdown to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Stop units in reverse order, kill the rest, sync, unmount, reboot(2).
    Orderly,
    /// Skip stopping units.
    Force,
    /// sync and reboot(2) now.
    Immediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownRequest {
    pub kind: PowerKind,
    pub urgency: Urgency,
}

impl ShutdownRequest {
    pub fn from_action(a: Action) -> Option<Self> {
        use PowerKind::*;
        use Urgency::*;
        let (kind, urgency) = match a {
            Action::None => return None,
            Action::Poweroff | Action::Exit => (Poweroff, Orderly),
            Action::Reboot => (Reboot, Orderly),
            Action::Halt => (Halt, Orderly),
            Action::PoweroffForce | Action::ExitForce => (Poweroff, Force),
            Action::RebootForce => (Reboot, Force),
            Action::HaltForce => (Halt, Force),
            Action::PoweroffImmediate => (Poweroff, Immediate),
            Action::RebootImmediate => (Reboot, Immediate),
            Action::HaltImmediate => (Halt, Immediate),
        };
        Some(Self { kind, urgency })
    }
}

/// The signal → action mapping of PID 1 (see docs/init.md).
/// Why a unit cannot start for want of a mount: a `Requires=` mount unit
/// of an /etc/fstab entry that is not mounted, or a `RequiresMountsFor=` path below
/// an /etc/fstab mount point that is not mounted. init mounts every
/// fstab entry before the first unit, so ordering (`After=` a mount) holds
/// by itself; only what failed (or was `noauto`) is missing.
fn missing_mount(unit: &Unit, fstab: &[String]) -> Option<String> {
    let mounted = |p: &str| crate::condition::is_mount_point(std::path::Path::new(p));
    for r in unit.requires.iter().filter(|r| r.ends_with(".mount")) {
        let stem = r.trim_end_matches(".mount");
        let path = if stem == "-" {
            "/".to_string()
        } else {
            format!("/{}", crate::unit::unescape_name(stem))
        };
        // Only the mounts init makes from /etc/fstab are init's to answer
        // for; systemd's own (dev-hugepages.mount …) are not checked.
        if fstab.contains(&path) && !mounted(&path) {
            return Some(format!("requires {r}, and nothing is mounted on {path}"));
        }
    }
    for p in &unit.requires_mounts_for {
        for t in fstab.iter().filter(|t| *t != "/") {
            if p.starts_with(t) && !mounted(t) {
                return Some(format!(
                    "RequiresMountsFor={}: {t} (/etc/fstab) is not mounted",
                    p.display()
                ));
            }
        }
    }
    None
}

/// The power action a target of systemd's stands for (`OnFailure=`).
pub fn power_target(name: &str) -> Option<PowerKind> {
    match name {
        "poweroff.target" => Some(PowerKind::Poweroff),
        "reboot.target" => Some(PowerKind::Reboot),
        "halt.target" => Some(PowerKind::Halt),
        _ => None,
    }
}

pub fn signal_request(sig: i32) -> Option<ShutdownRequest> {
    use PowerKind::*;
    use Urgency::*;
    let rt = crate::sys::sigrtmin();
    let (kind, urgency) = match sig {
        libc::SIGTERM | libc::SIGPWR | libc::SIGUSR2 => (Poweroff, Orderly),
        libc::SIGINT => (Reboot, Orderly),
        libc::SIGUSR1 => (Halt, Orderly),
        s if s == rt + 3 => (Halt, Orderly),
        s if s == rt + 4 => (Poweroff, Orderly),
        s if s == rt + 5 => (Reboot, Orderly),
        s if s == rt + 13 => (Halt, Immediate),
        s if s == rt + 14 => (Poweroff, Immediate),
        s if s == rt + 15 => (Reboot, Immediate),
        _ => return None,
    };
    Some(ShutdownRequest { kind, urgency })
}

/// Every signal init blocks and reads from its signalfd.
pub fn handled_signals() -> Vec<i32> {
    let rt = crate::sys::sigrtmin();
    let mut v = vec![
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGPWR,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGHUP,
    ];
    v.extend([3, 4, 5, 13, 14, 15].map(|n| rt + n));
    v
}

/// How a process ended, as systemd classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Exit(i32),
    Signal(i32),
    /// Start or stop did not complete in time.
    Timeout,
    StartLimit,
    DependencyFailed,
    SpawnFailed,
    /// Type=notify process exited before READY=1; Type=forking left no
    /// daemon in its PIDFile= (systemd's result "protocol" for both).
    Protocol,
    /// A socket unit could not make its sockets.
    ListenFailed,
    /// A socket unit started its service too often.
    TriggerLimit,
}

impl Outcome {
    pub fn from_wait(status: WaitStatus) -> Self {
        Self::from_parts(status.exit_status(), status.terminating_signal())
    }

    fn from_parts(exit: Option<i32>, signal: Option<i32>) -> Self {
        if let Some(code) = exit {
            return if code == 0 {
                Outcome::Success
            } else {
                Outcome::Exit(code)
            };
        }
        match signal {
            // systemd's "clean" signals.
            Some(s) if [libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE].contains(&s) => {
                Outcome::Success
            }
            Some(s) => Outcome::Signal(s),
            None => Outcome::Exit(255),
        }
    }

    pub fn is_success(self) -> bool {
        self == Outcome::Success
    }

    fn describe(self) -> String {
        match self {
            Outcome::Success => "success".into(),
            Outcome::Exit(c) => format!("exit status {c}"),
            Outcome::Signal(s) => format!("signal {s}"),
            Outcome::Timeout => "timeout".into(),
            Outcome::StartLimit => "start limit hit".into(),
            Outcome::DependencyFailed => "dependency failed".into(),
            Outcome::SpawnFailed => "could not be started".into(),
            Outcome::Protocol => {
                "protocol error (exited before READY=1, or no daemon in PIDFile=)".into()
            }
            Outcome::ListenFailed => "could not listen".into(),
            Outcome::TriggerLimit => "trigger limit hit".into(),
        }
    }
}

fn should_restart(r: Restart, o: Outcome) -> bool {
    let clean = o.is_success();
    let abnormal = matches!(o, Outcome::Signal(_) | Outcome::Timeout);
    match r {
        Restart::No => false,
        Restart::Always => true,
        Restart::OnSuccess => clean,
        Restart::OnFailure => !clean,
        Restart::OnAbnormal => abnormal,
        Restart::OnAbort => matches!(o, Outcome::Signal(_)),
        Restart::OnWatchdog => false,
    }
}

/// What to do once a stop completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// The unit ended on its own or failed: restart logic and actions follow.
    Terminate(Outcome),
    /// Stop was requested (shutdown): the unit stays down.
    Stay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet (waiting for units it is ordered after).
    Waiting,
    /// ExecStartPre commands running.
    StartPre,
    /// Main process spawned, not yet ready (notify), or oneshot ExecStart running.
    Starting,
    Running,
    Stopping(AfterStop),
    /// Waiting RestartSec before the next start.
    AutoRestart,
    /// Finished successfully, or stopped at shutdown.
    Exited,
    Failed,
    /// A condition was false.
    Skipped,
    /// Not started at boot: a service its socket unit starts on demand.
    Inactive,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::StartPre | State::Starting => "starting",
            State::Running => "running",
            State::Stopping(_) => "stopping",
            State::AutoRestart => "auto-restart",
            State::Exited => "exited",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Inactive => "inactive",
        }
    }

    fn is_terminal(self) -> bool {
        matches!(
            self,
            State::Exited | State::Failed | State::Skipped | State::Inactive
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Restart,
    StartTimeout,
    StopTimeout,
    /// SIGKILL sent; give up waiting after this.
    KillTimeout,
    /// Type=forking: its PIDFile= was not there yet; look again.
    PidFile,
}

/// One unit and its runtime state.
#[derive(Debug)]
pub struct UnitRt {
    pub unit: Unit,
    pub state: State,
    pub main: Option<Child>,
    control: Option<(Child, Command)>,
    queue: VecDeque<Command>,
    ctx: Option<ExecContext>,
    pub restarts: u32,
    starts: heapless::Deque<Instant, 64>,
    pub active_since: Option<Instant>,
    /// Became ready at least once: units ordered after it may start.
    pub settled: bool,
    result: Outcome,
    deadline: Option<(Instant, Timer)>,
    /// KillSignal already sent during this stop.
    signalled: bool,
    /// `RuntimeDirectory=` set up by a start and not removed yet (kept
    /// across restarts with `RuntimeDirectoryPreserve=restart`).
    runtime_dirs: bool,
    /// A socket unit's runtime part (`None` for every other unit).
    socket: Option<Box<SocketRt>>,
}

/// A socket unit's listening sockets and what they start.
#[derive(Debug, Default)]
struct SocketRt {
    /// The index of the service it starts (`None`: that unit is not loaded).
    service: Option<usize>,
    /// One per `ListenStream=`, in order; empty unless listening. Shared
    /// with the service's [`ExecContext`] while that holds them.
    fds: Vec<Rc<OwnedFd>>,
    /// When it last started its service (the trigger limit).
    triggers: heapless::Deque<Instant, TRIGGER_LIMIT_BURST>,
}

impl UnitRt {
    pub fn new(unit: Unit) -> Self {
        Self {
            unit,
            state: State::Waiting,
            main: None,
            control: None,
            queue: VecDeque::new(),
            ctx: None,
            restarts: 0,
            starts: heapless::Deque::new(),
            active_since: None,
            settled: false,
            result: Outcome::Success,
            deadline: None,
            signalled: false,
            runtime_dirs: false,
            socket: None,
        }
    }

    pub fn main_pid(&self) -> Option<u32> {
        self.main.as_ref().map(Child::id)
    }

    fn name(&self) -> &str {
        &self.unit.name
    }

    /// The unit stopped (`restarting`: an automatic restart follows):
    /// removes its runtime directories unless `RuntimeDirectoryPreserve=`
    /// keeps them.
    fn release_runtime_directories(&mut self, restarting: bool) {
        self.kill_cgroup_leftovers();
        if !self.runtime_dirs {
            return;
        }
        let remove = match self.unit.service.runtime_directory_preserve {
            Preserve::No => true,
            Preserve::Restart => !restarting,
            Preserve::Yes => false,
        };
        if remove {
            spawn::remove_runtime_directories(&self.unit);
            self.runtime_dirs = false;
        }
    }
}

impl UnitRt {
    /// The unit ended: a service lets go of its copies of its socket
    /// units' listening sockets (a socket unit that has stopped listening
    /// must not keep accepting connections through them); a socket unit
    /// closes its own.
    fn drop_listen_fds(&mut self) {
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.listen_fds = Vec::new();
        }
        self.socket_close();
    }

    /// A socket unit stops listening: its sockets are closed (the service
    /// keeps its copies while it runs) and, with `RemoveOnStop=`, their
    /// files removed.
    fn socket_close(&mut self) {
        let Some(rt) = self.socket.as_mut() else {
            return;
        };
        let was_open = !rt.fds.is_empty();
        rt.fds = Vec::new();
        if let Some(sock) = &self.unit.socket {
            if was_open && sock.remove_on_stop {
                for addr in &sock.listen {
                    crate::socket::remove(addr);
                }
            }
        }
    }
}

impl UnitRt {
    /// The unit stopped: what is left in its cgroup (`TasksMax=` units) is
    /// killed, as systemd's `KillMode=control-group` does.
    fn kill_cgroup_leftovers(&self) {
        if self.main.is_some() || self.control.is_some() {
            return;
        }
        if let Some(cg) = self.ctx.as_ref().and_then(|c| c.cgroup.as_ref()) {
            let n = cg.kill_leftovers();
            if n > 0 {
                log::info!("{}: killed {n} process(es) left in its cgroup", self.name());
            }
        }
    }
}

fn pid_of(child: &Child) -> Option<Pid> {
    i32::try_from(child.id()).ok().and_then(Pid::from_raw)
}

/// How often a forking service's missing PIDFile= is looked for again.
const PID_FILE_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug)]
enum PidFileError {
    /// Missing or empty: the daemon may not have written it yet.
    NotYet(String),
    Refused(String),
}

/// The pid a forking service's PIDFile= names, trusted only as systemd
/// would: the file owned by root or by the unit's `User=`, the pid above 1,
/// a process that exists (a zombie not yet reaped counts: init reaps it as
/// the unit's main process), whose parent is init (the daemon, orphaned,
/// is init's child — a stale or forged file cannot hand init the agent or
/// some other process's group to signal), and not another unit's process.
fn read_pid_file(
    path: &std::path::Path,
    user: Option<u32>,
    others: &[u32],
) -> Result<u32, PidFileError> {
    use std::os::unix::fs::MetadataExt;
    let refused = |why: String| Err(PidFileError::Refused(why));
    let text = match crate::sys::read_regular_file(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PidFileError::NotYet(e.to_string()))
        }
        Err(e) => return refused(e.to_string()),
    };
    if text.trim().is_empty() {
        return Err(PidFileError::NotYet("empty".into()));
    }
    let owner = std::fs::metadata(path).map_or(u32::MAX, |m| m.uid());
    if owner != 0 && Some(owner) != user {
        return refused(format!(
            "owned by uid {owner}, neither root nor the unit's user"
        ));
    }
    let Some(pid) = text.trim().parse::<u32>().ok().filter(|&p| p > 1) else {
        return refused(format!("{:?} is not a process id", text.trim()));
    };
    let alive = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
    if !alive {
        return refused(format!(
            "process {pid} does not exist (the daemon has exited)"
        ));
    }
    if others.contains(&pid) {
        return refused(format!("process {pid} is another unit's"));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ppid …": comm may hold spaces and parentheses.
    let ppid = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    if ppid != Some(std::process::id()) {
        return refused(format!(
            "process {pid} is not init's child (its parent is {})",
            ppid.map_or_else(|| "unknown".to_string(), |p| p.to_string())
        ));
    }
    Ok(pid)
}

/// Sends `sig` (a raw number: KillSignal= may be SIGRTMIN+N) to the process
/// group `child` leads, or to the process alone if it left its group.
fn kill_group(child: &Child, sig: i32) {
    if let Some(pid) = pid_of(child) {
        let pid = pid.as_raw_nonzero().get();
        // Each unit process leads its own session and process group.
        if crate::sys::kill_pid(-pid, sig).is_err() {
            let _ = crate::sys::kill_pid(pid, sig);
        }
        if sig != libc::SIGKILL {
            let _ = crate::sys::kill_pid(-pid, libc::SIGCONT);
        }
    }
}

#[derive(Debug)]
enum ShutdownPhase {
    /// Units stopped one by one, in order, since `since`; at most
    /// `Settings::stop_bound`, then what is left is killed.
    StoppingUnits {
        since: Instant,
    },
    /// SIGTERM sent to every remaining process at `since`.
    Terminating {
        since: Instant,
    },
    /// SIGKILL sent.
    Killing {
        since: Instant,
    },
    Done,
}

/// Settings the supervisor takes from boot.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub base_env: Vec<(String, String)>,
    pub notify_socket: PathBuf,
    pub status_on_console: bool,
    pub kill_timeout: Duration,
    /// The most an orderly shutdown waits for units to stop one by one,
    /// whatever their `TimeoutStopSec=` (`init.shutdown_timeout=`).
    pub stop_bound: Duration,
    /// The mount points /etc/fstab lists (`RequiresMountsFor=`).
    pub fstab_targets: Vec<String>,
}

/// The supervisor: units, event sources, shutdown progress.
#[derive(Debug)]
pub struct Supervisor {
    pub units: Vec<UnitRt>,
    /// `units`' names and ordering as indices (rebuilt when units are
    /// added).
    order: Order,
    settings: Settings,
    signals: SignalFd,
    notify: Option<OwnedFd>,
    control: Option<OwnedFd>,
    /// The control connections being served (non-blocking, polled).
    clients: control::Clients,
    pub timeline: Timeline,
    shutdown: Option<(ShutdownRequest, ShutdownPhase)>,
    all_started: bool,
    /// Since when init runs at nice 19 while it starts the boot's units (VM
    /// mode), so that each unit it has started runs ahead of init's work on
    /// the next (docs/init.md, "Units first").
    deferring: Option<Instant>,
    /// While deferring: a unit process was just started, and the next
    /// unit waits until no other task is runnable (or [`DEFER_MAX`]). The
    /// open /proc/loadavg tells.
    hold: Option<std::fs::File>,
    /// The first service has been forked and the socket units held back
    /// for it are still to be made: since when, and /proc/loadavg, which
    /// tells when that process has stopped running
    /// ([`Self::sockets_due`]).
    sockets_pending: Option<(Instant, Option<std::fs::File>)>,
    /// Deferring has ended; it does not start again.
    deferred: bool,
    /// init's own run directory, timeline file and sockets, not yet made
    /// (see [`Self::set_up_late`]).
    late: Option<LateSetup>,
    /// Units an `OnFailure=` asked for, started by the next
    /// [`Self::schedule`] pass.
    on_failure_queue: Vec<usize>,
    /// The socket units (and their services) not yet read: given the units
    /// loaded, the units to start or keep (see [`Self::defer_units`]).
    later_units: Option<Box<dyn LaterUnits>>,
    /// A unit other than a socket has been started (socket units wait for
    /// it, and for the late set-up, in a VM).
    started_any: bool,
    pub orphans_reaped: u64,
    pub boot_instant: Instant,
}

/// Units left to read later (boot's socket units).
pub trait LaterUnits: std::fmt::Debug {
    /// Reads them; given the units loaded, returns the units to start or
    /// keep (those loaded among them).
    fn load(self: Box<Self>, loaded: &[Unit]) -> Vec<Unit>;
}

/// Sets up what the supervisor keeps for each unit that lacks it: an on
/// demand service is inactive until its socket unit starts it; a socket
/// unit knows its service's place.
fn adopt(units: &mut [UnitRt]) {
    // Each socket unit's service's index, looked up by name once.
    let by_name = NameIndex::new(units.iter().map(|u| u.unit.name.as_str()));
    let services: Vec<Option<usize>> = units
        .iter()
        .map(|u| by_name.get(&u.unit.socket.as_ref()?.service))
        .collect();
    for i in 0..units.len() {
        let Some(u) = units.get(i) else { continue };
        if u.unit.on_demand {
            if let Some(u) = units.get_mut(i) {
                if u.state == State::Waiting {
                    u.state = State::Inactive;
                }
            }
            continue;
        }
        if u.unit.socket.is_none() {
            continue;
        }
        let service = services.get(i).copied().flatten();
        if let Some(u) = units.get_mut(i) {
            if u.socket.is_none() {
                u.socket = Some(Box::new(SocketRt {
                    service,
                    ..SocketRt::default()
                }));
            }
        }
    }
}

/// The units' ordering as indices, built once for a set of units (in
/// O(units + edges · log units)) so that scheduling and stopping look at
/// each unit's own neighbours, never at every unit.
#[derive(Debug, Default)]
struct Order {
    /// Unit index by name.
    by_name: NameIndex,
    /// For each unit, the units it is ordered after: its `After=`, and
    /// those whose `Before=` names it (itself never).
    after: Vec<Vec<usize>>,
    /// For each unit, the units ordered after it.
    before: Vec<Vec<usize>>,
    /// The socket units.
    sockets: Vec<usize>,
}

impl Order {
    fn build(units: &[UnitRt]) -> Order {
        let by_name = NameIndex::new(units.iter().map(|u| u.unit.name.as_str()));
        let mut after = vec![Vec::new(); units.len()];
        let mut before = vec![Vec::new(); units.len()];
        for (i, u) in units.iter().enumerate() {
            let edges = u
                .unit
                .after
                .iter()
                .filter_map(|n| by_name.get(n).map(|e| (i, e)))
                .chain(
                    u.unit
                        .before
                        .iter()
                        .filter_map(|n| by_name.get(n).map(|l| (l, i))),
                );
            for (later, earlier) in edges {
                if later == earlier {
                    continue;
                }
                if let Some(a) = after.get_mut(later) {
                    a.push(earlier);
                }
                if let Some(b) = before.get_mut(earlier) {
                    b.push(later);
                }
            }
        }
        // A pair named both ways (A's After=B, B's Before=A) is in the
        // lists twice: checked twice, no harm.
        let sockets = (0..units.len())
            .filter(|&i| units.get(i).is_some_and(|u| u.unit.is_socket()))
            .collect();
        Order {
            by_name,
            after,
            before,
            sockets,
        }
    }

    /// The units unit `i` is ordered after.
    fn after(&self, i: usize) -> &[usize] {
        self.after.get(i).map_or(&[], Vec::as_slice)
    }

    /// The units ordered after unit `i`.
    fn before(&self, i: usize) -> &[usize] {
        self.before.get(i).map_or(&[], Vec::as_slice)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name)
    }
}

impl Supervisor {
    pub fn new(
        units: Vec<Unit>,
        settings: Settings,
        signals: SignalFd,
        timeline: Timeline,
    ) -> Self {
        let mut units: Vec<UnitRt> = units.into_iter().map(UnitRt::new).collect();
        adopt(&mut units);
        let order = Order::build(&units);
        Self {
            units,
            order,
            settings,
            signals,
            notify: None,
            control: None,
            clients: control::Clients::serving(0),
            timeline,
            shutdown: None,
            all_started: false,
            deferring: None,
            hold: None,
            sockets_pending: None,
            deferred: false,
            late: None,
            later_units: None,
            started_any: false,
            on_failure_queue: Vec::new(),
            orphans_reaped: 0,
            boot_instant: Instant::now(),
        }
    }

    /// Runs until shutdown has stopped everything; returns what to do then.
    pub fn run(&mut self) -> ShutdownRequest {
        if self.settings.mode != Mode::Vm {
            self.set_up_late();
        }
        self.schedule();
        loop {
            // In a VM, init's own directory, timeline file and sockets wait
            // like the next unit does: until the unit just forked (the
            // agent) has run, so that they do not delay its exec.
            if self.hold.is_none() && self.sockets_pending.is_none() {
                self.set_up_late();
            }
            if let Some((req, ShutdownPhase::Done)) = &self.shutdown {
                return *req;
            }
            if let Some((req, _)) = &self.shutdown {
                if req.urgency == Urgency::Immediate {
                    return *req;
                }
            }
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            self.wait(timeout);
            crate::logger::drain();
            self.handle_timers();
            self.schedule();
            self.advance_shutdown();
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) {
        let ts = timeout.map(|d| rustix::time::Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        // Fixed capacity: the loop does not allocate per wakeup.
        let mut fds: heapless::Vec<PollFd<'_>, { 3 + control::MAX_CLIENTS + MAX_LISTEN_FDS }> =
            heapless::Vec::new();
        let _ = fds.push(PollFd::new(self.signals.fd(), PollFlags::IN));
        if let Some(n) = &self.notify {
            let _ = fds.push(PollFd::new(n, PollFlags::IN));
        }
        let control_at = self.control.as_ref().map(|c| {
            let _ = fds.push(PollFd::new(c, PollFlags::IN));
            fds.len() - 1
        });
        // Control clients: each waits in the poll set, none is waited on.
        let first_client = fds.len();
        let mut client_slots: heapless::Vec<usize, { control::MAX_CLIENTS }> = heapless::Vec::new();
        for (slot, fd, flags) in self.clients.wanted() {
            if client_slots.push(slot).is_ok()
                && fds.push(PollFd::from_borrowed_fd(fd, flags)).is_err()
            {
                client_slots.pop();
            }
        }
        // Listening sockets whose service is down: a pending connection
        // starts it. The unit of each polled socket, by position.
        let first_listen = fds.len();
        let mut owners: heapless::Vec<usize, MAX_LISTEN_FDS> = heapless::Vec::new();
        if self.shutdown.is_none() {
            for (i, u) in self.units.iter().enumerate() {
                if !self.watching(u) {
                    continue;
                }
                for fd in u.socket.iter().flat_map(|s| s.fds.iter()) {
                    if owners.push(i).is_ok()
                        && fds.push(PollFd::new(&**fd, PollFlags::IN)).is_err()
                    {
                        owners.pop();
                    }
                }
            }
        }
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                log::error!("poll: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let accept = control_at
            .and_then(|i| fds.get(i))
            .is_some_and(|fd| !fd.revents().is_empty());
        let mut ready_clients: heapless::Vec<usize, { control::MAX_CLIENTS }> =
            heapless::Vec::new();
        for (fd, &slot) in fds.iter().skip(first_client).zip(client_slots.iter()) {
            if !fd.revents().is_empty() {
                let _ = ready_clients.push(slot);
            }
        }
        let mut pending: heapless::Vec<(usize, bool), MAX_LISTEN_FDS> = heapless::Vec::new();
        for (fd, &i) in fds.iter().skip(first_listen).zip(owners.iter()) {
            let ev = fd.revents();
            if ev.is_empty() || pending.iter().any(|&(j, _)| j == i) {
                continue;
            }
            // A listening socket in error (never seen in practice) would
            // wake init at once, forever: that socket unit fails.
            let _ = pending.push((i, ev.contains(PollFlags::IN)));
        }
        drop(fds);
        for (i, readable) in pending {
            if readable {
                self.trigger(i);
            } else {
                if let Some(u) = self.units.get(i) {
                    log::error!("{}: listening socket reports an error", u.name());
                }
                self.fail_socket(i, Outcome::ListenFailed);
            }
        }
        // READY=1 first: a notify unit that reports and exits at once must
        // be seen as ready before its exit is reaped (as systemd orders it).
        self.read_notify();
        self.read_signals();
        self.serve_control(accept, &ready_clients);
    }

    fn read_signals(&mut self) {
        loop {
            match self.signals.read() {
                Ok(Some(sig)) if sig == libc::SIGCHLD => self.reap(),
                Ok(Some(libc::SIGHUP)) => log::debug!("SIGHUP ignored"),
                Ok(Some(sig)) => match signal_request(sig) {
                    Some(req) => {
                        log::info!("signal {sig}: {}", req.kind.name());
                        self.request_shutdown(req);
                    }
                    None => log::debug!("signal {sig} ignored"),
                },
                Ok(None) => break,
                Err(e) => {
                    log::error!("read signalfd: {e}");
                    break;
                }
            }
        }
        // A SIGCHLD may coalesce with others or arrive between reads: reap anyway.
        self.reap();
    }

    /// Reaps every exited child (WNOHANG loop); unit processes go to their unit.
    pub fn reap(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
            self.on_exit(pid, status);
        }
    }

    fn on_exit(&mut self, pid: Pid, status: WaitStatus) {
        let raw = u32::try_from(pid.as_raw_nonzero().get()).unwrap_or(0);
        let outcome = Outcome::from_wait(status);
        for i in 0..self.units.len() {
            let Some(u) = self.units.get_mut(i) else {
                continue;
            };
            if u.main_pid() == Some(raw) {
                u.main = None;
                self.on_main_exit(i, outcome);
                return;
            }
            if u.control.as_ref().map(|(c, _)| c.id()) == Some(raw) {
                if let Some((_, cmd)) = u.control.take() {
                    self.on_control_exit(i, outcome, &cmd);
                }
                return;
            }
        }
        self.orphans_reaped += 1;
    }

    fn on_main_exit(&mut self, i: usize, outcome: Outcome) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        log::debug!("{}: main process ended: {}", u.name(), outcome.describe());
        match u.state {
            State::Starting => {
                // Type=notify without READY=1.
                let o = if outcome.is_success() {
                    Outcome::Protocol
                } else {
                    outcome
                };
                self.terminated(i, o);
            }
            State::Running => {
                // Ended on its own: ExecStop runs, then restart logic (systemd).
                u.result = outcome;
                u.state = State::Stopping(AfterStop::Terminate(outcome));
                u.signalled = true;
                u.queue = u.unit.service.exec_stop.iter().cloned().collect();
                self.run_next_control(i);
            }
            State::Stopping(_) if u.control.is_none() => self.finish_stop(i),
            _ => {}
        }
    }

    fn on_control_exit(&mut self, i: usize, outcome: Outcome, cmd: &Command) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let ok = outcome.is_success() || cmd.ignore_failure;
        if !ok {
            log::warn!(
                "{}: {} failed: {}",
                u.name(),
                cmd.argv.first().map_or("command", String::as_str),
                outcome.describe()
            );
        }
        match u.state {
            State::StartPre | State::Starting if ok => self.run_next_control(i),
            State::StartPre | State::Starting => self.terminated(i, outcome),
            State::Stopping(_) => {
                if !ok {
                    u.queue.clear();
                }
                self.run_next_control(i);
            }
            _ => {}
        }
    }

    /// Runs the next queued command of the current phase, or completes the phase.
    fn run_next_control(&mut self, i: usize) {
        let mode = self.settings.mode;
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if let Some(cmd) = u.queue.pop_front() {
            let Some(ctx) = u.ctx.as_ref() else { return };
            // ExecStop= commands count against TimeoutStopSec=, as in systemd.
            if matches!(u.state, State::Stopping(_)) && u.deadline.is_none() {
                u.deadline =
                    deadline_after(u.unit.service.timeout_stop).map(|d| (d, Timer::StopTimeout));
            }
            // Oneshot ExecStart= commands get the listening sockets too.
            let listen = u.state == State::Starting;
            match spawn::spawn(&u.unit, &cmd, ctx, mode, listen) {
                Ok(child) => u.control = Some((child, cmd)),
                Err(e) => {
                    log::error!("{}: {}", u.name(), crate::error_chain(&e));
                    let outcome = if cmd.ignore_failure {
                        Outcome::Success
                    } else {
                        Outcome::SpawnFailed
                    };
                    self.on_control_exit(i, outcome, &cmd);
                }
            }
            return;
        }
        match u.state {
            State::StartPre => self.start_main(i),
            State::Starting if u.unit.service.kind == ServiceType::Forking => self.adopt_forked(i),
            State::Starting => {
                // Oneshot: every ExecStart succeeded. With RemainAfterExit=
                // it stays active (no process) until stopped, so that its
                // ExecStop= runs at shutdown.
                let remain = u.unit.service.remain_after_exit;
                self.mark_ready(i);
                if remain {
                    if let Some(u) = self.units.get_mut(i) {
                        u.state = State::Running;
                    }
                } else {
                    self.terminated(i, Outcome::Success);
                }
            }
            State::Stopping(_) => {
                if u.main.is_some() && !u.signalled {
                    if let Some(m) = &u.main {
                        kill_group(m, u.unit.service.kill_signal);
                    }
                    u.signalled = true;
                    u.deadline = deadline_after(u.unit.service.timeout_stop)
                        .map(|d| (d, Timer::StopTimeout));
                } else if u.main.is_none() {
                    self.finish_stop(i);
                }
            }
            _ => {}
        }
    }

    fn start_unit(&mut self, i: usize) {
        let base_env = self.settings.base_env.clone();
        let notify = self.settings.notify_socket.clone();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        self.started_any |= !u.unit.is_socket();
        u.deadline = None;
        u.signalled = false;
        // Start limit: at most StartLimitBurst starts per StartLimitIntervalSec.
        let now = Instant::now();
        let interval = u.unit.start_limit_interval;
        // The start history holds at most 64 entries: larger bursts act as 64.
        let burst = (u.unit.start_limit_burst as usize).min(64);
        if !interval.is_zero() && burst > 0 {
            while u
                .starts
                .front()
                .is_some_and(|t| now.duration_since(*t) > interval)
            {
                u.starts.pop_front();
            }
            if u.starts.len() >= burst {
                log::error!(
                    "{}: start limit hit ({} starts within {:?}); not starting again",
                    u.name(),
                    u.starts.len(),
                    interval
                );
                self.terminated(i, Outcome::StartLimit);
                return;
            }
            if u.starts.is_full() {
                u.starts.pop_front();
            }
            let _ = u.starts.push_back(now);
        }
        let mode = self.settings.mode;
        if let Some(c) = u
            .unit
            .conditions
            .iter()
            .find(|c| crate::condition::holds(c, mode) == c.negate)
        {
            log::info!("{}: skipped: condition {} is false", u.name(), c.show());
            u.state = State::Skipped;
            u.settled = true;
            // Kept for a restart that does not come.
            u.release_runtime_directories(false);
            return;
        }
        if let Some(why) = missing_mount(&u.unit, &self.settings.fstab_targets) {
            log::error!("{}: not started: {why}", u.name());
            self.terminated(i, Outcome::DependencyFailed);
            return;
        }
        if u.unit.is_socket() {
            self.start_socket(i);
            return;
        }
        let notify_unit = u.unit.service.kind == ServiceType::Notify;
        if notify_unit && self.late.is_some() {
            // Its READY=1 needs the socket before it starts.
            self.set_up_late();
        }
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let sock = notify_unit.then_some(notify.as_path());
        let ctx = match spawn::context(&u.unit, &base_env, sock) {
            Ok(mut ctx) => {
                self.add_listen_fds(i, &mut ctx);
                ctx
            }
            Err(e) => {
                log::error!("{}: {}", u.name(), crate::error_chain(&e));
                self.terminated(i, Outcome::SpawnFailed);
                return;
            }
        };
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        // Created by init, as root, before the first process of this start.
        if !u.unit.service.runtime_directory.is_empty() {
            u.runtime_dirs = true;
            if let Err(e) = spawn::create_runtime_directories(&u.unit, &ctx) {
                log::error!("{}: {}", u.name(), crate::error_chain(&e));
                self.terminated(i, Outcome::SpawnFailed);
                return;
            }
        }
        let mut ctx = ctx;
        if let Some(tasks_max) = u.unit.service.tasks_max {
            let root = std::path::Path::new(crate::cgroup::CGROUP_ROOT);
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            let pid_max = crate::cgroup::pid_max();
            match crate::cgroup::prepare(root, &own, &u.unit.name, tasks_max, pid_max) {
                Ok(cg) => ctx.cgroup = Some(std::rc::Rc::new(cg)),
                // As systemd with a controller it cannot use: the unit runs
                // without the limit, and the log says so.
                Err(e) => log::warn!(
                    "{}: TasksMax= not applied, running without a pids limit: {}",
                    u.name(),
                    crate::error_chain(&e)
                ),
            }
        }
        u.ctx = Some(ctx);
        u.result = Outcome::Success;
        u.active_since = Some(now);
        if u.unit.service.exec_start_pre.is_empty() {
            self.start_main(i);
        } else {
            u.state = State::StartPre;
            u.queue = u.unit.service.exec_start_pre.iter().cloned().collect();
            self.run_next_control(i);
        }
    }

    fn start_main(&mut self, i: usize) {
        let mode = self.settings.mode;
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        u.state = State::Starting;
        if u.unit.service.kind == ServiceType::Oneshot {
            u.queue = u.unit.service.exec_start.iter().cloned().collect();
            let name = u.unit.name.clone();
            self.timeline.mark(Event::UnitStarted, Some(&name));
            self.run_next_control(i);
            return;
        }
        let Some(cmd) = u.unit.service.exec_start.first().cloned() else {
            self.terminated(i, Outcome::SpawnFailed);
            return;
        };
        if u.ctx.is_none() {
            return;
        }
        // Socket units held back for this process (the first service of a
        // VM boot) are made once it has run after its exec, by init at
        // nice 0 but SCHED_BATCH ([`Self::sockets_due`],
        // [`Self::start_sockets_now`]).
        let sockets_after = self.sockets_held();
        if !sockets_after {
            // At BOOT_NICE before the clone, not after: the exec that ends
            // the child's vfork wakes init, which at nice 0 would take the
            // CPU back from the new process at once (the agent's exec →
            // main).
            self.defer_to_units();
        }
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let Some(ctx) = u.ctx.as_ref() else { return };
        if sockets_after {
            // SCHED_RESET_ON_FORK: the new process (and what it forks: the
            // agent's containers) is SCHED_OTHER, never batch.
            if let Err(e) = crate::sys::set_batch(true) {
                log::warn!("sched_setscheduler(SCHED_BATCH) before the first service: {e}");
            }
        }
        match spawn::spawn(&u.unit, &cmd, ctx, mode, true) {
            Ok(child) if u.unit.service.kind == ServiceType::Forking => {
                // The process that forks the daemon runs as a control
                // process; once it has exited successfully the daemon's pid
                // is read from PIDFile= ([`Self::adopt_forked`]).
                log::debug!("{}: started, pid {} (forking)", u.name(), child.id());
                u.control = Some((child, cmd));
                u.deadline =
                    deadline_after(u.unit.service.timeout_start).map(|d| (d, Timer::StartTimeout));
                let name = u.unit.name.clone();
                if sockets_after {
                    self.sockets_pending =
                        Some((Instant::now(), std::fs::File::open("/proc/loadavg").ok()));
                }
                self.hold_next_unit();
                self.timeline.mark(Event::UnitStarted, Some(&name));
            }
            Ok(child) => {
                let pid = child.id();
                u.main = Some(child);
                if sockets_after {
                    self.sockets_pending =
                        Some((Instant::now(), std::fs::File::open("/proc/loadavg").ok()));
                }
                self.hold_next_unit();
                let Some(u) = self.units.get_mut(i) else {
                    return;
                };
                u.active_since = Some(Instant::now());
                log::debug!("{}: started, pid {pid}", u.name());
                let name = u.unit.name.clone();
                let notify = u.unit.service.kind == ServiceType::Notify;
                if notify {
                    u.deadline = deadline_after(u.unit.service.timeout_start)
                        .map(|d| (d, Timer::StartTimeout));
                }
                self.timeline.mark(Event::UnitStarted, Some(&name));
                if !notify {
                    self.mark_ready(i);
                }
            }
            Err(e) => {
                log::error!("{}: {}", u.name(), crate::error_chain(&e));
                if sockets_after {
                    self.start_sockets_now();
                }
                self.terminated(i, Outcome::SpawnFailed);
            }
        }
    }

    /// Type=forking: the starting process has exited successfully; its
    /// daemon, named by PIDFile=, becomes the main process (init reaps it:
    /// an orphan is PID 1's child). Without PIDFile= there is no process
    /// to watch: the unit stays active, as with RemainAfterExit=, until
    /// stopped (its daemon then ends with everything at shutdown).
    fn adopt_forked(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let Some(path) = u.unit.service.pid_file.clone() else {
            log::warn!(
                "{}: Type=forking without PIDFile=: its daemon is not supervised (active until stopped)",
                u.name()
            );
            self.mark_ready(i);
            if let Some(u) = self.units.get_mut(i) {
                u.state = State::Running;
            }
            return;
        };
        let user = u
            .ctx
            .as_ref()
            .and_then(|c| c.account.as_ref())
            .map(|a| a.uid);
        let others: Vec<u32> = self
            .units
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .flat_map(|(_, o)| {
                o.main_pid()
                    .into_iter()
                    .chain(o.control.as_ref().map(|(c, _)| c.id()))
            })
            .collect();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        match read_pid_file(&path, user, &others) {
            Ok(pid) => {
                log::debug!("{}: main process {pid} (from {})", u.name(), path.display());
                u.main = Some(Child::adopted(pid));
                self.mark_ready(i);
            }
            Err(PidFileError::NotYet(why)) => {
                // systemd waits for the file until TimeoutStartSec=.
                let expired = u
                    .active_since
                    .is_some_and(|since| since.elapsed() >= u.unit.service.timeout_start)
                    && u.unit.service.timeout_start != Duration::ZERO;
                if expired {
                    log::error!("{}: PIDFile={}: {why}", u.name(), path.display());
                    self.terminated(i, Outcome::Protocol);
                } else {
                    u.deadline = Some((Instant::now() + PID_FILE_RETRY, Timer::PidFile));
                }
            }
            Err(PidFileError::Refused(why)) => {
                log::error!("{}: PIDFile={}: {why}", u.name(), path.display());
                self.terminated(i, Outcome::Protocol);
            }
        }
    }

    fn mark_ready(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.state == State::Starting && u.main.is_some() {
            u.state = State::Running;
        }
        u.deadline = None;
        u.settled = true;
        let name = u.unit.name.clone();
        let desc = u.unit.description.clone().unwrap_or_else(|| name.clone());
        self.timeline.mark(Event::UnitReady, Some(&name));
        self.console_status("  OK  ", &format!("Started {desc}."));
    }

    /// The unit ended (or could not start): restart or settle, then actions.
    fn terminated(&mut self, i: usize, outcome: Outcome) {
        let shutting_down = self.shutdown.is_some();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        u.result = outcome;
        u.deadline = None;
        u.control = None;
        u.queue.clear();
        let restart = !shutting_down
            && outcome != Outcome::StartLimit
            && outcome != Outcome::DependencyFailed
            && should_restart(u.unit.service.restart, outcome);
        u.release_runtime_directories(restart);
        u.drop_listen_fds();
        if restart {
            u.restarts += 1;
            u.state = State::AutoRestart;
            log::info!(
                "{}: {}; restarting in {:?} (restart {})",
                u.name(),
                outcome.describe(),
                u.unit.service.restart_sec,
                u.restarts
            );
            // RestartSec=infinity: the restart never comes (as in systemd).
            u.deadline = deadline_after(u.unit.service.restart_sec).map(|d| (d, Timer::Restart));
            return;
        }
        let action = if outcome.is_success() {
            u.state = State::Exited;
            log::info!("{}: finished", u.name());
            u.unit.success_action
        } else {
            u.state = State::Failed;
            log::error!("{}: failed: {}", u.name(), outcome.describe());
            // As in systemd, a unit that never ran because a dependency
            // failed does not trigger its own FailureAction=.
            if outcome == Outcome::DependencyFailed {
                Action::None
            } else {
                u.unit.failure_action
            }
        };
        if !outcome.is_success() {
            let desc = u
                .unit
                .description
                .clone()
                .unwrap_or_else(|| u.unit.name.clone());
            self.console_status("FAILED", &format!("Failed {desc}: {}.", outcome.describe()));
        }
        if outcome == Outcome::StartLimit {
            // As systemd: its socket units stop listening, or each new
            // connection would try again.
            let sockets: heapless::Vec<usize, MAX_LISTEN_FDS> = (0..self.units.len())
                .filter(|&j| {
                    self.units.get(j).is_some_and(|s| {
                        s.state == State::Running
                            && s.socket.as_ref().is_some_and(|r| r.service == Some(i))
                    })
                })
                .take(MAX_LISTEN_FDS)
                .collect();
            for j in sockets {
                if let Some(s) = self.units.get(j) {
                    log::error!(
                        "{}: its service {} hit its start limit; not listening any more",
                        s.name(),
                        self.units.get(i).map_or("", UnitRt::name)
                    );
                }
                self.fail_socket(j, Outcome::StartLimit);
            }
        }
        // Not for a start refused by its limit: `OnFailure=` naming the
        // unit itself would loop.
        if !outcome.is_success()
            && !matches!(outcome, Outcome::DependencyFailed | Outcome::StartLimit)
            && !shutting_down
        {
            self.on_failure(i);
        }
        if let Some(req) = ShutdownRequest::from_action(action) {
            if !shutting_down {
                let which = if outcome.is_success() {
                    "SuccessAction"
                } else {
                    "FailureAction"
                };
                log::info!(
                    "{}: {which}: {}",
                    self.units.get(i).map_or("", UnitRt::name),
                    req.kind.name()
                );
            }
            self.request_shutdown(req);
        }
    }

    /// Starts the failed unit's `OnFailure=` units (inactive or ended
    /// ones; one already running stays); a power target powers off,
    /// reboots or halts, as systemd's `poweroff.target` does (orderly).
    fn on_failure(&mut self, i: usize) {
        let Some(u) = self.units.get(i) else { return };
        let failed = u.unit.name.clone();
        for name in u.unit.on_failure.clone() {
            if let Some(kind) = power_target(&name) {
                log::info!("{failed}: OnFailure={name}: {}", kind.name());
                self.request_shutdown(ShutdownRequest {
                    kind,
                    urgency: Urgency::Orderly,
                });
                continue;
            }
            match self.order.index(&name) {
                // Started by the scheduling pass, not from here: a unit that
                // fails at once would otherwise recurse through this.
                Some(j) => {
                    if !self.on_failure_queue.contains(&j) {
                        log::info!("{failed}: OnFailure=: starting {name}");
                        self.on_failure_queue.push(j);
                    }
                }
                None => log::error!("{failed}: OnFailure={name}: no such unit loaded"),
            }
        }
    }

    fn finish_stop(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        u.deadline = None;
        match u.state {
            State::Stopping(AfterStop::Terminate(o)) => self.terminated(i, o),
            _ => {
                u.state = if u.result.is_success() {
                    State::Exited
                } else {
                    State::Failed
                };
                u.release_runtime_directories(false);
                u.drop_listen_fds();
                log::debug!("{}: stopped", u.name());
            }
        }
    }

    /// Stops a unit (shutdown): ExecStop, KillSignal, TimeoutStopSec, SIGKILL.
    fn stop_unit(&mut self, i: usize) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.unit.is_socket() && u.state == State::Running {
            u.socket_close();
            u.state = State::Exited;
            log::debug!("{}: stopped listening", u.name());
            return;
        }
        match u.state {
            State::Waiting | State::AutoRestart => {
                u.deadline = None;
                // A restart that will not come: RuntimeDirectoryPreserve=restart
                // kept the directories for it.
                u.release_runtime_directories(false);
                u.state = if u.result.is_success() {
                    State::Exited
                } else {
                    State::Failed
                };
            }
            State::Running | State::Starting | State::StartPre => {
                // ExecStop= runs for a unit that is up (a main process, or
                // a oneshot that remains active after exit).
                let was_running = u.state == State::Running;
                u.state = State::Stopping(AfterStop::Stay);
                u.signalled = false;
                if was_running {
                    u.queue = u.unit.service.exec_stop.iter().cloned().collect();
                } else {
                    u.queue.clear();
                }
                if let Some((c, _)) = &u.control {
                    kill_group(c, u.unit.service.kill_signal);
                    u.deadline = deadline_after(u.unit.service.timeout_stop)
                        .map(|d| (d, Timer::StopTimeout));
                    return;
                }
                self.run_next_control(i);
            }
            _ => {}
        }
    }

    fn handle_timers(&mut self) {
        let now = Instant::now();
        for i in 0..self.units.len() {
            let Some(u) = self.units.get_mut(i) else {
                continue;
            };
            let Some((when, timer)) = u.deadline else {
                continue;
            };
            if when > now {
                continue;
            }
            u.deadline = None;
            match timer {
                Timer::Restart => {
                    if self.shutdown.is_none() {
                        self.start_unit(i);
                    }
                }
                Timer::StartTimeout => {
                    if u.unit.service.kind == ServiceType::Forking && u.control.is_some() {
                        log::error!(
                            "{}: its starting process did not exit within {:?}; stopping",
                            u.name(),
                            u.unit.service.timeout_start
                        );
                        // The unit ends when that process has (SIGKILL
                        // after TimeoutStopSec=, as for a stop).
                        if let Some((c, _)) = &u.control {
                            kill_group(c, u.unit.service.kill_signal);
                        }
                        u.state = State::Stopping(AfterStop::Terminate(Outcome::Timeout));
                        u.signalled = true;
                        u.queue.clear();
                        u.deadline = deadline_after(u.unit.service.timeout_stop)
                            .map(|d| (d, Timer::StopTimeout));
                        continue;
                    } else {
                        log::error!(
                            "{}: no READY=1 within {:?}; stopping",
                            u.name(),
                            u.unit.service.timeout_start
                        );
                    }
                    u.state = State::Stopping(AfterStop::Terminate(Outcome::Timeout));
                    u.signalled = false;
                    u.queue.clear();
                    self.run_next_control(i);
                }
                Timer::StopTimeout => {
                    log::warn!(
                        "{}: still running {:?} after stop; sending SIGKILL",
                        u.name(),
                        u.unit.service.timeout_stop
                    );
                    if let State::Stopping(AfterStop::Terminate(_)) = u.state {
                        u.state = State::Stopping(AfterStop::Terminate(Outcome::Timeout));
                    }
                    if let Some(m) = &u.main {
                        kill_group(m, libc::SIGKILL);
                    }
                    if let Some((c, _)) = &u.control {
                        kill_group(c, libc::SIGKILL);
                    }
                    u.deadline = Some((now + Duration::from_secs(5), Timer::KillTimeout));
                }
                Timer::PidFile => self.adopt_forked(i),
                Timer::KillTimeout => {
                    log::error!("{}: did not die after SIGKILL; abandoning it", u.name());
                    u.main = None;
                    u.control = None;
                    u.queue.clear();
                    self.finish_stop(i);
                }
            }
        }
        if let Some((req, phase)) = &self.shutdown {
            let (req, expired) = match phase {
                ShutdownPhase::Terminating { since } => (
                    *req,
                    now.duration_since(*since) >= self.settings.kill_timeout,
                ),
                ShutdownPhase::Killing { since } => {
                    (*req, now.duration_since(*since) >= Duration::from_secs(5))
                }
                _ => (*req, false),
            };
            if expired {
                match phase {
                    ShutdownPhase::Terminating { .. } => {
                        log::warn!(
                            "processes left after {:?}; sending SIGKILL",
                            self.settings.kill_timeout
                        );
                        kill_all(Signal::KILL);
                        self.shutdown = Some((req, ShutdownPhase::Killing { since: now }));
                    }
                    _ => {
                        log::error!("processes still alive after SIGKILL; shutting down anyway");
                        self.shutdown = Some((req, ShutdownPhase::Done));
                    }
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let units = self.units.iter().filter_map(|u| u.deadline.map(|(d, _)| d));
        let shutdown = match &self.shutdown {
            Some((_, ShutdownPhase::Terminating { since })) => {
                since.checked_add(self.settings.kill_timeout)
            }
            Some((_, ShutdownPhase::Killing { since })) => Some(*since + Duration::from_secs(5)),
            Some((_, ShutdownPhase::StoppingUnits { since })) => {
                since.checked_add(self.settings.stop_bound)
            }
            _ => None,
        };
        let deferring = self
            .deferring
            .and_then(|since| since.checked_add(DEFER_MAX));
        let hold = self.hold.as_ref().map(|_| Instant::now() + HOLD_POLL);
        let clients = self.clients.next_deadline();
        // Log lines waiting for stderr to drain: tried again.
        let log = crate::logger::waiting().then(|| Instant::now() + LOG_RETRY);
        // The first look SOCKETS_POLL after the fork, then every SOCKETS_POLL.
        let sockets = self.sockets_pending.as_ref().map(|(since, _)| {
            let polls = since.elapsed().as_micros() / SOCKETS_POLL.as_micros() + 1;
            *since + SOCKETS_POLL * u32::try_from(polls).unwrap_or(u32::MAX)
        });
        units
            .chain(shutdown)
            .chain(deferring)
            .chain(hold)
            .chain(clients)
            .chain(sockets)
            .chain(log)
            .min()
    }

    /// Starts every waiting socket unit not ordered after another unit.
    /// Sockets come before every service, as systemd orders sockets.target
    /// before the services of basic.target: a service may connect to one at
    /// any time — kata-agent's systemd cgroup driver does at its first
    /// container — and must never find it missing. The one exception is the
    /// first service of a VM boot (the agent), forked first so that binding
    /// costs its exec nothing; its sockets are made once it has run after
    /// that exec ([`Self::sockets_due`], [`Self::start_sockets_now`]). A socket unit ordered after another
    /// unit waits in [`Self::schedule`].
    fn start_sockets(&mut self) {
        if let Some(later) = self.later_units.take() {
            let loaded: Vec<Unit> = self.units.iter().map(|u| u.unit.clone()).collect();
            for u in later.load(&loaded) {
                match self
                    .order
                    .index(&u.name)
                    .and_then(|i| self.units.get_mut(i))
                {
                    // Made on demand by a socket unit read now: waits for it
                    // (unless it has already started: it then stays).
                    Some(have) => have.unit.on_demand |= u.on_demand,
                    // Names are unique in what Later gives: none of the
                    // new ones is looked for here.
                    None => self.units.push(UnitRt::new(u)),
                }
            }
            adopt(&mut self.units);
            self.order = Order::build(&self.units);
        }
        // Only the socket units: this pass runs after every unit started.
        for k in 0..self.order.sockets.len() {
            let Some(&i) = self.order.sockets.get(k) else {
                continue;
            };
            let Some(u) = self.units.get(i) else { continue };
            if u.state != State::Waiting {
                continue;
            }
            if self.order.after(i).is_empty() {
                self.start_unit(i);
            }
        }
    }

    /// Whether the socket units held back for the first service are to be
    /// made now: once no task but init is runnable (that service has
    /// reached `main` and waits, typically for the host), at most
    /// [`SOCKETS_WAIT_MAX`] after its fork. Until then init does nothing
    /// else of the boot: reading socket units and what they pull in (over
    /// a hundred lookups on an osbuilder rootfs) would take turns from the
    /// new process's exec → `main`.
    fn sockets_due(&self) -> bool {
        let Some((since, loadavg)) = &self.sockets_pending else {
            return false;
        };
        since.elapsed() >= SOCKETS_WAIT_MAX
            || loadavg
                .as_ref()
                .and_then(runnable_tasks)
                .is_none_or(|n| n <= 1)
    }

    /// Makes the held-back socket units once the first service has run
    /// ([`Self::sockets_due`]), then lowers init to BOOT_NICE. Until here
    /// init is SCHED_BATCH at nice 0: neither the exec's wake-up nor its
    /// own timer lets it preempt the new process (whose exec → main is not
    /// init's to slow down), but it keeps a fair
    /// share of the CPU, so the scheduler tick gives it a turn within a
    /// few milliseconds even while the new process is busy — long before
    /// the agent has loaded, started its server and been asked by the host
    /// for a container. At nice 19 a busy agent (loading, logging, serving
    /// queued host requests) left init no turn at all, and the agent's
    /// first container found no D-Bus socket (two CI runs).
    fn start_sockets_now(&mut self) {
        self.sockets_pending = None;
        self.start_sockets();
        if let Err(e) = crate::sys::set_batch(false) {
            log::warn!("sched_setscheduler(SCHED_OTHER) after making sockets: {e}");
        }
        self.defer_to_units();
    }

    /// Whether socket units wait to be made after the service being
    /// started (see [`Self::start_sockets`]).
    fn sockets_held(&self) -> bool {
        self.settings.mode == Mode::Vm
            && self.sockets_pending.is_none()
            && self.deferring.is_none()
            && !self.deferred
            && (self.later_units.is_some()
                || self
                    .units
                    .iter()
                    .any(|u| u.state == State::Waiting && u.unit.is_socket()))
    }

    /// Starts every waiting unit whose ordering dependencies have settled.
    fn schedule(&mut self) {
        if self.shutdown.is_some() {
            return;
        }
        // OnFailure= units queued since the last pass, each once.
        for j in std::mem::take(&mut self.on_failure_queue) {
            let idle = self.units.get(j).is_some_and(|o| {
                matches!(
                    o.state,
                    State::Inactive | State::Exited | State::Failed | State::Skipped
                )
            });
            if idle {
                self.start_unit(j);
            }
        }
        if self.sockets_pending.is_some() {
            if !self.sockets_due() {
                return;
            }
            self.start_sockets_now();
        }
        if self.holding() {
            return;
        }
        // In a VM the first service (the agent) is forked before them, and
        // they are made the moment its exec has happened (below); with no
        // service to fork, now.
        if self.started_any
            || self.settings.mode != Mode::Vm
            || !self
                .units
                .iter()
                .any(|u| u.state == State::Waiting && !u.unit.is_socket())
        {
            self.start_sockets();
        }
        loop {
            let mut progressed = false;
            let mut held_socket = false;
            let mut blocked = Vec::new();
            for i in 0..self.units.len() {
                if self.shutdown.is_some() {
                    return;
                }
                let Some(u) = self.units.get(i) else { continue };
                if u.state != State::Waiting {
                    continue;
                }
                let mut ready = true;
                let mut dep_failed = None;
                for d in self
                    .order
                    .after(i)
                    .iter()
                    .filter_map(|&j| self.units.get(j))
                {
                    if !d.settled && !d.state.is_terminal() {
                        ready = false;
                    } else if !d.settled
                        && d.state == State::Failed
                        && u.unit.requires.contains(&d.unit.name)
                    {
                        dep_failed = Some(d.unit.name.clone());
                    }
                }
                // Sockets are none of the first unit's (the agent's): made
                // with init's late set-up, once that unit has been started.
                if ready && u.unit.is_socket() && self.late.is_some() && !self.started_any {
                    held_socket = true;
                    continue;
                }
                if let Some(dep) = dep_failed {
                    self.started_any |= !u.unit.is_socket();
                    log::error!("{}: not started: required unit {dep} failed", u.unit.name);
                    self.terminated(i, Outcome::DependencyFailed);
                    progressed = true;
                } else if ready {
                    // The first unit (the agent) starts before init's late
                    // set-up; every later one after it, /dev links included.
                    if self.late.is_some() && self.started_any {
                        self.set_up_late();
                    }
                    self.start_unit(i);
                    if self.sockets_pending.is_some() {
                        // The sockets held back for it, and every unit
                        // after them, wait until it has run.
                        return;
                    }
                    // Its process has exec'd (CLONE_VFORK): sockets
                    // waiting for it are made now, before init waits.
                    self.start_sockets();
                    progressed = true;
                    if self.hold.is_some() {
                        // Its turn first: the next one when it has run.
                        return;
                    }
                } else {
                    blocked.push(i);
                }
            }
            if !progressed && held_socket {
                // Every unit that could start waits for a socket: make them.
                self.set_up_late();
                continue;
            }
            if !progressed {
                // Everything left waits on another waiting unit: an ordering cycle.
                let cycle = !blocked.is_empty()
                    && blocked.iter().all(|&i| {
                        self.order
                            .after(i)
                            .iter()
                            .filter_map(|&j| self.units.get(j))
                            .all(|d| {
                                d.settled || d.state.is_terminal() || d.state == State::Waiting
                            })
                    });
                if cycle {
                    let names: Vec<&str> = blocked
                        .iter()
                        .filter_map(|&i| self.units.get(i))
                        .map(UnitRt::name)
                        .collect();
                    log::error!(
                        "ordering cycle among {}; starting them anyway",
                        names.join(", ")
                    );
                    for i in blocked {
                        self.start_unit(i);
                    }
                    continue;
                }
                break;
            }
        }
        if let Some(since) = self.deferring {
            let waiting = self.units.iter().any(|u| u.state == State::Waiting);
            if !waiting || since.elapsed() >= DEFER_MAX {
                self.stop_deferring();
            }
        }
        if !self.all_started
            && self
                .units
                .iter()
                .all(|u| u.settled || u.state.is_terminal())
        {
            self.all_started = true;
            self.stop_deferring();
            self.timeline.mark(Event::AllStarted, None);
            let huge = crate::sys::trim_text_mapping();
            if huge > 0 {
                log::info!("boot ran on {huge} KiB of code mapped with 2 MiB pages (DAX)");
            }
        }
    }

    /// Whether `u` is a socket unit waiting for a connection: listening,
    /// and its service down (never started, or ended). While the service is
    /// starting or running init does not watch its sockets.
    fn watching(&self, u: &UnitRt) -> bool {
        let Some(rt) = &u.socket else {
            return false;
        };
        u.state == State::Running
            && !rt.fds.is_empty()
            && rt
                .service
                .and_then(|s| self.units.get(s))
                .is_some_and(|s| s.state.is_terminal())
    }

    /// Makes the listening sockets of socket unit `i` (docs/init.md, "Socket
    /// activation"). A failure names the unit, the address and the cause;
    /// the unit fails, boot goes on.
    fn start_socket(&mut self, i: usize) {
        let watched: usize = self
            .units
            .iter()
            .filter_map(|u| u.socket.as_ref())
            .map(|s| s.fds.len())
            .sum();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let (Some(sock), Some(rt)) = (u.unit.socket.as_deref(), u.socket.as_deref_mut()) else {
            return;
        };
        let failed = if rt.service.is_none() {
            Some(format!(
                "its service {} is not loaded (missing, malformed or masked)",
                sock.service
            ))
        } else if watched + sock.listen.len() > MAX_LISTEN_FDS {
            Some(format!(
                "more than {MAX_LISTEN_FDS} listening sockets in all socket units"
            ))
        } else {
            match crate::socket::owner(sock) {
                Err(e) => Some(crate::error_chain(&e)),
                Ok(owner) => {
                    let mut fds = Vec::with_capacity(sock.listen.len());
                    let mut error = None;
                    for addr in &sock.listen {
                        match crate::socket::listen(addr, sock, owner) {
                            Ok(fd) => fds.push(Rc::new(fd)),
                            Err(e) => {
                                error = Some(crate::error_chain(&e));
                                break;
                            }
                        }
                    }
                    if error.is_some() {
                        // None of them: the service expects them all. The
                        // files of those made before the failure go too.
                        let made = sock.listen.iter().take(fds.len());
                        drop(fds);
                        for addr in made {
                            crate::socket::remove(addr);
                        }
                    } else {
                        rt.fds = fds;
                    }
                    error
                }
            }
        };
        if let Some(e) = failed {
            log::error!("{}: {e}", u.name());
            self.terminated(i, Outcome::ListenFailed);
            return;
        }
        u.state = State::Running;
        u.settled = true;
        u.active_since = Some(Instant::now());
        let addrs: Vec<String> = sock.listen.iter().map(ToString::to_string).collect();
        log::info!("{}: listening on {}", u.name(), addrs.join(", "));
        let desc = u
            .unit
            .description
            .clone()
            .unwrap_or_else(|| u.unit.name.clone());
        self.console_status("  OK  ", &format!("Listening on {desc}."));
    }

    /// A connection is pending on socket unit `i`: start its service (its
    /// start limits apply), unless the trigger limit is hit.
    fn trigger(&mut self, i: usize) {
        let now = Instant::now();
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        let Some(rt) = u.socket.as_deref_mut() else {
            return;
        };
        while rt
            .triggers
            .front()
            .is_some_and(|t| now.duration_since(*t) > TRIGGER_LIMIT_INTERVAL)
        {
            rt.triggers.pop_front();
        }
        if rt.triggers.push_back(now).is_err() {
            log::error!(
                "{}: started its service {TRIGGER_LIMIT_BURST} times within {:?}; not listening any more",
                u.name(),
                TRIGGER_LIMIT_INTERVAL
            );
            self.fail_socket(i, Outcome::TriggerLimit);
            return;
        }
        let Some(s) = rt.service else { return };
        if let (Some(sock), Some(svc)) = (self.units.get(i), self.units.get(s)) {
            log::info!(
                "{}: connection pending; starting {}",
                sock.name(),
                svc.name()
            );
        }
        self.start_unit(s);
    }

    /// Socket unit `i` fails: its sockets are closed.
    fn fail_socket(&mut self, i: usize, outcome: Outcome) {
        let Some(u) = self.units.get_mut(i) else {
            return;
        };
        if u.state.is_terminal() {
            return;
        }
        self.terminated(i, outcome);
    }

    /// The listening sockets of the socket units that start unit `i`, for
    /// its `ExecStart=` processes: in unit order, each unit's in file order.
    fn add_listen_fds(&self, i: usize, ctx: &mut ExecContext) {
        for u in &self.units {
            let (Some(rt), Some(sock)) = (&u.socket, &u.unit.socket) else {
                continue;
            };
            if rt.service != Some(i) || rt.fds.is_empty() {
                continue;
            }
            let name = sock.fd_name.as_deref().unwrap_or(&u.unit.name);
            for fd in &rt.fds {
                if !ctx.listen_names.is_empty() {
                    ctx.listen_names.push(':');
                }
                ctx.listen_names.push_str(name);
                ctx.listen_fds.push(Rc::clone(fd));
            }
        }
    }

    /// A unit's process was started during boot (VM mode): from now until
    /// all units are started, init runs at [`BOOT_NICE`], so that the
    /// process gets the CPU before init's work on the next unit.
    fn defer_to_units(&mut self) {
        if self.settings.mode != Mode::Vm
            || self.deferring.is_some()
            || self.deferred
            || self.all_started
        {
            return;
        }
        match rustix::process::setpriority_process(None, BOOT_NICE) {
            Ok(()) => self.deferring = Some(Instant::now()),
            Err(e) => log::warn!("setpriority({BOOT_NICE}) while starting units: {e}"),
        }
    }

    /// A unit process was just started while deferring: the next unit is
    /// held back until it has run (see [`Self::holding`]). Priority alone
    /// does not give it the CPU: the scheduler still hands init a slice
    /// now and then, and forking and exec'ing the next unit in it took the
    /// agent's exec from 3.3 to 4.6 ms in one boot.
    fn hold_next_unit(&mut self) {
        // Nothing to hold back once no unit is left waiting to be forked.
        if self.deferring.is_none() || !self.units.iter().any(|u| u.state == State::Waiting) {
            return;
        }
        match std::fs::File::open("/proc/loadavg") {
            Ok(f) => self.hold = Some(f),
            Err(e) => log::debug!("open /proc/loadavg: {e}; not holding units back"),
        }
    }

    /// Whether the next unit still waits: until no task but init is
    /// runnable (the started unit blocks, typically ready and waiting for
    /// requests), at most until deferring ends ([`DEFER_MAX`]).
    fn holding(&mut self) -> bool {
        let Some(f) = &self.hold else {
            return false;
        };
        let expired = self
            .deferring
            .is_none_or(|since| since.elapsed() >= DEFER_MAX);
        if expired {
            self.stop_deferring();
            return false;
        }
        if runnable_tasks(f).is_none_or(|n| n <= 1) {
            self.hold = None;
            return false;
        }
        true
    }

    /// Leaves the socket units (and their services) unread until sockets
    /// are made: right after the first service's exec in a VM, before any
    /// service in a container ([`Self::start_sockets`]).
    pub fn defer_units(&mut self, later: Box<dyn LaterUnits>) {
        self.later_units = Some(later);
    }

    /// Leaves init's run directory, timeline file and sockets until
    /// [`Self::set_up_late`].
    pub fn defer_setup(&mut self, late: LateSetup) {
        self.late = Some(late);
    }

    /// Creates what [`Self::defer_setup`] left: the run directory, the
    /// timeline file (it gets the lines marked so far), the notify and
    /// control sockets; and sets up what the agent does not need to start:
    /// unlimited kmsg lines, the /dev links. In a VM it is done once the
    /// first unit is forked and has run, or before a second unit or a
    /// notify unit starts, whichever comes first; in a container before
    /// any unit. Each failure is logged and init goes on.
    fn set_up_late(&mut self) {
        let Some(late) = self.late.take() else {
            return;
        };
        // Boot is over: glibc's malloc from now on (it reuses what is freed).
        crate::arena::close();
        crate::boot::reserve_fd();
        crate::logger::unlimit_kmsg();
        crate::logger::release_held_lines();
        self.timeline.release_console();
        for e in crate::mounts::dev_links() {
            log::error!("{}", crate::error_chain(&e));
        }
        if let Err(e) = std::fs::create_dir_all(&late.run_dir) {
            log::error!("create {}: {e}", late.run_dir.display());
        }
        if let Err(e) = self.timeline.open_file(&late.timeline) {
            log::warn!("open {}: {e}", late.timeline.display());
        }
        self.notify = control::notify_socket(&self.settings.notify_socket)
            .map_err(|e| {
                log::error!(
                    "create notify socket {}: {e}; Type=notify units cannot report ready",
                    self.settings.notify_socket.display()
                )
            })
            .ok();
        self.control = control::control_socket(&late.control_socket)
            .map_err(|e| {
                log::error!(
                    "create control socket {}: {e}; use signals to power off",
                    late.control_socket.display()
                )
            })
            .ok();
    }

    /// Back to init's normal priority (nice 0): when no unit is left
    /// waiting to be forked, or after [`DEFER_MAX`] (units waiting for a
    /// notify unit's READY=1), or at a shutdown request.
    fn stop_deferring(&mut self) {
        self.hold = None;
        if self.deferring.take().is_some() {
            // Once per boot: DEFER_MAX bounds the whole of it.
            self.deferred = true;
            if let Err(e) = rustix::process::setpriority_process(None, 0) {
                log::warn!("setpriority(0) after starting units: {e}");
            }
        }
    }

    pub fn request_shutdown(&mut self, req: ShutdownRequest) {
        self.stop_deferring();
        if let Some((cur, phase)) = &mut self.shutdown {
            // A more urgent request overrides a slower one in progress: an
            // orderly shutdown stuck on a unit can still be forced.
            match (cur.urgency, req.urgency) {
                (_, Urgency::Immediate) => cur.urgency = Urgency::Immediate,
                (Urgency::Orderly, Urgency::Force)
                    if matches!(phase, ShutdownPhase::StoppingUnits { .. }) =>
                {
                    cur.urgency = Urgency::Force;
                    log::info!("shutdown: forced; not waiting for units to stop");
                    self.begin_kill_all();
                }
                _ => {}
            }
            return;
        }
        self.timeline.mark(Event::ShutdownStart, None);
        log::info!("shutdown: {} ({:?})", req.kind.name(), req.urgency);
        self.shutdown = Some((
            req,
            ShutdownPhase::StoppingUnits {
                since: Instant::now(),
            },
        ));
        match req.urgency {
            // run() returns at once: sync and reboot(2), nothing else.
            Urgency::Immediate => {}
            Urgency::Force => self.begin_kill_all(),
            Urgency::Orderly => self.advance_shutdown(),
        }
    }

    fn begin_kill_all(&mut self) {
        if let Some((req, _)) = self.shutdown {
            for u in &mut self.units {
                u.deadline = None;
                if u.state.is_terminal() {
                    continue;
                }
                // Units not stopped one by one (forced shutdown) keep the
                // result they had, so a failure is still reported.
                if u.result.is_success() {
                    u.state = State::Exited;
                } else {
                    u.state = State::Failed;
                    log::error!("{}: failed: {}", u.unit.name, u.result.describe());
                }
            }
            kill_all(Signal::TERM);
            kill_all(Signal::CONT);
            self.shutdown = Some((
                req,
                ShutdownPhase::Terminating {
                    since: Instant::now(),
                },
            ));
        }
    }

    /// Moves the shutdown on: stop units whose dependents are down, then
    /// kill what is left, until no process remains.
    fn advance_shutdown(&mut self) {
        let Some((req, phase)) = &self.shutdown else {
            return;
        };
        if req.urgency == Urgency::Immediate {
            // run() returns on its next turn: nothing is stopped or killed.
            return;
        }
        match *phase {
            ShutdownPhase::StoppingUnits { since } => {
                if since.elapsed() >= self.settings.stop_bound {
                    let left: Vec<&str> = self
                        .units
                        .iter()
                        .filter(|u| !u.state.is_terminal())
                        .map(UnitRt::name)
                        .collect();
                    log::error!(
                        "shutdown: units not stopped within {:?} (init.shutdown_timeout): {}; killing what is left",
                        self.settings.stop_bound,
                        left.join(", ")
                    );
                    self.begin_kill_all();
                    return;
                }
                // Repeat until a pass changes nothing: stopping one unit can
                // unblock one checked earlier in the same pass.
                loop {
                    let mut progressed = false;
                    for i in 0..self.units.len() {
                        let Some(u) = self.units.get(i) else {
                            continue;
                        };
                        if u.state.is_terminal() || matches!(u.state, State::Stopping(_)) {
                            continue;
                        }
                        // Stop u only once every unit ordered after it is down.
                        let blocked = self
                            .order
                            .before(i)
                            .iter()
                            .filter_map(|&j| self.units.get(j))
                            .any(|d| !d.state.is_terminal());
                        if !blocked {
                            self.stop_unit(i);
                            progressed = true;
                        }
                    }
                    if progressed {
                        continue;
                    }
                    let stopping = self
                        .units
                        .iter()
                        .any(|u| matches!(u.state, State::Stopping(_)));
                    let left: Vec<usize> = (0..self.units.len())
                        .filter(|&i| self.units.get(i).is_some_and(|u| !u.state.is_terminal()))
                        .collect();
                    if !stopping && !left.is_empty() {
                        // Only an ordering cycle leaves units that block each other.
                        let names: Vec<&str> = left
                            .iter()
                            .filter_map(|&i| self.units.get(i))
                            .map(UnitRt::name)
                            .collect();
                        log::error!(
                            "shutdown: ordering cycle among {}; stopping them together",
                            names.join(", ")
                        );
                        for i in left {
                            self.stop_unit(i);
                        }
                        continue;
                    }
                    break;
                }
                if self.units.iter().all(|u| u.state.is_terminal()) {
                    self.begin_kill_all();
                    self.reap();
                    self.advance_shutdown();
                }
            }
            ShutdownPhase::Terminating { .. } | ShutdownPhase::Killing { .. } => {
                // Peek (WNOWAIT): a child that exited meanwhile is reaped by
                // reap(), with its status going where it belongs.
                let peek = rustix::process::waitid(
                    rustix::process::WaitId::All,
                    rustix::process::WaitIdOptions::EXITED
                        | rustix::process::WaitIdOptions::NOHANG
                        | rustix::process::WaitIdOptions::NOWAIT,
                );
                if matches!(peek, Err(rustix::io::Errno::CHILD)) {
                    if let Some((req, _)) = self.shutdown {
                        self.shutdown = Some((req, ShutdownPhase::Done));
                    }
                } else {
                    self.reap();
                }
            }
            ShutdownPhase::Done => {}
        }
    }

    fn read_notify(&mut self) {
        // At most 16 datagrams per wakeup, so a flood cannot starve reaping.
        for _ in 0..16 {
            let Some(fd) = &self.notify else { return };
            let Some((pid, msg)) = control::recv_notify(fd.as_fd()) else {
                return;
            };
            let Some(i) = self.units.iter().position(|u| u.main_pid() == Some(pid)) else {
                log::debug!(
                    "notify message from pid {pid} that is no unit's main process: ignored"
                );
                continue;
            };
            let starting = self
                .units
                .get(i)
                .is_some_and(|u| u.state == State::Starting);
            if starting && msg.lines().any(|l| l == "READY=1") {
                self.mark_ready(i);
            }
        }
    }

    /// Serves the control clients poll found ready (reading and writing
    /// only what is there, never waiting), accepts new ones when the
    /// listening socket was ready, and closes those past their deadline.
    fn serve_control(&mut self, accept: bool, ready: &[usize]) {
        // Out of `self` while serving: an answer reads the units.
        let mut clients = std::mem::take(&mut self.clients);
        let mut acts: heapless::Vec<ShutdownRequest, { control::MAX_CLIENTS }> =
            heapless::Vec::new();
        for &slot in ready {
            let act = clients.serve(slot, |req| match req {
                control::Request::Status => (self.status_text(), None),
                control::Request::Units => (self.units_text(), None),
                control::Request::Power(r) => (format!("ok: {}\n", r.kind.name()), Some(r)),
            });
            if let Some(req) = act {
                let _ = acts.push(req);
            }
        }
        if accept {
            if let Some(fd) = &self.control {
                clients.accept_from(fd.as_fd(), Instant::now());
            }
        }
        clients.expire(Instant::now());
        self.clients = clients;
        for req in acts {
            self.request_shutdown(req);
        }
    }

    /// systemd's ActiveState and SubState for unit `u`.
    fn systemd_states(&self, u: &UnitRt) -> (&'static str, &'static str) {
        match u.state {
            State::Waiting | State::Exited | State::Skipped | State::Inactive => {
                ("inactive", "dead")
            }
            State::StartPre => ("activating", "start-pre"),
            State::Starting => ("activating", "start"),
            State::AutoRestart => ("activating", "auto-restart"),
            State::Running if u.socket.is_some() && self.watching(u) => ("active", "listening"),
            State::Running if u.socket.is_some() => ("active", "running"),
            State::Running if u.unit.name.ends_with(".target") => ("active", "active"),
            State::Running if u.main.is_none() => ("active", "exited"),
            State::Running => ("active", "running"),
            State::Stopping(_) => ("deactivating", "stop-sigterm"),
            State::Failed => ("failed", "failed"),
        }
    }

    /// systemd's `is-system-running` word: `stopping` once shutdown began,
    /// `starting` until every unit settled, `degraded` with a failed unit.
    pub fn system_state(&self) -> &'static str {
        if self.shutdown.is_some() {
            "stopping"
        } else if !self.all_started {
            "starting"
        } else if self.units.iter().any(|u| u.state == State::Failed) {
            "degraded"
        } else {
            "running"
        }
    }

    /// The control socket's `units` answer, for `systemctl`'s verbs: a
    /// `system STATE` line, then per unit, tab-separated: name, ActiveState,
    /// SubState, MainPID (0: none), NRestarts, ExecMainStatus, Result,
    /// milliseconds active (`-`: not active), Description.
    pub fn units_text(&self) -> String {
        let now = Instant::now();
        let mut out = format!("system\t{}\n", self.system_state());
        for u in &self.units {
            let (active, sub) = self.systemd_states(u);
            let (status, result) = match u.result {
                Outcome::Success => (0, "success"),
                Outcome::Exit(c) => (c, "exit-code"),
                Outcome::Signal(s) => (s, "signal"),
                Outcome::Timeout => (0, "timeout"),
                Outcome::StartLimit => (0, "start-limit-hit"),
                Outcome::DependencyFailed => (0, "dependency"),
                Outcome::SpawnFailed | Outcome::ListenFailed => (0, "resources"),
                Outcome::Protocol => (0, "protocol"),
                Outcome::TriggerLimit => (0, "trigger-limit-hit"),
            };
            let up = match (active, u.active_since) {
                ("active" | "deactivating", Some(t)) => {
                    now.duration_since(t).as_millis().to_string()
                }
                _ => "-".into(),
            };
            let description = u
                .unit
                .description
                .as_deref()
                .unwrap_or("")
                .replace('\t', " ");
            out.push_str(&format!(
                "{}\t{active}\t{sub}\t{}\t{}\t{status}\t{result}\t{up}\t{description}\n",
                u.unit.name,
                u.main_pid().unwrap_or(0),
                u.restarts
            ));
        }
        out
    }

    /// The status table: unit, state, pid, restarts, uptime.
    pub fn status_text(&self) -> String {
        let width = self
            .units
            .iter()
            .map(|u| u.unit.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!(
            "{:<width$}  {:<12}  {:>7}  {:>8}  {:>9}\n",
            "UNIT", "STATE", "PID", "RESTARTS", "UPTIME"
        );
        let now = Instant::now();
        for u in &self.units {
            let pid = u.main_pid().map_or("-".to_string(), |p| p.to_string());
            let up = match (u.state, u.active_since) {
                (State::Running | State::Starting | State::Stopping(_), Some(t)) => {
                    format!("{:.1}s", now.duration_since(t).as_secs_f64())
                }
                _ => "-".into(),
            };
            let state = match u.state {
                State::Failed => format!("failed({})", short(u.result)),
                State::Running if u.socket.is_some() => {
                    if self.watching(u) {
                        "listening".to_string()
                    } else {
                        "running".to_string()
                    }
                }
                State::Running if u.main.is_none() => "active-exited".to_string(),
                s => s.name().to_string(),
            };
            out.push_str(&format!(
                "{:<width$}  {:<12}  {:>7}  {:>8}  {:>9}\n",
                u.unit.name, state, pid, u.restarts, up
            ));
        }
        out.push_str(&format!(
            "init: up {:.1}s, orphans reaped {}\n",
            now.duration_since(self.boot_instant).as_secs_f64(),
            self.orphans_reaped
        ));
        out
    }

    fn console_status(&self, tag: &str, text: &str) {
        if !self.settings.status_on_console {
            return;
        }
        let line = format!("[{tag}] {text}\n");
        match self.settings.mode {
            // Non-blocking: a console pipe nobody drains queues or drops
            // the line rather than stalling PID 1.
            Mode::Container => crate::logger::status_line(&line),
            Mode::Vm => {
                // Non-blocking: a console stopped by flow control drops the
                // line rather than stalling PID 1.
                let console = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open("/dev/console");
                if let Ok(mut f) = console {
                    use std::io::Write;
                    let _ = f.write_all(line.as_bytes());
                }
            }
        }
    }
}

fn short(o: Outcome) -> String {
    match o {
        Outcome::Exit(c) => format!("exit {c}"),
        Outcome::Signal(s) => format!("sig {s}"),
        Outcome::StartLimit => "limit".into(),
        Outcome::DependencyFailed => "dep".into(),
        Outcome::SpawnFailed => "spawn".into(),
        Outcome::Timeout => "timeout".into(),
        Outcome::Protocol => "protocol".into(),
        Outcome::ListenFailed => "listen".into(),
        Outcome::TriggerLimit => "trigger".into(),
        Outcome::Success => "ok".into(),
    }
}

fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// kill(-1, sig): every process except init (and kernel threads).
fn kill_all(sig: Signal) {
    if let Err(e) = crate::sys::kill_all(sig.as_raw()) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            log::warn!("kill(-1, {}): {e}", sig.as_raw());
        }
    }
}

/// The running-task count of /proc/loadavg (`0.00 0.00 0.00 RUNNING/TOTAL
/// LASTPID`), read again from the start of the open file; it counts the
/// reader.
fn runnable_tasks(f: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 128];
    let n = f.read_at(&mut buf, 0).ok()?;
    parse_runnable(buf.get(..n)?)
}

fn parse_runnable(text: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(text).ok()?;
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .0
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(name: &str, text: &str) -> UnitRt {
        UnitRt::new(crate::unit::parse(name, name, text).unit.unwrap())
    }

    #[test]
    fn ordering_is_indices_both_ways_without_self_or_unknown_names() {
        let units = [
            rt(
                "a.service",
                "[Unit]\nBefore=c.service\n[Service]\nExecStart=/a\n",
            ),
            rt(
                "b.service",
                "[Unit]\nAfter=a.service nowhere.service b.service\n[Service]\nExecStart=/b\n",
            ),
            // Named both ways (its After= and a's Before=): one edge.
            rt(
                "c.service",
                "[Unit]\nAfter=a.service b.service\n[Service]\nExecStart=/c\n",
            ),
            rt("d.socket", "[Socket]\nListenStream=/run/d\n"),
        ];
        let order = Order::build(&units);
        // As sets: a pair named both ways may be listed twice.
        let set = |l: &[usize]| l.iter().copied().collect::<std::collections::BTreeSet<_>>();
        let after = |i| set(order.after(i));
        let before = |i| set(order.before(i));
        assert_eq!(after(0), set(&[]));
        assert_eq!(after(1), set(&[0]));
        assert_eq!(after(2), set(&[0, 1]));
        assert_eq!(before(0), set(&[1, 2]));
        assert_eq!(before(1), set(&[2]));
        assert_eq!(before(2), set(&[]));
        assert_eq!(after(9), set(&[]));
        assert_eq!(order.index("c.service"), Some(2));
        assert_eq!(order.index("nowhere.service"), None);
        assert_eq!(order.sockets, vec![3]);
    }

    #[test]
    fn loadavg_running_count() {
        assert_eq!(parse_runnable(b"0.00 0.01 0.05 1/57 231\n"), Some(1));
        assert_eq!(parse_runnable(b"1.20 0.40 0.10 3/120 4242\n"), Some(3));
        assert_eq!(parse_runnable(b""), None);
        assert_eq!(parse_runnable(b"0.00 0.00 0.00 x/5 1"), None);
        assert_eq!(parse_runnable(&[0xff, 0xfe]), None);
        // The live file parses.
        let f = std::fs::File::open("/proc/loadavg").unwrap();
        assert!(runnable_tasks(&f).is_some_and(|n| n >= 1));
    }

    #[test]
    fn restart_policy_matrix() {
        use Outcome::*;
        assert!(!should_restart(Restart::No, Exit(1)));
        assert!(should_restart(Restart::Always, Success));
        assert!(should_restart(Restart::OnFailure, Exit(1)));
        assert!(should_restart(Restart::OnFailure, Signal(9)));
        assert!(!should_restart(Restart::OnFailure, Success));
        assert!(should_restart(Restart::OnAbnormal, Signal(9)));
        assert!(should_restart(Restart::OnAbnormal, Timeout));
        assert!(!should_restart(Restart::OnAbnormal, Exit(3)));
        assert!(should_restart(Restart::OnSuccess, Success));
        assert!(should_restart(Restart::OnAbort, Signal(6)));
    }

    #[test]
    fn signal_mapping() {
        let rt = crate::sys::sigrtmin();
        let r = |s| signal_request(s).map(|r| (r.kind, r.urgency));
        assert_eq!(
            r(libc::SIGTERM),
            Some((PowerKind::Poweroff, Urgency::Orderly))
        );
        assert_eq!(
            r(libc::SIGPWR),
            Some((PowerKind::Poweroff, Urgency::Orderly))
        );
        assert_eq!(r(libc::SIGINT), Some((PowerKind::Reboot, Urgency::Orderly)));
        assert_eq!(r(libc::SIGUSR1), Some((PowerKind::Halt, Urgency::Orderly)));
        assert_eq!(
            r(libc::SIGUSR2),
            Some((PowerKind::Poweroff, Urgency::Orderly))
        );
        assert_eq!(r(rt + 3), Some((PowerKind::Halt, Urgency::Orderly)));
        assert_eq!(r(rt + 4), Some((PowerKind::Poweroff, Urgency::Orderly)));
        assert_eq!(r(rt + 5), Some((PowerKind::Reboot, Urgency::Orderly)));
        assert_eq!(r(rt + 14), Some((PowerKind::Poweroff, Urgency::Immediate)));
        assert_eq!(r(libc::SIGHUP), None);
        assert_eq!(rt + 4, 38, "systemd's SIGRTMIN+4 as glibc numbers it");
    }

    #[test]
    fn clean_exit_signals_count_as_success() {
        assert_eq!(Outcome::from_parts(Some(0), None), Outcome::Success);
        assert_eq!(Outcome::from_parts(Some(3), None), Outcome::Exit(3));
        assert_eq!(
            Outcome::from_parts(None, Some(libc::SIGTERM)),
            Outcome::Success
        );
        assert_eq!(
            Outcome::from_parts(None, Some(libc::SIGPIPE)),
            Outcome::Success
        );
        assert_eq!(
            Outcome::from_parts(None, Some(libc::SIGKILL)),
            Outcome::Signal(9)
        );
    }
}
