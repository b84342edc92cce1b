//! `cargo xtask boot-order [--seconds N] [--check]`: writes `init/boot.order`, the
//! functions init runs while it boots, in the order it first runs them, for
//! the linker to put first in `.text` (init/build.rs).
//!
//! Why: the image's root is on DAX (NVDIMM, as Kata attaches it), where
//! every 4 KiB page of a binary's text is its own page fault — no page
//! cache, no fault-around — and a fault costs about 4 µs of guest time under
//! TCG. Laid out as the compiler left it, init's boot path touches pages all
//! over its megabyte of text; in the order it runs, a few dozen.
//!
//! How: init boots as PID 1 of new PID, mount, UTS, network and IPC
//! namespaces, chrooted into the image's own tree (then, a second time,
//! into the bench's osbuilder-style tree with minos as /sbin/init, whose
//! extra functions follow the first boot's), in VM mode (no
//! `container` variable), with Kata's kernel command line bound over
//! /proc/cmdline and a tmpfs /dev whose console and kmsg are plain files.
//! It runs under ptrace with a breakpoint (int3) on the first byte of every
//! function of `.text`, their addresses from the link map the build writes
//! next to the binary (`init.map`; the binary itself is stripped). Each
//! breakpoint is removed when first hit and the function noted. Children
//! forked by init are traced too until they exec (their code between fork
//! and exec is init's); what they exec is not. After `--seconds` (default
//! 3) the namespace is killed. The traced boot cannot change this machine:
//! CAP_SYS_TIME is out of the bounding, ambient and inheritable sets (no
//! clock setting), /proc/sys and /sys are read-only (no global sysctl such
//! as fs.nr_open), securityfs is an empty read-only tmpfs, and cgroup2 is
//! mounted in a cgroup namespace of its own (in the initial one its mount
//! options would apply to the whole machine).
//!
//! The order file holds linker-script input section patterns (see
//! [`section_pattern`]): a Rust function's own section (`.text.<mangled
//! name>`, its hashes as wildcards, since they change with the checkout's
//! path), a C object's `.text` by archive and member. `--check` traces and
//! compares with the committed file instead of writing it, and fails when
//! less than 90 % of what ran is in it.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::{root, Result};

/// linux/capability.h
const CAP_SYS_TIME: libc::c_ulong = 25;

/// One function of `.text` from the link map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Func {
    /// Address relative to the binary's load base.
    pub addr: u64,
    /// Its input section as a linker-script pattern (see [`section_pattern`]).
    pub pattern: String,
}

