//! `cargo xtask spec [--check]`: init's binary size and its RSS after it has
//! started two units (agent-shim as the agent, and timesync), and timesync's
//! RSS once synchronised over NTP (observe-only, against Debian's chronyd on
//! loopback), against the budgets in docs/SPECIFICATION.md. Memory is a
//! count, not a timing, so the check is deterministic enough for CI.

use std::time::Duration;

use crate::container::{make_rootfs, scratch, Container, TIMESYNC_SERVICE};
use crate::util::Result;

/// Budgets (docs/SPECIFICATION.md).
pub const INIT_SIZE_BUDGET: u64 = 1536 * 1024;
pub const INIT_RSS_BUDGET_KIB: u64 = 1024;
pub const TIMESYNC_RSS_BUDGET_KIB: u64 = 1536;

const AGENT_SERVICE: &str = "\
[Unit]
Description=agent-shim as the agent

[Service]
Type=notify
ExecStart=/usr/bin/agent-shim --server-addr unix:///run/agent-shim.sock
OOMScoreAdjust=500
";

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{path}: no {key}"))
}

fn pss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{path}: no Pss"))
}

/// Trivial units booted by every `spec` run, with a budget.
pub const UNITS_CHECKED: usize = 10_000;
/// init's CPU time from its start to `all_started` with `UNITS_CHECKED`
/// trivial units. Linear loading takes a fraction of it; the quadratic
/// scans before took several times it.
pub const UNITS_CPU_BUDGET: Duration = Duration::from_secs(2);
/// Also booted by `spec --record`, for the figure.
pub const UNITS_RECORDED: usize = 100_000;

