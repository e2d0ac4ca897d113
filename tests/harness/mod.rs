//! The one shared test harness: a real `redis-server` per test, the real `hook` and `slave`
//! binaries, real git repositories, a tiny blocking HTTP/1.1 client and a RESP client over raw
//! TCP, HMAC signatures through the `openssl` command line, and `wait_for` (poll to a deadline;
//! the tests never sleep to synchronise).
//!
//! Every test gets a fresh numbered directory under the system temp dir; the children's stdout
//! and stderr go to files there, and their tails are printed when the test panics. The
//! directory is removed when the test passes and kept (its path printed) when it fails.
#![allow(dead_code)]

pub mod browser;

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::{json, Value};

/// The default deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// For waits that include builds on a loaded machine.
pub const LONG: Duration = Duration::from_secs(120);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------------------------------------
// Directories, waiting, small helpers
// ---------------------------------------------------------------------------------------------

/// The running test's name (`area::test`), from the test thread's name.
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("test").to_string()
}

/// A fresh, empty, numbered directory for one test. Writable by everyone, like /tmp (sticky):
/// when the tests run as root, the slaves run build steps as `nobody`, and steps write marks
/// and pid files here.
pub fn fresh_dir(name: &str) -> PathBuf {
    let safe: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let root = tests_root().join(format!("{}-{:03}-{}", std::process::id(), next(), safe));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    world_writable(&root);
    root
}

/// `<temp dir>/ci-backend-tests`, the parent of every test's directory, checked once: when the
/// tests run as root, the build user must be able to enter it and every directory above it
/// (a TMPDIR under /root would lock it out of every build), so it is made `1777` like /tmp
/// when it is ours, and a directory above it closed to others stops the run with its name.
pub fn tests_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join("ci-backend-tests");
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        if is_root() {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(&root).unwrap_or_else(|e| panic!("stat {}: {e}", root.display()));
            if meta.uid() == 0 && meta.mode() & 0o7777 != 0o1777 {
                world_writable(&root);
            }
            if let Some(closed) = closed_to_others(&root) {
                panic!(
                    "the build user cannot enter {} (no x for others), so it cannot reach the tests' directories \
                     under {}: set TMPDIR to a directory every user can enter (/tmp)",
                    closed.display(),
                    root.display()
                );
            }
        }
        root
    })
    .clone()
}

/// The first of `path` and the directories above it that another user cannot enter (no `x`
/// for others), if any.
pub fn closed_to_others(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = fs::canonicalize(path).unwrap_or_else(|e| panic!("canonicalize {}: {e}", path.display()));
    path.ancestors()
        .filter(|dir| fs::metadata(dir).map(|m| m.is_dir()).unwrap_or(false))
        .find(|dir| fs::metadata(dir).map(|m| m.permissions().mode() & 0o001 == 0).unwrap_or(true))
        .map(Path::to_path_buf)
}

/// `chmod 1777`.
pub fn world_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o1777)).unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
}

/// Whether the tests run as root (then the slaves run steps as `nobody`).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The user build steps run as: `nobody` when the tests (and so the slaves) run as root, else
/// the tests' own user (`id -un`).
pub fn build_user() -> String {
    if is_root() {
        "nobody".into()
    } else {
        run(Command::new("id").arg("-un")).trim().to_string()
    }
}

/// Polls `probe` every 20 ms until it returns `Ok`, or panics after `deadline` naming `what`
/// and the last value the probe reported.
pub fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if start.elapsed() > deadline {
                    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last `n` lines of a file (for failure reports).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            lines[from..]
                .iter()
                .map(|l| if l.chars().count() > 400 { format!("{}…", l.chars().take(400).collect::<String>()) } else { l.to_string() })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs a command to completion; panics with command, cwd, status, stdout and stderr when it
/// fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "command failed: {cmd:?}\nstatus: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `key=` in a log line (`key=value` or `key="quoted value"`).
pub fn kv(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.extend(chars.next()),
                '"' => return Some(out),
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        Some(rest.split_whitespace().next().unwrap_or("").to_string())
    }
}

/// The lines of `text` that carry the log event `event` (the word after the level).
pub fn events<'a>(text: &'a str, event: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.split_whitespace().nth(2) == Some(event)).collect()
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// True when process `pid` no longer exists (a zombie counts as gone: it runs nothing).
pub fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s.lines().find(|l| l.starts_with("State:")).map(|l| l.contains("Z") || l.contains("X")).unwrap_or(true),
    }
}

