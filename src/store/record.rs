//! Build records: the typed [`BuildRecord`] every reader uses (read from its
//! HASH, [`keys::build`]), and the views `/status` and `/history` show of
//! them (text log or JSON).

use crate::payload::{Event, Params};
use crate::store::keys;

use redis::{Connection, RedisResult};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

/// One build's record, as the queue's scripts write its HASH fields.
/// Missing or unreadable fields read as empty (`""`, `None`, 0, false).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildRecord {
    pub id: String,
    pub repo: String,
    pub branch: String,
    pub sha: String,
    /// Why it runs; records of earlier versions have none stored: then
    /// what the branch tells ([`Event::of_branch`]).
    pub event: Event,
    /// `queued`, `running`, `passed`, `failed` or `canceled`.
    pub state: String,
    /// The stored `ok` (`true` once passed).
    pub ok: bool,
    /// The log lines stored with the result (while it runs: `[]`; the
    /// live lines are in the stream, [`crate::store::stream`]).
    pub log: Vec<String>,
    pub seconds: Option<u64>,
    /// `<cluster>-<index>`: where it is queued or ran.
    pub slave: String,
    pub cluster: String,
    /// Unix seconds.
    pub queued_at: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    /// Starts so far; a result of an older attempt is ignored.
    pub attempt: u32,
    /// The job, as [`crate::store::job`] encodes it.
    pub push: String,
    /// Build from a fresh clone (a re-run asked for it).
    pub reset: bool,
    /// The slave whose queue it waited in, when another took it (SLAVE_STEAL_AFTER).
    pub stolen: Option<String>,
    /// Attempts its slave died during.
    pub died: u32,
    /// Why it was canceled while it ran.
    pub cancel: Option<String>,
    /// A manual run's parameters, as its job carries them (none otherwise).
    pub params: Params,
    /// The head commit's first line (a request's title), at most
    /// [`crate::payload::TITLE_MAX`] characters; empty in older records.
    pub title: String,
}

/// The record as the API documents it. Fields in alphabetical order, the
/// order of its JSON keys.
#[derive(Serialize)]
struct Api<'a> {
    branch: &'a str,
    event: Event,
    finished_at: Option<f64>,
    id: &'a str,
    log: &'a [String],
    ok: bool,
    params: &'a Params,
    queued_at: Option<f64>,
    repo: &'a str,
    seconds: Option<u64>,
    sha: &'a str,
    slave: &'a str,
    started_at: Option<f64>,
    state: &'a str,
    stolen_from: Option<&'a str>,
    title: &'a str,
}

/// A hash's fields, read by name.
struct Fields<F>(F);

impl<'h, F: Fn(&str) -> Option<&'h str>> Fields<F> {
    fn get(&self, k: &str) -> Option<&'h str> {
        (self.0)(k)
    }
}

impl BuildRecord {
    /// The record of a HASH (all empty when the hash is).
    pub fn from_hash(h: &HashMap<String, String>) -> BuildRecord {
        BuildRecord::from_fields(|k| h.get(k).map(String::as_str))
    }

    /// The record of a hash's fields as `get` gives them (absent: empty).
    fn from_fields<'h>(get: impl Fn(&str) -> Option<&'h str>) -> BuildRecord {
        let h = Fields(get);
        let s = |k: &str| h.get(k).map(String::from).unwrap_or_default();
        let number = |k: &str| h.get(k).and_then(|v| v.parse::<f64>().ok()).filter(|f| f.is_finite());
        let count = |k: &str| h.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let log = h.get("log").and_then(|l| serde_json::from_str::<Value>(l).ok());
        BuildRecord {
            id: s("id"),
            repo: s("repo"),
            branch: s("branch"),
            sha: s("sha"),
            event: h.get("event").and_then(Event::parse).unwrap_or_else(|| Event::of_branch(&s("branch"))),
            state: s("state"),
            ok: h.get("ok").is_some_and(|v| v == "true"),
            log: log
                .as_ref()
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect())
                .unwrap_or_default(),
            seconds: h.get("seconds").and_then(|v| v.parse::<u64>().ok()),
            slave: s("slave"),
            cluster: s("cluster"),
            queued_at: number("queued_at"),
            started_at: number("started_at"),
            finished_at: number("finished_at"),
            attempt: count("attempt"),
            push: s("push"),
            reset: h.get("reset").is_some_and(|v| v == "1"),
            stolen: h.get("stolen").map(String::from),
            died: count("died"),
            cancel: h.get("cancel").map(String::from),
            params: h.get("push").and_then(crate::store::job::decode).map(|p| p.params).unwrap_or_default(),
            title: s("title"),
        }
    }

    /// Passed, failed or canceled: its result is stored.
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "passed" | "failed" | "canceled")
    }

    /// Queued or running.
    pub fn active(&self) -> bool {
        matches!(self.state.as_str(), "queued" | "running")
    }

    /// The JSON the API documents (`ok` follows the state; `stolen_from`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.api()).expect("a record is strings and numbers")
    }

    /// What [`BuildRecord::to_json`] writes, to serialize without a [`Value`].
    pub fn api(&self) -> impl Serialize + '_ {
        Api {
            branch: &self.branch,
            event: self.event,
            finished_at: self.finished_at,
            id: &self.id,
            log: &self.log,
            ok: self.state == "passed",
            params: &self.params,
            queued_at: self.queued_at,
            repo: &self.repo,
            seconds: self.seconds,
            sha: &self.sha,
            slave: &self.slave,
            started_at: self.started_at,
            state: &self.state,
            stolen_from: self.stolen.as_deref(),
            title: &self.title,
        }
    }

    /// When it finished, else started, else was queued (unix seconds).
    pub fn when(&self) -> Option<f64> {
        self.finished_at.or(self.started_at).or(self.queued_at)
    }
}

