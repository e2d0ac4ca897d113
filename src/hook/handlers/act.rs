//! `POST /act/build/<repo>?branch=B` and `POST /act/cancel/<repo>?id=N`: the
//! dashboard's Rebuild and Cancel forms. Only an acting session (a login
//! with the web-hook token) whose form carries its CSRF token may post
//! ([`auth::check_form`]); then the request is the one `POST /build` or
//! `POST /cancel` answers for that token, and the browser is sent to the
//! build's page.

use super::{build, cancel, wants_html};
use crate::hook::reply::Reply;
use crate::hook::state::Hook;
use crate::hook::views::{self, auth, pages};
use crate::hook::wire::Request;
use crate::store::conn::Redis;
use tiny_http::{Header, Method};

/// What a form asks for.
#[derive(Clone, Copy)]
pub(crate) enum Act {
    Rebuild,
    Cancel,
}

pub(crate) fn post_act(hook: &Hook, redis: &mut Redis, req: &Request, act: Act, raw_repo: &str, query: &str) -> Reply {
    if let Err(why) = auth::check_form(&hook.token, req.header("Cookie"), &req.body) {
        return refusal(req, 403, why);
    }
    // The session proved it holds the web-hook token: the same request a
    // program sends with it as a bearer, and no body.
    let bearer = Header::from_bytes("Authorization", format!("Bearer {}", hook.token)).expect("a token is a header value");
    let inner = Request {
        method: Method::Post,
        url: req.url.clone(),
        version: req.version.clone(),
        headers: vec![bearer],
        body: Vec::new(),
        keep_alive: false,
    };
    let reply = match act {
        Act::Rebuild => build::post_build(hook, redis, &inner, raw_repo, query),
        Act::Cancel => cancel::post_cancel(hook, redis, &inner, raw_repo, query),
    };
    let answer: serde_json::Value = serde_json::from_str(&reply.body).unwrap_or_default();
    let id = answer["id"].as_str().filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    match id {
        Some(id) if (200..300).contains(&reply.code) => {
            let mut to = Reply { code: 303, headers: vec![("Location", format!("/builds/{id}"))], ..Reply::text(303, String::new()) };
            to.facts = format!(" by=page{}", reply.facts);
            to
        }
        _ => {
            let why = answer["error"].as_str().or(answer["reason"].as_str()).unwrap_or("nothing was done").to_string();
            let mut r = refusal(req, reply.code, &why);
            r.facts = format!(" by=page{}", reply.facts);
            r
        }
    }
}

/// A refusal or failure with its reason: a page for a browser, JSON else.
fn refusal(req: &Request, code: u16, why: &str) -> Reply {
    if wants_html(req) {
        let mut r: Reply = views::html(code, pages::message("refused", why)).into();
        r.facts = format!(" error={}", crate::logging::quote(why));
        r
    } else {
        Reply::error(code, why)
    }
}
