//! The real `busd` binary as the system bus, driven by a zbus 3.15 blocking
//! client the way kata-agent 4.1's systemd cgroup driver drives systemd
//! (`rustjail/src/cgroups/systemd/dbus_client.rs`): a new connection per
//! call, `GetUnit`, `StartTransientUnit`, the `Version` property through a
//! caching proxy, `SetUnitProperties`, `AttachProcessesToUnit`,
//! `FreezeUnit`/`ThawUnit`, `KillUnit`, then the agent's own rmdir.
//!
//! Runs as root in namespaces of its own: the test binary re-executes
//! itself under `unshare --mount --pid --fork --mount-proc`; that process
//! moves into a fresh cgroup of every hierarchy, unshares a cgroup
//! namespace there, mounts the hierarchies (cgroup2 alone, or the machine's
//! v1 hierarchies with its cgroup2) on a directory of its own, and runs
//! busd on them with `--cgroup-root`. The fresh cgroups are removed
//! afterwards.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use zbus3::zvariant::{OwnedObjectPath, Value};

const ROLE: &str = "BUSD_IT_ROLE";
const DIR: &str = "BUSD_IT_DIR";
const TAG: &str = "BUSD_IT_TAG";
const UNIT: &str = "kata-test1.scope";

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

const V2_ONLY: &str = "BUSD_IT_V2_ONLY";
const TEST: &str = "BUSD_IT_TEST";

/// The machine's own layout (cgroup v2, or its v1 hierarchies with cgroup2).
#[test]
fn agent_flow() {
    dispatch("agent_flow", false);
}

/// cgroup2 alone even on a machine with v1 hierarchies: the unified
/// paths (cgroup.freeze, cgroup.kill, cgroup.events) as in a minos guest.
#[test]
fn agent_flow_cgroup2_only() {
    dispatch("agent_flow_cgroup2_only", true);
}

fn dispatch(test: &str, v2_only: bool) {
    match role().as_deref() {
        None => outer(test, v2_only),
        Some("inner") => inner(),
        Some("nonroot") => nonroot(),
        Some(other) => panic!("unknown {ROLE}={other}"),
    }
}

/// Whether the test can run: as root. Not root, it is skipped (the fast
/// tier, `cargo test`), unless `MINOS_REQUIRE_ROOT` is set, as `cargo xtask
/// test` sets it: then it fails, so that CI never skips it.
fn require_root() -> bool {
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("MINOS_REQUIRE_ROOT").is_none(),
            "this test needs root (namespaces, cgroup mounts): run `cargo test -p minos-busd` \
             as root, as `cargo xtask test` and CI do"
        );
        println!("SKIPPED: needs root (namespaces, cgroup mounts); `cargo xtask test` runs it");
        return false;
    }
    assert!(
        Command::new("unshare")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "this test needs util-linux `unshare` (Debian package util-linux)"
    );
    true
}

/// One hierarchy of the machine: its mount point, `mount -o` options (v1)
/// and the test process's cgroup in it.
#[derive(Debug, Clone)]
struct Hier {
    mount: PathBuf,
    v2: bool,
    options: String,
    /// The line's controller field in /proc/self/cgroup ("" for v2).
    key: String,
}

fn hierarchies() -> Vec<Hier> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount = pre.split(' ').nth(4).unwrap_or("");
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let opts = post.nth(1).unwrap_or("");
        match fstype {
            "cgroup2" => out.push(Hier {
                mount: mount.into(),
                v2: true,
                options: String::new(),
                key: String::new(),
            }),
            "cgroup" => {
                let options: Vec<&str> = opts
                    .split(',')
                    .filter(|o| {
                        !matches!(*o, "rw" | "ro" | "xattr") && !o.starts_with("release_agent")
                    })
                    .collect();
                out.push(Hier {
                    mount: mount.into(),
                    v2: false,
                    options: options.join(","),
                    key: options.join(","),
                });
            }
            _ => {}
        }
    }
    out
}

/// The test process's cgroup path in `h`.
fn own_cgroup(h: &Hier) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let matches = if h.v2 {
            ctl.is_empty()
        } else {
            let mine: Vec<&str> = ctl.split(',').collect();
            h.key.split(',').all(|k| mine.contains(&k)) && !ctl.is_empty()
        };
        if matches {
            return path.to_string();
        }
    }
    panic!("no line for {h:?} in /proc/self/cgroup:\n{text}");
}

