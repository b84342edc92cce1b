//! The real kata-agent under minos (vmtest scenarios `kata-*`): Kata's own
//! agent binary in minos's image, driven from the host with Kata's
//! agent-ctl over hybrid vsock through a container's whole lifecycle, for
//! each form of the OCI cgroupsPath a host sends — `/kata/<id>` (cgroupfs
//! driver) and `system.slice:kata:<id>` (the host's systemd driver, for
//! which the agent calls `org.freedesktop.systemd1` over D-Bus).
//!
//! The agent, agent-ctl (patched to take a local bundle) and reference OCI
//! specs come from `$MINOS_KATA_DIR` (default tests/fixtures/kata/agent,
//! whose README says what they are); the binaries are unpacked into
//! `~/.cache/minos/kata`. When they are absent the scenarios are skipped
//! with one loud line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::Entry;
use crate::qemu::{Console, HostScript};
use crate::util::{ensure_packages, output_within, root, Result};

/// The container's id: agent-ctl derives the container's hostname from its
/// first 12 characters (the bundles name none).
pub const CID: &str = "minos-container-1";
/// The name in the reference bundles' cgroupsPath (`/kata/test1`,
/// `system.slice:kata:test1`).
pub const CGROUP_NAME: &str = "test1";
/// Where the container's busybox rootfs lives in the guest image; the
/// bundles' `root.path` names it.
pub const CONTAINER_ROOT: &str = "opt/bb/rootfs";

/// The host's cgroup driver, as the agent sees it in cgroupsPath.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Cgroupfs,
    Systemd,
}

impl Form {
    pub fn name(self) -> &'static str {
        match self {
            Form::Cgroupfs => "cgroupfs",
            Form::Systemd => "systemd",
        }
    }

    /// The container's cgroup in the guest (its `/proc/self/cgroup`).
    pub fn cgroup(self) -> String {
        match self {
            Form::Cgroupfs => format!("/kata/{CGROUP_NAME}"),
            Form::Systemd => format!("/system.slice/kata-{CGROUP_NAME}.scope"),
        }
    }
}

/// Kata's binaries and reference bundle specs, ready to use.
#[derive(Debug, Clone)]
pub struct Assets {
    pub agent: PathBuf,
    pub ctl: PathBuf,
    /// `config-cgroupfs.json`, `config-systemd.json`, `exec.json`.
    pub specs: PathBuf,
}

/// `$MINOS_KATA_DIR`, else tests/fixtures/kata/agent.
pub fn kata_dir() -> PathBuf {
    std::env::var_os("MINOS_KATA_DIR")
        .map_or_else(|| root().join("tests/fixtures/kata/agent"), PathBuf::from)
}

