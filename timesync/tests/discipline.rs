//! The clock discipline on the simulated clock: convergence, jumps,
//! outliers, makestep, invalid input.

use timesync::clock::{Clock, Sample};
use timesync::config::{MakeStep, StepLimit};
use timesync::discipline::{
    Discipline, DisciplineConfig, Outcome, Rejection, DEFAULT_MAX_SLEW_RATE_PPM, MAX_FREQUENCY_PPM,
};
use timesync::simclock::SimClock;

/// A source as the discipline sees it.
#[derive(Debug, Clone, Copy)]
struct Source {
    /// Seconds between regular samples.
    interval: f64,
    /// Standard deviation of a sample's offset, seconds.
    noise: f64,
    delay: f64,
    /// Seconds between the samples of a burst.
    burst_spacing: f64,
}

/// ptp_kvm read every second.
const PHC: Source = Source {
    interval: 1.0,
    noise: 1e-6,
    delay: 2e-6,
    burst_spacing: 0.001,
};

/// An NTP server polled every 64 s (chrony's default minpoll).
const NTP: Source = Source {
    interval: 64.0,
    noise: 100e-6,
    delay: 1e-3,
    burst_spacing: 2.0,
};

/// ... and every 16 s.
const NTP16: Source = Source {
    interval: 16.0,
    ..NTP
};

const KATA_MAKESTEP: Option<MakeStep> = Some(MakeStep {
    threshold: 1.0,
    limit: StepLimit::Unlimited,
});

/// What happened at one regular sample (and the burst it asked for).
#[derive(Debug, Clone)]
struct Poll {
    /// True time of the regular sample.
    time: f64,
    /// True offset when the regular sample was taken.
    offset_before: f64,
    outcomes: Vec<Outcome>,
    /// True offset after the last update of this poll.
    offset_after: f64,
    /// True time after the last update of this poll.
    time_after: f64,
}

struct Sim {
    clock: SimClock,
    discipline: Discipline,
    source: Source,
    next_regular: f64,
    polls: Vec<Poll>,
    /// True times and offsets where slews ended between samples.
    slew_ends: Vec<(f64, f64)>,
    /// Added to every sample: a source that lies consistently.
    lie: f64,
}

impl Sim {
    fn new(
        source: Source,
        intrinsic_ppm: f64,
        initial_offset: f64,
        makestep: Option<MakeStep>,
        seed: u64,
    ) -> Self {
        let mut clock = SimClock::new(intrinsic_ppm, initial_offset, seed);
        clock.set_delay(source.delay);
        let config = DisciplineConfig {
            makestep,
            ..DisciplineConfig::default()
        };
        let mut discipline = Discipline::new(config, 0.0);
        discipline.set_poll_interval(source.interval);
        Self {
            clock,
            discipline,
            source,
            next_regular: 0.0,
            polls: Vec::new(),
            slew_ends: Vec::new(),
            lie: 0.0,
        }
    }

    /// Lets true time pass until `until`, ending each slew at its
    /// deadline as the daemon does.
    fn advance_to(&mut self, until: f64) {
        let seconds = until - self.clock.true_time();
        let ends = advance(&mut self.clock, &mut self.discipline, seconds);
        self.slew_ends.extend(ends);
    }

    /// Feeds `sample`, then a burst of fresh samples for as long as asked.
    fn feed(&mut self, sample: Sample) -> Vec<Outcome> {
        let mut outcomes = vec![self.discipline.update(&mut self.clock, sample).unwrap()];
        while let Some(Outcome::BurstWanted { samples }) = outcomes.last() {
            assert!((1..=2).contains(samples), "{outcomes:?}");
            assert!(outcomes.len() <= 5, "burst does not end: {outcomes:?}");
            self.advance_to(self.clock.true_time() + self.source.burst_spacing);
            let mut sample = self.clock.sample(self.source.noise);
            sample.offset += self.lie;
            outcomes.push(self.discipline.update(&mut self.clock, sample).unwrap());
        }
        outcomes
    }

    /// Waits for the next regular sample; `tamper` may change it.
    fn poll_with(&mut self, tamper: impl FnOnce(&mut Sample)) -> &Poll {
        self.advance_to(self.next_regular);
        self.next_regular += self.source.interval;
        let time = self.clock.true_time();
        let offset_before = self.clock.offset();
        let mut sample = self.clock.sample(self.source.noise);
        sample.offset += self.lie;
        tamper(&mut sample);
        let outcomes = self.feed(sample);
        self.polls.push(Poll {
            time,
            offset_before,
            outcomes,
            offset_after: self.clock.offset(),
            time_after: self.clock.true_time(),
        });
        self.polls.last().unwrap()
    }

    fn poll(&mut self) -> &Poll {
        self.poll_with(|_| {})
    }

    /// Polls until true time `until` (exclusive).
    fn run_until(&mut self, until: f64) {
        while self.next_regular < until {
            self.poll();
        }
    }

    /// The time of the first poll from which on the true offset at every
    /// regular sample stays below `bound` (None if the last one is not).
    fn settled(&self, bound: f64) -> Option<f64> {
        let mut settled = None;
        for poll in &self.polls {
            if poll.offset_before.abs() < bound {
                settled.get_or_insert(poll.time);
            } else {
                settled = None;
            }
        }
        settled
    }

    /// How far the true offset went past zero from true time `from` on,
    /// correcting an offset of the sign of `start`: at the samples and
    /// wherever a slew ended, where a piecewise linear offset has its
    /// extremes.
    fn overshoot(&self, from: f64, start: f64) -> f64 {
        let sign = start.signum();
        self.points(from)
            .iter()
            .map(|(_, offset)| -sign * offset)
            .fold(0.0, f64::max)
    }

    /// The true times and offsets recorded from `from` on, in time order:
    /// each regular sample before and after its updates, each slew's end.
    fn points(&self, from: f64) -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = self
            .polls
            .iter()
            .flat_map(|poll| {
                [
                    (poll.time, poll.offset_before),
                    (poll.time_after, poll.offset_after),
                ]
            })
            .chain(self.slew_ends.iter().copied())
            .filter(|(time, _)| *time >= from)
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    }

    /// The true time from which on the true offset stays below `bound`,
    /// looking from `from` on: between two recorded points (samples
    /// before and after their updates, slew ends) the frequency is
    /// constant, so the offset is linear and the crossing is interpolated.
    fn settled_after(&self, from: f64, bound: f64) -> f64 {
        let points = self.points(from);
        let Some(last_out) = points.iter().rposition(|(_, offset)| offset.abs() >= bound) else {
            return points.first().map_or(f64::INFINITY, |p| p.0);
        };
        let Some(&(t1, o1)) = points.get(last_out + 1) else {
            return f64::INFINITY;
        };
        let (t0, o0) = points[last_out];
        // |o| falls from ≥ bound to < bound between the two points.
        let target = bound * o0.signum();
        if (o1 - o0).abs() > 0.0 && o0.signum() == o1.signum() {
            t0 + (t1 - t0) * (target - o0) / (o1 - o0)
        } else {
            t1
        }
    }

    /// Largest |true offset| at the regular samples from time `from` on.
    fn worst_offset_since(&self, from: f64) -> f64 {
        self.polls
            .iter()
            .filter(|poll| poll.time >= from)
            .map(|poll| poll.offset_before.abs())
            .fold(0.0, f64::max)
    }

    fn frequency_error(&self) -> f64 {
        self.discipline.status().frequency_ppm - self.clock.ideal_frequency_ppm()
    }

    fn assert_frequencies_within_limit(&self) {
        for change in self.clock.frequency_changes() {
            assert!(
                change.requested_ppm.abs() <= MAX_FREQUENCY_PPM + DEFAULT_MAX_SLEW_RATE_PPM + 1e-6,
                "frequency {} requested",
                change.requested_ppm
            );
        }
    }
}

