//! Environment → typed configuration. One table per binary (name, default,
//! meaning) feeds `--help`, the parser and docs/configuration.md (a test holds
//! the page to the table).

use std::fmt;
use std::time::Duration;

/// One setting: its variable, default (empty = none) and meaning.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Hook and slave find Redis the same way.
const REDIS_URL: Setting =
    Setting { name: "REDIS_URL", default: "redis://127.0.0.1:6379/0", doc: "Redis holding queues, records and membership" };
const CI_PUBLIC_URL: Setting = Setting {
    name: "CI_PUBLIC_URL",
    default: "",
    doc: "public base URL of the hook: statuses link to `<it>/builds/<id>`; an https one makes the read cookie Secure; unset: no link",
};
const REDIS_SENTINELS: Setting = Setting {
    name: "REDIS_SENTINELS",
    default: "",
    doc: "`host:port,...` of Redis Sentinels: the master is the one they name (asked at every dial, so a failover is followed); REDIS_URL then gives only the database and password; needs REDIS_MASTER_NAME",
};
const REDIS_MASTER_NAME: Setting =
    Setting { name: "REDIS_MASTER_NAME", default: "", doc: "the name the sentinels monitor the master under; needs REDIS_SENTINELS" };
const REDIS_PASSWORD_FILE: Setting = Setting {
    name: "REDIS_PASSWORD_FILE",
    default: "",
    doc: "a file holding Redis's password (a Docker or Kubernetes secret, or the one the Redis image made): it replaces REDIS_URL's; waited for up to 60 s at start",
};

pub const HOOK_SETTINGS: &[Setting] = &[
    Setting { name: "HOOK_ADDR", default: "0.0.0.0:5000", doc: "address and port to listen on" },
    CI_PUBLIC_URL,
    Setting {
        name: "HOOK_MAX_CONNECTIONS",
        default: "4096",
        doc: "connections served at once (a thread each); at the cap the oldest one still reading its request is closed for a new one",
    },
    REDIS_URL,
    REDIS_SENTINELS,
    REDIS_MASTER_NAME,
    REDIS_PASSWORD_FILE,
    Setting {
        name: "REDIS_MIN_REPLICAS",
        default: "0",
        doc: "a push is answered 2xx only once this many replicas acknowledged it (`WAIT`, at most 1 s), else 503 with the reason; 0: once the master has it",
    },
    Setting {
        name: "HOOK_TOKEN",
        default: "",
        doc: "secret token for signatures (logged as its fingerprint); unset: generated once and shared through Redis",
    },
    Setting {
        name: "HOOK_READ_TOKEN",
        default: "",
        doc: "when set, every read route (status, history, repos, follow, dashboard) needs it (Bearer, or the login form's cookie); badges and /ping stay public; unset: open",
    },
    Setting { name: "HOOK_THREADS", default: "16", doc: "request worker threads" },
    Setting {
        name: "HOOK_QUEUE",
        default: "1024",
        doc: "complete requests that may wait for a worker; more are answered 503 with Retry-After at once",
    },
    Setting { name: "HOOK_MAX_BODY", default: "26214400", doc: "largest accepted request body, in bytes (GitHub's cap is 25 MiB)" },
    Setting {
        name: "HOOK_IDLE_TIMEOUT",
        default: "10",
        doc: "seconds a connection may stay silent (mid-request or idle) before it is closed",
    },
    Setting {
        name: "HOOK_REQUEST_TIMEOUT",
        default: "30",
        doc: "seconds a client may take to send one whole request (head and body) from its first byte; then 408 and closed",
    },
    Setting {
        name: "HOOK_DURABILITY_CHECK",
        default: "60",
        doc: "seconds between two reads of Redis's persistence settings (logged when not durable, ci_redis_durable in /metrics)",
    },
    Setting {
        name: "HISTORY_KEEP",
        default: "50",
        doc: "builds kept per repository and branch (GET /history); older records and their logs are deleted at the next push",
    },
    Setting {
        name: "HOOK_CANCEL_RUNNING",
        default: "pulls",
        doc: "which branches a newer commit cancels the running build of: pulls (branches pull/* and merge-requests/*), all, or none",
    },
    Setting {
        name: "HOOK_MAX_FOLLOWERS",
        default: "256",
        doc: "clients following a build's log at once (GET /status/<repo>?follow=1); more are answered 503 with Retry-After",
    },
    Setting {
        name: "HOOK_FORK_PULLS",
        default: "ignore",
        doc: "`ignore` or `build`: pull/merge requests whose head is in another repository (a fork); built with no slave environment and no credentials",
    },
    Setting {
        name: "HOOK_BUILD_TAGS",
        default: "0",
        doc: "`1` builds tag pushes (branch `tags/<name>`, step env TAG_NAME); `0` answers 200 without a build",
    },
    Setting {
        name: "HOOK_ROUTING",
        default: "mod",
        doc: "slave index of a repository inside its cluster of N: `mod` (CRC32 mod N; N to N+1 moves N/(N+1) of the repositories) or `jump` (jump consistent hash of the CRC32; moves 1/(N+1)); every hook must agree (the routing key in Redis)",
    },
    Setting {
        name: "HOOK_CRON",
        default: "",
        doc: "schedules, one a line: `<min> <hour> <day of month> <month> <day of week> <owner/name> <branch>` (cron fields, UTC); each matching minute builds the branch's last push with event `cron`, once however many hooks run (docs/schedules.md); at most 1000 schedules, lines of 1024 bytes; a bad line refuses to start",
    },
    Setting { name: "HOOK_CRON_FILE", default: "", doc: "a file of schedules as HOOK_CRON (at most 256 KiB), instead of HOOK_CRON" },
    Setting { name: "RUST_LOG", default: "info", doc: "log filter (error, warn, info, debug)" },
];

