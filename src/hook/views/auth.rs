//! Who may read build logs and records, and who may act from the pages: no
//! HOOK_READ_TOKEN, the token as a bearer, or the cookie the login form sets
//! for it; the web-hook token at the login form sets an acting session
//! (it reads too), whose forms carry a CSRF token bound to it.

use super::{html, pages, View, HTML};
use crate::signature::{bearer, constant_time_eq};
use hmac::{Hmac, Mac};

/// The cookie the login form sets: an HMAC of a fixed text under the read
/// token, so the cookie is not the token itself and changes with it.
const COOKIE: &str = "ci_read";
/// The acting session's cookie: `<nonce>.<HMAC of the nonce under the
/// web-hook token>`: random per login, not the token, void when it changes.
const ACT_COOKIE: &str = "ci_act";

fn mac_hex(key: &str, text: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(text);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn cookie_value(read_token: &str) -> String {
    mac_hex(read_token, b"ci-backend read cookie v1")
}

fn act_mac(hook_token: &str, nonce: &str) -> String {
    mac_hex(hook_token, format!("ci-backend act cookie v1 {nonce}").as_bytes())
}

/// The CSRF token of the session of `nonce`: its forms carry it, and a POST
/// from its cookie without it is refused.
fn csrf_of(hook_token: &str, nonce: &str) -> String {
    mac_hex(hook_token, format!("ci-backend csrf v1 {nonce}").as_bytes())
}

/// The values of the cookies called `name`.
fn cookies_named<'a>(cookies: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a str> {
    cookies.unwrap_or("").split(';').filter_map(|c| c.trim().split_once('=')).filter(move |(k, _)| *k == name).map(|(_, v)| v)
}

/// The acting session of a request's cookies: its CSRF token, when its
/// cookie was set by a login with the web-hook token.
pub fn acting(hook_token: &str, cookies: Option<&str>) -> Option<String> {
    cookies_named(cookies, ACT_COOKIE).find_map(|v| {
        let (nonce, mac) = v.split_once('.')?;
        let ok = nonce.len() == 32 && constant_time_eq(mac.as_bytes(), act_mac(hook_token, nonce).as_bytes());
        ok.then(|| csrf_of(hook_token, nonce))
    })
}

/// Whether a request may read logs: no HOOK_READ_TOKEN, or the right bearer
/// token, or the cookie of the login form (read or acting).
pub fn may_read(read_token: Option<&str>, hook_token: &str, authorization: Option<&str>, cookies: Option<&str>) -> bool {
    let Some(token) = read_token else { return true };
    if authorization.and_then(bearer).is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes())) {
        return true;
    }
    let want = cookie_value(token);
    cookies_named(cookies, COOKIE).any(|v| constant_time_eq(v.as_bytes(), want.as_bytes())) || acting(hook_token, cookies).is_some()
}

/// Why a form's POST is refused (403), or `Ok` when it comes from an acting
/// session and carries that session's CSRF token (`csrf=` in the form body).
pub fn check_form(hook_token: &str, cookies: Option<&str>, body: &[u8]) -> Result<(), &'static str> {
    let Some(want) = acting(hook_token, cookies) else {
        return Err("rebuilding and canceling from the pages needs a sign-in with the web-hook token at /login (a read-token session or none may not)");
    };
    let given = form_field(body, "csrf").unwrap_or_default();
    if given.is_empty() {
        return Err("the form carries no CSRF token: use the buttons of a page, reloaded");
    }
    if !constant_time_eq(&given, want.as_bytes()) {
        return Err("the form's CSRF token is not this session's: reload the page and try again");
    }
    Ok(())
}

/// A field of a form body (`a=1&b=2`), percent-decoded.
fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    let prefix = format!("{name}=");
    body.split(|b| *b == b'&').find_map(|kv| kv.strip_prefix(prefix.as_bytes())).and_then(|v| {
        let v: Vec<u8> = v.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
        crate::payload::percent_decode(&v)
    })
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

