//! init's sockets: the sd_notify datagram socket and the control socket
//! (`status`, `poweroff`, ...), plus the client side used by the multi-call
//! commands `poweroff`, `reboot`, `halt`, `systemctl` and `init status`.
//!
//! Control protocol: the client sends one line (`status`, `units`, or `poweroff`,
//! `reboot`, `halt` optionally followed by ` force`), closes its write side,
//! and reads the answer until EOF. Only uid 0 is served (SO_PEERCRED).
//!
//! No client can hold PID 1: each connection is non-blocking and waits in
//! init's poll set ([`Clients`]) with its own buffer and one deadline for
//! the whole exchange ([`REQUEST_TIMEOUT`], from accept to the last byte of
//! the answer); past it the connection is closed. At most [`MAX_CLIENTS`]
//! are served at once: the next is answered with an error line and closed.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};

use crate::supervisor::{PowerKind, ShutdownRequest, Urgency};

/// Creates the sd_notify socket at `path` (datagram, SO_PASSCRED).
pub fn notify_socket(path: &Path) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_passcred(&fd, true)?;
    // World-writable, as systemd's: a unit running as another user must be
    // able to send READY=1; the sender's pid (SCM_CREDENTIALS) is what init
    // trusts.
    // chmod after bind, not a umask around it (the umask is process-wide).
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o777))?;
    Ok(fd)
}

/// Reads one pending notify datagram: (sender pid, text).
pub fn recv_notify(fd: BorrowedFd<'_>) -> Option<(u32, String)> {
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = rustix::net::recvmsg(
        fd,
        &mut iov,
        &mut anc,
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
    )
    .ok()?;
    let len = msg.bytes;
    let pid = anc.drain().find_map(|m| match m {
        RecvAncillaryMessage::ScmCredentials(c) => Some(c.pid.as_raw_nonzero().get()),
        _ => None,
    });
    let text = String::from_utf8_lossy(buf.get(..len).unwrap_or_default()).into_owned();
    // A datagram without credentials cannot be attributed: report pid 0.
    Some((pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0), text))
}

/// Creates the control socket at `path`, mode 0600.
pub fn control_socket(path: &Path) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    // chmod after bind rather than a umask around it: the umask is the
    // process's, and would change what other threads create meanwhile (the
    // tests'). Until the chmod a peer could connect; SO_PEERCRED still
    // refuses any uid but 0.
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(0o600))?;
    // Room for every client served and as many again waiting: beyond it
    // connect(2) waits in the client, never in init.
    rustix::net::listen(&fd, (2 * MAX_CLIENTS) as i32)?;
    Ok(fd)
}

/// How many control clients are served at once.
pub const MAX_CLIENTS: usize = 16;
/// How long one client has for its whole exchange, request and answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest request line read; a longer one is an unknown request.
const MAX_REQUEST: usize = 256;
/// Connections accepted per wakeup: a flood of connects cannot keep init
/// from reaping and its other work.
const ACCEPTS_PER_WAKEUP: usize = 2 * MAX_CLIENTS;

/// Accepts one pending connection, if any.
pub fn accept(fd: BorrowedFd<'_>) -> Option<UnixStream> {
    let conn = rustix::net::accept_with(fd, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK).ok()?;
    Some(UnixStream::from(conn))
}

/// One control connection being served.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    /// The request read so far.
    line: Vec<u8>,
    /// The answer, once the request is complete, and how much of it is sent.
    answer: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// The control connections being served: non-blocking, each with its own
/// deadline, polled with init's other descriptors.
#[derive(Debug)]
pub struct Clients {
    slots: [Option<Client>; MAX_CLIENTS],
    /// The uid served (0 in init; the tests' own elsewhere).
    uid: u32,
    /// A client has been refused or cut off before: later ones are logged
    /// at debug level only, so that a flood of them is no flood of log.
    warned: bool,
}

/// Writes what fits of a short line on a connection being closed; never
/// waits. What the client has sent already is read first: closing with it
/// unread would reset the connection, and the client could lose the line.
fn refuse(mut conn: UnixStream, text: &str) {
    let _ = conn.set_nonblocking(true);
    let mut sink = [0u8; MAX_REQUEST];
    let _ = conn.read(&mut sink);
    let _ = conn.write(text.as_bytes());
}

impl Default for Clients {
    /// Serving root.
    fn default() -> Clients {
        Clients::serving(0)
    }
}

impl Clients {
    /// Serving peers of `uid` only (init: 0, root).
    pub fn serving(uid: u32) -> Clients {
        Clients {
            slots: Default::default(),
            uid,
            warned: false,
        }
    }

