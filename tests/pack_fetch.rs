//! A pushed commit fetched into the mirror by one protocol v2 request instead of `git fetch`:
//! `git upload-pack` for file:// URLs, one POST to a real smart-HTTP server (`git http-backend`
//! as a CGI, below) for http. Oracles outside the slave: git's own `FETCH_HEAD` in the mirror
//! (written by every `git fetch`, never by the single request), the requests the server saw, the
//! mirror's branch read by `git rev-parse`, and the step's output of the file it `cat`s. A
//! hostile server's answers (endless, an error, a pack without the commit) make the slave fetch
//! with git instead, within its memory bound.

use crate::harness::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// One request a [`GitHttp`] saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    agent: String,
    protocol: String,
}

/// Answers a request itself instead of `git http-backend` (true: answered).
type Hostile = Arc<dyn Fn(&Seen, &mut TcpStream) -> bool + Send + Sync>;

/// `git http-backend` served over HTTP/1.1 (one request per connection), as lighttpd or a forge
/// serves smart HTTP; every request recorded.
struct GitHttp {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl GitHttp {
    fn start(root: &Path, hostile: Hostile) -> GitHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_path_buf(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, log, hostile) = (root.clone(), Arc::clone(&log), Arc::clone(&hostile));
                std::thread::spawn(move || serve(conn, &root, &log, &hostile));
            }
        });
        GitHttp { port, seen }
    }

    fn url(&self, repo: &GitRepo) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, repo.bare.file_name().unwrap().to_string_lossy())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut conn: TcpStream, root: &Path, log: &Mutex<Vec<Seen>>, hostile: &Hostile) {
    conn.set_read_timeout(Some(LONG)).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter().skip(1).find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    };
    let mut body = vec![0; header("content-length").and_then(|n| n.parse().ok()).unwrap_or(0)];
    reader.read_exact(&mut body).unwrap();
    let mut parts = head[0].split(' ');
    let (method, target) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let seen = Seen {
        method: method.clone(),
        path: path.to_string(),
        agent: header("user-agent").unwrap_or_default(),
        protocol: header("git-protocol").unwrap_or_default(),
    };
    log.lock().unwrap().push(seen.clone());
    if hostile(&seen, &mut conn) {
        return;
    }
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_GIT_PROTOCOL", &seen.protocol)
        .env("HTTP_CONTENT_ENCODING", header("content-encoding").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cgi.stdin.take().unwrap().write_all(&body).unwrap();
    let out = cgi.wait_with_output().unwrap().stdout;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2))).expect("CGI headers");
    let cgi_head = String::from_utf8_lossy(&out[..split.0]).into_owned();
    let mut status = "200 OK".to_string();
    let mut answer = String::new();
    for line in cgi_head.lines() {
        match line.strip_prefix("Status: ") {
            Some(s) => status = s.to_string(),
            None => answer += &format!("{line}\r\n"),
        }
    }
    let reply = format!("HTTP/1.1 {status}\r\n{answer}Content-Length: {}\r\nConnection: close\r\n\r\n", out.len() - split.1);
    let _ = conn.write_all(reply.as_bytes()).and_then(|_| conn.write_all(&out[split.1..]));
}

/// Answers nothing itself.
fn honest() -> Hostile {
    Arc::new(|_: &Seen, _: &mut TcpStream| false)
}

/// Whether a request is the slave's own protocol v2 POST (git's say `git/2.x`).
fn ours(seen: &Seen) -> bool {
    seen.method == "POST" && seen.agent.starts_with("git/ci-backend-")
}

/// A pkt-line.
fn pkt(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend(data);
    out
}

fn pack_answer(conn: &mut TcpStream, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(body));
}

/// Commits `NOTES` = `note`, pushes it (naming `url`) and builds it: it must pass and print `note`.
pub fn push_note(b: &Backend, repo: &GitRepo, url: &str, note: &str) -> String {
    repo.write("NOTES", note);
    let sha = repo.commit(note);
    repo.push();
    let body = github_push(&repo.name, url, &repo.branch, &sha, note, "main").to_string();
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(build.printed(), [note], "the step read the pushed commit's file: {:#?}", build.log);
    sha
}

pub const YML: &str = "step: show\ndebug: true\nshell: cat NOTES\n";

#[test]
fn a_new_commit_over_file_urls_comes_without_git_fetch() {
    let b = Backend::start(1, &[], &[]);
    let repo = b.repo("acme/onerequest");
    repo.write("integration.yml", YML);
    let url = repo.file_url();
    push_note(&b, &repo, &url, "one");
    // The clone left the branch a packed ref: the first push after it offers that as `have` too.
    // Every `git fetch` writes FETCH_HEAD; the clone does not.
    let fetch_head = || b.slaves[0].mirror(&repo).join("FETCH_HEAD").exists();
    assert!(!fetch_head(), "a clone writes no FETCH_HEAD");
    push_note(&b, &repo, &url, "two");
    let three = push_note(&b, &repo, &url, "three");
    let four = push_note(&b, &repo, &url, "four");
    assert!(!fetch_head(), "no git fetch ran for the pushes after the clone");
    assert_eq!(events(&b.slaves[0].log(), "fetch.by_git"), Vec::<&str>::new());
    let tip = run(git(&b.slaves[0].mirror(&repo)).args(["rev-parse", "refs/heads/main"]));
    assert_eq!(tip.trim(), four, "the mirror's branch moved to the pushed commit");
    assert_ne!(three, four);
    let fsck = git(&b.slaves[0].mirror(&repo)).args(["fsck", "--connectivity-only", "--no-dangling"]).output().unwrap();
    assert!(fsck.status.success(), "the mirror is whole: {}", String::from_utf8_lossy(&fsck.stderr));
}

