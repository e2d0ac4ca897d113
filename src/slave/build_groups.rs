//! A group of its own for each repository and each checkout, so that a
//! build reaches its own checkout and nothing else of the cache (a slave
//! running as root only).
//!
//! Every step runs as the build user (SLAVE_BUILD_USER), with its checkout's
//! group as its primary group and its repository's as a supplementary one:
//!
//! - `<cache>/<repo>`: `root:<repo group>`, mode 0750 — the mirror inside is
//!   readable by that repository's builds alone;
//! - `<cache>/<repo>/<branch>`, which holds the branch's checkout and HOME
//!   (the build user's): `root:<branch group>`, mode 0750 — that branch's
//!   builds alone pass.
//!
//! Another repository's build is in neither group; another branch's build
//! of the same repository is not in the checkout's. A running build's
//! `/proc/<pid>/environ` (and `cwd`, `fd`) is out of reach of every build with
//! another primary group: the kernel lets a process read them only when
//! both its user and its group match (`ptrace_may_access`).
//!
//! The groups come from SLAVE_BUILD_GROUPS, a range no other group uses;
//! which group a directory has is read from the directory itself, and the
//! next one to give is kept in `<cache>/.build-groups-next`, so a group is
//! never given twice (a removed checkout's files outside the cache stay its
//! old group's).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file holding the next group to give.
const NEXT: &str = ".build-groups-next";

/// The mode of a repository's and a branch's directory: the slave writes,
/// the builds in its group pass and read.
const MODE: u32 = 0o750;

pub(crate) struct BuildGroups {
    first: u32,
    last: u32,
    next: Mutex<u32>,
    file: PathBuf,
}

impl BuildGroups {
    /// The groups of `cache`, from `range` (SLAVE_BUILD_GROUPS). The next
    /// group is past both the one recorded and every one the cache's
    /// directories have (a lost record gives none twice).
    pub(crate) fn open(cache: &Path, (first, last): (u32, u32)) -> std::io::Result<BuildGroups> {
        let file = cache.join(NEXT);
        let recorded = match std::fs::read_to_string(&file) {
            Ok(text) => text.trim().parse::<u32>().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let in_range = |g: u32| (first..=last).contains(&g);
        let mut next = recorded.filter(|g| in_range(*g)).unwrap_or(first);
        for repo in std::fs::read_dir(cache)?.flatten() {
            let path = repo.path();
            let dirs = std::iter::once(path.clone()).chain(std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()));
            for dir in dirs {
                if let Ok(m) = std::fs::symlink_metadata(&dir) {
                    if m.is_dir() && in_range(m.gid()) {
                        next = next.max(m.gid().saturating_add(1));
                    }
                }
            }
        }
        Ok(BuildGroups { first, last, next: Mutex::new(next), file })
    }

    /// The group `dir` already has, when it is a directory of the slave's
    /// (root) with one of these groups and its mode; else `None`.
    pub(crate) fn of(&self, dir: &Path) -> Option<u32> {
        let m = std::fs::symlink_metadata(dir).ok()?;
        let ours = m.is_dir() && m.uid() == 0 && (self.first..=self.last).contains(&m.gid());
        (ours && m.mode() & 0o7777 == MODE).then_some(m.gid())
    }

    /// A group never given before, recorded before it is returned.
    pub(crate) fn give_new(&self) -> std::io::Result<u32> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if *next > self.last || *next < self.first {
            return Err(std::io::Error::other(format!(
                "SLAVE_BUILD_GROUPS {}-{} is used up: widen it or start with a new SLAVE_CACHE",
                self.first, self.last
            )));
        }
        let group = *next;
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", group + 1))?;
        std::fs::rename(&tmp, &self.file)?;
        // SLAVE_BUILD_GROUPS ends below u32::MAX (config), so this cannot overflow.
        *next = group + 1;
        Ok(group)
    }

    /// `dir` as one of ours: the slave's (root), `group`, mode 0750.
    pub(crate) fn enclose(dir: &Path, group: u32) -> std::io::Result<()> {
        std::os::unix::fs::lchown(dir, Some(0), Some(group))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(MODE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("build-groups-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn groups_are_given_once_and_survive_a_restart() {
        let cache = dir("once");
        let groups = BuildGroups::open(&cache, (5000, 5002)).unwrap();
        assert_eq!(groups.give_new().unwrap(), 5000);
        assert_eq!(groups.give_new().unwrap(), 5001);
        let again = BuildGroups::open(&cache, (5000, 5002)).unwrap();
        assert_eq!(again.give_new().unwrap(), 5002, "a restarted slave gives 5000 again");
        let e = again.give_new().unwrap_err();
        assert!(e.to_string().contains("used up"), "{e}");
    }

    #[test]
    fn a_lost_record_gives_no_group_a_directory_has() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let cache = dir("lost");
        let repo = cache.join("acme");
        std::fs::create_dir_all(repo.join("main")).unwrap();
        BuildGroups::enclose(&repo, 7001).unwrap();
        BuildGroups::enclose(&repo.join("main"), 7007).unwrap();
        std::fs::create_dir(repo.join("other")).unwrap();
        let groups = BuildGroups::open(&cache, (7000, 7999)).unwrap();
        assert_eq!(groups.of(&repo), Some(7001));
        assert_eq!(groups.of(&repo.join("other")), None, "root's group is not one of ours");
        std::fs::set_permissions(&repo, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(groups.of(&repo), None, "a directory open to others is not ours");
        assert_eq!(groups.give_new().unwrap(), 7008);
    }
}
