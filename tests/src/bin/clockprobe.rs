//! clockprobe: the in-guest side of timesync's VM test. It runs inside a
//! QEMU guest only: every command that sets a clock first checks that the
//! kernel command line carries `minos.test_clock=1`, which no host has, so it
//! can never touch the clock of the machine the tests run on.
//!
//! Commands (each prints `clockprobe: ...` lines on stdout):
//!
//! - `phc-create`: creates a netdevsim device (the test kernel's mock PTP
//!   clock, which runs on CLOCK_MONOTONIC_RAW) and waits for `/dev/ptp0`.
//! - `phc-set DEV OFFSET_S PPM`: sets the PHC to CLOCK_REALTIME + OFFSET_S
//!   and its frequency to PPM, so the guest clock starts off by OFFSET_S and
//!   drifts by -PPM against the reference.
//! - `scenario DEV JUMP_S...`: waits until the guest clock is within 1 ms of
//!   the PHC (measured here, independently of timesync), then for each jump
//!   steps CLOCK_REALTIME by JUMP_S and measures, in guest CLOCK_BOOTTIME,
//!   how long until the offset is back under 1 ms (three readings in a row):
//!   `clockprobe: jump=+2.000 recovered_ms=N residual_us=N`, or
//!   `clockprobe: jump=+2.000 not_recovered: ...` after 60 s.
//! - `whois COMM`: the identity of the process named COMM, from
//!   /proc/PID/status: `clockprobe: COMM pid=N uid=N CapEff=.. CapPrm=..
//!   CapBnd=.. CapAmb=.. NoNewPrivs=N`.
//! - `usage COMM SECONDS`: what the process named COMM costs over SECONDS of
//!   guest time: wakeups (context switches: it blocks once per wakeup), CPU
//!   time, RSS: `clockprobe: usage COMM seconds=N wakeups=N per_s=X
//!   cpu_ms=N rss_kib=N`.
//!
//! The offset is PHC − REALTIME, the PHC read between two REALTIME reads.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const GUARD: &str = "minos.test_clock=1";
/// Offset bound of the test, seconds.
const BOUND: f64 = 1e-3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("phc-create") => phc_create(),
        Some("phc-set") => guard().and_then(|()| phc_set(&args[1..])),
        Some("scenario") => guard().and_then(|()| scenario(&args[1..])),
        Some("kill-during-correction") => guard().and_then(|()| kill_during_correction(&args[1..])),
        Some("whois") => whois(args.get(1).map_or("", String::as_str)),
        Some("usage") => usage(&args[1..]),
        _ => Err(
            "usage: clockprobe phc-create | phc-set DEV OFFSET_S PPM | scenario DEV JUMP_S... | \
             kill-during-correction DEV COMM JUMP_S DELAY_MS... | whois COMM | usage COMM SECONDS"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            println!("clockprobe: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to set clocks anywhere but in a test guest.
fn guard() -> Result<(), String> {
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    if cmdline.split_whitespace().any(|w| w == GUARD) {
        Ok(())
    } else {
        Err(format!(
            "refusing to set clocks: {GUARD} is not on the kernel command line"
        ))
    }
}

fn phc_create() -> Result<(), String> {
    std::fs::write("/sys/bus/netdevsim/new_device", "1 1")
        .map_err(|e| format!("/sys/bus/netdevsim/new_device: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !Path::new("/dev/ptp0").exists() {
        if Instant::now() > deadline {
            return Err("/dev/ptp0 did not appear within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let name = std::fs::read_to_string("/sys/class/ptp/ptp0/clock_name").unwrap_or_default();
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata("/dev/ptp0").map_err(|e| format!("/dev/ptp0: {e}"))?;
    println!(
        "clockprobe: phc /dev/ptp0 name={} mode={:04o} uid={} gid={}",
        name.trim(),
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    Ok(())
}

fn open(dev: &str) -> Result<OwnedFd, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(OwnedFd::from)
        .map_err(|e| format!("{dev}: {e}"))
}

/// The kernel's FD_TO_CLOCKID.
fn clock_id(fd: &OwnedFd) -> libc::clockid_t {
    ((!fd.as_raw_fd()) << 3) | 3
}

fn gettime(clock: libc::clockid_t) -> Result<f64, String> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Err(format!(
            "clock_gettime({clock}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
}

fn settime(clock: libc::clockid_t, seconds: f64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: seconds.floor() as libc::time_t,
        tv_nsec: ((seconds - seconds.floor()) * 1e9) as libc::c_long,
    };
    // SAFETY: `ts` is a valid timespec; the guard has established that this
    // is a test guest, whose clocks are ours to set.
    if unsafe { libc::clock_settime(clock, &ts) } != 0 {
        return Err(format!(
            "clock_settime({clock}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// PHC − REALTIME, seconds.
fn offset(phc: libc::clockid_t) -> Result<f64, String> {
    let before = gettime(libc::CLOCK_REALTIME)?;
    let reference = gettime(phc)?;
    let after = gettime(libc::CLOCK_REALTIME)?;
    Ok(reference - (before + after) / 2.0)
}

fn boottime() -> Result<f64, String> {
    gettime(libc::CLOCK_BOOTTIME)
}

fn number(args: &[String], i: usize, what: &str) -> Result<f64, String> {
    args.get(i)
        .ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|e| format!("{what}: {e}"))
}

fn phc_set(args: &[String]) -> Result<(), String> {
    let dev = args.first().ok_or("missing DEV")?;
    let offset_s = number(args, 1, "OFFSET_S")?;
    let ppm = number(args, 2, "PPM")?;
    let fd = open(dev)?;
    let phc = clock_id(&fd);
    settime(phc, gettime(libc::CLOCK_REALTIME)? + offset_s)?;
    // SAFETY: an all-zero timex is a valid value (modes 0 = no change).
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    tx.modes = libc::ADJ_FREQUENCY;
    tx.freq = (ppm * 65536.0) as libc::c_long;
    // SAFETY: `tx` is a valid timex; `phc` is the PHC's clock id (the fd is
    // open), never a system clock.
    if unsafe { libc::clock_adjtime(phc, &mut tx) } < 0 {
        return Err(format!(
            "clock_adjtime({dev}, ADJ_FREQUENCY): {}",
            std::io::Error::last_os_error()
        ));
    }
    println!("clockprobe: phc {dev} set offset={offset_s:+.3} ppm={ppm:+.1}");
    Ok(())
}

/// Waits until |offset| < BOUND three readings in a row, reading every
/// 10 ms of guest time; returns (elapsed guest seconds, last offset).
fn settle(phc: libc::clockid_t, limit: f64) -> Result<(f64, f64), String> {
    let start = boottime()?;
    let mut good = 0;
    loop {
        let off = offset(phc)?;
        let elapsed = boottime()? - start;
        good = if off.abs() < BOUND { good + 1 } else { 0 };
        if good == 3 {
            return Ok((elapsed, off));
        }
        if elapsed > limit {
            return Err(format!(
                "offset still {off:+.6} s after {elapsed:.3} s of guest time"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scenario(args: &[String]) -> Result<(), String> {
    let dev = args.first().ok_or("missing DEV")?;
    let fd = open(dev)?;
    let phc = clock_id(&fd);
    let (synced, off) = settle(phc, 60.0)?;
    println!(
        "clockprobe: synchronised after_ms={:.0} residual_us={:.1}",
        synced * 1e3,
        off * 1e6
    );
    for i in 1..args.len() {
        let jump = number(args, i, "JUMP_S")?;
        settime(libc::CLOCK_REALTIME, gettime(libc::CLOCK_REALTIME)? + jump)?;
        // A daemon that does not recover is reported, not fatal: the next
        // jump and the other measurements still run.
        match settle(phc, 60.0) {
            Ok((recovered, off)) => println!(
                "clockprobe: jump={jump:+.3} recovered_ms={:.0} residual_us={:.1}",
                recovered * 1e3,
                off * 1e6
            ),
            Err(err) => println!("clockprobe: jump={jump:+.3} not_recovered: {err}"),
        }
    }
    Ok(())
}

/// For each DELAY_MS: jumps CLOCK_REALTIME by JUMP_S, SIGKILLs the process
/// named COMM DELAY_MS later (while it measures, steps or re-measures the
/// clock), and measures how long the guest takes to be back within 1 ms of
/// the PHC: the supervisor must restart the daemon, and the new one must
/// correct what the killed one left. Needs the clock settled first.
fn kill_during_correction(args: &[String]) -> Result<(), String> {
    let dev = args.first().ok_or("missing DEV")?;
    let comm = args.get(1).ok_or("missing COMM")?;
    let jump = number(args, 2, "JUMP_S")?;
    let fd = open(dev)?;
    let phc = clock_id(&fd);
    settle(phc, 60.0)?;
    for i in 3..args.len() {
        let delay = number(args, i, "DELAY_MS")?;
        let victim = find(comm)?;
        let pid: i32 = victim
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .ok_or("bad /proc entry")?;
        let start = boottime()?;
        settime(libc::CLOCK_REALTIME, gettime(libc::CLOCK_REALTIME)? + jump)?;
        std::thread::sleep(Duration::from_secs_f64(delay / 1e3));
        // SAFETY: kill(2) with integers only.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            return Err(format!(
                "kill {comm} ({pid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        let killed = boottime()? - start;
        // Where the kill landed: before the correction (about JUMP_S off)
        // or after it (back near 0).
        let at_kill = offset(phc)?;
        // Until both: the clock back within BOUND three readings in a row,
        // and a new process of that name (the supervisor's restart).
        let (mut recovered, mut restarted, mut good) = (None, None, 0);
        let mut last = at_kill;
        while (recovered.is_none() || restarted.is_none()) && boottime()? - start < 60.0 {
            let now = boottime()? - start;
            if restarted.is_none() && find(comm).is_ok_and(|p| p != victim) {
                restarted = Some(now);
            }
            if recovered.is_none() {
                last = offset(phc)?;
                good = if last.abs() < BOUND { good + 1 } else { 0 };
                if good == 3 {
                    recovered = Some(now);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let ms = |t: Option<f64>| t.map_or("never".to_owned(), |t| format!("{:.0}", t * 1e3));
        println!(
            "clockprobe: kill-during-correction jump={jump:+.3} killed_after_ms={:.0} \
             offset_at_kill_ms={:+.1} recovered_ms={} residual_us={:.1} restarted_ms={}",
            killed * 1e3,
            at_kill * 1e3,
            ms(recovered),
            last * 1e6,
            ms(restarted),
        );
        // Rounds at least 3 s apart: at most 4 restarts in any 10 s, under
        // the unit's start limit (systemd's 5 in 10 s), which is not tested here.
        let spent = boottime()? - start;
        std::thread::sleep(Duration::from_secs_f64((3.0 - spent).max(0.0)));
    }
    Ok(())
}

/// The /proc directory of the process named `comm`.
fn find(comm: &str) -> Result<std::path::PathBuf, String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|path| {
            std::fs::read_to_string(path.join("comm")).is_ok_and(|name| name.trim_end() == comm)
        })
        .ok_or_else(|| format!("no process named {comm}"))
}

/// (context switches, CPU ticks, VmRSS KiB) of the process at `dir`.
fn costs(dir: &Path) -> Result<(u64, u64, u64), String> {
    let status = std::fs::read_to_string(dir.join("status"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let num = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let switches = num("voluntary_ctxt_switches:") + num("nonvoluntary_ctxt_switches:");
    let stat =
        std::fs::read_to_string(dir.join("stat")).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field overall, the 12th after ") ".
    let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Ok((switches, ticks, num("VmRSS:")))
}

fn usage(args: &[String]) -> Result<(), String> {
    let comm = args.first().ok_or("missing COMM")?;
    let seconds = number(args, 1, "SECONDS")?;
    let dir = find(comm)?;
    let (s0, t0, _) = costs(&dir)?;
    let start = boottime()?;
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let elapsed = boottime()? - start;
    let (s1, t1, rss) = costs(&dir)?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    println!(
        "clockprobe: usage {comm} seconds={elapsed:.1} wakeups={} per_s={:.2} cpu_ms={} rss_kib={rss}",
        s1 - s0,
        (s1 - s0) as f64 / elapsed,
        (t1 - t0) * 1000 / hz
    );
    Ok(())
}

fn whois(comm: &str) -> Result<(), String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        println!(
            "clockprobe: {comm} pid={} uid={} gid={} CapEff={} CapPrm={} CapBnd={} CapAmb={} NoNewPrivs={}",
            entry.file_name().to_string_lossy(),
            field("Uid:"),
            field("Gid:"),
            field("CapEff:"),
            field("CapPrm:"),
            field("CapBnd:"),
            field("CapAmb:"),
            field("NoNewPrivs:")
        );
        return Ok(());
    }
    Err(format!("no process named {comm}"))
}
