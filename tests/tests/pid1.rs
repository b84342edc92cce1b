//! init as PID 1 of new namespaces, chrooted into a rootfs built per test,
//! in container mode. Each test asserts on what the units observed and on
//! how the PID namespace ended (reboot(2) there ends it with SIGINT for
//! poweroff/halt and SIGHUP for reboot).

use std::time::Duration;

use minos_tests::Rootfs;

/// Whether the tests run with CAP_SYS_RESOURCE (some sandboxes drop it):
/// without it, init in container mode cannot lower oom_score_adj or raise a
/// hard rlimit, and says so.
fn has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// The LimitNOFILE a unit gets in container mode: clamped to fs.nr_open, and
/// to init's own hard limit when it lacks CAP_SYS_RESOURCE.
fn nofile_ceiling(want: u64) -> u64 {
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut max = nr_open;
    if !has_sys_resource() {
        max = max.min(
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .maximum
                .unwrap_or(u64::MAX),
        );
    }
    want.min(max)
}

const SIGINT: i32 = 2;
const SIGHUP: i32 = 1;
const WAIT: Duration = Duration::from_secs(60);

fn stamps(log: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter_map(|l| {
            let (name, t) = l.rsplit_once(' ')?;
            Some((name.to_string(), t.parse().ok()?))
        })
        .collect()
}

fn at(stamps: &[(String, u64)], name: &str) -> u64 {
    stamps
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {stamps:?}"))
        .1
}

#[test]
fn units_start_in_dependency_order_and_independent_ones_in_parallel() {
    let fs = Rootfs::new("order");
    for name in ["c", "d"] {
        fs.unit(
            &format!("{name}.service"),
            &format!(
                "[Service]\nType=oneshot\nExecStart=/bin/probe append /data/log start-{name}\n\
                 ExecStart=/bin/probe sleep 0.5\nExecStart=/bin/probe append /data/log end-{name}\n"
            ),
        );
    }
    fs.unit(
        "e.service",
        "[Unit]\nAfter=c.service\nRequires=c.service\n[Service]\nType=oneshot\nExecStart=/bin/probe append /data/log start-e\n",
    );
    // Ordering with Before= on the earlier unit, too.
    fs.unit(
        "a.service",
        "[Unit]\nBefore=c.service d.service\n[Service]\nType=oneshot\nExecStart=/bin/probe sleep 0.3\n\
         ExecStart=/bin/probe append /data/log end-a\n",
    );
    fs.unit(
        "cond-yes.service",
        "[Unit]\nConditionPathExists=/etc/hostname\n[Service]\nType=oneshot\nExecStart=/bin/probe append /data/log cond-yes\n",
    );
    fs.unit(
        "cond-no.service",
        "[Unit]\nConditionPathExists=!/etc/hostname\n[Service]\nType=oneshot\nExecStart=/bin/probe append /data/log cond-no\n",
    );
    fs.unit(
        "z.service",
        "[Unit]\nAfter=c.service d.service e.service cond-yes.service cond-no.service\n[Service]\nType=oneshot\n\
         ExecStart=/bin/probe copy /run/minos/timeline /data/timeline\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(
        end.signal(),
        Some(SIGINT),
        "poweroff ends the PID namespace with SIGINT:\n{}",
        end.output
    );
    let s = stamps(&fs.read("data/log"));
    assert!(
        at(&s, "end-a") < at(&s, "start-c") && at(&s, "end-a") < at(&s, "start-d"),
        "{s:?}"
    );
    assert!(
        at(&s, "start-d") < at(&s, "end-c") && at(&s, "start-c") < at(&s, "end-d"),
        "c, d in parallel: {s:?}"
    );
    assert!(at(&s, "start-e") > at(&s, "end-c"), "e after c: {s:?}");
    end.assert_log("timeline event=init_start");
    end.assert_log("timeline event=mounts_done");
    end.assert_log("timeline event=unit_started unit=c.service");
    end.assert_log("timeline event=unit_ready unit=e.service");
    let timeline = end
        .output
        .lines()
        .filter(|l| l.contains("timeline event="))
        .count();
    assert!(timeline >= 8, "{}", end.output);
    assert!(
        s.iter().any(|(n, _)| n == "cond-yes") && !s.iter().any(|(n, _)| n == "cond-no"),
        "{s:?}"
    );
    end.assert_log(
        "cond-no.service: skipped: condition ConditionPathExists=!/etc/hostname is false",
    );
    // The same timeline, in /run/minos/timeline, with increasing CLOCK_BOOTTIME.
    let file = fs.read("data/timeline");
    let times: Vec<u64> = file
        .lines()
        .map(|l| {
            l.rsplit_once("boottime_us=")
                .and_then(|(_, t)| t.parse().ok())
                .expect(l)
        })
        .collect();
    assert!(
        file.starts_with("timeline event=init_start boottime_us="),
        "{file}"
    );
    assert!(
        file.contains("timeline event=unit_ready unit=e.service"),
        "{file}"
    );
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{file}");
}

