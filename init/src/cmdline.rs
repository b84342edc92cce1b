//! The kernel command line, as init reads it.
//!
//! `init.*` keys are init's own; `systemd.*` keys are honoured where they
//! have a meaning here and otherwise accepted silently; `agent.*` and every
//! other key belong to someone else and are ignored. [`parse`] is pure and
//! returns every problem at once; a problem never stops the boot.

use std::borrow::Cow;
use std::time::Duration;

use log::LevelFilter;

use crate::logger::parse_level;
use crate::unit::{parse_bool, parse_timespan};

/// Hypervisor boot-phase markers (off by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMarker {
    #[default]
    None,
    /// Firecracker's boot timer: byte 123 written to MMIO 0xc000_0000.
    Firecracker,
    /// Cloud Hypervisor's debug port: a code per phase written to I/O port 0x80.
    CloudHypervisor,
}

/// What init takes from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct BootConfig {
    /// `init.log=`, else `systemd.log_level=`, else `debug` → debug.
    pub log_level: Option<LevelFilter>,
    /// `systemd.show_status=`; `None` = systemd's default (on unless `quiet`).
    pub show_status: Option<bool>,
    pub quiet: bool,
    /// `init.unit=` or `systemd.unit=`: the target or service to start.
    pub unit: Option<String>,
    /// `init.mask=` and `systemd.mask=`: units not to start (repeatable).
    pub masked: Vec<String>,
    /// `systemd.wants=`: extra units to start.
    pub wants: Vec<String>,
    /// `systemd.setenv=VAR=VALUE`: environment for every unit.
    pub setenv: Vec<(String, String)>,
    /// `systemd.unified_cgroup_hierarchy=0`: mount the cgroup v1 layout.
    pub cgroup_v1: bool,
    /// `init.boot_marker=firecracker|cloud-hypervisor|none`.
    pub boot_marker: BootMarker,
    /// `init.timeline=console`: timeline lines also on /dev/console.
    pub timeline_console: bool,
    /// `init.kill_timeout=`: grace between SIGTERM and SIGKILL for the
    /// processes left at shutdown.
    pub kill_timeout: Duration,
    /// `init.shutdown_timeout=`: the most an orderly shutdown waits for
    /// units to stop one by one, whatever their `TimeoutStopSec=`.
    pub shutdown_timeout: Duration,
}

/// The default of `init.shutdown_timeout=`: systemd's default stop timeout
/// of one unit (`DefaultTimeoutStopSec=`), for all of them together.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(90);

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            log_level: None,
            show_status: None,
            quiet: false,
            unit: None,
            masked: Vec::new(),
            wants: Vec::new(),
            setenv: Vec::new(),
            cgroup_v1: false,
            boot_marker: BootMarker::None,
            timeline_console: false,
            kill_timeout: Duration::from_secs(5),
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }
}

impl BootConfig {
    /// Whether unit status lines go to the console.
    pub fn status_on_console(&self) -> bool {
        self.show_status.unwrap_or(!self.quiet)
    }
}

/// One problem with the command line: the word and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub word: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel command line: {}: {}", self.word, self.message)
    }
}

