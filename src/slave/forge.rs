//! Commit statuses back to the forges (GitHub, Gitea/Forgejo, GitLab): the
//! SLAVE_FORGES lines, which push may use which token, and a poster thread
//! with a bounded queue, per-request timeouts and bounded retries, so that
//! posting never delays or fails a build.
//!
//! Every fact a payload gives is chosen by whoever holds the shared web-hook
//! token. A token goes only to its configured API base: for GitHub the
//! payload's `statuses_url` must lie under it, for Gitea and GitLab the
//! repository's web URL must have its scheme, host and port; the request URL
//! is always built from the base, never taken from the payload.
//!
//! Each build's status is named after its event (`ci-backend/push`,
//! `ci-backend/pr`, …), so a push build and a request build of one commit
//! keep a status each; GitLab's also carry the ref the build is of.

use crate::logging::quote;
use crate::payload::short_sha;
use crate::payload::{self, Push};
use crate::slave::error::StartError;
use crate::store::conn::Redis;
use crate::store::stats;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Statuses that may wait for the poster; more are dropped (and counted).
const QUEUE: usize = 256;
/// GitHub refuses descriptions over 140 characters.
const MAX_DESCRIPTION: usize = 140;
/// The poster's User-Agent.
const USER_AGENT: &str = "ci-backend";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    GitHub,
    Gitea,
    GitLab,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::GitHub => "github",
            Kind::Gitea => "gitea",
            Kind::GitLab => "gitlab",
        }
    }
}

/// One configured forge: its kind, API base and token.
#[derive(Clone, PartialEq, Eq)]
pub struct Forge {
    pub kind: Kind,
    /// No trailing `/`.
    pub base: String,
    origin: Origin,
    token: String,
}

/// Scheme, lower-case host and port (the scheme's default when none).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn origin(url: &str) -> Option<Origin> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let split = if authority.starts_with('[') { authority.find(']').map(|i| i + 1) } else { authority.find(':') };
    let (host, port) = authority.split_at(split.unwrap_or(authority.len()));
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => default,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => return None,
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || ".-_[]:".contains(c);
    if host.is_empty() || !host.chars().all(ok) {
        return None;
    }
    Some(Origin { scheme, host: host.to_ascii_lowercase(), port })
}

/// Every configured forge. Debug output names kinds and bases, never tokens.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Forges(Vec<Forge>);

impl fmt::Debug for Forges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Forges({})", self.describe())
    }
}

impl Forges {
    /// Parses `<github|gitea|gitlab> <api base URL> <token>` lines (`#`
    /// comments and blank lines skipped). Errors name `source` and the line,
    /// never a token.
    pub fn parse(text: &str, source: &str) -> Result<Forges, ForgeLineError> {
        let mut all = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |kind| ForgeLineError { source: source.to_string(), line: i + 1, kind };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [kind, base, token] = fields[..] else { return Err(bad(ForgeLineKind::Fields(fields.len()))) };
            let kind = match kind.to_ascii_lowercase().as_str() {
                "github" => Kind::GitHub,
                "gitea" | "forgejo" => Kind::Gitea,
                "gitlab" => Kind::GitLab,
                _ => return Err(bad(ForgeLineKind::UnknownForge(kind.to_string()))),
            };
            let base = base.trim_end_matches('/');
            if base.contains(['?', '#']) {
                return Err(bad(ForgeLineKind::QueryInBase(base.to_string())));
            }
            let origin = origin(base).ok_or_else(|| bad(ForgeLineKind::NotAUrl(base.to_string())))?;
            let loopback = ["localhost", "[::1]"].contains(&origin.host.as_str()) || origin.host.starts_with("127.");
            if origin.scheme == "http" && !loopback {
                return Err(bad(ForgeLineKind::ClearText));
            }
            if token.chars().any(|c| c.is_control()) {
                return Err(bad(ForgeLineKind::ControlInToken));
            }
            all.push(Forge { kind, base: base.to_string(), origin, token: token.to_string() });
        }
        Ok(Forges(all))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `kind base fingerprint=…` of each forge, comma-separated (for logs).
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|f| format!("{} {} fingerprint={}", f.kind.name(), f.base, crate::signature::fingerprint(&f.token)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The lines again, for the handover at restart.
    pub fn lines(&self) -> String {
        self.0.iter().map(|f| format!("{} {} {}\n", f.kind.name(), f.base, f.token)).collect()
    }

    /// The forge whose token may be used for this push and the URL to post
    /// its status to; `None` when no configured forge matches what the
    /// payload says.
    pub fn target(&self, push: &Push) -> Option<(&Forge, String)> {
        let facts = &push.forge;
        let sha = &push.sha;
        self.0.iter().find_map(|f| {
            if facts.kind != f.kind.name() {
                return None;
            }
            let url = match f.kind {
                Kind::GitHub => {
                    // Under the base, whole path component: not api.github.com.evil.net.
                    let given = facts.statuses_url.as_deref()?;
                    let rest = given.get(..f.base.len()).filter(|s| s.eq_ignore_ascii_case(&f.base)).map(|_| &given[f.base.len()..])?;
                    if !rest.starts_with('/') {
                        return None;
                    }
                    format!("{}/repos/{}/statuses/{sha}", f.base, push.repo)
                }
                Kind::Gitea => {
                    (origin(facts.web_url.as_deref()?)? == f.origin).then_some(())?;
                    format!("{}/repos/{}/statuses/{sha}", f.base, push.repo)
                }
                Kind::GitLab => {
                    (origin(facts.web_url.as_deref()?)? == f.origin).then_some(())?;
                    format!("{}/projects/{}/statuses/{sha}", f.base, facts.project_id?)
                }
            };
            Some((f, url))
        })
    }
}

/// What happened to a build, as a status says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Started on this slave.
    Started {
        slave: String,
    },
    Passed {
        seconds: u64,
    },
    Failed {
        seconds: u64,
    },
    /// It could not run: the reason (a `* …` line of its log).
    Error {
        why: String,
    },
    /// Canceled (`POST /cancel`, or superseded by a newer commit): GitHub
    /// and Gitea have no such state, so `error` "canceled" (never `failure`).
    Canceled,
}

