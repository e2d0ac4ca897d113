//! A test per defect of issue 9 on the slave's side (membership after a full restart, poison
//! jobs, Redis refusing a result, orphaned builds), each named after its point.

use crate::harness::*;
use std::time::Duration;

/// The index each live slave holds per `ci:holders:slave`, sorted.
fn held_indexes(redis: &Redis) -> Vec<u32> {
    let mut held: Vec<u32> = redis.hgetall("ci:holders:slave").keys().map(|k| k.parse().unwrap()).collect();
    held.sort();
    held
}

#[test]
fn issue9_1_slaves_come_back_after_a_full_restart() {
    let lease = [("SLAVE_LEASE", "1")];
    let mut b = Backend::start(3, &[], &lease);
    let dead: Vec<String> = b.redis.hgetall("ci:holders:slave").into_values().collect();
    for s in &mut b.slaves {
        s.kill9();
    }
    // Two leases later the hook counts nobody, while the dead holders are still recorded: the
    // state a node reboot or a stopped `make run` leaves behind.
    b.hook.wait_slaves("slave", 0);
    let holders = b.redis.hgetall("ci:holders:slave");
    assert_eq!(holders.len(), 3, "the dead holders are still recorded: {holders:?}");
    assert!(holders.values().all(|v| dead.contains(v)));

    // Slave::start waits for `slave.ready`: before the fix the first one waited forever.
    b.slaves = (0..3).map(|_| Slave::start(&b.redis, &lease)).collect();
    let mut indexes: Vec<u32> = b.slaves.iter().map(|s| s.index).collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1, 2]);
    b.hook.wait_slaves("slave", 3);
    assert_eq!(held_indexes(&b.redis), vec![0, 1, 2]);
    let (_, _, build) = b.build("acme/after-restart", &[("integration.yml", "step: s\nshell: \"true\"\n")], "after a full restart");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
}

#[test]
fn issue9_2_a_build_that_kills_its_slave_is_given_up_after_max_attempts() {
    let env = [("SLAVE_LEASE", "1"), ("SLAVE_MAX_ATTEMPTS", "3")];
    let mut b = Backend::start(1, &[], &env);
    let git = b.repo("acme/poison");
    git.write("integration.yml", "step: poison\nshell: kill -9 $PPID\n");
    let sha = git.commit("kills its slave");
    git.push();
    let id = b.hook.push_ok(&git, &sha);

    // A supervisor, as Marathon or Swarm would be: every time the slave dies, start another.
    let mut deaths = 0;
    let build = wait_for("the poison build to be given up", LONG, || {
        if let Some(build) = read_build(&b.redis, &id).filter(|r| r.state == "failed") {
            return Ok(build);
        }
        if b.slaves[0].proc.exited().is_some() {
            deaths += 1;
            assert!(deaths <= 3, "the slave died {deaths} times: the build was not given up");
            b.slaves[0] = Slave::start(&b.redis, &env);
        }
        Err(format!("{deaths} deaths so far"))
    });
    assert_eq!(deaths, 3, "three attempts, each killing its slave");
    assert_eq!(build.log, vec!["* gave up after 3 attempts: the slave died during each"]);
    assert_eq!(build.fields.get("died").map(String::as_str), Some("3"));
    assert!(b.redis.lrange("ci:working:slave:0").is_empty());
    let gave_up = events(&b.slaves[0].log(), "build.gave_up").len();
    assert_eq!(gave_up, 1, "{}", b.slaves[0].log());

    // The index goes on: the next build of another repository on it passes.
    let (_, _, next) = b.build("acme/healthy", &[("integration.yml", "step: s\nshell: \"true\"\n")], "after the poison");
    assert_eq!((next.state.as_str(), next.slave.as_str()), ("passed", "slave-0"));
}

