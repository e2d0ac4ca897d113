//! What every thread of the hook shares: its configuration, the Redis
//! address, the token, the metrics and the request counter; and the one log
//! line each request gets.

use crate::config::HookConfig;
use crate::hook::metrics::Metrics;
use crate::hook::reply::LogFacts;
use crate::hook::wire;
use crate::logging::quote;
use crate::store::conn::Target;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Redis socket timeout for the hook: a request waits at most this long.
pub(crate) const REDIS_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Hook {
    pub config: HookConfig,
    /// Where Redis is (shared by every connection this process dials).
    pub redis: Target,
    pub token: String,
    pub metrics: Metrics,
    next_req: AtomicU64,
    /// Clients following a build's log now (at most HOOK_MAX_FOLLOWERS).
    pub(crate) followers: AtomicUsize,
}
impl Hook {
    pub fn new(config: HookConfig, redis: Target, token: String) -> Hook {
        let metrics = Metrics::default();
        metrics.set_min_replicas(config.min_replicas);
        Hook { config, redis, token, metrics, next_req: AtomicU64::new(1), followers: AtomicUsize::new(0) }
    }

    pub(crate) fn limits(&self) -> wire::Limits {
        wire::Limits { max_body: self.config.max_body, idle: self.config.idle_timeout, request: self.config.request_timeout }
    }
}

/// One line per request: its number, method, path, code, milliseconds and
/// what the handler found (`repo=… id=…`); counted in `/metrics`.
pub(crate) fn log_request(hook: &Hook, method: &str, path: &str, route: &'static str, facts: LogFacts, started: Instant) {
    let n = hook.next_req.fetch_add(1, Ordering::Relaxed);
    hook.metrics.count(route, facts.code);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let line = format!("request req={n} method={} path={} code={} ms={ms:.2}{}", quote(method), quote(path), facts.code, facts.facts);
    match facts.code {
        500.. => log::warn!("{line}"),
        _ => log::info!("{line}"),
    }
}
