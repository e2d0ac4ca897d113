//! The globs of SLAVE_SECRETS_FILE: `*` matches any run of characters
//! (`/` included), `?` one character, anything else itself. No classes, no
//! escapes. Matching is iterative with one backtrack point, so it takes at
//! most `pattern × text` steps: never exponential, whatever the pattern.

/// Longest glob accepted (characters).
pub(crate) const MAX_GLOB: usize = 256;

/// Whether `text` matches `pattern` as a whole.
pub(crate) fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it now stands for the end of.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and try again.
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_question_marks() {
        let cases = [
            ("acme/*", "acme/app", true),
            ("acme/*", "acme/", true),
            ("acme/*", "acme", false),
            ("acme/*", "acme-evil/app", false),
            ("*", "", true),
            ("*", "pull/12", true),
            ("main", "main", true),
            ("main", "main2", false),
            ("main", "mai", false),
            ("release/*", "release/1.2/x", true),
            ("tags/v?.*", "tags/v1.2", true),
            ("tags/v?.*", "tags/v10.2", false),
            ("pull/?", "pull/1", true),
            ("*app", "acme/app", true),
            ("*app", "acme/apps", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXcYYb", false),
            ("é?", "éü", true),
            ("", "", true),
            ("", "x", false),
            ("**", "x", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(matches(pattern, text), want, "{pattern:?} against {text:?}");
        }
    }

    #[test]
    fn a_pathological_pattern_ends_quickly() {
        // Exponential with naive recursion; here 256 × 4096 steps at most.
        let pattern = "*a".repeat(128);
        let text = "a".repeat(4095) + "b";
        assert!(!matches(&pattern, &text));
    }
}
