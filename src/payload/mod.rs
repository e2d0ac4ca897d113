//! A sender's web-hook body → one normalized [`Push`], or the reason no build
//! is needed. No I/O; each sender's field names live in its own module.

mod event;
mod gitea;
mod github;
mod gitlab;
pub mod params;

pub use event::Event;
pub use params::Params;

use std::fmt;

/// A push, as every sender's payload is normalized for queuing and building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Full name, `owner/name` (GitLab groups may add more `/`).
    pub repo: String,
    pub branch: String,
    /// The pushed commit, full hex.
    pub sha: String,
    /// The branch's commit before the push (the payload's `before`), full
    /// hex: what `when: path` diffs against. `None` when unknown: a new
    /// branch (all zeros), a request (diffed against its target), a job of
    /// an earlier version, a build that replaced a queued one.
    pub before: Option<String>,
    pub clone_url: String,
    pub default_branch: Option<String>,
    pub message: String,
    /// Capabilities asked for by the hook's path (`/JDK8+SBT`), kept for re-runs.
    pub hints: Vec<String>,
    /// Where commit statuses could go, as the (untrusted) payload names it.
    pub forge: ForgeFacts,
    /// A pull/merge request's facts; `branch` is then `pull/<N>` or
    /// `merge-requests/<N>`. Absent in pushes and older records.
    pub pull: Option<Pull>,
    /// A tag push's tag name; `branch` is then `tags/<name>`.
    pub tag: Option<String>,
    /// The request's head lives in another repository: code from outside
    /// the team, built (if at all) with nothing of the slave's environment.
    pub fork: bool,
    /// Why it is built: a sender's push, tag or request; whoever queues it
    /// again says `manual` or `cron`.
    pub event: Event,
    /// A manual run's parameters (`POST /build`'s `env`); none otherwise.
    pub params: Params,
}

/// What a pull/merge request names besides its head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pull {
    /// GitHub/Gitea `number`, GitLab `iid`.
    pub number: u64,
    pub base_branch: String,
    pub head_branch: String,
    /// The head repository's full name (the fork's, or the target's own).
    pub head_repo: String,
}

/// What the hook's settings allow beyond branch pushes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Policy {
    /// HOOK_BUILD_TAGS.
    pub build_tags: bool,
    /// HOOK_FORK_PULLS=build.
    pub fork_pulls: bool,
}

/// Which forge sent a push and what its payload says about the repository's
/// place there. Chosen by whoever holds the shared web-hook token: the slave
/// sends a forge token only when these match a configured forge (see
/// `crate::slave::forge`). Absent in records queued by earlier versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForgeFacts {
    /// `github`, `gitea` or `gitlab`; empty when unknown.
    pub kind: String,
    /// The repository's web page (`repository.html_url`, `project.web_url`).
    pub web_url: Option<String>,
    /// GitHub's `repository.statuses_url` (`…/statuses/{sha}`).
    pub statuses_url: Option<String>,
    /// GitLab's numeric project id (`project.id`, `project_id`).
    pub project_id: Option<u64>,
}

impl ForgeFacts {
    /// Keeps only URLs that are short, printable and http(s).
    fn url(value: Option<&str>) -> Option<String> {
        let v = value?;
        let lower = v.get(..8).unwrap_or(v).to_ascii_lowercase();
        let ok = v.len() <= 500
            && !v.chars().any(|c| c.is_control() || c.is_whitespace())
            && (lower.starts_with("https://") || lower.starts_with("http://"));
        ok.then(|| v.to_string())
    }
}

impl Push {
    /// The ref of the cloned repository that holds the commit, fetched into
    /// the mirror under the same name: a branch, the target's own
    /// `refs/pull/<N>/head` / `refs/merge-requests/<N>/head`, or a tag.
    pub fn source_ref(&self) -> String {
        if let Some(tag) = &self.tag {
            return format!("refs/tags/{tag}");
        }
        match (&self.pull, self.forge.kind.as_str()) {
            (Some(p), "gitlab") => format!("refs/merge-requests/{}/head", p.number),
            (Some(p), _) => format!("refs/pull/{}/head", p.number),
            (None, _) => format!("refs/heads/{}", self.branch),
        }
    }
}

/// What a delivery asks for. One per request, never in a collection: the
/// size of `Push` costs nothing worth a box.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Delivery {
    Build(Push),
    /// Answered 200 with this reason: ping, other events, tags.
    NoBuild(String),
    /// A branch deleted or a request closed or merged: answered 200 with
    /// the reason, no build; it leaves the listings.
    Gone(Gone),
}

/// A branch that no longer exists on its forge: deleted by a push (`tags/<name>`
/// for a tag), or a request's `pull/<N>` / `merge-requests/<N>` closed or merged.
/// Its names passed [`check_repo`] and [`check_branch`].
#[derive(Debug, PartialEq, Eq)]
pub struct Gone {
    pub repo: String,
    pub branch: String,
    pub reason: String,
}

impl Gone {
    /// The gone branch, when its names pass the names rules (else why not:
    /// answered 400 like any bad name).
    pub(crate) fn of(repo: Option<&str>, branch: &str, reason: String) -> Result<Delivery, PayloadError> {
        let repo = repo.ok_or_else(|| PayloadError(format!("{reason}, but the body names no repository")))?;
        check_repo(repo)?;
        check_branch(branch)?;
        Ok(Delivery::Gone(Gone { repo: repo.to_string(), branch: branch.to_string(), reason }))
    }
}

/// The longest title a record keeps, in characters.
pub const TITLE_MAX: usize = 200;

/// A commit message's (or request title's) first line as the dashboard shows
/// it: trimmed, without control or invisible format characters, at most
/// [`TITLE_MAX`] characters.
pub fn title(message: &str) -> String {
    let first = message.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    first.chars().filter(|c| !c.is_control() && !is_format(*c)).take(TITLE_MAX).collect()
}

/// A body that cannot be understood (answered 400).
#[derive(Debug, PartialEq, Eq)]
pub struct PayloadError(pub String);

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The request facts the parser needs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    pub content_type: Option<&'a str>,
    /// `X-GitHub-Event` (also sent by Gitea), `X-Gitea-Event`, `X-Gogs-Event`.
    pub github_event: Option<&'a str>,
    pub gitea_event: Option<&'a str>,
    pub gitlab_event: Option<&'a str>,
    /// Bitbucket's `X-Event-Key`.
    pub event_key: Option<&'a str>,
    pub body: &'a [u8],
    /// Which tag pushes and fork requests are built.
    pub policy: Policy,
}

