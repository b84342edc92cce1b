//! The agent's view of what init gave it, checked against what kata-agent
//! relies on (docs/init.md, "Boot, in order" — what init takes over from systemd — and
//! kata-agent.service): the early mounts, the cgroup file system, the
//! settings of the unit (`LimitNOFILE=1073741824`, `OOMScoreAdjust=-997`,
//! `StandardOutput=tty`, stdin `/dev/null`), PATH, the hostname, `lo` up,
//! a writable `/run`, `/tmp` with mode 1777, and which PID the agent is.
//!
//! [`SelfCheck::gather`] reads everything once; every file it reads is
//! under a directory of [`Sources`], so tests use fixture trees. The pid,
//! RLIMIT_NOFILE and the hostname come from system calls. What cannot be
//! read is kept as an error naming the path, and counts as a gap.
//! [`SelfCheck::checks`] turns the values into one [`Check`] per key, with
//! the rule each must satisfy; the marker line and `--strict` both use it.
//!
//! Container mode: when the `container` variable is set (systemd's
//! convention for container managers, which init passes on to its units),
//! `/dev` may be a tmpfs (init fills it with the OCI default devices, a
//! container has no devtmpfs of its own) and stdout may be a pipe or a
//! pseudo-terminal (a container's console is what its manager gave init).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// `OOMScoreAdjust=` in kata-agent.service.
pub const KATA_OOM_SCORE_ADJ: i32 = -997;
/// `LimitNOFILE=` in kata-agent.service (soft and hard).
pub const KATA_NOFILE: u64 = 1_073_741_824;
/// `IFF_UP` in `/sys/class/net/*/flags` (linux/if.h).
const IFF_UP: u64 = 0x1;
/// Mode of `/tmp` (Kata's tmp.mount, init's tmpfs): sticky, world-writable.
const TMP_MODE: u32 = 0o1777;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds `{content}`, not an integer")]
    Parse { path: PathBuf, content: String },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the check looks, as parameters so tests can substitute fixtures.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Normally `/proc/self`: `oom_score_adj`, `fd/0`, `fd/1`, `mountinfo`.
    pub proc_self: PathBuf,
    /// Normally `/sys`: `class/net/lo/flags`.
    pub sys: PathBuf,
    /// Normally `/run`: a file is created and removed there.
    pub run: PathBuf,
    /// Normally `/tmp`: its mode.
    pub tmp: PathBuf,
    /// The value of `PATH`.
    pub path: Option<OsString>,
    /// The value of `container` (set: container mode).
    pub container: Option<OsString>,
}

impl Sources {
    pub fn from_process() -> Self {
        Self {
            proc_self: PathBuf::from("/proc/self"),
            sys: PathBuf::from("/sys"),
            run: PathBuf::from("/run"),
            tmp: PathBuf::from("/tmp"),
            path: std::env::var_os("PATH"),
            container: std::env::var_os("container"),
        }
    }
}

/// One resource limit; `None` is `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// One line of `/proc/self/mountinfo`: where, and which file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: String,
    pub fstype: String,
}

/// What the shim found. Fields that could not be read carry the error, so
/// one failure does not hide the other values.
#[derive(Debug)]
pub struct SelfCheck {
    pub pid: i32,
    pub nofile: Limit,
    pub oom_score_adj: Result<i32, ProbeError>,
    pub stdin: Result<PathBuf, ProbeError>,
    pub stdout: Result<PathBuf, ProbeError>,
    /// The mount table, in mountinfo's order (a mount over another comes
    /// after it).
    pub mounts: Result<Vec<MountEntry>, ProbeError>,
    pub path: Option<OsString>,
    /// The nodename from uname(2).
    pub hostname: String,
    /// Whether `lo` has IFF_UP.
    pub lo_up: Result<bool, ProbeError>,
    /// A file could be created and removed in `/run`.
    pub run_writable: Result<(), ProbeError>,
    /// Permission bits of `/tmp` (with setuid, setgid, sticky).
    pub tmp_mode: Result<u32, ProbeError>,
    pub container: Option<OsString>,
}

/// One key of the marker line: its value as printed and, when the value is
/// not what kata-agent relies on, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub value: String,
    /// `Some(what was expected and what was found)` for a gap.
    pub gap: Option<String>,
}

