//! `POST /` and `POST /<hints>`: a signed web-hook, parsed, routed and
//! queued in one script; 202 only once it is durably queued.

use super::credentials;
use crate::hook::reply::{redis_down, Reply};
use crate::hook::state::Hook;
use crate::hook::wire::Request;
use crate::logging::quote;
use crate::payload::{self, Delivery};
use crate::signature;
use crate::store::conn::Redis;
use crate::store::queue::{self, Enqueued, Job};
use serde_json::json;
use std::time::Duration;

/// How long a push waits for REDIS_MIN_REPLICAS replicas (`WAIT`); well
/// under REDIS_TIMEOUT, the socket's.
pub(crate) const REPLICA_WAIT: Duration = Duration::from_secs(1);
pub(crate) fn post_push(hook: &Hook, redis: &mut Redis, req: &Request, path: &str) -> Reply {
    let body = &req.body;
    if let Err(e) = signature::verify(&hook.token, body, &credentials(req)) {
        return Reply::error(403, e.to_string());
    }
    let parsed = payload::parse(&payload::Request {
        content_type: req.header("Content-Type"),
        github_event: req.header("X-GitHub-Event"),
        gitea_event: req.header("X-Gitea-Event").or_else(|| req.header("X-Gogs-Event")).or_else(|| req.header("X-Forgejo-Event")),
        gitlab_event: req.header("X-Gitlab-Event"),
        event_key: req.header("X-Event-Key"),
        body,
        policy: hook.config.policy,
    });
    let mut push = match parsed {
        Ok(Delivery::Build(p)) => p,
        Ok(Delivery::NoBuild(reason)) => {
            let mut r = Reply::json(200, json!({ "reason": reason }));
            r.facts = format!(" reason={}", quote(&reason));
            return r;
        }
        Ok(Delivery::Gone(gone)) => return unlist(redis, &gone),
        Err(e) => return Reply::error(400, e.0),
    };
    if let Some(reason) = push.skip_reason() {
        let mut r = Reply::json(200, json!({ "reason": reason }));
        let short = payload::short_sha(&push.sha);
        r.facts = format!(" repo={} branch={} sha={short} reason={}", quote(&push.repo), quote(&push.branch), quote(&reason));
        return r;
    }
    push.hints = crate::routing::parse_hints(path);
    let delivery = req
        .header("X-GitHub-Delivery")
        .or_else(|| req.header("X-Gitea-Delivery"))
        .or_else(|| req.header("X-Gogs-Delivery"))
        .or_else(|| req.header("Idempotency-Key"))
        .or_else(|| req.header("X-Gitlab-Event-UUID"));
    let job = Job {
        push: &push,
        delivery,
        reset: false,
        keep: hook.config.history_keep,
        cancel_running: hook.config.cancel_running,
        routing: hook.config.routing,
        alone: false,
    };
    enqueue(hook, redis, &job)
}
/// A deleted branch or a closed request: out of the listings (its builds and
/// history stay), answered 200 with the reason.
fn unlist(redis: &mut Redis, gone: &payload::Gone) -> Reply {
    let (repo, branch) = (gone.repo.as_str(), gone.branch.as_str());
    match redis.run_again(|c| crate::store::record::unlist(c, repo, branch)) {
        Err(e) => Reply::error(503, format!("redis unreachable, the branch stays listed: {e}")),
        Ok(listed) => {
            if listed {
                log::info!("branch.unlisted repo={} branch={}: {}", quote(repo), quote(branch), gone.reason);
            }
            let mut r = Reply::json(200, json!({ "reason": gone.reason, "unlisted": listed }));
            r.facts = format!(" repo={} branch={} reason={}", quote(repo), quote(branch), quote(&gone.reason));
            r
        }
    }
}

