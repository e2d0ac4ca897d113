//! Slave membership: leases, index claims, live N per cluster.
//!
//! [`keys::holders`] maps index → `<instance> <lease expiry ms>`;
//! [`keys::members`] scores each index with the time it stops counting
//! (expiry + one more lease). So a slave that dies keeps counting in N for one
//! lease after its index became claimable: a replacement takes the freed
//! index without N ever changing. Only when nobody does is N lowered; the
//! slave with the highest index then moves down to keep indexes 0..N-1 and
//! jobs queued on vanished indexes are re-routed.

use crate::store::keys;
use crate::store::scripts::{self, Verb};
use redis::{Connection, RedisResult};
use std::time::Duration;

/// Runs a membership verb (scripts/claim.lua, renew.lua, compact.lua,
/// release.lua) with the arguments they share, then `more`.
fn run(verb: &'static Verb, conn: &mut Connection, who: &Member, extra: i64, more: &[String]) -> RedisResult<i64> {
    let mut call = verb.prepare();
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
        let got = run(&scripts::CLAIM, conn, self, fixed.map_or(-1, i64::from), &[])?;
        Ok(u32::try_from(got).ok())
    }

    /// Renews the lease on `index`; false when it is lost (see
    /// scripts/renew.lua). Renewing also publishes the executors in use
    /// ([`keys::executors`]) for the hook's /metrics.
    /// `jobs`: the builds this slave holds; `executors`: (busy, total).
    pub fn renew(&self, conn: &mut Connection, index: u32, jobs: &[String], executors: (usize, usize)) -> RedisResult<bool> {
        let more = [jobs.join("\n"), executors.0.to_string(), executors.1.to_string()];
        Ok(run(&scripts::RENEW, conn, self, index.into(), &more)? == 1)
    }

    /// Moves down to a free index below N when this one is above it.
    pub fn compact(&self, conn: &mut Connection, index: u32) -> RedisResult<Option<u32>> {
        Ok(u32::try_from(run(&scripts::COMPACT, conn, self, index.into(), &[])?).ok())
    }

    pub fn release(&self, conn: &mut Connection, index: u32) -> RedisResult<()> {
        run(&scripts::RELEASE, conn, self, index.into(), &[]).map(drop)
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

/// The lease expiry (ms) in a [`keys::holders`] value, `<instance> <expiry ms>`.
fn lease_expiry(value: &str) -> Option<u64> {
    value.split(' ').nth(1)?.parse().ok()
}

/// Live slaves of a cluster: the N of CRC32 mod N.
/// (scripts/lib/live.lua, the one definition ENQUEUE and COMPACT use too).
pub fn live_count(conn: &mut Connection, cluster: &str) -> RedisResult<u32> {
    scripts::LIVE_COUNT.prepare().arg(cluster).invoke(conn)
}

/// The highest index ever claimed in `cluster`.
pub fn max_index(conn: &mut Connection, cluster: &str) -> RedisResult<Option<u32>> {
    redis::cmd("HGET").arg(keys::MAXINDEX).arg(cluster).query(conn)
}

/// Every cluster ever announced, with its highest index ever claimed.
pub fn clusters(conn: &mut Connection) -> RedisResult<Vec<(String, u32)>> {
    let map: std::collections::BTreeMap<String, u32> = redis::cmd("HGETALL").arg(keys::MAXINDEX).query(conn)?;
    Ok(map.into_iter().collect())
}

/// Every held index of a cluster with its lease expiry (ms).
pub fn holders(conn: &mut Connection, cluster: &str) -> RedisResult<Vec<(u32, u64)>> {
    let map: std::collections::HashMap<u32, String> = redis::cmd("HGETALL").arg(keys::holders(cluster)).query(conn)?;
    Ok(map.into_iter().filter_map(|(i, v)| Some((i, lease_expiry(&v)?))).collect())
}

/// Executors per held index of a cluster: (index, busy, total), from the
/// slaves' last renewals whose lease has not expired.
pub fn executors(conn: &mut Connection, cluster: &str) -> RedisResult<Vec<(u32, u32, u32)>> {
    let now = now_ms(conn)?;
    let map: std::collections::BTreeMap<u32, String> = redis::cmd("HGETALL").arg(keys::executors(cluster)).query(conn)?;
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
    let v: Option<String> = redis::cmd("HGET").arg(keys::holders(cluster)).arg(index).query(conn)?;
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
        // after a full restart every old holder is forgotten
        assert!(may_open_new_index(&first, &[]), "dead holders that were forgotten do not block");
        assert!(may_open_new_index(&first, &[(0, 200)]), "one renewed, one forgotten");
        assert!(may_open_new_index(&[], &[(0, 100)]), "nobody was there when we began");
    }
}
