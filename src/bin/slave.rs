//! `slave`: reads its configuration, starts the logger, handles signals and
//! runs the worker loop.

use ci_backend::{config, logging, worker};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::help("slave", "ci-backend build worker", config::SLAVE_SETTINGS));
        return;
    }
    logging::init();
    let config = match config::SlaveConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("slave: {e}");
            std::process::exit(2);
        }
    };
    let signals = Arc::new(worker::Signals::default());
    let grace = config.grace;
    let handler_signals = Arc::clone(&signals);
    let installed = ctrlc::set_handler(move || {
        if handler_signals.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        log::info!("slave.stopping grace_seconds={}: no new jobs; the running build may finish", grace.as_secs());
        let s = Arc::clone(&handler_signals);
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            s.abort.store(true, Ordering::SeqCst);
        });
    });
    if let Err(e) = installed {
        eprintln!("slave: cannot install the signal handler: {e}");
        std::process::exit(1);
    }
    if let Err(e) = worker::run(config, signals) {
        log::error!("slave.failed error={}", logging::quote(&e));
        std::process::exit(1);
    }
}
