//! `inputs:` on a step: a step that passed with the same input trees (and snippets, env,
//! image, secrets) in the same repository is not run again; its log line is `[reused] <title>
//! (passed in build <id>)`; a push whose steps are all reused (or skipped by `when:`) is not
//! checked out. Oracle: each step run appends a line to a count file outside the checkout
//! (written by bash, not by the slave), so "ran" is read from the disk, not the log; "checked
//! out" is read from a file in the slave's checkout.

use crate::follow::Follower;
use crate::harness::*;
use std::path::{Path, PathBuf};

/// A 0777 directory for the count files, outside every checkout.
fn counts_dir(b: &Backend) -> PathBuf {
    let dir = b.root().join("counts");
    std::fs::create_dir_all(&dir).unwrap();
    world_writable(&dir);
    dir
}

/// How many times the step counting into `name` ran.
fn count(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name)).map(|t| t.lines().count()).unwrap_or(0)
}

/// A step titled `title` with `inputs: {inputs}` that appends to `<dir>/<title>`, then runs `then`.
fn step(dir: &Path, title: &str, inputs: &str, then: &str) -> String {
    format!("- step: {title}\n  inputs: {inputs}\n  shell: echo ran >> {}/{title}; {then}\n", dir.display())
}

/// Commits what was written, pushes it and builds it to the end.
fn push_build(b: &Backend, repo: &GitRepo, msg: &str) -> (String, Build) {
    let sha = repo.commit(msg);
    repo.push();
    let id = b.hook.push_ok(repo, &sha);
    let build = wait_build(&b.redis, &id, LONG);
    (id, build)
}

fn reused(build: &Build) -> Vec<&str> {
    build.log.iter().filter(|l| l.starts_with("[reused] ")).map(String::as_str).collect()
}

#[test]
fn a_pass_is_reused_until_a_change_under_its_inputs_and_never_for_empty_inputs() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let repo = b.repo("acme/inputs");
    let yml = [step(&dir, "compile", "[src, \"**/*.c\"]", "true"), step(&dir, "always", "[]", "true")].concat();
    repo.write("integration.yml", &yml);
    repo.write("src/a.txt", "one");
    repo.write("docs/readme", "one");
    let (first, build) = push_build(&b, &repo, "first");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!((count(&dir, "compile"), count(&dir, "always")), (1, 1));

    // A change outside its inputs: reused, not run; `inputs: []` runs.
    repo.write("docs/readme", "two");
    let (_, build) = push_build(&b, &repo, "docs only");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(reused(&build), [format!("[reused] compile (passed in build {first})")], "{:#?}", build.log);
    assert!(!build.log.iter().any(|l| l == "- compile"), "{:#?}", build.log);
    assert_eq!((count(&dir, "compile"), count(&dir, "always")), (1, 2), "{:#?}", build.log);

    // A change under a path input: run again.
    repo.write("src/a.txt", "two");
    let (third, build) = push_build(&b, &repo, "src");
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!(count(&dir, "compile"), 2, "{:#?}", build.log);

    // A path input is a name, never pathspec magic: `:magic` is the file of that name.
    let yml = [step(&dir, "compile", "[src, \"**/*.c\", \":magic\"]", "true"), step(&dir, "always", "[]", "true")].concat();
    repo.write("integration.yml", &yml);
    repo.write(":magic", "one");
    repo.write("magic", "one");
    let (_, build) = push_build(&b, &repo, "magic");
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    repo.write(":magic", "two");
    let (_, build) = push_build(&b, &repo, "magic changed");
    assert!(reused(&build).is_empty(), "a change of `:magic` runs it: {:#?}", build.log);
    assert_eq!(count(&dir, "compile"), 4, "{:#?}", build.log);
    repo.write("integration.yml", &[step(&dir, "compile", "[src, \"**/*.c\"]", "true"), step(&dir, "always", "[]", "true")].concat());
    // Back to the inputs and trees of the third build: its pass, though older, is reused.
    let (_, build) = push_build(&b, &repo, "back");
    assert_eq!(reused(&build), [format!("[reused] compile (passed in build {third})")], "{:#?}", build.log);
    assert_eq!(count(&dir, "compile"), 4, "{:#?}", build.log);

    // A new file matching a glob input: run again; the pass remembered is this build's.
    repo.write("lib/x.c", "int x;");
    let (fourth, build) = push_build(&b, &repo, "a c file");
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!(count(&dir, "compile"), 5, "{:#?}", build.log);
    repo.write("docs/readme", "three");
    let (_, build) = push_build(&b, &repo, "docs again");
    assert_eq!(reused(&build), [format!("[reused] compile (passed in build {fourth})")], "{:#?}", build.log);
    assert_eq!((count(&dir, "compile"), count(&dir, "always")), (5, 8));

    // A change of its snippets (integration.yml): run again.
    let yml = [step(&dir, "compile", "[src, \"**/*.c\"]", "echo changed"), step(&dir, "always", "[]", "true")].concat();
    repo.write("integration.yml", &yml);
    let (_, build) = push_build(&b, &repo, "new snippet");
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!(count(&dir, "compile"), 6, "{:#?}", build.log);

    // The memory is in Redis, under the repository, with a TTL.
    let keys = b.redis.keys("ci:passed:acme/inputs:*");
    assert_eq!(keys.len(), 6, "one pass per fingerprint run: {keys:?}");
    let ttl = b.redis.cli(&["TTL", &keys[0]]).int();
    assert!(ttl > 0, "ttl {ttl}");
    assert!(b.all_logs().contains("step.reused "), "the event line");
}

