//! Turning a unit's settings into a running process.
//!
//! Everything that can allocate or fail with a good message (users, groups,
//! environment files, stdio targets, the program's path, argv and envp) is
//! resolved in the parent, and `RuntimeDirectory=` is created there, as
//! root. The child is started as glibc's posix_spawn starts one: `clone`
//! with `CLONE_VM | CLONE_VFORK` on a stack of its own, so init's page
//! tables are neither copied nor torn down again at exec, and init sleeps
//! until the child has exec'd or failed. Between clone and exec the child
//! shares init's memory: it only makes raw system calls on values prepared
//! beforehand (stdio, working directory, the signal mask, setsid, umask,
//! rlimits, oom_score_adj, capability sets, uid/gid, no_new_privs; then
//! the listening sockets of socket activation and its own `LISTEN_PID`) and
//! reports a failure — which step, which errno — in memory the parent reads
//! once it runs again.

use std::cell::UnsafeCell;
use std::ffi::{CStr, CString};
use std::fs::OpenOptions;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::process::{Resource, Rlimit};
use rustix::thread::CapabilitySet;

use crate::unit::{self, LimitResource, Stdio, Unit};
use crate::users::{self, Account};
use crate::Mode;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a unit's process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("user {0:?} not found in /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in /etc/group")]
    UnknownGroup(String),
    #[error("read environment file {}", .path.display())]
    EnvironmentFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("open {} for {stream}", .path.display())]
    OpenStdio {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} runtime directory {}", .path.display())]
    RuntimeDirectory {
        /// `create`, or `set owner and mode of`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("duplicate the descriptor of {}", .path.display())]
    CgroupDescriptor {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("empty command line")]
    EmptyCommand,
    #[error("start {program}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("start {program}: {what}")]
    Child {
        program: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A process init started; the supervisor reaps it.
#[derive(Debug)]
pub struct Child {
    pid: u32,
}

impl Child {
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// A process init did not fork but supervises: a forking service's
    /// daemon (named by its PIDFile=), init's child once orphaned.
    pub fn adopted(pid: u32) -> Self {
        Child { pid }
    }
}

/// What every process of one unit start shares: resolved once per start.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub env: Vec<(String, String)>,
    pub account: Option<Account>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    pub cwd: Option<PathBuf>,
    /// `OOMScoreAdjust=`, when init may apply it.
    pub oom_score_adjust: Option<i32>,
    /// The unit's cgroup (`TasksMax=`), which each process joins before exec.
    pub cgroup: Option<std::rc::Rc<crate::cgroup::UnitCgroup>>,
    /// Listening sockets of the unit's socket units, in order: its
    /// `ExecStart=` processes get them as descriptors 3, 4, ...
    pub listen_fds: Vec<std::rc::Rc<OwnedFd>>,
    /// `LISTEN_FDNAMES`: one name per descriptor, colon-separated.
    pub listen_names: String,
}

/// Resolves user, group, environment and working directory for `unit`.
/// `base_env` is what every unit gets (PATH, systemd.setenv=, container).
pub fn context(
    unit: &Unit,
    base_env: &[(String, String)],
    notify_socket: Option<&Path>,
) -> Result<ExecContext, SpawnError> {
    let svc = &unit.service;
    let mut env: Vec<(String, String)> = base_env.to_vec();
    let account = match &svc.user {
        Some(user) => {
            let passwd = crate::sys::read_regular_file(std::path::Path::new("/etc/passwd"))
                .unwrap_or_default();
            Some(
                users::lookup_user(&passwd, user)
                    .ok_or_else(|| SpawnError::UnknownUser(user.clone()))?,
            )
        }
        None => None,
    };
    let group_file = if svc.group.is_some() || account.is_some() {
        crate::sys::read_regular_file(std::path::Path::new("/etc/group")).unwrap_or_default()
    } else {
        String::new()
    };
    let gid = match &svc.group {
        Some(g) => Some(
            users::lookup_group(&group_file, g)
                .ok_or_else(|| SpawnError::UnknownGroup(g.clone()))?,
        ),
        None => account.as_ref().map(|a| a.gid),
    };
    let groups = account
        .as_ref()
        .map(|a| users::supplementary_groups(&group_file, &a.name))
        .unwrap_or_default();
    if let Some(a) = &account {
        set_env(&mut env, "HOME", &a.home);
        set_env(&mut env, "USER", &a.name);
        set_env(&mut env, "LOGNAME", &a.name);
        set_env(&mut env, "SHELL", &a.shell);
    }
    if let Some(sock) = notify_socket {
        set_env(&mut env, "NOTIFY_SOCKET", &sock.to_string_lossy());
    }
    // Before Environment=, which may override it (as in systemd).
    if !svc.runtime_directory.is_empty() {
        let paths: Vec<String> = runtime_directories(unit)
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        set_env(&mut env, "RUNTIME_DIRECTORY", &paths.join(":"));
    }
    for (k, v) in &svc.environment {
        set_env(&mut env, k, v);
    }
    for (path, optional) in &svc.environment_files {
        match crate::sys::read_regular_file(path) {
            Ok(text) => {
                for (k, v) in parse_env_file(&text) {
                    set_env(&mut env, &k, &v);
                }
            }
            Err(e) if *optional && e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SpawnError::EnvironmentFile {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    let cwd = svc.working_directory.as_ref().map(|d| {
        if d.as_os_str() == "~" {
            PathBuf::from(account.as_ref().map_or("/root", |a| a.home.as_str()))
        } else {
            d.clone()
        }
    });
    // Unset: a unit gets 0 rather than init's own -1000, which fork would
    // copy (raising the value is always allowed).
    let oom_score_adjust = svc
        .oom_score_adjust
        .filter(|&v| oom_allowed(&unit.name, v))
        .or_else(|| (own_oom_score_adj() < 0).then_some(0));
    Ok(ExecContext {
        env,
        account,
        gid,
        groups,
        cwd,
        oom_score_adjust,
        cgroup: None,
        listen_fds: Vec::new(),
        listen_names: String::new(),
    })
}

/// The absolute paths of `unit`'s `RuntimeDirectory=` names.
pub fn runtime_directories(unit: &Unit) -> impl Iterator<Item = PathBuf> + '_ {
    unit.service
        .runtime_directory
        .iter()
        .map(|name| Path::new(unit::RUNTIME_DIRECTORY_ROOT).join(name))
}

/// Creates `unit`'s `RuntimeDirectory=` directories, as root, before any of
/// its processes starts. As systemd does: missing parents are created
/// root-owned with mode 0755 (mkdir_parents), each named directory is owned
/// by `User=`/`Group=` (root when unset) and gets `RuntimeDirectoryMode=`
/// exactly (no umask); an existing one is adopted, its tree re-owned if its
/// owner differs. A path component that exists but is not a directory (a
/// symlink included: init must not chown through one) is an error.
pub fn create_runtime_directories(unit: &Unit, ctx: &ExecContext) -> Result<(), SpawnError> {
    use std::os::unix::fs::DirBuilderExt;

    let svc = &unit.service;
    let uid = ctx.account.as_ref().map_or(0, |a| a.uid);
    let gid = ctx.gid.unwrap_or(0);
    let root = Path::new(unit::RUNTIME_DIRECTORY_ROOT);
    if !svc.runtime_directory.is_empty() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(|e| dir_error("create", root, e))?;
    }
    for name in &svc.runtime_directory {
        create_runtime_directory(root, name, svc.runtime_directory_mode, uid, gid)?;
    }
    Ok(())
}

fn dir_error(what: &'static str, path: &Path, source: io::Error) -> SpawnError {
    SpawnError::RuntimeDirectory {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `root/name` (`name` is relative and normalised: the parser
/// checked it) and the parents it needs. Walks down with descriptors opened
/// without following symlinks, so that nothing a unit's user owns (a
/// directory kept from an earlier run, or a named directory that is the
/// parent of another) can redirect init's mkdir, chown or chmod elsewhere.
fn create_runtime_directory(
    root: &Path,
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), SpawnError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use rustix::io::Errno;

    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut path = root.to_path_buf();
    let mut dir = rustix::fs::open(root, dir_flags, Mode::empty())
        .map_err(|e| dir_error("create", root, e.into()))?;
    let mut parts = name.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        let innermost = parts.peek().is_none();
        let created = match rustix::fs::mkdirat(&dir, part, Mode::from_raw_mode(0o755)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(dir_error("create", &path, e.into())),
        };
        let fd = rustix::fs::openat(&dir, part, dir_flags | OFlags::NOFOLLOW, Mode::empty())
            .map_err(|e| {
                let source = match e {
                    // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR.
                    Errno::LOOP | Errno::NOTDIR => {
                        let symlink = rustix::fs::statat(&dir, part, AtFlags::SYMLINK_NOFOLLOW)
                            .is_ok_and(|st| {
                                FileType::from_raw_mode(st.st_mode) == FileType::Symlink
                            });
                        io::Error::other(if symlink {
                            "exists and is a symbolic link"
                        } else {
                            "exists and is not a directory"
                        })
                    }
                    e => e.into(),
                };
                dir_error("create", &path, source)
            })?;
        let setup = |e: Errno| dir_error("set owner and mode of", &path, e.into());
        if innermost {
            let st = rustix::fs::fstat(&fd).map_err(setup)?;
            if (st.st_uid, st.st_gid) != (uid, gid) {
                // Owner before mode: chown clears the set-id bits.
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::process::Uid::from_raw(uid)),
                    Some(rustix::process::Gid::from_raw(gid)),
                )
                .map_err(setup)?;
                if !created {
                    chown_tree(&fd, uid, gid).map_err(setup)?;
                }
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(setup)?;
        } else if created {
            // A parent made here: 0755 whatever init's umask.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(setup)?;
        }
        dir = fd;
    }
    Ok(())
}

/// Re-owns everything below the directory `top` (as systemd does for an
/// existing directory with another owner), never following a symlink. One
/// open directory per level, no recursion: PID 1's stack must not depend on
/// a tree's depth.
fn chown_tree(top: &impl std::os::fd::AsFd, uid: u32, gid: u32) -> Result<(), rustix::io::Errno> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};

    let (uid, gid) = (
        Some(rustix::process::Uid::from_raw(uid)),
        Some(rustix::process::Gid::from_raw(gid)),
    );
    let mut stack = vec![rustix::fs::Dir::read_from(top)?];
    while let Some(dir) = stack.last_mut() {
        let Some(entry) = dir.read() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let fd = dir.fd()?;
        rustix::fs::chownat(fd, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        if is_dir {
            let sub = rustix::fs::openat(
                fd,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            stack.push(rustix::fs::Dir::new(sub)?);
        }
    }
    Ok(())
}

/// Removes `unit`'s runtime directories with everything in them; a failure
/// is a warning.
pub fn remove_runtime_directories(unit: &Unit) {
    for path in runtime_directories(unit) {
        if let Err(e) = remove_runtime_directory(&path) {
            log::warn!(
                "{}: remove runtime directory {}: {e}",
                unit.name,
                path.display()
            );
        }
    }
}

/// Removes the directory `path` and its contents (never following a
/// symlink). A missing path is fine; a file or symlink there was not made
/// by init and stays.
fn remove_runtime_directory(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// Parses an `EnvironmentFile=`: `KEY=VALUE` lines, `#`/`;` comments,
/// optional `export `, single or double quotes around the value.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let k = k.trim();
            if k.is_empty()
                || k.starts_with(|c: char| c.is_ascii_digit())
                || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return None;
            }
            let v = v.trim();
            let v = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q).and_then(|x| x.strip_suffix(*q)))
                .unwrap_or(v);
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Opens the target of one standard stream: `None` keeps init's own.
fn open_stdio(
    stdio: &Stdio,
    stream: &'static str,
    tty_path: &Path,
    mode: Mode,
) -> Result<Option<OwnedFd>, SpawnError> {
    let input = stream == "stdin";
    let open = |path: &Path, append: bool, truncate: bool| -> Result<Option<OwnedFd>, SpawnError> {
        let mut o = OpenOptions::new();
        if input {
            o.read(true);
        } else {
            o.write(true)
                .create(true)
                .append(append)
                .truncate(truncate)
                .mode(0o644);
        }
        // O_NONBLOCK: PID 1 must not hang opening a FIFO without a peer
        // (a writer gets ENXIO instead) or a tty waiting for carrier. The
        // child gets a blocking descriptor.
        o.custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK);
        let err = |source| SpawnError::OpenStdio {
            stream,
            path: path.to_path_buf(),
            source,
        };
        let f = o.open(path).map_err(err)?;
        crate::sys::set_blocking(&f).map_err(err)?;
        Ok(Some(OwnedFd::from(f)))
    };
    match stdio {
        Stdio::Null => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(|f| Some(OwnedFd::from(f)))
            .map_err(|source| SpawnError::OpenStdio {
                stream,
                path: PathBuf::from("/dev/null"),
                source,
            }),
        Stdio::Inherit => Ok(None),
        // A container's console is init's own stdio, unless the manager
        // provided a /dev/console.
        Stdio::Tty if mode == Mode::Container && !tty_path.exists() => Ok(None),
        Stdio::Tty => open(tty_path, false, false),
        Stdio::Kmsg if mode == Mode::Container => Ok(None),
        Stdio::Kmsg => open(Path::new("/dev/kmsg"), false, false),
        Stdio::File(p) => open(p, false, false),
        Stdio::Append(p) => open(p, true, false),
        Stdio::Truncate(p) => open(p, false, true),
    }
}

