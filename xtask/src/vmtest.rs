//! Whole-VM tests, run by `cargo xtask test` (and `cargo xtask vmtest`):
//! the `test` kernel flavour, the project's images, QEMU under TCG. Each
//! scenario asserts on what the guest printed and on how QEMU ended; the
//! data-disk scenario also checks the disk from the host (e2fsck, debugfs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::image::{Entry, Fs};
use crate::qemu::{boot, BootOptions, BootReport, Kind};
use crate::util::{root, Result};

fn unit(name: &str, text: &str) -> Entry {
    Entry::File {
        path: format!("etc/minos/units/{name}"),
        mode: 0o644,
        data: text.as_bytes().to_vec(),
    }
}

fn check(name: &str, cond: bool, what: &str, report: &BootReport) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{name}: {what}\n--- console ---\n{}",
            report.console
        ))
    }
}

/// Every one of `needles` is on the console.
fn check_console(name: &str, needles: &[&str], report: &BootReport) -> Result<()> {
    for needle in needles {
        check(
            name,
            report.console.contains(needle),
            &format!("console lacks {needle:?}"),
            report,
        )?;
    }
    Ok(())
}

/// The checks every boot must pass: timeline, units, agent, timesync,
/// poweroff. `all_started` is not reached when a test unit powers off.
fn common_checks(
    name: &str,
    r: &BootReport,
    all_started: bool,
    timesync: bool,
    agent_first: bool,
) -> Result<()> {
    let needles = [
        "timeline event=init_start",
        "timeline event=mounts_done",
        "timeline event=unit_ready unit=kata-agent.service",
        "timeline event=unit_ready unit=timesync.service",
        "timesync: started",
        "agent-shim: ready boottime_us=",
        "timeline event=shutdown_start",
    ];
    for needle in needles
        .into_iter()
        .filter(|n| timesync || !n.starts_with("timesync:"))
    {
        check(
            name,
            r.console.contains(needle),
            &format!("console lacks {needle:?}"),
            r,
        )?;
    }
    if all_started {
        check(
            name,
            r.console.contains("timeline event=all_started"),
            "console lacks all_started",
            r,
        )?;
        // Units first (init at nice 19 while starting them): the agent,
        // started first, is ready before init starts timesync — when the
        // agent never waits: not with the root on virtio-blk (it waits for
        // reads) nor with vsock (real-time I/O under sleep=on), where init
        // is the one left to run.
        if timesync && agent_first {
            let ready = r.console.find("agent-shim: ready boottime_us=");
            let next = r
                .console
                .find("timeline event=unit_started unit=timesync.service");
            check(
                name,
                matches!((ready, next), (Some(a), Some(t)) if a < t),
                "the agent was not ready before init started timesync",
                r,
            )?;
        }
    }
    check(name, r.mem_used_kib.is_some(), "no mem_used_kib line", r)?;
    check(
        name,
        r.shutdown_seen && r.exited_cleanly,
        "the guest did not power off cleanly",
        r,
    )
}

struct Scenario {
    name: &'static str,
    kind: Kind,
    fs: Fs,
    machine: &'static str,
    /// Added to the image.
    extra: Vec<Entry>,
    cmdline: &'static str,
    data_disk: bool,
    /// Host↔guest vsock; the host's health check must be answered.
    vsock: bool,
}

