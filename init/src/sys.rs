//! The few system calls rustix has no wrapper for: signalfd, the signal mask,
//! SIOCSIFFLAGS, posix_spawn(3) for init's own helper processes. Every
//! `unsafe` block of init, but the allocator's and the units' process
//! start, lives in this module.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Signals init handles, blocked and read from a signalfd.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` for the process and returns a non-blocking signalfd
    /// that reads them. Blocked signals are queued even for PID 1, which
    /// otherwise drops signals it has no handler for.
    pub fn new(signals: &[i32]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: as above; an invalid signal number only makes sigaddset fail.
            if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Reads one pending signal; `None` when none is pending.
    pub fn read(&self) -> io::Result<Option<i32>> {
        let mut buf = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
        match rustix::io::read(&self.fd, &mut buf) {
            Ok(n) if n == buf.len() => {
                let signo = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
                Ok(Some(i32::try_from(signo).unwrap_or(0)))
            }
            Ok(_) => Ok(None),
            Err(rustix::io::Errno::AGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Unblocks every signal. Runs in children between fork and exec: the mask
/// is inherited across both, and std's spawn does not clear it.
pub fn unblock_all_signals() {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid; an empty set with SIG_SETMASK cannot fail.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// glibc's SIGRTMIN (34): systemd's SIGRTMIN+N signals are counted from it.
pub fn sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

/// Sets IFF_UP on interface `name` (e.g. `lo`).
pub fn interface_up(name: &str) -> io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel
    // fills ifru_flags for SIOCGIFFLAGS.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the flags member of the union is the
    // one the kernel wrote.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: `req` holds the name and the new flags, as SIOCSIFFLAGS expects.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Moves init (and the children it starts from now on) into a new cgroup
/// namespace rooted at its cgroup.
pub fn unshare_cgroup_namespace() -> io::Result<()> {
    // SAFETY: CLONE_NEWCGROUP only changes which cgroup is this process's
    // namespace root; no memory, file table or thread state Rust relies on
    // is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWCGROUP) }
        .map_err(io::Error::from)
}

/// kill(-1, sig): every process init may signal, except itself.
pub fn kill_all(sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes only integers and touches no memory of ours.
    if unsafe { libc::kill(-1, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// When the kernel found no /dev/console for init (an initrd without it),
/// `minos_common::startup::c_main_prelude` (the first thing init's entry
/// runs; std's own start-up does not run) put /dev/null on fds 0-2; once
/// devtmpfs is mounted, point those at the console instead.
pub fn console_on_stdio() {
    use std::os::fd::AsRawFd;
    let is_null = |fd: i32| {
        // SAFETY: fds 0-2 are open (c_main_prelude guarantees it) and are
        // only borrowed for the fstat call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::fs::fstat(fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice
                && rustix::fs::major(st.st_rdev) == 1
                && rustix::fs::minor(st.st_rdev) == 3
        })
    };
    if !(0..3).all(is_null) {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        // SAFETY: dup2 onto fds 0-2, which std uses as process-wide stdio;
        // the new description replaces /dev/null and `console` stays open
        // for the call. dup2 clears FD_CLOEXEC on the copy.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
}

/// Sets init's scheduling policy: `SCHED_BATCH` with `SCHED_RESET_ON_FORK`
/// (`batch`: the processes it forks are `SCHED_OTHER`) or back to
/// `SCHED_OTHER`, static priority 0 either way. A batch task keeps its
/// share of the CPU but never preempts the running task when it wakes up
/// (the scheduler tick does): rustix has no sched_setscheduler.
pub fn set_batch(batch: bool) -> io::Result<()> {
    // Reset on fork: a child starts as SCHED_OTHER whatever init is.
    let policy = if batch {
        libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param it is given, which
    // outlives the call; pid 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A child started by [`spawn_simple`]. Not waited for on drop: init reaps
/// every child anyway.
#[derive(Debug)]
pub struct Spawned {
    pid: rustix::process::Pid,
}

/// How a [`Spawned`] child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled(i32),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(code) => write!(f, "exit status {code}"),
            Ended::Signalled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

impl Ended {
    pub fn success(self) -> bool {
        self == Ended::Exited(0)
    }
}

impl Spawned {
    /// How it ended, if it has (`waitpid` with `WNOHANG`).
    pub fn try_wait(&self) -> io::Result<Option<Ended>> {
        use rustix::process::{waitpid, WaitOptions};
        Ok(
            waitpid(Some(self.pid), WaitOptions::NOHANG)?.map(|(_, status)| {
                match (status.exit_status(), status.terminating_signal()) {
                    (Some(code), _) => Ended::Exited(code),
                    (None, Some(sig)) => Ended::Signalled(sig),
                    (None, None) => Ended::Exited(-1),
                }
            }),
        )
    }

    /// SIGKILL, then wait for it.
    pub fn kill_and_wait(&self) {
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::KILL);
        let _ = rustix::process::waitpid(Some(self.pid), rustix::process::WaitOptions::empty());
    }
}

/// Starts `program` with `argv` (argv[0] included) and the environment
/// plus `env` (which wins), stdin `/dev/null`, every signal unblocked and
/// SIGPIPE at its default — what a child of init needs, by posix_spawn(3),
/// without std's `Command` (about 45 KB of init's size budget, measured). Other
/// descriptors are not inherited: init opens all of its with `O_CLOEXEC`.
pub fn spawn_simple(program: &str, argv: &[&str], env: &[(&str, &str)]) -> io::Result<Spawned> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument");
    let program = CString::new(program).map_err(nul)?;
    let argv: Vec<CString> = argv
        .iter()
        .map(|a| CString::new(*a))
        .collect::<Result<_, _>>()
        .map_err(nul)?;
    let mut envp: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(e, _)| k.as_bytes() == e.as_bytes()))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    for (k, v) in env {
        envp.push(CString::new(format!("{k}={v}")).map_err(nul)?);
    }
    let mut argv_ptrs: Vec<*mut libc::c_char> =
        argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_ptrs.push(std::ptr::null_mut());
    let mut envp_ptrs: Vec<*mut libc::c_char> =
        envp.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp_ptrs.push(std::ptr::null_mut());
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    };
    // SAFETY: zeroed posix_spawn structures are initialised by their
    // init calls before any other use, and destroyed below on every path.
    let mut actions: libc::posix_spawn_file_actions_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: libc::posix_spawnattr_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid, exclusively borrowed structures.
    check(unsafe { libc::posix_spawn_file_actions_init(&mut actions) })?;
    // SAFETY: as above.
    if let Err(e) = check(unsafe { libc::posix_spawnattr_init(&mut attr) }) {
        // SAFETY: initialised just above.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut actions) };
        return Err(e);
    }
    let mut pid: libc::pid_t = 0;
    let result = (|| {
        // SAFETY: `actions` is initialised; the path is a NUL-terminated
        // literal that outlives the call.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            )
        })?;
        // SAFETY: sigset_t is plain data, initialised by sigemptyset.
        let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut empty) };
        // SAFETY: as above.
        let mut default: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; SIGPIPE is a valid signal.
        unsafe {
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
        }
        // SAFETY: `attr` is initialised; the sets are initialised.
        check(unsafe { libc::posix_spawnattr_setsigmask(&mut attr, &empty) })?;
        // SAFETY: as above.
        check(unsafe { libc::posix_spawnattr_setsigdefault(&mut attr, &default) })?;
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        // SAFETY: as above.
        check(unsafe { libc::posix_spawnattr_setflags(&mut attr, flags) })?;
        // SAFETY: every pointer is valid for the call: the C strings and
        // the NULL-terminated arrays of pointers into them live until it
        // returns, posix_spawn does not keep them.
        check(unsafe {
            libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attr,
                argv_ptrs.as_ptr(),
                envp_ptrs.as_ptr(),
            )
        })
    })();
    // SAFETY: both were initialised above and are not used again.
    unsafe {
        libc::posix_spawn_file_actions_destroy(&mut actions);
        libc::posix_spawnattr_destroy(&mut attr);
    }
    result?;
    rustix::process::Pid::from_raw(pid)
        .map(|pid| Spawned { pid })
        .ok_or_else(|| io::Error::other("posix_spawn returned no pid"))
}

