//! Malformed and hostile input: 400 with a reason, 413 over HOOK_MAX_BODY, a huge declared
//! Content-Length, garbage bytes and 500 idle sockets — and the hook keeps serving; a setting
//! either binary cannot take stops it at start, exit code 2, saying why.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const TOKEN: &str = "bad-input-token";
const MAX: usize = 65536;

fn backend() -> Backend {
    Backend::start(1, &[("HOOK_TOKEN", TOKEN), ("HOOK_MAX_BODY", &MAX.to_string())], &[])
}

/// A buildable repository and a valid GitHub push body for it.
fn valid_push(b: &Backend, name: &str) -> (GitRepo, String, Value) {
    let git = b.repo(name);
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("valid");
    git.push();
    let body = github_push(&git.name, &git.file_url(), "main", &sha, "valid", "main");
    (git, sha, body)
}

#[test]
fn malformed_payloads_are_400_with_a_reason() {
    let b = backend();
    let (git, _sha, good) = valid_push(&b, "acme/malformed");
    let without = |path: &[&str]| {
        let mut v = good.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut cur = &mut v;
        for p in parents {
            cur = &mut cur[*p];
        }
        cur.as_object_mut().unwrap().remove(*last);
        v.to_string()
    };
    let with = |key: &str, val: Value| {
        let mut v = good.clone();
        v[key] = val;
        v.to_string()
    };
    let gl_no_project = {
        let mut v = gitlab_push(&git.name, &git.file_url(), "main", &git.head(), "m");
        v.as_object_mut().unwrap().remove("project");
        v.to_string()
    };
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    // (name, content type, body, words (`a|b`) one of which the error must contain, or "")
    let cases: Vec<(&str, &str, String, &str)> = vec![
        ("truncated JSON", json, r#"{"ref": "refs/heads/main", "after": "#.into(), ""),
        ("JSON array", json, "[1, 2, 3]".into(), ""),
        ("empty body", json, "".into(), ""),
        ("not JSON at all", json, "hello world".into(), ""),
        ("wrong content type", "text/plain", good.to_string(), ""),
        ("xml content type", "application/xml", "<push><ref>main</ref></push>".into(), ""),
        ("form without payload=", form, "foo=bar".into(), ""),
        ("form with broken JSON", form, format!("payload={}", urlencode("{\"ref\":")), ""),
        ("missing repository", json, without(&["repository"]), "repository"),
        ("missing ref", json, without(&["ref"]), "ref"),
        ("missing after", json, without(&["after"]), "after"),
        ("missing clone_url", json, without(&["repository", "clone_url"]), "clone"),
        ("after is not a sha", json, with("after", json!("--upload-pack=touch /tmp/pwned")), ""),
        ("ref is a number", json, with("ref", json!(42)), "ref"),
    ];
    let mut failures = vec![];
    for (name, ct, body, word) in &cases {
        let r = b.hook.send_github("/", "push", body.as_bytes(), &[("Content-Type", ct)]);
        check_400(&mut failures, name, &r, word);
    }
    let r =
        b.hook.post("/", &[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", TOKEN), ("Content-Type", json)], gl_no_project.as_bytes());
    check_400(&mut failures, "gitlab without project", &r, "project|repository");
    assert!(failures.is_empty(), "malformed payloads:\n{}", failures.join("\n"));
    assert_eq!(b.redis.keys("ci:build:*"), Vec::<String>::new(), "a malformed payload created a build");
    assert_eq!(b.hook.get("/ping").code, 200);
}

fn check_400(failures: &mut Vec<String>, name: &str, r: &Response, word: &str) {
    if r.code != 400 {
        failures.push(format!("{name}: expected 400, got {r}"));
        return;
    }
    let err = serde_json::from_slice::<Value>(&r.body).ok().and_then(|j| j["error"].as_str().map(String::from));
    match err {
        None => failures.push(format!("{name}: 400 without a JSON error: {r}")),
        Some(e) if e.trim().is_empty() => failures.push(format!("{name}: empty error")),
        // `word` lists alternatives (`a|b`), any of which the reason must name.
        Some(e) if !word.is_empty() && !word.split('|').any(|w| e.to_lowercase().contains(w)) => {
            failures.push(format!("{name}: error {e:?} does not name {word:?}"))
        }
        _ => {}
    }
}

#[test]
fn body_over_the_limit_is_413_and_under_it_is_accepted() {
    let b = backend();
    let (_git, sha, good) = valid_push(&b, "acme/sizes");
    let padded = |total: usize| {
        let mut v = good.clone();
        v["padding"] = json!("");
        let base = v.to_string().len();
        v["padding"] = json!("p".repeat(total - base));
        let s = v.to_string();
        assert_eq!(s.len(), total);
        s
    };
    let big = padded(MAX + 1000);
    let r = b.hook.send_github("/", "push", big.as_bytes(), &[]);
    assert_eq!(r.code, 413, "{} bytes with HOOK_MAX_BODY={MAX}: {r}", big.len());
    assert!(r.json()["error"].as_str().map(|e| !e.is_empty()).unwrap_or(false), "413 without error: {r}");

    let fits = padded(MAX);
    let r = b.hook.send_github("/", "push", fits.as_bytes(), &[]);
    assert_eq!(r.code, 202, "exactly HOOK_MAX_BODY bytes: {r}");
    assert_eq!(r.json()["sha"], json!(sha));
    assert_eq!(b.hook.get("/ping").code, 200);
}

fn read_some(s: &mut TcpStream, deadline: Duration) -> String {
    s.set_read_timeout(Some(deadline)).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn huge_declared_content_length_does_not_take_the_hook_down() {
    let mut b = backend();
    let (git, sha, _) = valid_push(&b, "acme/huge");
    let mut raw = TcpStream::connect(b.hook.addr).unwrap();
    raw.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
          Content-Length: 1000000000000\r\n\r\n{\"ref\": \"refs/heads/main\"",
    )
    .unwrap();
    // A second one that hangs up at once.
    {
        let mut s = TcpStream::connect(b.hook.addr).unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\nabc").unwrap();
    }
    // While the first is still open: the hook serves.
    let r = b.hook.get("/ping");
    assert_eq!(r.code, 200, "/ping after a 10^12 Content-Length: {r}");
    let id = b.hook.push_ok(&git, &sha);
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
    assert!(b.hook.proc.alive(), "the hook died");
    let hwm = proc_kb(b.hook.pid(), "VmHWM").unwrap_or(0);
    assert!(hwm < 200 * 1024, "hook peak RSS {hwm} kB after a 10^12 Content-Length");
    // And the huge request itself is refused as too large.
    let answer = read_some(&mut raw, Duration::from_secs(10));
    assert!(answer.starts_with("HTTP/1.1 413"), "answer to Content-Length 10^12: {answer:?}");
    drop(raw);
    assert_eq!(b.hook.get("/ping").code, 200);
}

#[test]
fn garbage_bytes_get_their_status_and_a_json_reason_then_the_hook_still_answers() {
    let b = backend();
    // (bytes, status, the JSON error)
    let garbage: &[(&[u8], u16, &str)] = &[
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-tls-hello",
            400,
            "a TLS handshake on the hook's plain-HTTP port: use http://, or put a TLS proxy in front",
        ),
        (b"\x00\x00\x00\x00\xff\xfe\xfd\r\n\r\n", 400, "the request head holds the non-ASCII byte 0xff: percent-encode the path"),
        (b"GET /ping HTTP/9.9\r\n\r\n", 505, "HTTP/9.9 is not supported: use HTTP/1.1"),
        (b"GET /ping\r\n\r\n", 400, "malformed request line \"GET /ping\": expected `METHOD /path HTTP/1.1`"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabc", 400, "Content-Length \"-5\" is not a number of bytes"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc", 400, "Content-Length \"abc\" is not a number of bytes"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
            400,
            "both Transfer-Encoding and Content-Length: send one of them (RFC 9112 section 6.3)",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzzzz\r\nabc\r\n",
            400,
            "malformed chunked body: chunk size \"zzzz\" is not a hex number",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
            400,
            "a header line starts with white space (obsolete line folding): send each field on one line",
        ),
        (
            b"POST /../../etc/passwd HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            403,
            "missing signature: send X-Hub-Signature-256, X-Hub-Signature, X-Gitea-Signature, X-Gitlab-Token or Authorization: Bearer",
        ),
    ];
    let mut failures = vec![];
    for (g, code, error) in garbage {
        let mut s = TcpStream::connect(b.hook.addr).unwrap();
        let _ = s.write_all(g);
        let mut answer = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        let got_code = text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default();
        let want_body = json!({ "error": error }).to_string();
        if got_code != Some(*code) || body != want_body {
            failures.push(format!("{:?}: expected {code} {want_body}, got {text:?}", String::from_utf8_lossy(g)));
        }
        let r = b.hook.get("/ping");
        assert_eq!(r.code, 200, "/ping after {:?}: {r}", String::from_utf8_lossy(g));
    }
    assert!(failures.is_empty(), "garbage:\n{}", failures.join("\n"));
    let r = b.hook.get("/no/such/route");
    assert_eq!(r.code, 404, "{r}");
    assert_eq!(r.json(), json!({"error": "no such route: GET /no/such/route"}));
}

#[test]
fn five_hundred_idle_connections_do_not_stop_a_signed_push() {
    let b = backend();
    let (git, sha, _) = valid_push(&b, "acme/idle");
    let idle: Vec<TcpStream> =
        (0..500).map(|i| TcpStream::connect(b.hook.addr).unwrap_or_else(|e| panic!("connection {i}: {e}"))).collect();
    // Half of them also send an incomplete request line (slowloris).
    for s in idle.iter().step_by(2) {
        let mut w: &TcpStream = s;
        let _ = w.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n");
    }
    let start = std::time::Instant::now();
    let id = b.hook.push_ok(&git, &sha);
    assert!(start.elapsed() < Duration::from_secs(10), "the push took {:?} with 500 idle sockets", start.elapsed());
    assert_eq!(b.hook.get("/ping").code, 200);
    assert_eq!(wait_build(&b.redis, &id, LONG).state, "passed");
    drop(idle);
    assert_eq!(b.hook.get("/ping").code, 200);
}

/// tiny_http has no read timeout of its own: the hook sets HOOK_IDLE_TIMEOUT on
/// its listening socket, which every accepted socket inherits. A silent client,
/// idle or stuck mid-request, is cut off; a signed push is served meanwhile.
#[test]
fn silent_connections_are_closed_after_hook_idle_timeout() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN), ("HOOK_IDLE_TIMEOUT", "1")], &[]);
    let idle = TcpStream::connect(b.hook.addr).unwrap();
    let stuck = TcpStream::connect(b.hook.addr).unwrap();
    (&stuck).write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Len").unwrap();
    let (git, sha, _) = valid_push(&b, "acme/silent");
    b.hook.push_ok(&git, &sha);
    for (what, mut sock) in [("idle", idle), ("stuck mid-header", stuck)] {
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut seen = Vec::new();
        wait_for(&format!("the {what} connection closed by the hook"), DEADLINE, || {
            let mut buf = [0u8; 512];
            match sock.read(&mut buf) {
                Ok(0) => Ok(()),
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    Err(format!("read {n} bytes"))
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Err("still open".into()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        });
        let text = String::from_utf8_lossy(&seen);
        if what == "idle" {
            assert_eq!(text, "", "an idle connection is closed without an answer");
        } else {
            let body = json!({"error": "nothing received for HOOK_IDLE_TIMEOUT (1 s) in the middle of a request"}).to_string();
            assert!(text.starts_with("HTTP/1.1 408 ") && text.trim_end().ends_with(&body), "{what}: {text:?}");
        }
    }
    assert_eq!(b.hook.get("/ping").code, 200);
}

/// A setting a binary cannot take stops it before it serves, the same way for the hook and the
/// slave: exit code 2, and the variable, its value and what was expected on stderr. (The hook
/// exited 1 with the reason in its log only, where a bad schedule or routing rule exited 2.)
#[test]
fn a_bad_setting_stops_either_binary_with_exit_code_2_saying_why() {
    let redis = Redis::start();
    let cases = [
        ("hook", "HOOK_MAX_BODY", "lots", "HOOK_MAX_BODY=\"lots\""),
        ("hook", "HOOK_FORK_PULLS", "maybe", "HOOK_FORK_PULLS=\"maybe\""),
        ("slave", "SLAVE_EXECUTORS", "many", "SLAVE_EXECUTORS=\"many\""),
    ];
    for (k, (binary, key, value, says)) in cases.into_iter().enumerate() {
        let mut cmd = scrubbed(&bin(binary));
        cmd.env("REDIS_URL", redis.url()).env("HOOK_ADDR", "127.0.0.1:0").env("SLAVE_CACHE", redis.root.join("cache"));
        cmd.env(key, value).current_dir(&redis.root);
        let (out, err) = (redis.root.join(format!("setting-{k}.out")), redis.root.join(format!("setting-{k}.err")));
        let mut proc = Proc::spawn(binary, cmd, out, err.clone());
        let status = proc.wait_exit(LONG);
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert_eq!(status.code(), Some(2), "{key}={value}: {stderr}");
        assert!(stderr.contains(says) && stderr.contains("expected"), "{key}={value}: {stderr}");
        assert!(events(&proc.stdout(), "hook.listening").is_empty() && events(&proc.stdout(), "slave.ready").is_empty());
    }
}
