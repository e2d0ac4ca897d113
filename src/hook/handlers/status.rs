//! `GET /status/<repo>`: the branch's latest result as its log (text, with
//! the result in the code, colour sequences stripped) or its record (JSON,
//! the lines as stored); `?id=` one build; `?follow=1` hands the connection
//! to [`super::follow`].

use super::{query_param, repo_and_branch, wants_json};
use crate::hook::reply::{redis_down, Reply};
use crate::hook::wire::Request;
use crate::store::conn::Redis;
use crate::store::record;
use tiny_http::Method;

/// Text (the log) by default, JSON when `Accept` asks for it. Errors are JSON
/// either way; 412 is the failed build's log, as documented.
pub(crate) fn get_status(redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(bad) => return bad.into(),
    };
    let wants_json = wants_json(req);
    let follow = req.method == Method::Get && query_param(query, "follow").is_some_and(|f| f == "1" || f == "true");
    if let Some(id) = query_param(query, "id") {
        return match redis.run_again(|c| record::build(c, &repo, &id)) {
            Err(e) => redis_down(&e),
            Ok(None) => Reply::error(404, format!("{repo:?} has no build {id:?} (ids are numbers; old builds leave after HISTORY_KEEP)")),
            Ok(Some(_)) if follow => Reply { follow: Some(id), ..Reply::text(200, String::new()) },
            Ok(Some(record)) if wants_json => Reply::json(200, record.to_json()),
            Ok(Some(record)) => match redis.run_again(|c| record::record_text(c, &record)) {
                Err(e) => redis_down(&e),
                Ok((code, text)) => Reply::text(code, crate::ansi::strip(&text)),
            },
        };
    }
    if follow {
        return match redis.run_again(|c| record::history(c, &repo, branch.as_deref(), 1)) {
            Err(e) => redis_down(&e),
            Ok(Some(latest)) if !latest.is_empty() => {
                let id = latest[0].id.clone();
                Reply { follow: Some(id), ..Reply::text(200, String::new()) }
            }
            Ok(_) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        };
    }
    match redis.run_again(|c| record::read(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(Err(never_pushed)) => Reply::error(404, never_pushed),
        Ok(Ok(view)) if wants_json => Reply::json(200, view.record.to_json()),
        Ok(Ok(view)) => Reply::text(view.code, crate::ansi::strip(&view.text)),
    }
}
