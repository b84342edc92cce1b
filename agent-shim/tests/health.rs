//! The agent's ttRPC health check: the server in-process and in the built
//! binary, the `check` client (unix and hybrid vsock), and frames that do
//! not follow the protocol. Everything runs on unix sockets in temporary
//! directories.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use agent_shim::address::Address;
use agent_shim::protocols::health::health_check_response::ServingStatus;
use agent_shim::protocols::health::CheckRequest;
use agent_shim::protocols::health_ttrpc::HealthClient;
use agent_shim::server::{self, AgentServer, VERSION};

const SHIM: &str = env!("CARGO_BIN_EXE_agent-shim");

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "agent-shim-health-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unix(path: &Path) -> Address {
    Address::Unix(path.to_owned())
}

fn client(path: &Path) -> HealthClient {
    let client = ttrpc::Client::connect(&format!("unix://{}", path.display())).unwrap();
    HealthClient::new(client)
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(5))
}

#[test]
fn check_and_version_round_trip() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let server = AgentServer::start(&unix(&path)).unwrap();
    let health = client(&path);

    let check = health.check(ctx(), &CheckRequest::new()).unwrap();
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));

    let mut request = CheckRequest::new();
    request.service = "anything".into();
    let version = health.version(ctx(), &request).unwrap();
    assert_eq!(version.grpc_version, VERSION);
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));

    // Several requests on one connection, and a second connection.
    for _ in 0..3 {
        assert!(health.check(ctx(), &CheckRequest::new()).is_ok());
    }
    assert!(client(&path).check(ctx(), &CheckRequest::new()).is_ok());

    drop(health);
    server.shutdown();
    assert!(!path.exists(), "the socket file is removed on shutdown");
}

/// The status a raw request to `service`/`method` gets.
fn raw_request(path: &Path, service: &str, method: &str) -> ttrpc::Result<ttrpc::Response> {
    use protobuf::Message;
    let client = ttrpc::Client::connect(&format!("unix://{}", path.display())).unwrap();
    let mut request = ttrpc::Request::new();
    request.service = service.into();
    request.method = method.into();
    request.timeout_nano = 5_000_000_000;
    request.payload = CheckRequest::new().write_to_bytes().unwrap();
    client.request(request)
}

#[test]
fn agent_methods_are_unimplemented_unknown_paths_do_not_exist() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let _server = AgentServer::start(&unix(&path)).unwrap();

    // Every method of Kata's grpc.AgentService: UNIMPLEMENTED, whatever the
    // payload (the handler does not decode it).
    assert_eq!(server::AGENT_SERVICE_METHODS.len(), 38);
    for method in server::AGENT_SERVICE_METHODS {
        match raw_request(&path, "grpc.AgentService", method) {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code(), ttrpc::Code::UNIMPLEMENTED, "{method}");
                assert_eq!(
                    status.message,
                    format!("/grpc.AgentService/{method} is not implemented by agent-shim")
                );
            }
            other => panic!("/grpc.AgentService/{method}: {other:?}"),
        }
    }

    // What ttrpc's async server answers, and so kata-agent: a method the
    // service lacks is UNIMPLEMENTED "METHOD method", a service the server
    // lacks is INVALID_ARGUMENT "SERVICE service does not exist".
    for (service, method, code, message) in [
        (
            "grpc.Health",
            "Watch",
            ttrpc::Code::UNIMPLEMENTED,
            "Watch method",
        ),
        (
            "grpc.AgentService",
            "NoSuchMethod",
            ttrpc::Code::UNIMPLEMENTED,
            "NoSuchMethod method",
        ),
        (
            "containerd.task.v2.Task",
            "Create",
            ttrpc::Code::INVALID_ARGUMENT,
            "containerd.task.v2.Task service does not exist",
        ),
    ] {
        match raw_request(&path, service, method) {
            Err(ttrpc::Error::RpcStatus(status)) => {
                assert_eq!(status.code(), code, "/{service}/{method}");
                assert_eq!(status.message, message);
            }
            other => panic!("/{service}/{method}: {other:?}"),
        }
    }
    // The known path through the same raw route works, on the server that
    // just answered all of the above.
    assert!(raw_request(&path, "grpc.Health", "Check").is_ok());
}

