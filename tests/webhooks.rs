//! Every sample of tests/fixtures/webhooks answered as SPEC.md says, and the buildable ones
//! built against a local bare repository and read back through `GET /status`.

use crate::harness::*;

const TOKEN: &str = "webhooks-token-0123456789";

/// Sends a sample exactly as its sender would (headers of SOURCES.md), correctly signed.
fn send_sample(hook: &Hook, rel: &str, body: &[u8]) -> Response {
    let delivery = delivery_id();
    let sig256 = sign_sha256(body, &hook.token);
    let gitea = sign_gitea(body, &hook.token);
    let json = ("Content-Type", "application/json");
    if let Some(rest) = rel.strip_prefix("github/").or_else(|| rel.strip_prefix("github-enterprise/ghes-35/")) {
        let event = rest.split('/').next().unwrap();
        return hook.send_github("/", event, body, &[]);
    }
    if rel.starts_with("gitlab/") {
        let event = match rel {
            "gitlab/push-hook.json" => "Push Hook",
            "gitlab/tag-push-hook.json" => "Tag Push Hook",
            "gitlab/system-hook-tag-push.json" => "System Hook",
            other => panic!("no header known for {other}"),
        };
        return hook.post("/", &[("X-Gitlab-Event", event), ("X-Gitlab-Token", &hook.token), ("Idempotency-Key", &delivery), json], body);
    }
    if rel.starts_with("gitea/") {
        return hook.post("/", &[("X-Gitea-Event", "push"), ("X-Gitea-Delivery", &delivery), ("X-Gitea-Signature", &gitea), json], body);
    }
    if rel.starts_with("bitbucket/") {
        return hook.post(
            "/",
            &[("X-Event-Key", "repo:refs_changed"), ("X-Request-Id", &delivery), ("X-Hub-Signature-256", &sig256), json],
            body,
        );
    }
    panic!("unknown sample {rel}");
}

/// The samples that need no build, with words one of which the 200's reason must contain.
const NO_BUILD: &[(&str, &[&str])] = &[
    ("github/ping/payload.json", &["ping"]),
    ("github/ping/with-app_id.payload.json", &["ping"]),
    ("github/ping/with-organization.payload.json", &["ping"]),
    ("github/create/payload.json", &["create"]),
    ("github/create/with-description.payload.json", &["create"]),
    ("github/create/with-installation.payload.json", &["create"]),
    ("github/create/with-organization.payload.json", &["create"]),
    ("github/delete/payload.json", &["delete"]),
    ("github/delete/with-installation.payload.json", &["delete"]),
    ("github/delete/with-organization.payload.json", &["delete"]),
    ("github/issues/opened.payload.json", &["issues"]),
    // The pull_request samples (opened, synchronize) build: see pulls.rs.
    ("github/workflow_run/completed.payload.json", &["workflow_run"]),
    // Tag deletions (after = 40 zeros, head_commit null, commits empty).
    ("github/push/payload.json", &["tag", "delet"]),
    ("github/push/with-installation.payload.json", &["tag", "delet"]),
    ("github/push/with-organization.payload.json", &["tag", "delet"]),
    // A tag push (created, refs/tags/...).
    ("github-enterprise/ghes-35/push/payload.json", &["tag"]),
    ("gitlab/tag-push-hook.json", &["tag"]),
    ("gitlab/system-hook-tag-push.json", &["tag", "system"]),
];

#[test]
fn samples_that_need_no_build_answer_200_with_a_reason() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
    let mut failures = vec![];
    for (rel, words) in NO_BUILD {
        let body = fixture(rel);
        let r = send_sample(&b.hook, rel, &body);
        if r.code != 200 {
            failures.push(format!("{rel}: expected 200, got {r}"));
            continue;
        }
        let reason = r.json()["reason"].as_str().unwrap_or("").to_lowercase();
        if reason.is_empty() || !words.iter().any(|w| reason.contains(w)) {
            failures.push(format!("{rel}: 200 but the reason {:?} names none of {words:?}", r.text()));
        }
    }
    assert!(failures.is_empty(), "samples answered wrongly:\n{}", failures.join("\n"));
    assert_eq!(b.redis.keys("ci:build:*"), Vec::<String>::new(), "a no-build delivery created a build");
    assert_eq!(b.redis.keys("ci:queue:*"), Vec::<String>::new(), "a no-build delivery queued a job");
}

/// Bitbucket Server is not a sender the SPEC accepts: its sample (signed, with its
/// `X-Event-Key`) is answered 200 with the reason (an ignored delivery is never a 4xx) and
/// queues nothing.
#[test]
fn bitbucket_sample_queues_nothing() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
    let rel = "bitbucket/server-refs-changed.json";
    let r = send_sample(&b.hook, rel, &fixture(rel));
    assert_eq!(r.code, 200, "{rel}: {r}");
    assert_eq!(
        r.json()["reason"],
        json!("event \"repo:refs_changed\" is not supported: only pushes from GitHub, Gitea/Forgejo and GitLab are built")
    );
    assert_eq!(b.redis.keys("ci:build:*"), Vec::<String>::new());
    assert_eq!(b.hook.get("/ping").code, 200);
}

