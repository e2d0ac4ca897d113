//! Live logs: a running build's lines reach `GET /status/<repo>?follow=1` as the step
//! prints them (chunked), then the result line; the text `/status` of a running build shows the
//! lines so far; 200 followers do not slow a build; a follower that stops reading is dropped;
//! HOOK_MAX_FOLLOWERS bounds them.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A client following a log: each line with the unix time it arrived, decoded from the chunked
/// body here (not by the hook's code).
pub(crate) struct Follower {
    lines: Arc<Mutex<Vec<(String, f64)>>>,
    thread: Option<std::thread::JoinHandle<Result<u16, String>>>,
}

impl Follower {
    pub(crate) fn start(addr: SocketAddr, path: &str) -> Follower {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (seen, path) = (Arc::clone(&lines), path.to_string());
        let thread = std::thread::spawn(move || -> Result<u16, String> {
            let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or(format!("status line {line:?}"))?;
            let mut chunked = false;
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| e.to_string())?;
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding: chunked");
            }
            if !chunked {
                let mut body = String::new();
                let _ = r.read_to_string(&mut body);
                seen.lock().unwrap().push((body, unix_f64()));
                return Ok(code);
            }
            let mut partial = Vec::new();
            loop {
                line.clear();
                r.read_line(&mut line).map_err(|e| e.to_string())?;
                let size = usize::from_str_radix(line.trim_end(), 16).map_err(|_| format!("chunk size {line:?}"))?;
                if size == 0 {
                    return Ok(code);
                }
                let mut data = vec![0u8; size + 2];
                r.read_exact(&mut data).map_err(|e| e.to_string())?;
                assert_eq!(&data[size..], b"\r\n", "chunk not followed by CRLF");
                let now = unix_f64();
                for b in &data[..size] {
                    if *b == b'\n' {
                        seen.lock().unwrap().push((String::from_utf8_lossy(&partial).into_owned(), now));
                        partial.clear();
                    } else {
                        partial.push(*b);
                    }
                }
            }
        });
        Follower { lines, thread: Some(thread) }
    }

    fn has(&self, prefix: &str) -> Option<(String, f64)> {
        self.lines.lock().unwrap().iter().find(|(l, _)| l.starts_with(prefix)).cloned()
    }

    pub(crate) fn wait_line(&self, prefix: &str) -> (String, f64) {
        wait_for(&format!("a followed line starting {prefix:?}"), LONG, || self.has(prefix).ok_or_else(|| format!("{:?}", self.texts())))
    }

    fn texts(&self) -> Vec<String> {
        self.lines.lock().unwrap().iter().map(|(l, _)| l.clone()).collect()
    }

    /// Waits for the end of the answer; its code and lines.
    pub(crate) fn finish(mut self) -> (u16, Vec<String>) {
        let code = self.thread.take().unwrap().join().unwrap().unwrap_or_else(|e| panic!("follower failed: {e}: {:?}", self.texts()));
        (code, self.texts())
    }
}

/// How many follow requests the hook has answered 200 (its request log lines).
fn following(hook: &Hook) -> usize {
    events(&hook.log(), "request").iter().filter(|l| kv(l, "follow").as_deref() == Some("1")).count()
}

