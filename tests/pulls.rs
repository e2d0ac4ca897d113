//! Pull/merge requests and tags: the head commit fetched from the target
//! repository's own `refs/pull/<N>/head` / `refs/merge-requests/<N>/head`, recorded
//! under `pull/<N>`; fork requests ignored unless HOOK_FORK_PULLS=build, and then built
//! with nothing of the slave's environment; tag builds behind HOOK_BUILD_TAGS.

use crate::harness::*;
use serde_json::{json, Value};

/// What the steps print: the request's variables and the slave's DEPLOY_KEY.
pub(crate) const ENV_YML: &str = "step: env\ndebug: true\nshell:\n  - env | grep -E '^(PULL_REQUEST|BASE_BRANCH|HEAD_BRANCH|HEAD_REPO|BRANCH|TAG_NAME|DEPLOY_KEY|CI)=' | sort\n";
const DEPLOY_KEY: &str = "s3cret-value";

/// A target repository with `main` pushed, and a head commit (on no branch of the
/// target) that only `ref` names, as the forge keeps it. Returns (repo, head sha).
pub(crate) fn target_with_request(b: &Backend, name: &str, git_ref: &str, yml: &str) -> (GitRepo, String) {
    let mut repo = b.repo(name);
    repo.write("integration.yml", "step: main\nshell: \"true\"\n");
    repo.commit("main");
    repo.push();
    repo.checkout("feature/x");
    repo.write("integration.yml", yml);
    let head = repo.commit("the request's head");
    run(git(&repo.work).args(["push", "-q", "origin", &format!("{head}:{git_ref}")]));
    // Independent check: no branch of the target holds the head commit.
    let holders = run(git(&repo.bare).args(["for-each-ref", "--contains", &head, "refs/heads"]));
    assert_eq!(holders.trim(), "", "the head must be on no branch of the target");
    (repo, head)
}

pub(crate) fn github_pull(repo: &str, url: &str, number: u64, sha: &str, head_repo: &str, action: &str) -> Value {
    let mut v = fixture_json("github/pull_request/opened.payload.json");
    v["action"] = json!(action);
    v["number"] = json!(number);
    v["pull_request"]["number"] = json!(number);
    v["pull_request"]["head"]["ref"] = json!("feature/x");
    v["pull_request"]["head"]["sha"] = json!(sha);
    v["pull_request"]["head"]["repo"]["full_name"] = json!(head_repo);
    v["pull_request"]["base"]["ref"] = json!("main");
    v["pull_request"]["base"]["repo"]["full_name"] = json!(repo);
    v["repository"]["full_name"] = json!(repo);
    v["repository"]["clone_url"] = json!(url);
    v
}

/// Gitea's pull_request body has GitHub's shape (no Gitea-written sample is stored; see SOURCES.md).
fn send_gitea(hook: &Hook, event: &str, body: &[u8]) -> Response {
    let sig = sign_gitea(body, &hook.token);
    let delivery = delivery_id();
    hook.post(
        "/",
        &[("X-Gitea-Event", event), ("X-Gitea-Delivery", &delivery), ("X-Gitea-Signature", &sig), ("Content-Type", "application/json")],
        body,
    )
}

pub(crate) fn gitlab_mr(repo: &str, url: &str, iid: u64, sha: &str, source_project: u64, action: &str) -> Value {
    let mut v = fixture_json("gitlab/merge-request-hook.json");
    v["project"]["path_with_namespace"] = json!(repo);
    v["project"]["git_http_url"] = json!(url);
    let a = &mut v["object_attributes"];
    a["iid"] = json!(iid);
    a["action"] = json!(action);
    a["last_commit"]["id"] = json!(sha);
    a["source_branch"] = json!("feature/x");
    a["target_branch"] = json!("main");
    a["source_project_id"] = json!(source_project);
    a["target_project_id"] = json!(14);
    a["source"]["path_with_namespace"] = json!("mallory/fork");
    v
}

fn send_gitlab(hook: &Hook, event: &str, body: &[u8]) -> Response {
    let delivery = delivery_id();
    hook.post(
        "/",
        &[("X-Gitlab-Event", event), ("X-Gitlab-Token", &hook.token), ("Idempotency-Key", &delivery), ("Content-Type", "application/json")],
        body,
    )
}

pub(crate) fn accepted(r: &Response) -> String {
    assert_eq!(r.code, 202, "{r}");
    r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {r}")).to_string()
}

fn status(hook: &Hook, repo: &str, branch: &str) -> Value {
    let r = hook.get_json(&format!("/status/{repo}?branch={}", urlencode(branch)));
    assert_eq!(r.code, 200, "{r}");
    r.json()
}

