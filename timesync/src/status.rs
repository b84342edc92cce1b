//! What `timesync status` shows, and the file that carries it.
//!
//! The daemon rewrites `/run/timesync/status` after every clock update (write
//! to a temporary file, then rename, so a reader never sees half a file).
//! The file is `key=value` lines, one per field, in a fixed order; unknown
//! keys are ignored when reading, so old readers survive new fields.
//! `timesync status` prints it as text (like `chronyc tracking`) or, with
//! `--json`, as one JSON object.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

/// Where the daemon writes its status.
pub const STATUS_PATH: &str = "/run/timesync/status";

/// The daemon's state as published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    /// The daemon's version (`0.1.0 (commit …)`).
    pub version: String,
    /// `discipline` or `observe`.
    pub mode: String,
    /// The selected source, e.g. `PHC /dev/ptp0 (ptp_kvm)` or
    /// `NTP 192.0.2.1:123`; empty when none.
    pub source: String,
    /// `phc`, `ntp` or `none`.
    pub source_kind: String,
    /// chronyc's Reference ID: 8 hex digits and what they stand for
    /// (`7F000001 (127.0.0.1)`, `50484330 (PHC0)`); empty when none.
    pub reference_id: String,
    /// This clock's stratum, as chronyc tracking shows it: one more than
    /// the selected source's (1 on a PHC, a reference clock's own stratum
    /// being 0); 0 when none.
    pub stratum: u8,
    /// `normal`, `insert`, `delete` or `unsynchronised`.
    pub leap: String,
    pub synchronised: bool,
    /// What the slew in progress has yet to correct (reference − local,
    /// seconds) when the file was written: chronyc's System time.
    pub system_time: f64,
    /// Last measured offset (reference − local), seconds.
    pub last_offset: f64,
    /// RMS of the recent offsets, seconds.
    pub rms_offset: f64,
    /// Estimated frequency correction the clock needs, ppm (positive: the
    /// clock is slow).
    pub frequency_ppm: f64,
    /// How much the last update moved that estimate, ppm.
    pub residual_freq_ppm: f64,
    /// The estimate's standard error, ppm.
    pub skew_ppm: f64,
    /// Added to it while an offset is slewed away, ppm (0: none).
    pub slew_rate_ppm: f64,
    /// The selected source's root delay and dispersion, seconds.
    pub root_delay: f64,
    pub root_dispersion: f64,
    /// Sampling interval of the selected source, seconds.
    pub poll_interval: f64,
    /// Unix time (seconds) of the last clock update; 0 = never.
    pub last_update_unix: f64,
    pub samples: u64,
    pub steps: u64,
    pub rejected: u64,
    /// Every configured source.
    pub sources: Vec<SourceStatus>,
}

/// One configured source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStatus {
    /// `phc`, `ntp`.
    pub kind: String,
    /// The device (`/dev/ptp0`) or host name.
    pub name: String,
    /// The PHC's clock name, or the server's address; empty when unknown.
    pub address: String,
    /// PHC: `ok`, `waiting`, `unavailable`; NTP: `ok`, `unresolved`.
    pub state: String,
    /// NTP: the reach register (0 for a PHC).
    pub reach: u8,
    /// Seconds between samples.
    pub poll_interval: f64,
    /// The last offset measured (reference − local), seconds.
    pub offset: Option<f64>,
    /// Replies rejected (NTP).
    pub rejected: u64,
    /// NTP: how replies are timed, `kernel` (`SO_TIMESTAMPNS`) or `user`
    /// (after the read, when the kernel gives none); empty for a PHC.
    pub timestamps: String,
}

