//! Why the slave cannot start: what failed, where, and the setting to look
//! at. `bin/slave.rs` logs it once (`slave.failed`) and exits.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum StartError {
    /// SLAVE_CACHE cannot be created, or prepared for the build user.
    Cache(CacheError),
    /// A setting the slave reads itself is malformed: the setting and why.
    Setting(String),
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
            StartError::Setting(why) => f.write_str(why),
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

/// Why the cache could not be made ready at startup.
#[derive(Debug)]
pub enum CacheError {
    /// SLAVE_CACHE itself cannot be created.
    Create { path: PathBuf, error: std::io::Error },
    /// A file or directory in it cannot be written, removed or given.
    Prepare { path: PathBuf, error: std::io::Error },
    /// The build user cannot enter it; the outermost directory closed to
    /// others, with its mode, when one is found.
    Closed { cache: PathBuf, user: String, closed: Option<(PathBuf, u32)> },
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Create { path, error } => write!(f, "SLAVE_CACHE={path:?}: cannot create: {error}"),
            CacheError::Prepare { path, error } => write!(f, "SLAVE_CACHE: cannot prepare {}: {error}", path.display()),
            CacheError::Closed { cache, user, closed } => {
                let closed = closed.as_ref().map_or(String::new(), |(dir, mode)| format!(" ({} is mode {mode:04o})", dir.display()));
                write!(
                    f,
                    "SLAVE_CACHE={}: the build user {user} cannot enter it{closed}; put the cache where it can (e.g. /var/cache/ci) or open the directories above it to others (chmod o+x)",
                    cache.display()
                )
            }
        }
    }
}
