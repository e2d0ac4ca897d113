//! Live build logs: a running build's lines in a capped Redis Stream,
//! [`keys::log`] (entries `line`, then one `end` with the result). The slave
//! publishes from one thread of its own fed by a bounded channel — a full
//! channel drops lines and counts them, the build never waits; the hook reads
//! the stream for `/status` of a running build and for followers
//! (`?follow=1`), each on its own connection thread and Redis connection.

use crate::logging::quote;
use crate::store::conn::Redis;
use crate::store::keys;
use crossbeam_channel::{Receiver, Sender};
use redis::{Connection, RedisResult};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Entries a stream keeps (about: `MAXLEN ~`).
pub const STREAM_CAP: usize = 10_000;
/// Lines waiting for the publisher thread; more are dropped (and counted).
const CHANNEL: usize = 4096;
/// Commands in one pipeline to Redis, at most.
const BATCH: usize = 256;
/// How long a finished build's stream stays.
pub const ENDED_TTL_SECS: u64 = 3600;
/// How long a stream stays without an end (its slave died): renewed by each batch.
const RUNNING_TTL_SECS: u64 = 2 * 86_400;
/// Entries a follower reads at once (its memory: this many lines of at most ~4 KiB).
const FOLLOW_COUNT: usize = 64;
/// How long a follower's XREAD blocks before it looks at the build's state.
pub const FOLLOW_BLOCK: Duration = Duration::from_secs(1);
/// Lines of the stream a text `/status` of a running build shows, at most (the last ones).
pub const SHOWN_SO_FAR: usize = 2000;

/// The field of a stream's last entry, the result (written by FINISH with the record).
pub const END_FIELD: &str = "end";
/// How long a build's end waits for its lines to be published before it is stored.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// How long the publisher waits for more lines after the first of a batch:
/// a build that ends meanwhile gets its last lines back, and FINISH writes
/// them with the result, in one fsync'd write instead of two in a row.
const LINGER: Duration = Duration::from_millis(2);
/// Most lines handed back to a closing build (more are written first).
const HAND_BACK: usize = 64;
/// The field of a stream's line entries.
pub const LINE_FIELD: &str = "line";

enum Msg {
    Begin(Arc<str>),
    Line(Arc<str>, String),
    /// The build is over: its lines written before this batch are written;
    /// the sender gets the rest back (FINISH writes them).
    Closed(Arc<str>, Sender<Vec<String>>),
}

/// The slave's side: one thread writing every build's lines to Redis.
#[derive(Clone)]
pub struct Publisher {
    tx: Sender<Msg>,
}

impl Publisher {
    /// Starts the publisher thread with its own Redis connection.
    pub fn start(redis_url: &crate::store::conn::Target) -> std::io::Result<Publisher> {
        let mut redis = Redis::open(redis_url, Duration::from_secs(5));
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        std::thread::Builder::new().name("live-log".into()).spawn(move || publish(&mut redis, &rx))?;
        Ok(Publisher { tx })
    }

    /// The live log of build `id`, emptied of what an earlier attempt wrote.
    pub fn for_build(&self, id: &str) -> BuildLog {
        let id: Arc<str> = Arc::from(id);
        let _ = self.tx.send_timeout(Msg::Begin(Arc::clone(&id)), Duration::from_secs(1));
        BuildLog { id, tx: self.tx.clone(), dropped: Arc::new(AtomicU64::new(0)) }
    }
}

