//! `cargo xtask spec [--check]`: init's binary size and its RSS after it has
//! started two units (agent-shim as the agent, and timesync), against the
//! budgets in docs/SPECIFICATION.md. Memory is a count, not a timing, so the
//! check is deterministic enough for CI.

use std::time::Duration;

use crate::container::{make_rootfs, scratch, Container, TIMESYNC_SERVICE};
use crate::util::Result;

/// Budgets (docs/SPECIFICATION.md).
pub const INIT_SIZE_BUDGET: u64 = 1536 * 1024;
pub const INIT_RSS_BUDGET_KIB: u64 = 1024;

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
    let size = std::fs::metadata(&init)
        .map_err(|e| format!("{}: {e}", init.display()))?
        .len();
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
        "spec: init size={size} bytes ({:.2} MiB, budget {:.2} MiB); after starting 2 units: \
         rss={rss} KiB (anon={anon} file={file}) pss={pss} KiB peak_rss={hwm} KiB \
         (budget {INIT_RSS_BUDGET_KIB} KiB)",
        size as f64 / 1048576.0,
        INIT_SIZE_BUDGET as f64 / 1048576.0
    );
    let mut over = Vec::new();
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
