//! The slave's background threads: the lease (renewed every quarter lease;
//! a lost one stops the running build), the re-routing of jobs queued on
//! vanished indexes, the beats that keep build guards from firing, and the
//! cancel watcher (a canceled running build is killed within a second).

use crate::config::SlaveConfig;
use crate::store::conn::{log_error, Redis};
use crate::store::keys;
use crate::store::membership::{self, Member};
use crate::store::queue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
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

/// One executor's build: what the heartbeat, the cancel watcher and the
/// other executors need to know of it.
#[derive(Default)]
pub struct Slot {
    /// `(id, <repo>:<branch>)` of the build this executor runs, from START on.
    job: Mutex<Option<(String, String)>>,
    /// Kill this build: the grace is over, the index is lost, or it was canceled.
    pub kill: AtomicBool,
    /// It was canceled (`POST /cancel`, or superseded): the cancel watcher
    /// set it with `kill`; the executor stores `canceled`.
    pub canceled: AtomicBool,
}

/// Executors pass this gate to take a job; the loop closes it (and waits
/// for every executor to be out) before it moves or re-claims the index.
#[derive(Default)]
struct Gate {
    closed: bool,
    inside: usize,
}

/// What the loop, the executors and the background threads share.
pub struct State {
    /// The index held. It changes only under this lock, in the same step as
    /// the Redis script that moves it, so the heartbeat never renews an index
    /// this slave has just left.
    pub index: Mutex<u32>,
    /// The heartbeat found the index held by another instance.
    pub lost: AtomicBool,
    /// One per executor (SLAVE_EXECUTORS).
    pub slots: Vec<Slot>,
    /// Jobs taken (in the in-progress list) but not started, because a build
    /// of their branch runs here or elsewhere: started when it is free.
    pub deferred: Mutex<Vec<String>>,
    /// Held while an executor starts or steals a job and claims its slot,
    /// so two executors never start two builds of one branch, and while the
    /// loop sweeps the in-progress list for stranded jobs.
    pub starting: Mutex<()>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    /// The loop has ended and released the index: renew no more.
    pub done: AtomicBool,
    /// SLAVE_LEASE.
    lease: Duration,
    /// When the last renewal (or the claim) that Redis confirmed was sent:
    /// the lease runs at least one lease from then.
    confirmed: Mutex<Instant>,
}

/// Past this share of a lease without a confirmed renewal (renewals go every
/// quarter lease: two missed, plus slack for a loaded machine), the slave
/// starts nothing and has its build guards SIGKILL every running build at
/// once: its index may pass to another slave when the lease runs out, and
/// they are dead well before then.
const UNCONFIRMED_SHARE: (u32, u32) = (3, 4);

impl State {
    pub fn new(index: u32, executors: usize, lease: Duration) -> State {
        State {
            lease,
            confirmed: Mutex::new(Instant::now()),
            index: Mutex::new(index),
            lost: AtomicBool::new(false),
            slots: (0..executors.max(1)).map(|_| Slot::default()).collect(),
            deferred: Mutex::new(Vec::new()),
            starting: Mutex::new(()),
            gate: Mutex::new(Gate::default()),
            gate_changed: Condvar::new(),
            done: AtomicBool::new(false),
        }
    }

    pub fn index(&self) -> u32 {
        *lock(&self.index)
    }

    /// Redis confirmed the lease in a call sent at `sent` (a renewal or a claim).
    pub fn confirm(&self, sent: Instant) {
        let mut at = lock(&self.confirmed);
        *at = (*at).max(sent);
    }

    /// Whether the lease was confirmed recently enough to start or keep building.
    pub fn lease_fresh(&self) -> bool {
        lock(&self.confirmed).elapsed() < self.lease * UNCONFIRMED_SHARE.0 / UNCONFIRMED_SHARE.1
    }

    /// Sets the build executor `slot` runs (`None` when idle).
    pub fn set_job(&self, slot: usize, job: Option<(String, String)>) {
        *lock(&self.slots[slot].job) = job;
    }

    /// Every job this slave holds: running builds and deferred ones.
    pub fn jobs(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.slots.iter().filter_map(|s| lock(&s.job).as_ref().map(|(id, _)| id.clone())).collect();
        ids.extend(lock(&self.deferred).iter().cloned());
        ids
    }

    /// `<repo>:<branch>` of every running build (START refuses a second one).
    pub fn busy_branches(&self) -> Vec<String> {
        self.slots.iter().filter_map(|s| lock(&s.job).as_ref().map(|(_, b)| b.clone())).collect()
    }

    /// Executors running a build now.
    pub fn busy(&self) -> usize {
        self.slots.iter().filter(|s| lock(&s.job).is_some()).count()
    }

    /// Kills every running build (grace over, index lost).
    pub fn kill_all(&self) {
        for s in &self.slots {
            s.kill.store(true, Ordering::SeqCst);
        }
    }

