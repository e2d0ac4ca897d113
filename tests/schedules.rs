//! Schedules (`HOOK_CRON`): the agreement and enqueue through `hook::cron::fire` for a given
//! minute (two hooks' claims racing, the next minute, a branch never pushed, a hostile
//! schedule that cannot reach another branch's push); two real hooks firing `* * * * *` once at
//! the next wall-clock minute; bad lines refusing to start (exit 2, line and reason).

use crate::harness::*;
use ci_backend::cron;
use ci_backend::hook::cron::{fire, Fired, Firing};
use ci_backend::routing::Routing;
use ci_backend::store::queue::{CancelRunning, Enqueued};

const YML: &str = "step: say\ndebug: true\nshell: echo \"event=$CI_EVENT\"\n";

fn firing(owner: &str) -> Firing<'_> {
    Firing { owner, keep: 50, cancel_running: CancelRunning::Pulls, routing: Routing::Mod }
}

fn schedule(line: &str) -> cron::Schedule {
    cron::parse(line, "test").unwrap_or_else(|e| panic!("{line}: {e}")).remove(0)
}

fn conn(redis: &Redis) -> redis::Connection {
    redis::Client::open(redis.url()).unwrap().get_connection().unwrap()
}

/// `minute=` of a cron log line (`minute=29943980` or `minute=29943980: why`).
fn minute_of(line: &str) -> Option<u64> {
    kv(line, "minute")?.trim_end_matches(':').parse().ok()
}

/// The current unix minute, from the harness's clock (not the code under test).
fn this_minute() -> u64 {
    now() / 60
}

