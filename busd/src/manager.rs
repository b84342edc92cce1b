//! The units busd knows and what each systemd1 call does to the cgroup file
//! system. Synchronous and short: the D-Bus side holds the lock for one call
//! and does its waiting (freezing, a killed scope emptying) outside it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zbus::zvariant::Value;

use crate::cgroup::{self, CgError, CpuQuota, Layout};
use crate::props::{self, Setting};
use crate::unit::{self, Kind};

/// The systemd version busd answers with: Kata's agent compares it as a
/// string with "242" and "244" to choose `CPUQuotaPeriodUSec` and
/// `AllowedCPUs`/`AllowedMemoryNodes`.
pub const VERSION: &str = "257";

/// A call's failure, as a D-Bus error name and a message naming what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NoSuchUnit(String),
    #[error("{0}")]
    UnitExists(String),
    #[error("{0}")]
    InvalidArgs(String),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    pub fn dbus_name(&self) -> &'static str {
        match self {
            Error::NoSuchUnit(_) => "org.freedesktop.systemd1.NoSuchUnit",
            Error::UnitExists(_) => "org.freedesktop.systemd1.UnitExists",
            Error::InvalidArgs(_) => "org.freedesktop.DBus.Error.InvalidArgs",
            Error::Failed(_) => "org.freedesktop.DBus.Error.Failed",
        }
    }

    fn no_such(name: &str) -> Self {
        Error::NoSuchUnit(format!("Unit {name} not loaded."))
    }

    fn cg(unit: &str, e: &CgError) -> Self {
        Error::Failed(format!("{unit}: {}", minos_common::Report(e)))
    }
}

impl From<unit::NameError> for Error {
    fn from(e: unit::NameError) -> Self {
        Error::InvalidArgs(e.0)
    }
}

impl From<props::PropError> for Error {
    fn from(e: props::PropError) -> Self {
        Error::InvalidArgs(e.0)
    }
}

/// A loaded unit.
#[derive(Debug, Clone)]
pub struct Unit {
    pub name: String,
    pub kind: Kind,
    /// Relative to the cgroup root, without a leading slash.
    pub cgroup: String,
    pub slice: String,
    pub description: String,
    pub frozen: bool,
    quota: CpuQuota,
}

impl Unit {
    /// `org.freedesktop.systemd1.Unit` and the type's interface, as
    /// `(interface, property, value)`.
    pub fn properties(&self) -> Vec<(&'static str, &'static str, Value<'static>)> {
        let u = "org.freedesktop.systemd1.Unit";
        let t = self.kind.interface();
        let sub = match self.kind {
            Kind::Scope => "running",
            Kind::Slice => "active",
        };
        vec![
            (u, "Id", Value::from(self.name.clone())),
            (u, "Names", Value::from(vec![self.name.clone()])),
            (u, "Description", Value::from(self.description.clone())),
            (u, "LoadState", Value::from("loaded")),
            (u, "ActiveState", Value::from("active")),
            (u, "SubState", Value::from(sub)),
            (
                u,
                "FreezerState",
                Value::from(if self.frozen { "frozen" } else { "running" }),
            ),
            (u, "Transient", Value::from(true)),
            (t, "ControlGroup", Value::from(format!("/{}", self.cgroup))),
            (t, "Slice", Value::from(self.slice.clone())),
        ]
    }
}

/// A queued (here: finished) job, reported by `JobRemoved`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: u32,
    pub path: String,
    pub unit: String,
}

/// What `KillUnit` should do after the signals went out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterKill {
    Nothing,
    /// SIGKILL: wait until the cgroup is empty, then forget the unit.
    Reap(String),
}

/// Every loaded unit and the cgroup layout they live in.
#[derive(Debug)]
pub struct Manager {
    layout: Layout,
    units: BTreeMap<String, Unit>,
    next_job: u32,
    /// An inotify descriptor watching each scope's `cgroup.events` (cgroup
    /// v2), read by the D-Bus side to notice scopes that empty by
    /// themselves.
    watch: Option<std::os::fd::OwnedFd>,
}

/// `StartTransientUnit`/`StopUnit` modes systemd accepts.
const MODES: [&str; 6] = [
    "replace",
    "fail",
    "isolate",
    "ignore-dependencies",
    "ignore-requirements",
    "replace-irreversibly",
];