/// Parses a delivery. Unknown and non-push events are `NoBuild`, never errors:
/// GitLab disables a hook that keeps receiving 4xx.
pub fn parse(req: &Request) -> Result<Delivery, PayloadError> {
    let body = decode_body(req)?;
    let delivery = parse_event(req, &body)?;
    Ok(match delivery {
        Delivery::Build(p) if p.fork && !req.policy.fork_pulls => {
            let pull = p.pull.as_ref().map_or(0, |x| x.number);
            let head = p.pull.as_ref().map_or("", |x| x.head_repo.as_str());
            Delivery::NoBuild(format!("request {pull} comes from the fork {head:?}: fork requests are not built (HOOK_FORK_PULLS=ignore)"))
        }
        other => other,
    })
}

fn parse_event(req: &Request, body: &[u8]) -> Result<Delivery, PayloadError> {
    if let Some(event) = req.gitlab_event {
        return gitlab::parse(event, body, req.policy.build_tags);
    }
    if let Some(event) = req.event_key {
        check_json(body)?;
        return Ok(Delivery::NoBuild(format!(
            "event {event:?} is not supported: only pushes from GitHub, Gitea/Forgejo and GitLab are built"
        )));
    }
    if let Some(event) = req.gitea_event {
        return gitea::parse(event, body, req.policy.build_tags);
    }
    match req.github_event {
        Some(event) => github::parse(event, body, req.policy.build_tags),
        // No event header: a body shaped like a push is taken as one.
        None => github::parse_headerless(body, req.policy.build_tags),
    }
}

/// The JSON text of the body: as sent, or the `payload=` field of a form.
fn decode_body<'a>(req: &Request<'a>) -> Result<std::borrow::Cow<'a, [u8]>, PayloadError> {
    let ctype = req.content_type.unwrap_or("application/json");
    let mime = ctype.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let text: std::borrow::Cow<[u8]> = match mime.as_str() {
        "application/json" | "text/json" | "" => req.body.into(),
        m if m.ends_with("+json") => req.body.into(),
        "application/x-www-form-urlencoded" => form_payload(req.body)?.into(),
        other => {
            return Err(PayloadError(format!(
                "unsupported content type {other:?}: send application/json or application/x-www-form-urlencoded"
            )))
        }
    };
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(PayloadError("empty body: expected a JSON web-hook payload".into())),
        Some(b'{') => Ok(text),
        Some(_) => Err(PayloadError("malformed payload: expected a JSON object".into())),
    }
}

/// Deserializes the fields a sender module asks for; others are skipped.
/// A field of the wrong type is named (serde's own message has no path).
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(body).map_err(|e| {
        let wrong = (e.classify() == serde_json::error::Category::Data).then(|| wrong_type(body)).flatten();
        match wrong {
            Some(field) => PayloadError(format!("malformed payload: {field}")),
            None => PayloadError(format!("malformed JSON payload: {e}")),
        }
    })
}

/// Bodies up to this size get the field that has the wrong type named in
/// their error (read into a document: about ten times the body in memory).
const WRONG_TYPE_MAX: usize = 1024 * 1024;

