//! One build: workspace → integration.yml → runner → log lines. The log-line
//! formats here are the contract `GET /status` prints. No Redis: it takes a
//! [`Job`] and a [`LiveLog`] and answers a [`Built`]; the executor stores it.

pub(crate) mod commit_object;
pub(crate) mod inputs;
pub mod integration;
pub(crate) mod objects;
pub(crate) mod pack_fetch;
pub(crate) mod upkeep;
pub(crate) mod when;
pub(crate) mod workspace;

use crate::build_log;
use crate::payload::Push;
use crate::slave::backend::warm::Recipe;
use crate::slave::backend::{bare, container, Ran};
use crate::slave::build_groups::BuildGroups;
use crate::slave::build_user::BuildUser;
use crate::slave::credentials::Credentials;
use crate::slave::proc::process::{Exit, LineSink};
use crate::slave::repo_secrets::RepoSecrets;
use commit_object::Commit;
use integration::Step;
use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use workspace::{Git, GitError, Prepared};

/// Longest snippet text shown in a log line.
const SNIPPET_SHOWN: usize = 60;
/// The `LOG` variable: at most this many bytes of the log so far.
const LOG_ENV_BYTES: usize = 4096;
/// Longest log line kept (an output line with its prefix fits).
const MAX_LOG_LINE: usize = crate::slave::proc::process::MAX_LINE + 64;
/// What a log line costs beyond its JSON: its `String` in memory.
const LINE_OVERHEAD: usize = std::mem::size_of::<String>();
/// Room kept for the `[` `]` of the JSON array and the marker line.
const LOG_RESERVE: usize = 64;
use crate::config::MIN_LOG_BYTES;
// The smallest budget config allows still holds the longest line in each half.
const _: () = assert!((MIN_LOG_BYTES - LOG_RESERVE) / 2 >= MAX_LOG_LINE + 2 + LINE_OVERHEAD);

/// Shortest value masked: shorter ones would mask everything. A secret of
/// SLAVE_SECRETS_FILE is at least this long.
pub(crate) const MIN_MASKED: usize = 4;

/// Lines of each service's output a failed step's log gets.
const SERVICE_LINES: u32 = 20;

/// What a slave builds with.
pub(crate) struct Context<'a> {
    /// Absolute.
    pub cache: &'a Path,
    pub creds: &'a Credentials,
    /// SLAVE_SECRETS_FILE: given to the steps they are granted to.
    pub secrets: &'a RepoSecrets,
    /// Who steps (and the git commands writing their checkout) run as,
    /// before each checkout gives it its groups.
    pub user: &'a BuildUser,
    /// The groups of repositories and checkouts (a root slave's).
    pub groups: Option<&'a BuildGroups>,
    pub host: &'a str,
    pub slave: &'a str,
    pub timeout: Duration,
    /// The recorded log's budget (SLAVE_MAX_LOG_BYTES), as JSON.
    pub max_log: usize,
    /// The slave's own environment, minus secrets: the base of every step's.
    pub base_env: &'a [(String, String)],
    /// Set on shutdown past the grace period: stop and store nothing.
    pub abort: &'a AtomicBool,
    /// Where the log lines and the snippets' output lines go as they happen.
    pub live: Option<Arc<dyn LiveLog>>,
    /// Container steps' engine and settings; `None`: `image:` steps fail.
    pub containers: Option<&'a container::Containers>,
    /// The steps with `inputs:` that passed before; `None`: none is reused.
    pub passes: Option<&'a dyn Passes>,
}

/// The memory of steps that passed, by fingerprint (`inputs::fingerprint`,
/// which covers the repository). Failing to read or write it never fails a
/// build: the step runs.
pub(crate) trait Passes {
    /// The build in which a step of this fingerprint passed.
    fn find(&self, repo: &str, fingerprint: &str) -> Option<String>;
    /// A step of this fingerprint passed in `build`.
    fn remember(&self, repo: &str, fingerprint: &str, build: &str);
}

impl Context<'_> {
    /// Git for one build of this slave: its cache, credentials and user,
    /// `env` for the build user's git, until `deadline`.
    fn git<'a>(&'a self, env: &'a [(String, String)], deadline: Instant) -> Git<'a> {
        Git {
            cache: self.cache,
            creds: self.creds,
            user: self.user,
            groups: self.groups,
            home: None,
            env,
            deadline,
            limit: self.timeout,
            abort: self.abort,
        }
    }
}

/// Where a build's lines go as they happen (the live log followers read).
/// It never blocks: a line it has no room for is counted, not waited for.
pub(crate) trait LiveLog: Send + Sync {
    fn line(&self, line: &str);
    /// Whether a line would be taken now.
    fn has_room(&self) -> bool;
    /// `n` lines were dropped before reaching [`LiveLog::line`].
    fn count_dropped(&self, n: u64);
}

/// What to build.
pub(crate) struct Job<'a> {
    /// The build's id (the steps' BUILD_ID).
    pub id: &'a str,
    pub push: &'a Push,
    /// Start the checkout and the mirror afresh.
    pub reset: bool,
    /// The branches of this repository's builds waiting behind this one,
    /// which its fetch brings along (asked only when it fetches).
    pub queued: workspace::Queued<'a>,
}

/// A build's end, its log and how long it took.
pub(crate) struct Built {
    pub ending: Ending,
    pub log: Vec<String>,
    pub seconds: u64,
    /// What keeping the checkout to itself took (zero when none was made).
    pub contained: workspace::Contained,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The steps ran (or were skipped after a failure): passed or failed.
    Ran { passed: bool },
    /// It could not run: the checkout failed, or integration.yml is missing
    /// or invalid. The log's last line says why (`* <why>`).
    CouldNotRun,
    /// Stopped from outside (shutdown past the grace, a lost index, a
    /// cancel): the log so far.
    Stopped,
}

