//! integration.yml as SPEC.md defines it: single step or list, `cwd`, `env`, `debug`,
//! `no-skip`, skipped snippets, the step environment, the `*` lines of a build that could not
//! run, the build timeout and a step that floods its output.

use crate::harness::*;
use std::time::Duration;

fn commit_line(sha: &str, msg: &str) -> String {
    format!("- commit {} ({})", &sha[..10], msg)
}

fn out(line: &str) -> String {
    format!("[passed]   . {line}")
}

#[test]
fn single_step_mapping_logs_commit_title_and_result() {
    let b = Backend::start(1, &[], &[]);
    let (git, sha, build) = b.build(
        "acme/single",
        &[("integration.yml", "step: hello\nshell: echo not-recorded\n")],
        "First line of the message\n\nA body that the log leaves out.",
    );
    assert_eq!(
        build.log,
        vec![
            commit_line(&sha, "First line of the message"),
            "- hello".to_string(),
            "[passed] echo not-recorded (0 seconds, exit code 0)".to_string(),
        ],
        "without `debug`, the snippet's output is not recorded"
    );
    assert_eq!(build.state, "passed");
    assert_eq!(build.slave, "slave-0");
    let r = b.hook.get(&format!("/status/{}?branch=main", git.name));
    assert_eq!(r.code, 200, "{r}");
    assert_eq!(r.text(), format!("{}\n", build.log.join("\n")));
    let slave_log = b.slaves[0].log();
    let finished: Vec<&str> =
        events(&slave_log, "build.finished").into_iter().filter(|l| kv(l, "id").as_deref() == Some(build.id.as_str())).collect();
    assert_eq!(finished.len(), 1, "one build.finished line for build {}:\n{slave_log}", build.id);
    let l = finished[0];
    assert_eq!(kv(l, "repo").as_deref(), Some("acme/single"), "{l}");
    assert_eq!(kv(l, "branch").as_deref(), Some("main"), "{l}");
    assert_eq!(kv(l, "sha").as_deref(), Some(&sha[..10]), "{l}");
    assert_eq!(kv(l, "slave").as_deref(), Some("slave-0"), "{l}");
    assert_eq!(kv(l, "result").as_deref(), Some("passed"), "{l}");
    assert!(kv(l, "seconds").map(|s| s.parse::<f64>().is_ok()).unwrap_or(false), "{l}");
}

#[test]
fn a_failure_skips_later_snippets_but_not_no_skip_ones() {
    let b = Backend::start(1, &[], &[]);
    let yml = r#"- step: one
  debug: true
  shell:
    - echo "ok=$OK"
    - "false"
    - echo skipped-one
    - no-skip echo "ok=$OK"
    - echo skipped-two
- step: two
  debug: true
  shell:
    - echo after
    - no-skip echo bye; exit 3
"#;
    let (git, sha, build) = b.build("acme/skips", &[("integration.yml", yml)], "skips");
    // A no-skip snippet's line shows the snippet as run: the prefix removed (README).
    assert_eq!(
        build.log,
        vec![
            commit_line(&sha, "skips"),
            "- one".into(),
            "[passed] echo \"ok=$OK\" (0 seconds, exit code 0)".into(),
            out("ok=true"),
            "[failed] false (0 seconds, exit code 1)".into(),
            "[skipped] echo skipped-one".into(),
            "[passed] echo \"ok=$OK\" (0 seconds, exit code 0)".into(),
            out("ok=false"),
            "[skipped] echo skipped-two".into(),
            "- two".into(),
            "[skipped] echo after".into(),
            "[failed] echo bye; exit 3 (0 seconds, exit code 3)".into(),
            "[failed]   . bye".into(),
        ] as Vec<String>,
        "raw log: {:#?}",
        build.log
    );
    assert_eq!(build.state, "failed");
    let r = b.hook.get(&format!("/status/{}", git.name));
    assert_eq!(r.code, 412, "{r}");
    assert_eq!(r.text(), format!("{}\n", build.log.join("\n")));
    let j = b.hook.get_json(&format!("/status/{}", git.name)).json();
    assert_eq!((j["state"].clone(), j["ok"].clone()), (json!("failed"), json!(false)), "{j}");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string()
}

