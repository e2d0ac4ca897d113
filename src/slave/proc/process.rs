//! One child process under watch, for `runner` (bash snippets) and `workspace`
//! (git): its own process group, stdin from /dev/null, stdout and stderr read
//! on threads into bounded buffers, a deadline and an abort flag. When either
//! is reached the whole group gets SIGTERM, then SIGKILL after a grace; when
//! the child ends, whatever it left in its group is killed. A `guard` kills
//! the group if the slave dies or stalls first.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Where output lines go as they arrive, on the reader thread; nothing here
/// may block. The bounded tail is kept as without it.
pub trait LineTarget: Send + Sync {
    /// Whether a line handed over now would be taken. Asked before each line;
    /// while it says no, output is only counted (at the speed of the tail).
    fn room(&self) -> bool;
    /// One line: cut at MAX_LINE bytes, its newline removed (see [`line_text`]).
    fn line(&self, line: &[u8]);
    /// `n` lines went by without being handed over.
    fn skipped(&self, n: u64);
}

pub type LineSink = Arc<dyn LineTarget>;

/// How long a group has after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// How often the deadline and the abort flag are looked at.
const POLL: Duration = Duration::from_millis(100);
/// Longest output line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;
/// Most lines a tail keeps, however short they are.
pub const MAX_LINES: usize = 8192;

/// Makes `cmd`'s child die with the slave thread that starts it
/// (`PR_SET_PDEATHSIG`), for the moment between its start and its guard's arming
/// (see `guard`): a slave SIGKILLed then would leave a step nobody watches.
/// Register it after any credential change (which clears the setting).
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only calls prctl, getppid
    // and reads errno (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The slave died before the setting took: do not start at all.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the slave is gone"));
            }
            Ok(())
        });
    }
}

/// The `git` every build runs: see [`program`].
pub fn git() -> &'static Path {
    static GIT: OnceLock<PathBuf> = OnceLock::new();
    GIT.get_or_init(|| program("git"))
}

/// The `bash` every snippet runs in: see [`program`].
pub fn bash() -> &'static Path {
    static BASH: OnceLock<PathBuf> = OnceLock::new();
    BASH.get_or_init(|| program("bash"))
}

/// `name` as the slave's own PATH finds it, looked up once: a child given
/// another environment would search its PATH itself, one `execve` per
/// directory before the one that has it (about 0.1 ms each, on every git
/// command of every build). Not found: the bare name, which fails to spawn
/// as before.
fn program(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    });
    found.unwrap_or_else(|| PathBuf::from(name))
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Its exit code, or 128 + the signal that ended it.
    Code(i32),
    TimedOut,
    /// Stopped because the slave is shutting down, lost its index, or
    /// stalled past half a lease (its guard killed the group).
    Aborted,
    SpawnFailed(String),
}

/// Where a child's output goes.
#[derive(Debug, Clone, Copy)]
pub enum Capture {
    /// stdout and stderr through one pipe; the last `tail` bytes kept as lines.
    Merged { tail: usize },
    /// The first `head` bytes of stdout; the last `tail` bytes of stderr as lines.
    Split { head: usize, tail: usize },
}

/// What a child left: how it ended, after how long, its output.
pub struct Finished {
    pub exit: Exit,
    pub elapsed: Duration,
    /// The merged output's tail, or stderr's.
    pub output: Tail,
    /// The head of stdout (`Capture::Split`); empty otherwise.
    pub stdout: Vec<u8>,
}

/// The last lines of an output and how many lines came before them.
#[derive(Debug, Default)]
pub struct Tail {
    pub lines: Vec<String>,
    pub dropped: u64,
}

/// Runs `cmd` (already given its program, arguments, env, cwd and user) to
/// its end, the deadline or the abort flag, whichever comes first.
pub fn run(cmd: Command, capture: Capture, deadline: Instant, abort: &AtomicBool) -> Finished {
    run_with_sink(cmd, capture, deadline, abort, None)
}

