//! `cargo xtask`: the project's one entry point for building and checking.
//!
//! - `cargo xtask build`  static release binaries, checked static, sizes printed
//! - `cargo xtask dist`   the release tarball, its SHA256SUMS and install.sh
//! - `cargo xtask test`   what CI runs: packages, fmt, clippy, every test, budgets
//! - `cargo xtask demo`   build, then boot the mini-OS in QEMU (`--container`: as a container)
//! - `cargo xtask spec`   measure init's size and RSS (docs/SPECIFICATION.md)
//! - `cargo xtask kernel` build (or take from the cache) the guest kernel flavours
//! - `cargo xtask bench`  boot benchmarks against other guest userlands (docs/BENCHMARKS.md)
//! - `cargo xtask soak`   100 boots writing to a data disk, 10-minute fuzz runs (docs/soak.md)
//!
//! `cargo xtask --help` and `cargo xtask COMMAND --help` list the rest ([`cli`]).

mod bench;
mod cli;
mod container;
mod demo;
mod dist;
#[cfg(test)]
mod docs_check;
mod elf;
mod fuzz;
mod image;
mod kata;
mod kernel;
mod measure;
mod order;
mod qemu;
mod soak;
mod util;
mod vmtest;
mod vsock;

use std::process::ExitCode;

use util::{cargo, ensure_packages, Result};

fn main() -> ExitCode {
    use clap::Parser;
    use cli::Command;
    let cli = cli::Cli::parse();
    let r = match cli.command {
        Command::Build => build().map(|_| ()),
        Command::Dist => dist::main(),
        Command::Test => test(),
        Command::Demo { container } => demo::run(container),
        Command::Kernel { flavour } => kernel::main(flavour.as_deref()),
        Command::Image(args) => image::main(&args),
        Command::Boot(args) => qemu::main(&args),
        Command::Vmtest { name } => build().and_then(|_| vmtest::run(name.as_deref())),
        Command::Bench(args) => bench::main(&args),
        Command::Fuzz(args) => fuzz::main(&args),
        Command::Soak {
            boots,
            fuzz_seconds,
            record,
        } => build().and_then(|_| soak::main(boots, fuzz_seconds, record)),
        Command::BootOrder { seconds, check } => order::main(seconds, check),
        Command::Spec { check, record } => measure::spec(check, record),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shipped binaries.
pub const BINARIES: [&str; 4] = ["init", "timesync", "agent-shim", "busd"];

/// Builds the release binaries and checks that each is static.
fn build() -> Result<std::path::PathBuf> {
    cargo(&["build", "--release", "--workspace", "--bins"])?;
    let dir = util::release_dir();
    for b in BINARIES {
        let path = dir.join(b);
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if !util::is_static(&path)? {
            return Err(format!(
                "{} is dynamically linked (has PT_INTERP)",
                path.display()
            ));
        }
        println!("xtask: {:<40} static, {:>9} bytes", path.display(), size);
    }
    Ok(dir)
}

/// What CI runs.
fn test() -> Result<()> {
    ensure_packages(&[
        ("unshare", "util-linux"),
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("losetup", "mount"),
        // The fstab container test finds an EROFS image by its UUID.
        ("mkfs.erofs", "erofs-utils"),
        ("cpio", "cpio"),
        // timesync's tests run chronyd as an NTP server on loopback.
        ("chronyd", "chrony"),
        // busd's test with a bus daemon (an osbuilder rootfs's dbus.socket).
        ("dbus-daemon", "dbus"),
    ])?;
    util::step("rustfmt", || cargo(&["fmt", "--all", "--", "--check"]))?;
    util::step("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    // The integration tests run the real binaries: build them first.
    util::step("build (dev)", || cargo(&["build", "--workspace", "--bins"]))?;
    // Tests that need root skip themselves in the fast tier (`cargo test`
    // as a user); here they must run, and fail if they cannot.
    std::env::set_var("MINOS_REQUIRE_ROOT", "1");
    util::step("tests", || cargo(&["test", "--workspace"]))?;
    util::step("fuzz corpora replay", fuzz::smoke)?;
    util::step("release build", || build().map(|_| ()))?;
    util::step(
        "init's boot-path order still matches its boot (ptrace)",
        || order::main(3, true),
    )?;
    util::step("VM boot tests (QEMU, test kernel)", || vmtest::run(None))?;
    util::step("soak, short (3 boots writing to one data disk)", || {
        soak::main(3, 0, false)
    })?;
    util::step("budgets", || measure::spec(true, false))?;
    util::step(
        "bench pipeline (quick: minos and the agent as init)",
        bench::quick,
    )?;
    println!("xtask: all checks passed");
    Ok(())
}
