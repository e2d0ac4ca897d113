//! `make soak`: a bounded chaos run that proves "nothing lost" with tallies.
//!
//! Redis (AOF, `appendfsync always`), 2 hooks, 3 slaves (`SLAVE_LEASE=2`, `SLAVE_GRACE=5`) and
//! 8 repositories with two branches each, whose `integration.yml` sleeps a fraction of a second.
//! For `--seconds` a pusher commits to a random branch and sends the signed push to a random
//! hook (bounded rate) while a chaos thread, at random moments, SIGKILLs Redis and restarts it on
//! the same port and directory, SIGKILLs a slave and starts a replacement, SIGKILLs a hook and
//! starts another, or SIGSTOPs a slave past its lease and SIGCONTs it. Then chaos stops, the run
//! waits (to a deadline) for every queue to drain, and checks from Redis:
//!
//! - every push answered 2xx has a stored finished build of its branch for its commit or a newer
//!   commit of that branch (coalescing) — otherwise it is LOST;
//! - no branch's stored result (`ci:done`) is older than another finished build of that branch
//!   (a paused-then-resumed slave never overwrote a newer result), and it is the newest commit
//!   the hooks accepted.
//!
//! The tally is printed as `pushes sent N`, `answered 2xx N`, `answered 5xx N`, `builds started
//! N`, `builds finished N`, `builds run twice N`, `builds lost N` (then a few more lines); the
//! exit code is non-zero when a build was lost or a result was overwritten by an older one.
//! Usage: `cargo run --release --example soak -- --seconds 180 [--seed N]`.

#[path = "../tests/harness/mod.rs"]
mod harness;

use harness::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPOS: usize = 8;
const BRANCHES: [&str; 2] = ["main", "dev"];
const SLAVES: usize = 3;
const HOOKS: usize = 2;
const SLAVE_ENV: [(&str, &str); 2] = [("SLAVE_LEASE", "2"), ("SLAVE_GRACE", "5")];
const YML: &str = "- step: work\n  shell:\n    - sleep 0.$((RANDOM % 6))\n    - echo \"$COMMIT\" > last-commit\n";
/// How long the drained state may take to arrive after chaos stops.
const QUIESCENCE: Duration = Duration::from_secs(240);

/// One push the pusher sent.
#[derive(Debug, Clone)]
struct Sent {
    repo: String,
    branch: String,
    sha: String,
    /// Position of the commit in its branch's history (0 = first pushed).
    seq: usize,
    code: Option<u16>,
    id: Option<String>,
}

/// What the chaos thread did.
#[derive(Default, Debug)]
struct Chaos {
    redis_kills: usize,
    slave_kills: usize,
    hook_kills: usize,
    pauses: usize,
    paused_mid_build: usize,
    killed_mid_build: usize,
    errors: Vec<String>,
}

/// The processes; owned by the chaos thread while it runs.
struct World {
    redis: Redis,
    hooks: Vec<Hook>,
    slaves: Vec<Slave>,
}

type Endpoints = Arc<Mutex<Vec<(SocketAddr, String)>>>;

fn endpoints_of(hooks: &[Hook]) -> Vec<(SocketAddr, String)> {
    hooks.iter().map(|h| (h.addr, h.token.clone())).collect()
}

/// `build.started` lines without a later `build.finished` or `build.aborted`: mid-build.
fn mid_build(slave: &Slave) -> bool {
    let log = slave.log();
    let started = events(&log, "build.started").len();
    let ended = events(&log, "build.finished").len() + events(&log, "build.aborted").len();
    started > ended
}

