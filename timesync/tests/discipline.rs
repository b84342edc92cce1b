//! The clock discipline on the simulated clock: convergence, jumps,
//! outliers, makestep, invalid input.

use timesync::clock::{Clock, Sample};
use timesync::config::{MakeStep, StepLimit};
use timesync::discipline::{Discipline, DisciplineConfig, Outcome, Rejection};
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
        }
    }

    /// Feeds `sample`, then a burst of fresh samples for as long as asked.
    fn feed(&mut self, sample: Sample) -> Vec<Outcome> {
        let mut outcomes = vec![self.discipline.update(&mut self.clock, sample).unwrap()];
        while let Some(Outcome::BurstWanted { samples }) = outcomes.last() {
            assert!((1..=2).contains(samples), "{outcomes:?}");
            assert!(outcomes.len() <= 5, "burst does not end: {outcomes:?}");
            self.clock.advance(self.source.burst_spacing);
            let sample = self.clock.sample(self.source.noise);
            outcomes.push(self.discipline.update(&mut self.clock, sample).unwrap());
        }
        outcomes
    }

    /// Waits for the next regular sample; `tamper` may change it.
    fn poll_with(&mut self, tamper: impl FnOnce(&mut Sample)) -> &Poll {
        self.clock
            .advance(self.next_regular - self.clock.true_time());
        self.next_regular += self.source.interval;
        let time = self.clock.true_time();
        let offset_before = self.clock.offset();
        let mut sample = self.clock.sample(self.source.noise);
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
                change.requested_ppm.abs() <= 500.0,
                "frequency {} requested",
                change.requested_ppm
            );
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

