//! The slave's loop: claim an index, keep the lease, take jobs reliably,
//! build, store the result (retrying while Redis is away), re-route jobs
//! stranded on vanished indexes, and stop gracefully.

use crate::build;
use crate::config::SlaveConfig;
use crate::logging::quote;
use crate::membership::{self, Member};
use crate::queue::{self, Started};
use crate::redis_conn::{Backoff, Redis};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one blocking pop waits; the socket timeout is larger.
const TAKE_WAIT: Duration = Duration::from_secs(1);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);

/// Flags the binary's signal handler sets.
#[derive(Default)]
pub struct Signals {
    /// Stop taking jobs (SIGTERM/SIGINT).
    pub stop: AtomicBool,
    /// Grace period over: kill the running build, store nothing.
    pub abort: AtomicBool,
}

struct State {
    index: AtomicU32,
    lost: AtomicBool,
}

pub fn run(config: SlaveConfig, signals: Arc<Signals>) -> Result<(), String> {
    std::fs::create_dir_all(&config.cache).map_err(|e| format!("SLAVE_CACHE={:?}: cannot create: {e}", config.cache))?;
    crate::workspace::prepare_cache(&config.cache, &config.build_user)?;
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let member = Member::new(&config.cluster, config.lease);
    let index = claim(&mut redis, &member, config.index, &signals);
    let Some(index) = index else { return Ok(()) };
    let state = Arc::new(State { index: AtomicU32::new(index), lost: AtomicBool::new(false) });
    take_over(&mut redis, &config, &member, index, &signals);
    spawn_heartbeat(&config, member.clone(), Arc::clone(&state), Arc::clone(&signals))?;

    let host = hostname();
    let base_env = build::base_env();
    let mut last_maintenance = Instant::now();
    let mut backoff = Backoff::default();
    while !signals.stop.load(Ordering::SeqCst) {
        if state.lost.swap(false, Ordering::SeqCst) && config.index.is_none() {
            let old = state.index.load(Ordering::SeqCst);
            log::warn!("slave.lease_lost cluster={} index={old}: claiming again", config.cluster);
            match claim(&mut redis, &member, None, &signals) {
                Some(i) => {
                    state.index.store(i, Ordering::SeqCst);
                    // The heartbeat kept failing on the old index while we waited.
                    state.lost.store(false, Ordering::SeqCst);
                    take_over(&mut redis, &config, &member, i, &signals);
                }
                None => break,
            }
        }
        let index = state.index.load(Ordering::SeqCst);
        if last_maintenance.elapsed() >= MAINTENANCE_EVERY {
            last_maintenance = Instant::now();
            maintain(&mut redis, &member, &state);
        }
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
        let started = match redis.run(|c| queue::start(c, &id, &working, &slave)) {
            Ok(Some(s)) => s,
            Ok(None) => {
                log::info!("build.dropped id={id} slave={slave}: record gone or already finished");
                continue;
            }
            Err(e) => {
                // The job stays in the in-progress list; the next maintenance
                // pass between builds puts it back in the queue.
                log::warn!("redis.unreachable op=start id={id} error={}", quote(&e.to_string()));
                continue;
            }
        };
        let facts = build_facts(&started, &slave);
        log::info!("build.started {facts} attempt={}", started.attempt);
        let ctx = build::Context {
            cache: &config.cache,
            creds: &config.git,
            user: &config.build_user,
            max_log: config.max_log_bytes,
            host: &host,
            slave: &slave,
            timeout: config.build_timeout,
            base_env: &base_env,
            abort: &signals.abort,
        };
        let Some(outcome) = build::run(&ctx, &started) else {
            log::warn!("build.aborted {facts}: shutdown grace over, the job stays queued");
            break;
        };
        let result = if outcome.passed { "passed" } else { "failed" };
        if !store(&mut redis, &started, &working, &outcome, &signals) {
            continue;
        }
        log::info!("build.finished {facts} result={result} seconds={}", outcome.seconds);
    }
    let index = state.index.load(Ordering::SeqCst);
    let _ = redis.run(|c| member.release(c, index));
    log::info!("slave.stopped cluster={} index={index}", config.cluster);
    Ok(())
}

/// `id=… repo=… branch=… sha=<10> slave=…` for a build's log lines.
fn build_facts(job: &Started, slave: &str) -> String {
    let p = &job.push;
    let short = &p.sha[..p.sha.len().min(10)];
    format!("id={} repo={} branch={} sha={short} slave={slave}", job.id, quote(&p.repo), quote(&p.branch))
}