#[test]
fn a_new_commit_over_http_is_one_post() {
    let b = Backend::start(1, &[], &[]);
    let repo = b.repo("acme/onepost");
    let server = GitHttp::start(repo.bare.parent().unwrap(), honest());
    repo.write("integration.yml", YML);
    let url = server.url(&repo);
    push_note(&b, &repo, &url, "one");
    let before = server.seen().len();
    // The clone asked for the refs (git's own GET of info/refs); the push after it, whose
    // branch the clone left packed, is one POST of ours.
    assert!(server.seen()[..before].iter().any(|s| s.method == "GET" && s.path.ends_with("/info/refs")));
    push_note(&b, &repo, &url, "two");
    let seen = server.seen()[before..].to_vec();
    let path = format!("/{}/git-upload-pack", repo.bare.file_name().unwrap().to_string_lossy());
    assert_eq!(seen.len(), 1, "{seen:#?}");
    assert!(ours(&seen[0]) && seen[0].path == path && seen[0].protocol == "version=2", "{seen:#?}");
    let before = server.seen().len();
    push_note(&b, &repo, &url, "three");
    assert_eq!(server.seen()[before..].iter().filter(|s| ours(s)).count(), 1, "{:#?}", server.seen());
}

#[test]
fn a_hostile_answer_is_fetched_by_git_within_the_memory_bound() {
    let b = Backend::start(1, &[], &[]);
    let repo = b.repo("acme/hostilepack");
    let mode = Arc::new(Mutex::new("honest"));
    let chosen = Arc::clone(&mode);
    let hostile: Hostile = Arc::new(move |seen: &Seen, conn: &mut TcpStream| {
        if !ours(seen) {
            return false;
        }
        match *chosen.lock().unwrap() {
            "endless" => {
                // 64 KiB band-1 packets of a pack header and zeros, until the slave hangs up.
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nConnection: close\r\n\r\n";
                let mut sent = conn.write_all(head.as_bytes()).and_then(|_| conn.write_all(&pkt(b"packfile\n")));
                let mut chunk = vec![0u8; 65515];
                chunk[..9].copy_from_slice(b"\x01PACK\0\0\0\x02");
                for _ in 0..16 * 1024 {
                    sent = sent.and_then(|_| conn.write_all(&pkt(&chunk)));
                    chunk[1..9].fill(0);
                    if sent.is_err() {
                        break;
                    }
                }
            }
            "refuses" => {
                let _ = conn.write_all(b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
            "error" => pack_answer(conn, &[pkt(b"packfile\n"), pkt(b"\x03upload-pack: boom\n"), b"0000".to_vec()].concat()),
            "empty" => {
                // A valid pack of no objects: unpacked, and no commit comes of it.
                let mut pack = b"PACK\0\0\0\x02\0\0\0\0".to_vec();
                pack.extend(<sha1::Sha1 as sha1::Digest>::digest(&pack));
                pack_answer(conn, &[pkt(b"packfile\n"), pkt(&[&[1u8][..], &pack].concat()), b"0000".to_vec()].concat());
            }
            _ => return false,
        }
        true
    });
    let server = GitHttp::start(repo.bare.parent().unwrap(), hostile);
    repo.write("integration.yml", YML);
    let url = server.url(&repo);
    push_note(&b, &repo, &url, "one");
    push_note(&b, &repo, &url, "two");
    let slave = &b.slaves[0];
    for (kind, why) in [("endless", "limit"), ("error", "the server failed: upload-pack: boom"), ("empty", "did not bring the commit")] {
        *mode.lock().unwrap() = kind;
        let before = events(&slave.log(), "fetch.by_git").len();
        push_note(&b, &repo, &url, kind);
        let log = slave.log();
        let fallbacks = events(&log, "fetch.by_git");
        assert_eq!(fallbacks.len(), before + 1, "{kind}: {fallbacks:#?}");
        assert!(fallbacks[before].contains(why), "{kind}: {}", fallbacks[before]);
    }
    // A host that gives no git answer (a status, TLS with a CA only git knows) is left to git
    // for a while: the next push sends it no request of ours.
    *mode.lock().unwrap() = "refuses";
    push_note(&b, &repo, &url, "refused");
    push_note(&b, &repo, &url, "refused again");
    let log = slave.log();
    let fallbacks = events(&log, "fetch.by_git");
    assert!(fallbacks[fallbacks.len() - 2].contains("answered 415"), "{fallbacks:#?}");
    assert!(fallbacks[fallbacks.len() - 1].contains("gave no git answer to an earlier request"), "{fallbacks:#?}");
    let hwm = proc_kb(slave.pid(), "VmHWM").unwrap();
    assert!(hwm < 64 * 1024, "the slave's peak memory {hwm} KiB");
    let seen = server.seen();
    assert_eq!(
        seen.iter().filter(|s| ours(s)).count(),
        5,
        "one request of ours for the push after the clone and per hostile push, none once refused: {seen:#?}"
    );
}