fn scenarios() -> Vec<Scenario> {
    let poweroff_unit = unit(
        "test-poweroff.service",
        "[Unit]\nAfter=kata-agent.service timesync.service\n[Service]\nType=oneshot\n\
         ExecStart=/usr/bin/probe sleep 0.5\nExecStart=/sbin/poweroff\n",
    );
    vec![
        Scenario {
            name: "initrd-q35",
            kind: Kind::Initrd,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![],
            cmdline: "agent.exit_after=1s",
            data_disk: false,
            vsock: false,
        },
        Scenario {
            name: "disk-q35",
            kind: Kind::Disk,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![],
            cmdline: "agent.exit_after=1s",
            data_disk: false,
            vsock: false,
        },
        Scenario {
            name: "dax-q35",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            // A simple unit, so that all_started (and init's log line about
            // its 2 MiB page, written then) does not wait for it; it looks
            // for the line in the kernel log for up to 0.9 s.
            extra: vec![
                unit(
                    "test-kmsg.service",
                    "[Service]\nExecStart=/usr/bin/probe kmsg \"KiB of code mapped with 2 MiB pages\" 900\n",
                ),
                unit(
                    "test-mounts.service",
                    "[Service]\nStandardOutput=tty\nExecStart=/usr/bin/probe cat /proc/mounts\n",
                ),
            ],
            cmdline: "agent.exit_after=1s",
            data_disk: false,
            vsock: false,
        },
        Scenario {
            name: "disk-microvm",
            kind: Kind::Disk,
            fs: Fs::Ext4,
            machine: "microvm",
            extra: vec![],
            cmdline: "agent.exit_after=1s",
            data_disk: false,
            vsock: false,
        },
        // osbuilder's erofs root, read-only and compact, on DAX.
        Scenario {
            name: "dax-q35-erofs",
            kind: Kind::Dax,
            fs: Fs::Erofs,
            machine: "q35",
            extra: vec![],
            cmdline: "agent.exit_after=1s",
            data_disk: false,
            vsock: false,
        },
        // `poweroff` run inside the guest (the agent would run for an hour);
        // a unit reports what it got: in a VM, LimitNOFILE=1073741824 and
        // OOMScoreAdjust=-997 apply exactly (init raised fs.nr_open).
        Scenario {
            name: "dax-q35-poweroff",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![
                poweroff_unit,
                unit(
                    "test-report.service",
                    "[Service]\nType=oneshot\nLimitNOFILE=1073741824\nOOMScoreAdjust=-997\n\
                     ExecStart=/usr/bin/probe report /dev/console\n\
                     ExecStart=/usr/bin/probe ls /dev /dev/console\n\
                     ExecStart=/usr/bin/probe cat /proc/sys/kernel/printk_devkmsg\n",
                ),
            ],
            cmdline: "agent.exit_after=1h",
            data_disk: false,
            vsock: false,
        },
        // A read-write data disk written just before poweroff.
        Scenario {
            name: "dax-q35-data-disk",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![unit(
                "test-data.service",
                "[Unit]\nAfter=kata-agent.service\n[Service]\nType=oneshot\n\
                 ExecStart=/usr/bin/probe mount /dev/vda /mnt ext4\n\
                 ExecStart=/usr/bin/probe copy /etc/passwd /mnt/passwd-copy\n\
                 ExecStart=/usr/bin/probe write /mnt/hello written-before-poweroff\n\
                 ExecStart=/sbin/poweroff\n",
            )],
            cmdline: "agent.exit_after=1h",
            data_disk: true,
            vsock: false,
        },
        // timesync disciplines the guest clock from a real PHC (the test
        // kernel's netdevsim mock clock, read through PTP_SYS_OFFSET; it
        // starts 1.5 s ahead and 50 ppm fast), then recovers from jumps of
        // the guest's CLOCK_REALTIME by +2 s and -2 s (stepped) and +0.5 s
        // (slewed); clockprobe measures PHC - REALTIME itself. timesync
        // runs as its own user with CAP_SYS_TIME alone.
        Scenario {
            name: "dax-q35-phc",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: phc_units("timesync", "ExecStart=-/usr/bin/timesync status\n"),
            cmdline: "agent.exit_after=1h minos.test_clock=1",
            data_disk: false,
            vsock: false,
        },
        // The same test with Debian's chronyd (4.3) in timesync's place,
        // configured as Kata configures it: the reference figures of
        // docs/timesync.md, measured the same way.
        Scenario {
            name: "dax-q35-phc-chronyd",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: chronyd_entries(),
            cmdline: "agent.exit_after=1h minos.test_clock=1",
            data_disk: false,
            vsock: false,
        },
        // A PHC that appears 5 s after timesync started and dropped to its
        // own user: the device is root:root 0600 (no udev), so the daemon
        // (uid 101, CAP_SYS_TIME alone) gets it from its device opener
        // (uid 0, no capabilities) and synchronises the guest.
        Scenario {
            name: "dax-q35-phc-late",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: late_phc_units(),
            cmdline: "agent.exit_after=1h minos.test_clock=1",
            data_disk: false,
            vsock: false,
        },
        // Issue 7's faults in one guest (cgroup2 at the real root): a fork
        // bomb held by TasksMax=32; the read-only root with every write on
        // tmpfs; then memory pressure until the OOM killer runs — it takes
        // the hog, init (-1000) and the agent (-997) live on, the guest
        // powers off cleanly afterwards.
        Scenario {
            name: "dax-q35-faults",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![
                unit(
                    "bomb.service",
                    "[Service]\nTasksMax=32\nExecStart=/usr/bin/probe forkbomb 4 4 /run/bomb\n",
                ),
                unit(
                    "faults.service",
                    "[Unit]\nAfter=kata-agent.service bomb.service timesync.service\n\
                     [Service]\nType=oneshot\nStandardOutput=tty\n\
                     ExecStart=/usr/bin/probe sleep 1\n\
                     ExecStart=/usr/bin/probe cat /sys/fs/cgroup/system.slice/bomb.service/pids.max\n\
                     ExecStart=/usr/bin/probe cat /sys/fs/cgroup/system.slice/bomb.service/pids.current\n\
                     ExecStart=/usr/bin/probe cat /sys/fs/cgroup/system.slice/bomb.service/pids.events\n\
                     ExecStart=/usr/bin/probe rocheck\n\
                     ExecStart=/usr/bin/probe sockets\n\
                     ExecStart=-/usr/bin/probe hog\n\
                     ExecStart=/usr/bin/probe pidof kata-agent\n\
                     ExecStart=/usr/bin/probe say faults:after-oom\n\
                     ExecStart=/sbin/poweroff\n",
                ),
            ],
            cmdline: "agent.exit_after=1h",
            data_disk: false,
            vsock: false,
        },
        // No /dev/ptp0 (the mock PHC is not created): timesync says so and
        // falls back to its NTP server, a real chronyd serving on 127.0.0.1
        // inside the guest (`local stratum 8`, -x: it never sets the clock).
        Scenario {
            name: "dax-q35-no-ptp",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: no_ptp_entries(),
            cmdline: "agent.exit_after=1h",
            data_disk: false,
            vsock: false,
        },
        // The runtime's view: a real virtio-vsock device (vhost-user
        // backend), the host's `agent-shim check hvsock://...:1024` gets
        // SERVING, then the agent exits and the guest powers off. On q35
        // (PCI) and on microvm (MMIO). The agent's strict self-check runs too.
        Scenario {
            name: "dax-q35-vsock",
            kind: Kind::Dax,
            fs: Fs::Ext4,
            machine: "q35",
            extra: vec![],
            cmdline: "agent.exit_after=5s agent.self_check agent.strict",
            data_disk: false,
            vsock: true,
        },
        Scenario {
            name: "initrd-microvm-vsock",
            kind: Kind::Initrd,
            fs: Fs::Ext4,
            machine: "microvm",
            extra: vec![],
            cmdline: "agent.exit_after=5s agent.self_check agent.strict",
            data_disk: false,
            vsock: true,
        },
    ]
}

