//! timesync's NTP client against Debian's chronyd, started by the test as
//! an NTP server on 127.0.0.1 (a high port, its own configuration in a
//! temporary directory). chronyd runs with `-x`: it never touches this
//! machine's clock. Its clock is ours, so every offset must be ~0.

mod ntp_support;

use std::time::Duration;

use ntp_support::{best_of_3, lowest_delay, run_loop, start_chronyd};
use timesync::config::DEFAULT_POLL_TARGET;
use timesync::ntp::{measure_once, monotonic_now, Leap, NtpServer, PollConfig, ServerStatus};

#[test]
fn measure_once_against_chronyd() {
    let chronyd = start_chronyd("once");
    // The lowest-delay of three, as a client's clock filter would take.
    let m = best_of_3(|| measure_once(chronyd.addr, Duration::from_secs(2)).unwrap());
    assert!(m.offset.abs() < 1e-3, "{m:?}");
    assert!(m.delay >= 0.0 && m.delay < 0.01, "{m:?}");
    assert_eq!(m.stratum, 8, "local stratum 8");
    assert_eq!(m.leap, Leap::None);
    assert!(m.root_distance() < 1.0, "{m:?}");
}

#[test]
fn state_machine_against_chronyd() {
    let chronyd = start_chronyd("poll");
    let config = PollConfig {
        minpoll: -3,
        maxpoll: -2,
        iburst: false,
        polltarget: DEFAULT_POLL_TARGET,
    };
    let mut server = NtpServer::new("chronyd", chronyd.addr, config, monotonic_now()).unwrap();
    let samples = run_loop(&mut server, 10.0, |server, _| {
        server.counters().accepted >= 8
    });
    let counters = *server.counters();
    assert!(counters.accepted >= 8, "{counters:?}");
    assert_eq!(counters.total_rejected(), 0, "{counters:?}");
    assert_eq!(server.status(), ServerStatus::Active);
    assert_eq!(server.reach() & 1, 1, "reach {:o}", server.reach());
    assert!(!samples.is_empty());
    for sample in &samples {
        // chronyd's clock is ours: zero within half the delay.
        assert!(
            sample.offset.abs() <= sample.delay / 2.0 + 1e-4,
            "{sample:?}"
        );
        assert!(sample.delay >= 0.0 && sample.delay < 0.01, "{sample:?}");
        assert!(sample.root_distance < 1.0, "{sample:?}");
    }
    let best = lowest_delay(&samples);
    assert!(best.offset.abs() < 1e-3, "{best:?}");
    // Samples are in time order and none is used twice.
    assert!(samples.windows(2).all(|w| w[0].monotonic < w[1].monotonic));
    // Consistent samples raised the interval from minpoll to maxpoll.
    assert_eq!(server.poll_exponent(), -2);
}
