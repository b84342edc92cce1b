//! The cgroup file system under a root given by the caller (never assumed):
//! its layout (cgroup v2, or v1 controller hierarchies with an optional v2
//! or `name=systemd` tracking hierarchy), the files a setting maps to (pure:
//! [`plan`]), and the reads and writes.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::props::{self, Setting};

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub path: PathBuf,
    pub kind: HierKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HierKind {
    /// cgroup v2.
    V2,
    /// cgroup v1 with these controllers (empty for a named hierarchy such as
    /// `name=systemd`).
    V1(Vec<String>),
}

/// Where the hierarchies are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// cgroup v2 mounted at the root itself (the VM's case).
    pub unified: bool,
    /// Every hierarchy a unit's processes join; the first is the one whose
    /// contents decide whether a unit is populated (v2 when there is one).
    pub hierarchies: Vec<Hierarchy>,
}

/// A failed operation on a cgroup file, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}", path.display())]
pub struct CgError {
    pub what: String,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl CgError {
    fn new(what: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Self {
            what: what.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The controllers systemd enables for a delegated unit on cgroup v2.
const V2_CONTROLLERS: [&str; 5] = ["cpu", "cpuset", "io", "memory", "pids"];

impl Layout {
    /// Reads the layout under `root`: cgroup v2 when `root` has
    /// `cgroup.controllers`, else every directory below it that holds a
    /// hierarchy (`cgroup.procs`), v1 named by its controllers
    /// (`cpu,cpuacct`, symbolic links to it counted once), `unified` as v2.
    pub fn detect(root: &Path) -> Result<Layout, CgError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Layout {
                unified: true,
                hierarchies: vec![Hierarchy {
                    path: root.to_path_buf(),
                    kind: HierKind::V2,
                }],
            });
        }
        let entries = fs::read_dir(root).map_err(|e| CgError::new("cannot list", root, e))?;
        let mut seen = Vec::new();
        let mut hierarchies = Vec::new();
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = root.join(&name);
            if !path.join("cgroup.procs").exists() {
                continue;
            }
            let real = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            if seen.contains(&real) {
                continue;
            }
            // `cpu` may be a link to `cpu,cpuacct`: the real name lists
            // the controllers.
            let real_name = real
                .file_name()
                .map_or_else(|| name.clone(), |n| n.to_string_lossy().into_owned());
            seen.push(real);
            let kind = if path.join("cgroup.controllers").exists() {
                HierKind::V2
            } else if real_name == "systemd" || real_name.starts_with("name=") {
                HierKind::V1(Vec::new())
            } else {
                HierKind::V1(real_name.split(',').map(str::to_string).collect())
            };
            hierarchies.push(Hierarchy { path, kind });
        }
        if hierarchies.is_empty() {
            return Err(CgError::new(
                "no cgroup hierarchy found under",
                root,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        // v2 first, then name=systemd: the tracking hierarchy decides
        // whether a unit still has processes.
        hierarchies.sort_by_key(|h| match &h.kind {
            HierKind::V2 => 0,
            HierKind::V1(c) if c.is_empty() => 1,
            HierKind::V1(_) => 2,
        });
        Ok(Layout {
            unified: false,
            hierarchies,
        })
    }

    fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| matches!(&h.kind, HierKind::V1(c) if c.iter().any(|c| c == controller)))
    }

    fn v2(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.kind == HierKind::V2)
    }

    /// The hierarchy that tracks processes (the first one found).
    pub fn primary(&self) -> Option<&Hierarchy> {
        self.hierarchies.first()
    }

    /// A short description for the log.
    pub fn describe(&self) -> String {
        if self.unified {
            return format!("cgroup v2 at {}", self.hierarchies[0].path.display());
        }
        let names: Vec<String> = self
            .hierarchies
            .iter()
            .map(|h| {
                h.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        format!("cgroup v1 hierarchies {}", names.join(" "))
    }
}

/// One write to a cgroup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The unit's directory in one hierarchy.
    pub dir: PathBuf,
    pub file: &'static str,
    pub value: String,
}

/// What to write for settings, and what had to be left out (one message per
/// setting that this layout cannot express, as systemd ignores v2-only
/// settings on v1).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub skipped: Vec<String>,
}

