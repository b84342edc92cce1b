//! The built `timesync` daemon in observe-only mode against real NTP servers
//! on loopback: Debian's chronyd (whose clock is ours: offset ~0) and the
//! test's own server that lies by a known offset. The status comes from
//! `timesync status` (text and JSON), as a user reads it. Nothing here may
//! change this machine's clock: the kernel's frequency and status words are
//! compared before and after (a read-only adjtimex query).

mod ntp_support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ntp_support::{start_chronyd, Behaviour, FakeNtpServer};
use timesync::status::Status;

const TIMESYNC: &str = env!("CARGO_BIN_EXE_timesync");

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("timesync-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon; SIGKILLed on drop if the test did not stop it.
struct Daemon {
    child: Child,
    status_file: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_in(dir, config, args, env, Command::new(TIMESYNC))
    }

    /// In a mount namespace of its own where `/etc/resolv.conf` is
    /// `resolv_conf` (needs root).
    fn start_with_resolv_conf(
        dir: &Path,
        config: &str,
        args: &[&str],
        resolv_conf: &str,
    ) -> Daemon {
        let path = dir.join("resolv.conf");
        std::fs::write(&path, resolv_conf).unwrap();
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("r=$1; shift; mount --bind \"$r\" /etc/resolv.conf && exec \"$@\"")
            .arg("sh")
            .arg(&path)
            .arg(TIMESYNC);
        Self::start_in(dir, config, args, &[], command)
    }

    fn start_in(
        dir: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
        mut command: Command,
    ) -> Daemon {
        let conf = dir.join("timesync.conf");
        std::fs::write(&conf, config).unwrap();
        let status_file = dir.join("status");
        command
            .arg("--config")
            .arg(&conf)
            .arg("--status-file")
            .arg(&status_file)
            .args(args)
            .env_remove("container")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        Daemon {
            child: command.spawn().unwrap(),
            status_file,
        }
    }

    fn status_command(&self, json: bool) -> Output {
        let mut command = Command::new(TIMESYNC);
        command
            .arg("status")
            .arg("--status-file")
            .arg(&self.status_file);
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    }

    /// Polls the status file until `done` holds, for at most `limit`.
    fn wait_for(&mut self, limit: Duration, done: impl Fn(&Status) -> bool) -> Status {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("timesync exited: {status}\n{}", self.stderr());
            }
            let output = self.status_command(false);
            // 0: synchronised, 2: not (yet); 1: no status file.
            if matches!(output.status.code(), Some(0 | 2)) {
                let status = timesync::status::read(&self.status_file).unwrap();
                if done(&status) {
                    return status;
                }
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "condition not met within {limit:?}; last status:\n{}\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if self.child.try_wait().ok().flatten().is_some() {
            if let Some(mut stderr) = self.child.stderr.take() {
                let _ = stderr.read_to_string(&mut text);
            }
        }
        text
    }

    /// SIGTERM, then the exit status and stderr.
    fn stop(mut self) -> (i32, String) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = self.child.wait().unwrap();
        let mut text = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut text).unwrap();
        }
        (status.code().unwrap_or(-1), text)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's clock words that a daemon setting the clock would change.
fn kernel_clock_words() -> (i64, i32) {
    let t = timesync::sys::adjtime_read().unwrap();
    (t.freq, t.status)
}

fn synced_with(samples: u64) -> impl Fn(&Status) -> bool {
    move |s: &Status| s.synchronised && s.samples >= samples
}

#[test]
fn observes_chronyd_at_zero_offset() {
    let before = kernel_clock_words();
    let chronyd = start_chronyd("daemon");
    let dir = Dir::new("chronyd");
    let config = format!(
        "server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\nmakestep 1 -1\n",
        chronyd.addr.port()
    );
    let mut daemon = Daemon::start(&dir.0, &config, &["--observe"], &[]);
    let status = daemon.wait_for(Duration::from_secs(20), synced_with(4));
    assert_eq!(status.mode, "observe");
    assert_eq!(status.source_kind, "ntp");
    // chronyd serves stratum 8 (`local stratum 8`): this clock is 9.
    assert_eq!(status.stratum, 9);
    assert_eq!(status.leap, "normal");
    assert!(status.last_offset.abs() < 1e-3, "{status:?}");
    assert_eq!(status.steps, 0);
    assert_eq!(status.reference_id, "7F000001 (127.0.0.1)");

    // chronyc tracking's lines; exit 0 when synchronised.
    let output = daemon.status_command(false);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "Reference ID    : 7F000001 (127.0.0.1)",
        "Stratum         : 9",
        "Leap status     : Normal",
        "Source          : NTP 127.0.0.1",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    let json = String::from_utf8(daemon.status_command(true).stdout).unwrap();
    assert!(json.starts_with("{\"version\":\"0.1.0 (commit "), "{json}");
    assert!(json.contains("\"mode\":\"observe\""), "{json}");
    assert!(json.contains("\"synchronised\":true"), "{json}");
    assert!(
        json.contains("\"sources\":[{\"kind\":\"ntp\",\"name\":\"127.0.0.1\""),
        "{json}"
    );

    let (code, stderr) = daemon.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("timesync: synchronised to NTP 127.0.0.1"),
        "{stderr}"
    );
    assert_eq!(
        kernel_clock_words(),
        before,
        "the kernel clock state changed"
    );
}

