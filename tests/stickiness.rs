//! Every build of a repository lands on slave CRC32(repo) mod N, where its cached clone (and
//! the untracked files earlier builds left in it) is kept. `X-Reset: true` wipes it.

use crate::harness::*;

#[test]
fn thirty_repositories_stick_to_the_crc32_slave_and_keep_their_cache() {
    let b = Backend::start(3, &[], &[]);
    let mut indexes: Vec<u32> = b.slaves.iter().map(|s| s.index).collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2]);
    let names: Vec<String> = (0..30).map(|i| format!("sticky/repo-{i:02}")).collect();
    let mut used = [0; 3];
    for n in &names {
        used[(crc32(n.as_bytes()) % 3) as usize] += 1;
    }
    assert!(used.iter().all(|&u| u > 0), "the names must spread over all three slaves: {used:?}");

    let repos: Vec<GitRepo> = names.iter().map(|n| b.repo(n)).collect();
    let mut first = vec![];
    for git in &repos {
        git.write("integration.yml", STICKY_YML);
        git.write("round.txt", "1");
        let sha = git.commit("round 1");
        git.push();
        first.push(b.hook.push_ok(git, &sha));
    }
    let first: Vec<Build> = first.iter().map(|id| wait_build(&b.redis, id, LONG)).collect();
    let mut second = vec![];
    for git in &repos {
        git.write("round.txt", "2");
        let sha = git.commit("round 2");
        git.push();
        second.push(b.hook.push_ok(git, &sha));
    }
    let second: Vec<Build> = second.iter().map(|id| wait_build(&b.redis, id, LONG)).collect();

    let logs: Vec<(String, String)> = b.slaves.iter().map(|s| (s.name(), s.log())).collect();
    let mut failures = vec![];
    for (i, name) in names.iter().enumerate() {
        let want = format!("slave-{}", crc32(name.as_bytes()) % 3);
        let (b1, b2) = (&first[i], &second[i]);
        if b1.slave != want || b2.slave != want {
            failures.push(format!("{name}: builds ran on {} and {}, CRC32 mod 3 names {want}", b1.slave, b2.slave));
        }
        if b1.state != "passed" || b2.state != "passed" {
            failures.push(format!("{name}: states {} / {}: {:?} {:?}", b1.state, b2.state, b1.log, b2.log));
        }
        if seen(b1).as_deref() != Some("none") {
            failures.push(format!("{name}: first build saw {:?}", seen(b1)));
        }
        if seen(b2).as_deref() != Some(b1.id.as_str()) {
            failures.push(format!("{name}: second build saw {:?}, the first build's artifact says {}", seen(b2), b1.id));
        }
        // The slave process named in the record is the one that logged the builds.
        for build in [b1, b2] {
            let (_, log) = logs.iter().find(|(n, _)| *n == want).unwrap();
            let started = events(log, "build.started").iter().any(|l| kv(l, "id").as_deref() == Some(build.id.as_str()));
            if !started {
                failures.push(format!("{name}: no build.started id={} in {want}'s log", build.id));
            }
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn x_reset_wipes_the_cached_clone() {
    let b = Backend::start(1, &[("HOOK_TOKEN", "reset-token")], &[]);
    let git = b.repo("acme/reset");
    git.write("integration.yml", STICKY_YML);
    let sha = git.commit("reset");
    git.push();
    let id1 = b.hook.push_ok(&git, &sha);
    let b1 = wait_build(&b.redis, &id1, LONG);
    assert_eq!(seen(&b1).as_deref(), Some("none"), "{:#?}", b1.log);

    let auth = ("Authorization", "Bearer reset-token");
    let r = b.hook.post("/build/acme/reset?branch=main", &[auth], b"");
    assert_eq!(r.code, 202, "{r}");
    let b2 = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(seen(&b2).as_deref(), Some(id1.as_str()), "a plain re-run keeps the cache: {:#?}", b2.log);

    let r = b.hook.post("/build/acme/reset?branch=main", &[auth, ("X-Reset", "true")], b"");
    assert_eq!(r.code, 202, "{r}");
    let b3 = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(b3.state, "passed", "{:#?}", b3.log);
    assert_eq!(seen(&b3).as_deref(), Some("none"), "X-Reset: true must wipe the cached clone: {:#?}", b3.log);
}

/// Branches of one repository pushed while its slave is busy come into the mirror with the
/// first of their builds' fetch; the others then fetch nothing (the slave's git commands traced:
/// one fetch in all) and build with the remote gone (each fetching alone, they would find
/// neither the remote nor their commit).
#[test]
fn queued_branches_of_a_repository_come_in_one_fetch() {
    let trace = fresh_dir("burst-trace").join("git.trace");
    let b = Backend::start(1, &[], &[("SLAVE_EXECUTORS", "1"), ("GIT_TRACE", trace.to_str().unwrap())]);
    let mut git = b.repo("acme/burst");
    git.write("integration.yml", "step: s\ndebug: true\nshell: git log -1 --format=%s\n");
    let warm = git.commit("warm");
    git.push();
    let id = b.hook.push_ok(&git, &warm);
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed", "the mirror cloned");

    let (blocker, busy_id) = b.occupy("acme/busy");
    let gate = Blocker::new(b.root(), "burst");
    git.write("integration.yml", &gate.yml());
    let main = git.commit("main, held");
    git.push();
    let mut ids = vec![b.hook.push_ok(&git, &main)];
    let mut shas = vec![];
    for branch in ["b1", "b2"] {
        git.checkout(branch);
        git.write("integration.yml", "step: s\ndebug: true\nshell: git log -1 --format=%s\n");
        let sha = git.commit(&format!("on {branch}"));
        git.push();
        ids.push(b.hook.push_ok(&git, &sha));
        shas.push(sha);
    }
    blocker.release();
    assert_eq!(wait_build(&b.redis, &busy_id, LONG).state, "passed");
    gate.wait_started();
    // main's fetch is done: the remote goes away before b1 and b2 start.
    std::fs::rename(&git.bare, git.bare.with_extension("gone")).unwrap();
    gate.release();
    for (i, id) in ids.iter().enumerate() {
        let build = wait_build(&b.redis, id, LONG);
        assert_eq!(build.state, "passed", "build {i}: {:#?}", build.log);
        if i > 0 {
            assert!(build.has_line(&format!("[passed]   . on b{i}")), "{:#?}", build.log);
            assert_eq!(build.sha, shas[i - 1]);
        }
    }
    let traced = std::fs::read_to_string(&trace).unwrap();
    let fetches: Vec<&str> = traced.lines().filter(|l| l.contains("built-in: git fetch ")).collect();
    assert_eq!(fetches.len(), 1, "one fetch (main's, bringing b1 and b2): {fetches:#?}");
    assert!(fetches[0].contains("refs/heads/b1:refs/heads/b1") && fetches[0].contains("refs/heads/b2:refs/heads/b2"), "{}", fetches[0]);
}

/// A queued branch deleted before the fetch that would bring it along does not fail the
/// build that fetches: it fetches its own branch alone.
#[test]
fn a_deleted_queued_branch_does_not_fail_the_fetch_that_would_bring_it() {
    let b = Backend::start(1, &[], &[("SLAVE_EXECUTORS", "1")]);
    let mut git = b.repo("acme/burst");
    git.write("integration.yml", "step: s\ndebug: true\nshell: git log -1 --format=%s\n");
    let warm = git.commit("warm");
    git.push();
    let id = b.hook.push_ok(&git, &warm);
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed", "the mirror cloned");

    let (blocker, busy_id) = b.occupy("acme/busy");
    let main = git.commit("main again");
    git.push();
    let main_id = b.hook.push_ok(&git, &main);
    git.checkout("doomed");
    let doomed = git.commit("on doomed");
    git.push();
    b.hook.push_ok(&git, &doomed);
    run(crate::harness::git(&git.work).args(["push", "-q", "origin", ":refs/heads/doomed"]));
    blocker.release();
    assert_eq!(wait_build(&b.redis, &busy_id, LONG).state, "passed");
    let build = wait_build(&b.redis, &main_id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert!(build.has_line("[passed]   . main again"), "{:#?}", build.log);
}