/// The mount points checked: key, mount point, file system expected.
const MOUNTS: [(&str, &str, &str); 7] = [
    ("proc", "/proc", "proc"),
    ("sys", "/sys", "sysfs"),
    ("dev", "/dev", "devtmpfs"),
    ("dev_pts", "/dev/pts", "devpts"),
    ("dev_shm", "/dev/shm", "tmpfs"),
    ("run", "/run", "tmpfs"),
    ("tmp", "/tmp", "tmpfs"),
];

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl SelfCheck {
    /// Reads the process's own state: pid, RLIMIT_NOFILE and the hostname
    /// from system calls, the rest from `sources`.
    pub fn gather(sources: &Sources) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let proc_self = &sources.proc_self;
        Self {
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            nofile: Limit {
                soft: limit.current,
                hard: limit.maximum,
            },
            oom_score_adj: read_int(&proc_self.join("oom_score_adj")),
            stdin: read_link(&proc_self.join("fd/0")),
            stdout: read_link(&proc_self.join("fd/1")),
            mounts: read_to_string(&proc_self.join("mountinfo")).map(|text| parse_mountinfo(&text)),
            path: sources.path.clone(),
            hostname: rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned(),
            lo_up: read_flags(&sources.sys.join("class/net/lo/flags"))
                .map(|flags| flags & IFF_UP != 0),
            run_writable: try_create_and_remove(&sources.run),
            tmp_mode: std::fs::metadata(&sources.tmp)
                .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777)
                .map_err(|source| ProbeError::Read {
                    path: sources.tmp.clone(),
                    source,
                }),
            container: sources.container.clone(),
        }
    }

    /// The errors met while gathering, for the caller to report.
    pub fn errors(&self) -> impl Iterator<Item = &ProbeError> {
        [
            self.oom_score_adj.as_ref().err(),
            self.stdin.as_ref().err(),
            self.stdout.as_ref().err(),
            self.mounts.as_ref().err(),
            self.lo_up.as_ref().err(),
            self.run_writable.as_ref().err(),
            self.tmp_mode.as_ref().err(),
        ]
        .into_iter()
        .flatten()
    }

    fn in_container(&self) -> bool {
        self.container.is_some()
    }

    /// Every key of the marker line, in order, each with its rule applied.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = vec![
            self.check_pid(),
            self.check_nofile(),
            self.check_oom_score_adj(),
            self.check_stdin(),
            self.check_stdout(),
        ];
        for (name, point, fstype) in MOUNTS {
            checks.push(self.check_mount(name, point, fstype));
        }
        checks.extend([
            self.check_cgroup(),
            self.check_path(),
            self.check_hostname(),
            self.check_lo(),
            self.check_run_writable(),
            self.check_tmp_mode(),
            Check {
                name: "container",
                value: self
                    .container
                    .as_ref()
                    .map_or_else(|| "unset".to_owned(), |v| escape(&v.to_string_lossy())),
                gap: None,
            },
        ]);
        checks
    }

    /// The names of the keys whose value is not what kata-agent relies on.
    pub fn gaps(&self) -> Vec<&'static str> {
        self.checks()
            .into_iter()
            .filter(|check| check.gap.is_some())
            .map(|check| check.name)
            .collect()
    }

    /// How this process's surroundings differ from what kata-agent relies
    /// on, one message per gap naming what was expected and what was found;
    /// empty when nothing is missing.
    pub fn strict_violations(&self) -> Vec<String> {
        self.checks()
            .into_iter()
            .filter_map(|check| check.gap)
            .collect()
    }

    fn check_pid(&self) -> Check {
        Check {
            name: "pid",
            value: self.pid.to_string(),
            gap: (self.pid == 1).then(|| {
                "pid is 1, expected a child of init (kata-agent as PID 1 mounts and sets up \
                 cgroups itself)"
                    .to_owned()
            }),
        }
    }

    fn check_nofile(&self) -> Check {
        let value = format!(
            "{}/{}",
            LimitValue(self.nofile.soft),
            LimitValue(self.nofile.hard)
        );
        let ok = self.nofile.soft == Some(KATA_NOFILE) && self.nofile.hard == Some(KATA_NOFILE);
        Check {
            name: "nofile",
            gap: (!ok).then(|| {
                format!(
                    "RLIMIT_NOFILE is {value} (soft/hard), expected {KATA_NOFILE}/{KATA_NOFILE}"
                )
            }),
            value,
        }
    }

    fn check_oom_score_adj(&self) -> Check {
        let value = match &self.oom_score_adj {
            Ok(value) => value.to_string(),
            Err(_) => "unknown".to_owned(),
        };
        Check {
            name: "oom_score_adj",
            gap: (!matches!(self.oom_score_adj, Ok(KATA_OOM_SCORE_ADJ)))
                .then(|| format!("oom_score_adj is {value}, expected {KATA_OOM_SCORE_ADJ}")),
            value,
        }
    }

    fn check_stdin(&self) -> Check {
        let value = link_value(&self.stdin);
        let ok = matches!(&self.stdin, Ok(target) if target == Path::new("/dev/null"));
        Check {
            name: "stdin",
            gap: (!ok).then(|| format!("stdin is {value}, expected /dev/null")),
            value,
        }
    }

    fn check_stdout(&self) -> Check {
        let value = link_value(&self.stdout);
        let ok = match &self.stdout {
            Ok(target) => {
                is_console(target) || (self.in_container() && is_container_console(target))
            }
            Err(_) => false,
        };
        let expected = if self.in_container() {
            "the console (/dev/console, /dev/tty*, /dev/hvc*; in a container also a pipe or \
             /dev/pts/N)"
        } else {
            "the console (/dev/console, /dev/tty*, /dev/hvc*)"
        };
        Check {
            name: "stdout",
            gap: (!ok).then(|| format!("stdout is {value}, expected {expected}")),
            value,
        }
    }

    /// The file system on top at `point`: `None` when nothing is mounted
    /// there, `Err` when mountinfo could not be read.
    fn fstype_at(&self, point: &str) -> Result<Option<&str>, ()> {
        match &self.mounts {
            Ok(mounts) => Ok(mounts
                .iter()
                .rev()
                .find(|m| m.mount_point == point)
                .map(|m| m.fstype.as_str())),
            Err(_) => Err(()),
        }
    }

    fn check_mount(&self, name: &'static str, point: &str, expected: &str) -> Check {
        let found = self.fstype_at(point);
        let value = match found {
            Ok(Some(fstype)) => escape(fstype),
            Ok(None) => "none".to_owned(),
            Err(()) => "unknown".to_owned(),
        };
        let container_dev = name == "dev" && self.in_container();
        let ok = match found {
            Ok(Some(fstype)) => fstype == expected || (container_dev && fstype == "tmpfs"),
            _ => false,
        };
        let expected = if container_dev {
            format!("{expected} (or tmpfs in a container)")
        } else {
            expected.to_owned()
        };
        let found_text = match found {
            Ok(Some(fstype)) => fstype.to_owned(),
            Ok(None) => "not mounted".to_owned(),
            Err(()) => "unknown".to_owned(),
        };
        // A second mount over the first hides what the first held (an init
        // that mounted without looking).
        let times = self
            .mounts
            .as_ref()
            .map_or(0, |m| m.iter().filter(|m| m.mount_point == point).count());
        let gap = if !ok {
            Some(format!("{point} is {found_text}, expected {expected}"))
        } else if times > 1 {
            Some(format!(
                "{point} is mounted {times} times, one over another, expected once"
            ))
        } else {
            None
        };
        Check { name, gap, value }
    }

    /// cgroup2 on /sys/fs/cgroup, or the v1 layout: a tmpfs there with at
    /// least one cgroup (v1) hierarchy mounted below it.
    fn check_cgroup(&self) -> Check {
        let expected = "cgroup2 (or a tmpfs with cgroup v1 hierarchies below it)";
        let (value, gap) = match (self.fstype_at(CGROUP_ROOT), &self.mounts) {
            (Ok(Some("cgroup2")), _) => ("cgroup2".to_owned(), None),
            (Ok(Some("tmpfs")), Ok(mounts)) => {
                let prefix = format!("{CGROUP_ROOT}/");
                let hierarchies = mounts
                    .iter()
                    .filter(|m| m.fstype == "cgroup" && m.mount_point.starts_with(&prefix))
                    .count();
                if hierarchies > 0 {
                    ("v1".to_owned(), None)
                } else {
                    (
                        "tmpfs".to_owned(),
                        Some(format!(
                            "{CGROUP_ROOT} is a tmpfs without cgroup hierarchies, expected {expected}"
                        )),
                    )
                }
            }
            (Ok(Some(fstype)), _) => (
                escape(fstype),
                Some(format!("{CGROUP_ROOT} is {fstype}, expected {expected}")),
            ),
            (Ok(None), _) => (
                "none".to_owned(),
                Some(format!("{CGROUP_ROOT} is not mounted, expected {expected}")),
            ),
            (Err(()), _) => (
                "unknown".to_owned(),
                Some(format!("{CGROUP_ROOT} is unknown, expected {expected}")),
            ),
        };
        Check {
            name: "cgroup",
            value,
            gap,
        }
    }

    fn check_path(&self) -> Check {
        let text = self.path.as_ref().map(|p| p.to_string_lossy());
        let ok = text
            .as_ref()
            .is_some_and(|p| !p.is_empty() && p.split(':').all(|dir| dir.starts_with('/')));
        let value = text
            .as_ref()
            .map_or_else(|| "unset".to_owned(), |p| escape(p));
        Check {
            name: "path",
            gap: (!ok).then(|| {
                format!("PATH is {value}, expected a non-empty list of absolute directories")
            }),
            value,
        }
    }

    fn check_hostname(&self) -> Check {
        let value = escape(&self.hostname);
        // "(none)" is the kernel's default nodename (CONFIG_DEFAULT_HOSTNAME).
        let ok = !self.hostname.is_empty() && self.hostname != "(none)";
        Check {
            name: "hostname",
            gap: (!ok).then(|| {
                format!("hostname is {value}, expected one set (from /etc/hostname, or localhost)")
            }),
            value,
        }
    }

    fn check_lo(&self) -> Check {
        let value = match self.lo_up {
            Ok(true) => "up",
            Ok(false) => "down",
            Err(_) => "unknown",
        };
        Check {
            name: "lo",
            value: value.to_owned(),
            gap: (value != "up").then(|| format!("lo is {value}, expected up")),
        }
    }

    fn check_run_writable(&self) -> Check {
        let ok = self.run_writable.is_ok();
        Check {
            name: "run_writable",
            value: if ok { "yes" } else { "no" }.to_owned(),
            gap: (!ok).then(|| "/run is not writable, expected writable".to_owned()),
        }
    }

    fn check_tmp_mode(&self) -> Check {
        let value = match self.tmp_mode {
            Ok(mode) => format!("{mode:04o}"),
            Err(_) => "unknown".to_owned(),
        };
        Check {
            name: "tmp_mode",
            gap: (self.tmp_mode.as_ref().ok() != Some(&TMP_MODE))
                .then(|| format!("/tmp has mode {value}, expected {TMP_MODE:04o}")),
            value,
        }
    }
}