/// The fresh cgroup of the test in `h` (host path).
fn fresh(h: &Hier, tag: &str) -> PathBuf {
    h.mount
        .join(own_cgroup(h).trim_start_matches('/'))
        .join(format!("busd-it-{tag}"))
}

fn mkcg(dir: &Path) {
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("mkdir {}: {e}", dir.display()),
    }
    // A v1 cpuset cgroup takes no process before it has CPUs and nodes.
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let mine = dir.join(f);
        if fs::read_to_string(&mine).is_ok_and(|s| s.trim().is_empty()) {
            let parent = fs::read_to_string(dir.parent().unwrap().join(f)).unwrap();
            fs::write(&mine, parent.trim()).unwrap();
        }
    }
}

fn rm_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rm_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

fn thaw_and_kill(dir: &Path) {
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                thaw_and_kill(&e.path());
            }
        }
    }
}

fn outer(test: &str, v2_only: bool) {
    if !require_root() {
        return;
    }
    let tag = format!("{}-{test}", std::process::id());
    let dir = tempfile::Builder::new()
        .prefix("busd-it")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--kill-child", "--mount-proc"])
        .args(["--propagation", "private"])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, "inner")
        .env(TEST, test)
        .env(V2_ONLY, if v2_only { "1" } else { "0" })
        .env(DIR, dir.path())
        .env(TAG, &tag)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Collect the output in threads so a full pipe cannot stall the child.
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let t_err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (t_out.join().unwrap(), t_err.join().unwrap());
    // Whatever a failed run left: thawed, killed, removed.
    for h in hierarchies() {
        let x = fresh(&h, &tag);
        for _ in 0..50 {
            thaw_and_kill(&x);
            rm_tree(&x);
            if !x.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!x.exists(), "cannot remove {}", x.display());
    }
    print!("{out}");
    eprint!("{err}");
    assert!(
        status.success(),
        "the namespaced run failed ({status}); its output is above"
    );
    assert!(out.contains("agent flow: all checks passed"), "{out}");
}

/// A running busd; killed on drop.
struct Busd(Child);

impl Drop for Busd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `sleep` child, killed on drop if still there.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Self {
        Sleeper(Command::new("sleep").arg("1000").spawn().unwrap())
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        // No wait: a frozen child would block it; the PID namespace ends
        // with this process and the outer test cleans up.
        let _ = self.0.kill();
    }
}

