//! All Redis keys and scripts of the build queue. Verbs: [`enqueue`] (hook),
//! [`take`], [`start`], [`finish`], [`requeue_working`], [`reroute_orphans`]
//! (slave). Each verb that changes more than one key is one Lua script, so a
//! crash between two writes cannot happen.
//!
//! The keys are named in [`keys`], the scripts are `scripts/*.lua` (see
//! [`crate::store::scripts`]).

use crate::store::keys;
use crate::store::{job, scripts};
use redis::{Connection, RedisResult};

/// `<cluster>-<index>`: the slave as records, logs and answers name it (the
/// scripts build and parse it the same way: `cluster .. '-' .. index`).
pub fn slave_name(cluster: &str, index: u32) -> String {
    format!("{cluster}-{index}")
}

pub use crate::config::CancelRunning;

/// How long a delivery id is remembered for redelivery detection.
pub const DELIVERY_TTL_SECS: u64 = 7 * 24 * 3600;

/// Jobs of each sibling queue a stealer looks at (its oldest ones).
const STEAL_DEPTH: u32 = 8;

/// What a web-hook asks the queue for.
pub struct Job<'a> {
    pub push: &'a crate::payload::Push,
    pub delivery: Option<&'a str>,
    pub reset: bool,
    /// HISTORY_KEEP: builds of the branch kept (at least 1).
    pub keep: usize,
    /// HOOK_CANCEL_RUNNING.
    pub cancel_running: CancelRunning,
    /// HOOK_ROUTING: the rule this hook routes by (it must be the deployment's, [`agree_routing`]).
    pub routing: crate::routing::Routing,
    /// A build of its own: a manual run that names its commit (`?id=`) or
    /// carries parameters. It never coalesces into the branch's pending
    /// build and no later push replaces it (what was asked for runs), it is
    /// not the branch's last push (re-runs and schedules build that), and
    /// it cancels no running build.
    pub alone: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        id: String,
        slave: String,
        /// The branch's running build this one canceled (HOOK_CANCEL_RUNNING).
        canceled: Option<String>,
    },
    Coalesced {
        id: String,
        slave: String,
    },
    Duplicate {
        id: String,
    },
    /// No cluster with live slaves offers the hints; the live ones are listed.
    NoSlave {
        live: String,
    },
    /// Nothing queued: the deployment routes by `agreed`, not by the job's rule.
    OtherRouting {
        agreed: String,
    },
}

/// Stores the push record and queues its build in one atomic script.
pub fn enqueue(conn: &mut Connection, job: &Job) -> RedisResult<Enqueued> {
    let p = job.push;
    // 3 fields (4 when queued: the running build it canceled, or "")
    let reply: Vec<String> = scripts::ENQUEUE
        .prepare()
        .arg(&p.repo)
        .arg(&p.branch)
        .arg(&p.sha)
        .arg(job::encode(p))
        .arg(crate::routing::repo_hash(&p.repo))
        .arg(p.hints.join(" "))
        .arg(job.delivery.unwrap_or(""))
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(p.default_branch.as_deref().unwrap_or(""))
        .arg(if job.reset { "1" } else { "0" })
        .arg(DELIVERY_TTL_SECS)
        .arg(job.keep.max(1))
        .arg(if !job.alone && job.cancel_running.applies(&p.branch) { "1" } else { "0" })
        .arg(job.routing.as_str())
        .arg(job.routing.points(&p.repo).iter().map(u32::to_string).collect::<Vec<_>>().join(" "))
        .arg(p.event.as_str())
        .arg(if job.alone { "1" } else { "0" })
        .arg(if p.before.is_some() { job::encode(&crate::payload::Push { before: None, ..p.clone() }) } else { job::encode(p) })
        .arg(crate::payload::title(&p.message))
        .invoke(conn)?;
    let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
    Ok(match reply.first().map(String::as_str) {
        Some("queued") => Enqueued::Queued { id: field(1), slave: field(2), canceled: Some(field(3)).filter(|c| !c.is_empty()) },
        Some("coalesced") => Enqueued::Coalesced { id: field(1), slave: field(2) },
        Some("duplicate") => Enqueued::Duplicate { id: field(1) },
        Some("routing") => Enqueued::OtherRouting { agreed: field(1) },
        _ => Enqueued::NoSlave { live: field(1) },
    })
}

