//! Agent addresses, written as Kata writes them (pure parsing).
//!
//! - `unix://PATH`: a unix stream socket; `unix://@NAME` is the abstract
//!   namespace;
//! - `vsock://CID:PORT`: AF_VSOCK; CID `-1` is `VMADDR_CID_ANY` (listen on
//!   any), so kata-agent's default `vsock://-1:1024`;
//! - `hvsock://PATH:PORT` (client only): the hybrid vsock of Firecracker and
//!   Cloud Hypervisor, a unix socket on the host at PATH where `CONNECT
//!   PORT\n` asks for a connection to the guest's vsock PORT.

use std::fmt;
use std::path::PathBuf;

/// `VMADDR_CID_ANY`, written `-1` in addresses.
pub const CID_ANY: u32 = u32::MAX;

/// kata-agent's port for the agent protocol.
pub const AGENT_PORT: u32 = 1024;

/// Where the server listens unless told otherwise: `vsock://-1:1024`.
pub const DEFAULT_SERVER_ADDR: Address = Address::Vsock {
    cid: CID_ANY,
    port: AGENT_PORT,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix://PATH`; a path starting with `@` is abstract.
    Unix(PathBuf),
    /// `vsock://CID:PORT`.
    Vsock { cid: u32, port: u32 },
    /// `hvsock://PATH:PORT`.
    HybridVsock { path: PathBuf, port: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address `{0}`: use unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT")]
    UnknownScheme(String),
    #[error("address `{0}`: empty path")]
    EmptyPath(String),
    #[error("address `{0}`: expected CID:PORT, CID a number or -1, PORT a number")]
    BadVsock(String),
    #[error("address `{0}`: expected PATH:PORT, PORT a number")]
    BadHybridVsock(String),
    #[error("address `{0}`: hvsock is for the host's side (the `check` client) only")]
    NotListenable(String),
}

impl Address {
    /// Parses any of the three forms.
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        if let Some(path) = text.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(AddressError::EmptyPath(text.to_owned()));
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else if let Some(rest) = text.strip_prefix("vsock://") {
            let bad = || AddressError::BadVsock(text.to_owned());
            let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
            let cid = if cid == "-1" {
                CID_ANY
            } else {
                parse_u32(cid).ok_or_else(bad)?
            };
            let port = parse_u32(port).ok_or_else(bad)?;
            Ok(Address::Vsock { cid, port })
        } else if let Some(rest) = text.strip_prefix("hvsock://") {
            let bad = || AddressError::BadHybridVsock(text.to_owned());
            // The path may hold colons; the port is after the last one.
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            if path.is_empty() {
                return Err(AddressError::EmptyPath(text.to_owned()));
            }
            let port = parse_u32(port).ok_or_else(bad)?;
            Ok(Address::HybridVsock {
                path: PathBuf::from(path),
                port,
            })
        } else {
            Err(AddressError::UnknownScheme(text.to_owned()))
        }
    }

    /// Parses an address a server can listen on (not `hvsock://`).
    pub fn parse_listen(text: &str) -> Result<Self, AddressError> {
        match Self::parse(text)? {
            Address::HybridVsock { .. } => Err(AddressError::NotListenable(text.to_owned())),
            address => Ok(address),
        }
    }
}

/// Decimal digits only: `+1`, ` 1` and the empty string are not ports.
fn parse_u32(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Vsock { cid: CID_ANY, port } => write!(f, "vsock://-1:{port}"),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
            Address::HybridVsock { path, port } => {
                write!(f, "hvsock://{}:{port}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms() {
        assert_eq!(
            Address::parse("unix:///run/agent.sock"),
            Ok(Address::Unix("/run/agent.sock".into()))
        );
        assert_eq!(
            Address::parse("unix://@agent"),
            Ok(Address::Unix("@agent".into()))
        );
        assert_eq!(
            Address::parse("vsock://-1:1024"),
            Ok(DEFAULT_SERVER_ADDR.clone())
        );
        assert_eq!(
            Address::parse("vsock://3:1024"),
            Ok(Address::Vsock { cid: 3, port: 1024 })
        );
        assert_eq!(
            Address::parse("vsock://4294967295:5"),
            Ok(Address::Vsock {
                cid: CID_ANY,
                port: 5
            })
        );
        assert_eq!(
            Address::parse("hvsock:///run/vc/fc/kata.hvsock:1024"),
            Ok(Address::HybridVsock {
                path: "/run/vc/fc/kata.hvsock".into(),
                port: 1024
            })
        );
        assert_eq!(
            Address::parse("hvsock://a:b:7"),
            Ok(Address::HybridVsock {
                path: "a:b".into(),
                port: 7
            })
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "unix:///tmp/a b",
            "unix://@x",
            "vsock://-1:1024",
            "vsock://2:1",
            "hvsock:///run/h.sock:1024",
        ] {
            assert_eq!(Address::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(DEFAULT_SERVER_ADDR.to_string(), "vsock://-1:1024");
    }

    #[test]
    fn malformed_addresses_are_named() {
        for (text, message) in [
            (
                "/run/agent.sock",
                "address `/run/agent.sock`: use unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT",
            ),
            ("tcp://1.2.3.4:5", "address `tcp://1.2.3.4:5`: use unix://PATH, vsock://CID:PORT or hvsock://PATH:PORT"),
            ("unix://", "address `unix://`: empty path"),
            ("hvsock://:1024", "address `hvsock://:1024`: empty path"),
            (
                "vsock://1024",
                "address `vsock://1024`: expected CID:PORT, CID a number or -1, PORT a number",
            ),
            (
                "vsock://-2:1",
                "address `vsock://-2:1`: expected CID:PORT, CID a number or -1, PORT a number",
            ),
            (
                "vsock://3:+1",
                "address `vsock://3:+1`: expected CID:PORT, CID a number or -1, PORT a number",
            ),
            (
                "vsock://3:4294967296",
                "address `vsock://3:4294967296`: expected CID:PORT, CID a number or -1, PORT a number",
            ),
            (
                "hvsock:///x.sock",
                "address `hvsock:///x.sock`: expected PATH:PORT, PORT a number",
            ),
        ] {
            assert_eq!(
                Address::parse(text).unwrap_err().to_string(),
                message,
                "{text}"
            );
        }
    }

    #[test]
    fn hvsock_cannot_be_listened_on() {
        assert_eq!(
            Address::parse_listen("hvsock:///x:1"),
            Err(AddressError::NotListenable("hvsock:///x:1".into()))
        );
        assert!(Address::parse_listen("unix:///x").is_ok());
        assert!(Address::parse_listen("vsock://-1:1024").is_ok());
    }
}
