//! At most one pending build per repo+branch (a newer push replaces its commit), and a
//! redelivered delivery id answered 200 without a second build.

use crate::harness::*;

#[test]
fn a_newer_push_replaces_the_pending_commit() {
    let b = Backend::start(1, &[], &[]);
    // Keep the only slave busy so the pushes below stay pending (queued, not started).
    let (blocker, busy_id) = b.occupy("acme/busy");

    let git = b.repo("acme/coalesce");
    git.write("integration.yml", "step: s\ndebug: true\nshell: cat version.txt\n");
    git.write("version.txt", "A");
    let a = git.commit("commit A");
    git.push();
    let ra = b.hook.push(&git, &a);
    assert_eq!(ra.code, 202, "{ra}");
    let ja = ra.json();
    assert_eq!((ja["coalesced"].clone(), ja["sha"].clone()), (json!(false), json!(a)), "{ra}");
    let id = ja["id"].as_str().unwrap().to_string();
    assert_eq!(b.redis.get("ci:pending:acme/coalesce:main").as_deref(), Some(id.as_str()), "ci:pending");
    // Nothing finished yet: 202 as text, the queued record as JSON.
    let r = b.hook.get("/status/acme/coalesce");
    assert_eq!(r.code, 202, "status of a queued first build: {r}");
    let r = b.hook.get_json("/status/acme/coalesce");
    assert_eq!((r.code, r.json()["state"].clone()), (200, json!("queued")), "{r}");
    assert!(r.json()["started_at"].is_null() && r.json()["seconds"].is_null(), "{r}");

    git.write("version.txt", "B");
    let c = git.commit("commit B");
    git.push();
    let rb = b.hook.push(&git, &c);
    assert_eq!(rb.code, 202, "{rb}");
    let jb = rb.json();
    assert_eq!(jb["id"], json!(id), "the newer push must reuse the pending build: {rb}");
    assert_eq!(jb["coalesced"], json!(true), "{rb}");
    assert_eq!(jb["sha"], json!(c), "{rb}");
    assert_eq!(b.redis.lrange("ci:queue:slave:0"), vec![id.clone()], "one job in the queue");
    assert_eq!(b.redis.lrange("ci:history:acme/coalesce:main"), vec![id.clone()], "a coalesced push adds no history entry");

    blocker.release();
    assert_eq!(wait_build(&b.redis, &busy_id, LONG).state, "passed");
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.sha, c, "the pending build runs the newer commit");
    assert_eq!(build.log[0], format!("- commit {} (commit B)", &c[..10]));
    assert!(build.has_line("[passed]   . B"), "{:#?}", build.log);
    let log = b.slaves[0].log();
    let started: Vec<&str> =
        events(&log, "build.started").into_iter().filter(|l| kv(l, "repo").as_deref() == Some("acme/coalesce")).collect();
    assert_eq!(started.len(), 1, "one build of acme/coalesce:\n{log}");
    assert_eq!(kv(started[0], "sha").as_deref(), Some(&c[..10]), "only B's sha is built: {}", started[0]);
    assert_eq!(b.redis.get("ci:seq").as_deref(), Some("2"), "two builds in all (busy + coalesced)");

    // Once started, the build is no longer pending: the next push is a new build.
    git.write("version.txt", "C");
    let d = git.commit("commit C");
    git.push();
    let rc = b.hook.push(&git, &d);
    assert_eq!(rc.code, 202, "{rc}");
    assert_ne!(rc.json()["id"], json!(id), "{rc}");
    assert_eq!(rc.json()["coalesced"], json!(false), "{rc}");
    assert_eq!(wait_build(&b.redis, rc.json()["id"].as_str().unwrap(), LONG).sha, d);
}

