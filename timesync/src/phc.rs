//! Reading a PTP hardware clock (`/dev/ptpN`, e.g. ptp_kvm's `/dev/ptp0`
//! in a Kata guest) against `CLOCK_REALTIME`.
//!
//! Three kernel interfaces, tried in this order on the first sample and the
//! first that works kept for good (logged once, as chrony does):
//!
//! 1. `PTP_SYS_OFFSET_PRECISE`: a hardware cross-timestamp (PHC and system
//!    time of the same instant; ptp_kvm offers it on x86 with kvm-clock).
//!    One ioctl per reading; the read window is 0.
//! 2. `PTP_SYS_OFFSET_EXTENDED`: n readings of (system before, PHC, system
//!    after) in one ioctl, the system times taken right around the PHC read.
//! 3. `PTP_SYS_OFFSET`: n readings interleaved sys, phc, sys, ..., sys in
//!    one ioctl (the system times are further apart).
//!
//! Each reading gives an offset `phc − (before + after) / 2` and a window
//! `after − before` (the error of the offset is at most half of it). A sample
//! keeps the narrowest third of the windows (with ties), averages their
//! offsets, and adds the refclock line's `offset`: as in chrony, it is added
//! to reference minus local time (`RCL_AddSample` computes `ref − local +
//! offset`), so `offset 0.5` treats the PHC as reading 0.5 s late.
//! The arithmetic is done in integer nanoseconds: an `f64` of Unix time has
//! only ~0.2 µs resolution.
//!
//! chrony's `dpoll -2` means one device read every 0.25 s, 4 per second,
//! filtered into one sample per `poll`. timesync instead takes all readings
//! of a sample in one wakeup ([`Phc::sample`] with e.g. 10 readings, one
//! `PTP_SYS_OFFSET_EXTENDED` ioctl), once per poll interval: in a guest the
//! readings of one burst share the host's clock state anyway, and one wakeup
//! per poll is cheaper than 4 per second. `dpoll` is accepted and ignored.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::clock::Sample;
use crate::sys;
use crate::sysclock::monotonic_now;

/// Most readings one sample takes (the kernel's `PTP_MAX_SAMPLES`).
pub const MAX_READINGS: usize = sys::PTP_MAX_SAMPLES;

/// How the PHC is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhcMethod {
    /// `PTP_SYS_OFFSET_PRECISE`: hardware cross-timestamps.
    Precise,
    /// `PTP_SYS_OFFSET_EXTENDED`: sys/phc/sys triplets.
    Extended,
    /// `PTP_SYS_OFFSET`: interleaved sys/phc readings.
    Basic,
}

impl PhcMethod {
    /// In the order they are tried.
    pub const ALL: [PhcMethod; 3] = [PhcMethod::Precise, PhcMethod::Extended, PhcMethod::Basic];

    /// The ioctl's name.
    pub fn ioctl(self) -> &'static str {
        match self {
            PhcMethod::Precise => "PTP_SYS_OFFSET_PRECISE",
            PhcMethod::Extended => "PTP_SYS_OFFSET_EXTENDED",
            PhcMethod::Basic => "PTP_SYS_OFFSET",
        }
    }
}

impl fmt::Display for PhcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ioctl())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PhcError {
    #[error("cannot open PHC {}", device.display())]
    Open {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("PHC {}: {ioctl} failed", device.display())]
    Ioctl {
        device: PathBuf,
        ioctl: &'static str,
        #[source]
        source: io::Error,
    },
    /// None of the three ioctls works (e.g. the path is not a PHC).
    #[error(
        "PHC {}: cannot read it: {}",
        device.display(),
        errors.iter().map(|(ioctl, err)| format!("{ioctl}: {err}")).collect::<Vec<_>>().join("; ")
    )]
    NoMethod {
        device: PathBuf,
        /// Each ioctl tried with its error, in order.
        errors: Vec<(&'static str, io::Error)>,
    },
    /// Every reading had a negative window: the system clock was stepped
    /// during the ioctl.
    #[error("PHC {}: {ioctl} gave no usable reading (system clock stepped?)", device.display())]
    NoUsableReading {
        device: PathBuf,
        ioctl: &'static str,
    },
}

/// One reading: system time before, PHC time, system time after, in
/// nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhcReading {
    pub before_ns: i128,
    pub phc_ns: i128,
    pub after_ns: i128,
}

impl PhcReading {
    /// `after − before`, ns.
    pub fn window_ns(&self) -> i128 {
        self.after_ns - self.before_ns
    }

