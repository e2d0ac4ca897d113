//! Redis's durability made visible: the hook reads `appendonly`, `appendfsync` and
//! `maxmemory-policy` at start and every HOOK_DURABILITY_CHECK seconds; `/metrics` shows
//! `ci_redis_durable 1|0` and the log says what a 2xx is worth when it is not durable. With
//! CONFIG refused (an ACL user without it) the metric is absent and a comment and a WARN line
//! say why. Settings are changed on the real Redis with CONFIG SET.

use crate::harness::*;

/// The value of `ci_redis_durable` in /metrics, `None` when absent.
fn durable(hook: &Hook) -> Option<String> {
    hook.metrics().lines().find_map(|l| l.strip_prefix("ci_redis_durable ").map(str::to_string))
}

fn wait_durable(hook: &Hook, want: &str, after: &str) {
    wait_for(&format!("ci_redis_durable {want} after {after}"), DEADLINE, || match durable(hook) {
        Some(v) if v == want => Ok(()),
        other => Err(format!("{other:?}")),
    });
}

/// The text of the `event` lines after the level (`redis.not_durable appendonly=... : ...`),
/// with the level.
fn lines_of(hook: &Hook, event: &str) -> Vec<(String, String)> {
    let log = hook.log();
    events(&log, event)
        .iter()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (_time, level, rest) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            (level.to_string(), rest.trim_start().to_string())
        })
        .collect()
}

fn config_set(redis: &Redis, key: &str, value: &str) {
    assert_eq!(redis.cli(&["CONFIG", "SET", key, value]), Resp::Simple("OK".into()), "CONFIG SET {key} {value}");
}

#[test]
fn ci_redis_durable_and_the_log_follow_the_redis_settings() {
    let redis = Redis::start(); // appendonly yes, appendfsync always (the harness's settings)
    let hook = Hook::start(&redis, &[("HOOK_DURABILITY_CHECK", "1")]);
    wait_durable(&hook, "1", "start (appendonly yes, appendfsync always)");
    assert_eq!(
        lines_of(&hook, "redis.durable"),
        vec![(
            "INFO".to_string(),
            "redis.durable appendonly=yes appendfsync=always maxmemory_policy=noeviction: a 2xx is in the AOF before it is sent"
                .to_string()
        )]
    );

    let no_aof = "without the AOF, queued builds acknowledged since the last snapshot are lost when Redis restarts";
    let fsync_no = "with appendfsync no, the OS decides when the AOF reaches the disk: a power cut loses acknowledged pushes";
    let evicts = "maxmemory-policy allkeys-lru evicts keys when memory is full: queued builds and records can vanish; use noeviction";
    // (settings to apply, the metric then, the WARN line expected, if any)
    type Step<'a> = (Vec<(&'a str, &'a str)>, &'a str, Option<String>);
    let steps: Vec<Step> = vec![
        (vec![("appendonly", "no")], "0", Some(format!("appendonly=no appendfsync=always maxmemory_policy=noeviction: {no_aof}"))),
        (vec![("appendonly", "yes"), ("appendfsync", "everysec")], "1", None),
        (vec![("appendfsync", "no")], "0", Some(format!("appendonly=yes appendfsync=no maxmemory_policy=noeviction: {fsync_no}"))),
        (
            vec![("appendfsync", "always"), ("maxmemory-policy", "allkeys-lru")],
            "0",
            Some(format!("appendonly=yes appendfsync=always maxmemory_policy=allkeys-lru: {evicts}")),
        ),
        (
            vec![("appendonly", "no")],
            "0",
            Some(format!("appendonly=no appendfsync=always maxmemory_policy=allkeys-lru: {no_aof}; {evicts}")),
        ),
        (vec![("appendonly", "yes"), ("maxmemory-policy", "noeviction")], "1", None),
    ];
    let mut warned = 0;
    for (settings, want, warn) in &steps {
        for (k, v) in settings {
            config_set(&redis, k, v);
        }
        let what = format!("CONFIG SET {settings:?}");
        wait_durable(&hook, want, &what);
        if let Some(text) = warn {
            warned += 1;
            let lines = wait_for(&format!("a redis.not_durable line after {what}"), DEADLINE, || {
                let lines = lines_of(&hook, "redis.not_durable");
                if lines.len() >= warned {
                    Ok(lines)
                } else {
                    Err(format!("{lines:?}"))
                }
            });
            assert_eq!(lines[warned - 1], ("WARN".to_string(), format!("redis.not_durable {text}")), "after {what}");
        }
    }
    // One line per change, not one per check.
    assert_eq!(lines_of(&hook, "redis.not_durable").len(), warned, "{}", hook.log());
    assert_eq!(lines_of(&hook, "redis.durable").len(), 3, "{}", hook.log());
}

