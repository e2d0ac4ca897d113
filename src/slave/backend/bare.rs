//! The bare backend: one snippet as `bash -c` (the bash the slave's PATH finds) as the build user, a given env and cwd, in its
//! own process group with stdin from /dev/null, stdout and stderr merged into
//! one pipe whose tail is kept within a byte and a line budget; killed (the
//! whole group) on timeout or abort. The watching is `process`'s.

use crate::slave::build_user::BuildUser;
use crate::slave::proc::process::{self, Capture};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::{Ran, OUTPUT_TAIL};
use crate::slave::proc::process::{Exit, LineSink};

/// Runs `script` as `user` with exactly `env` (nothing inherited) in `cwd`;
/// each output line also goes to `sink` as it is printed, when there is one.
pub fn run(
    script: &str,
    cwd: &Path,
    env: &[(String, String)],
    user: &BuildUser,
    timeout: Duration,
    abort: &AtomicBool,
    sink: Option<LineSink>,
) -> Ran {
    let deadline = Instant::now() + timeout;
    let mut cmd = Command::new(process::bash());
    cmd.arg("-c").arg(script).current_dir(cwd).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    user.apply(&mut cmd);
    process::die_with_parent(&mut cmd);
    let done = process::run_with_sink(cmd, Capture::Merged { tail: OUTPUT_TAIL }, deadline, abort, sink);
    let exit = match done.exit {
        Exit::SpawnFailed(e) => Exit::SpawnFailed(format!("bash: {e}")),
        other => other,
    };
    Ran { exit, elapsed: done.elapsed, output: done.output }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: u64) -> Ran {
        let env = vec![("PATH".to_string(), std::env::var("PATH").unwrap_or_default())];
        run(script, Path::new("/tmp"), &env, &BuildUser::current(), Duration::from_secs(timeout), &AtomicBool::new(false), None)
    }

    #[test]
    fn exit_codes_and_merged_output() {
        let r = sh("echo out; echo err >&2; exit 3", 10);
        assert_eq!(r.exit, Exit::Code(3));
        assert_eq!(r.output.lines, vec!["out", "err"]);
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
        let kept: usize = r.output.lines.iter().map(|l| l.len() + 1).sum();
        assert!(kept <= OUTPUT_TAIL, "{kept} bytes kept");
        assert_eq!(r.output.lines.last().unwrap(), "100000");
        assert!(r.output.dropped > 0);
    }
}
