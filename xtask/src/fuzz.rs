//! `cargo xtask fuzz --smoke | --run TARGET [--seconds N] | --all [--seconds N]`.
//!
//! - `--smoke` (part of `cargo xtask test`): replays every committed corpus
//!   file of every target on the stable toolchain (fuzz-targets/tests/replay.rs).
//! - `--run TARGET`, `--all`: cargo-fuzz (libFuzzer, nightly toolchain; cargo-fuzz
//!   installed once under ~/.cache/minos/tools) for N seconds each (default
//!   600), growing fuzz/corpus/TARGET. A finding stops the run and leaves the
//!   input in fuzz/artifacts/TARGET; fix it and add the input to the corpus as
//!   a regression case.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{cargo, root, run, Result};

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> Result<PathBuf> {
    let tools = crate::kernel::cache_dir().join("tools");
    let bin = tools.join("bin/cargo-fuzz");
    if bin.exists() {
        return Ok(bin);
    }
    println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (cargo install, once)");
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo_bin)
        .args([
            "install",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
            "--root",
        ])
        .arg(&tools)
        .arg("cargo-fuzz")
        .current_dir(std::env::temp_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET"))?;
    Ok(bin)
}

/// One libFuzzer run's figures.
#[derive(Debug, Clone)]
pub struct Run {
    pub target: String,
    pub seconds: u64,
    /// `stat::number_of_executed_units`.
    pub executions: u64,
    /// Files in fuzz/corpus/TARGET afterwards.
    pub corpus_files: usize,
}

/// Runs `target` for `seconds`; its output streams through, the final
/// statistics are parsed from it. A finding fails the run.
pub fn run_target(target: &str, seconds: u64) -> Result<Run> {
    use std::io::BufRead;

    let bin = cargo_fuzz()?;
    let dir = root().join("fuzz");
    let corpus = dir.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).map_err(|e| format!("create {}: {e}", corpus.display()))?;
    println!("xtask: fuzz {target} for {seconds} s");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"])
        .arg(&bin)
        .args([
            "fuzz",
            "run",
            "--target",
            "x86_64-unknown-linux-gnu",
            target,
        ])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        // ttrpc_frames: its health check runs the client with a timeout on
        // a thread of its own, which a slow answer leaves behind; LeakSanitizer
        // reports those live threads' memory when the process exits (libFuzzer's
        // flag and ASan's both, the latter for the check at exit). Memory
        // growth is still caught by libFuzzer's RSS limit.
        .args((target == "ttrpc_frames").then_some("-detect_leaks=0"))
        .current_dir(&dir)
        // ASan keeps freed memory in quarantine (256 MiB by default, per
        // thread cache on top); the ttRPC target's server threads filled
        // libFuzzer's 2 GiB RSS limit with it while live memory was 28 MB.
        .env(
            "ASAN_OPTIONS",
            if target == "ttrpc_frames" {
                "quarantine_size_mb=32:thread_local_quarantine_size_kb=64:detect_leaks=0"
            } else {
                "quarantine_size_mb=32:thread_local_quarantine_size_kb=64"
            },
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .stderr(std::process::Stdio::piped());
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("run {shown}: {e}"))?;
    let mut executions = None;
    if let Some(err) = child.stderr.take() {
        // Bytes, not UTF-8 lines: libFuzzer prints inputs too, and stopping
        // at one would close the pipe under it.
        let mut reader = std::io::BufReader::new(err);
        let mut raw = Vec::new();
        while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end();
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse().ok();
            }
            raw.clear();
        }
    }
    let status = child.wait().map_err(|e| format!("wait for {shown}: {e}"))?;
    if !status.success() {
        return Err(format!(
            "fuzz target {target} failed ({status}): a build error above, or a finding \
             saved in fuzz/artifacts/{target}"
        ));
    }
    let corpus_files = std::fs::read_dir(&corpus)
        .map_err(|e| format!("{}: {e}", corpus.display()))?
        .count();
    Ok(Run {
        target: target.to_owned(),
        seconds,
        executions: executions.ok_or(format!("{target}: no final statistics in the output"))?,
        corpus_files,
    })
}

pub fn main(args: &crate::cli::FuzzArgs) -> Result<()> {
    if args.smoke {
        return smoke();
    }
    if let Some(target) = &args.run {
        return run_target(target, args.seconds).map(|r| println!("xtask: {r:?}"));
    }
    for t in TARGETS {
        println!("xtask: {:?}", run_target(t, args.seconds)?);
    }
    Ok(())
}

/// Replays every corpus and the crash regressions (`fuzz --smoke`).
pub fn smoke() -> Result<()> {
    cargo(&[
        "test",
        "--package",
        "minos-fuzz-targets",
        "--test",
        "replay",
    ])
}

/// The targets (fuzz/fuzz_targets/*.rs, fuzz-targets/src/lib.rs).
pub const TARGETS: [&str; 6] = [
    "unit_file",
    "kernel_cmdline",
    "timesync_config",
    "ntp_packet",
    "dns_reply",
    "ttrpc_frames",
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_target_has_a_cargo_fuzz_binary_and_a_corpus() {
        let root = crate::util::root();
        let mut files: Vec<String> = std::fs::read_dir(root.join("fuzz/fuzz_targets"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().replace(".rs", ""))
            .collect();
        files.sort();
        let mut names: Vec<String> = super::TARGETS.iter().map(|t| t.to_string()).collect();
        names.sort();
        assert_eq!(files, names);
        let lib = std::fs::read_to_string(root.join("fuzz-targets/src/lib.rs")).unwrap();
        for t in super::TARGETS {
            assert!(
                lib.contains(&format!("(\"{t}\", ")),
                "{t} missing from fuzz-targets"
            );
            assert!(
                root.join("fuzz/corpus").join(t).is_dir(),
                "no corpus for {t}"
            );
        }
    }
}
