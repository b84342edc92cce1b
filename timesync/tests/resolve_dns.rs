//! The resolver against files in a temporary directory and the test's own
//! DNS server on a loopback high port.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timesync::config::{NtpSource, NtpSourceKind};
use timesync::resolve::{ResolveError, Resolver};

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("timesync-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone)]
enum Dns {
    /// Answers with these addresses (A or AAAA, by family) for any name,
    /// with a CNAME first when `alias` is set.
    Answer {
        addresses: Vec<IpAddr>,
        alias: bool,
    },
    NxDomain,
    ServFail,
    Silent,
    /// A reply with the right ID whose answer section is cut short.
    Malformed,
    /// Garbage and a reply with another ID first, then the real answer.
    NoiseThenAnswer(Vec<IpAddr>),
}

struct FakeDns {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn record(rtype: u16, rdata: &[u8]) -> Vec<u8> {
    let mut r = vec![0xc0, 12];
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&60u32.to_be_bytes());
    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    r.extend_from_slice(rdata);
    r
}

/// The reply to `query` (a standard query as timesync sends it).
fn respond(query: &[u8], rcode: u8, behaviour: &Dns) -> Vec<u8> {
    let qname_end = 12 + query[12..].iter().position(|&b| b == 0).unwrap() + 1;
    let question_end = qname_end + 4;
    let qtype = u16::from_be_bytes([query[qname_end], query[qname_end + 1]]);
    let mut answers = Vec::new();
    let addresses = match behaviour {
        Dns::Answer { addresses, .. } | Dns::NoiseThenAnswer(addresses) => addresses.clone(),
        _ => Vec::new(),
    };
    let mut owner_is_alias = false;
    if let Dns::Answer { alias: true, .. } = behaviour {
        // qname CNAME alias.<qname>; the addresses belong to the alias.
        answers.push(record(5, &[5, b'a', b'l', b'i', b'a', b's', 0xc0, 12]));
        owner_is_alias = true;
    }
    let alias_offset = (question_end + 12) as u8;
    for address in addresses {
        let (rtype, bytes) = match address {
            IpAddr::V4(a) => (1, a.octets().to_vec()),
            IpAddr::V6(a) => (28, a.octets().to_vec()),
        };
        if rtype == qtype {
            let mut r = record(rtype, &bytes);
            if owner_is_alias {
                r[1] = alias_offset;
            }
            answers.push(r);
        }
    }
    let mut reply = query[..question_end].to_vec();
    reply[2] = 0x81;
    reply[3] = 0x80 | rcode;
    reply[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for answer in answers {
        reply.extend_from_slice(&answer);
    }
    reply
}

fn start_dns(bind: &str, behaviour: Dns) -> FakeDns {
    let socket = UdpSocket::bind(bind).unwrap();
    start_dns_on(socket, behaviour)
}

fn start_dns_on(socket: UdpSocket, behaviour: Dns) -> FakeDns {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (queries, stop) = (queries.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                queries.fetch_add(1, Ordering::Relaxed);
                let query = &buffer[..len];
                let send = |bytes: &[u8]| {
                    socket.send_to(bytes, from).unwrap();
                };
                match &behaviour {
                    Dns::Answer { .. } => send(&respond(query, 0, &behaviour)),
                    Dns::NxDomain => send(&respond(query, 3, &behaviour)),
                    Dns::ServFail => send(&respond(query, 2, &behaviour)),
                    Dns::Silent => {}
                    Dns::Malformed => {
                        let mut reply = respond(query, 0, &behaviour);
                        reply[7] = 3; // three answers, none present
                        reply.extend_from_slice(&[0xc0, 12, 0, 1]);
                        send(&reply);
                    }
                    Dns::NoiseThenAnswer(_) => {
                        send(b"\xff");
                        let mut wrong_id = respond(query, 0, &behaviour);
                        wrong_id[0] ^= 0xff;
                        // Would poison the result if accepted.
                        wrong_id.extend_from_slice(&record(1, &[6, 6, 6, 6]));
                        wrong_id[7] += 1;
                        send(&wrong_id);
                        send(&respond(query, 0, &behaviour));
                    }
                }
            }
        })
    };
    FakeDns {
        addr,
        queries,
        stop,
        thread: Some(thread),
    }
}

