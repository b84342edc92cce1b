//! The real kata-agent in the bench: minos's image with Kata's own agent
//! (a DAX root and an initrd), and that agent as init (an initrd, as
//! osbuilder's `AGENT_INIT=yes` makes it), each driven from the host by
//! Kata's agent-ctl over hybrid vsock as the runtime drives it (see
//! [`crate::kata::bench_script`]).
//!
//! No agent-shim runs in these guests, so none of its guest-time marks on
//! the kernel's clock. What is measured instead, for both systems the same
//! way in the same run:
//!
//! - the agent's own start-up in guest time: its first log line → `ttRPC
//!   server started` (it answers the health check from then on), both
//!   stamped by the agent with the guest's CLOCK_REALTIME. Power-on → that
//!   point cannot be had in guest time: the guest's realtime clock starts
//!   from the RTC, to the whole second;
//! - host wall time, QEMU's start → the first `SERVING` (QEMU under
//!   `-icount shift=0,sleep=on`): mostly TCG's own slowness, nothing that
//!   would hold on KVM;
//! - memory: MemTotal − MemFree from the agent's own `GetMetrics` at the
//!   first answer and 1 s later (host time).
//!
//! None of these is comparable with the agent-shim rows' figures.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{systems, Config, MEMORY_MIB};
use crate::image::{Entry, Fs};
use crate::qemu::{BootOptions, Kind};
use crate::util::{root, Result};

/// One boot of the real agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealRow {
    /// `minos` (minos's image, Kata's agent as its kata-agent.service) or
    /// `agent-init` (Kata's agent as /init).
    pub system: String,
    pub config: Config,
    /// Guest time, the agent's first log line → `ttRPC server started`.
    pub agent_start_to_listen_ms: f64,
    /// Host wall time, QEMU's start → the first health check answered.
    pub health_check_host_ms: f64,
    /// Connections tried until then (each a new agent-ctl run).
    pub checks: u32,
    /// MemTotal − MemFree (KiB) from the agent's GetMetrics at the first
    /// answer and 1 s later.
    pub mem_ready_kib: u64,
    pub mem_late_kib: u64,
    pub image_bytes: u64,
}

/// The configurations: minos on DAX and as an initrd, the agent as init as
/// an initrd (q35, vmlinux).
pub fn configs(flavour: &str) -> Vec<(&'static str, Config)> {
    vec![
        ("minos", Config::new(flavour, "q35", "dax", "vmlinux")),
        ("minos", Config::new(flavour, "q35", "initrd", "vmlinux")),
        (
            "agent-init",
            Config::new(flavour, "q35", "initrd", "vmlinux"),
        ),
    ]
}

/// The agent as init: Kata's agent at /usr/bin/kata-agent with its loader
/// and libraries, /sbin/init and /init linking to it, the directories it
/// mounts on, `/var/run -> ../run`, an empty /etc/resolv.conf.
fn agent_init_entries(agent: &Path) -> Result<Vec<Entry>> {
    let mut v = systems::skeleton();
    for d in ["var", "lib", "lib64", "usr/lib"] {
        v.push(systems::dir(d));
    }
    v.push(systems::link("var/run", "../run"));
    v.push(systems::link("var/tmp", "../tmp"));
    v.push(systems::file("etc/resolv.conf", 0o644, Vec::new()));
    let data = std::fs::read(agent).map_err(|e| format!("read {}: {e}", agent.display()))?;
    v.push(systems::file("usr/bin/kata-agent", 0o755, data));
    v.push(systems::link("sbin/init", "/usr/bin/kata-agent"));
    v.push(systems::link("init", "/usr/bin/kata-agent"));
    v.extend(crate::image::runtime_libraries(agent)?);
    Ok(v)
}

fn image(system: &str, config: &Config, bin: &Path, agent: &Path) -> Result<std::path::PathBuf> {
    let name = format!("bench-real-{system}");
    if system == "minos" {
        return crate::image::build_on(&config.kind, bin, Some(agent), &[], &name, None, Fs::Ext4);
    }
    let stage = root().join(format!("target/images/{name}-rootfs"));
    crate::image::stage(&agent_init_entries(agent)?, &stage, None)?;
    crate::image::from_stage(&config.kind, &stage, &name, Fs::Ext4)
}

