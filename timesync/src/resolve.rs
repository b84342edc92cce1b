//! Host name resolution for NTP sources, without glibc's NSS.
//!
//! timesync is a static binary: glibc cannot load NSS modules there, so
//! std's `ToSocketAddrs` is not used for names. Instead, in this order:
//!
//! 1. numeric addresses: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, and
//!    IPv6 with a numeric zone (`fe80::1%2`);
//! 2. the hosts file (`/etc/hosts`; every line naming the host, in order);
//! 3. DNS over UDP to the `nameserver`s of `/etc/resolv.conf` (at most 3, as
//!    glibc; `options timeout:N attempts:N` are honoured). Each name server
//!    gets an A and an AAAA query at once from a fresh socket on a random
//!    port (bound to port 0: the kernel picks it), each with a random 16-bit
//!    ID. A reply counts only if it comes from that server's address and
//!    port, carries one of our IDs, and echoes our question. The servers are
//!    tried in turn, `attempts` rounds, `timeout` per server and round.
//!    NXDOMAIN, or NOERROR without addresses for both types, is final (as in
//!    glibc); a timeout, SERVFAIL, REFUSED or a malformed reply moves on to
//!    the next server. Search domains are not applied; truncated replies are
//!    used as far as they are complete (no TCP fallback).
//!
//! Paths and the DNS port are fields of [`Resolver`] so that tests can point
//! them at a temporary directory and a fake server on a high port
//! (resolv.conf itself has no port syntax).
//!
//! The DNS encoder and parser are written here (about 200 lines) rather than
//! taken from a crate: only A, AAAA and CNAME records are needed, and every
//! read is bounds-checked (`get`, never indexing), name compression pointers
//! are limited in number, and names in length. Nothing here panics on any
//! reply.
//!
//! The daemon never waits for a name server: [`Resolver::start`] answers
//! at once from numbers and the hosts file, or returns a [`Lookup`] whose
//! socket and deadline join the daemon's own poll(2), so PHC samples, NTP
//! replies and signals are served while a lookup is outstanding (up to
//! `attempts × servers × timeout`). [`Resolver::resolve`] drives the same
//! lookup to its end for `--once`. A failure carries the host and the
//! servers tried; [`Backoff`] gives the caller's retry delays.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{NtpSource, NtpSourceKind};

pub const DEFAULT_HOSTS_PATH: &str = "/etc/hosts";
pub const DEFAULT_RESOLV_CONF_PATH: &str = "/etc/resolv.conf";
pub const DNS_PORT: u16 = 53;
/// glibc's MAXNS: further `nameserver` lines are ignored.
pub const MAX_NAMESERVERS: usize = 3;
/// How many addresses of a `pool` are used (chrony's default `maxsources`).
pub const POOL_MAX_SOURCES: usize = 4;
/// Default wait per server and round (glibc waits 5 s; a daemon at boot
/// would rather move on to the next server).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_ATTEMPTS: u32 = 2;
/// glibc's caps on `options timeout:` and `attempts:`.
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
/// Largest name on the wire, length bytes included (RFC 1035).
const MAX_NAME_WIRE_LEN: usize = 255;
const MAX_LABEL_LEN: usize = 63;
/// More compression pointers than this in one name is a loop.
const MAX_POINTERS: usize = 32;
/// Receive buffer: UDP DNS without EDNS is at most 512 bytes, but accept
/// more from servers that send it anyway.
const RECEIVE_BUFFER: usize = 4096;
const RCODE_NXDOMAIN: u8 = 3;

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("invalid host name `{host}`: {reason}")]
    InvalidName { host: String, reason: &'static str },
    #[error(
        "cannot resolve `{host}`: not in {} and no name server in {}",
        hosts.display(),
        resolv_conf.display()
    )]
    NoNameservers {
        host: String,
        hosts: PathBuf,
        resolv_conf: PathBuf,
    },
    #[error("`{host}` not found: name server {server} has no address for it")]
    NotFound { host: String, server: SocketAddr },
    #[error(
        "cannot resolve `{host}`: no name server answered ({})",
        ServerFailures(tried)
    )]
    NoAnswer {
        host: String,
        /// Every server and round tried, in order.
        tried: Vec<ServerFailure>,
    },
}

impl ResolveError {
    /// The host that failed to resolve.
    pub fn host(&self) -> &str {
        match self {
            ResolveError::InvalidName { host, .. }
            | ResolveError::NoNameservers { host, .. }
            | ResolveError::NotFound { host, .. }
            | ResolveError::NoAnswer { host, .. } => host,
        }
    }

    /// Retrying cannot help until the configuration changes.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ResolveError::InvalidName { .. })
    }
}

/// One name server that did not answer usefully, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailure {
    pub server: SocketAddr,
    pub reason: String,
}

struct ServerFailures<'a>(&'a [ServerFailure]);

impl fmt::Display for ServerFailures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {}", failure.server, failure.reason)?;
        }
        Ok(())
    }
}

