//! Test harness: builds a small rootfs with the real static `init` and the
//! `probe` program, and runs init as PID 1 of new PID, mount, UTS, IPC,
//! network and cgroup namespaces (util-linux `unshare --root`), in container
//! mode. Nothing outside those namespaces changes.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the binaries under test are: `$MINOS_BIN_DIR`, else the cargo
/// target directory of the running test (target/<triple>/debug).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MINOS_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<triple>/debug/deps/pid1-xxxx → target/<triple>/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a built binary; fails with the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the binaries first (`cargo build --workspace`; `cargo xtask test` does it)",
        p.display()
    );
    p
}

/// Fails with a clear message unless the test can create namespaces.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root: they create PID/mount/network namespaces and chroot (CI runs as root)"
    );
    assert!(
        Command::new("unshare").arg("--version").output().is_ok_and(|o| o.status.success()),
        "util-linux `unshare` is required (apt-get install util-linux; `cargo xtask test` installs it)"
    );
}

/// New PID, mount, UTS, IPC, network and cgroup namespaces, init as PID 1,
/// killed with unshare.
pub const UNSHARE: [&str; 8] = [
    "--pid",
    "--fork",
    "--mount",
    "--uts",
    "--ipc",
    "--net",
    "--cgroup",
    "--kill-child",
];

/// A throw-away root filesystem for one test.
#[derive(Debug)]
pub struct Rootfs {
    pub top: PathBuf,
    pub root: PathBuf,
}