pub fn spec(check: bool, record: bool) -> Result<()> {
    let bin = crate::util::release_dir();
    let init = bin.join("init");
    if !init.is_file() {
        crate::build()?;
    }
    let file_size = std::fs::metadata(&init)
        .map_err(|e| format!("{}: {e}", init.display()))?
        .len();
    // The zeros init/build.rs adds so that init's code fills a 2 MiB page
    // (docs/conventions.md) are in the file, not in init: the budget is
    // for code and data.
    let pad = crate::order::elf_section(&init, ".text.dax_pad").map_or(0, |(_, n)| n);
    let size = file_size - pad.min(file_size);
    let root = scratch("spec-rootfs");
    make_rootfs(
        &root,
        &bin,
        &[
            ("agent.service", AGENT_SERVICE),
            ("timesync.service", TIMESYNC_SERVICE),
        ],
    )?;
    let mut c = Container::start(&root, &[], false)?;
    c.wait_for("timeline event=all_started", Duration::from_secs(30))?;
    c.wait_for("timesync: started", Duration::from_secs(30))?;
    // Let both units settle before reading init's memory.
    std::thread::sleep(Duration::from_millis(500));
    let pid = c.init_pid()?;
    let rss = status_kib(pid, "VmRSS:")?;
    let hwm = status_kib(pid, "VmHWM:")?;
    let anon = status_kib(pid, "RssAnon:")?;
    let file = status_kib(pid, "RssFile:")?;
    let pss = pss_kib(pid)?;
    c.signal("TERM")?;
    let (sig, output) = c.wait(Duration::from_secs(60))?;
    if sig != Some(2) {
        return Err(format!(
            "init did not power off cleanly (ended by signal {sig:?}):\n{output}"
        ));
    }
    let mut log = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        log.push(line);
    };
    say(format!(
        "spec: init size={size} bytes ({:.2} MiB, budget {:.2} MiB; file {file_size} bytes \
         with {pad} bytes of 2 MiB-page padding); after starting 2 units: \
         rss={rss} KiB (anon={anon} file={file}) pss={pss} KiB peak_rss={hwm} KiB \
         (budget {INIT_RSS_BUDGET_KIB} KiB)",
        size as f64 / 1048576.0,
        INIT_SIZE_BUDGET as f64 / 1048576.0
    ));
    let (ts_rss, ts_hwm) = timesync_rss(&bin)?;
    say(format!(
        "spec: timesync synchronised over NTP (observe-only): rss={ts_rss} KiB \
         peak_rss={ts_hwm} KiB (budget {TIMESYNC_RSS_BUDGET_KIB} KiB)"
    ));
    let counts: &[usize] = if record {
        &[UNITS_CHECKED, UNITS_RECORDED]
    } else {
        &[UNITS_CHECKED]
    };
    let mut scales = Vec::new();
    for &n in counts {
        let sc = units_scale(n)?;
        say(format!(
            "spec: {n} trivial units: init start → all_started {:.3} s, init cpu {:.2} s, \
             peak_rss={} KiB",
            sc.wall.as_secs_f64(),
            sc.cpu.as_secs_f64(),
            sc.peak_kib
        ));
        scales.push(sc);
    }
    let mut over = Vec::new();
    if ts_rss > TIMESYNC_RSS_BUDGET_KIB {
        over.push(format!(
            "timesync RSS {ts_rss} KiB > {TIMESYNC_RSS_BUDGET_KIB} KiB"
        ));
    }
    if size > INIT_SIZE_BUDGET {
        over.push(format!("init binary {size} bytes > {INIT_SIZE_BUDGET}"));
    }
    if rss > INIT_RSS_BUDGET_KIB {
        over.push(format!("init RSS {rss} KiB > {INIT_RSS_BUDGET_KIB} KiB"));
    }
    if let Some(sc) = scales.iter().find(|sc| sc.units == UNITS_CHECKED) {
        if sc.cpu > UNITS_CPU_BUDGET {
            over.push(format!(
                "{UNITS_CHECKED} units took init {:.2} s of CPU > {:.2} s",
                sc.cpu.as_secs_f64(),
                UNITS_CPU_BUDGET.as_secs_f64()
            ));
        }
    }
    if record {
        let figures = Figures {
            date: crate::util::today(),
            commit: crate::util::commit(),
            size,
            file_size,
            rss,
            anon,
            file,
            pss,
            hwm,
            ts_rss,
            scales,
        };
        let page = crate::util::root().join("docs/SPECIFICATION.md");
        crate::bench::report::splice_marked(&page, "spec:budgets", &figures.budget_table())?;
        crate::bench::report::splice_marked(&page, "spec:units", &figures.units_table())?;
        let dir = crate::util::root().join("docs/spec");
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join("spec.log");
        let text = format!(
            "# cargo xtask spec --record on {} at {}\n{}\n",
            figures.date,
            figures.commit,
            log.join("\n")
        );
        std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
        println!(
            "spec: figures written to {} and {}",
            page.display(),
            path.display()
        );
    }
    if !over.is_empty() {
        let msg = format!("budget missed: {}", over.join("; "));
        if check {
            return Err(msg);
        }
        println!("spec: {msg}");
    }
    Ok(())
}

/// One `spec --record` run's figures, for docs/SPECIFICATION.md.
struct Figures {
    date: String,
    commit: String,
    size: u64,
    file_size: u64,
    rss: u64,
    anon: u64,
    file: u64,
    pss: u64,
    hwm: u64,
    ts_rss: u64,
    scales: Vec<Scale>,
}