/// A unit's CPU quota state: the per-second quota and the period are set by
/// separate properties but written together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuQuota {
    pub per_sec: Option<u64>,
    pub period: Option<u64>,
}

/// The writes for `settings` on the unit at `rel` (relative to every
/// hierarchy's root), as systemd maps its properties. Updates `quota`.
pub fn plan(layout: &Layout, rel: &str, settings: &[Setting], quota: &mut CpuQuota) -> Plan {
    let mut plan = Plan::default();
    let mut quota_changed = false;
    for s in settings {
        match s {
            Setting::CpuQuotaPerSec(q) => {
                quota.per_sec = Some(*q);
                quota_changed = true;
            }
            Setting::CpuQuotaPeriod(p) => {
                quota.period = Some(*p);
                quota_changed = true;
            }
            _ => {}
        }
    }
    let put = |plan: &mut Plan, h: Option<&Hierarchy>, what: &str, file, value: String| match h {
        Some(h) => plan.writes.push(Write {
            dir: h.path.join(rel),
            file,
            value,
        }),
        None => plan
            .skipped
            .push(format!("{what}: no {} hierarchy", file_controller(file))),
    };
    if layout.unified {
        let v2 = layout.v2();
        for s in settings {
            let (file, value) = match s {
                Setting::CpuWeight(w) => ("cpu.weight", w.to_string()),
                Setting::CpuShares(sh) => ("cpu.weight", props::shares_to_weight(*sh).to_string()),
                Setting::MemoryMax(v) => ("memory.max", props::v2_limit(*v)),
                Setting::MemoryHigh(v) => ("memory.high", props::v2_limit(*v)),
                Setting::MemoryLow(v) => ("memory.low", props::v2_limit(*v)),
                Setting::MemoryMin(v) => ("memory.min", props::v2_limit(*v)),
                Setting::MemorySwapMax(v) => ("memory.swap.max", props::v2_limit(*v)),
                Setting::TasksMax(v) => ("pids.max", props::v2_limit(*v)),
                Setting::AllowedCpus(l) => ("cpuset.cpus", l.clone()),
                Setting::AllowedMemoryNodes(l) => ("cpuset.mems", l.clone()),
                Setting::CpuQuotaPerSec(_) | Setting::CpuQuotaPeriod(_) => continue,
            };
            put(&mut plan, v2, &format!("{s:?}"), file, value);
        }
        if quota_changed {
            let (q, p) = props::cpu_quota(quota.per_sec, quota.period);
            let q = q.map_or_else(|| "max".to_string(), |q| q.to_string());
            put(&mut plan, v2, "CPUQuota", "cpu.max", format!("{q} {p}"));
        }
    } else {
        for s in settings {
            let (file, value) = match s {
                Setting::CpuWeight(w) => ("cpu.shares", props::weight_to_shares(*w).to_string()),
                Setting::CpuShares(sh) => ("cpu.shares", sh.to_string()),
                Setting::MemoryMax(v) => ("memory.limit_in_bytes", v1_limit(*v)),
                Setting::TasksMax(v) => ("pids.max", props::v2_limit(*v)),
                Setting::CpuQuotaPerSec(_) | Setting::CpuQuotaPeriod(_) => continue,
                other => {
                    plan.skipped
                        .push(format!("{other:?}: cgroup v2 only, ignored on cgroup v1"));
                    continue;
                }
            };
            let h = layout.v1(file_controller(file));
            put(&mut plan, h, &format!("{s:?}"), file, value);
        }
        if quota_changed {
            let (q, p) = props::cpu_quota(quota.per_sec, quota.period);
            let h = layout.v1("cpu");
            put(&mut plan, h, "CPUQuota", "cpu.cfs_period_us", p.to_string());
            let q = q.map_or_else(|| "-1".to_string(), |q| q.to_string());
            put(&mut plan, h, "CPUQuota", "cpu.cfs_quota_us", q);
        }
    }
    plan
}

fn v1_limit(v: u64) -> String {
    if v == u64::MAX {
        "-1".to_string()
    } else {
        v.to_string()
    }
}

