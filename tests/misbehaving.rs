//! Builds that misbehave: a step that forks a daemon out of its process group, one that closes
//! its stdout early, one that fills the disk of its workspace, one that never ends, a git server
//! that accepts and never answers. Each build ends with a status, the slave stays up, and the
//! next build on the same slave runs and passes; a slave stopped mid-clone exits.

use crate::harness::*;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
fn a_setsid_daemon_a_step_leaves_is_killed_and_the_next_build_passes() {
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
    build.line_like("[passed] setsid sleep 300 &... (", "exit code 0)");
    assert!(build.has_line("[passed]   . after"), "{:#?}", build.log);
    // The daemon escaped the step's process group (it was its own session leader when the
    // snippet ended), and still it does not outlive the step: the slave, its subreaper, kills it.
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_for("the escaped daemon to be killed", DEADLINE, || if process_gone(pid) { Ok(()) } else { Err(format!("{pid} alive")) });
    let log = b.slaves[0].log();
    let killed = events(&log, "build.escapee_killed");
    assert!(killed.iter().any(|l| kv(l, "pid").as_deref() == Some(pid.to_string().as_str())), "{killed:?}");
    next_build_passes(&b, &git, &build);
}

#[test]
fn a_step_that_closes_stdout_and_stderr_early_ends_and_the_next_build_passes() {
    let b = backend(&[]);
    let yml = "step: closes\ndebug: true\nshell:\n  - echo before; exec >&-; sleep 1; true\n  - exec >&- 2>&-; sleep 1; echo lost; true\n  - echo still here\n";
    let (git, build) = first_build(&b, "misbehave/closes", yml);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    build.line_like("[passed] echo before; exec >&-; sleep 1; true (", "exit code 0)");
    assert!(build.has_line("[passed]   . before"), "{:#?}", build.log);
    build.line_like("[passed] exec >&- 2>&-; sleep 1; echo lost; true (", "exit code 0)");
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
    // The repository's whole cache directory (its mirror and checkouts) on an 8 MiB tmpfs: a full
    // disk for its workspace only, not for the machine. docs/security.md: `<SLAVE_CACHE>/<repo>/<branch>/checkout`,
    // names encoded (`/` as %2F).
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
    build.line_like("[failed] head -c 50M /dev/zero > big (", "exit code 1)");
    let big = dir.join("main/checkout/big");
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
    // Nothing can be written there: the fetch of the new commit into the repository's mirror (on
    // the same disk) fails with the system's ENOSPC message, quoted from git's stderr.
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
    build.line_like("[failed] sleep 1000 & echo $$ $! > ", "timed out)");
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

/// A TCP server on 127.0.0.1 that accepts connections, keeps them open and never answers (git's
/// smart-HTTP client then waits for the ref advertisement forever).
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Silent {
    fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, stop, held) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(vec![])));
        let (a, s, h) = (Arc::clone(&accepted), Arc::clone(&stop), Arc::clone(&held));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    a.fetch_add(1, Ordering::SeqCst);
                    h.lock().unwrap().push(conn);
                }
            }
        });
        Silent { port, accepted, stop, held }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/x.git", self.port)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.held.lock().unwrap().clear();
    }
}

/// A push of `repo` whose clone URL is `url` (for a commit that exists nowhere), built to the end.
fn push_url(b: &Backend, repo: &str, url: &str) -> String {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let body = github_push(repo, url, "main", sha, "never fetched", "main").to_string();
    let r = b.hook.send_github("/", "push", body.as_bytes(), &[]);
    assert_eq!(r.code, 202, "{r}");
    r.json()["id"].as_str().unwrap().to_string()
}

/// `(pid, ppid, comm)` of every process, from /proc/<pid>/stat.
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, ppid, stat[open + 1..close].to_string()));
    }
    out
}

/// The git processes among the descendants of `root`.
fn git_descendants(root: u32) -> Vec<(u32, String)> {
    let all = processes();
    let mut family = vec![root];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(all.iter().filter(|(_, pp, _)| *pp == parent).map(|(p, _, _)| *p));
        i += 1;
    }
    all.into_iter().filter(|(p, _, c)| family[1..].contains(p) && c.starts_with("git")).map(|(p, _, c)| (p, c)).collect()
}

#[test]
fn a_git_server_that_never_answers_times_out_the_build_and_the_next_build_passes() {
    let b = backend(&[("SLAVE_BUILD_TIMEOUT", "3")]);
    let server = Silent::start();
    let started = Instant::now();
    let id = push_url(&b, "misbehave/silent", &server.url());
    // Without a deadline on git this never ends: the wait's own deadline is the bound.
    let build = wait_build(&b.redis, &id, Duration::from_secs(60));
    let took = started.elapsed();
    assert!(server.accepted.load(Ordering::SeqCst) >= 1, "git never connected: nothing was tested");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert_eq!(
        build.log,
        vec!["- commit 0123456789".to_string(), format!("* checkout failed: git clone {} timed out after 3 seconds", server.url())]
    );
    assert!(took < Duration::from_secs(30), "the build took {took:?} with SLAVE_BUILD_TIMEOUT=3");
    // No git left behind (killed git helpers are the slave's to reap now: it is their
    // subreaper, and reaps within its sweep), and the slave builds on.
    wait_for("no git process left under the slave", Duration::from_secs(3), || match git_descendants(b.slaves[0].pid()) {
        left if left.is_empty() => Ok(()),
        left => Err(format!("{left:?}")),
    });
    let git = b.repo("misbehave/after-silent");
    git.write("integration.yml", "step: first\nshell: \"true\"\n");
    let sha = git.commit("first");
    git.push();
    let id = b.hook.push_ok(&git, &sha);
    let first = wait_build(&b.redis, &id, LONG);
    assert_eq!(first.state, "passed", "{:#?}", first.log);
    next_build_passes(&b, &git, &first);
}

#[test]
fn sigterm_stops_a_slave_stuck_in_a_clone_and_its_git_processes() {
    let mut b = backend(&[("SLAVE_GRACE", "1")]);
    let server = Silent::start();
    let id = push_url(&b, "misbehave/stuck", &server.url());
    let slave = b.slaves[0].pid();
    let gits = wait_for("git to connect to the silent server", LONG, || {
        let gits = git_descendants(slave);
        if server.accepted.load(Ordering::SeqCst) >= 1 && gits.iter().any(|(_, c)| c.starts_with("git-remote-h")) {
            Ok(gits)
        } else {
            Err(format!("accepted={} gits={gits:?}", server.accepted.load(Ordering::SeqCst)))
        }
    });
    b.slaves[0].term();
    let status = b.slaves[0].proc.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "the slave exited with {status}");
    let log = b.slaves[0].log();
    let aborted = events(&log, "build.aborted");
    assert_eq!(aborted.len(), 1, "{log}");
    assert_eq!(kv(aborted[0], "id").as_deref(), Some(id.as_str()), "{}", aborted[0]);
    for (pid, comm) in gits {
        wait_for(&format!("{comm} ({pid}) to be gone"), Duration::from_secs(5), || {
            if process_gone(pid) {
                Ok(())
            } else {
                Err(std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " "))
            }
        });
    }
    // Stopped, not failed: the job stays in the slave's in-progress list and runs again; the
    // record is back to `queued` (an abandoned attempt, not a death: SLAVE_MAX_ATTEMPTS).
    assert_eq!(read_build(&b.redis, &id).unwrap().state, "queued");
    assert_eq!(b.redis.lrange("ci:working:slave:0"), vec![id]);
}