/// One build's live log: lines go in without ever blocking.
#[derive(Clone)]
pub struct BuildLog {
    id: Arc<str>,
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl BuildLog {
    /// Publishes a line, or counts it dropped when the channel is full.
    pub fn line(&self, line: &str) {
        if self.tx.is_full() || self.tx.try_send(Msg::Line(Arc::clone(&self.id), line.to_string())).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether a line would be taken now.
    pub fn has_room(&self) -> bool {
        !self.tx.is_full()
    }

    /// `n` lines were dropped before reaching [`BuildLog::line`].
    pub fn count_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The build is over and its result about to be stored: its lines are
    /// published (waited for, up to a second), so that the `end` entry FINISH
    /// writes with the record comes after them — but for the last few, which
    /// are returned for FINISH to write before its `end`.
    pub fn close(&self) -> Vec<String> {
        let dropped = self.dropped();
        if dropped > 0 {
            log::warn!("live.lines_dropped id={} lines={dropped}: the live log fell behind the build's output", self.id);
            let note = format!("* ({dropped} lines were not published live: the output came faster than Redis took it)");
            let _ = self.tx.send_timeout(Msg::Line(Arc::clone(&self.id), note), CLOSE_WAIT);
        }
        let (ack, written) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Msg::Closed(Arc::clone(&self.id), ack), CLOSE_WAIT).is_ok() {
            return written.recv_timeout(CLOSE_WAIT).unwrap_or_default();
        }
        Vec::new()
    }
}

/// The publisher thread: takes what waits (up to BATCH, for up to LINGER
/// after the first), one pipeline per batch. A build closed in the batch gets
/// its lines of the batch back instead (up to HAND_BACK, and unless the batch
/// also began it). When Redis refuses a batch (OOM: it is full), the live logs
/// of that batch's builds are deleted and their later lines not published:
/// results, queues and leases need that memory more.
fn publish(redis: &mut Redis, rx: &Receiver<Msg>) {
    let mut silenced: HashSet<Arc<str>> = HashSet::new();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = std::time::Instant::now() + LINGER;
        while batch.len() < BATCH && !matches!(batch.last(), Some(Msg::Closed(..))) {
            match rx.recv_deadline(until) {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // Closed builds whose lines of this batch go back to them, and those lines.
        let mut back: Vec<(Arc<str>, Vec<String>)> = batch
            .iter()
            .filter_map(|m| match m {
                Msg::Closed(id, _) => Some(id),
                _ => None,
            })
            .filter(|id| {
                !batch.iter().any(|m| matches!(m, Msg::Begin(i) if i == *id))
                    && batch.iter().filter(|m| matches!(m, Msg::Line(i, _) if i == *id)).count() <= HAND_BACK
            })
            .map(|id| (Arc::clone(id), Vec::new()))
            .collect();
        let mut pipe = redis::pipe();
        let mut ids: Vec<Arc<str>> = Vec::new();
        let mut acks: Vec<(Arc<str>, Sender<Vec<String>>)> = Vec::new();
        for msg in &batch {
            match msg {
                Msg::Begin(id) => {
                    silenced.remove(id);
                    pipe.cmd("DEL").arg(keys::log(id)).ignore();
                }
                Msg::Line(id, _) if silenced.contains(id) => continue,
                Msg::Line(id, line) => match back.iter_mut().find(|(i, _)| i == id) {
                    Some((_, lines)) => {
                        lines.push(line.clone());
                        continue;
                    }
                    None => {
                        pipe.cmd("XADD")
                            .arg(keys::log(id))
                            .arg("MAXLEN")
                            .arg("~")
                            .arg(STREAM_CAP)
                            .arg("*")
                            .arg(LINE_FIELD)
                            .arg(line)
                            .ignore();
                    }
                },
                Msg::Closed(id, ack) => {
                    silenced.remove(id);
                    acks.push((Arc::clone(id), ack.clone()));
                    continue;
                }
            }
            let (Msg::Begin(id) | Msg::Line(id, _)) = msg else { continue };
            if !ids.contains(id) {
                ids.push(Arc::clone(id));
            }
        }
        // What the pipeline writes for them is written before they hear back; the
        // rest hear now, before the pipeline's round trip.
        let (now, after): (Vec<_>, Vec<_>) = acks.into_iter().partition(|(id, _)| !ids.contains(id));
        acknowledge(now, &mut back);
        if ids.is_empty() {
            acknowledge(after, &mut back);
            continue;
        }
        // A stream stays 2 days while lines come (its slave may die), an hour
        // after its end (FINISH sets that; a late batch of a closed build too).
        for id in &ids {
            let closed = batch.iter().any(|m| matches!(m, Msg::Closed(c, _) if c == id));
            pipe.cmd("EXPIRE").arg(keys::log(id)).arg(if closed { ENDED_TTL_SECS } else { RUNNING_TTL_SECS }).ignore();
        }
        match redis.run(|c| pipe.query::<()>(c)) {
            Ok(()) => {}
            Err(e) if crate::store::conn::is_connection_error(&e) => {
                log::warn!("live.unpublished entries={} error={}: these live-log entries are lost", batch.len(), quote(&e.to_string()));
            }
            Err(e) => {
                let mut del = redis::pipe();
                for id in &ids {
                    del.cmd("DEL").arg(keys::log(id)).ignore();
                    silenced.insert(Arc::clone(id));
                }
                let _ = redis.run(|c| del.query::<()>(c));
                let names: Vec<&str> = ids.iter().map(|i| &**i).collect();
                log::error!(
                    "live.stopped ids={} error={}: redis refused the live log; it is deleted and no longer published for these builds",
                    names.join(","),
                    quote(&e.to_string())
                );
            }
        }
        acknowledge(after, &mut back);
    }
}

/// Tells each closing build that its lines were written (or given up on),
/// handing back those it is to write itself.
fn acknowledge(acks: Vec<(Arc<str>, Sender<Vec<String>>)>, back: &mut [(Arc<str>, Vec<String>)]) {
    for (id, ack) in acks {
        let lines = back.iter_mut().find(|(i, _)| *i == id).map(|(_, l)| std::mem::take(l)).unwrap_or_default();
        let _ = ack.try_send(lines);
    }
}

type Entry = (String, Vec<String>);

/// What an entry says: a log line, or the end with its result.
enum Said {
    Line(String),
    End(String),
}

fn said(fields: &[String]) -> Option<Said> {
    match fields {
        [k, v, ..] if k == LINE_FIELD => Some(Said::Line(v.clone())),
        [k, v, ..] if k == END_FIELD => Some(Said::End(v.clone())),
        _ => None,
    }
}

/// The last `max` lines of a build's live log, oldest first.
pub fn lines_so_far(conn: &mut Connection, id: &str, max: usize) -> RedisResult<Vec<String>> {
    let entries: Vec<Entry> = redis::cmd("XREVRANGE").arg(keys::log(id)).arg("+").arg("-").arg("COUNT").arg(max).query(conn)?;
    Ok(entries
        .into_iter()
        .rev()
        .filter_map(|(_, f)| match said(&f) {
            Some(Said::Line(l)) => Some(l),
            _ => None,
        })
        .collect())
}

/// Why a follow ended.
pub enum Followed {
    /// The result line was written.
    Ended,
    /// The record is gone.
    Gone,
}

/// Why a follow ended before its build did.
#[derive(Debug)]
pub enum FollowError {
    /// Redis failed to answer (the follower gets no more lines).
    Redis(redis::RedisError),
    /// The follower stopped reading or left.
    Write(std::io::Error),
}

impl std::fmt::Display for FollowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FollowError::Redis(e) => write!(f, "redis: {e}"),
            FollowError::Write(e) => write!(f, "write: {e}"),
        }
    }
}

