//! The systems the boot benchmark compares, each a root tree with
//! agent-shim where kata-agent would be, built into the same image kinds:
//!
//! - `minos`: the project's image (init, timesync, agent-shim);
//! - `agent-init`: agent-shim as /sbin/init, Kata's `AGENT_INIT=yes` image;
//! - `busybox`: Debian's busybox-static as init, an inittab that mounts what
//!   the agent needs and starts it;
//! - `systemd`: Debian 12 (`debootstrap --variant=minbase` with systemd,
//!   systemd-sysv, chrony, iptables and dbus) configured as Kata's
//!   osbuilder configures it;
//! - `minos-osbuilder`: that same tree with only `/sbin/init` (and the
//!   `systemctl` it calls) replaced by minos's init, as a user drops minos
//!   into an osbuilder rootfs: systemd stays installed, its units are read
//!   from `/usr/lib/systemd/system`.
//!
//! Downloads (busybox-static's package, the debootstrap tree) are cached in
//! ~/.cache/minos/bench, so a second run and a fresh clone reuse them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{self, Entry, Fs};
use crate::util::{ensure_packages, root, run, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    Minos,
    AgentInit,
    Busybox,
    Systemd,
    MinosOsbuilder,
}

impl System {
    pub const ALL: [System; 5] = [
        System::Minos,
        System::AgentInit,
        System::Busybox,
        System::Systemd,
        System::MinosOsbuilder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            System::Minos => "minos",
            System::AgentInit => "agent-init",
            System::Busybox => "busybox",
            System::Systemd => "systemd",
            System::MinosOsbuilder => "minos-osbuilder",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            System::Minos => "minos (init + timesync + busd + agent)",
            System::AgentInit => "agent as init",
            System::Busybox => "busybox init",
            System::Systemd => "systemd + chrony",
            System::MinosOsbuilder => "osbuilder rootfs, /sbin/init → minos",
        }
    }

    /// Every system's name, for the command line.
    pub fn names() -> [&'static str; 5] {
        Self::ALL.map(System::name)
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|sys| sys.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown system {s:?} (minos, agent-init, busybox, systemd, minos-osbuilder)"
                )
            })
    }
}

fn cache() -> PathBuf {
    crate::kernel::cache_dir().join("bench")
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
}

pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
    Entry::File {
        path: path.into(),
        mode,
        data: data.into(),
    }
}

pub fn dir(path: &str) -> Entry {
    Entry::Dir {
        path: path.into(),
        mode: 0o755,
    }
}

pub fn link(path: &str, target: &str) -> Entry {
    Entry::Symlink {
        path: path.into(),
        target: target.into(),
    }
}

/// Directories every small root needs (all writable places are tmpfs).
pub fn skeleton() -> Vec<Entry> {
    let mut v: Vec<Entry> = [
        "bin", "sbin", "usr", "usr/bin", "etc", "proc", "sys", "dev", "run", "tmp", "root",
    ]
    .into_iter()
    .map(dir)
    .collect();
    v.push(Entry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    v.push(file("etc/hostname", 0o644, "localhost\n"));
    v
}

/// Builds the image of `kind` for `system` and returns its path.
pub fn image(system: System, kind: &str, bin: &Path) -> Result<PathBuf> {
    let name = format!("bench-{}", system.name());
    let stage_dir = root().join(format!("target/images/{name}-rootfs"));
    match system {
        System::Minos => return image::build(kind, bin, None, &[], &name),
        System::AgentInit => image::stage(&agent_init(bin, kind)?, &stage_dir, None)?,
        System::Busybox => image::stage(&busybox(bin, kind)?, &stage_dir, None)?,
        System::Systemd => systemd_tree(bin, kind, &stage_dir)?,
        System::MinosOsbuilder => {
            systemd_tree(bin, kind, &stage_dir)?;
            drop_in_minos(bin, &stage_dir)?;
        }
    }
    image::from_stage(kind, &stage_dir, &name, Fs::Ext4)
}

/// agent-shim as /sbin/init (and /init for an initrd), as osbuilder's
/// `setup_agent_init` links kata-agent.
fn agent_init(bin: &Path, kind: &str) -> Result<Vec<Entry>> {
    let mut v = skeleton();
    v.push(file(
        "usr/bin/kata-agent",
        0o755,
        read(&bin.join("agent-shim"))?,
    ));
    v.push(link("sbin/init", "/usr/bin/kata-agent"));
    if kind == "initrd" {
        v.push(link("init", "/usr/bin/kata-agent"));
    }
    Ok(v)
}

/// Debian's busybox-static, extracted from its package (not installed on
/// this machine: it would replace the busybox package).
pub fn busybox_binary() -> Result<PathBuf> {
    let dir = cache().join("busybox-static");
    let out = dir.join("bin/busybox");
    if out.exists() {
        return Ok(out);
    }
    ensure_packages(&[("dpkg-deb", "dpkg")])?;
    let download = cache().join("download");
    std::fs::create_dir_all(&download)
        .map_err(|e| format!("create {}: {e}", download.display()))?;
    run(Command::new("apt-get")
        .args(["download", "-q", "busybox-static"])
        .current_dir(&download))?;
    let deb = std::fs::read_dir(&download)
        .map_err(|e| format!("read {}: {e}", download.display()))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("busybox-static_"))
        })
        .ok_or("apt-get download busybox-static left no package")?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    if out.exists() {
        Ok(out)
    } else {
        Err(format!("{} has no bin/busybox", deb.display()))
    }
}