impl Rootfs {
    pub fn new(name: &str) -> Self {
        require_root();
        let top = std::env::temp_dir().join(format!("minos-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let root = top.join("root");
        for d in [
            "bin",
            "sbin",
            "usr/bin",
            "etc/minos/units",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "data",
        ] {
            std::fs::create_dir_all(root.join(d)).expect("create rootfs dirs");
        }
        set_mode(&root.join("data"), 0o777);
        std::fs::copy(binary("init"), root.join("sbin/init")).expect("copy init");
        std::fs::copy(binary("probe"), root.join("bin/probe")).expect("copy probe");
        for (link, target) in [
            ("usr/bin/systemctl", "/sbin/init"),
            ("sbin/poweroff", "init"),
            ("sbin/reboot", "init"),
            ("sbin/halt", "init"),
            ("bin/sync", "probe"),
            ("usr/bin/kata-agent", "/bin/probe"),
        ] {
            std::os::unix::fs::symlink(target, root.join(link)).expect("symlink");
        }
        let fs = Self { top, root };
        fs.write("etc/hostname", "minos-test\n");
        fs.write(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nprobeuser:x:1234:1234:probe:/data:/bin/sh\n",
        );
        fs.write(
            "etc/group",
            "root:x:0:\nprobeuser:x:1234:\nextra:x:2000:probeuser\n",
        );
        fs
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    pub fn unit(&self, name: &str, text: &str) {
        self.write(&format!("etc/minos/units/{name}"), text);
    }

    pub fn read(&self, rel: &str) -> String {
        let p = self.root.join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    pub fn try_read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// Starts init as PID 1 in new namespaces; `args` are its options (as
    /// systemd in a container, init reads them from its argv).
    pub fn start(&self, args: &[&str]) -> Pid1 {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        self.start_os(&args)
    }

    /// Like [`start`], with options that need not be UTF-8.
    pub fn start_os(&self, args: &[std::ffi::OsString]) -> Pid1 {
        let mut cmd = Command::new("unshare");
        cmd.args(UNSHARE)
            .arg("--root")
            .arg(&self.root)
            .arg("/sbin/init")
            .args(args);
        self.spawn(cmd)
    }

    /// Like [`start`], but a shell first mounts `image` (ext4, loop) on /data
    /// inside the new mount namespace, then execs init chrooted.
    pub fn start_with_data_image(&self, image: &Path, args: &[&str]) -> Pid1 {
        self.start_after(
            &format!(
                "mount -o loop {} {}/data",
                sh_quote(&image.to_string_lossy()),
                sh_quote(&self.root.to_string_lossy())
            ),
            args,
        )
    }

    /// Like [`start`], but `prelude` (a shell command line, run as PID 1 of
    /// the new namespaces; `$ROOT` is the rootfs) runs first, then init is
    /// exec'd chrooted. Mounts made there are seen by init, which leaves a
    /// mount point it finds in place.
    pub fn start_after(&self, prelude: &str, args: &[&str]) -> Pid1 {
        let script = format!(
            "ROOT={root} && {prelude} && exec chroot {root} /sbin/init {args}",
            root = sh_quote(&self.root.to_string_lossy()),
            args = args
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new("unshare");
        cmd.args(UNSHARE).args(["/bin/sh", "-c"]).arg(script);
        self.spawn(cmd)
    }

    /// Like [`start`], with `kernel_cmdline` as `/proc/cmdline`, as in a VM.
    /// In a container /proc/cmdline is the host's, so this is how `agent.*`
    /// keys reach an agent: a shell in the new namespaces (PID 1 there)
    /// mounts proc on the rootfs's /proc, which init then leaves as it is,
    /// binds a file holding the line over /proc/cmdline, then execs init
    /// chrooted.
    pub fn start_with_kernel_cmdline(&self, kernel_cmdline: &str, args: &[&str]) -> Pid1 {
        let file = self.top.join("cmdline");
        std::fs::write(&file, format!("{kernel_cmdline}\n")).expect("write cmdline");
        let root = sh_quote(&self.root.to_string_lossy());
        let script = format!(
            "mount -t proc -o nosuid,nodev,noexec proc {root}/proc && \
             mount --bind {file} {root}/proc/cmdline && exec chroot {root} /sbin/init {args}",
            file = sh_quote(&file.to_string_lossy()),
            args = args
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new("unshare");
        cmd.args(UNSHARE).args(["/bin/sh", "-c"]).arg(script);
        self.spawn(cmd)
    }

    /// Like [`start`], but in the host's cgroup namespace (`unshare` without
    /// `--cgroup`), as a bare namespace leaves PID 1.
    pub fn start_in_host_cgroup_namespace(&self, args: &[&str]) -> Pid1 {
        let mut cmd = Command::new("unshare");
        cmd.args(UNSHARE.iter().filter(|a| **a != "--cgroup"))
            .arg("--root")
            .arg(&self.root)
            .arg("/sbin/init")
            .args(args);
        self.spawn(cmd)
    }

    /// Like [`start`], with init's stdout and stderr on a pipe that
    /// nobody reads until the caller does: its read end is returned (a
    /// console nobody drains). [`Pid1::output`] stays empty.
    pub fn start_undrained(&self, args: &[&str]) -> (Pid1, std::fs::File) {
        let (read, write) =
            rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe");
        let write2 = write.try_clone().expect("dup");
        let mut cmd = Command::new("unshare");
        cmd.args(UNSHARE)
            .arg("--root")
            .arg(&self.root)
            .arg("/sbin/init")
            .args(args)
            .env_clear()
            .env("container", "minos-test")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2));
        let child = cmd.spawn().expect("spawn unshare");
        drop(cmd);
        let pid1 = Pid1 {
            child,
            output: Arc::new(Mutex::new(String::new())),
            readers: Vec::new(),
            started: Instant::now(),
        };
        (pid1, std::fs::File::from(read))
    }

    fn spawn(&self, mut cmd: Command) -> Pid1 {
        cmd.env_clear()
            .env("container", "minos-test")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn unshare");
        let output = Arc::new(Mutex::new(String::new()));
        let readers = [
            pump(
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                output.clone(),
            ),
            pump(
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn Read + Send>),
                output.clone(),
            ),
        ];
        Pid1 {
            child,
            output,
            readers: readers.into_iter().flatten().collect(),
            started: Instant::now(),
        }
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }
}

/// `text` as one word for `sh`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn pump(
    src: Option<Box<dyn Read + Send>>,
    out: Arc<Mutex<String>>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut src = src?;
    Some(std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = src.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut o) = out.lock() {
                o.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    }))
}

/// A running init (through unshare). Dropping it kills the namespace.
#[derive(Debug)]
pub struct Pid1 {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    pub started: Instant,
}

/// How the namespace ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    pub output: String,
    pub elapsed: Duration,
}

impl Ended {
    /// reboot(2) in a child PID namespace ends it: POWER_OFF and HALT with
    /// SIGINT, RESTART with SIGHUP (unshare passes the signal on).
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }

    pub fn assert_log(&self, needle: &str) {
        assert!(
            self.output.contains(needle),
            "output lacks {needle:?}:\n{}",
            self.output
        );
    }
}

