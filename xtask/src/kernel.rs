//! `cargo xtask kernel [--flavour minimal|kata|test]`: the guest kernel.
//!
//! Linux 6.12 LTS from Debian's `linux-source-6.12` package (or `KERNEL_SRC=`),
//! allnoconfig plus the flavour's fragments from kernel-config/, verified
//! option by option, built as `vmlinux` (PVH entry) and `bzImage`, and cached
//! by a hash of the source version and the fragments under ~/.cache/minos, so
//! a fresh clone reuses an earlier build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{ensure_packages, root, run, Result};

pub const FLAVOURS: [&str; 3] = ["minimal", "kata", "test"];

/// The fragments of a flavour, in merge order.
pub fn fragments(flavour: &str) -> Result<Vec<PathBuf>> {
    let dir = root().join("kernel-config");
    let names: &[&str] = match flavour {
        "minimal" => &["base.config", "minimal.config"],
        "kata" => &["base.config", "kata.config"],
        "test" => &["base.config", "kata.config", "test.config"],
        other => {
            return Err(format!(
                "unknown kernel flavour {other:?} (minimal, kata, test)"
            ))
        }
    };
    Ok(names.iter().map(|n| dir.join(n)).collect())
}

pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    std::env::var_os("MINOS_CACHE").map_or_else(|| home.join(".cache/minos"), PathBuf::from)
}

