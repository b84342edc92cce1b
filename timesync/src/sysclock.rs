//! The real [`Clock`]: `CLOCK_REALTIME` disciplined through
//! `clock_adjtime` (the calls themselves are in [`crate::sys`]), and
//! [`ObserveClock`], the observe-only stand-in that never sets anything.
//!
//! - Frequency: the tick length (`ADJ_TICK`, µs per 1/100 s: each µs
//!   over the nominal 10,000 is +100 ppm, within ±10 %) and `ADJ_FREQUENCY`
//!   (the kernel's scaled ppm, ppm × 2¹⁶, within ±500) set together, as
//!   chronyd does on Linux: [`frequency_to_timex`] puts whole 100 ppm steps
//!   in the tick and the rest in the frequency, so anything within ±50 ppm
//!   leaves the tick nominal, and up to ±100,500 ppm can be applied while an
//!   offset is slewed away. A positive value makes the clock run faster, as
//!   [`Clock`] defines it.
//! - Step: `ADJ_SETOFFSET | ADJ_NANO` (relative, so no time passes between
//!   reading and setting the clock).
//! - Status: `ADJ_STATUS | ADJ_MAXERROR | ADJ_ESTERROR`: `STA_UNSYNC`
//!   cleared or set, the errors in µs. `STA_PLL` is always cleared so that
//!   the kernel's own PLL never acts on offsets (we never pass
//!   `ADJ_OFFSET`): timesync alone steers the clock, by frequency.
//!
//! Monotonic time is `CLOCK_MONOTONIC`, which steps never move.

use rustix::time::{clock_gettime, ClockId, Timespec};

use crate::clock::{Clock, ClockError, SyncStatus};
use crate::sys;

/// One ppm in the kernel's scaled-ppm unit (`timex.freq`).
pub const SCALED_PPM_PER_PPM: f64 = 65_536.0;

/// The kernel's frequency limit (`MAXFREQ`), ppm.
pub const MAX_FREQUENCY_PPM: f64 = 500.0;

/// The nominal tick length, µs: 1/USER_HZ s (USER_HZ is 100 on every
/// architecture Linux runs timesync on; a unit test checks `AT_CLKTCK`).
pub const NOMINAL_TICK_US: i64 = 10_000;
/// The tick lengths the kernel accepts: ±10 %.
pub const TICK_RANGE_US: std::ops::RangeInclusive<i64> = 9_000..=11_000;
/// ppm per µs of tick length.
pub const PPM_PER_TICK_US: f64 = 100.0;
/// The largest frequency tick and frequency give together, ppm.
pub const MAX_TOTAL_PPM: f64 = 100_500.0;

/// ppm → (tick µs, scaled ppm): whole 100 ppm steps in the tick, the rest in
/// the frequency; clamped to ±[`MAX_TOTAL_PPM`]. `None` for NaN or infinity.
pub fn frequency_to_timex(ppm: f64) -> Option<(i64, i64)> {
    if !ppm.is_finite() {
        return None;
    }
    let ppm = ppm.clamp(-MAX_TOTAL_PPM, MAX_TOTAL_PPM);
    // Within ±1005 after the clamp: exact.
    let steps = (ppm / PPM_PER_TICK_US).round_ties_even() as i64;
    let tick = (NOMINAL_TICK_US + steps).clamp(*TICK_RANGE_US.start(), *TICK_RANGE_US.end());
    let rest = ppm - (tick - NOMINAL_TICK_US) as f64 * PPM_PER_TICK_US;
    Some((tick, ppm_to_scaled(rest)?))
}

/// (tick µs, scaled ppm) → ppm.
pub fn timex_to_frequency(tick: i64, scaled: i64) -> f64 {
    (tick - NOMINAL_TICK_US) as f64 * PPM_PER_TICK_US + scaled_to_ppm(scaled)
}