/// [`run`], also handing each line of the merged output (or of stderr) to
/// `sink` as it is read.
pub fn run_with_sink(cmd: Command, capture: Capture, deadline: Instant, abort: &AtomicBool, sink: Option<LineSink>) -> Finished {
    run_from(cmd, capture, deadline, abort, sink, Stdio::null())
}

/// [`run`] with `stdin` as the child's input (a file, or a pipe whose
/// whole content was written before).
pub fn run_fed(cmd: Command, capture: Capture, deadline: Instant, abort: &AtomicBool, stdin: Stdio) -> Finished {
    run_from(cmd, capture, deadline, abort, None, stdin)
}

fn run_from(cmd: Command, capture: Capture, deadline: Instant, abort: &AtomicBool, sink: Option<LineSink>, stdin: Stdio) -> Finished {
    let started = Instant::now();
    let (child, mut streams) = match spawn(cmd, capture, sink, stdin) {
        Ok(spawned) => spawned,
        Err(e) => return Finished { exit: Exit::SpawnFailed(e), elapsed: started.elapsed(), output: Tail::default(), stdout: vec![] },
    };
    let pgid = child.id() as i32;
    // Kills the group if this slave dies or stalls before the child ends.
    let guard = crate::slave::proc::guard::watch(pgid);
    // SAFETY: pidfd_open(2) on our own child; a descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pgid, 0) } as libc::c_int;
    let mut watch = Watch { child: Some(child), pgid, deadline, abort };
    let mut exit = watch.run(&mut streams, pidfd);
    if pidfd >= 0 {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(pidfd) };
    }
    // A guard that fired for want of beats means this slave stalled past half
    // a lease: the job may be taken over, so this run must not count.
    if guard.is_ok_and(crate::slave::proc::guard::Guard::finish) {
        exit = Exit::Aborted;
    }
    // Stopped from outside while it ended (a cancel, the shutdown grace, a
    // lost or unconfirmed lease whose watchdog SIGKILLed the group — its exit
    // may be reaped only later): the run does not count either.
    if abort.load(Ordering::SeqCst) {
        exit = Exit::Aborted;
    }
    let (output, stdout) = collect(streams);
    Finished { exit, elapsed: started.elapsed(), output, stdout }
}

/// Starts `cmd` in its own process group, stdin from `stdin`, its output
/// into pipes: one merged stream, or stdout and stderr apart.
fn spawn(mut cmd: Command, capture: Capture, sink: Option<LineSink>, stdin: Stdio) -> Result<(Child, Vec<Stream>), String> {
    let (out_r, out_w) = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = match capture {
        Capture::Merged { .. } => (None, out_w.try_clone().map_err(|e| format!("pipe: {e}"))?),
        Capture::Split { .. } => std::io::pipe().map(|(r, w)| (Some(r), w)).map_err(|e| format!("pipe: {e}"))?,
    };
    cmd.stdin(stdin).stdout(out_w).stderr(err_w).process_group(0);
    let spawned = super::reaper::spawn(&mut cmd);
    drop(cmd); // closes our copies of the pipes' write ends
    let child = spawned.map_err(|e| e.to_string())?;
    let (head_len, tail_len) = match capture {
        Capture::Merged { tail } => (0, tail),
        Capture::Split { head, tail } => (head, tail),
    };
    let mut streams = vec![match &err_r {
        Some(_) => Stream { pipe: Some(out_r), into: Into::Head(Vec::new(), head_len) },
        None => Stream { pipe: Some(out_r), into: Into::Tail(TailBuf::new(tail_len), sink.clone().map(Lines::new)) },
    }];
    if let Some(err_r) = err_r {
        streams.push(Stream { pipe: Some(err_r), into: Into::Tail(TailBuf::new(tail_len), sink.map(Lines::new)) });
    }
    Ok((child, streams))
}

/// The kept output: the tail (merged, or stderr's) and stdout's head.
fn collect(streams: Vec<Stream>) -> (Tail, Vec<u8>) {
    let mut output = Tail::default();
    let mut stdout = vec![];
    for stream in streams {
        match stream.into {
            Into::Head(head, _) => stdout = head,
            Into::Tail(tail, lines) => {
                if let Some(mut l) = lines {
                    l.finish();
                }
                output = tail.finish();
            }
        }
    }
    (output, stdout)
}

