//! `RuntimeDirectory=`, `RuntimeDirectoryMode=`, `RuntimeDirectoryPreserve=`:
//! init (as root, before the unit's first process) creates the directories
//! below /run for the unit's user, exports `$RUNTIME_DIRECTORY` and removes
//! them when the unit stops. /run is a tmpfs in the test's namespaces, so
//! what it holds is reported by units into /data.

use std::time::Duration;

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

/// `probeuser` in the harness's /etc/passwd and /etc/group.
const PROBEUSER: &str = "1234 1234";

fn lines(fs: &Rootfs, rel: &str) -> usize {
    fs.try_read(rel).map_or(0, |t| t.lines().count())
}

#[test]
fn runtime_directory_is_made_for_the_user_and_removed_when_the_unit_stops() {
    let fs = Rootfs::new("rtdir");
    fs.unit(
        "rt.service",
        "[Service]\nType=oneshot\nUser=probeuser\nRuntimeDirectory=foo/bar\nRuntimeDirectoryMode=0750\n\
         ExecStart=/bin/probe report /data/report\n\
         ExecStart=/bin/probe stat /run/foo/bar /data/during\n\
         ExecStart=/bin/probe stat /run/foo /data/during-parent\n\
         ExecStart=/bin/probe write ${RUNTIME_DIRECTORY}/file written\n\
         ExecStart=/bin/probe stat /run/foo/bar/file /data/during-file\n",
    );
    // RuntimeDirectoryPreserve=yes: left in place after the unit stops.
    fs.unit(
        "kept.service",
        "[Service]\nType=oneshot\nRuntimeDirectory=kept\nRuntimeDirectoryPreserve=yes\n\
         ExecStart=/bin/probe write /run/kept/f x\n",
    );
    // A file where a parent must go: a start failure, not a crash.
    fs.unit(
        "blocker.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe write /run/blocker x\n",
    );
    fs.unit(
        "blocked.service",
        "[Unit]\nAfter=blocker.service\n[Service]\nType=oneshot\nRuntimeDirectory=blocker/sub\n\
         ExecStart=/bin/probe write /data/blocked ran\n",
    );
    // A bad name is reported and ignored; the unit runs without it.
    fs.unit(
        "badname.service",
        "[Service]\nType=oneshot\nRuntimeDirectory=../etc/evil\n\
         ExecStart=/bin/probe report /data/badname-report\n",
    );
    fs.unit(
        "check.service",
        "[Unit]\nAfter=rt.service kept.service blocked.service badname.service\n\
         [Service]\nType=oneshot\n\
         ExecStart=/bin/probe stat /run/foo/bar /data/after\n\
         ExecStart=/bin/probe stat /run/foo /data/after-parent\n\
         ExecStart=/bin/probe stat /run/kept/f /data/kept\n\
         ExecStart=/bin/probe stat /etc/evil /data/evil\n\
         ExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    let report = fs.read("data/report");
    assert!(
        report.contains("\nenv.RUNTIME_DIRECTORY=/run/foo/bar\n"),
        "{report}"
    );
    assert!(report.contains("\nuid=1234\n"), "{report}");
    // While the unit runs: the user's, with RuntimeDirectoryMode=; the
    // parent init made for it is root's, 0755 (as systemd's mkdir_parents).
    assert_eq!(fs.read("data/during"), format!("dir {PROBEUSER} 0750\n"));
    assert_eq!(fs.read("data/during-parent"), "dir 0 0 0755\n");
    assert!(
        fs.read("data/during-file")
            .starts_with(&format!("file {PROBEUSER} ")),
        "the user can write in it (through ${{RUNTIME_DIRECTORY}})"
    );
    // After it stopped: the named directory is gone with its contents.
    assert_eq!(fs.read("data/after"), "missing\n");
    assert_eq!(fs.read("data/after-parent"), "dir 0 0 0755\n");
    assert!(fs.read("data/kept").starts_with("file 0 0 "), "kept");
    // The start failure names the unit, the path and the reason.
    end.assert_log(
        "blocked.service: create runtime directory /run/blocker: exists and is not a directory",
    );
    end.assert_log("blocked.service: failed: could not be started");
    assert!(fs.try_read("data/blocked").is_none());
    end.assert_log("/etc/minos/units/badname.service:3: RuntimeDirectory: \"../etc/evil\" has an empty, \".\" or \"..\" component, ignored");
    let report = fs.read("data/badname-report");
    assert!(!report.contains("RUNTIME_DIRECTORY"), "{report}");
    assert_eq!(fs.read("data/evil"), "missing\n");
    assert!(!end.output.contains("panicked"), "{}", end.output);
}

/// A oneshot that fails on its first run (after leaving a mark in its
/// runtime directory) and succeeds once it finds the mark there.
fn marking_unit(name: &str, extra: &str) -> String {
    format!(
        "[Unit]\n{extra}\n[Service]\nType=oneshot\nRestart=on-failure\nRestartSec=100ms\n\
         User=probeuser\nRuntimeDirectory={name}\n\
         ExecStart=-/bin/probe copy /run/{name}/mark /data/{name}-seen\n\
         ExecStart=/bin/probe append /run/{name}/mark run\n\
         ExecStart=/bin/probe append /data/{name}-runs run\n\
         ExecStart=/bin/probe copy /data/{name}-seen /data/{name}-done\n"
    )
}

#[test]
fn runtime_directory_preserve_restart_keeps_it_across_restarts_only() {
    let fs = Rootfs::new("rtdir-restart");
    fs.unit(
        "keep.service",
        &marking_unit("keep", "StartLimitBurst=5").replace(
            "RuntimeDirectory=keep\n",
            "RuntimeDirectory=keep\nRuntimeDirectoryPreserve=restart\n",
        ),
    );
    // The default (no): removed before each restart, so the mark is never
    // found; the start limit ends it.
    fs.unit(
        "nokeep.service",
        &marking_unit("nokeep", "StartLimitBurst=2"),
    );
    fs.unit(
        "check.service",
        "[Unit]\nAfter=keep.service nokeep.service\n[Service]\nType=oneshot\n\
         ExecStart=/bin/probe stat /run/keep /data/keep-after\n\
         ExecStart=/bin/probe stat /run/nokeep /data/nokeep-after\n\
         ExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    // keep: the second run found the first run's mark, then succeeded.
    assert_eq!(lines(&fs, "data/keep-runs"), 2, "{}", end.output);
    assert_eq!(lines(&fs, "data/keep-seen"), 1, "{}", end.output);
    assert!(fs.try_read("data/keep-done").is_some());
    end.assert_log("keep.service: finished");
    // Removed on the final stop.
    assert_eq!(fs.read("data/keep-after"), "missing\n");
    // nokeep: a fresh directory each time.
    assert_eq!(lines(&fs, "data/nokeep-runs"), 2, "{}", end.output);
    assert!(fs.try_read("data/nokeep-seen").is_none(), "{}", end.output);
    end.assert_log("nokeep.service: start limit hit");
    assert_eq!(fs.read("data/nokeep-after"), "missing\n");
}
