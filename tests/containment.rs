//! What a build can do to the builds after it on the same slave: a branch plants a hook, an
//! fsmonitor, a filter driver and attributes in another branch's checkout (the same build user
//! can write there); the other branch's next checkout runs none of them, and its environment
//! (an operator's deploy key) reaches no file of the planting branch's.

use crate::harness::*;

const DEPLOY_KEY: &str = "main-only-deploy-key-s3cret";

#[test]
fn a_branch_cannot_plant_code_that_another_branchs_checkout_runs() {
    let b = Backend::start(1, &[], &[("DEPLOY_KEY", DEPLOY_KEY)]);
    let loot = b.root().join("loot");
    std::fs::create_dir(&loot).unwrap();
    std::fs::set_permissions(&loot, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut git = b.repo("acme/plant");
    git.write("integration.yml", "step: s\nshell: \"true\"\n");
    let sha = git.commit("main");
    git.push();
    let first = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(first.state, "passed", "{:?}", first.log);

    // Another branch's step, in its own checkout beside main's.
    git.checkout("evil");
    let l = loot.display();
    let plant = format!(
        "step: plant\nshell:\n  - |\n    main=../main\n    test -d $main/.git\n    mkdir -p $main/.git/hooks\n    \
         printf '#!/bin/sh\\necho \"$DEPLOY_KEY\" > {l}/hook\\n' > $main/.git/hooks/post-checkout\n    \
         chmod +x $main/.git/hooks/post-checkout\n    \
         git -C $main config core.fsmonitor 'echo \"$DEPLOY_KEY\" > {l}/fsmonitor; false'\n    \
         git -C $main config filter.evil.smudge 'sh -c \"echo $DEPLOY_KEY > {l}/filter; cat\"'\n    \
         mkdir -p $main/.git/info && echo '* filter=evil' > $main/.git/info/attributes\n    echo planted\n"
    );
    git.write("integration.yml", &plant);
    let sha = git.commit("plant");
    git.push();
    let planted = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(planted.state, "passed", "the attack itself ran: {:?}", planted.log);

    // main's next build checks out over what was planted.
    git.checkout("main");
    git.write("README", "a change\n");
    let sha = git.commit("main again");
    git.push();
    let next = wait_build(&b.redis, &b.hook.push_ok(&git, &sha), LONG);
    assert_eq!(next.state, "passed", "{:?}", next.log);
    let looted: Vec<String> = std::fs::read_dir(&loot).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(looted, Vec::<String>::new(), "planted code ran in main's checkout");
}
