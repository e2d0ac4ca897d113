//! The cached clones, at paths no name can steer outside the cache:
//!
//! - `<cache>/<repo>/.mirror-<crc32 of the URL>.git`: a bare mirror, written
//!   only by the slave's own user. The one place git talks to the network, and
//!   the only git commands that may get credentials.
//! - `<cache>/<repo>/<branch>/checkout`: the checkout the steps run in,
//!   owned by the build user, fetched from the mirror by the build user's
//!   git; `home` beside it, the steps' HOME. Under a root slave the
//!   repository's directory and each branch's have groups of their own (see
//!   `build_groups`): a build reaches its own checkout and no other.
//!
//! Every git command runs by argument vector under the build's deadline and
//! abort flag, in its own process group (see `process`).

use crate::slave::build::commit_object::{self, Commit};
use crate::slave::build::inputs::{self, Trees};
use crate::slave::build::objects::{self, Objects};
use crate::slave::build::pack_fetch;
use crate::slave::build::upkeep;
use crate::slave::build::when::Changed;
use crate::slave::build_groups::BuildGroups;
use crate::slave::build_user::BuildUser;
use crate::slave::credentials::Credentials;
use crate::slave::error::CacheError;
use crate::slave::proc::process::{self, Capture, Exit};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest path component we write (file systems allow 255 bytes).
const MAX_COMPONENT: usize = 180;
/// The build user's HOME before each checkout had its own.
const OLD_HOME: &str = ".home";
/// The global git configuration of the build user's git commands.
const BUILD_GITCONFIG: &str = ".build-gitconfig";
/// Where versions before credentials were host-bound copied GIT_NETRC.
const OLD_NETRC_HOME: &str = ".git-home";
/// Bytes of a git command's stdout kept (`git show`: the commit message).
const STDOUT_HEAD: usize = 64 * 1024;
/// Most changed names `when: path` reads; past it (or past
/// MAX_CHANGED_BYTES of names) everything counts as changed.
pub const MAX_CHANGED: usize = 10_000;
pub const MAX_CHANGED_BYTES: usize = 1 << 20;
/// Most refs of other queued builds one fetch brings along.
const MAX_ALSO: usize = 32;
/// Bytes of a git command's stderr kept for its error message.
const STDERR_TAIL: usize = 16 * 1024;
/// An http(s) transfer slower than 1000 bytes/s for this long is given up.
const LOW_SPEED_SECONDS: u32 = 60;
/// ssh for git, unless the operator set GIT_SSH_COMMAND: no prompts, and a
/// dead connection noticed within a minute.
const SSH: &str = "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4";

/// `<cache>/<encoded repo>/<encoded branch>`: the branch's checkout and
/// HOME, closed to every other branch's builds.
fn branch_dir(cache: &Path, repo: &str, branch: &str) -> PathBuf {
    cache.join(encode(repo)).join(encode(branch))
}

/// The branch's checkout, where its steps run.
pub fn checkout_dir(cache: &Path, repo: &str, branch: &str) -> PathBuf {
    branch_dir(cache, repo, branch).join("checkout")
}

/// `<cache>/<encoded repo>/.mirror-<crc32 of url, 8 hex digits>.git`: one per
/// URL, so that a push naming another URL for a repository never fetches
/// into (or gets the credentials of) the mirror of the first.
pub fn mirror_dir(cache: &Path, repo: &str, url: &str) -> PathBuf {
    cache.join(encode(repo)).join(format!(".mirror-{:08x}.git", crc32fast::hash(url.as_bytes())))
}

/// The steps' HOME (when the slave switches users): one per checkout,
/// beside it, kept from build to build like the checkout.
pub fn home_dir(cache: &Path, repo: &str, branch: &str) -> PathBuf {
    branch_dir(cache, repo, branch).join("home")
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

/// At startup: the cache directory readable by the build user, its HOME,
/// the git configuration of its git commands, and no netrc copy left by an
/// older version.
pub(crate) fn prepare_cache(cache: &Path, user: &BuildUser) -> Result<(), CacheError> {
    let fail = |path: &Path, error: std::io::Error| CacheError::Prepare { path: path.to_path_buf(), error };
    std::fs::create_dir_all(cache).map_err(|e| fail(cache, e))?;
    let old = cache.join(OLD_NETRC_HOME);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| fail(&old, e))?;
        log::info!("slave.cleanup removed={}: a copy of GIT_NETRC left by an older version", crate::logging::quote(&old.to_string_lossy()));
    }
    // Trusts the mirrors (owned by the slave's user) for the build user's
    // fetches from them; nothing else.
    let config = cache.join(BUILD_GITCONFIG);
    std::fs::write(&config, "[safe]\n\tdirectory = *\n").map_err(|e| fail(&config, e))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).map_err(|e| fail(&config, e))?;
    // One HOME for every build, from before each checkout had its own.
    let old = cache.join(OLD_HOME);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| fail(&old, e))?;
    }
    if user.switch {
        reachable_by(cache, user)?;
    }
    Ok(())
}

/// Whether the build user can enter the cache (asked of the system itself,
/// by a shell running as that user): a cache below a directory closed to
/// others (`/root` is mode 0700) would fail every build at its first clone.
fn reachable_by(cache: &Path, user: &BuildUser) -> Result<(), CacheError> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "cd -- \"$1\"", "sh"]).arg(cache).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    user.apply(&mut cmd);
    if cmd.status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let closed = cache
        .ancestors()
        .filter_map(|dir| Some((dir, std::fs::metadata(dir).ok()?.permissions().mode())))
        .filter(|(_, mode)| mode & 0o001 == 0)
        .last()
        .map(|(dir, mode)| (dir.to_path_buf(), mode & 0o7777));
    Err(CacheError::Closed { cache: cache.to_path_buf(), user: user.name.clone(), closed })
}