/// Delays between retries of a failed resolution: 16 s, doubling up to
/// 1024 s (about chrony's range), until [`reset`](Self::reset).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const MIN: Duration = Duration::from_secs(16);
    pub const MAX: Duration = Duration::from_secs(1024);

    /// The delay before the next try, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = Self::MIN
            .checked_mul(1 << self.failures.min(16))
            .unwrap_or(Self::MAX)
            .min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Where names are looked up. `Default` is the system's files and port 53.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    pub hosts_path: PathBuf,
    pub resolv_conf_path: PathBuf,
    /// Port of every name server (53; tests use a high port).
    pub dns_port: u16,
    /// Wait per server and round, unless resolv.conf says `timeout:N`.
    pub timeout: Duration,
    /// Rounds over all servers, unless resolv.conf says `attempts:N`.
    pub attempts: u32,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            hosts_path: DEFAULT_HOSTS_PATH.into(),
            resolv_conf_path: DEFAULT_RESOLV_CONF_PATH.into(),
            dns_port: DNS_PORT,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

/// `host` as a numeric address with `port`: IPv4, IPv6, bracketed IPv6,
/// IPv6 with a numeric zone index.
pub fn parse_numeric(host: &str, port: u16) -> Option<SocketAddr> {
    let inner = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = inner.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    if inner.contains(':') && inner.contains('%') {
        return format!("[{inner}]:{port}").parse().ok();
    }
    None
}

/// Addresses of `name` in a hosts file's text, in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(address) = words.next() else {
            continue;
        };
        // A zone (`fe80::1%eth0`) cannot be kept in an IpAddr: drop it.
        let address = address.split('%').next().unwrap_or_default();
        let Ok(address) = address.parse::<IpAddr>() else {
            continue;
        };
        if words.any(|alias| {
            alias
                .strip_suffix('.')
                .unwrap_or(alias)
                .eq_ignore_ascii_case(name)
        }) {
            found.push(address);
        }
    }
    found
}

/// What resolv.conf says that matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// At most [`MAX_NAMESERVERS`], in file order.
    pub nameservers: Vec<IpAddr>,
    /// `options timeout:N` (capped at 30 s).
    pub timeout: Option<Duration>,
    /// `options attempts:N` (capped at 5).
    pub attempts: Option<u32>,
}

/// Parses resolv.conf text. Unknown lines and bad values are ignored, as
/// glibc does.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let Some(address) = words.next() else {
                    continue;
                };
                let address = address.split('%').next().unwrap_or_default();
                if let Ok(address) = address.parse::<IpAddr>() {
                    if conf.nameservers.len() < MAX_NAMESERVERS {
                        conf.nameservers.push(address);
                    }
                }
            }
            Some("options") => {
                for option in words {
                    if let Some(value) = option.strip_prefix("timeout:") {
                        if let Ok(seconds) = value.parse::<u64>() {
                            conf.timeout =
                                Some(Duration::from_secs(seconds.clamp(1, MAX_TIMEOUT_SECS)));
                        }
                    } else if let Some(value) = option.strip_prefix("attempts:") {
                        if let Ok(attempts) = value.parse::<u32>() {
                            conf.attempts = Some(attempts.clamp(1, MAX_ATTEMPTS));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

/// Checks `host` as a DNS name and returns it in wire form (length-prefixed
/// labels, lower case, final zero byte).
fn encode_name(host: &str) -> Result<Vec<u8>, &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("empty name");
    }
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, `-` and `_` are allowed");
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > MAX_NAME_WIRE_LEN {
        return Err("name longer than 253 bytes");
    }
    Ok(wire)
}

/// A standard query (recursion desired) for `name` (wire form) and `qtype`.
fn encode_query(id: u16, name: &[u8], qtype: u16) -> Vec<u8> {
    let mut query = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    query.extend_from_slice(&id.to_be_bytes());
    query.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    query.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    query.extend_from_slice(&[0; 6]); // AN, NS, AR
    query.extend_from_slice(name);
    query.extend_from_slice(&qtype.to_be_bytes());
    query.extend_from_slice(&CLASS_IN.to_be_bytes());
    query
}

/// What is wrong with a DNS reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsError {
    Truncated,
    NotAResponse,
    WrongId,
    QuestionMismatch,
    BadLabel,
    NameTooLong,
    PointerLoop,
    /// TC bit set and no complete address record.
    TruncatedWithoutAddresses,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DnsError::Truncated => "reply ends inside a record",
            DnsError::NotAResponse => "not a response to a standard query",
            DnsError::WrongId => "unexpected query ID",
            DnsError::QuestionMismatch => "question section does not match the query",
            DnsError::BadLabel => "invalid label type",
            DnsError::NameTooLong => "name longer than 255 bytes",
            DnsError::PointerLoop => "too many compression pointers",
            DnsError::TruncatedWithoutAddresses => {
                "truncated reply without addresses (TCP fallback not supported)"
            }
        })
    }
}

/// The useful content of a well-formed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// NOERROR; possibly empty (NODATA).
    Addresses(Vec<IpAddr>),
    NxDomain,
    /// Another RCODE (SERVFAIL, REFUSED, ...).
    ServerError(u8),
}

