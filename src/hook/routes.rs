//! Every route of the hook in one table: its path, the methods it answers,
//! whether reading it needs HOOK_READ_TOKEN, and its handlers. A new route is
//! one row of [`ROUTES`]; `Allow`, 404 and 405 answers follow from the table.

use crate::hook::handlers::act::{self, Act};
use crate::hook::handlers::{build, cancel, history, push, query_param, status, wants_html};
use crate::hook::reply::Reply;
use crate::hook::state::Hook;
use crate::hook::views::{self, auth};
use crate::hook::wire::Request;
use crate::store::conn::Redis;
use tiny_http::Method;

/// What a handler is given: the hook, the request, and its path split into
/// the route's prefix, the rest after it, and the query string.
pub(crate) struct Call<'a> {
    pub hook: &'a Hook,
    pub req: &'a Request,
    pub path: &'a str,
    /// The path after the route's prefix (`acme/app` of `/status/acme/app`).
    pub rest: &'a str,
    pub query: &'a str,
}

type Handler = fn(&Call, &mut Redis) -> Reply;

/// How a route's path is matched.
enum Path {
    Exact(&'static str),
    Prefix(&'static str),
    /// Every other path: a push with routing hints (`POST /jdk8+sbt`).
    Hints,
}

pub(crate) struct Route {
    path: Path,
    /// The name on log lines and in `ci_requests_total{route=…}`.
    name: &'static str,
    /// Reading (GET, HEAD) needs HOOK_READ_TOKEN when one is set.
    private: bool,
    /// Answers GET and HEAD.
    get: Option<Handler>,
    post: Option<Handler>,
}

/// The table, most specific first; the last row takes every other path.
const ROUTES: &[Route] = &[
    Route { path: Path::Exact("/ping"), name: "ping", private: false, get: Some(ping), post: None },
    Route { path: Path::Exact("/"), name: "repos", private: true, get: Some(root), post: Some(push_here) },
    Route { path: Path::Exact("/login"), name: "login", private: false, get: Some(login_form), post: Some(login) },
    Route { path: Path::Exact("/metrics"), name: "metrics", private: false, get: Some(metrics), post: None },
    Route { path: Path::Exact("/repos"), name: "repos", private: true, get: Some(repos), post: None },
    Route { path: Path::Prefix("/status/"), name: "status", private: true, get: Some(get_status), post: None },
    Route { path: Path::Prefix("/history/"), name: "history", private: true, get: Some(get_history), post: None },
    Route { path: Path::Prefix("/repo/"), name: "dashboard", private: true, get: Some(repository), post: None },
    Route { path: Path::Prefix("/builds/"), name: "dashboard", private: true, get: Some(build_page), post: None },
    Route { path: Path::Prefix("/badge/"), name: "badge", private: false, get: Some(badge), post: None },
    Route { path: Path::Prefix("/build/"), name: "build", private: false, get: None, post: Some(rebuild) },
    Route { path: Path::Prefix("/cancel/"), name: "cancel", private: false, get: None, post: Some(cancel_build) },
    Route { path: Path::Exact("/pulse"), name: "pulse", private: true, get: Some(pulse), post: None },
    Route { path: Path::Prefix("/act/build/"), name: "act", private: false, get: None, post: Some(act_build) },
    Route { path: Path::Prefix("/act/cancel/"), name: "act", private: false, get: None, post: Some(act_cancel) },
    Route { path: Path::Hints, name: "push", private: false, get: None, post: Some(push_here) },
];

impl Route {
    /// The rest of `path` after this route's prefix, when it matches.
    fn matches<'p>(&self, path: &'p str) -> Option<&'p str> {
        match self.path {
            Path::Exact(p) => (path == p).then_some(""),
            Path::Prefix(p) => path.strip_prefix(p),
            Path::Hints => Some(path),
        }
    }

    /// The route's `Allow` header.
    fn allow(&self) -> &'static str {
        match (self.get.is_some(), self.post.is_some()) {
            (true, true) => "GET, HEAD, POST",
            (true, false) => "GET, HEAD",
            _ => "POST",
        }
    }
}

/// Answers one request: the route of its path, the read token when the
/// route is private, then the handler of its method; 404 for a read of a
/// path that only takes POST, 405 (with `Allow`) for any other method.
pub(crate) fn route(hook: &Hook, redis: &mut Redis, req: &Request) -> (&'static str, Reply) {
    let (path, query) = req.url.split_once('?').unwrap_or((&req.url, ""));
    let (route, rest) = ROUTES.iter().find_map(|r| r.matches(path).map(|rest| (r, rest))).expect("the last route takes every path");
    let reading = matches!(req.method, Method::Get | Method::Head);
    if reading && route.private {
        let cookies = req.header("Cookie");
        if !auth::may_read(hook.config.read_token.as_deref(), &hook.token, req.header("Authorization"), cookies) {
            return ("unauthorized", auth::refused(wants_html(req)).into());
        }
    }
    let handler = match req.method {
        Method::Get | Method::Head => route.get,
        Method::Post => route.post,
        _ => None,
    };
    let call = Call { hook, req, path, rest, query };
    match handler {
        Some(handle) => {
            let mut reply = handle(&call, redis);
            // Logs and records (the private routes) are never kept by a cache on the way.
            if route.private && !reply.headers.iter().any(|(k, _)| *k == "Cache-Control") {
                reply.headers.push(("Cache-Control", "no-store".into()));
            }
            (reply.route.take().unwrap_or(route.name), reply)
        }
        // Paths that only take POST (a push with hints) are unknown to GET.
        None if reading && route.get.is_none() => ("other", Reply::error(404, format!("no such route: {} {path}", req.method))),
        None => ("other", not_allowed(&req.method, path, route.allow())),
    }
}

