//! Every Redis key of ci-backend, spelled once. The Lua scripts get their
//! keys from here too: [`script_prefixes`] is passed to each as its first
//! argument. docs/operations.md lists them as a tree.

/// What every key name starts with.
pub const NAMESPACE: &str = "ci:";

/// `build:<id>` HASH: one build's record (see [`super::record`]).
const BUILD: &str = "ci:build:";
/// `seq` STRING: the last build id handed out.
pub const SEQ: &str = "ci:seq";
/// `delivery:<id>` STRING: the build a web-hook delivery id queued (7 days).
const DELIVERY: &str = "ci:delivery:";
/// `last:<repo>:<branch>` STRING: the branch's latest build.
const LAST: &str = "ci:last:";
/// `done:<repo>:<branch>` STRING: the branch's latest finished build.
const DONE: &str = "ci:done:";
/// `pending:<repo>:<branch>` STRING: the branch's build still queued (coalescing).
const PENDING: &str = "ci:pending:";
/// `push:<repo>:<branch>` STRING: the branch's last push, as a [`super::job::Job`].
const PUSH: &str = "ci:push:";
/// `history:<repo>:<branch>` LIST: the branch's builds, newest first.
const HISTORY: &str = "ci:history:";
/// `running:<repo>:<branch>` STRING: the branch's build START last marked running.
const RUNNING: &str = "ci:running:";
/// `default:<repo>` STRING: the repository's default branch, as the last push reported it.
const DEFAULT: &str = "ci:default:";
/// `branches:<repo>` SET: the branches a repository was pushed to.
const BRANCHES: &str = "ci:branches:";
/// `queue:<cluster>:<index>` LIST: the jobs waiting for one slave.
const QUEUE: &str = "ci:queue:";
/// `working:<cluster>:<index>` LIST: the jobs a slave index has taken.
const WORKING: &str = "ci:working:";
/// `cancel:<cluster>:<index>` LIST: ids of running builds canceled on this
/// slave index; its cancel watcher pops them.
const CANCEL: &str = "ci:cancel:";
/// `log:<id>` STREAM: a build's live log (see [`super::stream`]).
const LOG: &str = "ci:log:";
/// `members:<cluster>` ZSET: index → the time it stops counting in N (ms).
const MEMBERS: &str = "ci:members:";
/// `holders:<cluster>` HASH: index → `<instance> <lease expiry ms>`.
const HOLDERS: &str = "ci:holders:";
/// `executors:<cluster>` HASH: index → `<busy> <total> <lease expiry ms>`.
const EXECUTORS: &str = "ci:executors:";

/// `cron:<schedule id>:<unix minute>` STRING with a TTL: the hook that fires
/// that schedule in that minute (SET NX: one build however many hooks run).
const CRON: &str = "ci:cron:";

/// `repos` SET: every pushed repository.
pub const REPOS: &str = "ci:repos";
/// `clusters` SET: every cluster a slave ever announced.
pub const CLUSTERS: &str = "ci:clusters";
/// `routing` STRING: `mod` or `jump`, the rule every hook routes by.
pub const ROUTING: &str = "ci:routing";
/// `token` STRING: the web-hook token the first hook generated, shared by
/// every hook of the deployment.
pub const TOKEN: &str = "ci:token";
/// `stats` HASH: finished builds by result.
pub const STATS: &str = "ci:stats";
/// `forge_status` HASH: commit statuses by result (sent, failed, dropped).
pub const FORGE_STATUS: &str = "ci:forge_status";
/// `maxindex` HASH: cluster → the highest index ever claimed.
pub const MAXINDEX: &str = "ci:maxindex";

pub fn build(id: &str) -> String {
    format!("{BUILD}{id}")
}

pub fn delivery(id: &str) -> String {
    format!("{DELIVERY}{id}")
}

/// git refuses `:` in branch names, so `<repo>:<branch>` is unambiguous.
fn of_branch(prefix: &str, repo: &str, branch: &str) -> String {
    format!("{prefix}{repo}:{branch}")
}

pub fn last(repo: &str, branch: &str) -> String {
    of_branch(LAST, repo, branch)
}

pub fn done(repo: &str, branch: &str) -> String {
    of_branch(DONE, repo, branch)
}