/// Parses an LLD link map (`-Map`): every symbol defined in the `.text`
/// output section, with the pattern of the input section that holds it.
pub fn parse_map(text: &str) -> Vec<Func> {
    let mut funcs = Vec::new();
    let mut in_text = false;
    let mut section: Option<String> = None;
    for line in text.lines().skip(1) {
        // VMA LMA Size Align, then Out / In / Symbol by indentation.
        let Some((cols, indent, name)) = split_map_line(line) else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(cols[0], 16) else {
            continue;
        };
        match indent {
            1 => {
                // An output section.
                in_text = name == ".text" || name == ".text.boot";
                section = None;
            }
            9 if in_text => section = section_pattern(name),
            17 if in_text => {
                if let Some(pattern) = &section {
                    funcs.push(Func {
                        addr,
                        pattern: pattern.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    funcs
}

/// An input section of the map (`FILE:(SECTION)`, FILE `ARCHIVE(MEMBER)`
/// for an archive member) as a linker-script input section description
/// that does not depend on where the tree was built: the hashes in Rust
/// symbol names (legacy `17h<16 hex>E`, v0 crate disambiguators `Cs<..>_`)
/// change with the checkout's path, so they become wildcards. A Rust
/// function section is matched by name in any file; a C object's one
/// `.text` by its file (and archive) name.
pub fn section_pattern(input: &str) -> Option<String> {
    let (file, section) = input.rsplit_once(":(")?;
    let section = section.strip_suffix(')')?;
    if let Some(symbol) = section
        .strip_prefix(".text.")
        .filter(|_| !file.ends_with(')'))
    {
        if symbol.is_empty() || symbol.contains(['*', '?', '[', ']', ' ']) {
            return None;
        }
        return Some(format!("*(.text.{})", wildcard_hashes(symbol)));
    }
    // glibc, crt objects: `/path/libc.a(malloc.o)` → `*libc.a:malloc.o`.
    let base = file.rsplit('/').next()?;
    let file_pattern = match base.split_once('(') {
        Some((archive, member)) => format!("*{archive}:{}", member.strip_suffix(')')?),
        None => format!("*{base}"),
    };
    if file_pattern.contains([' ', '(', ')']) || section.contains([' ', '(', ')']) {
        return None;
    }
    Some(format!("{file_pattern}({section})"))
}

fn wildcard_hashes(symbol: &str) -> String {
    let b = symbol.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    // `<tag><base-62 digits>_` at i (v0 crate disambiguator `Cs..._`, or
    // back-reference `B..._`, whose offsets move when a hash's length does):
    // the length of the whole token, if there is one.
    let token = |i: usize, tag: &[u8]| -> Option<usize> {
        let rest = b.get(i..)?.strip_prefix(tag)?;
        let digits = rest
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        (rest.get(digits) == Some(&b'_')).then_some(tag.len() + digits + 1)
    };
    while i < b.len() {
        // Legacy: `17h` + 16 hex digits + `E`, at the end.
        if b.len() - i == 20
            && b[i..].starts_with(b"17h")
            && b[i + 3..i + 19].iter().all(u8::is_ascii_hexdigit)
            && b[i + 19] == b'E'
        {
            out.extend_from_slice(b"17h*E");
            break;
        }
        if let Some(n) = token(i, b"Cs").filter(|&n| n > 3) {
            out.extend_from_slice(b"Cs*_");
            i += n;
            continue;
        }
        // v0 back-references (`B<offset>_`). A `B` inside an identifier
        // can look the same: the wildcard then matches more, never less.
        if b.starts_with(b"_R") {
            if let Some(n) = token(i, b"B") {
                out.extend_from_slice(b"B*_");
                i += n;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| symbol.to_string())
}

/// An output section's address and size in an LLD map.
pub fn map_output_section(map: &str, name: &str) -> Option<(u64, u64)> {
    map.lines().skip(1).find_map(|line| {
        let (cols, indent, n) = split_map_line(line)?;
        (indent == 1 && n == name).then_some(())?;
        Some((
            u64::from_str_radix(cols[0], 16).ok()?,
            u64::from_str_radix(cols[2], 16).ok()?,
        ))
    })
}

/// A section's address and size from an ELF64 little-endian file's section
/// headers (kept by `strip`).
pub fn elf_section(path: &Path, name: &str) -> Result<(u64, u64)> {
    let data = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let bad = || format!("{}: not an ELF64 file with section headers", path.display());
    let u16_at = |o: usize| -> Option<u64> {
        Some(u64::from(u16::from_le_bytes(
            data.get(o..o + 2)?.try_into().ok()?,
        )))
    };
    let u32_at = |o: usize| -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            data.get(o..o + 4)?.try_into().ok()?,
        )))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?))
    };
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return Err(bad());
    }
    let shoff = u64_at(0x28).ok_or_else(bad)? as usize;
    let shentsize = u16_at(0x3a).ok_or_else(bad)? as usize;
    let shnum = u16_at(0x3c).ok_or_else(bad)? as usize;
    let shstrndx = u16_at(0x3e).ok_or_else(bad)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18).ok_or_else(bad)? as usize;
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32_at(h).ok_or_else(bad)? as usize;
        let Some(bytes) = data.get(strtab + name_off..) else {
            continue;
        };
        let end = bytes.iter().position(|&c| c == 0).unwrap_or(0);
        if &bytes[..end] == name.as_bytes() {
            let addr = u64_at(h + 0x10).ok_or_else(bad)?;
            let size = u64_at(h + 0x20).ok_or_else(bad)?;
            return Ok((addr, size));
        }
    }
    Err(format!("{}: no section {name}", path.display()))
}