#[test]
fn another_repository_with_identical_content_does_not_reuse() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let yml = step(&dir, "compile", "[src]", "true");
    let files = [("integration.yml", yml.as_str()), ("src/a.txt", "same")];
    let (_, _, one) = b.build("acme/one", &files, "same");
    let (_, _, two) = b.build("acme/two", &files, "same");
    assert_eq!((one.state.as_str(), two.state.as_str()), ("passed", "passed"), "{:#?}", two.log);
    assert!(reused(&two).is_empty(), "{:#?}", two.log);
    assert_eq!(count(&dir, "compile"), 2);
}

#[test]
fn a_failed_step_is_not_remembered() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let repo = b.repo("acme/fails");
    repo.write("integration.yml", &step(&dir, "flaky", "[src]", "false"));
    repo.write("src/a.txt", "same");
    let (_, build) = push_build(&b, &repo, "one");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    repo.write("docs/readme", "other");
    let (_, build) = push_build(&b, &repo, "two");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!(count(&dir, "flaky"), 2);
    assert!(b.redis.keys("ci:passed:*").is_empty());
}

#[test]
fn a_follower_sees_the_reused_line_while_the_build_runs() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let gate = dir.join("gate");
    let repo = b.repo("acme/followed");
    let wait = format!("while [ ! -e '{}' ]; do sleep 0.01; done", gate.display());
    repo.write("integration.yml", &[step(&dir, "compile", "[src]", "true"), step(&dir, "gated", "[]", &wait)].concat());
    repo.write("src/a.txt", "same");
    std::fs::write(&gate, b"").unwrap();
    let (first, build) = push_build(&b, &repo, "one");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    std::fs::remove_file(&gate).unwrap();

    repo.write("docs/readme", "other");
    let sha = repo.commit("two");
    repo.push();
    let id = b.hook.push_ok(&repo, &sha);
    let f = Follower::start(b.hook.addr, &format!("/status/acme/followed?follow=1&id={id}"));
    let want = format!("[reused] compile (passed in build {first})");
    f.wait_line(&want);
    f.wait_line("- gated");
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "running", "seen live, before the end");
    std::fs::write(&gate, b"").unwrap();
    let (code, lines) = f.finish();
    assert_eq!(code, 200);
    assert!(lines.contains(&want), "{lines:#?}");
    assert_eq!(count(&dir, "compile"), 1);
}