#[test]
fn the_step_environment_has_exact_values() {
    let b = Backend::start(1, &[], &[]);
    let mut git = b.repo("acme/env-probe");
    git.checkout("feature/Env_x.1");
    let yml = r#"step: env probe
debug: true
env:
  FOO: bar
  NUM: 42
  FLAG: true
  FLOAT: 1.5
  SPACED: a b c
shell: |
  echo "HOST=$HOST"
  echo "BRANCH=$BRANCH"
  echo "COMMIT=$COMMIT"
  echo "COMMIT_SHORT=$COMMIT_SHORT"
  echo "MESSAGE=$MESSAGE"
  echo "TAG=$TAG"
  echo "TIMESTAMP=$TIMESTAMP"
  echo "OK=$OK"
  echo "CI=$CI"
  echo "REPO=$REPO"
  echo "BUILD_ID=$BUILD_ID"
  echo "FOO=$FOO NUM=$NUM FLAG=$FLAG FLOAT=$FLOAT SPACED=$SPACED"
  case "$LOG" in *"- commit $COMMIT_SHORT"*) echo "LOG=has-commit";; *) echo "LOG=missing";; esac
  echo "IN_CHECKOUT=$(test -f integration.yml && echo yes)"
  read -r line; echo "STDIN_RC=$?"
"#;
    git.write("integration.yml", yml);
    let sha = git.commit("Probe the environment");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    let build = wait_build(&b.redis, &id, LONG);
    let short = &sha[..10];
    let expected: Vec<String> = vec![
        format!("HOST={}", hostname()),
        "BRANCH=feature/Env_x.1".into(),
        format!("COMMIT={sha}"),
        format!("COMMIT_SHORT={short}"),
        "MESSAGE=Probe the environment".into(),
        format!("TAG=feature-Env-x-1-{short}"),
        format!("TIMESTAMP={}", git.commit_time(&sha)),
        "OK=true".into(),
        "CI=true".into(),
        "REPO=acme/env-probe".into(),
        format!("BUILD_ID={id}"),
        "FOO=bar NUM=42 FLAG=true FLOAT=1.5 SPACED=a b c".into(),
        "LOG=has-commit".into(),
        "IN_CHECKOUT=yes".into(),
        "STDIN_RC=1".into(),
    ];
    assert_eq!(build.log.len(), 3 + expected.len(), "log: {:#?}", build.log);
    assert_eq!(build.log[0], commit_line(&sha, "Probe the environment"));
    assert_eq!(build.log[1], "- env probe");
    assert!(
        build.log[2].starts_with("[passed] echo \"HOST=$HOST\"") && build.log[2].ends_with(" seconds, exit code 0)"),
        "result line: {:?}",
        build.log[2]
    );
    let got: Vec<String> = build.log[3..].to_vec();
    let want: Vec<String> = expected.iter().map(|l| out(l)).collect();
    assert_eq!(got, want);
    assert_eq!(build.state, "passed");
}

#[test]
fn the_step_environment_never_holds_secrets() {
    let redis = Redis::start();
    let file = redis.root.join("git-credentials");
    std::fs::write(&file, "https://file-user:file-s3cret@example.invalid\n").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hook = Hook::start(&redis, &[]);
    let slave = Slave::start(
        &redis,
        &[
            ("GIT_CREDENTIALS", "https://ci-user-s3cret:pw-s3cret-42@example.invalid"),
            ("GIT_CREDENTIALS_FILE", file.to_str().unwrap()),
            ("HOOK_TOKEN", "hook-s3cret"),
        ],
    );
    hook.wait_slaves("slave", 1);
    let git = GitRepo::new(&redis.root, "acme/secrets");
    git.write(
        "integration.yml",
        "step: secrets\ndebug: true\nshell:\n  - echo \"S=${GIT_CREDENTIALS-unset},${GIT_CREDENTIALS_FILE-unset},${SLAVE_CREDENTIALS_FD-unset},${REDIS_URL-unset},${HOOK_TOKEN-unset}\"\n  - env | grep -c s3cret || true\n",
    );
    let sha = git.commit("secrets");
    git.push();
    let id = hook.push_ok(&git, &sha);
    let build = wait_build(&redis, &id, LONG);
    assert_eq!(build.state, "passed", "a file:// clone must work with git credentials configured: {:#?}", build.log);
    assert!(build.has_line(&out("S=unset,unset,unset,unset,unset")), "{:#?}", build.log);
    assert!(build.has_line(&out("0")), "step env holds a secret: {:#?}", build.log);
    let log = slave.log();
    assert!(!log.contains("s3cret"), "the slave log shows a credential:\n{log}");
}

