//! Removing what a step leaves on the engine off the build's path: a
//! finished step's containers and network are removed by one thread, in
//! the order given, while the build reports its result. What keeps a later
//! build from meeting a container still there is the fence: a build of a
//! checkout first waits until every container that mounted it is gone.

use crate::slave::engine::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Removals waiting at once; a step that finds the line full waits (the
/// engine sets the pace).
const WAITING: usize = 1024;

enum Gone {
    /// A container, killed if it still runs, and the checkout it mounted.
    Container {
        id: String,
        checkout: PathBuf,
    },
    Network {
        id: String,
    },
}

/// What is still to remove: all of it, and the containers mounting each checkout.
#[derive(Default)]
struct Counts {
    pending: usize,
    checkouts: HashMap<PathBuf, usize>,
}

type Dying = Arc<(Mutex<Counts>, Condvar)>;

/// Hands containers and networks to the removing thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Retirer {
    tx: crossbeam_channel::Sender<Gone>,
    dying: Dying,
}

impl Retirer {
    /// Starts the removing thread; it ends when every `Retirer` is dropped
    /// and what was handed to it is removed.
    pub fn start(engine: Engine) -> (Retirer, std::thread::JoinHandle<()>) {
        let (tx, rx) = crossbeam_channel::bounded::<Gone>(WAITING);
        let dying: Dying = Arc::default();
        let theirs = Arc::clone(&dying);
        let thread = std::thread::Builder::new()
            .name("retire".into())
            .spawn(move || {
                for gone in rx {
                    remove(&engine, gone, &theirs);
                }
            })
            .expect("cannot start the container-removing thread");
        (Retirer { tx, dying }, thread)
    }

    /// Removes container `id` (killing it first if it runs), which mounted `checkout`.
    pub fn container(&self, id: String, checkout: &Path) {
        {
            let mut counts = self.dying.0.lock().unwrap_or_else(|p| p.into_inner());
            counts.pending += 1;
            *counts.checkouts.entry(checkout.to_path_buf()).or_default() += 1;
        }
        self.send(Gone::Container { id, checkout: checkout.to_path_buf() });
    }

    /// Removes network `id` (after every container handed over before it).
    pub fn network(&self, id: String) {
        self.dying.0.lock().unwrap_or_else(|p| p.into_inner()).pending += 1;
        self.send(Gone::Network { id });
    }

    fn send(&self, gone: Gone) {
        if let Err(crossbeam_channel::SendError(gone)) = self.tx.send(gone) {
            match &gone {
                Gone::Container { id, .. } | Gone::Network { id } => {
                    log::warn!("container.left id={id}: the removing thread has stopped; the next start's sweep removes it")
                }
            }
            done(&gone, &self.dying);
        }
    }

    /// Waits until everything handed over is removed, at most `limit`
    /// (the slave stops); false when something is left.
    pub fn settle(&self, limit: Duration) -> bool {
        self.wait(limit, |counts| counts.pending == 0)
    }

    fn wait(&self, limit: Duration, until: impl Fn(&Counts) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let (lock, changed) = &*self.dying;
        let mut counts = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !until(&counts) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            counts = changed.wait_timeout(counts, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Waits until no container that mounted `checkout` is left, at most
    /// `limit`; false when one still is.
    pub fn fence(&self, checkout: &Path, limit: Duration) -> bool {
        self.wait(limit, |counts| !counts.checkouts.contains_key(checkout))
    }
}

fn remove(engine: &Engine, gone: Gone, dying: &Dying) {
    match &gone {
        Gone::Container { id, .. } => {
            if let Err(e) = engine.remove(id) {
                log::warn!("container.remove_failed id={id} error={}", crate::logging::quote(&e.to_string()));
            }
        }
        Gone::Network { id } => {
            if let Err(e) = engine.remove_network(id) {
                log::warn!("container.network_remove_failed network={id} error={}", crate::logging::quote(&e.to_string()));
            }
        }
    }
    done(&gone, dying);
}

/// `gone` is removed (or left to the next start's sweep): counted off.
fn done(gone: &Gone, dying: &Dying) {
    let (lock, changed) = &**dying;
    let mut counts = lock.lock().unwrap_or_else(|p| p.into_inner());
    counts.pending = counts.pending.saturating_sub(1);
    if let Gone::Container { checkout, .. } = gone {
        if let Some(n) = counts.checkouts.get_mut(checkout) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.checkouts.remove(checkout);
            }
        }
    }
    changed.notify_all();
}
