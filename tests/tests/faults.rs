//! Fault injection with init as PID 1 of new namespaces (container mode):
//! a crash-looping unit, a fork bomb held by `TasksMax=`, a full /run, and
//! unit files that are empty, 10 MB long or have a 100 KB line. Each test
//! asserts on the outcome: init's CPU use, the cgroup's counters, what the
//! units saw, and that the namespace still powers off when asked.
//! (10,000 orphans, a control socket refusing non-root users, signals and
//! malformed unit files are in pid1.rs.)

use std::path::Path;
use std::time::Duration;

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const WAIT: Duration = Duration::from_secs(60);

/// CPU time (user + system) of process `pid`, from /proc/PID/stat.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf takes an integer and returns one.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

fn lines(fs: &Rootfs, rel: &str) -> usize {
    fs.try_read(rel).map_or(0, |t| t.lines().count())
}

#[test]
fn a_crash_loop_keeps_init_cpu_bounded_and_the_start_limit_fires() {
    let fs = Rootfs::new("crashloop");
    // Rate limiting off: restarts every RestartSec= for as long as init runs.
    fs.unit(
        "loop.service",
        "[Unit]\nStartLimitIntervalSec=0\n[Service]\nRestart=always\nRestartSec=100ms\n\
         ExecStart=/bin/probe append /data/loop run\n",
    );
    // systemd's defaults: 5 starts in 10 s, then the start limit.
    fs.unit(
        "burst.service",
        "[Unit]\nFailureAction=none\n[Service]\nRestart=always\nRestartSec=0\n\
         ExecStart=/bin/probe append /data/burst run\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("burst.service: start limit hit", Duration::from_secs(20));
    let init = pid1.host_pid();
    let (cpu0, runs0) = (cpu_time(init), lines(&fs, "data/loop"));
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let (cpu1, runs1) = (cpu_time(init), lines(&fs, "data/loop"));
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);

    let restarts = runs1 - runs0;
    // 30 at most; at least 10 even on a loaded machine (≤ 200 ms a cycle).
    assert!(
        (10..=31).contains(&restarts),
        "RestartSec=100ms over {window:?}: {restarts} starts\n{}",
        end.output
    );
    let used = cpu1 - cpu0;
    assert!(
        used <= window / 10,
        "init used {used:?} of CPU in {window:?} of a crash loop ({restarts} restarts)"
    );
    assert_eq!(lines(&fs, "data/burst"), 5, "StartLimitBurst=5");
    assert_eq!(
        end.output
            .matches("burst.service: start limit hit (5 starts within 10s)")
            .count(),
        1,
        "{}",
        end.output
    );
}

/// The pids hierarchy this machine gives the namespace: the tests run init
/// with systemd's v1 layout when the host's cgroup controllers are on v1
/// (as on this project's machines); on a cgroup2 host the namespace's root
/// cgroup holds the test runner itself, so cgroup2 cannot delegate pids to
/// it (the VM tests cover cgroup2 with init at the real root).
fn pids_v1_cgroup() -> String {
    assert!(
        !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
            && Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists(),
        "this test needs the cgroup v1 pids hierarchy at /sys/fs/cgroup/pids (the machine has a \
         cgroup2-only layout; the VM test `faults` covers TasksMax= on cgroup2)"
    );
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    own.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
            ctrl.split(',')
                .any(|c| c == "pids")
                .then(|| path.to_owned())
        })
        .expect("a pids line in /proc/self/cgroup")
}

