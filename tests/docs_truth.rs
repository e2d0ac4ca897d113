//! The reference stays true: every metric `/metrics` prints is in docs/operations.md's table
//! and docs/api.md's `/metrics` row, and nothing more; every field of a build record (the JSON
//! the API answers, the Redis hash the store writes) is documented; `make help` names every
//! package scripts/deps.sh installs.

use crate::harness::*;
use std::collections::BTreeSet;
use std::path::Path;

fn doc(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The lines of `text` from the heading `heading` to the next heading of its level or above.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = text.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no heading {heading:?}");
    lines.take_while(|l| !(l.starts_with('#') && l.chars().take_while(|c| *c == '#').count() <= level && l.contains(' '))).collect()
}

/// The `code` spans of `text`.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// A metric's name: the span without its `{labels}`.
fn metric_name(span: &str) -> Option<String> {
    let name = span.split('{').next()?;
    (name.starts_with("ci_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then(|| name.to_string())
}

#[test]
fn every_metric_printed_is_documented_and_every_documented_one_is_printed() {
    let b = Backend::start(1, &[], &[]);
    b.build("docs/metrics", &[("integration.yml", "step: s\nshell: \"true\"\n")], "one build");
    let printed: BTreeSet<String> = b
        .hook
        .metrics()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    assert!(printed.len() >= 10, "{printed:?}");
    // operations.md: the first column of the Metrics table.
    let ops = doc("docs/operations.md");
    let table: BTreeSet<String> = section(&ops, "## Metrics")
        .iter()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| code_spans(l.split('|').nth(1).unwrap_or("")).into_iter().filter_map(metric_name).collect::<Vec<_>>())
        .collect();
    assert_eq!(table, printed, "docs/operations.md's metrics table (left) against what /metrics prints (right)");
    // api.md: the `GET /metrics` row of the routes table.
    let api = doc("docs/api.md");
    let row = api.lines().find(|l| l.starts_with("| `GET /metrics` |")).expect("api.md: the GET /metrics row");
    let listed: BTreeSet<String> = code_spans(row).into_iter().filter_map(metric_name).collect();
    assert_eq!(listed, printed, "docs/api.md's GET /metrics row (left) against what /metrics prints (right)");
}

#[test]
fn every_build_record_field_is_documented() {
    let b = Backend::start(1, &[], &[]);
    let (_, _, build) = b.build("docs/record", &[("integration.yml", "step: s\nshell: \"true\"\n")], "one build");
    // The JSON record, as the API answers it, against api.md's table of its fields.
    let r = b.hook.get_json(&format!("/status/docs/record?id={}", build.id));
    assert_eq!(r.code, 200, "{r}");
    let answered: BTreeSet<String> = r.json().as_object().expect("a JSON object").keys().cloned().collect();
    let api = doc("docs/api.md");
    let mut lines = api.lines().skip_while(|l| !l.starts_with("The JSON record")).skip_while(|l| !l.starts_with("| field |"));
    let documented: BTreeSet<String> =
        lines.by_ref().skip(2).take_while(|l| l.starts_with("| `")).filter_map(|l| code_spans(l).first().map(|s| s.to_string())).collect();
    assert_eq!(documented, answered, "docs/api.md's record fields (left) against a record /status answers (right)");
    assert!(documented.contains("stolen_from"), "{documented:?}");
    // The Redis hash the store writes, against operations.md's entry for ci:build:<id>.
    let ops = doc("docs/operations.md");
    let entry: String = ops
        .lines()
        .skip_while(|l| !l.starts_with("├── build:<id>"))
        .enumerate()
        .take_while(|(i, l)| *i == 0 || !l.starts_with("├──"))
        .map(|(_, l)| l)
        .collect::<Vec<_>>()
        .join(" ");
    let words: BTreeSet<&str> = entry.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    let hash = b.redis.hgetall(&format!("ci:build:{}", build.id));
    let undocumented: Vec<&String> = hash.keys().filter(|k| !words.contains(k.as_str())).collect();
    assert!(undocumented.is_empty(), "fields of ci:build:{} missing from docs/operations.md's Redis keys: {undocumented:?}", build.id);
    // The fields only some builds have are there too.
    for rare in ["stolen", "cancel", "died"] {
        assert!(words.contains(rare), "docs/operations.md's ci:build:<id> does not name {rare}");
    }
}

/// The packages are read off deps.sh's own lists here, not through its `--list`.
#[test]
fn make_help_names_every_package_deps_installs() {
    let script = doc("scripts/deps.sh");
    let list = |var: &str| -> Vec<String> {
        let line = script.lines().find(|l| l.starts_with(&format!("{var}=("))).unwrap_or_else(|| panic!("deps.sh: no {var}=( line"));
        line[var.len() + 2..].trim_end_matches(')').split_whitespace().map(|w| w.rsplit(':').next().unwrap().to_string()).collect()
    };
    let mut packages = list("pairs");
    packages.extend(list("python_packages"));
    assert!(packages.len() >= 15, "{packages:?}");
    let out = run(std::process::Command::new("make").args(["--no-print-directory", "help"]).current_dir(env!("CARGO_MANIFEST_DIR")));
    let deps = out.lines().find(|l| l.starts_with("deps ")).unwrap_or_else(|| panic!("make help has no deps line:\n{out}"));
    let named: BTreeSet<&str> = deps.split(": ").last().unwrap_or("").split_whitespace().collect();
    let wanted: BTreeSet<&str> = packages.iter().map(String::as_str).collect();
    assert_eq!(named, wanted, "make help's deps line: {deps}");
}
