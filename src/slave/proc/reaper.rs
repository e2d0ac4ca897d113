//! No process of a build outlives it. The slave is its children's
//! subreaper (`PR_SET_CHILD_SUBREAPER`): a process that left its step's
//! process group (`setsid`, a double fork) and whose parent ended becomes the
//! slave's child instead of init's. The slave knows the children it started
//! (every spawn goes through [`spawn`] or [`forked`]); a sweeper thread kills
//! every other child it finds — escapees of ended snippets — and reaps them.

use std::collections::HashSet;
use std::io;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The children the slave started and has not reaped yet.
static KNOWN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

fn known() -> MutexGuard<'static, Option<HashSet<u32>>> {
    KNOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes this process the subreaper of its descendants, and starts the
/// sweeper (every `every`). Until this is called, nothing is swept.
pub fn start(every: Duration) -> io::Result<()> {
    // SAFETY: prctl with an integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    known().get_or_insert_with(HashSet::new);
    std::thread::Builder::new().name("reaper".into()).spawn(move || loop {
        std::thread::sleep(every);
        sweep();
    })?;
    Ok(())
}

/// Spawns `cmd`, remembered as one of the slave's own children.
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    let mut known = known();
    let child = cmd.spawn()?;
    if let Some(set) = known.as_mut() {
        set.insert(child.id());
    }
    Ok(child)
}

/// Forks with `fork` (which returns the child's pid, or a negative number),
/// the child remembered as one of the slave's own.
pub fn forked(fork: impl FnOnce() -> libc::pid_t) -> libc::pid_t {
    let mut known = known();
    let pid = fork();
    if let (Some(set), true) = (known.as_mut(), pid > 0) {
        set.insert(pid as u32);
    }
    pid
}

/// A child of ours was reaped: its pid may be given to another process.
pub fn reaped(pid: u32) {
    if let Some(set) = known().as_mut() {
        set.remove(&pid);
    }
}

/// Kills every child of this process it did not start itself (escapees of
/// ended snippets, reparented here), and reaps those that have exited.
/// Returns how many it killed.
pub fn sweep() -> usize {
    let me = std::process::id();
    // The table is read without the lock (spawns on a build's path wait for
    // it); each candidate is looked at again under it: a child of ours stays
    // ours, pid included, until it is reaped, and only we reap.
    let candidates = children().unwrap_or_else(|| processes().into_iter().filter(|p| p.1 == me).map(|p| p.0).collect());
    if candidates.is_empty() {
        return 0;
    }
    let known = known();
    let Some(set) = known.as_ref() else { return 0 };
    let mut killed = 0;
    for pid in candidates.into_iter().filter(|pid| !set.contains(pid)) {
        let Some((_, ppid, state, comm)) = stat(pid) else { continue };
        if ppid != me {
            continue;
        }
        let mut status = 0;
        if state == 'Z' {
            // SAFETY: not one of the children another thread waits for (known holds those).
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            continue;
        }
        // SAFETY: a process of a build's that outlived its step.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
            libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
        }
        log::info!(
            "build.escapee_killed pid={pid} comm={}: it left its step's process group and outlived the step",
            crate::logging::quote(&comm)
        );
        killed += 1;
    }
    killed
}

/// The children of this process, from each thread's `children` file (a few
/// reads however many processes the machine runs, where a walk of /proc
/// reads them all: 0.8 CPU-ms per build at 100 ms sweeps, measured by the
/// bench); `None` where the kernel has no such files (CONFIG_PROC_CHILDREN).
/// A child forked while a file is read may be missed: the next sweep sees it.
fn children() -> Option<Vec<u32>> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => pids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && pids.is_empty() => return None,
            Err(_) => {}
        }
    }
    Some(pids)
}

/// (pid, parent pid, state, command name) of every process.
fn processes() -> Vec<(u32, u32, char, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())).filter_map(stat).collect()
}

/// (pid, parent pid, state, command name) of process `pid`, if it exists.
fn stat(pid: u32) -> Option<(u32, u32, char, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let comm = stat[open + 1..close].to_string();
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
    let ppid = rest.next()?.parse().ok()?;
    Some((pid, ppid, state, comm))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_children_files_name_a_child_of_this_process() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let found = children().map(|c| c.contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        // Without CONFIG_PROC_CHILDREN the sweep walks /proc instead.
        assert_ne!(found, Some(false), "the child is not in /proc/self/task/*/children");
    }

    #[test]
    fn the_process_table_names_this_process_and_its_parent() {
        let me = std::process::id();
        let all = processes();
        let mine = all.iter().find(|(pid, ..)| *pid == me).expect("this process in /proc");
        // SAFETY: getppid cannot fail.
        assert_eq!(mine.1, unsafe { libc::getppid() } as u32);
    }
}
