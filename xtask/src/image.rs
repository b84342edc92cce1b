//! `cargo xtask image --kind initrd|disk|dax [--fs ext4|erofs] [--agent PATH] [--base DIR|TARBALL]`:
//! the guest image, optionally on top of an existing rootfs.
//!
//! The rootfs is rootfs-skel/overlay plus the static binaries: init as
//! /sbin/init (and /init for an initrd), timesync, agent-shim installed as
//! /usr/bin/kata-agent (or `--agent PATH`), the multi-call links, and Kata's
//! kata-agent.service unchanged.
//!
//! - initrd: a gzip-compressed newc cpio written here (reproducible: uid 0,
//!   mtime 0, sorted).
//! - disk: Kata osbuilder's layout — msdos label, one partition from 1 MiB,
//!   ext4 with 4 KiB blocks, the whole image a multiple of 128 MiB — made
//!   without mounts or loop devices (`mkfs.ext4 -d`, `sfdisk` on the file).
//!   init's file starts on a 2 MiB boundary of the DAX device (`align_init`),
//!   so that the kernel can map its code with one 2 MiB page.
//! - dax: the disk image behind Kata's 2 MiB DAX header (an MBR whose
//!   partition starts at 3 MiB, and the NVDIMM PFN info block at 4 KiB), for
//!   QEMU's nvdimm device, so the root is /dev/pmem0p1 with `rootflags=dax`;
//!   its ext4 superblock says `inode_readahead_blks=0` ([`DAX_MOUNT_OPTS`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::{ensure_packages, root, run, Result};

/// One entry of the image, in archive form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDev {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

/// The directories a read-only root needs (everything writable is tmpfs).
const DIRS: [&str; 15] = [
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "etc",
    "etc/minos",
    "etc/minos/units",
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "root",
    "mnt",
    "var",
];

/// Multi-call links to init, and to the agent; `/var/run` and `/var/tmp`
/// onto the tmpfs mounts as in Kata's osbuilder rootfs (kata-agent makes
/// `/var/run/sandbox-ns` and uses `/var/run/cdi`: on a read-only root
/// without the link, CreateSandbox fails with EROFS).
const LINKS: [(&str, &str); 8] = [
    ("usr/bin/systemctl", "/sbin/init"),
    ("sbin/poweroff", "init"),
    ("sbin/reboot", "init"),
    ("sbin/halt", "init"),
    ("bin/sync", "/sbin/init"),
    ("usr/bin/agent-shim", "kata-agent"),
    ("var/run", "../run"),
    ("var/tmp", "../tmp"),
];

/// Where the build host's dynamic loader looks for libraries (Debian's
/// multiarch directories first), after a library's own `DT_RUNPATH`.
const LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The interpreter and every library a dynamically linked program needs,
/// found as the build host's loader finds them (its `PT_INTERP` path, then
/// `DT_NEEDED` recursively through `DT_RUNPATH` and [`LIBRARY_DIRS`]), as
/// image entries at the same paths (each file's content, symlinks
/// followed), parent directories first. A static program needs nothing.
pub fn runtime_libraries(program: &Path) -> Result<Vec<Entry>> {
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", program.display());
    let first = crate::elf::dynamic(&read(program)?).map_err(|e| what(&e))?;
    let mut files: Vec<PathBuf> = Vec::new();
    if let Some(interp) = &first.interp {
        files.push(PathBuf::from(interp));
    }
    let origin = program.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut queue = vec![(first, origin)];
    let mut seen = std::collections::BTreeSet::new();
    while let Some((needs, origin)) = queue.pop() {
        for name in &needs.needed {
            if !seen.insert(name.clone()) {
                continue;
            }
            let dirs = needs
                .runpath
                .iter()
                .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin.to_string_lossy())))
                .chain(LIBRARY_DIRS.iter().map(PathBuf::from));
            let found = if name.contains('/') {
                Some(PathBuf::from(name)).filter(|p| p.is_file())
            } else {
                dirs.map(|d| d.join(name)).find(|p| p.is_file())
            };
            let lib = found.ok_or_else(|| {
                what(&format!(
                    "needs {name}, which is in none of its run path or {}",
                    LIBRARY_DIRS.join(" ")
                ))
            })?;
            let data = read(&lib)?;
            let deps = crate::elf::dynamic(&data).map_err(|e| format!("{}: {e}", lib.display()))?;
            queue.push((deps, lib.parent().unwrap_or(Path::new("/")).to_path_buf()));
            files.push(lib);
        }
    }
    let mut out = Vec::new();
    for file in files {
        let mut dirs: Vec<&Path> = file.ancestors().skip(1).collect();
        dirs.reverse();
        for dir in dirs.into_iter().filter(|d| d.parent().is_some()) {
            out.push(Entry::Dir {
                path: dir.to_string_lossy().trim_start_matches('/').into(),
                mode: 0o755,
            });
        }
        out.push(Entry::File {
            path: file.to_string_lossy().trim_start_matches('/').into(),
            mode: 0o755,
            data: read(&file)?,
        });
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
}

/// The rootfs entries: directories, overlay, binaries, links, units.
pub fn rootfs(
    bin: &Path,
    agent: Option<&Path>,
    initrd: bool,
    on_base: bool,
    extra: &[Entry],
) -> Result<Vec<Entry>> {
    let mut v: Vec<Entry> = DIRS
        .iter()
        .map(|d| Entry::Dir {
            path: (*d).into(),
            mode: 0o755,
        })
        .collect();
    entries_from_tree(&root().join("rootfs-skel/overlay"), "", &mut v)?;
    let agent_path = agent.map_or_else(|| bin.join("agent-shim"), Path::to_path_buf);
    for (from, to) in [
        (bin.join("init"), "sbin/init"),
        (bin.join("timesync"), "usr/bin/timesync"),
        (bin.join("busd"), "usr/bin/busd"),
        (agent_path, "usr/bin/kata-agent"),
    ] {
        let mut data = read(&from)?;
        // The DAX padding is RAM on an initrd, and buys nothing there.
        if initrd && to == "sbin/init" {
            if let Some(cut) =
                crate::elf::unpad(&data).map_err(|e| format!("{}: {e}", from.display()))?
            {
                data = cut;
            }
        }
        v.push(Entry::File {
            path: to.into(),
            mode: 0o755,
            data,
        });
    }
    for (path, target) in LINKS {
        v.push(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        });
    }
    let kata = root().join("tests/fixtures/kata/kata-agent.service");
    v.push(Entry::File {
        path: "etc/minos/units/kata-agent.service".into(),
        mode: 0o644,
        data: read(&kata)?,
    });
    if on_base {
        // A base's own target (osbuilder's kata-containers.target) is then
        // found and wants chronyd.service: timesync takes that name, so
        // that the distribution's chrony is not started beside it.
        v.push(Entry::Symlink {
            path: "etc/minos/units/chronyd.service".into(),
            target: "timesync.service".into(),
        });
    } else {
        // Nothing but minos's units: init need not look for systemd's
        // directories (docs/units.md, "Where units come from").
        v.push(Entry::File {
            path: "etc/minos/units/.self-contained".into(),
            mode: 0o644,
            data: Vec::new(),
        });
    }
    if initrd {
        // The kernel runs /init from an initramfs and opens /dev/console
        // for it before anything is mounted.
        v.push(Entry::Symlink {
            path: "init".into(),
            target: "sbin/init".into(),
        });
        v.push(Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        });
    }
    // A dynamically linked agent (Kata's own) brings its loader and
    // libraries from the build host — unless the image is made on a base
    // rootfs, whose own loader and libraries then serve it (as in Kata's
    // osbuilder, which installs the agent into the distribution's tree).
    if let Some(agent) = agent.filter(|_| !on_base) {
        v.extend(runtime_libraries(agent)?);
    }
    v.extend(extra.iter().cloned());
    // Later entries replace earlier ones of the same path; parents first.
    let mut seen = std::collections::BTreeMap::new();
    for e in v {
        seen.insert(e.path().to_string(), e);
    }
    Ok(seen.into_values().collect())
}

