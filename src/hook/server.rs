//! The hook's HTTP edge: our accept loop with socket timeouts, a thread per
//! connection reading bounded requests ([`wire`]), a bounded queue to the
//! worker pool, then path + method → handler → status code, one log line per
//! request.

use crate::config::HookConfig;
use crate::hook::views;
use crate::hook::wire::{self, Conn, Next, Request};
use crate::logging::quote;
use crate::payload::{self, Delivery};
use crate::signature::{self, Credentials};
use crate::store::conn::Redis;
use crate::store::queue::{self, Canceled, Enqueued, Job};
use crate::store::record::{self, Metrics};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Response};

/// Redis socket timeout for the hook: a request waits at most this long.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a push waits for REDIS_MIN_REPLICAS replicas (`WAIT`); well
/// under REDIS_TIMEOUT, the socket's.
const REPLICA_WAIT: Duration = Duration::from_secs(1);
/// What a 503 asks the client to wait, in seconds.
const RETRY_AFTER: &str = "5";

pub struct Hook {
    pub config: HookConfig,
    pub token: String,
    pub metrics: Metrics,
    next_req: AtomicU64,
    /// Clients following a build's log now (at most HOOK_MAX_FOLLOWERS).
    followers: AtomicUsize,
}

/// An answer: status, content type, body, extra headers.
struct Reply {
    code: u16,
    ctype: &'static str,
    body: String,
    /// Extra headers (`Allow` of a 405, a badge's `ETag`, a login's cookie).
    headers: Vec<(&'static str, String)>,
    /// `key=value` facts for the request's log line.
    facts: String,
    /// Follow this build's log on the connection thread (`?follow=1`).
    follow: Option<String>,
}

impl Reply {
    fn json(code: u16, value: Value) -> Reply {
        Reply { code, ctype: "application/json", body: format!("{value}\n"), headers: Vec::new(), facts: String::new(), follow: None }
    }

    /// One JSON sentence, `{"error": why}`; also on the log line.
    fn error(code: u16, why: impl Into<String>) -> Reply {
        let why = why.into();
        let mut r = Reply::json(code, json!({ "error": why }));
        r.facts = format!(" error={}", quote(&why));
        r
    }

    fn text(code: u16, body: String) -> Reply {
        Reply { code, ctype: "text/plain; charset=utf-8", body, headers: Vec::new(), facts: String::new(), follow: None }
    }
}

impl Hook {
    pub fn new(config: HookConfig, token: String) -> Hook {
        let metrics = Metrics::default();
        metrics.set_min_replicas(config.min_replicas);
        Hook { config, token, metrics, next_req: AtomicU64::new(1), followers: AtomicUsize::new(0) }
    }

