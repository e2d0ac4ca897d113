//! Re-routing after a scale-down: jobs queued on indexes at or above the
//! live count, and in-progress jobs of dead holders there, go to the index
//! their repository routes to now. Run by the heartbeat (`lease.rs`).

use crate::store::keys;
use crate::store::membership;
use crate::store::queue;

/// Re-routes jobs queued on indexes at or above N, and in-progress jobs of
/// dead holders there. Run by the heartbeat, so such jobs never wait for
/// this slave's running build to end.
pub(crate) fn reroute_vanished(c: &mut redis::Connection, cluster: &str) -> redis::RedisResult<()> {
    let n = membership::live_count(c, cluster)?;
    if n == 0 {
        return Ok(());
    }
    let top = membership::max_index(c, cluster)?;
    let routing = queue::stored_routing(c)?;
    for i in n..=top.unwrap_or(0).max(n) {
        queue::reroute_list(c, &keys::queue(cluster, i), cluster, n, routing)?;
        if !membership::held(c, cluster, i)? {
            queue::reroute_list(c, &keys::working(cluster, i), cluster, n, routing)?;
        }
    }
    Ok(())
}
