//! PID 1: early boot, loading units, supervising, and the last steps of
//! shutdown. Every step logs what failed and carries on with a safe default.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::LevelFilter;

use crate::cmdline::{self, BootConfig};
use crate::supervisor::{
    self, LateSetup, PowerKind, Settings, ShutdownRequest, Supervisor, Urgency,
};
use crate::timeline::{self, Event, Timeline};
use crate::unit::{LimitResource, Unit};
use crate::{logger, mounts, spawn, sys, Mode, CONTROL_SOCKET, NOTIFY_SOCKET, RUN_DIR};

/// Runs PID 1; never returns.
pub fn run(args: &[String]) -> ! {
    let t0 = timeline::now_us();
    // Block the handled signals first, so none sent during boot is lost.
    let signals = sys::SignalFd::new(&supervisor::handled_signals());
    logger::install(LevelFilter::Info);
    let mode = if std::env::var_os("container").is_some() {
        Mode::Container
    } else {
        Mode::Vm
    };
    // The panic hook is in place already (cli::main, before argv is used).
    if mode == Mode::Container {
        logger::use_stderr();
    }
    let mut timeline = Timeline::new(cmdline::BootMarker::None);

    // /proc first: mountinfo tells which of the rest is already mounted.
    let mut table = match mounts::mount_proc() {
        Ok(t) => t,
        Err(e) => {
            log::error!("{}", crate::error_chain(&e));
            mounts::MountTable::default()
        }
    };
    if mode == Mode::Container {
        // A non-blocking descriptor of the log's own on stderr, now that
        // /proc is there.
        logger::stderr_own_descriptor();
    }
    let mut errors = Vec::new();
    mounts::mount_dev(&mut table, mode, &mut errors);
    if mode == Mode::Vm {
        sys::console_on_stdio();
        // Info lines and warnings wait until the agent has run (the supervisor's late
        // set-up); errors go out at once.
        logger::hold_info_lines();
        logger::use_kmsg();
    }

    // In a VM the options come from the kernel; in a container, as for
    // systemd, from init's own arguments.
    let text = match mode {
        Mode::Vm => sys::read_small("/proc/cmdline").unwrap_or_else(|e| {
            log::error!("read /proc/cmdline: {e}; using defaults");
            String::new()
        }),
        Mode::Container => args.join(" "),
    };
    let (cfg, problems) = cmdline::parse(&text);
    logger::set_level(cfg.log_level.unwrap_or(LevelFilter::Info));
    for p in &problems {
        log::warn!("{p}");
    }
    if text.contains('\u{FFFD}') {
        for word in text.split_whitespace().filter(|w| w.contains('\u{FFFD}')) {
            log::warn!("command line: {word:?} is not valid UTF-8 (bad bytes read as U+FFFD)");
        }
    }
    if mode == Mode::Vm && !text.contains("printk.devkmsg") {
        // User-space kmsg writes are rate-limited to 10 per 5 s by default,
        // which would drop timeline lines: unlimited once the agent runs
        // (the supervisor's late set-up), or before the logger's 8th line.
        logger::unlimit_kmsg_later();
    }
    timeline.set_marker(cfg.boot_marker);
    if cfg.timeline_console && mode == Mode::Vm {
        timeline.copy_to_console(Path::new("/dev/console"));
        // Written with init's own files, once the agent has run.
        timeline.hold_console();
    }
    timeline.mark_at(Event::InitStart, None, t0);
    log::info!(
        "minos init {} starting ({mode:?} mode)",
        env!("CARGO_PKG_VERSION")
    );

    errors.extend(mounts::mount_rest(&mut table, mode, cfg.cgroup_v1));
    for e in &errors {
        log::error!("{}", crate::error_chain(e));
    }
    // The administrator's mounts, before any unit (systemd's
    // local-fs.target comes before basic.target's services).
    let fstab_targets = crate::fstab::mount_all(&mut table, crate::fstab::FSTAB);
    timeline.mark(Event::MountsDone, None);

    system_setup(mode);
    // /run/systemd/system is empty on the tmpfs init has just mounted on
    // /run: not probed (a path lookup that costs the agent's exec).
    let fresh_run = table.mounted_by_init("/run");
    let search: Vec<PathBuf> = crate::search::SEARCH_PATH
        .iter()
        .filter(|d| !(fresh_run && d.starts_with("/run/")))
        .map(PathBuf::from)
        .collect();
    let (mut units, later) = crate::load::load_units(&search, &cfg, mode, Some(fresh_run));
    // As the kernel's own first process (a VM's), nothing has changed
    // fs.nr_open before init but `sysctl.fs.nr_open=` (or
    // `sysctl/fs/nr_open=`) on the command line: its value is known
    // without a read that would cost the agent's exec. That init mounted
    // /proc itself says so for free: no process ran before it. Where /proc
    // was there already (a PID namespace of its own, a harness, an
    // initramfs that ran first) it is read.
    let nr_open = (mode == Mode::Vm
        && !text.contains("fs.nr_open")
        && !text.contains("fs/nr_open")
        && table.mounted_by_init("/proc"))
    .then_some(KERNEL_NR_OPEN);
    apply_nofile_limits(&mut units, mode, nr_open);

    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            // Without signals init cannot reap: nothing safe is left to do.
            log::error!("create signalfd: {e}; powering off");
            finish(
                ShutdownRequest {
                    kind: PowerKind::Poweroff,
                    urgency: Urgency::Immediate,
                },
                mode,
            );
        }
    };
    let settings = Settings {
        mode,
        base_env: base_env(&cfg, mode),
        notify_socket: PathBuf::from(NOTIFY_SOCKET),
        status_on_console: cfg.status_on_console(),
        kill_timeout: cfg.kill_timeout,
        stop_bound: cfg.shutdown_timeout,
        fstab_targets,
    };
    let mut sup = Supervisor::new(units, settings, signals, timeline);
    if let Some(later) = later {
        sup.defer_units(Box::new(later));
    }
    // init's own directory, timeline file and sockets: in a VM once the
    // first unit (the agent) is forked, nothing of them being the agent's.
    sup.defer_setup(LateSetup {
        run_dir: PathBuf::from(RUN_DIR),
        timeline: Path::new(RUN_DIR).join("timeline"),
        control_socket: PathBuf::from(CONTROL_SOCKET),
    });
    let req = sup.run();
    finish(req, mode);
}

