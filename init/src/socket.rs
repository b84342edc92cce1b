//! Listening sockets of `.socket` units (docs/init.md, "Socket
//! activation"): created by init, passed to the unit's service as
//! descriptors 3, 4, ... Init never accepts a connection (`Accept=no`): a
//! pending one only makes it start the service.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

use crate::unit::{ListenAddress, Socket};
use crate::users;

/// Why a socket unit could not listen.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("user {0:?} (SocketUser=) not found in /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} (SocketGroup=) not found in /etc/group")]
    UnknownGroup(String),
    #[error("create directory {} for {addr}", .dir.display())]
    Directory {
        dir: PathBuf,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("create a socket for {addr}")]
    Create {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("bind {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("bind {}: the path exists and is {kind}, not a socket; not removed", .path.display())]
    NotASocket { path: PathBuf, kind: &'static str },
    #[error("bind {addr}: in use by a live socket")]
    InUse { addr: String },
    #[error("remove stale socket {}", .path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("set owner of {}", .path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: io::Error,
    },
}

/// The owner `SocketUser=`/`SocketGroup=` give socket files: `None` each
/// for unchanged (root). A user alone gives its own group too, as systemd.
pub fn owner(sock: &Socket) -> Result<(Option<u32>, Option<u32>), SocketError> {
    let mut uid = None;
    let mut gid = None;
    if let Some(user) = &sock.user {
        let passwd =
            crate::sys::read_regular_file(std::path::Path::new("/etc/passwd")).unwrap_or_default();
        let account = users::lookup_user(&passwd, user)
            .ok_or_else(|| SocketError::UnknownUser(user.clone()))?;
        uid = Some(account.uid);
        gid = Some(account.gid);
    }
    if let Some(group) = &sock.group {
        let groups =
            crate::sys::read_regular_file(std::path::Path::new("/etc/group")).unwrap_or_default();
        gid = Some(
            users::lookup_group(&groups, group)
                .ok_or_else(|| SocketError::UnknownGroup(group.clone()))?,
        );
    }
    Ok((uid, gid))
}

/// Creates, binds and listens on one `ListenStream=` address of `sock`
/// (non-blocking and close-on-exec, as systemd passes them). A socket file
/// left at the path is replaced when nothing listens on it any more;
/// anything else there is an error.
pub fn listen(
    addr: &ListenAddress,
    sock: &Socket,
    owner: (Option<u32>, Option<u32>),
) -> Result<OwnedFd, SocketError> {
    let name = || addr.to_string();
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| SocketError::Create {
        addr: name(),
        source: e.into(),
    })?;
    let bind_error = |e: rustix::io::Errno| SocketError::Bind {
        addr: name(),
        source: e.into(),
    };
    match addr {
        ListenAddress::Abstract(n) => {
            let a = SocketAddrUnix::new_abstract_name(n.as_bytes()).map_err(bind_error)?;
            match rustix::net::bind(&fd, &a) {
                Err(rustix::io::Errno::ADDRINUSE) => {
                    return Err(SocketError::InUse { addr: name() })
                }
                other => other.map_err(bind_error)?,
            }
        }
        ListenAddress::Path(path) => {
            if let Some(dir) = path.parent() {
                make_parents(dir, sock.directory_mode).map_err(|source| {
                    SocketError::Directory {
                        dir: dir.to_path_buf(),
                        addr: name(),
                        source,
                    }
                })?;
            }
            let a = SocketAddrUnix::new(path.as_path()).map_err(bind_error)?;
            match bind_with_mode(&fd, &a, sock.socket_mode) {
                Err(rustix::io::Errno::ADDRINUSE) => {
                    remove_stale(path)?;
                    bind_with_mode(&fd, &a, sock.socket_mode).map_err(bind_error)?;
                }
                other => other.map_err(bind_error)?,
            }
            if owner != (None, None) {
                let uid = owner.0.map(rustix::fs::Uid::from_raw);
                let gid = owner.1.map(rustix::fs::Gid::from_raw);
                let chowned = rustix::fs::chownat(
                    rustix::fs::CWD,
                    path.as_path(),
                    uid,
                    gid,
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                );
                if let Err(e) = chowned {
                    let _ = std::fs::remove_file(path);
                    return Err(SocketError::Chown {
                        path: path.clone(),
                        source: e.into(),
                    });
                }
            }
        }
    }
    // Backlog= as asked; by default the most the kernel allows (it caps the
    // value at net.core.somaxconn), as systemd's default does.
    let backlog = sock
        .backlog
        .map_or(i32::MAX, |b| i32::try_from(b).unwrap_or(i32::MAX));
    if let Err(e) = rustix::net::listen(&fd, backlog) {
        remove(addr);
        return Err(SocketError::Listen {
            addr: name(),
            source: e.into(),
        });
    }
    Ok(fd)
}

