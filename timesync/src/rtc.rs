//! The real-time clock (`/dev/rtc0`), read once at start-up to decide
//! whether the system clock needs an initial step.
//!
//! Kata's hypervisors (QEMU, Cloud Hypervisor) give the guest an RTC in
//! UTC, as Linux keeps it, so `RTC_RD_TIME`'s broken-down time is converted
//! to Unix seconds with no time zone ([`days_from_civil`], the proleptic
//! Gregorian calendar). The RTC counts whole seconds: a reading is the start
//! of the current second, so its middle (`+ 0.5 s`) is the best estimate.
//!
//! The RTC character device admits one opener at a time (`EBUSY`
//! otherwise); [`read_rtc`] closes it before returning.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::sys;

/// The guest's RTC.
pub const RTC_DEVICE: &str = "/dev/rtc0";

/// A system clock before this is "unset" (2024-01-01T00:00:00Z): no
/// timesync build runs before it, as chrony treats a clock before its
/// build date as wrong.
pub const CLOCK_FLOOR: i64 = 1_704_067_200;

/// The earliest time the clock may be set to: the build's commit time
/// (`MINOS_BUILD_TIME`, Unix seconds, which `cargo xtask build` sets), or
/// [`CLOCK_FLOOR`] when it is missing or earlier. No clock this binary runs
/// on can rightly be before the binary was made.
pub fn earliest_sane_time() -> i64 {
    option_env!("MINOS_BUILD_TIME")
        .and_then(|time| time.parse::<i64>().ok())
        .map_or(CLOCK_FLOOR, |time| time.max(CLOCK_FLOOR))
}

#[derive(Debug, thiserror::Error)]
pub enum RtcError {
    #[error("cannot open RTC {}", device.display())]
    Open {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("RTC {}: RTC_RD_TIME failed", device.display())]
    Ioctl {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("RTC {}: invalid time", device.display())]
    Invalid {
        device: PathBuf,
        #[source]
        source: InvalidRtcTime,
    },
}

/// A broken-down time the RTC should never hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value} out of range")]
pub struct InvalidRtcTime {
    pub field: &'static str,
    pub value: i64,
}

/// A validated UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcTime {
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31 (within the month's length).
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0..=59: the RTC holds no leap second.
    pub second: u32,
}

impl RtcTime {
    /// Validates the kernel's `struct rtc_time` (`tm_year` from 1900,
    /// `tm_mon` from 0) as the kernel's `rtc_valid_tm` does: years before
    /// 1970 are invalid. `tm_wday`, `tm_yday` and `tm_isdst` are ignored.
    pub fn from_kernel(tm: &sys::RtcTime) -> Result<RtcTime, InvalidRtcTime> {
        let year = i64::from(tm.tm_year) + 1900;
        let month = i64::from(tm.tm_mon) + 1;
        check("year", year, 1970, i64::MAX)?;
        check("month", month, 1, 12)?;
        let month = month as u32;
        let day = i64::from(tm.tm_mday);
        check("day", day, 1, i64::from(days_in_month(year, month)))?;
        check("hour", i64::from(tm.tm_hour), 0, 23)?;
        check("minute", i64::from(tm.tm_min), 0, 59)?;
        check("second", i64::from(tm.tm_sec), 0, 59)?;
        Ok(RtcTime {
            year,
            month,
            day: day as u32,
            hour: tm.tm_hour as u32,
            minute: tm.tm_min as u32,
            second: tm.tm_sec as u32,
        })
    }

