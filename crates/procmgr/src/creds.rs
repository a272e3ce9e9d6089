//! Dropping root: a server binds its privileged port as root, then runs as an
//! unprivileged user before it serves anyone.

use std::ffi::CString;
use std::io;

use nix::unistd::{Gid, Group, Uid, User};

use crate::ProcError;
use crate::error::os;

/// Whom a process runs as after [`drop_privileges`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Credentials {
    /// The user's name.
    pub user: String,
    /// Its uid: the real, effective and saved uid now.
    pub uid: u32,
    /// The group's name.
    pub group: String,
    /// Its gid: the real, effective and saved gid now.
    pub gid: u32,
    /// The supplementary groups now (the user's, from the group database).
    pub groups: Vec<u32>,
}

/// Switches this process for good to `user` and to `group` (by default the
/// user's own), with the user's supplementary groups, as `initgroups(3)`
/// finds them: the groups first, then the gid, then the uid, since each step
/// needs the privilege the next one gives up. Then checks that root cannot be
/// regained. Call it after binding and before serving; children forked later
/// run as the same user.
///
/// It must be called from a single-threaded process (glibc changes every
/// thread's credentials with a signal, which a server that blocks signals
/// would not take).
///
/// # Errors
/// [`ProcError::UnknownUser`], [`ProcError::UnknownGroup`], or
/// [`ProcError::DropPrivileges`] naming the step that failed (`EPERM` when
/// not root). After an error the process may have changed some credentials:
/// do not serve, exit.
pub fn drop_privileges(user: &str, group: Option<&str>) -> Result<Credentials, ProcError> {
    let step =
        |step: &'static str| move |errno| ProcError::DropPrivileges { step, source: os(errno) };
    let found = User::from_name(user).map_err(step("look up the user"))?;
    let found = found.ok_or_else(|| ProcError::UnknownUser { name: user.to_owned() })?;
    let gid = match group {
        Some(name) => {
            let group = Group::from_name(name).map_err(step("look up the group"))?;
            group.ok_or_else(|| ProcError::UnknownGroup { name: name.to_owned() })?.gid
        }
        None => found.gid,
    };
    let name = CString::new(user).map_err(|_| ProcError::UnknownUser { name: user.to_owned() })?;
    nix::unistd::initgroups(&name, gid).map_err(step("set the supplementary groups"))?;
    nix::unistd::setgid(gid).map_err(step("set the group"))?;
    nix::unistd::setuid(found.uid).map_err(step("set the user"))?;
    let unchanged = |what: &'static str| ProcError::DropPrivileges {
        step: what,
        source: io::Error::other("the credentials did not change as asked"),
    };
    if Uid::current() != found.uid || Uid::effective() != found.uid {
        return Err(unchanged("check the user"));
    }
    if Gid::current() != gid || Gid::effective() != gid {
        return Err(unchanged("check the group"));
    }
    if !found.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(unchanged("check that root cannot be regained"));
    }
    let groups = nix::unistd::getgroups().map_err(step("read the supplementary groups"))?;
    let group = Group::from_gid(gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name);
    Ok(Credentials {
        user: user.to_owned(),
        uid: found.uid.as_raw(),
        group,
        gid: gid.as_raw(),
        groups: groups.into_iter().map(Gid::as_raw).collect(),
    })
}