/// Why a checkout could not be prepared. Each kind says whether another
/// attempt could do better (transient) or not (fatal); the messages name the
/// command (never a credential), how it ended and the end of its stderr.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GitError {
    /// Transient: git could not clone or fetch from the remote (the network,
    /// the forge, a credential it refused).
    Remote(String),
    /// Fatal: the remote has no such ref or commit (deleted, force-pushed away).
    MissingRef(String),
    /// Fatal: git failed on the cache (a checkout of a commit the mirror
    /// lacks, `show`, `config`).
    Local(String),
    /// Fatal: the cache or git itself: a directory that cannot be created,
    /// given to the build user, moved or wiped; git that cannot start or be
    /// handed its credentials; a clone URL git would take for an option.
    Setup(String),
    /// Transient: a git command ran past the build's deadline
    /// (`git <what> timed out after <n> seconds`).
    TimedOut(String),
    /// The build was stopped from outside (shutdown, lost index, cancel).
    Aborted,
}

impl GitError {
    /// The build's time is up or it was stopped: nothing more is tried.
    /// Any other failure leaves the caller a way round (the sha by itself).
    fn ends_the_build(&self) -> bool {
        matches!(self, GitError::TimedOut(_) | GitError::Aborted)
    }
}

impl std::fmt::Display for GitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GitError::Remote(m) | GitError::MissingRef(m) | GitError::Local(m) | GitError::Setup(m) | GitError::TimedOut(m) => {
                f.write_str(m)
            }
            GitError::Aborted => f.write_str("stopped: the slave is shutting down"),
        }
    }
}

/// What git says when the remote lacks the ref or commit asked for.
const MISSING_REF: &[&str] = &["couldn't find remote ref", "not our ref", "no such remote ref", "unadvertised object"];

/// A checkout ready: its commit, who its steps run as, and what keeping
/// it to itself took.
pub struct Prepared {
    pub commit: Commit,
    pub user: BuildUser,
    pub contained: Contained,
}

/// Time the containment of a checkout took (for the bench and operators).
#[derive(Debug, Clone, Copy, Default)]
pub struct Contained {
    /// The repository's and the branch's groups found (or given).
    pub groups: Duration,
    /// The checkout's `.git` taken back (`disarm`).
    pub disarm: Duration,
}

/// Git for one build.
#[derive(Clone, Copy)]
pub struct Git<'a> {
    /// Absolute.
    pub cache: &'a Path,
    pub creds: &'a Credentials,
    pub user: &'a BuildUser,
    /// The groups of repositories and checkouts (a root slave's).
    pub groups: Option<&'a BuildGroups>,
    /// The checkout's HOME for the build user's git (set by `prepare`).
    pub home: Option<&'a Path>,
    /// The environment of the build user's git commands (the steps' base).
    pub env: &'a [(String, String)],
    /// The build's deadline, and its length (SLAVE_BUILD_TIMEOUT) for messages.
    pub deadline: Instant,
    pub limit: Duration,
    pub abort: &'a AtomicBool,
}

