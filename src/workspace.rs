//! The cached clones: one per repository and branch under the cache
//! directory, at a path no name can steer outside it; git clone, fetch and
//! checkout run with argument vectors, credentials given to git alone, under
//! the build's deadline and abort flag, each in its own process group (see
//! `process`).

use crate::config::GitCredentials;
use crate::process::{self, Capture, Exit};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Longest path component we write (file systems allow 255 bytes).
const MAX_COMPONENT: usize = 180;
/// Bytes of a git command's stdout kept (`git show`: the commit message).
const STDOUT_HEAD: usize = 64 * 1024;
/// Bytes of a git command's stderr kept for its error message.
const STDERR_TAIL: usize = 16 * 1024;
/// An http(s) transfer slower than 1000 bytes/s for this long is given up.
const LOW_SPEED_SECONDS: u32 = 60;
/// ssh for git, unless the operator set GIT_SSH_COMMAND: no prompts, and a
/// dead connection noticed within a minute.
const SSH: &str = "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4";

/// `<cache>/<encoded repo>/<encoded branch>`.
pub fn checkout_dir(cache: &Path, repo: &str, branch: &str) -> PathBuf {
    cache.join(encode(repo)).join(encode(branch))
}

/// Maps any name to one safe path component: `[A-Za-z0-9_.-]` kept, every
/// other byte (and a leading `.` or `-`) as `%XX`, so names never collide,
/// `/` and `..` never survive, and overlong names end in a CRC32.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || ((b == b'.' || b == b'-') && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    if out.len() > MAX_COMPONENT {
        out.truncate(MAX_COMPONENT - 9);
        out.push_str(&format!("~{:08x}", crc32fast::hash(name.as_bytes())));
    }
    out
}

/// A git failure, or why git was stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum GitError {
    /// What ran (credentials never shown), how it ended, its stderr's end.
    Failed(String),
    /// `git <what> timed out after <n> seconds`.
    TimedOut(String),
    /// The slave is shutting down.
    Aborted,
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::Failed(m) | GitError::TimedOut(m) => f.write_str(m),
            GitError::Aborted => f.write_str("stopped: the slave is shutting down"),
        }
    }
}

/// The pushed commit, as git knows it.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub message: String,
    /// Committer date, ISO 8601.
    pub timestamp: String,
}

pub struct Git<'a> {
    pub creds: &'a GitCredentials,
    /// Holds `.netrc` when GIT_NETRC is set (git's HOME).
    pub home: Option<PathBuf>,
    /// The build's deadline, and its length (SLAVE_BUILD_TIMEOUT) for messages.
    pub deadline: Instant,
    pub limit: Duration,
    pub abort: &'a AtomicBool,
}

