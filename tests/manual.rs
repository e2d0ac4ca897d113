//! Manual runs: `POST /build/<repo>?branch=B` with `{"env": {...}}` parameters (bearer token or
//! signed body) reaches bare and container steps, overrides the step's `env`, shows on the build
//! page and in the record; every refused body answers 400 with its reason and queues nothing;
//! `?id=N` builds N's own commit while the branch has moved on, never another repository's build;
//! a run with parameters is a build of its own that no push coalesces away.

use crate::harness::*;

/// A debug step printing what it sees of the parameters, the commit and the event.
const PARAMS_YML: &str = "step: show\ndebug: true\nenv:\n  TARGET: staging\nshell:\n  - \"printf 'target=%s note=%s\\\\n' \\\"$TARGET\\\" \\\"$NOTE\\\"\"\n  - \"printf 'commit=%s event=%s\\\\n' \\\"$COMMIT\\\" \\\"$CI_EVENT\\\"\"\n";

fn bearer(b: &Backend) -> String {
    format!("Bearer {}", b.hook.token)
}

fn accepted(r: &Response) -> String {
    assert_eq!(r.code, 202, "{r}");
    r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {r}")).to_string()
}

/// What the step printed about the parameters and the commit.
fn shown(build: &Build) -> Vec<String> {
    build.printed()
}

/// The build's id counter: one more per queued build.
fn seq(b: &Backend) -> Option<String> {
    b.redis.get("ci:seq")
}

#[test]
fn parameters_reach_the_steps_the_record_and_the_page() {
    let b = Backend::start(1, &[], &[]);
    let (_git, sha, first) = b.build("acme/params", &[("integration.yml", PARAMS_YML)], "params");
    assert_eq!(first.state, "passed", "{:?}", first.log);
    assert_eq!(shown(&first), ["target=staging note=".to_string(), format!("commit={sha} event=push")]);

    let note = "a <b> & \"c\" ünï";
    let body = json!({ "env": { "TARGET": "prod", "NOTE": note } }).to_string();
    let r = b.hook.post("/build/acme/params?branch=main", &[("Authorization", &bearer(&b))], body.as_bytes());
    let id = accepted(&r);
    assert_ne!(id, first.id, "a run with parameters is its own build");
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    // The parameters override the step's env (its defaults).
    assert_eq!(shown(&build), [format!("target=prod note={note}"), format!("commit={sha} event=manual")]);

    // The record, as /status and /history answer it.
    let s = b.hook.get_json("/status/acme/params?branch=main");
    assert_eq!((s.json()["id"].as_str(), s.json()["params"].clone()), (Some(id.as_str()), json!({"NOTE": note, "TARGET": "prod"})), "{s}");
    let h = b.hook.get_json("/history/acme/params?branch=main").json();
    assert_eq!((h[0]["params"].clone(), h[1]["params"].clone()), (json!({"NOTE": note, "TARGET": "prod"}), json!({})), "{h}");

    // The page: names and values, escaped.
    let page = b.hook.get(&format!("/builds/{id}"));
    assert_eq!(page.code, 200, "{page}");
    let html = page.text();
    assert!(html.contains("<h2>Parameters</h2>"), "{html}");
    assert!(html.contains("<code>TARGET</code></th><td><pre>prod</pre>"), "{html}");
    assert!(html.contains("<code>NOTE</code></th><td><pre>a &lt;b&gt; &amp; &quot;c&quot; ünï</pre>"), "{html}");
    assert!(!b.hook.get(&format!("/builds/{}", first.id)).text().contains("Parameters"));

    // The hook's log names the parameters, never their values.
    let log = b.hook.log();
    assert!(log.lines().any(|l| l.contains(&format!("id={id}")) && l.contains("params=NOTE,TARGET")), "{log}");
    assert!(!log.contains("a <b>"), "{log}");

    // A signed body carries them in the signed JSON.
    let body =
        json!({ "at": now(), "action": "build", "repo": "acme/params", "branch": "main", "env": { "TARGET": "signed" } }).to_string();
    let sig = sign_sha256(body.as_bytes(), &b.hook.token);
    let r = b.hook.post("/build/acme/params?branch=main", &[("X-Hub-Signature-256", &sig)], body.as_bytes());
    let build = wait_build(&b.redis, &accepted(&r), LONG);
    assert_eq!(shown(&build), ["target=signed note=".to_string(), format!("commit={sha} event=manual")]);
    // Once only, like every signed body.
    let again = b.hook.post("/build/acme/params?branch=main", &[("X-Hub-Signature-256", &sig)], body.as_bytes());
    assert_eq!(again.code, 403, "{again}");
}

