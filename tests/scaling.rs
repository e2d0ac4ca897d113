//! Scaling: no build waits behind another repository's while an executor is free.
//! SLAVE_EXECUTORS runs builds side by side on one slave (never two of one branch);
//! SLAVE_STEAL_AFTER lets an idle slave take a job that waited too long in a sibling's queue,
//! exactly once, while the repository's own slave keeps its cache.

use crate::harness::*;
use std::collections::HashMap;
use std::fs;

fn state_of(redis: &Redis, id: &str) -> String {
    read_build(redis, id).map(|b| b.state).unwrap_or_default()
}

fn field(build: &Build, name: &str) -> f64 {
    build.fields.get(name).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("build {} has no {name}: {:?}", build.id, build.fields))
}

#[test]
fn a_second_executor_builds_another_repository_beside_a_long_build() {
    let b = Backend::start(3, &[], &[("SLAVE_EXECUTORS", "2"), ("SLAVE_STEAL_AFTER", "0")]);
    let long = name_for("hol", 3, 0, 0);
    let quick = name_for("hol", 3, 0, 1);
    let (blocker, long_id) = b.occupy(&long);
    let (_, quick_id) = b.queue(&quick, "step: quick\nshell: echo quick\n", "quick");
    // The long build waits up to 120 s for its blocker; the quick one must not.
    let built = wait_build(&b.redis, &quick_id, DEADLINE);
    assert_eq!(built.state, "passed", "{:?}", built.log);
    assert_eq!(built.slave, "slave-0", "both repositories route to slave-0; the quick one ran on its second executor");
    assert_eq!(state_of(&b.redis, &long_id), "running", "the quick build finished while the long one still ran");
    // /metrics: slave 0 shows one busy and one free executor (as of its next renewal).
    wait_for("executors of slave 0 in /metrics", DEADLINE, || {
        let m = b.hook.metrics();
        let busy = m.contains("ci_slave_executors{cluster=\"slave\",index=\"0\",state=\"busy\"} 1\n");
        let free = m.contains("ci_slave_executors{cluster=\"slave\",index=\"0\",state=\"free\"} 1\n");
        let idle = m.contains("ci_slave_executors{cluster=\"slave\",index=\"1\",state=\"free\"} 2\n");
        if busy && free && idle {
            Ok(())
        } else {
            Err(m.lines().filter(|l| l.starts_with("ci_slave_executors")).collect::<Vec<_>>().join("\n"))
        }
    });
    blocker.release();
    assert_eq!(wait_build(&b.redis, &long_id, LONG).state, "passed");
}

#[test]
fn two_builds_of_one_branch_never_run_at_once_on_one_slave() {
    let b = Backend::start(1, &[], &[("SLAVE_EXECUTORS", "3"), ("SLAVE_STEAL_AFTER", "0")]);
    let blocker = Blocker::new(b.root(), "branch");
    let (git, first) = b.queue("acme/one-branch", &blocker.yml(), "first");
    blocker.wait_started();
    git.write("integration.yml", "step: second\nshell: echo second\n");
    let sha = git.commit("second");
    git.push();
    let second = b.hook.push_ok(&git, &sha);
    // An executor takes the second build and defers it: its branch is building.
    wait_for("build.deferred in the slave's log", DEADLINE, || {
        let log = b.slaves[0].log();
        if events(&log, "build.deferred").iter().any(|l| kv(l, "id").as_deref() == Some(second.as_str())) {
            Ok(())
        } else {
            Err(format!("second build is {}", state_of(&b.redis, &second)))
        }
    });
    assert_eq!(state_of(&b.redis, &second), "queued");
    blocker.release();
    let (one, two) = (wait_build(&b.redis, &first, LONG), wait_build(&b.redis, &second, LONG));
    assert_eq!((one.state.as_str(), two.state.as_str()), ("passed", "passed"), "{:?} {:?}", one.log, two.log);
    assert!(
        field(&two, "started_at") >= field(&one, "finished_at"),
        "the second build of the branch started ({}) before the first finished ({})",
        field(&two, "started_at"),
        field(&one, "finished_at")
    );
}

