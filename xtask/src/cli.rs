//! xtask's command line (clap): one subcommand per command, each option
//! declared once with its help, so that `cargo xtask COMMAND --help` lists
//! them all and a misspelt command, option or value is refused with
//! clap's suggestion instead of being ignored.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The kernel flavours (`kernel-config/`).
const FLAVOURS: [&str; 3] = crate::kernel::FLAVOURS;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "minos's one entry point for building, testing and measuring",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Static release binaries, checked static, sizes printed
    Build,
    /// The release tarball, its SHA256SUMS and install.sh (target/dist)
    Dist,
    /// What CI runs: packages, fmt, clippy, every test, VM tests, budgets, the quick bench
    Test,
    /// Build, then boot the mini-OS in QEMU and show it working
    Demo {
        /// Run the mini-OS as a container (init as PID 1 of namespaces) instead
        #[arg(long)]
        container: bool,
    },
    /// Measure init's size and RSS against docs/SPECIFICATION.md's budgets
    Spec {
        /// Fail when a budget is missed
        #[arg(long)]
        check: bool,
        /// Write the figures into docs/SPECIFICATION.md and docs/spec/spec.log
        #[arg(long)]
        record: bool,
    },
    /// Build the guest kernels (or take them from ~/.cache/minos)
    Kernel {
        /// Only this flavour (default: all three)
        #[arg(long, value_parser = FLAVOURS)]
        flavour: Option<String>,
    },
    /// Build a guest image
    Image(ImageArgs),
    /// Boot an image in QEMU and report the boot
    Boot(BootArgs),
    /// The VM boot tests (QEMU, test kernel)
    Vmtest {
        /// Only this scenario (default: all)
        #[arg(value_parser = crate::vmtest::names())]
        name: Option<String>,
    },
    /// Boot benchmarks against other guest userlands (docs/BENCHMARKS.md)
    Bench(BenchArgs),
    /// The fuzz targets: replay the corpora, or fuzz
    Fuzz(FuzzArgs),
    /// Boots writing to a data disk and fuzz runs (docs/soak.md)
    Soak {
        /// Boots to run
        #[arg(long, default_value_t = 100)]
        boots: u64,
        /// Seconds of fuzzing per target (0: none)
        #[arg(long, default_value_t = 600)]
        fuzz_seconds: u64,
        /// Write the results into docs/soak.md and docs/soak/
        #[arg(long)]
        record: bool,
    },
    /// Check the boot-path functions' order in init's binary (the DAX page)
    BootOrder {
        /// Seconds of tracing
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Fail when the order is not the one init/build.rs laid out
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Image kind
    #[arg(long, default_value = "initrd", value_parser = ["initrd", "disk", "dax"])]
    pub kind: String,
    /// The agent binary to put in the image (default: agent-shim)
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// A base rootfs directory to build on (e.g. osbuilder's)
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Root file system of disk and DAX images
    #[arg(long, default_value = "ext4", value_parser = ["ext4", "erofs"])]
    pub fs: String,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Image kind
    #[arg(long, default_value = "dax", value_parser = ["initrd", "disk", "dax"])]
    pub kind: String,
    /// Kernel flavour (ignored with --kernel)
    #[arg(long, default_value = "test", value_parser = FLAVOURS)]
    pub flavour: String,
    /// A kernel image to boot instead of a flavour's
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Root file system
    #[arg(long, default_value = "ext4", value_parser = ["ext4", "erofs"])]
    pub fs: String,
    /// QEMU machine
    #[arg(long, default_value = "q35", value_parser = ["q35", "microvm"])]
    pub machine: String,
    /// Extra kernel command line
    #[arg(long, default_value = "agent.exit_after=2s")]
    pub cmdline: String,
    /// No host↔guest vsock (no health check)
    #[arg(long)]
    pub no_vsock: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// minos and the agent as init on the test kernel, once each (what `test` runs)
    #[arg(long)]
    pub quick: bool,
    /// Fail when a budget is missed
    #[arg(long)]
    pub check: bool,
    /// Systems to boot, comma-separated (default: all)
    #[arg(long, value_delimiter = ',', value_parser = crate::bench::systems::System::names())]
    pub systems: Vec<String>,
    /// Kernel flavours, comma-separated (default: kata,minimal)
    #[arg(long, value_delimiter = ',', value_parser = FLAVOURS)]
    pub flavours: Vec<String>,
    /// Only these configurations, MACHINE/KIND/FORMAT, comma-separated
    #[arg(long, value_delimiter = ',', value_parser = [
        "q35/dax/vmlinux", "q35/initrd/vmlinux", "microvm/initrd/vmlinux", "q35/dax/bzImage"
    ])]
    pub configs: Vec<String>,
    /// Write the results here instead of docs/
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip the timesync/chronyd table
    #[arg(long)]
    pub no_time: bool,
    /// Skip the real kata-agent's boots
    #[arg(long)]
    pub no_real: bool,
    /// PID 1 of a container: minos against tini, dumb-init, catatonit, busybox
    #[arg(long)]
    pub pid1: bool,
    /// Rounds of --pid1
    #[arg(long, default_value_t = 30, requires = "pid1")]
    pub rounds: usize,
    /// The NTP simulation's figures (docs/timesync.md)
    #[arg(long)]
    pub ntp_sim: bool,
    /// Only the timesync/chronyd table, into the last full run's results
    #[arg(long)]
    pub time_only: bool,
    /// The page and charts again from docs/bench/results.json
    #[arg(long)]
    pub render: bool,
}