/// ppm → scaled ppm, rounded, clamped to ±[`MAX_FREQUENCY_PPM`]. `None`
/// for NaN or infinity.
pub fn ppm_to_scaled(ppm: f64) -> Option<i64> {
    if !ppm.is_finite() {
        return None;
    }
    let ppm = ppm.clamp(-MAX_FREQUENCY_PPM, MAX_FREQUENCY_PPM);
    // At most 500 × 65536: exact in both types.
    Some((ppm * SCALED_PPM_PER_PPM).round() as i64)
}

/// Scaled ppm → ppm.
pub fn scaled_to_ppm(scaled: i64) -> f64 {
    scaled as f64 / SCALED_PPM_PER_PPM
}

/// Seconds → whole nanoseconds for a step; `None` if not finite or beyond
/// ±292 years.
pub fn step_nanos(offset: f64) -> Option<i64> {
    let ns = (offset * 1e9).round();
    // i64::MAX as f64 rounds up to 2^63, which is out of range.
    (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns as i64)
}

/// The status word to write: `current` with `STA_PLL` cleared and
/// `STA_UNSYNC` set unless `synchronised`; other bits (leap second
/// insertion, the read-only ones) kept.
pub fn status_word(current: i32, synchronised: bool) -> i32 {
    let status = current & !(libc::STA_PLL | libc::STA_UNSYNC);
    if synchronised {
        status
    } else {
        status | libc::STA_UNSYNC
    }
}

/// Seconds → µs for `maxerror`/`esterror`, within the kernel's range.
pub fn error_micros(seconds: f64) -> i64 {
    if seconds.is_nan() {
        return sys::MAX_ERROR_LIMIT_US;
    }
    ((seconds * 1e6).round() as i64).clamp(0, sys::MAX_ERROR_LIMIT_US)
}

fn seconds(ts: Timespec) -> f64 {
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `CLOCK_MONOTONIC`, seconds.
pub fn monotonic_now() -> f64 {
    seconds(clock_gettime(ClockId::Monotonic))
}

/// `CLOCK_REALTIME`, Unix seconds (about 0.2 µs resolution in an `f64`).
pub fn realtime_now() -> f64 {
    seconds(clock_gettime(ClockId::Realtime))
}

/// `CLOCK_REALTIME` under timesync's control. Needs `CAP_SYS_TIME` for
/// everything but [`Clock::frequency`] and [`Clock::monotonic`].
#[derive(Debug, Default)]
pub struct SystemClock {
    _private: (),
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock { _private: () }
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> f64 {
        monotonic_now()
    }

    fn realtime(&self) -> f64 {
        realtime_now()
    }

    fn frequency(&self) -> Result<f64, ClockError> {
        let state = sys::adjtime_read()?;
        Ok(timex_to_frequency(state.tick, state.freq))
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError> {
        let (tick, scaled) = frequency_to_timex(ppm).ok_or_else(|| ClockError {
            call: "ADJ_FREQUENCY",
            message: format!("invalid frequency {ppm} ppm"),
        })?;
        sys::adjtime_set_frequency(tick, scaled)
    }

    fn step(&mut self, offset: f64) -> Result<(), ClockError> {
        let ns = step_nanos(offset).ok_or_else(|| ClockError {
            call: "ADJ_SETOFFSET",
            message: format!("invalid step {offset} s"),
        })?;
        sys::adjtime_step(ns)
    }

    fn set_sync_status(&mut self, status: SyncStatus) -> Result<(), ClockError> {
        let current = sys::adjtime_read()?.status;
        sys::adjtime_set_status(
            status_word(current, status.synchronised),
            error_micros(status.max_error),
            error_micros(status.est_error),
        )
    }
}

/// Observe-only mode: a [`Clock`] that reads the real monotonic clock but
/// never sets anything. It remembers what it would have done (the frequency
/// it would have set, which [`Clock::frequency`] then returns; the steps;
/// the last status) and logs each action at debug level.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserveClock {
    /// The kernel's frequency, which stays in force.
    base_frequency: f64,
    /// Virtual frequency correction accumulated before `since`, seconds.
    accumulated: f64,
    /// Monotonic time of the last virtual frequency change.
    since: f64,
    frequency: f64,
    frequency_sets: u64,
    steps: u64,
    total_step: f64,
    last_step: Option<f64>,
    sync_status: Option<SyncStatus>,
}

impl ObserveClock {
    /// Starts from `frequency` ppm (e.g. the kernel's current one).
    pub fn new(frequency: f64) -> ObserveClock {
        ObserveClock {
            base_frequency: frequency,
            accumulated: 0.0,
            since: monotonic_now(),
            frequency,
            frequency_sets: 0,
            steps: 0,
            total_step: 0.0,
            last_step: None,
            sync_status: None,
        }
    }

    /// Starts from the kernel's current frequency (a read-only query).
    pub fn from_system() -> Result<ObserveClock, ClockError> {
        let state = sys::adjtime_read()?;
        Ok(ObserveClock::new(timex_to_frequency(
            state.tick, state.freq,
        )))
    }

    /// How many times a frequency would have been set.
    pub fn frequency_sets(&self) -> u64 {
        self.frequency_sets
    }

    /// How many steps would have been made.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The sum of the steps that would have been made, seconds.
    pub fn total_step(&self) -> f64 {
        self.total_step
    }

    pub fn last_step(&self) -> Option<f64> {
        self.last_step
    }

    /// The last status that would have been published.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.sync_status
    }
}

