//! `[skip ci]` / `[ci skip]` in a pushed head commit's message: `200` with the reason, no build
//! record and no queued job, one log line; the marker in another commit of the push, or in a
//! request's title, still builds. GitHub, Gitea/Forgejo and GitLab; a 25 MB GitLab push whose
//! head commit is listed first is read within the hook's 64 MiB.

use crate::harness::*;
use crate::pulls::{github_pull, target_with_request};

const YML: &str = "step: s\nshell: \"true\"\n";

/// The answer the hook must give, written out here (not taken from the code).
fn skipped(marker: &str) -> Value {
    json!({ "reason": format!("skipped: {marker} in the head commit's message") })
}

fn send(hook: &Hook, forge: &str, body: &[u8]) -> Response {
    let delivery = delivery_id();
    let json = ("Content-Type", "application/json");
    match forge {
        "github" => hook.send_github("/", "push", body, &[]),
        "gitea" => {
            let sig = sign_gitea(body, &hook.token);
            hook.post("/", &[("X-Gitea-Event", "push"), ("X-Gitea-Delivery", &delivery), ("X-Gitea-Signature", &sig), json], body)
        }
        "gitlab" => {
            hook.post("/", &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", &hook.token), ("Idempotency-Key", &delivery), json], body)
        }
        other => panic!("no forge {other}"),
    }
}

/// A push of `sha` (message `msg`) of `git` as `forge` sends it, from its real sample.
fn push_of(forge: &str, git: &GitRepo, sha: &str, msg: &str) -> Value {
    match forge {
        "github" => github_push(&git.name, &git.file_url(), &git.branch, sha, msg, &git.default_branch),
        "gitea" => gitea_push(&git.name, &git.file_url(), &git.branch, sha, msg),
        _ => gitlab_push(&git.name, &git.file_url(), &git.branch, sha, msg),
    }
}

/// No record, no queued job, no branch pointer of `repo`: nothing was written for it.
fn assert_nothing_written(b: &Backend, repo: &str, what: &str) {
    assert_eq!(b.redis.keys("ci:build:*"), Vec::<String>::new(), "{what}: a build record");
    for q in b.redis.keys("ci:queue:*") {
        assert_eq!(b.redis.lrange(&q), Vec::<String>::new(), "{what}: a job in {q}");
    }
    assert_eq!(b.redis.keys(&format!("ci:last:{repo}:*")), Vec::<String>::new(), "{what}: a latest build");
}

#[test]
fn a_push_whose_head_commit_says_skip_ci_builds_nothing_on_each_forge() {
    let b = Backend::start(1, &[], &[]);
    for forge in ["github", "gitea", "gitlab"] {
        for (i, (written, marker)) in
            [("[skip ci]", "[skip ci]"), ("[CI Skip]", "[ci skip]"), ("[Skip CI]", "[skip ci]")].into_iter().enumerate()
        {
            let git = b.repo(&format!("skip/{forge}-{i}"));
            git.write("integration.yml", YML);
            let msg = format!("docs: typo {written}\n\nnothing to build");
            let sha = git.commit(&msg);
            git.push();
            let body = push_of(forge, &git, &sha, &msg).to_string();
            let r = send(&b.hook, forge, body.as_bytes());
            assert_eq!((r.code, r.json()), (200, skipped(marker)), "{forge} {written}: {r}");
            assert_nothing_written(&b, &git.name, &format!("{forge} {written}"));
            // One log line for it: the request's, naming repo, branch, sha and the reason.
            let log = b.hook.log();
            let lines: Vec<&str> = log.lines().filter(|l| kv(l, "repo").as_deref() == Some(git.name.as_str())).collect();
            assert_eq!(lines.len(), 1, "{forge} {written}: {log}");
            let line = lines[0];
            assert_eq!(
                (kv(line, "code"), kv(line, "branch"), kv(line, "sha"), kv(line, "reason")),
                (
                    Some("200".into()),
                    Some("main".into()),
                    Some(sha[..10].to_string()),
                    Some(format!("skipped: {marker} in the head commit's message"))
                ),
                "{line}"
            );
        }
    }
    // The same repository and branch without a marker builds.
    let git = b.repo("skip/gitlab-built");
    git.write("integration.yml", YML);
    let sha = git.commit("a change");
    git.push();
    let r = send(&b.hook, "gitlab", push_of("gitlab", &git, &sha, "a change").to_string().as_bytes());
    assert_eq!(r.code, 202, "{r}");
    let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
}

/// Pushes of two commits, `older` then `head`, with the marker in one of them, in each forge's
/// shape and list order. Only the head commit's message counts.
#[test]
fn only_the_head_commit_of_a_push_counts() {
    let b = Backend::start(1, &[], &[]);
    let mut n = 0;
    for forge in ["github", "gitea", "gitlab"] {
        // (older message, head message, head listed first, skipped)
        for (older, head, head_first, skip) in [
            ("wip [skip ci]", "the fix", false, false),
            ("wip [skip ci]", "the fix", true, false),
            ("the fix", "docs [ci skip]", false, true),
            ("the fix", "docs [ci skip]", true, true),
        ] {
            n += 1;
            let git = b.repo(&format!("two/{forge}-{n}"));
            git.write("integration.yml", YML);
            let older_sha = git.commit(older);
            let head_sha = git.commit(head);
            git.push();
            let mut v = push_of(forge, &git, &head_sha, head);
            let commit = |id: &str, msg: &str| json!({ "id": id, "message": msg, "timestamp": "2026-01-02T03:04:05Z" });
            let list = if head_first {
                vec![commit(&head_sha, head), commit(&older_sha, older)]
            } else {
                vec![commit(&older_sha, older), commit(&head_sha, head)]
            };
            v["commits"] = json!(list);
            let what = format!("{forge}: older {older:?}, head {head:?}, head listed first: {head_first}");
            let r = send(&b.hook, forge, v.to_string().as_bytes());
            if skip {
                assert_eq!((r.code, r.json()), (200, skipped("[ci skip]")), "{what}: {r}");
            } else {
                assert_eq!(r.code, 202, "{what}: {r}");
                assert_eq!(r.json()["sha"], json!(head_sha), "{what}: {r}");
            }
        }
    }
    // A Gitea push without head_commit, its list newest first as Gitea sends it: the head is
    // found by its id, not by its place.
    let git = b.repo("two/gitea-bare");
    git.write("integration.yml", YML);
    let older = git.commit("first");
    let head = git.commit("second [skip ci]");
    git.push();
    let mut v = gitea_push(&git.name, &git.file_url(), "main", &head, "second [skip ci]");
    v.as_object_mut().unwrap().remove("head_commit");
    v["commits"] = json!([{ "id": head, "message": "second [skip ci]" }, { "id": older, "message": "first" }]);
    let r = send(&b.hook, "gitea", v.to_string().as_bytes());
    assert_eq!((r.code, r.json()), (200, skipped("[skip ci]")), "{r}");
}

/// A request's payload carries its title, not its head commit's message: a request is never
/// skipped, whatever its title says.
#[test]
fn a_pull_request_titled_skip_ci_still_builds() {
    let b = Backend::start(1, &[], &[]);
    let (repo, head) = target_with_request(&b, "skip/pull", "refs/pull/3/head", YML);
    let mut v = github_pull(&repo.name, &repo.file_url(), 3, &head, &repo.name, "opened");
    v["pull_request"]["title"] = json!("[skip ci] a request");
    let r = b.hook.send_github("/", "pull_request", v.to_string().as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    assert_eq!(r.json()["branch"], json!("pull/3"));
}

/// A GitLab push of 25 MB: the head commit (with the marker) first, then a commit whose id is
/// an array of millions of numbers, then millions of empty commits. The head is not the list's
/// last, so the body is read a second time for it; the hook's peak memory stays under 64 MiB.
#[test]
fn a_25_mb_gitlab_push_with_its_head_listed_first_is_read_within_64_mib() {
    let b = Backend::start(1, &[("HOOK_MAX_BODY", &(26 * 1024 * 1024).to_string())], &[]);
    let git = b.repo("big/gitlab");
    git.write("integration.yml", YML);
    let sha = git.commit("many commits [skip ci]");
    git.push();
    let mut v = gitlab_push(&git.name, &git.file_url(), "main", &sha, "many commits [skip ci]");
    v.as_object_mut().unwrap().remove("commits");
    let head = json!({ "id": sha, "message": "many commits [skip ci]" }).to_string();
    let numbers = 4 * 1024 * 1024;
    let mut commits = String::with_capacity(26 * 1024 * 1024);
    commits.push_str(",\"commits\":[");
    commits.push_str(&head);
    commits.push_str(",{\"id\":[0");
    commits.push_str(&",0".repeat(numbers));
    commits.push_str("],\"message\":\"not the head\"}");
    while commits.len() < 25 * 1024 * 1024 {
        commits.push_str(",{}");
    }
    commits.push(']');
    let text = v.to_string();
    let body = format!("{}{commits}}}", &text[..text.len() - 1]);
    assert!(body.len() > 25 * 1024 * 1024, "{} bytes", body.len());
    let r = send(&b.hook, "gitlab", body.as_bytes());
    assert_eq!((r.code, r.json()), (200, skipped("[skip ci]")), "{r}");
    let peak = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    eprintln!("25 MB GitLab push, head listed first: hook VmHWM {peak} kB");
    assert!(peak < 64 * 1024, "hook peak RSS {peak} kB (VmHWM) after a 25 MB GitLab push: over 64 MiB");
    assert_nothing_written(&b, &git.name, "the 25 MB push");
}
