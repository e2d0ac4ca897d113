//! Web-hook authentication on raw bytes, constant time: GitHub's HMAC-SHA256
//! and HMAC-SHA1 signatures, Gitea/Forgejo bare-hex HMAC-SHA256, GitLab's
//! token header and `Authorization: Bearer`; the signed body of `POST /build`
//! and `POST /cancel`, bound to what it asks for; the generated token and the
//! fingerprint a configured one is logged as.

use hmac::{Hmac, Mac};
use std::fmt;

/// The headers a request may authenticate with (names lower-cased).
#[derive(Default, Debug, Clone)]
pub struct Credentials<'a> {
    pub hub_sha256: Option<&'a str>,
    pub hub_sha1: Option<&'a str>,
    pub gitea: Option<&'a str>,
    pub gitlab_token: Option<&'a str>,
    pub bearer: Option<&'a str>,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed(&'static str),
    Mismatch(&'static str),
    /// `POST /build` or `/cancel` without a bearer token or an HMAC-SHA256 signature.
    MissingRebuild,
    /// A signed `POST /build` or `/cancel` body that does not say what it is for.
    NotFresh,
    /// A signed body whose `at` is this many seconds off the clock.
    Stale(i64),
    /// A signed body for something else than the request: the field, what
    /// the body says, what the request asks.
    Unbound {
        field: &'static str,
        signed: String,
        asked: String,
    },
}

/// What a `POST /build` or `POST /cancel` asks for, as its path, query and
/// headers say; a signed body must say the same.
#[derive(Debug, Clone, Copy)]
pub struct Intent<'a> {
    /// `build` or `cancel`.
    pub action: &'a str,
    pub repo: &'a str,
    /// `?branch=`; none for the default branch (or with `id`).
    pub branch: Option<&'a str>,
    /// `?id=` (cancel).
    pub id: Option<&'a str>,
    /// `X-Reset: true` (build).
    pub reset: bool,
}

/// How a `POST /build` or `/cancel` was authenticated.
#[derive(Debug, PartialEq, Eq)]
pub enum Authorized {
    Bearer,
    /// By a signed body, accepted once: the hook remembers `digest` (SHA-256
    /// of the body, hex) for [`SIGNED_BODY_TTL`] and refuses it again.
    Signed {
        digest: String,
    },
}

/// How long a signed body's digest is remembered: past its window on both sides.
pub const SIGNED_BODY_TTL: u64 = 2 * REBUILD_WINDOW as u64 + 60;

/// The form a signed body must have, as error messages show it.
const SIGNED_FORM: &str =
    "{\"at\": <unix seconds>, \"action\": \"build\"|\"cancel\", \"repo\": \"<owner/name>\", \"branch\": \"<branch>\"} \
     (\"id\": <n> instead of \"branch\" for one build, neither for the default branch; \"reset\": true with X-Reset; \"env\": {\"NAME\": \"value\"} for a build's parameters)";

/// How far the `at` of a signed `POST /build` body may be from the hook's clock, in seconds.
pub const REBUILD_WINDOW: f64 = 300.0;

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Missing => f.write_str(
                "missing signature: send X-Hub-Signature-256, X-Hub-Signature, X-Gitea-Signature, X-Gitlab-Token or Authorization: Bearer",
            ),
            SignatureError::Malformed(h) => write!(f, "malformed {h} header: expected a hex HMAC digest"),
            SignatureError::Mismatch("Authorization") => f.write_str("Authorization: Bearer is not this hook's token"),
            SignatureError::Mismatch("X-Gitlab-Token") => f.write_str("X-Gitlab-Token is not this hook's token"),
            SignatureError::Mismatch(h) => write!(f, "{h} does not match the body signed with this hook's token"),
            SignatureError::MissingRebuild => {
                write!(f, "missing credentials: send Authorization: Bearer <token>, or X-Hub-Signature-256 over the body {SIGNED_FORM}")
            }
            SignatureError::NotFresh => write!(
                f,
                "a signed POST /build or /cancel body must say what it is for, {SIGNED_FORM}: a signature of anything less could be used for another request"
            ),
            SignatureError::Stale(skew) => write!(
                f,
                "the signed body's \"at\" is {skew} s off the hook's clock (allowed: {REBUILD_WINDOW} s either way): sign a body with the current unix seconds"
            ),
            SignatureError::Unbound { field, signed, asked } => write!(
                f,
                "the signed body's {field:?} is {signed} but the request asks for {asked}: a signed body is good for the one request it names"
            ),
        }
    }
}