    /// Seconds since 1970-01-01T00:00:00Z.
    pub fn unix_seconds(&self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn check(field: &'static str, value: i64, min: i64, max: i64) -> Result<(), InvalidRtcTime> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(InvalidRtcTime { field, value })
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1..=12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to `year-month-day` (proleptic Gregorian; month
/// 1..=12, day 1..=31, not validated), negative before it. Howard Hinnant's
/// `days_from_civil`: years are counted from March, so the leap day is the
/// last day of the year, and eras of 400 years (146097 days) repeat.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month);
    let day = i64::from(day);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400); // 0..=399
    let month_from_march = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1; // 0..=365
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468: days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Reads `device` (normally [`RTC_DEVICE`]) as Unix seconds.
pub fn read_rtc(device: impl AsRef<Path>) -> Result<i64, RtcError> {
    let device = device.as_ref();
    let file = File::open(device).map_err(|source| RtcError::Open {
        device: device.to_owned(),
        source,
    })?;
    let tm = sys::rtc_rd_time(file.as_fd()).map_err(|source| RtcError::Ioctl {
        device: device.to_owned(),
        source,
    })?;
    drop(file);
    let time = RtcTime::from_kernel(&tm).map_err(|source| RtcError::Invalid {
        device: device.to_owned(),
        source,
    })?;
    Ok(time.unix_seconds())
}

/// Why the clock should be stepped before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepReason {
    /// The system clock is before [`CLOCK_FLOOR`]; the RTC is not.
    UnsetFromRtc,
    /// The system clock is before the floor and there is no usable RTC: the
    /// floor is the best lower bound there is.
    UnsetToFloor,
    /// The system clock differs from the RTC by more than the threshold.
    OffFromRtc,
}

/// The decision of [`initial_step`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InitialStep {
    NotNeeded,
    /// Step the system clock by `offset` seconds (reference minus system,
    /// as [`crate::clock::Clock::step`] takes it).
    Step {
        offset: f64,
        reason: StepReason,
    },
}

/// Decides whether the system clock, reading `system` (Unix seconds), needs
/// a step before synchronisation starts, given the RTC's reading (`None`
/// when there is no RTC or it could not be read):
///
/// - a system clock before `floor` is unset: step it to the RTC when the RTC
///   is past the floor, else to the floor;
/// - a set clock is stepped only when it is more than `threshold` seconds
///   from a (past-the-floor) RTC. Thresholds below the RTC's resolution of
///   1 s count as 1 s.
///
/// An RTC before the floor is ignored (a reset battery-less RTC).
pub fn initial_step(system: f64, rtc: Option<i64>, threshold: f64, floor: i64) -> InitialStep {
    let rtc = rtc.filter(|&rtc| rtc >= floor);
    let from_rtc = rtc.map(|rtc| rtc as f64 + 0.5 - system);
    if system < floor as f64 {
        return match from_rtc {
            Some(offset) => InitialStep::Step {
                offset,
                reason: StepReason::UnsetFromRtc,
            },
            None => InitialStep::Step {
                offset: floor as f64 - system,
                reason: StepReason::UnsetToFloor,
            },
        };
    }
    match from_rtc {
        Some(offset) if offset.abs() > threshold.max(1.0) => InitialStep::Step {
            offset,
            reason: StepReason::OffFromRtc,
        },
        _ => InitialStep::NotNeeded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minos_common::Report;

    fn tm(year: i32, month: i32, day: i32, hour: i32, min: i32, sec: i32) -> sys::RtcTime {
        sys::RtcTime {
            tm_sec: sec,
            tm_min: min,
            tm_hour: hour,
            tm_mday: day,
            tm_mon: month - 1,
            tm_year: year - 1900,
            ..sys::RtcTime::default()
        }
    }

    fn unix(year: i32, month: i32, day: i32, hour: i32, min: i32, sec: i32) -> i64 {
        RtcTime::from_kernel(&tm(year, month, day, hour, min, sec))
            .unwrap()
            .unix_seconds()
    }

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(unix(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix(1970, 1, 2, 0, 0, 1), 86_401);
        assert_eq!(unix(2000, 1, 1, 0, 0, 0), 946_684_800);
        assert_eq!(unix(2001, 9, 9, 1, 46, 40), 1_000_000_000);
        assert_eq!(unix(2023, 11, 14, 22, 13, 20), 1_700_000_000);
        assert_eq!(unix(2024, 1, 1, 0, 0, 0), CLOCK_FLOOR);
        assert_eq!(unix(1999, 12, 31, 23, 59, 59), 946_684_799);
    }

    #[test]
    fn leap_years() {
        // 2024 is a leap year, 2100 is not, 2000 is.
        assert_eq!(unix(2024, 2, 29, 12, 0, 0), 1_709_208_000);
        assert_eq!(
            unix(2024, 3, 1, 0, 0, 0) - unix(2024, 2, 28, 0, 0, 0),
            2 * 86_400
        );
        assert_eq!(
            unix(2023, 3, 1, 0, 0, 0) - unix(2023, 2, 28, 0, 0, 0),
            86_400
        );
        assert_eq!(
            unix(2000, 3, 1, 0, 0, 0) - unix(2000, 2, 28, 0, 0, 0),
            2 * 86_400
        );
        assert_eq!(
            unix(2100, 3, 1, 0, 0, 0) - unix(2100, 2, 28, 0, 0, 0),
            86_400
        );
        assert_eq!(
            unix(2025, 1, 1, 0, 0, 0) - unix(2024, 1, 1, 0, 0, 0),
            366 * 86_400
        );
        assert!(RtcTime::from_kernel(&tm(2100, 2, 29, 0, 0, 0)).is_err());
        assert!(RtcTime::from_kernel(&tm(2023, 2, 29, 0, 0, 0)).is_err());
    }

    #[test]
    fn past_2038() {
        // One second past the 32-bit time_t limit.
        assert_eq!(unix(2038, 1, 19, 3, 14, 8), 1 << 31);
        assert_eq!(unix(2106, 2, 7, 6, 28, 16), 1 << 32);
        assert_eq!(unix(2400, 3, 1, 0, 0, 0), 13_574_649_600);
    }

    /// Every day from 1970 to 2500 follows the previous one by 86400 s.
    #[test]
    fn days_are_contiguous() {
        let mut expected = 0;
        for year in 1970..2500 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(
                        days_from_civil(year, month, day),
                        expected,
                        "{year}-{month}-{day}"
                    );
                    expected += 1;
                }
            }
        }
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    #[test]
    fn invalid_fields_are_errors() {
        let cases = [
            (tm(1969, 12, 31, 23, 59, 59), "year", 1969),
            (tm(2024, 13, 1, 0, 0, 0), "month", 13),
            (tm(2024, 0, 1, 0, 0, 0), "month", 0),
            (tm(2024, 4, 31, 0, 0, 0), "day", 31),
            (tm(2024, 1, 0, 0, 0, 0), "day", 0),
            (tm(2024, 1, 1, 24, 0, 0), "hour", 24),
            (tm(2024, 1, 1, -1, 0, 0), "hour", -1),
            (tm(2024, 1, 1, 0, 60, 0), "minute", 60),
            (tm(2024, 1, 1, 0, 0, 60), "second", 60),
        ];
        for (time, field, value) in cases {
            assert_eq!(
                RtcTime::from_kernel(&time),
                Err(InvalidRtcTime { field, value }),
                "{time:?}"
            );
        }
        assert_eq!(
            InvalidRtcTime {
                field: "month",
                value: 13
            }
            .to_string(),
            "month 13 out of range"
        );
    }

