//! Secrets: the configured hook token, the slave's git password and the password in REDIS_URL
//! never appear in a log line (the `hook.token` startup line shows a fingerprint), an HTTP answer (status
//! text and JSON, errors, metrics), or a build's environment; values a step lists under
//! `secrets:` are masked as `***` in the recorded log, multi-line values line by line.
//! Git credentials go to their own host over https only, never over http nor to another host,
//! and a step cannot reach them: not in any environment it can read, not in a file it can open.
//! Steps run as `nobody` when the slave is root; a slave that is not root is not dumpable.

use crate::harness::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
/// the `Authorization` headers it was sent (so the test sees what the slave's git would give it).
struct Unauthorized {
    port: u16,
    requests: Arc<AtomicUsize>,
    auth: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Unauthorized {
    fn start() -> Unauthorized {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let auth = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, count, halt) = (Arc::clone(&auth), Arc::clone(&requests), Arc::clone(&stop));
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
                    if line.starts_with("GET ") || line.starts_with("POST ") {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    if line.to_ascii_lowercase().starts_with("authorization:") {
                        seen.lock().unwrap().push(line["authorization:".len()..].trim().to_string());
                    }
                    line.clear();
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ci\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Unauthorized { port, requests, auth, stop, thread: Some(thread) }
    }

    /// What git sent: `(requests, Authorization headers)`.
    fn seen(&self) -> (usize, Vec<String>) {
        (self.requests.load(Ordering::SeqCst), self.auth.lock().unwrap().clone())
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
    // A git server over plain http; the slave's credentials are for the same host and port, over
    // https.
    let server = Unauthorized::start();
    let creds = format!("https://{}:{}@127.0.0.1:{}", s.git_user, s.git_password, server.port);
    // The slave has every secret in its environment (operators share env files).
    let slave =
        Slave::start(&redis, &[("REDIS_URL", &url), ("GIT_CREDENTIALS", &creds), ("HOOK_TOKEN", &s.token), ("SLAVE_BUILD_TIMEOUT", "60")]);
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

    // 2. A clone over plain http from the host the credentials are for (over https): git asks,
    //    gets a 401, and no credentials are sent; the failed clone's message names the URL.
    let private_url = format!("http://127.0.0.1:{}/leak/private.git", server.port);
    let body = github_push("leak/private", &private_url, "main", &env_sha, "private", "main").to_string();
    let r = keep("push (private)", hook.send_github("/", "push", body.as_bytes(), &[]));
    assert_eq!(r.code, 202, "{r}");
    let build = finished(&hook, "leak/private", r.json()["id"].as_str().unwrap());
    let lines = log_lines(&build);
    assert_eq!(build["state"], json!("failed"), "{lines:#?}");
    let why = format!("* checkout failed: git clone {private_url} failed (exit code 128): ");
    assert!(lines.len() == 2 && lines[1].starts_with(&why), "{lines:#?}");
    let (requests, sent) = server.seen();
    assert!(requests >= 1, "git never asked the http server: nothing was tested");
    assert_eq!(sent, Vec::<String>::new(), "credentials for https://127.0.0.1:{} went over http", server.port);
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
    // ...nor in any log line: a configured token's startup line shows its fingerprint only.
    for (file, text) in child_logs(&root) {
        for line in text.lines() {
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

/// A fresh password (unique per test) and its two halves: a step greps for the joined halves, so
/// that its own environment (which holds the halves) does not match.
fn password() -> (String, String, String) {
    let u = delivery_id().replace('-', "");
    let (a, b) = (format!("gitpw{}", &u[..8]), u[8..20].to_string());
    (format!("{a}{b}"), a, b)
}

/// Every regular file under `dir` (symlinks not followed) that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    found
}

/// A step that looks for the password everywhere it can: every process's environment and
/// command line, its own environment, the cache (files and `.netrc`), the credentials file, the
/// slave's own /proc entry. The pattern reaches grep through a descriptor (`-f <(...)`), so that
/// no command line of the step holds the joined password.
fn snooping_yml(half1: &str, half2: &str, cache: &Path, file: &Path) -> String {
    let grep = "grep -c -F -f <(printf '%s%s\\n' \"$HALF1\" \"$HALF2\")";
    format!(
        "step: snoop\ndebug: true\nenv:\n  HALF1: {half1}\n  HALF2: {half2}\n  CACHE: {}\n  FILE: {}\nshell:\n\
         \x20 - id -un\n\
         \x20 - cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | {grep} || true\n\
         \x20 - cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | {grep} || true\n\
         \x20 - env | {grep} || true\n\
         \x20 - find \"$CACHE\" -name .netrc 2>/dev/null | wc -l\n\
         \x20 - grep -rl -F -f <(printf '%s%s\\n' \"$HALF1\" \"$HALF2\") \"$CACHE\" 2>/dev/null | wc -l\n\
         \x20 - cat \"$FILE\" 2>/dev/null | {grep} || true\n\
         \x20 - if cat /proc/$PPID/environ > /dev/null 2>&1; then echo slave-environ-readable; else echo slave-environ-unreadable; fi\n",
        cache.display(),
        file.display()
    )
}

/// What the snooping step must print: the build user, then nothing found anywhere.
fn snooped_nothing() -> Vec<String> {
    let mut want = vec![build_user()];
    want.extend(["0", "0", "0", "0", "0", "0"].map(String::from));
    want.push("slave-environ-unreadable".into());
    want
}

/// The slave's /proc/<pid>/environ as the test (root, or the slave's own user) can read it.
fn assert_environ_clean(pid: u32, password: &str) {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => {
            let env = String::from_utf8_lossy(&env);
            assert!(!env.contains(password), "the password is in /proc/{pid}/environ");
            assert!(!env.contains("GIT_CREDENTIALS="), "GIT_CREDENTIALS is in /proc/{pid}/environ");
            assert!(env.contains("SLAVE_CREDENTIALS_FD="), "the slave did not restart without its credentials: {env}");
        }
        // Not root, and the slave is not dumpable: its environ is root's.
        Err(e) => assert!(!is_root() && e.kind() == std::io::ErrorKind::PermissionDenied, "{e}"),
    }
}

#[test]
fn a_step_cannot_reach_the_git_credentials() {
    let (pw, half1, half2) = password();
    let redis = Redis::start();
    let file = redis.root.join("git-credentials");
    std::fs::write(&file, format!("https://file-user:{pw}@git.example.invalid/acme\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hook = Hook::start(&redis, &[]);
    // A cache where an older version copied GIT_NETRC.
    let cache = redis.root.join("cache");
    std::fs::create_dir_all(cache.join(".git-home")).unwrap();
    std::fs::write(cache.join(".git-home/.netrc"), format!("machine git.example.invalid login ci password {pw}\n")).unwrap();
    let inline = format!("https://ci-user:{pw}@git.example.invalid https://ci-user:{pw}@127.0.0.1:1");
    let env =
        [("GIT_CREDENTIALS", inline.as_str()), ("GIT_CREDENTIALS_FILE", file.to_str().unwrap()), ("SLAVE_CACHE", cache.to_str().unwrap())];
    let slave = Slave::start(&redis, &env);
    hook.wait_slaves("slave", 1);
    assert!(!cache.join(".git-home").exists(), "the old netrc copy is still there");
    assert_eq!(events(&slave.log(), "slave.cleanup").len(), 1, "{}", slave.log());
    let yml = snooping_yml(&half1, &half2, &slave.cache, &file);
    let (git, sha) = repo_with(&redis.root, "acme/snoop", &yml);
    let id = hook.push_ok(&git, &sha);
    let build = wait_build(&redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let mut want = snooped_nothing();
    if !is_root() {
        // Tests run as a normal user: the slave and its steps are that user, the owner of the
        // credentials file (README: give credentials to slaves running as root).
        want[6] = "1".into();
    }
    assert_eq!(build.printed(), want, "{:#?}", build.log);
    assert_environ_clean(slave.pid(), &pw);
    assert_eq!(files_holding(&slave.cache, &pw), Vec::<String>::new(), "files in the cache hold the password");
    assert!(!slave.log().contains(&pw), "the slave's log holds the password");
    let line = events(&slave.log(), "slave.isolation").first().map(|l| l.to_string()).unwrap_or_default();
    assert_eq!(kv(&line, "build_user"), Some(build_user()), "{line}");
    assert_eq!(kv(&line, "credentials_for").as_deref(), Some("git.example.invalid,127.0.0.1:1,git.example.invalid/acme"), "{line}");
}

#[test]
fn git_credentials_go_to_no_other_host() {
    let (pw, ..) = password();
    let b = Backend::start(0, &[], &[]);
    let other = Unauthorized::start();
    let slave = Slave::start(&b.redis, &[("GIT_CREDENTIALS", &format!("https://ci-user:{pw}@git.example.invalid"))]);
    b.hook.wait_slaves("slave", 1);
    for url in [format!("http://127.0.0.1:{}/acme/x.git", other.port), format!("http://localhost:{}/acme/x.git", other.port)] {
        let body = github_push("acme/x", &url, "main", &"a".repeat(40), "x", "main").to_string();
        let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
        assert_eq!(r.code, 202, "{r}");
        let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
        assert_eq!(build.state, "failed", "{:#?}", build.log);
        assert!(build.log[1].starts_with(&format!("* checkout failed: git clone {url} failed (exit code 128): ")), "{:#?}", build.log);
    }
    let (requests, sent) = other.seen();
    assert!(requests >= 2, "git asked the server {requests} times: nothing was tested");
    assert_eq!(sent, Vec::<String>::new(), "credentials went to a host they are not for");
    assert!(!slave.log().contains(&pw));
}

/// Runs the slave binary with `env` until it exits (it must, at startup); its code and stderr.
pub(crate) fn slave_refuses(env: &[(&str, &str)]) -> (i32, String) {
    let dir = fresh_dir(&test_name());
    let mut cmd = std::process::Command::new(bin("slave"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GIT_") || k.starts_with("SLAVE_") || k.starts_with("REDIS") {
            cmd.env_remove(k);
        }
    }
    let err = dir.join("stderr");
    cmd.envs(env.iter().copied())
        .env("SLAVE_CACHE", dir.join("cache"))
        .env("REDIS_URL", "redis://127.0.0.1:1/0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap();
    let status = wait_for("the slave to refuse to start", DEADLINE, || child.try_wait().unwrap().ok_or("running".to_string()));
    let text = std::fs::read_to_string(&err).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (status.code().unwrap_or(-1), text)
}

#[test]
fn unsafe_credential_settings_stop_the_slave_at_startup() {
    let (pw, ..) = password();
    for name in ["GIT_USERNAME", "GIT_PASSWORD", "GIT_NETRC"] {
        let (code, err) = slave_refuses(&[(name, &pw)]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.starts_with(&format!("slave: {name} is no longer read: ")), "{name}: {err}");
        assert!(err.contains("GIT_CREDENTIALS='https://<user>:<token>@<host>'"), "{err}");
        assert!(!err.contains(&pw), "{err}");
    }
    let (code, err) = slave_refuses(&[("GIT_CREDENTIALS", &format!("http://ci-user:{pw}@git.example.com"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("slave: GIT_CREDENTIALS, entry 1: http:// is refused"), "{err}");
    assert!(!err.contains(&pw), "{err}");
    let dir = fresh_dir(&test_name());
    let file = dir.join("creds");
    std::fs::write(&file, format!("https://ci-user:{pw}@git.example.com\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, err) = slave_refuses(&[("GIT_CREDENTIALS_FILE", file.to_str().unwrap())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mode 0644 lets other users read it; give it mode 0400 or 0600"), "{err}");
    assert!(!err.contains(&pw), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slave_that_is_not_root_runs_steps_as_itself_and_keeps_its_environ() {
    let (pw, half1, half2) = password();
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[]);
    // Root runs this slave as nobody: a slave that is not root.
    let nobody = is_root().then_some((65534, 65534));
    let home = redis.root.join("nobody-home");
    std::fs::create_dir_all(&home).unwrap();
    if let Some((uid, gid)) = nobody {
        std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    }
    let inline = format!("https://ci-user:{pw}@git.example.invalid");
    let slave = Slave::start_as(&redis, &[("GIT_CREDENTIALS", &inline), ("HOME", home.to_str().unwrap())], nobody);
    hook.wait_slaves("slave", 1);
    let yml = snooping_yml(&half1, &half2, &slave.cache, &redis.root.join("none"));
    let (git, sha) = repo_with(&redis.root, "acme/not-root", &yml);
    if nobody.is_some() {
        // git refuses a local repository of another user (safe.directory).
        run(std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&git.bare));
    }
    let id = hook.push_ok(&git, &sha);
    let build = wait_build(&redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let mut want = snooped_nothing();
    want[0] = if nobody.is_some() { "nobody".into() } else { build_user() };
    assert_eq!(build.printed(), want, "{:#?}", build.log);
    assert_environ_clean(slave.pid(), &pw);
    let log = slave.log();
    let line = events(&log, "slave.isolation").first().map(|l| l.to_string()).unwrap_or_default();
    assert_eq!(kv(&line, "switch").as_deref(), Some("false"), "{line}");
    assert_eq!(events(&log, "slave.credentials_shared").len(), 1, "no warning that steps share the slave's user:\n{log}");
}

/// A fresh self-signed certificate for 127.0.0.1 in `dir`: its key and certificate.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, cert) = (dir.join("tls.key"), dir.join("tls.crt"));
    run(std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null()));
    (key, cert)
}

#[test]
fn git_credentials_reach_their_own_https_host() {
    let (pw, ..) = password();
    let b = Backend::start(0, &[], &[]);
    let (key, cert) = self_signed(b.root());
    let mut tls = TlsServer::start(&cert, &key, b.root().join("tls.out"));
    let creds = format!("https://ci-user:{pw}@127.0.0.1:{}/acme https://other-user:{pw}x@127.0.0.1:{}/other", tls.port, tls.port);
    let cainfo = cert.to_string_lossy().into_owned();
    let slave = Slave::start(&b.redis, &[("GIT_CREDENTIALS", &creds), ("GIT_SSL_CAINFO", &cainfo)]);
    b.hook.wait_slaves("slave", 1);
    let url = format!("https://127.0.0.1:{}/acme/app.git", tls.port);
    let body = github_push("acme/app", &url, "main", &"b".repeat(40), "app", "main").to_string();
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    // git asks without credentials first; the 401 makes it ask its helper.
    let first = "GET /acme/app.git/info/refs?service=git-upload-pack HTTP/1.1\r\n";
    tls.wait_until("git's first request", |out| out.split(first).nth(1).is_some_and(|rest| rest.contains("\r\n\r\n")));
    tls.send("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"ci\"\r\nContent-Length: 0\r\n\r\n");
    let out =
        tls.wait_until("git's request with credentials", |out| out.split("Authorization: ").nth(1).is_some_and(|r| r.contains("\r\n\r\n")));
    let sent: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("Authorization: ")).map(str::trim_end).collect();
    let want = format!("Basic {}", base64(format!("ci-user:{pw}").as_bytes()));
    assert_eq!(sent, vec![want.as_str()], "the credential of the longest matching path, once");
    tls.send("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.log[1].starts_with(&format!("* checkout failed: git clone {url} failed (exit code 128): ")), "{:#?}", build.log);
    assert!(!build.log_text().contains(&pw) && !slave.log().contains(&pw), "{:#?}", build.log);
}
