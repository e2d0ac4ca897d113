//! Who may read build logs and records: no HOOK_READ_TOKEN, the token as a
//! bearer, or the cookie the login form sets.

use super::{html, pages, View, HTML};
use crate::signature::{bearer, constant_time_eq};
use hmac::{Hmac, Mac};

/// The cookie the login form sets: an HMAC of a fixed text under the read
/// token, so the cookie is not the token itself and changes with it.
const COOKIE: &str = "ci_read";

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
/// `secure`: the hook is reached over https (CI_PUBLIC_URL says so, or the
/// proxy in front sends `X-Forwarded-Proto: https`): the cookie is `Secure`.
pub fn login(read_token: Option<&str>, body: &[u8], secure: bool) -> View {
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
            (
                "Set-Cookie",
                format!(
                    "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000{}",
                    cookie_value(token),
                    if secure { "; Secure" } else { "" }
                ),
            ),
        ],
    }
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
        let set = login(Some("s3cret"), b"token=s3cret", false);
        assert_eq!(set.code, 303);
        let cookie = set.headers.iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1.split(';').next().unwrap().to_string();
        assert!(!cookie.contains("s3cret"), "the cookie is not the token: {cookie}");
        assert!(may_read(Some("s3cret"), None, Some(&format!("a=b; {cookie}"))));
        assert!(!may_read(Some("other"), None, Some(&cookie)), "a new token invalidates old cookies");
        assert_eq!(login(Some("s3cret"), b"token=nope", false).code, 403);
        let cookie =
            |secure| login(Some("s3cret"), b"token=s3cret", secure).headers.into_iter().find(|(k, _)| *k == "Set-Cookie").unwrap().1;
        assert!(cookie(true).ends_with("; Secure") && !cookie(false).contains("Secure"));
    }
}