/// Waits until the process whose pid a step wrote to `pidfile` is gone (its step's kill
/// reached it).
pub fn wait_killed(pidfile: &Path) {
    let pid: u32 = fs::read_to_string(pidfile).unwrap().trim().parse().unwrap();
    wait_for(&format!("background child {pid} to be killed"), DEADLINE, || {
        if process_gone(pid) {
            Ok(())
        } else {
            Err(fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        }
    });
}

/// A `/proc/<pid>/status` field in kB (`VmRSS`, `VmHWM`).
pub fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `skip`-th repository name `<prefix>/repo-<i>` whose CRC32 mod `n` is `index`.
pub fn name_for(prefix: &str, n: u32, index: u32, skip: usize) -> String {
    (0..).map(|i| format!("{prefix}/repo-{i}")).filter(|name| crc32(name.as_bytes()) % n == index).nth(skip).unwrap()
}

/// CRC-32 (IEEE, reflected, polynomial 0xEDB88320), as crc32fast computes it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The snippet as a log line shows it: its first line, at most 60 characters, `...` when cut.
pub fn cut(snippet: &str) -> String {
    let first = snippet.lines().next().unwrap_or("");
    if first.chars().count() > 60 {
        format!("{}...", first.chars().take(60).collect::<String>())
    } else {
        first.to_string()
    }
}

/// A unique delivery id (UUID-shaped).
pub fn delivery_id() -> String {
    let n = next() as u64;
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let p = std::process::id() as u64;
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", t as u32, p & 0xffff, n & 0xfff, (t >> 32) & 0xfff, t ^ (n << 40))
}

pub fn rand_u64() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut x = t ^ ((std::process::id() as u64) << 32) ^ ((next() as u64) << 17) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Percent-encodes everything but the unreserved characters (for form bodies and queries).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process with stdout/stderr in files; `Drop` kills and reaps it and, when the test is
/// panicking, prints the tails of its output.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub pid: u32,
    pub out: PathBuf,
    pub err: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, out: PathBuf, err: PathBuf) -> Proc {
        let o = fs::OpenOptions::new().create(true).append(true).open(&out).unwrap();
        let e = fs::OpenOptions::new().create(true).append(true).open(&err).unwrap();
        cmd.stdin(Stdio::null()).stdout(o).stderr(e);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), pid: child.id(), child: Some(child), out, err }
    }

    /// The child's stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait"),
            None => Some(ExitStatus::default()),
        }
    }

    pub fn alive(&mut self) -> bool {
        self.exited().is_none()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.pid.to_string()).status();
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the child to exit (polled), returning its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let name = self.name.clone();
        let status = wait_for(&format!("{name} to exit"), deadline, || match self.exited() {
            Some(s) => Ok(s),
            None => Err("still running".into()),
        });
        self.child = None;
        status
    }

    fn report(&self) {
        eprintln!(
            "----- {} (pid {}) stdout tail: {}\n{}\n----- {} stderr tail: {}\n{}\n-----",
            self.name,
            self.pid,
            self.out.display(),
            tail(&self.out, 60),
            self.name,
            self.err.display(),
            tail(&self.err, 30)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            self.report();
        }
    }
}

/// The path of our binary `name` (`hook`, `slave`): Cargo's `CARGO_BIN_EXE_<name>` in the test
/// binary; in a cargo example that includes this harness (`examples/soak.rs`, where Cargo sets no
/// such variable), the binary beside it in `target/<profile>/`.
pub fn bin(name: &str) -> String {
    let from_cargo = match name {
        "hook" => option_env!("CARGO_BIN_EXE_hook"),
        "slave" => option_env!("CARGO_BIN_EXE_slave"),
        _ => None,
    };
    if let Some(path) = from_cargo {
        return path.to_string();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("the executable's directory").to_path_buf();
    if dir.ends_with("examples") || dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build it first (cargo build --bins)", path.display());
    path.to_string_lossy().into_owned()
}

/// `bin(name)` where another user (the build user, for a slave the tests start as `nobody`) can
/// run it. Cargo's own path when every directory above it lets others in; otherwise — a clone
/// under /root or in a `mktemp -d` keeps `target/` closed to them — a copy made once per test
/// process, mode 0755, in `<tests_root>/bin-<pid>/` (0755), whose stale siblings of ended test
/// processes are removed first. The copy is made by `cp`, not in this process, so no child forked
/// by another test thread meanwhile inherits a file open for writing (exec would then fail with
/// "Text file busy").
pub fn bin_for_others(name: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    static COPIES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let original = bin(name);
    let path = Path::new(&original);
    let runnable = fs::metadata(path).map(|m| m.permissions().mode() & 0o005 == 0o005).unwrap_or(false);
    if runnable && closed_to_others(path.parent().expect("the binary's directory")).is_none() {
        return original;
    }
    let mut copies = COPIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, copy)) = copies.iter().find(|(n, _)| n == name) {
        return copy.clone();
    }
    let root = tests_root();
    for entry in fs::read_dir(&root).unwrap_or_else(|e| panic!("ls {}: {e}", root.display())).flatten() {
        let file = entry.file_name();
        let stale = file.to_str().and_then(|f| f.strip_prefix("bin-")).and_then(|pid| pid.parse::<u32>().ok());
        if stale.is_some_and(|pid| pid != std::process::id() && process_gone(pid)) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(format!("bin-{}", std::process::id()));
    if copies.is_empty() {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
    }
    let copy = dir.join(name);
    run(Command::new("cp").arg(path).arg(&copy));
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| panic!("chmod {}: {e}", copy.display()));
    let copy = copy.to_string_lossy().into_owned();
    copies.push((name.to_string(), copy.clone()));
    copy
}

/// Our binaries see only what we give them: the inherited HOOK_*, SLAVE_*, REDIS_*, GIT_* and
/// RUST_LOG variables are removed first.
pub fn scrubbed(bin: &str) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        if k.starts_with("HOOK_") || k.starts_with("SLAVE_") || k.starts_with("REDIS_") || k.starts_with("GIT_") || k == "RUST_LOG" {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply itself, or its error as `Err` (e.g. `LOADING` just after a restart).
    pub fn ok(self) -> Result<Resp, String> {
        match self {
            Resp::Error(e) => Err(e),
            other => Ok(other),
        }
    }

    pub fn str(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Resp::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }
    pub fn int(&self) -> i64 {
        match self {
            Resp::Int(i) => *i,
            other => panic!("expected an integer reply, got {other:?}"),
        }
    }
    pub fn list(&self) -> Vec<String> {
        match self {
            Resp::Array(Some(items)) => items.iter().map(|i| i.str().unwrap_or_default()).collect(),
            Resp::Array(None) => vec![],
            other => panic!("expected an array reply, got {other:?}"),
        }
    }
}

fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "redis closed the connection"));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad RESP {what}: {line:?}"));
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(rest.parse().map_err(|_| bad("integer"))?),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| bad("length"))?;
            if n < 0 {
                Resp::Bulk(None)
            } else {
                let mut buf = vec![0u8; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad("count"))?;
            if n < 0 {
                Resp::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_resp(r)?);
                }
                Resp::Array(Some(items))
            }
        }
        _ => return Err(bad("type")),
    })
}

/// One RESP command over a fresh TCP connection.
pub fn resp_cmd(port: u16, args: &[&str]) -> std::io::Result<Resp> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        req.extend_from_slice(a.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    s.write_all(&req)?;
    read_resp(&mut BufReader::new(s))
}

/// One command over a fresh TCP connection, after `AUTH <password>` (a Redis started with
/// `requirepass`); an `AUTH` error reply is returned as the reply.
pub fn resp_cmd_auth(port: u16, password: &str, args: &[&str]) -> std::io::Result<Resp> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = Vec::new();
    for cmd in [&["AUTH", password][..], args] {
        req.extend_from_slice(format!("*{}\r\n", cmd.len()).as_bytes());
        for a in cmd {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
    }
    s.write_all(&req)?;
    let mut r = BufReader::new(s);
    match read_resp(&mut r)? {
        err @ Resp::Error(_) => Ok(err),
        _ => read_resp(&mut r),
    }
}

/// A real `redis-server` on a free port, in its own directory, with `appendfsync always` so a
/// stop and restart keeps every acknowledged write.
pub struct Redis {
    /// The test's directory (everything else of the test lives under it).
    pub root: PathBuf,
    pub port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    /// Creates the test's fresh directory and starts redis-server in it.
    pub fn start() -> Redis {
        let root = fresh_dir(&test_name());
        let dir = root.join("redis");
        fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis { root, port: 0, dir, proc: None };
        for _ in 0..20 {
            // Below the kernel's ephemeral range (32768+), so no client socket of the hook or a
            // slave can take the port while redis is stopped in a fault test.
            let port = 20000 + (rand_u64() % 12000) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            redis.port = port;
            if redis.spawn(Duration::from_secs(10)) {
                return redis;
            }
        }
        panic!("could not start redis-server; see {}", redis.root.display());
    }

    fn spawn(&mut self, deadline: Duration) -> bool {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", "always"])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--daemonize", "no"])
            .args(["--logfile", ""]);
        let mut proc = Proc::spawn("redis", cmd, self.root.join("redis.out"), self.root.join("redis.err"));
        let start = Instant::now();
        let want_dir = fs::canonicalize(&self.dir).unwrap();
        while start.elapsed() < deadline {
            if !proc.alive() {
                proc.child = None;
                return false;
            }
            // Make sure it is *our* server that answers (another test may own a port we raced for).
            if let Ok(Resp::Array(Some(items))) = resp_cmd(self.port, &["CONFIG", "GET", "dir"]) {
                if items.get(1).and_then(|d| d.str()).map(PathBuf::from) == Some(want_dir.clone()) {
                    self.proc = Some(proc);
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A connection for calling the queue's functions directly, after making index 0 of cluster
    /// `slave` a live member for the next hour (so ENQUEUE routes there, no slave running).
    pub fn queue_conn(&self) -> redis::Connection {
        let until = (now() + 3600) * 1000;
        self.cli(&["ZADD", "ci:members:slave", &until.to_string(), "0"]);
        self.cli(&["SADD", "ci:clusters", "slave"]);
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("redis is not running").pid
    }

    /// Graceful stop (SIGTERM: redis flushes its AOF and exits), reaped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal("TERM");
            p.wait_exit(DEADLINE);
        }
        // The port must be refusing connections now.
        wait_for("redis port to be closed", DEADLINE, || match resp_cmd(self.port, &["PING"]) {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("{r:?}")),
        });
    }

    /// SIGKILL (a crash: no AOF rewrite, no goodbye), reaped; the port is closed afterwards.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
        wait_for("redis port to be closed", DEADLINE, || match resp_cmd(self.port, &["PING"]) {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("{r:?}")),
        });
    }

    /// Whether redis-server is running (not stopped or killed by the test).
    pub fn running(&self) -> bool {
        self.proc.is_some()
    }

    /// Starts redis-server again on the same port and directory.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "restart() of a running redis");
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            if self.spawn(DEADLINE) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Runs a command; panics when redis cannot be reached.
    pub fn cli(&self, args: &[&str]) -> Resp {
        resp_cmd(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.cli(&["GET", key]).str()
    }

    pub fn hgetall(&self, key: &str) -> HashMap<String, String> {
        let items = self.cli(&["HGETALL", key]).list();
        items.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect()
    }

    pub fn lrange(&self, key: &str) -> Vec<String> {
        self.cli(&["LRANGE", key, "0", "-1"]).list()
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut k = self.cli(&["KEYS", pattern]).list();
        k.sort();
        k
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.proc.take();
        if std::thread::panicking() {
            eprintln!("----- test directory kept: {}", self.root.display());
        } else {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Build records (Redis keys of the contract)
// ---------------------------------------------------------------------------------------------

/// A build record read from `ci:build:<id>`.
#[derive(Debug, Clone)]
pub struct Build {
    pub id: String,
    pub state: String,
    pub sha: String,
    pub slave: String,
    pub log: Vec<String>,
    pub fields: HashMap<String, String>,
}

impl Build {
    pub fn log_text(&self) -> String {
        self.log.join("\n")
    }
    pub fn has_line(&self, line: &str) -> bool {
        self.log.iter().any(|l| l == line)
    }
    /// The one log line that starts with `prefix` and ends with `suffix` (a line whose middle,
    /// e.g. its seconds, depends on the machine).
    pub fn line_like(&self, prefix: &str, suffix: &str) -> &str {
        self.log
            .iter()
            .find(|l| l.starts_with(prefix) && l.ends_with(suffix))
            .unwrap_or_else(|| panic!("no log line `{prefix}…{suffix}` in {:#?}", self.log))
    }
    /// What passed snippets of `debug` steps printed, in order.
    pub fn printed(&self) -> Vec<String> {
        self.log.iter().filter_map(|l| l.strip_prefix("[passed]   . ")).map(String::from).collect()
    }
}

pub fn read_build(redis: &Redis, id: &str) -> Option<Build> {
    let fields = redis.hgetall(&format!("ci:build:{id}"));
    if fields.is_empty() {
        return None;
    }
    let log = match fields.get("log") {
        Some(l) if !l.is_empty() => match serde_json::from_str::<Value>(l) {
            Ok(Value::Array(a)) => a.iter().map(|v| v.as_str().unwrap_or("<non-string>").to_string()).collect(),
            _ => panic!("ci:build:{id} log is not a JSON array of strings: {l:.300}"),
        },
        _ => vec![],
    };
    Some(Build {
        id: id.to_string(),
        state: fields.get("state").cloned().unwrap_or_default(),
        sha: fields.get("sha").cloned().unwrap_or_default(),
        slave: fields.get("slave").cloned().unwrap_or_default(),
        log,
        fields,
    })
}

/// Waits until build `id` is finished (state passed or failed) and returns it.
pub fn wait_build(redis: &Redis, id: &str, deadline: Duration) -> Build {
    wait_for(&format!("build {id} to finish"), deadline, || match read_build(redis, id) {
        Some(b) if b.state == "passed" || b.state == "failed" => Ok(b),
        Some(b) => Err(format!("state={:?} slave={:?} log={:?}", b.state, b.slave, b.log)),
        None => Err(format!("no key ci:build:{id}")),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("response {} is not JSON ({e}): {:.500}", self.code, self.text()))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.text();
        write!(f, "{} {:.600}", self.code, t)
    }
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(&format!("no end of headers in {:?}", String::from_utf8_lossy(&raw[..raw.len().min(300)]))))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code: u16 =
        status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| bad(&format!("bad status line {status:?}")))?;
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size_str = String::from_utf8_lossy(&rest[..nl]).to_string();
            let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
                .map_err(|_| bad(&format!("bad chunk size {size_str:?}")))?;
            rest = &rest[nl + 2..];
            if size == 0 || rest.len() < size {
                out.extend_from_slice(&rest[..size.min(rest.len())]);
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        body = out;
    } else if let Some(len) =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Response { code, headers, body })
}

