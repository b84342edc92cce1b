//! `systemctl` as scripts and operators use it: the verbs, options, output
//! and exit codes of systemd's, for what minos init has (systemctl(1),
//! "Exit status": 0 success, 1 failure or not running, 3 a unit not
//! active, 4 no such unit).
//!
//! Unit states come from init's control socket (the `units` request, one
//! tab-separated line per unit); `is-enabled` reads the unit directories.

use std::path::{Path, PathBuf};

use crate::supervisor::PowerKind;
use crate::{cli, control, search, CONTROL_SOCKET};

const HELP: &str = "\
systemctl [OPTIONS...] COMMAND [UNIT...]   (minos init's systemctl)

  status [UNIT...]       the unit table, or each UNIT's state (exit 3: not active, 4: unknown)
  list-units             loaded units (--all: also inactive; --failed; --type=TYPE)
  is-active UNIT...      print ActiveState; exit 0 if any is active
  is-failed UNIT...      print ActiveState; exit 0 if any has failed
  is-enabled UNIT...     enabled, static, disabled or masked, from the unit files
  show [-p PROP,...] [--value] UNIT...
                         Id Description LoadState ActiveState SubState MainPID
                         NRestarts ExecMainStatus Result
  is-system-running      running, starting, degraded, stopping or offline
  poweroff|reboot|halt   (-f: at once after stopping units' processes, -ff: right away)

  -q --quiet  -a --all  --failed  -t --type=TYPE  -p --property=PROP  -P PROP  --value
  --no-pager --no-legend --plain --no-block --system (accepted)  -h --help  --version
";

/// The properties `show` knows, in its order.
const PROPERTIES: [&str; 9] = [
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "NRestarts",
    "ExecMainStatus",
    "Result",
];

/// One unit as init reports it (a line of the `units` answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub name: String,
    pub active: String,
    pub sub: String,
    pub main_pid: String,
    pub restarts: String,
    pub exec_main_status: String,
    pub result: String,
    /// Milliseconds since it became active, or `-`.
    pub up_ms: String,
    pub description: String,
}

impl UnitState {
    /// What `show` says of a unit init does not have.
    fn not_found(name: &str) -> UnitState {
        UnitState {
            name: name.to_owned(),
            active: "inactive".into(),
            sub: "dead".into(),
            main_pid: "0".into(),
            restarts: "0".into(),
            exec_main_status: "0".into(),
            result: "success".into(),
            up_ms: "-".into(),
            description: String::new(),
        }
    }

    fn property(&self, name: &str, found: bool) -> Option<String> {
        Some(match name {
            "Id" => self.name.clone(),
            "Description" => self.description.clone(),
            "LoadState" => if found { "loaded" } else { "not-found" }.into(),
            "ActiveState" => self.active.clone(),
            "SubState" => self.sub.clone(),
            "MainPID" => self.main_pid.clone(),
            "NRestarts" => self.restarts.clone(),
            "ExecMainStatus" => self.exec_main_status.clone(),
            "Result" => self.result.clone(),
            _ => return None,
        })
    }
}

/// Init's `units` answer: the system state and the units.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Units {
    pub system: String,
    pub units: Vec<UnitState>,
}