/// What the busybox system runs at sysinit: the mounts and settings init
/// gives kata-agent (docs/init.md, "Boot, in order"), as a shell script.
const BUSYBOX_RCS: &str = "#!/bin/sh
# sysinit: what kata-agent needs before it starts (bench system `busybox`).
mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
hostname -F /etc/hostname
ip link set lo up
echo 1073741824 > /proc/sys/fs/nr_open
";

/// The agent as kata-agent.service runs it; its end powers the VM off.
const BUSYBOX_AGENT: &str = "#!/bin/sh
ulimit -n 1073741824
echo -997 > /proc/self/oom_score_adj
/usr/bin/kata-agent < /dev/null
exec poweroff
";

const BUSYBOX_INITTAB: &str = "::sysinit:/etc/init.d/rcS
::once:/etc/init.d/agent
::shutdown:/bin/sync
";

fn busybox(bin: &Path, kind: &str) -> Result<Vec<Entry>> {
    let mut v = skeleton();
    v.push(file("bin/busybox", 0o755, read(&busybox_binary()?)?));
    for applet in [
        "bin/sh",
        "bin/mount",
        "bin/mkdir",
        "bin/hostname",
        "bin/sync",
        "bin/echo",
        "sbin/init",
        "sbin/ip",
        "sbin/poweroff",
    ] {
        v.push(link(applet, "/bin/busybox"));
    }
    if kind == "initrd" {
        v.push(link("init", "/bin/busybox"));
    }
    v.push(dir("etc/init.d"));
    v.push(file("etc/inittab", 0o644, BUSYBOX_INITTAB));
    v.push(file("etc/init.d/rcS", 0o755, BUSYBOX_RCS));
    v.push(file("etc/init.d/agent", 0o755, BUSYBOX_AGENT));
    v.push(file(
        "usr/bin/kata-agent",
        0o755,
        read(&bin.join("agent-shim"))?,
    ));
    Ok(v)
}

/// The Debian release and packages of the systemd system: osbuilder's
/// package list for Debian-family rootfs (`chrony iptables dbus`, with
/// `init` — systemd and systemd-sysv — when the agent is not init).
const SUITE: &str = "bookworm";
const PACKAGES: &str = "systemd,systemd-sysv,chrony,iptables,dbus";

/// The debootstrap tree as a tarball in the cache (made once, ~3 minutes).
fn systemd_tarball() -> Result<PathBuf> {
    let tarball = cache().join(format!(
        "debootstrap-{SUITE}-minbase-{}.tar",
        PACKAGES.replace(',', "-")
    ));
    if tarball.exists() {
        return Ok(tarball);
    }
    ensure_packages(&[("debootstrap", "debootstrap")])?;
    let tree = cache().join("debootstrap-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).map_err(|e| format!("create {}: {e}", tree.display()))?;
    println!("xtask: bench: debootstrap {SUITE} (minbase, {PACKAGES}) once, into the cache");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), SUITE])
        .arg(&tree)
        .arg("http://deb.debian.org/debian")
        .stdout(std::process::Stdio::null()))?;
    let partial = tarball.with_extension("partial");
    run(Command::new("tar")
        .args(["--numeric-owner", "-cpf"])
        .arg(&partial)
        .arg("-C")
        .arg(&tree)
        .arg("."))?;
    std::fs::rename(&partial, &tarball)
        .map_err(|e| format!("rename {}: {e}", partial.display()))?;
    let _ = std::fs::remove_dir_all(&tree);
    Ok(tarball)
}

