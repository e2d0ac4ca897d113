//! The schedules' thread (`HOOK_CRON`): sleeps to each UTC minute boundary
//! and, for every schedule that minute matches, queues one build of the
//! branch's last push with event `cron` — in the one hook that claims the
//! schedule's minute in Redis. A minute this hook slept through (it was down,
//! or Redis stayed out of reach all minute) is not made up later
//! ([docs/schedules.md](../../docs/schedules.md)).

use crate::config::CancelRunning;
use crate::cron::{Minute, Schedule};
use crate::hook::state::{Hook, REDIS_TIMEOUT};
use crate::logging::quote;
use crate::payload::{self, Event, Push};
use crate::routing::Routing;
use crate::store::conn::{Backoff, Redis};
use crate::store::queue::{self, Enqueued, Job};
use redis::{Connection, RedisResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a hook fires: its name in the minute's claim, and the enqueue
/// settings every job of this hook carries.
pub struct Firing<'a> {
    /// Unique to this hook process ([`owner_name`]).
    pub owner: &'a str,
    pub keep: usize,
    pub cancel_running: CancelRunning,
    pub routing: Routing,
}

/// What firing a schedule in a minute did.
#[derive(Debug, PartialEq, Eq)]
pub enum Fired {
    /// Another hook claimed this schedule's minute: it fires it.
    Taken,
    /// Claimed, but the branch was never pushed: nothing to build.
    UnknownBranch,
    /// Claimed and handed to the queue: the push built, and what the queue did.
    Enqueued { push: Box<Push>, enqueued: Enqueued },
}

/// Fires `schedule` for `unix_minute` (seconds since the epoch / 60): claims
/// the minute, reads the branch's last push, queues it with event `cron`.
/// Safe to call again after an error: the claim remembers its owner, and a
/// second enqueue of the same push coalesces with the pending build.
pub fn fire(conn: &mut Connection, schedule: &Schedule, unix_minute: u64, how: &Firing) -> RedisResult<Fired> {
    if !crate::store::cron::claim(conn, &schedule.id, unix_minute, how.owner)? {
        return Ok(Fired::Taken);
    }
    let Some(last) = queue::last_push(conn, &schedule.repo, Some(&schedule.branch))? else {
        return Ok(Fired::UnknownBranch);
    };
    let push = Push { event: Event::Cron, ..last };
    let job = Job {
        push: &push,
        delivery: None,
        reset: false,
        keep: how.keep,
        cancel_running: how.cancel_running,
        routing: how.routing,
        alone: false,
    };
    let enqueued = queue::enqueue(conn, &job)?;
    Ok(Fired::Enqueued { push: Box::new(push), enqueued })
}

/// A name for this hook process in the claims: host-independent random hex.
pub fn owner_name() -> String {
    let mut id = [0u8; 8];
    if getrandom::fill(&mut id).is_err() {
        // The clock's nanoseconds and the pid: still unique enough between hooks.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        id[..4].copy_from_slice(&nanos.to_le_bytes());
        id[4..].copy_from_slice(&std::process::id().to_le_bytes());
    }
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// The thread: runs until `stop`. Each minute boundary crossed fires the
/// schedules of that minute; Redis errors are retried (WARN) until the
/// minute ends, then those schedules are logged `cron.missed`.
pub fn run(hook: Arc<Hook>, schedules: Vec<Schedule>, stop: Arc<AtomicBool>) {
    let owner = owner_name();
    log::info!("cron.started schedules={} owner={owner}", schedules.len());
    let how =
        Firing { owner: &owner, keep: hook.config.history_keep, cancel_running: hook.config.cancel_running, routing: hook.config.routing };
    let mut redis = Redis::open(&hook.redis, REDIS_TIMEOUT);
    let mut last = unix_minute();
    loop {
        if !sleep_until((last + 1) * 60, &stop) {
            return;
        }
        let now = unix_minute();
        if now <= last {
            continue; // woke early, or the clock went back: that minute was fired
        }
        last = now;
        let m = Minute::of(now);
        let due: Vec<&Schedule> = schedules.iter().filter(|s| s.matches(m)).collect();
        if !due.is_empty() {
            fire_minute(&hook, &mut redis, &due, now, &how, &stop);
        }
    }
}

fn unix_minute() -> u64 {
    (crate::unix_now() / 60.0) as u64
}

/// Sleeps until the wall clock reaches `unix_secs` (in slices, so a stop or a
/// clock step is seen within half a second); false when stopped.
fn sleep_until(unix_secs: u64, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = unix_secs as f64 - crate::unix_now();
        if left <= 0.0 {
            return true;
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(0.5)));
    }
}

