//! Signed request bodies accepted once: the first use of a digest is
//! remembered for its window; a second use of the same body is refused.

use crate::store::keys;
use redis::{Connection, RedisResult};

/// Remembers `digest` for `ttl_secs`; whether this was its first use.
pub fn first_use(conn: &mut Connection, digest: &str, ttl_secs: u64) -> RedisResult<bool> {
    let set: Option<String> = redis::cmd("SET").arg(keys::signed_body(digest)).arg("1").arg("NX").arg("EX").arg(ttl_secs).query(conn)?;
    Ok(set.is_some())
}
