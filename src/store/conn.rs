//! One Redis connection that reconnects: the redis crate does not, so every
//! caller goes through [`Redis::run`], which drops a broken connection and
//! makes a later call dial again — with backoff, so a Redis that is down
//! costs callers an immediate error rather than a connect timeout each.
//!
//! Where it dials is a [`Target`]: REDIS_URL, or the master that Redis
//! Sentinel names (REDIS_SENTINELS + REDIS_MASTER_NAME), resolved again at
//! every dial, so a failover is followed without a restart. The redis crate's
//! own `sentinel` feature is not used: its blocking client dials sentinels and
//! masters without a connect timeout (one silent sentinel stalls every dial)
//! and pulls in `rand`; the protocol is two commands, written here.

use crate::config::RedisAddress;
use crate::logging::redact_url;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shortest and longest wait between two dials while Redis is unreachable.
const MIN_REDIAL: Duration = Duration::from_millis(50);
const MAX_REDIAL: Duration = Duration::from_secs(1);
/// How long one dial to Redis (or to the master Sentinel names) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connect and read timeout for one question to one sentinel.
const SENTINEL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a process asks the sentinels whether the master moved while
/// its connections still work (a switchover, or an old master cut off but
/// alive, keeps accepting writes until Sentinel demotes it, seconds later).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where Redis is: REDIS_URL, or — with REDIS_SENTINELS and REDIS_MASTER_NAME —
/// the master the sentinels name, with REDIS_URL's database, user and
/// password applied to it (its host and port are then unused). Clones share
/// what the process last saw of the master, so a failover is logged once.
#[derive(Clone)]
pub struct Target {
    url: String,
    sentinel: Option<Arc<Sentinels>>,
}

struct Sentinels {
    /// `host:port` of each sentinel, asked in turn.
    addrs: Vec<(String, u16)>,
    master: String,
    /// The sentinel that answered last: asked first next time.
    first: AtomicUsize,
    /// The master this process last dialed or heard named; a connection
    /// to another one is dropped before its next use.
    seen: Mutex<Option<String>>,
    /// The watcher thread, started at the first dial.
    watching: std::sync::Once,
    /// REDIS_URL's password, also given to the sentinels (a sentinel with
    /// `requirepass`: a step that reaches an open one could name a master
    /// of its own and be handed the password). A sentinel without one is
    /// asked without it.
    password: Option<String>,
}

impl Target {
    /// REDIS_URL alone.
    pub fn url(url: &str) -> Target {
        Target { url: url.to_string(), sentinel: None }
    }

    /// Where the configuration says Redis is. Build one per process and
    /// clone it: clones share what the process saw of the sentinels.
    pub fn new(address: &RedisAddress) -> Target {
        let Some((addrs, master)) = &address.sentinels else { return Target::url(&address.url) };
        let sentinels = Sentinels {
            addrs: addrs.clone(),
            master: master.clone(),
            first: AtomicUsize::new(0),
            seen: Mutex::new(None),
            watching: std::sync::Once::new(),
            password: redis::IntoConnectionInfo::into_connection_info(address.url.as_str()).ok().and_then(|i| i.redis.password),
        };
        Target { url: address.url.clone(), sentinel: Some(Arc::new(sentinels)) }
    }

    /// Dials the master: REDIS_URL's, or the one the sentinels name.
    pub fn connect(&self, timeout: Duration) -> RedisResult<redis::Connection> {
        self.dial(timeout).map(|(conn, _)| conn)
    }

    /// The connection, and the master's address when the sentinels named it.
    fn dial(&self, timeout: Duration) -> RedisResult<(redis::Connection, Option<String>)> {
        let info: ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(self.url.as_str())?;
        match &self.sentinel {
            None => Ok((redis::Client::open(info)?.get_connection_with_timeout(timeout)?, None)),
            Some(s) => {
                let dialed = s.connect_master(info, timeout)?;
                let watched = Arc::clone(s);
                s.watching.call_once(move || {
                    let spawned = std::thread::Builder::new().name("sentinel-watch".into()).spawn(move || watched.watch());
                    if let Err(e) = spawned {
                        log::error!(
                            "redis.sentinel_watch_failed error={}: a master moved while connections work is seen at their next error only",
                            crate::logging::quote(&e.to_string())
                        );
                    }
                });
                Ok((dialed.0, Some(dialed.1)))
            }
        }
    }

