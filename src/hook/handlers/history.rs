//! `GET /history/<repo>` (a branch's last builds) and `GET /repos` (every
//! repository with its branches' latest builds), as lines or JSON.

use super::{query_param, repo_and_branch, wants_json};
use crate::hook::reply::{redis_down, Reply};
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::store::conn::Redis;
use crate::store::record::{self, BuildRecord};
use serde_json::Value;

/// The last builds of a branch, newest first: one line each, or JSON records.
pub(crate) fn get_history(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(bad) => return bad.into(),
    };
    let keep = hook.config.history_keep;
    let limit = match query_param(query, "limit") {
        None => keep,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=keep).contains(&n) => n,
            _ => return Reply::error(400, format!("limit={l:?}: expected a number from 1 to {keep} (HISTORY_KEEP)")),
        },
    };
    match redis.run_again(|c| record::history(c, &repo, branch.as_deref(), limit)) {
        Err(e) => redis_down(&e),
        Ok(None) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        Ok(Some(records)) if wants_json(req) => Reply::json(200, Value::Array(records.iter().map(BuildRecord::to_json).collect())),
        Ok(Some(records)) => Reply::text(200, records.iter().map(|r| format!("{}\n", record::record_line(r))).collect()),
    }
}
/// Every repository with its branches' latest builds.
pub(crate) fn get_repos(redis: &mut Redis, req: &Request) -> Reply {
    match redis.run_again(record::repos) {
        Err(e) => redis_down(&e),
        Ok(repos) if wants_json(req) => {
            // Written straight from the records (no JSON tree): the listing is polled.
            #[derive(serde::Serialize)]
            struct Listed<'a, B> {
                repo: &'a str,
                branches: Vec<B>,
            }
            let listed: Vec<_> =
                repos.iter().map(|(repo, branches)| Listed { repo, branches: branches.iter().map(BuildRecord::api).collect() }).collect();
            Reply::json_text(200, serde_json::to_string(&listed).expect("records are strings and numbers"))
        }
        Ok(repos) => {
            let mut text = String::new();
            for (repo, branches) in &repos {
                for b in branches {
                    text.push_str(&format!("{repo} {} {}\n", b.branch, record::record_line(b)));
                }
            }
            Reply::text(200, text)
        }
    }
}
