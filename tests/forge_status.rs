//! Commit statuses back to the forge: a real hook and slave, and a plain HTTP receiver on
//! 127.0.0.1 standing for each forge's API (it records method, path, headers and body). The
//! expected paths, headers and bodies are written out here from the forges' API documents.
//! Statuses are named `<SLAVE_STATUS_CONTEXT>/<event>`; GitLab's carry the build's `ref`
//! (GitLab's `lib/api/commit_statuses.rb`: without it, a commit on no branch is a 404).

use crate::harness::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const PUBLIC: &str = "http://ci.example";

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Value,
}

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Code(u16),
    /// Read the request, record it, never answer (the connection is kept open).
    Hang,
}

/// The forge API: records every request; answers with `answer`.
struct Receiver {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
    /// Connections kept open by `Hang`.
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (Arc::clone(&seen), Arc::clone(&held));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (s, h) = (Arc::clone(&s), Arc::clone(&h));
                std::thread::spawn(move || serve(stream, answer, &s, &h));
            }
        });
        Receiver { port, seen, held }
    }

    fn base(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    fn states_for(&self, path: &str) -> Vec<String> {
        self.requests().iter().filter(|r| r.path == path).map(|r| r.body["state"].as_str().unwrap_or("?").to_string()).collect()
    }
}