/// Writes entries as a newc cpio archive (the kernel's initramfs format).
pub fn write_cpio(entries: &[Entry], out: &mut impl Write) -> std::io::Result<()> {
    let mut ino = 1u32;
    let mut header = |out: &mut dyn Write,
                      name: &str,
                      mode: u32,
                      size: usize,
                      rdev: (u32, u32)|
     -> std::io::Result<()> {
        let namesize = name.len() + 1;
        write!(
            out,
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0, 0, 1, 0, 0, 0, rdev.0, rdev.1, 0
        )?;
        ino += 1;
        out.write_all(name.as_bytes())?;
        out.write_all(&[0])?;
        pad(out, 110 + namesize)
    };
    for e in entries {
        match e {
            Entry::Dir { path, mode } => header(out, path, 0o040000 | mode, 0, (0, 0))?,
            Entry::File { path, mode, data } => {
                header(out, path, 0o100000 | mode, data.len(), (0, 0))?;
                out.write_all(data)?;
                pad(out, data.len())?;
            }
            Entry::Symlink { path, target } => {
                header(out, path, 0o120777, target.len(), (0, 0))?;
                out.write_all(target.as_bytes())?;
                pad(out, target.len())?;
            }
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => header(out, path, 0o020000 | mode, 0, (*major, *minor))?,
        }
    }
    header(out, "TRAILER!!!", 0, 0, (0, 0))
}

fn pad(out: &mut dyn Write, len: usize) -> std::io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])
}

/// Builds the initrd at `out` (gzip-compressed newc cpio).
pub fn initrd(bin: &Path, agent: Option<&Path>, extra: &[Entry], out: &Path) -> Result<PathBuf> {
    let entries = rootfs(bin, agent, true, false, extra)?;
    write_initrd(&entries, out)?;
    Ok(out.to_path_buf())
}

/// Writes entries as a gzip-compressed newc cpio.
fn write_initrd(entries: &[Entry], out: &Path) -> Result<()> {
    let file = std::fs::File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::best());
    write_cpio(entries, &mut gz).map_err(|e| format!("write {}: {e}", out.display()))?;
    gz.finish()
        .and_then(|mut w| w.flush())
        .map_err(|e| format!("write {}: {e}", out.display()))
}

/// Regular files and their bytes in a gzip-compressed newc cpio (an initrd):
/// what the kernel unpacks into RAM before it runs init.
pub fn cpio_stats(path: &Path) -> Result<(u64, u64)> {
    use std::io::Read;
    let what = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut data)
        .map_err(|e| what(&e))?;
    let (mut files, mut bytes) = (0, 0);
    let mut at = 0usize;
    let align = |n: usize| n.next_multiple_of(4);
    loop {
        let header = data
            .get(at..at + 110)
            .ok_or_else(|| what(&format!("cpio ends inside a header at byte {at}")))?;
        if &header[..6] != b"070701" {
            return Err(what(&format!("no newc cpio header at byte {at}")));
        }
        let field = |i: usize| {
            std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .ok()
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| what(&format!("bad cpio header field {i} at byte {at}")))
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let name = data
            .get(at + 110..at + 110 + namesize.saturating_sub(1))
            .ok_or_else(|| what(&format!("cpio ends inside a name at byte {at}")))?;
        if name == b"TRAILER!!!" {
            return Ok((files, bytes));
        }
        if mode & 0o170000 == 0o100000 {
            files += 1;
            bytes += size as u64;
        }
        at = align(align(at + 110 + namesize) + size);
    }
}

/// Kata's layout constants (osbuilder image_builder.sh).
pub const MIB: u64 = 1024 * 1024;
pub const PART_START: u64 = MIB;
pub const SIZE_ALIGN: u64 = 128 * MIB;
pub const DAX_HEADER: u64 = 2 * MIB;
pub const DAX_ALIGN: u32 = 2 * 1024 * 1024;
pub const PFN_INFO_OFFSET: u64 = 4096;

/// Writes the entries into `dir` as real files (char devices are left out:
/// a disk root gets devtmpfs).
pub fn stage(entries: &[Entry], dir: &Path, base: Option<&Path>) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    if let Some(base) = base {
        unpack_base(base, dir)?;
    }
    // A base's own account files get minos's accounts added, never
    // replaced (its users and their ids stay).
    let accounts = match base {
        Some(_) => merge_base_accounts(entries, dir)?,
        None => Vec::new(),
    };
    write_entries(entries, dir, &accounts)?;
    if base.is_some() {
        wire_busd_on_base(dir)?;
    }
    Ok(())
}

/// Writes `entries` into the tree at `dir` (but those whose path is in
/// `skip`), replacing what is there.
pub fn write_entries(entries: &[Entry], dir: &Path, skip: &[String]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for e in entries {
        if skip.iter().any(|a| a == e.path()) {
            continue;
        }
        let p = dir.join(e.path());
        // A file or link of the base at this path is replaced, never written
        // through: /sbin/init is often a link to systemd.
        if !matches!(e, Entry::Dir { .. }) {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|err| format!("create {}: {err}", parent.display()))?;
            }
            if let Ok(md) = std::fs::symlink_metadata(&p) {
                if !md.is_dir() {
                    std::fs::remove_file(&p)
                        .map_err(|err| format!("replace {}: {err}", p.display()))?;
                }
            }
        }
        let r = match e {
            Entry::Dir { mode, .. } => std::fs::create_dir_all(&p).and_then(|()| {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
            }),
            Entry::File { mode, data, .. } => std::fs::write(&p, data).and_then(|()| {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
            }),
            Entry::Symlink { target, .. } => std::os::unix::fs::symlink(target, &p),
            Entry::CharDev { .. } => Ok(()),
        };
        r.map_err(|err| format!("stage {}: {err}", p.display()))?;
    }
    Ok(())
}

/// On a base rootfs, /etc/minos/units is not read whole: busd is linked
/// where the base's targets pull it in. A base with dbus-daemon (its
/// `dbus.socket` on the bus's path) keeps its bus: busd.socket goes, and
/// busd joins that bus as org.freedesktop.systemd1
/// (`rootfs-skel/on-dbus-daemon/busd.service`, wanted by basic.target).
/// Without one, busd.socket is enabled (sockets.target.wants): busd is
/// the bus, started by the agent's first connection.
fn wire_busd_on_base(dir: &Path) -> Result<()> {
    let has_dbus = [
        "usr/lib/systemd/system/dbus.socket",
        "lib/systemd/system/dbus.socket",
    ]
    .iter()
    .any(|p| dir.join(p).exists());
    let link = |at: &str, target: &str| -> Result<()> {
        let p = dir.join(at);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).map_err(|e| format!("link {}: {e}", p.display()))
    };
    if has_dbus {
        let units = dir.join("etc/minos/units");
        let _ = std::fs::remove_file(units.join("busd.socket"));
        let unit = root().join("rootfs-skel/on-dbus-daemon/busd.service");
        std::fs::write(units.join("busd.service"), read(&unit)?)
            .map_err(|e| format!("write {}: {e}", units.join("busd.service").display()))?;
        link(
            "etc/systemd/system/basic.target.wants/busd.service",
            "/etc/minos/units/busd.service",
        )
    } else {
        link(
            "etc/systemd/system/sockets.target.wants/busd.socket",
            "/etc/minos/units/busd.socket",
        )
    }
}

