//! Whether Redis's persistence settings make a 2xx durable: `CONFIG GET`
//! of the AOF and eviction settings, and what each setting risks.

use crate::logging::quote;
use redis::{Connection, RedisResult};

/// Redis's persistence settings, as `CONFIG GET` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    pub appendonly: String,
    pub appendfsync: String,
    pub maxmemory_policy: String,
}

impl Durability {
    /// What these settings cost an acknowledged push; `None` when it survives
    /// a Redis crash (`appendonly yes`, `appendfsync always|everysec`,
    /// `maxmemory-policy noeviction`).
    pub fn risk(&self) -> Option<String> {
        let mut risks = Vec::new();
        if self.appendonly != "yes" {
            risks.push("without the AOF, queued builds acknowledged since the last snapshot are lost when Redis restarts".to_string());
        } else if self.appendfsync != "always" && self.appendfsync != "everysec" {
            risks.push(format!(
                "with appendfsync {}, the OS decides when the AOF reaches the disk: a power cut loses acknowledged pushes",
                self.appendfsync
            ));
        }
        if self.maxmemory_policy != "noeviction" {
            risks.push(format!(
                "maxmemory-policy {} evicts keys when memory is full: queued builds and records can vanish; use noeviction",
                self.maxmemory_policy
            ));
        }
        (!risks.is_empty()).then(|| risks.join("; "))
    }

    /// The `key=value` facts of the log lines.
    pub fn facts(&self) -> String {
        format!(
            "appendonly={} appendfsync={} maxmemory_policy={}",
            quote(&self.appendonly),
            quote(&self.appendfsync),
            quote(&self.maxmemory_policy)
        )
    }
}

/// Reads the persistence settings; an error reply means CONFIG is renamed,
/// disabled or not allowed to this user.
pub fn durability(conn: &mut Connection) -> RedisResult<Durability> {
    // One name per CONFIG GET: Redis before 7 takes a single pattern.
    let (a, f, m): (Vec<String>, Vec<String>, Vec<String>) = redis::pipe()
        .cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query(conn)?;
    let value = |v: Vec<String>| v.into_iter().nth(1).unwrap_or_default();
    Ok(Durability { appendonly: value(a), appendfsync: value(f), maxmemory_policy: value(m) })
}

/// Whether Redis serves a client that gives no password: its `default` user
/// is on with `nopass` (ACL, Redis 6 and later), or — where ACL is unknown —
/// `requirepass` is empty. `Err` when neither can be read (renamed or
/// refused commands).
pub fn answers_without_password(conn: &mut Connection) -> RedisResult<bool> {
    match redis::cmd("ACL").arg("GETUSER").arg("default").query::<redis::Value>(conn) {
        Ok(user) => Ok(default_user_is_open(&user)),
        Err(e) if e.kind() == redis::ErrorKind::ResponseError && e.to_string().contains("unknown command") => {
            let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("requirepass").query(conn)?;
            Ok(pair.get(1).is_none_or(|p| p.is_empty()))
        }
        Err(e) => Err(e),
    }
}

/// `ACL GETUSER default`'s flags hold both `on` and `nopass`.
fn default_user_is_open(user: &redis::Value) -> bool {
    let items: Vec<redis::Value> = match user {
        redis::Value::Array(items) => items.clone(),
        redis::Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect(),
        _ => return false,
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let flags = items.iter().position(|v| text(v) == "flags").and_then(|i| items.get(i + 1));
    let Some(redis::Value::Array(flags)) = flags else { return false };
    let flags: Vec<String> = flags.iter().map(text).collect();
    flags.iter().any(|f| f == "on") && flags.iter().any(|f| f == "nopass")
}

/// Settings as a test writes them: appendonly, appendfsync, maxmemory-policy.
#[cfg(test)]
pub(crate) fn d(appendonly: &str, appendfsync: &str, policy: &str) -> Durability {
    Durability { appendonly: appendonly.into(), appendfsync: appendfsync.into(), maxmemory_policy: policy.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_setting_risks() {
        let table = [
            (d("yes", "always", "noeviction"), None),
            (d("yes", "everysec", "noeviction"), None),
            (d("no", "always", "noeviction"), Some("without the AOF")),
            (d("no", "no", "noeviction"), Some("without the AOF")),
            (d("yes", "no", "noeviction"), Some("with appendfsync no, the OS decides")),
            (d("yes", "always", "allkeys-lru"), Some("maxmemory-policy allkeys-lru evicts keys")),
            (d("yes", "always", "volatile-ttl"), Some("maxmemory-policy volatile-ttl evicts keys")),
        ];
        for (settings, want) in table {
            let risk = settings.risk();
            match want {
                None => assert_eq!(risk, None, "{settings:?}"),
                Some(start) => assert!(risk.as_deref().is_some_and(|r| r.starts_with(start)), "{settings:?}: {risk:?}"),
            }
        }
        let both = d("no", "always", "allkeys-lru").risk().unwrap();
        assert!(both.contains("without the AOF") && both.contains("allkeys-lru"), "{both}");
    }
}