/// A map line's four number columns, the indentation after them (1: an
/// output section, 9: an input section, 17: a symbol) and the name.
fn split_map_line(line: &str) -> Option<([&str; 4], usize, &str)> {
    let mut cols = [""; 4];
    let mut rest = line;
    for c in &mut cols {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace)?;
        *c = &t[..end];
        rest = &t[end..];
    }
    let name = rest.trim_start();
    let indent = rest.len() - name.len();
    let name = name.trim_end();
    (!name.is_empty()).then_some((cols, indent, name))
}

pub fn main(seconds: u64, check: bool) -> Result<()> {
    let bin = crate::build()?;
    let map_path = bin.join("init.map");
    let map = std::fs::read_to_string(&map_path)
        .map_err(|e| format!("read {}: {e} (init/build.rs writes it)", map_path.display()))?;
    // The map is rewritten by every link of the `init` target, `cargo test`'s
    // too: it must describe this binary, or breakpoints land mid-instruction.
    let binary = bin.join("init");
    let in_map = map_output_section(&map, ".text");
    let in_elf = elf_section(&binary, ".text")?;
    if in_map != Some(in_elf) {
        return Err(format!(
            "{} does not describe {} (.text at {in_map:x?} in the map, {in_elf:x?} in the binary); \
             rebuild with `cargo xtask build`",
            map_path.display(),
            binary.display()
        ));
    }
    let funcs = parse_map(&map);
    if funcs.len() < 100 {
        return Err(format!(
            "{}: only {} functions in .text; is it an LLD map?",
            map_path.display(),
            funcs.len()
        ));
    }
    // minos's own image first, then an osbuilder rootfs with minos dropped
    // in as /sbin/init (the bench's tree): what only the second runs
    // (systemd's unit directories, /etc/fstab, the generator directories)
    // comes after the first's boot path, its own pages rather than
    // scattered ones.
    let own = std::env::temp_dir().join(format!("minos-boot-order-{}", std::process::id()));
    let entries = crate::image::rootfs(&bin, None, false, false, &[])?;
    crate::image::stage(&entries, &own, None)?;
    let osbuilder = own.with_extension("osbuilder");
    let time = Duration::from_secs(seconds);
    let result = (|| -> Result<Vec<Func>> {
        let mut hits = trace_tree(&own, "etc/minos/units/kata-agent.service", &funcs, time)?;
        crate::bench::systems::systemd_tree(&bin, "dax", &osbuilder)?;
        crate::bench::systems::drop_in_minos(&bin, &osbuilder)?;
        let more = trace_tree(
            &osbuilder,
            "usr/lib/systemd/system/kata-agent.service",
            &funcs,
            time,
        )?;
        let seen: std::collections::HashSet<u64> = hits.iter().map(|f| f.addr).collect();
        hits.extend(more.into_iter().filter(|f| !seen.contains(&f.addr)));
        Ok(hits)
    })();
    let _ = std::fs::remove_dir_all(&own);
    let _ = std::fs::remove_dir_all(&osbuilder);
    let hits = result?;
    println!(
        "xtask: boot-order: {} of {} functions ran in {seconds} s of two boots",
        hits.len(),
        funcs.len()
    );
    let mut text = String::from(
        "# init's boot path: the sections of the functions it runs from exec until its\n\
         # units are started, in the order it first runs them, as linker-script input\n\
         # section patterns: minos's own image, then what an osbuilder rootfs adds.\n\
         # Written by `cargo xtask boot-order`; see init/build.rs.\n",
    );
    let mut written = std::collections::HashSet::new();
    for f in &hits {
        if written.insert(f.pattern.as_str()) {
            text.push_str(&f.pattern);
            text.push('\n');
        }
    }
    let out = root().join("init/boot.order");
    if check {
        let old = std::fs::read_to_string(&out).unwrap_or_default();
        let names = |t: &str| -> std::collections::HashSet<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        let (old, new) = (names(&old), names(&text));
        let common = old.intersection(&new).count();
        println!(
            "xtask: boot-order: {} committed, {} traced, {common} in both",
            old.len(),
            new.len()
        );
        // A stale list costs page faults, not correctness: fail only when
        // most of the boot path has moved on.
        if common * 10 < new.len() * 9 {
            return Err(format!(
                "init/boot.order is stale: only {common} of the {} sections init's boot runs \
                 are in it; run `cargo xtask boot-order` and commit the file",
                new.len()
            ));
        }
        return Ok(());
    }
    std::fs::write(&out, text).map_err(|e| format!("write {}: {e}", out.display()))?;
    println!(
        "xtask: boot-order: wrote {} ({} sections); rebuild to apply",
        out.display(),
        written.len()
    );
    Ok(())
}

