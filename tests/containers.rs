//! Container steps (`image:`) on the machine's real Docker engine, with a test image built from
//! Debian's static busybox (`FROM scratch`): the snippets run in the image on the checkout with
//! the CI variables, as the build user; nothing of a build is left on the engine after it, a
//! timeout or a SIGKILLed slave's restart (only the one container started, waiting, for the
//! branch's next build); a branch's next container step runs in that container with the same
//! output, environment and exit code, and nothing of an earlier build reaches it or outlives
//! its build; a missing image fails the build with the reason; a container step reaches neither
//! the slave's Redis nor the Docker socket. Where no engine answers, each test says so in one
//! line and passes.

use crate::harness::*;
use std::process::Command;
use std::sync::OnceLock;

const IMAGE: &str = "ci-test/busybox:1";

/// The test image, built once per run; `None` (and one line saying why) without an engine.
pub(crate) fn image() -> Option<&'static str> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let info = Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]).output();
        match info {
            Ok(o) if o.status.success() => {}
            _ => return Err("no Docker engine answers here (docker info failed)".into()),
        }
        sweep_dead_runs();
        if Command::new("docker").args(["image", "inspect", IMAGE]).output().is_ok_and(|o| o.status.success()) {
            return Ok(());
        }
        let busybox = std::path::Path::new("/bin/busybox");
        if !busybox.exists() {
            return Err("/bin/busybox (Debian's busybox-static, installed by make deps) is missing".into());
        }
        let dir = fresh_dir("container-image");
        std::fs::copy(busybox, dir.join("busybox")).unwrap();
        std::fs::write(
            dir.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\n",
        )
        .unwrap();
        let out = Command::new("docker").args(["build", "-q", "-t", IMAGE]).arg(&dir).output().unwrap();
        if !out.status.success() {
            return Err(format!("docker build of {IMAGE} failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    });
    match built {
        Ok(()) => Some(IMAGE),
        Err(why) => {
            eprintln!("SKIPPED: container steps: {why}");
            None
        }
    }
}

/// Removes what slaves of earlier test runs left on the engine (a run cut short): everything
/// labelled by a slave whose cache directory is gone.
fn sweep_dead_runs() {
    let mut labels = Vec::new();
    for list in [&["ps", "-a"][..], &["network", "ls"][..]] {
        let format = "{{.Label \"ci-backend.slave\"}}";
        let out = Command::new("docker").args(list).args(["--filter", "label=ci-backend.slave", "--format", format]).output();
        labels.extend(out.map(|o| String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect::<Vec<_>>()).unwrap_or_default());
    }
    labels.sort();
    labels.dedup();
    for label in labels {
        let ours = |cache: &str| std::path::Path::new(cache).starts_with(tests_root());
        let dead = label.split_once(':').is_some_and(|(_, cache)| ours(cache) && !std::path::Path::new(cache).exists());
        if dead {
            remove_engine_leftovers(&format!("label=ci-backend.slave={label}"));
        }
    }
}

/// Ids of the containers (`ps -a`) or networks carrying `label=value`.
fn labelled(what: &str, label: &str, value: &str) -> Vec<String> {
    let filter = format!("label={label}={value}");
    let args: Vec<&str> = match what {
        "container" => vec!["ps", "-aq", "--filter", &filter],
        _ => vec!["network", "ls", "-q", "--filter", &filter],
    };
    let out = Command::new("docker").args(&args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

fn left_by(slave: &Slave) -> Vec<String> {
    let label = slave.engine_label();
    let mut left = labelled("container", "ci-backend.slave", &label);
    left.extend(labelled("network", "ci-backend.slave", &label));
    left
}

/// What the slave has on the engine for builds: everything but the containers (and their
/// networks) started for a branch's next build, labelled `ci-backend.build=warm`.
fn builds_left_by(slave: &Slave) -> Vec<String> {
    let warm = warm_of(slave);
    left_by(slave).into_iter().filter(|id| !warm.contains(id)).collect()
}

fn warm_of(slave: &Slave) -> Vec<String> {
    let mut warm = labelled("container", "ci-backend.build", "warm");
    warm.extend(labelled("network", "ci-backend.build", "warm"));
    let all = left_by(slave);
    warm.into_iter().filter(|id| all.contains(id)).collect()
}

/// Waits until nothing of the slave's builds is left on the engine (removal runs after the
/// result is stored).
fn wait_nothing_left(slave: &Slave) {
    wait_for("the builds' containers and networks to be removed", DEADLINE, || match builds_left_by(slave) {
        left if left.is_empty() => Ok(()),
        left => Err(format!("{left:?}")),
    });
}

/// Waits until `n` containers (each with its network) wait for a branch's next build.
fn wait_warm(slave: &Slave, n: usize) {
    wait_for("the waiting containers", DEADLINE, || match warm_of(slave) {
        warm if warm.len() == 2 * n => Ok(()),
        warm => Err(format!("{warm:?}")),
    });
}

/// The uid steps run as: the build user's (nobody) under root, else ours.
fn build_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        65534
    } else {
        unsafe { libc::geteuid() }
    }
}

#[test]
fn a_container_step_runs_in_its_image_on_the_checkout_and_leaves_nothing() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[]);
    let port = b.redis.port;
    let yml = format!(
        "- step: contained\n  image: {image}\n  debug: true\n  env:\n    GREETING: hello there\n  shell:\n    \
         - test -x /bin/busybox && test ! -e /usr/bin/git && test ! -e /var/run/docker.sock\n    \
         - pwd; cat marker.txt; echo \"branch=$BRANCH build=$BUILD_ID repo=$REPO greeting=$GREETING\"; id -u\n    \
         - echo made-in-a-container > made.txt\n    \
         - if echo PING | nc -w 2 127.0.0.1 {port}; then echo reached-redis; exit 1; fi\n\
         - step: below\n  image: {image}\n  cwd: sub\n  debug: true\n  shell: pwd\n"
    );
    let (_git, _sha, build) =
        b.build("acme/contained", &[("integration.yml", &yml), ("marker.txt", "the checkout's marker\n"), ("sub/keep", "")], "contained");
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    for line in [
        "[passed]   . /ci/checkout".to_string(),
        "[passed]   . the checkout's marker".to_string(),
        format!("[passed]   . branch=main build={} repo=acme/contained greeting=hello there", build.id),
        format!("[passed]   . {}", build_uid()),
        "[passed]   . /ci/checkout/sub".to_string(),
    ] {
        assert!(build.has_line(&line), "no line {line:?} in {:#?}", build.log);
    }
    assert!(!build.log_text().contains("reached-redis"), "{:#?}", build.log);
    // What the container wrote is in the slave's checkout, owned by the build user (never root).
    let made = walk(&b.slaves[0].cache).into_iter().find(|p| p.ends_with("made.txt")).expect("made.txt in the checkout");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made-in-a-container\n");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&made).unwrap()), build_uid());
    wait_nothing_left(&b.slaves[0]);
    wait_warm(&b.slaves[0], 1);
    let log = b.slaves[0].log();
    let used = events(&log, "step.image");
    assert_eq!(used.len(), 2, "{log}");
    assert!(used.iter().all(|l| kv(l, "id").is_some_and(|id| id.starts_with("sha256:"))), "{used:?}");
    // A slave that stops removes the container waiting for the branch's next build.
    b.slaves[0].term();
    wait_for("the stopped slave to leave nothing on the engine", DEADLINE, || match left_by(&b.slaves[0]) {
        left if left.is_empty() => Ok(()),
        left => Err(format!("{left:?}")),
    });
}

