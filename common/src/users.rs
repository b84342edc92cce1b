//! User and group lookup from /etc/passwd and /etc/group.
//!
//! init and timesync are static, so glibc's NSS is not available; like
//! systemd for the early boot, they read the files themselves. Functions take the file text.

/// A resolved `User=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Looks up `user` (a name or a numeric uid) in passwd-format text.
/// A numeric uid without a passwd entry resolves to that uid, gid = uid.
pub fn lookup_user(passwd: &str, user: &str) -> Option<Account> {
    let numeric = user.parse::<u32>().ok();
    for line in passwd.lines() {
        let mut f = line.split(':');
        let (Some(name), Some(_pw), Some(uid), Some(gid)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            continue;
        };
        if name == user || numeric == Some(uid) {
            let _gecos = f.next();
            let home = f.next().unwrap_or("/").to_string();
            let shell = f.next().unwrap_or("/bin/sh").to_string();
            return Some(Account {
                name: name.to_string(),
                uid,
                gid,
                home,
                shell,
            });
        }
    }
    numeric.map(|uid| Account {
        name: uid.to_string(),
        uid,
        gid: uid,
        home: "/".into(),
        shell: "/bin/sh".into(),
    })
}

/// Looks up `group` (a name or a numeric gid) in group-format text.
pub fn lookup_group(group_file: &str, group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Some(gid);
    }
    group_file.lines().find_map(|line| {
        let mut f = line.split(':');
        let (name, _pw, gid) = (f.next()?, f.next()?, f.next()?);
        (name == group).then(|| gid.parse().ok()).flatten()
    })
}

/// The supplementary groups that list `user` as a member.
pub fn supplementary_groups(group_file: &str, user: &str) -> Vec<u32> {
    group_file
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let (_name, _pw, gid, members) = (f.next()?, f.next()?, f.next()?, f.next()?);
            members
                .split(',')
                .any(|m| m == user)
                .then(|| gid.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          broken line\n\
                          daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                          timesync:x:101:101:time:/run/timesync:/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:timesync,daemon\ntimesync:x:101:\nbad\n";

    #[test]
    fn users_by_name_and_number() {
        let a = lookup_user(PASSWD, "timesync").unwrap();
        assert_eq!((a.uid, a.gid, a.home.as_str()), (101, 101, "/run/timesync"));
        assert_eq!(lookup_user(PASSWD, "1").unwrap().name, "daemon");
        assert_eq!(lookup_user(PASSWD, "4242").unwrap().gid, 4242);
        assert_eq!(lookup_user(PASSWD, "nobody"), None);
        assert_eq!(lookup_user("", "root"), None);
    }

    #[test]
    fn groups() {
        assert_eq!(lookup_group(GROUP, "adm"), Some(4));
        assert_eq!(lookup_group(GROUP, "77"), Some(77));
        assert_eq!(lookup_group(GROUP, "nope"), None);
        assert_eq!(supplementary_groups(GROUP, "timesync"), vec![4]);
        assert_eq!(supplementary_groups(GROUP, "root"), Vec::<u32>::new());
    }
}
