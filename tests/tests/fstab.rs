//! init as PID 1 mounts /etc/fstab's entries before any unit starts:
//! file systems made by the real mkfs.ext4 and mkfs.erofs on loop devices,
//! found by LABEL= and UUID=; a bind mount; init's own /run remounted with
//! the entry's size instead of a second tmpfs on it; noauto and nofail
//! (docs/init.md, "/etc/fstab").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path, read_only: bool) -> Self {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if read_only {
            cmd.arg("--read-only");
        }
        Loop(run(cmd.arg(image)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

const EXT4_LABEL: &str = "minos-fstab";
const EROFS_UUID: &str = "6d696e6f-732d-4552-4f46-532d66737461";

fn images(top: &Path) -> (PathBuf, PathBuf) {
    let ext4 = top.join("label.ext4");
    std::fs::write(&ext4, vec![0u8; 8 << 20]).unwrap();
    let content = top.join("ext4-content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello"), "from ext4 by label").unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", EXT4_LABEL, "-d"])
        .arg(&content)
        .arg(&ext4));
    let erofs = top.join("uuid.erofs");
    let content = top.join("erofs-content");
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("hello"), "from erofs by uuid").unwrap();
    run(Command::new("mkfs.erofs")
        .args(["-U", EROFS_UUID])
        .arg(&erofs)
        .arg(&content));
    (ext4, erofs)
}