/// The first line of a snippet, cut to a readable length.
pub(crate) fn cut(snippet: &str) -> String {
    let first = snippet.trim().lines().next().unwrap_or("");
    if first.chars().count() > SNIPPET_SHOWN || snippet.trim().lines().count() > 1 {
        let short: String = first.chars().take(SNIPPET_SHOWN).collect();
        format!("{short}...")
    } else {
        first.to_string()
    }
}

/// `<branch>-<short sha>`, every character outside `A-Za-z0-9=` as `-`.
pub(crate) fn tag(branch: &str, short: &str) -> String {
    format!("{branch}-{short}").chars().map(|c| if c.is_ascii_alphanumeric() || c == '=' { c } else { '-' }).collect()
}

/// The build's log, bounded: its first lines within half of the budget, its
/// last lines within the other half, and between them one marker line
/// `... (N lines dropped) ...`. A line costs its JSON length plus a comma and
/// its `String`, so the stored JSON array stays under the budget and a flood
/// of empty lines is bounded too.
pub(crate) struct Log {
    half: usize,
    head: Vec<String>,
    head_cost: usize,
    head_closed: bool,
    tail: VecDeque<String>,
    tail_cost: usize,
    dropped: u64,
    /// Each line is also published here as it is pushed.
    live: Option<Arc<dyn LiveLog>>,
}

impl Log {
    pub(crate) fn new(max_bytes: usize) -> Log {
        let half = max_bytes.saturating_sub(LOG_RESERVE) / 2;
        Log { half, head: vec![], head_cost: 0, head_closed: false, tail: VecDeque::new(), tail_cost: 0, dropped: 0, live: None }
    }

    /// Adds a line, its terminal sequences but SGR removed (`ansi::clean`),
    /// cut at MAX_LOG_LINE.
    pub(crate) fn push(&mut self, line: String) {
        let mut line = crate::ansi::clean(&line);
        if line.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE - 3;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            // A sequence cut in half is dropped.
            line = crate::ansi::clean(&line[..end]) + "...";
        }
        if let Some(live) = &self.live {
            live.line(&line);
        }
        let cost = line_cost(&line);
        if !self.head_closed && self.head_cost + cost <= self.half {
            self.head_cost += cost;
            self.head.push(line);
            return;
        }
        self.head_closed = true;
        self.tail_cost += cost;
        self.tail.push_back(line);
        while self.tail_cost > self.half {
            let Some(old) = self.tail.pop_front() else { break };
            self.tail_cost -= line_cost(&old);
            self.dropped += 1;
        }
    }

    /// The last lines, oldest first, within `bytes` (for the LOG variable).
    fn recent(&self, bytes: usize) -> String {
        let mut out = String::new();
        for line in self.tail.iter().rev().chain(self.head.iter().rev()) {
            if out.len() + line.len() + 1 > bytes {
                break;
            }
            out.insert_str(0, &format!("{line}\n"));
        }
        out
    }

    pub(crate) fn into_lines(self) -> Vec<String> {
        let mut lines = self.head;
        if self.dropped > 0 {
            lines.push(format!("... ({} lines dropped) ...", self.dropped));
        }
        lines.extend(self.tail);
        lines
    }
}

fn line_cost(line: &str) -> usize {
    json_len(line) + 1 + LINE_OVERHEAD
}

/// The length of `s` as a JSON string (serde_json's escapes).
fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Runs the job: checkout, integration.yml, each step's snippets.
pub(crate) fn run(ctx: &Context, job: &Job) -> Built {
    let started = Instant::now();
    let mut log = Log::new(ctx.max_log);
    log.live = ctx.live.clone();
    let mut contained = workspace::Contained::default();
    let ending = build(ctx, job, started, &mut log, &mut contained);
    Built { ending, log: log.into_lines(), seconds: started.elapsed().as_secs(), contained }
}

/// How long a build waits for the previous build's containers of its
/// checkout to be removed.
const FENCE: Duration = Duration::from_secs(60);

/// The build stopped from outside: it ends here, nothing more is logged.
struct Stopped;

fn build(ctx: &Context, job: &Job, started: Instant, log: &mut Log, contained: &mut workspace::Contained) -> Ending {
    let push = job.push;
    let short = crate::payload::short_sha(&push.sha);
    let deadline = started + ctx.timeout;
    // A fork's code gets nothing of the slave's environment, its git neither.
    let fork_env = fork_env(ctx.user.switch);
    let base_env = if push.fork { fork_env.as_slice() } else { ctx.base_env };
    let dir = workspace::checkout_dir(ctx.cache, &push.repo, &push.branch);
    if let Some(containers) = ctx.containers {
        // Nothing a previous build's container may still do reaches this one.
        if !containers.retire.fence(&dir, FENCE) {
            return could_not_run(
                log,
                format!("a previous build's container of this branch is still being removed after {} seconds", FENCE.as_secs()),
            );
        }
        if !push.fork {
            containers.warm.prepare(&dir);
        }
    }
    match without_checkout(ctx, job, base_env, deadline, log) {
        Ok(Some(ending)) => return ending,
        Ok(None) => {}
        Err(GitError::Aborted) => return Ending::Stopped,
        Err(e) => log::warn!(
            "build.mirror_failed repo={} branch={} sha={short} slave={} build={} error={}: checking out as usual",
            crate::logging::quote(&push.repo),
            crate::logging::quote(&push.branch),
            ctx.slave,
            job.id,
            crate::logging::quote(&e.to_string())
        ),
    }
    let Prepared { commit, user, contained: took } = match checkout(ctx, job, base_env, deadline) {
        Ok(p) => p,
        Err(GitError::Aborted) => return Ending::Stopped,
        Err(e) => {
            log.push(format!("- commit {short}"));
            return could_not_run(log, format!("checkout failed: {e}"));
        }
    };
    *contained = took;
    let subject = commit.message.lines().next().unwrap_or("");
    log.push(format!("- commit {short} ({subject})"));
    let steps = match read_steps(&dir, ctx.timeout) {
        Ok(s) => s,
        Err(why) => return could_not_run(log, why.to_string()),
    };
    // A stranger's code never runs on the slave itself.
    let default_image = ctx.containers.and_then(|c| c.settings.default_image.as_deref());
    if push.fork && default_image.is_none() && steps.iter().any(|s| s.image.is_none()) {
        return could_not_run(log, "fork builds run only in containers: set SLAVE_DEFAULT_IMAGE or give each step an image".into());
    }
    let steps_run = Steps::new(ctx, job, base_env, &commit, &user, short, &dir, deadline, &steps);
    let mut ok = true;
    for (number, step) in steps.iter().enumerate() {
        if steps_run.step(number, step, log, &mut ok).is_err() {
            return Ending::Stopped;
        }
    }
    Ending::Ran { passed: ok }
}

