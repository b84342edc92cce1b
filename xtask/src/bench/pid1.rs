//! `cargo xtask bench --pid1 [--rounds N] [--out DIR]`: minos init as PID 1
//! of a PID namespace against the small PID 1s containers use — tini,
//! dumb-init, catatonit (Debian's packages) and busybox init — outside a VM.
//!
//! Each run: `unshare --pid --fork --mount --cgroup` makes the namespaces, and a
//! shell in them sets up the file systems an OCI runtime (runc, with the
//! default spec Docker and Podman use) gives a container before its PID 1
//! runs — /proc, a tmpfs /dev with the default devices, /dev/pts,
//! /dev/shm, /dev/mqueue, a read-only /sys and a read-only cgroup2 on
//! /sys/fs/cgroup — then chroots into ROOT and execs `stamp` as PID 1,
//! which writes CLOCK_MONOTONIC and execs the PID 1 under test; that starts
//! its child, another `stamp`, which writes the time and PID 1's VmRSS and
//! exits, and the PID 1 ends (or is told to). Exec of PID 1 → exec of its
//! child is the difference of the two stamps; `direct` (PID 1 execs the
//! child itself) is the floor. `minos-bare` is minos in a bare namespace
//! (`unshare --mount-proc --root`: only /proc), where it mounts the rest
//! itself. The variants run interleaved, round after round, so a slow
//! moment of the machine hits all alike; the table gives medians and ratios
//! against the fastest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::util::{ensure_packages, root, Result};

struct Variant {
    name: &'static str,
    /// The PID 1 command line after `/stamp /stamps/t0`.
    argv: &'static [&'static str],
    /// Only /proc, not a container's file systems.
    bare: bool,
}

const CHILD: &[&str] = &["/stamp", "/stamps/t1", "--rss"];

fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "direct",
            argv: &["/stamp", "/stamps/t1", "--rss"],
            bare: false,
        },
        Variant {
            name: "minos",
            argv: &["/sbin/init"],
            bare: false,
        },
        Variant {
            name: "tini",
            argv: &["/usr/bin/tini", "--", "/stamp", "/stamps/t1", "--rss"],
            bare: false,
        },
        Variant {
            name: "dumb-init",
            argv: &["/usr/bin/dumb-init", "/stamp", "/stamps/t1", "--rss"],
            bare: false,
        },
        Variant {
            name: "catatonit",
            argv: &["/usr/bin/catatonit", "--", "/stamp", "/stamps/t1", "--rss"],
            bare: false,
        },
        Variant {
            name: "busybox",
            argv: &["/bin/busybox", "init"],
            bare: false,
        },
        Variant {
            name: "minos-bare",
            argv: &["/sbin/init"],
            bare: true,
        },
    ]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pid1Row {
    pub name: String,
    pub median_us: f64,
    pub min_us: f64,
    pub ratio_to_fastest: f64,
    pub rss_kib: Option<u64>,
    pub runs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pid1Results {
    pub date: String,
    pub host: String,
    pub rounds: usize,
    pub rows: Vec<Pid1Row>,
}

/// Copies `binary` and the shared libraries ldd lists into `root`.
fn install_with_libs(binary: &Path, root: &Path) -> Result<()> {
    let mut files = vec![binary.to_path_buf()];
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd {}: {e}", binary.display()))?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap_or(&f));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        std::fs::copy(&f, &dest).map_err(|e| format!("copy {}: {e}", f.display()))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn make_root(bin: &Path) -> Result<PathBuf> {
    ensure_packages(&[
        ("tini", "tini"),
        ("dumb-init", "dumb-init"),
        ("catatonit", "catatonit"),
        ("unshare", "util-linux"),
    ])?;
    let root = root().join("target/bench-pid1/root");
    let _ = std::fs::remove_dir_all(&root);
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "stamps",
        "etc/minos/units",
        "sbin",
        "bin",
        "usr/bin",
    ] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| format!("create {d}: {e}"))?;
    }
    for (from, to) in [
        (bin.join("stamp"), "stamp"),
        (bin.join("init"), "sbin/init"),
    ] {
        std::fs::copy(&from, root.join(to)).map_err(|e| format!("copy {}: {e}", from.display()))?;
    }
    for b in ["/usr/bin/tini", "/usr/bin/dumb-init", "/usr/bin/catatonit"] {
        install_with_libs(Path::new(b), &root)?;
    }
    let busybox = super::systems::busybox_binary()?;
    std::fs::copy(&busybox, root.join("bin/busybox"))
        .map_err(|e| format!("copy {}: {e}", busybox.display()))?;
    write(
        &root.join("etc/minos/units/child.service"),
        &format!(
            "[Unit]\nDescription=the child whose exec is timed\n[Service]\nType=oneshot\nExecStart={}\nSuccessAction=poweroff\n",
            CHILD.join(" ")
        ),
    )?;
    write(
        &root.join("etc/inittab"),
        &format!(
            "::sysinit:{}\n::once:/bin/busybox poweroff -f\n",
            CHILD.join(" ")
        ),
    )?;
    write(&root.join("etc/hostname"), "pid1-bench\n")?;
    write(&root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    write(&root.join("etc/group"), "root:x:0:\n")?;
    Ok(root)
}

