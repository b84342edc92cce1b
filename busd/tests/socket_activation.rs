//! busd started as a socket-activated service is: the listening socket as
//! fd 3, `LISTEN_FDS=1` and `LISTEN_PID` naming busd itself. A shell stands
//! in for the service manager (`exec 3<&N`, `LISTEN_PID=$$`, `exec busd`).
//! The cgroup root is a plain directory: only the bus side is exercised.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn socket_activation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cg");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("cgroup.controllers"), "").unwrap();
    let sock = dir.path().join("system_bus_socket");
    let listener = UnixListener::bind(&sock).unwrap();
    // Inherited by the shell, which moves it to 3.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let n = listener.as_raw_fd();
    // The listener may already be fd 3.
    let to_3 = if n == 3 {
        String::new()
    } else {
        format!("exec 3<&{n} {n}<&-; ")
    };
    let script = format!("{to_3}LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --cgroup-root \"$1\"");
    let _busd = Kill(
        Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_busd")])
            .arg(&root)
            .spawn()
            .unwrap(),
    );
    drop(listener);

    let conn = zbus3::blocking::ConnectionBuilder::address(
        format!("unix:path={}", sock.display()).as_str(),
    )
    .unwrap()
    .build()
    .unwrap();
    let manager = zbus3::blocking::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager",
    )
    .unwrap();
    let version: String = manager.get_property("Version").unwrap();
    assert_eq!(version, "257");
    let owner = zbus3::blocking::fdo::DBusProxy::new(&conn)
        .unwrap()
        .get_name_owner("org.freedesktop.systemd1".try_into().unwrap())
        .unwrap();
    assert_eq!(owner.as_str(), ":1.0");
}

/// Without socket activation and without `--listen`, busd says what is
/// missing and fails.
#[test]
fn no_socket_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("cgroup.controllers"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_busd"))
        .arg("--cgroup-root")
        .arg(dir.path())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "busd: error: no socket: neither socket activation (LISTEN_FDS) nor --listen PATH"
        ),
        "{err}"
    );
}
