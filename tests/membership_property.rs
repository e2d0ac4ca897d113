//! Membership as a property: seeded random schedules of kill -9, SIGSTOP/SIGCONT,
//! restarts of one to all slaves (all at once included), scale-ups, graceful stops and Redis
//! restarts from its AOF, with `SLAVE_LEASE=1`, pushes flowing all along. Checked all the time:
//! an instance holds at most one index; the hook's N never exceeds the slaves that were alive in
//! the last two leases; no build runs twice at the same time (an flock per build id, taken by
//! the step itself, which runs 0 to 1.9 s: long enough to overlap a pause or a kill). Checked after every event, within 3 leases (+ slack for a loaded machine):
//! the live slaves hold exactly 0..N-1 (or their fixed indexes) and the hook's N equals them;
//! no job waits on an index nobody holds. At the end every push answered 2xx is built.
//!
//! The sleeps below are the schedule (how long a pause lasts, when the next event comes, the
//! push rate), never a wait for something to happen: those poll to a deadline.
//!
//! `make test` runs a few seeds; `make soak` runs `MEMBERSHIP_SCHEDULES` more (ignored test).

use crate::harness::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(1);
/// Three leases (README, membership: indexes are 0..N-1 again within three leases), plus slack
/// for slave start-up on a loaded 2-core machine.
const CONVERGE: Duration = Duration::from_secs(3 + 4);

struct Cluster {
    redis: Redis,
    hook: Hook,
    /// Running slave processes (paused ones included) and their fixed index, if any.
    slaves: Vec<(Slave, Option<u32>)>,
    /// (when, how many slave processes were alive) at every change.
    alive: Arc<Mutex<Vec<(Instant, usize)>>>,
    fixed: bool,
    /// SLAVE_EXECUTORS and SLAVE_STEAL_AFTER of this schedule's slaves (executors and stealing).
    executors: usize,
    steal: &'static str,
}

impl Cluster {
    fn env(&self, index: Option<u32>) -> Vec<(String, String)> {
        let mut env = vec![
            ("SLAVE_LEASE".to_string(), "1".to_string()),
            ("SLAVE_MAX_ATTEMPTS".to_string(), "100".to_string()),
            ("SLAVE_EXECUTORS".to_string(), self.executors.to_string()),
            ("SLAVE_STEAL_AFTER".to_string(), self.steal.to_string()),
        ];
        if let Some(i) = index {
            env.push(("SLAVE_INDEX".to_string(), i.to_string()));
        }
        env
    }

    fn note_alive(&self) {
        self.alive.lock().unwrap().push((Instant::now(), self.slaves.len()));
    }

    fn start_slave(&mut self, index: Option<u32>) {
        let env = self.env(index);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        // Counted from before its start: it holds an index before it says it is ready.
        self.alive.lock().unwrap().push((Instant::now(), self.slaves.len() + 1));
        self.slaves.push((Slave::start(&self.redis, &env), index));
    }

    fn kill(&mut self, at: usize) -> Option<u32> {
        let (mut s, fixed) = self.slaves.remove(at);
        s.kill9();
        self.note_alive();
        fixed
    }

    /// The fixed indexes no running slave holds (fixed mode restarts them).
    fn missing_fixed(&self, n: u32) -> Vec<u32> {
        (0..n).filter(|i| !self.slaves.iter().any(|(_, f)| *f == Some(*i))).collect()
    }
}

/// Indexes with a live lease, by instance, read from Redis (`Err` while Redis cannot answer,
/// e.g. `LOADING` just after a restart).
fn holders(redis: &Redis) -> Result<HashMap<u32, String>, String> {
    let ask = |args: &[&str]| match resp_cmd(redis.port, args) {
        Ok(Resp::Array(Some(items))) => Ok(items.iter().map(|i| i.str().unwrap_or_default()).collect::<Vec<String>>()),
        other => Err(format!("{args:?}: {other:?}")),
    };
    let time = ask(&["TIME"])?;
    let now: u64 = time[0].parse::<u64>().unwrap() * 1000 + time[1].parse::<u64>().unwrap() / 1000;
    let items = ask(&["HGETALL", "ci:holders:slave"])?;
    Ok(items
        .chunks(2)
        .filter_map(|kv| {
            let (who, exp) = kv[1].split_once(' ')?;
            (exp.parse::<u64>().ok()? >= now).then(|| (kv[0].parse().unwrap(), who.to_string()))
        })
        .collect())
}

/// What must hold once the cluster settled; `Err` says what does not (yet).
fn settled(c: &Cluster) -> Result<(), String> {
    let want: BTreeSet<u32> =
        if c.fixed { c.slaves.iter().filter_map(|(_, f)| *f).collect() } else { (0..c.slaves.len() as u32).collect() };
    let held: BTreeSet<u32> = holders(&c.redis)?.into_keys().collect();
    if held != want {
        return Err(format!("held indexes {held:?}, want {want:?}"));
    }
    let n = c.hook.slaves("slave");
    if n != Some(want.len() as u64) {
        return Err(format!("the hook counts {n:?} slaves, want {}", want.len()));
    }
    let top = held.iter().max().copied().unwrap_or(0) + 8;
    for i in (0..top).filter(|i| !held.contains(i)) {
        let key = format!("ci:queue:slave:{i}");
        match resp_cmd(c.redis.port, &["LLEN", &key]) {
            Ok(Resp::Int(0)) => {}
            Ok(Resp::Int(n)) => return Err(format!("{key} holds {n} jobs but nobody holds index {i}")),
            other => return Err(format!("LLEN {key}: {other:?}")),
        }
    }
    Ok(())
}

