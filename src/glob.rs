//! Globs over `/`-separated names (branches, changed paths): `*` (any run
//! of characters but `/`), `**` (any run, `/` included; `**/` also matches
//! no directory at all), `?` (one character but `/`), `[abc]`, `[a-z]`,
//! `[!a-z]` (one character of a class, never `/`), `\x` (`x` itself).
//!
//! Matched by simulating the pattern's automaton over the name, one set of
//! states per character: time is at most the name's length times the
//! pattern's, whatever the pattern (no backtracking), and patterns are at
//! most [`MAX_GLOB`] bytes long.

use std::fmt;

/// Longest pattern accepted, in bytes.
pub const MAX_GLOB: usize = 256;

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    One,
    /// `*`
    Star,
    /// `**` not followed by `/`
    Any,
    /// `**/`: nothing, or any run ending in `/`
    Dirs,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobError(pub String);

impl fmt::Display for GlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, GlobError> {
        let bad = |why: &str| Err(GlobError(format!("glob {text:?} {why}")));
        if text.is_empty() {
            return bad("is empty");
        }
        if text.len() > MAX_GLOB {
            return bad(&format!("is longer than {MAX_GLOB} bytes"));
        }
        if text.chars().any(char::is_control) {
            return bad("holds control characters");
        }
        let chars: Vec<char> = text.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            i += 1;
            match c {
                '\\' => match chars.get(i) {
                    Some(&next) => {
                        tokens.push(Token::Char(next));
                        i += 1;
                    }
                    None => return bad("ends with a lone \\"),
                },
                '?' => tokens.push(Token::One),
                '*' if chars.get(i) == Some(&'*') => {
                    i += 1;
                    while chars.get(i) == Some(&'*') {
                        i += 1;
                    }
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                        tokens.push(Token::Dirs);
                    } else {
                        tokens.push(Token::Any);
                    }
                }
                '*' => tokens.push(Token::Star),
                '[' => {
                    let negated = matches!(chars.get(i), Some('!' | '^'));
                    if negated {
                        i += 1;
                    }
                    let mut ranges = Vec::new();
                    let mut first = true;
                    loop {
                        let Some(&lo) = chars.get(i) else { return bad("has an unclosed [") };
                        if lo == ']' && !first {
                            i += 1;
                            break;
                        }
                        first = false;
                        i += 1;
                        if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                            let hi = chars[i + 1];
                            if hi < lo {
                                return bad(&format!("has the empty range {lo}-{hi}"));
                            }
                            ranges.push((lo, hi));
                            i += 2;
                        } else {
                            ranges.push((lo, lo));
                        }
                    }
                    tokens.push(Token::Class { negated, ranges });
                }
                c => tokens.push(Token::Char(c)),
            }
        }
        Ok(Glob { text: text.to_string(), tokens })
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let n = self.tokens.len();
        // States: how many tokens are matched so far. `seen` dedups per step.
        let mut now: Vec<usize> = Vec::with_capacity(n + 1);
        let mut next: Vec<usize> = Vec::with_capacity(n + 1);
        let mut seen = vec![usize::MAX; n + 1];
        self.add(0, &mut now, &mut seen, 0);
        for (step, c) in name.chars().enumerate() {
            let stamp = step + 1;
            next.clear();
            for &s in &now {
                let Some(token) = self.tokens.get(s) else { continue };
                let (stay, advance) = match token {
                    Token::Char(t) => (false, *t == c),
                    Token::One => (false, c != '/'),
                    Token::Star => (c != '/', false),
                    Token::Any => (true, false),
                    Token::Dirs => (true, c == '/'),
                    Token::Class { negated, ranges } => {
                        (false, c != '/' && ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated)
                    }
                };
                if stay {
                    self.add(s, &mut next, &mut seen, stamp);
                }
                if advance {
                    self.add(s + 1, &mut next, &mut seen, stamp);
                }
            }
            if next.is_empty() {
                return false;
            }
            std::mem::swap(&mut now, &mut next);
        }
        now.contains(&n)
    }

    /// Adds state `s` and those reached from it matching nothing (past a
    /// `*`, `**` or `**/`).
    fn add(&self, mut s: usize, set: &mut Vec<usize>, seen: &mut [usize], stamp: usize) {
        loop {
            if seen[s] == stamp {
                return;
            }
            seen[s] = stamp;
            set.push(s);
            match self.tokens.get(s) {
                Some(Token::Star | Token::Any | Token::Dirs) => s += 1,
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Glob::new(pattern).unwrap().matches(name)
    }

    #[test]
    fn stars_questions_and_classes() {
        for (p, yes, no) in [
            ("main", &["main"][..], &["mainx", "mai", "x/main"][..]),
            ("release/*", &["release/1.0", "release/"], &["release/1/2", "release", "releases/1"]),
            ("release/**", &["release/1.0", "release/a/b/c"], &["release", "other/release/1"]),
            ("**/*.md", &["README.md", "docs/a.md", "a/b/c.md"], &["README.txt", "a.md/x"]),
            ("docs/**/*.md", &["docs/a.md", "docs/x/y/a.md"], &["docs.md", "other/docs/a.md"]),
            ("src/**", &["src/a", "src/a/b.rs"], &["srcx/a", "src"]),
            ("**", &["a", "a/b/c", ""], &[]),
            ("*.rs", &["main.rs", ".rs"], &["src/main.rs"]),
            ("v?.?", &["v1.2"], &["v1.23", "v/.2"]),
            ("[a-c]x[!0-9]", &["axb", "cxz"], &["dxb", "ax1", "ax/"]),
            ("[]]", &["]"], &["x"]),
            ("a\\*b", &["a*b"], &["axb"]),
            ("pull/*", &["pull/12"], &["pull/12/x", "merge-requests/12"]),
            ("tags/v*", &["tags/v1.2"], &["tags/1.2"]),
            ("a**b", &["ab", "a/x/b"], &["a/x/c"]),
        ] {
            for name in yes {
                assert!(m(p, name), "{p} should match {name}");
            }
            for name in no {
                assert!(!m(p, name), "{p} should not match {name}");
            }
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(Glob::new("").unwrap_err().0, "glob \"\" is empty");
        assert_eq!(Glob::new("a[bc").unwrap_err().0, "glob \"a[bc\" has an unclosed [");
        assert_eq!(Glob::new("[z-a]").unwrap_err().0, "glob \"[z-a]\" has the empty range z-a");
        assert_eq!(Glob::new("a\\").unwrap_err().0, "glob \"a\\\\\" ends with a lone \\");
        assert!(Glob::new(&"a".repeat(MAX_GLOB + 1)).unwrap_err().0.ends_with("is longer than 256 bytes"));
        assert!(Glob::new(&"a".repeat(MAX_GLOB)).is_ok());
        assert!(Glob::new("a\nb").unwrap_err().0.contains("control characters"));
    }

    /// The pattern that makes a backtracking matcher take exponential time,
    /// against a long name that almost matches: the automaton's work is
    /// bounded by name × pattern, so this answers at once (a backtracking
    /// matcher would not finish this test: 2^100 ways to place the stars).
    #[test]
    fn a_hostile_pattern_against_a_long_name_is_linear() {
        let pattern = format!("{}b", "*a".repeat(100));
        let name = "a".repeat(4096);
        let g = Glob::new(&pattern).unwrap();
        assert!(!g.matches(&name));
        assert!(g.matches(&format!("{name}b")));
        let deep = format!("{}x", "**/".repeat(60));
        let path = "a/".repeat(2000);
        assert!(!Glob::new(&deep).unwrap().matches(&path));
        assert!(Glob::new(&deep).unwrap().matches(&format!("{path}x")));
    }
}