pub const SLAVE_SETTINGS: &[Setting] = &[
    REDIS_URL,
    REDIS_SENTINELS,
    REDIS_MASTER_NAME,
    REDIS_PASSWORD_FILE,
    Setting {
        name: "SLAVE_CLUSTER",
        default: "slave",
        doc: "cluster name: `slave` or `slave-<cap>-<cap>...`; hints pick clusters by these caps",
    },
    Setting { name: "SLAVE_INDEX", default: "", doc: "fixed index in the cluster; unset: the lowest free index is claimed" },
    Setting { name: "SLAVE_CACHE", default: "/var/cache/ci", doc: "directory of the cached clones, one per repository and branch" },
    Setting { name: "SLAVE_BUILD_TIMEOUT", default: "3600", doc: "seconds a whole build may run before its processes are killed" },
    Setting { name: "SLAVE_LEASE", default: "10", doc: "membership lease, in seconds; a silent slave loses its index after it" },
    Setting { name: "SLAVE_GRACE", default: "30", doc: "seconds a running build may still take after SIGTERM/SIGINT" },
    Setting {
        name: "SLAVE_EXECUTORS",
        default: "1",
        doc: "builds one slave runs at once (never two of one repository+branch); each needs its CPU, memory and disk",
    },
    Setting {
        name: "SLAVE_STEAL_AFTER",
        default: "30",
        doc: "seconds a job may wait in a sibling's queue before a slave with a free executor takes it (a cold clone instead of a wait); 0: never",
    },
    Setting {
        name: "SLAVE_MAX_ATTEMPTS",
        default: "3",
        doc: "a build whose slave died during this many attempts is failed instead of run again",
    },
    Setting {
        name: "SLAVE_BUILD_USER",
        default: "nobody",
        doc: "when the slave runs as root: the unprivileged user steps run as (with the Docker socket's group); else unused",
    },
    Setting {
        name: "SLAVE_BUILD_GROUPS",
        default: "2000000000-2000999999",
        doc: "when the slave runs as root: the range of group ids it gives each repository and each checkout (no other group may use them); steps run with their checkout's and repository's groups only",
    },
    Setting {
        name: "SLAVE_MAX_LOG_BYTES",
        default: "1048576",
        doc: "largest recorded build log (JSON): its head and tail are kept, the middle counted",
    },
    Setting {
        name: "GIT_CREDENTIALS",
        default: "",
        doc: "`https://<user>:<token>@<host>[:<port>][/<path>]` lines, space- or newline-separated: each sent by git to that host over https only",
    },
    Setting { name: "GIT_CREDENTIALS_FILE", default: "", doc: "a file of such lines (mode 0400/0600), e.g. a Docker secret" },
    Setting {
        name: "SLAVE_FORGES",
        default: "",
        doc: "commit statuses: `<github|gitea|gitlab> <api base URL> <token>` lines; a token only for pushes of its forge's host",
    },
    Setting { name: "SLAVE_FORGES_FILE", default: "", doc: "a file of such lines (mode 0400/0600), e.g. a Docker secret" },
    Setting {
        name: "SLAVE_SECRETS_FILE",
        default: "",
        doc: "secrets per repository, `<NAME> <repo glob> <branch glob> <value>` lines (mode 0400/0600): a step gets NAME when it lists it under `secrets:` and the first line for NAME matches its repository and branch; never a fork's build",
    },
    Setting { name: "SLAVE_FORGE_TIMEOUT", default: "10", doc: "seconds one commit-status request may take" },
    Setting {
        name: "SLAVE_CA_FILE",
        default: "",
        doc: "a PEM file of the certificate authorities the slave's own https clients (commit statuses, the one-request fetch) trust instead of the public roots built in, e.g. a private CA or /etc/ssl/certs/ca-certificates.crt",
    },
    Setting {
        name: "SLAVE_FORGE_ATTEMPTS",
        default: "5",
        doc: "attempts per commit status (2, 4, 8, 16 s apart) before `forge.status_failed`",
    },
    Setting {
        name: "SLAVE_STATUS_CONTEXT",
        default: "ci-backend",
        doc: "commit statuses' context (GitLab: name) is `<it>/<event>`: push, pr, tag, cron, manual; 1 to 64 of `A-Za-z0-9._-/`",
    },
    CI_PUBLIC_URL,
    Setting {
        name: "SLAVE_DOCKER",
        default: "unix:///var/run/docker.sock",
        doc: "the Docker Engine API container steps (`image:`) run on: `unix:///path` or `tcp://host:port`",
    },
    Setting {
        name: "SLAVE_IMAGE_PULL",
        default: "missing",
        doc: "when a step's image is pulled: `missing` (not on the engine yet), `always` (before each step) or `never`",
    },
    Setting {
        name: "SLAVE_DEFAULT_IMAGE",
        default: "",
        doc: "image every step without `image:` runs in (so no step runs on the slave itself); fork builds need it or an image on each step",
    },
    Setting { name: "SLAVE_STEP_MEMORY", default: "4096", doc: "MiB of memory (swap included) a step's container may use" },
    Setting { name: "SLAVE_STEP_CPUS", default: "2", doc: "CPUs a step's container may use (a decimal: 0.5, 2)" },
    Setting {
        name: "SLAVE_WARM_CONTAINERS",
        default: "4",
        doc: "branches whose next container step finds its container started and waiting (0: none; each holds a network)",
    },
    Setting { name: "RUST_LOG", default: "info", doc: "log filter (error, warn, info, debug)" },
];

