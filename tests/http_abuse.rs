//! HTTP abuse over raw sockets against the real hook: lying Content-Lengths, bodies over
//! HOOK_MAX_BODY, huge header lines and thousands of headers, slow clients, a thousand idle
//! connections, pipelining, invalid UTF-8, methods other than GET/POST. After every abuse the
//! hook process is still there and a signed push of a new commit is answered 202.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "http-abuse-token";

/// Redis, a hook (HOOK_MAX_BODY = `max_body` when given) and one slave; a buildable repository.
fn backend(max_body: Option<usize>) -> (Backend, GitRepo) {
    let max = max_body.map(|m| m.to_string());
    let mut hook_env = vec![("HOOK_TOKEN", TOKEN)];
    if let Some(m) = &max {
        hook_env.push(("HOOK_MAX_BODY", m.as_str()));
    }
    let b = Backend::start(1, &hook_env, &[]);
    let git = b.repo("abuse/app");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    git.commit("first");
    git.push();
    (b, git)
}

/// The hook process exists, answers /ping, and a signed push of a new commit gets 202.
fn assert_serves(b: &Backend, git: &GitRepo, after: &str) {
    assert!(!process_gone(b.hook.pid()), "the hook process {} is gone after {after}", b.hook.pid());
    let started = Instant::now();
    let r = try_http(b.hook.addr, "GET", "/ping", &[], b"").unwrap_or_else(|e| panic!("/ping after {after}: {e}"));
    assert_eq!((r.code, r.text()), (200, "pong\n".to_string()), "/ping after {after}");
    assert!(started.elapsed() < Duration::from_secs(10), "GET /ping after {after} took {:?}", started.elapsed());
    let sha = git.commit(&format!("after {after}"));
    git.push();
    let started = Instant::now();
    let r = b.hook.push(git, &sha);
    assert_eq!(r.code, 202, "signed push after {after}: {r}");
    assert_eq!(r.json()["sha"], json!(sha), "signed push after {after}: {r}");
    // "Within its usual time": milliseconds; 10 s is a generous bound for a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(10), "signed push after {after} took {:?}", started.elapsed());
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Reads until EOF, an error, or `deadline` (read timeout per read call, bounded total).
fn read_all(s: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while start.elapsed() < deadline {
        let left = deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(10));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// Reads until the end of the first response's headers (or EOF / deadline).
fn read_head(s: &mut TcpStream, deadline: Duration) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < deadline && !got.windows(4).any(|w| w == b"\r\n\r\n") {
        s.set_read_timeout(Some(deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(10)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The status code of a raw answer, if there is one.
fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.")?.split_whitespace().nth(1)?.parse().ok()
}

fn signed_push_head(git: &GitRepo, body_len: &str, sig: &str) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: {}\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: {sig}\r\nContent-Length: {body_len}\r\n\r\n",
        git.name,
        delivery_id()
    )
}

#[test]
fn a_declared_content_length_of_10_12_is_refused_and_the_hook_keeps_serving() {
    let (b, git) = backend(None);
    let head = "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\n\
                Content-Length: 1000000000000\r\n\r\n{\"ref\": \"refs/heads/main\"";
    // One that hangs up at once...
    {
        let mut s = connect(b.hook.addr);
        s.write_all(head.as_bytes()).unwrap();
    }
    assert_serves(&b, &git, "a 10^12 Content-Length, then a hang-up");
    // ...and one that keeps its socket open.
    let mut open = connect(b.hook.addr);
    open.write_all(head.as_bytes()).unwrap();
    assert_serves(&b, &git, "a 10^12 Content-Length on a socket kept open");
    let answer = read_all(&mut open, Duration::from_secs(20));
    assert_eq!(status_of(&answer), Some(413), "answer to Content-Length 10^12: {:?}", String::from_utf8_lossy(&answer));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("{\"error\":") && text.contains("HOOK_MAX_BODY"), "413 without a JSON reason naming HOOK_MAX_BODY: {text:?}");
    drop(open);
    let hwm = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    assert!(hwm < 200 * 1024, "hook peak RSS {hwm} kB after two 10^12 Content-Lengths");
    assert_serves(&b, &git, "the open socket was closed");
}

#[test]
fn bodies_over_hook_max_body_are_413_with_a_reason_declared_or_chunked() {
    const MAX: usize = 64 * 1024;
    let (b, git) = backend(Some(MAX));
    let sha = git.head();
    let mut v = github_push(&git.name, &git.file_url(), "main", &sha, "big", "main");
    v["padding"] = json!("p".repeat(3 * MAX));
    let body = v.to_string();
    let sig = sign_sha256(body.as_bytes(), TOKEN);

    // Declared length over the limit: refused from the headers, a reason given.
    let r = b.hook.post(
        "/",
        &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig), ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.code, 413, "{} bytes with HOOK_MAX_BODY={MAX}: {r}", body.len());
    let err = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("HOOK_MAX_BODY") && err.contains(&MAX.to_string()), "413 reason: {err:?}");
    assert_serves(&b, &git, "a declared body over HOOK_MAX_BODY");

    // No declared length (chunked): read through the limit, then refused.
    let builds_before = b.redis.keys("ci:build:*").len();
    let mut s = connect(b.hook.addr);
    let head = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\nX-Hub-Signature-256: {sig}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let mut raw = head.into_bytes();
    for chunk in body.as_bytes().chunks(1000) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let _ = s.write_all(&raw); // the hook may answer and close before reading it all
    let answer = read_all(&mut s, Duration::from_secs(20));
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), Some(413), "chunked body of {} bytes: {text:?}", body.len());
    assert!(text.contains("HOOK_MAX_BODY"), "chunked 413 without a reason: {text:?}");
    assert_eq!(b.redis.keys("ci:build:*").len(), builds_before, "a chunked body over the limit created a build");
    assert_serves(&b, &git, "a chunked body over HOOK_MAX_BODY");
}