/// sync, unmount or remount read-only, reboot(2).
pub fn finish(req: ShutdownRequest, mode: Mode) -> ! {
    filesystems_down(req.urgency != Urgency::Immediate);
    log::info!("shutdown: {} now", req.kind.name());
    let cmd = match req.kind {
        PowerKind::Poweroff => rustix::system::RebootCommand::PowerOff,
        PowerKind::Reboot => rustix::system::RebootCommand::Restart,
        PowerKind::Halt => rustix::system::RebootCommand::Halt,
    };
    let err = rustix::system::reboot(cmd).err();
    // Only reached when reboot(2) is refused (a container without CAP_SYS_BOOT).
    log::error!(
        "reboot(2) {}: {}; exiting",
        req.kind.name(),
        err.map_or("returned".into(), |e| e.to_string())
    );
    std::process::exit(if mode == Mode::Container { 0 } else { 1 });
}

/// The child personality that does the file-system part of shutdown.
pub const SHUTDOWN_FS: &str = "minos-shutdown-fs";
const SHUTDOWN_FS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one file system's syncfs(2) may take before shutdown goes on
/// without it.
pub const SYNC_EACH_TIMEOUT: Duration = Duration::from_secs(20);

/// One descriptor init keeps free for shutdown: whatever else has used
/// up its descriptors, reading mountinfo at shutdown still finds one.
static RESERVE_FD: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

/// Opens the reserve descriptor (an O_PATH descriptor of `/`: nothing to
/// read, nothing held open on a device); with init's late set-up, off the
/// agent's path.
pub fn reserve_fd() {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => {
            if let Ok(mut reserve) = RESERVE_FD.lock() {
                *reserve = Some(fd);
            }
        }
        Err(e) => log::warn!("open / as shutdown's reserve descriptor: {e}"),
    }
}

/// Spawns init's shutdown personality with `args`, stdin /dev/null.
fn spawn_shutdown_child(args: &[&str]) -> std::io::Result<crate::sys::Spawned> {
    let argv: Vec<&str> = std::iter::once(SHUTDOWN_FS)
        .chain(args.iter().copied())
        .collect();
    crate::sys::spawn_simple("/proc/self/exe", &argv, &[])
}

/// Waits for `child` until `deadline`; false when it has not ended.
fn wait_until(child: &mut crate::sys::Spawned, deadline: Instant) -> bool {
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(None) => return false,
        }
    }
}

