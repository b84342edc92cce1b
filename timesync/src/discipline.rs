//! The clock discipline: turns the filtered samples of the selected source
//! into frequency settings and steps of the system clock.
//!
//! Sans-IO: it only talks to a [`Clock`] (the real one in
//! [`crate::sysclock`], [`crate::simclock::SimClock`] in tests). The caller:
//!
//! - creates it with [`Discipline::new`] (`DisciplineConfig::from_config`
//!   carries the file's `makestep`) and tells it the selected source's poll
//!   interval with [`Discipline::set_poll_interval`] (again whenever it
//!   changes): until then the discipline assumes 64 s, which is safe for any
//!   source but slow for a PHC read every second;
//! - feeds the selected source's filtered samples to [`Discipline::update`]
//!   in the order they were taken; while the outcome is
//!   [`Outcome::BurstWanted`], takes another sample at once and feeds it;
//! - calls [`Discipline::mark_unsynchronised`] after a long loss of samples;
//! - shows [`Discipline::status`] for `timesync status`.
//!
//! # Algorithm
//!
//! **Samples in clock-independent form.** The discipline knows every
//! correction it has applied: the frequency it set and when, and each step.
//! Their sum up to monotonic time `m` is the accumulated correction `C(m)`
//! (the integral of the frequency correction plus the steps). Each sample is
//! stored as `raw = offset + C(m)`: the offset the clock would have shown
//! with no correction ever applied. Raw offsets lie on a straight line whose
//! slope is the frequency correction the clock needs; slewing and stepping
//! do not bend that line, so they neither bias the frequency estimate nor
//! require the history to be discarded (chrony reaches the same end by
//! rewriting its stored samples after each correction).
//!
//! **Estimate.** A weighted least-squares line through the raw offsets of a
//! window of recent samples (at most [`DisciplineConfig::max_samples`], 64
//! by default) gives the frequency (its slope) and, extrapolated to now,
//! minus `C(now)`, the current offset. A sample's weight falls with its
//! delay beyond the window's least (chrony's rule: `1 / (1 + (x/2 /
//! noise)²)` for an excess `x`, which may all be on one way) and with its
//! age (`AGE_TIME_CONSTANT`); the noise's degrees of freedom are the
//! weights' sum. The window shrinks, oldest samples first,
//! by a quarter at a time (keeping at least 8), when the signs of the
//! residuals form too few runs for random noise (chrony's regression uses a
//! runs test too; here z < −2.5 on at least 12 samples), which happens when
//! the clock's own frequency has changed. The residual noise is estimated
//! with two pseudo-degrees of freedom of the previous estimate, so a window
//! of 3 samples cannot claim to be perfect. A frequency *prior* (the
//! initial frequency with 200 ppm uncertainty at start, or the frequency
//! before a jump with its uncertainty, at least 0.05 ppm) is combined with
//! the regression's slope, weighted by inverse variances, until the
//! regression alone is at least as precise, or until the two disagree by
//! more than 3.5 combined standard deviations (the clock's frequency has
//! changed); the prior is what keeps the frequency across a jump even
//! though the offset history is reset.
//!
//! **Correction.** After each accepted sample:
//!
//! - *step* ([`Clock::step`]) by the estimated offset when `makestep
//!   THRESHOLD LIMIT` is configured, |offset| > THRESHOLD and either LIMIT is
//!   −1 or fewer than LIMIT updates have happened so far (chrony's
//!   semantics: every clock update counts, stepping or not; without
//!   `makestep` the clock is never stepped);
//! - *slew* ([`Clock::set_frequency`]): frequency estimate + a slew rate
//!   that removes the remaining offset by a deadline
//!   ([`Discipline::slew_deadline`]; the caller calls
//!   [`Discipline::end_slew`] then, which puts the frequency back to the
//!   estimate). chrony's rule sets the duration: an offset `k` standard
//!   errors of the estimate large is removed over `ratio / 2 / k` update
//!   intervals ([`DisciplineConfig::correction_time_ratio`], 3 as chrony's
//!   `corrtimeratio`), so noise is smoothed while a real error goes fast;
//!   the duration is at least one update interval (the update
//!   interval is the larger of the poll interval, from
//!   [`Discipline::set_poll_interval`], 64 s until it is called, and the
//!   median of the last 5 intervals observed between regular samples,
//!   burst samples excluded), so at rest the next sample comes before the
//!   deadline and no wakeup is added. An offset that would need more than
//!   500 ppm that way is slewed at [`DisciplineConfig::max_slew_rate_ppm`]
//!   (chrony's `maxslewrate`, 83,333 ppm by default; the real clock applies
//!   it through the tick length, ±10 %, as chronyd does) for exactly as
//!   long as it takes: when what is left is less than the limit removes in
//!   an interval, the slew ends before the next sample, on its deadline.
//!   Either way it ends without overshoot, and a sample that comes late or
//!   never cannot make it run on. The rate accounts for
//!   the monotonic clock running at the slewed rate too (see
//!   `correction_rate`). [`Discipline::release`] (on exit) and
//!   [`Discipline::mark_unsynchronised`] end any slew;
//! - *publish* ([`Clock::set_sync_status`]) synchronised, with `est_error` =
//!   √(RMS offset² + variance of the estimate) + delay/2 and `max_error` =
//!   `est_error` + |offset not yet slewed| + root distance + (now − sample
//!   time) × frequency uncertainty, both clamped to the kernel's 16 s.
//!
//! **Jumps and outliers.** Each new sample is compared with the line's
//! prediction for its time. It is *far* when the difference exceeds
//! `max(jump_floor, jump_sigmas × σ + delay/2)`, where σ² is the residual
//! noise plus the variance of the prediction (which grows with the time
//! since the window and with the frequency's uncertainty), `jump_floor` is
//! 1 ms and `jump_sigmas` 5 by default. A far sample is never fed to the
//! estimate: it is held, and [`Outcome::BurstWanted`] asks the caller for
//! more samples right away. When [`DisciplineConfig::confirmations`] (2)
//! further samples agree with the held one (each within the same kind of
//! bound, along the current frequency), the jump is confirmed: the offset
//! history is replaced by the held samples, the frequency estimate becomes
//! the prior, and the clock is corrected as above: stepped when `makestep`
//! allows it, otherwise slewed (at `maxslewrate` for anything large).
//! When a sample agrees with the prediction instead, the held samples were
//! outliers: they are dropped and counted, and the new sample is used
//! normally. A burst may use at most 2 × `confirmations` samples; after that
//! whatever is held is dropped as outliers ([`Outcome::OutlierDropped`]).
//! A sudden change of the clock's own frequency that moves the offset past
//! the bound before the regression has followed it looks like a jump and is
//! handled as one (slewed, the offsets being small); the new samples then
//! contradict the prior, which is dropped, and the new frequency is learned
//! (10 ppm at 64 s polls: within 0.1 ppm after 15 min, 1.6 ms worst offset).
//!
//! **On the simulated clock** (`tests/discipline.rs`, ±100 ppm oscillator):
//! a PHC read every second with 1 µs noise stays within 1 µs of true time
//! and 0.01 ppm of the right frequency once settled; 0.5 s without
//! `makestep` is slewed out at 83,333 ppm, within 1 ms after 6 s, within
//! 10 µs a few seconds later, without overshoot; with Kata's `makestep 1
//! -1`, a 0.5 s jump is within 1 µs 6 s after it happened (10 ppm clock,
//! 10 ns PHC noise), 0.9 s after 11 s (9 s at `maxslewrate 100000`); 5 s
//! is stepped at the first sample and within 10 µs after 10 s. NTP every
//! 64 s with 100 µs noise stays within 60 µs; a jump (±2 s, 100 s, −1 h) is stepped 2 ms (PHC) or 4 s (NTP, 2 s
//! burst spacing) after the sample that shows it, to within 1 µs (PHC) or
//! 100 µs (NTP), with the frequency kept within 0.02 ppm.
//!
//! **Invalid input.** A sample with a non-finite field, |offset| > 1e10 s, a
//! delay or root distance outside [0, 1000] s, a time not after the previous
//! sample's, later than now or more than a day old is rejected
//! ([`Outcome::Rejected`]) and counted; nothing panics, and the clock is
//! only ever given finite values within the limits above.
//!
//! **Approximation.** `C(m)` integrates over monotonic time, which the
//! frequency correction itself slews; `correction_rate` accounts for that
//! with the frequency estimate of the moment, so the raw line's slope is
//! off only by the estimate's own error times the slew (0.05 ppm × 8 % at
//! 83,333 ppm), and only while slewing.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::VecDeque;
use std::fmt;

