//! `cargo xtask bench [--quick] [--check] [--systems a,b] [--flavours f,g]
//! [--configs MACHINE/KIND/FORMAT,...] [--out DIR] [--no-time] [--no-real]`
//! (`--pid1`: see [`pid1`]; `--ntp-sim`: see [`ntpsim`]; `--render`: the page and charts again from
//! docs/bench/results.json):
//! boots every system of [`systems`] the same way — same kernel, QEMU
//! machine, memory, vCPUs and Kata kernel command line — and writes
//! `results.json`, `BENCHMARKS.md`'s table and one SVG chart per metric.
//!
//! All figures are guest time under `-icount shift=0,sleep=off`
//! (deterministic; images on NVDIMM or as an initrd), measured from inside
//! by agent-shim's `agent.bench` lines (kernel-log marks, see
//! agent-shim/src/bench.rs), except the host's health check, which needs
//! guest time to follow real time (`sleep=on`, about ±5 %).
//!
//! The real kata-agent (under minos, and as init) is booted too, three
//! times per configuration on the `kata` kernel ([`real`]; `--no-real`
//! skips it).
//!
//! `--quick` (what `cargo xtask test` runs): minos and the agent as init on
//! the cached `test` kernel, q35 + DAX, one boot each plus one health-check
//! boot, and the real agent's configurations once each, written under
//! target/bench; the output files are read back.

pub mod ntpsim;
pub mod pid1;
pub mod real;
pub mod report;
pub mod systems;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::image::Fs;
use crate::qemu::{BootOptions, BootReport, Kind};
use crate::util::{root, Result};
use systems::System;

/// Guest memory and vCPUs: Kata's defaults (`default_memory = 2048`,
/// `default_vcpus = 1`).
pub const MEMORY_MIB: u32 = 2048;

/// One boot configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub flavour: String,
    pub machine: String,
    pub kind: String,
    /// `vmlinux` (PVH entry, uncompressed) or `bzImage` (compressed, with
    /// the decompressor).
    pub kernel_format: String,
}

impl Config {
    pub fn new(flavour: &str, machine: &str, kind: &str, kernel_format: &str) -> Self {
        Self {
            flavour: flavour.into(),
            machine: machine.into(),
            kind: kind.into(),
            kernel_format: kernel_format.into(),
        }
    }

    pub fn name(&self) -> String {
        let format = if self.kernel_format == "vmlinux" {
            String::new()
        } else {
            format!(" {}", self.kernel_format)
        };
        format!(
            "{} kernel{format}, {}, {}",
            self.flavour, self.machine, self.kind
        )
    }

    /// The bzImage configurations compare kernel formats: minos alone.
    fn runs(&self, system: System) -> bool {
        self.kernel_format == "vmlinux" || system == System::Minos
    }
}

/// What one boot of one system showed (guest ms; memory in KiB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    pub config: Config,
    /// Kernel clock start → `Run /sbin/init as init process`.
    pub kernel_to_init_ms: f64,
    /// init exec → the agent's first instruction of `main`.
    pub init_to_agent_exec_ms: f64,
    /// init exec → the agent listening and announcing readiness.
    pub init_to_agent_ready_ms: f64,
    /// Kernel clock start → agent ready.
    pub agent_ready_ms: f64,
    /// Power-on → agent ready, and power-on → kernel clock start (firmware,
    /// loader, decompression), where the machine has an ACPI PM timer.
    pub power_on_to_ready_ms: Option<f64>,
    pub pre_kernel_ms: Option<f64>,
    /// MemTotal − MemFree − per-CPU-list pages, at ready and 1 s later.
    pub mem_ready_kib: u64,
    pub mem_late_kib: u64,
    pub processes: u64,
    pub rss_kib: u64,
    pub pss_kib: Option<u64>,
    pub image_bytes: u64,
    pub rootfs_files: Option<u64>,
    pub rootfs_bytes: Option<u64>,
    /// Guest time of the first health check answered over vsock (its own
    /// boot, `sleep=on`), on the kernel's clock and from power-on (that
    /// boot's PM timer).
    pub health_check_ms: Option<f64>,
    pub health_check_power_on_ms: Option<f64>,
    /// Each user-space process (comm) and its RSS in KiB, 10 s after ready.
    pub rss_after_10s: Vec<(String, u64)>,
}

/// A budget from docs/SPECIFICATION.md and whether today's run meets it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub what: String,
    pub config: Config,
    pub limit: f64,
    pub measured: f64,
    pub met: bool,
}

/// A budget's figure as the bench prints it: ms to the µs (a budget
/// missed by 4 µs must not read "1.7 > 1.7"), KiB whole.
fn figure(v: f64) -> String {
    if v.abs() < 100.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.0}")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub date: String,
    pub host: String,
    pub qemu: String,
    pub kernel: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub binaries: Vec<(String, u64)>,
    pub rows: Vec<Row>,
    /// Systems that did not boot on a configuration, and why.
    #[serde(default)]
    pub failures: Vec<Failure>,
    pub budgets: Vec<Budget>,
    /// timesync against chronyd in the same guest (`--time`, part of the
    /// full run).
    #[serde(default)]
    pub time_daemons: Vec<TimeDaemon>,
    /// When the time daemons were measured apart from the rest (`bench
    /// --time-only`): the date and commit of that run.
    #[serde(default)]
    pub time_daemons_run: Option<String>,
    /// The real kata-agent under minos and as init (see [`real`]).
    #[serde(default)]
    pub real_agent: Vec<real::RealRow>,
}

