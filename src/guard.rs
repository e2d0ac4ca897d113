//! The watchdog of the build process groups: a tiny forked process that
//! SIGKILLs every group it watches when the slave can no longer vouch for
//! them, so a build never goes on while the same job runs again elsewhere:
//! - the slave died (SIGKILL, the OOM killer, a crash): its end of the pipe
//!   closes;
//! - the slave stopped (SIGSTOP, a hung process): it sends no beat for half a
//!   lease, while its lease still has at least a quarter lease to run, so the
//!   groups are dead before another slave may take the job over;
//! - the slave says so ([`fire_all`]): Redis has not confirmed its lease
//!   lately, so the index may pass to another slave.
//!
//! One watchdog serves every group of the slave: a group is added when its
//! leader is spawned and removed when it has ended, by a 5-byte message on the
//! pipe. (One fork per child cost each build a fork of the whole slave per
//! git or bash process.) A watchdog that fired is replaced at the next watch;
//! the groups it watched learn that it fired when they finish.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BEAT: u8 = b'h';
/// Kill every watched group now, as on silence.
const FIRE: u8 = b'k';
/// Followed by the process group id (4 bytes, native order).
const WATCH: u8 = b'w';
/// Followed by the process group id (4 bytes, native order).
const UNWATCH: u8 = b'u';
/// Most groups one watchdog holds (a fixed array: it may not allocate); a
/// new watchdog is started beside a full one.
const CAPACITY: usize = 1024;
/// The watchdog's exit code when it killed its groups for want of beats.
const FIRED_SILENT: i32 = 2;
/// ... and when the slave's end closed.
const FIRED_ORPHANED: i32 = 1;

/// Milliseconds without a beat after which a watchdog fires; 0 = never.
static SILENCE_MS: AtomicU64 = AtomicU64::new(0);
/// The live watchdogs, the newest last (the one new groups go to).
static LIVE: Mutex<Vec<Arc<Watchdog>>> = Mutex::new(Vec::new());

/// Sets how long watchdogs started from now wait for a beat (half the lease).
pub fn set_silence_limit(limit: Duration) {
    SILENCE_MS.store(limit.as_millis() as u64, Ordering::SeqCst);
}

/// Tells every watchdog the slave is alive. Never blocks: a watchdog that
/// does not read just misses beats.
pub fn beat_all() {
    for w in lock().iter() {
        // SAFETY: an open, non-blocking descriptor of ours (closed only once
        // it left LIVE, under the same lock).
        unsafe { libc::write(w.fd, [BEAT].as_ptr().cast(), 1) };
    }
}