#[test]
fn without_config_permission_the_metric_is_absent_and_the_log_says_why() {
    let redis = Redis::start();
    let acl = ["ACL", "SETUSER", "hook", "on", ">hook-pw", "~*", "&*", "+@all", "-config"];
    assert_eq!(redis.cli(&acl), Resp::Simple("OK".into()));
    let url = format!("redis://hook:hook-pw@127.0.0.1:{}/0", redis.port);
    // The default interval (60 s): the first check is at start.
    let hook = Hook::start(&redis, &[("REDIS_URL", &url)]);
    let metrics = wait_for("the durability comment in /metrics", DEADLINE, || {
        let m = hook.metrics();
        if m.contains("\n# ci_redis_durable unknown: redis CONFIG GET unavailable\n") {
            Ok(m)
        } else {
            Err(m)
        }
    });
    assert!(!metrics.lines().any(|l| l.starts_with("ci_redis_durable ")), "a ci_redis_durable value without CONFIG:\n{metrics}");
    assert!(metrics.lines().any(|l| l == "ci_redis_up 1"), "the hook works without CONFIG:\n{metrics}");
    let lines = lines_of(&hook, "redis.durability_unknown");
    assert_eq!(lines.len(), 1, "{}", hook.log());
    assert_eq!(lines[0].0, "WARN");
    assert!(lines[0].1.contains("NOPERM"), "the line names Redis's refusal: {}", lines[0].1);
    assert!(
        lines[0].1.ends_with(": CONFIG GET is refused, so the hook cannot tell whether a 2xx survives a Redis crash"),
        "{}",
        lines[0].1
    );
}

/// The metric's value, `None` when absent.
fn auth(hook: &Hook) -> Option<String> {
    hook.metrics().lines().find_map(|l| l.strip_prefix("ci_redis_auth ").map(str::to_string))
}

#[test]
fn ci_redis_auth_and_a_warning_every_check_while_redis_answers_without_a_password() {
    let redis = Redis::start(); // no requirepass: anything reaching the port owns the CI
    let open = Hook::start(&redis, &[("HOOK_DURABILITY_CHECK", "1")]);
    wait_for("ci_redis_auth 0", DEADLINE, || match auth(&open) {
        Some(v) if v == "0" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    // Repeated at every check (each minute by default), not only when it changes.
    let warned = wait_for("two redis.open warnings", DEADLINE, || {
        let lines = lines_of(&open, "redis.open");
        if lines.len() >= 2 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    });
    assert!(warned.iter().all(|(level, _)| level == "WARN"), "{warned:?}");
    assert!(warned[0].1.contains("set requirepass and give it in REDIS_URL"), "{warned:?}");

    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", "s3cret-pw"]), Resp::Simple("OK".into()));
    let url = format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port);
    let locked = Hook::start(&redis, &[("REDIS_URL", &url), ("HOOK_DURABILITY_CHECK", "1")]);
    wait_for("ci_redis_auth 1", DEADLINE, || match auth(&locked) {
        Some(v) if v == "1" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    assert!(lines_of(&locked, "redis.open").is_empty(), "{}", locked.log());
}
