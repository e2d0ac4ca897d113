//! Who steps run as. A slave running as root runs steps — and the git commands
//! that write their checkouts — as SLAVE_BUILD_USER (unprivileged; `nobody` by
//! default) with that user's groups plus the group owning the Docker socket. A
//! slave running as anyone else runs them as itself and makes itself
//! non-dumpable, so that they cannot read its memory or environment in /proc.

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The socket whose group builds get, so that they can run `docker`.
pub(crate) const DOCKER_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The slave is root and every child it starts for a build switches to
    /// this user; false: children run as the slave's own user.
    pub switch: bool,
}

impl BuildUser {
    /// The slave's own user: nothing to switch.
    pub(crate) fn current() -> BuildUser {
        // SAFETY: geteuid/getegid cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let name = name_of(uid).unwrap_or_else(|| uid.to_string());
        BuildUser { name, uid, gid, groups: vec![], switch: false }
    }

    /// SLAVE_BUILD_USER when the slave runs as root (a name, or a numeric
    /// uid whose gid is the same number); otherwise the slave's own user.
    pub fn resolve(name: &str) -> Result<BuildUser, UserError> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(BuildUser::current());
        }
        let bad = |kind| UserError { name: name.to_string(), kind };
        let cname = CString::new(name).map_err(|_| bad(UserErrorKind::NulByte))?;
        let (uid, gid, groups) = match lookup(&cname) {
            Some((uid, gid)) => (uid, gid, group_list(&cname, gid)),
            None => match name.parse::<u32>() {
                Ok(n) => (n, n, vec![n]),
                Err(_) => return Err(bad(UserErrorKind::NoSuchUser)),
            },
        };
        if uid == 0 || gid == 0 {
            return Err(bad(UserErrorKind::Root));
        }
        let mut groups: Vec<u32> = groups.into_iter().filter(|g| *g != 0).collect();
        if let Some(g) = docker_socket_group() {
            if g != 0 && !groups.contains(&g) {
                groups.push(g);
            }
        }
        Ok(BuildUser { name: name.to_string(), uid, gid, groups, switch: true })
    }

    /// This user in a checkout's groups: `checkout` primary (what keeps its
    /// processes' /proc entries from other builds), `repo` beside it, and the
    /// Docker socket's group when this user had it; no other group of its.
    pub(crate) fn in_groups(&self, checkout: u32, repo: u32) -> BuildUser {
        let mut groups = vec![checkout, repo];
        groups.extend(docker_socket_group().filter(|g| self.groups.contains(g) && !groups.contains(g)));
        BuildUser { name: self.name.clone(), uid: self.uid, gid: checkout, groups, switch: self.switch }
    }

    /// Makes `cmd` run as this user (when the slave switches users at all).
    pub(crate) fn apply(&self, cmd: &mut Command) {
        if !self.switch {
            return;
        }
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        // SAFETY: between fork and exec the closure only makes the setgroups,
        // setgid and setuid system calls, on memory allocated before the fork.
        // Raw system calls, not glibc's wrappers: those would first try to
        // change the credentials of every thread the slave had (copied lists
        // in the forked child), which made each spawn as the build user take
        // about 3 ms instead of 1 (measured on the spawn path). The child has one thread; the kernel
        // changes the process's credentials.
        unsafe {
            cmd.pre_exec(move || {
                let ok = |r: libc::c_long| r == 0;
                if !ok(libc::syscall(libc::SYS_setgroups, groups.len() as libc::c_long, groups.as_ptr()))
                    || !ok(libc::syscall(libc::SYS_setgid, gid as libc::c_long))
                    || !ok(libc::syscall(libc::SYS_setuid, uid as libc::c_long))
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Whether `path` itself (not what a symlink points to) is this user's.
    pub(crate) fn owns(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).map(|m| m.uid() == self.uid).unwrap_or(false)
    }

    /// Gives `path` (which the slave just created) to this user.
    pub(crate) fn give(&self, path: &Path) -> std::io::Result<()> {
        if self.switch {
            std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

/// The group owning the Docker socket, when there is one.
pub(crate) fn docker_socket_group() -> Option<u32> {
    std::fs::metadata(DOCKER_SOCKET).ok().map(|m| m.gid())
}

/// A slave that is not root makes itself non-dumpable: /proc/<pid>/environ,
/// mem and fd then belong to root, out of reach of the steps, which run as
/// the same user. (Reset by exec, so it is called after any re-exec.)
pub fn protect_self() -> std::io::Result<()> {
    // SAFETY: geteuid cannot fail; prctl(PR_SET_DUMPABLE, 0) only changes a flag of this process.
    unsafe {
        if libc::geteuid() != 0 && libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// SLAVE_BUILD_USER names no user steps may run as: the name, and why.
#[derive(Debug)]
pub struct UserError {
    name: String,
    kind: UserErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserErrorKind {
    NulByte,
    /// Neither a user of this system nor a numeric uid.
    NoSuchUser,
    /// Root, or a user whose group is root's.
    Root,
}

impl UserError {
    pub fn kind(&self) -> UserErrorKind {
        self.kind
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SLAVE_BUILD_USER={:?}: ", self.name)?;
        f.write_str(match self.kind {
            UserErrorKind::NulByte => "contains a NUL byte",
            UserErrorKind::NoSuchUser => "no such user; create it in the slave's image or name another (or a numeric uid)",
            UserErrorKind::Root => "that is root (or its group); steps must run as an unprivileged user",
        })
    }
}

impl std::error::Error for UserError {}

fn lookup(name: &CStr) -> Option<(u32, u32)> {
    // SAFETY: getpwnam_r writes only into `pwd` and `buf`, within the length given.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found);
        (rc == 0 && !found.is_null()).then_some((pwd.pw_uid, pwd.pw_gid))
    }
}

fn name_of(uid: u32) -> Option<String> {
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`; pw_name then points into `buf`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found);
        (rc == 0 && !found.is_null()).then(|| CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned())
    }
}

/// The user's groups as /etc/group lists them (its primary group included).
fn group_list(name: &CStr, gid: u32) -> Vec<u32> {
    let mut size: libc::c_int = 64;
    for _ in 0..8 {
        let mut groups = vec![0 as libc::gid_t; size as usize];
        let mut count = size;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        size = count.max(size * 2);
    }
    vec![gid]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_user_is_never_root() {
        let root_uid = unsafe { libc::geteuid() } == 0;
        match BuildUser::resolve("root") {
            Err(e) => assert!(root_uid && e.to_string().contains("unprivileged"), "{e}"),
            Ok(u) => assert!(!root_uid && !u.switch && u.uid != 0, "{u:?}"),
        }
        match BuildUser::resolve("0") {
            Err(e) => assert!(root_uid && e.to_string().contains("unprivileged"), "{e}"),
            Ok(u) => assert!(!root_uid && !u.switch, "{u:?}"),
        }
    }

    #[test]
    fn nobody_is_found_by_name_when_root() {
        let u = BuildUser::resolve("nobody").unwrap();
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!((u.name.as_str(), u.uid, u.switch), ("nobody", 65534, true), "{u:?}");
            assert!(!u.groups.contains(&0), "{u:?}");
            let e = BuildUser::resolve("no-such-user-here").unwrap_err();
            assert!(e.to_string().contains("no such user"), "{e}");
        } else {
            assert_eq!(u, BuildUser::current());
        }
    }
}
