//! The hook's HTTP edge: our accept loop with socket timeouts, tiny_http
//! parsing on a thread per connection, the body limit, then path + method →
//! handler → status code on a worker pool, one log line per request.

use crate::config::HookConfig;
use crate::logging::quote;
use crate::payload::{self, Delivery};
use crate::queue::{self, Enqueued, Job};
use crate::redis_conn::Redis;
use crate::signature::{self, Credentials};
use crate::status::{self, Metrics};
use crossbeam_channel::Receiver;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response};

/// Redis socket timeout for the hook: a request waits at most this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Hook {
    pub config: HookConfig,
    pub token: String,
    pub metrics: Metrics,
    next_req: AtomicU64,
}

/// An answer: status, content type, body, extra headers.
struct Reply {
    code: u16,
    ctype: &'static str,
    body: String,
    retry_after: bool,
    /// `key=value` facts for the request's log line.
    facts: String,
}

impl Reply {
    fn json(code: u16, value: Value) -> Reply {
        Reply { code, ctype: "application/json", body: format!("{value}\n"), retry_after: false, facts: String::new() }
    }

    fn error(code: u16, why: impl Into<String>) -> Reply {
        let why = why.into();
        let mut r = Reply::json(code, json!({ "error": why }));
        r.facts = format!(" error={}", quote(&why));
        r.retry_after = code == 503;
        r
    }

    fn text(code: u16, body: String) -> Reply {
        Reply { code, ctype: "text/plain; charset=utf-8", body, retry_after: false, facts: String::new() }
    }
}

impl Hook {
    pub fn new(config: HookConfig, token: String) -> Hook {
        Hook { config, token, metrics: Metrics::default(), next_req: AtomicU64::new(1) }
    }
}

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 4096;

/// A request whose body the connection thread has read in full.
struct Incoming {
    req: Request,
    body: Vec<u8>,
    started: Instant,
}

