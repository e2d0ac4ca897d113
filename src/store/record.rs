//! Build records as `/status` shows them (text log or JSON).

use crate::store::keys;

use redis::{Connection, RedisResult};
use serde_json::{json, Value};
use std::collections::HashMap;

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
    redis::cmd("HGETALL").arg(keys::build(id)).query(conn)
}

/// Reads the status of a repository's branch (its default branch if none);
/// `Err` says why there is none.
pub fn read(conn: &mut Connection, repo: &str, branch: Option<&str>) -> RedisResult<Result<StatusView, String>> {
    let branch = crate::store::queue::branch_or_default(conn, repo, branch)?;
    let Some(branch) = branch else {
        return Ok(Err(format!("{repo:?} was never pushed (or its default branch is unknown: add ?branch=)")));
    };
    let (last, done): (Option<String>, Option<String>) =
        redis::pipe().get(keys::last(repo, &branch)).get(keys::done(repo, &branch)).query(conn)?;
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
    let mut ids: Vec<String> = redis::cmd("LRANGE").arg(keys::history(repo, &branch)).arg(0).arg(limit.max(1) - 1).query(conn)?;
    if ids.is_empty() {
        // A branch pushed before histories were kept has its latest build only.
        let last: Option<String> = redis::cmd("GET").arg(keys::last(repo, &branch)).query(conn)?;
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
        pipe.cmd("HGETALL").arg(keys::build(id));
    }
    let found: Vec<HashMap<String, String>> = pipe.query(conn)?;
    Ok(found.iter().filter(|h| !h.is_empty()).map(record_json).collect())
}

/// Every pushed repository (sorted) with the latest build record of each of
/// its branches (sorted by branch name).
pub fn repos(conn: &mut Connection) -> RedisResult<Vec<(String, Vec<Value>)>> {
    let mut names: Vec<String> = redis::cmd("SMEMBERS").arg(keys::REPOS).query(conn)?;
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for repo in names {
        let branches = branches(conn, &repo)?;
        let mut pipe = redis::pipe();
        for b in &branches {
            pipe.get(keys::last(&repo, b));
        }
        let last: Vec<Option<String>> = pipe.query(conn)?;
        let ids: Vec<String> = last.into_iter().flatten().collect();
        out.push((repo, records(conn, &ids)?));
    }
    Ok(out)
}

/// The branches a repository was pushed to, sorted (empty when never pushed).
pub fn branches(conn: &mut Connection, repo: &str) -> RedisResult<Vec<String>> {
    let mut branches: Vec<String> = redis::cmd("SMEMBERS").arg(keys::branches(repo)).query(conn)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_match_known_dates() {
        // Oracles: `date -u -d @<n> +%FT%TZ`.
        assert_eq!(iso_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400.5), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(1_764_230_400.123), "2025-11-27T08:00:00Z");
        assert_eq!(iso_time(4_102_444_799.0), "2099-12-31T23:59:59Z");
    }
}