/// One time daemon in the PHC guest of `cargo xtask vmtest dax-q35-phc`
/// (timesync) and `dax-q35-phc-chronyd` (Debian's chronyd with Kata's two
/// lines): the same test kernel, mock PHC (1.5 s ahead, 50 ppm fast), image
/// and measurements by clockprobe, guest time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeDaemon {
    pub daemon: String,
    /// Start of the measurement → guest clock within 1 ms of the PHC.
    pub synchronised_ms: Option<f64>,
    /// After CLOCK_REALTIME jumps by +2 s and −2 s: back within 1 ms.
    pub jump_plus_ms: Option<f64>,
    pub jump_minus_ms: Option<f64>,
    /// After a +0.5 s jump, below Kata's `makestep 1` (slewed, not
    /// stepped): back within 1 ms.
    #[serde(default)]
    pub jump_half_ms: Option<f64>,
    /// The +0.5 s jump was part of the run (results from before it was
    /// added lack it: shown as not measured, not as not recovered).
    #[serde(default)]
    pub jump_half_measured: bool,
    /// Over 60 s once settled: wakeups (context switches) per second, CPU
    /// time, RSS at the end.
    pub seconds: f64,
    pub wakeups_per_s: f64,
    pub cpu_ms: f64,
    pub rss_kib: u64,
}

/// A time daemon's figures from its PHC scenario's console.
pub fn time_daemon(daemon: &str, console: &str) -> Result<TimeDaemon> {
    let usage = format!("clockprobe: usage {daemon} ");
    let need = |key: &str| {
        crate::vmtest::value_after(console, &usage, key)
            .ok_or_else(|| format!("no {key} in the `{usage}` line"))
    };
    Ok(TimeDaemon {
        daemon: daemon.into(),
        synchronised_ms: crate::vmtest::value_after(
            console,
            "clockprobe: synchronised ",
            "after_ms=",
        ),
        jump_plus_ms: crate::vmtest::value_after(
            console,
            "clockprobe: jump=+2.000 ",
            "recovered_ms=",
        ),
        jump_minus_ms: crate::vmtest::value_after(
            console,
            "clockprobe: jump=-2.000 ",
            "recovered_ms=",
        ),
        jump_half_ms: crate::vmtest::value_after(
            console,
            "clockprobe: jump=+0.500 ",
            "recovered_ms=",
        ),
        jump_half_measured: console.contains("clockprobe: jump=+0.500 "),
        seconds: need("seconds=")?,
        wakeups_per_s: need("per_s=")?,
        cpu_ms: need("cpu_ms=")?,
        rss_kib: need("rss_kib=")? as u64,
    })
}

/// Boots the two PHC scenarios and reads both daemons' figures.
fn time_daemons() -> Result<Vec<TimeDaemon>> {
    let mut v = Vec::new();
    for (scenario, daemon) in [
        ("dax-q35-phc", "timesync"),
        ("dax-q35-phc-chronyd", "chronyd"),
    ] {
        println!("xtask: bench: {daemon} in the PHC guest ({scenario})");
        let reports = crate::vmtest::reports(Some(scenario))?;
        let (_, report) = reports
            .first()
            .ok_or_else(|| format!("{scenario} did not run"))?;
        v.push(time_daemon(daemon, &report.console)?);
    }
    Ok(v)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub system: String,
    pub config: Config,
    pub reason: String,
}

/// The first value of `key=N` in `line`, `None` when absent or `unknown`.
fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// What agent-shim's two bench lines say (ms on the kernel's clock; KiB).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub kernel_to_init_ms: f64,
    pub init_to_agent_exec_ms: f64,
    pub init_to_agent_ready_ms: f64,
    pub agent_ready_ms: f64,
    /// mem_used_kib at ready and 1 s later, processes, rss_kib, pss_kib.
    pub memory: [Option<u64>; 5],
    /// Power-on → agent ready and power-on → the kernel's clock start, from
    /// the ACPI PM timer (machines that have one).
    pub power_on_to_ready_ms: Option<f64>,
    pub pre_kernel_ms: Option<f64>,
    /// What to take off any other CLOCK_BOOTTIME reading of the same boot
    /// (ms) to put it on virtual time since the kernel clock's zero.
    pub boottime_to_raw_ms: f64,
}

/// The ACPI PM timer's rate (Hz).
const PM_TIMER_HZ: u128 = 3_579_545;

/// Power-on time (ns) of a PM timer reading: the counter wraps (24 bits:
/// every 4.69 s), so it is the first value with the reading's ticks that
/// is not before `boottime_ns` (power-on precedes the kernel's clock, and
/// firmware plus decompression take less than one wrap).
pub fn power_on_ns(ticks: u64, bits: u32, boottime_ns: u64) -> Option<u64> {
    if !(1..=32).contains(&bits) {
        return None;
    }
    let period = 1u128 << bits;
    let to_ns = |t: u128| t * 1_000_000_000 / PM_TIMER_HZ;
    let mut ns = to_ns(u128::from(ticks) % period);
    let wrap = to_ns(period);
    let floor = u128::from(boottime_ns);
    if ns < floor {
        ns += (floor - ns).div_ceil(wrap) * wrap;
    }
    u64::try_from(ns).ok()
}

