//! Deterministic property tests of the two parsers that read untrusted bytes, called directly:
//! `payload::parse` on 20,000 mutations of the real payload fixtures, and
//! `integration::parse` on 20,000 random and mutated YAML documents, plus alias bombs and
//! 10,000-deep nesting. Never a panic; what is accepted satisfies the invariants the rest of the
//! system relies on; what is refused is refused with a clear error. A hand-written xorshift
//! generator with fixed seeds: every run sees the same inputs.

use crate::harness::Rng;
use ci_backend::payload::{self, Delivery, Push, Request};
use ci_backend::slave::build::integration;
use ci_backend::store::job;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks");
    let mut out = vec![];
    let mut todo = vec![root];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    assert!(out.len() >= 20, "expected the webhook fixtures, found {}", out.len());
    out
}

/// The headers a fixture is delivered with, by its place in the tree.
fn headers_for(path: &Path) -> (Option<&'static str>, Option<&'static str>, Option<&'static str>, Option<&'static str>) {
    let p = path.to_string_lossy();
    let github = |e: &'static str| (Some(e), None, None, None);
    if p.contains("/gitlab/") {
        let event = if p.contains("system") {
            "System Hook"
        } else if p.contains("tag") {
            "Tag Push Hook"
        } else {
            "Push Hook"
        };
        (None, None, Some(event), None)
    } else if p.contains("/gitea/") {
        (None, Some("push"), None, None)
    } else if p.contains("/bitbucket/") {
        (None, None, None, Some("repo:refs_changed"))
    } else {
        let event = ["push", "ping", "pull_request", "workflow_run", "issues", "create", "delete"]
            .into_iter()
            .find(|e| p.contains(&format!("/{e}/")))
            .unwrap_or("push");
        github(event)
    }
}

fn random_json(rng: &mut Rng, depth: usize) -> serde_json::Value {
    use serde_json::json;
    match rng.below(if depth > 3 { 8 } else { 11 }) {
        0 => json!(null),
        1 => json!(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!(-1.5e300),
        4 => json!(""),
        5 => json!("refs/heads/".to_string() + &"é\u{0}\n/..".repeat(rng.below(4))),
        6 => json!("0".repeat(40)),
        7 => json!(format!("{:040x}", rng.next() as u128 * rng.next() as u128)),
        8 => json!((0..rng.below(4)).map(|_| random_json(rng, depth + 1)).collect::<Vec<_>>()),
        9 => {
            let keys = ["ref", "after", "repository", "full_name", "clone_url", "project", "commits", "deleted", "x"];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                m.insert(rng.pick(&keys).to_string(), random_json(rng, depth + 1));
            }
            serde_json::Value::Object(m)
        }
        _ => json!("-".repeat(rng.below(300))),
    }
}

/// Replaces (or removes) one value somewhere in the document.
fn mutate_value(rng: &mut Rng, v: &mut serde_json::Value) {
    let mut cur = v;
    for _ in 0..rng.below(5) {
        let next_key = match cur {
            serde_json::Value::Object(m) if !m.is_empty() => {
                let keys: Vec<String> = m.keys().cloned().collect();
                Some(keys[rng.below(keys.len())].clone())
            }
            _ => None,
        };
        match next_key {
            Some(k) => cur = cur.get_mut(&k).unwrap(),
            None => break,
        }
    }
    if let serde_json::Value::Object(m) = cur {
        let keys: Vec<String> = m.keys().cloned().collect();
        if !keys.is_empty() {
            let k = keys[rng.below(keys.len())].clone();
            if rng.chance(4) {
                m.remove(&k);
            } else {
                m.insert(k, random_json(rng, 0));
            }
            return;
        }
    }
    *cur = random_json(rng, 0);
}

const JUNK: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b":",
    b"\\u0000",
    b"\\ud800",
    b"\xff\xfe",
    b"\x00",
    b"%",
    b"%zz",
    b"+",
    b"&payload=",
    b"1e999999",
    b"-",
    b"null",
    b"\"ref\":\"refs/heads/x\"",
];

fn mutate_bytes(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 if !b.is_empty() => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            1 if !b.is_empty() => {
                let at = rng.below(b.len());
                b.truncate(at);
            }
            2 => {
                let at = rng.below(b.len() + 1);
                let junk = rng.pick(JUNK).repeat(1 + rng.below(3));
                b.splice(at..at, junk);
            }
            _ if !b.is_empty() => {
                // Duplicate a slice (repeated keys, runs of brackets).
                let from = rng.below(b.len());
                let to = (from + rng.below(64)).min(b.len());
                let piece = b[from..to].to_vec();
                b.splice(from..from, piece);
            }
            _ => {}
        }
    }
    b
}