    fn limits(&self) -> wire::Limits {
        wire::Limits { max_body: self.config.max_body, idle: self.config.idle_timeout, request: self.config.request_timeout }
    }
}

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 4096;

/// A complete request on its way to a worker, and where its answer goes.
struct Work {
    req: Arc<Request>,
    answer: Sender<(&'static str, Reply)>,
}

/// Accepts connections until `stop` is set. Each connection gets a thread of
/// its own that reads requests under the [`wire`] bounds and writes the
/// answers, so slow or idle clients only ever hold their own thread. Complete
/// requests wait in a queue of HOOK_QUEUE for HOOK_THREADS workers, each with
/// its Redis connection; when the queue is full the connection thread answers
/// 503 at once. The listener must carry SO_RCVTIMEO (see [`listen`]).
pub fn serve(hook: Arc<Hook>, listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(hook.config.queue);
    let mut workers = Vec::new();
    for _ in 0..hook.config.threads {
        let (hook, rx) = (Arc::clone(&hook), rx.clone());
        workers.push(std::thread::spawn(move || worker(&hook, &rx)));
    }
    wake_on_stop(&listener, &stop);
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
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
            connection(&hook, Conn::new(stream, hook.limits()), &tx);
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

/// The accept loop looks at `stop` only when accept returns (a connection,
/// or HOOK_IDLE_TIMEOUT): once `stop` is set, a thread connects to the
/// listener so that the hook stops at once, not up to 10 s later.
fn wake_on_stop(listener: &std::net::TcpListener, stop: &Arc<AtomicBool>) {
    let Ok(mut addr) = listener.local_addr() else { return };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let stop = Arc::clone(stop);
    let _ = std::thread::Builder::new().name("stop-wake".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    });
}

/// Binds `addr` with SO_RCVTIMEO/SO_SNDTIMEO set on the listening socket:
/// Linux copies them to every accepted socket, so every read and write of a
/// connection has HOOK_IDLE_TIMEOUT (reads nearer their request's deadline
/// get less, see [`wire`]); accept itself wakes up at the same pace to check
/// for shutdown. GitHub itself gives up on a hook after 10 s.
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

/// One connection's thread: read a request, have a worker answer it (or
/// answer 503 when the queue is full), write the answer; again while the
/// client keeps the connection alive. Refusals (408, 413, 431, malformed
/// requests) are answered here and close the connection.
fn connection(hook: &Hook, mut conn: Conn, tx: &Sender<Work>) {
    loop {
        match conn.next_request() {
            Next::Closed(why) => {
                log::debug!("connection.closed why={}", quote(&why));
                return;
            }
            Next::Refused(refusal) => {
                let started = Instant::now();
                let (method, path) = refusal.request.clone().unwrap_or_else(|| ("-".into(), "-".into()));
                let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p).to_string();
                let answer = response(Reply::error(refusal.code, refusal.why));
                let _ = conn.send(None, answer.0);
                log_request(hook, &method, &path, "edge", answer.1, started);
                conn.close_after_refusal();
                return;
            }
            Next::Request(req) => {
                let started = Instant::now();
                let req = Arc::new(req);
                let (route, mut reply) = dispatch(&req, tx);
                if let Some(id) = reply.follow.take() {
                    follow(hook, conn, &req, &id, started);
                    return;
                }
                let keep_alive = req.keep_alive;
                let answer = response(reply);
                let _ = conn.send(Some(&req), answer.0);
                log_request(hook, req.method.as_str(), req.path(), route, answer.1, started);
                if !keep_alive {
                    return;
                }
            }
        }
    }
}

/// Gives back a follower's slot when its thread is done with it.
struct FollowerSlot<'a>(&'a AtomicUsize);

impl Drop for FollowerSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Streams build `id`'s log on this connection thread, with a Redis
/// connection of its own, until the build ends (then the result line and the
/// close), the client stops reading (its write times out after
/// HOOK_IDLE_TIMEOUT) or leaves. At most HOOK_MAX_FOLLOWERS at once: past
/// it, 503.
fn follow(hook: &Hook, mut conn: Conn, req: &Request, id: &str, started: Instant) {
    let max = hook.config.max_followers;
    if hook.followers.fetch_add(1, Ordering::SeqCst) >= max {
        hook.followers.fetch_sub(1, Ordering::SeqCst);
        let answer = response(Reply::error(
            503,
            format!("HOOK_MAX_FOLLOWERS ({max}) clients already follow build logs; retry later or read /status without follow"),
        ));
        let _ = conn.send(Some(req), answer.0);
        log_request(hook, req.method.as_str(), req.path(), "follow", answer.1, started);
        return;
    }
    let _slot = FollowerSlot(&hook.followers);
    let redis = hook.config.redis_url.connect(REDIS_TIMEOUT).and_then(|conn| {
        conn.set_read_timeout(Some(crate::store::stream::FOLLOW_BLOCK + REDIS_TIMEOUT))?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
        Ok(conn)
    });
    let mut redis = match redis {
        Ok(r) => r,
        Err(e) => {
            let answer = response(redis_down(&e));
            let _ = conn.send(Some(req), answer.0);
            log_request(hook, req.method.as_str(), req.path(), "follow", answer.1, started);
            return;
        }
    };
    if let Err(e) = conn.start_stream(req, 200, "text/plain; charset=utf-8") {
        log::info!("follow.dropped id={id} error={}: the client left before the answer", quote(&e.to_string()));
        return;
    }
    log_request(hook, req.method.as_str(), req.path(), "follow", LogFacts { code: 200, facts: format!(" id={id} follow=1") }, started);
    let followed = crate::store::stream::follow(&mut redis, id, |text| {
        if text.is_empty() {
            return if conn.client_gone() { Err(std::io::ErrorKind::BrokenPipe.into()) } else { Ok(()) };
        }
        conn.chunk(text.as_bytes())
    });
    let ms = started.elapsed().as_millis();
    match followed {
        Ok(crate::store::stream::Followed::Ended) => {
            let _ = conn.end_stream();
            log::info!("follow.ended id={id} ms={ms}");
        }
        Ok(crate::store::stream::Followed::Gone) => {
            let _ = conn.chunk(format!("* build {id} is gone\n").as_bytes());
            let _ = conn.end_stream();
            log::info!("follow.ended id={id} ms={ms} why=gone");
        }
        Err(why) => log::info!("follow.dropped id={id} ms={ms} error={}: the follower stopped reading or left", quote(&why)),
    }
}

