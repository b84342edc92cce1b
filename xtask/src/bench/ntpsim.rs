//! `cargo xtask bench --ntp-sim [--out DIR]`: the NTP accuracy figures of
//! docs/timesync.md, from `timesync/tests/ntp_network.rs` (timesync's poll
//! schedule, clock filter and discipline over a modelled LAN and WAN path,
//! on the simulated clock; eight fixed seeds each).
//!
//! It runs that test (release build) with `TIMESYNC_NTP_SIM_OUT` set, so
//! the test writes each path's figures as JSON; this collects them into
//! `ntp-sim.json` beside the test's output (`ntp-sim.log`), and writes the
//! table between docs/timesync.md's `bench:ntp-sim` marks. The test's own
//! assertions (the targets) must pass for the figures to be kept.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::util::{root, Result};

/// The paths the test writes, in table order.
const PATHS: [&str; 2] = ["lan", "wan"];

pub fn main(out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| root().join("docs/bench"));
    let docs = out == root().join("docs/bench");
    let scratch = root().join("target/ntp-sim");
    // Figures of an earlier run must not pass for this one's.
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let output = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "test",
            "--release",
            "-p",
            "timesync",
            "--test",
            "ntp_network",
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TIMESYNC_NTP_SIM_OUT", &scratch)
        .output()
        .map_err(|e| format!("cargo test: {e}"))?;
    let log = String::from_utf8_lossy(&output.stdout).into_owned();
    write(&out.join("ntp-sim.log"), &log)?;
    if !output.status.success() {
        return Err(format!(
            "timesync's ntp_network test failed ({}); its output is in {}:\n{}",
            output.status,
            out.join("ntp-sim.log").display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut paths = Vec::new();
    for name in PATHS {
        let file = scratch.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("read {}: {e} (did the test write it?)", file.display()))?;
        let value: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        paths.push(value);
    }
    let results = serde_json::json!({
        "date": crate::util::today(),
        "commit": commit(),
        "command": "cargo xtask bench --ntp-sim",
        "paths": paths,
    });
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())? + "\n";
    write(&out.join("ntp-sim.json"), &json)?;
    let table = table(&results)?;
    if docs {
        super::report::splice_marked(&root().join("docs/timesync.md"), "bench:ntp-sim", &table)?;
    } else {
        write(&out.join("ntp-sim.md"), &table)?;
    }
    print!("{table}");
    Ok(())
}

/// The commit, marked when timesync's sources differ from it (the figures
/// are then not that commit's).
fn commit() -> String {
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--", "timesync"])
        .current_dir(root())
        .output()
        .map_or(true, |o| !o.status.success() || !o.stdout.is_empty());
    let commit = crate::util::commit();
    if dirty {
        format!("{commit} with uncommitted changes to timesync/")
    } else {
        commit
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn number(value: &Value, key: &str) -> Result<f64> {
    value
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| format!("ntp-sim: `{key}` missing or not a number in {value}"))
}

/// The Markdown table of `results` (what `main` writes).
fn table(results: &Value) -> Result<String> {
    let date = results.get("date").and_then(Value::as_str).unwrap_or("?");
    let commit = results.get("commit").and_then(Value::as_str).unwrap_or("?");
    let mut s = format!(
        "Run of {date} at {commit} (`cargo xtask bench --ntp-sim`; raw figures per seed in \
         [bench/ntp-sim.json](bench/ntp-sim.json), the test's output in \
         [bench/ntp-sim.log](bench/ntp-sim.log)):\n\n\
         | path | one-way delay | polls | RMS offset | max offset | mean poll interval |\n\
         |---|---|---|---:|---:|---:|\n"
    );
    let paths = results
        .get("paths")
        .and_then(Value::as_array)
        .ok_or("ntp-sim: no paths")?;
    for path in paths {
        let name = path.get("path").and_then(Value::as_str).unwrap_or("?");
        let pair = |key: &str| -> Result<(f64, f64)> {
            let v = path
                .get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("ntp-sim: `{key}` missing in {name}"))?;
            match v.as_slice() {
                [a, b] => Ok((
                    a.as_f64().unwrap_or(f64::NAN),
                    b.as_f64().unwrap_or(f64::NAN),
                )),
                _ => Err(format!("ntp-sim: `{key}` is not a pair in {name}")),
            }
        };
        let (base, jitter) = pair("up")?;
        let seeds = path
            .get("seeds")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("ntp-sim: no seeds in {name}"))?;
        let polls: Vec<f64> = seeds
            .iter()
            .map(|seed| number(seed, "mean_poll_s"))
            .collect::<Result<_>>()?;
        let mean_poll = polls.iter().sum::<f64>() / polls.len().max(1) as f64;
        let _ = writeln!(
            s,
            "| {name} | {} + {} exponential jitter, each way | {}–{} s | {:.1} µs | {:.1} µs | {mean_poll:.1} s |",
            duration(base),
            duration(jitter),
            2f64.powf(number(path, "minpoll")?),
            2f64.powf(number(path, "maxpoll")?),
            number(path, "rms_s")? * 1e6,
            number(path, "max_s")? * 1e6,
        );
    }
    let first = paths.first().ok_or("ntp-sim: no paths")?;
    let _ = writeln!(
        s,
        "\n{} s measured after {} s of warm-up, eight seeds per path; RMS over all seeds' \
         seconds, max the largest of any.",
        number(first, "measured_s")?,
        number(first, "warm_up_s")?
    );
    Ok(s)
}

fn duration(seconds: f64) -> String {
    if seconds >= 1e-3 {
        format!("{} ms", seconds * 1e3)
    } else {
        format!("{} µs", (seconds * 1e6).round())
    }
}
