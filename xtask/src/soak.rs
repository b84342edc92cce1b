//! `cargo xtask soak [--boots N] [--fuzz-seconds S] [--record]`: the long
//! runs of issue 7.
//!
//! - N consecutive boots (default 100) of the DAX image with one read-write
//!   ext4 data disk kept across them. Each boot a unit mounts the disk and
//!   writes `boot-K` (256 KiB), appends to `log` and rewrites `current`,
//!   without fsync; then the agent exits (`agent.exit_after=2s`) and Kata's
//!   unit powers the guest off. After every boot the host runs `e2fsck -fn`
//!   and reads the whole disk back (`debugfs rdump`): every file of every
//!   boot so far must be intact.
//! - each fuzz target for S seconds (default 600; 0 skips them).
//! - `--record` writes the figures to docs/soak.md.
//!
//! `cargo xtask test` runs `soak --boots 3 --fuzz-seconds 0`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::image::{Entry, Fs};
use crate::qemu::{boot, BootOptions, Kind};
use crate::util::{root, Result};

/// Byte `i` of boot `n`'s file: the same function as `probe soakwrite`.
fn soak_byte(n: u64, i: u64) -> u8 {
    ((i * 31 + n * 7) % 251) as u8
}

const FILE_LEN: u64 = 256 * 1024;

/// Checks the disk after boot `n`: e2fsck clean, then boot-1..boot-n, log
/// and current as written.
fn check_disk(disk: &Path, n: u64, scratch: &Path) -> Result<()> {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(disk)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    if !fsck.status.success() {
        return Err(format!(
            "e2fsck -fn after boot {n}: {}\n{}",
            fsck.status,
            String::from_utf8_lossy(&fsck.stdout)
        ));
    }
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let dump = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", scratch.display()))
        .arg(disk)
        .output()
        .map_err(|e| format!("debugfs: {e}"))?;
    if !dump.status.success() {
        return Err(format!("debugfs rdump after boot {n}: {}", dump.status));
    }
    for k in 1..=n {
        let path = scratch.join(format!("boot-{k}"));
        let data = std::fs::read(&path).map_err(|e| format!("after boot {n}: boot-{k}: {e}"))?;
        let want: Vec<u8> = (0..FILE_LEN).map(|i| soak_byte(k, i)).collect();
        if data != want {
            return Err(format!(
                "after boot {n}: boot-{k} differs ({} bytes, {} expected)",
                data.len(),
                want.len()
            ));
        }
    }
    let log = std::fs::read_to_string(scratch.join("log")).map_err(|e| format!("log: {e}"))?;
    let boots: Vec<String> = log
        .lines()
        .map(|l| l.rsplit_once(' ').map_or(l, |(b, _)| b).to_owned())
        .collect();
    let want: Vec<String> = (1..=n).map(|k| format!("boot {k}")).collect();
    if boots != want {
        return Err(format!("after boot {n}: log is {boots:?}"));
    }
    let current =
        std::fs::read_to_string(scratch.join("current")).map_err(|e| format!("current: {e}"))?;
    if current != n.to_string() {
        return Err(format!("after boot {n}: current is {current:?}"));
    }
    Ok(())
}

/// One boot of the loop, as the page and the log record it.
#[derive(Debug, Clone)]
struct Boot {
    n: u64,
    /// The unit wrote its files, the agent exited as asked, the guest
    /// powered off cleanly.
    clean: bool,
    /// `e2fsck -fn` clean and every file of every boot so far intact.
    disk: std::result::Result<(), String>,
    agent_ready_ms: Option<u64>,
    /// The boot's summary line (`BootResult::summary`), or why it failed.
    line: String,
}

/// What the boot loop measured. A failed boot ends the loop and is
/// recorded with the rest.
struct BootLoop {
    asked: u64,
    wall: Duration,
    boots: Vec<Boot>,
}

impl BootLoop {
    fn failure(&self) -> Option<String> {
        self.boots.iter().find_map(|b| {
            if !b.clean {
                Some(format!("boot {}: {}", b.n, b.line))
            } else {
                b.disk.as_ref().err().map(|e| format!("boot {}: {e}", b.n))
            }
        })
    }
}