    /// Accepts the pending connections (at most [`ACCEPTS_PER_WAKEUP`]):
    /// a peer that is not root, or one past [`MAX_CLIENTS`], gets an error
    /// line and is closed at once.
    pub fn accept_from(&mut self, listen: BorrowedFd<'_>, now: Instant) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let Some(conn) = accept(listen) else { return };
            // SO_PEERCRED through libc: rustix's UCred has a non-zero pid,
            // and a peer in an ancestor PID namespace shows as pid 0.
            let uid = crate::sys::peer_uid(&conn).ok();
            if uid != Some(self.uid) {
                self.note(format_args!("refused a client with uid {uid:?}"));
                refuse(
                    conn,
                    "error: permission denied: only root may use init's control socket\n",
                );
                continue;
            }
            let Some(slot) = self.slots.iter().position(Option::is_none) else {
                self.note(format_args!("{MAX_CLIENTS} clients already; refused one"));
                refuse(
                    conn,
                    &format!("error: busy: {MAX_CLIENTS} clients are being served; try again\n"),
                );
                continue;
            };
            if let Some(free) = self.slots.get_mut(slot) {
                *free = Some(Client {
                    stream: conn,
                    line: Vec::new(),
                    answer: None,
                    deadline: now + REQUEST_TIMEOUT,
                });
            }
        }
    }

    /// Each client's descriptor with what it waits for (a request to read,
    /// or room to write the answer), by slot.
    pub fn wanted(
        &self,
    ) -> impl Iterator<Item = (usize, BorrowedFd<'_>, rustix::event::PollFlags)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            let c = s.as_ref()?;
            let flags = if c.answer.is_some() {
                rustix::event::PollFlags::OUT
            } else {
                rustix::event::PollFlags::IN
            };
            Some((i, c.stream.as_fd(), flags))
        })
    }

    /// The earliest deadline of a client.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|c| c.deadline).min()
    }

    /// Closes the clients whose deadline has passed.
    pub fn expire(&mut self, now: Instant) {
        for i in 0..MAX_CLIENTS {
            let late = self
                .slots
                .get(i)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.deadline <= now);
            if late {
                self.note(format_args!(
                    "a client did not finish within {}s; closed",
                    REQUEST_TIMEOUT.as_secs()
                ));
                if let Some(slot) = self.slots.get_mut(i) {
                    *slot = None;
                }
            }
        }
    }

    /// Logs a refused or cut-off client: the first as a warning (saying
    /// that more are logged at debug level), the rest at debug level.
    fn note(&mut self, what: std::fmt::Arguments<'_>) {
        if self.warned {
            log::debug!("control socket: {what}");
        } else {
            self.warned = true;
            log::warn!("control socket: {what} (more such clients are logged at debug level)");
        }
    }

    /// Serves the client in `slot`, which poll reported ready: reads what
    /// it sent without waiting, answers a complete request through
    /// `answer`, writes what fits of the answer, closes it when done or
    /// gone. A power request to act on is returned.
    pub fn serve(
        &mut self,
        slot: usize,
        answer: impl FnOnce(Request) -> (String, Option<ShutdownRequest>),
    ) -> Option<ShutdownRequest> {
        let entry = self.slots.get_mut(slot)?;
        let client = entry.as_mut()?;
        let mut act = None;
        if client.answer.is_none() {
            let mut buf = [0u8; MAX_REQUEST];
            let complete = loop {
                let room = MAX_REQUEST.saturating_sub(client.line.len());
                let Some(dst) = buf.get_mut(..room).filter(|d| !d.is_empty()) else {
                    break true;
                };
                match client.stream.read(dst) {
                    // The client closed its write side: the request is whole.
                    Ok(0) => break true,
                    Ok(n) => {
                        client
                            .line
                            .extend_from_slice(dst.get(..n).unwrap_or_default());
                        if client.line.contains(&b'\n') || client.line.len() >= MAX_REQUEST {
                            break true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                    Err(_) => {
                        *entry = None;
                        return None;
                    }
                }
            };
            if !complete {
                return None;
            }
            let text = String::from_utf8_lossy(&client.line);
            let first = text.lines().next().unwrap_or_default().trim();
            let reply = match parse_request(first) {
                Some(req) => {
                    let (reply, request) = answer(req);
                    act = request;
                    reply
                }
                None => format!("error: unknown request {first:?}\n"),
            };
            client.answer = Some((reply.into_bytes(), 0));
        }
        if let Some((bytes, sent)) = &mut client.answer {
            loop {
                let Some(rest) = bytes.get(*sent..).filter(|r| !r.is_empty()) else {
                    *entry = None;
                    break;
                };
                match client.stream.write(rest) {
                    Ok(0) => {
                        *entry = None;
                        break;
                    }
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *entry = None;
                        break;
                    }
                }
            }
        }
        act
    }

    /// How many clients are being served.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Machine-readable unit states for `systemctl`'s verbs.
    Units,
    Power(ShutdownRequest),
}

