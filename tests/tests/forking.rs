//! `Type=forking` with init as PID 1: the daemon a starting process leaves
//! behind is supervised through its `PIDFile=` (restarted when it dies,
//! stopped at shutdown); without `PIDFile=`, or with one that names no
//! process, the log says why (docs/units.md, "Type=forking").

use std::time::{Duration, Instant};

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn the_daemon_named_by_its_pid_file_is_supervised() {
    let fs = Rootfs::new("forking");
    fs.unit(
        "daemon.service",
        "[Service]\nType=forking\nPIDFile=/data/daemon.pid\n\
         ExecStart=/bin/probe daemonize /data/daemon.pid /data/starts\n\
         Restart=on-failure\nRestartSec=100ms\n",
    );
    // Kills the daemon once it is up: init sees its main process die.
    fs.unit(
        "killer.service",
        "[Unit]\nAfter=daemon.service\n\
         [Service]\nType=oneshot\nExecStart=/bin/probe kill-pidfile /data/daemon.pid 9\n",
    );
    fs.unit(
        "nopid.service",
        "[Service]\nType=forking\nExecStart=/bin/probe daemonize /run/nopid.pid /data/nopid\n",
    );
    fs.unit(
        "wrongpid.service",
        "[Service]\nType=forking\nPIDFile=/run/missing.pid\nTimeoutStartSec=1s\n\
         ExecStart=/bin/probe daemonize /run/other.pid /data/wrongpid\n",
    );
    let mut pid1 = fs.start(&["init.log=debug"]);
    let started = Instant::now();
    while fs
        .try_read("data/starts")
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(
            started.elapsed() < WAIT,
            "the daemon was not restarted after SIGKILL:\n{}",
            pid1.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A missing PIDFile= is waited for until TimeoutStartSec= (1 s here).
    pid1.wait_for("wrongpid.service: PIDFile=/run/missing.pid", WAIT);
    // The restarted daemon is the unit's main process again.
    let second: u32 = fs.read("data/daemon.pid").trim().parse().unwrap();
    pid1.signal(libc::SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    end.assert_log("daemon.service: main process ended: signal 9");
    end.assert_log(&format!(
        "daemon.service: main process {second} (from /data/daemon.pid)"
    ));
    end.assert_log("nopid.service: Type=forking without PIDFile=: its daemon is not supervised");
    end.assert_log("wrongpid.service: PIDFile=/run/missing.pid: No such file or directory");
    assert_eq!(fs.read("data/starts").lines().count(), 2, "{}", end.output);
}
