//! agent-shim's self-check, seen from outside: (a) as the agent of Kata's
//! unmodified kata-agent.service under the real init (PID 1 of new
//! namespaces, container mode), where only what this machine cannot grant
//! may be missing; (b) run directly on the host, where the gaps are
//! reported and `--strict` fails on them.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use minos_tests::{binary, Rootfs};

const SIGINT: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);
/// kata-agent.service's `OOMScoreAdjust=` and `LimitNOFILE=`.
const KATA_OOM_SCORE_ADJ: i32 = -997;
const KATA_NOFILE: u64 = 1_073_741_824;
/// The PATH init gives units (systemd's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Every key of the self-check line, in order.
const KEYS: [&str; 20] = [
    "pid",
    "nofile",
    "oom_score_adj",
    "stdin",
    "stdout",
    "proc",
    "sys",
    "dev",
    "dev_pts",
    "dev_shm",
    "run",
    "tmp",
    "cgroup",
    "path",
    "hostname",
    "lo",
    "run_writable",
    "tmp_mode",
    "container",
    "gaps",
];

/// The start of the `--strict` message for each check.
fn message_prefix(gap: &str) -> &'static str {
    match gap {
        "pid" => "pid is ",
        "nofile" => "RLIMIT_NOFILE is ",
        "oom_score_adj" => "oom_score_adj is ",
        "stdin" => "stdin is ",
        "stdout" => "stdout is ",
        "proc" => "/proc is ",
        "sys" => "/sys is ",
        "dev" => "/dev is ",
        "dev_pts" => "/dev/pts is ",
        "dev_shm" => "/dev/shm is ",
        "run" => "/run is ",
        "tmp" => "/tmp is ",
        "cgroup" => "/sys/fs/cgroup is ",
        "path" => "PATH is ",
        "hostname" => "hostname is ",
        "lo" => "lo is ",
        "run_writable" => "/run is not writable",
        "tmp_mode" => "/tmp has mode ",
        other => panic!("unknown gap {other}"),
    }
}

/// The self-check line in `output`, as key → value; fails unless it has
/// exactly the documented keys in order.
fn self_check_line(output: &str) -> BTreeMap<String, String> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("agent-shim: self-check "))
        .unwrap_or_else(|| panic!("no self-check line:\n{output}"));
    let pairs: Vec<(String, String)> = line
        .split(' ')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{kv:?} in {line}"));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, KEYS, "{line}");
    pairs.into_iter().collect()
}

fn gap_list(values: &BTreeMap<String, String>) -> Vec<String> {
    match values["gaps"].as_str() {
        "none" => Vec::new(),
        list => list.split(',').map(String::from).collect(),
    }
}

/// What init can grant kata-agent.service here, measured on a child of the
/// test: whether its oom_score_adj can be lowered to -997 and its
/// RLIMIT_NOFILE raised to 1073741824. Both need CAP_SYS_RESOURCE (some
/// sandboxes drop it), and the limit a fs.nr_open that allows it (init does
/// not raise fs.nr_open in a container). In a VM init can do both.
struct Grants {
    oom_score_adj: bool,
    nofile: bool,
}

fn measure_grants() -> Grants {
    let mut child = Command::new(binary("probe"))
        .args(["sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn probe");
    let oom_score_adj = std::fs::write(
        format!("/proc/{}/oom_score_adj", child.id()),
        KATA_OOM_SCORE_ADJ.to_string(),
    )
    .is_ok();
    let nofile = rustix::process::prlimit(
        Some(rustix::process::Pid::from_child(&child)),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(KATA_NOFILE),
            maximum: Some(KATA_NOFILE),
        },
    )
    .is_ok();
    let _ = child.kill();
    let _ = child.wait();
    Grants {
        oom_score_adj,
        nofile,
    }
}