/// Makes every watchdog kill its groups now, as if the slave had been
/// silent (those runs do not count). Never blocks.
pub fn fire_all() {
    for w in lock().iter() {
        // SAFETY: as in beat_all.
        unsafe { libc::write(w.fd, [FIRE].as_ptr().cast(), 1) };
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Arc<Watchdog>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// One watchdog process; its fields change under the LIVE lock only.
struct Watchdog {
    fd: libc::c_int,
    pid: libc::pid_t,
    silence_ms: u64,
    state: Mutex<WatchdogState>,
}

#[derive(Default)]
struct WatchdogState {
    /// Groups added and not removed yet.
    watched: usize,
    /// Its exit status, once reaped.
    ended: Option<libc::c_int>,
    /// The write end was closed.
    closed: bool,
}

impl Watchdog {
    fn state(&self) -> std::sync::MutexGuard<'_, WatchdogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps it if it has exited (`wait`: waits for that).
    fn reap(&self, st: &mut WatchdogState, wait: bool) {
        if st.ended.is_some() {
            return;
        }
        let mut status = 0;
        // SAFETY: our own child, reaped once (`ended` is set after).
        let got = unsafe { libc::waitpid(self.pid, &mut status, if wait { 0 } else { libc::WNOHANG }) };
        if got == self.pid || got < 0 {
            st.ended = Some(status);
        }
    }

    fn send(&self, tag: u8, pgid: i32) -> bool {
        let mut msg = [tag, 0, 0, 0, 0];
        msg[1..].copy_from_slice(&pgid.to_ne_bytes());
        // SAFETY: our own open descriptor; 5 bytes < PIPE_BUF: written whole or not at all.
        unsafe { libc::write(self.fd, msg.as_ptr().cast(), msg.len()) == msg.len() as isize }
    }
}

/// A watched process group.
pub struct Guard {
    dog: Option<Arc<Watchdog>>,
    pgid: i32,
}

/// Has process group `pgid` watched.
pub fn watch(pgid: i32) -> io::Result<Guard> {
    watch_with(pgid, SILENCE_MS.load(Ordering::SeqCst))
}

/// [`watch`] by a watchdog that fires after `silence` ms without a beat.
fn watch_with(pgid: i32, silence: u64) -> io::Result<Guard> {
    let mut live = lock();
    // Watchdogs that ended (fired) leave; the newest of this silence limit
    // takes the group unless it is full.
    live.retain(|w| {
        let mut st = w.state();
        w.reap(&mut st, false);
        if st.ended.is_some() {
            close(w, &mut st);
        }
        st.ended.is_none()
    });
    for attempt in 0..2 {
        let usable = live.iter().rev().find(|w| w.silence_ms == silence).filter(|w| w.state().watched < CAPACITY).cloned();
        let dog = match usable {
            Some(w) if attempt == 0 => w,
            _ => {
                let w = Arc::new(spawn(silence)?);
                live.push(Arc::clone(&w));
                w
            }
        };
        if dog.send(WATCH, pgid) {
            dog.state().watched += 1;
            retire_idle(&mut live);
            return Ok(Guard { dog: Some(dog), pgid });
        }
    }
    Err(io::Error::other("the watchdog takes no more messages"))
}

/// Closes the watchdogs that watch nothing, but the newest one of the
/// current silence limit: each sees end-of-file with no group and exits.
fn retire_idle(live: &mut Vec<Arc<Watchdog>>) {
    let silence = SILENCE_MS.load(Ordering::SeqCst);
    let keep = live.iter().rposition(|w| w.silence_ms == silence);
    let mut i = 0;
    live.retain(|w| {
        i += 1;
        let mut st = w.state();
        if Some(i - 1) == keep || st.watched > 0 {
            return true;
        }
        close(w, &mut st);
        w.reap(&mut st, true);
        false
    });
}

fn close(w: &Watchdog, st: &mut WatchdogState) {
    if !st.closed {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(w.fd) };
        st.closed = true;
    }
}

fn spawn(silence: u64) -> io::Result<Watchdog> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    let timeout: libc::c_int = if silence == 0 { -1 } else { silence.min(i32::MAX as u64) as libc::c_int };
    // SAFETY: the child only makes async-signal-safe calls (close, signal,
    // poll, read, kill, _exit) on stack memory and never returns into Rust code.
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
        // SAFETY: see above. The watchdog keeps no descriptor but its read
        // end, so it holds no socket or pipe of the slave open.
        unsafe { watchdog_main(read_end, write_end, timeout) }
    }
    // SAFETY: the read end is the child's now; the write end never blocks.
    unsafe {
        libc::close(read_end);
        libc::fcntl(write_end, libc::F_SETFL, libc::O_NONBLOCK);
    }
    Ok(Watchdog { fd: write_end, pid, silence_ms: silence, state: Mutex::new(WatchdogState::default()) })
}

/// The watchdog process: keeps the set of groups; kills them all on silence
/// or end-of-file.
unsafe fn watchdog_main(read_end: libc::c_int, write_end: libc::c_int, timeout: libc::c_int) -> ! {
    libc::close(write_end);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    if read_end > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, (read_end - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (read_end + 1) as u32, u32::MAX, 0u32);
    let mut groups = [0i32; CAPACITY];
    let mut count = 0usize;
    let kill_all = |groups: &[i32]| {
        for g in groups {
            libc::kill(-*g, libc::SIGKILL);
        }
    };
    // A message cut by a read's end is finished by the next read.
    let mut msg = [0u8; 5];
    let mut have = 0usize;
    let mut buf = [0u8; 256];
    loop {
        let mut pfd = libc::pollfd { fd: read_end, events: libc::POLLIN, revents: 0 };
        let ready = libc::poll(&mut pfd, 1, timeout);
        if ready < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            kill_all(&groups[..count]);
            libc::_exit(FIRED_ORPHANED);
        }
        if ready == 0 {
            kill_all(&groups[..count]);
            libc::_exit(FIRED_SILENT);
        }
        let n = libc::read(read_end, buf.as_mut_ptr().cast(), buf.len());
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            kill_all(&groups[..count]);
            libc::_exit(FIRED_ORPHANED);
        }
        for &b in &buf[..n as usize] {
            if have == 0 && b == BEAT {
                continue;
            }
            if have == 0 && b == FIRE {
                kill_all(&groups[..count]);
                libc::_exit(FIRED_SILENT);
            }
            msg[have] = b;
            have += 1;
            if have < msg.len() {
                continue;
            }
            have = 0;
            let pgid = i32::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
            if msg[0] == WATCH && count < CAPACITY {
                groups[count] = pgid;
                count += 1;
            } else if msg[0] == UNWATCH {
                if let Some(i) = groups[..count].iter().position(|g| *g == pgid) {
                    count -= 1;
                    groups[i] = groups[count];
                }
            }
        }
    }
}