use crate::clock::{Clock, ClockError, Sample, SyncStatus};
use crate::config::{Config, MakeStep, StepLimit};

/// The kernel's limit on the frequency correction (`MAXFREQ`), ppm: the
/// most the frequency *estimate* may be.
pub const MAX_FREQUENCY_PPM: f64 = 500.0;
/// chrony's default `maxslewrate`, ppm (1/12).
pub const DEFAULT_MAX_SLEW_RATE_PPM: f64 = 1e6 / 12.0;
/// The most the slew may add to the estimate, ppm: Linux's tick length may
/// be changed by ±10 % (`ADJ_TICK`), chrony's limit too.
pub const MAX_SLEW_RATE_PPM: f64 = 100_000.0;
/// The kernel's limit on `maxerror` and `esterror` (`NTP_PHASE_LIMIT`), s.
pub const MAX_ERROR: f64 = 16.0;

/// Default [`DisciplineConfig::correction_time_ratio`] (chrony's
/// `corrtimeratio`).
pub const DEFAULT_CORRECTION_TIME_RATIO: f64 = 3.0;
/// Default [`DisciplineConfig::jump_floor`], seconds.
pub const DEFAULT_JUMP_FLOOR: f64 = 1e-3;
/// Default [`DisciplineConfig::jump_sigmas`].
pub const DEFAULT_JUMP_SIGMAS: f64 = 5.0;
/// Default [`DisciplineConfig::confirmations`].
pub const DEFAULT_CONFIRMATIONS: u32 = 2;
/// Default [`DisciplineConfig::max_samples`] (chrony's regression window
/// is at most 64 samples too).
pub const DEFAULT_MAX_SAMPLES: usize = 64;

/// Update interval assumed before any is known, seconds (chrony's default
/// NTP minpoll): a long guess corrects slowly, a short one could overshoot.
const DEFAULT_INTERVAL: f64 = 64.0;
/// Bounds of the update interval used for the correction time, seconds.
const MIN_INTERVAL: f64 = 0.01;
const MAX_INTERVAL: f64 = 1e6;
/// The fastest slew spread over an interval or more, ppm; an offset that
/// needs more is slewed at `maxslewrate` and ends on its own deadline
/// (one more wakeup, only while a large offset is corrected).
const GENTLE_SLEW_PPM: f64 = 500.0;
/// Shortest gentle slew, in update intervals: one, so that the slew ends just
/// after the next regular sample is due (the caller schedules that sample
/// from the same monotonic clock, before the update that set the slew), and
/// that sample, not the deadline, wakes the caller: no wakeup is added
/// unless a sample is late or lost.
const MIN_SLEW_INTERVALS: f64 = 1.0;
/// Regular intervals remembered for their median.
const INTERVALS_KEPT: usize = 5;
/// Uncertainty of the initial frequency, ppm.
const INITIAL_FREQUENCY_SD_PPM: f64 = 200.0;
/// Least uncertainty of the frequency kept across a jump, ppm, so that a
/// frequency that really changed is eventually learned again.
const MIN_PRIOR_SD_PPM: f64 = 0.05;
/// Least residual noise assumed, seconds.
const MIN_NOISE: f64 = 1e-8;
/// A prior whose frequency differs from the regression's by more than this
/// many combined standard deviations is wrong (the clock's frequency has
/// changed) and is dropped.
const PRIOR_Z: f64 = 3.5;
/// Pseudo-degrees of freedom of the previous noise estimate in the next.
const NOISE_PSEUDO_DOF: f64 = 2.0;
/// Samples this much older than the newest weigh 1/e as much, seconds:
/// the clock's frequency wanders, so a line through old samples bends the
/// estimate more than their number helps it (at 64 s NTP polls the window
/// is ~17 min deep; a PHC's 64 s window is not affected).
const AGE_TIME_CONSTANT: f64 = 1024.0;
/// Fewest samples on which the runs test is run, and fewest it keeps.
const RUNS_MIN_SAMPLES: usize = 12;
const RUNS_MIN_KEEP: usize = 8;
/// z-score below which the residuals have too few runs.
const RUNS_Z: f64 = -2.5;
/// Weight of a new offset in the RMS offset's moving average.
const RMS_WEIGHT: f64 = 1.0 / 8.0;
/// Sanity bounds of a sample, seconds.
const MAX_OFFSET: f64 = 1e10;
const MAX_DELAY: f64 = 1000.0;
const MAX_SAMPLE_AGE: f64 = 86_400.0;
/// How far a sample's time may be after the clock's monotonic "now" (the
/// caller's and the discipline's readings of the same clock), seconds.
const FUTURE_TOLERANCE: f64 = 1e-3;
/// Corrections remembered to compute `C(m)` for samples taken before the
/// latest ones.
const MAX_SEGMENTS: usize = 64;