impl Git<'_> {
    /// Git as the slave's user, in the mirror: the environment of the slave
    /// minus its settings; credentials for `url` when one matches.
    fn mirror_git(&self, dir: Option<&Path>, url: Option<&str>) -> Result<Command, GitError> {
        let mut cmd = Command::new(process::git());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("SLAVE_") || k.starts_with("REDIS") || k.starts_with("HOOK_") {
                cmd.env_remove(&*k);
            }
        }
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            cmd.env("GIT_SSH_COMMAND", SSH);
        }
        // No prompt and no askpass program: credentials come from GIT_CREDENTIALS alone.
        cmd.env("GIT_TERMINAL_PROMPT", "0").env_remove("GIT_ASKPASS").env_remove("SSH_ASKPASS");
        if let Some(dir) = dir {
            cmd.arg("-C").arg(dir);
        }
        // No automatic gc or maintenance: each would start more processes on a build's path.
        cmd.args(["-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "core.hooksPath=/dev/null", "-c", "core.sharedRepository=0644"]);
        cmd.args(["-c", "http.lowSpeedLimit=1000", "-c"]).arg(format!("http.lowSpeedTime={LOW_SPEED_SECONDS}"));
        self.creds.configure(&mut cmd, url).map_err(|e| GitError::Setup(format!("cannot hand git its credentials: {e}")))?;
        Ok(cmd)
    }

    /// Git as the build user, in its checkout: the steps' base environment,
    /// no credentials.
    fn build_git(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new(process::git());
        cmd.env_clear().envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(home) = self.home {
            cmd.env("HOME", home);
        }
        cmd.env("GIT_CONFIG_GLOBAL", self.cache.join(BUILD_GITCONFIG)).env("GIT_TERMINAL_PROMPT", "0");
        if let Some(dir) = dir {
            cmd.arg("-C").arg(dir);
        }
        cmd.args(["-c", "advice.detachedHead=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false", "-c", "credential.helper="]);
        // No hook and no fsmonitor, whatever a build wrote into the checkout (see `disarm`).
        cmd.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.attributesFile=/dev/null"]);
        self.user.apply(&mut cmd);
        // A checkout may run code of the build's (hooks, filters of its .git/config).
        process::die_with_parent(&mut cmd);
        cmd
    }

    /// Runs git to its end or the build's deadline; `shown` is what a
    /// message may say was run. Returns stdout's head.
    fn run(&self, cmd: Result<Command, GitError>, args: &[&str], shown: &str) -> Result<String, GitError> {
        self.run_kept(cmd, args, shown, STDOUT_HEAD)
    }

    /// [`Git::run`], keeping the first `head` bytes of stdout.
    fn run_kept(&self, cmd: Result<Command, GitError>, args: &[&str], shown: &str, head: usize) -> Result<String, GitError> {
        let mut cmd = cmd?;
        cmd.args(args);
        let done = process::run(cmd, Capture::Split { head, tail: STDERR_TAIL }, self.deadline, self.abort);
        self.outcome(done, shown).map(|out| String::from_utf8_lossy(&out).into_owned())
    }

    /// A git process's end: its stdout's head for exit code 0; a timeout or
    /// an abort as such; else why, with the last lines it said.
    fn outcome(&self, done: process::Finished, shown: &str) -> Result<Vec<u8>, GitError> {
        let how = match done.exit {
            Exit::Code(0) => return Ok(done.stdout),
            Exit::Aborted => return Err(GitError::Aborted),
            Exit::TimedOut => return Err(GitError::TimedOut(format!("git {shown} timed out after {} seconds", self.limit.as_secs()))),
            Exit::SpawnFailed(e) => return Err(GitError::Setup(format!("git {shown}: cannot run git: {e}"))),
            Exit::Code(c) => format!("exit code {c}"),
        };
        let said: Vec<&str> = done.output.lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
        let said = said[said.len().saturating_sub(3)..].join(" / ");
        Err(GitError::Local(self.creds.scrub(&format!("git {shown} failed ({how}): {said}"))))
    }

    /// Makes the checkout of `branch` a clone of `url` with `sha` checked out
    /// (detached), fetching `source` (`refs/heads/<branch>`, the target's
    /// `refs/pull/<N>/head`, or `refs/tags/<name>`) into the mirror under the
    /// same name. An annotated tag's object is peeled to its commit.
    /// Untracked files from earlier builds stay: the cache is the point.
    /// `reset` starts the checkout and the mirror afresh.
    ///
    /// The common path: the commit fetched into the mirror by one request
    /// ([`pack_fetch`]), then `git checkout` (the checkout borrows the
    /// mirror's objects: no second fetch); the commit's message and date
    /// are read from its object ([`commit_object`]; `git show` beside the
    /// checkout when it cannot be). A commit the mirror already holds,
    /// loose or packed, is not fetched again. A `git fetch` (when the one
    /// request is not taken) also brings the branches `queued` names (the
    /// sources of other builds of this repository waiting here, asked only
    /// when a fetch runs), so that theirs is skipped.
    /// Returns the commit and who the build's steps run as.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare(
        &self,
        repo: &str,
        url: &str,
        branch: &str,
        source: &str,
        sha: &str,
        reset: bool,
        queued: Queued,
    ) -> Result<Prepared, GitError> {
        if url.starts_with('-') {
            return Err(GitError::Setup(format!("clone URL {:?} is not usable", scrub_url(url))));
        }
        let repo_dir = self.cache.join(encode(repo));
        // Executors build other branches of this repository at once: one
        // prepares at a time, since they share its mirror.
        let held = repo_lock(&repo_dir);
        let _held = held.lock().unwrap_or_else(|p| p.into_inner());
        let mirror = mirror_dir(self.cache, repo, url);
        let branch_dir = branch_dir(self.cache, repo, branch);
        let dir = checkout_dir(self.cache, repo, branch);
        if reset {
            remove(&dir)?;
            remove(&mirror)?;
        }
        let grouped = Instant::now();
        let user = self.branch_user(&repo_dir, &branch_dir)?;
        let groups = grouped.elapsed();
        let home = home_dir(self.cache, repo, branch);
        let git = Git { user: &user, home: user.switch.then_some(home.as_path()), ..*self };
        git.make_home(&home)?;
        git.clear_stale(&mirror, &dir)?;
        if !has_commit(&mirror, sha) {
            git.update_mirror(&repo_dir, &mirror, url, source, sha, queued)?;
        }
        if !dir.exists() {
            git.clone_checkout(&branch_dir, &mirror.to_string_lossy(), &dir, url)?;
        }
        let mut disarm = Duration::ZERO;
        let commit = git.check_out(&mirror, &dir, url, sha, &mut disarm)?;
        Ok(Prepared { commit, user, contained: Contained { groups, disarm } })
    }

    /// The mirror updated (never cloned: `None` without one) and, from it
    /// alone, as the slave's user, the commit `sha` and its `integration.yml`
    /// (a regular file's text, at most MAX_FILE bytes, UTF-8): what a build
    /// whose steps are all reused needs instead of a checkout. `None`: use
    /// a checkout (which also says why, if something is wrong).
    pub fn read_mirror(
        &self,
        repo: &str,
        url: &str,
        source: &str,
        sha: &str,
        queued: Queued,
    ) -> Result<Option<(Commit, String)>, GitError> {
        let repo_dir = self.cache.join(encode(repo));
        let mirror = mirror_dir(self.cache, repo, url);
        if url.starts_with('-') || !mirror.join("HEAD").is_file() {
            return Ok(None);
        }
        let held = repo_lock(&repo_dir);
        let _held = held.lock().unwrap_or_else(|p| p.into_inner());
        // Opened again whenever git changed the mirror: a fetch may keep a
        // pack, a repack replaces them all.
        let mut objects = Objects::open(&mirror);
        if !objects.is_commit(sha) {
            self.update_mirror(&repo_dir, &mirror, url, source, sha, queued)?;
            objects = Objects::open(&mirror);
        }
        let peeled = format!("{sha}^{{commit}}");
        // A commit object read is one there (no process); else ask git.
        let known = commit_object::read(&objects, sha);
        let in_mirror = || self.run(self.mirror_git(Some(&mirror), None), &["cat-file", "-e", &peeled], "cat-file -e").is_ok();
        if known.is_none() && !in_mirror() {
            let spec = format!("+{sha}:refs/ci/build");
            self.remote(Some(&mirror), url, &["fetch", "--quiet", "--no-tags", "origin", &spec], &format!("fetch origin {sha}"))?;
            objects = Objects::open(&mirror);
        }
        let commit = match known.or_else(|| commit_object::read(&objects, sha)) {
            Some(c) => c,
            None => {
                let shown = self.run(self.mirror_git(Some(&mirror), None), &["show", "-s", commit_object::SHOW_FORMAT, &peeled], "show")?;
                commit_object::from_show(&shown)
            }
        };
        // A symlink's blob is its target's name: it never parses as steps.
        let (file, max) = (format!("{sha}:integration.yml"), crate::slave::build::integration::MAX_FILE);
        let text = match read_file(&objects, sha, "integration.yml") {
            Some(found) => found.map(|blob| String::from_utf8_lossy(&blob[..blob.len().min(max + 1)]).into_owned()),
            None => {
                self.run_kept(self.mirror_git(Some(&mirror), None), &["cat-file", "blob", &file], "cat-file integration.yml", max + 1).ok()
            }
        };
        let Some(text) = text else {
            return Ok(None);
        };
        if text.len() > max || text.contains('\u{FFFD}') {
            return Ok(None);
        }
        Ok(Some((commit, text)))
    }

    /// The files `sha` changes, from the mirror of `url` (as the slave's
    /// user, no credentials, no network): `since` a push's `before`, or
    /// (`None`) since the merge base with `target` (a request's base branch
    /// as the mirror last fetched it). Unknown (everything changed) when
    /// neither is given, a commit is not in the mirror (a force-push, a
    /// target never fetched), git fails or the names pass MAX_CHANGED or
    /// MAX_CHANGED_BYTES. Runs after `prepare`, so the mirror holds `sha`.
    pub fn changed(&self, repo: &str, url: &str, since: Option<&str>, target: Option<&str>, sha: &str) -> Changed {
        let mirror = mirror_dir(self.cache, repo, url);
        let (range, shown) = match (since, target) {
            (Some(before), _) => (vec![before.to_string(), sha.to_string()], format!("diff {before}..{sha}")),
            (None, Some(target)) => (vec![format!("refs/heads/{target}...{sha}")], format!("diff {target}...{sha}")),
            (None, None) => return Changed::All("no before: a new branch, or not a push".into()),
        };
        let mut args = vec!["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", "--no-textconv"];
        args.extend(range.iter().map(String::as_str));
        args.push("--");
        let out = match self.run_kept(self.mirror_git(Some(&mirror), None), &args, &shown, MAX_CHANGED_BYTES + 1) {
            Ok(out) => out,
            Err(e) => return Changed::All(e.to_string()),
        };
        if out.len() > MAX_CHANGED_BYTES {
            return Changed::All(format!("more than {MAX_CHANGED_BYTES} bytes of changed names"));
        }
        let names: Vec<String> = out.split('\0').filter(|n| !n.is_empty()).map(String::from).collect();
        if names.len() > MAX_CHANGED {
            return Changed::All(format!("more than {MAX_CHANGED} changed files"));
        }
        Changed::Files(names)
    }

    /// The entries of `paths` in commit `sha` and, when `all_files`, every
    /// file of it: read from the mirror, never a checkout; bounded like
    /// [`Git::changed`]'s names (an error when more).
    pub fn trees(&self, repo: &str, url: &str, sha: &str, paths: &[&str], all_files: bool) -> Result<Trees, String> {
        let mirror = mirror_dir(self.cache, repo, url);
        let list = |args: &[&str], shown: &str| -> Result<Vec<(String, String)>, String> {
            let out = self.run_kept(self.mirror_git(Some(&mirror), None), args, shown, MAX_CHANGED_BYTES + 1).map_err(|e| e.to_string())?;
            if out.len() > MAX_CHANGED_BYTES {
                return Err(format!("more than {MAX_CHANGED_BYTES} bytes of names"));
            }
            let entries = inputs::parse_ls_tree(&out);
            if entries.len() > MAX_CHANGED {
                return Err(format!("more than {MAX_CHANGED} files"));
            }
            Ok(entries)
        };
        if !all_files {
            if let Some(paths) = list_paths(&Objects::open(&mirror), sha, paths) {
                return Ok(Trees { paths, files: None });
            }
        }
        // The commit must be there: a missing path is then a missing path.
        // Paths as written: `:x` is the file `:x`, never pathspec magic.
        let mut args = vec!["--literal-pathspecs", "ls-tree", "-z", "--full-tree", sha, "--"];
        args.extend(paths);
        let mut trees = Trees { paths: list(&args, &format!("ls-tree {sha}"))?, files: None };
        if all_files {
            trees.files = Some(list(&["ls-tree", "-r", "-z", "--full-tree", sha], &format!("ls-tree -r {sha}"))?);
        }
        Ok(trees)
    }

    /// The repository's and the branch's directories made, and the build
    /// user in their groups: the groups the directories have, or new ones.
    /// A branch's directory from before branches had one (a checkout
    /// itself), or without a group of ours, is made afresh. Without groups
    /// (a slave not root), the build user as is.
    fn branch_user(&self, repo_dir: &Path, branch_dir: &Path) -> Result<BuildUser, GitError> {
        make_dir(repo_dir)?;
        if branch_dir.join(".git").exists() {
            remove(branch_dir)?;
        }
        let Some(groups) = self.groups else {
            make_dir(branch_dir)?;
            return Ok(self.user.clone());
        };
        let setup = |what: &str, e: std::io::Error| GitError::Setup(format!("cannot {what}: {e}"));
        let enclosed = |dir: &Path| -> Result<u32, GitError> {
            if let Some(g) = groups.of(dir) {
                return Ok(g);
            }
            remove(dir)?;
            std::fs::create_dir(dir).map_err(|e| setup(&format!("create {}", dir.display()), e))?;
            let g = groups.give_new().map_err(|e| setup(&format!("give {} a group", dir.display()), e))?;
            BuildGroups::enclose(dir, g).map_err(|e| setup(&format!("close {}", dir.display()), e))?;
            Ok(g)
        };
        let repo = match groups.of(repo_dir) {
            Some(g) => g,
            None => {
                let g = groups.give_new().map_err(|e| setup("give the repository a group", e))?;
                BuildGroups::enclose(repo_dir, g).map_err(|e| setup(&format!("close {}", repo_dir.display()), e))?;
                g
            }
        };
        let branch = enclosed(branch_dir)?;
        Ok(self.user.in_groups(branch, repo))
    }

    /// The checkout's HOME, the build user's.
    fn make_home(&self, home: &Path) -> Result<(), GitError> {
        if !self.user.switch || self.user.owns(home) {
            return Ok(());
        }
        let setup = |e: std::io::Error| GitError::Setup(format!("cannot make {}: {e}", home.display()));
        remove(home)?;
        std::fs::create_dir(home).map_err(setup)?;
        self.user.give(home).map_err(setup)?;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700)).map_err(setup)
    }

    /// Removes what must start afresh: a mirror without HEAD; a checkout
    /// that is not a repository, not this checkout's (left by an older
    /// version, or SLAVE_BUILD_USER changed), or not borrowing the mirror's
    /// objects. A new mirror gets a new checkout.
    fn clear_stale(&self, mirror: &Path, dir: &Path) -> Result<(), GitError> {
        if mirror.exists() && !mirror.join("HEAD").is_file() {
            remove(mirror)?;
        }
        let borrowing = dir.join(".git/objects/info/alternates").is_file();
        if dir.exists() && !(dir.join(".git").is_dir() && self.user.owns(dir) && borrowing && mirror.exists()) {
            remove(dir)?;
        }
        Ok(())
    }

    /// The mirror, cloned when missing, with `source` fetched into the ref
    /// of that name (never a bare sha, so later fetches stay small). A clone
    /// has the branches and tags, never `refs/pull/*`: those are fetched after it.
    /// No fetch when the mirror's `source` already points at `sha` (an earlier
    /// fetch brought it along); else the branches of the builds `queued`
    /// come in the same fetch (one git fetch for a burst of pushes to one
    /// repository instead of one each), and alone again if that fails (one
    /// of them deleted since). Then repacked, when that made it due.
    fn update_mirror(&self, repo_dir: &Path, mirror: &Path, url: &str, source: &str, sha: &str, queued: Queued) -> Result<(), GitError> {
        self.fetch_into(repo_dir, mirror, url, source, sha, queued)?;
        self.upkeep(mirror, url, sha)
    }

    /// [`upkeep`]: the mirror repacked when it is due. A failed repack is
    /// logged and the build goes on; a timeout or an abort ends it.
    fn upkeep(&self, mirror: &Path, url: &str, sha: &str) -> Result<(), GitError> {
        let Some(due) = upkeep::due(mirror) else { return Ok(()) };
        let started = Instant::now();
        let url = crate::logging::quote(&scrub_url(url));
        let (loose, packs) = (due.loose, due.packs);
        match self.run(self.mirror_git(Some(mirror), None), upkeep::REPACK, "repack") {
            Ok(_) => log::info!("mirror.repacked url={url} sha={sha} loose={loose} packs={packs} ms={}", started.elapsed().as_millis()),
            Err(e) if e.ends_the_build() => return Err(e),
            Err(e) => log::warn!(
                "mirror.repack_failed url={url} sha={sha} loose={loose} packs={packs} error={}",
                crate::logging::quote(&e.to_string())
            ),
        }
        Ok(())
    }

    /// The fetch of [`Git::update_mirror`].
    fn fetch_into(&self, repo_dir: &Path, mirror: &Path, url: &str, source: &str, sha: &str, queued: Queued) -> Result<(), GitError> {
        let cloned = !mirror.exists();
        if cloned {
            self.clone_mirror(repo_dir, mirror, url)?;
        } else if ref_points_at(mirror, source, sha) {
            return Ok(());
        }
        if !cloned || !source.starts_with("refs/heads/") {
            let own = format!("+{source}:{source}");
            let mut specs = vec![own.clone()];
            if !cloned {
                for also in queued() {
                    let spec = format!("+{also}:{also}");
                    if also.starts_with("refs/heads/") && !specs.contains(&spec) && specs.len() <= MAX_ALSO {
                        specs.push(spec);
                    }
                }
            }
            // This commit alone: one protocol v2 request, no git client (else git fetch).
            if !cloned && specs.len() == 1 {
                match self.fetch_pack(mirror, url, source, sha) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.ends_the_build() => return Err(e),
                    Err(e) => {
                        let why = crate::logging::quote(&e.to_string());
                        log::info!("fetch.by_git url={} sha={sha} why={why}", crate::logging::quote(&scrub_url(url)));
                    }
                }
            }
            let fetch = |specs: &[String]| {
                let mut args = vec!["fetch", "--quiet", "--no-tags", "origin"];
                args.extend(specs.iter().map(String::as_str));
                self.remote(Some(mirror), url, &args, "fetch origin <ref>")
            };
            let fetched = match fetch(&specs) {
                Err(e) if specs.len() > 1 && !e.ends_the_build() => fetch(&specs[..1]),
                done => done,
            };
            // A deleted or renamed branch still builds by sha below.
            soft(fetched)?;
        }
        Ok(())
    }

    /// [`pack_fetch`]: the commit `sha` alone into `mirror`, offering the
    /// branch's tip, and the branch pointed at it. `Err` (`Local`: run git
    /// fetch instead) when the URL, the mirror or the answer is not one it
    /// takes; a timeout or an abort ends the build.
    fn fetch_pack(&self, mirror: &Path, url: &str, source: &str, sha: &str) -> Result<(), GitError> {
        let not = |why: String| GitError::Local(format!("fetch by protocol v2: {why}"));
        let have = pack_fetch::branch_tip(mirror, source).ok_or_else(|| not("the mirror has no tip of the branch to offer".into()))?;
        if self.creds.for_url(url).is_some() {
            return Err(not("the URL has a credential (git sends it)".into()));
        }
        let request = pack_fetch::request(sha, &have);
        let answer = if let Some(path) = pack_fetch::local_path(url) {
            let mut cmd = self.mirror_git(None, None)?;
            cmd.env("GIT_PROTOCOL", "version=2").args(["upload-pack", "--stateless-rpc"]).arg(path);
            let (input, mut feed) = std::io::pipe().map_err(|e| not(format!("pipe: {e}")))?;
            std::io::Write::write_all(&mut feed, &request).map_err(|e| not(format!("pipe: {e}")))?;
            drop(feed);
            let capture = Capture::Split { head: pack_fetch::MAX_PACK + 1, tail: STDERR_TAIL };
            self.outcome(process::run_fed(cmd, capture, self.deadline, self.abort, input.into()), "upload-pack")?
        } else if pack_fetch::plain_http(url) {
            pack_fetch::post(url, &request, self.deadline.saturating_duration_since(Instant::now())).map_err(not)?
        } else {
            return Err(not("not a file:// or http(s) URL".into()));
        };
        if answer.len() > pack_fetch::MAX_PACK {
            return Err(not(format!("the answer is over {} bytes", pack_fetch::MAX_PACK)));
        }
        let mut pack = Vec::with_capacity(answer.len());
        pack_fetch::write_pack(&answer, &mut pack).map_err(not)?;
        drop(answer);
        let objects = Objects::open(mirror);
        objects.store_pack(&pack).map_err(not)?;
        if !objects.is_commit(sha) {
            return Err(not("the pack did not bring the commit loose".into()));
        }
        pack_fetch::set_branch(mirror, source, sha).map_err(not)
    }

    /// Checks `sha` out (detached), fetching the commit itself when the
    /// fetched ref does not reach it; its message and date read meanwhile.
    fn check_out(&self, mirror: &Path, dir: &Path, url: &str, sha: &str, disarm: &mut Duration) -> Result<Commit, GitError> {
        let disarming = Instant::now();
        self.disarm(dir, url)?;
        *disarm = disarming.elapsed();
        let peeled = format!("{sha}^{{commit}}");
        let checkout = || {
            self.run(Ok(self.build_git(Some(dir))), &["checkout", "--quiet", "--force", "--detach", &peeled], &format!("checkout {sha}"))
        };
        let git_show = || {
            self.run(self.mirror_git(Some(mirror), None), &["show", "-s", commit_object::SHOW_FORMAT, &peeled], "show")
                .map(|shown| commit_object::from_show(&shown))
        };
        let read = || commit_object::read(&Objects::open(mirror), sha);
        // The message and date: from the commit object when it reads here
        // (no process), else from `git show` in the mirror while the checkout
        // runs (another core, another user). (`read-tree -u --reset` with HEAD
        // written here saves git checkout's ref locks on a small tree, but
        // costs 8 ms more on 3,000 files: the bench's latency row went from
        // 1.07-1.16x to 1.24-1.27x the floor with it.)
        let (checked, shown) = match read() {
            Some(commit) => (checkout(), Ok(Ok(commit))),
            None => std::thread::scope(|s| {
                let shown = s.spawn(git_show);
                let checked = checkout();
                (checked, shown.join())
            }),
        };
        match checked {
            Ok(_) => {}
            Err(e) if !e.ends_the_build() => {
                // Not reachable from the branch (force-pushed since, or fetched
                // before it was pushed): ask for the commit itself.
                let spec = format!("+{sha}:refs/ci/build");
                self.remote(Some(mirror), url, &["fetch", "--quiet", "--no-tags", "origin", &spec], &format!("fetch origin {sha}"))?;
                checkout()?;
            }
            Err(e) => return Err(e),
        }
        // Shown before the commit was fetched by sha, or not at all: again.
        match shown {
            Ok(Ok(commit)) => Ok(commit),
            _ => read().map_or_else(git_show, Ok),
        }
    }

    /// Takes back the checkout's `.git` before git runs in it: a build (this
    /// branch's, or another's on the same slave) may have planted hooks, an
    /// fsmonitor or filter command in its config, or attributes that call
    /// one, all of which the checkout would run with this branch's
    /// environment. The config is written anew (the clone's keys and
    /// `origin`), `hooks/`, `info/attributes` and a worktree config removed.
    fn disarm(&self, dir: &Path, url: &str) -> Result<(), GitError> {
        let git_dir = dir.join(".git");
        if !git_dir.is_dir() {
            return Ok(());
        }
        let setup = |what: &str, e: std::io::Error| GitError::Setup(format!("cannot {what} in {}: {e}", git_dir.display()));
        let quoted = url.replace('\\', "\\\\").replace('"', "\\\"");
        let config = git_dir.join("config");
        let text = format!(
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n\
             [remote \"origin\"]\n\turl = \"{quoted}\"\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
        );
        let _ = std::fs::remove_file(&config);
        std::fs::write(&config, text).map_err(|e| setup("rewrite config", e))?;
        self.user.give(&config).map_err(|e| setup("give config to the build user", e))?;
        for path in [git_dir.join("info").join("attributes"), git_dir.join("config.worktree")] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(setup("remove info/attributes", e)),
                _ => {}
            }
        }
        let hooks = git_dir.join("hooks");
        if hooks.symlink_metadata().is_ok() {
            remove(&hooks)?;
        }
        // A HEAD that is not a plain file (a link a build left) is replaced
        // by a new one, never written through; checkout then sets it.
        let head = git_dir.join("HEAD");
        if !head.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
            remove(&head)?;
            let tmp = git_dir.join("HEAD.ci-new");
            let _ = std::fs::remove_file(&tmp);
            let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| setup("write HEAD", e))?;
            std::io::Write::write_all(&mut file, b"ref: refs/heads/ci-checkout\n").map_err(|e| setup("write HEAD", e))?;
            drop(file);
            self.user.give(&tmp).map_err(|e| setup("give HEAD to the build user", e))?;
            std::fs::rename(&tmp, &head).map_err(|e| setup("replace HEAD", e))?;
        }
        Ok(())
    }

    /// Git against the remote `url` (a clone, or a fetch into the mirror
    /// `dir`): its failure is the remote's, or a missing ref when git says so.
    fn remote(&self, dir: Option<&Path>, url: &str, args: &[&str], shown: &str) -> Result<String, GitError> {
        self.run(self.mirror_git(dir, Some(url)), args, shown).map_err(|e| match e {
            GitError::Local(m) if MISSING_REF.iter().any(|p| m.contains(p)) => GitError::MissingRef(m),
            GitError::Local(m) => GitError::Remote(m),
            e => e,
        })
    }

    /// Clones beside, then renames: a slave killed mid-clone leaves no half
    /// mirror behind.
    fn clone_mirror(&self, repo_dir: &Path, mirror: &Path, url: &str) -> Result<(), GitError> {
        let tmp = beside(repo_dir, "mirror");
        let tmp_str = tmp.to_string_lossy().into_owned();
        let shown = format!("clone {}", scrub_url(url));
        let result = self.remote(None, url, &["clone", "--quiet", "--bare", "--", url, &tmp_str], &shown);
        finish(result, &tmp, mirror)
    }

    /// The build user clones the mirror into a directory the slave made and
    /// gave it, borrowing its objects (`--shared`: read only, through
    /// `objects/info/alternates`), then points `origin` at the real URL (for
    /// steps that fetch).
    fn clone_checkout(&self, branch_dir: &Path, mirror: &str, dir: &Path, url: &str) -> Result<(), GitError> {
        let tmp = beside(branch_dir, "clone");
        std::fs::create_dir(&tmp).map_err(|e| GitError::Setup(format!("cannot create {}: {e}", tmp.display())))?;
        let tmp_str = tmp.to_string_lossy().into_owned();
        let result = self
            .user
            .give(&tmp)
            .map_err(|e| GitError::Setup(format!("cannot give {} to {}: {e}", tmp.display(), self.user.name)))
            .and_then(|_| {
                self.run(
                    Ok(self.build_git(None)),
                    &["clone", "--quiet", "--no-checkout", "--shared", "--", mirror, &tmp_str],
                    "clone <mirror>",
                )
            })
            .and_then(|_| self.run(Ok(self.build_git(Some(&tmp))), &["config", "remote.origin.url", url], "config remote.origin.url"));
        finish(result, &tmp, dir)
    }
}

