//! One build: workspace → integration.yml → runner → log lines. The log-line
//! formats here are the contract `GET /status` prints.

use crate::config::GitCredentials;
use crate::integration::{self, Step};
use crate::queue::{Outcome, Started};
use crate::runner::{self, Exit};
use crate::workspace::{self, Git};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Longest snippet text shown in a log line.
const SNIPPET_SHOWN: usize = 60;
/// The `LOG` variable: at most this many bytes of the log so far.
const LOG_ENV_BYTES: usize = 4096;

/// What a slave builds with.
pub struct Context<'a> {
    pub cache: &'a Path,
    pub creds: &'a GitCredentials,
    pub git_home: Option<PathBuf>,
    pub host: &'a str,
    pub slave: &'a str,
    pub timeout: Duration,
    /// The slave's own environment, minus secrets: the base of every step's.
    pub base_env: &'a [(String, String)],
    /// Set on shutdown past the grace period: stop and store nothing.
    pub abort: &'a AtomicBool,
}

/// The first line of a snippet, cut to a readable length.
pub fn cut(snippet: &str) -> String {
    let first = snippet.trim().lines().next().unwrap_or("");
    if first.chars().count() > SNIPPET_SHOWN || snippet.trim().lines().count() > 1 {
        let short: String = first.chars().take(SNIPPET_SHOWN).collect();
        format!("{short}...")
    } else {
        first.to_string()
    }
}

/// `<branch>-<short sha>`, every character outside `A-Za-z0-9=` as `-`.
pub fn tag(branch: &str, short: &str) -> String {
    format!("{branch}-{short}").chars().map(|c| if c.is_ascii_alphanumeric() || c == '=' { c } else { '-' }).collect()
}