pub fn pending(repo: &str, branch: &str) -> String {
    of_branch(PENDING, repo, branch)
}

pub fn push(repo: &str, branch: &str) -> String {
    of_branch(PUSH, repo, branch)
}

pub fn history(repo: &str, branch: &str) -> String {
    of_branch(HISTORY, repo, branch)
}

pub fn running(repo: &str, branch: &str) -> String {
    of_branch(RUNNING, repo, branch)
}

pub fn default_branch(repo: &str) -> String {
    format!("{DEFAULT}{repo}")
}

pub fn branches(repo: &str) -> String {
    format!("{BRANCHES}{repo}")
}

pub fn queue(cluster: &str, index: u32) -> String {
    format!("{QUEUE}{cluster}:{index}")
}

pub fn working(cluster: &str, index: u32) -> String {
    format!("{WORKING}{cluster}:{index}")
}

pub fn cancel(cluster: &str, index: u32) -> String {
    format!("{CANCEL}{cluster}:{index}")
}

pub fn log(id: &str) -> String {
    format!("{LOG}{id}")
}

pub fn members(cluster: &str) -> String {
    format!("{MEMBERS}{cluster}")
}

pub fn holders(cluster: &str) -> String {
    format!("{HOLDERS}{cluster}")
}

pub fn executors(cluster: &str) -> String {
    format!("{EXECUTORS}{cluster}")
}

pub fn cron(schedule: &str, unix_minute: u64) -> String {
    format!("{CRON}{schedule}:{unix_minute}")
}

/// The key names the Lua scripts use, as the JSON object each script gets
/// as `ARGV[1]` (`scripts/lib/keys.lua` reads it into `K`): prefixes end
/// where the script appends an id, `<repo>:<branch>` or `<cluster>[:<index>]`.
pub fn script_prefixes() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    JSON.get_or_init(|| {
        let table = [
            ("build", BUILD),
            ("seq", SEQ),
            ("delivery", DELIVERY),
            ("last", LAST),
            ("done", DONE),
            ("pending", PENDING),
            ("push", PUSH),
            ("history", HISTORY),
            ("running", RUNNING),
            ("default", DEFAULT),
            ("branches", BRANCHES),
            ("queue", QUEUE),
            ("working", WORKING),
            ("cancel", CANCEL),
            ("log", LOG),
            ("members", MEMBERS),
            ("holders", HOLDERS),
            ("executors", EXECUTORS),
            ("repos", REPOS),
            ("clusters", CLUSTERS),
            ("routing", ROUTING),
            ("stats", STATS),
            ("maxindex", MAXINDEX),
        ];
        let map: serde_json::Map<String, serde_json::Value> = table.iter().map(|(k, v)| (k.to_string(), (*v).into())).collect();
        serde_json::Value::Object(map).to_string()
    })
}

/// `ci:passed:<repo>:<fingerprint>` STRING with a TTL: the build in which a
/// step with `inputs:` of that fingerprint passed (see [`super::passes`]).
pub fn passed(repo: &str, fingerprint: &str) -> String {
    format!("ci:passed:{repo}:{fingerprint}")
}

/// `ci:signed:<sha256 of the body>` STRING with a TTL: a signed `POST
/// /build` or `/cancel` body already used (each is accepted once).
pub fn signed_body(digest: &str) -> String {
    format!("ci:signed:{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_names() {
        // Records already in Redis are found under these names.
        assert_eq!(build("7"), "ci:build:7");
        assert_eq!(last("a/b", "pull/3"), "ci:last:a/b:pull/3");
        assert_eq!(queue("slave-jdk8", 2), "ci:queue:slave-jdk8:2");
        assert_eq!(members("slave"), "ci:members:slave");
        assert_eq!(cron("00112233aabbccdd", 29_943_975), "ci:cron:00112233aabbccdd:29943975");
        assert_eq!(passed("a/b", "00ff"), "ci:passed:a/b:00ff");
        let table: serde_json::Value = serde_json::from_str(script_prefixes()).unwrap();
        for (name, key) in table.as_object().unwrap() {
            assert!(key.as_str().unwrap().starts_with(NAMESPACE), "{name}: {key}");
        }
        assert_eq!(table["build"], "ci:build:");
        assert_eq!(table["maxindex"], "ci:maxindex");
    }
}
