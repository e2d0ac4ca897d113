//! The control plane's ceiling: how many builds one Redis
//! schedules, and what each costs it, with V virtual slaves that build nothing.
//!
//! Against a running redis-server (`--redis URL`; the bench starts one as
//! deployed: AOF, `appendfsync always`), V threads each act as one slave:
//! `membership::Member::claim` an index (a new one allowed), renew the lease
//! every quarter lease (`Member::renew`, as the slave's heartbeat does), and
//! loop `queue::take` (BLMOVE, 1 s wait, as the slave) → `queue::start` →
//! `queue::finish` with a passed outcome, building nothing in between.
//! P producer threads push `--repos` distinct repositories (one branch each,
//! so nothing coalesces) through the real `queue::enqueue` — the hook's own
//! script, called directly, not over HTTP: this measures Redis, not the hook.
//!
//! One connection per virtual slave (a real slave holds about five: loop,
//! heartbeat, cancel watch, live-log publisher, forge poster); the idle
//! ones block in BLMOVE or sleep, so they cost Redis a client slot, not CPU.
//!
//! Measured from Redis itself (INFO cpu, INFO commandstats, INFO memory,
//! MEMORY USAGE) before and after each phase: an idle phase (membership
//! traffic alone) and the run (enqueue + take + start + finish of every
//! build). Prints one JSON object on stdout.
//!
//! Usage: `cargo run --release --example virtual_slaves -- --redis redis://127.0.0.1:6379/0
//! --slaves 100 [--repos 10000] [--producers 4] [--lease-ms 10000] [--idle-secs 3]`

use ci_backend::payload::{Event, ForgeFacts, Push};
use ci_backend::routing::Routing;
use ci_backend::store::keys;
use ci_backend::store::membership::Member;
use ci_backend::store::queue::{self, Begun, CancelRunning, Enqueued, Job, Outcome};
use redis::Connection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CLUSTER: &str = "slave";
const TAKE_WAIT: Duration = Duration::from_secs(1);
const HISTORY_KEEP: usize = 50;

struct Args {
    redis: String,
    slaves: usize,
    repos: usize,
    producers: usize,
    lease: Duration,
    idle: Duration,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        redis: String::new(),
        slaves: 10,
        repos: 10_000,
        producers: 4,
        lease: Duration::from_secs(10),
        idle: Duration::from_secs(3),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag}: expected a value"))?;
        let num = || value.parse::<u64>().map_err(|_| format!("{flag} {value:?}: expected a number"));
        match flag.as_str() {
            "--redis" => a.redis = value.clone(),
            "--slaves" => a.slaves = num()? as usize,
            "--repos" => a.repos = num()? as usize,
            "--producers" => a.producers = num()?.max(1) as usize,
            "--lease-ms" => a.lease = Duration::from_millis(num()?),
            "--idle-secs" => a.idle = Duration::from_secs(num()?),
            _ => return Err(format!("unknown flag {flag:?}; see the file's header for usage")),
        }
    }
    if a.redis.is_empty() {
        return Err("--redis URL is required".into());
    }
    Ok(a)
}

fn connect(url: &str) -> Connection {
    let client = redis::Client::open(url).expect("redis url");
    let conn = client.get_connection_with_timeout(Duration::from_secs(5)).expect("connect to redis");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    conn
}

/// Counters every thread adds to.
#[derive(Default)]
struct Tally {
    renews: AtomicU64,
    renews_lost: AtomicU64,
    takes: AtomicU64,
    takes_empty: AtomicU64,
    starts: AtomicU64,
    finishes: AtomicU64,
    enqueues: AtomicU64,
    not_queued: AtomicU64,
}

impl Tally {
    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        BTreeMap::from([
            ("renews", l(&self.renews)),
            ("renews_lost", l(&self.renews_lost)),
            ("takes", l(&self.takes)),
            ("takes_empty", l(&self.takes_empty)),
            ("starts", l(&self.starts)),
            ("finishes", l(&self.finishes)),
            ("enqueues", l(&self.enqueues)),
            ("not_queued", l(&self.not_queued)),
        ])
    }
}

