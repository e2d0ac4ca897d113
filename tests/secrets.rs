//! Secrets: the hook token, the slave's git password and the password in REDIS_URL never
//! appear in a log line (bar the token's one `hook.token` startup line), an HTTP answer (status
//! text and JSON, errors, metrics), or a build's environment; values a step lists under
//! `secrets:` are masked as `***` in the recorded log, multi-line values line by line.

use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Secrets {
    token: String,
    git_user: String,
    git_password: String,
    redis_password: String,
}

impl Secrets {
    fn new() -> Secrets {
        let u = delivery_id().replace('-', "");
        Secrets {
            token: format!("tok{u}"),
            git_user: "ci-user".into(),
            git_password: format!("gitpw{u}"),
            redis_password: format!("redispw{u}"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 3] {
        [("the hook token", &self.token), ("the git password", &self.git_password), ("the redis password", &self.redis_password)]
    }
}

/// Fails naming each secret that `text` (from `whence`) holds.
fn assert_clean(secrets: &[(&str, &str)], whence: &str, text: &str) {
    for (what, value) in secrets {
        if let Some(at) = text.find(value) {
            let line = text[..at].rsplit('\n').next().unwrap_or("");
            panic!("{what} appears in {whence}: …{line}{value}…");
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An HTTP server on 127.0.0.1 that answers every request `401` with a Basic challenge and keeps
/// the `Authorization` headers it was sent (so the test sees the slave's git use its password).
struct Unauthorized {
    port: u16,
    auth: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Unauthorized {
    fn start() -> Unauthorized {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let auth = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, halt) = (Arc::clone(&auth), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming().take(100) {
                if halt.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                    if let Some(v) = line.strip_prefix("Authorization: ").or_else(|| line.strip_prefix("authorization: ")) {
                        seen.lock().unwrap().push(v.trim().to_string());
                    }
                    line.clear();
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ci\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Unauthorized { port, auth, stop, thread: Some(thread) }
    }
}

impl Drop for Unauthorized {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for the latest build of `repo` (JSON status) to be build `id` and finished.
fn finished(hook: &Hook, repo: &str, id: &str) -> Value {
    wait_for(&format!("build {id} of {repo} to finish"), LONG, || {
        let r =
            try_http(hook.addr, "GET", &format!("/status/{repo}"), &[("Accept", "application/json")], b"").map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|_| r.to_string())?;
        match v["state"].as_str() {
            Some("passed" | "failed") if v["id"] == json!(id) => Ok(v),
            _ => Err(r.to_string()),
        }
    })
}

fn log_lines(v: &Value) -> Vec<String> {
    v["log"].as_array().map(|a| a.iter().map(|l| l.as_str().unwrap_or("").to_string()).collect()).unwrap_or_default()
}

/// A repository with `yml`, committed and pushed; its sha.
fn repo_with(root: &Path, name: &str, yml: &str) -> (GitRepo, String) {
    let git = GitRepo::new(root, name);
    git.write("integration.yml", yml);
    let sha = git.commit(name);
    git.push();
    (git, sha)
}

/// Every child output file of the test (hook and slave stdout/stderr; not Redis's own log).
fn child_logs(root: &Path) -> Vec<(String, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if (name.starts_with("hook-") || name.starts_with("slave-")) && (name.ends_with(".out") || name.ends_with(".err")) {
            out.push((name, String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned()));
        }
    }
    out
}

#[test]
fn token_git_password_and_redis_password_never_leak() {
    let s = Secrets::new();
    let mut redis = Redis::start();
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", &s.redis_password]), Resp::Simple("OK".into()));
    let url = format!("redis://:{}@127.0.0.1:{}/0", s.redis_password, redis.port);
    let hook = Hook::start(&redis, &[("REDIS_URL", &url), ("HOOK_TOKEN", &s.token), ("HOOK_MAX_BODY", "262144")]);
    // The slave has every secret in its environment (operators share env files).
    let slave = Slave::start(
        &redis,
        &[
            ("REDIS_URL", &url),
            ("GIT_USERNAME", &s.git_user),
            ("GIT_PASSWORD", &s.git_password),
            ("HOOK_TOKEN", &s.token),
            ("SLAVE_BUILD_TIMEOUT", "60"),
        ],
    );
    hook.wait_slaves("slave", 1);
    let mut answers: Vec<(String, Response)> = vec![];
    let mut keep = |what: &str, r: Response| {
        answers.push((what.to_string(), r.clone()));
        r
    };
    let root = redis.root.clone();

    // 1. A step printing its whole environment, recorded with debug.
    let (env_git, env_sha) = repo_with(&root, "leak/env", "step: env\ndebug: true\nshell: env\n");
    let r = keep("push", hook.push(&env_git, &env_sha));
    assert_eq!(r.code, 202, "{r}");
    let build = finished(&hook, "leak/env", r.json()["id"].as_str().unwrap());
    let lines = log_lines(&build);
    assert_eq!(build["state"], json!("passed"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "[passed]   . CI=true"), "env printed nothing? {lines:#?}");
    assert!(lines.iter().any(|l| l == "[passed]   . REPO=leak/env"), "{lines:#?}");
    for l in &lines {
        let var = l.strip_prefix("[passed]   . ").unwrap_or("").split('=').next().unwrap_or("");
        assert!(
            !(var.starts_with("GIT_")
                || var.starts_with("CI_GIT_")
                || var.starts_with("REDIS")
                || var.starts_with("HOOK_")
                || var.starts_with("SLAVE_")),
            "the build's environment holds {var}: {l}"
        );
    }
    assert_clean(&s.all(), "the build's environment (`env` with debug)", &lines.join("\n"));

    // 2. git over http with the credentials: the password reaches git (Authorization header)
    //    and nothing else; the failed clone's message does not carry it.
    let server = Unauthorized::start();
    let private_url = format!("http://127.0.0.1:{}/leak/private.git", server.port);
    let body = github_push("leak/private", &private_url, "main", &env_sha, "private", "main").to_string();
    let r = keep("push (private)", hook.send_github("/", "push", body.as_bytes(), &[]));
    assert_eq!(r.code, 202, "{r}");
    let build = finished(&hook, "leak/private", r.json()["id"].as_str().unwrap());
    let lines = log_lines(&build);
    assert_eq!(build["state"], json!("failed"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("* checkout failed: ")), "{lines:#?}");
    let expected = format!("Basic {}", base64(format!("{}:{}", s.git_user, s.git_password).as_bytes()));
    let sent = server.auth.lock().unwrap().clone();
    assert!(sent.contains(&expected), "git never sent the configured credentials; Authorization headers seen: {sent:?}");
    drop(server);

    // 3. Every kind of answer the hook gives.
    let sha = env_git.commit("second");
    env_git.push();
    let good = github_push(&env_git.name, &env_git.file_url(), "main", &sha, "second", "main").to_string();
    let right_sig = sign_sha256(good.as_bytes(), &s.token);
    let wrong_sig = sign_sha256(good.as_bytes(), "not-the-token");
    let r = keep("wrong signature", hook.post("/", &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong_sig)], good.as_bytes()));
    assert_eq!(r.code, 403, "{r}");
    assert!(!r.text().contains(&right_sig[7..]), "the 403 answer gives away the valid signature: {r}");
    let r = keep("no signature", hook.post("/", &[("X-GitHub-Event", "push")], good.as_bytes()));
    assert_eq!(r.code, 403, "{r}");
    let r = keep("gitlab wrong token", hook.post("/", &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "nope")], good.as_bytes()));
    assert_eq!(r.code, 403, "{r}");
    let r = keep("malformed", hook.send_github("/", "push", b"{\"ref\": 1}", &[]));
    assert_eq!(r.code, 400, "{r}");
    let r = keep("too large", hook.send_github("/", "push", "x".repeat(300_000).as_bytes(), &[]));
    assert_eq!(r.code, 413, "{r}");
    // Each answer's code as README's API table gives it.
    for (what, r, code) in [
        ("ping", hook.get("/ping"), 200),
        ("metrics", hook.get("/metrics"), 200),
        ("status text", hook.get("/status/leak/env"), 200),
        ("status json", hook.get_json("/status/leak/env"), 200),
        ("status private", hook.get("/status/leak/private"), 412),
        ("status 404", hook.get("/status/leak/none"), 404),
        ("no route", hook.get("/nope"), 404),
        ("put", http(hook.addr, "PUT", "/", &[], b""), 405),
    ] {
        let r = keep(what, r);
        assert_eq!(r.code, code, "{what}: {r}");
    }
    let bearer = format!("Bearer {}", s.token);
    let r = keep("build bearer", hook.post("/build/leak/env", &[("Authorization", &bearer)], b""));
    assert_eq!(r.code, 202, "{r}");
    let rerun = r.json()["id"].as_str().unwrap().to_string();
    let r = keep("build wrong bearer", hook.post("/build/leak/env", &[("Authorization", "Bearer wrong")], b""));
    assert_eq!(r.code, 403, "{r}");
    finished(&hook, "leak/env", &rerun);

    // 4. Redis goes away: 503s and retry lines; then it comes back (password set again).
    redis.stop();
    let r = keep(
        "push while redis is down",
        hook.post("/", &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &right_sig)], good.as_bytes()),
    );
    assert_eq!(r.code, 503, "{r}");
    let r = keep("status while redis is down", hook.get("/status/leak/env"));
    assert_eq!(r.code, 503, "{r}");
    // /metrics answers without Redis (ci_redis_up 0).
    let r = keep("metrics while redis is down", hook.get("/metrics"));
    assert_eq!(r.code, 200, "{r}");
    wait_for("the slave to log redis.unreachable", DEADLINE, || {
        if events(&slave.log(), "redis.unreachable").is_empty() {
            Err(tail(&slave.proc.out, 3))
        } else {
            Ok(())
        }
    });
    redis.restart();
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", &s.redis_password]), Resp::Simple("OK".into()));
    let r = keep("push after redis is back", hook.send_github("/", "push", good.as_bytes(), &[]));
    assert_eq!(r.code, 202, "{r}");
    let build = finished(&hook, "leak/env", r.json()["id"].as_str().unwrap());
    assert_eq!(build["state"], json!("passed"), "{build}");

