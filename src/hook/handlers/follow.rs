//! `GET /status/<repo>?follow=1`: a build's live log streamed over chunked
//! HTTP on the connection's own thread, at most HOOK_MAX_FOLLOWERS at once.

use crate::hook::reply::{redis_down, response, LogFacts, Reply};
use crate::hook::state::{log_request, Hook, REDIS_TIMEOUT};
use crate::hook::wire::{Answer, Conn, Request};
use crate::logging::quote;
use crate::store::stream::{self, Followed};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

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
pub(crate) fn follow(hook: &Hook, mut conn: Conn, req: &Request, id: &str, started: Instant) {
    let max = hook.config.max_followers;
    if hook.followers.fetch_add(1, Ordering::SeqCst) >= max {
        hook.followers.fetch_sub(1, Ordering::SeqCst);
        let busy = format!("HOOK_MAX_FOLLOWERS ({max}) clients already follow build logs; retry later or read /status without follow");
        return refuse(hook, &mut conn, req, Reply::error(503, busy), started);
    }
    let _slot = FollowerSlot(&hook.followers);
    let redis = hook.redis.connect(REDIS_TIMEOUT).and_then(|conn| {
        conn.set_read_timeout(Some(stream::FOLLOW_BLOCK + REDIS_TIMEOUT))?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
        Ok(conn)
    });
    let mut redis = match redis {
        Ok(r) => r,
        Err(e) => return refuse(hook, &mut conn, req, redis_down(&e), started),
    };
    if let Err(e) = conn.start_stream(req, &live_log()) {
        log::info!("follow.dropped id={id} error={}: the client left before the answer", quote(&e.to_string()));
        return;
    }
    log_request(hook, req.method.as_str(), req.path(), "follow", LogFacts { code: 200, facts: format!(" id={id} follow=1") }, started);
    stream_log(&mut redis, conn, id, started);
}

/// Answers `reply` instead of the log; the connection closes after it.
fn refuse(hook: &Hook, conn: &mut Conn, req: &Request, reply: Reply, started: Instant) {
    let (answer, facts) = response(reply);
    let _ = conn.send(Some(req), &answer);
    log_request(hook, req.method.as_str(), req.path(), "follow", facts, started);
}

/// The head of a followed log; its body is streamed.
fn live_log() -> Answer {
    let headers = vec![
        ("Content-Type", "text/plain; charset=utf-8".to_string()),
        ("Cache-Control", "no-store".to_string()),
        ("X-Content-Type-Options", "nosniff".to_string()),
    ];
    Answer { code: 200, headers, body: Vec::new() }
}

/// Sends each line of the log as it is published, then ends the answer.
fn stream_log(redis: &mut redis::Connection, mut conn: Conn, id: &str, started: Instant) {
    let followed = stream::follow(redis, id, |text| {
        if text.is_empty() {
            return if conn.client_gone() { Err(std::io::ErrorKind::BrokenPipe.into()) } else { Ok(()) };
        }
        // Text: the lines' colour sequences stripped, as `/status` does.
        conn.chunk(crate::ansi::strip(text).as_bytes())
    });
    let ms = started.elapsed().as_millis();
    match followed {
        Ok(Followed::Ended) => {
            let _ = conn.end_stream();
            log::info!("follow.ended id={id} ms={ms}");
        }
        Ok(Followed::Gone) => {
            let _ = conn.chunk(format!("* build {id} is gone\n").as_bytes());
            let _ = conn.end_stream();
            log::info!("follow.ended id={id} ms={ms} why=gone");
        }
        Err(why) => log::info!("follow.dropped id={id} ms={ms} error={}: the follower stopped reading or left", quote(&why.to_string())),
    }
}