/// Lets `seconds` of true time pass on `clock`, calling
/// [`Discipline::end_slew`] when a slew's deadline comes, as the daemon's
/// timer does. Returns the true times and offsets where slews ended.
fn advance(clock: &mut SimClock, discipline: &mut Discipline, seconds: f64) -> Vec<(f64, f64)> {
    let until = clock.true_time() + seconds;
    let mut ends = Vec::new();
    loop {
        let left = until - clock.true_time();
        if left.is_nan() || left <= 0.0 {
            return ends;
        }
        let rate =
            (1.0 + clock.intrinsic_ppm() * 1e-6) * (1.0 + clock.applied_frequency_ppm() * 1e-6);
        match discipline.slew_deadline() {
            Some(end) if end <= clock.monotonic() + left * rate => {
                clock.advance_monotonic_to(end);
                assert!(
                    discipline.end_slew(clock).unwrap(),
                    "slew not ended at {end}"
                );
                ends.push((clock.true_time(), clock.offset()));
            }
            _ => {
                clock.advance(left);
                return ends;
            }
        }
    }
}

fn assert_close(value: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (value - expected).abs() <= tolerance,
        "{what}: {value:e}, expected {expected:e} ± {tolerance:e}"
    );
}

fn assert_slewed(outcome: &Outcome) -> (f64, f64) {
    match *outcome {
        Outcome::Slewed {
            offset,
            frequency_ppm,
        } => (offset, frequency_ppm),
        other => panic!("expected Slewed, got {other:?}"),
    }
}

fn assert_stepped(outcome: &Outcome) -> f64 {
    match *outcome {
        Outcome::Stepped { offset } => offset,
        other => panic!("expected Stepped, got {other:?}"),
    }
}

const BURST_THEN: [Outcome; 2] = [
    Outcome::BurstWanted { samples: 2 },
    Outcome::BurstWanted { samples: 1 },
];

// ---------------------------------------------------------------------------
// Initial convergence
// ---------------------------------------------------------------------------

/// 0.5 s without makestep is slewed at chrony's `maxslewrate`, 83,333 ppm,
/// from the first sample: it closes at 83,433 ppm when the clock is 100 ppm
/// fast and 83,233 when it is 100 ppm slow, so < 1 ms cannot come before
/// 6 s. The slew ends on its deadline, without overshoot.
#[test]
fn phc_slews_half_a_second_at_the_slew_limit() {
    for ppm in [100.0, -100.0] {
        let mut sim = Sim::new(PHC, ppm, 0.5, None, 7);
        sim.run_until(3.0);
        // Still far away: slewing at the limit, in the right direction.
        let rate = sim.discipline.status().slew.unwrap().rate_ppm;
        assert_close(rate, DEFAULT_MAX_SLEW_RATE_PPM, 1e-6, "slew rate");
        sim.run_until(600.0);
        let to_1ms = sim.settled(1e-3).unwrap();
        let to_10us = sim.settled(1e-5).unwrap();
        assert!(
            (6.0..=8.0).contains(&to_1ms),
            "{ppm} ppm: < 1 ms after {to_1ms} s"
        );
        assert!(
            to_10us - to_1ms <= 3.0,
            "{ppm} ppm: < 10 µs after {to_10us} s"
        );
        assert!(
            sim.overshoot(0.0, 0.5) < 1e-5,
            "{ppm} ppm: {}",
            sim.overshoot(0.0, 0.5)
        );
        assert!(sim.worst_offset_since(to_10us + 60.0) < 2e-6);
        assert!(
            sim.frequency_error().abs() < 0.05,
            "{}",
            sim.frequency_error()
        );
        assert!(sim.clock.steps().is_empty());
        let status = sim.discipline.status();
        assert_eq!((status.steps, status.jumps, status.outliers), (0, 0, 0));
        assert_eq!(status.samples, 64);
        assert!(status.frequency_sd_ppm < 0.05);
        sim.assert_frequencies_within_limit();
    }
}

/// Kata's `makestep 1 -1`: the first sample steps 5 s away; the frequency
/// is learned from the next samples. Measured: < 10 µs after 9–10 s, then
/// within 0.8 µs.
#[test]
fn phc_steps_five_seconds_with_makestep() {
    for ppm in [100.0, -100.0] {
        let mut sim = Sim::new(PHC, ppm, 5.0, KATA_MAKESTEP, 7);
        let first = sim.poll().clone();
        assert_close(assert_stepped(&first.outcomes[0]), 5.0, 5e-6, "step");
        assert!(first.offset_after.abs() < 5e-6, "{}", first.offset_after);
        sim.run_until(600.0);
        assert_eq!(sim.clock.steps().len(), 1);
        let to_10us = sim.settled(1e-5).unwrap();
        assert!(to_10us <= 15.0, "{ppm} ppm: < 10 µs after {to_10us} s");
        assert!(sim.worst_offset_since(30.0) < 2e-6);
        assert!(
            sim.frequency_error().abs() < 0.05,
            "{}",
            sim.frequency_error()
        );
        // Every later update slewed.
        assert!(sim.polls[1..]
            .iter()
            .all(|poll| matches!(poll.outcomes[..], [Outcome::Slewed { .. }])));
    }
}

/// The same over NTP every 64 s with 100 µs of noise: the first sample
/// slews 0.5 s away within half an interval (32 s, 15,625 ppm: an offset
/// this many standard errors large is corrected as fast as the interval
/// allows); the clock's own 100 ppm, unknown until the second sample, is
/// 6.4 ms per poll. Measured: < 1 ms from the third poll (128 s) on,
/// < 100 µs from the seventh (384 s).
#[test]
fn ntp_slews_half_a_second() {
    for ppm in [100.0, -100.0] {
        let mut sim = Sim::new(NTP, ppm, 0.5, None, 7);
        sim.run_until(20_000.0);
        let to_1ms = sim.settled(1e-3).unwrap();
        let to_100us = sim.settled(1e-4).unwrap();
        assert!(to_1ms <= 128.0, "{ppm} ppm: < 1 ms after {to_1ms} s");
        assert!(to_100us <= 640.0, "{ppm} ppm: < 100 µs after {to_100us} s");
        // Past zero by what the unknown 100 ppm drifts in one poll at most,
        // then only by the noise.
        let first = sim.overshoot(0.0, 0.5);
        assert!(first < 64.0 * 100e-6 + 2e-4, "{ppm} ppm: {first}");
        let later = sim.overshoot(128.0, 0.5);
        assert!(later < 1.5e-4, "{ppm} ppm: {later}");
        // Samples older than ~17 min weigh less (a wandering frequency is
        // followed better): with white noise alone, a little more spread.
        assert!(sim.worst_offset_since(10_000.0) < 70e-6);
        assert!(
            sim.frequency_error().abs() < 0.05,
            "{}",
            sim.frequency_error()
        );
        assert!(sim.clock.steps().is_empty());
        let status = sim.discipline.status();
        assert_eq!((status.steps, status.jumps, status.outliers), (0, 0, 0));
        sim.assert_frequencies_within_limit();
    }
}

