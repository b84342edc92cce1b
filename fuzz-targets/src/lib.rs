//! The fuzz targets' bodies, one function per parser that reads outside
//! input. `fuzz/` (cargo-fuzz, nightly, libFuzzer) calls them with generated
//! inputs; `tests/replay.rs` here calls them with every file of the committed
//! corpora on the stable toolchain, so `cargo xtask test` replays the corpora
//! (`cargo xtask fuzz --smoke`). A target fails only by panicking, which is
//! what the fuzzer looks for: each parser must return errors, never panic.
//!
//! | target | parser | outside input |
//! |---|---|---|
//! | `unit_file` | `minos_init::unit::parse` | unit files in the image |
//! | `kernel_cmdline` | init's and agent-shim's command-line parsers | `/proc/cmdline` from the host |
//! | `timesync_config` | `timesync::config::parse_config` | `/etc/timesync.conf` |
//! | `ntp_packet` | `timesync::ntp::check_reply` | UDP replies from NTP servers |
//! | `dns_reply` | `timesync::resolve::parse_reply` | UDP replies from DNS servers |
//! | `ttrpc_frames` | agent-shim's ttRPC server (ttrpc crate's framing, protobuf decoding) | the host's bytes on vsock |

// One exception, SIGPIPE's disposition in the ttRPC harness, with its invariant.
#![deny(unsafe_code)]

pub mod ttrpc_frames;

/// A target's body: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, for the replay and for `cargo xtask fuzz`.
pub const TARGETS: [(&str, Target); 6] = [
    ("unit_file", unit_file),
    ("kernel_cmdline", kernel_cmdline),
    ("timesync_config", timesync_config),
    ("ntp_packet", ntp_packet),
    ("dns_reply", dns_reply),
    ("ttrpc_frames", ttrpc_frames::run),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// A unit file, as a service, a socket and a target.
pub fn unit_file(data: &[u8]) {
    let t = text(data);
    for (name, path) in [
        ("fuzz.service", "/etc/minos/units/fuzz.service"),
        ("fuzz.socket", "/etc/minos/units/fuzz.socket"),
    ] {
        let parsed = minos_init::unit::parse(name, path, &t);
        for d in &parsed.diagnostics {
            let _ = d.to_string();
        }
    }
    let _ = minos_init::unit::parse("fuzz.target", "/etc/minos/units/fuzz.target", &t);
}

/// The kernel command line, through both of its readers.
pub fn kernel_cmdline(data: &[u8]) {
    let t = text(data);
    let (_, problems) = minos_init::cmdline::parse(&t);
    for p in &problems {
        let _ = p.to_string();
    }
    let (_, errors) = agent_shim::cmdline::parse_cmdline(&t);
    for e in &errors {
        let _ = e.to_string();
    }
}

/// timesync's configuration file.
pub fn timesync_config(data: &[u8]) {
    let (_, diagnostics) = timesync::config::parse_config(&text(data));
    for d in &diagnostics {
        let _ = d.to_string();
    }
}

/// An NTP reply. The first byte chooses whether bytes 24..32 become the
/// request's random origin timestamp, so that the fuzzer gets past the
/// origin check (a forged reply cannot know it) to the checks behind it.
pub fn ntp_packet(data: &[u8]) {
    let Some((&first, reply)) = data.split_first() else {
        return;
    };
    let Ok(request) = timesync::ntp::Request::new(6, 1.0) else {
        return;
    };
    let mut reply = reply.to_vec();
    if first & 1 == 1 {
        if let Some(origin) = reply.get_mut(24..32) {
            origin.copy_from_slice(&request.nonce());
        }
    }
    let _ = timesync::ntp::check_reply(&reply, &request, std::time::SystemTime::now(), 2.0);
}

/// A DNS reply to the query for `time.example.` (A or AAAA, from the first
/// byte); the query id is patched in so the parser gets past it.
pub fn dns_reply(data: &[u8]) {
    let Some((&first, message)) = data.split_first() else {
        return;
    };
    let mut message = message.to_vec();
    if let Some(id) = message.get_mut(..2) {
        id.copy_from_slice(&0x1234u16.to_be_bytes());
    }
    let qtype = if first & 1 == 1 { 28 } else { 1 };
    let _ = timesync::resolve::parse_reply(&message, 0x1234, b"\x04time\x07example\x00", qtype);
}
