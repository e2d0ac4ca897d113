//! Sender × signature table: right → accepted, wrong / missing / other key → 403. A configured
//! token logged only as its fingerprint; the shared generated token. `POST /build`
//! authentication: a bearer token or a fresh signed body, never a replayable constant.

use crate::harness::*;

const TOKEN: &str = "sig-token-aA0+/zZ9";
const OTHER: &str = "some-other-key";

#[test]
fn sender_signature_table() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN)], &[]);
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
    let (bearer, bearer_lower, bearer_upper) = (format!("Bearer {TOKEN}"), format!("bearer {TOKEN}"), format!("BEARER {TOKEN}"));
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
        ("Authorization: Bearer", vec![ev_push, json, ("Authorization", &bearer)], &gh, 202),
        ("Authorization: bearer (RFC 7235: any case)", vec![ev_push, json, ("Authorization", &bearer_lower)], &gh, 202),
        ("Authorization: BEARER", vec![ev_push, json, ("Authorization", &bearer_upper)], &gh, 202),
        ("Authorization: bearer, wrong token", vec![ev_push, json, ("Authorization", "bearer wrong")], &gh, 403),
        ("Authorization: Basic", vec![ev_push, json, ("Authorization", "Basic dXNlcjpwdw==")], &gh, 403),
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
    // A configured token is never in the log, not even in the startup line.
    let log = b.hook.log();
    assert_eq!(log.matches(TOKEN).count(), 0, "the configured token appears in the hook log:\n{log}");
}

/// `printf %s TOKEN | sha256sum`, its first 8 hex characters: coreutils, not the hook's code.
fn sha256sum_prefix(token: &str) -> String {
    let out = run(std::process::Command::new("bash").args(["-c", "printf %s \"$1\" | sha256sum", "sha", token]));
    let hex = out.split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(hex.len(), 64, "sha256sum said {out:?}");
    hex[..8].to_string()
}