/// `n` with thousands separated by commas.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Figures {
    fn budget_table(&self) -> String {
        let kib = |v: u64| format!("{} KiB", thousands(v));
        format!(
            "| item | budget | measured ({}, commit {}, this machine) |\n|---|---|---|\n\
             | `init` binary size: code and data | < 1.5 MiB ({} bytes) | {} bytes ({:.2} MiB); the file is {} bytes with the padding that lets a DAX root map init's code with one 2 MiB page (docs/conventions.md) |\n\
             | `init` RSS after starting two units | < 1 MiB ({INIT_RSS_BUDGET_KIB} KiB) | {} (RssAnon {}, RssFile {}); PSS {} |\n\
             | `init` peak RSS (VmHWM, during boot) | — (reported) | {} |\n\
             | `timesync` RSS, synchronised over NTP | < 1.5 MiB ({TIMESYNC_RSS_BUDGET_KIB} KiB) | {} |\n",
            self.date,
            self.commit,
            thousands(INIT_SIZE_BUDGET),
            thousands(self.size),
            self.size as f64 / 1048576.0,
            thousands(self.file_size),
            kib(self.rss),
            kib(self.anon),
            kib(self.file),
            kib(self.pss),
            kib(self.hwm),
            kib(self.ts_rss),
        )
    }

    fn units_table(&self) -> String {
        let mut s = String::from(
            "| trivial units | init start → all started | init CPU time | init peak RSS | budget |\n\
             |---:|---:|---:|---:|---|\n",
        );
        for sc in &self.scales {
            let budget = if sc.units == UNITS_CHECKED {
                format!("CPU ≤ {:.0} s", UNITS_CPU_BUDGET.as_secs_f64())
            } else {
                "— (reported)".into()
            };
            s.push_str(&format!(
                "| {} | {:.3} s | {:.2} s | {} KiB | {budget} |\n",
                thousands(sc.units as u64),
                sc.wall.as_secs_f64(),
                sc.cpu.as_secs_f64(),
                thousands(sc.peak_kib)
            ));
        }
        s.push_str(&format!(
            "\nMeasured {} at commit {} ([spec/spec.log](spec/spec.log)).\n",
            self.date, self.commit
        ));
        s
    }
}

/// Kills a child on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// timesync's (VmRSS, VmHWM) in KiB once it is synchronised, in observe-only
/// mode, to chronyd serving on 127.0.0.1 (`-x`: chronyd never touches this
/// machine's clock).
fn timesync_rss(bin: &std::path::Path) -> Result<(u64, u64)> {
    use std::process::{Command, Stdio};
    crate::util::ensure_packages(&[("chronyd", "chrony")])?;
    let dir = scratch("spec-timesync");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("pick a port: {e}"))?
        .port();
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "chrony.conf",
        format!(
            "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
             pidfile {d}/chronyd.pid\ndriftfile {d}/drift\n",
            d = dir.display()
        ),
    )?;
    write(
        "timesync.conf",
        format!("server 127.0.0.1 port {port} iburst minpoll -1 maxpoll 0\nmakestep 1 -1\n"),
    )?;
    let _chronyd = Reaped(
        Command::new("chronyd")
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(dir.join("chrony.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start chronyd: {e}"))?,
    );
    let status = dir.join("status");
    let timesync = Reaped(
        Command::new(bin.join("timesync"))
            .arg("--observe")
            .arg("--config")
            .arg(dir.join("timesync.conf"))
            .arg("--status-file")
            .arg(&status)
            .env_remove("container")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start timesync: {e}"))?,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let samples = text
            .lines()
            .find_map(|l| l.strip_prefix("samples="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if text.contains("synchronised=yes") && samples >= 4 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "timesync did not synchronise to chronyd within 30 s:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = timesync.0.id();
    let rss = status_kib(pid, "VmRSS:")?;
    let hwm = status_kib(pid, "VmHWM:")?;
    drop(timesync);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((rss, hwm))
}

/// What booting with `units` trivial units cost init.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub units: usize,
    /// init_start → all_started (the timeline's CLOCK_BOOTTIME marks).
    pub wall: Duration,
    /// init's user + system CPU time at all_started.
    pub cpu: Duration,
    /// init's VmHWM at all_started, KiB.
    pub peak_kib: u64,
}

/// The timeline mark `event`'s boottime_us in init's output.
fn mark_us(output: &str, event: &str) -> Option<u64> {
    let needle = format!("timeline event={event} ");
    output
        .lines()
        .find(|l| l.contains(&needle))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("boottime_us="))?
        .parse()
        .ok()
}

/// init's user + system CPU time, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: field {} unreadable", i + 3))
    };
    // USER_HZ, the unit of /proc's times: 100 on every Linux ABI.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Boots init in a container with `n` trivial service units: each is