#[test]
fn issue9_2_a_graceful_stop_is_not_counted_as_a_death() {
    let env = [("SLAVE_LEASE", "1"), ("SLAVE_MAX_ATTEMPTS", "1"), ("SLAVE_GRACE", "1")];
    let mut b = Backend::start(1, &[], &env);
    let blocker = Blocker::new(b.root(), "graceful");
    let git = b.repo("acme/graceful");
    git.write("integration.yml", &blocker.yml());
    let sha = git.commit("outlives the grace");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    blocker.wait_started();
    b.slaves[0].term();
    b.slaves[0].proc.wait_exit(DEADLINE);
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "queued", "an abandoned attempt goes back to queued");
    blocker.release();
    b.slaves[0] = Slave::start(&b.redis, &env);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "with SLAVE_MAX_ATTEMPTS=1 a stop past the grace must not count: {:#?}", build.log);
}

#[test]
fn issue9_6_a_result_redis_refuses_is_stored_as_failed_with_the_reason() {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), "oom");
    // Four snippets of ~200 KB of debug output each: a record of ~850 KB.
    let print = "for i in $(seq 1 2500); do printf '%080d\\n' $i; done";
    let yml = format!(
        "step: big\ndebug: true\nshell:\n  - |\n{}  - \"{print}\"\n  - \"{print}\"\n  - \"{print}\"\n  - \"{print}\"\n",
        indent(&blocker.snippet(), 4)
    );
    let git = b.repo("acme/oom");
    git.write("integration.yml", &yml);
    let sha = git.commit("a result too big for the memory left");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    blocker.wait_started();
    // Leave Redis 300 KB: the full record is refused with OOM, a short one fits.
    let info = b.redis.cli(&["INFO", "memory"]).str().unwrap();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    b.redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    b.redis.cli(&["CONFIG", "SET", "maxmemory", &(used + 300_000).to_string()]);
    blocker.release();
    let build = wait_build(&b.redis, &id, LONG);
    b.redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    assert_eq!(build.state, "failed", "{:#?}", &build.log[build.log.len().saturating_sub(3)..]);
    let last = build.log.last().unwrap();
    assert!(last.starts_with("* the result could not be stored (redis refused it: OOM"), "{last}");
    assert!(build.log.len() <= 22, "only the head of the log is kept: {} lines", build.log.len());
    let log = b.slaves[0].log();
    assert_eq!(events(&log, "build.unstorable").len(), 1, "{log}");
    assert!(events(&log, "redis.unreachable").is_empty(), "an OOM is not a lost connection: {log}");
    assert!(b.redis.lrange("ci:working:slave:0").is_empty());
    // The slave goes on.
    let (_, _, next) = b.build("acme/after-oom", &[("integration.yml", "step: s\nshell: \"true\"\n")], "next");
    assert_eq!(next.state, "passed");
}

#[test]
fn issue9_a_killed_slave_leaves_no_build_running() {
    let mut b = Backend::start(1, &[], &[]);
    let pids = b.root().join("orphan.pids");
    let yml = format!("step: long\nshell: |\n  sleep 300 &\n  echo $! >> '{0}'\n  echo $$ >> '{0}'\n  wait\n", pids.display());
    let git = b.repo("acme/orphan");
    git.write("integration.yml", &yml);
    let sha = git.commit("runs for a long time");
    git.push();
    b.hook.push_ok(&git, &sha);
    let running: Vec<u32> = wait_for("the build's two processes", LONG, || {
        let text = std::fs::read_to_string(&pids).unwrap_or_default();
        let found: Vec<u32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if found.len() == 2 {
            Ok(found)
        } else {
            Err(text)
        }
    });
    assert!(running.iter().all(|p| !process_gone(*p)));
    b.slaves[0].kill9();
    wait_for("the killed slave's build processes to be gone", Duration::from_secs(10), || {
        let alive: Vec<&u32> = running.iter().filter(|p| !process_gone(**p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still running: {alive:?}"))
        }
    });
}