#[test]
fn notifies_ready_after_the_first_update_only() {
    use std::os::unix::net::UnixDatagram;
    let server = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.0));
    // Silent at first: no update, so no READY=1.
    server.set(Behaviour::Silent);
    let dir = Dir::new("notify");
    let socket_path = dir.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let config = format!(
        "server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\n",
        server.addr.port()
    );
    let notify = socket_path.to_str().unwrap().to_owned();
    let mut daemon = Daemon::start(
        &dir.0,
        &config,
        &["--observe"],
        &[("NOTIFY_SOCKET", &notify)],
    );
    let mut buf = [0u8; 256];
    assert!(
        socket.recv(&mut buf).is_err(),
        "READY=1 before any synchronisation"
    );
    server.set(Behaviour::Offset(0.0));
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let status = timesync::status::read(&daemon.status_file).unwrap();
    assert!(status.synchronised, "{status:?}");
    // Once only.
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(socket.recv(&mut buf).is_err(), "a second READY=1");
    let _ = daemon.wait_for(Duration::from_secs(5), synced_with(2));
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

#[test]
fn observes_a_lying_server_and_says_the_phc_is_missing() {
    let before = kernel_clock_words();
    let server = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.25));
    let dir = Dir::new("liar");
    let config = format!(
        "refclock PHC /nonexistent/ptp9 poll 3 dpoll -2 offset 0\n\
         server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\nmakestep 1 -1\n",
        server.addr.port()
    );
    let mut daemon = Daemon::start(&dir.0, &config, &["--observe"], &[]);
    let status = daemon.wait_for(Duration::from_secs(20), synced_with(4));
    // The real clock is 0.25 s behind the liar; observe-only reports that.
    assert!((status.last_offset - 0.25).abs() < 1e-3, "{status:?}");
    assert_eq!(status.source_kind, "ntp");
    assert!(
        status.sources.iter().any(|s| s
            .to_line()
            .starts_with("PHC /nonexistent/ptp9 state=unavailable")),
        "{status:?}"
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, 0);
    assert!(
        stderr.contains("cannot open PHC /nonexistent/ptp9")
            && stderr.contains("other sources are used meanwhile"),
        "{stderr}"
    );
    assert_eq!(
        kernel_clock_words(),
        before,
        "the kernel clock state changed"
    );
}

/// A server whose first reply lies (by an hour, to 1970, by a year), alone
/// and with an honest server beside it: the daemon (observe-only, so
/// steps are virtual and counted) never steps to the lie.
#[test]
fn a_lying_first_reply_never_moves_the_clock() {
    for lie in [3600.0, -1.7e9, 365.0 * 86_400.0] {
        for honest_beside in [false, true] {
            let liar = FakeNtpServer::start("127.0.0.1:0", Behaviour::FirstThen(lie, 0.0));
            let honest = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.0));
            let dir = Dir::new("first-liar");
            let mut config = format!(
                "server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\nmakestep 1 -1\n",
                liar.addr.port()
            );
            if honest_beside {
                config.push_str(&format!(
                    "server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\n",
                    honest.addr.port()
                ));
            }
            let mut daemon = Daemon::start(&dir.0, &config, &["--observe"], &[]);
            let status = daemon.wait_for(Duration::from_secs(20), synced_with(4));
            let what = format!("lie {lie} s, honest server beside: {honest_beside}");
            assert!(liar.requests() >= 2, "{what}");
            assert_eq!(status.steps, 0, "{what}: {status:?}");
            assert!(status.last_offset.abs() < 0.01, "{what}: {status:?}");
            let (code, stderr) = daemon.stop();
            assert_eq!(code, 0, "{what}");
            assert!(!stderr.contains("stepped the clock"), "{what}: {stderr}");
        }
    }
}