/// Runs the ENQUEUE script and, with REDIS_MIN_REPLICAS, `WAIT`s on the same
/// connection for that many replicas: a 2xx means the job is on the master
/// and on them. Short of them, 503: the job may be queued on the master,
/// and the sender's redelivery is caught by its delivery id or coalesces.
pub(crate) fn enqueue(hook: &Hook, redis: &mut Redis, job: &Job) -> Reply {
    let p = job.push;
    let short = payload::short_sha(&p.sha);
    let facts = format!(" repo={} branch={} sha={short}", quote(&p.repo), quote(&p.branch));
    let min = hook.config.min_replicas;
    let enqueued = redis.run_again(|c| {
        let enqueued = queue::enqueue(c, job)?;
        let wait = min > 0 && !matches!(enqueued, Enqueued::NoSlave { .. } | Enqueued::OtherRouting { .. });
        let acked = if wait { Some(crate::store::conn::replicas_acked(c, min, REPLICA_WAIT)?) } else { None };
        Ok((enqueued, acked))
    });
    let enqueued = match enqueued {
        Ok((e, Some(acked))) if acked < min => {
            let id = match &e {
                Enqueued::Queued { id, .. } | Enqueued::Coalesced { id, .. } | Enqueued::Duplicate { id } => id.as_str(),
                Enqueued::NoSlave { .. } | Enqueued::OtherRouting { .. } => "",
            };
            log::warn!("build.unreplicated id={id} acked={acked} min={min}");
            // A master that lost its replicas may have been replaced (a switchover leaves it up,
            // still a master, for seconds): the next request asks the sentinels again.
            redis.reconnect();
            let why = format!(
                "build {id} is queued on the Redis master, but only {acked} of REDIS_MIN_REPLICAS={min} replicas acknowledged it within {} ms, \
                 so a failover could lose it; retry: a redelivery is caught by its delivery id or coalesces with it",
                REPLICA_WAIT.as_millis()
            );
            let mut r = Reply::error(503, why);
            r.facts = format!("{facts} id={id} acked={acked}{}", r.facts);
            return r;
        }
        other => other.map(|(e, _)| e),
    };
    let mut reply = match enqueued {
        Err(e) => redis_down(&e),
        Ok(Enqueued::Queued { id, slave, canceled }) => {
            if let Some(old) = canceled {
                log::info!(
                    "build.canceled id={old} repo={} branch={} by={id}: superseded (HOOK_CANCEL_RUNNING)",
                    quote(&p.repo),
                    quote(&p.branch)
                );
            }
            queued(p, id, slave, false)
        }
        Ok(Enqueued::Coalesced { id, slave }) => queued(p, id, slave, true),
        Ok(Enqueued::Duplicate { id }) => {
            let mut r = Reply::json(200, json!({ "reason": "duplicate delivery: already queued", "id": id }));
            r.facts = format!(" id={id} reason=duplicate");
            r
        }
        Ok(Enqueued::NoSlave { live }) => {
            let live = if live.is_empty() { "none".to_string() } else { live };
            let asked = if p.hints.is_empty() { "any".to_string() } else { p.hints.join("+") };
            Reply::error(503, format!("no live slave cluster offers {asked}; live clusters: {live}"))
        }
        Ok(Enqueued::OtherRouting { agreed }) => Reply::error(
            503,
            format!(
                "this hook routes by HOOK_ROUTING={}, but the deployment agreed on {agreed} (Redis key {}); restart this hook with HOOK_ROUTING={agreed}",
                job.routing.as_str(),
                crate::store::keys::ROUTING
            ),
        ),
    };
    reply.facts = format!("{facts}{}", reply.facts);
    reply
}
pub(crate) fn queued(p: &payload::Push, id: String, slave: String, coalesced: bool) -> Reply {
    let short = payload::short_sha(&p.sha);
    let event = if coalesced { "build.coalesced" } else { "build.queued" };
    log::info!("{event} id={id} repo={} branch={} sha={short} slave={slave}", quote(&p.repo), quote(&p.branch));
    let mut r =
        Reply::json(202, json!({ "id": id, "repo": p.repo, "branch": p.branch, "sha": p.sha, "slave": slave, "coalesced": coalesced }));
    r.facts = format!(" id={id} slave={slave}");
    r
}