/// Bounds-checked reads from a message.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let end = self.pos.checked_add(n).ok_or(DnsError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(DnsError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u16(&mut self) -> Result<u16, DnsError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes(
            bytes.try_into().map_err(|_| DnsError::Truncated)?,
        ))
    }

    fn u32(&mut self) -> Result<u32, DnsError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(
            bytes.try_into().map_err(|_| DnsError::Truncated)?,
        ))
    }

    /// A possibly compressed name, in lower-case wire form.
    fn name(&mut self) -> Result<Vec<u8>, DnsError> {
        let mut name = Vec::new();
        let mut cursor = self.pos;
        let mut pointers = 0;
        let mut end_of_name = None;
        loop {
            let len = *self.data.get(cursor).ok_or(DnsError::Truncated)?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    name.push(0);
                    end_of_name.get_or_insert(cursor + 1);
                    break;
                }
                0x00 => {
                    let start = cursor + 1;
                    let label = self
                        .data
                        .get(start..start + usize::from(len))
                        .ok_or(DnsError::Truncated)?;
                    name.push(len);
                    name.extend(label.iter().map(u8::to_ascii_lowercase));
                    if name.len() >= MAX_NAME_WIRE_LEN {
                        return Err(DnsError::NameTooLong);
                    }
                    cursor = start + usize::from(len);
                }
                0xc0 => {
                    let low = *self.data.get(cursor + 1).ok_or(DnsError::Truncated)?;
                    end_of_name.get_or_insert(cursor + 2);
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(DnsError::PointerLoop);
                    }
                    cursor = usize::from(len & 0x3f) << 8 | usize::from(low);
                }
                _ => return Err(DnsError::BadLabel),
            }
        }
        self.pos = end_of_name.unwrap_or(cursor);
        Ok(name)
    }
}

struct Record<'a> {
    owner: Vec<u8>,
    rtype: u16,
    class: u16,
    rdata: &'a [u8],
    /// Offset of `rdata` in the message (names in it may point backwards).
    rdata_pos: usize,
}

fn read_record<'a>(reader: &mut Reader<'a>) -> Result<Record<'a>, DnsError> {
    let owner = reader.name()?;
    let rtype = reader.u16()?;
    let class = reader.u16()?;
    let _ttl = reader.u32()?;
    let rdlength = reader.u16()?;
    let rdata_pos = reader.pos;
    let rdata = reader.take(usize::from(rdlength))?;
    Ok(Record {
        owner,
        rtype,
        class,
        rdata,
        rdata_pos,
    })
}

/// Parses a reply to the query `id` for `qname` (wire form, lower case) and
/// `qtype`: the header, the question, then the address records of the
/// answer section that belong to `qname` or an alias of it (CNAME chain).
pub fn parse_reply(
    message: &[u8],
    id: u16,
    qname: &[u8],
    qtype: u16,
) -> Result<DnsAnswer, DnsError> {
    let mut reader = Reader {
        data: message,
        pos: 0,
    };
    if reader.u16()? != id {
        return Err(DnsError::WrongId);
    }
    let flags = reader.u16()?;
    let (qdcount, ancount) = (reader.u16()?, reader.u16()?);
    reader.take(4)?; // NSCOUNT, ARCOUNT
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if !is_response || opcode != 0 {
        return Err(DnsError::NotAResponse);
    }
    let truncated = flags & 0x0200 != 0;
    let rcode = (flags & 0xf) as u8;
    if rcode != 0 && rcode != RCODE_NXDOMAIN {
        // FORMERR, SERVFAIL, REFUSED...: servers may omit the question.
        return Ok(DnsAnswer::ServerError(rcode));
    }
    if qdcount != 1 {
        return Err(DnsError::QuestionMismatch);
    }
    let name = reader.name()?;
    if name != qname || reader.u16()? != qtype || reader.u16()? != CLASS_IN {
        return Err(DnsError::QuestionMismatch);
    }
    if rcode == RCODE_NXDOMAIN {
        return Ok(DnsAnswer::NxDomain);
    }
    let mut records = Vec::new();
    for _ in 0..ancount {
        match read_record(&mut reader) {
            Ok(record) => records.push(record),
            // A truncated reply: use the complete records.
            Err(_) if truncated => break,
            Err(err) => return Err(err),
        }
    }
    // Names that lead to `qname`'s addresses: itself and its aliases.
    let mut names = vec![qname.to_vec()];
    let mut grew = true;
    while grew && names.len() <= records.len() {
        grew = false;
        for record in &records {
            if record.rtype == TYPE_CNAME
                && record.class == CLASS_IN
                && names.contains(&record.owner)
            {
                let mut target = Reader {
                    data: message,
                    pos: record.rdata_pos,
                };
                let target = target.name()?;
                if !names.contains(&target) {
                    names.push(target);
                    grew = true;
                }
            }
        }
    }
    let addresses: Vec<IpAddr> = records
        .iter()
        .filter(|r| r.rtype == qtype && r.class == CLASS_IN && names.contains(&r.owner))
        .filter_map(|r| match (qtype, r.rdata.len()) {
            (TYPE_A, 4) => <[u8; 4]>::try_from(r.rdata)
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            (TYPE_AAAA, 16) => <[u8; 16]>::try_from(r.rdata)
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        })
        .collect();
    if truncated && addresses.is_empty() {
        return Err(DnsError::TruncatedWithoutAddresses);
    }
    Ok(DnsAnswer::Addresses(addresses))
}

