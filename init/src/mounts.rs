//! Early mounts (Kata's list, each skipped when already mounted) and the
//! unmount pass at shutdown. /proc/self/mountinfo parsing is pure.

use std::ffi::CString;
use std::io;
use std::path::Path;

use rustix::fs::{FileType, Mode};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::Mode as RunMode;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let source = r.next().unwrap_or("none");
            Some(MountEntry {
                mount_point: unescape(mount_point),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b.get(i), oct) {
            (Some(b'\\'), Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (Some(&c), _) => {
                out.push(c);
                i += 1;
            }
            (None, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An early-boot step that failed; init logs it and carries on.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {fstype} on {target}")]
    Mount {
        target: String,
        fstype: String,
        #[source]
        source: io::Error,
    },
    #[error("create {path}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("read /proc/self/mountinfo")]
    ReadMountinfo(#[source] io::Error),
    #[error(
        "unshare a cgroup namespace to mount cgroups in (/sys/fs/cgroup left unmounted: \
         mounted in the host's cgroup namespace, its options would apply to the host's whole \
         hierarchy)"
    )]
    CgroupNamespace(#[source] io::Error),
}

/// What init knows of the mount points: asked of the kernel one path at a
/// time (statx's mount-root attribute, Linux 5.8+: one call per mount point
/// that also tells whether it exists), or, on a kernel that cannot tell,
/// read from /proc/self/mountinfo once and kept up to date as init mounts.
///
/// Below a file system init mounted itself where nothing was mounted before
/// (a fresh sysfs, devtmpfs or tmpfs), nothing can be mounted yet but by
/// init: there it mounts at once, without asking (one call instead of two,
/// the agent's start time).
#[derive(Debug, Default)]
pub struct MountTable {
    /// `None`: ask statx.
    points: Option<Vec<String>>,
    /// The mount points init mounted on, in order.
    own: Vec<String>,
}

/// What a mount point normally is, which tells the cheapest way to learn
/// whether something is mounted there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// A directory that normally exists (on the root file system, or one
    /// the kernel made): probed, created when missing.
    Existing,
    /// A directory that normally does not exist yet (/dev/pts and /dev/shm
    /// on the kernel's devtmpfs): created first — when that works nothing
    /// can be mounted there — and probed only when it exists already.
    New,
    /// A directory only the kernel provides (/sys/kernel/security): when it
    /// is missing the file system is not available, and nothing is mounted.
    KernelProvided,
}

/// A mount point as statx sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Something is mounted there.
    Mounted,
    /// A directory, nothing mounted on it.
    Dir,
    /// Nothing at that path.
    Missing,
    /// Not a directory, or statx failed: creating it reports why.
    Other,
}

/// `target` as statx sees it; `None` when the kernel cannot tell mount
/// roots (before 5.8).
pub fn probe(target: &str) -> Option<Target> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags, CWD};
    match rustix::fs::statx(
        CWD,
        target,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::TYPE,
    ) {
        Ok(st) => {
            if !st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT) {
                return None;
            }
            Some(if st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT) {
                Target::Mounted
            } else if FileType::from_raw_mode(st.stx_mode.into()) == FileType::Directory {
                Target::Dir
            } else {
                Target::Other
            })
        }
        Err(rustix::io::Errno::NOENT) => Some(Target::Missing),
        Err(rustix::io::Errno::NOSYS) => None,
        Err(_) => Some(Target::Other),
    }
}

