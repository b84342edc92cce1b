//! `/etc/fstab`: its entries mounted at boot, before any unit starts, as
//! systemd's fstab generator and `systemd-remount-fs` do for the common
//! cases (docs/init.md, "/etc/fstab").
//!
//! - Each line is `SPEC TARGET TYPE [OPTIONS [FREQ [PASSNO]]]`; `\040`-style
//!   octal escapes in a field are decoded; `#` starts a comment line.
//! - SPEC is a path (a device, or a directory for a bind mount), `LABEL=`
//!   or `UUID=` (or `/dev/disk/by-label/`, `/dev/disk/by-uuid/` when no
//!   such link exists: minos runs no udev), resolved by reading the
//!   superblocks of the block devices in `/sys/class/block` (ext2/3/4, XFS,
//!   EROFS); anything else (`tmpfs`, `none`) is passed to the kernel as is.
//! - `noauto` entries are not mounted; `nofail` makes a failure a warning;
//!   `x-systemd.*` options are ignored with a note; swap is not enabled.
//! - A target init has mounted itself (`/run`, `/tmp`, `/dev/shm`) is not
//!   mounted on a second time: a tmpfs entry remounts it with the entry's
//!   options (systemd-remount-fs's rule for API file systems), any other
//!   type replaces init's empty tmpfs.

use std::path::Path;

use rustix::mount::MountFlags;

use crate::mounts::MountTable;

pub const FSTAB: &str = "/etc/fstab";

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Line number, for messages.
    pub line: usize,
    pub spec: String,
    pub target: String,
    pub fstype: String,
    pub options: Options,
}

/// The options field, split into what mount(2) takes and what init acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flags: MountFlags,
    /// Passed to the file system (comma-separated).
    pub data: String,
    pub bind: bool,
    pub recursive: bool,
    pub noauto: bool,
    pub nofail: bool,
    /// Options init does not act on (`x-systemd.*`, `_netdev`, `user` …).
    pub ignored: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flags: MountFlags::empty(),
            data: String::new(),
            bind: false,
            recursive: false,
            noauto: false,
            nofail: false,
            ignored: Vec::new(),
        }
    }
}

/// Decodes `\NNN` octal escapes (`\040` is a space), as getmntent does.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b.get(i) == Some(&b'\\') && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b.get(i).copied().unwrap_or_default());
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits the options field.
pub fn parse_options(field: &str) -> Options {
    let mut o = Options::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in field.split(',').filter(|s| !s.is_empty()) {
        let set = |o: &mut Options, f: MountFlags| o.flags |= f;
        let clear = |o: &mut Options, f: MountFlags| o.flags.remove(f);
        match opt {
            "defaults" | "auto" | "rw" | "async" | "nouser" | "fail" => {}
            "ro" => set(&mut o, MountFlags::RDONLY),
            "nosuid" => set(&mut o, MountFlags::NOSUID),
            "suid" => clear(&mut o, MountFlags::NOSUID),
            "nodev" => set(&mut o, MountFlags::NODEV),
            "dev" => clear(&mut o, MountFlags::NODEV),
            "noexec" => set(&mut o, MountFlags::NOEXEC),
            "exec" => clear(&mut o, MountFlags::NOEXEC),
            "sync" => set(&mut o, MountFlags::SYNCHRONOUS),
            "dirsync" => set(&mut o, MountFlags::DIRSYNC),
            "noatime" => set(&mut o, MountFlags::NOATIME),
            "atime" => clear(&mut o, MountFlags::NOATIME),
            "nodiratime" => set(&mut o, MountFlags::NODIRATIME),
            "diratime" => clear(&mut o, MountFlags::NODIRATIME),
            "relatime" => set(&mut o, MountFlags::RELATIME),
            "norelatime" => clear(&mut o, MountFlags::RELATIME),
            "strictatime" => set(&mut o, MountFlags::STRICTATIME),
            "lazytime" => set(&mut o, MountFlags::LAZYTIME),
            "nolazytime" => clear(&mut o, MountFlags::LAZYTIME),
            "silent" => set(&mut o, MountFlags::SILENT),
            "loud" => clear(&mut o, MountFlags::SILENT),
            "mand" => set(&mut o, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "nomand" => clear(&mut o, MountFlags::PERMIT_MANDATORY_FILE_LOCKING),
            "bind" => o.bind = true,
            "rbind" => {
                o.bind = true;
                o.recursive = true;
            }
            "noauto" => o.noauto = true,
            "nofail" => o.nofail = true,
            // Userspace-only options (mount(8), systemd): nothing for the
            // kernel. `x-` is the prefix reserved for such options.
            "user" | "users" | "owner" | "group" | "_netdev" => o.ignored.push(opt.into()),
            _ if opt.starts_with("x-") || opt.starts_with("comment=") => o.ignored.push(opt.into()),
            _ => data.push(opt),
        }
    }
    o.data = data.join(",");
    o
}

/// Parses the file; problems name the line.
pub fn parse(text: &str) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = trimmed.split_whitespace().collect();
        let (Some(spec), Some(target), Some(fstype)) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            problems.push(format!(
                "{FSTAB}:{line}: {trimmed:?}: fewer than 3 fields (SPEC TARGET TYPE [OPTIONS]); ignored"
            ));
            continue;
        };
        if fields.len() > 6 {
            problems.push(format!(
                "{FSTAB}:{line}: more than 6 fields; the extra ones are ignored"
            ));
        }
        let target = unescape(target);
        let fstype = unescape(fstype);
        if fstype == "swap" {
            problems.push(format!(
                "{FSTAB}:{line}: swap ({spec}) is not enabled by minos; ignored"
            ));
            continue;
        }
        if !target.starts_with('/') {
            problems.push(format!(
                "{FSTAB}:{line}: mount point {target:?} is not an absolute path; ignored"
            ));
            continue;
        }
        let target = normalise(&target);
        entries.push(Entry {
            line,
            spec: unescape(spec),
            target,
            fstype,
            options: parse_options(&unescape(fields.get(3).copied().unwrap_or("defaults"))),
        });
    }
    (entries, problems)
}

