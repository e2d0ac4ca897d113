//! `make run` (scripts/run-local.sh): a taken hook port stops it with the
//! error; Ctrl-C stops the slaves first, so a running build's result is stored before Redis
//! goes, and ends with status 0 (`make run` itself too, in a terminal); local slave i holds
//! index i and logs to slave-i.log; a second make run in the same checkout stops at once,
//! naming the first and touching nothing; one killed with kill -9 blocks the next only while
//! its parts still run.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-local.sh")
}

fn bin_dir() -> String {
    Path::new(&bin("hook")).parent().unwrap().to_string_lossy().into_owned()
}

/// Kills what a `make run` started (its parts run in sessions of their own, so they outlive the
/// script when a test fails before Ctrl-C): the pids it wrote to `pids`.
pub(crate) struct Leftovers(pub PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(self.0.join("pids")).unwrap_or_default().split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).stderr(Stdio::null()).status();
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn run_local(dir: &Path, redis_port: u16, hook_port: u16) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .env("RUN_DIR", dir)
        .env("BIN_DIR", bin_dir())
        .env("REDIS_PORT", redis_port.to_string())
        .env("HOOK_ADDR", format!("127.0.0.1:{hook_port}"))
        .env("SLAVE_GRACE", "20")
        .env_remove("HOOK_TOKEN")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null());
    // The test's Ctrl-C must reach the script's trap. A test run started in the background (`&`
    // in a script, nohup) has SIGINT ignored, the script would inherit that, and bash cannot trap
    // a signal ignored on entry: make run would never stop. The script starts with the default.
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_taken_hook_port_stops_make_run_with_the_error() {
    let dir = fresh_dir(&test_name());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = run_local(&dir, free_port(), port).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {stderr}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains(&format!("port {port} is already in use")), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ci-backend is running"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctrl_c_stores_the_running_build_before_redis_stops() {
    let top = fresh_dir(&test_name());
    // Under a directory closed to others (as a clone in /root is): make run must put the
    // caches where the build user (nobody, under root) can enter, and the build must pass.
    let dir = top.join("closed").join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(top.join("closed"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (redis_port, hook_port) = (free_port(), free_port());
    let out_path = dir.join("make-run.out");
    let mut cmd = run_local(&dir, redis_port, hook_port);
    cmd.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(dir.join("make-run.err")).unwrap());
    let _leftovers = Leftovers(dir.clone());
    let mut child = cmd.spawn().unwrap();
    let token = wait_for("make run to print its token", LONG, || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(status) = child.try_wait().unwrap() {
            panic!("make run exited: {status}\n{text}\n{}", std::fs::read_to_string(dir.join("make-run.err")).unwrap_or_default());
        }
        text.lines().find_map(|l| l.strip_prefix("Secret token: ").map(str::to_string)).ok_or(text)
    });
    for i in 0..3 {
        let log = std::fs::read_to_string(dir.join(format!("slave-{i}.log"))).unwrap_or_default();
        let ready = events(&log, "slave.ready");
        assert_eq!(ready.first().and_then(|l| kv(l, "index")), Some(i.to_string()), "slave-{i}.log: {log}");
    }

    // A build that is still running when Ctrl-C comes.
    let started = top.join("started");
    let git = GitRepo::new(&dir, "local/slow");
    // Its step also tries Redis, which make run locks with a password no step can read.
    let tried = top.join("redis-tried");
    let yml = format!(
        "step: slow\nshell: |\n  redis-cli -h 127.0.0.1 -p {redis_port} ping > '{t}' 2>&1 || true\n  \
         redis-cli -h 127.0.0.1 -p {redis_port} GET ci:token >> '{t}' 2>&1 || true\n  \
         cat '{pass}' >> '{t}' 2>&1 || true\n  touch '{}'\n  sleep 2\n",
        started.display(),
        t = tried.display(),
        pass = dir.join("redis.pass").display(),
    );
    git.write("integration.yml", &yml);
    let sha = git.commit("slow build");
    git.push();
    let body = github_push(&git.name, &git.file_url(), "main", &sha, "slow build", "main").to_string();
    let sig = sign_sha256(body.as_bytes(), &token);
    let addr = format!("127.0.0.1:{hook_port}").parse().unwrap();
    let headers = [("X-GitHub-Event", "push"), ("Content-Type", "application/json"), ("X-Hub-Signature-256", sig.as_str())];
    let r = http(addr, "POST", "/", &headers, body.as_bytes());
    assert_eq!(r.code, 202, "{r}");
    let id = r.json()["id"].as_str().unwrap().to_string();
    wait_for("the build to start", LONG, || if started.exists() { Ok(()) } else { Err("not yet".into()) });
    let password = std::fs::read_to_string(dir.join("redis.pass")).unwrap().trim().to_string();
    assert!(password.len() >= 32, "a generated password: {password:?}");
    let tried = std::fs::read_to_string(&tried).unwrap();
    assert!(tried.contains("NOAUTH"), "the step reached Redis without the password: {tried}");
    assert!(!tried.contains("PONG") && !tried.contains(&token) && !tried.contains(&password), "{tried}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        assert!(!String::from_utf8_lossy(&cmdline).contains(&password), "the password on a command line: {:?}", entry.path());
    }

    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = wait_for("make run to stop", Duration::from_secs(60), || child.try_wait().unwrap().ok_or("running".to_string()));
    assert_eq!(status.code(), Some(0), "Ctrl-C is the way to stop make run: {status}");
    let logs: String = (0..3).map(|i| std::fs::read_to_string(dir.join(format!("slave-{i}.log"))).unwrap_or_default()).collect();
    assert!(events(&logs, "build.unstored").is_empty(), "{logs}");
    assert_eq!(events(&logs, "build.finished").iter().filter(|l| kv(l, "id").as_deref() == Some(&id)).count(), 1, "{logs}");

    // The oracle: Redis, started again from the AOF make run left, has the result.
    let mut redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--dir", dir.to_str().unwrap()])
        .args(["--appendonly", "yes", "--save", ""])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Until it has loaded the AOF it answers `-LOADING`: wait for a real answer.
    let state =
        wait_for("the restarted redis to answer", DEADLINE, || match resp_cmd(redis_port, &["HGET", &format!("ci:build:{id}"), "state"]) {
            Ok(Resp::Error(e)) => Err(e),
            Ok(reply) => Ok(reply),
            Err(e) => Err(e.to_string()),
        });
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(state.str().as_deref(), Some("passed"));
    let out = std::fs::read_to_string(&out_path).unwrap();
    let moved = out.lines().find_map(|l| l.split_once("the slaves' caches live in ").map(|(_, d)| d.trim().to_string()));
    let moved = moved.unwrap_or_else(|| panic!("make run did not say where it put the caches:\n{out}"));
    assert!(Path::new(&moved).join("cache-0").is_dir(), "{moved}");
    let _ = std::fs::remove_dir_all(&moved);
    let _ = std::fs::remove_dir_all(&top);
}

