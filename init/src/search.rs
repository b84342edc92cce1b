//! systemd's unit search path: which file is a unit, its drop-ins, what
//! its `.wants/` and `.requires/` directories add, which names are aliases
//! and which are masked (systemd.unit(5), "Unit File Load Path").
//!
//! minos's own directory is listed once at boot into an [`Index`] (file
//! types from the listing, no stat per entry): every unit in it may start.
//! systemd's directories are looked up name by name (an `lstat` per
//! directory, each answer kept): a distribution's has hundreds of entries,
//! and a boot needs a few of them before the agent's exec. A directory
//! reached twice (`/lib` → `usr/lib` on a merged-`/usr` root) counts once.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The unit directories, highest precedence first: minos's own, then
/// systemd's system search path.
pub const SEARCH_PATH: [&str; 6] = [
    crate::UNITS_DIR,
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// A file of this name in the first directory (minos's own images have
/// one) says there is no other: the rest of the path is not looked for,
/// each a path lookup before the first service's exec.
pub const SELF_CONTAINED: &str = ".self-contained";

/// The unit types init runs; a name of another type (`tmp.mount`,
/// `apt-daily.timer` …) is never loaded.
pub const TYPES: [&str; 3] = ["service", "socket", "target"];

/// Every unit type systemd knows.
const ALL_TYPES: [&str; 11] = [
    "service",
    "socket",
    "target",
    "mount",
    "automount",
    "swap",
    "path",
    "timer",
    "slice",
    "scope",
    "device",
];

/// A directory's device and inode.
pub type DirId = (u64, u64);

/// What a directory listing says an entry is (`d_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Link,
    Dir,
    /// Anything else, or a file system that does not say (`DT_UNKNOWN`).
    Other,
}

#[derive(Debug, Clone)]
struct Listed {
    name: String,
    /// Position of its directory in the search path (0: minos's own).
    dir: usize,
    kind: Kind,
}

/// The unit directories: minos's own listed (sorted by name: every unit
/// in it may start), systemd's looked up name by name — a distribution's
/// directory has hundreds of entries, and listing it before the agent's
/// exec cost more than the few lookups a boot needs; each answer is kept.
#[derive(Debug, Clone, Default)]
pub struct Index {
    dirs: Vec<PathBuf>,
    entries: Vec<Listed>,
    /// Positions in `dirs` of the other directories that exist (a
    /// directory reached twice, `/lib` → `usr/lib`, once).
    others: Vec<usize>,
    /// What a lookup found in `others`, by name.
    probed: RefCell<BTreeMap<String, Vec<Listed>>>,
    /// Whether any entry may be a `.d/`, `.wants/` or `.requires/`
    /// directory: without one (minos's own images), no lookup for them.
    subdirs: bool,
    /// minos's own directory holds `.self-contained`: no other directory
    /// was looked for (nor generators run).
    pub alone: bool,
    /// Positions in `dirs` of generators' output directories.
    generated: Vec<usize>,
}

/// What a unit name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The unit's file: the first in the search path, an alias followed to
    /// the unit it names (`name` is then that unit's name).
    File {
        name: String,
        path: PathBuf,
        /// The listing said regular file (the stat before opening is done).
        listed_regular: bool,
    },
    /// The first entry is a link to `/dev/null`.
    Masked(PathBuf),
    Missing,
}

/// `foo.service` → `service`, for the types systemd knows; `None` for a name
/// that is no unit name.
pub fn unit_type(name: &str) -> Option<&'static str> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if stem.is_empty() {
        return None;
    }
    ALL_TYPES.into_iter().find(|t| *t == suffix)
}

/// Lists `dir` (without `.` and `..`): names that are valid UTF-8 with
/// their listed kind, and the directory's device and inode. One
/// getdents64 buffer on the stack: std's `read_dir` adds an fstat and a
/// 32 KiB heap buffer, page faults at boot.
pub fn list_dir(dir: &Path) -> std::io::Result<Vec<(String, Kind)>> {
    use rustix::fs::{FileType, OFlags};
    let fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )?;
    // Room for some 50 entries a call (a units directory in one); more
    // stack would be a page fault at boot.
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::RegularFile => Kind::Regular,
            FileType::Symlink => Kind::Link,
            FileType::Directory => Kind::Dir,
            _ => Kind::Other,
        };
        names.push((name.to_owned(), kind));
    }
    Ok(names)
}