/// What `GET /status/<repo>` answers for a pushed branch.
pub struct StatusView {
    /// 200 passed, 412 failed, 409 canceled, 202 no build finished yet (the text answer's code).
    pub code: u16,
    /// The log of the latest finished build, or what the first one is doing.
    pub text: String,
    /// The latest build's record, whatever its state.
    pub record: BuildRecord,
}

/// Build `id`'s record; `None` when there is none.
fn record(conn: &mut Connection, id: &str) -> RedisResult<Option<BuildRecord>> {
    let h: HashMap<String, String> = redis::cmd("HGETALL").arg(keys::build(id)).query(conn)?;
    Ok((!h.is_empty()).then(|| BuildRecord::from_hash(&h)))
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
    let latest = record(conn, &last)?.unwrap_or_default();
    let (code, text) = match done {
        Some(done) => {
            let finished = if done == last { latest.clone() } else { record(conn, &done)?.unwrap_or_default() };
            let code = finished_code(&finished.state);
            let mut text = finished.log.join("\n");
            text.push('\n');
            (code, text)
        }
        None => record_text(conn, &latest)?,
    };
    Ok(Ok(StatusView { code, text, record: latest }))
}

/// The last `limit` builds (at least 1) of a repository's branch (its
/// default branch if none), newest first; `None` when the
/// branch was never pushed.
pub fn history(conn: &mut Connection, repo: &str, branch: Option<&str>, limit: usize) -> RedisResult<Option<Vec<BuildRecord>>> {
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
fn records(conn: &mut Connection, ids: &[String]) -> RedisResult<Vec<BuildRecord>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(keys::build(id));
    }
    let found: Vec<HashMap<String, String>> = pipe.query(conn)?;
    Ok(found.iter().filter(|h| !h.is_empty()).map(BuildRecord::from_hash).collect())
}

/// The fields a listing reads of a record: never its log (a listing costs
/// the same however long the builds' logs are).
const LISTED: [&str; 13] =
    ["id", "repo", "branch", "sha", "event", "state", "seconds", "slave", "queued_at", "started_at", "finished_at", "stolen", "title"];

/// The listed fields of the records of `ids` that still exist, in that order: one round trip.
fn listed(conn: &mut Connection, ids: &[String]) -> RedisResult<Vec<BuildRecord>> {
    Ok(listed_each(conn, ids)?.into_iter().flatten().collect())
}

/// The listed fields of the record of each of `ids` (`None`: gone): one round trip.
fn listed_each(conn: &mut Connection, ids: &[String]) -> RedisResult<Vec<Option<BuildRecord>>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HMGET").arg(keys::build(id)).arg(&LISTED[..]);
    }
    let found: Vec<Vec<Option<String>>> = pipe.query(conn)?;
    Ok(found
        .iter()
        .map(|values| {
            values
                .first()
                .is_some_and(Option::is_some)
                .then(|| BuildRecord::from_fields(|k| LISTED.iter().position(|l| *l == k).and_then(|i| values.get(i)?.as_deref())))
        })
        .collect())
}

/// The listing's order of a repository's branches (their latest builds): the
/// default branch first, then by last activity (finished, else started,
/// else queued), newest first; ties by name.
pub fn order(default: Option<&str>, latest: &mut [BuildRecord]) {
    latest.sort_by(|a, b| {
        let key = |r: &BuildRecord| (Some(r.branch.as_str()) != default, std::cmp::Reverse(r.when().map(|w| (w * 1000.0) as i64)));
        key(a).cmp(&key(b)).then_with(|| a.branch.cmp(&b.branch))
    });
}

