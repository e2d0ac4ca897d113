//! Runs one snippet: `bash -c` in its own process group, a given env and cwd,
//! stdin from /dev/null, stdout and stderr merged into one pipe whose tail is
//! kept within a byte budget; killed (the whole group) on timeout or abort.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of a snippet's output kept (the tail).
pub const OUTPUT_TAIL: usize = 256 * 1024;
/// Longest output line kept; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 4096;
/// How long a snippet has after SIGTERM before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How a snippet ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    TimedOut,
    /// Stopped because the slave is shutting down, lost its index, or
    /// stalled past half a lease (its guard killed the group).
    Aborted,
    SpawnFailed(String),
}

/// The last lines of a snippet's output and how many were dropped before them.
#[derive(Debug, Default)]
pub struct Tail {
    pub lines: VecDeque<String>,
    pub bytes: usize,
    pub dropped: u64,
}

impl Tail {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > OUTPUT_TAIL {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
                self.dropped += 1;
            }
        }
    }
}

pub struct Ran {
    pub exit: Exit,
    pub elapsed: Duration,
    pub output: Tail,
}

/// Runs `script` with exactly `env` (nothing inherited) in `cwd`.
pub fn run(script: &str, cwd: &Path, env: &[(String, String)], timeout: Duration, abort: &AtomicBool) -> Ran {
    let started = Instant::now();
    let failed = |e: String| Ran { exit: Exit::SpawnFailed(e), elapsed: started.elapsed(), output: Tail::default() };
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return failed(format!("pipe: {e}")),
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    let spawned = cmd.spawn();
    drop(cmd); // closes our copies of the pipe's write end
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return failed(format!("bash: {e}")),
    };
    let pgid = child.id() as i32;
    // Kills the group if this slave dies before the snippet ends.
    let guard = crate::guard::watch(pgid);
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (eof_tx, eof_rx) = crossbeam_channel::bounded::<()>(1);
    {
        let tail = Arc::clone(&tail);
        std::thread::spawn(move || {
            read_lines(reader, &tail);
            let _ = eof_tx.send(());
        });
    }
    let (exit_tx, exit_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = exit_tx.send(child.wait());
    });

    let deadline = started + timeout;
    let mut exit = None;
    while exit.is_none() {
        let slice = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
        match exit_rx.recv_timeout(slice) {
            Ok(status) => exit = Some(status_exit(status)),
            Err(_) if abort.load(Ordering::SeqCst) => {
                kill_group(pgid, &exit_rx);
                exit = Some(Exit::Aborted);
            }
            Err(_) if Instant::now() >= deadline => {
                kill_group(pgid, &exit_rx);
                exit = Some(Exit::TimedOut);
            }
            Err(_) => {}
        }
    }
    // Whatever the snippet left running in its group goes with it.
    signal_group(pgid, libc::SIGKILL);
    // A daemon that escaped the group (setsid) may hold the pipe open: keep
    // what was read by now rather than wait for it.
    let _ = eof_rx.recv_timeout(Duration::from_secs(1));
    // A guard that fired for want of beats means this slave stalled past half
    // a lease: the job may be taken over, so this run must not count.
    if guard.is_ok_and(crate::guard::Guard::finish) {
        exit = Some(Exit::Aborted);
    }
    let output = std::mem::take(&mut *tail.lock().unwrap_or_else(|p| p.into_inner()));
    Ran { exit: exit.unwrap_or(Exit::Aborted), elapsed: started.elapsed(), output }
}

fn status_exit(status: std::io::Result<std::process::ExitStatus>) -> Exit {
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

/// SIGTERM to the group, then SIGKILL if the leader is still there after a grace.
fn kill_group(pgid: i32, exited: &crossbeam_channel::Receiver<std::io::Result<std::process::ExitStatus>>) {
    signal_group(pgid, libc::SIGTERM);
    if exited.recv_timeout(KILL_GRACE).is_err() {
        signal_group(pgid, libc::SIGKILL);
        let _ = exited.recv_timeout(KILL_GRACE);
    }
}

/// Splits the stream into lines (lossy UTF-8, each at most MAX_LINE bytes)
/// without ever holding more than one line and the tail.
fn read_lines(mut reader: impl Read, tail: &Mutex<Tail>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let flush = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line).into_owned();
        tail.lock().unwrap_or_else(|p| p.into_inner()).push(text);
        line.clear();
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&body[..body.len().min(room)]);
            if ends {
                flush(&mut line);
            }
        }
    }
    if !line.is_empty() {
        flush(&mut line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: u64) -> Ran {
        let env = vec![("PATH".to_string(), std::env::var("PATH").unwrap_or_default())];
        run(script, Path::new("/tmp"), &env, Duration::from_secs(timeout), &AtomicBool::new(false))
    }

    #[test]
    fn exit_codes_and_merged_output() {
        let r = sh("echo out; echo err >&2; exit 3", 10);
        assert_eq!(r.exit, Exit::Code(3));
        assert_eq!(Vec::from(r.output.lines), vec!["out", "err"]);
    }

    #[test]
    fn only_the_given_env_is_seen() {
        let r = sh("echo \"[$HOME]\"", 10);
        assert_eq!(r.output.lines[0], "[]");
    }

    #[test]
    fn timeout_kills_the_group() {
        let r = sh("sleep 30 & sleep 30", 1);
        assert_eq!(r.exit, Exit::TimedOut);
        assert!(r.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn long_lines_are_cut_and_the_tail_kept() {
        let r = sh("head -c 10000 /dev/zero | tr '\\0' a; echo; seq 1 100000", 30);
        assert_eq!(r.exit, Exit::Code(0));
        assert!(r.output.bytes <= OUTPUT_TAIL);
        assert_eq!(r.output.lines.back().unwrap(), "100000");
        assert!(r.output.dropped > 0);
    }
}