impl MountTable {
    pub fn read() -> Result<Self, MountError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(MountError::ReadMountinfo)?;
        Ok(Self {
            points: Some(
                parse_mountinfo(&text)
                    .into_iter()
                    .map(|m| m.mount_point)
                    .collect(),
            ),
            own: Vec::new(),
        })
    }

    /// Whether something is mounted on `target`.
    /// Whether init mounted `target` itself (a fresh file system there).
    pub fn mounted_by_init(&self, target: &str) -> bool {
        self.own.iter().any(|t| t == target)
    }

    pub fn contains(&self, target: &str) -> bool {
        self.target(target) == Target::Mounted
    }

    fn target(&self, target: &str) -> Target {
        match &self.points {
            Some(points) if points.iter().any(|p| p == target) => Target::Mounted,
            Some(_) if Path::new(target).is_dir() => Target::Dir,
            Some(_) => Target::Other,
            None => probe(target).unwrap_or(Target::Other),
        }
    }

    /// Whether `target` lies below a file system init mounted itself (and
    /// is none of init's own mount points): nothing is mounted there.
    fn below_own(&self, target: &str) -> bool {
        let below = |own: &String| {
            target
                .strip_prefix(own.as_str())
                .is_some_and(|rest| rest.starts_with('/') || own == "/")
        };
        !self.own.iter().any(|o| o == target) && self.own.iter().any(below)
    }

    /// Mounts `fstype` on `target` unless something is mounted there already.
    /// Creates `target` when missing. Returns whether it mounted.
    pub fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> Result<bool, MountError> {
        self.mount_at(Point::Existing, source, target, fstype, flags, data)
    }

    fn mount_at(
        &mut self,
        point: Point,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> Result<bool, MountError> {
        let create = |target: &str| {
            std::fs::create_dir_all(target).map_err(|source| MountError::Create {
                path: target.into(),
                source,
            })
        };
        let below_own = self.below_own(target);
        // Whether nothing is known to be mounted on `target`, and the
        // directory to exist.
        let mut unmounted = false;
        if point == Point::New {
            match rustix::fs::mkdir(target, Mode::from_raw_mode(0o755)) {
                Ok(()) => unmounted = true,
                Err(rustix::io::Errno::EXIST) => unmounted = below_own,
                Err(_) => {
                    create(target)?;
                    unmounted = true;
                }
            }
        }
        if !unmounted && !below_own {
            match (self.target(target), point) {
                (Target::Mounted, _) => return Ok(false),
                (Target::Dir, _) => {}
                (Target::Missing | Target::Other, Point::KernelProvided) => return Ok(false),
                (Target::Missing | Target::Other, _) => create(target)?,
            }
        }
        let data = CString::new(data).unwrap_or_default();
        let data = (!data.as_bytes().is_empty()).then_some(data.as_c_str());
        let mut result = rustix::mount::mount(source, target, fstype, flags, data);
        if result == Err(rustix::io::Errno::NOENT) && below_own {
            // Not probed: the directory was missing.
            if point == Point::KernelProvided {
                return Ok(false);
            }
            create(target)?;
            result = rustix::mount::mount(source, target, fstype, flags, data);
        }
        result.map_err(|e| MountError::Mount {
            target: target.into(),
            fstype: fstype.into(),
            source: e.into(),
        })?;
        if let Some(points) = &mut self.points {
            points.push(target.to_string());
        }
        self.own.push(target.to_string());
        Ok(true)
    }
}

/// The options of init's own tmpfs on /run and /tmp (systemd's).
pub const RUN_TMPFS: &str = "mode=0755,size=20%,nr_inodes=800k";
pub const TMP_TMPFS: &str = "mode=1777,size=50%,nr_inodes=1m";

pub const NOSUID_NODEV: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);
const NOSUID_NODEV_NOEXEC: MountFlags = NOSUID_NODEV.union(MountFlags::NOEXEC);

/// Mounts /proc first. Returns the table the other mounts use: statx
/// where the kernel tells mount roots, else /proc/self/mountinfo.
pub fn mount_proc() -> Result<MountTable, MountError> {
    let mut table = MountTable::default();
    if probe("/proc").is_some() {
        table.mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")?;
        return Ok(table);
    }
    if !Path::new("/proc/self").exists() {
        MountTable {
            points: Some(Vec::new()),
            own: Vec::new(),
        }
        .mount("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, "")?;
    }
    MountTable::read()
}

/// /dev: devtmpfs in a VM when the kernel did not mount it; in a container,
/// a fresh tmpfs with the standard nodes, unless the container manager
/// already provided a populated /dev.
pub fn mount_dev(table: &mut MountTable, mode: RunMode, errors: &mut Vec<MountError>) {
    match mode {
        RunMode::Vm => {
            if let Err(e) = table.mount(
                "devtmpfs",
                "/dev",
                "devtmpfs",
                MountFlags::NOSUID,
                "mode=0755",
            ) {
                errors.push(e);
            }
        }
        RunMode::Container => {
            let populated = rustix::fs::stat("/dev/null")
                .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice)
                .unwrap_or(false);
            if populated {
                return;
            }
            match table.mount(
                "tmpfs",
                "/dev",
                "tmpfs",
                MountFlags::NOSUID,
                "mode=0755,size=4m",
            ) {
                Ok(_) => make_dev_nodes(errors),
                Err(e) => errors.push(e),
            }
        }
    }
}

/// The nodes container managers create (OCI runtime spec, "Default Devices").
fn make_dev_nodes(errors: &mut Vec<MountError>) {
    let nodes = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        let path = format!("/dev/{name}");
        let r = rustix::fs::mknodat(
            rustix::fs::CWD,
            path.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .and_then(|()| rustix::fs::chmod(path.as_str(), Mode::from_raw_mode(0o666)));
        if let Err(e) = r {
            errors.push(MountError::Create {
                path,
                source: e.into(),
            });
        }
    }
}

