//! `systemctl` against a running init (PID 1 of new namespaces, as root):
//! its verbs' outputs and systemd's exit codes, from inside the namespaces
//! through nsenter.

use std::process::Output;
use std::time::{Duration, Instant};

use minos_tests::{Pid1, Rootfs};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const WAIT: Duration = Duration::from_secs(30);

/// `systemctl ARGS` inside init's namespaces.
fn systemctl(pid1: &Pid1, args: &[&str]) -> Output {
    std::process::Command::new("nsenter")
        .args(["-t", &pid1.host_pid().to_string(), "-m", "-p", "-r"])
        .arg("/usr/bin/systemctl")
        .args(args)
        .output()
        .expect("run nsenter (util-linux)")
}

/// (stdout, exit status) of `systemctl ARGS`.
fn run(pid1: &Pid1, args: &[&str]) -> (String, i32) {
    let out = systemctl(pid1, args);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn verbs_outputs_and_exit_codes_as_systemd() {
    let fs = Rootfs::new("systemctl");
    fs.unit(
        "sleeper.service",
        "[Unit]\nDescription=Sleeps\n[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    fs.unit(
        "broken.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe exit 3\n",
    );
    fs.unit(
        "once.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe exit 0\n",
    );
    fs.unit(
        "installed.service",
        "[Service]\nExecStart=/bin/probe sleep 600\n[Install]\nWantedBy=multi-user.target\n",
    );
    let pid1 = fs.start(&[]);
    // `offline` until init's control socket is up, `starting` until every
    // unit settled.
    let deadline = Instant::now() + WAIT;
    let state = loop {
        let (out, code) = run(&pid1, &["is-system-running"]);
        if !matches!(out.as_str(), "offline\n" | "starting\n") || Instant::now() > deadline {
            break (out, code);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(state, ("degraded\n".to_string(), 1), "{}", pid1.output());

    assert_eq!(
        run(&pid1, &["is-active", "sleeper"]),
        ("active\n".into(), 0)
    );
    assert_eq!(
        run(&pid1, &["is-active", "--quiet", "broken.service"]),
        (String::new(), 3)
    );
    assert_eq!(
        run(&pid1, &["is-active", "nosuch"]),
        ("inactive\n".into(), 3)
    );
    assert_eq!(run(&pid1, &["is-failed", "broken"]), ("failed\n".into(), 0));
    assert_eq!(run(&pid1, &["is-failed", "once"]), ("inactive\n".into(), 1));

    let (out, code) = run(&pid1, &["status", "sleeper"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with(
            "● sleeper.service - Sleeps\n     Loaded: loaded\n     Active: active (running) for "
        ),
        "{out}"
    );
    assert!(out.contains("   Main PID: "), "{out}");
    let (out, code) = run(&pid1, &["status", "sleeper", "broken"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains(
            "× broken.service\n     Loaded: loaded\n     Active: failed (Result: exit-code)\n"
        ),
        "{out}"
    );
    let unknown = systemctl(&pid1, &["status", "nosuch.service"]);
    assert_eq!(unknown.status.code(), Some(4));
    assert_eq!(
        String::from_utf8_lossy(&unknown.stderr),
        "Unit nosuch.service could not be found.\n"
    );
    // Without units: init's table, exit 0 even with a failed unit.
    let (table, code) = run(&pid1, &["status"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("UNIT"), "{table}");

    let (show, code) = run(
        &pid1,
        &[
            "show",
            "-p",
            "ActiveState,SubState,Result,ExecMainStatus",
            "broken",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(
        show,
        "ActiveState=failed\nSubState=failed\nResult=exit-code\nExecMainStatus=3\n"
    );
    let (pid, _) = run(&pid1, &["show", "-P", "MainPID", "sleeper"]);
    assert!(pid.trim().parse::<u32>().is_ok_and(|p| p > 1), "{pid}");
    assert_eq!(
        run(&pid1, &["show", "--property=LoadState", "nosuch"]),
        ("LoadState=not-found\n".into(), 0)
    );

    let (failed, code) = run(&pid1, &["list-units", "--failed", "--no-legend"]);
    assert_eq!(code, 0);
    assert_eq!(failed.lines().count(), 1, "{failed}");
    assert!(
        failed.starts_with("broken.service loaded failed"),
        "{failed}"
    );
    let (list, _) = run(&pid1, &["list-units", "--type=service"]);
    assert!(list.contains("sleeper.service"), "{list}");
    assert!(
        !list.contains("once.service"),
        "inactive units only with --all: {list}"
    );

    assert_eq!(
        run(&pid1, &["is-enabled", "sleeper", "installed"]),
        ("static\ndisabled\n".into(), 1)
    );

    let bad = systemctl(&pid1, &["--bogus", "status"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unrecognized option '--bogus'"),
        "{bad:?}"
    );
    assert_eq!(systemctl(&pid1, &["start", "once"]).status.code(), Some(1));
    let (help, code) = run(&pid1, &["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("is-system-running"), "{help}");

    let (json, code) = {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid1.host_pid().to_string(), "-m", "-p", "-r"])
            .args(["/sbin/init", "status", "--json"])
            .output()
            .expect("run nsenter");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.code(),
        )
    };
    assert_eq!(code, Some(0), "{json}");
    assert!(
        json.starts_with("{\"system\":\"degraded\",\"units\":["),
        "{json}"
    );
    assert!(
        json.contains("{\"Id\":\"broken.service\",\"Description\":\"\",\"LoadState\":\"loaded\",\"ActiveState\":\"failed\""),
        "{json}"
    );

    pid1.signal(SIGTERM);
    // While stopping, or once init is gone: never `running`.
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
}
