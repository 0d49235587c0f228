//! Users: resolve Docker's `user:` string against the container's `/etc/passwd` and
//! `/etc/group`, and switch the process to the result.
//!
//! Takes the spec's user string and the two files' text (read inside the container after
//! pivot_root, so a symlinked /etc/passwd cannot point at the host), gives an [`ExecUser`]
//! (uid, gid, supplementary gids, home). Used by `init` and `exec`. Parsing is pure and unit
//! tested; `switch` does setgroups/setresgid/setresuid with PR_SET_KEEPCAPS so that
//! `capabilities::apply` can still set the capability sets afterwards.

use tracing::debug;

/// The identity a container process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// From passwd; `/` when the user has no entry (as Docker).
    pub home: String,
}

/// Errors resolving or switching users.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser { name: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup { name: String },
    #[error("cannot switch to uid {uid} gid {gid}")]
    Switch {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 6 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0],
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5],
            })
        })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0],
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
}

/// Resolves `user` (`""`/`None` = root, `name`, `uid`, `uid:gid`, `name:group`) as Docker does.
pub fn resolve(user: Option<&str>, passwd: &str, group: &str) -> Result<ExecUser, UserError> {
    let spec = user.unwrap_or("").trim();
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let found = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == u)
                .ok_or_else(|| UserError::UnknownUser {
                    name: u.to_string(),
                })?,
        ),
    };
    let uid = match (&found, u.parse::<u32>()) {
        (_, Ok(uid)) => uid,
        (Some(e), Err(_)) => e.uid,
        (None, Err(_)) => unreachable!("named users are found or rejected above"),
    };
    let home = found
        .as_ref()
        .map(|e| e.home.to_string())
        .filter(|h| !h.is_empty());
    let mut gid = found.as_ref().map(|e| e.gid).unwrap_or(0);
    if let Some(g) = g.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: g.to_string(),
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(e) = &found {
        for grp in group_entries(group) {
            if grp.members.contains(&e.name)
                && grp.gid != gid
                && !additional_gids.contains(&grp.gid)
            {
                additional_gids.push(grp.gid);
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        additional_gids,
        home: home.unwrap_or_else(|| "/".to_string()),
    })
}

/// Reads `/etc/passwd` and `/etc/group` of the current root (missing files count as empty)
/// and resolves `user`.
pub(crate) fn resolve_in_current_root(user: Option<&str>) -> Result<ExecUser, UserError> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    resolve(user, &passwd, &group)
}

/// Switches the calling process to `u`, keeping permitted capabilities across the uid change
/// (`capabilities(7)`, PR_SET_KEEPCAPS) so they can be set explicitly afterwards.
pub(crate) fn switch(u: &ExecUser) -> Result<(), UserError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
    let err = |source| UserError::Switch {
        uid: u.uid,
        gid: u.gid,
        source,
    };
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let mut groups: Vec<Gid> = vec![Gid::from_raw(u.gid)];
    groups.extend(u.additional_gids.iter().map(|g| Gid::from_raw(*g)));
    setgroups(&groups).map_err(err)?;
    let g = Gid::from_raw(u.gid);
    setresgid(g, g, g).map_err(err)?;
    let id = Uid::from_raw(u.uid);
    setresuid(id, id, id).map_err(err)?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    debug!(uid = u.uid, gid = u.gid, groups = ?u.additional_gids, "user switched");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nwww:x:33:33:www:/var/www:/bin/sh\nnohome:x:70:70::::\n";
    const GROUP: &str =
        "root:x:0:\nbin:x:1:root,daemon\nwww:x:33:\nstaff:x:50:www,daemon\nadm:x:4:www\n";

    #[test]
    fn root_by_default() {
        let u = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![1]);
    }

    #[test]
    fn name_gives_uid_gid_home_and_groups() {
        let u = resolve(Some("www"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (33, 33, "/var/www"));
        assert_eq!(u.additional_gids, vec![50, 4]);
    }

    #[test]
    fn numeric_forms() {
        let u = resolve(Some("1000"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (1000, 0, "/"));
        assert!(u.additional_gids.is_empty());
        let u = resolve(Some("1000:1001"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1001));
        let u = resolve(Some("33"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (33, 33, "/var/www"));
    }

    #[test]
    fn name_and_group() {
        let u = resolve(Some("www:staff"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (33, 50));
        assert_eq!(u.additional_gids, vec![4]);
        assert!(matches!(
            resolve(Some("www:nogroup"), PASSWD, GROUP),
            Err(UserError::UnknownGroup { .. })
        ));
        assert!(matches!(
            resolve(Some("nobody"), PASSWD, GROUP),
            Err(UserError::UnknownUser { .. })
        ));
        assert_eq!(resolve(Some("nohome"), PASSWD, GROUP).unwrap().home, "/");
    }
}