/// Units of the PHC scenarios: the mock PHC (1.5 s ahead, 50 ppm fast)
/// before the time daemon, then the measurements of `daemon`, then poweroff.
/// `status` is one more command run before poweroff (or empty).
fn phc_units(daemon: &str, status: &str) -> Vec<Entry> {
    // timesync only (init restarts it; chronyd's stand-in unit does not
    // restart): SIGKILL at delays after a +3 s jump that sweep across its
    // next wakeup (once a second on a PHC), when it reads, bursts and steps.
    let kill = if daemon == "timesync" {
        "ExecStart=-/usr/bin/clockprobe kill-during-correction /dev/ptp0 timesync 3 \
         0 200 600 990 1000 1005 1010 1020 1050\n"
    } else {
        ""
    };
    vec![
        unit(
            "phc-mock.service",
            "[Unit]\nBefore=timesync.service\n[Service]\nType=oneshot\nStandardOutput=tty\n\
             ExecStart=/usr/bin/clockprobe phc-create\n\
             ExecStart=/usr/bin/clockprobe phc-set /dev/ptp0 1.5 50\n",
        ),
        unit(
            "clock-test.service",
            &format!(
                "[Unit]\nAfter=timesync.service phc-mock.service kata-agent.service\n\
                 [Service]\nType=oneshot\nStandardOutput=tty\n\
                 ExecStart=-/usr/bin/clockprobe scenario /dev/ptp0 2 -2 0.5\n\
                 ExecStart=/usr/bin/clockprobe whois {daemon}\n\
                 ExecStart=/usr/bin/clockprobe usage {daemon} 60\n\
                 {kill}{status}ExecStart=/sbin/poweroff\n"
            ),
        ),
    ]
}

/// The late-PHC scenario: the mock PHC created 5 s after timesync started,
/// then the clock measured, both processes' credentials, the status. An
/// NTP server whose name only a silent name server could resolve (30 s a
/// try, 5 tries) is configured beside: its lookup waits in timesync's
/// poll loop the whole time, and the PHC is used and read once a second
/// meanwhile.
fn late_phc_units() -> Vec<Entry> {
    vec![
        Entry::File {
            path: "etc/timesync.conf".into(),
            mode: 0o644,
            data: format!(
                "{}server time.silent.invalid iburst\n",
                include_str!("../../rootfs-skel/overlay/etc/timesync.conf")
            )
            .into_bytes(),
        },
        Entry::File {
            path: "etc/resolv.conf".into(),
            mode: 0o644,
            data: b"nameserver 127.0.0.254\noptions timeout:30 attempts:5\n".to_vec(),
        },
        unit(
            "phc-mock.service",
            "[Unit]\nAfter=timesync.service\n[Service]\nType=oneshot\nStandardOutput=tty\n\
             ExecStart=/usr/bin/probe sleep 5\n\
             ExecStart=/usr/bin/clockprobe phc-create\n\
             ExecStart=/usr/bin/clockprobe phc-set /dev/ptp0 1.5 50\n",
        ),
        unit(
            "clock-test.service",
            "[Unit]\nAfter=timesync.service phc-mock.service kata-agent.service\n\
             [Service]\nType=oneshot\nStandardOutput=tty\n\
             ExecStart=-/usr/bin/clockprobe scenario /dev/ptp0\n\
             ExecStart=/usr/bin/clockprobe whois timesync\n\
             ExecStart=/usr/bin/clockprobe whois timesync-open\n\
             ExecStart=/usr/bin/clockprobe usage timesync 60\n\
             ExecStart=-/usr/bin/timesync status\n\
             ExecStart=/sbin/poweroff\n",
        ),
    ]
}