/// The kernel source tree: `$KERNEL_SRC`, else Debian's linux-source-6.12
/// unpacked once into the cache.
fn source() -> Result<PathBuf> {
    if let Some(src) = std::env::var_os("KERNEL_SRC") {
        return Ok(PathBuf::from(src));
    }
    let dir = cache_dir().join("src/linux-source-6.12");
    if dir.join("Makefile").is_file() {
        return Ok(dir);
    }
    ensure_packages(&[("xz", "xz-utils")])?;
    let tarball = Path::new("/usr/src/linux-source-6.12.tar.xz");
    if !tarball.is_file() {
        ensure_packages(&[("/usr/src/linux-source-6.12.tar.xz", "linux-source-6.12")])?;
    }
    let parent = cache_dir().join("src");
    std::fs::create_dir_all(&parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    println!(
        "xtask: unpacking {} into {}",
        tarball.display(),
        parent.display()
    );
    run(Command::new("tar")
        .arg("-xJf")
        .arg(tarball)
        .arg("-C")
        .arg(&parent))?;
    Ok(dir)
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` from the top Makefile.
fn source_version(src: &Path) -> Result<String> {
    let mk = std::fs::read_to_string(src.join("Makefile"))
        .map_err(|e| format!("read {}/Makefile: {e}", src.display()))?;
    let get = |k: &str| {
        mk.lines()
            .find_map(|l| {
                l.strip_prefix(k)
                    .and_then(|r| r.trim_start().strip_prefix('='))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    Ok(format!(
        "{}.{}.{}{}",
        get("VERSION"),
        get("PATCHLEVEL"),
        get("SUBLEVEL"),
        get("EXTRAVERSION")
    ))
}

/// FNV-1a, 64 bits: stable across Rust versions (std's hasher is not).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The options the fragments ask for: (name, value), `n` for "is not set".
pub fn requested(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(rest) = l.strip_prefix("# ") {
                let name = rest.strip_suffix(" is not set")?;
                return name
                    .starts_with("CONFIG_")
                    .then(|| (name.to_string(), "n".to_string()));
            }
            let (k, v) = l.split_once('=')?;
            k.starts_with("CONFIG_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Every requested option that the final .config lacks or sets otherwise.
pub fn dropped(requested: &[(String, String)], config: &str) -> Vec<String> {
    let final_value = |name: &str| -> String {
        for l in config.lines() {
            if let Some(v) = l.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
                return v.to_string();
            }
            if l == format!("# {name} is not set") {
                return "n".into();
            }
        }
        "n".into()
    };
    requested
        .iter()
        .filter_map(|(k, v)| {
            let got = final_value(k);
            (got != *v).then(|| {
                format!(
                    "{k}={v} (final: {})",
                    if got == "n" { "not set".into() } else { got }
                )
            })
        })
        .collect()
}

/// Paths of a built kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub config: PathBuf,
}

/// Builds (or finds in the cache) the kernel of `flavour`.
pub fn build(flavour: &str) -> Result<Kernel> {
    let frags = fragments(flavour)?;
    let mut text = String::new();
    for f in &frags {
        text.push_str(
            &std::fs::read_to_string(f).map_err(|e| format!("read {}: {e}", f.display()))?,
        );
        text.push('\n');
    }
    let src = source()?;
    let version = source_version(&src)?;
    let key = format!(
        "{flavour}-{version}-{:016x}",
        fnv1a(format!("minos-kernel-1\n{version}\n{text}").as_bytes())
    );
    let out = cache_dir().join("kernel").join(&key);
    let kernel = Kernel {
        vmlinux: out.join("vmlinux"),
        bzimage: out.join("bzImage"),
        config: out.join("config"),
    };
    if kernel.vmlinux.is_file() && kernel.bzimage.is_file() {
        println!(
            "xtask: kernel {flavour} (Linux {version}) from cache: {}",
            out.display()
        );
        return Ok(kernel);
    }
    ensure_packages(&[
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("gcc", "gcc"),
        ("make", "make"),
        ("perl", "perl"),
    ])?;
    if !Path::new("/usr/include/libelf.h").exists() {
        ensure_packages(&[("/usr/include/libelf.h", "libelf-dev")])?;
    }
    let build = cache_dir().join("build").join(flavour);
    std::fs::create_dir_all(&build).map_err(|e| format!("create {}: {e}", build.display()))?;
    println!(
        "xtask: configuring Linux {version} ({flavour}) in {}",
        build.display()
    );
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .arg("-n")
        .arg("-O")
        .arg(&build)
        .args(&frags)
        .current_dir(&src);
    let merged = merge
        .output()
        .map_err(|e| format!("merge_config.sh: {e}"))?;
    if !merged.status.success() {
        return Err(format!(
            "merge_config.sh failed:\n{}",
            String::from_utf8_lossy(&merged.stderr)
        ));
    }
    let config =
        std::fs::read_to_string(build.join(".config")).map_err(|e| format!("read .config: {e}"))?;
    let missing = dropped(&requested(&text), &config);
    if !missing.is_empty() {
        return Err(format!(
            "kernel {flavour}: {} requested option(s) not in the final .config (a dependency is missing):\n  {}",
            missing.len(),
            missing.join("\n  ")
        ));
    }
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("xtask: building vmlinux and bzImage with {jobs} jobs");
    make_with_progress(
        Command::new("make")
            .arg(format!("O={}", build.display()))
            .arg(format!("-j{jobs}"))
            .args(["vmlinux", "bzImage"])
            .current_dir(&src),
        flavour,
        &build.join(PROGRESS_FILE),
    )?;
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("create {}: {e}", tmp.display()))?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        std::fs::copy(build.join(from), tmp.join(to)).map_err(|e| format!("copy {from}: {e}"))?;
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename {}: {e}", out.display()))?;
    println!("xtask: kernel {flavour}: {}", out.display());
    Ok(kernel)
}

/// Where a flavour's last build left its step count and duration, for the
/// next one's estimate (in the build directory).
const PROGRESS_FILE: &str = "minos-progress";
/// How often progress is printed when stdout is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Runs the kernel's `make` showing progress: make's step lines (`  CC
/// path` …) are counted, not shown; on a terminal one line is updated in
/// place, otherwise a line is printed every 30 s; with the previous build's
/// step count and duration (`state`) the steps are a fraction and the time
/// left an estimate. Warnings and errors (stderr) pass through.
fn make_with_progress(cmd: &mut Command, flavour: &str, state: &Path) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    let previous = std::fs::read_to_string(state).ok().and_then(|t| {
        let mut w = t.split_whitespace().map(str::parse::<u64>);
        match (w.next(), w.next()) {
            (Some(Ok(steps)), Some(Ok(secs))) if steps > 0 => Some((steps, secs)),
            _ => None,
        }
    });
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {shown}: {e}"))?;
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut printed = Instant::now();
    let mut steps = 0u64;
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("  ") {
                steps += 1;
            }
            if tty || printed.elapsed() >= PROGRESS_EVERY {
                let text = progress_line(flavour, steps, started.elapsed(), previous);
                if tty {
                    print!("\r{text}\x1b[K");
                    let _ = std::io::stdout().flush();
                } else {
                    println!("{text}");
                }
                printed = Instant::now();
            }
        }
    }
    if tty {
        println!();
    }
    let status = child.wait().map_err(|e| format!("wait for {shown}: {e}"))?;
    if !status.success() {
        return Err(format!("{shown} failed: {status}"));
    }
    let _ = std::fs::write(state, format!("{steps} {}\n", started.elapsed().as_secs()));
    println!(
        "xtask: kernel {flavour}: {steps} make steps in {}",
        minutes(started.elapsed().as_secs())
    );
    Ok(())
}