/// 405 with `Allow`: the methods the path answers.
fn not_allowed(method: &Method, path: &str, allow: &'static str) -> Reply {
    let mut r = Reply::error(405, format!("method {method} is not allowed on {path}: use {}", allow.replace(", ", " or ")));
    r.headers.push(("Allow", allow.to_string()));
    r
}

/// A page or badge read from Redis; 503 when it cannot be read.
fn view(redis: &mut Redis, read: impl FnMut(&mut redis::Connection) -> redis::RedisResult<views::View>) -> Reply {
    match redis.run_again(read) {
        Ok(v) => v.into(),
        Err(e) => Reply::error(503, format!("redis unreachable: {e}")),
    }
}

fn ping(_: &Call, _: &mut Redis) -> Reply {
    Reply::text(200, "pong\n".into())
}

/// `GET /`: the dashboard for a browser, the repositories for a program.
fn root(call: &Call, redis: &mut Redis) -> Reply {
    if wants_html(call.req) {
        let csrf = csrf(call);
        Reply { route: Some("dashboard"), ..view(redis, |c| views::dashboard(c, csrf.as_deref())) }
    } else {
        history::get_repos(redis, call.req)
    }
}

fn login_form(_: &Call, _: &mut Redis) -> Reply {
    auth::refused(true).into()
}

fn login(call: &Call, _: &mut Redis) -> Reply {
    let https_url = call.hook.config.public_url.as_deref().is_some_and(|u| u.to_ascii_lowercase().starts_with("https://"));
    let https_proxy = call.req.header("X-Forwarded-Proto").is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    auth::login(call.hook.config.read_token.as_deref(), &call.hook.token, &call.req.body, https_url || https_proxy).into()
}

fn metrics(call: &Call, redis: &mut Redis) -> Reply {
    let metrics = &call.hook.metrics;
    let body = match redis.run_again(|c| Ok(metrics.render(Some(c)))) {
        Ok(text) => text,
        Err(_) => metrics.render(None),
    };
    Reply { ctype: "text/plain; version=0.0.4", ..Reply::text(200, body) }
}

fn repos(call: &Call, redis: &mut Redis) -> Reply {
    history::get_repos(redis, call.req)
}

fn get_status(call: &Call, redis: &mut Redis) -> Reply {
    status::get_status(redis, call.req, call.rest, call.query)
}

fn get_history(call: &Call, redis: &mut Redis) -> Reply {
    history::get_history(call.hook, redis, call.req, call.rest, call.query)
}

fn repository(call: &Call, redis: &mut Redis) -> Reply {
    match crate::hook::handlers::repo_and_branch(call.rest, "") {
        Ok((repo, _)) => {
            let csrf = csrf(call);
            view(redis, |c| views::repository(c, &repo, call.hook.config.history_keep, csrf.as_deref()))
        }
        Err(bad) => bad.into(),
    }
}

fn build_page(call: &Call, redis: &mut Redis) -> Reply {
    let csrf = csrf(call);
    view(redis, |c| views::build(c, call.rest, csrf.as_deref()))
}

/// The viewer's CSRF token when its cookie is an acting session's: its pages show buttons.
fn csrf(call: &Call) -> Option<String> {
    auth::acting(&call.hook.token, call.req.header("Cookie"))
}

/// `GET /pulse[?repo=R]`: what the listing pages poll while a build is active.
fn pulse(call: &Call, redis: &mut Redis) -> Reply {
    let repo = match query_param(call.query, "repo") {
        None => None,
        Some(r) => match crate::payload::check_repo(&r) {
            Ok(()) => Some(r),
            Err(e) => return Reply::error(400, e.0),
        },
    };
    match redis.run_again(|c| views::pulse(c, repo.as_deref())) {
        Ok(v) => Reply::json(200, v),
        Err(e) => Reply::error(503, format!("redis unreachable: {e}")),
    }
}

fn act_build(call: &Call, redis: &mut Redis) -> Reply {
    act::post_act(call.hook, redis, call.req, Act::Rebuild, call.rest, call.query)
}

fn act_cancel(call: &Call, redis: &mut Redis) -> Reply {
    act::post_act(call.hook, redis, call.req, Act::Cancel, call.rest, call.query)
}

/// `GET /badge/<repo>.svg`; a badge path without `.svg` is not a badge.
fn badge(call: &Call, redis: &mut Redis) -> Reply {
    let Some(repo) = call.rest.strip_suffix(".svg") else {
        return Reply { route: Some("other"), ..not_allowed(&call.req.method, call.path, "GET, HEAD") };
    };
    match crate::hook::handlers::repo_and_branch(repo, call.query) {
        Ok((repo, branch)) => view(redis, |c| views::badge(c, &repo, branch.as_deref(), call.req.header("If-None-Match"))),
        Err(bad) => bad.into(),
    }
}

fn rebuild(call: &Call, redis: &mut Redis) -> Reply {
    build::post_build(call.hook, redis, call.req, call.rest, call.query)
}

fn cancel_build(call: &Call, redis: &mut Redis) -> Reply {
    cancel::post_cancel(call.hook, redis, call.req, call.rest, call.query)
}

fn push_here(call: &Call, redis: &mut Redis) -> Reply {
    Reply { route: Some("push"), ..push::post_push(call.hook, redis, call.req, call.path) }
}
