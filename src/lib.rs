//! ci-backend: a lean, self-hosted, Travis-style CI backend.
//!
//! The `hook` binary turns signed push web-hooks into queued builds in Redis;
//! the `slave` binary takes them, keeps a cached clone per repository and
//! branch, and runs the repository's `integration.yml`.
//!
//! The house, by floor (each module opens with its job; docs/architecture.md
//! draws it):
//! - [`config`], [`glob`], [`logging`], [`payload`], [`signature`], [`routing`],
//!   [`ansi`], [`build_log`]: shared, no Redis, no processes.
//! - [`store`]: the only code that speaks Redis (keys, Lua scripts, records).
//! - [`hook`]: the HTTP edge; [`slave`]: leases, executors, builds. Neither
//!   imports the other.

pub mod ansi;
pub mod build_log;
pub mod config;
pub mod cron;
pub mod glob;
pub mod hook;
pub mod logging;
pub mod payload;
pub mod routing;
pub mod signature;
pub mod slave;
pub mod store;

/// Seconds since the Unix epoch, as the records store them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
