//! Boot-benchmark figures, measured from inside the guest (`--bench`,
//! `agent.bench`), the same way whatever init started the shim — minos,
//! systemd, busybox, or the kernel itself when the shim is PID 1.
//!
//! Every phase boundary is a kernel log record, so all of them are on one
//! clock (printk time, µs since the kernel's clock started):
//!
//! - init exec: the kernel's own `Run /sbin/init as init process` (or
//!   `Run /init ...` from an initramfs);
//! - agent ready: `agent-shim: ready`, written to /dev/kmsg once the
//!   server listens;
//! - agent exec: the ready record's time less the CLOCK_BOOTTIME that
//!   passed between the shim's first instruction of `main` and the mark
//!   (`mark_boottime_ns`, read right after writing it).
//!
//! Power-on comes from the TSC: the shim reads it with CLOCK_BOOTTIME at
//! exec and at ready, so the host can work out the TSC's rate and how far
//! power-on lies before the kernel's clock started (firmware,
//! decompression). Two lines on stdout:
//!
//! ```text
//! agent-shim: bench ready init_exec_us=N agent_ready_us=N sched_clock_offset_ns=N tsc_exec=N tsc_ready=N boottime_exec_ns=N boottime_ready_ns=N mark_boottime_ns=N pm_timer=N pm_timer_bits=N pm_boottime_ns=N mem_used_kib=N processes=N rss_kib=N pss_kib=N
//! agent-shim: bench late after_ms=1000 mem_used_kib=N processes=N rss_kib=N pss_kib=N
//! agent-shim: bench rss after_ms=10000 COMM=KIB ...
//! ```
//!
//! The last line, 10 s after ready, names each user-space process by its
//! `comm` with its resident set (VmRSS), for the RSS of init and timesync
//! once they have settled.
//!
//! A value that could not be read prints as `unknown` (the reason on
//! stderr); nothing here can stop the shim. `processes` counts user-space
//! processes (kernel threads excluded), `rss_kib` and `pss_kib` sum their
//! resident and proportional set sizes (`pss_kib` needs `smaps_rollup`,
//! CONFIG_PROC_PAGE_MONITOR).
//!
//! Power-on comes from the ACPI PM timer where the machine has one (q35):
//! QEMU derives it from its virtual clock since power-on, at 3.579545 MHz.
//! The shim reads it (port I/O, after ioperm) together with CLOCK_BOOTTIME
//! at ready: `pm_timer=TICKS pm_timer_bits=24|32 pm_boottime_ns=N`, or
//! `pm_timer=unknown` without one (microvm). The TSC, read too, counts the
//! same virtual nanoseconds under TCG with `-icount`. The kernel's own clock
//! does not: during early boot it runs ahead of virtual time, and from the
//! point the kernel marks sched_clock stable it is the raw TSC-based clock
//! plus a fixed offset, which the kernel logs and the shim reports as
//! `sched_clock_offset_ns` (see [`sched_clock_offset_ns`]). The host
//! subtracts it to put the kernel-log marks on virtual time.
//!
//! The parsers are pure and take texts; the readers take the procfs root.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

/// The kernel's TSC and CLOCK_BOOTTIME read back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clocks {
    pub tsc: u64,
    pub boottime_ns: u64,
}