fn check_request_build(b: &Backend, repo: &str, id: &str, branch: &str, head: &str, deploy_key: bool) {
    // Same-repository requests: HEAD_REPO is the target; the number ends the record's branch.
    let (head_repo, number) = (repo, branch.rsplit('/').next().unwrap());
    let build = wait_build(&b.redis, id, LONG);
    assert_eq!((build.state.as_str(), build.sha.as_str()), ("passed", head), "{:?}", build.log);
    let mut want = vec![
        "BASE_BRANCH=main".to_string(),
        "BRANCH=feature/x".to_string(),
        "CI=true".to_string(),
        format!("HEAD_BRANCH=feature/x"),
        format!("HEAD_REPO={head_repo}"),
        format!("PULL_REQUEST={number}"),
    ];
    if deploy_key {
        want.insert(3, format!("DEPLOY_KEY={DEPLOY_KEY}"));
    }
    assert_eq!(build.printed(), want, "{:?}", build.log);
    let s = status(&b.hook, repo, branch);
    assert_eq!((s["id"].as_str(), s["state"].as_str(), s["sha"].as_str()), (Some(id), Some("passed"), Some(head)), "{s}");
}

#[test]
fn a_github_request_builds_its_head_from_the_targets_pull_ref() {
    let b = Backend::start(1, &[], &[("DEPLOY_KEY", DEPLOY_KEY)]);
    let (git, head) = target_with_request(&b, "acme/pr", "refs/pull/12/head", ENV_YML);
    let body = github_pull("acme/pr", &git.file_url(), 12, &head, "acme/pr", "opened");
    let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
    assert_eq!(r.json()["branch"], json!("pull/12"), "{r}");
    let id = accepted(&r);
    // A same-repository request builds like a push: the slave's DEPLOY_KEY is there.
    check_request_build(&b, "acme/pr", &id, "pull/12", &head, true);
    // Closing takes the request out of the listing, its only branch here: nothing else changes.
    let listing = "ci:branches:acme/pr".to_string();
    let keys: Vec<String> = queueing_keys(&b).into_iter().filter(|k| *k != listing).collect();
    for (action, reason) in [
        ("closed", "pull request 12 closed: nothing to build"),
        ("labeled", "pull request action \"labeled\" brings no new commit: nothing to build"),
    ] {
        let body = github_pull("acme/pr", &git.file_url(), 12, &head, "acme/pr", action);
        let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
        assert_eq!(r.code, 200, "{r}");
        assert_eq!(r.json()["reason"], json!(reason), "{r}");
    }
    assert_eq!(queueing_keys(&b), keys, "closed/labeled queued nothing");
    assert!(b.hook.get("/repos").text().is_empty(), "the closed request is not listed");
}

/// Every key but those a slave's lease renewal writes on its own clock (membership and the
/// executors it publishes), sorted: what a queued build would add to.
fn queueing_keys(b: &Backend) -> Vec<String> {
    const LEASES: [&str; 5] = ["ci:executors:", "ci:members:", "ci:holders:", "ci:maxindex", "ci:clusters"];
    let mut keys: Vec<String> = b.redis.keys("ci:*").into_iter().filter(|k| !LEASES.iter().any(|l| k.starts_with(l))).collect();
    keys.sort();
    keys.push(format!("ci:seq={}", b.redis.get("ci:seq").unwrap_or_default()));
    keys
}

#[test]
fn a_gitea_request_builds_its_head_from_the_targets_pull_ref() {
    let b = Backend::start(1, &[], &[]);
    let (git, head) = target_with_request(&b, "acme/gpr", "refs/pull/3/head", ENV_YML);
    let mut body = github_pull("acme/gpr", &git.file_url(), 3, &head, "acme/gpr", "synchronized");
    // Gitea names the two sides' repositories by id only: no `head.repo`.
    body["pull_request"]["head"].as_object_mut().unwrap().remove("repo");
    body["pull_request"]["head"]["repo_id"] = json!(6);
    body["pull_request"]["base"]["repo_id"] = json!(6);
    let id = accepted(&send_gitea(&b.hook, "pull_request", body.to_string().as_bytes()));
    check_request_build(&b, "acme/gpr", &id, "pull/3", &head, false);
    let body = github_pull("acme/gpr", &git.file_url(), 3, &head, "acme/gpr", "closed");
    let r = send_gitea(&b.hook, "pull_request", body.to_string().as_bytes());
    assert_eq!((r.code, r.json()["reason"].clone()), (200, json!("pull request 3 closed: nothing to build")), "{r}");
}