/// Measured: < 1 ms after 512 s at 64 s polls, 48–64 s at 16 s polls.
#[test]
fn ntp_steps_five_seconds_with_makestep() {
    for (source, latest) in [(NTP, 640.0), (NTP16, 96.0)] {
        for ppm in [100.0, -100.0] {
            let mut sim = Sim::new(source, ppm, 5.0, KATA_MAKESTEP, 7);
            let first = sim.poll().clone();
            assert_close(assert_stepped(&first.outcomes[0]), 5.0, 5e-4, "step");
            sim.run_until(10_000.0);
            assert_eq!(sim.clock.steps().len(), 1);
            let to_1ms = sim.settled(1e-3).unwrap();
            assert!(
                to_1ms <= latest,
                "{} s polls, {ppm} ppm: < 1 ms after {to_1ms} s",
                source.interval
            );
            assert!(sim.worst_offset_since(5000.0) < 150e-6);
            assert!(
                sim.frequency_error().abs() < 0.1,
                "{}",
                sim.frequency_error()
            );
        }
    }
}

/// An NTP start with iburst (4 samples 2 s apart, then every 64 s) and no
/// poll interval given: the correction assumes 64 s between updates, so the
/// short first intervals cannot make it overshoot. Measured: the offset
/// falls from 3.8 ms to 210 µs in 6 polls, then stays within the noise
/// (100 µs per sample): 68 µs at most on the other side, within 65 µs from
/// the 20th poll on.
#[test]
fn iburst_without_poll_interval_does_not_overshoot() {
    let mut clock = SimClock::new(100.0, 0.004, 5);
    clock.set_delay(NTP.delay);
    let mut discipline = Discipline::new(DisciplineConfig::default(), 0.0);
    let mut offsets = Vec::new();
    for i in 0..40 {
        advance(&mut clock, &mut discipline, if i < 4 { 2.0 } else { 64.0 });
        offsets.push(clock.offset());
        let sample = clock.sample(NTP.noise);
        assert_slewed(&discipline.update(&mut clock, sample).unwrap());
    }
    assert!(
        offsets.iter().all(|offset| *offset > -NTP.noise),
        "{offsets:?}"
    );
    assert!(
        offsets[6..].iter().all(|o| o.abs() < NTP.noise * 1.2),
        "{offsets:?}"
    );
    assert!(offsets[20..].iter().all(|o| o.abs() < 65e-6), "{offsets:?}");
}

// ---------------------------------------------------------------------------
// Jumps
// ---------------------------------------------------------------------------

/// After convergence the local clock jumps; the sample that shows it asks
/// for a burst, the burst confirms it and the clock is stepped before the
/// next regular sample. The frequency is kept.
fn jump_is_stepped_within_one_interval(source: Source, settle: f64, max_after: f64) {
    for ppm in [100.0, -100.0] {
        for jump in [2.0, -2.0, 100.0, -3600.0] {
            let what = format!("{} s polls, {ppm} ppm, jump {jump} s", source.interval);
            let mut sim = Sim::new(source, ppm, 5.0, KATA_MAKESTEP, 11);
            sim.run_until(settle);
            assert!(sim.clock.offset().abs() < max_after, "{what}: not settled");
            sim.clock.jump(jump);
            let poll = sim.poll().clone();
            assert_eq!(poll.outcomes[..2], BURST_THEN, "{what}");
            assert_eq!(poll.outcomes.len(), 3, "{what}");
            assert_close(assert_stepped(&poll.outcomes[2]), jump, max_after, &what);
            assert!(poll.offset_after.abs() < max_after, "{what}: {poll:?}");
            assert!(poll.time_after - poll.time < source.interval, "{what}");
            assert_eq!(sim.clock.steps().len(), 2, "{what}");
            let status = sim.discipline.status();
            assert_eq!((status.jumps, status.steps, status.samples), (1, 2, 3));
            // The frequency survives the reset of the offset history.
            assert!(sim.frequency_error().abs() < 0.05, "{what}");
            let after = poll.time;
            sim.run_until(after + 50.0 * source.interval);
            assert!(sim.worst_offset_since(after + 1.0) < max_after, "{what}");
            assert!(sim.frequency_error().abs() < 0.05, "{what}");
            assert_eq!(sim.clock.steps().len(), 2, "{what}");
        }
    }
}

/// Measured: 0.94 µs after the step, 2 ms after the jump was seen, within
/// 0.96 µs afterwards; frequency error 0.003 ppm.
#[test]
fn phc_jumps_are_stepped_within_one_interval() {
    jump_is_stepped_within_one_interval(PHC, 300.0, 5e-6);
}

/// Measured: 100 µs after the step (4 s after the jump was seen), within
/// 100 µs afterwards; frequency error 0.011 ppm (64 s), 0.019 ppm (16 s).
#[test]
fn ntp_jumps_are_stepped_within_one_interval() {
    jump_is_stepped_within_one_interval(NTP, 4000.0, 400e-6);
    jump_is_stepped_within_one_interval(NTP16, 2000.0, 400e-6);
}

/// A caller that cannot burst: the regular samples confirm the jump.
#[test]
fn jump_is_confirmed_by_regular_samples_without_a_burst() {
    let mut sim = Sim::new(NTP, 100.0, 5.0, KATA_MAKESTEP, 3);
    sim.run_until(4000.0);
    sim.clock.jump(-2.0);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        sim.clock.advance(NTP.interval);
        let sample = sim.clock.sample(NTP.noise);
        outcomes.push(sim.discipline.update(&mut sim.clock, sample).unwrap());
    }
    assert_eq!(outcomes[..2], BURST_THEN);
    assert_close(assert_stepped(&outcomes[2]), -2.0, 1e-3, "step");
    assert!(sim.clock.offset().abs() < 400e-6);
}

/// Without makestep a confirmed jump is slewed at `maxslewrate`, and the
/// samples that follow are not taken for new jumps: 2 s at 83,333 ppm
/// (plus or minus the clock's own 100 ppm) takes 24 s.
#[test]
fn jump_without_makestep_is_slewed_at_the_limit() {
    for ppm in [100.0, -100.0] {
        let mut sim = Sim::new(PHC, ppm, 0.0, None, 5);
        sim.run_until(300.0);
        sim.clock.jump(2.0);
        let poll = sim.poll().clone();
        assert_eq!(poll.outcomes[..2], BURST_THEN);
        let (offset, _) = assert_slewed(&poll.outcomes[2]);
        assert_close(offset, 2.0, 5e-6, "offset");
        assert_close(
            sim.discipline.status().slew.unwrap().rate_ppm,
            DEFAULT_MAX_SLEW_RATE_PPM,
            1e-6,
            "slew rate",
        );
        let start = (sim.clock.true_time(), sim.clock.offset());
        sim.run_until(poll.time + 20.0);
        for later in sim.polls.iter().filter(|p| p.time > poll.time) {
            assert!(
                matches!(later.outcomes[..], [Outcome::Slewed { .. }]),
                "{later:?}"
            );
        }
        // 83,333 ppm of the clock's (1 ± 100 ppm) seconds.
        let closed = start.1 - sim.clock.offset();
        let expected = (sim.clock.true_time() - start.0) * (1.0 + ppm * 1e-6) / 12.0;
        assert_close(closed, expected, expected * 1e-3, "offset slewed away");
        sim.run_until(poll.time + 100.0);
        let to_1us = sim.settled(1e-6).unwrap() - poll.time;
        assert!(
            (24.0..=27.0).contains(&to_1us),
            "{ppm} ppm: < 1 µs after {to_1us} s"
        );
        assert!(
            sim.overshoot(poll.time, 2.0) < 1e-5,
            "{}",
            sim.overshoot(poll.time, 2.0)
        );
        let status = sim.discipline.status();
        assert_eq!((status.jumps, status.steps), (1, 0));
        assert!(sim.clock.steps().is_empty());
        assert!(
            sim.frequency_error().abs() < 0.05,
            "{}",
            sim.frequency_error()
        );
    }
}