impl Guard {
    /// Stops watching the group (it has ended) and tells whether the
    /// watchdog fired for want of beats meanwhile (the slave stalled: the
    /// group was killed, the build must not count).
    pub fn finish(mut self) -> bool {
        self.release()
    }

    fn release(&mut self) -> bool {
        let Some(dog) = self.dog.take() else { return false };
        let mut live = lock();
        let mut st = dog.state();
        dog.reap(&mut st, false);
        if st.ended.is_none() && !st.closed {
            dog.send(UNWATCH, self.pgid);
        }
        st.watched = st.watched.saturating_sub(1);
        // A stall between the message and this look also counts: the job may
        // have been taken over.
        dog.reap(&mut st, false);
        let fired = st.ended.is_some_and(|s| libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == FIRED_SILENT);
        drop(st);
        retire_idle(&mut live);
        fired
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    fn group(secs: &str) -> std::process::Child {
        Command::new("sleep").arg(secs).process_group(0).spawn().unwrap()
    }

    fn alive(pid: u32) -> bool {
        // SAFETY: signal 0 only checks the process exists.
        unsafe { libc::kill(pid as i32, 0) == 0 }
    }

    #[test]
    fn one_watchdog_serves_many_groups_and_fires_on_silence() {
        // No beats in this test: a 300 ms silence fires the watchdog (the
        // global limit stays as it is, for the other tests' children).
        let mut a = group("30");
        let mut b = group("30");
        let ga = watch_with(a.id() as i32, 300).unwrap();
        let gb = watch_with(b.id() as i32, 300).unwrap();
        assert!(Arc::ptr_eq(ga.dog.as_ref().unwrap(), gb.dog.as_ref().unwrap()), "one watchdog for both groups");
        let sa = a.wait().unwrap();
        let sb = b.wait().unwrap();
        assert_eq!((sa.code(), sb.code()), (None, None), "both groups killed");
        assert!(ga.finish() && gb.finish(), "each learns that the watchdog fired");
        // The next group gets a new watchdog; finished before any silence, it did not fire.
        let mut c = group("0");
        let gc = watch_with(c.id() as i32, 60_000).unwrap();
        c.wait().unwrap();
        assert!(!gc.finish());
        let mut d = group("30");
        let gd = watch(d.id() as i32).unwrap();
        let dog = Arc::clone(gd.dog.as_ref().unwrap());
        assert!(!gd.finish(), "an unwatched group is not killed");
        std::thread::sleep(Duration::from_millis(100));
        assert!(alive(d.id()));
        let _ = d.kill();
        let _ = d.wait();
        drop(dog);
    }

    #[test]
    fn a_fire_message_kills_the_groups_at_once() {
        // What fire_all sends, to this test's own watchdog only (one with a
        // silence limit no other test uses), so other tests' groups live on.
        let mut a = group("30");
        let ga = watch_with(a.id() as i32, 3_600_000).unwrap();
        let fd = ga.dog.as_ref().unwrap().fd;
        // SAFETY: the watchdog's open write end.
        assert_eq!(unsafe { libc::write(fd, [FIRE].as_ptr().cast(), 1) }, 1);
        assert_eq!(a.wait().unwrap().code(), None, "killed by a signal, long before its silence limit");
        assert!(ga.finish(), "the run learns it must not count");
    }
}
