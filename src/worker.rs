//! The slave's loop: claim an index, take jobs reliably, build, store the
//! result (retrying while Redis is away, failing it when Redis refuses it),
//! keep indexes contiguous, and stop gracefully. The lease and re-routing run
//! beside it (`heartbeat`).

use crate::build;
use crate::config::SlaveConfig;
use crate::forge::{self, Poster};
use crate::heartbeat::{self, State};
use crate::logging::quote;
use crate::membership::{self, Member};
use crate::queue::{self, Begun, Started};
use crate::redis_conn::{is_connection_error, log_error, Backoff, Redis};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one blocking pop waits; the socket timeout is larger.
const TAKE_WAIT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Between builds, compaction and recovery run this often (or every lease,
/// when that is shorter), so indexes are contiguous within three leases.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);

pub use crate::heartbeat::Signals;

pub fn run(config: SlaveConfig, signals: Arc<Signals>) -> Result<(), String> {
    std::fs::create_dir_all(&config.cache).map_err(|e| format!("SLAVE_CACHE={:?}: cannot create: {e}", config.cache))?;
    crate::workspace::prepare_cache(&config.cache, &config.build_user)?;
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let member = Member::new(&config.cluster, config.lease);
    let Some(index) = claim(&mut redis, &member, config.index, &signals) else { return Ok(()) };
    let state = Arc::new(State::new(index));
    take_over(&mut redis, &config, &member, index, &signals);
    heartbeat::spawn(&config, member.clone(), Arc::clone(&state), Arc::clone(&signals))?;
    heartbeat::spawn_beats(config.lease, Arc::clone(&state))?;
    heartbeat::spawn_cancel_watch(&config, Arc::clone(&state))?;
    let poster = Poster::spawn(config.forges.clone(), config.forge.clone(), &config.redis_url)?;

    let host = hostname();
    let base_env = build::base_env();
    let publisher = crate::live::Publisher::start(&config.redis_url)?;
    let mut last_maintenance = Instant::now();
    let mut backoff = Backoff::default();
    while !signals.stop.load(Ordering::SeqCst) {
        if state.lost.swap(false, Ordering::SeqCst) {
            let old = state.index();
            log::info!("slave.reclaiming cluster={} index={old}: the lease was lost; claiming an index again", config.cluster);
            let Some(i) = claim(&mut redis, &member, config.index, &signals) else { break };
            {
                let mut held = state.index.lock().unwrap_or_else(|p| p.into_inner());
                *held = i;
                // The heartbeat kept failing on the old index while we waited.
                state.lost.store(false, Ordering::SeqCst);
            }
            take_over(&mut redis, &config, &member, i, &signals);
        }
        if last_maintenance.elapsed() >= MAINTENANCE_EVERY.min(config.lease) {
            last_maintenance = Instant::now();
            maintain(&mut redis, &member, &state, config.index.is_some());
        }
        let index = state.index();
        let taken = redis.run(|c| queue::take(c, &config.cluster, index, TAKE_WAIT));
        let id = match taken {
            Ok(Some(id)) => id,
            Ok(None) => continue,
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!("redis.unreachable op=take error={} retry_ms={}", quote(&e.to_string()), delay.as_millis());
                std::thread::sleep(delay);
                continue;
            }
        };
        backoff = Backoff::default();
        let slave = format!("{}-{index}", config.cluster);
        let working = queue::working_key(&config.cluster, index);
        // The job is this slave's from before START on: a cancel the watcher
        // pops while START runs (or just after) finds it and stops the build.
        state.canceled.store(false, Ordering::SeqCst);
        state.kill_build.store(signals.abort.load(Ordering::SeqCst), Ordering::SeqCst);
        state.set_job(Some(id.clone()));
        let started = match redis.run(|c| queue::start(c, &id, &working, &slave, config.max_attempts)) {
            Ok(Begun::Run(s)) => *s,
            Ok(Begun::GaveUp { died, push }) => {
                state.set_job(None);
                log::error!("build.gave_up id={id} slave={slave} attempts={died}: the slave died during each; stored as failed");
                if let Some(push) = push {
                    let why = format!("gave up after {died} attempts: the slave died during each");
                    poster.report(&id, &push, forge::Event::Error { why });
                }
                continue;
            }
            Ok(Begun::Dropped) => {
                state.set_job(None);
                log::info!("build.dropped id={id} slave={slave}: record gone or already finished");
                continue;
            }
            Err(e) => {
                state.set_job(None);
                // The job stays in the in-progress list; the next maintenance
                // pass between builds puts it back in the queue.
                log_error("start", &e);
                continue;
            }
        };
        let facts = build_facts(&started, &slave);
        log::info!("build.started {facts} attempt={}", started.attempt);
        poster.report(&started.id, &started.push, forge::Event::Started { slave: slave.clone() });
        let live = publisher.for_build(&started.id);
        let ctx = build::Context {
            cache: &config.cache,
            creds: &config.git,
            user: &config.build_user,
            max_log: config.max_log_bytes,
            host: &host,
            slave: &slave,
            timeout: config.build_timeout,
            base_env: &base_env,
            abort: &state.kill_build,
            live: Some(&live),
        };
        let outcome = build::run(&ctx, &started);
        state.set_job(None);
        let canceled = state.canceled.swap(false, Ordering::SeqCst);
        let outcome = match outcome {
            Ok(o) => o,
            // Canceled: stored as canceled with the log so far (FINISH keeps it canceled).
            Err(so_far) if canceled => {
                state.kill_build.store(false, Ordering::SeqCst);
                so_far
            }
            Err(_) => {
                state.kill_build.store(false, Ordering::SeqCst);
                let _ = redis.run(|c| queue::abandon(c, &started));
                if signals.abort.load(Ordering::SeqCst) {
                    log::warn!("build.aborted {facts}: shutdown grace over, the job stays queued");
                    break;
                }
                log::warn!("build.abandoned {facts}: the index was lost or this slave stalled past half a lease; the job runs again");
                continue;
            }
        };
        let stored = store(&mut redis, &started, &working, &outcome, &signals, &facts);
        match &stored {
            Stored::Superseded => continue,
            Stored::Real => poster.report(&started.id, &started.push, event(&outcome)),
            Stored::Substitute(o) => poster.report(&started.id, &started.push, event(o)),
            Stored::Canceled => poster.report(&started.id, &started.push, forge::Event::Canceled),
        }
        let result = match stored {
            Stored::Real if outcome.passed => "passed",
            Stored::Real => "failed",
            Stored::Canceled => "canceled",
            _ => continue,
        };
        // After the result is stored: a follower that sees `end` finds the record finished.
        live.end(result);
        log::info!("build.finished {facts} result={result} seconds={}", outcome.seconds);
    }
    state.done.store(true, Ordering::SeqCst);
    let index = state.index();
    let _ = redis.run(|c| member.release(c, index));
    log::info!("slave.stopped cluster={} index={index}", config.cluster);
    Ok(())
}

