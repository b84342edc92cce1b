//! `cargo xtask demo`: build everything and boot the mini-OS.
//!
//! By default: the DAX image (Kata's default layout) in QEMU under TCG with
//! Kata's kernel command line and a vsock device; init runs Kata's agent
//! unit unmodified (agent-shim stands in for kata-agent, and answers the
//! host's health check over vsock) and timesync, which synchronises the
//! guest clock from a PTP hardware clock; the demo prints the boot
//! timeline, `timesync status` and `systemctl status`, and the guest powers
//! off when the agent exits, ending with the boot summary line.
//!
//! The kernel is the `test` flavour: the `kata` configuration plus the
//! kernel's mock PTP clock, because Kata's `ptp_kvm` needs KVM and this
//! boot runs under TCG. The mock PHC is created 1.5 s ahead of the guest
//! clock and 50 ppm fast, so timesync has something to correct.
//!
//! `--container`: the same userland as PID 1 of fresh namespaces instead,
//! powered off with systemd's poweroff signal.

use std::process::Command;
use std::time::Duration;

use crate::container::{
    make_rootfs, scratch, Container, KATA_AGENT_SERVICE, KATA_TARGET, TIMESYNC_SERVICE,
};
use crate::util::{ensure_packages, Result};

/// Creates the mock PHC before timesync starts (demo only).
const DEMO_PHC: &str = "\
[Unit]
Description=demo: a PTP hardware clock (the kernel's mock PHC)
Before=timesync.service

[Service]
Type=oneshot
ExecStart=/usr/bin/clockprobe phc-create
ExecStart=/usr/bin/clockprobe phc-set /dev/ptp0 1.5 50
StandardOutput=tty
";

/// Waits until the guest clock is on the PHC, then shows timesync's and
/// init's status on the console (demo only).
const DEMO_STATUS: &str = "\
[Unit]
Description=demo: show the clock and init's status
After=kata-agent.service timesync.service demo-phc.service

[Service]
Type=oneshot
ExecStart=-/usr/bin/clockprobe scenario /dev/ptp0
ExecStart=-/usr/bin/timesync status
ExecStart=/usr/bin/systemctl status
StandardOutput=tty
";

pub fn run(container_mode: bool) -> Result<()> {
    if container_mode {
        return container();
    }
    let kernel = crate::kernel::build("test")?;
    let bin = crate::build()?;
    let file = |path: &str, mode: u32, data: Vec<u8>| crate::image::Entry::File {
        path: path.into(),
        mode,
        data,
    };
    let clockprobe =
        std::fs::read(bin.join("clockprobe")).map_err(|e| format!("clockprobe: {e}"))?;
    let extra = [
        file("etc/minos/units/demo-phc.service", 0o644, DEMO_PHC.into()),
        file(
            "etc/minos/units/demo-status.service",
            0o644,
            DEMO_STATUS.into(),
        ),
        file("usr/bin/clockprobe", 0o755, clockprobe),
    ];
    let image = crate::image::build("dax", &bin, None, &extra, "demo")?;
    println!(
        "demo: booting {} (DAX on NVDIMM, q35, TCG, -icount shift=0,sleep=on, vsock to the host) \
         with the test kernel (kata + a mock PTP clock)",
        image.display()
    );
    let report = crate::qemu::boot(&crate::qemu::BootOptions {
        kernel: kernel.vmlinux,
        kind: crate::qemu::Kind::Dax,
        fs: crate::image::Fs::Ext4,
        image,
        data_disks: Vec::new(),
        machine: "q35".into(),
        // minos.test_clock=1 lets clockprobe set the mock PHC (and nothing
        // else: it refuses to run elsewhere).
        extra_cmdline: "systemd.show_status=true agent.exit_after=3s minos.test_clock=1".into(),
        memory_mib: 512,
        timeout: Duration::from_secs(300),
        echo: true,
        vsock: Some(bin.join("agent-shim")),
        host: None,
    })?;
    println!("{}", report.summary());
    if let Some(Err(err)) = &report.host_check {
        println!("demo: the host's health check failed: {err}");
    }
    let synced = report.console.contains("timesync: synchronised to PHC");
    if report.ok() && synced {
        println!(
            "demo: the agent became ready and answered the host's health check over vsock, \
             timesync synchronised the clock to the PHC, and the guest powered off cleanly \
             (times are guest CLOCK_BOOTTIME)"
        );
        Ok(())
    } else {
        Err(
            "the agent did not become ready or answer the health check, timesync did not \
             synchronise, or the guest did not power off cleanly"
                .into(),
        )
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
