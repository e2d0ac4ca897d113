//! Slave membership: leases, index claims, live N per cluster.
//!
//! `ci:holders:<cluster>` maps index → `<instance> <lease expiry ms>`;
//! `ci:members:<cluster>` scores each index with the time it stops counting
//! (expiry + one more lease). So a slave that dies keeps counting in N for one
//! lease after its index became claimable: a replacement takes the freed
//! index without N ever changing. Only when nobody does is N lowered; the
//! slave with the highest index then moves down to keep indexes 0..N-1 and
//! jobs queued on vanished indexes are re-routed.

use redis::{Connection, RedisResult, Script};
use std::sync::OnceLock;
use std::time::Duration;

const COMMON: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local cluster, instance = ARGV[1], ARGV[2]
local hkey, mkey = 'ci:holders:' .. cluster, 'ci:members:' .. cluster
local now = now_ms()
-- indexes that no longer count: forget them
for _, idx in ipairs(redis.call('ZRANGEBYSCORE', mkey, '-inf', now)) do
  redis.call('ZREM', mkey, idx)
  redis.call('HDEL', hkey, idx)
end
local function holder(idx)
  local v = redis.call('HGET', hkey, tostring(idx))
  if not v then return nil, 0 end
  local who, exp = string.match(v, '(%S+) (%d+)')
  return who, tonumber(exp)
end
local function free(idx)
  local who, exp = holder(idx)
  return who == nil or who == instance or exp < now
end
local function hold(idx, lease)
  redis.call('HSET', hkey, tostring(idx), instance .. ' ' .. (now + lease))
  redis.call('ZADD', mkey, now + 2 * lease, tostring(idx))
  redis.call('SADD', 'ci:clusters', cluster)
  local top = tonumber(redis.call('HGET', 'ci:maxindex', cluster) or '-1')
  if idx > top then redis.call('HSET', 'ci:maxindex', cluster, idx) end
end
local function highest()
  local top = -1
  for _, idx in ipairs(redis.call('HKEYS', hkey)) do
    if tonumber(idx) > top then top = tonumber(idx) end
  end
  return top
end
"#;

/// ARGV: cluster, instance, lease ms, fixed index or -1, allow a new index.
const CLAIM: &str = r#"
local lease, fixed, allow_new = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] == '1'
if fixed >= 0 then
  if not free(fixed) then return -1 end
  hold(fixed, lease)
  return fixed
end
local top = highest()
for idx = 0, top do
  if free(idx) then hold(idx, lease) return idx end
end
if not allow_new then return -1 end
hold(top + 1, lease)
return top + 1
"#;

/// ARGV: cluster, instance, lease ms, index, -, the jobs this slave holds
/// (newline-separated, '' when idle), busy executors, executors. 1 renewed,
/// 0 lost. An index nobody holds (forgotten after two silent leases, or
/// Redis lost its data) is taken back only while every job this slave holds
/// still sits in that index's in-progress list: once a new holder has
/// re-queued one, it is theirs and this slave must stop building it.
/// Renewing also publishes the executors in use (`ci:executors:<cluster>`,
/// index → `<busy> <total> <lease expiry ms>`) for the hook's /metrics.
const RENEW: &str = r#"
local lease, idx, jobs = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[6]
local function renewed()
  hold(idx, lease)
  redis.call('HSET', 'ci:executors:' .. cluster, tostring(idx), ARGV[7] .. ' ' .. ARGV[8] .. ' ' .. (now + lease))
  return 1
end
local who = holder(idx)
if who == instance then return renewed() end
if who ~= nil then return 0 end
for job in string.gmatch(jobs, '[^\n]+') do
  if not redis.call('LPOS', 'ci:working:' .. cluster .. ':' .. idx, job) then return 0 end
end
return renewed()
"#;

/// ARGV: cluster, instance, lease ms, index. Moves this slave to the lowest
/// free index below the live count; returns the new index or -1.
const COMPACT: &str = r#"
local lease, idx = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = redis.call('ZCOUNT', mkey, '(' .. now, '+inf')
if idx < n then return -1 end
for j = 0, n - 1 do
  local who = holder(j)
  if who == nil then
    redis.call('HDEL', hkey, tostring(idx))
    redis.call('ZREM', mkey, tostring(idx))
    hold(j, lease)
    return j
  end
end
return -1
"#;

/// ARGV: cluster, instance, lease ms, index. Makes the index claimable now
/// (it still counts in N for one lease, for a replacement to take it).
const RELEASE: &str = r#"
local idx = ARGV[4]
local who = holder(tonumber(idx))
if who == instance then redis.call('HSET', hkey, idx, instance .. ' ' .. now) end
return 1
"#;

fn run(cell: &'static OnceLock<Script>, body: &str, conn: &mut Connection, who: &Member, extra: i64, more: &[String]) -> RedisResult<i64> {
    let script = cell.get_or_init(|| Script::new(&format!("{COMMON}{body}")));
    let mut call = script.prepare_invoke();
    call.arg(&who.cluster).arg(&who.instance).arg(who.lease.as_millis() as u64).arg(extra).arg(if who.allow_new { "1" } else { "0" });
    for m in more {
        call.arg(m);
    }
    call.invoke(conn)
}

/// One slave's identity in its cluster.
#[derive(Debug, Clone)]
pub struct Member {
    pub cluster: String,
    pub instance: String,
    pub lease: Duration,
    /// Whether a claim may open a new index (scale-up) when none is free.
    pub allow_new: bool,
}

impl Member {
    pub fn new(cluster: &str, lease: Duration) -> Member {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        let instance = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Member { cluster: cluster.to_string(), instance, lease, allow_new: false }
    }