/// The systemd units Kata's rootfs.sh deletes (`delete_unnecessary_files`),
/// as `.service` and `.socket`, and the files (generators, a timer).
const KATA_DELETED_UNITS: [&str; 12] = [
    "systemd-coredump@",
    "systemd-journald",
    "systemd-journald-dev-log",
    "systemd-journal-flush",
    "systemd-random-seed",
    "systemd-timesyncd",
    "systemd-tmpfiles-setup",
    "systemd-udevd",
    "systemd-udevd-control",
    "systemd-udevd-kernel",
    "systemd-udev-trigger",
    "systemd-update-utmp",
];
const KATA_DELETED_FILES: [&str; 5] = [
    "systemd-bless-boot-generator",
    "systemd-fstab-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-tmpfiles-cleanup.timer",
];

/// Whether osbuilder deletes the file called `name`.
pub fn kata_deletes(name: &str) -> bool {
    KATA_DELETED_FILES.contains(&name)
        || KATA_DELETED_UNITS.iter().any(|unit| {
            name.strip_prefix(unit)
                .is_some_and(|rest| rest == ".service" || rest == ".socket")
        })
}

fn remove_matching(dir: &Path, removed: &mut usize) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    for e in entries.filter_map(std::result::Result::ok) {
        let path = e.path();
        let ft = e
            .file_type()
            .map_err(|err| format!("{}: {err}", path.display()))?;
        if ft.is_dir() {
            remove_matching(&path, removed)?;
        } else if kata_deletes(&e.file_name().to_string_lossy()) {
            std::fs::remove_file(&path)
                .map_err(|err| format!("remove {}: {err}", path.display()))?;
            *removed += 1;
        }
    }
    Ok(())
}