/// The sources (`refs/heads/<branch>`) of other builds of the repository
/// waiting on this slave, asked only when a fetch runs.
pub type Queued<'a> = &'a dyn Fn() -> Vec<String>;

/// Whether the mirror's branch `source` holds `sha`: a fetch of another
/// build (or the clone) brought it. Read as files, no process
/// ([`pack_fetch::branch_tip`]); a name git would refuse or anything
/// unexpected reads as no (fetch).
fn ref_points_at(mirror: &Path, source: &str, sha: &str) -> bool {
    pack_fetch::branch_tip(mirror, source).is_some_and(|tip| tip == sha)
}

/// The blob at `path` in commit `sha`, read in this process: `Some(None)`
/// when the path is not a blob there (git's `cat-file` would fail), `None`
/// when git must be asked.
fn read_file(objects: &Objects, sha: &str, path: &str) -> Option<Option<Vec<u8>>> {
    let tree = objects.commit_tree(sha)?;
    match objects.entry(&tree, path).ok()? {
        Some((mode, id)) if objects::mode_kind(&mode) == "blob" => objects.read(&id).map(|(_, blob)| Some(blob)),
        _ => Some(None),
    }
}

/// `git ls-tree --full-tree <sha> -- <paths>` read in this process: each
/// path that exists, with `<mode> <type> <id>`; `None` when git must be asked.
fn list_paths(objects: &Objects, sha: &str, paths: &[&str]) -> Option<Vec<(String, String)>> {
    let tree = objects.commit_tree(sha)?;
    let mut out = Vec::new();
    for path in paths {
        if let Some((mode, id)) = objects.entry(&tree, path).ok()? {
            out.push((path.to_string(), format!("{mode} {} {id}", objects::mode_kind(&mode))));
        }
    }
    Some(out)
}