/// Tuning of the discipline. Out-of-range values are replaced by the
/// defaults (or clamped) in [`Discipline::new`], never trusted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisciplineConfig {
    /// chrony's `makestep THRESHOLD LIMIT`; `None`: never step.
    pub makestep: Option<MakeStep>,
    /// Limit of the frequency estimate, ppm; at most 500 (the kernel's
    /// frequency limit).
    pub max_frequency_ppm: f64,
    /// chrony's `maxslewrate`: limit of the correction added to the
    /// estimate while an offset is slewed away, ppm; at most 100,000 (the
    /// tick length's ±10 %).
    pub max_slew_rate_ppm: f64,
    /// chrony's `corrtimeratio`: an offset as large as its own standard
    /// error is slewed away over `ratio / 2` update intervals, a larger one
    /// proportionally faster (see the module documentation).
    pub correction_time_ratio: f64,
    /// A sample this far (seconds) from the prediction is always suspect.
    pub jump_floor: f64,
    /// ... and one farther than this many standard deviations (+ delay/2).
    pub jump_sigmas: f64,
    /// Samples that must agree with a suspect one to confirm a jump (1–16).
    pub confirmations: u32,
    /// Largest regression window (4–4096 samples).
    pub max_samples: usize,
    /// No step may set the clock before this Unix time (the binary's build
    /// date in the daemon); a step that would is refused.
    pub min_time: f64,
    /// A step larger than this (seconds) is refused; `None`: no limit, as
    /// chrony (`timesync.max_step=`).
    pub max_step: Option<f64>,
}

impl Default for DisciplineConfig {
    fn default() -> Self {
        Self {
            makestep: None,
            max_frequency_ppm: MAX_FREQUENCY_PPM,
            max_slew_rate_ppm: DEFAULT_MAX_SLEW_RATE_PPM,
            correction_time_ratio: DEFAULT_CORRECTION_TIME_RATIO,
            jump_floor: DEFAULT_JUMP_FLOOR,
            jump_sigmas: DEFAULT_JUMP_SIGMAS,
            confirmations: DEFAULT_CONFIRMATIONS,
            max_samples: DEFAULT_MAX_SAMPLES,
            min_time: 0.0,
            max_step: None,
        }
    }
}

impl DisciplineConfig {
    /// The defaults with the file's `makestep` and `maxslewrate`, the
    /// command line's `timesync.max_step=`, and no step before
    /// [`crate::rtc::earliest_sane_time`].
    pub fn from_config(config: &Config) -> Self {
        Self {
            makestep: config.makestep,
            max_slew_rate_ppm: config.max_slew_rate_ppm,
            max_step: config.max_step,
            min_time: crate::rtc::earliest_sane_time() as f64,
            ..Self::default()
        }
    }

    fn sanitized(self) -> Self {
        let default = Self::default();
        let positive = |value: f64, fallback: f64| {
            if value.is_finite() && value > 0.0 {
                value
            } else {
                fallback
            }
        };
        Self {
            makestep: self.makestep,
            max_frequency_ppm: positive(self.max_frequency_ppm, MAX_FREQUENCY_PPM)
                .min(MAX_FREQUENCY_PPM),
            max_slew_rate_ppm: positive(self.max_slew_rate_ppm, DEFAULT_MAX_SLEW_RATE_PPM)
                .min(MAX_SLEW_RATE_PPM),
            correction_time_ratio: positive(
                self.correction_time_ratio,
                default.correction_time_ratio,
            )
            .min(1e6),
            jump_floor: if self.jump_floor.is_finite() && self.jump_floor >= 0.0 {
                self.jump_floor.min(MAX_OFFSET)
            } else {
                default.jump_floor
            },
            jump_sigmas: positive(self.jump_sigmas, default.jump_sigmas).min(1e6),
            confirmations: self.confirmations.clamp(1, 16),
            max_samples: self.max_samples.clamp(4, 4096),
            min_time: if self.min_time.is_finite() {
                self.min_time
            } else {
                0.0
            },
            max_step: self
                .max_step
                .filter(|limit| limit.is_finite() && *limit >= 0.0),
        }
    }
}

/// What [`Discipline::update`] did with a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// The sample was used; the clock's frequency was set to
    /// `frequency_ppm` (estimate + correction) to slew away `offset`, the
    /// estimated offset (reference − local, seconds) at the update.
    Slewed { offset: f64, frequency_ppm: f64 },
    /// The sample was used; the clock was stepped by `offset` seconds and
    /// its frequency set to the estimate.
    Stepped { offset: f64 },
    /// The sample is far from the prediction and is held, unused: take
    /// `samples` more samples now, without waiting for the next poll, and
    /// pass each to `update` as soon as it is taken (each outcome replaces
    /// the previous one: keep going while it is `BurstWanted`).
    BurstWanted { samples: u32 },
    /// The burst did not settle: this sample and the `dropped - 1` held
    /// before it were discarded as outliers; the clock was not touched.
    /// (Held samples that a normal sample proves wrong are dropped too, and
    /// counted in [`DisciplineStatus::outliers`], but the outcome of that
    /// normal sample is `Slewed` or `Stepped`.)
    OutlierDropped { dropped: u32 },
    /// The sample is invalid and was ignored.
    Rejected(Rejection),
    /// The samples asked for a step by `offset` that is not allowed: the
    /// clock was not touched and the samples were dropped.
    Refused { offset: f64, reason: Refusal },
}

/// Why a step was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// It would set the clock before `min_time` (Unix seconds).
    BeforeMinTime { min_time: f64 },
    /// It is larger than `max_step` seconds.
    BeyondMaxStep { max_step: f64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BeforeMinTime { min_time } => write!(
                f,
                "it would set the clock before {min_time:.0} (Unix time), the earliest sane time"
            ),
            Refusal::BeyondMaxStep { max_step } => {
                write!(f, "it is larger than timesync.max_step={max_step} s")
            }
        }
    }
}

/// Why a sample was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A field is NaN or infinite.
    NotFinite,
    /// |offset| > 1e10 s, or a delay or root distance outside [0, 1000] s.
    OutOfRange,
    /// Not taken after the previous sample.
    NotMonotonic,
    /// Taken after the clock's current monotonic time.
    FromTheFuture,
    /// Taken more than a day ago.
    Stale,
    /// The estimate became non-finite (extreme input); the history was
    /// reset and the clock not touched.
    Numerical,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::NotFinite => "a value is not finite",
            Rejection::OutOfRange => "a value is out of range",
            Rejection::NotMonotonic => "not taken after the previous sample",
            Rejection::FromTheFuture => "taken in the future",
            Rejection::Stale => "taken more than a day ago",
            Rejection::Numerical => "the estimate is not finite",
        })
    }
}