/// A random 16-bit query ID from getrandom(2) (falls back on std's hasher
/// seed if the kernel refuses).
fn random_id() -> u16 {
    use rustix::rand::{getrandom, GetRandomFlags};
    let mut bytes = [0u8; 2];
    for flags in [GetRandomFlags::INSECURE, GetRandomFlags::NONBLOCK] {
        if let Ok(2) = getrandom(&mut bytes[..], flags) {
            return u16::from_be_bytes(bytes);
        }
    }
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish() as u16
}

/// What one name server said.
enum Outcome {
    Addresses(Vec<IpAddr>),
    NotFound,
    Failed(String),
}

#[derive(Debug)]
struct Query {
    id: u16,
    qtype: u16,
    answer: Option<DnsAnswer>,
}

/// How a resolution begins: answered at once (a numeric address, the hosts
/// file, an error), or a DNS [`Lookup`] under way.
#[derive(Debug)]
pub enum Start {
    Done(Result<Vec<SocketAddr>, ResolveError>),
    Pending(Lookup),
}

/// A DNS resolution under way, driven by its caller's poll loop: poll
/// [`Lookup::fd`] for input until [`Lookup::deadline`], then call
/// [`Lookup::on_readable`] or [`Lookup::on_deadline`]; each returns the
/// result once there is one. Nothing here blocks.
#[derive(Debug)]
pub struct Lookup {
    host: String,
    port: u16,
    qname: Vec<u8>,
    /// Each name server once per round, in order.
    plan: Vec<SocketAddr>,
    next: usize,
    timeout: Duration,
    exchange: Option<Exchange>,
    tried: Vec<ServerFailure>,
}

/// The A and AAAA queries to one name server.
#[derive(Debug)]
struct Exchange {
    socket: UdpSocket,
    server: SocketAddr,
    queries: [Query; 2],
    /// Monotonic seconds.
    deadline: f64,
    ignored: u32,
}

impl Lookup {
    /// The socket to poll for input (none once finished).
    pub fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.exchange.as_ref().map(|e| e.socket.as_fd())
    }

    /// When the server asked now has had its time (monotonic seconds).
    pub fn deadline(&self) -> f64 {
        self.exchange
            .as_ref()
            .map_or(f64::NEG_INFINITY, |e| e.deadline)
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Reads what arrived; the result once there is one.
    pub fn on_readable(&mut self, now: f64) -> Option<Result<Vec<SocketAddr>, ResolveError>> {
        let exchange = self.exchange.as_mut()?;
        match exchange.receive(&self.qname) {
            None => None,
            Some(outcome) => self.finish_server(outcome, now),
        }
    }

    /// At or after [`Lookup::deadline`]: the server asked has not
    /// answered; the next one is asked, or the lookup fails.
    pub fn on_deadline(&mut self, now: f64) -> Option<Result<Vec<SocketAddr>, ResolveError>> {
        match &self.exchange {
            Some(exchange) if now < exchange.deadline => None,
            Some(exchange) => {
                let outcome = exchange.verdict(self.timeout);
                self.finish_server(outcome, now)
            }
            None => self.ask_next(now),
        }
    }

    fn finish_server(
        &mut self,
        outcome: Outcome,
        now: f64,
    ) -> Option<Result<Vec<SocketAddr>, ResolveError>> {
        let server = self.exchange.take().map(|e| e.server)?;
        match outcome {
            Outcome::Addresses(ips) => Some(Ok(with_port(ips, self.port))),
            Outcome::NotFound => Some(Err(ResolveError::NotFound {
                host: self.host.clone(),
                server,
            })),
            Outcome::Failed(reason) => {
                log::debug!("resolving `{}`: name server {server}: {reason}", self.host);
                self.tried.push(ServerFailure { server, reason });
                self.ask_next(now)
            }
        }
    }

    /// Sends the queries to the next server of the plan.
    fn ask_next(&mut self, now: f64) -> Option<Result<Vec<SocketAddr>, ResolveError>> {
        loop {
            let Some(&server) = self.plan.get(self.next) else {
                return Some(Err(ResolveError::NoAnswer {
                    host: self.host.clone(),
                    tried: std::mem::take(&mut self.tried),
                }));
            };
            self.next += 1;
            match Exchange::start(server, &self.qname, now + self.timeout.as_secs_f64()) {
                Ok(exchange) => {
                    self.exchange = Some(exchange);
                    return None;
                }
                Err(reason) => self.tried.push(ServerFailure { server, reason }),
            }
        }
    }
}