fn boot_loop(boots: u64) -> Result<BootLoop> {
    let kernel = crate::kernel::build("test")?.vmlinux;
    let bin = crate::util::release_dir();
    let probe = std::fs::read(bin.join("probe")).map_err(|e| format!("probe: {e}"))?;
    let extra = vec![
        Entry::File {
            path: "usr/bin/probe".into(),
            mode: 0o755,
            data: probe,
        },
        Entry::File {
            path: "etc/minos/units/soak.service".into(),
            mode: 0o644,
            data:
                b"[Unit]\nAfter=kata-agent.service\n[Service]\nType=oneshot\nStandardOutput=tty\n\
                    ExecStart=/usr/bin/probe mount /dev/vda /mnt ext4\n\
                    ExecStart=/usr/bin/probe soakwrite /mnt\n"
                    .to_vec(),
        },
    ];
    let image = crate::image::build_on("dax", &bin, None, &extra, "soak", None, Fs::Ext4)?;
    let disk = root().join("target/images/soak-data.ext4");
    let scratch = root().join("target/images/soak-dump");
    let _ = std::fs::remove_file(&disk);
    crate::util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&disk)
            .arg("64M")
            .stdout(std::process::Stdio::null()),
    )?;
    let started = Instant::now();
    let mut done = Vec::new();
    for n in 1..=boots {
        let o = BootOptions {
            kernel: kernel.clone(),
            kind: Kind::Dax,
            fs: Fs::Ext4,
            image: image.clone(),
            data_disks: vec![disk.clone()],
            machine: "q35".into(),
            extra_cmdline: format!("agent.exit_after=2s minos.soak_boot={n}"),
            memory_mib: 512,
            timeout: Duration::from_secs(300),
            echo: false,
            vsock: None,
            host: None,
        };
        let boot = match boot(&o) {
            Ok(r) => {
                let written = format!("probe soakwrite: boot {n} written");
                let clean = r.console.contains(&written)
                    && r.console
                        .contains("agent-shim: exiting status=0 reason=exit-after")
                    && r.shutdown_seen
                    && r.exited_cleanly;
                let line = if clean {
                    r.summary()
                } else {
                    let tail: Vec<&str> = r.console.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!(
                        "no write, no agent exit or no clean poweroff; {}; console ends: {}",
                        r.summary(),
                        tail.join(" | ")
                    )
                };
                Boot {
                    n,
                    clean,
                    disk: check_disk(&disk, n, &scratch),
                    agent_ready_ms: r.agent_ready_us.map(|us| us / 1000),
                    line,
                }
            }
            Err(e) => Boot {
                n,
                clean: false,
                disk: Err("not checked".into()),
                agent_ready_ms: None,
                line: e,
            },
        };
        println!("soak: {}", boot_line(&boot));
        let stop = !boot.clean || boot.disk.is_err();
        done.push(boot);
        if stop {
            break;
        }
    }
    Ok(BootLoop {
        asked: boots,
        wall: started.elapsed(),
        boots: done,
    })
}

/// One boot's line in the log and on stdout.
fn boot_line(b: &Boot) -> String {
    let disk = match &b.disk {
        Ok(()) => format!("e2fsck clean, {} files intact", b.n),
        Err(e) => format!("disk: {e}"),
    };
    let state = if b.clean && b.disk.is_ok() {
        "ok"
    } else {
        "FAILED"
    };
    format!("boot {} {state} ({disk}) {}", b.n, b.line)
}