/// One progress line: steps done, time spent and, from the previous build
/// (steps, seconds), the fraction and the time left.
fn progress_line(
    flavour: &str,
    steps: u64,
    elapsed: Duration,
    previous: Option<(u64, u64)>,
) -> String {
    let spent = minutes(elapsed.as_secs());
    match previous {
        Some((total, secs)) => {
            let fraction = (steps as f64 / total as f64).min(1.0);
            let left = (secs as f64 * (1.0 - fraction)).round() as u64;
            format!(
                "xtask: kernel {flavour}: {steps}/{total} steps ({:.0} %), {spent} spent, about {} left",
                fraction * 100.0,
                minutes(left)
            )
        }
        None => format!(
            "xtask: kernel {flavour}: {steps} steps, {spent} spent (a first build: 11–15 minutes on 2 cores)"
        ),
    }
}

/// `m:ss`.
fn minutes(secs: u64) -> String {
    format!("{}:{:02}", secs / 60, secs % 60)
}

pub fn main(flavour: Option<&str>) -> Result<()> {
    let flavours: Vec<&str> = match flavour {
        Some(f) => vec![f],
        None => FLAVOURS.to_vec(),
    };
    for f in flavours {
        let k = build(f)?;
        for p in [&k.vmlinux, &k.bzimage, &k.config] {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            println!("xtask: {f}: {} ({len} bytes)", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// make's step lines are counted and the count kept for the next
    /// build; a failing make is an error naming it.
    #[test]
    fn make_progress_counts_steps_and_keeps_them() {
        let dir = std::env::temp_dir().join(format!("xtask-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join(PROGRESS_FILE);
        make_with_progress(
            Command::new("sh").args([
                "-c",
                "printf '  CC      a.o\\n  LD      b\\nnote\\n  AR      c\\n'",
            ]),
            "test",
            &state,
        )
        .unwrap();
        let kept = std::fs::read_to_string(&state).unwrap();
        assert!(kept.starts_with("3 "), "{kept:?}");
        let err = make_with_progress(Command::new("sh").args(["-c", "exit 2"]), "test", &state)
            .unwrap_err();
        assert!(err.contains("failed"), "{err}");
        assert!(std::fs::read_to_string(&state).unwrap().starts_with("3 "));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn progress_lines() {
        let d = Duration::from_secs(95);
        assert_eq!(
            progress_line("kata", 120, d, None),
            "xtask: kernel kata: 120 steps, 1:35 spent (a first build: 11–15 minutes on 2 cores)"
        );
        assert_eq!(
            progress_line("kata", 500, d, Some((2000, 800))),
            "xtask: kernel kata: 500/2000 steps (25 %), 1:35 spent, about 10:00 left"
        );
        // More steps than last time: done as far as the estimate goes.
        assert_eq!(
            progress_line("test", 2100, d, Some((2000, 800))),
            "xtask: kernel test: 2100/2000 steps (100 %), 1:35 spent, about 0:00 left"
        );
    }

    #[test]
    fn requested_and_dropped_options() {
        let frag = "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=y\n";
        let req = requested(frag);
        assert_eq!(req.len(), 4);
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"y\"\n";
        assert_eq!(
            dropped(&req, cfg),
            vec![
                "CONFIG_C=\"x\" (final: \"y\")",
                "CONFIG_D=y (final: not set)"
            ]
        );
    }

    #[test]
    fn every_flavour_has_fragments_that_exist() {
        for f in FLAVOURS {
            for p in fragments(f).unwrap() {
                assert!(p.is_file(), "{}", p.display());
            }
        }
    }
}