/// The discipline's state, for `timesync status` (chrony's `tracking`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DisciplineStatus {
    /// An update happened and [`Discipline::mark_unsynchronised`] was not
    /// called since.
    pub synchronised: bool,
    /// Estimated offset at the last update, before its correction, s.
    pub last_offset: f64,
    /// Moving RMS (weight 1/8) of the offsets at the updates, seconds;
    /// restarted by a jump, and after a step set to the uncertainty of the
    /// offset stepped away.
    pub rms_offset: f64,
    /// Estimated frequency correction the clock needs, ppm.
    pub frequency_ppm: f64,
    /// Its standard error, ppm (chrony's "skew").
    pub frequency_sd_ppm: f64,
    /// How much the last update moved the estimate, ppm (chronyc's
    /// "Residual freq": what the samples said against what was in use).
    pub frequency_change_ppm: f64,
    /// The frequency last set on the clock (estimate + correction), ppm.
    pub applied_frequency_ppm: f64,
    /// Monotonic time of the last update.
    pub last_update: Option<f64>,
    /// Samples in the regression window.
    pub samples: usize,
    /// What they are worth at the last update: the sum of their weights
    /// (delay and age), each at most 1. An NTP source's poll interval
    /// follows it ([`crate::ntp::NtpServer::steer_poll`]).
    pub effective_samples: f64,
    /// Clock updates (samples used) so far.
    pub updates: u64,
    pub steps: u64,
    /// Jumps confirmed by a burst.
    pub jumps: u64,
    /// Samples dropped as outliers.
    pub outliers: u64,
    /// Invalid samples.
    pub rejected: u64,
    /// Samples are held, waiting for a burst to confirm or refute them.
    pub burst_pending: bool,
    /// Steps refused ([`Outcome::Refused`]).
    pub refused: u64,
    /// The slew in progress: the rate added to the estimate, ppm, and the
    /// monotonic time it ends ([`Discipline::slew_deadline`]).
    pub slew: Option<SlewStatus>,
}

/// An offset being slewed away.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlewStatus {
    /// Added to the frequency estimate, ppm (positive: the clock is run
    /// fast to catch up).
    pub rate_ppm: f64,
    /// Monotonic time the slew ends.
    pub end: f64,
}

impl SlewStatus {
    /// What is left to slew at monotonic time `now`, seconds (the sign of
    /// an offset; within 0.05 %: the estimate's share of the monotonic
    /// clock's rate is left out).
    pub fn remaining(&self, now: f64) -> f64 {
        let rate = self.rate_ppm * 1e-6;
        rate / (1.0 + rate) * (self.end - now).max(0.0)
    }
}

/// One sample in clock-independent form.
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Monotonic time it was taken.
    m: f64,
    /// offset + C(m).
    raw: f64,
    delay: f64,
    root_distance: f64,
}

/// From monotonic `start` on, `C(m) = c0 + rate × (m − start)`, where
/// `rate` is the correction per monotonic second of the frequency applied
/// (see `correction_rate`).
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: f64,
    c0: f64,
    rate: f64,
}

/// A frequency known independently of the current window, s/s.
#[derive(Debug, Clone, Copy)]
struct Prior {
    slope: f64,
    var: f64,
}

/// The line through the window: raw(m) = mean_y + slope × (m − mean_m).
#[derive(Debug, Clone, Copy)]
struct Fit {
    /// The samples' weights summed (each at most 1: the best samples').
    weight_sum: f64,
    mean_m: f64,
    mean_y: f64,
    /// s/s, prior included.
    slope: f64,
    slope_var: f64,
    /// Variance of one sample around the line, s².
    noise_var: f64,
    /// Variance of the regression's own slope, when there is one.
    ols_slope_var: Option<f64>,
    /// The prior disagrees with the regression and was left out.
    prior_rejected: bool,
}

impl Fit {
    fn predict(&self, m: f64) -> f64 {
        self.mean_y + self.slope * (m - self.mean_m)
    }

    /// Variance of the line (not of a sample) at `m`.
    fn line_var(&self, m: f64) -> f64 {
        let dm = m - self.mean_m;
        self.noise_var / self.weight_sum.max(1.0) + self.slope_var * dm * dm
    }
}

/// The clock discipline; see the module documentation.
#[derive(Debug, Clone)]
pub struct Discipline {
    config: DisciplineConfig,
    history: VecDeque<Point>,
    /// Far samples held for confirmation, oldest first.
    suspects: Vec<Point>,
    burst_budget: u32,
    prior: Option<Prior>,
    /// Frequency estimate and its standard error, ppm.
    frequency: f64,
    frequency_sd: f64,
    frequency_change: f64,
    /// Residual noise estimate, seconds; `None` before the first sample.
    noise: Option<f64>,
    /// The corrections applied, oldest first (see [`Segment`]).
    segments: VecDeque<Segment>,
    applied_ppm: f64,
    slew: Option<SlewStatus>,
    last_sample: Option<f64>,
    last_regular: Option<f64>,
    intervals: VecDeque<f64>,
    poll_interval: Option<f64>,
    synchronised: bool,
    last_offset: f64,
    rms_offset: Option<f64>,
    last_update: Option<f64>,
    updates: u64,
    steps: u64,
    jumps: u64,
    outliers: u64,
    rejected: u64,
    refused: u64,
    /// Samples (the first included) that must agree before a step with no
    /// history; see [`Discipline::set_first_step_samples`].
    first_step_samples: u32,
    /// The last fit's weight sum ([`DisciplineStatus::effective_samples`]).
    effective_samples: f64,
}

impl Discipline {
    /// A discipline with no samples yet. `initial_frequency_ppm` is the
    /// best frequency known (a drift file's, or the kernel's current
    /// correction), used as a prior with 200 ppm uncertainty; the frequency
    /// actually applied is read from [`Clock::frequency`] at the first
    /// update. A non-finite value counts as 0.
    pub fn new(config: DisciplineConfig, initial_frequency_ppm: f64) -> Self {
        let config = config.sanitized();
        let max = config.max_frequency_ppm;
        let frequency = if initial_frequency_ppm.is_finite() {
            initial_frequency_ppm.clamp(-max, max)
        } else {
            0.0
        };
        Self {
            config,
            history: VecDeque::new(),
            suspects: Vec::new(),
            burst_budget: 0,
            prior: Some(Prior {
                slope: frequency * 1e-6,
                var: (INITIAL_FREQUENCY_SD_PPM * 1e-6).powi(2),
            }),
            frequency,
            frequency_sd: INITIAL_FREQUENCY_SD_PPM,
            frequency_change: 0.0,
            noise: None,
            segments: VecDeque::new(),
            applied_ppm: frequency,
            slew: None,
            last_sample: None,
            last_regular: None,
            intervals: VecDeque::new(),
            poll_interval: None,
            synchronised: false,
            last_offset: 0.0,
            rms_offset: None,
            last_update: None,
            updates: 0,
            steps: 0,
            jumps: 0,
            outliers: 0,
            rejected: 0,
            refused: 0,
            first_step_samples: 1,
            effective_samples: 0.0,
        }
    }