/// The longest SLAVE_STATUS_CONTEXT: with `/manual` after it, a name
/// still short enough to read in a forge's list of statuses.
pub const MAX_STATUS_CONTEXT: usize = 64;

/// SLAVE_STATUS_CONTEXT, when it is 1 to [`MAX_STATUS_CONTEXT`] characters
/// of `A-Za-z0-9._-/`, `/` only between others: a name every forge shows
/// as written, and a log value without quotes.
fn status_context(value: &str) -> Result<String, ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let parts_ok = value.split('/').all(|part| !part.is_empty());
    if (1..=MAX_STATUS_CONTEXT).contains(&value.len()) && value.chars().all(allowed) && parts_ok {
        return Ok(value.to_string());
    }
    Err(ConfigError(format!(
        "SLAVE_STATUS_CONTEXT={value:?}: expected 1 to {MAX_STATUS_CONTEXT} characters of A-Z a-z 0-9 . _ - /, with no `/` at either end or twice in a row (statuses are named `<it>/push`, `<it>/pr`, …)"
    )))
}

/// SLAVE_IMAGE_PULL: when a step's image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagePull {
    Missing,
    Always,
    Never,
}

/// What container steps run on and with.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// SLAVE_DOCKER, as written (the slave parses the endpoint).
    pub docker: String,
    pub pull: ImagePull,
    /// SLAVE_DEFAULT_IMAGE, as written (the slave checks it).
    pub default_image: Option<String>,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    /// SLAVE_WARM_CONTAINERS: at most this many containers wait, started,
    /// for a branch's next container step.
    pub warm: usize,
}

/// A bad value in the environment, quoted with what was expected.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The `--help` text of a binary.
pub fn help(binary: &str, about: &str, settings: &[Setting]) -> String {
    let mut out = format!("{binary} — {about}\n\nConfiguration (environment variables):\n");
    for s in settings {
        let default = if s.default.is_empty() { "(unset)" } else { s.default };
        out.push_str(&format!("  {:<22} {:<26} {}\n", s.name, default, s.doc));
    }
    out
}

fn raw(settings: &[Setting], name: &str) -> Option<String> {
    let default = settings.iter().find(|s| s.name == name).map(|s| s.default).unwrap_or("");
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
        _ if !default.is_empty() => Some(default.to_string()),
        _ => None,
    }
}

