//! The agent's view of what init gave it: the settings kata-agent.service
//! applies (`LimitNOFILE=1073741824`, `OOMScoreAdjust=-997`) and where its
//! standard streams point.
//!
//! Reading takes the `/proc/self` directory as a parameter so tests can use a
//! fixture tree. This first version covers the fields below; the full check
//! (mounts, cgroups, console, environment) comes later.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// `OOMScoreAdjust=` in kata-agent.service.
pub const KATA_OOM_SCORE_ADJ: i32 = -997;
/// `LimitNOFILE=` in kata-agent.service.
pub const KATA_NOFILE: u64 = 1_073_741_824;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} holds `{content}`, not an integer")]
    Parse { path: PathBuf, content: String },
}

/// One resource limit; `None` is `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What the shim found. Fields that could not be read carry the error, so
/// one failure does not hide the other values.
#[derive(Debug)]
pub struct SelfCheck {
    pub pid: i32,
    pub nofile: Limit,
    pub oom_score_adj: Result<i32, ProbeError>,
    pub stdin: Result<PathBuf, ProbeError>,
    pub stdout: Result<PathBuf, ProbeError>,
}

impl SelfCheck {
    /// Reads the process's own state: pid and RLIMIT_NOFILE from syscalls,
    /// the rest from `proc_self` (normally `/proc/self`).
    pub fn gather(proc_self: &Path) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Self {
            pid: rustix::process::getpid().as_raw_nonzero().get(),
            nofile: Limit {
                soft: limit.current,
                hard: limit.maximum,
            },
            oom_score_adj: read_int(&proc_self.join("oom_score_adj")),
            stdin: read_link(&proc_self.join("fd/0")),
            stdout: read_link(&proc_self.join("fd/1")),
        }
    }

    /// The errors met while gathering, for the caller to report.
    pub fn errors(&self) -> impl Iterator<Item = &ProbeError> {
        [
            self.oom_score_adj.as_ref().err(),
            self.stdin.as_ref().err(),
            self.stdout.as_ref().err(),
        ]
        .into_iter()
        .flatten()
    }

    /// How this process differs from what kata-agent.service sets up; empty
    /// when it matches.
    pub fn strict_violations(&self) -> Vec<String> {
        let mut violations = Vec::new();
        match &self.oom_score_adj {
            Ok(KATA_OOM_SCORE_ADJ) => {}
            Ok(value) => violations.push(format!(
                "oom_score_adj is {value}, expected {KATA_OOM_SCORE_ADJ}"
            )),
            Err(_) => violations.push(format!(
                "oom_score_adj is unknown, expected {KATA_OOM_SCORE_ADJ}"
            )),
        }
        if self.nofile.soft != Some(KATA_NOFILE) {
            violations.push(format!(
                "RLIMIT_NOFILE soft limit is {}, expected {KATA_NOFILE}",
                LimitValue(self.nofile.soft)
            ));
        }
        violations
    }
}

/// The marker line: `agent-shim: self-check pid=N nofile=SOFT/HARD
/// oom_score_adj=N stdin=TARGET stdout=TARGET`. Unreadable values print as
/// `unknown`, infinite limits as `unlimited`.
impl fmt::Display for SelfCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent-shim: self-check pid={} nofile={}/{} oom_score_adj=",
            self.pid,
            LimitValue(self.nofile.soft),
            LimitValue(self.nofile.hard)
        )?;
        match &self.oom_score_adj {
            Ok(value) => write!(f, "{value}")?,
            Err(_) => f.write_str("unknown")?,
        }
        for (name, target) in [("stdin", &self.stdin), ("stdout", &self.stdout)] {
            match target {
                Ok(target) => write!(f, " {name}={}", target.display())?,
                Err(_) => write!(f, " {name}=unknown")?,
            }
        }
        Ok(())
    }
}

struct LimitValue(Option<u64>);

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("unlimited"),
        }
    }
}

fn read_int(path: &Path) -> Result<i32, ProbeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.trim().parse().map_err(|_| ProbeError::Parse {
        path: path.to_owned(),
        content: text.trim().to_owned(),
    })
}

