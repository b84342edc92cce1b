//! A simulated [`Clock`] for testing the discipline without touching any
//! real clock: pure arithmetic on a few numbers, deterministic.
//!
//! The model, with every quantity in seconds and frequencies in ppm:
//!
//! - *true time* advances only when the test calls [`SimClock::advance`];
//! - the local clock and the monotonic clock both run at rate
//!   `(1 + intrinsic) × (1 + frequency)` against true time, as Linux's
//!   `CLOCK_REALTIME` and `CLOCK_MONOTONIC` do (the kernel's frequency
//!   correction slews both; only `CLOCK_REALTIME` is ever stepped);
//! - the *offset* is true time minus local time (the [`crate::clock`] sign
//!   convention): [`Clock::step`] by `x` moves the local clock forward by `x`,
//!   so the offset decreases by `x`; [`SimClock::jump`] by `x` moves the
//!   local clock back by `x` (as when a VM was paused and its clock stopped),
//!   so the offset increases by `x`;
//! - [`Clock::set_frequency`] behaves like the kernel's tick length and
//!   frequency together: a value beyond ±[`KERNEL_MAX_FREQUENCY_PPM`]
//!   (100,500 ppm) is clamped silently, and both
//!   the requested and the applied value are recorded; a non-finite value is
//!   refused with an error (the real layer could not even encode it);
//! - every step, frequency change and sync status is recorded for assertions;
//! - [`SimClock::set_failing`] makes every clock call fail, to test error
//!   paths.
//!
//! [`SimClock::sample`] returns a [`Sample`] whose offset is the true offset
//! plus Gaussian noise drawn from a small seeded generator ([`Rng`]), so a
//! test with a given seed always sees the same numbers.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use crate::clock::{Clock, ClockError, Sample, SyncStatus};

/// The kernel's limit of tick length (±10 %) and frequency (±500 ppm)
/// together, ppm.
pub const KERNEL_MAX_FREQUENCY_PPM: f64 = 100_500.0;

/// SplitMix64: a tiny, fast, well-distributed generator for deterministic
/// test noise (not for anything security-related).
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in the open interval (0, 1).
    pub fn uniform(&mut self) -> f64 {
        // 53 random bits, centred in their cell so 0 and 1 never occur.
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn gaussian(&mut self) -> f64 {
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        radius * (std::f64::consts::TAU * self.uniform()).cos()
    }
}

/// One [`Clock::step`] call that succeeded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// True time of the call.
    pub true_time: f64,
    pub monotonic: f64,
    /// The step requested (and applied), seconds.
    pub step: f64,
    /// The clock's true offset right after the step.
    pub offset_after: f64,
}

/// One [`Clock::set_frequency`] call that succeeded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrequencyRecord {
    pub true_time: f64,
    pub monotonic: f64,
    pub requested_ppm: f64,
    /// After the kernel-like clamp to ±500 ppm.
    pub applied_ppm: f64,
}

/// The simulated clock; see the module documentation for the model.
#[derive(Debug, Clone)]
pub struct SimClock {
    true_time: f64,
    monotonic: f64,
    offset: f64,
    intrinsic_ppm: f64,
    frequency_ppm: f64,
    delay: f64,
    root_distance: f64,
    failing: bool,
    rng: Rng,
    steps: Vec<StepRecord>,
    frequencies: Vec<FrequencyRecord>,
    sync_statuses: Vec<SyncStatus>,
}

impl SimClock {
    /// The Unix time true time 0 stands for (2027-01-15): the local
    /// clock's [`Clock::realtime`] is this plus true time minus the offset.
    pub const EPOCH: f64 = 1_800_000_000.0;

    /// A clock whose oscillator runs `intrinsic_ppm` fast (negative: slow),
    /// with no frequency correction applied, `initial_offset` seconds behind
    /// true time (negative: ahead); true and monotonic time start at 0.
    pub fn new(intrinsic_ppm: f64, initial_offset: f64, seed: u64) -> Self {
        Self {
            true_time: 0.0,
            monotonic: 0.0,
            offset: initial_offset,
            intrinsic_ppm,
            frequency_ppm: 0.0,
            delay: 0.0,
            root_distance: 0.0,
            failing: false,
            rng: Rng::new(seed),
            steps: Vec::new(),
            frequencies: Vec::new(),
            sync_statuses: Vec::new(),
        }
    }

    /// The local clock's rate against true time (1 = perfect).
    fn rate(&self) -> f64 {
        (1.0 + self.intrinsic_ppm * 1e-6) * (1.0 + self.frequency_ppm * 1e-6)
    }