    /// Whether a connection to `master` (as [`Target::dial`] gave it) should
    /// be dropped: the sentinels have named another master since.
    fn moved(&self, master: Option<&str>) -> bool {
        match (&self.sentinel, master) {
            (Some(s), Some(m)) => s.seen.lock().unwrap_or_else(|p| p.into_inner()).as_deref().is_some_and(|seen| seen != m),
            _ => false,
        }
    }
}

/// For logs: the URL without its password, and the sentinels asked.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sentinel {
            None => f.write_str(&redact_url(&self.url)),
            Some(s) => {
                let list: Vec<String> = s.addrs.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                write!(f, "sentinel://{}/{} ({})", list.join(","), s.master, redact_url(&self.url))
            }
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({self})")
    }
}

fn refused(why: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, why))
}

impl Sentinels {
    /// Asks the sentinels in turn for the master's address, dials it with
    /// `info`'s database and credentials, and keeps it only if it answers
    /// `ROLE` as master. An address that failed is not dialed twice.
    fn connect_master(&self, info: ConnectionInfo, timeout: Duration) -> RedisResult<(redis::Connection, String)> {
        let mut tried: Vec<(String, u16)> = Vec::new();
        let mut errors = Vec::new();
        for (i, (host, port)) in self.in_turn() {
            let named = match ask(host, *port, &self.master, self.password.as_deref()) {
                Ok(Some(addr)) => addr,
                Ok(None) => {
                    errors.push(format!("sentinel {host}:{port} knows no master {:?}", self.master));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("sentinel {host}:{port}: {e}"));
                    continue;
                }
            };
            if tried.contains(&named) {
                continue;
            }
            tried.push(named.clone());
            let master = format!("{}:{}", named.0, named.1);
            match dial_master(&info, named, timeout) {
                Ok(conn) => {
                    self.first.store(i, Ordering::Relaxed);
                    self.saw(&master, host, *port);
                    return Ok((conn, master));
                }
                Err(e) => errors.push(format!("master {master} named by sentinel {host}:{port}: {e}")),
            }
        }
        Err(refused(format!("no master {:?} found: {}", self.master, errors.join("; "))))
    }

    /// The sentinels with their positions, the one that answered last first.
    fn in_turn(&self) -> impl Iterator<Item = (usize, &(String, u16))> {
        let n = self.addrs.len();
        let first = self.first.load(Ordering::Relaxed);
        (0..n).map(move |k| (first + k) % n).map(|i| (i, &self.addrs[i]))
    }

    /// Every WATCH_EVERY, the first sentinel that answers names the master;
    /// a new one is noted, so connections to the old one are dropped.
    fn watch(&self) {
        loop {
            std::thread::sleep(WATCH_EVERY);
            for (_, (host, port)) in self.in_turn() {
                if let Ok(Some((h, p))) = ask(host, *port, &self.master, self.password.as_deref()) {
                    self.saw(&format!("{h}:{p}"), host, *port);
                    break;
                }
            }
        }
    }

    /// Logs the first master this process dials, and every change after.
    fn saw(&self, master: &str, host: &str, port: u16) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.as_deref() {
            Some(old) if old == master => return,
            Some(old) => {
                log::info!("redis.failover old={old} new={master} name={} sentinel={host}:{port}: following the new master", self.master)
            }
            None => log::info!("redis.master addr={master} name={} sentinel={host}:{port}", self.master),
        }
        *seen = Some(master.to_string());
    }
}

/// `SENTINEL get-master-addr-by-name`, with short timeouts; with the
/// password when there is one, again without it when the sentinel has none.
fn ask(host: &str, port: u16, name: &str, password: Option<&str>) -> RedisResult<Option<(String, u16)>> {
    match ask_once(host, port, name, password) {
        Err(e) if password.is_some() && e.to_string().contains("without any password configured") => ask_once(host, port, name, None),
        answer => answer,
    }
}

fn ask_once(host: &str, port: u16, name: &str, password: Option<&str>) -> RedisResult<Option<(String, u16)>> {
    let addr = ConnectionAddr::Tcp(host.to_string(), port);
    let redis = redis::RedisConnectionInfo { password: password.map(str::to_string), ..Default::default() };
    let info = ConnectionInfo { addr, redis };
    let mut conn = redis::Client::open(info)?.get_connection_with_timeout(SENTINEL_TIMEOUT)?;
    conn.set_read_timeout(Some(SENTINEL_TIMEOUT))?;
    conn.set_write_timeout(Some(SENTINEL_TIMEOUT))?;
    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(name).query(&mut conn)
}

