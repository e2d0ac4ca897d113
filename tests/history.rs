//! History: the last HISTORY_KEEP builds of a branch stay readable (`/history`,
//! `/status?id=`), older records leave Redis at the next push; `/repos` lists what was pushed.

use crate::harness::*;
use std::process::Command;

fn utc_now() -> String {
    run(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])).trim().to_string()
}

#[test]
fn sixty_pushes_keep_the_last_fifty_newest_first_and_delete_the_rest() {
    let b = Backend::start(1, &[("HISTORY_KEEP", "50")], &[]);
    let began = utc_now();
    let git = b.repo("acme/hist");
    git.write("integration.yml", "step: s\ndebug: true\nshell: echo \"build $BUILD_ID\"\n");
    let sha = git.commit("one commit, pushed 60 times");
    git.push();
    let mut ids = Vec::new();
    for _ in 0..60 {
        // Each build ends before the next push, so none is coalesced.
        let id = b.hook.push_ok(&git, &sha);
        assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
        ids.push(id);
    }
    let newest_first: Vec<String> = ids.iter().rev().take(50).cloned().collect();

    let r = b.hook.get_json("/history/acme/hist");
    assert_eq!(r.code, 200, "{r}");
    let got: Vec<String> = r.json().as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, newest_first, "exactly the last 50 ids, newest first");
    let first = &r.json()[0];
    assert_eq!((first["state"].clone(), first["sha"].clone(), first["repo"].clone()), (json!("passed"), json!(sha), json!("acme/hist")));
    assert_eq!(b.redis.lrange("ci:history:acme/hist:main"), newest_first, "ci:history list");
    for id in &ids[..10] {
        assert_eq!(b.redis.cli(&["EXISTS", &format!("ci:build:{id}")]).int(), 0, "ci:build:{id} must be deleted");
        assert_eq!(b.redis.cli(&["EXISTS", &format!("ci:log:{id}")]).int(), 0, "ci:log:{id} (live log) must be deleted");
    }
    assert_eq!(b.redis.cli(&["EXISTS", &format!("ci:log:{}", ids[59])]).int(), 1, "the newest live log is kept (1 hour)");
    for id in &ids[10..] {
        assert_eq!(b.redis.cli(&["TTL", &format!("ci:build:{id}")]).int(), -1, "ci:build:{id} kept, without expiry");
    }

    // Text: one line a build, newest first: id state sha(10) seconds slave when.
    let t = b.hook.get("/history/acme/hist");
    assert_eq!(t.code, 200, "{t}");
    let lines: Vec<String> = t.text().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 50, "{t}");
    let words: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(&words[..3], &[ids[59].as_str(), "passed", &sha[..10]], "{}", lines[0]);
    assert_eq!(words[4], b.slaves[0].name(), "{}", lines[0]);
    let when = words[5];
    assert!(when.len() == 20 && when.ends_with('Z') && when.as_bytes()[10] == b'T', "{when}");
    // ISO times compare as strings: the build finished between the test's start and now.
    let ended = utc_now();
    assert!(began.as_str() <= when && when <= ended.as_str(), "{when} not within {began}..{ended}");

    // limit is bounded by HISTORY_KEEP.
    let r = b.hook.get_json("/history/acme/hist?limit=3");
    assert_eq!(r.json().as_array().map(Vec::len), Some(3), "{r}");
    for bad in ["0", "51", "x", "-1"] {
        let r = b.hook.get_json(&format!("/history/acme/hist?limit={bad}"));
        assert_eq!(r.code, 400, "limit={bad}: {r}");
        assert!(r.json()["error"].as_str().unwrap().contains("HISTORY_KEEP"), "{r}");
    }
    let r = b.hook.get_json("/history/acme/never");
    assert_eq!(r.code, 404, "{r}");
    assert!(r.json()["error"].is_string(), "{r}");

    // ?id= of an old, still kept build: its own log, 200 (text) and its record (JSON).
    let old = &ids[10];
    let stored = read_build(&b.redis, old).unwrap();
    let r = b.hook.get(&format!("/status/acme/hist?id={old}"));
    assert_eq!((r.code, r.text()), (200, format!("{}\n", stored.log_text())), "?id={old}");
    assert!(r.text().contains(&format!("[passed]   . build {old}")), "{r}");
    let r = b.hook.get_json(&format!("/status/acme/hist?id={old}"));
    assert_eq!((r.code, r.json()["id"].clone()), (200, json!(old)), "{r}");
    // Gone, never existing, or another repository's: 404.
    for (path, why) in [
        (format!("/status/acme/hist?id={}", ids[0]), "deleted"),
        ("/status/acme/hist?id=99999".to_string(), "unknown"),
        ("/status/acme/hist?id=1%20OR".to_string(), "not a number"),
        (format!("/status/acme/other?id={old}"), "another repository's"),
    ] {
        let r = b.hook.get(&path);
        assert_eq!(r.code, 404, "{why}: {path}: {r}");
    }
}

#[test]
fn repos_lists_every_pushed_repository_sorted_and_its_default_branch_first() {
    let b = Backend::start(1, &[], &[]);
    let (mut zed, _, z_main) = b.build("zed/app", &[("integration.yml", "step: s\nshell: \"true\"\n")], "z");
    zed.checkout("dev");
    zed.write("integration.yml", "step: s\nshell: \"false\"\n");
    let dev_sha = zed.commit("dev");
    zed.push();
    let z_dev = wait_build(&b.redis, &b.hook.push_ok(&zed, &dev_sha), LONG);
    let (_, _, a_main) = b.build("acme/lib", &[("integration.yml", "step: s\nshell: \"true\"\n")], "a");

    let r = b.hook.get_json("/repos");
    assert_eq!(r.code, 200, "{r}");
    type Branches = Vec<(String, String, String)>;
    let got: Vec<(String, Branches)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|repo| {
            let branches = repo["branches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| (b["branch"].as_str().unwrap().into(), b["id"].as_str().unwrap().into(), b["state"].as_str().unwrap().into()))
                .collect();
            (repo["repo"].as_str().unwrap().to_string(), branches)
        })
        .collect();
    let want = vec![
        ("acme/lib".to_string(), vec![("main".to_string(), a_main.id.clone(), "passed".to_string())]),
        (
            "zed/app".to_string(),
            // The default branch first, though `dev` sorts before it and was pushed after it.
            vec![("main".to_string(), z_main.id.clone(), "passed".to_string()), ("dev".into(), z_dev.id.clone(), "failed".into())],
        ),
    ];
    assert_eq!(got, want, "{r}");
    let t = b.hook.get("/repos");
    let lines: Vec<&str> = t.body.split(|c| *c == b'\n').filter(|l| !l.is_empty()).map(|l| std::str::from_utf8(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{t}");
    assert!(lines[0].starts_with(&format!("acme/lib main {} passed ", a_main.id)), "{}", lines[0]);
    assert!(lines[1].starts_with(&format!("zed/app main {} passed ", z_main.id)), "{}", lines[1]);
    assert!(lines[2].starts_with(&format!("zed/app dev {} failed ", z_dev.id)), "{}", lines[2]);
    // The history of the non-default branch, by ?branch=.
    let h = b.hook.get_json("/history/zed/app?branch=dev");
    assert_eq!(h.json().as_array().map(|a| a.len()), Some(1), "{h}");
}