#[test]
fn a_container_step_sees_the_parameters() {
    let Some(image) = crate::containers::image() else { return };
    let b = Backend::start(1, &[], &[]);
    let yml = format!(
        "step: contained\nimage: {image}\ndebug: true\nenv:\n  TARGET: staging\nshell: \"echo target=$TARGET version=$VERSION event=$CI_EVENT\"\n"
    );
    let (_git, _sha, first) = b.build("acme/cparams", &[("integration.yml", &yml)], "contained");
    assert_eq!(shown(&first), ["target=staging version= event=push"], "{:?}", first.log);
    let body = json!({ "env": { "TARGET": "prod", "VERSION": "1.2.3" } }).to_string();
    let r = b.hook.post("/build/acme/cparams?branch=main", &[("Authorization", &bearer(&b))], body.as_bytes());
    let build = wait_build(&b.redis, &accepted(&r), LONG);
    assert_eq!(shown(&build), ["target=prod version=1.2.3 event=manual"], "{:?}", build.log);
}

#[test]
fn every_refused_body_answers_400_with_its_reason_and_queues_nothing() {
    let b = Backend::start(1, &[], &[]);
    let (_git, _sha, first) = b.build("acme/refuse", &[("integration.yml", PARAMS_YML)], "refuse");
    assert_eq!(first.state, "passed");
    let before = seq(&b);
    let many: serde_json::Map<String, Value> = (0..33).map(|i| (format!("P{i}"), json!("v"))).collect();
    let cases: Vec<(String, &str)> = vec![
        (json!({"env": {"target": "x"}}).to_string(), "parameter name \\\"target\\\" is not [A-Z_][A-Z0-9_]*"),
        (json!({"env": {"9LIVES": "x"}}).to_string(), "parameter name \\\"9LIVES\\\" is not [A-Z_][A-Z0-9_]*"),
        (json!({"env": {"A-B": "x"}}).to_string(), "parameter name \\\"A-B\\\" is not [A-Z_][A-Z0-9_]*"),
        (json!({"env": {"BRANCH": "x"}}).to_string(), "parameter BRANCH is a CI variable's name"),
        (json!({"env": {"CI_EVENT": "push"}}).to_string(), "parameter CI_EVENT is a CI variable's name"),
        (json!({"env": {"PULL_REQUEST": "1"}}).to_string(), "parameter PULL_REQUEST is a CI variable's name"),
        (json!({"env": many}).to_string(), "33 parameters given: at most 32"),
        (json!({"env": {"BIG": "x".repeat(4097)}}).to_string(), "parameter BIG is 4097 bytes: at most 4096"),
        (json!({"env": {"NUL": "a\u{0}b"}}).to_string(), "parameter NUL contains a NUL byte"),
        (json!({"env": {"NUM": 7}}).to_string(), "parameter NUM must be a string"),
        ("TARGET=prod".to_string(), "the body is not JSON"),
        ("{\"env\": {\"A\": \"x\"}".to_string(), "the body is not JSON"),
        ("[\"TARGET\"]".to_string(), "the body must be a JSON object"),
        ("\"TARGET\"".to_string(), "the body must be a JSON object"),
        (json!({"env": ["TARGET=prod"]}).to_string(), "\\\"env\\\" must be an object"),
        (json!({"env": "TARGET=prod"}).to_string(), "\\\"env\\\" must be an object"),
        (json!({"environment": {"A": "x"}}).to_string(), "unknown field \\\"environment\\\" in the body"),
    ];
    for (body, why) in &cases {
        let r = b.hook.post("/build/acme/refuse?branch=main", &[("Authorization", &bearer(&b))], body.as_bytes());
        assert_eq!(r.code, 400, "{body:.80}: {r}");
        assert!(r.text().contains(why), "{body:.80}: want {why:?} in {r}");
        // The same with a signed body: refused once its signature holds.
        if let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(body) {
            if !fields.contains_key("env") {
                continue; // a signed body's other fields are the signature's to judge
            }
            for (k, v) in [("at", json!(now())), ("action", json!("build")), ("repo", json!("acme/refuse")), ("branch", json!("main"))] {
                fields.insert(k.to_string(), v);
            }
            let signed = Value::Object(fields).to_string();
            let sig = sign_sha256(signed.as_bytes(), &b.hook.token);
            let r = b.hook.post("/build/acme/refuse?branch=main", &[("X-Hub-Signature-256", &sig)], signed.as_bytes());
            assert_eq!(r.code, 400, "signed {signed:.80}: {r}");
            assert!(r.text().contains(why), "signed {signed:.80}: want {why:?} in {r}");
        }
    }
    // The bounds themselves are accepted: 32 names, a 4096-byte value.
    let edge: serde_json::Map<String, Value> = (0..31).map(|i| (format!("P{i}"), json!("v"))).collect();
    let mut edge = edge;
    edge.insert("BIG".into(), json!("x".repeat(4096)));
    assert_eq!(seq(&b), before, "a refused request queued a build");
    let r = b.hook.post("/build/acme/refuse?branch=main", &[("Authorization", &bearer(&b))], json!({ "env": edge }).to_string().as_bytes());
    let id = accepted(&r);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    // What the largest accepted body costs the hook (printed, not asserted: `--nocapture`).
    let log = b.hook.log();
    let line = log.lines().find(|l| l.contains("path=/build/") && l.contains(&format!(" id={id} "))).unwrap_or("");
    eprintln!("manual: POST /build with 32 parameters (one of 4096 bytes): {}", kv(line, "ms").unwrap_or_default());
}