/// 0.5 s without makestep is slewed at the 500 ppm limit: the offset closes
/// at 600 ppm when the clock is 100 ppm fast (it then gains on its own)
/// and at 400 ppm when it is 100 ppm slow, so < 1 ms cannot come before
/// 832 s and 1248 s. Measured: 833 s and 1248 s to < 1 ms, 15–16 s more to
/// < 10 µs, then within 0.8 µs; frequency error 0.008 ppm.
#[test]
fn phc_slews_half_a_second_at_the_frequency_limit() {
    for (ppm, earliest, latest) in [(100.0, 832.0, 880.0), (-100.0, 1248.0, 1300.0)] {
        let mut sim = Sim::new(PHC, ppm, 0.5, None, 7);
        sim.run_until(200.0);
        // Still far away: slewing at the limit, in the right direction.
        assert_eq!(sim.clock.applied_frequency_ppm(), 500.0);
        sim.run_until(2500.0);
        let to_1ms = sim.settled(1e-3).unwrap();
        let to_10us = sim.settled(1e-5).unwrap();
        assert!(
            (earliest..=latest).contains(&to_1ms),
            "{ppm} ppm: < 1 ms after {to_1ms} s"
        );
        assert!(
            to_10us - to_1ms <= 30.0,
            "{ppm} ppm: < 10 µs after {to_10us} s"
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

/// The same over NTP every 64 s with 100 µs of noise. Measured: < 1 ms
/// after 1728 s (+100 ppm) and 2048 s (−100 ppm), < 100 µs 384 s later,
/// then within 34 µs; frequency error 0.005 ppm.
#[test]
fn ntp_slews_half_a_second() {
    for (ppm, earliest, latest) in [(100.0, 832.0, 1900.0), (-100.0, 1248.0, 2250.0)] {
        let mut sim = Sim::new(NTP, ppm, 0.5, None, 7);
        sim.run_until(20_000.0);
        let to_1ms = sim.settled(1e-3).unwrap();
        let to_100us = sim.settled(1e-4).unwrap();
        assert!(
            (earliest..=latest).contains(&to_1ms),
            "{ppm} ppm: < 1 ms after {to_1ms} s"
        );
        assert!(
            to_100us - to_1ms <= 640.0,
            "{ppm} ppm: < 100 µs after {to_100us} s"
        );
        assert!(sim.worst_offset_since(10_000.0) < 60e-6);
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
/// falls from 3.8 ms to < 20 µs in 16 polls without changing sign.
#[test]
fn iburst_without_poll_interval_does_not_overshoot() {
    let mut clock = SimClock::new(100.0, 0.004, 5);
    clock.set_delay(NTP.delay);
    let mut discipline = Discipline::new(DisciplineConfig::default(), 0.0);
    let mut offsets = Vec::new();
    for i in 0..40 {
        clock.advance(if i < 4 { 2.0 } else { 64.0 });
        offsets.push(clock.offset());
        let sample = clock.sample(NTP.noise);
        assert_slewed(&discipline.update(&mut clock, sample).unwrap());
    }
    assert!(offsets.iter().all(|offset| *offset > -60e-6), "{offsets:?}");
    assert!(offsets[20..].iter().all(|o| o.abs() < 60e-6), "{offsets:?}");
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

/// Without makestep a confirmed jump is slewed at the 500 ppm limit, and
/// the samples that follow are not taken for new jumps.
#[test]
fn jump_without_makestep_is_slewed_at_the_limit() {
    for (ppm, rate) in [(100.0, 600e-6), (-100.0, 400e-6)] {
        let mut sim = Sim::new(PHC, ppm, 0.0, None, 5);
        sim.run_until(300.0);
        sim.clock.jump(2.0);
        let poll = sim.poll().clone();
        assert_eq!(poll.outcomes[..2], BURST_THEN);
        let (offset, frequency) = assert_slewed(&poll.outcomes[2]);
        assert_close(offset, 2.0, 5e-6, "offset");
        assert_eq!(frequency, 500.0);
        let start = (sim.clock.true_time(), sim.clock.offset());
        sim.run_until(poll.time + 200.0);
        let polls = sim.polls.iter().filter(|p| p.time > poll.time);
        for later in polls {
            assert!(
                matches!(later.outcomes[..], [Outcome::Slewed { frequency_ppm, .. }] if frequency_ppm == 500.0),
                "{later:?}"
            );
        }
        let closed = start.1 - sim.clock.offset();
        let expected = (sim.clock.true_time() - start.0) * rate;
        assert_close(closed, expected, expected * 0.01, "offset slewed away");
        let status = sim.discipline.status();
        assert_eq!((status.jumps, status.steps), (1, 0));
        assert!(sim.clock.steps().is_empty());
        assert!(
            sim.frequency_error().abs() < 0.5,
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
        // The offset the regular sample will see.
        let expected = sim.clock.offset() - 600e-6;
        let poll = sim.poll().clone();
        assert_eq!(poll.outcomes[..2], BURST_THEN);
        assert_eq!(sim.discipline.status().updates, jump_before);
        if stepped {
            assert_close(assert_stepped(&poll.outcomes[2]), expected, 20e-6, "step");
            assert_eq!(sim.clock.steps().len(), 1);
        } else {
            let (offset, frequency) = assert_slewed(&poll.outcomes[2]);
            assert_close(offset, expected, 20e-6, "offset");
            assert_eq!(frequency, 500.0);
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
            assert!((sim.clock.offset() - 5.0).abs() < 0.011);
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
            assert!(status.applied_frequency_ppm.abs() <= 500.0, "{status:?}");
        }
        sim.assert_frequencies_within_limit();
        assert!(sim.clock.steps().iter().all(|step| step.step.is_finite()));
        // Every path was taken.
        let status = sim.discipline.status();
        assert!(status.rejected > 2000 && status.outliers > 50, "{status:?}");
        assert!(status.updates > 100, "{status:?}");
        assert!(outcomes
            .iter()
            .any(|o| matches!(o, Outcome::OutlierDropped { .. })));
        if makestep.is_some() {
            assert!(status.steps > 100, "{status:?}");
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
    assert_eq!(
        DisciplineConfig {
            makestep: None,
            ..discipline_config
        },
        DisciplineConfig::default()
    );
    let wild = DisciplineConfig {
        makestep: None,
        max_frequency_ppm: 1e9,
        correction_time_ratio: f64::NAN,
        jump_floor: -1.0,
        jump_sigmas: 0.0,
        confirmations: 0,
        max_samples: 0,
    };
    let sanitised = *Discipline::new(wild, f64::NAN).config();
    assert_eq!(
        sanitised,
        DisciplineConfig {
            max_frequency_ppm: 500.0,
            confirmations: 1,
            max_samples: 4,
            ..DisciplineConfig::default()
        }
    );
    let discipline = Discipline::new(DisciplineConfig::default(), 1e6);
    assert_eq!(discipline.status().frequency_ppm, 500.0);
}

/// A smaller frequency limit is honoured for the whole slew.
#[test]
fn max_frequency_is_configurable() {
    let mut clock = SimClock::new(0.0, 0.5, 47);
    let config = DisciplineConfig {
        max_frequency_ppm: 100.0,
        ..DisciplineConfig::default()
    };
    let mut discipline = Discipline::new(config, 0.0);
    discipline.set_poll_interval(1.0);
    for _ in 0..100 {
        clock.advance(1.0);
        let sample = clock.sample(1e-6);
        discipline.update(&mut clock, sample).unwrap();
    }
    assert!(clock
        .frequency_changes()
        .iter()
        .all(|change| change.requested_ppm == 100.0));
    // Slewing from the first update, at t = 1 s.
    assert_close(clock.offset(), 0.5 - 99.0 * 100e-6, 1e-6, "offset");
}
