//! The device opener: how a PHC that appears after the privilege drop is
//! still opened.
//!
//! On a guest without udev a PHC is `root:root 0600`. timesync opens the
//! configured devices before it drops to its own user, but a device that is
//! missing then (a `ptp_kvm` loaded later, a hot-plugged clock) could not be
//! opened afterwards. So before the drop, timesync forks this opener: a
//! process that stays uid 0 — the devices' owner, which is all it needs —
//! with no capability at all (effective, permitted, bounding: empty) and
//! no_new_privs, named `timesync-open`. It answers one kind of request on a
//! `SOCK_SEQPACKET` socket pair: "open configured device N", by opening that
//! path read-only, checking that it is a character device, and passing the
//! descriptor back (`SCM_RIGHTS`), or the errno. It opens nothing else: the
//! paths are fixed when it is forked. It dies with the daemon
//! (`PR_SET_PDEATHSIG`), or when the socket closes.
//!
//! The daemon asks only when its own open fails with `EACCES`, and waits at
//! most [`REPLY_TIMEOUT`] for the answer (an open of a device node does not
//! block).

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, socketpair, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage,
    RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::thread::{self as thread, CapabilitySet, CapabilitySets};

/// The opener's process name (`comm`).
pub const NAME: &str = "timesync-open";
/// How long the daemon waits for an answer.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// The daemon's end of the opener.
#[derive(Debug)]
pub struct Opener {
    socket: OwnedFd,
    pid: i32,
}

impl Opener {
    /// Forks the opener for `devices` (as root, before the privilege drop,
    /// while the process has one thread).
    pub fn spawn(devices: Vec<PathBuf>) -> io::Result<Opener> {
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        match crate::sys::fork()? {
            Some(pid) => {
                drop(theirs);
                rustix::net::sockopt::set_socket_timeout(
                    &ours,
                    rustix::net::sockopt::Timeout::Recv,
                    Some(REPLY_TIMEOUT),
                )?;
                Ok(Opener { socket: ours, pid })
            }
            None => {
                drop(ours);
                serve(theirs, &devices)
            }
        }
    }

