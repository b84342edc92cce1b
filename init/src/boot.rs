//! PID 1: early boot, loading units, supervising, and the last steps of
//! shutdown. Every step logs what failed and carries on with a safe default.

// BTreeMap: no random hash keys to fetch (a getrandom call) at boot.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use log::LevelFilter;

use crate::cmdline::{self, BootConfig};
use crate::supervisor::{
    self, LateSetup, PowerKind, Settings, ShutdownRequest, Supervisor, Urgency,
};
use crate::timeline::{self, Event, Timeline};
use crate::unit::{self, LimitResource, Severity, Unit};
use crate::{logger, mounts, spawn, sys, Mode, CONTROL_SOCKET, NOTIFY_SOCKET, RUN_DIR, UNITS_DIR};

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
    let mut errors = Vec::new();
    mounts::mount_dev(&mut table, mode, &mut errors);
    if mode == Mode::Vm {
        sys::console_on_stdio();
        // Info lines wait until the agent has run (the supervisor's late
        // set-up); warnings and errors go out at once.
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
    timeline.mark(Event::MountsDone, None);

    system_setup(mode);
    let (mut units, later) = load_units(Path::new(UNITS_DIR), &cfg, mode);
    apply_nofile_limits(&mut units, mode);

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
const SHUTDOWN_FS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// sync, then (with `unmount`) every file system unmounted or remounted
/// read-only in reverse order, then sync again. Done in a child process
/// (init's `minos-shutdown-fs` personality) that init waits for at most
/// 60 s: a dead virtio-fs or network file system can block sync or umount
/// forever, and PID 1 must still reach reboot(2).
fn filesystems_down(unmount: bool) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(SHUTDOWN_FS).stdin(std::process::Stdio::null());
    if unmount {
        cmd.arg("--unmount");
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            log::warn!("shutdown: run {SHUTDOWN_FS}: {e}; doing it in init");
            shutdown_fs(unmount);
            return;
        }
    };
    let deadline = std::time::Instant::now() + SHUTDOWN_FS_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Ok(None) => {
                log::error!(
                    "shutdown: sync/unmount did not finish within {}s (a hung file system?); going on",
                    SHUTDOWN_FS_TIMEOUT.as_secs()
                );
                return;
            }
            Err(e) => {
                log::warn!("shutdown: wait for {SHUTDOWN_FS}: {e}");
                return;
            }
        }
    }
}

/// The work of [`filesystems_down`], in whichever process runs it.
pub fn shutdown_fs(unmount: bool) {
    rustix::fs::sync();
    if !unmount {
        return;
    }
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(info) => {
            for f in mounts::unmount_all(&info) {
                log::warn!("shutdown: could not unmount or remount read-only: {f}");
            }
        }
        Err(e) => {
            log::error!("shutdown: read /proc/self/mountinfo: {e}; filesystems left mounted")
        }
    }
    rustix::fs::sync();
}

/// PID 1's panic hook: the message to the kernel log (and stderr in a
/// container), sync, power off — never PID 1 ending (a kernel panic).
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
            eprint!("{}", msg.trim_start_matches("<2>"));
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

/// Reads the `Requires=`/`Wants=` of a `.target` file.
pub fn target_deps(text: &str) -> Vec<String> {
    let mut section = "";
    let mut deps = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Unit]" {
            if let Some((k, v)) = line.split_once('=') {
                if matches!(k.trim(), "Requires" | "Wants") {
                    deps.extend(v.split_whitespace().map(String::from));
                }
            }
        }
    }
    deps
}

/// The entries of `dir` but `.` and `..`, each with whether the listing
/// says regular file (d_type: no stat). One getdents64 buffer on the stack:
/// std's `read_dir` adds an fstat and a 32 KiB heap buffer, page faults at
/// boot.
fn list_dir(dir: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    use std::os::unix::ffi::OsStrExt;
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    // Room for some 50 entries a call: a units directory in one.
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push((
            dir.join(std::ffi::OsStr::from_bytes(name)),
            entry.file_type() == rustix::fs::FileType::RegularFile,
        ));
    }
    Ok(names)
}

