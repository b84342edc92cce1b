//! Socket activation (`.socket` units): init as PID 1 of new namespaces
//! holds the listening socket, starts the service on the first connection
//! with the socket as descriptor 3 and sd_listen_fds(3)'s variables, starts
//! it again after it exits, shows socket units in `systemctl status`, and
//! refuses what it cannot do (Accept=yes, network addresses, a path that
//! is not a socket, an unknown user) while boot goes on.
//!
//! The sockets live under /data, a directory of the test's rootfs on the
//! host's file system, so that the test connects from outside.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use minos_tests::{Pid1, Rootfs};

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;
const WAIT: Duration = Duration::from_secs(30);

/// `systemctl status` inside init's namespaces.
fn status(pid1: &Pid1) -> String {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid1.host_pid().to_string(), "-m", "-p", "-r"])
        .arg("/usr/bin/systemctl")
        .arg("status")
        .output()
        .expect("run nsenter (util-linux)");
    assert!(out.status.success(), "systemctl status: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The STATE column of `unit` in a status table.
fn state_of(table: &str, unit: &str) -> String {
    table
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(unit)).then(|| cols.next().unwrap_or_default().to_owned())
        })
        .unwrap_or_else(|| panic!("{unit} is not in the status table:\n{table}"))
}

/// Sends one line on a new connection and returns the answer.
fn ask(path: &Path, text: &str) -> String {
    let mut s =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("{text}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    answer.trim_end().to_owned()
}

/// Waits until `file` (relative to the rootfs) has `n` lines.
fn lines(fs: &Rootfs, file: &str, n: usize, pid1: &Pid1) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fs.try_read(file).unwrap_or_default();
        let v: Vec<String> = text.lines().map(str::to_owned).collect();
        if v.len() >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{file} has {} lines, not {n}:\n{}",
            v.len(),
            pid1.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` of a report line.
fn field<'l>(line: &'l str, key: &str) -> &'l str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[test]
fn a_connection_starts_the_service_with_the_socket_as_fd_3_and_again_after_it_exits() {
    let fs = Rootfs::new("socket-activation");
    fs.unit(
        "echo.socket",
        "[Unit]\nDescription=probe echo socket\n\
         [Socket]\nListenStream=/data/run/echo/echo.sock\nSocketMode=0660\n\
         SocketUser=probeuser\nSocketGroup=extra\nDirectoryMode=0750\n\
         FileDescriptorName=echo\nRemoveOnStop=yes\nBacklog=16\n\
         [Install]\nWantedBy=sockets.target\n",
    );
    fs.unit(
        "echo.service",
        // TasksMax=: the cgroup's descriptor, which the child writes to
        // before the sockets are moved to 3, 4, ..., must not be one of them.
        "[Service]\nExecStart=/bin/probe serve-listen /data/echo.report 1\nTasksMax=16\n",
    );
    // Two sockets for one service (Service=), in file order, default name.
    fs.unit(
        "pair.socket",
        "[Socket]\nListenStream=/data/pair-a.sock\nListenStream=/data/pair-b.sock\n\
         Service=twin.service\n",
    );
    fs.unit(
        "twin.service",
        "[Service]\nExecStart=/bin/probe serve-listen /data/twin.report 1\n",
    );
    fs.unit(
        "other.service",
        "[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("echo.socket: listening on /data/run/echo/echo.sock", WAIT);
    pid1.wait_for(
        "pair.socket: listening on /data/pair-a.sock, /data/pair-b.sock",
        WAIT,
    );
    let sock = fs.root.join("data/run/echo/echo.sock");

    // Nothing started before the first connection.
    let table = status(&pid1);
    assert_eq!(state_of(&table, "echo.socket"), "listening", "{table}");
    assert_eq!(state_of(&table, "echo.service"), "inactive", "{table}");
    assert_eq!(state_of(&table, "twin.service"), "inactive", "{table}");
    assert_eq!(state_of(&table, "other.service"), "running", "{table}");
    assert!(fs.try_read("data/echo.report").is_none());

    // SocketMode=, SocketUser=/SocketGroup=, DirectoryMode=.
    let m = std::fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o7777, 0o660);
    assert_eq!((m.uid(), m.gid()), (1234, 2000));
    let d = std::fs::metadata(fs.root.join("data/run/echo")).unwrap();
    assert_eq!(d.mode() & 0o7777, 0o750);

    // The first connection starts the service, which answers on it.
    let answer = ask(&sock, "hello");
    let report = lines(&fs, "data/echo.report", 1, &pid1);
    let first = &report[0];
    let pid = field(first, "pid");
    assert_eq!(answer, format!("probe {pid}: hello"), "{first}");
    assert_eq!(field(first, "listen_pid"), pid, "{first}");
    assert_eq!(field(first, "listen_fds"), "1", "{first}");
    assert_eq!(field(first, "names"), "echo", "{first}");
    assert_eq!(
        field(first, "fd3"),
        "listening:/data/run/echo/echo.sock",
        "{first}"
    );
    assert_eq!(field(first, "extra_sockets"), "0", "{first}");

    // It exits after one connection; the next starts it again.
    pid1.wait_for("echo.service: finished", WAIT);
    let answer = ask(&sock, "again");
    let report = lines(&fs, "data/echo.report", 2, &pid1);
    let second = &report[1];
    let pid2 = field(second, "pid");
    assert_ne!(pid2, pid, "{report:?}");
    assert_eq!(answer, format!("probe {pid2}: again"));
    assert_eq!(field(second, "listen_pid"), pid2);

    // Two ListenStream= lines: fds 3 and 4, in order.
    let answer = ask(&fs.root.join("data/pair-a.sock"), "pair");
    let twin = lines(&fs, "data/twin.report", 1, &pid1);
    let t = &twin[0];
    assert_eq!(answer, format!("probe {}: pair", field(t, "pid")));
    assert_eq!(field(t, "listen_fds"), "2", "{t}");
    assert_eq!(field(t, "names"), "pair.socket:pair.socket", "{t}");
    assert_eq!(field(t, "fd3"), "listening:/data/pair-a.sock", "{t}");
    assert_eq!(field(t, "fd4"), "listening:/data/pair-b.sock", "{t}");

    pid1.wait_for("twin.service: finished", WAIT);
    let table = status(&pid1);
    assert_eq!(state_of(&table, "echo.socket"), "listening", "{table}");
    assert_eq!(state_of(&table, "echo.service"), "exited", "{table}");

    // A service running holds the socket: status says so.
    let mut held = UnixStream::connect(&sock).unwrap();
    let report = lines(&fs, "data/echo.report", 3, &pid1);
    let table = status(&pid1);
    assert_eq!(state_of(&table, "echo.socket"), "running", "{table}");
    assert_eq!(state_of(&table, "echo.service"), "running", "{table}");
    held.write_all(b"bye\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&held).read_line(&mut answer).unwrap();
    assert!(answer.starts_with(&format!("probe {}", field(&report[2], "pid"))));

    // Shutdown: RemoveOnStop= removes the file; the other stays.
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
    assert!(!sock.exists(), "RemoveOnStop=yes: {}", end.output);
    assert!(fs.root.join("data/pair-a.sock").exists());
    assert!(!end.output.contains("ERROR"), "{}", end.output);
}

#[test]
fn bad_socket_units_are_refused_and_boot_goes_on() {
    let fs = Rootfs::new("socket-refused");
    fs.unit(
        "accept.socket",
        "[Socket]\nListenStream=/data/accept.sock\nAccept=yes\n",
    );
    fs.unit("port.socket", "[Socket]\nListenStream=8080\n");
    fs.unit("vsock.socket", "[Socket]\nListenStream=vsock:2:1024\n");
    fs.unit(
        "file.socket",
        "[Socket]\nListenStream=/data/regular\nService=stale.service\n",
    );
    fs.write("data/regular", "keep me\n");
    fs.unit(
        "nouser.socket",
        "[Socket]\nListenStream=/data/nouser.sock\nSocketUser=nosuchuser\n\
         Service=stale.service\n",
    );
    fs.unit(
        "live.socket",
        "[Socket]\nListenStream=/data/live.sock\nService=stale.service\n",
    );
    // A socket file left by an earlier boot: nothing listens on it.
    drop(std::os::unix::net::UnixListener::bind(fs.root.join("data/stale.sock")).unwrap());
    fs.unit("stale.socket", "[Socket]\nListenStream=/data/stale.sock\n");
    fs.unit(
        "stale.service",
        "[Service]\nExecStart=/bin/probe serve-listen /data/stale.report 1\n",
    );
    // A live socket: another listener (the test) holds the path.
    let live = std::os::unix::net::UnixListener::bind(fs.root.join("data/held.sock")).unwrap();
    fs.unit(
        "held.socket",
        "[Socket]\nListenStream=/data/held.sock\nService=stale.service\n",
    );
    fs.unit(
        "ok.service",
        "[Service]\nType=oneshot\nExecStart=/bin/probe write /data/ok done\nRemainAfterExit=yes\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("stale.socket: listening on /data/stale.sock", WAIT);
    pid1.wait_for("Started ok.service", WAIT);
    let table = status(&pid1);
    let out = pid1.output();
    let units = "/etc/minos/units";
    for needle in [
        format!(
            "{units}/accept.socket:3: Accept: Accept=yes (a service instance per connection) \
             is not supported, only Accept=no"
        ),
        format!("{units}/accept.socket: not loaded; the other units still start"),
        format!(
            "{units}/port.socket:2: ListenStream: \"8080\" is a port or IP address: only \
             absolute unix socket paths and @abstract names are supported"
        ),
        format!("{units}/vsock.socket:2: ListenStream: \"vsock:2:1024\" is a vsock address"),
        "file.socket: bind /data/regular: the path exists and is a regular file, not a \
         socket; not removed"
            .to_owned(),
        "file.socket: failed: could not listen".to_owned(),
        "nouser.socket: user \"nosuchuser\" (SocketUser=) not found in /etc/passwd".to_owned(),
        "held.socket: bind /data/held.sock: in use by a live socket".to_owned(),
        "removed stale socket /data/stale.sock".to_owned(),
    ] {
        assert!(out.contains(&needle), "output lacks {needle:?}:\n{out}");
    }
    assert_eq!(fs.read("data/regular"), "keep me\n");
    assert_eq!(fs.read("data/ok"), "done");
    assert!(!fs.root.join("data/nouser.sock").exists());
    assert_eq!(state_of(&table, "file.socket"), "failed(listen)", "{table}");
    assert_eq!(state_of(&table, "held.socket"), "failed(listen)", "{table}");
    assert_eq!(
        state_of(&table, "nouser.socket"),
        "failed(listen)",
        "{table}"
    );
    assert_eq!(state_of(&table, "stale.socket"), "listening", "{table}");
    assert_eq!(state_of(&table, "live.socket"), "listening", "{table}");
    assert!(!table.contains("accept.socket"), "{table}");
    assert!(!table.contains("port.socket"), "{table}");
    // The replaced stale socket works: a connection starts its service.
    let answer = ask(&fs.root.join("data/stale.sock"), "stale");
    let report = lines(&fs, "data/stale.report", 1, &pid1);
    assert_eq!(answer, format!("probe {}: stale", field(&report[0], "pid")));
    // live.socket starts the same service: it got both sockets.
    assert_eq!(field(&report[0], "listen_fds"), "2", "{}", report[0]);
    assert_eq!(
        field(&report[0], "names"),
        "live.socket:stale.socket",
        "{}",
        report[0]
    );
    drop(live);
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
}

#[test]
fn a_unit_ordered_after_a_socket_and_a_service_pulled_in_get_it() {
    let fs = Rootfs::new("socket-ordering");
    fs.unit("early.socket", "[Socket]\nListenStream=/data/early.sock\n");
    // Started at boot (Wants= from another unit): gets the socket at once.
    fs.unit(
        "early.service",
        "[Service]\nExecStart=/bin/probe serve-listen /data/early.report 1\n",
    );
    fs.unit(
        "client.service",
        "[Unit]\nWants=early.service\nAfter=early.socket\n\
         [Service]\nType=oneshot\nExecStart=/bin/probe stat /data/early.sock /data/client\n",
    );
    let mut pid1 = fs.start(&[]);
    let report = lines(&fs, "data/early.report", 1, &pid1);
    assert_eq!(field(&report[0], "listen_fds"), "1", "{}", report[0]);
    assert_eq!(
        field(&report[0], "listen_pid"),
        field(&report[0], "pid"),
        "{}",
        report[0]
    );
    pid1.wait_for("client.service: finished", WAIT);
    let client = fs.read("data/client");
    assert!(!client.contains("missing"), "{client}");
    let answer = ask(&fs.root.join("data/early.sock"), "x");
    assert!(answer.starts_with("probe "), "{answer}");
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
}

#[test]
fn a_service_that_never_accepts_hits_its_start_limit_and_the_socket_stops() {
    let fs = Rootfs::new("socket-limit");
    fs.unit(
        "lazy.socket",
        "[Socket]\nListenStream=/data/lazy.sock\nRemoveOnStop=yes\n",
    );
    fs.unit(
        "lazy.service",
        "[Unit]\nStartLimitBurst=3\nStartLimitIntervalSec=60\n\
         [Service]\nExecStart=/bin/probe append /data/lazy.starts started\n",
    );
    fs.unit(
        "other.service",
        "[Service]\nExecStart=/bin/probe sleep 600\n",
    );
    let mut pid1 = fs.start(&[]);
    pid1.wait_for("lazy.socket: listening on /data/lazy.sock", WAIT);
    // Connects, never accepted: each exit of the service finds it pending.
    let mut pending = UnixStream::connect(fs.root.join("data/lazy.sock")).unwrap();
    pid1.wait_for(
        "lazy.socket: its service lazy.service hit its start limit; not listening any more",
        WAIT,
    );
    let starts = lines(&fs, "data/lazy.starts", 3, &pid1);
    assert_eq!(starts.len(), 3, "{starts:?}");
    let table = status(&pid1);
    assert_eq!(state_of(&table, "lazy.socket"), "failed(limit)", "{table}");
    assert_eq!(state_of(&table, "lazy.service"), "failed(limit)", "{table}");
    // The socket is closed: the client sees the end, a new one is refused.
    pending.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 1];
    let n = std::io::Read::read(&mut pending, &mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(UnixStream::connect(fs.root.join("data/lazy.sock")).is_err());
    assert!(!fs.root.join("data/lazy.sock").exists(), "RemoveOnStop=yes");
    pid1.signal(SIGTERM);
    let end = pid1.wait(WAIT);
    assert_eq!(end.signal(), Some(SIGINT), "{}", end.output);
}
