//! The boot timeline: one kmsg line per phase with CLOCK_BOOTTIME, the same
//! lines in /run/minos/timeline, and optional hypervisor markers.
//!
//! Marker line (stable, greppable):
//! `minos-init: timeline event=EVENT [unit=NAME] boottime_us=N`

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::cmdline::BootMarker;

/// Firecracker's boot timer device: MMIO address and the magic byte.
pub const FIRECRACKER_TIMER_ADDR: u64 = 0xc000_0000;
pub const FIRECRACKER_TIMER_MAGIC: u8 = 123;
/// Cloud Hypervisor's debug I/O port; codes 0x60..=0x7f are user space's.
pub const CH_DEBUG_PORT: u64 = 0x80;

/// CLOCK_BOOTTIME in microseconds.
pub fn now_us() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000
}

/// Boot phases with a Cloud Hypervisor debug-port code each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    InitStart,
    MountsDone,
    UnitStarted,
    UnitReady,
    AllStarted,
    ShutdownStart,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::InitStart => "init_start",
            Event::MountsDone => "mounts_done",
            Event::UnitStarted => "unit_started",
            Event::UnitReady => "unit_ready",
            Event::AllStarted => "all_started",
            Event::ShutdownStart => "shutdown_start",
        }
    }

    /// The code written to Cloud Hypervisor's debug port.
    pub fn debug_port_code(self) -> u8 {
        match self {
            Event::InitStart => 0x60,
            Event::MountsDone => 0x61,
            Event::UnitStarted => 0x62,
            Event::UnitReady => 0x63,
            Event::AllStarted => 0x64,
            Event::ShutdownStart => 0x65,
        }
    }
}

/// Formats one timeline line (without the `minos-init: ` prefix).
pub fn format_line(event: Event, unit: Option<&str>, us: u64) -> String {
    let mut s = String::with_capacity(64);
    let _ = write!(s, "timeline event={}", event.name());
    if let Some(u) = unit {
        let _ = write!(s, " unit={u}");
    }
    let _ = write!(s, " boottime_us={us}");
    s
}

#[derive(Debug)]
pub struct Timeline {
    marker: BootMarker,
    /// Lines not yet written to the file (before /run exists).
    pending: Vec<String>,
    file: Option<std::fs::File>,
    /// `init.timeline=console`: the lines also go to /dev/console, where a
    /// benchmark reads them even under `quiet`.
    console: Option<std::fs::File>,
    /// Console lines held back (see [`Timeline::hold_console`]); `None`
    /// when lines go out at once.
    console_held: Option<Vec<String>>,
    /// Where hypervisor markers are written (/dev/mem, /dev/port); tests use files.
    pub mem_path: PathBuf,
    pub port_path: PathBuf,
}

impl Timeline {
    pub fn new(marker: BootMarker) -> Self {
        Self {
            marker,
            pending: Vec::new(),
            file: None,
            console: None,
            console_held: None,
            mem_path: PathBuf::from("/dev/mem"),
            port_path: PathBuf::from("/dev/port"),
        }
    }

    pub fn set_marker(&mut self, marker: BootMarker) {
        self.marker = marker;
    }