/// Blocks up to `wait` for the next job of a slave, moving it atomically to
/// its in-progress list. The connection's read timeout must exceed `wait`.
pub fn take(conn: &mut Connection, cluster: &str, index: u32, wait: std::time::Duration) -> RedisResult<Option<String>> {
    redis::cmd("BLMOVE")
        .arg(keys::queue(cluster, index))
        .arg(keys::working(cluster, index))
        .arg("RIGHT")
        .arg("LEFT")
        .arg(wait.as_secs_f64())
        .query(conn)
}

/// A job taken and marked running.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: String,
    pub attempt: String,
    pub push: crate::payload::Push,
    pub reset: bool,
}

/// What [`start`] made of a taken job.
#[derive(Debug)]
pub enum Begun {
    /// Marked running: build it.
    Run(Box<Started>),
    /// The slave died during each of the last `died` attempts: stored as
    /// failed instead (SLAVE_MAX_ATTEMPTS). The push, for its commit status.
    GaveUp { died: u32, push: Option<Box<crate::payload::Push>> },
    /// The record is gone or already finished: nothing to build.
    Dropped,
    /// A build of its branch runs here or on another slave: not started;
    /// it stays in the in-progress list until that build ends.
    Busy,
}

/// Marks a taken job running (clearing its pending slot) and returns what to
/// build, unless its slave died during `max_attempts` attempts already.
/// `busy`: `<repo>:<branch>` of the builds this slave runs.
pub fn start(conn: &mut Connection, id: &str, working: &str, slave: &str, max_attempts: u32, busy: &[String]) -> RedisResult<Begun> {
    let reply: Option<Vec<String>> = scripts::START
        .prepare()
        .arg(id)
        .arg(working)
        .arg(slave)
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(max_attempts)
        .arg(busy.join("\n"))
        .invoke(conn)?;
    Ok(match reply.as_deref() {
        Some([busy]) if busy == "busy" => Begun::Busy,
        Some([gaveup, died, push, sha]) if gaveup == "gaveup" => Begun::GaveUp {
            died: died.parse().unwrap_or(max_attempts),
            push: job::decode(push).map(|mut p| {
                p.sha = sha.clone();
                Box::new(p)
            }),
        },
        Some([attempt, push, sha, reset]) => match job::decode(push) {
            Some(mut push) => {
                push.sha = sha.clone(); // a coalesced push may have replaced it
                Begun::Run(Box::new(Started { id: id.to_string(), attempt: attempt.clone(), push, reset: reset == "1" }))
            }
            None => Begun::Dropped,
        },
        _ => Begun::Dropped,
    })
}

/// The pushes (their commit as queued) of the jobs of `repo` among the
/// `depth` oldest in a slave's queue, oldest first: one fetch into the
/// mirror can bring their commits too. Reads only.
pub fn queued_pushes(conn: &mut Connection, cluster: &str, index: u32, repo: &str, depth: u32) -> RedisResult<Vec<crate::payload::Push>> {
    let reply: Vec<String> = scripts::QUEUED.prepare().arg(keys::queue(cluster, index)).arg(repo).arg(depth).invoke(conn)?;
    Ok(reply
        .chunks_exact(2)
        .filter_map(|pair| {
            let mut push = job::decode(&pair[0])?;
            push.sha = pair[1].clone();
            Some(push)
        })
        .collect())
}

/// A job stolen from a sibling's queue (SLAVE_STEAL_AFTER).
#[derive(Debug, PartialEq, Eq)]
pub struct Stolen {
    pub id: String,
    /// The slave whose queue it waited in.
    pub from: String,
}

/// Takes the oldest job that waited longer than `after` in a sibling's
/// queue into this slave's in-progress list (see STEAL), if there is one.
pub fn steal(conn: &mut Connection, cluster: &str, index: u32, after: std::time::Duration, busy: &[String]) -> RedisResult<Option<Stolen>> {
    let reply: Option<(String, String)> = scripts::STEAL
        .prepare()
        .arg(cluster)
        .arg(index)
        .arg(after.as_secs_f64())
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(busy.join("\n"))
        .arg(keys::working(cluster, index))
        .arg(slave_name(cluster, index))
        .arg(STEAL_DEPTH)
        .invoke(conn)?;
    Ok(reply.map(|(id, from)| Stolen { id, from }))
}

/// Puts `ids` back at the front of the index's queue, each only if it is
/// still in the in-progress list; returns how many moved.
pub fn requeue_ids(conn: &mut Connection, cluster: &str, index: u32, ids: &[String]) -> RedisResult<u32> {
    let mut call = scripts::REQUEUE_IDS.prepare();
    call.key(keys::working(cluster, index)).key(keys::queue(cluster, index));
    for id in ids {
        call.arg(id);
    }
    call.invoke(conn)
}