    /// The configuration in use (after sanitising).
    pub fn config(&self) -> &DisciplineConfig {
        &self.config
    }

    /// The interval at which regular samples are expected, seconds (the
    /// PHC's poll, or the NTP source's current poll; not the spacing of
    /// bursts). The offset is corrected over 4 such intervals; until this is
    /// called, 64 s is assumed. The median of the observed intervals is used
    /// as well, the larger of the two wins, so an interval set too short
    /// cannot make the correction overshoot for long. A value that is not
    /// finite and positive forgets the setting.
    pub fn set_poll_interval(&mut self, seconds: f64) {
        self.poll_interval = (seconds.is_finite() && seconds > 0.0).then_some(seconds);
    }

    /// How many samples, the first included, must agree before the clock
    /// is stepped with no history (at start, or after a refused step): 3 for
    /// an NTP server alone (one lying or broken reply cannot move the
    /// clock), 2 for a PHC (a second reading), 1 when a majority of NTP
    /// servers agreed on the offset. Clamped to 1–16; 1 (every first
    /// sample trusted) until called.
    pub fn set_first_step_samples(&mut self, samples: u32) {
        self.first_step_samples = samples.clamp(1, 16);
    }

    /// Feeds one sample of the selected source. `Err` only when a clock call
    /// failed; the discipline's state then reflects the calls that
    /// succeeded, and the next sample continues from there.
    pub fn update(&mut self, clock: &mut dyn Clock, sample: Sample) -> Result<Outcome, ClockError> {
        if let Err(reason) = check_sample(&sample) {
            return Ok(self.reject(reason));
        }
        let now = clock.monotonic();
        if !now.is_finite() {
            return Err(ClockError {
                call: "monotonic",
                message: format!("not a finite time: {now}"),
            });
        }
        if sample.monotonic > now + FUTURE_TOLERANCE {
            return Ok(self.reject(Rejection::FromTheFuture));
        }
        if sample.monotonic < now - MAX_SAMPLE_AGE {
            return Ok(self.reject(Rejection::Stale));
        }
        if self
            .last_sample
            .is_some_and(|last| sample.monotonic <= last)
        {
            return Ok(self.reject(Rejection::NotMonotonic));
        }
        if self.segments.is_empty() {
            let ppm = clock.frequency()?;
            let ppm = if ppm.is_finite() { ppm } else { 0.0 };
            self.applied_ppm = ppm;
            self.segments.push_back(Segment {
                start: sample.monotonic,
                c0: 0.0,
                rate: correction_rate(ppm, self.frequency),
            });
        }
        self.prune_segments(sample.monotonic);
        let point = Point {
            m: sample.monotonic,
            raw: sample.offset + self.correction_at(sample.monotonic),
            delay: sample.delay,
            root_distance: sample.root_distance,
        };
        if !point.raw.is_finite() {
            return Ok(self.reject(Rejection::Numerical));
        }
        self.last_sample = Some(point.m);
        if self.noise.is_none() {
            self.noise = Some((sample.delay / 2.0).max(MIN_NOISE));
        }
        let regular = self.suspects.is_empty();
        let fit = self.fit();
        // With no history, the first samples must agree among themselves
        // before they are used (they may step the clock); otherwise a far
        // sample needs `confirmations` more to be believed.
        let first = fit.is_none();
        let need = if first {
            self.first_step_samples.saturating_sub(1)
        } else {
            self.config.confirmations
        };
        let normal = match &fit {
            None => need == 0,
            Some(fit) => {
                let sigma = (fit.noise_var + fit.line_var(point.m)).sqrt();
                (point.raw - fit.predict(point.m)).abs() <= self.tolerance(sigma, point.delay)
            }
        };
        if regular {
            self.note_regular(point.m);
        }
        if normal {
            self.drop_suspects();
            self.push_history(point);
            return self.correct(clock, now);
        }
        if regular {
            self.suspects.push(point);
            self.burst_budget = need.saturating_mul(2).max(2);
            return Ok(Outcome::BurstWanted { samples: need });
        }
        self.burst_budget = self.burst_budget.saturating_sub(1);
        let consistent = match (self.suspects.last(), &fit) {
            (Some(last), Some(fit)) => {
                let dm = point.m - last.m;
                let sigma = (2.0 * fit.noise_var + fit.slope_var * dm * dm).sqrt();
                let expected = last.raw + fit.slope * dm;
                (point.raw - expected).abs()
                    <= self.tolerance(sigma, (point.delay + last.delay) / 2.0)
            }
            (Some(last), None) => {
                // Along the prior frequency, with its uncertainty.
                let prior = self.prior.unwrap_or(Prior {
                    slope: self.frequency * 1e-6,
                    var: (self.frequency_sd.max(MIN_PRIOR_SD_PPM) * 1e-6).powi(2),
                });
                let noise = self.noise.unwrap_or(MIN_NOISE);
                let dm = point.m - last.m;
                let sigma = (2.0 * noise * noise + prior.var * dm * dm).sqrt();
                let expected = last.raw + prior.slope * dm;
                (point.raw - expected).abs()
                    <= self.tolerance(sigma, (point.delay + last.delay) / 2.0)
            }
            _ => false,
        };
        if consistent {
            self.suspects.push(point);
            if self.suspects.len() > need as usize {
                if first {
                    self.history = self.suspects.drain(..).collect();
                    return self.correct(clock, now);
                }
                return self.jump(clock, now);
            }
        } else {
            self.drop_suspects();
            self.suspects.push(point);
        }
        if self.burst_budget == 0 {
            let dropped = self.drop_suspects();
            return Ok(Outcome::OutlierDropped {
                dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
            });
        }
        let held = u32::try_from(self.suspects.len()).unwrap_or(u32::MAX);
        Ok(Outcome::BurstWanted {
            samples: need.saturating_add(1).saturating_sub(held).max(1),
        })
    }

    /// Marks the clock unsynchronised (after a long loss of samples): the
    /// kernel's status gets `STA_UNSYNC` and the 16 s error bounds, and the
    /// frequency is set back to the estimate alone, dropping the offset
    /// correction, so the clock runs free at its best frequency until the
    /// next update. The history is kept: it stays valid.
    pub fn mark_unsynchronised(&mut self, clock: &mut dyn Clock) -> Result<(), ClockError> {
        self.synchronised = false;
        clock.set_sync_status(SyncStatus {
            synchronised: false,
            max_error: MAX_ERROR,
            est_error: MAX_ERROR,
        })?;
        if self.segments.is_empty() {
            return Ok(());
        }
        let now = clock.monotonic();
        if !now.is_finite() {
            return Err(ClockError {
                call: "monotonic",
                message: format!("not a finite time: {now}"),
            });
        }
        self.slew = None;
        clock.set_frequency(self.frequency)?;
        self.record_correction(now, 0.0, self.frequency);
        Ok(())
    }

