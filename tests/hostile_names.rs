//! Names from payloads used as paths and arguments. Names the forges or git refuse are refused
//! with 400 and the exact reason: repository names with `..` or empty segments, a `:` (which
//! would make two builds share Redis keys), control characters; branch names with a leading
//! `-`, `..`, spaces, `:` (the rules of `git check-ref-format --branch`, which the test asks for
//! each name). The others — shell metacharacters, option-like components, unicode, very long
//! names — are built from a real bare repository on that branch; nothing outside the slave's
//! SLAVE_CACHE is touched, no shell ever sees a name, and git never takes one as an option.

use crate::harness::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const TOKEN: &str = "hostile-names-token";

/// Redis, a hook and one slave whose cache sits five levels below the test directory, so that
/// any `..` escape of up to five levels lands where the snapshot sees it.
fn backend() -> (Backend, PathBuf) {
    let redis = Redis::start();
    let cache = redis.root.join("sandbox/a/b/c/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let hook = Hook::start(&redis, &[("HOOK_TOKEN", TOKEN)]);
    let slave = Slave::start(&redis, &[("SLAVE_CACHE", cache.to_str().unwrap())]);
    hook.wait_slaves("slave", 1);
    (Backend { slaves: vec![slave], hook, redis }, cache)
}

/// Every path under `root`, relative, except inside `skip` (the cache, Redis's files, the git
/// repositories the test itself pushes to).
fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(p);
            }
        }
    }
    out
}

/// `TAG` as the README defines it.
fn tag(branch: &str, sha: &str) -> String {
    format!("{branch}-{}", &sha[..10]).chars().map(|c| if c.is_ascii_alphanumeric() || c == '=' { c } else { '-' }).collect()
}

/// A name as the README documents its cache path component, written here from that rule: bytes
/// `A-Za-z0-9_` kept, `.` and `-` kept unless first, every other byte as `%XX` (upper-case hex);
/// a result over 180 bytes becomes its first 171, `~` and the name's CRC-32 (8 lower-case hex).
fn component(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => out.push(b as char),
            b'.' | b'-' if i > 0 => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.len() > 180 {
        out.truncate(171);
        out.push_str(&format!("~{:08x}", crc32(name.as_bytes())));
    }
    out
}

#[test]
fn the_path_rule_by_hand() {
    // Worked by hand from the rule, so that `component` itself is checked.
    assert_eq!(component("../../etc"), "%2E.%2F..%2Fetc");
    assert_eq!(component("/abs"), "%2Fabs");
    assert_eq!(component("-rf"), "%2Drf");
    assert_eq!(component(".."), "%2E.");
    assert_eq!(component(";rm -rf x"), "%3Brm%20-rf%20x");
    assert_eq!(component("ü"), "%C3%BC");
    let long = format!("long/{}", "n".repeat(185));
    assert_eq!(component(&long), format!("long%2F{}~{:08x}", "n".repeat(164), crc32(long.as_bytes())));
}

const YML: &str = "step: names\ndebug: true\nshell: 'printf \"%s|%s|%s\\n\" \"$REPO\" \"$BRANCH\" \"$TAG\"'\n";

