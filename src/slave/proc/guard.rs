//! A watchdog of each build process group: a tiny forked process that
//! SIGKILLs the group when the slave can no longer vouch for it, so a build
//! never goes on while the same job runs again elsewhere:
//! - the slave died (SIGKILL, the OOM killer, a crash): its end of the pipe
//!   closes;
//! - the slave stopped (SIGSTOP, a hung process): it sends no beat for half a
//!   lease, while its lease still has at least a quarter lease to run, so the
//!   group is dead before another slave may take the job over;
//! - the slave says so ([`fire_all`]): Redis has not confirmed its lease
//!   lately, so the index may pass to another slave.
//!
//! Each thread that runs children (an executor) has one guard process, forked
//! at its first child and armed with each child's group in turn: a fork of
//! the slave per child cost about 0.25 ms of CPU, and the copies the kernel
//! made of every page the slave wrote while a young guard shared them
//! (measured with `perf` on a trivial build's spawn path). The slave disarms the guard when the
//! group has ended by itself; the guard says whether it had killed it.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Slave → guard: a beat (1 byte); fire now (1 byte); arm: `ARM` pgid seq
/// silence-ms (13 bytes); disarm: `DISARM` seq (5 bytes). Guard → slave, for
/// each disarm: `REPLY` seq fired (6 bytes). Integers are native-endian
/// 32-bit: both ends are the same binary. Each message is one write, shorter
/// than PIPE_BUF, so never interleaved.
const BEAT: u8 = b'h';
const FIRE: u8 = b'k';
const ARM: u8 = b'a';
const DISARM: u8 = b'x';
const REPLY: u8 = b'r';
const ARM_LEN: usize = 13;
const DISARM_LEN: usize = 5;
const REPLY_LEN: usize = 6;
/// The guard's exit code when the slave's end closed (it killed the armed group).
const ORPHANED: i32 = 1;

/// Milliseconds without a beat after which a guard fires; 0 = never.
static SILENCE_MS: AtomicU64 = AtomicU64::new(0);
/// The slave's end of every guard, and whether a group is armed there (only
/// armed guards are beaten and fired).
static GUARDS: Mutex<Vec<(libc::c_int, bool)>> = Mutex::new(Vec::new());
/// When [`beat_all`] last ran, in milliseconds after [`clock`]'s start (0: never).
static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);
/// Counts the moments a guard may have fired: every [`fire_all`], every gap
/// between beats longer than half the silence limit. A group whose time saw
/// none cannot have been killed, and its guard's answer need not be waited for.
static SUSPECT: AtomicU64 = AtomicU64::new(0);
/// Guards whose thread ended (they exit at once; reaped at the next beat or
/// the next guard's start).
static LEFT: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's guard, forked at its first child.
    static MINE: RefCell<Option<Watchdog>> = const { RefCell::new(None) };
}

/// Milliseconds since the first call (never 0).
fn clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether the beats have kept a guard of `silence` ms from firing lately:
/// the last one is recent, within half of it.
fn beats_recent(silence: u64) -> bool {
    let last = LAST_BEAT_MS.load(Ordering::SeqCst);
    silence == 0 || (last > 0 && clock().saturating_sub(last) <= silence / 2)
}

fn guards() -> std::sync::MutexGuard<'static, Vec<(libc::c_int, bool)>> {
    GUARDS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps the guards of ended threads that have exited.
fn reap_left() {
    LEFT.lock().unwrap_or_else(|p| p.into_inner()).retain(|pid| {
        let mut status = 0;
        // SAFETY: our own child, reaped once (removed when reaped).
        let running = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) == 0 };
        if !running {
            super::reaper::reaped(*pid as u32);
        }
        running
    });
}

/// Sets how long guards armed from now wait for a beat (half the lease).
pub fn set_silence_limit(limit: Duration) {
    SILENCE_MS.store(limit.as_millis() as u64, Ordering::SeqCst);
}

/// Writes `msg` in one piece to a non-blocking descriptor; false when it
/// could not (the guard is gone, or its pipe is full).
fn send(fd: libc::c_int, msg: &[u8]) -> bool {
    // SAFETY: an open descriptor of ours; `msg` is valid for its length.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) == msg.len() as isize }
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
    send_armed(BEAT);
}

