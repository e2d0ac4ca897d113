//! `POST /build/<repo>`: builds a branch's last push again (`X-Reset: true`
//! starts from a fresh clone), authenticated by a bearer token or a fresh
//! signed body; its event is `manual`.

use super::{push::enqueue, refusal, repo_and_branch};
use crate::hook::reply::{redis_down, Reply};
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::payload::{Event, Push};
use crate::signature::Intent;
use crate::store::conn::Redis;
use crate::store::queue::{self, Job};

pub(crate) fn post_build(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(bad) => return bad.into(),
    };
    let reset = req.header("X-Reset").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let intent = Intent { action: "build", repo: &repo, branch: branch.as_deref(), id: None, reset };
    if let Some(refused) = refusal(hook, redis, req, &intent) {
        return refused;
    }
    match redis.run_again(|c| queue::last_push(c, &repo, branch.as_deref())) {
        Err(e) => redis_down(&e),
        Ok(None) => Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
        Ok(Some(push)) => enqueue(
            hook,
            redis,
            &Job {
                push: &Push { event: Event::Manual, ..push },
                delivery: None,
                reset,
                keep: hook.config.history_keep,
                cancel_running: hook.config.cancel_running,
                routing: hook.config.routing,
            },
        ),
    }
}
