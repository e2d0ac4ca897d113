//! The hook's pages and badges: reads build records ([`record`]), renders
//! them ([`pages`], [`badge`]); [`auth`] guards reads with HOOK_READ_TOKEN.

pub mod auth;
pub mod badge;
pub mod html;
pub mod pages;
pub mod terminal;

use crate::store::record;
use badge::BadgeState;

use redis::{Connection, RedisResult};

/// An answer of this module: code, content type, body, extra headers.
pub struct View {
    pub code: u16,
    pub ctype: &'static str,
    pub body: String,
    pub headers: Vec<(&'static str, String)>,
}

pub(crate) const HTML: &str = "text/html; charset=utf-8";
/// A running build's page shows at most this many of its latest lines (the
/// follow stream brings the rest).
const LIVE_LINES_SHOWN: usize = 2000;

pub(crate) fn html(code: u16, body: String) -> View {
    let mut headers = vec![("Cache-Control", "no-store".to_string())];
    headers.extend(page_headers());
    View { code, ctype: HTML, body, headers }
}

/// What every page says to the browser: nothing from elsewhere, the one
/// style block and the one script by their hashes, never in a frame, no
/// sniffing, no referrer outside.
pub(crate) fn page_headers() -> Vec<(&'static str, String)> {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let csp = CSP.get_or_init(|| {
        format!(
            "default-src 'none'; style-src '{}'; script-src '{}' '{}'; connect-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
            csp_hash(pages::stylesheet()),
            csp_hash(pages::FOLLOW_SCRIPT),
            csp_hash(pages::REFRESH_SCRIPT)
        )
    });
    vec![
        ("Content-Security-Policy", csp.clone()),
        ("X-Frame-Options", "DENY".into()),
        ("X-Content-Type-Options", "nosniff".into()),
        ("Referrer-Policy", "same-origin".into()),
    ]
}

/// `sha256-<base64>` of an inline block, as CSP names it.
fn csp_hash(text: &str) -> String {
    use sha2::Digest;
    format!("sha256-{}", base64(&sha2::Sha256::digest(text.as_bytes())))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A listing's stamp: what its refresh compares. It changes when a listed
/// branch gets a new build or its latest build changes state; `None` when
/// no listed build is queued or running (the page then polls nothing).
pub fn stamp<'a>(latest: impl IntoIterator<Item = &'a record::BuildRecord>) -> Option<String> {
    let mut crc = crc32fast::Hasher::new();
    let mut active = false;
    for r in latest {
        active |= r.active();
        crc.update(format!("{} {} {}\n", r.branch, r.id, r.state).as_bytes());
    }
    active.then(|| format!("{:08x}", crc.finalize()))
}

/// The pulse of a listing page: the URL it polls and its stamp, while active.
fn pulse_of<'a>(url: String, latest: impl IntoIterator<Item = &'a record::BuildRecord>) -> Option<(String, String)> {
    stamp(latest).map(|s| (url, s))
}

/// `GET /` for a browser: every listed repository and branch, latest build
/// each. `csrf`: an acting viewer's token.
pub fn dashboard(conn: &mut Connection, csrf: Option<&str>) -> RedisResult<View> {
    let repos = record::repos(conn)?;
    let pulse = pulse_of("/pulse".into(), repos.iter().flat_map(|(_, b)| b));
    Ok(html(200, pages::dashboard(&repos, &pages::Listing { csrf, pulse })))
}

/// `GET /repo/<repo>`: each listed branch's history.
pub fn repository(conn: &mut Connection, repo: &str, limit: usize, csrf: Option<&str>) -> RedisResult<View> {
    let branches = record::repository(conn, repo, limit)?;
    if branches.is_empty() && !record::branches_known(conn, repo)? {
        return Ok(html(404, pages::not_found(&format!("{repo} was never pushed: point a web-hook at this server and push."))));
    }
    let url = format!("/pulse?repo={}", pages::url_part(repo));
    let pulse = pulse_of(url, branches.iter().filter_map(|(_, b)| b.first()));
    Ok(html(200, pages::repository(repo, &branches, &pages::Listing { csrf, pulse })))
}

/// `GET /pulse[?repo=R]`: what the listing pages poll while a build is
/// active: `{"active": bool, "stamp": "…"}` (stamp `""` when idle). Reads
/// the listing's fields only, never a log.
pub fn pulse(conn: &mut Connection, repo: Option<&str>) -> RedisResult<serde_json::Value> {
    let latest: Vec<record::BuildRecord> = match repo {
        Some(repo) => record::repo_listing(conn, repo)?,
        None => record::repos(conn)?.into_iter().flat_map(|(_, b)| b).collect(),
    };
    let stamp = stamp(&latest);
    Ok(serde_json::json!({ "active": stamp.is_some(), "stamp": stamp.unwrap_or_default() }))
}

/// `GET /builds/<id>`: the build's page; its log so far (a running build's
/// live lines come from `/status`'s text).
pub fn build(conn: &mut Connection, id: &str, csrf: Option<&str>) -> RedisResult<View> {
    let Some(record) = record::record_by_id(conn, id)? else {
        return Ok(html(404, pages::not_found(&format!("There is no build {id}."))));
    };
    let lines: Vec<String> =
        if record.active() { crate::store::stream::lines_so_far(conn, id, LIVE_LINES_SHOWN)? } else { record.log.clone() };
    let follow = format!("/status/{}?follow=1&id={}", pages::url_part(&record.repo), pages::url_part(id));
    Ok(html(200, pages::build(&record, &lines, &follow, csrf)))
}

/// `GET /badge/<repo>.svg[?branch=B]`: the latest build's state, public.
/// `if_none_match`: the client's cached ETag (304 when unchanged).
pub fn badge(conn: &mut Connection, repo: &str, branch: Option<&str>, if_none_match: Option<&str>) -> RedisResult<View> {
    let state = match record::read(conn, repo, branch)? {
        Ok(view) => BadgeState::of(Some(&view.record.state)),
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
    fn base64_matches_known_vectors() {
        // RFC 4648, section 10.
        for (plain, coded) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
    }
}