impl Units {
    /// Parses a `units` answer; lines that do not fit are skipped.
    pub fn parse(text: &str) -> Units {
        let mut out = Units::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f.as_slice() {
                ["system", state] => out.system = (*state).to_owned(),
                [name, active, sub, pid, restarts, status, result, up, description] => {
                    out.units.push(UnitState {
                        name: (*name).to_owned(),
                        active: (*active).to_owned(),
                        sub: (*sub).to_owned(),
                        main_pid: (*pid).to_owned(),
                        restarts: (*restarts).to_owned(),
                        exec_main_status: (*status).to_owned(),
                        result: (*result).to_owned(),
                        up_ms: (*up).to_owned(),
                        description: (*description).to_owned(),
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// `init status --json`: `{"system": STATE, "units": [{PROPERTY: value}]}`
    /// with `show`'s property names; numbers as numbers.
    pub fn to_json(&self) -> String {
        let mut s = format!(
            "{{\"system\":{},\"units\":[",
            minos_common::json::string(&self.system)
        );
        for (i, u) in self.units.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('{');
            for (j, p) in PROPERTIES.iter().enumerate() {
                let v = u.property(p, true).unwrap_or_default();
                let numeric = matches!(*p, "MainPID" | "NRestarts" | "ExecMainStatus")
                    && v.parse::<i64>().is_ok();
                let v = if numeric {
                    v
                } else {
                    minos_common::json::string(&v)
                };
                s.push_str(&format!("{}\"{p}\":{v}", if j > 0 { "," } else { "" }));
            }
            let up = u
                .up_ms
                .parse::<u64>()
                .map_or("null".into(), |ms| ms.to_string());
            s.push_str(&format!(",\"ActiveMilliseconds\":{up}}}"));
        }
        s.push_str("]}");
        s
    }

    fn find(&self, name: &str) -> Option<&UnitState> {
        self.units.iter().find(|u| u.name == name)
    }
}

/// `kata-agent` means `kata-agent.service`, as for systemctl.
pub fn unit_name(name: &str) -> String {
    if search::unit_type(name).is_some() {
        name.to_owned()
    } else {
        format!("{name}.service")
    }
}

/// The command line: options anywhere, the verb first of the rest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub verb: Option<String>,
    pub units: Vec<String>,
    pub quiet: bool,
    pub all: bool,
    pub failed: bool,
    pub types: Vec<String>,
    pub properties: Vec<String>,
    pub value: bool,
    pub no_legend: bool,
    pub forces: usize,
    pub help: bool,
    pub version: bool,
}

impl Args {
    /// Parses `args` (after argv[0]); an unknown option is an error naming it.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let mut a = Args::default();
        let mut words = args.iter();
        let mut positional = Vec::new();
        while let Some(word) = words.next() {
            let (key, inline) = match word.split_once('=') {
                Some((k, v)) if k.starts_with("--") => (k, Some(v.to_owned())),
                _ => (word.as_str(), None),
            };
            let mut value = |what: &str| -> Result<String, String> {
                inline
                    .clone()
                    .or_else(|| words.next().cloned())
                    .ok_or_else(|| format!("option '{what}' requires an argument"))
            };
            let list = |v: String| -> Vec<String> {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            match key {
                "-q" | "--quiet" => a.quiet = true,
                "-a" | "--all" => a.all = true,
                "--failed" => a.failed = true,
                "--state" => a.failed |= list(value(key)?).iter().any(|s| s == "failed"),
                "-t" | "--type" => a.types.extend(list(value(key)?)),
                "-p" | "--property" => a.properties.extend(list(value(key)?)),
                "-P" => {
                    a.properties.extend(list(value(key)?));
                    a.value = true;
                }
                "--value" => a.value = true,
                "--no-legend" => a.no_legend = true,
                "-f" | "--force" => a.forces += 1,
                "-ff" => a.forces += 2,
                "-h" | "--help" => a.help = true,
                "--version" => a.version = true,
                "--no-pager" | "--plain" | "--no-block" | "--system" | "--full" | "-l" => {}
                _ if key.starts_with('-') && key.len() > 1 => {
                    return Err(format!("unrecognized option '{word}'"))
                }
                _ => positional.push(word.clone()),
            }
        }
        let mut positional = positional.into_iter();
        a.verb = positional.next();
        a.units = positional.collect();
        Ok(a)
    }
}

/// `systemctl ARGS`; returns the exit status. Never inlined: `cli::main`
/// runs on PID 1's boot path, whose code is laid out in first-run order
/// (docs/conventions.md), and should not carry the client's code with it.
#[inline(never)]
#[cold]
pub fn main(args: &[String]) -> i32 {
    let a = match Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("systemctl: {e}\n(systemctl --help lists what minos init's takes)");
            return 1;
        }
    };
    if a.help {
        print!("{HELP}");
        return 0;
    }
    if a.version {
        println!("minos init {} (systemctl)", minos_common::version());
        return 0;
    }
    let verb = a.verb.as_deref().unwrap_or("list-units");
    let kind = match verb {
        "poweroff" => PowerKind::Poweroff,
        "reboot" => PowerKind::Reboot,
        "halt" => PowerKind::Halt,
        "is-enabled" => return print(is_enabled(&a, &search_dirs())),
        "status" if a.units.is_empty() => return cli::status(),
        "status" | "list-units" | "is-active" | "is-failed" | "show" | "is-system-running" => {
            let text = match control::request(Path::new(CONTROL_SOCKET), "units") {
                Ok(text) if !text.starts_with("error:") => text,
                Ok(text) => {
                    eprint!("systemctl: {text}");
                    return 1;
                }
                Err(e) if verb == "is-system-running" => {
                    // As systemd's when no init answers.
                    if !a.quiet {
                        println!("offline");
                    }
                    log::debug!("connect to {CONTROL_SOCKET}: {e}");
                    return 1;
                }
                Err(e) => {
                    eprintln!("systemctl: connect to {CONTROL_SOCKET}: {e}");
                    return 1;
                }
            };
            return print(answer(verb, &a, &Units::parse(&text)));
        }
        other => {
            eprintln!(
                "systemctl: {other}: not supported by minos init (systemctl --help lists what is)"
            );
            return 1;
        }
    };
    cli::power(kind, a.forces)
}

/// What a verb prints: stdout, stderr, exit status.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub out: String,
    pub err: String,
    pub code: i32,
}