/// A build whose every step is reused (or skipped by `when:`) needs no
/// checkout: its commit and integration.yml are read from the mirror, and
/// its steps' fingerprints from the mirror too. Tried only where it may
/// pay: a build that may reuse (not a fork's, not a reset) of a branch
/// whose previous build's integration.yml (its checkout's) had `inputs:`.
/// `None`: a step would run, so the build checks out as usual.
fn without_checkout(
    ctx: &Context,
    job: &Job,
    base_env: &[(String, String)],
    deadline: Instant,
    log: &mut Log,
) -> Result<Option<Ending>, GitError> {
    let push = job.push;
    let Some(passes) = ctx.passes.filter(|_| !push.fork && !job.reset) else { return Ok(None) };
    let dir = workspace::checkout_dir(ctx.cache, &push.repo, &push.branch);
    let reusing = |steps: &[Step]| steps.iter().any(|s| s.inputs.as_ref().is_some_and(|i| !i.is_empty()));
    if !read_steps(&dir, ctx.timeout).is_ok_and(|steps| reusing(&steps)) {
        return Ok(None);
    }
    let git = ctx.git(base_env, deadline);
    let Some((commit, text)) = git.read_mirror(&push.repo, &push.clone_url, &push.source_ref(), &push.sha, job.queued)? else {
        return Ok(None);
    };
    let Ok(steps) = integration::parse(&text, ctx.timeout) else { return Ok(None) };
    let short = crate::payload::short_sha(&push.sha);
    let steps_run = Steps::new(ctx, job, base_env, &commit, ctx.user, short, &dir, deadline, &steps);
    let mut lines = Vec::new();
    for (number, step) in steps.iter().enumerate() {
        if let Some(why) = step.when.as_ref().and_then(|w| steps_run.refuses(w)) {
            lines.push(skipped_line(step, &why));
            continue;
        }
        let Some(fp) = steps_run.fingerprint(number, step) else { return Ok(None) };
        let Some(from) = passes.find(&push.repo, &fp) else { return Ok(None) };
        log::info!("step.reused {} step={} from={from} fingerprint={}", steps_run.facts(), number + 1, &fp[..16]);
        lines.push(reused_line(step, &from));
    }
    let subject = commit.message.lines().next().unwrap_or("");
    log.push(format!("- commit {short} ({subject})"));
    for line in lines {
        log.push(line);
    }
    log::info!("build.no_checkout {} steps={}", steps_run.facts(), steps.len());
    Ok(Some(Ending::Ran { passed: true }))
}

/// The line of a step its `when:` keeps from running.
fn skipped_line(step: &Step, why: &str) -> String {
    format!("[skipped] step {} (when: {why})", step.title)
}

/// The line of a step whose pass in build `from` is reused.
fn reused_line(step: &Step, from: &str) -> String {
    format!("[reused] {} (passed in build {from})", step.title)
}

/// The job's commit checked out (detached) in its cached checkout.
fn checkout(ctx: &Context, job: &Job, env: &[(String, String)], deadline: Instant) -> Result<Prepared, GitError> {
    let push = job.push;
    let git = ctx.git(env, deadline);
    git.prepare(&push.repo, &push.clone_url, &push.branch, &push.source_ref(), &push.sha, job.reset, job.queued)
}

/// Logs why the build could not run, as its last line.
fn could_not_run(log: &mut Log, why: String) -> Ending {
    log.push(format!("* {why}"));
    Ending::CouldNotRun
}

/// What every step of one build shares.
struct Steps<'a> {
    ctx: &'a Context<'a>,
    job: &'a Job<'a>,
    base_env: &'a [(String, String)],
    commit: &'a Commit,
    /// Who the steps run as: the build user in the checkout's groups.
    user: &'a BuildUser,
    short: &'a str,
    /// The checkout.
    dir: &'a Path,
    deadline: Instant,
    /// SLAVE_DEFAULT_IMAGE: the image of every step without `image:`.
    default_image: Option<&'a str>,
    /// The files the build changes, read when a step's `when: path` first asks.
    changed: std::cell::OnceCell<when::Changed>,
    /// The input trees of every step, read when a step's `inputs:` first asks.
    trees: std::cell::OnceCell<Result<inputs::Trees, String>>,
    /// The `inputs:` of all steps together (read in one go).
    all_inputs: Vec<inputs::Input>,
    /// Whether a container step was reached (only the first takes a warm container).
    container_seen: std::cell::Cell<bool>,
}

