//! Why the slave cannot start: what failed, where, and the setting to look
//! at. `bin/slave.rs` logs it once (`slave.failed`) and exits.

use crate::slave::build::workspace::CacheError;
use std::fmt;

#[derive(Debug)]
pub enum StartError {
    /// SLAVE_CACHE cannot be created, or prepared for the build user.
    Cache(CacheError),
    /// REDIS_URL (or the sentinels' master) is unusable: the store's words.
    Redis(String),
    /// A thread could not be started: which one, and the system's answer.
    Thread { what: String, error: std::io::Error },
}

impl StartError {
    /// Starting the thread `what` (`the heartbeat thread`, `executor 3`) failed.
    pub(crate) fn thread(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        move |error| StartError::Thread { what: what.into(), error }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Cache(e) => e.fmt(f),
            StartError::Redis(why) => f.write_str(why),
            StartError::Thread { what, error } => write!(f, "cannot start {what}: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<CacheError> for StartError {
    fn from(e: CacheError) -> StartError {
        StartError::Cache(e)
    }
}