/// Prefers a slave that is running a build right now (polled briefly), else any.
fn pick_slave(world: &World, rng: &mut Rng) -> (usize, bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let busy: Vec<usize> = (0..world.slaves.len()).filter(|&i| mid_build(&world.slaves[i])).collect();
        if !busy.is_empty() {
            return (busy[rng.below(busy.len())], true);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (rng.below(world.slaves.len()), false)
}

fn chaos(mut world: World, endpoints: Endpoints, stop: Arc<AtomicBool>, seed: u64) -> (World, Chaos) {
    let mut rng = Rng(seed ^ 0xA5A5_A5A5_5A5A_5A5A);
    let mut c = Chaos::default();
    // The first event comes after a calm start.
    let mut next = Instant::now() + rng.millis(3000, 6000);
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let action = rng.below(4);
        let outcome = catch_unwind(AssertUnwindSafe(|| match action {
            0 => {
                eprintln!("soak: chaos: SIGKILL redis");
                world.redis.kill9();
                std::thread::sleep(rng.millis(200, 2500)); // redis stays down a while
                world.redis.restart();
                c.redis_kills += 1;
            }
            1 => {
                let (i, busy) = pick_slave(&world, &mut rng);
                let cache = world.slaves[i].cache.clone();
                eprintln!("soak: chaos: SIGKILL slave {} (mid-build: {busy}), start a replacement", world.slaves[i].name());
                world.slaves[i].kill9();
                let mut env: Vec<(&str, &str)> = SLAVE_ENV.to_vec();
                let cache = cache.to_string_lossy().into_owned();
                env.push(("SLAVE_CACHE", &cache));
                world.slaves[i] = Slave::start(&world.redis, &env);
                c.slave_kills += 1;
                c.killed_mid_build += busy as usize;
            }
            2 => {
                let i = rng.below(world.hooks.len());
                eprintln!("soak: chaos: SIGKILL hook {}", world.hooks[i].addr);
                world.hooks[i].proc.kill9();
                endpoints.lock().unwrap().retain(|(a, _)| *a != world.hooks[i].addr);
                std::thread::sleep(rng.millis(100, 1500)); // the hook stays away a while
                world.hooks[i] = Hook::start(&world.redis, &[]);
                *endpoints.lock().unwrap() = endpoints_of(&world.hooks);
                c.hook_kills += 1;
            }
            _ => {
                let (i, busy) = pick_slave(&world, &mut rng);
                let pause = rng.millis(4500, 7000); // past the 2 s lease, and past the 2 leases N counts it
                eprintln!("soak: chaos: SIGSTOP slave {} for {pause:?} (mid-build: {busy})", world.slaves[i].name());
                world.slaves[i].proc.signal("STOP");
                std::thread::sleep(pause);
                world.slaves[i].proc.signal("CONT");
                c.pauses += 1;
                c.paused_mid_build += busy as usize;
            }
        }));
        if let Err(e) = outcome {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            eprintln!("soak: chaos action {action} failed: {msg}");
            c.errors.push(msg);
            // Put the world back together: a running Redis, every slave and hook running.
            let repaired = catch_unwind(AssertUnwindSafe(|| {
                if !world.redis.running() {
                    world.redis.restart();
                }
                for i in 0..world.slaves.len() {
                    world.slaves[i].proc.signal("CONT");
                    if !world.slaves[i].proc.alive() {
                        let cache = world.slaves[i].cache.to_string_lossy().into_owned();
                        let mut env: Vec<(&str, &str)> = SLAVE_ENV.to_vec();
                        env.push(("SLAVE_CACHE", &cache));
                        world.slaves[i] = Slave::start(&world.redis, &env);
                    }
                }
                for i in 0..world.hooks.len() {
                    if !world.hooks[i].proc.alive() {
                        world.hooks[i] = Hook::start(&world.redis, &[]);
                    }
                }
                *endpoints.lock().unwrap() = endpoints_of(&world.hooks);
            }));
            if repaired.is_err() {
                c.errors.push("could not repair the world after a failed chaos action".into());
            }
        }
        next = Instant::now() + rng.millis(2000, 7000);
    }
    (world, c)
}