/// The PHC created after timesync's privilege drop was opened for it by
/// the device opener, and the guest synchronised to it.
fn check_phc_late(name: &str, r: &BootReport) -> Result<()> {
    check_console(
        name,
        &[
            "timesync: running as user timesync with CAP_SYS_TIME only",
            // Root's alone, as devtmpfs makes it without udev.
            "clockprobe: phc /dev/ptp0 name=Mock-up PTP clock mode=0600 uid=0 gid=0",
            "timesync: /dev/ptp0: opened by the device opener",
            "timesync: using PHC /dev/ptp0 (Mock-up PTP clock) through PTP_SYS_OFFSET",
            "clockprobe: synchronised after_ms=",
            "Source          : PHC /dev/ptp0 (Mock-up PTP clock)",
            "Synchronised    : yes",
            "uid=101 gid=101 CapEff=0000000002000000 CapPrm=0000000002000000 \
             CapBnd=0000000002000000 CapAmb=0000000000000000 NoNewPrivs=1",
            "uid=0 gid=0 CapEff=0000000000000000 CapPrm=0000000000000000 \
             CapBnd=0000000000000000 CapAmb=0000000000000000 NoNewPrivs=1",
            // The lookup still outstanding when the status was taken.
            "  NTP time.silent.invalid unresolved",
        ],
        r,
    )?;
    // The PHC read once a second all along, beside the lookup.
    let per_s = value_after(&r.console, "clockprobe: usage timesync", "per_s=");
    check(
        name,
        per_s.is_some_and(|w| w <= 1.1),
        &format!("timesync woke {per_s:?} times per second beside a silent lookup"),
        r,
    )
}

/// The no-PHC scenario: chronyd as an NTP server on loopback, timesync
/// with Kata's lines plus that server, a check of its status after the
/// fallback, then poweroff.
fn no_ptp_entries() -> Vec<Entry> {
    vec![
        unit(
            "ntp-server.service",
            "[Unit]\nBefore=timesync.service\n[Service]\nType=simple\n\
             ExecStart=/usr/sbin/chronyd -d -x -u root -f /etc/chrony/server.conf\n",
        ),
        Entry::Dir {
            path: "etc/chrony".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "etc/chrony/server.conf".into(),
            mode: 0o644,
            data: b"local stratum 8\nallow 127.0.0.1\nbindaddress 127.0.0.1\nport 123\n\
                    cmdport 0\npidfile /run/chronyd.pid\n"
                .to_vec(),
        },
        Entry::File {
            path: "etc/timesync.conf".into(),
            mode: 0o644,
            data: format!(
                "{}server 127.0.0.1 iburst\n",
                include_str!("../../rootfs-skel/overlay/etc/timesync.conf")
            )
            .into_bytes(),
        },
        unit(
            "ntp-check.service",
            "[Unit]\nAfter=timesync.service ntp-server.service kata-agent.service\n\
             [Service]\nType=oneshot\nStandardOutput=tty\n\
             ExecStart=/usr/bin/probe sleep 12\nExecStart=-/usr/bin/timesync status\n\
             ExecStart=/sbin/poweroff\n",
        ),
    ]
}

/// Debian's chronyd with the libraries it links (from ldd), Kata's
/// chrony lines, and a timesync.service that runs chronyd instead.
fn chronyd_entries() -> Vec<Entry> {
    let mut entries = phc_units("chronyd", "");
    entries.push(unit(
        "timesync.service",
        "[Unit]\nDescription=chronyd in timesync's place\n[Service]\nType=simple\n\
         ExecStart=/usr/sbin/chronyd -d -u root -f /etc/chrony/chrony.conf\n",
    ));
    entries.push(Entry::Dir {
        path: "etc/chrony".into(),
        mode: 0o755,
    });
    entries.push(Entry::File {
        path: "etc/chrony/chrony.conf".into(),
        mode: 0o644,
        data: format!(
            "{}cmdport 0\npidfile /run/chronyd.pid\n",
            include_str!("../../tests/fixtures/kata/chrony-kata.conf")
        )
        .into_bytes(),
    });
    entries
}

/// Adds chronyd and the loader and libraries it links to `extra`.
fn add_chronyd(extra: &mut Vec<Entry>) -> Result<()> {
    crate::util::ensure_packages(&[("chronyd", "chrony")])?;
    let chronyd = Path::new("/usr/sbin/chronyd");
    extra.extend(crate::image::runtime_libraries(chronyd)?);
    extra.push(Entry::Dir {
        path: "usr/sbin".into(),
        mode: 0o755,
    });
    extra.push(Entry::File {
        path: "usr/sbin/chronyd".into(),
        mode: 0o755,
        data: std::fs::read(chronyd).map_err(|e| format!("{}: {e}", chronyd.display()))?,
    });
    Ok(())
}

/// The number after `key=` on the first console line containing `marker`.
pub fn value_after(console: &str, marker: &str, key: &str) -> Option<f64> {
    console
        .lines()
        .find(|l| l.contains(marker))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key))?
        .parse()
        .ok()
}