#[test]
fn a_gitlab_merge_request_builds_its_head_from_the_targets_merge_request_ref() {
    let b = Backend::start(1, &[], &[]);
    let (git, head) = target_with_request(&b, "acme/mr", "refs/merge-requests/5/head", ENV_YML);
    let body = gitlab_mr("acme/mr", &git.file_url(), 5, &head, 14, "open");
    let id = accepted(&send_gitlab(&b.hook, "Merge Request Hook", body.to_string().as_bytes()));
    check_request_build(&b, "acme/mr", &id, "merge-requests/5", &head, false);
    for (action, reason) in [("update", "brings no new commit"), ("close", "merge request 5 closed: nothing to build")] {
        let body = gitlab_mr("acme/mr", &git.file_url(), 5, &head, 14, action);
        let r = send_gitlab(&b.hook, "Merge Request Hook", body.to_string().as_bytes());
        assert_eq!(r.code, 200, "{action}: {r}");
        assert!(r.json()["reason"].as_str().unwrap_or("").contains(reason), "{r}");
    }
}

#[test]
fn fork_requests_are_ignored_by_default() {
    let b = Backend::start(1, &[], &[]);
    let (git, head) = target_with_request(&b, "acme/fk", "refs/pull/4/head", ENV_YML);
    let body = github_pull("acme/fk", &git.file_url(), 4, &head, "mallory/fk", "opened");
    let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
    assert_eq!(r.code, 200, "{r}");
    assert_eq!(
        r.json()["reason"],
        json!("request 4 comes from the fork \"mallory/fk\": fork requests are not built (HOOK_FORK_PULLS=ignore)"),
        "{r}"
    );
    let body = github_pull("acme/fk", &git.file_url(), 4, &head, "mallory/fk", "synchronized");
    let r = send_gitea(&b.hook, "pull_request", body.to_string().as_bytes());
    assert_eq!(r.code, 200, "{r}");
    assert!(r.json()["reason"].as_str().unwrap_or("").contains("HOOK_FORK_PULLS=ignore"), "{r}");
    let body = gitlab_mr("acme/fk", &git.file_url(), 4, &head, 99, "open");
    let r = send_gitlab(&b.hook, "Merge Request Hook", body.to_string().as_bytes());
    assert_eq!(r.code, 200, "{r}");
    assert!(r.json()["reason"].as_str().unwrap_or("").contains("HOOK_FORK_PULLS=ignore"), "{r}");
    assert!(b.redis.keys("ci:build:*").is_empty(), "nothing queued");
}

#[test]
fn a_fork_request_never_runs_on_the_slave_itself() {
    let b = Backend::start(1, &[("HOOK_FORK_PULLS", "build")], &[("DEPLOY_KEY", DEPLOY_KEY)]);
    let planted = b.root().join("planted-by-a-fork");
    let yml = format!("step: bare\nshell: touch '{}'\n", planted.display());
    let (git, head) = target_with_request(&b, "acme/fbare", "refs/pull/9/head", &yml);
    let body = github_pull("acme/fbare", &git.file_url(), 9, &head, "mallory/fbare", "opened");
    let id = accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "failed", "{:?}", build.log);
    assert_eq!(
        build.log.last().map(String::as_str),
        Some("* fork builds run only in containers: set SLAVE_DEFAULT_IMAGE or give each step an image"),
        "{:?}",
        build.log
    );
    assert!(!planted.exists(), "the fork's step ran on the slave");
}

