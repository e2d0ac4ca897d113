//! The slave: claim an index, run SLAVE_EXECUTORS executors that take jobs
//! reliably (their own queue, then a sibling's job that waited too long),
//! build, store the result (retrying while Redis is away, failing it when
//! Redis refuses it); between them the loop keeps indexes contiguous and
//! re-claims a lost one, and stops gracefully. The lease and re-routing run
//! beside it (`heartbeat`).

use crate::config::SlaveConfig;
use crate::logging::quote;
use crate::slave::build;
use crate::slave::forge::{self, Poster};
use crate::slave::lease::{self, lock, State};
use crate::store::conn::{is_connection_error, log_error, Backoff, Redis};
use crate::store::keys;
use crate::store::membership::{self, Member};
use crate::store::queue::{self, Begun, Started};
use crate::store::stream::Publisher;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one blocking pop waits; the socket timeout is larger.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// ... while deferred jobs wait for their branch: they are tried this often.
const DEFERRED_WAIT: Duration = Duration::from_millis(250);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Stranded jobs are looked for, and compaction is judged, this often (or
/// every lease, when that is shorter), so indexes are contiguous within three
/// leases of a scale-down (plus the running builds, when the slave must move).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);
/// How often the loop looks at the lease and the stop flag.
const TICK: Duration = Duration::from_millis(50);

pub use crate::slave::lease::Signals;

/// What the executors share.
struct Shared {
    config: SlaveConfig,
    signals: Arc<Signals>,
    state: Arc<State>,
    poster: Poster,
    publisher: Publisher,
    host: String,
    base_env: Vec<(String, String)>,
}

pub fn run(config: SlaveConfig, signals: Arc<Signals>) -> Result<(), String> {
    std::fs::create_dir_all(&config.cache).map_err(|e| format!("SLAVE_CACHE={:?}: cannot create: {e}", config.cache))?;
    crate::slave::build::workspace::prepare_cache(&config.cache, &config.build_user)?;
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let member = Member::new(&config.cluster, config.lease);
    let Some(index) = claim(&mut redis, &member, config.index, &signals) else { return Ok(()) };
    let state = Arc::new(State::new(index, config.executors, config.lease));
    take_over(&mut redis, &config, &member, index, &signals);
    lease::spawn(&config, member.clone(), Arc::clone(&state), Arc::clone(&signals))?;
    lease::spawn_beats(config.lease, Arc::clone(&state))?;
    lease::spawn_cancel_watch(&config, Arc::clone(&state))?;
    let poster = Poster::spawn(config.forges.clone(), config.forge.clone(), &config.redis_url)?;
    let publisher = Publisher::start(&config.redis_url)?;
    let shared = Arc::new(Shared {
        config,
        signals: Arc::clone(&signals),
        state: Arc::clone(&state),
        poster,
        publisher,
        host: hostname(),
        base_env: build::base_env(),
    });
    let mut executors = Vec::new();
    for e in 0..shared.config.executors {
        let sh = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name(format!("executor-{e}")).spawn(move || executor(&sh, e));
        executors.push(spawned.map_err(|err| format!("cannot start executor {e}: {err}"))?);
    }
    coordinate(&mut redis, &member, &shared);
    for handle in executors {
        let _ = handle.join();
    }
    state.done.store(true, Ordering::SeqCst);
    let index = state.index();
    let _ = redis.run(|c| member.release(c, index));
    log::info!("slave.stopped cluster={} index={index}", shared.config.cluster);
    Ok(())
}

/// The loop beside the executors: re-claims a lost index, puts back jobs
/// stranded in the in-progress list, and moves down after a scale-down. It
/// changes the index only with every executor out of the gate.
fn coordinate(redis: &mut Redis, member: &Member, sh: &Shared) {
    let (config, state, signals) = (&sh.config, &sh.state, &sh.signals);
    let mut last_maintenance = Instant::now();
    let mut strays = HashSet::new();
    while !signals.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        if state.lost.load(Ordering::SeqCst) {
            // The heartbeat killed the running builds; wait for them to end.
            if !state.close_when_idle(&signals.stop) {
                break;
            }
            let old = state.index();
            log::info!("slave.reclaiming cluster={} index={old}: the lease was lost; claiming an index again", config.cluster);
            let Some(i) = claim(redis, member, config.index, signals) else {
                state.open();
                break;
            };
            state.confirm(Instant::now());
            {
                let mut held = lock(&state.index);
                *held = i;
                // The heartbeat kept failing on the old index while we waited.
                state.lost.store(false, Ordering::SeqCst);
            }
            // What was deferred on the old index is its new holder's now.
            lock(&state.deferred).clear();
            take_over(redis, config, member, i, signals);
            state.open();
            continue;
        }
        if last_maintenance.elapsed() < MAINTENANCE_EVERY.min(config.lease) {
            continue;
        }
        last_maintenance = Instant::now();
        sweep(redis, sh, &mut strays);
        if config.index.is_none() && must_move(redis, member, state) && state.close_when_idle(&signals.stop) {
            if !state.lost.load(Ordering::SeqCst) {
                compact(redis, member, state);
            }
            state.open();
        }
    }
}

