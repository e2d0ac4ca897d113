//! Secrets per repository (SLAVE_SECRETS_FILE): a step gets a secret only when it lists the
//! name under `secrets:` and the file's first line for that name matches its repository and
//! record branch; another repository's step, a fork's build and a line for another branch get
//! nothing (unset, one `* secrets not granted here: …` line); values are masked in the record and
//! the live stream; they reach a container step's environment; the file is refused at start for
//! its mode, its owner or a bad line (by number, never showing a value), and it never stays in
//! the slave's environment.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// A fresh value (unique per test) that no other text of the test holds.
fn value(what: &str) -> String {
    format!("{what}-{}", &delivery_id().replace('-', "")[..16])
}

/// `text` written to `<dir>/secrets` with `mode`.
fn secrets_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let file = dir.join("secrets");
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    file
}

fn reversed(s: &str) -> String {
    s.chars().rev().collect()
}

/// Fails naming each value that `text` (from `whence`) holds.
fn assert_holds_none(values: &[&str], whence: &str, text: &str) {
    for v in values {
        assert!(!text.contains(v), "{whence} holds the secret {v:?}");
    }
}

/// Lists both names; prints whether each is set (a set one is masked) and DEPLOY's value
/// reversed (which masking does not hide, so the test sees which value came).
const USE_YML: &str = "step: use\ndebug: true\nsecrets: [DEPLOY, TOKEN]\nshell:\n\
  - echo \"deploy=${DEPLOY-unset} token=${TOKEN-unset}\"; printf '%s\\n' \"${DEPLOY-}\" | rev\n";

#[test]
fn a_step_gets_the_first_line_matching_its_repository_and_branch_and_nothing_else() {
    let (main, release, any, zeta) = (value("main"), value("release"), value("any"), value("zeta"));
    let b = Backend::start(0, &[], &[]);
    let file = secrets_file(
        b.root(),
        &format!(
            "# deploy keys\n\nDEPLOY acme/app main {main}\nDEPLOY acme/* release/* {release}\nDEPLOY acme/app * {any}\nTOKEN zeta/* * {zeta}\n"
        ),
        0o600,
    );
    // The old way, TOKEN in the slave's environment: a name the file defines is the file's alone.
    let slave = Slave::start(&b.redis, &[("SLAVE_SECRETS_FILE", file.to_str().unwrap()), ("TOKEN", "from-the-slave-env")]);
    b.hook.wait_slaves("slave", 1);
    let all = [main.as_str(), release.as_str(), any.as_str(), zeta.as_str()];

    // (repository, branch, what the step prints, the not-granted line)
    let cases = [
        ("acme/app", "main", vec!["deploy=*** token=unset".to_string(), reversed(&main)], Some("TOKEN")),
        // Line 2 matches before the more specific line 3: the first matching line wins.
        ("acme/app", "release/2", vec!["deploy=*** token=unset".to_string(), reversed(&release)], Some("TOKEN")),
        ("acme/app", "dev", vec!["deploy=*** token=unset".to_string(), reversed(&any)], Some("TOKEN")),
        // Another repository of the owner, a branch no line names for it.
        ("acme/lib", "main", vec!["deploy=unset token=unset".to_string(), String::new()], Some("DEPLOY, TOKEN")),
        ("acme-evil/app", "main", vec!["deploy=unset token=unset".to_string(), String::new()], Some("DEPLOY, TOKEN")),
        ("zeta/x", "main", vec!["deploy=unset token=***".to_string(), String::new()], Some("DEPLOY")),
    ];
    let mut first_id = String::new();
    let mut repos: std::collections::HashMap<&str, GitRepo> = std::collections::HashMap::new();
    for (repo, branch, want, not_granted) in &cases {
        let git = repos.entry(repo).or_insert_with(|| b.repo(repo));
        git.checkout(branch);
        git.write("integration.yml", USE_YML);
        let sha = git.commit("use");
        git.push();
        let id = b.hook.push_ok(git, &sha);
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!(build.state, "passed", "{repo} {branch}: {:#?}", build.log);
        assert_eq!(&build.printed(), want, "{repo} {branch}: {:#?}", build.log);
        let note = not_granted.map(|n| format!("* secrets not granted here: {n}"));
        assert_eq!(build.log.get(2), note.as_ref(), "{repo} {branch}: the line after the step's title: {:#?}", build.log);
        assert_holds_none(&all, &format!("the record of {repo} {branch}"), &format!("{:?}", build.fields));
        if first_id.is_empty() {
            // What a follower of the build is sent (its stream replayed): masked too.
            let followed = b.hook.get(&format!("/status/{repo}?follow=1")).text();
            assert!(followed.contains("  . deploy=*** token=unset\n"), "{followed}");
            assert_holds_none(&all, "GET /status?follow=1", &followed);
            first_id = id;
        }
    }

    // The live stream of the first build: the masked line, no value.
    let stream = crate::follow::stream(&b, &first_id);
    assert!(stream.iter().any(|(f, v)| f == "line" && v == "  . deploy=*** token=unset"), "{stream:?}");
    assert_holds_none(&all, "the live stream", &format!("{stream:?}"));

    // The slave's environment never held the file's name nor a value; its log names secrets only.
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/environ", slave.pid())).unwrap()).into_owned();
    assert!(environ.contains("SLAVE_CREDENTIALS_FD="), "the slave did not restart without SLAVE_SECRETS_FILE: {environ}");
    assert!(!environ.contains("SLAVE_SECRETS_FILE="), "SLAVE_SECRETS_FILE is in the slave's environ");
    assert_holds_none(&all, "the slave's /proc/<pid>/environ", &environ);
    let log = slave.log();
    assert_holds_none(&all, "the slave's log", &log);
    let line = events(&log, "slave.secrets").first().map(|l| l.to_string()).unwrap_or_default();
    assert_eq!(kv(&line, "names").as_deref(), Some("DEPLOY,TOKEN"), "{log}");
    let steps: Vec<(Option<String>, Option<String>, Option<String>)> =
        events(&log, "step.secrets").iter().map(|l| (kv(l, "repo"), kv(l, "granted"), kv(l, "not_granted"))).collect();
    assert_eq!(steps.len(), cases.len(), "{log}");
    assert_eq!(steps[0], (Some("acme/app".into()), Some("DEPLOY".into()), Some("TOKEN".into())), "{log}");
    assert_eq!(steps[5], (Some("zeta/x".into()), Some("TOKEN".into()), Some("DEPLOY".into())), "{log}");
}

