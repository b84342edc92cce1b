//! `probe`: the test program that runs as a unit inside the test rootfs.
//! Each subcommand does one observable thing; `report` writes what the
//! process was given (ids, limits, capabilities, stdio, environment) so the
//! test can assert on it from outside; `ls` and `stat` report on files.
//! Also answers to the name `sync`.

use std::io::Write;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("probe");
    if name == "sync" {
        rustix::fs::sync();
        return;
    }
    if name == "kata-agent" {
        std::process::exit(fake_agent());
    }
    if name == "extension-generator" {
        std::process::exit(extension_generator(&args));
    }
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let code = match rest.as_slice() {
        ["sleep", secs] => {
            std::thread::sleep(Duration::from_secs_f64(secs.parse().unwrap_or(1.0)));
            0
        }
        ["exit", code] => code.parse().unwrap_or(1),
        ["exit", code, after_ms] => {
            std::thread::sleep(Duration::from_millis(after_ms.parse().unwrap_or(0)));
            code.parse().unwrap_or(1)
        }
        ["append", path, text] => append(path, text),
        ["write", path, text] => match std::fs::write(path, text) {
            Ok(()) => 0,
            Err(e) => fail(&format!("write {path}: {e}")),
        },
        // Writes TEXT to PATH and keeps it open (its pages dirty on a file
        // system that caches writes) until killed.
        ["hold-write", path, text] => {
            use std::io::Write as _;
            match std::fs::OpenOptions::new().write(true).open(path) {
                Ok(mut f) => match f.write_all(text.as_bytes()) {
                    Ok(()) => {
                        println!("probe: holding {path} open");
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                            let _ = &f;
                        }
                    }
                    Err(e) => fail(&format!("write {path}: {e}")),
                },
                Err(e) => fail(&format!("open {path}: {e}")),
            }
        }
        ["report", path] => report(path),
        // A file system's size in bytes (statfs: blocks × block size).
        ["statfs", path, out] => match rustix::fs::statfs(*path) {
            Ok(st) => match std::fs::write(out, (st.f_blocks * st.f_bsize as u64).to_string()) {
                Ok(()) => 0,
                Err(e) => fail(&format!("write {out}: {e}")),
            },
            Err(e) => fail(&format!("statfs {path}: {e}")),
        },
        ["copy", from, to] => match std::fs::copy(from, to) {
            Ok(_) => 0,
            Err(e) => fail(&format!("copy {from} to {to}: {e}")),
        },
        ["notify", delay_ms] => notify(delay_ms.parse().unwrap_or(0)),
        ["ignore-term"] => ignore_term(),
        ["orphans", n] => orphans(n.parse().unwrap_or(0)),
        ["daemonize", pid_file, starts] => daemonize(pid_file, starts),
        ["kill-pidfile", pid_file, sig] => kill_pidfile(pid_file, sig.parse().unwrap_or(15)),
        ["forkbomb", depth, width, path] => {
            forkbomb(depth.parse().unwrap_or(0), width.parse().unwrap_or(0), path)
        }
        ["fill", path] => fill(path),
        ["hog"] => hog(),
        ["cat", path] => match std::fs::read_to_string(path) {
            Ok(text) => {
                println!("probe cat {path}: {}", text.trim_end().replace('\n', " | "));
                0
            }
            Err(e) => fail(&format!("read {path}: {e}")),
        },
        ["pidof", comm] => pidof(comm),
        // Writes lines to stdout for ever (blocked when nobody reads).
        ["flood"] => {
            let line = format!("{}\n", "flood ".repeat(40));
            let mut out = std::io::stdout().lock();
            while out.write_all(line.as_bytes()).is_ok() {}
            1
        }
        ["kmsg", needle, within_ms] => kmsg(
            needle,
            Duration::from_millis(within_ms.parse().unwrap_or(0)),
        ),
        ["soakwrite", dir] => soakwrite(dir),
        ["sockets"] => sockets(),
        ["serve-listen", report, count] => serve_listen(report, count.parse().unwrap_or(1)),
        ["detach", path] => detach(path),
        ["alive", pid_file, out] => alive(pid_file, out),
        ["rocheck"] => rocheck(),
        ["zombies", path] => zombies(path),
        ["ls", dir, path] => list(dir, path),
        ["stat", target, path] => stat(target, path),
        ["mount", dev, dir, fstype] => {
            let _ = std::fs::create_dir_all(dir);
            match rustix::mount::mount(
                *dev,
                *dir,
                *fstype,
                rustix::mount::MountFlags::empty(),
                None,
            ) {
                Ok(()) => 0,
                Err(e) => fail(&format!("mount {dev} on {dir} ({fstype}): {e}")),
            }
        }
        ["readlink", link, path] => match std::fs::read_link(link)
            .and_then(|target| std::fs::write(path, target.to_string_lossy().as_bytes()))
        {
            Ok(()) => 0,
            Err(e) => fail(&format!("readlink {link} into {path}: {e}")),
        },
        ["say", text] => {
            println!("{text}");
            0
        }
        _ => fail(&format!("unknown probe command {rest:?}")),
    };
    std::process::exit(code);
}