/// Hands a request to the workers and waits for its answer; a full queue is
/// answered 503 at once.
fn dispatch(req: &Arc<Request>, tx: &Sender<Work>) -> (&'static str, Reply) {
    let (answer, answered) = crossbeam_channel::bounded(1);
    match tx.try_send(Work { req: Arc::clone(req), answer }) {
        Ok(()) => answered.recv().unwrap_or_else(|_| ("error", Reply::error(500, "no worker answered this request; see the hook's log"))),
        Err(TrySendError::Full(_)) => {
            let queue = tx.capacity().unwrap_or(0);
            ("busy", Reply::error(503, format!("the hook is busy: HOOK_QUEUE ({queue}) requests already wait for a worker; retry later")))
        }
        Err(TrySendError::Disconnected(_)) => ("busy", Reply::error(503, "the hook is stopping; retry later")),
    }
}

/// A worker: answers requests with its own Redis connection. A panic while
/// answering is answered 500 (the panic message goes to stderr) and the
/// connection is dialed afresh; the worker goes on.
fn worker(hook: &Hook, rx: &Receiver<Work>) {
    let open = || Redis::open(&hook.config.redis_url, REDIS_TIMEOUT).ok();
    let mut redis = open();
    while let Ok(Work { req, answer }) = rx.recv() {
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(hook, redis.as_mut(), &req)));
        let reply = answered.unwrap_or_else(|_| {
            log::error!("http.worker_panicked method={} path={}", quote(req.method.as_str()), quote(req.path()));
            redis = open();
            ("error", Reply::error(500, "the hook failed on this request; see its log"))
        });
        let _ = answer.send(reply);
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

/// The tiny_http response of a reply, with what the log line needs.
struct Answer(Response<std::io::Cursor<Vec<u8>>>, LogFacts);

struct LogFacts {
    code: u16,
    facts: String,
}

fn response(reply: Reply) -> Answer {
    let mut response = Response::from_string(reply.body).with_status_code(reply.code);
    response.add_header(header("Content-Type", reply.ctype));
    if reply.code == 503 {
        response.add_header(header("Retry-After", RETRY_AFTER));
    }
    for (name, value) in &reply.headers {
        response.add_header(header(name, value));
    }
    Answer(response, LogFacts { code: reply.code, facts: reply.facts })
}

fn log_request(hook: &Hook, method: &str, path: &str, route: &'static str, facts: LogFacts, started: Instant) {
    let n = hook.next_req.fetch_add(1, Ordering::Relaxed);
    hook.metrics.count(route, facts.code);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let line = format!("request req={n} method={} path={} code={} ms={ms:.2}{}", quote(method), quote(path), facts.code, facts.facts);
    match facts.code {
        500.. => log::warn!("{line}"),
        _ => log::info!("{line}"),
    }
}

/// The methods a path answers (its `Allow`).
fn allowed(path: &str) -> &'static str {
    const READS: [&str; 5] = ["/status/", "/history/", "/repo/", "/builds/", "/badge/"];
    if path == "/" || path == "/login" {
        "GET, HEAD, POST"
    } else if path == "/ping" || path == "/metrics" || path == "/repos" || READS.iter().any(|p| path.starts_with(p)) {
        "GET, HEAD"
    } else {
        "POST"
    }
}

