//! Which units a boot reads and starts.
//!
//! The unit named by `systemd.unit=`/`init.unit=` (else `default.target`)
//! is looked up in the unit search path ([`crate::search`]) and everything it
//! pulls in is read — `Requires=`, `Wants=`, the `.requires/` and `.wants/`
//! directories, a socket unit's service — breadth first, required units
//! before wanted ones, so that the units a target requires come first in
//! the start order (Kata's target requires the agent and only wants the
//! time service). Nothing else is opened.
//!
//! Before the first service's fork only what the named unit requires is
//! read; what is only wanted, socket units, `.wants/` directories and a
//! target's drop-ins and `.requires/` wait for [`Later`] (right after that
//! fork, or before any service in a container), unless a unit read at boot
//! is ordered against one of them or requires it.
//!
//! What init does itself is not loaded: `sysinit.target` (init's early boot
//! mounts, names and sets up what its units do under systemd) and
//! systemd's own units (`systemd-*`, which need systemd as PID 1) when
//! pulled in by another unit; nor are unit types init does not run
//! (`.mount`, `.timer` …).
//!
//! When the named unit is found nowhere (minos's own images have no
//! `kata-containers.target`), every service and socket unit of
//! `/etc/minos/units` starts: that directory holds the enabled ones (the
//! services named like its socket units wait with them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use crate::cmdline::BootConfig;
use crate::names::NameIndex;
use crate::search::{self, Found, Index};
use crate::supervisor;
use crate::unit::{self, Severity, Unit};
use crate::Mode;

/// What the boot's selection is made from, besides the units.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Each target read: the units it requires, then those it wants.
    pub targets: BTreeMap<String, Vec<String>>,
    /// Unit files that could not be read or parsed.
    pub broken: Vec<String>,
    /// Names left to init's own boot (`sysinit.target`, `systemd-*`): a
    /// `Requires=` on one of them holds.
    pub by_init: Vec<String>,
}

/// Reads the boot's units from the directories of `search` (highest
/// precedence first, the first being minos's own) and selects the ones to
/// start ([`select`]); what is left for after the first fork, if any.
/// `generators`: at boot, `Some(skip_run)` runs the unit generators first
/// (unless minos's own directory is self-contained; `skip_run` leaves out
/// `/run/...`); `None` in tests.
pub fn load_units(
    search: &[PathBuf],
    cfg: &BootConfig,
    mode: Mode,
    generators: Option<bool>,
) -> (Vec<Unit>, Option<Later>) {
    let (mut loader, sel_cfg) = read_boot_units_with(search, cfg, generators.map(|s| (mode, s)));
    let units = loader.select(&sel_cfg);
    if loader.deferred.is_empty() {
        return (units, None);
    }
    let later = Later {
        loader,
        cfg: sel_cfg,
        mode,
    };
    (units, Some(later))
}

/// Reads what the boot needs now; the configuration to select with (the
/// named unit through its alias, or none when it is found nowhere).
#[cfg(test)]
fn read_boot_units(search: &[PathBuf], cfg: &BootConfig) -> (Loader, BootConfig) {
    read_boot_units_with(search, cfg, None)
}

fn read_boot_units_with(
    search: &[PathBuf],
    cfg: &BootConfig,
    generators: Option<(Mode, bool)>,
) -> (Loader, BootConfig) {
    let mut index = Index::build(search);
    if let Some((mode, skip_run)) = generators.filter(|_| !index.alone) {
        if let Some(outs) = crate::generators::run(mode, skip_run) {
            let (spliced, positions) = crate::generators::splice(search, &outs);
            index = Index::build(&spliced).with_generated(positions);
        }
    }
    let mut loader = Loader::new(index, cfg);
    let wanted = cfg.wants.iter().map(|w| (w.clone(), true));
    let selected = cfg.unit.as_deref().unwrap_or("default.target");
    let found = match loader.index.lookup(selected) {
        Found::Masked(path) => {
            log::error!(
                "{selected}: masked ({} links to /dev/null); starting the units of {} instead",
                path.display(),
                crate::UNITS_DIR
            );
            None
        }
        Found::Missing => None,
        Found::File { name, .. }
            if search::unit_type(&name).is_some_and(|t| search::TYPES.contains(&t)) =>
        {
            Some(name)
        }
        Found::File { name, .. } => {
            log::error!(
                "{selected}: init does not run {name}'s unit type; starting the units of {} instead",
                crate::UNITS_DIR
            );
            None
        }
    };
    let mut sel_cfg = cfg.clone();
    let own = loader.index.units_in(0);
    let queue: Vec<(String, bool)> = match found {
        Some(root) => {
            sel_cfg.unit = Some(root.clone());
            // minos's own socket units start at every boot, whatever the
            // target (the directory holds the enabled ones).
            let sockets = own
                .iter()
                .filter(|(n, _, _)| n.ends_with(".socket"))
                .map(|(n, _, _)| (n.clone(), true));
            std::iter::once((root, true))
                .chain(wanted)
                .chain(sockets)
                .collect()
        }
        None => {
            // Named nowhere: every service and socket of minos's directory.
            sel_cfg.unit = None;
            let stems: BTreeSet<String> = own
                .iter()
                .filter_map(|(n, _, _)| n.strip_suffix(".socket"))
                .map(String::from)
                .collect();
            let mut now = Vec::new();
            for (name, _, _) in own.iter().filter(|(n, _, _)| !n.ends_with(".target")) {
                let stem = name
                    .strip_suffix(".socket")
                    .or_else(|| name.strip_suffix(".service"));
                if stem.is_some_and(|s| stems.contains(s)) {
                    loader.defer(name, true);
                } else {
                    now.push((name.clone(), true));
                }
            }
            now.extend(wanted);
            now
        }
    };
    loader.run(queue, true);
    // A unit read now that is ordered against (or requires) a deferred one
    // has them all read now, so that the ordering is seen.
    let named_now = loader.units.iter().any(|u| {
        u.requires
            .iter()
            .chain(&u.after)
            .chain(&u.before)
            .any(|n| loader.deferred_names.contains(n))
    });
    if named_now {
        loader.load_deferred();
    }
    loader.report();
    (loader, sel_cfg)
}

