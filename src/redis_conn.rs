//! One Redis connection that reconnects: the redis crate does not, so every
//! caller goes through [`Redis::run`], which drops a broken connection and
//! makes a later call dial again — with backoff, so a Redis that is down
//! costs callers an immediate error rather than a connect timeout each.

use std::time::{Duration, Instant};

/// Longest wait between two dials while Redis is unreachable.
const MAX_REDIAL: Duration = Duration::from_secs(1);

pub struct Redis {
    client: redis::Client,
    conn: Option<redis::Connection>,
    /// Socket read/write timeout; blocking pops must block for less.
    io_timeout: Duration,
    /// No dial before this instant after a failed one; and the next wait.
    redial_at: Option<Instant>,
    redial_wait: Duration,
}

impl Redis {
    /// Parses the URL; connects lazily.
    pub fn open(url: &str, io_timeout: Duration) -> Result<Redis, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL={:?}: {e}", redact_url(url)))?;
        Ok(Redis { client, conn: None, io_timeout, redial_at: None, redial_wait: Duration::from_millis(50) })
    }

    fn dial(&mut self) -> redis::RedisResult<()> {
        if let Some(at) = self.redial_at.filter(|at| Instant::now() < *at) {
            let ms = at.saturating_duration_since(Instant::now()).as_millis();
            let why = format!("redis unreachable; next dial in {ms} ms");
            return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why)));
        }
        let dialed = self.client.get_connection_with_timeout(Duration::from_secs(2)).and_then(|conn| {
            conn.set_read_timeout(Some(self.io_timeout))?;
            conn.set_write_timeout(Some(self.io_timeout))?;
            Ok(conn)
        });
        match dialed {
            Ok(conn) => {
                self.conn = Some(conn);
                self.redial_at = None;
                self.redial_wait = Duration::from_millis(50);
                Ok(())
            }
            Err(e) => {
                self.redial_at = Some(Instant::now() + self.redial_wait);
                self.redial_wait = (self.redial_wait * 2).min(MAX_REDIAL);
                Err(e)
            }
        }
    }

    /// Runs `f` on a live connection, dialing first if needed. A connection
    /// error (not a script or type error) drops the connection.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        if self.conn.is_none() {
            self.dial()?;
        }
        let result = f(self.conn.as_mut().expect("connected above"));
        if let Err(e) = &result {
            if is_connection_error(e) {
                self.conn = None;
            }
        }
        result
    }

    /// Drops the connection; the next call dials a fresh one. After Redis
    /// refused a large command (OOM), the old connection's query buffer may
    /// still hold its memory on the server.
    pub fn reconnect(&mut self) {
        self.conn = None;
    }

    /// Like [`Redis::run`], but a connection found dead (Redis restarted,
    /// idle socket closed) is redialed and `f` tried once more. Only for
    /// operations that are safe to repeat: reads, and scripts whose repeat
    /// coalesces or is caught by a delivery id.
    pub fn run_again<T>(&mut self, mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let had_connection = self.conn.is_some();
        match self.run(&mut f) {
            Err(e) if had_connection && is_connection_error(&e) && !e.is_timeout() => self.run(f),
            other => other,
        }
    }
}

/// Errors after which the connection's state is unknown.
pub fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() || e.is_unrecoverable_error()
}

/// A Redis failure, worded by kind: a lost connection is retried (warn);
/// anything else (a script error, OOM, a wrong type) is not (error).
pub fn log_error(op: &str, e: &redis::RedisError) {
    if is_connection_error(e) {
        log::warn!("redis.unreachable op={op} error={}", crate::logging::quote(&e.to_string()));
    } else {
        log::error!("redis.refused op={op} error={}", crate::logging::quote(&e.to_string()));
    }
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    let user = userinfo.split(':').next().unwrap_or("");
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{user}:***@{host}{slash}{path}")
}

/// Exponential backoff from 100 ms to 5 s.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        d
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_leave() {
        assert_eq!(redact_url("redis://:hunter2@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(redact_url("redis://u:p@db"), "redis://u:***@db");
        assert_eq!(redact_url("redis://db:6379/0"), "redis://db:6379/0");
    }
}
