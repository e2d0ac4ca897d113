//! The README's per-forge examples, read out of README.md itself (the `<!-- example: NAME -->`
//! blocks) and run with bash, as written, against a real `make run` (scripts/run-local.sh) from a
//! checkout-like directory: each answers 202 and its build passes; the errors a copy of them can
//! run into name what is wrong.

use crate::harness::*;
use crate::run_local::{free_port, interrupt, start, Leftovers};
use std::path::Path;
use std::process::{Command, Stdio};

/// The examples the README must hold, in order, with the branch each builds.
const EXAMPLES: &[(&str, &str)] = &[
    ("github-push", "main"),
    ("github-pull-request", "pull/1"),
    ("gitea-push", "main"),
    ("gitea-pull-request", "pull/1"),
    ("gitlab-push", "main"),
    ("gitlab-merge-request", "merge-requests/1"),
];

/// The `sh` block that follows each `<!-- example: NAME -->` line of README.md.
fn readme_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = vec![];
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("<!-- example: ").and_then(|r| r.strip_suffix(" -->")) else { continue };
        assert_eq!(lines.next(), Some("```sh"), "README.md: example {name} must be followed by a ```sh block");
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        blocks.push((name.to_string(), body.join("\n") + "\n"));
    }
    blocks
}

#[test]
fn every_readme_example_builds_against_make_run() {
    let blocks = readme_blocks();
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = vec!["setup"];
    want.extend(EXAMPLES.iter().map(|(n, _)| *n));
    assert_eq!(names, want, "the README's examples");
    // The setup block as written, but for the two lines a reader fills in by hand: the token
    // and the address make run printed (given here in the environment).
    let setup: String =
        blocks[0].1.lines().filter(|l| !l.starts_with("TOKEN=") && !l.starts_with("HOOK=")).map(|l| format!("{l}\n")).collect();
    assert_eq!(blocks[0].1.lines().count(), setup.lines().count() + 2, "the setup block sets TOKEN and HOOK: {}", blocks[0].1);

    // A checkout as the README's reader has it: docs/ and make run's .run/.
    let top = fresh_dir(&test_name());
    let checkout = top.join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    std::os::unix::fs::symlink(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"), checkout.join("docs")).unwrap();
    let run_dir = checkout.join(".run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let _leftovers = Leftovers(run_dir.clone());
    let (redis_port, hook_port) = (free_port(), free_port());
    let mut make_run = start(&run_dir, redis_port, hook_port);
    let printed = std::fs::read_to_string(run_dir.join("make-run.out")).unwrap();
    let token = printed.lines().find_map(|l| l.strip_prefix("Secret token: ")).unwrap().to_string();
    let hook_url = format!("http://127.0.0.1:{hook_port}");
    let addr = format!("127.0.0.1:{hook_port}").parse().unwrap();
    // The oracle for the commit: git itself, on the repository make run made.
    let sha = run(Command::new("git").arg("-C").arg(run_dir.join("example.git")).args(["rev-parse", "main"])).trim().to_string();

    for ((name, script), (want_name, branch)) in blocks[1..].iter().zip(EXAMPLES) {
        assert_eq!(name, want_name);
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &format!("{setup}{script}")])
            .current_dir(&checkout)
            .env("TOKEN", &token)
            .env("HOOK", &hook_url)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "example {name}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
        let status_line = stdout.lines().next().unwrap_or("");
        assert_eq!(status_line.trim_end(), "HTTP/1.1 202 Accepted", "example {name}:\n{stdout}");
        let body: Value =
            serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("example {name}: {e}\n{stdout}"));
        assert_eq!(
            (&body["repo"], &body["branch"], &body["sha"]),
            (&json!("example/hello"), &json!(branch), &json!(sha)),
            "example {name}"
        );
        let id = body["id"].as_str().unwrap_or_else(|| panic!("example {name}: no id: {body}")).to_string();
        // Built to the end before the next example: two examples build the same request.
        let path = format!("/status/example/hello?id={id}");
        let record = wait_for(&format!("build {id} of example {name} to finish"), LONG, || {
            let r = http(addr, "GET", &path, &[("Accept", "application/json")], b"");
            match r.json()["state"].as_str() {
                Some("passed" | "failed" | "canceled") => Ok(r.json()),
                _ => Err(r.to_string()),
            }
        });
        assert_eq!(record["state"], json!("passed"), "example {name}: {record}");
        assert_eq!(record["branch"], json!(branch), "example {name}: {record}");
    }

    // What a copy of the examples can get wrong is named: the header, the missing field.
    let body = std::fs::read(run_dir.join("github-push.json")).unwrap();
    let wrong = sign_sha256(&body, "not-the-token");
    let json_type = ("Content-Type", "application/json");
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &wrong), json_type],
            403,
            "X-Hub-Signature-256 does not match the body signed with this hook's token",
        ),
        (
            vec![("X-Gitea-Event", "push"), ("X-Gitea-Signature", wrong.trim_start_matches("sha256=")), json_type],
            403,
            "X-Gitea-Signature does not match the body signed with this hook's token",
        ),
        (
            vec![("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", "not-the-token"), json_type],
            403,
            "X-Gitlab-Token is not this hook's token",
        ),
        (
            vec![("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Token", &token), json_type],
            400,
            "missing field: project.path_with_namespace (the repository's full name in a GitLab Push Hook body)",
        ),
        (
            vec![("X-GitHub-Event", "push"), json_type],
            403,
            "missing signature: send X-Hub-Signature-256, X-Hub-Signature, X-Gitea-Signature, X-Gitlab-Token or Authorization: Bearer",
        ),
    ];
    for (headers, code, error) in &cases {
        let r = http(addr, "POST", "/", headers, &body);
        assert_eq!((r.code, r.json()), (*code, json!({ "error": error })), "{headers:?}");
    }
    let gitlab = std::fs::read(run_dir.join("gitlab-push.json")).unwrap();
    let sig = sign_sha256(&gitlab, &token);
    let r = http(addr, "POST", "/", &[("X-GitHub-Event", "push"), ("X-Hub-Signature-256", &sig), json_type], &gitlab);
    assert_eq!(
        (r.code, r.json()),
        (400, json!({ "error": "missing field: repository.full_name (the repository's full name in a GitHub push body)" })),
        "a GitLab body under GitHub's header"
    );

    assert_eq!(interrupt(&mut make_run).code(), Some(0));
    let _ = std::fs::remove_dir_all(&top);
}