#[test]
fn a_built_fork_request_runs_contained_and_sees_nothing_of_the_slaves_environment() {
    let Some(image) = crate::containers::image() else { return };
    let creds = "https://ci-bot:gh-token-777@example.com";
    let slave_env = [("DEPLOY_KEY", DEPLOY_KEY), ("GIT_CREDENTIALS", creds), ("SLAVE_DEFAULT_IMAGE", image)];
    let b = Backend::start(1, &[("HOOK_FORK_PULLS", "build")], &slave_env);
    let yml = "step: env\ndebug: true\nshell:\n  - env | sort\n  - pwd\n  - cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c -e s3cret-value -e gh-token-777 || true\n";
    let (git, head) = target_with_request(&b, "acme/fb", "refs/pull/9/head", yml);
    let body = github_pull("acme/fb", &git.file_url(), 9, &head, "mallory/fb", "opened");
    let id = accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    let out = build.printed();
    let names: Vec<&str> = out.iter().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    // The whole environment: the image's PATH and HOME, the CI variables, what the shell adds.
    let allowed = [
        "PATH",
        "HOME",
        "HOSTNAME",
        "HOST",
        "SLAVE",
        "BRANCH",
        "COMMIT",
        "COMMIT_SHORT",
        "MESSAGE",
        "TAG",
        "TIMESTAMP",
        "LOG",
        "OK",
        "CI",
        "CI_EVENT",
        "REPO",
        "BUILD_ID",
        "PULL_REQUEST",
        "BASE_BRANCH",
        "HEAD_BRANCH",
        "HEAD_REPO",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    for name in &names {
        assert!(allowed.contains(name), "a fork build's environment holds {name}: {out:?}");
    }
    assert!(out.contains(&"PATH=/bin".to_string()), "the image's PATH: {out:?}");
    assert!(out.contains(&"HEAD_REPO=mallory/fb".to_string()), "{out:?}");
    assert!(out.contains(&"/ci/checkout".to_string()), "ran in a container on the checkout: {out:?}");
    let text = build.log.join("\n");
    assert!(!text.contains(DEPLOY_KEY) && !text.contains("gh-token-777"), "{text}");
    assert_eq!(out.last().map(String::as_str), Some("0"), "no process environment it can read holds a secret: {out:?}");
}

#[test]
fn tags_build_when_asked_lightweight_and_annotated() {
    let b = Backend::start(1, &[("HOOK_BUILD_TAGS", "1")], &[]);
    let repo = b.repo("acme/tg");
    repo.write("integration.yml", ENV_YML);
    let sha = repo.commit("tagged");
    repo.push();
    run(git(&repo.work).args(["tag", "v1.2", &sha]));
    run(git(&repo.work).args(["tag", "-a", "-m", "annotated", "v1.3", &sha]));
    run(git(&repo.work).args(["push", "-q", "origin", "refs/tags/v1.2", "refs/tags/v1.3"]));
    let tag_object = run(git(&repo.work).args(["rev-parse", "v1.3"])).trim().to_string();
    assert_ne!(tag_object, sha, "an annotated tag is its own object");
    for (tag, after) in [("v1.2", sha.clone()), ("v1.3", tag_object.clone())] {
        let mut body = github_push("acme/tg", &repo.file_url(), "x", &sha, "tagged", "main");
        body["ref"] = json!(format!("refs/tags/{tag}"));
        body["after"] = json!(after);
        let r = b.hook.send_github("/", "push", body.to_string().as_bytes(), &[]);
        assert_eq!(r.json()["branch"], json!(format!("tags/{tag}")), "{r}");
        let id = accepted(&r);
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!((build.state.as_str(), build.sha.as_str()), ("passed", sha.as_str()), "{:?}", build.log);
        assert_eq!(
            build.printed(),
            vec![format!("BRANCH=tags/{tag}"), "CI=true".to_string(), format!("TAG_NAME={tag}")],
            "{:?}",
            build.log
        );
        let s = status(&b.hook, "acme/tg", &format!("tags/{tag}"));
        assert_eq!(s["id"].as_str(), Some(id.as_str()), "{s}");
    }
    // GitLab names the tag object in `after` and the commit in `checkout_sha`: the slave peels either.
    let mut body = gitlab_push("acme/tg", &repo.file_url(), "x", &sha, "tagged");
    body["ref"] = json!("refs/tags/v1.3");
    body["after"] = json!(tag_object);
    body["checkout_sha"] = json!(tag_object);
    let id = accepted(&send_gitlab(&b.hook, "Tag Push Hook", body.to_string().as_bytes()));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    assert!(build.printed().contains(&"TAG_NAME=v1.3".to_string()), "{:?}", build.log);
}

#[test]
fn tags_are_not_built_by_default() {
    let b = Backend::start(0, &[], &[]);
    let mut body = github_push("acme/tg", "file:///nowhere", "x", &"ab".repeat(20), "m", "main");
    body["ref"] = json!("refs/tags/v1.2");
    let r = b.hook.send_github("/", "push", body.to_string().as_bytes(), &[]);
    assert_eq!((r.code, r.json()["reason"].clone()), (200, json!("tag push \"v1.2\": tags are not built (HOOK_BUILD_TAGS=0)")), "{r}");
}

#[test]
fn pending_builds_coalesce_per_request() {
    let b = Backend::start(1, &[], &[]);
    // Keep the only slave busy so the requests below stay pending.
    let (blocker, _) = b.occupy("acme/busy");

    let (repo, a) = target_with_request(&b, "acme/co", "refs/pull/7/head", ENV_YML);
    run(git(&repo.work).args(["push", "-q", "origin", &format!("{a}:refs/pull/8/head")]));
    let send = |n: u64, sha: &str, action: &str| {
        let body = github_pull("acme/co", &repo.file_url(), n, sha, "acme/co", action);
        let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
        assert_eq!(r.code, 202, "{r}");
        r.json()
    };
    let first = send(7, &a, "opened");
    assert_eq!(first["coalesced"], json!(false), "{first}");
    repo.write("more.txt", "B");
    let c = repo.commit("B");
    run(git(&repo.work).args(["push", "-q", "-f", "origin", &format!("{c}:refs/pull/7/head")]));
    let again = send(7, &c, "synchronize");
    assert_eq!(
        (again["id"].clone(), again["coalesced"].clone(), again["sha"].clone()),
        (first["id"].clone(), json!(true), json!(c)),
        "{again}"
    );
    let other = send(8, &a, "opened");
    assert_eq!(other["coalesced"], json!(false), "another request is another branch: {other}");
    assert_ne!(other["id"], first["id"]);

    blocker.release();
    let build = wait_build(&b.redis, first["id"].as_str().unwrap(), LONG);
    assert_eq!((build.state.as_str(), build.sha.as_str()), ("passed", c.as_str()), "{:?}", build.log);
    let build = wait_build(&b.redis, other["id"].as_str().unwrap(), LONG);
    assert_eq!((build.state.as_str(), build.sha.as_str()), ("passed", a.as_str()), "{:?}", build.log);
    assert!(build.printed().contains(&"PULL_REQUEST=8".to_string()), "{:?}", build.log);
}

/// An update with a new head supersedes the request's running build: the old one is
/// `canceled` (its log says by which build), the new head is built.
fn an_update_cancels_the_running_build_of_the_request(forge: &str) {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), forge);
    let (number, git_ref, branch) =
        if forge == "gitlab" { (5, "refs/merge-requests/5/head", "merge-requests/5") } else { (7, "refs/pull/7/head", "pull/7") };
    let name = format!("acme/supersede-{forge}");
    let (repo, first_head) = target_with_request(&b, &name, git_ref, &blocker.yml());
    let url = repo.file_url();
    let send = |sha: &str, update: bool| {
        let r = match forge {
            "github" => {
                let body = github_pull(&name, &url, number, sha, &name, if update { "synchronize" } else { "opened" });
                b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[])
            }
            "gitea" => {
                let body = github_pull(&name, &url, number, sha, &name, if update { "synchronized" } else { "opened" });
                send_gitea(&b.hook, "pull_request", body.to_string().as_bytes())
            }
            _ => {
                let mut body = gitlab_mr(&name, &url, number, sha, 14, if update { "update" } else { "open" });
                if update {
                    body["object_attributes"]["oldrev"] = json!(first_head);
                }
                send_gitlab(&b.hook, "Merge Request Hook", body.to_string().as_bytes())
            }
        };
        assert_eq!(r.json()["branch"], json!(branch), "{r}");
        accepted(&r)
    };
    let first = send(&first_head, false);
    blocker.wait_started();
    repo.write("integration.yml", "step: s\nshell: \"true\"\n");
    let second_head = repo.commit("the request's new head");
    run(git(&repo.work).args(["push", "-q", "-f", "origin", &format!("{second_head}:{git_ref}")]));
    let second = send(&second_head, true);
    assert_ne!(first, second);
    let old = wait_for("the first build to be canceled", LONG, || match read_build(&b.redis, &first) {
        Some(r) if r.state == "canceled" => Ok(r),
        other => Err(format!("{:?}", other.map(|r| r.state))),
    });
    assert!(old.has_line(&format!("[canceled] superseded by build {second}")), "{:#?}", old.log);
    let new = wait_build(&b.redis, &second, LONG);
    assert_eq!((new.state.as_str(), new.sha.as_str()), ("passed", second_head.as_str()), "{:#?}", new.log);
    // The killed first run did not leave a failed result behind it.
    assert_eq!(read_build(&b.redis, &first).unwrap().state, "canceled");
}

#[test]
fn a_github_synchronize_cancels_the_running_build_of_the_request() {
    an_update_cancels_the_running_build_of_the_request("github");
}

#[test]
fn a_gitea_synchronized_cancels_the_running_build_of_the_request() {
    an_update_cancels_the_running_build_of_the_request("gitea");
}

#[test]
fn a_gitlab_update_with_new_commits_cancels_the_running_build_of_the_request() {
    an_update_cancels_the_running_build_of_the_request("gitlab");
}
