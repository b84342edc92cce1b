//! The bench's output: results.json, the Markdown page and SVG charts.

use std::fmt::Write as _;
use std::path::Path;

use super::{Config, Results, Row};
use crate::util::{root, Result};

/// The charts, one per metric.
pub const CHARTS: [&str; 2] = ["boot.svg", "memory.svg"];

pub fn read(path: &Path) -> Result<Results> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes results.json and the charts into `out`; the Markdown page goes to
/// docs/BENCHMARKS.md when `docs`, else into `out` too.
pub fn write(results: &Results, out: &Path, docs: bool) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(results).map_err(|e| e.to_string())?;
    let put = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))
    };
    put(&out.join("results.json"), &(json + "\n"))?;
    put(&out.join("boot.svg"), &boot_chart(results))?;
    put(&out.join("memory.svg"), &memory_chart(results))?;
    let page = if docs {
        root().join("docs/BENCHMARKS.md")
    } else {
        out.join("BENCHMARKS.md")
    };
    put(&page, &markdown(results))?;
    if docs {
        // The figures README.md and SPECIFICATION.md quote, from this run.
        splice(&root().join("README.md"), "headline", &headline(results))?;
        splice(
            &root().join("docs/SPECIFICATION.md"),
            "budgets",
            &budget_table(results),
        )?;
        if !results.time_daemons.is_empty() {
            splice(
                &root().join("docs/timesync.md"),
                "timesync",
                &time_table(results),
            )?;
            splice(
                &root().join("docs/SPECIFICATION.md"),
                "phc",
                &phc_table(results),
            )?;
        }
    }
    Ok(())
}

/// Replaces what stands between `<!-- bench:NAME -->` and
/// `<!-- /bench:NAME -->` in `path` with `text`; both marks must be there.
fn splice(path: &Path, name: &str, text: &str) -> Result<()> {
    splice_marked(path, &format!("bench:{name}"), text)
}

/// Replaces what stands between `<!-- MARK -->` and `<!-- /MARK -->` in
/// `path` with `text`; both marks must be there.
pub fn splice_marked(path: &Path, mark: &str, text: &str) -> Result<()> {
    let page =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let (open, close) = (format!("<!-- {mark} -->\n"), format!("<!-- /{mark} -->"));
    let (Some(a), Some(b)) = (page.find(&open), page.find(&close)) else {
        return Err(format!("{}: no {open:?} … {close:?} block", path.display()));
    };
    if b < a {
        return Err(format!("{}: {close:?} before {open:?}", path.display()));
    }
    let out = format!("{}{open}{text}{}", &page[..a], &page[b..]);
    std::fs::write(path, out).map_err(|e| format!("write {}: {e}", path.display()))
}

/// A table cell from a row.
type RowCell = dyn Fn(&Row) -> String;