/// Loads the units to start from `dir`, honouring systemd.unit=, masks and
/// wants. Socket units, and the services named like them (a socket unit's
/// default `Service=`), are left for [`Later`] unless a unit read now
/// refers to one of them: no service but one they activate needs them
/// before the first service is forked, and reading them then costs that
/// service's exec nothing.
pub fn load_units(dir: &Path, cfg: &BootConfig, mode: Mode) -> (Vec<Unit>, Option<Later>) {
    let mut targets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut names = match list_dir(dir) {
        Ok(names) => names,
        Err(e) => {
            log::warn!(
                "read units directory {}: {e}; no units to start",
                dir.display()
            );
            Vec::new()
        }
    };
    names.sort();
    let file_name = |path: &Path| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let socket_stems: Vec<String> = names
        .iter()
        .filter_map(|(p, _)| file_name(p).strip_suffix(".socket").map(String::from))
        .collect();
    let (later, now): (Vec<_>, Vec<_>) = names.into_iter().partition(|(p, _)| {
        let name = file_name(p);
        let stem = name
            .strip_suffix(".socket")
            .or_else(|| name.strip_suffix(".service"));
        stem.is_some_and(|s| socket_stems.iter().any(|k| k == s))
    });
    let mut broken: Vec<String> = Vec::new();
    let mut services = Vec::new();
    for (path, listed_regular) in now {
        let name = file_name(&path);
        if name.ends_with(".target") {
            // The same guards as a unit file: a FIFO or a huge file named
            // `.target` must not stall or swamp PID 1.
            match unit::read_unit_file(&path, listed_regular) {
                Ok(text) => {
                    targets.insert(name, target_deps(&text));
                }
                Err(e) => log::error!("{}: {e}; not used", path.display()),
            }
            continue;
        }
        load_one(&path, listed_regular, &mut services, &mut broken);
    }
    let named_now = later.iter().any(|(p, _)| {
        let name = file_name(p);
        services.iter().any(|u| {
            u.unit_deps().contains(&name) || u.after.contains(&name) || u.before.contains(&name)
        })
    });
    if named_now || later.is_empty() {
        // A unit read now refers to one of them: all of them now.
        for (path, listed_regular) in &later {
            load_one(path, *listed_regular, &mut services, &mut broken);
        }
        return (select(services, &targets, cfg, &broken), None);
    }
    let units = select(services, &targets, cfg, &broken);
    let later = Later {
        files: later,
        targets,
        cfg: cfg.clone(),
        broken,
        mode,
    };
    (units, Some(later))
}

/// Reads one `.service` or `.socket` file into `units` (its diagnostics
/// logged), or its name into `broken`.
fn load_one(path: &Path, listed_regular: bool, units: &mut Vec<Unit>, broken: &mut Vec<String>) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.ends_with(".service") && !name.ends_with(".socket") {
        return;
    }
    let parsed = unit::load_listed(path, listed_regular);
    for d in &parsed.diagnostics {
        match d.severity {
            Severity::Warning => log::warn!("{d}"),
            Severity::Error => log::error!("{d}"),
        }
    }
    match parsed.unit {
        Some(u) => units.push(u),
        None => {
            log::error!(
                "{}: not loaded; the other units still start",
                path.display()
            );
            broken.push(name);
        }
    }
}

/// The socket units and their services [`load_units`] left: read once the
/// first service has been forked (in a VM; before any service in a
/// container), selected with the units read at boot.
#[derive(Debug)]
pub struct Later {
    files: Vec<(PathBuf, bool)>,
    targets: BTreeMap<String, Vec<String>>,
    cfg: BootConfig,
    broken: Vec<String>,
    mode: Mode,
}