/// Dials the named master and checks that it says it is one.
fn dial_master(info: &ConnectionInfo, (host, port): (String, u16), timeout: Duration) -> RedisResult<redis::Connection> {
    let info = ConnectionInfo { addr: ConnectionAddr::Tcp(host, port), redis: info.redis.clone() };
    let mut conn = redis::Client::open(info)?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn)?;
    let role: String = role.first().map(redis::from_redis_value).transpose()?.unwrap_or_default();
    if role != "master" {
        return Err(refused(format!("it answers ROLE {role:?}, not master (a failover is under way)")));
    }
    Ok(conn)
}

pub struct Redis {
    target: Target,
    conn: Option<redis::Connection>,
    /// The master `conn` is to, when the sentinels named it.
    master: Option<String>,
    /// Socket read/write timeout; blocking pops must block for less.
    io_timeout: Duration,
    /// No dial before this instant after a failed one; and the next wait.
    redial_at: Option<Instant>,
    redial_wait: Duration,
}

impl Redis {
    /// A connection to `target` (whose URL the configuration checked),
    /// dialed at its first use.
    pub fn open(target: &Target, io_timeout: Duration) -> Redis {
        Redis { target: target.clone(), conn: None, master: None, io_timeout, redial_at: None, redial_wait: MIN_REDIAL }
    }

    fn dial(&mut self) -> redis::RedisResult<()> {
        if let Some(at) = self.redial_at.filter(|at| Instant::now() < *at) {
            let ms = at.saturating_duration_since(Instant::now()).as_millis();
            return Err(refused(format!("redis unreachable; next dial in {ms} ms")));
        }
        let dialed = self.target.dial(DIAL_TIMEOUT).and_then(|(conn, master)| {
            conn.set_read_timeout(Some(self.io_timeout))?;
            conn.set_write_timeout(Some(self.io_timeout))?;
            Ok((conn, master))
        });
        match dialed {
            Ok((conn, master)) => {
                self.conn = Some(conn);
                self.master = master;
                self.redial_at = None;
                self.redial_wait = MIN_REDIAL;
                Ok(())
            }
            Err(e) => {
                // Jittered: every slave of a restarted Redis failed at the
                // same moment; they must not all dial again at the same moment.
                self.redial_at = Some(Instant::now() + jitter(self.redial_wait, MIN_REDIAL));
                self.redial_wait = (self.redial_wait * 2).min(MAX_REDIAL);
                Err(e)
            }
        }
    }

    /// Runs `f` on a live connection, dialing first if needed. A connection
    /// error (not a script or type error) drops the connection.
    pub fn run<T>(&mut self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        if self.conn.is_some() && self.target.moved(self.master.as_deref()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.dial()?;
        }
        let result = f(self.conn.as_mut().expect("connected above"));
        if let Err(e) = &result {
            if Fault::of(e) == Fault::Transient {
                self.conn = None;
            }
        }
        result
    }

    /// Drops the connection; the next call dials a fresh one. After Redis
    /// refused a large command (OOM), the old connection's query buffer may
    /// still hold its memory on the server.
    pub fn reconnect(&mut self) {
        self.conn = None;
    }

    /// Like [`Redis::run`], but a connection found dead (Redis restarted,
    /// idle socket closed) is redialed and `f` tried once more. Only for
    /// operations that are safe to repeat: reads, and scripts whose repeat
    /// coalesces or is caught by a delivery id.
    pub fn run_again<T>(&mut self, mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let had_connection = self.conn.is_some();
        match self.run(&mut f) {
            Err(e) if had_connection && is_connection_error(&e) && !e.is_timeout() => self.run(f),
            other => other,
        }
    }
}

/// What a Redis error means to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The connection is of no more use: its state is unknown, or its
    /// server is no longer the master (`READONLY`: it was demoted to a
    /// replica; `MASTERDOWN`: a replica lost its master), or it is still
    /// loading its data (`LOADING`, just after a restart). The connection is
    /// dropped; callers retry, and the next dial asks the sentinels again.
    Transient,
    /// Redis answered and refused (a script error, OOM, a wrong type):
    /// the same call would fail again.
    Fatal,
}

