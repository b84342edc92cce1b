//! `/etc/timesync.conf`: a subset of chrony's configuration syntax.
//!
//! Supported now (the directives Kata's guest uses, plus NTP sources):
//!
//! ```text
//! refclock PHC /dev/ptpN [poll N] [dpoll N] [offset SECONDS]
//! server HOST [iburst] [minpoll N] [maxpoll N] [port N]
//! pool HOST   [iburst] [minpoll N] [maxpoll N] [port N]
//! makestep THRESHOLD LIMIT
//! maxdistance SECONDS
//! maxslewrate PPM
//! ```
//!
//! Lexical rules follow chrony's `CPS_NormalizeLine`: words are separated by
//! white space, a line whose first word starts with `#`, `!`, `;` or `%` is a
//! comment (there are no trailing comments), directive and option names are
//! case-insensitive, refclock driver names are not.
//!
//! [`parse_config`] is pure and total: every problem becomes a [`Diagnostic`]
//! with its line number, and the value in question keeps its default.
//! Chrony directives and options that are valid but not implemented yet are
//! warnings; anything chrony itself would reject is an error.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::SplitWhitespace;

/// chrony's default `maxdistance`, in seconds.
pub const DEFAULT_MAX_DISTANCE: f64 = 3.0;
/// chrony's default `maxslewrate`, ppm (1/12).
pub const DEFAULT_MAX_SLEW_RATE: f64 = 1e6 / 12.0;
/// The largest `maxslewrate` Linux allows: the tick length's ±10 %, ppm.
pub const MAX_SLEW_RATE_LIMIT: f64 = 100_000.0;
/// chrony's refclock defaults.
pub const DEFAULT_REFCLOCK_POLL: i8 = 4;
pub const DEFAULT_REFCLOCK_DPOLL: i8 = 0;
/// chrony's NTP source defaults.
pub const DEFAULT_MINPOLL: i8 = 6;
pub const DEFAULT_MAXPOLL: i8 = 10;
pub const DEFAULT_NTP_PORT: u16 = 123;

/// Range chrony accepts for poll intervals (log2 seconds).
const POLL_RANGE: RangeInclusive<i64> = -32..=32;
const PORT_RANGE: RangeInclusive<i64> = 0..=65535;
/// chrony's `polltarget` range.
const POLL_TARGET_RANGE: RangeInclusive<i64> = 6..=60;
/// timesync's default `polltarget`: samples' worth of weight (chrony's
/// default, 8, counts plain samples; see [`crate::ntp::NtpServer::steer_poll`]).
pub const DEFAULT_POLL_TARGET: u32 = 16;

/// The parsed configuration. Missing directives leave chrony's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub refclocks: Vec<PhcRefclock>,
    pub ntp_sources: Vec<NtpSource>,
    /// `None`: never step, only slew (chrony's default without `makestep`).
    pub makestep: Option<MakeStep>,
    /// Seconds; sources with a larger root distance are not selected.
    pub max_distance: f64,
    /// `maxslewrate`, ppm: the fastest an offset is slewed away.
    pub max_slew_rate_ppm: f64,
    /// A larger step is refused (`timesync.max_step=` on the kernel
    /// command line); `None`: no limit, as chrony.
    pub max_step: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            refclocks: Vec::new(),
            ntp_sources: Vec::new(),
            makestep: None,
            max_distance: DEFAULT_MAX_DISTANCE,
            max_slew_rate_ppm: DEFAULT_MAX_SLEW_RATE,
            max_step: None,
        }
    }
}

impl Config {
    /// Reference clocks plus NTP servers and pools (a pool counts once).
    pub fn source_count(&self) -> usize {
        self.refclocks.len() + self.ntp_sources.len()
    }
}

/// `refclock PHC DEVICE[:OPTION...] ...`: a PTP hardware clock such as
/// ptp_kvm's `/dev/ptp0`.
#[derive(Debug, Clone, PartialEq)]
pub struct PhcRefclock {
    /// Line of the directive, for later messages about this source.
    pub line: usize,
    pub device: PathBuf,
    /// chrony's `:`-separated driver options (`nocrossts`, `extpps`, ...),
    /// kept but not interpreted yet.
    pub device_options: Vec<String>,
    /// log2 seconds between updates of the source.
    pub poll: i8,
    /// log2 seconds between reads of the device.
    pub dpoll: i8,
    /// Seconds added to the clock's readings.
    pub offset: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtpSourceKind {
    Server,
    Pool,
}

/// `server HOST ...` or `pool HOST ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtpSource {
    pub line: usize,
    pub kind: NtpSourceKind,
    pub host: String,
    pub iburst: bool,
    pub minpoll: i8,
    pub maxpoll: i8,
    pub port: u16,
    /// `polltarget N` (6–60): the poll follows the regression while the
    /// clock uses this source ([`crate::ntp::NtpServer::steer_poll`]).
    pub polltarget: u32,
}