    /// Also writes the lines to `path` (the console).
    pub fn copy_to_console(&mut self, path: &std::path::Path) {
        // Non-blocking: a stalled console drops a line, never PID 1's time.
        let open = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path);
        match open {
            Ok(f) => self.console = Some(f),
            Err(e) => log::warn!("init.timeline=console: open {}: {e}", path.display()),
        }
    }

    /// Holds the console copies of the lines back until
    /// [`Timeline::release_console`]: a console line costs the boot path
    /// tens of µs of serial output (the kmsg copy, with the kernel's own
    /// timestamp, is written at once; every line keeps its time).
    pub fn hold_console(&mut self) {
        self.console_held.get_or_insert_with(Vec::new);
    }

    /// Writes the console lines held back, and from now on each at once.
    pub fn release_console(&mut self) {
        let Some(held) = self.console_held.take() else {
            return;
        };
        if let Some(c) = &mut self.console {
            for line in held {
                let _ = writeln!(c, "minos-init: {line}");
            }
        }
    }

    /// Records `event` at `us` (CLOCK_BOOTTIME).
    pub fn mark_at(&mut self, event: Event, unit: Option<&str>, us: u64) {
        let line = format_line(event, unit, us);
        crate::logger::marker(format_args!("{line}"));
        match (&mut self.console, &mut self.console_held) {
            (Some(_), Some(held)) => held.push(line.clone()),
            (Some(c), None) => {
                let _ = writeln!(c, "minos-init: {line}");
            }
            (None, _) => {}
        }
        match &mut self.file {
            Some(f) => {
                let _ = writeln!(f, "{line}");
            }
            None => self.pending.push(line),
        }
        self.hypervisor_marker(event);
    }

    pub fn mark(&mut self, event: Event, unit: Option<&str>) {
        self.mark_at(event, unit, now_us());
    }

    /// Opens `path` (under /run/minos) and writes what was recorded so far.
    pub fn open_file(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for line in self.pending.drain(..) {
            writeln!(f, "{line}")?;
        }
        self.file = Some(f);
        Ok(())
    }

    fn hypervisor_marker(&self, event: Event) {
        let (path, offset, byte) = match self.marker {
            BootMarker::None => return,
            // Firecracker logs boot time at the first write: init's start.
            BootMarker::Firecracker if event == Event::InitStart => (
                &self.mem_path,
                FIRECRACKER_TIMER_ADDR,
                FIRECRACKER_TIMER_MAGIC,
            ),
            BootMarker::Firecracker => return,
            BootMarker::CloudHypervisor => {
                (&self.port_path, CH_DEBUG_PORT, event.debug_port_code())
            }
        };
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| std::os::unix::fs::FileExt::write_at(&f, &[byte], offset));
        if let Err(e) = r {
            log::warn!(
                "boot marker: write {byte:#x} to {} at {offset:#x}: {e}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn line_format_is_stable() {
        assert_eq!(
            format_line(Event::InitStart, None, 1234),
            "timeline event=init_start boottime_us=1234"
        );
        assert_eq!(
            format_line(Event::UnitReady, Some("kata-agent.service"), 9),
            "timeline event=unit_ready unit=kata-agent.service boottime_us=9"
        );
    }

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("minos-timeline-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap();
        p
    }

    #[test]
    fn firecracker_marker_writes_magic_byte_at_timer_address_once() {
        let mem = temp("mem");
        let mut t = Timeline::new(BootMarker::Firecracker);
        t.mem_path = mem.clone();
        t.mark_at(Event::InitStart, None, 1);
        t.mark_at(Event::AllStarted, None, 2);
        let f = std::fs::File::open(&mem).unwrap();
        assert_eq!(f.metadata().unwrap().len(), FIRECRACKER_TIMER_ADDR + 1);
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, FIRECRACKER_TIMER_ADDR).unwrap();
        assert_eq!(b[0], 123);
        std::fs::remove_file(mem).unwrap();
    }

    #[test]
    fn cloud_hypervisor_marker_writes_a_code_per_phase_to_port_0x80() {
        let port = temp("port");
        let mut t = Timeline::new(BootMarker::CloudHypervisor);
        t.port_path = port.clone();
        t.mark_at(Event::InitStart, None, 1);
        let mut b = [0u8; 1];
        std::fs::File::open(&port)
            .unwrap()
            .read_exact_at(&mut b, CH_DEBUG_PORT)
            .unwrap();
        assert_eq!(b[0], 0x60);
        t.mark_at(Event::AllStarted, None, 2);
        std::fs::File::open(&port)
            .unwrap()
            .read_exact_at(&mut b, CH_DEBUG_PORT)
            .unwrap();
        assert_eq!(b[0], 0x64);
        std::fs::remove_file(port).unwrap();
    }

    #[test]
    fn file_gets_early_lines_then_later_ones() {
        let path = std::env::temp_dir().join(format!("minos-timeline-{}-file", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut t = Timeline::new(BootMarker::None);
        t.mark_at(Event::InitStart, None, 5);
        t.open_file(&path).unwrap();
        t.mark_at(Event::MountsDone, None, 7);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "timeline event=init_start boottime_us=5\ntimeline event=mounts_done boottime_us=7\n"
        );
        std::fs::remove_file(path).unwrap();
    }
}
