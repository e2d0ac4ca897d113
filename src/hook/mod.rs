//! The hook: the HTTP edge that turns signed web-hooks into queued builds
//! and serves statuses, history, live logs, pages and badges.

pub(crate) mod connections;
pub mod cron;
pub(crate) mod handlers;
pub mod metrics;
pub(crate) mod reply;
pub(crate) mod routes;
pub mod server;
pub mod state;
pub(crate) mod views;
pub(crate) mod wire;
