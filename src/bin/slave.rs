//! `slave`: takes its credentials out of the environment, reads its
//! configuration, starts the logger, handles signals and runs the worker loop.

use ci_backend::slave::{build_user, credentials, run as worker, trust};
use ci_backend::store::conn::Target;
use ci_backend::{config, logging};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::help("slave", "ci-backend build worker", config::SLAVE_SETTINGS));
        return;
    }
    // First, while this is the only thread: may restart the process.
    let taken = credentials::take().unwrap_or_else(|e| exit(2, &e.to_string()));
    build_user::protect_self().unwrap_or_else(|e| exit(1, &format!("cannot make the slave non-dumpable: {e}")));
    logging::init();
    let config = config::SlaveConfig::from_env().unwrap_or_else(|e| exit(2, &e.to_string()));
    let build_user = build_user::BuildUser::resolve(&config.build_user).unwrap_or_else(|e| exit(2, &e.to_string()));
    let roots = trust::install(config.ca_file.as_deref()).unwrap_or_else(|e| exit(2, &e));
    let identity =
        worker::Identity { build_user, git: taken.git, forges: taken.forges, secrets: taken.secrets, redis: Target::new(&config.redis) };
    let user = &identity.build_user;
    let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
    let creds = if identity.git.is_empty() { "-".to_string() } else { identity.git.hosts() };
    log::info!(
        "slave.isolation build_user={} uid={} gid={} groups={} switch={} build_groups={} credentials_for={}",
        logging::quote(&user.name),
        user.uid,
        user.gid,
        if groups.is_empty() { "-".to_string() } else { groups.join(",") },
        user.switch,
        if user.switch { format!("{}-{}", config.build_groups.0, config.build_groups.1) } else { "-".to_string() },
        logging::quote(&creds)
    );
    if let Some(file) = &config.ca_file {
        log::info!("slave.trust ca_file={} certificates={roots}", logging::quote(&file.to_string_lossy()));
    }
    if !identity.secrets.is_empty() {
        log::info!("slave.secrets names={}", logging::quote(&identity.secrets.names()));
    }
    if !identity.forges.is_empty() {
        log::info!("slave.forges forges={}", logging::quote(&identity.forges.describe()));
    }
    if !user.switch && !identity.git.is_empty() {
        log::warn!(
            "slave.credentials_shared user={}: steps run as the slave's own user and can reach its git; run the slave as root so that they run as SLAVE_BUILD_USER",
            logging::quote(&user.name)
        );
    }
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
    if let Err(e) = worker::run(config, identity, signals) {
        log::error!("slave.failed error={}", logging::quote(&e.to_string()));
        std::process::exit(1);
    }
}

fn exit(code: i32, why: &str) -> ! {
    eprintln!("slave: {why}");
    std::process::exit(code);
}