struct Buildable {
    sample: &'static str,
    repo: &'static str,
    branch: &'static str,
    yml: &'static str,
    /// Step lines of the log after the `- commit` line.
    lines: &'static [&'static str],
    passed: bool,
}

const BUILDABLE: &[Buildable] = &[
    Buildable {
        sample: "github/push/with-new-branch.payload.json",
        repo: "Codertocat/Hello-World",
        branch: "master",
        yml: "step: build\nshell: echo hello\n",
        lines: &["- build", "[passed] echo hello (0 seconds, exit code 0)"],
        passed: true,
    },
    Buildable {
        sample: "gitea/gitea-push.json",
        repo: "gitea/webhooks",
        branch: "develop",
        yml: "step: test\nshell:\n  - \"false\"\n  - echo never\n",
        lines: &["- test", "[failed] false (0 seconds, exit code 1)", "[skipped] echo never"],
        passed: false,
    },
    Buildable {
        sample: "gitlab/push-hook.json",
        repo: "mike/diaspora",
        branch: "master",
        yml: "- step: one\n  shell: \"true\"\n- step: two\n  shell: [\"true\", \"test -f integration.yml\"]\n",
        lines: &[
            "- one",
            "[passed] true (0 seconds, exit code 0)",
            "- two",
            "[passed] true (0 seconds, exit code 0)",
            "[passed] test -f integration.yml (0 seconds, exit code 0)",
        ],
        passed: true,
    },
];

#[test]
fn buildable_samples_are_built_and_read_back_as_text_and_json() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
    for case in BUILDABLE {
        let mut git = b.repo(case.repo);
        git.checkout(case.branch);
        git.default_branch = "master".into();
        git.write("integration.yml", case.yml);
        let sha = git.commit(&format!("Build the {} sample\n\nwith a body line", case.sample));
        git.push();
        let msg = git.message(&sha);
        let url = git.file_url();
        let payload = match case.sample {
            s if s.starts_with("github/") => github_push(case.repo, &url, case.branch, &sha, &msg, "master"),
            s if s.starts_with("gitea/") => gitea_push(case.repo, &url, case.branch, &sha, &msg),
            _ => gitlab_push(case.repo, &url, case.branch, &sha, &msg),
        };
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let r = send_sample(&b.hook, case.sample, payload.to_string().as_bytes());
        assert_eq!(r.code, 202, "{}: {r}", case.sample);
        let j = r.json();
        let id = j["id"].as_str().unwrap_or_else(|| panic!("{}: no string id in {r}", case.sample)).to_string();
        assert!(id.parse::<u64>().is_ok(), "build id {id:?} is not a decimal string");
        assert_eq!(j["repo"], json!(case.repo), "{}: {r}", case.sample);
        assert_eq!(j["branch"], json!(case.branch), "{}: {r}", case.sample);
        assert_eq!(j["sha"], json!(sha), "{}: {r}", case.sample);
        assert_eq!(j["slave"], json!("slave-0"), "{}: {r}", case.sample);
        assert_eq!(j["coalesced"], json!(false), "{}: {r}", case.sample);

        let build = wait_build(&b.redis, &id, LONG);
        let mut expected = vec![format!("- commit {} (Build the {} sample)", &sha[..10], case.sample)];
        expected.extend(case.lines.iter().map(|l| l.to_string()));
        assert_eq!(build.log, expected, "{}: log", case.sample);

        // Text.
        let path = format!("/status/{}?branch={}", case.repo, case.branch);
        let text = b.hook.get(&path);
        assert_eq!(text.code, if case.passed { 200 } else { 412 }, "GET {path}: {text}");
        assert_eq!(text.text(), format!("{}\n", expected.join("\n")), "GET {path}");

        // JSON.
        let r = b.hook.get_json(&path);
        assert_eq!(r.code, 200, "GET {path} (json): {r}");
        let rec = r.json();
        assert_eq!(rec["id"], json!(id));
        assert_eq!(rec["repo"], json!(case.repo));
        assert_eq!(rec["branch"], json!(case.branch));
        assert_eq!(rec["sha"], json!(sha));
        assert_eq!(rec["state"], json!(if case.passed { "passed" } else { "failed" }));
        assert_eq!(rec["ok"], json!(case.passed));
        assert_eq!(rec["log"], json!(expected));
        assert_eq!(rec["slave"], json!("slave-0"));
        assert!(rec["seconds"].is_number(), "seconds: {rec}");
        let t = |k: &str| rec[k].as_f64().unwrap_or_else(|| panic!("{k} is not unix seconds: {rec}"));
        let (q, s, f) = (t("queued_at"), t("started_at"), t("finished_at"));
        assert!(before as f64 <= q && q <= s && s <= f && f <= (now() + 1) as f64, "times out of order: {rec}");
    }
    // The repository's default branch (master, from the payload) is what /status shows
    // without ?branch.
    let r = b.hook.get("/status/Codertocat/Hello-World");
    assert_eq!(r.code, 200, "GET /status/Codertocat/Hello-World: {r}");
    assert!(r.text().contains("[passed] echo hello"), "{r}");
    let r = b.hook.get("/status/mike/diaspora");
    assert_eq!(r.code, 200, "{r}");
}

