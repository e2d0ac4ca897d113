//! The cluster's figures `/metrics` shows, read in one place: live slaves,
//! queue depths and executors per cluster, replicas, builds by result,
//! commit statuses by result.

use crate::store::{keys, membership, queue};
use redis::{Connection, RedisResult};
use std::collections::HashMap;

/// One cluster's figures.
pub struct Cluster {
    pub name: String,
    /// Live slaves (the N of CRC32 mod N).
    pub live: u32,
    /// (index, jobs waiting).
    pub depths: Vec<(u32, u64)>,
    /// (index, busy, total) as of each slave's last lease renewal.
    pub executors: Vec<(u32, u32, u32)>,
}

pub struct Facts {
    pub clusters: Vec<Cluster>,
    /// `connected_slaves` of `INFO replication`.
    pub replicas: String,
    /// Finished builds by result (`passed`, `failed`, `canceled`).
    pub builds: HashMap<String, u64>,
    /// Commit statuses by result (`sent`, `failed`, `dropped`).
    pub forge: HashMap<String, u64>,
}

pub fn read(conn: &mut Connection) -> RedisResult<Facts> {
    let mut clusters = Vec::new();
    for (name, top) in membership::clusters(conn)? {
        let live = membership::live_count(conn, &name)?;
        let depths = queue::depths(conn, &name, top)?;
        let executors = membership::executors(conn, &name)?;
        clusters.push(Cluster { name, live, depths, executors });
    }
    let info: String = redis::cmd("INFO").arg("replication").query(conn)?;
    let replicas = info.lines().find_map(|l| l.strip_prefix("connected_slaves:")).unwrap_or("0").trim().to_string();
    let builds = redis::cmd("HGETALL").arg(keys::STATS).query(conn)?;
    let forge = redis::cmd("HGETALL").arg(keys::FORGE_STATUS).query(conn)?;
    Ok(Facts { clusters, replicas, builds, forge })
}

/// Counts `n` commit statuses that ended as `result` (sent, failed, dropped).
pub fn count_forge_status(conn: &mut Connection, result: &str, n: u64) -> RedisResult<()> {
    redis::cmd("HINCRBY").arg(keys::FORGE_STATUS).arg(result).arg(n).query::<i64>(conn).map(drop)
}