/// Blocks up to `wait` for the id of a running build canceled on the slave
/// index whose cancel list is `key` ([`keys::cancel`]).
pub fn pop_canceled(conn: &mut Connection, key: &str, wait: std::time::Duration) -> RedisResult<Option<(String, String)>> {
    redis::cmd("BLPOP").arg(key).arg(wait.as_secs_f64()).query(conn)
}

/// The in-progress list of an index.
pub fn working(conn: &mut Connection, cluster: &str, index: u32) -> RedisResult<Vec<String>> {
    redis::cmd("LRANGE").arg(keys::working(cluster, index)).arg(0).arg(-1).query(conn)
}

/// The attempt ended without a result and without its slave dying (shutdown
/// grace over, lease lost): the next start does not count it as a death.
pub fn abandon(conn: &mut Connection, job: &Started) -> RedisResult<()> {
    scripts::ABANDON.prepare().arg(&job.id).arg(&job.attempt).invoke::<i64>(conn).map(drop)
}

/// The outcome a slave stores.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub passed: bool,
    /// It could not run (checkout failed, integration.yml missing or
    /// invalid, unstorable): an error, not a failure, to the forge.
    pub could_not_run: bool,
    pub log: Vec<String>,
    pub seconds: u64,
}

/// What [`finish`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The outcome, as passed or failed.
    Stored,
    /// The build was canceled while it ran: it stays `canceled`, with this log.
    Canceled,
    /// Nothing: a later attempt of the same build has started since.
    Superseded,
}

/// Stores the result and acknowledges the job, unless a later attempt of the
/// same build has started since. A build canceled meanwhile stays canceled.
/// `last_lines` go to the live log before its end (see [`crate::store::stream`]).
pub fn finish(conn: &mut Connection, job: &Started, working: &str, outcome: &Outcome, last_lines: &[String]) -> RedisResult<Finished> {
    let stored: i64 = scripts::FINISH
        .prepare()
        .arg(&job.id)
        .arg(&job.attempt)
        .arg(working)
        .arg(if outcome.passed { "passed" } else { "failed" })
        .arg(serde_json::to_string(&outcome.log).unwrap_or_else(|_| "[]".into()))
        .arg(outcome.seconds)
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(keys::log(&job.id))
        .arg(crate::store::stream::STREAM_CAP)
        .arg(crate::store::stream::END_FIELD)
        .arg(crate::store::stream::ENDED_TTL_SECS)
        .arg(crate::store::stream::LINE_FIELD)
        .arg(last_lines)
        .invoke(conn)?;
    Ok(match stored {
        1 => Finished::Stored,
        2 => Finished::Canceled,
        _ => Finished::Superseded,
    })
}

/// Which build `POST /cancel` means.
pub enum CancelTarget<'a> {
    /// The branch's latest build.
    Branch(&'a str),
    Id(&'a str),
}

/// What [`cancel`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Canceled {
    /// It was queued: out of its queue, stored canceled; it never starts.
    Queued {
        id: String,
    },
    /// It was running: stored canceled; its slave kills it (cancel watcher).
    Running {
        id: String,
    },
    /// It had already finished with `state`: nothing changed.
    Finished {
        id: String,
        state: String,
    },
    NoSuchBuild,
}

/// Cancels a queued or running build of `repo` in one script; `why` follows
/// `[canceled] ` in its log.
pub fn cancel(conn: &mut Connection, repo: &str, target: CancelTarget, why: &str) -> RedisResult<Canceled> {
    let (branch, id) = match target {
        CancelTarget::Branch(b) => (b, ""),
        CancelTarget::Id(i) => ("", i),
    };
    let reply: Vec<String> =
        scripts::CANCEL.prepare().arg(repo).arg(branch).arg(id).arg(why).arg(format!("{:.3}", crate::unix_now())).invoke(conn)?;
    Ok(match reply.as_slice() {
        [was, id] if was == "queued" => Canceled::Queued { id: id.clone() },
        [was, id] if was == "running" => Canceled::Running { id: id.clone() },
        [_, id, state] => Canceled::Finished { id: id.clone(), state: state.clone() },
        _ => Canceled::NoSuchBuild,
    })
}

