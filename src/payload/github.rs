//! GitHub (and GitHub Enterprise) deliveries: `X-GitHub-Event`.

use super::{
    builds_head, check_json, from_json, head_message, normalize, Delivery, Gone, Last, Names, PayloadError, Pull, RawCommit, RawPush,
};
use serde::Deserialize;
use std::borrow::Cow;

/// The fields of a GitHub or Gitea push body that a build needs.
#[derive(Deserialize)]
pub(super) struct Body<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
    /// The branch's commit before the push (`when: path` diffs from it).
    /// Kept loose: anything but a string is no before, not a bad body.
    #[serde(borrow, default)]
    before: super::LooseStr<'a>,
    /// Kept loose: a non-boolean is simply not a deletion.
    deleted: Option<super::Loose<'a>>,
    #[serde(borrow)]
    repository: Option<Repository<'a>>,
    #[serde(borrow)]
    head_commit: Option<RawCommit<'a>>,
    #[serde(borrow)]
    commits: Option<Last<RawCommit<'a>>>,
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

/// The fields of a GitHub or Gitea `pull_request` body that a build needs.
#[derive(Deserialize)]
pub(super) struct PullBody<'a> {
    #[serde(borrow)]
    action: Option<Cow<'a, str>>,
    number: Option<super::Loose<'a>>,
    #[serde(borrow)]
    pull_request: Option<PullRequest<'a>>,
    #[serde(borrow)]
    repository: Option<Repository<'a>>,
}

#[derive(Deserialize)]
struct PullRequest<'a> {
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
    #[serde(borrow)]
    head: Option<Side<'a>>,
    #[serde(borrow)]
    base: Option<Side<'a>>,
}

#[derive(Deserialize)]
struct Side<'a> {
    #[serde(rename = "ref", borrow)]
    git_ref: Option<Cow<'a, str>>,
    #[serde(borrow)]
    sha: Option<Cow<'a, str>>,
    /// `null` when the head's fork was deleted; absent from Gitea's bodies,
    /// which name the repositories by `repo_id` only.
    #[serde(borrow)]
    repo: Option<Repository<'a>>,
    /// Gitea: the repository of this side.
    repo_id: Option<u64>,
}

pub(super) fn parse(event: &str, body: &[u8], build_tags: bool) -> Result<Delivery, PayloadError> {
    match event {
        "push" => push(&from_json(body)?, body, "github", build_tags),
        "pull_request" => pull(&from_json(body)?, "github"),
        "ping" => check_json(body).map(|_| Delivery::NoBuild("ping: hook is set up".into())),
        other => {
            check_json(body).map(|_| Delivery::NoBuild(format!("event {other:?} needs no build: only pushes and pull requests are built")))
        }
    }
}

/// A body with no event header is built when it is shaped like a push.
pub(super) fn parse_headerless(body: &[u8], build_tags: bool) -> Result<Delivery, PayloadError> {
    let parsed: Body = from_json(body)?;
    if parsed.git_ref.is_none() || parsed.after.is_none() {
        return Err(PayloadError("no event header (X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event) and the body is not a push".into()));
    }
    push(&parsed, body, "github", build_tags)
}

const PUSH: Names =
    Names { body: "GitHub push", git_ref: "ref", sha: "after", repo: "repository.full_name", clone_url: "repository.clone_url" };
const GITEA_PUSH: Names = Names { body: "Gitea/Forgejo push", ..PUSH };
const PULL: Names = Names {
    body: "GitHub pull_request",
    git_ref: "number",
    sha: "pull_request.head.sha",
    repo: "repository.full_name",
    clone_url: "repository.clone_url",
};
const GITEA_PULL: Names = Names { body: "Gitea/Forgejo pull_request", ..PULL };