impl Exchange {
    fn start(server: SocketAddr, qname: &[u8], deadline: f64) -> Result<Exchange, String> {
        let socket = match server {
            SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
        }
        .map_err(|err| format!("cannot open a socket: {err}"))?;
        socket
            .set_nonblocking(true)
            .map_err(|err| format!("cannot make the socket non-blocking: {err}"))?;
        let id_a = random_id();
        let mut id_aaaa = random_id();
        while id_aaaa == id_a {
            id_aaaa = id_aaaa.wrapping_add(1);
        }
        let queries = [
            Query {
                id: id_a,
                qtype: TYPE_A,
                answer: None,
            },
            Query {
                id: id_aaaa,
                qtype: TYPE_AAAA,
                answer: None,
            },
        ];
        for query in &queries {
            socket
                .send_to(&encode_query(query.id, qname, query.qtype), server)
                .map_err(|err| format!("cannot send: {err}"))?;
        }
        Ok(Exchange {
            socket,
            server,
            queries,
            deadline,
            ignored: 0,
        })
    }

    /// Takes every datagram waiting; an outcome once both queries are
    /// answered or the server failed.
    fn receive(&mut self, qname: &[u8]) -> Option<Outcome> {
        let mut buffer = [0u8; RECEIVE_BUFFER];
        loop {
            let (len, from) = match self.socket.recv_from(&mut buffer) {
                Ok(received) => received,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
                Err(err) => return Some(Outcome::Failed(format!("cannot receive: {err}"))),
            };
            let message = buffer.get(..len).unwrap_or_default();
            let id = message
                .get(..2)
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_be_bytes);
            let server = self.server;
            let query = self
                .queries
                .iter_mut()
                .find(|q| Some(q.id) == id && q.answer.is_none());
            let (Some(query), true) = (
                query,
                from.ip() == server.ip() && from.port() == server.port(),
            ) else {
                // Not ours (wrong sender, unknown or repeated ID): could be
                // spoofed, keep waiting for the real answer.
                self.ignored = self.ignored.saturating_add(1);
                continue;
            };
            match parse_reply(message, query.id, qname, query.qtype) {
                Ok(DnsAnswer::ServerError(rcode)) => {
                    return Some(Outcome::Failed(format!(
                        "server failure ({})",
                        rcode_name(rcode)
                    )))
                }
                Ok(answer) => query.answer = Some(answer),
                Err(err) => return Some(Outcome::Failed(format!("malformed reply: {err}"))),
            }
            if self.queries.iter().all(|q| q.answer.is_some()) {
                return Some(self.verdict(Duration::ZERO));
            }
        }
    }

    /// What the answers so far say (at the deadline, or when complete).
    fn verdict(&self, timeout: Duration) -> Outcome {
        let mut addresses = Vec::new();
        for query in &self.queries {
            if let Some(DnsAnswer::Addresses(found)) = &query.answer {
                addresses.extend_from_slice(found);
            }
        }
        if !addresses.is_empty() {
            return Outcome::Addresses(addresses);
        }
        let nxdomain = self
            .queries
            .iter()
            .any(|q| q.answer == Some(DnsAnswer::NxDomain));
        if nxdomain || self.queries.iter().all(|q| q.answer.is_some()) {
            return Outcome::NotFound;
        }
        let ignored = if self.ignored > 0 {
            format!(", {} unexpected datagrams ignored", self.ignored)
        } else {
            String::new()
        };
        Outcome::Failed(format!("no reply within {timeout:?}{ignored}"))
    }
}

/// Addresses with `port`, without duplicates, in order.
fn with_port(ips: Vec<IpAddr>, port: u16) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for ip in ips {
        let address = SocketAddr::new(ip, port);
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    addresses
}

/// Monotonic seconds (`CLOCK_MONOTONIC`, as the daemon's loop).
fn monotonic() -> f64 {
    crate::sysclock::monotonic_now()
}