fn form_encode(body: &[u8]) -> Vec<u8> {
    let mut out = b"payload=".to_vec();
    for &c in body {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else {
            out.extend_from_slice(format!("%{c:02X}").as_bytes());
        }
    }
    out
}

/// What every accepted push must satisfy (the queue, the keys and the slave rely on it).
fn check_push(p: &Push) -> Result<(), String> {
    let hex = |s: &str| (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex(&p.sha) {
        return Err(format!("sha {:?} is not full lower-case hex", p.sha));
    }
    for (what, v, max) in [("repo", &p.repo, 200), ("branch", &p.branch, 255)] {
        if v.is_empty() || v.len() > max || v.chars().any(char::is_control) || v.contains(':') {
            return Err(format!("{what} {v:?} accepted"));
        }
    }
    // The forges' rule, written here independently: `/`-separated `A-Za-z0-9._-` segments.
    let segment_ok =
        |s: &str| !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !p.repo.split('/').all(segment_ok) {
        return Err(format!("repo {:?} accepted", p.repo));
    }
    if p.clone_url.is_empty() || p.clone_url.starts_with('-') || p.clone_url.chars().any(char::is_control) {
        return Err(format!("clone URL {:?} accepted", p.clone_url));
    }
    if job::decode(&job::encode(p)).as_ref() != Some(p) {
        return Err("the push does not survive its JSON round trip".into());
    }
    Ok(())
}

fn run_payload(req: &Request) -> Result<Result<Delivery, payload::PayloadError>, String> {
    catch_unwind(AssertUnwindSafe(|| payload::parse(req)))
        .map_err(|e| e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
}

#[test]
fn payload_parser_survives_twenty_thousand_mutations_of_the_real_fixtures() {
    let fixtures = fixtures();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut problems: Vec<String> = vec![];
    let (mut builds, mut no_builds, mut errors) = (0, 0, 0);
    let mut branches = std::collections::BTreeSet::new();
    let ctypes = [
        Some("application/json"),
        None,
        Some("application/json; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("application/vnd.github+json"),
        Some(""),
        Some(";;;"),
    ];
    for case in 0..20_000 {
        let (path, original) = &fixtures[case % fixtures.len()];
        let (mut gh, mut gitea, mut gitlab, mut key) = headers_for(path);
        let mut body = if rng.chance(2) {
            match serde_json::from_slice::<serde_json::Value>(original) {
                Ok(mut v) => {
                    for _ in 0..1 + rng.below(3) {
                        mutate_value(&mut rng, &mut v);
                    }
                    let text = v.to_string().into_bytes();
                    if rng.chance(3) {
                        mutate_bytes(&mut rng, &text)
                    } else {
                        text
                    }
                }
                Err(_) => mutate_bytes(&mut rng, original),
            }
        } else {
            mutate_bytes(&mut rng, original)
        };
        let ctype = *rng.pick(&ctypes);
        if ctype == Some("application/x-www-form-urlencoded") && !rng.chance(4) {
            body = form_encode(&body);
        }
        if rng.chance(10) {
            // Headers from another sender, or none at all, or garbage.
            let events = [None, Some("push"), Some("Push Hook"), Some("\u{0}"), Some("ping")];
            gh = *rng.pick(&events);
            gitea = *rng.pick(&events);
            gitlab = *rng.pick(&events);
            key = *rng.pick(&events);
        }
        let req = Request {
            content_type: ctype,
            github_event: gh,
            gitea_event: gitea,
            gitlab_event: gitlab,
            event_key: key,
            body: &body,
            ..Default::default()
        };
        match run_payload(&req) {
            Err(panic) => problems.push(format!("case {case} ({}): panicked: {panic}", path.display())),
            Ok(Ok(Delivery::Build(p))) => {
                builds += 1;
                branches.insert(p.branch.clone());
                if let Err(e) = check_push(&p) {
                    problems.push(format!("case {case} ({}): {e}", path.display()));
                }
            }
            Ok(Ok(Delivery::NoBuild(reason) | Delivery::Gone(payload::Gone { reason, .. }))) => {
                no_builds += 1;
                if reason.trim().is_empty() {
                    problems.push(format!("case {case}: no build without a reason"));
                }
            }
            Ok(Err(e)) => {
                errors += 1;
                if e.0.trim().is_empty() {
                    problems.push(format!("case {case}: an error without a message"));
                }
            }
        }
        if problems.len() > 20 {
            break;
        }
    }
    // Every branch name accepted is one git accepts (`git check-ref-format --branch`).
    for branch in &branches {
        let ok = std::process::Command::new("git").args(["check-ref-format", "--branch", branch]).output().unwrap().status.success();
        if !ok {
            problems.push(format!("branch {branch:?} accepted, git refuses it"));
        }
    }
    eprintln!("payload fuzz: {builds} builds ({} branch names), {no_builds} no-builds, {errors} errors", branches.len());
    assert!(problems.is_empty(), "payload parser:\n{}", problems.join("\n"));
    assert!(builds > 100 && errors > 1000, "the mutations explored too little: {builds} builds, {errors} errors");
}

#[test]
fn the_branch_rule_agrees_with_git_check_ref_format_on_random_names() {
    // Short names over an alphabet dense in what git treats specially.
    const ALPHABET: &[&str] =
        &["a", "b", "-", "/", ".", ":", "~", "^", "?", "*", "[", "\\", " ", "@", "{", "}", "\u{7f}", "lock", "é", "$("];
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5D);
    let mut disagree = vec![];
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..400 {
        let name: String = (0..1 + rng.below(6)).map(|_| rng.word(ALPHABET)).collect();
        if name == "@" {
            continue; // `--branch` reads a lone `@` as HEAD's shorthand; refs may not be `@`.
        }
        let ours = payload::check_branch(&name).is_ok();
        let git = std::process::Command::new("git").args(["check-ref-format", "--branch", &name]).output().unwrap().status.success();
        if ours != git {
            disagree.push(format!("{name:?}: ours {ours}, git {git} ({:?})", payload::check_branch(&name).err()));
        }
        if ours {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!("branch rule vs git: {accepted} accepted, {refused} refused");
    assert!(disagree.is_empty(), "the branch rule and git disagree:\n{}", disagree.join("\n"));
    assert!(accepted > 40 && refused > 40, "too little explored: {accepted} accepted, {refused} refused");
}

#[test]
fn payload_parser_refuses_100k_deep_nesting() {
    let n = 100_000;
    let docs: Vec<(&str, Vec<u8>)> = vec![
        ("[[[…", format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes()),
        ("{\"a\":{…", format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()),
        ("unclosed [[[…", "[".repeat(n).into_bytes()),
        (
            "a push whose ref is [[[…",
            format!("{{\"ref\":{}\"refs/heads/x\"{},\"after\":\"{}\"}}", "[".repeat(n), "]".repeat(n), "a".repeat(40)).into_bytes(),
        ),
    ];
    for (what, body) in &docs {
        for ctype in ["application/json", "application/x-www-form-urlencoded"] {
            let body = if ctype.contains("form") { form_encode(body) } else { body.clone() };
            let req = Request { content_type: Some(ctype), github_event: Some("push"), body: &body, ..Default::default() };
            match run_payload(&req) {
                Err(panic) => panic!("{what} ({ctype}): the parser panicked: {panic}"),
                Ok(Ok(d)) => panic!("{what} ({ctype}): accepted as {d:?}"),
                // Refused by the parser's recursion limit; for a top-level array before parsing
                // (a web-hook body must be a JSON object); for deep nesting under a key the hook
                // skips, by what the push then lacks.
                Ok(Err(e)) => assert!(
                    e.0.starts_with("malformed JSON payload: ")
                        || e.0 == "malformed payload: expected a JSON object"
                        || e.0.starts_with("missing field: "),
                    "{what} ({ctype}): {}",
                    e.0
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// integration.yml
// ---------------------------------------------------------------------------------------------

const SEEDS: &[&str] = &[
    "step: hello\nshell: echo hi\n",
    "- step: build\n  shell:\n    - make\n    - no-skip ./collect-logs.sh\n  env: {PROFILE: release, JOBS: 4}\n  debug: true\n- step: package\n  cwd: dist\n  shell: docker build -t acme/app:$TAG .\n",
    "- step: a\n  shell: [x, y]\n  cwd: sub/../sub\n  secrets: [TOKEN]\n  env:\n    TOKEN: \"multi\\nline\"\n    EMPTY: ~\n",
    "step: |\n  block title\nshell: >\n  folded\n  text\n",
    "base: &base\n  step: s\n  shell: true\n",
    "- &s {step: s, shell: 'echo \"$X\"'}\n- *s\n",
    "%YAML 1.2\n---\nstep: s\nshell: x\n...\n",
];

const TOKENS: &[&str] = &[
    "&a ",
    "*a",
    "&b ",
    "*b",
    "[",
    "]",
    "{",
    "}",
    "- ",
    ": ",
    "? ",
    "!!str ",
    "!!map ",
    "!custom ",
    "|",
    ">-",
    "\"",
    "'",
    "\t",
    "\n",
    "\n  ",
    "\n    - ",
    "#",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "<<: *a\n",
    ",",
    "step",
    "shell",
    "cwd",
    "env",
    "debug",
    "secrets",
    "../..",
    "/etc",
    "\\u0000",
    "\u{0}",
    "\u{feff}",
    "é",
    "\r",
    "~",
    "null",
    "true",
    "0x1F",
    "1e999",
    "&a [*a]",
];

const SCALARS: &[&str] = &["x", "true", "''", "\"a\\nb\"", "~", "12", "echo $TAG", "../up", "|\n  block"];

fn random_node(rng: &mut Rng, depth: usize, out: &mut String, indent: usize) {
    let pad = " ".repeat(indent);
    // Bounded: at most 12 levels and about 2 KB, whatever the dice say.
    match rng.below(if depth > 12 || out.len() > 2000 { 2 } else { 6 }) {
        0 => out.push_str(rng.word(SCALARS)),
        1 => out.push_str(rng.word(&["[]", "{}", "[a, b]", "{a: 1}", "*a", "&a x"])),
        2 | 3 => {
            for _ in 0..1 + rng.below(3) {
                out.push('\n');
                out.push_str(&pad);
                out.push_str("- ");
                random_node(rng, depth + 1, out, indent + 2);
            }
        }
        _ => {
            let keys = ["step", "shell", "cwd", "env", "debug", "secrets", "other", "A", "? complex"];
            for _ in 0..1 + rng.below(4) {
                out.push('\n');
                out.push_str(&pad);
                out.push_str(rng.word(&keys));
                out.push_str(": ");
                random_node(rng, depth + 1, out, indent + 2);
            }
        }
    }
}

fn random_yaml(rng: &mut Rng) -> String {
    let mut doc = String::new();
    if rng.chance(2) {
        random_node(rng, 0, &mut doc, 0);
    } else {
        doc = rng.pick(SEEDS).to_string();
        for _ in 0..1 + rng.below(4) {
            let mut bytes = doc.into_bytes();
            match rng.below(4) {
                0 if !bytes.is_empty() => {
                    let at = rng.below(bytes.len());
                    bytes.truncate(at);
                }
                1 => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.splice(at..at, rng.pick(TOKENS).bytes());
                }
                2 if !bytes.is_empty() => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.next() as u8;
                }
                _ if !bytes.is_empty() => {
                    let from = rng.below(bytes.len());
                    let to = (from + rng.below(40)).min(bytes.len());
                    let piece = bytes[from..to].to_vec();
                    bytes.splice(from..from, piece);
                }
                _ => {}
            }
            doc = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    doc
}

/// A `cwd` the parser accepted must stay inside the checkout.
fn cwd_stays_inside(cwd: &str) -> bool {
    let mut depth = 0i32;
    for part in cwd.split('/') {
        match part {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        if depth < 0 {
            return false;
        }
    }
    !cwd.starts_with('/') && !cwd.contains('\0')
}

fn run_yaml(text: &str) -> Result<Result<Vec<integration::Step>, integration::IntegrationError>, String> {
    catch_unwind(AssertUnwindSafe(|| integration::parse(text, std::time::Duration::from_secs(3600))))
        .map_err(|e| e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default())
}

#[test]
fn integration_parser_survives_twenty_thousand_random_and_mutated_documents() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut problems = vec![];
    let (mut ok, mut refused) = (0, 0);
    for case in 0..20_000 {
        let doc = random_yaml(&mut rng);
        match run_yaml(&doc) {
            Err(panic) => problems.push(format!("case {case}: panicked ({panic}) on {doc:?}")),
            Ok(Ok(steps)) => {
                ok += 1;
                if steps.is_empty() {
                    problems.push(format!("case {case}: accepted with no steps: {doc:?}"));
                }
                for s in &steps {
                    if let Some(cwd) = &s.cwd {
                        if !cwd_stays_inside(cwd) {
                            problems.push(format!("case {case}: accepted cwd {cwd:?}"));
                        }
                    }
                    if s.env.iter().any(|(k, _)| k.is_empty() || k.contains('=') || k.contains('\0')) {
                        problems.push(format!("case {case}: accepted env names {:?}", s.env));
                    }
                }
            }
            Ok(Err(e)) => {
                refused += 1;
                if !e.0.starts_with("integration.yml line ") {
                    problems.push(format!("case {case}: error without its line: {:?} for {doc:?}", e.0));
                }
            }
        }
        if problems.len() > 20 {
            break;
        }
    }
    eprintln!("integration.yml fuzz: {ok} accepted, {refused} refused");
    assert!(problems.is_empty(), "integration.yml parser:\n{}", problems.join("\n"));
    assert!(ok > 500 && refused > 2000, "the documents explored too little: {ok} accepted, {refused} refused");
}

#[test]
fn integration_parser_refuses_alias_bombs_and_10k_deep_nesting_clearly() {
    // Billion laughs: nine levels of ten aliases each (10^9 nodes expanded).
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    // The same inside a valid-looking step, and through merge keys.
    let mut in_step = String::from("step: s\nshell: x\nenv:\n  A: &x0 v\n");
    let mut list = String::from("- &l0 {step: s, shell: [x, x, x, x, x, x, x, x, x, x]}\n");
    for i in 1..8 {
        let p = i - 1;
        in_step.push_str(&format!("  B{i}: &x{i} [*x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}, *x{p}]\n"));
        list.push_str(&format!("- &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"));
    }
    for (what, doc) in [("billion laughs", &bomb), ("a bomb in env", &in_step), ("a bomb of steps", &list)] {
        match run_yaml(doc) {
            Err(panic) => panic!("{what}: panicked: {panic}"),
            Ok(Ok(steps)) => panic!("{what}: accepted ({} steps)", steps.len()),
            Ok(Err(e)) => assert!(e.0.contains("document too large") && e.0.starts_with("integration.yml line "), "{what}: {}", e.0),
        }
    }
    let n = 10_000;
    let deep: Vec<(&str, String)> = vec![
        ("[[[…", format!("{}x{}", "[".repeat(n), "]".repeat(n))),
        ("{a: {a: …", format!("{}x{}", "{a: ".repeat(n), "}".repeat(n))),
        ("- - - …", format!("{}x\n", "- ".repeat(n))),
        ("? ? ? …", format!("{}x\n", "? ".repeat(n))),
        ("- ? - ? …", format!("{}x\n", "- ? ".repeat(n))),
        ("- <tab> - <tab> …", format!("{}x\n", "-\t".repeat(n))),
        ("- &a - &a …", format!("{}x\n", "- &a ".repeat(n))),
        ("- !!seq - !!seq …", format!("{}x\n", "- !!seq ".repeat(n))),
        ("step: s / shell: - - - …", format!("step: s\nshell:\n  {}x\n", "- ".repeat(n))),
        ("unclosed [[[…", "[".repeat(n)),
        ("a step whose shell is [[[…", format!("step: s\nshell: {}x{}\n", "[".repeat(n), "]".repeat(n))),
    ];
    for (what, doc) in &deep {
        match run_yaml(doc) {
            Err(panic) => panic!("{what}: panicked: {panic}"),
            Ok(Ok(steps)) => panic!("{what}: accepted ({} steps)", steps.len()),
            Ok(Err(e)) => assert!(
                e.0.starts_with("integration.yml line ") && (e.0.contains("nested deeper than 32 levels") || e.0.contains("invalid YAML")),
                "{what}: {}",
                e.0
            ),
        }
    }
    // 32 levels are still fine where the schema allows nesting at all (an env value may not be a
    // list, so this is refused for its type, not its depth).
    let ok_depth = format!("step: s\nshell: x\nenv: {{A: {}x{}}}\n", "[".repeat(28), "]".repeat(28));
    let e = run_yaml(&ok_depth).expect("no panic").unwrap_err();
    assert!(e.0.contains("env value"), "{}", e.0);
}
