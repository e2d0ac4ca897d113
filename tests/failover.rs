//! Redis failover through Sentinel. A master, two replicas and three real
//! `redis-sentinel`s; a hook and two slaves that find the master through the sentinels
//! (their REDIS_URL points nowhere); pushes flowing while the master is SIGKILLed: every push
//! answered 2xx is built, the others got a 503 with its reason, and the time to recover is
//! printed. Also: one sentinel setting without the other refuses to start; REDIS_MIN_REPLICAS
//! with no replica answers 503 with the reason.

use crate::harness::*;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The name the sentinels monitor the master under.
const NAME: &str = "ci";

/// A real `redis-sentinel` on a free port, monitoring `NAME` at the given master: quorum 2,
/// down after 1 s, failover timeout 5 s.
struct Sentinel {
    port: u16,
    _proc: Proc,
}

impl Sentinel {
    fn start(root: &Path, k: usize, master_port: u16) -> Sentinel {
        Sentinel::start_locked(root, k, master_port, None)
    }

    /// With `password`: the sentinel's own (`requirepass`) and the master's (`auth-pass`).
    fn start_locked(root: &Path, k: usize, master_port: u16, password: Option<&str>) -> Sentinel {
        let lock = password.map_or(String::new(), |pw| format!("requirepass {pw}\nsentinel auth-pass {NAME} {pw}\n"));
        for attempt in 0..20 {
            let port = 20000 + (rand_u64() % 12000) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            let dir = root.join(format!("sentinel-{k}-{attempt}"));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n\
                 sentinel monitor {NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {NAME} 1000\n\
                 sentinel failover-timeout {NAME} 5000\n\
                 sentinel parallel-syncs {NAME} 2\n{lock}",
                dir.display()
            );
            std::fs::write(&conf, text).unwrap();
            let mut cmd = Command::new("redis-sentinel");
            cmd.arg(&conf);
            let mut proc = Proc::spawn(&format!("sentinel-{k}"), cmd, dir.join("out"), dir.join("err"));
            let started = Instant::now();
            while started.elapsed() < DEADLINE && proc.alive() {
                // Ours when it names our master (another test may have raced us for the port).
                if master_of(port, password) == Some(master_port) {
                    return Sentinel { port, _proc: proc };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start redis-sentinel; see {}", root.display());
    }
}

/// The master port a sentinel names.
fn master_of(sentinel: u16, password: Option<&str>) -> Option<u16> {
    let ask = ["SENTINEL", "get-master-addr-by-name", NAME];
    match password.map_or_else(|| resp_cmd(sentinel, &ask), |pw| resp_cmd_auth(sentinel, pw, &ask)) {
        Ok(Resp::Array(Some(items))) => items.get(1)?.str()?.parse().ok(),
        _ => None,
    }
}

/// How many entries `SENTINEL <what> NAME` lists (replicas, other sentinels).
fn sentinel_count(sentinel: u16, what: &str) -> usize {
    match resp_cmd(sentinel, &["SENTINEL", what, NAME]) {
        Ok(Resp::Array(Some(items))) => items.len(),
        _ => 0,
    }
}

/// `ROLE` of the redis on `port`: `master`, `slave`, or why not.
fn role(port: u16) -> String {
    match resp_cmd(port, &["ROLE"]) {
        Ok(Resp::Array(Some(items))) => items.first().and_then(Resp::str).unwrap_or_default(),
        other => format!("{other:?}"),
    }
}

/// `connected_slaves` of INFO replication on `port`, counting only replicas online.
fn online_replicas(port: u16) -> usize {
    let info = resp_cmd(port, &["INFO", "replication"]).ok().and_then(|r| r.str()).unwrap_or_default();
    info.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count()
}

/// A master on `master`, `replicas` replicating it, and three sentinels that know all of them
/// and each other (so that a failover can be elected at once).
fn sentinels_over(master: &Redis, replicas: &[&Redis]) -> Vec<Sentinel> {
    for r in replicas {
        assert_eq!(r.cli(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]).str().as_deref(), Some("OK"));
    }
    wait_for("the replicas to be online", DEADLINE, || match online_replicas(master.port) {
        n if n == replicas.len() => Ok(()),
        n => Err(format!("{n} online")),
    });
    let sentinels: Vec<Sentinel> = (0..3).map(|k| Sentinel::start(&master.root, k, master.port)).collect();
    wait_for("each sentinel to know the replicas and the two other sentinels", DEADLINE, || {
        let seen: Vec<(usize, usize)> =
            sentinels.iter().map(|s| (sentinel_count(s.port, "replicas"), sentinel_count(s.port, "sentinels"))).collect();
        if seen.iter().all(|&(r, s)| r == replicas.len() && s == 2) {
            Ok(())
        } else {
            Err(format!("(replicas, sentinels) per sentinel: {seen:?}"))
        }
    });
    sentinels
}

fn sentinel_list(sentinels: &[Sentinel]) -> String {
    sentinels.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",")
}

/// One answer of the pusher: when, the code, the build id (2xx) or the body.
struct Answer {
    at: Instant,
    code: u16,
    text: String,
    retry_after: bool,
}

#[test]
fn sigkilled_master_fails_over_and_every_2xx_push_is_built() {
    let mut master = Redis::start();
    let r1 = Redis::start();
    let r2 = Redis::start();
    let sentinels = sentinels_over(&master, &[&r1, &r2]);
    let list = sentinel_list(&sentinels);
    // REDIS_URL names no Redis at all: only the sentinels can lead to the master.
    let redis_env = [("REDIS_URL", "redis://127.0.0.1:1/0"), ("REDIS_SENTINELS", list.as_str()), ("REDIS_MASTER_NAME", NAME)];
    let mut hook_env = redis_env.to_vec();
    hook_env.extend([("REDIS_MIN_REPLICAS", "1"), ("HOOK_TOKEN", "failover-token")]);
    let hook = Hook::start(&master, &hook_env);
    let slaves: Vec<Slave> = (0..2).map(|_| Slave::start(&master, &redis_env)).collect();
    hook.wait_slaves("slave", 2);
    let old = format!("127.0.0.1:{}", master.port);
    assert!(hook.log().contains(&format!("redis.master addr={old} name={NAME}")), "{}", hook.log());
    assert!(hook.metrics().contains("\nci_redis_min_replicas 1\n"), "{}", hook.metrics());
    assert!(hook.metrics().contains("\nci_redis_replicas 2\n"), "{}", hook.metrics());

    let repos: Vec<GitRepo> = (0..4)
        .map(|i| {
            let g = GitRepo::new(&master.root, &format!("failover/r{i}"));
            g.write("integration.yml", "step: s\nshell: \"true\"\n");
            g
        })
        .collect();
    let answers: Mutex<Vec<Answer>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let accepted_since = |t: Instant| answers.lock().unwrap().iter().filter(|a| a.at > t && (200..300).contains(&a.code)).count();
    let (killed_at, recovered_at) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // A sender: a new commit after each 2xx; after a refusal, the same commit again.
            let mut k = 0;
            let mut sha = None;
            while !stop.load(Ordering::SeqCst) {
                let git = &repos[k % repos.len()];
                let s = sha.get_or_insert_with(|| {
                    git.write("n", &k.to_string());
                    let s = git.commit(&format!("push {k}"));
                    git.push();
                    s
                });
                let body = github_push(&git.name, &git.file_url(), &git.branch, s, &git.message(s), &git.default_branch).to_string();
                let answer = match try_push(hook.addr, &hook.token, body.as_bytes()) {
                    Ok(r) => Answer { at: Instant::now(), code: r.code, text: r.text(), retry_after: r.header("Retry-After").is_some() },
                    Err(e) => Answer { at: Instant::now(), code: 0, text: e.to_string(), retry_after: false },
                };
                if (200..300).contains(&answer.code) {
                    sha = None;
                    k += 1;
                }
                answers.lock().unwrap().push(answer);
                // A sender's pace, not a synchronisation.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        wait_for("5 pushes accepted before the kill", LONG, || match accepted_since(start) {
            n if n >= 5 => Ok(()),
            n => Err(format!("{n} accepted")),
        });
        master.kill9();
        let killed_at = Instant::now();
        let recovered_at = wait_for("a 2xx after the master was killed", LONG, || {
            let a = answers.lock().unwrap();
            a.iter().find(|a| a.at > killed_at && (200..300).contains(&a.code)).map(|a| a.at).ok_or(format!("{} answers", a.len()))
        });
        wait_for("5 more pushes accepted after the failover", LONG, || match accepted_since(recovered_at) {
            n if n >= 5 => Ok(()),
            n => Err(format!("{n} accepted")),
        });
        stop.store(true, Ordering::SeqCst);
        (killed_at, recovered_at)
    });

    let (new_master, replica) = wait_for("one replica to be the master", DEADLINE, || match (role(r1.port), role(r2.port)) {
        (a, _) if a == "master" => Ok((&r1, &r2)),
        (_, b) if b == "master" => Ok((&r2, &r1)),
        other => Err(format!("{other:?}")),
    });
    let new = format!("127.0.0.1:{}", new_master.port);
    let answers = answers.into_inner().unwrap();
    let before: Vec<&Answer> = answers.iter().filter(|a| a.at < killed_at).collect();
    assert!(before.iter().all(|a| a.code == 202), "before the kill every push is accepted: {:?}", codes(&before));
    let mut reasons = std::collections::BTreeSet::new();
    for a in answers.iter().filter(|a| !(200..300).contains(&a.code)) {
        assert_eq!(a.code, 503, "a refused push is a 503: {}", a.text);
        assert!(a.retry_after, "503 without Retry-After: {}", a.text);
        let why = serde_json::from_str::<Value>(&a.text).ok().and_then(|v| v["error"].as_str().map(String::from));
        let why = why.unwrap_or_else(|| panic!("a 503 without its reason: {}", a.text));
        // The reason's kind, without the addresses and ids that vary.
        reasons.insert(why.split([':', ';']).next().unwrap_or("").to_string());
    }
    let ids: Vec<String> = answers
        .iter()
        .filter(|a| (200..300).contains(&a.code))
        .map(|a| serde_json::from_str::<Value>(&a.text).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    let mut lost = vec![];
    for id in &ids {
        match wait_for(&format!("build {id} on the new master"), LONG, || match read_build(new_master, id) {
            Some(b) if b.state == "passed" || b.state == "failed" => Ok(Some(b)),
            Some(b) => Err(format!("state={:?} slave={:?}", b.state, b.slave)),
            None => Ok(None),
        }) {
            Some(b) => assert_eq!(b.state, "passed", "build {id}: {:#?}", b.log),
            None => lost.push(id.clone()),
        }
    }
    let refused = answers.iter().filter(|a| !(200..300).contains(&a.code)).count();
    let recovery = recovered_at - killed_at;
    eprintln!(
        "failover: master {old} SIGKILLed, new master {new}; pushes answered 2xx {} (built {}, lost {}), refused {refused} \
         ({reasons:?}); time to recover (first 2xx after the kill): {:.2} s",
        ids.len(),
        ids.len() - lost.len(),
        lost.len(),
        recovery.as_secs_f64()
    );
    assert!(lost.is_empty(), "pushes answered 2xx but unknown to the new master: {lost:?}");
    assert!(refused > 0, "no push was refused during the failover: was the master really killed?");
    // One line per failover, in each process that saw it; the processes lived through it.
    let line = format!("redis.failover old={old} new={new} name={NAME}");
    assert_eq!(hook.log().matches(&line).count(), 1, "hook log: {}", tail(&hook.proc.out, 40));
    for s in &slaves {
        assert_eq!(s.log().matches(&line).count(), 1, "{} log: {}", s.name(), tail(&s.proc.out, 40));
    }
    let port = new_master.port.to_string();
    wait_for("the other replica to follow the new master", DEADLINE, || {
        let info = resp_cmd(replica.port, &["INFO", "replication"]).ok().and_then(|r| r.str()).unwrap_or_default();
        if info.contains(&format!("master_port:{port}\r\n")) && info.contains("role:slave") {
            Ok(())
        } else {
            Err(info)
        }
    });

    // A switchover (`SENTINEL FAILOVER`): the master stays up but becomes a replica (READONLY);
    // the hook follows it to the other one and builds go on. It starts from the master all three
    // sentinels name: one may fail over once more on its own just after the kill (seen in CI, a
    // sentinel marked the fresh master down and promoted the other replica).
    let (from, replica) = wait_for("the sentinels to agree on the master", DEADLINE, || {
        let named: Vec<Option<u16>> = sentinels.iter().map(|s| master_of(s.port, None)).collect();
        match named[0] {
            Some(p) if named.iter().all(|n| *n == Some(p)) && role(p) == "master" && p == r1.port => Ok((&r1, &r2)),
            Some(p) if named.iter().all(|n| *n == Some(p)) && role(p) == "master" && p == r2.port => Ok((&r2, &r1)),
            _ => Err(format!("{named:?}")),
        }
    });
    let new = format!("127.0.0.1:{}", from.port);
    let asked = wait_for("SENTINEL FAILOVER to be accepted", LONG, || match resp_cmd(sentinels[0].port, &["SENTINEL", "FAILOVER", NAME]) {
        Ok(Resp::Simple(ok)) if ok == "OK" => Ok(Instant::now()),
        other => Err(format!("{other:?}")),
    });
    let third = format!("127.0.0.1:{}", replica.port);
    let git = &repos[0];
    git.write("n", "switchover");
    let sha = git.commit("after the switchover");
    git.push();
    let id = wait_for("a 2xx from the master after the switchover", LONG, || {
        let r = hook.push(git, &sha);
        match r.code {
            202 if role(replica.port) == "master" => Ok(r.json()["id"].as_str().unwrap().to_string()),
            202 | 503 => Err(format!("{r}")),
            _ => panic!("after the switchover: {r}"),
        }
    });
    eprintln!("switchover: SENTINEL FAILOVER to the first 2xx from the new master {third}: {:.2} s", asked.elapsed().as_secs_f64());
    let build = wait_build(replica, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let switched = format!("redis.failover old={new} new={third} name={NAME}");
    wait_for("the hook to log the switchover", DEADLINE, || match hook.log().matches(&switched).count() {
        1 => Ok(()),
        n => Err(format!("{n} lines {switched:?}")),
    });
    drop(slaves);
    drop(hook);
}

fn codes(answers: &[&Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.code).collect()
}

#[test]
fn a_locked_sentinel_answers_only_with_the_password_and_the_hook_gives_it() {
    let redis = Redis::start();
    let pw = "sentinel-and-master-pw";
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", pw]), Resp::Simple("OK".into()));
    let sentinel = Sentinel::start_locked(&redis.root, 0, redis.port, Some(pw));
    // The oracle: without the password the sentinel names no master to anyone (a step).
    let open = resp_cmd(sentinel.port, &["SENTINEL", "get-master-addr-by-name", NAME]).unwrap();
    assert!(matches!(&open, Resp::Error(e) if e.starts_with("NOAUTH")), "{open:?}");
    let url = format!("redis://:{pw}@127.0.0.1:1/0");
    let sentinels = format!("127.0.0.1:{}", sentinel.port);
    let env = [("REDIS_URL", url.as_str()), ("REDIS_SENTINELS", sentinels.as_str()), ("REDIS_MASTER_NAME", NAME)];
    let hook = Hook::start(&redis, &env);
    let line = wait_for("the hook to dial the master the locked sentinel names", DEADLINE, || {
        let log = hook.log();
        events(&log, "redis.master").first().map(|l| l.to_string()).ok_or(log)
    });
    assert_eq!(kv(&line, "addr"), Some(format!("127.0.0.1:{}", redis.port)), "{line}");
    assert!(!hook.log().contains(pw), "the password is in the hook's log");
}

#[test]
fn one_sentinel_setting_without_the_other_refuses_to_start() {
    let root = fresh_dir(&test_name());
    let cases = [
        ("hook", "REDIS_SENTINELS", "127.0.0.1:26379", "REDIS_SENTINELS is set but REDIS_MASTER_NAME is not"),
        ("hook", "REDIS_MASTER_NAME", "ci", "REDIS_MASTER_NAME is set but REDIS_SENTINELS is not"),
        ("slave", "REDIS_SENTINELS", "127.0.0.1:26379", "REDIS_SENTINELS is set but REDIS_MASTER_NAME is not"),
        ("slave", "REDIS_MASTER_NAME", "ci", "REDIS_MASTER_NAME is set but REDIS_SENTINELS is not"),
    ];
    for (binary, name, value, why) in cases {
        let mut cmd = scrubbed(&bin(binary));
        cmd.env(name, value).env("HOOK_ADDR", "127.0.0.1:0").env("SLAVE_CACHE", root.join("cache")).current_dir(&root);
        let out = cmd.output().unwrap_or_else(|e| panic!("{binary}: {e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{binary} with {name} alone started: {text}");
        assert!(text.contains(why), "{binary} with {name} alone: {text}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn min_replicas_without_a_replica_answers_503_with_the_reason() {
    let b = Backend::start(1, &[("REDIS_MIN_REPLICAS", "1")], &[]);
    assert!(b.hook.metrics().contains("\nci_redis_min_replicas 1\n"));
    assert!(b.hook.metrics().contains("\nci_redis_replicas 0\n"));
    let git = b.repo("acme/unreplicated");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("unreplicated");
    git.push();
    let delivery = delivery_id();
    let body = github_push(&git.name, &git.file_url(), &git.branch, &sha, &git.message(&sha), &git.default_branch).to_string();
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[("X-GitHub-Delivery", &delivery)]);
    assert_eq!(r.code, 503, "{r}");
    let why = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        why.contains("is queued on the Redis master, but only 0 of REDIS_MIN_REPLICAS=1 replicas acknowledged it within 1000 ms"),
        "{why}"
    );
    assert!(why.contains("a redelivery is caught by its delivery id"), "{why}");
    assert!(r.header("Retry-After").is_some());
    // The same reason on the request's log line.
    wait_for("the 503 on the hook's log line", DEADLINE, || {
        let log = b.hook.log();
        match events(&log, "request").iter().find(|l| l.contains("code=503")) {
            Some(l) if l.contains("acked=0") && l.contains("REDIS_MIN_REPLICAS=1") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // A replica joins; the sender's redelivery is answered 200 (the delivery id), not queued twice.
    let replica = Redis::start();
    replica.cli(&["REPLICAOF", "127.0.0.1", &b.redis.port.to_string()]);
    wait_for("the replica to be online", DEADLINE, || match online_replicas(b.redis.port) {
        1 => Ok(()),
        n => Err(format!("{n} online")),
    });
    let again = b.hook.send_github("/", "push", body.as_bytes(), &[("X-GitHub-Delivery", &delivery)]);
    assert_eq!(again.code, 200, "{again}");
    assert_eq!(again.json()["reason"], "duplicate delivery: already queued", "{again}");
}