/// CI_PUBLIC_URL without its trailing `/`, when set: an http(s) URL.
fn public_url(settings: &[Setting]) -> Result<Option<String>, ConfigError> {
    let public_url = raw(settings, "CI_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_string());
    if let Some(u) = &public_url {
        let lower = u.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) || u.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ConfigError(format!("CI_PUBLIC_URL={u:?}: expected an http(s) URL")));
        }
    }
    Ok(public_url)
}

fn number<T: std::str::FromStr>(settings: &[Setting], name: &str, what: &str) -> Result<T, ConfigError> {
    let value = raw(settings, name).unwrap_or_default();
    value.parse().map_err(|_| ConfigError(format!("{name}={value:?}: expected {what}")))
}

/// HOOK_CANCEL_RUNNING: which branches a newer commit cancels the running build of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRunning {
    /// Branches starting with `pull/` or `merge-requests/` (pull and merge requests).
    Pulls,
    All,
    None,
}

impl CancelRunning {
    pub fn parse(s: &str) -> Option<CancelRunning> {
        match s {
            "pulls" => Some(CancelRunning::Pulls),
            "all" => Some(CancelRunning::All),
            "none" => Some(CancelRunning::None),
            _ => None,
        }
    }

    /// The word HOOK_CANCEL_RUNNING takes.
    pub fn as_str(self) -> &'static str {
        match self {
            CancelRunning::Pulls => "pulls",
            CancelRunning::All => "all",
            CancelRunning::None => "none",
        }
    }

    /// Whether a newer commit on `branch` cancels its running build: the
    /// one definition; `store::queue::enqueue` passes its answer to the ENQUEUE script.
    pub fn applies(self, branch: &str) -> bool {
        match self {
            CancelRunning::All => true,
            CancelRunning::None => false,
            // A request's branch (pull/<N>, merge-requests/<N>), whatever queued it.
            CancelRunning::Pulls => crate::payload::Event::of_branch(branch) == crate::payload::Event::PullRequest,
        }
    }
}

/// Where Redis is: REDIS_URL, or — with REDIS_SENTINELS and
/// REDIS_MASTER_NAME — the master the sentinels name, with REDIS_URL's
/// database, user and password (its host and port are then unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisAddress {
    pub url: String,
    /// `host:port` of each sentinel, and the master's name.
    pub sentinels: Option<(Vec<(String, u16)>, String)>,
}

impl RedisAddress {
    /// REDIS_URL with REDIS_SENTINELS (`host:port,...`) and REDIS_MASTER_NAME:
    /// both or neither.
    pub fn parse(url: &str, sentinels: Option<&str>, master: Option<&str>) -> Result<RedisAddress, ConfigError> {
        let (list, master) = match (sentinels, master) {
            (None, None) => return Ok(RedisAddress { url: checked_url(url)?, sentinels: None }),
            (Some(list), Some(master)) => (list, master),
            (Some(_), None) => {
                return Err(ConfigError("REDIS_SENTINELS is set but REDIS_MASTER_NAME is not: set both (the name the sentinels monitor the master under) or neither".into()))
            }
            (None, Some(_)) => {
                return Err(ConfigError("REDIS_MASTER_NAME is set but REDIS_SENTINELS is not: set both (`host:port,...` of the sentinels) or neither".into()))
            }
        };
        let mut addrs = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed = item.rsplit_once(':').and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)));
            match parsed {
                Some((host, port)) if !host.is_empty() && port > 0 => addrs.push((host.to_string(), port)),
                _ => {
                    return Err(ConfigError(format!(
                        "REDIS_SENTINELS={list:?}: expected `host:port` items separated by commas; {item:?} is not one"
                    )))
                }
            }
        }
        if addrs.is_empty() {
            return Err(ConfigError(format!("REDIS_SENTINELS={list:?}: expected `host:port` items separated by commas")));
        }
        Ok(RedisAddress { url: checked_url(url)?, sentinels: Some((addrs, master.to_string())) })
    }
}

/// REDIS_URL as the redis crate reads it (scheme, host, port, db, user,
/// password), quoted without its password when it does not read.
fn checked_url(url: &str) -> Result<String, ConfigError> {
    match redis::IntoConnectionInfo::into_connection_info(url) {
        Ok(_) => Ok(url.to_string()),
        Err(e) => Err(ConfigError(format!("REDIS_URL={:?}: {e}", crate::logging::redact_url(url)))),
    }
}

fn redis_address(settings: &[Setting]) -> Result<RedisAddress, ConfigError> {
    let mut url = raw(settings, "REDIS_URL").unwrap_or_default();
    if let Some(file) = raw(settings, "REDIS_PASSWORD_FILE") {
        url = with_password(&url, &password_from(&file, PASSWORD_FILE_WAIT)?);
    }
    RedisAddress::parse(&url, raw(settings, "REDIS_SENTINELS").as_deref(), raw(settings, "REDIS_MASTER_NAME").as_deref())
}