/// `makestep THRESHOLD LIMIT`: step the clock when the offset exceeds
/// `threshold` seconds, during the first `limit` updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MakeStep {
    pub threshold: f64,
    pub limit: StepLimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepLimit {
    /// A negative limit in the file: step at any time (Kata: `makestep 1 -1`).
    Unlimited,
    /// Step only during the first N clock updates.
    Updates(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Understood and ignored (not implemented yet, or not chrony syntax).
    Warning,
    /// Invalid; the affected value keeps its default.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One problem in the file. `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.severity, self.message)
    }
}

/// chrony directives that timesync does not implement yet. Using one is a
/// warning, not an error: the file is valid chrony syntax.
const CHRONY_DIRECTIVES: &[&str] = &[
    "acquisitionport",
    "allow",
    "authselectmode",
    "bindacqaddress",
    "bindacqdevice",
    "bindaddress",
    "bindcmdaddress",
    "bindcmddevice",
    "binddevice",
    "broadcast",
    "clientloglimit",
    "clockprecision",
    "cmdallow",
    "cmddeny",
    "cmdport",
    "cmdratelimit",
    "combinelimit",
    "commandkey",
    "confdir",
    "corrtimeratio",
    "deny",
    "driftfile",
    "dscp",
    "dumpdir",
    "dumponexit",
    "fallbackdrift",
    "generatecommandkey",
    "hwclockfile",
    "hwtimestamp",
    "hwtstimeout",
    "include",
    "initstepslew",
    "keyfile",
    "leapsecmode",
    "leapseclist",
    "leapsectz",
    "linux_freq_scale",
    "linux_hz",
    "local",
    "lock_all",
    "log",
    "logbanner",
    "logchange",
    "logdir",
    "mailonchange",
    "manual",
    "maxchange",
    "maxclockerror",
    "maxdrift",
    "maxjitter",
    "maxntsconnections",
    "maxsamples",
    "maxupdateskew",
    "minsamples",
    "minsources",
    "nocerttimecheck",
    "noclientlog",
    "nosystemcert",
    "ntpsigndsocket",
    "ntsaeads",
    "ntscachedir",
    "ntsdumpdir",
    "ntsntpserver",
    "ntsport",
    "ntsprocesses",
    "ntsratelimit",
    "ntsrefresh",
    "ntsrotate",
    "ntsservercert",
    "ntsserverkey",
    "ntstrustedcerts",
    "opencommands",
    "peer",
    "pidfile",
    "port",
    "ptpdomain",
    "ptpport",
    "ratelimit",
    "refresh",
    "reselectdist",
    "rtcautotrim",
    "rtcdevice",
    "rtcfile",
    "rtconutc",
    "rtcsync",
    "sched_priority",
    "smoothtime",
    "sourcedir",
    "stratumweight",
    "tempcomp",
    "user",
];

/// chrony refclock drivers other than PHC.
const OTHER_REFCLOCK_DRIVERS: &[&str] = &["SHM", "SOCK", "PPS", "RTC"];

/// chrony refclock options not implemented yet: (name, takes a value).
const REFCLOCK_OPTIONS_LATER: &[(&str, bool)] = &[
    ("refid", true),
    ("lock", true),
    ("filter", true),
    ("rate", true),
    ("minsamples", true),
    ("maxsamples", true),
    ("maxlockage", true),
    ("delay", true),
    ("precision", true),
    ("maxdispersion", true),
    ("stratum", true),
    ("width", true),
    ("local", false),
    ("pps", false),
    ("tai", false),
    ("noselect", false),
    ("prefer", false),
    ("require", false),
    ("trust", false),
];

/// chrony server/pool options not implemented yet: (name, takes a value).
const SOURCE_OPTIONS_LATER: &[(&str, bool)] = &[
    ("asymmetry", true),
    ("certset", true),
    ("extfield", true),
    ("filter", true),
    ("key", true),
    ("maxdelay", true),
    ("maxdelaydevratio", true),
    ("maxdelayquant", true),
    ("maxdelayratio", true),
    ("maxsamples", true),
    ("maxsources", true),
    ("mindelay", true),
    ("minsamples", true),
    ("minstratum", true),
    ("ntsport", true),
    ("offset", true),
    ("presend", true),
    ("version", true),
    ("auto_offline", false),
    ("burst", false),
    ("copy", false),
    ("ipv4", false),
    ("ipv6", false),
    ("noselect", false),
    ("nts", false),
    ("offline", false),
    ("prefer", false),
    ("require", false),
    ("trust", false),
    ("xleave", false),
];