/// GitHub's and Gitea's push bodies share these fields; `forge` says which
/// sent it; `body` is the JSON `b` was read from.
pub(super) fn push(b: &Body, body: &[u8], forge: &'static str, build_tags: bool) -> Result<Delivery, PayloadError> {
    let repo = b.repository.as_ref();
    let message = head_message(body, b.head_commit.as_ref(), b.commits.as_ref().and_then(|c| c.0.as_ref()), b.after.as_deref());
    normalize(RawPush {
        git_ref: b.git_ref.as_deref(),
        sha: b.after.as_deref(),
        before: b.before.0.as_deref(),
        repo: repo.and_then(|r| r.full_name.as_deref()),
        clone_url: repo.and_then(|r| r.clone_url.as_deref()),
        default_branch: repo.and_then(|r| r.default_branch.as_deref()),
        message: message.as_deref(),
        deleted: b.deleted.as_ref().and_then(super::Loose::as_bool).unwrap_or(false),
        forge,
        web_url: repo.and_then(|r| r.html_url.as_deref()),
        // Gitea's body has no statuses_url; only GitHub's is used.
        statuses_url: repo.and_then(|r| r.statuses_url.as_deref()).filter(|_| forge == "github"),
        project_id: None,
        pull: None,
        fork: false,
        tag_commit: b.head_commit.as_ref().and_then(|c| c.id.0.as_deref()),
        build_tags,
        names: if forge == "gitea" { &GITEA_PUSH } else { &PUSH },
    })
}

/// GitHub's and Gitea's `pull_request` bodies: the head commit of the
/// request, fetched from the target repository's `refs/pull/<N>/head`.
pub(super) fn pull(b: &PullBody, forge: &'static str) -> Result<Delivery, PayloadError> {
    let action = b.action.as_deref().unwrap_or("");
    if action == "closed" {
        let number = b.number.as_ref().and_then(super::Loose::as_u64);
        let repo = b.repository.as_ref().and_then(|r| r.full_name.as_deref());
        if let Some(n) = number {
            return Gone::of(repo, &format!("pull/{n}"), format!("pull request {n} closed: nothing to build"));
        }
    }
    if !builds_head(action) {
        return Ok(Delivery::NoBuild(format!("pull request action {action:?} brings no new commit: nothing to build")));
    }
    let names = if forge == "gitea" { &GITEA_PULL } else { &PULL };
    let missing = |what: &str| PayloadError(format!("missing field: {what} (in a {} body)", names.body));
    let pr = b.pull_request.as_ref().ok_or_else(|| missing("pull_request"))?;
    let number = b.number.as_ref().and_then(super::Loose::as_u64).ok_or_else(|| missing("number"))?;
    let head = pr.head.as_ref().ok_or_else(|| missing("pull_request.head"))?;
    let base = pr.base.as_ref().ok_or_else(|| missing("pull_request.base"))?;
    let repo = b.repository.as_ref();
    let target = repo.and_then(|r| r.full_name.as_deref()).ok_or_else(|| missing("repository.full_name"))?;
    // GitHub names the head repository; Gitea gives both sides' repository ids
    // only. A head that is neither (a deleted fork) is someone else's code.
    let head_repo = match (head.repo.as_ref().and_then(|r| r.full_name.as_deref()), head.repo_id, base.repo_id) {
        (Some(name), _, _) => name,
        (None, Some(h), Some(b)) if h == b => target,
        _ => "",
    };
    let head_ref = head.git_ref.as_deref().ok_or_else(|| missing("pull_request.head.ref"))?;
    let pull = Pull {
        number,
        base_branch: base.git_ref.as_deref().ok_or_else(|| missing("pull_request.base.ref"))?.to_string(),
        head_branch: head_ref.to_string(),
        head_repo: if head_repo.is_empty() { "unknown/deleted-fork".to_string() } else { head_repo.to_string() },
    };
    normalize(RawPush {
        git_ref: Some(&format!("pull/{number}")),
        sha: head.sha.as_deref(),
        before: None,
        repo: Some(target),
        clone_url: repo.and_then(|r| r.clone_url.as_deref()),
        default_branch: repo.and_then(|r| r.default_branch.as_deref()),
        message: pr.title.as_deref(),
        deleted: false,
        forge,
        web_url: repo.and_then(|r| r.html_url.as_deref()),
        statuses_url: repo.and_then(|r| r.statuses_url.as_deref()).filter(|_| forge == "github"),
        project_id: None,
        fork: head_repo != target,
        pull: Some(pull),
        tag_commit: None,
        build_tags: false,
        names,
    })
}