impl SourceStatus {
    /// One line, as `timesync status` prints it.
    pub fn to_line(&self) -> String {
        let offset = self
            .offset
            .map_or("none".into(), |offset| format!("{offset:+.9}"));
        let address = if self.address.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.address)
        };
        match self.kind.as_str() {
            "ntp" if self.state == "unresolved" => format!("NTP {} unresolved", self.name),
            "ntp" => format!(
                "NTP {}{address} reach={:03o} poll={:.0}s offset={offset} rejected={} \
                 timestamps={}",
                self.name, self.reach, self.poll_interval, self.rejected, self.timestamps
            ),
            _ => format!(
                "PHC {}{address} state={} interval={:.3}s offset={offset}",
                self.name, self.state, self.poll_interval
            ),
        }
    }

    fn fields(&self) -> [(&'static str, String); 9] {
        [
            ("kind", self.kind.clone()),
            ("name", self.name.clone()),
            ("address", self.address.clone()),
            ("state", self.state.clone()),
            ("reach", self.reach.to_string()),
            ("poll_interval", format!("{:.3}", self.poll_interval)),
            (
                "offset",
                self.offset.map_or(String::new(), |o| format!("{o:.9}")),
            ),
            ("rejected", self.rejected.to_string()),
            ("timestamps", self.timestamps.clone()),
        ]
    }

    /// Tab-separated `key=value` pairs (values never hold a tab or a line
    /// break).
    fn to_file_value(&self) -> String {
        let fields = self.fields();
        let pairs: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{key}={}", value.replace(['\t', '\n', '\r'], " ")))
            .collect();
        pairs.join("\t")
    }

    fn from_file_value(value: &str) -> SourceStatus {
        let mut source = SourceStatus::default();
        let float = |v: &str| v.parse::<f64>().ok().filter(|f| f.is_finite());
        for pair in value.split('\t') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            match key {
                "kind" => source.kind = value.into(),
                "name" => source.name = value.into(),
                "address" => source.address = value.into(),
                "state" => source.state = value.into(),
                "reach" => source.reach = value.parse().unwrap_or_default(),
                "poll_interval" => source.poll_interval = float(value).unwrap_or_default(),
                "offset" => source.offset = float(value),
                "rejected" => source.rejected = value.parse().unwrap_or_default(),
                "timestamps" => source.timestamps = value.into(),
                _ => {}
            }
        }
        source
    }

    fn to_json(&self) -> String {
        let offset = self
            .offset
            .map_or("null".into(), |offset| format!("{offset:.9}"));
        format!(
            "{{\"kind\":{},\"name\":{},\"address\":{},\"state\":{},\"reach\":{},\
             \"poll_interval\":{:.3},\"offset\":{offset},\"rejected\":{},\"timestamps\":{}}}",
            minos_common::json::string(&self.kind),
            minos_common::json::string(&self.name),
            minos_common::json::string(&self.address),
            minos_common::json::string(&self.state),
            self.reach,
            self.poll_interval,
            self.rejected,
            minos_common::json::string(&self.timestamps)
        )
    }
}