fn inner() {
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let tag = std::env::var(TAG).unwrap();
    let hosts = hierarchies();
    let unified = std::env::var(V2_ONLY).as_deref() == Ok("1")
        || hosts
            .iter()
            .any(|h| h.v2 && h.mount == Path::new("/sys/fs/cgroup"));
    let hosts: Vec<Hier> = if unified {
        hosts.into_iter().filter(|h| h.v2).collect()
    } else {
        hosts
    };
    // 1. A fresh cgroup in every hierarchy, this process in it.
    for h in &hosts {
        let x = fresh(h, &tag);
        mkcg(&x);
        fs::write(x.join("cgroup.procs"), "0").unwrap();
    }
    // 2. A cgroup namespace rooted there. Only this thread moves: it makes
    // the mounts and starts every process below.
    // SAFETY: NEWCGROUP changes only which cgroup paths this thread sees;
    // no file descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWCGROUP) }
        .expect("unshare(CLONE_NEWCGROUP)");
    // 3. The hierarchies mounted afresh (rooted at the namespace) under
    // DIR/cg, the machine's layout.
    let root = dir.join("cg");
    fs::create_dir(&root).unwrap();
    let mount = |args: &[&str], target: &Path| {
        let st = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .unwrap();
        assert!(st.success(), "mount {args:?} {}", target.display());
    };
    let mut mounted = Vec::new();
    if unified {
        mount(&["-t", "cgroup2", "cgroup2"], &root);
        mounted.push((root.clone(), true, String::new()));
    } else {
        mount(&["-t", "tmpfs", "-o", "mode=755", "tmpfs"], &root);
        for h in &hosts {
            let name = h.mount.file_name().unwrap().to_string_lossy().into_owned();
            let t = root.join(&name);
            fs::create_dir(&t).unwrap();
            if h.v2 {
                mount(&["-t", "cgroup2", "cgroup2"], &t);
            } else {
                mount(&["-t", "cgroup", "-o", &h.options, "cgroup"], &t);
            }
            mounted.push((t, h.v2, h.options.clone()));
        }
    }
    // 4. This process into a leaf, so that the namespace's root has none.
    for (m, _, _) in &mounted {
        mkcg(&m.join("init"));
        fs::write(m.join("init/cgroup.procs"), "0").unwrap();
    }
    let v2_root = mounted.iter().find(|m| m.1).map(|m| m.0.clone());
    let v1 = |ctl: &str| {
        mounted
            .iter()
            .find(|m| !m.1 && m.2.split(',').any(|o| o == ctl))
            .map(|m| m.0.clone())
    };
    println!(
        "layout: {}",
        if unified {
            "cgroup v2"
        } else {
            "cgroup v1 + cgroup2 (the machine's)"
        }
    );

    // 5. busd, as the bus.
    let sock = dir.join("system_bus_socket");
    let busd = Busd(
        Command::new(env!("CARGO_BIN_EXE_busd"))
            .arg("--listen")
            .arg(&sock)
            .arg("--cgroup-root")
            .arg(&root)
            .spawn()
            .unwrap(),
    );
    wait_for(|| sock.exists(), "busd's socket");
    // Read by zbus's Connection::system(), as in kata-agent; this process
    // exists for this test alone.
    std::env::set_var(
        "DBUS_SYSTEM_BUS_ADDRESS",
        format!("unix:path={}", sock.display()),
    );

    // Clients that misbehave, kept open throughout.
    let mut garbage = UnixStream::connect(&sock).unwrap();
    garbage
        .write_all(b"\x00GARBAGE \xff\xfe\r\n\x01\x02\x03")
        .unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"\x00AUTH EXTERNAL 30").unwrap();
    let _silent = UnixStream::connect(&sock).unwrap();
    let mut bad_msg = UnixStream::connect(&sock).unwrap();
    bad_msg
        .write_all(b"\x00AUTH EXTERNAL 30\r\nBEGIN\r\nl\x01\x00\x01\xff\xff\xff\xff")
        .unwrap();

    // 6. The agent's calls.
    let expect_err = |r: zbus3::Result<OwnedObjectPath>, name: &str| match r {
        Err(zbus3::Error::MethodError(n, text, _)) => {
            assert_eq!(n.as_str(), name, "{text:?}");
            text.unwrap_or_default()
        }
        other => panic!("wanted {name}, got {other:?}"),
    };
    let get_unit =
        |name: &str| -> zbus3::Result<OwnedObjectPath> { manager().call("GetUnit", &(name,)) };
    expect_err(get_unit(UNIT), "org.freedesktop.systemd1.NoSuchUnit");

    // JobRemoved, as a client waiting for its job sees it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let m = manager();
        let mut signals = m.receive_signal("JobRemoved").unwrap();
        tx.send(()).unwrap();
        if let Some(s) = signals.next() {
            let (id, job, unit, result): (u32, OwnedObjectPath, String, String) = s.body().unwrap();
            let _ = tx.send(());
            println!("JobRemoved {id} {} {unit} {result}", job.as_str());
            assert_eq!((unit.as_str(), result.as_str()), (UNIT, "done"));
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let child1 = Sleeper::new();
    let job = start_scope(child1.pid(), unified).unwrap();
    assert!(
        job.as_str().starts_with("/org/freedesktop/systemd1/job/"),
        "{}",
        job.as_str()
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("JobRemoved after StartTransientUnit");
    let cg = fs::read_to_string(format!("/proc/{}/cgroup", child1.pid())).unwrap();
    assert!(
        cg.lines().any(|l| l == "0::/system.slice/kata-test1.scope"),
        "{cg}"
    );
    if !unified {
        assert!(
            cg.lines()
                .any(|l| l.ends_with(":memory:/system.slice/kata-test1.scope")),
            "{cg}"
        );
    }
    let path = get_unit(UNIT).unwrap();
    assert_eq!(
        path.as_str(),
        "/org/freedesktop/systemd1/unit/kata_2dtest1_2escope"
    );
    let conn = zbus3::blocking::Connection::system().unwrap();
    let unit_proxy = zbus3::blocking::Proxy::new(
        &conn,
        "org.freedesktop.systemd1",
        path.as_str(),
        "org.freedesktop.systemd1.Scope",
    )
    .unwrap();
    let cgroup: String = unit_proxy.get_property("ControlGroup").unwrap();
    assert_eq!(cgroup, "/system.slice/kata-test1.scope");
    expect_err(
        start_scope(child1.pid(), unified),
        "org.freedesktop.systemd1.UnitExists",
    );

    // Version through the caching proxy (AddMatch, GetNameOwner, GetAll).
    let version: String = manager().get_property("Version").unwrap();
    assert_eq!(version, "257");

    // SetUnitProperties as the agent sends them for a container with
    // 256 MiB, half a CPU, 100 tasks and 2048 shares (weight 200).
    let props: Vec<(&str, Value<'_>)> = vec![
        ("CPUWeight", Value::U64(200)),
        ("CPUQuotaPeriodUSec", Value::U64(100_000)),
        ("CPUQuotaPerSecUSec", Value::U64(500_000)),
        ("MemoryMax", Value::U64(256 << 20)),
        ("TasksMax", Value::U64(100)),
    ];
    let r: zbus3::Result<()> = manager().call("SetUnitProperties", &(UNIT, true, &props));
    r.unwrap();
    let scope = "system.slice/kata-test1.scope";
    let mut checked = 0;
    let mut check = |base: Option<PathBuf>, file: &str, want: &str| match base {
        Some(b) if b.join(scope).join(file).exists() => {
            let got = fs::read_to_string(b.join(scope).join(file)).unwrap();
            assert_eq!(got.trim(), want, "{file}");
            checked += 1;
        }
        _ => println!("NOT CHECKED on this machine: {file} (controller not available)"),
    };
    if unified {
        check(v2_root.clone(), "memory.max", "268435456");
        check(v2_root.clone(), "cpu.max", "50000 100000");
        check(v2_root.clone(), "pids.max", "100");
        check(v2_root.clone(), "cpu.weight", "200");
    } else {
        check(v1("memory"), "memory.limit_in_bytes", "268435456");
        check(v1("cpu"), "cpu.cfs_quota_us", "50000");
        check(v1("cpu"), "cpu.cfs_period_us", "100000");
        check(v1("pids"), "pids.max", "100");
        check(v1("cpu"), "cpu.shares", "2048");
    }
    println!("resource files checked: {checked}");

    // Refusals name what was wrong.
    let text = expect_err(
        manager().call(
            "SetUnitProperties",
            &(UNIT, true, vec![("Bogus", Value::U64(1))]),
        ),
        "org.freedesktop.DBus.Error.InvalidArgs",
    );
    assert!(text.contains("Bogus"), "{text}");
    let text = expect_err(
        manager().call("GetUnit", &(7u32,)),
        "org.freedesktop.DBus.Error.InvalidArgs",
    );
    assert!(text.contains("'s'") && text.contains("'u'"), "{text}");
    let text = expect_err(
        manager().call(
            "StartTransientUnit",
            &(
                "../evil.scope",
                "replace",
                Vec::<(&str, Value<'_>)>::new(),
                no_aux(),
            ),
        ),
        "org.freedesktop.DBus.Error.InvalidArgs",
    );
    assert!(text.contains("../evil.scope"), "{text}");

    // AttachProcessesToUnit, as for an exec'd process.
    let child2 = Sleeper::new();
    let r: zbus3::Result<()> =
        manager().call("AttachProcessesToUnit", &(UNIT, "", vec![child2.pid()]));
    r.unwrap();
    let cg = fs::read_to_string(format!("/proc/{}/cgroup", child2.pid())).unwrap();
    assert!(
        cg.lines().any(|l| l == "0::/system.slice/kata-test1.scope"),
        "{cg}"
    );
    let r: zbus3::Result<()> =
        manager().call("AttachProcessesToUnit", &(UNIT, "../x", vec![child2.pid()]));
    let Err(zbus3::Error::MethodError(n, _, _)) = r else {
        panic!("subcgroup ../x accepted: {r:?}");
    };
    assert_eq!(n.as_str(), "org.freedesktop.DBus.Error.InvalidArgs");

    // FreezeUnit/ThawUnit: the v1 freezer where the machine has one (what
    // the agent reads back there), else cgroup v2's.
    let v2 = v2_root.clone().expect("a cgroup2 hierarchy");
    let freezer = v1("freezer");
    let state = || match &freezer {
        Some(fz) => fs::read_to_string(fz.join(scope).join("freezer.state")).unwrap(),
        None => fs::read_to_string(v2.join(scope).join("cgroup.events")).unwrap(),
    };
    let r: zbus3::Result<()> = manager().call("FreezeUnit", &(UNIT,));
    r.unwrap();
    if freezer.is_some() {
        assert_eq!(state().trim(), "FROZEN");
    } else {
        let f = fs::read_to_string(v2.join(scope).join("cgroup.freeze")).unwrap();
        assert_eq!(f.trim(), "1");
        assert!(state().contains("frozen 1"), "{}", state());
    }
    let r: zbus3::Result<()> = manager().call("ThawUnit", &(UNIT,));
    r.unwrap();
    if freezer.is_some() {
        assert_eq!(state().trim(), "THAWED");
    } else {
        assert!(state().contains("frozen 0"), "{}", state());
    }

    // A caller that is not root.
    let bin = dir.join("it-bin");
    fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&bin)
        .args(["--exact", &std::env::var(TEST).unwrap(), "--nocapture"])
        .arg("--test-threads=1")
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

    // KillUnit SIGKILL: the children die, busd drops the unit and its
    // cgroup; the agent's own rmdir then finds nothing, which it tolerates.
    let (mut c1, mut c2) = (child1, child2);
    let r: zbus3::Result<()> = manager().call("KillUnit", &(UNIT, "all", 9i32));
    r.unwrap();
    for c in [&mut c1, &mut c2] {
        let st = c.0.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    }
    for (m, _, _) in &mounted {
        let d = m.join(scope);
        if let Err(e) = fs::remove_dir(&d) {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{}", d.display());
        }
    }
    expect_err(get_unit(UNIT), "org.freedesktop.systemd1.NoSuchUnit");
    let r: zbus3::Result<()> = manager().call("KillUnit", &(UNIT, "all", 9i32));
    let Err(zbus3::Error::MethodError(n, _, _)) = r else {
        panic!("KillUnit of a gone unit: {r:?}");
    };
    assert_eq!(n.as_str(), "org.freedesktop.systemd1.NoSuchUnit");

    // The same name again, as after the agent's rollback of a failed
    // CreateContainer; this time the processes exit by themselves.
    let mut child3 = Sleeper::new();
    start_scope(child3.pid(), unified).unwrap();
    get_unit(UNIT).unwrap();
    child3.0.kill().unwrap();
    child3.0.wait().unwrap();
    // busd notices by itself (inotify on cgroup.events), as systemd does.
    wait_for(
        || !v2.join(scope).exists(),
        "busd to remove the scope that emptied by itself",
    );
    expect_err(get_unit(UNIT), "org.freedesktop.systemd1.NoSuchUnit");

    // The misbehaving clients never stopped anyone; busd is still there.
    drop((garbage, half, bad_msg));
    let mut busd = busd;
    assert!(busd.0.try_wait().unwrap().is_none(), "busd exited");
    println!("agent flow: all checks passed");
}

fn nonroot() {
    assert_ne!(rustix::process::getuid().as_raw(), 0);
    let r: zbus3::Result<OwnedObjectPath> = manager().call("GetUnit", &(UNIT,));
    match r {
        Err(zbus3::Error::MethodError(n, text, _)) => {
            assert_eq!(
                n.as_str(),
                "org.freedesktop.DBus.Error.AccessDenied",
                "{text:?}"
            );
            println!("non-root: {}", text.unwrap_or_default());
        }
        other => panic!("non-root GetUnit: {other:?}"),
    }
}

/// The agent's proxy: a new system-bus connection for every call.
fn manager() -> zbus3::blocking::Proxy<'static> {
    let conn = zbus3::blocking::Connection::system().expect("connect to the system bus");
    zbus3::blocking::Proxy::new_owned(
        conn,
        "org.freedesktop.systemd1".to_string(),
        "/org/freedesktop/systemd1".to_string(),
        "org.freedesktop.systemd1.Manager".to_string(),
    )
    .unwrap()
}

fn no_aux() -> Vec<(&'static str, Vec<(&'static str, Value<'static>)>)> {
    Vec::new()
}

/// `StartTransientUnit` with the agent's properties (`start_unit`).
fn start_scope(pid: u32, unified: bool) -> zbus3::Result<OwnedObjectPath> {
    let mut props: Vec<(&str, Value<'_>)> = vec![
        ("CPUAccounting", Value::Bool(true)),
        ("DefaultDependencies", Value::Bool(false)),
        ("MemoryAccounting", Value::Bool(true)),
        ("TasksAccounting", Value::Bool(true)),
        ("Description", Value::Str("kata-agent container".into())),
        ("PIDs", Value::Array(vec![pid].into())),
    ];
    // The agent's choice, as it is.
    props.push(if unified {
        ("BlockIOAccounting", Value::Bool(true))
    } else {
        ("IOAccounting", Value::Bool(true))
    });
    props.push(("Slice", Value::Str("system.slice".into())));
    props.push(("Delegate", Value::Bool(true)));
    manager().call("StartTransientUnit", &(UNIT, "replace", &props, no_aux()))
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
