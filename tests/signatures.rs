//! Sender × signature table: right → accepted, wrong / missing / other key → 403. The shared
//! generated token. `POST /build` authentication.

use crate::harness::*;

const TOKEN: &str = "sig-token-aA0+/zZ9";
const OTHER: &str = "some-other-key";

#[test]
fn sender_signature_table() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
    assert_eq!(b.hook.token, TOKEN, "the startup line must show the configured token");
    assert_eq!(b.hook.token_source, "configured");
    let git = b.repo("acme/signed");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("signed");
    git.push();
    let msg = git.message(&sha);
    let url = git.file_url();

    let gh = github_push(&git.name, &url, "main", &sha, &msg, "main").to_string().into_bytes();
    let gt = gitea_push(&git.name, &url, "main", &sha, &msg).to_string().into_bytes();
    let gl = gitlab_push(&git.name, &url, "main", &sha, &msg).to_string().into_bytes();
    let form = format!("payload={}", urlencode(&String::from_utf8(gh.clone()).unwrap())).into_bytes();
    let ping = fixture("github/ping/payload.json");

    let s256 = sign_sha256(&gh, TOKEN);
    let s1 = sign_sha1(&gh, TOKEN);
    let s256_other = sign_sha256(&gh, OTHER);
    let s1_other = sign_sha1(&gh, OTHER);
    let s256_other_body = sign_sha256(b"{}", TOKEN);
    let s256_as_sha1 = format!("sha1={}", &s256["sha256=".len()..]);
    let gitea_ok = sign_gitea(&gt, TOKEN);
    let gitea_other = sign_gitea(&gt, OTHER);
    let form_ok = sign_sha256(&form, TOKEN);
    let form_bad = sign_sha256(&gh, TOKEN); // signature of the JSON, not of the raw form body
    let ping_ok = sign_sha256(&ping, TOKEN);
    let ping_other = sign_sha256(&ping, OTHER);

    let json = ("Content-Type", "application/json");
    let ev_push = ("X-GitHub-Event", "push");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        ("github sha256", vec![ev_push, json, ("X-Hub-Signature-256", &s256)], &gh, 202),
        ("github sha1", vec![ev_push, json, ("X-Hub-Signature", &s1)], &gh, 202),
        ("github sha256 + sha1", vec![ev_push, json, ("X-Hub-Signature-256", &s256), ("X-Hub-Signature", &s1)], &gh, 202),
        ("github sha256, other key", vec![ev_push, json, ("X-Hub-Signature-256", &s256_other)], &gh, 403),
        ("github sha1, other key", vec![ev_push, json, ("X-Hub-Signature", &s1_other)], &gh, 403),
        ("github sha256 of another body", vec![ev_push, json, ("X-Hub-Signature-256", &s256_other_body)], &gh, 403),
        ("github sha256 digest under sha1=", vec![ev_push, json, ("X-Hub-Signature", &s256_as_sha1)], &gh, 403),
        ("github empty sha256", vec![ev_push, json, ("X-Hub-Signature-256", "sha256=")], &gh, 403),
        ("github non-hex sha256", vec![ev_push, json, ("X-Hub-Signature-256", "sha256=zz")], &gh, 403),
        ("github missing signature", vec![ev_push, json], &gh, 403),
        (
            "github form-encoded",
            vec![ev_push, ("Content-Type", "application/x-www-form-urlencoded"), ("X-Hub-Signature-256", &form_ok)],
            &form,
            202,
        ),
        (
            "github form, JSON signed",
            vec![ev_push, ("Content-Type", "application/x-www-form-urlencoded"), ("X-Hub-Signature-256", &form_bad)],
            &form,
            403,
        ),
        ("github ping signed", vec![("X-GitHub-Event", "ping"), json, ("X-Hub-Signature-256", &ping_ok)], &ping, 200),
        ("github ping other key", vec![("X-GitHub-Event", "ping"), json, ("X-Hub-Signature-256", &ping_other)], &ping, 403),
        ("github ping unsigned", vec![("X-GitHub-Event", "ping"), json], &ping, 403),
        ("gitea bare hex", vec![("X-Gitea-Event", "push"), json, ("X-Gitea-Signature", &gitea_ok)], &gt, 202),
        ("gitea other key", vec![("X-Gitea-Event", "push"), json, ("X-Gitea-Signature", &gitea_other)], &gt, 403),
        ("gitea missing", vec![("X-Gitea-Event", "push"), json], &gt, 403),
        (
            "forgejo bare hex",
            vec![("X-Forgejo-Event", "push"), ("X-Gitea-Event", "push"), json, ("X-Forgejo-Signature", &gitea_ok)],
            &gt,
            202,
        ),
        (
            "forgejo other key",
            vec![("X-Forgejo-Event", "push"), ("X-Gitea-Event", "push"), json, ("X-Forgejo-Signature", &gitea_other)],
            &gt,
            403,
        ),
        ("gitlab token", vec![("X-Gitlab-Event", "Push Hook"), json, ("X-Gitlab-Token", TOKEN)], &gl, 202),
        ("gitlab wrong token", vec![("X-Gitlab-Event", "Push Hook"), json, ("X-Gitlab-Token", OTHER)], &gl, 403),
        ("gitlab token prefix", vec![("X-Gitlab-Event", "Push Hook"), json, ("X-Gitlab-Token", &TOKEN[..TOKEN.len() - 1])], &gl, 403),
        ("gitlab missing token", vec![("X-Gitlab-Event", "Push Hook"), json], &gl, 403),
    ];
    let mut failures = vec![];
    for (name, headers, body, want) in &cases {
        let r = b.hook.post("/", headers, body);
        if r.code != *want {
            failures.push(format!("{name}: expected {want}, got {r}"));
            continue;
        }
        if r.code == 403 {
            let err = serde_json::from_slice::<Value>(&r.body).ok().and_then(|j| j["error"].as_str().map(String::from));
            if err.map(|e| e.is_empty()).unwrap_or(true) {
                failures.push(format!("{name}: 403 without a JSON error sentence: {r}"));
            }
        }
        if r.code == 202
            && serde_json::from_slice::<Value>(&r.body).ok().and_then(|j| j["sha"].as_str().map(String::from)).as_deref()
                != Some(sha.as_str())
        {
            failures.push(format!("{name}: 202 without the sha: {r}"));
        }
    }
    assert!(failures.is_empty(), "signature table:\n{}", failures.join("\n"));
    // The log never carries the token after the startup line.
    let log = b.hook.log();
    assert_eq!(log.matches(TOKEN).count(), 1, "the token appears in the hook log more than once:\n{log}");
}