    // 5. A hook given a wrong Redis password: 503s that do not quote it.
    let wrong = format!("wrongpw{}", delivery_id().replace('-', ""));
    let wrong_url = format!("redis://:{wrong}@127.0.0.1:{}/0", redis.port);
    let bad_hook = Hook::start(&redis, &[("REDIS_URL", &wrong_url), ("HOOK_TOKEN", &s.token)]);
    let r = keep("push with a wrong redis password", bad_hook.send_github("/", "push", good.as_bytes(), &[]));
    assert_eq!(r.code, 503, "{r}");
    let r = keep("metrics with a wrong redis password", bad_hook.get("/metrics"));
    assert_eq!(r.code, 200, "{r}");

    // Nothing in any answer...
    let mut all = s.all().to_vec();
    all.push(("the wrong redis password", &wrong));
    for (what, r) in &answers {
        let headers: String = r.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        assert_clean(&all, &format!("the answer to {what} ({})", r.code), &format!("{headers}\n{}", r.text()));
    }
    // ...nor in any log line, bar the token in the one startup line of each hook.
    for (file, text) in child_logs(&root) {
        for line in text.lines() {
            if line.contains(&s.token) {
                assert_eq!(line.split_whitespace().nth(2), Some("hook.token"), "the token appears in {file}: {line}");
                assert!(file.starts_with("hook-"), "the token appears in {file}: {line}");
                continue;
            }
            assert_clean(&all, &file, line);
        }
        if file.starts_with("hook-") && file.ends_with(".out") {
            assert_eq!(events(&text, "hook.token").len(), 1, "{file}: one hook.token line");
        }
    }
    drop(bad_hook);
    drop(slave);
    drop(hook);
}