/// `POST /login` with a form body `token=…`: the web-hook token sets an
/// acting session, the read token a reading one; then back to `/`. Another
/// token: the form again (403). Without HOOK_READ_TOKEN an empty token
/// just goes back to `/` (reads are open).
/// `secure`: the hook is reached over https (CI_PUBLIC_URL says so, or the
/// proxy in front sends `X-Forwarded-Proto: https`): the cookie is `Secure`.
pub fn login(read_token: Option<&str>, hook_token: &str, body: &[u8], secure: bool) -> View {
    let given = form_field(body, "token").unwrap_or_default();
    let cookie = if constant_time_eq(&given, hook_token.as_bytes()) {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            return html(503, pages::login(Some("The system's random generator failed: try again.")));
        }
        let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{ACT_COOKIE}={nonce}.{}", act_mac(hook_token, &nonce))
    } else if let Some(token) = read_token.filter(|t| constant_time_eq(&given, t.as_bytes())) {
        format!("{COOKIE}={}", cookie_value(token))
    } else if read_token.is_none() && given.is_empty() {
        return View { code: 303, ctype: HTML, body: String::new(), headers: vec![("Location", "/".into())] };
    } else {
        return html(403, pages::login(Some("That is neither the read token nor the web-hook token.")));
    };
    View {
        code: 303,
        ctype: HTML,
        body: String::new(),
        headers: vec![
            ("Location", "/".into()),
            ("Set-Cookie", format!("{cookie}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{}", if secure { "; Secure" } else { "" })),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: &str = "hook-token";

    fn set_cookie(v: &View) -> String {
        v.headers.iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1.split(';').next().unwrap().to_string()
    }

    #[test]
    fn the_read_token_opens_by_bearer_or_cookie() {
        assert!(may_read(None, HOOK, None, None), "open without HOOK_READ_TOKEN");
        assert!(!may_read(Some("s3cret"), HOOK, None, None));
        assert!(may_read(Some("s3cret"), HOOK, Some("Bearer s3cret"), None));
        assert!(!may_read(Some("s3cret"), HOOK, Some("Bearer s3cre"), None));
        let set = login(Some("s3cret"), HOOK, b"token=s3cret", false);
        assert_eq!(set.code, 303);
        let cookie = set_cookie(&set);
        assert!(!cookie.contains("s3cret"), "the cookie is not the token: {cookie}");
        assert!(may_read(Some("s3cret"), HOOK, None, Some(&format!("a=b; {cookie}"))));
        assert!(!may_read(Some("other"), HOOK, None, Some(&cookie)), "a new token invalidates old cookies");
        assert_eq!(acting(HOOK, Some(&cookie)), None, "a read session does not act");
        assert_eq!(login(Some("s3cret"), HOOK, b"token=nope", false).code, 403);
        let cookie =
            |secure| login(Some("s3cret"), HOOK, b"token=s3cret", secure).headers.into_iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1;
        assert!(cookie(true).ends_with("; Secure") && !cookie(false).contains("Secure"));
    }

    #[test]
    fn the_web_hook_token_sets_an_acting_session_bound_to_its_csrf_token() {
        let a = set_cookie(&login(Some("s3cret"), HOOK, b"token=hook-token", false));
        let b = set_cookie(&login(None, HOOK, b"token=hook-token", false));
        assert!(a.starts_with("ci_act=") && !a.contains(HOOK), "{a}");
        assert!(may_read(Some("s3cret"), HOOK, None, Some(&a)), "an acting session reads");
        let (csrf_a, csrf_b) = (acting(HOOK, Some(&a)).unwrap(), acting(HOOK, Some(&b)).unwrap());
        assert_ne!(csrf_a, csrf_b, "each session has its own CSRF token");
        assert_eq!(check_form(HOOK, Some(&a), format!("csrf={csrf_a}").as_bytes()), Ok(()));
        assert!(check_form(HOOK, Some(&a), format!("csrf={csrf_b}").as_bytes()).unwrap_err().contains("not this session's"));
        assert!(check_form(HOOK, Some(&a), b"").unwrap_err().contains("no CSRF token"));
        assert!(check_form("new-token", Some(&a), format!("csrf={csrf_a}").as_bytes()).unwrap_err().contains("web-hook token"));
        let forged = format!("ci_act={}.{}", "0".repeat(32), "f".repeat(64));
        assert_eq!(acting(HOOK, Some(&forged)), None);
        assert!(check_form(HOOK, None, format!("csrf={csrf_a}").as_bytes()).is_err(), "no cookie, no action");
    }
}