/// A `mountinfo` line's mount point and super options, for `point`.
fn mounts_at(mountinfo: &str, point: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(point))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn entries_are_mounted_before_units_by_label_uuid_and_bind() {
    let fs = Rootfs::new("fstab");
    let (ext4, erofs) = images(&fs.top);
    let ext4_dev = Loop::attach(&ext4, false);
    let erofs_dev = Loop::attach(&erofs, true);
    fs.write("srv/src/hello", "through a bind mount");
    fs.write(
        "etc/fstab",
        &format!(
            "# as osbuilder writes it for a confidential guest\n\
             tmpfs /run tmpfs nodev,nosuid,size=50% 0 0\n\
             LABEL={EXT4_LABEL} /mnt/by\\040label ext4 rw,nosuid 0 2\n\
             UUID={EROFS_UUID} /mnt/erofs erofs ro,x-systemd.device-timeout=1s 0 0\n\
             /srv/src /mnt/bind none bind,ro 0 0\n\
             tmpfs /mnt/noauto tmpfs noauto 0 0\n\
             /dev/minos-no-such-disk /mnt/nofail ext4 defaults,nofail 0 0\n\
             LABEL=minos-no-such-label /mnt/missing ext4 defaults 0 0\n\
             /dev/vdz none swap sw 0 0\n"
        ),
    );
    // The unit sees the mounts: they were made before it.
    fs.unit(
        "look.service",
        "[Unit]\nConditionPathIsMountPoint=/mnt/by label\n\
         [Service]\nType=oneshot\n\
         ExecStart=/bin/probe copy \"/mnt/by label/hello\" /data/ext4\n\
         ExecStart=/bin/probe copy /mnt/erofs/hello /data/erofs\n\
         ExecStart=/bin/probe copy /mnt/bind/hello /data/bind\n\
         ExecStart=/bin/probe copy /proc/self/mountinfo /data/mountinfo\n\
         ExecStart=/bin/probe copy /proc/meminfo /data/meminfo\n\
         ExecStart=/bin/probe statfs /run /data/run-size\n\
         SuccessAction=poweroff\n",
    );
    // Mount dependencies: met for a mounted entry, a dependency failure
    // for the entry that failed and for the noauto one.
    let needs = |name: &str, dep: &str| {
        fs.unit(
            &format!("{name}.service"),
            &format!(
                "[Unit]\n{dep}\n[Service]\nType=oneshot\nExecStart=/bin/probe write /data/{name} ran\n"
            ),
        )
    };
    needs(
        "on-bind",
        "RequiresMountsFor=/mnt/bind/hello\nAfter=mnt-erofs.mount",
    );
    needs(
        "on-erofs",
        "Requires=mnt-erofs.mount\nAfter=mnt-erofs.mount",
    );
    needs("on-missing", "Requires=mnt-missing.mount");
    needs("on-noauto", "RequiresMountsFor=/mnt/noauto/x");
    // The host's /dev (the loop devices among it) in init's namespace.
    let end = fs
        .start_after("mount --rbind /dev \"$ROOT/dev\"", &[])
        .wait(WAIT);
    drop((ext4_dev, erofs_dev));
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/ext4"), "from ext4 by label");
    assert_eq!(fs.read("data/erofs"), "from erofs by uuid");
    assert_eq!(fs.read("data/bind"), "through a bind mount");
    let mountinfo = fs.read("data/mountinfo");
    // One tmpfs on /run, with half the memory (the kernel shows it in KiB).
    let run = mounts_at(&mountinfo, "/run");
    assert_eq!(run.len(), 1, "init's /run remounted, not stacked: {run:?}");
    let mem_kib: u64 = fs
        .read("data/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    // (mountinfo leaves out a tmpfs size equal to the default, 50 %.)
    let size_kib = fs.read("data/run-size").parse::<u64>().unwrap() / 1024;
    let half = mem_kib / 2;
    assert!(
        size_kib.abs_diff(half) <= 4,
        "/run size {size_kib} KiB, half of {mem_kib} KiB expected"
    );
    let bind_line = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/mnt/bind"))
        .expect("/mnt/bind in mountinfo");
    assert!(
        bind_line
            .split_whitespace()
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "bind,ro is read-only: {bind_line}"
    );
    assert!(mounts_at(&mountinfo, "/mnt/noauto").is_empty(), "noauto");
    end.assert_log("/etc/fstab:2: /run: init's mount remounted with \"size=50%\"");
    end.assert_log(
        "/etc/fstab:4: /mnt/erofs: ignored (not acted on by minos): x-systemd.device-timeout=1s",
    );
    end.assert_log("/etc/fstab:6: /mnt/noauto: not mounted: noauto");
    end.assert_log("/etc/fstab:7: /mnt/nofail (nofail): ");
    end.assert_log(
        "/etc/fstab:8: /mnt/missing: no file system with LABEL=minos-no-such-label on the ",
    );
    end.assert_log("/etc/fstab:9: swap (/dev/vdz) is not enabled by minos; ignored");
    assert_eq!(fs.read("data/on-bind"), "ran");
    assert_eq!(fs.read("data/on-erofs"), "ran");
    assert!(fs.try_read("data/on-missing").is_none(), "{}", end.output);
    assert!(fs.try_read("data/on-noauto").is_none(), "{}", end.output);
    end.assert_log(
        "on-missing.service: not started: requires mnt-missing.mount, and nothing is mounted on /mnt/missing",
    );
    end.assert_log(
        "on-noauto.service: not started: RequiresMountsFor=/mnt/noauto/x: /mnt/noauto (/etc/fstab) is not mounted",
    );
    // Neither failure stopped the boot: the unit ran after them.
    end.assert_log("/etc/fstab:3: mounted /mnt/by label");
}

#[test]
fn a_tmp_entry_of_another_type_replaces_inits_tmpfs() {
    let fs = Rootfs::new("fstab-tmp");
    fs.write("srv/tmp-on-disk/marker", "the administrator's /tmp");
    fs.write("etc/fstab", "/srv/tmp-on-disk /tmp none bind 0 0\n");
    fs.unit(
        "look.service",
        "[Service]\nType=oneshot\n\
         ExecStart=/bin/probe copy /tmp/marker /data/marker\n\
         ExecStart=/bin/probe copy /proc/self/mountinfo /data/mountinfo\n\
         SuccessAction=poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/marker"), "the administrator's /tmp");
    let tmp = mounts_at(&fs.read("data/mountinfo"), "/tmp");
    assert_eq!(
        tmp.len(),
        1,
        "init's tmpfs on /tmp unmounted first: {tmp:?}"
    );
}

#[test]
fn a_failed_tmp_entry_leaves_inits_tmpfs_and_api_mounts_stay() {
    let fs = Rootfs::new("fstab-tmp-fail");
    fs.write(
        "etc/fstab",
        "LABEL=minos-no-such-tmp /tmp ext4 nofail 0 0\n\
         proc /proc proc defaults 0 0\n\
         server:/export /mnt/nfs nfs defaults 0 0\n\
         /srv/minos-missing /tmp none bind,nofail 0 0\n",
    );
    fs.unit(
        "look.service",
        "[Service]\nType=oneshot\n\
         ExecStart=/bin/probe copy /proc/self/mountinfo /data/mountinfo\n\
         SuccessAction=poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let mountinfo = fs.read("data/mountinfo");
    let tmp: Vec<&str> = mountinfo
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/tmp"))
        .collect();
    assert_eq!(tmp.len(), 1, "{tmp:?}");
    assert!(
        tmp[0].contains(" - tmpfs "),
        "init's tmpfs is still on /tmp: {tmp:?}"
    );
    end.assert_log("/etc/fstab:2: /proc: not mounted: an API file system init has mounted itself");
    end.assert_log("/etc/fstab:3: /mnt/nfs: not mounted: a network file system (nfs, _netdev)");
    end.assert_log("; init's tmpfs is back on /tmp");
}