/// The text of `name` in the slave's checkout of the repository, found by walking its cache.
fn in_checkout(b: &Backend, name: &str) -> String {
    fn walk(dir: &Path, name: &str) -> Option<PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.ends_with(Path::new("checkout").join(name)) {
                return Some(path);
            }
            if path.is_dir() && !path.is_symlink() {
                if let Some(found) = walk(&path, name) {
                    return Some(found);
                }
            }
        }
        None
    }
    let path = walk(&b.slaves[0].cache, name).unwrap_or_else(|| panic!("no checkout holds {name}"));
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn a_push_whose_steps_are_all_reused_or_skipped_needs_no_checkout() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let repo = b.repo("acme/nocheckout");
    let release = format!("- step: release\n  shell: echo ran >> {}/release\n  when: {{branch: release/*}}\n", dir.display());
    repo.write("integration.yml", &[step(&dir, "compile", "[src]", "true"), release].concat());
    repo.write("src/a.txt", "same");
    repo.write("NOTES", "one");
    let (first, build) = push_build(&b, &repo, "one");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(in_checkout(&b, "NOTES"), "one");

    repo.write("NOTES", "two");
    let sha = repo.commit("two");
    repo.push();
    let id = b.hook.push_ok(&repo, &sha);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    assert_eq!(
        build.log,
        [
            format!("- commit {} (two)", &sha[..10]),
            format!("[reused] compile (passed in build {first})"),
            "[skipped] step release (when: branch main does not match release/*)".to_string(),
        ]
    );
    assert_eq!(in_checkout(&b, "NOTES"), "one", "the checkout was not touched");
    assert_eq!((count(&dir, "compile"), count(&dir, "release")), (1, 0));

    // A change under the inputs: checked out and run.
    repo.write("src/a.txt", "changed");
    repo.write("NOTES", "three");
    let (_, build) = push_build(&b, &repo, "three");
    assert!(reused(&build).is_empty(), "{:#?}", build.log);
    assert_eq!(in_checkout(&b, "NOTES"), "three");
    assert_eq!(count(&dir, "compile"), 2);
}

#[test]
fn a_fork_build_neither_reads_nor_writes_passes() {
    let Some(image) = crate::containers::image() else { return };
    let b = Backend::start(1, &[("HOOK_FORK_PULLS", "build")], &[("SLAVE_DEFAULT_IMAGE", image)]);
    let yml = "step: compile\ninputs: [integration.yml]\nshell: echo ran\n";
    let (git, head) = crate::pulls::target_with_request(&b, "acme/fpass", "refs/pull/9/head", yml);
    let mut ids = Vec::new();
    for action in ["opened", "synchronize"] {
        let body = crate::pulls::github_pull("acme/fpass", &git.file_url(), 9, &head, "mallory/fpass", action);
        let id = crate::pulls::accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
        let build = wait_build(&b.redis, &id, LONG);
        assert_eq!(build.state, "passed", "{:#?}", build.log);
        assert!(reused(&build).is_empty(), "{:#?}", build.log);
        assert!(build.log.iter().any(|l| l.starts_with("[passed] echo ran ")), "it ran: {:#?}", build.log);
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    assert!(b.redis.keys("ci:passed:*").is_empty(), "a fork's pass is never written");
}

#[test]
fn a_commit_the_mirror_already_holds_is_not_fetched_again() {
    let b = Backend::start(1, &[], &[]);
    let dir = counts_dir(&b);
    let mut repo = b.repo("acme/fastforward");
    repo.write("integration.yml", &step(&dir, "compile", "[src]", "true"));
    repo.write("src/a.txt", "same");
    let (first, build) = push_build(&b, &repo, "main");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let old_main = repo.head();
    // A feature branch changes what the step does not read, and is built (its step reused).
    repo.checkout("feature");
    repo.write("NOTES", "feature");
    let (_, build) = push_build(&b, &repo, "feature");
    assert_eq!(reused(&build), [format!("[reused] compile (passed in build {first})")], "{:#?}", build.log);
    let feature = repo.head();
    // The server's main moves elsewhere; a push of main naming the feature's commit (a
    // fast-forward, its hook answered after) needs nothing the slave's mirror does not hold.
    // Oracle: a fetch of main would move the mirror's main to the server's.
    repo.checkout("elsewhere");
    repo.write("NOTES", "elsewhere");
    let elsewhere = repo.commit("elsewhere");
    run(git(&repo.work).args(["push", "-q", "-f", "origin", &format!("{elsewhere}:refs/heads/main")]));
    repo.checkout("main");
    run(git(&repo.work).args(["reset", "-q", "--hard", &feature]));
    let id = b.hook.push_ok(&repo, &feature);
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.log, [format!("- commit {} (feature)", &feature[..10]), format!("[reused] compile (passed in build {first})")]);
    assert_eq!(count(&dir, "compile"), 1);
    let mirror = std::fs::read_dir(b.slaves[0].cache.join("acme%2Ffastforward"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".mirror-")))
        .expect("the mirror");
    let main_there = run(git(&mirror).args(["rev-parse", "refs/heads/main"]));
    assert_eq!(main_there.trim(), old_main, "the mirror's main moved: it was fetched");
}