/// Makes every armed guard kill its group now, as if the slave had been
/// silent (the runs do not count). Never blocks.
pub fn fire_all() {
    // Counted before any guard can read the byte: see Guard::finish.
    SUSPECT.fetch_add(1, Ordering::SeqCst);
    send_armed(FIRE);
}

/// Sends `byte` to every guard with a group armed.
fn send_armed(byte: u8) {
    for (fd, _) in guards().iter().filter(|(_, armed)| *armed) {
        send(*fd, &[byte]);
    }
}

/// Marks the guard whose slave end is `fd` armed or not, in `all` (locked by the caller).
fn mark(all: &mut [(libc::c_int, bool)], fd: libc::c_int, armed: bool) {
    if let Some(entry) = all.iter_mut().find(|(f, _)| *f == fd) {
        entry.1 = armed;
    }
}

/// A thread's guard process and the slave's ends of its two pipes.
struct Watchdog {
    pid: libc::pid_t,
    /// Slave → guard, non-blocking.
    to: libc::c_int,
    /// Guard → slave (the answers to disarms).
    from: libc::c_int,
    /// The last arm's number.
    seq: u32,
}

impl Watchdog {
    fn start() -> io::Result<Watchdog> {
        let pipe = || {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: pipe2 writes two descriptors into the array given.
            match unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } {
                0 => Ok((fds[0], fds[1])),
                _ => Err(io::Error::last_os_error()),
            }
        };
        let (to_r, to_w) = pipe()?;
        let (from_r, from_w) = match pipe() {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: both descriptors are ours.
                unsafe {
                    libc::close(to_r);
                    libc::close(to_w);
                }
                return Err(e);
            }
        };
        // SAFETY: the child only makes async-signal-safe calls (close,
        // signal, poll, read, write, kill, clock_gettime, _exit) and never
        // returns into Rust code.
        let pid = super::reaper::forked(|| unsafe { libc::fork() });
        if pid == 0 {
            // SAFETY: see above.
            unsafe { guard_main(to_r, from_w) }
        }
        let e = io::Error::last_os_error();
        // SAFETY: the child's ends are the child's now (or nobody's).
        unsafe {
            libc::close(to_r);
            libc::close(from_w);
        }
        if pid < 0 {
            // SAFETY: ours.
            unsafe {
                libc::close(to_w);
                libc::close(from_r);
            }
            return Err(e);
        }
        // SAFETY: our descriptors; neither end the slave writes may block.
        unsafe {
            libc::fcntl(to_w, libc::F_SETFL, libc::O_NONBLOCK);
            libc::fcntl(from_r, libc::F_SETFL, libc::O_NONBLOCK);
        }
        guards().push((to_w, false));
        Ok(Watchdog { pid, to: to_w, from: from_r, seq: 0 })
    }

    /// Arms the guard with `pgid`; false when the guard is gone.
    fn arm(&mut self, pgid: i32, silence: u64) -> bool {
        self.drain();
        self.seq = self.seq.wrapping_add(1);
        let mut msg = [0u8; ARM_LEN];
        msg[0] = ARM;
        msg[1..5].copy_from_slice(&pgid.to_ne_bytes());
        msg[5..9].copy_from_slice(&self.seq.to_ne_bytes());
        msg[9..13].copy_from_slice(&(silence.min(u32::MAX as u64) as u32).to_ne_bytes());
        // Armed under the lock: a fire_all or beat_all sees it before or after, whole.
        let mut all = guards();
        let sent = send(self.to, &msg);
        mark(&mut all, self.to, sent);
        sent
    }

    /// Disarms; with `answer`, waits for the guard's answer: whether it had
    /// killed the group. `None` when the guard is gone.
    fn disarm(&mut self, answer: bool) -> Option<bool> {
        let mut msg = [0u8; DISARM_LEN];
        msg[0] = DISARM;
        msg[1..5].copy_from_slice(&self.seq.to_ne_bytes());
        {
            let mut all = guards();
            mark(&mut all, self.to, false);
            if !send(self.to, &msg) {
                return None;
            }
        }
        if !answer {
            return Some(false);
        }
        let mut reply = [0u8; REPLY_LEN];
        loop {
            match self.read_reply(&mut reply, true) {
                None => return None,
                Some(()) if reply[1..5] == self.seq.to_ne_bytes() => return Some(reply[5] == 1),
                Some(()) => {} // an earlier child's answer, unread then
            }
        }
    }

    /// Reads one answer; `None` at the guard's end (or an error).
    fn read_reply(&self, reply: &mut [u8; REPLY_LEN], block: bool) -> Option<()> {
        let mut got = 0;
        while got < REPLY_LEN {
            // SAFETY: reads into the rest of `reply`, from our descriptor.
            let n = unsafe { libc::read(self.from, reply[got..].as_mut_ptr().cast(), REPLY_LEN - got) };
            if n > 0 {
                got += n as usize;
                continue;
            }
            let err = io::Error::last_os_error().raw_os_error();
            if n < 0 && err == Some(libc::EINTR) {
                continue;
            }
            if n < 0 && err == Some(libc::EAGAIN) && (block || got > 0) {
                let mut pfd = libc::pollfd { fd: self.from, events: libc::POLLIN, revents: 0 };
                // SAFETY: one initialised entry.
                unsafe { libc::poll(&mut pfd, 1, -1) };
                continue;
            }
            return None;
        }
        (reply[0] == REPLY).then_some(())
    }

    /// Reads the answers nobody waited for, so their pipe never fills.
    fn drain(&self) {
        let mut reply = [0u8; REPLY_LEN];
        while self.read_reply(&mut reply, false).is_some() {}
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        guards().retain(|(fd, _)| *fd != self.to);
        // SAFETY: our descriptors, closed once. The guard reads the end of
        // its pipe and exits (it kills the group it had armed, if any).
        unsafe {
            libc::close(self.to);
            libc::close(self.from);
        }
        LEFT.lock().unwrap_or_else(|p| p.into_inner()).push(self.pid);
    }
}