/// Jobs in our in-progress list that no executor holds, twice in a row (a
/// take whose reply was lost; an executor registers what it took within
/// microseconds), go back to the front of the queue.
fn sweep(redis: &mut Redis, sh: &Shared, strays: &mut HashSet<String>) {
    let cluster = &sh.config.cluster;
    let state = &sh.state;
    let result = redis.run(|c| {
        let _starting = lock(&state.starting);
        let index = state.index();
        let held: HashSet<String> = state.jobs().into_iter().collect();
        let now: HashSet<String> = queue::working(c, cluster, index)?.into_iter().filter(|id| !held.contains(id)).collect();
        let stranded: Vec<String> = now.intersection(strays).cloned().collect();
        if !stranded.is_empty() {
            let moved = queue::requeue_ids(c, cluster, index, &stranded)?;
            log::info!("build.recovered cluster={cluster} index={index} jobs={moved}: left in progress by no executor; they run again");
        }
        *strays = now.into_iter().filter(|id| !stranded.contains(id)).collect();
        Ok(())
    });
    if let Err(e) = result {
        log_error("sweep", &e);
    }
}

/// Whether this slave's index is at or above the live count (a scale-down).
fn must_move(redis: &mut Redis, member: &Member, state: &State) -> bool {
    match redis.run(|c| membership::live_count(c, &member.cluster)) {
        Ok(n) => n > 0 && state.index() >= n,
        Err(e) => {
            log_error("live-count", &e);
            false
        }
    }
}