#[test]
fn restart_always_backs_off_then_start_limit_runs_failure_action() {
    let fs = Rootfs::new("restart");
    fs.unit(
        "flappy.service",
        "[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=30s\nFailureAction=poweroff\n\
         [Service]\nRestart=always\nRestartSec=300ms\nExecStart=/bin/probe append /data/runs run\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let runs = stamps(&fs.read("data/runs"));
    assert_eq!(runs.len(), 3, "StartLimitBurst=3: {runs:?}\n{}", end.output);
    for w in runs.windows(2) {
        assert!(
            w[1].1 - w[0].1 >= 300_000,
            "RestartSec=300ms between runs: {runs:?}"
        );
    }
    end.assert_log("flappy.service: start limit hit");
    end.assert_log("flappy.service: FailureAction: poweroff");
}

#[test]
fn restart_on_failure_does_not_restart_success() {
    let fs = Rootfs::new("onfailure");
    fs.unit(
        "once.service",
        "[Unit]\nSuccessAction=reboot\n[Service]\nRestart=on-failure\nRestartSec=100ms\n\
         ExecStart=/bin/probe append /data/runs run\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(
        end.signal(),
        Some(SIGHUP),
        "SuccessAction=reboot ends the namespace with SIGHUP:\n{}",
        end.output
    );
    assert_eq!(stamps(&fs.read("data/runs")).len(), 1);
}

fn kata_rootfs(name: &str, exit_code: i32) -> Rootfs {
    let fs = Rootfs::new(name);
    fs.unit(
        "kata-agent.service",
        include_str!("../fixtures/kata/kata-agent.service"),
    );
    fs.unit(
        "kata-containers.target",
        include_str!("../fixtures/kata/kata-containers.target"),
    );
    fs.unit(
        "unrelated.service",
        "[Service]\nExecStart=/bin/probe write /data/unrelated ran\n",
    );
    fs.write("etc/kata-agent-probe", &format!("{exit_code} 300\n"));
    fs
}

fn kata_cmdline() -> Vec<String> {
    let text = include_str!("../fixtures/kata/kernel-cmdline-qemu-x86.txt");
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("cmdline");
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn kata_agent_unit_unmodified_agent_exit_runs_exec_stop_and_powers_off() {
    let fs = kata_rootfs("kata-ok", 0);
    let args = kata_cmdline();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let end = fs.start(&args).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    // systemd.unit=kata-containers.target selects the agent only.
    assert!(
        fs.try_read("data/unrelated").is_none(),
        "unrelated.service must not start"
    );
    end.assert_log("kata-agent (probe): exiting with 0");
    // ExecStop's `systemctl --force poweroff` reached init.
    end.assert_log("shutdown: poweroff (Force)");
    assert!(!end.output.contains("unknown"), "{}", end.output);
    let report = fs.read("data/agent.report");
    if has_sys_resource() {
        assert!(report.contains("oom_score_adj=-997\n"), "{report}");
    } else {
        assert!(report.contains("oom_score_adj=0\n"), "{report}");
        end.assert_log("kata-agent.service: OOMScoreAdjust=-997 needs CAP_SYS_RESOURCE");
    }
    let want = nofile_ceiling(1_073_741_824);
    assert!(
        report.contains(&format!("nofile={want}/{want}\n")),
        "{report}"
    );
    if want < 1_073_741_824 {
        end.assert_log("kata-agent.service: LimitNOFILE above what this system allows");
    }
    assert!(report.contains("stdin=/dev/null\n"), "{report}");
    assert!(report.contains("hostname=minos-test\n"), "{report}");
    assert!(report.contains("sid_is_pid=true\n"), "{report}");
    assert!(
        report.contains("env.PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{report}"
    );
}

#[test]
fn kata_agent_failure_runs_failure_action() {
    let fs = kata_rootfs("kata-fail", 3);
    let end = fs
        .start(&["systemd.unit=kata-containers.target"])
        .wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("kata-agent.service: failed: exit status 3");
    // Never restarted.
    assert_eq!(
        end.output.matches("kata-agent (probe): started").count(),
        1,
        "{}",
        end.output
    );
}

#[test]
fn ten_thousand_orphans_are_reaped_and_status_reports_them() {
    let fs = Rootfs::new("orphans");
    fs.unit(
        "orphans.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe orphans 10000\n",
    );
    fs.unit(
        "sleeper.service",
        "[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    fs.unit(
        "check.service",
        "[Unit]\nAfter=orphans.service sleeper.service\n[Service]\nType=oneshot\n\
         ExecStart=/bin/probe sleep 1\nExecStart=/bin/probe zombies /data/zombies\n\
         ExecStart=/usr/bin/systemctl status\nStandardOutput=file:/data/status\n\
         ExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/zombies"), "0", "no zombie left");
    let status = fs.read("data/status");
    let reaped: u64 = status
        .lines()
        .find_map(|l| l.split("orphans reaped ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{status}"));
    assert!(reaped >= 10_000, "{status}");
    let sleeper = status
        .lines()
        .find(|l| l.starts_with("sleeper.service"))
        .expect(&status);
    let cols: Vec<&str> = sleeper.split_whitespace().collect();
    assert_eq!(cols[1], "running", "{status}");
    assert!(cols[2].parse::<u32>().is_ok(), "pid column: {status}");
    assert_eq!(cols[3], "0", "restarts: {status}");
    assert!(cols[4].ends_with('s'), "uptime: {status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("orphans.service") && l.contains("exited")),
        "{status}"
    );
}

#[test]
fn control_socket_refuses_non_root() {
    let fs = Rootfs::new("ctl-user");
    fs.unit(
        "asuser.service",
        "[Service]\nType=oneshot\nUser=probeuser\nExecStart=-/usr/bin/systemctl status\n\
         ExecStart=-/usr/bin/systemctl poweroff\nStandardOutput=append:/data/out\nStandardError=append:/data/err\n",
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=asuser.service\n[Service]\nType=oneshot\nExecStart=/sbin/reboot\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    // Only stop.service's reboot took effect.
    assert_eq!(end.signal(), Some(SIGHUP), "{}", end.output);
    // The socket is mode 0600 in a root-owned directory: connect(2) fails,
    // and the signal fallback of `poweroff` is refused by the kernel too.
    let out = fs.read("data/out");
    assert!(!out.contains("UNIT"), "{out}");
    let err = fs.read("data/err");
    assert!(
        err.contains("status: connect to /run/minos/control.sock: Permission denied"),
        "{err}"
    );
    assert!(
        err.contains("poweroff: connect to /run/minos/control.sock: Permission denied"),
        "{err}"
    );
    assert!(
        err.contains("signal PID 1: Operation not permitted"),
        "{err}"
    );
}

/// (signal, expected namespace end, log line)
fn signal_cases() -> Vec<(i32, i32, &'static str)> {
    let rt = libc::SIGRTMIN();
    vec![
        (libc::SIGTERM, SIGINT, "shutdown: poweroff now"),
        (libc::SIGPWR, SIGINT, "shutdown: poweroff now"),
        (libc::SIGUSR2, SIGINT, "shutdown: poweroff now"),
        (libc::SIGUSR1, SIGINT, "shutdown: halt now"),
        (libc::SIGINT, SIGHUP, "shutdown: reboot now"),
        (rt + 3, SIGINT, "shutdown: halt now"),
        (rt + 4, SIGINT, "shutdown: poweroff now"),
        (rt + 5, SIGHUP, "shutdown: reboot now"),
        (rt + 14, SIGINT, "shutdown: poweroff now"),
    ]
}

#[test]
fn each_signal_to_pid1_ends_the_namespace_as_documented() {
    let fs = Rootfs::new("signals");
    fs.unit(
        "sleeper.service",
        "[Service]\nExecStart=/bin/probe sleep 600\nExecStop=/bin/probe append /data/stops stop\n",
    );
    for (i, (sig, end_sig, line)) in signal_cases().into_iter().enumerate() {
        let mut pid1 = fs.start(&[]);
        pid1.wait_for("timeline event=all_started", WAIT);
        pid1.signal(sig);
        let end = pid1.wait(WAIT);
        assert_eq!(end.signal(), Some(end_sig), "signal {sig}:\n{}", end.output);
        end.assert_log(line);
        let stops = fs.try_read("data/stops").unwrap_or_default();
        let expected_stops = signal_cases()
            .iter()
            .take(i + 1)
            .filter(|(s, ..)| *s != libc::SIGRTMIN() + 14)
            .count();
        assert_eq!(
            stamps(&stops).len(),
            expected_stops,
            "signal {sig}: ExecStop runs on orderly shutdown only"
        );
    }
}

#[test]
fn unit_ignoring_sigterm_is_killed_after_timeout_stop_sec() {
    let fs = Rootfs::new("stubborn");
    fs.unit(
        "stubborn.service",
        "[Service]\nExecStart=/bin/probe ignore-term\nTimeoutStopSec=1s\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("probe: ignoring SIGTERM", WAIT);
    let t = std::time::Instant::now();
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("stubborn.service: still running 1s after stop; sending SIGKILL");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

/// Issue 19: `TimeoutStopSec=infinity` on a unit that ignores SIGTERM
/// must not leave an orderly shutdown unbounded: `init.shutdown_timeout=`
/// bounds the whole phase, then what is left is killed.
#[test]
fn an_orderly_shutdown_is_bounded_even_with_timeout_stop_sec_infinity() {
    let fs = Rootfs::new("unbounded");
    fs.unit(
        "stubborn.service",
        "[Service]\nExecStart=/bin/probe ignore-term\nTimeoutStopSec=infinity\n",
    );
    let mut pid1 = fs.start(&["init.shutdown_timeout=2s"]);
    pid1.wait_for("probe: ignoring SIGTERM", WAIT);
    let t = std::time::Instant::now();
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    let took = t.elapsed();
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log(
        "shutdown: units not stopped within 2s (init.shutdown_timeout): stubborn.service; killing what is left",
    );
    // The bound, then SIGTERM to what is left (ignored) and SIGKILL after
    // init.kill_timeout (5 s).
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "{took:?}"
    );
}

#[test]
fn exec_settings_are_seen_by_the_child() {
    let fs = Rootfs::new("exec");
    fs.write("etc/probe.env", "# comment\nFROMFILE=yes\nQUOTED=\"a b\"\n");
    fs.unit(
        "report.service",
        "[Service]\nType=oneshot\nEnvironment=FOO=bar \"SPACED=x y\"\nEnvironmentFile=/etc/probe.env\n\
         EnvironmentFile=-/etc/missing.env\nLimitNOFILE=1073741824\nLimitCORE=infinity\nOOMScoreAdjust=500\n\
         User=probeuser\nGroup=probeuser\nUMask=0027\nWorkingDirectory=/data\n\
         AmbientCapabilities=CAP_SYS_TIME CAP_NET_BIND_SERVICE\n\
         CapabilityBoundingSet=CAP_SYS_TIME CAP_NET_BIND_SERVICE\nNoNewPrivileges=yes\n\
         ExecStart=/bin/probe report /data/report\n",
    );
    // `poweroff -f` does not contact init: sync and reboot(2) at once.
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=report.service\n[Service]\nType=oneshot\nExecStart=/sbin/poweroff -f\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert!(
        !end.output.contains("shutdown: poweroff"),
        "-f bypasses init's shutdown:\n{}",
        end.output
    );
    let r = fs.read("data/report");
    let get = |k: &str| {
        r.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k}: {r}"))
            .to_string()
    };
    assert_eq!(get("uid"), "1234");
    assert_eq!(get("gid"), "1234");
    assert!(
        get("groups").split_whitespace().any(|g| g == "2000"),
        "supplementary: {r}"
    );
    assert_eq!(get("env.FOO"), "bar");
    assert_eq!(get("env.SPACED"), "x y");
    assert_eq!(get("env.FROMFILE"), "yes");
    assert_eq!(get("env.QUOTED"), "a b");
    assert_eq!(get("env.HOME"), "/data");
    assert_eq!(get("env.USER"), "probeuser");
    assert_eq!(get("oom_score_adj"), "500");
    assert_eq!(get("umask"), "0027");
    assert_eq!(get("cwd"), "/data");
    let caps = 1u64 << 25 | 1u64 << 10;
    assert_eq!(
        u64::from_str_radix(&get("cap_amb"), 16).unwrap(),
        caps,
        "{r}"
    );
    assert_eq!(
        u64::from_str_radix(&get("cap_eff"), 16).unwrap(),
        caps,
        "{r}"
    );
    assert_eq!(
        u64::from_str_radix(&get("cap_bnd"), 16).unwrap(),
        caps,
        "{r}"
    );
    assert_eq!(get("no_new_privs"), "1");
    let want = nofile_ceiling(1_073_741_824);
    assert_eq!(get("nofile"), format!("{want}/{want}"));
}

#[test]
fn malformed_units_are_reported_and_the_others_still_start() {
    let fs = Rootfs::new("malformed");
    fs.unit("garbage.service", "this is not a unit file\n\u{1}\u{2}\n");
    fs.unit("noexec.service", "[Unit]\nDescription=no ExecStart\n");
    std::fs::create_dir_all(fs.root.join("etc/minos/units/dir.service")).unwrap();
    fs.write("etc/minos/units/binary.service", "");
    std::fs::write(
        fs.root.join("etc/minos/units/binary.service"),
        [0xffu8, 0xfe, 0x00, 0x80],
    )
    .unwrap();
    fs.unit(
        "unknown.service",
        "[Service]\nFrobnicate=1\nExecStart=/bin/probe write /data/unknown ran\n",
    );
    fs.unit(
        "good.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe write /data/good ran\n",
    );
    fs.unit("stop.service", "[Unit]\nAfter=good.service unknown.service\n[Service]\nType=oneshot\nExecStart=/bin/probe sleep 0.3\nExecStart=/sbin/poweroff\n");
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/good"), "ran");
    assert_eq!(fs.read("data/unknown"), "ran");
    end.assert_log("/etc/minos/units/garbage.service:1");
    end.assert_log("/etc/minos/units/noexec.service");
    end.assert_log("/etc/minos/units/dir.service");
    end.assert_log("/etc/minos/units/binary.service");
    end.assert_log("/etc/minos/units/unknown.service:2: Frobnicate");
    for bad in ["garbage", "noexec", "dir", "binary"] {
        end.assert_log(&format!("/etc/minos/units/{bad}.service: not loaded"));
    }
}

#[test]
fn odd_argv_words_and_huge_or_fifo_files_neither_stall_nor_crash_init() {
    use std::os::unix::ffi::OsStringExt;
    let fs = Rootfs::new("odd-input");
    let units = fs.root.join("etc/minos/units");
    // A FIFO named like a target: opened for reading, it would block PID 1
    // until a writer came.
    let fifo =
        std::ffi::CString::new(units.join("stall.target").into_os_string().into_vec()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // A target file of 100 MB (sparse): above the unit-file size limit.
    let big = std::fs::File::create(units.join("big.target")).unwrap();
    big.set_len(100_000_000).unwrap();
    // /etc/passwd a FIFO: a unit with User= fails, init does not wait.
    let passwd = fs.root.join("etc/passwd");
    std::fs::remove_file(&passwd).unwrap();
    let pw = std::ffi::CString::new(passwd.into_os_string().into_vec()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(pw.as_ptr(), 0o644) }, 0);
    fs.unit(
        "someone.service",
        "[Service]\nType=oneshot\nUser=someone\nExecStart=/bin/probe write /data/someone ran\n",
    );
    // An EnvironmentFile= of 100 MB (sparse): the unit fails, naming it.
    let env = std::fs::File::create(fs.root.join("data/big.env")).unwrap();
    env.set_len(100_000_000).unwrap();
    fs.unit(
        "bigenv.service",
        "[Service]\nType=oneshot\nEnvironmentFile=/data/big.env\nExecStart=/bin/probe write /data/bigenv ran\n",
    );
    // Both targets pulled in, so that init reads them.
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=bigenv.service\nWants=stall.target big.target\n[Service]\nType=oneshot\nExecStart=/bin/probe write /data/ran yes\nExecStart=/sbin/poweroff\n",
    );
    // A word of init's arguments that is not UTF-8 (std::env::args panics
    // on it).
    let odd = std::ffi::OsString::from_vec(vec![b'x', 0xff, 0xfe]);
    let end = fs.start_os(&[odd]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/ran"), "yes");
    end.assert_log("\"x\u{fffd}\u{fffd}\" is not valid UTF-8");
    end.assert_log("stall.target: not a regular file");
    end.assert_log("big.target: larger than 1 MiB");
    end.assert_log("read environment file /data/big.env: larger than 1 MiB");
    assert!(fs.try_read("data/bigenv").is_none());
    end.assert_log("user \"someone\" not found in /etc/passwd");
    assert!(fs.try_read("data/someone").is_none());
}

/// Issue 19: init out of file descriptors at shutdown still unmounts.
/// The test lowers init's RLIMIT_NOFILE to its lowest free descriptor
/// number, so that no descriptor can be opened but the one init keeps
/// free for shutdown. Before, init could not start its shutdown child nor
/// read mountinfo, and skipped unmounting altogether.
#[test]
fn out_of_descriptors_shutdown_still_unmounts_and_the_data_is_intact() {
    use rustix::process::{getrlimit, prlimit, Pid, Resource, Rlimit};
    let fs = Rootfs::new("no-fds");
    let image = fs.top.join("data.ext4");
    minos_tests::make_ext4(&image, "16M");
    fs.unit(
        "writer.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/probe write /data/written hello\n",
    );
    fs.unit(
        "sleeper.service",
        "[Unit]\nAfter=writer.service\n[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    let mut pid1 = fs.start_with_data_image(&image, &[]);
    pid1.wait_for("timeline event=all_started", WAIT);
    let pid = pid1.host_pid();
    let fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !fds.contains(n)).unwrap();
    let target = Pid::from_raw(pid).unwrap();
    let max = getrlimit(Resource::Nofile).maximum;
    prlimit(
        Some(target),
        Resource::Nofile,
        Rlimit {
            current: Some(lowest_free as u64),
            maximum: max,
        },
    )
    .unwrap();
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("unmounted /data");
    minos_tests::assert_ext4_clean(&image);
    assert_eq!(minos_tests::ext4_cat(&image, "/written"), "hello");
}

#[test]
fn file_written_by_a_unit_before_poweroff_is_intact_on_disk() {
    let fs = Rootfs::new("data-disk");
    let image = fs.top.join("data.ext4");
    minos_tests::make_ext4(&image, "16M");
    let payload: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    fs.write("etc/payload", &payload);
    fs.unit(
        "writer.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe write /data/file-before-poweroff hello\n\
         ExecStart=/bin/probe copy /etc/payload /data/big\nSuccessAction=poweroff\n",
    );
    let end = fs.start_with_data_image(&image, &[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("unmounted /data");
    minos_tests::assert_ext4_clean(&image);
    assert_eq!(
        minos_tests::ext4_cat(&image, "/file-before-poweroff"),
        "hello"
    );
    let big = minos_tests::ext4_cat(&image, "/big");
    assert!(big == payload, "/big differs ({} bytes)", big.len());
}

#[test]
fn start_failures_name_the_step_and_the_others_still_start() {
    // init starts processes with clone(CLONE_VM | CLONE_VFORK): a failure
    // between clone and exec is reported by the child in shared memory and
    // logged by init with the step that failed.
    let fs = Rootfs::new("startfail");
    fs.unit(
        "missing.service",
        "[Service]\nType=oneshot\nExecStart=/bin/no-such-program\n",
    );
    fs.unit(
        "nodir.service",
        "[Service]\nType=oneshot\nWorkingDirectory=/no/such/dir\nExecStart=/bin/probe write /data/nodir ran\n",
    );
    fs.unit(
        "notinpath.service",
        "[Service]\nType=oneshot\nExecStart=no-such-name\n",
    );
    // A bare name is found in PATH, as execvp would.
    fs.unit(
        "bare.service",
        "[Service]\nType=oneshot\nExecStart=probe write /data/bare ran\n",
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=missing.service nodir.service notinpath.service bare.service\n\
         [Service]\nType=oneshot\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/bare"), "ran");
    assert!(fs.try_read("data/nodir").is_none(), "{}", end.output);
    end.assert_log("missing.service: start /bin/no-such-program: exec: No such file or directory");
    end.assert_log(
        "nodir.service: start /bin/probe: change to the working directory: No such file or directory",
    );
    end.assert_log("notinpath.service: start no-such-name: not found in PATH");
    // No zombie is left by a failed start: the namespace ended cleanly.
    end.assert_log("shutdown: poweroff now");
}

#[test]
fn init_started_with_stdin_and_stdout_closed_keeps_its_own_descriptors_off_them() {
    // The kernel starts init with descriptors 0-2 closed when it cannot
    // open /dev/console. init fills them before opening anything, so no
    // descriptor of its own (signalfd, sockets) becomes a unit's stdio.
    let fs = Rootfs::new("closedstdio");
    fs.unit(
        "report.service",
        "[Service]\nType=oneshot\nStandardOutput=inherit\nExecStart=/bin/probe report /data/report\n",
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=report.service\n[Service]\nType=oneshot\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start_after("exec 0<&- 1>&-", &[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let report = fs.read("data/report");
    assert!(report.contains("\nstdin=/dev/null\n"), "{report}");
    // /dev is still empty here (init mounts the container's /dev later): the
    // fallback, "/", holds the place; never a descriptor of init's own.
    assert!(report.contains("\nstdout=/\n"), "{report}");
    end.assert_log("shutdown: poweroff now");
}

#[test]
fn notify_units_are_ready_on_ready_1_and_order_their_dependents() {
    let fs = Rootfs::new("notify");
    fs.unit(
        "slow.service",
        "[Service]\nType=notify\nExecStartPre=/bin/probe append /data/log pre\nExecStart=/bin/probe notify 500\n",
    );
    fs.unit(
        "after.service",
        "[Unit]\nAfter=slow.service\n[Service]\nType=oneshot\nExecStart=/bin/probe append /data/log after\n\
         ExecStart=/usr/bin/systemctl status\nStandardOutput=file:/data/status\n",
    );
    fs.unit(
        "silent.service",
        "[Service]\nType=notify\nTimeoutStartSec=300ms\nExecStart=/bin/probe sleep 600\n",
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=after.service silent.service\n[Service]\nType=oneshot\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let s = stamps(&fs.read("data/log"));
    assert!(
        at(&s, "after") >= at(&s, "pre") + 500_000,
        "after.service waits for READY=1: {s:?}"
    );
    let status = fs.read("data/status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("slow.service") && l.contains("running")),
        "{status}"
    );
    end.assert_log("silent.service: no READY=1 within 300ms; stopping");
    end.assert_log("silent.service: failed: timeout");
}

#[test]
fn shutdown_stops_units_in_reverse_dependency_order() {
    let fs = Rootfs::new("reverse");
    for (name, after) in [
        ("first", ""),
        ("second", "first.service"),
        ("third", "second.service"),
    ] {
        fs.unit(
            &format!("{name}.service"),
            &format!(
                "[Unit]\nAfter={after}\n[Service]\nExecStart=/bin/probe sleep 600\n\
                 ExecStop=/bin/probe append /data/stops {name}\nExecStop=/bin/probe sleep 0.2\n"
            ),
        );
    }
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("timeline event=all_started", WAIT);
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let s = stamps(&fs.read("data/stops"));
    let order: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(order, ["third", "second", "first"]);
    assert!(
        at(&s, "second") >= at(&s, "third") + 200_000,
        "second waits for third: {s:?}"
    );
}

#[test]
fn container_mode_dev_is_a_fresh_tmpfs_with_the_standard_nodes() {
    let fs = Rootfs::new("devnodes");
    fs.unit(
        "ls.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe ls /dev /data/dev\n\
         ExecStart=/bin/probe copy /proc/self/mountinfo /data/mountinfo\nSuccessAction=poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let dev = fs.read("data/dev");
    for node in [
        "null char 1:3",
        "zero char 1:5",
        "full char 1:7",
        "random char 1:8",
        "urandom char 1:9",
        "tty char 5:0",
        "ptmx link pts/ptmx",
        "fd link /proc/self/fd",
        "stdin link /proc/self/fd/0",
        "pts dir",
        "shm dir",
    ] {
        assert!(dev.lines().any(|l| l == node), "{node}: {dev}");
    }
    assert!(
        !dev.contains("kmsg") && !dev.contains("loop") && !dev.contains("vda"),
        "not the host's devtmpfs: {dev}"
    );
    let mounts = fs.read("data/mountinfo");
    for (point, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "tmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/tmp", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            mounts
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(point) && l.contains(&format!(" - {fstype} "))),
            "{point} ({fstype}) not mounted:\n{mounts}"
        );
    }
    let tmp = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/tmp"))
        .unwrap();
    // tmpfs shows mode= only when it differs from its default, 1777.
    assert!(tmp.contains("mode=1777") || !tmp.contains("mode="), "{tmp}");
}

/// Without /sys/fs/cgroup, in the host's cgroup namespace, init mounts
/// cgroup2 in a cgroup namespace of its own: mounted in the host's, its
/// options would apply to the host's whole hierarchy.
#[test]
fn container_mode_mounts_cgroups_in_a_cgroup_namespace_of_its_own() {
    let fs = Rootfs::new("cgroupns");
    fs.unit(
        "ns.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe readlink /proc/self/ns/cgroup /data/cgroupns\n\
         ExecStart=/bin/probe copy /proc/self/mountinfo /data/mountinfo\nSuccessAction=poweroff\n",
    );
    let end = fs.start_in_host_cgroup_namespace(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let host = std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    let unit = fs.read("data/cgroupns");
    assert!(unit.starts_with("cgroup:["), "{unit}");
    assert_ne!(
        unit,
        host.to_string_lossy(),
        "the unit is in the host's cgroup namespace"
    );
    let mounts = fs.read("data/mountinfo");
    assert!(
        mounts
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/sys/fs/cgroup")),
        "/sys/fs/cgroup not mounted:\n{mounts}"
    );
}

#[test]
fn a_hanging_exec_stop_times_out_and_the_failure_action_runs() {
    let fs = Rootfs::new("stop-hang");
    fs.unit(
        "agent.service",
        "[Service]\nExecStart=/bin/probe exit 0 200\nExecStop=/bin/probe sleep 600\nTimeoutStopSec=1s\n\
         FailureAction=poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("agent.service: failed: timeout");
    assert!(end.elapsed < Duration::from_secs(20), "{:?}", end.elapsed);
}

#[test]
fn an_ordering_cycle_neither_blocks_boot_nor_shutdown() {
    let fs = Rootfs::new("cycle");
    fs.unit(
        "a.service",
        "[Unit]\nAfter=b.service\n[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    fs.unit(
        "b.service",
        "[Unit]\nAfter=a.service\n[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("timeline event=all_started", WAIT);
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("ordering cycle among a.service, b.service; starting them anyway");
    end.assert_log("shutdown: ordering cycle among a.service, b.service; stopping them together");
}

#[test]
fn non_root_notify_units_remain_after_exit_and_dependency_failures() {
    let fs = Rootfs::new("misc");
    // A Type=notify unit running as another user can reach the socket.
    fs.unit(
        "user-notify.service",
        "[Service]\nType=notify\nUser=probeuser\nTimeoutStartSec=5s\nExecStart=/bin/probe notify 0\n",
    );
    // RemainAfterExit=: ExecStop= runs at shutdown.
    fs.unit(
        "setup.service",
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/probe append /data/log setup\n\
         ExecStop=/bin/probe append /data/log teardown\n",
    );
    // A failed requirement: not started, not restarted, no FailureAction=.
    fs.unit(
        "broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe exit 1\n",
    );
    fs.unit(
        "needs-broken.service",
        "[Unit]\nRequires=broken.service\nAfter=broken.service\nFailureAction=reboot\n\
         [Service]\nRestart=always\nRestartSec=100ms\nExecStart=/bin/probe append /data/log needs-broken\n",
    );
    // Unset OOMScoreAdjust=: 0, whatever init's own value; infinity: the ceiling.
    fs.unit(
        "report.service",
        "[Service]\nType=oneshot\nLimitNOFILE=infinity\nExecStart=/bin/probe report /data/report\n",
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=user-notify.service setup.service needs-broken.service report.service\n\
         [Service]\nType=oneshot\nExecStart=/usr/bin/systemctl status\nStandardOutput=file:/data/status\n\
         ExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(
        end.signal(),
        Some(SIGINT),
        "poweroff, not FailureAction=reboot:\n{}",
        end.output
    );
    let status = fs.read("data/status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("user-notify.service") && l.contains("running")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("setup.service") && l.contains("active-exited")),
        "{status}"
    );
    let log = fs.read("data/log");
    let names: Vec<String> = stamps(&log).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["setup", "teardown"],
        "needs-broken never ran: {log}"
    );
    end.assert_log("needs-broken.service: not started: required unit broken.service failed");
    let report = fs.read("data/report");
    assert!(report.contains("oom_score_adj=0\n"), "{report}");
    let want = nofile_ceiling(u64::MAX);
    assert!(
        report.contains(&format!("nofile={want}/{want}\n")),
        "{report}"
    );
}

/// Monotonic µs, the clock `probe append` stamps with.
fn monotonic_us() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1000
}

#[test]
fn control_clients_that_idle_or_trickle_do_not_stall_pid1() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let fs = Rootfs::new("ctl-stall");
    fs.unit(
        "flappy.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=always\nRestartSec=100ms\n\
         ExecStart=/bin/probe append /data/runs run\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("timeline event=all_started", WAIT);
    let sock = std::path::PathBuf::from(format!(
        "/proc/{}/root/run/minos/control.sock",
        pid1.host_pid()
    ));
    let window = Duration::from_secs(3);
    let runs_between = |from: u64, to: u64| {
        stamps(&fs.read("data/runs"))
            .iter()
            .filter(|(_, t)| (from..to).contains(t))
            .count()
    };
    let a0 = monotonic_us();
    std::thread::sleep(window);
    let unattacked = runs_between(a0, monotonic_us());

    // Every slot taken by clients that never write, renewed as init cuts
    // them off, one more that sends a byte every 0.9 s, and a stream of
    // connections beyond the limit.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut idle: Vec<(UnixStream, std::time::Instant)> = Vec::new();
            let mut trickle: Option<(UnixStream, std::time::Instant)> = None;
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                idle.retain(|(_, t)| t.elapsed() < Duration::from_millis(1500));
                while idle.len() < 20 {
                    match UnixStream::connect(&sock) {
                        Ok(c) => idle.push((c, std::time::Instant::now())),
                        Err(_) => {
                            refused += 1;
                            break;
                        }
                    }
                }
                let due = trickle
                    .as_ref()
                    .is_none_or(|(_, t)| t.elapsed() >= Duration::from_millis(900));
                if due {
                    let alive = trickle
                        .as_mut()
                        .is_some_and(|(c, _)| c.write_all(b"s").is_ok());
                    if !alive {
                        trickle = UnixStream::connect(&sock)
                            .ok()
                            .map(|c| (c, std::time::Instant::now()));
                    } else if let Some((_, t)) = trickle.as_mut() {
                        *t = std::time::Instant::now();
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let b0 = monotonic_us();
    std::thread::sleep(window);
    let attacked = runs_between(b0, monotonic_us());

    // SIGTERM while attacked: handled at once.
    let t = std::time::Instant::now();
    pid1.signal(libc::SIGTERM);
    while !pid1.output().contains("signal 15: poweroff") && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(2));
    }
    let handled = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = attacker.join();
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert!(unattacked >= 10, "{unattacked} runs in {window:?}");
    assert!(
        attacked * 10 >= unattacked * 9,
        "restarts: {attacked} attacked against {unattacked} unattacked in {window:?}\n{}",
        end.output
    );
    assert!(
        handled < Duration::from_millis(100),
        "SIGTERM handled after {handled:?}"
    );
    end.assert_log("control socket: ");
}

/// Sends one control request to init through its namespace's root; the
/// answer, within `within`.
fn control_request(pid1: &minos_tests::Pid1, line: &str, within: Duration) -> String {
    use std::io::{Read, Write};
    let path = format!("/proc/{}/root/run/minos/control.sock", pid1.host_pid());
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn a_console_nobody_drains_neither_blocks_nor_silences_pid1() {
    use std::io::Read;
    let fs = Rootfs::new("undrained");
    // One unit fills the console pipe; another keeps init logging (a
    // restart every 100 ms).
    fs.unit("flood.service", "[Service]\nExecStart=/bin/probe flood\n");
    fs.unit(
        "flappy.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=always\nRestartSec=100ms\n\
         ExecStart=/bin/probe exit 3\n",
    );
    let (pid1, mut console) = fs.start_undrained(&[]);
    // The pipe (64 KiB) is full long before this.
    std::thread::sleep(Duration::from_secs(2));
    let t = std::time::Instant::now();
    let status = control_request(&pid1, "status", Duration::from_secs(5));
    let took = t.elapsed();
    let hp = pid1.host_pid();
    let wchan = std::fs::read_to_string(format!("/proc/{hp}/wchan")).unwrap_or_default();
    assert!(
        status.contains("flappy.service"),
        "{status:?} after {took:?}; init waits in {wchan:?}"
    );
    assert!(took < Duration::from_millis(500), "status took {took:?}");
    // Drained now: the lines init queued meanwhile come out, in order.
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        let mut buf = [0u8; 65536];
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match console.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]);
                    seen.extend(
                        text.lines()
                            .filter(|l| l.starts_with("minos-init: "))
                            .map(|l| format!("{l}\n")),
                    );
                }
            }
        }
        seen
    });
    std::thread::sleep(Duration::from_secs(1));
    let t = std::time::Instant::now();
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    let stopped = t.elapsed();
    assert_eq!(end.signal(), Some(SIGINT));
    assert!(
        stopped < Duration::from_secs(10),
        "SIGTERM to the end: {stopped:?}"
    );
    let log = reader.join().unwrap();
    let restarts: Vec<u32> = log
        .lines()
        .filter_map(|l| l.split("(restart ").nth(1)?.strip_suffix(')')?.parse().ok())
        .collect();
    assert!(restarts.len() >= 20, "{log}");
    assert!(
        restarts.windows(2).all(|w| w[1] == w[0] + 1),
        "queued lines lost or out of order: {restarts:?}"
    );
    assert!(log.contains("signal 15: poweroff"), "{log}");
}