/// Installed as /usr/bin/kata-agent so that Kata's unit runs unmodified:
/// writes a report to /data/agent.report, then exits with the status in
/// /etc/kata-agent-probe (`CODE AFTER_MS`, default `0 200`).
fn fake_agent() -> i32 {
    let conf = std::fs::read_to_string("/etc/kata-agent-probe").unwrap_or_default();
    let mut words = conf.split_whitespace();
    let code = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
    let after = words.next().and_then(|w| w.parse().ok()).unwrap_or(200);
    println!("kata-agent (probe): started");
    if report("/data/agent.report") != 0 {
        return 3;
    }
    std::thread::sleep(Duration::from_millis(after));
    println!("kata-agent (probe): exiting with {code}");
    code
}

/// A fork bomb with a ceiling, so that a test that fails cannot take the
/// host down: every process forks `width` children down to `depth` levels
/// (at most width + width² + … processes), retrying a refused fork 20
/// times, then sleeps until killed. Each refused fork appends its errno to
/// `path`, and the first process writes `started` there before it begins.
fn forkbomb(depth: u32, width: u32, path: &str) -> i32 {
    let log = |line: &str| {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    };
    log("started\n");
    let mut level = depth;
    let mut i = 0;
    while level > 0 && i < width {
        let mut refused = 0;
        loop {
            // SAFETY: fork(2) in a single-threaded program; the child only
            // continues this loop (no locks are held across it).
            match unsafe { libc::fork() } {
                0 => {
                    level -= 1;
                    i = 0;
                    break;
                }
                n if n > 0 => {
                    i += 1;
                    break;
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    log(&format!("fork refused: {e}\n"));
                    refused += 1;
                    if refused == 20 {
                        i = width;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes 64 KiB blocks to `path` until the file system is full, then
/// prints how much it wrote and exits 0 if the last error was ENOSPC.
fn fill(path: &str) -> i32 {
    let mut f = match std::fs::File::create(path) {
        Ok(f) => f,
        Err(e) => return fail(&format!("create {path}: {e}")),
    };
    let block = vec![0x5au8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => return fail(&format!("write {path}: wrote nothing")),
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                println!("fill: {path}: {total} bytes, then ENOSPC");
                return 0;
            }
            Err(e) => return fail(&format!("write {path} after {total} bytes: {e}")),
        }
    }
}

/// Prints `probe pidof COMM: pid=N oom_score_adj=A` for the process named
/// COMM (the first found), or fails when there is none.
fn pidof(comm: &str) -> i32 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return fail("read /proc");
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let adj = std::fs::read_to_string(path.join("oom_score_adj")).unwrap_or_default();
            println!(
                "probe pidof {comm}: pid={} oom_score_adj={}",
                e.file_name().to_string_lossy(),
                adj.trim()
            );
            return 0;
        }
    }
    fail(&format!("no process named {comm}"))
}

/// Leaves a process behind: forks a child that leaves the session
/// (setsid), writes its pid to `path` and sleeps; returns once the pid is
/// written.
fn detach(path: &str) -> i32 {
    // SAFETY: fork(2) in a single-threaded program; the child only makes
    // system calls and sleeps.
    match unsafe { libc::fork() } {
        0 => {
            let _ = rustix::process::setsid();
            let _ = std::fs::write(path, std::process::id().to_string());
            std::thread::sleep(Duration::from_secs(600));
            std::process::exit(0);
        }
        n if n > 0 => {
            for _ in 0..500 {
                if std::fs::read_to_string(path).is_ok_and(|t| !t.is_empty()) {
                    return 0;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            fail(&format!("the detached child did not write {path}"))
        }
        _ => fail(&format!("fork: {}", std::io::Error::last_os_error())),
    }
}

/// Writes `alive` or `gone` to `out` for the pid in `pid_file` (a zombie
/// counts as gone).
fn alive(pid_file: &str, out: &str) -> i32 {
    let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
    let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
        });
    let verdict = match state.as_deref() {
        Some("Z") | None => "gone",
        Some(_) => "alive",
    };
    match std::fs::write(out, verdict) {
        Ok(()) => 0,
        Err(e) => fail(&format!("write {out}: {e}")),
    }
}

/// One boot of `cargo xtask soak`: N is `minos.soak_boot=N` from
/// /proc/cmdline. Writes DIR/boot-N (256 KiB, `soak_byte(N, i)`), appends
/// `boot N` to DIR/log and rewrites DIR/current with N, without fsync:
/// getting them to the disk is the shutdown's job.
fn soakwrite(dir: &str) -> i32 {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(n) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("minos.soak_boot="))
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return fail("no minos.soak_boot=N on the kernel command line");
    };
    let data: Vec<u8> = (0..256 * 1024u64).map(|i| soak_byte(n, i)).collect();
    let path = format!("{dir}/boot-{n}");
    if let Err(e) = std::fs::write(&path, &data) {
        return fail(&format!("write {path}: {e}"));
    }
    if append(&format!("{dir}/log"), &format!("boot {n}")) != 0 {
        return 1;
    }
    if let Err(e) = std::fs::write(format!("{dir}/current"), n.to_string()) {
        return fail(&format!("write {dir}/current: {e}"));
    }
    println!("probe soakwrite: boot {n} written");
    0
}