    /// Lets `seconds` of true time pass (negative or non-finite: nothing).
    pub fn advance(&mut self, seconds: f64) {
        if !(seconds.is_finite() && seconds > 0.0) {
            return;
        }
        let rate = self.rate();
        self.true_time += seconds;
        self.monotonic += seconds * rate;
        self.offset -= seconds * (rate - 1.0);
    }

    /// Lets true time pass until monotonic time reaches `monotonic` (at
    /// the current rate; nothing if it is not later).
    pub fn advance_monotonic_to(&mut self, monotonic: f64) {
        let seconds = (monotonic - self.monotonic) / self.rate();
        self.advance(seconds);
        // Exact, whatever the rounding of the division.
        if seconds.is_finite() && seconds > 0.0 {
            self.monotonic = monotonic;
        }
    }

    /// Moves the local clock back by `seconds` (forward if negative): the
    /// true offset grows by `seconds`. Monotonic time is not affected.
    pub fn jump(&mut self, seconds: f64) {
        self.offset += seconds;
    }

    /// Changes the oscillator's intrinsic frequency error.
    pub fn set_intrinsic_ppm(&mut self, ppm: f64) {
        self.intrinsic_ppm = ppm;
    }

    /// The delay reported in the samples (default 0).
    pub fn set_delay(&mut self, delay: f64) {
        self.delay = delay;
    }

    /// The root distance reported in the samples (default 0).
    pub fn set_root_distance(&mut self, root_distance: f64) {
        self.root_distance = root_distance;
    }

    /// While true, every [`Clock`] call except `monotonic` fails.
    pub fn set_failing(&mut self, failing: bool) {
        self.failing = failing;
    }

    /// A measurement now: the true offset plus Gaussian noise with standard
    /// deviation `noise`.
    pub fn sample(&mut self, noise: f64) -> Sample {
        Sample {
            monotonic: self.monotonic,
            offset: self.offset + noise * self.rng.gaussian(),
            delay: self.delay,
            root_distance: self.root_distance,
        }
    }

    /// True time minus local time, seconds (exact, without noise).
    pub fn offset(&self) -> f64 {
        self.offset
    }

    pub fn true_time(&self) -> f64 {
        self.true_time
    }

    pub fn intrinsic_ppm(&self) -> f64 {
        self.intrinsic_ppm
    }

    /// The frequency correction currently applied, ppm.
    pub fn applied_frequency_ppm(&self) -> f64 {
        self.frequency_ppm
    }

    /// The correction that makes the clock run exactly at true rate, ppm
    /// (≈ −intrinsic).
    pub fn ideal_frequency_ppm(&self) -> f64 {
        (1.0 / (1.0 + self.intrinsic_ppm * 1e-6) - 1.0) * 1e6
    }

    pub fn steps(&self) -> &[StepRecord] {
        &self.steps
    }

    pub fn frequency_changes(&self) -> &[FrequencyRecord] {
        &self.frequencies
    }

    pub fn sync_statuses(&self) -> &[SyncStatus] {
        &self.sync_statuses
    }

    /// The standard generator this clock draws its noise from, for tests
    /// that need more random numbers from the same seed.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    fn check(&self, call: &'static str) -> Result<(), ClockError> {
        if self.failing {
            return Err(ClockError {
                call,
                message: "simulated failure".into(),
            });
        }
        Ok(())
    }
}

impl Clock for SimClock {
    fn monotonic(&self) -> f64 {
        self.monotonic
    }

    /// [`SimClock::EPOCH`] plus true time, minus the offset.
    fn realtime(&self) -> f64 {
        Self::EPOCH + self.true_time - self.offset
    }

    fn frequency(&self) -> Result<f64, ClockError> {
        self.check("frequency")?;
        Ok(self.frequency_ppm)
    }

    fn set_frequency(&mut self, ppm: f64) -> Result<(), ClockError> {
        self.check("set_frequency")?;
        if !ppm.is_finite() {
            return Err(ClockError {
                call: "set_frequency",
                message: format!("invalid frequency {ppm}"),
            });
        }
        self.frequency_ppm = ppm.clamp(-KERNEL_MAX_FREQUENCY_PPM, KERNEL_MAX_FREQUENCY_PPM);
        self.frequencies.push(FrequencyRecord {
            true_time: self.true_time,
            monotonic: self.monotonic,
            requested_ppm: ppm,
            applied_ppm: self.frequency_ppm,
        });
        Ok(())
    }

    fn step(&mut self, offset: f64) -> Result<(), ClockError> {
        self.check("step")?;
        if !offset.is_finite() {
            return Err(ClockError {
                call: "step",
                message: format!("invalid step {offset}"),
            });
        }
        self.offset -= offset;
        self.steps.push(StepRecord {
            true_time: self.true_time,
            monotonic: self.monotonic,
            step: offset,
            offset_after: self.offset,
        });
        Ok(())
    }