/// Parses the text of a configuration file. Never fails: problems are
/// returned as diagnostics, in line order, next to a usable [`Config`].
pub fn parse_config(text: &str) -> (Config, Vec<Diagnostic>) {
    let mut config = Config::default();
    let mut diagnostics = Vec::new();
    for (index, text) in text.lines().enumerate() {
        let mut words = text.split_whitespace();
        let Some(directive) = words.next() else {
            continue;
        };
        if directive.starts_with(['#', '!', ';', '%']) {
            continue;
        }
        let mut line = Line {
            number: index + 1,
            words,
            diagnostics: &mut diagnostics,
        };
        match directive.to_ascii_lowercase().as_str() {
            "refclock" => {
                if let Some(refclock) = line.refclock() {
                    config.refclocks.push(refclock);
                }
            }
            "server" => {
                if let Some(source) = line.ntp_source(NtpSourceKind::Server, directive) {
                    config.ntp_sources.push(source);
                }
            }
            "pool" => {
                if let Some(source) = line.ntp_source(NtpSourceKind::Pool, directive) {
                    config.ntp_sources.push(source);
                }
            }
            "makestep" => config.makestep = line.makestep(directive),
            "maxdistance" => config.max_distance = line.max_distance(directive),
            "maxslewrate" => config.max_slew_rate_ppm = line.max_slew_rate(directive),
            known if CHRONY_DIRECTIVES.contains(&known) => line.warning(format!(
                "directive `{directive}` is not supported yet, line ignored"
            )),
            _ => line.warning(format!("unknown directive `{directive}`, line ignored")),
        }
    }
    (config, diagnostics)
}

/// The words of one line after the directive, and where its diagnostics go.
struct Line<'t, 'd> {
    number: usize,
    words: SplitWhitespace<'t>,
    diagnostics: &'d mut Vec<Diagnostic>,
}