    #[test]
    fn largest_year_does_not_overflow() {
        let time = RtcTime::from_kernel(&sys::RtcTime {
            tm_year: i32::MAX,
            tm_mon: 11,
            tm_mday: 31,
            ..sys::RtcTime::default()
        })
        .unwrap();
        assert_eq!(time.year, i64::from(i32::MAX) + 1900);
        assert!(time.unix_seconds() > 0);
    }

    #[test]
    fn errors_name_the_device() {
        let err = read_rtc("/dev/rtc9").unwrap_err();
        assert_eq!(
            Report(&err).to_string(),
            "cannot open RTC /dev/rtc9: No such file or directory (os error 2)"
        );
        let err = read_rtc("/dev/null").unwrap_err();
        assert_eq!(
            Report(&err).to_string(),
            "RTC /dev/null: RTC_RD_TIME failed: Inappropriate ioctl for device (os error 25)"
        );
    }

    const NOW: i64 = 1_750_000_000;

    #[test]
    fn set_clock_close_to_the_rtc_is_left_alone() {
        let system = NOW as f64 + 0.3;
        assert_eq!(
            initial_step(system, Some(NOW), 1.0, CLOCK_FLOOR),
            InitialStep::NotNeeded
        );
        assert_eq!(
            initial_step(system, Some(NOW - 5), 10.0, CLOCK_FLOOR),
            InitialStep::NotNeeded
        );
        // No RTC: nothing to compare with.
        assert_eq!(
            initial_step(system, None, 1.0, CLOCK_FLOOR),
            InitialStep::NotNeeded
        );
        // A threshold below the RTC's resolution counts as 1 s.
        assert_eq!(
            initial_step(system, Some(NOW), 0.0, CLOCK_FLOOR),
            InitialStep::NotNeeded
        );
    }

    #[test]
    fn set_clock_far_from_the_rtc_is_stepped() {
        let system = NOW as f64 + 0.5;
        assert_eq!(
            initial_step(system, Some(NOW + 100), 10.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: 100.0,
                reason: StepReason::OffFromRtc
            }
        );
        assert_eq!(
            initial_step(system, Some(NOW - 100), 10.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: -100.0,
                reason: StepReason::OffFromRtc
            }
        );
        // An RTC before the floor is not believed.
        assert_eq!(
            initial_step(system, Some(0), 10.0, CLOCK_FLOOR),
            InitialStep::NotNeeded
        );
    }

    #[test]
    fn unset_clock_is_stepped() {
        // A guest booted with its clock at the epoch.
        assert_eq!(
            initial_step(5.0, Some(NOW), 1000.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: NOW as f64 - 4.5,
                reason: StepReason::UnsetFromRtc
            }
        );
        assert_eq!(
            initial_step(5.0, None, 1000.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: CLOCK_FLOOR as f64 - 5.0,
                reason: StepReason::UnsetToFloor
            }
        );
        assert_eq!(
            initial_step(5.0, Some(10), 1000.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: CLOCK_FLOOR as f64 - 5.0,
                reason: StepReason::UnsetToFloor
            }
        );
        // Just before the floor counts as unset, even close to the RTC.
        let system = CLOCK_FLOOR as f64 - 0.25;
        assert_eq!(
            initial_step(system, Some(CLOCK_FLOOR), 1000.0, CLOCK_FLOOR),
            InitialStep::Step {
                offset: 0.75,
                reason: StepReason::UnsetFromRtc
            }
        );
    }
}