/// Boots init in `stage` (see [`trace`]) with the agent's unit, `unit`
/// under `stage`, limited to the file limit this machine lets root have
/// (some sandboxes lack CAP_SYS_RESOURCE); the functions in the order they
/// first ran. Fails when the agent's unit was not started.
fn trace_tree(stage: &Path, unit: &str, funcs: &[Func], time: Duration) -> Result<Vec<Func>> {
    let unit = stage.join(unit);
    let text =
        std::fs::read_to_string(&unit).map_err(|e| format!("read {}: {e}", unit.display()))?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let _ = std::fs::remove_file(&unit);
    std::fs::write(
        &unit,
        text.replace(
            "LimitNOFILE=1073741824",
            &format!("LimitNOFILE={}", lim.rlim_max),
        ),
    )
    .map_err(|e| format!("write {}: {e}", unit.display()))?;
    let (hits, log) = trace(stage, funcs, time)?;
    if !log.contains("unit_started unit=kata-agent.service") {
        let last: Vec<&str> = hits
            .iter()
            .rev()
            .take(12)
            .map(|f| f.pattern.as_str())
            .collect();
        return Err(format!(
            "the traced boot in {} did not start kata-agent.service; the last functions it ran: {}; its log:\n{log}",
            stage.display(),
            last.join(" ")
        ));
    }
    Ok(hits)
}

