//! A test per defect found on the slave's side: membership after a full restart, poison jobs,
//! Redis refusing a result, orphaned builds, a retried result counted twice. Each test is
//! named for the defect it holds.

use crate::harness::*;
use std::time::Duration;

/// The index each live slave holds per `ci:holders:slave`, sorted.
fn held_indexes(redis: &Redis) -> Vec<u32> {
    let mut held: Vec<u32> = redis.hgetall("ci:holders:slave").keys().map(|k| k.parse().unwrap()).collect();
    held.sort();
    held
}

#[test]
fn slaves_come_back_after_a_full_restart() {
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
fn a_build_that_kills_its_slave_is_given_up_after_max_attempts() {
    let env = [("SLAVE_LEASE", "1"), ("SLAVE_MAX_ATTEMPTS", "3")];
    let mut b = Backend::start(1, &[], &env);
    // Steps run as an unprivileged user and cannot `kill -9 $PPID` a root slave; what kills the
    // slave here is the test, the moment the build runs — as the OOM killer would.
    let runs = b.root().join("poison.runs");
    let (_, id) =
        b.queue("acme/poison", &format!("step: poison\nshell: |\n  echo run >> '{}'\n  sleep 60\n", runs.display()), "kills its slave");

    // A supervisor, as Marathon or Swarm would be: every time the slave dies, start another.
    let mut deaths = 0;
    let build = wait_for("the poison build to be given up", LONG, || {
        if let Some(build) = read_build(&b.redis, &id).filter(|r| r.state == "failed") {
            return Ok(build);
        }
        let started = std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
        if started > deaths {
            assert!(deaths < 3, "the build ran {started} times: it was not given up");
            b.slaves[0].kill9();
            deaths += 1;
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
fn a_graceful_stop_is_not_counted_as_a_death() {
    let env = [("SLAVE_LEASE", "1"), ("SLAVE_MAX_ATTEMPTS", "1"), ("SLAVE_GRACE", "1")];
    let mut b = Backend::start(1, &[], &env);
    let blocker = Blocker::new(b.root(), "graceful");
    let (_, id) = b.queue("acme/graceful", &blocker.yml(), "outlives the grace");
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
fn a_result_redis_refuses_is_stored_as_failed_with_the_reason() {
    let b = Backend::start(1, &[], &[]);
    let blocker = Blocker::new(b.root(), "oom");
    // Four snippets of ~200 KB of debug output each: a record of ~850 KB.
    let print = "for i in $(seq 1 2500); do printf '%080d\\n' $i; done";
    let yml = format!(
        "step: big\ndebug: true\nshell:\n  - |\n{}  - \"{print}\"\n  - \"{print}\"\n  - \"{print}\"\n  - \"{print}\"\n",
        indent(&blocker.snippet(), 4)
    );
    let (_, id) = b.queue("acme/oom", &yml, "a result too big for the memory left");
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
fn a_killed_slave_leaves_no_build_running() {
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

#[test]
fn a_paused_slave_never_builds_alongside_the_one_that_took_its_job_over() {
    let lease = [("SLAVE_LEASE", "1")];
    let b = Backend::start(2, &[], &lease);
    let paused = b.slaves.iter().position(|s| s.index == 1).unwrap();
    let runs = b.root().join("runs");
    let twice = b.root().join("built-twice-at-once");
    // Each run appends a line, then holds an flock on the build for 6 seconds.
    let yml = format!(
        "step: long\nshell: |\n  echo run >> '{}'\n  exec 9>>'{}.lock'\n  flock -n 9 || {{ echo twice >> '{}'; exit 1; }}\n  sleep 6\n",
        runs.display(),
        runs.display(),
        twice.display()
    );
    let (_, id) = b.queue(&name_for("paused", 2, 1, 0), &yml, "outlives two leases");
    let count_runs = || std::fs::read_to_string(&runs).unwrap_or_default().lines().count();
    wait_for("the first run", LONG, || if count_runs() == 1 { Ok(()) } else { Err(format!("{} runs", count_runs())) });

    // Only the slave process stops: its build would go on, as in a hung slave.
    b.slaves[paused].proc.signal("STOP");
    wait_for("the job to be taken over by the other slave", LONG, || {
        if count_runs() >= 2 {
            Ok(())
        } else {
            Err(format!("{:?}", read_build(&b.redis, &id).map(|r| (r.state, r.slave))))
        }
    });
    b.slaves[paused].proc.signal("CONT");
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert!(!twice.exists(), "the paused slave's build ran alongside its successor's");
    wait_for("the paused slave to notice", DEADLINE, || {
        let log = b.slaves[paused].log();
        if events(&log, "build.abandoned").len() == 1 {
            Ok(())
        } else {
            Err(tail_lines(&log, 5))
        }
    });
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn jobs_of_a_vanished_index_are_rerouted_while_every_slave_is_busy() {
    let lease = [("SLAVE_LEASE", "1")];
    let mut b = Backend::start(3, &[], &lease);
    let mut blockers = Vec::new();
    let mut ids = Vec::new();
    // One running build on each of the three slaves.
    for index in 0..3 {
        let blocker = Blocker::new(b.root(), &format!("busy-{index}"));
        let git = b.repo(&name_for(&format!("busy{index}"), 3, index, 0));
        git.write("integration.yml", &blocker.yml());
        let sha = git.commit("busy");
        git.push();
        ids.push(b.hook.push_ok(&git, &sha));
        blocker.wait_started();
        blockers.push(blocker);
    }
    // And one queued behind the build on index 2.
    let queued = b.repo(&name_for("queued", 3, 2, 0));
    queued.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = queued.commit("queued on index 2");
    queued.push();
    let queued_id = b.hook.push_ok(&queued, &sha);
    assert_eq!(b.redis.lrange("ci:queue:slave:2"), vec![queued_id.clone()]);

    let victim = b.slaves.iter().position(|s| s.index == 2).unwrap();
    b.slaves[victim].kill9();
    // Index 2 vanishes (N = 2): its queued and in-progress jobs move to CRC32 mod 2 while the
    // builds on 0 and 1 still run.
    let moved = |name: &str, id: &str| {
        let want = format!("ci:queue:slave:{}", crc32(name.as_bytes()) % 2);
        b.redis.lrange(&want).contains(&id.to_string())
    };
    wait_for("index 2's jobs to be re-routed", DEADLINE, || {
        let left = (b.redis.lrange("ci:queue:slave:2"), b.redis.lrange("ci:working:slave:2"));
        if left.0.is_empty() && left.1.is_empty() && moved(&queued.name, &queued_id) {
            Ok(())
        } else {
            Err(format!("queue:2 {:?}, working:2 {:?}", left.0, left.1))
        }
    });
    assert!(!blockers[0].release.exists() && !blockers[1].release.exists(), "the other builds were still running");
    for blocker in &blockers {
        blocker.release();
    }
    for id in ids.iter().chain([&queued_id]) {
        assert_eq!(wait_build(&b.redis, id, LONG).state, "passed", "build {id}");
    }
}

/// FINISH again with the same attempt — what the slave does when the connection drops after
/// Redis ran the first one but before its answer came (`store` retries) — stores nothing more:
/// the build is counted once and its live log has one end, after the lines handed to it once.
#[test]
fn a_finish_retried_after_a_lost_answer_counts_the_build_once() {
    use ci_backend::routing::Routing;
    use ci_backend::store::queue::{self, Begun, CancelRunning, Enqueued, Finished, Job, Outcome};
    let redis = Redis::start();
    let mut c = redis.queue_conn();
    let text = serde_json::json!({ "repo": "acme/once", "branch": "main", "sha": "1".repeat(40), "clone_url": "file:///nowhere" });
    let push = ci_backend::store::job::decode(&text.to_string()).unwrap();
    let job = Job {
        push: &push,
        delivery: None,
        reset: false,
        keep: 50,
        cancel_running: CancelRunning::None,
        routing: Routing::Mod,
        alone: false,
    };
    let Enqueued::Queued { id, .. } = queue::enqueue(&mut c, &job).unwrap() else { panic!("not queued") };
    assert_eq!(queue::take(&mut c, "slave", 0, Duration::from_secs(1)).unwrap().as_deref(), Some(id.as_str()));
    let Begun::Run(started) = queue::start(&mut c, &id, "ci:working:slave:0", "slave-0", 3, &[]).unwrap() else { panic!("not started") };
    let outcome = Outcome { passed: true, could_not_run: false, log: vec!["[passed] in 0 s".into()], seconds: 0 };
    let last = vec!["  . last line".to_string()];
    for _ in 0..2 {
        assert!(matches!(queue::finish(&mut c, &started, "ci:working:slave:0", &outcome, &last).unwrap(), Finished::Stored));
    }
    assert_eq!(redis.hgetall("ci:stats").get("passed").map(String::as_str), Some("1"), "counted once");
    let entries = redis.cli(&["XRANGE", &format!("ci:log:{id}"), "-", "+"]);
    let Resp::Array(Some(entries)) = entries else { panic!("no stream: {entries:?}") };
    let fields: Vec<Vec<String>> = entries
        .iter()
        .map(|e| match e {
            Resp::Array(Some(parts)) => parts[1].list(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(fields, vec![vec!["line".to_string(), "  . last line".into()], vec!["end".into(), "passed".into()]]);
}