/// Byte `i` of boot `n`'s file (the host checks the same function).
fn soak_byte(n: u64, i: u64) -> u8 {
    ((i * 31 + n * 7) % 251) as u8
}

/// Every socket of every process, one line each (`probe socket COMM
/// pid=N fd=N family=F type=T local=ADDR [listening]`), read through
/// pidfd_getfd(2) as in tests/sockets.rs; the VM tests assert on them.
fn sockets() -> i32 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return fail("read /proc");
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    let me = std::process::id() as i32;
    for pid in pids.into_iter().filter(|&p| p != me) {
        for s in minos_tests::sockets_of(pid) {
            println!(
                "probe socket {} pid={} fd={} family={} type={} local={}{}",
                s.comm,
                s.pid,
                s.fd,
                s.family,
                s.kind,
                if s.local.is_empty() { "-" } else { &s.local },
                if s.listening { " listening" } else { "" }
            );
        }
    }
    println!("probe sockets: done");
    0
}

/// Allocates and touches memory 16 MiB at a time until the OOM killer
/// ends it, printing its progress every 64 MiB (so the console shows who
/// was growing). Never returns normally.
fn hog() -> i32 {
    const CHUNK: usize = 16 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut v = vec![0u8; CHUNK];
        // Touch every page so it is really allocated.
        for i in (0..CHUNK).step_by(4096) {
            v[i] = 1;
        }
        held.push(v);
        if held.len().is_multiple_of(4) {
            println!("probe hog: holding {} MiB", held.len() * 16);
        }
    }
}

