//! The agent's ttRPC server, as far as the shim answers: Kata's
//! `grpc.Health` service, which the runtime calls to see that the agent is
//! up (`Check`) and which version it runs (`Version`).
//!
//! The server is ttrpc's asynchronous one, as kata-agent's: a tokio
//! current-thread runtime on one thread of its own serves every connection.
//! (ttrpc 0.10's synchronous server spins on a connection that announced a
//! frame over 4 MiB and then closed, about a million reads of the closed
//! socket, with a few threads per connection: the `ttrpc_frames` fuzz
//! target ran out of memory on a flood of them.) Every other method of the
//! agent's protocol (`grpc.AgentService` in Kata's agent.proto, listed in
//! [`AGENT_SERVICE_METHODS`]) is answered with the ttRPC UNIMPLEMENTED
//! status, as kata-agent answers a method it lacks. Outside that, the async
//! server answers as it answers for kata-agent: a method a service lacks
//! with UNIMPLEMENTED "METHOD method", a service it lacks with
//! INVALID_ARGUMENT "SERVICE service does not exist".
//!
//! Where it listens: the `--server-addr` argument, else `agent.server_addr`
//! on the kernel command line, else kata-agent's default `vsock://-1:1024`.
//! An address that was asked for and cannot be listened on is an error
//! ([`start`]). The default one is forgiven when this system has no vsock
//! (see [`ServerError::vsock_unavailable`]): then the shim runs without a
//! server, so it still works as a lifecycle stand-in on hosts and in
//! containers.

use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::address::Address;
#[cfg(doc)]
use crate::address::DEFAULT_SERVER_ADDR;
use crate::limits::{Accept, Limits, Registry};
use crate::protocols::health::health_check_response::ServingStatus;
use crate::protocols::health::{CheckRequest, HealthCheckResponse, VersionCheckResponse};
use crate::protocols::health_ttrpc::{create_health, Health};
use crate::vsock::{self, Step};

/// The value of both fields of `VersionCheckResponse`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {address}: no usable vsock on this system")]
    VsockSocket {
        address: Address,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {address}")]
    Listen {
        address: Address,
        #[source]
        source: io::Error,
    },
    #[error("{address} is a client address; the server listens on unix:// or vsock://")]
    NotListenable { address: Address },
    #[error("cannot start the agent server on {address}")]
    Start {
        address: Address,
        #[source]
        source: ttrpc::Error,
    },
}

impl ServerError {
    /// True when the failure means this system has no vsock to listen on,
    /// rather than a problem with the address: `socket(AF_VSOCK)` itself
    /// failed (the family is not built, not loaded or not allowed, e.g.
    /// EAFNOSUPPORT), or `bind` found no such device or address (ENODEV,
    /// EADDRNOTAVAIL). EADDRINUSE, EACCES and the like are not.
    pub fn vsock_unavailable(&self) -> bool {
        match self {
            ServerError::VsockSocket { .. } => true,
            ServerError::Listen {
                address: Address::Vsock { .. },
                source,
            } => matches!(
                source.raw_os_error(),
                Some(libc_errno::ENODEV | libc_errno::EADDRNOTAVAIL)
            ),
            _ => false,
        }
    }
}

/// The two errno values [`ServerError::vsock_unavailable`] looks for,
/// through rustix so the crate needs no libc.
mod libc_errno {
    pub const ENODEV: i32 = rustix::io::Errno::NODEV.raw_os_error();
    pub const EADDRNOTAVAIL: i32 = rustix::io::Errno::ADDRNOTAVAIL.raw_os_error();
}

/// Answers `Check` with SERVING and `Version` with the crate version.
///
/// When `announce` is set, the first answered `Check` also writes the line
/// `agent-shim: health_check boottime_us=N` to stdout: the guest time at
/// which the runtime (the host) first saw the agent up. It is written to
/// file descriptor 1 directly, as the main thread holds the locked
/// `io::Stdout` for the process's life.
#[derive(Debug, Default)]
pub struct HealthService {
    announce: bool,
    announced: AtomicBool,
}

impl HealthService {
    pub fn new(announce: bool) -> Self {
        Self {
            announce,
            announced: AtomicBool::new(false),
        }
    }
}