impl<'a> Steps<'a> {
    /// The build's facts the steps share, and the steps (for their inputs).
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &'a Context<'a>,
        job: &'a Job<'a>,
        base_env: &'a [(String, String)],
        commit: &'a Commit,
        user: &'a BuildUser,
        short: &'a str,
        dir: &'a Path,
        deadline: Instant,
        steps: &[Step],
    ) -> Steps<'a> {
        Steps {
            ctx,
            job,
            base_env,
            commit,
            user,
            short,
            dir,
            deadline,
            default_image: ctx.containers.and_then(|c| c.settings.default_image.as_deref()),
            changed: std::cell::OnceCell::new(),
            trees: std::cell::OnceCell::new(),
            all_inputs: steps.iter().filter_map(|st| st.inputs.as_deref()).flatten().cloned().collect(),
            container_seen: std::cell::Cell::new(false),
        }
    }
}

impl Steps<'_> {
    /// Runs step `number` (from 0): its snippets in its directory, on the
    /// slave or in containers of its `image:`; after a failure (`ok` false)
    /// only its `no-skip` ones. A step with `inputs:` whose fingerprint
    /// passed before in this repository is reused: logged, not run.
    fn step(&self, number: usize, step: &Step, log: &mut Log, ok: &mut bool) -> Result<(), Stopped> {
        if let Some(why) = step.when.as_ref().and_then(|w| self.refuses(w)) {
            log.push(skipped_line(step, &why));
            return Ok(());
        }
        let fingerprint = self.fingerprint(number, step);
        if let (true, Some(fp)) = (*ok, &fingerprint) {
            let push = self.job.push;
            if let Some(from) = self.ctx.passes.and_then(|p| p.find(&push.repo, fp)) {
                log.push(reused_line(step, &from));
                log::info!("step.reused {} step={} from={from} fingerprint={}", self.facts(), number + 1, &fp[..16]);
                return Ok(());
            }
        }
        let was_ok = *ok;
        let mut all_passed = false;
        self.run_step(number, step, log, ok, &mut all_passed)?;
        if let (true, true, Some(fp), Some(passes)) = (was_ok, all_passed, &fingerprint, self.ctx.passes) {
            passes.remember(&self.job.push.repo, fp, self.job.id);
            log::info!("step.remembered {} step={} fingerprint={}", self.facts(), number + 1, &fp[..16]);
        }
        Ok(())
    }

    /// The step's fingerprint when its pass may be reused: it has
    /// non-empty `inputs:`, the build is not a fork's, and its input trees
    /// were read (else logged why not, and `None`).
    fn fingerprint(&self, number: usize, step: &Step) -> Option<String> {
        let (ctx, push) = (self.ctx, self.job.push);
        let step_inputs = step.inputs.as_deref().filter(|i| !i.is_empty())?;
        if push.fork || ctx.passes.is_none() {
            return None;
        }
        let trees = match self.trees.get_or_init(|| self.read_trees()) {
            Ok(t) => t,
            Err(why) => {
                log::warn!("step.not_reusable {} step={} why={}", self.facts(), number + 1, crate::logging::quote(why));
                return None;
            }
        };
        let granted = ctx.secrets.grant(&push.repo, &push.branch, push.fork, &step.secrets).given;
        let secrets: Vec<String> = granted.into_iter().map(|(name, _)| name).collect();
        let params: Vec<(String, String)> = push.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let recipe = inputs::Recipe {
            repo: &push.repo,
            shell: &step.shell,
            env: &step.env,
            params: &params,
            image: step.image.as_deref().or(self.default_image),
            cwd: step.cwd.as_deref(),
            secrets: &secrets,
            rest: format!("{:?} {:?}", step.services, step.timeout),
        };
        inputs::fingerprint(&recipe, step_inputs, trees)
    }

    /// Every step's input trees in the pushed commit, from the mirror (one
    /// `ls-tree` for the paths, one `ls-tree -r` when a glob asks); logged
    /// with what reading them took (`build.trees ... trees_ms=`).
    fn read_trees(&self) -> Result<inputs::Trees, String> {
        let (ctx, push) = (self.ctx, self.job.push);
        let started = Instant::now();
        let git = ctx.git(self.base_env, self.deadline);
        let mut paths: Vec<&str> = Vec::new();
        for input in &self.all_inputs {
            if let inputs::Input::Path(p) = input {
                if !paths.contains(&p.as_str()) {
                    paths.push(p);
                }
            }
        }
        let globs = self.all_inputs.iter().any(|i| matches!(i, inputs::Input::Glob(_)));
        let trees = git.trees(&push.repo, &push.clone_url, &push.sha, &paths, globs);
        log::info!(
            "build.trees {} ok={} trees_ms={}",
            self.facts(),
            trees.is_ok(),
            format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0)
        );
        trees
    }

    /// Runs the step (see [`Steps::step`]); `all_passed`: every snippet ran and exited 0.
    fn run_step(&self, number: usize, step: &Step, log: &mut Log, ok: &mut bool, all_passed: &mut bool) -> Result<(), Stopped> {
        log.push(format!("- {}", step.title));
        let contained = step.image.is_some() || self.default_image.is_some();
        self.log_secrets(number, step, log, contained);
        let cwd = match step_dir(self.dir, step) {
            Ok(d) => d,
            Err(why) => {
                log.push(format!("* step {} ({:?}): {why}", number + 1, step.title));
                *ok = false;
                return Ok(());
            }
        };
        let Some(image) = step.image.as_deref().or(self.default_image) else {
            if !step.services.is_empty() {
                log.push(format!("* step {} ({:?}): services run beside container steps only: give it an image", number + 1, step.title));
                *ok = false;
                return Ok(());
            }
            return self.snippets(&At { number, step }, &cwd, None, log, ok).map(|all| *all_passed = all);
        };
        let runs = match self.container_step(number, image) {
            Ok(runs) => runs,
            Err(why) => {
                log.push(format!("* image {image}: {why}"));
                *ok = false;
                return Ok(());
            }
        };
        let mut services = Vec::new();
        let mut started = true;
        for service in &step.services {
            match runs.containers.start_service(service, &runs.network, self.job.id) {
                Ok(id) => services.push((service.name.as_str(), id)),
                Err(why) => {
                    log.push(format!("* service {}: {why}", service.name));
                    (*ok, started) = (false, false);
                    break;
                }
            }
        }
        let result =
            if started { self.snippets(&At { number, step }, &cwd, Some(&runs), log, ok).map(|all| *all_passed = all) } else { Ok(()) };
        for (name, id) in services {
            if !*ok {
                for line in runs.containers.service_tail(&id, SERVICE_LINES) {
                    log.push(format!("[service {name}] {line}"));
                }
            }
            runs.containers.retire.container(id, self.dir);
        }
        // A warm container no snippet took (every one was skipped) goes too.
        if let Some(waiting) = runs.warm.take() {
            runs.containers.retire.container(waiting.id, self.dir);
        }
        runs.containers.retire.network(runs.network);
        result
    }

    /// Which secrets the step lists and does not get (unset in its
    /// environment): one build-log line naming them, and one event.
    fn log_secrets(&self, number: usize, step: &Step, log: &mut Log, contained: bool) {
        if step.secrets.is_empty() {
            return;
        }
        let env = self.env(log, true, step, contained);
        let mut missing: Vec<&str> = Vec::new();
        for name in &step.secrets {
            if !env.iter().any(|(k, _)| k == name) && !missing.contains(&name.as_str()) {
                missing.push(name);
            }
        }
        if !missing.is_empty() {
            log.push(build_log::not_granted(&missing));
        }
        let push = self.job.push;
        let granted = self.ctx.secrets.grant(&push.repo, &push.branch, push.fork, &step.secrets).given;
        let granted: Vec<&str> = granted.iter().map(|(name, _)| name.as_str()).collect();
        let list = |names: &[&str]| if names.is_empty() { "-".to_string() } else { names.join(",") };
        log::info!("step.secrets {} step={} granted={} not_granted={}", self.facts(), number + 1, list(&granted), list(&missing));
    }

    /// `repo=… branch=… sha=… slave=… build=…`: what every step event line
    /// of this build starts with.
    fn facts(&self) -> String {
        let push = self.job.push;
        format!(
            "repo={} branch={} sha={} slave={} build={}",
            crate::logging::quote(&push.repo),
            crate::logging::quote(&push.branch),
            self.short,
            self.ctx.slave,
            self.job.id
        )
    }

    /// Why a step's `when:` does not hold for this build; `None`: it runs.
    /// The changed files are read only for a `path`, once per build.
    fn refuses(&self, when: &when::When) -> Option<String> {
        let push = self.job.push;
        when.refuses_ref(&push.branch, push.event).or_else(|| {
            if when.path.is_empty() {
                None
            } else {
                when.refuses_paths(self.changed.get_or_init(|| self.diff()))
            }
        })
    }

    /// The files the build changes (`before..sha` of a push, merge
    /// base..head of a request), read from the mirror; logged with what
    /// reading them took (`build.diff ... diff_ms=`).
    fn diff(&self) -> when::Changed {
        let (ctx, push) = (self.ctx, self.job.push);
        let started = Instant::now();
        let git = ctx.git(self.base_env, self.deadline);
        let target = push.pull.as_ref().map(|p| p.base_branch.as_str());
        let changed = git.changed(&push.repo, &push.clone_url, push.before.as_deref(), target, &push.sha);
        log::info!(
            "build.diff {} {} diff_ms={}",
            self.facts(),
            changed.describe(),
            format_args!("{:.2}", started.elapsed().as_secs_f64() * 1000.0)
        );
        changed
    }

    /// The step's snippets, in order, each on `runs` (a container step) or on
    /// the slave, within the build's time and the step's `timeout:` (counted
    /// from its first snippet); a snippet whose time is up is skipped.
    /// Whether every snippet ran and exited 0.
    fn snippets(&self, at: &At, cwd: &Path, runs: Option<&container::Step>, log: &mut Log, ok: &mut bool) -> Result<bool, Stopped> {
        let step = at.step;
        let mut all = true;
        let step_deadline = step.timeout.map(|t| Instant::now() + t).filter(|d| *d < self.deadline);
        for snippet in &step.shell {
            let (forced, script) = match snippet.strip_prefix("no-skip ") {
                Some(rest) => (true, rest),
                None => (false, snippet.as_str()),
            };
            let left = step_deadline.unwrap_or(self.deadline).saturating_duration_since(Instant::now());
            if (!*ok && !forced) || left.is_zero() {
                log.push(format!("[skipped] {}", cut(script)));
                all = false;
                continue;
            }
            let limit = Limit { left, by_step: step_deadline.is_some() };
            let passed = self.snippet(at, script, cwd, runs, limit, log, *ok)?;
            (*ok, all) = (*ok && passed, all && passed);
        }
        Ok(all)
    }

    /// What the container runs of step `number` need: the image (pulled as
    /// SLAVE_IMAGE_PULL says) and a network of the step's own. The build's
    /// first container step (not a fork's) takes the container started for
    /// it, with its network, if it fits ([`warm`](crate::slave::backend::warm)),
    /// and asks for one for the branch's next build.
    fn container_step(&self, number: usize, image: &str) -> Result<container::Step<'_>, String> {
        let ctx = self.ctx;
        let Some(containers) = ctx.containers else {
            return Err("container steps need a Docker engine, and this slave has none (SLAVE_DOCKER)".into());
        };
        let id = containers.image(image)?;
        log::info!("step.image {} step={} image={} id={id}", self.facts(), number + 1, crate::logging::quote(image));
        let user = format!("{}:{}", self.user.uid, self.user.gid);
        let recipe = (!self.job.push.fork && !self.container_seen.replace(true)).then(|| Recipe {
            image: id.clone(),
            user: user.clone(),
            checkout: self.dir.to_path_buf(),
        });
        let waiting = recipe.as_ref().and_then(|r| containers.warm.take(r));
        log::info!("step.container {} step={} warm={}", self.facts(), number + 1, waiting.is_some());
        if let Some(recipe) = recipe {
            containers.warm.want(recipe);
        }
        let network = match &waiting {
            Some(w) => w.network.clone(),
            None => {
                let network = format!("ci-{}-{}-{}", self.job.id, number + 1, crate::slave::backend::naming::random_suffix());
                containers.network(&network, self.job.id).map_err(|e| e.to_string())?;
                network
            }
        };
        Ok(container::Step {
            containers,
            image: id,
            network,
            checkout: self.dir,
            build: self.job.id,
            user,
            warm: std::cell::Cell::new(waiting),
        })
    }

    /// Runs one snippet within `limit` and logs how it ended, then its
    /// output: all of it for a `debug` step, its tail when it failed
    /// (`build_log::failed_tail`), none otherwise; whether it passed.
    #[allow(clippy::too_many_arguments)]
    fn snippet(
        &self,
        at: &At,
        script: &str,
        cwd: &Path,
        runs: Option<&container::Step>,
        limit: Limit,
        log: &mut Log,
        ok: bool,
    ) -> Result<bool, Stopped> {
        let (ctx, step) = (self.ctx, at.step);
        let env = self.env(log, ok, step, runs.is_some());
        let masks = secret_values(&env, &step.secrets);
        // Output lines go live as `  . <line>` (debug or not), masked like the log.
        let sink = ctx.live.as_ref().map(|live| Arc::new(LiveOutput { live: Arc::clone(live), masks: masks.clone() }) as LineSink);
        let ran: Ran = match runs {
            Some(runs) => runs.run(script, cwd, &env, limit.left, ctx.abort, sink),
            None => bare::run(script, cwd, &env, self.user, limit.left, ctx.abort, sink),
        };
        let secs = ran.elapsed.as_secs();
        let (passed, how) = match &ran.exit {
            Exit::Code(0) => (true, "exit code 0".to_string()),
            Exit::Code(c) => (false, format!("exit code {c}")),
            Exit::TimedOut => (false, "timed out".to_string()),
            Exit::SpawnFailed(e) => (false, format!("could not start: {e}")),
            Exit::Aborted => return Err(Stopped),
        };
        let tag = build_log::tag(passed);
        log.push(mask(&format!("{tag} {} ({secs} seconds, {how})", cut(script)), &masks));
        let (dropped, lines) = match (step.debug, passed) {
            (true, _) => (ran.output.dropped, ran.output.lines.as_slice()),
            (false, false) => build_log::failed_tail(&ran.output.lines, ran.output.dropped),
            (false, true) => (0, &[][..]),
        };
        if dropped > 0 {
            log.push(build_log::dropped(tag, dropped));
        }
        for line in lines {
            log.push(build_log::output(tag, &shown(line, &masks)));
        }
        if ran.exit == Exit::TimedOut {
            // One format for both limits: `* <what> timed out after <n> seconds`.
            match (limit.by_step, step.timeout) {
                (true, Some(t)) => {
                    log.push(format!("* step {} ({:?}) timed out after {} seconds", at.number + 1, step.title, t.as_secs()));
                    log::info!("step.timed_out {} step={} seconds={}", self.facts(), at.number + 1, t.as_secs());
                }
                _ => log.push(format!("* build timed out after {} seconds", ctx.timeout.as_secs())),
            }
        }
        Ok(passed)
    }
}

