//! An answer: status, content type, body, extra headers and the facts of
//! its log line; turned into the [`Answer`] that [`crate::hook::wire`] writes.

use crate::hook::views;
use crate::hook::wire::Answer;
use crate::logging::quote;
use serde_json::{json, Value};

/// What a 503 asks the client to wait, in seconds.
pub(crate) const RETRY_AFTER: &str = "5";
/// An answer: status, content type, body, extra headers.
pub(crate) struct Reply {
    pub code: u16,
    pub ctype: &'static str,
    pub body: String,
    /// Extra headers (`Allow` of a 405, a badge's `ETag`, a login's cookie).
    pub headers: Vec<(&'static str, String)>,
    /// `key=value` facts for the request's log line.
    pub facts: String,
    /// Follow this build's log on the connection thread (`?follow=1`).
    pub follow: Option<String>,
    /// The route's name for the log line and metrics, when the handler
    /// knows better than the table (`GET /` is the dashboard or the list).
    pub route: Option<&'static str>,
}
impl Reply {
    pub(crate) fn json(code: u16, value: Value) -> Reply {
        Reply::json_text(code, value.to_string())
    }

    /// A JSON answer already written (`text`: one JSON value).
    pub(crate) fn json_text(code: u16, mut text: String) -> Reply {
        text.push('\n');
        Reply { code, ctype: "application/json", body: text, headers: Vec::new(), facts: String::new(), follow: None, route: None }
    }

    /// One JSON sentence, `{"error": why}`; also on the log line.
    pub(crate) fn error(code: u16, why: impl Into<String>) -> Reply {
        let why = why.into();
        let mut r = Reply::json(code, json!({ "error": why }));
        r.facts = format!(" error={}", quote(&why));
        r
    }

    pub(crate) fn text(code: u16, body: String) -> Reply {
        Reply { code, ctype: "text/plain; charset=utf-8", body, headers: Vec::new(), facts: String::new(), follow: None, route: None }
    }
}
pub(crate) struct LogFacts {
    pub code: u16,
    pub facts: String,
}
/// The answer to write for a reply (a 503 asks to retry after
/// [`RETRY_AFTER`]), and what the log line needs.
pub(crate) fn response(reply: Reply) -> (Answer, LogFacts) {
    let mut headers = vec![("Content-Type", reply.ctype.to_string())];
    if reply.code == 503 {
        headers.push(("Retry-After", RETRY_AFTER.to_string()));
    }
    headers.extend(reply.headers);
    (Answer { code: reply.code, headers, body: reply.body.into_bytes() }, LogFacts { code: reply.code, facts: reply.facts })
}
impl From<views::View> for Reply {
    fn from(v: views::View) -> Reply {
        Reply { code: v.code, ctype: v.ctype, body: v.body, headers: v.headers, facts: String::new(), follow: None, route: None }
    }
}
pub(crate) fn redis_down(e: &redis::RedisError) -> Reply {
    Reply::error(503, format!("redis unreachable, nothing was queued: {e}"))
}