#[test]
fn a_missing_image_fails_the_build_with_the_reason() {
    let Some(_) = image() else { return };
    let b = Backend::start(1, &[], &[("SLAVE_IMAGE_PULL", "never")]);
    let yml = "- step: nowhere\n  image: ci-test/no-such-image:1\n  shell: echo never\n- step: after\n  shell: echo skipped\n";
    let (_git, _sha, build) = b.build("acme/missing-image", &[("integration.yml", yml)], "missing");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.has_line("* image ci-test/no-such-image:1: not on this slave's engine, and SLAVE_IMAGE_PULL=never"), "{:#?}", build.log);
    assert!(build.has_line("[skipped] echo skipped"), "{:#?}", build.log);
    wait_nothing_left(&b.slaves[0]);
}

#[test]
fn a_container_step_past_its_time_is_killed_and_removed() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[("SLAVE_BUILD_TIMEOUT", "3")]);
    let yml = format!("step: forever\nimage: {image}\nshell: sleep 300\n");
    let (_git, _sha, build) = b.build("acme/container-timeout", &[("integration.yml", &yml)], "forever");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.log.iter().any(|l| l.starts_with("[failed] sleep 300 (") && l.ends_with("seconds, timed out)")), "{:#?}", build.log);
    assert!(build.has_line("* build timed out after 3 seconds"), "{:#?}", build.log);
    wait_nothing_left(&b.slaves[0]);
}