/// One HTTP/1.1 request with `Connection: close`; the response is read to EOF.
pub fn try_http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) && (method != "GET" || !body.is_empty()) {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer (413, 403) and close before reading the whole body: a failed write
    // is not an error as long as a response can be read.
    let write_err = s.write_all(&bytes).err();
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        return Err(read
            .err()
            .or(write_err)
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed without a response")));
    }
    parse_response(&raw)
}

/// A GitHub push delivery to `addr`, signed (sha256) with `token`, with a fresh delivery id;
/// `Err` when the hook cannot be reached (for tests that kill it).
pub fn try_push(addr: SocketAddr, token: &str, body: &[u8]) -> std::io::Result<Response> {
    let sig = sign_sha256(body, token);
    let delivery = delivery_id();
    let headers = [
        ("X-GitHub-Event", "push"),
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-GitHub-Delivery", delivery.as_str()),
        ("Content-Type", "application/json"),
    ];
    try_http(addr, "POST", "/", &headers, body)
}

pub fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    try_http(addr, method, path, headers, body).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Signatures (openssl command line: an implementation independent of the code under test)
// ---------------------------------------------------------------------------------------------

pub fn hmac_hex(algo: &str, key: &str, body: &[u8]) -> String {
    let mut child = Command::new("openssl")
        .args(["dgst", &format!("-{algo}"), "-hmac", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().expect("openssl output");
    writer.join().unwrap();
    assert!(out.status.success(), "openssl dgst failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.trim().rsplit(' ').next().unwrap().to_string();
    assert!(hex.len() >= 40 && hex.chars().all(|c| c.is_ascii_hexdigit()), "openssl said {text:?}");
    hex
}

/// `X-Hub-Signature-256` value.
pub fn sign_sha256(body: &[u8], token: &str) -> String {
    format!("sha256={}", hmac_hex("sha256", token, body))
}

/// `X-Hub-Signature` value.
pub fn sign_sha1(body: &[u8], token: &str) -> String {
    format!("sha1={}", hmac_hex("sha1", token, body))
}

/// `X-Gitea-Signature` / `X-Forgejo-Signature` value: bare hex HMAC-SHA256.
pub fn sign_gitea(body: &[u8], token: &str) -> String {
    hmac_hex("sha256", token, body)
}

// ---------------------------------------------------------------------------------------------
// Hook and slave
// ---------------------------------------------------------------------------------------------

pub struct Hook {
    pub addr: SocketAddr,
    /// The token to sign with: from the startup line, or HOOK_TOKEN when configured (the line
    /// then shows only its fingerprint).
    pub token: String,
    /// `configured`, `generated` or `shared`, from the startup line.
    pub token_source: String,
    /// `fingerprint=` of the startup line (configured tokens).
    pub fingerprint: Option<String>,
    pub proc: Proc,
}

impl Hook {
    /// Starts the hook on `127.0.0.1:0` against `redis`; `env` is applied last.
    pub fn start(redis: &Redis, env: &[(&str, &str)]) -> Hook {
        let k = next();
        let mut cmd = scrubbed(&bin("hook"));
        cmd.env("HOOK_ADDR", "127.0.0.1:0").env("REDIS_URL", redis.url()).current_dir(&redis.root);
        for (key, v) in env {
            cmd.env(key, v);
        }
        let configured = env.iter().rev().find(|(k, _)| *k == "HOOK_TOKEN").map(|(_, v)| v.trim().to_string()).filter(|t| !t.is_empty());
        let mut proc = Proc::spawn("hook", cmd, redis.root.join(format!("hook-{k}.out")), redis.root.join(format!("hook-{k}.err")));
        let (addr, line) = wait_for("hook.listening and hook.token lines", DEADLINE, || {
            let out = proc.stdout();
            let listening = events(&out, "hook.listening").first().and_then(|l| kv(l, "addr"));
            let token = events(&out, "hook.token").first().map(|l| l.to_string());
            if let (Some(addr), Some(line)) = (listening.clone(), token.clone()) {
                return Ok((addr, line));
            }
            if let Some(status) = proc.exited() {
                panic!("hook exited during startup: {status}\nstdout:\n{}\nstderr:\n{}", tail(&proc.out, 30), tail(&proc.err, 30));
            }
            Err(format!("listening={listening:?} token={token:?}"))
        });
        let source = kv(&line, "source").unwrap_or_default();
        let token = match (source.as_str(), kv(&line, "token"), configured) {
            ("configured", None, Some(t)) => t,
            ("generated" | "shared", Some(t), _) => t,
            _ => panic!("hook.token line {line:?} does not fit HOOK_TOKEN set={}", env.iter().any(|(k, _)| *k == "HOOK_TOKEN")),
        };
        let addr: SocketAddr = addr.parse().unwrap_or_else(|e| panic!("hook.listening addr={addr:?}: {e}"));
        Hook { addr, token, token_source: source, fingerprint: kv(&line, "fingerprint"), proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    pub fn log(&self) -> String {
        self.proc.stdout()
    }

    pub fn get(&self, path: &str) -> Response {
        http(self.addr, "GET", path, &[], b"")
    }

    pub fn get_json(&self, path: &str) -> Response {
        http(self.addr, "GET", path, &[("Accept", "application/json")], b"")
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        http(self.addr, "POST", path, headers, body)
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.code, 200, "GET /metrics: {r}");
        r.text()
    }

    /// `ci_slaves{cluster="<cluster>"} N` from /metrics.
    pub fn slaves(&self, cluster: &str) -> Option<u64> {
        let prefix = format!("ci_slaves{{cluster=\"{cluster}\"}} ");
        self.metrics().lines().find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse::<f64>().ok())).map(|v| v as u64)
    }

    pub fn wait_slaves(&self, cluster: &str, n: u64) {
        wait_for(&format!("hook to count {n} slaves in {cluster}"), DEADLINE, || match self.slaves(cluster) {
            Some(v) if v == n => Ok(()),
            other => Err(format!("{other:?}")),
        });
    }

    /// Sends a GitHub-style delivery signed with sha256: `X-GitHub-Event`, a fresh
    /// `X-GitHub-Delivery` (unless `extra` has one), JSON content type.
    pub fn send_github(&self, path: &str, event: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
        let sig = sign_sha256(body, &self.token);
        let delivery = delivery_id();
        let mut headers: Vec<(&str, &str)> = vec![("X-GitHub-Event", event), ("X-Hub-Signature-256", &sig)];
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("X-GitHub-Delivery")) {
            headers.push(("X-GitHub-Delivery", &delivery));
        }
        if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("Content-Type")) {
            headers.push(("Content-Type", "application/json"));
        }
        headers.extend_from_slice(extra);
        self.post(path, &headers, body)
    }

    /// A signed GitHub push of `sha` on the repo's current branch, to `/`.
    pub fn push(&self, git: &GitRepo, sha: &str) -> Response {
        self.push_to("/", git, sha)
    }

    pub fn push_to(&self, path: &str, git: &GitRepo, sha: &str) -> Response {
        let body = github_push(&git.name, &git.file_url(), &git.branch, sha, &git.message(sha), &git.default_branch);
        self.send_github(path, "push", body.to_string().as_bytes(), &[])
    }

    /// Pushes and expects 202; returns the build id.
    pub fn push_ok(&self, git: &GitRepo, sha: &str) -> String {
        let r = self.push(git, sha);
        assert_eq!(r.code, 202, "push of {} {sha}: {r}", git.name);
        r.json()["id"].as_str().unwrap_or_else(|| panic!("202 without string id: {r}")).to_string()
    }
}