    /// Kills the running build `id`, if it runs here (and marks it canceled).
    pub fn cancel_if_running(&self, id: &str) -> bool {
        for s in &self.slots {
            let job = lock(&s.job);
            if job.as_ref().is_some_and(|(j, _)| j == id) {
                s.canceled.store(true, Ordering::SeqCst);
                s.kill.store(true, Ordering::SeqCst);
                return true;
            }
        }
        false
    }

    /// An executor enters the gate to take and build one job; `None` when
    /// the slave stops. Blocks while the loop holds the gate closed.
    pub fn enter(&self, stop: &AtomicBool) -> Option<Inside<'_>> {
        let mut gate = lock(&self.gate);
        loop {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            if !gate.closed {
                gate.inside += 1;
                return Some(Inside(self));
            }
            gate = self.wait_gate(gate);
        }
    }

    /// Closes the gate and waits until no executor is inside (their builds
    /// ended); `false` if the slave stopped meanwhile (the gate is opened again).
    pub fn close_when_idle(&self, stop: &AtomicBool) -> bool {
        let mut gate = lock(&self.gate);
        gate.closed = true;
        while gate.inside > 0 {
            if stop.load(Ordering::SeqCst) {
                gate.closed = false;
                self.gate_changed.notify_all();
                return false;
            }
            gate = self.wait_gate(gate);
        }
        true
    }

    /// Waits for the gate to change (or 100 ms, to look at the stop flag).
    fn wait_gate<'a>(&self, gate: std::sync::MutexGuard<'a, Gate>) -> std::sync::MutexGuard<'a, Gate> {
        self.gate_changed.wait_timeout(gate, Duration::from_millis(100)).unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn open(&self) {
        lock(&self.gate).closed = false;
        self.gate_changed.notify_all();
    }
}

/// An executor inside the gate; leaving is dropping it.
pub struct Inside<'a>(&'a State);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        lock(&self.0.gate).inside -= 1;
        self.0.gate_changed.notify_all();
    }
}

/// A poisoned lock still guards plain data: take it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long the cancel watcher's pop blocks (it then looks at the index again).
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// The cancel watcher: on its own connection, pops the ids the CANCEL and
/// ENQUEUE scripts push onto the index's cancel list as they cancel a
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
                let key = keys::cancel(&cluster, state.index());
                let popped = redis.run(|c| queue::pop_canceled(c, &key, CANCEL_WAIT));
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
    let top = membership::max_index(c, cluster)?;
    let routing = queue::stored_routing(c)?;
    for i in n..=top.unwrap_or(0).max(n) {
        queue::reroute_list(c, &keys::queue(cluster, i), cluster, n, routing)?;
        if !membership::held(c, cluster, i)? {
            queue::reroute_list(c, &keys::working(cluster, i), cluster, n, routing)?;
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
                    state.kill_all();
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
                    let index = lock(&state.index);
                    let jobs = state.jobs();
                    let executors = (state.busy(), state.slots.len());
                    let sent = Instant::now();
                    match redis.run(|c| member.renew(c, *index, &jobs, executors)) {
                        Ok(true) => state.confirm(sent),
                        Ok(false) => {
                            if !state.lost.swap(true, Ordering::SeqCst) {
                                log::warn!(
                                    "slave.lease_lost cluster={} index={}: stopping the running builds, if any",
                                    member.cluster,
                                    *index
                                );
                            }
                            state.kill_all();
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

/// Beats every build guard (see [`crate::slave::proc::guard`]) from a thread that touches
/// nothing else, so only a stopped or hung slave misses beats — not a slow
/// Redis. Guards fire after half a lease of silence. While the lease goes
/// unconfirmed (Redis unreachable or too slow to renew it), every running
/// build is killed through its guards: another slave may claim the index
/// when the lease runs out, and must not find its builds still running.
pub fn spawn_beats(lease: Duration, state: Arc<State>) -> Result<(), String> {
    crate::slave::proc::guard::set_silence_limit(lease / 2);
    let every = (lease / 8).min(Duration::from_millis(100));
    std::thread::Builder::new()
        .name("beats".into())
        .spawn(move || {
            let mut fresh = true;
            while !state.done.load(Ordering::SeqCst) {
                if state.lease_fresh() {
                    crate::slave::proc::guard::beat_all();
                    fresh = true;
                } else {
                    if fresh && state.busy() > 0 {
                        log::warn!(
                            "slave.lease_unconfirmed index={}: no renewal confirmed for {} ms; stopping the running builds before the lease can run out",
                            state.index(),
                            lease.as_millis() * u128::from(UNCONFIRMED_SHARE.0) / u128::from(UNCONFIRMED_SHARE.1)
                        );
                    }
                    fresh = false;
                    state.kill_all();
                    crate::slave::proc::guard::fire_all();
                }
                std::thread::sleep(every);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the beat thread: {e}"))
}