fn resource(r: LimitResource) -> Resource {
    match r {
        LimitResource::Cpu => Resource::Cpu,
        LimitResource::Fsize => Resource::Fsize,
        LimitResource::Data => Resource::Data,
        LimitResource::Stack => Resource::Stack,
        LimitResource::Core => Resource::Core,
        LimitResource::Rss => Resource::Rss,
        LimitResource::Nofile => Resource::Nofile,
        LimitResource::As => Resource::As,
        LimitResource::Nproc => Resource::Nproc,
        LimitResource::Memlock => Resource::Memlock,
        LimitResource::Locks => Resource::Locks,
        LimitResource::Sigpending => Resource::Sigpending,
        LimitResource::Msgqueue => Resource::Msgqueue,
        LimitResource::Nice => Resource::Nice,
        LimitResource::Rtprio => Resource::Rtprio,
        LimitResource::Rttime => Resource::Rttime,
    }
}

fn cap_set(caps: &[u32]) -> CapabilitySet {
    caps.iter()
        .filter(|&&c| c < 64)
        .fold(CapabilitySet::empty(), |s, &c| {
            s | CapabilitySet::from_bits_retain(1u64 << c)
        })
}

/// Highest capability number the kernel knows (cap_last_cap), for bounding-set drops.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Whether init holds `cap` in its effective set.
pub fn has_capability(cap: CapabilitySet) -> bool {
    rustix::thread::capabilities(None).is_ok_and(|c| c.effective.contains(cap))
}

