//! The NTP client: requests, the checks on a reply, one state machine per
//! server, and the selection among servers.
//!
//! # Layers
//!
//! * [`Request`] and [`check_reply`] are pure: a request is an NTPv4 client
//!   packet whose transmit timestamp is a random 64-bit nonce (as ntpd-rs and
//!   chrony send; our real send time never leaves the machine), and a reply
//!   is accepted only if its origin timestamp echoes that nonce. Every reason
//!   to refuse a reply is a [`Rejection`]; nothing here panics on any input.
//! * [`NtpServer`] is one server's poll state machine for a single-threaded
//!   poll(2) loop: no threads, no async runtime. The loop polls
//!   [`NtpServer::fd`] for reading, sleeps until [`NtpServer::next_deadline`]
//!   at the latest, and calls [`NtpServer::on_deadline`] /
//!   [`NtpServer::on_readable`], which returns a [`Sample`] when a reply
//!   improves the clock filter.
//! * [`measure_once`] is a blocking single exchange (`timesync --once`, tests).
//! * [`select_sources`] picks the servers whose error intervals agree
//!   (Marzullo's intersection, as chrony's source selection) and combines
//!   them.
//!
//! # Packets
//!
//! Encoding and decoding go through ntpd-rs's `ntp-proto` crate, pinned to an
//! exact version because its API is internal to ntpd-rs. Only the first 48
//! bytes of a reply (the NTPv4 header) are given to it: extension fields and
//! MACs are ignored (no authentication is configured), which also keeps its
//! extension-field parser out of reach of network input. The version is
//! checked here before decoding (3 or 4; an NTPv5 reply to an NTPv4 request is
//! refused). The origin check compares raw bytes, because `ntp-proto` does not
//! export the type of its own request identifier.
//!
//! # Timestamps
//!
//! `t1`..`t4` as in RFC 5905: `t2`/`t3` are the server's receive/transmit
//! timestamps, `t4` is `CLOCK_REALTIME` when the reply was read, and
//! `t1 = t4 - (m4 - m1)` where `m1`/`m4` are `CLOCK_MONOTONIC` at send and
//! receive. Both clocks run at the same (slewed) rate, so this equals the
//! real send time, except that a step of the clock between send and receive
//! cannot corrupt the measurement. Then
//! `offset = ((t2 - t1) + (t3 - t4)) / 2` and
//! `delay = max(0, (t4 - t1) - (t3 - t2))`; all differences are taken modulo
//! the NTP era (ntp-proto's wrapping subtraction). Clocks are only read in
//! this module, never set.
//!
//! # Sockets
//!
//! Each server gets one non-blocking UDP socket bound to the unspecified
//! address of its family and port 0: the kernel picks the source port at
//! random from `ip_local_port_range`. Together with the 64-bit nonce, an
//! off-path attacker has to guess both. The socket is not connected, so a
//! reply from another address or port reaches us and is counted as
//! [`Rejection::WrongSource`] instead of being dropped silently.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Cursor};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ntp_proto::{
    NoCipher, NtpAssociationMode, NtpDuration, NtpLeapIndicator, NtpPacket, NtpTimestamp,
};

use crate::clock::Sample;
use crate::config::NtpSource;

/// Length of the NTPv4 header, the whole of an unauthenticated packet.
pub const NTP_PACKET_LEN: usize = 48;
/// Replies whose root distance (root delay / 2 + root dispersion) reaches
/// this are refused (RFC 5905's MAXDISP, chrony's test 7).
pub const MAX_ROOT_DISTANCE: f64 = 16.0;
/// With `iburst`, the first [`IBURST_REQUESTS`] requests are this many
/// seconds apart (or the minpoll interval, if shorter), as chrony does.
pub const IBURST_INTERVAL: f64 = 2.0;
pub const IBURST_REQUESTS: u32 = 4;
/// A request is given up after this many seconds, or after the poll
/// interval if that is shorter.
pub const MAX_RESPONSE_WAIT: f64 = 4.0;
/// Poll exponents are clamped to this range (chrony's limits).
pub const MIN_POLL: i8 = -6;
pub const MAX_POLL: i8 = 24;
/// The poll interval grows after this many consecutive consistent samples.
pub const POLL_RAISE_AFTER: u32 = 4;
/// How many recent measurements the clock filter keeps.
pub const FILTER_LEN: usize = 4;
/// Dispersion growth rate (RFC 5905's PHI, 15 ppm): what the filter adds per
/// second of age to a measurement's error, and what the consistency check
/// allows for frequency error between two samples.
pub const PHI: f64 = 15e-6;
/// Offsets of two samples are consistent if they differ by less than half
/// the sum of their delays, plus this floor (seconds), plus PHI × their age
/// difference.
pub const CONSISTENCY_FLOOR: f64 = 1e-3;
/// A repeated problem with one server is logged as a warning at most once
/// per this many seconds; the other occurrences go to the debug level.
pub const LOG_INTERVAL: f64 = 600.0;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: i64 = 2_208_988_800;
/// Largest datagram read; replies with extension fields fit.
const RECEIVE_BUFFER: usize = 1024;
/// At most this many datagrams are read per `on_readable` call, so that a
/// flood on one socket cannot starve the rest of the loop.
const MAX_DATAGRAMS_PER_CALL: usize = 64;

/// Reads `CLOCK_MONOTONIC` in seconds (the scale of [`Sample::monotonic`]
/// and of every `now` in this module).
pub use crate::sysclock::monotonic_now;

/// Why a reply (or a datagram on the socket) was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// Shorter than the 48-byte header.
    TooShort,
    /// NTP version other than 3 or 4.
    BadVersion,
    /// ntp-proto could not decode the header.
    Malformed,
    /// Mode other than 4 (server).
    WrongMode,
    /// The origin timestamp is not the nonce we sent: a stale, duplicated or
    /// forged reply.
    WrongOrigin,
    /// No request is outstanding (a late or duplicated reply).
    Unsolicited,
    /// From an address or port other than the server's.
    WrongSource,
    /// Kiss-o'-Death RATE: poll less often.
    KissRate,
    /// Kiss-o'-Death DENY: stop using this server.
    KissDeny,
    /// Kiss-o'-Death RSTR: stop using this server.
    KissRstr,
    /// Stratum 0 with another kiss code.
    KissOther,
    /// Leap indicator 3: the server is not synchronised.
    LeapUnsynchronised,
    /// Stratum 16 or more: the server is not synchronised.
    StratumUnsynchronised,
    /// Zero receive or transmit timestamp.
    ZeroTimestamp,
    /// Root distance of [`MAX_ROOT_DISTANCE`] or more.
    RootDistance,
}

impl Rejection {
    /// Every variant, in declaration order.
    pub const ALL: [Rejection; 15] = [
        Rejection::TooShort,
        Rejection::BadVersion,
        Rejection::Malformed,
        Rejection::WrongMode,
        Rejection::WrongOrigin,
        Rejection::Unsolicited,
        Rejection::WrongSource,
        Rejection::KissRate,
        Rejection::KissDeny,
        Rejection::KissRstr,
        Rejection::KissOther,
        Rejection::LeapUnsynchronised,
        Rejection::StratumUnsynchronised,
        Rejection::ZeroTimestamp,
        Rejection::RootDistance,
    ];

    /// DENY and RSTR: the server asks us to go away.
    pub fn stops_server(self) -> bool {
        matches!(self, Rejection::KissDeny | Rejection::KissRstr)
    }

    /// A Kiss-o'-Death packet (stratum 0) that passed the origin check.
    pub fn is_kiss(self) -> bool {
        matches!(
            self,
            Rejection::KissRate | Rejection::KissDeny | Rejection::KissRstr | Rejection::KissOther
        )
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::TooShort => "reply shorter than 48 bytes",
            Rejection::BadVersion => "reply with an NTP version other than 3 or 4",
            Rejection::Malformed => "undecodable reply",
            Rejection::WrongMode => "reply not in server mode",
            Rejection::WrongOrigin => "origin timestamp does not match our request",
            Rejection::Unsolicited => "reply without an outstanding request",
            Rejection::WrongSource => "reply from an unexpected address or port",
            Rejection::KissRate => "kiss-o'-death RATE (polling too often)",
            Rejection::KissDeny => "kiss-o'-death DENY (access denied)",
            Rejection::KissRstr => "kiss-o'-death RSTR (access restricted)",
            Rejection::KissOther => "kiss-o'-death with an unknown code",
            Rejection::LeapUnsynchronised => "server unsynchronised (leap indicator 3)",
            Rejection::StratumUnsynchronised => "server unsynchronised (stratum 16 or more)",
            Rejection::ZeroTimestamp => "zero receive or transmit timestamp",
            Rejection::RootDistance => "root distance of 16 s or more",
        })
    }
}

/// Counters of what happened to one server's traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub accepted: u64,
    pub too_short: u64,
    pub bad_version: u64,
    pub malformed: u64,
    pub wrong_mode: u64,
    pub wrong_origin: u64,
    pub unsolicited: u64,
    pub wrong_source: u64,
    pub kiss_rate: u64,
    pub kiss_deny: u64,
    pub kiss_rstr: u64,
    pub kiss_other: u64,
    pub leap_unsynchronised: u64,
    pub stratum_unsynchronised: u64,
    pub zero_timestamp: u64,
    pub root_distance: u64,
    /// Requests that got no valid reply in time.
    pub timeouts: u64,
    pub send_errors: u64,
    pub receive_errors: u64,
}

