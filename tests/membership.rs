//! Membership: indexes claimed automatically, a replacement takes the freed index, the hook's N
//! stays put; clusters are counted apart; jobs of an index that no longer exists are re-routed.

use crate::harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Records every value of `ci_slaves{cluster="slave"}` the hook reports, every ~20 ms.
struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Option<u64>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(addr: std::net::SocketAddr) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let n = try_http(addr, "GET", "/metrics", &[], b"").ok().and_then(|r| {
                    r.text()
                        .lines()
                        .find_map(|l| l.strip_prefix("ci_slaves{cluster=\"slave\"} ").and_then(|x| x.trim().parse::<f64>().ok()))
                        .map(|x| x as u64)
                });
                v.lock().unwrap().push(n);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Sampler { stop, seen, thread: Some(thread) }
    }

    fn finish(mut self) -> Vec<Option<u64>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn a_replacement_takes_the_freed_index_and_n_stays_three() {
    let mut b = Backend::start(3, &[], &[]);
    let mut indexes: Vec<u32> = b.slaves.iter().map(|s| s.index).collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2], "three slaves with no SLAVE_INDEX");
    let holders = b.redis.hgetall("ci:holders:slave");
    assert_eq!(holders.len(), 3, "ci:holders:slave = {holders:?}");

    let sampler = Sampler::start(b.hook.addr);
    let victim = b.slaves.iter().position(|s| s.index == 1).unwrap();
    b.slaves[victim].kill9();
    let replacement = Slave::start(&b.redis, &[]);
    assert_eq!(replacement.index, 1, "the replacement must take the freed index 1");
    b.slaves[victim] = replacement;

    // A repository of index 1 is built by the replacement.
    let name = name_for("members", 3, 1, 0);
    let git = b.repo(&name);
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("after replacement");
    git.push();
    let r = b.hook.push(&git, &sha);
    assert_eq!(r.code, 202, "{r}");
    assert_eq!(r.json()["slave"], json!("slave-1"), "{r}");
    let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!((build.slave.as_str(), build.state.as_str()), ("slave-1", "passed"));
    assert_eq!(b.slaves[victim].started(&build.id), 1, "the replacement process ran it");
    // Past two more lease periods, N is still 3.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    wait_for("5 seconds of samples", std::time::Duration::from_secs(10), || {
        if std::time::Instant::now() >= until {
            Ok(())
        } else {
            Err("sampling".into())
        }
    });
    let seen = sampler.finish();
    assert!(seen.len() > 20, "too few samples: {seen:?}");
    let mut distinct: Vec<Option<u64>> = seen.clone();
    distinct.dedup();
    assert!(seen.iter().all(|v| *v == Some(3)), "the hook's N must stay 3; it went through {distinct:?}");
}

#[test]
fn clusters_are_counted_apart() {
    let redis = Redis::start();
    let hook = Hook::start(&redis, &[]);
    let a = Slave::start(&redis, &[]);
    let g = Slave::start(&redis, &[("SLAVE_CLUSTER", "slave-gpu")]);
    let c = Slave::start(&redis, &[]);
    assert_eq!((a.index, c.index), (0, 1));
    assert_eq!((g.cluster.as_str(), g.index), ("slave-gpu", 0));
    hook.wait_slaves("slave", 2);
    hook.wait_slaves("slave-gpu", 1);
    let mut clusters = redis.cli(&["SMEMBERS", "ci:clusters"]).list();
    clusters.sort();
    assert_eq!(clusters, vec!["slave".to_string(), "slave-gpu".to_string()]);
    let fixed = Slave::start(&redis, &[("SLAVE_INDEX", "2")]);
    assert_eq!(fixed.index, 2, "SLAVE_INDEX is honoured");
}

#[test]
fn after_a_scale_down_queued_jobs_are_rerouted_not_stranded() {
    let mut b = Backend::start(2, &[], &[]);
    let blocker = Blocker::new(b.root(), "scale");
    let x = name_for("scale", 2, 1, 0);
    let y = name_for("scale", 2, 1, 1);
    let gx = b.repo(&x);
    gx.write("integration.yml", &blocker.yml());
    let sx = gx.commit("blocker");
    gx.push();
    let rx = b.hook.push(&gx, &sx);
    assert_eq!((rx.code, rx.json()["slave"].clone()), (202, json!("slave-1")), "{rx}");
    let id_x = rx.json()["id"].as_str().unwrap().to_string();
    blocker.wait_started();

    let gy = b.repo(&y);
    gy.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sy = gy.commit("queued behind the blocker");
    gy.push();
    let ry = b.hook.push(&gy, &sy);
    assert_eq!((ry.code, ry.json()["slave"].clone()), (202, json!("slave-1")), "{ry}");
    let id_y = ry.json()["id"].as_str().unwrap().to_string();
    assert!(b.redis.lrange("ci:queue:slave:1").contains(&id_y), "job {id_y} should wait in ci:queue:slave:1");

    // Scale down: slave-1 goes away for good.
    let one = b.slaves.iter().position(|s| s.index == 1).unwrap();
    b.slaves[one].kill9();
    b.hook.wait_slaves("slave", 1);
    // Both jobs of index 1 (in progress and queued) move to slave-0, in either order: let the
    // blocker pass from now on.
    blocker.release();
    let by = wait_build(&b.redis, &id_y, LONG);
    assert_eq!((by.slave.as_str(), by.state.as_str()), ("slave-0", "passed"), "the queued job of index 1 must be re-routed");
    // The job that was in progress on the vanished index is not lost either.
    let bx = wait_build(&b.redis, &id_x, LONG);
    assert_eq!((bx.slave.as_str(), bx.state.as_str()), ("slave-0", "passed"), "the in-progress job of index 1 must run again");
}