/// The read-only root a Kata guest has: `/` mounted read-only, a write
/// there fails with EROFS, /run, /tmp and /dev/shm take writes, and every
/// mount that is writable is a memory file system, not a disk. Prints
/// `probe rocheck: ok ...` or `probe rocheck: FAIL ...` (exit 1).
fn rocheck() -> i32 {
    let mut problems = Vec::new();
    match rustix::fs::statvfs("/") {
        Ok(st) if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) => {}
        Ok(_) => problems.push("/ is not mounted read-only".to_owned()),
        Err(e) => problems.push(format!("statvfs /: {e}")),
    }
    for path in ["/rocheck-probe", "/etc/rocheck-probe", "/usr/rocheck-probe"] {
        match std::fs::write(path, b"x") {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => problems.push(format!("write {path}: {e} (expected EROFS)")),
            Ok(()) => problems.push(format!("write {path} succeeded on the read-only root")),
        }
    }
    for dir in ["/run", "/tmp", "/dev/shm"] {
        let path = format!("{dir}/rocheck-probe");
        if let Err(e) = std::fs::write(&path, b"x").and_then(|()| std::fs::remove_file(&path)) {
            problems.push(format!("write {path}: {e}"));
        }
    }
    const MEMORY_FS: &[&str] = &[
        "tmpfs",
        "devtmpfs",
        "proc",
        "sysfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "securityfs",
        "mqueue",
        "debugfs",
        "tracefs",
        "bpf",
        "hugetlbfs",
        "configfs",
        "pstore",
        "ramfs",
    ];
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut writable = 0;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [FIELDS] - FSTYPE SOURCE SUPER
        let (left, right) = line.split_once(" - ").unwrap_or((line, ""));
        let left: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(target), Some(opts), Some(fstype)) = (left.get(4), left.get(5), right.first())
        else {
            problems.push(format!("unreadable mountinfo line {line:?}"));
            continue;
        };
        if opts.split(',').any(|o| o == "rw") {
            writable += 1;
            if !MEMORY_FS.contains(fstype) {
                problems.push(format!("{target} ({fstype}) is mounted read-write"));
            }
        }
    }
    if problems.is_empty() {
        println!("probe rocheck: ok root=ro erofs=3 tmpfs_writes=3 rw_mounts={writable} all_memory_fs=yes");
        0
    } else {
        println!("probe rocheck: FAIL {}", problems.join("; "));
        1
    }
}