/// Unpacks `xz` to `out` unless a copy from the same file is there.
fn unpack(xz: &Path, out: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(xz).map_err(|e| format!("{}: {e}", xz.display()))?;
    let stamp_path = out.with_extension("source");
    let stamp = format!("{} {} {}\n", xz.display(), md.len(), md.mtime());
    if out.is_file() && std::fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        return Ok(());
    }
    let o = Command::new("xz")
        .arg("-dc")
        .arg(xz)
        .output()
        .map_err(|e| format!("xz -dc {}: {e}", xz.display()))?;
    if !o.status.success() {
        return Err(format!(
            "xz -dc {}: {}",
            xz.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    std::fs::write(out, &o.stdout)
        .and_then(|()| std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::write(&stamp_path, stamp))
        .map_err(|e| format!("write {}: {e}", out.display()))
}

/// The assets, or `None` (with the reason) when the agent is not provided.
pub fn assets() -> Result<std::result::Result<Assets, String>> {
    let dir = kata_dir();
    let (agent_xz, ctl_xz) = (dir.join("kata-agent.xz"), dir.join("kata-agent-ctl.xz"));
    if !agent_xz.is_file() || !ctl_xz.is_file() {
        return Ok(Err(format!(
            "no kata-agent.xz and kata-agent-ctl.xz in {} (set MINOS_KATA_DIR)",
            dir.display()
        )));
    }
    ensure_packages(&[("xz", "xz-utils")])?;
    let cache = crate::kernel::cache_dir().join("kata");
    std::fs::create_dir_all(&cache).map_err(|e| format!("create {}: {e}", cache.display()))?;
    let a = Assets {
        agent: cache.join("kata-agent"),
        ctl: cache.join("kata-agent-ctl"),
        specs: dir.join("bundle"),
    };
    unpack(&agent_xz, &a.agent)?;
    unpack(&ctl_xz, &a.ctl)?;
    for spec in ["config-cgroupfs.json", "config-systemd.json", "exec.json"] {
        if !a.specs.join(spec).is_file() {
            return Err(format!("{} is missing", a.specs.join(spec).display()));
        }
    }
    Ok(Ok(a))
}

/// What the guest image gets beside the agent: a busybox rootfs for the
/// container at [`CONTAINER_ROOT`] (read-only, as the bundles ask: every
/// mount point they name exists), and a test unit that prints the guest's
/// cgroup tree whenever it changes (`cgwatch: ...`; for the container's
/// cgroups also memory.max and cpu.max), so that the host can see from
/// inside the guest where the container ran and that nothing was left.
pub fn image_entries() -> Result<Vec<Entry>> {
    let busybox = crate::bench::systems::busybox_binary()?;
    if !crate::util::is_static(&busybox)? {
        return Err(format!("{} is not static", busybox.display()));
    }
    let mut v = Vec::new();
    let dir = |p: &str| Entry::Dir {
        path: format!("{CONTAINER_ROOT}/{p}").trim_end_matches('/').into(),
        mode: 0o755,
    };
    for d in ["opt", "opt/bb"] {
        v.push(Entry::Dir {
            path: d.into(),
            mode: 0o755,
        });
    }
    for d in ["", "bin", "dev", "proc", "sys", "tmp", "etc", "mnt", "root"] {
        v.push(dir(d));
    }
    v.push(Entry::File {
        path: format!("{CONTAINER_ROOT}/bin/busybox"),
        mode: 0o755,
        data: std::fs::read(&busybox).map_err(|e| format!("{}: {e}", busybox.display()))?,
    });
    for applet in [
        "sh", "cat", "echo", "sleep", "ls", "find", "sort", "tr", "wc",
    ] {
        v.push(Entry::Symlink {
            path: format!("{CONTAINER_ROOT}/bin/{applet}"),
            target: "busybox".into(),
        });
    }
    v.push(Entry::File {
        path: "etc/minos/cgwatch.sh".into(),
        mode: 0o755,
        data: CGWATCH.replace("@NAME@", CGROUP_NAME).into_bytes(),
    });
    v.push(Entry::File {
        path: "etc/minos/units/cgwatch.service".into(),
        mode: 0o644,
        data: format!(
            "[Unit]\nDescription=test: the cgroup tree when it changes\n\
             After=kata-agent.service\n\
             [Service]\nStandardOutput=tty\n\
             ExecStart=/{CONTAINER_ROOT}/bin/busybox sh /etc/minos/cgwatch.sh\n"
        )
        .into_bytes(),
    });
    Ok(v)
}

/// Every 0.2 s: the cgroup directories (init's own `*.service` ones left
/// out), printed when they change. The path is looked up each time: init
/// mounts cgroup2 on /sys/fs/cgroup after its first units have started.
const CGWATCH: &str = r#"bb=/opt/bb/rootfs/bin/busybox
root=/sys/fs/cgroup
prev=none
while :; do
  cur=$($bb find $root -mindepth 1 -type d | $bb sort | while read -r d; do
    case "$d" in
      $root/system.slice/*.service|$root/system.slice/*.service/*) ;;
      *@NAME@*) printf '%s[mem=%s,cpu=%s,procs=%s] ' "${d#$root}" "$($bb cat "$d/memory.max" 2>/dev/null)" "$($bb cat "$d/cpu.max" 2>/dev/null | $bb tr ' ' /)" "$($bb cat "$d/cgroup.procs" 2>/dev/null | $bb wc -l)" ;;
      *) printf '%s ' "${d#$root}" ;;
    esac
  done)
  if [ "$cur" != "$prev" ]; then echo "cgwatch: { $cur}"; prev=$cur; fi
  $bb sleep 0.2
done
"#;

/// Host-side bundles for one form: `good/` (the reference spec), `bad/`
/// (the same with a bind mount of a source that does not exist: the
/// container's set-up fails after its cgroup was made, and the agent rolls
/// back), `exec/` (the exec's spec, for ExecProcess).
fn bundles(a: &Assets, form: Form, dir: &Path) -> Result<()> {
    let spec = std::fs::read_to_string(a.specs.join(format!("config-{}.json", form.name())))
        .map_err(|e| format!("{}: {e}", a.specs.display()))?;
    let mut bad: serde_json::Value =
        serde_json::from_str(&spec).map_err(|e| format!("config-{}.json: {e}", form.name()))?;
    bad["mounts"]
        .as_array_mut()
        .ok_or("the spec has no mounts array")?
        .push(serde_json::json!({
            "destination": "/mnt",
            "type": "bind",
            "source": "/nonexistent-minos-test",
            "options": ["rbind", "ro"]
        }));
    let exec = std::fs::read_to_string(a.specs.join("exec.json"))
        .map_err(|e| format!("{}: {e}", a.specs.display()))?;
    let exec_request = exec_request(&exec)?;
    for (sub, text) in [("good", spec), ("bad", bad.to_string()), ("exec", exec)] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| format!("create {}: {e}", d.display()))?;
        std::fs::write(d.join("config.json"), text)
            .map_err(|e| format!("write {}: {e}", d.display()))?;
    }
    let request = dir.join("exec/request.json");
    std::fs::write(&request, exec_request).map_err(|e| format!("write {}: {e}", request.display()))
}

/// ExecProcess's request for the process of an OCI spec, in the agent
/// protocol's JSON form (its `Process` message: capitalised field names).
fn exec_request(spec: &str) -> Result<String> {
    let spec: serde_json::Value =
        serde_json::from_str(spec).map_err(|e| format!("exec.json: {e}"))?;
    let p = &spec["process"];
    let caps = &p["capabilities"];
    let process = serde_json::json!({
        "Terminal": false,
        "User": {"UID": p["user"]["uid"], "GID": p["user"]["gid"]},
        "Args": p["args"],
        "Env": p["env"],
        "Cwd": p["cwd"],
        "Capabilities": {
            "Bounding": caps["bounding"],
            "Effective": caps["effective"],
            "Permitted": caps["permitted"],
        },
        "NoNewPrivileges": p["noNewPrivileges"],
    });
    if !process["Args"].is_array() {
        return Err("exec.json: no process.args".into());
    }
    Ok(serde_json::json!({
        "container_id": CID,
        "exec_id": "exec1",
        "process": process,
    })
    .to_string())
}

/// One agent-ctl run: one connection, one command.
struct Ctl<'a> {
    exe: &'a Path,
    uds: &'a Path,
    bundles: &'a Path,
    log: Vec<String>,
    /// How long one run may take before it is killed (agent-ctl's own
    /// `--timeout` bounds the request, not the connection).
    limit: Duration,
}

impl<'a> Ctl<'a> {
    /// A client whose runs may take 10 s: the runtime dials with a timeout
    /// and dials again, and a connection the guest never answers must not
    /// hold the health check.
    fn new(a: &'a Assets, uds: &'a Path, bundles: &'a Path) -> Self {
        Self {
            exe: &a.ctl,
            uds,
            bundles,
            log: Vec::new(),
            limit: Duration::from_secs(10),
        }
    }

    /// Polls the health check, a new connection every `pause`, as the
    /// runtime does, until the agent answers SERVING (at most 180 s); how
    /// many connections it took.
    fn wait_serving(&mut self, pause: Duration) -> Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(180);
        for attempt in 1.. {
            match self.run("Check", "good", false) {
                Ok(out) if out.contains("SERVING") => return Ok(attempt),
                Ok(out) => return Err(format!("Check answered without SERVING:\n{out}")),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("no health check answer within 180 s: {e}"))
                }
                Err(_) => std::thread::sleep(pause),
            }
        }
        Err("the health check was never tried".into())
    }
    /// Runs `command`; its output (agent-ctl logs the response) or an
    /// error with it.
    fn run(&mut self, command: &str, bundle: &str, auto_values: bool) -> Result<String> {
        let dir = self.bundles.join(bundle);
        let mut cmd = Command::new(self.exe);
        cmd.args(["-l", "debug", "connect", "--server-address"])
            .arg(format!("unix://{}", self.uds.display()))
            .args(["--hybrid-vsock", "yes", "--timeout", "60s", "--bundle-dir"])
            .arg(&dir)
            .env("AGENT_CTL_OCI_TEMPLATE", dir.join("config.json"));
        if !auto_values {
            cmd.args(["-n", "yes"]);
        }
        let t = Instant::now();
        let verb = command.split_whitespace().next().unwrap_or_default();
        let Some(o) = output_within(cmd.args(["-c", command]), self.limit)? else {
            self.log.push(format!(
                "agent-ctl {verb} ({bundle}): no answer within {} s",
                self.limit.as_secs()
            ));
            return Err(format!(
                "agent-ctl -c {command:?}: no answer within {} s (killed)",
                self.limit.as_secs()
            ));
        };
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        self.log.push(format!(
            "agent-ctl {verb} ({bundle}): {} in {} ms",
            if o.status.success() { "ok" } else { "failed" },
            t.elapsed().as_millis()
        ));
        if o.status.success() {
            Ok(out)
        } else {
            Err(format!(
                "agent-ctl -c {command:?} failed: {}\n{out}",
                o.status
            ))
        }
    }

    /// Reads a process's stdout (ReadStdout answers with what is there)
    /// until it has every one of `want`; the text read.
    fn read_stdout(&mut self, exec_id: &str, want: &[&str]) -> Result<String> {
        let command = format!(
            r#"ReadStdout json://{{"container_id":"{CID}","exec_id":"{exec_id}","len":4096}}"#
        );
        let mut text = String::new();
        for _ in 0..20 {
            text.push_str(&stream_data(&self.run(&command, "good", false)?));
            if want.iter().all(|w| text.contains(w)) {
                return Ok(text);
            }
        }
        Err(format!(
            "{exec_id}'s stdout lacks one of {want:?}: {text:?}"
        ))
    }

    /// Runs `command` and fails unless its output has every one of `want`.
    fn expect(
        &mut self,
        command: &str,
        bundle: &str,
        auto_values: bool,
        want: &[&str],
    ) -> Result<String> {
        let out = self.run(command, bundle, auto_values)?;
        for w in want {
            if !out.contains(w) {
                return Err(format!("agent-ctl -c {command:?}: no {w:?} in\n{out}"));
            }
        }
        Ok(out)
    }
}

/// The bytes of every `data: [..]` in agent-ctl's log of a response (a
/// ReadStream answer prints its data as a list of numbers), as text.
fn stream_data(out: &str) -> String {
    let mut text = Vec::new();
    for part in out.split("data: [").skip(1) {
        let list = part.split(']').next().unwrap_or_default();
        text.extend(list.split(", ").filter_map(|n| n.trim().parse::<u8>().ok()));
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// The container's cgroup in a `cgwatch:` line: its memory.max, cpu.max
/// (space as `/`) and number of processes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    mem: String,
    cpu: String,
    procs: u32,
}

fn watched(line: &str, form: Form) -> Option<Watched> {
    let rest = line
        .strip_prefix("cgwatch: ")?
        .split(&format!(" {}[", form.cgroup()))
        .nth(1)?;
    let fields = rest.split(']').next()?;
    let field = |key: &str| {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(key))
            .map(String::from)
    };
    Some(Watched {
        mem: field("mem=")?,
        cpu: field("cpu=")?,
        procs: field("procs=")?.trim().parse().ok()?,
    })
}

/// Whether agent-ctl's failure is the agent's refusal of the bad bundle:
/// the RPC status message (after `ERROR:`) is the mount source's ENOENT
/// alone, not an error with a cause chain.
fn refused_for_missing_source(out: &str) -> bool {
    out.rsplit_once("ERROR:")
        .and_then(|(_, err)| err.split_once(r#"message: \""#))
        .and_then(|(_, msg)| msg.strip_prefix("No such file or directory (os error 2)"))
        // Then the end of the message, or the agent's backtrace.
        .is_some_and(|rest| rest.starts_with(r#"\""#) || rest.starts_with(r"\\n\\nStack"))
}

/// The host's side of the lifecycle, step by step; each step's result is
/// checked before the next.
fn lifecycle(
    a: &Assets,
    form: Form,
    uds: &Path,
    console: &Console,
    bundles: &Path,
) -> Result<String> {
    let mut ctl = Ctl::new(a, uds, bundles);
    let checks = ctl.wait_serving(Duration::from_millis(200))?;
    ctl.log.drain(..checks - 1);
    if let Some(last) = ctl.log.last_mut() {
        last.push_str(&format!(" (attempt {checks})"));
    }
    ctl.limit = Duration::from_secs(90);
    let cid = CID;
    ctl.run(
        r#"CreateSandbox json://{"sandbox_id":"minos-sandbox"}"#,
        "good",
        false,
    )?;
    // A container whose set-up fails after its cgroup was made: the agent
    // rolls back, and the same id must then work.
    let create = format!(r#"CreateContainer json://{{"image":"local:{{dir}}","id":"{cid}"}}"#);
    let bad = create.replace("{dir}", &bundles.join("bad").to_string_lossy());
    // The agent's answer is the bare ENOENT of the missing mount source
    // (it names no path); any other failure — "Establishing a D-Bus
    // connection" from a missing bus — leaves a different first line.
    // (agent-ctl's log echoes the request, source included: not evidence.)
    match ctl.run(&bad, "bad", false) {
        Err(e) if refused_for_missing_source(&e) => {}
        Err(e) => return Err(format!("the bad bundle failed for another reason: {e}")),
        Ok(out) => {
            return Err(format!(
                "a bundle with a missing mount source was accepted:\n{out}"
            ))
        }
    }
    let good = create.replace("{dir}", &bundles.join("good").to_string_lossy());
    ctl.run(&good, "good", false)?;
    ctl.run(
        &format!(r#"StartContainer json://{{"container_id":"{cid}"}}"#),
        "good",
        false,
    )?;
    // The agent gives each container a cgroup namespace of its own: from
    // inside, its cgroup is the root (cgwatch shows where it is).
    let cgroup_line = "0::/\n";
    ctl.read_stdout(cid, &["container-init-up", cgroup_line])?;
    // Seen from the guest: the container's processes are in its cgroup.
    let what = format!("the container's processes in {}", form.cgroup());
    let (line, _) = console.wait_line(0, Duration::from_secs(30), &what, |l| {
        watched(l, form).is_some_and(|w| w.procs > 0)
    })?;
    ctl.log.push(format!("guest: {line}"));
    let request = bundles.join("exec/request.json");
    ctl.run(
        &format!("ExecProcess file://{}", request.display()),
        "exec",
        false,
    )?;
    ctl.read_stdout("exec1", &["exec-ran", cgroup_line])?;
    ctl.expect(
        &format!(r#"WaitProcess json://{{"container_id":"{cid}","exec_id":"exec1"}}"#),
        "good",
        false,
        &["WaitProcessResponse { status: 3,"],
    )?;
    let stats = ctl.run(
        &format!(r#"StatsContainer json://{{"container_id":"{cid}"}}"#),
        "good",
        false,
    )?;
    check_stats(&stats)?;
    // Resources: 192 MiB, half a CPU; read back in the guest.
    ctl.run(
        &format!(
            r#"UpdateContainer json://{{"container_id":"{cid}","resources":{{"Memory":{{"Limit":201326592}},"CPU":{{"Quota":50000,"Period":100000}}}}}}"#
        ),
        "good",
        false,
    )?;
    let what = format!(
        "{} with memory.max 201326592 and cpu.max 50000 100000",
        form.cgroup()
    );
    console.wait_line(0, Duration::from_secs(30), &what, |l| {
        watched(l, form).is_some_and(|w| w.mem == "201326592" && w.cpu == "50000/100000")
    })?;
    // SIGTERM to the container's init, which has no handler for it: the
    // agent sends SIGKILL instead (as it does under systemd), so the exit
    // status is 128 + 9.
    ctl.run(
        &format!(
            r#"SignalProcess json://{{"container_id":"{cid}","exec_id":"{cid}","signal":15}}"#
        ),
        "good",
        false,
    )?;
    ctl.expect(
        &format!(r#"WaitProcess json://{{"container_id":"{cid}","exec_id":"{cid}"}}"#),
        "good",
        false,
        &["WaitProcessResponse { status: 137,"],
    )?;
    // After the agent answered, agent-ctl cleans up the host-side
    // directories of its own image pulls and fails when they are missing
    // (a local bundle made none): the agent's answer is what counts.
    let remove = format!(r#"RemoveContainer json://{{"container_id":"{cid}"}}"#);
    match ctl.run(&remove, "good", false) {
        Ok(_) => {}
        Err(e) if e.contains(r#""msg":"response received""#) && e.contains("Empty {") => {
            if let Some(last) = ctl.log.last_mut() {
                *last = last.replace(
                    ": failed",
                    ": answered (agent-ctl's own host-side clean-up failed)",
                );
            }
        }
        Err(e) => return Err(e),
    }
    let text = console.text();
    let (gone, _) = console.wait_line(
        text.len(),
        Duration::from_secs(30),
        "the cgroup gone",
        |l| l.starts_with("cgwatch: ") && !l.contains(CGROUP_NAME),
    )?;
    ctl.log.push(format!("after RemoveContainer: {gone}"));
    ctl.run("DestroySandbox", "good", false)?;
    Ok(ctl.log.join("\n"))
}

/// StatsContainer's answer (agent-ctl logs it with Rust's Debug format)
/// has non-zero CPU time, memory usage and task count.
fn check_stats(out: &str) -> Result<()> {
    let number_after = |key: &str| -> Option<u64> {
        let at = out.find(key)? + key.len();
        out.get(at..)?
            .trim_start_matches([' ', ':'])
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let cpu = number_after("CpuUsage { total_usage");
    let memory = number_after("memory_stats: MessageField(Some(MemoryStats { cache: 0, usage: MessageField(Some(MemoryData { usage");
    let pids = number_after("PidsStats { current");
    if [cpu, memory, pids].iter().all(|v| v.is_some_and(|v| v > 0)) {
        Ok(())
    } else {
        Err(format!(
            "StatsContainer: CPU time {cpu:?} ns, memory usage {memory:?}, tasks {pids:?} \
             (all must be non-zero):\n{out}"
        ))
    }
}

/// The scenario's host script.
pub fn script(a: &Assets, form: Form, bundles_dir: &Path) -> Result<HostScript> {
    let _ = std::fs::remove_dir_all(bundles_dir);
    bundles(a, form, bundles_dir)?;
    let (a, dir) = (a.clone(), bundles_dir.to_path_buf());
    Ok(HostScript {
        run: Arc::new(move |uds, console| lifecycle(&a, form, uds, console, &dir)),
        then_stop: false,
    })
}

/// The bench's host side with the real agent (`cargo xtask bench`): polls
/// the health check from power-on as the runtime does, then asks the agent
/// for its metrics at once and 1 s later, and ends with `DestroySandbox`
/// (the host then stops the VM, as the runtime does). Its answer is one
/// line: `health_check_host_ms=N checks=N mem_ready_kib=N mem_late_kib=N`.
pub fn bench_script(a: &Assets, bundles_dir: &Path) -> Result<HostScript> {
    let _ = std::fs::remove_dir_all(bundles_dir);
    bundles(a, Form::Cgroupfs, bundles_dir)?;
    let (a, dir) = (a.clone(), bundles_dir.to_path_buf());
    Ok(HostScript {
        run: Arc::new(move |uds, console| measure(&a, uds, &dir, console.started)),
        then_stop: true,
    })
}

fn measure(a: &Assets, uds: &Path, bundles: &Path, start: Instant) -> Result<String> {
    let mut ctl = Ctl::new(a, uds, bundles);
    let checks = ctl.wait_serving(Duration::from_millis(5))?;
    ctl.limit = Duration::from_secs(90);
    let check_ms = start.elapsed().as_secs_f64() * 1000.0;
    let ready = guest_mem_used(&ctl.run("GetMetrics", "good", false)?)?;
    std::thread::sleep(Duration::from_secs(1));
    let late = guest_mem_used(&ctl.run("GetMetrics", "good", false)?)?;
    // Answered or not (an agent as init may not answer before it ends),
    // the host stops the VM next.
    let _ = ctl.run("DestroySandbox", "good", false);
    Ok(format!(
        "health_check_host_ms={check_ms:.0} checks={checks} mem_ready_kib={ready} mem_late_kib={late}"
    ))
}

/// MemTotal − MemFree (KiB) from a GetMetrics answer as agent-ctl logs it:
/// the agent's `kata_guest_meminfo{item="mem_total"}` and `mem_free`
/// gauges (bytes), in text quoted once or more.
pub fn guest_mem_used(out: &str) -> Result<u64> {
    let plain: String = out.chars().filter(|c| *c != '\\' && *c != '"').collect();
    let gauge = |item: &str| -> Result<u64> {
        let key = format!("kata_guest_meminfo{{item={item}}} ");
        let at = plain.find(&key).ok_or_else(|| {
            format!("no kata_guest_meminfo {item} in the GetMetrics answer:\n{out}")
        })?;
        let rest = plain.get(at + key.len()..).unwrap_or_default();
        let digits: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
            .collect();
        digits
            .parse::<f64>()
            .map(|v| v as u64)
            .map_err(|e| format!("kata_guest_meminfo {item}: {digits:?}: {e}"))
    };
    let (total, free) = (gauge("mem_total")?, gauge("mem_free")?);
    total
        .checked_sub(free)
        .map(|used| used / 1024)
        .ok_or_else(|| format!("mem_free {free} above mem_total {total}"))
}

/// What the guest's console must show after the lifecycle: the container's
/// cgroup appeared where this form puts it, then nothing of it was left.
pub fn check_console(form: Form, osbuilder: bool, console: &str) -> Result<()> {
    let watch: Vec<&str> = console
        .lines()
        .filter(|l| l.starts_with("cgwatch: "))
        .collect();
    let cg = form.cgroup();
    let seen = watch
        .iter()
        .any(|l| watched(l, form).is_some_and(|w| w.procs > 0));
    let last = watch.last().copied().unwrap_or_default();
    if !seen {
        return Err(format!(
            "the guest's cgroup tree never had processes in {cg}:\n{}",
            watch.join("\n")
        ));
    }
    if last.contains(CGROUP_NAME) {
        return Err(format!("the container's cgroup was left behind: {last}"));
    }
    if console.contains("Read-only file system") {
        return Err("something in the guest failed on the read-only root".into());
    }
    let started =
        |unit: &str| console.contains(&format!("timeline event=unit_started unit={unit} "));
    let busd = started("busd.service");
    if osbuilder {
        // On a base with dbus-daemon, busd joins that bus at boot (after
        // the agent), which starts dbus-daemon through the base's
        // dbus.socket; in the systemd form the scope is busd's.
        let dbus = started("dbus.service");
        if !busd || !dbus {
            return Err(format!(
                "on the osbuilder rootfs busd.service (started: {busd}) and the base's \
                 dbus.service (started: {dbus}) must both run"
            ));
        }
        if form == Form::Systemd && !console.contains("busd: kata-test1.scope: started in") {
            return Err("busd never started the container's scope".into());
        }
        return Ok(());
    }
    // busd is socket-activated: started by the agent's first D-Bus call
    // (systemd form), never started without one.
    match form {
        Form::Systemd if !busd => {
            Err("busd.service was not started by the agent's connection".into())
        }
        Form::Cgroupfs if busd => {
            Err("busd.service was started though nothing used the bus".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_bad_bundle_is_refused_for_its_mount_source_only() {
        // agent-ctl's output as the VM tests saw it (request echo cut).
        let request = r#"{"msg":"sending request","request":"CreateContainerRequest { source: Some(\"/nonexistent-minos-test\") }"}"#;
        let refusal = r#"ERROR: Error {
    context: "API failed",
    source: "RpcStatus(Status { code: INTERNAL, message: \"No such file or directory (os error 2)\\n\\nStack backtrace:\\n   0: <unknown>\", details: [] })","#;
        let no_bus = r#"ERROR: Error {
    context: "API failed",
    source: "RpcStatus(Status { code: INTERNAL, message: \"Establishing a D-Bus connection\\n\\nCaused by:\\n    0: I/O error: No such file or directory (os error 2)\", details: [] })","#;
        assert!(refused_for_missing_source(&format!("{request}\n{refusal}")));
        assert!(!refused_for_missing_source(&format!("{request}\n{no_bus}")));
        assert!(!refused_for_missing_source(request));
        // An agent without backtraces ends the message there.
        let bare = r#"ERROR: Error { source: "RpcStatus(Status { code: INTERNAL, message: \"No such file or directory (os error 2)\", details: [] })" }"#;
        assert!(refused_for_missing_source(bare));
    }

    #[test]
    fn guest_memory_from_a_get_metrics_answer_quoted_twice() {
        // As agent-ctl logs it: the response's Debug form inside a JSON string.
        let out = r##"{"msg":"response received","response":"GetMetricsResponse { metrics: \"# TYPE kata_guest_meminfo gauge\\nkata_guest_meminfo{item=\\\"mem_free\\\"} 2.04e9\\nkata_guest_meminfo{item=\\\"mem_total\\\"} 2055651328\\n\" }"}"##;
        assert_eq!(
            guest_mem_used(out).unwrap(),
            (2_055_651_328 - 2_040_000_000) / 1024
        );
        assert!(guest_mem_used("no metrics")
            .unwrap_err()
            .contains("mem_total"));
        let upside = out.replace("2.04e9", "3e9");
        assert!(guest_mem_used(&upside).unwrap_err().contains("above"));
    }
    use super::*;

    #[test]
    fn stats_need_memory_and_tasks() {
        // As agent-ctl logged it (shortened).
        let ok = "StatsContainerResponse { cgroup_stats: MessageField(Some(CgroupStats { cpu_stats: \
                  MessageField(Some(CpuStats { cpu_usage: MessageField(Some(CpuUsage { total_usage: 8249000, \
                  percpu_usage: [] })) })), memory_stats: MessageField(Some(MemoryStats { cache: 0, usage: \
                  MessageField(Some(MemoryData { usage: 286720, max_usage: 749568 })) })), pids_stats: \
                  MessageField(Some(PidsStats { current: 1, limit: 0 }))";
        assert!(check_stats(ok).is_ok());
        assert!(check_stats(&ok.replace("current: 1", "current: 0")).is_err());
        assert!(check_stats(&ok.replace("usage: 286720", "usage: 0")).is_err());
        assert!(check_stats("response: StatsContainerResponse { }").is_err());
    }

    #[test]
    fn console_checks_see_the_cgroup_and_its_removal() {
        let running = "cgwatch: { /kata /kata/test1[mem=max,cpu=max/100000,procs=1] }";
        assert_eq!(
            watched(running, Form::Cgroupfs),
            Some(Watched {
                mem: "max".into(),
                cpu: "max/100000".into(),
                procs: 1
            })
        );
        assert_eq!(watched(running, Form::Systemd), None);
        let c = format!("{running}\ncgwatch: {{ /kata }}\n");
        assert!(check_console(Form::Cgroupfs, false, &c).is_ok());
        let started = "minos-init: timeline event=unit_started unit=busd.service boottime_us=1\n";
        assert!(check_console(Form::Cgroupfs, false, &format!("{started}{c}")).is_err());
        let scope = "cgwatch: { /system.slice /system.slice/kata-test1.scope[mem=max,cpu=max/100000,procs=2] }\n\
                     cgwatch: { /system.slice }\n";
        assert!(
            check_console(Form::Systemd, false, scope).is_err(),
            "busd not started"
        );
        assert!(check_console(Form::Systemd, false, &format!("{started}{scope}")).is_ok());
        assert!(check_console(Form::Systemd, false, &c).is_err());
        assert!(check_console(Form::Cgroupfs, false, &format!("{running}\n")).is_err());
        let empty = "cgwatch: { /kata /kata/test1[mem=max,cpu=max/100000,procs=0] }\n";
        assert!(check_console(Form::Cgroupfs, false, empty).is_err());
        // On the osbuilder rootfs busd and dbus-daemon run in both forms.
        let dbus = "minos-init: timeline event=unit_started unit=dbus.service boottime_us=2\n";
        let both = format!("{started}{dbus}");
        assert!(check_console(Form::Cgroupfs, true, &format!("{both}{c}")).is_ok());
        assert!(check_console(Form::Cgroupfs, true, &format!("{started}{c}")).is_err());
        let busd_scope = "busd: kata-test1.scope: started in /system.slice/kata-test1.scope\n";
        assert!(check_console(Form::Systemd, true, &format!("{both}{scope}")).is_err());
        assert!(check_console(Form::Systemd, true, &format!("{both}{busd_scope}{scope}")).is_ok());
    }
}
