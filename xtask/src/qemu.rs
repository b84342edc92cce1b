//! `cargo xtask boot`: boot a minos image in QEMU under TCG and summarise.
//!
//! Guest time is deterministic with `-icount shift=0,sleep=off` (1 guest
//! instruction = 1 ns; idle time is skipped), so the figures in the summary
//! line are guest CLOCK_BOOTTIME and repeat run after run:
//!
//! `boot: kernel_ms=N init_to_agent_ms=N agent_ready_ms=N health_check_ms=N mem_used_kib=N poweroff=clean`
//!
//! With `vsock` set, the guest has a real virtio-vsock device (see
//! [`crate::vsock`]) and the host polls the agent's health check over
//! hybrid vsock from power-on, as the Kata runtime does; `health_check_ms`
//! is the guest time at which the agent answered the host's first check.
//! Such a boot runs with `sleep=on`: with `sleep=off` an idle guest's
//! virtual clock jumps to its next timer, so a request from the host would
//! land at an arbitrary guest time (or after the agent's exit timer). With
//! `sleep=on` guest time follows real time while the guest idles, and the
//! busy parts of the boot stay instruction-counted (about ±5 %).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::image::Fs;
use crate::util::{ensure_packages, Result};

/// Kata's QEMU x86 command line (tests/fixtures/kata/kernel-cmdline-qemu-x86.txt)
/// without its console and root parameters, which depend on the boot.
pub fn kata_cmdline() -> String {
    let text = include_str!("../../tests/fixtures/kata/kernel-cmdline-qemu-x86.txt");
    let line = text
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap_or_default();
    line.split_whitespace()
        .filter(|w| !w.starts_with("console=") && !w.starts_with("root") && *w != "ro")
        .collect::<Vec<_>>()
        .join(" ")
}

/// How the image is attached, as Kata attaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Initrd,
    /// virtio-blk, root=/dev/vda1.
    Disk,
    /// NVDIMM with the DAX header, root=/dev/pmem0p1.
    Dax,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "initrd" => Ok(Kind::Initrd),
            "disk" => Ok(Kind::Disk),
            "dax" => Ok(Kind::Dax),
            other => Err(format!("unknown --kind {other:?} (initrd, disk, dax)")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Initrd => "initrd",
            Kind::Disk => "disk",
            Kind::Dax => "dax",
        }
    }

    /// Kata's root parameters for this kind (erofs takes no ext4 options).
    fn root_cmdline(self, fs: Fs) -> &'static str {
        match (self, fs) {
            (Kind::Initrd, _) => "",
            (Kind::Disk, Fs::Ext4) => {
                "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
            }
            (Kind::Dax, Fs::Ext4) => {
                "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"
            }
            (Kind::Disk, Fs::Erofs) => "root=/dev/vda1 ro rootfstype=erofs",
            (Kind::Dax, Fs::Erofs) => "root=/dev/pmem0p1 rootflags=dax ro rootfstype=erofs",
        }
    }
}

/// The guest's console as a host-side script sees it while the guest runs.
#[derive(Debug)]
pub struct Console {
    text: Mutex<String>,
    gone: AtomicBool,
    /// When QEMU was started.
    pub started: Instant,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            text: Mutex::default(),
            gone: AtomicBool::new(false),
            started: Instant::now(),
        }
    }
}

impl Console {
    /// Whether the guest has ended (QEMU exited or was stopped).
    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    fn push(&self, line: &str) {
        let mut text = self.text.lock().unwrap_or_else(|p| p.into_inner());
        text.push_str(line);
        text.push('\n');
    }