/// A step as its snippets see it: its number (from 0) and its definition.
struct At<'a> {
    number: usize,
    step: &'a Step,
}

/// How long a snippet may run, and whether its step's `timeout:` (rather
/// than the build's) sets that.
#[derive(Clone, Copy)]
struct Limit {
    left: Duration,
    by_step: bool,
}

/// A snippet's output lines on their way to the live log.
struct LiveOutput {
    live: Arc<dyn LiveLog>,
    masks: Vec<String>,
}

impl crate::slave::proc::process::LineTarget for LiveOutput {
    fn room(&self) -> bool {
        self.live.has_room()
    }
    fn line(&self, line: &[u8]) {
        self.live.line(&format!("  . {}", shown(&crate::slave::proc::process::line_text(line), &self.masks)));
    }
    fn skipped(&self, n: u64) {
        self.live.count_dropped(n);
    }
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
    values.retain(|v| v.len() >= MIN_MASKED);
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// An output line as logged: its terminal sequences but SGR removed, then
/// secrets masked — in the text alone when colour sequences split one.
fn shown(line: &str, secrets: &[String]) -> String {
    let masked = mask(&crate::ansi::clean(line), secrets);
    if !secrets.is_empty() && masked.contains('\u{1b}') {
        let text = crate::ansi::strip(&masked);
        if secrets.iter().any(|s| text.contains(s.as_str())) {
            return mask(&text, secrets);
        }
    }
    masked
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

/// Why the steps could not be read: the build could not run. All fatal
/// (the repository's content, or its checkout, is at fault).
#[derive(Debug)]
enum StepsError {
    Missing,
    Unreadable(std::io::Error),
    CheckoutUnreadable(std::io::Error),
    /// A symlink whose target is outside the checkout.
    LeavesCheckout,
    /// A FIFO, a directory, a device.
    NotAFile,
    TooLarge,
    NotUtf8,
    /// Its text, with the line and step at fault.
    Invalid(integration::IntegrationError),
}

impl std::fmt::Display for StepsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepsError::Missing => f.write_str("integration.yml missing"),
            StepsError::Unreadable(e) => write!(f, "integration.yml unreadable: {e}"),
            StepsError::CheckoutUnreadable(e) => write!(f, "checkout unreadable: {e}"),
            StepsError::LeavesCheckout => f.write_str("integration.yml is a symlink that leaves the checkout"),
            StepsError::NotAFile => f.write_str("integration.yml is not a regular file"),
            StepsError::TooLarge => write!(f, "integration.yml is larger than {} bytes", integration::MAX_FILE),
            StepsError::NotUtf8 => f.write_str("integration.yml is not UTF-8"),
            StepsError::Invalid(e) => f.write_str(&e.0),
        }
    }
}