/// Routes that show build logs or records: behind HOOK_READ_TOKEN when set.
fn private(path: &str) -> bool {
    path == "/" || path == "/repos" || ["/status/", "/history/", "/repo/", "/builds/"].iter().any(|p| path.starts_with(p))
}

fn wants_html(req: &Request) -> bool {
    req.header("Accept").is_some_and(|a| a.contains("text/html"))
}

impl From<views::View> for Reply {
    fn from(v: views::View) -> Reply {
        Reply { code: v.code, ctype: v.ctype, body: v.body, headers: v.headers, facts: String::new(), follow: None }
    }
}

fn view(redis: &mut Redis, read: impl FnMut(&mut redis::Connection) -> redis::RedisResult<views::View>) -> Reply {
    match redis.run_again(read) {
        Ok(v) => v.into(),
        Err(e) => Reply::error(503, format!("redis unreachable: {e}")),
    }
}

fn route(hook: &Hook, redis: Option<&mut Redis>, req: &Request) -> (&'static str, Reply) {
    let Some(redis) = redis else {
        return ("error", Reply::error(503, "REDIS_URL cannot be used"));
    };
    let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
    let reading = matches!(req.method, Method::Get | Method::Head);
    if reading && private(path) {
        let cookies = req.header("Cookie");
        if !views::may_read(hook.config.read_token.as_deref(), req.header("Authorization"), cookies) {
            return ("unauthorized", views::refused(wants_html(req)).into());
        }
    }
    match (&req.method, path) {
        (Method::Get | Method::Head, "/ping") => ("ping", Reply::text(200, "pong\n".into())),
        (Method::Get | Method::Head, "/") if wants_html(req) => ("dashboard", view(redis, views::dashboard)),
        (Method::Get | Method::Head, "/") => ("repos", get_repos(redis, req)),
        (Method::Get | Method::Head, "/login") => ("login", views::refused(true).into()),
        (Method::Post, "/login") => ("login", views::login(hook.config.read_token.as_deref(), &req.body).into()),
        (Method::Get | Method::Head, p) if p.starts_with("/repo/") => match repo_and_branch(&p[6..], "") {
            Ok((repo, _)) => ("dashboard", view(redis, |c| views::repository(c, &repo, hook.config.history_keep))),
            Err(reply) => ("dashboard", reply),
        },
        (Method::Get | Method::Head, p) if p.starts_with("/builds/") => ("dashboard", view(redis, |c| views::build(c, &p[8..]))),
        (Method::Get | Method::Head, p) if p.starts_with("/badge/") && p.ends_with(".svg") => {
            match repo_and_branch(&p[7..p.len() - 4], query) {
                Ok((repo, branch)) => ("badge", view(redis, |c| views::badge(c, &repo, branch.as_deref(), req.header("If-None-Match")))),
                Err(reply) => ("badge", reply),
            }
        }
        (Method::Get | Method::Head, "/metrics") => {
            let body = match redis.run_again(|c| Ok(hook.metrics.render(Some(c)))) {
                Ok(text) => text,
                Err(_) => hook.metrics.render(None),
            };
            ("metrics", Reply { ctype: "text/plain; version=0.0.4", ..Reply::text(200, body) })
        }
        (Method::Get | Method::Head, p) if p.starts_with("/status/") => ("status", get_status(redis, req, &p[8..], query)),
        (Method::Get | Method::Head, p) if p.starts_with("/history/") => ("history", get_history(hook, redis, req, &p[9..], query)),
        (Method::Get | Method::Head, "/repos") => ("repos", get_repos(redis, req)),
        (Method::Post, p) if p.starts_with("/build/") => ("build", post_build(hook, redis, req, &p[7..], query)),
        (Method::Post, p) if p.starts_with("/cancel/") => ("cancel", post_cancel(hook, redis, req, &p[8..], query)),
        (Method::Post, p) if allowed(p).ends_with("POST") => ("push", post_push(hook, redis, req, p)),
        // Paths that only take POST (a push with hints) are unknown to GET.
        (Method::Get | Method::Head, p) if allowed(p) == "POST" => {
            ("other", Reply::error(404, format!("no such route: {} {path}", req.method)))
        }
        (method, p) => {
            let allow = allowed(p);
            let mut r = Reply::error(405, format!("method {method} is not allowed on {path}: use {}", allow.replace(", ", " or ")));
            r.headers.push(("Allow", allow.to_string()));
            ("other", r)
        }
    }
}