/// Checks the strongest credential present; the first one present decides.
pub fn verify(token: &str, body: &[u8], creds: &Credentials) -> Result<(), SignatureError> {
    if let Some(sig) = creds.hub_sha256 {
        let hex = sig.strip_prefix("sha256=").ok_or(SignatureError::Malformed("X-Hub-Signature-256"))?;
        return check_hmac::<Hmac<sha2::Sha256>>(token, body, hex, "X-Hub-Signature-256");
    }
    if let Some(sig) = creds.gitea {
        return check_hmac::<Hmac<sha2::Sha256>>(token, body, sig.trim(), "X-Gitea-Signature");
    }
    if let Some(sig) = creds.hub_sha1 {
        // Bitbucket Server sends its SHA-256 in this header too.
        if let Some(hex) = sig.strip_prefix("sha256=") {
            return check_hmac::<Hmac<sha2::Sha256>>(token, body, hex, "X-Hub-Signature");
        }
        let hex = sig.strip_prefix("sha1=").ok_or(SignatureError::Malformed("X-Hub-Signature"))?;
        return check_hmac::<Hmac<sha1::Sha1>>(token, body, hex, "X-Hub-Signature");
    }
    if let Some(given) = creds.gitlab_token {
        return equal_or(given, token, "X-Gitlab-Token");
    }
    if let Some(given) = creds.bearer {
        return equal_or(given, token, "Authorization");
    }
    Err(SignatureError::Missing)
}

/// `POST /build` and `POST /cancel` authentication: `Authorization: Bearer
/// <token>`, or an HMAC-SHA256 signature (`X-Hub-Signature-256` or
/// `X-Gitea-Signature`) of a body that names the request (action, repository,
/// branch or id, reset) and is within [`REBUILD_WINDOW`] of `now`. A signed
/// body that names less could be used for another request; the caller
/// accepts each [`Authorized::Signed`] digest once.
pub fn verify_intent(token: &str, body: &[u8], creds: &Credentials, now: f64, intent: &Intent) -> Result<Authorized, SignatureError> {
    if let Some(given) = creds.bearer {
        return equal_or(given, token, "Authorization").map(|()| Authorized::Bearer);
    }
    if let Some(sig) = creds.hub_sha256 {
        let hex = sig.strip_prefix("sha256=").ok_or(SignatureError::Malformed("X-Hub-Signature-256"))?;
        check_hmac::<Hmac<sha2::Sha256>>(token, body, hex, "X-Hub-Signature-256")?;
    } else if let Some(sig) = creds.gitea {
        check_hmac::<Hmac<sha2::Sha256>>(token, body, sig.trim(), "X-Gitea-Signature")?;
    } else {
        return Err(SignatureError::MissingRebuild);
    }
    let signed = serde_json::from_slice::<SignedBody>(body).map_err(|_| SignatureError::NotFresh)?;
    if !signed.at.is_finite() {
        return Err(SignatureError::NotFresh);
    }
    let skew = signed.at - now;
    if skew.abs() > REBUILD_WINDOW {
        return Err(SignatureError::Stale(skew.round() as i64));
    }
    signed.names(intent)?;
    use sha2::Digest;
    Ok(Authorized::Signed { digest: sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect() })
}

/// A signed body of `POST /build` or `/cancel`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedBody {
    at: f64,
    action: String,
    repo: String,
    #[serde(default)]
    branch: Option<String>,
    /// A number, or its digits as a string.
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    reset: bool,
    /// `POST /build`'s parameters: checked by `payload::params`, signed
    /// with the rest (so bound to this one request).
    #[serde(default, rename = "env")]
    _env: Option<serde_json::Value>,
}

impl SignedBody {
    /// Whether the body names exactly the request `intent`.
    fn names(&self, intent: &Intent) -> Result<(), SignatureError> {
        let shown = |v: Option<&str>| v.map_or("nothing".to_string(), |s| format!("{s:?}"));
        let id = match &self.id {
            None => None,
            Some(serde_json::Value::Number(n)) if n.is_u64() => Some(n.to_string()),
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(SignatureError::NotFresh),
        };
        let checks: [(&'static str, Option<&str>, Option<&str>); 4] = [
            ("action", Some(&self.action), Some(intent.action)),
            ("repo", Some(&self.repo), Some(intent.repo)),
            ("branch", self.branch.as_deref(), intent.branch),
            ("id", id.as_deref(), intent.id),
        ];
        for (field, signed, asked) in checks {
            if signed != asked {
                return Err(SignatureError::Unbound { field, signed: shown(signed), asked: shown(asked) });
            }
        }
        if self.reset != intent.reset {
            return Err(SignatureError::Unbound { field: "reset", signed: self.reset.to_string(), asked: intent.reset.to_string() });
        }
        Ok(())
    }
}

/// The token of an `Authorization` value `Bearer <token>`, the scheme in any
/// case (RFC 7235).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the log shows of a configured token: the first 8 hex characters of
/// its SHA-256 (`printf %s "$HOOK_TOKEN" | sha256sum | cut -c1-8`).
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn check_hmac<M: Mac + hmac::digest::KeyInit>(token: &str, body: &[u8], hex: &str, header: &'static str) -> Result<(), SignatureError> {
    let expected = decode_hex(hex.trim()).ok_or(SignatureError::Malformed(header))?;
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch(header))
}