impl Resolver {
    /// The addresses of `host` with `port`: IPv4 before IPv6 from DNS, in
    /// file order from the hosts file, without duplicates. Blocks until
    /// the DNS lookup ends (for `--once`); the daemon uses
    /// [`Resolver::start`] instead.
    pub fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let mut lookup = match self.start(host, port, monotonic()) {
            Start::Done(result) => return result,
            Start::Pending(lookup) => lookup,
        };
        loop {
            let wait = lookup.deadline() - monotonic();
            let readable = match lookup.fd() {
                Some(fd) if wait > 0.0 => {
                    use rustix::event::{poll, PollFd, PollFlags};
                    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                    let timeout = rustix::time::Timespec {
                        tv_sec: wait.trunc() as i64,
                        tv_nsec: ((wait.fract() * 1e9) as i64).clamp(0, 999_999_999),
                    };
                    matches!(poll(&mut fds, Some(&timeout)), Ok(n) if n > 0)
                }
                _ => false,
            };
            let now = monotonic();
            let result = if readable {
                lookup.on_readable(now)
            } else {
                lookup.on_deadline(now)
            };
            if let Some(result) = result {
                return result;
            }
        }
    }

    /// Begins resolving `host`: numeric addresses and the hosts file answer
    /// at once; otherwise the first name server is asked and the
    /// [`Lookup`] returned, to be driven from the caller's poll loop.
    pub fn start(&self, host: &str, port: u16, now: f64) -> Start {
        if let Some(address) = parse_numeric(host, port) {
            return Start::Done(Ok(vec![address]));
        }
        let qname = match encode_name(host) {
            Ok(qname) => qname,
            Err(reason) => {
                return Start::Done(Err(ResolveError::InvalidName {
                    host: host.to_owned(),
                    reason,
                }))
            }
        };
        // A missing or unreadable hosts file is not an error.
        if let Ok(text) = std::fs::read(&self.hosts_path) {
            let found = hosts_lookup(&String::from_utf8_lossy(&text), host);
            if !found.is_empty() {
                return Start::Done(Ok(with_port(found, port)));
            }
        }
        let conf = std::fs::read(&self.resolv_conf_path)
            .map(|text| parse_resolv_conf(&String::from_utf8_lossy(&text)))
            .unwrap_or_default();
        if conf.nameservers.is_empty() {
            return Start::Done(Err(ResolveError::NoNameservers {
                host: host.to_owned(),
                hosts: self.hosts_path.clone(),
                resolv_conf: self.resolv_conf_path.clone(),
            }));
        }
        let attempts = conf.attempts.unwrap_or(self.attempts).max(1);
        let plan = (0..attempts)
            .flat_map(|_| conf.nameservers.iter())
            .map(|&ip| SocketAddr::new(ip, self.dns_port))
            .collect();
        let mut lookup = Lookup {
            host: host.to_owned(),
            port,
            qname,
            plan,
            next: 0,
            timeout: conf.timeout.unwrap_or(self.timeout),
            exchange: None,
            tried: Vec::new(),
        };
        match lookup.ask_next(now) {
            Some(result) => Start::Done(result),
            None => Start::Pending(lookup),
        }
    }

    /// The addresses to poll for a configuration line: the first address
    /// for `server`, up to [`POOL_MAX_SOURCES`] for `pool`.
    pub fn resolve_source(&self, source: &NtpSource) -> Result<Vec<SocketAddr>, ResolveError> {
        self.resolve(&source.host, source.port)
            .map(|addresses| for_source(addresses, source))
    }
}

/// The addresses a configuration line uses: the first for `server`, up to
/// [`POOL_MAX_SOURCES`] for `pool`.
pub fn for_source(mut addresses: Vec<SocketAddr>, source: &NtpSource) -> Vec<SocketAddr> {
    addresses.truncate(match source.kind {
        NtpSourceKind::Server => 1,
        NtpSourceKind::Pool => POOL_MAX_SOURCES,
    });
    addresses
}

