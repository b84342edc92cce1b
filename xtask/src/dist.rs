//! `cargo xtask dist`: the release artefact an image builder consumes.
//!
//! `target/dist/minos-VERSION-x86_64.tar.zst` holds one directory,
//! `minos-VERSION-x86_64/`: `rootfs/` (init, timesync and busd, static;
//! minos's units and timesync's configuration, at their paths in a root
//! file system), `on-dbus-daemon/busd.service` (busd on a tree with
//! dbus-daemon), `install.sh` (`rootfs-skel/install.sh`) and `VERSION`
//! (the workspace's version and the commit). `target/dist/SHA256SUMS`
//! holds the tarball's checksum. The tarball is reproducible from a clean
//! checkout of a commit: sorted names, owner root, one fixed time, no
//! group- or world-writable mode.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{ensure_packages, root, run, Result};

/// The files of the release, as (path in the release, source).
fn files(bin: &Path) -> Vec<(String, PathBuf, u32)> {
    let skel = root().join("rootfs-skel");
    let overlay = skel.join("overlay");
    let mut v = vec![
        ("rootfs/sbin/init".into(), bin.join("init"), 0o755),
        (
            "rootfs/usr/bin/timesync".into(),
            bin.join("timesync"),
            0o755,
        ),
        ("rootfs/usr/bin/busd".into(), bin.join("busd"), 0o755),
        (
            "rootfs/etc/timesync.conf".into(),
            overlay.join("etc/timesync.conf"),
            0o644,
        ),
        (
            "on-dbus-daemon/busd.service".into(),
            skel.join("on-dbus-daemon/busd.service"),
            0o644,
        ),
        ("install.sh".into(), skel.join("install.sh"), 0o755),
    ];
    for unit in ["timesync.service", "busd.socket", "busd.service"] {
        v.push((
            format!("rootfs/etc/minos/units/{unit}"),
            overlay.join("etc/minos/units").join(unit),
            0o644,
        ));
    }
    v
}

/// The release's name: `minos-VERSION-x86_64`.
pub fn name() -> String {
    format!("minos-{}-x86_64", env!("CARGO_PKG_VERSION"))
}

/// Builds the release binaries, then the tarball and its checksum; returns
/// the tarball's path.
pub fn main() -> Result<()> {
    let bin = crate::build()?;
    let tarball = make(&bin)?;
    println!("xtask: dist: {}", tarball.display());
    Ok(())
}

/// Writes the tarball and SHA256SUMS from the binaries in `bin`.
pub fn make(bin: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    ensure_packages(&[("zstd", "zstd"), ("sha256sum", "coreutils")])?;
    let out = root().join("target/dist");
    let name = name();
    let top = out.join(&name);
    let _ = std::fs::remove_dir_all(&top);
    for (path, from, mode) in files(bin) {
        let to = top.join(&path);
        if let Some(d) = to.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        std::fs::copy(&from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", to.display()))?;
    }
    let version = format!(
        "{} (commit {})\n",
        env!("CARGO_PKG_VERSION"),
        crate::util::commit()
    );
    std::fs::write(top.join("VERSION"), version)
        .map_err(|e| format!("write {}: {e}", top.join("VERSION").display()))?;
    let tarball = out.join(format!("{name}.tar.zst"));
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mtime=@0",
            // Directory modes do not depend on the umask.
            "--mode=go-w",
            "--zstd",
            "-cf",
        ])
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .arg(&name))?;
    let sums = Command::new("sha256sum")
        .arg(tarball.file_name().unwrap_or_default())
        .current_dir(&out)
        .output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !sums.status.success() {
        return Err(format!(
            "sha256sum {}: {}",
            tarball.display(),
            String::from_utf8_lossy(&sums.stderr)
        ));
    }
    std::fs::write(out.join("SHA256SUMS"), &sums.stdout)
        .map_err(|e| format!("write {}: {e}", out.join("SHA256SUMS").display()))?;
    Ok(tarball)
}

/// Unpacks the release tarball into `dir` (after checking it against
/// SHA256SUMS) and runs its install.sh on `tree` with `options`, as an
/// image builder's rootfs hook does.
pub fn install(tarball: &Path, dir: &Path, tree: &Path, options: &[&str]) -> Result<String> {
    let out = tarball.parent().unwrap_or(Path::new("."));
    run(Command::new("sha256sum")
        .args(["--check", "--quiet", "SHA256SUMS"])
        .current_dir(out))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(tarball)
        .arg("-C")
        .arg(dir))?;
    let script = dir.join(name()).join("install.sh");
    let o = Command::new(&script)
        .arg("--root")
        .arg(tree)
        .args(options)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    if o.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} --root {}: {text}",
            script.display(),
            tree.display()
        ))
    }
}
