//! init's sockets: the sd_notify datagram socket and the control socket
//! (`status`, `poweroff`, ...), plus the client side used by the multi-call
//! commands `poweroff`, `reboot`, `halt`, `systemctl` and `init status`.
//!
//! Control protocol: the client sends one line (`status`, or `poweroff`,
//! `reboot`, `halt` optionally followed by ` force`), closes its write side,
//! and reads the answer until EOF. Only uid 0 is served (SO_PEERCRED).

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let bound = SocketAddrUnix::new(path).and_then(|a| rustix::net::bind(&fd, &a));
    rustix::process::umask(old);
    bound?;
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
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&fd, &SocketAddrUnix::new(path)?);
    rustix::process::umask(old);
    bound?;
    rustix::net::listen(&fd, 8)?;
    Ok(fd)
}

/// Accepts one pending connection, if any.
pub fn accept(fd: BorrowedFd<'_>) -> Option<UnixStream> {
    let conn = rustix::net::accept_with(fd, SocketFlags::CLOEXEC).ok()?;
    Some(UnixStream::from(conn))
}

/// A request on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Status,
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

/// Serves one connection: checks the peer is root, reads the request,
/// writes the answer. Returns a shutdown request to act on, if any.
pub fn serve(
    mut conn: UnixStream,
    answer: impl FnOnce(Request) -> (String, Option<ShutdownRequest>),
) -> Option<ShutdownRequest> {
    // PID 1 must not hang on a slow client.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = conn.set_nonblocking(false);
    // SO_PEERCRED through libc: rustix's UCred has a non-zero pid, and a
    // peer in an ancestor PID namespace shows as pid 0.
    let uid = crate::sys::peer_uid(&conn).ok();
    if uid != Some(0) {
        log::warn!("control socket: refused a client with uid {uid:?}");
        let _ =
            conn.write_all(b"error: permission denied: only root may use init's control socket\n");
        return None;
    }
    let mut line = Vec::new();
    let _ = (&mut conn).take(256).read_to_end(&mut line);
    let line = String::from_utf8_lossy(&line);
    let Some(req) = parse_request(line.trim()) else {
        let _ = conn.write_all(format!("error: unknown request {:?}\n", line.trim()).as_bytes());
        return None;
    };
    let (text, act) = answer(req);
    let _ = conn.write_all(text.as_bytes());
    act
}

/// Client: sends `line` to the control socket at `path` and returns the answer.
pub fn request(path: &Path, line: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert_eq!(parse_request("status"), Some(Request::Status));
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

    #[test]
    fn control_round_trip_as_root() {
        let dir = std::env::temp_dir().join(format!("minos-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let fd = control_socket(&path).unwrap();
        let mode = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
            .unwrap();
        assert_eq!(mode & 0o777, 0o600);
        let p2 = path.clone();
        let client = std::thread::spawn(move || request(&p2, "poweroff force").unwrap());
        let conn = loop {
            if let Some(c) = accept(std::os::fd::AsFd::as_fd(&fd)) {
                break c;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let act = serve(conn, |r| {
            (
                "ok\n".into(),
                match r {
                    Request::Power(p) => Some(p),
                    Request::Status => None,
                },
            )
        });
        assert_eq!(
            client.join().unwrap(),
            if rustix::process::getuid().is_root() {
                "ok\n"
            } else {
                "error: permission denied: only root may use init's control socket\n"
            }
        );
        if rustix::process::getuid().is_root() {
            assert_eq!(
                act,
                Some(ShutdownRequest {
                    kind: PowerKind::Poweroff,
                    urgency: Urgency::Force
                })
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