pub struct Slave {
    pub index: u32,
    pub cluster: String,
    pub cache: PathBuf,
    pub proc: Proc,
}

/// A killed slave leaves what it made on the Docker engine (its next start's sweep would remove
/// it, but a test's cache is never started again): removed here, for a slave that made any.
impl Drop for Slave {
    fn drop(&mut self) {
        self.proc.kill9();
        if self.log().contains("step.container") {
            remove_engine_leftovers(&format!("label=ci-backend.slave={}", self.engine_label()));
        }
    }
}

/// Removes the containers, then the networks, matching `filter`; twice, for what a killed
/// slave's last calls to the engine were still making the first time.
pub fn remove_engine_leftovers(filter: &str) {
    for _ in 0..2 {
        for (list, remove) in [(&["ps", "-aq"][..], &["rm", "-f"][..]), (&["network", "ls", "-q"][..], &["network", "rm"][..])] {
            let Ok(out) = Command::new("docker").args(list).args(["--filter", filter]).output() else { return };
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").args(remove).args(&ids).output();
            }
        }
    }
}

impl Slave {
    /// Starts a slave with its own cache dir and `SLAVE_LEASE=2`; `env` is applied last.
    /// Waits for `slave.ready` and reads the claimed index.
    pub fn start(redis: &Redis, env: &[(&str, &str)]) -> Slave {
        Slave::start_as(redis, env, None)
    }