/// A 10 ppm change of the clock's own frequency is learned again.
/// Measured: PHC within 0.1 ppm after 10 s; NTP (64 s) after 888 s, worst
/// offset 1.6 ms meanwhile (one slewed "jump").
#[test]
fn frequency_change_is_followed() {
    for (source, within, worst) in [(PHC, 30.0, 50e-6), (NTP, 1500.0, 3e-3)] {
        let mut sim = Sim::new(source, 100.0, 5.0, KATA_MAKESTEP, 3);
        sim.run_until(5000.0);
        sim.clock.set_intrinsic_ppm(110.0);
        sim.run_until(5000.0 + within);
        let mut errors = Vec::new();
        while sim.next_regular < 20_000.0 {
            sim.poll();
            errors.push(sim.frequency_error());
        }
        assert!(
            errors.iter().all(|e| e.abs() < 0.1),
            "{} s polls",
            source.interval
        );
        assert!(sim.worst_offset_since(5000.0) < worst);
        assert!(sim.worst_offset_since(10_000.0) < 150e-6);
        assert_eq!(sim.clock.steps().len(), 1);
    }
}

// ---------------------------------------------------------------------------
// Outliers
// ---------------------------------------------------------------------------

#[test]
fn isolated_outlier_is_dropped_without_stepping() {
    for (source, error, settle, bound) in [(PHC, 0.05, 300.0, 5e-6), (NTP, -0.05, 4000.0, 400e-6)] {
        let mut sim = Sim::new(source, -100.0, 5.0, KATA_MAKESTEP, 13);
        sim.run_until(settle);
        let frequency = sim.discipline.status().frequency_ppm;
        let poll = sim.poll_with(|sample| sample.offset += error).clone();
        assert_eq!(poll.outcomes.len(), 2, "{poll:?}");
        assert_eq!(poll.outcomes[0], Outcome::BurstWanted { samples: 2 });
        let (offset, _) = assert_slewed(&poll.outcomes[1]);
        assert!(offset.abs() < bound);
        let status = sim.discipline.status();
        assert_eq!((status.outliers, status.steps, status.jumps), (1, 1, 0));
        assert!(!status.burst_pending);
        assert!((status.frequency_ppm - frequency).abs() < 0.05);
        sim.run_until(poll.time + 20.0 * source.interval);
        assert!(sim.worst_offset_since(poll.time) < bound);
        assert_eq!(sim.clock.steps().len(), 1);
    }
}

/// A caller that ignores the burst request: the next regular sample proves
/// the held one wrong.
#[test]
fn outlier_is_dropped_by_the_next_regular_sample() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 13);
    sim.run_until(100.0);
    let changes = sim.clock.frequency_changes().len();
    sim.clock.advance(1.0);
    let mut sample = sim.clock.sample(PHC.noise);
    sample.offset += 0.05;
    assert_eq!(
        sim.discipline.update(&mut sim.clock, sample).unwrap(),
        Outcome::BurstWanted { samples: 2 }
    );
    assert!(sim.discipline.status().burst_pending);
    // The held sample did not touch the clock.
    assert_eq!(sim.clock.frequency_changes().len(), changes);
    sim.clock.advance(1.0);
    let sample = sim.clock.sample(PHC.noise);
    let (offset, _) = assert_slewed(&sim.discipline.update(&mut sim.clock, sample).unwrap());
    assert!(offset.abs() < 5e-6);
    assert_eq!(sim.discipline.status().outliers, 1);
}

/// A 1 ms floor: a sample 0.5 ms off on a 1 µs PHC is not a jump.
#[test]
fn deviation_below_the_floor_is_used() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 13);
    sim.run_until(100.0);
    let poll = sim.poll_with(|sample| sample.offset += 0.5e-3).clone();
    assert_slewed(&poll.outcomes[0]);
    assert_eq!(poll.outcomes.len(), 1);
    let poll = sim.poll_with(|sample| sample.offset += 1.5e-3).clone();
    assert_eq!(poll.outcomes[0], Outcome::BurstWanted { samples: 2 });
}

/// Burst samples that agree neither with the prediction nor with each
/// other: at most 4 are taken, then everything held is dropped.
#[test]
fn burst_that_does_not_settle_is_dropped() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 17);
    sim.run_until(100.0);
    let (changes, statuses) = (
        sim.clock.frequency_changes().len(),
        sim.clock.sync_statuses().len(),
    );
    let mut outcomes = Vec::new();
    for wrong in [1.0, -1.0, 2.0, -2.0, 3.0] {
        sim.clock.advance(0.001);
        let mut sample = sim.clock.sample(PHC.noise);
        sample.offset += wrong;
        outcomes.push(sim.discipline.update(&mut sim.clock, sample).unwrap());
    }
    assert_eq!(
        outcomes,
        [
            Outcome::BurstWanted { samples: 2 },
            Outcome::BurstWanted { samples: 2 },
            Outcome::BurstWanted { samples: 2 },
            Outcome::BurstWanted { samples: 2 },
            Outcome::OutlierDropped { dropped: 1 },
        ]
    );
    let status = sim.discipline.status();
    assert_eq!((status.outliers, status.jumps, status.steps), (5, 0, 1));
    assert!(!status.burst_pending);
    assert_eq!(sim.clock.frequency_changes().len(), changes);
    assert_eq!(sim.clock.sync_statuses().len(), statuses);
    let poll = sim.poll().clone();
    assert_slewed(&poll.outcomes[0]);
    assert!(poll.offset_after.abs() < 5e-6);
}

// ---------------------------------------------------------------------------
// makestep
// ---------------------------------------------------------------------------

/// `makestep 0.1 3`: a jump confirmed at the third update is stepped, one
/// confirmed at the fourth is slewed (chrony counts every update).
#[test]
fn makestep_limit_counts_updates() {
    let makestep = Some(MakeStep {
        threshold: 0.1,
        limit: StepLimit::Updates(3),
    });
    for (jump_before, stepped) in [(3, true), (4, false)] {
        let mut sim = Sim::new(PHC, 100.0, 0.05, makestep, 19);
        for _ in 1..jump_before {
            assert_slewed(&sim.poll().outcomes[0]);
        }
        sim.clock.jump(1.0);
        let poll = sim.poll().clone();
        let expected = poll.offset_before;
        assert_eq!(poll.outcomes[..2], BURST_THEN);
        assert_eq!(sim.discipline.status().updates, jump_before);
        if stepped {
            assert_close(assert_stepped(&poll.outcomes[2]), expected, 20e-6, "step");
            assert_eq!(sim.clock.steps().len(), 1);
        } else {
            let (offset, frequency) = assert_slewed(&poll.outcomes[2]);
            assert_close(offset, expected, 20e-6, "offset");
            let rate = frequency - sim.discipline.status().frequency_ppm;
            assert_close(rate, DEFAULT_MAX_SLEW_RATE_PPM, 1e-6, "slew rate");
            assert!(sim.clock.steps().is_empty());
        }
    }
}

