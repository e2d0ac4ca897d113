//! Build records as `/status` shows them (text log or JSON), the `/metrics`
//! Prometheus text, and whether Redis's settings make a 2xx durable.

use crate::logging::quote;
use crate::store::queue::{branch_key, build_key};
use redis::{Connection, RedisResult};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// What `GET /status/<repo>` answers for a pushed branch.
pub struct StatusView {
    /// 200 passed, 412 failed, 409 canceled, 202 no build finished yet (the text answer's code).
    pub code: u16,
    /// The log of the latest finished build, or what the first one is doing.
    pub text: String,
    /// The latest build's record, whatever its state.
    pub json: Value,
}

fn number(v: Option<&String>) -> Value {
    v.and_then(|s| s.parse::<f64>().ok()).map_or(Value::Null, |f| json!(f))
}

/// A build record (HASH) as the JSON the API documents.
pub fn record_json(h: &HashMap<String, String>) -> Value {
    let s = |k: &str| h.get(k).cloned().unwrap_or_default();
    let log: Value = h.get("log").and_then(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| json!([]));
    let seconds = h.get("seconds").and_then(|v| v.parse::<u64>().ok()).map_or(Value::Null, |n| json!(n));
    json!({
        "id": s("id"), "repo": s("repo"), "branch": s("branch"), "sha": s("sha"),
        "state": s("state"), "ok": s("state") == "passed", "log": log, "seconds": seconds,
        "slave": s("slave"),
        // the slave whose queue it waited in, when another took it (SLAVE_STEAL_AFTER)
        "stolen_from": h.get("stolen").map_or(Value::Null, |v| json!(v)),
        "queued_at": number(h.get("queued_at")),
        "started_at": number(h.get("started_at")),
        "finished_at": number(h.get("finished_at")),
    })
}

fn record(conn: &mut Connection, id: &str) -> RedisResult<HashMap<String, String>> {
    redis::cmd("HGETALL").arg(build_key(id)).query(conn)
}

/// Reads the status of a repository's branch (its default branch if none);
/// `Err` says why there is none.
pub fn read(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Result<StatusView, String>> {
    let branch = crate::store::queue::branch_or_default(conn, repo, branch)?;
    let Some(branch) = branch else {
        return Ok(Err(format!("{repo:?} was never pushed (or its default branch is unknown: add ?branch=)")));
    };
    let (last, done): (Option<String>, Option<String>) =
        redis::pipe().get(branch_key("last", repo, &branch)).get(branch_key("done", repo, &branch)).query(conn)?;
    let Some(last) = last else {
        return Ok(Err(format!("{repo:?} branch {branch:?} was never pushed")));
    };
    let latest = record(conn, &last)?;
    let json = record_json(&latest);
    let (code, text) = match done {
        Some(done) => {
            let finished = if done == last { latest.clone() } else { record(conn, &done)? };
            let log: Vec<String> = finished.get("log").and_then(|l| serde_json::from_str(l).ok()).unwrap_or_default();
            let code = finished_code(finished.get("state").map(String::as_str).unwrap_or(""));
            let mut text = log.join("\n");
            text.push('\n');
            (code, text)
        }
        None => record_text(conn, &json)?,
    };
    Ok(Ok(StatusView { code, text, json }))
}

/// The last `limit` builds (at least 1) of a repository's branch (its
/// default branch if none), newest first, as [`record_json`]; `None` when the
/// branch was never pushed.
pub fn history(conn: &mut Connection, repo: &str, branch: Option<&str>, limit: usize) -> RedisResult<Option<Vec<Value>>> {
    let Some(branch) = crate::store::queue::branch_or_default(conn, repo, branch)? else { return Ok(None) };
    let mut ids: Vec<String> = redis::cmd("LRANGE").arg(branch_key("history", repo, &branch)).arg(0).arg(limit.max(1) - 1).query(conn)?;
    if ids.is_empty() {
        // A branch pushed before histories were kept has its latest build only.
        let last: Option<String> = redis::cmd("GET").arg(branch_key("last", repo, &branch)).query(conn)?;
        match last {
            Some(id) => ids.push(id),
            None => return Ok(None),
        }
    }
    records(conn, &ids).map(Some)
}

/// The records of `ids` that still exist, in that order.
fn records(conn: &mut Connection, ids: &[String]) -> RedisResult<Vec<Value>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(build_key(id));
    }
    let found: Vec<HashMap<String, String>> = pipe.query(conn)?;
    Ok(found.iter().filter(|h| !h.is_empty()).map(record_json).collect())
}

