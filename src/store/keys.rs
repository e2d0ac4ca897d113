//! Every Redis key of ci-backend, spelled once (prefix `ci:`). The Lua
//! scripts get their keys from here too: in `KEYS[]`, or as a prefix passed
//! in `ARGV`. docs/operations.md lists them as a tree.

/// `ci:build:<id>` HASH: one build's record (see [`super::record`]).
pub fn build(id: &str) -> String {
    format!("ci:build:{id}")
}

/// `ci:<kind>:<repo>:<branch>`, the per-branch keys (`last`, `done`,
/// `pending`, `push`, `history`, `running`): git refuses `:` in branch names,
/// so this is unambiguous.
pub fn branch(kind: &str, repo: &str, branch: &str) -> String {
    format!("ci:{kind}:{repo}:{branch}")
}

/// `ci:queue:<cluster>:<index>` LIST: the jobs waiting for one slave.
pub fn queue(cluster: &str, index: u32) -> String {
    format!("ci:queue:{cluster}:{index}")
}

/// `ci:working:<cluster>:<index>` LIST: the jobs a slave index has taken.
pub fn working(cluster: &str, index: u32) -> String {
    format!("ci:working:{cluster}:{index}")
}

/// `ci:cancel:<cluster>:<index>` LIST: ids of running builds canceled on
/// this slave index; its cancel watcher pops them.
pub fn cancel(cluster: &str, index: u32) -> String {
    format!("ci:cancel:{cluster}:{index}")
}

/// `ci:log:<id>` STREAM: a build's live log (see [`super::stream`]).
pub fn log(id: &str) -> String {
    format!("ci:log:{id}")
}

/// `ci:default:<repo>` STRING: the repository's default branch, as the last
/// push reported it.
pub fn default_branch(repo: &str) -> String {
    format!("ci:default:{repo}")
}

/// `ci:branches:<repo>` SET: the branches a repository was pushed to.
pub fn branches(repo: &str) -> String {
    format!("ci:branches:{repo}")
}

/// `ci:repos` SET: every pushed repository.
pub const REPOS: &str = "ci:repos";

/// `ci:routing` STRING: `mod` or `jump`, the rule every hook routes by.
pub const ROUTING: &str = "ci:routing";

/// `ci:token` STRING: the web-hook token the first hook generated, shared by
/// every hook of the deployment.
pub const TOKEN: &str = "ci:token";

/// `ci:stats` HASH: finished builds by result.
pub const STATS: &str = "ci:stats";

/// `ci:forge_status` HASH: commit statuses by result (sent, failed, dropped).
pub const FORGE_STATUS: &str = "ci:forge_status";

/// `ci:maxindex` HASH: cluster → the highest index ever claimed.
pub const MAXINDEX: &str = "ci:maxindex";

/// `ci:members:<cluster>` ZSET: slave name → lease expiry (ms).
pub fn members(cluster: &str) -> String {
    format!("ci:members:{cluster}")
}

/// `ci:holders:<cluster>` HASH: index → the slave holding it.
pub fn holders(cluster: &str) -> String {
    format!("ci:holders:{cluster}")
}

/// `ci:executors:<cluster>` HASH: index → `busy total` executors.
pub fn executors(cluster: &str) -> String {
    format!("ci:executors:{cluster}")
}

/// `ci:signed:<sha256 of the body>` STRING with a TTL: a signed `POST
/// /build` or `/cancel` body already used (each is accepted once).
pub fn signed_body(digest: &str) -> String {
    format!("ci:signed:{digest}")
}
