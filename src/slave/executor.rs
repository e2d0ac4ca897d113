//! One executor's loop: take a job (a deferred one whose branch is free, its
//! own queue's, or a sibling's that waited too long), mark it started, build
//! it, store the result (retrying while Redis is away, a short failed record
//! when Redis refuses it) and post its commit status.

use crate::config::SlaveConfig;
use crate::logging::quote;
use crate::slave::backend::container::Containers;
use crate::slave::build;
use crate::slave::build::Ending;
use crate::slave::build_user::BuildUser;
use crate::slave::credentials::Credentials;
use crate::slave::forge::{self, Poster};
use crate::slave::state::{lock, Signals, State, IO_TIMEOUT};
use crate::store::conn::{is_connection_error, log_error, Backoff, Redis, Target};
use crate::store::keys;
use crate::store::passes;
use crate::store::queue::{self, Begun, Outcome, Started};
use crate::store::stream::{BuildLog, Publisher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one blocking pop waits; the socket timeout is larger.
const TAKE_WAIT: Duration = Duration::from_secs(1);
/// ... while deferred jobs wait for their branch: they are tried this often.
const DEFERRED_WAIT: Duration = Duration::from_millis(250);
/// Oldest jobs of its queue a build looks through for other branches of its
/// repository to fetch at once (only when it fetches).
const QUEUED_DEPTH: u32 = 64;

/// What the executors share.
pub(crate) struct Shared {
    pub(crate) config: SlaveConfig,
    pub(crate) redis: Target,
    pub(crate) build_user: BuildUser,
    /// Groups per repository and checkout; `None` on a slave that is not root.
    pub(crate) build_groups: Option<crate::slave::build_groups::BuildGroups>,
    pub(crate) git: Credentials,
    pub(crate) secrets: crate::slave::repo_secrets::RepoSecrets,
    pub(crate) signals: Arc<Signals>,
    pub(crate) state: Arc<State>,
    pub(crate) poster: Poster,
    pub(crate) publisher: Publisher,
    pub(crate) host: String,
    pub(crate) base_env: Vec<(String, String)>,
    pub(crate) containers: Option<Containers>,
}

/// One executor: while the slave runs, take a job and build it.
pub(crate) fn run(sh: &Shared, e: usize) {
    let mut redis = Redis::open(&sh.redis, IO_TIMEOUT);
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
    let passes = RedisPasses(std::cell::RefCell::new(&mut *redis));
    let ctx = build::Context {
        cache: &config.cache,
        creds: &sh.git,
        secrets: &sh.secrets,
        user: &sh.build_user,
        groups: sh.build_groups.as_ref(),
        max_log: config.max_log_bytes,
        host: &sh.host,
        slave: &slave,
        timeout: config.build_timeout,
        base_env: &sh.base_env,
        abort: &slot.kill,
        live: Some(Arc::new(live.clone())),
        containers: sh.containers.as_ref(),
        passes: Some(&passes),
    };
    let queued = || queued_branches(&mut passes.0.borrow_mut(), &config.cluster, index, &started.push);
    let built = build::run(&ctx, &build::Job { id: &started.id, push: &started.push, reset: started.reset, queued: &queued });
    state.set_job(e, None);
    let canceled = slot.canceled.swap(false, Ordering::SeqCst);
    let contained = built.contained;
    let outcome = |passed, could_not_run| Outcome { passed, could_not_run, log: built.log, seconds: built.seconds };
    let outcome = match built.ending {
        Ending::Ran { passed } => outcome(passed, false),
        Ending::CouldNotRun => outcome(false, true),
        // Canceled: stored as canceled with the log so far (FINISH keeps it canceled).
        Ending::Stopped if canceled => {
            slot.kill.store(false, Ordering::SeqCst);
            outcome(false, false)
        }
        Ending::Stopped => {
            slot.kill.store(false, Ordering::SeqCst);
            return give_back(redis, sh, &started, &facts);
        }
    };
    // Its lines published first (the last few FINISH writes itself): FINISH
    // writes the live log's end with the record.
    let last_lines = live.close();
    let stored = store(redis, &started, &working, &outcome, &last_lines, &sh.signals, &facts);
    announce(sh, &started, &facts, &outcome, stored, contained);
    // With the result out, the branch's next container is made.
    if let Some(containers) = &sh.containers {
        containers.warm.make_wanted();
    }
    true
}

/// The branches (`refs/heads/<name>`) of the builds of `push`'s repository
/// and URL waiting in this slave's queue (its QUEUED_DEPTH oldest jobs), for
/// its fetch to bring along. Never a fork's; empty when Redis fails (the
/// fetch goes on alone).
fn queued_branches(redis: &mut Redis, cluster: &str, index: u32, push: &crate::payload::Push) -> Vec<String> {
    if push.fork {
        return Vec::new();
    }
    match redis.run(|c| queue::queued_pushes(c, cluster, index, &push.repo, QUEUED_DEPTH)) {
        Ok(pushes) => pushes
            .into_iter()
            .filter(|p| !p.fork && p.pull.is_none() && p.tag.is_none() && p.clone_url == push.clone_url)
            .map(|p| p.source_ref())
            .collect(),
        Err(e) => {
            log_error("queued", &e);
            Vec::new()
        }
    }
}

/// A build stopped from outside and not canceled: its attempt is set back
/// to queued. False when the slave must stop (the shutdown grace is over).
fn give_back(redis: &mut Redis, sh: &Shared, started: &Started, facts: &str) -> bool {
    abandon(redis, started, sh.config.lease * 2, &sh.signals);
    if sh.signals.abort.load(Ordering::SeqCst) {
        log::warn!("build.aborted {facts}: shutdown grace over, the job stays queued");
        return false;
    }
    log::warn!("build.abandoned {facts}: the index was lost, its lease went unconfirmed (Redis unreachable) or this slave stalled; the job runs again");
    true
}

/// Posts the commit status of what was stored and logs the build's end, or
/// why nothing was stored.
fn announce(sh: &Shared, job: &Started, facts: &str, outcome: &Outcome, stored: Stored, contained: build::workspace::Contained) {
    let report = |event| sh.poster.report(&job.id, &job.push, event);
    let result = match stored {
        Stored::Real => {
            report(event(outcome));
            if outcome.passed {
                "passed"
            } else {
                "failed"
            }
        }
        Stored::Substitute(o) => {
            report(event(&o));
            return;
        }
        Stored::Canceled => {
            report(forge::Event::Canceled);
            "canceled"
        }
        Stored::Superseded => {
            log::warn!("build.superseded id={} attempt={}: a later attempt owns this build; result not stored", job.id, job.attempt);
            return;
        }
        Stored::NotAtShutdown => {
            log::error!("build.unstored id={}: redis unreachable at shutdown; the job stays queued and runs again", job.id);
            return;
        }
        Stored::Refused(e) => {
            log::error!("build.unstored {facts} error={}: redis refused even the short record; going on", quote(&e.to_string()));
            return;
        }
    };
    log::info!(
        "build.finished {facts} result={result} seconds={} groups_us={} disarm_us={}",
        outcome.seconds,
        contained.groups.as_micros(),
        contained.disarm.as_micros()
    );
}

/// The live log a build's lines go to as they happen.
impl build::LiveLog for BuildLog {
    fn line(&self, line: &str) {
        BuildLog::line(self, line);
    }
    fn has_room(&self) -> bool {
        BuildLog::has_room(self)
    }
    fn count_dropped(&self, n: u64) {
        BuildLog::count_dropped(self, n);
    }
}

/// The memory of passed steps, in Redis (`store::passes`), on the
/// executor's own connection. An error is logged and the step runs.
struct RedisPasses<'r>(std::cell::RefCell<&'r mut Redis>);