    /// When the slew in progress ends, monotonic seconds: the caller calls
    /// [`Discipline::end_slew`] then (or as soon after as it can; the
    /// discipline accounts for the time the slew really ran). `None`: no
    /// slew in progress.
    pub fn slew_deadline(&self) -> Option<f64> {
        self.slew.map(|slew| slew.end)
    }

    /// Ends the slew in progress if its deadline has come: the clock's
    /// frequency goes back to the estimate (and its tick to normal).
    /// Returns whether it did.
    pub fn end_slew(&mut self, clock: &mut dyn Clock) -> Result<bool, ClockError> {
        let Some(slew) = self.slew else {
            return Ok(false);
        };
        let now = clock.monotonic();
        // A NaN `now` is not past the end either.
        if now.partial_cmp(&slew.end).is_none_or(|order| order.is_lt()) {
            return Ok(false);
        }
        self.restore_frequency(clock, now)?;
        Ok(true)
    }

    /// On exit: whatever slew is in progress is abandoned and the clock
    /// left at the estimated frequency, its tick normal, so it runs free at
    /// its best rate. Nothing is done before the first update (the
    /// frequency found at start is still in force).
    pub fn release(&mut self, clock: &mut dyn Clock) -> Result<(), ClockError> {
        if self.segments.is_empty() {
            return Ok(());
        }
        let now = clock.monotonic();
        self.restore_frequency(clock, now)
    }

    fn restore_frequency(&mut self, clock: &mut dyn Clock, now: f64) -> Result<(), ClockError> {
        if !now.is_finite() {
            return Err(ClockError {
                call: "monotonic",
                message: format!("not a finite time: {now}"),
            });
        }
        self.slew = None;
        clock.set_frequency(self.frequency)?;
        self.record_correction(now, 0.0, self.frequency);
        Ok(())
    }

    pub fn status(&self) -> DisciplineStatus {
        DisciplineStatus {
            synchronised: self.synchronised,
            last_offset: self.last_offset,
            rms_offset: self.rms_offset.unwrap_or(0.0),
            frequency_ppm: self.frequency,
            frequency_sd_ppm: self.frequency_sd,
            frequency_change_ppm: self.frequency_change,
            applied_frequency_ppm: self.applied_ppm,
            last_update: self.last_update,
            samples: self.history.len(),
            effective_samples: self.effective_samples,
            updates: self.updates,
            steps: self.steps,
            jumps: self.jumps,
            outliers: self.outliers,
            rejected: self.rejected,
            burst_pending: !self.suspects.is_empty(),
            refused: self.refused,
            slew: self.slew,
        }
    }

    fn reject(&mut self, reason: Rejection) -> Outcome {
        self.rejected = self.rejected.saturating_add(1);
        Outcome::Rejected(reason)
    }

    /// Drops the held samples as outliers; returns how many.
    fn drop_suspects(&mut self) -> usize {
        let dropped = self.suspects.len();
        self.outliers = self.outliers.saturating_add(dropped as u64);
        self.suspects.clear();
        dropped
    }

    fn tolerance(&self, sigma: f64, delay: f64) -> f64 {
        let bound = self.config.jump_sigmas * sigma + delay / 2.0;
        // NaN (from extreme input) compares false: max() keeps the floor.
        bound.max(self.config.jump_floor)
    }

    fn note_regular(&mut self, m: f64) {
        if let Some(last) = self.last_regular {
            let interval = m - last;
            if interval.is_finite() && interval > 0.0 {
                self.intervals.push_back(interval);
                while self.intervals.len() > INTERVALS_KEPT {
                    self.intervals.pop_front();
                }
            }
        }
        self.last_regular = Some(m);
    }

    /// The update interval the correction is spread over.
    fn interval(&self) -> f64 {
        let mut observed: Vec<f64> = self.intervals.iter().copied().collect();
        observed.sort_by(f64::total_cmp);
        let median = observed.get(observed.len() / 2).copied();
        let poll = self.poll_interval.unwrap_or(DEFAULT_INTERVAL);
        median
            .map_or(poll, |median| poll.max(median))
            .clamp(MIN_INTERVAL, MAX_INTERVAL)
    }

    fn push_history(&mut self, point: Point) {
        self.history.push_back(point);
        while self.history.len() > self.config.max_samples {
            self.history.pop_front();
        }
    }

    /// `C(m)`: the correction accumulated up to monotonic time `m`.
    fn correction_at(&self, m: f64) -> f64 {
        let segment = self
            .segments
            .iter()
            .rev()
            .find(|segment| segment.start <= m)
            .or_else(|| self.segments.front());
        segment.map_or(0.0, |segment| {
            segment.c0 + segment.rate * (m - segment.start)
        })
    }

    /// Forgets the segments no sample at or after `m` can fall in.
    fn prune_segments(&mut self, m: f64) {
        while self.segments.get(1).is_some_and(|next| next.start <= m) {
            self.segments.pop_front();
        }
    }

    /// Records a step by `step` and the frequency `ppm` from `now` on.
    fn record_correction(&mut self, now: f64, step: f64, ppm: f64) {
        let c0 = self.correction_at(now) + step;
        while self.segments.back().is_some_and(|last| last.start > now) {
            self.segments.pop_back();
        }
        let segment = Segment {
            start: now,
            c0,
            rate: correction_rate(ppm, self.frequency),
        };
        match self.segments.back_mut() {
            Some(last) if last.start == now => *last = segment,
            _ => self.segments.push_back(segment),
        }
        while self.segments.len() > MAX_SEGMENTS {
            self.segments.pop_front();
        }
        self.applied_ppm = ppm;
    }

