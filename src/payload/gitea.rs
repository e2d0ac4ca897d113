//! Gitea, Forgejo and Gogs deliveries: `X-Gitea-Event` / `X-Gogs-Event`.

use super::{github, normalize, Delivery, PayloadError};
use serde_json::Value;

pub(super) fn parse(event: &str, json: &Value) -> Result<Delivery, PayloadError> {
    match event {
        "push" => normalize(github::raw_push(json)),
        other => Ok(Delivery::NoBuild(format!("event {other:?} needs no build: only pushes are built"))),
    }
}