impl Git<'_> {
    fn command(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new("git");
        if let Some(dir) = dir {
            cmd.arg("-C").arg(dir);
        }
        cmd.args(["-c", "advice.detachedHead=false", "-c", "gc.auto=0"]);
        cmd.args(["-c", "http.lowSpeedLimit=1000", "-c"]).arg(format!("http.lowSpeedTime={LOW_SPEED_SECONDS}"));
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            cmd.env("GIT_SSH_COMMAND", SSH);
        }
        if self.creds.username.is_some() || self.creds.password.is_some() {
            // The helper reads the values from git's own environment only.
            cmd.args(["-c", "credential.helper=", "-c"]);
            cmd.arg("credential.helper=!f() { echo \"username=${CI_GIT_USERNAME}\"; echo \"password=${CI_GIT_PASSWORD}\"; }; f");
            cmd.env("CI_GIT_USERNAME", self.creds.username.as_deref().unwrap_or(""));
            cmd.env("CI_GIT_PASSWORD", self.creds.password.as_deref().unwrap_or(""));
        }
        if let Some(home) = &self.home {
            cmd.env("HOME", home);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0").env("GIT_ASKPASS", "true");
        cmd
    }

    /// Runs git to its end or the build's deadline; `shown` is what a
    /// message may say was run. Returns stdout's head.
    fn run(&self, dir: Option<&Path>, args: &[&str], shown: &str) -> Result<String, GitError> {
        let mut cmd = self.command(dir);
        cmd.args(args);
        let done = process::run(cmd, Capture::Split { head: STDOUT_HEAD, tail: STDERR_TAIL }, self.deadline, self.abort);
        let how = match done.exit {
            Exit::Code(0) => return Ok(String::from_utf8_lossy(&done.stdout).into_owned()),
            Exit::Aborted => return Err(GitError::Aborted),
            Exit::TimedOut => return Err(GitError::TimedOut(format!("git {shown} timed out after {} seconds", self.limit.as_secs()))),
            Exit::SpawnFailed(e) => return Err(GitError::Failed(format!("git {shown}: cannot run git: {e}"))),
            Exit::Code(c) => format!("exit code {c}"),
        };
        let said: Vec<&str> = done.output.lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        let said = said[said.len().saturating_sub(3)..].join(" / ");
        Err(GitError::Failed(scrub(&format!("git {shown} failed ({how}): {said}"), self.creds)))
    }

    /// Makes `dir` a clone of `url` with `sha` checked out (detached).
    /// Untracked files from earlier builds stay: the cache is the point.
    pub fn prepare(&self, dir: &Path, url: &str, branch: &str, sha: &str, reset: bool) -> Result<Commit, GitError> {
        if reset || (dir.exists() && !dir.join(".git").exists()) {
            remove(dir)?;
        }
        let fresh = !dir.exists();
        if fresh {
            self.clone_into(dir, url)?;
        }
        // The common path is three git processes: fetch, checkout, show.
        // Fetch into refs, never a bare sha, so later fetches stay small.
        let checkout = |git: &Self| git.run(Some(dir), &["checkout", "--quiet", "--force", "--detach", sha], &format!("checkout {sha}"));
        if !fresh {
            let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
            // A deleted or renamed branch still builds by sha below.
            soft(self.run(Some(dir), &["fetch", "--quiet", "--no-tags", "origin", &spec], "fetch origin <branch>"))?;
        }
        match checkout(self) {
            Ok(_) => {}
            Err(GitError::Failed(_)) => {
                // Not reachable from the branch (force-pushed since, or fetched
                // before it was pushed): ask for the commit itself.
                let spec = format!("+{sha}:refs/ci/build");
                self.run(Some(dir), &["fetch", "--quiet", "--no-tags", "origin", &spec], &format!("fetch origin {sha}"))?;
                checkout(self)?;
            }
            Err(e) => return Err(e),
        }
        let info = self.run(Some(dir), &["show", "-s", "--format=%cI%n%B", sha], "show")?;
        let (timestamp, message) = info.split_once('\n').unwrap_or((&info, ""));
        Ok(Commit { timestamp: timestamp.trim().to_string(), message: message.trim_end().to_string() })
    }

    fn clone_into(&self, dir: &Path, url: &str) -> Result<(), GitError> {
        let parent = dir.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|e| GitError::Failed(format!("cannot create {}: {e}", parent.display())))?;
        // Clone beside, then rename: a slave killed mid-clone leaves no half clone behind.
        let tmp = parent.join(format!(".clone-{}-{}", std::process::id(), crate::unix_now() as u64));
        let tmp_str = tmp.to_string_lossy().into_owned();
        let result = self.run(None, &["clone", "--quiet", "--no-checkout", "--", url, &tmp_str], &format!("clone {}", scrub_url(url)));
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, dir).map_err(|e| GitError::Failed(format!("cannot move the clone into {}: {e}", dir.display())))
    }
}

/// A failed fetch of the branch is no failure yet (the sha may be there);
/// a timeout or an abort is.
fn soft(result: Result<String, GitError>) -> Result<(), GitError> {
    match result {
        Ok(_) | Err(GitError::Failed(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove(dir: &Path) -> Result<(), GitError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::Failed(format!("cannot wipe {}: {e}", dir.display()))),
    }
}

/// A URL without its user-info, for messages.
pub fn scrub_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) if rest.contains('@') => {
            let host = &rest[rest.rfind('@').map_or(0, |i| i + 1)..];
            format!("{scheme}://***@{host}")
        }
        _ => url.to_string(),
    }
}

/// Removes every credential from a message.
pub fn scrub(text: &str, creds: &GitCredentials) -> String {
    let mut out = text.to_string();
    for secret in [&creds.password, &creds.username].into_iter().flatten() {
        if secret.len() >= 3 {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_cache() {
        let cache = Path::new("/cache");
        for (repo, branch) in [("../../etc", "x"), ("/abs", ".."), ("a/b", "-rf"), ("a\0b", "é")] {
            let p = checkout_dir(cache, repo, branch);
            assert_eq!(p.components().count(), 4, "{p:?}");
            assert!(p.starts_with(cache));
            assert!(!p.to_string_lossy().contains("/../"));
        }
        assert_eq!(encode(".."), "%2E.");
        assert_eq!(encode("acme/app"), "acme%2Fapp");
        assert_ne!(encode("a/b"), encode("a%2Fb"));
    }

    #[test]
    fn long_names_stay_short_and_distinct() {
        let a = encode(&"x".repeat(1000));
        let b = encode(&format!("{}y", "x".repeat(999)));
        assert!(a.len() <= MAX_COMPONENT);
        assert_ne!(a, b);
    }

    #[test]
    fn urls_and_messages_are_scrubbed() {
        assert_eq!(scrub_url("https://u:pw@host/r.git"), "https://***@host/r.git");
        let creds = GitCredentials { username: Some("bob".into()), password: Some("s3cret".into()), netrc: None };
        assert_eq!(scrub("auth s3cret for bob", &creds), "auth *** for ***");
    }
}
