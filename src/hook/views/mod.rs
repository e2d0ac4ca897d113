//! The hook's pages and badges: reads build records (`status`), renders them
//! (`pages`, `badge`), and guards reads with HOOK_READ_TOKEN (a bearer token,
//! or a cookie the login form sets). `http` routes requests here.

pub mod badge;
pub mod pages;

use crate::signature::{bearer, constant_time_eq};
use crate::store::record;
use badge::BadgeState;

use hmac::{Hmac, Mac};
use redis::{Connection, RedisResult};
use serde_json::Value;

/// An answer of this module: code, content type, body, extra headers.
pub struct View {
    pub code: u16,
    pub ctype: &'static str,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

const HTML: &str = "text/html; charset=utf-8";
/// A running build's page shows at most this many of its latest lines (the
/// follow stream brings the rest).
const LIVE_LINES_SHOWN: usize = 2000;
/// The cookie the login form sets: an HMAC of a fixed text under the read
/// token, so the cookie is not the token itself and changes with it.
const COOKIE: &str = "ci_read";

fn html(code: u16, body: String) -> View {
    View { code, ctype: HTML, body, headers: vec![("Cache-Control", "no-store".into())] }
}

fn cookie_value(read_token: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(read_token.as_bytes()).expect("any key length");
    mac.update(b"ci-backend read cookie v1");
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request may read logs: no HOOK_READ_TOKEN, or the right bearer
/// token, or the cookie of the login form.
pub fn may_read(read_token: Option<&str>, authorization: Option<&str>, cookies: Option<&str>) -> bool {
    let Some(token) = read_token else { return true };
    if authorization.and_then(bearer).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
        return true;
    }
    let want = cookie_value(token);
    cookies
        .unwrap_or("")
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .any(|(k, v)| k == COOKIE && constant_time_eq(v.as_bytes(), want.as_bytes()))
}

/// The refusal of a read without the token: the login form for a browser,
/// a JSON sentence for a program.
pub fn refused(wants_html: bool) -> View {
    if wants_html {
        return html(401, pages::login(None));
    }
    let why = "build logs on this server need the read token: send Authorization: Bearer <HOOK_READ_TOKEN>";
    View {
        code: 401,
        ctype: "application/json",
        body: format!("{}\n", serde_json::json!({ "error": why })),
        headers: vec![("WWW-Authenticate", "Bearer realm=\"ci-backend\"".into())],
    }
}

/// `POST /login` with a form body `token=…`: the cookie and back to `/`, or
/// the form again.
pub fn login(read_token: Option<&str>, body: &[u8]) -> View {
    let Some(token) = read_token else {
        return View { code: 303, ctype: HTML, body: String::new(), headers: vec![("Location", "/".into())] };
    };
    let given =
        body.split(|b| *b == b'&').find_map(|kv| kv.strip_prefix(b"token=")).and_then(crate::payload::percent_decode).unwrap_or_default();
    if !constant_time_eq(&given, token.as_bytes()) {
        return html(403, pages::login(Some("That is not the read token.")));
    }
    View {
        code: 303,
        ctype: HTML,
        body: String::new(),
        headers: vec![
            ("Location", "/".into()),
            ("Set-Cookie", format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000", cookie_value(token))),
        ],
    }
}

/// `GET /` for a browser: every repository and branch, latest build each.
pub fn dashboard(conn: &mut Connection) -> RedisResult<View> {
    Ok(html(200, pages::dashboard(&record::repos(conn)?)))
}

/// `GET /repo/<repo>`: each branch's history.
pub fn repository(conn: &mut Connection, repo: &str, limit: usize) -> RedisResult<View> {
    let names = record::branches(conn, repo)?;
    if names.is_empty() {
        return Ok(html(404, pages::not_found(&format!("{repo} was never pushed: point a web-hook at this server and push."))));
    }
    let mut branches = Vec::new();
    for branch in names {
        let history = record::history(conn, repo, Some(&branch), limit)?.unwrap_or_default();
        branches.push((branch, history));
    }
    Ok(html(200, pages::repository(repo, &branches)))
}

/// `GET /builds/<id>`: the build's page; its log so far (a running build's
/// live lines come from `/status`'s text).
pub fn build(conn: &mut Connection, id: &str) -> RedisResult<View> {
    let Some(record) = record::record_by_id(conn, id)? else {
        return Ok(html(404, pages::not_found(&format!("There is no build {id}."))));
    };
    let repo = record.get("repo").and_then(Value::as_str).unwrap_or("").to_string();
    let running = matches!(record.get("state").and_then(Value::as_str), Some("queued" | "running"));
    let lines: Vec<String> = if running {
        crate::store::stream::lines_so_far(conn, id, LIVE_LINES_SHOWN)?
    } else {
        record
            .get("log")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|l| l.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let follow = format!("/status/{}?follow=1&id={}", pages::url_part(&repo), pages::url_part(id));
    Ok(html(200, pages::build(&record, &lines, &follow)))
}

/// `GET /badge/<repo>.svg[?branch=B]`: the latest build's state, public.
/// `if_none_match`: the client's cached ETag (304 when unchanged).
pub fn badge(conn: &mut Connection, repo: &str, branch: Option<&str>, if_none_match: Option<&str>) -> RedisResult<View> {
    let state = match record::read(conn, repo, branch)? {
        Ok(view) => BadgeState::of(view.json.get("state").and_then(Value::as_str)),
        Err(_) => BadgeState::Unknown,
    };
    let svg = badge::svg("build", state);
    let etag = badge::etag(&svg);
    let headers = vec![("Cache-Control", "no-cache".to_string()), ("ETag", etag.clone())];
    if if_none_match.is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag)) {
        return Ok(View { code: 304, ctype: "image/svg+xml", body: String::new(), headers });
    }
    Ok(View { code: 200, ctype: "image/svg+xml", body: svg, headers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_token_opens_by_bearer_or_cookie() {
        assert!(may_read(None, None, None), "open without HOOK_READ_TOKEN");
        assert!(!may_read(Some("s3cret"), None, None));
        assert!(may_read(Some("s3cret"), Some("Bearer s3cret"), None));
        assert!(!may_read(Some("s3cret"), Some("Bearer s3cre"), None));
        let set = login(Some("s3cret"), b"token=s3cret");
        assert_eq!(set.code, 303);
        let cookie = set.headers.iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1.split(';').next().unwrap().to_string();
        assert!(!cookie.contains("s3cret"), "the cookie is not the token: {cookie}");
        assert!(may_read(Some("s3cret"), None, Some(&format!("a=b; {cookie}"))));
        assert!(!may_read(Some("other"), None, Some(&cookie)), "a new token invalidates old cookies");
        assert_eq!(login(Some("s3cret"), b"token=nope").code, 403);
    }
}