#[test]
fn a_follower_gets_each_line_as_it_is_printed_then_the_result() {
    let b = Backend::start(1, &[], &[]);
    let gates = b.root().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    world_writable(&gates);
    let (go, go2) = (gates.join("go"), gates.join("go2"));
    let yml = format!(
        "step: live\nshell: |\n  while [ ! -e '{}' ]; do sleep 0.01; done\n  echo \"first $(date +%s.%N)\"\n  sleep 3\n  while [ ! -e '{}' ]; do sleep 0.01; done\n  echo \"second $(date +%s.%N)\"\n",
        go.display(),
        go2.display()
    );
    let (git, id) = b.queue("acme/live", &yml, "live");
    let f = Follower::start(b.hook.addr, &format!("/status/acme/live?follow=1&id={id}"));
    f.wait_line("- live"); // the step started: the follower is attached
    std::fs::write(&go, b"").unwrap();
    let (first, received) = f.wait_line("  . first ");
    let printed: f64 = first.trim_start_matches("  . first ").parse().unwrap_or_else(|_| panic!("{first:?}"));
    let latency = received - printed;
    eprintln!("follow latency: {:.1} ms (printed {printed:.3}, received {received:.3})", latency * 1000.0);
    assert!(latency >= -0.05, "received before printed? {latency}");
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "running", "`first` must arrive before the build ends");

    // The text /status of the running build: its lines so far, 202.
    let r = b.hook.get("/status/acme/live");
    assert_eq!(r.code, 202, "{r}");
    assert!(r.text().lines().any(|l| l == first), "the lines so far hold {first:?}: {r}");
    assert!(r.text().lines().any(|l| l == "- live"), "{r}");
    let r = b.hook.get(&format!("/status/acme/live?id={id}"));
    assert!(r.code == 202 && r.text().contains(&first), "{r}");

    std::fs::write(&go2, b"").unwrap();
    let (code, lines) = f.finish();
    assert_eq!(code, 200);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(lines.last().map(String::as_str), Some("passed"), "{lines:#?}");
    let sha = git.head();
    assert_eq!(lines[0], format!("- commit {} (live)", &sha[..10]), "{lines:#?}");
    assert_eq!(lines[1], "- live");
    assert!(lines[2].starts_with("  . first ") && lines[3].starts_with("  . second "), "{lines:#?}");
    assert_eq!(&lines[4..], &[build.log[2].clone(), "passed".to_string()], "the [passed] line as stored, then the result");

    // An ended build: the stored log, then the result line; by default the branch's latest.
    let f = Follower::start(b.hook.addr, "/status/acme/live?follow=1");
    let (code, lines) = f.finish();
    let mut want = build.log.clone();
    want.push("passed".into());
    assert_eq!((code, lines), (200, want));
    // HTTP/1.0 has no chunked encoding: the body ends with the connection.
    let mut s = TcpStream::connect(b.hook.addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    write!(s, "GET /status/acme/live?follow=1&id={id} HTTP/1.0\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.0 200") && !head.to_ascii_lowercase().contains("transfer-encoding"), "{head}");
    assert_eq!(body, format!("{}\npassed\n", build.log.join("\n")));
    let r = b.hook.get("/status/acme/never?follow=1");
    assert_eq!(r.code, 404, "{r}");
    // The stream ends with `end` and expires.
    let ttl = b.redis.cli(&["TTL", &format!("ci:log:{id}")]).int();
    assert!(ttl > 0 && ttl <= 3600, "ci:log:{id} TTL {ttl}");
}

#[test]
fn two_hundred_followers_do_not_slow_the_build_and_the_hook_stays_small() {
    let b = Backend::start(1, &[], &[]);
    let yml = "step: lines\nshell: for i in $(seq 1 30); do echo \"line $i\"; sleep 0.05; done\n";
    let (git, _, alone) = b.build("acme/many", &[("integration.yml", yml)], "alone");
    assert_eq!(alone.state, "passed", "{:#?}", alone.log);
    let alone_secs: u64 = alone.fields["seconds"].parse().unwrap();

    let blocker = Blocker::new(b.root(), "busy");
    let (_busy, busy_id) = b.queue("acme/busy", &blocker.yml(), "busy");
    blocker.wait_started();
    let sha = git.head();
    let id = b.hook.push_ok(&git, &sha);
    let before = following(&b.hook);
    let followers: Vec<Follower> = (0..200).map(|_| Follower::start(b.hook.addr, &format!("/status/acme/many?follow=1&id={id}"))).collect();
    wait_for("200 followers answered", LONG, || match following(&b.hook) - before {
        200 => Ok(()),
        n => Err(n.to_string()),
    });
    blocker.release();
    wait_build(&b.redis, &busy_id, LONG);
    let build = wait_build(&b.redis, &id, LONG);
    for f in followers {
        let (code, lines) = f.finish();
        assert_eq!(code, 200);
        for i in 1..=30 {
            assert!(lines.contains(&format!("  . line {i}")), "line {i} missing: {lines:?}");
        }
        assert_eq!(lines.last().map(String::as_str), Some("passed"), "{lines:?}");
    }
    let secs: u64 = build.fields["seconds"].parse().unwrap();
    let hwm = proc_kb(b.hook.pid(), "VmHWM").unwrap();
    eprintln!("build seconds: {alone_secs} alone, {secs} with 200 followers; hook VmHWM {hwm} kB");
    assert!(secs <= alone_secs + 1, "200 followers slowed the build: {secs} s vs {alone_secs} s");
    assert!(hwm < 64 * 1024, "hook VmHWM {hwm} kB");
    assert_eq!(b.hook.get("/ping").code, 200);
}