#[test]
fn another_repository_finds_no_secret_in_any_environment_while_the_granted_build_runs() {
    let secret = value("deploy");
    let (half1, half2) = secret.split_at(8);
    let b = Backend::start(0, &[], &[]);
    let file = secrets_file(b.root(), &format!("DEPLOY acme/owner main {secret}\n"), 0o600);
    let slave = Slave::start(&b.redis, &[("SLAVE_SECRETS_FILE", file.to_str().unwrap()), ("SLAVE_EXECUTORS", "2")]);
    b.hook.wait_slaves("slave", 1);
    // The owner's build holds the secret in its environment until the snooper is done.
    let marks = b.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    world_writable(&marks);
    let (running, done) = (marks.join("running"), marks.join("done"));
    let owner_yml = format!(
        "step: hold\ntimeout: 120\nsecrets: [DEPLOY]\nshell: touch {}; while [ ! -e {} ]; do sleep 0.05; done\n",
        running.display(),
        done.display()
    );
    let (_owner, owner_id) = b.queue("acme/owner", &owner_yml, "hold");
    wait_for("the owner's step to run", LONG, || if running.exists() { Ok(()) } else { Err("not yet".to_string()) });
    // A step of another repository lists the name, and searches every process environment and
    // command line it can read; the pattern reaches grep through a descriptor, so no command
    // line of the step holds the joined value.
    let grep = "grep -c -F -f <(printf '%s%s\\n' \"$HALF1\" \"$HALF2\")";
    let snoop_yml = format!(
        "step: snoop\ndebug: true\nsecrets: [DEPLOY]\nenv:\n  HALF1: {half1}\n  HALF2: {half2}\nshell:\n\
         \x20 - echo \"deploy=${{DEPLOY-unset}}\"\n\
         \x20 - n=$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c -F \"$HALF1\"); [ \"$n\" -ge 1 ] && echo environs-read\n\
         \x20 - cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | {grep} || true\n\
         \x20 - cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | {grep} || true\n\
         \x20 - no-skip touch {}\n",
        done.display()
    );
    let (_snoop, snoop_id) = b.queue("mallory/snoop", &snoop_yml, "snoop");
    let snoop = wait_build(&b.redis, &snoop_id, LONG);
    let owner = wait_build(&b.redis, &owner_id, LONG);
    assert_eq!(owner.state, "passed", "{:#?}", owner.log);
    assert_eq!(snoop.state, "passed", "{:#?}", snoop.log);
    assert!(snoop.has_line("* secrets not granted here: DEPLOY"), "{:#?}", snoop.log);
    // `environs-read`: the search reads environments (its own holds HALF1), so the zeros can fail.
    assert_eq!(snoop.printed(), ["deploy=unset", "environs-read", "0", "0"], "{:#?}", snoop.log);
    // The check above can fail: the owner's step really held the value while the snooper ran.
    assert!(owner.log_text().contains("[passed] touch"), "{:#?}", owner.log);
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/environ", slave.pid())).unwrap()).into_owned();
    assert!(!environ.contains(&secret), "the value is in the slave's /proc/<pid>/environ");
}