/// init's own oom_score_adj, which fork copies into every unit; read once
/// (or set by [`note_own_oom_score_adj`]).
static OWN_OOM_SCORE_ADJ: std::sync::atomic::AtomicI32 =
    std::sync::atomic::AtomicI32::new(i32::MIN);

/// Records init's own oom_score_adj after init set it.
pub fn note_own_oom_score_adj(value: i32) {
    OWN_OOM_SCORE_ADJ.store(value, std::sync::atomic::Ordering::Relaxed);
}

fn own_oom_score_adj() -> i32 {
    let known = OWN_OOM_SCORE_ADJ.load(std::sync::atomic::Ordering::Relaxed);
    if known != i32::MIN {
        return known;
    }
    let value = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    note_own_oom_score_adj(value);
    value
}

/// Lowering oom_score_adj below init's own needs CAP_SYS_RESOURCE, which a
/// container may lack: then the setting is skipped with a warning rather
/// than failing the unit (in a VM init always holds it).
fn oom_allowed(unit: &str, value: i32) -> bool {
    if has_capability(CapabilitySet::SYS_RESOURCE) {
        return true;
    }
    let own = own_oom_score_adj();
    if value < own {
        log::warn!("{unit}: OOMScoreAdjust={value} needs CAP_SYS_RESOURCE, which init lacks here; left at {own}");
        return false;
    }
    true
}