/// A raw socket with a 4 KiB receive buffer that never reads.
fn stalled_client(addr: SocketAddr, path: &str) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else { panic!("IPv4 expected") };
    // SAFETY: plain socket calls on a fresh descriptor, owned by the TcpStream below.
    let s = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), 4);
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    };
    (&s).write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    s
}

#[test]
fn a_follower_that_stops_reading_is_dropped_and_nothing_else_suffers() {
    let b = Backend::start(1, &[("HOOK_IDLE_TIMEOUT", "2")], &[]);
    let gate = b.root().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    world_writable(&gate);
    let done = gate.join("done");
    // 3,000 lines of 4,000 bytes (12 MB), far more than the sockets buffer, then a gate.
    let yml = format!(
        "step: flood\nshell: |\n  for i in $(seq 1 3000); do printf '%04000d\\n' $i; done\n  while [ ! -e '{}' ]; do sleep 0.02; done\n  echo after\n",
        done.display()
    );
    let blocker = Blocker::new(b.root(), "busy");
    let (_busy, busy_id) = b.queue("acme/busy", &blocker.yml(), "busy");
    blocker.wait_started();
    let (_git, id) = b.queue("acme/flood", &yml, "flood");
    let path = format!("/status/acme/flood?follow=1&id={id}");
    let stalled = stalled_client(b.hook.addr, &path);
    let reader = Follower::start(b.hook.addr, &path);
    wait_for("2 followers answered", LONG, || match following(&b.hook) {
        2 => Ok(()),
        n => Err(n.to_string()),
    });
    blocker.release();
    wait_build(&b.redis, &busy_id, LONG);
    let dropped = wait_for("the stalled follower to be dropped", LONG, || {
        events(&b.hook.log(), "follow.dropped").first().map(|l| l.to_string()).ok_or_else(|| tail_lines(&b.hook.log(), 3))
    });
    eprintln!("{dropped}");
    assert_eq!(kv(&dropped, "id").as_deref(), Some(id.as_str()), "{dropped}");
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "running", "dropped while the build runs");
    std::fs::write(&done, b"").unwrap();
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:?}", build.log);
    let (code, lines) = reader.finish();
    assert_eq!(code, 200);
    assert!(lines.iter().any(|l| l == "  . after"), "the reading follower got the end of the output");
    assert_eq!(lines.last().map(String::as_str), Some("passed"));
    assert_eq!(b.hook.get("/ping").code, 200);
    drop(stalled);
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn followers_past_hook_max_followers_get_503() {
    let b = Backend::start(1, &[("HOOK_MAX_FOLLOWERS", "2")], &[]);
    let blocker = Blocker::new(b.root(), "busy");
    let (_busy, id) = b.queue("acme/busy", &blocker.yml(), "busy");
    blocker.wait_started();
    let path = format!("/status/acme/busy?follow=1&id={id}");
    let f1 = Follower::start(b.hook.addr, &path);
    // A follower that leaves while the build waits: its slot must come back.
    let mut leaver = TcpStream::connect(b.hook.addr).unwrap();
    write!(leaver, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    wait_for("2 followers answered", LONG, || match following(&b.hook) {
        2 => Ok(()),
        n => Err(n.to_string()),
    });
    let r = b.hook.get(&path);
    assert_eq!(r.code, 503, "{r}");
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    assert!(r.json()["error"].as_str().unwrap().contains("HOOK_MAX_FOLLOWERS (2)"), "{r}");
    drop(leaver);
    wait_for("the follower that left to be dropped", LONG, || {
        events(&b.hook.log(), "follow.dropped").first().map(|_| ()).ok_or_else(|| tail_lines(&b.hook.log(), 2))
    });
    let f2 = Follower::start(b.hook.addr, &path);
    wait_for("a third follower admitted in the freed slot", LONG, || match following(&b.hook) {
        3 => Ok(()),
        n => Err(n.to_string()),
    });
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "running", "all while the build still runs");
    blocker.release();
    for f in [f1, f2] {
        let (code, lines) = f.finish();
        assert_eq!((code, lines.last().cloned()), (200, Some("passed".to_string())), "{lines:?}");
    }
    // The slots are back: a new follower of the ended build is served.
    wait_for("a follower served again", DEADLINE, || {
        let r = b.hook.get(&path);
        if r.code == 200 && r.text().ends_with("passed\n") {
            Ok(())
        } else {
            Err(r.to_string())
        }
    });
}