/// How long a missing REDIS_PASSWORD_FILE is waited for (a Redis container
/// writes it at its first start, maybe after this process started).
const PASSWORD_FILE_WAIT: Duration = Duration::from_secs(60);

/// The password in `file`, its surrounding white space trimmed; the file is
/// waited for up to `wait`.
fn password_from(file: &str, wait: Duration) -> Result<String, ConfigError> {
    let until = std::time::Instant::now() + wait;
    let text = loop {
        match std::fs::read_to_string(file) {
            Ok(text) => break text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::time::Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(200))
            }
            Err(e) => return Err(ConfigError(format!("REDIS_PASSWORD_FILE={file:?}: cannot read it: {e}"))),
        }
    };
    let password = text.trim();
    if password.is_empty() || password.len() > 512 || password.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ConfigError(format!("REDIS_PASSWORD_FILE={file:?}: expected one line of 1 to 512 printable characters")));
    }
    Ok(password.to_string())
}

/// `url` with its password replaced by `password` (percent-encoded), its
/// user kept.
fn with_password(url: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or(""), host),
        None => ("", authority),
    };
    let encoded = crate::payload::percent_encode(password, b"");
    format!("{scheme}://{user}:{encoded}@{host}{path}")
}

#[derive(Debug, Clone)]
pub struct HookConfig {
    pub addr: String,
    /// REDIS_URL, or the master REDIS_SENTINELS name.
    pub redis: RedisAddress,
    /// REDIS_MIN_REPLICAS: replicas that must acknowledge a push before its 2xx.
    pub min_replicas: u32,
    pub token: Option<String>,
    pub read_token: Option<String>,
    pub threads: usize,
    pub max_body: u64,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub queue: usize,
    pub durability_check: Duration,
    /// CI_PUBLIC_URL: an https one makes the read cookie `Secure`.
    pub public_url: Option<String>,
    /// HOOK_MAX_CONNECTIONS.
    pub max_connections: usize,
    /// HISTORY_KEEP: builds kept per repository and branch.
    pub history_keep: usize,
    /// HOOK_MAX_FOLLOWERS: log followers at once.
    pub max_followers: usize,
    /// HOOK_CANCEL_RUNNING.
    pub cancel_running: CancelRunning,
    /// HOOK_FORK_PULLS and HOOK_BUILD_TAGS.
    pub policy: crate::payload::Policy,
    /// HOOK_ROUTING.
    pub routing: crate::routing::Routing,
    /// HOOK_CRON's text as given (line numbers count from its first line), and
    /// HOOK_CRON_FILE's path; [`crate::cron::load`] reads them.
    pub cron: Option<String>,
    pub cron_file: Option<String>,
}

impl HookConfig {
    pub fn from_env() -> Result<HookConfig, ConfigError> {
        let s = HOOK_SETTINGS;
        let at_least_one = |name: &str, what: &str| -> Result<u64, ConfigError> {
            match number::<u64>(s, name, what)? {
                0 => Err(ConfigError(format!("{name}=\"0\": expected {what}, at least 1"))),
                n => Ok(n),
            }
        };
        let secs = |name: &str| at_least_one(name, "a number of seconds").map(Duration::from_secs);
        Ok(HookConfig {
            addr: raw(s, "HOOK_ADDR").unwrap_or_default(),
            redis: redis_address(s)?,
            min_replicas: number(s, "REDIS_MIN_REPLICAS", "a number of replicas")?,
            token: raw(s, "HOOK_TOKEN"),
            read_token: raw(s, "HOOK_READ_TOKEN"),
            threads: at_least_one("HOOK_THREADS", "a number of threads")? as usize,
            max_body: number(s, "HOOK_MAX_BODY", "a number of bytes")?,
            idle_timeout: secs("HOOK_IDLE_TIMEOUT")?,
            request_timeout: secs("HOOK_REQUEST_TIMEOUT")?,
            queue: at_least_one("HOOK_QUEUE", "a number of requests")? as usize,
            durability_check: secs("HOOK_DURABILITY_CHECK")?,
            public_url: public_url(s)?,
            max_connections: match number::<usize>(s, "HOOK_MAX_CONNECTIONS", "a number of connections")? {
                n @ 1..=65_536 => n,
                n => return Err(ConfigError(format!("HOOK_MAX_CONNECTIONS=\"{n}\": expected 1 to 65536"))),
            },
            history_keep: at_least_one("HISTORY_KEEP", "a number of builds")? as usize,
            max_followers: at_least_one("HOOK_MAX_FOLLOWERS", "a number of clients")? as usize,
            cancel_running: {
                let v = raw(s, "HOOK_CANCEL_RUNNING").unwrap_or_default();
                CancelRunning::parse(&v).ok_or_else(|| ConfigError(format!("HOOK_CANCEL_RUNNING={v:?}: expected pulls, all or none")))?
            },
            routing: {
                let v = raw(s, "HOOK_ROUTING").unwrap_or_default();
                crate::routing::Routing::parse(&v).ok_or_else(|| ConfigError(format!("HOOK_ROUTING={v:?}: expected mod or jump")))?
            },
            cron: match std::env::var("HOOK_CRON") {
                Ok(v) if v.trim().is_empty() => None,
                Ok(v) => Some(v),
                Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => return Err(ConfigError("HOOK_CRON: not UTF-8".into())),
            },
            cron_file: raw(s, "HOOK_CRON_FILE"),
            policy: crate::payload::Policy {
                fork_pulls: match raw(s, "HOOK_FORK_PULLS").unwrap_or_default().as_str() {
                    "ignore" => false,
                    "build" => true,
                    other => return Err(ConfigError(format!("HOOK_FORK_PULLS={other:?}: expected `ignore` or `build`"))),
                },
                build_tags: match raw(s, "HOOK_BUILD_TAGS").unwrap_or_default().as_str() {
                    "0" => false,
                    "1" => true,
                    other => return Err(ConfigError(format!("HOOK_BUILD_TAGS={other:?}: expected 0 or 1"))),
                },
            },
        })
    }
}