/// The slow path of an error only: which field we read has the wrong type.
/// Larger bodies get serde's own words: no document of 25 MB is built.
fn wrong_type(body: &[u8]) -> Option<String> {
    if body.len() > WRONG_TYPE_MAX {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    const STRINGS: &[&str] = &[
        "/ref",
        "/after",
        "/repository/full_name",
        "/repository/clone_url",
        "/repository/default_branch",
        "/repository/git_http_url",
        "/project/path_with_namespace",
        "/project/git_http_url",
        "/project/default_branch",
        "/head_commit/message",
    ];
    const OBJECTS: &[&str] = &["/repository", "/project", "/head_commit"];
    let kind = |x: &serde_json::Value| match x {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    let field = |path: &str| path.trim_start_matches('/').replace('/', ".");
    for path in OBJECTS {
        if let Some(x) = v.pointer(path).filter(|x| !x.is_object() && !x.is_null()) {
            return Some(format!("field \"{}\" must be an object, not {}", field(path), kind(x)));
        }
    }
    for path in STRINGS {
        if let Some(x) = v.pointer(path).filter(|x| !x.is_string() && !x.is_null()) {
            return Some(format!("field \"{}\" must be a string, not {}", field(path), kind(x)));
        }
    }
    match v.get("commits") {
        Some(c) if !c.is_array() && !c.is_null() => Some(format!("field \"commits\" must be an array, not {}", kind(c))),
        _ => None,
    }
}

/// Checks the body is well-formed JSON without building anything.
pub(crate) fn check_json(body: &[u8]) -> Result<(), PayloadError> {
    from_json::<serde::de::IgnoredAny>(body).map(drop)
}

/// The `payload=` field of a form-encoded body (GitHub's other content type).
fn form_payload(body: &[u8]) -> Result<Vec<u8>, PayloadError> {
    for pair in body.split(|b| *b == b'&') {
        if let Some(value) = pair.strip_prefix(b"payload=") {
            return percent_decode(value).ok_or_else(|| PayloadError("malformed form body: bad percent-encoding in payload".into()));
        }
    }
    Err(PayloadError("form-encoded body has no payload= field".into()))
}

/// Percent-encoding (RFC 3986): the unreserved bytes (`A-Za-z0-9-._~`) and
/// those in `keep` stay, every other byte becomes `%XX`.
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
pub fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(input.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Shared by the senders: a push's `ref`, `after` and repository facts →
/// a build, or why none is needed.
pub(crate) struct RawPush<'a> {
    pub git_ref: Option<&'a str>,
    pub sha: Option<&'a str>,
    /// The payload's `before`; kept only when a full hex sha, not all zeros.
    pub before: Option<&'a str>,
    pub repo: Option<&'a str>,
    pub clone_url: Option<&'a str>,
    pub default_branch: Option<&'a str>,
    pub message: Option<&'a str>,
    pub deleted: bool,
    /// `github`, `gitea` or `gitlab`.
    pub forge: &'static str,
    pub web_url: Option<&'a str>,
    pub statuses_url: Option<&'a str>,
    pub project_id: Option<u64>,
    /// A request's facts: the branch is then `pull/<N>` (`merge-requests/<N>`).
    pub pull: Option<Pull>,
    pub fork: bool,
    /// For a tag push: the commit the payload names (GitHub `head_commit.id`),
    /// preferred to `after`, which may be an annotated tag's object.
    pub tag_commit: Option<&'a str>,
    /// HOOK_BUILD_TAGS: off, a tag push is answered without a build.
    pub build_tags: bool,
    /// Where this sender's body holds the fields, for errors naming one missing.
    pub names: &'static Names,
}

/// Where a sender's body holds a build's fields, as a missing one is named:
/// `missing field: project.path_with_namespace (the repository's full name
/// in a GitLab Push Hook body)` tells a sender which header the hook read.
pub(crate) struct Names {
    /// `GitHub push`, `GitLab Push Hook`, …: the body the event header announced.
    pub body: &'static str,
    pub git_ref: &'static str,
    pub sha: &'static str,
    pub repo: &'static str,
    pub clone_url: &'static str,
}

impl Names {
    fn missing(&self, path: &str, what: &str) -> PayloadError {
        PayloadError(format!("missing field: {path} (the {what} in a {} body)", self.body))
    }
}

pub(crate) fn normalize(raw: RawPush) -> Result<Delivery, PayloadError> {
    let names = raw.names;
    let git_ref = raw.git_ref.ok_or_else(|| names.missing(names.git_ref, "pushed ref"))?;
    let zero = |s: &str| !s.is_empty() && s.bytes().all(|b| b == b'0');
    let (branch, tag, sha) = if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
        if !raw.build_tags {
            return Ok(Delivery::NoBuild(format!("tag push {tag:?}: tags are not built (HOOK_BUILD_TAGS=0)")));
        }
        if raw.deleted || raw.sha.is_some_and(zero) {
            return Gone::of(raw.repo, &format!("tags/{tag}"), format!("tag {tag:?} deleted: nothing to build"));
        }
        check_branch(tag).map_err(|e| PayloadError(format!("tag: {}", e.0)))?;
        (format!("tags/{tag}"), Some(tag.to_string()), raw.tag_commit.or(raw.sha))
    } else if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        if raw.deleted || raw.sha.is_some_and(zero) {
            return Gone::of(raw.repo, branch, format!("branch {branch:?} deleted: nothing to build"));
        }
        (branch.to_string(), None, raw.sha)
    } else if raw.pull.is_some() {
        (git_ref.to_string(), None, raw.sha)
    } else {
        return Ok(Delivery::NoBuild(format!("push to {git_ref:?}: only branches are built")));
    };
    let branch = branch.as_str();
    let sha = sha.ok_or_else(|| names.missing(names.sha, "commit to build"))?;
    let repo = raw.repo.ok_or_else(|| names.missing(names.repo, "repository's full name"))?;
    let clone_url = raw.clone_url.ok_or_else(|| names.missing(names.clone_url, "repository's clone URL"))?;
    check_repo(repo)?;
    check_branch(branch)?;
    if let Some(p) = &raw.pull {
        check_branch(&p.base_branch).map_err(|e| PayloadError(format!("base {}", e.0)))?;
        check_branch(&p.head_branch).map_err(|e| PayloadError(format!("head {}", e.0)))?;
        check_repo(&p.head_repo).map_err(|e| PayloadError(format!("head {}", e.0)))?;
    }
    if !full_sha(sha) {
        return Err(PayloadError(format!("commit {sha:?} is not a full hex sha")));
    }
    if clone_url.is_empty() || clone_url.starts_with('-') || clone_url.chars().any(char::is_control) {
        return Err(PayloadError(format!("clone URL {clone_url:?} is not usable")));
    }
    Ok(Delivery::Build(Push {
        repo: repo.to_string(),
        branch: branch.to_string(),
        sha: sha.to_ascii_lowercase(),
        before: raw.before.filter(|b| full_sha(b) && !zero(b)).map(str::to_ascii_lowercase),
        clone_url: clone_url.to_string(),
        // Named by the (hostile) payload and stored per repository: the names rules bound it.
        default_branch: raw.default_branch.filter(|b| check_branch(b).is_ok()).map(String::from),
        message: raw.message.unwrap_or("").to_string(),
        hints: Vec::new(),
        forge: ForgeFacts {
            kind: raw.forge.to_string(),
            web_url: ForgeFacts::url(raw.web_url),
            statuses_url: ForgeFacts::url(raw.statuses_url),
            project_id: raw.project_id,
        },
        event: if tag.is_some() {
            Event::Tag
        } else if raw.pull.is_some() {
            Event::PullRequest
        } else {
            Event::Push
        },
        pull: raw.pull,
        tag,
        fork: raw.fork,
        params: Params::new(),
    }))
}