    /// Claims `fixed`, or the lowest free index (a new one only if
    /// `allow_new`). `None` while nothing can be claimed.
    pub fn claim(&self, conn: &mut Connection, fixed: Option<u32>) -> RedisResult<Option<u32>> {
        static S: OnceLock<Script> = OnceLock::new();
        let got = run(&S, CLAIM, conn, self, fixed.map_or(-1, i64::from), &[])?;
        Ok(u32::try_from(got).ok())
    }

    /// Renews the lease on `index`; false when it is lost (see RENEW).
    /// `jobs`: the builds this slave holds; `executors`: (busy, total).
    pub fn renew(&self, conn: &mut Connection, index: u32, jobs: &[String], executors: (usize, usize)) -> RedisResult<bool> {
        static S: OnceLock<Script> = OnceLock::new();
        let more = [jobs.join("\n"), executors.0.to_string(), executors.1.to_string()];
        Ok(run(&S, RENEW, conn, self, index.into(), &more)? == 1)
    }

    /// Moves down to a free index below N when this one is above it.
    pub fn compact(&self, conn: &mut Connection, index: u32) -> RedisResult<Option<u32>> {
        static S: OnceLock<Script> = OnceLock::new();
        Ok(u32::try_from(run(&S, COMPACT, conn, self, index.into(), &[])?).ok())
    }

    pub fn release(&self, conn: &mut Connection, index: u32) -> RedisResult<()> {
        static S: OnceLock<Script> = OnceLock::new();
        run(&S, RELEASE, conn, self, index.into(), &[]).map(drop)
    }
}

/// The claim policy for a new index (scale-up): allowed once every holder
/// seen when this slave began to wait (`first`) has renewed since or is gone
/// (its lease lapsed and was forgotten). So a replacement for a dead slave
/// takes the dead one's index instead of growing N, and after a full restart
/// (every holder dead and forgotten) the new slaves claim 0, 1, ... at once.
pub fn may_open_new_index(first: &[(u32, u64)], now: &[(u32, u64)]) -> bool {
    first.iter().all(|(i, exp)| match now.iter().find(|(j, _)| j == i) {
        Some((_, e)) => e > exp,
        None => true,
    })
}

/// Redis's clock in milliseconds: leases are judged by one clock, not by
/// each slave's.
fn now_ms(conn: &mut Connection) -> RedisResult<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
    Ok(secs * 1000 + micros / 1000)
}

/// The lease expiry (ms) in a `ci:holders` value, `<instance> <expiry ms>`.
fn lease_expiry(value: &str) -> Option<u64> {
    value.split(' ').nth(1)?.parse().ok()
}

/// Live slaves of a cluster: the N of CRC32 mod N.
pub fn live_count(conn: &mut Connection, cluster: &str) -> RedisResult<u32> {
    let now = now_ms(conn)?;
    redis::cmd("ZCOUNT").arg(format!("ci:members:{cluster}")).arg(format!("({now}")).arg("+inf").query(conn)
}

/// Every cluster ever announced, with its highest index ever claimed.
pub fn clusters(conn: &mut Connection) -> RedisResult<Vec<(String, u32)>> {
    let map: std::collections::BTreeMap<String, u32> = redis::cmd("HGETALL").arg("ci:maxindex").query(conn)?;
    Ok(map.into_iter().collect())
}

/// Every held index of a cluster with its lease expiry (ms).
pub fn holders(conn: &mut Connection, cluster: &str) -> RedisResult<Vec<(u32, u64)>> {
    let map: std::collections::HashMap<u32, String> = redis::cmd("HGETALL").arg(format!("ci:holders:{cluster}")).query(conn)?;
    Ok(map.into_iter().filter_map(|(i, v)| Some((i, lease_expiry(&v)?))).collect())
}

/// Executors per held index of a cluster: (index, busy, total), from the
/// slaves' last renewals whose lease has not expired.
pub fn executors(conn: &mut Connection, cluster: &str) -> RedisResult<Vec<(u32, u32, u32)>> {
    let now = now_ms(conn)?;
    let map: std::collections::BTreeMap<u32, String> = redis::cmd("HGETALL").arg(format!("ci:executors:{cluster}")).query(conn)?;
    Ok(map
        .into_iter()
        .filter_map(|(i, v)| {
            let mut f = v.split(' ').map(|x| x.parse::<u64>().ok());
            let (busy, total, until) = (f.next()??, f.next()??, f.next()??);
            (until >= now).then_some((i, busy as u32, total as u32))
        })
        .collect())
}

/// Whether `index` has a holder whose lease has not expired.
pub fn held(conn: &mut Connection, cluster: &str, index: u32) -> RedisResult<bool> {
    let now = now_ms(conn)?;
    let v: Option<String> = redis::cmd("HGET").arg(format!("ci:holders:{cluster}")).arg(index).query(conn)?;
    Ok(v.as_deref().and_then(lease_expiry).is_some_and(|exp| exp >= now))
}

#[cfg(test)]
mod tests {
    use super::may_open_new_index;

    #[test]
    fn a_new_index_waits_for_every_holder_to_renew_or_vanish() {
        let first = [(0, 100), (1, 100)];
        assert!(!may_open_new_index(&first, &first), "nobody renewed yet");
        assert!(!may_open_new_index(&first, &[(0, 200), (1, 100)]), "index 1 has not renewed");
        assert!(may_open_new_index(&first, &[(0, 200), (1, 150)]), "both renewed");
        // issue 9: after a full restart every old holder is forgotten
        assert!(may_open_new_index(&first, &[]), "dead holders that were forgotten do not block");
        assert!(may_open_new_index(&first, &[(0, 200)]), "one renewed, one forgotten");
        assert!(may_open_new_index(&[], &[(0, 100)]), "nobody was there when we began");
    }
}
