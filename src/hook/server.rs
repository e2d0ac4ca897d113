//! The hook's accept loop and connections: a thread per connection reading
//! bounded requests ([`crate::hook::wire`]), a bounded queue to the worker pool, each
//! worker with its Redis connection answering through [`routes`], one log
//! line per request.

use crate::hook::connections::{Connections, Ticket};
use crate::hook::handlers::follow;
use crate::hook::reply::{response, Reply};
use crate::hook::routes;
use crate::hook::state::{log_request, Hook, REDIS_TIMEOUT};
use crate::hook::wire::{Conn, Next, Request};
use crate::logging::quote;
use crate::store::conn::Redis;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
/// 503 at once. Once `stop` is set, the hook stops taking connections at once.
pub fn serve(hook: Arc<Hook>, listener: std::net::TcpListener, stop: Arc<AtomicBool>) {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(hook.config.queue);
    let mut workers = Vec::new();
    for _ in 0..hook.config.threads {
        let (hook, rx) = (Arc::clone(&hook), rx.clone());
        workers.push(std::thread::spawn(move || worker(&hook, &rx)));
    }
    let stopped = Arc::new(AtomicBool::new(false));
    wake_on_stop(&listener, &stop, &stopped);
    let connections = Connections::new(hook.config.max_connections);
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("http.accept_failed error={}", quote(&e.to_string()));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let Some(ticket) = connections.admit(&stream) else {
            log::warn!("http.refused open={}: every connection is being answered, closing the new one", hook.config.max_connections);
            continue;
        };
        let (hook, tx) = (Arc::clone(&hook), tx.clone());
        let spawned = std::thread::Builder::new().stack_size(256 * 1024).spawn(move || match Conn::new(stream, hook.limits()) {
            Ok(conn) => connection(&hook, conn, &tx, &ticket),
            Err(e) => log::debug!("connection.closed why={}", quote(&format!("cannot set its timeouts: {e}"))),
        });
        if let Err(e) = spawned {
            log::warn!("http.thread_failed error={}", quote(&e.to_string()));
        }
    }
    stopped.store(true, Ordering::SeqCst);
    drop(tx);
    for w in workers {
        let _ = w.join();
    }
}
/// Accept blocks until a connection arrives, so once `stop` is set a thread
/// connects to the listener, again until the accept loop has `stopped` (a
/// full backlog can drop one attempt), and the hook stops at once.
fn wake_on_stop(listener: &std::net::TcpListener, stop: &Arc<AtomicBool>, stopped: &Arc<AtomicBool>) {
    let Ok(mut addr) = listener.local_addr() else { return };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let (stop, stopped) = (Arc::clone(stop), Arc::clone(stopped));
    let _ = std::thread::Builder::new().name("stop-wake".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        while !stopped.load(Ordering::SeqCst) {
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}
/// One connection's thread: read a request, have a worker answer it (or
/// answer 503 when the queue is full), write the answer; again while the
/// client keeps the connection alive. Refusals (408, 413, 431, malformed
/// requests) are answered here and close the connection.
fn connection(hook: &Hook, mut conn: Conn, tx: &Sender<Work>, ticket: &Ticket) {
    loop {
        ticket.reading(true);
        let next = conn.next_request();
        ticket.reading(false);
        match next {
            Next::Closed(why) => {
                log::debug!("connection.closed why={}", quote(&why));
                return;
            }
            Next::Refused(refusal) => {
                let started = Instant::now();
                let (method, path) = refusal.request.clone().unwrap_or_else(|| ("-".into(), "-".into()));
                let path = path.split_once('?').map_or(path.as_str(), |(p, _)| p).to_string();
                let (answer, facts) = response(Reply::error(refusal.code, refusal.why));
                let _ = conn.send(None, &answer);
                log_request(hook, &method, &path, "edge", facts, started);
                conn.close_after_refusal();
                return;
            }
            Next::Request(req) => {
                let started = Instant::now();
                let req = Arc::new(req);
                let (route, mut reply) = dispatch(&req, tx);
                if let Some(id) = reply.follow.take() {
                    follow::follow(hook, conn, &req, &id, started);
                    return;
                }
                let keep_alive = req.keep_alive;
                let (answer, facts) = response(reply);
                let _ = conn.send(Some(&req), &answer);
                log_request(hook, req.method.as_str(), req.path(), route, facts, started);
                if !keep_alive {
                    return;
                }
            }
        }
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
    let open = || Redis::open(&hook.redis, REDIS_TIMEOUT);
    let mut redis = open();
    while let Ok(Work { req, answer }) = rx.recv() {
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| routes::route(hook, &mut redis, &req)));
        let reply = answered.unwrap_or_else(|_| {
            log::error!("http.worker_panicked method={} path={}", quote(req.method.as_str()), quote(req.path()));
            redis = open();
            ("error", Reply::error(500, "the hook failed on this request; see its log"))
        });
        let _ = answer.send(reply);
    }
}