#[test]
fn id_builds_that_builds_commit_while_the_branch_has_moved_on() {
    let b = Backend::start(1, &[], &[]);
    let git = b.repo("acme/rerun");
    git.write("integration.yml", PARAMS_YML);
    let old = git.commit("old");
    git.push();
    let old_id = b.hook.push_ok(&git, &old);
    assert_eq!(wait_build(&b.redis, &old_id, LONG).state, "passed");
    let new = git.commit("new");
    git.push();
    let new_id = b.hook.push_ok(&git, &new);
    assert_eq!(wait_build(&b.redis, &new_id, LONG).state, "passed");

    let body = json!({ "env": { "NOTE": "again" } }).to_string();
    let r = b.hook.post(&format!("/build/acme/rerun?id={old_id}"), &[("Authorization", &bearer(&b))], body.as_bytes());
    let build = wait_build(&b.redis, &accepted(&r), LONG);
    assert_eq!((build.sha.as_str(), build.fields["branch"].as_str(), build.fields["event"].as_str()), (old.as_str(), "main", "manual"));
    assert_eq!(shown(&build), ["target=staging note=again".to_string(), format!("commit={old} event=manual")]);

    // Without a body too; and the branch's last push is still the new commit.
    let r = b.hook.post(&format!("/build/acme/rerun?id={old_id}"), &[("Authorization", &bearer(&b))], b"");
    assert_eq!(wait_build(&b.redis, &accepted(&r), LONG).sha, old);
    let r = b.hook.post("/build/acme/rerun?branch=main", &[("Authorization", &bearer(&b))], b"");
    let build = wait_build(&b.redis, &accepted(&r), LONG);
    assert_eq!(shown(&build), ["target=staging note=".to_string(), format!("commit={new} event=manual")]);

    // A signed body names the id it is for.
    let signed = json!({ "at": now(), "action": "build", "repo": "acme/rerun", "id": old_id.parse::<u64>().unwrap() }).to_string();
    let sig = sign_sha256(signed.as_bytes(), &b.hook.token);
    let r = b.hook.post(&format!("/build/acme/rerun?id={new_id}"), &[("X-Hub-Signature-256", &sig)], signed.as_bytes());
    assert_eq!(r.code, 403, "{r}");
    assert!(r.text().contains("\\\"id\\\""), "{r}");
    let r = b.hook.post(&format!("/build/acme/rerun?id={old_id}"), &[("X-Hub-Signature-256", &sig)], signed.as_bytes());
    assert_eq!(wait_build(&b.redis, &accepted(&r), LONG).sha, old);

    // Another repository's build, a build that does not exist, a bad id: refused, nothing queued.
    let (_other, _, elsewhere) = b.build("acme/other", &[("integration.yml", PARAMS_YML)], "other");
    let before = seq(&b);
    for (query, code, why) in [
        (format!("id={}", elsewhere.id), 404, format!("\\\"acme/rerun\\\" has no build {}", elsewhere.id)),
        ("id=999999".to_string(), 404, "\\\"acme/rerun\\\" has no build 999999".to_string()),
        ("id=x1".to_string(), 400, "?id= must be a build's number".to_string()),
        (format!("id={old_id}&branch=main"), 400, "give ?branch= or ?id=, not both".to_string()),
    ] {
        let r = b.hook.post(&format!("/build/acme/rerun?{query}"), &[("Authorization", &bearer(&b))], b"");
        assert_eq!(r.code, code, "{query}: {r}");
        assert!(r.text().contains(&why), "{query}: want {why:?} in {r}");
    }
    assert_eq!(seq(&b), before, "a refused request queued a build");
    assert_eq!(read_build(&b.redis, &elsewhere.id).map(|r| r.fields["repo"].clone()).as_deref(), Some("acme/other"));
}