impl supervisor::LaterUnits for Later {
    /// Reads the files and selects again over them and `loaded` (the units
    /// read at boot): the units to start or keep, as [`select`] gives them,
    /// their `LimitNOFILE=` applied.
    fn load(&self, loaded: &[Unit]) -> Vec<Unit> {
        let mut broken = self.broken.clone();
        let mut all = loaded.to_vec();
        for (path, listed_regular) in &self.files {
            load_one(path, *listed_regular, &mut all, &mut broken);
        }
        let mut chosen = select(all, &self.targets, &self.cfg, &broken);
        apply_nofile_limits(&mut chosen, self.mode);
        chosen
    }
}

/// Picks the units to start: the named target's (or every) service, plus
/// `systemd.wants=`, plus every socket unit, plus what they require or
/// want, minus masked ones. A service a socket unit starts is no boot unit
/// of its own unless named or pulled in: it is kept, not started
/// ([`Unit::on_demand`]).
pub fn select(
    all: Vec<Unit>,
    targets: &BTreeMap<String, Vec<String>>,
    cfg: &BootConfig,
    broken: &[String],
) -> Vec<Unit> {
    let by_name = |n: &str| all.iter().any(|u| u.name == n);
    // The services socket units start (a refused socket file's default one
    // too: it is not started for want of its socket either).
    let activated: Vec<String> = all
        .iter()
        .filter_map(|u| u.socket.as_ref().map(|s| s.service.clone()))
        .chain(
            broken
                .iter()
                .filter_map(|b| b.strip_suffix(".socket"))
                .map(|stem| format!("{stem}.service")),
        )
        .collect();
    let mut roots: Vec<String> = match cfg.unit.as_deref() {
        Some(n) if by_name(n) => vec![n.to_string()],
        Some(n) if targets.contains_key(n) => targets.get(n).cloned().unwrap_or_default(),
        _ => all
            .iter()
            .filter(|u| !activated.contains(&u.name))
            .map(|u| u.name.clone())
            .collect(),
    };
    roots.extend(cfg.wants.iter().cloned());
    // Every socket unit, whatever the target: the units directory holds the
    // enabled ones, which systemd's sockets.target starts at every boot.
    roots.extend(all.iter().filter(|u| u.is_socket()).map(|u| u.name.clone()));
    // Closure over Requires=/Wants= (through targets too).
    let mut chosen: Vec<String> = Vec::new();
    let mut seen_targets: Vec<String> = Vec::new();
    while let Some(n) = roots.pop() {
        if let Some(deps) = targets.get(&n) {
            if !seen_targets.contains(&n) {
                seen_targets.push(n.clone());
                roots.extend(deps.iter().cloned());
            }
            continue;
        }
        if chosen.contains(&n) {
            continue;
        }
        if let Some(u) = all.iter().find(|u| u.name == n) {
            roots.extend(u.unit_deps());
            chosen.push(n);
        }
    }
    // A service is kept for its socket unit when that one starts.
    let wanted_by_socket = |name: &str| {
        all.iter().any(|s| {
            s.socket.as_ref().is_some_and(|k| k.service == name)
                && chosen.contains(&s.name)
                && !cfg.masked.contains(&s.name)
        })
    };
    let on_demand: Vec<String> = all
        .iter()
        .filter(|u| !chosen.contains(&u.name) && wanted_by_socket(&u.name))
        .map(|u| u.name.clone())
        .collect();
    let mut out = Vec::new();
    for mut u in all {
        if on_demand.contains(&u.name) {
            if cfg.masked.contains(&u.name) {
                log::info!("{}: masked on the kernel command line; not started", u.name);
                continue;
            }
            u.on_demand = true;
            out.push(u);
            continue;
        }
        if !chosen.contains(&u.name) {
            continue;
        }
        if cfg.masked.contains(&u.name) {
            log::info!("{}: masked on the kernel command line; not started", u.name);
            continue;
        }
        let missing: Vec<&String> = u
            .requires
            .iter()
            .filter(|r| {
                r.ends_with(".service")
                    && (cfg.masked.contains(r) || broken.contains(r) || !chosen.contains(r))
            })
            .collect();
        if let Some(m) = missing.first() {
            log::error!(
                "{}: not started: requires {m}, which is masked, missing or malformed",
                u.name
            );
            continue;
        }
        out.push(u);
    }
    out
}