/// The marker line: `agent-shim: self-check KEY=VALUE ... gaps=NAME,...`
/// (`gaps=none` when nothing is missing); the keys are those of
/// [`SelfCheck::checks`], starting `pid=N nofile=SOFT/HARD oom_score_adj=N
/// stdin=TARGET stdout=TARGET`. Unreadable values print as `unknown`,
/// infinite limits as `unlimited`; values never contain whitespace.
impl fmt::Display for SelfCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("agent-shim: self-check")?;
        let checks = self.checks();
        for check in &checks {
            write!(f, " {}={}", check.name, check.value)?;
        }
        f.write_str(" gaps=")?;
        let mut gaps = checks.iter().filter(|check| check.gap.is_some());
        match gaps.next() {
            None => f.write_str("none"),
            Some(first) => {
                f.write_str(first.name)?;
                for gap in gaps {
                    write!(f, ",{}", gap.name)?;
                }
                Ok(())
            }
        }
    }
}

struct LimitValue(Option<u64>);

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("unlimited"),
        }
    }
}

/// A value for the line: whitespace, control characters, `"` and `\` as
/// `\xNN` (`\u{N}` beyond Latin-1), so that values never split; the empty
/// string as `""`.
fn escape(text: &str) -> String {
    if text.is_empty() {
        return "\"\"".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() || c == '"' || c == '\\' {
            let code = u32::from(c);
            if code < 0x100 {
                out.push_str(&format!("\\x{code:02x}"));
            } else {
                out.push_str(&format!("\\u{{{code:x}}}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn link_value(target: &Result<PathBuf, ProbeError>) -> String {
    match target {
        Ok(target) => escape(&target.to_string_lossy()),
        Err(_) => "unknown".to_owned(),
    }
}

/// A console device: `/dev/console`, a virtual or serial terminal
/// (`/dev/tty*`: tty0, ttyS0, ttyAMA0, ...), or a hypervisor console
/// (`/dev/hvc*`).
fn is_console(target: &Path) -> bool {
    let Some(name) = target.to_str().and_then(|text| text.strip_prefix("/dev/")) else {
        return false;
    };
    name == "console"
        || (!name.contains('/') && (name.starts_with("tty") || name.starts_with("hvc")))
}

/// What a container manager gives as the console: a pipe (`pipe:[N]`) or
/// a pseudo-terminal (`/dev/pts/N`).
fn is_container_console(target: &Path) -> bool {
    let Some(text) = target.to_str() else {
        return false;
    };
    (text.starts_with("pipe:[") && text.ends_with(']'))
        || text
            .strip_prefix("/dev/pts/")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses mountinfo text; malformed lines are skipped. Mount points are
/// unescaped (`\040` for a space).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next().filter(|t| !t.is_empty())?;
            Some(MountEntry {
                mount_point: unescape_octal(mount_point),
                fstype: fstype.to_owned(),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes in mountinfo (`\040`, `\011`, `\012`,
/// `\134`).
fn unescape_octal(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match (byte, octal) {
            (b'\\', Some(digits)) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_to_string(path: &Path) -> Result<String, ProbeError> {
    std::fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_int(path: &Path) -> Result<i32, ProbeError> {
    let text = read_to_string(path)?;
    text.trim().parse().map_err(|_| ProbeError::Parse {
        path: path.to_owned(),
        content: text.trim().to_owned(),
    })
}

/// A sysfs `flags` file: hexadecimal with `0x`.
fn read_flags(path: &Path) -> Result<u64, ProbeError> {
    let text = read_to_string(path)?;
    let trimmed = text.trim();
    trimmed
        .strip_prefix("0x")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| ProbeError::Parse {
            path: path.to_owned(),
            content: trimmed.to_owned(),
        })
}

fn read_link(path: &Path) -> Result<PathBuf, ProbeError> {
    std::fs::read_link(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Creates and removes a file in `dir`, as kata-agent creates its sockets
/// and state there.
fn try_create_and_remove(dir: &Path) -> Result<(), ProbeError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!(
        ".agent-shim-self-check-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::File::create(&path).map_err(|source| ProbeError::Create {
        path: path.clone(),
        source,
    })?;
    std::fs::remove_file(&path).map_err(|source| ProbeError::Remove { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mountinfo as init leaves it in a VM (cgroup2).
    const VM_MOUNTINFO: &str = "\
22 1 254:0 / / ro,relatime - ext4 /dev/pmem0p1 ro,dax
23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,mode=755
24 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
26 23 0:23 / /dev/pts rw,nosuid,noexec - devpts devpts rw,gid=5,mode=620,ptmxmode=666
27 23 0:24 / /dev/shm rw,nosuid,nodev - tmpfs shm rw
28 22 0:25 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
29 22 0:26 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
30 25 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
";

    /// The same in container mode (tmpfs on /dev), with a bind mount over
    /// a proc file and an escaped mount point, which change nothing.
    const CONTAINER_MOUNTINFO: &str = "\
600 500 0:80 / / rw - ext4 /dev/sda1 rw
601 600 0:81 / /proc rw,nosuid,nodev,noexec - proc proc rw
602 601 0:40 /cmdline /proc/cmdline rw - tmpfs tmpfs rw
603 600 0:82 / /dev rw,nosuid - tmpfs tmpfs rw,size=4096k,mode=755
604 600 0:83 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
605 603 0:84 / /dev/pts rw,nosuid,noexec - devpts devpts rw,gid=5,mode=620,ptmxmode=666
606 603 0:85 / /dev/shm rw,nosuid,nodev - tmpfs shm rw
607 600 0:86 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
608 600 0:87 / /tmp rw,nosuid,nodev - tmpfs tmpfs rw
609 604 0:88 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
610 600 0:89 / /data/with\\040space rw - tmpfs tmpfs rw
";

    /// systemd's hybrid cgroup v1 layout.
    const V1_CGROUPS: &str = "\
40 25 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
41 40 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
42 40 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec - cgroup cgroup rw,cpu,cpuacct
43 40 0:33 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec - cgroup cgroup rw,memory
";

    fn unique_dir(what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "agent-shim-selfcheck-{what}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Fixture trees: a fake `/proc/self`, `/sys`, `/run` and `/tmp`.
    struct Fixture {
        top: PathBuf,
        sources: Sources,
    }

    impl Fixture {
        fn new() -> Self {
            let top = unique_dir("tree");
            let sources = Sources {
                proc_self: top.join("proc/self"),
                sys: top.join("sys"),
                run: top.join("run"),
                tmp: top.join("tmp"),
                path: Some("/usr/sbin:/usr/bin:/sbin:/bin".into()),
                container: None,
            };
            for dir in [
                sources.proc_self.join("fd"),
                sources.sys.join("class/net/lo"),
                sources.run.clone(),
                sources.tmp.clone(),
            ] {
                std::fs::create_dir_all(dir).unwrap();
            }
            Self { top, sources }
        }

        /// Everything as init sets it up in a VM.
        fn kata_vm() -> Self {
            let fixture = Self::new();
            fixture
                .proc_file("oom_score_adj", "-997\n")
                .proc_file("mountinfo", VM_MOUNTINFO)
                .fd("0", "/dev/null")
                .fd("1", "/dev/console")
                .lo_flags("0x9\n")
                .tmp_mode(0o1777)
        }

        fn proc_file(self, name: &str, content: &str) -> Self {
            std::fs::write(self.sources.proc_self.join(name), content).unwrap();
            self
        }

        fn fd(self, fd: &str, target: &str) -> Self {
            let link = self.sources.proc_self.join("fd").join(fd);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, link).unwrap();
            self
        }

        fn lo_flags(self, content: &str) -> Self {
            std::fs::write(self.sources.sys.join("class/net/lo/flags"), content).unwrap();
            self
        }

        fn tmp_mode(self, mode: u32) -> Self {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.sources.tmp, std::fs::Permissions::from_mode(mode))
                .unwrap();
            self
        }

        fn gather(&self) -> SelfCheck {
            SelfCheck::gather(&self.sources)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // Best effort: a leftover temp dir must not fail a test.
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(&self.sources.run, std::fs::Permissions::from_mode(0o755));
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }

    fn mounts(text: &str) -> Result<Vec<MountEntry>, ProbeError> {
        Ok(parse_mountinfo(text))
    }

    fn unreadable() -> ProbeError {
        ProbeError::Parse {
            path: "x".into(),
            content: "y".into(),
        }
    }

    /// What the agent sees in a Kata VM under init (pid and hostname as
    /// given).
    fn kata_like() -> SelfCheck {
        SelfCheck {
            pid: 42,
            nofile: Limit {
                soft: Some(KATA_NOFILE),
                hard: Some(KATA_NOFILE),
            },
            oom_score_adj: Ok(-997),
            stdin: Ok("/dev/null".into()),
            stdout: Ok("/dev/console".into()),
            mounts: mounts(VM_MOUNTINFO),
            path: Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
            hostname: "localhost".into(),
            lo_up: Ok(true),
            run_writable: Ok(()),
            tmp_mode: Ok(0o1777),
            container: None,
        }
    }

    const KATA_LINE: &str = "agent-shim: self-check pid=42 nofile=1073741824/1073741824 \
        oom_score_adj=-997 stdin=/dev/null stdout=/dev/console proc=proc sys=sysfs \
        dev=devtmpfs dev_pts=devpts dev_shm=tmpfs run=tmpfs tmp=tmpfs cgroup=cgroup2 \
        path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin hostname=localhost \
        lo=up run_writable=yes tmp_mode=1777 container=unset gaps=none";

    #[test]
    fn marker_line_format() {
        let check = kata_like();
        assert_eq!(check.to_string(), KATA_LINE);
        assert!(check.strict_violations().is_empty());
        assert!(check.gaps().is_empty());
    }

    #[test]
    fn marker_line_with_unknown_and_unlimited() {
        let check = SelfCheck {
            nofile: Limit {
                soft: Some(1024),
                hard: None,
            },
            oom_score_adj: Err(unreadable()),
            stdout: Err(unreadable()),
            mounts: Err(unreadable()),
            path: None,
            hostname: "(none)".into(),
            lo_up: Err(unreadable()),
            run_writable: Err(unreadable()),
            tmp_mode: Err(unreadable()),
            ..kata_like()
        };
        assert_eq!(
            check.to_string(),
            "agent-shim: self-check pid=42 nofile=1024/unlimited oom_score_adj=unknown \
             stdin=/dev/null stdout=unknown proc=unknown sys=unknown dev=unknown \
             dev_pts=unknown dev_shm=unknown run=unknown tmp=unknown cgroup=unknown \
             path=unset hostname=(none) lo=unknown run_writable=no tmp_mode=unknown \
             container=unset gaps=nofile,oom_score_adj,stdout,proc,sys,dev,dev_pts,dev_shm,\
             run,tmp,cgroup,path,hostname,lo,run_writable,tmp_mode"
        );
        assert_eq!(check.errors().count(), 6);
        assert_eq!(check.strict_violations().len(), 16);
    }

    #[test]
    fn values_never_split_the_line() {
        let check = SelfCheck {
            path: Some("/bin:/my dir".into()),
            hostname: String::new(),
            stdout: Ok("/tmp/out\tfile \"x\"\\".into()),
            container: Some("".into()),
            ..kata_like()
        };
        let line = check.to_string();
        assert!(line.contains(" path=/bin:/my\\x20dir "), "{line}");
        assert!(line.contains(" hostname=\"\" "), "{line}");
        assert!(
            line.contains(" stdout=/tmp/out\\x09file\\x20\\x22x\\x22\\x5c "),
            "{line}"
        );
        assert!(line.contains(" container=\"\" "), "{line}");
        assert_eq!(escape("a\u{2028}b"), "a\\u{2028}b");
    }

    #[test]
    fn strict_names_each_difference() {
        let check = SelfCheck {
            pid: 1,
            nofile: Limit {
                soft: Some(1024),
                hard: Some(4096),
            },
            oom_score_adj: Ok(0),
            stdin: Ok("pipe:[7]".into()),
            stdout: Ok("/dev/pts/0".into()),
            mounts: mounts(
                "1 0 0:1 / / rw - ext4 /dev/vda rw\n\
                 2 1 0:2 / /proc rw - proc proc rw\n\
                 3 1 0:3 / /dev rw - tmpfs tmpfs rw\n\
                 4 1 0:4 / /run rw - ext4 /dev/vda rw\n",
            ),
            path: Some("bin:/usr/bin".into()),
            hostname: "(none)".into(),
            lo_up: Ok(false),
            tmp_mode: Ok(0o755),
            ..kata_like()
        };
        assert_eq!(
            check.strict_violations(),
            [
                "pid is 1, expected a child of init (kata-agent as PID 1 mounts and sets up \
                 cgroups itself)",
                "RLIMIT_NOFILE is 1024/4096 (soft/hard), expected 1073741824/1073741824",
                "oom_score_adj is 0, expected -997",
                "stdin is pipe:[7], expected /dev/null",
                "stdout is /dev/pts/0, expected the console (/dev/console, /dev/tty*, /dev/hvc*)",
                "/sys is not mounted, expected sysfs",
                "/dev is tmpfs, expected devtmpfs",
                "/dev/pts is not mounted, expected devpts",
                "/dev/shm is not mounted, expected tmpfs",
                "/run is ext4, expected tmpfs",
                "/tmp is not mounted, expected tmpfs",
                "/sys/fs/cgroup is not mounted, expected cgroup2 (or a tmpfs with cgroup v1 \
                 hierarchies below it)",
                "PATH is bin:/usr/bin, expected a non-empty list of absolute directories",
                "hostname is (none), expected one set (from /etc/hostname, or localhost)",
                "lo is down, expected up",
                "/tmp has mode 0755, expected 1777",
            ]
        );
        assert_eq!(
            check.gaps(),
            [
                "pid",
                "nofile",
                "oom_score_adj",
                "stdin",
                "stdout",
                "sys",
                "dev",
                "dev_pts",
                "dev_shm",
                "run",
                "tmp",
                "cgroup",
                "path",
                "hostname",
                "lo",
                "tmp_mode"
            ]
        );
        assert!(check.to_string().ends_with(
            " gaps=pid,nofile,oom_score_adj,stdin,stdout,sys,dev,dev_pts,dev_shm,run,tmp,\
             cgroup,path,hostname,lo,tmp_mode"
        ));
    }

    #[test]
    fn unknown_values_are_gaps() {
        let check = SelfCheck {
            nofile: Limit {
                soft: None,
                hard: None,
            },
            oom_score_adj: Err(unreadable()),
            stdin: Err(unreadable()),
            mounts: Err(unreadable()),
            lo_up: Err(unreadable()),
            run_writable: Err(unreadable()),
            ..kata_like()
        };
        let violations = check.strict_violations();
        for expected in [
            "RLIMIT_NOFILE is unlimited/unlimited (soft/hard), expected 1073741824/1073741824",
            "oom_score_adj is unknown, expected -997",
            "stdin is unknown, expected /dev/null",
            "/proc is unknown, expected proc",
            "/sys/fs/cgroup is unknown, expected cgroup2 (or a tmpfs with cgroup v1 hierarchies \
             below it)",
            "lo is unknown, expected up",
            "/run is not writable, expected writable",
        ] {
            assert!(
                violations.iter().any(|v| v == expected),
                "{expected}: {violations:#?}"
            );
        }
    }

    #[test]
    fn nofile_needs_both_limits() {
        let check = SelfCheck {
            nofile: Limit {
                soft: Some(KATA_NOFILE),
                hard: None,
            },
            ..kata_like()
        };
        assert_eq!(check.gaps(), ["nofile"]);
    }

    #[test]
    fn container_mode_accepts_tmpfs_dev_and_a_pipe_or_pts_as_console() {
        for stdout in ["pipe:[4242]", "/dev/pts/3", "/dev/console"] {
            let check = SelfCheck {
                stdout: Ok(stdout.into()),
                mounts: mounts(CONTAINER_MOUNTINFO),
                container: Some("minos-test".into()),
                ..kata_like()
            };
            assert!(check.gaps().is_empty(), "{stdout}: {check}");
            let line = check.to_string();
            assert!(line.contains(" dev=tmpfs "), "{line}");
            assert!(line.contains(" container=minos-test gaps=none"), "{line}");
        }
        // Outside a container the same are gaps.
        let check = SelfCheck {
            stdout: Ok("pipe:[4242]".into()),
            mounts: mounts(CONTAINER_MOUNTINFO),
            ..kata_like()
        };
        assert_eq!(check.gaps(), ["stdout", "dev"]);
        // A container does not excuse a regular file, /dev/null, or a
        // missing /dev.
        for stdout in [
            "/dev/null",
            "/var/log/agent.log",
            "socket:[1]",
            "/dev/pts/ptmx",
        ] {
            let check = SelfCheck {
                stdout: Ok(stdout.into()),
                container: Some("podman".into()),
                ..kata_like()
            };
            assert_eq!(check.gaps(), ["stdout"], "{stdout}");
            assert!(check.strict_violations()[0].ends_with(
                "expected the console (/dev/console, /dev/tty*, /dev/hvc*; in a container \
                 also a pipe or /dev/pts/N)"
            ));
        }
        let check = SelfCheck {
            mounts: mounts("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            container: Some("podman".into()),
            ..kata_like()
        };
        assert!(check
            .strict_violations()
            .contains(&"/dev is not mounted, expected devtmpfs (or tmpfs in a container)".into()));
    }

    #[test]
    fn consoles() {
        for yes in [
            "/dev/console",
            "/dev/ttyS0",
            "/dev/hvc0",
            "/dev/tty1",
            "/dev/ttyAMA0",
        ] {
            assert!(is_console(Path::new(yes)), "{yes}");
        }
        for no in [
            "/dev/pts/0",
            "/dev/null",
            "pipe:[1]",
            "/tmp/ttyS0",
            "/dev/consolex",
            "/dev/tty/x",
        ] {
            assert!(!is_console(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn cgroup_v1_layout_passes_an_empty_tmpfs_does_not() {
        let check = SelfCheck {
            mounts: mounts(&format!(
                "{}{V1_CGROUPS}",
                VM_MOUNTINFO.replace("/sys/fs/cgroup", "/nowhere")
            )),
            ..kata_like()
        };
        assert!(check.gaps().is_empty(), "{check}");
        assert!(check.to_string().contains(" cgroup=v1 "));
        let without_hierarchies: String = V1_CGROUPS
            .lines()
            .filter(|line| !line.contains(" - cgroup "))
            .map(|line| format!("{line}\n"))
            .collect();
        let check = SelfCheck {
            mounts: mounts(&format!(
                "{}{without_hierarchies}",
                VM_MOUNTINFO.replace("/sys/fs/cgroup", "/nowhere")
            )),
            ..kata_like()
        };
        assert_eq!(check.gaps(), ["cgroup"]);
        assert!(check.to_string().contains(" cgroup=tmpfs "));
        assert_eq!(
            check.strict_violations(),
            [
                "/sys/fs/cgroup is a tmpfs without cgroup hierarchies, expected cgroup2 (or a \
              tmpfs with cgroup v1 hierarchies below it)"
            ]
        );
    }

    #[test]
    fn the_mount_on_top_counts() {
        let check = SelfCheck {
            mounts: mounts(&format!(
                "{VM_MOUNTINFO}90 28 0:90 / /run rw - ramfs ramfs rw\n"
            )),
            ..kata_like()
        };
        assert_eq!(check.strict_violations(), ["/run is ramfs, expected tmpfs"]);
        assert!(check.to_string().contains(" run=ramfs "));
    }

    #[test]
    fn a_mount_stacked_on_another_of_its_kind_is_a_gap() {
        let check = SelfCheck {
            mounts: mounts(&format!(
                "{VM_MOUNTINFO}90 28 0:90 / /run rw - tmpfs tmpfs rw\n"
            )),
            ..kata_like()
        };
        assert_eq!(
            check.strict_violations(),
            ["/run is mounted 2 times, one over another, expected once"]
        );
    }

    #[test]
    fn parses_mountinfo_like_the_kernel_writes_it() {
        let entries = parse_mountinfo(CONTAINER_MOUNTINFO);
        assert_eq!(entries.len(), 11);
        assert_eq!(
            entries[2],
            MountEntry {
                mount_point: "/proc/cmdline".into(),
                fstype: "tmpfs".into()
            }
        );
        assert_eq!(entries[10].mount_point, "/data/with space");
        // Optional fields before the separator, and malformed lines.
        let entries = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw\n\
             garbage\n\
             1 2 3 4\n\
             1 2 3 4 /x - \n",
        );
        assert_eq!(
            entries,
            [MountEntry {
                mount_point: "/mnt2".into(),
                fstype: "ext3".into()
            }]
        );
    }

    #[test]
    fn gathers_a_kata_vm_from_fixtures() {
        let fixture = Fixture::kata_vm();
        let check = fixture.gather();
        assert!(check.errors().next().is_none(), "{check}");
        assert_eq!(check.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(check.oom_score_adj.as_ref().unwrap(), &-997);
        assert_eq!(check.stdin.as_ref().unwrap(), Path::new("/dev/null"));
        assert_eq!(check.stdout.as_ref().unwrap(), Path::new("/dev/console"));
        assert_eq!(
            check.mounts.as_ref().unwrap(),
            &parse_mountinfo(VM_MOUNTINFO)
        );
        assert!(check.lo_up.as_ref().unwrap());
        assert!(check.run_writable.is_ok());
        assert_eq!(check.tmp_mode.as_ref().unwrap(), &0o1777);
        // The probe file is gone again.
        assert_eq!(std::fs::read_dir(&fixture.sources.run).unwrap().count(), 0);
        // Only what the fixture cannot provide differs: limits, perhaps
        // the hostname, and the pid is never 1 here.
        let gaps: Vec<&str> = check
            .gaps()
            .into_iter()
            .filter(|gap| !["nofile", "hostname"].contains(gap))
            .collect();
        assert!(gaps.is_empty(), "{check}");
    }

    #[test]
    fn gathers_each_failure_from_fixtures() {
        let fixture = Fixture::kata_vm()
            .proc_file("mountinfo", CONTAINER_MOUNTINFO)
            .fd("0", "pipe:[99]")
            .fd("1", "pipe:[100]")
            .lo_flags("0x1002\n")
            .tmp_mode(0o755);
        let check = fixture.gather();
        let line = check.to_string();
        for part in [
            " stdin=pipe:[99] ",
            " stdout=pipe:[100] ",
            " dev=tmpfs ",
            " lo=down ",
            " tmp_mode=0755 ",
            " container=unset ",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        let gaps = check.gaps();
        for gap in ["stdin", "stdout", "dev", "lo", "tmp_mode"] {
            assert!(gaps.contains(&gap), "{gap}: {line}");
        }
        // In container mode the pipe and the tmpfs are the container's.
        let mut sources = fixture.sources.clone();
        sources.container = Some("minos-test".into());
        let gaps = SelfCheck::gather(&sources).gaps();
        assert!(
            !gaps.contains(&"stdout") && !gaps.contains(&"dev"),
            "{gaps:?}"
        );
    }

    #[test]
    fn unwritable_run_is_a_gap_naming_the_path() {
        if rustix::process::geteuid().is_root() {
            // Root writes anywhere; a missing directory fails for root too.
            let fixture = Fixture::kata_vm();
            let mut sources = fixture.sources.clone();
            sources.run = fixture.top.join("no-such-run");
            let check = SelfCheck::gather(&sources);
            assert!(check.to_string().contains(" run_writable=no "));
            let errors: Vec<String> = check.errors().map(ToString::to_string).collect();
            let prefix = format!(
                "cannot create {}/.agent-shim-self-check-",
                sources.run.display()
            );
            assert!(errors.iter().any(|e| e.starts_with(&prefix)), "{errors:?}");
            assert!(check.gaps().contains(&"run_writable"));
        } else {
            use std::os::unix::fs::PermissionsExt;
            let fixture = Fixture::kata_vm();
            std::fs::set_permissions(&fixture.sources.run, std::fs::Permissions::from_mode(0o555))
                .unwrap();
            let check = fixture.gather();
            assert!(check.gaps().contains(&"run_writable"));
        }
    }

    #[test]
    fn missing_and_malformed_files_are_reported_with_paths() {
        let fixture = Fixture::new()
            .proc_file("oom_score_adj", "minus five")
            .fd("0", "/dev/null")
            .lo_flags("up\n");
        std::fs::remove_dir(&fixture.sources.tmp).unwrap();
        let check = fixture.gather();
        let errors: Vec<String> = check.errors().map(ToString::to_string).collect();
        let proc_self = &fixture.sources.proc_self;
        assert_eq!(
            errors,
            [
                format!(
                    "{} holds `minus five`, not an integer",
                    proc_self.join("oom_score_adj").display()
                ),
                format!("cannot read {}", proc_self.join("fd/1").display()),
                format!("cannot read {}", proc_self.join("mountinfo").display()),
                format!(
                    "{} holds `up`, not an integer",
                    fixture.sources.sys.join("class/net/lo/flags").display()
                ),
                format!("cannot read {}", fixture.sources.tmp.display()),
            ]
        );
        let line = check.to_string();
        assert!(
            line.contains(" oom_score_adj=unknown stdin=/dev/null stdout=unknown proc=unknown "),
            "{line}"
        );
        assert!(
            line.contains(" lo=unknown run_writable=yes tmp_mode=unknown "),
            "{line}"
        );
    }

    #[test]
    fn lo_flags_file_missing() {
        let fixture = Fixture::kata_vm();
        std::fs::remove_file(fixture.sources.sys.join("class/net/lo/flags")).unwrap();
        let check = fixture.gather();
        let errors: Vec<String> = check.errors().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [format!(
                "cannot read {}",
                fixture.sources.sys.join("class/net/lo/flags").display()
            )]
        );
        assert!(check.gaps().contains(&"lo"));
    }

    #[test]
    fn gathers_from_the_real_system() {
        let check = SelfCheck::gather(&Sources::from_process());
        assert!(check.oom_score_adj.is_ok());
        assert!(check.mounts.as_ref().is_ok_and(|m| !m.is_empty()));
        assert_eq!(check.nofile, {
            let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            Limit {
                soft: l.current,
                hard: l.maximum,
            }
        });
        // Every key once, gaps last.
        let line = check.to_string();
        let keys: Vec<&str> = line
            .trim_start_matches("agent-shim: self-check ")
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().0)
            .collect();
        assert_eq!(
            keys,
            [
                "pid",
                "nofile",
                "oom_score_adj",
                "stdin",
                "stdout",
                "proc",
                "sys",
                "dev",
                "dev_pts",
                "dev_shm",
                "run",
                "tmp",
                "cgroup",
                "path",
                "hostname",
                "lo",
                "run_writable",
                "tmp_mode",
                "container",
                "gaps"
            ]
        );
    }
}