/// A ttRPC frame header: length, stream id, type, flags (big endian).
fn header(length: u32, stream: u32, kind: u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(&[kind, 0]);
    bytes
}

fn assert_serving(path: &Path) {
    let check = client(path).check(ctx(), &CheckRequest::new()).unwrap();
    assert_eq!(check.status.enum_value(), Ok(ServingStatus::SERVING));
}

#[test]
fn malformed_frames_neither_crash_nor_hang_the_server() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let _server = AgentServer::start(&unix(&path)).unwrap();

    let garbage: Vec<u8> = (0u32..512).map(|i| (i * 7919 % 251) as u8).collect();
    let mut request_with_bad_body = header(16, 1, 1);
    request_with_bad_body.extend_from_slice(&[0xff; 16]);
    let closed_after: [(&str, Vec<u8>); 6] = [
        ("truncated header", vec![0, 0, 0]),
        ("length above the 4 MiB limit", header(5 << 20, 1, 1)),
        ("length 0xffffffff", header(u32::MAX, 1, 1)),
        ("body shorter than its length", {
            let mut frame = header(100, 1, 1);
            frame.extend_from_slice(b"short");
            frame
        }),
        ("garbage", garbage.clone()),
        (
            "request with an undecodable body",
            request_with_bad_body.clone(),
        ),
    ];
    for (what, bytes) in &closed_after {
        let mut stream = UnixStream::connect(&path).unwrap();
        stream.write_all(bytes).unwrap();
        drop(stream);
        assert_serving(&path);
        eprintln!("ok after {what}");
    }

    // Connections that stay open mid-frame do not block others.
    let mut half_header = UnixStream::connect(&path).unwrap();
    half_header.write_all(&[0, 0, 0, 1, 0]).unwrap();
    let mut half_body = UnixStream::connect(&path).unwrap();
    half_body.write_all(&header(1000, 1, 1)).unwrap();
    half_body.write_all(b"abc").unwrap();
    let mut huge = UnixStream::connect(&path).unwrap();
    huge.write_all(&header(u32::MAX, 3, 1)).unwrap();
    assert_serving(&path);

    // A request whose body does not decode is answered, not dropped.
    let mut stream = UnixStream::connect(&path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&request_with_bad_body).unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[4..9], &[0, 0, 0, 1, 2], "a response on stream 1");
    assert_serving(&path);
    drop((half_header, half_body, huge, stream));
    assert_serving(&path);
}

#[test]
fn explicit_address_that_fails_is_an_error_default_without_vsock_is_not() {
    let dir = TempDir::new();
    let missing = unix(&dir.join("no/such/dir/agent.sock"));
    let err = server::start(Some(&missing), &missing).unwrap_err();
    assert!(!err.vsock_unavailable());
    assert!(
        agent_shim::Report(&err)
            .to_string()
            .starts_with(&format!("cannot listen on {missing}: ")),
        "{err}"
    );
    // As a default, a unix address that fails is still an error: only a
    // missing vsock is forgiven.
    assert!(server::start(None, &missing).is_err());

    // A CID that is not this machine's: EADDRNOTAVAIL where AF_VSOCK
    // exists, a failed socket() where it does not. Both mean "no vsock to
    // listen on": forgiven for the default, an error when asked for.
    let foreign = Address::Vsock {
        cid: 0x7eadbeef,
        port: 1024,
    };
    let err = server::start(Some(&foreign), &foreign).unwrap_err();
    assert!(err.vsock_unavailable(), "{err:?}");
    assert!(agent_shim::Report(&err)
        .to_string()
        .starts_with("cannot listen on vsock://2125315823:1024"));
    assert!(server::start(None, &foreign).unwrap().is_none());
}