/// The lock of one repository's directory in this process (its mirror and
/// checkouts). Entries are a few bytes per repository ever built here.
/// Whether the mirror holds commit `sha`, loose or packed (read without a
/// process): then nothing is fetched for it. A commit is content: the same
/// sha is the same commit and trees, whichever branch it came with (a
/// fast-forward merge pushes a commit its branch already brought).
fn has_commit(mirror: &Path, sha: &str) -> bool {
    mirror.join("HEAD").is_file() && Objects::open(mirror).is_commit(sha)
}

fn repo_lock(repo_dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(locks.entry(repo_dir.to_path_buf()).or_default())
}

/// A failed fetch of the branch is no failure yet (the sha may be there);
/// a timeout or an abort is.
fn soft(result: Result<String, GitError>) -> Result<(), GitError> {
    match result {
        Err(e) if e.ends_the_build() => Err(e),
        Ok(_) | Err(_) => Ok(()),
    }
}

/// A fresh temporary name in `dir`.
fn beside(dir: &Path, what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    dir.join(format!(".{what}-{}-{nanos}", std::process::id()))
}

/// Moves a finished clone into place, or removes the unfinished one.
fn finish(result: Result<String, GitError>, tmp: &Path, to: &Path) -> Result<(), GitError> {
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(tmp);
        return Err(e);
    }
    std::fs::rename(tmp, to).map_err(|e| GitError::Setup(format!("cannot move the clone into {}: {e}", to.display())))
}