/// The controller a file belongs to (`memory.max` → `memory`).
fn file_controller(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// Writes `value` to the existing file `path` in one write(2), as cgroup
/// files want (a missing file is `NotFound`: a controller not enabled).
pub fn write_file(path: &Path, value: &str) -> Result<(), CgError> {
    use std::io::Write as _;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| CgError::new(format!("cannot write {value:?} to"), path, e))
}

fn read_file(path: &Path) -> Result<String, CgError> {
    fs::read_to_string(path).map_err(|e| CgError::new("cannot read", path, e))
}

/// Creates the unit's directory in every hierarchy. On cgroup v2 the
/// controllers of [`V2_CONTROLLERS`] that each ancestor has are enabled in
/// its `cgroup.subtree_control`, down to the unit's parent, so that the
/// unit has them (as systemd realizes a delegated unit); a refusal (a
/// parent with processes of its own) is logged, not fatal. On v1 a new
/// cpuset cgroup gets its parent's CPUs and memory nodes.
pub fn create(layout: &Layout, rel: &str) -> Result<(), CgError> {
    for h in &layout.hierarchies {
        let dir = h.path.join(rel);
        let mut cur = h.path.clone();
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        for part in &parts {
            if h.kind == HierKind::V2 {
                enable_controllers(&cur);
            }
            let parent = cur.clone();
            cur.push(part);
            match fs::create_dir(&cur) {
                Ok(()) => {
                    if matches!(&h.kind, HierKind::V1(c) if c.iter().any(|c| c == "cpuset")) {
                        inherit_cpuset(&parent, &cur)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgError::new("cannot create cgroup", &cur, e)),
            }
        }
        debug_assert_eq!(cur, dir);
    }
    Ok(())
}

fn enable_controllers(dir: &Path) {
    let Ok(available) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let wanted: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .filter(|c| !enabled.split_whitespace().any(|a| a == *c))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let path = dir.join("cgroup.subtree_control");
    let all: Vec<String> = wanted.iter().map(|c| format!("+{c}")).collect();
    if write_file(&path, &all.join(" ")).is_ok() {
        return;
    }
    // One at a time, so that one refused controller leaves the others on.
    for c in wanted {
        if let Err(e) = write_file(&path, &format!("+{c}")) {
            log::warn!("{}", minos_common::Report(&e));
        }
    }
}

fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<(), CgError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = fs::read_to_string(dir.join(file)).unwrap_or_default();
        if mine.trim().is_empty() {
            let theirs = read_file(&parent.join(file))?;
            write_file(&dir.join(file), theirs.trim())?;
        }
    }
    Ok(())
}

/// Moves `pid` into the unit's cgroup (or its sub-cgroup `sub`, created
/// when missing) in every hierarchy.
pub fn attach(layout: &Layout, rel: &str, sub: &str, pid: u32) -> Result<(), CgError> {
    let target = if sub.is_empty() {
        rel.to_string()
    } else {
        format!("{rel}/{sub}")
    };
    if !sub.is_empty() {
        create(layout, &target)?;
    }
    for h in &layout.hierarchies {
        write_file(&h.path.join(&target).join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Whether the unit's cgroup (with its descendants) has a process; a
/// missing directory has none.
pub fn populated(layout: &Layout, rel: &str) -> bool {
    let Some(h) = layout.primary() else {
        return false;
    };
    let dir = h.path.join(rel);
    if h.kind == HierKind::V2 {
        if let Ok(events) = fs::read_to_string(dir.join("cgroup.events")) {
            return events_flag(&events, "populated");
        }
    }
    !procs(&dir).is_empty()
}

/// The `cgroup.events` file of `rel` when the tracking hierarchy is cgroup
/// v2 (the file whose changes tell that a cgroup emptied).
pub fn events_file(layout: &Layout, rel: &str) -> Option<PathBuf> {
    let h = layout.primary()?;
    (h.kind == HierKind::V2).then(|| h.path.join(rel).join("cgroup.events"))
}

fn events_flag(events: &str, key: &str) -> bool {
    events.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some(key) && w.next() == Some("1")
    })
}

/// Every process of a cgroup directory and its descendants.
pub fn procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(procs(&e.path()));
            }
        }
    }
    out
}