impl Event {
    /// The state in GitHub's and Gitea's words.
    fn state(&self) -> &'static str {
        match self {
            Event::Started { .. } => "pending",
            Event::Passed { .. } => "success",
            Event::Failed { .. } => "failure",
            Event::Error { .. } | Event::Canceled => "error",
        }
    }

    /// The state in GitLab's words (no `pending` once a build runs, no `error`).
    fn gitlab_state(&self) -> &'static str {
        match self {
            Event::Started { .. } => "running",
            Event::Passed { .. } => "success",
            Event::Failed { .. } | Event::Error { .. } => "failed",
            Event::Canceled => "canceled",
        }
    }

    fn description(&self) -> String {
        let text = match self {
            Event::Started { slave } => format!("running on {slave}"),
            Event::Passed { seconds } => format!("passed in {seconds} s"),
            Event::Failed { seconds } => format!("failed in {seconds} s"),
            Event::Error { why } => format!("could not run: {why}"),
            Event::Canceled => "canceled".to_string(),
        };
        if text.chars().count() <= MAX_DESCRIPTION {
            return text;
        }
        let mut cut: String = text.chars().take(MAX_DESCRIPTION - 3).collect();
        cut.push_str("...");
        cut
    }
}

/// The status's context (GitHub, Gitea) or name (GitLab) for builds of
/// `event`: `<prefix>/<event>` (SLAVE_STATUS_CONTEXT), a request's event
/// spelled `pr`.
pub fn context(prefix: &str, event: payload::Event) -> String {
    let word = match event {
        payload::Event::PullRequest => "pr",
        other => other.as_str(),
    };
    format!("{prefix}/{word}")
}

/// The ref GitLab files the status under (without one it picks a branch
/// holding the commit, and answers 404 when none does): the tag's name,
/// the request's source branch, else the pushed branch. A manual or
/// scheduled build is of a push of one of these.
pub fn gitlab_ref(push: &Push) -> &str {
    match (&push.tag, &push.pull) {
        (Some(tag), _) => tag,
        (None, Some(pull)) => &pull.head_branch,
        (None, None) => &push.branch,
    }
}

/// Which status of a commit an update is: what the build is (`context`,
/// `gitlab_ref`) beyond its forge and commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub context: String,
    /// GitLab only.
    pub git_ref: Option<String>,
}

impl Label {
    pub fn of(kind: Kind, prefix: &str, push: &Push) -> Label {
        Label { context: context(prefix, push.event), git_ref: (kind == Kind::GitLab).then(|| gitlab_ref(push).to_string()) }
    }
}

