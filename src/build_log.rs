//! The build log's lines that more than one side reads: a snippet's output
//! lines (`[failed]   . <line>`), as the slave writes them, and why a failed
//! build failed, as its page finds it. The other line formats are the
//! slave's (`slave::build`) and documented in docs/integration-yml.md.

/// Most output lines of a failed snippet its log keeps (without `debug`)...
pub const FAILED_TAIL_LINES: usize = 200;
/// ...and most bytes of them (each line's text and its newline).
pub const FAILED_TAIL_BYTES: usize = 64 * 1024;

const PASSED: &str = "[passed]";
const FAILED: &str = "[failed]";
/// Between a result's tag and an output line.
const OUTPUT: &str = "   . ";
/// A step's note naming the secrets it lists but does not get: a fact, not
/// why anything failed.
const NOT_GRANTED: &str = "* secrets not granted here: ";

/// The note naming the secrets a step lists under `secrets:` and does not get.
pub fn not_granted(names: &[&str]) -> String {
    format!("{NOT_GRANTED}{}", names.join(", "))
}

/// The tag of a snippet's lines: `[passed]` or `[failed]`.
pub fn tag(passed: bool) -> &'static str {
    if passed {
        PASSED
    } else {
        FAILED
    }
}

/// An output line of a snippet that ended as `tag` says.
pub fn output(tag: &str, text: &str) -> String {
    format!("{tag}{OUTPUT}{text}")
}

/// The line counting the output lines before those kept.
pub fn dropped(tag: &str, n: u64) -> String {
    output(tag, &format!("({n} earlier output lines dropped)"))
}

/// The last of `lines` within FAILED_TAIL_LINES and FAILED_TAIL_BYTES, and
/// how many came before them (`dropped` earlier ones included).
pub fn failed_tail(lines: &[String], dropped: u64) -> (u64, &[String]) {
    let (mut bytes, mut kept) = (0, 0);
    for line in lines.iter().rev().take(FAILED_TAIL_LINES) {
        bytes += line.len() + 1;
        if bytes > FAILED_TAIL_BYTES {
            break;
        }
        kept += 1;
    }
    let first = lines.len() - kept;
    (dropped + first as u64, &lines[first..])
}

/// Why a failed build failed, as its log says it.
#[derive(Debug, PartialEq, Eq)]
pub struct Why<'a> {
    /// The step's title (its `- <title>` line), when the failure is in one.
    pub step: Option<&'a str>,
    /// The first failed snippet's result line; when no snippet failed, the
    /// first `* <why>` line.
    pub result: &'a str,
    /// The failed snippet's output lines, as logged.
    pub output: &'a [String],
    /// The `* ` lines right after them (`* step 2 ("test") timed out …`).
    pub notes: &'a [String],
}

impl Why<'_> {
    /// The output's last lines within the failed tail's caps (a `debug`
    /// step logged all of it), and how many came before them in all.
    pub fn tail(&self) -> (u64, &[String]) {
        let prefix = format!("{FAILED}{OUTPUT}(");
        let logged =
            self.output.first().and_then(|l| l.strip_prefix(&prefix)?.strip_suffix(" earlier output lines dropped)")?.parse().ok());
        match logged {
            Some(n) => failed_tail(&self.output[1..], n),
            None => failed_tail(self.output, 0),
        }
    }
}

