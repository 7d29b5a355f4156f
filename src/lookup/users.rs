//! Users and groups from `/etc/passwd` and `/etc/group`, read directly.
//!
//! corral is linked statically (SPEC §9); glibc's `getpwnam` would load NSS modules
//! (`libnss_*.so`) at run time, which an image without glibc (Alpine, distroless, scratch) lacks
//! and which, from another glibc version, can crash a static binary. So `user = "..."` and
//! `socket_group` are looked up in the files, as in every container image. A numeric `UID` or
//! `UID:GID` needs no file at all. Directory services (LDAP, SSSD) are not consulted: use the
//! numeric form for such users.
//!
//! The parsers are pure functions of the file's text; only [`user`] and [`group_id`] read files.

use std::path::{Path, PathBuf};

pub const PASSWD: &str = "/etc/passwd";
pub const GROUP: &str = "/etc/group";

/// What a job needs to run as a user (the passwd entry's fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The user `spec` names: a name from /etc/passwd, a numeric `UID` (its passwd entry when there
/// is one, else group = UID and home `/`), or `UID:GID`.
pub fn user(spec: &str) -> Result<User, String> {
    user_in(Path::new(PASSWD), spec)
}

pub fn user_in(passwd: &Path, spec: &str) -> Result<User, String> {
    let text = match std::fs::read_to_string(passwd) {
        Ok(t) => t,
        // Numeric users need no file (scratch images have none).
        Err(_) if numeric(spec).is_some() => String::new(),
        Err(e) => return Err(format!("unknown user {spec:?}: cannot read {}: {e}", passwd.display())),
    };
    find_user(&text, spec).ok_or_else(|| format!("unknown user {spec:?}: not in {} (or use a numeric UID or UID:GID)", passwd.display()))
}

/// The gid of group `name` (or a numeric GID).
pub fn group_id(name: &str) -> Result<u32, String> {
    group_id_in(Path::new(GROUP), name)
}

pub fn group_id_in(group: &Path, name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(group).map_err(|e| format!("unknown group {name:?}: cannot read {}: {e}", group.display()))?;
    find_group(&text, name).ok_or_else(|| format!("unknown group {name:?}: not in {}", group.display()))
}

fn numeric(spec: &str) -> Option<(u32, Option<u32>)> {
    match spec.split_once(':') {
        Some((u, g)) => Some((u.parse().ok()?, Some(g.parse().ok()?))),
        None => Some((spec.parse().ok()?, None)),
    }
}

/// Look `spec` up in the text of a passwd file.
pub fn find_user(passwd: &str, spec: &str) -> Option<User> {
    let entries: Vec<User> = passwd.lines().filter_map(passwd_entry).collect();
    if let Some((uid, gid)) = numeric(spec) {
        let entry = entries.iter().find(|u| u.uid == uid);
        return Some(User {
            name: entry.map_or_else(|| uid.to_string(), |u| u.name.clone()),
            uid,
            gid: gid.or(entry.map(|u| u.gid)).unwrap_or(uid),
            home: entry.map_or_else(|| PathBuf::from("/"), |u| u.home.clone()),
        });
    }
    entries.into_iter().find(|u| u.name == spec)
}

/// `name:password:uid:gid:gecos:home:shell`; comments, blanks and NIS `+`/`-` lines are skipped.
fn passwd_entry(line: &str) -> Option<User> {
    let line = line.trim_end_matches('\r');
    if line.is_empty() || line.starts_with(['#', '+', '-']) {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || f[0].is_empty() {
        return None;
    }
    Some(User { name: f[0].to_string(), uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: PathBuf::from(f[5]) })
}

/// `name:password:gid:members` of group `name` in the text of a group file.
pub fn find_group(group: &str, name: &str) -> Option<u32> {
    group.lines().find_map(|line| {
        let f: Vec<&str> = line.trim_end_matches('\r').split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_TEXT: &str = "\
# comment
root:x:0:0:root:/root:/bin/bash
+nisuser::::::
scraper:x:10001:10002:Scraper,,,:/srv/scraper:/usr/sbin/nologin
broken:x:notanumber:1:::
short:x:5
";

    #[test]
    fn names_come_from_the_passwd_text() {
        let u = find_user(PASSWD_TEXT, "scraper").unwrap();
        assert_eq!(u, User { name: "scraper".into(), uid: 10001, gid: 10002, home: "/srv/scraper".into() });
        assert_eq!(find_user(PASSWD_TEXT, "root").unwrap().uid, 0);
        for missing in ["nobody", "broken", "short", "+nisuser", "", "Scraper"] {
            assert_eq!(find_user(PASSWD_TEXT, missing), None, "{missing}");
        }
    }

    #[test]
    fn numeric_users_need_no_entry() {
        // Known uid: its name, group and home.
        let u = find_user(PASSWD_TEXT, "10001").unwrap();
        assert_eq!((u.name.as_str(), u.gid, u.home.to_str().unwrap()), ("scraper", 10002, "/srv/scraper"));
        // Unknown uid: group = uid, home /.
        assert_eq!(find_user("", "4242").unwrap(), User { name: "4242".into(), uid: 4242, gid: 4242, home: "/".into() });
        // UID:GID wins over the entry's group.
        assert_eq!(find_user(PASSWD_TEXT, "10001:5").unwrap().gid, 5);
        assert_eq!(find_user("", "7:8").unwrap().gid, 8);
        assert_eq!(find_user("", "7:x"), None);
        assert_eq!(find_user("", "-1"), None);
    }

    #[test]
    fn groups_by_name_or_number() {
        let text = "root:x:0:\nops:x:2001:alice,bob\nbad:x:\n";
        assert_eq!(find_group(text, "ops"), Some(2001));
        assert_eq!(find_group(text, "root"), Some(0));
        assert_eq!(find_group(text, "bad"), None);
        assert_eq!(find_group(text, "nope"), None);
        assert_eq!(group_id_in(Path::new("/nonexistent/group"), "2002"), Ok(2002));
        let err = group_id_in(Path::new("/nonexistent/group"), "ops").unwrap_err();
        assert!(err.contains("unknown group \"ops\"") && err.contains("/nonexistent/group"), "{err}");
    }

    #[test]
    fn a_missing_passwd_file_still_allows_numeric_users() {
        let missing = Path::new("/nonexistent/passwd");
        assert_eq!(user_in(missing, "123:456").unwrap().gid, 456);
        let err = user_in(missing, "scraper").unwrap_err();
        assert!(err.contains("cannot read /nonexistent/passwd"), "{err}");
    }
}
