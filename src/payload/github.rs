//! GitHub (and GitHub Enterprise) deliveries: `X-GitHub-Event`.

use super::{head_message, normalize, Delivery, PayloadError, RawPush};
use serde_json::Value;

pub(super) fn parse(event: &str, json: &Value) -> Result<Delivery, PayloadError> {
    match event {
        "push" => normalize(raw_push(json)),
        "ping" => Ok(Delivery::NoBuild("ping: hook is set up".into())),
        other => Ok(Delivery::NoBuild(format!("event {other:?} needs no build: only pushes are built"))),
    }
}

/// GitHub's and Gitea's push bodies share these fields.
pub(super) fn raw_push(json: &Value) -> RawPush<'_> {
    let repo = &json["repository"];
    RawPush {
        git_ref: json["ref"].as_str(),
        sha: json["after"].as_str(),
        repo: repo["full_name"].as_str(),
        clone_url: repo["clone_url"].as_str(),
        default_branch: repo["default_branch"].as_str(),
        message: head_message(json),
        deleted: json["deleted"].as_bool().unwrap_or(false),
    }
}