fn cstring(s: impl AsRef<[u8]>) -> Result<CString> {
    CString::new(s.as_ref().to_vec()).map_err(|_| "a path with a NUL byte".to_string())
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Boots init in `stage` under ptrace; returns the functions in the order
/// they first ran, and init's log (its /dev/kmsg).
fn trace(stage: &Path, funcs: &[Func], time: Duration) -> Result<(Vec<Func>, String)> {
    let cmdline_fixture =
        std::fs::read_to_string(root().join("tests/fixtures/kata/kernel-cmdline-qemu-x86.txt"))
            .map_err(|e| format!("read the Kata command line fixture: {e}"))?;
    let kata = cmdline_fixture
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .ok_or("the Kata command line fixture has no command line")?;
    let cmdline_file = stage.with_extension("cmdline");
    std::fs::write(
        &cmdline_file,
        format!("{kata} agent.server_addr=unix:///run/kata-agent.sock\n"),
    )
    .map_err(|e| format!("write {}: {e}", cmdline_file.display()))?;
    std::fs::create_dir_all(stage.join("dev")).map_err(|e| format!("create dev: {e}"))?;

    // Everything the child needs, prepared before it exists: between
    // clone and exec it makes only system calls.
    let p = |rel: &str| cstring(stage.join(rel).as_os_str().as_encoded_bytes());
    let root_c = cstring(stage.as_os_str().as_encoded_bytes())?;
    let proc_dir = p("proc")?;
    let cmdline_target = p("proc/cmdline")?;
    let proc_sys = p("proc/sys")?;
    let sys_dir = p("sys")?;
    let security_dir = p("sys/kernel/security")?;
    let (sysfs_t, ro_opts) = (cstring("sysfs")?, cstring("mode=0755")?);
    let cmdline_src = cstring(cmdline_file.as_os_str().as_encoded_bytes())?;
    let dev_dir = p("dev")?;
    let files = [p("dev/console")?, p("dev/kmsg")?];
    // Bound over them, so that what init writes outlives its namespace.
    let log_files = [
        stage.with_extension("console"),
        stage.with_extension("kmsg"),
    ];
    for f in &log_files {
        std::fs::write(f, "").map_err(|e| format!("create {}: {e}", f.display()))?;
    }
    let log_c = [
        cstring(log_files[0].as_os_str().as_encoded_bytes())?,
        cstring(log_files[1].as_os_str().as_encoded_bytes())?,
    ];
    let null = p("dev/null")?;
    let init = cstring("/sbin/init")?;
    let argv = [init.as_ptr(), std::ptr::null()];
    let path_env = cstring("PATH=/usr/sbin:/usr/bin:/sbin:/bin")?;
    let envp = [path_env.as_ptr(), std::ptr::null()];
    let (proc_t, tmpfs_t, none) = (cstring("proc")?, cstring("tmpfs")?, cstring("none")?);
    let slash = cstring("/")?;

    let flags = libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        // cgroup2 mount options apply to the whole machine when mounted in
        // the initial cgroup namespace: init mounts it in its own.
        | libc::CLONE_NEWCGROUP;
    // SAFETY: a fork-like clone (no new stack, no CLONE_VM). The child runs
    // only the system calls below on values prepared above, then execs or
    // exits; xtask has no other thread whose locks it could inherit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::c_long::from(flags | libc::SIGCHLD),
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(os_error("clone into new namespaces"));
    }
    if pid == 0 {
        // SAFETY: the child's system calls, each on a NUL-terminated string
        // that lives in this (copied) address space until exec.
        unsafe {
            let ok = libc::mount(
                none.as_ptr(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
                && libc::mount(
                    proc_t.as_ptr(),
                    proc_dir.as_ptr(),
                    proc_t.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) == 0
                // sysfs and securityfs are the host's: read-only sysfs, and
                // an empty read-only tmpfs where securityfs would go (init
                // leaves what is mounted; cgroup2 it mounts itself, in its
                // own cgroup namespace).
                && libc::mount(
                    sysfs_t.as_ptr(),
                    sys_dir.as_ptr(),
                    sysfs_t.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    tmpfs_t.as_ptr(),
                    security_dir.as_ptr(),
                    tmpfs_t.as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    ro_opts.as_ptr().cast(),
                ) == 0
                // Sysctls are the host's: read-only to the traced boot.
                && libc::mount(
                    proc_sys.as_ptr(),
                    proc_sys.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    std::ptr::null(),
                    proc_sys.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    cmdline_src.as_ptr(),
                    cmdline_target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) == 0
                && libc::mount(
                    tmpfs_t.as_ptr(),
                    dev_dir.as_ptr(),
                    tmpfs_t.as_ptr(),
                    libc::MS_NOSUID,
                    std::ptr::null(),
                ) == 0
                && libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) == 0
                && files.iter().zip(&log_c).all(|(f, log)| {
                    let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600);
                    fd >= 0
                        && libc::close(fd) == 0
                        && libc::mount(
                            log.as_ptr(),
                            f.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) == 0
                })
                && drop_sys_time()
                && libc::chroot(root_c.as_ptr()) == 0
                && libc::chdir(slash.as_ptr()) == 0
                && libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                ) == 0;
            if ok {
                libc::execve(init.as_ptr(), argv.as_ptr(), envp.as_ptr());
            }
            libc::_exit(127);
        }
    }
    let pid = pid as libc::pid_t;
    let result = Tracer::new(pid, funcs).and_then(|mut t| t.run(time));
    // SAFETY: kill and waitpid on the child this function created.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        while libc::waitpid(-1, std::ptr::null_mut(), libc::__WALL) > 0 {}
    }
    let _ = std::fs::remove_file(&cmdline_file);
    let mut log = String::new();
    for f in &log_files {
        log.push_str(&std::fs::read_to_string(f).unwrap_or_default());
        let _ = std::fs::remove_file(f);
    }
    result.map(|hits| (hits, log))
}

