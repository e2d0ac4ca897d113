//! `/metrics`: the hook's request counters and the last durability check,
//! with the cluster's figures read from Redis ([`stats`]), as Prometheus
//! text; and the thread that follows Redis's persistence settings.

use crate::logging::quote;
use crate::store::conn;
use crate::store::durability::{answers_without_password, durability, Durability};
use crate::store::stats;
use redis::Connection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The last durability check, as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DurableState {
    NotChecked,
    Known(Durability),
    /// CONFIG GET refused: the reason.
    Unknown(String),
}

/// Checks Redis's persistence settings now and every `every`, forever (the
/// hook's process ends it). Logs when what they mean changes: WARN
/// `redis.not_durable` with what is at risk, INFO `redis.durable`, WARN
/// `redis.durability_unknown` when CONFIG GET is refused. An unreachable
/// Redis changes nothing (its own lines say so).
pub fn watch_durability(redis: &mut conn::Redis, metrics: &Metrics, every: std::time::Duration) {
    loop {
        check_auth(redis, metrics);
        let state = match redis.run_again(durability) {
            Ok(d) => DurableState::Known(d),
            Err(e) if conn::is_connection_error(&e) => {
                std::thread::sleep(every);
                continue;
            }
            Err(e) => DurableState::Unknown(e.to_string()),
        };
        let mut last = metrics.durable.lock().unwrap_or_else(|p| p.into_inner());
        if *last != state {
            match &state {
                DurableState::Known(d) => match d.risk() {
                    Some(risk) => log::warn!("redis.not_durable {}: {risk}", d.facts()),
                    None => log::info!("redis.durable {}: a 2xx is in the AOF before it is sent", d.facts()),
                },
                DurableState::Unknown(e) => log::warn!(
                    "redis.durability_unknown error={}: CONFIG GET is refused, so the hook cannot tell whether a 2xx survives a Redis crash",
                    quote(e)
                ),
                DurableState::NotChecked => {}
            }
            *last = state;
        }
        drop(last);
        std::thread::sleep(every);
    }
}

/// Whether Redis answers a client without a password: WARN `redis.open` at
/// every check while it does (a step that reaches Redis would own the CI),
/// and `ci_redis_auth` in `/metrics`.
fn check_auth(redis: &mut conn::Redis, metrics: &Metrics) {
    let auth = match redis.run_again(answers_without_password) {
        Ok(true) => {
            log::warn!(
                "redis.open auth=none: Redis answers clients that give no password, so anything that reaches its port \
                 (a build step too) can read the token and queue builds; set requirepass and give it in REDIS_URL"
            );
            Auth::Open
        }
        Ok(false) => Auth::Locked,
        Err(e) if conn::is_connection_error(&e) => return,
        Err(_) => Auth::Unknown,
    };
    *metrics.auth.lock().unwrap_or_else(|p| p.into_inner()) = auth;
}

/// Whether Redis needs a password, at the last check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    NotChecked,
    Open,
    Locked,
    /// ACL and CONFIG refused.
    Unknown,
}

/// Request counters kept by the hook process, and the last durability check.
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    durable: Mutex<DurableState>,
    auth: Mutex<Auth>,
    /// REDIS_MIN_REPLICAS, shown beside the replicas Redis has.
    min_replicas: AtomicU32,
    /// Builds this hook's schedules queued (or coalesced into a pending one).
    cron_builds: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
            durable: Mutex::new(DurableState::NotChecked),
            auth: Mutex::new(Auth::NotChecked),
            min_replicas: AtomicU32::new(0),
            cron_builds: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn set_min_replicas(&self, n: u32) {
        self.min_replicas.store(n, Ordering::Relaxed);
    }

    /// One more build queued by a schedule (`ci_cron_builds_total`).
    pub fn count_cron_build(&self) {
        self.cron_builds.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, route: &'static str, code: u16) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route, code)).or_insert(0) += 1;
    }

    /// Prometheus text: uptime, requests, and (from Redis) queue depths,
    /// live slaves and builds by result.
    pub fn render(&self, conn: Option<&mut Connection>) -> String {
        let mut out = String::new();
        out.push_str("# HELP ci_uptime_seconds Seconds since this hook started.\n# TYPE ci_uptime_seconds gauge\n");
        out.push_str(&format!("ci_uptime_seconds {:.3}\n", self.started.elapsed().as_secs_f64()));
        out.push_str("# HELP ci_requests_total Requests answered by this hook, by route and code.\n# TYPE ci_requests_total counter\n");
        for ((route, code), n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push_str(&format!("ci_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}\n"));
        }
        out.push_str("# HELP ci_cron_builds_total Builds this hook's schedules queued (HOOK_CRON).\n# TYPE ci_cron_builds_total counter\n");
        out.push_str(&format!("ci_cron_builds_total {}\n", self.cron_builds.load(Ordering::Relaxed)));
        let redis_part = conn.map(redis_metrics);
        match redis_part {
            Some(Ok(text)) => {
                out.push_str("# HELP ci_redis_up Whether Redis answered this scrape.\n# TYPE ci_redis_up gauge\nci_redis_up 1\n");
                out.push_str(&text);
            }
            _ => out.push_str("# HELP ci_redis_up Whether Redis answered this scrape.\n# TYPE ci_redis_up gauge\nci_redis_up 0\n"),
        }
        out.push_str(
            "# HELP ci_redis_durable Whether Redis keeps an acknowledged push across a crash \
             (appendonly yes, appendfsync always or everysec, maxmemory-policy noeviction), at the last check.\n\
             # TYPE ci_redis_durable gauge\n",
        );
        match &*self.durable.lock().unwrap_or_else(|p| p.into_inner()) {
            DurableState::Known(d) => out.push_str(&format!("ci_redis_durable {}\n", u8::from(d.risk().is_none()))),
            DurableState::NotChecked => out.push_str("# ci_redis_durable unknown: not checked yet\n"),
            DurableState::Unknown(_) => out.push_str("# ci_redis_durable unknown: redis CONFIG GET unavailable\n"),
        }
        out.push_str(
            "# HELP ci_redis_auth Whether Redis refuses clients that give no password, at the last check.\n# TYPE ci_redis_auth gauge\n",
        );
        match *self.auth.lock().unwrap_or_else(|p| p.into_inner()) {
            Auth::Open => out.push_str("ci_redis_auth 0\n"),
            Auth::Locked => out.push_str("ci_redis_auth 1\n"),
            Auth::NotChecked => out.push_str("# ci_redis_auth unknown: not checked yet\n"),
            Auth::Unknown => out.push_str("# ci_redis_auth unknown: redis ACL and CONFIG GET unavailable\n"),
        }
        out.push_str(&format!(
            "# HELP ci_redis_min_replicas Replicas that must acknowledge a push before its 2xx (REDIS_MIN_REPLICAS).\n\
             # TYPE ci_redis_min_replicas gauge\nci_redis_min_replicas {}\n",
            self.min_replicas.load(Ordering::Relaxed)
        ));
        out
    }
}