/// Each file system synced, then (with `unmount`) every file system
/// unmounted or remounted read-only in reverse order. Done in a child
/// process (init's `minos-shutdown-fs` personality) that init waits for at
/// most 60 s: a dead virtio-fs or network file system can block sync or
/// umount forever, and PID 1 must still reach reboot(2). The descriptor init
/// kept free is closed first: out of descriptors, it lets the child start,
/// or, when even that fails, lets init read mountinfo and do the work itself
/// (sync(2), then unmounting by path, which needs no descriptor).
fn filesystems_down(unmount: bool) {
    if let Ok(mut reserve) = RESERVE_FD.lock() {
        drop(reserve.take());
    }
    let args: &[&str] = if unmount { &["--unmount"] } else { &[] };
    let mut child = match spawn_shutdown_child(args) {
        Ok(c) => c,
        Err(e) => {
            // The spawn's descriptors are closed again: the one kept free
            // is there for mountinfo.
            log::warn!("shutdown: run {SHUTDOWN_FS}: {e}; doing it in init");
            let info = std::fs::read_to_string("/proc/self/mountinfo");
            rustix::fs::sync();
            match &info {
                Ok(info) if unmount => {
                    for f in mounts::unmount_all(info, &[]) {
                        log::warn!("shutdown: could not unmount or remount read-only: {f}");
                    }
                    rustix::fs::sync();
                }
                Ok(_) => {}
                Err(e) => log::error!(
                    "shutdown: read /proc/self/mountinfo: {e}; filesystems left mounted"
                ),
            }
            return;
        }
    };
    if !wait_until(&mut child, Instant::now() + SHUTDOWN_FS_TIMEOUT) {
        log::error!(
            "shutdown: sync/unmount did not finish within {}s (a hung file system?); going on",
            SHUTDOWN_FS_TIMEOUT.as_secs()
        );
    }
}

/// The work of [`filesystems_down`], in the shutdown child: every data
/// file system synced by a child of its own (`--syncfs PATH`), all at
/// once, each waited for at most [`SYNC_EACH_TIMEOUT`], so one that hangs
/// keeps none of the others unsynced; then, with `unmount`, each unmounted
/// or remounted read-only in reverse order but for those whose sync hung
/// (unmounting them would hang too); then sync(2), unless one hung.
pub fn shutdown_fs(unmount: bool) {
    let info = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(info) => info,
        Err(e) => {
            log::error!(
                "shutdown: read /proc/self/mountinfo: {e}; sync(2) only, filesystems left mounted"
            );
            rustix::fs::sync();
            return;
        }
    };
    let mut syncs: Vec<(String, Option<crate::sys::Spawned>)> = mounts::data_mounts(&info)
        .into_iter()
        .map(|m| {
            let child = spawn_shutdown_child(&["--syncfs", &m])
                .map_err(|e| log::warn!("shutdown: syncfs {m}: run {SHUTDOWN_FS}: {e}"))
                .ok();
            (m, child)
        })
        .collect();
    let deadline = Instant::now() + SYNC_EACH_TIMEOUT;
    let mut hung = Vec::new();
    for (m, child) in &mut syncs {
        let done = match child {
            Some(c) => wait_until(c, deadline),
            None => false,
        };
        if !done {
            log::error!(
                "shutdown: {m}: sync did not finish within {}s (a hung file system?); not waiting for it",
                SYNC_EACH_TIMEOUT.as_secs()
            );
            hung.push(m.clone());
        }
    }
    if unmount {
        for f in mounts::unmount_all(&info, &hung) {
            log::warn!("shutdown: could not unmount or remount read-only: {f}");
        }
    }
    // What no file system holds (a block device written directly): sync(2)
    // would wait for a hung file system, so only when none is.
    if hung.is_empty() {
        rustix::fs::sync();
    }
}

/// `minos-shutdown-fs --syncfs PATH`: syncfs(2) of the file system at
/// PATH (opened non-blocking, as a directory when it is one).
pub fn syncfs_one(path: &str) -> u8 {
    use rustix::fs::{Mode, OFlags};
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("shutdown: open {path} to sync it: {e}");
            return 1;
        }
    };
    match rustix::fs::syncfs(&fd) {
        Ok(()) => {
            log::debug!("shutdown: synced {path}");
            0
        }
        Err(e) => {
            log::warn!("shutdown: syncfs {path}: {e}");
            1
        }
    }
}

/// PID 1's panic hook: the message to the kernel log (and stderr in a
/// container, never blocking), sync, power off — never PID 1 ending (a kernel panic).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        logger::release_held_lines();
        let msg = format!("<2>minos-init: panic: {info}; syncing and powering off\n");
        let wrote = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(msg.as_bytes())
            });
        if wrote.is_err() || std::env::var_os("container").is_some() {
            logger::stderr_now(msg.trim_start_matches("<2>"));
        }
        rustix::fs::sync();
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    }));
}

