//! `stamp FILE [--rss] [PROGRAM ARGS...]`: writes CLOCK_MONOTONIC (ns) to
//! FILE, then execs PROGRAM. With `--rss` it also writes PID 1's VmRSS (KiB,
//! from /proc/1/status). The PID 1 benchmark (`cargo xtask bench --pid1`)
//! puts one in front of the PID 1 under test and one as its child: the
//! difference is exec of PID 1 → exec of its child, and the RSS is PID 1's
//! while its child runs.

#![forbid(unsafe_code)]

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let ns = i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec);
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next() else {
        eprintln!("usage: stamp FILE [--rss] [PROGRAM ARGS...]");
        return ExitCode::from(2);
    };
    let mut rest: Vec<String> = args.collect();
    let mut line = ns.to_string();
    if rest.first().map(String::as_str) == Some("--rss") {
        rest.remove(0);
        let rss = std::fs::read_to_string("/proc/1/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next().map(str::to_string))
            })
            .unwrap_or_else(|| "unknown".into());
        line.push(' ');
        line.push_str(&rss);
    }
    if let Err(e) = std::fs::write(&file, line + "\n") {
        eprintln!("stamp: write {file}: {e}");
        return ExitCode::FAILURE;
    }
    match rest.split_first() {
        None => ExitCode::SUCCESS,
        Some((program, args)) => {
            let err = Command::new(program).args(args).exec();
            eprintln!("stamp: exec {program}: {err}");
            ExitCode::FAILURE
        }
    }
}
