//! GitHub (and GitHub Enterprise) deliveries: `X-GitHub-Event`.

use super::{check_json, from_json, head_message, normalize, Delivery, PayloadError, RawCommit, RawPush};
use serde::Deserialize;
use std::borrow::Cow;

/// The fields of a GitHub or Gitea push body that a build needs.
#[derive(Deserialize)]
pub(super) struct Body<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    /// Kept loose: a non-boolean is simply not a deletion.
    deleted: Option<serde_json::Value>,
    #[serde(borrow)]
    repository: Option<Repository<'a>>,
    #[serde(borrow)]
    head_commit: Option<RawCommit<'a>>,
    #[serde(borrow)]
    commits: Option<Vec<RawCommit<'a>>>,
}

#[derive(Deserialize)]
struct Repository<'a> {
    #[serde(borrow)]
    full_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    clone_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    default_branch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    html_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statuses_url: Option<Cow<'a, str>>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Delivery, PayloadError> {
    match event {
        "push" => push(&from_json(body)?, "github"),
        "ping" => check_json(body).map(|_| Delivery::NoBuild("ping: hook is set up".into())),
        other => check_json(body).map(|_| Delivery::NoBuild(format!("event {other:?} needs no build: only pushes are built"))),
    }
}

/// A body with no event header is built when it is shaped like a push.
pub(super) fn parse_headerless(body: &[u8]) -> Result<Delivery, PayloadError> {
    let parsed: Body = from_json(body)?;
    if parsed.git_ref.is_none() || parsed.after.is_none() {
        return Err(PayloadError("no event header (X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event) and the body is not a push".into()));
    }
    push(&parsed, "github")
}

/// GitHub's and Gitea's push bodies share these fields; `forge` says which sent it.
pub(super) fn push(b: &Body, forge: &'static str) -> Result<Delivery, PayloadError> {
    let repo = b.repository.as_ref();
    normalize(RawPush {
        git_ref: b.git_ref.as_deref(),
        sha: b.after.as_deref(),
        repo: repo.and_then(|r| r.full_name.as_deref()),
        clone_url: repo.and_then(|r| r.clone_url.as_deref()),
        default_branch: repo.and_then(|r| r.default_branch.as_deref()),
        message: head_message(&b.head_commit, &b.commits),
        deleted: b.deleted.as_ref().and_then(serde_json::Value::as_bool).unwrap_or(false),
        forge,
        web_url: repo.and_then(|r| r.html_url.as_deref()),
        // Gitea's body has no statuses_url; only GitHub's is used.
        statuses_url: repo.and_then(|r| r.statuses_url.as_deref()).filter(|_| forge == "github"),
        project_id: None,
    })
}
