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
    /// `discipline` or `observe`.
    pub mode: String,
    /// The selected source, e.g. `PHC /dev/ptp0 (ptp_kvm)` or
    /// `NTP 192.0.2.1:123`; empty when none.
    pub source: String,
    /// `phc`, `ntp` or `none`.
    pub source_kind: String,
    /// Stratum of the selected source (0 for a PHC refclock, whose own
    /// stratum is that of a reference clock, as in chrony).
    pub stratum: u8,
    /// `normal`, `insert`, `delete` or `unsynchronised`.
    pub leap: String,
    pub synchronised: bool,
    /// Last measured offset (reference − local), seconds.
    pub last_offset: f64,
    /// RMS of the recent offsets, seconds.
    pub rms_offset: f64,
    /// Estimated frequency correction the clock needs, ppm.
    pub frequency_ppm: f64,
    /// Added to it while an offset is slewed away, ppm (0: none).
    pub slew_rate_ppm: f64,
    /// What the slew has yet to correct, seconds, when the file was
    /// written.
    pub remaining_correction: f64,
    /// Sampling interval of the selected source, seconds.
    pub poll_interval: f64,
    /// Unix time (seconds) of the last clock update; 0 = never.
    pub last_update_unix: f64,
    pub samples: u64,
    pub steps: u64,
    pub rejected: u64,
    /// One line per configured source: `NAME state=... offset=...`.
    pub sources: Vec<String>,
}

impl Status {
    /// The file's content.
    pub fn to_file_text(&self) -> String {
        let mut out = String::new();
        for (key, value) in self.fields() {
            let _ = writeln!(out, "{key}={value}");
        }
        for source in &self.sources {
            let _ = writeln!(out, "source_line={}", one_line(source));
        }
        out
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("mode", one_line(&self.mode)),
            ("source", one_line(&self.source)),
            ("source_kind", one_line(&self.source_kind)),
            ("stratum", self.stratum.to_string()),
            ("leap", one_line(&self.leap)),
            (
                "synchronised",
                if self.synchronised { "yes" } else { "no" }.into(),
            ),
            ("last_offset", format!("{:.9}", self.last_offset)),
            ("rms_offset", format!("{:.9}", self.rms_offset)),
            ("frequency_ppm", format!("{:.3}", self.frequency_ppm)),
            ("slew_rate_ppm", format!("{:.3}", self.slew_rate_ppm)),
            (
                "remaining_correction",
                format!("{:.9}", self.remaining_correction),
            ),
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
            match key {
                "mode" => status.mode = value.into(),
                "source" => status.source = value.into(),
                "source_kind" => status.source_kind = value.into(),
                "stratum" => status.stratum = value.parse().unwrap_or_default(),
                "leap" => status.leap = value.into(),
                "synchronised" => status.synchronised = value == "yes",
                "last_offset" => status.last_offset = float(value).unwrap_or_default(),
                "rms_offset" => status.rms_offset = float(value).unwrap_or_default(),
                "frequency_ppm" => status.frequency_ppm = float(value).unwrap_or_default(),
                "slew_rate_ppm" => status.slew_rate_ppm = float(value).unwrap_or_default(),
                "remaining_correction" => {
                    status.remaining_correction = float(value).unwrap_or_default()
                }
                "poll_interval" => status.poll_interval = float(value).unwrap_or_default(),
                "last_update_unix" => status.last_update_unix = float(value).unwrap_or_default(),
                "samples" => status.samples = value.parse().unwrap_or_default(),
                "steps" => status.steps = value.parse().unwrap_or_default(),
                "rejected" => status.rejected = value.parse().unwrap_or_default(),
                "source_line" => status.sources.push(value.into()),
                _ => {}
            }
        }
        status
    }

    /// `chronyc tracking`-like text; `now_unix` dates the last update.
    pub fn to_text(&self, now_unix: f64) -> String {
        let mut out = String::new();
        let source = if self.source.is_empty() {
            "none"
        } else {
            &self.source
        };
        let ago = if self.last_update_unix > 0.0 {
            format!("{:.1} s ago", (now_unix - self.last_update_unix).max(0.0))
        } else {
            "never".into()
        };
        let rows = [
            ("Mode", self.mode.clone()),
            ("Source", source.to_string()),
            ("Stratum", self.stratum.to_string()),
            ("Leap status", self.leap.clone()),
            (
                "Synchronised",
                if self.synchronised { "yes" } else { "no" }.into(),
            ),
            ("Last offset", format_seconds(self.last_offset)),
            ("RMS offset", format_seconds(self.rms_offset)),
            ("Frequency", format!("{:+.3} ppm", self.frequency_ppm)),
            (
                "Slewing",
                if self.slew_rate_ppm == 0.0 {
                    "no".into()
                } else {
                    format!(
                        "{:+.3} ppm, {} left",
                        self.slew_rate_ppm,
                        format_seconds(self.remaining_correction)
                    )
                },
            ),
            ("Last update", ago),
            ("Poll interval", format!("{:.3} s", self.poll_interval)),
            (
                "Samples",
                format!(
                    "{} (steps {}, rejected {})",
                    self.samples, self.steps, self.rejected
                ),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(out, "{name:<15}: {value}");
        }
        for source in &self.sources {
            let _ = writeln!(out, "  {source}");
        }
        out
    }

    /// One JSON object (keys as in the file; `sources` an array).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (key, value) in self.fields() {
            let json_value = match key {
                "synchronised" => (value == "yes").to_string(),
                "stratum" | "samples" | "steps" | "rejected" => value,
                "last_offset"
                | "rms_offset"
                | "frequency_ppm"
                | "slew_rate_ppm"
                | "remaining_correction"
                | "poll_interval"
                | "last_update_unix" => value,
                _ => json_string(&value),
            };
            let _ = write!(out, "\"{key}\":{json_value},");
        }
        out.push_str("\"sources\":[");
        for (i, source) in self.sources.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&json_string(source));
        }
        out.push_str("]}");
        out
    }
}

