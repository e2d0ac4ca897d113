//! The memory of steps that passed: a step with `inputs:` whose fingerprint
//! (repository, snippets, env, image, cwd, granted secret names, input
//! trees) passed once is not run again while its key lives
//! (`keys::passed`). Only a non-fork build writes or reads it.

use super::keys;
use redis::{Connection, RedisResult};

/// How long a pass is remembered: 30 days from its last pass.
pub const PASS_TTL_SECS: u64 = 30 * 24 * 3600;

/// The build in which a step of `fingerprint` passed in `repo`.
pub fn find(conn: &mut Connection, repo: &str, fingerprint: &str) -> RedisResult<Option<String>> {
    redis::cmd("GET").arg(keys::passed(repo, fingerprint)).query(conn)
}

/// A step of `fingerprint` passed in `repo` in build `id`.
pub fn remember(conn: &mut Connection, repo: &str, fingerprint: &str, id: &str) -> RedisResult<()> {
    redis::cmd("SET").arg(keys::passed(repo, fingerprint)).arg(id).arg("EX").arg(PASS_TTL_SECS).query(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_redis::TestRedis;

    #[test]
    fn a_pass_is_found_in_its_repository_only_and_expires() {
        let Some(mut r) = TestRedis::start() else { return };
        let c = &mut r.conn;
        assert_eq!(find(c, "a/b", "ff").unwrap(), None);
        remember(c, "a/b", "ff", "7").unwrap();
        assert_eq!(find(c, "a/b", "ff").unwrap().as_deref(), Some("7"));
        assert_eq!(find(c, "a/c", "ff").unwrap(), None, "another repository");
        let ttl: i64 = redis::cmd("TTL").arg("ci:passed:a/b:ff").query(c).unwrap();
        assert!(ttl > 0 && ttl <= PASS_TTL_SECS as i64, "ttl {ttl}");
    }
}