#[test]
fn huge_header_lines_and_two_thousand_headers_do_not_crash_the_hook() {
    let (b, git) = backend(None);
    let mut seen = Vec::new();
    for (what, size) in [("an 8 KiB header line", 8 * 1024 + 100), ("a 64 KiB header line", 64 * 1024), ("a 1 MiB header line", 1 << 20)] {
        let mut s = connect(b.hook.addr);
        let req = format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n", "a".repeat(size));
        let _ = s.write_all(req.as_bytes());
        let answer = read_all(&mut s, Duration::from_secs(20));
        let code = status_of(&answer);
        assert!(matches!(code, None | Some(200 | 400 | 413 | 431)), "{what}: unexpected answer {:?}", String::from_utf8_lossy(&answer));
        seen.push(format!("{what}: {code:?}"));
        drop(s);
        assert_serves(&b, &git, what);
    }
    let mut headers = String::new();
    for i in 0..2000 {
        headers.push_str(&format!("X-Junk-{i}: value-{i}\r\n"));
    }
    let mut s = connect(b.hook.addr);
    let _ = s.write_all(format!("GET /ping HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes());
    let answer = read_all(&mut s, Duration::from_secs(20));
    let code = status_of(&answer);
    assert!(matches!(code, None | Some(200 | 400 | 431)), "2,000 headers on /ping: {:?}", String::from_utf8_lossy(&answer));
    seen.push(format!("2,000 headers on /ping: {code:?}"));
    assert_serves(&b, &git, "2,000 headers on /ping");

    // A signed push carrying 2,000 extra headers is still a valid request.
    let sha = git.commit("with 2,000 headers");
    git.push();
    let body = github_push(&git.name, &git.file_url(), "main", &sha, "with 2,000 headers", "main").to_string();
    let sig = sign_sha256(body.as_bytes(), TOKEN);
    let mut s = connect(b.hook.addr);
    let head = signed_push_head(&git, &body.len().to_string(), &sig);
    let (first, rest) = head.split_once("\r\n").unwrap();
    let _ = s.write_all(format!("{first}\r\n{headers}{rest}{body}").as_bytes());
    let answer = read_head(&mut s, Duration::from_secs(20));
    let code = status_of(answer.as_bytes());
    assert!(matches!(code, Some(202 | 400 | 431)), "signed push with 2,000 headers: {answer:?}");
    seen.push(format!("signed push with 2,000 headers: {code:?}"));
    drop(s);
    assert_serves(&b, &git, "a signed push with 2,000 headers");
    eprintln!("header abuse answers: {}", seen.join("; "));
}

#[test]
fn five_slow_clients_do_not_delay_signed_pushes() {
    let (b, git) = backend(None);
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Vec<AtomicUsize>> = Arc::new((0..5).map(|_| AtomicUsize::new(0)).collect());
    let addr = b.hook.addr;
    let clients: Vec<_> = (0..5)
        .map(|i| {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                let mut s = connect(addr);
                // A request whose headers and body trickle in, a byte every 200 ms; bounded.
                let req = format!(
                    "POST / HTTP/1.1\r\nHost: slow-{i}\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{}",
                    "x".repeat(40)
                );
                let start = Instant::now();
                for byte in req.bytes().take(60) {
                    if stop.load(Ordering::SeqCst) {
                        return format!("stopped after {:?}", start.elapsed());
                    }
                    if let Err(e) = s.write_all(&[byte]) {
                        return format!("write failed after {:?}: {e}", start.elapsed());
                    }
                    sent[i].fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(200)); // the abuse itself: a slow client
                }
                format!("sent its 60 bytes in {:?}", start.elapsed())
            })
        })
        .collect();
    // While they trickle (until each has sent 15 bytes, ~3 s): signed pushes are answered as usual.
    let mut pushes = 0;
    let start = Instant::now();
    while sent.iter().any(|n| n.load(Ordering::SeqCst) < 15) && pushes < 300 && start.elapsed() < Duration::from_secs(60) {
        assert_serves(&b, &git, &format!("slow clients, push {pushes}"));
        pushes += 1;
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::SeqCst);
    let ends: Vec<String> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let sent: Vec<usize> = sent.iter().map(|n| n.load(Ordering::SeqCst)).collect();
    eprintln!("{pushes} signed pushes answered 202 in {elapsed:?} while 5 slow clients sent {sent:?} bytes: {ends:?}");
    assert!(sent.iter().all(|n| *n >= 15), "slow clients sent {sent:?} bytes: {ends:?}");
    assert!(ends.iter().all(|e| e.starts_with("stopped")), "the slow clients did not trickle all along the pushes ({elapsed:?}): {ends:?}");
    assert!(pushes >= 3, "only {pushes} signed pushes went through while slow clients trickled");
    assert_serves(&b, &git, "the slow clients stopped");
}