    /// The same, the slave running as `(uid, gid)` (tests running as root), its cache theirs and
    /// its binary one they can reach (`bin_for_others`).
    pub fn start_as(redis: &Redis, env: &[(&str, &str)], user: Option<(u32, u32)>) -> Slave {
        let k = next();
        let cache = redis.root.join(format!("slave-{k}-cache"));
        fs::create_dir_all(&cache).unwrap();
        let mut cmd = scrubbed(&if user.is_some() { bin_for_others("slave") } else { bin("slave") });
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            std::os::unix::fs::chown(&cache, Some(uid), Some(gid)).unwrap();
            cmd.uid(uid).gid(gid);
        }
        cmd.env("REDIS_URL", redis.url()).env("SLAVE_CACHE", &cache).env("SLAVE_LEASE", "2").current_dir(&redis.root);
        for (key, v) in env {
            cmd.env(key, v);
        }
        let cache = env.iter().find(|(key, _)| *key == "SLAVE_CACHE").map(|(_, v)| PathBuf::from(v)).unwrap_or(cache);
        let mut proc = Proc::spawn("slave", cmd, redis.root.join(format!("slave-{k}.out")), redis.root.join(format!("slave-{k}.err")));
        let (cluster, index) = wait_for("slave.ready line", DEADLINE, || {
            let out = proc.stdout();
            if let Some(line) = events(&out, "slave.ready").first() {
                let index = kv(line, "index").and_then(|i| i.parse::<u32>().ok());
                let cluster = kv(line, "cluster");
                if let (Some(c), Some(i)) = (cluster, index) {
                    return Ok((c, i));
                }
                panic!("slave.ready line without cluster= and a numeric index=: {line}");
            }
            if let Some(status) = proc.exited() {
                panic!("slave exited during startup: {status}\nstdout:\n{}\nstderr:\n{}", tail(&proc.out, 30), tail(&proc.err, 30));
            }
            Err(tail(&proc.out, 3))
        });
        proc.name = format!("slave {cluster}-{index}");
        Slave { index, cluster, cache, proc }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    pub fn name(&self) -> String {
        format!("{}-{}", self.cluster, self.index)
    }

    pub fn log(&self) -> String {
        self.proc.stdout()
    }

    /// The mirror of `repo` in this slave's cache (a bare repository, `.mirror-<hash>`).
    pub fn mirror(&self, repo: &GitRepo) -> PathBuf {
        fs::read_dir(self.cache.join(repo.name.replace('/', "%2F")))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".mirror-")))
            .expect("the mirror")
    }

    pub fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// The label the slave puts on what it makes on the Docker engine (its host and cache).
    pub fn engine_label(&self) -> String {
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        format!("{host}:{}", self.cache.display())
    }

    pub fn term(&self) {
        self.proc.signal("TERM");
    }

    /// The `build.started` lines of this slave that name build `id`.
    pub fn started(&self, id: &str) -> usize {
        events(&self.log(), "build.started").iter().filter(|l| kv(l, "id").as_deref() == Some(id)).count()
    }
}

/// Redis, one hook and `n` slaves of cluster `slave`, the hook already counting all of them.
/// Fields drop in order: slaves, hook, then redis (which removes the test directory).
pub struct Backend {
    pub slaves: Vec<Slave>,
    pub hook: Hook,
    pub redis: Redis,
}

impl Backend {
    pub fn start(n: usize, hook_env: &[(&str, &str)], slave_env: &[(&str, &str)]) -> Backend {
        let redis = Redis::start();
        let hook = Hook::start(&redis, hook_env);
        let slaves: Vec<Slave> = (0..n).map(|_| Slave::start(&redis, slave_env)).collect();
        if n > 0 {
            hook.wait_slaves("slave", n as u64);
        }
        Backend { slaves, hook, redis }
    }

    pub fn root(&self) -> &Path {
        &self.redis.root
    }

    pub fn repo(&self, name: &str) -> GitRepo {
        GitRepo::new(&self.redis.root, name)
    }

    /// Keeps a slave busy with a build of `name` that waits for the returned blocker (so the
    /// pushes that follow stay pending); returns it when it has started, with the build id.
    pub fn occupy(&self, name: &str) -> (Blocker, String) {
        let blocker = Blocker::new(self.root(), "busy");
        let (_, id) = self.queue(name, &blocker.yml(), "busy");
        blocker.wait_started();
        (blocker, id)
    }

    /// A new repository `name` whose `integration.yml` is `yml`, committed with `msg`, pushed
    /// and sent to the hook (202 expected); returns the repository and the build id.
    pub fn queue(&self, name: &str, yml: &str, msg: &str) -> (GitRepo, String) {
        let git = self.repo(name);
        git.write("integration.yml", yml);
        let sha = git.commit(msg);
        git.push();
        let id = self.hook.push_ok(&git, &sha);
        (git, id)
    }

    /// A new repository `name` holding `files`, committed with `msg`, pushed, sent to the hook
    /// (202 expected) and built to the end.
    pub fn build(&self, name: &str, files: &[(&str, &str)], msg: &str) -> (GitRepo, String, Build) {
        let git = self.repo(name);
        for (path, text) in files {
            git.write(path, text);
        }
        let sha = git.commit(msg);
        git.push();
        let id = self.hook.push_ok(&git, &sha);
        let build = wait_build(&self.redis, &id, LONG);
        (git, sha, build)
    }

