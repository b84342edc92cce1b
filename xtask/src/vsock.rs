//! Host↔guest vsock for QEMU under TCG, without /dev/vhost-vsock.
//!
//! The `vhost-device-vsock` backend (crates.io, rust-vmm) serves QEMU's
//! `vhost-user-vsock-pci` device: the guest gets a real virtio-vsock device
//! and the host a hybrid-vsock unix socket — Firecracker's and Cloud
//! Hypervisor's interface: connect, write `CONNECT PORT\n`, read `OK ...`,
//! then the stream. vhost-user needs the guest RAM shared with the backend,
//! so the machine's memory is a shared memfd.
//!
//! The backend is installed with `cargo install` under the cache directory
//! (~/.cache/minos/tools), so a fresh clone reuses it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{run, Result};

/// The backend's version, pinned: its command line is part of our contract.
const BACKEND_VERSION: &str = "0.3.0";
/// The guest's context id (any value ≥ 3 works; Kata uses one per VM).
pub const GUEST_CID: u32 = 3;
/// The port kata-agent listens on.
pub const AGENT_PORT: u32 = 1024;

/// Finds vhost-device-vsock (cache, then PATH) or installs it in the cache.
pub fn ensure_backend() -> Result<PathBuf> {
    let root = crate::kernel::cache_dir().join("tools");
    let cached = root.join("bin/vhost-device-vsock");
    if cached.exists() {
        return Ok(cached);
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("vhost-device-vsock"))
            .find(|path| path.exists())
    }) {
        return Ok(found);
    }
    println!("xtask: installing vhost-device-vsock {BACKEND_VERSION} (cargo install, a few minutes once)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Outside the workspace, so that its .cargo/config.toml (static target
    // flags) does not apply to the backend.
    run(Command::new(cargo)
        .args(["install", "--locked", "--version", BACKEND_VERSION])
        .arg("--root")
        .arg(&root)
        .arg("vhost-device-vsock")
        .current_dir(std::env::temp_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET"))?;
    if cached.exists() {
        Ok(cached)
    } else {
        Err(format!(
            "cargo install did not produce {}",
            cached.display()
        ))
    }
}

/// A running backend; killed and its directory removed on drop.
#[derive(Debug)]
pub struct Backend {
    child: Child,
    dir: PathBuf,
}

impl Backend {
    /// Starts the backend in a fresh directory and waits for its vhost-user
    /// socket.
    pub fn start() -> Result<Self> {
        let program = ensure_backend()?;
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "minos-vsock-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // Its log goes to a file (a pipe nobody reads could fill and stall
        // it); shown when the backend fails.
        let log = std::fs::File::create(dir.join("backend.log"))
            .map_err(|e| format!("create {}: {e}", dir.join("backend.log").display()))?;
        let child = Command::new(&program)
            .arg("--vm")
            .arg(format!(
                "guest-cid={GUEST_CID},socket={},uds-path={}",
                dir.join("vhost.sock").display(),
                dir.join("vm.vsock").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", program.display()))?;
        let mut backend = Self { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backend.vhost_socket().exists() {
            if let Ok(Some(status)) = backend.child.try_wait() {
                return Err(format!(
                    "vhost-device-vsock exited ({status}): {}",
                    backend.log()
                ));
            }
            if Instant::now() > deadline {
                return Err("vhost-device-vsock did not create its socket within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(backend)
    }

    /// What the backend has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("backend.log")).unwrap_or_default()
    }

    /// The vhost-user socket QEMU connects to.
    pub fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }

    /// The host side: the hybrid-vsock unix socket.
    pub fn uds(&self) -> PathBuf {
        self.dir.join("vm.vsock")
    }

    /// QEMU's QMP socket, for [`wait_driver_ready`].
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// QEMU's arguments for the device (the shared memory is the caller's:
    /// see [`memory_args`]).
    pub fn device_args(&self, machine: &str) -> Vec<String> {
        let device = if machine == "microvm" {
            "vhost-user-vsock-device"
        } else {
            "vhost-user-vsock-pci"
        };
        vec![
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp().display()),
            "-chardev".into(),
            format!("socket,id=vsock0,path={}", self.vhost_socket().display()),
            "-device".into(),
            format!("{device},chardev=vsock0"),
        ]
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shared-memory object vhost-user needs, and the machine property
/// that makes it the guest's RAM.
pub fn memory_args(memory_mib: u32) -> (Vec<String>, &'static str) {
    (
        vec![
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={memory_mib}M,share=on"),
        ],
        ",memory-backend=mem",
    )
}

/// Waits until the guest's driver has set up the vsock device
/// (`DRIVER_OK`, read with QEMU's `x-query-virtio-status`), or `stop`.
///
/// vhost-device-vsock 0.3.0 must not see a host connection before that:
/// a connection that arrives once QEMU has given it the guest's memory but
/// before the guest's driver has set up the queues makes its queue
/// processing fail (the queue is not ready), and that error ends the
/// backend's worker thread — every later connection of the boot then
/// hangs or is reset. The Kata runtime's in-kernel vhost-vsock has no such
/// window. The driver is up long before user space, so waiting costs the
/// health check nothing.
pub fn wait_driver_ready(qmp: &Path, stop: &dyn Fn() -> bool) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let deadline = Instant::now() + Duration::from_secs(120);
    let give_up = |what: &str| -> Result<()> {
        if stop() {
            return Err(format!("the guest ended before {what}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not come within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    };
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(qmp) {
            Ok(s) => break s,
            Err(_) => give_up("QEMU's QMP socket")?,
        }
    };
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("QMP {}: {e}", qmp.display()))?;
    let mut reader = BufReader::new(stream);
    // One command; its answer (events in between are skipped).
    let mut ask = |command: serde_json::Value| -> Result<serde_json::Value> {
        writeln!(writer, "{command}").map_err(|e| format!("QMP write: {e}"))?;
        loop {
            let mut line = String::new();
            if reader
                .read_line(&mut line)
                .map_err(|e| format!("QMP read: {e}"))?
                == 0
            {
                return Err("QMP: QEMU closed the socket".into());
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line}"))?;
            if let Some(err) = v.get("error") {
                return Err(format!("QMP {command}: {err}"));
            }
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
        }
    };
    ask(serde_json::json!({ "execute": "qmp_capabilities" }))?;
    let path = loop {
        let devices = ask(serde_json::json!({ "execute": "x-query-virtio" }))?;
        let vsock = devices.as_array().and_then(|list| {
            list.iter()
                .find(|d| d["name"].as_str().is_some_and(|n| n.contains("vsock")))
                .and_then(|d| d["path"].as_str().map(String::from))
        });
        match vsock {
            Some(path) => break path,
            None => give_up("a vsock device in QEMU")?,
        }
    };
    loop {
        let status = ask(serde_json::json!({
            "execute": "x-query-virtio-status",
            "arguments": { "path": path },
        }))?;
        let ready = status["status"]["statuses"].as_array().is_some_and(|list| {
            list.iter()
                .any(|s| s.as_str().is_some_and(|s| s.contains("DRIVER_OK")))
        });
        if ready {
            // QEMU has sent the vring set-up; let the backend take it in.
            std::thread::sleep(Duration::from_millis(50));
            return Ok(());
        }
        give_up("the guest's vsock driver")?;
    }
}

/// The host's health checker: runs `agent-shim check hvsock://UDS:1024`
/// until one answers SERVING (the runtime polls the same way), or until
/// stopped.
#[derive(Debug)]
pub struct Checker {
    stop: Arc<AtomicBool>,
    result: Arc<Mutex<Option<std::result::Result<String, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checker {
    pub fn start(shim: &Path, backend: &Backend) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let result = Arc::new(Mutex::new(None));
        let (shim, addr, qmp) = (
            shim.to_path_buf(),
            format!("hvsock://{}:{AGENT_PORT}", backend.uds().display()),
            backend.qmp(),
        );
        let thread = {
            let (stop, result) = (stop.clone(), result.clone());
            std::thread::spawn(move || {
                if let Err(e) = wait_driver_ready(&qmp, &|| stop.load(Ordering::Relaxed)) {
                    *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e));
                    return;
                }
                let mut last = String::from("no attempt");
                while !stop.load(Ordering::Relaxed) {
                    let output = Command::new(&shim)
                        .args(["check", &addr, "--timeout", "2s"])
                        .stdin(Stdio::null())
                        .output();
                    match output {
                        Ok(o) if o.status.success() => {
                            let answer = String::from_utf8_lossy(&o.stdout).trim().to_string();
                            *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ok(answer));
                            return;
                        }
                        Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => last = format!("run {}: {e}", shim.display()),
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(last));
            })
        };
        Self {
            stop,
            result,
            thread: Some(thread),
        }
    }

    /// Stops checking; the answer (`SERVING`) or the last failure.
    pub fn finish(mut self) -> std::result::Result<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let result = self.result.lock().unwrap_or_else(|p| p.into_inner()).take();
        result.unwrap_or_else(|| Err("the checker did not finish".into()))
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