trait UnitDeps {
    fn unit_deps(&self) -> Vec<String>;
}

impl UnitDeps for Unit {
    fn unit_deps(&self) -> Vec<String> {
        self.requires.iter().chain(&self.wants).cloned().collect()
    }
}

/// Raises fs.nr_open to the largest LimitNOFILE= asked for (VM), or clamps
/// the units' limits to it where init may not change it (container).
fn apply_nofile_limits(units: &mut [Unit], mode: Mode) {
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
    let current: u64 = sys::read_small("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1_048_576);
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
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn unit(name: &str, text: &str) -> Unit {
        let p = unit::parse(name, name, text);
        p.unit.unwrap()
    }

    fn names(v: &[Unit]) -> Vec<&str> {
        v.iter().map(|u| u.name.as_str()).collect()
    }

    fn units_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minos-units-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const AGENT: (&str, &str) = ("kata-agent.service", "[Service]\nExecStart=/bin/agent\n");
    const BUSD_SOCKET: (&str, &str) = (
        "busd.socket",
        "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
    );
    const BUSD: (&str, &str) = ("busd.service", "[Service]\nExecStart=/usr/bin/busd\n");

    #[test]
    fn socket_units_and_their_services_are_read_after_the_first_fork() {
        use crate::supervisor::LaterUnits;
        let other = ("timesync.service", "[Service]\nExecStart=/bin/ts\n");
        let dir = units_dir("later", &[AGENT, BUSD_SOCKET, BUSD, other]);
        let (units, later) = load_units(&dir, &BootConfig::default(), Mode::Vm);
        assert_eq!(
            names(&units),
            vec!["kata-agent.service", "timesync.service"]
        );
        let later = later.expect("the socket unit is left for later");
        // Read then, and selected with what boot loaded: the service on
        // demand, the others as they were.
        let all = later.load(&units);
        let on_demand: Vec<&str> = all
            .iter()
            .filter(|u| u.on_demand)
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(on_demand, vec!["busd.service"]);
        let mut got = names(&all);
        got.sort_unstable();
        assert_eq!(
            got,
            vec![
                "busd.service",
                "busd.socket",
                "kata-agent.service",
                "timesync.service"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_unit_ordered_after_a_socket_unit_has_it_read_at_once() {
        let agent = (
            "kata-agent.service",
            "[Unit]\nAfter=busd.socket\n[Service]\nExecStart=/bin/agent\n",
        );
        let dir = units_dir("now", &[agent, BUSD_SOCKET, BUSD]);
        let (units, later) = load_units(&dir, &BootConfig::default(), Mode::Vm);
        assert!(later.is_none());
        let mut got = names(&units);
        got.sort_unstable();
        assert_eq!(
            got,
            vec!["busd.service", "busd.socket", "kata-agent.service"]
        );
        assert!(
            units
                .iter()
                .find(|u| u.name == "busd.service")
                .unwrap()
                .on_demand
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kata_target_selects_agent_and_ignores_missing_chronyd() {
        let target = include_str!("../../tests/fixtures/kata/kata-containers.target");
        let mut targets = BTreeMap::new();
        targets.insert("kata-containers.target".to_string(), target_deps(target));
        assert_eq!(
            targets["kata-containers.target"],
            vec![
                "basic.target",
                "tmp.mount",
                "chronyd.service",
                "kata-agent.service"
            ]
        );
        let agent = unit(
            "kata-agent.service",
            include_str!("../../tests/fixtures/kata/kata-agent.service"),
        );
        let other = unit("other.service", "[Service]\nExecStart=/bin/true\n");
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            ..Default::default()
        };
        let sel = select(vec![agent, other], &targets, &cfg, &[]);
        assert_eq!(names(&sel), vec!["kata-agent.service"]);
    }

    #[test]
    fn without_target_file_every_service_starts_minus_masked() {
        let a = unit("a.service", "[Service]\nExecStart=/bin/a\n");
        let b = unit("b.service", "[Service]\nExecStart=/bin/b\n");
        let c = unit(
            "c.service",
            "[Unit]\nRequires=b.service\n[Service]\nExecStart=/bin/c\n",
        );
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            masked: vec!["b.service".into()],
            ..Default::default()
        };
        let sel = select(vec![a, b, c], &BTreeMap::new(), &cfg, &[]);
        assert_eq!(names(&sel), vec!["a.service"], "c requires masked b");
    }

    #[test]
    fn a_named_service_pulls_in_its_dependencies() {
        let a = unit(
            "a.service",
            "[Unit]\nWants=b.service\n[Service]\nExecStart=/bin/a\n",
        );
        let b = unit("b.service", "[Service]\nExecStart=/bin/b\n");
        let c = unit("c.service", "[Service]\nExecStart=/bin/c\n");
        let cfg = BootConfig {
            unit: Some("a.service".into()),
            wants: vec!["c.service".into()],
            ..Default::default()
        };
        let sel = select(vec![a, b, c], &BTreeMap::new(), &cfg, &[]);
        assert_eq!(names(&sel), vec!["a.service", "b.service", "c.service"]);
    }

    #[test]
    fn socket_units_start_at_every_boot_and_their_services_on_demand() {
        let agent = unit(
            "kata-agent.service",
            include_str!("../../tests/fixtures/kata/kata-agent.service"),
        );
        let sock = unit(
            "busd.socket",
            "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
        );
        let busd = unit("busd.service", "[Service]\nExecStart=/bin/busd\n");
        let other = unit("other.service", "[Service]\nExecStart=/bin/other\n");
        let on_demand = |sel: &[Unit]| -> Vec<String> {
            sel.iter()
                .filter(|u| u.on_demand)
                .map(|u| u.name.clone())
                .collect()
        };
        // Kata's target names neither the socket nor its service.
        let mut targets = BTreeMap::new();
        targets.insert(
            "kata-containers.target".to_string(),
            vec!["kata-agent.service".to_string()],
        );
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            ..Default::default()
        };
        let all = vec![agent.clone(), sock.clone(), busd.clone(), other.clone()];
        let sel = select(all.clone(), &targets, &cfg, &[]);
        assert_eq!(
            names(&sel),
            vec!["kata-agent.service", "busd.socket", "busd.service"]
        );
        assert_eq!(on_demand(&sel), vec!["busd.service"]);
        // Every service: but not the one the socket starts.
        let sel = select(all.clone(), &BTreeMap::new(), &BootConfig::default(), &[]);
        assert_eq!(on_demand(&sel), vec!["busd.service"]);
        assert_eq!(sel.len(), 4);
        // Pulled in by another unit: started at boot (it gets the socket).
        let wants = unit(
            "client.service",
            "[Unit]\nWants=busd.service\n[Service]\nExecStart=/bin/c\n",
        );
        let sel = select(
            vec![sock.clone(), busd.clone(), wants],
            &BTreeMap::new(),
            &BootConfig::default(),
            &[],
        );
        assert_eq!(
            names(&sel),
            vec!["busd.socket", "busd.service", "client.service"]
        );
        assert!(on_demand(&sel).is_empty());
        // A masked socket: nothing of it; its service is not started either.
        let cfg = BootConfig {
            masked: vec!["busd.socket".into()],
            ..Default::default()
        };
        let sel = select(
            vec![sock, busd.clone(), other.clone()],
            &BTreeMap::new(),
            &cfg,
            &[],
        );
        assert_eq!(names(&sel), vec!["other.service"]);
        // A refused socket file: its service does not start without it.
        let sel = select(
            vec![busd, other],
            &BTreeMap::new(),
            &BootConfig::default(),
            &["busd.socket".to_string()],
        );
        assert_eq!(names(&sel), vec!["other.service"]);
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("kata-guest.local"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("bad name"));
        assert!(!valid_hostname(&"x".repeat(65)));
    }
}