fn resolver(dir: &TempDir, resolv_conf: &str, port: u16) -> Resolver {
    Resolver {
        hosts_path: dir.write("hosts", "127.0.0.1 localhost\n192.0.2.50 filed.example\n"),
        resolv_conf_path: dir.write("resolv.conf", resolv_conf),
        dns_port: port,
        timeout: Duration::from_millis(300),
        attempts: 2,
    }
}

fn ips(addresses: &[&str]) -> Vec<IpAddr> {
    addresses.iter().map(|a| a.parse().unwrap()).collect()
}

fn with_port(addresses: &[&str], port: u16) -> Vec<SocketAddr> {
    ips(addresses)
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

#[test]
fn numeric_and_hosts_file_need_no_dns() {
    let dir = TempDir::new("resolve-files");
    // No name server at all: only numeric and /etc/hosts names resolve.
    let r = resolver(&dir, "", 53);
    assert_eq!(
        r.resolve("192.0.2.1", 123).unwrap(),
        with_port(&["192.0.2.1"], 123)
    );
    assert_eq!(r.resolve("[::1]", 123).unwrap(), with_port(&["::1"], 123));
    assert_eq!(r.resolve("::1", 1123).unwrap(), with_port(&["::1"], 1123));
    assert_eq!(
        r.resolve("FILED.example.", 123).unwrap(),
        with_port(&["192.0.2.50"], 123)
    );
    assert_eq!(
        r.resolve("localhost", 9).unwrap(),
        with_port(&["127.0.0.1"], 9)
    );
    let err = r.resolve("nowhere.example", 123).unwrap_err();
    assert!(matches!(err, ResolveError::NoNameservers { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("`nowhere.example`"), "{message}");
    assert!(message.contains("resolv.conf"), "{message}");
}

#[test]
fn dns_a_and_aaaa() {
    let dir = TempDir::new("resolve-dns");
    let dns = start_dns(
        "127.0.0.1:0",
        Dns::Answer {
            addresses: ips(&["2001:db8::1", "192.0.2.1", "192.0.2.2"]),
            alias: false,
        },
    );
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    assert_eq!(
        r.resolve("ntp.example", 123).unwrap(),
        with_port(&["192.0.2.1", "192.0.2.2", "2001:db8::1"], 123)
    );
    // One A and one AAAA query.
    assert_eq!(dns.queries.load(Ordering::Relaxed), 2);
    // The hosts file wins over DNS.
    assert_eq!(
        r.resolve("filed.example", 123).unwrap(),
        with_port(&["192.0.2.50"], 123)
    );
}

#[test]
fn dns_through_a_cname() {
    let dir = TempDir::new("resolve-cname");
    let dns = start_dns(
        "127.0.0.1:0",
        Dns::Answer {
            addresses: ips(&["192.0.2.9"]),
            alias: true,
        },
    );
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    assert_eq!(
        r.resolve("time.example", 123).unwrap(),
        with_port(&["192.0.2.9"], 123)
    );
}

#[test]
fn pool_gives_several_addresses_and_server_one() {
    let dir = TempDir::new("resolve-pool");
    let six = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
        "192.0.2.6",
    ];
    let dns = start_dns(
        "127.0.0.1:0",
        Dns::Answer {
            addresses: ips(&six),
            alias: false,
        },
    );
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    let mut source = NtpSource {
        line: 1,
        kind: NtpSourceKind::Pool,
        host: "pool.example".into(),
        iburst: true,
        minpoll: 6,
        maxpoll: 10,
        port: 123,
        polltarget: 16,
    };
    assert_eq!(
        r.resolve("pool.example", 123).unwrap(),
        with_port(&six, 123)
    );
    assert_eq!(
        r.resolve_source(&source).unwrap(),
        with_port(&six[..4], 123)
    );
    source.kind = NtpSourceKind::Server;
    source.port = 1234;
    assert_eq!(
        r.resolve_source(&source).unwrap(),
        with_port(&six[..1], 1234)
    );
}

#[test]
fn nxdomain_is_final() {
    let dir = TempDir::new("resolve-nx");
    let dns = start_dns("127.0.0.1:0", Dns::NxDomain);
    let r = resolver(
        &dir,
        "nameserver 127.0.0.1\nnameserver 127.0.0.1\n",
        dns.addr.port(),
    );
    let err = r.resolve("missing.example", 123).unwrap_err();
    assert_eq!(
        err,
        ResolveError::NotFound {
            host: "missing.example".into(),
            server: dns.addr,
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "`missing.example` not found: name server {} has no address for it",
            dns.addr
        )
    );
    // The second server was not asked.
    assert_eq!(dns.queries.load(Ordering::Relaxed), 2);
}

#[test]
fn silent_server_gives_a_clear_error_in_time() {
    let dir = TempDir::new("resolve-silent");
    let dns = start_dns("127.0.0.1:0", Dns::Silent);
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    let start = Instant::now();
    let err = r.resolve("ntp.example", 123).unwrap_err();
    let elapsed = start.elapsed();
    // Two attempts of 300 ms.
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot resolve `ntp.example`: no name server answered \
             ({0}: no reply within 300ms, {0}: no reply within 300ms)",
            dns.addr
        )
    );
    assert!(!err.is_permanent());
    assert_eq!(dns.queries.load(Ordering::Relaxed), 4);
}