    /// The line through the history, with the prior's frequency.
    fn fit(&self) -> Option<Fit> {
        let n = self.history.len();
        if n == 0 {
            return None;
        }
        let noise = self.noise.unwrap_or(MIN_NOISE);
        // chrony's weighting: a sample whose delay exceeds the window's
        // least by `x` may be off by up to x/2 (the extra delay may all be
        // on one way), so its variance is taken as 1 + (x/2 / noise)²
        // times that of the best samples. PHC reads, whose windows barely
        // differ, weigh about the same. Older samples weigh less too
        // (`AGE_TIME_CONSTANT`).
        let min_delay = self
            .history
            .iter()
            .map(|p| p.delay)
            .fold(f64::INFINITY, f64::min);
        let newest = self.history.back().map_or(0.0, |p| p.m);
        let weight = |p: &Point| {
            let excess = (p.delay - min_delay).max(0.0) / 2.0 / noise;
            let age = (newest - p.m).max(0.0) / AGE_TIME_CONSTANT;
            let w = (-age).exp() / (1.0 + excess * excess);
            if w.is_finite() {
                w
            } else {
                1.0
            }
        };
        let weight_sum: f64 = self.history.iter().map(weight).sum();
        let mean_m = self.history.iter().map(|p| weight(p) * p.m).sum::<f64>() / weight_sum;
        let mean_y = self.history.iter().map(|p| weight(p) * p.raw).sum::<f64>() / weight_sum;
        let (sxx, sxy) = self.history.iter().fold((0.0, 0.0), |(sxx, sxy), p| {
            let (w, dm) = (weight(p), p.m - mean_m);
            (sxx + w * dm * dm, sxy + w * dm * (p.raw - mean_y))
        });
        let fallback = Prior {
            slope: self.frequency * 1e-6,
            var: (self.frequency_sd.max(MIN_PRIOR_SD_PPM) * 1e-6).powi(2),
        };
        if n >= 2 && sxx > 0.0 {
            let ols = sxy / sxx;
            let rss: f64 = self
                .history
                .iter()
                .map(|p| weight(p) * (p.raw - mean_y - ols * (p.m - mean_m)).powi(2))
                .sum();
            // Degrees of freedom: the weights' sum (each at most 1), so
            // that many light samples do not pass for many good ones.
            let dof = (weight_sum - 2.0).max(0.0);
            let noise_var = (rss + NOISE_PSEUDO_DOF * noise * noise) / (dof + NOISE_PSEUDO_DOF);
            let ols_var = noise_var / sxx;
            let prior_rejected =
                n >= 3 && self.prior.is_some_and(|prior| !agrees(ols, ols_var, prior));
            let (slope, slope_var) = match self.prior {
                Some(prior) if !prior_rejected => combine(ols, ols_var, prior),
                _ if n >= 3 => (ols, ols_var),
                _ => combine(ols, ols_var, fallback),
            };
            Some(Fit {
                weight_sum,
                mean_m,
                mean_y,
                slope,
                slope_var,
                noise_var,
                ols_slope_var: Some(ols_var),
                prior_rejected,
            })
        } else {
            let prior = self.prior.unwrap_or(fallback);
            Some(Fit {
                weight_sum,
                mean_m,
                mean_y,
                slope: prior.slope,
                slope_var: prior.var,
                noise_var: noise * noise,
                ols_slope_var: None,
                prior_rejected: false,
            })
        }
    }

    /// Drops the oldest samples while the residuals of the plain regression
    /// have too few sign runs for noise around a straight line.
    fn trim_history(&mut self) {
        for _ in 0..4 {
            let n = self.history.len();
            if n < RUNS_MIN_SAMPLES {
                return;
            }
            let nf = n as f64;
            let mean_m = self.history.iter().map(|p| p.m).sum::<f64>() / nf;
            let mean_y = self.history.iter().map(|p| p.raw).sum::<f64>() / nf;
            let (sxx, sxy) = self.history.iter().fold((0.0, 0.0), |(sxx, sxy), p| {
                let dm = p.m - mean_m;
                (sxx + dm * dm, sxy + dm * (p.raw - mean_y))
            });
            if sxx.is_nan() || sxx <= 0.0 {
                return;
            }
            let slope = sxy / sxx;
            let (mut positive, mut runs, mut previous) = (0usize, 0usize, None);
            for p in &self.history {
                let sign = p.raw - mean_y - slope * (p.m - mean_m) >= 0.0;
                positive += usize::from(sign);
                if previous != Some(sign) {
                    runs += 1;
                }
                previous = Some(sign);
            }
            let negative = n - positive;
            if positive == 0 || negative == 0 {
                return;
            }
            let (pf, qf) = (positive as f64, negative as f64);
            let mean = 2.0 * pf * qf / nf + 1.0;
            let var = (mean - 1.0) * (mean - 2.0) / (nf - 1.0);
            if var.is_nan() || var <= 0.0 || (runs as f64 - mean) / var.sqrt() >= RUNS_Z {
                return;
            }
            let drop = (n / 4).max(1).min(n - RUNS_MIN_KEEP);
            self.history.drain(..drop);
        }
    }

    /// The rate (ppm, added to the estimate) and the duration (monotonic
    /// s) that slew `offset` away, `sd` being its standard error: chrony's
    /// rule, an offset `k` standard errors large is slewed over `ratio / 2
    /// / k` update intervals, so noise is smoothed and a real error removed
    /// fast, over at least one interval ([`MIN_SLEW_INTERVALS`]). When
    /// that needs more than [`GENTLE_SLEW_PPM`], the offset is real and
    /// large: it is slewed at `max_slew_rate_ppm` for exactly as long as
    /// it takes.
    ///
    /// Monotonic time runs at the applied frequency too, so a slew `s` on
    /// top of the estimate `f*` closes `s / (1 + f* + s)` of offset per
    /// monotonic second (see `correction_rate`): the rate that closes
    /// `offset` in `d` is `offset (1 + f*) / (d − offset)`.
    fn plan_slew(&self, offset: f64, sd: f64) -> (f64, f64) {
        let magnitude = offset.abs();
        if !(magnitude > 0.0 && magnitude.is_finite()) {
            return (0.0, 0.0);
        }
        let interval = self.interval();
        let base = 1.0 + self.frequency * 1e-6;
        let by_noise = (self.config.correction_time_ratio * 0.5 * interval * sd.max(MIN_NOISE)
            / magnitude)
            .min(MAX_INTERVAL);
        let duration = by_noise.max(interval * MIN_SLEW_INTERVALS);
        // The rate that closes `offset` in `duration`.
        let gentle = if duration > magnitude {
            offset * base / (duration - offset)
        } else {
            f64::INFINITY
        };
        let max = self.config.max_slew_rate_ppm * 1e-6;
        if gentle.abs() <= (GENTLE_SLEW_PPM * 1e-6).min(max) {
            return (gentle * 1e6, duration);
        }
        // Anything larger goes at the limit, and ends on its deadline.
        let rate = max.copysign(offset);
        let closing = rate / (base + rate);
        (rate * 1e6, offset / closing)
    }

    /// Why a step by `offset` must not be made, if it must not.
    fn refusal(&self, clock: &dyn Clock, offset: f64) -> Option<Refusal> {
        if let Some(max_step) = self.config.max_step {
            if offset.abs() > max_step {
                return Some(Refusal::BeyondMaxStep { max_step });
            }
        }
        let min_time = self.config.min_time;
        // NaN (a broken clock) compares false: no refusal on that ground.
        (clock.realtime() + offset < min_time).then_some(Refusal::BeforeMinTime { min_time })
    }

    fn step_allowed(&self, offset: f64) -> bool {
        let Some(MakeStep { threshold, limit }) = self.config.makestep else {
            return false;
        };
        let within_limit = match limit {
            StepLimit::Unlimited => true,
            StepLimit::Updates(limit) => self.updates < u64::from(limit),
        };
        within_limit && offset.abs() > threshold
    }

