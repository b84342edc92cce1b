//! `cargo xtask demo`: build everything and boot the mini-OS.
//!
//! By default: the `kata` kernel flavour and the DAX image (Kata's default
//! layout) in QEMU under TCG with Kata's kernel command line; init runs
//! Kata's agent unit unmodified (agent-shim stands in for kata-agent) and
//! timesync, prints its boot timeline and `systemctl status`, and the guest
//! powers off when the agent exits, ending with the boot summary line.
//!
//! `--container`: the same userland as PID 1 of fresh namespaces instead,
//! powered off with systemd's poweroff signal.

use std::process::Command;
use std::time::Duration;

use crate::container::{
    make_rootfs, scratch, Container, KATA_AGENT_SERVICE, KATA_TARGET, TIMESYNC_SERVICE,
};
use crate::util::{ensure_packages, Result};

/// Shows `systemctl status` on the console once the agent is up (demo only).
const DEMO_STATUS: &str = "\
[Unit]
Description=demo: show init's status
After=kata-agent.service timesync.service

[Service]
Type=oneshot
ExecStart=/usr/bin/systemctl status
StandardOutput=tty
";

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--container") {
        return container();
    }
    let kernel = crate::kernel::build("kata")?;
    let bin = crate::build()?;
    let extra = [crate::image::Entry::File {
        path: "etc/minos/units/demo-status.service".into(),
        mode: 0o644,
        data: DEMO_STATUS.as_bytes().to_vec(),
    }];
    let image = crate::image::build("dax", &bin, None, &extra, "demo")?;
    println!(
        "demo: booting {} (DAX on NVDIMM, q35, TCG, -icount shift=0,sleep=on, vsock to the host) with the kata kernel",
        image.display()
    );
    let report = crate::qemu::boot(&crate::qemu::BootOptions {
        kernel: kernel.vmlinux,
        kind: crate::qemu::Kind::Dax,
        fs: crate::image::Fs::Ext4,
        image,
        data_disks: Vec::new(),
        machine: "q35".into(),
        extra_cmdline: "systemd.show_status=true agent.exit_after=2s".into(),
        memory_mib: 512,
        timeout: Duration::from_secs(300),
        echo: true,
        vsock: Some(bin.join("agent-shim")),
    })?;
    println!("{}", report.summary());
    if report.ok() {
        println!("demo: the agent became ready, answered the host's health check over vsock, and the guest powered off cleanly (times are guest CLOCK_BOOTTIME)");
        Ok(())
    } else {
        Err("the agent did not become ready or the guest did not power off cleanly".into())
    }
}

fn container() -> Result<()> {
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
