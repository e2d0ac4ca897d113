//! `POST /cancel/<repo>`: cancels a queued or running build of a branch or
//! by id, authenticated like `POST /build`.

use super::{query_param, refusal, repo_and_branch};
use crate::hook::reply::Reply;
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::logging::quote;
use crate::signature::Intent;
use crate::store::conn::Redis;
use crate::store::queue::{self, Canceled};
use serde_json::json;

/// `POST /cancel/<repo>?branch=B|?id=N`, authenticated like `POST /build`:
/// 202 `{"id","state"}` when the build was queued (now canceled) or running
/// (now canceled, its slave kills it); 200 with the reason when it had
/// already finished; 404 when there is no such build.
pub(crate) fn post_cancel(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(bad) => return bad.into(),
    };
    let id = query_param(query, "id");
    let intent = Intent { action: "cancel", repo: &repo, branch: branch.as_deref(), id: id.as_deref(), reset: false };
    if let Some(refused) = refusal(hook, redis, req, &intent) {
        return refused;
    }
    let result = redis.run_again(|c| {
        if let Some(id) = &id {
            return queue::cancel(c, &repo, queue::CancelTarget::Id(id), "by POST /cancel").map(Some);
        }
        match queue::branch_or_default(c, &repo, branch.as_deref())? {
            Some(b) => queue::cancel(c, &repo, queue::CancelTarget::Branch(&b), "by POST /cancel").map(Some),
            None => Ok(None),
        }
    });
    let what = match (&id, &branch) {
        (Some(id), _) => format!("build {id:?}"),
        (None, Some(b)) => format!("a build of branch {b:?}"),
        (None, None) => "a build of its default branch".to_string(),
    };
    let mut reply = match result {
        Err(e) => return Reply::error(503, format!("redis unreachable, nothing was canceled: {e}")),
        Ok(None | Some(Canceled::NoSuchBuild)) => return Reply::error(404, format!("{repo:?} has no {what}")),
        Ok(Some(Canceled::Queued { id })) => {
            log::info!("build.canceled id={id} repo={} was=queued: by POST /cancel", quote(&repo));
            Reply::json(202, json!({ "id": id, "state": "canceled" }))
        }
        Ok(Some(Canceled::Running { id })) => {
            log::info!("build.canceled id={id} repo={} was=running: by POST /cancel; its slave kills it", quote(&repo));
            Reply::json(202, json!({ "id": id, "state": "canceled" }))
        }
        Ok(Some(Canceled::Finished { id, state })) => Reply::json(
            200,
            json!({ "id": id, "state": state, "reason": format!("build {id} had already finished ({state}): nothing to cancel") }),
        ),
    };
    reply.facts = format!(" repo={}", quote(&repo));
    reply
}