/// The smallest SLAVE_MAX_LOG_BYTES: two halves that hold the longest line.
pub const MIN_LOG_BYTES: usize = 64 * 1024;

/// How the slave posts commit statuses (SLAVE_FORGE_TIMEOUT,
/// SLAVE_FORGE_ATTEMPTS, CI_PUBLIC_URL).
#[derive(Debug, Clone)]
pub struct ForgeSettings {
    pub timeout: Duration,
    pub attempts: u32,
    /// SLAVE_STATUS_CONTEXT: checked by [`status_context`].
    pub context: String,
    /// No trailing `/`.
    pub public_url: Option<String>,
}

/// The most executors one slave may run (SLAVE_EXECUTORS).
pub const MAX_EXECUTORS: usize = 64;

#[derive(Debug, Clone)]
pub struct SlaveConfig {
    /// REDIS_URL, or the master REDIS_SENTINELS name.
    pub redis: RedisAddress,
    pub cluster: String,
    pub index: Option<u32>,
    pub cache: std::path::PathBuf,
    pub build_timeout: Duration,
    pub lease: Duration,
    pub grace: Duration,
    /// Builds run at once (SLAVE_EXECUTORS).
    pub executors: usize,
    /// SLAVE_STEAL_AFTER; `None`: never steal.
    pub steal_after: Option<Duration>,
    pub max_attempts: u32,
    /// SLAVE_BUILD_USER: the user steps run as when the slave is root (the
    /// slave resolves it). GIT_CREDENTIALS and SLAVE_FORGES are no settings
    /// here: the slave takes them out of its environment before it reads these.
    pub build_user: String,
    /// SLAVE_BUILD_GROUPS: first and last group id (inclusive), last below u32::MAX.
    pub build_groups: (u32, u32),
    pub max_log_bytes: usize,
    /// SLAVE_CA_FILE; [`crate::slave::trust::install`] reads it.
    pub ca_file: Option<std::path::PathBuf>,
    pub forge: ForgeSettings,
    pub containers: ContainerSettings,
}

