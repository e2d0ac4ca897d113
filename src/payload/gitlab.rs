//! GitLab deliveries: `X-Gitlab-Event: Push Hook` and the rest.

use super::{head_message, normalize, Delivery, PayloadError, RawPush};
use serde_json::Value;

pub(super) fn parse(event: &str, json: &Value) -> Result<Delivery, PayloadError> {
    if event != "Push Hook" {
        return Ok(Delivery::NoBuild(format!("event {event:?} needs no build: only pushes are built")));
    }
    let project = &json["project"];
    // A deleted branch has `checkout_sha: null` and an all-zero `after`.
    let deleted = json.get("checkout_sha").is_some_and(Value::is_null);
    normalize(RawPush {
        git_ref: json["ref"].as_str(),
        sha: json["checkout_sha"].as_str().or_else(|| json["after"].as_str()),
        repo: project["path_with_namespace"].as_str(),
        clone_url: project["git_http_url"].as_str().or_else(|| json["repository"]["git_http_url"].as_str()),
        default_branch: project["default_branch"].as_str(),
        message: head_message(json),
        deleted,
    })
}