/// A full hex commit name (SHA-1 or SHA-256).
fn full_sha(sha: &str) -> bool {
    (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Names come from senders and end up in Redis keys (`<repo>:<branch>`),
/// logs and paths: no control characters, no empty or overlong values.
fn check_length_and_controls(what: &str, value: &str, max: usize) -> Result<(), PayloadError> {
    if value.is_empty() || value.len() > max {
        return Err(PayloadError(format!("{what} must be 1 to {max} bytes long")));
    }
    if value.chars().any(char::is_control) {
        return Err(PayloadError(format!("{what} {value:?} holds control characters")));
    }
    if let Some(c) = value.chars().find(|c| is_format(*c)) {
        return Err(PayloadError(format!(
            "{what} {value:?} holds the invisible format character U+{:04X} (bidi overrides and zero-width characters make a name read as another)",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Unicode's format characters (general category Cf: soft hyphen, bidi
/// marks and overrides, zero-width joiners and spaces, the byte-order mark,
/// tags …), as Unicode 15 lists them.
pub fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E
            | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
    )
}

/// A repository's full name as the forges allow it (GitHub, Gitea, GitLab
/// groups): `/`-separated segments of `A-Za-z0-9._-`, none empty, `.` or `..`;
/// at most 200 bytes. So it never holds the `:` of the Redis keys.
/// The short form of a commit sha that logs, pages and step variables show:
/// its first 10 characters.
pub fn short_sha(sha: &str) -> &str {
    sha.char_indices().nth(10).map_or(sha, |(i, _)| &sha[..i])
}

pub fn check_repo(name: &str) -> Result<(), PayloadError> {
    check_length_and_controls("repository name", name, 200)?;
    let refuse = |problem: String| {
        PayloadError(format!("repository name {name:?} {problem}: forges allow `A-Za-z0-9._-` in `/`-separated segments"))
    };
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-/".contains(*c))) {
        return Err(refuse(format!("holds {c:?}")));
    }
    match name.split('/').find(|s| s.is_empty() || *s == "." || *s == "..") {
        Some("") => Err(refuse("has an empty segment".into())),
        Some(dots) => Err(refuse(format!("has a {dots:?} segment"))),
        None => Ok(()),
    }
}

/// A branch name git accepts (`git check-ref-format --branch`): no `:`, `..`,
/// `~`, `^`, `?`, `*`, `[`, `\`, space, control character or `@{`; no leading
/// `-` or `/`, no trailing `/` or `.`, no `//`; no component starting with `.`
/// or ending with `.lock`; not `@` or `HEAD`; at most 255 bytes.
pub fn check_branch(name: &str) -> Result<(), PayloadError> {
    check_length_and_controls("branch name", name, 255)?;
    let problem = if let Some(c) = name.chars().find(|c| ":~^?*[\\ ".contains(*c)) {
        format!("holds {c:?}")
    } else if let Some(seq) = ["..", "@{", "//"].into_iter().find(|s| name.contains(s)) {
        format!("holds {seq:?}")
    } else if name.starts_with(['-', '/']) {
        format!("starts with {:?}", &name[..1])
    } else if name.ends_with(['/', '.']) {
        format!("ends with {:?}", &name[name.len() - 1..])
    } else if name == "@" || name == "HEAD" {
        format!("is {name:?}")
    } else if name.split('/').any(|c| c.starts_with('.')) {
        "has a component starting with \".\"".to_string()
    } else if name.split('/').any(|c| c.ends_with(".lock")) {
        "has a component ending with \".lock\"".to_string()
    } else {
        return Ok(());
    };
    Err(PayloadError(format!("branch name {name:?} {problem}: git refuses it (git check-ref-format)")))
}

/// A commit as payloads list it.
#[derive(serde::Deserialize, Default)]
pub(crate) struct RawCommit<'a> {
    #[serde(borrow)]
    pub message: Option<std::borrow::Cow<'a, str>>,
    /// Kept loose: only a string is a commit id.
    #[serde(borrow, default)]
    pub id: LooseStr<'a>,
}

/// A loosely typed field: its scalar value, or `Other` for an array or an
/// object, which is skipped as it is read and never built into a document
/// (a `number` of a million elements costs no memory).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Loose<'a> {
    #[default]
    Null,
    Bool(bool),
    /// A whole number that fits in a u64.
    Count(u64),
    Str(std::borrow::Cow<'a, str>),
    /// Any other number, an array or an object.
    Other,
}

impl Loose<'_> {
    pub(crate) fn as_bool(&self) -> Option<bool> {
        if let Loose::Bool(b) = self {
            Some(*b)
        } else {
            None
        }
    }
    pub(crate) fn as_u64(&self) -> Option<u64> {
        if let Loose::Count(n) = self {
            Some(*n)
        } else {
            None
        }
    }
    pub(crate) fn as_str(&self) -> Option<&str> {
        if let Loose::Str(s) = self {
            Some(s)
        } else {
            None
        }
    }
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Loose::Null)
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Loose<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Any;
        impl<'de> serde::de::Visitor<'de> for Any {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Loose::Str(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Loose::Str(v.to_string().into()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Loose::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(u64::try_from(v).map_or(Loose::Other, Loose::Count))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Loose::Count(v))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Loose::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(Any)
    }
}

/// A string, or nothing when the sender put anything else there ([`Loose`]).
#[derive(Default)]
pub(crate) struct LooseStr<'a>(pub Option<std::borrow::Cow<'a, str>>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for LooseStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Loose::deserialize(d)? {
            Loose::Str(s) => LooseStr(Some(s)),
            _ => LooseStr(None),
        })
    }
}

impl LooseStr<'_> {
    fn is(&self, sha: &str) -> bool {
        self.0.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(sha))
    }
}

/// The last element of a JSON array; the others are read and dropped as
/// they come, so a push listing a million commits costs the memory of one
/// (only the head commit is ever read).
pub(crate) struct Last<T>(pub Option<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Last<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keep<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Keep<T> {
            type Value = Last<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Last<T>, A::Error> {
                let mut last = None;
                while let Some(item) = seq.next_element::<T>()? {
                    last = Some(item);
                }
                Ok(Last(last))
            }
        }
        d.deserialize_seq(Keep(std::marker::PhantomData))
    }
}

/// A request's action, and whether it brings a new head commit to build.
pub(crate) fn builds_head(action: &str) -> bool {
    matches!(action, "opened" | "reopened" | "synchronize" | "synchronized")
}

/// The pushed head commit's message: `head_commit`'s when the sender names
/// it (GitHub, Gitea/Forgejo), else the message of the listed commit whose id
/// is the pushed `sha` (GitLab's `checkout_sha`/`after`; the list's order is
/// the sender's). `last` is the list's last commit, read with the body:
/// usually the head; when it is not, the body is read once more keeping only
/// the commit named `sha`, so the memory stays that of one commit.
pub(crate) fn head_message<'b>(
    body: &[u8],
    head: Option<&'b RawCommit>,
    last: Option<&'b RawCommit>,
    sha: Option<&str>,
) -> Option<std::borrow::Cow<'b, str>> {
    if let Some(message) = head.and_then(|c| c.message.as_deref()) {
        return Some(message.into());
    }
    let (sha, last) = (sha?, last?);
    if last.id.is(sha) {
        return last.message.as_deref().map(Into::into);
    }
    listed_message(body, sha).map(Into::into)
}