/// A link's target, read without following it.
fn link_target(path: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    rustix::fs::readlink(path, Vec::new())
        .ok()
        .map(|t| PathBuf::from(std::ffi::OsString::from_vec(t.into_bytes())))
}

fn is_dev_null(target: &Path) -> bool {
    target == Path::new("/dev/null")
}

impl Index {
    /// Lists the first directory of `dirs` (minos's own) and finds which of
    /// the others (highest precedence first) exist. A missing directory is
    /// skipped quietly; one that cannot be read is a warning.
    pub fn build(dirs: &[PathBuf]) -> Index {
        let mut index = Index {
            dirs: dirs.to_vec(),
            ..Index::default()
        };
        let Some(own) = dirs.first() else {
            return index;
        };
        match list_dir(own) {
            Ok(entries) => {
                let alone = entries.iter().any(|(n, _)| n == SELF_CONTAINED);
                for (name, kind) in entries {
                    if kind != Kind::Regular
                        && [".d", ".wants", ".requires"]
                            .iter()
                            .any(|suffix| name.ends_with(suffix))
                    {
                        index.subdirs = true;
                    }
                    index.entries.push(Listed { name, dir: 0, kind });
                }
                index.entries.sort_by(|a, b| a.name.cmp(&b.name));
                if alone {
                    index.alone = true;
                    return index;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!(
                "read unit directory {}: {e}; its units are not used",
                own.display()
            ),
        }
        // A stat each: whether it exists, and whether it is one seen
        // already.
        let mut seen: Vec<DirId> = Vec::new();
        for (pos, dir) in dirs.iter().enumerate().skip(1) {
            match rustix::fs::stat(dir) {
                Ok(st) if rustix::fs::FileType::from_raw_mode(st.st_mode).is_dir() => {
                    let id = (st.st_dev, st.st_ino);
                    if !seen.contains(&id) {
                        seen.push(id);
                        index.others.push(pos);
                    }
                }
                Ok(_) | Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {}
                Err(e) => log::warn!(
                    "unit directory {}: {e}; its units are not used",
                    dir.display()
                ),
            }
        }
        if !index.others.is_empty() {
            index.subdirs = true;
        }
        index
    }

    /// The entries called `name`, highest precedence first: minos's own
    /// from the listing, the others looked up (once per name).
    fn named(&self, name: &str) -> Vec<Listed> {
        let start = self.entries.partition_point(|l| l.name.as_str() < name);
        let mut out: Vec<Listed> = self
            .entries
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|l| l.name == name)
            .cloned()
            .collect();
        if self.others.is_empty() {
            return out;
        }
        if let Ok(cache) = self.probed.try_borrow() {
            if let Some(found) = cache.get(name) {
                out.extend(found.iter().cloned());
                return out;
            }
        }
        let mut found = Vec::new();
        for &pos in &self.others {
            let Some(dir) = self.dirs.get(pos) else {
                continue;
            };
            let kind = match rustix::fs::statat(
                rustix::fs::CWD,
                dir.join(name),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => {
                    let t = rustix::fs::FileType::from_raw_mode(st.st_mode);
                    if t.is_file() {
                        Kind::Regular
                    } else if t.is_symlink() {
                        Kind::Link
                    } else if t.is_dir() {
                        Kind::Dir
                    } else {
                        Kind::Other
                    }
                }
                Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => continue,
                // Reading it will say what is wrong.
                Err(_) => Kind::Other,
            };
            found.push(Listed {
                name: name.to_owned(),
                dir: pos,
                kind,
            });
        }
        out.extend(found.iter().cloned());
        if let Ok(mut cache) = self.probed.try_borrow_mut() {
            cache.insert(name.to_owned(), found);
        }
        out
    }

    fn path(&self, l: &Listed) -> PathBuf {
        self.dirs
            .get(l.dir)
            .map_or_else(|| PathBuf::from(&l.name), |d| d.join(&l.name))
    }

    /// The unit names (of the types init runs) listed in the directory at
    /// `dir_pos` of the search path, each with its path and whether the
    /// listing said regular file.
    pub fn units_in(&self, dir_pos: usize) -> Vec<(String, PathBuf, bool)> {
        let mut out: Vec<(String, PathBuf, bool)> = Vec::new();
        for l in &self.entries {
            // The first of a name is the one that counts.
            if out.last().is_some_and(|(n, _, _)| *n == l.name) {
                continue;
            }
            if l.dir == dir_pos && unit_type(&l.name).is_some_and(|t| TYPES.contains(&t)) {
                out.push((l.name.clone(), self.path(l), l.kind == Kind::Regular));
            }
        }
        out
    }

    /// Resolves `name`: masked, its file, an alias followed, or missing.
    pub fn lookup(&self, name: &str) -> Found {
        self.lookup_at(name, 0)
    }

    fn lookup_at(&self, name: &str, depth: u32) -> Found {
        // A directory named like a unit is that unit's file too: reading
        // it fails, naming it.
        let named = self.named(name);
        let Some(first) = named.first() else {
            // An instance with no file of its own is its template's.
            return match crate::unit::template_of(name) {
                Some(template) if depth < 8 => match self.lookup_at(&template, depth + 1) {
                    Found::File {
                        path,
                        listed_regular,
                        ..
                    } => Found::File {
                        name: name.to_owned(),
                        path,
                        listed_regular,
                    },
                    other => other,
                },
                _ => Found::Missing,
            };
        };
        let path = self.path(first);
        let file = |name: &str| Found::File {
            name: name.to_owned(),
            path: path.clone(),
            listed_regular: first.kind == Kind::Regular,
        };
        if first.kind != Kind::Link {
            return file(name);
        }
        let Some(target) = link_target(&path) else {
            return file(name);
        };
        if is_dev_null(&target) {
            return Found::Masked(path);
        }
        // A link under another name of the same type is an alias: the unit
        // is the one it names (chronyd.service → chrony.service).
        let other = target
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| *n != name && unit_type(n).is_some() && unit_type(n) == unit_type(name));
        match other {
            Some(canonical) if depth < 8 => match self.lookup_at(canonical, depth + 1) {
                Found::Missing => Found::File {
                    name: canonical.to_owned(),
                    path: path.clone(),
                    listed_regular: false,
                },
                found => found,
            },
            _ => file(name),
        }
    }