/// Why the child could not exec: the step, and its error.
#[derive(Debug, Clone, Copy)]
struct ChildFailure {
    what: &'static str,
    errno: rustix::io::Errno,
}

/// `map_err` for a step of the child.
fn step(what: &'static str) -> impl Fn(rustix::io::Errno) -> ChildFailure {
    move |errno| ChildFailure { what, errno }
}

/// The program's path: as written when it has a `/`, else the first
/// executable file of that name in the unit's `PATH` (as execvp would).
fn resolve_program(program: &str, env: &[(String, String)]) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            p.is_file() && rustix::fs::access(p.as_path(), rustix::fs::Access::EXEC_OK).is_ok()
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("not found in PATH ({path})"),
            )
        })
}

fn c_string(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in an argument or the environment",
        )
    })
}

/// Spawns one command of `unit` with the unit's settings and `ctx`.
/// `listen`: an `ExecStart=` process, which gets the context's listening
/// sockets as descriptors 3, 4, ... with `LISTEN_FDS`, `LISTEN_FDNAMES` and
/// `LISTEN_PID` (its own pid, written by the child), as sd_listen_fds(3)
/// expects.
pub fn spawn(
    unit: &Unit,
    cmd: &unit::Command,
    ctx: &ExecContext,
    mode: Mode,
    listen: bool,
) -> Result<Child, SpawnError> {
    let svc = &unit.service;
    let argv = if cmd.expand_env {
        unit::expand(cmd, &ctx.env)
    } else {
        cmd.argv.clone()
    };
    let program = argv.first().ok_or(SpawnError::EmptyCommand)?;
    let exec_error = |source: io::Error| SpawnError::Exec {
        program: program.clone(),
        source,
    };
    let path = resolve_program(program, &ctx.env).map_err(exec_error)?;
    let path = c_string(path.as_os_str().as_bytes()).map_err(exec_error)?;
    let mut c_argv: Vec<CString> = argv
        .iter()
        .map(|a| c_string(a.as_bytes()))
        .collect::<io::Result<_>>()
        .map_err(exec_error)?;
    if let (Some(a0), Some(first)) = (&cmd.argv0, c_argv.first_mut()) {
        *first = c_string(a0.as_bytes()).map_err(exec_error)?;
    }
    let pass_fds = listen && !ctx.listen_fds.is_empty();
    let mut c_env: Vec<CString> = ctx
        .env
        .iter()
        // init's own values win over Environment= (as in systemd).
        .filter(|(k, _)| {
            !(pass_fds && matches!(k.as_str(), "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES"))
        })
        .map(|(k, v)| c_string(format!("{k}={v}")))
        .collect::<io::Result<_>>()
        .map_err(exec_error)?;
    let pid_slot = PidSlot::new();
    // Each listening socket at or above 3 + N, so that moving them to
    // 3, 4, ... in the child overwrites none not yet moved (the copies are
    // close-on-exec and closed here once the child has exec'd).
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut listen_fds: Vec<RawFd> = Vec::new();
    if pass_fds {
        let n = ctx.listen_fds.len();
        c_env.push(c_string(format!("LISTEN_FDS={n}")).map_err(exec_error)?);
        c_env.push(c_string(format!("LISTEN_FDNAMES={}", ctx.listen_names)).map_err(exec_error)?);
        let low = RawFd::try_from(n).unwrap_or(RawFd::MAX).saturating_add(3);
        for fd in &ctx.listen_fds {
            if fd.as_raw_fd() >= low {
                listen_fds.push(fd.as_raw_fd());
                continue;
            }
            let copy = rustix::io::fcntl_dupfd_cloexec(fd.as_ref(), low).map_err(|e| {
                SpawnError::Child {
                    program: program.clone(),
                    what: "duplicate a listening socket",
                    source: e.into(),
                }
            })?;
            listen_fds.push(copy.as_raw_fd());
            moved.push(copy);
        }
    }
    let argv_ptrs = null_terminated(&c_argv);
    let mut envp_ptrs = null_terminated(&c_env);
    if pass_fds {
        // Before the terminating NULL.
        envp_ptrs.insert(envp_ptrs.len().saturating_sub(1), pid_slot.as_ptr());
    }
    let cwd = match &ctx.cwd {
        Some(dir) => Some(c_string(dir.as_os_str().as_bytes()).map_err(exec_error)?),
        None => None,
    };
    let stdin = open_stdio(&svc.stdin, "stdin", &svc.tty_path, mode)?;
    let stdout = open_stdio(&svc.stdout, "stdout", &svc.tty_path, mode)?;
    // StandardError=inherit means "the same as stdout", as in systemd: the
    // same open file (one open of a tty less on the boot path).
    let stderr = match &svc.stderr {
        Stdio::Inherit => None,
        other => open_stdio(other, "stderr", &svc.tty_path, mode)?,
    };
    let stderr_fd = match (&svc.stderr, &stdout) {
        (Stdio::Inherit, Some(out)) => Some(out.as_raw_fd()),
        _ => stderr.as_ref().map(AsRawFd::as_raw_fd),
    };
    let limits: Vec<(Resource, Rlimit)> = svc
        .limits
        .iter()
        .map(|l| {
            (
                resource(l.resource),
                Rlimit {
                    current: l.soft,
                    maximum: l.hard,
                },
            )
        })
        .collect();
    let oom = ctx.oom_score_adjust.map(|v| v.to_string().into_bytes());
    let umask = svc.umask.map(rustix::fs::Mode::from_raw_mode);
    let tty_stdin = svc.stdin == Stdio::Tty && mode == Mode::Vm;
    let privileged = cmd.privileged;
    let (uid, gid) = if privileged {
        (None, None)
    } else {
        (ctx.account.as_ref().map(|a| a.uid), ctx.gid)
    };
    let groups: Vec<rustix::process::Gid> = ctx
        .groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    let ambient: Vec<CapabilitySet> = if privileged {
        Vec::new()
    } else {
        svc.ambient_capabilities
            .iter()
            .filter(|&&c| c < 64)
            .map(|&c| CapabilitySet::from_bits_retain(1u64 << c))
            .collect()
    };
    let ambient_all = cap_set(&svc.ambient_capabilities);
    let drop_bounding: Vec<CapabilitySet> = match (&svc.capability_bounding_set, privileged) {
        (Some(keep), false) => (0..=last_cap().min(63))
            .filter(|c| !keep.contains(c))
            .map(|c| CapabilitySet::from_bits_retain(1u64 << c))
            .collect(),
        _ => Vec::new(),
    };
    let no_new_privs = svc.no_new_privileges && !privileged;
    // A duplicate for this child's steps (close-on-exec, dropped in the
    // parent with the steps once the child has exec'd).
    let cgroup_procs = match &ctx.cgroup {
        Some(cg) => Some(
            cg.procs
                .try_clone()
                .map_err(|source| SpawnError::CgroupDescriptor {
                    path: cg.path.join("cgroup.procs"),
                    source,
                })?,
        ),
        None => None,
    };

    let vm = mode == Mode::Vm;
    let steps = move || -> Result<(), ChildFailure> {
        // init may be running at BOOT_NICE while it starts units; the
        // unit's processes run at the normal priority. As root, first.
        if vm {
            let _ = rustix::process::setpriority_process(None, 0);
        }
        // As root too: the cgroup limits everything that follows.
        if let Some(fd) = &cgroup_procs {
            rustix::io::write(fd, b"0").map_err(step("join the unit's cgroup"))?;
        }
        // init blocks the signals it reads from its signalfd; the mask is
        // inherited across fork and exec, so clear it (sigprocmask is
        // async-signal-safe).
        crate::sys::unblock_all_signals();
        rustix::process::setsid().map_err(step("setsid"))?;
        if tty_stdin {
            let _ = rustix::process::ioctl_tiocsctty(rustix::stdio::stdin());
        }
        if let Some(m) = umask {
            rustix::process::umask(m);
        }
        for (res, lim) in &limits {
            rustix::process::setrlimit(*res, *lim).map_err(step("setrlimit"))?;
        }
        if let Some(text) = &oom {
            let fd = rustix::fs::open(
                c"/proc/self/oom_score_adj",
                rustix::fs::OFlags::WRONLY,
                rustix::fs::Mode::empty(),
            )
            .map_err(step("open /proc/self/oom_score_adj"))?;
            rustix::io::write(&fd, text).map_err(step("write oom_score_adj"))?;
        }
        for cap in &drop_bounding {
            rustix::thread::remove_capability_from_bounding_set(*cap)
                .map_err(step("drop from capability bounding set"))?;
        }
        if let Some(gid) = gid {
            rustix::thread::set_thread_groups(&groups).map_err(step("setgroups"))?;
            rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(gid))
                .map_err(step("setgid"))?;
        }
        if let Some(uid) = uid {
            if !ambient.is_empty() {
                rustix::thread::set_keep_capabilities(true).map_err(step("PR_SET_KEEPCAPS"))?;
            }
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(uid))
                .map_err(step("setuid"))?;
        }
        if !ambient.is_empty() {
            let sets = rustix::thread::CapabilitySets {
                effective: ambient_all,
                permitted: ambient_all,
                inheritable: ambient_all,
            };
            rustix::thread::set_capabilities(None, sets).map_err(step("capset"))?;
            for cap in &ambient {
                rustix::thread::configure_capability_in_ambient_set(*cap, true)
                    .map_err(step("raise ambient capability"))?;
            }
        }
        if no_new_privs {
            rustix::thread::set_no_new_privs(true).map_err(step("PR_SET_NO_NEW_PRIVS"))?;
        }
        Ok(())
    };
    let plan = Plan {
        path: &path,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        stdio: [
            stdin.as_ref().map(AsRawFd::as_raw_fd),
            stdout.as_ref().map(AsRawFd::as_raw_fd),
            stderr_fd,
        ],
        cwd: cwd.as_deref(),
        listen_fds: &listen_fds,
        listen_pid: pass_fds.then_some(&pid_slot),
        steps: &steps,
        failure: UnsafeCell::new(None),
    };
    let started = vfork_exec(&plan);
    drop(moved);
    match started {
        Ok(pid) => Ok(Child { pid }),
        Err(Started::Clone(source)) => Err(exec_error(source)),
        Err(Started::Failed(f)) => Err(SpawnError::Child {
            program: program.clone(),
            what: f.what,
            source: f.errno.into(),
        }),
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// What the child needs, all of it prepared by the parent.
struct Plan<'a> {
    path: &'a CStr,
    /// NULL-terminated, pointing into CStrings that outlive the spawn.
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// The descriptors for 0, 1, 2 (`None`: init's own).
    stdio: [Option<RawFd>; 3],
    cwd: Option<&'a CStr>,
    /// Listening sockets for descriptors 3, 4, ... (all of them at or
    /// above 3 + their count).
    listen_fds: &'a [RawFd],
    /// `LISTEN_PID=`, in envp: the child writes its own pid into it.
    listen_pid: Option<&'a PidSlot>,
    /// The unit's settings, applied in the child.
    steps: &'a dyn Fn() -> Result<(), ChildFailure>,
    /// Written by the child when it cannot exec; read by the parent after.
    failure: UnsafeCell<Option<ChildFailure>>,
}