/// The message of the commit of the body's `commits` whose id is `sha`.
fn listed_message(body: &[u8], sha: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
    struct Top<'s>(&'s str);
    struct List<'s>(&'s str);
    impl<'de> DeserializeSeed<'de> for Top<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Top<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "commits" {
                    found = map.next_value_seed(List(self.0))?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    impl<'de> DeserializeSeed<'de> for List<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for List<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of commits")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(commit) = seq.next_element::<RawCommit>()? {
                if commit.id.is(self.0) {
                    found = commit.message.map(std::borrow::Cow::into_owned);
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    Top(sha).deserialize(&mut de).ok().flatten()
}

/// What a commit message says to have its push not built, in any case.
pub const SKIP_MARKERS: [&str; 2] = ["[skip ci]", "[ci skip]"];

impl Push {
    /// Why this push is not built, when its head commit's message holds one
    /// of [`SKIP_MARKERS`]. Branch pushes only: a request's payload carries
    /// its title, not its head commit's message, and a tag is pushed to be
    /// built.
    pub fn skip_reason(&self) -> Option<String> {
        if self.pull.is_some() || self.tag.is_some() {
            return None;
        }
        let text = self.message.as_bytes();
        let marker = SKIP_MARKERS.into_iter().find(|m| text.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m.as_bytes())))?;
        Some(format!("skipped: {marker} in the head commit's message"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_unreserved_bytes_and_the_asked_ones() {
        // RFC 3986 section 2.3: ALPHA DIGIT - . _ ~ stay.
        assert_eq!(percent_encode("aZ09-._~", b""), "aZ09-._~");
        assert_eq!(percent_encode("a/b:c d@é", b""), "a%2Fb%3Ac%20d%40%C3%A9");
        assert_eq!(percent_encode("a/b:c d@", b"/:@"), "a/b:c%20d@");
        assert_eq!(percent_decode(percent_encode("p@ss w/rd+", b"").as_bytes()).unwrap(), b"p@ss w/rd+");
    }

    fn req(event: &str, body: &'static str) -> Request<'static> {
        let event: &'static str = Box::leak(event.to_string().into_boxed_str());
        Request { github_event: Some(event), body: body.as_bytes(), ..Default::default() }
    }

    /// GitLab lists a push's commits in its own order: the head is the one whose id is
    /// `checkout_sha`, first, last or between; ids of other types are skipped.
    #[test]
    fn the_head_commit_is_found_by_its_id_wherever_it_is_listed() {
        let (head, other) = ("a".repeat(40), "b".repeat(40));
        let gitlab = |commits: &str| {
            let body = format!(
                r#"{{"ref":"refs/heads/main","checkout_sha":"{head}","project":{{"path_with_namespace":"a/b","git_http_url":"file:///x"}},"commits":{commits}}}"#
            );
            match parse(&Request { gitlab_event: Some("Push Hook"), body: body.as_bytes(), ..Default::default() }) {
                Ok(Delivery::Build(p)) => p.message,
                other => panic!("{other:?}"),
            }
        };
        let c = |id: &str, m: &str| format!(r#"{{"id":"{id}","message":"{m}"}}"#);
        assert_eq!(gitlab(&format!("[{},{}]", c(&other, "old"), c(&head, "new"))), "new");
        assert_eq!(gitlab(&format!("[{},{}]", c(&head, "new"), c(&other, "old"))), "new");
        assert_eq!(
            gitlab(&format!(r#"[{},{{"id":[1,{{"x":2}}],"message":"odd"}},{}]"#, c(&other, "a"), c(&head.to_uppercase(), "new"))),
            "new"
        );
        assert_eq!(gitlab(&format!("[{}]", c(&other, "not the head"))), "");
        assert_eq!(gitlab("null"), "");
    }

    #[test]
    fn skip_markers_in_any_case_skip_branch_pushes_only() {
        let body = |msg: &str| {
            format!(
                r#"{{"ref":"refs/heads/main","after":"{}","head_commit":{{"message":{}}},"repository":{{"full_name":"a/b","clone_url":"file:///x"}}}}"#,
                "c".repeat(40),
                serde_json::json!(msg)
            )
        };
        let skip = |msg: &str| match parse(&req("push", Box::leak(body(msg).into_boxed_str()))) {
            Ok(Delivery::Build(p)) => p.skip_reason(),
            other => panic!("{other:?}"),
        };
        assert_eq!(skip("fix\n\n[SKIP CI]").as_deref(), Some("skipped: [skip ci] in the head commit's message"));
        assert_eq!(skip("[Ci Skip] docs").as_deref(), Some("skipped: [ci skip] in the head commit's message"));
        for no in ["skip ci", "[skip-ci]", "[ci  skip]", "[skip ci", ""] {
            assert_eq!(skip(no), None, "{no:?}");
        }
    }

    #[test]
    fn form_encoded_payload_is_decoded() {
        let body = "payload=%7B%22zen%22%3A%22a+b%22%2C%22hook_id%22%3A1%7D";
        let r = Request { content_type: Some("application/x-www-form-urlencoded"), ..req("ping", body) };
        assert!(matches!(parse(&r), Ok(Delivery::NoBuild(_))));
    }

    #[test]
    fn malformed_and_wrong_type_are_errors() {
        assert!(parse(&req("push", "{not json")).unwrap_err().0.contains("malformed JSON"));
        let r = Request { content_type: Some("text/plain"), ..req("push", "{}") };
        assert!(parse(&r).unwrap_err().0.contains("unsupported content type"));
        assert_eq!(parse(&req("push", "{}")).unwrap_err().0, "missing field: ref (the pushed ref in a GitHub push body)");
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        let body = r#"{"ref":42,"after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#;
        assert_eq!(parse(&req("push", body)).unwrap_err().0, "malformed payload: field \"ref\" must be a string, not a number");
        let body = r#"{"ref":"refs/heads/a","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","repository":"x"}"#;
        assert!(parse(&req("push", body)).unwrap_err().0.contains("field \"repository\" must be an object"));
    }

    #[test]
    fn deletion_and_tags_build_nothing() {
        let del =
            r#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000","deleted":true,"repository":{"full_name":"a/b"}}"#;
        let gone = Gone { repo: "a/b".into(), branch: "x".into(), reason: "branch \"x\" deleted: nothing to build".into() };
        assert_eq!(parse(&req("push", del)), Ok(Delivery::Gone(gone)));
        let tag = r#"{"ref":"refs/tags/v1","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#;
        assert!(matches!(parse(&req("push", tag)), Ok(Delivery::NoBuild(r)) if r.contains("tag")));
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        let body = r#"{"ref":"refs/heads/a\nb","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","repository":{"full_name":"a/b","clone_url":"file:///x"}}"#;
        assert!(parse(&req("push", body)).unwrap_err().0.contains("control characters"));
    }

    #[test]
    fn repository_names_as_the_forges_allow_them() {
        let why = |name: &str| check_repo(name).err().map(|e| e.0);
        for ok in ["acme/app", "Acme-1/app.js_2", "group/sub/project", "a", "a/.github", "-x/y"] {
            assert_eq!(why(ok), None, "{ok:?}");
        }
        let forges = ": forges allow `A-Za-z0-9._-` in `/`-separated segments";
        let table: &[(&str, &str)] = &[
            ("t/br:x", "holds ':'"),
            ("acme/ünï", "holds 'ü'"),
            ("acme/a b", "holds ' '"),
            ("acme/$(x)", "holds '$'"),
            ("/abs", "has an empty segment"),
            ("acme/", "has an empty segment"),
            ("a//b", "has an empty segment"),
            ("../../etc", "has a \"..\" segment"),
            ("a/./b", "has a \".\" segment"),
        ];
        for (name, problem) in table {
            assert_eq!(why(name), Some(format!("repository name {name:?} {problem}{forges}")), "{name:?}");
        }
        assert_eq!(why("a\nb"), Some("repository name \"a\\nb\" holds control characters".into()));
        assert_eq!(why(&"n".repeat(201)), Some("repository name must be 1 to 200 bytes long".into()));
    }

    #[test]
    fn branch_names_as_git_check_ref_format_allows_them() {
        let why = |name: &str| check_branch(name).err().map(|e| e.0);
        for ok in ["main", "feature/x-1", "ünï/cödé", "$(touch${IFS}x)", ";rm${IFS}-rf", "a.b", "v1.lock2", "a@b", "x-"] {
            assert_eq!(why(ok), None, "{ok:?}");
        }
        let git = ": git refuses it (git check-ref-format)";
        let table: &[(&str, &str)] = &[
            ("x:y", "holds ':'"),
            ("a~1", "holds '~'"),
            ("a^", "holds '^'"),
            ("a?", "holds '?'"),
            ("a*", "holds '*'"),
            ("a[b", "holds '['"),
            ("a\\b", "holds '\\\\'"),
            ("a b", "holds ' '"),
            ("a..b", "holds \"..\""),
            ("..", "holds \"..\""),
            ("a@{1}", "holds \"@{\""),
            ("a//b", "holds \"//\""),
            ("-rf", "starts with \"-\""),
            ("/x", "starts with \"/\""),
            ("x/", "ends with \"/\""),
            ("x.", "ends with \".\""),
            ("@", "is \"@\""),
            ("HEAD", "is \"HEAD\""),
            (".hidden", "has a component starting with \".\""),
            ("a/.b", "has a component starting with \".\""),
            ("a.lock", "has a component ending with \".lock\""),
            ("a.lock/b", "has a component ending with \".lock\""),
        ];
        for (name, problem) in table {
            assert_eq!(why(name), Some(format!("branch name {name:?} {problem}{git}")), "{name:?}");
        }
        assert_eq!(why("a\u{7f}"), Some("branch name \"a\\u{7f}\" holds control characters".into()));
        // Format characters (category Cf) are not controls to char::is_control, and make a name
        // read as another: a right-to-left override, a zero-width space, a soft hyphen, a BOM.
        for (c, hex) in [('\u{202e}', "202E"), ('\u{200b}', "200B"), ('\u{ad}', "00AD"), ('\u{feff}', "FEFF"), ('\u{e0041}', "E0041")] {
            let name = format!("main{c}x");
            let said = why(&name).unwrap_or_default();
            assert!(said.contains(&format!("holds the invisible format character U+{hex}")), "{name:?}: {said}");
        }
        assert_eq!(why("ünï/cödé-\u{5d0}"), None, "letters of any script stay allowed");
        assert_eq!(why(&"b".repeat(256)), Some("branch name must be 1 to 255 bytes long".into()));
    }

    fn fixture_push(event: (&str, &str), rel: &str) -> Push {
        fixture_push_with(event, rel, Policy::default())
    }

    fn fixture_push_with(event: (&str, &str), rel: &str, policy: Policy) -> Push {
        let body = std::fs::read(format!("{}/tests/fixtures/webhooks/{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let mut r = Request { body: &body, policy, ..Default::default() };
        match event.0 {
            "github" => r.github_event = Some(event.1),
            "gitea" => r.gitea_event = Some(event.1),
            _ => r.gitlab_event = Some(event.1),
        }
        match parse(&r) {
            Ok(Delivery::Build(p)) => p,
            other => panic!("{rel}: {other:?}"),
        }
    }

    /// `before` (what `when: path` diffs from), read off the fixtures by eye: kept when a
    /// full sha, unknown for a new branch or tag (all zeros) and for requests.
    #[test]
    fn pushes_keep_their_before() {
        let before = |event, rel| fixture_push(event, rel).before;
        let tags = Policy { build_tags: true, ..Policy::default() };
        // GitHub's samples with a before are tag deletions; Gitea's body has GitHub's shape.
        assert_eq!(before(("github", "push"), "github/push/with-new-branch.payload.json"), None);
        assert_eq!(before(("gitea", "push"), "gitea/gitea-push.json").as_deref(), Some("28e1879d029cb852e4844d9c718537df08844e03"));
        assert_eq!(before(("gitlab", "Push Hook"), "gitlab/push-hook.json").as_deref(), Some("95790bf891e76fee5e1747ab589903a6a1f80f22"));
        assert_eq!(fixture_push_with(("gitlab", "Tag Push Hook"), "gitlab/tag-push-hook.json", tags).before, None);
        assert_eq!(before(("github", "pull_request"), "github/pull_request/synchronize.payload.json"), None);
        assert_eq!(before(("gitlab", "Merge Request Hook"), "gitlab/merge-request-hook.json"), None);
        // Anything but a full hex sha is unknown: never an option or a ref name for git.
        let body =
            std::fs::read_to_string(format!("{}/tests/fixtures/webhooks/gitea/gitea-push.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let bad =
            ["\"--output=/tmp/x\"", "\"HEAD\"", "\"28e1879d\"", "\"28e1879d029cb852e4844d9c718537df08844e0g\"", "7", "null", "[1, {}]"];
        for bad in bad {
            let hostile = body.replacen("\"28e1879d029cb852e4844d9c718537df08844e03\"", bad, 1);
            let r = Request { body: hostile.as_bytes(), gitea_event: Some("push"), ..Default::default() };
            match parse(&r) {
                Ok(Delivery::Build(p)) => assert_eq!(p.before, None, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// The values are the fixtures' own, read off the files by eye.
    #[test]
    fn real_payloads_give_their_forge_facts() {
        let p = fixture_push(("github", "push"), "github/push/with-new-branch.payload.json");
        assert_eq!(p.forge.kind, "github");
        assert_eq!(p.forge.statuses_url.as_deref(), Some("https://api.github.com/repos/Codertocat/Hello-World/statuses/{sha}"));
        assert_eq!(p.forge.web_url.as_deref(), Some("https://github.com/Codertocat/Hello-World"));
        let p = fixture_push(("gitea", "push"), "gitea/gitea-push.json");
        assert_eq!(p.forge.kind, "gitea");
        assert_eq!(p.forge.web_url.as_deref(), Some("http://localhost:3000/gitea/webhooks"));
        let p = fixture_push(("gitlab", "Push Hook"), "gitlab/push-hook.json");
        assert_eq!((p.forge.kind.as_str(), p.forge.project_id), ("gitlab", Some(15)));
        assert_eq!(p.forge.web_url.as_deref(), Some("http://example.com/mike/diaspora"));
    }

    /// Pushes, tag pushes and requests of each sender say which they are.
    #[test]
    fn real_payloads_give_their_event() {
        let tags = Policy { build_tags: true, ..Policy::default() };
        for (sender, rel, policy, want) in [
            (("github", "push"), "github/push/with-new-branch.payload.json", Policy::default(), Event::Push),
            (("gitea", "push"), "gitea/gitea-push.json", Policy::default(), Event::Push),
            (("gitlab", "Push Hook"), "gitlab/push-hook.json", Policy::default(), Event::Push),
            (("gitlab", "Tag Push Hook"), "gitlab/tag-push-hook.json", tags, Event::Tag),
            (("github", "pull_request"), "github/pull_request/opened.payload.json", Policy::default(), Event::PullRequest),
            (("gitlab", "Merge Request Hook"), "gitlab/merge-request-hook.json", Policy::default(), Event::PullRequest),
        ] {
            assert_eq!(fixture_push_with(sender, rel, policy).event, want, "{rel}");
        }
    }

    fn github_pull(body: &[u8], policy: Policy) -> Result<Delivery, PayloadError> {
        parse(&Request { github_event: Some("pull_request"), body, policy, ..Default::default() })
    }

    fn fixture_value(rel: &str) -> serde_json::Value {
        let path = format!("{}/tests/fixtures/webhooks/{rel}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The expected values are read off octokit's samples by eye.
    #[test]
    fn github_pull_requests_build_their_head_under_pull_n() {
        for (file, action) in [("opened", "opened"), ("synchronize", "synchronize")] {
            let p = fixture_push(("github", "pull_request"), &format!("github/pull_request/{file}.payload.json"));
            assert_eq!((p.repo.as_str(), p.branch.as_str()), ("Codertocat/Hello-World", "pull/2"), "{action}");
            assert_eq!(p.sha, "ec26c3e57ca3a959ca5aad62de7213c562f8c821");
            assert_eq!(p.clone_url, "https://github.com/Codertocat/Hello-World.git");
            let pull =
                Pull { number: 2, base_branch: "master".into(), head_branch: "changes".into(), head_repo: "Codertocat/Hello-World".into() };
            assert_eq!(p.pull, Some(pull));
            assert!(!p.fork);
            assert_eq!(p.source_ref(), "refs/pull/2/head");
            assert_eq!(p.forge.statuses_url.as_deref(), Some("https://api.github.com/repos/Codertocat/Hello-World/statuses/{sha}"));
            assert_eq!(p.forge.web_url.as_deref(), Some("https://github.com/Codertocat/Hello-World"));
        }
    }

    /// The GitLab docs' sample: project 14 → 14, so no fork; values read off it by eye.
    #[test]
    fn gitlab_merge_requests_build_their_last_commit() {
        let p = fixture_push(("gitlab", "Merge Request Hook"), "gitlab/merge-request-hook.json");
        assert_eq!((p.repo.as_str(), p.branch.as_str()), ("gitlabhq/gitlab-test", "merge-requests/1"));
        assert_eq!(p.sha, "da1560886d4f094c3e6c9ef40349f7d38b5d27d7");
        assert_eq!(p.clone_url, "http://example.com/gitlabhq/gitlab-test.git");
        let pull =
            Pull { number: 1, base_branch: "master".into(), head_branch: "ms-viewport".into(), head_repo: "gitlabhq/gitlab-test".into() };
        assert_eq!((p.pull, p.fork, p.forge.project_id), (Some(pull), false, Some(1)));
        assert_eq!(p.forge.web_url.as_deref(), Some("http://example.com/gitlabhq/gitlab-test"));
        let gitlab = |v: &serde_json::Value, policy| {
            let body = v.to_string();
            parse(&Request { gitlab_event: Some("Merge Request Hook"), body: body.as_bytes(), policy, ..Default::default() })
        };
        let mut v = fixture_value("gitlab/merge-request-hook.json");
        for (action, oldrev, builds) in
            [("update", None, false), ("update", Some("ab".repeat(20)), true), ("approved", None, false), ("reopen", None, true)]
        {
            v["object_attributes"]["action"] = serde_json::json!(action);
            v["object_attributes"]["oldrev"] = serde_json::json!(oldrev);
            let got = gitlab(&v, Policy::default());
            assert_eq!(matches!(got, Ok(Delivery::Build(_))), builds, "{action} {oldrev:?}: {got:?}");
        }
        v["object_attributes"]["source_project_id"] = serde_json::json!(15);
        assert!(matches!(gitlab(&v, Policy::default()), Ok(Delivery::NoBuild(r)) if r.contains("awesome_space/awesome_project")));
        let Ok(Delivery::Build(p)) = gitlab(&v, Policy { fork_pulls: true, ..Default::default() }) else { panic!() };
        assert_eq!((p.fork, p.source_ref().as_str()), (true, "refs/merge-requests/1/head"));
    }

    #[test]
    fn closed_and_merged_requests_and_deleted_branches_are_gone() {
        let gone = |got: Result<Delivery, PayloadError>| match got {
            Ok(Delivery::Gone(g)) => (g.repo, g.branch),
            other => panic!("not gone: {other:?}"),
        };
        let mut v = fixture_value("github/pull_request/opened.payload.json");
        v["action"] = serde_json::json!("closed");
        assert_eq!(gone(github_pull(v.to_string().as_bytes(), Policy::default())), ("Codertocat/Hello-World".into(), "pull/2".into()));
        let body = v.to_string();
        let gitea = parse(&Request { gitea_event: Some("pull_request"), body: body.as_bytes(), ..Default::default() });
        assert_eq!(gone(gitea).1, "pull/2");
        // A hostile name is refused like any other.
        v["repository"]["full_name"] = serde_json::json!("a/../b");
        assert!(github_pull(v.to_string().as_bytes(), Policy::default()).is_err());
        let mut v = fixture_value("gitlab/merge-request-hook.json");
        for action in ["close", "merge"] {
            v["object_attributes"]["action"] = serde_json::json!(action);
            let body = v.to_string();
            let got = parse(&Request { gitlab_event: Some("Merge Request Hook"), body: body.as_bytes(), ..Default::default() });
            assert_eq!(gone(got).1, "merge-requests/1", "{action}");
        }
        let mut v = fixture_value("gitlab/push-hook.json");
        v["after"] = serde_json::json!("0".repeat(40));
        v["checkout_sha"] = serde_json::Value::Null;
        let body = v.to_string();
        let got = parse(&Request { gitlab_event: Some("Push Hook"), body: body.as_bytes(), ..Default::default() });
        assert_eq!(gone(got).1, "master");
    }

    #[test]
    fn a_default_branch_is_kept_only_when_it_is_a_branch_name() {
        let body = |default: &str| {
            let v = serde_json::json!({"ref": "refs/heads/x", "after": "ab".repeat(20),
                "repository": {"full_name": "a/b", "clone_url": "file:///x", "default_branch": default}});
            match parse(&req("push", Box::leak(v.to_string().into_boxed_str()))) {
                Ok(Delivery::Build(p)) => p.default_branch,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(body("main").as_deref(), Some("main"));
        for bad in ["", "a\nb", "..", &"x".repeat(300), "a\u{202e}b"] {
            assert_eq!(body(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_title_is_the_first_line_bounded_and_visible() {
        assert_eq!(title("\n  fix: the parser  \n\nbody"), "fix: the parser");
        assert_eq!(title("a\u{202e}b\u{7}c\td"), "abcd");
        let long = "é".repeat(300);
        assert_eq!(title(&long).chars().count(), TITLE_MAX);
        assert_eq!(title(""), "");
    }

    #[test]
    fn other_pull_request_actions_build_nothing() {
        for action in ["labeled", "edited", "assigned", "review_requested", ""] {
            let mut v = fixture_value("github/pull_request/opened.payload.json");
            v["action"] = serde_json::json!(action);
            let got = github_pull(v.to_string().as_bytes(), Policy::default());
            assert!(matches!(&got, Ok(Delivery::NoBuild(r)) if r.contains(&format!("{action:?}"))), "{action}: {got:?}");
        }
    }

    /// Gitea's `pull_request` bodies carry `head.repo_id` / `base.repo_id` and no `head.repo`
    /// (seen in the Gitea deliveries Woodpecker CI records as test fixtures,
    /// server/forge/gitea/fixtures/HookPullRequest*.json): a same-repository request is one
    /// whose two ids are equal, not a deleted fork.
    #[test]
    fn gitea_requests_tell_forks_by_repository_id() {
        let gitea = |head_id: u64, base_id: u64, policy: Policy| {
            let body = serde_json::json!({
                "action": "synchronized", "number": 2,
                "pull_request": {"number": 2, "title": "New Pull",
                    "base": {"ref": "main", "sha": "29be01c073851cf0db0c6a466e396b725a670453", "repo_id": base_id},
                    "head": {"ref": "test-patch-1", "sha": "788ed8d02d3b7fcfcf6386dbcbca696aa1d4dc25", "repo_id": head_id}},
                "repository": {"id": 6, "full_name": "Test-CI/app", "clone_url": "http://127.0.0.1:3000/Test-CI/app.git",
                    "html_url": "http://127.0.0.1:3000/Test-CI/app", "default_branch": "main"}
            })
            .to_string();
            parse(&Request { gitea_event: Some("pull_request"), body: body.as_bytes(), policy, ..Default::default() })
        };
        let Ok(Delivery::Build(p)) = gitea(6, 6, Policy::default()) else { panic!("a same-repository Gitea request builds") };
        assert!(!p.fork);
        assert_eq!((p.branch.as_str(), p.pull.unwrap().head_repo.as_str()), ("pull/2", "Test-CI/app"));
        assert!(
            matches!(gitea(9, 6, Policy::default()), Ok(Delivery::NoBuild(r)) if r.contains("fork")),
            "another repository id is a fork"
        );
    }

    #[test]
    fn fork_requests_are_ignored_unless_asked_for() {
        let mut v = fixture_value("github/pull_request/opened.payload.json");
        v["pull_request"]["head"]["repo"]["full_name"] = serde_json::json!("mallory/Hello-World");
        let body = v.to_string();
        let got = github_pull(body.as_bytes(), Policy::default());
        assert_eq!(
            got,
            Ok(Delivery::NoBuild(
                "request 2 comes from the fork \"mallory/Hello-World\": fork requests are not built (HOOK_FORK_PULLS=ignore)".into()
            ))
        );
        let Ok(Delivery::Build(p)) = github_pull(body.as_bytes(), Policy { fork_pulls: true, ..Default::default() }) else { panic!() };
        assert!(p.fork);
        assert_eq!(p.clone_url, "https://github.com/Codertocat/Hello-World.git", "the target's URL, never the fork's");
        assert_eq!(p.pull.unwrap().head_repo, "mallory/Hello-World");
        // A deleted fork (head.repo null) is a fork too.
        v["pull_request"]["head"]["repo"] = serde_json::Value::Null;
        assert!(matches!(github_pull(v.to_string().as_bytes(), Policy::default()), Ok(Delivery::NoBuild(r)) if r.contains("fork")));
    }

    #[test]
    fn hostile_pull_request_names_are_refused() {
        for (pointer, bad) in
            [("/pull_request/head/ref", "-x"), ("/pull_request/base/ref", "a..b"), ("/pull_request/head/repo/full_name", "../x")]
        {
            let mut v = fixture_value("github/pull_request/opened.payload.json");
            *v.pointer_mut(pointer).unwrap() = serde_json::json!(bad);
            let got = github_pull(v.to_string().as_bytes(), Policy { fork_pulls: true, ..Default::default() });
            assert!(matches!(&got, Err(PayloadError(m)) if m.contains(bad)), "{pointer}: {got:?}");
        }
    }

    #[test]
    fn tag_pushes_build_the_named_commit_when_asked() {
        let tag = r#"{"ref":"refs/tags/v1.2","after":"1111111111111111111111111111111111111111","head_commit":{"id":"2222222222222222222222222222222222222222","message":"m"},"repository":{"full_name":"a/b","clone_url":"file:///x"}}"#;
        let on = Request {
            github_event: Some("push"),
            body: tag.as_bytes(),
            policy: Policy { build_tags: true, ..Default::default() },
            ..Default::default()
        };
        let Ok(Delivery::Build(p)) = parse(&on) else { panic!("{:?}", parse(&on)) };
        assert_eq!(
            (p.branch.as_str(), p.tag.as_deref(), p.sha.as_str()),
            ("tags/v1.2", Some("v1.2"), "2222222222222222222222222222222222222222")
        );
        assert_eq!(p.source_ref(), "refs/tags/v1.2");
        let off = Request { policy: Policy::default(), ..on };
        assert_eq!(parse(&off), Ok(Delivery::NoBuild("tag push \"v1.2\": tags are not built (HOOK_BUILD_TAGS=0)".into())));
        let p =
            fixture_push_with(("gitlab", "Tag Push Hook"), "gitlab/tag-push-hook.json", Policy { build_tags: true, ..Default::default() });
        assert_eq!((p.branch.as_str(), p.sha.as_str()), ("tags/v1.0.0", "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7"));
    }

    #[test]
    fn forge_urls_that_are_not_plain_http_are_dropped() {
        assert_eq!(ForgeFacts::url(Some("https://h/x")).as_deref(), Some("https://h/x"));
        for bad in ["ftp://h/x", "https://h/x y", "https://h/\nx", "javascript:x", ""] {
            assert_eq!(ForgeFacts::url(Some(bad)), None, "{bad:?}");
        }
    }
}