#[test]
fn two_hooks_racing_for_a_minute_queue_one_cron_build_of_the_last_push() {
    let b = Backend::start(1, &[], &[]);
    let (git, sha, first) = b.build("acme/nightly", &[("integration.yml", YML)], "nightly");
    assert_eq!(first.state, "passed", "{:#?}", first.log);
    let s = schedule("* * * * * acme/nightly main");
    let minute = this_minute();

    // Two "hooks" (two owners, two connections) fire the same schedule and minute at once.
    let results: Vec<Fired> = std::thread::scope(|scope| {
        let racers: Vec<_> = ["hook-a", "hook-b"]
            .into_iter()
            .map(|owner| {
                let (redis, s) = (&b.redis, &s);
                scope.spawn(move || fire(&mut conn(redis), s, minute, &firing(owner)).unwrap())
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let queued: Vec<&Fired> = results.iter().filter(|f| matches!(f, Fired::Enqueued { .. })).collect();
    let taken = results.iter().filter(|f| **f == Fired::Taken).count();
    assert_eq!((queued.len(), taken), (1, 1), "{results:?}");
    let Fired::Enqueued { enqueued: Enqueued::Queued { id, .. }, .. } = queued[0] else { panic!("not queued: {results:?}") };
    assert_ne!(id, &first.id);
    let build = wait_build(&b.redis, id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(build.sha, sha, "the cron build is the branch's last push");
    assert_eq!(build.fields.get("event").map(String::as_str), Some("cron"));
    assert_eq!(build.fields.get("branch").map(String::as_str), Some("main"));
    assert_eq!(build.printed(), ["event=cron"], "{:#?}", build.log);
    assert_eq!(b.redis.lrange(&format!("ci:history:{}:main", git.name)).len(), 2, "the push and one cron build");
    // The claim is the key operations.md documents, held by the winner.
    let holder = b.redis.get(&format!("ci:cron:{}:{minute}", s.id));
    assert!(matches!(holder.as_deref(), Some("hook-a" | "hook-b")), "{holder:?}");

    // The same hook asking again for that minute (a lost answer) coalesces, never a second
    // build; the other hook still finds the minute taken.
    let again = fire(&mut conn(&b.redis), &s, minute, &firing(holder.as_deref().unwrap())).unwrap();
    assert!(matches!(again, Fired::Enqueued { enqueued: Enqueued::Queued { .. } | Enqueued::Coalesced { .. }, .. }), "{again:?}");
    let other = if holder.as_deref() == Some("hook-a") { "hook-b" } else { "hook-a" };
    assert_eq!(fire(&mut conn(&b.redis), &s, minute, &firing(other)).unwrap(), Fired::Taken);

    // The next minute is another build.
    match fire(&mut conn(&b.redis), &s, minute + 1, &firing(other)).unwrap() {
        Fired::Enqueued { enqueued: Enqueued::Queued { id: next, .. } | Enqueued::Coalesced { id: next, .. }, .. } => {
            let next = wait_build(&b.redis, &next, LONG);
            assert_eq!((next.sha.as_str(), next.fields["event"].as_str()), (sha.as_str(), "cron"));
        }
        other => panic!("minute + 1: {other:?}"),
    }
}

#[test]
fn a_schedule_of_a_branch_never_pushed_builds_nothing() {
    let b = Backend::start(1, &[], &[]);
    let (_, _, first) = b.build("acme/app", &[("integration.yml", YML)], "first");
    // another branch of a pushed repository, and a repository never pushed
    for line in ["5 4 * * * acme/app release", "5 4 * * * acme/other main"] {
        let s = schedule(line);
        assert_eq!(fire(&mut conn(&b.redis), &s, this_minute(), &firing("hook-a")).unwrap(), Fired::UnknownBranch, "{line}");
    }
    let seq = b.redis.get("ci:seq");
    assert_eq!(seq.as_deref(), Some(first.id.as_str()), "no build id was handed out");
}

/// Two real hooks with `* * * * *`: at the next minute boundary exactly one of them queues the
/// build (event `cron`), the other logs the minute taken; the schedule of a never-pushed branch
/// gets one WARN, not an error; `ci_cron_builds_total` sums to 1.
#[test]
fn two_real_hooks_fire_each_schedule_once_at_the_next_minute() {
    let b = Backend::start(1, &[], &[]);
    let (_, sha, _) = b.build("acme/cron", &[("integration.yml", YML)], "cron");
    let env = [
        ("HOOK_CRON", "# every minute\n* * * * * acme/cron main\n* * * * * acme/cron never-pushed\n"),
        ("RUST_LOG", "info,ci_backend::hook::cron=debug"),
    ];
    let hooks = [Hook::start(&b.redis, &env), Hook::start(&b.redis, &env)];
    for h in &hooks {
        assert_eq!(events(&h.log(), "cron.started").len(), 1, "{}", h.log());
    }
    let start = this_minute();
    // Both hooks have handled the first minute boundary after they started (each logs one line
    // per schedule and minute: queued, taken or unknown_branch).
    let (minute, lines) = wait_for("both hooks to fire the next minute", std::time::Duration::from_secs(70), || {
        let logs: Vec<String> = hooks.iter().map(|h| h.log()).collect();
        let fired: Vec<String> = logs
            .iter()
            .flat_map(|l| ["cron.queued", "cron.taken", "cron.unknown_branch"].into_iter().flat_map(move |e| events(l, e)))
            .map(String::from)
            .collect();
        let first = fired.iter().filter_map(|l| minute_of(l)).min();
        match first {
            Some(m) if fired.iter().filter(|l| minute_of(l) == Some(m)).count() == 4 => {
                Ok((m, fired.into_iter().filter(|l| minute_of(l) == Some(m)).collect::<Vec<_>>()))
            }
            _ => Err(format!("{fired:?}")),
        }
    });
    assert!(minute <= start + 1, "minute {minute}: the first boundary after the hooks started ({start}) was not fired");
    let of = |event: &str, branch: &str| lines.iter().filter(|l| l.contains(event) && kv(l, "branch").as_deref() == Some(branch)).count();
    assert_eq!((of("cron.queued", "main"), of("cron.taken", "main")), (1, 1), "{lines:#?}");
    assert_eq!((of("cron.unknown_branch", "never-pushed"), of("cron.taken", "never-pushed")), (1, 1), "{lines:#?}");
    let queued = lines.iter().find(|l| l.contains("cron.queued")).unwrap();
    assert!(queued.contains(" INFO "), "{queued}");
    assert!(lines.iter().find(|l| l.contains("cron.unknown_branch")).unwrap().contains(" WARN "), "{lines:#?}");
    let id = kv(queued, "id").unwrap();
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!((build.sha.as_str(), build.fields["event"].as_str()), (sha.as_str(), "cron"));
    assert_eq!(build.printed(), ["event=cron"], "the step sees CI_EVENT=cron: {:#?}", build.log);
    let total: u64 = hooks
        .iter()
        .map(|h| {
            h.metrics().lines().find_map(|l| l.strip_prefix("ci_cron_builds_total ")).and_then(|v| v.trim().parse::<u64>().ok()).unwrap()
        })
        .sum();
    // A slow run may reach the next minute too: one build per minute fired, never two.
    let minutes =
        hooks.iter().flat_map(|h| events(&h.log(), "cron.queued").into_iter().filter_map(minute_of).collect::<Vec<_>>()).count() as u64;
    assert_eq!(total, minutes, "one build per minute across both hooks");
    assert!(total >= 1);
}

/// A hook's environment: (name, value) pairs.
type Env<'a> = Vec<(&'a str, &'a str)>;

/// Redis stopped across a minute boundary: the hook retries (`WARN redis.unreachable op=cron`),
/// keeps serving, and queues that minute's build once Redis is back within the minute.
#[test]
fn a_redis_outage_at_the_minute_is_retried_within_it() {
    let mut redis = Redis::start();
    drop(redis.queue_conn()); // slave-0 counts as live for an hour: builds are queued, not run
    let hook = Hook::start(&redis, &[("HOOK_CRON", "* * * * * acme/outage main")]);
    let git = GitRepo::new(&redis.root, "acme/outage");
    git.write("integration.yml", YML);
    let sha = git.commit("outage");
    git.push();
    hook.push_ok(&git, &sha);
    redis.stop();
    let unreachable = wait_for("the cron thread to meet the outage", std::time::Duration::from_secs(70), || {
        let log = hook.log();
        events(&log, "redis.unreachable")
            .into_iter()
            .find(|l| l.contains(" op=cron "))
            .map(String::from)
            .ok_or_else(|| "not yet".to_string())
    });
    let minute = minute_of(&unreachable).unwrap_or_else(|| panic!("no minute= in {unreachable}"));
    redis.restart();
    let queued = wait_for("the minute's build once Redis is back", DEADLINE, || {
        let log = hook.log();
        let missed = events(&log, "cron.missed");
        assert!(missed.is_empty(), "{missed:?}");
        events(&log, "cron.queued")
            .into_iter()
            .find(|l| minute_of(l) == Some(minute))
            .map(String::from)
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(hook.get("/ping").code, 200);
    let id = kv(&queued, "id").unwrap();
    let build = read_build(&redis, &id).unwrap_or_else(|| panic!("no record for {queued}"));
    assert_eq!((build.sha.as_str(), build.fields["event"].as_str()), (sha.as_str(), "cron"));
}

#[test]
fn bad_schedules_refuse_to_start_naming_the_line() {
    let redis = Redis::start();
    let file = redis.root.join("cron");
    std::fs::write(&file, "0 3 * * * acme/app main\n# ok\n0 3 * * * acme/app\n").unwrap();
    let file = file.to_string_lossy().to_string();
    let cases: Vec<(Env, Vec<&str>)> = vec![
        (
            vec![("HOOK_CRON", "0 3 * * * acme/app main\n61 * * * * acme/app main")],
            vec!["HOOK_CRON line 2", "minute \"61\"", "out of range 0-59"],
        ),
        (vec![("HOOK_CRON", "*/0 * * * * acme/app main")], vec!["HOOK_CRON line 1", "step \"0\""]),
        (vec![("HOOK_CRON", "* * * * * ../../etc main")], vec!["HOOK_CRON line 1", "repository name"]),
        (vec![("HOOK_CRON", "* * * * * acme/app --upload-pack=x")], vec!["HOOK_CRON line 1", "branch name"]),
        (vec![("HOOK_CRON_FILE", &file)], vec!["HOOK_CRON_FILE=", "line 3", "6 fields"]),
        (vec![("HOOK_CRON_FILE", "/nonexistent/cron")], vec!["HOOK_CRON_FILE=\"/nonexistent/cron\": cannot open it"]),
        (vec![("HOOK_CRON", "* * * * * a/b main"), ("HOOK_CRON_FILE", &file)], vec!["both set"]),
    ];
    let many = "* * * * * acme/app main\n".repeat(cron::MAX_SCHEDULES + 1);
    let cases = cases.into_iter().chain([(vec![("HOOK_CRON", many.as_str())], vec!["line 1001", "more than 1000 schedules"])]);
    for (k, (env, wanted)) in cases.enumerate() {
        let mut cmd = scrubbed(&bin("hook"));
        cmd.env("HOOK_ADDR", "127.0.0.1:0").env("REDIS_URL", redis.url()).current_dir(&redis.root);
        for (key, v) in &env {
            cmd.env(key, v);
        }
        let (out, err) = (redis.root.join(format!("bad-{k}.out")), redis.root.join(format!("bad-{k}.err")));
        let mut proc = Proc::spawn("hook (bad cron)", cmd, out, err.clone());
        let status = proc.wait_exit(DEADLINE);
        let stderr = std::fs::read_to_string(&err).unwrap();
        assert_eq!(status.code(), Some(2), "{env:?}: {stderr}");
        for part in wanted {
            assert!(stderr.contains(part), "{env:?}: {part:?} missing from {stderr}");
        }
    }
}

/// The bound at its limit: 1,000 schedules of 1,000 pushed branches due in one minute, each
/// queued once by one hook and found taken by another; prints what parsing, matching and
/// firing took (docs/schedules.md quotes it):
/// `cargo test --test tests -- --ignored schedules::a_thousand_schedules_due_at_once --nocapture`.
#[test]
#[ignore]
fn a_thousand_schedules_due_at_once() {
    let redis = Redis::start();
    drop(redis.queue_conn());
    let hook = Hook::start(&redis, &[]);
    let text: String = (0..cron::MAX_SCHEDULES).map(|k| format!("* * * * * acme/app b{k}\n")).collect();
    let t = std::time::Instant::now();
    let all = cron::parse(&text, "HOOK_CRON").unwrap();
    let parsed = t.elapsed();
    let t = std::time::Instant::now();
    let due = all.iter().filter(|s| s.matches(cron::Minute::of(this_minute()))).count();
    let matched = t.elapsed();
    assert_eq!(due, cron::MAX_SCHEDULES);
    for k in 0..cron::MAX_SCHEDULES {
        let body = github_push("acme/app", "file:///nowhere", &format!("b{k}"), &"3".repeat(40), "m", "main");
        assert_eq!(hook.send_github("/", "push", body.to_string().as_bytes(), &[]).code, 202);
    }
    let mut c = conn(&redis);
    let minute = this_minute() + 5;
    let t = std::time::Instant::now();
    for s in &all {
        let fired = fire(&mut c, s, minute, &firing("hook-a")).unwrap();
        assert!(matches!(fired, Fired::Enqueued { enqueued: Enqueued::Coalesced { .. }, .. }), "{fired:?}");
    }
    let fired = t.elapsed();
    let t = std::time::Instant::now();
    for s in &all {
        assert_eq!(fire(&mut c, s, minute, &firing("hook-b")).unwrap(), Fired::Taken);
    }
    let taken = t.elapsed();
    let cron_events = (0..cron::MAX_SCHEDULES)
        .filter(|k| redis.hgetall(&format!("ci:build:{}", k + 1)).get("event").map(String::as_str) == Some("cron"))
        .count();
    assert_eq!(cron_events, cron::MAX_SCHEDULES, "every pending build took its schedule in");
    eprintln!(
        "1000 schedules: parse {parsed:?}, match one minute {matched:?}, fire (claim, last push, enqueue) {fired:?}, found taken {taken:?}"
    );
}
