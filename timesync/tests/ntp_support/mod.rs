//! Shared by the NTP integration tests: Debian's chronyd as a server on
//! loopback (`-x`: never touching this machine's clock), a poll(2) loop
//! driving `NtpServer`s, and a scriptable fake NTP server.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use timesync::clock::Sample;
use timesync::ntp::{measure_once, monotonic_now, Measurement, NtpServer};

pub const CHRONYD: &str = "/usr/sbin/chronyd";

/// Kills chronyd and removes its directory, even when the test fails.
pub struct Chronyd {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_chronyd(name: &str) -> Chronyd {
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

/// Drives `server` from a single-threaded poll(2) loop until `until`
/// returns true or `limit` seconds have passed; returns the samples.
pub fn run_loop(
    server: &mut NtpServer,
    limit: f64,
    mut until: impl FnMut(&NtpServer, &[Sample]) -> bool,
) -> Vec<Sample> {
    let end = monotonic_now() + limit;
    let mut samples = Vec::new();
    loop {
        let now = monotonic_now();
        if now >= end || until(server, &samples) {
            return samples;
        }
        let wait = (server.next_deadline().min(end) - now).max(0.0);
        let timeout = Timespec {
            tv_sec: wait.trunc() as i64,
            tv_nsec: (wait.fract() * 1e9) as i64,
        };
        let ready = {
            let mut fds = [PollFd::from_borrowed_fd(server.fd(), PollFlags::IN)];
            poll(&mut fds, Some(&timeout)).expect("poll");
            fds[0].revents().contains(PollFlags::IN)
        };
        let now = monotonic_now();
        if ready {
            samples.extend(server.on_readable(now));
        }
        if now >= server.next_deadline() {
            server.on_deadline(now);
        }
    }
}

/// The measurement with the lowest delay of three.
pub fn best_of_3(mut measure: impl FnMut() -> Measurement) -> Measurement {
    let mut best = measure();
    for _ in 0..2 {
        let m = measure();
        if m.delay < best.delay {
            best = m;
        }
    }
    best
}

/// The sample with the lowest delay.
pub fn lowest_delay(samples: &[Sample]) -> Sample {
    *samples
        .iter()
        .min_by(|a, b| a.delay.total_cmp(&b.delay))
        .expect("at least one sample")
}

/// NTP seconds (since 1900) of `time`, plus `offset`, as timestamp bits.
pub fn ntp_bits(time: SystemTime, offset: f64) -> [u8; 8] {
    let unix = time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let ntp = unix + 2_208_988_800.0 + offset;
    let whole = ntp.floor();
    let fraction = ((ntp - whole) * 4_294_967_296.0) as u64;
    ((whole as u64) << 32 | fraction).to_be_bytes()
}

/// How the fake server answers a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// A valid reply from a clock `offset` seconds ahead of ours.
    Offset(f64),
    /// A Kiss-o'-Death with this code.
    Kiss([u8; 4]),
    /// A valid reply, then edited: `(byte index, value)`.
    Edit(f64, usize, u8),
    /// A valid reply (offset 0) with bytes `start..end` set to `value`.
    Fill(usize, usize, u8),
    /// The first `n` bytes of a valid reply.
    Short(usize),
    /// The valid reply, twice.
    Twice(f64),
    /// The first reply from a clock `.0` seconds ahead (a lie), every
    /// later one from a clock `.1` seconds ahead.
    FirstThen(f64, f64),
    /// Nothing.
    Silent,
}

/// A valid server reply to `request` from a clock `offset` s ahead.
pub fn reply(request: &[u8], offset: f64) -> [u8; 48] {
    let now = SystemTime::now();
    let mut reply = [0u8; 48];
    reply[0] = 0b00_100_100; // LI 0, NTPv4, server
    reply[1] = 2;
    reply[2] = request.get(2).copied().unwrap_or(6);
    reply[3] = 0xe9;
    reply[8..12].copy_from_slice(&[0, 0, 0, 0x40]); // root dispersion ~1 ms
    reply[12..16].copy_from_slice(b"TEST");
    reply[16..24].copy_from_slice(&ntp_bits(now, offset - 10.0));
    reply[24..32].copy_from_slice(&request[40..48]);
    reply[32..40].copy_from_slice(&ntp_bits(now, offset));
    reply[40..48].copy_from_slice(&ntp_bits(SystemTime::now(), offset));
    reply
}

/// A fake NTP server on a thread, answering per a shared behaviour, until
/// dropped.
pub struct FakeNtpServer {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeNtpServer {
    pub fn start(bind: &str, behaviour: Behaviour) -> FakeNtpServer {
        let socket = UdpSocket::bind(bind).expect("bind fake NTP server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(behaviour));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (behaviour, requests, stop) = (behaviour.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                        continue;
                    };
                    if len < 48 {
                        continue;
                    }
                    let count = requests.fetch_add(1, Ordering::Relaxed) + 1;
                    let request = &buffer[..len];
                    let behaviour = *behaviour.lock().unwrap();
                    let send = |bytes: &[u8]| {
                        socket.send_to(bytes, from).unwrap();
                    };
                    match behaviour {
                        Behaviour::Offset(offset) => send(&reply(request, offset)),
                        Behaviour::Kiss(code) => {
                            let mut kiss = [0u8; 48];
                            kiss[0] = 0b11_100_100;
                            kiss[12..16].copy_from_slice(&code);
                            kiss[24..32].copy_from_slice(&request[40..48]);
                            send(&kiss);
                        }
                        Behaviour::Edit(offset, index, value) => {
                            let mut bad = reply(request, offset);
                            bad[index] = value;
                            send(&bad);
                        }
                        Behaviour::Fill(start, end, value) => {
                            let mut bad = reply(request, 0.0);
                            bad[start..end].fill(value);
                            send(&bad);
                        }
                        Behaviour::Short(n) => send(&reply(request, 0.0)[..n]),
                        Behaviour::Twice(offset) => {
                            let good = reply(request, offset);
                            send(&good);
                            send(&good);
                        }
                        Behaviour::FirstThen(first, then) => {
                            send(&reply(request, if count == 1 { first } else { then }))
                        }
                        Behaviour::Silent => {}
                    }
                }
            })
        };
        FakeNtpServer {
            addr,
            behaviour,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FakeNtpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