/// Fires every due schedule of `minute`, retrying Redis errors (from the
/// schedule that met one) until the minute is over; what is left then is
/// logged `cron.missed`.
fn fire_minute(hook: &Hook, redis: &mut Redis, due: &[&Schedule], minute: u64, how: &Firing, stop: &AtomicBool) {
    let ends = (minute + 1) as f64 * 60.0;
    let mut pending: &[&Schedule] = due;
    let mut backoff = Backoff::default();
    let mut error = String::new();
    while !pending.is_empty() && crate::unix_now() < ends && !stop.load(Ordering::SeqCst) {
        let s = pending[0];
        let started = Instant::now();
        match redis.run_again(|c| fire(c, s, minute, how)) {
            Ok(fired) => {
                report(hook, s, minute, fired, started);
                pending = &pending[1..];
                backoff = Backoff::default();
            }
            Err(e) => {
                error = e.to_string();
                let delay = backoff.next_delay();
                if crate::unix_now() + delay.as_secs_f64() >= ends {
                    break;
                }
                log::warn!(
                    "redis.unreachable op=cron minute={minute} schedules={} redis={} error={} retry_ms={}",
                    pending.len(),
                    quote(&hook.redis.to_string()),
                    quote(&error),
                    delay.as_millis()
                );
                std::thread::sleep(delay);
            }
        }
    }
    for s in pending {
        log::warn!(
            "cron.missed repo={} branch={} schedule={} line={} minute={minute} error={}: not fired within its minute; it fires again at its next one",
            quote(&s.repo),
            quote(&s.branch),
            s.id,
            s.line,
            quote(if error.is_empty() { "stopped or late" } else { &error })
        );
    }
}

/// The one log line of a fired schedule (none when another hook fires it).
fn report(hook: &Hook, s: &Schedule, minute: u64, fired: Fired, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (repo, branch) = (quote(&s.repo), quote(&s.branch));
    match fired {
        Fired::Taken => log::debug!("cron.taken repo={repo} branch={branch} schedule={} minute={minute}: another hook fires it", s.id),
        Fired::UnknownBranch => log::warn!(
            "cron.unknown_branch repo={repo} branch={branch} schedule={} line={} minute={minute}: never pushed, so nothing to build; the schedule fires again at its next minute",
            s.id,
            s.line
        ),
        Fired::Enqueued { push, enqueued } => {
            let sha = payload::short_sha(&push.sha);
            match enqueued {
                Enqueued::Queued { id, slave, canceled } => {
                    hook.metrics.count_cron_build();
                    if let Some(old) = canceled {
                        log::info!("build.canceled id={old} repo={repo} branch={branch} by={id}: superseded (HOOK_CANCEL_RUNNING)");
                    }
                    log::info!("cron.queued repo={repo} branch={branch} sha={sha} id={id} slave={slave} schedule={} minute={minute} ms={ms:.2}", s.id);
                }
                Enqueued::Coalesced { id, slave } => {
                    hook.metrics.count_cron_build();
                    log::info!(
                        "cron.queued repo={repo} branch={branch} sha={sha} id={id} slave={slave} schedule={} minute={minute} coalesced=true ms={ms:.2}",
                        s.id
                    );
                }
                Enqueued::Duplicate { id } => log::info!("cron.queued repo={repo} branch={branch} sha={sha} id={id} schedule={} minute={minute} duplicate=true", s.id),
                Enqueued::NoSlave { live } => log::warn!(
                    "cron.noslave repo={repo} branch={branch} sha={sha} schedule={} minute={minute} live={}: no live slave cluster offers {}; not queued",
                    s.id,
                    quote(if live.is_empty() { "none" } else { &live }),
                    if push.hints.is_empty() { "any".to_string() } else { push.hints.join("+") }
                ),
                Enqueued::OtherRouting { agreed } => log::error!(
                    "cron.refused repo={repo} branch={branch} sha={sha} schedule={} minute={minute}: this hook routes by HOOK_ROUTING={}, the deployment by {agreed}; restart it with HOOK_ROUTING={agreed}",
                    s.id,
                    hook.config.routing.as_str()
                ),
            }
        }
    }
}
