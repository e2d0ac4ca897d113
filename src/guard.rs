//! A watchdog per build process group: a tiny forked process that SIGKILLs
//! the group if the slave dies (SIGKILL, the OOM killer, a crash) before the
//! group ended. Without it a killed slave's build goes on as an orphan while
//! the replacement runs the same job again, in the same cache.
//!
//! The guard blocks reading a pipe whose only write end the slave holds. The
//! slave disarms it by writing one byte when the group has ended normally;
//! end-of-file without that byte means the slave is gone: kill the group.

use std::io;

pub struct Guard {
    /// The write end: one byte disarms, closing without it fires.
    fd: libc::c_int,
    pid: libc::pid_t,
}

/// Starts a guard of process group `pgid`.
pub fn watch(pgid: i32) -> io::Result<Guard> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: the child only makes async-signal-safe calls (close, signal,
    // read, kill, _exit) before it exits; it never returns into Rust code.
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
        // SAFETY: see above; the guard holds no descriptor but its read end,
        // so it keeps no socket or pipe of the slave open.
        unsafe {
            libc::close(write_end);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::signal(sig, libc::SIG_IGN);
            }
            if read_end > 3 {
                libc::syscall(libc::SYS_close_range, 3u32, (read_end - 1) as u32, 0u32);
            }
            libc::syscall(libc::SYS_close_range, (read_end + 1) as u32, u32::MAX, 0u32);
            let mut byte = 0u8;
            let n = loop {
                let n = libc::read(read_end, (&mut byte as *mut u8).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            if n <= 0 {
                libc::kill(-pgid, libc::SIGKILL);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: the read end is the child's now.
    unsafe { libc::close(read_end) };
    Ok(Guard { fd: write_end, pid })
}

impl Drop for Guard {
    /// The group has ended (or been killed) by the slave: disarm and reap.
    fn drop(&mut self) {
        // SAFETY: our own descriptor and child.
        unsafe {
            libc::write(self.fd, b"x".as_ptr().cast(), 1);
            libc::close(self.fd);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}