/// kill(pid, sig) for a pid given as a number (PID 1 from a client).
pub fn kill_pid(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes only integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Read-only, executable mappings of init's own binary in /proc/self/maps
/// text: (start, length).
pub fn own_text_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let range = f.next()?;
            let perms = f.next()?;
            let path = f.nth(3)?;
            if perms != "r-xp" || path != exe {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b > a).then_some((a, b - a))
        })
        .collect()
}

const HUGE_PAGE: usize = 2 * 1024 * 1024;
const PAGES_PER_HUGE_PAGE: usize = HUGE_PAGE / 4096;

/// Whether 512 /proc/self/pagemap entries (one 2 MiB-aligned range) are
/// one 2 MiB page: every page present, at consecutive frames from a
/// 2 MiB-aligned one. (smaps cannot tell: DAX mappings count in neither
/// its Rss nor its FilePmdMapped.) Without CAP_SYS_ADMIN the frames read
/// as 0, and the answer is no.
pub fn is_huge_page(entries: &[u64]) -> bool {
    const PRESENT: u64 = 1 << 63;
    const PFN: u64 = (1 << 55) - 1;
    let Some(first) = entries.first().map(|e| e & PFN) else {
        return false;
    };
    entries.len() == PAGES_PER_HUGE_PAGE
        && first != 0
        && first % PAGES_PER_HUGE_PAGE as u64 == 0
        && entries
            .iter()
            .zip(first..)
            .all(|(e, pfn)| e & PRESENT != 0 && e & PFN == pfn)
}