/// The guard process: waits for messages; kills the armed group on silence,
/// on a fire, or at the end of the slave's pipe. Everything it calls is
/// async-signal-safe and allocates nothing (it is a fork of a threaded slave).
unsafe fn guard_main(from_slave: libc::c_int, to_slave: libc::c_int) -> ! {
    isolate(from_slave, to_slave);
    let mut guard = Watching { armed: None, killed: None, last_beat: now_ms() };
    let mut buf = [0u8; 256];
    let mut have = 0usize;
    loop {
        let mut pfd = libc::pollfd { fd: from_slave, events: libc::POLLIN, revents: 0 };
        let ready = libc::poll(&mut pfd, 1, guard.timeout());
        if ready < 0 {
            if *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(0);
        }
        if ready == 0 {
            guard.kill_armed();
            continue;
        }
        let n = libc::read(from_slave, buf[have..].as_mut_ptr().cast(), buf.len() - have);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            // The slave's end closed: it exited or died.
            if let Some(a) = guard.armed {
                libc::kill(-a.pgid, libc::SIGKILL);
            }
            libc::_exit(ORPHANED);
        }
        have += n as usize;
        let used = guard.handle_all(&buf[..have], to_slave);
        buf.copy_within(used..have, 0);
        have -= used;
    }
}

/// In the guard: ignores the terminal's and the operator's signals (the
/// slave decides), and closes every descriptor but its two ends, so it holds
/// no socket or pipe of the slave open.
unsafe fn isolate(from_slave: libc::c_int, to_slave: libc::c_int) {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    let (low, high) = (from_slave.min(to_slave), from_slave.max(to_slave));
    if low > 3 {
        libc::syscall(libc::SYS_close_range, 3u32, (low - 1) as u32, 0u32);
    }
    if high > low + 1 {
        libc::syscall(libc::SYS_close_range, (low + 1) as u32, (high - 1) as u32, 0u32);
    }
    libc::syscall(libc::SYS_close_range, (high + 1) as u32, u32::MAX, 0u32);
}

/// In the guard: the monotonic clock in milliseconds.
unsafe fn now_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// The group a guard is armed with.
#[derive(Clone, Copy)]
struct Armed {
    pgid: i32,
    /// The arm's number, which its disarm names.
    seq: u32,
    /// Milliseconds without a beat before it is killed; 0 = never.
    silence: i64,
}

/// What the guard process knows.
struct Watching {
    armed: Option<Armed>,
    /// The number of the last group killed.
    killed: Option<u32>,
    last_beat: i64,
}

