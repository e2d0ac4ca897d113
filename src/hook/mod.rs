//! The hook: the HTTP edge that turns signed web-hooks into queued builds
//! and serves statuses, history, live logs, pages and badges.

pub mod server;
pub mod views;
pub mod wire;