#[async_trait::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        let mut response = HealthCheckResponse::new();
        response.status = ServingStatus::SERVING.into();
        if self.announce && !self.announced.swap(true, Ordering::Relaxed) {
            let line = format!(
                "agent-shim: health_check boottime_us={}\n",
                crate::boottime_us()
            );
            // One write(2) of a short line; a closed stdout loses the
            // marker, not the answer.
            if let Err(err) = rustix::io::write(rustix::stdio::stdout(), line.as_bytes()) {
                log::warn!("cannot write the health_check line to stdout: {err}");
            }
        }
        Ok(response)
    }

    async fn version(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut response = VersionCheckResponse::new();
        response.grpc_version = VERSION.to_owned();
        response.agent_version = VERSION.to_owned();
        Ok(response)
    }
}

/// Every method of `service AgentService` in Kata's agent.proto
/// (kata-containers `src/libs/protocols/protos/agent.proto`, package
/// `grpc`). The shim implements none of them.
pub const AGENT_SERVICE_METHODS: &[&str] = &[
    "CreateContainer",
    "StartContainer",
    "RemoveContainer",
    "ExecProcess",
    "SignalProcess",
    "WaitProcess",
    "UpdateContainer",
    "UpdateEphemeralMounts",
    "StatsContainer",
    "PauseContainer",
    "ResumeContainer",
    "RemoveStaleVirtiofsShareMounts",
    "WriteStdin",
    "ReadStdout",
    "ReadStderr",
    "CloseStdin",
    "TtyWinResize",
    "UpdateInterface",
    "UpdateRoutes",
    "ListInterfaces",
    "ListRoutes",
    "AddARPNeighbors",
    "GetIPTables",
    "SetIPTables",
    "GetMetrics",
    "CreateSandbox",
    "DestroySandbox",
    "OnlineCPUMem",
    "ReseedRandomDev",
    "GetGuestDetails",
    "MemHotplugByProbe",
    "SetGuestDateTime",
    "CopyFile",
    "GetOOMEvent",
    "AddSwap",
    "GetVolumeStats",
    "ResizeVolume",
    "SetPolicy",
];

/// Answers any request with the ttRPC UNIMPLEMENTED status, without
/// decoding its payload.
#[derive(Debug, Clone, Copy)]
struct Unimplemented;

#[async_trait::async_trait]
impl ttrpc::r#async::MethodHandler for Unimplemented {
    async fn handler(
        &self,
        _ctx: ttrpc::r#async::TtrpcContext,
        req: ttrpc::Request,
    ) -> ttrpc::Result<ttrpc::Response> {
        let status = ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            format!(
                "/{}/{} is not implemented by agent-shim",
                req.service, req.method
            ),
        );
        Ok(ttrpc::proto::ResponseInit::init_status(status))
    }
}

/// The service table of `grpc.AgentService`: every method unimplemented.
fn agent_service() -> HashMap<String, ttrpc::r#async::Service> {
    let methods = AGENT_SERVICE_METHODS
        .iter()
        .map(|method| {
            let handler: Box<dyn ttrpc::r#async::MethodHandler + Send + Sync> =
                Box::new(Unimplemented);
            ((*method).to_owned(), handler)
        })
        .collect();
    let service = ttrpc::r#async::Service {
        methods,
        streams: HashMap::new(),
    };
    HashMap::from([("grpc.AgentService".to_owned(), service)])
}

/// A running server. Dropping it shuts it down: it stops listening, closes
/// its connections, stops the runtime's thread and removes a unix socket
/// file it created.
pub struct AgentServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    address: Address,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for AgentServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The server's own thread: a current-thread runtime that serves the
/// connections `listener` accepts, within the registry's limits
/// ([`crate::limits`]), until `stop`, then shuts the server down. The first
/// message on `started` says whether it is serving.
fn serve(
    listener: OwnedFd,
    registry: Arc<Registry>,
    health: HealthService,
    started: std::sync::mpsc::Sender<Result<(), ttrpc::Error>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = started.send(Err(ttrpc::Error::Others(format!(
                "create the async runtime: {err}"
            ))));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match Accept::new(listener, registry) {
            Ok(accept) => ttrpc::r#async::transport::Listener::new(accept),
            Err(err) => {
                let _ = started.send(Err(ttrpc::Error::Others(format!(
                    "take over the listener: {err}"
                ))));
                return;
            }
        };
        let mut server = ttrpc::r#async::Server::new()
            .add_listener(listener)
            .register_service(create_health(Arc::new(health)))
            .register_service(agent_service());
        if let Err(err) = server.start().await {
            let _ = started.send(Err(err));
            return;
        }
        let _ = started.send(Ok(()));
        // Until the AgentServer is dropped (or gone with its sender).
        let _ = stop.await;
        if let Err(err) = server.shutdown().await {
            log::warn!("shutting the agent server down: {err}");
        }
    });
}