/// The boot figures from the console: agent-shim's two bench lines.
pub fn figures(console: &str) -> Result<Figures> {
    let ready = console
        .lines()
        .find(|l| l.contains("agent-shim: bench ready "))
        .ok_or("no `agent-shim: bench ready` line on the console")?;
    let late = console
        .lines()
        .find(|l| l.contains("agent-shim: bench late "))
        .ok_or("no `agent-shim: bench late` line on the console")?;
    let need = |line: &str, key: &str| {
        field(line, key).ok_or_else(|| format!("`{key}` missing or unknown in: {line}"))
    };
    let init_exec = need(ready, "init_exec_us")?;
    let agent_ready = need(ready, "agent_ready_us")?;
    let exec_ns = need(ready, "boottime_exec_ns")?;
    // The kernel's clock runs ahead of the guest's virtual time during early
    // boot; from the kernel's "sched_clock: Marking stable" on (before init
    // starts) it is the raw TSC clock — virtual time since the kernel set
    // up its TSC — plus this offset (signed). Every kernel-log figure below
    // is taken back to that raw clock, so that all of them are virtual time.
    let offset_ns: i64 = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sched_clock_offset_ns="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("`sched_clock_offset_ns` missing or unknown in: {ready}"))?;
    // The clock next to the mark when the shim has it, else the ready one.
    let mark_ns = field(ready, "mark_boottime_ns");
    let ready_ns = match mark_ns {
        Some(ns) => ns,
        None => need(ready, "boottime_ready_ns")?,
    };
    // The agent's exec on the kernel-log clock: its ready mark less the
    // CLOCK_BOOTTIME it spent between main() and ready.
    let impossible = |what: &str| format!("{what} in: {ready}");
    let spent_us = ready_ns
        .checked_sub(exec_ns)
        .ok_or_else(|| impossible("the ready clock is before the exec clock"))?
        / 1000;
    let agent_exec = agent_ready
        .checked_sub(spent_us)
        .filter(|exec| *exec >= init_exec)
        .ok_or_else(|| impossible("the agent's exec comes before init's"))?;
    // Kernel-log µs → raw ns (virtual time since the kernel's TSC set-up).
    let raw = |us: u64| -> Result<u64> {
        u64::try_from(us as i64 * 1000 - offset_ns)
            .map_err(|_| impossible("a mark before the kernel clock's zero"))
    };
    // CLOCK_BOOTTIME (timekeeping) is not the kernel log's clock either: it
    // lags it by a fixed amount, measured at the mark (written, then
    // CLOCK_BOOTTIME read at once). Without the mark's clock: no skew known.
    let skew_ns = mark_ns.map_or(0, |m| agent_ready as i64 * 1000 - m as i64);
    // What to take off a CLOCK_BOOTTIME reading to put it on the raw clock.
    let boottime_to_raw_ns = offset_ns - skew_ns;
    let ms = |ns: u64| ns as f64 / 1e6;
    // Power-on from the PM timer (QEMU's virtual clock since power-on),
    // read with CLOCK_BOOTTIME at ready: the raw clock's zero (the kernel's
    // TSC set-up) lies that much after power-on.
    let power_on = match (
        field(ready, "pm_timer"),
        field(ready, "pm_timer_bits"),
        field(ready, "pm_boottime_ns"),
    ) {
        (Some(t), Some(b), Some(boot)) => {
            let raw_pm = u64::try_from(boot as i64 - boottime_to_raw_ns)
                .map_err(|_| impossible("the PM timer read before the kernel clock's zero"))?;
            power_on_ns(t, b as u32, raw_pm).map(|p| p - raw_pm)
        }
        _ => None,
    };
    let raw_ready = raw(agent_ready)?;
    Ok(Figures {
        power_on_to_ready_ms: power_on.map(|before| ms(raw_ready + before)),
        pre_kernel_ms: power_on.map(ms),
        kernel_to_init_ms: ms(raw(init_exec)?),
        init_to_agent_exec_ms: (agent_exec - init_exec) as f64 / 1000.0,
        init_to_agent_ready_ms: (agent_ready - init_exec) as f64 / 1000.0,
        agent_ready_ms: ms(raw_ready),
        boottime_to_raw_ms: boottime_to_raw_ns as f64 / 1e6,
        memory: [
            field(ready, "mem_used_kib"),
            field(late, "mem_used_kib"),
            field(ready, "processes"),
            field(ready, "rss_kib"),
            field(ready, "pss_kib"),
        ],
    })
}

/// The `agent-shim: bench rss` line: each process's comm and RSS (KiB).
pub fn rss_line(console: &str) -> Option<Vec<(String, u64)>> {
    let line = console
        .lines()
        .find(|l| l.contains("agent-shim: bench rss "))?;
    let rest = line.split("agent-shim: bench rss ").nth(1)?;
    Some(
        rest.split_whitespace()
            .filter(|w| !w.starts_with("after_ms="))
            .filter_map(|w| {
                let (comm, kib) = w.rsplit_once('=')?;
                Some((comm.to_string(), kib.parse().ok()?))
            })
            .collect(),
    )
}

/// Whether a boot powered off as it should (any system, not only minos).
fn powered_off(r: &BootReport) -> bool {
    r.exited_cleanly && r.console.contains("reboot: Power down")
}

fn tree_stats(dir: &Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(std::result::Result::ok) {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let (f, b) = tree_stats(&e.path());
                    files += f;
                    bytes += b;
                }
                Ok(t) if t.is_file() => {
                    files += 1;
                    bytes += e.metadata().map_or(0, |m| m.len());
                }
                _ => {}
            }
        }
    }
    (files, bytes)
}