/// Boots `system` on `config` with the real agent; the row, and the
/// console.
pub fn boot(
    system: &str,
    config: &Config,
    bin: &Path,
    assets: &crate::kata::Assets,
) -> Result<(RealRow, String)> {
    let built = crate::kernel::build(&config.flavour)?;
    let image = image(system, config, bin, &assets.agent)?;
    let image_bytes = std::fs::metadata(&image)
        .map_err(|e| format!("{}: {e}", image.display()))?
        .len();
    let bundles = root().join(format!("target/kata-bundles/bench-{system}"));
    let opts = BootOptions {
        kernel: built.vmlinux,
        kind: Kind::parse(&config.kind)?,
        fs: Fs::Ext4,
        image,
        data_disks: Vec::new(),
        machine: config.machine.clone(),
        // Without it the agent as init mounts cgroup v1 on 6.12 and stops
        // at `Unknown subsys name 'cpuset'`; minos mounts cgroup2 itself.
        extra_cmdline: if system == "agent-init" {
            "systemd.unified_cgroup_hierarchy=1".into()
        } else {
            String::new()
        },
        memory_mib: MEMORY_MIB,
        timeout: Duration::from_secs(240),
        echo: false,
        vsock: Some(bin.join("agent-shim")),
        host: Some(crate::kata::bench_script(assets, &bundles)?),
    };
    let report = crate::qemu::boot(&opts)?;
    let what = format!("{system} with the real agent on {}", config.name());
    let line = match &report.host_check {
        Some(Ok(line)) => line.clone(),
        Some(Err(e)) => return Err(format!("{what}: {e}\n{}", report.console)),
        None => return Err(format!("{what}: the host script did not run")),
    };
    let num = |key: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{what}: no {key} in {line:?}"))
    };
    let row = RealRow {
        system: system.into(),
        config: config.clone(),
        agent_start_to_listen_ms: start_to_listen_ms(&report.console)
            .map_err(|e| format!("{what}: {e}\n{}", report.console))?,
        health_check_host_ms: num("health_check_host_ms")?,
        checks: num("checks")? as u32,
        mem_ready_kib: num("mem_ready_kib")? as u64,
        mem_late_kib: num("mem_late_kib")? as u64,
        image_bytes,
    };
    Ok((row, report.console))
}

/// Seconds since midnight of an RFC 3339 UTC time (`…T07:58:52.300086227Z`).
fn seconds_of_day(ts: &str) -> Option<f64> {
    let time = ts.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// The `ts` of a kata-agent JSON log line.
fn agent_ts(line: &str) -> Option<f64> {
    let rest = line.split("\"ts\":\"").nth(1)?;
    seconds_of_day(rest.split('"').next()?)
}

/// Guest ms from the agent's first log line to `ttRPC server started`.
pub fn start_to_listen_ms(console: &str) -> Result<f64> {
    let agent = |l: &&str| l.starts_with('{') && l.contains("\"source\":\"agent\"");
    let first = console
        .lines()
        .find(agent)
        .and_then(agent_ts)
        .ok_or("no log line of the agent with a time on the console")?;
    let listening = console
        .lines()
        .filter(agent)
        .find(|l| l.contains("\"msg\":\"ttRPC server started\""))
        .and_then(agent_ts)
        .ok_or("no `ttRPC server started` line of the agent on the console")?;
    // Across midnight the clock starts again.
    let mut seconds = listening - first;
    if seconds < 0.0 {
        seconds += 86_400.0;
    }
    Ok(seconds * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_start_up_from_its_own_log() {
        let console = "\
SeaBIOS
{\"msg\":\"baremount source=\\\"proc\\\"\",\"level\":\"INFO\",\"ts\":\"2026-12-07T23:59:59.990000000Z\",\"source\":\"agent\"}
minos-init: timeline event=init_start boottime_us=1
{\"msg\":\"announce\",\"ts\":\"2026-12-07T23:59:59.995000000Z\",\"source\":\"agent\"}
{\"msg\":\"ttRPC server started\",\"level\":\"INFO\",\"ts\":\"2026-12-08T00:00:00.002500000Z\",\"source\":\"agent\",\"address\":\"vsock://-1:1024\"}
";
        let ms = start_to_listen_ms(console).unwrap();
        assert!((ms - 12.5).abs() < 1e-6, "{ms}");
        assert!(start_to_listen_ms("minos-init: x\n").is_err());
        let never = console.replace("ttRPC server started", "ttRPC server failed");
        assert!(start_to_listen_ms(&never)
            .unwrap_err()
            .contains("ttRPC server started"));
    }
}