impl AgentServer {
    /// Listens on `address` and starts serving; when this returns, clients
    /// can connect.
    pub fn start(address: &Address) -> Result<Self, ServerError> {
        Self::start_with(address, HealthService::new(false))
    }

    /// [`AgentServer::start`] with the given health service.
    pub fn start_with(address: &Address, health: HealthService) -> Result<Self, ServerError> {
        Self::start_limited(address, health, Limits::default())
    }

    /// [`AgentServer::start_with`] within the given limits.
    pub fn start_limited(
        address: &Address,
        health: HealthService,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        let listener = listen(address)?;
        let registry = Registry::new(limits);
        let serving = Arc::clone(&registry);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let fail = |source: ttrpc::Error| {
            remove_socket_file(address);
            ServerError::Start {
                address: address.clone(),
                source,
            }
        };
        let thread = std::thread::Builder::new()
            .name("agent-server".into())
            .spawn(move || serve(listener, serving, health, started_tx, stop_rx))
            .map_err(|err| fail(ttrpc::Error::Others(format!("spawn its thread: {err}"))))?;
        match started_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop: Some(stop_tx),
                thread: Some(thread),
                address: address.clone(),
                registry,
            }),
            Ok(Err(source)) => {
                let _ = thread.join();
                Err(fail(source))
            }
            Err(_) => {
                let _ = thread.join();
                Err(fail(ttrpc::Error::Others(
                    "its thread ended before serving".into(),
                )))
            }
        }
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Connections counted against the limit now.
    pub fn connections(&self) -> usize {
        self.registry.connections()
    }

    /// Payload bytes pinned by partial frames now.
    pub fn pinned(&self) -> usize {
        self.registry.pinned()
    }

    /// Stops the server (the same as dropping it).
    pub fn shutdown(self) {}
}

impl Drop for AgentServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        remove_socket_file(&self.address);
    }
}

/// Starts the server where the options say: `address` if one was given
/// (argument or kernel command line), else `default` (normally
/// [`DEFAULT_SERVER_ADDR`]). `None` when the default was used and this
/// system has no vsock; the reason is logged as a warning. The first
/// answered health check is announced on stdout ([`HealthService`]).
pub fn start(
    address: Option<&Address>,
    default: &Address,
) -> Result<Option<AgentServer>, ServerError> {
    let health = || HealthService::new(true);
    match address {
        Some(address) => AgentServer::start_with(address, health()).map(Some),
        None => match AgentServer::start_with(default, health()) {
            Ok(server) => Ok(Some(server)),
            Err(err) if err.vsock_unavailable() => {
                log::warn!(
                    "{}; running without the agent server (give --server-addr to require one)",
                    crate::Report(&err)
                );
                Ok(None)
            }
            Err(err) => Err(err),
        },
    }
}

fn listen(address: &Address) -> Result<OwnedFd, ServerError> {
    match address {
        Address::Unix(path) => {
            let listener = bind_unix(path).map_err(|source| ServerError::Listen {
                address: address.clone(),
                source,
            })?;
            Ok(OwnedFd::from(listener))
        }
        Address::Vsock { cid, port } => vsock::listen(*cid, *port).map_err(|(step, source)| {
            let address = address.clone();
            match step {
                Step::Socket => ServerError::VsockSocket { address, source },
                _ => ServerError::Listen { address, source },
            }
        }),
        Address::HybridVsock { .. } => Err(ServerError::NotListenable {
            address: address.clone(),
        }),
    }
}

/// A non-blocking listener on a unix socket path, or on an abstract name
/// for a path starting with `@`.
pub(crate) fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    let listener = match abstract_name(path) {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            UnixListener::bind_addr(&addr)?
        }
        None => UnixListener::bind(path)?,
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

pub(crate) fn abstract_name(path: &Path) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().strip_prefix(b"@")
}

/// Removes the socket file of a unix address; best effort, as the file may
/// never have been created or may be gone.
fn remove_socket_file(address: &Address) {
    if let Address::Unix(path) = address {
        if abstract_name(path).is_none() {
            let _ = std::fs::remove_file(PathBuf::from(path));
        }
    }
}