impl Status {
    /// The file's content.
    pub fn to_file_text(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.fields() {
            let _ = writeln!(out, "{key}={value}");
        }
        for source in &self.sources {
            let _ = writeln!(out, "source_entry={}", source.to_file_value());
        }
        out
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("version", one_line(&self.version)),
            ("mode", one_line(&self.mode)),
            ("source", one_line(&self.source)),
            ("source_kind", one_line(&self.source_kind)),
            ("reference_id", one_line(&self.reference_id)),
            ("stratum", self.stratum.to_string()),
            ("leap", one_line(&self.leap)),
            (
                "synchronised",
                if self.synchronised { "yes" } else { "no" }.into(),
            ),
            ("system_time", format!("{:.9}", self.system_time)),
            ("last_offset", format!("{:.9}", self.last_offset)),
            ("rms_offset", format!("{:.9}", self.rms_offset)),
            ("frequency_ppm", format!("{:.3}", self.frequency_ppm)),
            (
                "residual_freq_ppm",
                format!("{:.3}", self.residual_freq_ppm),
            ),
            ("skew_ppm", format!("{:.3}", self.skew_ppm)),
            ("slew_rate_ppm", format!("{:.3}", self.slew_rate_ppm)),
            ("root_delay", format!("{:.9}", self.root_delay)),
            ("root_dispersion", format!("{:.9}", self.root_dispersion)),
            ("poll_interval", format!("{:.3}", self.poll_interval)),
            ("last_update_unix", format!("{:.3}", self.last_update_unix)),
            ("samples", self.samples.to_string()),
            ("steps", self.steps.to_string()),
            ("rejected", self.rejected.to_string()),
        ]
    }

    /// Parses the file's content; malformed lines are skipped (the status
    /// is advisory: a reader never fails on it), missing fields keep their
    /// defaults.
    pub fn from_file_text(text: &str) -> Self {
        let mut status = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let float = |v: &str| v.parse::<f64>().ok().filter(|f| f.is_finite());
            let number = || float(value).unwrap_or_default();
            match key {
                "version" => status.version = value.into(),
                "mode" => status.mode = value.into(),
                "source_entry" => status.sources.push(SourceStatus::from_file_value(value)),
                "source" => status.source = value.into(),
                "source_kind" => status.source_kind = value.into(),
                "reference_id" => status.reference_id = value.into(),
                "stratum" => status.stratum = value.parse().unwrap_or_default(),
                "leap" => status.leap = value.into(),
                "synchronised" => status.synchronised = value == "yes",
                "system_time" => status.system_time = number(),
                "last_offset" => status.last_offset = number(),
                "rms_offset" => status.rms_offset = number(),
                "frequency_ppm" => status.frequency_ppm = number(),
                "residual_freq_ppm" => status.residual_freq_ppm = number(),
                "skew_ppm" => status.skew_ppm = number(),
                "slew_rate_ppm" => status.slew_rate_ppm = number(),
                "root_delay" => status.root_delay = number(),
                "root_dispersion" => status.root_dispersion = number(),
                "poll_interval" => status.poll_interval = number(),
                "last_update_unix" => status.last_update_unix = number(),
                "samples" => status.samples = value.parse().unwrap_or_default(),
                "steps" => status.steps = value.parse().unwrap_or_default(),
                "rejected" => status.rejected = value.parse().unwrap_or_default(),
                _ => {}
            }
        }
        status
    }

    /// `chronyc tracking`'s lines first, then timesync's own; `now_unix`
    /// dates the last update.
    pub fn to_text(&self, now_unix: f64) -> String {
        let mut out = String::new();
        let reference = if self.reference_id.is_empty() {
            "00000000 ()".to_string()
        } else {
            self.reference_id.clone()
        };
        let ref_time = if self.last_update_unix > 0.0 {
            utc_date(self.last_update_unix)
        } else {
            utc_date(0.0)
        };
        let ago = if self.last_update_unix > 0.0 {
            format!("{:.1} s ago", (now_unix - self.last_update_unix).max(0.0))
        } else {
            "never".into()
        };
        let source = if self.source.is_empty() {
            "none"
        } else {
            &self.source
        };
        let slow_fast = |value: f64| if value >= 0.0 { "slow" } else { "fast" };
        let leap = match self.leap.as_str() {
            _ if !self.synchronised => "Not synchronised",
            "normal" => "Normal",
            "insert" => "Insert second",
            "delete" => "Delete second",
            _ => "Not synchronised",
        };
        let rows = [
            ("Reference ID", reference),
            ("Stratum", self.stratum.to_string()),
            ("Ref time (UTC)", ref_time),
            (
                "System time",
                format!(
                    "{:.9} seconds {} of NTP time",
                    self.system_time.abs(),
                    slow_fast(self.system_time)
                ),
            ),
            ("Last offset", format_seconds(self.last_offset)),
            ("RMS offset", format!("{:.9} seconds", self.rms_offset)),
            (
                "Frequency",
                format!(
                    "{:.3} ppm {}",
                    self.frequency_ppm.abs(),
                    slow_fast(self.frequency_ppm)
                ),
            ),
            (
                "Residual freq",
                format!("{:+.3} ppm", self.residual_freq_ppm),
            ),
            ("Skew", format!("{:.3} ppm", self.skew_ppm)),
            ("Root delay", format!("{:.9} seconds", self.root_delay)),
            (
                "Root dispersion",
                format!("{:.9} seconds", self.root_dispersion),
            ),
            (
                "Update interval",
                format!("{:.1} seconds", self.poll_interval),
            ),
            ("Leap status", leap.to_string()),
            ("Mode", self.mode.clone()),
            ("Source", source.to_string()),
            (
                "Synchronised",
                if self.synchronised { "yes" } else { "no" }.into(),
            ),
            (
                "Slewing",
                if self.slew_rate_ppm == 0.0 {
                    "no".into()
                } else {
                    format!(
                        "{:+.3} ppm, {} left",
                        self.slew_rate_ppm,
                        format_seconds(self.system_time)
                    )
                },
            ),
            ("Last update", ago),
            (
                "Samples",
                format!(
                    "{} (steps {}, rejected {})",
                    self.samples, self.steps, self.rejected
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<15} : {value}");
        }
        for source in &self.sources {
            let _ = writeln!(out, "  {}", source.to_line());
        }
        out
    }

    /// One JSON object (keys as in the file; `sources` an array of
    /// objects).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (key, value) in self.fields() {
            let json_value = match key {
                "synchronised" => (value == "yes").to_string(),
                "stratum" | "samples" | "steps" | "rejected" => value,
                "system_time" | "last_offset" | "rms_offset" | "frequency_ppm"
                | "residual_freq_ppm" | "skew_ppm" | "slew_rate_ppm" | "root_delay"
                | "root_dispersion" | "poll_interval" | "last_update_unix" => value,
                _ => minos_common::json::string(&value),
            };
            let _ = write!(out, "\"{key}\":{json_value},");
        }
        out.push_str("\"sources\":[");
        for (i, source) in self.sources.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&source.to_json());
        }
        out.push_str("]}");
        out
    }
}