/// Starts make run's script in `dir` (its output to `make-run.out`/`.err` there); returns it
/// once it printed its token and its three slaves are ready.
/// Waits until `make run` (writing to `out` and `err`) has printed its token; panics with
/// both outputs if it exits first.
fn wait_for_token(make: &mut std::process::Child, out: &Path, err: &Path) {
    wait_for("make run to print its token", LONG, || {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(status) = make.try_wait().unwrap() {
            panic!("make run exited: {status}\n{text}\n{}", std::fs::read_to_string(err).unwrap_or_default());
        }
        text.lines().find(|l| l.starts_with("Secret token: ")).map(drop).ok_or(text)
    });
}

pub(crate) fn start(dir: &Path, redis_port: u16, hook_port: u16) -> std::process::Child {
    let out_path = dir.join("make-run.out");
    let err_path = dir.join("make-run.err");
    let mut cmd = run_local(dir, redis_port, hook_port);
    cmd.stdout(std::fs::File::create(&out_path).unwrap()).stderr(std::fs::File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap();
    wait_for_token(&mut child, &out_path, &err_path);
    for i in 0..3 {
        wait_for(&format!("local slave {i} to be ready"), LONG, || {
            let log = std::fs::read_to_string(dir.join(format!("slave-{i}.log"))).unwrap_or_default();
            if events(&log, "slave.ready").is_empty() {
                Err(log)
            } else {
                Ok(())
            }
        });
    }
    child
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => files.push((path.clone(), std::fs::read(&path).unwrap_or_default())),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

pub(crate) fn interrupt(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    wait_for("make run to stop", Duration::from_secs(60), || child.try_wait().unwrap().ok_or("running".to_string()))
}

#[test]
fn a_second_make_run_in_the_same_checkout_stops_at_once_naming_the_first() {
    let dir = fresh_dir(&test_name());
    let _leftovers = Leftovers(dir.clone());
    let (redis_port, hook_port) = (free_port(), free_port());
    let mut first = start(&dir, redis_port, hook_port);
    let before = snapshot(&dir);
    // The second one on other free ports, so that no taken port is what stops it.
    let (redis2, hook2) = (free_port(), free_port());
    let out = run_local(&dir, redis2, hook2).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout: {}\nstderr: {stderr}", String::from_utf8_lossy(&out.stdout));
    let want = format!(
        "run: make run is already running in this checkout: pid {}, hook on http://127.0.0.1:{hook_port}, redis on 127.0.0.1:{redis_port} \
         (state in {}/); stop it (Ctrl-C in its terminal) first\n",
        first.id(),
        dir.display()
    );
    assert_eq!(stderr, want);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "the second make run printed");
    assert!(!port_open(redis2) && !port_open(hook2), "the second make run started something");
    // Touching nothing: no file gone, none new, none rewritten (logs only grow, the first
    // make run still writing them).
    let after = snapshot(&dir);
    let names = |s: &[(PathBuf, Vec<u8>)]| s.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "files of .run/ appeared or went");
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        assert!(new.starts_with(old), "{} was rewritten: {} bytes before, {} after", path.display(), old.len(), new.len());
    }
    // The first one still serves, and stops with status 0.
    assert_eq!(http(format!("127.0.0.1:{hook_port}").parse().unwrap(), "GET", "/ping", &[], b"").code, 200);
    let status = interrupt(&mut first);
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!port_open(redis_port) && !port_open(hook_port), "make run left a port open");
    // Once it stopped, the next one starts.
    let mut next = start(&dir, redis_port, hook_port);
    assert_eq!(interrupt(&mut next).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_make_run_killed_with_kill_9_blocks_the_next_only_while_its_parts_run() {
    let dir = fresh_dir(&test_name());
    let _leftovers = Leftovers(dir.clone());
    let (redis_port, hook_port) = (free_port(), free_port());
    let mut first = start(&dir, redis_port, hook_port);
    first.kill().unwrap();
    first.wait().unwrap();
    let pids: Vec<String> = std::fs::read_to_string(dir.join("pids")).unwrap().split_whitespace().map(String::from).collect();
    assert_eq!(pids.len(), 5, "redis, the hook and three slaves: {pids:?}");
    // Its lock went with it; its parts did not (each in a session of its own) and write .run/.
    let out = run_local(&dir, free_port(), free_port()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!(
        "run: an earlier make run in {}/ was killed without its Ctrl-C and left its parts running: pids {p}; stop them first: kill {p}\n",
        dir.display(),
        p = pids.join(" ")
    );
    assert_eq!(stderr, want);
    for pid in &pids {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    for pid in &pids {
        let pid: u32 = pid.parse().unwrap();
        wait_for(&format!("process {pid} to go"), DEADLINE, || if process_gone(pid) { Ok(()) } else { Err("alive".into()) });
    }
    // The lock file and the pid files it left stop nothing.
    assert!(dir.join("lock").exists() && dir.join("running").exists() && dir.join("pids").exists());
    let mut next = start(&dir, redis_port, hook_port);
    assert_eq!(interrupt(&mut next).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pseudo-terminal: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::FromRawFd;
    // SAFETY: plain libc calls on a descriptor we own; the name buffer is ours and sized.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(master >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(master), 0);
        assert_eq!(libc::unlockpt(master), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
        let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_string();
        let slave = std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open(&path).unwrap();
        (std::fs::File::from_raw_fd(master), slave)
    }
}

/// `make run` in a terminal (a pseudo-terminal whose session make leads): Ctrl-C typed there
/// stops everything and make exits 0, with no `Error 130`.
#[test]
fn ctrl_c_in_a_terminal_ends_make_run_with_status_0() {
    use std::io::Write;
    let dir = fresh_dir(&test_name());
    let _leftovers = Leftovers(dir.clone());
    let (redis_port, hook_port) = (free_port(), free_port());
    let (mut master, slave) = pty();
    let out_path = dir.join("make.out");
    let err_path = dir.join("make.err");
    let mut cmd = Command::new("make");
    // `-o build`: the binaries the tests built, no release build.
    cmd.args(["--no-print-directory", "-o", "build", "run"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUN_DIR", &dir)
        .env("BIN_DIR", bin_dir())
        .env("REDIS_PORT", redis_port.to_string())
        .env("HOOK_ADDR", format!("127.0.0.1:{hook_port}"))
        .env("SLAVE_GRACE", "20")
        .env_remove("HOOK_TOKEN")
        .env_remove("REDIS_URL")
        .env_remove("MAKEFLAGS")
        .stdin(slave)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    // SAFETY: setsid, ioctl and signal are async-signal-safe; nothing else runs between fork
    // and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut make = cmd.spawn().unwrap();
    wait_for_token(&mut make, &out_path, &err_path);
    master.write_all(b"\x03").unwrap();
    let status = wait_for("make run to stop", Duration::from_secs(60), || make.try_wait().unwrap().ok_or("running".to_string()));
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(status.code(), Some(0), "{status}\nstdout:\n{out}\nstderr:\n{err}");
    assert!(!err.contains("Error") && !err.contains("Interrupt"), "{err}");
    assert!(out.contains("run: stopped"), "{out}");
    assert!(!port_open(redis_port) && !port_open(hook_port), "make run left a port open");
    let _ = std::fs::remove_dir_all(&dir);
}