/// Offsets as chrony prints them: seconds with a sign, 9 decimals.
fn format_seconds(seconds: f64) -> String {
    format!("{seconds:+.9} seconds")
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
            mode: "discipline".into(),
            source: "PHC /dev/ptp0 (ptp_kvm)".into(),
            source_kind: "phc".into(),
            stratum: 0,
            leap: "normal".into(),
            synchronised: true,
            last_offset: -0.000_000_123,
            rms_offset: 0.000_000_456,
            frequency_ppm: -12.5,
            slew_rate_ppm: 83_333.333,
            remaining_correction: 0.25,
            poll_interval: 1.0,
            last_update_unix: 1_800_000_000.25,
            samples: 42,
            steps: 1,
            rejected: 2,
            sources: vec!["PHC /dev/ptp0 state=selected".into(), "x \"y\"".into()],
        }
    }

    #[test]
    fn file_round_trip() {
        let status = sample();
        assert_eq!(Status::from_file_text(&status.to_file_text()), status);
    }

    #[test]
    fn malformed_file_lines_are_skipped() {
        let status = Status::from_file_text(
            "garbage\nstratum=x\nlast_offset=NaN\nsamples=3\nnew_key=1\nleap=normal\n",
        );
        assert_eq!(status.stratum, 0);
        assert_eq!(status.last_offset, 0.0);
        assert_eq!(status.samples, 3);
        assert_eq!(status.leap, "normal");
    }

    #[test]
    fn newlines_cannot_forge_fields() {
        let mut status = sample();
        status.source = "evil\nsynchronised=no".into();
        let read = Status::from_file_text(&status.to_file_text());
        assert!(read.synchronised);
        assert_eq!(read.source, "evil synchronised=no");
    }

    #[test]
    fn text_shows_every_field() {
        let text = sample().to_text(1_800_000_010.25);
        for needle in [
            "Mode           : discipline",
            "Source         : PHC /dev/ptp0 (ptp_kvm)",
            "Stratum        : 0",
            "Leap status    : normal",
            "Last offset    : -0.000000123 seconds",
            "RMS offset     : +0.000000456 seconds",
            "Frequency      : -12.500 ppm",
            "Slewing        : +83333.333 ppm, +0.250000000 seconds left",
            "Last update    : 10.0 s ago",
            "Poll interval  : 1.000 s",
            "Samples        : 42 (steps 1, rejected 2)",
            "  PHC /dev/ptp0 state=selected",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        assert!(Status::default()
            .to_text(0.0)
            .contains("Source         : none"));
        assert!(Status::default()
            .to_text(0.0)
            .contains("Last update    : never"));
        assert!(Status::default()
            .to_text(0.0)
            .contains("Slewing        : no"));
    }

    #[test]
    fn json_is_one_object_with_typed_values() {
        let json = sample().to_json();
        assert!(json.starts_with("{\"mode\":\"discipline\","), "{json}");
        assert!(json.contains("\"synchronised\":true,"));
        assert!(json.contains("\"stratum\":0,"));
        assert!(json.contains("\"last_offset\":-0.000000123,"));
        assert!(json.contains("\"frequency_ppm\":-12.500,"));
        assert!(json.contains("\"slew_rate_ppm\":83333.333,"));
        assert!(json.contains("\"remaining_correction\":0.250000000,"));
        assert!(json.contains(r#""sources":["PHC /dev/ptp0 state=selected","x \"y\""]}"#));
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