/// Everything after /proc and /dev, in Kata's order.
pub fn mount_rest(table: &mut MountTable, mode: RunMode, cgroup_v1: bool) -> Vec<MountError> {
    let mut results = vec![
        table.mount("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
        table.mount_at(
            Point::New,
            "devpts",
            "/dev/pts",
            "devpts",
            MountFlags::NOSUID | MountFlags::NOEXEC,
            "gid=5,mode=620,ptmxmode=666",
        ),
        table.mount_at(
            Point::New,
            "shm",
            "/dev/shm",
            "tmpfs",
            NOSUID_NODEV,
            "mode=1777",
        ),
        // systemd's sizes (mount-setup.c, tmp.mount): /run at most 20 % of
        // memory, /tmp 50 % (/dev/shm has the kernel's 50 %, as under
        // systemd); tmpfs pages are not reclaimable, so these bound what a
        // writer there can take, they do not add up to less than RAM.
        table.mount("tmpfs", "/run", "tmpfs", NOSUID_NODEV, RUN_TMPFS),
        table.mount("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, TMP_TMPFS),
    ];
    let mut errors = Vec::new();
    // In a container without /sys/fs/cgroup, init mounts cgroups in a cgroup
    // namespace of its own (its units inherit it), as runc does on a cgroup
    // v2 host: in the host's cgroup namespace the kernel applies a cgroup2
    // mount's options (nsdelegate, memory_recursiveprot …) to the host's
    // whole hierarchy (apply_cgroup_root_flags), and waits for an RCU grace
    // period to do it (6-16 ms measured on a host). A VM's kernel is the
    // guest's own: its root namespace is the right one there.
    if mode == RunMode::Container && !table.contains("/sys/fs/cgroup") {
        if let Err(e) = crate::sys::unshare_cgroup_namespace() {
            errors.push(MountError::CgroupNamespace(e));
            errors.extend(results.into_iter().filter_map(Result::err));
            return errors;
        }
    }
    if cgroup_v1 {
        errors.extend(mount_cgroup_v1(table));
    } else {
        results.push(table.mount(
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            NOSUID_NODEV_NOEXEC,
            "nsdelegate",
        ));
    }
    if mode == RunMode::Vm {
        results.push(table.mount_at(
            Point::KernelProvided,
            "securityfs",
            "/sys/kernel/security",
            "securityfs",
            NOSUID_NODEV_NOEXEC,
            "",
        ));
    }
    errors.extend(results.into_iter().filter_map(Result::err));
    errors
}

/// systemd's hybrid layout: a tmpfs with one v1 hierarchy per controller
/// (cpu,cpuacct and net_cls,net_prio combined, with links), and cgroup2 at
/// `unified`.
fn mount_cgroup_v1(table: &mut MountTable) -> Vec<MountError> {
    let mut errors = Vec::new();
    if let Err(e) = table.mount(
        "tmpfs",
        "/sys/fs/cgroup",
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        "mode=755",
    ) {
        return vec![e];
    }
    let controllers = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    let enabled: Vec<&str> = controllers
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"1"))
                .then_some(f.first().copied())
                .flatten()
        })
        .collect();
    let mut done: Vec<&str> = Vec::new();
    for &c in &enabled {
        if done.contains(&c) {
            continue;
        }
        let group: Vec<&str> = match c {
            "cpu" | "cpuacct" => vec!["cpu", "cpuacct"],
            "net_cls" | "net_prio" => vec!["net_cls", "net_prio"],
            _ => vec![c],
        };
        let group: Vec<&str> = group.into_iter().filter(|g| enabled.contains(g)).collect();
        done.extend(&group);
        let name = group.join(",");
        let target = format!("/sys/fs/cgroup/{name}");
        if let Err(e) = table.mount("cgroup", &target, "cgroup", NOSUID_NODEV_NOEXEC, &name) {
            errors.push(e);
            continue;
        }
        if group.len() > 1 {
            for g in group {
                let _ = std::os::unix::fs::symlink(&name, format!("/sys/fs/cgroup/{g}"));
            }
        }
    }
    if let Err(e) = table.mount(
        "cgroup2",
        "/sys/fs/cgroup/unified",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "nsdelegate",
    ) {
        errors.push(e);
    }
    errors
}

