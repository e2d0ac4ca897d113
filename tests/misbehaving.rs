//! Builds that misbehave: a step that forks a daemon out of its process group, one that closes
//! its stdout early, one that fills the disk of its workspace, one that never ends. Each build
//! ends with a status, the slave stays up, and the next build on the same slave runs and passes.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One slave (so "the next build" is on the same slave); `slave_env` applied last.
fn backend(slave_env: &[(&str, &str)]) -> Backend {
    Backend::start(1, &[], slave_env)
}

/// A repository holding `yml`, pushed, built to the end.
fn first_build(b: &Backend, name: &str, yml: &str) -> (GitRepo, Build) {
    let git = b.repo(name);
    git.write("integration.yml", yml);
    let sha = git.commit("misbehave");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    (git, wait_build(&b.redis, &id, LONG))
}

/// A new commit with a plain passing step: built on the same slave, passed.
fn next_build_passes(b: &Backend, git: &GitRepo, after: &Build) {
    assert!(!process_gone(b.slaves[0].pid()), "the slave died after {:?}", after.log);
    git.write("integration.yml", "step: next\nshell: \"true\"\n");
    let sha = git.commit("behave");
    git.push();
    let id = b.hook.push_ok(git, &sha);
    let next = wait_build(&b.redis, &id, LONG);
    assert_eq!(next.state, "passed", "the build after {:?}: {:#?}", after.log, next.log);
    assert!(next.has_line("[passed] true (0 seconds, exit code 0)"), "{:#?}", next.log);
    assert_eq!(next.slave, after.slave, "the next build ran on another slave");
}

/// The one log line that starts with `prefix` and ends with `suffix`.
fn line_like<'a>(build: &'a Build, prefix: &str, suffix: &str) -> &'a str {
    build
        .log
        .iter()
        .find(|l| l.starts_with(prefix) && l.ends_with(suffix))
        .unwrap_or_else(|| panic!("no log line `{prefix}…{suffix}` in {:#?}", build.log))
}

/// Kills the pids named in a file when dropped (daemons a step left behind).
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(&self.0).unwrap_or_default().split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

#[test]
fn a_step_that_forks_a_setsid_daemon_ends_and_the_next_build_passes() {
    let b = backend(&[]);
    let pidfile = b.root().join("daemon.pid");
    let _reaper = KillOnDrop(pidfile.clone());
    // The snippet waits (bounded) until the daemon has its own session: until then it is still
    // in the step's process group, which is killed when the snippet ends.
    let yml = format!(
        "step: daemon\nshell:\n  - |\n    setsid sleep 300 &\n    echo $! > '{}'\n    for i in $(seq 1000); do [ \"$(cut -d' ' -f6 /proc/$!/stat)\" = \"$!\" ] && break; sleep 0.01; done\n  - echo after\ndebug: true\n",
        pidfile.display()
    );
    let (git, build) = first_build(&b, "misbehave/daemon", &yml);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    line_like(&build, "[passed] setsid sleep 300 &... (", "exit code 0)");
    assert!(build.has_line("[passed]   . after"), "{:#?}", build.log);
    // The daemon really escaped the step's process group (so the test tested something).
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(!process_gone(pid), "the setsid daemon {pid} is not running: nothing escaped");
    next_build_passes(&b, &git, &build);
}

#[test]
fn a_step_that_closes_stdout_and_stderr_early_ends_and_the_next_build_passes() {
    let b = backend(&[]);
    let yml = "step: closes\ndebug: true\nshell:\n  - echo before; exec >&-; sleep 1; true\n  - exec >&- 2>&-; sleep 1; echo lost; true\n  - echo still here\n";
    let (git, build) = first_build(&b, "misbehave/closes", yml);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    line_like(&build, "[passed] echo before; exec >&-; sleep 1; true (", "exit code 0)");
    assert!(build.has_line("[passed]   . before"), "{:#?}", build.log);
    line_like(&build, "[passed] exec >&- 2>&-; sleep 1; echo lost; true (", "exit code 0)");
    assert!(build.has_line("[passed]   . still here"), "{:#?}", build.log);
    next_build_passes(&b, &git, &build);
}