/// One virtual slave: claim, then renew / take / start / finish until `stop`.
fn virtual_slave(url: String, lease: Duration, tally: Arc<Tally>, claimed: Arc<Barrier>, stop: Arc<AtomicBool>) {
    let mut conn = connect(&url);
    let mut member = Member::new(CLUSTER, lease);
    member.allow_new = true;
    let index = loop {
        if let Some(i) = member.claim(&mut conn, None).expect("claim") {
            break i;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    claimed.wait();
    let working = keys::working(CLUSTER, index);
    let slave = format!("{CLUSTER}-{index}");
    let mut renewed = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if renewed.elapsed() >= lease / 4 {
            renewed = Instant::now();
            tally.renews.fetch_add(1, Ordering::Relaxed);
            if !member.renew(&mut conn, index, &[], (0, 1)).expect("renew") {
                tally.renews_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        tally.takes.fetch_add(1, Ordering::Relaxed);
        let Some(id) = queue::take(&mut conn, CLUSTER, index, TAKE_WAIT).expect("take") else {
            tally.takes_empty.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        tally.starts.fetch_add(1, Ordering::Relaxed);
        let Begun::Run(job) = queue::start(&mut conn, &id, &working, &slave, 3, &[]).expect("start") else { continue };
        let outcome = Outcome { passed: true, could_not_run: false, log: vec!["ok".into()], seconds: 0 };
        queue::finish(&mut conn, &job, &working, &outcome, &[]).expect("finish");
        tally.finishes.fetch_add(1, Ordering::Relaxed);
    }
}

fn push_of(i: usize) -> Push {
    let repo = format!("org{:03}/project-{i:05}", i % 257);
    Push {
        clone_url: format!("https://github.com/{repo}.git"),
        repo,
        branch: "main".into(),
        sha: format!("{:040x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15),
        before: None,
        default_branch: Some("main".into()),
        message: format!("change {i}"),
        hints: Vec::new(),
        forge: ForgeFacts { kind: "github".into(), ..ForgeFacts::default() },
        pull: None,
        tag: None,
        fork: false,
        event: Event::Push,
        params: Default::default(),
    }
}

fn producer(url: String, me: usize, of: usize, repos: usize, tally: Arc<Tally>) {
    let mut conn = connect(&url);
    for i in (me..repos).step_by(of) {
        let push = push_of(i);
        let job = Job {
            push: &push,
            delivery: None,
            reset: false,
            keep: HISTORY_KEEP,
            cancel_running: CancelRunning::None,
            routing: Routing::Mod,
            alone: false,
        };
        tally.enqueues.fetch_add(1, Ordering::Relaxed);
        match queue::enqueue(&mut conn, &job).expect("enqueue") {
            Enqueued::Queued { .. } => {}
            _ => {
                tally.not_queued.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `INFO <section>` as name → value.
fn info(conn: &mut Connection, section: &str) -> BTreeMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.trim().to_string())).collect()
}

/// Redis's CPU seconds (user + system, all its threads).
fn redis_cpu(conn: &mut Connection) -> f64 {
    let i = info(conn, "cpu");
    let f = |k: &str| i.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    f("used_cpu_sys") + f("used_cpu_user")
}

/// Per command: (calls, usec) from INFO commandstats.
fn commandstats(conn: &mut Connection) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (k, v) in info(conn, "commandstats") {
        let Some(name) = k.strip_prefix("cmdstat_") else { continue };
        let field =
            |f: &str| v.split(',').find_map(|kv| kv.strip_prefix(&format!("{f}="))).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        out.insert(name.to_string(), (field("calls"), field("usec")));
    }
    out
}

fn used_memory(conn: &mut Connection) -> u64 {
    info(conn, "memory").get("used_memory").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A phase's cost to Redis: CPU, commands, memory.
struct Mark {
    at: Instant,
    cpu: f64,
    cmds: BTreeMap<String, (u64, u64)>,
    mem: u64,
    tally: BTreeMap<&'static str, u64>,
}

fn mark(conn: &mut Connection, tally: &Tally) -> Mark {
    Mark { at: Instant::now(), cpu: redis_cpu(conn), cmds: commandstats(conn), mem: used_memory(conn), tally: tally.snapshot() }
}

fn delta(a: &Mark, b: &Mark) -> serde_json::Value {
    let mut cmds = serde_json::Map::new();
    for (name, (calls, usec)) in &b.cmds {
        let (c0, u0) = a.cmds.get(name).copied().unwrap_or((0, 0));
        if calls > &c0 {
            cmds.insert(name.clone(), serde_json::json!({"calls": calls - c0, "usec": usec - u0}));
        }
    }
    let tally: BTreeMap<_, _> = b.tally.iter().map(|(k, v)| (*k, v - a.tally.get(k).copied().unwrap_or(0))).collect();
    serde_json::json!({
        "seconds": (b.at - a.at).as_secs_f64(),
        "redis_cpu_s": b.cpu - a.cpu,
        "used_memory_delta": b.mem as i64 - a.mem as i64,
        "commands": cmds,
        "client": tally,
    })
}

fn memory_usage(conn: &mut Connection, key: &str) -> u64 {
    redis::cmd("MEMORY").arg("USAGE").arg(key).arg("SAMPLES").arg(0).query::<Option<u64>>(conn).ok().flatten().unwrap_or(0)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("virtual_slaves: {e}");
            std::process::exit(2);
        }
    };
    let mut mon = connect(&a.redis);
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let claimed = Arc::new(Barrier::new(a.slaves + 1));
    let t_claim = Instant::now();
    let mut slaves = Vec::new();
    for _ in 0..a.slaves {
        let (url, tally, claimed, stop) = (a.redis.clone(), Arc::clone(&tally), Arc::clone(&claimed), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || virtual_slave(url, a.lease, tally, claimed, stop))
            .expect("spawn a virtual slave");
        slaves.push(spawned);
    }
    claimed.wait();
    let claim_s = t_claim.elapsed().as_secs_f64();
    let live = ci_backend::store::membership::live_count(&mut mon, CLUSTER).expect("live count");
    eprintln!("virtual_slaves: {} claimed in {claim_s:.2}s, live N = {live}", a.slaves);

    // idle: membership traffic alone (renews, empty takes)
    let m0 = mark(&mut mon, &tally);
    std::thread::sleep(a.idle);
    let m1 = mark(&mut mon, &tally);

    // the run
    let mut producers = Vec::new();
    for p in 0..a.producers {
        let (url, tally) = (a.redis.clone(), Arc::clone(&tally));
        let (of, repos) = (a.producers, a.repos);
        producers.push(std::thread::spawn(move || producer(url, p, of, repos, tally)));
    }
    for p in producers {
        p.join().expect("producer");
    }
    let enqueue_s = m1.at.elapsed().as_secs_f64();
    // builds the run must finish: every push that queued one (the idle phase finished none)
    let want = m1.tally["finishes"] + (a.repos as u64 - tally.not_queued.load(Ordering::SeqCst));
    let deadline = Instant::now() + Duration::from_secs(600);
    while tally.finishes.load(Ordering::SeqCst) < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let m2 = mark(&mut mon, &tally);
    stop.store(true, Ordering::SeqCst);
    for s in slaves {
        s.join().expect("virtual slave");
    }
    let finished = m2.tally["finishes"] - m1.tally["finishes"];

    // bytes: a finished build record, the keys a branch keeps
    let last: u64 = redis::cmd("GET").arg(keys::SEQ).query::<Option<u64>>(&mut mon).ok().flatten().unwrap_or(0);
    let ids: Vec<u64> = (0..100u64).map(|k| 1 + k * last.max(1) / 100).filter(|i| *i <= last).collect();
    let record = median(ids.iter().map(|i| memory_usage(&mut mon, &keys::build(&i.to_string()))).collect());
    let p = push_of(0);
    type BranchKey = fn(&str, &str) -> String;
    let branch_keys: [(&str, BranchKey); 4] =
        [("history", keys::history), ("push", keys::push), ("last", keys::last), ("done", keys::done)];
    let per_branch: BTreeMap<&str, u64> =
        branch_keys.into_iter().map(|(k, key)| (k, memory_usage(&mut mon, &key(&p.repo, &p.branch)))).collect();
    let clients = info(&mut mon, "clients");
    // a history entry's marginal bytes: a list shaped like ci:history (build ids, newest first)
    // with HISTORY_KEEP entries against one with a single entry
    let probe = "ci:bench:history-probe";
    let mut per_entry = 0.0;
    if last > HISTORY_KEEP as u64 {
        let ids: Vec<String> = (last - HISTORY_KEEP as u64 + 1..=last).map(|i| i.to_string()).collect();
        let _: () = redis::cmd("RPUSH").arg(probe).arg(&ids[0]).query(&mut mon).expect("RPUSH");
        let one = memory_usage(&mut mon, probe);
        let _: () = redis::cmd("RPUSH").arg(probe).arg(&ids[1..]).query(&mut mon).expect("RPUSH");
        let full = memory_usage(&mut mon, probe);
        let _: () = redis::cmd("DEL").arg(probe).query(&mut mon).expect("DEL");
        per_entry = (full as f64 - one as f64) / (HISTORY_KEEP - 1) as f64;
    }

    let out = serde_json::json!({
        "slaves": a.slaves,
        "repos": a.repos,
        "producers": a.producers,
        "lease_ms": a.lease.as_millis() as u64,
        "connections": a.slaves + a.producers + 1,
        "connected_clients_after": clients.get("connected_clients"),
        "claim_seconds": claim_s,
        "live_n": live,
        "enqueue_seconds": enqueue_s,
        "finished": finished,
        "idle": delta(&m0, &m1),
        "run": delta(&m1, &m2),
        "bytes": {"build_record_median": record, "branch_keys": per_branch, "history_keep": HISTORY_KEEP,
                  "history_entry": per_entry},
    });
    println!("{out}");
    if finished < want - m1.tally["finishes"] {
        eprintln!("virtual_slaves: only {finished} of {} builds finished before the deadline", want - m1.tally["finishes"]);
        std::process::exit(1);
    }
}