fn credentials(req: &Request) -> Credentials<'_> {
    Credentials {
        hub_sha256: req.header("X-Hub-Signature-256"),
        hub_sha1: req.header("X-Hub-Signature"),
        gitea: req.header("X-Gitea-Signature").or_else(|| req.header("X-Forgejo-Signature")),
        gitlab_token: req.header("X-Gitlab-Token"),
        bearer: req.header("Authorization").and_then(signature::bearer),
    }
}

fn redis_down(e: &redis::RedisError) -> Reply {
    Reply::error(503, format!("redis unreachable, nothing was queued: {e}"))
}

fn post_push(hook: &Hook, redis: &mut Redis, req: &Request, path: &str) -> Reply {
    let body = &req.body;
    if let Err(e) = signature::verify(&hook.token, body, &credentials(req)) {
        return Reply::error(403, e.to_string());
    }
    let parsed = payload::parse(&payload::Request {
        content_type: req.header("Content-Type"),
        github_event: req.header("X-GitHub-Event"),
        gitea_event: req.header("X-Gitea-Event").or_else(|| req.header("X-Gogs-Event")).or_else(|| req.header("X-Forgejo-Event")),
        gitlab_event: req.header("X-Gitlab-Event"),
        event_key: req.header("X-Event-Key"),
        body,
        policy: hook.config.policy,
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
    let delivery = req
        .header("X-GitHub-Delivery")
        .or_else(|| req.header("X-Gitea-Delivery"))
        .or_else(|| req.header("X-Gogs-Delivery"))
        .or_else(|| req.header("Idempotency-Key"))
        .or_else(|| req.header("X-Gitlab-Event-UUID"));
    let job = Job {
        push: &push,
        delivery,
        reset: false,
        keep: hook.config.history_keep,
        cancel_running: hook.config.cancel_running,
        routing: hook.config.routing,
    };
    enqueue(hook, redis, &job)
}

/// Runs the ENQUEUE script and, with REDIS_MIN_REPLICAS, `WAIT`s on the same
/// connection for that many replicas: a 2xx means the job is on the master
/// and on them. Short of them, 503: the job may be queued on the master,
/// and the sender's redelivery is caught by its delivery id or coalesces.
fn enqueue(hook: &Hook, redis: &mut Redis, job: &Job) -> Reply {
    let p = job.push;
    let short = payload::short_sha(&p.sha);
    let facts = format!(" repo={} branch={} sha={short}", quote(&p.repo), quote(&p.branch));
    let min = hook.config.min_replicas;
    let enqueued = redis.run_again(|c| {
        let enqueued = queue::enqueue(c, job)?;
        let wait = min > 0 && !matches!(enqueued, Enqueued::NoSlave { .. } | Enqueued::OtherRouting { .. });
        let acked = if wait { Some(crate::store::conn::replicas_acked(c, min, REPLICA_WAIT)?) } else { None };
        Ok((enqueued, acked))
    });
    let enqueued = match enqueued {
        Ok((e, Some(acked))) if acked < min => {
            let id = match &e {
                Enqueued::Queued { id, .. } | Enqueued::Coalesced { id, .. } | Enqueued::Duplicate { id } => id.as_str(),
                Enqueued::NoSlave { .. } | Enqueued::OtherRouting { .. } => "",
            };
            log::warn!("build.unreplicated id={id} acked={acked} min={min}");
            // A master that lost its replicas may have been replaced (a switchover leaves it up,
            // still a master, for seconds): the next request asks the sentinels again.
            redis.reconnect();
            let why = format!(
                "build {id} is queued on the Redis master, but only {acked} of REDIS_MIN_REPLICAS={min} replicas acknowledged it within {} ms, \
                 so a failover could lose it; retry: a redelivery is caught by its delivery id or coalesces with it",
                REPLICA_WAIT.as_millis()
            );
            let mut r = Reply::error(503, why);
            r.facts = format!("{facts} id={id} acked={acked}{}", r.facts);
            return r;
        }
        other => other.map(|(e, _)| e),
    };
    let mut reply = match enqueued {
        Err(e) => redis_down(&e),
        Ok(Enqueued::Queued { id, slave, canceled }) => {
            if let Some(old) = canceled {
                log::info!(
                    "build.canceled id={old} repo={} branch={} by={id}: superseded (HOOK_CANCEL_RUNNING)",
                    quote(&p.repo),
                    quote(&p.branch)
                );
            }
            queued(p, id, slave, false)
        }
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
        Ok(Enqueued::OtherRouting { agreed }) => Reply::error(
            503,
            format!(
                "this hook routes by HOOK_ROUTING={}, but the deployment agreed on {agreed} (Redis key ci:routing); restart this hook with HOOK_ROUTING={agreed}",
                job.routing.as_str()
            ),
        ),
    };
    reply.facts = format!("{facts}{}", reply.facts);
    reply
}

fn queued(p: &payload::Push, id: String, slave: String, coalesced: bool) -> Reply {
    let short = payload::short_sha(&p.sha);
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

/// The repository of a `/status/<repo>` or `/build/<repo>` path, and the
/// `?branch=`, both under the names rules of [`payload`].
fn repo_and_branch(raw_repo: &str, query: &str) -> Result<(String, Option<String>), Reply> {
    let bytes = payload::percent_decode(raw_repo.replace('+', "%2B").as_bytes());
    let Some(repo) = bytes.and_then(|b| String::from_utf8(b).ok()) else {
        return Err(Reply::error(400, "bad repository name in path: expected percent-encoded UTF-8"));
    };
    payload::check_repo(&repo).map_err(|e| Reply::error(400, e.0))?;
    let branch = query_param(query, "branch");
    if let Some(b) = &branch {
        payload::check_branch(b).map_err(|e| Reply::error(400, e.0))?;
    }
    Ok((repo, branch))
}

/// Text (the log) by default, JSON when `Accept` asks for it. Errors are JSON
/// either way; 412 is the failed build's log, as documented.
fn get_status(redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(reply) => return reply,
    };
    let wants_json = wants_json(req);
    let follow = req.method == Method::Get && query_param(query, "follow").is_some_and(|f| f == "1" || f == "true");
    if let Some(id) = query_param(query, "id") {
        return match redis.run_again(|c| record::build(c, &repo, &id)) {
            Err(e) => redis_down(&e),
            Ok(None) => Reply::error(404, format!("{repo:?} has no build {id:?} (ids are numbers; old builds leave after HISTORY_KEEP)")),
            Ok(Some(_)) if follow => Reply { follow: Some(id), ..Reply::text(200, String::new()) },
            Ok(Some(record)) if wants_json => Reply::json(200, record),
            Ok(Some(record)) => match redis.run_again(|c| record::record_text(c, &record)) {
                Err(e) => redis_down(&e),
                Ok((code, text)) => Reply::text(code, text),
            },
        };
    }
    if follow {
        return match redis.run_again(|c| record::history(c, &repo, branch.as_deref(), 1)) {
            Err(e) => redis_down(&e),
            Ok(Some(latest)) if !latest.is_empty() => {
                let id = latest[0]["id"].as_str().unwrap_or_default().to_string();
                Reply { follow: Some(id), ..Reply::text(200, String::new()) }
            }
            Ok(_) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        };
    }
    match redis.run_again(|c| record::read(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(Err(never_pushed)) => Reply::error(404, never_pushed),
        Ok(Ok(view)) if wants_json => Reply::json(200, view.json),
        Ok(Ok(view)) => Reply::text(view.code, view.text),
    }
}

fn wants_json(req: &Request) -> bool {
    req.header("Accept").is_some_and(|a| a.contains("application/json"))
}

/// The last builds of a branch, newest first: one line each, or JSON records.
fn get_history(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(reply) => return reply,
    };
    let keep = hook.config.history_keep;
    let limit = match query_param(query, "limit") {
        None => keep,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=keep).contains(&n) => n,
            _ => return Reply::error(400, format!("limit={l:?}: expected a number from 1 to {keep} (HISTORY_KEEP)")),
        },
    };
    match redis.run_again(|c| record::history(c, &repo, branch.as_deref(), limit)) {
        Err(e) => redis_down(&e),
        Ok(None) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        Ok(Some(records)) if wants_json(req) => Reply::json(200, Value::Array(records)),
        Ok(Some(records)) => Reply::text(200, records.iter().map(|r| format!("{}\n", record::record_line(r))).collect()),
    }
}

