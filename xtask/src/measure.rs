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

pub fn spec(check: bool) -> Result<()> {
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
    println!(
        "spec: init size={size} bytes ({:.2} MiB, budget {:.2} MiB; file {file_size} bytes \
         with {pad} bytes of 2 MiB-page padding); after starting 2 units: \
         rss={rss} KiB (anon={anon} file={file}) pss={pss} KiB peak_rss={hwm} KiB \
         (budget {INIT_RSS_BUDGET_KIB} KiB)",
        size as f64 / 1048576.0,
        INIT_SIZE_BUDGET as f64 / 1048576.0
    );
    let (ts_rss, ts_hwm) = timesync_rss(&bin)?;
    println!(
        "spec: timesync synchronised over NTP (observe-only): rss={ts_rss} KiB \
         peak_rss={ts_hwm} KiB (budget {TIMESYNC_RSS_BUDGET_KIB} KiB)"
    );
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
    if !over.is_empty() {
        let msg = format!("budget missed: {}", over.join("; "));
        if check {
            return Err(msg);
        }
        println!("spec: {msg}");
    }
    Ok(())
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