/// Every pushed repository with a listed branch (sorted by name), and the
/// latest build record (listed fields: [`LISTED`]) of each of its listed
/// branches, in the listing's [`order`]. One round trip (a script) however
/// many repositories and branches, no log read.
pub fn repos(conn: &mut Connection) -> RedisResult<Vec<(String, Vec<BuildRecord>)>> {
    let mut repos = listing(conn, "")?;
    repos.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(repos)
}

/// One repository's listed branches' latest builds, in the listing's [`order`].
pub fn repo_listing(conn: &mut Connection, repo: &str) -> RedisResult<Vec<BuildRecord>> {
    Ok(listing(conn, repo)?.pop().map(|(_, b)| b).unwrap_or_default())
}

/// `repo`'s (`""`: every repository's) listed branches' latest builds: one
/// script (LISTING), one JSON text back.
fn listing(conn: &mut Connection, repo: &str) -> RedisResult<Vec<(String, Vec<BuildRecord>)>> {
    let text: String = crate::store::scripts::LISTING.prepare().arg(repo).arg(&LISTED[..]).invoke(conn)?;
    type Listed = Vec<(String, String, Vec<(String, Vec<Option<String>>)>)>;
    let repos: Listed = serde_json::from_str(&text)
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::TypeError, "LISTING: not the listing's JSON", e.to_string())))?;
    Ok(repos
        .into_iter()
        .map(|(name, default, branches)| {
            let mut latest: Vec<BuildRecord> = branches
                .iter()
                .filter(|(_, values)| values.len() == LISTED.len())
                .map(|(_, values)| BuildRecord::from_fields(|k| LISTED.iter().position(|l| *l == k).and_then(|i| values[i].as_deref())))
                .collect();
            order((!default.is_empty()).then_some(default.as_str()), &mut latest);
            (name, latest)
        })
        .collect())
}

/// A repository's page: each listed branch (in the listing's [`order`]) with
/// its last `limit` builds (listed fields), newest first. Three round trips.
pub fn repository(conn: &mut Connection, repo: &str, limit: usize) -> RedisResult<Vec<(String, Vec<BuildRecord>)>> {
    let latest = repo_listing(conn, repo)?;
    let mut pipe = redis::pipe();
    for r in &latest {
        pipe.cmd("LRANGE").arg(keys::history(repo, &r.branch)).arg(0).arg(limit.max(1) - 1);
    }
    let lists: Vec<Vec<String>> = if latest.is_empty() { Vec::new() } else { pipe.query(conn)? };
    let ids: Vec<String> = lists.iter().flatten().cloned().collect();
    let mut records = listed(conn, &ids)?.into_iter();
    let mut out = Vec::with_capacity(latest.len());
    for (r, list) in latest.into_iter().zip(lists) {
        let mut builds: Vec<BuildRecord> = records.by_ref().take(list.len()).collect();
        // A branch pushed before histories were kept has its latest build only.
        if builds.is_empty() {
            builds.push(r.clone());
        }
        out.push((r.branch, builds));
    }
    Ok(out)
}

/// Takes a deleted branch or a closed request out of the listings (`/repos`,
/// the dashboard's pages); its builds, history and last push stay, and a new
/// push lists it again. Whether it was listed.
pub fn unlist(conn: &mut Connection, repo: &str, branch: &str) -> RedisResult<bool> {
    let removed: i64 = redis::cmd("SREM").arg(keys::branches(repo)).arg(branch).query(conn)?;
    Ok(removed == 1)
}

/// Whether the repository was ever pushed (listed or not).
pub fn branches_known(conn: &mut Connection, repo: &str) -> RedisResult<bool> {
    redis::cmd("SISMEMBER").arg(keys::REPOS).arg(repo).query(conn)
}

/// Build `id`, if it exists and belongs to `repo`.
pub fn build(conn: &mut Connection, repo: &str, id: &str) -> RedisResult<Option<BuildRecord>> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    Ok(record(conn, id)?.filter(|r| r.repo == repo))
}

