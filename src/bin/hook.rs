//! `hook`: reads its configuration, starts the logger, settles the token and
//! the routing rule, binds and runs the HTTP workers until Ctrl-C / SIGTERM.

use ci_backend::hook::metrics;
use ci_backend::hook::server as http;
use ci_backend::logging::quote;
use ci_backend::store::conn::{Backoff, Redis, Target};
use ci_backend::store::{keys, queue};
use ci_backend::{config, cron, logging, signature};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        print!("{}", config::help("hook", "ci-backend web-hook edge", config::HOOK_SETTINGS));
        return;
    }
    logging::init();
    match run() {
        Ok(()) => {}
        Err(Stop::Refused(why)) => {
            log::error!("hook.refused reason={}", quote(&why));
            eprintln!("hook: {why}");
            std::process::exit(2);
        }
        Err(Stop::Failed(e)) => {
            log::error!("hook.failed error={}", quote(&e));
            std::process::exit(1);
        }
    }
}

/// Why the hook ended early: it refused to start (a setting, a schedule or
/// the routing rule it cannot take: exit 2, the reason also on stderr, as
/// the slave's), or it failed (exit 1).
enum Stop {
    Refused(String),
    Failed(String),
}

impl From<String> for Stop {
    fn from(e: String) -> Stop {
        Stop::Failed(e)
    }
}

fn run() -> Result<(), Stop> {
    let config = config::HookConfig::from_env().map_err(|e| Stop::Refused(e.to_string()))?;
    let schedules = cron::load(config.cron.as_deref(), config.cron_file.as_deref()).map_err(|e| Stop::Refused(e.0))?;
    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || handler_stop.store(true, Ordering::SeqCst))
        .map_err(|e| format!("cannot install the signal handler: {e}"))?;
    let target = Target::new(&config.redis);
    let token = settle_token(&config, &target, &stop)?;
    settle_routing(&config, &target)?;
    let listener = std::net::TcpListener::bind(&config.addr).map_err(|e| format!("HOOK_ADDR={:?}: cannot listen: {e}", config.addr))?;
    let addr = listener.local_addr().map_or_else(|_| config.addr.clone(), |a| a.to_string());
    log::info!(
        "hook.listening addr={addr} reads={} threads={} queue={} redis={} min_replicas={} max_body={} request_timeout={} routing={}",
        config.read_token.as_deref().map_or("open".to_string(), |t| format!("token:{}", ci_backend::signature::fingerprint(t))),
        config.threads,
        config.queue,
        quote(&target.to_string()),
        config.min_replicas,
        config.max_body,
        config.request_timeout.as_secs(),
        config.routing.as_str()
    );
    let hook = Arc::new(ci_backend::hook::state::Hook::new(config, target, token));
    let mut redis = Redis::open(&hook.redis, Duration::from_secs(3));
    let watched = Arc::clone(&hook);
    std::thread::spawn(move || metrics::watch_durability(&mut redis, &watched.metrics, watched.config.durability_check));
    if !schedules.is_empty() {
        let (scheduled, stopped) = (Arc::clone(&hook), Arc::clone(&stop));
        std::thread::spawn(move || ci_backend::hook::cron::run(scheduled, schedules, stopped));
    }
    http::serve(hook, listener, stop);
    log::info!("hook.stopped");
    Ok(())
}

/// The configured token, else the one shared through Redis (this hook's
/// random one if it is the first). A generated or shared one is printed
/// once (operators read it here); a configured one only as its fingerprint.
fn settle_token(config: &config::HookConfig, target: &Target, stop: &AtomicBool) -> Result<String, String> {
    if let Some(token) = &config.token {
        log::info!("hook.token source=configured fingerprint={}", signature::fingerprint(token));
        return Ok(token.clone());
    }
    let candidate = signature::generate_token().map_err(|e| format!("cannot generate a token: {e}"))?;
    let mut redis = Redis::open(target, Duration::from_secs(3));
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::SeqCst) {
        match redis.run(|c| queue::shared_token(c, &candidate)) {
            Ok((token, stored)) => {
                let source = if stored { "generated" } else { "shared" };
                log::info!("hook.token source={source} token={token}");
                return Ok(token);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                log::warn!(
                    "redis.unreachable op=token redis={} error={} retry_ms={}",
                    quote(&target.to_string()),
                    quote(&e.to_string()),
                    delay.as_millis()
                );
                std::thread::sleep(delay);
            }
        }
    }
    Err("stopped before the token could be read from Redis".into())
}

/// Agrees on the routing rule with the deployment's other hooks through
/// Redis (`keys::ROUTING`): the first hook stores its HOOK_ROUTING, a hook with another
/// rule refuses to start. With Redis unreachable now, it starts anyway: each
/// enqueue checks (or stores) the rule in the same script.
fn settle_routing(config: &config::HookConfig, target: &Target) -> Result<(), Stop> {
    let rule = config.routing.as_str();
    let mut redis = Redis::open(target, Duration::from_secs(3));
    match redis.run_again(|c| queue::agree_routing(c, config.routing)) {
        Ok(agreed) if agreed == rule => {
            log::info!("hook.routing rule={rule}");
            Ok(())
        }
        Ok(agreed) => Err(Stop::Refused(format!(
            "HOOK_ROUTING={rule}, but this deployment routes by {agreed} (Redis key {key}, stored by its first hook): \
             start this hook with HOOK_ROUTING={agreed}, or switch every hook: stop them all, let the queues drain, \
             `redis-cli DEL {key}`, then start them with HOOK_ROUTING={rule}",
            agreed = quote(&agreed),
            key = keys::ROUTING
        ))),
        Err(e) => {
            log::warn!(
                "hook.routing rule={rule} agreed=later redis={} error={}: each push checks {}",
                quote(&target.to_string()),
                quote(&e.to_string()),
                keys::ROUTING
            );
            Ok(())
        }
    }
}
