//! HOOK_ROUTING=mod|jump. ENQUEUE's Lua selects the index from what the hook computed;
//! it is held here against `routing::Routing::index` on a real Redis. A jump hook routes pushes
//! where the rule says, a hook with another rule refuses to start, and slaves re-route a vanished
//! index's jobs by the rule stored in `ci:routing`.

use crate::harness::*;
use ci_backend::routing::Routing;
use ci_backend::store::queue::{self, Enqueued, Job};

/// Makes `n` members (indexes 0..n) of cluster `slave` live for the next hour: ENQUEUE counts N
/// from them. Fewer than before: the extra ones are removed.
fn fake_members(redis: &Redis, n: u32) {
    redis.cli(&["DEL", "ci:members:slave"]);
    let until = ((now() + 3600) * 1000).to_string();
    let mut args = vec!["ZADD".to_string(), "ci:members:slave".to_string()];
    for i in 0..n {
        args.push(until.clone());
        args.push(i.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redis.cli(&args);
    redis.cli(&["SADD", "ci:clusters", "slave"]);
}

fn push_of(repo: &str, branch: &str) -> ci_backend::payload::Push {
    let text = json!({ "repo": repo, "branch": branch, "sha": "1".repeat(40), "clone_url": "file:///nowhere" }).to_string();
    ci_backend::store::job::decode(&text).unwrap()
}

/// The rule is written once in Rust; the Lua only selects (CRC mod N, or the largest jump point
/// below N). Both selections, through the real script, for N from 1 to 1000.
#[test]
fn the_enqueue_script_puts_each_repository_where_routing_index_says() {
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut differ = 0;
    for rule in [Routing::Mod, Routing::Jump] {
        redis.cli(&["DEL", "ci:routing"]);
        for n in [1u32, 2, 3, 4, 5, 7, 8, 10, 13, 16, 100, 1000] {
            fake_members(&redis, n);
            for i in 0..40 {
                let repo = format!("lua-{}/repo-{i}", i % 7);
                let branch = format!("{}-{n}", rule.as_str());
                let push = push_of(&repo, &branch);
                let job = Job {
                    push: &push,
                    delivery: None,
                    reset: false,
                    keep: 50,
                    cancel_running: queue::CancelRunning::None,
                    routing: rule,
                    alone: false,
                };
                let reply = queue::enqueue(&mut c, &job).unwrap();
                let Enqueued::Queued { slave, .. } = reply else { panic!("{rule:?} {repo} n={n}: {reply:?}") };
                assert_eq!(slave, format!("slave-{}", rule.index(&repo, n)), "{rule:?} {repo} n={n}");
                differ += usize::from(Routing::Mod.index(&repo, n) != Routing::Jump.index(&repo, n));
            }
        }
        assert_eq!(redis.get("ci:routing").as_deref(), Some(rule.as_str()), "the first enqueue stores the rule when absent");
    }
    assert!(differ > 100, "the names must tell the rules apart: they differ in only {differ} cases");

    // A job of another rule than ci:routing's is refused, and nothing is queued.
    let before = redis.get("ci:seq");
    let push = push_of("lua/other", "main");
    let job = Job {
        push: &push,
        delivery: None,
        reset: false,
        keep: 50,
        cancel_running: queue::CancelRunning::None,
        routing: Routing::Mod,
        alone: false,
    };
    assert_eq!(queue::enqueue(&mut c, &job).unwrap(), Enqueued::OtherRouting { agreed: "jump".into() });
    assert_eq!(redis.get("ci:seq"), before, "no build was created");
}

/// A hook with HOOK_ROUTING=jump routes pushes where `Routing::Jump` says (N = 3); a hook with
/// the default `mod` then refuses to start, naming both rules and how to switch.
#[test]
fn a_jump_hook_routes_by_jump_and_a_mod_hook_then_refuses_to_start() {
    let redis = Redis::start();
    fake_members(&redis, 3);
    let hook = Hook::start(&redis, &[("HOOK_ROUTING", "jump")]);
    assert_eq!(redis.get("ci:routing").as_deref(), Some("jump"), "the first hook stores its rule");
    assert_eq!(events(&hook.log(), "hook.routing").first().and_then(|l| kv(l, "rule")).as_deref(), Some("jump"));
    let names: Vec<String> = (0..12).map(|i| format!("jumper/repo-{i}")).collect();
    assert!(
        names.iter().any(|n| Routing::Jump.index(n, 3) != Routing::Mod.index(n, 3)),
        "some name must route differently under mod, or the test proves nothing"
    );
    for name in &names {
        let body = github_push(name, "file:///nowhere", "main", &"2".repeat(40), "routing", "main");
        let r = hook.send_github("/", "push", body.to_string().as_bytes(), &[]);
        assert_eq!(r.code, 202, "{name}: {r}");
        assert_eq!(r.json()["slave"], json!(format!("slave-{}", Routing::Jump.index(name, 3))), "{name}: {r}");
    }

    // A second jump hook agrees; a mod hook (the default) refuses.
    let again = Hook::start(&redis, &[("HOOK_ROUTING", "jump")]);
    drop(again);
    let mut cmd = scrubbed(&bin("hook"));
    cmd.env("HOOK_ADDR", "127.0.0.1:0").env("REDIS_URL", redis.url()).current_dir(&redis.root);
    let mut proc = Proc::spawn("hook (mod)", cmd, redis.root.join("mod-hook.out"), redis.root.join("mod-hook.err"));
    let status = proc.wait_exit(DEADLINE);
    let stderr = std::fs::read_to_string(redis.root.join("mod-hook.err")).unwrap();
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for part in ["HOOK_ROUTING=mod", "routes by jump", "ci:routing", "HOOK_ROUTING=jump", "redis-cli DEL ci:routing"] {
        assert!(stderr.contains(part), "{part:?} missing from: {stderr}");
    }
    assert!(events(&proc.stdout(), "hook.listening").is_empty(), "it must not listen: {}", proc.stdout());
    assert_eq!(redis.get("ci:routing").as_deref(), Some("jump"), "the refused hook changed nothing");
}

/// Scale-down under jump: the jobs of the vanished index 2 (one running, one queued) move to
/// where `Routing::Jump` puts their repository among 2 slaves, read by the slaves from
/// `ci:routing` (they have no HOOK_ROUTING). The names are ones that mod would put elsewhere.
#[test]
fn after_a_scale_down_jump_reroutes_jobs_where_routing_says() {
    let mut b = Backend::start(3, &[("HOOK_ROUTING", "jump")], &[]);
    let mut picks = (0..)
        .map(|i| format!("rejump/repo-{i}"))
        .filter(|n| Routing::Jump.index(n, 3) == 2 && Routing::Jump.index(n, 2) != Routing::Mod.index(n, 2));
    let (x, y) = (picks.next().unwrap(), picks.next().unwrap());
    let blocker = Blocker::new(b.root(), "rejump");
    let (_gx, id_x) = b.queue(&x, &blocker.yml(), "blocker");
    blocker.wait_started();
    let (_gy, id_y) = b.queue(&y, "step: s\nshell: \"true\"\n", "queued behind the blocker");
    for id in [&id_x, &id_y] {
        assert_eq!(read_build(&b.redis, id).unwrap().slave, "slave-2", "build {id} is routed to index 2 first");
    }
    assert!(b.redis.lrange("ci:queue:slave:2").contains(&id_y), "job {id_y} waits in ci:queue:slave:2");

    let two = b.slaves.iter().position(|s| s.index == 2).unwrap();
    b.slaves[two].kill9();
    b.hook.wait_slaves("slave", 2);
    blocker.release();
    for (name, id) in [(&x, &id_x), (&y, &id_y)] {
        let build = wait_build(&b.redis, id, LONG);
        let want = format!("slave-{}", Routing::Jump.index(name, 2));
        assert_eq!((build.slave.as_str(), build.state.as_str()), (want.as_str(), "passed"), "{name} (build {id})");
    }
    let rerouted =
        events(&b.all_logs(), "build.rerouted").iter().filter(|l| [&id_x, &id_y].contains(&&kv(l, "id").unwrap_or_default())).count();
    assert!(rerouted >= 2, "both jobs logged build.rerouted:\n{}", b.all_logs());
}

/// Which clusters offer a push's hints is decided in ENQUEUE's Lua (it reads live membership in
/// the same atomic step); the tokens of a cluster name are defined in Rust
/// (`routing::cluster_tokens`, which the slave's config checks its name with). The two are held
/// together here over many generated names: the script queues a push exactly when every hint
/// is one of the Rust tokens.
#[test]
fn the_enqueue_script_reads_cluster_names_as_routing_cluster_tokens() {
    use ci_backend::routing::cluster_tokens;
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let mut rng = Rng(0x005e_edc1_u64);
    const CHARS: &[u8] = b"abcdxyzABCDXYZ0189_";
    let until = ((now() + 3600) * 1000).to_string();
    let (mut offered, mut refused) = (0, 0);
    for i in 0..300 {
        let mut name = "slave".to_string();
        for _ in 0..rng.below(4) {
            name.push('-');
            for _ in 0..1 + rng.below(4) {
                name.push(*rng.pick(CHARS) as char);
            }
        }
        let tokens = cluster_tokens(&name).unwrap_or_else(|| panic!("{name:?}: the generator makes valid names only"));
        // Hints as the hook parses them (lower case): some of the tokens, or a near miss.
        let mut hints: Vec<String> = tokens.iter().filter(|_| rng.chance(2)).cloned().collect();
        match rng.below(4) {
            0 => hints.push(format!("{}x", rng.pick(&tokens))),
            1 => hints.push(rng.pick(&tokens)[1..].to_string()),
            2 => hints.push(format!("{}-{}", rng.pick(&tokens), rng.pick(&tokens))),
            _ => {}
        }
        hints.retain(|h| !h.is_empty());
        let rust_offers = hints.iter().all(|h| tokens.contains(h));
        redis.cli(&["DEL", "ci:clusters"]);
        redis.cli(&["SADD", "ci:clusters", &name]);
        redis.cli(&["ZADD", &format!("ci:members:{name}"), &until, "0"]);
        let mut push = push_of(&format!("tokens/r{i}"), "main");
        push.hints = hints.clone();
        let job = Job {
            push: &push,
            delivery: None,
            reset: false,
            keep: 50,
            cancel_running: queue::CancelRunning::None,
            routing: Routing::Mod,
            alone: false,
        };
        let reply = queue::enqueue(&mut c, &job).unwrap();
        match &reply {
            Enqueued::Queued { slave, .. } => assert_eq!(slave, &format!("{name}-0")),
            Enqueued::NoSlave { live } => assert_eq!(live, &name),
            other => panic!("{name:?} {hints:?}: {other:?}"),
        }
        let lua_offers = matches!(reply, Enqueued::Queued { .. });
        assert_eq!(lua_offers, rust_offers, "cluster {name:?}, hints {hints:?}: tokens {tokens:?}, script said {reply:?}");
        if rust_offers {
            offered += 1;
        } else {
            refused += 1;
        }
    }
    assert!(offered > 50 && refused > 50, "both answers must be tried: {offered} offered, {refused} refused");
}