/// The soft `RLIMIT_NOFILE` of this process (the hook inherits it).
fn open_files_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[test]
fn a_thousand_idle_connections_do_not_stop_signed_pushes() {
    let (b, git) = backend(None);
    let limit = open_files_limit();
    let n = 1000.min(limit.saturating_sub(300));
    eprintln!("open-files limit {limit}: holding {n} idle connections");
    assert!(n >= 200, "the open-files limit {limit} is too low for this test");
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        idle.push(TcpStream::connect(b.hook.addr).unwrap_or_else(|e| panic!("idle connection {i} of {n}: {e}")));
    }
    // A third also send the start of a request and stop there.
    for s in idle.iter_mut().step_by(3) {
        let _ = s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n");
    }
    assert_serves(&b, &git, &format!("{n} idle connections"));
    // Every idle connection is still open (the hook neither crashed nor dropped them all).
    let mut probe = idle.pop().unwrap();
    probe.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    let open = matches!(probe.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
    assert!(open, "an idle connection was closed while {n} were held");
    drop(idle);
    drop(probe);
    assert_serves(&b, &git, &format!("{n} idle connections were closed"));
}

#[test]
fn two_pipelined_gets_on_one_connection_get_two_answers() {
    let (b, git) = backend(None);
    let mut s = connect(b.hook.addr);
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(20))).into_owned();
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "two pipelined GET /ping: {answer:?}");
    assert_eq!(answer.matches("pong").count(), 2, "two pipelined GET /ping: {answer:?}");
    assert_serves(&b, &git, "pipelined requests");
}

