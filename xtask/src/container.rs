//! A rootfs with the release binaries, run as a container: init is PID 1 of
//! new PID, mount, UTS, IPC, network and cgroup namespaces (util-linux
//! `unshare --root`). Used by `demo` and `spec` until the VM image exists.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::Result;

/// Kata's agent unit as Kata's rootfs installs it.
pub const KATA_AGENT_SERVICE: &str = include_str!("../../tests/fixtures/kata/kata-agent.service");
pub const KATA_TARGET: &str = include_str!("../../tests/fixtures/kata/kata-containers.target");

pub const TIMESYNC_SERVICE: &str = "\
[Unit]
Description=minos time synchronisation
ConditionPathExists=/etc/timesync.conf

[Service]
ExecStart=/usr/bin/timesync --config /etc/timesync.conf
Restart=on-failure
";

/// Writes a rootfs under `dir` with init, timesync and agent-shim (as
/// /usr/bin/kata-agent), multi-call links, and `units`.
pub fn make_rootfs(dir: &Path, bin: &Path, units: &[(&str, &str)]) -> Result<()> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let _ = std::fs::remove_dir_all(dir);
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
    ] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| io(d, e))?;
    }
    for (name, to) in [
        ("init", "sbin/init"),
        ("timesync", "usr/bin/timesync"),
        ("agent-shim", "usr/bin/agent-shim"),
    ] {
        std::fs::copy(bin.join(name), dir.join(to)).map_err(|e| io(name, e))?;
    }
    for (link, target) in [
        ("usr/bin/systemctl", "/sbin/init"),
        ("sbin/poweroff", "init"),
        ("sbin/reboot", "init"),
        ("sbin/halt", "init"),
        ("bin/sync", "/sbin/init"),
        ("usr/bin/kata-agent", "agent-shim"),
    ] {
        std::os::unix::fs::symlink(target, dir.join(link)).map_err(|e| io(link, e))?;
    }
    let files = [
        ("etc/hostname", "minos-demo\n"),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        (
            "etc/timesync.conf",
            include_str!("../../tests/fixtures/kata/chrony-kata.conf"),
        ),
    ];
    for (path, text) in files {
        std::fs::write(dir.join(path), text).map_err(|e| io(path, e))?;
    }
    for (name, text) in units {
        std::fs::write(dir.join("etc/minos/units").join(name), text).map_err(|e| io(name, e))?;
    }
    Ok(())
}

/// A running container; its output is echoed (when `echo`) and kept.
pub struct Container {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Container {
    pub fn start(root: &Path, args: &[&str], echo: bool) -> Result<Self> {
        let mut child = Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--cgroup",
                "--kill-child",
                "--root",
            ])
            .arg(root)
            .arg("/sbin/init")
            .args(args)
            .env_clear()
            .env("container", "minos")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("start unshare: {e}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        for src in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || pump(src, out, echo));
        }
        Ok(Self { child, output })
    }

    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("init ended ({st}) before {needle:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("no {needle:?} within {timeout:?}"))
    }

    /// init's pid on the host (the child of unshare).
    pub fn init_pid(&self) -> Result<u32> {
        let u = self.child.id();
        for _ in 0..200 {
            let c =
                std::fs::read_to_string(format!("/proc/{u}/task/{u}/children")).unwrap_or_default();
            if let Some(p) = c.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Ok(p);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("unshare has no child".into())
    }

    pub fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.init_pid()?;
        crate::util::run(Command::new("kill").args(["-s", sig, &pid.to_string()]))
    }

    /// Waits for the namespace to end; returns the signal that ended it and
    /// everything init printed.
    pub fn wait(mut self, timeout: Duration) -> Result<(Option<i32>, String)> {
        use std::os::unix::process::ExitStatusExt;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().map_err(|e| e.to_string())? {
                std::thread::sleep(Duration::from_millis(50));
                return Ok((st.signal(), self.output()));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("init did not end within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pump(mut src: Box<dyn Read + Send>, out: Arc<Mutex<String>>, echo: bool) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = src.read(&mut buf) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        if echo {
            print!("{text}");
        }
        if let Ok(mut o) = out.lock() {
            o.push_str(&text);
        }
    }
}

/// A scratch directory under target/.
pub fn scratch(name: &str) -> PathBuf {
    crate::util::root().join("target/xtask").join(name)
}
