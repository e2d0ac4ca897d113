//! `when:` on a step: branch globs (pushes, `pull/<N>` and `tags/<name>` records), events, and
//! the files changed (`before..after` of a push, merge base..head of a request; a new branch, an
//! unknown `before`, a force-push and a coalesced build count as everything changed). A step that
//! does not hold logs `[skipped] step <title> (when: …)` and the build passes; a bad `when` fails
//! the build naming the step and key. Oracle: each step that runs leaves a mark file named after
//! it (written by bash, not by the slave), so "ran" is read from the disk, not from the log.

use crate::harness::*;
use std::path::Path;

/// A step titled `name` that leaves the mark `<marks>/<name>` and has `when: {when}`.
fn step(marks: &Path, name: &str, when: &str) -> String {
    format!("- step: {name}\n  shell: touch {}/{name}\n  when: {when}\n", marks.display())
}

/// The marks left so far, sorted; each is removed, so the next build starts with none.
fn take_marks(marks: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(marks).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for n in &names {
        std::fs::remove_file(marks.join(n)).unwrap();
    }
    names
}

fn marks_dir(b: &Backend) -> std::path::PathBuf {
    let marks = b.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    world_writable(&marks);
    marks
}

/// The `[skipped] step` lines of a build.
fn skipped(build: &Build) -> Vec<&str> {
    build.log.iter().filter(|l| l.starts_with("[skipped] step ")).map(String::as_str).collect()
}

fn accepted(r: &Response) -> String {
    assert_eq!(r.code, 202, "{r}");
    r.json()["id"].as_str().unwrap_or_else(|| panic!("no id: {r}")).to_string()
}

/// A signed GitHub push of `sha` on `branch` with the payload's `before` set.
fn push_with_before(b: &Backend, repo: &GitRepo, branch: &str, sha: &str, before: &str) -> String {
    let mut body = github_push(&repo.name, &repo.file_url(), branch, sha, "m", "main");
    body["before"] = json!(before);
    body["created"] = json!(false);
    accepted(&b.hook.send_github("/", "push", body.to_string().as_bytes(), &[]))
}

#[test]
fn branch_globs_and_events_on_a_push_a_tag_and_a_request() {
    let b = Backend::start(1, &[("HOOK_BUILD_TAGS", "1")], &[]);
    let marks = marks_dir(&b);
    let repo = b.repo("acme/refs");
    let yml = [
        step(&marks, "main-only", "{branch: main}"),
        step(&marks, "releases", "{branch: release/*}"),
        step(&marks, "listed", "{branch: [dev, ma*, tags/v*, pull/*]}"),
        step(&marks, "on-tag", "{event: tag}"),
        step(&marks, "push-or-request", "{event: [push, pull_request]}"),
        step(&marks, "both-keys", "{branch: main, event: pull_request}"),
        "- step: always\n  shell: \"true\"\n".to_string(),
    ]
    .concat();
    repo.write("integration.yml", &yml);
    let sha = repo.commit("when by ref");
    repo.push();
    run(git(&repo.work).args(["tag", "v1.2", &sha]));
    run(git(&repo.work).args(["push", "-q", "origin", "refs/tags/v1.2", &format!("{sha}:refs/pull/5/head")]));

    // A push to main.
    let build = wait_build(&b.redis, &b.hook.push_ok(&repo, &sha), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["listed", "main-only", "push-or-request"], "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        [
            "[skipped] step releases (when: branch main does not match release/*)",
            "[skipped] step on-tag (when: event push is not tag)",
            "[skipped] step both-keys (when: event push is not pull_request)",
        ],
        "{:#?}",
        build.log
    );
    assert!(build.has_line("- always"), "{:#?}", build.log);

    // A tag: its record's branch is tags/v1.2, its event tag.
    let mut body = github_push("acme/refs", &repo.file_url(), "main", &sha, "m", "main");
    body["ref"] = json!("refs/tags/v1.2");
    let build = wait_build(&b.redis, &accepted(&b.hook.send_github("/", "push", body.to_string().as_bytes(), &[])), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["listed", "on-tag"], "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        [
            "[skipped] step main-only (when: branch tags/v1.2 does not match main)",
            "[skipped] step releases (when: branch tags/v1.2 does not match release/*)",
            "[skipped] step push-or-request (when: event tag is none of push, pull_request)",
            "[skipped] step both-keys (when: branch tags/v1.2 does not match main)",
        ],
        "{:#?}",
        build.log
    );

    // A request: its record's branch is pull/5 (not its head branch), its event pull_request.
    let body = crate::pulls::github_pull("acme/refs", &repo.file_url(), 5, &sha, "acme/refs", "opened");
    let build = wait_build(&b.redis, &accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[])), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["listed", "push-or-request"], "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        [
            "[skipped] step main-only (when: branch pull/5 does not match main)",
            "[skipped] step releases (when: branch pull/5 does not match release/*)",
            "[skipped] step on-tag (when: event pull_request is not tag)",
            "[skipped] step both-keys (when: branch pull/5 does not match main)",
        ],
        "{:#?}",
        build.log
    );
}