/// Every repository with its branches' latest builds.
fn get_repos(redis: &mut Redis, req: &Request) -> Reply {
    match redis.run_again(record::repos) {
        Err(e) => redis_down(&e),
        Ok(repos) if wants_json(req) => Reply::json(
            200,
            Value::Array(repos.into_iter().map(|(repo, branches)| json!({ "repo": repo, "branches": branches })).collect()),
        ),
        Ok(repos) => {
            let mut text = String::new();
            for (repo, branches) in &repos {
                for b in branches {
                    text.push_str(&format!("{repo} {} {}\n", b["branch"].as_str().unwrap_or(""), record::record_line(b)));
                }
            }
            Reply::text(200, text)
        }
    }
}

fn post_build(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    if let Err(e) = signature::verify_rebuild(&hook.token, &req.body, &credentials(req), crate::unix_now()) {
        return Reply::error(403, e.to_string());
    }
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(reply) => return reply,
    };
    let reset = req.header("X-Reset").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    match redis.run_again(|c| queue::last_push(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(None) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        Ok(Some(push)) => enqueue(
            hook,
            redis,
            &Job {
                push: &push,
                delivery: None,
                reset,
                keep: hook.config.history_keep,
                cancel_running: hook.config.cancel_running,
                routing: hook.config.routing,
            },
        ),
    }
}

