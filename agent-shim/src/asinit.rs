//! The shim as PID 1: Kata's `AGENT_INIT=yes` image, where the kernel
//! starts the agent itself and there is no init at all (the benchmark's
//! "agent as init" system).
//!
//! kata-agent then does what systemd would have done for it, and so does
//! the shim: it mounts proc, sysfs, devtmpfs, /dev/shm, devpts and /run
//! (kata-agent's `general_mount`), cgroup2 at /sys/fs/cgroup, sets `PATH`
//! and the hostname (from /etc/hostname, else `localhost`). A mount that is
//! already there (devtmpfs mounted by the kernel) is left as it is; any other
//! failure is reported, naming the target, and the rest goes on.
//!
//! PID 1 must not exit (the kernel panics). Where the shim would exit it
//! syncs and powers the machine off instead, as kata-agent's VM is torn
//! down when the agent ends.

use std::path::Path;

use rustix::mount::MountFlags;

/// One mount of the list, as kata-agent's `INIT_ROOTFS_MOUNTS`.
struct InitMount {
    fstype: &'static str,
    source: &'static str,
    target: &'static str,
    flags: MountFlags,
}

const NOSUID: MountFlags = MountFlags::NOSUID;

fn mounts() -> [InitMount; 7] {
    [
        InitMount {
            fstype: "proc",
            source: "proc",
            target: "/proc",
            flags: NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC),
        },
        InitMount {
            fstype: "sysfs",
            source: "sysfs",
            target: "/sys",
            flags: NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC),
        },
        InitMount {
            fstype: "devtmpfs",
            source: "dev",
            target: "/dev",
            flags: NOSUID,
        },
        InitMount {
            fstype: "tmpfs",
            source: "tmpfs",
            target: "/dev/shm",
            flags: NOSUID.union(MountFlags::NODEV),
        },
        InitMount {
            fstype: "devpts",
            source: "devpts",
            target: "/dev/pts",
            flags: NOSUID.union(MountFlags::NOEXEC),
        },
        InitMount {
            fstype: "tmpfs",
            source: "tmpfs",
            target: "/run",
            flags: NOSUID.union(MountFlags::NODEV),
        },
        InitMount {
            fstype: "cgroup2",
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            flags: NOSUID.union(MountFlags::NODEV).union(MountFlags::NOEXEC),
        },
    ]
}

/// What failed while setting up as PID 1 (each reported, none fatal).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create {target}")]
    CreateDir {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("cannot set the hostname to {0:?}")]
    Hostname(String, #[source] rustix::io::Errno),
}

/// The hostname kata-agent takes: the first word of /etc/hostname, else
/// `localhost`.
pub fn hostname_from(text: Option<&str>) -> String {
    text.and_then(|t| t.split_whitespace().next())
        .unwrap_or("localhost")
        .to_owned()
}

/// Mounts, PATH and hostname; returns what failed. Call before any thread
/// starts (it sets an environment variable).
pub fn setup() -> Vec<SetupError> {
    let mut errors = Vec::new();
    for m in mounts() {
        if let Err(source) = std::fs::create_dir_all(m.target) {
            errors.push(SetupError::CreateDir {
                target: m.target,
                source,
            });
            continue;
        }
        match rustix::mount::mount(m.source, m.target, m.fstype, m.flags, None) {
            // Already mounted there (the kernel mounts devtmpfs itself).
            Ok(()) | Err(rustix::io::Errno::BUSY) => {}
            Err(source) => errors.push(SetupError::Mount {
                fstype: m.fstype,
                target: m.target,
                source,
            }),
        }
    }
    std::env::set_var("PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
    let name = hostname_from(
        std::fs::read_to_string(Path::new("/etc/hostname"))
            .ok()
            .as_deref(),
    );
    if let Err(err) = rustix::system::sethostname(name.as_bytes()) {
        errors.push(SetupError::Hostname(name, err));
    }
    errors
}

/// Syncs and powers off; returns only if reboot(2) failed.
pub fn power_off() -> rustix::io::Errno {
    rustix::fs::sync();
    match rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        Ok(()) => rustix::io::Errno::INVAL,
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_is_the_first_word_or_localhost() {
        assert_eq!(hostname_from(Some("guest\n")), "guest");
        assert_eq!(hostname_from(Some("  a b\n")), "a");
        assert_eq!(hostname_from(Some("\n")), "localhost");
        assert_eq!(hostname_from(None), "localhost");
    }

    #[test]
    fn the_mount_list_is_kata_agents_in_order() {
        let targets: Vec<_> = mounts().iter().map(|m| m.target).collect();
        assert_eq!(
            targets,
            [
                "/proc",
                "/sys",
                "/dev",
                "/dev/shm",
                "/dev/pts",
                "/run",
                "/sys/fs/cgroup"
            ]
        );
        // Each mount comes after the one it sits on.
        for (i, t) in targets.iter().enumerate() {
            for ancestor in Path::new(t).ancestors().skip(1) {
                let mounted_later = targets[i + 1..].iter().any(|p| Path::new(p) == ancestor);
                assert!(!mounted_later, "{t} before {}", ancestor.display());
            }
        }
    }
}