/// Every pushed repository (sorted) with the latest build record of each of
/// its branches (sorted by branch name).
pub fn repos(conn: &mut Connection) -> RedisResult<Vec<(String, Vec<Value>)>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS").arg("ci:repos").query(conn)?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for repo in names {
        let branches = branches(conn, &repo)?;
        let mut pipe = redis::pipe();
        for b in &branches {
            pipe.get(branch_key("last", &repo, b));
        }
        let last: Vec<Option<String>> = pipe.query(conn)?;
        let ids: Vec<String> = last.into_iter().flatten().collect();
        out.push((repo, records(conn, &ids)?));
    }
    Ok(out)
}

/// The branches a repository was pushed to, sorted (empty when never pushed).
pub fn branches(conn: &mut Connection, repo: &str) -> RedisResult<Vec<String>> {
    let mut branches: Vec<String> = redis::cmd("SMEMBERS").arg(format!("ci:branches:{repo}")).query(conn)?;
    branches.sort();
    Ok(branches)
}

/// Build `id` as [`record_json`], if it exists and belongs to `repo`.
pub fn build(conn: &mut Connection, repo: &str, id: &str) -> RedisResult<Option<Value>> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let h = record(conn, id)?;
    Ok((h.get("repo").map(String::as_str) == Some(repo)).then(|| record_json(&h)))
}

/// Build `id` as [`record_json`], whatever its repository (the dashboard's
/// `/builds/<id>`); `None` when there is no such record.
pub fn record_by_id(conn: &mut Connection, id: &str) -> RedisResult<Option<Value>> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let h = record(conn, id)?;
    Ok((!h.is_empty()).then(|| record_json(&h)))
}

/// The text answer's code of a finished build: 200 passed, 409 canceled
/// (distinct from a failure), else 412.
fn finished_code(state: &str) -> u16 {
    match state {
        "passed" => 200,
        "canceled" => 409,
        _ => 412,
    }
}

/// A record's text answer: its log with 200 (passed), 412 (failed) or 409 (canceled); while
/// queued or running, 202 and its live log so far (or what it is doing).
pub fn record_text(conn: &mut Connection, v: &Value) -> RedisResult<(u16, String)> {
    let state = v["state"].as_str().unwrap_or("");
    let id = v["id"].as_str().unwrap_or("");
    let lines: Vec<String> = match state {
        "passed" | "failed" | "canceled" => {
            v["log"].as_array().map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect()).unwrap_or_default()
        }
        _ => crate::store::stream::lines_so_far(conn, id, crate::store::stream::SHOWN_SO_FAR)?,
    };
    let code = match state {
        "passed" | "failed" | "canceled" => finished_code(state),
        _ => 202,
    };
    if code == 202 && lines.is_empty() {
        let (repo, branch) = (v["repo"].as_str().unwrap_or(""), v["branch"].as_str().unwrap_or(""));
        return Ok((202, format!("build {id} of {repo} {branch} is {state}\n")));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok((code, text))
}