#[test]
fn live_output_lines_are_masked_like_the_log_debug_or_not() {
    let b = Backend::start(1, &[], &[]);
    let yml = "step: s\nenv: {API_KEY: sekrit-value-123}\nsecrets: [API_KEY]\nshell: echo \"key=$API_KEY\"\n";
    let (_git, _sha, build) = b.build("acme/masked", &[("integration.yml", yml)], "masked");
    assert_eq!(build.state, "passed", "{:?}", build.log);
    // The stream as Redis holds it (read with redis-cli, not the hook).
    let raw = b.redis.cli(&["XRANGE", &format!("ci:log:{}", build.id), "-", "+"]);
    fn flat(r: &Resp, out: &mut Vec<String>) {
        match r {
            Resp::Simple(s) | Resp::Error(s) => out.push(s.clone()),
            Resp::Int(n) => out.push(n.to_string()),
            Resp::Bulk(b) => out.push(String::from_utf8_lossy(b.as_deref().unwrap_or_default()).into_owned()),
            Resp::Array(a) => a.iter().flatten().for_each(|x| flat(x, out)),
        }
    }
    let mut words = Vec::new();
    flat(&raw, &mut words);
    let text = format!("{words:?}");
    assert!(text.contains("  . key=***"), "the output line, masked, without debug: {text}");
    assert!(!text.contains("sekrit-value-123"), "{text}");
    assert!(text.contains("\"end\"") && text.contains("\"passed\""), "{text}");
}

/// Cancelling: a follower of a build canceled while it runs gets its lines, then `canceled`.
#[test]
fn a_follower_of_a_canceled_build_ends_with_canceled() {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), "followed");
    let yml = format!("step: live\nshell: |\n  echo before-cancel\n{}", indent(&blocker.snippet(), 2));
    let (git, id) = b.queue("acme/cancelfollow", &yml, "followed, then canceled");
    let f = Follower::start(b.hook.addr, &format!("/status/acme/cancelfollow?follow=1&id={id}"));
    f.wait_line("  . before-cancel");
    blocker.wait_started();
    let bearer = format!("Bearer {}", b.hook.token);
    let r = b.hook.post(&format!("/cancel/acme/cancelfollow?branch={}", git.branch), &[("Authorization", &bearer)], b"");
    assert_eq!(r.code, 202, "{r}");
    let (code, lines) = f.finish();
    assert_eq!(code, 200);
    assert_eq!(lines.last().map(String::as_str), Some("canceled"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "  . before-cancel"), "{lines:#?}");
    assert!(!lines.iter().any(|l| l == "failed" || l == "passed"), "{lines:#?}");
}

/// The `ci:log:<id>` stream as (field, value) pairs, oldest first.
pub(crate) fn stream(b: &Backend, id: &str) -> Vec<(String, String)> {
    let Resp::Array(Some(entries)) = b.redis.cli(&["XRANGE", &format!("ci:log:{id}"), "-", "+"]) else { return vec![] };
    entries
        .iter()
        .map(|e| match e {
            Resp::Array(Some(parts)) => {
                let fv = parts[1].list();
                (fv[0].clone(), fv[1].clone())
            }
            other => panic!("not a stream entry: {other:?}"),
        })
        .collect()
}

#[test]
fn the_last_lines_of_a_build_reach_its_stream_in_order_before_its_end() {
    // A burst at the very end: some lines the publisher writes, the last ones FINISH writes
    // with the result (handed back when the build closes within the publisher's linger).
    let b = Backend::start(1, &[], &[]);
    for (name, count) in [("acme/burst", 300), ("acme/few", 2)] {
        let yml = format!("step: burst\nshell: seq 1 {count}\n");
        let (_git, id) = b.queue(name, &yml, "burst");
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!(build.state, "passed", "{:?}", build.log);
        let entries = stream(&b, &id);
        let printed: Vec<&str> = entries.iter().filter_map(|(f, v)| (f == "line").then_some(v.strip_prefix("  . ")).flatten()).collect();
        let want: Vec<String> = (1..=count).map(|n| n.to_string()).collect();
        assert_eq!(printed, want, "{name}: every printed line once, in order");
        assert_eq!(entries.last(), Some(&("end".to_string(), "passed".to_string())), "{name}: {entries:?}");
        assert_eq!(entries.iter().filter(|(f, _)| f == "end").count(), 1, "{name}: one end");
    }
}