#[test]
fn a_configured_token_is_logged_only_as_its_sha256_fingerprint() {
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[("HOOK_TOKEN", TOKEN)]);
    let out = hook.log() + &std::fs::read_to_string(&hook.proc.err).unwrap_or_default();
    let lines = events(&out, "hook.token");
    assert_eq!(lines.len(), 1, "one hook.token line:\n{out}");
    assert_eq!(kv(lines[0], "source").as_deref(), Some("configured"), "{}", lines[0]);
    assert_eq!(kv(lines[0], "token"), None, "a configured token is printed: {}", lines[0]);
    assert_eq!(hook.fingerprint.as_deref(), Some(sha256sum_prefix(TOKEN).as_str()), "{}", lines[0]);
    assert!(!out.contains(TOKEN), "the configured token appears in the hook's output:\n{out}");
    // It is the token in force.
    let ping = fixture("github/ping/payload.json");
    let sig = sign_sha256(&ping, TOKEN);
    let r = hook.post("/", &[("X-GitHub-Event", "ping"), ("Content-Type", "application/json"), ("X-Hub-Signature-256", &sig)], &ping);
    assert_eq!(r.code, 200, "{r}");
    assert!(!hook.log().contains(TOKEN), "the configured token appears in the hook's log after a request");
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

    let r = b.hook.post(path, &[("Authorization", &format!("bearer {TOKEN}"))], b"");
    assert_eq!(r.code, 202, "lower-case bearer: {r}");
    wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);

    // A signature of the empty body is a constant: replayable forever, so refused; so is a body that
    // does not name the request (one signature would rebuild, cancel, or rebuild another repository).
    let builds = b.redis.keys("ci:build:*").len();
    let not_bound = "a signed POST /build or /cancel body must say what it is for, {\"at\": <unix seconds>, \"action\": \"build\"|\"cancel\", \
                     \"repo\": \"<owner/name>\", \"branch\": \"<branch>\"} (\"id\": <n> instead of \"branch\" for one build, neither for the \
                     default branch; \"reset\": true with X-Reset; \"env\": {\"NAME\": \"value\"} for a build's parameters): a signature of anything less could be used for another request";
    let body_at = |at: u64| format!("{{\"at\": {at}, \"action\": \"build\", \"repo\": \"acme/rebuild\", \"branch\": \"main\"}}");
    // (what, body, the error, or the clock skew it must name)
    let refusals: [(&str, String, Result<&str, i64>); 5] = [
        ("a signed empty body", String::new(), Ok(not_bound)),
        ("a signed body without \"at\"", "{}".into(), Ok(not_bound)),
        ("a signed bare {\"at\"}", format!("{{\"at\": {}}}", now()), Ok(not_bound)),
        ("a body signed an hour ago", body_at(now() - 3600), Err(-3600)),
        ("a body signed for an hour ahead", body_at(now() + 3600), Err(3600)),
    ];
    for (what, body, want) in &refusals {
        let sig = sign_sha256(body.as_bytes(), TOKEN);
        let r = b.hook.post(path, &[("X-Hub-Signature-256", &sig)], body.as_bytes());
        assert_eq!(r.code, 403, "{what}: {r}");
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        match want {
            Ok(error) => assert_eq!(&err, error, "{what}"),
            Err(skew) => {
                let said = err
                    .strip_prefix("the signed body's \"at\" is ")
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or_else(|| panic!("{what}: error {err:?}"));
                // Whole seconds on this side, fractional on the hook's: a second either way.
                assert!((said - skew).abs() <= 1, "{what}: error {err:?}");
                assert!(
                    err.ends_with("s off the hook's clock (allowed: 300 s either way): sign a body with the current unix seconds"),
                    "{err:?}"
                );
            }
        }
    }
    // A body signed for one request, sent with another: each answers 403 naming the field.
    let t = now();
    // (what, sent to, body, extra headers, what the refusal names)
    type Misuse<'a> = (&'a str, &'a str, String, &'a [(&'a str, &'a str)], &'a str);
    let misuse: [Misuse; 5] = [
        (
            "a build body sent to /cancel",
            "/cancel/acme/rebuild?branch=main",
            body_at(t),
            &[],
            "\"action\" is \"build\" but the request asks for \"cancel\"",
        ),
        (
            "another repository's body",
            path,
            format!("{{\"at\": {t}, \"action\": \"build\", \"repo\": \"acme/other\", \"branch\": \"main\"}}"),
            &[],
            "\"repo\" is \"acme/other\" but the request asks for \"acme/rebuild\"",
        ),
        (
            "another branch's body",
            path,
            format!("{{\"at\": {t}, \"action\": \"build\", \"repo\": \"acme/rebuild\", \"branch\": \"dev\"}}"),
            &[],
            "\"branch\" is \"dev\" but the request asks for \"main\"",
        ),
        (
            "a body without reset sent with X-Reset",
            path,
            body_at(t),
            &[("X-Reset", "true")],
            "\"reset\" is false but the request asks for true",
        ),
        (
            "a body for the default branch sent for main",
            path,
            format!("{{\"at\": {t}, \"action\": \"build\", \"repo\": \"acme/rebuild\"}}"),
            &[],
            "\"branch\" is nothing but the request asks for \"main\"",
        ),
    ];
    for (what, to, body, extra, said) in &misuse {
        let sig = sign_sha256(body.as_bytes(), TOKEN);
        let mut headers = vec![("X-Hub-Signature-256", sig.as_str())];
        headers.extend_from_slice(extra);
        let r = b.hook.post(to, &headers, body.as_bytes());
        assert_eq!(r.code, 403, "{what}: {r}");
        let err = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(err.starts_with(&format!("the signed body's {said}")), "{what}: {err:?}");
    }
    assert_eq!(b.redis.keys("ci:build:*").len(), builds, "a refused re-run created a build");

    // A body signed now is accepted once (the clock is read just before sending); the same body
    // again is refused and builds nothing.
    let body = body_at(now());
    let sig = sign_sha256(body.as_bytes(), TOKEN);
    let r = b.hook.post(path, &[("X-Hub-Signature-256", &sig)], body.as_bytes());
    assert_eq!(r.code, 202, "a fresh signed body: {r}");
    wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    let builds = b.redis.keys("ci:build:*").len();
    let r = b.hook.post(path, &[("X-Hub-Signature-256", &sig)], body.as_bytes());
    assert_eq!(r.code, 403, "the same signed body again: {r}");
    assert_eq!(
        r.json()["error"],
        json!("this signed body was used already: each is good for one request; sign a new one with the current unix seconds")
    );
    assert_eq!(b.redis.keys("ci:build:*").len(), builds, "a replayed body created a build");
    let other = sign_sha256(body.as_bytes(), "not-the-token");
    let r = b.hook.post(path, &[("X-Hub-Signature-256", &other)], body.as_bytes());
    assert_eq!(r.code, 403, "a fresh body signed with another key: {r}");
    let r = b.hook.post(path, &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(r.json()["error"], json!("Authorization: Bearer is not this hook's token"), "{r}");
}