fn pusher(repos: Vec<GitRepo>, endpoints: Endpoints, stop: Arc<AtomicBool>, seed: u64) -> Vec<Sent> {
    let mut rng = Rng(seed);
    let mut repos = repos;
    let mut history: HashMap<(usize, usize), usize> = HashMap::new();
    let mut sent = Vec::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let (r, b) = (rng.below(REPOS), rng.below(BRANCHES.len()));
        let repo = &mut repos[r];
        let branch = BRANCHES[b];
        if repo.branch != branch {
            run(git(&repo.work).args(["checkout", "-q", branch]));
            repo.branch = branch.to_string();
        }
        let git = &*repo;
        let seq = history.entry((r, b)).or_insert(0);
        git.write("n.txt", &format!("{seq}\n"));
        let msg = format!("{branch} push {seq}");
        let sha = git.commit(&msg);
        git.push();
        let body = github_push(&git.name, &git.file_url(), branch, &sha, &msg, "main").to_string();
        let target = {
            let eps = endpoints.lock().unwrap();
            if eps.is_empty() {
                None
            } else {
                Some(eps[rng.below(eps.len())].clone())
            }
        };
        let mut s = Sent { repo: git.name.clone(), branch: branch.into(), sha: sha.clone(), seq: *seq, code: None, id: None };
        *seq += 1;
        if let Some((addr, token)) = target {
            if let Ok(resp) = try_push(addr, &token, body.as_bytes()) {
                s.code = Some(resp.code);
                if (200..300).contains(&resp.code) {
                    s.id = serde_json::from_slice::<Value>(&resp.body).ok().and_then(|v| v["id"].as_str().map(String::from));
                }
            }
        }
        sent.push(s);
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            let ok = sent.iter().filter(|s| s.code.is_some_and(|c| (200..300).contains(&c))).count();
            eprintln!("soak: {:>4}s: {} pushes sent, {ok} answered 2xx", started.elapsed().as_secs(), sent.len());
        }
        std::thread::sleep(rng.millis(60, 300)); // a bounded rate: 3 to 16 pushes a second
    }
    sent
}

/// Every list of queued or in-progress jobs, and every pending pointer.
fn backlog(redis: &Redis) -> Result<Vec<String>, String> {
    let mut busy = vec![];
    for pattern in ["ci:queue:*", "ci:working:*"] {
        let keys = resp_cmd(redis.port, &["KEYS", pattern]).map_err(|e| e.to_string())?.ok()?.list();
        for k in keys {
            let n = resp_cmd(redis.port, &["LLEN", &k]).map_err(|e| e.to_string())?.ok()?.int();
            if n > 0 {
                busy.push(format!("{k}={n}"));
            }
        }
    }
    busy.extend(resp_cmd(redis.port, &["KEYS", "ci:pending:*"]).map_err(|e| e.to_string())?.ok()?.list());
    Ok(busy)
}

fn copy_logs(root: &Path) -> std::path::PathBuf {
    let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".out") || name.ends_with(".err") {
            let _ = std::fs::copy(e.path(), dest.join(&name));
        }
    }
    dest
}

