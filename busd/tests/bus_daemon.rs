//! busd as a client of a real dbus-daemon (an osbuilder rootfs has one):
//! it owns `org.freedesktop.systemd1` there and a zbus 3.15 client reaches
//! it through the daemon. The cgroup root is a plain directory standing in
//! for cgroup v2 (slices only need directories), so this runs without
//! namespaces; the scope flow on real cgroups is `agent_flow.rs`.
//!
//! Needs `dbus-daemon` (Debian package `dbus`). Without it the test prints
//! one SKIPPED line: the project's test setup installs it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zbus3::zvariant::{OwnedObjectPath, Value};

const ROLE: &str = "BUSD_BUS_IT_ROLE";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn manager() -> zbus3::blocking::Proxy<'static> {
    let conn = zbus3::blocking::Connection::system().expect("connect to the bus");
    zbus3::blocking::Proxy::new_owned(
        conn,
        "org.freedesktop.systemd1".to_string(),
        "/org/freedesktop/systemd1".to_string(),
        "org.freedesktop.systemd1.Manager".to_string(),
    )
    .unwrap()
}

fn error_name<T: std::fmt::Debug>(r: zbus3::Result<T>) -> (String, String) {
    match r {
        Err(zbus3::Error::MethodError(n, text, _)) => (n.to_string(), text.unwrap_or_default()),
        other => panic!("wanted a D-Bus error, got {other:?}"),
    }
}

#[test]
fn bus_daemon_mode() {
    if std::env::var(ROLE).as_deref() == Ok("nonroot") {
        let (name, text) = error_name::<OwnedObjectPath>(manager().call("GetUnit", &("x.slice",)));
        assert_eq!(name, "org.freedesktop.DBus.Error.AccessDenied", "{text}");
        return;
    }
    let Some(daemon) = which("dbus-daemon") else {
        println!(
            "SKIPPED bus_daemon_mode: dbus-daemon not found (Debian package dbus: apt-get install -y dbus)"
        );
        return;
    };
    if !rustix::process::geteuid().is_root() {
        // Skipped in the fast tier (`cargo test`); `cargo xtask test` sets
        // MINOS_REQUIRE_ROOT so that CI can never skip it.
        assert!(
            std::env::var_os("MINOS_REQUIRE_ROOT").is_none(),
            "bus_daemon_mode needs root (systemd1 methods answer root only): run the tests as \
             root, as `cargo xtask test` and CI do"
        );
        println!("SKIPPED bus_daemon_mode: needs root; `cargo xtask test` runs it");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("busd-bus-it")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.path().join("bus.sock");
    let config = dir.path().join("bus.conf");
    fs::write(
        &config,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            sock.display()
        ),
    )
    .unwrap();
    let _daemon = Kill(
        Command::new(daemon)
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile"])
            .spawn()
            .unwrap(),
    );
    wait_for(|| sock.exists(), "dbus-daemon's socket");
    let address = format!("unix:path={}", sock.display());

    // A plain directory for cgroup v2.
    let root = dir.path().join("cg");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("cgroup.controllers"), "").unwrap();
    fs::write(root.join("cgroup.procs"), "").unwrap();
    let _busd = Kill(
        Command::new(env!("CARGO_BIN_EXE_busd"))
            .args(["--address", &address])
            .arg("--cgroup-root")
            .arg(&root)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The variable zbus's Connection::system() reads; this test is the only
    // user in this process.
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &address);
    wait_for(
        || {
            let conn = zbus3::blocking::Connection::system().unwrap();
            zbus3::blocking::fdo::DBusProxy::new(&conn)
                .unwrap()
                .name_has_owner("org.freedesktop.systemd1".try_into().unwrap())
                .unwrap()
        },
        "busd to own org.freedesktop.systemd1",
    );

    let (name, _) = error_name::<OwnedObjectPath>(manager().call("GetUnit", &("kata-x.scope",)));
    assert_eq!(name, "org.freedesktop.systemd1.NoSuchUnit");
    let version: String = manager().get_property("Version").unwrap();
    assert_eq!(version, "257");

    // A slice, as the agent starts one for a pod (Wants, no Slice).
    let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
    let props: Vec<(&str, Value<'_>)> = vec![
        ("Description", Value::from("kata pod")),
        ("Wants", Value::from("system.slice")),
        ("CPUAccounting", Value::Bool(true)),
    ];
    let job: OwnedObjectPath = manager()
        .call(
            "StartTransientUnit",
            &("kata-pod1.slice", "replace", &props, &aux),
        )
        .unwrap();
    assert!(job.as_str().starts_with("/org/freedesktop/systemd1/job/"));
    assert!(root.join("kata.slice/kata-pod1.slice").is_dir());
    let path: OwnedObjectPath = manager().call("GetUnit", &("kata-pod1.slice",)).unwrap();
    let conn = zbus3::blocking::Connection::system().unwrap();
    let slice = zbus3::blocking::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        path.as_str(),
        "org.freedesktop.systemd1.Slice",
    )
    .unwrap();
    let cg: String = slice.get_property("ControlGroup").unwrap();
    assert_eq!(cg, "/kata.slice/kata-pod1.slice");

    // A scope on a plain directory: the failure names the file.
    let props: Vec<(&str, Value<'_>)> = vec![
        ("PIDs", Value::Array(vec![std::process::id()].into())),
        ("Slice", Value::from("kata-pod1.slice")),
    ];
    let (name, text) = error_name::<OwnedObjectPath>(manager().call(
        "StartTransientUnit",
        &("kata-c1.scope", "replace", &props, &aux),
    ));
    assert_eq!(name, "org.freedesktop.DBus.Error.Failed");
    assert!(
        text.contains("kata.slice/kata-pod1.slice/kata-c1.scope/cgroup.procs"),
        "{text}"
    );
    assert!(!root
        .join("kata.slice/kata-pod1.slice/kata-c1.scope")
        .exists());

    // Not root: refused, through the daemon's GetConnectionUnixUser.
    let bin = dir.path().join("it-bin");
    fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .args([
            "--exact",
            "bus_daemon_mode",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "nonroot")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "non-root client: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let _: OwnedObjectPath = manager()
        .call("StopUnit", &("kata-pod1.slice", "replace"))
        .unwrap();
    assert!(!root.join("kata.slice/kata-pod1.slice").exists());
    let (name, _) = error_name::<OwnedObjectPath>(manager().call("GetUnit", &("kata-pod1.slice",)));
    assert_eq!(name, "org.freedesktop.systemd1.NoSuchUnit");
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| Path::new(p).is_file())
}