fn redis_metrics(conn: &mut Connection) -> redis::RedisResult<String> {
    let facts = stats::read(conn)?;
    let mut out = String::new();
    out.push_str("# HELP ci_slaves Live slaves per cluster (the N of CRC32 mod N).\n# TYPE ci_slaves gauge\n");
    let mut depths = String::new();
    let mut executors = String::new();
    for c in &facts.clusters {
        let cluster = &c.name;
        out.push_str(&format!("ci_slaves{{cluster=\"{cluster}\"}} {}\n", c.live));
        for (i, len) in &c.depths {
            depths.push_str(&format!("ci_queue_depth{{cluster=\"{cluster}\",index=\"{i}\"}} {len}\n"));
        }
        for (i, busy, total) in &c.executors {
            let free = total.saturating_sub(*busy);
            for (state, count) in [("busy", *busy), ("free", free)] {
                executors.push_str(&format!("ci_slave_executors{{cluster=\"{cluster}\",index=\"{i}\",state=\"{state}\"}} {count}\n"));
            }
        }
    }
    out.push_str("# HELP ci_queue_depth Jobs waiting per slave queue.\n# TYPE ci_queue_depth gauge\n");
    out.push_str(&depths);
    out.push_str("# HELP ci_slave_executors Executors per live slave, busy or free (SLAVE_EXECUTORS), as of its last lease renewal.\n");
    out.push_str("# TYPE ci_slave_executors gauge\n");
    out.push_str(&executors);
    out.push_str("# HELP ci_redis_replicas Replicas connected to the Redis master.\n# TYPE ci_redis_replicas gauge\n");
    out.push_str(&format!("ci_redis_replicas {}\n", facts.replicas));
    out.push_str("# HELP ci_builds_total Finished builds by result.\n# TYPE ci_builds_total counter\n");
    for result in ["passed", "failed", "canceled"] {
        out.push_str(&format!("ci_builds_total{{result=\"{result}\"}} {}\n", facts.builds.get(result).copied().unwrap_or(0)));
    }
    out.push_str(
        "# HELP ci_forge_status_total Commit statuses posted by the slaves: sent (2xx), failed (after every attempt), \
         dropped (queue full).\n# TYPE ci_forge_status_total counter\n",
    );
    for result in ["sent", "failed", "dropped"] {
        out.push_str(&format!("ci_forge_status_total{{result=\"{result}\"}} {}\n", facts.forge.get(result).copied().unwrap_or(0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::durability::d;

    #[test]
    fn metrics_show_the_last_check_or_why_it_is_unknown() {
        let m = Metrics::default();
        assert!(m.render(None).contains("\n# ci_redis_durable unknown: not checked yet\n"));
        *m.durable.lock().unwrap() = DurableState::Known(d("yes", "always", "noeviction"));
        assert!(m.render(None).contains("\nci_redis_durable 1\n"));
        *m.durable.lock().unwrap() = DurableState::Known(d("no", "always", "noeviction"));
        assert!(m.render(None).contains("\nci_redis_durable 0\n"));
        *m.durable.lock().unwrap() = DurableState::Unknown("NOPERM".into());
        let text = m.render(None);
        assert!(text.contains("\n# ci_redis_durable unknown: redis CONFIG GET unavailable\n"), "{text}");
        assert!(!text.contains("\nci_redis_durable "), "{text}");
    }
}