/// Parses the command line. Unknown keys are never an error.
pub fn parse(text: &str) -> (BootConfig, Vec<Problem>) {
    let mut cfg = BootConfig::default();
    let mut problems = Vec::new();
    let mut systemd_level = None;
    let mut debug = false;
    // Split as the kernel splits it (quotes, `-`/`_`), by the one splitter
    // init, agent-shim and timesync share.
    for param in minos_common::cmdline::params(text) {
        let (word, key) = (param.word, param.key);
        // systemd unquotes the whole word (`systemd.setenv=FOO="a b"` is
        // FOO=a b), where the kernel leaves quotes inside a value: init
        // reads systemd's keys as systemd does.
        let value: Option<Cow<'_, str>> = param.value.map(|v| match v.contains('"') {
            true => Cow::Owned(v.replace('"', "")),
            false => Cow::Borrowed(v),
        });
        let value = value.as_deref();
        // Most words are the kernel's own: skip them before any matching
        // (init's first milliseconds are the agent's start time).
        if !(key.starts_with("init.")
            || key.starts_with("systemd.")
            || key == "quiet"
            || key == "debug")
        {
            continue;
        }
        // The kernel treats '-' and '_' in parameter names alike.
        let key = match key.contains('-') {
            true => Cow::Owned(key.replace('-', "_")),
            false => Cow::Borrowed(key),
        };
        let mut bad = |message: String| {
            problems.push(Problem {
                word: word.to_owned(),
                message,
            })
        };
        match (&*key, value) {
            ("quiet", None) => cfg.quiet = true,
            ("debug", None) => debug = true,
            ("init.log", Some(v)) => match parse_level(v) {
                Some(l) => cfg.log_level = Some(l),
                None => bad(
                    "unknown log level (error, warn, info, debug, trace, off); using info".into(),
                ),
            },
            ("init.unit" | "systemd.unit", Some(v)) if !v.is_empty() => {
                cfg.unit = Some(v.to_string())
            }
            ("init.mask" | "systemd.mask", Some(v)) => {
                cfg.masked
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(unit_name));
            }
            ("systemd.wants", Some(v)) => {
                cfg.wants
                    .extend(v.split(',').filter(|s| !s.is_empty()).map(unit_name));
            }
            ("systemd.setenv", Some(v)) => match v.split_once('=') {
                Some((k, val)) if valid_env_name(k) => cfg.setenv.push((k.into(), val.into())),
                _ => bad("expected systemd.setenv=NAME=VALUE; ignored".into()),
            },
            ("systemd.show_status", v) => match v.map_or(Some(true), show_status) {
                Some(s) => cfg.show_status = Some(s),
                None => bad("expected a boolean or auto; using the default".into()),
            },
            ("systemd.log_level", Some(v)) => match parse_level(v) {
                Some(l) => systemd_level = Some(l),
                None => bad("unknown log level; using info".into()),
            },
            ("systemd.unified_cgroup_hierarchy", v) => match v.map_or(Some(true), parse_bool) {
                Some(unified) => cfg.cgroup_v1 = !unified,
                None => bad("expected a boolean; using cgroup v2".into()),
            },
            ("init.boot_marker", Some(v)) => match v {
                "none" | "" => cfg.boot_marker = BootMarker::None,
                "firecracker" => cfg.boot_marker = BootMarker::Firecracker,
                "cloud-hypervisor" | "cloud_hypervisor" => {
                    cfg.boot_marker = BootMarker::CloudHypervisor
                }
                _ => bad("expected firecracker, cloud-hypervisor or none; markers off".into()),
            },
            ("init.timeline", Some(v)) => match v {
                "console" => cfg.timeline_console = true,
                "kmsg" => cfg.timeline_console = false,
                _ => bad("expected console or kmsg; using kmsg".into()),
            },
            ("init.kill_timeout", Some(v)) => match parse_timespan(v) {
                Some(d) => cfg.kill_timeout = d,
                None => bad("expected a time span such as 5s; using 5s".into()),
            },
            ("init.shutdown_timeout", Some(v)) => match parse_timespan(v) {
                Some(d) if d != Duration::MAX && !d.is_zero() => cfg.shutdown_timeout = d,
                _ => bad(format!(
                    "expected a finite time span such as 90s (shutdown must end); using {}s",
                    SHUTDOWN_TIMEOUT.as_secs()
                )),
            },
            (k, _) if k.starts_with("init.") => bad("unknown init key; ignored".into()),
            // systemd.*, agent.*, and the kernel's own parameters.
            _ => {}
        }
    }
    cfg.log_level = cfg
        .log_level
        .or(systemd_level)
        .or(debug.then_some(LevelFilter::Debug));
    (cfg, problems)
}

/// `systemd.mask=foo` means `foo.service`, as in systemd.
fn unit_name(s: &str) -> String {
    if s.contains('.') {
        s.to_string()
    } else {
        format!("{s}.service")
    }
}