/// ordered after the one before it and skipped by a condition that does
/// not hold (no process: the figure is init's own work of reading,
/// selecting, ordering and settling them, not the kernel's of forking).
pub fn units_scale(n: usize) -> Result<Scale> {
    let bin = crate::util::release_dir();
    let root = scratch(&format!("spec-units-{n}"));
    make_rootfs(&root, &bin, &[])?;
    let dir = root.join("etc/minos/units");
    for k in 0..n {
        let after = match k {
            0 => String::new(),
            _ => format!("After=u-{:06}.service\n", k - 1),
        };
        let text = format!(
            "[Unit]\nDescription=trivial unit {k}\n{after}ConditionPathExists=/nonexistent/{k}\n\
             [Service]\nType=oneshot\nExecStart=/usr/bin/agent-shim --exit-after 0s\n"
        );
        let path = dir.join(format!("u-{k:06}.service"));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut c = Container::start(&root, &[], false)?;
    c.wait_for(
        "timeline event=all_started",
        Duration::from_secs(60 + n as u64 / 100),
    )?;
    let pid = c.init_pid()?;
    let cpu = cpu_time(pid)?;
    let peak_kib = status_kib(pid, "VmHWM:")?;
    let output = c.output();
    let (Some(start), Some(done)) = (
        mark_us(&output, "init_start"),
        mark_us(&output, "all_started"),
    ) else {
        return Err(format!("{n} units: no init_start or all_started mark"));
    };
    c.signal("TERM")?;
    let (sig, rest) = c.wait(Duration::from_secs(60 + n as u64 / 100))?;
    if sig != Some(2) {
        return Err(format!(
            "{n} units: init did not power off cleanly (signal {sig:?}):\n{}",
            rest.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        ));
    }
    // Every unit is reported skipped, but for the log lines init dropped
    // while the pipe to this process was full (it counts them).
    let skipped = rest.matches(": skipped: condition").count();
    let dropped: usize = rest
        .lines()
        .filter_map(|l| {
            l.split_once(" log lines dropped")?
                .0
                .rsplit(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    if skipped + dropped < n {
        return Err(format!(
            "{n} units: {skipped} reported skipped and {dropped} log lines dropped"
        ));
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(Scale {
        units: n,
        wall: Duration::from_micros(done.saturating_sub(start)),
        cpu,
        peak_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_written_with_thousands_and_the_run_they_come_from() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_572_864), "1,572,864");
        let f = Figures {
            date: "2026-12-07".into(),
            commit: "0123456789ab".into(),
            size: 1_566_944,
            file_size: 2_144_672,
            rss: 404,
            anon: 144,
            file: 260,
            pss: 400,
            hwm: 1092,
            ts_rss: 1360,
            scales: vec![
                Scale {
                    units: 10_000,
                    wall: Duration::from_millis(437),
                    cpu: Duration::from_millis(390),
                    peak_kib: 43_360,
                },
                Scale {
                    units: 100_000,
                    wall: Duration::from_millis(3490),
                    cpu: Duration::from_millis(3200),
                    peak_kib: 423_180,
                },
            ],
        };
        let budgets = f.budget_table();
        assert!(budgets.contains("measured (2026-12-07, commit 0123456789ab, this machine)"));
        assert!(budgets.contains("| 1,566,944 bytes (1.49 MiB); the file is 2,144,672 bytes"));
        assert!(budgets.contains("| 404 KiB (RssAnon 144 KiB, RssFile 260 KiB); PSS 400 KiB |"));
        let units = f.units_table();
        assert!(
            units.contains("| 10,000 | 0.437 s | 0.39 s | 43,360 KiB | CPU ≤ 2 s |"),
            "{units}"
        );
        assert!(
            units.contains("| 100,000 | 3.490 s | 3.20 s | 423,180 KiB | — (reported) |"),
            "{units}"
        );
    }

    #[test]
    fn timeline_marks_are_found_by_event() {
        let out = "minos-init: timeline event=init_start boottime_us=5\n\
                   minos-init: timeline event=all_started boottime_us=905\n";
        assert_eq!(mark_us(out, "init_start"), Some(5));
        assert_eq!(mark_us(out, "all_started"), Some(905));
        assert_eq!(mark_us(out, "shutdown_start"), None);
    }
}