/// The account files of a base that minos adds to rather than replaces.
const ACCOUNT_FILES: [&str; 2] = ["etc/passwd", "etc/group"];

/// Adds the accounts of minos's `etc/passwd` and `etc/group` entries to the
/// base's files staged in `dir` (and a locked entry to `etc/shadow` and
/// `etc/gshadow` where the base has them), in place so that each file
/// keeps its owner and mode. Returns the entries merged so (those the base
/// had; the others are written as they are).
fn merge_base_accounts(entries: &[Entry], dir: &Path) -> Result<Vec<String>> {
    let ours = |path: &str| {
        entries.iter().find_map(|e| match e {
            Entry::File { path: p, data, .. } if p == path => {
                Some(String::from_utf8_lossy(data).into_owned())
            }
            _ => None,
        })
    };
    let theirs = |path: &str| -> Option<String> {
        let p = dir.join(path);
        let md = std::fs::symlink_metadata(&p).ok()?;
        md.is_file()
            .then(|| std::fs::read_to_string(&p).ok())
            .flatten()
    };
    let (Some(our_passwd), Some(our_group)) = (ours("etc/passwd"), ours("etc/group")) else {
        return Ok(Vec::new());
    };
    let (Some(base_passwd), Some(base_group)) = (theirs("etc/passwd"), theirs("etc/group")) else {
        return Ok(Vec::new());
    };
    let merged = merge_accounts(&base_passwd, &base_group, &our_passwd, &our_group);
    let rewrite = |path: &str, text: &str| -> Result<()> {
        let p = dir.join(path);
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| format!("write {}: {e}", p.display()))
    };
    rewrite("etc/passwd", &merged.passwd)?;
    rewrite("etc/group", &merged.group)?;
    // Locked: no password. shadow has nine fields, gshadow four.
    for (path, fields, names) in [
        ("etc/shadow", ":!:::::::", &merged.users),
        ("etc/gshadow", ":!::", &merged.groups),
    ] {
        let line = |n: &str| format!("{n}{fields}\n");
        if let Some(mut text) = theirs(path) {
            let mut added = false;
            for n in names {
                if !text
                    .lines()
                    .any(|l| l.split(':').next() == Some(n.as_str()))
                {
                    if !text.is_empty() && !text.ends_with('\n') {
                        text.push('\n');
                    }
                    text.push_str(&line(n));
                    added = true;
                }
            }
            if added {
                rewrite(path, &text)?;
            }
        }
    }
    Ok(ACCOUNT_FILES.iter().map(|s| (*s).to_string()).collect())
}