/// A small tmpfs mounted on a directory; unmounted (lazily) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir).status();
        ok.map(|s| s.success()).unwrap_or(false).then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_step_that_fills_its_workspace_disk_ends_and_the_slave_keeps_building() {
    let b = backend(&[]);
    let repo = "misbehave/fill";
    let yml = "step: fill\nshell: head -c 50M /dev/zero > big\n";
    // The repository's whole cache directory on an 8 MiB tmpfs: a full disk for its workspace
    // only, not for the machine. README: `<SLAVE_CACHE>/<repo>/<branch>`, names encoded (`/` as
    // %2F).
    let dir = b.slaves[0].cache.join("misbehave%2Ffill");
    let tmpfs = Tmpfs::mount(&dir, "8m");
    let (git, build) = first_build(&b, repo, yml);
    let other = b.repo("misbehave/other");
    if tmpfs.is_none() {
        // No tmpfs here (not root?): a bounded 50 MB file on the real disk instead.
        eprintln!("tmpfs not mountable: the step writes a bounded 50 MB file");
        assert_eq!(build.state, "passed", "{:#?}", build.log);
        next_build_passes(&b, &git, &build);
        return;
    }
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    line_like(&build, "[failed] head -c 50M /dev/zero > big (", "exit code 1)");
    let big = dir.join("main/big");
    let size = std::fs::metadata(&big).map(|m| m.len()).unwrap_or(0);
    assert!(size > 4 << 20 && size < 8 << 20, "the step filled {size} bytes of an 8 MiB disk");

    // The slave keeps building: another repository on the same slave passes...
    other.write("integration.yml", "step: other\nshell: \"true\"\n");
    let sha = other.commit("other");
    other.push();
    let id = b.hook.push_ok(&other, &sha);
    let o = wait_build(&b.redis, &id, LONG);
    assert_eq!((o.state.as_str(), o.slave.as_str()), ("passed", build.slave.as_str()), "{:#?}", o.log);
    // ...the same repository's next push, on its still-full disk, ends with a status...
    git.write("integration.yml", "step: next\nshell: \"true\"\n");
    let sha = git.commit("on a full disk");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    let full = wait_build(&b.redis, &id, LONG);
    // Nothing can be written there: the fetch of the new commit fails with the system's ENOSPC
    // message, quoted from git's stderr.
    assert_eq!(full.state, "failed", "{:#?}", full.log);
    assert_eq!(full.log.len(), 2, "{:#?}", full.log);
    assert_eq!(full.log[0], format!("- commit {}", &sha[..10]));
    let why = format!("* checkout failed: git fetch origin {sha} failed (exit code 128): ");
    assert!(full.log[1].starts_with(&why) && full.log[1].contains("No space left on device"), "{:#?}", full.log);
    // ...and a re-run on a fresh clone (X-Reset frees the disk) passes.
    let r = b.hook.post(&format!("/build/{repo}"), &[("Authorization", &format!("Bearer {}", b.hook.token)), ("X-Reset", "true")], b"");
    assert_eq!(r.code, 202, "{r}");
    let reset = wait_build(&b.redis, r.json()["id"].as_str().unwrap(), LONG);
    assert_eq!(reset.state, "passed", "{:#?}", reset.log);
    assert!(reset.has_line("[passed] true (0 seconds, exit code 0)"), "{:#?}", reset.log);
    assert!(!big.exists(), "X-Reset kept the old workspace");
    drop(b);
    drop(tmpfs);
}

#[test]
fn a_step_that_never_ends_times_out_and_the_next_build_passes() {
    let b = backend(&[("SLAVE_BUILD_TIMEOUT", "3")]);
    let pidfile = b.root().join("forever.pid");
    let _reaper = KillOnDrop(pidfile.clone());
    // Ignores SIGTERM, so only the SIGKILL after the grace ends it; a child in its group too.
    let yml = format!(
        "step: forever\nshell:\n  - sleep 1000 & echo $$ $! > '{}'; trap '' TERM; while :; do sleep 1; done\n  - echo never\n",
        pidfile.display()
    );
    let (git, build) = first_build(&b, "misbehave/forever", &yml);
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    line_like(&build, "[failed] sleep 1000 & echo $$ $! > ", "timed out)");
    assert!(build.has_line("* build timed out after 3 seconds"), "{:#?}", build.log);
    assert!(build.has_line("[skipped] echo never"), "{:#?}", build.log);
    for pid in std::fs::read_to_string(&pidfile).unwrap().split_whitespace() {
        let pid: u32 = pid.parse().unwrap();
        wait_for(&format!("process {pid} of the timed-out step to be gone"), DEADLINE, || {
            if process_gone(pid) {
                Ok(())
            } else {
                Err("still running".into())
            }
        });
    }
    next_build_passes(&b, &git, &build);
}
