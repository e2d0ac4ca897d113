//! GitLab deliveries: `X-Gitlab-Event: Push Hook` and the rest.

use super::{check_json, from_json, head_message, normalize, Delivery, Gone, Last, Names, PayloadError, Pull, RawCommit, RawPush};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    /// The branch's commit before the push (`when: path` diffs from it).
    /// Kept loose: anything but a string is no before, not a bad body.
    #[serde(borrow, default)]
    before: super::LooseStr<'a>,
    /// `null` on a deleted branch; a Value keeps null apart from absent.
    checkout_sha: Option<super::Loose<'a>>,
    #[serde(borrow)]
    project: Option<Project<'a>>,
    #[serde(borrow)]
    repository: Option<Project<'a>>,
    #[serde(borrow)]
    commits: Option<Last<RawCommit<'a>>>,
    /// Kept loose: anything but a non-negative integer is no id.
    project_id: Option<super::Loose<'a>>,
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
    id: Option<super::Loose<'a>>,
}

/// A `Merge Request Hook` body: the target project, and the request.
#[derive(Deserialize)]
struct MergeBody<'a> {
    #[serde(borrow)]
    project: Option<Project<'a>>,
    #[serde(borrow)]
    object_attributes: Option<Request<'a>>,
}

#[derive(Deserialize)]
struct Request<'a> {
    iid: Option<super::Loose<'a>>,
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    /// Present on an `update` that brought new commits.
    oldrev: Option<super::Loose<'a>>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_branch: Option<Cow<'a, str>>,
    #[serde(borrow)]
    target_branch: Option<Cow<'a, str>>,
    source_project_id: Option<super::Loose<'a>>,
    target_project_id: Option<super::Loose<'a>>,
    #[serde(borrow)]
    source: Option<Project<'a>>,
    #[serde(borrow)]
    last_commit: Option<LastCommit<'a>>,
}

#[derive(Deserialize)]
struct LastCommit<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

const PUSH: Names = Names {
    body: "GitLab Push Hook",
    git_ref: "ref",
    sha: "checkout_sha",
    repo: "project.path_with_namespace",
    clone_url: "project.git_http_url",
};
const MERGE: Names = Names {
    body: "GitLab Merge Request Hook",
    git_ref: "object_attributes.iid",
    sha: "object_attributes.last_commit.id",
    repo: "project.path_with_namespace",
    clone_url: "project.git_http_url",
};

pub(super) fn parse(event: &str, body: &[u8], build_tags: bool) -> Result<Delivery, PayloadError> {
    if event == "Merge Request Hook" {
        return merge_request(&from_json(body)?);
    }
    if event != "Push Hook" && event != "Tag Push Hook" {
        return check_json(body)
            .map(|_| Delivery::NoBuild(format!("event {event:?} needs no build: only pushes, tag pushes and merge requests are built")));
    }
    let b: Body = from_json(body)?;
    let project = b.project.as_ref();
    // A deleted branch has `checkout_sha: null` and an all-zero `after`.
    let deleted = b.checkout_sha.as_ref().is_some_and(super::Loose::is_null);
    let checkout = b.checkout_sha.as_ref().and_then(super::Loose::as_str);
    let message = head_message(body, None, b.commits.as_ref().and_then(|c| c.0.as_ref()), checkout.or(b.after.as_deref()));
    normalize(RawPush {
        git_ref: b.git_ref.as_deref(),
        sha: checkout.or(b.after.as_deref()),
        before: b.before.0.as_deref(),
        repo: project.and_then(|p| p.path_with_namespace.as_deref()),
        clone_url: project.and_then(|p| p.git_http_url.as_deref()).or_else(|| b.repository.as_ref()?.git_http_url.as_deref()),
        default_branch: project.and_then(|p| p.default_branch.as_deref()),
        message: message.as_deref(),
        deleted,
        forge: "gitlab",
        web_url: project.and_then(|p| p.web_url.as_deref()),
        statuses_url: None,
        project_id: project.and_then(|p| p.id.as_ref()).or(b.project_id.as_ref()).and_then(super::Loose::as_u64),
        pull: None,
        fork: false,
        // `checkout_sha` is the commit even for an annotated tag.
        tag_commit: checkout,
        build_tags,
        names: &PUSH,
    })
}

/// Builds `open`, `reopen`, and an `update` with new commits (`oldrev`);
/// the head is fetched from the target's `refs/merge-requests/<iid>/head`.
fn merge_request(b: &MergeBody) -> Result<Delivery, PayloadError> {
    let missing = |what: &str| PayloadError(format!("missing field: {what} (in a {} body)", MERGE.body));
    let mr = b.object_attributes.as_ref().ok_or_else(|| missing("object_attributes"))?;
    let action = mr.action.as_deref().unwrap_or("");
    let new_commits = mr.oldrev.as_ref().is_some_and(|v| v.as_str().is_some());
    if let ("close" | "merge", Some(n)) = (action, mr.iid.as_ref().and_then(super::Loose::as_u64)) {
        let repo = b.project.as_ref().and_then(|p| p.path_with_namespace.as_deref());
        return Gone::of(repo, &format!("merge-requests/{n}"), format!("merge request {n} {action}d: nothing to build"));
    }
    if !(matches!(action, "open" | "reopen") || (action == "update" && new_commits)) {
        let why = if action == "update" { " without new commits" } else { "" };
        return Ok(Delivery::NoBuild(format!("merge request action {action:?}{why} brings no new commit: nothing to build")));
    }
    let number = mr.iid.as_ref().and_then(super::Loose::as_u64).ok_or_else(|| missing("object_attributes.iid"))?;
    let project = b.project.as_ref();
    let target = project.and_then(|p| p.path_with_namespace.as_deref()).ok_or_else(|| missing("project.path_with_namespace"))?;
    let ids = (mr.source_project_id.as_ref().and_then(|v| v.as_u64()), mr.target_project_id.as_ref().and_then(|v| v.as_u64()));
    let fork = !matches!(ids, (Some(s), Some(t)) if s == t);
    // The same project: the head is the target's own (whatever `source` says).
    let source = mr.source.as_ref().and_then(|p| p.path_with_namespace.as_deref());
    let head_repo = if fork { source.unwrap_or("unknown/fork") } else { target };
    let pull = Pull {
        number,
        base_branch: mr.target_branch.as_deref().ok_or_else(|| missing("object_attributes.target_branch"))?.to_string(),
        head_branch: mr.source_branch.as_deref().ok_or_else(|| missing("object_attributes.source_branch"))?.to_string(),
        head_repo: head_repo.to_string(),
    };
    normalize(RawPush {
        git_ref: Some(&format!("merge-requests/{number}")),
        sha: mr.last_commit.as_ref().and_then(|c| c.id.as_deref()),
        before: None,
        repo: Some(target),
        clone_url: project.and_then(|p| p.git_http_url.as_deref()),
        default_branch: project.and_then(|p| p.default_branch.as_deref()),
        message: mr.title.as_deref(),
        deleted: false,
        forge: "gitlab",
        web_url: project.and_then(|p| p.web_url.as_deref()),
        statuses_url: None,
        project_id: project.and_then(|p| p.id.as_ref()).and_then(super::Loose::as_u64).or(ids.1),
        fork,
        pull: Some(pull),
        tag_commit: None,
        build_tags: false,
        names: &MERGE,
    })
}