    /// `2 × (phc − midpoint)`, in half nanoseconds (exact).
    fn offset_half_ns(&self) -> i128 {
        2 * self.phc_ns - (self.before_ns + self.after_ns)
    }
}

/// What [`combine_readings`] makes of a set of readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Combined {
    /// Mean of `phc − midpoint` over the readings kept, seconds.
    pub offset: f64,
    /// The widest window among those kept, seconds: half of it bounds the
    /// error of `offset`.
    pub delay: f64,
    /// How many readings were kept.
    pub used: usize,
}

/// The sample filter: drops readings with a negative window (a clock step
/// in the middle), keeps the narrowest third of the rest (at least one,
/// plus any as narrow as the widest kept) and averages their offsets.
/// `None` when no reading is usable.
pub fn combine_readings(readings: &[PhcReading]) -> Option<Combined> {
    let mut valid: Vec<&PhcReading> = readings.iter().filter(|r| r.window_ns() >= 0).collect();
    if valid.is_empty() {
        return None;
    }
    valid.sort_by_key(|r| r.window_ns());
    let keep = (valid.len() / 3).max(1);
    let widest = valid[keep - 1].window_ns();
    let kept: Vec<&PhcReading> = valid
        .into_iter()
        .take_while(|r| r.window_ns() <= widest)
        .collect();
    let used = kept.len();
    let sum: i128 = kept.iter().map(|r| r.offset_half_ns()).sum();
    // Mean in half nanoseconds, rounded to the nearest, then seconds.
    let mean_half_ns = div_round(sum, used as i128);
    Some(Combined {
        offset: mean_half_ns as f64 / 2e9,
        delay: widest as f64 / 1e9,
        used,
    })
}

fn div_round(n: i128, d: i128) -> i128 {
    let q = n.div_euclid(d);
    if 2 * n.rem_euclid(d) >= d {
        q + 1
    } else {
        q
    }
}

/// The sample of a set of readings taken at `monotonic`: the filtered
/// `phc − system` offset plus `refclock_offset` (chrony's sign), the read
/// window as delay, root distance 0. `None` when no reading is usable.
pub fn sample_from_readings(
    readings: &[PhcReading],
    refclock_offset: f64,
    monotonic: f64,
) -> Option<Sample> {
    let combined = combine_readings(readings)?;
    Some(Sample {
        monotonic,
        offset: combined.offset + refclock_offset,
        delay: combined.delay,
        root_distance: 0.0,
    })
}

/// An open PTP hardware clock.
#[derive(Debug)]
pub struct Phc {
    device: PathBuf,
    file: File,
    name: Option<String>,
    method: Option<PhcMethod>,
}

impl Phc {
    /// Opens `device` read-only (the offset ioctls need no write access).
    /// Does not check that it is a PHC: the first [`Phc::sample`] does.
    pub fn open(device: impl AsRef<Path>) -> Result<Phc, PhcError> {
        let device = device.as_ref().to_owned();
        let file = File::open(&device).map_err(|source| PhcError::Open {
            device: device.clone(),
            source,
        })?;
        let name = clock_name(&file, &device, Path::new("/sys"));
        Ok(Phc {
            device,
            file,
            name,
            method: None,
        })
    }

    /// A device opened elsewhere (by the device opener), as `device`.
    pub fn from_file(device: impl AsRef<Path>, file: File) -> Phc {
        let device = device.as_ref().to_owned();
        let name = clock_name(&file, &device, Path::new("/sys"));
        Phc {
            device,
            file,
            name,
            method: None,
        }
    }

    /// The device path it was opened with.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The driver's name for the clock from sysfs (`clock_name`: "ptp_kvm",
    /// "mock", ...), if there is one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The reading method in use; `None` until a sample has succeeded.
    pub fn method(&self) -> Option<PhcMethod> {
        self.method
    }

    /// Takes `readings` readings (clamped to 1..=[`MAX_READINGS`]) in one
    /// go and filters them ([`combine_readings`]) into one sample:
    /// `offset` = PHC − `CLOCK_REALTIME` + `refclock_offset`, `delay` = the
    /// read window, `root_distance` 0, `monotonic` = `CLOCK_MONOTONIC`
    /// halfway through the reading.
    pub fn sample(&mut self, readings: usize, refclock_offset: f64) -> Result<Sample, PhcError> {
        let n = readings.clamp(1, MAX_READINGS);
        let before = monotonic_now();
        let (method, raw) = match self.method {
            Some(method) => (
                method,
                self.read(method, n).map_err(|source| PhcError::Ioctl {
                    device: self.device.clone(),
                    ioctl: method.ioctl(),
                    source,
                })?,
            ),
            None => self.detect(n)?,
        };
        let after = monotonic_now();
        sample_from_readings(&raw, refclock_offset, before + (after - before) / 2.0).ok_or_else(
            || PhcError::NoUsableReading {
                device: self.device.clone(),
                ioctl: method.ioctl(),
            },
        )
    }