/// One line of a build list: id, state, short sha, seconds, slave, when
/// (finished, else started, else queued; UTC ISO 8601).
pub fn record_line(v: &Value) -> String {
    let sha = crate::payload::short_sha(v["sha"].as_str().unwrap_or(""));
    let seconds = v["seconds"].as_u64().map_or("-".to_string(), |s| format!("{s}s"));
    let when = ["finished_at", "started_at", "queued_at"].iter().find_map(|k| v[*k].as_f64()).map_or("-".to_string(), iso_time);
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    format!("{} {} {sha} {seconds} {} {when}", s("id"), s("state"), s("slave"))
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC), by the civil-from-days rule.
pub fn iso_time(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

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
    fn facts(&self) -> String {
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
pub fn watch_durability(redis: &mut crate::store::conn::Redis, metrics: &Metrics, every: std::time::Duration) {
    loop {
        let state = match redis.run_again(durability) {
            Ok(d) => DurableState::Known(d),
            Err(e) if crate::store::conn::is_connection_error(&e) => {
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

/// Request counters kept by the hook process, and the last durability check.
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    durable: Mutex<DurableState>,
    /// REDIS_MIN_REPLICAS, shown beside the replicas Redis has.
    min_replicas: AtomicU32,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            requests: Mutex::new(BTreeMap::new()),
            durable: Mutex::new(DurableState::NotChecked),
            min_replicas: AtomicU32::new(0),
        }
    }
}

impl Metrics {
    pub fn set_min_replicas(&self, n: u32) {
        self.min_replicas.store(n, Ordering::Relaxed);
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
        out.push_str(&format!(
            "# HELP ci_redis_min_replicas Replicas that must acknowledge a push before its 2xx (REDIS_MIN_REPLICAS).\n\
             # TYPE ci_redis_min_replicas gauge\nci_redis_min_replicas {}\n",
            self.min_replicas.load(Ordering::Relaxed)
        ));
        out
    }
}

fn redis_metrics(conn: &mut Connection) -> RedisResult<String> {
    let mut out = String::new();
    let clusters = crate::store::membership::clusters(conn)?;
    out.push_str("# HELP ci_slaves Live slaves per cluster (the N of CRC32 mod N).\n# TYPE ci_slaves gauge\n");
    let mut depths = String::new();
    let mut executors = String::new();
    for (cluster, top) in &clusters {
        let n = crate::store::membership::live_count(conn, cluster)?;
        out.push_str(&format!("ci_slaves{{cluster=\"{cluster}\"}} {n}\n"));
        for (i, len) in crate::store::queue::depths(conn, cluster, *top)? {
            depths.push_str(&format!("ci_queue_depth{{cluster=\"{cluster}\",index=\"{i}\"}} {len}\n"));
        }
        for (i, busy, total) in crate::store::membership::executors(conn, cluster)? {
            let free = total.saturating_sub(busy);
            for (state, count) in [("busy", busy), ("free", free)] {
                executors.push_str(&format!("ci_slave_executors{{cluster=\"{cluster}\",index=\"{i}\",state=\"{state}\"}} {count}\n"));
            }
        }
    }
    out.push_str("# HELP ci_queue_depth Jobs waiting per slave queue.\n# TYPE ci_queue_depth gauge\n");
    out.push_str(&depths);
    out.push_str("# HELP ci_slave_executors Executors per live slave, busy or free (SLAVE_EXECUTORS), as of its last lease renewal.\n");
    out.push_str("# TYPE ci_slave_executors gauge\n");
    out.push_str(&executors);
    let info: String = redis::cmd("INFO").arg("replication").query(conn)?;
    let replicas = info.lines().find_map(|l| l.strip_prefix("connected_slaves:")).unwrap_or("0").trim();
    out.push_str("# HELP ci_redis_replicas Replicas connected to the Redis master.\n# TYPE ci_redis_replicas gauge\n");
    out.push_str(&format!("ci_redis_replicas {replicas}\n"));
    let stats: HashMap<String, u64> = redis::cmd("HGETALL").arg("ci:stats").query(conn)?;
    out.push_str("# HELP ci_builds_total Finished builds by result.\n# TYPE ci_builds_total counter\n");
    for result in ["passed", "failed", "canceled"] {
        out.push_str(&format!("ci_builds_total{{result=\"{result}\"}} {}\n", stats.get(result).copied().unwrap_or(0)));
    }
    let forge: HashMap<String, u64> = redis::cmd("HGETALL").arg(crate::slave::forge::COUNTS_KEY).query(conn)?;
    out.push_str(
        "# HELP ci_forge_status_total Commit statuses posted by the slaves: sent (2xx), failed (after every attempt), \
         dropped (queue full).\n# TYPE ci_forge_status_total counter\n",
    );
    for result in ["sent", "failed", "dropped"] {
        out.push_str(&format!("ci_forge_status_total{{result=\"{result}\"}} {}\n", forge.get(result).copied().unwrap_or(0)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(appendonly: &str, appendfsync: &str, policy: &str) -> Durability {
        Durability { appendonly: appendonly.into(), appendfsync: appendfsync.into(), maxmemory_policy: policy.into() }
    }

    #[test]
    fn iso_times_match_known_dates() {
        // Oracles: `date -u -d @<n> +%FT%TZ`.
        assert_eq!(iso_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400.5), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(1_764_230_400.123), "2025-11-27T08:00:00Z");
        assert_eq!(iso_time(4_102_444_799.0), "2099-12-31T23:59:59Z");
    }

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