fn read_link(path: &Path) -> Result<PathBuf, ProbeError> {
    std::fs::read_link(path).map_err(|source| ProbeError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake `/proc/self` with the given oom_score_adj and fd links.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(oom_score_adj: Option<&str>, fds: &[(&str, &str)]) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "agent-shim-selfcheck-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            if let Some(content) = oom_score_adj {
                std::fs::write(dir.join("oom_score_adj"), content).unwrap();
            }
            for (fd, target) in fds {
                std::os::unix::fs::symlink(target, dir.join("fd").join(fd)).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // Best effort: a leftover temp dir must not fail a test.
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn kata_like() -> SelfCheck {
        SelfCheck {
            pid: 42,
            nofile: Limit {
                soft: Some(KATA_NOFILE),
                hard: Some(KATA_NOFILE),
            },
            oom_score_adj: Ok(-997),
            stdin: Ok("/dev/null".into()),
            stdout: Ok("/dev/console".into()),
        }
    }

    #[test]
    fn marker_line_format() {
        assert_eq!(
            kata_like().to_string(),
            "agent-shim: self-check pid=42 nofile=1073741824/1073741824 \
             oom_score_adj=-997 stdin=/dev/null stdout=/dev/console"
        );
    }

    #[test]
    fn marker_line_with_unknown_and_unlimited() {
        let check = SelfCheck {
            nofile: Limit {
                soft: Some(1024),
                hard: None,
            },
            oom_score_adj: Err(ProbeError::Parse {
                path: "x".into(),
                content: "y".into(),
            }),
            stdout: Err(ProbeError::Parse {
                path: "x".into(),
                content: "y".into(),
            }),
            ..kata_like()
        };
        assert_eq!(
            check.to_string(),
            "agent-shim: self-check pid=42 nofile=1024/unlimited \
             oom_score_adj=unknown stdin=/dev/null stdout=unknown"
        );
        assert_eq!(check.errors().count(), 2);
    }

    #[test]
    fn strict_accepts_kata_settings() {
        assert!(kata_like().strict_violations().is_empty());
    }

    #[test]
    fn strict_names_each_difference() {
        let check = SelfCheck {
            nofile: Limit {
                soft: Some(1024),
                hard: Some(4096),
            },
            oom_score_adj: Ok(0),
            ..kata_like()
        };
        assert_eq!(
            check.strict_violations(),
            [
                "oom_score_adj is 0, expected -997",
                "RLIMIT_NOFILE soft limit is 1024, expected 1073741824"
            ]
        );
        let check = SelfCheck {
            nofile: Limit {
                soft: None,
                hard: None,
            },
            oom_score_adj: Err(ProbeError::Parse {
                path: "x".into(),
                content: "y".into(),
            }),
            ..kata_like()
        };
        assert_eq!(
            check.strict_violations(),
            [
                "oom_score_adj is unknown, expected -997",
                "RLIMIT_NOFILE soft limit is unlimited, expected 1073741824"
            ]
        );
    }

    #[test]
    fn gathers_from_a_proc_fixture() {
        let fixture = Fixture::new(Some("-997\n"), &[("0", "/dev/null"), ("1", "pipe:[1234]")]);
        let check = SelfCheck::gather(&fixture.0);
        assert_eq!(check.pid, i32::try_from(std::process::id()).unwrap());
        assert_eq!(check.oom_score_adj.unwrap(), -997);
        assert_eq!(check.stdin.unwrap(), Path::new("/dev/null"));
        assert_eq!(check.stdout.unwrap(), Path::new("pipe:[1234]"));
    }

    #[test]
    fn missing_and_malformed_files_are_reported_with_paths() {
        let fixture = Fixture::new(Some("minus five"), &[("0", "/dev/null")]);
        let check = SelfCheck::gather(&fixture.0);
        let errors: Vec<String> = check.errors().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            [
                format!(
                    "{} holds `minus five`, not an integer",
                    fixture.0.join("oom_score_adj").display()
                ),
                format!("cannot read {}", fixture.0.join("fd/1").display()),
            ]
        );
    }

    #[test]
    fn gathers_from_real_proc() {
        let check = SelfCheck::gather(Path::new("/proc/self"));
        assert!(check.oom_score_adj.is_ok());
        assert_eq!(check.nofile, {
            let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
            Limit {
                soft: l.current,
                hard: l.maximum,
            }
        });
    }
}