/// README's headline: the four systems on the kata kernel, q35, DAX, and
/// the initrd cost, from `results`.
pub fn headline(results: &Results) -> String {
    let config = Config::new("kata", "q35", "dax", "vmlinux");
    let systems = ["minos", "agent-init", "busybox", "systemd"];
    let row = |sys: &str, c: &Config| {
        results
            .rows
            .iter()
            .find(|r| r.system == sys && r.config == *c)
    };
    let cell = |sys: &str, f: &dyn Fn(&Row) -> String| row(sys, &config).map_or("—".to_string(), f);
    let mut s = format!(
        "Run of {} (`cargo xtask bench`), kata kernel, q35, DAX:\n\n\
         | | minos | agent as init | busybox init | systemd + chrony |\n|---|---:|---:|---:|---:|\n",
        results.date
    );
    let lines: [(&str, &RowCell); 4] = [
        ("power-on → agent ready", &|r| {
            r.power_on_to_ready_ms
                .map_or("—".into(), |v| format!("{v:.1} ms"))
        }),
        ("init exec → agent exec", &|r| {
            format!("{:.2} ms", r.init_to_agent_exec_ms)
        }),
        ("init exec → agent ready", &|r| {
            format!("{:.2} ms", r.init_to_agent_ready_ms)
        }),
        ("memory used at agent ready", &|r| {
            format!("{:.1} MiB", r.mem_ready_kib as f64 / 1024.0)
        }),
    ];
    for (what, f) in lines {
        let cells: Vec<String> = systems.iter().map(|sys| cell(sys, f)).collect();
        let _ = writeln!(s, "| {what} | {} |", cells.join(" | "));
    }
    let initrd = Config::new("kata", "q35", "initrd", "vmlinux");
    if let (Some(m), Some(a)) = (row("minos", &initrd), row("agent-init", &initrd)) {
        if let (Some(mb), Some(ab), Some(mp), Some(ap)) = (
            m.rootfs_bytes,
            a.rootfs_bytes,
            m.power_on_to_ready_ms,
            a.power_on_to_ready_ms,
        ) {
            let _ = writeln!(
                s,
                "\nAs an initrd (kata kernel, q35) minos's image holds {:+.1} MiB of files against \
                 the agent-as-init image, which the kernel inflates before it runs init: \
                 power-on → agent ready {mp:.1} ms against {ap:.1} ms.",
                (mb as f64 - ab as f64) / 1048576.0
            );
        }
    }
    let daemon = |name: &str| results.time_daemons.iter().find(|t| t.daemon == name);
    if let (Some(t), Some(c)) = (daemon("timesync"), daemon("chronyd")) {
        let ms = |v: Option<f64>| v.map_or("not within 60 s".to_string(), |v| format!("{v:.0} ms"));
        let half = |t: &crate::bench::TimeDaemon| {
            if t.jump_half_measured {
                ms(t.jump_half_ms)
            } else {
                "not measured".to_string()
            }
        };
        let _ = writeln!(
            s,
            "\nThe guest clock back within 1 ms of the PHC after a +2 s / −2 s jump: timesync \
             {} / {}, chronyd with Kata's lines {} / {}; after a +0.5 s jump (below \
             `makestep 1`, slewed): {} against {}; wakeups per second once settled: \
             {:.2} against {:.2} (same guest, same PHC{}).",
            ms(t.jump_plus_ms),
            ms(t.jump_minus_ms),
            ms(c.jump_plus_ms),
            ms(c.jump_minus_ms),
            half(t),
            half(c),
            t.wakeups_per_s,
            c.wakeups_per_s,
            results
                .time_daemons_run
                .as_ref()
                .map_or(String::new(), |run| format!("; measured {run}"))
        );
    }
    s
}

/// The timesync/chronyd table (BENCHMARKS.md and docs/timesync.md), from
/// `results`: when it was measured apart, then a row per daemon.
pub fn time_table(results: &Results) -> String {
    let mut s = String::new();
    if let Some(run) = &results.time_daemons_run {
        let _ = writeln!(s, "Measured {run}, apart from the boot runs.\n");
    } else {
        let _ = writeln!(s, "Measured {} (`cargo xtask bench`).\n", results.date);
    }
    s.push_str(
        "| daemon | clock within 1 ms of the PHC | after a +2 s jump | after a −2 s jump | after a +0.5 s jump (below `makestep 1`) | wakeups per second (over 60 s, settled) | CPU time (60 s) | RSS |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ms = |v: Option<f64>| v.map_or("not within 60 s".to_owned(), |v| format!("{v:.0} ms"));
    for t in &results.time_daemons {
        let half = if t.jump_half_measured {
            ms(t.jump_half_ms)
        } else {
            "not measured".to_owned()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {:.0} ms | {} KiB |",
            t.daemon,
            ms(t.synchronised_ms),
            ms(t.jump_plus_ms),
            ms(t.jump_minus_ms),
            half,
            t.wakeups_per_s,
            t.cpu_ms,
            t.rss_kib
        );
    }
    s
}

/// SPECIFICATION.md's promises of timesync on a PHC, with the figures of
/// the time daemons' run (`vmtest dax-q35-phc` checks the same limits).
pub fn phc_table(results: &Results) -> String {
    let mut s = String::new();
    let Some(t) = results.time_daemons.iter().find(|t| t.daemon == "timesync") else {
        return s;
    };
    let run = results
        .time_daemons_run
        .clone()
        .unwrap_or_else(|| format!("{} (`cargo xtask bench`)", results.date));
    let chronyd = results
        .time_daemons
        .iter()
        .find(|t| t.daemon == "chronyd")
        .map_or(String::new(), |c| {
            format!("; chronyd with Kata's lines: {:.2}", c.wakeups_per_s)
        });
    let ms = |v: Option<f64>| v.map_or("not within 60 s".to_owned(), |v| format!("{v:.0} ms"));
    let _ = writeln!(
        s,
        "| item | budget | measured ({run}, guest time) |\n|---|---|---|"
    );
    let _ = writeln!(
        s,
        "| timesync wakeups, settled on a PHC | ≤ 1 per second (checked ≤ 1.1) | {:.2} per second{chronyd} |",
        t.wakeups_per_s
    );
    let _ = writeln!(
        s,
        "| timesync RSS on a PHC (DAX rootfs: code is not guest RAM) | < 1.5 MiB | {} KiB |",
        t.rss_kib
    );
    let _ = writeln!(
        s,
        "| guest clock back within 1 ms of the PHC after a ±2 s jump | ≤ 2 s | {} (+2 s), {} (−2 s) |",
        ms(t.jump_plus_ms),
        ms(t.jump_minus_ms)
    );
    if t.jump_half_measured {
        let _ = writeln!(
            s,
            "| … after a +0.5 s jump (below `makestep 1`: slewed) | ≤ 10 s | {} |",
            ms(t.jump_half_ms)
        );
    }
    s
}

/// SPECIFICATION.md's budget table, from `results`: each budget on each
/// configuration it was checked on.
pub fn budget_table(results: &Results) -> String {
    let mut s = format!(
        "Run of {} (`cargo xtask bench`):\n\n| budget | configuration | limit | minos | |\n|---|---|---:|---:|---|\n",
        results.date
    );
    budget_rows(&mut s, results);
    s
}

/// One table row per budget: what, configuration, limit, measured, met.
fn budget_rows(s: &mut String, results: &Results) {
    for b in &results.budgets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            b.what,
            b.config.name(),
            super::figure(b.limit),
            super::figure(b.measured),
            if b.met { "met" } else { "**missed**" }
        );
    }
}