/// The built shim, serving on `path`, stdout piped; returns after its
/// ready line.
struct Shim {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Shim {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(SHIM)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("agent-shim: ready boottime_us="),
            "{line:?}"
        );
        Self { child, stdout }
    }

    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "agent-shim did not exit");
            thread::sleep(Duration::from_millis(10));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        (status, rest)
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_command(args: &[&str]) -> Output {
    Command::new(SHIM)
        .arg("check")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn binary_serves_once_ready_and_check_reports_serving() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let addr = format!("unix://{}", path.display());
    let shim = Shim::start(&["--server-addr", &addr]);

    // Listening already when the ready line is out: no retry.
    assert_serving(&path);
    // A connection left open does not delay the exit.
    let _idle = UnixStream::connect(&path).unwrap();

    let output = check_command(&[&addr, "--timeout", "5s"]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "SERVING\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    let (status, rest) = shim.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(
        rest.ends_with("agent-shim: exiting status=0 reason=sigterm\n"),
        "{rest}"
    );
    // The first answered Check, and only that one, is announced.
    let announced: Vec<&str> = rest
        .lines()
        .filter(|l| l.starts_with("agent-shim: health_check boottime_us="))
        .collect();
    assert_eq!(announced.len(), 1, "{rest}");
    let us: u64 = announced[0].rsplit('=').next().unwrap().parse().unwrap();
    assert!(us > 0);
    assert!(!path.exists());
}

#[test]
fn binary_timers_still_end_it_with_the_server_running() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let addr = format!("unix://{}", path.display());
    let output = Command::new(SHIM)
        .args(["--server-addr", &addr, "--fail-after", "200ms"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("agent-shim: ready boottime_us="),
        "{stdout}"
    );
    assert!(stdout.ends_with("agent-shim: exiting status=1 reason=fail-after\n"));
    assert!(!path.exists());
}

