//! The cancel watcher: kills a running build within a second of its cancel
//! (`POST /cancel`, or a newer commit of a pull request superseding it).

use crate::config::SlaveConfig;
use crate::slave::error::StartError;
use crate::slave::state::{State, IO_TIMEOUT};
use crate::store::conn::{log_error, Redis, Target};
use crate::store::keys;
use crate::store::queue;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long the cancel watcher's pop blocks (it then looks at the index again).
const CANCEL_WAIT: Duration = Duration::from_secs(1);

/// The cancel watcher: on its own connection, pops the ids the CANCEL and
/// ENQUEUE scripts push onto the index's cancel list as they cancel a
/// running build, and kills the running build when it is one of them. The
/// pop returns as soon as an id is pushed, and the runner polls the kill flag
/// every 100 ms: the build's process groups get SIGTERM within about 0.1 s
/// of the cancel (SIGKILL after the runner's 1 s grace).
pub(crate) fn spawn(config: &SlaveConfig, target: &Target, state: Arc<State>) -> Result<(), StartError> {
    let mut redis = Redis::open(target, IO_TIMEOUT);
    let cluster = config.cluster.clone();
    std::thread::Builder::new()
        .name("cancel".into())
        .spawn(move || {
            while !state.done.load(Ordering::SeqCst) {
                let key = keys::cancel(&cluster, state.index());
                let popped = redis.run(|c| queue::pop_canceled(c, &key, CANCEL_WAIT));
                match popped {
                    Ok(Some((_, id))) => {
                        if state.cancel_if_running(&id) {
                            log::info!("build.cancel id={id}: canceled while running; killing its processes");
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log_error("cancel-watch", &e);
                        std::thread::sleep(CANCEL_WAIT);
                    }
                }
            }
        })
        .map(drop)
        .map_err(StartError::thread("the cancel watcher thread"))
}