/// One status to post.
struct Update {
    forge: Forge,
    url: String,
    label: Label,
    body: String,
    repo: String,
    sha: String,
    state: &'static str,
    attempts: u32,
    due: Instant,
}

impl Update {
    /// `repo=… sha=… context=… state=… forge=…`: what every line about it says.
    fn facts(&self) -> String {
        format!(
            "repo={} sha={} context={} state={} forge={}",
            quote(&self.repo),
            short_sha(&self.sha),
            self.label.context,
            self.state,
            self.forge.kind.name()
        )
    }
}

/// The JSON body of a status for `kind`.
pub fn body(kind: Kind, event: &Event, label: &Label, target_url: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({ "description": event.description() });
    match kind {
        Kind::GitHub | Kind::Gitea => {
            v["state"] = event.state().into();
            v["context"] = label.context.as_str().into();
        }
        Kind::GitLab => {
            v["state"] = event.gitlab_state().into();
            v["name"] = label.context.as_str().into();
        }
    }
    if let Some(r) = &label.git_ref {
        v["ref"] = r.as_str().into();
    }
    if let Some(u) = target_url {
        v["target_url"] = u.into();
    }
    v
}

/// How the poster behaves (SLAVE_FORGE_TIMEOUT, SLAVE_FORGE_ATTEMPTS, CI_PUBLIC_URL).
pub(crate) use crate::config::ForgeSettings as Settings;

/// A line of SLAVE_FORGES (or its file) that is not a forge: where, and why.
#[derive(Debug)]
pub struct ForgeLineError {
    /// The variable or `NAME="path"`.
    source: String,
    line: usize,
    kind: ForgeLineKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForgeLineKind {
    /// Not three fields: how many there were.
    Fields(usize),
    UnknownForge(String),
    /// The API base URL holds `?` or `#`.
    QueryInBase(String),
    NotAUrl(String),
    /// http:// to a host other than the loopback.
    ClearText,
    ControlInToken,
}

impl fmt::Display for ForgeLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, line {}: ", self.source, self.line)?;
        match &self.kind {
            ForgeLineKind::Fields(n) => write!(f, "{n} fields")?,
            ForgeLineKind::UnknownForge(kind) => write!(f, "unknown forge {kind:?}")?,
            ForgeLineKind::QueryInBase(base) => write!(f, "{base:?} cannot hold `?` or `#`")?,
            ForgeLineKind::NotAUrl(base) => write!(f, "{base:?} is not an http(s) URL with a host")?,
            ForgeLineKind::ClearText => f.write_str(
                "http:// is refused: the token would travel in clear text; write https:// (http is for 127.0.0.1 and localhost only)",
            )?,
            ForgeLineKind::ControlInToken => f.write_str("the token holds control characters")?,
        }
        f.write_str("; expected `<github|gitea|gitlab> <api base URL> <token>`")
    }
}

impl std::error::Error for ForgeLineError {}

/// The slave's handle on the poster thread.
pub struct Poster {
    forges: Forges,
    public_url: Option<String>,
    /// SLAVE_STATUS_CONTEXT.
    context: String,
    tx: Option<Sender<Update>>,
    dropped: Arc<AtomicU64>,
}