/// A fork's request build never gets parameters: asking for them with `?id=` is refused.
#[test]
fn a_forks_build_is_never_given_parameters() {
    let b = Backend::start(1, &[], &[]);
    let (_git, _sha, first) = b.build("acme/forked", &[("integration.yml", PARAMS_YML)], "forked");
    // A fork's request build, as the hook records one (HOOK_FORK_PULLS=build).
    let mut job: Value = serde_json::from_str(&first.fields["push"]).unwrap();
    job["fork"] = json!(true);
    job["branch"] = json!("pull/4");
    job["pull"] = json!({"base_branch": "main", "head_branch": "x", "head_repo": "mallory/forked", "number": 4});
    let key = "ci:build:424242";
    b.redis.cli(&["HSET", key, "id", "424242", "repo", "acme/forked", "branch", "pull/4", "sha", &first.sha, "state", "passed"]);
    b.redis.cli(&["HSET", key, "push", &job.to_string()]);
    let before = seq(&b);
    let body = json!({ "env": { "TARGET": "prod" } }).to_string();
    let r = b.hook.post("/build/acme/forked?id=424242", &[("Authorization", &bearer(&b))], body.as_bytes());
    assert_eq!(r.code, 400, "{r}");
    assert!(r.text().contains("\\\"pull/4\\\" is a fork's request: its code never gets parameters"), "{r}");
    assert_eq!(seq(&b), before);
}

/// A pending build is replaced by a newer push (coalescing); a run with parameters is a build of
/// its own: it replaces no pending build, and no later push replaces it.
#[test]
fn coalescing_never_loses_parameters() {
    let b = Backend::start(1, &[], &[]);
    let (blocker, _) = b.occupy("acme/busy");
    let git = b.repo("acme/coal");
    git.write("integration.yml", PARAMS_YML);
    let first = git.commit("first");
    git.push();
    let pending = b.hook.push_ok(&git, &first);

    let body = json!({ "env": { "TARGET": "prod" } }).to_string();
    let r = b.hook.post("/build/acme/coal?branch=main", &[("Authorization", &bearer(&b))], body.as_bytes());
    let manual = accepted(&r);
    assert_ne!(manual, pending, "{r}");
    assert_eq!(r.json()["coalesced"].as_bool(), Some(false), "{r}");

    let second = git.commit("second");
    git.push();
    let r = b.hook.push(&git, &second);
    assert_eq!((r.code, r.json()["id"].as_str(), r.json()["coalesced"].as_bool()), (202, Some(pending.as_str()), Some(true)), "{r}");

    blocker.release();
    let p = wait_build(&b.redis, &pending, LONG);
    assert_eq!(shown(&p), ["target=staging note=".to_string(), format!("commit={second} event=push")]);
    let m = wait_build(&b.redis, &manual, LONG);
    assert_eq!(shown(&m), ["target=prod note=".to_string(), format!("commit={first} event=manual")]);
}
