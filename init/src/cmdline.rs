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

/// Splits the command line into words as the kernel does: whitespace
/// separates, double quotes group (`key="a b"` → `key=a b`).
pub fn words(text: &str) -> Vec<Cow<'_, str>> {
    // Borrows each word without quotes (nearly all) and copies only quoted
    // ones, by runs, byte by byte over ASCII (a char is decoded only where a
    // byte is not ASCII): this runs in PID 1's first milliseconds, where an
    // allocation per word was half of the parse.
    let bytes = text.as_bytes();
    // About one word per 16 bytes on Kata's lines: no regrowth.
    let mut out = Vec::with_capacity(text.len() / 16 + 1);
    // The word so far, once it has had a quote.
    let mut quoted: Option<String> = None;
    let mut in_quotes = false;
    let mut have = false;
    // Where the current unquoted run starts (the word, while unquoted).
    let mut run = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let (space, len) = if b.is_ascii() {
            (b.is_ascii_whitespace() || b == 0x0b, 1)
        } else {
            let c = text.get(i..).and_then(|t| t.chars().next());
            (
                c.is_some_and(char::is_whitespace),
                c.map_or(1, char::len_utf8),
            )
        };
        if b == b'"' {
            let piece = text.get(run..i).unwrap_or_default();
            quoted.get_or_insert_with(String::new).push_str(piece);
            run = i + 1;
            in_quotes = !in_quotes;
            have = true;
        } else if space && !in_quotes {
            if have {
                out.push(word_at(text, &mut quoted, run, i));
                have = false;
            }
            run = i + len;
        } else {
            have = true;
        }
        i += len;
    }
    if have {
        out.push(word_at(text, &mut quoted, run, bytes.len()));
    }
    out
}

/// The word ending at `end`: the unquoted run `run..end`, after what
/// `quoted` holds when the word had quotes.
fn word_at<'t>(text: &'t str, quoted: &mut Option<String>, run: usize, end: usize) -> Cow<'t, str> {
    let piece = text.get(run..end).unwrap_or_default();
    match quoted.take() {
        Some(mut w) => {
            w.push_str(piece);
            Cow::Owned(w)
        }
        None => Cow::Borrowed(piece),
    }
}

/// Parses the command line. Unknown keys are never an error.
pub fn parse(text: &str) -> (BootConfig, Vec<Problem>) {
    let mut cfg = BootConfig::default();
    let mut problems = Vec::new();
    let mut systemd_level = None;
    let mut debug = false;
    for word in words(text) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (&*word, None),
        };
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
                word: word.to_string(),
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

    #[test]
    fn words_split_like_the_kernel() {
        assert_eq!(words("  a  b=\"c d\" \"e\"  "), vec!["a", "b=c d", "e"]);
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("x=\"\""), vec!["x="]);
    }

    /// The splitting rule written the obvious way, char by char.
    fn words_reference(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let (mut in_quotes, mut have) = (false, false);
        for c in text.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    have = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if have {
                        out.push(std::mem::take(&mut cur));
                        have = false;
                    }
                }
                c => {
                    cur.push(c);
                    have = true;
                }
            }
        }
        if have {
            out.push(cur);
        }
        out
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn words_match_the_char_by_char_rule(s in "([a-z=\".]|[ \t\n\r\u{b}\u{c}]|\u{a0}|\u{2003}|é){0,60}") {
            prop_assert_eq!(words(&s), words_reference(&s).into_iter().map(Cow::<str>::Owned).collect::<Vec<_>>());
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