fn equal_or(given: &str, token: &str, header: &'static str) -> Result<(), SignatureError> {
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch(header))
    }
}

/// Compares in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.is_empty() {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// HMAC-SHA256 of `body` under `token`, lower-case hex (what senders put in
/// their headers); used by tools and tests that sign.
pub fn sign_sha256(token: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

const TOKEN_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A random 32-character token over `A-Za-z0-9+/`, from the OS's generator.
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    // 64 symbols: the low 6 bits of each byte are uniform.
    Ok(bytes.iter().map(|b| TOKEN_ALPHABET[(b & 63) as usize] as char).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"{\"zen\":\"Design for failure.\"}";

    #[test]
    fn sha256_right_and_wrong() {
        let sig = format!("sha256={}", sign_sha256("secret", BODY));
        let ok = Credentials { hub_sha256: Some(&sig), ..Default::default() };
        assert_eq!(verify("secret", BODY, &ok), Ok(()));
        assert_eq!(verify("other", BODY, &ok), Err(SignatureError::Mismatch("X-Hub-Signature-256")));
        assert_eq!(verify("secret", b"tampered", &ok), Err(SignatureError::Mismatch("X-Hub-Signature-256")));
    }

    #[test]
    fn sha1_known_vector() {
        // printf '{"zen":"Design for failure."}' | openssl dgst -sha1 -hmac secret
        let sig = "sha1=8223c848b549de0f68824373a7f611e4ee129184";
        let creds = Credentials { hub_sha1: Some(sig), ..Default::default() };
        assert_eq!(verify("secret", BODY, &creds), Ok(()));
        assert!(verify("Secret", BODY, &creds).is_err());
    }

    #[test]
    fn gitea_bare_hex_and_gitlab_token() {
        let hex = sign_sha256("tok", BODY);
        let gitea = Credentials { gitea: Some(&hex), ..Default::default() };
        assert_eq!(verify("tok", BODY, &gitea), Ok(()));
        let gitlab = Credentials { gitlab_token: Some("tok"), ..Default::default() };
        assert_eq!(verify("tok", BODY, &gitlab), Ok(()));
        assert!(verify("tok2", BODY, &gitlab).is_err());
    }

    #[test]
    fn missing_and_malformed() {
        assert_eq!(verify("t", BODY, &Credentials::default()), Err(SignatureError::Missing));
        let bad = Credentials { hub_sha256: Some("sha256=zz"), ..Default::default() };
        assert_eq!(verify("t", BODY, &bad), Err(SignatureError::Malformed("X-Hub-Signature-256")));
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        let table = [
            ("Bearer tok", Some("tok")),
            ("bearer tok", Some("tok")),
            ("BEARER  tok ", Some("tok")),
            ("Basic dXNlcjpwdw==", None),
            ("Bearertok", None),
            ("tok", None),
        ];
        for (value, want) in table {
            assert_eq!(bearer(value), want, "{value:?}");
        }
    }

    #[test]
    fn rebuild_needs_a_bearer_or_a_signed_body_naming_the_request() {
        let now = 1_764_230_400.0;
        let signed = |body: &str| format!("sha256={}", sign_sha256("tok", body.as_bytes()));
        fn hub(sig: &str) -> Credentials<'_> {
            Credentials { hub_sha256: Some(sig), ..Default::default() }
        }
        let want = Intent { action: "build", repo: "acme/a", branch: Some("main"), id: None, reset: false };
        let bearer_ok = Credentials { bearer: Some("tok"), ..Default::default() };
        assert_eq!(verify_intent("tok", b"", &bearer_ok, now, &want), Ok(Authorized::Bearer));
        let fresh = r#"{"at": 1764230460, "action": "build", "repo": "acme/a", "branch": "main"}"#;
        // printf %s '{"at": 1764230460, "action": "build", "repo": "acme/a", "branch": "main"}' | sha256sum
        let digest = "936927dcb01f8fd42838e16c8279354766f33f87fee9b0645ebe4ab22da12908".to_string();
        assert_eq!(verify_intent("tok", fresh.as_bytes(), &hub(&signed(fresh)), now, &want), Ok(Authorized::Signed { digest }));
        let gitea = sign_sha256("tok", fresh.as_bytes());
        let gitea = Credentials { gitea: Some(&gitea), ..Default::default() };
        assert!(verify_intent("tok", fresh.as_bytes(), &gitea, now, &want).is_ok());
        let unbound = |field, signed: &str, asked: &str| SignatureError::Unbound { field, signed: signed.into(), asked: asked.into() };
        let table: &[(&str, SignatureError)] = &[
            ("", SignatureError::NotFresh),
            ("{}", SignatureError::NotFresh),
            (r#"{"at": 1764230400}"#, SignatureError::NotFresh),
            (r#"{"at": "1764230400", "action": "build", "repo": "acme/a", "branch": "main"}"#, SignatureError::NotFresh),
            (r#"{"at": 1764230400, "action": "build", "repo": "acme/a", "branch": "main", "extra": 1}"#, SignatureError::NotFresh),
            (r#"{"at": 1764226800, "action": "build", "repo": "acme/a", "branch": "main"}"#, SignatureError::Stale(-3600)),
            (r#"{"at": 1764230701, "action": "build", "repo": "acme/a", "branch": "main"}"#, SignatureError::Stale(301)),
            (r#"{"at": 1764230400, "action": "cancel", "repo": "acme/a", "branch": "main"}"#, unbound("action", "\"cancel\"", "\"build\"")),
            (r#"{"at": 1764230400, "action": "build", "repo": "acme/b", "branch": "main"}"#, unbound("repo", "\"acme/b\"", "\"acme/a\"")),
            (r#"{"at": 1764230400, "action": "build", "repo": "acme/a"}"#, unbound("branch", "nothing", "\"main\"")),
            (r#"{"at": 1764230400, "action": "build", "repo": "acme/a", "branch": "dev"}"#, unbound("branch", "\"dev\"", "\"main\"")),
            (r#"{"at": 1764230400, "action": "build", "repo": "acme/a", "branch": "main", "id": 7}"#, unbound("id", "\"7\"", "nothing")),
            (
                r#"{"at": 1764230400, "action": "build", "repo": "acme/a", "branch": "main", "reset": true}"#,
                unbound("reset", "true", "false"),
            ),
        ];
        for (body, want_err) in table {
            assert_eq!(verify_intent("tok", body.as_bytes(), &hub(&signed(body)), now, &want).as_ref(), Err(want_err), "{body:?}");
        }
        let by_id = Intent { action: "cancel", repo: "acme/a", branch: None, id: Some("7"), reset: false };
        for body in [
            r#"{"at": 1764230400, "action": "cancel", "repo": "acme/a", "id": 7}"#,
            r#"{"at": 1764230400, "action": "cancel", "repo": "acme/a", "id": "7"}"#,
        ] {
            assert!(verify_intent("tok", body.as_bytes(), &hub(&signed(body)), now, &by_id).is_ok(), "{body}");
        }
        let other_key = format!("sha256={}", sign_sha256("other", fresh.as_bytes()));
        assert_eq!(
            verify_intent("tok", fresh.as_bytes(), &hub(&other_key), now, &want),
            Err(SignatureError::Mismatch("X-Hub-Signature-256"))
        );
        let gitlab = Credentials { gitlab_token: Some("tok"), ..Default::default() };
        assert_eq!(verify_intent("tok", b"", &gitlab, now, &want), Err(SignatureError::MissingRebuild));
        let wrong_bearer = Credentials { bearer: Some("nope"), ..Default::default() };
        assert_eq!(
            verify_intent("tok", b"", &wrong_bearer, now, &want).unwrap_err().to_string(),
            "Authorization: Bearer is not this hook's token"
        );
    }

    #[test]
    fn fingerprint_is_the_start_of_sha256() {
        // printf %s secret | sha256sum
        assert_eq!(fingerprint("secret"), "2bb80d53");
        assert_eq!(fingerprint(""), "e3b0c442");
    }

    #[test]
    fn token_shape() {
        let t = generate_token().unwrap();
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| TOKEN_ALPHABET.contains(&b)));
    }
}