    /// The unit names in every `NAME.wants/` (or `NAME.requires/`, for
    /// `suffix` `requires`) directory of the search path, in name order.
    pub fn deps_dirs(&self, name: &str, suffix: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if !self.subdirs {
            return out;
        }
        for dir in self.subdirs(&format!("{name}.{suffix}")) {
            match list_dir(&dir) {
                Ok(entries) => {
                    for (entry, _) in entries {
                        if unit_type(&entry).is_some() && !out.contains(&entry) {
                            out.push(entry);
                        }
                    }
                }
                Err(e) => log::warn!("read {}: {e}; ignored", dir.display()),
            }
        }
        out.sort();
        out
    }

    /// Marks the directories at these positions of the search path as
    /// generators' output ([`Self::generated_deps`]).
    pub fn with_generated(mut self, positions: Vec<usize>) -> Self {
        self.generated = positions;
        self
    }

    /// The units in `NAME.SUFFIX/` directories that generators wrote this
    /// boot: they are read with what pulls them in, not later.
    pub fn generated_deps(&self, name: &str, suffix: &str) -> Vec<String> {
        if self.generated.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> = Vec::new();
        for l in self.named(&format!("{name}.{suffix}")) {
            if l.kind == Kind::Regular || !self.generated.contains(&l.dir) {
                continue;
            }
            if let Ok(entries) = list_dir(&self.path(&l)) {
                for (entry, _) in entries {
                    if unit_type(&entry).is_some() && !out.contains(&entry) {
                        out.push(entry);
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// The drop-ins of `name` (`NAME.d/*.conf` in every directory of the
    /// search path, then those of its template for an instance): one per
    /// file name, from the directory of highest
    /// precedence (a link to `/dev/null` there masks it), in file-name
    /// order; each with whether the listing said regular file.
    pub fn dropins(&self, name: &str) -> Vec<(PathBuf, bool)> {
        if !self.subdirs {
            return Vec::new();
        }
        let mut chosen: BTreeMap<String, Option<(PathBuf, bool)>> = BTreeMap::new();
        // An instance's own drop-ins, then its template's.
        let mut dirs = self.subdirs(&format!("{name}.d"));
        if let Some(template) = crate::unit::template_of(name) {
            dirs.extend(self.subdirs(&format!("{template}.d")));
        }
        for dir in dirs {
            let entries = match list_dir(&dir) {
                Ok(entries) => entries,
                Err(e) => {
                    log::warn!("read {}: {e}; ignored", dir.display());
                    continue;
                }
            };
            for (file, kind) in entries {
                if !file.ends_with(".conf") || chosen.contains_key(&file) || kind == Kind::Dir {
                    continue;
                }
                let path = dir.join(&file);
                let masked =
                    kind == Kind::Link && link_target(&path).is_some_and(|t| is_dev_null(&t));
                chosen.insert(file, (!masked).then_some((path, kind == Kind::Regular)));
            }
        }
        chosen.into_values().flatten().collect()
    }

    /// The directories (or links, or entries of unknown kind) called
    /// `entry` in the search path, highest precedence first.
    fn subdirs(&self, entry: &str) -> Vec<PathBuf> {
        if !self.subdirs {
            return Vec::new();
        }
        self.named(entry)
            .iter()
            .filter(|l| l.kind != Kind::Regular)
            .map(|l| self.path(l))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh root with minos's directory and systemd's five (own, etc,
    /// run, local, usr, lib), as the search path lists them.
    pub(crate) fn tree(tag: &str) -> (PathBuf, Vec<PathBuf>) {
        let root = std::env::temp_dir().join(format!("minos-search-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dirs: Vec<PathBuf> = ["own", "etc", "run", "local", "usr", "lib"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        (root, dirs)
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn the_first_directory_wins_and_a_dev_null_link_masks() {
        let (root, dirs) = tree("precedence");
        put(&dirs[4].join("a.service"), "usr");
        put(&dirs[1].join("a.service"), "etc");
        put(&dirs[5].join("b.service"), "lib");
        symlink("/dev/null", dirs[1].join("b.service")).unwrap();
        put(&dirs[0].join("c.service"), "own");
        put(&dirs[4].join("c.service"), "usr");
        let index = Index::build(&dirs);
        assert_eq!(
            index.lookup("a.service"),
            Found::File {
                name: "a.service".into(),
                path: dirs[1].join("a.service"),
                listed_regular: true
            }
        );
        assert_eq!(
            index.lookup("b.service"),
            Found::Masked(dirs[1].join("b.service"))
        );
        match index.lookup("c.service") {
            Found::File { path, .. } => assert_eq!(path, dirs[0].join("c.service")),
            other => panic!("{other:?}"),
        }
        assert_eq!(index.lookup("d.service"), Found::Missing);
        let own: Vec<String> = index.units_in(0).into_iter().map(|u| u.0).collect();
        assert_eq!(own, ["c.service"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn aliases_resolve_to_the_unit_they_name() {
        let (root, dirs) = tree("alias");
        put(&dirs[5].join("chrony.service"), "[Service]\nExecStart=/x\n");
        symlink(
            dirs[5].join("chrony.service"),
            dirs[1].join("chronyd.service"),
        )
        .unwrap();
        // A link under its own name is the unit itself, not an alias.
        put(&root.join("opt/own.service"), "x");
        symlink(root.join("opt/own.service"), dirs[1].join("own.service")).unwrap();
        // An alias of a unit no directory lists by name: the link's file.
        put(&root.join("opt/real.service"), "x");
        symlink(root.join("opt/real.service"), dirs[1].join("nick.service")).unwrap();
        // An alias loop ends.
        symlink("loop2.service", dirs[1].join("loop1.service")).unwrap();
        symlink("loop1.service", dirs[2].join("loop2.service")).unwrap();
        let index = Index::build(&dirs);
        assert_eq!(
            index.lookup("chronyd.service"),
            Found::File {
                name: "chrony.service".into(),
                path: dirs[5].join("chrony.service"),
                listed_regular: true
            }
        );
        assert!(
            matches!(index.lookup("own.service"), Found::File { name, .. } if name == "own.service")
        );
        assert_eq!(
            index.lookup("nick.service"),
            Found::File {
                name: "real.service".into(),
                path: dirs[1].join("nick.service"),
                listed_regular: false
            }
        );
        assert!(matches!(index.lookup("loop1.service"), Found::File { .. }));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn wants_requires_and_dropins_merge_across_directories() {
        let (root, dirs) = tree("dirs");
        std::fs::create_dir_all(dirs[4].join("t.target.wants")).unwrap();
        symlink("/x/b.service", dirs[4].join("t.target.wants/b.service")).unwrap();
        std::fs::create_dir_all(dirs[1].join("t.target.wants")).unwrap();
        symlink("/x/a.service", dirs[1].join("t.target.wants/a.service")).unwrap();
        symlink("/x/b.service", dirs[1].join("t.target.wants/b.service")).unwrap();
        put(&dirs[1].join("t.target.wants/README"), "not a unit");
        std::fs::create_dir_all(dirs[5].join("t.target.requires")).unwrap();
        symlink("/x/r.service", dirs[5].join("t.target.requires/r.service")).unwrap();
        put(&dirs[4].join("a.service.d/10-x.conf"), "usr 10");
        put(&dirs[4].join("a.service.d/20-y.conf"), "usr 20");
        put(&dirs[1].join("a.service.d/20-y.conf"), "etc 20");
        put(&dirs[2].join("a.service.d/05-z.conf"), "run 05");
        put(&dirs[2].join("a.service.d/note.txt"), "not a drop-in");
        std::fs::create_dir_all(dirs[0].join("a.service.d")).unwrap();
        symlink("/dev/null", dirs[0].join("a.service.d/10-x.conf")).unwrap();
        let index = Index::build(&dirs);
        assert_eq!(
            index.deps_dirs("t.target", "wants"),
            ["a.service", "b.service"]
        );
        assert_eq!(index.deps_dirs("t.target", "requires"), ["r.service"]);
        assert!(index.deps_dirs("u.target", "wants").is_empty());
        let dropins: Vec<PathBuf> = index
            .dropins("a.service")
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(
            dropins,
            [
                dirs[2].join("a.service.d/05-z.conf"),
                dirs[1].join("a.service.d/20-y.conf")
            ]
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_directory_reached_twice_is_listed_once() {
        let (root, mut dirs) = tree("twice");
        std::fs::remove_dir(&dirs[5]).unwrap();
        symlink(&dirs[4], &dirs[5]).unwrap();
        put(&dirs[4].join("a.service"), "x");
        std::fs::create_dir_all(dirs[4].join("t.target.wants")).unwrap();
        symlink("/x/a.service", dirs[4].join("t.target.wants/a.service")).unwrap();
        dirs.push(root.join("missing"));
        let index = Index::build(&dirs);
        assert_eq!(index.named("a.service").len(), 1);
        assert_eq!(index.deps_dirs("t.target", "wants"), ["a.service"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_self_contained_first_directory_ends_the_path() {
        let (root, dirs) = tree("alone");
        put(&dirs[0].join("a.service"), "own");
        put(&dirs[0].join(SELF_CONTAINED), "");
        put(&dirs[1].join("b.service"), "etc");
        let index = Index::build(&dirs);
        assert!(matches!(index.lookup("a.service"), Found::File { .. }));
        assert_eq!(index.lookup("b.service"), Found::Missing);
        std::fs::remove_file(dirs[0].join(SELF_CONTAINED)).unwrap();
        let index = Index::build(&dirs);
        assert!(matches!(index.lookup("b.service"), Found::File { .. }));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn an_instance_is_its_templates_file_with_both_drop_ins() {
        let (root, dirs) = tree("template");
        put(
            &dirs[4].join("ext@.service"),
            "[Service]\nExecStart=/bin/m %i\n",
        );
        put(&dirs[4].join("ext@.service.d/10-all.conf"), "all");
        put(&dirs[1].join("ext@a.service.d/20-a.conf"), "a");
        put(&dirs[1].join("ext@b.service"), "own file");
        let index = Index::build(&dirs);
        assert_eq!(
            index.lookup("ext@a.service"),
            Found::File {
                name: "ext@a.service".into(),
                path: dirs[4].join("ext@.service"),
                listed_regular: true
            }
        );
        match index.lookup("ext@b.service") {
            Found::File { path, .. } => assert_eq!(path, dirs[1].join("ext@b.service")),
            other => panic!("{other:?}"),
        }
        let dropins: Vec<PathBuf> = index
            .dropins("ext@a.service")
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(
            dropins,
            [
                dirs[4].join("ext@.service.d/10-all.conf"),
                dirs[1].join("ext@a.service.d/20-a.conf")
            ]
        );
        assert_eq!(index.lookup("other@a.service"), Found::Missing);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn unit_types() {
        assert_eq!(unit_type("a.service"), Some("service"));
        assert_eq!(unit_type("tmp.mount"), Some("mount"));
        assert_eq!(unit_type("-.slice"), Some("slice"));
        assert_eq!(unit_type(".service"), None);
        assert_eq!(unit_type("README"), None);
        assert_eq!(unit_type("a.conf"), None);
    }
}