fn print(answer: Answer) -> i32 {
    print!("{}", answer.out);
    eprint!("{}", answer.err);
    answer.code
}

/// The verbs that read init's unit states, on `units` (pure, for tests).
pub fn answer(verb: &str, a: &Args, units: &Units) -> Answer {
    let mut ans = Answer::default();
    let names: Vec<String> = a.units.iter().map(|u| unit_name(u)).collect();
    if names.is_empty() && matches!(verb, "is-active" | "is-failed" | "show") {
        ans.err = "Too few arguments.\n".into();
        ans.code = 1;
        return ans;
    }
    let say = |ans: &mut Answer, line: &str| {
        if !a.quiet {
            ans.out.push_str(line);
            ans.out.push('\n');
        }
    };
    match verb {
        "is-system-running" => {
            say(&mut ans, &units.system);
            ans.code = i32::from(units.system != "running");
        }
        "is-active" | "is-failed" => {
            let want = if verb == "is-active" {
                "active"
            } else {
                "failed"
            };
            let mut any = false;
            for name in &names {
                let state = units.find(name).map_or("inactive", |u| u.active.as_str());
                any |= state == want;
                say(&mut ans, state);
            }
            // is-active: 3 as systemd's "program is not running"; is-failed: 1.
            ans.code = match (any, verb) {
                (true, _) => 0,
                (false, "is-active") => 3,
                (false, _) => 1,
            };
        }
        "show" => {
            let props: Vec<&str> = if a.properties.is_empty() {
                PROPERTIES.to_vec()
            } else {
                a.properties.iter().map(String::as_str).collect()
            };
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    ans.out.push('\n');
                }
                let found = units.find(name);
                let unit = found.cloned().unwrap_or_else(|| UnitState::not_found(name));
                for p in &props {
                    if let Some(v) = unit.property(p, found.is_some()) {
                        ans.out
                            .push_str(&if a.value { v } else { format!("{p}={v}") });
                        ans.out.push('\n');
                    }
                }
            }
        }
        "status" => {
            for name in &names {
                let Some(u) = units.find(name) else {
                    ans.err
                        .push_str(&format!("Unit {name} could not be found.\n"));
                    ans.code = 4;
                    continue;
                };
                if !ans.out.is_empty() {
                    ans.out.push('\n');
                }
                ans.out.push_str(&status_block(u));
                if u.active != "active" && ans.code == 0 {
                    ans.code = 3;
                }
            }
        }
        _ => ans.out = list_units(a, units),
    }
    ans
}