#[test]
fn an_idle_slave_steals_a_waiting_job_and_the_home_slave_keeps_its_cache() {
    let b = Backend::start(3, &[], &[("SLAVE_EXECUTORS", "1"), ("SLAVE_STEAL_AFTER", "1")]);
    let long = name_for("steal", 3, 0, 0);
    let quick = name_for("steal", 3, 0, 1);
    // The quick repository's first build runs at home and leaves its artifact there.
    let (git, first) = b.queue(&quick, STICKY_YML, "home");
    let home = wait_build(&b.redis, &first, LONG);
    assert_eq!((home.state.as_str(), home.slave.as_str()), ("passed", "slave-0"), "{:?}", home.log);
    assert_eq!(seen(&home).as_deref(), Some("none"));

    let (blocker, long_id) = b.occupy(&long);
    git.write("round.txt", "2");
    let sha = git.commit("while slave-0 is busy");
    git.push();
    let stolen_id = b.hook.push_ok(&git, &sha);
    let stolen = wait_build(&b.redis, &stolen_id, DEADLINE);
    assert_eq!(stolen.state, "passed", "{:?}", stolen.log);
    assert_ne!(stolen.slave, "slave-0", "slave-0 is busy: another slave must have taken it");
    assert_eq!(stolen.fields.get("stolen").map(String::as_str), Some("slave-0"), "the record says where it was stolen from");
    assert_eq!(seen(&stolen).as_deref(), Some("none"), "the thief builds from its own (cold) cache");
    assert!(field(&stolen, "started_at") - field(&stolen, "queued_at") >= 1.0, "stolen only after SLAVE_STEAL_AFTER");
    assert_eq!(state_of(&b.redis, &long_id), "running");
    let status = b.hook.get_json(&format!("/status/{quick}?id={stolen_id}"));
    assert_eq!(status.json()["stolen_from"], "slave-0", "{status}");

    blocker.release();
    assert_eq!(wait_build(&b.redis, &long_id, LONG).state, "passed");
    git.write("round.txt", "3");
    let sha = git.commit("back home");
    git.push();
    let back = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(back.slave, "slave-0", "the repository still routes home");
    assert_eq!(seen(&back).as_deref(), Some(first.as_str()), "its home cache still holds the first build's artifact");
    assert!(!back.fields.contains_key("stolen"));
}

#[test]
fn two_hundred_jobs_on_one_queue_are_each_built_exactly_once_under_stealing() {
    let b = Backend::start(3, &[], &[("SLAVE_EXECUTORS", "1"), ("SLAVE_STEAL_AFTER", "0.5")]);
    let marks = b.root().join("race");
    fs::create_dir_all(marks.join("locks")).unwrap();
    world_writable(&marks);
    world_writable(&marks.join("locks"));
    // Each build holds an flock named after its id: a second run at the same time finds it taken.
    let yml = format!(
        "step: race\nshell: |\n  exec 9>'{m}/locks/'\"$BUILD_ID\"\n  flock -n 9 || echo \"$BUILD_ID\" >> '{m}/twice'\n  echo \"$BUILD_ID $SLAVE\" >> '{m}/runs'\n  sleep 0.05\n",
        m = marks.display()
    );
    let name = name_for("race", 3, 0, 0);
    let git = b.repo(&name);
    git.write("integration.yml", &yml);
    let sha = git.commit("race");
    let branches: Vec<String> = (0..200).map(|i| format!("b{i:03}")).collect();
    let mut push = crate::harness::git(&git.work);
    push.args(["push", "-q", "origin"]);
    for br in &branches {
        push.arg(format!("HEAD:refs/heads/{br}"));
    }
    run(&mut push);
    let mut ids = vec![];
    for br in &branches {
        let body = github_push(&name, &git.file_url(), br, &sha, "race", "main");
        let r = b.hook.send_github("/", "push", body.to_string().as_bytes(), &[]);
        assert_eq!(r.code, 202, "{r}");
        assert_eq!(r.json()["slave"], "slave-0", "every job routes to slave-0: {r}");
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let builds: Vec<Build> = ids.iter().map(|id| wait_build(&b.redis, id, LONG)).collect();
    let failed: Vec<&Build> = builds.iter().filter(|b| b.state != "passed").collect();
    assert!(failed.is_empty(), "{} failed: {:?}", failed.len(), failed.first().map(|b| &b.log));
    let runs = fs::read_to_string(marks.join("runs")).unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for line in runs.lines() {
        *count.entry(line.split(' ').next().unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = count.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "built more than once: {twice:?}");
    assert_eq!(count.len(), 200, "every job built once");
    assert!(!marks.join("twice").exists(), "two runs of one build overlapped: {:?}", fs::read_to_string(marks.join("twice")));
    let stolen = builds.iter().filter(|b| b.fields.get("stolen").map(String::as_str) == Some("slave-0")).count();
    let thieves: std::collections::BTreeSet<&str> =
        builds.iter().filter(|b| b.fields.contains_key("stolen")).map(|b| b.slave.as_str()).collect();
    println!("stealing race: 200 jobs, {stolen} stolen from slave-0 by {thieves:?}");
    assert!(stolen > 0, "with stealing at 0.5 s the idle slaves must take some of slave-0's 200 jobs");
    for b in &builds {
        let ran_on = runs.lines().find(|l| l.starts_with(&format!("{} ", b.id))).and_then(|l| l.split(' ').nth(1)).unwrap_or("");
        assert_eq!(ran_on, b.slave, "build {}: the record names {}, the step ran on {ran_on}", b.id, b.slave);
    }
}