/// Where a watched child is.
enum Phase {
    /// Running: watched for its end, the deadline and the abort flag.
    Running,
    /// Its group got SIGTERM (timed out or aborted: `why`); SIGKILL is due at `kill_at`.
    Terminating { why: Exit, kill_at: Instant },
    /// Its group got SIGKILL; at `give_up_at` it is left to be reaped elsewhere.
    Killing { why: Exit, give_up_at: Instant },
    /// It ended (`exit`); its pipes are read until they close or `until`.
    Draining { exit: Exit, until: Instant },
}

/// How long the pipes are read after the child ended: a daemon that escaped
/// the group (setsid) may hold one open.
const DRAIN: Duration = Duration::from_secs(1);

/// One child under watch. Everything happens on the calling thread: the
/// child's end is a readable pidfd, its output readable pipes, all in one
/// poll (threads to wait and read cost each child three spawns and two
/// wake-ups).
struct Watch<'a> {
    /// `None` once given up on (reaped by a thread of its own).
    child: Option<Child>,
    pgid: i32,
    deadline: Instant,
    abort: &'a AtomicBool,
}

impl Watch<'_> {
    /// Watches and reads until the child ended and its pipes are drained;
    /// how it ended.
    fn run(&mut self, streams: &mut [Stream], pidfd: libc::c_int) -> Exit {
        let mut buf = vec![0u8; 64 * 1024];
        let mut phase = Phase::Running;
        loop {
            phase = self.next(phase, Instant::now(), streams);
            let open: Vec<usize> = (0..streams.len()).filter(|i| streams[*i].pipe.is_some()).collect();
            if let Phase::Draining { exit, until } = &phase {
                if open.is_empty() || Instant::now() >= *until {
                    return exit.clone();
                }
            }
            let ended = matches!(phase, Phase::Draining { .. });
            let mut wait = self.wake(&phase).saturating_duration_since(Instant::now()).min(POLL);
            if !ended && pidfd < 0 {
                wait = wait.min(Duration::from_millis(5));
            }
            poll_once(streams, &open, if ended { -1 } else { pidfd }, wait, &mut buf);
        }
    }

    /// The phase after looking at the child, the flag and the clock once.
    fn next(&mut self, phase: Phase, now: Instant, streams: &mut [Stream]) -> Phase {
        if let Phase::Draining { .. } = phase {
            return phase;
        }
        if let Some(code) = self.ended() {
            return match phase {
                Phase::Terminating { why, .. } | Phase::Killing { why, .. } => self.drain(why),
                _ => self.drain(code),
            };
        }
        match phase {
            Phase::Running if self.abort.load(Ordering::SeqCst) || now >= self.deadline => {
                let why = if self.abort.load(Ordering::SeqCst) { Exit::Aborted } else { Exit::TimedOut };
                signal_group(self.pgid, libc::SIGTERM);
                Phase::Terminating { why, kill_at: now + KILL_GRACE }
            }
            Phase::Terminating { why, kill_at } if now >= kill_at => {
                signal_group(self.pgid, libc::SIGKILL);
                Phase::Killing { why, give_up_at: now + KILL_GRACE }
            }
            Phase::Killing { why, give_up_at } if now >= give_up_at => {
                // Not even SIGKILL ended it in a grace: reap it elsewhere.
                if let Some(mut c) = self.child.take() {
                    std::thread::spawn(move || {
                        if c.wait().is_ok() {
                            super::reaper::reaped(c.id());
                        }
                    });
                }
                break_out(streams);
                self.drain(why)
            }
            other => other,
        }
    }

    /// How the child ended, if it did.
    fn ended(&mut self) -> Option<Exit> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => {
                super::reaper::reaped(self.child.as_ref().map_or(0, Child::id));
                Some(status_exit(Ok(status)))
            }
            Some(Ok(None)) | None => None,
            Some(Err(e)) => Some(status_exit(Err(e))),
        }
    }

    /// The child ended: whatever it left running in its group goes with it.
    fn drain(&self, exit: Exit) -> Phase {
        signal_group(self.pgid, libc::SIGKILL);
        Phase::Draining { exit, until: Instant::now() + DRAIN }
    }

    /// When the phase next needs a look, at the latest.
    fn wake(&self, phase: &Phase) -> Instant {
        match phase {
            Phase::Running => self.deadline,
            Phase::Terminating { kill_at: at, .. } | Phase::Killing { give_up_at: at, .. } | Phase::Draining { until: at, .. } => *at,
        }
    }
}

