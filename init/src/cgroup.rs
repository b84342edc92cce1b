//! Per-unit cgroups for `TasksMax=`, in systemd's layout
//! (`system.slice/UNIT`), on whichever hierarchy holds the pids controller:
//! cgroup2 at the cgroup root (`cgroup.controllers` lists `pids`), or the v1
//! `pids` hierarchy that init mounts with `systemd.unified_cgroup_hierarchy=0`.
//!
//! Only units with `TasksMax=` get a cgroup: a mkdir and two writes in
//! cgroupfs per start is time the agent's path does not need. The unit's
//! processes join the cgroup themselves, between fork and exec, by writing
//! `0` to an already open `cgroup.procs` (a plain write(2), async-signal-safe),
//! so they are limited before their first instruction. When the unit stops,
//! what is left in its cgroup is killed (systemd's `KillMode=control-group`).
//!
//! The functions take the cgroup root as a parameter, so tests can use a
//! directory of their own.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::unit::TasksMax;

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The slice every unit cgroup is created in.
pub const SLICE: &str = "system.slice";
/// Where the root cgroup's processes move when cgroup2 refuses to enable a
/// controller in a non-root cgroup that has processes (a container).
pub const INIT_SCOPE: &str = "init.scope";

/// Why a unit's cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no hierarchy with the pids controller under {}: cgroup2 does not list pids in \
         cgroup.controllers and there is no v1 pids hierarchy",
        .root.display()
    )]
    NoPidsController { root: PathBuf },
    #[error("create {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("write {value:?} to {}", .path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("open {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A unit's cgroup, ready for its processes to join.
#[derive(Debug)]
pub struct UnitCgroup {
    pub path: PathBuf,
    /// `cgroup.procs`, open for writing (close-on-exec).
    pub procs: OwnedFd,
    unified: bool,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

fn create(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(CgroupError::Create {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn lists_pids(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|t| t.split_whitespace().any(|c| c == "pids"))
}

/// Enables the pids controller for the children of `dir` (cgroup2).
fn enable_pids(dir: &Path) -> Result<(), CgroupError> {
    let control = dir.join("cgroup.subtree_control");
    if lists_pids(&control) {
        return Ok(());
    }
    write(&control, "+pids")
}

/// Moves every process of the cgroup `dir` into `dir/init.scope`, so that
/// cgroup2's rule "no processes in a cgroup that enables controllers for
/// its children" holds for a non-root cgroup (init in a container).
fn move_into_init_scope(dir: &Path) -> Result<(), CgroupError> {
    let scope = dir.join(INIT_SCOPE);
    create(&scope)?;
    let procs = dir.join("cgroup.procs");
    let text = std::fs::read_to_string(&procs).map_err(|source| CgroupError::Open {
        path: procs.clone(),
        source,
    })?;
    let target = scope.join("cgroup.procs");
    for pid in text.split_whitespace() {
        match std::fs::write(&target, pid) {
            // Gone in between, or a kernel thread that cannot move.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) => {}
            Err(source) => {
                return Err(CgroupError::Write {
                    path: target,
                    value: pid.to_owned(),
                    source,
                })
            }
            Ok(()) => {}
        }
    }
    Ok(())
}

/// init's own cgroup in `/proc/self/cgroup` (`self_cgroup`): the cgroup2
/// line (`0::PATH`) or, for v1, the line whose controllers include `pids`;
/// without a trailing `/init.scope`, where init may have moved itself. In a
/// VM and in a container with its own cgroup namespace this is `/`; in a
/// container that shares the host's namespace, the container's cgroup, so
/// that units are created under it and never in the host's `system.slice`.
pub fn own_cgroup(self_cgroup: &str, unified: bool) -> String {
    let path = self_cgroup.lines().find_map(|line| {
        let mut f = line.splitn(3, ':');
        let (id, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let wanted = if unified {
            id == "0" && controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == "pids")
        };
        wanted.then(|| path.trim().to_owned())
    });
    let path = path.unwrap_or_default();
    let path = path
        .strip_suffix(&format!("/{INIT_SCOPE}"))
        .unwrap_or(&path);
    let path = path.trim_matches('/');
    format!("/{path}")
}

/// `base` joined with a cgroup path (`/` or `/a/b`).
fn under(base: &Path, cgroup: &str) -> PathBuf {
    match cgroup.trim_matches('/') {
        "" => base.to_owned(),
        rel => base.join(rel),
    }
}

/// Creates (or reuses) the cgroup of `unit` with `pids.max` from
/// `tasks_max` (`pid_max` is `kernel.pid_max`, for percentages) under init's
/// own cgroup (from `self_cgroup`, the text of /proc/self/cgroup) in the
/// hierarchies mounted at `root`, and opens its `cgroup.procs`.
pub fn prepare(
    root: &Path,
    self_cgroup: &str,
    unit: &str,
    tasks_max: TasksMax,
    pid_max: u64,
) -> Result<UnitCgroup, CgroupError> {
    let (base, unified) = if lists_pids(&root.join("cgroup.controllers")) {
        let top = under(root, &own_cgroup(self_cgroup, true));
        if let Err(e) = enable_pids(&top) {
            // EBUSY: a non-root cgroup (the container's) that has processes.
            let busy = matches!(&e, CgroupError::Write { source, .. }
                if source.raw_os_error() == Some(libc::EBUSY));
            if !busy {
                return Err(e);
            }
            move_into_init_scope(&top)?;
            enable_pids(&top)?;
        }
        let slice = top.join(SLICE);
        create(&slice)?;
        enable_pids(&slice)?;
        (slice, true)
    } else if root.join("pids/cgroup.procs").is_file() {
        let slice = under(&root.join("pids"), &own_cgroup(self_cgroup, false)).join(SLICE);
        create(&slice)?;
        (slice, false)
    } else {
        return Err(CgroupError::NoPidsController {
            root: root.to_owned(),
        });
    };
    let path = base.join(unit);
    create(&path)?;
    write(&path.join("pids.max"), &tasks_max.pids_max(pid_max))?;
    let procs_path = path.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|source| CgroupError::Open {
            path: procs_path,
            source,
        })?;
    Ok(UnitCgroup {
        path,
        procs: procs.into(),
        unified,
    })
}

/// `kernel.pid_max` (32768 when it cannot be read).
pub fn pid_max() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(32_768)
}

impl UnitCgroup {
    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            // 0: a process outside init's PID namespace (kill(0) would
            // signal init's own process group).
            .filter(|&p: &i32| p > 0)
            .collect()
    }

