//! init as PID 1 reads units through systemd's search path: precedence,
//! drop-ins, aliases, masks, `.wants/` directories and `default.target`,
//! from the real paths of a root file system (docs/units.md, "Where units
//! come from").

use std::time::Duration;

use minos_tests::Rootfs;

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

fn link(fs: &Rootfs, at: &str, target: &str) {
    let path = fs.root.join(at);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

fn oneshot(writes: &str, text: &str) -> String {
    format!("[Service]\nType=oneshot\nExecStart=/bin/probe write /data/{writes} {text}\n")
}

/// A distribution's layout: the target and most units in
/// /usr/lib/systemd/system, the administrator's changes in
/// /etc/systemd/system, one unit in /lib/systemd/system.
fn distribution_tree(name: &str) -> Rootfs {
    let fs = Rootfs::new(name);
    let usr = |unit: &str, text: &str| fs.write(&format!("usr/lib/systemd/system/{unit}"), text);
    usr(
        "app.target",
        "[Unit]\nRequires=first.service basic.target first-conflicts.service\nWants=alias.service tmp.mount chronyd.service\n\
         Wants=echo@data-from\\x2dtemplate.service echo@.service\n",
    );
    usr("basic.target", "[Unit]\nRequires=sysinit.target\n");
    // Keys init accepts and does not act on: one warning names each once.
    usr("first-conflicts.service", "[Unit]\nConflicts=x.service\n[Service]\nType=oneshot\nExecStart=/bin/probe exit 0\nKillMode=mixed\n");
    usr("sysinit.target", "[Unit]\n");
    // Pulled in only by init's own early boot: never read (it would fail).
    usr("sysinit-only.service", "not a unit file");
    link(
        &fs,
        "usr/lib/systemd/system/sysinit.target.wants/sysinit-only.service",
        "../sysinit-only.service",
    );
    usr("first.service", &oneshot("first", "usr"));
    fs.write(
        "etc/systemd/system/first.service.d/override.conf",
        "[Service]\nExecStart=\nExecStart=/bin/probe write /data/first dropin\n",
    );
    usr("real.service", &oneshot("alias", "real"));
    link(
        &fs,
        "etc/systemd/system/alias.service",
        "/usr/lib/systemd/system/real.service",
    );
    fs.write("lib/systemd/system/third.service", &oneshot("third", "lib"));
    // A template: the instance's file is the template's, with %i and %f.
    usr(
        "echo@.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe write %f %i\n",
    );
    // Debian's chrony and its alias, as Kata's target asks for it.
    usr("chrony.service", &oneshot("chrony", "ran"));
    link(
        &fs,
        "etc/systemd/system/chronyd.service",
        "/usr/lib/systemd/system/chrony.service",
    );
    link(
        &fs,
        "etc/systemd/system/app.target.wants/third.service",
        "/lib/systemd/system/third.service",
    );
    usr("masked.service", &oneshot("masked", "ran"));
    link(
        &fs,
        "usr/lib/systemd/system/app.target.wants/masked.service",
        "../masked.service",
    );
    link(&fs, "etc/systemd/system/masked.service", "/dev/null");
    usr("unrelated.service", &oneshot("unrelated", "ran"));
    usr("garbage.service", "not a unit file");
    usr(
        "last.service",
        "[Unit]\nAfter=first.service real.service third.service chronyd.service\n\
         After=echo@data-from\\x2dtemplate.service\n\
         [Service]\nType=oneshot\nExecStart=/sbin/poweroff\n",
    );
    link(
        &fs,
        "usr/lib/systemd/system/app.target.wants/last.service",
        "../last.service",
    );
    fs
}

#[test]
fn a_target_in_systemds_directories_starts_its_closure_and_nothing_else() {
    let fs = distribution_tree("unit-path");
    let end = fs.start(&["systemd.unit=app.target"]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/first"), "dropin", "the drop-in's ExecStart=");
    assert_eq!(
        fs.read("data/alias"),
        "real",
        "alias.service is real.service"
    );
    assert_eq!(
        fs.read("data/third"),
        "lib",
        "a .wants/ link in /etc, the unit in /lib"
    );
    assert!(
        fs.try_read("data/masked").is_none(),
        "masked by a /dev/null link"
    );
    assert!(fs.try_read("data/unrelated").is_none(), "not pulled in");
    assert_eq!(
        fs.read("data/chrony"),
        "ran",
        "chronyd.service is chrony.service"
    );
    end.assert_log(
        "masked.service: masked (/etc/systemd/system/masked.service links to /dev/null)",
    );
    end.assert_log("not loaded (unit types init does not run): tmp.mount");
    end.assert_log(
        "keys init accepts and does not act on (docs/units.md; each named once, where first set): \
         Conflicts= (/usr/lib/systemd/system/first-conflicts.service:2), \
         KillMode= (/usr/lib/systemd/system/first-conflicts.service:6)",
    );
    // Files outside the closure, and sysinit.target's, were never read.
    assert!(!end.output.contains("garbage.service"), "{}", end.output);
    assert!(
        !end.output.contains("sysinit-only.service"),
        "{}",
        end.output
    );
}

#[test]
fn default_target_is_used_without_a_unit_on_the_command_line() {
    let fs = distribution_tree("unit-default");
    link(
        &fs,
        "etc/systemd/system/default.target",
        "/usr/lib/systemd/system/app.target",
    );
    // minos's own directory wins over systemd's.
    fs.unit("third.service", &oneshot("third", "own"));
    // The link `cargo xtask image --base` adds: timesync answers for
    // chronyd.service, and the distribution's chrony is not started.
    fs.unit("timesync.service", &oneshot("timesync", "ran"));
    link(&fs, "etc/minos/units/chronyd.service", "timesync.service");
    let end = fs.start(&[]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert_eq!(fs.read("data/first"), "dropin");
    assert_eq!(fs.read("data/third"), "own");
    assert_eq!(fs.read("data/timesync"), "ran");
    assert!(fs.try_read("data/chrony").is_none(), "{}", end.output);
}

#[test]
fn conditions_on_the_command_line_virtualisation_and_mount_points() {
    let fs = Rootfs::new("unit-conditions");
    let unit = |name: &str, condition: &str| {
        fs.unit(
            &format!("{name}.service"),
            &format!(
                "[Unit]\n{condition}\n[Service]\nType=oneshot\nExecStart=/bin/probe write /data/{name} ran\n"
            ),
        );
    };
    unit("cmdline", "ConditionKernelCommandLine=minos.test");
    unit("cmdline-value", "ConditionKernelCommandLine=minos.test=on");
    unit("cmdline-not", "ConditionKernelCommandLine=!minos.test");
    unit("container", "ConditionVirtualization=container");
    unit("vm", "ConditionVirtualization=vm");
    unit("mounted", "ConditionPathIsMountPoint=/proc");
    unit("not-mounted", "ConditionPathIsMountPoint=/data");
    fs.unit(
        "stop.service",
        "[Unit]\nAfter=cmdline.service cmdline-value.service cmdline-not.service \
         container.service vm.service mounted.service not-mounted.service\n\
         [Service]\nType=oneshot\nExecStart=/sbin/poweroff\n",
    );
    let end = fs.start(&["minos.test=on"]).wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    for ran in ["cmdline", "cmdline-value", "container", "mounted"] {
        assert_eq!(
            fs.try_read(&format!("data/{ran}")).as_deref(),
            Some("ran"),
            "{ran}: {}",
            end.output
        );
    }
    for skipped in ["cmdline-not", "vm", "not-mounted"] {
        assert!(
            fs.try_read(&format!("data/{skipped}")).is_none(),
            "{skipped}"
        );
    }
    end.assert_log("vm.service: skipped: condition ConditionVirtualization=vm is false");
    end.assert_log(
        "cmdline-not.service: skipped: condition ConditionKernelCommandLine=!minos.test is false",
    );
}
