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

/// What the boot loop measured.
struct BootLoop {
    boots: u64,
    wall: Duration,
    guest_agent_ready_ms: Vec<u64>,
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
    let mut ready = Vec::new();
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
        let r = boot(&o)?;
        let written = format!("probe soakwrite: boot {n} written");
        if !(r.console.contains(&written)
            && r.console
                .contains("agent-shim: exiting status=0 reason=exit-after")
            && r.shutdown_seen
            && r.exited_cleanly)
        {
            return Err(format!(
                "boot {n}: no write, no agent exit or no clean poweroff\n--- console ---\n{}",
                r.console
            ));
        }
        check_disk(&disk, n, &scratch)?;
        if let Some(us) = r.agent_ready_us {
            ready.push(us / 1000);
        }
        println!(
            "soak: boot {n}/{boots} ok (e2fsck clean, {n} files intact) {}",
            r.summary()
        );
    }
    Ok(BootLoop {
        boots,
        wall: started.elapsed(),
        guest_agent_ready_ms: ready,
    })
}

pub fn main(args: &[String]) -> Result<()> {
    let boots: u64 = crate::util::arg_number(args, "--boots", 100)?;
    let fuzz_seconds: u64 = crate::util::arg_number(args, "--fuzz-seconds", 600)?;
    let record = args.iter().any(|a| a == "--record");
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
        std::fs::write(&path, render(boot.as_ref(), &fuzz))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        println!("soak: results in {}", path.display());
    }
    let failed: Vec<String> = fuzz
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|(t, e)| format!("{t}: {e}"))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("\n"))
    }
}

type FuzzResult = std::result::Result<crate::fuzz::Run, (&'static str, String)>;

fn render(boot: Option<&BootLoop>, fuzz: &[FuzzResult]) -> String {
    let mut s = String::from(
        "# Soak results\n\nWritten by `cargo xtask soak --record` (issue 7's long runs): the last \
         results on this project's machine (2 cores, QEMU under TCG). The shorter versions run in \
         `cargo xtask test` (3 boots, the fuzz corpora replayed).\n",
    );
    if let Some(b) = boot {
        let min = b.guest_agent_ready_ms.iter().min().copied().unwrap_or(0);
        let max = b.guest_agent_ready_ms.iter().max().copied().unwrap_or(0);
        let _ = write!(
            s,
            "\n## {} boots writing to a data disk\n\n\
             Each boot of the DAX image (test kernel, q35, 512 MiB) mounted one ext4 data disk kept \
             across all boots, wrote `boot-K` (256 KiB), appended to `log` and rewrote `current` \
             without fsync; then the agent exited and Kata's unit powered the guest off. After \
             each boot the host ran `e2fsck -fn` and read the whole disk back.\n\n\
             | boots | clean power-offs | e2fsck clean | files intact after the last boot | wall time | agent ready (guest ms) |\n\
             |---:|---:|---:|---:|---:|---|\n\
             | {} | {} | {} | {} of {} | {:.0} s | {min}–{max} |\n",
            b.boots,
            b.boots,
            b.boots,
            b.boots,
            b.boots,
            b.boots,
            b.wall.as_secs_f64()
        );
    }
    if !fuzz.is_empty() {
        s.push_str(
            "\n## Fuzzing\n\n`cargo fuzz run` (libFuzzer, AddressSanitizer) per target, from the \
             committed corpus ([docs/fuzzing.md](fuzzing.md)).\n\n\
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_lists_boots_runs_and_findings() {
        let boot = BootLoop {
            boots: 100,
            wall: Duration::from_secs(700),
            guest_agent_ready_ms: vec![317, 320, 317],
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
        let md = render(Some(&boot), &fuzz);
        assert!(
            md.contains("| 100 | 100 | 100 | 100 of 100 | 700 s | 317–320 |"),
            "{md}"
        );
        assert!(
            md.contains("| `unit_file` | 600 | 2519343 | 13542 | none |"),
            "{md}"
        );
        assert!(
            md.contains("| `ttrpc_frames` | | | | **fuzz target failed: out of memory** |"),
            "{md}"
        );
    }

    #[test]
    fn soak_bytes_match_the_probe_s() {
        // probe's soak_byte: ((i * 31 + n * 7) % 251) as u8.
        assert_eq!(soak_byte(1, 0), 7);
        assert_eq!(soak_byte(2, 10), ((10 * 31 + 14) % 251) as u8);
    }
}
