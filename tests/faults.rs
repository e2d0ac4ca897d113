//! No build lost: a slave SIGKILLed mid-step, Redis stopped and restarted under load, SIGTERM
//! with enough grace and without.

use crate::harness::*;
use std::time::Duration;

/// A step that, on its first run, marks itself started and then sleeps (as the process itself,
/// so the test can kill the orphan); on any later run it prints `rerun` and passes.
fn once_then_pass_yml(root: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let mark = root.join("first-run.started");
    let pids = root.join("first-run.pids");
    let yml = format!(
        "step: long\ndebug: true\nenv:\n  MARK: {}\n  PIDS: {}\nshell: |\n  echo $$ >> \"$PIDS\"\n  if [ -e \"$MARK\" ]; then echo rerun; else touch \"$MARK\"; exec sleep 120; fi\n",
        mark.display(),
        pids.display()
    );
    (yml, mark, pids)
}

fn kill_pids(file: &std::path::Path) {
    for pid in std::fs::read_to_string(file).unwrap_or_default().split_whitespace() {
        let _ = std::process::Command::new("kill").args(["-9", pid]).stderr(std::process::Stdio::null()).status();
    }
}

#[test]
fn a_build_whose_slave_is_sigkilled_is_run_to_completion_by_the_replacement() {
    let mut b = Backend::start(1, &[], &[]);
    let (yml, mark, pids) = once_then_pass_yml(b.root());
    let git = b.repo("acme/killed");
    git.write("integration.yml", &yml);
    let sha = git.commit("killed mid-build");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    wait_for("the first run to start", LONG, || if mark.exists() { Ok(()) } else { Err("no mark".into()) });
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "running");
    assert_eq!(b.redis.lrange("ci:working:slave:0"), vec![id.clone()], "the job sits in the in-progress list");

    b.slaves[0].kill9();
    let replacement = Slave::start(&b.redis, &[]);
    assert_eq!(replacement.index, 0);
    let build = wait_build(&b.redis, &id, LONG);
    kill_pids(&pids);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert!(build.has_line("[passed]   . rerun"), "{:#?}", build.log);
    assert_eq!(build.slave, "slave-0");
    assert_eq!(replacement.started(&id), 1, "the replacement ran build {id}");
    assert!(b.redis.lrange("ci:working:slave:0").is_empty(), "the job must leave ci:working once stored");
    b.slaves[0] = replacement;
}

#[test]
fn redis_stopped_and_restarted_loses_no_accepted_push() {
    let mut b = Backend::start(2, &[("HOOK_TOKEN", "fault-token")], &[]);
    let hook_pid = b.hook.pid();
    let slave_pids: Vec<u32> = b.slaves.iter().map(|s| s.pid()).collect();
    let mk = |b: &Backend, name: &str, yml: &str| {
        let git = b.repo(name);
        git.write("integration.yml", yml);
        let sha = git.commit(name);
        git.push();
        (git, sha)
    };
    let mut accepted: Vec<String> = vec![];

    // Before: a normal build.
    let (g1, s1) = mk(&b, "faults/before", "step: s\nshell: \"true\"\n");
    accepted.push(b.hook.push_ok(&g1, &s1));
    wait_build(&b.redis, &accepted[0], LONG);

    // A build that is running when Redis goes away: once its lease goes unconfirmed (3/4 of
    // SLAVE_LEASE) the slave kills it, since another slave could claim the index when the lease
    // runs out; it runs again once Redis is back.
    let blocker = Blocker::new(b.root(), "outage");
    let done = b.root().join("outage.done");
    let yml = format!("step: across\nshell: |\n{}  touch '{}'\n", indent(&blocker.snippet(), 2), done.display());
    let (g0, s0) = mk(&b, "faults/across", &yml);
    let id0 = b.hook.push_ok(&g0, &s0);
    accepted.push(id0.clone());
    blocker.wait_started();

    b.redis.stop();
    let (g2, s2) = mk(&b, "faults/during", "step: s\nshell: \"true\"\n");
    let mut seen = vec![];
    let r = wait_for("a 503 while Redis is down", DEADLINE, || {
        let r = b.hook.push(&g2, &s2);
        seen.push(r.code);
        if (200..300).contains(&r.code) {
            accepted.push(r.json()["id"].as_str().unwrap_or("?").to_string());
        }
        if r.code == 503 {
            Ok(r)
        } else {
            Err(format!("{r}"))
        }
    });
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After: {:?}", r.headers);
    assert!(seen.iter().all(|c| *c == 503 || (200..300).contains(c)), "answers while Redis was down: {seen:?}");
    assert!(!seen.iter().any(|c| (200..300).contains(c)), "a 2xx while Redis was down cannot be durable: {seen:?}");
    let slave_logs = |b: &Backend| b.all_logs();
    wait_for("slave.lease_unconfirmed during the outage", LONG, || {
        let logs = slave_logs(&b);
        if events(&logs, "build.abandoned").iter().any(|l| kv(l, "id").as_deref() == Some(id0.as_str())) {
            Ok(())
        } else {
            Err(events(&logs, "slave.lease_unconfirmed").join("\n"))
        }
    });
    assert!(!events(&slave_logs(&b), "slave.lease_unconfirmed").is_empty());
    // Released now, the killed step can no longer finish: `done` appears only when it runs again.
    blocker.release();
    assert!(!done.exists(), "the step was killed before its blocker was released");
    // Still 503 now.
    let r = b.hook.push(&g2, &s2);
    assert_eq!(r.code, 503, "{r}");

    b.redis.restart();
    let id2 = wait_for("a 202 once Redis is back", LONG, || {
        let r = b.hook.push(&g2, &s2);
        if r.code == 202 {
            Ok(r.json()["id"].as_str().unwrap().to_string())
        } else {
            Err(format!("{r}"))
        }
    });
    accepted.push(id2);
    let (g3, s3) = mk(&b, "faults/after", "step: s\nshell: \"true\"\n");
    accepted.push(b.hook.push_ok(&g3, &s3));

    for id in &accepted {
        let build = wait_build(&b.redis, id, LONG);
        assert_eq!(build.state, "passed", "build {id}: {:#?}", build.log);
    }
    assert!(done.exists(), "the build stopped during the outage ran again");
    assert_eq!(read_build(&b.redis, &id0).unwrap().fields["attempt"], "2", "one attempt killed in the outage, one that passed");
    // Recovered without a restart.
    assert_eq!(b.hook.pid(), hook_pid);
    assert!(b.hook.proc.alive(), "the hook died");
    for (s, pid) in b.slaves.iter_mut().zip(slave_pids) {
        assert_eq!(s.pid(), pid);
        assert!(s.proc.alive(), "slave {} died", s.name());
    }
    for i in 0..2 {
        assert!(b.redis.lrange(&format!("ci:working:slave:{i}")).is_empty());
    }
}