/// The first failure in `log`: a failed snippet with what follows it, else
/// the first `* <why>` line; `None` when the log shows neither.
pub fn why(log: &[String]) -> Option<Why<'_>> {
    let output_prefix = format!("{FAILED}{OUTPUT}");
    let result = |l: &String| l.starts_with(&format!("{FAILED} ")) && !l.starts_with(&output_prefix);
    let (at, outputs, notes) = match log.iter().position(result) {
        Some(at) => {
            let outputs = log[at + 1..].iter().take_while(|l| l.starts_with(&output_prefix)).count();
            let notes = log[at + 1 + outputs..].iter().take_while(|l| l.starts_with("* ")).count();
            (at, outputs, notes)
        }
        None => (log.iter().position(|l| l.starts_with("* ") && !l.starts_with(NOT_GRANTED))?, 0, 0),
    };
    // The commit line (`- commit …`) is the log's first; step titles follow it.
    let step = log[1.min(at)..at].iter().rev().find_map(|l| l.strip_prefix("- "));
    let output = &log[at + 1..at + 1 + outputs];
    Some(Why { step, result: &log[at], output, notes: &log[at + 1 + outputs..at + 1 + outputs + notes] })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_first_failed_snippet_with_its_output_and_notes() {
        let log = lines(
            "- commit 0123456789 (x)\n- build\n[passed] make (1 seconds, exit code 0)\n- test\n[failed] make test (2 seconds, exit code 2)\n\
             [failed]   . cc -c a.c\n[failed]   . a.c:3: undefined reference to foo\n* step 2 (\"test\") timed out after 2 seconds\n\
             [skipped] echo x\n[failed] no-skip (0 seconds, exit code 1)\n",
        );
        let why = why(&log).unwrap();
        assert_eq!((why.step, why.result, why.output, why.notes), (Some("test"), log[4].as_str(), &log[5..7], &log[7..8]));
        let quiet = lines("- commit 0123456789 (x)\n- lint\n[failed] false (0 seconds, exit code 1)\n[skipped] echo x\n");
        let why = super::why(&quiet).unwrap();
        assert_eq!((why.step, why.result, why.output.len(), why.notes.len()), (Some("lint"), quiet[2].as_str(), 0, 0));
    }

    #[test]
    fn a_build_that_could_not_run_fails_on_its_star_line() {
        let log = lines("- commit 0123456789 (x)\n* integration.yml missing\n");
        assert_eq!(why(&log), Some(Why { step: None, result: &log[1], output: &[], notes: &[] }));
        let log = lines("- commit 0123456789 (x)\n- in a box\n* image x: not there\n");
        assert_eq!(why(&log).unwrap().step, Some("in a box"));
        assert_eq!(why(&lines("- commit 0123456789 (x)\n- a\n[passed] true (0 seconds, exit code 0)\n")), None);
        assert_eq!(why(&[]), None);
    }

    #[test]
    fn the_failed_tail_keeps_the_last_lines_within_both_caps() {
        let many: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
        let (dropped, kept) = failed_tail(&many, 7);
        assert_eq!((dropped, kept.len(), kept[0].as_str()), (7 + 800, 200, "line 800"));
        // 4,096-byte lines: 15 fit in 64 KiB with their newlines (16 × 4,097 > 65,536).
        let long: Vec<String> = (0..100).map(|i| format!("{i:04}{}", "x".repeat(4092))).collect();
        let (dropped, kept) = failed_tail(&long, 0);
        assert_eq!((dropped, kept.len()), (85, 15));
        assert!(kept[0].starts_with("0085"));
        let (dropped, kept) = failed_tail(&many[..3], 0);
        assert_eq!((dropped, kept), (0, &many[..3]));
    }

    #[test]
    fn a_failure_shows_its_tail_with_what_came_before_counted() {
        let mut log = lines("- commit 0123456789 (x)\n- t\n[failed] make (0 seconds, exit code 2)\n");
        log.push(dropped("[failed]", 5));
        log.extend((0..300).map(|i| output("[failed]", &format!("o{i}"))));
        let why = why(&log).unwrap();
        let (earlier, tail) = why.tail();
        assert_eq!((earlier, tail.len(), tail[0].as_str()), (105, 200, "[failed]   . o100"));
        let short = lines("[failed] x (0 seconds, exit code 1)\n[failed]   . only\n");
        assert_eq!(super::why(&short).unwrap().tail(), (0, &short[1..]));
    }

    #[test]
    fn output_lines_read_back() {
        assert_eq!(output(tag(false), "x"), "[failed]   . x");
        assert_eq!(dropped(tag(true), 3), "[passed]   . (3 earlier output lines dropped)");
    }
}
