//! Unit generators, as systemd runs them at boot (docs/units.md,
//! "Generators"): each executable in the generator directories is run once
//! with the three output directories as its arguments, and what they write
//! there is read like any other unit directory — `generator.early` before
//! `/etc/systemd/system`, `generator` after `/run/systemd/system`,
//! `generator.late` last. Kata's `kata-extension-mount-generator` links one
//! `kata-extension-mount@NAME.service` per extension on the command line
//! into `kata-containers.target.wants/`.
//!
//! systemd's own generators (`systemd-*`) are not run: what they do is
//! init's early boot (fstab, getty, remount) or has no place in a guest
//! (GPT auto-discovery, hibernation, boot counting).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Mode;

/// Where generators are looked for, highest precedence first: a name in
/// an earlier directory hides the same name in a later one.
pub const DIRS: [&str; 5] = [
    "/run/systemd/system-generators",
    "/etc/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
];

/// The output directories, in the order of the generators' arguments.
pub const NORMAL: &str = "/run/systemd/generator";
pub const EARLY: &str = "/run/systemd/generator.early";
pub const LATE: &str = "/run/systemd/generator.late";

/// How long one generator may run before it is killed (systemd allows
/// 90 s for all of them; a guest's boot cannot wait that long).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The generators to run: (name, path), by name, each from the first
/// directory that has it; a link to `/dev/null` masks a name. `skip_run`
/// leaves out `/run/...` (a tmpfs init has just mounted holds nothing).
pub fn find(dirs: &[&str], skip_run: bool) -> Vec<(String, PathBuf)> {
    let mut seen_dirs: Vec<(u64, u64)> = Vec::new();
    let mut chosen: std::collections::BTreeMap<String, Option<PathBuf>> = Default::default();
    for dir in dirs {
        if skip_run && dir.starts_with("/run/") {
            continue;
        }
        let Ok(st) = rustix::fs::stat(*dir) else {
            continue;
        };
        let id = (st.st_dev, st.st_ino);
        if seen_dirs.contains(&id) {
            continue;
        }
        seen_dirs.push(id);
        // One getdents buffer on the stack (std's read_dir adds an fstat
        // and a heap buffer): a boot pays for this before the agent's fork.
        let Ok(entries) = crate::search::list_dir(Path::new(dir)) else {
            continue;
        };
        for (name, kind) in entries {
            // systemd's own are never run: not even looked at (a Debian
            // tree has nine, and each look is a system call before the
            // agent's fork).
            if name.starts_with('.') || name.starts_with("systemd-") || chosen.contains_key(&name) {
                continue;
            }
            let path = Path::new(dir).join(&name);
            // A file system that does not say (DT_UNKNOWN) may list a link
            // as `Other`.
            let masked = matches!(kind, crate::search::Kind::Link | crate::search::Kind::Other)
                && std::fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null"));
            chosen.insert(name, (!masked).then_some(path));
        }
    }
    chosen
        .into_iter()
        .filter_map(|(name, path)| Some((name, path?)))
        .filter(|(_, path)| is_executable(path))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the generators found; returns the output directories to add to
/// the search path (early, normal, late) when any of them holds something.
pub fn run(mode: Mode, skip_run: bool) -> Option<[PathBuf; 3]> {
    let found = find(&DIRS, skip_run);
    if found.is_empty() {
        return None;
    }
    let outs = [EARLY, NORMAL, LATE].map(PathBuf::from);
    for d in &outs {
        // Emptied first, as systemd does: a /run that is not fresh (a
        // container's) may hold an earlier run's output.
        let _ = std::fs::remove_dir_all(d);
        if let Err(e) = std::fs::create_dir_all(d) {
            log::error!(
                "generators: create {}: {e}; generators not run",
                d.display()
            );
            return None;
        }
    }
    // systemd's form, `vm:ID`; which hypervisor is not detected.
    let virtualization = match mode {
        Mode::Vm => "vm:other",
        Mode::Container => "container:other",
    };
    for (name, path) in &found {
        let started = Instant::now();
        let program = path.to_string_lossy();
        let child = crate::sys::spawn_simple(
            &program,
            &[&program, NORMAL, EARLY, LATE],
            &[
                ("SYSTEMD_SCOPE", "system"),
                ("SYSTEMD_IN_INITRD", "0"),
                ("SYSTEMD_VIRTUALIZATION", virtualization),
                (
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                ),
            ],
        );
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                log::error!("generator {}: cannot run: {e}", path.display());
                continue;
            }
        };
        match wait(&child, TIMEOUT) {
            Some(status) if status.success() => {
                log::info!(
                    "generator {name} ran in {} µs",
                    started.elapsed().as_micros()
                );
            }
            Some(status) => {
                log::warn!("generator {}: {status}; its output is used", path.display())
            }
            None => {
                child.kill_and_wait();
                log::error!(
                    "generator {}: still running after {TIMEOUT:?}: killed; its output so far is used",
                    path.display()
                );
            }
        }
    }
    let any = outs
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut rd| rd.next().is_some()));
    any.then_some(outs)
}