impl Clocks {
    pub fn now() -> Self {
        let tsc = read_tsc();
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
        Self {
            tsc,
            boottime_ns: secs.saturating_mul(1_000_000_000).saturating_add(nanos),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter: it touches no memory
    // and has no precondition. It would fault only with CR4.TSD set, which
    // Linux sets for a process only after prctl(PR_SET_TSC), never called here.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn read_tsc() -> u64 {
    0
}

/// The ACPI PM timer's rate.
pub const PM_TIMER_HZ: u64 = 3_579_545;

/// The PM timer of the machine: its I/O port and width, from the FADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimer {
    pub port: u16,
    pub bits: u32,
}

impl PmTimer {
    /// From the FADT (`/sys/firmware/acpi/tables/FACP`): PM_TMR_BLK, the
    /// port, at byte 76; TMR_VAL_EXT (flags at byte 112, bit 8) for 32 bits.
    pub fn from_fadt(fadt: &[u8]) -> Option<Self> {
        let word = |at: usize| {
            fadt.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if fadt.get(..4) != Some(b"FACP") {
            return None;
        }
        let port = u16::try_from(word(76)?).ok().filter(|p| *p != 0)?;
        let extended = word(112).is_some_and(|flags| flags & (1 << 8) != 0);
        Some(Self {
            port,
            bits: if extended { 32 } else { 24 },
        })
    }

    /// Finds the timer and asks for access to its port (root, CAP_SYS_RAWIO).
    pub fn open(sys: &Path) -> io::Result<Self> {
        let path = sys.join("firmware/acpi/tables/FACP");
        let fadt = std::fs::read(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", path.display())))?;
        let timer = Self::from_fadt(&fadt).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} has no PM timer", path.display()),
            )
        })?;
        allow_port(timer.port).map_err(|e| {
            io::Error::new(e.kind(), format!("ioperm(port {:#x}): {e}", timer.port))
        })?;
        Ok(timer)
    }

    /// The counter now (after [`PmTimer::open`] gave access).
    pub fn read(self) -> u32 {
        read_port(self.port)
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn allow_port(port: u16) -> io::Result<()> {
    // SAFETY: ioperm(2) takes plain integers and changes only this thread's
    // I/O permission bitmap; the result is checked.
    let rc = unsafe { libc::ioperm(libc::c_ulong::from(port), 4, 1) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn read_port(port: u16) -> u32 {
    let value: u32;
    // SAFETY: only called on a PmTimer from `open`, which got ioperm access
    // to this port for this thread, so IN cannot fault; it reads a device
    // register and touches no memory and no flags.
    unsafe {
        core::arch::asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags));
    }
    value
}

#[cfg(not(target_arch = "x86_64"))]
fn allow_port(_: u16) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "no port I/O"))
}

#[cfg(not(target_arch = "x86_64"))]
fn read_port(_: u16) -> u32 {
    0
}

/// A PM timer reading with the CLOCK_BOOTTIME next to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmReading {
    pub ticks: u32,
    pub bits: u32,
    pub boottime_ns: u64,
}

/// The marker the shim writes to the kernel log once it is ready.
pub const READY_MARK: &str = "agent-shim: ready";

/// Writes one record to the kernel log (`/dev/kmsg` under `dev`).
pub fn mark(dev: &Path, message: &str) -> io::Result<()> {
    let path = dev.join("kmsg");
    let mut kmsg = std::fs::OpenOptions::new().write(true).open(&path)?;
    // Level 6 (info): kept in the log, not printed on a `quiet` console.
    kmsg.write_all(format!("<6>{message}\n").as_bytes())
}

/// One record of /dev/kmsg: `PRI,SEQ,TIMESTAMP_US,FLAGS[,...];MESSAGE`,
/// then continuation lines (` KEY=VALUE`) that are not part of it.
pub fn parse_record(record: &str) -> Option<(u64, &str)> {
    let (prefix, rest) = record.split_once(';')?;
    let timestamp = prefix.split(',').nth(2)?.parse().ok()?;
    let message = rest.lines().next().unwrap_or("");
    Some((timestamp, message))
}

/// The phase boundaries found in the kernel log, in µs of printk time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks {
    pub init_exec_us: Option<u64>,
    pub agent_ready_us: Option<u64>,
    /// The kernel's `sched_clock: Marking stable (a, b)->(c, d)`: `d` is the
    /// offset (ns) the kernel's clock runs ahead of the raw TSC-based
    /// sched_clock from then on (see [`sched_clock_offset_ns`]).
    pub sched_clock_offset_ns: Option<i64>,
}

impl Marks {
    /// Takes one record's timestamp and message. The first init exec counts
    /// (the kernel starts init once); the last ready mark counts (that of
    /// the shim now measuring, if an earlier one was restarted).
    pub fn observe(&mut self, timestamp: u64, message: &str) {
        if self.init_exec_us.is_none()
            && message.starts_with("Run ")
            && message.ends_with(" as init process")
        {
            self.init_exec_us = Some(timestamp);
        } else if message == READY_MARK {
            self.agent_ready_us = Some(timestamp);
        } else if let Some(offset) = sched_clock_offset_ns(message) {
            self.sched_clock_offset_ns = Some(offset);
        }
    }
}