/// Makes sure nothing exec'd from here on can hold CAP_SYS_TIME: out of the
/// bounding set (which caps what root gets at exec), the ambient set and
/// the inheritable set (which root's exec adds back). Only system calls:
/// runs between clone and exec.
fn drop_sys_time() -> bool {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset with a version-3 header and two data words, as
    // linux/capability.h defines them; prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_TIME, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) == 0
            && libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) == 0
            && {
                data[0].inheritable &= !(1 << CAP_SYS_TIME);
                libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) == 0
            }
    }
}

struct Tracer<'a> {
    init: libc::pid_t,
    funcs: &'a [Func],
    /// Absolute address → (original byte, index into `funcs`).
    breakpoints: HashMap<u64, (u8, usize)>,
    hit: Vec<bool>,
    order: Vec<usize>,
}

fn ptrace(req: libc::c_uint, pid: libc::pid_t, addr: u64, data: u64) -> libc::c_long {
    // SAFETY: PTRACE requests on a tracee of this process; `addr` and `data`
    // are addresses in the tracee or plain values, never dereferenced here.
    unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    }
}

impl<'a> Tracer<'a> {
    fn new(init: libc::pid_t, funcs: &'a [Func]) -> Result<Self> {
        // The exec stop (SIGTRAP) of PTRACE_TRACEME.
        let mut status = 0;
        // SAFETY: waitpid on our own child, into a local.
        if unsafe { libc::waitpid(init, &mut status, libc::__WALL) } != init
            || !libc::WIFSTOPPED(status)
        {
            return Err(format!(
                "init did not stop at its exec under ptrace (wait status {status:#x}); \
                 could the namespaces or the chroot be set up?"
            ));
        }
        let options = libc::PTRACE_O_EXITKILL
            | libc::PTRACE_O_TRACEFORK
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEEXEC;
        if ptrace(libc::PTRACE_SETOPTIONS, init, 0, options as u64) < 0 {
            return Err(os_error("PTRACE_SETOPTIONS"));
        }
        let base = load_base(init)?;
        let mut t = Tracer {
            init,
            funcs,
            breakpoints: HashMap::new(),
            hit: vec![false; funcs.len()],
            order: Vec::new(),
        };
        for (i, f) in funcs.iter().enumerate() {
            let addr = base + f.addr;
            if t.breakpoints.contains_key(&addr) {
                continue; // an alias of a function already armed
            }
            let orig = t.poke_byte(init, addr, 0xcc)?;
            t.breakpoints.insert(addr, (orig, i));
        }
        Ok(t)
    }