#[test]
fn initial_offset_is_stepped_only_when_makestep_allows() {
    let cases = [
        (None, false),
        (
            Some(MakeStep {
                threshold: 1.0,
                limit: StepLimit::Updates(0),
            }),
            false,
        ),
        (
            Some(MakeStep {
                threshold: 6.0,
                limit: StepLimit::Unlimited,
            }),
            false,
        ),
        (
            Some(MakeStep {
                threshold: 1.0,
                limit: StepLimit::Updates(1),
            }),
            true,
        ),
        (KATA_MAKESTEP, true),
    ];
    for (makestep, stepped) in cases {
        let mut sim = Sim::new(PHC, 0.0, 5.0, makestep, 23);
        let outcome = sim.poll().outcomes[0];
        assert_eq!(
            matches!(outcome, Outcome::Stepped { .. }),
            stepped,
            "{makestep:?}: {outcome:?}"
        );
        assert_eq!(sim.clock.steps().len(), usize::from(stepped));
        sim.run_until(20.0);
        assert_eq!(sim.clock.steps().len(), usize::from(stepped));
        if !stepped {
            // Slewed at maxslewrate from the first sample (t = 0) on.
            let slewed = 19.0 * DEFAULT_MAX_SLEW_RATE_PPM * 1e-6;
            assert_close(sim.clock.offset(), 5.0 - slewed, 0.01, "offset");
        }
    }
}

// ---------------------------------------------------------------------------
// Sync status
// ---------------------------------------------------------------------------

#[test]
fn sync_status_after_each_update() {
    let mut sim = Sim::new(NTP, 100.0, 5.0, KATA_MAKESTEP, 29);
    sim.clock.set_root_distance(0.02);
    sim.run_until(4000.0);
    let statuses = sim.clock.sync_statuses();
    assert_eq!(statuses.len() as u64, sim.discipline.status().updates);
    for status in statuses {
        assert!(status.synchronised);
        assert!(status.est_error > 0.0 && status.est_error <= status.max_error);
        assert!(status.max_error >= 0.02 && status.max_error <= 16.0);
    }
    let last = statuses.last().unwrap();
    // Half the 1 ms delay plus tens of µs.
    assert!(last.est_error < 0.7e-3, "{last:?}");
    assert!(last.max_error < 0.025, "{last:?}");

    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 29);
    sim.run_until(300.0);
    let last = *sim.clock.sync_statuses().last().unwrap();
    assert!(last.est_error < 5e-6, "{last:?}");
}

#[test]
fn mark_unsynchronised_until_the_next_update() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 31);
    sim.run_until(300.0);
    assert!(sim.discipline.status().synchronised);
    sim.discipline.mark_unsynchronised(&mut sim.clock).unwrap();
    let status = sim.discipline.status();
    assert!(!status.synchronised);
    let last = *sim.clock.sync_statuses().last().unwrap();
    assert!(!last.synchronised);
    assert_eq!((last.max_error, last.est_error), (16.0, 16.0));
    // Holdover: the frequency estimate alone, no offset correction.
    assert_eq!(sim.clock.applied_frequency_ppm(), status.frequency_ppm);
    assert_eq!(status.applied_frequency_ppm, status.frequency_ppm);
    // An hour without samples: the clock drifts by the frequency error only.
    sim.next_regular += 3600.0;
    let poll = sim.poll().clone();
    assert!(poll.offset_before.abs() < 200e-6, "{poll:?}");
    assert_slewed(&poll.outcomes[0]);
    assert!(sim.discipline.status().synchronised);
    assert!(sim.clock.sync_statuses().last().unwrap().synchronised);
}

#[test]
fn status_reports_the_last_update() {
    let mut sim = Sim::new(PHC, -100.0, 5.0, KATA_MAKESTEP, 37);
    let before = sim.discipline.status();
    assert_eq!(
        (
            before.synchronised,
            before.last_update,
            before.samples,
            before.updates
        ),
        (false, None, 0, 0)
    );
    sim.run_until(100.0);
    let monotonic = sim.clock.monotonic();
    let status = sim.discipline.status();
    assert_eq!(status.last_update, Some(monotonic));
    assert_eq!((status.updates, status.samples, status.steps), (100, 64, 1));
    assert!(status.last_offset.abs() < 5e-6);
    assert!(status.rms_offset < 5e-6 && status.rms_offset > 0.0);
    assert_close(
        status.frequency_ppm,
        sim.clock.ideal_frequency_ppm(),
        0.05,
        "frequency",
    );
    assert_eq!(
        status.applied_frequency_ppm,
        sim.clock.applied_frequency_ppm()
    );
}

// ---------------------------------------------------------------------------
// Invalid input and failures
// ---------------------------------------------------------------------------

#[test]
fn invalid_samples_are_rejected_without_touching_the_clock() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 41);
    sim.run_until(10.0);
    sim.clock.advance(0.5);
    let good = sim.clock.sample(PHC.noise);
    let records = |clock: &SimClock| {
        (
            clock.steps().len(),
            clock.frequency_changes().len(),
            clock.sync_statuses().len(),
        )
    };
    let before = records(&sim.clock);
    let cases = [
        (
            Sample {
                offset: f64::NAN,
                ..good
            },
            Rejection::NotFinite,
        ),
        (
            Sample {
                offset: f64::INFINITY,
                ..good
            },
            Rejection::NotFinite,
        ),
        (
            Sample {
                monotonic: f64::NAN,
                ..good
            },
            Rejection::NotFinite,
        ),
        (
            Sample {
                delay: f64::NEG_INFINITY,
                ..good
            },
            Rejection::NotFinite,
        ),
        (
            Sample {
                root_distance: f64::NAN,
                ..good
            },
            Rejection::NotFinite,
        ),
        (
            Sample {
                offset: 1e300,
                ..good
            },
            Rejection::OutOfRange,
        ),
        (
            Sample {
                delay: -1e-6,
                ..good
            },
            Rejection::OutOfRange,
        ),
        (
            Sample {
                root_distance: 1e9,
                ..good
            },
            Rejection::OutOfRange,
        ),
        (
            Sample {
                monotonic: good.monotonic + 10.0,
                ..good
            },
            Rejection::FromTheFuture,
        ),
        (
            Sample {
                monotonic: f64::MAX,
                ..good
            },
            Rejection::FromTheFuture,
        ),
        // Taken at or before the previous sample.
        (
            Sample {
                monotonic: good.monotonic - 1.0,
                ..good
            },
            Rejection::NotMonotonic,
        ),
        (
            Sample {
                monotonic: good.monotonic - 0.5,
                ..good
            },
            Rejection::NotMonotonic,
        ),
    ];
    for (index, (sample, reason)) in cases.iter().enumerate() {
        assert_eq!(
            sim.discipline.update(&mut sim.clock, *sample).unwrap(),
            Outcome::Rejected(*reason),
            "case {index}: {sample:?}"
        );
    }
    assert_eq!(records(&sim.clock), before);
    assert_eq!(sim.discipline.status().rejected, cases.len() as u64);
    // The same sample twice: the second is not after the first.
    assert_slewed(&sim.discipline.update(&mut sim.clock, good).unwrap());
    assert_eq!(
        sim.discipline.update(&mut sim.clock, good).unwrap(),
        Outcome::Rejected(Rejection::NotMonotonic)
    );
    // Two days later, a sample from one second after the last is stale.
    sim.clock.advance(2.0 * 86_400.0);
    let stale = Sample {
        monotonic: good.monotonic + 1.0,
        ..good
    };
    assert_eq!(
        sim.discipline.update(&mut sim.clock, stale).unwrap(),
        Outcome::Rejected(Rejection::Stale)
    );
    assert_eq!(Rejection::Stale.to_string(), "taken more than a day ago");
}