/// Waits up to `wait` for output on the `open` streams (or the child's end
/// on `pidfd`, when it is one) and reads what is ready.
fn poll_once(streams: &mut [Stream], open: &[usize], pidfd: libc::c_int, wait: Duration, buf: &mut [u8]) {
    let mut fds: Vec<libc::pollfd> = open.iter().map(|i| libc::pollfd { fd: streams[*i].fd(), events: libc::POLLIN, revents: 0 }).collect();
    if pidfd >= 0 {
        fds.push(libc::pollfd { fd: pidfd, events: libc::POLLIN, revents: 0 });
    }
    // SAFETY: `fds` holds fds.len() initialised entries, open descriptors of ours.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis().max(1) as libc::c_int) };
    if ready <= 0 {
        return;
    }
    for (slot, i) in open.iter().enumerate() {
        if fds[slot].revents != 0 {
            streams[*i].read_some(buf);
        }
    }
}

/// Stops reading every stream.
fn break_out(streams: &mut [Stream]) {
    for s in streams {
        s.pipe = None;
    }
}

/// One output pipe of a child and where its bytes go.
struct Stream {
    /// None once it reached its end.
    pipe: Option<std::io::PipeReader>,
    into: Into,
}

enum Into {
    /// The first `max` bytes kept, the rest read and thrown away (so the
    /// writer never blocks on a full pipe).
    Head(Vec<u8>, usize),
    /// The last bytes as lines, each line also to the sink.
    Tail(TailBuf, Option<Lines>),
}

impl Stream {
    fn fd(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.pipe.as_ref().map_or(-1, |p| p.as_raw_fd())
    }