#[test]
fn binary_explicit_address_that_cannot_be_bound_exits_1() {
    let dir = TempDir::new();
    let addr = format!("unix://{}", dir.join("missing/agent.sock").display());
    let output = Command::new(SHIM)
        .args(["--server-addr", &addr, "--exit-after", "10s"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout, "agent-shim: exiting status=1 reason=server\n");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("agent-shim: error: cannot listen on {addr}: ")),
        "{stderr}"
    );

    // A bound address is taken.
    let path = dir.join("agent.sock");
    let _holder = UnixListener::bind(&path).unwrap();
    let taken = format!("unix://{}", path.display());
    let output = Command::new(SHIM)
        .args(["--server-addr", &taken, "--exit-after", "10s"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(path.exists(), "someone else's socket is left alone");
}

#[test]
fn check_failures_name_the_address() {
    let dir = TempDir::new();
    let addr = format!("unix://{}", dir.join("nobody.sock").display());
    let output = check_command(&[&addr, "--timeout", "2s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!("agent-shim: error: cannot connect to {addr}: ")),
        "{stderr}"
    );

    // A peer that accepts and never answers: the timeout.
    let path = dir.join("silent.sock");
    let _silent = UnixListener::bind(&path).unwrap();
    let addr = format!("unix://{}", path.display());
    let start = Instant::now();
    let output = check_command(&[&addr, "--timeout", "300ms"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&addr), "{stderr}");

    let output = check_command(&[]);
    assert_eq!(output.status.code(), Some(2));
    let output = check_command(&["tcp://127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(2));
    let output = check_command(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage: agent-shim check ADDR"));
}

/// Firecracker's hybrid vsock, faked: accepts on `listener`, expects
/// `CONNECT 1024\n`, answers `OK 1024\n`, then relays bytes both ways to
/// the agent's unix socket. Handles `connections` connections.
fn fake_hybrid_vsock(listener: UnixListener, agent: PathBuf, connections: usize) {
    thread::spawn(move || {
        for _ in 0..connections {
            let (mut host, _) = listener.accept().unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while byte[0] != b'\n' {
                host.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            if line != b"CONNECT 1024\n" {
                host.write_all(b"FAILURE\n").unwrap();
                continue;
            }
            host.write_all(b"OK 1024\n").unwrap();
            let guest = UnixStream::connect(&agent).unwrap();
            let (mut host_r, mut guest_w) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
            thread::spawn(move || {
                let _ = std::io::copy(&mut host_r, &mut guest_w);
                let _ = guest_w.shutdown(std::net::Shutdown::Write);
            });
            let (mut guest_r, mut host_w) = (guest, host);
            thread::spawn(move || {
                let _ = std::io::copy(&mut guest_r, &mut host_w);
                let _ = host_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}

#[test]
fn check_over_hybrid_vsock() {
    let dir = TempDir::new();
    let agent = dir.join("agent.sock");
    let _server = AgentServer::start(&unix(&agent)).unwrap();
    let hybrid = dir.join("kata.hvsock");
    fake_hybrid_vsock(UnixListener::bind(&hybrid).unwrap(), agent, 2);

    let addr = format!("hvsock://{}:1024", hybrid.display());
    let output = check_command(&[&addr]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "SERVING\n");
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    // The wrong port is refused by the fake; the client says so.
    let addr = format!("hvsock://{}:1025", hybrid.display());
    let output = check_command(&[&addr]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr,
        format!(
            "agent-shim: error: hybrid vsock handshake with {addr} failed: \
             reply `FAILURE`, expected `OK ...`\n"
        )
    );
}

#[test]
fn check_client_in_process() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let _server = AgentServer::start(&unix(&path)).unwrap();
    let status = agent_shim::client::check(&unix(&path), Duration::from_secs(5)).unwrap();
    assert!(status.is_serving());
    assert_eq!(status.to_string(), "SERVING");
}

/// CPU time (user + system) and thread count of process `pid`.
fn cpu_and_threads(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime, stime and num_threads are fields 14, 15 and 20 of the line.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let threads: u64 = fields[17].parse().unwrap();
    // SAFETY: sysconf takes an integer and returns one.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    (Duration::from_micros(ticks * 1_000_000 / hz), threads)
}

/// Regression for the `ttrpc_frames` finding (docs/fuzzing.md): ttrpc
/// 0.10's sync server, which the shim used, spent about 210 ms of CPU
/// reading a closed socket after a header announcing a frame over 4 MiB,
/// with a few threads per connection; 100 such connections cost it 20 s.
#[test]
fn connections_announcing_oversized_frames_cost_next_to_nothing() {
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let addr = format!("unix://{}", path.display());
    let shim = Shim::start(&["--server-addr", &addr]);
    let pid = shim.child.id();
    let (cpu0, _) = cpu_and_threads(pid);
    for _ in 0..100 {
        let mut s = UnixStream::connect(&path).unwrap();
        let _ = s.write_all(&header(u32::MAX, 1, 1));
        let _ = s.write_all(&[0x78; 32]);
    }
    // Still answering at once, then settled.
    assert_serving(&path);
    thread::sleep(Duration::from_millis(500));
    let (cpu1, threads) = cpu_and_threads(pid);
    assert!(
        cpu1 - cpu0 < Duration::from_millis(500),
        "100 oversized frames cost the server {:?} of CPU",
        cpu1 - cpu0
    );
    assert!(
        threads <= 4,
        "{threads} threads after the connections closed"
    );
    let (status, _) = shim.terminate();
    assert_eq!(status.code(), Some(0));
}

/// Raises this process's open-file limit to its hard limit (allowed
/// without privileges): the attacks below hold thousands of sockets.
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap();
}

/// Whether the server has closed or shut down its end of `stream`: a
/// read sees the end of the stream or a reset, not "nothing yet".
fn closed_by_server(stream: &mut UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Issue 19's attack: 2,000 connections that never send a whole header
/// (half of them nothing at all). The server holds at most its limit of
/// them, the runtime's own connection (which has sent frames) keeps
/// working and new health checks get in while they are open, and every
/// one is closed by the frame deadline.
#[test]
fn idle_and_half_header_connections_cannot_crowd_out_the_runtime() {
    use agent_shim::limits::Limits;
    raise_nofile();
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let limits = Limits {
        frame_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server =
        AgentServer::start_limited(&unix(&path), server::HealthService::new(false), limits)
            .unwrap();
    let runtime = client(&path);
    runtime.check(ctx(), &CheckRequest::new()).unwrap();

    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..2000 {
        let mut s = UnixStream::connect(&path).unwrap();
        if i % 2 == 1 {
            s.write_all(&[0, 0, 0, 1, 0]).unwrap();
        }
        attackers.push(s);
        if i % 250 == 249 {
            assert!(
                server.connections() <= limits.max_connections,
                "{} connections held",
                server.connections()
            );
            assert_serving(&path);
            runtime.check(ctx(), &CheckRequest::new()).unwrap();
        }
    }
    let flood = started.elapsed();
    assert!(server.connections() <= limits.max_connections);
    // Past the deadline every attacker is gone; the runtime's stays.
    thread::sleep(limits.frame_timeout + Duration::from_millis(500));
    let open = attackers
        .iter_mut()
        .map(closed_by_server)
        .filter(|closed| !closed)
        .count();
    assert_eq!(open, 0, "{open} attacking connections still open");
    assert_eq!(server.connections(), 1, "only the runtime's is left");
    runtime.check(ctx(), &CheckRequest::new()).unwrap();
    eprintln!("2,000 connections in {flood:?}; all closed by the deadline");
}

/// Partial frames above the small-frame size pin at most `pinned_max`
/// between them: the frame that would pass it closes its connection
/// before the server allocates it, and a whole frame gives its share back.
#[test]
fn partial_large_frames_pin_at_most_the_cap() {
    use agent_shim::limits::Limits;
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let limits = Limits {
        small_frame: 1024,
        pinned_max: 1 << 20,
        ..Limits::default()
    };
    let server =
        AgentServer::start_limited(&unix(&path), server::HealthService::new(false), limits)
            .unwrap();
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "{what}");
            thread::sleep(Duration::from_millis(5));
        }
    };
    let mut first = UnixStream::connect(&path).unwrap();
    first.write_all(&header(600 << 10, 1, 1)).unwrap();
    first.write_all(&[7; 1000]).unwrap();
    wait_for("the first frame reserved", &|| server.pinned() == 600 << 10);
    // A second would pass the cap: closed, nothing more pinned.
    let mut second = UnixStream::connect(&path).unwrap();
    second.write_all(&header(600 << 10, 1, 1)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.read(&mut byte), Ok(0) | Err(_)),
        "the second connection is closed"
    );
    assert_eq!(server.pinned(), 600 << 10);
    // Small frames are not counted: health checks go on.
    assert_serving(&path);
    // The first frame completes (its body does not decode; it is answered
    // with an error): its reservation is released.
    first.write_all(&vec![7; (600 << 10) - 1000]).unwrap();
    wait_for("the reservation released", &|| server.pinned() == 0);
    assert_serving(&path);
}

/// Issue 19's other attack, on the built binary with its own limits: 300
/// connections announcing frames just under ttRPC's 4 MiB and sending all
/// but the last byte. Unbounded, each pinned its 4 MiB; now at most
/// `PINNED_MAX` of payload is pinned, and the health check still answers.
#[test]
fn three_hundred_near_4_mib_partial_frames_stay_within_the_memory_cap() {
    use agent_shim::limits::{FRAME_MAX, PINNED_MAX};
    raise_nofile();
    let dir = TempDir::new();
    let path = dir.join("agent.sock");
    let addr = format!("unix://{}", path.display());
    let shim = Shim::start(&["--server-addr", &addr]);
    let pid = shim.child.id();
    let len = FRAME_MAX - 16;
    let body = vec![0x5a; len - 1];
    let mut streams = Vec::new();
    let mut cut = 0;
    for _ in 0..300 {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let sent = s
            .write_all(&header(len as u32, 1, 1))
            .and_then(|()| s.write_all(&body));
        match sent {
            Ok(()) => streams.push(s),
            Err(e) => {
                assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "write timed out");
                cut += 1;
            }
        }
    }
    assert_serving(&path);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> usize {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let (rss, peak) = (kib("VmRSS:"), kib("VmHWM:"));
    eprintln!("300 partial frames: {cut} cut off; agent-shim rss={rss} KiB peak={peak} KiB");
    let bound_kib = (PINNED_MAX + (64 << 20)) / 1024;
    assert!(peak <= bound_kib, "peak RSS {peak} KiB > {bound_kib} KiB");
    assert!(
        cut >= 300 - PINNED_MAX / len,
        "only {cut} connections cut off"
    );
    drop(streams);
    let (status, _) = shim.terminate();
    assert_eq!(status.code(), Some(0));
}