/// Random values, special floats and random times never panic, and the
/// clock is only ever given finite steps and frequencies within ±500 ppm.
#[test]
fn garbage_never_panics_and_never_reaches_the_clock() {
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        -0.0,
        0.0,
        1e10,
        -1e10,
        1e-300,
        1000.0,
    ];
    for seed in 0..8 {
        let makestep = (seed % 2 == 0).then_some(MakeStep {
            threshold: 0.0,
            limit: StepLimit::Unlimited,
        });
        let mut sim = Sim::new(PHC, 100.0, 1.0, makestep, seed);
        let mut outcomes = Vec::new();
        for _ in 0..3000 {
            let rng = sim.clock.rng();
            let mut pick = |scale: f64| match rng.next_u64() % 4 {
                0 => specials[(rng.next_u64() % specials.len() as u64) as usize],
                1 => (rng.uniform() - 0.5) * scale,
                _ => rng.gaussian() * scale * 1e-6,
            };
            let (dt, offset, delay, root_distance) = (pick(10.0), pick(1e6), pick(1.0), pick(1.0));
            if rng.uniform() < 1.0 / 3.0 {
                sim.clock.advance(dt.abs().min(100.0));
            }
            let base = sim.clock.monotonic();
            let sample = Sample {
                monotonic: if sim.clock.rng().uniform() < 0.5 {
                    base
                } else {
                    base + dt
                },
                offset,
                delay,
                root_distance,
            };
            outcomes.push(sim.discipline.update(&mut sim.clock, sample).unwrap());
            let status = sim.discipline.status();
            assert!(status.frequency_ppm.abs() <= 500.0, "{status:?}");
            assert!(
                status.applied_frequency_ppm.abs() <= 500.0 + DEFAULT_MAX_SLEW_RATE_PPM,
                "{status:?}"
            );
        }
        sim.assert_frequencies_within_limit();
        assert!(sim.clock.steps().iter().all(|step| step.step.is_finite()));
        // Every path was taken (delay-weighted fits make most garbage an
        // outlier: few updates).
        let status = sim.discipline.status();
        assert!(status.rejected > 2000 && status.outliers > 50, "{status:?}");
        assert!(status.updates >= 10, "{status:?}");
        assert!(outcomes
            .iter()
            .any(|o| matches!(o, Outcome::OutlierDropped { .. })));
        if makestep.is_some() {
            assert!(status.steps >= 10, "{status:?}");
        }
        for status in sim.clock.sync_statuses() {
            assert!((0.0..=16.0).contains(&status.est_error), "{status:?}");
            assert!((0.0..=16.0).contains(&status.max_error), "{status:?}");
        }
        // Still usable: honest samples bring the clock back (by stepping
        // with makestep; without, slewing a garbage offset back at 500 ppm
        // would take hours, so the clock is put right first).
        if makestep.is_none() {
            let offset = sim.clock.offset();
            sim.clock.jump(-offset);
        }
        sim.next_regular = sim.clock.true_time() + 1.0;
        for _ in 0..200 {
            sim.poll();
        }
        assert!(
            sim.clock.offset().abs() < 10e-6,
            "seed {seed}: {}",
            sim.clock.offset()
        );
    }
}

#[test]
fn clock_errors_are_returned_and_recovered_from() {
    let mut sim = Sim::new(PHC, 100.0, 5.0, KATA_MAKESTEP, 43);
    // The first update reads the frequency.
    sim.clock.set_failing(true);
    let sample = sim.clock.sample(PHC.noise);
    let error = sim.discipline.update(&mut sim.clock, sample).unwrap_err();
    assert_eq!(error.call, "frequency");
    assert!(sim.discipline.mark_unsynchronised(&mut sim.clock).is_err());
    sim.clock.set_failing(false);
    sim.run_until(100.0);
    assert!(sim.clock.offset().abs() < 10e-6);
    // A failing step: nothing recorded as applied.
    sim.clock.jump(10.0);
    sim.clock.advance(1.0);
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let sample = sim.clock.sample(PHC.noise);
        outcomes.push(sim.discipline.update(&mut sim.clock, sample).unwrap());
        sim.clock.advance(0.001);
    }
    assert_eq!(outcomes, BURST_THEN);
    sim.clock.set_failing(true);
    let sample = sim.clock.sample(PHC.noise);
    assert_eq!(
        sim.discipline
            .update(&mut sim.clock, sample)
            .unwrap_err()
            .call,
        "step"
    );
    assert_eq!(sim.discipline.status().steps, 1);
    sim.clock.set_failing(false);
    // The next sample shows the offset still there and steps it.
    sim.next_regular = sim.clock.true_time() + 1.0;
    let poll = sim.poll().clone();
    assert_close(assert_stepped(&poll.outcomes[0]), 10.0, 1e-4, "step");
    assert!(poll.offset_after.abs() < 10e-6);
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn config_from_file_and_sanitised() {
    let (config, _) = timesync::config::parse_config("makestep 1 -1\n");
    let discipline_config = DisciplineConfig::from_config(&config);
    assert_eq!(discipline_config.makestep, KATA_MAKESTEP);
    // No step before the build (at least 2024-01-01).
    assert_eq!(
        discipline_config.min_time,
        timesync::rtc::earliest_sane_time() as f64
    );
    assert!(discipline_config.min_time >= 1_704_067_200.0);
    assert_eq!(
        DisciplineConfig {
            makestep: None,
            min_time: 0.0,
            ..discipline_config
        },
        DisciplineConfig::default()
    );
    let wild = DisciplineConfig {
        makestep: None,
        max_frequency_ppm: 1e9,
        max_slew_rate_ppm: 1e9,
        correction_time_ratio: f64::NAN,
        jump_floor: -1.0,
        jump_sigmas: 0.0,
        confirmations: 0,
        max_samples: 0,
        min_time: f64::NAN,
        max_step: Some(-1.0),
    };
    let sanitised = *Discipline::new(wild, f64::NAN).config();
    assert_eq!(
        sanitised,
        DisciplineConfig {
            max_frequency_ppm: 500.0,
            max_slew_rate_ppm: 100_000.0,
            confirmations: 1,
            max_samples: 4,
            ..DisciplineConfig::default()
        }
    );
    let discipline = Discipline::new(DisciplineConfig::default(), 1e6);
    assert_eq!(discipline.status().frequency_ppm, 500.0);
}

