//! rootfs-skel/install.sh, the release tarball's installer (`cargo xtask
//! dist`), on throw-away trees laid out as Debian's: merged /usr, /sbin/init
//! a link to systemd, ids 100 and 101 taken, shadow files; with and without
//! dbus-daemon. It must install, merge the account, be idempotent and
//! refuse `/` (docs/images.md, "The release tarball").

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn link(target: &str, at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, at).unwrap();
}

/// A release directory as the tarball unpacks, with stand-in binaries
/// (install.sh only copies them).
fn release(top: &Path) -> PathBuf {
    let rel = top.join("minos-test-x86_64");
    let skel = repo().join("rootfs-skel");
    for (to, from) in [
        ("install.sh", skel.join("install.sh")),
        (
            "on-dbus-daemon/busd.service",
            skel.join("on-dbus-daemon/busd.service"),
        ),
        (
            "rootfs/etc/timesync.conf",
            skel.join("overlay/etc/timesync.conf"),
        ),
    ] {
        let p = rel.join(to);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(&from, &p).unwrap();
    }
    for unit in ["timesync.service", "busd.socket", "busd.service"] {
        let p = rel.join("rootfs/etc/minos/units").join(unit);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(skel.join("overlay/etc/minos/units").join(unit), &p).unwrap();
    }
    for bin in ["sbin/init", "usr/bin/timesync", "usr/bin/busd"] {
        write(
            &rel.join("rootfs").join(bin),
            &format!("#!/bin/sh\n# {bin}\n"),
        );
    }
    write(&rel.join("VERSION"), "0.1.0 (commit 000000000000)\n");
    rel
}

/// A Debian-like tree: merged /usr, /sbin/init → systemd, accounts.
fn tree(top: &Path, dbus: bool) -> PathBuf {
    let t = top.join(if dbus { "tree-dbus" } else { "tree" });
    for d in [
        "usr/sbin",
        "usr/bin",
        "usr/lib/systemd/system",
        "etc",
        "var",
        "run",
    ] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    link("usr/sbin", &t.join("sbin"));
    link("usr/bin", &t.join("bin"));
    link("usr/lib", &t.join("lib"));
    link("../lib/systemd/systemd", &t.join("usr/sbin/init"));
    write(&t.join("usr/lib/systemd/systemd"), "systemd");
    write(
        &t.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n_apt:x:100:65534::/nonexistent:/usr/sbin/nologin\n",
    );
    write(&t.join("etc/group"), "root:x:0:\nsystemd-journal:x:101:\n");
    write(&t.join("etc/shadow"), "root:*:19000:0:99999:7:::\n");
    if dbus {
        write(
            &t.join("usr/lib/systemd/system/dbus.socket"),
            "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
        );
    }
    t
}

fn install(rel: &Path, args: &[&str]) -> (bool, String) {
    install_with("sh", rel, args)
}

fn install_with(shell: &str, rel: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new(shell)
        .arg(rel.join("install.sh"))
        .args(args)
        .output()
        .expect("sh");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Every path under `dir` with what it is (file content or link target).
fn snapshot(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                ));
            } else if md.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