#[derive(Debug)]
struct Loader {
    index: Index,
    units: Vec<Unit>,
    graph: Graph,
    /// Masked by a link to `/dev/null`, and on the command line.
    masked: Vec<String>,
    /// Alias → the unit it names.
    aliases: BTreeMap<String, String>,
    seen: BTreeSet<String>,
    /// Units left for [`Later`], each with whether it was named directly.
    deferred: Vec<(String, bool)>,
    /// The names in `deferred`.
    deferred_names: BTreeSet<String>,
    /// Names of unit types init does not run that were pulled in, and how
    /// many of them [`Self::report`] has logged.
    not_run: Vec<String>,
    reported: usize,
    /// Set while boot reads (before the first fork): what is only wanted
    /// waits, the `.wants/` directories of what is read too.
    boot: bool,
    /// Units and targets read at boot whose `.wants/` directories wait.
    wants_dirs: Vec<String>,
    /// Keys set in the units read that init accepts and does not act on,
    /// each with where it was first seen; how many [`Self::report`] logged.
    ignored_keys: Vec<(String, String)>,
    ignored_reported: usize,
}

/// A dependency: its name, and whether it is required (else wanted).
type Dep = (String, bool);

impl Loader {
    fn new(index: Index, cfg: &BootConfig) -> Self {
        Loader {
            index,
            units: Vec::new(),
            graph: Graph::default(),
            masked: cfg.masked.clone(),
            aliases: BTreeMap::new(),
            seen: BTreeSet::new(),
            deferred: Vec::new(),
            deferred_names: BTreeSet::new(),
            not_run: Vec::new(),
            reported: 0,
            boot: false,
            wants_dirs: Vec::new(),
            ignored_keys: Vec::new(),
            ignored_reported: 0,
        }
    }

    /// Reads `queue` and what it pulls in, breadth first. At `boot`, what
    /// is only wanted, and socket units, are left for [`Later`]: read
    /// after the first service's fork, they cost its exec nothing.
    fn run(&mut self, queue: Vec<(String, bool)>, boot: bool) {
        self.boot = boot;
        let mut queue: VecDeque<(String, bool)> = queue.into();
        while let Some((name, direct)) = queue.pop_front() {
            for (dep, required) in self.visit(&name, direct, boot) {
                if boot && !required {
                    if !self.seen.contains(&dep) {
                        self.defer(&dep, false);
                    }
                } else {
                    queue.push_back((dep, false));
                }
            }
        }
    }

    /// Leaves `name` for [`Later`] (once).
    fn defer(&mut self, name: &str, direct: bool) {
        if self.deferred_names.insert(name.to_owned()) {
            self.deferred.push((name.to_owned(), direct));
        }
    }

    fn load_deferred(&mut self) {
        let mut queue = std::mem::take(&mut self.deferred);
        self.deferred_names.clear();
        let by_name = NameIndex::new(self.units.iter().map(|u| u.name.as_str()));
        // The `.wants/` directories of what boot read; for a target, its
        // drop-ins and `.requires/` too.
        for name in std::mem::take(&mut self.wants_dirs) {
            let mut wanted = Vec::new();
            if name.ends_with(".target") {
                for (_, text) in self.read_dropins(&name) {
                    let (r, w) = target_deps(&text);
                    wanted.extend(r);
                    wanted.extend(w);
                }
                wanted.extend(self.index.deps_dirs(&name, "requires"));
            }
            wanted.extend(self.index.deps_dirs(&name, "wants"));
            if let Some(deps) = self.graph.targets.get_mut(&name) {
                deps.extend(wanted.iter().cloned());
            } else if let Some(u) = by_name.get(&name).and_then(|i| self.units.get_mut(i)) {
                for w in &wanted {
                    if !u.wants.contains(w) {
                        u.wants.push(w.clone());
                    }
                }
            }
            queue.extend(wanted.into_iter().map(|w| (w, false)));
        }
        self.run(queue, false);
    }