impl Watching {
    /// How long the next poll may wait: until the silence limit, or forever.
    unsafe fn timeout(&self) -> libc::c_int {
        match self.armed {
            Some(a) if a.silence > 0 => (self.last_beat + a.silence - now_ms()).clamp(0, i32::MAX as i64) as libc::c_int,
            _ => -1,
        }
    }

    /// Handles the whole messages at the start of `buf`; the bytes used.
    unsafe fn handle_all(&mut self, buf: &[u8], to_slave: libc::c_int) -> usize {
        let mut at = 0;
        while at < buf.len() {
            let need = match buf[at] {
                ARM => ARM_LEN,
                DISARM => DISARM_LEN,
                _ => 1,
            };
            if buf.len() - at < need {
                break;
            }
            self.handle(&buf[at..at + need], to_slave);
            at += need;
        }
        at
    }

    /// One message from the slave.
    unsafe fn handle(&mut self, msg: &[u8], to_slave: libc::c_int) {
        let int = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        match msg[0] {
            BEAT => self.last_beat = now_ms(),
            FIRE => self.kill_armed(),
            ARM => {
                self.armed = Some(Armed { pgid: int(&msg[1..5]) as i32, seq: int(&msg[5..9]), silence: int(&msg[9..13]) as i64 });
                self.last_beat = now_ms();
            }
            DISARM => {
                let seq = int(&msg[1..5]);
                if self.armed.is_some_and(|a| a.seq == seq) {
                    self.armed = None;
                }
                let mut reply = [0u8; REPLY_LEN];
                reply[0] = REPLY;
                reply[1..5].copy_from_slice(&seq.to_ne_bytes());
                reply[5] = u8::from(self.killed == Some(seq));
                libc::write(to_slave, reply.as_ptr().cast(), REPLY_LEN);
            }
            _ => {}
        }
    }

    /// Kills the armed group, if any, and remembers its number.
    unsafe fn kill_armed(&mut self) {
        if let Some(a) = self.armed.take() {
            libc::kill(-a.pgid, libc::SIGKILL);
            self.killed = Some(a.seq);
        }
    }
}

/// An armed guard of one process group, on the thread that started it.
pub struct Guard {
    /// [`SUSPECT`] when the group was armed, or `None` when the beats were
    /// already late then.
    suspect: Option<u64>,
    silence: u64,
    /// Not Send: the guard is this thread's.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Arms this thread's guard with process group `pgid` (forking the guard at
/// the thread's first child, or again if it is gone).
pub fn watch(pgid: i32) -> io::Result<Guard> {
    watch_with(pgid, SILENCE_MS.load(Ordering::SeqCst))
}

fn watch_with(pgid: i32, silence: u64) -> io::Result<Guard> {
    reap_left();
    let suspect = beats_recent(silence).then(|| SUSPECT.load(Ordering::SeqCst));
    MINE.with(|mine| {
        let mut mine = mine.borrow_mut();
        for _ in 0..2 {
            if mine.is_none() {
                *mine = Some(Watchdog::start()?);
            }
            if mine.as_mut().is_some_and(|w| w.arm(pgid, silence)) {
                return Ok(Guard { suspect, silence, _thread: std::marker::PhantomData });
            }
            // Gone (killed from outside) or not reading: a new one.
            retire(&mut mine);
        }
        Err(io::Error::other("cannot arm a guard"))
    })
}

/// Drops this thread's guard after killing it (it may be stopped).
fn retire(mine: &mut Option<Watchdog>) {
    if let Some(w) = mine.take() {
        // SAFETY: our own child.
        unsafe { libc::kill(w.pid, libc::SIGKILL) };
    }
}

impl Guard {
    /// Disarms the guard and tells whether it had killed the group for want
    /// of beats or by a fire (the slave stalled or lost its lease: the build
    /// must not count).
    pub fn finish(self) -> bool {
        // No fire_all since it was armed and no late beat, before or now: it
        // cannot have fired, so its answer need not be waited for.
        let quiet = self.suspect.is_some_and(|at| at == SUSPECT.load(Ordering::SeqCst)) && beats_recent(self.silence);
        std::mem::forget(self);
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            match mine.as_mut().map(|w| w.disarm(!quiet)) {
                Some(Some(fired)) => fired,
                // Gone: killed from outside; a new one guards the next group.
                _ => {
                    retire(&mut mine);
                    false
                }
            }
        })
    }
}