    pub fn all_logs(&self) -> String {
        self.slaves.iter().map(|s| s.log()).collect::<Vec<_>>().join("\n")
    }
}

/// A build step that marks that it started, then waits (at most 120 s) until the test releases
/// it. `Drop` releases it, so no orphan loops outlive a test for long.
pub struct Blocker {
    pub mark: PathBuf,
    pub release: PathBuf,
}

impl Blocker {
    pub fn new(root: &Path, name: &str) -> Blocker {
        let dir = root.join("blockers");
        fs::create_dir_all(&dir).unwrap();
        world_writable(&dir);
        Blocker { mark: dir.join(format!("{name}.started")), release: dir.join(format!("{name}.release")) }
    }

    /// A bash snippet (several lines).
    pub fn snippet(&self) -> String {
        format!(
            "touch '{}'\ni=0\nwhile [ ! -e '{}' ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done\n",
            self.mark.display(),
            self.release.display()
        )
    }

    /// An integration.yml with the blocker as its one step.
    pub fn yml(&self) -> String {
        format!("step: block\nshell: |\n{}", indent(&self.snippet(), 2))
    }

    pub fn wait_started(&self) {
        wait_for(&format!("{} to exist", self.mark.display()), LONG, || if self.mark.exists() { Ok(()) } else { Err("absent".into()) });
    }

    pub fn release(&self) {
        fs::write(&self.release, b"").unwrap();
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = fs::write(&self.release, b"");
    }
}

pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Git
// ---------------------------------------------------------------------------------------------

/// A bare repository (the "remote" the payload's clone URL points at) and a work clone.
pub struct GitRepo {
    /// The repository's full name as payloads carry it (`owner/name`).
    pub name: String,
    pub bare: PathBuf,
    pub work: PathBuf,
    /// The branch `commit`/`push` work on.
    pub branch: String,
    /// What payloads report as the repository's default branch.
    pub default_branch: String,
}

pub fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "CI Test")
        .env("GIT_AUTHOR_EMAIL", "ci-test@example.com")
        .env("GIT_COMMITTER_NAME", "CI Test")
        .env("GIT_COMMITTER_EMAIL", "ci-test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-02T03:04:05+00:00")
        .env("GIT_COMMITTER_DATE", "2026-01-02T03:04:05+00:00");
    cmd
}

impl GitRepo {
    pub fn new(root: &Path, name: &str) -> GitRepo {
        let safe = name.replace('/', "__");
        let base = root.join("git");
        fs::create_dir_all(&base).unwrap();
        let bare = base.join(format!("{safe}.git"));
        let work = base.join(format!("{safe}.work"));
        run(git(&base).args(["init", "-q", "--bare", "--initial-branch=main"]).arg(&bare));
        run(git(&base).args(["init", "-q", "--initial-branch=main"]).arg(&work));
        run(git(&work).args(["remote", "add", "origin"]).arg(&bare));
        GitRepo { name: name.to_string(), bare, work, branch: "main".into(), default_branch: "main".into() }
    }

    pub fn write(&self, path: &str, text: &str) {
        let p = self.work.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, text).unwrap();
    }

    /// Commits everything (`git add -A`) and returns the new sha.
    pub fn commit(&self, msg: &str) -> String {
        run(git(&self.work).args(["add", "-A"]));
        run(git(&self.work).args(["commit", "-q", "--allow-empty", "-m", msg]));
        self.head()
    }

    pub fn head(&self) -> String {
        run(git(&self.work).args(["rev-parse", "HEAD"])).trim().to_string()
    }

    /// Pushes HEAD to the current branch of the bare repository.
    pub fn push(&self) {
        run(git(&self.work).args(["push", "-q", "-f", "origin", &format!("HEAD:refs/heads/{}", self.branch)]));
    }

    /// Switches (creating if needed) to `branch`.
    pub fn checkout(&mut self, branch: &str) {
        let born = git(&self.work).args(["rev-parse", "-q", "--verify", "HEAD"]).output().map(|o| o.status.success());
        if born.unwrap_or(false) {
            run(git(&self.work).args(["checkout", "-q", "-B", branch]));
        } else {
            run(git(&self.work).args(["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")]));
        }
        self.branch = branch.to_string();
    }

    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// The full commit message of `sha`, without the trailing newline.
    pub fn message(&self, sha: &str) -> String {
        run(git(&self.work).args(["log", "-1", "--format=%B", sha])).trim_end().to_string()
    }

    /// The committer date as git's `%cI` gives it, UTC written `+00:00` as git 2.39 and the
    /// slave write it (git 2.47 writes `Z`: the same instant).
    pub fn commit_time(&self, sha: &str) -> String {
        let iso = run(git(&self.work).args(["log", "-1", "--format=%cI", sha])).trim().to_string();
        iso.strip_suffix('Z').map_or(iso.clone(), |day| format!("{day}+00:00"))
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads (real samples from tests/fixtures/webhooks, rewritten to point at local repos)
// ---------------------------------------------------------------------------------------------

pub fn fixture_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks").join(rel)
}