/// Puts every job of an in-progress list back at the front of its queue:
/// what a dead holder of this index was running is run again.
pub fn requeue_working(conn: &mut Connection, cluster: &str, index: u32) -> RedisResult<u32> {
    let (from, to) = (keys::working(cluster, index), keys::queue(cluster, index));
    let mut moved = 0;
    while redis::cmd("LMOVE").arg(&from).arg(&to).arg("LEFT").arg("RIGHT").query::<Option<String>>(conn)?.is_some() {
        moved += 1;
    }
    Ok(moved)
}

/// Re-routes every job of `list` (a queue, or the in-progress list of a dead
/// slave) by `routing` over `n` slaves; returns how many moved.
pub fn reroute_list(conn: &mut Connection, list: &str, cluster: &str, n: u32, routing: crate::routing::Routing) -> RedisResult<u32> {
    let mut moved = 0;
    loop {
        let Some(id): Option<String> = redis::cmd("LINDEX").arg(list).arg(-1).query(conn)? else { return Ok(moved) };
        let repo: Option<String> = redis::cmd("HGET").arg(keys::build(&id)).arg("repo").query(conn)?;
        let Some(repo) = repo else {
            let _: () = redis::cmd("LREM").arg(list).arg(1).arg(&id).query(conn)?;
            continue;
        };
        let index = routing.index(&repo, n);
        let target = keys::queue(cluster, index);
        let done: i64 = scripts::MOVE_ONE.prepare().key(list).key(&target).arg(&id).invoke(conn)?;
        if done == 1 {
            let _: () = redis::cmd("HSET").arg(keys::build(&id)).arg("slave").arg(slave_name(cluster, index)).query(conn)?;
            log::info!("build.rerouted id={id} repo={} from={list} to={target}", crate::logging::quote(&repo));
            moved += 1;
        }
    }
}

/// Lengths of every queue of a cluster up to `max_index`.
pub fn depths(conn: &mut Connection, cluster: &str, max_index: u32) -> RedisResult<Vec<(u32, u64)>> {
    let mut pipe = redis::pipe();
    for i in 0..=max_index {
        pipe.cmd("LLEN").arg(keys::queue(cluster, i));
    }
    let lens: Vec<u64> = pipe.query(conn)?;
    Ok(lens.into_iter().enumerate().map(|(i, l)| (i as u32, l)).collect())
}

/// The token every hook of a deployment shares: the first hook to start
/// stores its generated one (SET NX); the others adopt it. Returns the token
/// and whether this call stored it.
pub fn shared_token(conn: &mut Connection, candidate: &str) -> RedisResult<(String, bool)> {
    let stored: bool = redis::cmd("SET").arg(keys::TOKEN).arg(candidate).arg("NX").query::<Option<String>>(conn)?.is_some();
    let token: String = redis::cmd("GET").arg(keys::TOKEN).query(conn)?;
    Ok((token, stored))
}

/// Stores `rule` as the deployment's routing rule unless one is stored
/// already (SET NX); returns the stored word, which the caller compares.
pub fn agree_routing(conn: &mut Connection, rule: crate::routing::Routing) -> RedisResult<String> {
    let _: Option<String> = redis::cmd("SET").arg(keys::ROUTING).arg(rule.as_str()).arg("NX").query(conn)?;
    redis::cmd("GET").arg(keys::ROUTING).query(conn)
}

/// The deployment's routing rule, as slaves re-route by it: the stored one,
/// `mod` when absent (no hook with HOOK_ROUTING has started).
pub fn stored_routing(conn: &mut Connection) -> RedisResult<crate::routing::Routing> {
    let word: Option<String> = redis::cmd("GET").arg(keys::ROUTING).query(conn)?;
    match word {
        None => Ok(crate::routing::Routing::Mod),
        Some(w) => crate::routing::Routing::parse(&w).ok_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "the stored routing rule is neither mod nor jump",
                format!("{}={w:?}", keys::ROUTING),
            ))
        }),
    }
}

/// The branch asked for, else the repository's default branch as the last
/// push reported it (`None` when neither is known).
pub fn branch_or_default(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Option<String>> {
    match branch {
        Some(b) => Ok(Some(b.to_string())),
        None => redis::cmd("GET").arg(keys::default_branch(repo)).query(conn),
    }
}

/// The last push of a branch, for re-runs.
pub fn last_push(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Option<crate::payload::Push>> {
    let Some(branch) = branch_or_default(conn, repo, branch)? else { return Ok(None) };
    let text: Option<String> = redis::cmd("GET").arg(keys::push(repo, &branch)).query(conn)?;
    Ok(text.and_then(|t| job::decode(&t)))
}