/// The offset in the kernel's `sched_clock: Marking stable (%lld, %lld)->(%lld,
/// %lld)` (kernel/sched/clock.c, printed once when the TSC is declared
/// stable): the last number, `__sched_clock_offset` in ns (signed). Before
/// that point the kernel's clock follows its early timekeeping, which under
/// TCG counts more than the guest's virtual time; from it on, printk time
/// is the raw TSC-based sched_clock (zero at the kernel's TSC set-up) plus
/// this offset and advances exactly with the TSC and the PM timer.
/// CLOCK_BOOTTIME advances alike but lags printk time by a fixed amount,
/// which the host measures at the ready mark (`mark_boottime_ns`).
pub fn sched_clock_offset_ns(message: &str) -> Option<i64> {
    let rest = message.strip_prefix("sched_clock: Marking stable (")?;
    let (_, after) = rest.split_once(")->(")?;
    let inner = after.strip_suffix(')')?;
    let (_, offset) = inner.split_once(',')?;
    offset.trim().parse().ok()
}

/// Reads every record of the kernel log from the start of its buffer.
pub fn read_marks(dev: &Path) -> io::Result<Marks> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open(dev.join("kmsg"))?;
    let mut marks = Marks::default();
    // One record per read; a record is at most about 8 KiB (PRINTK_MESSAGE_MAX).
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                if let Some((timestamp, message)) = parse_record(&text) {
                    marks.observe(timestamp, message);
                }
            }
            // Records overwritten while we read: go on from the next one.
            Err(err) if err.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(marks)
}

fn libc_o_nonblock() -> i32 {
    // rustix's OFlags bits are the kernel's.
    i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0o4000)
}

/// `flags` of /proc/PID/stat (field 9): PF_KTHREAD marks a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether the text of /proc/PID/stat is a kernel thread's. The command
/// name (field 2, in parentheses) may hold spaces and parentheses, so the
/// fields are counted after its last `)`.
pub fn is_kernel_thread(stat: &str) -> Option<bool> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state(3) ppid(4) pgrp(5) session(6) tty_nr(7) tpgid(8) flags(9).
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    Some(flags & PF_KTHREAD != 0)
}

/// The number after `key` (`Key:   N kB`) on the first line that starts
/// with it.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The `Pss:` line of /proc/PID/smaps_rollup, in KiB.
pub fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    kib_field(smaps_rollup, "Pss:")
}

/// The resident set of /proc/PID/statm (field 2, in pages), in KiB.
pub fn parse_statm_rss_kib(statm: &str, page_kib: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages.saturating_mul(page_kib))
}

/// User-space processes and their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Processes {
    pub count: u64,
    pub rss_kib: u64,
    /// `None` when a process has no readable `smaps_rollup`.
    pub pss_kib: Option<u64>,
}

/// Walks the numeric entries of `proc`. A process that exits meanwhile is
/// skipped; kernel threads are not counted.
pub fn read_processes(proc: &Path) -> io::Result<Processes> {
    let page_kib = u64::try_from(rustix::param::page_size() / 1024).unwrap_or(4);
    let mut total = Processes {
        pss_kib: Some(0),
        ..Processes::default()
    };
    for (_, dir) in user_processes(proc)? {
        total.count += 1;
        if let Some(rss) = std::fs::read_to_string(dir.join("statm"))
            .ok()
            .and_then(|statm| parse_statm_rss_kib(&statm, page_kib))
        {
            total.rss_kib = total.rss_kib.saturating_add(rss);
        }
        let pss = std::fs::read_to_string(dir.join("smaps_rollup"))
            .ok()
            .and_then(|text| parse_pss_kib(&text));
        total.pss_kib = match (total.pss_kib, pss) {
            (Some(sum), Some(pss)) => Some(sum.saturating_add(pss)),
            _ => None,
        };
    }
    Ok(total)
}

/// The user-space processes under `proc` (PID and /proc/PID), kernel
/// threads left out; a process that exits meanwhile is skipped.
fn user_processes(proc: &Path) -> io::Result<Vec<(u32, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        if is_kernel_thread(&stat) == Some(false) {
            out.push((pid, dir));
        }
    }
    Ok(out)
}

fn opt<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

/// The memory part shared by both lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    pub mem_used_kib: Option<u64>,
    pub processes: Option<Processes>,
}

impl Memory {
    pub fn read(proc: &Path) -> Self {
        let mem_used_kib = crate::memory::read_mem_used_kib(proc)
            .inspect_err(|err| log::warn!("bench: memory: {}", crate::Report(err)))
            .ok();
        let processes = read_processes(proc)
            .inspect_err(|err| log::warn!("bench: cannot list {}: {err}", proc.display()))
            .ok();
        Self {
            mem_used_kib,
            processes,
        }
    }
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.processes;
        write!(
            f,
            "mem_used_kib={} processes={} rss_kib={} pss_kib={}",
            opt(self.mem_used_kib),
            opt(p.map(|p| p.count)),
            opt(p.map(|p| p.rss_kib)),
            opt(p.and_then(|p| p.pss_kib)),
        )
    }
}

