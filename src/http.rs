//! The hook's HTTP edge: tiny_http requests on an elastic worker pool, the
//! body limit, path + method → handler → status code, one log line each.

use crate::config::HookConfig;
use crate::logging::quote;
use crate::payload::{self, Delivery};
use crate::queue::{self, Enqueued, Job};
use crate::redis_conn::Redis;
use crate::signature::{self, Credentials};
use crate::status::{self, Metrics};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response};

/// Redis socket timeout for the hook: a request waits at most this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Extra workers (beyond HOOK_THREADS) exit after this long idle.
const EXTRA_IDLE: Duration = Duration::from_secs(10);

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

/// Serves until `stop` is set; returns once every worker has left.
pub fn serve(hook: Arc<Hook>, server: Arc<tiny_http::Server>, stop: Arc<AtomicBool>) {
    let base = hook.config.threads;
    let max = (base * 8).max(64);
    let (tx, rx) = crossbeam_channel::unbounded::<Request>();
    let idle = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..base {
        handles.push(spawn_worker(&hook, &rx, &idle, &total, true));
    }
    while !stop.load(Ordering::SeqCst) {
        match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Ok(Some(req))) => {
                // Slow clients hold a worker while their body trickles in:
                // grow the pool so signed pushes keep being served.
                if idle.load(Ordering::SeqCst) == 0 && total.load(Ordering::SeqCst) < max {
                    spawn_worker(&hook, &rx, &idle, &total, false);
                }
                if tx.send(req).is_err() {
                    break;
                }
            }
            Ok(Ok(None)) => {}
            // tiny_http already answered 400/408/417 on that connection.
            // A client closing its keep-alive connection is not an event.
            // (The fork keeps its error type private: only its text is ours.)
            Ok(Err(e)) if e.to_string().starts_with("[ReadIoError]") => log::debug!("connection.closed error={}", quote(&e.to_string())),
            Ok(Err(e)) => log::info!("request.rejected error={}", quote(&e.to_string())),
            Err(e) => {
                log::error!("http.accept_failed error={}", quote(&e.to_string()));
                break;
            }
        }
    }
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
}

fn spawn_worker(
    hook: &Arc<Hook>,
    rx: &Receiver<Request>,
    idle: &Arc<AtomicUsize>,
    total: &Arc<AtomicUsize>,
    core: bool,
) -> std::thread::JoinHandle<()> {
    let (hook, rx, idle, total) = (Arc::clone(hook), rx.clone(), Arc::clone(idle), Arc::clone(total));
    total.fetch_add(1, Ordering::SeqCst);
    std::thread::spawn(move || {
        let mut redis = Redis::open(&hook.config.redis_url, REDIS_TIMEOUT).ok();
        loop {
            idle.fetch_add(1, Ordering::SeqCst);
            let got = if core { rx.recv().map_err(|_| RecvTimeoutError::Disconnected) } else { rx.recv_timeout(EXTRA_IDLE) };
            idle.fetch_sub(1, Ordering::SeqCst);
            match got {
                Ok(req) => handle(&hook, redis.as_mut(), req),
                Err(_) => break,
            }
        }
        total.fetch_sub(1, Ordering::SeqCst);
    })
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).map(|v| v.as_str())
}

fn handle(hook: &Hook, redis: Option<&mut Redis>, mut req: Request) {
    let started = Instant::now();
    let n = hook.next_req.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let url = req.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let (route, reply) = route(hook, redis, &mut req, &method, path, query);
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

fn route(hook: &Hook, redis: Option<&mut Redis>, req: &mut Request, method: &Method, path: &str, query: &str) -> (&'static str, Reply) {
    let Some(redis) = redis else {
        return ("error", Reply::error(503, "REDIS_URL cannot be used"));
    };
    match (method, path) {
        (Method::Get, "/ping") => ("ping", Reply::text(200, "pong\n".into())),
        (Method::Get, "/metrics") => {
            let body = match redis.run_again(|c| Ok(hook.metrics.render(Some(c)))) {
                Ok(text) => text,
                Err(_) => hook.metrics.render(None),
            };
            ("metrics", Reply { ctype: "text/plain; version=0.0.4", ..Reply::text(200, body) })
        }
        (Method::Get, p) if p.starts_with("/status/") => ("status", get_status(redis, req, &p[8..], query)),
        (Method::Post, p) if p.starts_with("/build/") => ("build", post_build(hook, redis, req, &p[7..], query)),
        (Method::Post, p) if !p.starts_with("/status/") && p != "/ping" && p != "/metrics" => ("push", post_push(hook, redis, req, p)),
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
        bearer: header(req, "Authorization").and_then(|a| a.strip_prefix("Bearer ")),
    }
}

fn redis_down(e: &redis::RedisError) -> Reply {
    Reply::error(503, format!("redis unreachable, nothing was queued: {e}"))
}

fn post_push(hook: &Hook, redis: &mut Redis, req: &mut Request, path: &str) -> Reply {
    let body = match read_body(req, hook.config.max_body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = signature::verify(&hook.token, &body, &credentials(req)) {
        return Reply::error(403, e.to_string());
    }
    let parsed = payload::parse(&payload::Request {
        content_type: header(req, "Content-Type"),
        github_event: header(req, "X-GitHub-Event"),
        gitea_event: header(req, "X-Gitea-Event").or_else(|| header(req, "X-Gogs-Event")).or_else(|| header(req, "X-Forgejo-Event")),
        gitlab_event: header(req, "X-Gitlab-Event"),
        event_key: header(req, "X-Event-Key"),
        body: &body,
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

fn post_build(hook: &Hook, redis: &mut Redis, req: &mut Request, raw_repo: &str, query: &str) -> Reply {
    let body = match read_body(req, hook.config.max_body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Err(e) = signature::verify(&hook.token, &body, &credentials(req)) {
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
