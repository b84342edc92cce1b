//! Whether a unit's `Condition…=` line holds (docs/units.md).

use crate::unit::{Condition, ConditionTest};
use crate::Mode;

/// Whether the test of `c` holds (before its `!`); `mode` tells a VM from
/// a container.
pub fn holds(c: &Condition, mode: Mode) -> bool {
    match &c.test {
        ConditionTest::PathExists(p) => p.exists(),
        ConditionTest::PathIsMountPoint(p) => is_mount_point(p),
        ConditionTest::KernelCommandLine(word) => command_line_has(&command_line(mode), word),
        ConditionTest::Virtualization(what) => virtualization_is(what, mode),
    }
}

/// The kernel's command line in a VM; in a container, PID 1's arguments
/// (init's own: as systemd, which reads the command line of PID 1 there).
fn command_line(mode: Mode) -> String {
    let path = match mode {
        Mode::Vm => "/proc/cmdline",
        Mode::Container => "/proc/1/cmdline",
    };
    crate::sys::read_small(path)
        .map(|s| s.replace('\0', " "))
        .unwrap_or_default()
}

/// systemd's rule: `KEY=VALUE` matches that word; `KEY` matches the word
/// `KEY` or any `KEY=…`.
pub fn command_line_has(line: &str, word: &str) -> bool {
    let (key, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    minos_common::cmdline::params(line)
        .iter()
        .any(|p| minos_common::cmdline::key_is(p.key, key) && (value.is_none() || p.value == value))
}

/// `vm` holds in a VM, `container` in a container, a true boolean in both
/// (init always runs virtualised); a false boolean, and a technology's name
/// (`kvm`, `docker` …, which init does not detect), in neither.
pub fn virtualization_is(what: &str, mode: Mode) -> bool {
    let yes = minos_common::cmdline::parse_bool(what) == Some(true);
    match what {
        "vm" => mode == Mode::Vm,
        "container" => mode == Mode::Container,
        _ => yes,
    }
}

/// Whether a file system is mounted on `path` (statx's mount-root
/// attribute; on kernels without it, a device differing from the
/// parent's).
pub fn is_mount_point(path: &std::path::Path) -> bool {
    let Some(text) = path.to_str() else {
        return false;
    };
    match crate::mounts::probe(text) {
        Some(t) => t == crate::mounts::Target::Mounted,
        None => {
            let dev = |p: &std::path::Path| rustix::fs::stat(p).ok().map(|s| s.st_dev);
            let parent = path.parent().unwrap_or(std::path::Path::new("/"));
            matches!((dev(path), dev(parent)), (Some(a), Some(b)) if a != b)
                || path == std::path::Path::new("/")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_words() {
        let line = "console=ttyS0 quiet agent.log=debug systemd.unit=kata-containers.target";
        assert!(command_line_has(line, "quiet"));
        assert!(command_line_has(line, "agent.log"));
        assert!(command_line_has(line, "agent.log=debug"));
        assert!(!command_line_has(line, "agent.log=info"));
        assert!(!command_line_has(line, "agent"));
        assert!(!command_line_has(line, "console=tty"));
    }

    #[test]
    fn virtualization_values() {
        assert!(virtualization_is("vm", Mode::Vm));
        assert!(!virtualization_is("container", Mode::Vm));
        assert!(virtualization_is("container", Mode::Container));
        assert!(virtualization_is("yes", Mode::Vm));
        assert!(!virtualization_is("no", Mode::Vm));
        assert!(!virtualization_is("kvm", Mode::Vm));
    }

    #[test]
    fn mount_points() {
        assert!(is_mount_point(std::path::Path::new("/proc")));
        assert!(!is_mount_point(std::path::Path::new("/proc/self")));
        assert!(!is_mount_point(std::path::Path::new("/nonexistent")));
    }
}