/// `agent-shim: bench ready ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadyLine {
    pub marks: Marks,
    pub exec: Clocks,
    pub ready: Clocks,
    /// CLOCK_BOOTTIME right after the ready mark was written.
    pub mark_boottime_ns: Option<u64>,
    pub pm: Option<PmReading>,
    pub memory: Memory,
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent-shim: bench ready init_exec_us={} agent_ready_us={} sched_clock_offset_ns={} tsc_exec={} tsc_ready={} boottime_exec_ns={} boottime_ready_ns={} mark_boottime_ns={} {} {}",
            opt(self.marks.init_exec_us),
            opt(self.marks.agent_ready_us),
            opt(self.marks.sched_clock_offset_ns),
            self.exec.tsc,
            self.ready.tsc,
            self.exec.boottime_ns,
            self.ready.boottime_ns,
            opt(self.mark_boottime_ns),
            match self.pm {
                Some(pm) => format!(
                    "pm_timer={} pm_timer_bits={} pm_boottime_ns={}",
                    pm.ticks, pm.bits, pm.boottime_ns
                ),
                None => "pm_timer=unknown".to_owned(),
            },
            self.memory,
        )
    }
}

/// `agent-shim: bench late ...`, a while after ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateLine {
    pub after_ms: u64,
    pub memory: Memory,
}

impl fmt::Display for LateLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent-shim: bench late after_ms={} {}",
            self.after_ms, self.memory
        )
    }
}

/// How long after ready the late line is measured.
pub const LATE_AFTER_MS: u64 = 1000;
/// How long after ready the per-process RSS line is measured.
pub const RSS_AFTER_MS: u64 = 10_000;

/// `VmRSS:` of /proc/PID/status, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    kib_field(status, "VmRSS:")
}