/// `status UNIT`'s block, systemd's layout.
fn status_block(u: &UnitState) -> String {
    let dot = match u.active.as_str() {
        "active" => "●",
        "failed" => "×",
        _ => "○",
    };
    let mut s = format!("{dot} {}", u.name);
    if !u.description.is_empty() {
        s.push_str(&format!(" - {}", u.description));
    }
    s.push_str("\n     Loaded: loaded\n     Active: ");
    if u.active == "failed" {
        s.push_str(&format!("failed (Result: {})", u.result));
    } else {
        s.push_str(&format!("{} ({})", u.active, u.sub));
    }
    if let Ok(ms) = u.up_ms.parse::<u64>() {
        s.push_str(&format!(" for {}.{:03}s", ms / 1000, ms % 1000));
    }
    s.push('\n');
    if u.main_pid != "0" {
        s.push_str(&format!("   Main PID: {}\n", u.main_pid));
    }
    if u.restarts != "0" {
        s.push_str(&format!("   Restarts: {}\n", u.restarts));
    }
    s
}

/// `list-units`: active, activating and failed units (all with `--all`),
/// `--failed` ones only, of `--type`s.
fn list_units(a: &Args, units: &Units) -> String {
    let shown: Vec<&UnitState> = units
        .units
        .iter()
        .filter(|u| a.all || u.active != "inactive")
        .filter(|u| !a.failed || u.active == "failed")
        .filter(|u| {
            a.types.is_empty()
                || search::unit_type(&u.name).is_some_and(|t| a.types.iter().any(|w| w == t))
        })
        .collect();
    let width = shown.iter().map(|u| u.name.len()).max().unwrap_or(4).max(4);
    let mut s = String::new();
    let row = |s: &mut String, c: [&str; 5]| {
        s.push_str(
            format!(
                "{:<width$} {:<6} {:<12} {:<12} {}",
                c[0], c[1], c[2], c[3], c[4]
            )
            .trim_end(),
        );
        s.push('\n');
    };
    if !a.no_legend {
        row(&mut s, ["UNIT", "LOAD", "ACTIVE", "SUB", "DESCRIPTION"]);
    }
    for u in &shown {
        row(
            &mut s,
            [&u.name, "loaded", &u.active, &u.sub, &u.description],
        );
    }
    if !a.no_legend {
        s.push_str(&format!("\n{} loaded units listed.\n", shown.len()));
    }
    s
}

/// The unit directories `is-enabled` reads.
fn search_dirs() -> Vec<PathBuf> {
    search::SEARCH_PATH.iter().map(PathBuf::from).collect()
}

/// `is-enabled`: `masked` (a link to /dev/null), `enabled` (named in a
/// `.wants/` or `.requires/` directory), `disabled` (an `[Install]`
/// section, not linked), `static` (neither); exit 0 when every unit is
/// enabled or static.
pub fn is_enabled(a: &Args, dirs: &[PathBuf]) -> Answer {
    let mut ans = Answer::default();
    if a.units.is_empty() {
        ans.err = "Too few arguments.\n".into();
        ans.code = 1;
        return ans;
    }
    let index = search::Index::build(dirs);
    for unit in &a.units {
        let name = unit_name(unit);
        let state = match index.lookup(&name) {
            search::Found::Missing => {
                ans.err.push_str(&format!(
                    "Failed to get unit file state for {name}: No such file or directory\n"
                ));
                ans.code = 1;
                continue;
            }
            search::Found::Masked(_) => "masked",
            search::Found::File { name, path, .. } => {
                if linked(dirs, &name) {
                    "enabled"
                } else if installable(&path) {
                    "disabled"
                } else {
                    "static"
                }
            }
        };
        if !matches!(state, "enabled" | "static") {
            ans.code = 1;
        }
        if !a.quiet {
            ans.out.push_str(state);
            ans.out.push('\n');
        }
    }
    ans
}