/// Reads integration.yml from the checkout, which the build user writes: a
/// symlink is followed only within the checkout, and only a regular file is
/// read (never a FIFO left by a step), at most MAX_FILE bytes of it.
fn read_steps(dir: &Path, max_timeout: Duration) -> Result<Vec<Step>, StepsError> {
    let path = match dir.join("integration.yml").canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StepsError::Missing),
        Err(e) => return Err(StepsError::Unreadable(e)),
    };
    let root = dir.canonicalize().map_err(StepsError::CheckoutUnreadable)?;
    if !path.starts_with(&root) {
        return Err(StepsError::LeavesCheckout);
    }
    let open = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&path);
    let file = open.map_err(StepsError::Unreadable)?;
    let meta = file.metadata().map_err(StepsError::Unreadable)?;
    if !meta.is_file() {
        return Err(StepsError::NotAFile);
    }
    if meta.len() > integration::MAX_FILE as u64 {
        return Err(StepsError::TooLarge);
    }
    let mut text = Vec::new();
    file.take(integration::MAX_FILE as u64 + 1).read_to_end(&mut text).map_err(StepsError::Unreadable)?;
    let text = String::from_utf8(text).map_err(|_| StepsError::NotUtf8)?;
    integration::parse(&text, max_timeout).map_err(StepsError::Invalid)
}