/// KiB of `[start, start + len)` mapped with 2 MiB pages, from pagemap.
fn huge_mapped_kib(pagemap: &std::fs::File, start: usize, len: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut kib = 0;
    let mut at = start.next_multiple_of(HUGE_PAGE);
    while at + HUGE_PAGE <= start + len {
        let mut buf = vec![0u8; PAGES_PER_HUGE_PAGE * 8];
        if pagemap
            .read_exact_at(&mut buf, (at / 4096 * 8) as u64)
            .is_ok()
        {
            let entries: Vec<u64> = buf
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            if is_huge_page(&entries) {
                kib += (HUGE_PAGE / 1024) as u64;
            }
        }
        at += HUGE_PAGE;
    }
    kib
}

/// Once boot has settled, trims init's resident code to its working set:
/// MADV_RANDOM turns off the kernel's 64 KiB fault-around for the mapping,
/// MADV_NOHUGEPAGE keeps later faults to 4 KiB pages, and MADV_DONTNEED
/// drops the pages mapped so far (they are clean file pages; the ones the
/// supervision loop uses fault back in). Done after boot, not before, so
/// that boot-time faults still get read-ahead — and, on a DAX root whose
/// image builder put init's file on a 2 MiB boundary (`cargo xtask image`
/// does), one 2 MiB page for all of init's code instead of a fault per
/// 4 KiB page. Returns the KiB of code that boot had on 2 MiB pages.
pub fn trim_text_mapping() -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
        return 0;
    };
    let pagemap = std::fs::File::open("/proc/self/pagemap").ok();
    let mut huge_kib = 0;
    for (start, len) in own_text_mappings(&maps, &exe.to_string_lossy()) {
        if let Some(p) = &pagemap {
            huge_kib += huge_mapped_kib(p, start, len);
        }
        let addr = start as *mut std::ffi::c_void;
        // SAFETY: the range is a private, read-only file mapping of our own
        // executable (from /proc/self/maps). MADV_RANDOM and
        // MADV_NOHUGEPAGE only change how later faults map it;
        // MADV_DONTNEED on clean, never-written private file pages only
        // unmaps them, and the next access maps the same file contents
        // again, so no memory the program relies on changes.
        let r = unsafe {
            rustix::mm::madvise(addr, len, rustix::mm::Advice::Random)
                .and_then(|()| {
                    // Without CONFIG_TRANSPARENT_HUGEPAGE there are no 2 MiB
                    // pages to keep away: EINVAL is fine.
                    match rustix::mm::madvise(addr, len, rustix::mm::Advice::LinuxNoHugepage) {
                        Err(rustix::io::Errno::INVAL) => Ok(()),
                        r => r,
                    }
                })
                .and_then(|()| rustix::mm::madvise(addr, len, rustix::mm::Advice::LinuxDontNeed))
        };
        if let Err(e) = r {
            log::debug!("madvise own text {start:#x}+{len:#x}: {e}");
        }
    }
    huge_kib
}