fn serve(stream: TcpStream, answer: Answer, seen: &Mutex<Vec<Request>>, held: &Mutex<Vec<TcpStream>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body = serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into()));
        seen.lock().unwrap().push(Request { method, path, headers, body });
        match answer {
            Answer::Hang => {
                held.lock().unwrap().push(stream);
                return;
            }
            Answer::Code(code) => {
                let text = format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}");
                if (&stream).write_all(text.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// How each forge is set up and what its requests look like.
#[derive(Clone, Copy)]
struct Kind {
    name: &'static str,
    /// The API base's path on the receiver.
    api: &'static str,
    /// GitLab's project id in the payload.
    project_id: u64,
}

const GITHUB: Kind = Kind { name: "github", api: "/api/v3", project_id: 0 };
const GITEA: Kind = Kind { name: "gitea", api: "/api/v1", project_id: 0 };
const GITLAB: Kind = Kind { name: "gitlab", api: "/api/v4", project_id: 4242 };

impl Kind {
    /// The signed payload of a push of `git` at `sha`, naming `forge_host` (`127.0.0.1:<port>`)
    /// as its forge (GitHub: statuses_url; Gitea/GitLab: the repository's web URL).
    fn send(&self, hook: &Hook, git: &GitRepo, sha: &str, forge_host: &str) -> Response {
        self.send_ref(hook, git, sha, forge_host, &format!("refs/heads/{}", git.branch))
    }

    /// [`Kind::send`] of a push to `git_ref` (`refs/heads/…` or `refs/tags/…`).
    fn send_ref(&self, hook: &Hook, git: &GitRepo, sha: &str, forge_host: &str, git_ref: &str) -> Response {
        let msg = git.message(sha);
        let json = ("Content-Type", "application/json");
        match self.name {
            "github" => {
                let mut v = github_push(&git.name, &git.file_url(), &git.branch, sha, &msg, &git.default_branch);
                v["ref"] = json!(git_ref);
                v["repository"]["statuses_url"] = json!(format!("http://{forge_host}{}/repos/{}/statuses/{{sha}}", self.api, git.name));
                v["repository"]["html_url"] = json!(format!("http://{forge_host}/{}", git.name));
                hook.send_github("/", "push", v.to_string().as_bytes(), &[])
            }
            "gitea" => {
                let mut v = gitea_push(&git.name, &git.file_url(), &git.branch, sha, &msg);
                v["ref"] = json!(git_ref);
                v["repository"]["html_url"] = json!(format!("http://{forge_host}/{}", git.name));
                let body = v.to_string();
                let sig = sign_gitea(body.as_bytes(), &hook.token);
                hook.post("/", &[("X-Gitea-Event", "push"), ("X-Gitea-Signature", &sig), json], body.as_bytes())
            }
            _ => {
                let mut v = gitlab_push(&git.name, &git.file_url(), &git.branch, sha, &msg);
                v["ref"] = json!(git_ref);
                v["project"]["web_url"] = json!(format!("http://{forge_host}/{}", git.name));
                v["project"]["id"] = json!(self.project_id);
                v["project_id"] = json!(self.project_id);
                let event = if git_ref.starts_with("refs/tags/") { "Tag Push Hook" } else { "Push Hook" };
                let body = v.to_string();
                hook.post("/", &[("X-Gitlab-Event", event), ("X-Gitlab-Token", &hook.token), json], body.as_bytes())
            }
        }
    }

    /// The signed payload of request 6 of `git`, its head `sha` on branch `feature/x` of the
    /// same repository, naming `forge_host` as its forge.
    fn send_request(&self, hook: &Hook, git: &GitRepo, sha: &str, forge_host: &str) -> Response {
        if self.name == "gitlab" {
            let mut v = crate::pulls::gitlab_mr(&git.name, &git.file_url(), 6, sha, 14, "open");
            v["project"]["web_url"] = json!(format!("http://{forge_host}/{}", git.name));
            v["project"]["id"] = json!(self.project_id);
            let body = v.to_string();
            return hook.post("/", &[("X-Gitlab-Event", "Merge Request Hook"), ("X-Gitlab-Token", &hook.token)], body.as_bytes());
        }
        let mut v = crate::pulls::github_pull(&git.name, &git.file_url(), 6, sha, &git.name, "opened");
        v["repository"]["statuses_url"] = json!(format!("http://{forge_host}{}/repos/{}/statuses/{{sha}}", self.api, git.name));
        v["repository"]["html_url"] = json!(format!("http://{forge_host}/{}", git.name));
        let body = v.to_string();
        if self.name == "github" {
            return hook.send_github("/", "pull_request", body.as_bytes(), &[]);
        }
        let sig = sign_gitea(body.as_bytes(), &hook.token);
        hook.post(
            "/",
            &[("X-Gitea-Event", "pull_request"), ("X-Gitea-Signature", &sig), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    /// Where the forge keeps a request's head: GitLab `refs/merge-requests/<N>/head`, the
    /// others `refs/pull/<N>/head`.
    fn request_ref(&self, n: u64) -> String {
        if self.name == "gitlab" {
            format!("refs/merge-requests/{n}/head")
        } else {
            format!("refs/pull/{n}/head")
        }
    }

    fn path(&self, repo: &str, sha: &str) -> String {
        match self.name {
            "gitlab" => format!("{}/projects/{}/statuses/{sha}", self.api, self.project_id),
            _ => format!("{}/repos/{repo}/statuses/{sha}", self.api),
        }
    }

    /// The auth header's name and value for `token`.
    fn auth(&self, token: &str) -> (&'static str, String) {
        match self.name {
            "github" => ("authorization", format!("Bearer {token}")),
            "gitea" => ("authorization", format!("token {token}")),
            _ => ("private-token", token.to_string()),
        }
    }

    fn state(&self, github_state: &str) -> &'static str {
        match (self.name, github_state) {
            ("gitlab", "pending") => "running",
            ("gitlab", "failure" | "error") => "failed",
            (_, "pending") => "pending",
            (_, "success") => "success",
            (_, "failure") => "failure",
            _ => "error",
        }
    }

    /// The body of a push build's status (of branch `main`).
    fn body(&self, state: &str, description: &str, id: &str) -> Value {
        let mut v = json!({ "state": self.state(state), "description": description, self.label(): "ci-backend/push", "target_url": format!("{PUBLIC}/builds/{id}") });
        if self.name == "gitlab" {
            v["ref"] = json!("main");
        }
        v
    }

    /// The body's field naming the status.
    fn label(&self) -> &'static str {
        if self.name == "gitlab" {
            "name"
        } else {
            "context"
        }
    }
}

fn token(kind: Kind) -> String {
    format!("{}-tok-{}", kind.name, delivery_id().replace('-', ""))
}

/// A backend with one slave whose SLAVE_FORGES names `receiver` as `kind`; Gitea's line is
/// given in a SLAVE_FORGES_FILE (mode 0600) instead.
fn backend(kind: Kind, receiver: &Receiver, token: &str, extra: &[(&str, &str)]) -> Backend {
    backend_with(kind, receiver, token, &[], extra)
}

/// [`backend`] with the hook's environment `hook_env`.
fn backend_with(kind: Kind, receiver: &Receiver, token: &str, hook_env: &[(&str, &str)], extra: &[(&str, &str)]) -> Backend {
    let redis = Redis::start();
    let env = slave_env(&redis, kind, receiver, token, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hook = Hook::start(&redis, hook_env);
    let slaves = vec![Slave::start(&redis, &env)];
    hook.wait_slaves("slave", 1);
    let startup = events(&slaves[0].log(), "slave.forges").first().map(|l| l.to_string()).unwrap_or_default();
    let want = format!("{} {} fingerprint=", kind.name, receiver.base(kind.api));
    assert!(startup.contains(&want) && !startup.contains(token), "startup line: {startup}");
    Backend { slaves, hook, redis }
}

/// The slave's environment for `backend`.
fn slave_env(redis: &Redis, kind: Kind, receiver: &Receiver, token: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let line = format!("# the test's forge\n{} {} {token}\n", kind.name, receiver.base(kind.api));
    let file = redis.root.join("forges");
    let (name, value) = if kind.name == "gitea" {
        std::fs::write(&file, &line).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        ("SLAVE_FORGES_FILE", file.to_string_lossy().into_owned())
    } else {
        ("SLAVE_FORGES", line)
    };
    let mut env = vec![(name.to_string(), value), ("CI_PUBLIC_URL".to_string(), PUBLIC.to_string())];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// Commits `files` to a new repository `name` and pushes it as `kind`, naming `host`; returns
/// the repository, sha and build id.
fn push(b: &Backend, kind: Kind, name: &str, files: &[(&str, &str)], host: &str) -> (GitRepo, String, String) {
    let git = b.repo(name);
    for (path, text) in files {
        git.write(path, text);
    }
    let sha = git.commit(&format!("commit of {name}"));
    git.push();
    let r = kind.send(&b.hook, &git, &sha, host);
    assert_eq!(r.code, 202, "push of {name}: {r}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    (git, sha, id)
}

fn wait_states(rx: &Receiver, path: &str, n: usize) -> Vec<Request> {
    wait_for(&format!("{n} statuses at {path}"), LONG, || {
        let got: Vec<Request> = rx.requests().into_iter().filter(|r| r.path == path).collect();
        if got.len() >= n {
            Ok(got)
        } else {
            Err(format!("{:?}", rx.states_for(path)))
        }
    })
}

const PASS: &str = "- step: ok\n  shell: 'true'\n";
const FAIL: &str = "- step: no\n  shell: 'false'\n";

/// Pass, fail and could-not-run, each posted pending then its result, with the exact request.
fn statuses_follow_the_build(kind: Kind) {
    let rx = Receiver::start(Answer::Code(201));
    let tok = token(kind);
    let b = backend(kind, &rx, &tok, &[]);
    let host = format!("127.0.0.1:{}", rx.port);
    let slave = b.slaves[0].name();
    let cases = [
        ("acme/passes", vec![("integration.yml", PASS)], "success"),
        ("acme/fails", vec![("integration.yml", FAIL)], "failure"),
        ("acme/no-yml", vec![("README", "no integration.yml here")], "error"),
    ];
    for (name, files, result) in cases {
        let (_, sha, id) = push(&b, kind, name, &files, &host);
        let build = wait_build(&b.redis, &id, LONG);
        let path = kind.path(name, &sha);
        let got = wait_states(&rx, &path, 2);
        assert_eq!(got.len(), 2, "{name}: {got:?}");
        let seconds = build.fields.get("seconds").cloned().unwrap_or_default();
        let description = match result {
            "success" => format!("passed in {seconds} s"),
            "failure" => format!("failed in {seconds} s"),
            _ => "could not run: integration.yml missing".to_string(),
        };
        assert_eq!(got[0].body, kind.body("pending", &format!("running on {slave}"), &id), "{name}");
        assert_eq!(got[1].body, kind.body(result, &description, &id), "{name}");
        let (auth, value) = kind.auth(&tok);
        for r in &got {
            assert_eq!(r.method, "POST", "{name}");
            assert_eq!(r.headers.get(auth), Some(&value), "{name}: {:?}", r.headers);
            assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"), "{name}");
            if kind.name == "github" {
                assert_eq!(r.headers.get("accept").map(String::as_str), Some("application/vnd.github+json"));
                assert_eq!(r.headers.get("user-agent").map(String::as_str), Some("ci-backend"));
            }
        }
    }
    assert_eq!(rx.requests().len(), 6, "{:?}", rx.requests());
    let logs = b.all_logs();
    let line = events(&logs, "forge.status").into_iter().find(|l| kv(l, "state").as_deref() == Some(kind.state("success")));
    let line = line.expect("a forge.status line");
    assert_eq!((kv(line, "forge").as_deref(), kv(line, "code").as_deref()), (Some(kind.name), Some("201")), "{line}");
    assert!(kv(line, "ms").is_some() && kv(line, "repo").as_deref() == Some("acme/passes"), "{line}");
    let metrics = b.hook.metrics();
    assert!(metrics.contains("\nci_forge_status_total{result=\"sent\"} 6\n"), "{metrics}");
    // The token: not in a log, not in the slave's environment.
    let logs = format!("{}{}", b.all_logs(), std::fs::read_to_string(&b.slaves[0].proc.err).unwrap_or_default());
    assert!(!logs.contains(&tok), "the token is in the slave's log");
    let environ = std::fs::read(format!("/proc/{}/environ", b.slaves[0].pid())).unwrap();
    assert!(!String::from_utf8_lossy(&environ).contains(&tok), "the token is in the slave's environment");
}

#[test]
fn github_statuses_follow_the_build() {
    statuses_follow_the_build(GITHUB);
}

#[test]
fn gitea_statuses_follow_the_build() {
    statuses_follow_the_build(GITEA);
}

#[test]
fn gitlab_statuses_follow_the_build() {
    statuses_follow_the_build(GITLAB);
}

/// A step sees no token: its environment, printed into the log, does not hold it.
#[test]
fn a_step_never_sees_a_forge_token() {
    let rx = Receiver::start(Answer::Code(201));
    let tok = token(GITHUB);
    let b = backend(GITHUB, &rx, &tok, &[]);
    let yml = "- step: env\n  debug: true\n  shell: env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' || true\n";
    let (_, sha, id) = push(&b, GITHUB, "acme/env", &[("integration.yml", yml)], &format!("127.0.0.1:{}", rx.port));
    let build = wait_build(&b.redis, &id, LONG);
    assert!(build.has_line("- env"), "{}", build.log_text());
    assert!(build.log_text().contains("CI=true"), "the step printed its environment: {}", build.log_text());
    assert!(!build.log_text().contains(&tok), "a step saw the forge token");
    wait_states(&rx, &GITHUB.path("acme/env", &sha), 2);
}

/// A forge that answers 500 or never answers does not hold the build's result back, and
/// each status is tried SLAVE_FORGE_ATTEMPTS times, no more.
fn a_failing_forge_does_not_delay_the_build(kind: Kind, answer: Answer) {
    let rx = Receiver::start(answer);
    let tok = token(kind);
    let b = backend(kind, &rx, &tok, &[("SLAVE_FORGE_ATTEMPTS", "2"), ("SLAVE_FORGE_TIMEOUT", "8")]);
    let (_, sha, id) = push(&b, kind, "acme/slow-forge", &[("integration.yml", PASS)], &format!("127.0.0.1:{}", rx.port));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed");
    if answer == Answer::Hang {
        // Stored while the first request (pending) still hangs: no attempt has ended yet,
        // so no forge.status line is in the log (the first ends after SLAVE_FORGE_TIMEOUT).
        let ended = events(&b.all_logs(), "forge.status").len();
        assert_eq!(ended, 0, "a status request ended before the result was stored: {}", b.all_logs());
        wait_for("the receiver to hold the pending request", DEADLINE, || match rx.held.lock().unwrap().len() {
            0 => Err("none held".into()),
            n => Ok(n),
        });
    }
    let success = kind.state("success");
    wait_for("forge.status_failed for the result", LONG, || {
        let logs = b.all_logs();
        let failed = events(&logs, "forge.status_failed");
        match failed.iter().find(|l| kv(l, "state").as_deref() == Some(success)) {
            Some(l) => Ok(l.to_string()),
            None => Err(format!("{failed:?}")),
        }
    });
    let path = kind.path("acme/slow-forge", &sha);
    let states = rx.states_for(&path);
    assert_eq!(states.iter().filter(|s| *s == success).count(), 2, "the result, tried twice: {states:?}");
    let pending = states.iter().filter(|s| *s == kind.state("pending")).count();
    assert!((1..=2).contains(&pending), "pending tried once or twice: {states:?}");
    assert_eq!(states.len(), 2 + pending, "{states:?}");
    let metrics = b.hook.metrics();
    assert!(metrics.contains("\nci_forge_status_total{result=\"failed\"} 2\n"), "{metrics}");
    assert!(metrics.contains("\nci_forge_status_total{result=\"sent\"} 0\n"), "{metrics}");
}

#[test]
fn a_forge_answering_500_does_not_delay_the_build() {
    a_failing_forge_does_not_delay_the_build(GITHUB, Answer::Code(500));
}

#[test]
fn a_forge_that_never_answers_does_not_delay_the_build() {
    a_failing_forge_does_not_delay_the_build(GITLAB, Answer::Hang);
}

/// A payload naming another host (the second receiver, not configured) gets no token: neither
/// receiver hears of it. A legitimate push afterwards shows the poster had gone past it.
fn another_host_gets_no_token(kind: Kind) {
    let configured = Receiver::start(Answer::Code(201));
    let other = Receiver::start(Answer::Code(201));
    let tok = token(kind);
    let b = backend(kind, &configured, &tok, &[]);
    let (_, _, evil_id) = push(&b, kind, "evil/app", &[("integration.yml", PASS)], &format!("127.0.0.1:{}", other.port));
    wait_build(&b.redis, &evil_id, LONG);
    let (_, sha, _) = push(&b, kind, "acme/app", &[("integration.yml", PASS)], &format!("127.0.0.1:{}", configured.port));
    wait_states(&configured, &kind.path("acme/app", &sha), 2);
    assert_eq!(other.requests().len(), 0, "the unconfigured host got {:?}", other.requests());
    let all = configured.requests();
    assert_eq!(all.len(), 2, "only acme/app's statuses: {all:?}");
}

#[test]
fn github_statuses_url_of_another_host_gets_no_token() {
    another_host_gets_no_token(GITHUB);
}

#[test]
fn gitea_web_url_of_another_host_gets_no_token() {
    another_host_gets_no_token(GITEA);
}

#[test]
fn gitlab_web_url_of_another_host_gets_no_token() {
    another_host_gets_no_token(GITLAB);
}

/// A build whose slave died during each of its SLAVE_MAX_ATTEMPTS attempts is given up: its
/// status goes from pending (posted by the slave that died) to error.
#[test]
fn a_build_given_up_after_its_attempts_is_an_error() {
    let rx = Receiver::start(Answer::Code(201));
    let tok = token(GITHUB);
    let extra = [("SLAVE_MAX_ATTEMPTS", "1"), ("SLAVE_LEASE", "1")];
    let mut b = backend(GITHUB, &rx, &tok, &extra);
    let blocker = Blocker::new(b.root(), "given-up");
    let (_, sha, id) = push(&b, GITHUB, "acme/dies", &[("integration.yml", &blocker.yml())], &format!("127.0.0.1:{}", rx.port));
    let path = GITHUB.path("acme/dies", &sha);
    wait_states(&rx, &path, 1);
    blocker.wait_started();
    b.slaves[0].kill9();
    let env = slave_env(&b.redis, GITHUB, &rx, &tok, &extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    b.slaves[0] = Slave::start(&b.redis, &env);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.log, vec!["* gave up after 1 attempts: the slave died during each"]);
    let got = wait_states(&rx, &path, 2);
    let description = "could not run: gave up after 1 attempts: the slave died during each";
    assert_eq!(got[1].body, GITHUB.body("error", description, &id), "{got:?}");
    assert_eq!(got[0].body["state"], "pending");
}

/// Cancelling: a canceled build is no failure. GitHub and Gitea have no canceled state: `error`
/// "canceled"; GitLab has one: `canceled`.
#[test]
fn a_canceled_build_is_error_canceled_on_github_and_canceled_on_gitlab() {
    for (kind, state) in [(GITHUB, "error"), (GITLAB, "canceled")] {
        let rx = Receiver::start(Answer::Code(201));
        let b = backend(kind, &rx, &token(kind), &[]);
        let host = format!("127.0.0.1:{}", rx.port);
        let blocker = Blocker::new(b.root(), kind.name);
        let (git, sha, id) = push(&b, kind, "acme/canceled", &[("integration.yml", &blocker.yml())], &host);
        blocker.wait_started();
        let bearer = format!("Bearer {}", b.hook.token);
        let r = b.hook.post(&format!("/cancel/acme/canceled?branch={}", git.branch), &[("Authorization", &bearer)], b"");
        assert_eq!(r.code, 202, "{r}");
        let got = wait_states(&rx, &kind.path("acme/canceled", &sha), 2);
        let mut want = json!({ "state": state, "description": "canceled", kind.label(): "ci-backend/push", "target_url": format!("{PUBLIC}/builds/{id}") });
        if kind.name == "gitlab" {
            want["ref"] = json!(git.branch);
        }
        assert_eq!(got[1].body, want, "{}", kind.name);
        assert_eq!(got.len(), 2, "{}: {got:?}", kind.name);
    }
}

/// A pull/merge request's statuses go to its head sha, on the target repository the
/// payload's `repository` (GitLab: `project`) describes.
fn request_statuses_go_to_the_head_sha(kind: Kind) {
    let rx = Receiver::start(Answer::Code(201));
    let tok = token(kind);
    let b = backend(kind, &rx, &tok, &[]);
    let host = format!("127.0.0.1:{}", rx.port);
    let (git_ref, branch) =
        if kind.name == "gitlab" { ("refs/merge-requests/6/head", "merge-requests/6") } else { ("refs/pull/6/head", "pull/6") };
    let (git, head) = crate::pulls::target_with_request(&b, "acme/prs", git_ref, PASS);
    let r = if kind.name == "gitlab" {
        let mut v = crate::pulls::gitlab_mr("acme/prs", &git.file_url(), 6, &head, 14, "open");
        v["project"]["web_url"] = json!(format!("http://{host}/acme/prs"));
        v["project"]["id"] = json!(kind.project_id);
        let body = v.to_string();
        b.hook.post("/", &[("X-Gitlab-Event", "Merge Request Hook"), ("X-Gitlab-Token", &b.hook.token)], body.as_bytes())
    } else {
        let mut v = crate::pulls::github_pull("acme/prs", &git.file_url(), 6, &head, "acme/prs", "opened");
        v["repository"]["statuses_url"] = json!(format!("http://{host}{}/repos/acme/prs/statuses/{{sha}}", kind.api));
        v["repository"]["html_url"] = json!(format!("http://{host}/acme/prs"));
        b.hook.send_github("/", "pull_request", v.to_string().as_bytes(), &[])
    };
    assert_eq!((r.code, r.json()["branch"].clone()), (202, json!(branch)), "{r}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
    let got = wait_states(&rx, &kind.path("acme/prs", &head), 2);
    assert_eq!(got[1].body["state"], json!(kind.state("success")), "{got:?}");
    assert_eq!(rx.requests().len(), 2, "only the head sha's statuses: {:?}", rx.requests());
}

#[test]
fn github_request_statuses_go_to_the_head_sha() {
    request_statuses_go_to_the_head_sha(GITHUB);
}

#[test]
fn gitlab_request_statuses_go_to_the_head_sha() {
    request_statuses_go_to_the_head_sha(GITLAB);
}

/// One commit built as a push, a tag, a request and a re-run (`POST /build`): each posts its
/// own status, `<SLAVE_STATUS_CONTEXT>/push`, `/tag`, `/pr`, `/manual`, so none overwrites
/// another on the forge; GitLab's carry the branch, the tag's name and the request's source
/// branch as `ref` (the re-run: its branch's).
fn statuses_are_named_by_event(kind: Kind) {
    let rx = Receiver::start(Answer::Code(201));
    let b = backend_with(kind, &rx, &token(kind), &[("HOOK_BUILD_TAGS", "1")], &[("SLAVE_STATUS_CONTEXT", "acme.ci/v2")]);
    let host = format!("127.0.0.1:{}", rx.port);
    let repo = b.repo("acme/events");
    repo.write("integration.yml", PASS);
    let sha = repo.commit("one commit, four builds");
    repo.push();
    // The tag and the request's head name the same commit, as the forge keeps them.
    run(git(&repo.work).args(["tag", "v1.2", &sha]));
    run(git(&repo.work).args(["push", "-q", "origin", "refs/tags/v1.2", &format!("{sha}:{}", kind.request_ref(6))]));
    let path = kind.path("acme/events", &sha);
    let bearer = format!("Bearer {}", b.hook.token);
    for (n, what) in ["push", "tag", "request", "rebuild"].into_iter().enumerate() {
        let r = match what {
            "push" => kind.send(&b.hook, &repo, &sha, &host),
            "tag" => kind.send_ref(&b.hook, &repo, &sha, &host, "refs/tags/v1.2"),
            "request" => kind.send_request(&b.hook, &repo, &sha, &host),
            _ => b.hook.post("/build/acme/events?branch=main", &[("Authorization", &bearer)], b""),
        };
        assert_eq!(r.code, 202, "{what}: {r}");
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed", "{what}");
        wait_states(&rx, &path, 2 * (n + 1));
    }
    let got: Vec<(String, String, Option<String>)> = wait_states(&rx, &path, 8)
        .iter()
        .map(|r| {
            (
                r.body[kind.label()].as_str().unwrap_or("?").to_string(),
                r.body["state"].as_str().unwrap_or("?").to_string(),
                r.body.get("ref").map(|v| v.as_str().unwrap_or("?").to_string()),
            )
        })
        .collect();
    let gitlab = kind.name == "gitlab";
    let mut want = Vec::new();
    for (context, git_ref) in
        [("acme.ci/v2/push", "main"), ("acme.ci/v2/tag", "v1.2"), ("acme.ci/v2/pr", "feature/x"), ("acme.ci/v2/manual", "main")]
    {
        for state in ["pending", "success"] {
            want.push((context.to_string(), kind.state(state).to_string(), gitlab.then(|| git_ref.to_string())));
        }
    }
    assert_eq!(got, want, "{}", kind.name);
    assert_eq!(rx.requests().len(), 8, "every status to the one commit: {:?}", rx.requests());
    let logs = b.all_logs();
    let contexts: Vec<String> = events(&logs, "forge.status").iter().filter_map(|l| kv(l, "context")).collect();
    assert_eq!(contexts.len(), 8, "{logs}");
    assert!(contexts.iter().all(|c| c.starts_with("acme.ci/v2/")), "{contexts:?}");
}

#[test]
fn github_statuses_are_named_by_event() {
    statuses_are_named_by_event(GITHUB);
}

#[test]
fn gitea_statuses_are_named_by_event() {
    statuses_are_named_by_event(GITEA);
}

#[test]
fn gitlab_statuses_are_named_by_event_and_carry_the_ref() {
    statuses_are_named_by_event(GITLAB);
}

/// SLAVE_STATUS_CONTEXT is bounded: a bad value stops the slave at start, naming it.
#[test]
fn a_bad_status_context_stops_the_slave_at_start() {
    let long = "c".repeat(65);
    for bad in ["ci backend", "/ci", "ci//x", "ci\u{1b}[31m", "ci\u{202e}x", long.as_str()] {
        let (code, err) = crate::secrets::slave_refuses(&[("SLAVE_STATUS_CONTEXT", bad)]);
        assert_eq!(code, 2, "{bad:?}: {err}");
        let want = format!("SLAVE_STATUS_CONTEXT={bad:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ - /");
        assert!(err.contains(&want), "{bad:?}: {err}");
    }
}
