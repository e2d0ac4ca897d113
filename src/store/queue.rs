//! All Redis keys and scripts of the build queue. Verbs: [`enqueue`] (hook),
//! [`take`], [`start`], [`finish`], [`requeue_working`], [`reroute_orphans`]
//! (slave). Each verb that changes more than one key is one Lua script, so a
//! crash between two writes cannot happen.
//!
//! Keys (prefix `ci:`), documented in the README:
//! `build:<id>` HASH, `seq`, `last|done|pending|push:<repo>:<branch>`,
//! `default:<repo>`, `delivery:<id>`, `queue|working:<cluster>:<index>`,
//! `members:<cluster>` ZSET, `holders:<cluster>` HASH, `clusters` SET, `stats` HASH,
//! `history:<repo>:<branch>` LIST, `repos` SET, `branches:<repo>` SET, `log:<id>` STREAM,
//! `cancel:<cluster>:<index>` LIST (ids of running builds to kill, see [`cancel`]),
//! `running:<repo>:<branch>` (the branch's build that START last marked running),
//! `executors:<cluster>` HASH (index → busy, total executors; see `membership`),
//! `routing` (`mod` or `jump`: the cluster's [`crate::routing::Routing`], see [`agree_routing`]).

use crate::store::keys;
use redis::{Connection, RedisResult, Script};
use std::sync::OnceLock;

/// `<cluster>-<index>`: the slave as records, logs and answers name it (the
/// scripts build and parse it the same way: `cluster .. '-' .. index`).
pub fn slave_name(cluster: &str, index: u32) -> String {
    format!("{cluster}-{index}")
}

/// HOOK_CANCEL_RUNNING: which branches a newer commit cancels the running build of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRunning {
    /// Branches starting with `pull/` or `merge-requests/` (pull and merge requests).
    Pulls,
    All,
    None,
}

impl CancelRunning {
    pub fn parse(s: &str) -> Option<CancelRunning> {
        match s {
            "pulls" => Some(CancelRunning::Pulls),
            "all" => Some(CancelRunning::All),
            "none" => Some(CancelRunning::None),
            _ => None,
        }
    }

    /// The word ENQUEUE's Lua reads.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelRunning::Pulls => "pulls",
            CancelRunning::All => "all",
            CancelRunning::None => "none",
        }
    }

    /// Whether a newer commit on `branch` cancels its running build (the
    /// rule ENQUEUE's Lua applies; a test holds them together).
    pub fn applies(self, branch: &str) -> bool {
        match self {
            CancelRunning::All => true,
            CancelRunning::None => false,
            CancelRunning::Pulls => branch.starts_with("pull/") || branch.starts_with("merge-requests/"),
        }
    }
}

/// How long a delivery id is remembered for redelivery detection.
pub const DELIVERY_TTL_SECS: u64 = 7 * 24 * 3600;

/// Lua shared by the scripts: live slave count of a cluster.
const LIVE_N: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live_n(cluster, now)
  return redis.call('ZCOUNT', 'ci:members:' .. cluster, '(' .. now, '+inf')
end
"#;

const ENQUEUE: &str = r#"
local repo, branch, sha, push, crc, hints, delivery, now, default_branch, reset =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
if delivery ~= '' then
  local seen = redis.call('GET', 'ci:delivery:' .. delivery)
  if seen then return {'duplicate', seen, ''} end