impl Counters {
    fn slot(&mut self, rejection: Rejection) -> &mut u64 {
        match rejection {
            Rejection::TooShort => &mut self.too_short,
            Rejection::BadVersion => &mut self.bad_version,
            Rejection::Malformed => &mut self.malformed,
            Rejection::WrongMode => &mut self.wrong_mode,
            Rejection::WrongOrigin => &mut self.wrong_origin,
            Rejection::Unsolicited => &mut self.unsolicited,
            Rejection::WrongSource => &mut self.wrong_source,
            Rejection::KissRate => &mut self.kiss_rate,
            Rejection::KissDeny => &mut self.kiss_deny,
            Rejection::KissRstr => &mut self.kiss_rstr,
            Rejection::KissOther => &mut self.kiss_other,
            Rejection::LeapUnsynchronised => &mut self.leap_unsynchronised,
            Rejection::StratumUnsynchronised => &mut self.stratum_unsynchronised,
            Rejection::ZeroTimestamp => &mut self.zero_timestamp,
            Rejection::RootDistance => &mut self.root_distance,
        }
    }

    /// Counts one rejection.
    pub fn count(&mut self, rejection: Rejection) {
        let slot = self.slot(rejection);
        *slot = slot.saturating_add(1);
    }

    /// How many replies were rejected for `rejection`.
    pub fn rejected(&self, rejection: Rejection) -> u64 {
        *self.clone().slot(rejection)
    }

    /// Rejected datagrams, all reasons together.
    pub fn total_rejected(&self) -> u64 {
        Rejection::ALL
            .iter()
            .fold(0u64, |sum, &r| sum.saturating_add(self.rejected(r)))
    }
}

/// The leap second announced by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leap {
    None,
    InsertSecond,
    DeleteSecond,
}

/// One accepted reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Server minus local clock, seconds.
    pub offset: f64,
    /// Round trip minus the server's processing time, seconds, ≥ 0.
    pub delay: f64,
    /// The server's root delay and root dispersion, seconds.
    pub root_delay: f64,
    pub root_dispersion: f64,
    pub stratum: u8,
    pub leap: Leap,
    /// The server's reference ID, raw (an IPv4 address or ASCII code).
    pub reference_id: [u8; 4],
    /// `CLOCK_MONOTONIC` when the reply was read, seconds.
    pub monotonic: f64,
}

impl Measurement {
    /// Error at the server's reference: root delay / 2 + root dispersion.
    pub fn root_distance(&self) -> f64 {
        self.root_delay / 2.0 + self.root_dispersion
    }

    /// As the discipline takes it.
    pub fn sample(&self) -> Sample {
        Sample {
            monotonic: self.monotonic,
            offset: self.offset,
            delay: self.delay,
            root_distance: self.root_distance(),
        }
    }
}

/// A client request, with what is needed to check its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    packet: [u8; NTP_PACKET_LEN],
    sent_monotonic: f64,
}

impl Request {
    /// A new NTPv4 client request announcing poll exponent `poll`, with a
    /// fresh random transmit timestamp (ntp-proto draws it from `rand`'s
    /// thread RNG, seeded by getrandom(2)). `sent_monotonic` is
    /// `CLOCK_MONOTONIC` when it is sent (read it just before sending).
    pub fn new(poll: i8, sent_monotonic: f64) -> io::Result<Request> {
        let (packet, _) = NtpPacket::poll_message(ntp_proto::PollInterval::from_byte(poll as u8));
        let mut bytes = [0u8; NTP_PACKET_LEN];
        let mut cursor = Cursor::new(&mut bytes[..]);
        packet.serialize(&mut cursor, &NoCipher, None)?;
        if cursor.position() != NTP_PACKET_LEN as u64 {
            return Err(io::Error::other(format!(
                "ntp-proto wrote a {}-byte request instead of {NTP_PACKET_LEN}",
                cursor.position()
            )));
        }
        Ok(Request {
            packet: bytes,
            sent_monotonic,
        })
    }

    /// The bytes to send.
    pub fn packet(&self) -> &[u8; NTP_PACKET_LEN] {
        &self.packet
    }

    /// The random transmit timestamp: the server must echo it as origin.
    pub fn nonce(&self) -> [u8; 8] {
        field(&self.packet, 40).unwrap_or_default()
    }

    pub fn sent_monotonic(&self) -> f64 {
        self.sent_monotonic
    }

    /// Sets the send time: `CLOCK_MONOTONIC` read right before `sendto`,
    /// as late as user space can.
    pub fn stamp(&mut self, sent_monotonic: f64) {
        self.sent_monotonic = sent_monotonic;
    }
}

/// A datagram and when it arrived.
#[derive(Debug)]
struct Received {
    len: usize,
    from: SocketAddr,
    /// `CLOCK_REALTIME` and `CLOCK_MONOTONIC` at its arrival: the kernel's
    /// receive timestamp (`SO_TIMESTAMPNS`) carried onto the monotonic
    /// clock, or both read after `recvmsg` when the kernel gave none.
    realtime: SystemTime,
    monotonic: f64,
    kernel: bool,
}

/// Asks the kernel to timestamp each datagram as it arrives.
fn enable_kernel_timestamps(socket: &UdpSocket) -> bool {
    nix::sys::socket::setsockopt(
        socket.as_raw_fd(),
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    )
    .is_ok()
}

/// One datagram without waiting (`MSG_DONTWAIT`), with its arrival time.
fn receive(socket: &UdpSocket, buffer: &mut [u8]) -> io::Result<Received> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let mut iov = [io::IoSliceMut::new(buffer)];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let message = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let (realtime, monotonic) = (SystemTime::now(), monotonic_now());
    let kernel = message.cmsgs().find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmTimestampns(ts) => {
            let nanos = u64::try_from(ts.tv_sec())
                .ok()?
                .checked_mul(1_000_000_000)?
                .checked_add(u64::try_from(ts.tv_nsec()).ok()?)?;
            Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
        }
        _ => None,
    });
    let from = message
        .address
        .and_then(|address| {
            address
                .as_sockaddr_in()
                .map(|v4| SocketAddr::from((Ipv4Addr::from(v4.ip()), v4.port())))
                .or_else(|| {
                    address
                        .as_sockaddr_in6()
                        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
                })
        })
        .ok_or_else(|| io::Error::other("a datagram without a sender address"))?;
    let len = message.bytes;
    Ok(match kernel {
        // How long ago the kernel saw it, on the monotonic clock too
        // (never negative, never absurd: a bad stamp falls back).
        Some(arrived) => match realtime.duration_since(arrived) {
            Ok(ago) if ago < Duration::from_secs(1) => Received {
                len,
                from,
                realtime: arrived,
                monotonic: monotonic - ago.as_secs_f64(),
                kernel: true,
            },
            _ => Received {
                len,
                from,
                realtime,
                monotonic,
                kernel: false,
            },
        },
        None => Received {
            len,
            from,
            realtime,
            monotonic,
            kernel: false,
        },
    })
}