/// A chart must be one well-formed `<svg>` element with bars in it.
pub fn check_svg(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let ok = text.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\"")
        && text.trim_end().ends_with("</svg>")
        && text.matches("<svg").count() == 1
        && text.contains("<rect ")
        && text.matches('<').count() == text.matches('>').count();
    if ok {
        Ok(())
    } else {
        Err(format!("{} is not a chart", path.display()))
    }
}

fn configs(results: &Results) -> Vec<Config> {
    let mut v: Vec<Config> = Vec::new();
    for r in &results.rows {
        if !v.contains(&r.config) {
            v.push(r.config.clone());
        }
    }
    v
}

fn rows_of<'a>(results: &'a Results, config: &'a Config) -> impl Iterator<Item = &'a Row> {
    results.rows.iter().filter(move |r| &r.config == config)
}

/// A system's label; a name of no system (the real agent's failures) as is.
fn label(system: &str) -> String {
    super::systems::System::parse(system)
        .map_or_else(|_| system.to_string(), |s| s.label().to_string())
}

pub fn markdown(results: &Results) -> String {
    let mut s = String::new();
    s.push_str(METHOD_HEAD);
    let _ = writeln!(
        s,
        "\n## Results\n\nRun of {}: host {}; {}; guest kernel {} (project flavours); {} MiB, {} vCPU.\n",
        results.date, results.host, results.qemu, results.kernel, results.memory_mib, results.vcpus
    );
    s.push_str("Binaries (static, stripped): ");
    let bins: Vec<String> = results
        .binaries
        .iter()
        .map(|(n, b)| format!("`{n}` {b} bytes"))
        .collect();
    s.push_str(&bins.join(", "));
    s.push_str(".\n\n");
    for config in configs(results) {
        let _ = writeln!(s, "### {}\n", config.name());
        s.push_str("| system | power-on → agent ready | power-on → kernel clock | kernel → init exec | init exec → agent exec | init exec → agent ready | kernel → agent ready | host health check from power-on (from the kernel clock) | memory at ready | 1 s later | user processes | user RSS | user PSS | image |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in rows_of(results, &config) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} | {} KiB | {} KiB | {} | {} KiB | {} | {} |",
                label(&r.system),
                r.power_on_to_ready_ms.map_or("—".into(), |v| format!("{v:.1} ms")),
                r.pre_kernel_ms.map_or("—".into(), |v| format!("{v:.1} ms")),
                r.kernel_to_init_ms,
                r.init_to_agent_exec_ms,
                r.init_to_agent_ready_ms,
                r.agent_ready_ms,
                match (r.health_check_ms, r.health_check_power_on_ms) {
                    (Some(k), Some(p)) => format!("{p:.0} ms ({k:.0} ms)"),
                    (Some(k), None) => format!("({k:.0} ms)"),
                    _ => "—".into(),
                },
                r.mem_ready_kib,
                r.mem_late_kib,
                r.processes,
                r.rss_kib,
                r.pss_kib.map_or("—".into(), |v| format!("{v} KiB")),
                match (r.rootfs_files, r.rootfs_bytes) {
                    (Some(f), Some(b)) => format!("{f} files, {:.1} MiB in files, {:.0} MiB image", b as f64 / 1048576.0, r.image_bytes as f64 / 1048576.0),
                    _ => format!("{:.1} MiB image", r.image_bytes as f64 / 1048576.0),
                }
            );
        }
        s.push('\n');
        let rss: Vec<String> = rows_of(results, &config)
            .map(|r| {
                let list: Vec<String> = r
                    .rss_after_10s
                    .iter()
                    .map(|(c, k)| format!("{c} {k} KiB"))
                    .collect();
                format!("{}: {}", label(&r.system), list.join(", "))
            })
            .collect();
        let _ = writeln!(
            s,
            "RSS of each process 10 s after ready — {}.\n",
            rss.join("; ")
        );
        if config.kind == "initrd" {
            s.push_str(&initrd_note(results, &config));
        }
    }
    if !results.failures.is_empty() {
        s.push_str("### Did not boot\n\n");
        for f in &results.failures {
            let _ = writeln!(
                s,
                "- {} on {}: {}",
                label(&f.system),
                f.config.name(),
                f.reason
            );
        }
        s.push('\n');
    }
    if !results.time_daemons.is_empty() {
        s.push_str(
            "### timesync against chronyd in the same guest\n\n\
             Test kernel, q35 DAX, the kernel's mock PHC (1.5 s ahead, 50 ppm fast) as `/dev/ptp0`; \
             chronyd is Debian's with Kata's two lines (`refclock PHC /dev/ptp0 poll 3 dpoll -2 \
             offset 0`, `makestep 1 -1`), timesync has the same lines; clockprobe measures the \
             guest clock against the PHC itself (`cargo xtask vmtest dax-q35-phc`, \
             `dax-q35-phc-chronyd`). Guest time.\n\n",
        );
        s.push_str(&time_table(results));
        s.push('\n');
    }
    real_agent_table(&mut s, results);
    if !results.budgets.is_empty() {
        s.push_str("### Budgets (docs/SPECIFICATION.md)\n\n| budget | configuration | limit | measured | |\n|---|---|---:|---:|---|\n");
        budget_rows(&mut s, results);
        s.push('\n');
    }
    s.push_str(METHOD_TAIL);
    s
}