/// Build `id`, whatever its repository (the dashboard's `/builds/<id>`);
/// `None` when there is no such record.
pub fn record_by_id(conn: &mut Connection, id: &str) -> RedisResult<Option<BuildRecord>> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    record(conn, id)
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
pub fn record_text(conn: &mut Connection, r: &BuildRecord) -> RedisResult<(u16, String)> {
    let (code, lines) = if r.finished() {
        (finished_code(&r.state), r.log.clone())
    } else {
        (202, crate::store::stream::lines_so_far(conn, &r.id, crate::store::stream::SHOWN_SO_FAR)?)
    };
    if code == 202 && lines.is_empty() {
        return Ok((202, format!("build {} of {} {} is {}\n", r.id, r.repo, r.branch, r.state)));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok((code, text))
}

/// One line of a build list: id, state, short sha, seconds, slave, when
/// (finished, else started, else queued; UTC ISO 8601).
pub fn record_line(r: &BuildRecord) -> String {
    let sha = crate::payload::short_sha(&r.sha);
    let seconds = r.seconds.map_or("-".to_string(), |s| format!("{s}s"));
    let when = r.when().map_or("-".to_string(), iso_time);
    format!("{} {} {sha} {seconds} {} {when}", r.id, r.state, r.slave)
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
    fn the_api_json_keeps_its_keys_order_and_numbers() {
        let fields = [
            ("id", "7"),
            ("repo", "a/b"),
            ("branch", "main"),
            ("sha", "ab"),
            ("state", "passed"),
            ("ok", "true"),
            ("log", r#"["x"]"#),
            ("seconds", "3"),
            ("slave", "slave-0"),
            ("cluster", "slave"),
            ("queued_at", "1.5"),
            ("started_at", "2.250"),
            ("finished_at", "5"),
            ("attempt", "1"),
            ("push", "{}"),
            ("reset", "0"),
        ];
        let h: HashMap<String, String> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let r = BuildRecord::from_hash(&h);
        assert_eq!((r.attempt, r.reset, r.ok, r.cluster.as_str()), (1, false, true, "slave"));
        // What serde_json::json! (keys sorted) made of the same hash.
        let want = r#"{"branch":"main","event":"push","finished_at":5.0,"id":"7","log":["x"],"ok":true,"params":{},"queued_at":1.5,"repo":"a/b","seconds":3,"sha":"ab","slave":"slave-0","started_at":2.25,"state":"passed","stolen_from":null,"title":""}"#;
        assert_eq!(r.to_json().to_string(), want);
        let empty = BuildRecord::from_hash(&HashMap::new()).to_json().to_string();
        let want = r#"{"branch":"","event":"push","finished_at":null,"id":"","log":[],"ok":false,"params":{},"queued_at":null,"repo":"","seconds":null,"sha":"","slave":"","started_at":null,"state":"","stolen_from":null,"title":""}"#;
        assert_eq!(empty, want);
        // A manual run's parameters, out of its job.
        let job = r#"{"repo":"a/b","branch":"main","sha":"ab","clone_url":"u","event":"manual","params":{"TARGET":"prod","A":"1"}}"#;
        let h: HashMap<String, String> = [("push".to_string(), job.to_string())].into();
        assert_eq!(BuildRecord::from_hash(&h).to_json()["params"], serde_json::json!({"A": "1", "TARGET": "prod"}));
    }

    #[test]
    fn the_event_is_the_stored_one_else_what_the_branch_tells() {
        let record = |fields: &[(&str, &str)]| {
            let h: HashMap<String, String> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            BuildRecord::from_hash(&h)
        };
        for (branch, want) in [("main", "push"), ("pull/3", "pull_request"), ("merge-requests/9", "pull_request"), ("tags/v1", "tag")] {
            // Written by the previous version: no `event` field; or an unreadable one.
            for stored in [None, Some(""), Some("Push"), Some("nightly")] {
                let mut fields = vec![("branch", branch)];
                fields.extend(stored.map(|e| ("event", e)));
                assert_eq!(record(&fields).to_json()["event"], want, "{branch} {stored:?}");
            }
        }
        for event in ["push", "pull_request", "tag", "cron", "manual"] {
            assert_eq!(record(&[("branch", "pull/3"), ("event", event)]).to_json()["event"], event);
        }
    }

    #[test]
    fn listings_put_the_default_branch_first_then_the_newest() {
        let r = |branch: &str, queued: f64, finished: Option<f64>| BuildRecord {
            branch: branch.into(),
            queued_at: Some(queued),
            finished_at: finished,
            ..BuildRecord::default()
        };
        let mut list =
            vec![r("a", 10.0, Some(50.0)), r("main", 1.0, Some(2.0)), r("z", 30.0, None), r("b", 40.0, None), r("c", 40.0, None)];
        order(Some("main"), &mut list);
        let names: Vec<&str> = list.iter().map(|r| r.branch.as_str()).collect();
        // a finished last (50), then b and c queued at 40 (by name), then z (30); main first.
        assert_eq!(names, ["main", "a", "b", "c", "z"]);
        order(None, &mut list);
        assert_eq!(list[0].branch, "a", "no default branch: by activity only");
    }

    #[test]
    fn iso_times_match_known_dates() {
        // Oracles: `date -u -d @<n> +%FT%TZ`.
        assert_eq!(iso_time(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400.5), "2000-02-29T00:00:00Z");
        assert_eq!(iso_time(1_764_230_400.123), "2025-11-27T08:00:00Z");
        assert_eq!(iso_time(4_102_444_799.0), "2099-12-31T23:59:59Z");
    }
}