/// Why a step's `cwd` cannot be used: the step fails, later ones are skipped.
#[derive(Debug)]
enum CwdError {
    CheckoutUnreadable(std::io::Error),
    Missing(String),
    LeavesCheckout(String),
    NotADirectory(String),
}

impl std::fmt::Display for CwdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CwdError::CheckoutUnreadable(e) => write!(f, "checkout unreadable: {e}"),
            CwdError::Missing(cwd) => write!(f, "cwd {cwd:?} does not exist"),
            CwdError::LeavesCheckout(cwd) => write!(f, "cwd {cwd:?} leaves the checkout"),
            CwdError::NotADirectory(cwd) => write!(f, "cwd {cwd:?} is not a directory"),
        }
    }
}

/// The step's directory, which must exist and (symlinks resolved) stay inside.
fn step_dir(root: &Path, step: &Step) -> Result<PathBuf, CwdError> {
    let Some(cwd) = &step.cwd else { return Ok(root.to_path_buf()) };
    let real_root = root.canonicalize().map_err(CwdError::CheckoutUnreadable)?;
    let real = root.join(cwd).canonicalize().map_err(|_| CwdError::Missing(cwd.clone()))?;
    if !real.starts_with(&real_root) {
        return Err(CwdError::LeavesCheckout(cwd.clone()));
    }
    if !real.is_dir() {
        return Err(CwdError::NotADirectory(cwd.clone()));
    }
    Ok(real)
}

impl Steps<'_> {
    /// A snippet's environment: the base, the build user's HOME, USER and
    /// LOGNAME when switching, the CI variables, the step's `env`, then the
    /// secrets of SLAVE_SECRETS_FILE granted to it (those the file defines
    /// but does not grant here unset). In a container (`contained`): the CI
    /// variables, the step's `env` and its secrets only — the image brings
    /// its own PATH and HOME, the slave's are not its.
    fn env(&self, log: &Log, ok: bool, step: &Step, contained: bool) -> Vec<(String, String)> {
        let (ctx, job, commit, short) = (self.ctx, self.job, self.commit, self.short);
        let push = job.push;
        let mut env: Vec<(String, String)> = if contained { Vec::new() } else { self.base_env.to_vec() };
        if self.user.switch && !contained {
            let home = workspace::home_dir(ctx.cache, &push.repo, &push.branch).to_string_lossy().into_owned();
            for (k, v) in [("HOME", home), ("USER", self.user.name.clone()), ("LOGNAME", self.user.name.clone())] {
                env.retain(|(name, _)| name != k);
                env.push((k.to_string(), v));
            }
        }
        // A request's record is `pull/<N>`; its steps see the head branch.
        let branch = push.pull.as_ref().map_or(&push.branch, |p| &p.head_branch).clone();
        use crate::payload::params::ci;
        let mut vars = vec![
            (ci::HOST, ctx.host.to_string()),
            (ci::SLAVE, ctx.slave.to_string()),
            (ci::BRANCH, branch),
            (ci::COMMIT, push.sha.clone()),
            (ci::COMMIT_SHORT, short.to_string()),
            (ci::MESSAGE, commit.message.clone()),
            (ci::TAG, tag(&push.branch, short)),
            (ci::TIMESTAMP, commit.timestamp.clone()),
            (ci::LOG, crate::ansi::strip(&log.recent(LOG_ENV_BYTES))),
            (ci::OK, ok.to_string()),
            (ci::CI, "true".to_string()),
            (ci::CI_EVENT, push.event.as_str().to_string()),
            (ci::REPO, push.repo.clone()),
            (ci::BUILD_ID, job.id.to_string()),
        ];
        if let Some(p) = &push.pull {
            vars.push((ci::PULL_REQUEST, p.number.to_string()));
            vars.push((ci::BASE_BRANCH, p.base_branch.clone()));
            vars.push((ci::HEAD_BRANCH, p.head_branch.clone()));
            vars.push((ci::HEAD_REPO, p.head_repo.clone()));
        }
        if let Some(t) = &push.tag {
            vars.push((ci::TAG_NAME, t.clone()));
        }
        debug_assert!(vars.iter().all(|(k, _)| crate::payload::params::CI_VARIABLES.contains(k)), "a CI variable outside the list");
        // A manual run's parameters come last: the step's `env` gives
        // defaults, a run overrides them. Never in a fork's build; never a
        // CI variable's name (the hook refused those; checked again here).
        let params = push.params.iter().filter(|(k, v)| !push.fork && crate::payload::params::check(k, v).is_ok());
        let all = vars
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain(step.env.iter().cloned())
            .chain(params.map(|(k, v)| (k.clone(), v.clone())));
        for (k, v) in all {
            env.retain(|(name, _)| *name != k);
            env.push((k, v));
        }
        let grant = ctx.secrets.grant(&push.repo, &push.branch, push.fork, &step.secrets);
        env.retain(|(name, _)| !grant.withheld.contains(name) && !grant.given.iter().any(|(n, _)| n == name));
        env.extend(grant.given);
        env
    }
}