impl Poster {
    /// Starts the poster thread when forges are configured.
    pub fn spawn(forges: Forges, settings: Settings, redis_url: &crate::store::conn::Target) -> Result<Poster, StartError> {
        let dropped = Arc::new(AtomicU64::new(0));
        if forges.is_empty() {
            return Ok(Poster { forges, public_url: settings.public_url, context: settings.context, tx: None, dropped });
        }
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let redis = Redis::open(redis_url, Duration::from_secs(5));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(settings.timeout))
            .http_status_as_error(false)
            // A redirect would carry PRIVATE-TOKEN (a plain header) to wherever it points.
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .tls_config(crate::slave::trust::tls())
            .build()
            .into();
        let counter = Arc::clone(&dropped);
        let attempts = settings.attempts;
        std::thread::Builder::new()
            .name("forge-status".into())
            .spawn(move || post_loop(&rx, agent, redis, &counter, attempts))
            .map_err(StartError::thread("the forge status thread"))?;
        Ok(Poster { forges, public_url: settings.public_url, context: settings.context, tx: Some(tx), dropped })
    }

    /// Queues the status of build `id` for its forge, if one is configured
    /// for it. Never blocks: a full queue drops it (WARN, counted).
    pub fn report(&self, id: &str, push: &Push, event: Event) {
        let Some(tx) = &self.tx else { return };
        let Some((forge, url)) = self.forges.target(push) else {
            if !push.forge.kind.is_empty() {
                log::debug!("forge.no_target repo={} forge={}: no configured forge matches this push", quote(&push.repo), push.forge.kind);
            }
            return;
        };
        let target = self.public_url.as_ref().map(|u| format!("{u}/builds/{id}"));
        let state = if forge.kind == Kind::GitLab { event.gitlab_state() } else { event.state() };
        let label = Label::of(forge.kind, &self.context, push);
        let update = Update {
            forge: forge.clone(),
            url,
            body: body(forge.kind, &event, &label, target.as_deref()).to_string(),
            label,
            repo: push.repo.clone(),
            sha: push.sha.clone(),
            state,
            attempts: 0,
            due: Instant::now(),
        };
        if let Err(TrySendError::Full(u) | TrySendError::Disconnected(u)) = tx.try_send(update) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            log::warn!("forge.status_dropped {}: the status queue is full", u.facts());
        }
    }
}

/// Delay before attempt `n` (1-based, n ≥ 2): 2, 4, 8, 16 s …
fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.saturating_sub(1).clamp(1, 5))
}

fn count(redis: &mut Redis, result: &str, n: u64) {
    if n == 0 {
        return;
    }
    if let Err(e) = redis.run(|c| stats::count_forge_status(c, result, n)) {
        log::warn!("forge.count_lost result={result} n={n} error={}", quote(&e.to_string()));
    }
}

/// The poster: due updates in order; a newer status for the same commit
/// replaces one still waiting to be retried (the latest state wins).
fn post_loop(rx: &Receiver<Update>, agent: ureq::Agent, mut redis: Redis, dropped: &AtomicU64, max_attempts: u32) {
    let mut waiting: Vec<Update> = Vec::new();
    loop {
        count(&mut redis, "dropped", dropped.swap(0, Ordering::SeqCst));
        let now = Instant::now();
        let wait = waiting.iter().map(|u| u.due.saturating_duration_since(now)).min().unwrap_or(Duration::from_secs(1));
        match rx.recv_timeout(wait.min(Duration::from_secs(1))) {
            Ok(u) => supersede(&mut waiting, u, &mut redis),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) if waiting.is_empty() => return,
            // The slave is stopping: retries still due are tried (no busy wait) until done.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => std::thread::sleep(wait.min(Duration::from_secs(1))),
        }
        // Everything that arrived meanwhile first, so a stale state is not posted.
        while let Ok(u) = rx.try_recv() {
            supersede(&mut waiting, u, &mut redis);
        }
        let now = Instant::now();
        let Some(i) = waiting.iter().position(|u| u.due <= now) else { continue };
        let mut u = waiting.remove(i);
        u.attempts += 1;
        let started = Instant::now();
        let result = send(&agent, &u);
        let ms = started.elapsed().as_millis();
        let facts = u.facts();
        match result {
            Ok(code) => {
                log::info!("forge.status {facts} code={code} ms={ms} attempt={}", u.attempts);
                count(&mut redis, "sent", 1);
                continue;
            }
            // Both are retried: a 4xx may be a forge that does not know the commit yet.
            Err(SendError::Refused(code)) => log::warn!("forge.status {facts} code={code} ms={ms} attempt={}", u.attempts),
            Err(SendError::Unreachable(e)) => log::warn!("forge.status {facts} code=- ms={ms} attempt={} error={}", u.attempts, quote(&e)),
        }
        if u.attempts >= max_attempts {
            log::warn!("forge.status_failed {facts} attempts={}: giving up on this status", u.attempts);
            count(&mut redis, "failed", 1);
            continue;
        }
        u.due = Instant::now() + backoff(u.attempts + 1);
        waiting.push(u);
    }
}