/// `/a//b/` → `/a/b`; `.` and `..` are kept as written (the kernel walks them).
fn normalise(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// What a superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub fstype: &'static str,
    pub label: String,
    pub uuid: String,
}

/// Reads a file system's type, label and UUID from its first 4 KiB.
pub fn identify(head: &[u8]) -> Option<Probed> {
    let u16_le = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let u32_le = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let text = |at: usize, len: usize| -> Option<String> {
        let b = head.get(at..at + len)?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(len);
        Some(String::from_utf8_lossy(b.get(..end)?).into_owned())
    };
    let uuid = |at: usize| -> Option<String> {
        let b = head.get(at..at + 16)?;
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        let h = hex.concat();
        Some(format!(
            "{}-{}-{}-{}-{}",
            h.get(0..8)?,
            h.get(8..12)?,
            h.get(12..16)?,
            h.get(16..20)?,
            h.get(20..32)?
        ))
    };
    // EROFS: superblock at 1024, magic 0xE0F5E1E2, uuid at +48,
    // volume_name (16) at +64.
    if u32_le(1024)? == 0xE0F5_E1E2 {
        return Some(Probed {
            fstype: "erofs",
            label: text(1024 + 64, 16)?,
            uuid: uuid(1024 + 48)?,
        });
    }
    // XFS: superblock at 0, "XFSB", sb_uuid at 32, sb_fname (12) at 108.
    if head.get(0..4)? == b"XFSB" {
        return Some(Probed {
            fstype: "xfs",
            label: text(108, 12)?,
            uuid: uuid(32)?,
        });
    }
    // ext2/3/4 last: its 16-bit magic at 1080 lies inside EROFS's UUID.
    // Superblock at 1024, s_magic at +56, s_uuid at +104, s_volume_name
    // (16) at +120.
    if u16_le(1024 + 56)? == 0xEF53 {
        return Some(Probed {
            fstype: "ext4",
            label: text(1024 + 120, 16)?,
            uuid: uuid(1024 + 104)?,
        });
    }
    None
}

/// How SPEC names a file system by what is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Label,
    Uuid,
}

fn by_content(spec: &str) -> Option<(By, &str)> {
    if let Some(l) = spec.strip_prefix("LABEL=") {
        return Some((By::Label, l));
    }
    if let Some(u) = spec.strip_prefix("UUID=") {
        return Some((By::Uuid, u));
    }
    if let Some(l) = spec.strip_prefix("/dev/disk/by-label/") {
        return Some((By::Label, l));
    }
    spec.strip_prefix("/dev/disk/by-uuid/")
        .map(|u| (By::Uuid, u))
}