/// Waits for the child at most `limit`; `None` when it is still running.
fn wait(child: &crate::sys::Spawned, limit: Duration) -> Option<crate::sys::Ended> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_micros(100);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The search path with the output directories placed as systemd places
/// them: early right after minos's own directory (before
/// `/etc/systemd/system`), normal after `/run/systemd/system` (or after
/// `/etc/systemd/system` when that is not searched), late last. Returns
/// the path and the positions of the three.
pub fn splice(search: &[PathBuf], outs: &[PathBuf; 3]) -> (Vec<PathBuf>, Vec<usize>) {
    let [early, normal, late] = outs;
    let mut v: Vec<PathBuf> = Vec::with_capacity(search.len() + 3);
    let mut positions = Vec::new();
    let normal_after = search
        .iter()
        .position(|d| d == Path::new("/run/systemd/system"))
        .or_else(|| {
            search
                .iter()
                .position(|d| d == Path::new("/etc/systemd/system"))
        })
        .unwrap_or(0);
    for (i, d) in search.iter().enumerate() {
        v.push(d.clone());
        if i == 0 {
            positions.push(v.len());
            v.push(early.clone());
        }
        if i == normal_after {
            positions.push(v.len());
            v.push(normal.clone());
        }
    }
    positions.push(v.len());
    v.push(late.clone());
    (v, positions)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn output_directories_go_where_systemd_puts_them() {
        let search: Vec<PathBuf> = [
            "/etc/minos/units",
            "/etc/systemd/system",
            "/run/systemd/system",
            "/usr/lib/systemd/system",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let outs = [EARLY, NORMAL, LATE].map(PathBuf::from);
        let (v, pos) = splice(&search, &outs);
        let names: Vec<&str> = v.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "/etc/minos/units",
                EARLY,
                "/etc/systemd/system",
                "/run/systemd/system",
                NORMAL,
                "/usr/lib/systemd/system",
                LATE
            ]
        );
        assert_eq!(pos, [1, 4, 6]);
        // Without /run/systemd/system: normal after /etc/systemd/system.
        let (v, _) = splice(&[search[0].clone(), search[1].clone()], &outs);
        assert_eq!(v[3], PathBuf::from(NORMAL));
    }

    #[test]
    fn generators_by_name_first_directory_wins_masks_and_systemds_own_skipped() {
        let root = std::env::temp_dir().join(format!("minos-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = root.join("etc");
        let b = root.join("usr");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let exe = |p: &Path| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(&a.join("kata-extension-mount-generator"));
        exe(&b.join("kata-extension-mount-generator"));
        exe(&b.join("systemd-fstab-generator"));
        exe(&b.join("masked-generator"));
        std::os::unix::fs::symlink("/dev/null", a.join("masked-generator")).unwrap();
        std::fs::write(b.join("not-executable"), "x").unwrap();
        let dirs = [a.to_str().unwrap(), b.to_str().unwrap()];
        let found = find(&dirs, false);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, a.join("kata-extension-mount-generator"));
        let _ = std::fs::remove_dir_all(&root);
    }
}