    fn set_sync_status(&mut self, status: SyncStatus) -> Result<(), ClockError> {
        self.check("set_sync_status")?;
        self.sync_statuses.push(status);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_running_clock_drifts_by_its_intrinsic_error() {
        let mut clock = SimClock::new(100.0, 0.0, 1);
        clock.advance(1000.0);
        // 100 ppm fast: 0.1 s ahead of true time after 1000 s.
        assert!((clock.offset() + 0.1).abs() < 1e-12, "{}", clock.offset());
        assert!((clock.monotonic() - 1000.1).abs() < 1e-9);
        assert_eq!(clock.true_time(), 1000.0);
    }

    #[test]
    fn ideal_frequency_stops_the_drift() {
        let mut clock = SimClock::new(-100.0, 0.25, 1);
        let ideal = clock.ideal_frequency_ppm();
        assert!((ideal - 100.01).abs() < 1e-3, "{ideal}");
        clock.set_frequency(ideal).unwrap();
        clock.advance(1e6);
        assert!((clock.offset() - 0.25).abs() < 1e-9, "{}", clock.offset());
    }

    #[test]
    fn step_jump_and_records() {
        let mut clock = SimClock::new(0.0, 5.0, 1);
        clock.step(4.0).unwrap();
        assert_eq!(clock.offset(), 1.0);
        clock.jump(-3.0);
        assert_eq!(clock.offset(), -2.0);
        clock.advance(2.0);
        clock.step(-2.0).unwrap();
        assert_eq!(clock.offset(), 0.0);
        assert_eq!(
            clock.steps(),
            [
                StepRecord {
                    true_time: 0.0,
                    monotonic: 0.0,
                    step: 4.0,
                    offset_after: 1.0
                },
                StepRecord {
                    true_time: 2.0,
                    monotonic: 2.0,
                    step: -2.0,
                    offset_after: 0.0
                },
            ]
        );
        assert!(clock.step(f64::NAN).is_err());
        assert_eq!(clock.steps().len(), 2);
    }

    #[test]
    fn frequency_is_clamped_like_the_kernel() {
        let mut clock = SimClock::new(0.0, 0.0, 1);
        clock.set_frequency(100_800.0).unwrap();
        assert_eq!(clock.frequency().unwrap(), 100_500.0);
        clock.set_frequency(-100_501.0).unwrap();
        assert_eq!(clock.frequency().unwrap(), -100_500.0);
        assert!(clock.set_frequency(f64::INFINITY).is_err());
        let records = clock.frequency_changes();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].requested_ppm, records[0].applied_ppm),
            (100_800.0, 100_500.0)
        );
    }

    #[test]
    fn failing_clock_fails_every_call_but_monotonic() {
        let mut clock = SimClock::new(0.0, 0.0, 1);
        clock.set_failing(true);
        assert_eq!(clock.step(1.0).unwrap_err().call, "step");
        assert_eq!(clock.set_frequency(1.0).unwrap_err().call, "set_frequency");
        assert_eq!(clock.frequency().unwrap_err().call, "frequency");
        let status = SyncStatus {
            synchronised: true,
            max_error: 1.0,
            est_error: 1.0,
        };
        assert!(clock.set_sync_status(status).is_err());
        assert_eq!(clock.monotonic(), 0.0);
        assert!(clock.steps().is_empty() && clock.sync_statuses().is_empty());
        clock.set_failing(false);
        clock.set_sync_status(status).unwrap();
        assert_eq!(clock.sync_statuses(), [status]);
    }

    #[test]
    fn noise_is_deterministic_and_has_the_requested_spread() {
        let mut a = SimClock::new(0.0, 0.0, 42);
        let mut b = SimClock::new(0.0, 0.0, 42);
        let samples: Vec<f64> = (0..20_000).map(|_| a.sample(1e-6).offset).collect();
        assert!(samples
            .iter()
            .all(|&offset| offset == b.sample(1e-6).offset));
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let sd = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 3e-8, "{mean}");
        assert!((sd - 1e-6).abs() < 3e-8, "{sd}");
        let mut c = SimClock::new(0.0, 0.0, 43);
        assert_ne!(c.sample(1e-6).offset, samples[0]);
    }

    #[test]
    fn uniform_stays_inside_the_open_interval() {
        let mut rng = Rng::new(0);
        for _ in 0..100_000 {
            let u = rng.uniform();
            assert!(u > 0.0 && u < 1.0, "{u}");
        }
    }
}
