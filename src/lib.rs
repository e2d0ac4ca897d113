//! ci-backend: a lean, self-hosted, Travis-style CI backend.
//!
//! The `hook` binary turns signed push web-hooks into queued builds in Redis;
//! the `slave` binary takes them, keeps a cached clone per repository and
//! branch, and runs the repository's `integration.yml`. Each module below has
//! one job; see STYLE.md for the map.

pub mod badge;
pub mod build;
pub mod build_user;
pub mod commit_object;
pub mod config;
pub mod credentials;
pub mod forge;
pub mod guard;
pub mod heartbeat;
pub mod http;
pub mod integration;
pub mod live;
pub mod logging;
pub mod membership;
pub mod pages;
pub mod payload;
pub mod process;
pub mod queue;
pub mod redis_conn;
pub mod routing;
pub mod runner;
pub mod signature;
pub mod status;
pub mod views;
pub mod wire;
pub mod worker;
pub mod workspace;

/// Seconds since the Unix epoch, as the records store them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