/// Stores a result, retrying with backoff while Redis is unreachable: a
/// finished build is never thrown away for want of a connection.
/// True when stored; false when a later attempt owns the build or Redis
/// stayed away past the shutdown grace.
fn store(redis: &mut Redis, job: &Started, working: &str, outcome: &queue::Outcome, signals: &Signals) -> bool {
    let mut backoff = Backoff::default();
    loop {
        match redis.run(|c| queue::finish(c, job, working, outcome)) {
            Ok(true) => return true,
            Ok(false) => {
                log::warn!("build.superseded id={} attempt={}: a later attempt owns this build; result not stored", job.id, job.attempt);
                return false;
            }
            Err(e) => {
                if signals.abort.load(Ordering::SeqCst) {
                    log::error!("build.unstored id={}: redis unreachable at shutdown; the job stays queued and runs again", job.id);
                    return false;
                }
                let delay = backoff.next_delay();
                log::warn!("redis.unreachable op=finish id={} error={} retry_ms={}", job.id, quote(&e.to_string()), delay.as_millis());
                std::thread::sleep(delay);
            }
        }
    }
}

/// Claims an index: a free one at once; a new one only once every current
/// holder has shown it is alive (renewed), so that a replacement for a dead
/// slave takes its index instead of growing N.
fn claim(redis: &mut Redis, member: &Member, fixed: Option<u32>, signals: &Signals) -> Option<u32> {
    let mut member = member.clone();
    let mut snapshot: Option<Vec<(u32, u64)>> = None;
    let mut backoff = Backoff::default();
    let mut waiting_logged = false;
    while !signals.stop.load(Ordering::SeqCst) {
        let attempt = redis.run(|c| {
            let holders = membership::holders(c, &member.cluster)?;
            let first = snapshot.get_or_insert_with(|| holders.clone());
            member.allow_new = first.iter().all(|(i, exp)| holders.iter().any(|(j, e)| j == i && e > exp));
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
                log::warn!("redis.unreachable op=claim error={} retry_ms={}", quote(&e.to_string()), delay.as_millis());
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
                log::warn!("redis.unreachable op=recover error={} retry_ms={}", quote(&e.to_string()), delay.as_millis());
                std::thread::sleep(delay);
            }
        }
    }
}

/// Between builds: put back anything stranded in our own in-progress list
/// (a BLMOVE whose reply was lost), move down to keep indexes contiguous,
/// and re-route jobs queued on indexes at or above N (and in-progress jobs
/// of dead holders there).
fn maintain(redis: &mut Redis, member: &Member, state: &State) {
    let cluster = member.cluster.clone();
    let result = redis.run(|c| {
        let mut index = state.index.load(Ordering::SeqCst);
        if let Some(new) = member.compact(c, index)? {
            log::info!("slave.moved cluster={cluster} from={index} to={new}: indexes kept contiguous after a scale-down");
            state.index.store(new, Ordering::SeqCst);
            index = new;
        }
        let stranded = queue::requeue_working(c, &cluster, index)?;
        if stranded > 0 {
            log::info!("build.recovered cluster={cluster} index={index} jobs={stranded}: left in progress; they run again");
        }
        let n = membership::live_count(c, &cluster)?;
        if n == 0 {
            return Ok(());
        }
        let top: Option<u32> = redis::cmd("HGET").arg("ci:maxindex").arg(&cluster).query(c)?;
        for i in n..=top.unwrap_or(0).max(n) {
            queue::reroute_list(c, &queue::queue_key(&cluster, i), &cluster, n)?;
            if !membership::held(c, &cluster, i)? {
                queue::reroute_list(c, &queue::working_key(&cluster, i), &cluster, n)?;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        log::warn!("redis.unreachable op=maintain error={}", quote(&e.to_string()));
    }
}

fn spawn_heartbeat(config: &SlaveConfig, member: Member, state: Arc<State>, signals: Arc<Signals>) -> Result<(), String> {
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let every = config.lease / 4;
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if signals.stop.load(Ordering::SeqCst) && signals.abort.load(Ordering::SeqCst) {
                return;
            }
            let index = state.index.load(Ordering::SeqCst);
            match redis.run(|c| member.renew(c, index)) {
                Ok(true) => {}
                Ok(false) => state.lost.store(true, Ordering::SeqCst),
                Err(e) => log::warn!("redis.unreachable op=renew index={index} error={}", quote(&e.to_string())),
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the heartbeat thread: {e}"))
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
