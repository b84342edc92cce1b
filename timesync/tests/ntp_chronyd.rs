//! timesync's NTP client against Debian's chronyd, started by the test as
//! an NTP server on 127.0.0.1 (a high port, its own configuration in a
//! temporary directory). chronyd runs with `-x`: it never touches this
//! machine's clock. Its clock is ours, so every offset must be ~0.

mod ntp_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ntp_support::{best_of_3, lowest_delay, run_loop};
use timesync::ntp::{measure_once, monotonic_now, Leap, NtpServer, PollConfig, ServerStatus};

const CHRONYD: &str = "/usr/sbin/chronyd";

/// Kills chronyd and removes its directory, even when the test fails.
struct Chronyd {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_chronyd(name: &str) -> Chronyd {
    assert!(
        Path::new(CHRONYD).exists(),
        "{CHRONYD} is missing: install Debian's chrony package \
         (`cargo xtask test` does: apt-get install chrony)"
    );
    let dir = std::env::temp_dir().join(format!("timesync-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_udp_port();
    let conf = dir.join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\n\
             bindaddress 127.0.0.1\n\
             allow 127.0.0.1\n\
             local stratum 8\n\
             cmdport 0\n\
             pidfile {dir}/chronyd.pid\n\
             driftfile {dir}/chrony.drift\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let mut command = Command::new(CHRONYD);
    // -x: never control the system clock (mandatory). -d: foreground,
    // log to stderr. As root, `-u root` keeps chronyd from switching to
    // the _chrony user (absent in some images); otherwise -U lets it run
    // unprivileged.
    command.args(["-d", "-x", "-f"]).arg(&conf);
    if rustix::process::geteuid().is_root() {
        command.args(["-u", "root"]);
    } else {
        command.arg("-U");
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("chronyd.log")).unwrap())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {CHRONYD}: {err}"));
    let mut chronyd = Chronyd {
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    // Wait until it answers.
    let start = Instant::now();
    loop {
        let log = || std::fs::read_to_string(chronyd.dir.join("chronyd.log")).unwrap_or_default();
        if let Some(status) = chronyd.child.try_wait().unwrap() {
            panic!("chronyd exited early: {status}\n{}", log());
        }
        if measure_once(chronyd.addr, Duration::from_millis(200)).is_ok() {
            assert!(
                log().contains("Disabled control of system clock"),
                "{}",
                log()
            );
            return chronyd;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "chronyd did not answer on {} within 15 s\n{}",
            chronyd.addr,
            log()
        );
    }
}

#[test]
fn measure_once_against_chronyd() {
    let chronyd = start_chronyd("once");
    // The lowest-delay of three, as a client's clock filter would take.
    let m = best_of_3(|| measure_once(chronyd.addr, Duration::from_secs(2)).unwrap());
    assert!(m.offset.abs() < 1e-3, "{m:?}");
    assert!(m.delay >= 0.0 && m.delay < 0.01, "{m:?}");
    assert_eq!(m.stratum, 8, "local stratum 8");
    assert_eq!(m.leap, Leap::None);
    assert!(m.root_distance() < 1.0, "{m:?}");
}

#[test]
fn state_machine_against_chronyd() {
    let chronyd = start_chronyd("poll");
    let config = PollConfig {
        minpoll: -3,
        maxpoll: -2,
        iburst: false,
    };
    let mut server = NtpServer::new("chronyd", chronyd.addr, config, monotonic_now()).unwrap();
    let samples = run_loop(&mut server, 10.0, |server, _| {
        server.counters().accepted >= 8
    });
    let counters = *server.counters();
    assert!(counters.accepted >= 8, "{counters:?}");
    assert_eq!(counters.total_rejected(), 0, "{counters:?}");
    assert_eq!(server.status(), ServerStatus::Active);
    assert_eq!(server.reach() & 1, 1, "reach {:o}", server.reach());
    assert!(!samples.is_empty());
    for sample in &samples {
        // chronyd's clock is ours: zero within half the delay.
        assert!(
            sample.offset.abs() <= sample.delay / 2.0 + 1e-4,
            "{sample:?}"
        );
        assert!(sample.delay >= 0.0 && sample.delay < 0.01, "{sample:?}");
        assert!(sample.root_distance < 1.0, "{sample:?}");
    }
    let best = lowest_delay(&samples);
    assert!(best.offset.abs() < 1e-3, "{best:?}");
    // Samples are in time order and none is used twice.
    assert!(samples.windows(2).all(|w| w[0].monotonic < w[1].monotonic));
    // Consistent samples raised the interval from minpoll to maxpoll.
    assert_eq!(server.poll_exponent(), -2);
}