/// The real kata-agent's boots: per system and configuration, the median
/// of each figure over its boots, and how many boots.
fn real_agent_table(s: &mut String, results: &Results) {
    if results.real_agent.is_empty() {
        return;
    }
    s.push_str(
        "### The real kata-agent\n\n\
         Kata's own agent (tests/fixtures/kata/agent) in minos's image as its kata-agent.service, \
         and as init (an initrd with the agent as `/init` and its libraries; \
         `systemd.unified_cgroup_hierarchy=1`), driven from the host by Kata's agent-ctl over \
         hybrid vsock: the health check polled from power-on, then `GetMetrics` at the first \
         answer and 1 s later, then `DestroySandbox`. QEMU under `-icount shift=0,sleep=on` \
         (the guest waits for the host). No agent-shim runs here, so these figures are not the \
         tables' above: *agent start → listening* is guest time on the agent's own log clock \
         (its first log line → `ttRPC server started`, from when it answers; as init, the \
         agent's first lines are its own mounts, which minos's init does before the agent \
         starts); *health check (host)* is host wall time from QEMU's start, mostly TCG's own \
         slowness and nothing that would hold on KVM; memory is MemTotal − MemFree from the \
         agent's `GetMetrics`. Medians over the boots.\n\n\
         | system | configuration | boots | agent start → listening | health check (host) | memory at first answer | 1 s later | image |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut seen: Vec<(&str, &Config)> = Vec::new();
    for r in &results.real_agent {
        if seen.contains(&(r.system.as_str(), &r.config)) {
            continue;
        }
        seen.push((r.system.as_str(), &r.config));
        let boots: Vec<&super::real::RealRow> = results
            .real_agent
            .iter()
            .filter(|b| b.system == r.system && b.config == r.config)
            .collect();
        let of =
            |f: &dyn Fn(&super::real::RealRow) -> f64| median(boots.iter().map(|b| f(b)).collect());
        let system = if r.system == "minos" {
            "minos + kata-agent"
        } else {
            "kata-agent as init"
        };
        let _ = writeln!(
            s,
            "| {system} | {} | {} | {:.1} ms | {:.0} ms | {:.0} KiB | {:.0} KiB | {:.1} MiB |",
            r.config.name(),
            boots.len(),
            of(&|b| b.agent_start_to_listen_ms),
            of(&|b| b.health_check_host_ms),
            of(&|b| b.mem_ready_kib as f64),
            of(&|b| b.mem_late_kib as f64),
            r.image_bytes as f64 / 1048576.0
        );
    }
    s.push('\n');
}

/// On an initrd, what each system's files cost against the agent as init's:
/// the kernel unpacks (inflates) the whole archive into RAM before it runs
/// init, so its size shows in kernel → init exec and in memory.
fn initrd_note(results: &Results, config: &Config) -> String {
    let Some(base) = rows_of(results, config).find(|r| r.system == "agent-init") else {
        return String::new();
    };
    let Some(base_bytes) = base.rootfs_bytes else {
        return String::new();
    };
    let others: Vec<String> = rows_of(results, config)
        .filter(|r| r.system != base.system)
        .filter_map(|r| {
            let bytes = r.rootfs_bytes? as f64 - base_bytes as f64;
            Some(format!(
                "{} {:+.1} MiB in files, {:+.1} ms kernel → init exec, {:+} KiB at ready",
                label(&r.system),
                bytes / 1048576.0,
                r.kernel_to_init_ms - base.kernel_to_init_ms,
                r.mem_ready_kib as i64 - base.mem_ready_kib as i64
            ))
        })
        .collect();
    if others.is_empty() {
        return String::new();
    }
    format!(
        "On an initrd the kernel unpacks (inflates) the whole archive into RAM before it runs \
         init, so the bytes in files show in kernel → init exec and in memory. Against the agent \
         as init: {}.\n\n",
        others.join("; ")
    )
}

const METHOD_HEAD: &str = "# Benchmarks

Boot time and memory of minos against the guest userlands it replaces, each booted the same way
in one run of `cargo xtask bench`: same kernel, same QEMU machine, memory and vCPU count, same
Kata kernel command line (tests/fixtures/kata/kernel-cmdline-qemu-x86.txt), agent-shim in the
agent's place. Charts: [boot](bench/boot.svg), [memory](bench/memory.svg); raw figures:
[results.json](bench/results.json); each boot's console: `docs/bench/consoles/`. PID 1 outside a
VM (minos against tini, dumb-init, catatonit and busybox): [bench/pid1.md](bench/pid1.md).

![boot](bench/boot.svg)

## Method

- **Systems.** *minos*: the project's image (init, timesync, busd — socket-activated, started
  by no boot here — and agent-shim under Kata's kata-agent.service). *agent as init*: agent-shim as /sbin/init (Kata's `AGENT_INIT=yes`; as
  PID 1 it mounts what kata-agent mounts as init). *busybox init*: Debian's busybox-static with
  an inittab whose sysinit script mounts what the agent needs. *systemd + chrony*: Debian 12
  `debootstrap --variant=minbase` with systemd, systemd-sysv, chrony, iptables and dbus
  (osbuilder's package list for Debian-family rootfs), configured as Kata's
  osbuilder does (kata-agent.service and kata-containers.target, the units and generators
  rootfs.sh deletes deleted, /var's state directories removed, tmp.mount, chrony.conf with Kata's
  two lines and no servers, chrony.service only when /dev/ptp0 exists). *osbuilder rootfs,
  /sbin/init → minos*: that same tree with only `/sbin/init` replaced by minos's init and
  `/usr/bin/systemctl` linked to it, as a user drops minos into an osbuilder rootfs: systemd
  stays installed, init reads Kata's units from `/usr/lib/systemd/system` (docs/units.md).
- **Clock.** QEMU under TCG with `-icount shift=0,sleep=off`: guest time is instruction-counted
  and repeats run after run, so one boot per cell suffices. The image is on NVDIMM with Kata's
  DAX header (q35) or an initrd, never virtio-blk (a guest idling on block I/O makes icount skip
  ahead unpredictably). Every system's image comes from the same builder (`cargo xtask image`'s
  ext4 layout, docs/images.md): init's file 2 MiB-aligned where it is a file of its own, and no
  inode-table readahead on the DAX root (`inode_readahead_blks=0` in the superblock).