impl<'t> Line<'t, '_> {
    fn push(&mut self, severity: Severity, message: String) {
        self.diagnostics.push(Diagnostic {
            line: self.number,
            severity,
            message,
        });
    }

    fn warning(&mut self, message: String) {
        self.push(Severity::Warning, message);
    }

    fn error(&mut self, message: String) {
        self.push(Severity::Error, message);
    }

    /// The value after an option: an integer in `range`. On error reports
    /// it and returns `default`.
    fn int_value(&mut self, option: &str, range: RangeInclusive<i64>, default: i64) -> i64 {
        let expected = format!("integer from {} to {}", range.start(), range.end());
        let Some(word) = self.words.next() else {
            self.error(format!(
                "missing value for `{option}` ({expected}), using default {default}"
            ));
            return default;
        };
        match word.parse::<i64>() {
            Ok(value) if range.contains(&value) => value,
            _ => {
                self.error(format!(
                    "invalid value `{word}` for `{option}` ({expected}), using default {default}"
                ));
                default
            }
        }
    }

    /// [`int_value`](Self::int_value) for a poll exponent.
    fn poll_value(&mut self, option: &str, default: i8) -> i8 {
        let value = self.int_value(option, POLL_RANGE, default.into());
        i8::try_from(value).unwrap_or(default)
    }

    /// The value after an option: a finite number. On error reports it and
    /// returns `default`.
    fn float_value(&mut self, option: &str, default: f64) -> f64 {
        let Some(word) = self.words.next() else {
            self.error(format!(
                "missing value for `{option}` (number), using default {default}"
            ));
            return default;
        };
        match parse_finite(word) {
            Some(value) => value,
            None => {
                self.error(format!(
                    "invalid value `{word}` for `{option}` (number), using default {default}"
                ));
                default
            }
        }
    }

    /// Handles an option that the parser does not implement: a warning for
    /// a chrony option from `later` (its value, if any, is skipped), else an
    /// error. Returns false when parsing of the line must stop, because the
    /// words after an unknown option cannot be interpreted safely.
    fn other_option(&mut self, option: &str, later: &[(&str, bool)], directive: &str) -> bool {
        let lower = option.to_ascii_lowercase();
        match later.iter().find(|(name, _)| *name == lower) {
            Some((_, takes_value)) => {
                if *takes_value {
                    self.words.next();
                }
                self.warning(format!(
                    "`{directive}` option `{option}` is not supported yet, ignored"
                ));
                true
            }
            None => {
                self.error(format!(
                    "unknown `{directive}` option `{option}`, rest of line ignored"
                ));
                false
            }
        }
    }

    fn refclock(&mut self) -> Option<PhcRefclock> {
        let (Some(driver), Some(parameter)) = (self.words.next(), self.words.next()) else {
            self.error("`refclock` needs a driver and a device, line ignored".into());
            return None;
        };
        if driver != "PHC" {
            if OTHER_REFCLOCK_DRIVERS.contains(&driver) {
                self.warning(format!(
                    "refclock driver `{driver}` is not supported yet, line ignored"
                ));
            } else {
                self.error(format!(
                    "unknown refclock driver `{driver}` (driver names are case-sensitive), \
                     line ignored"
                ));
            }
            return None;
        }
        let mut parts = parameter.split(':');
        let device = parts.next().unwrap_or_default();
        if device.is_empty() {
            self.error(format!(
                "refclock PHC parameter `{parameter}` has no device path, line ignored"
            ));
            return None;
        }
        let device_options: Vec<String> = parts.map(str::to_owned).collect();
        if !device_options.is_empty() {
            self.warning(format!(
                "PHC device options `{}` are not supported yet, ignored",
                device_options.join(":")
            ));
        }
        let mut refclock = PhcRefclock {
            line: self.number,
            device: PathBuf::from(device),
            device_options,
            poll: DEFAULT_REFCLOCK_POLL,
            dpoll: DEFAULT_REFCLOCK_DPOLL,
            offset: 0.0,
        };
        while let Some(option) = self.words.next() {
            match option.to_ascii_lowercase().as_str() {
                "poll" => refclock.poll = self.poll_value(option, DEFAULT_REFCLOCK_POLL),
                "dpoll" => refclock.dpoll = self.poll_value(option, DEFAULT_REFCLOCK_DPOLL),
                "offset" => refclock.offset = self.float_value(option, 0.0),
                _ => {
                    if !self.other_option(option, REFCLOCK_OPTIONS_LATER, "refclock") {
                        break;
                    }
                }
            }
        }
        Some(refclock)
    }

    fn ntp_source(&mut self, kind: NtpSourceKind, directive: &str) -> Option<NtpSource> {
        let Some(host) = self.words.next() else {
            self.error(format!("`{directive}` needs a host name, line ignored"));
            return None;
        };
        let mut source = NtpSource {
            line: self.number,
            kind,
            host: host.to_owned(),
            iburst: false,
            minpoll: DEFAULT_MINPOLL,
            maxpoll: DEFAULT_MAXPOLL,
            port: DEFAULT_NTP_PORT,
            polltarget: DEFAULT_POLL_TARGET,
        };
        while let Some(option) = self.words.next() {
            match option.to_ascii_lowercase().as_str() {
                "iburst" => source.iburst = true,
                "minpoll" => source.minpoll = self.poll_value(option, DEFAULT_MINPOLL),
                "maxpoll" => source.maxpoll = self.poll_value(option, DEFAULT_MAXPOLL),
                "polltarget" => {
                    let target =
                        self.int_value(option, POLL_TARGET_RANGE, DEFAULT_POLL_TARGET.into());
                    source.polltarget = u32::try_from(target).unwrap_or(DEFAULT_POLL_TARGET);
                }
                "port" => {
                    let port = self.int_value(option, PORT_RANGE, DEFAULT_NTP_PORT.into());
                    source.port = u16::try_from(port).unwrap_or(DEFAULT_NTP_PORT);
                }
                _ => {
                    if !self.other_option(option, SOURCE_OPTIONS_LATER, directive) {
                        break;
                    }
                }
            }
        }
        Some(source)
    }

    /// `makestep THRESHOLD LIMIT`. Any error leaves stepping disabled, the
    /// default, rather than guessing half of the directive.
    fn makestep(&mut self, directive: &str) -> Option<MakeStep> {
        let words: Vec<&str> = self.words.by_ref().collect();
        let [threshold, limit] = words[..] else {
            self.error(format!(
                "`{directive}` needs 2 values (threshold and limit), found {}; \
                 stepping stays disabled",
                words.len()
            ));
            return None;
        };
        let threshold = match parse_finite(threshold) {
            Some(value) if value >= 0.0 => value,
            _ => {
                self.error(format!(
                    "invalid threshold `{threshold}` for `{directive}` \
                     (non-negative number of seconds); stepping stays disabled"
                ));
                return None;
            }
        };
        let limit = match limit.parse::<i64>() {
            Ok(value) if value < 0 => StepLimit::Unlimited,
            Ok(value) => match u32::try_from(value) {
                Ok(updates) => StepLimit::Updates(updates),
                Err(_) => {
                    self.error(format!(
                        "limit `{limit}` for `{directive}` is too large; \
                         stepping stays disabled"
                    ));
                    return None;
                }
            },
            Err(_) => {
                self.error(format!(
                    "invalid limit `{limit}` for `{directive}` \
                     (integer, negative for no limit); stepping stays disabled"
                ));
                return None;
            }
        };
        Some(MakeStep { threshold, limit })
    }

    /// `maxdistance SECONDS`; errors give the default.
    fn max_distance(&mut self, directive: &str) -> f64 {
        let words: Vec<&str> = self.words.by_ref().collect();
        let [word] = words[..] else {
            self.error(format!(
                "`{directive}` needs 1 value, found {}; using default {DEFAULT_MAX_DISTANCE}",
                words.len()
            ));
            return DEFAULT_MAX_DISTANCE;
        };
        match parse_finite(word) {
            Some(value) if value > 0.0 => value,
            _ => {
                self.error(format!(
                    "invalid value `{word}` for `{directive}` (positive number of seconds), \
                     using default {DEFAULT_MAX_DISTANCE}"
                ));
                DEFAULT_MAX_DISTANCE
            }
        }
    }
}