#[test]
fn a_container_steps_timeout_kills_its_container_and_logs_its_output() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[]);
    let yml = format!("- step: boxed\n  image: {image}\n  timeout: 2\n  shell: echo in-the-box; sleep 300\n- step: after\n  shell: no-skip echo cleanup\n");
    let (_git, _sha, build) = b.build("acme/container-step-timeout", &[("integration.yml", &yml)], "boxed");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    let at = build.log.iter().position(|l| l.starts_with("[failed] echo in-the-box; sleep 300 (") && l.ends_with(" seconds, timed out)"));
    let at = at.unwrap_or_else(|| panic!("no timed-out line: {:#?}", build.log));
    assert_eq!(
        build.log[at + 1..],
        [
            "[failed]   . in-the-box".to_string(),
            "* step 1 (\"boxed\") timed out after 2 seconds".into(),
            "- after".into(),
            "[passed] echo cleanup (0 seconds, exit code 0)".into()
        ],
        "{:#?}",
        build.log
    );
    wait_nothing_left(&b.slaves[0]);
}

#[test]
fn a_restarted_slave_removes_what_its_killed_run_left_on_the_engine() {
    let Some(image) = image() else { return };
    let mut b = Backend::start(1, &[], &[]);
    let yml = format!("step: long\nimage: {image}\nshell: sleep 300\n");
    let (_git, _id) = b.queue("acme/container-orphan", &yml, "long");
    // The step's network is made before its container: wait for the container itself, or a kill
    // between the two leaves only a network and the sweep rightly removes no container.
    wait_for("the step's container to exist", LONG, || {
        if labelled("container", "ci-backend.slave", &b.slaves[0].engine_label()).is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    });
    let cache = b.slaves[0].cache.clone();
    b.slaves[0].kill9();
    let orphans = left_by(&b.slaves[0]);
    assert!(!orphans.is_empty(), "a SIGKILLed slave cannot remove its container");
    let cache_env = cache.to_string_lossy().into_owned();
    let again = Slave::start(&b.redis, &[("SLAVE_CACHE", &cache_env)]);
    // The restarted slave runs the build again (new container, same label): the orphans' ids go.
    wait_for("the restarted slave to remove the orphaned container and network", DEADLINE, || {
        let mut all = docker_ids(&["ps", "-aq"]);
        all.extend(docker_ids(&["network", "ls", "-q"]));
        let left: Vec<&String> = orphans.iter().filter(|o| all.contains(o)).collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    let removed = wait_for("the slave.containers line", DEADLINE, || {
        let log = again.log();
        events(&log, "slave.containers").first().and_then(|l| kv(l, "removed_containers")).ok_or(log.clone())
    });
    assert_ne!(removed, "0");
    // The build runs again on the restarted slave: cleared when it drops (its sleep would outlive the test).
    drop(again);
}

fn docker_ids(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn services_are_reachable_by_name_and_their_output_follows_a_failure() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[]);
    let serve = "[\"sh\", \"-c\", \"echo service-up; while true; do echo hello-from-$GREETING | nc -l -p 7000; done\"]";
    let yml = format!(
        "- step: with a service\n  image: {image}\n  debug: true\n  services:\n    - name: db\n      image: {image}\n      env:\n        GREETING: the-db\n      command: {serve}\n  shell:\n    \
         - for i in $(seq 100); do nc db 7000 && exit 0; sleep 0.1; done; exit 1\n\
         - step: failing beside it\n  image: {image}\n  services:\n    - name: cache\n      image: {image}\n      command: {serve}\n  shell: exit 3\n"
    );
    let (_git, _sha, build) = b.build("acme/services", &[("integration.yml", &yml)], "services");
    assert_eq!(build.state, "failed", "{:#?}", build.log);
    assert!(build.has_line("[passed]   . hello-from-the-db"), "{:#?}", build.log);
    build.line_like("[failed] exit 3 (", " seconds, exit code 3)");
    assert!(build.has_line("[service cache] service-up"), "the failed step's log has its service's output: {:#?}", build.log);
    assert!(!build.log_text().contains("[service db]"), "a passed step's services stay quiet: {:#?}", build.log);
    wait_nothing_left(&b.slaves[0]);
    wait_warm(&b.slaves[0], 1);
}

#[test]
fn a_canceled_container_step_is_killed_and_removed() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[]);
    let yml = format!("step: long\nimage: {image}\nshell: sleep 300\n");
    let (_git, id) = b.queue("acme/container-cancel", &yml, "long");
    wait_for("the step's container", LONG, || if left_by(&b.slaves[0]).is_empty() { Err("none yet".to_string()) } else { Ok(()) });
    let bearer = format!("Bearer {}", b.hook.token);
    let r = b.hook.post(&format!("/cancel/acme/container-cancel?id={id}"), &[("Authorization", &bearer)], b"");
    assert_eq!(r.code, 202, "{r}");
    wait_nothing_left(&b.slaves[0]);
    // Stored canceled at once; the slave then adds the log so far (the killed step's run).
    wait_for("the canceled record with the log so far", DEADLINE, || match read_build(&b.redis, &id) {
        Some(b)
            if b.state == "canceled"
                && b.log.iter().any(|l| l == "- long")
                && b.log.last().is_some_and(|l| l.starts_with("[canceled]")) =>
        {
            Ok(())
        }
        other => Err(format!("{other:?}")),
    });
}