fn show_status(v: &str) -> Option<bool> {
    match v {
        "auto" | "error" => Some(false),
        v => parse_bool(v),
    }
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KATA: &str = include_str!("../../tests/fixtures/kata/kernel-cmdline-qemu-x86.txt");

    fn kata_lines() -> Vec<&'static str> {
        KATA.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect()
    }

    #[test]
    fn kata_qemu_command_line_is_accepted_without_problems() {
        let line = kata_lines()[0];
        let (cfg, problems) = parse(line);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.unit.as_deref(), Some("kata-containers.target"));
        assert_eq!(
            cfg.masked,
            vec!["systemd-networkd.service", "systemd-networkd.socket"]
        );
        assert_eq!(cfg.show_status, Some(false));
        assert!(cfg.quiet);
        assert!(!cfg.status_on_console());
        assert_eq!(cfg.log_level, None);
        assert!(!cfg.cgroup_v1);
    }

    #[test]
    fn kata_debug_variant() {
        let extra = "debug systemd.show_status=true systemd.log_level=debug agent.log=debug \
                     agent.debug_console agent.debug_console_vport=1026";
        let (cfg, problems) = parse(&format!("{} {extra}", kata_lines()[0]));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.log_level, Some(LevelFilter::Debug));
        assert_eq!(cfg.show_status, Some(true));
    }

    #[test]
    fn other_hypervisor_variants_are_accepted() {
        for v in [
            "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4",
            "pci=off reboot=k panic=1 iommu=off net.ifnames=0 random.trust_cpu=on acpi=off 8250.nr_uarts=0 agent.log_vport=1025",
            "console=ttyS0,115200n8 systemd.log_target=console",
        ] {
            let (_, problems) = parse(v);
            assert!(problems.is_empty(), "{v}: {problems:?}");
        }
    }

    #[test]
    fn shutdown_timeout_is_a_finite_span() {
        let (cfg, problems) = parse("init.shutdown_timeout=2min");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(BootConfig::default().shutdown_timeout, SHUTDOWN_TIMEOUT);
        for bad in ["infinity", "0", "soon"] {
            let (cfg, problems) = parse(&format!("init.shutdown_timeout={bad}"));
            assert_eq!(cfg.shutdown_timeout, SHUTDOWN_TIMEOUT, "{bad}");
            assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
            assert!(
                problems[0].message.contains("shutdown must end"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn init_keys_take_precedence_and_bad_values_name_the_word() {
        let (cfg, problems) = parse(
            "systemd.log_level=debug init.log=warn init.mask=a,b.service init.unit=x.target \
             init.kill_timeout=2s init.boot_marker=firecracker init.bogus=1 init.log=loud \
             init.timeline=console",
        );
        assert_eq!(cfg.log_level, Some(LevelFilter::Warn));
        assert_eq!(cfg.masked, vec!["a.service", "b.service"]);
        assert_eq!(cfg.unit.as_deref(), Some("x.target"));
        assert_eq!(cfg.kill_timeout, Duration::from_secs(2));
        assert_eq!(cfg.boot_marker, BootMarker::Firecracker);
        assert!(cfg.timeline_console);
        assert_eq!(problems.len(), 2);
        assert_eq!(problems[0].word, "init.bogus=1");
        assert!(problems[0].message.contains("unknown init key"));
        assert_eq!(problems[1].word, "init.log=loud");
        assert!(problems[1]
            .to_string()
            .starts_with("kernel command line: init.log=loud: "));
    }

    #[test]
    fn cgroup_layout_and_setenv_and_quotes() {
        let (cfg, problems) = parse(
            "systemd.unified_cgroup_hierarchy=0 systemd.setenv=FOO=\"a b\" systemd.setenv=1X=2 \
             systemd.wants=extra",
        );
        assert!(cfg.cgroup_v1);
        assert_eq!(cfg.setenv, vec![("FOO".to_string(), "a b".to_string())]);
        assert_eq!(cfg.wants, vec!["extra.service"]);
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].word, "systemd.setenv=1X=2");
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn unknown_non_init_keys_are_never_problems(
            keys in proptest::collection::vec("(agent|systemd|foo|kvm)\\.[a-z_]{1,12}(=[!-~&&[^\"]]{0,12})?", 0..20)
        ) {
            let line = keys.join(" ");
            let (_, problems) = parse(&line);
            // Only the systemd keys init gives a meaning to can be malformed.
            for p in problems {
                prop_assert!(p.word.starts_with("systemd."), "{:?}", p);
            }
        }
    }
}
