//! The ttRPC target: bytes from the host on the agent's connection. One
//! agent-shim server runs for the whole process (on an abstract unix socket
//! of its own); each input is written on a fresh connection, which is then
//! closed. Every input is followed by a health check on another connection:
//! whatever a connection sent, the server must go on answering SERVING. A
//! server that stops answering panics the target, which is the finding.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use agent_shim::address::Address;

struct Shared {
    address: Address,
    _server: agent_shim::server::AgentServer,
}

/// The agent-shim binary runs with SIGPIPE ignored (Rust's runtime sets
/// that before `main`), so a peer that hangs up makes a write fail with
/// EPIPE instead of killing the process. libFuzzer's `main` does not, so
/// the harness does the same before the server starts.
#[allow(unsafe_code)]
fn ignore_sigpipe() {
    // SAFETY: signal(2) with SIG_IGN installs no handler code; it only
    // changes this process's disposition of SIGPIPE, as Rust's runtime does.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

fn shared() -> &'static Shared {
    static SERVER: OnceLock<Shared> = OnceLock::new();
    SERVER.get_or_init(|| {
        ignore_sigpipe();
        let name = format!("minos-fuzz-ttrpc-{}", std::process::id());
        let address = Address::parse_listen(&format!("unix://@{name}"))
            .unwrap_or_else(|e| panic!("fuzz harness: address: {e}"));
        let server = agent_shim::server::AgentServer::start(&address)
            .unwrap_or_else(|e| panic!("fuzz harness: cannot start the server: {e}"));
        Shared {
            address,
            _server: server,
        }
    })
}

fn connect(name: &str) -> Option<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()?;
    UnixStream::connect_addr(&addr).ok()
}

pub fn run(data: &[u8]) {
    let s = shared();
    let name = match &s.address {
        Address::Unix(path) => path.to_string_lossy().trim_start_matches('@').to_string(),
        other => panic!("fuzz harness: unexpected address {other:?}"),
    };
    if let Some(mut conn) = connect(&name) {
        let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = conn.write_all(data);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        while let Ok(n) = conn.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
    match agent_shim::client::check(&s.address, Duration::from_secs(5)) {
        Ok(status) if status.is_serving() => {}
        other => panic!("the agent server stopped answering after an input: {other:?}"),
    }
}