impl Fault {
    pub fn of(e: &RedisError) -> Fault {
        let transient = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
            || matches!(e.kind(), ErrorKind::ReadOnly | ErrorKind::MasterDown | ErrorKind::BusyLoadingError);
        if transient {
            Fault::Transient
        } else {
            Fault::Fatal
        }
    }
}

/// Whether `e` is [`Fault::Transient`]: retried, on a new connection.
pub fn is_connection_error(e: &RedisError) -> bool {
    Fault::of(e) == Fault::Transient
}

/// `WAIT n timeout` after a write on `c`: how many replicas acknowledged
/// every write this connection made.
pub fn replicas_acked(c: &mut redis::Connection, n: u32, timeout: Duration) -> RedisResult<u32> {
    redis::cmd("WAIT").arg(n).arg(timeout.as_millis() as u64).query(c)
}

/// A Redis failure, worded by kind: a lost connection is retried (warn);
/// anything else (a script error, OOM, a wrong type) is not (error).
pub fn log_error(op: &str, e: &redis::RedisError) {
    match Fault::of(e) {
        Fault::Transient => log::warn!("redis.unreachable op={op} error={}", crate::logging::quote(&e.to_string())),
        Fault::Fatal => log::error!("redis.refused op={op} error={}", crate::logging::quote(&e.to_string())),
    }
}

/// Shortest and longest [`Backoff`] delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff from 100 ms to 5 s, jittered: each delay is drawn
/// between half its step and the step (and never below 100 ms), so the
/// slaves of a Redis that restarted do not all retry at the same instant.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(BACKOFF_MIN)
    }
}

impl Backoff {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        jitter(d, BACKOFF_MIN)
    }
}

/// "Equal jitter": a random delay in [step / 2, step], at least `floor`.
fn jitter(step: Duration, floor: Duration) -> Duration {
    let half = step / 2;
    let span = (step - half).as_micros() as u64;
    let mut bytes = [0u8; 8];
    // Without randomness the full step is waited: the bound still holds.
    let draw = if getrandom::fill(&mut bytes).is_ok() { u64::from_le_bytes(bytes) % (span + 1) } else { span };
    (half + Duration::from_micros(draw)).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_still_loading_is_retried_like_a_lost_connection() {
        // The soak found a passed build stored as failed: its FINISH met `LOADING` after a restart.
        let loading = redis::RedisError::from((ErrorKind::BusyLoadingError, "LOADING Redis is loading the dataset in memory"));
        assert_eq!(Fault::of(&loading), Fault::Transient);
        let oom = redis::RedisError::from((ErrorKind::ExecAbortError, "OOM command not allowed"));
        assert_eq!(Fault::of(&oom), Fault::Fatal, "a refusal is not retried");
    }
    use super::Target;

    #[test]
    fn backoff_delays_are_jittered_within_their_bounds() {
        let mut b = Backoff::default();
        let mut steps = Vec::new();
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(100) && d <= Duration::from_secs(5), "{d:?}");
            steps.push(d);
        }
        // The steps grow to the cap: 100, 200, ... 3200 ms, then 5 s.
        let caps = [100, 200, 400, 800, 1600, 3200, 5000, 5000];
        for (d, cap) in steps.iter().zip(caps) {
            assert!(
                *d <= Duration::from_millis(cap) && *d >= Duration::from_millis(cap / 2).max(Duration::from_millis(100)),
                "{d:?} vs {cap} ms"
            );
        }
        // Not all the same: 200 draws of a 1 s step differ.
        let draws: std::collections::HashSet<Duration> = (0..200).map(|_| jitter(Duration::from_secs(1), MIN_REDIAL)).collect();
        assert!(draws.len() > 100, "{} distinct delays", draws.len());
        assert!(draws.iter().all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1)));
        assert_eq!(jitter(Duration::from_millis(50), MIN_REDIAL), MIN_REDIAL, "never below the floor");
    }

    #[test]
    fn a_target_through_sentinels_shows_them_and_hides_the_password() {
        let address = RedisAddress {
            url: "redis://:pw@ignored:6379/3".into(),
            sentinels: Some((vec![("10.0.0.1".into(), 26379), ("::1".into(), 26381)], "ci".into())),
        };
        assert_eq!(Target::new(&address).to_string(), "sentinel://10.0.0.1:26379,::1:26381/ci (redis://:***@ignored:6379/3)");
        let plain = RedisAddress { url: "redis://db:6379/0".into(), sentinels: None };
        assert!(Target::new(&plain).sentinel.is_none());
    }
}