struct Plan {
    systems: Vec<System>,
    configs: Vec<Config>,
    /// Configurations that also get a health-check boot over vsock.
    health_check: fn(&Config) -> bool,
    out: PathBuf,
    docs: bool,
    /// Also timesync against chronyd in the PHC guest.
    time_daemons: bool,
    /// The real kata-agent's boots: on this kernel flavour, each this many
    /// times (host wall time varies from boot to boot).
    real_agent: Option<(&'static str, usize)>,
}

fn boot_one(system: System, config: &Config, bin: &Path, vsock: bool) -> Result<(Row, String)> {
    let built = crate::kernel::build(&config.flavour)?;
    let kernel = if config.kernel_format == "bzImage" {
        built.bzimage
    } else {
        built.vmlinux
    };
    let kind = Kind::parse(&config.kind)?;
    let image = systems::image(system, &config.kind, bin)?;
    let image_bytes = std::fs::metadata(&image)
        .map_err(|e| format!("{}: {e}", image.display()))?
        .len();
    // What the image holds: an initrd's own archive (every system's, as the
    // kernel unpacks it), else the tree the image was made from.
    let tree = if kind == Kind::Initrd {
        Some(crate::image::cpio_stats(&image)?)
    } else {
        Some(tree_stats(&root().join(format!(
            "target/images/bench-{}-rootfs",
            system.name()
        ))))
    }
    .filter(|(files, _)| *files > 0);
    let opts = BootOptions {
        kernel,
        kind,
        fs: Fs::Ext4,
        image,
        data_disks: Vec::new(),
        machine: config.machine.clone(),
        // Long enough for the RSS line 10 s after ready; idle guest time
        // costs nothing under sleep=off. The health-check boot (sleep=on,
        // real time) stops sooner.
        extra_cmdline: if vsock {
            "agent.bench agent.exit_after=5s".into()
        } else {
            "agent.bench agent.exit_after=11s".into()
        },
        memory_mib: MEMORY_MIB,
        timeout: Duration::from_secs(240),
        echo: false,
        vsock: vsock.then(|| bin.join("agent-shim")),
        host: None,
    };
    let report = crate::qemu::boot(&opts)?;
    let what = format!("{} on {}", system.name(), config.name());
    if !powered_off(&report) {
        return Err(format!(
            "{what}: the guest did not power off cleanly\n{}",
            report.console
        ));
    }
    let f = figures(&report.console).map_err(|e| format!("{what}: {e}\n{}", report.console))?;
    let [mem, late, procs, rss, pss] = f.memory;
    let health_check_ms = match &report.host_check {
        None => None,
        Some(Ok(answer)) if answer == "SERVING" => report
            .health_check_us
            .map(|us| us as f64 / 1000.0 - f.boottime_to_raw_ms),
        Some(other) => return Err(format!("{what}: the host's health check failed: {other:?}")),
    };
    let rss_after_10s = match rss_line(&report.console) {
        Some(list) => list,
        None if vsock => Vec::new(),
        None => {
            return Err(format!(
                "{what}: no `agent-shim: bench rss` line\n{}",
                report.console
            ))
        }
    };
    if vsock && health_check_ms.is_none() {
        return Err(format!(
            "{what}: no health check answered\n{}",
            report.console
        ));
    }
    let row = Row {
        system: system.name().into(),
        config: config.clone(),
        kernel_to_init_ms: f.kernel_to_init_ms,
        init_to_agent_exec_ms: f.init_to_agent_exec_ms,
        init_to_agent_ready_ms: f.init_to_agent_ready_ms,
        agent_ready_ms: f.agent_ready_ms,
        power_on_to_ready_ms: f.power_on_to_ready_ms,
        pre_kernel_ms: f.pre_kernel_ms,
        mem_ready_kib: mem.ok_or(format!("{what}: memory at ready unknown"))?,
        mem_late_kib: late.ok_or(format!("{what}: memory 1 s later unknown"))?,
        processes: procs.ok_or(format!("{what}: process count unknown"))?,
        rss_kib: rss.ok_or(format!("{what}: user RSS unknown"))?,
        pss_kib: pss,
        image_bytes,
        rootfs_files: tree.map(|t| t.0),
        rootfs_bytes: tree.map(|t| t.1),
        health_check_ms,
        health_check_power_on_ms: health_check_ms.zip(f.pre_kernel_ms).map(|(h, p)| h + p),
        rss_after_10s,
    };
    Ok((row, report.console))
}

pub fn command_line(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The budgets of docs/SPECIFICATION.md, checked on every DAX
/// configuration (Kata's default layout, where the budgets were set) on
/// which both minos and the agent as init ran. On an initrd every file is
/// guest RAM, so minos's three binaries cannot fit the memory budget there.
pub fn budgets(rows: &[Row]) -> Vec<Budget> {
    let mut out = Vec::new();
    for minos in rows
        .iter()
        .filter(|r| r.system == "minos" && r.config.kind == "dax")
    {
        let Some(agent) = rows
            .iter()
            .find(|r| r.system == "agent-init" && r.config == minos.config)
        else {
            continue;
        };
        let exec_limit = agent.init_to_agent_exec_ms + 1.0;
        out.push(Budget {
            what: "init exec → agent exec (ms), within 1 ms of the agent as init".into(),
            config: minos.config.clone(),
            limit: exec_limit,
            measured: minos.init_to_agent_exec_ms,
            met: minos.init_to_agent_exec_ms <= exec_limit,
        });
        // minos dropped into an osbuilder rootfs (systemd's unit
        // directories, hundreds of units) against minos's own image.
        if let Some(drop_in) = rows
            .iter()
            .find(|r| r.system == "minos-osbuilder" && r.config == minos.config)
        {
            let limit = minos.init_to_agent_exec_ms + 1.0;
            out.push(Budget {
                what: "init exec → agent exec (ms), osbuilder rootfs with minos as init, within 1 ms of minos's own image".into(),
                config: minos.config.clone(),
                limit,
                measured: drop_in.init_to_agent_exec_ms,
                met: drop_in.init_to_agent_exec_ms <= limit,
            });
        }
        let mem_limit = (agent.mem_ready_kib + 512) as f64;
        out.push(Budget {
            what: "memory at agent ready (KiB), within 0.5 MiB of the agent as init".into(),
            config: minos.config.clone(),
            limit: mem_limit,
            measured: minos.mem_ready_kib as f64,
            met: (minos.mem_ready_kib as f64) <= mem_limit,
        });
    }
    out
}

/// The last meaningful console lines of a failed boot's error, escape
/// sequences removed.
pub fn failure_reason(err: &str) -> String {
    let clean = |l: &str| -> String {
        let mut out = String::new();
        let mut chars = l.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ parameters final-byte.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if d.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            } else if !c.is_control() {
                out.push(c);
            }
        }
        out.trim().to_string()
    };
    let lines: Vec<String> = err
        .lines()
        .map(clean)
        .filter(|l| !l.is_empty() && !l.starts_with("qemu-system-x86_64: terminating"))
        .collect();
    let first = lines.first().cloned().unwrap_or_default();
    let failed: Vec<&String> = lines
        .iter()
        .skip(1)
        .filter(|l| l.contains("Failed") || l.contains("error") || l.contains("panic"))
        .take(3)
        .collect();
    if failed.is_empty() {
        first
    } else {
        let joined: Vec<&str> = failed.iter().map(|s| s.as_str()).collect();
        format!("{first}: {}", joined.join("; "))
    }
}