/// `N` bytes of `data` from `offset`, or `None` if they are not all there.
fn field<const N: usize>(data: &[u8], offset: usize) -> Option<[u8; N]> {
    data.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

/// `duration` in seconds. (ntp-proto's `to_seconds` divides by 2^32 - 1,
/// which is off by 0.5 s over an era; this is exact to the nanosecond.)
fn seconds(duration: NtpDuration) -> f64 {
    let (seconds, nanos) = duration.as_seconds_nanos();
    f64::from(seconds) + f64::from(nanos) * 1e-9
}

/// `time` as an NTP timestamp (seconds since 1900 modulo the era).
fn ntp_timestamp(time: SystemTime) -> NtpTimestamp {
    let (seconds, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => (since.as_secs() as i64, since.subsec_nanos()),
        Err(before) => {
            let before = before.duration();
            let seconds = -(before.as_secs() as i64);
            match before.subsec_nanos() {
                0 => (seconds, 0),
                nanos => (seconds - 1, 1_000_000_000 - nanos),
            }
        }
    };
    // Truncation to 32 bits is the era wrap.
    let era_seconds = seconds.wrapping_add(NTP_UNIX_OFFSET) as u32;
    NtpTimestamp::from_seconds_nanos_since_ntp_era(era_seconds, nanos)
}

/// Checks `reply` against `request` and computes the measurement.
///
/// `received_realtime` / `received_monotonic` are `CLOCK_REALTIME` and
/// `CLOCK_MONOTONIC` read as soon as the reply was received. The address it
/// came from is the caller's to check. Checks, in order: length, version,
/// mode, origin (so that a forged Kiss-o'-Death cannot stop or slow us),
/// kiss codes, leap indicator 3, stratum ≥ 16, zero timestamps, root
/// distance.
pub fn check_reply(
    reply: &[u8],
    request: &Request,
    received_realtime: SystemTime,
    received_monotonic: f64,
) -> Result<Measurement, Rejection> {
    let header = reply.get(..NTP_PACKET_LEN).ok_or(Rejection::TooShort)?;
    let first = header.first().copied().unwrap_or_default();
    if !(3..=4).contains(&((first >> 3) & 0b111)) {
        return Err(Rejection::BadVersion);
    }
    let (packet, _) =
        NtpPacket::deserialize(header, &NoCipher).map_err(|_| Rejection::Malformed)?;
    if packet.mode() != NtpAssociationMode::Server {
        return Err(Rejection::WrongMode);
    }
    if field::<8>(header, 24) != Some(request.nonce()) {
        return Err(Rejection::WrongOrigin);
    }
    if packet.is_kiss() {
        return Err(if packet.is_kiss_deny() {
            Rejection::KissDeny
        } else if packet.is_kiss_rstr() {
            Rejection::KissRstr
        } else if packet.is_kiss_rate(ntp_proto::PollInterval::from_byte(0)) {
            Rejection::KissRate
        } else {
            Rejection::KissOther
        });
    }
    let leap = match packet.leap() {
        NtpLeapIndicator::NoWarning => Leap::None,
        NtpLeapIndicator::Leap61 => Leap::InsertSecond,
        NtpLeapIndicator::Leap59 => Leap::DeleteSecond,
        NtpLeapIndicator::Unknown | NtpLeapIndicator::Unsynchronized => {
            return Err(Rejection::LeapUnsynchronised)
        }
    };
    if packet.stratum() >= 16 {
        return Err(Rejection::StratumUnsynchronised);
    }
    let (t2, t3) = (packet.receive_timestamp(), packet.transmit_timestamp());
    if t2 == NtpTimestamp::default() || t3 == NtpTimestamp::default() {
        return Err(Rejection::ZeroTimestamp);
    }
    let root_delay = seconds(packet.root_delay());
    let root_dispersion = seconds(packet.root_dispersion());
    if root_delay / 2.0 + root_dispersion >= MAX_ROOT_DISTANCE {
        return Err(Rejection::RootDistance);
    }
    let t4 = ntp_timestamp(received_realtime);
    // t4 - t1, from the monotonic clock (NaN-proof: max(NaN, 0) is 0).
    let elapsed = (received_monotonic - request.sent_monotonic).max(0.0);
    let server_hold = seconds(t3 - t2);
    let offset = (seconds(t2 - t4) + elapsed + seconds(t3 - t4)) / 2.0;
    let delay = (elapsed - server_hold).max(0.0);
    Ok(Measurement {
        offset,
        delay,
        root_delay,
        root_dispersion,
        stratum: packet.stratum(),
        leap,
        reference_id: field(header, 12).unwrap_or_default(),
        monotonic: received_monotonic,
    })
}

/// What went wrong in [`measure_once`] (or opening a server's socket).
#[derive(Debug, thiserror::Error)]
pub enum NtpError {
    #[error("cannot open a UDP socket for NTP server {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot send a request to NTP server {addr}")]
    Send {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot receive from NTP server {addr}")]
    Receive {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("NTP server {addr} answered with a {kiss}")]
    Kiss { addr: SocketAddr, kiss: Rejection },
    #[error(
        "no valid reply from NTP server {addr} within {timeout:?}{}",
        last_rejection.map(|r| format!(" (last reply refused: {r})")).unwrap_or_default()
    )]
    Timeout {
        addr: SocketAddr,
        timeout: Duration,
        last_rejection: Option<Rejection>,
    },
}

/// A UDP socket for talking to `addr`: the unspecified address of its
/// family, port 0 (the kernel picks a random ephemeral port).
fn client_socket(addr: SocketAddr) -> Result<UdpSocket, NtpError> {
    let bound = match addr {
        SocketAddr::V4(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)),
    };
    bound.map_err(|source| NtpError::Socket { addr, source })
}

/// Whether `from` is the server's address and port (the IPv6 flow label
/// and scope are not compared).
fn same_endpoint(from: SocketAddr, server: SocketAddr) -> bool {
    from.ip() == server.ip() && from.port() == server.port()
}

