//! The slave's background threads: the lease (renewed every quarter lease;
//! a lost one stops the running build), the re-routing of jobs queued on
//! vanished indexes, the beats that keep build guards from firing, and the
//! cancel watcher (a canceled running build is killed within a second).

use crate::config::SlaveConfig;
use crate::membership::{self, Member};
use crate::queue;
use crate::redis_conn::{log_error, Redis};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags the binary's signal handler sets.
#[derive(Default)]
pub struct Signals {
    /// Stop taking jobs (SIGTERM/SIGINT).
    pub stop: AtomicBool,
    /// Grace period over: kill the running build, store nothing.
    pub abort: AtomicBool,
}

/// What the loop and the heartbeat share.
pub struct State {
    /// The index held. It changes only under this lock, in the same step as
    /// the Redis script that moves it, so the heartbeat never renews an index
    /// this slave has just left.
    pub index: Mutex<u32>,
    /// The heartbeat found the index held by another instance.
    pub lost: AtomicBool,
    /// Kill the running build: the grace is over or the index is lost.
    pub kill_build: AtomicBool,
    /// The running build was canceled (`POST /cancel`, or superseded): the
    /// cancel watcher set it with `kill_build`; the loop stores `canceled`.
    pub canceled: AtomicBool,
    /// The build running now, if any (the heartbeat's renew needs it).
    pub job: Mutex<Option<String>>,
    /// The loop has ended and released the index: renew no more.
    pub done: AtomicBool,
}

impl State {
    pub fn new(index: u32) -> State {
        State {
            index: Mutex::new(index),
            lost: AtomicBool::new(false),
            kill_build: AtomicBool::new(false),
            canceled: AtomicBool::new(false),
            job: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }

    pub fn index(&self) -> u32 {
        *self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kills the running build if it is `id` (and marks it canceled).
    /// Sets the job this slave runs (`None` when idle).
    pub fn set_job(&self, id: Option<String>) {
        *self.job.lock().unwrap_or_else(|p| p.into_inner()) = id;
    }

    pub fn cancel_if_running(&self, id: &str) -> bool {
        let job = self.job.lock().unwrap_or_else(|p| p.into_inner());
        if job.as_deref() != Some(id) {
            return false;
        }
        self.canceled.store(true, Ordering::SeqCst);
        self.kill_build.store(true, Ordering::SeqCst);
        true
    }
}

/// How long the cancel watcher's pop blocks (it then looks at the index again).
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// The cancel watcher: on its own connection, pops the ids the CANCEL and
/// ENQUEUE scripts push onto `ci:cancel:<cluster>:<index>` as they cancel a
/// running build, and kills the running build when it is one of them. The
/// pop returns as soon as an id is pushed, and the runner polls the kill flag
/// every 100 ms: the build's process groups get SIGTERM within about 0.1 s
/// of the cancel (SIGKILL after the runner's 1 s grace).
pub fn spawn_cancel_watch(config: &SlaveConfig, state: Arc<State>) -> Result<(), String> {
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let cluster = config.cluster.clone();
    std::thread::Builder::new()
        .name("cancel".into())
        .spawn(move || {
            while !state.done.load(Ordering::SeqCst) {
                let key = queue::cancel_key(&cluster, state.index());
                let popped: redis::RedisResult<Option<(String, String)>> =
                    redis.run(|c| redis::cmd("BLPOP").arg(&key).arg(CANCEL_WAIT.as_secs_f64()).query(c));
                match popped {
                    Ok(Some((_, id))) => {
                        if state.cancel_if_running(&id) {
                            log::info!("build.cancel id={id}: canceled while running; killing its processes");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log_error("cancel-watch", &e);
                        std::thread::sleep(CANCEL_WAIT);
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the cancel watcher thread: {e}"))
}

/// Re-routes jobs queued on indexes at or above N, and in-progress jobs of
/// dead holders there. Run by the heartbeat, so such jobs never wait for
/// this slave's running build to end.
fn reroute_vanished(c: &mut redis::Connection, cluster: &str) -> redis::RedisResult<()> {
    let n = membership::live_count(c, cluster)?;
    if n == 0 {
        return Ok(());
    }
    let top: Option<u32> = redis::cmd("HGET").arg("ci:maxindex").arg(cluster).query(c)?;
    let routing = queue::stored_routing(c)?;
    for i in n..=top.unwrap_or(0).max(n) {
        queue::reroute_list(c, &queue::queue_key(cluster, i), cluster, n, routing)?;
        if !membership::held(c, cluster, i)? {
            queue::reroute_list(c, &queue::working_key(cluster, i), cluster, n, routing)?;
        }
    }
    Ok(())
}

/// The heartbeat thread: renews the lease every quarter lease, re-routes
/// vanished indexes' jobs, and kills the running build when the grace is
/// over or the index was lost.
pub fn spawn(config: &SlaveConfig, member: Member, state: Arc<State>, signals: Arc<Signals>) -> Result<(), String> {
    let mut redis = Redis::open(&config.redis_url, IO_TIMEOUT)?;
    let every = config.lease / 4;
    let tick = every.min(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(tick);
                if signals.abort.load(Ordering::SeqCst) {
                    state.kill_build.store(true, Ordering::SeqCst);
                }
                if state.done.load(Ordering::SeqCst) {
                    return;
                }
                if last.elapsed() < every {
                    continue;
                }
                last = Instant::now();
                {
                    // Renewed and judged under the lock: the loop cannot move
                    // or re-claim the index in between.
                    let index = state.index.lock().unwrap_or_else(|p| p.into_inner());
                    let job = state.job.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    match redis.run(|c| member.renew(c, *index, job.as_deref())) {
                        Ok(true) => {}
                        Ok(false) => {
                            if !state.lost.swap(true, Ordering::SeqCst) {
                                log::warn!(
                                    "slave.lease_lost cluster={} index={}: stopping the running build, if any",
                                    member.cluster,
                                    *index
                                );
                            }
                            state.kill_build.store(true, Ordering::SeqCst);
                        }
                        Err(e) => log_error("renew", &e),
                    }
                }
                if let Err(e) = redis.run(|c| reroute_vanished(c, &member.cluster)) {
                    log_error("reroute", &e);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the heartbeat thread: {e}"))
}

/// Beats every build guard (see [`crate::guard`]) from a thread that touches
/// nothing else, so only a stopped or hung slave misses beats — not a slow
/// Redis. Guards fire after half a lease of silence.
pub fn spawn_beats(lease: Duration, state: Arc<State>) -> Result<(), String> {
    crate::guard::set_silence_limit(lease / 2);
    let every = (lease / 8).min(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("beats".into())
        .spawn(move || {
            while !state.done.load(Ordering::SeqCst) {
                crate::guard::beat_all();
                std::thread::sleep(every);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the beat thread: {e}"))
}