end
-- the routing rule (ARGV[14]) is the one the hooks agreed on in ci:routing
local rule, points = ARGV[14], ARGV[15]
local agreed = redis.call('GET', 'ci:routing')
if not agreed then redis.call('SET', 'ci:routing', rule)
elseif agreed ~= rule then return {'routing', agreed, ''} end
-- the cluster: first by (name length, name) offering every hint, with live slaves
local wanted = {}
for h in string.gmatch(hints, '%S+') do wanted[#wanted + 1] = h end
local names = redis.call('SMEMBERS', 'ci:clusters')
table.sort(names, function(a, b) if #a ~= #b then return #a < #b end return a < b end)
local tms = now_ms()
local cluster, n = nil, 0
local live = {}
for _, name in ipairs(names) do
  local count = live_n(name, tms)
  if count > 0 then
    live[#live + 1] = name
    local tokens = {}
    for t in string.gmatch(name, '[^-]+') do tokens[string.lower(t)] = true end
    local all = true
    for _, h in ipairs(wanted) do if not tokens[h] then all = false end end
    if all and not cluster then cluster, n = name, count end
  end
end
if not cluster then return {'noslave', table.concat(live, ', '), ''} end
local bkey = repo .. ':' .. branch
local function remember()
  redis.call('SET', 'ci:push:' .. bkey, push)
  if default_branch ~= '' then redis.call('SET', 'ci:default:' .. repo, default_branch) end
end
-- coalesce: a newer push replaces the commit of the pending build
local pending = redis.call('GET', 'ci:pending:' .. bkey)
if pending and redis.call('HGET', 'ci:build:' .. pending, 'state') == 'queued' then
  redis.call('HSET', 'ci:build:' .. pending, 'sha', sha, 'push', push)
  if reset == '1' then redis.call('HSET', 'ci:build:' .. pending, 'reset', '1') end
  remember()
  if delivery ~= '' then redis.call('SET', 'ci:delivery:' .. delivery, pending, 'EX', ARGV[11]) end
  return {'coalesced', pending, redis.call('HGET', 'ci:build:' .. pending, 'slave')}
end
-- the index: Rust's routing::Routing::index, selected from what the hook computed
-- (a test holds the two together): mod, CRC32 mod n; jump, the largest jump point < n
local index = crc % n
if rule == 'jump' then
  index = 0
  for p in string.gmatch(points, '%d+') do
    if tonumber(p) >= n then break end
    index = tonumber(p)
  end
end
local slave = cluster .. '-' .. index
local id = tostring(redis.call('INCR', 'ci:seq'))
local previous = redis.call('GET', 'ci:last:' .. bkey)
redis.call('HSET', 'ci:build:' .. id, 'id', id, 'repo', repo, 'branch', branch, 'sha', sha,
  'state', 'queued', 'ok', 'false', 'log', '[]', 'slave', slave, 'cluster', cluster,
  'queued_at', now, 'attempt', '0', 'push', push, 'reset', reset)
redis.call('SET', 'ci:last:' .. bkey, id)
redis.call('SET', 'ci:pending:' .. bkey, id)
remember()
-- retention, the one rule: the last HISTORY_KEEP builds of a branch stay; older
-- records (and their live logs) are deleted, unless still queued or running or
-- the branch's latest finished build (then the list waits one push longer)
local hkey = 'ci:history:' .. bkey
redis.call('LPUSH', hkey, id)
redis.call('SADD', 'ci:repos', repo)
redis.call('SADD', 'ci:branches:' .. repo, branch)
local keep, done = tonumber(ARGV[12]), redis.call('GET', 'ci:done:' .. bkey)
while redis.call('LLEN', hkey) > keep do
  local old = redis.call('LINDEX', hkey, -1)
  local state = redis.call('HGET', 'ci:build:' .. old, 'state')
  if state == 'queued' or state == 'running' or old == done then break end
  redis.call('RPOP', hkey)
  redis.call('DEL', 'ci:build:' .. old, 'ci:log:' .. old)
end
redis.call('LPUSH', 'ci:queue:' .. cluster .. ':' .. index, id)
if delivery ~= '' then redis.call('SET', 'ci:delivery:' .. delivery, id, 'EX', ARGV[11]) end
-- HOOK_CANCEL_RUNNING (ARGV[13]): a newer commit cancels the branch's running build
local policy, canceled = ARGV[13], ''
local pull = string.sub(branch, 1, 5) == 'pull/' or string.sub(branch, 1, 15) == 'merge-requests/'
if previous and (policy == 'all' or (policy == 'pulls' and pull))
  and redis.call('HGET', 'ci:build:' .. previous, 'state') == 'running' then
  cancel_build(previous, 'superseded by build ' .. id, now)
  canceled = previous
end
return {'queued', id, slave, canceled}
"#;

/// Lua shared by START and FINISH: writes a finished record, counts it, makes
/// it the branch's latest finished build and acknowledges the job. (Records
/// leave by the history bound of ENQUEUE, nowhere else.)
const RECORD: &str = r#"
-- seconds an unread cancel list lives (its slave died or moved on)
local CANCEL_TTL = 60
local function record_result(id, working, state, log, seconds, now)
  local key = 'ci:build:' .. id
  redis.call('HSET', key, 'state', state, 'ok', tostring(state == 'passed'), 'log', log,
    'seconds', seconds, 'finished_at', now)
  redis.call('HINCRBY', 'ci:stats', state, 1)
  local repo, branch = unpack(redis.call('HMGET', key, 'repo', 'branch'))
  local dkey = 'ci:done:' .. repo .. ':' .. branch
  local current = redis.call('GET', dkey)
  if not current or tonumber(current) <= tonumber(id) then redis.call('SET', dkey, id) end
  local rkey = 'ci:running:' .. repo .. ':' .. branch
  if redis.call('GET', rkey) == id then redis.call('DEL', rkey) end
  redis.call('LREM', working, 1, id)
end
-- Whether another build of the branch `bkey` runs: here (`busy`, the
-- slave's running branches, newline-separated) or on any slave (the
-- `ci:running` mark START sets, while that build's record says running).
local function branch_busy(bkey, id, busy)
  for b in string.gmatch(busy, '[^\n]+') do if b == bkey then return true end end
  local other = redis.call('GET', 'ci:running:' .. bkey)
  return other ~= false and other ~= id and redis.call('HGET', 'ci:build:' .. other, 'state') == 'running'
end
-- Cancels build id if queued (out of its queue, stored canceled) or running
-- (stored canceled now; its id pushed for the slave's cancel watcher, which
-- kills it; the slave's FINISH then adds the log so far). Returns the state
-- it had, or nil when it was neither.
local function cancel_build(id, why, now)
  local key = 'ci:build:' .. id
  local state, cluster, slave, repo, branch = unpack(redis.call('HMGET', key, 'state', 'cluster', 'slave', 'repo', 'branch'))
  if state ~= 'queued' and state ~= 'running' then return nil end
  local index = string.sub(slave, #cluster + 2)
  local pkey = 'ci:pending:' .. repo .. ':' .. branch
  if redis.call('GET', pkey) == id then redis.call('DEL', pkey) end
  local line = cjson.encode({'[canceled] ' .. why})
  if state == 'queued' then
    record_result(id, 'ci:queue:' .. cluster .. ':' .. index, 'canceled', line, '0', now)
  else
    record_result(id, 'ci:working:' .. cluster .. ':' .. index, 'canceled', line, '0', now)
    redis.call('HSET', key, 'cancel', why)
    local ckey = 'ci:cancel:' .. cluster .. ':' .. index
    redis.call('LPUSH', ckey, id)
    redis.call('EXPIRE', ckey, CANCEL_TTL)
  end
  return state
end
"#;

/// A record still `running` when it is started again means the attempt
/// before died with its slave (a graceful stop or a lost lease sets it back
/// to `queued` through ABANDON). After `max` such deaths the build is failed
/// instead of started: a build that kills its slave must not hold an index
/// forever. A build of the same branch running here or elsewhere makes it
/// wait (`busy`): two builds of a branch never run at once on one slave.
const START: &str = r#"
local id, working, slave, now, max, busy = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local key = 'ci:build:' .. id
local state = redis.call('HGET', key, 'state')
if not state or state == 'passed' or state == 'failed' or state == 'canceled' then
  redis.call('LREM', working, 1, id)
  return false
end
local repo, branch = unpack(redis.call('HMGET', key, 'repo', 'branch'))
if branch_busy(repo .. ':' .. branch, id, busy) then return {'busy'} end
redis.call('SET', 'ci:running:' .. repo .. ':' .. branch, id)
local pkey = 'ci:pending:' .. repo .. ':' .. branch
if redis.call('GET', pkey) == id then redis.call('DEL', pkey) end
if state == 'running' then
  local died = redis.call('HINCRBY', key, 'died', 1)
  if died >= max then
    local why = '* gave up after ' .. died .. ' attempts: the slave died during each'
    record_result(id, working, 'failed', cjson.encode({why}), '0', now)
    local f = redis.call('HMGET', key, 'push', 'sha')
    return {'gaveup', tostring(died), f[1] or '', f[2] or ''}
  end
end
local attempt = redis.call('HINCRBY', key, 'attempt', 1)
redis.call('HSET', key, 'state', 'running', 'started_at', now, 'slave', slave)
local f = redis.call('HMGET', key, 'push', 'sha', 'reset')
return {tostring(attempt), f[1], f[2], f[3] or '0'}
"#;

const FINISH: &str = r#"
local id, attempt, working, state, log, seconds, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local stream, cap, field, ttl, line_field = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local key = 'ci:build:' .. id
if redis.call('HGET', key, 'attempt') ~= attempt then return 0 end
-- stored already by this attempt (a retry after the answer was lost): nothing more
local was = redis.call('HGET', key, 'state')
if was == 'passed' or was == 'failed' then return 1 end
-- the live log's last lines (ARGV 13 on, those the publisher handed back) and
-- its last entry, with the record: a follower wakes once it is stored
local function ended(result)
  for i = 13, #ARGV do
    redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', line_field, ARGV[i])
  end
  redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', field, result)
  redis.call('EXPIRE', stream, ttl)
end
-- canceled while it ran: stays canceled (counted once, by the cancel); the
-- log so far and why it was canceled replace the one-line log
if was == 'canceled' then
  local lines = cjson.decode(log)
  lines[#lines + 1] = '[canceled] ' .. (redis.call('HGET', key, 'cancel') or '')
  redis.call('HSET', key, 'log', cjson.encode(lines), 'seconds', seconds)
  redis.call('LREM', working, 1, id)
  ended('canceled')
  return 2
end
record_result(id, working, state, log, seconds, now)
ended(state)
return 1
"#;

/// ARGV: id, attempt. The attempt ended without a result and without its
/// slave dying (shutdown grace over, lease lost): back to `queued`, so the
/// next start does not count it as a death. The job itself stays where it
/// is (an in-progress list); whoever holds that index next re-queues it.
const ABANDON: &str = r#"
local key = 'ci:build:' .. ARGV[1]
if redis.call('HGET', key, 'attempt') ~= ARGV[2] or redis.call('HGET', key, 'state') ~= 'running' then return 0 end
redis.call('HSET', key, 'state', 'queued')
return 1
"#;

/// Moves one job, if it is still the oldest of `from`, to the front of `to`.
const MOVE_ONE: &str = r#"
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then return 0 end
redis.call('RPOP', KEYS[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"#;

/// ARGV: cluster, own index, SLAVE_STEAL_AFTER seconds, now, the slave's
/// running branches (newline-separated), its in-progress list, its name.
/// Of the oldest few jobs of every sibling queue, the oldest that waited
/// longer than the threshold, is `queued` (never one whose record says
/// running: a requeued attempt of a dead slave) and whose branch is not
/// building anywhere moves to this slave's in-progress list, in this one
/// step: no two slaves take the same job. Returns {id, from} or nil.
const STEAL: &str = r#"
local cluster, own, after, now, busy, working, slave =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local top = tonumber(redis.call('HGET', 'ci:maxindex', cluster) or '-1')
local best, from, oldest
for i = 0, top do
  if i ~= own then
    local q = 'ci:queue:' .. cluster .. ':' .. i
    for _, id in ipairs(redis.call('LRANGE', q, -STEAL_DEPTH, -1)) do
      local state, at, repo, branch = unpack(redis.call('HMGET', 'ci:build:' .. id, 'state', 'queued_at', 'repo', 'branch'))
      at = tonumber(at)
      if state == 'queued' and at and now - at >= after and (not oldest or at < oldest)
        and not branch_busy(repo .. ':' .. branch, id, busy) then
        best, from, oldest = id, i, at
      end
    end
  end
end
if not best then return false end
redis.call('LREM', 'ci:queue:' .. cluster .. ':' .. from, -1, best)
redis.call('LPUSH', working, best)
redis.call('HSET', 'ci:build:' .. best, 'stolen', cluster .. '-' .. from, 'slave', slave)
return {best, cluster .. '-' .. from}
"#;

/// Jobs of each sibling queue a stealer looks at (its oldest ones).
const STEAL_DEPTH: u32 = 8;

/// ARGV: the in-progress list, its queue, ids. Puts back at the front of the
/// queue each id still in the in-progress list (stranded there: a take whose
/// reply was lost).
const REQUEUE_IDS: &str = r#"
local moved = 0
for i = 3, #ARGV do
  if redis.call('LREM', ARGV[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', ARGV[2], ARGV[i])
    moved = moved + 1
  end
end
return moved
"#;

/// A script made once of a shared Lua prefix (`LIVE_N`, `RECORD` or "") and its body.
fn script(cell: &'static OnceLock<Script>, prefix: &str, body: &str) -> &'static Script {
    cell.get_or_init(|| Script::new(&format!("{prefix}{body}")))
}

fn enqueue_script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| Script::new(&format!("{LIVE_N}{RECORD}{ENQUEUE}")))
}

/// What a web-hook asks the queue for.
pub struct Job<'a> {
    pub push: &'a crate::payload::Push,
    pub delivery: Option<&'a str>,
    pub reset: bool,
    /// HISTORY_KEEP: builds of the branch kept (at least 1).
    pub keep: usize,
    /// HOOK_CANCEL_RUNNING.
    pub cancel_running: CancelRunning,
    /// HOOK_ROUTING: the rule this hook routes by (it must be `ci:routing`'s).
    pub routing: crate::routing::Routing,
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
    /// Nothing queued: the cluster routes by `agreed` (`ci:routing`), not by the job's rule.
    OtherRouting {
        agreed: String,
    },
}

/// Stores the push record and queues its build in one atomic script.
pub fn enqueue(conn: &mut Connection, job: &Job) -> RedisResult<Enqueued> {
    let p = job.push;
    // 3 fields (4 when queued: the running build it canceled, or "")
    let reply: Vec<String> = enqueue_script()
        .arg(&p.repo)
        .arg(&p.branch)
        .arg(&p.sha)
        .arg(p.to_json())
        .arg(crate::routing::repo_hash(&p.repo))
        .arg(p.hints.join(" "))
        .arg(job.delivery.unwrap_or(""))
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(p.default_branch.as_deref().unwrap_or(""))
        .arg(if job.reset { "1" } else { "0" })
        .arg(DELIVERY_TTL_SECS)
        .arg(job.keep.max(1))
        .arg(job.cancel_running.as_str())
        .arg(job.routing.as_str())
        .arg(job.routing.points(&p.repo).iter().map(u32::to_string).collect::<Vec<_>>().join(" "))
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
    static S: OnceLock<Script> = OnceLock::new();
    let reply: Option<Vec<String>> = script(&S, RECORD, START)
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
            push: crate::payload::Push::from_json(push).map(|mut p| {
                p.sha = sha.clone();
                Box::new(p)
            }),
        },
        Some([attempt, push, sha, reset]) => match crate::payload::Push::from_json(push) {
            Some(mut push) => {
                push.sha = sha.clone(); // a coalesced push may have replaced it
                Begun::Run(Box::new(Started { id: id.to_string(), attempt: attempt.clone(), push, reset: reset == "1" }))
            }
            None => Begun::Dropped,
        },
        _ => Begun::Dropped,
    })
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
    static S: OnceLock<Script> = OnceLock::new();
    let script = S.get_or_init(|| Script::new(&format!("{RECORD}{}", STEAL.replace("STEAL_DEPTH", &STEAL_DEPTH.to_string()))));
    let reply: Option<(String, String)> = script
        .arg(cluster)
        .arg(index)
        .arg(after.as_secs_f64())
        .arg(format!("{:.3}", crate::unix_now()))
        .arg(busy.join("\n"))
        .arg(keys::working(cluster, index))
        .arg(slave_name(cluster, index))
        .invoke(conn)?;
    Ok(reply.map(|(id, from)| Stolen { id, from }))
}

/// Puts `ids` back at the front of the index's queue, each only if it is
/// still in the in-progress list; returns how many moved.
pub fn requeue_ids(conn: &mut Connection, cluster: &str, index: u32, ids: &[String]) -> RedisResult<u32> {
    static S: OnceLock<Script> = OnceLock::new();
    let mut call = script(&S, "", REQUEUE_IDS).prepare_invoke();
    call.arg(keys::working(cluster, index)).arg(keys::queue(cluster, index));
    for id in ids {
        call.arg(id);
    }
    call.invoke(conn)
}

/// The in-progress list of an index.
pub fn working(conn: &mut Connection, cluster: &str, index: u32) -> RedisResult<Vec<String>> {
    redis::cmd("LRANGE").arg(keys::working(cluster, index)).arg(0).arg(-1).query(conn)
}

/// The attempt ended without a result and without its slave dying (shutdown
/// grace over, lease lost): the next start does not count it as a death.
pub fn abandon(conn: &mut Connection, job: &Started) -> RedisResult<()> {
    static S: OnceLock<Script> = OnceLock::new();
    script(&S, "", ABANDON).arg(&job.id).arg(&job.attempt).invoke::<i64>(conn).map(drop)
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
    static S: OnceLock<Script> = OnceLock::new();
    let stored: i64 = script(&S, RECORD, FINISH)
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

const CANCEL: &str = r#"
local repo, branch, id, why, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if id == '' then
  id = redis.call('GET', 'ci:last:' .. repo .. ':' .. branch)
  if not id then return {'none', ''} end
end
local state, owner = unpack(redis.call('HMGET', 'ci:build:' .. id, 'state', 'repo'))
if not state or owner ~= repo then return {'none', id} end
local was = cancel_build(id, why, now)
if was then return {was, id} end
return {'finished', id, state}
"#;

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
    static S: OnceLock<Script> = OnceLock::new();
    let (branch, id) = match target {
        CancelTarget::Branch(b) => (b, ""),
        CancelTarget::Id(i) => ("", i),
    };
    let reply: Vec<String> =
        script(&S, RECORD, CANCEL).arg(repo).arg(branch).arg(id).arg(why).arg(format!("{:.3}", crate::unix_now())).invoke(conn)?;
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
    static S: OnceLock<Script> = OnceLock::new();
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
        let done: i64 = script(&S, "", MOVE_ONE).key(list).key(&target).arg(&id).invoke(conn)?;
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
    let stored: bool = redis::cmd("SET").arg("ci:token").arg(candidate).arg("NX").query::<Option<String>>(conn)?.is_some();
    let token: String = redis::cmd("GET").arg("ci:token").query(conn)?;
    Ok((token, stored))
}

/// The key holding the routing rule every hook of the deployment uses.
pub const ROUTING_KEY: &str = "ci:routing";

/// Stores `rule` as the deployment's routing rule unless one is stored
/// already (SET NX); returns the stored word, which the caller compares.
pub fn agree_routing(conn: &mut Connection, rule: crate::routing::Routing) -> RedisResult<String> {
    let _: Option<String> = redis::cmd("SET").arg(ROUTING_KEY).arg(rule.as_str()).arg("NX").query(conn)?;
    redis::cmd("GET").arg(ROUTING_KEY).query(conn)
}

/// The deployment's routing rule, as slaves re-route by it: `ci:routing`,
/// `mod` when absent (no hook with HOOK_ROUTING has started).
pub fn stored_routing(conn: &mut Connection) -> RedisResult<crate::routing::Routing> {
    let word: Option<String> = redis::cmd("GET").arg(ROUTING_KEY).query(conn)?;
    match word {
        None => Ok(crate::routing::Routing::Mod),
        Some(w) => crate::routing::Routing::parse(&w)
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::TypeError, "ci:routing holds neither mod nor jump", w))),
    }
}

/// The branch asked for, else the repository's default branch as the last
/// push reported it (`None` when neither is known).
pub fn branch_or_default(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Option<String>> {
    match branch {
        Some(b) => Ok(Some(b.to_string())),
        None => redis::cmd("GET").arg(format!("ci:default:{repo}")).query(conn),
    }
}

/// The last push of a branch, for re-runs.
pub fn last_push(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Option<crate::payload::Push>> {
    let Some(branch) = branch_or_default(conn, repo, branch)? else { return Ok(None) };
    let text: Option<String> = redis::cmd("GET").arg(keys::branch("push", repo, &branch)).query(conn)?;
    Ok(text.and_then(|t| crate::payload::Push::from_json(&t)))
}