/// One blocking exchange with `addr`: sends a request and waits up to
/// `timeout` for a valid reply. Invalid datagrams are skipped (they may be
/// forged or stale); a Kiss-o'-Death that echoes our nonce ends the wait.
pub fn measure_once(addr: SocketAddr, timeout: Duration) -> Result<Measurement, NtpError> {
    let socket = client_socket(addr)?;
    // Timed as the daemon's replies are: by the kernel where it can.
    enable_kernel_timestamps(&socket);
    let deadline = Instant::now().checked_add(timeout);
    let mut request = Request::new(crate::config::DEFAULT_MINPOLL, 0.0)
        .map_err(|source| NtpError::Send { addr, source })?;
    request.stamp(monotonic_now());
    socket
        .send_to(request.packet(), addr)
        .map_err(|source| NtpError::Send { addr, source })?;
    let mut last_rejection = None;
    let mut buffer = [0u8; RECEIVE_BUFFER];
    loop {
        let remaining = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::from_secs(3600),
        };
        if remaining.is_zero() {
            return Err(NtpError::Timeout {
                addr,
                timeout,
                last_rejection,
            });
        }
        let wait = rustix::time::Timespec {
            tv_sec: i64::try_from(remaining.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(remaining.subsec_nanos()),
        };
        let mut fds = [rustix::event::PollFd::new(
            &socket,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => {
                return Err(NtpError::Receive {
                    addr,
                    source: err.into(),
                })
            }
        }
        match receive(&socket, &mut buffer) {
            Ok(Received {
                len,
                from,
                realtime,
                monotonic,
                ..
            }) => {
                if !same_endpoint(from, addr) {
                    last_rejection = Some(Rejection::WrongSource);
                    continue;
                }
                let reply = buffer.get(..len).unwrap_or_default();
                match check_reply(reply, &request, realtime, monotonic) {
                    Ok(measurement) => return Ok(measurement),
                    Err(kiss) if kiss.is_kiss() => return Err(NtpError::Kiss { addr, kiss }),
                    Err(rejection) => last_rejection = Some(rejection),
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(source) => return Err(NtpError::Receive { addr, source }),
        }
    }
}

/// Poll limits of one server, from its `server`/`pool` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollConfig {
    pub minpoll: i8,
    pub maxpoll: i8,
    pub iburst: bool,
    /// See [`NtpServer::steer_poll`].
    pub polltarget: u32,
}

impl From<&NtpSource> for PollConfig {
    fn from(source: &NtpSource) -> Self {
        PollConfig {
            minpoll: source.minpoll,
            maxpoll: source.maxpoll,
            iburst: source.iburst,
            polltarget: source.polltarget,
        }
    }
}

/// Whether a server is still polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerStatus {
    Active,
    /// It sent a DENY or RSTR kiss: never polled again.
    Stopped(Rejection),
}

#[derive(Debug, Clone)]
struct Pending {
    request: Request,
    timeout_at: f64,
}

/// The last [`FILTER_LEN`] measurements; yields the one with the smallest
/// delay (aged by [`PHI`]), but only if it is newer than the last one
/// yielded (RFC 5905's clock filter rule: never use a sample twice or go
/// back in time).
#[derive(Debug, Clone, Default)]
struct ClockFilter {
    measurements: VecDeque<Measurement>,
    last_used: Option<f64>,
}

impl ClockFilter {
    fn push(&mut self, new: Measurement) -> Option<Measurement> {
        self.measurements.push_back(new);
        while self.measurements.len() > FILTER_LEN {
            self.measurements.pop_front();
        }
        let score = |m: &Measurement| m.delay / 2.0 + PHI * (new.monotonic - m.monotonic).abs();
        let best = *self
            .measurements
            .iter()
            .min_by(|a, b| score(a).total_cmp(&score(b)))?;
        if self.last_used.is_some_and(|used| best.monotonic <= used) {
            return None;
        }
        self.last_used = Some(best.monotonic);
        Some(best)
    }

    fn clear(&mut self) {
        self.measurements.clear();
    }
}

/// Things logged per server, each rate-limited on its own.
#[derive(Debug, Clone, Copy)]
enum Event {
    Rejected(Rejection),
    Timeout,
    SendError,
    ReceiveError,
}

impl Event {
    fn index(self) -> usize {
        match self {
            Event::Rejected(rejection) => Rejection::ALL
                .iter()
                .position(|&r| r == rejection)
                .unwrap_or_default(),
            Event::Timeout => Rejection::ALL.len(),
            Event::SendError => Rejection::ALL.len() + 1,
            Event::ReceiveError => Rejection::ALL.len() + 2,
        }
    }
}

const EVENT_COUNT: usize = Rejection::ALL.len() + 3;

/// Per event, when it was last logged as a warning.
#[derive(Debug, Clone, Default)]
struct LogLimiter {
    last_warning: [Option<f64>; EVENT_COUNT],
}

impl LogLimiter {
    /// The level for `event` now: a warning the first time and once per
    /// [`LOG_INTERVAL`], debug otherwise.
    fn level(&mut self, event: Event, now: f64) -> log::Level {
        let Some(last) = self.last_warning.get_mut(event.index()) else {
            return log::Level::Debug;
        };
        match *last {
            Some(then) if now - then < LOG_INTERVAL => log::Level::Debug,
            _ => {
                *last = Some(now);
                log::Level::Warn
            }
        }
    }
}

/// One NTP server's client state machine. See the module documentation
/// for how a poll loop drives it.
#[derive(Debug)]
pub struct NtpServer {
    name: String,
    addr: SocketAddr,
    socket: UdpSocket,
    /// The last reply carried the kernel's receive timestamp.
    kernel_timestamps: bool,
    minpoll: i8,
    maxpoll: i8,
    /// Current poll exponent: requests are 2^poll seconds apart.
    poll: i8,
    /// Lowest poll exponent a RATE kiss leaves us.
    rate_floor: i8,
    /// Gaps still to be shortened by iburst.
    iburst_left: u32,
    pending: Option<Pending>,
    next_send: f64,
    reach: u8,
    consistent: u32,
    last: Option<Measurement>,
    filter: ClockFilter,
    /// See [`NtpServer::set_burst`].
    burst: bool,
    /// See [`NtpServer::steer_poll`]: the poll follows the regression.
    steered: bool,
    /// chrony's poll score: +1 raises the poll, below 0 lowers it.
    poll_score: f64,
    /// Samples' worth the regression should hold (`polltarget`).
    poll_target: f64,
    status: ServerStatus,
    counters: Counters,
    log: LogLimiter,
}

impl NtpServer {
    /// A server at `addr` (`name` is what the configuration called it, for
    /// messages). The first request is due at `now` (monotonic seconds).
    pub fn new(
        name: &str,
        addr: SocketAddr,
        config: PollConfig,
        now: f64,
    ) -> Result<NtpServer, NtpError> {
        let socket = client_socket(addr)?;
        socket
            .set_nonblocking(true)
            .map_err(|source| NtpError::Socket { addr, source })?;
        let kernel_timestamps = enable_kernel_timestamps(&socket);
        let minpoll = config.minpoll.clamp(MIN_POLL, MAX_POLL);
        let maxpoll = config.maxpoll.clamp(minpoll, MAX_POLL);
        Ok(NtpServer {
            name: name.to_owned(),
            addr,
            socket,
            kernel_timestamps,
            minpoll,
            maxpoll,
            poll: minpoll,
            rate_floor: minpoll,
            iburst_left: if config.iburst {
                IBURST_REQUESTS - 1
            } else {
                0
            },
            pending: None,
            next_send: now,
            reach: 0,
            consistent: 0,
            last: None,
            filter: ClockFilter::default(),
            burst: false,
            steered: false,
            poll_score: 0.5,
            poll_target: f64::from(config.polltarget.max(1)),
            status: ServerStatus::Active,
            counters: Counters::default(),
            log: LogLimiter::default(),
        })
    }

    /// Whether replies are timed by the kernel (`SO_TIMESTAMPNS`) rather
    /// than after `recvmsg` in user space.
    pub fn kernel_timestamps(&self) -> bool {
        self.kernel_timestamps
    }

    /// The socket, to poll for reading. It stays the same for the server's
    /// lifetime.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The local address of the socket (random port chosen by the kernel).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn status(&self) -> ServerStatus {
        self.status
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// NTP's 8-bit reach register: shifted left at each request, bit 0 set
    /// by a valid reply.
    pub fn reach(&self) -> u8 {
        self.reach
    }

    /// No valid reply to any of the last 8 requests.
    pub fn is_unreachable(&self) -> bool {
        self.reach == 0 && self.counters.requests >= 8
    }

    /// Current poll exponent (log2 seconds).
    pub fn poll_exponent(&self) -> i8 {
        self.poll
    }

    /// Seconds between requests now (shorter during iburst).
    pub fn poll_interval(&self) -> f64 {
        let interval = 2f64.powi(self.poll.into());
        if self.iburst_left > 0 {
            interval.min(IBURST_INTERVAL)
        } else {
            interval
        }
    }

    /// The newest accepted measurement, before the clock filter.
    pub fn last_measurement(&self) -> Option<&Measurement> {
        self.last.as_ref()
    }

    /// Forgets the filtered measurements: call after the clock was stepped,
    /// which made their offsets meaningless.
    pub fn reset_filter(&mut self) {
        self.filter.clear();
        self.last = None;
        self.consistent = 0;
    }

    /// Asks for a request at `now` instead of at the next poll (a burst the
    /// discipline wants after a suspected jump). Nothing changes while a
    /// request is outstanding: its reply is the sample wanted.
    pub fn request_now(&mut self, now: f64) {
        if self.pending.is_none() && self.status == ServerStatus::Active {
            self.next_send = self.next_send.min(now);
        }
    }

    /// While the discipline holds samples of this server and wants more
    /// (to confirm a jump or a first step), every valid reply is a sample:
    /// the clock filter, which yields only a reply with less delay than
    /// the last one used, could otherwise swallow the burst.
    pub fn set_burst(&mut self, burst: bool) {
        self.burst = burst;
    }

    /// When [`on_deadline`](Self::on_deadline) is due (monotonic seconds);
    /// infinite for a stopped server.
    pub fn next_deadline(&self) -> f64 {
        if self.status != ServerStatus::Active {
            return f64::INFINITY;
        }
        match &self.pending {
            Some(pending) => pending.timeout_at.min(self.next_send),
            None => self.next_send,
        }
    }

    /// Times out the outstanding request and/or sends the next one, as due
    /// at `now`.
    pub fn on_deadline(&mut self, now: f64) {
        if self.status != ServerStatus::Active {
            return;
        }
        if self.pending.as_ref().is_some_and(|p| now >= p.timeout_at) {
            self.pending = None;
            self.counters.timeouts = self.counters.timeouts.saturating_add(1);
            let level = self.log.level(Event::Timeout, now);
            log::log!(
                level,
                "NTP server {} ({}): no reply (reach {:03o}, {} timeouts)",
                self.name,
                self.addr,
                self.reach,
                self.counters.timeouts
            );
            self.on_trouble();
        }
        if now >= self.next_send {
            self.send(now);
        }
    }

    /// The poll schedule's part of sending a request at `now` (the socket
    /// is [`NtpServer::on_deadline`]'s): the next one is due a poll
    /// interval later, the reach register shifts. Returns that interval.
    /// A simulation without a server calls it for each exchange it models.
    pub fn request_sent(&mut self, now: f64) -> f64 {
        let gap = self.poll_interval();
        self.iburst_left = self.iburst_left.saturating_sub(1);
        self.next_send = now + gap;
        self.reach <<= 1;
        self.counters.requests = self.counters.requests.saturating_add(1);
        gap
    }

    fn send(&mut self, now: f64) {
        let gap = self.request_sent(now);
        let sent = Request::new(self.poll, 0.0).and_then(|mut request| {
            request.stamp(monotonic_now());
            self.socket.send_to(request.packet(), self.addr)?;
            Ok(request)
        });
        match sent {
            Ok(request) => {
                self.pending = Some(Pending {
                    request,
                    timeout_at: now + gap.min(MAX_RESPONSE_WAIT),
                });
            }
            Err(err) => {
                self.pending = None;
                self.counters.send_errors = self.counters.send_errors.saturating_add(1);
                let level = self.log.level(Event::SendError, now);
                log::log!(
                    level,
                    "NTP server {} ({}): cannot send: {err}",
                    self.name,
                    self.addr
                );
            }
        }
    }

    /// Reads every datagram waiting on the socket; returns a sample when a
    /// valid reply made the clock filter yield one.
    pub fn on_readable(&mut self, now: f64) -> Option<Sample> {
        let mut sample = None;
        let mut buffer = [0u8; RECEIVE_BUFFER];
        for _ in 0..MAX_DATAGRAMS_PER_CALL {
            match receive(&self.socket, &mut buffer) {
                Ok(received) => {
                    let datagram = buffer.get(..received.len).unwrap_or_default();
                    let (from, realtime, monotonic) =
                        (received.from, received.realtime, received.monotonic);
                    if let Some(new) = self.on_datagram(datagram, from, realtime, monotonic, now) {
                        self.kernel_timestamps = received.kernel;
                        sample = Some(new);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.counters.receive_errors = self.counters.receive_errors.saturating_add(1);
                    let level = self.log.level(Event::ReceiveError, now);
                    log::log!(
                        level,
                        "NTP server {} ({}): cannot receive: {err}",
                        self.name,
                        self.addr
                    );
                    break;
                }
            }
        }
        sample
    }

    fn on_datagram(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        realtime: SystemTime,
        monotonic: f64,
        now: f64,
    ) -> Option<Sample> {
        if !same_endpoint(from, self.addr) {
            self.reject(Rejection::WrongSource, Some(from), now);
            return None;
        }
        if self.status != ServerStatus::Active {
            return None;
        }
        let Some(pending) = &self.pending else {
            self.reject(Rejection::Unsolicited, None, now);
            return None;
        };
        match check_reply(datagram, &pending.request, realtime, monotonic) {
            Ok(measurement) => self.accept(measurement),
            Err(rejection) => {
                if rejection == Rejection::KissRate {
                    self.pending = None;
                    self.iburst_left = 0;
                    self.consistent = 0;
                    self.poll = self.poll.saturating_add(1).min(MAX_POLL);
                    self.rate_floor = self.rate_floor.max(self.poll);
                    self.next_send = now + self.poll_interval();
                } else if rejection.stops_server() {
                    self.pending = None;
                    self.status = ServerStatus::Stopped(rejection);
                }
                self.reject(rejection, None, now);
                None
            }
        }
    }

    fn reject(&mut self, rejection: Rejection, from: Option<SocketAddr>, now: f64) {
        self.counters.count(rejection);
        let level = if rejection.stops_server() {
            log::Level::Warn
        } else {
            self.log.level(Event::Rejected(rejection), now)
        };
        let from = from.map(|from| format!(" from {from}")).unwrap_or_default();
        log::log!(
            level,
            "NTP server {} ({}): ignored {rejection}{from} ({} so far){}",
            self.name,
            self.addr,
            self.counters.rejected(rejection),
            match rejection {
                Rejection::KissRate => format!("; polling every {} s", self.poll_interval()),
                Rejection::KissDeny | Rejection::KissRstr => "; server no longer used".to_owned(),
                _ => String::new(),
            }
        );
    }

    /// A checked reply's measurement (what [`NtpServer::on_readable`]
    /// makes of a valid datagram; a simulation gives it directly): updates
    /// reach and the poll interval, and returns the sample the clock
    /// filter yields, if any.
    pub fn on_measurement(&mut self, measurement: Measurement) -> Option<Sample> {
        self.accept(measurement)
    }

    fn accept(&mut self, measurement: Measurement) -> Option<Sample> {
        self.pending = None;
        self.reach |= 1;
        self.counters.accepted = self.counters.accepted.saturating_add(1);
        if let Some(previous) = self.last {
            let tolerance = (measurement.delay + previous.delay) / 2.0
                + CONSISTENCY_FLOOR
                + PHI * (measurement.monotonic - previous.monotonic).abs();
            if (measurement.offset - previous.offset).abs() <= tolerance {
                self.consistent += 1;
                if self.consistent >= POLL_RAISE_AFTER && self.iburst_left == 0 && !self.steered {
                    self.consistent = 0;
                    if self.poll < self.maxpoll {
                        self.poll += 1;
                    }
                }
            } else {
                self.on_trouble();
            }
        }
        self.last = Some(measurement);
        log::debug!(
            "NTP server {} ({}): offset {:+.6} s delay {:.6} s stratum {} poll {}",
            self.name,
            self.addr,
            measurement.offset,
            measurement.delay,
            measurement.stratum,
            self.poll
        );
        let best = self.filter.push(measurement);
        if self.burst {
            self.filter.last_used = Some(measurement.monotonic);
            return Some(measurement.sample());
        }
        best.map(|best| best.sample())
    }

    /// Steers the poll interval of the server whose samples the clock
    /// follows by what its regression holds, `samples`: the sum of the
    /// samples' weights ([`crate::discipline::DisciplineStatus::effective_samples`]),
    /// where a sample counts less the longer its delay or the older it is.
    /// chrony's `polltarget` rule on that sum: each update adds
    /// `(samples / target − 1) / target` to a score; a score reaching 1
    /// doubles the interval, one below 0 halves it (within minpoll–maxpoll).
    /// A source whose delays barely vary is polled less often; one whose
    /// delays jitter, and whose samples therefore weigh little, is polled
    /// often enough to average the jitter away. From the first call the
    /// consistency rule no longer raises the poll, until
    /// [`NtpServer::release_poll`].
    pub fn steer_poll(&mut self, samples: f64) {
        if !samples.is_finite() || self.iburst_left > 0 {
            return;
        }
        self.steered = true;
        let target = self.poll_target;
        self.poll_score += (samples / target - 1.0) / target;
        if self.poll_score >= 1.0 {
            self.poll_score -= 1.0;
            if self.poll < self.maxpoll {
                self.poll += 1;
            }
        } else if self.poll_score < 0.0 {
            self.poll_score += 1.0;
            if self.poll > self.minpoll.max(self.rate_floor) {
                self.poll -= 1;
            }
        }
        self.poll_score = self.poll_score.clamp(0.0, 1.0);
    }

    /// The clock no longer follows this server: its poll goes back to the
    /// consistency rule.
    pub fn release_poll(&mut self) {
        self.steered = false;
    }

    /// An inconsistent sample or a timeout: poll more often to track the
    /// server (down to minpoll, or the RATE floor) — unless the server is
    /// unreachable, where polling less often is the polite backoff.
    fn on_trouble(&mut self) {
        self.consistent = 0;
        if self.is_unreachable() {
            if self.poll < self.maxpoll {
                self.poll += 1;
            }
        } else if self.poll > self.minpoll.max(self.rate_floor) {
            self.poll -= 1;
        }
    }
}

/// One source for [`select_sources`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub offset: f64,
    pub delay: f64,
    /// Root delay / 2 + root dispersion of its reference.
    pub root_distance: f64,
}

impl Candidate {
    /// The half-width of its interval: root distance + delay / 2 (what
    /// chrony calls the source's root distance).
    pub fn error_bound(&self) -> f64 {
        self.root_distance + self.delay / 2.0
    }
}

impl From<&Sample> for Candidate {
    fn from(sample: &Sample) -> Self {
        Candidate {
            offset: sample.offset,
            delay: sample.delay,
            root_distance: sample.root_distance,
        }
    }
}

/// What selection decided about one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Agrees with the majority: used in the combined offset.
    Selected,
    /// Its interval misses the majority's intersection.
    Falseticker,
    /// Error bound above `maxdistance`, or a NaN, negative or absurd value
    /// (beyond [`SELECT_LIMIT`]).
    TooFar,
    /// Usable, but no majority of the usable sources agrees.
    NoMajority,
}