fn main() {
    let mut seconds = 180u64;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--seconds", Some(v)) => seconds = v.parse().expect("--seconds N"),
            ("--seed", Some(v)) => seed = v.parse().expect("--seed N"),
            (other, _) => {
                eprintln!("usage: soak [--seconds N] [--seed N] (unknown argument {other:?})");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    let code = soak(seconds, seed);
    std::process::exit(code);
}

fn soak(seconds: u64, seed: u64) -> i32 {
    eprintln!("soak: {seconds} s, seed {seed}");
    let redis = Redis::start();
    let root = redis.root.clone();
    let hooks: Vec<Hook> = (0..HOOKS).map(|_| Hook::start(&redis, &[])).collect();
    let slaves: Vec<Slave> = (0..SLAVES).map(|_| Slave::start(&redis, &SLAVE_ENV)).collect();
    for h in &hooks {
        h.wait_slaves("slave", SLAVES as u64);
    }
    let mut repos = vec![];
    for r in 0..REPOS {
        let mut git = GitRepo::new(&root, &format!("soak/repo-{r}"));
        git.write("integration.yml", YML);
        git.commit("start");
        git.push();
        git.checkout("dev");
        git.push();
        git.checkout("main");
        repos.push(git);
    }
    eprintln!(
        "soak: redis :{}, hooks {:?}, slaves {:?}, directory {}",
        redis.port,
        hooks.iter().map(|h| h.addr).collect::<Vec<_>>(),
        slaves.iter().map(|s| s.name()).collect::<Vec<_>>(),
        root.display()
    );

    let endpoints: Endpoints = Arc::new(Mutex::new(endpoints_of(&hooks)));
    let stop = Arc::new(AtomicBool::new(false));
    let world = World { redis, hooks, slaves };
    let chaos_thread = {
        let (e, s) = (Arc::clone(&endpoints), Arc::clone(&stop));
        std::thread::spawn(move || chaos(world, e, s, seed))
    };
    let push_thread = {
        let (e, s) = (Arc::clone(&endpoints), Arc::clone(&stop));
        std::thread::spawn(move || pusher(repos, e, s, seed))
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200)); // the run's duration itself
    }
    stop.store(true, Ordering::SeqCst);
    let pushed = push_thread.join();
    let Ok((world, chaos)) = chaos_thread.join() else {
        eprintln!("soak: the chaos thread panicked");
        return 3;
    };
    let Ok(sent) = pushed else {
        eprintln!("soak: the pusher panicked");
        drop(world);
        return 3;
    };
    eprintln!("soak: chaos stopped: {chaos:?}");

    // Quiescence: nothing queued, in progress or pending, and every accepted build finished.
    let accepted: Vec<&Sent> = sent.iter().filter(|s| s.code.is_some_and(|c| (200..300).contains(&c))).collect();
    let ids: BTreeSet<String> = accepted.iter().filter_map(|s| s.id.clone()).collect();
    let start = Instant::now();
    let quiet = loop {
        let state = backlog(&world.redis).and_then(|busy| {
            let unfinished: Vec<&String> = ids
                .iter()
                .filter(|id| {
                    let state = resp_cmd(world.redis.port, &["HGET", &format!("ci:build:{id}"), "state"]).ok().and_then(|r| r.str());
                    !matches!(state.as_deref(), Some("passed" | "failed"))
                })
                .collect();
            if busy.is_empty() && unfinished.is_empty() {
                Ok(())
            } else {
                Err(format!("backlog {busy:?}, unfinished builds {unfinished:?}"))
            }
        });
        match state {
            Ok(()) => break true,
            Err(last) if start.elapsed() > QUIESCENCE => {
                eprintln!("soak: not quiet after {QUIESCENCE:?}: {last}");
                break false;
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("soak: quiet after {:?}: {quiet}", start.elapsed());

    // Every build record, by branch.
    let redis = &world.redis;
    let mut records: HashMap<String, HashMap<String, String>> = HashMap::new();
    for key in redis.keys("ci:build:*") {
        let id = key.trim_start_matches("ci:build:").to_string();
        records.insert(id, redis.hgetall(&key));
    }
    // Commit order per branch, from what was sent (each branch is pushed by one thread, in order).
    let mut order: HashMap<(String, String), HashMap<String, usize>> = HashMap::new();
    for s in &sent {
        order.entry((s.repo.clone(), s.branch.clone())).or_default().insert(s.sha.clone(), s.seq);
    }
    let seq_of = |repo: &str, branch: &str, sha: &str| order.get(&(repo.to_string(), branch.to_string())).and_then(|m| m.get(sha)).copied();

    let mut lost = vec![];
    // Per branch: the stored result's build id and its commit's position.
    type Stored = Option<(String, Option<usize>)>;
    let mut done_of: BTreeMap<(String, String), Stored> = BTreeMap::new();
    for s in &accepted {
        let key = (s.repo.clone(), s.branch.clone());
        let done = done_of
            .entry(key)
            .or_insert_with(|| {
                let id = redis.get(&format!("ci:done:{}:{}", s.repo, s.branch))?;
                let sha = records.get(&id).and_then(|r| r.get("sha")).cloned().unwrap_or_default();
                Some((id, seq_of(&s.repo, &s.branch, &sha)))
            })
            .clone();
        match done {
            Some((_, Some(done_seq))) if done_seq >= s.seq => {}
            other => {
                lost.push(format!("{} {} {} (id {:?}, push {}): stored result {:?}", s.repo, s.branch, &s.sha[..10], s.id, s.seq, other))
            }
        }
    }
    // No stale overwrite: per branch, the stored result is the newest finished build and the
    // newest commit the hooks accepted.
    let mut stale = vec![];
    let mut newest_accepted: HashMap<(String, String), usize> = HashMap::new();
    for s in &accepted {
        let e = newest_accepted.entry((s.repo.clone(), s.branch.clone())).or_insert(0);
        *e = (*e).max(s.seq);
    }
    for ((repo, branch), done) in &done_of {
        let finished_max = records
            .values()
            .filter(|r| r.get("repo") == Some(repo) && r.get("branch") == Some(branch))
            .filter(|r| matches!(r.get("state").map(String::as_str), Some("passed" | "failed")))
            .filter_map(|r| seq_of(repo, branch, r.get("sha")?))
            .max();
        let done_seq = done.as_ref().and_then(|(_, s)| *s);
        let newest = newest_accepted.get(&(repo.clone(), branch.clone())).copied();
        if done_seq < finished_max || done_seq < newest {
            stale.push(format!("{repo} {branch}: stored result is push {done_seq:?}, a finished build has push {finished_max:?}, newest accepted push {newest:?}"));
        }
    }

    // Builds from the slaves' logs (every instance's file, replaced ones included).
    let mut starts: HashMap<String, usize> = HashMap::new();
    let mut superseded = 0;
    for e in std::fs::read_dir(&root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("slave-") && name.ends_with(".out") {
            let text = String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned();
            for line in events(&text, "build.started") {
                if let Some(id) = kv(line, "id") {
                    *starts.entry(id).or_insert(0) += 1;
                }
            }
            superseded += events(&text, "build.superseded").len();
        }
    }
    let finished = records.values().filter(|r| matches!(r.get("state").map(String::as_str), Some("passed" | "failed"))).count();
    let failed = records.values().filter(|r| r.get("state").map(String::as_str) == Some("failed")).count();
    let twice = starts.values().filter(|n| **n > 1).count();
    let count = |f: &dyn Fn(Option<u16>) -> bool| sent.iter().filter(|s| f(s.code)).count();

    let logs = copy_logs(&root);
    for l in lost.iter().take(20) {
        eprintln!("soak: LOST {l}");
    }
    for l in stale.iter().take(20) {
        eprintln!("soak: STALE {l}");
    }
    println!("pushes sent {}", sent.len());
    println!("answered 2xx {}", count(&|c| c.is_some_and(|c| (200..300).contains(&c))));
    println!("answered 5xx {}", count(&|c| c.is_some_and(|c| c >= 500)));
    println!("builds started {}", starts.len());
    println!("builds finished {finished}");
    println!("builds run twice {twice}");
    println!("builds lost {}", lost.len());
    println!("answered 4xx {}", count(&|c| c.is_some_and(|c| (400..500).contains(&c))));
    println!("no answer {}", count(&|c| c.is_none()));
    println!("builds failed {failed}");
    println!("results refused as superseded {superseded}");
    println!("stale overwrites {}", stale.len());
    println!(
        "chaos redis kills {}, slave kills {} ({} mid-build), hook kills {}, slave pauses {} ({} mid-build), chaos errors {}",
        chaos.redis_kills,
        chaos.slave_kills,
        chaos.killed_mid_build,
        chaos.hook_kills,
        chaos.pauses,
        chaos.paused_mid_build,
        chaos.errors.len()
    );
    println!("quiescent {quiet}; logs in {}", logs.display());
    drop(world);
    if lost.is_empty() && stale.is_empty() {
        0
    } else {
        1
    }
}