/// What runc mounts for a container with the default OCI spec, done by the
/// shell that becomes PID 1 of the new namespaces (`$1` the root, the rest
/// the command), before it chroots and execs: none of it is timed.
const CONTAINER_SETUP: &str = r#"set -e
R=$1; shift
/bin/mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
/bin/mount -t tmpfs -o nosuid,mode=755,size=65536k tmpfs "$R/dev"
for d in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  n=${d%%:*}; r=${d#*:}
  /bin/mknod -m 666 "$R/dev/$n" c "${r%%:*}" "${r#*:}"
done
/bin/mkdir "$R/dev/pts" "$R/dev/shm" "$R/dev/mqueue"
/bin/mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
/bin/mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm "$R/dev/shm"
/bin/mount -t mqueue -o nosuid,nodev,noexec mqueue "$R/dev/mqueue"
/bin/mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys"
/bin/mount -t cgroup2 -o ro,nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
exec /usr/sbin/chroot "$R" "$@"
"#;

fn stamp(path: &Path) -> Option<(i128, Option<u64>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let ns = words.next()?.parse().ok()?;
    Some((ns, words.next().and_then(|w| w.parse().ok())))
}

/// One run of `v`: (µs from exec of PID 1 to exec of its child, PID 1's RSS).
fn run_once(root: &Path, v: &Variant) -> Result<(f64, Option<u64>)> {
    let stamps = root.join("stamps");
    for f in ["t0", "t1"] {
        let _ = std::fs::remove_file(stamps.join(f));
    }
    let mut command = Command::new("unshare");
    // A cgroup namespace, as runc makes on a cgroup v2 host: cgroup2 mounted
    // in the host's own cgroup namespace would apply its mount options to the
    // host's whole hierarchy (the kernel's apply_cgroup_root_flags).
    command.args(["--pid", "--fork", "--mount", "--cgroup", "--kill-child"]);
    if v.bare {
        command.args(["--mount-proc", "--root"]).arg(root);
    } else {
        command
            .args(["/bin/sh", "-c", CONTAINER_SETUP, "container-setup"])
            .arg(root);
    }
    let mut child = command
        .args(["/stamp", "/stamps/t0"])
        .args(v.argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/sbin")
        .env("container", "minos-bench")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start unshare: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().map_err(|e| e.to_string())? {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{}: PID 1 did not end within 20 s", v.name));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (t0, _) = stamp(&stamps.join("t0")).ok_or(format!("{}: no stamp from PID 1", v.name))?;
    let (t1, rss) = stamp(&stamps.join("t1")).ok_or_else(|| {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        format!("{}: the child never ran\n{err}", v.name)
    })?;
    Ok(((t1 - t0) as f64 / 1000.0, rss))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians, minimums and ratios against the fastest PID 1 (the `direct`
/// floor is listed but not a candidate for fastest).
pub fn summarise(samples: &[(String, Vec<f64>, Option<u64>)]) -> Vec<Pid1Row> {
    let mut rows: Vec<Pid1Row> = samples
        .iter()
        .map(|(name, times, rss)| {
            let mut t = times.clone();
            let min = t.iter().copied().fold(f64::INFINITY, f64::min);
            Pid1Row {
                name: name.clone(),
                median_us: median(&mut t),
                min_us: min,
                ratio_to_fastest: 0.0,
                rss_kib: *rss,
                runs: times.len(),
            }
        })
        .collect();
    let fastest = rows
        .iter()
        .filter(|r| r.name != "direct")
        .map(|r| r.median_us)
        .fold(f64::INFINITY, f64::min);
    for r in &mut rows {
        r.ratio_to_fastest = r.median_us / fastest;
    }
    rows
}

pub fn markdown(r: &Pid1Results) -> String {
    let mut s = String::from(
        "# PID 1 outside a VM: exec of PID 1 → exec of its child\n\n\
         `cargo xtask bench --pid1`: each PID 1 as PID 1 of fresh PID, mount and cgroup namespaces\n\
         (`unshare --pid --fork --mount --cgroup`) with the file systems runc gives a container under the\n\
         default OCI spec, mounted before PID 1 runs (/proc; a tmpfs /dev with null, zero, full,\n\
         random, urandom, tty; /dev/pts, /dev/shm, /dev/mqueue; /sys and cgroup2 on /sys/fs/cgroup,\n\
         read-only), timed from a stamp just before its exec to a stamp in its child\n\
         (CLOCK_MONOTONIC, host time, so medians of interleaved rounds); RSS is PID 1's VmRSS while\n\
         its child runs. `direct` is the floor: PID 1 execs the child itself. minos runs in\n\
         container mode with one unit (Type=oneshot, SuccessAction=poweroff), so its figure\n\
         includes mounting /run and /tmp (runc mounts neither), reading its units and the control\n\
         and notify sockets. `minos-bare` is minos in a bare namespace (`unshare --mount-proc\n\
         --root`: only /proc), where it mounts /dev, /sys, cgroup2 and the rest itself. Both are in\n\
         a cgroup namespace of their own, as runc makes on a cgroup v2 host: in the host's cgroup\n\
         namespace a cgroup2 mount (minos's or systemd's, when /sys/fs/cgroup is missing) applies\n\
         its options to the host's whole hierarchy and waits for an RCU grace period to do so\n\
         (6–16 ms measured here).\n\n",
    );
    s.push_str(&format!(
        "Run of {}: host {}; {} rounds.\n\n| PID 1 | median | minimum | ratio to the fastest | RSS |\n|---|---:|---:|---:|---:|\n",
        r.date, r.host, r.rounds
    ));
    for row in &r.rows {
        s.push_str(&format!(
            "| {} | {:.0} µs | {:.0} µs | {:.2} | {} |\n",
            row.name,
            row.median_us,
            row.min_us,
            row.ratio_to_fastest,
            row.rss_kib.map_or("—".into(), |k| format!("{k} KiB"))
        ));
    }
    s
}

pub fn main(rounds: usize, out: Option<PathBuf>) -> Result<()> {
    if rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    let out = out.unwrap_or_else(|| root().join("docs/bench"));
    let bin = crate::build()?;
    let root_dir = make_root(&bin)?;
    let vs = variants();
    let mut samples: Vec<(String, Vec<f64>, Option<u64>)> = vs
        .iter()
        .map(|v| (v.name.to_string(), Vec::new(), None))
        .collect();
    for round in 0..rounds {
        for k in 0..vs.len() {
            let i = (round + k) % vs.len();
            let (us, rss) = run_once(&root_dir, &vs[i])?;
            samples[i].1.push(us);
            if samples[i].2.is_none() {
                samples[i].2 = rss;
            }
        }
    }
    let results = Pid1Results {
        date: super::command_line("date", &["-u", "+%Y-%m-%d"]),
        host: super::command_line("uname", &["-sr"]),
        rounds,
        rows: summarise(&samples),
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())? + "\n";
    write(&out.join("pid1.json"), &json)?;
    write(&out.join("pid1.md"), &markdown(&results))?;
    let back: Pid1Results = serde_json::from_str(
        &std::fs::read_to_string(out.join("pid1.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    if back != results {
        return Err("pid1.json does not read back as written".into());
    }
    for row in &results.rows {
        println!(
            "xtask: bench --pid1: {:<10} median {:>7.0} µs  ×{:.2}  RSS {}",
            row.name,
            row.median_us,
            row.ratio_to_fastest,
            row.rss_kib.map_or("unknown".into(), |k| format!("{k} KiB"))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        let rows = summarise(&[
            ("direct".into(), vec![100.0, 300.0, 200.0], Some(100)),
            ("a".into(), vec![1000.0, 3000.0], None),
            ("b".into(), vec![500.0, 400.0, 900.0], Some(700)),
        ]);
        assert_eq!(rows[0].median_us, 200.0);
        assert_eq!(rows[1].median_us, 2000.0);
        assert_eq!(rows[2].median_us, 500.0);
        assert_eq!(rows[2].ratio_to_fastest, 1.0, "direct is not a candidate");
        assert_eq!(rows[1].ratio_to_fastest, 4.0);
        assert_eq!(rows[1].min_us, 1000.0);
        let md = markdown(&Pid1Results {
            date: "d".into(),
            host: "h".into(),
            rounds: 3,
            rows,
        });
        assert!(
            md.contains("| b | 500 µs | 400 µs | 1.00 | 700 KiB |"),
            "{md}"
        );
    }
}
