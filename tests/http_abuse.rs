//! HTTP abuse over raw sockets against the real hook: lying Content-Lengths, bodies over
//! HOOK_MAX_BODY, heads over 64 KiB and an endless header line (peak memory measured), slow
//! clients (peak memory measured) and clients trickling past HOOK_REQUEST_TIMEOUT, a thousand
//! idle connections, a full request queue, pipelining and keep-alive, `Expect: 100-continue`,
//! chunked bodies, invalid UTF-8, methods other than GET/POST. After every abuse the hook
//! process is still there and a signed push of a new commit is answered 202.

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
fn huge_header_lines_are_431_and_two_thousand_headers_are_served() {
    let (b, git) = backend(None);
    for (what, size, want) in
        [("an 8 KiB header line", 8 * 1024 + 100, 200), ("a 64 KiB header line", 64 * 1024, 431), ("a 1 MiB header line", 1 << 20, 431)]
    {
        let mut s = connect(b.hook.addr);
        let req = format!("GET /ping HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\nConnection: close\r\n\r\n", "a".repeat(size));
        let _ = s.write_all(req.as_bytes());
        let answer = read_all(&mut s, Duration::from_secs(20));
        assert_eq!(status_of(&answer), Some(want), "{what}: {:?}", String::from_utf8_lossy(&answer[..answer.len().min(300)]));
        if want == 431 {
            assert!(parse_answer(&answer).json()["error"].as_str().is_some_and(|e| e.contains("65536")), "{what}: 431 without its reason");
        }
        drop(s);
        assert_serves(&b, &git, what);
    }
    // 2,000 headers are about 50 KB: under the 64 KiB limit.
    let mut headers = String::new();
    for i in 0..2000 {
        headers.push_str(&format!("X-Junk-{i}: value-{i}\r\n"));
    }
    assert!(headers.len() < 60 * 1024, "{} bytes of headers", headers.len());
    let mut s = connect(b.hook.addr);
    let _ = s.write_all(format!("GET /ping HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes());
    let answer = read_all(&mut s, Duration::from_secs(20));
    assert_eq!(status_of(&answer), Some(200), "2,000 headers on /ping: {:?}", String::from_utf8_lossy(&answer));
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
    assert_eq!(status_of(answer.as_bytes()), Some(202), "signed push with 2,000 headers: {answer:?}");
    drop(s);
    assert_serves(&b, &git, "a signed push with 2,000 headers");
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
            let r = parse_answer(&answer);
            let err = r.json()["error"].as_str().unwrap_or_default().to_string();
            let byte = format!("non-ASCII byte 0x{:02x}", path.iter().find(|b| !b.is_ascii()).unwrap());
            assert!(
                r.code == 400 && err.contains(&byte),
                "{method} {:?}: expected 400 naming the {byte}, got {r}",
                String::from_utf8_lossy(path)
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
fn put_delete_patch_are_405_with_a_json_error_and_allow() {
    let (b, git) = backend(None);
    let paths = [
        ("/", "GET, HEAD, POST"),
        ("/login", "GET, HEAD, POST"),
        ("/hints+x", "POST"),
        ("/badge/abuse/app.svg", "GET, HEAD"),
        ("/builds/1", "GET, HEAD"),
        ("/status/abuse/app", "GET, HEAD"),
        ("/ping", "GET, HEAD"),
        ("/build/abuse/app", "POST"),
        ("/metrics", "GET, HEAD"),
    ];
    for method in ["PUT", "DELETE", "PATCH", "POST"] {
        for (path, allow) in paths.iter().filter(|(_, allow)| !allow.contains(method)) {
            let r = http(b.hook.addr, method, path, &[("X-GitHub-Event", "push")], b"{}");
            assert_eq!(r.code, 405, "{method} {path}: {r}");
            let err = r.json()["error"].as_str().unwrap_or_default().to_string();
            assert!(err.contains(method), "{method} {path}: the error should name the method: {err:?}");
            assert_eq!(r.header("Allow"), Some(*allow), "{method} {path}: Allow");
        }
        assert_serves(&b, &git, &format!("{method} requests"));
    }
}

/// The raw request `GET /ping` whose head (request line, headers, blank line) is exactly `size`
/// bytes long.
fn ping_head_of(size: usize) -> Vec<u8> {
    let frame = "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n".len();
    let head = format!("GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n", "p".repeat(size - frame));
    assert_eq!(head.len(), size);
    head.into_bytes()
}

#[test]
fn a_request_head_of_64_kib_is_served_and_one_byte_more_is_431_with_a_reason() {
    let (b, git) = backend(None);
    let mut s = connect(b.hook.addr);
    s.write_all(&ping_head_of(65536)).unwrap();
    let answer = String::from_utf8_lossy(&read_all(&mut s, Duration::from_secs(20))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("pong\n"), "a head of exactly 65,536 bytes: {answer:?}");

    let mut s = connect(b.hook.addr);
    s.write_all(&ping_head_of(65537)).unwrap();
    let answer = read_all(&mut s, Duration::from_secs(20));
    let r = parse_answer(&answer);
    assert_eq!(r.code, 431, "a head of 65,537 bytes: {r}");
    assert_eq!(r.json(), json!({"error": "request line and headers exceed 65536 bytes: send a shorter request head"}), "431 reason");
    s.set_nonblocking(true).unwrap();
    let closed = match s.read(&mut [0u8; 1]) {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    assert!(closed, "the hook keeps the connection open after a 431");
    assert_serves(&b, &git, "a head one byte over 64 KiB");
}

/// The first answer in raw bytes, parsed.
fn parse_answer(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let code = status_of(raw).unwrap_or_else(|| panic!("no HTTP answer in {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let headers =
        head.lines().skip(1).filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    Response { code, headers, body: body.as_bytes().to_vec() }
}

#[test]
fn an_endless_header_line_is_431_and_the_hooks_peak_memory_stays_under_64_mib() {
    let (b, git) = backend(None);
    let before = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    let mut s = connect(b.hook.addr);
    let mut writer = s.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // 200 MB of one header line, as fast as the hook takes it, until it hangs up.
    let sender = std::thread::spawn(move || {
        let mut sent = 0usize;
        let chunk = vec![b'a'; 64 * 1024];
        if writer.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Endless: ").is_err() {
            return (sent, "the head's start could not be written".to_string());
        }
        while sent < 200_000_000 {
            if let Err(e) = writer.write_all(&chunk) {
                return (sent, format!("write failed: {e}"));
            }
            sent += chunk.len();
        }
        (sent, "all sent".to_string())
    });
    let answer = read_all(&mut s, Duration::from_secs(60));
    let (sent, end) = sender.join().unwrap();
    let r = parse_answer(&answer);
    assert_eq!(r.code, 431, "an endless header line: {r}");
    assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("65536")), "431 reason: {r}");
    drop(s);
    let peak = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    eprintln!("endless header line: {sent} bytes sent ({end}); hook VmHWM {before} kB before, {peak} kB after");
    assert!(peak < 64 * 1024, "hook peak RSS {peak} kB (VmHWM) after an endless header line: over 64 MiB");
    assert_serves(&b, &git, "an endless header line");
}

#[test]
fn many_concurrent_slow_clients_keep_the_hooks_peak_memory_under_64_mib() {
    let (b, git) = backend(None);
    let n = 600.min(open_files_limit().saturating_sub(300));
    assert!(n >= 200, "the open-files limit is too low for this test");
    let mut clients: Vec<TcpStream> = (0..n).map(|_| connect(b.hook.addr)).collect();
    // Every tenth holds a 60 KiB head it never finishes; all trickle one more byte per round.
    for (i, s) in clients.iter_mut().enumerate() {
        let mut start = b"POST / HTTP/1.1\r\nHost: slow\r\nX-Slow: ".to_vec();
        if i % 10 == 0 {
            start.extend_from_slice(&[b's'; 60 * 1024]);
        }
        s.write_all(&start).unwrap();
    }
    for round in 0..5 {
        for s in clients.iter_mut() {
            s.write_all(b"s").unwrap_or_else(|e| panic!("round {round}: a slow client was cut off: {e}"));
        }
        assert_serves(&b, &git, &format!("{n} slow clients, round {round}"));
        std::thread::sleep(Duration::from_millis(300)); // the abuse itself: slow clients
    }
    let peak = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    let threads = std::fs::read_dir(format!("/proc/{}/task", b.hook.pid())).map(|d| d.count()).unwrap_or(0);
    eprintln!("{n} slow clients ({} with 60 KiB heads): hook VmHWM {peak} kB, {threads} threads", n / 10);
    assert!(threads > n, "the hook runs {threads} threads for {n} connections: are they all open?");
    assert!(peak < 64 * 1024, "hook peak RSS {peak} kB (VmHWM) with {n} slow clients: over 64 MiB");
    drop(clients);
    assert_serves(&b, &git, "the slow clients left");
}

/// Reads from `s` until the hook closes it (EOF or reset), at most `limit`; sends one byte of
/// `trickle` every second meanwhile. Returns what was read and when the close came.
fn trickle_until_closed(s: &mut TcpStream, trickle: &[u8], limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut bytes = trickle.iter();
    while start.elapsed() < limit {
        if let Some(b) = bytes.next() {
            if s.write_all(&[*b]).is_err() {
                return (got, Some(start.elapsed()));
            }
        }
        // One byte a second: the abuse itself; the read timeout paces it.
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
    (got, None)
}

#[test]
fn a_client_trickling_a_byte_a_second_is_cut_off_at_hook_request_timeout() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN), ("HOOK_REQUEST_TIMEOUT", "3"), ("HOOK_IDLE_TIMEOUT", "10")], &[]);
    let git = b.repo("abuse/app");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    git.commit("first");
    git.push();
    let head = "POST / HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n";
    // In the head, then in the body (the head sent at once).
    for (what, prefix, trickle) in [("head", "", head.to_string()), ("body", head, "x".repeat(40))] {
        let mut s = connect(b.hook.addr);
        s.write_all(prefix.as_bytes()).unwrap();
        let (got, closed) = trickle_until_closed(&mut s, trickle.as_bytes(), Duration::from_secs(30));
        let text = String::from_utf8_lossy(&got).into_owned();
        let closed =
            closed.unwrap_or_else(|| panic!("trickling the {what}: still open after 30 s (HOOK_REQUEST_TIMEOUT=3); read {text:?}"));
        // Cut off after the deadline, not by the 10 s idle timeout (a byte comes every second).
        assert!(closed >= Duration::from_millis(2500) && closed < Duration::from_secs(9), "trickling the {what}: closed after {closed:?}");
        let r = parse_answer(&got);
        assert_eq!(r.code, 408, "trickling the {what}: {text:?}");
        assert_eq!(
            r.json(),
            json!({"error": "the request took longer than HOOK_REQUEST_TIMEOUT (3 s) to arrive: send it at once"}),
            "trickling the {what}"
        );
        assert_eq!(b.hook.get("/ping").code, 200, "/ping after trickling the {what}");
    }
    assert_serves(&b, &git, "clients trickling past HOOK_REQUEST_TIMEOUT");
}

/// SIGCONT on drop, so a failing test never leaves its Redis stopped.
struct Paused(u32);

impl Paused {
    fn stop(pid: u32) -> Paused {
        run(std::process::Command::new("kill").args(["-STOP", &pid.to_string()]));
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

#[test]
fn a_full_request_queue_is_answered_503_with_retry_after_at_once() {
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN), ("HOOK_THREADS", "1"), ("HOOK_QUEUE", "1")], &[]);
    let git = b.repo("abuse/queue");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("queued");
    git.push();
    // Redis stopped: the one worker blocks in its first push (up to its 3 s Redis timeout).
    let paused = Paused::stop(b.redis.pid());
    let (tx, rx) = std::sync::mpsc::channel();
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let (tx, addr, url, name, sha) = (tx.clone(), b.hook.addr, git.file_url(), git.name.clone(), sha.clone());
            std::thread::spawn(move || {
                let branch = format!("q{i}");
                let body = github_push(&name, &url, &branch, &sha, "queued", "main").to_string();
                let sig = sign_sha256(body.as_bytes(), TOKEN);
                let delivery = delivery_id();
                let headers = [
                    ("X-GitHub-Event", "push"),
                    ("Content-Type", "application/json"),
                    ("X-Hub-Signature-256", sig.as_str()),
                    ("X-GitHub-Delivery", delivery.as_str()),
                ];
                let r = try_http(addr, "POST", "/", &headers, body.as_bytes());
                let _ = tx.send((branch, r.map_err(|e| e.to_string())));
            })
        })
        .collect();
    drop(tx);
    // While Redis is still stopped: at least one answer is the queue's 503.
    let mut answers = vec![];
    wait_for("a 503 for the full queue while redis is stopped", DEADLINE, || {
        while let Ok(a) = rx.try_recv() {
            answers.push(a);
        }
        let busy = answers.iter().any(|(_, r)| r.as_ref().is_ok_and(|r| r.code == 503 && r.text().contains("HOOK_QUEUE")));
        if busy {
            Ok(())
        } else {
            Err(format!(
                "{} answers: {:?}",
                answers.len(),
                answers.iter().map(|(b, r)| (b, r.as_ref().map(|r| r.code))).collect::<Vec<_>>()
            ))
        }
    });
    drop(paused);
    for s in senders {
        s.join().unwrap();
    }
    answers.extend(rx.iter());
    assert_eq!(answers.len(), 8, "every push is answered: {answers:?}");
    let mut queued = 0;
    for (branch, r) in &answers {
        let r = r.as_ref().unwrap_or_else(|e| panic!("push to {branch}: no answer: {e}"));
        match r.code {
            503 => {
                assert_eq!(r.header("Retry-After"), Some("5"), "503 for {branch} without Retry-After: {r}");
                let err = r.json()["error"].as_str().unwrap_or_default().to_string();
                assert!(
                    err == "the hook is busy: HOOK_QUEUE (1) requests already wait for a worker; retry later"
                        || err.starts_with("redis unreachable, nothing was queued"),
                    "503 for {branch}: {err:?}"
                );
            }
            202 => {
                queued += 1;
                let id = r.json()["id"].as_str().unwrap().to_string();
                let build = b.redis.hgetall(&format!("ci:build:{id}"));
                assert_eq!(build.get("branch"), Some(branch), "push to {branch} answered 202 (id {id}) but ci:build:{id} is {build:?}");
                assert_eq!(build.get("sha"), Some(&sha), "ci:build:{id}");
            }
            _ => panic!("push to {branch}: {r}"),
        }
    }
    eprintln!("full queue: {queued} of 8 pushes queued, the others 503");
    assert_serves(&b, &git, "a full request queue");
}