/// Each user-space process's `comm` (spaces replaced by `_`) and VmRSS, by
/// PID.
pub fn read_process_rss(proc: &Path) -> io::Result<Vec<(u32, String, u64)>> {
    let mut out = Vec::new();
    for (pid, dir) in user_processes(proc)? {
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm: String = comm
            .trim_end()
            .chars()
            .map(|c| {
                if c.is_whitespace() || c == '=' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let rss = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| parse_vm_rss_kib(&s));
        if let Some(rss) = rss {
            out.push((pid, comm, rss));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// `agent-shim: bench rss after_ms=N COMM=KIB ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssLine {
    pub after_ms: u64,
    pub processes: Vec<(u32, String, u64)>,
}

impl fmt::Display for RssLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent-shim: bench rss after_ms={}", self.after_ms)?;
        for (_, comm, rss) in &self.processes {
            write!(f, " {}={rss}", if comm.is_empty() { "?" } else { comm })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_marks_are_found() {
        let mut marks = Marks::default();
        for record in [
            "6,1,0,-;Linux version 6.12.118 (root@host)",
            "6,310,251234,-;Run /sbin/init as init process\n SUBSYSTEM=x",
            "6,311,251300,-;  with arguments:",
            "6,401,259500,-,caller=T1;agent-shim: ready",
            "6,300,250000,-;sched_clock: Marking stable (300001209, 1161727)->(197354330, 103808606)",
            "6,402,300000,-;Run /bin/sh as init process",
        ] {
            let (ts, msg) = parse_record(record).unwrap();
            marks.observe(ts, msg);
        }
        assert_eq!(
            marks,
            Marks {
                init_exec_us: Some(251_234),
                agent_ready_us: Some(259_500),
                sched_clock_offset_ns: Some(103_808_606),
            }
        );
        assert_eq!(
            sched_clock_offset_ns("sched_clock: Marking stable (1, -2)->(3, -4)"),
            Some(-4)
        );
        assert_eq!(
            sched_clock_offset_ns("sched_clock: Marking stable (1, 2)->(3, x)"),
            None
        );
        assert_eq!(sched_clock_offset_ns("sched_clock: Marking stable"), None);
        assert_eq!(parse_record("garbage"), None);
        assert_eq!(parse_record("6,1,notanumber,-;x"), None);
        assert_eq!(parse_record("6,1;x"), None);
        assert_eq!(parse_record("6,1,5,-;"), Some((5, "")));
    }

    #[test]
    fn kernel_threads_are_told_apart() {
        // kthreadd: flags 0x208040 (PF_KTHREAD set).
        let kthread = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0";
        // A process whose name has spaces and a parenthesis.
        let user = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 80 1 2";
        assert_eq!(is_kernel_thread(kthread), Some(true));
        assert_eq!(is_kernel_thread(user), Some(false));
        assert_eq!(is_kernel_thread("42 (x"), None);
        assert_eq!(is_kernel_thread("42 (x) S 1"), None);
    }

    #[test]
    fn pss_and_rss_parse() {
        let rollup =
            "00400000-7ffd [rollup]\nRss:                 900 kB\nPss:                 612 kB\n";
        assert_eq!(parse_pss_kib(rollup), Some(612));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), None);
        assert_eq!(parse_statm_rss_kib("300 25 10 1 0 20 0\n", 4), Some(100));
        assert_eq!(parse_statm_rss_kib("300", 4), None);
    }

    #[test]
    fn this_process_is_counted_and_kmsg_may_be_absent() {
        let p = read_processes(Path::new("/proc")).unwrap();
        assert!(p.count >= 1, "{p:?}");
        assert!(p.rss_kib > 0, "{p:?}");
        // A missing /dev/kmsg is an error for the caller to report.
        assert!(read_marks(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn lines_print_unknown_for_what_was_not_read() {
        let line = ReadyLine {
            marks: Marks {
                init_exec_us: None,
                agent_ready_us: Some(260_000),
                sched_clock_offset_ns: None,
            },
            exec: Clocks {
                tsc: 1,
                boottime_ns: 2,
            },
            ready: Clocks {
                tsc: 3,
                boottime_ns: 4,
            },
            mark_boottime_ns: Some(5),
            pm: None,
            memory: Memory {
                mem_used_kib: Some(8000),
                processes: Some(Processes {
                    count: 3,
                    rss_kib: 900,
                    pss_kib: None,
                }),
            },
        };
        assert_eq!(
            line.to_string(),
            "agent-shim: bench ready init_exec_us=unknown agent_ready_us=260000 sched_clock_offset_ns=unknown tsc_exec=1 tsc_ready=3 boottime_exec_ns=2 \
             boottime_ready_ns=4 mark_boottime_ns=5 pm_timer=unknown mem_used_kib=8000 processes=3 rss_kib=900 pss_kib=unknown"
        );
        let late = LateLine {
            after_ms: 1000,
            memory: Memory::default(),
        };
        assert_eq!(
            late.to_string(),
            "agent-shim: bench late after_ms=1000 mem_used_kib=unknown processes=unknown \
             rss_kib=unknown pss_kib=unknown"
        );
    }

    #[test]
    fn pm_timer_from_the_fadt() {
        let mut fadt = vec![0u8; 116];
        fadt[..4].copy_from_slice(b"FACP");
        assert_eq!(PmTimer::from_fadt(&fadt), None, "no port");
        fadt[76..80].copy_from_slice(&0x608u32.to_le_bytes());
        assert_eq!(
            PmTimer::from_fadt(&fadt),
            Some(PmTimer {
                port: 0x608,
                bits: 24
            })
        );
        fadt[112..116].copy_from_slice(&(1u32 << 8).to_le_bytes());
        assert_eq!(PmTimer::from_fadt(&fadt).map(|t| t.bits), Some(32));
        assert_eq!(PmTimer::from_fadt(&fadt[..80]).map(|t| t.bits), Some(24));
        assert_eq!(PmTimer::from_fadt(&fadt[..70]), None);
        fadt[0] = b'X';
        assert_eq!(PmTimer::from_fadt(&fadt), None, "not a FADT");
        assert!(PmTimer::open(Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn rss_line_names_processes() {
        assert_eq!(
            parse_vm_rss_kib("Name:\tinit\nVmRSS:\t     768 kB\n"),
            Some(768)
        );
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
        let line = RssLine {
            after_ms: 10_000,
            processes: vec![(1, "init".into(), 768), (40, "".into(), 5)],
        };
        assert_eq!(
            line.to_string(),
            "agent-shim: bench rss after_ms=10000 init=768 ?=5"
        );
        let me = read_process_rss(Path::new("/proc")).unwrap();
        let pid = std::process::id();
        assert!(me.iter().any(|(p, _, rss)| *p == pid && *rss > 0), "{me:?}");
    }

    #[test]
    fn clocks_move_forward() {
        let a = Clocks::now();
        let b = Clocks::now();
        assert!(b.boottime_ns >= a.boottime_ns);
        assert!(b.tsc >= a.tsc);
    }
}