impl Pid1 {
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "init ended ({st}) before printing {needle:?}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no {needle:?} within {timeout:?}:\n{}", self.output());
    }

    /// The host pid of init (the child of unshare).
    pub fn host_pid(&self) -> i32 {
        let unshare = self.child.id();
        for _ in 0..200 {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
            {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("unshare {unshare} has no child");
    }

    pub fn signal(&self, sig: i32) {
        let pid = self.host_pid();
        // SAFETY: kill(2) with integers only.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the namespace to end; fails after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Ended {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    for r in self.readers.drain(..) {
                        let _ = r.join();
                    }
                    return Ended {
                        status,
                        output: self.output(),
                        elapsed: self.started.elapsed(),
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    panic!("init did not end within {timeout:?}:\n{}", self.output());
                }
            }
        }
    }
}

impl Drop for Pid1 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One socket of a process, seen through a duplicate of its descriptor
/// (pidfd_getfd(2), which needs the ptrace access root has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub pid: i32,
    /// The process's command name (/proc/PID/comm).
    pub comm: String,
    pub fd: i32,
    /// `AF_*` number.
    pub family: u32,
    /// `SOCK_*` number.
    pub kind: u32,
    pub listening: bool,
    /// The local address: a path for unix sockets, `ip:port` for inet,
    /// `cid:port` for vsock, empty when unbound.
    pub local: String,
}

/// The processes in the PID namespace of host process `pid` (host pids).
pub fn namespace_members(pid: i32) -> Vec<i32> {
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let want = ns(&pid.to_string()).expect("pid namespace of init");
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| ns(&p.to_string()).as_ref() == Some(&want))
        .collect();
    pids.sort_unstable();
    pids
}

/// Every socket that process `pid` holds.
pub fn sockets_of(pid: i32) -> Vec<SocketInfo> {
    use rustix::net::sockopt;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let Ok(pidfd) = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid).expect("pid > 0"),
        rustix::process::PidfdFlags::empty(),
    ) else {
        return Vec::new(); // exited in between
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in fds.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let dup = match rustix::process::pidfd_getfd(
            &pidfd,
            fd,
            rustix::process::PidfdGetfdFlags::empty(),
        ) {
            Ok(dup) => dup,
            // Closed or exited since /proc was read.
            Err(rustix::io::Errno::BADF | rustix::io::Errno::SRCH) => continue,
            Err(e) => panic!("pidfd_getfd({pid}, {fd}): {e}"),
        };
        let family = sockopt::socket_domain(&dup).map_or(0, |f| u32::from(f.as_raw()));
        let kind = sockopt::socket_type(&dup).map_or(0, |t| t.as_raw());
        let listening = sockopt::socket_acceptconn(&dup).unwrap_or(false);
        let local = local_address(&dup, family);
        out.push(SocketInfo {
            pid,
            comm: comm.clone(),
            fd,
            family,
            kind,
            listening,
            local,
        });
    }
    out
}

fn local_address(fd: &std::os::fd::OwnedFd, family: u32) -> String {
    use std::os::fd::AsRawFd;
    match family as i32 {
        libc::AF_VSOCK => {
            match nix::sys::socket::getsockname::<nix::sys::socket::VsockAddr>(fd.as_raw_fd()) {
                Ok(a) => format!("{}:{}", a.cid(), a.port()),
                Err(e) => format!("? ({e})"),
            }
        }
        _ => match rustix::net::getsockname(fd) {
            Ok(a) => match a.address_family() {
                rustix::net::AddressFamily::UNIX => rustix::net::SocketAddrUnix::try_from(a)
                    .map_or_else(
                        |_| String::new(),
                        |u| {
                            u.path()
                                .map(|p| p.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        },
                    ),
                rustix::net::AddressFamily::INET | rustix::net::AddressFamily::INET6 => {
                    std::net::SocketAddr::try_from(a)
                        .map_or_else(|e| format!("? ({e})"), |s| s.to_string())
                }
                other => format!("family {}", other.as_raw()),
            },
            Err(e) => format!("? ({e})"),
        },
    }
}

/// A fresh ext4 image of `size` (e.g. "16M") at `path`, by the real mkfs.ext4.
pub fn make_ext4(path: &Path, size: &str) {
    let ok = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096"])
        .arg(path)
        .arg(size)
        .stdout(Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs; `cargo xtask test` installs it)");
    assert!(ok.success(), "mkfs.ext4 {}", path.display());
}

/// Asserts that `e2fsck -fn` finds the ext4 image clean.
pub fn assert_ext4_clean(image: &Path) {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .expect("e2fsck");
    assert!(
        fsck.status.success(),
        "e2fsck -fn: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// The contents of `file` (absolute in the image) in an ext4 image, by debugfs.
pub fn ext4_cat(image: &Path, file: &str) -> String {
    let cat = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&cat.stdout).into_owned()
}