/// A socket-activated service as sd_listen_fds(3) sees it: appends one
/// line to `report` (`pid= listen_pid= listen_fds= names= fd3=…`: for each
/// passed descriptor whether it listens and its path), then answers
/// `count` connections on fds 3 and up, one line each (`probe PID: LINE`), and
/// exits 0. Several passed sockets are served alike.
fn serve_listen(report: &str, count: u32) -> i32 {
    use std::io::{BufRead, BufReader};
    use std::os::fd::BorrowedFd;
    let pid = std::process::id();
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".to_string());
    let fds: i32 = var("LISTEN_FDS").parse().unwrap_or(0);
    let mut line = format!(
        "pid={pid} listen_pid={} listen_fds={} names={}",
        var("LISTEN_PID"),
        var("LISTEN_FDS"),
        var("LISTEN_FDNAMES")
    );
    for fd in 3..3 + fds.max(0) {
        // SAFETY: LISTEN_FDS says init passed descriptors 3..3+N; they stay
        // open for the whole process.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let listening = rustix::net::sockopt::socket_acceptconn(b).unwrap_or(false);
        let path = rustix::net::getsockname(b)
            .ok()
            .and_then(|a| rustix::net::SocketAddrUnix::try_from(a).ok())
            .and_then(|u| u.path().map(|p| p.to_string_lossy().into_owned()))
            .unwrap_or_default();
        line.push_str(&format!(
            " fd{fd}={}:{path}",
            if listening { "listening" } else { "no" }
        ));
    }
    // No other socket open above the passed ones: init leaks none of its
    // own (descriptors the test harness left to init are not init's).
    let extra: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.parse::<i32>().ok())
                        .is_some_and(|n| n >= 3 + fds.max(0))
                })
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .filter(|t| t.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default();
    line.push_str(&format!(" extra_sockets={}", extra.len()));
    let code = append_line(report, &line);
    if code != 0 || fds < 1 {
        return fail("no listening socket passed");
    }
    // SAFETY: as above.
    let listeners: Vec<BorrowedFd<'_>> = (3..3 + fds)
        .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
        .collect();
    let mut served = 0;
    while served < count {
        // Non-blocking sockets, as systemd passes them: wait first.
        let mut pfds: Vec<rustix::event::PollFd<'_>> = listeners
            .iter()
            .map(|l| rustix::event::PollFd::new(l, rustix::event::PollFlags::IN))
            .collect();
        if rustix::event::poll(&mut pfds, None).is_err() {
            return fail("poll the passed sockets");
        }
        let ready: Vec<usize> = (0..pfds.len())
            .filter(|&i| !pfds[i].revents().is_empty())
            .collect();
        drop(pfds);
        for i in ready {
            let conn = match rustix::net::accept(listeners[i]) {
                Ok(c) => c,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
                Err(e) => return fail(&format!("accept on fd {}: {e}", i + 3)),
            };
            let _ = rustix::fs::fcntl_setfl(&conn, rustix::fs::OFlags::empty());
            let stream = std::os::unix::net::UnixStream::from(conn);
            let mut text = String::new();
            let _ = BufReader::new(&stream).read_line(&mut text);
            let _ = (&stream).write_all(format!("probe {pid}: {}\n", text.trim_end()).as_bytes());
            served += 1;
        }
    }
    0
}

fn append_line(path: &str, line: &str) -> i32 {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
    {
        Ok(()) => 0,
        Err(e) => fail(&format!("append to {path}: {e}")),
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("probe: {msg}");
    1
}

/// Appends `text` and CLOCK_MONOTONIC (µs) as one line: ordering tests read it.
fn append(path: &str, text: &str) -> i32 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let us = ts.tv_sec * 1_000_000 + ts.tv_nsec / 1000;
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        // One write(2) per line, so concurrent appenders never interleave.
        .and_then(|mut f| f.write_all(format!("{text} {us}\n").as_bytes()));
    match r {
        Ok(()) => 0,
        Err(e) => fail(&format!("append {path}: {e}")),
    }
}