fn write_proc(path: &str, value: &str) -> bool {
    if let Err(e) = std::fs::write(path, value) {
        log::warn!("write {value} to {path}: {e}");
        return false;
    }
    true
}

/// Hostname, loopback, Ctrl-Alt-Del, init's own OOM score.
fn system_setup(mode: Mode) {
    let name = sys::read_small("/etc/hostname")
        .ok()
        .and_then(|s| {
            s.lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
        })
        .filter(|n| valid_hostname(n))
        .unwrap_or_else(|| "localhost".into());
    if let Err(e) = rustix::system::sethostname(name.as_bytes()) {
        log::error!("set hostname {name}: {e}");
    }
    if let Err(e) = sys::interface_up("lo") {
        log::error!("bring up interface lo: {e}");
    }
    if mode == Mode::Vm {
        // Ctrl-Alt-Del becomes SIGINT to init, handled as reboot.
        if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
            log::warn!("disable Ctrl-Alt-Del (RB_DISABLE_CAD): {e}");
        }
    }
    // The kernel never picks the global init (PID 1 of a VM) for the OOM
    // killer, whatever its score: only PID 1 of a container needs it.
    if mode == Mode::Container && write_proc("/proc/self/oom_score_adj", "-1000") {
        spawn::note_own_oom_score_adj(-1000);
    }
}

pub fn valid_hostname(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn base_env(cfg: &BootConfig, mode: Mode) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_string(), spawn::DEFAULT_PATH.to_string())];
    for key in ["TERM", "LANG"] {
        if let Ok(v) = std::env::var(key) {
            env.push((key.into(), v));
        }
    }
    if mode == Mode::Container {
        env.push((
            "container".into(),
            std::env::var("container").unwrap_or_default(),
        ));
    }
    env.extend(cfg.setenv.iter().cloned());
    env
}

/// fs.nr_open as the kernel starts (fs/file.c `sysctl_nr_open`).
const KERNEL_NR_OPEN: u64 = 1_048_576;

/// Raises fs.nr_open to the largest LimitNOFILE= asked for (VM), or clamps
/// the units' limits to it where init may not change it (container).
pub(crate) fn apply_nofile_limits(units: &mut [Unit], mode: Mode, nr_open: Option<u64>) {
    let nofile = |u: &Unit| -> Vec<(Option<u64>, Option<u64>)> {
        u.service
            .limits
            .iter()
            .filter(|l| l.resource == LimitResource::Nofile)
            .map(|l| (l.soft, l.hard))
            .collect()
    };
    let all: Vec<(Option<u64>, Option<u64>)> = units.iter().flat_map(nofile).collect();
    if all.is_empty() {
        return;
    }
    let current: u64 = nr_open.unwrap_or_else(|| {
        sys::read_small("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(KERNEL_NR_OPEN)
    });
    let mut max = current;
    if mode == Mode::Container
        && !spawn::has_capability(rustix::thread::CapabilitySet::SYS_RESOURCE)
    {
        // Without CAP_SYS_RESOURCE no hard limit can be raised above init's own.
        let own = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
        max = max.min(own.unwrap_or(u64::MAX));
    }
    // The largest finite limit asked for; `infinity` means "as high as the
    // kernel allows", which is fs.nr_open (as systemd's setrlimit_closest).
    let want = all
        .iter()
        .flat_map(|(s, h)| [*s, *h])
        .flatten()
        .max()
        .unwrap_or(0);
    if mode == Mode::Vm && want > max {
        match std::fs::write("/proc/sys/fs/nr_open", want.to_string()) {
            Ok(()) => {
                log::debug!("fs.nr_open raised from {current} to {want}");
                max = want;
            }
            Err(e) => log::error!("raise fs.nr_open to {want}: {e}"),
        }
    }
    for u in units.iter_mut() {
        let name = u.name.clone();
        for l in u
            .service
            .limits
            .iter_mut()
            .filter(|l| l.resource == LimitResource::Nofile)
        {
            if l.soft.is_some_and(|s| s > max) || l.hard.is_some_and(|h| h > max) {
                log::warn!(
                    "{name}: LimitNOFILE above what this system allows (fs.nr_open, or init's own \
                     hard limit without CAP_SYS_RESOURCE): clamped to {max}"
                );
            }
            l.soft = Some(l.soft.map_or(max, |s| s.min(max)));
            l.hard = Some(l.hard.map_or(max, |h| h.min(max)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(valid_hostname("kata-guest.local"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("bad name"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }
}