/// timesync from a PHC: synchronised, both jumps back under 1 ms within 2 s
/// of guest time, status naming the PHC, least privilege.
fn check_phc(name: &str, r: &BootReport) -> Result<()> {
    check_console(
        name,
        &[
            "clockprobe: phc /dev/ptp0 name=Mock-up PTP clock",
            "timesync: using PHC /dev/ptp0 (Mock-up PTP clock) through PTP_SYS_OFFSET",
            "timesync: running as user timesync with CAP_SYS_TIME only",
            "clockprobe: synchronised after_ms=",
            "Source          : PHC /dev/ptp0 (Mock-up PTP clock)",
            "Synchronised    : yes",
            // uid 101, CAP_SYS_TIME (bit 25) alone, nothing ambient.
            "uid=101 gid=101 CapEff=0000000002000000 CapPrm=0000000002000000 \
             CapBnd=0000000002000000 CapAmb=0000000000000000 NoNewPrivs=1",
        ],
        r,
    )?;
    // The first step: the PHC's 1.5 s, confirmed by a second reading.
    let first_step: Option<f64> = r
        .console
        .lines()
        .find_map(|l| l.split("timesync: stepped the clock by ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok());
    check(
        name,
        first_step.is_some_and(|step| (1.49..=1.51).contains(&step)),
        &format!("first step {first_step:?}, not the PHC's 1.5 s"),
        r,
    )?;
    // Settled on a PHC: at most one wakeup per second; RSS under 1.5 MiB.
    let per_s = value_after(&r.console, "clockprobe: usage timesync", "per_s=");
    check(
        name,
        per_s.is_some_and(|w| w <= 1.1),
        &format!("timesync woke {per_s:?} times per second"),
        r,
    )?;
    let rss = value_after(&r.console, "clockprobe: usage timesync", "rss_kib=");
    check(
        name,
        rss.is_some_and(|kib| kib < 1536.0),
        &format!("timesync RSS {rss:?} KiB"),
        r,
    )?;
    // SIGKILL while it corrects a +3 s jump: init restarts it (RestartSec=1s)
    // and the new instance steps the clock back.
    let kills: Vec<&str> = r
        .console
        .lines()
        .filter(|l| l.starts_with("clockprobe: kill-during-correction "))
        .collect();
    check(
        name,
        kills.len() == 9,
        &format!("{} kill-during-correction lines, not 9", kills.len()),
        r,
    )?;
    let mut before = 0;
    for line in &kills {
        let field = |key: &str| -> Option<f64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        let recovered = field("recovered_ms=");
        let restarted = field("restarted_ms=");
        if field("offset_at_kill_ms=").is_some_and(|ms| ms.abs() > 1.0) {
            before += 1;
        }
        check(
            name,
            recovered.is_some_and(|ms| ms <= 4000.0) && restarted.is_some_and(|ms| ms <= 4000.0),
            &format!("not restarted and back under 1 ms within 4 s: {line}"),
            r,
        )?;
    }
    // The sweep must hit both sides of the step.
    check(
        name,
        before > 0 && before < kills.len(),
        &format!(
            "{before} of {} kills landed before the correction",
            kills.len()
        ),
        r,
    )?;
    for jump in ["jump=+2.000", "jump=-2.000"] {
        let recovered = value_after(&r.console, jump, "recovered_ms=");
        check(
            name,
            recovered.is_some_and(|ms| ms <= 2000.0),
            &format!("{jump}: offset not back under 1 ms within 2 s ({recovered:?} ms)"),
            r,
        )?;
    }
    // Below `makestep 1`: slewed at up to 83,333 ppm (6 s for 0.5 s),
    // through the tick length.
    let recovered = value_after(&r.console, "jump=+0.500", "recovered_ms=");
    check(
        name,
        recovered.is_some_and(|ms| ms <= 10_000.0),
        &format!("jump=+0.500: offset not back under 1 ms within 10 s ({recovered:?} ms)"),
        r,
    )?;
    Ok(())
}

/// The console lines of `dax-q35-faults`, in the order they must come.
fn check_faults(name: &str, r: &BootReport) -> Result<()> {
    let c = &r.console;
    let pos = |needle: &str| -> Result<usize> {
        c.find(needle)
            .ok_or_else(|| format!("{name}: console lacks {needle:?}\n--- console ---\n{c}"))
    };
    // The bomb, held by its cgroup on cgroup2.
    pos("probe cat /sys/fs/cgroup/system.slice/bomb.service/pids.max: 32")?;
    let current: Option<u32> = c
        .lines()
        .find_map(|l| l.split("bomb.service/pids.current: ").nth(1))
        .and_then(|v| v.trim().parse().ok());
    check(
        name,
        current.is_some_and(|n| (20..=32).contains(&n)),
        &format!("pids.current {current:?} (the bomb fills up to TasksMax=32)"),
        r,
    )?;
    let refused: Option<u64> = c
        .lines()
        .find_map(|l| l.split("bomb.service/pids.events: max ").nth(1))
        .and_then(|v| v.trim().parse().ok());
    check(
        name,
        refused.is_some_and(|n| n > 0),
        &format!("pids.events shows no refused fork ({refused:?})"),
        r,
    )?;
    check(
        name,
        !c.contains("TasksMax= not applied"),
        "TasksMax= was not applied",
        r,
    )?;
    // The read-only root.
    pos("probe rocheck: ok root=ro")?;
    check(
        name,
        !c.contains("Read-only file system"),
        "something in the guest failed on the read-only root",
        r,
    )?;
    // Sockets in the guest: init unix only, one listener outside unix
    // sockets — the agent on vsock port 1024 (any CID), as configured; no
    // inet socket at all.
    pos("probe sockets: done")?;
    let sockets: Vec<&str> = c
        .lines()
        .filter(|l| l.starts_with("probe socket "))
        .collect();
    let listening: Vec<&&str> = sockets
        .iter()
        .filter(|l| l.ends_with(" listening") && !l.contains(" family=1 "))
        .collect();
    let init_sockets: Vec<&&str> = sockets
        .iter()
        .filter(|l| l.starts_with("probe socket init pid=1 "))
        .collect();
    check(
        name,
        !init_sockets.is_empty()
            && init_sockets.iter().all(|l| l.contains(" family=1 "))
            && listening.len() == 1
            && listening.first().is_some_and(|l| {
                l.starts_with("probe socket kata-agent ")
                    && l.contains(" family=40 ")
                    && l.contains(" local=4294967295:1024 ")
            })
            && !sockets
                .iter()
                .any(|l| l.contains(" family=2 ") || l.contains(" family=10 ")),
        &format!("unexpected sockets in the guest:\n{}", sockets.join("\n")),
        r,
    )?;
    // The OOM killer took the hog, not init or the agent.
    let oom = pos("Out of memory: Killed process")?;
    let victim = c
        .get(oom..)
        .and_then(|t| t.lines().next())
        .unwrap_or_default();
    check(
        name,
        victim.contains("(probe)"),
        &format!("the OOM killer's victim: {victim}"),
        r,
    )?;
    let agent = pos("probe pidof kata-agent: pid=")?;
    let after = pos("faults:after-oom")?;
    check(
        name,
        oom < agent && agent < after,
        "the agent was not found alive after the OOM kill",
        r,
    )?;
    let pidof = c
        .lines()
        .find(|l| l.starts_with("probe pidof kata-agent: pid="))
        .unwrap_or_default();
    check(
        name,
        pidof.ends_with(" oom_score_adj=-997"),
        &format!("the agent's oom_score_adj is not -997: {pidof}"),
        r,
    )
}

/// timesync without /dev/ptp0: says so, falls back to NTP on loopback and
/// synchronises there.
fn check_no_ptp(name: &str, r: &BootReport) -> Result<()> {
    check_console(
        name,
        &[
            "cannot open PHC /dev/ptp0",
            "other sources are used meanwhile",
            "Synchronised    : yes",
        ],
        r,
    )?;
    let source = r
        .console
        .lines()
        .find(|l| l.starts_with("Source          : "))
        .unwrap_or_default();
    check(
        name,
        source.contains("127.0.0.1"),
        &format!("timesync's source is not the NTP server: {source:?}"),
        r,
    )
}

fn data_disk(path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    crate::util::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(path)
            .arg("32M")
            .stdout(std::process::Stdio::null()),
    )
}

fn check_data_disk(name: &str, path: &Path, r: &BootReport) -> Result<()> {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(path)
        .output()
        .map_err(|e| format!("e2fsck: {e}"))?;
    check(
        name,
        fsck.status.success(),
        &format!("e2fsck -fn: {}", String::from_utf8_lossy(&fsck.stdout)),
        r,
    )?;
    let cat = |file: &str| -> Result<Vec<u8>> {
        let o = Command::new("debugfs")
            .args(["-R", &format!("cat {file}")])
            .arg(path)
            .output()
            .map_err(|e| format!("debugfs: {e}"))?;
        Ok(o.stdout)
    };
    let passwd =
        std::fs::read(root().join("rootfs-skel/overlay/etc/passwd")).map_err(|e| e.to_string())?;
    check(
        name,
        cat("/passwd-copy")? == passwd,
        "/passwd-copy differs on the data disk",
        r,
    )?;
    check(
        name,
        cat("/hello")? == b"written-before-poweroff",
        "/hello differs on the data disk",
        r,
    )
}

pub fn run(only: Option<&str>) -> Result<()> {
    reports(only).map(|_| ())
}

/// The scenarios' names, for the command line.
pub fn names() -> Vec<&'static str> {
    scenarios().iter().map(|s| s.name).collect()
}