#[test]
fn ping_metrics_and_unknown_repositories() {
    let b = Backend::start(1, &[], &[]);
    let r = b.hook.get("/ping");
    assert_eq!((r.code, r.text().trim().to_string()), (200, "pong".to_string()));
    // Errors are one JSON sentence whether the client asked for text or JSON.
    let never = json!({"error": "\"nobody/never-pushed\" was never pushed (or its default branch is unknown: add ?branch=)"});
    for (what, r) in [("text", b.hook.get("/status/nobody/never-pushed")), ("JSON", b.hook.get_json("/status/nobody/never-pushed"))] {
        assert_eq!((r.code, r.header("Content-Type")), (404, Some("application/json")), "{what}: {r}");
        assert_eq!(r.json(), never, "{what}");
    }
    let r = b.hook.get("/status/nobody/never-pushed?branch=dev");
    assert_eq!(r.json(), json!({"error": "\"nobody/never-pushed\" branch \"dev\" was never pushed"}), "{r}");
    let r = b.hook.get("/status/t/br:x");
    assert_eq!(r.code, 400, "{r}");
    assert_eq!(r.json(), json!({"error": "repository name \"t/br:x\" holds ':': forges allow `A-Za-z0-9._-` in `/`-separated segments"}));
    let r = b.hook.get("/status/t/br?branch=x%3Ay");
    assert_eq!(r.code, 400, "{r}");
    assert_eq!(r.json(), json!({"error": "branch name \"x:y\" holds ':': git refuses it (git check-ref-format)"}));
    let m = b.hook.metrics();
    assert!(m.lines().any(|l| l == "ci_slaves{cluster=\"slave\"} 1"), "metrics:\n{m}");
    assert!(!m.contains(&b.hook.token), "/metrics shows the token");
    let log = b.hook.log();
    let requests = events(&log, "request");
    assert!(
        requests.iter().any(|l| kv(l, "path").as_deref() == Some("/ping") && kv(l, "code").as_deref() == Some("200")),
        "no `request ... path=/ping code=200` line in:\n{log}"
    );
}

#[test]
fn hints_choose_the_shortest_cluster_offering_all_of_them() {
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[]);
    let _plain = Slave::start(&redis, &[]);
    let jdk8 = Slave::start(&redis, &[("SLAVE_CLUSTER", "slave-jdk8")]);
    let jdk8sbt = Slave::start(&redis, &[("SLAVE_CLUSTER", "slave-jdk8-sbt")]);
    assert_eq!((jdk8.cluster.as_str(), jdk8.index), ("slave-jdk8", 0));
    assert_eq!((jdk8sbt.cluster.as_str(), jdk8sbt.index), ("slave-jdk8-sbt", 0));
    for c in ["slave", "slave-jdk8", "slave-jdk8-sbt"] {
        hook.wait_slaves(c, 1);
    }
    let git = GitRepo::new(&redis.root, "acme/hinted");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("hinted");
    git.push();
    for (path, cluster) in
        [("/jdk8", "slave-jdk8"), ("/jdk8+sbt", "slave-jdk8-sbt"), ("/sbt+jdk8", "slave-jdk8-sbt"), ("/sbt", "slave-jdk8-sbt")]
    {
        let r = hook.push_to(path, &git, &sha);
        assert_eq!(r.code, 202, "POST {path}: {r}");
        let j = r.json();
        assert_eq!(j["slave"], json!(format!("{cluster}-0")), "POST {path}: {r}");
        let build = wait_build(&redis, j["id"].as_str().unwrap(), LONG);
        assert_eq!(build.slave, format!("{cluster}-0"), "POST {path} ran on the wrong slave");
        assert_eq!(build.state, "passed", "{:?}", build.log);
    }
    let r = hook.push_to("/go+jdk8", &git, &sha);
    assert_eq!(r.code, 503, "POST /go+jdk8 (no such cluster): {r}");
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After: {:?}", r.headers);
    let err = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(err.contains("go"), "the 503 error should name the hints: {err:?}");
}

/// Load balancers probe with HEAD as often as GET: `/ping` answers both.
#[test]
fn head_ping_is_200_without_a_body() {
    use std::io::{Read, Write};
    let b = Backend::start(1, &[], &[]);
    let mut sock = std::net::TcpStream::connect(b.hook.addr).unwrap();
    sock.write_all(b"HEAD /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    sock.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\n"), "a HEAD answer carries no body: {answer:?}");
}