/// A re-run asked for by `POST /build` has the event `manual`: a step for manual runs only is
/// skipped on the push and runs on the re-run of the same commit.
#[test]
fn a_manual_run_holds_event_manual() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let yml = [step(&marks, "deploy", "{event: manual}"), step(&marks, "scheduled", "{event: [cron, manual], branch: main}")].concat();
    let (_repo, _sha, build) = b.build("acme/manual", &[("integration.yml", &yml)], "manual only");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), Vec::<String>::new(), "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        ["[skipped] step deploy (when: event push is not manual)", "[skipped] step scheduled (when: event push is none of cron, manual)"],
        "{:#?}",
        build.log
    );
    let bearer = format!("Bearer {}", b.hook.token);
    let id = accepted(&b.hook.post("/build/acme/manual?branch=main", &[("Authorization", &bearer)], b""));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["deploy", "scheduled"], "{:#?}", build.log);
    assert!(skipped(&build).is_empty(), "{:#?}", build.log);
}

/// A skipped step neither fails the build nor stops what follows; after a failure the `no-skip`
/// snippets of a step whose `when` holds still run, and a step whose `when` does not hold is
/// skipped with its reason (not as a failure's skip).
#[test]
fn a_skipped_step_keeps_no_skip_semantics() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let yml = format!(
        "- step: fails\n  shell: \"false\"\n{}- step: cleanup\n  shell: [\"no-skip touch {m}/cleanup\", \"touch {m}/never\"]\n  when: {{event: push}}\n",
        step(&marks, "deploy", "{branch: release/*}"),
        m = marks.display()
    );
    let (_git, _sha, build) = b.build("acme/noskip", &[("integration.yml", &yml)], "no-skip");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["cleanup"], "{:#?}", build.log);
    assert_eq!(skipped(&build), ["[skipped] step deploy (when: branch main does not match release/*)"], "{:#?}", build.log);
    assert!(build.has_line(&format!("[skipped] {}", cut(&format!("touch {}/never", marks.display())))), "{:#?}", build.log);
}