    /// Reads one name (unless seen, left to init or of a type init does
    /// not run); returns what it pulls in.
    fn visit(&mut self, name: &str, direct: bool, defer_sockets: bool) -> Vec<Dep> {
        let Some(kind) = search::unit_type(name) else {
            log::warn!("{name}: not a unit name; ignored");
            return Vec::new();
        };
        if !search::TYPES.contains(&kind) {
            if !self.not_run.iter().any(|n| n == name) {
                self.not_run.push(name.to_owned());
            }
            return Vec::new();
        }
        if self.seen.contains(name) {
            return Vec::new();
        }
        if name.contains("@.") {
            self.seen.insert(name.to_owned());
            log::error!("{name}: a template, started only as an instance (name@instance.{kind})");
            self.graph.broken.push(name.to_owned());
            return Vec::new();
        }
        if !direct && (name == "sysinit.target" || name.starts_with("systemd-")) {
            self.seen.insert(name.to_owned());
            self.graph.by_init.push(name.to_owned());
            return Vec::new();
        }
        if defer_sockets && kind == "socket" {
            self.defer(name, direct);
            return Vec::new();
        }
        self.seen.insert(name.to_owned());
        if self.masked.iter().any(|m| m == name) {
            return Vec::new();
        }
        match self.index.lookup(name) {
            Found::Missing => Vec::new(),
            Found::Masked(path) => {
                log::info!(
                    "{name}: masked ({} links to /dev/null); not started",
                    path.display()
                );
                self.masked.push(name.to_owned());
                Vec::new()
            }
            Found::File {
                name: canonical,
                path,
                listed_regular,
            } => {
                if canonical != name {
                    self.aliases.insert(name.to_owned(), canonical.clone());
                    if !self.seen.insert(canonical.clone()) || self.masked.contains(&canonical) {
                        return Vec::new();
                    }
                }
                self.read(&canonical, &path, listed_regular)
            }
        }
    }

    /// Reads a unit's file and drop-ins; returns what it pulls in.
    fn read(&mut self, name: &str, path: &std::path::Path, listed_regular: bool) -> Vec<Dep> {
        let file = path.to_string_lossy().into_owned();
        let main = match unit::read_unit_file(path, listed_regular) {
            Ok(text) => text,
            Err(e) => {
                log::error!("{file}: {e}");
                log::error!("{file}: not loaded; the other units still start");
                self.graph.broken.push(name.to_owned());
                return Vec::new();
            }
        };
        let target = name.ends_with(".target");
        let mut fragments: Vec<(String, String)> = vec![(file.clone(), main)];
        // A target at boot: its drop-ins and directories only add what it
        // pulls in, and wait with what it wants.
        let late = self.boot && target;
        if !late {
            fragments.extend(self.read_dropins(name));
        }
        let requires_dir = if late {
            Vec::new()
        } else {
            self.index.deps_dirs(name, "requires")
        };
        // What generators linked into `.wants/` this boot is read now:
        // such a unit may order itself before the first service (Kata's
        // extension mounts, `Before=kata-agent.service`).
        let generated = if self.boot {
            self.index.generated_deps(name, "wants")
        } else {
            Vec::new()
        };
        let wants_dir = if self.boot {
            self.wants_dirs.push(name.to_owned());
            generated.clone()
        } else {
            self.index.deps_dirs(name, "wants")
        };
        if target {
            let mut requires = Vec::new();
            let mut wants = Vec::new();
            for (_, text) in &fragments {
                let (r, w) = target_deps(text);
                requires.extend(r);
                wants.extend(w);
            }
            let required: Vec<String> = requires.into_iter().chain(requires_dir).collect();
            let wanted: Vec<String> = wants.into_iter().chain(wants_dir).collect();
            let all: Vec<String> = required.iter().chain(&wanted).cloned().collect();
            self.graph.targets.insert(name.to_owned(), all);
            let (now, wanted): (Vec<String>, Vec<String>) =
                wanted.into_iter().partition(|w| generated.contains(w));
            return deps(required.into_iter().chain(now).collect(), wanted);
        }
        let borrowed: Vec<(&str, &str)> = fragments
            .iter()
            .map(|(f, t)| (f.as_str(), t.as_str()))
            .collect();
        let parsed = unit::parse_fragments(name, &borrowed);
        for (key, at) in &parsed.ignored {
            if !self.ignored_keys.iter().any(|(k, _)| k == key) {
                self.ignored_keys.push((key.clone(), at.clone()));
            }
        }
        for d in &parsed.diagnostics {
            match d.severity {
                Severity::Warning => log::warn!("{d}"),
                Severity::Error => log::error!("{d}"),
            }
        }
        let Some(mut u) = parsed.unit else {
            log::error!("{file}: not loaded; the other units still start");
            self.graph.broken.push(name.to_owned());
            return Vec::new();
        };
        for r in requires_dir {
            if !u.requires.contains(&r) {
                u.requires.push(r);
            }
        }
        for w in wants_dir {
            if !u.wants.contains(&w) {
                u.wants.push(w);
            }
        }
        // A socket unit's service counts as required: it is read with it.
        let required: Vec<String> = u
            .requires
            .iter()
            .chain(u.socket.as_ref().map(|s| &s.service))
            .cloned()
            .collect();
        let (mut now, wanted): (Vec<String>, Vec<String>) =
            u.wants.iter().cloned().partition(|w| generated.contains(w));
        // OnFailure= units are read now (and kept, not started): the unit
        // may fail before what is only wanted is read. The power targets
        // are actions.
        now.extend(
            u.on_failure
                .iter()
                .filter(|n| crate::supervisor::power_target(n).is_none())
                .cloned(),
        );
        self.units.push(u);
        deps(required.into_iter().chain(now).collect(), wanted)
    }

