//! The slave's main loop: claim an index, start the background threads
//! (lease, beats, cancel watcher) and SLAVE_EXECUTORS executors (see
//! [`crate::slave::executor`]), then keep the index: re-claim a lost one, put
//! back jobs stranded in progress, move down after a scale-down; on stop, wait
//! for the executors and release the index.

use crate::config::SlaveConfig;
use crate::logging::quote;
use crate::slave::backend::container::Containers;
use crate::slave::backend::retire::Retirer;
use crate::slave::backend::warm::Warm;
use crate::slave::build;
use crate::slave::build_groups::BuildGroups;
use crate::slave::build_user::BuildUser;
use crate::slave::credentials::Credentials;
use crate::slave::engine::{Endpoint, Engine};
use crate::slave::error::CacheError;
pub use crate::slave::error::StartError;
use crate::slave::executor::{self, Shared};
use crate::slave::forge::Forges;
use crate::slave::forge::Poster;
use crate::slave::state::{lock, State, IO_TIMEOUT};
use crate::slave::{cancel_watch, lease};
use crate::store::conn::{log_error, Backoff, Redis, Target};
use crate::store::membership::{self, Member};
use crate::store::queue;
use crate::store::stream::Publisher;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stranded jobs are looked for, and compaction is judged, this often (or
/// every lease, when that is shorter), so indexes are contiguous within three
/// leases of a scale-down (plus the running builds, when the slave must move).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(2);
/// How often the loop looks at the lease and the stop flag.
const TICK: Duration = Duration::from_millis(50);

pub use crate::slave::state::Signals;

/// Who the slave builds as and what it builds with: resolved by the binary
/// from the config (SLAVE_BUILD_USER) and the secrets it took out of its
/// environment at startup.
pub struct Identity {
    pub build_user: BuildUser,
    /// Handed to git alone, per host; never logged, never in a build's env.
    pub git: Credentials,
    /// Forge tokens for commit statuses; never logged, never in a build's env.
    pub forges: Forges,
    /// Secrets per repository (SLAVE_SECRETS_FILE): only in the steps they are granted to.
    pub secrets: crate::slave::repo_secrets::RepoSecrets,
    /// Where Redis is (one per process: clones share what it saw of the sentinels).
    pub redis: Target,
}

/// How often processes that escaped their step are looked for and killed.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// Each call to the Docker engine (a pull has its own limit).
const ENGINE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(config: SlaveConfig, identity: Identity, signals: Arc<Signals>) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.cache).map_err(|error| CacheError::Create { path: config.cache.clone(), error })?;
    crate::slave::build::workspace::prepare_cache(&config.cache, &identity.build_user)?;
    let build_groups = match identity.build_user.switch {
        true => Some(
            BuildGroups::open(&config.cache, config.build_groups)
                .map_err(|error| CacheError::Prepare { path: config.cache.clone(), error })?,
        ),
        false => None,
    };
    crate::slave::proc::reaper::start(REAP_EVERY).map_err(StartError::thread("the reaper of escaped processes"))?;
    let mut redis = Redis::open(&identity.redis, IO_TIMEOUT);
    let member = Member::new(&config.cluster, config.lease);
    let Some(index) = claim(&mut redis, &member, config.index, &signals) else { return Ok(()) };
    let state = Arc::new(State::new(index, config.executors, config.lease));
    take_over(&mut redis, &config, &member, index, &signals);
    lease::spawn(&config, &identity.redis, member.clone(), Arc::clone(&state), Arc::clone(&signals))?;
    lease::spawn_beats(config.lease, Arc::clone(&state))?;
    cancel_watch::spawn(&config, &identity.redis, Arc::clone(&state))?;
    let poster = Poster::spawn(identity.forges, config.forge.clone(), &identity.redis)?;
    let publisher = Publisher::start(&identity.redis).map_err(StartError::thread("the live-log thread"))?;
    let host = hostname();
    let containers = containers(&config, &host)?;
    let shared = Arc::new(Shared {
        config,
        redis: identity.redis.clone(),
        build_user: identity.build_user,
        build_groups,
        git: identity.git,
        secrets: identity.secrets,
        signals: Arc::clone(&signals),
        state: Arc::clone(&state),
        poster,
        publisher,
        host,
        base_env: build::base_env(),
        containers,
    });
    let mut executors = Vec::new();
    for e in 0..shared.config.executors {
        let sh = Arc::clone(&shared);
        let spawned = std::thread::Builder::new().name(format!("executor-{e}")).spawn(move || executor::run(&sh, e));
        executors.push(spawned.map_err(StartError::thread(format!("executor {e}")))?);
    }
    coordinate(&mut redis, &member, &shared);
    for handle in executors {
        let _ = handle.join();
    }
    if let Some(containers) = &shared.containers {
        containers.close();
    }
    state.done.store(true, Ordering::SeqCst);
    let index = state.index();
    let _ = redis.run(|c| member.release(c, index));
    log::info!("slave.stopped cluster={} index={index}", shared.config.cluster);
    Ok(())
}

/// The engine container steps run on (SLAVE_DOCKER), with what a killed
/// run of this slave left on it removed. An engine that does not answer
/// now is no reason not to start: `image:` steps fail with its reason
/// until it does.
fn containers(config: &SlaveConfig, host: &str) -> Result<Option<Containers>, StartError> {
    let endpoint = Endpoint::parse(&config.containers.docker).map_err(|why| StartError::Setting(format!("SLAVE_DOCKER={why}")))?;
    if let Some(image) = &config.containers.default_image {
        build::integration::check_image(image).map_err(|why| StartError::Setting(format!("SLAVE_DEFAULT_IMAGE: {why}")))?;
    }
    let engine = Engine::new(endpoint, ENGINE_TIMEOUT);
    let slave_label = format!("{host}:{}", config.cache.display());
    // The removing thread ends with the process; what it had not removed, the next start's sweep does.
    let (retire, _thread) = Retirer::start(engine.clone());
    let warm = Arc::new(Warm::new(engine.clone(), retire.clone(), &config.containers, slave_label.clone()));
    let containers = Containers { engine, settings: config.containers.clone(), slave_label, retire, warm };
    match containers.engine.ping().and_then(|()| containers.sweep()) {
        Ok((c, n)) => log::info!(
            "slave.containers docker={} removed_containers={c} removed_networks={n}",
            crate::logging::quote(&config.containers.docker)
        ),
        Err(e) => log::warn!(
            "slave.containers_unavailable docker={} error={}: steps with image: fail until the engine answers",
            crate::logging::quote(&config.containers.docker),
            crate::logging::quote(&e.to_string())
        ),
    }
    Ok(Some(containers))
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

pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