#[test]
fn paths_changed_by_a_push_new_branch_and_force_push() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let mut repo = b.repo("acme/paths");
    let yml = [
        step(&marks, "src", "{path: src/**}"),
        step(&marks, "docs", "{path: [\"docs/**/*.md\", README.md]}"),
        step(&marks, "src-on-main", "{path: \"src/*.rs\", branch: main}"),
    ]
    .concat();
    repo.write("integration.yml", &yml);
    repo.write("src/lib.rs", "1");
    repo.write("docs/guide/a.md", "1");
    let first = repo.commit("first");
    repo.push();
    // The sample payload is a new branch's (before is all zeros): everything changed.
    let build = wait_build(&b.redis, &b.hook.push_ok(&repo, &first), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["docs", "src", "src-on-main"], "{:#?}", build.log);
    wait_for("the slave's build.diff line of the new branch", DEADLINE, || {
        let logs = b.all_logs();
        if logs.contains("all=\"no before: a new branch, or not a push\"") {
            Ok(())
        } else {
            Err(logs)
        }
    });

    // A push that changes src/ only.
    repo.write("src/lib.rs", "2");
    let second = repo.commit("src only");
    repo.push();
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "main", &second, &first), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["src", "src-on-main"], "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        ["[skipped] step docs (when: the 1 changed file does not match any of docs/**/*.md, README.md)"],
        "{:#?}",
        build.log
    );
    let diff = wait_for("the build.diff line of the second build", DEADLINE, || {
        let logs = b.all_logs();
        let line = events(&logs, "build.diff").into_iter().find(|l| l.contains(&format!("sha={}", &second[..10]))).map(String::from);
        line.ok_or_else(|| logs.clone())
    });
    assert_eq!(kv(&diff, "files").as_deref(), Some("1"), "{diff}");
    assert!(kv(&diff, "diff_ms").and_then(|ms| ms.parse::<f64>().ok()).is_some(), "{diff}");

    // docs and a nested src file: `src/*.rs` does not cross `/`, `src/**` and `docs/**/*.md` do.
    repo.write("docs/guide/b.md", "1");
    repo.write("src/deep/x.rs", "1");
    let third = repo.commit("docs and a nested src file");
    repo.push();
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "main", &third, &second), LONG);
    assert_eq!(take_marks(&marks), ["docs", "src"], "{:#?}", build.log);
    assert_eq!(skipped(&build), ["[skipped] step src-on-main (when: none of the 2 changed files matches src/*.rs)"], "{:#?}", build.log);

    // A force-push whose before the mirror never saw: everything changed.
    repo.write("README.txt", "unrelated");
    let forced = repo.commit("force");
    repo.push();
    let unseen = "1234567890".repeat(4);
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "main", &forced, &unseen), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["docs", "src", "src-on-main"], "{:#?}", build.log);
    assert!(skipped(&build).is_empty(), "{:#?}", build.log);

    // A new branch (before all zeros) on another branch: everything changed, branch still checked.
    repo.checkout("feature/y");
    let on_branch = repo.commit("new branch");
    repo.push();
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "feature/y", &on_branch, &"0".repeat(40)), LONG);
    assert_eq!(take_marks(&marks), ["docs", "src"], "{:#?}", build.log);
    assert_eq!(skipped(&build), ["[skipped] step src-on-main (when: branch feature/y does not match main)"], "{:#?}", build.log);

    // A push that changes nothing (before = after): every path step is skipped.
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "feature/y", &on_branch, &on_branch), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), Vec::<String>::new(), "{:#?}", build.log);
    assert_eq!(skipped(&build)[0], "[skipped] step src (when: no file changed, none matches src/**)", "{:#?}", build.log);
}

/// Whoever holds the web-hook token names `before`: an option-like or non-sha value is never
/// handed to git (the build counts everything as changed) and plants nothing.
#[test]
fn a_hostile_before_is_no_option_and_changes_everything() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let repo = b.repo("acme/hostile");
    repo.write("integration.yml", &step(&marks, "src", "{path: src/**}"));
    let base = repo.commit("base");
    repo.push();
    wait_build(&b.redis, &b.hook.push_ok(&repo, &base), LONG);
    take_marks(&marks);
    repo.write("README.md", "not src");
    let sha = repo.commit("docs only");
    repo.push();
    let planted = b.root().join("planted");
    for before in [format!("--output={}", planted.display()), "HEAD~1".to_string(), format!("{base}^")] {
        let id = push_with_before(&b, &repo, "main", &sha, &before);
        let job: Value = serde_json::from_str(&b.redis.hgetall(&format!("ci:build:{id}"))["push"]).unwrap();
        assert_eq!(job.get("before"), None, "{before}: {job}");
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!(build.state, "passed", "{before}: {:#?}", build.log);
        assert_eq!(take_marks(&marks), ["src"], "{before}: everything counts as changed: {:#?}", build.log);
        assert!(!planted.exists(), "{before}: git wrote {}", planted.display());
    }
    // The oracle that the push above changes no src file: with its real before, src is skipped.
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "main", &sha, &base), LONG);
    assert_eq!(take_marks(&marks), Vec::<String>::new(), "{:#?}", build.log);
}