    /// SIGKILLs every process left in the cgroup (the unit has stopped) and
    /// returns how many there were. cgroup2's `cgroup.kill` takes them all at
    /// once, forks in flight included; on v1 the list is walked until it is
    /// empty (bounded: a process that forks faster than this is killed
    /// with the rest at shutdown).
    pub fn kill_leftovers(&self) -> usize {
        let first = self.pids();
        if first.is_empty() {
            return 0;
        }
        if self.unified && std::fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return first.len();
        }
        let mut pids = first.clone();
        for _ in 0..16 {
            if pids.is_empty() {
                break;
            }
            for pid in &pids {
                let _ = crate::sys::kill_pid(*pid, libc::SIGKILL);
            }
            pids = self.pids();
        }
        first.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let d = std::env::temp_dir().join(format!("minos-cgroup-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // A plain directory stands in for cgroupfs here only to check the layout
    // and the files written; the kernel's side (limits enforced, processes
    // joining) is tested with real cgroups in tests/tests/faults.rs and in
    // the VM tests.

    #[test]
    fn unified_layout_enables_pids_and_writes_the_limit() {
        let d = Dir::new("v2");
        std::fs::write(d.0.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::write(d.0.join("cgroup.subtree_control"), "").unwrap();
        std::fs::create_dir(d.0.join(SLICE)).unwrap();
        std::fs::write(d.0.join(SLICE).join("cgroup.subtree_control"), "pids\n").unwrap();
        std::fs::create_dir(d.0.join(SLICE).join("a.service")).unwrap();
        std::fs::write(d.0.join(SLICE).join("a.service/cgroup.procs"), "").unwrap();
        let cg = prepare(&d.0, "0::/\n", "a.service", TasksMax::Count(64), 32768).unwrap();
        assert_eq!(cg.path, d.0.join("system.slice/a.service"));
        assert!(cg.unified);
        assert_eq!(
            std::fs::read_to_string(d.0.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert_eq!(
            std::fs::read_to_string(cg.path.join("pids.max")).unwrap(),
            "64"
        );
    }

    #[test]
    fn v1_layout_uses_the_pids_hierarchy() {
        let d = Dir::new("v1");
        std::fs::create_dir(d.0.join("pids")).unwrap();
        std::fs::write(d.0.join("pids/cgroup.procs"), "1\n").unwrap();
        std::fs::create_dir_all(d.0.join("pids/system.slice/b.service")).unwrap();
        std::fs::write(d.0.join("pids/system.slice/b.service/cgroup.procs"), "").unwrap();
        let cg = prepare(&d.0, "8:pids:/\n", "b.service", TasksMax::Infinity, 32768).unwrap();
        assert!(!cg.unified);
        assert_eq!(
            std::fs::read_to_string(cg.path.join("pids.max")).unwrap(),
            "max"
        );
        assert!(cg.pids().is_empty());
        assert_eq!(cg.kill_leftovers(), 0);
    }

    #[test]
    fn units_go_under_init_s_own_cgroup() {
        let v2 = "0::/docker/abc/init.scope\n";
        assert_eq!(own_cgroup(v2, true), "/docker/abc");
        assert_eq!(own_cgroup("0::/\n", true), "/");
        assert_eq!(own_cgroup("0::/init.scope\n", true), "/");
        let v1 = "9:name=systemd:/\n8:pids:/lxc/c1\n0::/\n";
        assert_eq!(own_cgroup(v1, false), "/lxc/c1");
        assert_eq!(own_cgroup("garbage", true), "/");
        let d = Dir::new("nested");
        std::fs::create_dir_all(d.0.join("pids/lxc/c1/system.slice/u.service")).unwrap();
        std::fs::write(d.0.join("pids/cgroup.procs"), "").unwrap();
        std::fs::write(
            d.0.join("pids/lxc/c1/system.slice/u.service/cgroup.procs"),
            "",
        )
        .unwrap();
        let cg = prepare(&d.0, v1, "u.service", TasksMax::Count(5), 32768).unwrap();
        assert_eq!(cg.path, d.0.join("pids/lxc/c1/system.slice/u.service"));
    }

    #[test]
    fn no_pids_controller_is_an_error_naming_the_root() {
        let d = Dir::new("none");
        std::fs::write(d.0.join("cgroup.controllers"), "cpu memory\n").unwrap();
        let e = prepare(&d.0, "0::/\n", "c.service", TasksMax::Count(1), 32768).unwrap_err();
        assert!(matches!(e, CgroupError::NoPidsController { .. }));
        assert!(e.to_string().contains(&d.0.display().to_string()), "{e}");
    }
}