/// Accepts connections until `stop` is set. Each connection gets a thread
/// of its own that parses requests (tiny_http) and reads their bodies under
/// HOOK_MAX_BODY, so slow or idle clients only ever hold their own thread;
/// complete requests go to HOOK_THREADS workers, each with its Redis
/// connection. The listener must carry SO_RCVTIMEO (see [`listen`]).
pub fn serve(hook: Arc<Hook>, listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    let (tx, rx) = crossbeam_channel::unbounded::<Incoming>();
    let mut workers = Vec::new();
    for _ in 0..hook.config.threads {
        let (hook, rx) = (Arc::clone(&hook), rx.clone());
        workers.push(std::thread::spawn(move || worker(&hook, &rx)));
    }
    let listener = tiny_http::Listener::from(listener);
    let plain = match tiny_http::SslContextWrap::build_ssl_capabilities(None) {
        Ok(p) => p,
        Err(e) => return log::error!("http.failed error={}", quote(&e.to_string())),
    };
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let conn = match tiny_http::Server::accept_connection(&listener, &plain) {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            // The accept timeout doubles as the stop poll.
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => {
                log::warn!("http.accept_failed error={}", quote(&e.to_string()));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log::warn!("http.refused open={MAX_CONNECTIONS}: too many connections, closing the new one");
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let (hook, tx, open) = (Arc::clone(&hook), tx.clone(), Arc::clone(&open));
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || {
            for next in conn {
                match next {
                    Ok(req) => read_request(&hook, req, &tx),
                    Err(e) => {
                        log::debug!("connection.closed error={}", quote(&e.to_string()));
                        break;
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            log::warn!("http.thread_failed error={}", quote(&e.to_string()));
        }
    }
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
}

/// Binds `addr` with SO_RCVTIMEO/SO_SNDTIMEO set on the listening socket:
/// Linux copies them to every accepted socket, which is how tiny_http's
/// reads and writes get the timeouts it has no setting for; accept itself
/// wakes up at the same pace to check for shutdown.
/// `idle` (HOOK_IDLE_TIMEOUT) cuts off a silent client instead of letting it
/// hold its thread forever; GitHub itself gives up on a hook after 10 s.
pub fn listen(addr: &str, idle: Duration) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind(addr)?;
    let tv = libc::timeval { tv_sec: idle.as_secs() as libc::time_t, tv_usec: 0 };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: a valid socket fd and a timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(listener)
}

/// In the connection's thread: reads the body under the limit; refusals
/// (413, unreadable body) are answered here, so draining whatever a lying
/// client still sends never holds a worker.
fn read_request(hook: &Hook, mut req: Request, tx: &crossbeam_channel::Sender<Incoming>) {
    let started = Instant::now();
    match read_body(&mut req, hook.config.max_body) {
        Ok(body) => {
            let _ = tx.send(Incoming { req, body, started });
        }
        Err(reply) => respond(hook, req, "body", reply, started),
    }
}

fn worker(hook: &Hook, rx: &Receiver<Incoming>) {
    let mut redis = Redis::open(&hook.config.redis_url, REDIS_TIMEOUT).ok();
    while let Ok(Incoming { req, body, started }) = rx.recv() {
        let method = req.method().clone();
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let (route, reply) = route(hook, redis.as_mut(), &req, &body, &method, path, query);
        respond(hook, req, route, reply, started);
    }
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).map(|v| v.as_str())
}

fn respond(hook: &Hook, req: Request, route: &'static str, reply: Reply, started: Instant) {
    let n = hook.next_req.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let url = req.url().to_string();
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    hook.metrics.count(route, reply.code);
    let mut response = Response::from_string(reply.body).with_status_code(reply.code);
    response.add_header(Header::from_bytes(&b"Content-Type"[..], reply.ctype.as_bytes()).expect("static header"));
    if reply.retry_after {
        response.add_header(Header::from_bytes(&b"Retry-After"[..], &b"5"[..]).expect("static header"));
    }
    let _ = req.respond(response);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let line = format!("request req={n} method={method} path={} code={} ms={ms:.2}{}", quote(path), reply.code, reply.facts);
    match reply.code {
        500.. => log::warn!("{line}"),
        _ => log::info!("{line}"),
    }
}

fn route(
    hook: &Hook,
    redis: Option<&mut Redis>,
    req: &Request,
    body: &[u8],
    method: &Method,
    path: &str,
    query: &str,
) -> (&'static str, Reply) {
    let Some(redis) = redis else {
        return ("error", Reply::error(503, "REDIS_URL cannot be used"));
    };
    match (method, path) {
        (Method::Get | Method::Head, "/ping") => ("ping", Reply::text(200, "pong\n".into())),
        (Method::Get, "/metrics") => {
            let body = match redis.run_again(|c| Ok(hook.metrics.render(Some(c)))) {
                Ok(text) => text,
                Err(_) => hook.metrics.render(None),
            };
            ("metrics", Reply { ctype: "text/plain; version=0.0.4", ..Reply::text(200, body) })
        }
        (Method::Get, p) if p.starts_with("/status/") => ("status", get_status(redis, req, &p[8..], query)),
        (Method::Post, p) if p.starts_with("/build/") => ("build", post_build(hook, redis, req, body, &p[7..], query)),
        (Method::Post, p) if !p.starts_with("/status/") && p != "/ping" && p != "/metrics" => {
            ("push", post_push(hook, redis, req, body, p))
        }
        (Method::Get | Method::Head, _) | (Method::Post, _) => ("other", Reply::error(404, format!("no such route: {method} {path}"))),
        _ => ("other", Reply::error(405, format!("method {method} is not allowed: use GET or POST"))),
    }
}

/// Reads the whole body, refusing more than HOOK_MAX_BODY before reading it.
fn read_body(req: &mut Request, max: u64) -> Result<Vec<u8>, Reply> {
    let too_big = || Reply::error(413, format!("body larger than HOOK_MAX_BODY ({max} bytes)"));
    if let Some(len) = req.body_length() {
        if len as u64 > max {
            return Err(too_big());
        }
    }
    let mut body = Vec::with_capacity(req.body_length().unwrap_or(0).min(max as usize));
    match req.as_reader().take(max + 1).read_to_end(&mut body) {
        Ok(_) if body.len() as u64 > max => Err(too_big()),
        Ok(_) => Ok(body),
        Err(e) => Err(Reply::error(400, format!("could not read the body: {e}"))),
    }
}

fn credentials(req: &Request) -> Credentials<'_> {
    Credentials {
        hub_sha256: header(req, "X-Hub-Signature-256"),
        hub_sha1: header(req, "X-Hub-Signature"),
        gitea: header(req, "X-Gitea-Signature").or_else(|| header(req, "X-Forgejo-Signature")),
        gitlab_token: header(req, "X-Gitlab-Token"),
        bearer: header(req, "Authorization").and_then(signature::bearer),
    }
}

fn redis_down(e: &redis::RedisError) -> Reply {
    Reply::error(503, format!("redis unreachable, nothing was queued: {e}"))
}

fn post_push(hook: &Hook, redis: &mut Redis, req: &Request, body: &[u8], path: &str) -> Reply {
    if let Err(e) = signature::verify(&hook.token, body, &credentials(req)) {
        return Reply::error(403, e.to_string());
    }
    let parsed = payload::parse(&payload::Request {
        content_type: header(req, "Content-Type"),
        github_event: header(req, "X-GitHub-Event"),
        gitea_event: header(req, "X-Gitea-Event").or_else(|| header(req, "X-Gogs-Event")).or_else(|| header(req, "X-Forgejo-Event")),
        gitlab_event: header(req, "X-Gitlab-Event"),
        event_key: header(req, "X-Event-Key"),
        body,
    });
    let mut push = match parsed {
        Ok(Delivery::Build(p)) => p,
        Ok(Delivery::NoBuild(reason)) => {
            let mut r = Reply::json(200, json!({ "reason": reason }));
            r.facts = format!(" reason={}", quote(&reason));
            return r;
        }
        Err(e) => return Reply::error(400, e.0),
    };
    push.hints = crate::routing::parse_hints(path);
    let delivery = header(req, "X-GitHub-Delivery")
        .or_else(|| header(req, "X-Gitea-Delivery"))
        .or_else(|| header(req, "X-Gogs-Delivery"))
        .or_else(|| header(req, "Idempotency-Key"))
        .or_else(|| header(req, "X-Gitlab-Event-UUID"));
    enqueue(redis, &Job { push: &push, delivery, reset: false })
}

fn enqueue(redis: &mut Redis, job: &Job) -> Reply {
    let p = job.push;
    let short = &p.sha[..10.min(p.sha.len())];
    let facts = format!(" repo={} branch={} sha={short}", quote(&p.repo), quote(&p.branch));
    let mut reply = match redis.run_again(|c| queue::enqueue(c, job)) {
        Err(e) => redis_down(&e),
        Ok(Enqueued::Queued { id, slave }) => queued(p, id, slave, false),
        Ok(Enqueued::Coalesced { id, slave }) => queued(p, id, slave, true),
        Ok(Enqueued::Duplicate { id }) => {
            let mut r = Reply::json(200, json!({ "reason": "duplicate delivery: already queued", "id": id }));
            r.facts = format!(" id={id} reason=duplicate");
            r
        }
        Ok(Enqueued::NoSlave { live }) => {
            let live = if live.is_empty() { "none".to_string() } else { live };
            let asked = if p.hints.is_empty() { "any".to_string() } else { p.hints.join("+") };
            Reply::error(503, format!("no live slave cluster offers {asked}; live clusters: {live}"))
        }
    };
    reply.facts = format!("{facts}{}", reply.facts);
    reply
}

fn queued(p: &payload::Push, id: String, slave: String, coalesced: bool) -> Reply {
    let short = &p.sha[..10.min(p.sha.len())];
    let event = if coalesced { "build.coalesced" } else { "build.queued" };
    log::info!("{event} id={id} repo={} branch={} sha={short} slave={slave}", quote(&p.repo), quote(&p.branch));
    let mut r =
        Reply::json(202, json!({ "id": id, "repo": p.repo, "branch": p.branch, "sha": p.sha, "slave": slave, "coalesced": coalesced }));
    r.facts = format!(" id={id} slave={slave}");
    r
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| payload::percent_decode(v.as_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned()))?
    })
}