#[test]
fn secret_values_are_masked_in_the_recorded_log_multi_line_included() {
    let u = delivery_id().replace('-', "");
    let (first, second) = (format!("first-{u}"), format!("second-{u}"));
    let deploy = format!("deploy-{u}");
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[]);
    let slave = Slave::start(&redis, &[("DEPLOY_KEY", &deploy)]);
    hook.wait_slaves("slave", 1);
    let yml = format!(
        "step: leak\ndebug: true\nsecrets: [MY_SECRET, DEPLOY_KEY]\nenv:\n  MY_SECRET: \"{first}\\n{second}\"\n  SHORT: abc\n\
         shell:\n  - echo \"$MY_SECRET\"\n  - printf 'inline %s end\\n' \"$MY_SECRET\"\n  - echo \"key=$DEPLOY_KEY\"\n  - echo \"$MY_SECRET\" >&2; false\n"
    );
    let (git, sha) = repo_with(&redis.root, "leak/masked", &yml);
    let id = hook.push_ok(&git, &sha);
    let build = wait_build(&redis, &id, LONG);
    let want = [
        "- leak",
        "[passed] echo \"$MY_SECRET\" (0 seconds, exit code 0)",
        "[passed]   . ***",
        "[passed]   . ***",
        "[passed] printf 'inline %s end\\n' \"$MY_SECRET\" (0 seconds, exit code 0)",
        "[passed]   . inline ***",
        "[passed]   . *** end",
        "[passed] echo \"key=$DEPLOY_KEY\" (0 seconds, exit code 0)",
        "[passed]   . key=***",
        "[failed] echo \"$MY_SECRET\" >&2; false (0 seconds, exit code 1)",
        "[failed]   . ***",
        "[failed]   . ***",
    ];
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert_eq!(&build.log[1..], &want[..], "the recorded log");
    let values = [("the first line of MY_SECRET", first.as_str()), ("its second line", second.as_str()), ("DEPLOY_KEY", deploy.as_str())];
    assert_clean(&values, "the build record", &format!("{:?}", build.fields));
    assert_clean(&values, "GET /status", &hook.get("/status/leak/masked").text());
    assert_clean(&values, "GET /status (JSON)", &hook.get_json("/status/leak/masked").text());
    assert_clean(&values, "the slave's log", &slave.log());
    assert_clean(&values, "the hook's log", &hook.log());
}