#[test]
fn sigterm_during_a_build_lets_it_finish_and_store_its_status() {
    let mut b = Backend::start(1, &[], &[("SLAVE_GRACE", "30")]);
    let blocker = Blocker::new(b.root(), "term");
    let git = b.repo("acme/term");
    git.write("integration.yml", &blocker.yml());
    let sha = git.commit("term");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    blocker.wait_started();

    b.slaves[0].term();
    // A push accepted now must not be taken by the stopping slave.
    let other = b.repo("acme/after-term");
    other.write("integration.yml", "step: s\nshell: \"true\"\n");
    let other_sha = other.commit("after term");
    other.push();
    let r = b.hook.push(&other, &other_sha);
    assert!(r.code == 202 || r.code == 503, "{r}");
    let other_id = if r.code == 202 { r.json()["id"].as_str().map(String::from) } else { None };

    blocker.release();
    let status = b.slaves[0].proc.wait_exit(DEADLINE);
    assert!(status.success(), "graceful stop exit status: {status}");
    let build = read_build(&b.redis, &id).expect("build record");
    assert_eq!(build.state, "passed", "the running build finishes within the grace period: {:#?}", build.log);
    assert!(build.fields.get("finished_at").map(|f| !f.is_empty()).unwrap_or(false), "{:?}", build.fields);
    assert!(b.redis.lrange("ci:working:slave:0").is_empty(), "the job must leave ci:working");
    if let Some(other_id) = other_id {
        assert_eq!(b.slaves[0].started(&other_id), 0, "a stopping slave took a new job");
        let ob = read_build(&b.redis, &other_id).unwrap();
        assert_eq!(ob.state, "queued", "{ob:?}");
        // And the next holder of index 0 builds it.
        let next = Slave::start(&b.redis, &[]);
        assert_eq!(next.index, 0);
        assert_eq!(wait_build(&b.redis, &other_id, LONG).state, "passed");
        b.slaves.push(next);
    }
}

#[test]
fn sigterm_past_the_grace_period_kills_the_build_and_leaves_the_job_queued() {
    let mut b = Backend::start(1, &[], &[("SLAVE_GRACE", "1")]);
    let blocker = Blocker::new(b.root(), "grace");
    let git = b.repo("acme/grace");
    git.write("integration.yml", &blocker.yml());
    let sha = git.commit("grace");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    blocker.wait_started();
    let started = std::time::Instant::now();
    b.slaves[0].term();
    b.slaves[0].proc.wait_exit(DEADLINE);
    assert!(started.elapsed() < Duration::from_secs(20), "SLAVE_GRACE=1 but the slave took {:?}", started.elapsed());
    let build = read_build(&b.redis, &id).unwrap();
    assert!(build.state != "passed" && build.state != "failed", "a killed build is not a result: {build:?}");
    let queued = b.redis.lrange("ci:queue:slave:0");
    let working = b.redis.lrange("ci:working:slave:0");
    assert!(queued.contains(&id) || working.contains(&id), "job {id} lost: queue={queued:?} working={working:?}");
    // The next holder of index 0 runs it (released this time).
    blocker.release();
    let next = Slave::start(&b.redis, &[]);
    assert_eq!(next.index, 0);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(next.started(&id), 1);
    b.slaves.push(next);
}

#[test]
fn sigterm_stops_the_hook_without_waiting_out_the_accept_timeout() {
    // The accept loop wakes up every HOOK_IDLE_TIMEOUT to look at the stop flag; a hook that
    // waited for that would need 120 s here.
    let redis = Redis::start();
    let mut hook = Hook::start(&redis, &[("HOOK_IDLE_TIMEOUT", "120")]);
    assert_eq!(hook.get("/ping").code, 200);
    hook.proc.signal("TERM");
    let status = hook.proc.wait_exit(DEADLINE);
    assert!(status.success(), "the hook stopped with {status}");
}