    /// Tries each method in turn; keeps and logs the first that works.
    fn detect(&mut self, n: usize) -> Result<(PhcMethod, Vec<PhcReading>), PhcError> {
        let mut errors = Vec::new();
        for method in PhcMethod::ALL {
            match self.read(method, n) {
                Ok(readings) => {
                    log::info!(
                        "phc {} ({}): reading with {method}",
                        self.device.display(),
                        self.name().unwrap_or("unknown clock")
                    );
                    for (ioctl, err) in &errors {
                        log::debug!("phc {}: {ioctl}: {err}", self.device.display());
                    }
                    self.method = Some(method);
                    return Ok((method, readings));
                }
                Err(err) => errors.push((method.ioctl(), err)),
            }
        }
        Err(PhcError::NoMethod {
            device: self.device.clone(),
            errors,
        })
    }

    fn read(&self, method: PhcMethod, n: usize) -> io::Result<Vec<PhcReading>> {
        let fd = self.file.as_fd();
        Ok(match method {
            PhcMethod::Precise => (0..n)
                .map(|_| {
                    let x = sys::ptp_sys_offset_precise(fd)?;
                    let sys = x.sys_realtime.as_nanos();
                    Ok(PhcReading {
                        before_ns: sys,
                        phc_ns: x.device.as_nanos(),
                        after_ns: sys,
                    })
                })
                .collect::<io::Result<_>>()?,
            PhcMethod::Extended => {
                let x = sys::ptp_sys_offset_extended(fd, n)?;
                x.ts.iter().take(n).map(extended_reading).collect()
            }
            PhcMethod::Basic => basic_readings(&sys::ptp_sys_offset(fd, n)?, n),
        })
    }
}

fn extended_reading(ts: &[sys::PtpClockTime; 3]) -> PhcReading {
    PhcReading {
        before_ns: ts[0].as_nanos(),
        phc_ns: ts[1].as_nanos(),
        after_ns: ts[2].as_nanos(),
    }
}

/// `ts` of `PTP_SYS_OFFSET` is sys, phc, sys, phc, ..., sys: reading `i` is
/// `ts[2i..=2i+2]`.
fn basic_readings(x: &sys::PtpSysOffset, n: usize) -> Vec<PhcReading> {
    x.ts.windows(3)
        .step_by(2)
        .take(n)
        .map(|w| PhcReading {
            before_ns: w[0].as_nanos(),
            phc_ns: w[1].as_nanos(),
            after_ns: w[2].as_nanos(),
        })
        .collect()
}