#[test]
fn cwd_runs_the_step_inside_the_checkout() {
    let b = Backend::start(1, &[], &[]);
    let yml = "- step: in sub\n  cwd: sub/dir\n  debug: true\n  shell:\n    - test -f marker.txt\n    - pwd\n";
    let (_git, sha, build) = b.build("acme/cwd", &[("integration.yml", yml), ("sub/dir/marker.txt", "here\n")], "cwd");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(
        build.log[..5].to_vec(),
        vec![
            commit_line(&sha, "cwd"),
            "- in sub".to_string(),
            "[passed] test -f marker.txt (0 seconds, exit code 0)".to_string(),
            "[passed] pwd (0 seconds, exit code 0)".to_string(),
            build.log[4].clone(),
        ]
    );
    assert!(build.log[4].starts_with("[passed]   . /") && build.log[4].ends_with("/sub/dir"), "pwd printed {:?}", build.log[4]);
    assert_eq!(build.log.len(), 5);
}

#[test]
fn cwd_escaping_the_checkout_is_refused() {
    let b = Backend::start(1, &[], &[]);
    let proof = b.root().join("escaped");
    let yml = format!("step: x\ncwd: ../..\nenv:\n  PROOF: {}\nshell: touch \"$PROOF\"\n", proof.display());
    let (_git, _sha, build) = b.build("acme/escape", &[("integration.yml", &yml)], "escape");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.has_line("* integration.yml line 2, step 1 (\"x\"): cwd \"../..\" leaves the checkout"), "{:#?}", build.log);
    assert!(!build.log.iter().any(|l| l.starts_with("[passed]")), "{:#?}", build.log);
    assert!(!proof.exists(), "the step ran outside the checkout");
}

#[test]
fn cwd_through_a_symlink_out_of_the_checkout_is_refused() {
    let b = Backend::start(1, &[], &[]);
    let git = b.repo("acme/symlink");
    let outside = b.root().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, git.work.join("out")).unwrap();
    git.write("integration.yml", "step: x\ncwd: out\nshell: touch escaped-through-link\n");
    let sha = git.commit("symlink");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    let build = wait_build(&b.redis, &id, LONG);
    assert!(!outside.join("escaped-through-link").exists(), "the step ran outside the checkout through a symlink");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.log.iter().any(|l| l.starts_with("* step 1 (\"x\"): cwd \"out\"")), "{:#?}", build.log);
}

#[test]
fn missing_integration_yml_is_reported() {
    let b = Backend::start(1, &[], &[]);
    let (git, sha, build) = b.build("acme/missing", &[("README", "no ci here\n")], "no yml");
    assert_eq!(build.log, vec![commit_line(&sha, "no yml"), "* integration.yml missing".to_string()]);
    assert_eq!(build.state, "failed");
    let r = b.hook.get(&format!("/status/{}", git.name));
    assert_eq!((r.code, r.text()), (412, format!("{}\n", build.log.join("\n"))));
}

#[test]
fn invalid_yaml_reports_its_line() {
    let b = Backend::start(1, &[], &[]);
    let yml = "- step: a\n  shell: \"true\"\n   bad: x\n";
    let (_git, sha, build) = b.build("acme/invalid", &[("integration.yml", yml)], "invalid");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert_eq!(build.log.len(), 2, "{:#?}", build.log);
    assert_eq!(build.log[0], commit_line(&sha, "invalid"));
    assert!(build.log[1].starts_with("* integration.yml line 3: "), "{:?}", build.log[1]);
}