#[test]
fn a_redelivered_delivery_id_is_answered_200_once_built() {
    let b = Backend::start(1, &[("HOOK_TOKEN", "dup-token")], &[]);
    let repo = |name: &str| {
        let git = b.repo(name);
        git.write("integration.yml", "step: s\nshell: \"true\"\n");
        let sha = git.commit(name);
        git.push();
        (git.file_url(), sha)
    };
    let (u1, s1) = repo("dup/github");
    let (u2, s2) = repo("dup/gitea");
    let (u3, s3) = repo("dup/gitlab");
    let gh = github_push("dup/github", &u1, "main", &s1, "dup/github", "main").to_string();
    let gt = gitea_push("dup/gitea", &u2, "main", &s2, "dup/gitea").to_string();
    let gl = gitlab_push("dup/gitlab", &u3, "main", &s3, "dup/gitlab").to_string();
    let (d1, d2, d3) = (delivery_id(), delivery_id(), delivery_id());
    let gh_sig = sign_sha256(gh.as_bytes(), "dup-token");
    let gt_sig = sign_gitea(gt.as_bytes(), "dup-token");
    let json = ("Content-Type", "application/json");
    type Send<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let sends: Vec<Send> = vec![
        ("github", vec![("X-GitHub-Event", "push"), ("X-GitHub-Delivery", &d1), ("X-Hub-Signature-256", &gh_sig), json], &gh),
        ("gitea", vec![("X-Gitea-Event", "push"), ("X-Gitea-Delivery", &d2), ("X-Gitea-Signature", &gt_sig), json], &gt),
        ("gitlab", vec![("X-Gitlab-Event", "Push Hook"), ("Idempotency-Key", &d3), ("X-Gitlab-Token", "dup-token"), json], &gl),
    ];
    let mut ids = vec![];
    for (name, headers, body) in &sends {
        let first = b.hook.post("/", headers, body.as_bytes());
        assert_eq!(first.code, 202, "{name} first delivery: {first}");
        let id = first.json()["id"].as_str().unwrap().to_string();
        let again = b.hook.post("/", headers, body.as_bytes());
        assert_eq!(again.code, 200, "{name} redelivery: {again}");
        let j = again.json();
        assert_eq!(j["id"], json!(id), "{name} redelivery names the build: {again}");
        assert!(j["reason"].as_str().unwrap_or("").starts_with("duplicate delivery"), "{name}: {again}");
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(wait_build(&b.redis, id, LONG).state, "passed");
    }
    // Redelivered again after the build: still one build each.
    for (name, headers, body) in &sends {
        let r = b.hook.post("/", headers, body.as_bytes());
        assert_eq!(r.code, 200, "{name} late redelivery: {r}");
    }
    assert_eq!(b.redis.get("ci:seq").as_deref(), Some("3"), "three builds in all");
    assert_eq!(events(&b.slaves[0].log(), "build.started").len(), 3);
    for (i, d) in [&d1, &d2, &d3].iter().enumerate() {
        assert_eq!(b.redis.get(&format!("ci:delivery:{d}")).as_deref(), Some(ids[i].as_str()), "ci:delivery:{d}");
        let ttl = b.redis.cli(&["TTL", &format!("ci:delivery:{d}")]).int();
        assert!(ttl > 6 * 86400 && ttl <= 7 * 86400, "ci:delivery TTL {ttl}, want 7 days");
    }
}

/// Records do not pile up forever, by one rule: the last HISTORY_KEEP builds of a branch stay
/// (without expiry), an older one is deleted at the next push — but never the branch's latest
/// finished build.
#[test]
fn a_superseded_build_record_expires() {
    let b = Backend::start(1, &[("HISTORY_KEEP", "2")], &[]);
    let (git, _sha, first) = b.build("acme/retention", &[("integration.yml", "step: s\nshell: \"true\"\n")], "first");
    let mut ids = vec![first.id.clone()];
    for n in 2..=3 {
        git.write("x", &n.to_string());
        let sha = git.commit(&format!("build {n}"));
        git.push();
        let build = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
        assert_eq!(build.state, "passed", "{:#?}", build.log);
        ids.push(build.id);
    }
    let ttl = |id: &str| b.redis.cli(&["TTL", &format!("ci:build:{id}")]).int();
    assert_eq!(ttl(&ids[0]), -2, "the record past HISTORY_KEEP must be deleted");
    assert_eq!((ttl(&ids[1]), ttl(&ids[2])), (-1, -1), "kept records never expire");
    assert_eq!(b.redis.lrange("ci:history:acme/retention:main"), vec![ids[2].clone(), ids[1].clone()]);
}