/// A smaller `maxslewrate` is honoured for the whole slew.
#[test]
fn max_slew_rate_is_configurable() {
    let mut clock = SimClock::new(0.0, 0.5, 47);
    let config = DisciplineConfig {
        max_slew_rate_ppm: 100.0,
        ..DisciplineConfig::default()
    };
    let mut discipline = Discipline::new(config, 0.0);
    discipline.set_poll_interval(1.0);
    for _ in 0..100 {
        clock.advance(1.0);
        let sample = clock.sample(1e-6);
        discipline.update(&mut clock, sample).unwrap();
    }
    // The estimate (true: 0 ppm) is within a few ppm from the second
    // sample on; the rest is the slew, at its limit.
    assert!(clock
        .frequency_changes()
        .iter()
        .all(|change| (change.requested_ppm - 100.0).abs() < 5.0));
    let status = discipline.status();
    assert_close(status.slew.unwrap().rate_ppm, 100.0, 1e-9, "slew rate");
    // Slewing from the first update, at t = 1 s.
    assert_close(clock.offset(), 0.5 - 99.0 * 100e-6, 2e-5, "offset");
}

// ---------------------------------------------------------------------------
// Offsets below the step threshold (issue: a pause, a snapshot restore)
// ---------------------------------------------------------------------------

/// ptp_kvm as the targets state it: read every second, 10 ns of
/// noise.
const PHC_KVM: Source = Source {
    noise: 10e-9,
    delay: 100e-9,
    ..PHC
};

/// Kata's lines, a clock 10 ppm fast, settled; then, half-way between two
/// samples, the guest clock is off by less than `makestep 1` (a pause, a
/// restore, a migration): the next sample sees it, a burst confirms it and
/// it is slewed at up to `maxslewrate`, then at what is left. Targets:
/// within 1 ms in ≤ 10 s and within 1 µs in ≤ 20 s, overshoot ≤ 1 ms. At
/// chrony's default 83,333 ppm, 0.9 s cannot take less than 10.8 s of
/// slewing (plus up to a sample interval to see it): its bound is that,
/// and with `maxslewrate 100000` (Linux's limit) it meets 10 s. Measured
/// (printed with `--nocapture`): ±0.01 s within 1 µs after 0.62 s, ±0.5 s
/// within 1 ms after 6.49 s and 1 µs after 7.5–8.5 s, ±0.9 s after 11.3 s
/// (9.5 s at 100,000 ppm); overshoot < 0.01 µs.
#[test]
fn offsets_below_makestep_are_slewed_out_within_seconds() {
    let cases = [
        (0.01, DEFAULT_MAX_SLEW_RATE_PPM, 10.0),
        (0.5, DEFAULT_MAX_SLEW_RATE_PPM, 10.0),
        (
            0.9,
            DEFAULT_MAX_SLEW_RATE_PPM,
            0.9 / (DEFAULT_MAX_SLEW_RATE_PPM * 1e-6) + 1.0,
        ),
        (0.9, 100_000.0, 10.0),
    ];
    for (offset, max_slew_rate_ppm, within) in cases {
        for offset in [offset, -offset] {
            let mut sim = Sim::new(PHC_KVM, 10.0, 0.0, KATA_MAKESTEP, 31);
            sim.discipline = Discipline::new(
                DisciplineConfig {
                    makestep: KATA_MAKESTEP,
                    max_slew_rate_ppm,
                    ..DisciplineConfig::default()
                },
                0.0,
            );
            sim.discipline.set_poll_interval(PHC_KVM.interval);
            // The sample at 300 s, then half an interval.
            sim.run_until(300.5);
            sim.advance_to(300.5);
            let start = sim.clock.true_time();
            sim.clock.jump(offset);
            sim.run_until(start + 120.0);
            let to_1ms = sim.settled_after(start, 1e-3) - start;
            let to_1us = sim.settled_after(start, 1e-6) - start;
            let overshoot = sim.overshoot(start, offset);
            let what = format!("{offset:+} s at {max_slew_rate_ppm:.0} ppm");
            println!(
                "{what}: < 1 ms after {to_1ms:.2} s, < 1 µs after {to_1us:.2} s, \
                 overshoot {:.3} µs",
                overshoot * 1e6
            );
            assert!(to_1ms <= within, "{what}: < 1 ms after {to_1ms} s");
            assert!(to_1us <= 20.0, "{what}: < 1 µs after {to_1us} s");
            assert!(overshoot <= 1e-3, "{what}: overshoot {overshoot}");
            assert!(sim.clock.steps().is_empty(), "{what}: stepped");
            let status = sim.discipline.status();
            assert_eq!(status.jumps, 1, "{what}: {status:?}");
            // What is left is noise-sized: the tick is back to normal, the
            // frequency at the estimate.
            let rate = status.slew.map_or(0.0, |slew| slew.rate_ppm);
            assert!(rate.abs() < 0.1, "{what}: still slewing at {rate} ppm");
            let applied = sim.clock.applied_frequency_ppm();
            assert!((applied - status.frequency_ppm).abs() < 0.1, "{what}");
            let error = sim.frequency_error();
            assert!(error.abs() < 0.01, "{what}: frequency off by {error} ppm");
            for change in sim.clock.frequency_changes() {
                assert!(
                    change.requested_ppm.abs() <= max_slew_rate_ppm + 500.0,
                    "{what}"
                );
            }
        }
    }
}

/// The same offsets at start (the first sample, no history): slewed from
/// the first update on, with the frequency still unknown.
#[test]
fn first_offsets_below_makestep_are_slewed_out_within_seconds() {
    for offset in [0.01, 0.5, 0.9, -0.5] {
        let mut sim = Sim::new(PHC_KVM, 10.0, offset, KATA_MAKESTEP, 37);
        sim.run_until(120.0);
        let to_1ms = sim.settled_after(0.0, 1e-3);
        let to_1us = sim.settled_after(0.0, 1e-6);
        let overshoot = sim.overshoot(0.0, offset);
        println!(
            "first offset {offset:+}: < 1 ms after {to_1ms:.2} s, < 1 µs after {to_1us:.2} s, \
             overshoot {:.3} µs",
            overshoot * 1e6
        );
        assert!(to_1ms <= 12.0, "{offset}: < 1 ms after {to_1ms} s");
        assert!(to_1us <= 22.0, "{offset}: < 1 µs after {to_1us} s");
        assert!(overshoot <= 1e-3, "{offset}: overshoot {overshoot}");
        assert!(sim.clock.steps().is_empty());
    }
}