#[test]
fn wrong_types_name_the_step_and_the_key() {
    let b = Backend::start(1, &[], &[]);
    // (integration.yml, exact line or prefix, exact?)
    let cases: &[(&str, &str, bool)] = &[
        (
            "- step: first\n  shell: \"true\"\n- step: build\n  shell: 42\n",
            "* integration.yml line 4, step 2 (\"build\"): \"shell\" must be a string or a list of strings",
            true,
        ),
        ("step: x\nshell: \"true\"\nenv: [a, b]\n", "* integration.yml line 3, step 1 (\"x\"): \"env\"", false),
        ("step: x\nshell: \"true\"\ndebug: \"yes\"\n", "* integration.yml line 3, step 1 (\"x\"): \"debug\"", false),
        ("step: x\nshell: \"true\"\ncwd: [a]\n", "* integration.yml line 3, step 1 (\"x\"): \"cwd\"", false),
        ("step: x\nshell: [\"true\", {a: b}]\n", "* integration.yml line 2, step 1 (\"x\"): \"shell\"", false),
        ("step: x\n", "* integration.yml line 1, step 1 (\"x\"): \"shell\"", false),
        ("- step: ok\n  shell: \"true\"\n- shell: \"true\"\n", "* integration.yml line 3, step 2", false),
        ("just a string\n", "* ", false),
    ];
    let mut failures = vec![];
    for (i, (yml, want, exact)) in cases.iter().enumerate() {
        let (_git, sha, build) = b.build(&format!("acme/types-{i}"), &[("integration.yml", yml)], "types");
        let ok = build.state == "failed"
            && build.log.len() == 2
            && build.log[0] == commit_line(&sha, "types")
            && if *exact { build.log[1] == *want } else { build.log[1].starts_with(want) };
        if !ok {
            failures.push(format!(
                "{yml:?}: expected [commit, {want:?}{}], got state={} log={:?}",
                if *exact { "" } else { "…" },
                build.state,
                build.log
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_long_snippet_is_cut_at_sixty_characters() {
    let b = Backend::start(1, &[], &[]);
    let snippet = format!("echo {}", "0123456789".repeat(7));
    let (_git, _sha, build) = b.build("acme/cut", &[("integration.yml", &format!("step: cut\nshell: {snippet}\n"))], "cut");
    let want = format!("[passed] {} (0 seconds, exit code 0)", cut(&snippet));
    assert!(want.contains("...") && cut(&snippet).len() == 63);
    assert_eq!(build.log.get(2), Some(&want), "{:#?}", build.log);
}

#[test]
fn the_exact_pushed_sha_is_checked_out() {
    let b = Backend::start(1, &[], &[]);
    let git = b.repo("acme/exact");
    let yml =
        "step: which\ndebug: true\nshell:\n  - echo \"version=$(cat version.txt)\"\n  - test \"$(git rev-parse HEAD)\" = \"$COMMIT\"\n";
    git.write("integration.yml", yml);
    git.write("version.txt", "1");
    let a = git.commit("version 1");
    git.write("version.txt", "2");
    let c = git.commit("version 2");
    git.push();
    // The older commit first, though the branch already points at the newer one.
    let id_a = b.hook.push_ok(&git, &a);
    let build_a = wait_build(&b.redis, &id_a, LONG);
    assert_eq!(build_a.state, "passed", "{:#?}", build_a.log);
    assert!(build_a.has_line(&out("version=1")), "{:#?}", build_a.log);
    assert_eq!(build_a.log[0], commit_line(&a, "version 1"));
    let id_c = b.hook.push_ok(&git, &c);
    let build_c = wait_build(&b.redis, &id_c, LONG);
    assert!(build_c.has_line(&out("version=2")), "{:#?}", build_c.log);
    assert_eq!(build_c.state, "passed");
}

#[test]
fn a_timeout_kills_the_step_and_its_background_children() {
    let b = Backend::start(1, &[], &[("SLAVE_BUILD_TIMEOUT", "3")]);
    let pidfile = b.root().join("bg.pid");
    let yml = format!(
        "step: slow\nenv:\n  PIDFILE: {}\nshell:\n  - 'sleep 300 & echo $! > \"$PIDFILE\"; wait'\n  - echo never\n",
        pidfile.display()
    );
    let start = std::time::Instant::now();
    let (_git, _sha, build) = b.build("acme/timeout", &[("integration.yml", &yml)], "timeout");
    let took = start.elapsed();
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(took < Duration::from_secs(60), "the build took {took:?} with SLAVE_BUILD_TIMEOUT=3");
    let prefix = "[failed] sleep 300 & echo $! > \"$PIDFILE\"; wait (";
    let line = build.log.iter().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line: {:#?}", build.log));
    let secs: u64 = line[prefix.len()..]
        .strip_suffix(" seconds, timed out)")
        .unwrap_or_else(|| panic!("not a timed-out line: {line:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("seconds in {line:?}"));
    // SLAVE_BUILD_TIMEOUT bounds the whole build, checkout included: the step had 3 seconds
    // minus the checkout's time, so its whole seconds are 0 to 3 (0 on a machine slow enough
    // to spend over 2 seconds in git).
    assert!(secs <= 3, "{line:?}");
    assert!(build.has_line("[skipped] echo never"), "{:#?}", build.log);
    wait_killed(&pidfile);
}

#[test]
fn fifty_megabytes_of_output_keep_the_tail_and_bounded_memory() {
    let b = Backend::start(1, &[], &[]);
    let line = "x".repeat(99);
    let yml = format!("step: flood\ndebug: true\nshell: |\n  yes '{line}' | head -n 500000\n  echo THE-END\n");
    let (git, _sha, build) = b.build("acme/flood", &[("integration.yml", &yml)], "flood");
    assert_eq!(build.state, "passed", "{:?}", &build.log[..build.log.len().min(5)]);
    let n = build.log.len();
    assert_eq!(build.log[n - 1], out("THE-END"), "the tail is kept");
    assert_eq!(build.log[n - 2], out(&line), "the tail is kept");
    let stored = build.fields.get("log").map(|l| l.len()).unwrap_or(0);
    assert!(stored < 10_000_000, "the stored log is {stored} bytes for 50 MB of output: no cap");
    let hwm = proc_kb(b.slaves[0].pid(), "VmHWM").expect("slave VmHWM");
    eprintln!("slave VmHWM after 50 MB of output: {hwm} kB");
    assert!(hwm < 64 * 1024, "slave peak RSS {hwm} kB while a step printed 50 MB");
    let r = b.hook.get(&format!("/status/{}", git.name));
    assert_eq!(r.code, 200);
    assert!(r.text().ends_with("[passed]   . THE-END\n"));
}

/// The documented caps: a snippet's output keeps its last 256 KiB and at most 8,192 lines; the
/// recorded log keeps its head and tail within SLAVE_MAX_LOG_BYTES (as JSON), one marker line
/// between.
const TAIL_LINES: u64 = 8192;

#[test]
fn floods_of_empty_and_short_lines_keep_the_log_capped_and_the_slave_small() {
    let max_log: usize = 131_072;
    let b = Backend::start(1, &[], &[("SLAVE_MAX_LOG_BYTES", &max_log.to_string())]);
    let yml = "step: flood\ndebug: true\nshell:\n  - yes '' | head -c 200000000\n  - yes abcd | head -c 100000000\n  - echo THE-END\n";
    let (_git, sha, build) = b.build("acme/floods", &[("integration.yml", yml)], "floods");
    let hwm = proc_kb(b.slaves[0].pid(), "VmHWM").expect("slave VmHWM");
    eprintln!("slave VmHWM after 200 MB of empty lines and 100 MB of short lines: {hwm} kB");
    assert_eq!(build.state, "passed", "{:?}", &build.log[..build.log.len().min(5)]);

    // What the build printed, line by line, before the build's cap: 200,000,000 empty lines and
    // 20,000,000 lines "abcd" (5 bytes each), each snippet's last 8,192 lines kept.
    let empty_dropped = 200_000_000 - TAIL_LINES;
    let abcd_dropped = 20_000_000 - TAIL_LINES;
    let produced = 2 + (1 + 1 + TAIL_LINES) + (1 + 1 + TAIL_LINES) + 2;
    let stored = build.fields.get("log").map(|l| l.len()).unwrap_or(0);
    assert!(stored <= max_log, "the stored log is {stored} bytes, over SLAVE_MAX_LOG_BYTES={max_log}");
    assert!(stored > max_log / 4, "the stored log is {stored} bytes: the head and tail are missing");
    let marker: Vec<(usize, u64)> = build
        .log
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.strip_prefix("... (")?.strip_suffix(" lines dropped) ...")?.parse().ok().map(|n| (i, n)))
        .collect();
    assert_eq!(marker.len(), 1, "one marker line: {marker:?}");
    let (at, dropped) = marker[0];
    assert_eq!(build.log.len() as u64 - 1 + dropped, produced, "every line is kept or counted");
    // The head: the commit, the step, the first snippet and its output.
    assert_eq!(build.log[0], commit_line(&sha, "floods"));
    assert_eq!(build.log[1], "- flood");
    assert!(build.log[2].starts_with("[passed] yes '' | head -c 200000000 (") && build.log[2].ends_with(" seconds, exit code 0)"));
    assert_eq!(build.log[3], format!("[passed]   . ({empty_dropped} earlier output lines dropped)"));
    assert!(build.log[4..at].iter().all(|l| l == "[passed]   . "), "the head holds the empty lines");
    // The tail: the short lines, then the last snippet.
    let n = build.log.len();
    assert_eq!(build.log[n - 1], out("THE-END"));
    assert_eq!(build.log[n - 2], "[passed] echo THE-END (0 seconds, exit code 0)");
    // With 64 KiB for the tail, it holds only "abcd" lines: the second snippet's own lines
    // (its result, the count of its dropped output) went into the dropped middle.
    assert!(n - 2 - (at + 1) > 1000, "the tail holds {} lines", n - 2 - (at + 1));
    assert!(build.log[at + 1..n - 2].iter().all(|l| *l == out("abcd")), "{:?}", &build.log[at + 1..at + 3]);
    assert!(!build.log.iter().any(|l| l.contains(&format!("({abcd_dropped} earlier"))), "that line is in the middle");
    assert!(hwm < 64 * 1024, "slave peak RSS {hwm} kB while steps printed 300 MB");
}
