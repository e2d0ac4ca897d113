//! A mirror repacked when it holds as many loose objects as git's own `gc --auto` allows: the
//! build that fetched runs `git repack -a -d --keep-unreachable`, and every object stays readable.
//! Oracles outside the slave: `git count-objects -v` in the mirror, `git cat-file -e` of objects
//! no ref reaches, `git fsck`, and the steps of later builds reading the pushed file.

use crate::harness::*;
use crate::pack_fetch::{push_note, YML};
use sha1::{Digest, Sha1};
use std::io::Write;
use std::process::Stdio;

/// `git count-objects -v`'s `name: value` of `key`.
fn count(mirror: &std::path::Path, key: &str) -> usize {
    let out = run(git(mirror).args(["count-objects", "-v"]));
    let line = out.lines().find_map(|l| l.strip_prefix(&format!("{key}: "))).unwrap_or_else(|| panic!("{key} in {out}"));
    line.trim().parse().unwrap()
}

/// Writes `n` loose blobs whose ids start with `17` into `mirror` (git estimates the loose
/// objects from that directory alone): their ids.
fn plant_in_17(mirror: &std::path::Path, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0.. {
        let content = format!("planted {i}\n");
        let id = format!("{:x}", Sha1::digest(format!("blob {}\0{content}", content.len())));
        if id.starts_with("17") {
            let mut hash = git(mirror).args(["hash-object", "-w", "--stdin"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            hash.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
            let written = hash.wait_with_output().unwrap();
            assert_eq!(String::from_utf8_lossy(&written.stdout).trim(), id);
            ids.push(id);
            if ids.len() == n {
                break;
            }
        }
    }
    ids
}

#[test]
fn a_mirror_with_gits_auto_gc_count_of_loose_objects_is_repacked_and_keeps_every_object() {
    let b = Backend::start(1, &[], &[]);
    let repo = b.repo("acme/upkeep");
    repo.write("integration.yml", YML);
    let url = repo.file_url();
    push_note(&b, &repo, &url, "one");
    let slave = &b.slaves[0];
    let mirror = slave.mirror(&repo);
    // 27 loose objects in objects/17 (27 × 256 over git's 6,700; 26 are not: the unit test).
    let in_17 = std::fs::read_dir(mirror.join("objects/17")).map_or(0, |d| d.count());
    let planted = plant_in_17(&mirror, 27 - in_17);
    let loose_before = count(&mirror, "count");
    let two = push_note(&b, &repo, &url, "two");
    let log = slave.log();
    let repacked = events(&log, "mirror.repacked");
    assert_eq!(repacked.len(), 1, "{log}");
    let loose: usize = repacked[0].split(" loose=").nth(1).and_then(|v| v.split(' ').next()?.parse().ok()).unwrap();
    assert!(loose >= 27 * 256 && repacked[0].contains(&format!("sha={two}")), "{}", repacked[0]);
    assert_eq!(count(&mirror, "count"), 0, "no loose object left (there were {loose_before})");
    assert_eq!(count(&mirror, "packs"), 1, "one pack");
    // Objects no ref reaches are kept: a checkout's HEAD may be such a commit.
    for id in &planted {
        let kept = git(&mirror).args(["cat-file", "-e", id]).status().unwrap();
        assert!(kept.success(), "{id} was removed");
    }
    let fsck = git(&mirror).args(["fsck", "--no-dangling"]).output().unwrap();
    assert!(fsck.status.success(), "the mirror is whole: {}", String::from_utf8_lossy(&fsck.stderr));
    // The next push reads from the pack and is not due again.
    push_note(&b, &repo, &url, "three");
    assert_eq!(events(&slave.log(), "mirror.repacked").len(), 1);
    let tip = run(git(&mirror).args(["rev-parse", "refs/heads/main"]));
    assert_eq!(tip.trim(), repo.head());
}