#[derive(Debug, Args)]
#[group(skip)]
#[command(group(clap::ArgGroup::new("mode").required(true).multiple(false)))]
pub struct FuzzArgs {
    /// Replay every corpus and the crash regressions (what `test` runs)
    #[arg(long, group = "mode")]
    pub smoke: bool,
    /// Fuzz one target
    #[arg(long, group = "mode", value_parser = crate::fuzz::TARGETS)]
    pub run: Option<String>,
    /// Fuzz every target, one after the other
    #[arg(long, group = "mode")]
    pub all: bool,
    /// Seconds per target
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(words.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn misspelt_commands_options_and_values_are_refused_with_a_suggestion() {
        let e = parse(&["kernel", "--flavor", "kata"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(e.to_string().contains("--flavour"), "{e}");
        let e = parse(&["image", "--knd", "dax"]).unwrap_err();
        assert!(e.to_string().contains("--kind"), "{e}");
        let e = parse(&["bench", "--quik"]).unwrap_err();
        assert!(e.to_string().contains("--quick"), "{e}");
        let e = parse(&["kernel", "--flavour", "kat"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(e.to_string().contains("kata"), "{e}");
        let e = parse(&["bnech"]).unwrap_err();
        assert!(e.to_string().contains("bench"), "{e}");
        let e = parse(&["vmtest", "no-such-scenario"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        let e = parse(&["dist", "--fast"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
        let e = parse(&["fuzz"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let e = parse(&["fuzz", "--smoke", "--all"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = parse(&["soak", "--boots", "many"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn options_parse_to_their_values() {
        let Command::Kernel { flavour } = parse(&["kernel", "--flavour", "kata"]).unwrap().command
        else {
            panic!("not kernel");
        };
        assert_eq!(flavour.as_deref(), Some("kata"));
        let Command::Bench(b) = parse(&["bench", "--systems", "minos,systemd", "--no-real"])
            .unwrap()
            .command
        else {
            panic!("not bench");
        };
        assert_eq!(b.systems, ["minos", "systemd"]);
        assert!(b.no_real && !b.quick);
        let Command::Fuzz(f) = parse(&["fuzz", "--run", "ntp_packet", "--seconds", "5"])
            .unwrap()
            .command
        else {
            panic!("not fuzz");
        };
        assert_eq!((f.run.as_deref(), f.seconds), (Some("ntp_packet"), 5));
        let Command::Image(i) = parse(&["image"]).unwrap().command else {
            panic!("not image");
        };
        assert_eq!((i.kind.as_str(), i.fs.as_str()), ("initrd", "ext4"));
    }

    #[test]
    fn every_command_has_help_listing_its_options() {
        let mut cli = Cli::command();
        let help = cli.render_long_help().to_string();
        for name in [
            "build",
            "dist",
            "test",
            "demo",
            "spec",
            "kernel",
            "image",
            "boot",
            "vmtest",
            "bench",
            "fuzz",
            "soak",
            "boot-order",
        ] {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
        let bench = cli
            .find_subcommand_mut("bench")
            .unwrap()
            .render_long_help()
            .to_string();
        for option in [
            "--quick",
            "--systems",
            "--flavours",
            "--configs",
            "--no-real",
            "--pid1",
            "--ntp-sim",
            "--time-only",
            "--render",
        ] {
            assert!(bench.contains(option), "{option} missing from:\n{bench}");
        }
    }
}
