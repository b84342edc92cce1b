//! sd_notify: tell a service manager that the agent is ready.
//!
//! Protocol (systemd's `sd_notify(3)`): one datagram of `KEY=VALUE` lines to
//! the unix socket named by `NOTIFY_SOCKET`; a name starting with `@` is in
//! the abstract namespace (the `@` stands for the leading NUL byte).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddress {
    /// A socket file, e.g. `/run/systemd/notify`.
    Path(PathBuf),
    /// An abstract socket; the name without the leading `@`.
    Abstract(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notify socket `{socket}` is neither an absolute path nor @abstract")]
    UnsupportedAddress { socket: String },
    #[error("notify socket `{socket}` has an invalid address")]
    InvalidAddress {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot create a socket to notify `{socket}`")]
    CreateSocket {
        socket: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send to notify socket `{socket}`")]
    Send {
        socket: String,
        #[source]
        source: io::Error,
    },
}

/// Parses the value of `NOTIFY_SOCKET`.
///
/// systemd also accepts `vsock:CID:PORT`; that is not supported yet and is
/// reported as an error rather than silently ignored.
pub fn parse_address(socket: &OsStr) -> Result<NotifyAddress, NotifyError> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'/') => Ok(NotifyAddress::Path(PathBuf::from(socket))),
        Some(b'@') if bytes.len() > 1 => Ok(NotifyAddress::Abstract(
            bytes.get(1..).unwrap_or_default().to_vec(),
        )),
        _ => Err(NotifyError::UnsupportedAddress {
            socket: socket.to_string_lossy().into_owned(),
        }),
    }
}

/// Sends `message` (e.g. `READY=1`) as one datagram to the socket named by
/// `socket`, the value of `NOTIFY_SOCKET`.
pub fn notify(socket: &OsStr, message: &str) -> Result<(), NotifyError> {
    let name = || socket.to_string_lossy().into_owned();
    let address = match parse_address(socket)? {
        NotifyAddress::Path(path) => {
            SocketAddr::from_pathname(path).map_err(|source| NotifyError::InvalidAddress {
                socket: name(),
                source,
            })?
        }
        NotifyAddress::Abstract(bytes) => {
            SocketAddr::from_abstract_name(bytes).map_err(|source| NotifyError::InvalidAddress {
                socket: name(),
                source,
            })?
        }
    };
    let sender = UnixDatagram::unbound().map_err(|source| NotifyError::CreateSocket {
        socket: name(),
        source,
    })?;
    sender
        .send_to_addr(message.as_bytes(), &address)
        .map_err(|source| NotifyError::Send {
            socket: name(),
            source,
        })?;
    Ok(())
}

/// `NOTIFY_SOCKET` from the environment, when set and not empty.
pub fn socket_from_env() -> Option<OsString> {
    std::env::var_os("NOTIFY_SOCKET").filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn unique(tag: &str) -> String {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        format!(
            "agent-shim-test-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_address(OsStr::new("/run/notify")).unwrap(),
            NotifyAddress::Path("/run/notify".into())
        );
        assert_eq!(
            parse_address(OsStr::new("@minos/notify")).unwrap(),
            NotifyAddress::Abstract(b"minos/notify".to_vec())
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            let err = parse_address(OsStr::new(bad)).unwrap_err();
            assert!(
                matches!(err, NotifyError::UnsupportedAddress { ref socket } if socket == bad),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn sends_ready_to_path_socket() {
        let dir = std::env::temp_dir().join(unique("dir"));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_ready_to_abstract_socket() {
        let name = unique("abstract");
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&address).unwrap();
        notify(OsStr::new(&format!("@{name}")), "READY=1").unwrap();
        assert_eq!(receive(&listener), "READY=1");
    }

    #[test]
    fn missing_socket_names_the_path() {
        let path = std::env::temp_dir().join(unique("missing"));
        let err = notify(path.as_os_str(), "READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot send to notify socket `{}`", path.display())
        );
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("No such file"), "{source}");
    }
}