/// The links systemd makes in /dev (/dev/fd, stdin, stdout, stderr, ptmx).
/// Not needed to start the agent: made by the supervisor's late set-up, once
/// the first unit runs (VM) or before any unit (container).
pub fn dev_links() -> Vec<MountError> {
    let links = [
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("pts/ptmx", "/dev/ptmx"),
    ];
    let mut errors = Vec::new();
    for (target, link) in links {
        // One system call each: whatever is there already is left alone.
        match rustix::fs::symlink(target, link) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => errors.push(MountError::Create {
                path: link.into(),
                source: e.into(),
            }),
        }
    }
    errors
}

/// Filesystems the kernel provides, left alone at shutdown.
/// The mount points of the file systems that hold data: neither API file
/// systems nor tmpfs/ramfs, in mount order, each once.
pub fn data_mounts(mountinfo: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in parse_mountinfo(mountinfo) {
        let virtual_fs = matches!(m.fstype.as_str(), "tmpfs" | "ramfs" | "rootfs");
        if !is_api_fs(&m.fstype) && !virtual_fs && !out.contains(&m.mount_point) {
            out.push(m.mount_point);
        }
    }
    out
}

fn is_api_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "cgroup"
            | "cgroup2"
            | "securityfs"
            | "debugfs"
            | "tracefs"
            | "mqueue"
            | "bpf"
            | "configfs"
            | "pstore"
            | "hugetlbfs"
            | "fusectl"
    )
}