#[test]
fn generated_token_is_shared_through_redis() {
    let redis = Redis::start();
    let a = Hook::start(&redis, &[]);
    assert_eq!(a.token_source, "generated");
    assert_eq!(a.token.len(), 32, "token {:?}", a.token);
    assert!(a.token.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'), "token {:?} outside A-Za-z0-9+/", a.token);
    assert_eq!(redis.get("ci:token").as_deref(), Some(a.token.as_str()), "ci:token");
    let b = Hook::start(&redis, &[]);
    assert_eq!(b.token_source, "shared");
    assert_eq!(b.token, a.token, "the second hook must adopt the first one's token");

    let ping = fixture("github/ping/payload.json");
    let right = sign_sha256(&ping, &a.token);
    let r = b.post("/", &[("X-GitHub-Event", "ping"), ("Content-Type", "application/json"), ("X-Hub-Signature-256", &right)], &ping);
    assert_eq!(r.code, 200, "ping signed with hook A's token, sent to hook B: {r}");
    let wrong = sign_sha256(&ping, "not-the-token");
    let r = b.post("/", &[("X-GitHub-Event", "ping"), ("Content-Type", "application/json"), ("X-Hub-Signature-256", &wrong)], &ping);
    assert_eq!(r.code, 403, "{r}");
    for path in ["/ping", "/metrics", "/status/x/y"] {
        let r = a.get(path);
        assert!(!r.text().contains(&a.token), "GET {path} serves the token");
    }
}

#[test]
fn rebuild_endpoint_requires_the_token() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
    let git = b.repo("acme/rebuild");
    git.write("integration.yml", "step: s\nshell: echo \"$BUILD_ID\"\n");
    let sha = git.commit("rebuild me");
    git.push();
    let first = b.hook.push_ok(&git, &sha);
    wait_build(&b.redis, &first, LONG);

    let path = "/build/acme/rebuild?branch=main";
    let bearer = format!("Bearer {TOKEN}");
    let r = b.hook.post(path, &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(r.code, 403, "wrong bearer: {r}");
    let r = b.hook.post(path, &[], b"");
    assert_eq!(r.code, 403, "no auth: {r}");
    let r = b.hook.post("/build/acme/never-pushed?branch=main", &[("Authorization", &bearer)], b"");
    assert_eq!(r.code, 404, "never pushed: {r}");

    let r = b.hook.post(path, &[("Authorization", &bearer)], b"");
    assert_eq!(r.code, 202, "bearer: {r}");
    let j = r.json();
    let second = j["id"].as_str().unwrap().to_string();
    assert_ne!(second, first, "a re-run is a new build");
    assert_eq!(j["sha"], json!(sha));
    let build = wait_build(&b.redis, &second, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    assert_eq!(build.sha, sha);

    let sig = sign_sha256(b"", TOKEN);
    let r = b.hook.post(path, &[("X-Hub-Signature-256", &sig)], b"");
    assert_eq!(r.code, 202, "signature of the (empty) body: {r}");
    wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
}