- **Markers.** Read by agent-shim (`agent.bench`) from the kernel log: *init exec* is the
  kernel's `Run /sbin/init as init process` record; *agent ready* is the record agent-shim
  writes once its ttRPC server listens; *agent exec* is agent ready less the CLOCK_BOOTTIME the
  shim spent from `main` to ready.
- **Virtual time, not the kernel's clock.** The ACPI PM timer (q35) counts QEMU's virtual clock
  from power-on, and under `-icount` the guest TSC counts the same nanoseconds (both read by
  agent-shim at ready: they agree to a few µs, and over the idle second after ready all three
  clocks advance alike). The kernel's clock does not: during early boot its timekeeping runs
  ahead of virtual time (about 85–105 ms on these kernels), and when the kernel marks
  sched_clock stable (before init starts) it keeps that lead as a fixed offset, which it logs
  (`sched_clock: Marking stable (…)->(…, OFFSET)`). Every figure here has that offset taken
  off, so all are virtual time: *kernel clock* is the kernel's TSC set-up early in its boot;
  *power-on → kernel clock* is firmware, loader, decompression (bzImage) and the kernel's first
  steps before its TSC set-up, from the PM timer; *power-on → agent ready* is their sum with
  *kernel → agent ready*. microvm has no PM timer: no power-on figures there.