/// A name server that never answers (30 s per try, 5 tries): the lookup
/// waits in the daemon's poll(2), not in front of it. The NTP server beside
/// keeps its 0.5 s rhythm, the daemon synchronises, and SIGTERM ends it
/// within 100 ms, all while the lookup is outstanding.
#[test]
fn a_silent_name_server_never_blocks_the_loop() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("not root: no mount namespace for a resolv.conf of the test's own; skipped");
        return;
    }
    // The silent name server: reads the queries, answers none.
    let dns = std::net::UdpSocket::bind("127.0.0.254:53").unwrap();
    dns.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let server = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.0));
    let dir = Dir::new("silent-dns");
    let config = format!(
        "server time.silent.invalid iburst\n\
         server 127.0.0.1 port {} iburst minpoll -1 maxpoll -1\n",
        server.addr.port()
    );
    let mut daemon = Daemon::start_with_resolv_conf(
        &dir.0,
        &config,
        &["--observe"],
        "nameserver 127.0.0.254\noptions timeout:30 attempts:5\n",
    );
    let mut buffer = [0u8; 512];
    let (_, from) = dns
        .recv_from(&mut buffer)
        .expect("no DNS query within 100 ms");
    assert_eq!(from.ip(), std::net::Ipv4Addr::LOCALHOST);
    let started = Instant::now();
    daemon.wait_for(Duration::from_secs(10), synced_with(4));
    // The rhythm: one request per 0.5 s over 3 s, the lookup still waiting.
    let before = server.requests();
    std::thread::sleep(Duration::from_secs(3));
    let during = server.requests() - before;
    assert!((5..=8).contains(&during), "{during} NTP requests in 3 s");
    assert!(
        started.elapsed() < Duration::from_secs(29),
        "the lookup may have ended"
    );
    let pid = rustix::process::Pid::from_child(&daemon.child);
    let asked = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = daemon.child.wait().unwrap();
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(100), "SIGTERM took {took:?}");
}

#[test]
fn once_measures_each_source_and_exits() {
    let liar = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(-3.0));
    let dir = Dir::new("once");
    let conf = dir.0.join("timesync.conf");
    std::fs::write(
        &conf,
        format!(
            "refclock PHC /nonexistent/ptp9\nserver 127.0.0.1 port {}\n",
            liar.addr.port()
        ),
    )
    .unwrap();
    let output = Command::new(TIMESYNC)
        .arg("--once")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(0), "{stdout}{stderr}");
    let field = |key: &str| -> f64 {
        stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (offset, delay) = (field("offset="), field("delay="));
    // An NTP offset is exact to within half the round trip (a loaded
    // machine stretches it past a millisecond now and then).
    assert!(
        (offset + 3.0).abs() <= 1e-3_f64.max(delay / 2.0 + 1e-4),
        "{stdout}"
    );
    assert!(
        stderr.contains("cannot open PHC /nonexistent/ptp9"),
        "{stderr}"
    );

    // No source answers: status 1.
    std::fs::write(&conf, "refclock PHC /nonexistent/ptp9\n").unwrap();
    let output = Command::new(TIMESYNC)
        .args(["--once", "--config"])
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[test]
fn in_a_container_it_only_observes() {
    let before = kernel_clock_words();
    let server = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(5.0));
    let dir = Dir::new("container");
    let config = format!(
        "server 127.0.0.1 port {} iburst minpoll -1 maxpoll 0\nmakestep 1 -1\n",
        server.addr.port()
    );
    // No --observe: the container variable alone keeps the clock untouched,
    // although makestep would step a 5 s offset.
    let mut daemon = Daemon::start(&dir.0, &config, &[], &[("container", "minos-test")]);
    let status = daemon.wait_for(Duration::from_secs(20), synced_with(2));
    assert_eq!(status.mode, "observe");
    // What this test is about is the clock left alone; the offset is the
    // server's 5 s to within a loaded machine's loopback round trip.
    assert!((status.last_offset - 5.0).abs() < 1e-2, "{status:?}");
    let (code, stderr) = daemon.stop();
    assert_eq!(code, 0);
    assert!(
        stderr.contains("running in a container (container=minos-test): observe-only"),
        "{stderr}"
    );
    assert_eq!(
        kernel_clock_words(),
        before,
        "the kernel clock state changed"
    );
}

/// Not synchronised (no source at all): `timesync status` exits 2, so a
/// script can wait with `until timesync status; do sleep 1; done`.
#[test]
fn status_exits_2_until_synchronised() {
    let dir = Dir::new("unsynced");
    let mut daemon = Daemon::start(&dir.0, "makestep 1 -1\n", &["--observe"], &[]);
    daemon.wait_for(Duration::from_secs(10), |s| s.mode == "observe");
    let output = daemon.status_command(false);
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains("Leap status     : Not synchronised"),
        "{text}"
    );
    assert!(text.contains("Synchronised    : no"), "{text}");
    assert_eq!(daemon.status_command(true).status.code(), Some(2));
    let (code, _) = daemon.stop();
    assert_eq!(code, 0);
}

#[test]
fn status_without_a_daemon_fails_clearly() {
    let output = Command::new(TIMESYNC)
        .args(["status", "--status-file", "/nonexistent/status"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot read /nonexistent/status")
            && stderr.contains("is the daemon running?"),
        "{stderr}"
    );
}