/// Writes build `id`'s log to `out` as it grows, one call per batch of
/// lines (each ending with `\n`), until the build ends; then its result line.
/// While nothing comes, `out` gets `""` every FOLLOW_BLOCK (to notice a
/// client that left).
/// A build already finished: its stored log, then the result line. `conn`
/// must have a read timeout above [`FOLLOW_BLOCK`]. Errors: Redis's, or
/// `out`'s (a follower that stopped reading: its write timed out).
pub fn follow(conn: &mut Connection, id: &str, mut out: impl FnMut(&str) -> std::io::Result<()>) -> Result<Followed, FollowError> {
    let redis_err = FollowError::Redis;
    let write_err = FollowError::Write;
    let key = keys::log(id);
    let finished = |conn: &mut Connection| -> Result<Option<(String, Vec<String>)>, FollowError> {
        let (state, log): (Option<String>, Option<String>) =
            redis::cmd("HMGET").arg(keys::build(id)).arg("state").arg("log").query(conn).map_err(redis_err)?;
        match state.as_deref() {
            None => Ok(Some((String::new(), vec![]))),
            Some(s @ ("passed" | "failed" | "canceled")) => {
                Ok(Some((s.to_string(), log.and_then(|l| serde_json::from_str(&l).ok()).unwrap_or_default())))
            }
            Some(_) => Ok(None),
        }
    };
    if let Some((state, log)) = finished(conn)? {
        if state.is_empty() {
            return Ok(Followed::Gone);
        }
        let mut text: String = log.iter().map(|l| format!("{l}\n")).collect();
        text.push_str(&format!("{state}\n"));
        out(&text).map_err(write_err)?;
        return Ok(Followed::Ended);
    }
    let mut last = "0-0".to_string();
    let mut quiet_after_end = 0;
    loop {
        let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(FOLLOW_COUNT)
            .arg("BLOCK")
            .arg(FOLLOW_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query(conn)
            .map_err(redis_err)?;
        let entries: Vec<Entry> = reply.into_iter().flatten().flat_map(|(_, e)| e).collect();
        if entries.is_empty() {
            // Quiet for a while: a build that ended without its `end` entry
            // (dropped, or published by a slave that died) ends the follow
            // on the second quiet read after its result is stored.
            out("").map_err(write_err)?;
            if let Some((state, _)) = finished(conn)? {
                if state.is_empty() {
                    return Ok(Followed::Gone);
                }
                quiet_after_end += 1;
                if quiet_after_end >= 2 {
                    out(&format!("{state}\n")).map_err(write_err)?;
                    return Ok(Followed::Ended);
                }
            }
            continue;
        }
        let mut text = String::new();
        let mut ended = false;
        for (entry_id, fields) in entries {
            last = entry_id;
            match said(&fields) {
                Some(Said::Line(l)) => {
                    text.push_str(&l);
                    text.push('\n');
                }
                Some(Said::End(result)) => {
                    text.push_str(&result);
                    text.push('\n');
                    ended = true;
                    break;
                }
                None => {}
            }
        }
        out(&text).map_err(write_err)?;
        if ended {
            return Ok(Followed::Ended);
        }
    }
}