#[test]
fn hostile_repository_and_branch_names_stay_inside_the_cache() {
    let (b, cache) = backend();
    let root = b.root().to_path_buf();
    let unique = delivery_id();
    let marker = std::env::temp_dir().join(format!("pwned-{unique}"));
    let marker2 = std::env::temp_dir().join(format!("pwned-{unique}-2"));
    let tmp = marker.display().to_string();
    // A sentinel a `rm -rf x` run in the slave's working directory would remove.
    std::fs::create_dir_all(root.join("x/keep")).unwrap();

    // Repository names, each a real bare repository whose `main` is built.
    let long = format!("long/{}", "n".repeat(185));
    assert_eq!(long.len(), 190);
    let repo_names = ["-x/-rf", long.as_str()];
    // Branch names of one repository, each pushed to the bare repository.
    let branch_names: Vec<String> = vec![
        format!("x/--upload-pack=touch${{IFS}}{tmp}-2"),
        format!("$(touch${{IFS}}{tmp})"),
        ";rm${IFS}-rf${IFS}x".into(),
        "ünï/cödé".into(),
    ];
    // Names refused with 400, and the reason.
    let forges = ": forges allow `A-Za-z0-9._-` in `/`-separated segments";
    let refused_repos: Vec<(&str, String)> = vec![
        ("../../etc", format!("repository name \"../../etc\" has a \"..\" segment{forges}")),
        ("/abs", format!("repository name \"/abs\" has an empty segment{forges}")),
        ("a/../../b", format!("repository name \"a/../../b\" has a \"..\" segment{forges}")),
        ("../../../../../escape", format!("repository name \"../../../../../escape\" has a \"..\" segment{forges}")),
        ("t/br:x", format!("repository name \"t/br:x\" holds ':'{forges}")),
        ("acme/$(touch x)", format!("repository name \"acme/$(touch x)\" holds '$'{forges}")),
    ];
    let git_refuses = ": git refuses it (git check-ref-format)";
    let upload = format!("--upload-pack=touch${{IFS}}{tmp}-2");
    let touch = format!("$(touch {tmp})");
    let refused_branches: Vec<(String, String)> = vec![
        ("-rf".into(), format!("branch name \"-rf\" starts with \"-\"{git_refuses}")),
        (upload.clone(), format!("branch name {upload:?} starts with \"-\"{git_refuses}")),
        ("..".into(), format!("branch name \"..\" holds \"..\"{git_refuses}")),
        (touch.clone(), format!("branch name {touch:?} holds ' '{git_refuses}")),
        (";rm -rf x".into(), format!("branch name \";rm -rf x\" holds ' '{git_refuses}")),
        ("x:y".into(), format!("branch name \"x:y\" holds ':'{git_refuses}")),
    ];
    // The independent oracle for branch names: git itself.
    let git_accepts =
        |name: &str| std::process::Command::new("git").args(["check-ref-format", "--branch", name]).output().unwrap().status.success();
    for name in &branch_names {
        assert!(git_accepts(name), "git refuses {name:?}, which the test builds");
    }
    for (name, _) in &refused_branches {
        assert!(!git_accepts(name), "git accepts {name:?}, which the hook refuses");
    }

    let mut jobs: Vec<(String, String, String, String)> = vec![]; // repo, branch, sha, id
    let mut repos = vec![];
    for name in repo_names {
        let git = b.repo(name);
        git.write("integration.yml", YML);
        let sha = git.commit("hostile repository name");
        git.push();
        repos.push(git);
        let git = repos.last().unwrap();
        let r = b.hook.push(git, &sha);
        assert_eq!(r.code, 202, "repository {name:?}: {r}");
        jobs.push((name.to_string(), "main".into(), sha, r.json()["id"].as_str().unwrap().to_string()));
    }
    let mut names = b.repo("acme/names");
    names.write("integration.yml", YML);
    let sha = names.commit("hostile branch names");
    names.push();
    for branch in &branch_names {
        names.branch = branch.clone();
        names.push();
        let r = b.hook.push(&names, &sha);
        assert_eq!(r.code, 202, "branch {branch:?}: {r}");
        jobs.push(("acme/names".into(), branch.clone(), sha.clone(), r.json()["id"].as_str().unwrap().to_string()));
    }
    // The refused names: 400, the reason, no build. (`t/br:x` + `y` and `t/br` + `x:y` would
    // have shared the Redis keys `...:t/br:x:y`.)
    let builds = b.redis.keys("ci:build:*").len();
    let refusals = refused_repos
        .iter()
        .map(|(repo, why)| (repo.to_string(), "y".to_string(), why.clone()))
        .chain(refused_branches.iter().map(|(branch, why)| ("t/br".to_string(), branch.clone(), why.clone())));
    for (repo, branch, why) in refusals {
        let body = github_push(&repo, &names.file_url(), &branch, &sha, "refused", "main").to_string();
        let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
        assert_eq!(r.code, 400, "repo {repo:?} branch {branch:?}: {r}");
        assert_eq!(r.json(), json!({ "error": why }), "repo {repo:?} branch {branch:?}");
    }
    assert_eq!(b.redis.keys("ci:build:*").len(), builds, "a refused name created a build");
    let skip = [cache.clone(), root.join("redis"), root.join("git")];
    let before = snapshot(&root, &skip);

    let mut failures = vec![];
    for (repo, branch, sha, id) in &jobs {
        let build = wait_build(&b.redis, id, LONG);
        // Every name the hook accepted builds; the names appear only as data.
        let subject = if repo == "acme/names" { "hostile branch names" } else { "hostile repository name" };
        let want = vec![
            format!("- commit {} ({subject})", &sha[..10]),
            "- names".to_string(),
            "[passed] printf \"%s|%s|%s\\n\" \"$REPO\" \"$BRANCH\" \"$TAG\" (0 seconds, exit code 0)".to_string(),
            format!("[passed]   . {repo}|{branch}|{}", tag(branch, sha)),
        ];
        if build.state != "passed" || build.log != want {
            failures.push(format!("{repo:?} {branch:?}: expected passed with {want:?}, got {} {:?}", build.state, build.log));
        }
        let dir = cache.join(component(repo)).join(component(branch)).join("checkout");
        if !dir.join("integration.yml").is_file() {
            failures.push(format!("{repo:?} {branch:?}: no checkout at {}", dir.display()));
        } else if !dir.canonicalize().unwrap().starts_with(cache.canonicalize().unwrap()) {
            failures.push(format!("{repo:?} {branch:?}: checkout {} is outside the cache", dir.display()));
        }
    }
    assert!(failures.is_empty(), "hostile names:\n{}", failures.join("\n"));

    let after = snapshot(&root, &skip);
    let appeared: Vec<_> = after.difference(&before).collect();
    let vanished: Vec<_> = before.difference(&after).collect();
    assert!(appeared.is_empty() && vanished.is_empty(), "outside the cache, appeared: {appeared:?}, vanished: {vanished:?}");
    assert!(root.join("x/keep").is_dir(), "`rm -rf x` ran somewhere");
    let sandbox: Vec<_> = std::fs::read_dir(root.join("sandbox/a/b/c")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(sandbox, vec![std::ffi::OsString::from("cache")], "beside the cache");
    for p in [&marker, &marker2] {
        assert!(!p.exists(), "{} exists: a name was run by a shell or given to git as an option", p.display());
    }
    assert!(!Path::new("/abs").exists(), "/abs was created");
    assert!(!root.parent().unwrap().join("escape").exists() && !root.parent().unwrap().join("b").exists(), "a name escaped the test dir");

    // The names read back through /status, percent-encoded in the path and the query.
    for (repo, branch, _sha, _id) in &jobs {
        let path = format!("/status/{}?branch={}", urlencode(repo).replace("%2F", "/"), urlencode(branch));
        let r = b.hook.get(&path);
        assert_eq!(r.code, 200, "GET {path}: {r}");
        assert!(r.text().starts_with("- commit "), "GET {path}: {r}");
    }
    let _ = std::fs::remove_file(&marker);
    let _ = std::fs::remove_file(&marker2);
}

#[test]
fn names_with_control_characters_are_400_and_build_nothing() {
    let (b, _cache) = backend();
    let git = b.repo("acme/ctl");
    git.write("integration.yml", YML);
    let sha = git.commit("ctl");
    git.push();
    let cases: [(&str, &str); 6] = [
        ("acme/ctl\nX-Injected: 1", "main"),
        ("acme/c\0tl", "main"),
        ("acme/ctl", "ma\nin"),
        ("acme/ctl", "ma\0in"),
        ("acme/\rctl", "main"),
        ("acme/ctl", "x\x1b[31m"),
    ];
    for (repo, branch) in cases {
        let body = github_push(repo, &git.file_url(), branch, &sha, "ctl", "main").to_string();
        let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
        assert_eq!(r.code, 400, "repo {repo:?} branch {branch:?}: {r}");
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("control characters"), "repo {repo:?} branch {branch:?}: reason {err:?}");
    }
    // Over-long names are refused too.
    let body = github_push(&format!("o/{}", "n".repeat(300)), &git.file_url(), "main", &sha, "long", "main").to_string();
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 400, "a 302-byte repository name: {r}");
    assert_eq!(b.redis.keys("ci:build:*"), Vec::<String>::new(), "a refused name created a build");
    assert!(!b.hook.log().contains("X-Injected: 1\n"), "a newline from a name split a log line");
    let id = b.hook.push_ok(&git, &sha);
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
}