pub fn fixture(rel: &str) -> Vec<u8> {
    fs::read(fixture_path(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

pub fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}"))
}

fn set_repo_name(repo: &mut Value, full: &str) {
    let (owner, name) = full.rsplit_once('/').unwrap_or(("owner", full));
    repo["full_name"] = json!(full);
    repo["name"] = json!(name);
    if repo["owner"].is_object() {
        repo["owner"]["login"] = json!(owner);
        repo["owner"]["name"] = json!(owner);
        repo["owner"]["username"] = json!(owner);
    }
}

/// GitHub push (`github/push/with-new-branch.payload.json`) of `sha` on `branch` of `repo`.
pub fn github_push(repo: &str, url: &str, branch: &str, sha: &str, msg: &str, default_branch: &str) -> Value {
    let mut v = fixture_json("github/push/with-new-branch.payload.json");
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["after"] = json!(sha);
    v["head_commit"]["id"] = json!(sha);
    v["head_commit"]["message"] = json!(msg);
    if let Some(commits) = v["commits"].as_array_mut() {
        for c in commits.iter_mut() {
            c["id"] = json!(sha);
            c["message"] = json!(msg);
        }
    }
    v["repository"]["clone_url"] = json!(url);
    v["repository"]["default_branch"] = json!(default_branch);
    v["repository"]["master_branch"] = json!(default_branch);
    set_repo_name(&mut v["repository"], repo);
    v
}

/// Gitea push (`gitea/gitea-push.json`) rewritten the same way.
pub fn gitea_push(repo: &str, url: &str, branch: &str, sha: &str, msg: &str) -> Value {
    let mut v = fixture_json("gitea/gitea-push.json");
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["after"] = json!(sha);
    if let Some(commits) = v["commits"].as_array_mut() {
        for c in commits.iter_mut() {
            c["id"] = json!(sha);
            c["message"] = json!(msg);
        }
    }
    v["repository"]["clone_url"] = json!(url);
    set_repo_name(&mut v["repository"], repo);
    v
}

/// GitLab push hook (`gitlab/push-hook.json`) rewritten the same way.
pub fn gitlab_push(repo: &str, url: &str, branch: &str, sha: &str, msg: &str) -> Value {
    let mut v = fixture_json("gitlab/push-hook.json");
    v["ref"] = json!(format!("refs/heads/{branch}"));
    v["after"] = json!(sha);
    v["checkout_sha"] = json!(sha);
    if let Some(commits) = v["commits"].as_array_mut() {
        if let Some(last) = commits.last_mut() {
            last["id"] = json!(sha);
            last["message"] = json!(msg);
        }
    }
    v["project"]["git_http_url"] = json!(url);
    v["repository"]["git_http_url"] = json!(url);
    v["project"]["path_with_namespace"] = json!(repo);
    let name = repo.rsplit('/').next().unwrap();
    v["project"]["name"] = json!(name);
    v["repository"]["name"] = json!(name);
    v
}

/// A deterministic xorshift64 generator (Marsaglia) for the fuzz tests and
/// the soak: the same seed gives the same run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn word(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }

    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from).max(1))
    }
}

/// Leaves `seen=<what the cache held>` in the log and the build id in the checkout, to show
/// which earlier build's cache a build found.
pub const STICKY_YML: &str = r#"step: sticky
debug: true
shell:
  - if [ -f artifact.txt ]; then echo "seen=$(cat artifact.txt)"; else echo seen=none; fi
  - echo "$BUILD_ID" > artifact.txt
"#;

/// What a [`STICKY_YML`] build saw in its cache: `none` or an earlier build's id.
pub fn seen(build: &Build) -> Option<String> {
    build.log.iter().find_map(|l| l.strip_prefix("[passed]   . seen=").map(String::from))
}

/// A TLS server (`openssl s_server`, which prints what a client sends and sends what it is
/// given) on 127.0.0.1 with the certificate `cert` (for IP 127.0.0.1) and its `key`; what it
/// prints goes to `out`.
pub struct TlsServer {
    pub port: u16,
    out: PathBuf,
    stdin: Option<std::process::ChildStdin>,
    child: std::process::Child,
}

impl TlsServer {
    pub fn start(cert: &Path, key: &Path, out: PathBuf) -> TlsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let stdin = child.stdin.take();
        let server = TlsServer { port, out, stdin, child };
        server.wait_until("s_server to listen", |out| out.contains("ACCEPT"));
        server
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    pub fn wait_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        wait_for(what, LONG, || {
            let out = self.output();
            if done(&out) {
                Ok(out)
            } else {
                Err(out.lines().last().unwrap_or("").to_string())
            }
        })
    }

    pub fn send(&mut self, bytes: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod selftest {
    use super::*;

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn hmac_matches_rfc_vectors() {
        let msg = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(sign_sha256(msg, "key"), "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
        assert_eq!(sign_sha1(msg, "key"), "sha1=de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9");
    }

    #[test]
    fn kv_reads_plain_and_quoted_values() {
        let l = r#"2026-11-26T12:00:00.123Z INFO  build.finished id=3 repo="a b" sha=0123456789 result=passed"#;
        assert_eq!(kv(l, "id").as_deref(), Some("3"));
        assert_eq!(kv(l, "repo").as_deref(), Some("a b"));
        assert_eq!(kv(l, "result").as_deref(), Some("passed"));
        assert_eq!(events(l, "build.finished").len(), 1);
    }

    #[test]
    fn cut_keeps_sixty_characters() {
        assert_eq!(cut("true"), "true");
        let long = "x".repeat(61);
        assert_eq!(cut(&long), format!("{}...", "x".repeat(60)));
        assert_eq!(cut(&"y".repeat(60)), "y".repeat(60));
    }

    #[test]
    fn chunked_and_plain_responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong").unwrap();
        assert_eq!((r.code, r.text()), (200, "pong".to_string()));
        let r = parse_response(b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!((r.code, r.text()), (202, "abcde".to_string()));
    }
}