/// Samples the invariants that must hold at every moment.
fn spawn_checker(
    port: u16,
    addr: std::net::SocketAddr,
    alive: Arc<Mutex<Vec<(Instant, usize)>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let mut violations = Vec::new();
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            let Ok(Resp::Array(Some(items))) = resp_cmd(port, &["HGETALL", "ci:holders:slave"]) else { continue };
            samples += 1;
            let mut by_instance: HashMap<String, Vec<String>> = HashMap::new();
            for kv in items.chunks(2) {
                let (i, v) = (kv[0].str().unwrap_or_default(), kv[1].str().unwrap_or_default());
                by_instance.entry(v.split(' ').next().unwrap_or("").to_string()).or_default().push(i);
            }
            for (who, idx) in by_instance.iter().filter(|(_, idx)| idx.len() > 1) {
                violations.push(format!("instance {who} holds indexes {idx:?}"));
            }
            let Some(n) = try_http(addr, "GET", "/metrics", &[], b"").ok().and_then(|r| {
                r.text().lines().find_map(|l| l.strip_prefix("ci_slaves{cluster=\"slave\"} ").and_then(|x| x.trim().parse::<u64>().ok()))
            }) else {
                continue;
            };
            // A dead slave counts for two leases: the bound is the most alive in that window.
            let window = 2 * LEASE + Duration::from_millis(500);
            let log = alive.lock().unwrap();
            let now = Instant::now();
            let mut bound = log.iter().rev().find(|(t, _)| now.duration_since(*t) >= window).map_or(0, |(_, a)| *a);
            for (t, a) in log.iter().filter(|(t, _)| now.duration_since(*t) < window) {
                let _ = t;
                bound = bound.max(*a);
            }
            if n > bound as u64 {
                violations.push(format!("the hook counted {n} slaves, at most {bound} were alive"));
            }
        }
        (violations, samples)
    })
}

