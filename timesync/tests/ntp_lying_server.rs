//! timesync's NTP client against the test's own NTP server on loopback,
//! which lies about the time by a known offset or sends bad replies.

mod ntp_support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ntp_support::{best_of_3, lowest_delay, reply, run_loop, Behaviour, FakeNtpServer};
use timesync::config::DEFAULT_POLL_TARGET;
use timesync::ntp::{
    measure_once, monotonic_now, NtpError, NtpServer, PollConfig, Rejection, ServerStatus,
};

const FAST: PollConfig = PollConfig {
    minpoll: -4,
    maxpoll: -3,
    iburst: false,
    polltarget: DEFAULT_POLL_TARGET,
};

#[test]
fn measures_known_offsets() {
    for offset in [0.25, -3.0, 1234.5, -86400.0 * 365.0] {
        let server = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(offset));
        let m = best_of_3(|| measure_once(server.addr, Duration::from_secs(2)).unwrap());
        assert!((m.offset - offset).abs() < 1e-3, "{offset}: {m:?}");
        assert!(m.delay < 0.01, "{m:?}");
        assert_eq!(m.stratum, 2);
        assert_eq!(&m.reference_id, b"TEST");
    }
}

#[test]
fn measures_over_ipv6() {
    let server = FakeNtpServer::start("[::1]:0", Behaviour::Offset(0.5));
    let m = best_of_3(|| measure_once(server.addr, Duration::from_secs(2)).unwrap());
    assert!((m.offset - 0.5).abs() < 1e-3, "{m:?}");
}

#[test]
fn state_machine_follows_a_lying_server() {
    let fake = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.25));
    let mut server = NtpServer::new("liar", fake.addr, FAST, monotonic_now()).unwrap();
    let samples = run_loop(&mut server, 5.0, |s, _| s.counters().accepted >= 5);
    assert!(!samples.is_empty());
    for sample in &samples {
        // The true offset lies within half the delay of the measured one.
        assert!(
            (sample.offset - 0.25).abs() <= sample.delay / 2.0 + 1e-4,
            "{sample:?}"
        );
        // Root dispersion 0x40/65536 s, root delay 0.
        assert!((sample.root_distance - 0.0009765625).abs() < 1e-9);
    }
    let best = lowest_delay(&samples);
    assert!((best.offset - 0.25).abs() < 1e-3, "{best:?}");
    // The server jumps by 3 s: samples follow. The filter may still hand
    // out one low-delay sample taken before the jump and not used yet (as
    // ntpd's and chrony's lowest-delay filters do); on a loaded machine
    // that can be the only sample of the first replies, so wait for the
    // new offset, 5 s at most.
    fake.set(Behaviour::Offset(-3.0));
    let accepted = server.counters().accepted;
    let samples = run_loop(&mut server, 5.0, |s, samples| {
        s.counters().accepted >= accepted + 3
            && samples.last().is_some_and(|l| (l.offset + 3.0).abs() < 0.1)
    });
    let last = samples.last().unwrap();
    assert!(
        (last.offset + 3.0).abs() <= last.delay / 2.0 + 1e-4,
        "{samples:?}"
    );
}

#[test]
fn kiss_rate_backs_off() {
    let fake = FakeNtpServer::start("127.0.0.1:0", Behaviour::Kiss(*b"RATE"));
    let mut server = NtpServer::new("rate", fake.addr, FAST, monotonic_now()).unwrap();
    assert_eq!(server.poll_exponent(), -4);
    run_loop(&mut server, 5.0, |s, _| s.counters().kiss_rate >= 2);
    assert_eq!(server.counters().kiss_rate, 2);
    // Each RATE doubled the interval, beyond maxpoll.
    assert_eq!(server.poll_exponent(), -2);
    assert_eq!(server.poll_interval(), 0.25);
    let now = monotonic_now();
    assert!(server.next_deadline() > now + 0.1, "not polling at once");
    assert_eq!(server.status(), ServerStatus::Active);
    // A good reply after that does not undo the backoff below the floor.
    fake.set(Behaviour::Offset(0.0));
    run_loop(&mut server, 5.0, |s, _| s.counters().accepted >= 2);
    assert!(server.poll_exponent() >= -2);
    // measure_once reports the kiss.
    fake.set(Behaviour::Kiss(*b"RATE"));
    match measure_once(fake.addr, Duration::from_secs(2)) {
        Err(NtpError::Kiss { kiss, .. }) => assert_eq!(kiss, Rejection::KissRate),
        other => panic!("{other:?}"),
    }
}

#[test]
fn kiss_deny_and_rstr_stop_the_server() {
    for (code, rejection) in [
        (*b"DENY", Rejection::KissDeny),
        (*b"RSTR", Rejection::KissRstr),
    ] {
        let fake = FakeNtpServer::start("127.0.0.1:0", Behaviour::Kiss(code));
        let mut server = NtpServer::new("deny", fake.addr, FAST, monotonic_now()).unwrap();
        run_loop(&mut server, 5.0, |s, _| s.status() != ServerStatus::Active);
        assert_eq!(server.status(), ServerStatus::Stopped(rejection));
        assert_eq!(server.counters().rejected(rejection), 1);
        assert_eq!(server.next_deadline(), f64::INFINITY);
        let requests = server.counters().requests;
        // Nothing more is sent, whatever the loop does.
        server.on_deadline(monotonic_now() + 1000.0);
        run_loop(&mut server, 0.3, |_, _| false);
        assert_eq!(server.counters().requests, requests);
        assert_eq!(fake.requests(), requests as usize);
        let err = measure_once(fake.addr, Duration::from_secs(2)).unwrap_err();
        assert!(err.to_string().contains(&format!("{rejection}")), "{err}");
    }
}