/// A request is diffed from its merge base with the target: a change the target got after the
/// head branched off is not the request's (a two-dot diff against the target would say it is).
/// GitHub's pull request and GitLab's merge request (`merge-requests/<N>`, its own head ref) alike.
#[test]
fn a_request_is_diffed_against_its_merge_base() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let mut repo = b.repo("acme/req");
    let yml = [
        step(&marks, "src", "{path: src/**}"),
        step(&marks, "docs", "{path: docs/**}"),
        step(&marks, "gitlab", "{branch: merge-requests/*}"),
    ]
    .concat();
    repo.write("integration.yml", &yml);
    repo.write("src/a.rs", "1");
    repo.write("docs/a.md", "1");
    repo.commit("base");
    repo.push();
    repo.checkout("feature/x");
    repo.write("src/a.rs", "2");
    let head = repo.commit("the request changes src");
    run(git(&repo.work).args(["push", "-q", "origin", &format!("{head}:refs/pull/9/head"), &format!("{head}:refs/merge-requests/9/head")]));
    repo.checkout("main");
    run(git(&repo.work).args(["reset", "-q", "--hard", "HEAD~1"]));
    repo.write("docs/a.md", "2");
    let target = repo.commit("the target moves on in docs");
    repo.push();
    // Independent check of the setup: head..target touches docs.
    let two_dot = run(git(&repo.work).args(["diff", "--name-only", &head, &target]));
    assert!(two_dot.contains("docs/a.md"), "{two_dot}");

    let body = crate::pulls::github_pull("acme/req", &repo.file_url(), 9, &head, "acme/req", "opened");
    let build = wait_build(&b.redis, &accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[])), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["src"], "{:#?}", build.log);
    assert_eq!(
        skipped(&build),
        [
            "[skipped] step docs (when: the 1 changed file does not match docs/**)",
            "[skipped] step gitlab (when: branch pull/9 does not match merge-requests/*)",
        ],
        "{:#?}",
        build.log
    );

    let body = crate::pulls::gitlab_mr("acme/req", &repo.file_url(), 9, &head, 14, "open");
    let delivery = delivery_id();
    let headers = [("X-Gitlab-Event", "Merge Request Hook"), ("X-Gitlab-Token", b.hook.token.as_str()), ("Idempotency-Key", &delivery)];
    let build = wait_build(&b.redis, &accepted(&b.hook.post("/", &headers, body.to_string().as_bytes())), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["gitlab", "src"], "{:#?}", build.log);
    assert_eq!(skipped(&build), ["[skipped] step docs (when: the 1 changed file does not match docs/**)"], "{:#?}", build.log);
}

/// Past 10,000 changed names the list is not read: everything counts as changed.
#[test]
fn more_than_ten_thousand_changed_files_count_as_everything() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let repo = b.repo("acme/wide");
    repo.write("integration.yml", &step(&marks, "nowhere", "{path: nowhere/**}"));
    let base = repo.commit("base");
    repo.push();
    wait_build(&b.redis, &b.hook.push_ok(&repo, &base), LONG);
    take_marks(&marks);
    for dir in 0..11 {
        for file in 0..1000 {
            repo.write(&format!("many/{dir}/{file}"), "");
        }
    }
    let sha = repo.commit("11,000 files");
    repo.push();
    let count = run(git(&repo.work).args(["diff", "--name-only", &base, &sha])).lines().count();
    assert_eq!(count, 11_000, "the setup's own count");
    let build = wait_build(&b.redis, &push_with_before(&b, &repo, "main", &sha, &base), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["nowhere"], "{:#?}", build.log);
    wait_for("the slave's build.diff line saying why", DEADLINE, || {
        let logs = b.all_logs();
        if logs.contains("all=\"more than 10000 changed files\"") {
            Ok(())
        } else {
            Err(logs)
        }
    });
}