/// The combined estimate of the selected sources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    /// Weighted by 1 / error bound.
    pub offset: f64,
    /// Weighted mean of (error bound + distance from the combined offset).
    pub error: f64,
    /// How many sources took part.
    pub sources: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// One per candidate, in order.
    pub verdicts: Vec<Verdict>,
    /// `None` when nothing was selected.
    pub combined: Option<Combined>,
}

/// Offsets and error bounds beyond this many seconds (about 31,700 years;
/// NTP offsets wrap at 68) make a candidate unusable, which keeps the
/// weighted sums of [`select_sources`] finite.
pub const SELECT_LIMIT: f64 = 1e12;

/// Smallest error bound used as a weight denominator.
const MIN_ERROR_BOUND: f64 = 1e-9;

/// Marzullo's intersection over the intervals `offset ± error_bound` of the
/// candidates whose error bound is at most `max_distance` (chrony's
/// `maxdistance`): finds the region(s) covered by the most intervals; if
/// more than half of the usable candidates cover it, those whose interval
/// contains it are selected and the others are falsetickers. (If several
/// disjoint regions tie for the most coverage, only candidates containing
/// all of them count, which may leave no majority.) The selected offsets
/// are combined weighted by 1 / error bound.
pub fn select_sources(candidates: &[Candidate], max_distance: f64) -> Selection {
    let mut verdicts = vec![Verdict::TooFar; candidates.len()];
    let usable: Vec<(usize, f64, f64)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(index, c)| {
            let bound = c.error_bound();
            let ok = c.offset.abs() <= SELECT_LIMIT
                && (0.0..=SELECT_LIMIT).contains(&bound)
                && c.delay >= 0.0
                && bound <= max_distance;
            ok.then_some((index, c.offset - bound, c.offset + bound))
        })
        .collect();
    if usable.is_empty() {
        return Selection {
            verdicts,
            combined: None,
        };
    }
    // Interval ends; at equal values starts sort first so that touching
    // intervals count as overlapping.
    let mut ends: Vec<(f64, bool)> = usable
        .iter()
        .flat_map(|&(_, lo, hi)| [(lo, true), (hi, false)])
        .collect();
    ends.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    for &(_, start) in &ends {
        if start {
            depth += 1;
            max_depth = max_depth.max(depth);
        } else {
            depth = depth.saturating_sub(1);
        }
    }
    let (mut best_lo, mut best_hi) = (None, f64::NAN);
    depth = 0;
    for &(value, start) in &ends {
        if start {
            depth += 1;
            if depth == max_depth && best_lo.is_none() {
                best_lo = Some(value);
            }
        } else {
            if depth == max_depth {
                best_hi = value;
            }
            depth = depth.saturating_sub(1);
        }
    }
    let best_lo = best_lo.unwrap_or(f64::NAN);
    let agreeing: Vec<usize> = usable
        .iter()
        .filter(|&&(_, lo, hi)| lo <= best_lo && hi >= best_hi)
        .map(|&(index, _, _)| index)
        .collect();
    if agreeing.len() * 2 <= usable.len() {
        for &(index, _, _) in &usable {
            set(&mut verdicts, index, Verdict::NoMajority);
        }
        return Selection {
            verdicts,
            combined: None,
        };
    }
    for &(index, _, _) in &usable {
        set(&mut verdicts, index, Verdict::Falseticker);
    }
    let (mut weights, mut weighted_offsets) = (0.0, 0.0);
    for &index in &agreeing {
        set(&mut verdicts, index, Verdict::Selected);
        if let Some(c) = candidates.get(index) {
            let weight = 1.0 / c.error_bound().max(MIN_ERROR_BOUND);
            weights += weight;
            weighted_offsets += weight * c.offset;
        }
    }
    let offset = weighted_offsets / weights;
    let error = agreeing
        .iter()
        .filter_map(|&index| candidates.get(index))
        .map(|c| {
            let bound = c.error_bound();
            (bound + (c.offset - offset).abs()) / bound.max(MIN_ERROR_BOUND)
        })
        .sum::<f64>()
        / weights;
    Selection {
        verdicts,
        combined: Some(Combined {
            offset,
            error,
            sources: agreeing.len(),
        }),
    }
}