/// The device whose file system has that label or UUID, among the block
/// devices the kernel lists. Quotes around the value are dropped.
fn find_device(by: By, want: &str) -> Result<String, String> {
    let want = want.trim_matches('"');
    let dir =
        std::fs::read_dir("/sys/class/block").map_err(|e| format!("list /sys/class/block: {e}"))?;
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in &names {
        // Network block devices can block a read; RAM disks and empty
        // devices (an unbound loop device) hold no file system to find.
        if ["nbd", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let size = std::fs::read_to_string(format!("/sys/class/block/{name}/size"));
        if size.is_ok_and(|s| s.trim() == "0") {
            continue;
        }
        let dev = format!("/dev/{name}");
        let Some(head) = read_head(&dev) else {
            continue;
        };
        let Some(p) = identify(&head) else { continue };
        let hit = match by {
            By::Label => p.label == want,
            By::Uuid => p.uuid.eq_ignore_ascii_case(want),
        };
        if hit {
            return Ok(dev);
        }
    }
    Err(format!(
        "no file system with {}={want} on the {} block devices of /sys/class/block \
         (ext4, XFS and EROFS superblocks are read)",
        match by {
            By::Label => "LABEL",
            By::Uuid => "UUID",
        },
        names.len()
    ))
}

/// The first 4 KiB of a device; `None` when it cannot be read (an unbound
/// loop device, a missing node).
fn read_head(dev: &str) -> Option<Vec<u8>> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        dev,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let mut buf = vec![0u8; 4096];
    let n = rustix::io::pread(&fd, &mut buf, 0).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// What happened to one entry, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Mounted,
    Remounted,
    Skipped(String),
}

/// Mounts one entry.
fn mount_entry(table: &mut MountTable, e: &Entry) -> Result<Outcome, String> {
    let o = &e.options;
    if o.noauto {
        return Ok(Outcome::Skipped("noauto".into()));
    }
    if e.target == "/" {
        return Ok(Outcome::Skipped(
            "the root file system is the kernel's (root= and rootflags=)".into(),
        ));
    }
    // No network yet (the agent sets it up): init waiting for a server
    // would hold the whole boot.
    if o.ignored.iter().any(|i| i == "_netdev") || NETWORK_FS.contains(&e.fstype.as_str()) {
        return Ok(Outcome::Skipped(format!(
            "a network file system ({}, _netdev): the guest has no network before the agent",
            e.fstype
        )));
    }
    let data = std::ffi::CString::new(o.data.as_str())
        .map_err(|_| "a NUL byte in the options".to_string())?;
    let data_opt = (!o.data.is_empty()).then_some(data.as_c_str());
    let replace = if table.contains(&e.target) {
        if !table.mounted_by_init(&e.target) {
            return Ok(Outcome::Skipped(
                "something is mounted there already".into(),
            ));
        }
        let own_tmpfs = OWN_TMPFS.iter().find(|(t, _)| *t == e.target);
        let Some((_, own_options)) = own_tmpfs else {
            return Ok(Outcome::Skipped(
                "an API file system init has mounted itself; left as it is".into(),
            ));
        };
        if e.fstype == "tmpfs" && !o.bind {
            // systemd-remount-fs: an API file system listed in fstab gets
            // the listed options, on the mount that is there.
            rustix::mount::mount_remount(&*e.target, o.flags, &*o.data)
                .map_err(|err| format!("remount {} with {:?}: {err}", e.target, o.data))?;
            return Ok(Outcome::Remounted);
        }
        Some(*own_options)
    } else {
        None
    };
    if let Some(kind) = ["PARTUUID=", "PARTLABEL=", "ID="]
        .iter()
        .find(|k| e.spec.starts_with(*k))
    {
        return Err(format!(
            "{kind} is not supported (no udev: LABEL=, UUID= or a device path are)"
        ));
    }
    let source = match by_content(&e.spec) {
        Some((by, value)) if !Path::new(&e.spec).exists() => find_device(by, value)?,
        _ => e.spec.clone(),
    };
    // `auto`: the type the superblock says.
    let fstype = if e.fstype == "auto" && !o.bind {
        read_head(&source)
            .and_then(|h| identify(&h))
            .map(|p| p.fstype.to_string())
            .ok_or_else(|| format!("type auto: no ext4, XFS or EROFS superblock on {source}"))?
    } else {
        e.fstype.clone()
    };
    if !Path::new(&e.target).exists() {
        std::fs::create_dir_all(&e.target)
            .map_err(|err| format!("create mount point {}: {err}", e.target))?;
    }
    // Everything checked: init's own tmpfs there (empty: nothing has run
    // yet) goes, so that the entry is not stacked on it; it comes back if
    // the entry cannot be mounted.
    if replace.is_some() {
        rustix::mount::unmount(&*e.target, rustix::mount::UnmountFlags::empty())
            .map_err(|err| format!("unmount init's tmpfs on {}: {err}", e.target))?;
    }
    let result = if o.bind {
        let r = if o.recursive {
            rustix::mount::mount_bind_recursive(&*source, &*e.target)
        } else {
            rustix::mount::mount_bind(&*source, &*e.target)
        };
        r.map_err(|err| format!("bind {source} on {}: {err}", e.target))
            .and_then(|()| {
                // A bind mount takes its flags (ro, nosuid …) in a second call.
                if o.flags.is_empty() {
                    return Ok(());
                }
                rustix::mount::mount_remount(&*e.target, MountFlags::BIND | o.flags, "")
                    .map_err(|err| format!("remount the bind mount {}: {err}", e.target))
            })
    } else {
        rustix::mount::mount(&*source, &*e.target, &*fstype, o.flags, data_opt)
            .map_err(|err| format!("mount {source} ({fstype}) on {}: {err}", e.target))
    };
    if let (Err(why), Some(options)) = (&result, replace) {
        let options = std::ffi::CString::new(options).unwrap_or_default();
        let back = rustix::mount::mount(
            "tmpfs",
            &*e.target,
            "tmpfs",
            crate::mounts::NOSUID_NODEV,
            options.as_c_str(),
        );
        return Err(match back {
            Ok(()) => format!("{why}; init's tmpfs is back on {}", e.target),
            Err(err) => format!("{why}; init's tmpfs could not be mounted back: {err}"),
        });
    }
    result.map(|()| Outcome::Mounted)
}