    /// Writes `byte` at `addr` in `pid`; returns the byte it replaced.
    fn poke_byte(&self, pid: libc::pid_t, addr: u64, byte: u8) -> Result<u8> {
        let word_addr = addr & !7;
        let shift = (addr - word_addr) * 8;
        // SAFETY: clearing errno before PEEKTEXT, whose -1 is also a value.
        unsafe { *libc::__errno_location() = 0 };
        let word = ptrace(libc::PTRACE_PEEKTEXT, pid, word_addr, 0);
        if word == -1 && std::io::Error::last_os_error().raw_os_error() != Some(0) {
            return Err(os_error(&format!("PTRACE_PEEKTEXT {pid} at {addr:#x}")));
        }
        let word = word as u64;
        let old = (word >> shift) as u8;
        let new = (word & !(0xff << shift)) | (u64::from(byte) << shift);
        if ptrace(libc::PTRACE_POKETEXT, pid, word_addr, new) < 0 {
            return Err(os_error(&format!("PTRACE_POKETEXT {pid} at {addr:#x}")));
        }
        Ok(old)
    }

    fn run(&mut self, time: Duration) -> Result<Vec<Func>> {
        let end = Instant::now() + time;
        ptrace(libc::PTRACE_CONT, self.init, 0, 0);
        while Instant::now() < end {
            let mut status = 0;
            // SAFETY: waitpid into a local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
            if pid == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            if pid < 0 {
                break; // no tracee left
            }
            if !libc::WIFSTOPPED(status) {
                if pid == self.init {
                    break; // init ended (powered off)
                }
                continue;
            }
            let sig = libc::WSTOPSIG(status);
            let event = (status >> 16) & 0xff;
            let mut inject = 0;
            if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXEC && pid != self.init {
                // A child of init now runs another program: not ours.
                ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                continue;
            } else if sig == libc::SIGTRAP && event == 0 {
                self.breakpoint(pid)?;
            } else if event == 0 && sig != libc::SIGSTOP && sig != libc::SIGTRAP {
                inject = sig;
            }
            ptrace(libc::PTRACE_CONT, pid, 0, inject as u64);
        }
        Ok(self.order.iter().map(|&i| self.funcs[i].clone()).collect())
    }

    /// A SIGTRAP: if at one of ours, put the byte back, rewind, note it.
    fn breakpoint(&mut self, pid: libc::pid_t) -> Result<()> {
        // SAFETY: user_regs_struct is plain data; GETREGS fills it.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        if ptrace(
            libc::PTRACE_GETREGS,
            pid,
            0,
            &mut regs as *mut libc::user_regs_struct as u64,
        ) < 0
        {
            return gone_or(&format!("PTRACE_GETREGS {pid}"));
        }
        let at = regs.rip.wrapping_sub(1);
        let Some(&(orig, i)) = self.breakpoints.get(&at) else {
            return Ok(());
        };
        if let Err(e) = self.poke_byte(pid, at, orig) {
            return gone_or(&e);
        }
        regs.rip = at;
        if ptrace(
            libc::PTRACE_SETREGS,
            pid,
            0,
            &regs as *const libc::user_regs_struct as u64,
        ) < 0
        {
            return gone_or(&format!("PTRACE_SETREGS {pid}"));
        }
        if !self.hit[i] {
            self.hit[i] = true;
            self.order.push(i);
        }
        Ok(())
    }
}

/// A tracee killed while stopped (ESRCH) is no error: it is simply gone.
fn gone_or(what: &str) -> Result<()> {
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        return Ok(());
    }
    Err(format!("{what}: {e}"))
}

