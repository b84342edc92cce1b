//! `agent-shim check ADDR`: the runtime's side of the health check. Sends
//! `grpc.Health/Check` to an agent (the shim or the real kata-agent) and
//! returns the status it reports.
//!
//! For `hvsock://PATH:PORT` (Firecracker, Cloud Hypervisor) the client
//! connects to the unix socket PATH, writes `CONNECT PORT\n`, reads one
//! line that must start with `OK `, then speaks ttRPC on that stream.
//!
//! The whole exchange, connection and handshake included, is bounded by one
//! timeout: it runs on a helper thread, and when the time is up the caller
//! stops waiting (the process is about to exit; the thread is left behind).

use std::io::{self, Read, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::address::Address;
use crate::protocols::health::health_check_response::ServingStatus;
use crate::protocols::health::{CheckRequest, HealthCheckResponse};
use crate::protocols::health_ttrpc::HealthClient;
use crate::vsock;

/// `--timeout` when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest reply line to `CONNECT PORT` that is read.
const MAX_HANDSHAKE_LINE: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to {address}")]
    Connect {
        address: Address,
        #[source]
        source: io::Error,
    },
    #[error("hybrid vsock handshake with {address} failed")]
    HandshakeIo {
        address: Address,
        #[source]
        source: io::Error,
    },
    #[error("hybrid vsock handshake with {address} failed: reply `{reply}`, expected `OK ...`")]
    HandshakeRefused { address: Address, reply: String },
    #[error("{address} is a listening address (CID -1); give the agent's CID")]
    AnyCid { address: Address },
    #[error("health check of {address} failed")]
    Request {
        address: Address,
        #[source]
        source: ttrpc::Error,
    },
    #[error("health check of {address}: no answer within {timeout:?}")]
    Timeout { address: Address, timeout: Duration },
}

/// The status an agent reported; `Unrecognised` holds a value this proto
/// does not name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Known(ServingStatus),
    Unrecognised(i32),
}

impl Status {
    fn from_response(response: &HealthCheckResponse) -> Self {
        match response.status.enum_value() {
            Ok(status) => Status::Known(status),
            Err(value) => Status::Unrecognised(value),
        }
    }

    pub fn is_serving(self) -> bool {
        self == Status::Known(ServingStatus::SERVING)
    }
}

impl std::fmt::Display for Status {
    /// The proto's names: `SERVING`, `NOT_SERVING`, `UNKNOWN`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Known(ServingStatus::SERVING) => f.write_str("SERVING"),
            Status::Known(ServingStatus::NOT_SERVING) => f.write_str("NOT_SERVING"),
            Status::Known(ServingStatus::UNKNOWN) => f.write_str("UNKNOWN"),
            Status::Unrecognised(value) => write!(f, "UNRECOGNISED({value})"),
        }
    }
}

/// Asks the agent at `address` for its health, within `timeout`.
pub fn check(address: &Address, timeout: Duration) -> Result<Status, CheckError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let thread_address = address.clone();
    let deadline = Instant::now() + timeout;
    std::thread::spawn(move || {
        // The receiver may have given up; nothing to do then.
        let _ = tx.send(check_blocking(&thread_address, deadline));
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(CheckError::Timeout {
            address: address.clone(),
            timeout,
        })
    })
}

fn check_blocking(address: &Address, deadline: Instant) -> Result<Status, CheckError> {
    let fd = connect(address, deadline)?;
    let request_error = |source| CheckError::Request {
        address: address.clone(),
        source,
    };
    let client = ttrpc::Client::new(fd.into_raw_fd()).map_err(request_error)?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    // ttrpc reads a zero timeout as none.
    let remaining = remaining.max(Duration::from_millis(1));
    let response = HealthClient::new(client)
        .check(
            ttrpc::context::with_duration(remaining),
            &CheckRequest::new(),
        )
        .map_err(request_error)?;
    Ok(Status::from_response(&response))
}

/// A stream to the agent, ready for ttRPC.
fn connect(address: &Address, deadline: Instant) -> Result<OwnedFd, CheckError> {
    let connect_error = |source| CheckError::Connect {
        address: address.clone(),
        source,
    };
    match address {
        Address::Unix(path) => connect_unix(path).map(OwnedFd::from).map_err(connect_error),
        Address::Vsock { cid, .. } if *cid == crate::address::CID_ANY => Err(CheckError::AnyCid {
            address: address.clone(),
        }),
        Address::Vsock { cid, port } => {
            vsock::connect(*cid, *port).map_err(|(_, source)| connect_error(source))
        }
        Address::HybridVsock { path, port } => {
            let mut stream = connect_unix(path).map_err(connect_error)?;
            hybrid_handshake(&mut stream, *port, deadline).map_err(|err| match err {
                Handshake::Io(source) => CheckError::HandshakeIo {
                    address: address.clone(),
                    source,
                },
                Handshake::Refused(reply) => CheckError::HandshakeRefused {
                    address: address.clone(),
                    reply,
                },
            })?;
            Ok(OwnedFd::from(stream))
        }
    }
}

fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    match crate::server::abstract_name(path) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            UnixStream::connect_addr(&addr)
        }
        None => UnixStream::connect(path),
    }
}

#[derive(Debug)]
enum Handshake {
    Io(io::Error),
    Refused(String),
}

/// Firecracker's hybrid vsock handshake: `CONNECT PORT\n`, then a line
/// `OK HOST_PORT\n`. Read a byte at a time so that nothing after the
/// line, which belongs to ttRPC, is consumed.
fn hybrid_handshake(
    stream: &mut UnixStream,
    port: u32,
    deadline: Instant,
) -> Result<(), Handshake> {
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(remaining))
        .and_then(|()| stream.set_write_timeout(Some(remaining)))
        .map_err(Handshake::Io)?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(Handshake::Io)?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(Handshake::Refused(format!(
                    "{} (then end of stream)",
                    String::from_utf8_lossy(&line)
                )))
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_HANDSHAKE_LINE => {
                return Err(Handshake::Refused(format!(
                    "{}...",
                    String::from_utf8_lossy(&line)
                )))
            }
            Ok(_) => line.push(byte[0]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(Handshake::Io(err)),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(Handshake::Refused(
            String::from_utf8_lossy(&line).into_owned(),
        ));
    }
    // ttrpc's client polls and reads without timeouts of its own.
    stream
        .set_read_timeout(None)
        .and_then(|()| stream.set_write_timeout(None))
        .map_err(Handshake::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names() {
        assert_eq!(Status::Known(ServingStatus::SERVING).to_string(), "SERVING");
        assert_eq!(
            Status::Known(ServingStatus::NOT_SERVING).to_string(),
            "NOT_SERVING"
        );
        assert_eq!(Status::Known(ServingStatus::UNKNOWN).to_string(), "UNKNOWN");
        assert_eq!(Status::Unrecognised(7).to_string(), "UNRECOGNISED(7)");
        assert!(Status::Known(ServingStatus::SERVING).is_serving());
        assert!(!Status::Known(ServingStatus::NOT_SERVING).is_serving());
    }

    fn handshake_with(reply: &'static [u8]) -> Result<(), Handshake> {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut request = [0u8; 13];
            theirs.read_exact(&mut request).unwrap();
            assert_eq!(&request, b"CONNECT 1024\n");
            theirs.write_all(reply).unwrap();
            theirs.shutdown(std::net::Shutdown::Write).unwrap();
            // Hold the stream open until the client is done.
            let mut rest = Vec::new();
            let _ = theirs.read_to_end(&mut rest);
        });
        let result = hybrid_handshake(&mut ours, 1024, Instant::now() + Duration::from_secs(5));
        drop(ours);
        peer.join().unwrap();
        result
    }

    #[test]
    fn handshake_accepts_ok_and_leaves_what_follows() {
        let (mut ours, mut theirs) = UnixStream::pair().unwrap();
        theirs.write_all(b"OK 1073741824\nTTRPC").unwrap();
        let mut request = [0u8; 13];
        hybrid_handshake(&mut ours, 1024, Instant::now() + Duration::from_secs(5)).unwrap();
        theirs.read_exact(&mut request).unwrap();
        assert_eq!(&request, b"CONNECT 1024\n");
        let mut rest = [0u8; 5];
        ours.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"TTRPC");
    }

    #[test]
    fn handshake_refusals_are_reported() {
        match handshake_with(b"NO\n") {
            Err(Handshake::Refused(reply)) => assert_eq!(reply, "NO"),
            other => panic!("{other:?}"),
        }
        match handshake_with(b"OK") {
            Err(Handshake::Refused(reply)) => assert_eq!(reply, "OK (then end of stream)"),
            other => panic!("{other:?}"),
        }
        match handshake_with(&[b'x'; 200]) {
            Err(Handshake::Refused(reply)) => assert!(reply.ends_with("xxx...")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_times_out() {
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let result = hybrid_handshake(&mut ours, 1024, Instant::now() + Duration::from_millis(50));
        assert!(matches!(result, Err(Handshake::Io(_))), "{result:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let address = Address::Unix("/nonexistent/agent-shim/agent.sock".into());
        let err = check(&address, Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            crate::Report(&err).to_string(),
            "cannot connect to unix:///nonexistent/agent-shim/agent.sock: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn any_cid_is_refused() {
        let address = crate::address::DEFAULT_SERVER_ADDR;
        let err = check(&address, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, CheckError::AnyCid { .. }), "{err:?}");
    }
}