impl SlaveConfig {
    /// The settings from the environment.
    pub fn from_env() -> Result<SlaveConfig, ConfigError> {
        let s = SLAVE_SETTINGS;
        let cluster = raw(s, "SLAVE_CLUSTER").unwrap_or_default();
        if crate::routing::cluster_tokens(&cluster).is_none() {
            return Err(ConfigError(format!(
                "SLAVE_CLUSTER={cluster:?}: expected `slave` or `slave-<cap>-<cap>...` (letters, digits, `_`)"
            )));
        }
        let index = match raw(s, "SLAVE_INDEX") {
            None => None,
            Some(_) => Some(number(s, "SLAVE_INDEX", "a slave index (0, 1, ...)")?),
        };
        let secs = |name: &str| -> Result<Duration, ConfigError> {
            let n: u64 = number(s, name, "a number of seconds")?;
            if n == 0 {
                return Err(ConfigError(format!("{name}=\"0\": expected at least 1 second")));
            }
            Ok(Duration::from_secs(n))
        };
        let cache = raw(s, "SLAVE_CACHE").unwrap_or_default();
        let cache = std::path::absolute(&cache).map_err(|e| ConfigError(format!("SLAVE_CACHE={cache:?}: {e}")))?;
        let max_log_bytes: usize = number(s, "SLAVE_MAX_LOG_BYTES", "a number of bytes")?;
        if max_log_bytes < MIN_LOG_BYTES {
            return Err(ConfigError(format!("SLAVE_MAX_LOG_BYTES=\"{max_log_bytes}\": expected at least {MIN_LOG_BYTES}")));
        }
        let build_user = raw(s, "SLAVE_BUILD_USER").unwrap_or_default();
        let public_url = public_url(s)?;
        let forge = ForgeSettings {
            timeout: secs("SLAVE_FORGE_TIMEOUT")?,
            attempts: match number::<u32>(s, "SLAVE_FORGE_ATTEMPTS", "a number of attempts")? {
                0 => return Err(ConfigError("SLAVE_FORGE_ATTEMPTS=\"0\": expected at least 1".into())),
                n => n,
            },
            context: status_context(&raw(s, "SLAVE_STATUS_CONTEXT").unwrap_or_default())?,
            public_url,
        };
        let containers = ContainerSettings {
            docker: raw(s, "SLAVE_DOCKER").unwrap_or_default(),
            pull: match raw(s, "SLAVE_IMAGE_PULL").unwrap_or_default().as_str() {
                "missing" => ImagePull::Missing,
                "always" => ImagePull::Always,
                "never" => ImagePull::Never,
                other => return Err(ConfigError(format!("SLAVE_IMAGE_PULL={other:?}: expected missing, always or never"))),
            },
            default_image: raw(s, "SLAVE_DEFAULT_IMAGE"),
            memory_bytes: match number::<u64>(s, "SLAVE_STEP_MEMORY", "a number of MiB")? {
                n @ 6..=16_777_216 => n * 1024 * 1024,
                n => return Err(ConfigError(format!("SLAVE_STEP_MEMORY=\"{n}\": expected 6 to 16777216 MiB"))),
            },
            nano_cpus: match number::<f64>(s, "SLAVE_STEP_CPUS", "a number of CPUs")? {
                n if n.is_finite() && (0.01..=1024.0).contains(&n) => (n * 1e9) as u64,
                n => return Err(ConfigError(format!("SLAVE_STEP_CPUS=\"{n}\": expected 0.01 to 1024"))),
            },
            warm: match number::<usize>(s, "SLAVE_WARM_CONTAINERS", "a number of containers")? {
                n @ 0..=64 => n,
                n => return Err(ConfigError(format!("SLAVE_WARM_CONTAINERS=\"{n}\": expected 0 to 64"))),
            },
        };
        Ok(SlaveConfig {
            redis: redis_address(s)?,
            cluster,
            index,
            cache,
            build_timeout: secs("SLAVE_BUILD_TIMEOUT")?,
            lease: secs("SLAVE_LEASE")?,
            grace: secs("SLAVE_GRACE")?,
            executors: match number::<usize>(s, "SLAVE_EXECUTORS", "a number of builds")? {
                n @ 1..=MAX_EXECUTORS => n,
                n => return Err(ConfigError(format!("SLAVE_EXECUTORS=\"{n}\": expected 1 to {MAX_EXECUTORS}"))),
            },
            steal_after: match number::<f64>(s, "SLAVE_STEAL_AFTER", "a number of seconds (0: never)")? {
                0.0 => None,
                n if n.is_finite() && (0.1..=86_400.0).contains(&n) => Some(Duration::from_secs_f64(n)),
                n => return Err(ConfigError(format!("SLAVE_STEAL_AFTER=\"{n}\": expected 0 (never) or 0.1 to 86400 seconds"))),
            },
            max_attempts: match number::<u32>(s, "SLAVE_MAX_ATTEMPTS", "a number of attempts")? {
                0 => return Err(ConfigError("SLAVE_MAX_ATTEMPTS=\"0\": expected at least 1".into())),
                n => n,
            },
            build_user,
            build_groups: group_range(s)?,
            max_log_bytes,
            ca_file: raw(s, "SLAVE_CA_FILE").map(std::path::PathBuf::from),
            forge,
            containers,
        })
    }
}