/// Waits up to `within` for a kernel log record whose message contains
/// `needle` (the console may not show it: `quiet`), and prints it as
/// `probe kmsg: MESSAGE`.
fn kmsg(needle: &str, within: Duration) -> i32 {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    {
        Ok(f) => f,
        Err(e) => return fail(&format!("open /dev/kmsg: {e}")),
    };
    let deadline = std::time::Instant::now() + within;
    let mut buf = vec![0u8; 8192];
    loop {
        // One record per read; EAGAIN once all are read, EPIPE for one
        // overwritten meanwhile.
        match f.read(&mut buf) {
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let msg = rec
                    .split_once(';')
                    .map_or("", |(_, m)| m)
                    .lines()
                    .next()
                    .unwrap_or("");
                if msg.contains(needle) {
                    println!("probe kmsg: {msg}");
                    return 0;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    return fail(&format!("no kernel log record contains {needle:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return fail(&format!("read /dev/kmsg: {e}")),
        }
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn report(path: &str) -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let fmt = |v: Option<u64>| v.map_or("infinity".to_string(), |v| v.to_string());
    let link = |p: &str| {
        std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_else(|e| format!("error:{e}"))
    };
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        out.push_str(k);
        out.push('=');
        out.push_str(&v);
        out.push('\n');
    };
    kv("pid", std::process::id().to_string());
    kv(
        "ppid",
        rustix::process::getppid()
            .map_or(0, |p| p.as_raw_nonzero().get())
            .to_string(),
    );
    kv("uid", rustix::process::getuid().as_raw().to_string());
    kv("gid", rustix::process::getgid().as_raw().to_string());
    kv("groups", status_field(&status, "Groups:"));
    kv("cap_eff", status_field(&status, "CapEff:"));
    kv("cap_amb", status_field(&status, "CapAmb:"));
    kv("cap_bnd", status_field(&status, "CapBnd:"));
    kv("no_new_privs", status_field(&status, "NoNewPrivs:"));
    kv(
        "nofile",
        format!("{}/{}", fmt(nofile.current), fmt(nofile.maximum)),
    );
    kv(
        "oom_score_adj",
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    kv("umask", format!("{:04o}", old.bits()));
    kv(
        "cwd",
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
    kv("stdin", link("/proc/self/fd/0"));
    kv("stdout", link("/proc/self/fd/1"));
    kv(
        "sid_is_pid",
        (rustix::process::getsid(None).ok() == Some(rustix::process::getpid())).to_string(),
    );
    kv(
        "hostname",
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (k, v) in env {
        kv(&format!("env.{k}"), v);
    }
    match std::fs::write(path, out) {
        Ok(()) => 0,
        Err(e) => fail(&format!("write {path}: {e}")),
    }
}

/// sd_notify READY=1 after `delay_ms`, then wait for SIGTERM.
fn notify(delay_ms: u64) -> i32 {
    std::thread::sleep(Duration::from_millis(delay_ms));
    let Ok(sock) = std::env::var("NOTIFY_SOCKET") else {
        return fail("NOTIFY_SOCKET not set");
    };
    let tx = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(t) => t,
        Err(e) => return fail(&format!("socket: {e}")),
    };
    if let Err(e) = tx.send_to(b"READY=1\nSTATUS=probe ready", &sock) {
        return fail(&format!("send to {sock}: {e}"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn ignore_term() -> i32 {
    // SAFETY: SIG_IGN is a valid disposition for SIGTERM; no handler code runs.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    println!("probe: ignoring SIGTERM");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Forks `n` children that exit at once, then exits without reaping them:
/// `n` zombies are reparented to init.
fn orphans(n: usize) -> i32 {
    for _ in 0..n {
        // SAFETY: the child calls only _exit, which is async-signal-safe.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: _exit never returns and runs no destructors.
                unsafe { libc::_exit(0) }
            }
            -1 => return fail(&format!("fork: {}", std::io::Error::last_os_error())),
            _ => {}
        }
    }
    0
}

/// A classic daemon, as Type=forking expects: forks a child that starts a
/// session of its own, writes its pid to `pid_file`, appends a line to
/// `starts` and then waits for signals; the parent exits 0 only once the
/// child has written its pid file (a pipe's end closes).
fn daemonize(pid_file: &str, starts: &str) -> i32 {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return fail(&format!("pipe: {}", std::io::Error::last_os_error()));
    }
    let [read_end, write_end] = fds;
    // SAFETY: probe is single-threaded here; the child goes on as a
    // normal process (no async-signal-safety needed after fork then).
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: plain system calls on descriptors this process owns.
            unsafe {
                libc::close(read_end);
                libc::setsid();
            }
            let pid = std::process::id();
            if let Err(e) = std::fs::write(pid_file, format!("{pid}\n")) {
                return fail(&format!("write {pid_file}: {e}"));
            }
            append_line(starts, "started");
            // SAFETY: as above.
            unsafe { libc::close(write_end) };
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        -1 => fail(&format!("fork: {}", std::io::Error::last_os_error())),
        _ => {
            // SAFETY: as above; read blocks until the child closes its end.
            unsafe {
                libc::close(write_end);
                let mut b = 0u8;
                while libc::read(read_end, (&mut b as *mut u8).cast(), 1) > 0 {}
            }
            0
        }
    }
}

/// A unit generator as Kata's kata-extension-mount-generator: for each
/// `kata.extension.NAME.verity_params[=...]` word of /proc/cmdline, links
/// `kata-extension-mount@NAME.service` to the template in the normal output
/// directory's `kata-containers.target.wants/`. Also writes the arguments
/// it got to /data/generator-args.
fn extension_generator(args: &[String]) -> i32 {
    let Some(normal) = args.get(1) else {
        return fail("generator: no output directory");
    };
    let _ = std::fs::write("/data/generator-args", args[1..].join(" "));
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let wants = format!("{normal}/kata-containers.target.wants");
    for word in cmdline.split_whitespace() {
        let Some(rest) = word.strip_prefix("kata.extension.") else {
            continue;
        };
        let Some(name) = rest.split(".verity_params").next().filter(|n| *n != rest) else {
            continue;
        };
        if let Err(e) = std::fs::create_dir_all(&wants).and_then(|()| {
            std::os::unix::fs::symlink(
                "/usr/lib/systemd/system/kata-extension-mount@.service",
                format!("{wants}/kata-extension-mount@{name}.service"),
            )
        }) {
            return fail(&format!("generator: {e}"));
        }
    }
    0
}

/// Sends `sig` to the process `pid_file` names.
fn kill_pidfile(pid_file: &str, sig: i32) -> i32 {
    let pid: i32 = match std::fs::read_to_string(pid_file) {
        Ok(t) => t.trim().parse().unwrap_or(0),
        Err(e) => return fail(&format!("read {pid_file}: {e}")),
    };
    // SAFETY: kill(2) with a pid read from the file; 0 or less refused.
    if pid <= 0 || unsafe { libc::kill(pid, sig) } != 0 {
        return fail(&format!("kill {pid}: {}", std::io::Error::last_os_error()));
    }
    0
}

/// Writes how many zombie processes are visible in /proc.
fn zombies(path: &str) -> i32 {
    let count = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    stat.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .count()
        })
        .unwrap_or(usize::MAX);
    match std::fs::write(path, count.to_string()) {
        Ok(()) => 0,
        Err(e) => fail(&format!("write {path}: {e}")),
    }
}

/// Writes `NAME TYPE [MAJOR:MINOR]` for each entry of `dir`, sorted.
fn list(dir: &str, path: &str) -> i32 {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut lines: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let md = std::fs::symlink_metadata(e.path()).ok()?;
                let ft = md.file_type();
                let name = e.file_name().to_string_lossy().into_owned();
                let rdev = md.rdev();
                let kind = if ft.is_char_device() {
                    format!("char {}:{}", libc::major(rdev), libc::minor(rdev))
                } else if ft.is_symlink() {
                    format!("link {}", std::fs::read_link(e.path()).ok()?.display())
                } else if ft.is_dir() {
                    "dir".into()
                } else {
                    "file".into()
                };
                Some(format!("{name} {kind}"))
            })
            .collect(),
        Err(e) => return fail(&format!("read {dir}: {e}")),
    };
    lines.sort();
    match std::fs::write(path, lines.join("\n") + "\n") {
        Ok(()) => 0,
        Err(e) => fail(&format!("write {path}: {e}")),
    }
}

/// Writes `TYPE UID GID MODE` (mode in octal, 4 digits) of `target`, not
/// following a symlink, or `missing`.
fn stat(target: &str, path: &str) -> i32 {
    use std::os::unix::fs::MetadataExt;
    let line = match std::fs::symlink_metadata(target) {
        Ok(m) => {
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "link"
            } else {
                "file"
            };
            format!("{kind} {} {} {:04o}\n", m.uid(), m.gid(), m.mode() & 0o7777)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing\n".to_string(),
        Err(e) => return fail(&format!("stat {target}: {e}")),
    };
    match std::fs::write(path, line) {
        Ok(()) => 0,
        Err(e) => fail(&format!("write {path}: {e}")),
    }
}