impl Drop for Guard {
    /// Disarms a guard nobody finished (an early return, a panic).
    fn drop(&mut self) {
        let _ = MINE.try_with(|mine| {
            if let Some(w) = mine.borrow_mut().as_mut() {
                w.disarm(false);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command};

    fn group(program: &str, args: &[&str]) -> Child {
        Command::new(program).args(args).process_group(0).spawn().unwrap()
    }

    fn my_guard() -> libc::pid_t {
        MINE.with(|m| m.borrow().as_ref().map(|w| w.pid)).unwrap()
    }

    #[test]
    fn a_fire_kills_the_armed_group_at_once_and_the_run_does_not_count() {
        // What fire_all sends, to this thread's guard only, so other tests' groups live on.
        let mut child = group("sleep", &["30"]);
        let guard = watch_with(child.id() as i32, 0).unwrap();
        SUSPECT.fetch_add(1, Ordering::SeqCst);
        let to = MINE.with(|m| m.borrow().as_ref().unwrap().to);
        assert!(send(to, &[FIRE]));
        assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
        assert!(guard.finish(), "the run learns it must not count");
        // The same guard then guards the next group, which ends by itself and counts.
        let before = my_guard();
        let mut child = group("true", &[]);
        let guard = watch_with(child.id() as i32, 0).unwrap();
        assert_eq!(my_guard(), before, "no new fork");
        assert_eq!(child.wait().unwrap().code(), Some(0));
        SUSPECT.fetch_add(1, Ordering::SeqCst); // makes finish ask the guard
        assert!(!guard.finish());
    }

    #[test]
    fn silence_kills_the_armed_group_and_the_run_does_not_count() {
        // No beats in unit tests: a 100 ms limit runs out while `sleep` runs.
        let mut child = group("sleep", &["30"]);
        let guard = watch_with(child.id() as i32, 100).unwrap();
        assert_eq!(child.wait().unwrap().code(), None, "killed by a signal");
        assert!(guard.finish());
    }

    #[test]
    fn one_guard_serves_a_thread_and_exits_with_it_killing_what_it_guards() {
        let (pids, victim) = std::thread::spawn(|| {
            let mut pids = vec![];
            for _ in 0..3 {
                let mut child = group("true", &[]);
                let guard = watch_with(child.id() as i32, 0).unwrap();
                child.wait().unwrap();
                assert!(!guard.finish());
                pids.push(my_guard());
            }
            // Armed when the thread ends (as if the slave died with it): the group goes too.
            let victim = group("sleep", &["30"]);
            std::mem::forget(watch_with(victim.id() as i32, 0).unwrap());
            (pids, victim)
        })
        .join()
        .unwrap();
        assert!(pids.windows(2).all(|w| w[0] == w[1]), "one guard for the thread: {pids:?}");
        let mut victim = victim;
        assert_eq!(victim.wait().unwrap().code(), None, "killed by its guard");
        // The guard exited and is reaped later: poll with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            reap_left();
            // SAFETY: kill with signal 0 only asks whether the pid exists.
            if unsafe { libc::kill(pids[0], 0) } != 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "guard {} left a zombie", pids[0]);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_guard_killed_from_outside_is_replaced_and_still_guards() {
        let mut first = group("true", &[]);
        let guard = watch_with(first.id() as i32, 0).unwrap();
        first.wait().unwrap();
        assert!(!guard.finish());
        let old = my_guard();
        // SAFETY: our own child.
        unsafe { libc::kill(old, libc::SIGKILL) };
        let mut status = 0;
        // SAFETY: our own child, reaped here.
        unsafe { libc::waitpid(old, &mut status, 0) };
        let mut child = group("sleep", &["30"]);
        let guard = watch_with(child.id() as i32, 0).unwrap();
        assert_ne!(my_guard(), old, "a new guard");
        SUSPECT.fetch_add(1, Ordering::SeqCst);
        let to = MINE.with(|m| m.borrow().as_ref().unwrap().to);
        assert!(send(to, &[FIRE]));
        assert_eq!(child.wait().unwrap().code(), None, "the new guard killed it");
        assert!(guard.finish());
    }
}
