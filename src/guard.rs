//! A watchdog per build process group: a tiny forked process that SIGKILLs
//! the group when the slave can no longer vouch for it, so a build never goes
//! on while the same job runs again elsewhere:
//! - the slave died (SIGKILL, the OOM killer, a crash): its end of the pipe
//!   closes;
//! - the slave stopped (SIGSTOP, a hung process): it sends no beat for half a
//!   lease, while its lease still has at least a quarter lease to run, so the
//!   group is dead before another slave may take the job over;
//! - the slave says so ([`fire_all`]): Redis has not confirmed its lease
//!   lately, so the index may pass to another slave.
//!
//! The slave disarms the guard when the group has ended by itself.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const BEAT: u8 = b'h';
const DISARM: u8 = b'x';
const FIRE: u8 = b'k';
/// The guard's exit code when it killed the group for want of beats.
const FIRED_SILENT: i32 = 2;
/// ... and when the slave's end closed without a disarm.
const FIRED_ORPHANED: i32 = 1;

/// Milliseconds without a beat after which a guard fires; 0 = never.
static SILENCE_MS: AtomicU64 = AtomicU64::new(0);
/// The write ends of every armed guard, for [`beat_all`].
static ARMED: Mutex<Vec<libc::c_int>> = Mutex::new(Vec::new());
/// When [`beat_all`] last ran, in milliseconds after [`clock`]'s start (0: never).
static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);
/// Counts the moments a guard may have fired: every [`fire_all`], every gap
/// between beats longer than half the silence limit. A guard that saw none
/// cannot have fired, and its end need not be waited for.
static SUSPECT: AtomicU64 = AtomicU64::new(0);
/// Disarmed guards not reaped yet (they exit at once; reaped at the next
/// beat or the next guard's start).
static LEFT: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Milliseconds since the first call (never 0).
fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether the beats have kept a guard from firing lately: the last one is
/// recent, within half the silence limit.
fn beats_recent() -> bool {
    let silence = SILENCE_MS.load(Ordering::SeqCst);
    let last = LAST_BEAT_MS.load(Ordering::SeqCst);
    silence == 0 || (last > 0 && clock().saturating_sub(last) <= silence / 2)
}

/// Reaps the disarmed guards that have exited.
fn reap_left() {
    LEFT.lock().unwrap_or_else(|p| p.into_inner()).retain(|pid| {
        let mut status = 0;
        // SAFETY: our own child, reaped once (removed when reaped).
        unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) == 0 }
    });
}

/// Sets how long guards started from now wait for a beat (half the lease).
pub fn set_silence_limit(limit: Duration) {
    SILENCE_MS.store(limit.as_millis() as u64, Ordering::SeqCst);
}

/// Tells every armed guard the slave is alive. Never blocks: a guard that
/// does not read (stopped with the slave) just misses beats.
pub fn beat_all() {
    let now = clock();
    let last = LAST_BEAT_MS.swap(now, Ordering::SeqCst);
    if last > 0 && now - last > SILENCE_MS.load(Ordering::SeqCst) / 2 {
        SUSPECT.fetch_add(1, Ordering::SeqCst);
    }
    reap_left();
    for fd in ARMED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        // SAFETY: an open, non-blocking descriptor of ours (removed before close).
        unsafe { libc::write(*fd, [BEAT].as_ptr().cast(), 1) };
    }
}

/// Makes every armed guard kill its group now, as if the slave had been
/// silent (the runs do not count). Never blocks.
pub fn fire_all() {
    // Counted before any guard can read the byte: see Guard::finish.
    SUSPECT.fetch_add(1, Ordering::SeqCst);
    for fd in ARMED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        // SAFETY: an open, non-blocking descriptor of ours (removed before close).
        unsafe { libc::write(*fd, [FIRE].as_ptr().cast(), 1) };
    }
}

pub struct Guard {
    fd: libc::c_int,
    pid: libc::pid_t,
    /// [`SUSPECT`] when the guard started, or `None` when the beats were
    /// already late then.
    suspect: Option<u64>,
}