/// The `LISTEN_PID=` entry of a child's environment: the parent writes the
/// prefix, the child its own pid after it (its pid is known only there).
struct PidSlot(UnsafeCell<[u8; PidSlot::LEN]>);

impl PidSlot {
    const PREFIX: &'static [u8] = b"LISTEN_PID=";
    /// The prefix, 10 digits (u32) and the NUL.
    const LEN: usize = 11 + 10 + 1;

    fn new() -> Self {
        let mut buf = [0u8; Self::LEN];
        for (b, p) in buf.iter_mut().zip(Self::PREFIX) {
            *b = *p;
        }
        PidSlot(UnsafeCell::new(buf))
    }

    fn as_ptr(&self) -> *const libc::c_char {
        self.0.get().cast()
    }

    /// In the child: `LISTEN_PID=<pid>`, NUL-terminated. No allocation,
    /// no locks: digits written into memory prepared by the parent.
    fn fill(&self, pid: u32) {
        let mut digits = [0u8; 10];
        let mut n = 0;
        let mut v = pid;
        for d in digits.iter_mut() {
            // `v % 10` < 10: the cast cannot truncate.
            *d = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // SAFETY: the parent made the slot and does not touch it until the
        // child has exec'd or exited (CLONE_VFORK); only this child writes.
        let buf = unsafe { &mut *self.0.get() };
        let tail = buf.iter_mut().skip(Self::PREFIX.len());
        let text = digits.iter().take(n).rev().chain(std::iter::once(&0u8));
        for (b, d) in tail.zip(text) {
            *b = *d;
        }
    }
}

enum Started {
    Clone(io::Error),
    Failed(ChildFailure),
}

/// The child's stack: its frames are a few small system-call wrappers.
const CHILD_STACK: usize = 64 * 1024;

/// Starts the child (`clone(CLONE_VM | CLONE_VFORK)`): returns when it has
/// exec'd (its pid) or failed (reaped, with what failed).
fn vfork_exec(plan: &Plan<'_>) -> Result<u32, Started> {
    let mut stack: Vec<MaybeUninit<u8>> = Vec::with_capacity(CHILD_STACK);
    // The stack grows down from its 16-byte-aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: sigset_t is plain data, filled by sigfillset; the mask is
    // restored below. All signals stay blocked in the child until its steps
    // clear the mask, so no handler runs on the shared memory meanwhile.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sigset_t pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: `child_main` runs on `stack` (CHILD_STACK bytes, unused by
    // anything else) with `plan`, which lives in this frame: CLONE_VFORK
    // suspends this thread until the child has exec'd or exited, so both
    // outlive every use in the child. init is single-threaded.
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *const Plan<'_> as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(Started::Clone(clone_error));
    }
    // SAFETY: the child has exec'd or exited (CLONE_VFORK): nothing writes
    // `failure` any more.
    let failure = unsafe { plan.failure.get().read_volatile() };
    if let Some(f) = failure {
        // Reaped here: it was never a unit's process.
        // SAFETY: waitpid on our own child, no status wanted.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        return Err(Started::Failed(f));
    }
    Ok(pid.unsigned_abs())
}