/// A base's account files with minos's accounts added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergedAccounts {
    pub passwd: String,
    pub group: String,
    /// The users and groups added.
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// Adds each account of `ours` (passwd and group lines) that the base
/// lacks by name, keeping every line of the base as it is. An id the base
/// uses already is replaced by the lowest free system id (100–999); a
/// user's group id follows its group's.
pub fn merge_accounts(
    base_passwd: &str,
    base_group: &str,
    our_passwd: &str,
    our_group: &str,
) -> MergedAccounts {
    let fields = |l: &str| -> Vec<String> { l.split(':').map(str::to_string).collect() };
    let names_ids = |text: &str| -> Vec<(String, u32)> {
        text.lines()
            .filter_map(|l| {
                let f = fields(l);
                Some((f.first()?.clone(), f.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let mut groups = names_ids(base_group);
    let mut users = names_ids(base_passwd);
    let free = |taken: &[(String, u32)], want: u32| -> u32 {
        if !taken.iter().any(|(_, id)| *id == want) {
            return want;
        }
        (100..1000)
            .find(|id| !taken.iter().any(|(_, t)| t == id))
            .unwrap_or(want)
    };
    let with_newline = |t: &str| {
        let mut t = t.to_string();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        t
    };
    let mut group = with_newline(base_group);
    let mut added_groups = Vec::new();
    // Our gid → the gid it has in the merged files.
    let mut gid_of: Vec<(u32, u32)> = Vec::new();
    for line in our_group.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = fields(line);
        let (Some(name), Some(gid)) = (f.first().cloned(), f.get(2).and_then(|g| g.parse().ok()))
        else {
            continue;
        };
        if let Some((_, have)) = groups.iter().find(|(n, _)| *n == name) {
            gid_of.push((gid, *have));
            continue;
        }
        let new = free(&groups, gid);
        gid_of.push((gid, new));
        if let Some(slot) = f.get_mut(2) {
            *slot = new.to_string();
        }
        groups.push((name.clone(), new));
        group.push_str(&f.join(":"));
        group.push('\n');
        added_groups.push(name);
    }
    let mut passwd = with_newline(base_passwd);
    let mut added_users = Vec::new();
    for line in our_passwd.lines().filter(|l| !l.trim().is_empty()) {
        let mut f = fields(line);
        let (Some(name), Some(uid)) = (f.first().cloned(), f.get(2).and_then(|u| u.parse().ok()))
        else {
            continue;
        };
        if users.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let new = free(&users, uid);
        if let Some(slot) = f.get_mut(2) {
            *slot = new.to_string();
        }
        if let Some(slot) = f.get_mut(3) {
            if let Some((_, g)) = slot
                .parse::<u32>()
                .ok()
                .and_then(|old| gid_of.iter().find(|(o, _)| *o == old))
            {
                *slot = g.to_string();
            }
        }
        users.push((name.clone(), new));
        passwd.push_str(&f.join(":"));
        passwd.push('\n');
        added_users.push(name);
    }
    MergedAccounts {
        passwd,
        group,
        users: added_users,
        groups: added_groups,
    }
}

/// Copies a base rootfs (a directory, or a tarball in any compression tar
/// recognises) into `dir`, keeping modes, owners and links.
fn unpack_base(base: &Path, dir: &Path) -> Result<()> {
    if base.is_dir() {
        run(std::process::Command::new("cp")
            .arg("-a")
            .arg(base.join("."))
            .arg(dir))
    } else if base.is_file() {
        run(std::process::Command::new("tar")
            .arg("-xpf")
            .arg(base)
            .arg("-C")
            .arg(dir))
    } else {
        Err(format!(
            "--base {}: neither a directory nor a tarball",
            base.display()
        ))
    }
}

/// Reads a staged tree back as entries (for an initrd made from a base).
pub fn entries_from_tree(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(std::result::Result::ok)
        .collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        let md =
            std::fs::symlink_metadata(&path).map_err(|err| format!("{}: {err}", path.display()))?;
        let mode = md.permissions().mode() & 0o7777;
        if md.file_type().is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(|err| format!("{}: {err}", path.display()))?;
            out.push(Entry::Symlink {
                path: rel,
                target: target.to_string_lossy().into_owned(),
            });
        } else if md.is_dir() {
            out.push(Entry::Dir {
                path: rel.clone(),
                mode,
            });
            entries_from_tree(&path, &rel, out)?;
        } else if md.is_file() {
            out.push(Entry::File {
                path: rel,
                mode,
                data: read(&path)?,
            });
        }
    }
    Ok(())
}

fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(std::result::Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => 4096 + tree_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len().div_ceil(4096) * 4096),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Image size for `content` bytes: ext4 overhead and free space, plus the
/// 1 MiB before the partition, rounded up to 128 MiB (Kata's alignment).
pub fn disk_size(content: u64) -> u64 {
    (PART_START + content * 3 / 2 + 16 * MIB).div_ceil(SIZE_ALIGN) * SIZE_ALIGN
}

/// One MBR partition entry in sfdisk's script syntax.
pub fn sfdisk_script(start: u64, size: u64) -> String {
    format!(
        "label: dos\nunit: sectors\n\nstart={}, size={}, type=83\n",
        start / 512,
        size / 512
    )
}

/// Runs `cmd` with `input` on its standard input; its output on success.
fn run_with_input(cmd: &mut std::process::Command, input: &str) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{shown}: {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| format!("{shown}: no stdin"))?
        .write_all(input.as_bytes())
        .map_err(|e| format!("{shown}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

fn sfdisk(image: &Path, script: &str) -> Result<()> {
    run_with_input(
        std::process::Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(image),
        script,
    )
    .map(drop)
}

/// Builds the disk image at `out` from `stage_dir`.
/// The root file system of the disk and dax kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    /// Read-only, compact; osbuilder's `erofs` option.
    Erofs,
}

impl Fs {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ext4" => Ok(Fs::Ext4),
            "erofs" => Ok(Fs::Erofs),
            other => Err(format!("unknown --fs {other:?} (ext4, erofs)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Erofs => "erofs",
        }
    }
}

/// Builds the disk image at `out` from `stage_dir` with file system `fs`.
pub fn disk_fs(stage_dir: &Path, out: &Path, fs: Fs) -> Result<()> {
    ensure_packages(&[("mkfs.ext4", "e2fsprogs"), ("sfdisk", "fdisk")])?;
    let size = disk_size(tree_bytes(stage_dir));
    let part_size = size - PART_START;
    let part = out.with_extension("part");
    let _ = std::fs::remove_file(&part);
    if fs == Fs::Erofs {
        ensure_packages(&[("mkfs.erofs", "erofs-utils")])?;
        run(std::process::Command::new("mkfs.erofs")
            .args(["--quiet", "-T0", "--all-root"])
            .arg(&part)
            .arg(stage_dir)
            .stdout(std::process::Stdio::null()))?;
    } else {
        run(std::process::Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-b",
                "4096",
                "-L",
                "rootfs",
                "-E",
                "root_owner=0:0",
                "-d",
            ])
            .arg(stage_dir)
            .arg(&part)
            .arg(format!("{}k", part_size / 1024))
            .stdout(std::process::Stdio::null()))?;
        align_init(&part, stage_dir)?;
    }
    let mut img =
        std::fs::File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    img.set_len(size)
        .map_err(|e| format!("size {}: {e}", out.display()))?;
    let mut src =
        std::fs::File::open(&part).map_err(|e| format!("open {}: {e}", part.display()))?;
    std::io::Seek::seek(&mut img, std::io::SeekFrom::Start(PART_START))
        .map_err(|e| e.to_string())?;
    std::io::copy(&mut src, &mut img).map_err(|e| format!("copy into {}: {e}", out.display()))?;
    drop(img);
    let _ = std::fs::remove_file(&part);
    sfdisk(out, &sfdisk_script(PART_START, part_size))
}

/// 4 KiB file-system blocks in a 2 MiB page.
const BLOCKS_PER_HUGE_PAGE: u64 = DAX_ALIGN as u64 / 4096;

/// The regular file that is /sbin/init in `stage_dir` (`usr/sbin/init` on a
/// merged-/usr base), as a path inside the image, when it is at least
/// 2 MiB: only then can a 2 MiB page map it.
fn init_to_align(stage_dir: &Path) -> Option<(String, u64)> {
    ["sbin/init", "usr/sbin/init"].into_iter().find_map(|rel| {
        let path = stage_dir.join(rel);
        let dir_is_real = path
            .parent()
            .and_then(|d| std::fs::symlink_metadata(d).ok())
            .is_some_and(|m| m.is_dir());
        let md = std::fs::symlink_metadata(&path).ok()?;
        (dir_is_real && md.is_file() && md.len() >= u64::from(DAX_ALIGN))
            .then(|| (format!("/{rel}"), md.len()))
    })
}

/// The free block ranges (first, last) in `dumpe2fs` output.
pub fn free_block_ranges(dumpe2fs: &str) -> Vec<(u64, u64)> {
    dumpe2fs
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("Free blocks:"))
        .flat_map(|list| list.split(','))
        .filter_map(|r| {
            let r = r.trim();
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// The first block `t` with `[t, t + count)` free whose device offset
/// (`offset_blocks + t`) is a multiple of 2 MiB.
pub fn huge_aligned_run(free: &[(u64, u64)], count: u64, offset_blocks: u64) -> Option<u64> {
    free.iter().find_map(|&(first, last)| {
        let t = first
            + (BLOCKS_PER_HUGE_PAGE - (offset_blocks + first) % BLOCKS_PER_HUGE_PAGE)
                % BLOCKS_PER_HUGE_PAGE;
        (t.checked_add(count)? <= last + 1).then_some(t)
    })
}

fn debugfs(part: &Path, write: bool, commands: &str) -> Result<String> {
    let mut cmd = std::process::Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let out = run_with_input(cmd.args(["-f", "-"]).arg(part), commands)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The file system block holding byte 0 of `fs_path`.
fn first_block(part: &Path, fs_path: &str) -> Result<u64> {
    let out = debugfs(part, false, &format!("bmap {fs_path} 0\n"))?;
    out.lines()
        .filter(|l| !l.starts_with("debugfs"))
        .find_map(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("debugfs bmap {fs_path}: no block in {out:?}"))
}

/// Moves init's data (ext4 partition `part`, files from `stage_dir`) to a
/// run of blocks that starts on a 2 MiB boundary of the DAX device (the
/// partition starts `PART_START` into its data area, which is itself 2 MiB
/// aligned), so that the kernel can map init's first 2 MiB — its code,
/// padded to that size by init/build.rs — with one page-table entry: on a
/// DAX root every 4 KiB page is otherwise a page fault of its own.
///
/// libext2fs allocates a new file's blocks from the first free block up, so
/// the free blocks before the chosen run are marked in use while debugfs
/// writes the file again, and released after. Nothing else moves. The
/// result is checked: the first block must be the chosen one.
fn align_init(part: &Path, stage_dir: &Path) -> Result<()> {
    let Some((fs_path, len)) = init_to_align(stage_dir) else {
        return Ok(());
    };
    let host = stage_dir.join(fs_path.trim_start_matches('/'));
    let offset_blocks = PART_START / 4096;
    if (offset_blocks + first_block(part, &fs_path)?).is_multiple_of(BLOCKS_PER_HUGE_PAGE) {
        return Ok(());
    }
    debugfs(part, true, &format!("rm {fs_path}\n"))?;
    let out = std::process::Command::new("dumpe2fs")
        .arg(part)
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("dumpe2fs: {e}"))?;
    let free = free_block_ranges(&String::from_utf8_lossy(&out.stdout));
    let count = len.div_ceil(4096);
    let target = huge_aligned_run(&free, count, offset_blocks)
        .ok_or_else(|| format!("no free 2 MiB-aligned run of {count} blocks for {fs_path}"))?;
    let before: Vec<(u64, u64)> = free
        .iter()
        .filter(|(first, _)| *first < target)
        .map(|&(first, last)| (first, last.min(target - 1) - first + 1))
        .collect();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&host)
            .map_err(|e| format!("{}: {e}", host.display()))?
            .permissions(),
    );
    let mut script = String::new();
    for (first, n) in &before {
        script.push_str(&format!("setb {first} {n}\n"));
    }
    script.push_str(&format!("write {} {fs_path}\n", host.display()));
    for (first, n) in &before {
        script.push_str(&format!("freeb {first} {n}\n"));
    }
    script.push_str(&format!(
        "sif {fs_path} mode 0{:o}\nsif {fs_path} uid 0\nsif {fs_path} gid 0\n",
        0o100000 | (mode & 0o7777)
    ));
    debugfs(part, true, &script)?;
    let got = first_block(part, &fs_path)?;
    if got != target {
        return Err(format!(
            "{fs_path} landed at block {got}, not the 2 MiB-aligned block {target}"
        ));
    }
    Ok(())
}

/// Fletcher-64 over 32-bit little-endian words, as the kernel's nd_fletcher64.
pub fn fletcher64(data: &[u8]) -> u64 {
    let (mut lo, mut hi) = (0u32, 0u32);
    for w in data.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        hi = hi.wrapping_add(lo);
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The NVDIMM PFN info block (struct nd_pfn_sb, 4 KiB) that makes the kernel
/// map the namespace in fsdax mode with the data at `dataoff`.
pub fn pfn_info_block(namespace_size: u64, dataoff: u64, align: u32) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[..16].copy_from_slice(b"NVDIMM_PFN_INFO\0");
    // uuid: any non-zero value; parent_uuid stays zero (label-less namespace).
    b[16..32].copy_from_slice(&[
        0x6d, 0x69, 0x6e, 0x6f, 0x73, 0x2d, 0x64, 0x61, 0x78, 0x2d, 0x68, 0x64, 0x72, 0x00, 0x00,
        0x01,
    ]);
    let put = |b: &mut Vec<u8>, off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(&mut b, 48, &0u32.to_le_bytes()); // flags
    put(&mut b, 52, &1u16.to_le_bytes()); // version_major
    put(&mut b, 54, &4u16.to_le_bytes()); // version_minor
    put(&mut b, 56, &dataoff.to_le_bytes());
    put(
        &mut b,
        64,
        &((namespace_size - dataoff) / 4096).to_le_bytes(),
    ); // npfns
       // mode: PFN_MODE_RAM — the struct pages live in guest RAM, so the header
       // stays 2 MiB whatever the image size (PFN_MODE_PMEM would need 64 bytes
       // of header per 4 KiB page).
    put(&mut b, 72, &1u32.to_le_bytes());
    put(&mut b, 76, &0u32.to_le_bytes()); // start_pad
    put(&mut b, 80, &0u32.to_le_bytes()); // end_trunc
    put(&mut b, 84, &align.to_le_bytes());
    put(&mut b, 88, &4096u32.to_le_bytes()); // page_size
    put(&mut b, 92, &64u16.to_le_bytes()); // page_struct_size
    let sum = fletcher64(&b);
    put(&mut b, 4088, &sum.to_le_bytes());
    b
}

/// A classic MBR with one Linux partition (type 0x83) at `start` sectors.
pub fn mbr(disk_id: u32, start: u64, sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let e = &mut m[446..462];
    // CHS fields set to the "beyond 8 GiB" marker; LBA fields are what count.
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[4] = 0x83;
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&u32::try_from(start).unwrap_or(u32::MAX).to_le_bytes());
    e[12..16].copy_from_slice(&u32::try_from(sectors).unwrap_or(u32::MAX).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// Builds the DAX image: Kata's 2 MiB header, then the disk image.
pub fn dax(disk_image: &Path, out: &Path) -> Result<()> {
    let disk_len = std::fs::metadata(disk_image)
        .map_err(|e| format!("{}: {e}", disk_image.display()))?
        .len();
    let header = out.with_extension("header");
    // As osbuilder: the header's MBR points at the rootfs partition behind it
    // (header + 1 MiB), ending 1 MiB before the disk image's size. The
    // partition lies beyond the 2 MiB header, so the MBR is written here
    // rather than by a partitioning tool.
    let start = DAX_HEADER + PART_START;
    let end = disk_len - MIB;
    let mut head = vec![0u8; DAX_HEADER as usize];
    head[..512].copy_from_slice(&mbr(0x6d69_6e6f, start / 512, (end - start) / 512));
    let block = pfn_info_block(DAX_HEADER + disk_len, DAX_HEADER, DAX_ALIGN);
    head[PFN_INFO_OFFSET as usize..PFN_INFO_OFFSET as usize + block.len()].copy_from_slice(&block);
    std::fs::write(&header, &head).map_err(|e| format!("write {}: {e}", header.display()))?;
    let mut o = std::fs::File::create(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    for p in [&header, &disk_image.to_path_buf()] {
        let mut i = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
        std::io::copy(&mut i, &mut o).map_err(|e| format!("write {}: {e}", out.display()))?;
    }
    let _ = std::fs::remove_file(&header);
    drop(o);
    no_inode_readahead(out)
}

/// The ext4 mount option a DAX root gets from its superblock
/// (`tune2fs -E mount_opts=`): no inode-table readahead. On a block device
/// ext4 reads up to 32 inode-table blocks ahead of the one it needs, in
/// the background; on DAX (NVDIMM) every read is a copy made there and then
/// by the CPU, so each first look at an inode in a new part of the table
/// costs the boot those 32 blocks. A distribution's tree (an osbuilder
/// rootfs) spreads the inodes a boot needs over many parts of the table.
pub const DAX_MOUNT_OPTS: &str = "inode_readahead_blks=0";

/// Stores [`DAX_MOUNT_OPTS`] in the superblock of the DAX image's root
/// partition when it is ext4 (EROFS has no such option).
fn no_inode_readahead(dax_image: &Path) -> Result<()> {
    use std::io::{Read, Seek};
    let part = DAX_HEADER + PART_START;
    let mut magic = [0u8; 2];
    let mut f =
        std::fs::File::open(dax_image).map_err(|e| format!("open {}: {e}", dax_image.display()))?;
    // s_magic, 0x38 into the superblock at 1024.
    f.seek(std::io::SeekFrom::Start(part + 1024 + 0x38))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|e| format!("read {}: {e}", dax_image.display()))?;
    if magic != [0x53, 0xef] {
        return Ok(());
    }
    run(std::process::Command::new("tune2fs")
        .arg("-E")
        .arg(format!("mount_opts={DAX_MOUNT_OPTS}"))
        .arg(format!("{}?offset={part}", dax_image.display()))
        .stdout(std::process::Stdio::null()))
}

/// Builds the image of `kind` under target/images (file names starting with
/// `name`) and returns its path. `extra` entries are added to the rootfs.
pub fn build(
    kind: &str,
    bin: &Path,
    agent: Option<&Path>,
    extra: &[Entry],
    name: &str,
) -> Result<PathBuf> {
    build_on(kind, bin, agent, extra, name, None, Fs::Ext4)
}

/// Like [`build`], on top of a base rootfs (directory or tarball): the base's
/// files stay, minos's replace them where both exist (its init among them).
pub fn build_on(
    kind: &str,
    bin: &Path,
    agent: Option<&Path>,
    extra: &[Entry],
    name: &str,
    base: Option<&Path>,
    fs: Fs,
) -> Result<PathBuf> {
    let dir = root().join("target/images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    match kind {
        "initrd" if base.is_some() => {
            let stage_dir = dir.join(format!("{name}-rootfs"));
            stage(&rootfs(bin, agent, true, true, extra)?, &stage_dir, base)?;
            from_stage("initrd", &stage_dir, name, fs)
        }
        "initrd" => initrd(
            bin,
            agent,
            extra,
            &dir.join(format!("{name}-initrd.cpio.gz")),
        ),
        "disk" | "dax" => {
            let stage_dir = dir.join(format!("{name}-rootfs"));
            stage(
                &rootfs(bin, agent, false, base.is_some(), extra)?,
                &stage_dir,
                base,
            )?;
            from_stage(kind, &stage_dir, name, fs)
        }
        other => Err(format!("unknown --kind {other:?} (initrd, disk, dax)")),
    }
}

/// Builds the image of `kind` under target/images from a staged root tree
/// (any rootfs, minos or not) and returns its path.
pub fn from_stage(kind: &str, stage_dir: &Path, name: &str, fs: Fs) -> Result<PathBuf> {
    let dir = root().join("target/images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    match kind {
        "initrd" => {
            let mut entries = Vec::new();
            entries_from_tree(stage_dir, "", &mut entries)?;
            entries.push(Entry::CharDev {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            });
            let out = dir.join(format!("{name}-initrd.cpio.gz"));
            write_initrd(&entries, &out)?;
            Ok(out)
        }
        "disk" | "dax" => {
            let disk_img = dir.join(format!("{name}-disk.img"));
            disk_fs(stage_dir, &disk_img, fs)?;
            if kind == "disk" {
                return Ok(disk_img);
            }
            let out = dir.join(format!("{name}-dax.img"));
            dax(&disk_img, &out)?;
            Ok(out)
        }
        other => Err(format!("unknown image kind {other:?} (initrd, disk, dax)")),
    }
}

pub fn main(args: &crate::cli::ImageArgs) -> Result<()> {
    let kind = args.kind.as_str();
    let agent = args.agent.clone();
    let base = args.base.clone();
    let fs = Fs::parse(&args.fs)?;
    let bin = crate::build()?;
    let p = build_on(
        kind,
        &bin,
        agent.as_deref(),
        &[],
        "minos",
        base.as_deref(),
        fs,
    )?;
    println!("xtask: {kind} image ({}): {}", fs.name(), p.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout_is_what_cpio_reads() {
        let entries = vec![
            Entry::Dir {
                path: "etc".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "etc/hostname".into(),
                mode: 0o644,
                data: b"minos\n".to_vec(),
            },
            Entry::Symlink {
                path: "init".into(),
                target: "sbin/init".into(),
            },
            Entry::CharDev {
                path: "dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        ];
        let mut buf = Vec::new();
        write_cpio(&entries, &mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        let dir = std::env::temp_dir().join(format!("minos-cpio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = dir.join("a.cpio");
        std::fs::write(&archive, &buf).unwrap();
        // GNU cpio lists what it reads: the archive is valid newc.
        let out = std::process::Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(list.contains("etc/hostname"), "{list}");
        assert!(list.contains("init -> sbin/init"), "{list}");
        assert!(
            list.lines()
                .any(|l| l.starts_with("crw-------") && l.contains("dev/console")),
            "{list}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Files and bytes of an initrd, from ours and from GNU cpio + gzip on
    /// a real tree; a cut archive is an error, not a panic.
    #[test]
    fn cpio_stats_counts_regular_files_of_any_newc_initrd() {
        let dir = std::env::temp_dir().join(format!("minos-cpio-stats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/a"), vec![0xCC; 5001]).unwrap();
        std::fs::write(tree.join("hostname"), b"minos\n").unwrap();
        std::fs::write(tree.join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("usr/bin/a", tree.join("init")).unwrap();
        let mut entries = Vec::new();
        entries_from_tree(&tree, "", &mut entries).unwrap();
        entries.push(Entry::CharDev {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        });
        let ours = dir.join("ours.cpio.gz");
        write_initrd(&entries, &ours).unwrap();
        assert_eq!(cpio_stats(&ours).unwrap(), (3, 5007));

        let gnu = dir.join("gnu.cpio.gz");
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && find . | cpio -H newc -o --quiet | gzip -9 > '{}'",
                tree.display(),
                gnu.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(cpio_stats(&gnu).unwrap(), (3, 5007));

        let mut raw = Vec::new();
        write_cpio(&entries, &mut raw).unwrap();
        let cut = dir.join("cut.cpio.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw[..raw.len() / 2]).unwrap();
        std::fs::write(&cut, gz.finish().unwrap()).unwrap();
        let err = cpio_stats(&cut).unwrap_err();
        assert!(
            err.contains("cut.cpio.gz") && err.contains("ends inside"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn sfdisk_dump(image: &Path) -> String {
        let o = std::process::Command::new("sfdisk")
            .arg("-d")
            .arg(image)
            .output()
            .unwrap();
        assert!(o.status.success(), "sfdisk -d {}", image.display());
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The values Kata's osbuilder (image_builder.sh) uses: partition from
    /// 1 MiB, 4 KiB ext4 blocks, images rounded up to 128 MiB, a 2 MiB DAX
    /// header with 2 MiB alignment and the PFN info block at 4 KiB.
    #[test]
    fn disk_and_dax_layout_match_kata_osbuilder() {
        assert_eq!(
            (
                PART_START,
                SIZE_ALIGN,
                DAX_HEADER,
                DAX_ALIGN,
                PFN_INFO_OFFSET
            ),
            (MIB, 128 * MIB, 2 * MIB, 2 << 20, 4096)
        );
        for content in [0, 1, 50 * MIB, 100 * MIB, 300 * MIB] {
            let size = disk_size(content);
            assert_eq!(size % SIZE_ALIGN, 0);
            assert!(size >= PART_START + content);
        }
        let dir = std::env::temp_dir().join(format!("minos-image-test-{}", std::process::id()));
        let stage_dir = dir.join("stage");
        let entries = vec![
            Entry::Dir {
                path: "etc".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "etc/hostname".into(),
                mode: 0o644,
                data: b"minos\n".to_vec(),
            },
            Entry::Symlink {
                path: "init".into(),
                target: "sbin/init".into(),
            },
        ];
        stage(&entries, &stage_dir, None).unwrap();
        let disk_img = dir.join("disk.img");
        disk_fs(&stage_dir, &disk_img, Fs::Ext4).unwrap();
        let len = std::fs::metadata(&disk_img).unwrap().len();
        assert_eq!(len, 128 * MIB);
        let dump = sfdisk_dump(&disk_img);
        assert!(dump.contains("label: dos"), "{dump}");
        assert!(
            dump.contains(&format!(
                "start=        2048, size=      {}, type=83",
                (len - MIB) / 512
            )),
            "{dump}"
        );
        // The file system inside is clean and has the files.
        let fs = format!("{}?offset={}", disk_img.display(), PART_START);
        let fsck = std::process::Command::new("e2fsck")
            .arg("-fn")
            .arg(&fs)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        let dumpe2fs = std::process::Command::new("dumpe2fs")
            .arg("-h")
            .arg(&fs)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&dumpe2fs.stdout).contains("Block size:               4096")
        );
        let cat = std::process::Command::new("debugfs")
            .args(["-R", "cat /etc/hostname"])
            .arg(&fs)
            .output()
            .unwrap();
        assert_eq!(cat.stdout, b"minos\n");

        let dax_img = dir.join("dax.img");
        dax(&disk_img, &dax_img).unwrap();
        let bytes = std::fs::read(&dax_img).unwrap();
        assert_eq!(bytes.len() as u64, len + DAX_HEADER);
        let dump = sfdisk_dump(&dax_img);
        assert!(
            dump.contains(&format!(
                "start=        6144, size=      {}, type=83",
                (len - MIB - 3 * MIB) / 512
            )),
            "{dump}"
        );
        // Behind the header: the disk image, byte for byte but for the
        // superblock's mount options (and its checksum).
        let disk = std::fs::read(&disk_img).unwrap();
        let sb = (PART_START + 1024) as usize..(PART_START + 2048) as usize;
        let behind = &bytes[DAX_HEADER as usize..];
        assert!(behind[..sb.start] == disk[..sb.start]);
        assert!(behind[sb.end..] == disk[sb.end..]);
        let mount_opts = |image: &Path, offset: u64| {
            let out = std::process::Command::new("dumpe2fs")
                .arg("-h")
                .arg(format!("{}?offset={offset}", image.display()))
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
                l.strip_prefix("Mount options:")
                    .map(|v| v.trim().to_string())
            })
        };
        assert_eq!(
            mount_opts(&dax_img, DAX_HEADER + PART_START).as_deref(),
            Some(DAX_MOUNT_OPTS)
        );
        assert_eq!(mount_opts(&disk_img, PART_START), None);
        let pfn = &bytes[4096..8192];
        assert_eq!(&pfn[..16], b"NVDIMM_PFN_INFO\0");
        let u64_at = |o: usize| u64::from_le_bytes(pfn[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(pfn[o..o + 4].try_into().unwrap());
        assert_eq!(u64_at(56), DAX_HEADER, "dataoff");
        assert_eq!(u64_at(64), len / 4096, "npfns");
        assert_eq!(u32_at(72), 1, "mode: PFN_MODE_RAM");
        assert_eq!(u32_at(84), DAX_ALIGN, "align");
        assert_eq!(u32_at(88), 4096, "page_size");
        assert_eq!(
            &pfn[32..48],
            &[0u8; 16],
            "parent_uuid of a label-less namespace"
        );
        let mut zeroed = pfn.to_vec();
        zeroed[4088..].fill(0);
        assert_eq!(
            u64_at(4088),
            fletcher64(&zeroed),
            "checksum as nd_sb_checksum computes it"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn fletcher64_known_value() {
        // Words 1, 2: lo = 3, hi = 1 + 3 = 4.
        assert_eq!(fletcher64(&[1, 0, 0, 0, 2, 0, 0, 0]), (4u64 << 32) | 3);
    }

    /// `--base`: the base rootfs's files stay, its init is replaced (not
    /// written through its link to systemd), for a directory and a tarball.
    /// A dynamically linked C program runs chrooted in a tree holding only
    /// itself and what `runtime_libraries` found for it (as Kata's agent
    /// must in an image); a static one needs nothing; a cut file is an
    /// error, not a panic.
    #[test]
    fn a_dynamic_program_runs_with_only_the_libraries_found_for_it() {
        let dir = std::env::temp_dir().join(format!("minos-libs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.c"),
            "#include <stdio.h>\n#include <math.h>\nint main(int c, char **v) \
             { printf(\"dynamic %.1f\\n\", sqrt((double)c * 4.0)); return 0; }\n",
        )
        .unwrap();
        run(std::process::Command::new("cc")
            .current_dir(&dir)
            .args(["-O1", "-o", "p", "p.c", "-lm"]))
        .unwrap();
        let program = dir.join("p");
        let needs = crate::elf::dynamic(&std::fs::read(&program).unwrap()).unwrap();
        assert_eq!(needs.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(needs.needed.iter().any(|n| n == "libc.so.6"), "{needs:?}");
        assert!(needs.needed.iter().any(|n| n == "libm.so.6"), "{needs:?}");
        let mut entries = runtime_libraries(&program).unwrap();
        let paths: Vec<&str> = entries.iter().map(Entry::path).collect();
        for want in [
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib/x86_64-linux-gnu/libm.so.6",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
        entries.push(Entry::File {
            path: "p".into(),
            mode: 0o755,
            data: std::fs::read(&program).unwrap(),
        });
        let tree = dir.join("tree");
        stage(&entries, &tree, None).unwrap();
        let out = std::process::Command::new("chroot")
            .arg(&tree)
            .arg("/p")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "dynamic 2.0\n");
        // init is static: nothing to copy.
        let init = crate::util::release_dir().join("init");
        if init.is_file() {
            assert!(runtime_libraries(&init).unwrap().is_empty());
        }
        let data = std::fs::read(&program).unwrap();
        for cut in [7, 64, 300, data.len() / 2] {
            let _ = crate::elf::dynamic(&data[..cut]);
        }
        assert!(crate::elf::dynamic(b"#!/bin/sh\n").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn overlay_onto_a_base_rootfs_keeps_its_files_and_replaces_its_init() {
        let dir = std::env::temp_dir().join(format!("minos-base-test-{}", std::process::id()));
        let base = dir.join("base");
        for d in ["usr/lib/systemd", "usr/sbin", "usr/bin", "etc"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::os::unix::fs::symlink("usr/sbin", base.join("sbin")).unwrap();
        std::fs::write(base.join("usr/lib/systemd/systemd"), b"systemd").unwrap();
        std::os::unix::fs::symlink("../lib/systemd/systemd", base.join("usr/sbin/init")).unwrap();
        std::fs::write(base.join("usr/bin/systemctl"), b"systemctl").unwrap();
        std::fs::write(base.join("etc/os-release"), b"ID=debian\n").unwrap();
        std::fs::write(base.join("etc/passwd"), DEBIAN_PASSWD).unwrap();
        std::fs::write(base.join("etc/group"), DEBIAN_GROUP).unwrap();
        std::fs::write(base.join("etc/shadow"), "root:*:20794:0:99999:7:::\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                base.join("etc/shadow"),
                std::fs::Permissions::from_mode(0o640),
            )
            .unwrap();
        }
        let tarball = dir.join("base.tar.gz");
        run(std::process::Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&base)
            .arg("."))
        .unwrap();
        let entries = vec![
            Entry::Dir {
                path: "sbin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "sbin/init".into(),
                mode: 0o755,
                data: b"minos-init".to_vec(),
            },
            Entry::Symlink {
                path: "usr/bin/systemctl".into(),
                target: "/sbin/init".into(),
            },
            Entry::File {
                path: "etc/group".into(),
                mode: 0o644,
                data: include_bytes!("../../rootfs-skel/overlay/etc/group").to_vec(),
            },
            Entry::File {
                path: "etc/passwd".into(),
                mode: 0o644,
                data: include_bytes!("../../rootfs-skel/overlay/etc/passwd").to_vec(),
            },
        ];
        for (name, b) in [("from-dir", &base), ("from-tarball", &tarball)] {
            let out = dir.join(name);
            stage(&entries, &out, Some(b)).unwrap();
            assert_eq!(
                std::fs::read(out.join("etc/os-release")).unwrap(),
                b"ID=debian\n",
                "{name}"
            );
            assert_eq!(
                std::fs::read(out.join("usr/lib/systemd/systemd")).unwrap(),
                b"systemd",
                "{name}: not written through the link"
            );
            // Merged /usr: /sbin/init lands in usr/sbin, as a regular file.
            let md = std::fs::symlink_metadata(out.join("usr/sbin/init")).unwrap();
            assert!(md.is_file(), "{name}");
            assert_eq!(
                std::fs::read(out.join("sbin/init")).unwrap(),
                b"minos-init",
                "{name}"
            );
            assert_eq!(
                std::fs::read_link(out.join("usr/bin/systemctl")).unwrap(),
                Path::new("/sbin/init"),
                "{name}"
            );
            // Accounts added, the base's kept; shadow keeps its mode.
            let passwd = std::fs::read_to_string(out.join("etc/passwd")).unwrap();
            assert!(passwd.starts_with(DEBIAN_PASSWD), "{name}: {passwd}");
            assert!(passwd.contains("\ntimesync:x:101:102:"), "{name}: {passwd}");
            let shadow = std::fs::read_to_string(out.join("etc/shadow")).unwrap();
            assert_eq!(
                shadow, "root:*:20794:0:99999:7:::\ntimesync:!:::::::\n",
                "{name}"
            );
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(out.join("etc/shadow"))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o640, "{name}");
            }
            assert!(!out.join("etc/gshadow").exists(), "{name}: none made");
            let mut back = Vec::new();
            entries_from_tree(&out, "", &mut back).unwrap();
            assert!(back.iter().any(|e| matches!(e, Entry::Symlink { path, target } if path == "sbin" && target == "usr/sbin")));
            assert!(back.iter().any(|e| matches!(e, Entry::File { path, data, .. } if path == "usr/sbin/init" && data == b"minos-init")));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Debian 12's accounts (debootstrap minbase with systemd and chrony):
    /// chrony's group has gid 101, minos's timesync too.
    const DEBIAN_PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
_apt:x:42:65534::/nonexistent:/usr/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
systemd-network:x:998:998:systemd Network Management:/:/usr/sbin/nologin\n\
_chrony:x:100:101:Chrony daemon,,,:/var/lib/chrony:/usr/sbin/nologin\n";
    const DEBIAN_GROUP: &str = "root:x:0:\nshadow:x:42:\nusers:x:100:\nnogroup:x:65534:\n\
systemd-journal:x:999:\nsystemd-network:x:998:\n_chrony:x:101:\n";

    #[test]
    fn accounts_are_added_to_a_debian_base_never_replaced() {
        let ours_passwd = include_str!("../../rootfs-skel/overlay/etc/passwd");
        let ours_group = include_str!("../../rootfs-skel/overlay/etc/group");
        let m = merge_accounts(DEBIAN_PASSWD, DEBIAN_GROUP, ours_passwd, ours_group);
        // Every line of the base, in order, first.
        assert!(m.passwd.starts_with(DEBIAN_PASSWD), "{}", m.passwd);
        assert!(m.group.starts_with(DEBIAN_GROUP), "{}", m.group);
        // root, nobody and nogroup exist: not added again.
        assert_eq!(m.users, vec!["timesync"]);
        assert_eq!(m.groups, vec!["timesync"]);
        // gid 101 is _chrony's, 100 users': the next free one; uid 101 is
        // free; the user's group follows its group.
        assert!(m.group.ends_with("timesync:x:102:\n"), "{}", m.group);
        assert!(
            m.passwd
                .ends_with("timesync:x:101:102:minos timesync:/run/timesync:/sbin/nologin\n"),
            "{}",
            m.passwd
        );
        // Merging again adds nothing.
        let again = merge_accounts(&m.passwd, &m.group, ours_passwd, ours_group);
        assert_eq!(again.passwd, m.passwd);
        assert_eq!(again.group, m.group);
        assert!(again.users.is_empty() && again.groups.is_empty());
        // A base without a final newline keeps its last line whole.
        let m = merge_accounts(
            "root:x:0:0::/:/bin/sh",
            "root:x:0:",
            ours_passwd,
            ours_group,
        );
        assert!(
            m.passwd
                .starts_with("root:x:0:0::/:/bin/sh\ntimesync:x:101:101:"),
            "{}",
            m.passwd
        );
    }

    #[test]
    fn free_block_ranges_read_dumpe2fs_lists() {
        let text = "Group 0: (Blocks 0-32767)\n  Free blocks: 1035-1055, 1100, 2000-32767\n  Free inodes: 12-8192\nGroup 1: (Blocks 32768-65535)\n  Free blocks: \n";
        assert_eq!(
            free_block_ranges(text),
            vec![(1035, 1055), (1100, 1100), (2000, 32767)]
        );
    }

    #[test]
    fn huge_aligned_run_starts_on_a_2mib_device_offset() {
        // The partition starts 256 blocks (1 MiB) into the device: block
        // 256 of the file system is at 2 MiB.
        let free = [(10, 300), (400, 5000)];
        assert_eq!(huge_aligned_run(&free, 40, 256), Some(256));
        // 46 blocks from 256 do not fit before 300: the next aligned block
        // of the second run.
        assert_eq!(huge_aligned_run(&free, 46, 256), Some(768));
        assert_eq!(huge_aligned_run(&free, 45, 256), Some(256));
        assert_eq!(huge_aligned_run(&free, 4300, 256), None);
        assert_eq!(huge_aligned_run(&free, 10, 0), Some(512));
    }

    /// A real ext4 file system made by mkfs.ext4 -d: init is moved to a
    /// 2 MiB-aligned run, with its contents and mode, the other files where
    /// they were, and e2fsck finds nothing wrong.
    #[test]
    fn init_is_moved_to_a_2mib_aligned_run_and_the_file_system_is_clean() {
        let dir = std::env::temp_dir().join(format!("minos-align-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let stage = dir.join("stage");
        std::fs::create_dir_all(stage.join("sbin")).unwrap();
        std::fs::create_dir_all(stage.join("etc")).unwrap();
        // A small file first, so that init does not start aligned by luck.
        std::fs::write(stage.join("etc/a"), vec![7u8; 5 * 4096 + 3]).unwrap();
        let init: Vec<u8> = (0..2 * 1024 * 1024 + 12345u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(stage.join("sbin/init"), &init).unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(stage.join("sbin/init"))
                .unwrap()
                .permissions(),
            0o755,
        );
        std::fs::set_permissions(
            stage.join("sbin/init"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let part = dir.join("part");
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
            .arg(&stage)
            .arg(&part)
            .arg("32768k")
            .stdout(std::process::Stdio::null()))
        .unwrap();
        let a_before = first_block(&part, "/etc/a").unwrap();
        align_init(&part, &stage).unwrap();
        let block = first_block(&part, "/sbin/init").unwrap();
        assert_eq!(
            (PART_START / 4096 + block) % BLOCKS_PER_HUGE_PAGE,
            0,
            "{block}"
        );
        assert_eq!(first_block(&part, "/etc/a").unwrap(), a_before);
        // One extent: contiguous from the aligned block.
        let last = (init.len() as u64).div_ceil(4096) - 1;
        let out = debugfs(&part, false, &format!("bmap /sbin/init {last}\n")).unwrap();
        assert!(
            out.lines().any(|l| l.trim() == (block + last).to_string()),
            "{out}"
        );
        let back = dir.join("back");
        debugfs(
            &part,
            false,
            &format!("dump /sbin/init {}\n", back.display()),
        )
        .unwrap();
        assert!(std::fs::read(&back).unwrap() == init, "contents differ");
        let stat = debugfs(&part, false, "stat /sbin/init\n").unwrap();
        assert!(stat.contains("Mode:  0755"), "{stat}");
        assert!(stat.contains("User:     0   Group:     0"), "{stat}");
        let fsck = std::process::Command::new("e2fsck")
            .args(["-f", "-n"])
            .arg(&part)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