impl Clock for ObserveClock {
    fn monotonic(&self) -> f64 {
        monotonic_now()
    }

    /// The virtual clock's time: the real one plus what it was not given.
    fn realtime(&self) -> f64 {
        realtime_now() + self.unapplied_correction(monotonic_now())
    }

    fn frequency(&self) -> Result<f64, ClockError> {
        Ok(self.frequency)
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError> {
        let (tick, scaled) = frequency_to_timex(ppm).ok_or_else(|| ClockError {
            call: "ADJ_FREQUENCY",
            message: format!("invalid frequency {ppm} ppm"),
        })?;
        let ppm = timex_to_frequency(tick, scaled);
        log::debug!("observe-only: would set frequency {ppm:+.3} ppm");
        let now = monotonic_now();
        self.accumulated += (self.frequency - self.base_frequency) * 1e-6 * (now - self.since);
        self.since = now;
        self.frequency = ppm;
        self.frequency_sets += 1;
        Ok(())
    }

    fn step(&mut self, offset: f64) -> Result<(), ClockError> {
        if step_nanos(offset).is_none() {
            return Err(ClockError {
                call: "ADJ_SETOFFSET",
                message: format!("invalid step {offset} s"),
            });
        }
        log::debug!("observe-only: would step the clock by {offset:+.9} s");
        self.steps += 1;
        self.total_step += offset;
        self.last_step = Some(offset);
        Ok(())
    }

    fn unapplied_correction(&self, monotonic: f64) -> f64 {
        self.total_step
            + self.accumulated
            + (self.frequency - self.base_frequency) * 1e-6 * (monotonic - self.since)
    }

    fn set_sync_status(&mut self, status: SyncStatus) -> Result<(), ClockError> {
        log::debug!(
            "observe-only: would set status synchronised={} maxerror={:.6} s esterror={:.6} s",
            status.synchronised,
            status.max_error,
            status.est_error
        );
        self.sync_status = Some(status);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_clock_keeps_a_virtual_clock() {
        let mut clock = ObserveClock::new(-3.0);
        let start = monotonic_now();
        assert_eq!(clock.unapplied_correction(start), 0.0);
        clock.step(1.5).unwrap();
        assert_eq!(clock.unapplied_correction(start), 1.5);
        // +100 ppm over the kernel's -3 ppm: the virtual clock gains 100 µs
        // per second of monotonic time from the change on.
        clock.set_frequency(97.0).unwrap();
        let changed = monotonic_now();
        let later = changed + 10.0;
        let expected = 1.5 + 100e-6 * 10.0;
        assert!((clock.unapplied_correction(later) - expected).abs() < 1e-6);
        // Back to the kernel's frequency: what was gained stays.
        clock.set_frequency(-3.0).unwrap();
        let gained = clock.unapplied_correction(monotonic_now());
        assert!(gained > 1.5 && gained < 1.5 + 1e-3, "{gained}");
        assert_eq!(clock.unapplied_correction(later + 100.0), gained);
    }

    #[test]
    fn scaled_ppm_round_trips() {
        for ppm in [0.0, 1.0, -1.0, 12.5, -37.25, 499.0, -500.0, 1.0 / 65536.0] {
            assert_eq!(scaled_to_ppm(ppm_to_scaled(ppm).unwrap()), ppm, "{ppm}");
        }
        for scaled in [
            0,
            1,
            -1,
            65_536,
            -65_536,
            1_234_567,
            500 << 16,
            -(500 << 16),
        ] {
            assert_eq!(
                ppm_to_scaled(scaled_to_ppm(scaled)),
                Some(scaled),
                "{scaled}"
            );
        }
        assert_eq!(ppm_to_scaled(1.0), Some(65_536));
        assert_eq!(ppm_to_scaled(-0.5), Some(-32_768));
        // Rounded to the nearest 1/65536 ppm.
        assert_eq!(ppm_to_scaled(1.4 / 65_536.0), Some(1));
        assert_eq!(ppm_to_scaled(1.6 / 65_536.0), Some(2));
    }

    #[test]
    fn frequency_is_clamped_and_checked() {
        assert_eq!(ppm_to_scaled(501.0), Some(500 << 16));
        assert_eq!(ppm_to_scaled(-1e9), Some(-(500 << 16)));
        assert_eq!(ppm_to_scaled(f64::NAN), None);
        assert_eq!(ppm_to_scaled(f64::INFINITY), None);
    }

    #[test]
    fn tick_carries_whole_hundreds_of_ppm() {
        // Within ±50 ppm the tick stays nominal.
        assert_eq!(frequency_to_timex(0.0), Some((10_000, 0)));
        assert_eq!(
            frequency_to_timex(49.5),
            Some((10_000, ppm_to_scaled(49.5).unwrap()))
        );
        assert_eq!(frequency_to_timex(-50.0), Some((10_000, -50 << 16)));
        // chrony's default maxslewrate plus a 12.5 ppm estimate.
        let (tick, scaled) = frequency_to_timex(83_345.833).unwrap();
        assert_eq!(tick, 10_833);
        assert!((timex_to_frequency(tick, scaled) - 83_345.833).abs() < 1e-4);
        assert!(scaled_to_ppm(scaled).abs() <= 50.0);
        // The ends: ±10 % of tick plus ±500 ppm, nothing beyond.
        assert_eq!(frequency_to_timex(100_500.0), Some((11_000, 500 << 16)));
        assert_eq!(frequency_to_timex(1e9), Some((11_000, 500 << 16)));
        assert_eq!(frequency_to_timex(-1e9), Some((9_000, -(500 << 16))));
        assert_eq!(frequency_to_timex(f64::NAN), None);
        for ppm in [-100_500.0, -12_345.678, -0.001, 0.001, 777.25, 99_999.0] {
            let (tick, scaled) = frequency_to_timex(ppm).unwrap();
            assert!(TICK_RANGE_US.contains(&tick), "{ppm}");
            assert!(
                (timex_to_frequency(tick, scaled) - ppm).abs() < 1e-4,
                "{ppm}"
            );
        }
    }

    #[test]
    fn user_hz_is_100() {
        // The kernel's AT_CLKTCK: what `tick` is a fraction of.
        assert_eq!(
            rustix::param::clock_ticks_per_second() as i64 * NOMINAL_TICK_US,
            1_000_000
        );
    }

    #[test]
    fn step_conversion() {
        assert_eq!(step_nanos(1.5), Some(1_500_000_000));
        assert_eq!(step_nanos(-0.000_000_001), Some(-1));
        assert_eq!(step_nanos(1.7e9), Some(1_700_000_000_000_000_000));
        assert_eq!(step_nanos(f64::NAN), None);
        assert_eq!(step_nanos(1e10), None);
    }

    #[test]
    fn status_word_bits() {
        let pll_unsync = libc::STA_PLL | libc::STA_UNSYNC;
        assert_eq!(status_word(pll_unsync, true), 0);
        assert_eq!(status_word(pll_unsync, false), libc::STA_UNSYNC);
        assert_eq!(status_word(0, false), libc::STA_UNSYNC);
        // Leap-second and read-only bits are kept.
        let kept = libc::STA_INS | libc::STA_NANO;
        assert_eq!(status_word(kept | libc::STA_PLL, true), kept);
    }

    #[test]
    fn error_micros_within_kernel_range() {
        assert_eq!(error_micros(0.000_25), 250);
        assert_eq!(error_micros(-1.0), 0);
        assert_eq!(error_micros(100.0), sys::MAX_ERROR_LIMIT_US);
        assert_eq!(error_micros(f64::NAN), sys::MAX_ERROR_LIMIT_US);
        assert_eq!(error_micros(f64::INFINITY), sys::MAX_ERROR_LIMIT_US);
    }

    #[test]
    fn observe_clock_records() {
        let mut clock = ObserveClock::new(3.0);
        assert_eq!(clock.frequency(), Ok(3.0));
        clock.set_frequency(-12.5).unwrap();
        clock.set_frequency(1e6).unwrap();
        assert_eq!(clock.frequency(), Ok(MAX_TOTAL_PPM));
        assert_eq!(clock.frequency_sets(), 2);
        clock.step(0.25).unwrap();
        clock.step(-1.0).unwrap();
        assert_eq!(clock.steps(), 2);
        assert_eq!(clock.total_step(), -0.75);
        assert_eq!(clock.last_step(), Some(-1.0));
        let status = SyncStatus {
            synchronised: true,
            max_error: 0.01,
            est_error: 0.001,
        };
        clock.set_sync_status(status).unwrap();
        assert_eq!(clock.sync_status(), Some(status));
        assert!(clock.set_frequency(f64::NAN).is_err());
        assert!(clock.step(f64::INFINITY).is_err());
        assert_eq!(clock.frequency_sets(), 2);
        assert_eq!(clock.steps(), 2);
        let t0 = clock.monotonic();
        assert!(clock.monotonic() >= t0);
    }

    /// `ObserveClock`'s methods reach nothing in `sys` (and so no kernel
    /// setting call): its whole impl is checked in the source.
    #[test]
    fn observe_clock_never_calls_the_kernel() {
        let source = include_str!("sysclock.rs");
        let start = source
            .find(concat!("impl Clock for ", "ObserveClock"))
            .unwrap();
        let body = &source[start..];
        let body = &body[..body.find("\n}\n").unwrap()];
        assert!(body.contains("fn set_sync_status"), "{body}");
        assert!(!body.contains("sys::"), "{body}");
        assert!(!body.contains("SystemClock"), "{body}");
    }

    #[test]
    fn observe_clock_from_system_reads_the_kernel_frequency() {
        let clock = ObserveClock::from_system().unwrap();
        let ppm = clock.frequency().unwrap();
        assert!(ppm.abs() <= MAX_FREQUENCY_PPM, "{ppm}");
        assert_eq!(clock.frequency_sets(), 0);
    }

    /// The read-only path of `SystemClock`: frequency and monotonic time.
    #[test]
    fn system_clock_reads() {
        let clock = SystemClock::new();
        let ppm = clock.frequency().unwrap();
        assert!(ppm.abs() <= MAX_FREQUENCY_PPM, "{ppm}");
        let t0 = clock.monotonic();
        let t1 = clock.monotonic();
        assert!(t0 > 0.0 && t1 >= t0, "{t0} {t1}");
        // After 2024 on this machine.
        assert!(realtime_now() > crate::rtc::CLOCK_FLOOR as f64);
    }
}