/// A second image (another id) for the tests where a branch's image changes.
fn image_b() -> Option<&'static str> {
    const B: &str = "ci-test/busybox-b:1";
    let base = image()?;
    static BUILT: OnceLock<bool> = OnceLock::new();
    let ok = *BUILT.get_or_init(|| {
        if Command::new("docker").args(["image", "inspect", B]).output().is_ok_and(|o| o.status.success()) {
            return true;
        }
        let dir = fresh_dir("container-image-b");
        std::fs::write(dir.join("Dockerfile"), format!("FROM {base}\nRUN echo b > /image-b\n")).unwrap();
        Command::new("docker").args(["build", "-q", "-t", B]).arg(&dir).output().is_ok_and(|o| o.status.success())
    });
    ok.then_some(B)
}

/// Pushes a new commit of `git` (its files changed as given) and waits for its build.
fn push_and_build(b: &Backend, git: &GitRepo, files: &[(&str, &str)], msg: &str) -> Build {
    for (path, text) in files {
        git.write(path, text);
    }
    let sha = git.commit(msg);
    git.push();
    let id = b.hook.push_ok(git, &sha);
    wait_build(&b.redis, &id, LONG)
}

/// `warm=` of each `step.container` line of the slave's log, in order.
fn warm_steps(slave: &Slave) -> Vec<String> {
    let log = slave.log();
    events(&log, "step.container").iter().filter_map(|l| kv(l, "warm")).collect()
}