/// Starts a guard of process group `pgid`.
pub fn watch(pgid: i32) -> io::Result<Guard> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    reap_left();
    let suspect = beats_recent().then(|| SUSPECT.load(Ordering::SeqCst));
    let silence = SILENCE_MS.load(Ordering::SeqCst);
    let timeout: libc::c_int = if silence == 0 { -1 } else { silence.min(i32::MAX as u64) as libc::c_int };
    // SAFETY: the child only makes async-signal-safe calls (close, signal,
    // poll, read, kill, _exit) and never returns into Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: both descriptors are ours.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: see above. The guard keeps no descriptor but its read end,
        // so it holds no socket or pipe of the slave open.
        unsafe { guard_main(read_end, write_end, pgid, timeout) }
    }
    // SAFETY: the read end is the child's now; the write end never blocks.
    unsafe {
        libc::close(read_end);
        libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK);
    }
    ARMED.lock().unwrap_or_else(|p| p.into_inner()).push(write_end);
    Ok(Guard { fd: write_end, pid, suspect })
}

/// The guard process: waits for beats; fires on silence or end-of-file.
unsafe fn guard_main(read_end: libc::c_int, write_end: libc::c_int, pgid: i32, timeout: libc::c_int) -> ! {
    libc::close(write_end);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    if read_end > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, (read_end - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (read_end + 1) as u32, u32::MAX, 0u32);
    let mut buf = [0u8; 64];
    loop {
        let mut pfd = libc::pollfd { fd: read_end, events: libc::POLLIN, revents: 0 };
        let ready = libc::poll(&mut pfd, 1, timeout);
        if ready < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(0);
        }
        if ready == 0 {
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(FIRED_SILENT);
        }
        let n = libc::read(read_end, buf.as_mut_ptr().cast(), buf.len());
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(FIRED_ORPHANED);
        }
        if buf[..n as usize].contains(&DISARM) {
            libc::_exit(0);
        }
        if buf[..n as usize].contains(&FIRE) {
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(FIRED_SILENT);
        }
    }
}

impl Guard {
    fn disarm(&mut self) {
        ARMED.lock().unwrap_or_else(|p| p.into_inner()).retain(|fd| *fd != self.fd);
        // SAFETY: our own descriptor, closed once (fd = -1 after).
        unsafe {
            libc::write(self.fd, [DISARM].as_ptr().cast(), 1);
            libc::close(self.fd);
        }
        self.fd = -1;
    }

    /// Disarms the guard and tells whether it had fired for want of beats
    /// (the slave stalled: the group was killed, the build must not count).
    pub fn finish(mut self) -> bool {
        self.disarm();
        // No fire_all since it started and no late beat, before or now: it
        // cannot have fired, so the build's next step need not wait for it
        // to exit (a fork's teardown, on every child's path).
        let quiet = self.suspect.is_some_and(|at| at == SUSPECT.load(Ordering::SeqCst)) && beats_recent();
        if quiet {
            LEFT.lock().unwrap_or_else(|p| p.into_inner()).push(self.pid);
            self.pid = 0;
            return false;
        }
        let mut status = 0;
        // SAFETY: our own child, reaped once (pid = 0 after).
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        self.pid = 0;
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == FIRED_SILENT
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.fd >= 0 {
            self.disarm();
        }
        if self.pid > 0 {
            let mut status = 0;
            // SAFETY: our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_fire_message_kills_the_group_at_once_and_the_run_does_not_count() {
        // What fire_all sends, to this test's own guard only, so other tests' groups live on.
        let mut child = std::process::Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let guard = watch(child.id() as i32).unwrap();
        SUSPECT.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the guard's open write end.
        assert_eq!(unsafe { libc::write(guard.fd, [FIRE].as_ptr().cast(), 1) }, 1);
        assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
        assert!(guard.finish(), "the run learns it must not count");
    }

    #[test]
    fn a_quiet_guard_is_not_waited_for_and_is_reaped_later() {
        let mut child = std::process::Command::new("true").process_group(0).spawn().unwrap();
        let guard = watch(child.id() as i32).unwrap();
        child.wait().unwrap();
        let pid = guard.pid;
        let before = SUSPECT.load(Ordering::SeqCst);
        let fired = guard.finish();
        if SUSPECT.load(Ordering::SeqCst) == before {
            // (another test's fire may have made this one wait: then it was reaped already)
            assert!(!fired);
        }
        // Reaped by a later beat or guard: poll with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            reap_left();
            // SAFETY: kill with signal 0 only asks whether the pid exists.
            let gone = unsafe { libc::kill(pid, 0) } != 0;
            if gone {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "guard {pid} left a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