fn decode_repo(raw: &str) -> Option<String> {
    let bytes = payload::percent_decode(raw.replace('+', "%2B").as_bytes())?;
    String::from_utf8(bytes).ok().filter(|r| !r.is_empty())
}

fn get_status(redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let Some(repo) = decode_repo(raw_repo) else { return Reply::error(400, "bad repository name in path") };
    let branch = query_param(query, "branch");
    let wants_json = header(req, "Accept").is_some_and(|a| a.contains("application/json"));
    match redis.run_again(|c| status::read(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(view) if wants_json => {
            let code = if view.code == 404 { 404 } else { 200 };
            Reply::json(code, view.json)
        }
        Ok(view) => Reply::text(view.code, view.text),
    }
}

fn post_build(hook: &Hook, redis: &mut Redis, req: &Request, body: &[u8], raw_repo: &str, query: &str) -> Reply {
    if let Err(e) = signature::verify_rebuild(&hook.token, body, &credentials(req), crate::unix_now()) {
        return Reply::error(403, e.to_string());
    }
    let Some(repo) = decode_repo(raw_repo) else { return Reply::error(400, "bad repository name in path") };
    let branch = query_param(query, "branch");
    let reset = header(req, "X-Reset").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    match redis.run_again(|c| queue::last_push(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(None) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        Ok(Some(push)) => enqueue(redis, &Job { push: &push, delivery: None, reset }),
    }
}