/// Runs the scenarios (`only` one of them) and returns each one's report
/// when all passed.
pub fn reports(only: Option<&str>) -> Result<Vec<(&'static str, BootReport)>> {
    let kernel = crate::kernel::build("test")?.vmlinux;
    let bin = crate::util::release_dir();
    let probe = bin.join("probe");
    if !probe.is_file() {
        return Err(format!(
            "{} is missing (cargo build --release --workspace --bins)",
            probe.display()
        ));
    }
    let probe_entry = Entry::File {
        path: "usr/bin/probe".into(),
        mode: 0o755,
        data: std::fs::read(&probe).map_err(|e| e.to_string())?,
    };
    let clockprobe_entry = Entry::File {
        path: "usr/bin/clockprobe".into(),
        mode: 0o755,
        data: std::fs::read(bin.join("clockprobe")).map_err(|e| format!("clockprobe: {e}"))?,
    };
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for s in scenarios() {
        if only.is_some_and(|o| o != s.name) {
            continue;
        }
        let mut extra = s.extra.clone();
        if s.name == "dax-q35-phc-chronyd" || s.name == "dax-q35-no-ptp" {
            add_chronyd(&mut extra)?;
        }
        extra.push(probe_entry.clone());
        extra.push(clockprobe_entry.clone());
        let image = crate::image::build_on(
            s.kind.name(),
            &bin,
            None,
            &extra,
            &format!("test-{}", s.name),
            None,
            s.fs,
        )?;
        let disk = root().join(format!("target/images/test-{}-data.ext4", s.name));
        let mut data_disks: Vec<PathBuf> = Vec::new();
        if s.data_disk {
            data_disk(&disk)?;
            data_disks.push(disk.clone());
        }
        let o = BootOptions {
            kernel: kernel.clone(),
            kind: s.kind,
            fs: s.fs,
            image,
            data_disks,
            machine: s.machine.into(),
            extra_cmdline: s.cmdline.into(),
            memory_mib: 512,
            timeout: Duration::from_secs(300),
            // MINOS_VMTEST_ECHO=1 streams every guest's console.
            echo: std::env::var_os("MINOS_VMTEST_ECHO").is_some(),
            vsock: s.vsock.then(|| bin.join("agent-shim")),
            host: None,
        };
        let result = boot(&o).and_then(|r| {
            common_checks(
                s.name,
                &r,
                s.extra.is_empty(),
                !s.name.ends_with("-chronyd"),
                s.kind != Kind::Disk && !s.vsock,
            )?;
            if s.data_disk {
                check_data_disk(s.name, &disk, &r)?;
            }
            if s.name == "dax-q35-phc" {
                check_phc(s.name, &r)?;
            }
            if s.name == "dax-q35-phc-late" {
                check_phc_late(s.name, &r)?;
            }
            if s.name == "dax-q35-faults" {
                check_faults(s.name, &r)?;
            }
            if s.name == "dax-q35-no-ptp" {
                check_no_ptp(s.name, &r)?;
            }
            if s.name == "dax-q35-phc-chronyd" {
                // Reference figures only: chronyd synchronised the guest and
                // the jumps were measured (recovered or not within 60 s).
                check_console(
                    s.name,
                    &[
                        "clockprobe: synchronised after_ms=",
                        "clockprobe: jump=+2.000 ",
                        "clockprobe: jump=-2.000 ",
                        "clockprobe: jump=+0.500 ",
                        "clockprobe: usage chronyd",
                    ],
                    &r,
                )?;
            }
            if s.vsock {
                check(
                    s.name,
                    r.host_check
                        .as_ref()
                        .is_some_and(|a| a.as_deref() == Ok("SERVING")),
                    &format!("the host's health check over vsock: {:?}", r.host_check),
                    &r,
                )?;
                check(
                    s.name,
                    r.health_check_us.is_some(),
                    "the agent did not log the answered health check",
                    &r,
                )?;
                // Everything kata-agent relies on, as a VM gives it (strict:
                // any gap would have stopped the agent before readiness).
                check(
                    s.name,
                    r.console.contains(" gaps=none"),
                    "the agent's self-check found gaps",
                    &r,
                )?;
                check(
                    s.name,
                    r.console
                        .contains("agent-shim: exiting status=0 reason=exit-after"),
                    "the agent did not exit after the check",
                    &r,
                )?;
            }
            if s.name == "dax-q35" {
                // The image builder put init on a 2 MiB boundary of the
                // NVDIMM: the kernel mapped its code with one 2 MiB page.
                check(
                    s.name,
                    r.console
                        .contains("KiB of code mapped with 2 MiB pages (DAX)"),
                    "init's code was not mapped with a 2 MiB page",
                    &r,
                )?;
                // The superblock's mount options reached the kernel: no
                // inode-table readahead on the DAX root.
                let root_line = r
                    .console
                    .split(" | ")
                    .find(|m| m.contains(" / ext4 "))
                    .unwrap_or_default();
                check(
                    s.name,
                    root_line.contains(crate::image::DAX_MOUNT_OPTS),
                    &format!(
                        "the root's mount options lack {} ({root_line:?})",
                        crate::image::DAX_MOUNT_OPTS
                    ),
                    &r,
                )?;
            }
            if s.name == "dax-q35-poweroff" {
                for needle in [
                    "nofile=1073741824/1073741824",
                    "oom_score_adj=-997",
                    "stdin=/dev/null",
                    // Made by init once the agent runs (its late set-up).
                    "fd link /proc/self/fd",
                    "stdin link /proc/self/fd/0",
                    "stderr link /proc/self/fd/2",
                    "probe cat /proc/sys/kernel/printk_devkmsg: on",
                ] {
                    check(
                        s.name,
                        r.console.contains(needle),
                        &format!("report lacks {needle}"),
                        &r,
                    )?;
                }
            }
            Ok(r)
        });
        match result {
            Ok(r) => {
                println!("vmtest: {:<20} ok   {}", s.name, r.summary());
                // The measurements docs/timesync.md quotes.
                for line in r.console.lines().filter(|l| l.starts_with("clockprobe: ")) {
                    println!("vmtest: {:<20}      {line}", s.name);
                }
                passed.push((s.name, r));
            }
            Err(e) => {
                println!("vmtest: {:<20} FAILED", s.name);
                failures.push(e);
            }
        }
    }
    kata_scenarios(only, &kernel, &bin, &mut failures)?;
    if failures.is_empty() {
        Ok(passed)
    } else {
        Err(format!(
            "{} VM scenario(s) failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        ))
    }
}

/// The real kata-agent's scenarios: each cgroupsPath form, on DAX and on
/// an initrd, and on DAX built on the osbuilder-style Debian rootfs (the
/// bench's systemd tree, `--base`): its units from /usr/lib/systemd/system,
/// its dbus-daemon (see [`crate::kata`]). Skipped, loudly, without the agent.
const KATA_SCENARIOS: [(&str, crate::kata::Form, Kind, bool); 6] = [
    (
        "kata-cgroupfs-dax",
        crate::kata::Form::Cgroupfs,
        Kind::Dax,
        false,
    ),
    (
        "kata-systemd-dax",
        crate::kata::Form::Systemd,
        Kind::Dax,
        false,
    ),
    (
        "kata-cgroupfs-initrd",
        crate::kata::Form::Cgroupfs,
        Kind::Initrd,
        false,
    ),
    (
        "kata-systemd-initrd",
        crate::kata::Form::Systemd,
        Kind::Initrd,
        false,
    ),
    (
        "kata-osbuilder-cgroupfs",
        crate::kata::Form::Cgroupfs,
        Kind::Dax,
        true,
    ),
    (
        "kata-osbuilder-systemd",
        crate::kata::Form::Systemd,
        Kind::Dax,
        true,
    ),
];

/// The image of an osbuilder scenario: the bench's osbuilder-style tree
/// with minos put in as its users would — with `cargo xtask image --base`
/// (cgroupfs form), with the release tarball's install.sh (systemd form,
/// `cargo xtask dist`) — plus the real agent and the test's own files.
fn osbuilder_image(
    bin: &Path,
    agent: &Path,
    extra: &[Entry],
    form: crate::kata::Form,
    kind: Kind,
    name: &str,
) -> Result<PathBuf> {
    let tree = root().join(format!("target/images/{name}-base"));
    crate::bench::systems::systemd_tree(bin, kind.name(), &tree)?;
    let mut entries = extra.to_vec();
    // The test's own cgroup watcher, pulled in by Kata's target.
    entries.push(Entry::Symlink {
        path: "etc/systemd/system/kata-containers.target.wants/cgwatch.service".into(),
        target: "/etc/minos/units/cgwatch.service".into(),
    });
    if form == crate::kata::Form::Cgroupfs {
        return crate::image::build_on(
            kind.name(),
            bin,
            Some(agent),
            &entries,
            name,
            Some(&tree),
            Fs::Ext4,
        );
    }
    let tarball = crate::dist::make(bin)?;
    let unpacked = root().join(format!("target/images/{name}-dist"));
    let said = crate::dist::install(&tarball, &unpacked, &tree, &[])?;
    println!("vmtest: {name}: {}", said.trim_end());
    entries.push(Entry::File {
        path: "usr/bin/kata-agent".into(),
        mode: 0o755,
        data: std::fs::read(agent).map_err(|e| format!("{}: {e}", agent.display()))?,
    });
    crate::image::write_entries(&entries, &tree, &[])?;
    crate::image::from_stage(kind.name(), &tree, name, Fs::Ext4)
}

fn kata_scenarios(
    only: Option<&str>,
    kernel: &Path,
    bin: &Path,
    failures: &mut Vec<String>,
) -> Result<()> {
    let wanted: Vec<_> = KATA_SCENARIOS
        .iter()
        .filter(|(name, ..)| only.is_none_or(|o| o == *name))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let assets = match crate::kata::assets()? {
        Ok(a) => a,
        Err(why) => {
            println!(
                "vmtest: SKIPPED {} scenario(s) with the real kata-agent: {why}",
                wanted.len()
            );
            return Ok(());
        }
    };
    let extra = crate::kata::image_entries()?;
    for &&(name, form, kind, osbuilder) in &wanted {
        let image_name = format!("test-{name}");
        let image = if osbuilder {
            osbuilder_image(bin, &assets.agent, &extra, form, kind, &image_name)?
        } else {
            crate::image::build_on(
                kind.name(),
                bin,
                Some(&assets.agent),
                &extra,
                &image_name,
                None,
                Fs::Ext4,
            )?
        };
        let bundles = root().join(format!("target/kata-bundles/{name}"));
        let o = BootOptions {
            kernel: kernel.to_path_buf(),
            kind,
            fs: Fs::Ext4,
            image,
            data_disks: Vec::new(),
            machine: "q35".into(),
            extra_cmdline: String::new(),
            memory_mib: 512,
            timeout: Duration::from_secs(400),
            echo: std::env::var_os("MINOS_VMTEST_ECHO").is_some(),
            vsock: Some(bin.join("agent-shim")),
            host: Some(crate::kata::script(&assets, form, &bundles)?),
        };
        let result = boot(&o).and_then(|r| {
            let steps = match &r.host_check {
                Some(Ok(steps)) => steps.clone(),
                Some(Err(e)) => return Err(format!("{name}: {e}\n--- console ---\n{}", r.console)),
                None => return Err(format!("{name}: the host script did not run")),
            };
            crate::kata::check_console(form, osbuilder, &r.console)
                .map_err(|e| format!("{name}: {e}\n--- console ---\n{}", r.console))?;
            check(
                name,
                r.shutdown_seen && r.exited_cleanly,
                "the guest did not power off cleanly after DestroySandbox",
                &r,
            )?;
            Ok(steps)
        });
        match result {
            Ok(steps) => {
                println!(
                    "vmtest: {name:<20} ok   real kata-agent, cgroupsPath {}",
                    form.cgroup()
                );
                for line in steps.lines() {
                    println!("vmtest: {name:<20}      {line}");
                }
            }
            Err(e) => {
                println!("vmtest: {name:<20} FAILED");
                failures.push(e);
            }
        }
    }
    Ok(())
}