fn run_plan(plan: &Plan) -> Result<Results> {
    let bin = crate::build()?;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    std::fs::create_dir_all(plan.out.join("consoles"))
        .map_err(|e| format!("create {}: {e}", plan.out.display()))?;
    for config in &plan.configs {
        for &system in plan.systems.iter().filter(|s| config.runs(**s)) {
            println!("xtask: bench: {} on {}", system.name(), config.name());
            let (mut row, console) = match boot_one(system, config, &bin, false) {
                Ok(done) => done,
                Err(err) => {
                    // A system that cannot boot on a configuration is a
                    // result too: recorded with the console's last words.
                    let reason = failure_reason(&err);
                    println!("xtask: bench:   did not boot: {reason}");
                    failures.push(Failure {
                        system: system.name().into(),
                        config: config.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let log = plan.out.join(format!(
                "consoles/{}-{}-{}-{}-{}.txt",
                system.name(),
                config.flavour,
                config.machine,
                config.kind,
                config.kernel_format
            ));
            std::fs::write(&log, console).map_err(|e| format!("write {}: {e}", log.display()))?;
            if (plan.health_check)(config) {
                // One retry, said aloud: a host connection made before the
                // guest's driver was up once killed vhost-device-vsock's
                // worker for the whole boot (now waited for, see
                // crate::vsock::wait_driver_ready).
                let checked = boot_one(system, config, &bin, true).or_else(|err| {
                    println!(
                        "xtask: bench:   health-check boot failed, once more: {}",
                        err.lines().next().unwrap_or("")
                    );
                    boot_one(system, config, &bin, true)
                });
                match checked {
                    Ok((checked, _)) => {
                        row.health_check_ms = checked.health_check_ms;
                        row.health_check_power_on_ms = checked.health_check_power_on_ms;
                    }
                    // Recorded like a boot that failed; the row stays.
                    Err(err) => failures.push(Failure {
                        system: system.name().into(),
                        config: config.clone(),
                        reason: format!("health-check boot: {}", failure_reason(&err)),
                    }),
                }
            }
            println!(
                "xtask: bench:   kernel→init {:.1} ms, init→agent exec {:.1} ms, init→ready {:.1} ms, ready {:.1} ms, health check {}, memory {} KiB, {} processes",
                row.kernel_to_init_ms,
                row.init_to_agent_exec_ms,
                row.init_to_agent_ready_ms,
                row.agent_ready_ms,
                row.health_check_ms.map_or("-".into(), |v| format!("{v:.0} ms")),
                row.mem_ready_kib,
                row.processes
            );
            rows.push(row);
        }
    }
    let kernel_src = crate::kernel::cache_dir().join("src");
    let kernel = std::fs::read_dir(&kernel_src)
        .ok()
        .and_then(|mut rd| rd.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_else(|| "linux 6.12".into());
    let binaries = crate::BINARIES
        .iter()
        .map(|b| {
            let len = std::fs::metadata(bin.join(b)).map_or(0, |m| m.len());
            ((*b).to_string(), len)
        })
        .collect();
    let budgets = budgets(&rows);
    let real_agent = real_agent_rows(plan, &bin, &mut failures)?;
    Ok(Results {
        date: command_line("date", &["-u", "+%Y-%m-%d"]),
        host: format!(
            "{}, {} CPUs",
            command_line("uname", &["-sr"]),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        qemu: command_line("qemu-system-x86_64", &["--version"]),
        kernel,
        memory_mib: MEMORY_MIB,
        vcpus: 1,
        binaries,
        rows,
        failures,
        budgets,
        time_daemons: if plan.time_daemons {
            time_daemons()?
        } else {
            Vec::new()
        },
        time_daemons_run: None,
        real_agent,
    })
}

/// The real agent's boots ([`real`]); each that fails is recorded as a
/// failure. Skipped, said aloud, without Kata's agent and agent-ctl.
fn real_agent_rows(
    plan: &Plan,
    bin: &Path,
    failures: &mut Vec<Failure>,
) -> Result<Vec<real::RealRow>> {
    let Some((flavour, runs)) = plan.real_agent else {
        return Ok(Vec::new());
    };
    let assets = match crate::kata::assets()? {
        Ok(a) => a,
        Err(why) => {
            println!("xtask: bench: SKIPPED the real kata-agent's rows: {why}");
            return Ok(Vec::new());
        }
    };
    let mut rows = Vec::new();
    for (system, config) in real::configs(flavour) {
        for run in 1..=runs {
            println!(
                "xtask: bench: {system} with the real kata-agent on {} ({run}/{runs})",
                config.name()
            );
            match real::boot(system, &config, bin, &assets) {
                Ok((row, console)) => {
                    println!(
                        "xtask: bench:   health check {:.0} ms (host, {} tries), memory {} KiB, 1 s later {} KiB",
                        row.health_check_host_ms, row.checks, row.mem_ready_kib, row.mem_late_kib
                    );
                    let log = plan.out.join(format!(
                        "consoles/real-{system}-{}-{}-{}-{run}.txt",
                        config.flavour, config.machine, config.kind
                    ));
                    std::fs::write(&log, console)
                        .map_err(|e| format!("write {}: {e}", log.display()))?;
                    rows.push(row);
                }
                Err(err) => {
                    println!("xtask: bench:   failed: {}", failure_reason(&err));
                    failures.push(Failure {
                        system: format!("{system} (real kata-agent)"),
                        config: config.clone(),
                        reason: failure_reason(&err),
                    });
                }
            }
        }
    }
    Ok(rows)
}

fn all_configs(flavours: &[&str]) -> Vec<Config> {
    let mut v = Vec::new();
    for f in flavours {
        for (machine, kind) in [("q35", "dax"), ("q35", "initrd"), ("microvm", "initrd")] {
            v.push(Config::new(f, machine, kind, "vmlinux"));
        }
        v.push(Config::new(f, "q35", "dax", "bzImage"));
    }
    v
}

/// `bench --quick` (what `cargo xtask test` runs).
pub fn quick() -> Result<()> {
    main(&crate::cli::BenchArgs {
        quick: true,
        check: false,
        systems: Vec::new(),
        flavours: Vec::new(),
        configs: Vec::new(),
        out: None,
        no_time: false,
        no_real: false,
        pid1: false,
        rounds: 30,
        ntp_sim: false,
        time_only: false,
        render: false,
    })
}

pub fn main(args: &crate::cli::BenchArgs) -> Result<()> {
    if args.pid1 {
        return pid1::main(args.rounds, args.out.clone());
    }
    if args.ntp_sim {
        return ntpsim::main(args.out.clone());
    }
    if args.time_only {
        // The timesync/chronyd table again, into the last full run's
        // results (which keep their own date), with this run's date.
        let dir = root().join("docs/bench");
        let mut results = report::read(&dir.join("results.json"))?;
        results.time_daemons = time_daemons()?;
        results.time_daemons_run = Some(format!(
            "{} at {} (`cargo xtask bench --time-only`)",
            crate::util::today(),
            crate::util::commit()
        ));
        return report::write(&results, &dir, true);
    }
    if args.render {
        // The page and charts again from docs/bench/results.json.
        let dir = root().join("docs/bench");
        let results = report::read(&dir.join("results.json"))?;
        return report::write(&results, &dir, true);
    }
    let quick = args.quick;
    let check = args.check;
    let plan = if quick {
        Plan {
            systems: vec![System::Minos, System::AgentInit],
            configs: vec![Config::new("test", "q35", "dax", "vmlinux")],
            health_check: |_| true,
            out: root().join("target/bench"),
            docs: false,
            time_daemons: false,
            real_agent: Some(("test", 1)),
        }
    } else {
        let systems = if args.systems.is_empty() {
            System::ALL.to_vec()
        } else {
            args.systems
                .iter()
                .map(|s| System::parse(s))
                .collect::<Result<Vec<_>>>()?
        };
        let flavours: Vec<&str> = if args.flavours.is_empty() {
            vec!["kata", "minimal"]
        } else {
            args.flavours.iter().map(String::as_str).collect()
        };
        let mut configs = all_configs(&flavours);
        if !args.configs.is_empty() {
            // MACHINE/KIND/FORMAT, e.g. q35/dax/vmlinux: only these.
            configs.retain(|c| {
                args.configs
                    .contains(&format!("{}/{}/{}", c.machine, c.kind, c.kernel_format))
            });
        }
        Plan {
            systems,
            configs,
            health_check: |c| c.machine == "q35" && c.kind == "dax" && c.kernel_format == "vmlinux",
            out: args
                .out
                .clone()
                .unwrap_or_else(|| root().join("docs/bench")),
            docs: args.out.is_none(),
            time_daemons: !args.no_time,
            real_agent: (!args.no_real).then_some(("kata", 3)),
        }
    };
    let results = run_plan(&plan)?;
    report::write(&results, &plan.out, plan.docs)?;
    // The files must read back as they were written.
    let back = report::read(&plan.out.join("results.json"))?;
    if back != results {
        return Err("results.json does not read back as written".into());
    }
    for svg in report::CHARTS {
        report::check_svg(&plan.out.join(svg))?;
    }
    let missed: Vec<&Budget> = results.budgets.iter().filter(|b| !b.met).collect();
    for b in &missed {
        println!(
            "xtask: bench: budget missed: {} on {}: {} > {}",
            b.what,
            b.config.name(),
            figure(b.measured),
            figure(b.limit)
        );
    }
    println!(
        "xtask: bench: {} boots, {} budgets ({} missed), results in {}",
        results.rows.len(),
        results.budgets.len(),
        missed.len(),
        plan.out.display()
    );
    if check && !missed.is_empty() {
        return Err(format!("{} budget(s) missed", missed.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // A kata-kernel boot of minos on q35 (2026-12-04): the kernel logged
    // "sched_clock: Marking stable (300001209, 1161727)->(197354330, 103808606)".
    const CONSOLE: &str = "\
agent-shim: ready boottime_us=316040
agent-shim: bench ready init_exec_us=311088 agent_ready_us=316497 sched_clock_offset_ns=103808606 tsc_exec=228462427 tsc_ready=230423727 boottime_exec_ns=314098756 boottime_ready_ns=316040197 mark_boottime_ns=316055097 pm_timer=824812 pm_timer_bits=24 pm_boottime_ns=316040321 mem_used_kib=9004 processes=3 rss_kib=408 pss_kib=399
agent-shim: bench late after_ms=1000 mem_used_kib=8504 processes=3 rss_kib=420 pss_kib=unknown
";

    #[test]
    fn figures_from_the_bench_lines() {
        let f = figures(CONSOLE).unwrap();
        let before_init = CONSOLE.replace("init_exec_us=311088", "init_exec_us=315000");
        assert!(figures(&before_init)
            .unwrap_err()
            .contains("the agent's exec comes before init's"));
        // The kernel-clock marks less the 103,808 µs offset: virtual time.
        assert!((f.kernel_to_init_ms - 207.279_394).abs() < 1e-9, "{f:?}");
        // 316497 - (316055097 - 314098756) / 1000 = 314541 → 3.453 ms after init exec.
        assert!((f.init_to_agent_exec_ms - 3.453).abs() < 1e-9, "{f:?}");
        assert!((f.init_to_agent_ready_ms - 5.409).abs() < 1e-9);
        assert!((f.agent_ready_ms - 212.688_394).abs() < 1e-9);
        // A negative offset (the kernel's clock behind) is taken as such.
        let behind = CONSOLE.replace(
            "sched_clock_offset_ns=103808606",
            "sched_clock_offset_ns=-1000000",
        );
        assert!((figures(&behind).unwrap().kernel_to_init_ms - 312.088).abs() < 1e-9);
        // CLOCK_BOOTTIME lags the kernel log by 316497000 - 316055097 ns =
        // 0.442 ms. PM timer: 824812 ticks = 230.421 ms after power-on, read
        // at CLOCK_BOOTTIME 316.040 ms = raw 316.040 + 0.442 - 103.809 =
        // 212.674 ms: the raw clock's zero 17.75 ms after power-on.
        let pre = f.pre_kernel_ms.unwrap();
        assert!((pre - 17.750).abs() < 0.002, "{f:?}");
        assert!((f.power_on_to_ready_ms.unwrap() - (212.688_394 + pre)).abs() < 1e-9);
        // The PM timer at its read: ready less the mark-to-read interval on
        // the kernel log's clock; the TSC read next to it agrees (1 GHz).
        let pm_ms = f.power_on_to_ready_ms.unwrap() - (316.497 - (316.040_321 + 0.441_903));
        assert!((pm_ms - 230.422).abs() < 0.005, "{pm_ms}");
        assert!((230.423_727 - pm_ms).abs() < 0.005, "{pm_ms}");
        assert_eq!(
            f.memory,
            [Some(9004), Some(8504), Some(3), Some(408), Some(399)]
        );
        assert!(figures("agent-shim: ready boottime_us=1\n").is_err());
        let unknown = CONSOLE.replace("init_exec_us=311088", "init_exec_us=unknown");
        assert!(figures(&unknown).unwrap_err().contains("init_exec_us"));
        let no_offset = CONSOLE.replace(
            "sched_clock_offset_ns=103808606",
            "sched_clock_offset_ns=unknown",
        );
        assert!(figures(&no_offset)
            .unwrap_err()
            .contains("sched_clock_offset_ns"));
        // microvm: no PM timer, no power-on figure.
        let no_pm = CONSOLE.replace(
            "pm_timer=824812 pm_timer_bits=24 pm_boottime_ns=316040321",
            "pm_timer=unknown",
        );
        assert_eq!(figures(&no_pm).unwrap().power_on_to_ready_ms, None);
    }

    fn row(system: &str, exec: f64, mem: u64) -> Row {
        Row {
            system: system.into(),
            config: Config::new("kata", "q35", "dax", "vmlinux"),
            kernel_to_init_ms: 300.0,
            init_to_agent_exec_ms: exec,
            init_to_agent_ready_ms: exec + 1.0,
            agent_ready_ms: 301.0 + exec,
            power_on_to_ready_ms: None,
            pre_kernel_ms: None,
            mem_ready_kib: mem,
            mem_late_kib: mem,
            processes: 3,
            rss_kib: 400,
            pss_kib: None,
            image_bytes: 1,
            rootfs_files: None,
            rootfs_bytes: None,
            health_check_ms: None,
            health_check_power_on_ms: None,
            rss_after_10s: Vec::new(),
        }
    }

    #[test]
    fn time_daemon_figures_from_clockprobe() {
        let console = "clockprobe: synchronised after_ms=30 residual_us=1.7\n\
                       clockprobe: jump=+2.000 recovered_ms=1016 residual_us=0.0\n\
                       clockprobe: jump=-2.000 not_recovered: offset still +2.0 s after 60.0 s\n\
                       clockprobe: jump=+0.500 recovered_ms=6510 residual_us=0.3\n\
                       clockprobe: usage timesync seconds=60.0 wakeups=60 per_s=1.00 cpu_ms=0 rss_kib=112\n";
        let t = time_daemon("timesync", console).unwrap();
        assert_eq!(t.synchronised_ms, Some(30.0));
        assert_eq!(t.jump_plus_ms, Some(1016.0));
        assert_eq!(t.jump_minus_ms, None);
        assert_eq!(t.jump_half_ms, Some(6510.0));
        assert!(t.jump_half_measured);
        let before = console.replace(
            "clockprobe: jump=+0.500 recovered_ms=6510 residual_us=0.3\n",
            "",
        );
        assert!(!time_daemon("timesync", &before).unwrap().jump_half_measured);
        assert_eq!((t.wakeups_per_s, t.cpu_ms, t.rss_kib), (1.0, 0.0, 112));
        assert!(time_daemon("chronyd", console).is_err());
    }

    #[test]
    fn power_on_from_the_pm_timer() {
        // 1 s of ticks, no wrap: 1 s.
        assert_eq!(power_on_ns(3_579_545, 24, 500_000_000), Some(1_000_000_000));
        // 24 bits wrap every 4.687 s: 0.5 s read at a boot time of 5 s is
        // one wrap later.
        let wrap = (1u128 << 24) * 1_000_000_000 / 3_579_545;
        let got = power_on_ns(3_579_545 / 2, 24, 5_000_000_000).unwrap();
        let half = (3_579_545u128 / 2) * 1_000_000_000 / 3_579_545;
        assert_eq!(u128::from(got), half + wrap);
        assert_eq!(power_on_ns(1, 0, 1), None);
        assert_eq!(power_on_ns(1, 33, 1), None);
    }

    #[test]
    fn failure_reasons_keep_the_console_s_last_words() {
        let err = "systemd on minimal kernel, q35, dax: the guest did not power off cleanly\n\
                   \u{1b}[2JSeaBIOS\nsystemd[1]: Failed to allocate manager object: Function not implemented\n\
                   [\u{1b}[0;1;31m!!!!!!\u{1b}[0m] Failed to allocate manager object.\n\
                   qemu-system-x86_64: terminating on signal 15\n";
        assert_eq!(
            failure_reason(err),
            "systemd on minimal kernel, q35, dax: the guest did not power off cleanly: \
             systemd[1]: Failed to allocate manager object: Function not implemented; \
             [!!!!!!] Failed to allocate manager object."
        );
    }

    #[test]
    fn rss_line_lists_processes() {
        let console =
            "x\nagent-shim: bench rss after_ms=10000 init=768 kata-agent=300 timesync=104\n";
        assert_eq!(
            rss_line(console).unwrap(),
            vec![
                ("init".to_string(), 768),
                ("kata-agent".to_string(), 300),
                ("timesync".to_string(), 104)
            ]
        );
        assert_eq!(rss_line("nothing"), None);
    }

    #[test]
    fn budgets_compare_minos_with_the_agent_as_init() {
        let rows = [row("agent-init", 0.5, 8000), row("minos", 1.2, 8400)];
        let b = budgets(&rows);
        assert_eq!(b.len(), 2);
        assert!(b.iter().all(|b| b.met), "{b:?}");
        let rows = [row("agent-init", 0.5, 8000), row("minos", 1.6, 8600)];
        assert!(budgets(&rows).iter().all(|b| !b.met));
        assert!(budgets(&rows[1..]).is_empty(), "no pair, no budget");
        // minos dropped into an osbuilder rootfs: within 1 ms of its own image.
        let rows = [
            row("agent-init", 0.5, 8000),
            row("minos", 1.2, 8400),
            row("minos-osbuilder", 2.1, 30000),
        ];
        let b = budgets(&rows);
        assert_eq!(b.len(), 3);
        assert!(b[1].what.contains("osbuilder") && b[1].met, "{b:?}");
        let rows = [
            row("agent-init", 0.5, 8000),
            row("minos", 1.2, 8400),
            row("minos-osbuilder", 2.3, 30000),
        ];
        assert!(!budgets(&rows)[1].met);
    }

    #[test]
    fn budget_figures_show_microseconds_and_whole_kib() {
        assert_eq!(figure(1.723), "1.723");
        assert_eq!(figure(1.7194), "1.719");
        assert_eq!(figure(10092.4), "10092");
    }
}