impl Manager {
    pub fn new(layout: Layout) -> Self {
        Manager {
            layout,
            units: BTreeMap::new(),
            next_job: 1,
            watch: None,
        }
    }

    /// Watches every scope started from now on with `inotify` (a
    /// descriptor from `inotify_init`), where the tracking hierarchy is
    /// cgroup v2.
    pub fn set_watch(&mut self, fd: std::os::fd::OwnedFd) {
        self.watch = Some(fd);
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn job(&mut self, unit: &str) -> Job {
        let id = self.next_job;
        self.next_job = self.next_job.wrapping_add(1).max(1);
        Job {
            id,
            path: format!("/org/freedesktop/systemd1/job/{id}"),
            unit: unit.to_string(),
        }
    }

    /// Forgets every scope whose cgroup is empty or gone, removing its
    /// directory as systemd does when a scope stops.
    pub fn refresh(&mut self) -> Vec<String> {
        let dead: Vec<String> = self
            .units
            .values()
            .filter(|u| u.kind == Kind::Scope && !cgroup::populated(&self.layout, &u.cgroup))
            .map(|u| u.name.clone())
            .collect();
        for name in &dead {
            self.forget(name);
        }
        dead
    }

    /// Drops a unit and removes its cgroup; a failure is logged.
    pub fn forget(&mut self, name: &str) {
        if let Some(u) = self.units.remove(name) {
            log::info!("{name}: stopped, cgroup /{} removed", u.cgroup);
            if let Err(e) = cgroup::remove(&self.layout, &u.cgroup) {
                log::warn!("{name}: {}", minos_common::Report(&e));
            }
        }
    }

    /// A loaded unit, after [`Manager::refresh`]. The root slice always is;
    /// one left by an earlier busd is adopted ([`Manager::adopt`]).
    pub fn unit(&mut self, name: &str) -> Result<&Unit, Error> {
        let kind = unit::parse(name)?;
        self.refresh();
        if name == "-.slice" && !self.units.contains_key(name) {
            self.load_slice(name);
        }
        if !self.units.contains_key(name) {
            self.adopt(name, kind);
        }
        self.units.get(name).ok_or_else(|| Error::no_such(name))
    }

    /// Loads a unit an earlier busd started (busd restarted after a
    /// failure, the containers still running): a slice whose directory
    /// exists, a scope whose cgroup has processes under some slice, where
    /// systemd puts them — as systemd finds its units again after a
    /// re-exec. Its description and CPU quota state are not known again.
    fn adopt(&mut self, name: &str, kind: Kind) {
        let Some(root) = self.layout.primary().map(|h| h.path.clone()) else {
            return;
        };
        let slice = match kind {
            Kind::Slice => {
                let Ok(rel) = unit::slice_path(name) else {
                    return;
                };
                if !root.join(&rel).is_dir() {
                    return;
                }
                name.to_string()
            }
            Kind::Scope => {
                let Some(slice) = slice_of_scope(&root, "", name, 0) else {
                    return;
                };
                let Ok(rel) = unit::cgroup_path(name, &slice) else {
                    return;
                };
                if !cgroup::populated(&self.layout, &rel) {
                    return;
                }
                self.watch_scope(name, &rel);
                let frozen = cgroup::frozen(&self.layout, &rel, true);
                log::info!("{name}: adopted, running in /{rel}");
                self.units.insert(
                    name.to_string(),
                    Unit {
                        name: name.to_string(),
                        kind,
                        cgroup: rel,
                        slice: slice.clone(),
                        description: name.to_string(),
                        frozen,
                        quota: CpuQuota::default(),
                    },
                );
                slice
            }
        };
        let mut s = Some(slice);
        while let Some(sl) = s.filter(|s| !s.is_empty()) {
            if !self.units.contains_key(&sl) {
                log::info!("{sl}: adopted");
                self.load_slice(&sl);
            }
            s = unit::parent_slice(&sl);
        }
    }

    /// Every loaded unit's name.
    pub fn unit_names(&mut self) -> Vec<String> {
        self.refresh();
        self.units.keys().cloned().collect()
    }

    fn load_slice(&mut self, slice: &str) {
        if self.units.contains_key(slice) {
            return;
        }
        let Ok(cgroup) = unit::slice_path(slice) else {
            return;
        };
        let parent = unit::parent_slice(slice).unwrap_or_default();
        self.units.insert(
            slice.to_string(),
            Unit {
                name: slice.to_string(),
                kind: Kind::Slice,
                cgroup,
                slice: parent,
                description: format!("Slice {slice}"),
                frozen: false,
                quota: CpuQuota::default(),
            },
        );
    }

    /// Watches the scope's `cgroup.events` so that its emptying is noticed
    /// (cgroup v2 with an inotify descriptor set); a failure is logged.
    fn watch_scope(&self, name: &str, rel: &str) {
        if let (Some(fd), Some(events)) = (&self.watch, cgroup::events_file(&self.layout, rel)) {
            if let Err(e) =
                rustix::fs::inotify::add_watch(fd, &events, rustix::fs::inotify::WatchFlags::MODIFY)
            {
                log::warn!("{name}: cannot watch {}: {e}", events.display());
            }
        }
    }

    /// `StartTransientUnit(name, mode, properties, aux)`.
    pub fn start_transient(
        &mut self,
        name: &str,
        mode: &str,
        properties: &[(String, Value<'_>)],
        aux_units: usize,
    ) -> Result<Job, Error> {
        let kind = unit::parse(name)?;
        if !MODES.contains(&mode) {
            return Err(Error::InvalidArgs(format!("invalid job mode {mode:?}")));
        }
        if aux_units != 0 {
            return Err(Error::InvalidArgs(
                "auxiliary units are not supported".into(),
            ));
        }
        let t = props::transient(properties)?;
        self.refresh();
        if self.units.contains_key(name) || name == "-.slice" {
            return Err(Error::UnitExists(format!("Unit {name} already exists.")));
        }
        let slice = match kind {
            Kind::Slice => {
                if t.slice.is_some() {
                    return Err(Error::InvalidArgs(format!(
                        "{name}: a slice's place follows from its name; Slice= is not allowed"
                    )));
                }
                unit::parent_slice(name).unwrap_or_default()
            }
            Kind::Scope => {
                let s = t.slice.clone().unwrap_or_else(|| "-.slice".to_string());
                if unit::parse(&s)? != Kind::Slice {
                    return Err(Error::InvalidArgs(format!(
                        "{name}: Slice={s} is not a slice"
                    )));
                }
                if t.pids.is_empty() {
                    return Err(Error::InvalidArgs(format!(
                        "{name}: a scope needs at least one process in PIDs"
                    )));
                }
                s
            }
        };
        let rel = unit::cgroup_path(name, &slice)?;
        let existed = self
            .layout
            .hierarchies
            .iter()
            .any(|h| h.path.join(&rel).exists());
        cgroup::create(&self.layout, &rel).map_err(|e| Error::cg(name, &e))?;
        let mut quota = CpuQuota::default();
        let result = self
            .apply(name, &rel, &t.settings, &mut quota)
            .and_then(|()| {
                for pid in &t.pids {
                    cgroup::attach(&self.layout, &rel, "", *pid)
                        .map_err(|e| Error::cg(name, &e))?;
                }
                Ok(())
            });
        if let Err(e) = result {
            if !existed && !cgroup::populated(&self.layout, &rel) {
                let _ = cgroup::remove(&self.layout, &rel);
            }
            return Err(e);
        }
        // The slices above are loaded as systemd loads them.
        let mut s = Some(slice.clone());
        while let Some(sl) = s.filter(|s| !s.is_empty()) {
            self.load_slice(&sl);
            s = unit::parent_slice(&sl);
        }
        self.watch_scope(name, &rel);
        let description = t.description.unwrap_or_else(|| name.to_string());
        log::info!("{name}: started in /{rel} ({description})");
        self.units.insert(
            name.to_string(),
            Unit {
                name: name.to_string(),
                kind,
                cgroup: rel,
                slice,
                description,
                frozen: false,
                quota,
            },
        );
        Ok(self.job(name))
    }

    fn apply(
        &self,
        name: &str,
        rel: &str,
        settings: &[Setting],
        quota: &mut CpuQuota,
    ) -> Result<(), Error> {
        let plan = cgroup::plan(&self.layout, rel, settings, quota);
        for s in &plan.skipped {
            log::warn!("{name}: {s}");
        }
        for w in &plan.writes {
            let path = w.dir.join(w.file);
            match cgroup::write_file(&path, &w.value) {
                Ok(()) => {}
                Err(e) if e.source.kind() == std::io::ErrorKind::NotFound && w.dir.is_dir() => {
                    // A controller the kernel or the parent does not offer:
                    // systemd skips it too.
                    log::warn!(
                        "{name}: {}: controller not available, skipped",
                        path.display()
                    );
                }
                Err(e) => return Err(Error::cg(name, &e)),
            }
        }
        Ok(())
    }

    /// `SetUnitProperties(name, runtime, properties)`.
    pub fn set_properties(
        &mut self,
        name: &str,
        properties: &[(String, Value<'_>)],
    ) -> Result<(), Error> {
        let mut settings = Vec::new();
        for (p, v) in properties {
            if let Some(s) = props::setting(p, v)? {
                settings.push(s);
            }
        }
        let u = self.unit(name)?.clone();
        let mut quota = u.quota;
        self.apply(name, &u.cgroup, &settings, &mut quota)?;
        if let Some(u) = self.units.get_mut(name) {
            u.quota = quota;
        }
        Ok(())
    }

    /// `AttachProcessesToUnit(name, subcgroup, pids)`.
    pub fn attach(&mut self, name: &str, sub: &str, pids: &[u32]) -> Result<(), Error> {
        let sub = unit::subcgroup(sub)?;
        if pids.is_empty() || pids.contains(&0) {
            return Err(Error::InvalidArgs(format!(
                "{name}: PIDs must name at least one process, and no 0"
            )));
        }
        let rel = self.unit(name)?.cgroup.clone();
        for pid in pids {
            cgroup::attach(&self.layout, &rel, &sub, *pid).map_err(|e| Error::cg(name, &e))?;
        }
        Ok(())
    }

    /// `KillUnit(name, whom, signal)`.
    pub fn kill(&mut self, name: &str, whom: &str, signal: i32) -> Result<AfterKill, Error> {
        let sig = u8::try_from(signal)
            .ok()
            .and_then(|n| rustix::process::Signal::from_named_raw(i32::from(n)))
            .ok_or_else(|| Error::InvalidArgs(format!("{name}: signal {signal} not supported")))?;
        match whom {
            "all" | "" | "cgroup" => {}
            "main" | "control" => {
                return Err(Error::InvalidArgs(format!(
                    "{name}: a scope has no {whom} process; use \"all\""
                )))
            }
            _ => return Err(Error::InvalidArgs(format!("invalid who {whom:?}"))),
        }
        let u = self.unit(name)?.clone();
        let n = cgroup::kill(&self.layout, &u.cgroup, sig).map_err(|e| Error::cg(name, &e))?;
        log::info!("{name}: signal {signal} sent to {n} processes");
        Ok(
            if sig == rustix::process::Signal::KILL && u.kind == Kind::Scope {
                AfterKill::Reap(u.cgroup)
            } else {
                AfterKill::Nothing
            },
        )
    }

    /// Starts `FreezeUnit`/`ThawUnit`; the caller waits for [`frozen`].
    pub fn freeze(&mut self, name: &str, on: bool) -> Result<String, Error> {
        let rel = self.unit(name)?.cgroup.clone();
        cgroup::freeze(&self.layout, &rel, on).map_err(|e| Error::cg(name, &e))?;
        if let Some(u) = self.units.get_mut(name) {
            u.frozen = on;
        }
        Ok(rel)
    }

    /// `StopUnit`: SIGTERM now (the caller follows with SIGKILL after a
    /// grace period); a slice is forgotten at once when empty.
    pub fn stop(&mut self, name: &str, mode: &str) -> Result<(Job, Option<String>), Error> {
        if !MODES.contains(&mode) {
            return Err(Error::InvalidArgs(format!("invalid job mode {mode:?}")));
        }
        let u = self.unit(name)?.clone();
        let job = self.job(name);
        match u.kind {
            Kind::Scope => {
                cgroup::kill(&self.layout, &u.cgroup, rustix::process::Signal::TERM)
                    .map_err(|e| Error::cg(name, &e))?;
                if u.frozen {
                    let _ = cgroup::freeze(&self.layout, &u.cgroup, false);
                }
                Ok((job, Some(u.cgroup)))
            }
            Kind::Slice => {
                if cgroup::populated(&self.layout, &u.cgroup) {
                    return Err(Error::Failed(format!(
                        "{name}: slice /{} still has processes",
                        u.cgroup
                    )));
                }
                if name != "-.slice" {
                    // The slice and every unit below it, however deep
                    // (the directory tree goes as a whole).
                    let below = format!("{}/", u.cgroup);
                    self.units
                        .retain(|n, v| n != name && !v.cgroup.starts_with(&below));
                    if let Err(e) = cgroup::remove(&self.layout, &u.cgroup) {
                        log::warn!("{name}: {}", minos_common::Report(&e));
                    }
                }
                Ok((job, None))
            }
        }
    }

    /// Whether the cgroup `rel` has processes.
    pub fn populated(&self, rel: &str) -> bool {
        cgroup::populated(&self.layout, rel)
    }

    /// Whether the freezers of `rel` reached `on`.
    pub fn frozen(&self, rel: &str, on: bool) -> bool {
        cgroup::frozen(&self.layout, rel, on)
    }

    /// Sends `signal` to the cgroup `rel` (StopUnit's escalation).
    pub fn kill_cgroup(&self, rel: &str, signal: rustix::process::Signal) {
        if let Err(e) = cgroup::kill(&self.layout, rel, signal) {
            log::warn!("{}", minos_common::Report(&e));
        }
    }

    /// The unit whose cgroup is `rel`, if loaded.
    pub fn unit_by_cgroup(&self, rel: &str) -> Option<String> {
        self.units
            .values()
            .find(|u| u.cgroup == rel)
            .map(|u| u.name.clone())
    }

    /// The cgroup root's first hierarchy, for messages.
    pub fn root(&self) -> PathBuf {
        self.layout
            .hierarchies
            .first()
            .map(|h| h.path.clone())
            .unwrap_or_default()
    }
}

/// The slice whose directory (`rel` below `root`, or a slice below it)
/// holds a directory named `scope`; at most 16 slices deep.
fn slice_of_scope(root: &std::path::Path, rel: &str, scope: &str, depth: u32) -> Option<String> {
    let dir = root.join(rel);
    if dir.join(scope).is_dir() {
        return Some(match rel.rsplit('/').next() {
            Some(last) if !last.is_empty() => last.to_string(),
            _ => "-.slice".to_string(),
        });
    }
    if depth >= 16 {
        return None;
    }
    let entries = std::fs::read_dir(&dir).ok()?;
    entries.filter_map(Result::ok).find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        if !name.ends_with(".slice") || !e.file_type().ok()?.is_dir() {
            return None;
        }
        let below = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        slice_of_scope(root, &below, scope, depth + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::zvariant::Array;

    fn v2() -> (tempfile::TempDir, Manager) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "").unwrap();
        let m = Manager::new(Layout::detect(t.path()).unwrap());
        (t, m)
    }

    fn scope_props(pid: u32) -> Vec<(String, Value<'static>)> {
        vec![
            ("PIDs".into(), Value::Array(Array::from(vec![pid]))),
            ("Slice".into(), Value::from("system.slice")),
            ("Delegate".into(), Value::Bool(true)),
        ]
    }

    #[test]
    fn unknown_units_and_bad_names() {
        let (_t, mut m) = v2();
        assert_eq!(
            m.unit("kata-x.scope").unwrap_err(),
            Error::NoSuchUnit("Unit kata-x.scope not loaded.".into())
        );
        assert!(matches!(m.unit("../x.scope"), Err(Error::InvalidArgs(_))));
        assert!(m.unit("-.slice").is_ok());
        let e = m.kill("kata-x.scope", "all", 9).unwrap_err();
        assert_eq!(e.dbus_name(), "org.freedesktop.systemd1.NoSuchUnit");
        let e = m.kill("kata-x.scope", "all", 200).unwrap_err();
        assert_eq!(e.dbus_name(), "org.freedesktop.DBus.Error.InvalidArgs");
    }

    #[test]
    fn start_refusals_leave_nothing_behind() {
        let (t, mut m) = v2();
        let e = m
            .start_transient("kata-x.scope", "replace", &[], 0)
            .unwrap_err();
        assert!(e.to_string().contains("PIDs"), "{e}");
        let e = m
            .start_transient("kata-x.scope", "bogus", &scope_props(1), 0)
            .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let mut p = scope_props(1);
        p[1].1 = Value::from("../x.slice");
        assert!(matches!(
            m.start_transient("kata-x.scope", "replace", &p, 0),
            Err(Error::InvalidArgs(_))
        ));
        // A plain directory is no cgroupfs: attaching fails and the new
        // directory is removed again.
        let e = m
            .start_transient("kata-x.scope", "replace", &scope_props(1), 0)
            .unwrap_err();
        assert!(matches!(e, Error::Failed(_)), "{e}");
        assert!(!t.path().join("system.slice/kata-x.scope").exists());
    }

    #[test]
    fn units_of_an_earlier_busd_are_adopted_while_they_have_processes() {
        let (t, mut m) = v2();
        let scope = t.path().join("system.slice/kata-old.scope");
        std::fs::create_dir_all(&scope).unwrap();
        std::fs::write(scope.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        std::fs::write(scope.join("cgroup.freeze"), "1\n").unwrap();
        let u = m.unit("kata-old.scope").unwrap().clone();
        assert_eq!(u.cgroup, "system.slice/kata-old.scope");
        assert_eq!(u.slice, "system.slice");
        assert!(u.frozen);
        assert_eq!(m.unit("system.slice").unwrap().cgroup, "system.slice");
        // A deeper one, under a nested slice.
        let deep = t.path().join("kata.slice/kata-pod.slice/kata-c.scope");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(m.unit("kata-c.scope").unwrap().slice, "kata-pod.slice");
        assert_eq!(m.unit("kata.slice").unwrap().slice, "-.slice");
        // An empty scope is not running: not adopted (and not removed).
        let empty = t.path().join("system.slice/kata-gone.scope");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("cgroup.events"), "populated 0\nfrozen 0\n").unwrap();
        assert!(matches!(
            m.unit("kata-gone.scope"),
            Err(Error::NoSuchUnit(_))
        ));
        assert!(empty.is_dir());
        assert!(matches!(
            m.unit("kata-none.scope"),
            Err(Error::NoSuchUnit(_))
        ));
    }

    #[test]
    fn slices_load_and_stop() {
        let (t, mut m) = v2();
        let job = m
            .start_transient(
                "kata-pod.slice",
                "replace",
                &[("Wants".into(), Value::from("system.slice"))],
                0,
            )
            .unwrap();
        assert_eq!(job.id, 1);
        assert!(t.path().join("kata.slice/kata-pod.slice").is_dir());
        assert_eq!(
            m.unit("kata-pod.slice").unwrap().cgroup,
            "kata.slice/kata-pod.slice"
        );
        assert_eq!(m.unit("kata.slice").unwrap().slice, "-.slice");
        assert!(matches!(
            m.start_transient("kata-pod.slice", "replace", &[], 0),
            Err(Error::UnitExists(_))
        ));
        let (job, rel) = m.stop("kata-pod.slice", "replace").unwrap();
        assert_eq!((job.id, rel), (2, None));
        assert!(m.unit("kata-pod.slice").is_err());
        assert!(!t.path().join("kata.slice/kata-pod.slice").exists());
    }

    #[test]
    fn unit_properties() {
        let u = Unit {
            name: "kata-x.scope".into(),
            kind: Kind::Scope,
            cgroup: "system.slice/kata-x.scope".into(),
            slice: "system.slice".into(),
            description: "d".into(),
            frozen: false,
            quota: CpuQuota::default(),
        };
        let p = u.properties();
        let cg = p.iter().find(|(_, n, _)| *n == "ControlGroup").unwrap();
        assert_eq!(cg.0, "org.freedesktop.systemd1.Scope");
        assert_eq!(cg.2, Value::from("/system.slice/kata-x.scope"));
    }
}