/// chrony's reference time format, UTC: `Mon Dec 07 23:00:00 2026`.
pub fn utc_date(unix: f64) -> String {
    let seconds = if unix.is_finite() {
        unix.floor() as i64
    } else {
        0
    };
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let weekday = WEEKDAYS
        .get(days.rem_euclid(7) as usize)
        .copied()
        .unwrap_or("?");
    let month_name = MONTHS.get((month - 1) as usize).copied().unwrap_or("?");
    format!(
        "{weekday} {month_name} {day:02} {:02}:{:02}:{:02} {year}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// Offsets as chrony prints them: seconds with a sign, 9 decimals.
fn format_seconds(seconds: f64) -> String {
    format!("{seconds:+.9} seconds")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Writes the status file atomically (temporary file + rename in the same
/// directory).
pub fn write(path: &Path, status: &Status) -> io::Result<()> {
    let tmp = temp_path(path);
    std::fs::write(&tmp, status.to_file_text())?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the status file.
pub fn read(path: &Path) -> io::Result<Status> {
    std::fs::read_to_string(path).map(|text| Status::from_file_text(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: "0.1.0 (commit 0123456789ab)".into(),
            mode: "discipline".into(),
            source: "PHC /dev/ptp0 (ptp_kvm)".into(),
            source_kind: "phc".into(),
            reference_id: "50484330 (PHC0)".into(),
            stratum: 1,
            leap: "normal".into(),
            synchronised: true,
            system_time: 0.25,
            last_offset: -0.000_000_123,
            rms_offset: 0.000_000_456,
            frequency_ppm: -12.5,
            residual_freq_ppm: 0.004,
            skew_ppm: 0.012,
            slew_rate_ppm: 83_333.333,
            root_delay: 0.000_001,
            root_dispersion: 0.000_002,
            poll_interval: 1.0,
            last_update_unix: 1_800_000_000.25,
            samples: 42,
            steps: 1,
            rejected: 2,
            sources: vec![
                SourceStatus {
                    kind: "phc".into(),
                    name: "/dev/ptp0".into(),
                    address: "Mock-up PTP clock".into(),
                    state: "ok".into(),
                    reach: 0,
                    poll_interval: 1.0,
                    offset: Some(1.5e-8),
                    rejected: 0,
                    timestamps: String::new(),
                },
                SourceStatus {
                    kind: "ntp".into(),
                    name: "x \"y\" z".into(),
                    address: "192.0.2.1:123".into(),
                    state: "ok".into(),
                    reach: 0o377,
                    poll_interval: 64.0,
                    offset: None,
                    rejected: 3,
                    timestamps: "kernel".into(),
                },
            ],
        }
    }

    #[test]
    fn file_round_trip() {
        let status = sample();
        assert_eq!(Status::from_file_text(&status.to_file_text()), status);
        // A tab cannot be kept in a source's value: it becomes a space.
        let mut tabbed = sample();
        tabbed.sources[1].name = "x\ty\nz".into();
        let read = Status::from_file_text(&tabbed.to_file_text());
        assert_eq!(read.sources[1].name, "x y z");
        assert_eq!(read.sources.len(), 2);
    }

    #[test]
    fn malformed_file_lines_are_skipped() {
        let status = Status::from_file_text(
            "garbage\nstratum=x\nlast_offset=NaN\nsamples=3\nnew_key=1\nleap=normal\n\
             source_entry=kind=ntp\treach=x\tbogus\toffset=inf\n",
        );
        assert_eq!(status.stratum, 0);
        assert_eq!(status.last_offset, 0.0);
        assert_eq!(status.samples, 3);
        assert_eq!(status.leap, "normal");
        assert_eq!(status.sources.len(), 1);
        assert_eq!(status.sources[0].kind, "ntp");
        assert_eq!(status.sources[0].reach, 0);
        assert_eq!(status.sources[0].offset, None);
    }

    #[test]
    fn newlines_cannot_forge_fields() {
        let mut status = sample();
        status.source = "evil\nsynchronised=no".into();
        let read = Status::from_file_text(&status.to_file_text());
        assert!(read.synchronised);
        assert_eq!(read.source, "evil synchronised=no");
    }

    /// chronyc tracking's lines, in its order and with its words, then
    /// timesync's own.
    #[test]
    fn text_has_chronyc_tracking_lines() {
        let text = sample().to_text(1_800_000_010.25);
        let expected = [
            "Reference ID    : 50484330 (PHC0)",
            "Stratum         : 1",
            "Ref time (UTC)  : Fri Jan 15 08:00:00 2027",
            "System time     : 0.250000000 seconds slow of NTP time",
            "Last offset     : -0.000000123 seconds",
            "RMS offset      : 0.000000456 seconds",
            "Frequency       : 12.500 ppm fast",
            "Residual freq   : +0.004 ppm",
            "Skew            : 0.012 ppm",
            "Root delay      : 0.000001000 seconds",
            "Root dispersion : 0.000002000 seconds",
            "Update interval : 1.0 seconds",
            "Leap status     : Normal",
            "Mode            : discipline",
            "Source          : PHC /dev/ptp0 (ptp_kvm)",
            "Synchronised    : yes",
            "Slewing         : +83333.333 ppm, +0.250000000 seconds left",
            "Last update     : 10.0 s ago",
            "Samples         : 42 (steps 1, rejected 2)",
            "  PHC /dev/ptp0 (Mock-up PTP clock) state=ok interval=1.000s offset=+0.000000015",
            "  NTP x \"y\" z (192.0.2.1:123) reach=377 poll=64s offset=none rejected=3 \
             timestamps=kernel",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, expected, "\n{text}");
        let idle = Status::default().to_text(0.0);
        for needle in [
            "Reference ID    : 00000000 ()",
            "Ref time (UTC)  : Thu Jan 01 00:00:00 1970",
            "Leap status     : Not synchronised",
            "Source          : none",
            "Last update     : never",
            "Slewing         : no",
        ] {
            assert!(idle.contains(needle), "{needle:?} in\n{idle}");
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0.0), "Thu Jan 01 00:00:00 1970");
        assert_eq!(utc_date(951_782_400.0), "Tue Feb 29 00:00:00 2000");
        assert_eq!(utc_date(1_796_684_400.0), "Mon Dec 07 23:00:00 2026");
        assert_eq!(utc_date(-1.0), "Wed Dec 31 23:59:59 1969");
        assert_eq!(utc_date(f64::NAN), "Thu Jan 01 00:00:00 1970");
    }

    #[test]
    fn json_is_one_object_with_typed_values() {
        let json = sample().to_json();
        assert!(
            json.starts_with(
                "{\"version\":\"0.1.0 (commit 0123456789ab)\",\"mode\":\"discipline\","
            ),
            "{json}"
        );
        for needle in [
            "\"synchronised\":true,",
            "\"stratum\":1,",
            "\"reference_id\":\"50484330 (PHC0)\",",
            "\"last_offset\":-0.000000123,",
            "\"frequency_ppm\":-12.500,",
            "\"skew_ppm\":0.012,",
            "\"slew_rate_ppm\":83333.333,",
            "\"system_time\":0.250000000,",
            "\"root_dispersion\":0.000002000,",
            "\"sources\":[{\"kind\":\"phc\",\"name\":\"/dev/ptp0\",\"address\":\"Mock-up PTP clock\",\
             \"state\":\"ok\",\"reach\":0,\"poll_interval\":1.000,\"offset\":0.000000015,\"rejected\":0,\
             \"timestamps\":\"\"},\
             {\"kind\":\"ntp\",\"name\":\"x \\\"y\\\" z\",\"address\":\"192.0.2.1:123\",\
             \"state\":\"ok\",\"reach\":255,\"poll_interval\":64.000,\"offset\":null,\"rejected\":3,\
             \"timestamps\":\"kernel\"}]}",
        ] {
            assert!(json.contains(needle), "{needle} in {json}");
        }
    }

    #[test]
    fn write_is_atomic_and_readable() {
        let dir = std::env::temp_dir().join(format!("timesync-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status");
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), sample());
        assert!(!dir.join("status.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read(&path).is_err());
    }
}
