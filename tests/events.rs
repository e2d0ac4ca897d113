//! Events: every build record says why it runs (`push`, `tag`, `pull_request`, `manual` for a
//! `POST /build` re-run), its steps see it as `CI_EVENT`, `/status` and `/history` JSON and the
//! build page show it; a job and a record written by the previous version (no `event`) read as
//! their branch tells.

use crate::harness::*;

/// Prints the step's `CI_EVENT` into the (debug) log.
const EVENT_YML: &str = "step: event\ndebug: true\nshell: echo \"event=$CI_EVENT\"\n";

/// What the step printed: the `CI_EVENT` it saw.
fn printed_event(build: &Build) -> Vec<String> {
    build.log.iter().filter_map(|l| l.strip_prefix("[passed]   . event=").map(String::from)).collect()
}

fn accepted(r: &Response) -> String {
    assert_eq!(r.code, 202, "{r}");
    r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {r}")).to_string()
}

/// Build `id` of `repo` `branch` passed; its step saw `CI_EVENT=<step>`; the API's JSON and the
/// build page say `api`; Redis's record holds `stored`.
fn check(b: &Backend, repo: &str, branch: &str, id: &str, step: &str, api: &str, stored: Option<&str>) {
    let build = wait_build(&b.redis, id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    assert_eq!(printed_event(&build), vec![step.to_string()], "{:?}", build.log);
    assert_eq!(b.redis.hgetall(&format!("ci:build:{id}")).get("event").map(String::as_str), stored, "build {id}");
    let q = urlencode(branch);
    let s = b.hook.get_json(&format!("/status/{repo}?branch={q}"));
    assert_eq!((s.code, s.json()["id"].as_str(), s.json()["event"].as_str()), (200, Some(id), Some(api)), "{s}");
    let h = b.hook.get_json(&format!("/history/{repo}?branch={q}"));
    assert_eq!((h.json()[0]["id"].as_str(), h.json()[0]["event"].as_str()), (Some(id), Some(api)), "{h}");
    // The text history keeps its six columns: id state sha seconds slave when.
    let text = b.hook.get(&format!("/history/{repo}?branch={q}")).text();
    let first: Vec<&str> = text.lines().next().unwrap_or("").split_whitespace().collect();
    assert_eq!((first.len(), first.first().copied()), (6, Some(id)), "{text}");
    let page = b.hook.get(&format!("/builds/{id}"));
    assert_eq!(page.code, 200, "{page}");
    assert!(page.text().contains(&format!(" · event {api} · ")), "{}", page.text());
}

#[test]
fn pushes_tags_requests_and_rebuilds_say_their_event() {
    let b = Backend::start(1, &[("HOOK_BUILD_TAGS", "1")], &[]);
    let repo = b.repo("acme/ev");
    repo.write("integration.yml", EVENT_YML);
    let sha = repo.commit("one commit, five builds");
    repo.push();
    run(git(&repo.work).args(["tag", "v1.2", &sha]));
    run(git(&repo.work).args(["push", "-q", "origin", "refs/tags/v1.2", &format!("{sha}:refs/pull/5/head")]));

    let id = b.hook.push_ok(&repo, &sha);
    check(&b, "acme/ev", "main", &id, "push", "push", Some("push"));

    let mut body = github_push("acme/ev", &repo.file_url(), "main", &sha, "m", "main");
    body["ref"] = json!("refs/tags/v1.2");
    let id = accepted(&b.hook.send_github("/", "push", body.to_string().as_bytes(), &[]));
    check(&b, "acme/ev", "tags/v1.2", &id, "tag", "tag", Some("tag"));

    let body = crate::pulls::github_pull("acme/ev", &repo.file_url(), 5, &sha, "acme/ev", "opened");
    let id = accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
    check(&b, "acme/ev", "pull/5", &id, "pull_request", "pull_request", Some("pull_request"));

    // Re-runs, of a branch and of a request: manual.
    let bearer = format!("Bearer {}", b.hook.token);
    for branch in ["main", "pull/5"] {
        let r = b.hook.post(&format!("/build/acme/ev?branch={}", urlencode(branch)), &[("Authorization", &bearer)], b"");
        check(&b, "acme/ev", branch, &accepted(&r), "manual", "manual", Some("manual"));
    }
    // Each build keeps its own.
    let h = b.hook.get_json("/history/acme/ev?branch=main").json();
    let events: Vec<&str> = h.as_array().unwrap().iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(events, ["manual", "push"], "{h}");
}

/// The previous version wrote no `event`, neither in the queued job nor in the record: a
/// request's build queued by it runs with `CI_EVENT=pull_request` (told by its branch
/// `pull/<N>`), and its record reads as `pull_request` everywhere.
#[test]
fn a_job_and_record_of_the_previous_version_read_as_their_branch_tells() {
    let b = Backend::start(1, &[], &[]);
    let (blocker, _) = b.occupy("acme/busy");
    let (repo, head) = crate::pulls::target_with_request(&b, "acme/old", "refs/pull/8/head", EVENT_YML);
    let body = crate::pulls::github_pull("acme/old", &repo.file_url(), 8, &head, "acme/old", "opened");
    let id = accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
    // Still queued behind the blocker: rewrite it as the previous version stored it.
    let key = format!("ci:build:{id}");
    let record = b.redis.hgetall(&key);
    assert_eq!((record["state"].as_str(), record["event"].as_str()), ("queued", "pull_request"), "{record:?}");
    let mut job: Value = serde_json::from_str(&record["push"]).unwrap();
    assert_eq!(job.as_object_mut().unwrap().remove("event"), Some(json!("pull_request")), "{job}");
    b.redis.cli(&["HSET", &key, "push", &job.to_string()]);
    b.redis.cli(&["HDEL", &key, "event"]);
    assert_eq!(b.redis.hgetall(&key).get("event"), None);
    blocker.release();
    check(&b, "acme/old", "pull/8", &id, "pull_request", "pull_request", None);
}

/// A queued build that a newer push or a re-run coalesces into takes the newer one's event,
/// like its commit: the last asked for is what runs.
#[test]
fn a_coalesced_build_takes_the_newer_event() {
    let b = Backend::start(1, &[], &[]);
    let (blocker, _) = b.occupy("acme/busy");
    let repo = b.repo("acme/co");
    repo.write("integration.yml", EVENT_YML);
    let first = repo.commit("first");
    repo.push();
    let id = b.hook.push_ok(&repo, &first);
    let stored = |b: &Backend| b.redis.hgetall(&format!("ci:build:{id}")).get("event").cloned();
    assert_eq!(stored(&b).as_deref(), Some("push"));
    let bearer = format!("Bearer {}", b.hook.token);
    let r = b.hook.post("/build/acme/co?branch=main", &[("Authorization", &bearer)], b"");
    assert_eq!((r.code, r.json()["id"].as_str(), r.json()["coalesced"].as_bool()), (202, Some(id.as_str()), Some(true)), "{r}");
    assert_eq!(stored(&b).as_deref(), Some("manual"));
    let second = repo.commit("second");
    repo.push();
    let r = b.hook.push(&repo, &second);
    assert_eq!((r.code, r.json()["id"].as_str(), r.json()["coalesced"].as_bool()), (202, Some(id.as_str()), Some(true)), "{r}");
    assert_eq!(stored(&b).as_deref(), Some("push"));
    blocker.release();
    check(&b, "acme/co", "main", &id, "push", "push", Some("push"));
}
