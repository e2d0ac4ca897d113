//! The lease: the heartbeat thread renews this slave's index every quarter
//! lease (a lost one stops the running builds) and re-routes vanished
//! indexes' jobs; the beat thread keeps the build guards from firing while
//! the lease is confirmed, and has them kill every build when it is not.

use crate::config::SlaveConfig;
use crate::slave::error::StartError;
use crate::slave::reroute::reroute_vanished;
use crate::slave::state::{lock, Signals, State, IO_TIMEOUT, UNCONFIRMED_SHARE};
use crate::store::conn::{log_error, Redis, Target};
use crate::store::membership::Member;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The heartbeat thread: renews the lease every quarter lease, re-routes
/// vanished indexes' jobs, and kills the running build when the grace is
/// over or the index was lost.
pub(crate) fn spawn(
    config: &SlaveConfig,
    target: &Target,
    member: Member,
    state: Arc<State>,
    signals: Arc<Signals>,
) -> Result<(), StartError> {
    let mut redis = Redis::open(target, IO_TIMEOUT);
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
                renew(&mut redis, &member, &state);
                if let Err(e) = redis.run(|c| reroute_vanished(c, &member.cluster)) {
                    log_error("reroute", &e);
                }
            }
        })
        .map(drop)
        .map_err(StartError::thread("the heartbeat thread"))
}

/// Renews the lease once; a renewal Redis refuses means the index is
/// another instance's now: every running build is killed.
fn renew(redis: &mut Redis, member: &Member, state: &State) {
    // Renewed and judged under the lock: the loop cannot move or re-claim
    // the index in between.
    let index = lock(&state.index);
    let jobs = state.jobs();
    let executors = (state.busy(), state.slots.len());
    let sent = Instant::now();
    match redis.run(|c| member.renew(c, *index, &jobs, executors)) {
        Ok(true) => state.confirm(sent),
        Ok(false) => {
            if !state.lost.swap(true, Ordering::SeqCst) {
                log::warn!("slave.lease_lost cluster={} index={}: stopping the running builds, if any", member.cluster, *index);
            }
            state.kill_all();
        }
        Err(e) => log_error("renew", &e),
    }
}

/// Beats every build guard (see [`crate::slave::proc::guard`]) from a thread that touches
/// nothing else, so only a stopped or hung slave misses beats — not a slow
/// Redis. Guards fire after half a lease of silence. While the lease goes
/// unconfirmed (Redis unreachable or too slow to renew it), every running
/// build is killed through its guards: another slave may claim the index
/// when the lease runs out, and must not find its builds still running.
pub(crate) fn spawn_beats(lease: Duration, state: Arc<State>) -> Result<(), StartError> {
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
        .map_err(StartError::thread("the beat thread"))
}