/// The clock's `clock_name` attribute: through the device number
/// (`SYSFS/dev/char/MAJ:MIN`, which also works for a udev symlink such as
/// `/dev/ptp_kvm`), else `SYSFS/class/ptp/FILENAME`.
fn clock_name(file: &File, device: &Path, sysfs: &Path) -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(stat) = rustix::fs::fstat(file) {
        if rustix::fs::FileType::from_raw_mode(stat.st_mode)
            == rustix::fs::FileType::CharacterDevice
        {
            candidates.push(sysfs.join(format!(
                "dev/char/{}:{}/clock_name",
                rustix::fs::major(stat.st_rdev),
                rustix::fs::minor(stat.st_rdev)
            )));
        }
    }
    if let Some(file_name) = device.file_name() {
        candidates.push(sysfs.join("class/ptp").join(file_name).join("clock_name"));
    }
    candidates.iter().find_map(|path| {
        let name = std::fs::read_to_string(path).ok()?;
        let name = name.trim();
        (!name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use minos_common::Report;

    const T0: i128 = 1_700_000_000_000_000_000;

    /// A reading starting at `start` ns after T0 with a window of `window`
    /// ns, the PHC `offset` ns ahead of the midpoint.
    fn reading(start: i128, window: i128, offset: i128) -> PhcReading {
        PhcReading {
            before_ns: T0 + start,
            phc_ns: T0 + start + window / 2 + offset,
            after_ns: T0 + start + window,
        }
    }

    #[test]
    fn keeps_the_narrowest_windows() {
        // Ten readings; the three narrowest (windows 100, 110, 120) say +50
        // ns, the wide ones are far off.
        let mut readings = vec![
            reading(0, 5000, 2000),
            reading(10_000, 100, 50),
            reading(20_000, 3000, -900),
            reading(30_000, 120, 50),
            reading(40_000, 800, 300),
            reading(50_000, 110, 50),
            reading(60_000, 900, 400),
            reading(70_000, 1000, -400),
            reading(80_000, 700, 200),
            reading(90_000, 600, 250),
        ];
        let combined = combine_readings(&readings).unwrap();
        assert_eq!(combined.used, 3);
        assert!((combined.offset - 50e-9).abs() < 1e-12, "{combined:?}");
        assert!((combined.delay - 120e-9).abs() < 1e-15, "{combined:?}");
        // Order does not matter.
        readings.reverse();
        assert_eq!(combine_readings(&readings), Some(combined));
    }

    #[test]
    fn averages_the_kept_offsets_exactly() {
        // Offsets of +10 and +11 ns (windows 100 and 101): mean 10.5 ns,
        // below f64's resolution of absolute Unix time, kept exactly.
        let readings = [
            reading(0, 100, 10),
            reading(1000, 101, 11),
            reading(2000, 5000, 0),
            reading(3000, 5000, 0),
            reading(4000, 5000, 0),
            reading(5000, 5000, 0),
        ];
        let combined = combine_readings(&readings).unwrap();
        assert_eq!(combined.used, 2);
        assert!((combined.offset - 10.5e-9).abs() < 1e-13, "{combined:?}");
        // An odd window: midpoint at half a nanosecond.
        let odd = PhcReading {
            before_ns: T0,
            phc_ns: T0 + 1,
            after_ns: T0 + 1,
        };
        let combined = combine_readings(&[odd]).unwrap();
        assert!((combined.offset - 0.5e-9).abs() < 1e-13, "{combined:?}");
        // The PHC behind: negative offset.
        let combined = combine_readings(&[reading(0, 40, -1_500_000)]).unwrap();
        assert!((combined.offset + 1.5e-3).abs() < 1e-12, "{combined:?}");
    }

    #[test]
    fn ties_and_cross_timestamps_are_all_kept() {
        // Cross-timestamps all have a zero window: all are averaged.
        let readings: Vec<_> = (0..5).map(|i| reading(i * 1000, 0, i * 10)).collect();
        let combined = combine_readings(&readings).unwrap();
        assert_eq!(combined.used, 5);
        assert_eq!(combined.delay, 0.0);
        assert!((combined.offset - 20e-9).abs() < 1e-13, "{combined:?}");
    }

    #[test]
    fn negative_windows_are_dropped() {
        let stepped = PhcReading {
            before_ns: T0 + 1_000_000,
            phc_ns: T0,
            after_ns: T0,
        };
        assert_eq!(combine_readings(&[stepped]), None);
        assert_eq!(combine_readings(&[]), None);
        let combined = combine_readings(&[stepped, reading(0, 300, 7)]).unwrap();
        assert_eq!(combined.used, 1);
        assert!((combined.offset - 7e-9).abs() < 1e-13);
    }

    #[test]
    fn basic_readings_are_interleaved() {
        let t = |ns: i64| sys::PtpClockTime {
            sec: 1_700_000_000,
            nsec: ns as u32,
            reserved: 0,
        };
        let mut x = sys::PtpSysOffset {
            n_samples: 2,
            rsv: [0; 3],
            ts: [sys::PtpClockTime::default(); 2 * sys::PTP_MAX_SAMPLES + 1],
        };
        x.ts[..5].copy_from_slice(&[t(100), t(160), t(200), t(260), t(320)]);
        let readings = basic_readings(&x, 2);
        let base = 1_700_000_000 * 1_000_000_000i128;
        assert_eq!(
            readings,
            [
                PhcReading {
                    before_ns: base + 100,
                    phc_ns: base + 160,
                    after_ns: base + 200
                },
                PhcReading {
                    before_ns: base + 200,
                    phc_ns: base + 260,
                    after_ns: base + 320
                },
            ]
        );
        assert_eq!(
            basic_readings(&x, sys::PTP_MAX_SAMPLES).len(),
            sys::PTP_MAX_SAMPLES
        );
    }

    /// chrony's sign: the refclock `offset` is added to PHC − system time
    /// (`offset 0.5` for a PHC that reads 0.5 s late).
    #[test]
    fn refclock_offset_is_added() {
        // The PHC 2 µs ahead of the system clock.
        let readings = [reading(0, 100, 2000), reading(1000, 300, 0)];
        let sample = sample_from_readings(&readings, 0.0, 42.0).unwrap();
        assert!((sample.offset - 2e-6).abs() < 1e-12, "{sample:?}");
        assert_eq!(sample.monotonic, 42.0);
        assert!((sample.delay - 100e-9).abs() < 1e-15, "{sample:?}");
        assert_eq!(sample.root_distance, 0.0);
        let sample = sample_from_readings(&readings, 0.5, 42.0).unwrap();
        assert!((sample.offset - 0.500_002).abs() < 1e-12, "{sample:?}");
        let sample = sample_from_readings(&readings, -0.5, 42.0).unwrap();
        assert!((sample.offset + 0.499_998).abs() < 1e-12, "{sample:?}");
        // A PHC 1.5 s behind, corrected by offset 1.5: no offset left.
        let late = [reading(0, 100, -1_500_000_000)];
        let sample = sample_from_readings(&late, 1.5, 0.0).unwrap();
        assert!(sample.offset.abs() < 1e-12, "{sample:?}");
        assert_eq!(sample_from_readings(&[], 0.5, 0.0), None);
    }

    #[test]
    fn missing_device_names_the_device() {
        let err = Phc::open("/dev/ptp9").unwrap_err();
        assert!(
            matches!(&err, PhcError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        assert_eq!(
            Report(&err).to_string(),
            "cannot open PHC /dev/ptp9: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_regular_file_is_no_phc() {
        let path = std::env::temp_dir().join(format!("timesync-phc-test-{}", std::process::id()));
        std::fs::write(&path, b"not a clock").unwrap();
        let mut phc = Phc::open(&path).unwrap();
        let result = phc.sample(10, 0.0);
        std::fs::remove_file(&path).unwrap();
        let err = result.unwrap_err();
        let PhcError::NoMethod { device, errors } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(device, &path);
        let ioctls: Vec<_> = errors.iter().map(|(ioctl, _)| *ioctl).collect();
        assert_eq!(
            ioctls,
            [
                "PTP_SYS_OFFSET_PRECISE",
                "PTP_SYS_OFFSET_EXTENDED",
                "PTP_SYS_OFFSET"
            ]
        );
        for (_, source) in errors {
            assert_eq!(source.raw_os_error(), Some(libc::ENOTTY));
        }
        let message = err.to_string();
        assert!(message.starts_with(&format!("PHC {}: cannot read it: ", path.display())));
        assert!(
            message
                .contains("PTP_SYS_OFFSET_PRECISE: Inappropriate ioctl for device (os error 25)"),
            "{message}"
        );
        assert_eq!(phc.method(), None);
        assert_eq!(phc.name(), None);
    }

    /// Once a method is known, its failure is an ioctl error naming it.
    #[test]
    fn a_known_method_failing_names_the_ioctl() {
        let mut phc = Phc::open("/dev/null").unwrap();
        phc.method = Some(PhcMethod::Extended);
        let err = phc.sample(10, 0.0).unwrap_err();
        assert!(
            matches!(&err, PhcError::Ioctl { ioctl: "PTP_SYS_OFFSET_EXTENDED", source, .. }
                if source.raw_os_error() == Some(libc::ENOTTY)),
            "{err:?}"
        );
        assert_eq!(
            Report(&err).to_string(),
            "PHC /dev/null: PTP_SYS_OFFSET_EXTENDED failed: \
             Inappropriate ioctl for device (os error 25)"
        );
    }

    #[test]
    fn clock_name_from_sysfs_class() {
        let dir = std::env::temp_dir().join(format!("timesync-sysfs-test-{}", std::process::id()));
        let class = dir.join("class/ptp/ptp0");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::write(class.join("clock_name"), "ptp_kvm\n").unwrap();
        // A regular file stands in for the device: no char-device number,
        // so the class path by file name is used.
        let file = File::open(class.join("clock_name")).unwrap();
        let found = clock_name(&file, Path::new("/dev/ptp0"), &dir);
        let missing = clock_name(&file, Path::new("/dev/ptp1"), &dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.as_deref(), Some("ptp_kvm"));
        assert_eq!(missing, None);
    }
}
