//! The slave's shared state: the index it holds, what each executor builds,
//! the deferred jobs, the gate executors pass to take a job, and when Redis
//! last confirmed the lease. One lock per field; [`lock`] takes a poisoned one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Socket timeout of the slave's Redis connections; blocking pops wait less.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

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
pub(crate) struct Slot {
    /// `(id, <repo>:<branch>)` of the build this executor runs, from START on.
    job: Mutex<Option<(String, String)>>,
    /// Kill this build: the grace is over, the index is lost, or it was canceled.
    pub(crate) kill: AtomicBool,
    /// It was canceled (`POST /cancel`, or superseded): the cancel watcher
    /// set it with `kill`; the executor stores `canceled`.
    pub(crate) canceled: AtomicBool,
}

/// Executors pass this gate to take a job; the loop closes it (and waits
/// for every executor to be out) before it moves or re-claims the index.
#[derive(Default)]
struct Gate {
    closed: bool,
    inside: usize,
}

/// What the loop, the executors and the background threads share.
pub(crate) struct State {
    /// The index held. It changes only under this lock, in the same step as
    /// the Redis script that moves it, so the heartbeat never renews an index
    /// this slave has just left.
    pub(crate) index: Mutex<u32>,
    /// The heartbeat found the index held by another instance.
    pub(crate) lost: AtomicBool,
    /// One per executor (SLAVE_EXECUTORS).
    pub(crate) slots: Vec<Slot>,
    /// Jobs taken (in the in-progress list) but not started, because a build
    /// of their branch runs here or elsewhere: started when it is free.
    pub(crate) deferred: Mutex<Vec<String>>,
    /// Held while an executor starts or steals a job and claims its slot,
    /// so two executors never start two builds of one branch, and while the
    /// loop sweeps the in-progress list for stranded jobs.
    pub(crate) starting: Mutex<()>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    /// The loop has ended and released the index: renew no more.
    pub(crate) done: AtomicBool,
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
pub(crate) const UNCONFIRMED_SHARE: (u32, u32) = (3, 4);

impl State {
    pub(crate) fn new(index: u32, executors: usize, lease: Duration) -> State {
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

    pub(crate) fn index(&self) -> u32 {
        *lock(&self.index)
    }

    /// Redis confirmed the lease in a call sent at `sent` (a renewal or a claim).
    pub(crate) fn confirm(&self, sent: Instant) {
        let mut at = lock(&self.confirmed);
        *at = (*at).max(sent);
    }

    /// Whether the lease was confirmed recently enough to start or keep building.
    pub(crate) fn lease_fresh(&self) -> bool {
        lock(&self.confirmed).elapsed() < self.lease * UNCONFIRMED_SHARE.0 / UNCONFIRMED_SHARE.1
    }

    /// Sets the build executor `slot` runs (`None` when idle).
    pub(crate) fn set_job(&self, slot: usize, job: Option<(String, String)>) {
        *lock(&self.slots[slot].job) = job;
    }

    /// Every job this slave holds: running builds and deferred ones.
    pub(crate) fn jobs(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.slots.iter().filter_map(|s| lock(&s.job).as_ref().map(|(id, _)| id.clone())).collect();
        ids.extend(lock(&self.deferred).iter().cloned());
        ids
    }

    /// `<repo>:<branch>` of every running build (START refuses a second one).
    pub(crate) fn busy_branches(&self) -> Vec<String> {
        self.slots.iter().filter_map(|s| lock(&s.job).as_ref().map(|(_, b)| b.clone())).collect()
    }

    /// Executors running a build now.
    pub(crate) fn busy(&self) -> usize {
        self.slots.iter().filter(|s| lock(&s.job).is_some()).count()
    }

    /// Kills every running build (grace over, index lost).
    pub(crate) fn kill_all(&self) {
        for s in &self.slots {
            s.kill.store(true, Ordering::SeqCst);
        }
    }

    /// Kills the running build `id`, if it runs here (and marks it canceled).
    pub(crate) fn cancel_if_running(&self, id: &str) -> bool {
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
    pub(crate) fn enter(&self, stop: &AtomicBool) -> Option<Inside<'_>> {
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
    pub(crate) fn close_when_idle(&self, stop: &AtomicBool) -> bool {
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

    pub(crate) fn open(&self) {
        lock(&self.gate).closed = false;
        self.gate_changed.notify_all();
    }
}

/// An executor inside the gate; leaving is dropping it.
pub(crate) struct Inside<'a>(&'a State);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        lock(&self.0.gate).inside -= 1;
        self.0.gate_changed.notify_all();
    }
}

/// A poisoned lock still guards plain data: take it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