/// A directory the build user may pass through but not write.
fn make_dir(dir: &Path) -> Result<(), GitError> {
    let fail = |e: std::io::Error| GitError::Setup(format!("cannot create {}: {e}", dir.display()));
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(fail)?;
    }
    Ok(())
}

/// Removes a tree (symlinks inside are removed, never followed).
fn remove(dir: &Path) -> Result<(), GitError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GitError::Setup(format!("cannot wipe {}: {e}", dir.display()))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_the_cache() {
        let cache = Path::new("/cache");
        for (repo, branch) in [("../../etc", "x"), ("/abs", ".."), ("a/b", "-rf"), ("a\0b", "é")] {
            let p = checkout_dir(cache, repo, branch);
            assert_eq!(p.components().count(), 5, "{p:?}");
            assert_eq!(p.parent(), home_dir(cache, repo, branch).parent(), "{p:?}");
            assert!(p.starts_with(cache));
            assert!(!p.to_string_lossy().contains("/../"));
        }
        assert_eq!(encode(".."), "%2E.");
        assert_eq!(encode("acme/app"), "acme%2Fapp");
        assert_ne!(encode("a/b"), encode("a%2Fb"));
    }

    #[test]
    fn mirrors_never_collide_with_checkouts() {
        let m = mirror_dir(Path::new("/cache"), "acme/app", "https://h/acme/app.git");
        assert_eq!(m.parent(), branch_dir(Path::new("/cache"), "acme/app", "main").parent());
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".mirror-") && name.ends_with(".git"), "{name}");
        // Branch names that look like it are encoded: a leading `.` never survives.
        assert!(encode(&name).starts_with("%2E"));
        assert_ne!(m, mirror_dir(Path::new("/cache"), "acme/app", "https://evil/acme/app.git"));
    }

    #[test]
    fn long_names_stay_short_and_distinct() {
        let a = encode(&"x".repeat(1000));
        let b = encode(&format!("{}y", "x".repeat(999)));
        assert!(a.len() <= MAX_COMPONENT);
        assert_ne!(a, b);
    }

    #[test]
    fn only_a_plain_loose_branch_ref_holding_the_sha_skips_the_fetch() {
        let dir = std::env::temp_dir().join(format!("ci-ref-points-at-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("refs/heads/feature")).unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(dir.join("refs/heads/main"), format!("{sha}\n")).unwrap();
        std::fs::write(dir.join("refs/heads/feature/x"), format!("{sha}\n")).unwrap();
        std::fs::write(dir.join("secret"), format!("{sha}\n")).unwrap();
        assert!(ref_points_at(&dir, "refs/heads/main", sha));
        assert!(ref_points_at(&dir, "refs/heads/feature/x", sha));
        assert!(!ref_points_at(&dir, "refs/heads/main", &sha.replace('0', "f")), "another commit");
        assert!(!ref_points_at(&dir, "refs/heads/main", &sha[..12]), "a short sha");
        assert!(!ref_points_at(&dir, "refs/heads/gone", sha), "no such ref");
        assert!(!ref_points_at(&dir, "refs/heads/feature", sha), "a directory");
        assert!(!ref_points_at(&dir, "refs/heads/../../secret", sha), "a name git refuses");
        assert!(!ref_points_at(&dir, "refs/pull/1/head", sha), "not a branch");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn urls_are_scrubbed() {
        assert_eq!(scrub_url("https://u:pw@host/r.git"), "https://***@host/r.git");
        assert_eq!(scrub_url("https://host/r.git"), "https://host/r.git");
    }
}