/// Sends `signal` to every process of the unit. SIGKILL on cgroup v2 uses
/// `cgroup.kill` where the kernel has it; on v1 a frozen unit is thawed
/// after SIGKILL so that its processes can die.
pub fn kill(layout: &Layout, rel: &str, signal: rustix::process::Signal) -> Result<usize, CgError> {
    let Some(h) = layout.primary() else {
        return Ok(0);
    };
    let dir = h.path.join(rel);
    let pids = procs(&dir);
    let kill_file = dir.join("cgroup.kill");
    let is_kill = signal == rustix::process::Signal::KILL;
    if is_kill && h.kind == HierKind::V2 && kill_file.exists() {
        write_file(&kill_file, "1")?;
    } else {
        for pid in &pids {
            let Some(p) = i32::try_from(*pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let r = rustix::process::kill_process(p, signal);
            if let Err(e) = r {
                if e != rustix::io::Errno::SRCH {
                    return Err(CgError::new(
                        format!("cannot send signal {} to process {pid} of", signal.as_raw()),
                        &dir,
                        e.into(),
                    ));
                }
            }
        }
    }
    if is_kill {
        if let Some(fz) = layout.v1("freezer") {
            let state = fz.path.join(rel).join("freezer.state");
            if fs::read_to_string(&state).is_ok_and(|s| s.trim() != "THAWED") {
                write_file(&state, "THAWED")?;
            }
        }
    }
    Ok(pids.len())
}

/// Starts freezing (`true`) or thawing the unit: the v1 freezer where
/// there is a freezer hierarchy (what kata-agent reads back on cgroup v1),
/// else `cgroup.freeze` on cgroup v2 — never both: a task held by the v1
/// freezer never reaches the v2 frozen state. [`frozen`] tells when it is
/// done.
pub fn freeze(layout: &Layout, rel: &str, on: bool) -> Result<(), CgError> {
    if let Some(h) = layout.v1("freezer") {
        let f = h.path.join(rel).join("freezer.state");
        return write_file(&f, if on { "FROZEN" } else { "THAWED" });
    }
    if let Some(h) = layout.v2() {
        let f = h.path.join(rel).join("cgroup.freeze");
        return write_file(&f, if on { "1" } else { "0" });
    }
    Err(CgError::new(
        "no freezer (v1 freezer hierarchy or cgroup v2) for",
        &PathBuf::from(rel),
        io::Error::from(io::ErrorKind::Unsupported),
    ))
}

/// Whether the unit's freezer has reached the state `on`.
pub fn frozen(layout: &Layout, rel: &str, on: bool) -> bool {
    if let Some(h) = layout.v1("freezer") {
        let want = if on { "FROZEN" } else { "THAWED" };
        return fs::read_to_string(h.path.join(rel).join("freezer.state"))
            .is_ok_and(|s| s.trim() == want);
    }
    if let Some(h) = layout.v2() {
        return fs::read_to_string(h.path.join(rel).join("cgroup.events"))
            .is_ok_and(|ev| events_flag(&ev, "frozen") == on);
    }
    false
}

/// Removes the unit's cgroup directory and everything below it in every
/// hierarchy, deepest first; what is already gone is fine.
pub fn remove(layout: &Layout, rel: &str) -> Result<(), CgError> {
    let mut first_err = None;
    for h in &layout.hierarchies {
        if let Err(e) = remove_tree(&h.path.join(rel)) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn remove_tree(dir: &Path) -> Result<(), CgError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CgError::new("cannot list", dir, e)),
    };
    for e in entries.filter_map(Result::ok) {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    // A just-emptied cgroup can be busy for a moment while its last task
    // is released.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CgError::new("cannot remove cgroup", dir, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn v2_root() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        touch(
            &t.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        );
        touch(&t.path().join("cgroup.procs"), "");
        let l = Layout::detect(t.path()).unwrap();
        (t, l)
    }

    fn v1_root() -> (tempfile::TempDir, Layout) {
        let t = tempfile::tempdir().unwrap();
        for h in [
            "cpu,cpuacct",
            "memory",
            "pids",
            "freezer",
            "systemd",
            "cpuset",
        ] {
            touch(&t.path().join(h).join("cgroup.procs"), "");
        }
        touch(&t.path().join("cpuset/cpuset.cpus"), "0-3\n");
        touch(&t.path().join("cpuset/cpuset.mems"), "0\n");
        std::os::unix::fs::symlink("cpu,cpuacct", t.path().join("cpu")).unwrap();
        touch(&t.path().join("unified/cgroup.controllers"), "");
        touch(&t.path().join("unified/cgroup.procs"), "");
        fs::create_dir(t.path().join("not-a-hierarchy")).unwrap();
        let l = Layout::detect(t.path()).unwrap();
        (t, l)
    }

    #[test]
    fn detects_layouts() {
        let (t, l) = v2_root();
        assert!(l.unified);
        assert_eq!(l.hierarchies.len(), 1);
        assert_eq!(l.hierarchies[0].path, t.path());

        let (t, l) = v1_root();
        assert!(!l.unified);
        let names: Vec<_> = l
            .hierarchies
            .iter()
            .map(|h| h.path.strip_prefix(t.path()).unwrap().to_str().unwrap())
            .collect();
        // v2 first, name=systemd next, the symbolic link counted once.
        assert_eq!(
            names,
            ["unified", "systemd", "cpu", "cpuset", "freezer", "memory", "pids"]
        );
        assert_eq!(
            l.v1("cpuacct").unwrap().kind,
            HierKind::V1(vec!["cpu".into(), "cpuacct".into()])
        );
        assert!(Layout::detect(&t.path().join("not-a-hierarchy")).is_err());
    }

    #[test]
    fn v2_mapping() {
        let (t, l) = v2_root();
        let mut q = CpuQuota::default();
        let p = plan(
            &l,
            "system.slice/kata-x.scope",
            &[
                Setting::MemoryMax(u64::MAX),
                Setting::MemoryLow(1 << 20),
                Setting::MemorySwapMax(0),
                Setting::CpuShares(2048),
                Setting::CpuWeight(300),
                Setting::TasksMax(20),
                Setting::AllowedCpus("0-1".into()),
                Setting::AllowedMemoryNodes("0".into()),
                Setting::CpuQuotaPerSec(500_000),
                Setting::CpuQuotaPeriod(50_000),
            ],
            &mut q,
        );
        let dir = t.path().join("system.slice/kata-x.scope");
        let got: Vec<(&str, &str)> = p
            .writes
            .iter()
            .map(|w| {
                assert_eq!(w.dir, dir);
                (w.file, w.value.as_str())
            })
            .collect();
        assert_eq!(
            got,
            [
                ("memory.max", "max"),
                ("memory.low", "1048576"),
                ("memory.swap.max", "0"),
                ("cpu.weight", "200"),
                ("cpu.weight", "300"),
                ("pids.max", "20"),
                ("cpuset.cpus", "0-1"),
                ("cpuset.mems", "0"),
                ("cpu.max", "25000 50000"),
            ]
        );
        assert!(p.skipped.is_empty());
        // A later period alone keeps the quota per second.
        let p = plan(&l, "x.scope", &[Setting::CpuQuotaPeriod(100_000)], &mut q);
        assert_eq!(p.writes[0].value, "50000 100000");
        let p = plan(&l, "x.scope", &[Setting::CpuQuotaPerSec(u64::MAX)], &mut q);
        assert_eq!(p.writes[0].value, "max 100000");
    }

    #[test]
    fn v1_mapping() {
        let (t, l) = v1_root();
        let mut q = CpuQuota::default();
        let p = plan(
            &l,
            "system.slice/kata-x.scope",
            &[
                Setting::MemoryMax(1 << 30),
                Setting::MemoryLow(1),
                Setting::CpuWeight(100),
                Setting::TasksMax(u64::MAX),
                Setting::CpuQuotaPerSec(200_000),
                Setting::AllowedCpus("0".into()),
            ],
            &mut q,
        );
        let got: Vec<(String, &str, &str)> = p
            .writes
            .iter()
            .map(|w| {
                let d = w.dir.strip_prefix(t.path()).unwrap();
                (d.display().to_string(), w.file, w.value.as_str())
            })
            .collect();
        let s = "system.slice/kata-x.scope";
        assert_eq!(
            got,
            [
                (format!("memory/{s}"), "memory.limit_in_bytes", "1073741824"),
                (format!("cpu/{s}"), "cpu.shares", "1024"),
                (format!("pids/{s}"), "pids.max", "max"),
                (format!("cpu/{s}"), "cpu.cfs_period_us", "100000"),
                (format!("cpu/{s}"), "cpu.cfs_quota_us", "20000"),
            ]
        );
        assert_eq!(p.skipped.len(), 2, "{:?}", p.skipped);
        assert!(p.skipped[0].contains("MemoryLow"));
        let p = plan(&l, "x.scope", &[Setting::MemoryMax(u64::MAX)], &mut q);
        assert_eq!(p.writes[0].value, "-1");
    }

    #[test]
    fn missing_controller_hierarchy_is_reported() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("memory/cgroup.procs"), "");
        let l = Layout::detect(t.path()).unwrap();
        let p = plan(
            &l,
            "x.scope",
            &[Setting::TasksMax(5)],
            &mut CpuQuota::default(),
        );
        assert!(p.writes.is_empty());
        assert_eq!(p.skipped, ["TasksMax(5): no pids hierarchy"]);
    }

    #[test]
    fn create_enables_controllers_and_inherits_cpusets() {
        let (t, l) = v2_root();
        touch(&t.path().join("cgroup.subtree_control"), "");
        create(&l, "system.slice/kata-x.scope").unwrap();
        assert!(t.path().join("system.slice/kata-x.scope").is_dir());
        // A plain directory stands in for cgroupfs: the last write remains.
        assert_eq!(
            fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            "+cpu +cpuset +io +memory +pids"
        );
        // Again: already there is fine.
        create(&l, "system.slice/kata-x.scope").unwrap();

        let (t, l) = v1_root();
        // cgroupfs makes a new cgroup's files itself; a plain directory
        // does not, so the cpuset copy finds no file to write.
        let e = create(&l, "system.slice/kata-x.scope").unwrap_err();
        assert!(
            e.to_string().contains("cpuset/system.slice/cpuset.cpus"),
            "{e}"
        );
        for h in ["unified", "systemd", "cpu"] {
            assert!(t.path().join(h).join("system.slice/kata-x.scope").is_dir());
        }
        let d = t.path().join("cpuset/system.slice");
        touch(&d.join("cpuset.cpus"), "");
        touch(&d.join("cpuset.mems"), "\n");
        inherit_cpuset(&t.path().join("cpuset"), &d).unwrap();
        assert_eq!(fs::read_to_string(d.join("cpuset.cpus")).unwrap(), "0-3");
        assert_eq!(fs::read_to_string(d.join("cpuset.mems")).unwrap(), "0");
    }

    #[test]
    fn populated_and_removal_on_a_plain_tree() {
        let (t, l) = v2_root();
        let d = t.path().join("system.slice/x.scope");
        assert!(!populated(&l, "system.slice/x.scope"));
        fs::create_dir_all(d.join("init")).unwrap();
        assert!(!populated(&l, "system.slice/x.scope"));
        touch(&d.join("init/cgroup.procs"), "12\n13\n");
        assert_eq!(procs(&d), [12, 13]);
        assert!(populated(&l, "system.slice/x.scope"));
        touch(&d.join("cgroup.events"), "populated 0\nfrozen 0\n");
        assert!(!populated(&l, "system.slice/x.scope"));
        assert!(frozen(&l, "system.slice/x.scope", false));
        assert!(!frozen(&l, "system.slice/x.scope", true));
        let err = attach(&l, "nope.scope", "", 1).unwrap_err();
        assert!(err.to_string().contains("nope.scope/cgroup.procs"), "{err}");
    }

    #[test]
    fn errors_name_the_file() {
        let e = write_file(Path::new("/nonexistent/memory.max"), "5").unwrap_err();
        assert_eq!(
            minos_common::Report(&e).to_string(),
            "cannot write \"5\" to /nonexistent/memory.max: No such file or directory (os error 2)"
        );
    }
}