fn set(verdicts: &mut [Verdict], index: usize, verdict: Verdict) {
    if let Some(slot) = verdicts.get_mut(index) {
        *slot = verdict;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// NTP timestamp bits of `ntp_seconds` (seconds since 1900, era 0).
    fn bits(ntp_seconds: f64) -> [u8; 8] {
        let whole = ntp_seconds.floor();
        let fraction = ((ntp_seconds - whole) * 4_294_967_296.0) as u64;
        ((whole as u64) << 32 | fraction).to_be_bytes()
    }

    /// `time` in NTP seconds.
    fn ntp_seconds(time: SystemTime) -> f64 {
        time.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() + NTP_UNIX_OFFSET as f64
    }

    /// A valid server reply to `request`: stratum 2, receive and transmit
    /// timestamps `t2`/`t3`, root delay 1/16 s and root dispersion 1/32 s.
    fn reply_to(request: &Request, t2: f64, t3: f64) -> [u8; NTP_PACKET_LEN] {
        let mut reply = [0u8; NTP_PACKET_LEN];
        reply[0] = 0b00_100_100; // LI 0, version 4, mode 4
        reply[1] = 2;
        reply[2] = 6;
        reply[3] = 0xec;
        reply[4..8].copy_from_slice(&[0, 0, 0x10, 0]);
        reply[8..12].copy_from_slice(&[0, 0, 0x08, 0]);
        reply[12..16].copy_from_slice(&[192, 0, 2, 1]);
        reply[16..24].copy_from_slice(&bits(t2.floor()));
        reply[24..32].copy_from_slice(&request.nonce());
        reply[32..40].copy_from_slice(&bits(t2));
        reply[40..48].copy_from_slice(&bits(t3));
        reply
    }

    fn request() -> Request {
        Request::new(6, 100.0).unwrap()
    }

    /// Checks `reply` as received now, 10 ms after `request()` was sent.
    fn check(reply: &[u8], request: &Request) -> Result<Measurement, Rejection> {
        check_reply(reply, request, SystemTime::now(), 100.010)
    }

    /// A valid reply from a server whose clock reads now + `offset`.
    fn valid_reply(request: &Request, offset: f64) -> [u8; NTP_PACKET_LEN] {
        let server = ntp_seconds(SystemTime::now()) + offset;
        reply_to(request, server, server)
    }

    /// On loopback the kernel stamps each datagram on arrival; the stamp
    /// is carried onto the monotonic clock, before the read.
    #[test]
    fn datagrams_carry_the_kernels_receive_timestamp() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(enable_kernel_timestamps(&receiver));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buffer = [0u8; 64];
        let empty = receive(&receiver, &mut buffer).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        let before = (SystemTime::now(), monotonic_now());
        sender
            .send_to(b"hello", receiver.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let received = receive(&receiver, &mut buffer).unwrap();
        let after = monotonic_now();
        assert!(received.kernel);
        assert_eq!(&buffer[..received.len], b"hello");
        assert_eq!(received.from, sender.local_addr().unwrap());
        assert!(received.realtime >= before.0);
        // Stamped on arrival, ~50 ms before the read.
        assert!(received.monotonic >= before.1 && received.monotonic < after - 0.04);
        // Without the option: user-space time, at the read.
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain.set_nonblocking(true).unwrap();
        sender.send_to(b"x", plain.local_addr().unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let received = receive(&plain, &mut buffer).unwrap();
        assert!(!received.kernel);
        assert!(received.monotonic >= after);
    }

    #[test]
    fn request_is_an_ntpv4_client_packet_with_random_nonce() {
        let a = request();
        let b = request();
        assert_eq!(a.packet()[0], 0b00_100_011);
        assert_eq!(a.packet()[2], 6);
        assert_eq!(&a.packet()[24..40], &[0; 16]);
        assert_ne!(a.nonce(), [0; 8]);
        assert_ne!(a.nonce(), b.nonce());
        assert_eq!(&a.packet()[40..48], &a.nonce());
        assert_eq!(a.sent_monotonic(), 100.0);
        assert_eq!(Request::new(-3, 0.0).unwrap().packet()[2], 0xfd);
    }

    #[test]
    fn valid_reply_gives_offset_delay_and_root_distance() {
        let request = request();
        let m = check(&valid_reply(&request, 0.25), &request).unwrap();
        // t2 = t3 = now + 0.25 s; t4 = now (a little later); t1 = t4 - 10 ms.
        assert!((m.offset - 0.255).abs() < 0.002, "{m:?}");
        assert!((m.delay - 0.010).abs() < 1e-6, "{m:?}");
        assert_eq!(m.root_delay, 0.0625);
        assert_eq!(m.root_dispersion, 0.03125);
        assert_eq!(m.root_distance(), 0.0625);
        assert_eq!(m.stratum, 2);
        assert_eq!(m.leap, Leap::None);
        assert_eq!(m.reference_id, [192, 0, 2, 1]);
        assert_eq!(m.monotonic, 100.010);
        let sample = m.sample();
        assert_eq!(
            sample,
            Sample {
                monotonic: 100.010,
                offset: m.offset,
                delay: m.delay,
                root_distance: 0.0625,
            }
        );
    }

    #[test]
    fn offset_and_delay_with_exact_timestamps() {
        // t1 = 1000.0, t2 = 1000.6, t3 = 1000.7, t4 = 1000.3 (NTP seconds):
        // the server is 0.5 s ahead, the round trip takes 0.3 s of which
        // 0.1 s inside the server.
        let request = Request::new(0, 50.0).unwrap();
        let reply = reply_to(&request, 1000.6, 1000.7);
        // 1000.3 s after 1900: before the Unix epoch.
        let t4 = UNIX_EPOCH + Duration::from_secs_f64(1000.3)
            - Duration::from_secs(NTP_UNIX_OFFSET as u64);
        let m = check_reply(&reply, &request, t4, 50.3).unwrap();
        assert!((m.offset - 0.5).abs() < 1e-6, "{m:?}");
        assert!((m.delay - 0.2).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn offsets_across_the_era_boundary() {
        // Server just after the 2036 era wrap, local clock just before it.
        let request = Request::new(0, 50.0).unwrap();
        let reply = reply_to(&request, 0.5, 0.5);
        let t4 = UNIX_EPOCH + Duration::from_secs((1 << 32) - NTP_UNIX_OFFSET as u64)
            - Duration::from_millis(500);
        let m = check_reply(&reply, &request, t4, 50.0).unwrap();
        assert!((m.offset - 1.0).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn negative_delay_is_clamped() {
        let request = Request::new(0, 50.0).unwrap();
        // The server claims 0.5 s of processing; we waited 10 ms.
        let reply = reply_to(&request, 1000.0, 1000.5);
        let m = check_reply(&reply, &request, SystemTime::now(), 50.01).unwrap();
        assert_eq!(m.delay, 0.0);
        // A monotonic clock that went backwards (or NaN) counts as 0 elapsed.
        let m = check_reply(&reply, &request, SystemTime::now(), f64::NAN).unwrap();
        assert_eq!(m.delay, 0.0);
    }

    #[test]
    fn leap_announcements_and_ntpv3_pass() {
        let request = request();
        let mut reply = valid_reply(&request, 0.0);
        reply[0] = 0b01_100_100;
        assert_eq!(check(&reply, &request).unwrap().leap, Leap::InsertSecond);
        reply[0] = 0b10_100_100;
        assert_eq!(check(&reply, &request).unwrap().leap, Leap::DeleteSecond);
        reply[0] = 0b00_011_100;
        assert_eq!(check(&reply, &request).unwrap().leap, Leap::None);
        reply[1] = 15;
        assert_eq!(check(&reply, &request).unwrap().stratum, 15);
    }

    fn rejected(edit: impl FnOnce(&mut Vec<u8>)) -> Rejection {
        let request = request();
        let mut reply = valid_reply(&request, 0.0).to_vec();
        edit(&mut reply);
        check(&reply, &request).unwrap_err()
    }

    /// Turns a reply into a Kiss-o'-Death as servers send them: LI 3,
    /// stratum 0, the code as reference ID, no timestamps but the origin.
    fn kiss(code: &[u8; 4]) -> impl FnOnce(&mut Vec<u8>) + '_ {
        move |r| {
            r[0] = 0b11_100_100;
            r[1] = 0;
            r[12..16].copy_from_slice(code);
            r[32..48].fill(0);
        }
    }

    #[test]
    fn every_rejection_reason() {
        for len in 0..NTP_PACKET_LEN {
            assert_eq!(rejected(|r| r.truncate(len)), Rejection::TooShort, "{len}");
        }
        for version in [0, 1, 2, 5, 6, 7] {
            assert_eq!(rejected(|r| r[0] = version << 3 | 4), Rejection::BadVersion);
        }
        for mode in [0, 1, 2, 3, 5, 6, 7] {
            assert_eq!(
                rejected(|r| r[0] = 0b00_100_000 | mode),
                Rejection::WrongMode
            );
        }
        assert_eq!(rejected(|r| r[31] ^= 1), Rejection::WrongOrigin);
        assert_eq!(rejected(|r| r[24..32].fill(0)), Rejection::WrongOrigin);
        assert_eq!(rejected(kiss(b"RATE")), Rejection::KissRate);
        assert_eq!(rejected(kiss(b"DENY")), Rejection::KissDeny);
        assert_eq!(rejected(kiss(b"RSTR")), Rejection::KissRstr);
        assert_eq!(rejected(kiss(b"INIT")), Rejection::KissOther);
        assert_eq!(rejected(|r| r[1] = 0), Rejection::KissOther);
        assert_eq!(
            rejected(|r| r[0] = 0b11_100_100),
            Rejection::LeapUnsynchronised
        );
        for stratum in [16, 17, 255] {
            assert_eq!(
                rejected(|r| r[1] = stratum),
                Rejection::StratumUnsynchronised
            );
        }
        assert_eq!(rejected(|r| r[32..40].fill(0)), Rejection::ZeroTimestamp);
        assert_eq!(rejected(|r| r[40..48].fill(0)), Rejection::ZeroTimestamp);
        assert_eq!(
            rejected(|r| r[4..8].copy_from_slice(&[0, 32, 0, 0])),
            Rejection::RootDistance
        );
        assert_eq!(
            rejected(|r| r[8..12].copy_from_slice(&[0, 16, 0, 0])),
            Rejection::RootDistance
        );
    }

    #[test]
    fn forged_kiss_is_not_obeyed() {
        let rejection = rejected(|r| {
            kiss(b"DENY")(r);
            r[24] ^= 0xff;
        });
        assert_eq!(rejection, Rejection::WrongOrigin);
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let request = request();
        let mut reply = valid_reply(&request, 0.0).to_vec();
        reply.extend_from_slice(&[0xff; 100]);
        assert!(check(&reply, &request).is_ok());
    }

    #[test]
    fn counters_count_each_reason_apart() {
        let mut counters = Counters::default();
        for (n, &r) in Rejection::ALL.iter().enumerate() {
            for _ in 0..=n {
                counters.count(r);
            }
        }
        for (n, &r) in Rejection::ALL.iter().enumerate() {
            assert_eq!(counters.rejected(r), n as u64 + 1, "{r:?}");
        }
        assert_eq!(counters.total_rejected(), (1..=15).sum::<u64>());
        assert_eq!(counters.accepted, 0);
    }

    #[test]
    fn ntp_timestamp_conversion() {
        assert_eq!(
            ntp_timestamp(UNIX_EPOCH),
            NtpTimestamp::from_seconds_nanos_since_ntp_era(NTP_UNIX_OFFSET as u32, 0)
        );
        let epoch = ntp_timestamp(UNIX_EPOCH);
        let later = ntp_timestamp(UNIX_EPOCH + Duration::from_millis(1500));
        assert!((seconds(later - epoch) - 1.5).abs() < 1e-9);
        let earlier = ntp_timestamp(UNIX_EPOCH - Duration::from_millis(1500));
        assert!((seconds(earlier - epoch) + 1.5).abs() < 1e-9);
        let era1 = UNIX_EPOCH + Duration::from_secs((1 << 32) - NTP_UNIX_OFFSET as u64);
        assert_eq!(ntp_timestamp(era1), NtpTimestamp::default());
    }

    fn measurement(monotonic: f64, delay: f64) -> Measurement {
        Measurement {
            offset: delay,
            delay,
            root_delay: 0.0,
            root_dispersion: 0.0,
            stratum: 1,
            leap: Leap::None,
            reference_id: [0; 4],
            monotonic,
        }
    }

    #[test]
    fn clock_filter_prefers_low_delay_and_never_goes_back() {
        let m = measurement;
        let mut filter = ClockFilter::default();
        assert_eq!(filter.push(m(1.0, 0.010)), Some(m(1.0, 0.010)));
        // Worse delay: the best is still the one already used.
        assert_eq!(filter.push(m(2.0, 0.050)), None);
        assert_eq!(filter.push(m(3.0, 0.004)), Some(m(3.0, 0.004)));
        assert_eq!(filter.push(m(4.0, 0.020)), None);
        assert_eq!(filter.push(m(5.0, 0.030)), None);
        assert_eq!(filter.push(m(6.0, 0.040)), None);
        // 3.0 fell out of the last FILTER_LEN; the best is now 4.0, newer
        // than 3.0, so it is used.
        assert_eq!(filter.push(m(7.0, 0.100)), Some(m(4.0, 0.020)));
        filter.clear();
        assert_eq!(filter.push(m(8.0, 0.100)), Some(m(8.0, 0.100)));
    }

    #[test]
    fn clock_filter_ages_old_measurements() {
        let m = measurement;
        let mut filter = ClockFilter::default();
        assert!(filter.push(m(0.0, 0.001)).is_some());
        // 1000 s later, 0.0005 + 15 ppm × 1000 s = 15.5 ms > 5 ms.
        assert_eq!(filter.push(m(1000.0, 0.010)), Some(m(1000.0, 0.010)));
    }

    #[test]
    fn log_limiter_warns_once_per_interval() {
        let mut limiter = LogLimiter::default();
        let event = Event::Rejected(Rejection::WrongOrigin);
        assert_eq!(limiter.level(event, 0.0), log::Level::Warn);
        assert_eq!(limiter.level(event, 1.0), log::Level::Debug);
        assert_eq!(limiter.level(Event::Timeout, 1.0), log::Level::Warn);
        assert_eq!(limiter.level(event, LOG_INTERVAL + 0.5), log::Level::Warn);
        let indexes: Vec<usize> = Rejection::ALL
            .iter()
            .map(|&r| Event::Rejected(r).index())
            .chain([Event::Timeout, Event::SendError, Event::ReceiveError].map(Event::index))
            .collect();
        assert_eq!(indexes, (0..EVENT_COUNT).collect::<Vec<_>>());
    }

    use crate::config::DEFAULT_POLL_TARGET;

    fn server(config: PollConfig) -> NtpServer {
        // Nothing listens on port 9 of the loopback: requests go nowhere.
        NtpServer::new("test", "127.0.0.1:9".parse().unwrap(), config, 0.0).unwrap()
    }

    /// In a burst every reply is a sample, whatever the filter would say.
    #[test]
    fn a_burst_bypasses_the_clock_filter() {
        let m = measurement;
        let mut server = server(PollConfig {
            minpoll: 6,
            maxpoll: 10,
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
        });
        assert!(server.accept(m(1.0, 0.010)).is_some());
        assert!(server.accept(m(2.0, 0.050)).is_none());
        server.set_burst(true);
        let sample = server.accept(m(3.0, 0.050)).unwrap();
        assert_eq!((sample.monotonic, sample.delay), (3.0, 0.050));
        assert!(server.accept(m(4.0, 0.060)).is_some());
        server.set_burst(false);
        // Back to the filter, which never goes back before 4.0.
        assert!(server.accept(m(5.0, 0.070)).is_none());
        assert_eq!(server.accept(m(6.0, 0.001)).map(|s| s.monotonic), Some(6.0));
    }

    #[test]
    fn poll_limits_are_clamped() {
        let s = server(PollConfig {
            minpoll: -32,
            maxpoll: 32,
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
        });
        assert_eq!(
            (s.minpoll, s.maxpoll, s.poll),
            (MIN_POLL, MAX_POLL, MIN_POLL)
        );
        let s = server(PollConfig {
            minpoll: 8,
            maxpoll: 4,
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
        });
        assert_eq!((s.minpoll, s.maxpoll), (8, 8));
    }

    #[test]
    fn iburst_then_minpoll_and_timeouts() {
        let mut s = server(PollConfig {
            minpoll: 4,
            maxpoll: 6,
            iburst: true,
            polltarget: DEFAULT_POLL_TARGET,
        });
        assert_eq!(s.next_deadline(), 0.0);
        let mut sends = Vec::new();
        let mut now = 0.0;
        while now < 100.0 {
            let before = s.counters().requests;
            s.on_deadline(now);
            if s.counters().requests > before {
                sends.push(now);
            }
            assert!(s.on_readable(now).is_none());
            let next = s.next_deadline();
            assert!(next > now, "{next} after {now}");
            now = next;
        }
        // Four requests 2 s apart, then minpoll (16 s); after 8 requests
        // without a reply the server is unreachable and polling backs off.
        assert_eq!(
            sends,
            [0.0, 2.0, 4.0, 6.0, 22.0, 38.0, 54.0, 70.0, 86.0],
            "{sends:?}"
        );
        assert_eq!(s.next_deadline(), 118.0);
        assert_eq!(s.poll_exponent(), 6);
        // Every request timed out; the reach register stays empty.
        assert_eq!(s.counters().timeouts as usize, sends.len());
        assert_eq!(s.reach(), 0);
        assert_eq!(s.status(), ServerStatus::Active);
        assert!(s.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn unreachable_server_backs_off_to_maxpoll() {
        let mut s = server(PollConfig {
            minpoll: 2,
            maxpoll: 5,
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
        });
        let mut now = 0.0;
        for _ in 0..40 {
            s.on_deadline(now);
            now = s.next_deadline();
        }
        assert!(s.is_unreachable());
        assert_eq!(s.poll_exponent(), 5);
        assert_eq!(s.poll_interval(), 32.0);
    }

    #[test]
    fn poll_interval_adapts_to_consistency() {
        let mut s = server(PollConfig {
            minpoll: 2,
            maxpoll: 4,
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
        });
        let m = |t: f64, offset: f64| Measurement {
            offset,
            ..measurement(t, 0.001)
        };
        for i in 0..5 {
            s.accept(m(f64::from(i), 0.0));
        }
        // First sample has nothing to compare; four consistent ones follow.
        assert_eq!(s.poll_exponent(), 3);
        for i in 5..9 {
            s.accept(m(f64::from(i), 0.0));
        }
        assert_eq!(s.poll_exponent(), 4);
        for i in 9..20 {
            s.accept(m(f64::from(i), 0.0));
        }
        assert_eq!(s.poll_exponent(), 4, "stays at maxpoll");
        // A jump of 10 ms with 1 ms delays is inconsistent.
        s.accept(m(20.0, 0.010));
        assert_eq!(s.poll_exponent(), 3);
        s.reset_filter();
        assert!(s.last_measurement().is_none());
    }

    /// chrony's polltarget rule on the regression's weight: more than the
    /// target raises the poll, less lowers it, by the accumulated score;
    /// while steered the consistency rule does not raise it; released, it
    /// does again.
    #[test]
    fn the_followed_server_polls_by_its_regression() {
        let mut s = server(PollConfig {
            minpoll: 2,
            maxpoll: 6,
            iburst: false,
            polltarget: 8,
        });
        let m = |t: f64| measurement(t, 0.001);
        // 16 samples' worth against a target of 8 adds 1/8 per update: the
        // score starts at 1/2, so the 4th update raises the poll.
        for _ in 0..3 {
            s.steer_poll(16.0);
        }
        assert_eq!(s.poll_exponent(), 2);
        s.steer_poll(16.0);
        assert_eq!(s.poll_exponent(), 3);
        for _ in 0..8 {
            s.steer_poll(16.0);
        }
        assert_eq!(s.poll_exponent(), 4);
        // 4 samples' worth: −1/16 per update, down again.
        for _ in 0..16 {
            s.steer_poll(4.0);
        }
        assert_eq!(s.poll_exponent(), 3);
        // Exactly the target holds it; consistent samples do not raise it.
        for i in 0..40 {
            s.steer_poll(8.0);
            s.accept(m(f64::from(i)));
        }
        assert_eq!(s.poll_exponent(), 3);
        // Never below minpoll, never above maxpoll; nonsense is ignored.
        for _ in 0..200 {
            s.steer_poll(0.0);
            s.steer_poll(f64::NAN);
        }
        assert_eq!(s.poll_exponent(), 2);
        for _ in 0..200 {
            s.steer_poll(60.0);
            s.steer_poll(f64::INFINITY);
        }
        assert_eq!(s.poll_exponent(), 6);
        // Released, the consistency rule applies again.
        s.release_poll();
        s.accept(Measurement {
            offset: 0.050,
            ..m(100.0)
        });
        assert_eq!(s.poll_exponent(), 5, "an inconsistent sample lowers it");
        for i in 0..5 {
            s.accept(Measurement {
                offset: 0.050,
                ..m(101.0 + f64::from(i))
            });
        }
        assert_eq!(s.poll_exponent(), 6, "four consistent ones raise it");
    }

    fn candidate(offset: f64, bound: f64) -> Candidate {
        Candidate {
            offset,
            delay: bound,
            root_distance: bound / 2.0,
        }
    }

    #[test]
    fn selection_rejects_a_falseticker() {
        let candidates = [
            candidate(0.010, 0.005),
            candidate(0.012, 0.005),
            candidate(0.011, 0.010),
            candidate(0.500, 0.005),
        ];
        let selection = select_sources(&candidates, 3.0);
        use Verdict::*;
        assert_eq!(
            selection.verdicts,
            [Selected, Selected, Selected, Falseticker]
        );
        let combined = selection.combined.unwrap();
        assert_eq!(combined.sources, 3);
        // Weights 2, 2, 1 (per 1/0.01): (2 × 0.010 + 2 × 0.012 + 0.011) / 5.
        assert!((combined.offset - 0.011).abs() < 1e-12, "{combined:?}");
        assert!(combined.error > 0.005 && combined.error < 0.010);
    }

    #[test]
    fn selection_needs_a_majority() {
        let selection = select_sources(&[candidate(0.0, 0.01), candidate(1.0, 0.01)], 3.0);
        assert_eq!(selection.verdicts, [Verdict::NoMajority; 2]);
        assert_eq!(selection.combined, None);
        // Two agreeing out of three is a majority.
        let selection = select_sources(
            &[
                candidate(0.0, 0.01),
                candidate(1.0, 0.01),
                candidate(0.005, 0.01),
            ],
            3.0,
        );
        assert_eq!(
            selection.verdicts,
            [Verdict::Selected, Verdict::Falseticker, Verdict::Selected]
        );
        // Ambiguous: two regions of depth 2 joined only by the wide one.
        let selection = select_sources(
            &[
                candidate(5.0, 5.0),
                candidate(0.5, 0.5),
                candidate(9.5, 0.5),
            ],
            30.0,
        );
        assert_eq!(selection.verdicts, [Verdict::NoMajority; 3]);
    }

    #[test]
    fn selection_respects_maxdistance_and_bad_numbers() {
        let candidates = [
            candidate(0.0, 0.01),
            Candidate {
                offset: 0.0,
                delay: 0.0,
                root_distance: 3.5,
            },
            candidate(f64::NAN, 0.01),
            candidate(0.0, f64::INFINITY),
            Candidate {
                offset: 0.0,
                delay: -1.0,
                root_distance: 1.0,
            },
        ];
        let selection = select_sources(&candidates, 3.0);
        use Verdict::*;
        assert_eq!(
            selection.verdicts,
            [Selected, TooFar, TooFar, TooFar, TooFar]
        );
        assert_eq!(selection.combined.unwrap().sources, 1);
        assert_eq!(select_sources(&candidates[1..], 3.0).combined, None);
        // Root distance 3.5 is fine under a larger maxdistance.
        let selection = select_sources(&candidates[..2], 4.0);
        assert_eq!(selection.verdicts, [Selected, Selected]);
        assert!(select_sources(&[], 3.0).verdicts.is_empty());
        // Absurd values cannot overflow the weighted sums (found by proptest).
        let huge = [
            candidate(-3.8e303, 0.0),
            candidate(1e300, 0.0),
            candidate(0.0, 1e300),
        ];
        assert_eq!(select_sources(&huge, f64::MAX).verdicts, [TooFar; 3]);
    }

    #[test]
    fn selection_of_identical_points() {
        let selection = select_sources(&[candidate(0.1, 0.0), candidate(0.1, 0.0)], 1.0);
        let combined = selection.combined.unwrap();
        assert_eq!(combined.offset, 0.1);
        assert_eq!(combined.sources, 2);
        assert!(combined.error.is_finite());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let request = request();
            prop_assert!(check(&bytes, &request).is_err());
        }

        #[test]
        fn random_headers_with_our_origin_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 48..120),
            unix_seconds in any::<i64>(),
            monotonic in any::<f64>(),
        ) {
            let request = request();
            bytes[24..32].copy_from_slice(&request.nonce());
            let when = UNIX_EPOCH
                .checked_add(Duration::from_secs(unix_seconds.unsigned_abs() >> 1))
                .unwrap_or(UNIX_EPOCH);
            if let Ok(m) = check_reply(&bytes, &request, when, monotonic) {
                prop_assert!(m.offset.is_finite() && m.delay >= 0.0);
                prop_assert!(m.root_distance() < MAX_ROOT_DISTANCE);
                prop_assert!((1..16).contains(&m.stratum));
            }
        }

        #[test]
        fn selection_never_panics(
            candidates in proptest::collection::vec(
                (any::<f64>(), any::<f64>(), any::<f64>()), 0..8),
            max_distance in any::<f64>(),
        ) {
            let candidates: Vec<Candidate> = candidates
                .into_iter()
                .map(|(offset, delay, root_distance)| Candidate { offset, delay, root_distance })
                .collect();
            let selection = select_sources(&candidates, max_distance);
            prop_assert_eq!(selection.verdicts.len(), candidates.len());
            if let Some(combined) = selection.combined {
                prop_assert!(combined.sources > 0);
                prop_assert!(combined.offset.is_finite());
            }
        }
    }
}