    /// The drop-ins of `name` that can be read, each with its path.
    fn read_dropins(&self, name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (dropin, regular) in self.index.dropins(name) {
            let shown = dropin.to_string_lossy().into_owned();
            match unit::read_unit_file(&dropin, regular) {
                Ok(text) => out.push((shown, text)),
                Err(e) => log::error!("{shown}: {e}; drop-in not used"),
            }
        }
        out
    }

    /// Logs what was pulled in and not loaded since the last report.
    fn report(&mut self) {
        if let Some(new) = self.not_run.get(self.reported..).filter(|n| !n.is_empty()) {
            log::info!(
                "not loaded (unit types init does not run): {}",
                new.join(" ")
            );
        }
        self.reported = self.not_run.len();
        if let Some(new) = self
            .ignored_keys
            .get(self.ignored_reported..)
            .filter(|n| !n.is_empty())
        {
            let list: Vec<String> = new.iter().map(|(k, at)| format!("{k}= ({at})")).collect();
            log::warn!(
                "keys init accepts and does not act on (docs/units.md; each named once, where first set): {}",
                list.join(", ")
            );
        }
        self.ignored_reported = self.ignored_keys.len();
        if !self.graph.by_init.is_empty() {
            log::debug!(
                "not loaded (init's own boot does their work): {}",
                self.graph.by_init.join(" ")
            );
        }
    }

    /// Names through aliases, then [`select`].
    fn select(&mut self, cfg: &BootConfig) -> Vec<Unit> {
        let aliases = &self.aliases;
        let canon = |list: &mut Vec<String>| {
            for n in list.iter_mut() {
                if let Some(c) = aliases.get(n.as_str()) {
                    n.clone_from(c);
                }
            }
        };
        for u in &mut self.units {
            canon(&mut u.requires);
            canon(&mut u.wants);
            canon(&mut u.after);
            canon(&mut u.before);
            if let Some(s) = u.socket.as_deref_mut() {
                if let Some(c) = aliases.get(&s.service) {
                    s.service.clone_from(c);
                }
            }
        }
        for deps in self.graph.targets.values_mut() {
            canon(deps);
        }
        let mut cfg = cfg.clone();
        canon(&mut cfg.wants);
        for m in &self.masked {
            if !cfg.masked.contains(m) {
                cfg.masked.push(m.clone());
            }
        }
        // The units move out: the supervisor hands them back to Later.
        select(std::mem::take(&mut self.units), &self.graph, &cfg)
    }
}

fn deps(required: Vec<String>, wanted: Vec<String>) -> Vec<Dep> {
    let required = required.into_iter().map(|n| (n, true));
    required
        .chain(wanted.into_iter().map(|n| (n, false)))
        .collect()
}

/// Reads a `.target` file's `[Unit]` `Requires=` and `Wants=`: (required,
/// wanted), each in file order.
pub fn target_deps(text: &str) -> (Vec<String>, Vec<String>) {
    let mut section = "";
    let mut requires = Vec::new();
    let mut wants = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section == "[Unit]" {
            if let Some((k, v)) = line.split_once('=') {
                let list = match k.trim() {
                    "Requires" => &mut requires,
                    "Wants" => &mut wants,
                    _ => continue,
                };
                if v.trim().is_empty() {
                    list.clear();
                }
                list.extend(v.split_whitespace().map(String::from));
            }
        }
    }
    (requires, wants)
}

/// The socket units [`load_units`] left (and, when every unit of minos's
/// directory starts, the services named like them): read once the first
/// service has been forked (in a VM; in a container all are read at boot),
/// selected with the units read at boot.
#[derive(Debug)]
pub struct Later {
    loader: Loader,
    cfg: BootConfig,
    mode: Mode,
}

impl supervisor::LaterUnits for Later {
    /// Reads them and what they pull in, and selects again over them and
    /// `loaded` (the units read at boot): the units to start or keep, as
    /// [`select`] gives them, their `LimitNOFILE=` applied.
    fn load(self: Box<Self>, loaded: &[Unit]) -> Vec<Unit> {
        let Later {
            mut loader,
            cfg,
            mode,
        } = *self;
        loader.units = loaded.to_vec();
        loader.load_deferred();
        loader.report();
        let mut chosen = loader.select(&cfg);
        crate::boot::apply_nofile_limits(&mut chosen, mode, None);
        chosen
    }
}