/// Queues `u`. The same status (commit, context, ref) that already failed
/// once and waits for its retry is given up (counted failed): posted after
/// `u`, it would show a stale state. One never tried yet goes first, in
/// order. Another event's status of the commit is another status: kept.
fn supersede(waiting: &mut Vec<Update>, u: Update, redis: &mut Redis) {
    let before = waiting.len();
    waiting.retain(|w| {
        let stale = w.url == u.url && w.label == u.label && w.attempts > 0;
        if stale {
            log::warn!(
                "forge.status_failed repo={} sha={} context={} state={} forge={} attempts={}: superseded by state={} before its retry",
                quote(&w.repo),
                short_sha(&w.sha),
                w.label.context,
                w.state,
                w.forge.kind.name(),
                w.attempts,
                u.state
            );
        }
        !stale
    });
    count(redis, "failed", (before - waiting.len()) as u64);
    waiting.push(u);
}

/// Why a commit status was not posted.
#[derive(Debug)]
enum SendError {
    /// The forge answered with this non-2xx code: transient for 5xx and
    /// 429, fatal for the other 4xx (the token, the repository, the body).
    Refused(u16),
    /// No answer: the connection, TLS, the timeout (transient). Never the token.
    Unreachable(String),
}

/// One POST; its 2xx code, or why it was not taken.
fn send(agent: &ureq::Agent, u: &Update) -> Result<u16, SendError> {
    let req = agent.post(&u.url).header("Content-Type", "application/json");
    let req = match u.forge.kind {
        Kind::GitHub => req.header("Authorization", format!("Bearer {}", u.forge.token)).header("Accept", "application/vnd.github+json"),
        Kind::Gitea => req.header("Authorization", format!("token {}", u.forge.token)).header("Accept", "application/json"),
        Kind::GitLab => req.header("PRIVATE-TOKEN", &u.forge.token).header("Accept", "application/json"),
    };
    match req.send(u.body.as_bytes()) {
        Ok(mut resp) => {
            // Read (a little of) the body so the connection can be reused.
            let _ = resp.body_mut().with_config().limit(64 * 1024).read_to_vec();
            match resp.status().as_u16() {
                code @ 200..=299 => Ok(code),
                code => Err(SendError::Refused(code)),
            }
        }
        Err(e) => Err(SendError::Unreachable(e.to_string().replace(&u.forge.token, "***"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::ForgeFacts;

    fn push(kind: &str, web: Option<&str>, statuses: Option<&str>, id: Option<u64>) -> Push {
        Push {
            repo: "acme/app".into(),
            branch: "main".into(),
            sha: "ab".repeat(20),
            before: None,
            clone_url: "https://x/acme/app.git".into(),
            default_branch: None,
            message: String::new(),
            hints: vec![],
            forge: ForgeFacts {
                kind: kind.into(),
                web_url: web.map(String::from),
                statuses_url: statuses.map(String::from),
                project_id: id,
            },
            pull: None,
            tag: None,
            fork: false,
            event: payload::Event::Push,
            params: Default::default(),
        }
    }

    fn forges() -> Forges {
        Forges::parse(
            "# ops\ngithub https://api.github.com/ ghp_T1\ngitea https://git.example.com:8443/api/v1 gt_T2\n\ngitlab https://gl.example.com/api/v4 gl_T3",
            "SLAVE_FORGES",
        )
        .unwrap()
    }

    fn url(p: &Push) -> Option<String> {
        forges().target(p).map(|(_, u)| u)
    }

    #[test]
    fn github_statuses_url_must_lie_under_the_base_and_the_url_is_built_from_it() {
        let sha = "ab".repeat(20);
        let want = format!("https://api.github.com/repos/acme/app/statuses/{sha}");
        assert_eq!(url(&push("github", None, Some("https://api.github.com/repos/other/x/statuses/{sha}"), None)), Some(want.clone()));
        assert_eq!(url(&push("github", None, Some("HTTPS://API.GITHUB.COM/repos/a/b/statuses/{sha}"), None)), Some(want));
        for bad in [
            "https://api.github.com.evil.net/repos/a/b/statuses/{sha}",
            "https://api.github.comevil/x",
            "http://api.github.com/repos/a/b/statuses/{sha}",
            "https://evil.net/https://api.github.com/",
            "https://api.github.com",
        ] {
            assert_eq!(url(&push("github", None, Some(bad), None)), None, "{bad}");
        }
        assert_eq!(url(&push("github", Some("https://api.github.com/x"), None, None)), None, "no statuses_url");
        assert_eq!(url(&push("gitea", None, Some("https://api.github.com/repos/a/b/statuses/{sha}"), None)), None, "another kind");
    }

    #[test]
    fn gitea_and_gitlab_need_the_same_scheme_host_and_port() {
        let sha = "ab".repeat(20);
        assert_eq!(
            url(&push("gitea", Some("https://GIT.example.com:8443/acme/app"), None, None)),
            Some(format!("https://git.example.com:8443/api/v1/repos/acme/app/statuses/{sha}"))
        );
        for bad in [
            "https://git.example.com/acme/app",
            "http://git.example.com:8443/acme/app",
            "https://git.example.com.evil:8443/x",
            "https://git.example.com:8443@evil.net/x",
            "https://evil.net/git.example.com:8443",
        ] {
            assert_eq!(url(&push("gitea", Some(bad), None, None)), None, "{bad}");
        }
        assert_eq!(
            url(&push("gitlab", Some("https://gl.example.com:443/mike/diaspora"), None, Some(15))),
            Some(format!("https://gl.example.com/api/v4/projects/15/statuses/{sha}"))
        );
        assert_eq!(url(&push("gitlab", Some("https://gl.example.com/mike/diaspora"), None, None)), None, "no project id");
        assert_eq!(url(&push("gitlab", Some("http://gl.example.com/mike/diaspora"), None, Some(15))), None, "http is another origin");
        assert_eq!(url(&push("", Some("https://gl.example.com/x"), None, Some(15))), None, "old record: no kind");
    }

    #[test]
    fn bad_lines_are_refused_without_the_token() {
        for (text, want) in [
            ("github https://h", "2 fields"),
            ("bitbucket https://h SECRET", "unknown forge"),
            ("github ftp://h SECRET", "is not an http(s) URL"),
            ("github https://u:p@h SECRET", "is not an http(s) URL"),
            ("github https://h/?x SECRET", "cannot hold"),
            ("github https://h SECRET extra", "4 fields"),
            ("gitea http://git.example.com/api/v1 SECRET", "http:// is refused"),
        ] {
            let err = Forges::parse(&format!("gitlab https://ok tok\n{text}"), "SLAVE_FORGES").unwrap_err().to_string();
            assert!(err.starts_with("SLAVE_FORGES, line 2: "), "{text}: {err}");
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("SECRET"), "{text}: {err}");
        }
        for local in ["http://127.0.0.1:3000/api/v1", "http://localhost/api/v4", "http://[::1]:8080"] {
            assert!(Forges::parse(&format!("gitea {local} tok"), "t").is_ok(), "{local}");
        }
        let f = forges();
        assert!(!format!("{f:?}").contains("_T1") && !f.describe().contains("_T2"), "{}", f.describe());
        assert_eq!(Forges::parse(&f.lines(), "handover").unwrap(), f);
    }

    #[test]
    fn bodies_per_forge() {
        let e = Event::Passed { seconds: 12 };
        let hub = Label { context: "ci-backend/push".into(), git_ref: None };
        let lab = Label { context: "ci-backend/tag".into(), git_ref: Some("v1.2".into()) };
        assert_eq!(
            body(Kind::GitHub, &e, &hub, Some("https://ci/builds/7")),
            serde_json::json!({"state": "success", "target_url": "https://ci/builds/7", "description": "passed in 12 s", "context": "ci-backend/push"})
        );
        assert_eq!(
            body(Kind::GitLab, &Event::Error { why: "integration.yml missing".into() }, &lab, None),
            serde_json::json!({"state": "failed", "description": "could not run: integration.yml missing", "name": "ci-backend/tag", "ref": "v1.2"})
        );
        assert_eq!(body(Kind::GitLab, &Event::Started { slave: "s-0".into() }, &lab, None)["state"], "running");
        assert_eq!(body(Kind::Gitea, &Event::Failed { seconds: 1 }, &hub, None)["state"], "failure");
        assert_eq!(body(Kind::GitHub, &Event::Canceled, &hub, None)["state"], "error");
        assert_eq!(body(Kind::GitHub, &Event::Canceled, &hub, None)["description"], "canceled");
        assert_eq!(body(Kind::Gitea, &Event::Canceled, &hub, None)["state"], "error");
        assert_eq!(body(Kind::GitLab, &Event::Canceled, &lab, None)["state"], "canceled");
        let long = body(Kind::GitHub, &Event::Error { why: "é".repeat(300) }, &hub, None);
        assert_eq!(long["description"].as_str().unwrap().chars().count(), 140);
    }

    #[test]
    fn contexts_per_event_with_pr_for_requests() {
        let want = ["acme-ci/push", "acme-ci/pr", "acme-ci/tag", "acme-ci/cron", "acme-ci/manual"];
        let got: Vec<String> = payload::Event::ALL.iter().map(|e| context("acme-ci", *e)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn gitlab_statuses_carry_the_branch_the_tag_or_the_requests_source_branch() {
        use payload::{Event as E, Pull};
        let branch = push("gitlab", None, None, Some(1));
        let tag = Push { branch: "tags/v1.2".into(), tag: Some("v1.2".into()), event: E::Tag, ..branch.clone() };
        let pull = Pull { number: 6, base_branch: "main".into(), head_branch: "feature/x".into(), head_repo: "them/app".into() };
        let request = Push { branch: "merge-requests/6".into(), pull: Some(pull), event: E::PullRequest, ..branch.clone() };
        for (p, context, git_ref) in [
            (&branch, "ci/push", "main"),
            (&tag, "ci/tag", "v1.2"),
            (&request, "ci/pr", "feature/x"),
            // A rebuild or a schedule is of one of these: its ref, its own context.
            (&Push { event: E::Manual, ..request.clone() }, "ci/manual", "feature/x"),
            (&Push { event: E::Cron, ..branch.clone() }, "ci/cron", "main"),
        ] {
            let want = Label { context: context.into(), git_ref: Some(git_ref.into()) };
            assert_eq!(Label::of(Kind::GitLab, "ci", p), want, "{:?}", p.event);
            assert_eq!(Label::of(Kind::GitHub, "ci", p), Label { git_ref: None, ..want.clone() }, "only GitLab's carry a ref");
            assert_eq!(Label::of(Kind::Gitea, "ci", p).git_ref, None);
        }
    }

    #[test]
    fn a_retry_is_superseded_by_its_own_status_only() {
        let f = forges();
        let gh = f.0.iter().find(|f| f.kind == Kind::GitHub).unwrap().clone();
        let update = |context: &str, attempts: u32| Update {
            forge: gh.clone(),
            url: "https://api.github.com/repos/acme/app/statuses/ab".into(),
            label: Label { context: context.into(), git_ref: None },
            body: String::new(),
            repo: "acme/app".into(),
            sha: "ab".into(),
            state: "pending",
            attempts,
            due: Instant::now(),
        };
        // No Redis listens there: a count given up is lost with a WARN, the queue is still right.
        let mut redis = Redis::open(&crate::store::conn::Target::url("redis://127.0.0.1:1/0"), Duration::from_millis(100));
        let mut waiting = vec![update("ci-backend/push", 1)];
        supersede(&mut waiting, update("ci-backend/pr", 0), &mut redis);
        let contexts: Vec<&str> = waiting.iter().map(|u| u.label.context.as_str()).collect();
        assert_eq!(contexts, ["ci-backend/push", "ci-backend/pr"], "the request's status does not replace the push's");
        supersede(&mut waiting, update("ci-backend/push", 0), &mut redis);
        let contexts: Vec<(&str, u32)> = waiting.iter().map(|u| (u.label.context.as_str(), u.attempts)).collect();
        assert_eq!(contexts, [("ci-backend/pr", 0), ("ci-backend/push", 0)], "the push's retry is given up for its newer state");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let poster =
            Poster { forges: forges(), public_url: None, context: "ci-backend".into(), tx: Some(tx), dropped: Arc::new(AtomicU64::new(0)) };
        let p = push("github", None, Some("https://api.github.com/repos/acme/app/statuses/{sha}"), None);
        poster.report("1", &p, Event::Started { slave: "s-0".into() });
        poster.report("1", &p, Event::Passed { seconds: 1 });
        poster.report("2", &push("gitea", Some("https://elsewhere/x"), None, None), Event::Passed { seconds: 1 });
        assert_eq!(poster.dropped.load(Ordering::SeqCst), 1, "the second is dropped; the third has no forge");
        assert_eq!(rx.try_recv().map(|u| u.state).ok(), Some("pending"));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn backoff_doubles_from_two_seconds() {
        let secs: Vec<u64> = (2..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32]);
    }
}