/// bind(2) with the umask set so that the file gets `mode` exactly (init
/// is single-threaded: nothing else creates files meanwhile).
fn bind_with_mode(fd: &OwnedFd, addr: &SocketAddrUnix, mode: u32) -> Result<(), rustix::io::Errno> {
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(!mode & 0o777));
    let bound = rustix::net::bind(fd, addr);
    rustix::process::umask(old);
    bound
}

/// Creates the missing directories of `dir` with `mode` exactly.
fn make_parents(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let made = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir);
    rustix::process::umask(old);
    made
}

/// The path of a failed bind is taken: a socket file nothing listens on
/// (connect is refused) is removed, as systemd does; a live socket or any
/// other kind of file is an error and stays.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let kind = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => None,
        Ok(m) if m.is_dir() => Some("a directory"),
        Ok(m) if m.is_file() => Some("a regular file"),
        Ok(m) if m.file_type().is_symlink() => Some("a symbolic link"),
        Ok(_) => Some("a special file"),
        // Gone meanwhile: the second bind tells.
        Err(_) => return Ok(()),
    };
    if let Some(kind) = kind {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
            kind,
        });
    }
    if is_live(path) {
        return Err(SocketError::InUse {
            addr: path.display().to_string(),
        });
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(SocketError::RemoveStale {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => {
            log::info!("removed stale socket {}", path.display());
            Ok(())
        }
    }
}

/// Whether a process listens on the socket file at `path`: a non-blocking
/// connect is refused when none does (and succeeds, or finds the backlog
/// full, when one does).
fn is_live(path: &Path) -> bool {
    let Ok(probe) = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    ) else {
        return true;
    };
    let Ok(a) = SocketAddrUnix::new(path) else {
        return true;
    };
    !matches!(
        rustix::net::connect(&probe, &a),
        Err(rustix::io::Errno::CONNREFUSED | rustix::io::Errno::NOENT)
    )
}

/// Removes the socket file of `addr` (`RemoveOnStop=`), if it is a socket.
pub fn remove(addr: &ListenAddress) {
    let ListenAddress::Path(path) = addr else {
        return;
    };
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("remove socket {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minos-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn sock(path: &Path) -> (ListenAddress, Socket) {
        let addr = ListenAddress::Path(path.to_path_buf());
        let s = Socket {
            listen: vec![addr.clone()],
            ..Socket::default()
        };
        (addr, s)
    }

    #[test]
    fn listens_with_mode_and_parents() {
        let d = tmp("mode");
        let p = d.join("a/b/s.sock");
        let (addr, mut s) = sock(&p);
        s.socket_mode = 0o600;
        s.directory_mode = 0o711;
        let _fd = listen(&addr, &s, (None, None)).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(d.join("a/b")).unwrap().mode() & 0o777,
            0o711
        );
        std::os::unix::net::UnixStream::connect(&p).unwrap();
        remove(&addr);
        assert!(!p.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stale_socket_is_replaced_live_one_and_files_are_not() {
        let d = tmp("stale");
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("s.sock");
        let (addr, s) = sock(&p);
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(&p).unwrap());
        assert!(p.exists());
        let fd = listen(&addr, &s, (None, None)).unwrap();
        // Now live: a second listener is refused and the file kept.
        let e = listen(&addr, &s, (None, None)).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert!(p.exists());
        drop(fd);
        let f = d.join("file");
        std::fs::write(&f, "keep").unwrap();
        let (addr, s) = sock(&f);
        let e = listen(&addr, &s, (None, None)).unwrap_err();
        assert_eq!(
            crate::error_chain(&e),
            format!(
                "bind {}: the path exists and is a regular file, not a socket; not removed",
                f.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "keep");
        let (addr, s) = sock(&d);
        let e = listen(&addr, &s, (None, None)).unwrap_err();
        assert!(crate::error_chain(&e).contains("is a directory"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn unknown_owner_names_the_key() {
        let s = Socket {
            user: Some("no-such-user-here".into()),
            ..Socket::default()
        };
        let e = owner(&s).unwrap_err();
        assert_eq!(
            e.to_string(),
            "user \"no-such-user-here\" (SocketUser=) not found in /etc/passwd"
        );
    }

    #[test]
    fn abstract_names() {
        let name = format!("minos-test-{}", std::process::id());
        let addr = ListenAddress::Abstract(name);
        let s = Socket::default();
        let _fd = listen(&addr, &s, (None, None)).unwrap();
        let e = listen(&addr, &s, (None, None)).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
    }
}