/// Reads a small text file (/proc/cmdline, /etc/hostname) with one read(2)
/// when it fits in 2 KiB (x86's longest command line) — std's
/// `read_to_string` adds a statx and a second read to find the end: system
/// calls the boot path counts.
pub fn read_small(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = [0u8; 2048];
    let n = f.read(&mut buf)?;
    let mut bytes = buf.get(..n).unwrap_or_default().to_vec();
    if n == buf.len() {
        // Bounded: a huge file (say /etc/hostname) must not fill PID 1.
        f.take(MAX_READ).read_to_end(&mut bytes)?;
    }
    // A byte that is not UTF-8 (the kernel passes the command line as it
    // was given) spoils that word, never the whole file.
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Clears O_NONBLOCK on a descriptor init opened without blocking.
pub fn set_blocking(f: &std::fs::File) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(f)?;
    rustix::fs::fcntl_setfl(f, flags - rustix::fs::OFlags::NONBLOCK)?;
    Ok(())
}

/// The most [`read_regular_file`] reads: 1 MiB, as for a unit file.
pub const MAX_READ: u64 = 1 << 20;

/// Reads a file that must be a regular file of at most [`MAX_READ`] bytes,
/// without ever blocking PID 1 (a FIFO put in its place is refused instead
/// of waited on) or letting a huge file take its memory.
pub fn read_regular_file(path: &std::path::Path) -> io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let bytes = read_sized(f, meta.len())?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The contents of a regular file opened as `f`, whose fstat said `len`
/// bytes: one read(2) of `len + 1` (a regular file's read returns less
/// than asked only at its end, so a short read is the whole file; one
/// that grew since the fstat reads on). More than [`MAX_READ`] bytes is an
/// error, `InvalidData`, "larger than 1 MiB".
pub fn read_sized(mut f: std::fs::File, len: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || io::Error::new(io::ErrorKind::InvalidData, "larger than 1 MiB");
    if len > MAX_READ {
        return Err(too_big());
    }
    let room = len as usize + 1;
    let mut bytes = vec![0u8; room];
    let n = loop {
        match f.read(&mut bytes) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    bytes.truncate(n);
    if n == room {
        (&mut f)
            .take(MAX_READ + 1 - n as u64)
            .read_to_end(&mut bytes)?;
    }
    if bytes.len() as u64 > MAX_READ {
        return Err(too_big());
    }
    Ok(bytes)
}

/// The uid of the peer of a unix stream socket (SO_PEERCRED).
pub fn peer_uid(sock: &impl std::os::fd::AsRawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; all-zero is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes passed; the
    // kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_reads_short_and_long_files_whole() {
        let dir = std::env::temp_dir().join(format!("minos-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0usize, 10, 2047, 2048, 2049, 4096, 10000] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let p = dir.join(format!("f{len}"));
            std::fs::write(&p, &text).unwrap();
            assert_eq!(read_small(p.to_str().unwrap()).unwrap(), text, "{len}");
        }
        // Bytes that are not UTF-8 spoil their word, not the file.
        std::fs::write(dir.join("bad"), b"quiet x\xff\xfe init.log=debug").unwrap();
        assert_eq!(
            read_small(dir.join("bad").to_str().unwrap()).unwrap(),
            "quiet x\u{fffd}\u{fffd} init.log=debug"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finds_only_own_executable_text() {
        let maps = "\
00400000-00401000 r--p 00000000 fd:01 10 /sbin/init
00401000-00520000 r-xp 00001000 fd:01 10 /sbin/init
00520000-00530000 rw-p 00120000 fd:01 10 /sbin/init
7f0000000000-7f0000001000 r-xp 00000000 fd:01 11 /lib/other.so
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
garbage
";
        assert_eq!(
            own_text_mappings(maps, "/sbin/init"),
            vec![(0x401000, 0x11f000)]
        );
    }

    #[test]
    fn a_huge_page_is_512_present_consecutive_frames_from_an_aligned_one() {
        let present = 1u64 << 63;
        let run = |first: u64| -> Vec<u64> { (first..first + 512).map(|p| present | p).collect() };
        assert!(is_huge_page(&run(0x10_0000)));
        // Not 2 MiB-aligned physically: 4 KiB pages that happen to follow.
        assert!(!is_huge_page(&run(0x10_0001)));
        let mut gap = run(0x10_0000);
        gap[300] = 0;
        assert!(!is_huge_page(&gap));
        let mut moved = run(0x10_0000);
        moved[7] = present | 0x20_0000;
        assert!(!is_huge_page(&moved));
        // Frames hidden (no CAP_SYS_ADMIN): no answer but no.
        assert!(!is_huge_page(&vec![present; 512]));
        assert!(!is_huge_page(&run(0x10_0000)[..511]));
    }
}