/// Each bad reply: measure_once times out naming the reason, and the state
/// machine counts it, never accepting a sample.
#[test]
fn bad_replies_are_rejected_and_counted() {
    let cases = [
        (Behaviour::Short(47), Rejection::TooShort),
        (Behaviour::Short(0), Rejection::TooShort),
        (Behaviour::Edit(0.0, 0, 0b00_100_011), Rejection::WrongMode),
        (Behaviour::Edit(0.0, 0, 0b00_101_100), Rejection::BadVersion),
        (Behaviour::Edit(0.0, 25, 0x55), Rejection::WrongOrigin),
        (
            Behaviour::Edit(0.0, 0, 0b11_100_100),
            Rejection::LeapUnsynchronised,
        ),
        (
            Behaviour::Edit(0.0, 1, 16),
            Rejection::StratumUnsynchronised,
        ),
        (Behaviour::Edit(0.0, 1, 0), Rejection::KissOther),
        (Behaviour::Edit(0.0, 5, 0xff), Rejection::RootDistance),
        (Behaviour::Fill(32, 40, 0), Rejection::ZeroTimestamp),
        (Behaviour::Fill(40, 48, 0), Rejection::ZeroTimestamp),
    ];
    for (behaviour, rejection) in cases {
        let fake = FakeNtpServer::start("127.0.0.1:0", behaviour);
        let start = Instant::now();
        let err = measure_once(fake.addr, Duration::from_millis(300)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        match (&err, rejection.is_kiss()) {
            (NtpError::Kiss { kiss, .. }, true) => assert_eq!(*kiss, rejection),
            (NtpError::Timeout { last_rejection, .. }, false) => {
                assert_eq!(*last_rejection, Some(rejection), "{behaviour:?}");
                assert!(err.to_string().contains(&rejection.to_string()), "{err}");
            }
            _ => panic!("{behaviour:?}: {err:?}"),
        }
        let mut server = NtpServer::new("bad", fake.addr, FAST, monotonic_now()).unwrap();
        let samples = run_loop(&mut server, 5.0, |s, _| {
            s.counters().rejected(rejection) >= 3
        });
        assert!(samples.is_empty(), "{behaviour:?}");
        let counters = *server.counters();
        assert_eq!(
            counters.rejected(rejection),
            3,
            "{behaviour:?}: {counters:?}"
        );
        assert_eq!(counters.total_rejected(), 3, "{behaviour:?}: {counters:?}");
        assert_eq!(counters.accepted, 0);
        assert!(counters.timeouts >= 2, "{counters:?}");
        assert_eq!(server.reach(), 0);
    }
}

#[test]
fn replies_from_elsewhere_and_duplicates() {
    let fake = FakeNtpServer::start("127.0.0.1:0", Behaviour::Twice(0.0));
    let mut server = NtpServer::new("dup", fake.addr, FAST, monotonic_now()).unwrap();
    run_loop(&mut server, 5.0, |s, _| s.counters().accepted >= 3);
    let counters = *server.counters();
    // Each second copy arrives after its request was answered.
    assert!(counters.unsolicited >= 2, "{counters:?}");
    assert_eq!(counters.wrong_origin, 0, "{counters:?}");
    // A reply sent from another port, even with the right origin.
    let mut client = server.local_addr().unwrap();
    client.set_ip([127, 0, 0, 1].into());
    let intruder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let fake_request = [0u8; 48];
    intruder
        .send_to(&reply(&fake_request, 0.0), client)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(server.on_readable(monotonic_now()).is_none());
    assert_eq!(server.counters().wrong_source, 1);
    // measure_once ignores it too and times out naming it.
    let silent = FakeNtpServer::start("127.0.0.1:0", Behaviour::Silent);
    let err = measure_once(silent.addr, Duration::from_millis(200)).unwrap_err();
    assert!(
        matches!(
            err,
            NtpError::Timeout {
                last_rejection: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("no valid reply from NTP server {}", silent.addr)),
        "{err}"
    );
}

#[test]
fn random_garbage_from_the_server_never_panics() {
    // A deterministic generator: no new dependency.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let fake = FakeNtpServer::start("127.0.0.1:0", Behaviour::Offset(0.0));
    let mut now = monotonic_now();
    let mut server = NtpServer::new("garbage", fake.addr, FAST, now).unwrap();
    for _ in 0..200 {
        let index = (next() % 48) as usize;
        let value = next() as u8;
        fake.set(Behaviour::Edit(0.0, index, value));
        // A fake clock far enough ahead that a request is due every time.
        now += 1000.0;
        server.on_deadline(now);
        std::thread::sleep(Duration::from_millis(2));
        let _ = server.on_readable(now);
    }
    assert_eq!(server.counters().requests, 200);
    let counters = *server.counters();
    assert!(
        counters.accepted + counters.total_rejected() > 100,
        "{counters:?}"
    );
}