/// Picks the units to start: the named target's (or unit's) closure — or,
/// with none named, every unit read — plus `systemd.wants=`, plus every
/// socket unit read, plus what they require or want, minus masked ones. A
/// service a socket unit starts is no boot unit of its own unless named or
/// pulled in: it is kept, not started ([`Unit::on_demand`]). The order is
/// the order read.
pub fn select(all: Vec<Unit>, graph: &Graph, cfg: &BootConfig) -> Vec<Unit> {
    // Sets and maps by name, so that the selection is O(n log n) in the
    // units and their dependencies (100,000 units: docs/SPECIFICATION.md).
    let targets = &graph.targets;
    let broken: BTreeSet<String> = graph.broken.iter().cloned().collect();
    let masked: BTreeSet<String> = cfg.masked.iter().cloned().collect();
    let by_name = NameIndex::new(all.iter().map(|u| u.name.as_str()));
    // The services socket units start (a refused or masked socket file's
    // default one too: it is not started for want of its socket either).
    let activated: BTreeSet<String> = all
        .iter()
        .filter_map(|u| u.socket.as_ref().map(|s| s.service.clone()))
        .chain(
            graph
                .broken
                .iter()
                .chain(&cfg.masked)
                .filter_map(|b| b.strip_suffix(".socket"))
                .map(|stem| format!("{stem}.service")),
        )
        .collect();
    let mut roots: Vec<String> = match cfg.unit.as_deref() {
        Some(n) if by_name.get(n).is_some() => vec![n.to_string()],
        Some(n) if targets.contains_key(n) => targets.get(n).cloned().unwrap_or_default(),
        _ => all
            .iter()
            .filter(|u| !activated.contains(&u.name))
            .map(|u| u.name.clone())
            .collect(),
    };
    roots.extend(cfg.wants.iter().cloned());
    roots.extend(all.iter().filter(|u| u.is_socket()).map(|u| u.name.clone()));
    // Closure over Requires=/Wants= (through targets too).
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    let mut seen_targets: BTreeSet<String> = BTreeSet::new();
    while let Some(n) = roots.pop() {
        if let Some(deps) = targets.get(&n) {
            if seen_targets.insert(n) {
                roots.extend(deps.iter().cloned());
            }
            continue;
        }
        if chosen.contains(&n) {
            continue;
        }
        if let Some(u) = by_name.get(&n).and_then(|i| all.get(i)) {
            roots.extend(u.requires.iter().chain(&u.wants).cloned());
            chosen.insert(n);
        }
    }
    // A service is kept for its socket unit when that one starts, and one
    // for a chosen unit's OnFailure=, when that one fails.
    let kept: BTreeSet<String> = all
        .iter()
        .filter(|s| chosen.contains(&s.name) && !masked.contains(&s.name))
        .filter_map(|s| s.socket.as_ref().map(|k| k.service.clone()))
        .chain(
            all.iter()
                .filter(|u| chosen.contains(&u.name))
                .flat_map(|u| u.on_failure.iter().cloned()),
        )
        .collect();
    let on_demand: BTreeSet<String> = all
        .iter()
        .filter(|u| !chosen.contains(&u.name) && kept.contains(&u.name))
        .map(|u| u.name.clone())
        .collect();
    let by_init: BTreeSet<String> = graph.by_init.iter().cloned().collect();
    let mut out = Vec::new();
    for mut u in all {
        if on_demand.contains(&u.name) {
            if masked.contains(&u.name) {
                log::info!("{}: masked; not started", u.name);
                continue;
            }
            u.on_demand = true;
            out.push(u);
            continue;
        }
        if !chosen.contains(&u.name) {
            continue;
        }
        if masked.contains(&u.name) {
            log::info!("{}: masked; not started", u.name);
            continue;
        }
        let missing: Vec<&String> = u
            .requires
            .iter()
            .filter(|r| {
                r.ends_with(".service")
                    && !by_init.contains(*r)
                    && (masked.contains(*r) || broken.contains(*r) || !chosen.contains(*r))
            })
            .collect();
        if let Some(m) = missing.first() {
            log::error!(
                "{}: not started: requires {m}, which is masked, missing or malformed",
                u.name
            );
            continue;
        }
        out.push(u);
    }
    out
}
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn unit(name: &str, text: &str) -> Unit {
        let p = unit::parse(name, name, text);
        p.unit.unwrap()
    }

    fn graph(targets: BTreeMap<String, Vec<String>>, broken: &[String]) -> Graph {
        Graph {
            targets,
            broken: broken.to_vec(),
            by_init: Vec::new(),
        }
    }

    fn names(v: &[Unit]) -> Vec<&str> {
        v.iter().map(|u| u.name.as_str()).collect()
    }

    fn units_dir(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("minos-units-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    const AGENT: (&str, &str) = ("kata-agent.service", "[Service]\nExecStart=/bin/agent\n");
    const BUSD_SOCKET: (&str, &str) = (
        "busd.socket",
        "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
    );
    const BUSD: (&str, &str) = ("busd.service", "[Service]\nExecStart=/usr/bin/busd\n");

    #[test]
    fn socket_units_and_their_services_are_read_after_the_first_fork() {
        use crate::supervisor::LaterUnits;
        let other = ("timesync.service", "[Service]\nExecStart=/bin/ts\n");
        let dir = units_dir("later", &[AGENT, BUSD_SOCKET, BUSD, other]);
        let (units, later) = load_units(
            std::slice::from_ref(&dir),
            &BootConfig::default(),
            Mode::Vm,
            None,
        );
        assert_eq!(
            names(&units),
            vec!["kata-agent.service", "timesync.service"]
        );
        let later = later.expect("the socket unit is left for later");
        // Read then, and selected with what boot loaded: the service on
        // demand, the others as they were.
        let all = Box::new(later).load(&units);
        let on_demand: Vec<&str> = all
            .iter()
            .filter(|u| u.on_demand)
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(on_demand, vec!["busd.service"]);
        let mut got = names(&all);
        got.sort_unstable();
        assert_eq!(
            got,
            vec![
                "busd.service",
                "busd.socket",
                "kata-agent.service",
                "timesync.service"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_unit_ordered_after_a_socket_unit_has_it_read_at_once() {
        let agent = (
            "kata-agent.service",
            "[Unit]\nAfter=busd.socket\n[Service]\nExecStart=/bin/agent\n",
        );
        let dir = units_dir("now", &[agent, BUSD_SOCKET, BUSD]);
        let (units, later) = load_units(
            std::slice::from_ref(&dir),
            &BootConfig::default(),
            Mode::Vm,
            None,
        );
        assert!(later.is_none());
        let mut got = names(&units);
        got.sort_unstable();
        assert_eq!(
            got,
            vec!["busd.service", "busd.socket", "kata-agent.service"]
        );
        assert!(
            units
                .iter()
                .find(|u| u.name == "busd.service")
                .unwrap()
                .on_demand
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn kata_target_selects_agent_and_ignores_missing_chronyd() {
        let target = include_str!("../../tests/fixtures/kata/kata-containers.target");
        let mut targets = BTreeMap::new();
        let (requires, wants) = target_deps(target);
        assert_eq!(
            requires,
            vec!["basic.target", "tmp.mount", "kata-agent.service"]
        );
        assert_eq!(wants, vec!["chronyd.service"]);
        targets.insert(
            "kata-containers.target".to_string(),
            requires.into_iter().chain(wants).collect(),
        );
        let agent = unit(
            "kata-agent.service",
            include_str!("../../tests/fixtures/kata/kata-agent.service"),
        );
        let other = unit("other.service", "[Service]\nExecStart=/bin/true\n");
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            ..Default::default()
        };
        let sel = select(vec![agent, other], &graph(targets.clone(), &[]), &cfg);
        assert_eq!(names(&sel), vec!["kata-agent.service"]);
    }

    #[test]
    fn without_target_file_every_service_starts_minus_masked() {
        let a = unit("a.service", "[Service]\nExecStart=/bin/a\n");
        let b = unit("b.service", "[Service]\nExecStart=/bin/b\n");
        let c = unit(
            "c.service",
            "[Unit]\nRequires=b.service\n[Service]\nExecStart=/bin/c\n",
        );
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            masked: vec!["b.service".into()],
            ..Default::default()
        };
        let sel = select(vec![a, b, c], &graph(BTreeMap::new(), &[]), &cfg);
        assert_eq!(names(&sel), vec!["a.service"], "c requires masked b");
    }

    #[test]
    fn a_named_service_pulls_in_its_dependencies() {
        let a = unit(
            "a.service",
            "[Unit]\nWants=b.service\n[Service]\nExecStart=/bin/a\n",
        );
        let b = unit("b.service", "[Service]\nExecStart=/bin/b\n");
        let c = unit("c.service", "[Service]\nExecStart=/bin/c\n");
        let cfg = BootConfig {
            unit: Some("a.service".into()),
            wants: vec!["c.service".into()],
            ..Default::default()
        };
        let sel = select(vec![a, b, c], &graph(BTreeMap::new(), &[]), &cfg);
        assert_eq!(names(&sel), vec!["a.service", "b.service", "c.service"]);
    }

    #[test]
    fn socket_units_start_at_every_boot_and_their_services_on_demand() {
        let agent = unit(
            "kata-agent.service",
            include_str!("../../tests/fixtures/kata/kata-agent.service"),
        );
        let sock = unit(
            "busd.socket",
            "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
        );
        let busd = unit("busd.service", "[Service]\nExecStart=/bin/busd\n");
        let other = unit("other.service", "[Service]\nExecStart=/bin/other\n");
        let on_demand = |sel: &[Unit]| -> Vec<String> {
            sel.iter()
                .filter(|u| u.on_demand)
                .map(|u| u.name.clone())
                .collect()
        };
        // Kata's target names neither the socket nor its service.
        let mut targets = BTreeMap::new();
        targets.insert(
            "kata-containers.target".to_string(),
            vec!["kata-agent.service".to_string()],
        );
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            ..Default::default()
        };
        let all = vec![agent.clone(), sock.clone(), busd.clone(), other.clone()];
        let sel = select(all.clone(), &graph(targets.clone(), &[]), &cfg);
        assert_eq!(
            names(&sel),
            vec!["kata-agent.service", "busd.socket", "busd.service"]
        );
        assert_eq!(on_demand(&sel), vec!["busd.service"]);
        // Every service: but not the one the socket starts.
        let sel = select(
            all.clone(),
            &graph(BTreeMap::new(), &[]),
            &BootConfig::default(),
        );
        assert_eq!(on_demand(&sel), vec!["busd.service"]);
        assert_eq!(sel.len(), 4);
        // Pulled in by another unit: started at boot (it gets the socket).
        let wants = unit(
            "client.service",
            "[Unit]\nWants=busd.service\n[Service]\nExecStart=/bin/c\n",
        );
        let sel = select(
            vec![sock.clone(), busd.clone(), wants],
            &graph(BTreeMap::new(), &[]),
            &BootConfig::default(),
        );
        assert_eq!(
            names(&sel),
            vec!["busd.socket", "busd.service", "client.service"]
        );
        assert!(on_demand(&sel).is_empty());
        // A masked socket: nothing of it; its service is not started either.
        let cfg = BootConfig {
            masked: vec!["busd.socket".into()],
            ..Default::default()
        };
        let sel = select(
            vec![sock, busd.clone(), other.clone()],
            &graph(BTreeMap::new(), &[]),
            &cfg,
        );
        assert_eq!(names(&sel), vec!["other.service"]);
        // A refused socket file: its service does not start without it.
        let sel = select(
            vec![busd, other],
            &graph(BTreeMap::new(), &["busd.socket".to_string()]),
            &BootConfig::default(),
        );
        assert_eq!(names(&sel), vec!["other.service"]);
    }

    /// A root with minos's directory and systemd's five, as on a guest.
    struct Tree {
        root: PathBuf,
        dirs: Vec<PathBuf>,
    }

    impl Tree {
        fn new(tag: &str) -> Tree {
            let (root, dirs) = crate::search::tests::tree(&format!("load-{tag}"));
            Tree { root, dirs }
        }

        /// Writes `text` at `dir/rel` (dir: own, etc, run, local, usr, lib).
        fn put(&self, dir: &str, rel: &str, text: &str) -> &Self {
            let path = self.path(dir, rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
            self
        }

        fn link(&self, dir: &str, rel: &str, target: &str) -> &Self {
            let path = self.path(dir, rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
            self
        }

        fn path(&self, dir: &str, rel: &str) -> PathBuf {
            let i = ["own", "etc", "run", "local", "usr", "lib"]
                .iter()
                .position(|d| *d == dir)
                .unwrap();
            self.dirs[i].join(rel)
        }

        fn read(&self, unit: Option<&str>) -> (Loader, BootConfig) {
            let cfg = BootConfig {
                unit: unit.map(String::from),
                ..Default::default()
            };
            read_boot_units(&self.dirs, &cfg)
        }

        /// What boot reads and what it leaves for after the first fork.
        fn read_all(&self, unit: Option<&str>) -> (Loader, BootConfig) {
            let (mut loader, cfg) = self.read(unit);
            loader.load_deferred();
            (loader, cfg)
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    const SERVICE: &str = "[Service]\nExecStart=/bin/true\n";

    /// Debian's tree as osbuilder leaves it, in miniature: Kata's target
    /// and agent unit, chrony with its `chronyd.service` alias, systemd's
    /// targets with their `.wants/` links, systemd's own units, and a unit
    /// outside the target's closure that cannot even be parsed.
    fn osbuilder_tree(tag: &str) -> Tree {
        let t = Tree::new(tag);
        let usr = |rel: &str, text: &str| {
            t.put("usr", rel, text);
        };
        usr(
            "kata-containers.target",
            include_str!("../../tests/fixtures/kata/kata-containers.target"),
        );
        usr(
            "kata-agent.service",
            include_str!("../../tests/fixtures/kata/kata-agent.service"),
        );
        usr("chrony.service", SERVICE);
        t.link(
            "etc",
            "chronyd.service",
            &t.path("usr", "chrony.service").to_string_lossy(),
        );
        usr(
            "basic.target",
            "[Unit]\nRequires=sysinit.target\nWants=sockets.target timers.target\n",
        );
        usr("sysinit.target", "[Unit]\nWants=local-fs.target\n");
        usr("kmod-static-nodes.service", "garbage");
        t.link(
            "usr",
            "sysinit.target.wants/kmod-static-nodes.service",
            "../kmod-static-nodes.service",
        );
        usr("sockets.target", "[Unit]\n");
        usr("systemd-journald.socket", "garbage");
        t.link(
            "usr",
            "sockets.target.wants/systemd-journald.socket",
            "../systemd-journald.socket",
        );
        usr(
            "dbus.socket",
            "[Socket]\nListenStream=/run/dbus/system_bus_socket\n",
        );
        usr(
            "dbus.service",
            "[Unit]\nRequires=dbus.socket\n[Service]\nExecStart=/usr/bin/dbus-daemon\n",
        );
        t.link("usr", "sockets.target.wants/dbus.socket", "../dbus.socket");
        usr("timers.target", "[Unit]\n");
        t.link(
            "etc",
            "timers.target.wants/apt-daily.timer",
            "/usr/lib/systemd/system/apt-daily.timer",
        );
        usr("multi-user.target", "[Unit]\nRequires=basic.target\n");
        usr("getty.service", "garbage");
        t.link(
            "etc",
            "multi-user.target.wants/getty.service",
            "../getty.service",
        );
        t
    }

    #[test]
    fn kata_target_in_an_osbuilder_tree_reads_only_its_closure() {
        use crate::supervisor::LaterUnits;
        let t = osbuilder_tree("osbuilder");
        let (mut loader, cfg) = t.read(Some("kata-containers.target"));
        // Before the first fork: the target, what it requires (the agent,
        // basic.target), nothing it only wants.
        assert_eq!(loader.graph.by_init, vec!["sysinit.target"]);
        assert_eq!(loader.not_run, vec!["tmp.mount"]);
        let deferred: Vec<&str> = loader.deferred.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(
            deferred,
            vec!["chronyd.service", "sockets.target", "timers.target"]
        );
        let units = loader.select(&cfg);
        assert_eq!(names(&units), vec!["kata-agent.service"]);
        // The rest right after it: chrony through its alias, the socket
        // unit sockets.target wants, its service on demand.
        let later = Later {
            loader,
            cfg,
            mode: Mode::Vm,
        };
        let all = Box::new(later).load(&units);
        assert_eq!(
            names(&all),
            vec![
                "kata-agent.service",
                "chrony.service",
                "dbus.socket",
                "dbus.service"
            ]
        );
        assert!(all[3].on_demand);
        // Nothing outside the closure was opened (getty.service would be
        // broken), nothing of init's own boot or systemd's own was read.
        let (loader, _) = t.read_all(Some("kata-containers.target"));
        assert!(loader.graph.broken.is_empty(), "{:?}", loader.graph.broken);
        assert!(!loader.seen.contains("getty.service"));
        assert!(!loader.seen.contains("kmod-static-nodes.service"));
        assert_eq!(
            loader.graph.by_init,
            vec!["sysinit.target", "systemd-journald.socket"]
        );
        assert_eq!(loader.not_run, vec!["tmp.mount", "apt-daily.timer"]);
    }

    #[test]
    fn default_target_an_alias_a_named_service_and_minos_directory_first() {
        let t = osbuilder_tree("default");
        t.link(
            "etc",
            "default.target",
            "/usr/lib/systemd/system/multi-user.target",
        );
        t.put(
            "own",
            "kata-agent.service",
            "[Service]\nExecStart=/bin/own-agent\n",
        );
        // No systemd.unit=: default.target, an alias of multi-user.target.
        let (mut loader, cfg) = t.read_all(None);
        assert_eq!(cfg.unit.as_deref(), Some("multi-user.target"));
        assert_eq!(loader.graph.broken, vec!["getty.service"]);
        let units = loader.select(&cfg);
        // basic.target's sockets.target: dbus.socket, its service on demand.
        assert_eq!(names(&units), vec!["dbus.socket", "dbus.service"]);
        // A service named directly, from minos's directory over systemd's.
        let (mut loader, cfg) = t.read(Some("kata-agent.service"));
        let units = loader.select(&cfg);
        assert_eq!(names(&units), vec!["kata-agent.service"]);
        assert_eq!(units[0].service.exec_start[0].argv, vec!["/bin/own-agent"]);
        // systemd's own unit, named directly, is read.
        t.put("usr", "systemd-x.service", SERVICE);
        let (mut loader, cfg) = t.read(Some("systemd-x.service"));
        assert_eq!(names(&loader.select(&cfg)), vec!["systemd-x.service"]);
    }

    #[test]
    fn masks_by_link_and_on_the_command_line() {
        let t = osbuilder_tree("masks");
        t.link("etc", "chrony.service", "/dev/null");
        t.put(
            "usr",
            "needs.service",
            "[Unit]\nRequires=chrony.service\n[Service]\nExecStart=/bin/n\n",
        );
        t.link(
            "usr",
            "kata-containers.target.wants/needs.service",
            "../needs.service",
        );
        let (mut loader, cfg) = t.read(Some("kata-containers.target"));
        let units = loader.select(&cfg);
        // chronyd.service → chrony.service, masked; what requires it stays.
        assert_eq!(names(&units), vec!["kata-agent.service"]);
        // The command line's mask.
        let cfg = BootConfig {
            unit: Some("kata-containers.target".into()),
            masked: vec!["kata-agent.service".into()],
            ..Default::default()
        };
        let (mut loader, cfg) = read_boot_units(&t.dirs, &cfg);
        assert!(
            !loader.seen.contains("kata-agent.service")
                || loader.units.iter().all(|u| u.name != "kata-agent.service")
        );
        assert!(names(&loader.select(&cfg)).is_empty());
        // A unit of a type init does not run: minos's own directory.
        t.put("usr", "tmp.mount", "[Mount]\nWhat=tmpfs\n");
        t.put("own", "mine.service", SERVICE);
        let (mut loader, cfg) = t.read(Some("tmp.mount"));
        assert_eq!(cfg.unit, None);
        assert_eq!(names(&loader.select(&cfg)), vec!["mine.service"]);
        // A masked target: minos's own directory instead.
        t.link("etc", "kata-containers.target", "/dev/null");
        let (mut loader, cfg) = t.read(Some("kata-containers.target"));
        assert_eq!(cfg.unit, None);
        assert_eq!(names(&loader.select(&cfg)), vec!["mine.service"]);
    }

    #[test]
    fn dropins_and_dependency_directories_apply() {
        let t = Tree::new("dropins");
        t.put(
            "usr",
            "a.service",
            "[Service]\nExecStart=/bin/a\nEnvironment=X=usr\n",
        );
        t.put(
            "etc",
            "a.service.d/10-override.conf",
            "[Service]\nExecStart=\nExecStart=/bin/b\n",
        );
        t.put(
            "usr",
            "a.service.d/20-env.conf",
            "[Service]\nEnvironment=X=dropin\n",
        );
        t.put(
            "usr",
            "a.service.d/30-bad.conf",
            "[Service]\nFrobnicate=1\n",
        );
        t.put("usr", "b.service", SERVICE);
        t.link("usr", "a.service.requires/b.service", "../b.service");
        t.put("usr", "t.target", "[Unit]\nWants=a.service\n");
        t.put("usr", "t.target.d/more.conf", "[Unit]\nWants=c.service\n");
        t.put("usr", "c.service", SERVICE);
        let (mut loader, cfg) = t.read_all(Some("t.target"));
        let units = loader.select(&cfg);
        assert_eq!(names(&units), vec!["a.service", "c.service", "b.service"]);
        let a = &units[0];
        assert_eq!(a.service.exec_start.len(), 1);
        assert_eq!(a.service.exec_start[0].argv, vec!["/bin/b"]);
        assert_eq!(
            a.service.environment.last(),
            Some(&("X".to_string(), "dropin".to_string()))
        );
        assert_eq!(a.requires, vec!["b.service"]);
    }
}