pub fn main(boots: u64, fuzz_seconds: u64, record: bool) -> Result<()> {
    let run = Run {
        command: format!(
            "cargo xtask soak --boots {boots} --fuzz-seconds {fuzz_seconds}{}",
            if record { " --record" } else { "" }
        ),
        commit: crate::util::commit(),
        dirty: work_tree_dirty(),
        date: crate::util::today(),
    };
    let boot = if boots > 0 {
        Some(boot_loop(boots)?)
    } else {
        None
    };
    // Every target runs; a finding is recorded with the others.
    let mut fuzz = Vec::new();
    if fuzz_seconds > 0 {
        for t in crate::fuzz::TARGETS {
            fuzz.push(crate::fuzz::run_target(t, fuzz_seconds).map_err(|e| (t, e)));
        }
    }
    if record {
        let path = root().join("docs/soak.md");
        std::fs::write(&path, render(&run, boot.as_ref(), &fuzz))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let log = root().join("docs/soak/soak.log");
        std::fs::create_dir_all(root().join("docs/soak"))
            .map_err(|e| format!("create docs/soak: {e}"))?;
        std::fs::write(&log, log_text(&run, boot.as_ref(), &fuzz))
            .map_err(|e| format!("write {}: {e}", log.display()))?;
        println!("soak: results in {} and {}", path.display(), log.display());
    }
    let mut failed: Vec<String> = boot
        .as_ref()
        .and_then(BootLoop::failure)
        .into_iter()
        .collect();
    failed.extend(
        fuzz.iter()
            .filter_map(|r| r.as_ref().err())
            .map(|(t, e)| format!("{t}: {e}")),
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

/// Where and when a run was made, for its page.
struct Run {
    command: String,
    commit: String,
    dirty: bool,
    date: String,
}

fn work_tree_dirty() -> bool {
    Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(true)
}

type FuzzResult = std::result::Result<crate::fuzz::Run, (&'static str, String)>;

fn render(run: &Run, boot: Option<&BootLoop>, fuzz: &[FuzzResult]) -> String {
    let mut s = format!(
        "# Soak results\n\nWritten by `{}` on {} at commit {}{}, on this project's machine \
         (2 cores, QEMU under TCG); each boot's line and each fuzz target's result are in \
         [soak/soak.log](soak/soak.log), written by the same run. The shorter versions run in \
         `cargo xtask test` (3 boots, the fuzz corpora replayed).\n",
        run.command.trim_end(),
        run.date,
        run.commit,
        if run.dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
    );
    if let Some(b) = boot {
        let ran = b.boots.len();
        let clean = b.boots.iter().filter(|x| x.clean).count();
        let disk_ok = b.boots.iter().filter(|x| x.disk.is_ok()).count();
        let intact = b
            .boots
            .iter()
            .rev()
            .find(|x| x.disk.is_ok())
            .map_or(0, |x| x.n);
        let ready: Vec<u64> = b.boots.iter().filter_map(|x| x.agent_ready_ms).collect();
        let span = match (ready.iter().min(), ready.iter().max()) {
            (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
            _ => "none".into(),
        };
        let _ = write!(
            s,
            "\n## {} boots writing to a data disk\n\n\
             Each boot of the DAX image (test kernel, q35, 512 MiB) mounted one ext4 data disk kept \
             across all boots, wrote `boot-K` (256 KiB), appended to `log` and rewrote `current` \
             without fsync; then the agent exited (`agent.exit_after=2s`) and Kata's unit powered \
             the guest off. After each boot the host ran `e2fsck -fn` and read the whole disk back \
             (`debugfs rdump`): every file of every boot so far had to be intact. A failed boot \
             ends the loop.\n\n\
             | boots asked | boots run | clean power-offs | e2fsck clean, files intact | files intact after the last good check | wall time | agent ready (guest ms) |\n\
             |---:|---:|---:|---:|---:|---:|---|\n\
             | {} | {ran} | {clean} | {disk_ok} | {intact} of {ran} | {:.0} s | {span} |\n",
            b.asked,
            b.asked,
            b.wall.as_secs_f64()
        );
        if let Some(f) = b.failure() {
            let _ = writeln!(s, "\n**Failed:** {}", f.replace('\n', " "));
        }
    }
    if !fuzz.is_empty() {
        s.push_str(
            "\n## Fuzzing\n\n`cargo fuzz run` (libFuzzer, AddressSanitizer) per target, from the \
             committed corpus ([fuzzing.md](fuzzing.md)).\n\n\
             | target | seconds | executions | corpus files after | findings |\n|---|---:|---:|---:|---|\n",
        );
        for r in fuzz {
            let _ = match r {
                Ok(r) => writeln!(
                    s,
                    "| `{}` | {} | {} | {} | none |",
                    r.target, r.seconds, r.executions, r.corpus_files
                ),
                Err((t, e)) => writeln!(s, "| `{t}` | | | | **{}** |", e.replace('\n', " ")),
            };
        }
    }
    s
}

/// The run's log: one line per boot, one per fuzz target.
fn log_text(run: &Run, boot: Option<&BootLoop>, fuzz: &[FuzzResult]) -> String {
    let mut s = format!(
        "# {} on {} at {}{}\n",
        run.command.trim_end(),
        run.date,
        run.commit,
        if run.dirty { "-dirty" } else { "" }
    );
    if let Some(b) = boot {
        for x in &b.boots {
            let _ = writeln!(s, "{}", boot_line(x));
        }
        let _ = writeln!(
            s,
            "boots: {} of {} run in {:.0} s",
            b.boots.len(),
            b.asked,
            b.wall.as_secs_f64()
        );
    }
    for r in fuzz {
        let _ = match r {
            Ok(r) => writeln!(
                s,
                "fuzz {}: {} s, {} executions, {} corpus files, no finding",
                r.target, r.seconds, r.executions, r.corpus_files
            ),
            Err((t, e)) => writeln!(s, "fuzz {t}: FAILED: {}", e.replace('\n', " ")),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            command: "cargo xtask soak --record".into(),
            commit: "0123456789ab".into(),
            dirty: false,
            date: "2026-12-07".into(),
        }
    }

    fn ok_boot(n: u64, ms: u64) -> Boot {
        Boot {
            n,
            clean: true,
            disk: Ok(()),
            agent_ready_ms: Some(ms),
            line: format!("boot: agent_ready_ms={ms}"),
        }
    }

    #[test]
    fn the_record_lists_boots_runs_and_findings() {
        let boot = BootLoop {
            asked: 3,
            wall: Duration::from_secs(21),
            boots: vec![ok_boot(1, 317), ok_boot(2, 320), ok_boot(3, 318)],
        };
        let fuzz = vec![
            Ok(crate::fuzz::Run {
                target: "unit_file".into(),
                seconds: 600,
                executions: 2_519_343,
                corpus_files: 13542,
            }),
            Err((
                "ttrpc_frames",
                "fuzz target failed:\nout of memory".to_owned(),
            )),
        ];
        let md = render(&run(), Some(&boot), &fuzz);
        assert!(
            md.contains(
                "Written by `cargo xtask soak --record` on 2026-12-07 at commit 0123456789ab,"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 3 | 3 | 3 | 3 | 3 of 3 | 21 s | 317–320 |"),
            "{md}"
        );
        assert!(!md.contains("**Failed:**"), "{md}");
        assert!(
            md.contains("| `unit_file` | 600 | 2519343 | 13542 | none |"),
            "{md}"
        );
        assert!(
            md.contains("| `ttrpc_frames` | | | | **fuzz target failed: out of memory** |"),
            "{md}"
        );
        let log = log_text(&run(), Some(&boot), &fuzz);
        assert!(
            log.contains("boot 2 ok (e2fsck clean, 2 files intact) boot: agent_ready_ms=320\n"),
            "{log}"
        );
        assert!(
            log.contains("fuzz ttrpc_frames: FAILED: fuzz target failed: out of memory\n"),
            "{log}"
        );
    }

    #[test]
    fn a_failed_boot_is_counted_and_named_not_hidden() {
        let mut bad = ok_boot(2, 330);
        bad.disk = Err("after boot 2: boot-1 differs".into());
        let boot = BootLoop {
            asked: 100,
            wall: Duration::from_secs(14),
            boots: vec![ok_boot(1, 317), bad],
        };
        let md = render(&run(), Some(&boot), &[]);
        assert!(
            md.contains("| 100 | 2 | 2 | 1 | 1 of 2 | 14 s | 317–330 |"),
            "{md}"
        );
        assert!(
            md.contains("**Failed:** boot 2: after boot 2: boot-1 differs"),
            "{md}"
        );
        assert!(log_text(&run(), Some(&boot), &[])
            .contains("boot 2 FAILED (disk: after boot 2: boot-1 differs)"));
    }

    #[test]
    fn soak_bytes_match_the_probe_s() {
        // probe's soak_byte: ((i * 31 + n * 7) % 251) as u8.
        assert_eq!(soak_byte(1, 0), 7);
        assert_eq!(soak_byte(2, 10), ((10 * 31 + 14) % 251) as u8);
    }
}