/// A stored outcome as its commit status says it.
fn event(outcome: &queue::Outcome) -> forge::Event {
    if outcome.could_not_run {
        let why = outcome.log.iter().rev().find_map(|l| l.strip_prefix("* ")).unwrap_or("see the build log");
        return forge::Event::Error { why: why.to_string() };
    }
    match outcome.passed {
        true => forge::Event::Passed { seconds: outcome.seconds },
        false => forge::Event::Failed { seconds: outcome.seconds },
    }
}

/// `id=… repo=… branch=… sha=<10> slave=…` for a build's log lines.
fn build_facts(job: &Started, slave: &str) -> String {
    let p = &job.push;
    let short = crate::payload::short_sha(&p.sha);
    format!("id={} repo={} branch={} sha={short} slave={slave}", job.id, quote(&p.repo), quote(&p.branch))
}

/// Lines of the log kept when the full result could not be stored.
const FALLBACK_LINES: usize = 20;
const FALLBACK_LINE_CHARS: usize = 300;

/// The outcome stored when Redis refused the real one (OOM on a big log, a
/// script error): failed, the head of the log, and why.
fn fallback(outcome: &queue::Outcome, e: &redis::RedisError) -> queue::Outcome {
    let mut log: Vec<String> = outcome.log.iter().take(FALLBACK_LINES).map(|l| l.chars().take(FALLBACK_LINE_CHARS).collect()).collect();
    if outcome.log.len() > FALLBACK_LINES {
        log.push(format!("* ({} more log lines not stored)", outcome.log.len() - FALLBACK_LINES));
    }
    let why: String = e.to_string().chars().take(FALLBACK_LINE_CHARS).collect();
    log.push(format!("* the result could not be stored (redis refused it: {why}); the build is marked failed"));
    queue::Outcome { passed: false, could_not_run: true, log, seconds: outcome.seconds }
}

/// Stores a result. A lost connection is retried with backoff (a finished
/// build is never thrown away for want of a connection); any other refusal
/// stores the build as failed with the reason instead; if even that is
/// refused, the error is logged and the slave goes on (the job stays in
/// progress and runs again, up to SLAVE_MAX_ATTEMPTS).
/// What was stored.
enum Stored {
    Real,
    /// The build was canceled: stored `canceled` with this log.
    Canceled,
    /// Redis refused the real one; this stood in for it.
    Substitute(queue::Outcome),
    /// Nothing: a later attempt owns the build, or Redis refused even the short record.
    Superseded,
}