impl Line<'_, '_> {
    /// `maxslewrate PPM`; errors give the default, a rate beyond what the
    /// kernel can apply is lowered to it.
    fn max_slew_rate(&mut self, directive: &str) -> f64 {
        let words: Vec<&str> = self.words.by_ref().collect();
        let [word] = words[..] else {
            self.error(format!(
                "`{directive}` needs 1 value, found {}; using default {DEFAULT_MAX_SLEW_RATE:.3}",
                words.len()
            ));
            return DEFAULT_MAX_SLEW_RATE;
        };
        match parse_finite(word) {
            Some(value) if value > MAX_SLEW_RATE_LIMIT => {
                self.warning(format!(
                    "`{directive}` {word} is more than Linux's tick length allows; \
                     using {MAX_SLEW_RATE_LIMIT}"
                ));
                MAX_SLEW_RATE_LIMIT
            }
            Some(value) if value > 0.0 => value,
            _ => {
                self.error(format!(
                    "invalid value `{word}` for `{directive}` (positive number of ppm), \
                     using default {DEFAULT_MAX_SLEW_RATE:.3}"
                ));
                DEFAULT_MAX_SLEW_RATE
            }
        }
    }
}

/// A decimal number as chrony's `%lf` would read a whole word, without
/// `inf`/`nan`.
fn parse_finite(word: &str) -> Option<f64> {
    word.parse::<f64>().ok().filter(|value| value.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines Kata appends to chrony.conf (tests/fixtures/kata).
    const KATA: &str = "\
refclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0
# Step the system clock instead of slewing it if the adjustment is larger than
# one second, at any time
makestep 1 -1
";

    fn kata_refclock() -> PhcRefclock {
        PhcRefclock {
            line: 1,
            device: PathBuf::from("/dev/ptp0"),
            device_options: Vec::new(),
            poll: 3,
            dpoll: -2,
            offset: 0.0,
        }
    }

    fn server(line: usize, host: &str) -> NtpSource {
        NtpSource {
            line,
            kind: NtpSourceKind::Server,
            host: host.into(),
            iburst: false,
            polltarget: DEFAULT_POLL_TARGET,
            minpoll: DEFAULT_MINPOLL,
            maxpoll: DEFAULT_MAXPOLL,
            port: DEFAULT_NTP_PORT,
        }
    }

    fn error(line: usize, message: &str) -> Diagnostic {
        Diagnostic {
            line,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    fn warning(line: usize, message: &str) -> Diagnostic {
        Diagnostic {
            line,
            severity: Severity::Warning,
            message: message.into(),
        }
    }

    /// Parses and checks the diagnostics, returns the config.
    fn parse_expecting(text: &str, expected: &[Diagnostic]) -> Config {
        let (config, diagnostics) = parse_config(text);
        assert_eq!(diagnostics, expected, "for {text:?}");
        config
    }

    #[test]
    fn kata_lines_parse_cleanly() {
        let config = parse_expecting(KATA, &[]);
        assert_eq!(config.refclocks, [kata_refclock()]);
        assert_eq!(
            config.makestep,
            Some(MakeStep {
                threshold: 1.0,
                limit: StepLimit::Unlimited
            })
        );
        assert!(config.ntp_sources.is_empty());
        assert_eq!(config.max_distance, DEFAULT_MAX_DISTANCE);
        assert_eq!(config.source_count(), 1);
    }

    #[test]
    fn kata_fixture_file_parses_cleanly() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/kata/chrony-kata.conf"
        );
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|err| panic!("Kata reference fixture {path} is missing: {err}"));
        let config = parse_expecting(&text, &[]);
        assert_eq!(config.refclocks, [kata_refclock()]);
        assert_eq!(config.makestep.map(|m| m.limit), Some(StepLimit::Unlimited));
    }

    #[test]
    fn empty_file_gives_chrony_defaults() {
        assert_eq!(parse_expecting("", &[]), Config::default());
        assert_eq!(parse_expecting("\n   \n\t\n", &[]), Config::default());
    }

    #[test]
    fn comments_start_a_line_only() {
        let text = "# hash\n! bang\n; semicolon\n% percent\n   #indented\n#server a\n";
        assert_eq!(parse_expecting(text, &[]), Config::default());
        // As in chrony, a comment character later in a line is just a word.
        let config = parse_expecting(
            "server a # note",
            &[error(
                1,
                "unknown `server` option `#`, rest of line ignored",
            )],
        );
        assert_eq!(config.ntp_sources, [server(1, "a")]);
    }

    #[test]
    fn names_are_case_insensitive_and_spacing_free() {
        let config = parse_expecting(
            "  REFCLOCK\tPHC  /dev/ptp1   POLL 2 DPoll 1 Offset -0.5  \r\nMakeStep 0.1 3\r\n",
            &[],
        );
        assert_eq!(
            config.refclocks,
            [PhcRefclock {
                device: "/dev/ptp1".into(),
                poll: 2,
                dpoll: 1,
                offset: -0.5,
                ..kata_refclock()
            }]
        );
        assert_eq!(
            config.makestep,
            Some(MakeStep {
                threshold: 0.1,
                limit: StepLimit::Updates(3)
            })
        );
    }

    #[test]
    fn refclock_defaults() {
        let config = parse_expecting("refclock PHC /dev/ptp0", &[]);
        assert_eq!(
            config.refclocks,
            [PhcRefclock {
                poll: 4,
                dpoll: 0,
                ..kata_refclock()
            }]
        );
    }

    #[test]
    fn servers_and_pools_with_options() {
        let text = "server ntp.example.com iburst minpoll 4 maxpoll 8 port 10123 polltarget 30\n\
                    pool pool.example.org iburst\n\
                    server 192.0.2.1\n";
        let config = parse_expecting(text, &[]);
        assert_eq!(
            config.ntp_sources,
            [
                NtpSource {
                    iburst: true,
                    minpoll: 4,
                    maxpoll: 8,
                    port: 10123,
                    polltarget: 30,
                    ..server(1, "ntp.example.com")
                },
                NtpSource {
                    kind: NtpSourceKind::Pool,
                    iburst: true,
                    ..server(2, "pool.example.org")
                },
                server(3, "192.0.2.1"),
            ]
        );
        assert_eq!(config.source_count(), 3);
    }

    #[test]
    fn max_distance() {
        assert_eq!(parse_expecting("maxdistance 16", &[]).max_distance, 16.0);
        assert_eq!(parse_expecting("maxdistance 0.5", &[]).max_distance, 0.5);
    }

    #[test]
    fn max_slew_rate() {
        assert_eq!(
            parse_expecting("", &[]).max_slew_rate_ppm,
            DEFAULT_MAX_SLEW_RATE
        );
        assert_eq!(
            parse_expecting("maxslewrate 500", &[]).max_slew_rate_ppm,
            500.0
        );
        assert_eq!(
            parse_expecting("MaxSlewRate 1e5", &[]).max_slew_rate_ppm,
            100_000.0
        );
        let (config, diagnostics) = parse_config("maxslewrate 200000\n");
        assert_eq!(config.max_slew_rate_ppm, MAX_SLEW_RATE_LIMIT);
        assert_eq!(diagnostics.len(), 1);
        assert_eq!(diagnostics[0].severity, Severity::Warning);
        assert_eq!(diagnostics[0].line, 1);
        assert!(diagnostics[0].message.contains("200000"), "{diagnostics:?}");
        for bad in [
            "maxslewrate",
            "maxslewrate 0",
            "maxslewrate -5",
            "maxslewrate x",
            "maxslewrate nan",
            "maxslewrate 1 2",
        ] {
            let (config, diagnostics) = parse_config(bad);
            assert_eq!(config.max_slew_rate_ppm, DEFAULT_MAX_SLEW_RATE, "{bad}");
            assert_eq!(diagnostics.len(), 1, "{bad}");
            assert_eq!(diagnostics[0].severity, Severity::Error, "{bad}");
            assert!(
                diagnostics[0].message.contains("maxslewrate"),
                "{bad}: {diagnostics:?}"
            );
        }
    }

    #[test]
    fn last_makestep_and_maxdistance_win() {
        let config = parse_expecting(
            "makestep 1 3\nmakestep 10 -1\nmaxdistance 1\nmaxdistance 2",
            &[],
        );
        assert_eq!(
            config.makestep,
            Some(MakeStep {
                threshold: 10.0,
                limit: StepLimit::Unlimited
            })
        );
        assert_eq!(config.max_distance, 2.0);
    }

    #[test]
    fn unknown_directive_is_a_warning_with_line() {
        let config = parse_expecting(
            "\nfrobnicate 3\nrefclock PHC /dev/ptp0 poll 3 dpoll -2 offset 0",
            &[warning(2, "unknown directive `frobnicate`, line ignored")],
        );
        assert_eq!(
            config.refclocks,
            [PhcRefclock {
                line: 3,
                ..kata_refclock()
            }]
        );
    }

    #[test]
    fn unimplemented_chrony_directive_is_a_warning() {
        parse_expecting(
            "driftfile /var/lib/chrony/drift\nRTCSYNC",
            &[
                warning(
                    1,
                    "directive `driftfile` is not supported yet, line ignored",
                ),
                warning(2, "directive `RTCSYNC` is not supported yet, line ignored"),
            ],
        );
    }

    #[test]
    fn bad_poll_values_use_defaults() {
        let config = parse_expecting(
            "refclock PHC /dev/ptp0 poll x dpoll 33 offset 0.25\nrefclock PHC /dev/ptp1 poll",
            &[
                error(
                    1,
                    "invalid value `x` for `poll` (integer from -32 to 32), using default 4",
                ),
                error(
                    1,
                    "invalid value `33` for `dpoll` (integer from -32 to 32), using default 0",
                ),
                error(
                    2,
                    "missing value for `poll` (integer from -32 to 32), using default 4",
                ),
            ],
        );
        assert_eq!(
            config.refclocks,
            [
                PhcRefclock {
                    poll: 4,
                    dpoll: 0,
                    offset: 0.25,
                    ..kata_refclock()
                },
                PhcRefclock {
                    line: 2,
                    device: "/dev/ptp1".into(),
                    poll: 4,
                    dpoll: 0,
                    ..kata_refclock()
                },
            ]
        );
    }

    #[test]
    fn bad_offset_uses_default() {
        let config = parse_expecting(
            "refclock PHC /dev/ptp0 offset nan\nrefclock PHC /dev/ptp0 offset",
            &[
                error(
                    1,
                    "invalid value `nan` for `offset` (number), using default 0",
                ),
                error(2, "missing value for `offset` (number), using default 0"),
            ],
        );
        assert!(config.refclocks.iter().all(|r| r.offset == 0.0));
    }

    #[test]
    fn refclock_structure_errors() {
        parse_expecting(
            "refclock\n\
             refclock PHC\n\
             refclock phc /dev/ptp0\n\
             refclock FOO x\n\
             refclock PHC :nocrossts",
            &[
                error(1, "`refclock` needs a driver and a device, line ignored"),
                error(2, "`refclock` needs a driver and a device, line ignored"),
                error(
                    3,
                    "unknown refclock driver `phc` (driver names are case-sensitive), line ignored",
                ),
                error(
                    4,
                    "unknown refclock driver `FOO` (driver names are case-sensitive), line ignored",
                ),
                error(
                    5,
                    "refclock PHC parameter `:nocrossts` has no device path, line ignored",
                ),
            ],
        );
    }

    #[test]
    fn other_refclock_drivers_are_warnings() {
        let config = parse_expecting(
            "refclock SHM 0 refid GPS",
            &[warning(
                1,
                "refclock driver `SHM` is not supported yet, line ignored",
            )],
        );
        assert!(config.refclocks.is_empty());
    }

    #[test]
    fn refclock_unimplemented_and_unknown_options() {
        let config = parse_expecting(
            "refclock PHC /dev/ptp0:nocrossts refid PTP prefer poll 2 bogus 1 poll 5",
            &[
                warning(
                    1,
                    "PHC device options `nocrossts` are not supported yet, ignored",
                ),
                warning(1, "`refclock` option `refid` is not supported yet, ignored"),
                warning(
                    1,
                    "`refclock` option `prefer` is not supported yet, ignored",
                ),
                error(1, "unknown `refclock` option `bogus`, rest of line ignored"),
            ],
        );
        assert_eq!(
            config.refclocks,
            [PhcRefclock {
                device_options: vec!["nocrossts".into()],
                poll: 2,
                dpoll: 0,
                ..kata_refclock()
            }]
        );
    }

    #[test]
    fn server_errors() {
        let config = parse_expecting(
            "server\n\
             pool\n\
             server a minpoll -40 maxpoll z port 70000 polltarget 5\n\
             server b port\n\
             server c key 1 xleave wat",
            &[
                error(1, "`server` needs a host name, line ignored"),
                error(2, "`pool` needs a host name, line ignored"),
                error(
                    3,
                    "invalid value `-40` for `minpoll` (integer from -32 to 32), \
                     using default 6",
                ),
                error(
                    3,
                    "invalid value `z` for `maxpoll` (integer from -32 to 32), \
                     using default 10",
                ),
                error(
                    3,
                    "invalid value `70000` for `port` (integer from 0 to 65535), \
                     using default 123",
                ),
                error(
                    3,
                    "invalid value `5` for `polltarget` (integer from 6 to 60), \
                     using default 16",
                ),
                error(
                    4,
                    "missing value for `port` (integer from 0 to 65535), using default 123",
                ),
                warning(5, "`server` option `key` is not supported yet, ignored"),
                warning(5, "`server` option `xleave` is not supported yet, ignored"),
                error(5, "unknown `server` option `wat`, rest of line ignored"),
            ],
        );
        assert_eq!(
            config.ntp_sources,
            [server(3, "a"), server(4, "b"), server(5, "c")]
        );
    }

    #[test]
    fn makestep_errors_leave_stepping_disabled() {
        let needs = "`makestep` needs 2 values (threshold and limit)";
        let threshold = "for `makestep` (non-negative number of seconds)";
        let limit = "for `makestep` (integer, negative for no limit)";
        let cases = [
            ("makestep", format!("{needs}, found 0")),
            ("makestep 1", format!("{needs}, found 1")),
            ("makestep 1 -1 3", format!("{needs}, found 3")),
            (
                "makestep x -1",
                format!("invalid threshold `x` {threshold}"),
            ),
            (
                "makestep -1 -1",
                format!("invalid threshold `-1` {threshold}"),
            ),
            (
                "makestep inf 3",
                format!("invalid threshold `inf` {threshold}"),
            ),
            ("makestep 1 y", format!("invalid limit `y` {limit}")),
            ("makestep 1 1.5", format!("invalid limit `1.5` {limit}")),
            (
                "makestep 1 99999999999",
                "limit `99999999999` for `makestep` is too large".to_owned(),
            ),
        ];
        for (text, reason) in cases {
            // A valid makestep first: the bad line must not leave it in place.
            let text = format!("makestep 1 -1\n{text}");
            let message = format!("{reason}; stepping stays disabled");
            let config = parse_expecting(&text, &[error(2, &message)]);
            assert_eq!(config.makestep, None, "{text}");
        }
    }

    #[test]
    fn maxdistance_errors_use_default() {
        let invalid = "for `maxdistance` (positive number of seconds),";
        let cases = [
            (
                "maxdistance",
                "`maxdistance` needs 1 value, found 0;".to_owned(),
            ),
            (
                "maxdistance 1 2",
                "`maxdistance` needs 1 value, found 2;".to_owned(),
            ),
            ("maxdistance far", format!("invalid value `far` {invalid}")),
            ("maxdistance 0", format!("invalid value `0` {invalid}")),
            ("maxdistance -2", format!("invalid value `-2` {invalid}")),
        ];
        for (text, reason) in cases {
            let text = format!("maxdistance 9\n{text}");
            let message = format!("{reason} using default 3");
            let config = parse_expecting(&text, &[error(2, &message)]);
            assert_eq!(config.max_distance, DEFAULT_MAX_DISTANCE, "{text}");
        }
    }

    #[test]
    fn diagnostics_display_line_and_severity() {
        assert_eq!(error(7, "bad").to_string(), "line 7: error: bad");
        assert_eq!(warning(1, "odd").to_string(), "line 1: warning: odd");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap stand-in for the planned fuzz target: every prefix of a
        // config mixing all directives with junk.
        let text = "refclock PHC /dev/ptp0:a:b poll -32 dpoll 32 offset 1e308\n\
                    server \u{fffd} port 0 minpoll\npool ÿ maxpoll -0\n\
                    makestep 0 0\nmaxdistance 1e-300\n\0\u{1}\u{7f} % ; #\n";
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse_config(&text[..end]);
        }
    }
}