/// `POST /cancel/<repo>?branch=B|?id=N`, authenticated like `POST /build`:
/// 202 `{"id","state"}` when the build was queued (now canceled) or running
/// (now canceled, its slave kills it); 200 with the reason when it had
/// already finished; 404 when there is no such build.
fn post_cancel(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    if let Err(e) = signature::verify_rebuild(&hook.token, &req.body, &credentials(req), crate::unix_now()) {
        return Reply::error(403, e.to_string());
    }
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(reply) => return reply,
    };
    let id = query_param(query, "id");
    let result = redis.run_again(|c| {
        if let Some(id) = &id {
            return queue::cancel(c, &repo, queue::CancelTarget::Id(id), "by POST /cancel").map(Some);
        }
        match queue::branch_or_default(c, &repo, branch.as_deref())? {
            Some(b) => queue::cancel(c, &repo, queue::CancelTarget::Branch(&b), "by POST /cancel").map(Some),
            None => Ok(None),
        }
    });
    let what = match (&id, &branch) {
        (Some(id), _) => format!("build {id:?}"),
        (None, Some(b)) => format!("a build of branch {b:?}"),
        (None, None) => "a build of its default branch".to_string(),
    };
    let mut reply = match result {
        Err(e) => return Reply::error(503, format!("redis unreachable, nothing was canceled: {e}")),
        Ok(None | Some(Canceled::NoSuchBuild)) => return Reply::error(404, format!("{repo:?} has no {what}")),
        Ok(Some(Canceled::Queued { id })) => {
            log::info!("build.canceled id={id} repo={} was=queued: by POST /cancel", quote(&repo));
            Reply::json(202, json!({ "id": id, "state": "canceled" }))
        }
        Ok(Some(Canceled::Running { id })) => {
            log::info!("build.canceled id={id} repo={} was=running: by POST /cancel; its slave kills it", quote(&repo));
            Reply::json(202, json!({ "id": id, "state": "canceled" }))
        }
        Ok(Some(Canceled::Finished { id, state })) => Reply::json(
            200,
            json!({ "id": id, "state": state, "reason": format!("build {id} had already finished ({state}): nothing to cancel") }),
        ),
    };
    reply.facts = format!(" repo={}", quote(&repo));
    reply
}