/// At shutdown: every filesystem unmounted in reverse order, and where that
/// fails (busy, or the root) remounted read-only. Returns what could not be
/// done, for the log.
pub fn unmount_all(mountinfo: &str, skip: &[String]) -> Vec<String> {
    let mut failed = Vec::new();
    for m in parse_mountinfo(mountinfo).iter().rev() {
        if is_api_fs(&m.fstype) {
            continue;
        }
        if skip.contains(&m.mount_point) {
            failed.push(format!(
                "{} ({}): left mounted (its sync did not finish)",
                m.mount_point, m.fstype
            ));
            continue;
        }
        let target = m.mount_point.as_str();
        let virtual_fs = matches!(m.fstype.as_str(), "tmpfs" | "ramfs" | "rootfs");
        if target != "/" && rustix::mount::unmount(target, UnmountFlags::empty()).is_ok() {
            if virtual_fs {
                log::debug!("unmounted {target}");
            } else {
                log::info!("unmounted {target} ({})", m.fstype);
            }
            continue;
        }
        // tmpfs holds nothing that survives; only real filesystems matter.
        if virtual_fs {
            continue;
        }
        match rustix::mount::mount_remount(target, MountFlags::RDONLY, "") {
            Ok(()) => log::info!("remounted {target} read-only"),
            Err(rustix::io::Errno::ACCESS | rustix::io::Errno::ROFS) => {}
            Err(e) => failed.push(format!("{target} ({}): {}", m.fstype, io::Error::from(e))),
        }
    }
    failed
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 253:1 / / ro,relatime shared:1 - ext4 /dev/pmem0p1 ro,dax
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:3 - devtmpfs devtmpfs rw,size=1k
30 22 0:40 / /mnt/with\\040space rw - tmpfs tmp\\134x rw
garbage line
";

    #[test]
    fn probe_tells_mount_points_directories_and_missing_paths() {
        // This machine's /proc is a mount point; a fresh directory is not.
        assert_eq!(probe("/proc"), Some(Target::Mounted));
        let dir = std::env::temp_dir().join(format!("minos-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap();
        assert_eq!(probe(d), Some(Target::Dir));
        assert_eq!(probe(&format!("{d}/missing")), Some(Target::Missing));
        std::fs::write(dir.join("file"), "x").unwrap();
        assert_eq!(probe(&format!("{d}/file")), Some(Target::Other));
        // A table asking statx: mounting where something is mounted is a
        // no-op; a missing mount point is created (then refused: no
        // file system "minos-none").
        let mut table = MountTable::default();
        assert!(table.contains("/proc"));
        assert!(!table
            .mount("x", "/proc", "proc", MountFlags::empty(), "")
            .unwrap());
        let missing = format!("{d}/a/b");
        let err = table
            .mount("x", &missing, "minos-none", MountFlags::empty(), "")
            .unwrap_err();
        assert!(matches!(err, MountError::Mount { .. }), "{err}");
        assert!(std::path::Path::new(&missing).is_dir());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Runs `f` on a thread of its own in a private mount namespace (the
    /// host's mounts are never touched); `None` when not root.
    #[allow(unsafe_code)]
    fn in_private_mount_namespace<T: Send + 'static>(f: fn(&str) -> T) -> Option<T> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("minos-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.to_str().unwrap().to_owned();
        let handle = std::thread::spawn(move || {
            // SAFETY: only the mount namespace (and with it this thread's
            // root and working directory) is unshared, never the file table.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }.unwrap();
            rustix::mount::mount_change(
                "/",
                rustix::mount::MountPropagationFlags::PRIVATE
                    | rustix::mount::MountPropagationFlags::REC,
            )
            .unwrap();
            f(&path)
        });
        let out = handle.join().unwrap();
        // The namespace, and every mount in it, went with the thread.
        std::fs::remove_dir_all(&dir).unwrap();
        Some(out)
    }

    /// How many times something is mounted on `target` (this thread's
    /// namespace).
    fn mounted_times(target: &str) -> usize {
        let text = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        parse_mountinfo(&text)
            .iter()
            .filter(|m| m.mount_point == target)
            .count()
    }

    #[test]
    fn below_its_own_mounts_init_mounts_without_probing_and_never_stacks() {
        let times = in_private_mount_namespace(|d| {
            let own = format!("{d}/own");
            let other = format!("{d}/other");
            std::fs::create_dir_all(&own).unwrap();
            std::fs::create_dir_all(&other).unwrap();
            // Mounted by someone else before init.
            rustix::mount::mount("tmpfs", other.as_str(), "tmpfs", MountFlags::empty(), None)
                .unwrap();
            let mut table = MountTable::default();
            let tmpfs = |table: &mut MountTable, point, target: &str| {
                table.mount_at(point, "tmpfs", target, "tmpfs", MountFlags::empty(), "")
            };
            assert!(tmpfs(&mut table, Point::Existing, &own).unwrap());
            // Again on init's own mount point: probed, left alone.
            assert!(!tmpfs(&mut table, Point::Existing, &own).unwrap());
            // Below it: the missing directory is made after the mount says so.
            let deep = format!("{own}/a/b");
            assert!(tmpfs(&mut table, Point::Existing, &deep).unwrap());
            assert!(!tmpfs(&mut table, Point::New, &deep).unwrap());
            let new = format!("{own}/pts");
            assert!(tmpfs(&mut table, Point::New, &new).unwrap());
            // Not provided by the kernel: nothing made, nothing mounted.
            let absent = format!("{own}/security");
            assert!(!tmpfs(&mut table, Point::KernelProvided, &absent).unwrap());
            assert!(!Path::new(&absent).exists());
            let absent_elsewhere = format!("{d}/security");
            assert!(!tmpfs(&mut table, Point::KernelProvided, &absent_elsewhere).unwrap());
            assert!(!Path::new(&absent_elsewhere).exists());
            // Someone else's mount is probed whatever the kind of point.
            for point in [Point::Existing, Point::New, Point::KernelProvided] {
                assert!(!tmpfs(&mut table, point, &other).unwrap(), "{point:?}");
            }
            // A new directory beside someone else's mount: created, mounted.
            let beside = format!("{d}/shm");
            assert!(tmpfs(&mut table, Point::New, &beside).unwrap());
            [&own, &deep, &new, &other, &beside]
                .iter()
                .map(|t| mounted_times(t))
                .collect::<Vec<_>>()
        });
        if let Some(times) = times {
            assert_eq!(times, [1; 5], "own, deep, new, other, beside");
        }
    }

    #[test]
    fn mountinfo_fields_and_escapes() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m[0],
            MountEntry {
                mount_point: "/".into(),
                fstype: "ext4".into(),
                source: "/dev/pmem0p1".into()
            }
        );
        assert_eq!(m[2].fstype, "devtmpfs");
        assert_eq!(m[3].mount_point, "/mnt/with space");
        assert_eq!(m[3].source, "tmp\\x");
    }

    #[test]
    fn unescape_tolerates_truncated_escapes() {
        assert_eq!(unescape("a\\04"), "a\\04");
        assert_eq!(unescape("\\"), "\\");
        assert_eq!(unescape("\\777"), "?");
    }

    #[test]
    fn data_mounts_are_the_file_systems_that_hold_data_each_once() {
        let info = format!(
            "{INFO}40 22 254:16 / /data rw - ext4 /dev/vdb rw\n41 22 254:16 / /data rw - ext4 /dev/vdb rw\n\
             42 22 0:50 / /shared rw - virtiofs kataShared rw\n"
        );
        assert_eq!(data_mounts(&info), ["/", "/data", "/shared"]);
    }

    #[test]
    fn api_filesystems_are_skipped() {
        assert!(
            is_api_fs("proc") && is_api_fs("cgroup2") && !is_api_fs("ext4") && !is_api_fs("tmpfs")
        );
    }
}