#[test]
fn a_fork_gets_no_secret_and_a_container_step_gets_its_own() {
    let Some(image) = crate::containers::image() else { return };
    let secret = value("deploy");
    let (half1, half2) = secret.split_at(8);
    let b = Backend::start(0, &[("HOOK_FORK_PULLS", "build")], &[]);
    let file = secrets_file(b.root(), &format!("DEPLOY acme/* ** {secret}\n"), 0o400);
    let _slave = Slave::start(&b.redis, &[("SLAVE_SECRETS_FILE", file.to_str().unwrap()), ("SLAVE_DEFAULT_IMAGE", image)]);
    b.hook.wait_slaves("slave", 1);
    let yml = format!(
        "step: boxed\ndebug: true\nsecrets: [DEPLOY]\nenv:\n  HALF1: {half1}\n  HALF2: {half2}\nshell:\n\
         \x20 - if [ \"${{DEPLOY-}}\" = \"$HALF1$HALF2\" ]; then echo granted; else echo \"deploy=${{DEPLOY-unset}}\"; fi\n\
         \x20 - echo \"$DEPLOY\"\n"
    );
    // The target's own push, in a container (SLAVE_DEFAULT_IMAGE): the value is in its env.
    let (git, head) = crate::pulls::target_with_request(&b, "acme/fb", "refs/pull/9/head", &yml);
    let mut main = git;
    main.checkout("main");
    main.write("integration.yml", &yml);
    let sha = main.commit("boxed");
    main.push();
    let build = wait_build(&b.redis, &b.hook.push_ok(&main, &sha), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(build.printed(), ["granted", "***"], "{:#?}", build.log);
    assert!(!build.log_text().contains("secrets not granted"), "{:#?}", build.log);
    // The same step in a fork's request: the line matches `acme/*` and `pull/9` (`**`), and still nothing.
    let body = crate::pulls::github_pull("acme/fb", &main.file_url(), 9, &head, "mallory/fb", "opened");
    let r = b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    let build = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(build.printed(), ["deploy=unset", ""], "{:#?}", build.log);
    assert_eq!(build.log.get(2).map(String::as_str), Some("* secrets not granted here: DEPLOY"), "{:#?}", build.log);
    assert!(!build.log_text().contains(&secret), "{:#?}", build.log);
}

#[test]
fn a_bad_secrets_file_stops_the_slave_at_start_and_never_shows_a_value() {
    let hidden = value("Hush");
    let dir = fresh_dir(&test_name());
    let refuse = |text: &str, mode: u32| {
        let file = secrets_file(&dir, text, mode);
        let (code, err) = crate::secrets::slave_refuses(&[("SLAVE_SECRETS_FILE", file.to_str().unwrap())]);
        assert!(!err.contains(&hidden), "the error shows the value: {err}");
        (code, err, format!("slave: SLAVE_SECRETS_FILE={:?}", file.to_str().unwrap()))
    };
    let good = format!("DEPLOY acme/* * {hidden}\n");
    let (code, err, source) = refuse(&good, 0o640);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().next(), Some(format!("{source}: mode 0640 lets other users read it; give it mode 0400 or 0600 (a Swarm secret: `mode: 0400`; a bind-mounted file: chmod 600 on the host)").as_str()), "{err}");
    let cases = [
        (format!("# ok\nOK * * fine-value\ndeploy acme/* * {hidden}\n"), 3, "the name must be [A-Z_][A-Z0-9_]*"),
        (format!("DEPLOY acme/* {hidden}\n"), 1, "expected <NAME> <repo glob> <branch glob> <value>"),
        ("\n\nSHORT * * abc\n".to_string(), 3, "the value is shorter than 4 bytes"),
    ];
    for (text, line, why) in cases {
        let (code, err, source) = refuse(&text, 0o600);
        assert_eq!(code, 2, "{err}");
        assert!(err.starts_with(&format!("{source}, line {line}: {why}")), "{err}");
    }
    // Owned by someone else than root (the slave's user here).
    let file = secrets_file(&dir, &good, 0o600);
    if is_root() {
        std::os::unix::fs::chown(&file, Some(12345), None).unwrap();
        let (code, err) = crate::secrets::slave_refuses(&[("SLAVE_SECRETS_FILE", file.to_str().unwrap())]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("belongs to uid 12345; it must belong to the slave's user (uid 0) or root"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