    /// A confirmed jump: the held samples become the history, the frequency
    /// the prior.
    fn jump(&mut self, clock: &mut dyn Clock, now: f64) -> Result<Outcome, ClockError> {
        self.jumps = self.jumps.saturating_add(1);
        self.prior = Some(Prior {
            slope: self.frequency * 1e-6,
            var: (self.frequency_sd.max(MIN_PRIOR_SD_PPM) * 1e-6).powi(2),
        });
        self.history = self.suspects.drain(..).collect();
        self.rms_offset = None;
        self.correct(clock, now)
    }

    /// Estimates from the history and corrects the clock.
    fn correct(&mut self, clock: &mut dyn Clock, now: f64) -> Result<Outcome, ClockError> {
        self.trim_history();
        let Some(fit) = self.fit() else {
            return Ok(self.reject(Rejection::Numerical));
        };
        let frequency = fit.slope * 1e6;
        let frequency_sd = fit.slope_var.sqrt() * 1e6;
        let offset = fit.predict(now) - self.correction_at(now);
        let line_sd = fit.line_var(now).sqrt();
        let latest = self.history.back().copied();
        let (Some(latest), true) = (
            latest,
            frequency.is_finite()
                && frequency_sd.is_finite()
                && offset.is_finite()
                && line_sd.is_finite(),
        ) else {
            // Only extreme input gets here: start over, keeping the
            // frequency.
            self.history.clear();
            self.prior = Some(Prior {
                slope: self.frequency * 1e-6,
                var: (self.frequency_sd.max(MIN_PRIOR_SD_PPM) * 1e-6).powi(2),
            });
            return Ok(self.reject(Rejection::Numerical));
        };
        if self.step_allowed(offset) {
            if let Some(reason) = self.refusal(clock, offset) {
                // Not used at all: the next samples start over, and must
                // agree again before any step.
                self.refused = self.refused.saturating_add(1);
                self.history.clear();
                return Ok(Outcome::Refused { offset, reason });
            }
        }
        if let Some(prior) = self.prior {
            // The regression alone is as good, or the prior is wrong.
            if fit.prior_rejected || fit.ols_slope_var.is_some_and(|var| var <= prior.var) {
                self.prior = None;
            }
        }
        self.effective_samples = fit.weight_sum;
        let max = self.config.max_frequency_ppm;
        let previous = self.frequency;
        self.frequency = frequency.clamp(-max, max);
        self.frequency_change = self.frequency - previous;
        self.frequency_sd = frequency_sd;
        if self.history.len() >= 4 {
            self.noise = Some(fit.noise_var.sqrt().max(MIN_NOISE));
        }

        let step = self.step_allowed(offset);
        self.updates = self.updates.saturating_add(1);
        let mut remaining = offset;
        if step {
            clock.step(offset)?;
            self.record_correction(now, offset, self.applied_ppm);
            self.steps = self.steps.saturating_add(1);
            remaining = 0.0;
        }
        let (rate, duration) = self.plan_slew(remaining, line_sd);
        let applied = self.frequency + rate;
        self.slew = None;
        clock.set_frequency(applied)?;
        self.record_correction(now, 0.0, applied);
        if rate != 0.0 {
            self.slew = Some(SlewStatus {
                rate_ppm: rate,
                end: now + duration,
            });
        }

        self.last_offset = offset;
        self.rms_offset = Some(match (step, self.rms_offset) {
            (true, _) => line_sd,
            (false, None) => offset.abs(),
            (false, Some(rms)) => {
                ((1.0 - RMS_WEIGHT) * rms * rms + RMS_WEIGHT * offset * offset).sqrt()
            }
        });
        self.last_update = Some(now);
        self.synchronised = true;
        let rms = self.rms_offset.unwrap_or(0.0);
        let est_error = (rms * rms + line_sd * line_sd).sqrt() + latest.delay / 2.0;
        let growth = (now - latest.m).max(0.0) * self.frequency_sd * 1e-6;
        let max_error = est_error + remaining.abs() + latest.root_distance + growth;
        clock.set_sync_status(SyncStatus {
            synchronised: true,
            max_error: error_bound(max_error),
            est_error: error_bound(est_error),
        })?;
        Ok(if step {
            Outcome::Stepped { offset }
        } else {
            Outcome::Slewed {
                offset,
                frequency_ppm: applied,
            }
        })
    }
}

/// The correction per monotonic second (s/s) while `applied_ppm` is set on
/// a clock that needs `estimate_ppm`. Linux's monotonic clock runs at the
/// applied frequency too, so a monotonic second at frequency `f` is
/// `1/((1+e)(1+f))` true seconds for a clock `e` fast; the offset then
/// changes by `(f* − f)/(1 + f)` with `f* = 1/(1+e) − 1` the estimate. The
/// correction's share is `f (1 + f*)/(1 + f)`, which makes the raw offsets'
/// slope exactly `f*` whatever was applied (it is `f` itself when `f = f*`;
/// with `f` alone the slope would be off by about `f²`, 0.7 % at
/// chrony's 83,333 ppm slew).
fn correction_rate(applied_ppm: f64, estimate_ppm: f64) -> f64 {
    let f = applied_ppm * 1e-6;
    let estimate = estimate_ppm * 1e-6;
    f * (1.0 + estimate) / (1.0 + f)
}

/// Checks what can be checked without the clock.
fn check_sample(sample: &Sample) -> Result<(), Rejection> {
    let Sample {
        monotonic,
        offset,
        delay,
        root_distance,
    } = *sample;
    if !(monotonic.is_finite()
        && offset.is_finite()
        && delay.is_finite()
        && root_distance.is_finite())
    {
        return Err(Rejection::NotFinite);
    }
    let distance_ok = |value: f64| (0.0..=MAX_DELAY).contains(&value);
    if offset.abs() > MAX_OFFSET || !distance_ok(delay) || !distance_ok(root_distance) {
        return Err(Rejection::OutOfRange);
    }
    Ok(())
}

/// Whether the regression's slope is compatible with the prior's.
fn agrees(slope: f64, var: f64, prior: Prior) -> bool {
    let difference = slope - prior.slope;
    difference * difference <= PRIOR_Z * PRIOR_Z * (var + prior.var)
}

/// Inverse-variance weighted mean of the regression's slope and a prior.
fn combine(slope: f64, var: f64, prior: Prior) -> (f64, f64) {
    if !(var.is_finite() && var > 0.0) {
        return (prior.slope, prior.var);
    }
    let (w, wp) = (1.0 / var, 1.0 / prior.var);
    ((slope * w + prior.slope * wp) / (w + wp), 1.0 / (w + wp))
}

/// An error bound for the kernel: finite, within [0, 16] s.
fn error_bound(value: f64) -> f64 {
    if value.is_finite() {
        value.clamp(0.0, MAX_ERROR)
    } else {
        MAX_ERROR
    }
}