/// Whether some `*.wants/` or `*.requires/` directory in `dirs` names `unit`.
fn linked(dirs: &[PathBuf], unit: &str) -> bool {
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with(".wants") || n.ends_with(".requires")
        })
        .any(|e| std::fs::symlink_metadata(e.path().join(unit)).is_ok())
}

/// Whether the unit file has an `[Install]` section with something in it
/// that `systemctl enable` would act on.
fn installable(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut install = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            install = line == "[Install]";
        } else if install
            && ["WantedBy", "RequiredBy", "UpheldBy", "Alias", "Also"]
                .iter()
                .any(|k| line.split('=').next().map(str::trim) == Some(*k))
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS: &str = "system\tdegraded\n\
        kata-agent.service\tactive\trunning\t42\t1\t0\tsuccess\t1500\tKata Containers Agent\n\
        chronyd.service\tfailed\tfailed\t0\t0\t3\texit-code\t-\tNTP\n\
        once.service\tinactive\tdead\t0\t0\t0\tsuccess\t-\t\n\
        kata.socket\tactive\tlistening\t0\t0\t0\tsuccess\t9\t\n";

    fn args(words: &[&str]) -> Args {
        Args::parse(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn run(words: &[&str]) -> Answer {
        let a = args(words);
        answer(
            a.verb.as_deref().unwrap_or("list-units"),
            &a,
            &Units::parse(UNITS),
        )
    }

    #[test]
    fn options_anywhere_and_unknown_ones_refused() {
        let a = args(&[
            "--quiet",
            "is-active",
            "kata-agent",
            "--type=service",
            "-p",
            "A,B",
        ]);
        assert_eq!(a.verb.as_deref(), Some("is-active"));
        assert_eq!(a.units, ["kata-agent"]);
        assert!(a.quiet);
        assert_eq!(a.types, ["service"]);
        assert_eq!(a.properties, ["A", "B"]);
        let err = Args::parse(&["--bogus".to_string()]).unwrap_err();
        assert_eq!(err, "unrecognized option '--bogus'");
        let err = Args::parse(&["show".to_string(), "-p".to_string()]).unwrap_err();
        assert_eq!(err, "option '-p' requires an argument");
    }

    #[test]
    fn is_active_and_is_failed_as_systemd() {
        let ok = run(&["is-active", "kata-agent"]);
        assert_eq!((ok.out.as_str(), ok.code), ("active\n", 0));
        let no = run(&["is-active", "--quiet", "chronyd.service"]);
        assert_eq!((no.out.as_str(), no.code), ("", 3));
        // Any active one is enough; unknown units are inactive.
        let some = run(&["is-active", "nosuch", "kata-agent"]);
        assert_eq!((some.out.as_str(), some.code), ("inactive\nactive\n", 0));
        let failed = run(&["is-failed", "chronyd"]);
        assert_eq!((failed.out.as_str(), failed.code), ("failed\n", 0));
        let not = run(&["is-failed", "kata-agent"]);
        assert_eq!((not.out.as_str(), not.code), ("active\n", 1));
        let none = run(&["is-active"]);
        assert_eq!((none.err.as_str(), none.code), ("Too few arguments.\n", 1));
    }

    #[test]
    fn status_of_units_exits_3_when_one_is_not_active_and_4_when_unknown() {
        let ok = run(&["status", "kata-agent"]);
        assert_eq!(ok.code, 0);
        assert_eq!(
            ok.out,
            "● kata-agent.service - Kata Containers Agent\n     Loaded: loaded\n     \
             Active: active (running) for 1.500s\n   Main PID: 42\n   Restarts: 1\n"
        );
        let failed = run(&["status", "kata-agent", "chronyd"]);
        assert_eq!(failed.code, 3);
        assert!(
            failed.out.contains("× chronyd.service - NTP\n     Loaded: loaded\n     Active: failed (Result: exit-code)\n"),
            "{}",
            failed.out
        );
        let unknown = run(&["status", "nosuch"]);
        assert_eq!(unknown.code, 4);
        assert_eq!(unknown.err, "Unit nosuch.service could not be found.\n");
    }

    #[test]
    fn show_properties() {
        let all = run(&["show", "kata-agent"]);
        assert_eq!(
            all.out,
            "Id=kata-agent.service\nDescription=Kata Containers Agent\nLoadState=loaded\n\
             ActiveState=active\nSubState=running\nMainPID=42\nNRestarts=1\n\
             ExecMainStatus=0\nResult=success\n"
        );
        let some = run(&["show", "-p", "ActiveState,Result,Nope", "chronyd"]);
        assert_eq!(some.out, "ActiveState=failed\nResult=exit-code\n");
        let value = run(&["show", "-P", "MainPID", "kata-agent"]);
        assert_eq!(value.out, "42\n");
        let missing = run(&["show", "-p", "LoadState,ActiveState", "nosuch"]);
        assert_eq!(
            (missing.out.as_str(), missing.code),
            ("LoadState=not-found\nActiveState=inactive\n", 0)
        );
    }

    #[test]
    fn is_system_running_and_list_units() {
        let state = run(&["is-system-running"]);
        assert_eq!((state.out.as_str(), state.code), ("degraded\n", 1));
        let list = run(&["list-units"]);
        assert!(list.out.starts_with("UNIT"), "{}", list.out);
        assert!(
            list.out.contains("kata-agent.service loaded active"),
            "{}",
            list.out
        );
        assert!(!list.out.contains("once.service"), "{}", list.out);
        assert!(
            list.out.ends_with("\n3 loaded units listed.\n"),
            "{}",
            list.out
        );
        assert!(run(&["list-units", "--all"]).out.contains("once.service"));
        let failed = run(&["list-units", "--failed", "--no-legend"]);
        assert_eq!(
            failed.out,
            "chronyd.service loaded failed       failed       NTP\n"
        );
        let sockets = run(&["list-units", "--type=socket", "--no-legend"]);
        assert_eq!(sockets.out, "kata.socket loaded active       listening\n");
    }

    #[test]
    fn json_status() {
        let units = Units::parse(
            "system\trunning\na.service\tactive\trunning\t7\t0\t0\tsuccess\t12\tSay \"hi\"\\\n",
        );
        assert_eq!(
            units.to_json(),
            "{\"system\":\"running\",\"units\":[{\"Id\":\"a.service\",\"Description\":\"Say \\\"hi\\\"\\\\\",\
             \"LoadState\":\"loaded\",\"ActiveState\":\"active\",\"SubState\":\"running\",\
             \"MainPID\":7,\"NRestarts\":0,\"ExecMainStatus\":0,\"Result\":\"success\",\
             \"ActiveMilliseconds\":12}]}"
        );
    }

    #[test]
    fn is_enabled_reads_the_unit_files() {
        let dir = std::env::temp_dir().join(format!("systemctl-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let units = dir.join("units");
        std::fs::create_dir_all(units.join("multi-user.target.wants")).unwrap();
        std::fs::write(
            units.join("plain.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        std::fs::write(
            units.join("off.service"),
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        std::fs::write(
            units.join("on.service"),
            "[Install]\nWantedBy=multi-user.target\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../on.service",
            units.join("multi-user.target.wants/on.service"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/dev/null", units.join("gone.service")).unwrap();
        let dirs = [units];
        let check = |words: &[&str]| is_enabled(&args(words), &dirs);
        let a = check(&["is-enabled", "plain", "on.service"]);
        assert_eq!((a.out.as_str(), a.code), ("static\nenabled\n", 0));
        let a = check(&["is-enabled", "off"]);
        assert_eq!((a.out.as_str(), a.code), ("disabled\n", 1));
        let a = check(&["is-enabled", "gone"]);
        assert_eq!((a.out.as_str(), a.code), ("masked\n", 1));
        let a = check(&["is-enabled", "--quiet", "nosuch"]);
        assert_eq!(a.code, 1);
        assert_eq!(
            a.err,
            "Failed to get unit file state for nosuch.service: No such file or directory\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