/// The child: stdio, working directory, SIGPIPE, the unit's steps, exec.
/// Only returns (to `_exit`) after a failure, recorded in the plan.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the Plan vfork_exec passed, alive while the parent
    // is suspended (see there).
    let plan = unsafe { &*(arg as *const Plan<'_>) };
    let failure = child_exec(plan);
    // SAFETY: the parent reads it only after this process has exited.
    unsafe {
        plan.failure.get().write_volatile(Some(failure));
        libc::_exit(127)
    }
}

fn child_exec(plan: &Plan<'_>) -> ChildFailure {
    let errno = || {
        rustix::io::Errno::from_raw_os_error(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    };
    for (target, fd) in (0..).zip(plan.stdio) {
        let Some(fd) = fd else { continue };
        // SAFETY: dup2/fcntl on descriptors the parent keeps open until the
        // child has exec'd. dup2 clears close-on-exec on the copy; a
        // descriptor already in place keeps its own flag, so clear it.
        let ok = unsafe {
            if fd == target {
                libc::fcntl(fd, libc::F_SETFD, 0) == 0
            } else {
                libc::dup2(fd, target) == target
            }
        };
        if !ok {
            return ChildFailure {
                what: "set up standard input, output or error",
                errno: errno(),
            };
        }
    }
    if let Some(dir) = plan.cwd {
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return ChildFailure {
                what: "change to the working directory",
                errno: errno(),
            };
        }
    }
    // Rust's runtime ignores SIGPIPE in init; a unit starts with the default.
    // SAFETY: resets one signal's disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    if let Err(f) = (plan.steps)() {
        return f;
    }
    for (target, &fd) in (3..).zip(plan.listen_fds) {
        // After the steps, whose descriptors (the cgroup's, close-on-exec)
        // may sit where the sockets go.
        // SAFETY: dup2 on descriptors the parent keeps open until the child
        // has exec'd; every source is at or above the last target, so none
        // is overwritten before it is moved. dup2 clears close-on-exec.
        if unsafe { libc::dup2(fd, target) } != target {
            return ChildFailure {
                what: "pass the listening sockets",
                errno: errno(),
            };
        }
    }
    if let Some(slot) = plan.listen_pid {
        let pid = rustix::process::getpid().as_raw_nonzero().get();
        slot.fill(pid.unsigned_abs());
    }
    // SAFETY: NUL-terminated path, NULL-terminated arrays of NUL-terminated
    // strings, all alive until the parent runs again.
    unsafe { libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    ChildFailure {
        what: "exec",
        errno: errno(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn listen_pid_slot() {
        for (pid, want) in [
            (1, "LISTEN_PID=1"),
            (40, "LISTEN_PID=40"),
            (4_194_304, "LISTEN_PID=4194304"),
            (u32::MAX, "LISTEN_PID=4294967295"),
        ] {
            let slot = PidSlot::new();
            slot.fill(pid);
            // SAFETY: a NUL-terminated buffer of PidSlot::LEN bytes.
            let text = unsafe { CStr::from_ptr(slot.as_ptr()) };
            assert_eq!(text.to_str().unwrap(), want);
        }
    }

    #[test]
    fn env_file_syntax() {
        let env = parse_env_file(
            "# comment\n; other\nA=1\nexport B = two words \nC=\"quoted value\"\nD='single'\nbad line\n1X=ok\n=empty\n",
        );
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "quoted value".into()),
                ("D".into(), "single".into()),
            ]
        );
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("minos-spawn-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ids() -> (u32, u32) {
        (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        )
    }

    /// (uid, gid, mode & 07777) of `p`, not following a symlink.
    fn owner_mode(p: &Path) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.uid(), m.gid(), m.mode() & 0o7777)
    }

    fn created(root: &Path, name: &str, mode: u32, (uid, gid): (u32, u32)) -> Result<(), String> {
        create_runtime_directory(root, name, mode, uid, gid).map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn runtime_directory_with_parents() {
        let t = TempDir::new("rtdir");
        let (uid, gid) = ids();
        // 0777 would lose bits to a umask: the mode is set exactly.
        created(&t.0, "a/b/c", 0o777, ids()).unwrap();
        assert_eq!(owner_mode(&t.0.join("a")), (uid, gid, 0o755));
        assert_eq!(owner_mode(&t.0.join("a/b")), (uid, gid, 0o755));
        assert_eq!(owner_mode(&t.0.join("a/b/c")), (uid, gid, 0o777));
        // Again, with a file inside: adopted, the new mode set, the contents kept.
        std::fs::write(t.0.join("a/b/c/f"), "x").unwrap();
        created(&t.0, "a/b/c", 0o2750, ids()).unwrap();
        assert_eq!(owner_mode(&t.0.join("a/b/c")), (uid, gid, 0o2750));
        assert_eq!(std::fs::read_to_string(t.0.join("a/b/c/f")).unwrap(), "x");
        // An existing parent keeps its mode.
        std::fs::set_permissions(
            t.0.join("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        created(&t.0, "a/d", 0o700, ids()).unwrap();
        assert_eq!(owner_mode(&t.0.join("a")).2, 0o711);
        assert_eq!(owner_mode(&t.0.join("a/d")).2, 0o700);
        // Removal is recursive; missing is fine.
        remove_runtime_directory(&t.0.join("a/b")).unwrap();
        assert!(!t.0.join("a/b").exists());
        assert!(t.0.join("a/d").is_dir());
        remove_runtime_directory(&t.0.join("a/b")).unwrap();
    }

    #[test]
    fn runtime_directory_errors_name_the_path() {
        let t = TempDir::new("rtdir-errors");
        std::fs::write(t.0.join("file"), "x").unwrap();
        let e = created(&t.0, "file", 0o755, ids()).unwrap_err();
        assert_eq!(
            e,
            format!(
                "create runtime directory {}: exists and is not a directory",
                t.0.join("file").display()
            )
        );
        let e = created(&t.0, "file/sub", 0o755, ids()).unwrap_err();
        assert!(
            e.contains(&format!("{}:", t.0.join("file").display())),
            "{e}"
        );
        // A symlink is never followed, to a directory neither.
        std::fs::create_dir(t.0.join("target")).unwrap();
        std::fs::set_permissions(
            t.0.join("target"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(t.0.join("target"), t.0.join("link")).unwrap();
        for name in ["link", "link/sub"] {
            let e = created(&t.0, name, 0o700, ids()).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "create runtime directory {}: exists and is a symbolic link",
                    t.0.join("link").display()
                )
            );
        }
        assert_eq!(owner_mode(&t.0.join("target")).2, 0o755);
        assert!(!t.0.join("target/sub").exists());
        // Removal leaves a symlink (and its target) alone.
        remove_runtime_directory(&t.0.join("link")).unwrap();
        assert!(t.0.join("link").exists() && t.0.join("target").is_dir());
        // A root that does not exist.
        let e = created(&t.0.join("missing"), "x", 0o755, ids()).unwrap_err();
        assert!(e.contains("missing: No such file or directory"), "{e}");
    }

    /// An existing directory with another owner is re-owned with its tree
    /// (as systemd does), without following symlinks out of it.
    #[test]
    fn runtime_directory_owner_change() {
        let t = TempDir::new("rtdir-owner");
        let dir = t.0.join("d");
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::fs::write(dir.join("sub/deeper/f"), "x").unwrap();
        std::fs::write(t.0.join("outside"), "x").unwrap();
        std::os::unix::fs::symlink(t.0.join("outside"), dir.join("sub/link")).unwrap();
        let result = created(&t.0, "d", 0o750, (4321, 4322));
        if !rustix::process::geteuid().is_root() {
            assert!(result.unwrap_err().contains("Operation not permitted"));
            return;
        }
        result.unwrap();
        for p in ["", "sub", "sub/deeper", "sub/deeper/f", "sub/link"] {
            let (uid, gid, _) = owner_mode(&dir.join(p));
            assert_eq!((uid, gid), (4321, 4322), "{p}");
        }
        assert_eq!(owner_mode(&dir).2, 0o750);
        let (uid, _, _) = owner_mode(&t.0.join("outside"));
        assert_eq!(uid, ids().0, "the symlink's target keeps its owner");
    }

    #[test]
    fn runtime_directory_environment() {
        let mut u = Unit::new("a.service");
        u.service.runtime_directory = vec!["a".into(), "b/c".into()];
        let ctx = context(&u, &[], None).unwrap();
        let get = |k: &str| {
            ctx.env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("RUNTIME_DIRECTORY"), Some("/run/a:/run/b/c"));
        // Environment= may override it.
        u.service.environment = vec![("RUNTIME_DIRECTORY".into(), "/elsewhere".into())];
        let ctx = context(&u, &[], None).unwrap();
        assert!(ctx
            .env
            .iter()
            .any(|(k, v)| k == "RUNTIME_DIRECTORY" && v == "/elsewhere"));
        u.service.runtime_directory.clear();
        u.service.environment.clear();
        let ctx = context(&u, &[], None).unwrap();
        assert!(!ctx.env.iter().any(|(k, _)| k == "RUNTIME_DIRECTORY"));
    }

    #[test]
    fn capability_sets() {
        assert_eq!(cap_set(&[25]), CapabilitySet::SYS_TIME);
        assert_eq!(
            cap_set(&[0, 25, 99]),
            CapabilitySet::SYS_TIME | CapabilitySet::CHOWN
        );
    }
}
