//! The handlers of the hook's routes, one file per verb, and what they share:
//! the query string, the repository and branch of a path, content
//! negotiation, the sender's credentials.

pub(crate) mod build;
pub(crate) mod cancel;
pub(crate) mod follow;
pub(crate) mod history;
pub(crate) mod push;
pub(crate) mod status;

use crate::hook::reply::Reply;
use crate::hook::wire::Request;
use crate::payload;
use crate::signature::{self, Credentials};

pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| payload::percent_decode(v.as_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned()))?
    })
}
/// The repository of a `/status/<repo>` or `/build/<repo>` path, and the
/// `?branch=`, both under the names rules of [`payload`].
/// The error is the answer itself, made once per request: not worth a box.
#[allow(clippy::result_large_err)]
pub(crate) fn repo_and_branch(raw_repo: &str, query: &str) -> Result<(String, Option<String>), Reply> {
    let bytes = payload::percent_decode(raw_repo.replace('+', "%2B").as_bytes());
    let Some(repo) = bytes.and_then(|b| String::from_utf8(b).ok()) else {
        return Err(Reply::error(400, "bad repository name in path: expected percent-encoded UTF-8"));
    };
    payload::check_repo(&repo).map_err(|e| Reply::error(400, e.0))?;
    let branch = query_param(query, "branch");
    if let Some(b) = &branch {
        payload::check_branch(b).map_err(|e| Reply::error(400, e.0))?;
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
