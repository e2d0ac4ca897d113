//! What a trusted bare build can reach of the other builds on the same slave (run as root, so
//! that steps run as the build user in their repository's and branch's groups): another
//! branch's checkout and HOME, another repository's checkout and mirror, another running
//! build's `/proc/<pid>/environ` — none of them; and code a build plants in its own checkout's
//! `.git` (hooks, fsmonitor, filters, attributes) never runs in the next checkout.
//! Each attack prints `reached` or `closed` per door, and the oracle that it aimed right is the
//! same door opened by the test itself (root) or by the slave without groups.

use crate::harness::*;

const DEPLOY_KEY: &str = "main-only-deploy-key-s3cret";

/// Each `<name> <path>` pair: a snippet printing `<name> reached` when the step can read the
/// path (a file's bytes, a directory's listing), `<name> closed` when it cannot.
fn probes(doors: &[(&str, String)]) -> String {
    doors
        .iter()
        .map(|(name, path)| {
            format!(
                "  - if cat {path} >/dev/null 2>&1 || ls {path} >/dev/null 2>&1; then echo {name} reached; else echo {name} closed; fi\n"
            )
        })
        .collect()
}

#[test]
fn a_bare_build_reaches_no_other_branchs_or_repositorys_files() {
    if !is_root() {
        eprintln!("SKIPPED: groups per repository and branch need a slave running as root");
        return;
    }
    let b = Backend::start(1, &[], &[]);
    let secret_yml = "step: s\nshell: echo private > secret.txt\n";
    let (_other, _, first) = b.build("acme/private", &[("integration.yml", secret_yml)], "other team");
    assert_eq!(first.state, "passed", "{:?}", first.log);
    let cache = b.slaves[0].cache.clone();
    let private = cache.join("acme%2Fprivate");
    let mirror =
        std::fs::read_dir(&private).unwrap().flatten().map(|e| e.path()).find(|p| p.to_string_lossy().contains(".mirror-")).unwrap();
    let doors = [
        ("checkout", private.join("main/checkout/secret.txt").display().to_string()),
        ("home", private.join("main/home").display().to_string()),
        ("mirror", mirror.join("HEAD").display().to_string()),
        ("repository", private.display().to_string()),
        ("sibling", cache.join("acme%2Fteam/main/checkout/integration.yml").display().to_string()),
        ("sibling-git", cache.join("acme%2Fteam/main/checkout/.git/config").display().to_string()),
        ("own", "integration.yml".to_string()),
    ];
    // Every door is open to the test (root): the paths are right.
    for (name, path) in &doors[..6] {
        if *name != "sibling" && *name != "sibling-git" {
            assert!(std::path::Path::new(path).exists(), "{name}: {path}");
        }
    }
    let mut git = b.repo("acme/team");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("main");
    git.push();
    assert_eq!(wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG).state, "passed");
    assert!(cache.join("acme%2Fteam/main/checkout/.git/config").is_file());
    git.checkout("feature");
    git.write("integration.yml", &format!("step: snoop\ndebug: true\nshell:\n{}", probes(&doors)));
    let sha = git.commit("snoop");
    git.push();
    let build = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let want: Vec<String> = doors.iter().map(|(name, _)| format!("{name} {}", if *name == "own" { "reached" } else { "closed" })).collect();
    assert_eq!(build.printed(), want, "{:#?}", build.log);
}