fn scratch(name: &str) -> PathBuf {
    let top = std::env::temp_dir().join(format!("minos-install-sh-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&top).unwrap();
    top
}

#[test]
fn installs_into_a_tree_with_dbus_daemon_and_again_to_the_same_tree() {
    let top = scratch("dbus");
    let rel = release(&top);
    let t = tree(&top, true);
    let root = t.to_string_lossy().into_owned();
    let (ok, out) = install(&rel, &["--root", &root]);
    assert!(ok, "{out}");
    assert!(
        out.contains("busd as a client of the tree's dbus-daemon"),
        "{out}"
    );
    // Through the merged-/usr link, replacing the link to systemd.
    let init = t.join("usr/sbin/init");
    assert!(!std::fs::symlink_metadata(&init).unwrap().is_symlink());
    assert_eq!(
        std::fs::read_to_string(&init).unwrap(),
        "#!/bin/sh\n# sbin/init\n"
    );
    assert_eq!(
        std::fs::read_to_string(t.join("usr/lib/systemd/systemd")).unwrap(),
        "systemd",
        "systemd itself stays"
    );
    assert_eq!(
        std::fs::read_link(t.join("usr/bin/systemctl")).unwrap(),
        Path::new("/sbin/init")
    );
    assert_eq!(
        std::fs::read_link(t.join("etc/systemd/system/basic.target.wants/busd.service")).unwrap(),
        Path::new("/etc/minos/units/busd.service")
    );
    let busd = std::fs::read_to_string(t.join("etc/minos/units/busd.service")).unwrap();
    assert!(busd.contains("--system-bus"), "{busd}");
    assert!(!t.join("etc/minos/units/busd.socket").exists());
    assert_eq!(
        std::fs::read_link(t.join("etc/minos/units/chronyd.service")).unwrap(),
        Path::new("timesync.service")
    );
    assert_eq!(
        std::fs::read_link(t.join("var/run")).unwrap(),
        Path::new("../run")
    );
    // 100 is _apt's uid, 101 a group's gid: 102 for both.
    let passwd = std::fs::read_to_string(t.join("etc/passwd")).unwrap();
    assert!(
        passwd.starts_with("root:x:0:0:root:/root:/bin/bash\n_apt:x:100:"),
        "{passwd}"
    );
    assert!(
        passwd.ends_with("timesync:x:102:102:minos timesync:/run/timesync:/usr/sbin/nologin\n"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(t.join("etc/group")).unwrap();
    assert!(
        group.ends_with("systemd-journal:x:101:\ntimesync:x:102:\n"),
        "{group}"
    );
    let shadow = std::fs::read_to_string(t.join("etc/shadow")).unwrap();
    assert!(shadow.ends_with("timesync:!:::::::\n"), "{shadow}");
    assert!(!t.join("etc/gshadow").exists(), "not made where missing");
    let first = snapshot(&t);
    let (ok, out) = install(&rel, &["--root", &root]);
    assert!(ok, "{out}");
    assert_eq!(snapshot(&t), first, "a second run changed the tree");
    let _ = std::fs::remove_dir_all(&top);
}

#[test]
fn without_dbus_daemon_busd_is_the_bus_and_chrony_may_stay() {
    let top = scratch("plain");
    let rel = release(&top);
    let t = tree(&top, false);
    let root = format!("--root={}", t.display());
    let (ok, out) = install(&rel, &[&root, "--keep-chrony", "--initrd"]);
    assert!(ok, "{out}");
    // Twice: /init is a link to /sbin/init, which stays the binary.
    let first = snapshot(&t);
    let (ok, out) = install(&rel, &[&root, "--keep-chrony", "--initrd"]);
    assert!(ok, "{out}");
    assert_eq!(
        snapshot(&t),
        first,
        "a second --initrd run changed the tree"
    );
    assert_eq!(
        std::fs::read_to_string(t.join("usr/sbin/init")).unwrap(),
        "#!/bin/sh\n# sbin/init\n"
    );
    assert_eq!(
        std::fs::read_link(t.join("etc/systemd/system/sockets.target.wants/busd.socket")).unwrap(),
        Path::new("/etc/minos/units/busd.socket")
    );
    assert!(t.join("etc/minos/units/busd.service").exists());
    assert!(!t.join("etc/minos/units/timesync.service").exists());
    assert!(!t.join("etc/minos/units/chronyd.service").exists());
    assert!(!std::fs::read_to_string(t.join("etc/passwd"))
        .unwrap()
        .contains("timesync"));
    assert_eq!(
        std::fs::read_link(t.join("init")).unwrap(),
        Path::new("/sbin/init")
    );
    // timesync first, then --keep-chrony: chrony is chronyd.service again.
    let (ok, out) = install(&rel, &[&root]);
    assert!(ok, "{out}");
    assert!(std::fs::symlink_metadata(t.join("etc/minos/units/chronyd.service")).is_ok());
    let (ok, out) = install(&rel, &[&root, "--keep-chrony"]);
    assert!(ok, "{out}");
    assert!(std::fs::symlink_metadata(t.join("etc/minos/units/chronyd.service")).is_err());
    let _ = std::fs::remove_dir_all(&top);
}

#[test]
fn refuses_the_root_directory_and_bad_options() {
    let top = scratch("refuse");
    let rel = release(&top);
    for args in [
        vec!["--root", "/"],
        vec!["--root", "//"],
        vec!["--root", "/usr/.."],
        vec![],
        vec!["--root"],
        vec!["--root", "/nonexistent-minos"],
        vec!["--bogus"],
    ] {
        // Debian's sh (dash), and bash, whose pwd keeps a leading "//".
        for shell in ["sh", "bash"] {
            let (ok, out) = install_with(shell, &rel, &args);
            assert!(!ok, "{shell} {args:?} accepted: {out}");
            assert!(out.contains("install.sh: "), "{shell} {args:?}: {out}");
        }
    }
    let _ = std::fs::remove_dir_all(&top);
}