/// Runs init with the v1 layout until it ends, then removes the unit's
/// cgroup from the host's pids hierarchy (and the slice, if the test made
/// it): inside the cgroup namespace that hierarchy is a view of the host's.
fn start_in_v1(fs: &Rootfs, own: &str, unit: &str) -> minos_tests::Ended {
    let host_cg = format!(
        "/sys/fs/cgroup/pids{}/system.slice",
        own.trim_end_matches('/')
    );
    let slice_existed = Path::new(&host_cg).exists();
    let end = fs.start(&["systemd.unified_cgroup_hierarchy=0"]).wait(WAIT);
    // Emptied by the namespace's end; the kernel may take a moment.
    for _ in 0..50 {
        if std::fs::remove_dir(format!("{host_cg}/{unit}")).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !slice_existed {
        let _ = std::fs::remove_dir(&host_cg);
    }
    end
}

#[test]
fn a_fork_bomb_is_held_by_tasks_max_and_init_still_answers() {
    let own = pids_v1_cgroup();
    let fs = Rootfs::new("forkbomb");
    // One name per test run: the v1 hierarchy inside the cgroup namespace is
    // a view of the host's.
    let unit = format!("bomb-{}.service", std::process::id());
    let cg = format!("/sys/fs/cgroup/pids/system.slice/{unit}");
    // At most 4 + 16 + … + 4^5 = 1364 processes if the limit did not hold.
    fs.unit(
        &unit,
        "[Service]\nTasksMax=40\nExecStart=/bin/probe forkbomb 5 4 /data/bomb\n",
    );
    fs.unit(
        "check.service",
        &format!(
            "[Unit]\nAfter={unit}\n[Service]\nType=oneshot\nStandardOutput=file:/data/status\n\
             ExecStart=/bin/probe sleep 2\n\
             ExecStart=/bin/probe copy {cg}/pids.current /data/pids.current\n\
             ExecStart=/bin/probe copy {cg}/pids.events /data/pids.events\n\
             ExecStart=/bin/probe copy {cg}/pids.max /data/pids.max\n\
             ExecStart=/usr/bin/systemctl status\nExecStart=/sbin/poweroff\n"
        ),
    );
    let end = start_in_v1(&fs, &own, &unit);

    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert!(
        !end.output.contains("TasksMax= not applied"),
        "{}",
        end.output
    );
    assert_eq!(fs.read("data/pids.max").trim(), "40");
    let current: u32 = fs.read("data/pids.current").trim().parse().unwrap();
    assert!(
        (30..=40).contains(&current),
        "the bomb fills its cgroup up to TasksMax=40: {current}"
    );
    let events = fs.read("data/pids.events");
    let refused: u64 = events
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("pids.events: {events:?}"));
    assert!(refused > 0, "pids.events: {events}");
    let bomb = fs.read("data/bomb");
    assert!(bomb.starts_with("started\n"), "{bomb}");
    assert!(
        bomb.contains("fork refused: Resource temporarily unavailable"),
        "{bomb}"
    );
    // init forked systemctl and ran the rest of check.service meanwhile.
    let status = fs.read("data/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&unit))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("running"), "{status}");
    assert!(
        end.elapsed < Duration::from_secs(20),
        "poweroff took {:?}:\n{}",
        end.elapsed,
        end.output
    );
}

#[test]
fn processes_left_in_a_tasks_max_cgroup_are_killed_when_the_unit_stops() {
    let own = pids_v1_cgroup();
    let fs = Rootfs::new("leftovers");
    let unit = format!("leaver-{}.service", std::process::id());
    // Both leave a process behind that left their session (setsid), so the
    // stop signal to the process group does not reach it; only the cgroup
    // of the TasksMax= unit knows it.
    fs.unit(
        &unit,
        "[Service]\nType=oneshot\nTasksMax=10\nExecStart=/bin/probe detach /data/with-cgroup\n",
    );
    fs.unit(
        "plain.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe detach /data/without-cgroup\n",
    );
    fs.unit(
        "check.service",
        &format!(
            "[Unit]\nAfter={unit} plain.service\n[Service]\nType=oneshot\n\
             ExecStart=/bin/probe sleep 0.5\n\
             ExecStart=/bin/probe alive /data/with-cgroup /data/with-cgroup.state\n\
             ExecStart=/bin/probe alive /data/without-cgroup /data/without-cgroup.state\n\
             ExecStart=/sbin/poweroff\n"
        ),
    );
    let end = start_in_v1(&fs, &own, &unit);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/with-cgroup.state"), "gone", "{}", end.output);
    end.assert_log(&format!("{unit}: killed 1 process(es) left in its cgroup"));
    // Without a cgroup init cannot find it: it lives until shutdown kills
    // everything (systemd would kill it with the unit; docs/units.md).
    assert_eq!(fs.read("data/without-cgroup.state"), "alive");
}

#[test]
fn a_full_run_leaves_init_serving_and_powering_off() {
    let fs = Rootfs::new("fullrun");
    fs.unit(
        "filler.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe fill /run/fill\n",
    );
    // Started after /run is full: a runtime directory and a READY=1 on the
    // notify socket in /run/minos.
    fs.unit(
        "late.service",
        "[Unit]\nAfter=filler.service\n[Service]\nType=notify\nRuntimeDirectory=late\n\
         ExecStart=/bin/probe notify 0\n",
    );
    fs.unit(
        "check.service",
        "[Unit]\nAfter=late.service\n[Service]\nType=oneshot\nStandardOutput=file:/data/status\n\
         ExecStart=/bin/probe sleep 0.5\nExecStart=/usr/bin/systemctl status\n\
         ExecStart=/sbin/poweroff\n",
    );
    // 256 KiB: init's own files fit, the filler takes the rest.
    let end = fs
        .start_after(
            "mount -t tmpfs -o size=256k,mode=0755 tmpfs \"$ROOT/run\"",
            &[],
        )
        .wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("fill: /run/fill: ");
    end.assert_log("bytes, then ENOSPC");
    let status = fs.read("data/status");
    for unit in ["filler.service", "late.service"] {
        assert!(
            status.lines().any(|l| l.starts_with(unit)),
            "{unit}: {status}"
        );
    }
    let late = status
        .lines()
        .find(|l| l.starts_with("late.service"))
        .unwrap();
    assert!(late.contains("running"), "{status}");
    assert!(
        !end.output.to_lowercase().contains("panic"),
        "{}",
        end.output
    );
}

#[test]
fn empty_huge_and_long_line_unit_files_are_reported_and_the_others_start() {
    let fs = Rootfs::new("unitsizes");
    fs.unit("empty.service", "");
    // 10 MB of valid lines: refused by size before it is parsed.
    let mut huge = String::from("[Service]\nExecStart=/bin/probe write /data/huge ran\n");
    while huge.len() < 10_000_000 {
        huge.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    fs.unit("huge.service", &huge);
    // A 100 KB line (systemd takes lines up to 1 MiB): the unit runs with it.
    let long = "x".repeat(100_000);
    fs.unit(
        "longline.service",
        &format!(
            "[Service]\nType=oneshot\nEnvironment=PAD={long}\n\
             ExecStart=/bin/probe report /data/longline\n"
        ),
    );
    // A 100 KB line that is not an assignment: malformed, reported.
    fs.unit(
        "longgarbage.service",
        &format!("[Service]\nExecStart=/bin/probe write /data/longgarbage ran\n{long}\n"),
    );
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=longline.service\n[Service]\nType=oneshot\n\
         ExecStart=/bin/probe sleep 0.3\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("/etc/minos/units/empty.service: missing ExecStart");
    end.assert_log("/etc/minos/units/huge.service: larger than 1 MiB");
    end.assert_log("/etc/minos/units/longgarbage.service:3:");
    for bad in ["empty", "huge", "longgarbage"] {
        end.assert_log(&format!("/etc/minos/units/{bad}.service: not loaded"));
    }
    assert!(fs.try_read("data/huge").is_none());
    assert!(fs.try_read("data/longgarbage").is_none());
    let report = fs.read("data/longline");
    assert!(
        report.contains(&format!("env.PAD={long}\n")),
        "the 100 KB value reached the process"
    );
    // The long line is not echoed whole into the log.
    assert!(!end.output.contains(&long), "a 100 KB line printed in full");
}