#[test]
fn invalid_utf8_in_path_and_body_is_refused_cleanly() {
    let (b, git) = backend(None);
    for path in [&b"/status/\xff\xfe/\xc3\x28"[..], b"/\xff+\xfe", b"/build/\x80\x81"] {
        for method in ["GET", "POST"] {
            let mut s = connect(b.hook.addr);
            let mut req = format!("{method} ").into_bytes();
            req.extend_from_slice(path);
            req.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(&req);
            let answer = read_all(&mut s, Duration::from_secs(20));
            let code = status_of(&answer);
            assert!(
                matches!(code, None | Some(400..=499)),
                "{method} {:?}: expected a 4xx or a closed connection, got {:?}",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&answer)
            );
            assert_serves(&b, &git, &format!("{method} with an invalid UTF-8 path"));
        }
    }
    // A correctly signed body that is not UTF-8: 400 with a JSON reason, no build.
    let mut body = br#"{"ref": "refs/heads/main", "after": ""#.to_vec();
    body.extend_from_slice(b"\xff\xfe\xc3\x28\"}");
    let r = b.hook.send_github("/", "push", &body, &[]);
    assert_eq!(r.code, 400, "signed non-UTF-8 body: {r}");
    assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "400 without a reason: {r}");
    let before = b.redis.keys("ci:build:*").len();
    let r = b.hook.send_github("/", "push", b"\xff\xff\xff\xff", &[]);
    assert_eq!(r.code, 400, "signed binary body: {r}");
    assert_eq!(b.redis.keys("ci:build:*").len(), before, "a non-UTF-8 body created a build");
    assert_serves(&b, &git, "invalid UTF-8 bodies");
}

#[test]
fn put_delete_patch_are_405_with_a_json_error() {
    let (b, git) = backend(None);
    for method in ["PUT", "DELETE", "PATCH"] {
        for path in ["/", "/status/abuse/app", "/ping", "/build/abuse/app"] {
            let r = http(b.hook.addr, method, path, &[("X-GitHub-Event", "push")], b"{}");
            assert_eq!(r.code, 405, "{method} {path}: {r}");
            let err = r.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(err.contains(method), "{method} {path}: the error should name the method: {err:?}");
        }
        assert_serves(&b, &git, &format!("{method} requests"));
    }
}

#[test]
fn a_request_arriving_with_a_burst_of_slow_clients_is_not_queued_behind_them() {
    let (b, git) = backend(None);
    // Twenty rounds: five connections that send half a request line and hold on, then at once a
    // GET /ping on a sixth. The ping is answered in milliseconds unless it waits for a slow
    // client to go away (here: the test closes them after 5 s).
    for round in 0..20 {
        let mut slow: Vec<TcpStream> = (0..5).map(|_| connect(b.hook.addr)).collect();
        for s in slow.iter_mut() {
            let _ = s.write_all(b"POST / HTTP/1.1\r\nHost: sl");
        }
        let mut ping = connect(b.hook.addr);
        ping.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let started = Instant::now();
        let answer = read_head(&mut ping, Duration::from_secs(5));
        let waited = started.elapsed();
        drop(slow);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: GET /ping sent just after 5 slow connections was not answered within {waited:?} (answer {answer:?}); \
             it is answered once they close: {:?}",
            String::from_utf8_lossy(&read_all(&mut ping, Duration::from_secs(10)))
        );
    }
    assert_serves(&b, &git, "bursts of slow clients");
}