/// Kata's QEMU kernel command line (the runtime's parameters).
fn kata_cmdline() -> Vec<String> {
    let text = include_str!("../fixtures/kata/kernel-cmdline-qemu-x86.txt");
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .expect("cmdline");
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn under_init_with_kata_unit_only_what_the_machine_cannot_grant_is_missing() {
    let grants = measure_grants();
    let fs = Rootfs::new("agent-selfcheck");
    fs.unit(
        "kata-agent.service",
        include_str!("../fixtures/kata/kata-agent.service"),
    );
    fs.unit(
        "kata-containers.target",
        include_str!("../fixtures/kata/kata-containers.target"),
    );
    // The unit's ExecStart=/usr/bin/kata-agent is agent-shim.
    let agent = fs.root.join("usr/bin/kata-agent");
    std::fs::remove_file(&agent).expect("remove the probe link");
    std::fs::copy(binary("agent-shim"), &agent).expect("copy agent-shim");
    // The unit passes no arguments: the shim's settings come from agent.*
    // keys, as kata-agent's do. A unix socket instead of vsock port 1024,
    // which the host may have in use.
    let mut words = kata_cmdline();
    words.extend(
        [
            "agent.self_check",
            "agent.strict",
            "agent.exit_after=0s",
            "agent.server_addr=unix:///run/agent-shim.sock",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let end = fs
        .start_with_kernel_cmdline(&words.join(" "), &args)
        .wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);

    let values = self_check_line(&end.output);
    let mut expected_gaps = Vec::new();
    if !grants.nofile {
        expected_gaps.push("nofile");
    }
    if !grants.oom_score_adj {
        expected_gaps.push("oom_score_adj");
    }
    assert_eq!(gap_list(&values), expected_gaps, "{}", end.output);
    assert!(
        !end.output.contains("agent-shim: warning: self-check"),
        "everything was readable:\n{}",
        end.output
    );

    // What init set up, as the agent sees it.
    let pid: i32 = values["pid"].parse().expect("pid");
    assert!(pid > 1, "the agent is init's child: {values:?}");
    for (key, want) in [
        ("stdin", "/dev/null"),
        ("proc", "proc"),
        ("sys", "sysfs"),
        // Container mode: a tmpfs with the OCI devices, not devtmpfs.
        ("dev", "tmpfs"),
        ("dev_pts", "devpts"),
        ("dev_shm", "tmpfs"),
        ("run", "tmpfs"),
        ("tmp", "tmpfs"),
        ("cgroup", "cgroup2"),
        ("path", DEFAULT_PATH),
        ("hostname", "minos-test"),
        ("lo", "up"),
        ("run_writable", "yes"),
        ("tmp_mode", "1777"),
        ("container", "minos-test"),
    ] {
        assert_eq!(values[key], want, "{key}: {values:?}");
    }
    // StandardOutput=tty: no /dev/console in the container, so init's own
    // stdout, the pipe to this test.
    assert!(values["stdout"].starts_with("pipe:["), "{values:?}");

    if grants.oom_score_adj {
        assert_eq!(values["oom_score_adj"], KATA_OOM_SCORE_ADJ.to_string());
    } else {
        end.assert_log("kata-agent.service: OOMScoreAdjust=-997 needs CAP_SYS_RESOURCE");
        end.assert_log("strict self-check: oom_score_adj is ");
    }
    if grants.nofile {
        assert_eq!(values["nofile"], format!("{KATA_NOFILE}/{KATA_NOFILE}"));
    } else {
        end.assert_log("kata-agent.service: LimitNOFILE above what this system allows");
        end.assert_log("strict self-check: RLIMIT_NOFILE is ");
    }
    assert_eq!(
        end.output.matches("strict self-check: ").count(),
        expected_gaps.len(),
        "{}",
        end.output
    );

    if expected_gaps.is_empty() {
        // Strict and complete: ready, then agent.exit_after, then
        // ExecStop's poweroff.
        end.assert_log("agent-shim: ready boottime_us=");
        end.assert_log("agent-shim: exiting status=0 reason=exit-after");
        end.assert_log("shutdown: poweroff (Force)");
    } else {
        // Strict with gaps: status 2 before readiness; FailureAction=poweroff.
        assert!(!end.output.contains("agent-shim: ready"), "{}", end.output);
        end.assert_log("agent-shim: exiting status=2 reason=self-check");
        end.assert_log("kata-agent.service: failed: exit status 2");
    }
}

/// agent-shim on the host, without init: no PATH, stdin and stdout pipes.
fn run_on_host(extra: &[&str]) -> (i32, String, String) {
    let addr = format!("unix://@minos-agent-selfcheck-{}", std::process::id());
    let mut child = Command::new(binary("agent-shim"))
        .args(extra)
        .args(["--exit-after", "0s", "--server-addr", &addr])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn agent-shim");
    // Held open until the shim has ended: its stdin stays a pipe.
    let stdin = child.stdin.take();
    let out = child.wait_with_output().expect("agent-shim output");
    drop(stdin);
    (
        out.status.code().expect("exit status"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The gaps a plain process of this test must show whatever the host: its
/// streams and environment, and the unit's settings unless the test itself
/// runs with them.
fn host_gaps_certain() -> Vec<&'static str> {
    let mut certain = Vec::new();
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current != Some(KATA_NOFILE) || limit.maximum != Some(KATA_NOFILE) {
        certain.push("nofile");
    }
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .expect("read /proc/self/oom_score_adj")
        .trim()
        .parse()
        .expect("oom_score_adj");
    if own != KATA_OOM_SCORE_ADJ {
        certain.push("oom_score_adj");
    }
    certain.extend(["stdin", "stdout", "path"]);
    certain
}

#[test]
fn directly_on_the_host_the_gaps_are_reported_and_strict_fails_naming_them() {
    let certain = host_gaps_certain();

    // --self-check alone reports and carries on.
    let (status, stdout, stderr) = run_on_host(&["--self-check"]);
    assert_eq!(status, 0, "{stdout}{stderr}");
    let values = self_check_line(&stdout);
    let gaps = gap_list(&values);
    for gap in &certain {
        assert!(gaps.iter().any(|g| g == gap), "{gap} missing: {stdout}");
    }
    assert!(!gaps.iter().any(|g| g == "pid"), "{stdout}");
    assert!(values["stdin"].starts_with("pipe:["), "{values:?}");
    assert!(values["stdout"].starts_with("pipe:["), "{values:?}");
    assert_eq!(values["path"], "unset");
    assert_eq!(values["container"], "unset");
    assert!(
        stdout.contains("agent-shim: ready boottime_us="),
        "{stdout}"
    );
    assert!(
        stdout.ends_with("agent-shim: exiting status=0 reason=exit-after\n"),
        "{stdout}"
    );
    assert!(!stderr.contains("strict self-check"), "{stderr}");

    // --strict: status 2, no readiness, one message per gap naming it.
    let (status, stdout, stderr) = run_on_host(&["--strict"]);
    assert_eq!(status, 2, "{stdout}{stderr}");
    let strict_gaps = gap_list(&self_check_line(&stdout));
    assert_eq!(strict_gaps, gaps, "the same host, the same gaps");
    assert!(!stdout.contains("agent-shim: ready"), "{stdout}");
    assert!(
        stdout.ends_with("agent-shim: exiting status=2 reason=self-check\n"),
        "{stdout}"
    );
    let messages: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("agent-shim: error: strict self-check: "))
        .collect();
    assert_eq!(messages.len(), gaps.len(), "{stderr}");
    for (gap, message) in gaps.iter().zip(&messages) {
        assert!(
            message.starts_with(message_prefix(gap)) && message.contains(", expected "),
            "{gap}: {message}"
        );
    }
    for expected in [
        "stdin is pipe:[",
        "PATH is unset, expected a non-empty list of absolute directories",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected}: {stderr}"
        );
    }
    assert!(
        messages.iter().any(|m| m.starts_with("stdout is pipe:[")
            && m.ends_with("expected the console (/dev/console, /dev/tty*, /dev/hvc*)")),
        "{stderr}"
    );
}