/// A fork build's base environment: a fixed PATH and nothing of the
/// slave's (the build user's HOME, USER and the CI variables are added per
/// step). Without a user switch the build user is the slave's own: its HOME.
pub(crate) fn fork_env(switch: bool) -> Vec<(String, String)> {
    let mut env = vec![("PATH".to_string(), "/usr/local/bin:/usr/bin:/bin".to_string())];
    if let (false, Ok(home)) = (switch, std::env::var("HOME")) {
        env.push(("HOME".to_string(), home));
    }
    env
}

/// The slave's environment passed on to steps: everything but its own
/// settings and secrets.
pub(crate) fn base_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            !(k.starts_with("SLAVE_") || k.starts_with("GIT_") || k.starts_with("REDIS") || k.starts_with("HOOK_") || k == "RUST_LOG")
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
    fn the_log_keeps_head_and_tail_under_its_json_budget() {
        let mut log = Log::new(MIN_LOG_BYTES);
        let lines: Vec<String> = (0..100_000).map(|i| if i % 3 == 0 { String::new() } else { format!("line \"{i}\"\t\\") }).collect();
        for l in &lines {
            log.push(l.clone());
        }
        let kept = log.into_lines();
        let json = serde_json::to_string(&kept).unwrap();
        assert!(json.len() <= MIN_LOG_BYTES, "{} bytes", json.len());
        // Each line also counts its String (24 bytes): short lines fill a smaller part with JSON.
        assert!(json.len() > MIN_LOG_BYTES / 4, "{} bytes: the budget is not used", json.len());
        let marker = kept.iter().position(|l| l.starts_with("... (")).expect("a marker");
        let dropped: usize = kept[marker].trim_start_matches("... (").split(' ').next().unwrap().parse().unwrap();
        assert_eq!(kept[marker], format!("... ({dropped} lines dropped) ..."));
        assert_eq!(kept.len() - 1 + dropped, lines.len(), "every line is kept or counted");
        assert_eq!(&kept[..marker], &lines[..marker], "the head, in order");
        assert_eq!(&kept[marker + 1..], &lines[lines.len() - (kept.len() - marker - 1)..], "the tail, in order");
    }

    #[test]
    fn a_short_log_is_kept_whole_and_long_lines_are_cut() {
        let mut log = Log::new(MIN_LOG_BYTES);
        log.push("a".into());
        log.push("é".repeat(5000));
        log.push("b".into());
        assert_eq!(log.recent(4096), format!("b\n"));
        let kept = log.into_lines();
        assert_eq!(kept.len(), 3);
        assert!(kept[1].len() <= MAX_LOG_LINE && kept[1].ends_with("...") && kept[1].starts_with("éé"), "{}", kept[1].len());
        assert_eq!((kept[0].as_str(), kept[2].as_str()), ("a", "b"));
    }

    #[test]
    fn logged_lines_keep_colours_only_and_a_cut_never_halves_a_sequence() {
        let mut log = Log::new(MIN_LOG_BYTES);
        log.push("\u{1b}[31mred\u{1b}[0m\u{1b}]0;title\u{7}\r\u{1b}[2Kdone".into());
        // A line cut inside a colour sequence: its start would be an unterminated sequence.
        let pad = "x".repeat(MAX_LOG_LINE - 5);
        log.push(format!("{pad}\u{1b}[1;31mtail"));
        let kept = log.into_lines();
        assert_eq!(kept[0], "\u{1b}[31mred\u{1b}[0mdone");
        assert_eq!(kept[1], format!("{pad}..."));
    }

    #[test]
    fn secrets_split_by_colours_are_masked_in_the_text() {
        let masks = vec!["hunter22".to_string()];
        assert_eq!(shown("pw: hunter22 \u{1b}[32mok\u{1b}[0m", &masks), "pw: *** \u{1b}[32mok\u{1b}[0m");
        assert_eq!(shown("pw: hun\u{1b}[1mter22\u{1b}[0m", &masks), "pw: ***");
        assert_eq!(shown("pw: hun\u{1b}[2Kter22", &masks), "pw: ***");
    }

    #[test]
    fn json_lengths_match_serde_json() {
        for s in ["", "plain", "q\"b\\", "\n\r\t\u{8}\u{c}", "\u{1}\u{1f}\u{7f}", "é中"] {
            assert_eq!(json_len(s), serde_json::to_string(s).unwrap().len(), "{s:?}");
        }
    }

    #[test]
    fn snippets_are_cut() {
        assert_eq!(cut("false"), "false");
        assert_eq!(cut("echo a\necho b"), "echo a...");
        assert_eq!(cut(&"x".repeat(100)), format!("{}...", "x".repeat(60)));
    }
}
