//! Schedules' agreement: which hook fires a schedule in a given minute. The
//! first to `SET NX` the minute's key (`keys::cron`) owns it; the others
//! leave it. An owner that lost the answer (a timeout) finds its own name
//! there when it asks again.

use super::keys;
use redis::{Connection, RedisResult};

/// How long a minute's claim is kept: long past the minute, so a hook whose
/// clock is late by up to this much still finds the minute taken.
pub const CLAIM_TTL_SECS: u64 = 3_600;

/// Claims `schedule`'s `unix_minute` for `owner` (a name unique to this
/// hook process): true when `owner` holds it, now or from an earlier try.
pub fn claim(conn: &mut Connection, schedule: &str, unix_minute: u64, owner: &str) -> RedisResult<bool> {
    let key = keys::cron(schedule, unix_minute);
    let set: Option<String> = redis::cmd("SET").arg(&key).arg(owner).arg("NX").arg("EX").arg(CLAIM_TTL_SECS).query(conn)?;
    if set.is_some() {
        return Ok(true);
    }
    let holder: Option<String> = redis::cmd("GET").arg(&key).query(conn)?;
    Ok(holder.as_deref() == Some(owner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_redis::TestRedis;

    #[test]
    fn one_owner_per_schedule_and_minute_and_it_may_ask_again() {
        let Some(mut r) = TestRedis::start() else { return };
        let c = &mut r.conn;
        assert!(claim(c, "aa", 100, "hook-1").unwrap());
        assert!(!claim(c, "aa", 100, "hook-2").unwrap(), "a second hook must not fire the same minute");
        assert!(claim(c, "aa", 100, "hook-1").unwrap(), "the owner asking again (a lost answer) still owns it");
        assert!(claim(c, "aa", 101, "hook-2").unwrap(), "the next minute is free");
        assert!(claim(c, "bb", 100, "hook-2").unwrap(), "another schedule is free");
        let ttl: i64 = redis::cmd("TTL").arg("ci:cron:aa:100").query(c).unwrap();
        assert!(ttl > 0 && ttl <= CLAIM_TTL_SECS as i64, "ttl {ttl}");
    }
}