    /// One read (poll said it would not block): its bytes kept, or the end.
    fn read_some(&mut self, buf: &mut [u8]) {
        let Some(pipe) = &mut self.pipe else { return };
        let n = match pipe.read(buf) {
            Ok(0) => {
                self.pipe = None;
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => {
                self.pipe = None;
                return;
            }
        };
        match &mut self.into {
            Into::Head(kept, max) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Into::Tail(tail, lines) => {
                if let Some(l) = lines {
                    l.feed(&buf[..n]);
                }
                tail.feed(&buf[..n]);
            }
        }
    }
}

fn status_exit(status: std::io::Result<ExitStatus>) -> Exit {
    match status {
        Ok(s) => Exit::Code(s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
        Err(e) => Exit::SpawnFailed(format!("wait: {e}")),
    }
}

fn signal_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals that process group only.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Splits a stream into lines for a [`LineSink`]; a line's bytes past
/// MAX_LINE are dropped as they come, so memory stays at MAX_LINE. While the
/// sink has no room, lines are only counted.
pub(crate) struct Lines {
    sink: LineSink,
    partial: Vec<u8>,
    /// The line being read lost its start (skipped): it is skipped whole.
    broken: bool,
}

impl Lines {
    pub(crate) fn new(sink: LineSink) -> Lines {
        Lines { sink, partial: Vec::new(), broken: false }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = rest.iter().position(|b| *b == b'\n') {
            if !self.sink.room() {
                // Count the rest of this read, keep the start of its last line.
                let n = count_newlines(rest);
                self.sink.skipped(n);
                self.partial.clear();
                self.broken = true;
                let last = rest.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                self.take(&rest[last..]);
                return;
            }
            self.take(&rest[..at]);
            if self.broken {
                self.sink.skipped(1);
                self.broken = false;
            } else {
                self.sink.line(&self.partial);
            }
            self.partial.clear();
            rest = &rest[at + 1..];
        }
        self.take(rest);
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    pub(crate) fn finish(&mut self) {
        if !self.partial.is_empty() && !self.broken && self.sink.room() {
            self.sink.line(&self.partial);
        }
        self.partial.clear();
    }
}

/// The last `cap` bytes of a stream, newlines included (so a flood of empty
/// lines costs a byte each), and how many newlines went by. Memory: at most
/// twice `cap`. Turned into lines once, at the end.
pub struct TailBuf {
    cap: usize,
    buf: Vec<u8>,
    newlines: u64,
    /// The bytes before `buf[0]` were dropped, mid-line.
    starts_mid_line: bool,
}

impl TailBuf {
    pub fn new(cap: usize) -> TailBuf {
        TailBuf { cap: cap.max(1), buf: Vec::new(), newlines: 0, starts_mid_line: false }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.newlines += count_newlines(data);
        self.buf.extend_from_slice(data);
        if self.buf.len() > 2 * self.cap {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.starts_mid_line = self.buf[cut - 1] != b'\n';
            self.buf.drain(..cut);
        }
    }

    /// The kept lines (each cut at MAX_LINE bytes, `\r` at the end removed,
    /// invalid UTF-8 replaced), at most MAX_LINES of them; a first line whose
    /// start was dropped counts as dropped.
    pub fn finish(mut self) -> Tail {
        self.trim();
        let text = self.buf.as_slice();
        let (body, unterminated) = match text.strip_suffix(b"\n") {
            Some(body) => (body, false),
            None => (text, !text.is_empty()),
        };
        let total = self.newlines + u64::from(unterminated);
        // `body` splits into one line more than it has newlines.
        let mut available = if text.is_empty() { 0 } else { count_newlines(body) as usize + 1 };
        if self.starts_mid_line {
            available -= 1;
        }
        let keep = available.min(MAX_LINES);
        let mut lines: Vec<String> = body.rsplit(|b| *b == b'\n').take(keep).map(line_text).collect();
        lines.reverse();
        Tail { dropped: total.saturating_sub(lines.len() as u64), lines }
    }
}

/// An output line as text: at most MAX_LINE bytes, a final `\r` removed,
/// invalid UTF-8 replaced.
pub fn line_text(line: &[u8]) -> String {
    let line = &line[..line.len().min(MAX_LINE)];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// Counts `\n` bytes eight at a time (a flood of output goes through here, and
/// test builds are not optimised).
fn count_newlines(data: &[u8]) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let mut chunks = data.chunks_exact(8);
    let mut n = 0u64;
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
        let x = word ^ 0x0a0a_0a0a_0a0a_0a0a; // zero bytes where '\n' was
        let zero_high = !(((x & LOW7) + LOW7) | x | LOW7); // high bit set exactly in zero bytes
        n += u64::from(zero_high.count_ones());
    }
    n + chunks.remainder().iter().filter(|b| **b == b'\n').count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_child_dies_with_the_thread_that_started_it() {
        let starter = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        });
        let mut child = starter.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "sleep outlived the thread that started it");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    fn tail_of(chunks: &[&[u8]], cap: usize) -> Tail {
        let mut t = TailBuf::new(cap);
        for c in chunks {
            t.feed(c);
        }
        t.finish()
    }

    /// Takes `room` lines, then has no room.
    struct Collect {
        seen: std::sync::Mutex<Vec<String>>,
        room: usize,
        skipped: AtomicU64,
    }

    impl LineTarget for Collect {
        fn room(&self) -> bool {
            self.seen.lock().unwrap().len() < self.room
        }
        fn line(&self, line: &[u8]) {
            self.seen.lock().unwrap().push(line_text(line));
        }
        fn skipped(&self, n: u64) {
            self.skipped.fetch_add(n, Ordering::SeqCst);
        }
    }

