//! Gitea, Forgejo and Gogs deliveries: `X-Gitea-Event` / `X-Gogs-Event`.

use super::{check_json, from_json, github, Delivery, PayloadError};

pub(super) fn parse(event: &str, body: &[u8], build_tags: bool) -> Result<Delivery, PayloadError> {
    match event {
        // Gitea's push body has GitHub's shape.
        "push" => github::push(&from_json(body)?, body, "gitea", build_tags),
        // Gitea names a new head `synchronized`; its header says `pull_request`.
        "pull_request" | "pull_request_sync" => github::pull(&from_json(body)?, "gitea"),
        other => {
            check_json(body).map(|_| Delivery::NoBuild(format!("event {other:?} needs no build: only pushes and pull requests are built")))
        }
    }
}