/// Where /sbin/init is mapped in `pid`: the start of its offset-0 mapping.
fn load_base(pid: libc::pid_t) -> Result<u64> {
    let maps_path = PathBuf::from(format!("/proc/{pid}/maps"));
    let maps = std::fs::read_to_string(&maps_path)
        .map_err(|e| format!("read {}: {e}", maps_path.display()))?;
    maps.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?;
            if !path.ends_with("/sbin/init") || *f.get(2)? != "00000000" {
                return None;
            }
            u64::from_str_radix(f.first()?.split('-').next()?, 16).ok()
        })
        .ok_or_else(|| format!("{}: no mapping of /sbin/init", maps_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
             VMA              LMA     Size Align Out     In      Symbol
             7e0              7e0    27854    32 .rodata
             ca0              ca0       10     4         x.o:(.rodata._RNvfoo)
           492c0            492c0   105738    64 .text
           492c0            492c0       22    16         /usr/lib/rcrt1.o:(.text)
           492c0            492c0       22     1                 _start
           493a9            493a9        5     1         init.o:(.text._ZN3std3foo17h35c9febc1a902b9fE)
           493a9            493a9        5     1                 std::foo::h35c9febc1a902b9f
           493ae            493ae       51     1         init.o:(.text._RNvCs1_4init4main)
           493ae            493ae       51     1                 init::main
           493f0            493f0      100    16         /usr/lib/x86_64-linux-gnu/libc.a(malloc.o):(.text)
           493f0            493f0        0     1                 malloc
           49400            49400        0     1                 free
          14e9f8           14e9f8       17     4 .init
          14e9f8           14e9f8       17     4         crti.o:(.init)
          14e9f8           14e9f8        0     1                 _init
";

    #[test]
    fn map_functions_as_path_independent_patterns() {
        let f = parse_map(MAP);
        let p: Vec<(u64, &str)> = f.iter().map(|f| (f.addr, f.pattern.as_str())).collect();
        assert_eq!(
            p,
            vec![
                (0x492c0, "*rcrt1.o(.text)"),
                (0x493a9, "*(.text._ZN3std3foo17h*E)"),
                (0x493ae, "*(.text._RNvCs*_4init4main)"),
                (0x493f0, "*libc.a:malloc.o(.text)"),
                (0x49400, "*libc.a:malloc.o(.text)"),
            ]
        );
    }

    #[test]
    fn hashes_become_wildcards_and_nothing_else() {
        assert_eq!(
            wildcard_hashes("_ZN10minos_init4boot3run17hdb37f9b6ba0827d4E"),
            "_ZN10minos_init4boot3run17h*E"
        );
        assert_eq!(
            wildcard_hashes("_RNvNtNtCsjrHSEGnQ3l9_3std6thread9functions5sleep"),
            "_RNvNtNtCs*_3std6thread9functions5sleep"
        );
        // Too short to be a hash, or not at the end: kept.
        assert_eq!(wildcard_hashes("_ZN3foo17habcE"), "_ZN3foo17habcE");
        assert_eq!(wildcard_hashes("memcpy"), "memcpy");
        assert_eq!(
            wildcard_hashes("_RINvNtCs1a2b_4core3ptr13drop_in_placeNtB4_3FooEB9_"),
            "_RINvNtCs*_4core3ptr13drop_in_placeNtB*_3FooEB*_"
        );
        // Not ASCII: no panic, kept.
        assert_eq!(wildcard_hashes("é17hé"), "é17hé");
        // Unusable inputs give no pattern.
        assert_eq!(section_pattern("x.o:(.text.a b)"), None);
        assert_eq!(section_pattern("no section here"), None);
    }

    #[test]
    fn map_and_binary_sections() {
        assert_eq!(map_output_section(MAP, ".text"), Some((0x492c0, 0x105738)));
        assert_eq!(map_output_section(MAP, ".init"), Some((0x14e9f8, 0x17)));
        assert_eq!(map_output_section(MAP, ".nope"), None);
        // This test binary has a .text; a text file is no ELF.
        let me = std::env::current_exe().unwrap();
        assert!(elf_section(&me, ".text").is_ok_and(|(a, s)| a > 0 && s > 0));
        assert!(elf_section(&me, ".no-such-section").is_err());
        let not_elf = std::env::temp_dir().join(format!("not-elf-{}", std::process::id()));
        std::fs::write(&not_elf, "hello").unwrap();
        assert!(elf_section(&not_elf, ".text").is_err());
        let _ = std::fs::remove_file(&not_elf);
    }

    #[test]
    fn map_without_text_has_no_functions() {
        assert!(parse_map("garbage\n1 2 3\n").is_empty());
    }
}
