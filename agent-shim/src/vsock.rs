//! AF_VSOCK stream sockets: the one place that uses `nix`, for the
//! `sockaddr_vm` address rustix has no type for. The socket itself is
//! created, listened on and owned through rustix and std, so nothing here
//! needs `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::VsockAddr;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Pending connections the kernel queues for the listener.
const BACKLOG: i32 = 16;

/// Which system call failed; a failed `socket` means this system offers
/// no AF_VSOCK at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Socket,
    Bind,
    Listen,
    Connect,
}

/// A non-blocking listening socket on `cid:port` (the ttRPC server polls
/// it), close-on-exec.
pub fn listen(cid: u32, port: u32) -> Result<OwnedFd, (Step, io::Error)> {
    let fd = socket(SocketFlags::CLOEXEC | SocketFlags::NONBLOCK)?;
    nix::sys::socket::bind(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .map_err(|errno| (Step::Bind, io::Error::from(errno)))?;
    rustix::net::listen(&fd, BACKLOG).map_err(|err| (Step::Listen, err.into()))?;
    Ok(fd)
}

/// A blocking stream connected to `cid:port`, close-on-exec.
pub fn connect(cid: u32, port: u32) -> Result<OwnedFd, (Step, io::Error)> {
    let fd = socket(SocketFlags::CLOEXEC)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &VsockAddr::new(cid, port))
        .map_err(|errno| (Step::Connect, io::Error::from(errno)))?;
    Ok(fd)
}

fn socket(flags: SocketFlags) -> Result<OwnedFd, (Step, io::Error)> {
    rustix::net::socket_with(AddressFamily::VSOCK, SocketType::STREAM, flags, None)
        .map_err(|err| (Step::Socket, err.into()))
}
