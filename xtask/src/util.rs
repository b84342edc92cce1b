//! Helpers: running cargo and other commands, Debian packages, ELF checks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub type Result<T> = std::result::Result<T, String>;

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

pub fn release_dir() -> PathBuf {
    root().join("target/x86_64-unknown-linux-gnu/release")
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().map_err(|e| format!("run {shown}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed: {st}"))
    }
}

/// Runs `cmd` with its output captured; `Ok(None)` when it had not ended
/// within `limit` (then it is killed). What it wrote is read on threads,
/// so a chatty child never blocks on a full pipe.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Option<Output>> {
    use std::io::Read;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {shown}: {e}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait for {shown}: {e}")),
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(None);
    };
    Ok(Some(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }))
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(args)
        .env("MINOS_COMMIT", commit())
        .env("MINOS_BUILD_TIME", commit_time())
        .current_dir(root()))
}

/// The commit's time, Unix seconds (deterministic, unlike the build's
/// wall clock), or "" outside a git checkout: timesync refuses to step the
/// clock before it (`MINOS_BUILD_TIME`).
pub fn commit_time() -> String {
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_default()
}

/// The commit the work tree is at, 12 hex digits (always that long, so
/// that the binaries' layout does not depend on it), or "unknown" outside
/// a git checkout. `--version` prints it (`minos_common::COMMIT`).
pub fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| c.len() == 12 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into())
}

/// Today's date (UTC), YYYY-MM-DD, for pages a command writes.
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

/// Runs one named step and reports its duration.
pub fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    println!("xtask: == {name}");
    let t = Instant::now();
    f().map_err(|e| format!("{name}: {e}"))?;
    println!("xtask: == {name}: ok ({:.1}s)", t.elapsed().as_secs_f64());
    Ok(())
}

fn have(command: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(command).exists())
}

/// Installs the Debian packages whose commands are missing (apt-get update once).
pub fn ensure_packages(needed: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = needed
        .iter()
        .filter(|(c, _)| !have(c))
        .map(|(_, p)| *p)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    // `apt-get update` once per run.
    static UPDATED: std::sync::Once = std::sync::Once::new();
    let mut updated = Ok(());
    UPDATED.call_once(|| updated = run(Command::new("apt-get").args(["update", "-q"])));
    updated?;
    // No package may start a daemon on this machine (chrony's would discipline
    // the host clock): policy-rc.d answers "forbidden" for the install.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        write_policy_rc_d(policy)?;
    }
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    if own_policy {
        std::fs::remove_file(policy).map_err(|e| format!("remove {}: {e}", policy.display()))?;
    }
    installed
}

fn write_policy_rc_d(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(
        path,
        "#!/bin/sh\n# written by cargo xtask for one apt-get install\nexit 101\n",
    )
    .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)))
    .map_err(|e| format!("write {}: {e}", path.display()))
}

/// A static executable has no PT_INTERP program header (ELF64, little endian).
pub fn is_static(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    if b.get(..4) != Some(b"\x7fELF") || b.get(4) != Some(&2) {
        return Err(format!("{} is not an ELF64 file", path.display()));
    }
    let bad = || format!("{}: truncated ELF header", path.display());
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let phentsize = u16_at(0x36).ok_or_else(bad)? as usize;
    let phnum = u16_at(0x38).ok_or_else(bad)? as usize;
    for i in 0..phnum {
        if u32_at(phoff + i * phentsize).ok_or_else(bad)? == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}