/// SLAVE_BUILD_GROUPS: `<first>-<last>`, group ids above 0 and below u32::MAX, at least 100.
fn group_range(settings: &[Setting]) -> Result<(u32, u32), ConfigError> {
    let value = raw(settings, "SLAVE_BUILD_GROUPS").unwrap_or_default();
    let bad = || {
        ConfigError(format!("SLAVE_BUILD_GROUPS={value:?}: expected <first>-<last>, group ids from 1 to 4294967294, at least 100 of them"))
    };
    let (first, last) = value.split_once('-').ok_or_else(bad)?;
    let (first, last) = (first.trim().parse::<u32>().map_err(|_| bad())?, last.trim().parse::<u32>().map_err(|_| bad())?);
    if first == 0 || last == u32::MAX || last < first || last - first < 99 {
        return Err(bad());
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_replaces_the_urls_password() {
        assert_eq!(with_password("redis://redis:6379/0", "abc"), "redis://:abc@redis:6379/0");
        assert_eq!(with_password("redis://u:old@redis:6379/2", "n/w+"), "redis://u:n%2Fw%2B@redis:6379/2");
        assert_eq!(with_password("redis://redis", "x"), "redis://:x@redis");
        let dir = std::env::temp_dir().join(format!("ci-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(password_from(file.to_str().unwrap(), Duration::ZERO).unwrap(), "s3cret");
        std::fs::write(&file, "two words\n").unwrap();
        assert!(password_from(file.to_str().unwrap(), Duration::ZERO).unwrap_err().to_string().contains("expected one line"));
        let missing = password_from(dir.join("none").to_str().unwrap(), Duration::ZERO).unwrap_err().to_string();
        assert!(missing.contains("cannot read it"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sentinels_need_a_master_name_and_host_port_items() {
        let url = "redis://:pw@ignored:6379/3";
        assert_eq!(RedisAddress::parse(url, None, None).unwrap().sentinels, None);
        let bad = RedisAddress::parse("http://:hunter2@db/0", None, None).unwrap_err().to_string();
        assert!(bad.starts_with("REDIS_URL=\"http://:***@db/0\": "), "{bad}");
        let a = RedisAddress::parse(url, Some("10.0.0.1:26379, s2:26380,[::1]:26381"), Some("ci")).unwrap();
        let want = vec![("10.0.0.1".to_string(), 26379), ("s2".to_string(), 26380), ("::1".to_string(), 26381)];
        assert_eq!(a.sentinels, Some((want, "ci".to_string())));
        let alone = RedisAddress::parse(url, Some("s1:26379"), None).unwrap_err().to_string();
        assert!(alone.starts_with("REDIS_SENTINELS is set but REDIS_MASTER_NAME is not"), "{alone}");
        let alone = RedisAddress::parse(url, None, Some("ci")).unwrap_err().to_string();
        assert!(alone.starts_with("REDIS_MASTER_NAME is set but REDIS_SENTINELS is not"), "{alone}");
        for bad in ["s1", "s1:", ":26379", "s1:0", "s1:99999", " , "] {
            let e = RedisAddress::parse(url, Some(bad), Some("ci")).unwrap_err().to_string();
            assert!(e.starts_with("REDIS_SENTINELS="), "{bad}: {e}");
        }
    }

    #[test]
    fn help_lists_every_setting_with_its_default() {
        let text = help("hook", "about", HOOK_SETTINGS);
        for s in HOOK_SETTINGS {
            assert!(text.contains(s.name), "{} missing", s.name);
        }
        assert!(text.contains("26214400"));
    }

    #[test]
    fn a_status_context_is_bounded_and_plain() {
        for good in ["ci-backend", "ci", "acme/ci", "a.b_c-D9", &"x".repeat(MAX_STATUS_CONTEXT)] {
            assert_eq!(status_context(good).unwrap(), good);
        }
        let long = "x".repeat(MAX_STATUS_CONTEXT + 1);
        for bad in ["", "/ci", "ci/", "a//b", "ci backend", "ci\nx", "ci\u{202e}", "é", "ci:x", "ci\"x", &long] {
            let e = status_context(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("SLAVE_STATUS_CONTEXT={bad:?}: expected 1 to 64 characters")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_configuration_page_lists_every_setting_with_its_default() {
        let readme = include_str!("../docs/configuration.md");
        for s in HOOK_SETTINGS.iter().chain(SLAVE_SETTINGS) {
            let row = readme.lines().find(|l| l.starts_with(&format!("| `{}` |", s.name)));
            let row = row.unwrap_or_else(|| panic!("docs/configuration.md has no row for {}", s.name));
            if !s.default.is_empty() {
                assert!(
                    row.contains(&format!("| `{}` |", s.default)),
                    "docs/configuration.md's row for {} lacks the default {}: {row}",
                    s.name,
                    s.default
                );
            }
        }
    }
}