/// Appends Kata's chrony lines and comments out every server, pool and peer
/// line (rootfs.sh).
pub fn kata_chrony_conf(original: &str) -> String {
    let mut out = String::new();
    for line in original.lines() {
        if ["server ", "pool ", "peer "]
            .iter()
            .any(|p| line.starts_with(p))
        {
            out.push_str("# ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(include_str!("../../../tests/fixtures/kata/chrony-kata.conf").trim_end());
    out.push('\n');
    out
}

/// chrony.service as rootfs.sh leaves it: no `-u USER` on ExecStart, and
/// `ConditionPathExists=/dev/ptp0` first in [Unit].
pub fn kata_chrony_service(original: &str) -> String {
    let mut out = String::new();
    for line in original.lines() {
        if line.starts_with("ExecStart=") {
            let words: Vec<&str> = line.split(' ').collect();
            let mut kept = Vec::new();
            let mut i = 0;
            while i < words.len() {
                if words[i] == "-u" && i + 1 < words.len() {
                    i += 2;
                    continue;
                }
                kept.push(words[i]);
                i += 1;
            }
            out.push_str(&kept.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
        if line == "[Unit]" {
            out.push_str("ConditionPathExists=/dev/ptp0\n");
        }
    }
    out
}

fn write(path: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let _ = std::fs::remove_file(path);
    std::fs::write(path, data).map_err(|e| format!("write {}: {e}", path.display()))
}

/// The Debian tree with osbuilder's changes (rootfs.sh `setup_rootfs`) and
/// agent-shim as kata-agent.
pub fn systemd_tree(bin: &Path, kind: &str, stage_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tarball = systemd_tarball()?;
    let _ = std::fs::remove_dir_all(stage_dir);
    std::fs::create_dir_all(stage_dir)
        .map_err(|e| format!("create {}: {e}", stage_dir.display()))?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(&tarball)
        .arg("-C")
        .arg(stage_dir))?;
    let at = |p: &str| stage_dir.join(p);
    // /var is read-only: its state directories go, /var/tmp points at /tmp.
    for d in ["var/cache", "var/lib", "var/log", "var/tmp"] {
        let _ = std::fs::remove_dir_all(at(d));
    }
    std::os::unix::fs::symlink("../tmp", at("var/tmp"))
        .map_err(|e| format!("link var/tmp: {e}"))?;
    // tmp.mount from systemd's share directory when no unit path has it.
    if !at("etc/systemd/system/tmp.mount").exists()
        && !at("usr/lib/systemd/system/tmp.mount").exists()
    {
        let share = at("usr/share/systemd/tmp.mount");
        let unit = read(&share)?;
        write(&at("etc/systemd/system/tmp.mount"), unit)?;
    }
    let conf = at("etc/chrony/chrony.conf");
    let text = String::from_utf8_lossy(&read(&conf)?).into_owned();
    write(&conf, kata_chrony_conf(&text))?;
    let service = at("lib/systemd/system/chrony.service");
    let text = String::from_utf8_lossy(&read(&service)?).into_owned();
    write(&service, kata_chrony_service(&text))?;
    let mut removed = 0;
    for d in ["usr/lib/systemd", "lib/systemd", "etc/systemd"] {
        if at(d).is_dir() && !at(d).is_symlink() {
            remove_matching(&at(d), &mut removed)?;
        }
    }
    if removed == 0 {
        return Err("no unit of Kata's deletion list was found in the debootstrap tree".into());
    }
    let fixtures = root().join("tests/fixtures/kata");
    for unit in ["kata-agent.service", "kata-containers.target"] {
        write(
            &at(&format!("usr/lib/systemd/system/{unit}")),
            read(&fixtures.join(unit))?,
        )?;
    }
    let agent = at("usr/bin/kata-agent");
    write(&agent, read(&bin.join("agent-shim"))?)?;
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", agent.display()))?;
    // An empty regular resolv.conf, for the agent to bind-mount over.
    write(&at("etc/resolv.conf"), "")?;
    write(&at("etc/hostname"), "localhost\n")?;
    if kind == "initrd" {
        let _ = std::fs::remove_file(at("init"));
        std::os::unix::fs::symlink("/sbin/init", at("init"))
            .map_err(|e| format!("link init: {e}"))?;
    }
    Ok(())
}

/// What a user drops into an osbuilder rootfs (docs/images.md): minos's
/// init as `/sbin/init` and `systemctl` pointing at it (kata-agent.service's
/// `ExecStop=` calls it, and Debian's `poweroff` links to it). Nothing else
/// changes: systemd stays installed, the units are the tree's own.
pub fn drop_in_minos(bin: &Path, stage_dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Merged /usr: /sbin is a link to usr/sbin; the link /sbin/init →
    // systemd is replaced, never written through.
    let sbin = if stage_dir.join("sbin").is_symlink() {
        "usr/sbin"
    } else {
        "sbin"
    };
    let init = stage_dir.join(sbin).join("init");
    let _ = std::fs::remove_file(&init);
    write(&init, read(&bin.join("init"))?)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", init.display()))?;
    let systemctl = stage_dir.join("usr/bin/systemctl");
    let _ = std::fs::remove_file(&systemctl);
    std::os::unix::fs::symlink("/sbin/init", &systemctl)
        .map_err(|e| format!("link {}: {e}", systemctl.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_deletion_list() {
        assert!(kata_deletes("systemd-journald.service"));
        assert!(kata_deletes("systemd-journald.socket"));
        assert!(kata_deletes("systemd-coredump@.service"));
        assert!(kata_deletes("systemd-gpt-auto-generator"));
        assert!(!kata_deletes("systemd-journald-audit.socket"));
        assert!(!kata_deletes("systemd-journald.conf"));
        assert!(!kata_deletes("chrony.service"));
    }

    #[test]
    fn chrony_conf_and_service_as_rootfs_sh_leaves_them() {
        let conf = kata_chrony_conf("pool 2.debian.pool.ntp.org iburst\nserver a\ndriftfile x\n");
        assert!(conf.starts_with("# pool 2.debian.pool.ntp.org iburst\n# server a\ndriftfile x\n"));
        assert!(conf.contains("refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0\n"));
        assert!(conf.contains("makestep 1 -1\n"));
        let unit = kata_chrony_service(
            "[Unit]\nDescription=chrony\n[Service]\nExecStart=!/usr/sbin/chronyd -u _chrony $DAEMON_OPTS\n",
        );
        assert_eq!(
            unit,
            "[Unit]\nConditionPathExists=/dev/ptp0\nDescription=chrony\n[Service]\nExecStart=!/usr/sbin/chronyd $DAEMON_OPTS\n"
        );
    }

    #[test]
    fn system_names_round_trip() {
        for s in System::ALL {
            assert_eq!(System::parse(s.name()).unwrap(), s);
        }
        assert!(System::parse("sysvinit").is_err());
    }
}
