//! `POST /build/<repo>`: a manual run (event `manual`) of a branch's last
//! push (`?branch=`, or the default branch) or of build N's own commit on its
//! branch (`?id=N`), with the parameters of its body (`{"env": {...}}`,
//! `payload::params`); `X-Reset: true` starts from a fresh clone.
//! Authenticated by a bearer token or a fresh signed body.

use super::{authorize, query_param, repo_and_branch};
use crate::hook::reply::{redis_down, Reply};
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::payload::{params, Event, Push};
use crate::signature::{Authorized, Intent};
use crate::store::conn::Redis;
use crate::store::queue::{self, Job};
use crate::store::record;

pub(crate) fn post_build(hook: &Hook, redis: &mut Redis, req: &Request, raw_repo: &str, query: &str) -> Reply {
    let (repo, branch) = match repo_and_branch(raw_repo, query) {
        Ok(rb) => rb,
        Err(bad) => return bad.into(),
    };
    let id = query_param(query, "id");
    if let Some(id) = &id {
        if branch.is_some() {
            return Reply::error(400, "give ?branch= or ?id=, not both: ?id= builds that build's commit on its own branch");
        }
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Reply::error(400, format!("?id= must be a build's number, not {:?}", id.chars().take(40).collect::<String>()));
        }
    }
    let reset = req.header("X-Reset").is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let intent = Intent { action: "build", repo: &repo, branch: branch.as_deref(), id: id.as_deref(), reset };
    let signed = match authorize(hook, redis, req, &intent) {
        Ok(a) => matches!(a, Authorized::Signed { .. }),
        Err(refused) => return *refused,
    };
    let params = match params::of_body(&req.body, signed) {
        Ok(p) => p,
        Err(e) => return Reply::error(400, e.0),
    };
    let push = match &id {
        None => match redis.run_again(|c| queue::last_push(c, &repo, branch.as_deref())) {
            Err(e) => return redis_down(&e),
            Ok(None) => return Reply::error(404, format!("{repo:?} {} was never pushed", branch.as_deref().unwrap_or("(default branch)"))),
            Ok(Some(push)) => push,
        },
        Some(id) => match build_of(redis, &repo, id) {
            Ok(push) => push,
            Err(refused) => return *refused,
        },
    };
    if push.fork && !params.is_empty() {
        return Reply::error(400, format!("{:?} is a fork's request: its code never gets parameters", push.branch));
    }
    // A build of its own when it names its commit or carries parameters:
    // no push replaces what was asked for.
    let alone = id.is_some() || !params.is_empty();
    let job = Job {
        push: &Push { event: Event::Manual, params, ..push },
        delivery: None,
        reset,
        keep: hook.config.history_keep,
        cancel_running: hook.config.cancel_running,
        routing: hook.config.routing,
        alone,
    };
    let mut reply = super::push::enqueue(hook, redis, &job);
    if let Some(id) = &id {
        reply.facts = format!("{} of={id}", reply.facts);
    }
    if !job.push.params.is_empty() {
        // Their names only: values stay out of logs.
        let names: Vec<&str> = job.push.params.keys().map(String::as_str).collect();
        reply.facts = format!("{} params={}", reply.facts, names.join(","));
    }
    reply
}

/// Build `id` of `repo`'s push, its own commit (a coalesced build's is the
/// record's `sha`), or the answer saying why there is none.
fn build_of(redis: &mut Redis, repo: &str, id: &str) -> Result<Push, Box<Reply>> {
    let r = match redis.run_again(|c| record::build(c, repo, id)) {
        Err(e) => return Err(Box::new(redis_down(&e))),
        Ok(None) => return Err(Box::new(Reply::error(404, format!("{repo:?} has no build {id}")))),
        Ok(Some(r)) => r,
    };
    match crate::store::job::decode(&r.push) {
        Some(push) => Ok(Push { sha: r.sha, ..push }),
        None => {
            Err(Box::new(Reply::error(400, format!("build {id} of {repo:?} has no stored job to run again (a record of an old version)"))))
        }
    }
}