fn store(redis: &mut Redis, job: &Started, working: &str, outcome: &queue::Outcome, signals: &Signals, facts: &str) -> Stored {
    let mut backoff = Backoff::default();
    let mut substitute: Option<queue::Outcome> = None;
    loop {
        let current = substitute.as_ref().unwrap_or(outcome);
        match redis.run(|c| queue::finish(c, job, working, current)) {
            Ok(queue::Finished::Stored) => return substitute.map_or(Stored::Real, Stored::Substitute),
            Ok(queue::Finished::Canceled) => return Stored::Canceled,
            Ok(queue::Finished::Superseded) => {
                log::warn!("build.superseded id={} attempt={}: a later attempt owns this build; result not stored", job.id, job.attempt);
                return Stored::Superseded;
            }
            Err(e) if is_connection_error(&e) => {
                if signals.abort.load(Ordering::SeqCst) {
                    log::error!("build.unstored id={}: redis unreachable at shutdown; the job stays queued and runs again", job.id);
                    return Stored::Superseded;
                }
                let delay = backoff.next_delay();
                log::warn!("redis.unreachable op=finish id={} error={} retry_ms={}", job.id, quote(&e.to_string()), delay.as_millis());
                std::thread::sleep(delay);
            }
            Err(e) if substitute.is_none() => {
                log::error!("build.unstorable {facts} error={}: storing it as failed with the reason", quote(&e.to_string()));
                substitute = Some(fallback(outcome, &e));
                redis.reconnect();
            }
            Err(e) => {
                log::error!("build.unstored {facts} error={}: redis refused even the short record; going on", quote(&e.to_string()));
                return Stored::Superseded;
            }
        }
    }
}

/// Claims an index: a free one at once; a new one only as the membership
/// policy allows (see [`membership::may_open_new_index`]).
fn claim(redis: &mut Redis, member: &Member, fixed: Option<u32>, signals: &Signals) -> Option<u32> {
    let mut member = member.clone();
    let mut first: Option<Vec<(u32, u64)>> = None;
    let mut backoff = Backoff::default();
    let mut waiting_logged = false;
    while !signals.stop.load(Ordering::SeqCst) {
        let attempt = redis.run(|c| {
            let holders = membership::holders(c, &member.cluster)?;
            let first = first.get_or_insert_with(|| holders.clone());
            member.allow_new = membership::may_open_new_index(first, &holders);
            member.claim(c, fixed)
        });
        match attempt {
            Ok(Some(i)) => return Some(i),
            Ok(None) => {
                if !waiting_logged {
                    log::info!(
                        "slave.waiting cluster={} fixed={}: no free index yet; waiting for a lease to expire or for every holder to renew",
                        member.cluster,
                        fixed.map_or("-".to_string(), |i| i.to_string())
                    );
                    waiting_logged = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log_error("claim", &e);
                std::thread::sleep(delay);
            }
        }
    }
    None
}

/// On a freshly claimed index: re-queue what its previous holder left in
/// progress, then announce the slave ready.
fn take_over(redis: &mut Redis, config: &SlaveConfig, member: &Member, index: u32, signals: &Signals) {
    recover(redis, &config.cluster, index, signals);
    log::info!(
        "slave.ready cluster={} index={index} instance={} cache={}",
        config.cluster,
        member.instance,
        quote(&config.cache.to_string_lossy())
    );
}

/// Whatever a previous holder of this index was running goes back to the queue.
fn recover(redis: &mut Redis, cluster: &str, index: u32, signals: &Signals) {
    let mut backoff = Backoff::default();
    while !signals.stop.load(Ordering::SeqCst) {
        match redis.run(|c| queue::requeue_working(c, cluster, index)) {
            Ok(0) => return,
            Ok(n) => {
                log::info!(
                    "build.recovered cluster={cluster} index={index} jobs={n}: a previous holder left them in progress; they run again"
                );
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log_error("recover", &e);
                std::thread::sleep(delay);
            }
        }
    }
}

/// Between builds: move down to keep indexes contiguous (not with a fixed
/// SLAVE_INDEX), and put back anything stranded in our own in-progress list
/// (a BLMOVE whose reply was lost, or a dead holder's job on the index we
/// moved to).
fn maintain(redis: &mut Redis, member: &Member, state: &State, fixed: bool) {
    let cluster = member.cluster.clone();
    let result = redis.run(|c| {
        let mut held = state.index.lock().unwrap_or_else(|p| p.into_inner());
        if !fixed {
            if let Some(new) = member.compact(c, *held)? {
                log::info!("slave.moved cluster={cluster} from={} to={new}: indexes kept contiguous after a scale-down", *held);
                *held = new;
            }
        }
        let index = *held;
        drop(held);
        let stranded = queue::requeue_working(c, &cluster, index)?;
        if stranded > 0 {
            log::info!("build.recovered cluster={cluster} index={index} jobs={stranded}: left in progress; they run again");
        }
        Ok(())
    });
    if let Err(e) = result {
        log_error("maintain", &e);
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