impl build::Passes for RedisPasses<'_> {
    fn find(&self, repo: &str, fingerprint: &str) -> Option<String> {
        self.0.borrow_mut().run(|c| passes::find(c, repo, fingerprint)).unwrap_or_else(|e| {
            log_error("passes.find", &e);
            None
        })
    }
    fn remember(&self, repo: &str, fingerprint: &str, build: &str) {
        if let Err(e) = self.0.borrow_mut().run(|c| passes::remember(c, repo, fingerprint, build)) {
            log_error("passes.remember", &e);
        }
    }
}

/// A stored outcome as its commit status says it.
fn event(outcome: &Outcome) -> forge::Event {
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
fn fallback(outcome: &Outcome, e: &redis::RedisError) -> Outcome {
    let mut log: Vec<String> = outcome.log.iter().take(FALLBACK_LINES).map(|l| l.chars().take(FALLBACK_LINE_CHARS).collect()).collect();
    if outcome.log.len() > FALLBACK_LINES {
        log.push(format!("* ({} more log lines not stored)", outcome.log.len() - FALLBACK_LINES));
    }
    let why: String = e.to_string().chars().take(FALLBACK_LINE_CHARS).collect();
    log.push(format!("* the result could not be stored (redis refused it: {why}); the build is marked failed"));
    Outcome { passed: false, could_not_run: true, log, seconds: outcome.seconds }
}

/// What [`store`] did with a result.
enum Stored {
    /// The build's own outcome.
    Real,
    /// The build was canceled: stored `canceled` with this log.
    Canceled,
    /// Redis refused the real one; this stood in for it.
    Substitute(Outcome),
    /// Nothing: a later attempt owns the build.
    Superseded,
    /// Nothing: Redis was unreachable when the shutdown grace ran out; the
    /// job stays queued and runs again.
    NotAtShutdown,
    /// Nothing: Redis refused even the short record (the job stays in
    /// progress and runs again, up to SLAVE_MAX_ATTEMPTS).
    Refused(redis::RedisError),
}

/// Stores a result. A lost connection is retried with backoff (a finished
/// build is never thrown away for want of a connection); any other refusal
/// stores the build as failed with the reason instead.
fn store(
    redis: &mut Redis,
    job: &Started,
    working: &str,
    outcome: &Outcome,
    last_lines: &[String],
    signals: &Signals,
    facts: &str,
) -> Stored {
    let mut backoff = Backoff::default();
    let mut substitute: Option<Outcome> = None;
    loop {
        let current = substitute.as_ref().unwrap_or(outcome);
        match redis.run(|c| queue::finish(c, job, working, current, last_lines)) {
            Ok(queue::Finished::Stored) => return substitute.map_or(Stored::Real, Stored::Substitute),
            Ok(queue::Finished::Canceled) => return Stored::Canceled,
            Ok(queue::Finished::Superseded) => return Stored::Superseded,
            Err(e) if is_connection_error(&e) => {
                if signals.abort.load(Ordering::SeqCst) {
                    return Stored::NotAtShutdown;
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
            Err(e) => return Stored::Refused(e),
        }
    }
}