/// Parses a request line.
pub fn parse_request(line: &str) -> Option<Request> {
    let mut words = line.split_whitespace();
    let verb = words.next()?;
    let force = match words.next() {
        None => false,
        Some("force") => true,
        Some(_) => return None,
    };
    let kind = match verb {
        "status" if !force => return Some(Request::Status),
        "units" if !force => return Some(Request::Units),
        "poweroff" => PowerKind::Poweroff,
        "reboot" => PowerKind::Reboot,
        "halt" => PowerKind::Halt,
        _ => return None,
    };
    let urgency = if force {
        Urgency::Force
    } else {
        Urgency::Orderly
    };
    Some(Request::Power(ShutdownRequest { kind, urgency }))
}

/// Client: sends `line` to the control socket at `path` and returns the answer.
/// init may answer and close before the request is written (a refusal):
/// its answer is what counts, so a failed write is not an error as long as
/// an answer comes.
pub fn request(path: &Path, line: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let sent = s
        .write_all(format!("{line}\n").as_bytes())
        .and_then(|()| s.shutdown(std::net::Shutdown::Write));
    let mut out = String::new();
    let read = s.read_to_string(&mut out);
    match (sent, read) {
        _ if !out.is_empty() => Ok(out),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(_)) => Ok(out),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request("status"), Some(Request::Status));
        assert_eq!(parse_request("units"), Some(Request::Units));
        assert_eq!(parse_request("units force"), None);
        assert_eq!(
            parse_request("poweroff force"),
            Some(Request::Power(ShutdownRequest {
                kind: PowerKind::Poweroff,
                urgency: Urgency::Force
            }))
        );
        assert_eq!(
            parse_request("reboot"),
            Some(Request::Power(ShutdownRequest {
                kind: PowerKind::Reboot,
                urgency: Urgency::Orderly
            }))
        );
        assert_eq!(parse_request("status force"), None);
        assert_eq!(parse_request("poweroff now"), None);
        assert_eq!(parse_request(""), None);
    }

    #[test]
    fn notify_datagram_carries_sender_pid() {
        let dir = std::env::temp_dir().join(format!("minos-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let fd = notify_socket(&path).unwrap();
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        tx.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        let (pid, text) = recv_notify(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        assert_eq!(pid, std::process::id());
        assert_eq!(text, "READY=1\nSTATUS=up");
        assert!(recv_notify(std::os::fd::AsFd::as_fd(&fd)).is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A control socket in a fresh directory, and a `Clients` serving it
    /// the way init does: poll, accept, serve, expire.
    struct Server {
        dir: std::path::PathBuf,
        path: std::path::PathBuf,
        fd: OwnedFd,
        clients: Clients,
        acted: Vec<ShutdownRequest>,
    }

    impl Server {
        fn new(name: &str) -> Server {
            let dir = std::env::temp_dir().join(format!("minos-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("control.sock");
            let fd = control_socket(&path).unwrap();
            Server {
                dir,
                path,
                fd,
                clients: Clients::serving(rustix::process::getuid().as_raw()),
                acted: Vec::new(),
            }
        }

        /// One turn of init's loop: every ready descriptor served once.
        fn turn(&mut self, wait: Duration) {
            use rustix::event::{PollFd, PollFlags};
            let mut fds = vec![PollFd::new(&self.fd, PollFlags::IN)];
            let slots: Vec<usize> = self.clients.wanted().map(|(i, _, _)| i).collect();
            fds.extend(
                self.clients
                    .wanted()
                    .map(|(_, fd, f)| PollFd::from_borrowed_fd(fd, f)),
            );
            let ts = rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            rustix::event::poll(&mut fds, Some(&ts)).unwrap();
            let listen = !fds[0].revents().is_empty();
            let ready: Vec<usize> = fds[1..]
                .iter()
                .zip(&slots)
                .filter(|(f, _)| !f.revents().is_empty())
                .map(|(_, &i)| i)
                .collect();
            drop(fds);
            for i in ready {
                let act = self.clients.serve(i, |r| match r {
                    Request::Status => ("status\n".into(), None),
                    Request::Units => ("units\n".into(), None),
                    Request::Power(p) => ("ok\n".into(), Some(p)),
                });
                self.acted.extend(act);
            }
            if listen {
                self.clients.accept_from(self.fd.as_fd(), Instant::now());
            }
            self.clients.expire(Instant::now());
        }

        /// Turns until `done` holds or `within` has passed; how long it took.
        fn until(&mut self, within: Duration, mut done: impl FnMut(&Server) -> bool) -> Duration {
            let t = Instant::now();
            while !done(self) && t.elapsed() < within {
                self.turn(Duration::from_millis(10));
            }
            t.elapsed()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn control_round_trip_as_root() {
        let mut server = Server::new("control");
        let mode = std::fs::metadata(&server.path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap();
        assert_eq!(mode & 0o777, 0o600);
        let p2 = server.path.clone();
        let client = std::thread::spawn(move || request(&p2, "poweroff force").unwrap());
        server.until(Duration::from_secs(5), |_| client.is_finished());
        assert_eq!(client.join().unwrap(), "ok\n");
        assert_eq!(
            server.acted,
            vec![ShutdownRequest {
                kind: PowerKind::Poweroff,
                urgency: Urgency::Force
            }]
        );
    }

    #[test]
    fn another_uid_is_refused_with_an_error_line() {
        let mut server = Server::new("control-uid");
        server.clients = Clients::serving(rustix::process::getuid().as_raw().wrapping_add(1));
        let p2 = server.path.clone();
        let client = std::thread::spawn(move || request(&p2, "status").unwrap());
        server.until(Duration::from_secs(5), |_| client.is_finished());
        assert_eq!(
            client.join().unwrap(),
            "error: permission denied: only root may use init's control socket\n"
        );
        assert!(server.clients.is_empty());
    }

    #[test]
    fn idle_and_trickling_clients_wait_in_the_poll_set_until_their_deadline() {
        let mut server = Server::new("control-idle");
        // One client that never writes, one that sends a byte now and then,
        // and a well-behaved one after them.
        let idle = UnixStream::connect(&server.path).unwrap();
        let mut trickle = UnixStream::connect(&server.path).unwrap();
        let t = Instant::now();
        server.until(Duration::from_millis(200), |s| s.clients.len() == 2);
        assert_eq!(server.clients.len(), 2);
        let p2 = server.path.clone();
        let status = std::thread::spawn(move || request(&p2, "status").unwrap());
        // Each turn returns at once: nothing waits on the idle ones.
        let took = server.until(Duration::from_secs(2), |_| status.is_finished());
        assert_eq!(status.join().unwrap(), "status\n");
        assert!(took < Duration::from_millis(500), "{took:?}");
        trickle.write_all(b"st").unwrap();
        server.turn(Duration::from_millis(10));
        assert_eq!(server.clients.len(), 2);
        // The deadline is for the whole request: both are closed at 1 s.
        server.until(Duration::from_secs(3), |s| s.clients.is_empty());
        let gone = t.elapsed();
        assert!(
            gone >= REQUEST_TIMEOUT && gone < REQUEST_TIMEOUT + Duration::from_millis(500),
            "{gone:?}"
        );
        let mut rest = Vec::new();
        let _ = (&idle).read_to_end(&mut rest);
        assert!(rest.is_empty());
        // Half a request answers nothing.
        trickle.shutdown(std::net::Shutdown::Write).ok();
        let mut answer = String::new();
        let _ = trickle.read_to_string(&mut answer);
        assert_eq!(answer, "");
    }

    #[test]
    fn a_client_past_the_limit_is_refused_at_once() {
        let mut server = Server::new("control-full");
        let held: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&server.path).unwrap())
            .collect();
        server.until(Duration::from_secs(1), |s| s.clients.len() == MAX_CLIENTS);
        assert_eq!(server.clients.len(), MAX_CLIENTS);
        let mut extra = UnixStream::connect(&server.path).unwrap();
        server.until(Duration::from_millis(100), |_| false);
        extra
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut answer = String::new();
        extra.read_to_string(&mut answer).unwrap();
        assert_eq!(
            answer,
            format!("error: busy: {MAX_CLIENTS} clients are being served; try again\n")
        );
        assert_eq!(server.clients.len(), MAX_CLIENTS);
        drop(held);
    }

    #[test]
    fn a_long_answer_is_written_as_the_client_reads_it() {
        let mut server = Server::new("control-long");
        let mut conn = UnixStream::connect(&server.path).unwrap();
        conn.write_all(b"status\n").unwrap();
        server.until(Duration::from_millis(200), |s| s.clients.len() == 1);
        let big = "x".repeat(4 << 20);
        let slot = server.clients.wanted().next().map(|(i, _, _)| i).unwrap();
        let b2 = big.clone();
        server.clients.serve(slot, move |_| (b2, None));
        // Not all of 4 MiB fits in the socket: the rest waits for POLLOUT.
        assert_eq!(server.clients.len(), 1);
        let reader = std::thread::spawn(move || {
            let mut out = String::new();
            conn.read_to_string(&mut out).unwrap();
            out
        });
        server.until(Duration::from_secs(1), |s| s.clients.is_empty());
        assert_eq!(reader.join().unwrap().len(), big.len());
    }
}