#[test]
fn a_branchs_next_container_step_runs_in_the_container_started_for_it_and_nothing_outlives_a_build() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[]);
    // The step checks that nothing of an earlier build reached it (a file in the container's
    // /tmp, a writer left running on the checkout), plants both for the next, prints what it
    // sees, and exits with the code the commit names.
    // One snippet (a container's whole life: a warm container serves a step's first snippet).
    let yml = format!(
        "- step: contained\n  image: {image}\n  cwd: sub\n  debug: true\n  env:\n    TRICKY: \"it's \\\"quoted\\\" $HOME `x`\\nsecond line\"\n  shell: |\n    \
         if [ -e /tmp/planted ]; then echo reached-by-an-earlier-build; exit 1; fi\n    \
         if [ -e ../counter ]; then a=$(cat ../counter); sleep 0.5; [ \"$a\" = \"$(cat ../counter)\" ] || {{ echo a-writer-outlived-its-build; exit 1; }}; fi\n    \
         echo planted > /tmp/planted; (i=0; while true; do i=$((i+1)); echo $i > ../counter; sleep 0.02; done) >/dev/null 2>&1 &\n    \
         pwd; id -u; echo \"tricky=$TRICKY\"; echo \"build=$BUILD_ID\"\n    \
         exit $(cat ../code)\n"
    );
    let git = b.repo("acme/warm");
    let build1 = push_and_build(&b, &git, &[("integration.yml", &yml), ("sub/keep", ""), ("code", "0\n")], "first");
    assert_eq!(build1.state, "passed", "{:#?}", build1.log);
    wait_warm(&b.slaves[0], 1);
    let build2 = push_and_build(&b, &git, &[("code", "0\n"), ("sub/keep", "2")], "second");
    assert_eq!(build2.state, "passed", "{:#?}", build2.log);
    assert_eq!(warm_steps(&b.slaves[0]), ["false", "true"], "the second build's step took the waiting container");
    for line in [
        "[passed]   . /ci/checkout/sub".to_string(),
        format!("[passed]   . {}", build_uid()),
        "[passed]   . tricky=it's \"quoted\" $HOME `x`".to_string(),
        "[passed]   . second line".to_string(),
        format!("[passed]   . build={}", build2.id),
    ] {
        assert!(build2.has_line(&line), "no line {line:?} in {:#?}", build2.log);
    }
    // Its exit code is the snippet's. A bare build of the branch queued while it runs starts the
    // moment it ends: the writer the container step left must be gone before that build's step.
    git.write("code", "3\n");
    let sha3 = git.commit("third");
    git.push();
    let id3 = b.hook.push_ok(&git, &sha3);
    wait_for("the third build to run", LONG, || match read_build(&b.redis, &id3) {
        Some(build) if build.state == "running" => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let bare = "- step: bare\n  cwd: sub\n  shell: if [ -e ../counter ]; then a=$(cat ../counter); sleep 0.5; [ \"$a\" = \"$(cat ../counter)\" ]; fi\n";
    git.write("integration.yml", bare);
    let sha4 = git.commit("bare");
    git.push();
    let id4 = b.hook.push_ok(&git, &sha4);
    let build3 = wait_build(&b.redis, &id3, LONG);
    assert_eq!(build3.state, "failed", "{:#?}", build3.log);
    build3.line_like("[failed] if [ -e /tmp/planted ]", " seconds, exit code 3)");
    assert_eq!(warm_steps(&b.slaves[0]), ["false", "true", "true"]);
    let build4 = wait_build(&b.redis, &id4, LONG);
    assert_eq!(build4.state, "passed", "a container's writer outlived its build: {:#?}", build4.log);
    wait_nothing_left(&b.slaves[0]);
    // One container waits for the branch (the bare build asked for none, took none).
    wait_warm(&b.slaves[0], 1);
}

#[test]
fn a_waiting_container_of_another_image_is_not_used() {
    let (Some(a), Some(bi)) = (image(), image_b()) else { return };
    let b = Backend::start(1, &[], &[]);
    let yml =
        |image: &str| format!("step: which\nimage: {image}\ndebug: true\nshell: if [ -e /image-b ]; then echo in-b; else echo in-a; fi\n");
    let git = b.repo("acme/warm-image");
    let first = push_and_build(&b, &git, &[("integration.yml", &yml(a))], "a");
    assert!(first.has_line("[passed]   . in-a"), "{:#?}", first.log);
    wait_warm(&b.slaves[0], 1);
    let second = push_and_build(&b, &git, &[("integration.yml", &yml(bi))], "b");
    assert!(second.has_line("[passed]   . in-b"), "{:#?}", second.log);
    assert_eq!(warm_steps(&b.slaves[0]), ["false", "false"]);
    assert_eq!(events(&b.slaves[0].log(), "container.warm_unfit").len(), 1, "{}", b.slaves[0].log());
    wait_nothing_left(&b.slaves[0]);
    wait_warm(&b.slaves[0], 1);
}

#[test]
fn no_container_waits_when_the_setting_says_none() {
    let Some(image) = image() else { return };
    let b = Backend::start(1, &[], &[("SLAVE_WARM_CONTAINERS", "0")]);
    let yml = format!("step: plain\nimage: {image}\nshell: echo ok\n");
    let git = b.repo("acme/warm-off");
    for msg in ["one", "two"] {
        let build = push_and_build(&b, &git, &[("integration.yml", &yml), ("n", msg)], msg);
        assert_eq!(build.state, "passed", "{:#?}", build.log);
    }
    assert_eq!(warm_steps(&b.slaves[0]), ["false", "false"]);
    wait_nothing_left(&b.slaves[0]);
    assert_eq!(left_by(&b.slaves[0]), Vec::<String>::new(), "nothing waits");
}
