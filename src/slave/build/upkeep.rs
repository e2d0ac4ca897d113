//! When a mirror is due a repack. Every fetch adds to a mirror: the
//! one-request fetch ([`crate::slave::build::pack_fetch`]) stores each
//! object loose, `git fetch` of a large push keeps a pack. Git's automatic
//! gc is off on a build's path (`gc.auto=0`: it would start processes in
//! the middle of a build, and `gc` prunes objects a checkout borrowing the
//! mirror may still need), so without this a mirror grows by a file per
//! object, for ever, and every read opens more packs.
//!
//! The thresholds are git's own for `gc --auto`, estimated as git does: a
//! mirror is due when `objects/17` holds [`MAX_LOOSE`] / 256 loose objects
//! or more (about [`MAX_LOOSE`] in all), or it has more than [`MAX_PACKS`]
//! packs. The caller, holding the repository's lock, then runs
//! [`REPACK`]: one pack of every object, reachable or not (a checkout's
//! `HEAD` may be a commit no branch names since a force push), and the
//! loose copies removed. Nothing is deleted that a reader could still ask for.

use std::path::Path;

/// Loose objects a mirror may hold (git's `gc.auto` default).
pub const MAX_LOOSE: usize = 6_700;
/// Packs a mirror may hold (git's `gc.autoPackLimit` default).
pub const MAX_PACKS: usize = 50;
/// The repack run when due (arguments to git, in the mirror).
pub const REPACK: &[&str] = &["repack", "-a", "-d", "-q", "--keep-unreachable"];

/// What a mirror that is due holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Loose objects, estimated from `objects/17` (× 256).
    pub loose: usize,
    pub packs: usize,
}

/// `Some` when the bare repository `git_dir` is due a repack: two
/// directory reads, no process.
pub fn due(git_dir: &Path) -> Option<Due> {
    let objects = git_dir.join("objects");
    let count = |dir: &Path, keep: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|e| keep(&e.file_name().to_string_lossy())).count()
    };
    let in_17 = count(&objects.join("17"), &|n| n.len() == 38 && n.bytes().all(|b| b.is_ascii_hexdigit()));
    let packs = count(&objects.join("pack"), &|n| n.starts_with("pack-") && n.ends_with(".idx"));
    (in_17 >= MAX_LOOSE.div_ceil(256) || packs > MAX_PACKS).then_some(Due { loose: in_17 * 256, packs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_is_due_at_gits_own_thresholds() {
        let dir = std::env::temp_dir().join(format!("ci-upkeep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (loose, pack) = (dir.join("objects/17"), dir.join("objects/pack"));
        std::fs::create_dir_all(&loose).unwrap();
        std::fs::create_dir_all(&pack).unwrap();
        assert_eq!(due(&dir), None, "empty");
        // 26 loose objects in objects/17 (about 6,656 in all) are not enough; 27 are, as in git.
        for i in 0..26 {
            std::fs::write(loose.join(format!("{i:038x}")), "").unwrap();
        }
        std::fs::write(loose.join("not-an-object"), "").unwrap();
        std::fs::write(loose.join(format!("tmp_obj_{:030x}", 0)), "").unwrap();
        assert_eq!(due(&dir), None, "26 and two files that are no objects");
        std::fs::write(loose.join(format!("{:038x}", 26)), "").unwrap();
        assert_eq!(due(&dir), Some(Due { loose: 27 * 256, packs: 0 }));
        std::fs::remove_dir_all(&loose).unwrap();
        // 50 packs are allowed, 51 are not; only the indexes are counted.
        for i in 0..50 {
            std::fs::write(pack.join(format!("pack-{i:040x}.idx")), "").unwrap();
            std::fs::write(pack.join(format!("pack-{i:040x}.pack")), "").unwrap();
        }
        assert_eq!(due(&dir), None, "50 packs");
        std::fs::write(pack.join(format!("pack-{:040x}.idx", 50)), "").unwrap();
        assert_eq!(due(&dir), Some(Due { loose: 0, packs: 51 }));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