#[test]
fn expect_100_continue_keep_alive_and_chunked_bodies_work_as_clients_send_them() {
    let (b, git) = backend(None);
    let sha = git.commit("continue");
    git.push();
    let body = github_push(&git.name, &git.file_url(), "main", &sha, "continue", "main").to_string();
    let sig = sign_sha256(body.as_bytes(), TOKEN);

    // curl's way for big bodies: the head, wait for 100 Continue, then the body.
    let mut s = connect(b.hook.addr);
    let head = signed_push_head(&git, &body.len().to_string(), &sig);
    let head = head.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let interim = read_head(&mut s, Duration::from_secs(20));
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n", "answer to Expect: 100-continue");
    s.write_all(body.as_bytes()).unwrap();
    let r = read_one_answer(&mut s, Duration::from_secs(20));
    assert_eq!(r.code, 202, "the push after 100 Continue: {r}");
    assert_eq!(r.json()["sha"], json!(sha), "{r}");

    // The same connection, kept alive: a second request in turn.
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_one_answer(&mut s, Duration::from_secs(20));
    assert_eq!((r.code, r.text()), (200, "pong\n".to_string()), "a second request on the kept-alive connection");

    // A chunked body with a chunk extension and a trailer field.
    let sha = git.commit("chunked");
    git.push();
    let body = github_push(&git.name, &git.file_url(), "main", &sha, "chunked", "main").to_string();
    let sig = sign_sha256(body.as_bytes(), TOKEN);
    let mut raw = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {}\r\nContent-Type: application/json\r\n\
         X-Hub-Signature-256: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        delivery_id()
    )
    .into_bytes();
    for (i, chunk) in body.as_bytes().chunks(1000).enumerate() {
        raw.extend_from_slice(format!("{:x};n={i}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let mut s = connect(b.hook.addr);
    s.write_all(&raw).unwrap();
    let r = parse_answer(&read_all(&mut s, Duration::from_secs(20)));
    assert_eq!(r.code, 202, "a chunked signed push: {r}");
    assert_eq!(r.json()["sha"], json!(sha), "{r}");
    assert_serves(&b, &git, "100-continue, keep-alive and chunked requests");
}

/// One answer with a `Content-Length` off a connection that stays open.
fn read_one_answer(s: &mut TcpStream, deadline: Duration) -> Response {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse_answer(&got);
            let len: usize = r.header("Content-Length").and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("no Content-Length: {r}"));
            if got.len() >= end + 4 + len {
                return parse_answer(&got[..end + 4 + len]);
            }
        }
        assert!(start.elapsed() < deadline, "no whole answer within {deadline:?}: {:?}", String::from_utf8_lossy(&got));
        s.set_read_timeout(Some(deadline.saturating_sub(start.elapsed()).max(Duration::from_millis(10)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => panic!("closed before a whole answer: {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading an answer: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
}

/// One signed 25 MB push whose `commits` holds millions of empty entries (and one with the
/// same list where a field has the wrong type, the error path): only the head commit is ever
/// read, so the hook's peak memory stays under 64 MiB and the push is queued.
#[test]
fn a_25_mb_push_of_empty_commits_keeps_the_hook_under_64_mib() {
    let (b, git) = backend(Some(26 * 1024 * 1024));
    let sha = git.commit("many commits");
    git.push();
    let mut push = github_push(&git.name, &git.file_url(), &git.branch, &sha, "many commits", &git.default_branch);
    push.as_object_mut().unwrap().remove("commits");
    let push = push.to_string();
    let (commits, entries) = json_array("{}", 25 * 1024 * 1024);
    let body = format!("{},\"commits\":{commits}}}", &push[..push.len() - 1]);
    assert!(body.len() > 25 * 1024 * 1024, "{} bytes", body.len());
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    // The same list in a body the parser refuses (a number for the ref): the error path too.
    let bad = body.replacen("\"ref\":", "\"ref\":1,\"x\":", 1);
    let r = b.hook.send_github("/", "push", bad.as_bytes(), &[]);
    assert_eq!(r.code, 400, "{r}");
    assert_peak_under_64_mib(&b, &format!("a 25 MB push of {entries} empty commits"));
    assert_serves(&b, &git, "a 25 MB push of empty commits");
}

/// A JSON array of `item`s, comma-separated, of at least `bytes` bytes; and how many items.
fn json_array(item: &str, bytes: usize) -> (String, usize) {
    let entries = bytes / (item.len() + 1) + 1;
    let mut array = String::with_capacity(entries * (item.len() + 1) + 1);
    array.push('[');
    for i in 0..entries {
        if i > 0 {
            array.push(',');
        }
        array.push_str(item);
    }
    array.push(']');
    (array, entries)
}

/// The hook's peak memory (VmHWM) so far is under 64 MiB.
fn assert_peak_under_64_mib(b: &Backend, after: &str) {
    let peak = proc_kb(b.hook.pid(), "VmHWM").expect("VmHWM of the hook");
    eprintln!("{after}: hook VmHWM {peak} kB");
    assert!(peak < 64 * 1024, "hook peak RSS {peak} kB (VmHWM) after {after}: over 64 MiB");
}

/// Signed 25 MB bodies whose loosely typed fields (`deleted` of a push, `number` of a pull
/// request) hold arrays of millions of entries:
/// such a field is skipped as it is read, never built into a document, so the hook's peak stays
/// under 64 MiB (they were read into `serde_json::Value` documents).
#[test]
fn loose_fields_of_25_mb_hold_the_hook_under_64_mib() {
    let (b, git) = backend(Some(26 * 1024 * 1024));
    let sha = git.commit("loose fields");
    git.push();
    let (array, _) = json_array("0", 25 * 1024 * 1024);
    let mut push = github_push(&git.name, &git.file_url(), &git.branch, &sha, "loose fields", &git.default_branch);
    push.as_object_mut().unwrap().remove("deleted");
    let push = push.to_string();
    let body = format!("{{\"deleted\":{array},{}", &push[1..]);
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 202, "a push whose `deleted` is no boolean is not a deletion: {r}");
    let pull = format!("{{\"action\":\"opened\",\"number\":{array}}}");
    let r = b.hook.send_github("/", "pull_request", pull.as_bytes(), &[]);
    assert_eq!(r.code, 400, "{r}");
    assert_peak_under_64_mib(&b, "25 MB loose fields");
    assert_serves(&b, &git, "25 MB loose fields");
}

/// A flood of clients that connect and never finish a request, four times HOOK_MAX_CONNECTIONS:
/// each new connection closes the oldest one still reading, so `/ping` answers within a second
/// and a signed push is queued, the flood's oldest members closed, not the hook's door.
#[test]
fn a_flood_of_unfinished_requests_past_the_cap_does_not_lock_the_hook_out() {
    const CAP: usize = 50;
    let cap = CAP.to_string();
    let b = Backend::start(1, &[("HOOK_TOKEN", TOKEN), ("HOOK_MAX_CONNECTIONS", &cap)], &[]);
    let git = b.repo("abuse/app");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    git.commit("first");
    git.push();
    let mut flood = Vec::new();
    for _ in 0..4 * CAP {
        let mut s = connect(b.hook.addr);
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Trickle: ").unwrap();
        flood.push(s);
    }
    for _ in 0..3 {
        let started = Instant::now();
        let r = try_http(b.hook.addr, "GET", "/ping", &[], b"").expect("/ping under the flood");
        assert_eq!((r.code, r.text()), (200, "pong\n".to_string()));
        assert!(started.elapsed() < Duration::from_secs(1), "/ping took {:?} under the flood", started.elapsed());
    }
    // The first members of the flood were closed to make room: they read the end of the stream.
    let mut closed = 0;
    for s in flood.iter_mut().take(CAP) {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        if matches!(s.read(&mut byte), Ok(0)) || matches!(s.read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::ConnectionReset)
        {
            closed += 1;
        }
    }
    assert_eq!(closed, CAP, "the oldest {CAP} unfinished connections are closed");
    assert!(events(&b.hook.log(), "http.evicted").len() >= 3 * CAP, "{}", b.hook.log());
    assert_serves(&b, &git, "a flood of unfinished requests");
}