    /// Everything the guest printed so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the console after byte `from` has a line for which
    /// `found` holds; returns that line and the offset after it. Fails when
    /// the guest is gone or after `timeout`.
    pub fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        found: impl Fn(&str) -> bool,
    ) -> Result<(String, usize)> {
        let deadline = Instant::now() + timeout;
        loop {
            let gone = self.gone.load(Ordering::Relaxed);
            {
                let text = self.text.lock().unwrap_or_else(|p| p.into_inner());
                let mut at = from.min(text.len());
                for line in text.get(at..).unwrap_or_default().split_inclusive('\n') {
                    at += line.len();
                    if line.ends_with('\n') && found(line.trim_end()) {
                        return Ok((line.trim_end().to_string(), at));
                    }
                }
            }
            if gone {
                return Err(format!("the guest ended before the console showed {what}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the console did not show {what} within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A host-side script run while the guest boots with vsock, in place of the
/// plain health check: it gets the hybrid-vsock socket and the console, and
/// returns what it saw (or the first failure) as the boot's `host_check`.
#[derive(Clone)]
pub struct HostScript {
    pub run: Arc<ScriptFn>,
    /// When it has ended, the host stops the VM (as Kata's runtime does
    /// after `DestroySandbox`) instead of waiting for a power-off.
    pub then_stop: bool,
}

/// A host script's body: given the hybrid-vsock socket and the console.
pub type ScriptFn = dyn Fn(&std::path::Path, &Console) -> Result<String> + Send + Sync;

impl std::fmt::Debug for HostScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostScript")
    }
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub kernel: PathBuf,
    pub kind: Kind,
    pub fs: Fs,
    pub image: PathBuf,
    /// Extra virtio-blk disks (read-write), e.g. a data disk.
    pub data_disks: Vec<PathBuf>,
    pub machine: String,
    pub extra_cmdline: String,
    pub memory_mib: u32,
    pub timeout: Duration,
    pub echo: bool,
    /// Host↔guest vsock, with the host's health check run by this
    /// agent-shim binary (`agent-shim check hvsock://...:1024`).
    pub vsock: Option<PathBuf>,
    /// With `vsock`: this script instead of the health check.
    pub host: Option<HostScript>,
}

/// What a boot showed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReport {
    pub init_start_us: Option<u64>,
    pub agent_ready_us: Option<u64>,
    pub mem_used_kib: Option<u64>,
    /// Guest time of the first health check the agent answered.
    pub health_check_us: Option<u64>,
    /// The host's health check: `None` without vsock, else its answer
    /// (`SERVING`) or the last failure.
    pub host_check: Option<std::result::Result<String, String>>,
    pub shutdown_seen: bool,
    pub exited_cleanly: bool,
    pub console: String,
}

impl BootReport {
    pub fn ok(&self) -> bool {
        let host_check_ok = match &self.host_check {
            None => true,
            Some(answer) => answer.as_deref() == Ok("SERVING") && self.health_check_us.is_some(),
        };
        self.agent_ready_us.is_some() && self.shutdown_seen && self.exited_cleanly && host_check_ok
    }

    pub fn summary(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("unknown".to_string(), |v| format!("{}", v / 1000));
        let init_to_agent = match (self.init_start_us, self.agent_ready_us) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let health_check = match &self.host_check {
            None => "off".to_string(),
            Some(_) => ms(self.health_check_us),
        };
        format!(
            "boot: kernel_ms={} init_to_agent_ms={} agent_ready_ms={} health_check_ms={health_check} mem_used_kib={} poweroff={}",
            ms(self.init_start_us),
            ms(init_to_agent),
            ms(self.agent_ready_us),
            self.mem_used_kib
                .map_or("unknown".into(), |v| v.to_string()),
            if self.shutdown_seen && self.exited_cleanly {
                "clean"
            } else {
                "failed"
            }
        )
    }

    /// Takes what it needs from one console line.
    pub fn observe(&mut self, line: &str) {
        let num = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        if line.contains("timeline event=init_start") {
            self.init_start_us = num("boottime_us=");
        } else if line.contains("agent-shim: ready") {
            self.agent_ready_us = num("boottime_us=");
        } else if line.contains("agent-shim: health_check boottime_us=") {
            self.health_check_us = num("boottime_us=");
        } else if line.contains("agent-shim: mem_used_kib=") {
            self.mem_used_kib = num("mem_used_kib=");
        } else if line.contains("timeline event=shutdown_start") {
            self.shutdown_seen = true;
        }
        self.console.push_str(line);
        self.console.push('\n');
    }
}

/// A console line after which the guest never powers off: systemd's
/// emergency status (the red `!!!!!!` it prints only on a fatal error before
/// it freezes, CrashAction=freeze) or its "Freezing execution." Waiting for
/// the timeout after it only costs the run minutes.
fn frozen(line: &str) -> Option<&'static str> {
    if line.contains("systemd[1]: Freezing execution") {
        Some("systemd froze")
    } else if line.contains("!!!!!!") {
        Some("systemd's emergency status")
    } else {
        None
    }
}

/// Boots and waits for QEMU to exit (the guest powers off) or the timeout.
pub fn boot(o: &BootOptions) -> Result<BootReport> {
    ensure_packages(&[("qemu-system-x86_64", "qemu-system-x86")])?;
    let cmdline = format!(
        "console=ttyS0 {} {} init.timeline=console {}",
        kata_cmdline(),
        o.kind.root_cmdline(o.fs),
        o.extra_cmdline
    );
    let machine = match o.machine.as_str() {
        "q35" if o.kind == Kind::Dax => "q35,accel=tcg,nvdimm=on".to_string(),
        "q35" => "q35,accel=tcg".to_string(),
        // The PIT stays on: under TCG there is no kvm-clock, and the kernel
        // calibrates the TSC against the PIT (without it, boot stalls).
        "microvm" => "microvm,accel=tcg,pic=off,rtc=on,isa-serial=on".to_string(),
        other => return Err(format!("unknown machine {other:?} (q35, microvm)")),
    };
    // A guest waiting on virtio-blk makes icount skip ahead unpredictably:
    // the disk kind runs with sleep=on (approximate timings).
    // A host request over vsock needs guest time to follow real time while
    // the guest idles (see the module comment).
    let icount = if o.kind == Kind::Disk || !o.data_disks.is_empty() || o.vsock.is_some() {
        "shift=0,sleep=on"
    } else {
        "shift=0,sleep=off"
    };
    let backend = match o.vsock {
        Some(_) => Some(crate::vsock::Backend::start()?),
        None => None,
    };
    let mut machine = machine;
    let mut cmd = Command::new("qemu-system-x86_64");
    if let Some(backend) = &backend {
        let (memory, property) = crate::vsock::memory_args(o.memory_mib);
        cmd.args(memory).args(backend.device_args(&o.machine));
        machine.push_str(property);
        // Entropy, as Kata's runtime gives every guest (`entropy_source`):
        // without it the guest's CRNG is not ready for seconds under TCG,
        // and whatever calls a blocking getrandom waits that long.
        let rng = if o.machine == "microvm" {
            "virtio-rng-device,rng=rng0"
        } else {
            "virtio-rng-pci,rng=rng0"
        };
        cmd.args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
            .args(["-device", rng]);
    }
    cmd.args(["-machine", &machine, "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args(["-icount", icount])
        .arg("-kernel")
        .arg(&o.kernel);
    // microvm has no PCI bus: its virtio devices sit on MMIO, and QEMU adds
    // them to the kernel command line (virtio_mmio.device=) itself.
    let blk = if o.machine == "microvm" {
        "virtio-blk-device"
    } else {
        "virtio-blk-pci"
    };
    let image_len = std::fs::metadata(&o.image)
        .map_err(|e| format!("{}: {e}", o.image.display()))?
        .len();
    match o.kind {
        Kind::Initrd => {
            cmd.args(["-m", &format!("{}M", o.memory_mib)])
                .arg("-initrd")
                .arg(&o.image);
        }
        Kind::Disk => {
            cmd.args(["-m", &format!("{}M", o.memory_mib)])
                .arg("-drive")
                .arg(format!(
                    "file={},if=none,id=root,format=raw,readonly=on",
                    o.image.display()
                ))
                .args(["-device", &format!("{blk},drive=root")]);
        }
        Kind::Dax => {
            // As Kata's QEMU attaches it: a file-backed NVDIMM, unarmed, read-only.
            cmd.args([
                "-m",
                &format!("{}M,slots=2,maxmem={}M", o.memory_mib, o.memory_mib + 4096),
            ])
            .arg("-object")
            .arg(format!(
                "memory-backend-file,id=root,mem-path={},size={image_len},readonly=on,share=off",
                o.image.display()
            ))
            .args(["-device", "nvdimm,id=nv0,memdev=root,unarmed=on"]);
        }
    }
    for (i, d) in o.data_disks.iter().enumerate() {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,id=data{i},format=raw",
                d.display()
            ))
            .args(["-device", &format!("{blk},drive=data{i}")]);
    }
    cmd.arg("-append")
        .arg(&cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("start qemu: {e}"))?;
    let console = Arc::new(Console::default());
    let (checker, mut script) = match (&backend, &o.vsock, &o.host) {
        (Some(backend), _, Some(host)) => {
            let (host, uds, qmp, console) =
                (host.clone(), backend.uds(), backend.qmp(), console.clone());
            (
                None,
                Some(std::thread::spawn(move || {
                    crate::vsock::wait_driver_ready(&qmp, &|| console.gone())?;
                    (host.run)(&uds, &console)
                })),
            )
        }
        (Some(backend), Some(shim), None) => {
            (Some(crate::vsock::Checker::start(shim, backend)), None)
        }
        _ => (None, None),
    };
    // The script's console is only fed while it runs.
    let feed = script.is_some();
    let end = |console: &Console| console.gone.store(true, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel::<String>();
    for src in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(src)
                .lines()
                .map_while(std::result::Result::ok)
            {
                let _ = tx.send(line.trim_end_matches('\r').to_string());
            }
        });
    }
    drop(tx);
    let mut report = BootReport::default();
    let deadline = Instant::now() + o.timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if o.echo {
                    println!("{line}");
                }
                report.observe(&line);
                if feed {
                    console.push(&line);
                }
                if let Some(why) = frozen(&line) {
                    end(&console);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "the guest's init froze ({why}): no power-off will come\n{}",
                        report.console
                    ));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // A host script that failed ends the boot: nothing will power the
        // guest off now.
        if let Some(done) = script.take_if(|s| s.is_finished()) {
            let result = done
                .join()
                .unwrap_or_else(|_| Err("the host script panicked".into()));
            let failed = result.is_err();
            report.host_check = Some(result);
            if failed || o.host.as_ref().is_some_and(|h| h.then_stop) {
                end(&console);
                let _ = child.kill();
                let _ = child.wait();
                // What the guest wrote before it was stopped.
                for line in rx.iter() {
                    report.observe(&line);
                }
                return Ok(report);
            }
        }
        if Instant::now() > deadline {
            end(&console);
            let _ = child.kill();
            let _ = child.wait();
            let script = script.map(|s| s.join());
            let backend_log = backend
                .as_ref()
                .map(|b| format!("\nvhost-device-vsock's log:\n{}", b.log()))
                .unwrap_or_default();
            return Err(format!(
                "guest did not power off within {:?} (host script: {script:?}){backend_log}\n{}",
                o.timeout, report.console
            ));
        }
    }
    end(&console);
    let status = child.wait().map_err(|e| format!("wait for qemu: {e}"))?;
    report.exited_cleanly = status.success();
    if let Some(checker) = checker {
        report.host_check = Some(checker.finish());
    }
    if let Some(script) = script {
        report.host_check = Some(
            script
                .join()
                .unwrap_or_else(|_| Err("the host script panicked".into())),
        );
    }
    if let (Some(Err(err)), Some(backend)) = (&mut report.host_check, &backend) {
        err.push_str(&format!("\nvhost-device-vsock's log:\n{}", backend.log()));
    }
    drop(backend);
    Ok(report)
}

