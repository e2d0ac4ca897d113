//! GitLab deliveries: `X-Gitlab-Event: Push Hook` and the rest.

use super::{check_json, from_json, head_message, normalize, Delivery, PayloadError, RawCommit, RawPush};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    /// `null` on a deleted branch; a Value keeps null apart from absent.
    checkout_sha: Option<serde_json::Value>,
    #[serde(borrow)]
    project: Option<Project<'a>>,
    #[serde(borrow)]
    repository: Option<Project<'a>>,
    #[serde(borrow)]
    commits: Option<Vec<RawCommit<'a>>>,
    /// Kept loose: anything but a non-negative integer is no id.
    project_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Project<'a> {
    #[serde(borrow)]
    path_with_namespace: Option<Cow<'a, str>>,
    #[serde(borrow)]
    git_http_url: Option<Cow<'a, str>>,
    #[serde(borrow)]
    default_branch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    web_url: Option<Cow<'a, str>>,
    id: Option<serde_json::Value>,
}

pub(super) fn parse(event: &str, body: &[u8]) -> Result<Delivery, PayloadError> {
    if event != "Push Hook" {
        return check_json(body).map(|_| Delivery::NoBuild(format!("event {event:?} needs no build: only pushes are built")));
    }
    let b: Body = from_json(body)?;
    let project = b.project.as_ref();
    // A deleted branch has `checkout_sha: null` and an all-zero `after`.
    let deleted = b.checkout_sha.as_ref().is_some_and(serde_json::Value::is_null);
    let checkout = b.checkout_sha.as_ref().and_then(serde_json::Value::as_str);
    normalize(RawPush {
        git_ref: b.git_ref.as_deref(),
        sha: checkout.or(b.after.as_deref()),
        repo: project.and_then(|p| p.path_with_namespace.as_deref()),
        clone_url: project.and_then(|p| p.git_http_url.as_deref()).or_else(|| b.repository.as_ref()?.git_http_url.as_deref()),
        default_branch: project.and_then(|p| p.default_branch.as_deref()),
        message: head_message(&None, &b.commits),
        deleted,
        forge: "gitlab",
        web_url: project.and_then(|p| p.web_url.as_deref()),
        statuses_url: None,
        project_id: project.and_then(|p| p.id.as_ref()).or(b.project_id.as_ref()).and_then(serde_json::Value::as_u64),
    })
}