/// The slew's deadline, its end, and the frequency left on exit: never a
/// slew's tick once it is over or the daemon is gone.
#[test]
fn slews_end_at_their_deadline_and_on_release() {
    let mut clock = SimClock::new(10.0, 0.3, 41);
    let mut discipline = Discipline::new(
        DisciplineConfig {
            makestep: KATA_MAKESTEP,
            ..DisciplineConfig::default()
        },
        0.0,
    );
    discipline.set_poll_interval(1.0);
    // Nothing to release before the first update.
    discipline.release(&mut clock).unwrap();
    assert!(clock.frequency_changes().is_empty());
    let sample = clock.sample(1e-8);
    discipline.update(&mut clock, sample).unwrap();
    let slew = discipline.status().slew.unwrap();
    assert_close(slew.rate_ppm, DEFAULT_MAX_SLEW_RATE_PPM, 1e-6, "rate");
    assert_eq!(discipline.slew_deadline(), Some(slew.end));
    // At 1/12 s/s, which runs the monotonic clock fast too: 1/13 of the
    // offset closes per monotonic second.
    assert_close(
        slew.end - clock.monotonic(),
        0.3 * (1.0 + 1.0 / 12.0) * 12.0,
        1e-3,
        "duration",
    );
    assert_close(slew.remaining(clock.monotonic()), 0.3, 1e-4, "remaining");
    // Not yet.
    clock.advance_monotonic_to(slew.end - 0.5);
    assert!(!discipline.end_slew(&mut clock).unwrap());
    assert_close(
        slew.remaining(clock.monotonic()),
        0.5 / 13.0,
        1e-6,
        "remaining",
    );
    clock.advance_monotonic_to(slew.end);
    assert!(discipline.end_slew(&mut clock).unwrap());
    assert_eq!(discipline.slew_deadline(), None);
    assert_eq!(
        clock.applied_frequency_ppm(),
        discipline.status().frequency_ppm
    );
    assert!(clock.offset().abs() < 1e-4, "{}", clock.offset());
    assert!(!discipline.end_slew(&mut clock).unwrap());
    // A jump of 0.2 s, confirmed by two more samples 10 ms apart: slewed.
    let jump = |clock: &mut SimClock, discipline: &mut Discipline| {
        clock.jump(0.2);
        for _ in 0..3 {
            clock.advance(0.01);
            let sample = clock.sample(1e-8);
            discipline.update(clock, sample).unwrap();
        }
        assert!(discipline.status().slew.is_some());
    };
    // A new slew, then exit: back to the estimate at once.
    jump(&mut clock, &mut discipline);
    assert!(clock.applied_frequency_ppm() > 80_000.0);
    discipline.release(&mut clock).unwrap();
    assert_eq!(discipline.status().slew, None);
    assert_eq!(
        clock.applied_frequency_ppm(),
        discipline.status().frequency_ppm
    );
    // And when the source is lost.
    jump(&mut clock, &mut discipline);
    discipline.mark_unsynchronised(&mut clock).unwrap();
    assert_eq!(discipline.status().slew, None);
    assert_eq!(
        clock.applied_frequency_ppm(),
        discipline.status().frequency_ppm
    );
}

// ---------------------------------------------------------------------------
// First samples: no step without confirmation, no step to an absurd time
// ---------------------------------------------------------------------------

/// An NTP server alone (three samples must agree before a first step)
/// whose first reply lies, the next ones honest: by an hour, to 1970 and by
/// a year. The lie is never used; the honest samples set the clock.
#[test]
fn a_lying_first_ntp_sample_is_not_stepped_to() {
    for lie in [3600.0, -1.7e9, 365.0 * 86_400.0] {
        let mut sim = Sim::new(NTP16, 20.0, 2.5, KATA_MAKESTEP, 43);
        sim.discipline.set_first_step_samples(3);
        let first = sim.poll_with(|sample| sample.offset += lie).clone();
        // Held, then contradicted by the honest burst, which then agrees
        // with itself: stepped by the honest 2.5 s.
        assert_eq!(
            first.outcomes[0],
            Outcome::BurstWanted { samples: 2 },
            "{lie}"
        );
        let steps = sim.clock.steps().to_vec();
        assert_eq!(steps.len(), 1, "{lie}: {:?}", first.outcomes);
        assert_close(steps[0].step, 2.5, 1e-3, &format!("{lie}: step"));
        sim.run_until(2000.0);
        assert_eq!(sim.clock.steps().len(), 1, "{lie}");
        assert!(
            sim.clock.offset().abs() < 1e-3,
            "{lie}: {}",
            sim.clock.offset()
        );
        let status = sim.discipline.status();
        assert_eq!(status.outliers, 1, "{lie}: {status:?}");
        assert_eq!(status.refused, 0, "{lie}");
    }
}

/// A PHC's first reading is confirmed by a second one before a step.
#[test]
fn a_phc_first_sample_is_confirmed_by_a_second_reading() {
    let mut sim = Sim::new(PHC, 10.0, 5.0, KATA_MAKESTEP, 47);
    sim.discipline.set_first_step_samples(2);
    let first = sim.poll().clone();
    assert_eq!(first.outcomes[0], Outcome::BurstWanted { samples: 1 });
    assert_close(assert_stepped(&first.outcomes[1]), 5.0, 1e-5, "step");
    assert_eq!(first.outcomes.len(), 2);
    // A first reading the second does not confirm is dropped.
    let mut sim = Sim::new(PHC, 10.0, 5.0, KATA_MAKESTEP, 47);
    sim.discipline.set_first_step_samples(2);
    let first = sim.poll_with(|sample| sample.offset = -1.7e9).clone();
    assert_eq!(first.outcomes[0], Outcome::BurstWanted { samples: 1 });
    assert_eq!(first.outcomes[1], Outcome::BurstWanted { samples: 1 });
    assert_close(assert_stepped(&first.outcomes[2]), 5.0, 1e-5, "step");
    assert_eq!(sim.discipline.status().outliers, 1);
}

/// A source that keeps lying agrees with itself: what stops it is the
/// earliest sane time (the build's) and `timesync.max_step=`. Refused
/// steps touch nothing, and are refused again at every new attempt.
#[test]
fn steps_before_the_build_or_beyond_max_step_are_refused() {
    let floor = 1_704_067_200.0; // what the daemon uses at least
    let cases = [
        (-1.7e9, None, true),
        (3600.0, None, false),
        (3600.0, Some(1000.0), true),
        (365.0 * 86_400.0, Some(86_400.0), true),
        (-3600.0, Some(3600.5), false),
    ];
    for (lie, max_step, refused) in cases {
        let mut sim = Sim::new(NTP16, 0.0, 0.0, KATA_MAKESTEP, 53);
        sim.discipline = Discipline::new(
            DisciplineConfig {
                makestep: KATA_MAKESTEP,
                min_time: floor,
                max_step,
                ..DisciplineConfig::default()
            },
            0.0,
        );
        sim.discipline.set_first_step_samples(3);
        sim.discipline.set_poll_interval(NTP16.interval);
        sim.lie = lie;
        let first = sim.poll().clone();
        let what = format!("{lie} s, max_step {max_step:?}");
        let last = *first.outcomes.last().unwrap();
        if refused {
            assert!(
                matches!(last, Outcome::Refused { .. }),
                "{what}: {:?}",
                first.outcomes
            );
            assert!(sim.clock.steps().is_empty(), "{what}");
            assert!(sim.clock.frequency_changes().is_empty(), "{what}");
            let again = sim.poll().clone();
            assert!(
                matches!(again.outcomes.last(), Some(Outcome::Refused { .. })),
                "{what}: {:?}",
                again.outcomes
            );
            assert_eq!(sim.discipline.status().refused, 2, "{what}");
            assert!(!sim.discipline.status().synchronised, "{what}");
        } else {
            assert_close(assert_stepped(&last), lie, 1e-3, &what);
        }
    }
    // The reasons name the limit.
    let text = timesync::discipline::Refusal::BeyondMaxStep { max_step: 1000.0 }.to_string();
    assert!(text.contains("timesync.max_step=1000"), "{text}");
    let text = timesync::discipline::Refusal::BeforeMinTime { min_time: floor }.to_string();
    assert!(text.contains("1704067200"), "{text}");
}
