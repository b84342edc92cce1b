//! Dropping root, as chronyd's `-u USER` does: after the devices are open
//! (PHCs are `root:root 0600` on a guest without udev, so a daemon started
//! as its own user could not open them), the process becomes USER and
//! keeps CAP_SYS_TIME alone — effective, permitted and bounding sets — with
//! no_new_privs set.
//!
//! The user is looked up in /etc/passwd by hand (static binary, no NSS).
//! Everything here acts on the calling thread; timesync has one.

use std::path::Path;

use rustix::process::{Gid, Uid};
use rustix::thread::{self as thread, CapabilitySet, CapabilitySets};

/// What failed, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot read {path}")]
    Passwd {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("user `{0}` is not in /etc/passwd")]
    NoSuchUser(String),
    #[error("switching to user `{user}`: {step} failed")]
    Step {
        user: String,
        step: &'static str,
        #[source]
        source: rustix::io::Errno,
    },
    #[error("not root (uid {uid}): cannot switch to user `{user}`")]
    NotRoot { uid: u32, user: String },
}

/// The capabilities timesync keeps.
pub const KEPT: CapabilitySet = CapabilitySet::SYS_TIME;

/// The account `user` resolves to in `passwd` (its text).
pub fn account(passwd: &str, user: &str) -> Result<(u32, u32), PrivilegeError> {
    minos_common::users::lookup_user(passwd, user)
        .map(|a| (a.uid, a.gid))
        .ok_or_else(|| PrivilegeError::NoSuchUser(user.to_owned()))
}

/// Becomes `user` (from `passwd_path`) keeping only [`KEPT`]; first hands
/// `own` (the status directory, when it exists) to the user. Already
/// running as that user (e.g. under a unit's `User=`): nothing to do.
pub fn drop_to(user: &str, passwd_path: &Path, own: Option<&Path>) -> Result<(), PrivilegeError> {
    let passwd = std::fs::read_to_string(passwd_path).map_err(|source| PrivilegeError::Passwd {
        path: passwd_path.display().to_string(),
        source,
    })?;
    let (uid, gid) = account(&passwd, user)?;
    let current = rustix::process::geteuid().as_raw();
    if current == uid {
        return Ok(());
    }
    if current != 0 {
        return Err(PrivilegeError::NotRoot {
            uid: current,
            user: user.to_owned(),
        });
    }
    let step = |step: &'static str| {
        let user = user.to_owned();
        move |source| PrivilegeError::Step { user, step, source }
    };
    if let Some(dir) = own {
        if dir.is_dir() {
            rustix::fs::chown(dir, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(step("chown of the status directory"))?;
        }
    }
    // The bounding set first: dropping needs CAP_SETPCAP, which goes below.
    shrink_bounding_set(KEPT).map_err(step("PR_CAPBSET_DROP"))?;
    thread::set_keep_capabilities(true).map_err(step("PR_SET_KEEPCAPS"))?;
    thread::set_thread_groups(&[]).map_err(step("setgroups"))?;
    let (g, u) = (Gid::from_raw(gid), Uid::from_raw(uid));
    thread::set_thread_res_gid(g, g, g).map_err(step("setresgid"))?;
    thread::set_thread_res_uid(u, u, u).map_err(step("setresuid"))?;
    thread::set_capabilities(
        None,
        CapabilitySets {
            effective: KEPT,
            permitted: KEPT,
            inheritable: CapabilitySet::empty(),
        },
    )
    .map_err(step("capset"))?;
    thread::set_keep_capabilities(false).map_err(step("PR_SET_KEEPCAPS off"))?;
    thread::set_no_new_privs(true).map_err(step("PR_SET_NO_NEW_PRIVS"))?;
    Ok(())
}

/// Removes every capability but those in `keep` from the calling thread's
/// bounding set (needs CAP_SETPCAP); ones this kernel does not know are
/// skipped. Also used by the device opener, which keeps none.
pub fn shrink_bounding_set(keep: CapabilitySet) -> rustix::io::Result<()> {
    for cap in CapabilitySet::all().iter().filter(|c| !keep.contains(*c)) {
        match thread::remove_capability_from_bounding_set(cap) {
            // Not known to this kernel.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          timesync:x:101:101:timesync:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn account_lookup() {
        assert_eq!(account(PASSWD, "timesync").unwrap(), (101, 101));
        assert_eq!(account(PASSWD, "root").unwrap(), (0, 0));
        assert_eq!(
            account(PASSWD, "chrony").unwrap_err().to_string(),
            "user `chrony` is not in /etc/passwd"
        );
    }

    #[test]
    fn kept_is_one_capability() {
        assert_eq!(KEPT.bits().count_ones(), 1);
        assert!(CapabilitySet::all().iter().any(|c| c == KEPT));
    }

    /// In a child process (the switch cannot be undone): as root, the child
    /// ends as uid/gid 101 with CAP_SYS_TIME alone in all its sets, and a
    /// directory handed to it is its own.
    #[test]
    fn drop_to_in_a_child() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("not root: the privilege drop is covered by the VM test only");
            return;
        }
        let dir = std::env::temp_dir().join(format!("timesync-priv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, PASSWD).unwrap();
        let status_dir = dir.join("run");
        std::fs::create_dir_all(&status_dir).unwrap();
        // A forked child of the test binary runs the drop and reports.
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new(exe)
            .args(["--exact", "privileges::tests::child_body", "--nocapture"])
            .env("TIMESYNC_PRIV_CHILD", &dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report = stdout
            .lines()
            .find(|l| l.starts_with("child:"))
            .unwrap_or_else(|| panic!("{stdout}{}", String::from_utf8_lossy(&output.stderr)));
        // CAP_SYS_TIME is bit 25: 0x2000000.
        assert_eq!(
            report,
            "child: uid=101 gid=101 groups=0 CapEff=0000000002000000 \
             CapPrm=0000000002000000 CapBnd=0000000002000000 NoNewPrivs=1 owner=101"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn child_body() {
        let Some(dir) = std::env::var_os("TIMESYNC_PRIV_CHILD") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        drop_to("timesync", &dir.join("passwd"), Some(&dir.join("run"))).unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        use std::os::unix::fs::MetadataExt;
        println!(
            "child: uid={} gid={} groups={} CapEff={} CapPrm={} CapBnd={} NoNewPrivs={} owner={}",
            field("Uid:").split_whitespace().next().unwrap(),
            field("Gid:").split_whitespace().next().unwrap(),
            field("Groups:").split_whitespace().count(),
            field("CapEff:"),
            field("CapPrm:"),
            field("CapBnd:"),
            field("NoNewPrivs:"),
            std::fs::metadata(dir.join("run")).unwrap().uid()
        );
    }
}