fn rcode_name(rcode: u8) -> String {
    match rcode {
        1 => "FORMERR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        4 => "NOTIMP".to_owned(),
        5 => "REFUSED".to_owned(),
        other => format!("rcode {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn numeric_addresses() {
        let cases = [
            ("192.0.2.1", "192.0.2.1:123"),
            ("::1", "[::1]:123"),
            ("[::1]", "[::1]:123"),
            ("[2001:db8::5]", "[2001:db8::5]:123"),
            ("fe80::1%2", "[fe80::1%2]:123"),
        ];
        for (host, expected) in cases {
            assert_eq!(
                parse_numeric(host, 123),
                Some(expected.parse().unwrap()),
                "{host}"
            );
        }
        for host in [
            "",
            "[::1",
            "::1]",
            "127.1",
            "1.2.3.4.5",
            "[192.0.2.1",
            "x%2",
        ] {
            assert_eq!(parse_numeric(host, 123), None, "{host}");
        }
    }

    #[test]
    fn hosts_file_lookup() {
        let text = "# comment\n127.0.0.1 localhost\n\
                    192.0.2.7\tntp.example ntp # trailing comment\n\
                    bogus ntp.example\n\
                    2001:db8::7 NTP.Example.\n\
                    fe80::7%eth0 ntp.example\n\
                    192.0.2.8 other\n";
        let found = hosts_lookup(text, "ntp.example");
        let expected: Vec<IpAddr> = ["192.0.2.7", "2001:db8::7", "fe80::7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(found, expected);
        assert_eq!(hosts_lookup(text, "ntp.example."), expected);
        assert_eq!(hosts_lookup(text, "ntp").len(), 1);
        assert!(hosts_lookup(text, "trailing").is_empty());
        assert!(hosts_lookup(text, "example").is_empty());
    }

    #[test]
    fn resolv_conf_parsing() {
        let conf = parse_resolv_conf(
            "# generated\nsearch example\nnameserver 10.0.0.1\nnameserver ::1\n\
             nameserver fe80::1%eth0\nnameserver 10.0.0.4\nnameserver bogus\n\
             options ndots:2 timeout:60 attempts:0\n",
        );
        assert_eq!(
            conf.nameservers,
            ["10.0.0.1", "::1", "fe80::1"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert_eq!(conf.timeout, Some(Duration::from_secs(30)));
        assert_eq!(conf.attempts, Some(1));
        assert_eq!(parse_resolv_conf(""), ResolvConf::default());
    }

    #[test]
    fn name_encoding_and_validation() {
        assert_eq!(
            encode_name("Pool.NTP.org.").unwrap(),
            b"\x04pool\x03ntp\x03org\x00"
        );
        assert_eq!(encode_name("a_b-c").unwrap(), b"\x05a_b-c\x00");
        for bad in ["", ".", "a..b", "a b", "é.org", &"a".repeat(64)] {
            assert!(encode_name(bad).is_err(), "{bad}");
        }
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(encode_name(&long).is_err());
        assert!(encode_name(&long[..253]).is_ok());
    }

    #[test]
    fn query_encoding() {
        let query = encode_query(0xbeef, b"\x03ntp\x00", TYPE_AAAA);
        assert_eq!(
            query,
            b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03ntp\x00\x00\x1c\x00\x01"
        );
    }

    /// A reply to `query` with `answers` (pre-encoded records) appended.
    fn reply(query: &[u8], rcode: u8, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut reply = query.to_vec();
        reply[2] = 0x81;
        reply[3] = 0x80 | rcode;
        reply[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for answer in answers {
            reply.extend_from_slice(answer);
        }
        reply
    }

    /// A record owned by the name at offset 12 (the question's), through
    /// a compression pointer.
    fn record(rtype: u16, rdata: &[u8]) -> Vec<u8> {
        record_named(&[0xc0, 12], rtype, rdata)
    }

    fn record_named(owner: &[u8], rtype: u16, rdata: &[u8]) -> Vec<u8> {
        let mut r = owner.to_vec();
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&300u32.to_be_bytes());
        r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        r.extend_from_slice(rdata);
        r
    }

    const QNAME: &[u8] = b"\x03ntp\x07example\x00";

    #[test]
    fn parses_addresses_and_follows_cnames() {
        let query = encode_query(7, QNAME, TYPE_A);
        // ntp.example CNAME time.example (pointer to "example" at 16);
        // time.example A 192.0.2.1; an unrelated A record is ignored.
        let cname_target = b"\x04time\xc0\x10";
        let time_owner_offset = (query.len() + 12) as u8;
        let message = reply(
            &query,
            0,
            &[
                record(TYPE_CNAME, cname_target),
                record_named(&[0xc0, time_owner_offset], TYPE_A, &[192, 0, 2, 1]),
                record_named(b"\x05other\x00", TYPE_A, &[192, 0, 2, 99]),
                record(TYPE_A, &[192, 0, 2, 2]),
                record(TYPE_A, &[1, 2, 3]), // wrong length: skipped
            ],
        );
        assert_eq!(
            parse_reply(&message, 7, QNAME, TYPE_A),
            Ok(DnsAnswer::Addresses(vec![
                "192.0.2.1".parse().unwrap(),
                "192.0.2.2".parse().unwrap()
            ]))
        );
        let query = encode_query(8, QNAME, TYPE_AAAA);
        let message = reply(
            &query,
            0,
            &[record(
                TYPE_AAAA,
                &[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            )],
        );
        assert_eq!(
            parse_reply(&message, 8, QNAME, TYPE_AAAA),
            Ok(DnsAnswer::Addresses(vec!["2001:db8::1".parse().unwrap()]))
        );
    }

    #[test]
    fn rcodes_and_mismatches() {
        let query = encode_query(7, QNAME, TYPE_A);
        assert_eq!(
            parse_reply(&reply(&query, 3, &[]), 7, QNAME, TYPE_A),
            Ok(DnsAnswer::NxDomain)
        );
        assert_eq!(
            parse_reply(&reply(&query, 2, &[]), 7, QNAME, TYPE_A),
            Ok(DnsAnswer::ServerError(2))
        );
        assert_eq!(
            parse_reply(&reply(&query, 0, &[]), 7, QNAME, TYPE_A),
            Ok(DnsAnswer::Addresses(vec![]))
        );
        let ok = reply(&query, 0, &[record(TYPE_A, &[192, 0, 2, 1])]);
        assert_eq!(parse_reply(&ok, 8, QNAME, TYPE_A), Err(DnsError::WrongId));
        assert_eq!(
            parse_reply(&ok, 7, b"\x03ntq\x07example\x00", TYPE_A),
            Err(DnsError::QuestionMismatch)
        );
        assert_eq!(
            parse_reply(&ok, 7, QNAME, TYPE_AAAA),
            Err(DnsError::QuestionMismatch)
        );
        let mut upper = ok.clone();
        upper[13..16].copy_from_slice(b"NTP");
        assert!(parse_reply(&upper, 7, QNAME, TYPE_A).is_ok());
        let mut not_response = ok.clone();
        not_response[2] &= 0x7f;
        assert_eq!(
            parse_reply(&not_response, 7, QNAME, TYPE_A),
            Err(DnsError::NotAResponse)
        );
        for len in 0..ok.len() {
            assert!(parse_reply(&ok[..len], 7, QNAME, TYPE_A).is_err(), "{len}");
        }
        // Truncated (TC) reply: complete records are used.
        let mut tc = reply(
            &query,
            0,
            &[
                record(TYPE_A, &[192, 0, 2, 1]),
                record(TYPE_A, &[192, 0, 2, 2]),
            ],
        );
        tc[2] |= 0x02;
        tc.truncate(tc.len() - 3);
        assert_eq!(
            parse_reply(&tc, 7, QNAME, TYPE_A),
            Ok(DnsAnswer::Addresses(vec!["192.0.2.1".parse().unwrap()]))
        );
        tc.truncate(query.len() + 5);
        assert_eq!(
            parse_reply(&tc, 7, QNAME, TYPE_A),
            Err(DnsError::TruncatedWithoutAddresses)
        );
    }

    #[test]
    fn hostile_names() {
        let query = encode_query(7, QNAME, TYPE_A);
        // A pointer to itself, and a two-pointer cycle.
        let self_loop = query.len() as u8;
        let looping = reply(
            &query,
            0,
            &[record_named(&[0xc0, self_loop], TYPE_A, &[1, 2, 3, 4])],
        );
        assert_eq!(
            parse_reply(&looping, 7, QNAME, TYPE_A),
            Err(DnsError::PointerLoop)
        );
        let mut cycle = reply(&query, 0, &[]);
        cycle[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = cycle.len() as u8;
        cycle.extend_from_slice(&[0xc0, at + 2, 0xc0, at]);
        assert_eq!(
            parse_reply(&cycle, 7, QNAME, TYPE_A),
            Err(DnsError::PointerLoop)
        );
        // Pointer past the end; extended label type.
        let past = reply(
            &query,
            0,
            &[record_named(&[0xff, 0xff], TYPE_A, &[1, 2, 3, 4])],
        );
        assert_eq!(
            parse_reply(&past, 7, QNAME, TYPE_A),
            Err(DnsError::Truncated)
        );
        let extended = reply(
            &query,
            0,
            &[record_named(&[0x41, 0], TYPE_A, &[1, 2, 3, 4])],
        );
        assert_eq!(
            parse_reply(&extended, 7, QNAME, TYPE_A),
            Err(DnsError::BadLabel)
        );
        // A name of 300 bytes built from pointers to a 63-byte label.
        let mut long = reply(&query, 0, &[]);
        long[6..8].copy_from_slice(&1u16.to_be_bytes());
        let base = long.len();
        long.push(63);
        long.extend_from_slice(&[b'a'; 63]);
        long.extend_from_slice(&[0xc0, base as u8]);
        assert_eq!(
            parse_reply(&long, 7, QNAME, TYPE_A),
            Err(DnsError::NameTooLong)
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [16, 32, 64, 128, 256, 512, 1024, 1024, 1024, 1024]);
        for _ in 0..100 {
            backoff.next_delay();
        }
        assert_eq!(backoff.next_delay(), Backoff::MAX);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Backoff::MIN);
    }

    #[test]
    fn random_ids_vary() {
        let ids: std::collections::HashSet<u16> = (0..50).map(|_| random_id()).collect();
        assert!(ids.len() > 40, "{}", ids.len());
    }

    #[test]
    fn errors_name_the_host() {
        let server: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let err = ResolveError::NoAnswer {
            host: "ntp.example".into(),
            tried: vec![
                ServerFailure {
                    server,
                    reason: "no reply within 1s".into(),
                },
                ServerFailure {
                    server: "[::1]:5353".parse().unwrap(),
                    reason: "server failure (SERVFAIL)".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "cannot resolve `ntp.example`: no name server answered \
             (127.0.0.1:5353: no reply within 1s, [::1]:5353: server failure (SERVFAIL))"
        );
        assert_eq!(err.host(), "ntp.example");
        assert!(!err.is_permanent());
        let invalid = Resolver::default().resolve("bad name", 123).unwrap_err();
        assert!(invalid.is_permanent());
        assert_eq!(
            invalid.to_string(),
            "invalid host name `bad name`: only letters, digits, `-` and `_` are allowed"
        );
    }

    proptest! {
        #[test]
        fn random_replies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_reply(&bytes, 7, QNAME, TYPE_A);
        }

        #[test]
        fn mutated_replies_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let query = encode_query(7, QNAME, TYPE_A);
            let mut message = reply(
                &query,
                0,
                &[record(TYPE_CNAME, b"\x04time\xc0\x10"), record(TYPE_A, &[192, 0, 2, 1])],
            );
            for (at, value) in flips {
                let len = message.len();
                message[at % len] = value;
            }
            message.truncate(cut % (message.len() + 1));
            let _ = parse_reply(&message, 7, QNAME, TYPE_A);
        }

        #[test]
        fn config_text_never_panics(text in ".{0,200}") {
            let _ = parse_resolv_conf(&text);
            let _ = hosts_lookup(&text, "ntp.example");
            let _ = parse_numeric(&text, 1);
            let _ = encode_name(&text);
        }
    }
}