#[test]
fn a_running_builds_environment_is_out_of_reach_of_another_build() {
    if !is_root() {
        eprintln!("SKIPPED: groups per repository and branch need a slave running as root");
        return;
    }
    let b = Backend::start(1, &[], &[("SLAVE_EXECUTORS", "2")]);
    let gate = b.root().join("gate");
    std::fs::create_dir(&gate).unwrap();
    std::fs::set_permissions(&gate, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let g = gate.display();
    // The victim holds its secret in its environment until the test opens the gate.
    let victim = format!(
        "step: hold\nenv:\n  HELD_SECRET: victim-s3cret-value\nshell: touch {g}/running; while [ ! -e {g}/open ]; do sleep 0.05; done\n"
    );
    let mut git = b.repo("acme/shared");
    git.write("integration.yml", &victim);
    let sha = git.commit("victim");
    git.push();
    let victim_id = b.hook.push_ok(&git, &sha);
    wait_for("the victim's step to run", LONG, || if gate.join("running").exists() { Ok(()) } else { Err(String::new()) });
    // Another branch of the same repository, on the slave's other executor, at the same time.
    git.checkout("thief");
    let thief = format!(
        "step: steal\ndebug: true\nshell:\n  \
         - grep -l -s \"{g}/open\" /proc/[0-9]*/cmdline | wc -l\n  \
         - cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c victim-s3cret-value || true\n"
    );
    git.write("integration.yml", &thief);
    let sha = git.commit("thief");
    git.push();
    let stolen = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    std::fs::write(gate.join("open"), "").unwrap();
    assert_eq!(wait_build(&b.redis, &victim_id, LONG).state, "passed");
    assert_eq!(stolen.state, "passed", "{:#?}", stolen.log);
    let printed = stolen.printed();
    assert_ne!(printed.first().map(String::as_str), Some("0"), "the victim's processes were not running beside the thief: {printed:?}");
    assert_eq!(printed.get(1).map(String::as_str), Some("0"), "another build's environment was read: {printed:?}");
}

#[test]
fn code_a_build_plants_in_its_checkouts_git_never_runs() {
    let b = Backend::start(1, &[], &[("DEPLOY_KEY", DEPLOY_KEY)]);
    let loot = b.root().join("loot");
    std::fs::create_dir(&loot).unwrap();
    std::fs::set_permissions(&loot, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let git = b.repo("acme/plant");
    let l = loot.display();
    // The branch's own next build checks out over what this one plants (its checkout and HOME
    // are the only ones it can write), with an environment the planter's commit should not steer.
    let plant = format!(
        "step: plant\nshell:\n  - |\n    set -e\n    test -d .git\n    mkdir -p .git/hooks\n    \
         printf '#!/bin/sh\\necho \"$DEPLOY_KEY\" > {l}/hook\\n' > .git/hooks/post-checkout\n    \
         chmod +x .git/hooks/post-checkout\n    \
         git config core.fsmonitor 'echo \"$DEPLOY_KEY\" > {l}/fsmonitor; false'\n    \
         git config filter.evil.smudge 'sh -c \"echo $DEPLOY_KEY > {l}/filter; cat\"'\n    \
         mkdir -p .git/info && echo '* filter=evil' > .git/info/attributes\n    \
         git config --global core.fsmonitor 'echo \"$DEPLOY_KEY\" > {l}/global; false'\n    \
         printf '[core]\\n\\tfsmonitor = echo \"$DEPLOY_KEY\" > {l}/home; false\\n' >> \"$HOME/.gitconfig\"\n"
    );
    git.write("integration.yml", &plant);
    let sha = git.commit("plant");
    git.push();
    let planted = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(planted.state, "passed", "the attack itself ran to its end: {:#?}", planted.log);
    let checkout = b.slaves[0].cache.join("acme%2Fplant/main/checkout/.git");
    assert!(checkout.join("hooks/post-checkout").is_file() && checkout.join("info/attributes").is_file(), "nothing was planted");

    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    git.write("README", "a change\n");
    let sha = git.commit("next");
    git.push();
    let next = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(next.state, "passed", "{:?}", next.log);
    let looted: Vec<String> = std::fs::read_dir(&loot).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(looted, Vec::<String>::new(), "planted code ran in the next checkout");
}

/// A build that leaves its checkout's HEAD a link to a file of the slave's (or any garbage)
/// never has the slave write through it: the next build's HEAD is a new file, the linked file
/// is untouched and the build passes on the right commit.
#[test]
fn a_head_a_build_leaves_as_a_link_is_replaced_never_written_through() {
    let b = Backend::start(1, &[], &[]);
    let victim = b.root().join("victim");
    std::fs::write(&victim, "the slave's own file\n").unwrap();
    let git = b.repo("acme/head");
    let link = format!("step: link\nshell: ln -sf '{}' .git/HEAD\n", victim.display());
    git.write("integration.yml", &link);
    let sha = git.commit("link");
    git.push();
    let linked = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(linked.state, "passed", "{:#?}", linked.log);
    let head = b.slaves[0].cache.join("acme%2Fhead/main/checkout/.git/HEAD");
    assert!(head.symlink_metadata().unwrap().file_type().is_symlink(), "the link was not planted");

    git.write("integration.yml", "step: s\ndebug: true\nshell: git rev-parse HEAD\n");
    let sha = git.commit("next");
    git.push();
    let next = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(next.state, "passed", "{:#?}", next.log);
    assert_eq!(next.printed(), vec![sha.clone()], "{:#?}", next.log);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "the slave's own file\n", "written through the link");
    assert!(head.symlink_metadata().unwrap().is_file(), "HEAD is a file again");
}

#[test]
fn a_fork_build_reaches_nothing_beside_its_checkout() {
    let Some(image) = crate::containers::image() else { return };
    let b = Backend::start(1, &[("HOOK_FORK_PULLS", "build")], &[("SLAVE_DEFAULT_IMAGE", image)]);
    let (_other, _, first) = b.build("acme/private", &[("integration.yml", "step: s\nshell: echo private > secret.txt\n")], "other team");
    assert_eq!(first.state, "passed", "{:?}", first.log);
    let cache = b.slaves[0].cache.clone();
    let main = cache.join("acme%2Ffk/main/checkout");
    let doors = [
        ("other-repository", cache.join("acme%2Fprivate/main/checkout/secret.txt").display().to_string()),
        ("target-branch", main.join("integration.yml").display().to_string()),
        ("cache", cache.display().to_string()),
        ("own", "integration.yml".to_string()),
    ];
    let plant = main.join(".git/hooks/post-checkout");
    let yml = format!(
        "step: fork\ndebug: true\nshell:\n{}  - (mkdir -p {hooks} && echo 'touch /tmp/pwned' > {plant}) 2>/dev/null && echo plant reached || echo plant closed\n  \
         - setsid sh -c 'exec sleep 3131' & echo left\n",
        probes(&doors),
        hooks = main.join(".git/hooks").display(),
        plant = plant.display(),
    );
    let mut git = b.repo("acme/fk");
    git.write("integration.yml", "step: main\nshell: \"true\"\n");
    let main_sha = git.commit("main");
    git.push();
    let built = wait_build(&b.redis, &b.hook.push_ok(&git, &main_sha), LONG);
    assert_eq!(built.state, "passed", "{:#?}", built.log);
    git.checkout("feature/x");
    git.write("integration.yml", &yml);
    let head = git.commit("the request's head");
    run(crate::harness::git(&git.work).args(["push", "-q", "origin", &format!("{head}:refs/pull/9/head")]));
    assert!(main.join(".git").is_dir(), "the target's checkout is where the attack looks");
    for (name, path) in &doors[..3] {
        assert!(std::path::Path::new(path).exists(), "{name}: {path}");
    }
    let body = crate::pulls::github_pull("acme/fk", &git.file_url(), 9, &head, "mallory/fk", "opened");
    let id = crate::pulls::accepted(&b.hook.send_github("/", "pull_request", body.to_string().as_bytes(), &[]));
    let build = wait_build(&b.redis, &id, LONG);
    assert_eq!(build.state, "passed", "{:#?}", build.log);
    let mut want: Vec<String> =
        doors.iter().map(|(name, _)| format!("{name} {}", if *name == "own" { "reached" } else { "closed" })).collect();
    want.extend(["plant closed".to_string(), "left".to_string()]);
    assert_eq!(build.printed(), want, "{:#?}", build.log);
    assert!(!plant.exists(), "the fork planted a hook in the target's checkout");
    let left = std::process::Command::new("pgrep").args(["-f", "sleep 3131"]).output().unwrap();
    assert!(left.stdout.is_empty(), "a process the fork left runs on: {}", String::from_utf8_lossy(&left.stdout));
}
