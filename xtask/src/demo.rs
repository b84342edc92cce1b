//! `cargo xtask demo`: build everything and boot the mini-OS.
//!
//! Until the VM image and kernel exist (issue 3), the mini-OS boots as a
//! container: init is PID 1 of fresh namespaces, runs Kata's agent unit
//! unmodified (agent-shim stands in for kata-agent) and timesync, shows its
//! boot timeline and status, and powers off cleanly on systemd's poweroff
//! signal.

use std::process::Command;
use std::time::Duration;

use crate::container::{
    make_rootfs, scratch, Container, KATA_AGENT_SERVICE, KATA_TARGET, TIMESYNC_SERVICE,
};
use crate::util::{ensure_packages, Result};

pub fn run() -> Result<()> {
    ensure_packages(&[("unshare", "util-linux"), ("nsenter", "util-linux")])?;
    let bin = crate::build()?;
    let root = scratch("demo-rootfs");
    make_rootfs(
        &root,
        &bin,
        &[
            ("kata-agent.service", KATA_AGENT_SERVICE),
            ("kata-containers.target", KATA_TARGET),
            ("chronyd.service", TIMESYNC_SERVICE),
        ],
    )?;
    println!(
        "demo: booting {} as a container (PID, mount, UTS, IPC, net, cgroup namespaces)",
        root.display()
    );
    let args = [
        "systemd.unit=kata-containers.target",
        "systemd.show_status=true",
    ];
    let mut c = Container::start(&root, &args, true)?;
    c.wait_for("agent-shim: ready", Duration::from_secs(30))?;
    c.wait_for("timeline event=all_started", Duration::from_secs(30))?;
    let pid = c.init_pid()?;
    println!("\ndemo: `systemctl status` inside the guest:");
    crate::util::run(
        Command::new("nsenter")
            .args([
                "--target",
                &pid.to_string(),
                "--mount",
                "--pid",
                "--root",
                "--wd=/",
            ])
            .arg("/usr/bin/systemctl")
            .arg("status"),
    )?;
    println!("\ndemo: sending SIGRTMIN+4 (systemd's poweroff signal) to init");
    c.signal("RTMIN+4")?;
    let (sig, _) = c.wait(Duration::from_secs(120))?;
    match sig {
        // reboot(2) POWER_OFF in a child PID namespace ends it with SIGINT.
        Some(2) => {
            println!("demo: clean poweroff (the PID namespace ended through reboot(2) POWER_OFF)");
            Ok(())
        }
        other => Err(format!("init ended unexpectedly (signal {other:?})")),
    }
}