/// Pushes the repositories round robin until stopped; returns the ids answered 2xx.
fn spawn_pusher(
    addr: std::net::SocketAddr,
    token: String,
    repos: Vec<(String, String, String)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<BTreeSet<String>> {
    std::thread::spawn(move || {
        let mut ids = BTreeSet::new();
        let mut k = 0;
        while !stop.load(Ordering::SeqCst) {
            let (name, url, sha) = &repos[k % repos.len()];
            k += 1;
            let body = github_push(name, url, "main", sha, "membership", "main").to_string();
            let sig = sign_sha256(body.as_bytes(), &token);
            let headers = [("X-GitHub-Event", "push"), ("Content-Type", "application/json"), ("X-Hub-Signature-256", sig.as_str())];
            if let Ok(r) = try_http(addr, "POST", "/", &headers, body.as_bytes()) {
                if r.code == 202 {
                    ids.insert(r.json()["id"].as_str().unwrap().to_string());
                }
            }
            // The push rate, not a synchronisation.
            std::thread::sleep(Duration::from_millis(100));
        }
        ids
    })
}

/// One seeded schedule; returns (events, invariant samples, longest settle time).
fn schedule(seed: u64) -> (usize, usize, Duration) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let fixed = rng.chance(3);
    let k = 2 + rng.below(4); // 2..=5 slaves
    let executors = 1 + rng.below(3);
    let steal = if rng.chance(2) { "0.5" } else { "0" };
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[]);
    let root = redis.root.clone();
    let locks = root.join("locks");
    std::fs::create_dir_all(&locks).unwrap();
    // Steps run as the build user (`nobody` under root): the lock directory is everybody's.
    std::fs::set_permissions(&locks, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let twice = root.join("built-twice-at-once");
    let yml = format!(
        "step: once at a time\nshell: |\n  exec 9>>'{}/'\"$BUILD_ID\"\n  flock -n 9 || {{ echo \"$BUILD_ID\" >> '{}'; exit 1; }}\n  sleep $((RANDOM % 2)).$((RANDOM % 10))\n",
        locks.display(),
        twice.display()
    );
    let mut repos = Vec::new();
    for r in 0..6 {
        let git = GitRepo::new(&root, &format!("prop/repo-{r}"));
        git.write("integration.yml", &yml);
        let sha = git.commit("membership property");
        git.push();
        repos.push((git.name.clone(), git.file_url(), sha));
    }
    let alive = Arc::new(Mutex::new(Vec::new()));
    let mut c = Cluster { redis, hook, slaves: Vec::new(), alive: Arc::clone(&alive), fixed, executors, steal };
    for i in 0..k {
        c.start_slave(fixed.then_some(i as u32));
    }
    wait_for("the first settle", CONVERGE, || settled(&c));

    let stop = Arc::new(AtomicBool::new(false));
    let checker = spawn_checker(c.redis.port, c.hook.addr, Arc::clone(&alive), Arc::clone(&stop));
    let pusher = spawn_pusher(c.hook.addr, c.hook.token.clone(), repos, Arc::clone(&stop));
    let events = 5 + rng.below(4);
    let mut longest = Duration::ZERO;
    let mut story = Vec::new();
    for _ in 0..events {
        let event = rng.below(6);
        match event {
            // kill -9 one or more slaves; restart some of them after a random pause
            0 => {
                let n = 1 + rng.below(c.slaves.len());
                let mut gone = Vec::new();
                for _ in 0..n {
                    let at = rng.below(c.slaves.len());
                    gone.push(c.kill(at));
                }
                std::thread::sleep(rng.millis(0, 3000));
                let back = if fixed || c.slaves.is_empty() { gone.len() } else { rng.below(gone.len() + 1) };
                for f in gone.into_iter().take(back) {
                    c.start_slave(f);
                }
                story.push(format!("kill {n}, restart {back}"));
            }
            // pause one slave past its lease (or not), then let it go on
            1 => {
                let at = rng.below(c.slaves.len());
                let pause = rng.millis(200, 3000);
                c.slaves[at].0.proc.signal("STOP");
                std::thread::sleep(pause);
                c.slaves[at].0.proc.signal("CONT");
                story.push(format!("pause {:?}", pause));
            }
            // every slave at once, back after 0..3 leases
            2 => {
                let fixed_of: Vec<Option<u32>> = c.slaves.iter().map(|(_, f)| *f).collect();
                while !c.slaves.is_empty() {
                    c.kill(0);
                }
                std::thread::sleep(rng.millis(0, 3000));
                for f in fixed_of {
                    c.start_slave(f);
                }
                story.push("full restart".to_string());
            }
            // Redis stopped and started again from its AOF
            3 => {
                c.redis.stop();
                std::thread::sleep(rng.millis(0, 2500));
                c.redis.restart();
                story.push("redis restart".to_string());
            }
            // scale up by one
            4 if c.slaves.len() < 5 => {
                let f = fixed.then(|| c.missing_fixed(8).into_iter().next().unwrap());
                c.start_slave(f);
                story.push("scale up".to_string());
            }
            // a graceful stop (scale down; fixed mode starts it again)
            _ if c.slaves.len() > 1 => {
                let at = rng.below(c.slaves.len());
                let (mut s, f) = c.slaves.remove(at);
                s.term();
                s.proc.wait_exit(DEADLINE);
                c.note_alive();
                if fixed {
                    c.start_slave(f);
                }
                story.push("graceful stop".to_string());
            }
            _ => story.push("nothing".to_string()),
        }
        if fixed {
            let top = c.slaves.iter().filter_map(|(_, f)| *f).max().unwrap_or(0) + 1;
            for i in c.missing_fixed(top) {
                c.start_slave(Some(i));
            }
        }
        if c.slaves.is_empty() {
            c.start_slave(None);
        }
        let from = Instant::now();
        wait_for(&format!("seed {seed}: settle after {story:?}"), CONVERGE, || settled(&c));
        longest = longest.max(from.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    let ids = pusher.join().unwrap();
    let (violations, samples) = checker.join().unwrap();
    assert!(violations.is_empty(), "seed {seed} ({story:?}): {violations:#?}");
    assert!(!ids.is_empty(), "seed {seed}: no push was accepted");
    for id in &ids {
        let b = wait_build(&c.redis, id, LONG);
        assert_eq!(b.state, "passed", "seed {seed} ({story:?}): build {id}: {:#?}", b.log);
    }
    assert!(!twice.exists(), "seed {seed} ({story:?}): built twice at the same time: {}", std::fs::read_to_string(&twice).unwrap());
    eprintln!(
        "membership seed {seed}: {k} slaves, fixed={fixed}, executors={executors} steal_after={steal}, {events} events {story:?}, {} builds, {samples} samples, longest settle {longest:?}",
        ids.len()
    );
    (events, samples, longest)
}

#[test]
fn membership_holds_over_seeded_schedules_a() {
    schedule(1);
}

#[test]
fn membership_holds_over_seeded_schedules_b() {
    schedule(2);
}

#[test]
fn membership_holds_over_seeded_schedules_c() {
    schedule(3);
}

/// `make soak`: MEMBERSHIP_SCHEDULES (default 20) more seeds, from MEMBERSHIP_SEED (default 100).
#[test]
#[ignore]
fn membership_holds_over_many_seeded_schedules() {
    let count: u64 = std::env::var("MEMBERSHIP_SCHEDULES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let first: u64 = std::env::var("MEMBERSHIP_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut longest = Duration::ZERO;
    for seed in first..first + count {
        longest = longest.max(schedule(seed).2);
    }
    eprintln!("membership: {count} schedules passed, longest settle {longest:?}");
}