/// Init's own tmpfs mounts an fstab entry may take the place of, with
/// their options (`/dev/shm` is remounted by a tmpfs entry, never replaced).
const OWN_TMPFS: [(&str, &str); 3] = [
    ("/run", crate::mounts::RUN_TMPFS),
    ("/tmp", crate::mounts::TMP_TMPFS),
    ("/dev/shm", "mode=1777"),
];

/// Network file systems: not mounted at boot.
const NETWORK_FS: [&str; 9] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "fuse.sshfs",
    "9p",
];

/// Reads `path` and mounts its entries in order. A missing file is no
/// error; every problem is logged, naming the line. Returns the mount
/// points the file lists (`RequiresMountsFor=` looks at them).
pub fn mount_all(table: &mut MountTable, path: &str) -> Vec<String> {
    // A FIFO in its place is refused, never waited on.
    let text = match crate::sys::read_regular_file(Path::new(path)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::error!("read {path}: {e}; its entries are not mounted");
            return Vec::new();
        }
    };
    let (entries, problems) = parse(&text);
    for p in problems {
        log::warn!("{p}");
    }
    for e in &entries {
        if !e.options.ignored.is_empty() {
            log::info!(
                "{path}:{}: {}: ignored (not acted on by minos): {}",
                e.line,
                e.target,
                e.options.ignored.join(",")
            );
        }
        match mount_entry(table, e) {
            Ok(Outcome::Mounted) => log::info!("{path}:{}: mounted {}", e.line, e.target),
            Ok(Outcome::Remounted) => log::info!(
                "{path}:{}: {}: init's mount remounted with {:?}",
                e.line,
                e.target,
                e.options.data
            ),
            Ok(Outcome::Skipped(why)) => {
                log::info!("{path}:{}: {}: not mounted: {why}", e.line, e.target)
            }
            Err(why) if e.options.nofail => {
                log::warn!("{path}:{}: {} (nofail): {why}", e.line, e.target)
            }
            Err(why) => log::error!("{path}:{}: {}: {why}", e.line, e.target),
        }
    }
    entries.into_iter().map(|e| e.target).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fields_escapes_and_defaults() {
        let text = "# comment\n\n\
            tmpfs /run tmpfs nodev,nosuid,size=50% 0 0\n\
            LABEL=data /mnt/my\\040data ext4\n\
            UUID=1234 /srv//x/ xfs ro,noatime,x-systemd.device-timeout=5,nofail 0 2\n\
            /dev/vdb none swap sw 0 0\n\
            onlytwo /x\n\
            tmpfs relative tmpfs defaults\n";
        let (e, problems) = parse(text);
        assert_eq!(e.len(), 3, "{e:?}");
        let run = &e[0];
        assert_eq!((run.line, run.target.as_str()), (3, "/run"));
        assert_eq!(run.options.flags, MountFlags::NODEV | MountFlags::NOSUID);
        assert_eq!(run.options.data, "size=50%");
        assert_eq!(e[1].target, "/mnt/my data");
        assert_eq!(e[1].options, Options::default());
        let x = &e[2];
        assert_eq!(x.target, "/srv/x");
        assert_eq!(x.options.flags, MountFlags::RDONLY | MountFlags::NOATIME);
        assert!(x.options.nofail && !x.options.noauto);
        assert_eq!(x.options.ignored, ["x-systemd.device-timeout=5"]);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("/etc/fstab:6: swap"),
            "{problems:?}"
        );
        assert!(problems[1].starts_with("/etc/fstab:7: "), "{problems:?}");
        assert!(problems[2].contains("\"relative\" is not an absolute"));
    }

    #[test]
    fn options_split_between_flags_data_and_actions() {
        let o = parse_options("defaults,rbind,ro,noauto,_netdev,mode=0755,uid=0,exec,suid");
        assert!(o.bind && o.recursive && o.noauto);
        assert_eq!(o.flags, MountFlags::RDONLY);
        assert_eq!(o.data, "mode=0755,uid=0");
        assert_eq!(o.ignored, ["_netdev"]);
        let o = parse_options("noexec,exec,nodev,relatime,comment=x-gvfs");
        assert_eq!(o.flags, MountFlags::NODEV | MountFlags::RELATIME);
        assert_eq!(o.ignored, ["comment=x-gvfs"]);
    }

    #[test]
    fn escapes_that_are_not_octal_stay() {
        assert_eq!(unescape("a\\040b"), "a b");
        assert_eq!(unescape("a\\09b\\"), "a\\09b\\");
        assert_eq!(unescape("\\134x"), "\\x");
    }

    fn superblock(at: usize, bytes: &[(usize, &[u8])]) -> Vec<u8> {
        let mut head = vec![0u8; 4096];
        for (off, b) in bytes {
            head[at + off..at + off + b.len()].copy_from_slice(b);
        }
        head
    }

    const UUID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc,
        0xfe,
    ];
    const UUID_TEXT: &str = "01234567-89ab-cdef-1032-547698badcfe";

    #[test]
    fn superblocks_of_ext4_erofs_and_xfs() {
        let ext4 = superblock(
            1024,
            &[(56, &[0x53, 0xEF]), (104, &UUID), (120, b"rootfs\0\0")],
        );
        assert_eq!(
            identify(&ext4),
            Some(Probed {
                fstype: "ext4",
                label: "rootfs".into(),
                uuid: UUID_TEXT.into()
            })
        );
        let erofs = superblock(
            1024,
            &[(0, &[0xE2, 0xE1, 0xF5, 0xE0]), (48, &UUID), (64, b"ext-1")],
        );
        let p = identify(&erofs).unwrap();
        assert_eq!((p.fstype, p.label.as_str()), ("erofs", "ext-1"));
        assert_eq!(p.uuid, UUID_TEXT);
        // A 12-byte XFS label fills its field: no NUL.
        let xfs = superblock(0, &[(0, b"XFSB"), (32, &UUID), (108, b"twelve-chars")]);
        let p = identify(&xfs).unwrap();
        assert_eq!((p.fstype, p.label.as_str()), ("xfs", "twelve-chars"));
        assert_eq!(identify(&[0u8; 4096]), None);
        assert_eq!(
            identify(&[0u8; 100]),
            None,
            "short reads are no file system"
        );
    }

    #[test]
    fn specs_by_label_and_uuid() {
        assert_eq!(by_content("LABEL=a b"), Some((By::Label, "a b")));
        assert_eq!(by_content("UUID=x"), Some((By::Uuid, "x")));
        assert_eq!(by_content("/dev/disk/by-label/l"), Some((By::Label, "l")));
        assert_eq!(by_content("/dev/disk/by-uuid/u"), Some((By::Uuid, "u")));
        assert_eq!(by_content("/dev/vda"), None);
        assert_eq!(by_content("PARTUUID=p"), None);
    }
}
