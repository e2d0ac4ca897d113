//! Build records as `/status` shows them (text log or JSON), and the
//! `/metrics` Prometheus text.

use crate::queue::{branch_key, build_key};
use redis::{Connection, RedisResult};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// What `GET /status/<repo>` answers for a pushed branch.
pub struct StatusView {
    /// 200 passed, 412 failed, 202 no build finished yet (the text answer's code).
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
    let branch = crate::queue::branch_or_default(conn, repo, branch)?;
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
            let code = if finished.get("state").map(String::as_str) == Some("passed") { 200 } else { 412 };
            let mut text = log.join("\n");
            text.push('\n');
            (code, text)
        }
        None => {
            let state = latest.get("state").cloned().unwrap_or_default();
            (202, format!("build {last} of {repo} {branch} is {state}\n"))
        }
    };
    Ok(Ok(StatusView { code, text, json }))
}

/// Request counters kept by the hook process.
pub struct Metrics {
    started: Instant,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { started: Instant::now(), requests: Mutex::new(BTreeMap::new()) }
    }
}

impl Metrics {
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
        out
    }
}

fn redis_metrics(conn: &mut Connection) -> RedisResult<String> {
    let mut out = String::new();
    let clusters = crate::membership::clusters(conn)?;
    out.push_str("# HELP ci_slaves Live slaves per cluster (the N of CRC32 mod N).\n# TYPE ci_slaves gauge\n");
    let mut depths = String::new();
    for (cluster, top) in &clusters {
        let n = crate::membership::live_count(conn, cluster)?;
        out.push_str(&format!("ci_slaves{{cluster=\"{cluster}\"}} {n}\n"));
        for (i, len) in crate::queue::depths(conn, cluster, *top)? {
            depths.push_str(&format!("ci_queue_depth{{cluster=\"{cluster}\",index=\"{i}\"}} {len}\n"));
        }
    }
    out.push_str("# HELP ci_queue_depth Jobs waiting per slave queue.\n# TYPE ci_queue_depth gauge\n");
    out.push_str(&depths);
    let stats: HashMap<String, u64> = redis::cmd("HGETALL").arg("ci:stats").query(conn)?;
    out.push_str("# HELP ci_builds_total Finished builds by result.\n# TYPE ci_builds_total counter\n");
    for result in ["passed", "failed"] {
        out.push_str(&format!("ci_builds_total{{result=\"{result}\"}} {}\n", stats.get(result).copied().unwrap_or(0)));
    }
    Ok(out)
}