    /// The opener's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The opener exited (or was killed): it is collected, so that no
    /// zombie stays behind for the daemon's lifetime. Its socket is closed
    /// as it exits, just before it becomes a zombie: a few tries 1 ms apart
    /// (never more than 100 ms in all) cover that gap.
    fn gone(&self) -> io::Error {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            for _ in 0..100 {
                match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
        io::Error::new(io::ErrorKind::UnexpectedEof, "the device opener is gone")
    }

    /// Device `index` of the list given to [`Opener::spawn`], opened by
    /// the opener.
    pub fn open(&self, index: usize) -> io::Result<File> {
        let index = u8::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "device index too large"))?;
        match sendmsg(
            &self.socket,
            &[IoSlice::new(&[index])],
            &mut SendAncillaryBuffer::default(),
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => return Err(self.gone()),
            other => other?,
        };
        let mut errno = [0u8; 4];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = match recvmsg(
            &self.socket,
            &mut [IoSliceMut::new(&mut errno)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => return Err(self.gone()),
            other => other?,
        };
        if received.bytes != 4 {
            return Err(self.gone());
        }
        let mut fds = control.drain().filter_map(|message| match message {
            RecvAncillaryMessage::ScmRights(fds) => Some(fds),
            _ => None,
        });
        let fd = fds.next().and_then(|mut fds| fds.next());
        match (i32::from_le_bytes(errno), fd) {
            (0, Some(fd)) => Ok(File::from(fd)),
            (0, None) => Err(io::Error::other("the device opener sent no descriptor")),
            (errno, _) => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The opener's life: no capabilities, then answer until the daemon goes.
fn serve(socket: OwnedFd, devices: &[PathBuf]) -> ! {
    let _ = thread::set_name(c"timesync-open");
    let prepared = crate::sys::die_with_parent()
        .and_then(|()| close_all_but(&socket))
        .and_then(|()| drop_all_capabilities());
    if let Err(err) = prepared {
        log::error!("device opener: {err}; not serving");
        std::process::exit(1);
    }
    let mut request = [0u8; 1];
    loop {
        let received = match recvmsg(
            &socket,
            &mut [IoSliceMut::new(&mut request)],
            &mut RecvAncillaryBuffer::default(),
            RecvFlags::empty(),
        ) {
            Ok(received) => received,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => std::process::exit(0),
        };
        if received.bytes == 0 {
            std::process::exit(0);
        }
        let reply = devices
            .get(usize::from(request[0]))
            .ok_or(rustix::io::Errno::INVAL)
            .and_then(|path| {
                let fd = rustix::fs::open(
                    path,
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )?;
                let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode);
                if kind == rustix::fs::FileType::CharacterDevice {
                    Ok(fd)
                } else {
                    Err(rustix::io::Errno::NODEV)
                }
            });
        let sent = match &reply {
            Ok(fd) => {
                let fds = [fd.as_fd()];
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                control.push(SendAncillaryMessage::ScmRights(&fds));
                sendmsg(
                    &socket,
                    &[IoSlice::new(&0i32.to_le_bytes())],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
            }
            Err(errno) => sendmsg(
                &socket,
                &[IoSlice::new(&errno.raw_os_error().to_le_bytes())],
                &mut SendAncillaryBuffer::default(),
                SendFlags::NOSIGNAL,
            ),
        };
        if sent.is_err() {
            std::process::exit(0);
        }
    }
}

/// Closes every descriptor but stdin, stdout, stderr and `keep`.
fn close_all_but(keep: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let keep = keep.as_raw_fd();
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && *fd != keep)
        .collect();
    for fd in open {
        crate::sys::close_fd(fd);
    }
    Ok(())
}

/// Empty effective, permitted, inheritable and bounding sets, and
/// no_new_privs: uid 0 with no power beyond owning root's files.
fn drop_all_capabilities() -> io::Result<()> {
    crate::privileges::shrink_bounding_set(CapabilitySet::empty())?;
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::empty(),
            permitted: CapabilitySet::empty(),
            inheritable: CapabilitySet::empty(),
        },
    )?;
    thread::set_no_new_privs(true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root: a root-only device node made in a temporary directory is
    /// opened by the opener for a process that can no longer open it;
    /// anything but a character device, or an index not configured, is
    /// refused with its errno.
    #[test]
    fn opens_configured_devices_for_an_unprivileged_caller() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: the opener is covered by the VM test only");
            return;
        }
        let dir = std::env::temp_dir().join(format!("timesync-opener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let device = dir.join("null0");
        let _ = std::fs::remove_file(&device);
        // /dev/null's numbers (1, 3), root:root 0600.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &device,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o600),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"not a device").unwrap();
        // In a child, so that the test process keeps its privileges.
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "opener::tests::child_side",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("OPENER_TEST_DIR", &dir)
            .status()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(status.success());
    }

    /// The child half of the test above (does nothing on its own).
    #[test]
    fn child_side() {
        let Some(dir) = std::env::var_os("OPENER_TEST_DIR").map(PathBuf::from) else {
            return;
        };
        let device = dir.join("null0");
        // A killed opener: the daemon's next request says so, and the
        // process is collected (no zombie left).
        let doomed = Opener::spawn(vec![device.clone()]).unwrap();
        let pid = rustix::process::Pid::from_raw(doomed.pid()).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        let gone = doomed.open(0).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::UnexpectedEof, "{gone}");
        assert!(
            !std::path::Path::new(&format!("/proc/{}", doomed.pid())).exists(),
            "the killed opener was not collected"
        );
        let opener = Opener::spawn(vec![device.clone(), dir.join("plain")]).unwrap();
        // Become nobody: the device is root's alone now.
        let nobody = rustix::process::Uid::from_raw(65534);
        let nogroup = rustix::process::Gid::from_raw(65534);
        thread::set_thread_groups(&[]).unwrap();
        thread::set_thread_res_gid(nogroup, nogroup, nogroup).unwrap();
        thread::set_thread_res_uid(nobody, nobody, nobody).unwrap();
        let denied = File::open(&device).unwrap_err();
        assert_eq!(denied.raw_os_error(), Some(libc::EACCES));
        let file = opener.open(0).unwrap();
        let stat = rustix::fs::fstat(&file).unwrap();
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(stat.st_mode),
            rustix::fs::FileType::CharacterDevice
        );
        assert_eq!(
            opener.open(1).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert_eq!(
            opener.open(2).unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        // The opener: uid 0, no capabilities, named.
        let status = std::fs::read_to_string(format!("/proc/{}/status", opener.pid())).unwrap();
        assert!(status.contains("Name:\ttimesync-open\n"), "{status}");
        assert!(status.contains("\nUid:\t0\t0\t0\t0\n"), "{status}");
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert!(
                status.contains(&format!("{set}:\t0000000000000000\n")),
                "{set}: {status}"
            );
        }
        assert!(status.contains("NoNewPrivs:\t1\n"), "{status}");
    }
}