/// With every executor idle: moves down to a free index below N (indexes
/// stay contiguous), after putting back what the old index's in-progress
/// list still holds (deferred jobs); then recovers the new index's list (a
/// dead holder's jobs).
fn compact(redis: &mut Redis, member: &Member, state: &State) {
    let cluster = member.cluster.clone();
    let result = redis.run(|c| {
        let mut held = lock(&state.index);
        queue::requeue_working(c, &cluster, *held)?;
        lock(&state.deferred).clear();
        if let Some(new) = member.compact(c, *held)? {
            log::info!("slave.moved cluster={cluster} from={} to={new}: indexes kept contiguous after a scale-down", *held);
            *held = new;
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

/// One executor: while the slave runs, take a job and build it.
fn executor(sh: &Shared, e: usize) {
    let mut redis = match Redis::open(&sh.config.redis_url, IO_TIMEOUT) {
        Ok(r) => r,
        Err(err) => {
            log::error!("executor.failed executor={e}: {err}");
            return;
        }
    };
    let mut backoff = Backoff::default();
    while let Some(_inside) = sh.state.enter(&sh.signals.stop) {
        let index = sh.state.index();
        let started = match next_job(&mut redis, sh, e, index) {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(err) => {
                let delay = backoff.next_delay();
                log::warn!("redis.unreachable op=take executor={e} error={} retry_ms={}", quote(&err.to_string()), delay.as_millis());
                std::thread::sleep(delay);
                continue;
            }
        };
        backoff = Backoff::default();
        if !build_one(&mut redis, sh, e, index, started) {
            break;
        }
    }
}

/// The next job this executor builds, marked running: a deferred job whose
/// branch is free now, else one from its own queue, else one stolen from a
/// sibling's (SLAVE_STEAL_AFTER). `None` when there is none yet.
fn next_job(redis: &mut Redis, sh: &Shared, e: usize, index: u32) -> redis::RedisResult<Option<Started>> {
    let (config, state) = (&sh.config, &sh.state);
    if !state.lease_fresh() {
        // Redis has not confirmed the lease lately: start nothing until it does.
        std::thread::sleep(DEFERRED_WAIT);
        return Ok(None);
    }
    let deferred = lock(&state.deferred).clone();
    for id in &deferred {
        let _starting = lock(&state.starting);
        if let Some(s) = begin(redis, sh, e, index, id)? {
            return Ok(Some(s));
        }
    }
    let wait = match config.steal_after {
        _ if !deferred.is_empty() => DEFERRED_WAIT,
        Some(after) => TAKE_WAIT.min((after / 2).max(Duration::from_millis(100))),
        None => TAKE_WAIT,
    };
    if let Some(id) = redis.run(|c| queue::take(c, &config.cluster, index, wait))? {
        if state.lost.load(Ordering::SeqCst) {
            // Taken off an index no longer ours: its new holder puts it back.
            return Ok(None);
        }
        let _starting = lock(&state.starting);
        return begin(redis, sh, e, index, &id);
    }
    let Some(after) = config.steal_after else { return Ok(None) };
    let _starting = lock(&state.starting);
    let busy = state.busy_branches();
    let Some(stolen) = redis.run(|c| queue::steal(c, &config.cluster, index, after, &busy))? else { return Ok(None) };
    log::info!(
        "build.stolen id={} from={} slave={} executor={e}: waited over {:.1} s in a sibling's queue",
        stolen.id,
        stolen.from,
        queue::slave_name(&config.cluster, index),
        after.as_secs_f64()
    );
    begin(redis, sh, e, index, &stolen.id)
}

/// Starts job `id` (in this slave's in-progress list) on executor `e`, with
/// `state.starting` held: marks it running unless its branch is building
/// here or elsewhere (then it waits in `deferred`). `None` when not started.
fn begin(redis: &mut Redis, sh: &Shared, e: usize, index: u32, id: &str) -> redis::RedisResult<Option<Started>> {
    let (config, state) = (&sh.config, &sh.state);
    let slot = &state.slots[e];
    let slave = queue::slave_name(&config.cluster, index);
    let working = keys::working(&config.cluster, index);
    if !state.lease_fresh() {
        defer(state, id, &slave, "the lease is not confirmed; it starts once it is");
        return Ok(None);
    }
    let busy = state.busy_branches();
    // The job is this executor's from before START on: a cancel the watcher
    // pops while START runs (or just after) finds it and stops the build.
    slot.canceled.store(false, Ordering::SeqCst);
    slot.kill.store(sh.signals.abort.load(Ordering::SeqCst), Ordering::SeqCst);
    state.set_job(e, Some((id.to_string(), String::new())));
    let begun = redis.run(|c| queue::start(c, id, &working, &slave, config.max_attempts, &busy));
    let undefer = || lock(&state.deferred).retain(|d| d != id);
    match begun {
        Ok(Begun::Run(s)) => {
            undefer();
            state.set_job(e, Some((id.to_string(), format!("{}:{}", s.push.repo, s.push.branch))));
            Ok(Some(*s))
        }
        Ok(Begun::Busy) => {
            state.set_job(e, None);
            defer(state, id, &slave, "a build of its branch is running; it starts when that one ends");
            Ok(None)
        }
        Ok(Begun::GaveUp { died, push }) => {
            state.set_job(e, None);
            undefer();
            log::error!("build.gave_up id={id} slave={slave} attempts={died}: the slave died during each; stored as failed");
            if let Some(push) = push {
                let why = format!("gave up after {died} attempts: the slave died during each");
                sh.poster.report(id, &push, forge::Event::Error { why });
            }
            Ok(None)
        }
        Ok(Begun::Dropped) => {
            state.set_job(e, None);
            undefer();
            log::info!("build.dropped id={id} slave={slave}: record gone or already finished");
            Ok(None)
        }
        Err(err) => {
            state.set_job(e, None);
            // The job stays in the in-progress list; the sweep puts it back.
            log_error("start", &err);
            Ok(None)
        }
    }
}

/// Sets an attempt that ended without a result back to queued, so that its
/// next start does not count a death; retried while Redis is unreachable
/// (the usual reason the attempt was stopped) for up to `patience`.
fn abandon(redis: &mut Redis, job: &Started, patience: Duration, signals: &Signals) {
    let until = Instant::now() + patience;
    let mut backoff = Backoff::default();
    loop {
        match redis.run(|c| queue::abandon(c, job)) {
            Err(e) if is_connection_error(&e) && Instant::now() < until && !signals.abort.load(Ordering::SeqCst) => {
                std::thread::sleep(backoff.next_delay());
            }
            Err(e) => return log_error("abandon", &e),
            Ok(()) => return,
        }
    }
}

/// Keeps a taken job (in the in-progress list) to start later.
fn defer(state: &State, id: &str, slave: &str, why: &str) {
    let mut deferred = lock(&state.deferred);
    if !deferred.iter().any(|d| d == id) {
        log::info!("build.deferred id={id} slave={slave}: {why}");
        deferred.push(id.to_string());
    }
}

/// Builds a started job on executor `e` and stores its result; false when
/// the slave must stop (the shutdown grace is over).
fn build_one(redis: &mut Redis, sh: &Shared, e: usize, index: u32, started: Started) -> bool {
    let (config, state) = (&sh.config, &sh.state);
    let slot = &state.slots[e];
    let slave = queue::slave_name(&config.cluster, index);
    let working = keys::working(&config.cluster, index);
    let facts = build_facts(&started, &slave, e);
    log::info!("build.started {facts} attempt={}", started.attempt);
    sh.poster.report(&started.id, &started.push, forge::Event::Started { slave: slave.clone() });
    let live = sh.publisher.for_build(&started.id);
    let ctx = build::Context {
        cache: &config.cache,
        creds: &config.git,
        user: &config.build_user,
        max_log: config.max_log_bytes,
        host: &sh.host,
        slave: &slave,
        timeout: config.build_timeout,
        base_env: &sh.base_env,
        abort: &slot.kill,
        live: Some(&live),
    };
    let outcome = build::run(&ctx, &started);
    state.set_job(e, None);
    let canceled = slot.canceled.swap(false, Ordering::SeqCst);
    let outcome = match outcome {
        Ok(o) => o,
        // Canceled: stored as canceled with the log so far (FINISH keeps it canceled).
        Err(so_far) if canceled => {
            slot.kill.store(false, Ordering::SeqCst);
            so_far
        }
        Err(_) => {
            slot.kill.store(false, Ordering::SeqCst);
            abandon(redis, &started, config.lease * 2, &sh.signals);
            if sh.signals.abort.load(Ordering::SeqCst) {
                log::warn!("build.aborted {facts}: shutdown grace over, the job stays queued");
                return false;
            }
            log::warn!("build.abandoned {facts}: the index was lost, its lease went unconfirmed (Redis unreachable) or this slave stalled; the job runs again");
            return true;
        }
    };
    // Its lines published first (the last few FINISH writes itself): FINISH
    // writes the live log's end with the record.
    let last_lines = live.close();
    let stored = store(redis, &started, &working, &outcome, &last_lines, &sh.signals, &facts);
    let poster = &sh.poster;
    match &stored {
        Stored::Superseded => return true,
        Stored::Real => poster.report(&started.id, &started.push, event(&outcome)),
        Stored::Substitute(o) => poster.report(&started.id, &started.push, event(o)),
        Stored::Canceled => poster.report(&started.id, &started.push, forge::Event::Canceled),
    }
    let result = match stored {
        Stored::Real if outcome.passed => "passed",
        Stored::Real => "failed",
        Stored::Canceled => "canceled",
        _ => return true,
    };
    log::info!("build.finished {facts} result={result} seconds={}", outcome.seconds);
    true
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

/// `id=… repo=… branch=… sha=<10> slave=… executor=…` for a build's log lines.
fn build_facts(job: &Started, slave: &str, executor: usize) -> String {
    let p = &job.push;
    let short = crate::payload::short_sha(&p.sha);
    format!("id={} repo={} branch={} sha={short} slave={slave} executor={executor}", job.id, quote(&p.repo), quote(&p.branch))
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

fn store(
    redis: &mut Redis,
    job: &Started,
    working: &str,
    outcome: &queue::Outcome,
    last_lines: &[String],
    signals: &Signals,
    facts: &str,
) -> Stored {
    let mut backoff = Backoff::default();
    let mut substitute: Option<queue::Outcome> = None;
    loop {
        let current = substitute.as_ref().unwrap_or(outcome);
        match redis.run(|c| queue::finish(c, job, working, current, last_lines)) {
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
        "slave.ready cluster={} index={index} instance={} cache={} executors={} steal_after={}",
        config.cluster,
        member.instance,
        quote(&config.cache.to_string_lossy()),
        config.executors,
        config.steal_after.map_or("off".to_string(), |d| format!("{:.1}s", d.as_secs_f64()))
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