#[test]
fn falls_back_to_the_next_server() {
    let dir = TempDir::new("resolve-fallback");
    // Same port on 127.0.0.1 (silent) and ::1 (answering).
    let (silent, answering) = loop {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        if let Ok(answering) = UdpSocket::bind(("::1", port)) {
            break (silent, answering);
        }
    };
    let port = silent.local_addr().unwrap().port();
    let silent = start_dns_on(silent, Dns::Silent);
    let answering = start_dns_on(answering, Dns::ServFail);
    let r = resolver(&dir, "nameserver 127.0.0.1\nnameserver ::1\n", port);
    let err = r.resolve("ntp.example", 123).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&format!("[::1]:{port}: server failure (SERVFAIL)")),
        "{message}"
    );
    assert!(
        message.contains(&format!("127.0.0.1:{port}: no reply")),
        "{message}"
    );
    drop(answering);
    let answering = start_dns_on(
        UdpSocket::bind(("::1", port)).unwrap(),
        Dns::Answer {
            addresses: ips(&["192.0.2.77"]),
            alias: false,
        },
    );
    assert_eq!(
        r.resolve("ntp.example", 123).unwrap(),
        with_port(&["192.0.2.77"], 123)
    );
    assert!(silent.queries.load(Ordering::Relaxed) >= 2);
    assert_eq!(answering.queries.load(Ordering::Relaxed), 2);
}

#[test]
fn malformed_reply_is_an_error_not_a_panic() {
    let dir = TempDir::new("resolve-malformed");
    let dns = start_dns("127.0.0.1:0", Dns::Malformed);
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    let err = r.resolve("ntp.example", 123).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("`ntp.example`"), "{message}");
    assert!(message.contains("malformed reply"), "{message}");
}

#[test]
fn noise_and_wrong_ids_are_ignored() {
    let dir = TempDir::new("resolve-noise");
    let dns = start_dns("127.0.0.1:0", Dns::NoiseThenAnswer(ips(&["192.0.2.3"])));
    let r = resolver(&dir, "nameserver 127.0.0.1\n", dns.addr.port());
    assert_eq!(
        r.resolve("ntp.example", 123).unwrap(),
        with_port(&["192.0.2.3"], 123)
    );
}

#[test]
fn invalid_names_are_permanent_errors() {
    let dir = TempDir::new("resolve-invalid");
    let r = resolver(&dir, "nameserver 127.0.0.1\n", 9);
    for name in ["", "a..b", "bad name", "x.\u{e9}"] {
        let err = r.resolve(name, 123).unwrap_err();
        assert!(err.is_permanent(), "{name}: {err:?}");
        assert_eq!(err.host(), name);
    }
}