/// Runs the job; `None` when aborted by shutdown (the job stays queued).
pub fn run(ctx: &Context, job: &Started) -> Option<Outcome> {
    let started = Instant::now();
    let push = &job.push;
    let mut log: Vec<String> = Vec::new();
    let short: String = push.sha.chars().take(10).collect();
    let fail = |mut log: Vec<String>, why: String| {
        log.push(format!("* {why}"));
        Some(Outcome { passed: false, log, seconds: started.elapsed().as_secs() })
    };

    let dir = workspace::checkout_dir(ctx.cache, &push.repo, &push.branch);
    let git = Git { creds: ctx.creds, home: ctx.git_home.clone() };
    let commit = match git.prepare(&dir, &push.clone_url, &push.branch, &push.sha, job.reset) {
        Ok(c) => c,
        Err(e) => {
            log.push(format!("- commit {short}"));
            return fail(log, format!("checkout failed: {e}"));
        }
    };
    let subject = commit.message.lines().next().unwrap_or("");
    log.push(format!("- commit {short} ({subject})"));

    let steps = match read_steps(&dir) {
        Ok(s) => s,
        Err(why) => return fail(log, why),
    };

    let mut ok = true;
    let deadline = started + ctx.timeout;
    for (number, step) in steps.iter().enumerate() {
        log.push(format!("- {}", step.title));
        let cwd = match step_dir(&dir, step) {
            Ok(d) => d,
            Err(why) => {
                log.push(format!("* step {} ({:?}): {why}", number + 1, step.title));
                ok = false;
                continue;
            }
        };
        for snippet in &step.shell {
            let (forced, script) = match snippet.strip_prefix("no-skip ") {
                Some(rest) => (true, rest),
                None => (false, snippet.as_str()),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if (!ok && !forced) || left.is_zero() {
                log.push(format!("[skipped] {}", cut(script)));
                continue;
            }
            let env = step_env(ctx, job, &commit, &short, &log, ok, step);
            let masks = secret_values(&env, &step.secrets);
            let ran = runner::run(script, &cwd, &env, left, ctx.abort);
            let secs = ran.elapsed.as_secs();
            let (passed, how) = match &ran.exit {
                Exit::Code(0) => (true, "exit code 0".to_string()),
                Exit::Code(c) => (false, format!("exit code {c}")),
                Exit::TimedOut => (false, "timed out".to_string()),
                Exit::SpawnFailed(e) => (false, format!("could not start: {e}")),
                Exit::Aborted => return None,
            };
            let tag = if passed { "[passed]" } else { "[failed]" };
            log.push(mask(&format!("{tag} {} ({secs} seconds, {how})", cut(script)), &masks));
            if step.debug {
                if ran.output.dropped > 0 {
                    log.push(format!("{tag}   . ({} earlier output lines dropped)", ran.output.dropped));
                }
                log.extend(ran.output.lines.iter().map(|l| format!("{tag}   . {}", mask(l, &masks))));
            }
            ok &= passed;
            if ran.exit == Exit::TimedOut {
                log.push(format!("* build timed out after {} seconds", ctx.timeout.as_secs()));
            }
        }
    }
    Some(Outcome { passed: ok, log, seconds: started.elapsed().as_secs() })
}

/// The values to hide: each listed variable's value, and each line of a
/// multi-line value on its own (output is recorded line by line). Values
/// shorter than 4 characters are not masked (they would mask everything).
fn secret_values(env: &[(String, String)], names: &[String]) -> Vec<String> {
    let mut values: Vec<String> = Vec::new();
    for (_, value) in env.iter().filter(|(k, _)| names.contains(k)) {
        values.push(value.clone());
        values.extend(value.lines().map(|l| l.trim().to_string()));
    }
    values.retain(|v| v.len() >= 4);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

fn mask(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

fn read_steps(dir: &Path) -> Result<Vec<Step>, String> {
    let path = dir.join("integration.yml");
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("integration.yml missing".into()),
        Err(e) => return Err(format!("integration.yml unreadable: {e}")),
    };
    if meta.len() > integration::MAX_FILE as u64 {
        return Err(format!("integration.yml is larger than {} bytes", integration::MAX_FILE));
    }
    let text = std::fs::read(&path).map_err(|e| format!("integration.yml unreadable: {e}"))?;
    let text = String::from_utf8(text).map_err(|_| "integration.yml is not UTF-8".to_string())?;
    integration::parse(&text).map_err(|e| e.0)
}

/// The step's directory, which must exist and (symlinks resolved) stay inside.
fn step_dir(root: &Path, step: &Step) -> Result<PathBuf, String> {
    let Some(cwd) = &step.cwd else { return Ok(root.to_path_buf()) };
    let real_root = root.canonicalize().map_err(|e| format!("checkout unreadable: {e}"))?;
    let real = root.join(cwd).canonicalize().map_err(|_| format!("cwd {cwd:?} does not exist"))?;
    if !real.starts_with(&real_root) {
        return Err(format!("cwd {cwd:?} leaves the checkout"));
    }
    if !real.is_dir() {
        return Err(format!("cwd {cwd:?} is not a directory"));
    }
    Ok(real)
}

fn step_env(
    ctx: &Context,
    job: &Started,
    commit: &workspace::Commit,
    short: &str,
    log: &[String],
    ok: bool,
    step: &Step,
) -> Vec<(String, String)> {
    let push = &job.push;
    let mut env: Vec<(String, String)> = ctx.base_env.to_vec();
    let mut abridged = String::new();
    for line in log.iter().rev() {
        if abridged.len() + line.len() + 1 > LOG_ENV_BYTES {
            break;
        }
        abridged.insert_str(0, &format!("{line}\n"));
    }
    let vars = [
        ("HOST", ctx.host.to_string()),
        ("BRANCH", push.branch.clone()),
        ("COMMIT", push.sha.clone()),
        ("COMMIT_SHORT", short.to_string()),
        ("MESSAGE", commit.message.clone()),
        ("TAG", tag(&push.branch, short)),
        ("TIMESTAMP", commit.timestamp.clone()),
        ("LOG", abridged),
        ("OK", ok.to_string()),
        ("CI", "true".to_string()),
        ("REPO", push.repo.clone()),
        ("BUILD_ID", job.id.clone()),
    ];
    for (k, v) in vars.into_iter().map(|(k, v)| (k.to_string(), v)).chain(step.env.iter().cloned()) {
        env.retain(|(name, _)| *name != k);
        env.push((k, v));
    }
    env
}

/// The slave's environment passed on to steps: everything but its own
/// settings and secrets.
pub fn base_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            !(k.starts_with("SLAVE_")
                || k.starts_with("GIT_")
                || k.starts_with("REDIS")
                || k.starts_with("HOOK_")
                || k.starts_with("CI_GIT_")
                || k == "RUST_LOG")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keeps_only_safe_characters() {
        assert_eq!(tag("feature/x_y", "1a2b3c4d5e"), "feature-x-y-1a2b3c4d5e");
        assert_eq!(tag("a=b", "0"), "a=b-0");
    }

    #[test]
    fn secrets_are_masked_line_by_line() {
        let env = vec![("K".to_string(), "first-line\nsecond-line".to_string()), ("P".to_string(), "abc".to_string())];
        let masks = secret_values(&env, &["K".to_string(), "P".to_string()]);
        assert_eq!(mask("got second-line and first-line", &masks), "got *** and ***");
        assert_eq!(mask("abc stays (too short to mask)", &masks), "abc stays (too short to mask)");
    }

    #[test]
    fn snippets_are_cut() {
        assert_eq!(cut("false"), "false");
        assert_eq!(cut("echo a\necho b"), "echo a...");
        assert_eq!(cut(&"x".repeat(100)), format!("{}...", "x".repeat(60)));
    }
}