    fn collect(room: usize) -> Arc<Collect> {
        Arc::new(Collect { seen: Default::default(), room, skipped: AtomicU64::new(0) })
    }

    #[test]
    fn a_sink_gets_every_line_as_it_comes_cut_at_max_line() {
        let c = collect(usize::MAX);
        let mut lines = Lines::new(c.clone());
        lines.feed(b"a\r\nb");
        assert_eq!(*c.seen.lock().unwrap(), vec!["a".to_string()], "a line is handed over once its newline arrives");
        lines.feed(b"c\n\n");
        lines.feed(&vec![b'x'; MAX_LINE * 3]);
        lines.feed(b"\nlast");
        lines.finish();
        let got = c.seen.lock().unwrap().clone();
        assert_eq!(got.len(), 5, "{:?}", got.iter().map(|l| l.len()).collect::<Vec<_>>());
        assert_eq!((got[1].as_str(), got[2].as_str(), got[3].len(), got[4].as_str()), ("bc", "", MAX_LINE, "last"));
        assert_eq!(c.skipped.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn without_room_lines_are_counted_never_cut_in_half() {
        let c = collect(2);
        let mut lines = Lines::new(c.clone());
        lines.feed(b"one\ntwo\nthree\nfour\nfi");
        lines.feed(b"ve\n");
        lines.finish();
        assert_eq!(*c.seen.lock().unwrap(), vec!["one".to_string(), "two".into()]);
        // three, four, and five (whose start was skipped) are counted, not shown.
        assert_eq!(c.skipped.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn newlines_are_counted_like_a_plain_count() {
        let data: Vec<u8> = (0..1000u32).map(|i| if i % 7 == 0 || i % 11 == 3 { b'\n' } else { (i % 251) as u8 }).collect();
        for start in 0..9 {
            let slice = &data[start..];
            assert_eq!(count_newlines(slice), slice.iter().filter(|b| **b == b'\n').count() as u64);
        }
        assert_eq!(count_newlines(&[0x8a, 0x0b, 0x09, b'\n', 0xff, 0x0a, 0, 0x0a]), 3);
    }

    #[test]
    fn lines_are_split_and_the_last_unterminated_one_kept() {
        let t = tail_of(&[b"a\r\nb\n", b"\nc"], 100);
        assert_eq!((t.lines, t.dropped), (vec!["a".to_string(), "b".into(), "".into(), "c".into()], 0));
        let t = tail_of(&[b"\n"], 100);
        assert_eq!((t.lines, t.dropped), (vec![String::new()], 0));
        let t = tail_of(&[], 100);
        assert_eq!((t.lines.len(), t.dropped), (0, 0));
    }

    #[test]
    fn empty_lines_cost_a_byte_each_and_are_counted() {
        let chunk = vec![b'\n'; 64 * 1024];
        let mut t = TailBuf::new(1000);
        for _ in 0..100 {
            t.feed(&chunk);
            assert!(t.buf.len() <= 2000 + chunk.len());
        }
        let t = t.finish();
        assert_eq!(t.lines.len(), 1000);
        assert_eq!(t.dropped, 100 * 64 * 1024 - 1000);
    }

    #[test]
    fn lines_are_bounded_in_number_too() {
        let t = tail_of(&[&b"x\n".repeat(50_000)], 1 << 20);
        assert_eq!((t.lines.len(), t.dropped), (MAX_LINES, 50_000 - MAX_LINES as u64));
    }

    #[test]
    fn a_line_cut_at_the_front_is_dropped_and_long_lines_cut() {
        // The last 10 bytes are "ABCDEF\nxy\n": "ABCDEF" lost its start.
        let t = tail_of(&[b"0123456789ABCDEF\nxy\n"], 10);
        assert_eq!((t.lines, t.dropped), (vec!["xy".to_string()], 1));
        let long = vec![b'a'; MAX_LINE + 10];
        let t = tail_of(&[&long, b"\nend\n"], 1 << 20);
        assert_eq!(t.lines[0].len(), MAX_LINE);
        assert_eq!(t.lines[1], "end");
    }
}