/// A push that replaces a queued build (coalescing) builds the commits of both: its own `before`
/// would miss the first push's changes, so the build counts everything as changed.
#[test]
fn a_coalesced_build_counts_everything_changed() {
    let b = Backend::start(1, &[], &[]);
    let marks = marks_dir(&b);
    let (blocker, _) = b.occupy("acme/busy");
    let repo = b.repo("acme/co");
    repo.write("integration.yml", &[step(&marks, "src", "{path: src/**}"), step(&marks, "docs", "{path: docs/**}")].concat());
    repo.write("src/a.rs", "1");
    repo.write("docs/a.md", "1");
    let base = repo.commit("base");
    repo.push();
    let id = b.hook.push_ok(&repo, &base);
    repo.write("src/a.rs", "2");
    let one = repo.commit("src");
    repo.push();
    let r = b.hook.send_github(
        "/",
        "push",
        &{
            let mut body = github_push("acme/co", &repo.file_url(), "main", &one, "m", "main");
            body["before"] = json!(base);
            body.to_string().into_bytes()
        },
        &[],
    );
    assert_eq!((r.code, r.json()["id"].as_str()), (202, Some(id.as_str())), "{r}");
    repo.write("docs/a.md", "2");
    let two = repo.commit("docs");
    repo.push();
    let r = b.hook.send_github(
        "/",
        "push",
        &{
            let mut body = github_push("acme/co", &repo.file_url(), "main", &two, "m", "main");
            body["before"] = json!(one);
            body.to_string().into_bytes()
        },
        &[],
    );
    assert_eq!((r.code, r.json()["id"].as_str(), r.json()["coalesced"].as_bool()), (202, Some(id.as_str()), Some(true)), "{r}");
    let job: Value = serde_json::from_str(&b.redis.hgetall(&format!("ci:build:{id}"))["push"]).unwrap();
    assert_eq!(job.get("before"), None, "a coalesced job's before is unknown: {job}");
    blocker.release();
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(take_marks(&marks), ["docs", "src"], "{:#?}", build.log);
}

#[test]
fn a_bad_when_fails_the_build_naming_the_step_and_key() {
    let b = Backend::start(1, &[], &[]);
    let cases = [
        ("{event: [push, nightly]}", "\"when: event\" \"nightly\" is not an event (push, pull_request, tag, cron, manual)"),
        ("{branches: main}", "unknown \"when\" key \"branches\" (keys: branch, event, path)"),
        ("{path: []}", "\"when: path\" is an empty list"),
        ("{branch: {a: b}}", "\"when: branch\" must be a glob or a list of globs"),
        ("main", "\"when\" must be a mapping of branch, event and path"),
    ];
    for (i, (when, why)) in cases.iter().enumerate() {
        let yml = format!("- step: first\n  shell: \"true\"\n- step: deploy\n  shell: \"true\"\n  when: {when}\n");
        let (_git, _sha, build) = b.build(&format!("acme/bad-{i}"), &[("integration.yml", &yml)], "bad when");
        assert_eq!(build.state, "failed", "{when}: {:#?}", build.log);
        assert_eq!(
            build.log.last().map(String::as_str),
            Some(format!("* integration.yml line 5, step 2 (\"deploy\"): {why}").as_str()),
            "{when}"
        );
        assert_eq!(build.log.len(), 2, "nothing ran: {:#?}", build.log);
    }
}