- **Host health check.** A second boot of the same image with a virtio-vsock device
  (vhost-device-vsock, QEMU's vhost-user-vsock-pci); the host polls `grpc.Health/Check` over
  hybrid vsock from power-on, as the Kata runtime does; the figure is the guest time of the first
  answered check. That boot runs with `sleep=on` (guest time follows real time while idle), so it
  is approximate (about ±5 %).
- **Memory.** MemTotal − MemFree − pages on per-CPU free lists (/proc/zoneinfo), at agent ready
  and 1 s later: steady between identical boots, where MemAvailable jumps by up to 7 MiB. User
  processes exclude kernel threads; user RSS and user PSS are the sums of their resident and
  proportional set sizes (smaps_rollup; PSS splits pages shared between processes), at ready.
";

const METHOD_TAIL: &str = "## Limits of the method

- The kernel's steps before its TSC set-up are counted with the firmware in *power-on → kernel
  clock*: the guest has no earlier clock reading to split them off.
- Under `sleep=on` (the health-check boots) the kernel's early-boot lead differs; each boot's
  own offset is taken off.

## Reproduce

```sh
cargo xtask bench                      # every system, kata and minimal kernels, q35 DAX + initrd, microvm initrd
cargo xtask bench --systems minos,agent-init --flavours kata --out /tmp/bench
cargo xtask bench --quick              # what cargo xtask test runs: two systems, test kernel, q35 DAX
```

The first run builds the kernels (about 12 minutes each on 2 cores), downloads busybox-static and
debootstraps the systemd rootfs (a few minutes), all cached in ~/.cache/minos.
";

/// Stacked horizontal bars: kernel → init exec, init exec → agent ready.
pub fn boot_chart(results: &Results) -> String {
    let kernel = ("kernel → init exec", "#8da0cb");
    let user = ("init exec → agent ready", "#fc8d62");
    if results.rows.iter().any(|r| r.pre_kernel_ms.is_some()) {
        bars(
            results,
            "Power-on to agent ready (virtual ms, icount)",
            &[
                (
                    "power-on → kernel clock (firmware, loader, decompression)",
                    "#b3b3b3",
                ),
                kernel,
                user,
            ],
            |r| {
                vec![
                    r.pre_kernel_ms.unwrap_or(0.0),
                    r.kernel_to_init_ms,
                    r.init_to_agent_ready_ms,
                ]
            },
            "ms",
        )
    } else {
        bars(
            results,
            "Kernel clock to agent ready (virtual ms, icount)",
            &[kernel, user],
            |r| vec![r.kernel_to_init_ms, r.init_to_agent_ready_ms],
            "ms",
        )
    }
}

/// Bars: memory used at agent ready.
pub fn memory_chart(results: &Results) -> String {
    bars(
        results,
        "Memory used at agent ready (MiB, MemTotal − MemFree − per-CPU lists)",
        &[("memory at agent ready", "#66c2a5")],
        |r| vec![r.mem_ready_kib as f64 / 1024.0],
        "MiB",
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn bars(
    results: &Results,
    title: &str,
    parts: &[(&str, &str)],
    values: impl Fn(&Row) -> Vec<f64>,
    unit: &str,
) -> String {
    let left = 330.0;
    let width = 900.0;
    let plot = width - left - 90.0;
    let bar = 16.0;
    let max = results
        .rows
        .iter()
        .map(|r| values(r).iter().sum::<f64>())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let mut body = String::new();
    let mut y = 50.0;
    for config in configs(results) {
        let _ = writeln!(
            body,
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>",
            y + 12.0,
            escape(&config.name())
        );
        y += 20.0;
        for r in rows_of(results, &config) {
            let _ = writeln!(
                body,
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
                left - 8.0,
                y + 12.0,
                escape(&label(&r.system))
            );
            let mut x = left;
            let vs = values(r);
            for (v, (_, colour)) in vs.iter().zip(parts) {
                let w = v / max * plot;
                let _ = writeln!(
                    body,
                    "<rect x=\"{x:.1}\" y=\"{y:.0}\" width=\"{w:.1}\" height=\"{bar:.0}\" fill=\"{colour}\"/>"
                );
                x += w;
            }
            let _ = writeln!(
                body,
                "<text x=\"{:.1}\" y=\"{:.0}\">{:.1} {unit}</text>",
                x + 6.0,
                y + 12.0,
                vs.iter().sum::<f64>()
            );
            y += bar + 6.0;
        }
        y += 10.0;
    }
    let mut legend = String::new();
    let mut lx = left;
    for (name, colour) in parts {
        let _ = writeln!(
            legend,
            "<rect x=\"{lx:.0}\" y=\"{:.0}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            y,
            lx + 16.0,
            y + 11.0,
            escape(name)
        );
        lx += 230.0;
    }
    let height = y + 30.0;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect x=\"0\" y=\"0\" width=\"{width:.0}\" height=\"{height:.0}\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{}</text>\n{body}{legend}</svg>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Budget, Row};

    fn results() -> Results {
        let config = Config::new("kata", "q35", "dax", "vmlinux");
        let row = |system: &str, k: f64, i: f64, mem: u64| Row {
            system: system.into(),
            config: config.clone(),
            kernel_to_init_ms: k,
            init_to_agent_exec_ms: i / 2.0,
            init_to_agent_ready_ms: i,
            agent_ready_ms: k + i,
            power_on_to_ready_ms: Some(k + i + 200.0),
            pre_kernel_ms: Some(200.0),
            mem_ready_kib: mem,
            mem_late_kib: mem + 10,
            processes: 3,
            rss_kib: 500,
            pss_kib: None,
            image_bytes: 130 * 1048576,
            rootfs_files: Some(20),
            rootfs_bytes: Some(4 << 20),
            health_check_ms: Some(330.0),
            health_check_power_on_ms: Some(530.0),
            rss_after_10s: vec![("init".into(), 768)],
        };
        Results {
            date: "2026-12-04".into(),
            host: "Linux 6.1, 2 CPUs".into(),
            qemu: "QEMU emulator version 10.0.2".into(),
            kernel: "linux-source-6.12".into(),
            memory_mib: 2048,
            vcpus: 1,
            binaries: vec![("init".into(), 1_400_000)],
            rows: vec![
                row("minos", 300.0, 5.0, 8400),
                row("systemd", 310.0, 700.0, 30000),
            ],
            failures: vec![crate::bench::Failure {
                system: "systemd".into(),
                config: Config::new("minimal", "q35", "dax", "vmlinux"),
                reason: "no inotify".into(),
            }],
            time_daemons_run: Some(
                "2026-12-07 at 0123456789ab (`cargo xtask bench --time-only`)".into(),
            ),
            real_agent: vec![crate::bench::real::RealRow {
                system: "agent-init".into(),
                config: Config::new("kata", "q35", "initrd", "vmlinux"),
                agent_start_to_listen_ms: 12.5,
                health_check_host_ms: 9000.0,
                checks: 80,
                mem_ready_kib: 51000,
                mem_late_kib: 51100,
                image_bytes: 30 << 20,
            }],
            budgets: vec![Budget {
                what: "x <y>".into(),
                config,
                limit: 1.0,
                measured: 2.0,
                met: false,
            }],
            time_daemons: vec![crate::bench::TimeDaemon {
                daemon: "chronyd".into(),
                synchronised_ms: Some(24_800.0),
                jump_plus_ms: None,
                jump_minus_ms: Some(47_000.0),
                jump_half_ms: None,
                jump_half_measured: true,
                seconds: 60.0,
                wakeups_per_s: 4.12,
                cpu_ms: 20.0,
                rss_kib: 1500,
            }],
        }
    }

    #[test]
    fn charts_are_well_formed_and_scaled() {
        let r = results();
        let svg = boot_chart(&r);
        let dir = std::env::temp_dir().join(format!("xtask-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("boot.svg");
        std::fs::write(&path, &svg).unwrap();
        check_svg(&path).unwrap();
        std::fs::write(&path, "<svg>").unwrap();
        assert!(check_svg(&path).is_err());
        // The longest bar (systemd, 200 + 310 + 700 ms) spans the plot width.
        assert!(svg.contains("1210.0 ms"), "{svg}");
        // 200, 310 and 700 of 1210 ms on the 480 px plot.
        assert!(svg.contains("width=\"79.3\""), "{svg}");
        assert!(svg.contains("width=\"123.0\""), "{svg}");
        assert!(svg.contains("width=\"277.7\""), "{svg}");
        assert_eq!(svg.matches("<rect ").count(), 1 + 6 + 3);
        write(&r, &dir, false).unwrap();
        assert_eq!(read(&dir.join("results.json")).unwrap(), r);
        let md = std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap();
        assert!(md.contains("| systemd + chrony | 1210.0 ms | 200.0 ms | 310.0 ms | 350.00 ms | 700.00 ms | 1010.0 ms | 530 ms (330 ms) | 30000 KiB |"), "{md}");
        assert!(md.contains("**missed**"));
        assert!(
            phc_table(&r).is_empty(),
            "no timesync row in the sample results"
        );
        assert!(md.contains(
            "Measured 2026-12-07 at 0123456789ab (`cargo xtask bench --time-only`), apart from the boot runs."
        ));
        assert!(
            md.contains(
                "| chronyd | 24800 ms | not within 60 s | 47000 ms | not within 60 s | 4.12 | 20 ms | 1500 KiB |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- systemd + chrony on minimal kernel, q35, dax: no inotify"),
            "{md}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Each initrd table says what the files cost against the agent as init.
    #[test]
    fn initrd_tables_compare_bytes_in_files_with_the_agent_as_init() {
        let mut r = results();
        let initrd = Config::new("kata", "q35", "initrd", "vmlinux");
        for (system, files_mib, kernel_ms, mem) in
            [("minos", 5, 288.5, 12604), ("agent-init", 1, 229.8, 8876)]
        {
            let mut row = r.rows[0].clone();
            row.system = system.into();
            row.config = initrd.clone();
            row.rootfs_bytes = Some(files_mib << 20);
            row.kernel_to_init_ms = kernel_ms;
            row.mem_ready_kib = mem;
            r.rows.push(row);
        }
        let md = markdown(&r);
        assert!(
            md.contains(
                "Against the agent as init: minos (init + timesync + busd + agent) +4.0 MiB in files, \
                 +58.7 ms kernel → init exec, +3728 KiB at ready.\n"
            ),
            "{md}"
        );
        // Only under the initrd table, which has the agent as init.
        assert_eq!(md.matches("unpacks (inflates)").count(), 1, "{md}");
    }

    #[test]
    fn the_real_agents_boots_are_one_row_of_medians() {
        let mut r = results();
        let one = r.real_agent[0].clone();
        for (ms, host) in [(20.5, 8000.0), (11.0, 12000.0)] {
            let mut b = one.clone();
            b.agent_start_to_listen_ms = ms;
            b.health_check_host_ms = host;
            r.real_agent.push(b);
        }
        let md = markdown(&r);
        assert!(md.contains("### The real kata-agent"), "{md}");
        assert!(
            md.contains("| kata-agent as init | kata kernel, q35, initrd | 3 | 12.5 ms | 9000 ms | 51000 KiB | 51100 KiB | 30.0 MiB |"),
            "{md}"
        );
        r.real_agent.clear();
        assert!(!markdown(&r).contains("The real kata-agent"));
    }

    #[test]
    fn readme_and_specification_blocks_come_from_the_results() {
        let r = results();
        let h = headline(&r);
        assert!(
            h.contains("| power-on → agent ready | 505.0 ms | — | — | 1210.0 ms |"),
            "{h}"
        );
        assert!(
            h.contains("| memory used at agent ready | 8.2 MiB |"),
            "{h}"
        );
        let b = budget_table(&r);
        assert!(
            b.contains("| x <y> | kata kernel, q35, dax | 1.000 |"),
            "{b}"
        );
        let page = std::env::temp_dir().join(format!("minos-splice-{}.md", std::process::id()));
        std::fs::write(&page, "a\n<!-- bench:t -->\nold\n<!-- /bench:t -->\nb\n").unwrap();
        splice(&page, "t", "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&page).unwrap(),
            "a\n<!-- bench:t -->\nnew\n<!-- /bench:t -->\nb\n"
        );
        assert!(splice(&page, "u", "x").is_err());
        let _ = std::fs::remove_file(&page);
    }
}