pub fn main(args: &crate::cli::BootArgs) -> Result<()> {
    let kind = Kind::parse(&args.kind)?;
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => crate::kernel::build(&args.flavour)?.vmlinux,
    };
    let bin = crate::build()?;
    let fs = Fs::parse(&args.fs)?;
    let image = crate::image::build_on(kind.name(), &bin, None, &[], "minos", None, fs)?;
    let opts = BootOptions {
        kernel,
        kind,
        fs,
        image,
        data_disks: Vec::new(),
        machine: args.machine.clone(),
        extra_cmdline: args.cmdline.clone(),
        memory_mib: 512,
        timeout: Duration::from_secs(300),
        echo: true,
        vsock: (!args.no_vsock).then(|| bin.join("agent-shim")),
        host: None,
    };
    let report = boot(&opts)?;
    println!("{}", report.summary());
    if let Some(Err(err)) = &report.host_check {
        println!("boot: the host's health check failed: {err}");
    }
    if report.ok() {
        Ok(())
    } else {
        Err("the agent did not become ready, did not answer the host's health check, or the guest did not power off cleanly".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kata_cmdline_keeps_the_runtime_keys_and_drops_console_and_root() {
        let c = kata_cmdline();
        assert!(c.contains("systemd.unit=kata-containers.target"));
        assert!(c.contains("quiet") && c.contains("panic=1") && c.contains("reboot=k"));
        assert!(!c.contains("console=") && !c.contains("root=") && !c.contains(" ro "));
    }

    #[test]
    fn report_from_console_lines() {
        let mut r = BootReport::default();
        for l in [
            "minos-init: timeline event=init_start boottime_us=250000",
            "agent-shim: ready boottime_us=262500",
            "agent-shim: health_check boottime_us=263900",
            "agent-shim: mem_used_kib=20480",
            "minos-init: timeline event=shutdown_start boottime_us=2300000",
        ] {
            r.observe(l);
        }
        r.exited_cleanly = true;
        assert!(r.ok());
        assert_eq!(
            r.summary(),
            "boot: kernel_ms=250 init_to_agent_ms=12 agent_ready_ms=262 health_check_ms=off mem_used_kib=20480 poweroff=clean"
        );
        // With vsock, the host's answer counts.
        r.host_check = Some(Ok("SERVING".into()));
        assert!(r.ok());
        assert!(r.summary().contains(" health_check_ms=263 "));
        r.host_check = Some(Err("connection refused".into()));
        assert!(!r.ok());
        r.host_check = Some(Ok("SERVING".into()));
        r.health_check_us = None;
        assert!(!r.ok(), "an answer the guest did not log");
        assert!(r.summary().contains(" health_check_ms=unknown "));
    }

    /// systemd's fatal-error lines as the minimal kernel's boot printed them
    /// (the bench waited 240 s for each of them before).
    #[test]
    fn a_frozen_systemd_is_seen_at_once() {
        assert_eq!(
            frozen("[\u{1b}[0;1;31m!!!!!!\u{1b}[0m] Failed to allocate manager object."),
            Some("systemd's emergency status")
        );
        assert_eq!(
            frozen("systemd[1]: Freezing execution."),
            Some("systemd froze")
        );
        for fine in [
            "systemd[1]: Failed to find module 'autofs4'",
            "[  OK  ] Reached target kata-containers.target.",
            "minos-init: timeline event=init_start boottime_us=250000",
        ] {
            assert_eq!(frozen(fine), None, "{fine}");
        }
    }
}
