//! The handlers of the hook's routes, one file per verb, and what they share:
//! the query string, the repository and branch of a path, content
//! negotiation, the sender's credentials.

pub(crate) mod act;
pub(crate) mod build;
pub(crate) mod cancel;
pub(crate) mod follow;
pub(crate) mod history;
pub(crate) mod push;
pub(crate) mod status;

use crate::hook::reply::redis_down;
use crate::hook::reply::Reply;
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::payload;
use crate::signature::{self, Authorized, Credentials, Intent, SIGNED_BODY_TTL};
use crate::store::conn::Redis;
use crate::store::signed;

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| payload::percent_decode(v.as_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned()))?
    })
}

/// A repository or branch in a path or query that breaks the names rules:
/// answered 400 with the reason.
pub(crate) struct BadName(String);

impl From<BadName> for Reply {
    fn from(bad: BadName) -> Reply {
        Reply::error(400, bad.0)
    }
}

/// The repository of a `/status/<repo>` or `/build/<repo>` path, and the
/// `?branch=`, both under the names rules of [`payload`].
pub(crate) fn repo_and_branch(raw_repo: &str, query: &str) -> Result<(String, Option<String>), BadName> {
    let bytes = payload::percent_decode(raw_repo.replace('+', "%2B").as_bytes());
    let Some(repo) = bytes.and_then(|b| String::from_utf8(b).ok()) else {
        return Err(BadName("bad repository name in path: expected percent-encoded UTF-8".into()));
    };
    payload::check_repo(&repo).map_err(|e| BadName(e.0))?;
    let branch = query_param(query, "branch");
    if let Some(b) = &branch {
        payload::check_branch(b).map_err(|e| BadName(e.0))?;
    }
    Ok((repo, branch))
}

pub(crate) fn wants_json(req: &Request) -> bool {
    req.header("Accept").is_some_and(|a| a.contains("application/json"))
}

pub(crate) fn wants_html(req: &Request) -> bool {
    req.header("Accept").is_some_and(|a| a.contains("text/html"))
}

pub(crate) fn credentials(req: &Request) -> Credentials<'_> {
    Credentials {
        hub_sha256: req.header("X-Hub-Signature-256"),
        hub_sha1: req.header("X-Hub-Signature"),
        gitea: req.header("X-Gitea-Signature").or_else(|| req.header("X-Forgejo-Signature")),
        gitlab_token: req.header("X-Gitlab-Token"),
        bearer: req.header("Authorization").and_then(signature::bearer),
    }
}

/// Authenticates a `POST /build` or `/cancel`: the bearer token, or a signed
/// body naming exactly `intent`, used for the first time. The refusal to
/// send, if any.
pub(crate) fn refusal(hook: &Hook, redis: &mut Redis, req: &Request, intent: &Intent) -> Option<Reply> {
    authorize(hook, redis, req, intent).err().map(|refused| *refused)
}

/// [`refusal`], telling how the request was authenticated when it was.
pub(crate) fn authorize(hook: &Hook, redis: &mut Redis, req: &Request, intent: &Intent) -> Result<Authorized, Box<Reply>> {
    let authorized = match signature::verify_intent(&hook.token, &req.body, &credentials(req), crate::unix_now(), intent) {
        Ok(a) => a,
        Err(e) => return Err(Box::new(Reply::error(403, e.to_string()))),
    };
    let Authorized::Signed { digest } = &authorized else { return Ok(authorized) };
    match redis.run_again(|c| signed::first_use(c, digest, SIGNED_BODY_TTL)) {
        Ok(true) => Ok(authorized),
        Ok(false) => Err(Box::new(Reply::error(
            403,
            "this signed body was used already: each is good for one request; sign a new one with the current unix seconds",
        ))),
        Err(e) => Err(Box::new(redis_down(&e))),
    }
}
