//! Secrets per repository: the lines of SLAVE_SECRETS_FILE,
//! `<NAME> <repo glob> <branch glob> <value>`, and which of them a step gets.
//! The file is read, checked and taken out of the environment with the git
//! credentials (`crate::slave::credentials`); this module parses its lines
//! and decides grants.
//!
//! A step gets secret NAME only when it lists NAME under `secrets:`, the
//! build is not a fork's, and a line for NAME matches the repository and the
//! record's branch (`pull/<N>` for requests, `tags/<name>` for tags): the
//! first such line in the file wins. A name the file defines but does not
//! grant here is withheld: unset in the step, whatever else would set it.
//! The globs are `when:`'s ([`crate::glob`]): `*` stops at `/`, `**` does not.

use crate::glob::Glob;
use std::fmt;

/// Largest file read (bytes).
const MAX_TEXT: usize = 1 << 20;
/// Most secrets in the file.
const MAX_SECRETS: usize = 10_000;
/// Longest value (bytes): well under Linux's 128 KiB per variable.
const MAX_VALUE: usize = 64 * 1024;
/// The form every line takes.
const FORM: &str = "expected <NAME> <repo glob> <branch glob> <value>";

/// One line of the file.
#[derive(Clone, PartialEq, Eq)]
struct Secret {
    name: String,
    repo: Glob,
    branch: Glob,
    value: String,
}

/// Every configured secret, in the file's order. Debug output names the
/// secrets, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RepoSecrets(Vec<Secret>);

impl fmt::Debug for RepoSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoSecrets({})", self.names())
    }
}

/// What one step gets of the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Grant {
    /// `(NAME, value)` for each listed name a line grants here.
    pub given: Vec<(String, String)>,
    /// Listed names the file defines but does not grant here: unset.
    pub withheld: Vec<String>,
}

impl RepoSecrets {
    /// Parses the file's lines (`#` comments and blank lines skipped). Errors
    /// name `source` and the line, never a value.
    pub(crate) fn parse(text: &str, source: &str) -> Result<RepoSecrets, SecretLineError> {
        let err = |line, kind| SecretLineError { source: source.to_string(), line, kind };
        if text.len() > MAX_TEXT {
            return Err(err(0, SecretLineKind::TooLarge));
        }
        let mut all = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if all.len() == MAX_SECRETS {
                return Err(err(i + 1, SecretLineKind::TooMany));
            }
            all.push(parse_line(line).map_err(|kind| err(i + 1, kind))?);
        }
        Ok(RepoSecrets(all))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names the file defines, each once, comma-separated (for logs).
    pub fn names(&self) -> String {
        let mut names: Vec<&str> = Vec::new();
        for s in &self.0 {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        names.join(",")
    }

    /// The lines again, one per secret.
    pub(crate) fn lines(&self) -> String {
        self.0.iter().map(|s| format!("{} {} {} {}\n", s.name, s.repo, s.branch, s.value)).collect()
    }

    /// What a step of `repo` at record branch `branch` that lists `listed`
    /// under `secrets:` gets: for each listed name, the first line for it
    /// whose globs match; nothing at all in a fork's build.
    pub(crate) fn grant(&self, repo: &str, branch: &str, fork: bool, listed: &[String]) -> Grant {
        let mut grant = Grant::default();
        for name in listed {
            let mut lines = self.0.iter().filter(|s| s.name == *name).peekable();
            if lines.peek().is_none() || grant.given.iter().any(|(n, _)| n == name) || grant.withheld.contains(name) {
                continue;
            }
            let first = lines.find(|s| s.repo.matches(repo) && s.branch.matches(branch));
            match first {
                Some(s) if !fork => grant.given.push((name.clone(), s.value.clone())),
                _ => grant.withheld.push(name.clone()),
            }
        }
        grant
    }
}

fn parse_line(line: &str) -> Result<Secret, SecretLineKind> {
    let mut rest = line;
    let mut field = || {
        let f = rest.split(char::is_whitespace).next().unwrap_or("");
        rest = rest[f.len()..].trim_start();
        f.to_string()
    };
    let (name, repo, branch) = (field(), field(), field());
    let value = rest.trim_end().to_string();
    if branch.is_empty() || value.is_empty() {
        return Err(SecretLineKind::Fields);
    }
    if !valid_name(&name) {
        return Err(SecretLineKind::Name);
    }
    let repo = Glob::new(&repo).map_err(|_| SecretLineKind::BadGlob("repo"))?;
    let branch = Glob::new(&branch).map_err(|_| SecretLineKind::BadGlob("branch"))?;
    if value.len() < crate::slave::build::MIN_MASKED {
        return Err(SecretLineKind::ShortValue);
    }
    if value.len() > MAX_VALUE {
        return Err(SecretLineKind::LongValue);
    }
    if value.chars().any(char::is_control) {
        return Err(SecretLineKind::Control);
    }
    Ok(Secret { name, repo, branch, value })
}

/// `[A-Z_][A-Z0-9_]*`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A line of SLAVE_SECRETS_FILE that cannot be used: where and why, never
/// its value.
#[derive(Debug)]
pub struct SecretLineError {
    /// `SLAVE_SECRETS_FILE="path"`.
    source: String,
    /// From 1; 0 for the whole file.
    line: usize,
    kind: SecretLineKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SecretLineKind {
    Fields,
    Name,
    BadGlob(&'static str),
    ShortValue,
    LongValue,
    Control,
    TooLarge,
    TooMany,
}

impl fmt::Display for SecretLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = &self.source;
        if self.kind == SecretLineKind::TooLarge {
            return write!(f, "{source}: larger than {MAX_TEXT} bytes");
        }
        write!(f, "{source}, line {}: ", self.line)?;
        match self.kind {
            SecretLineKind::Fields => write!(f, "{FORM}"),
            SecretLineKind::Name => write!(f, "the name must be [A-Z_][A-Z0-9_]*; {FORM}"),
            SecretLineKind::BadGlob(which) => write!(
                f,
                "the {which} glob is not one (`*`, `**`, `?`, `[…]`, at most {} bytes: docs/integration-yml.md#when)",
                crate::glob::MAX_GLOB
            ),
            SecretLineKind::ShortValue => {
                write!(f, "the value is shorter than {} bytes: it could not be masked in build logs", crate::slave::build::MIN_MASKED)
            }
            SecretLineKind::LongValue => write!(f, "the value is longer than {MAX_VALUE} bytes"),
            SecretLineKind::Control => f.write_str("the value holds a control character"),
            SecretLineKind::TooLarge => Ok(()),
            SecretLineKind::TooMany => write!(f, "more than {MAX_SECRETS} secrets"),
        }
    }
}

impl std::error::Error for SecretLineError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(text: &str) -> RepoSecrets {
        RepoSecrets::parse(text, "test").unwrap()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lines_parse_with_comments_blank_lines_and_spaces_in_values() {
        let s = secrets("# deploy keys\n\nDEPLOY acme/* main  key with  spaces  \n\t_X9 * tags/* v#1=2\r\n");
        assert_eq!(s.0.len(), 2);
        assert_eq!((s.0[0].name.as_str(), s.0[0].repo.to_string(), s.0[0].branch.to_string()), ("DEPLOY", "acme/*".into(), "main".into()));
        assert_eq!(s.0[0].value, "key with  spaces");
        assert_eq!((s.0[1].name.as_str(), s.0[1].value.as_str()), ("_X9", "v#1=2"));
        assert_eq!(s.names(), "DEPLOY,_X9");
        assert_eq!(RepoSecrets::parse(&s.lines(), "again").unwrap(), s);
        assert_eq!(format!("{s:?}"), "RepoSecrets(DEPLOY,_X9)");
    }

    #[test]
    fn bad_lines_are_refused_by_number_without_the_value() {
        let long_glob = format!("A {} * Hush42", "x".repeat(257));
        let long_value = format!("A * * Hush42{}", "x".repeat(MAX_VALUE));
        let cases = [
            ("A * Hush42", "expected <NAME>"),
            ("A", "expected <NAME>"),
            ("a * * Hush42", "the name must be"),
            ("9A * * Hush42", "the name must be"),
            ("A-B * * Hush42", "the name must be"),
            (long_glob.as_str(), "the repo glob is not one"),
            ("A acme/[z-a] * Hush42", "the repo glob is not one"),
            ("A * * abc", "shorter than 4 bytes"),
            (long_value.as_str(), "longer than 65536 bytes"),
            ("A * * Hush42\u{7}bell", "control character"),
        ];
        for (line, want) in cases {
            let err = RepoSecrets::parse(&format!("# c\nOK * * fine\n{line}\n"), "SLAVE_SECRETS_FILE=\"f\"").unwrap_err().to_string();
            assert!(err.starts_with("SLAVE_SECRETS_FILE=\"f\", line 3: "), "{line}: {err}");
            assert!(err.contains(want), "{line}: {err}");
            assert!(!err.contains("Hush42"), "{line}: the error shows the value: {err}");
        }
        let err = RepoSecrets::parse(&"A * * Hush42\n".repeat(MAX_SECRETS + 1), "f").unwrap_err().to_string();
        assert_eq!(err, format!("f, line {}: more than {MAX_SECRETS} secrets", MAX_SECRETS + 1));
    }

    #[test]
    fn the_first_line_matching_repo_and_branch_wins() {
        let s = secrets(
            "KEY acme/app main app-main\nKEY acme/* main acme-main\nKEY acme/* ** acme-any\nTOKEN acme/app pull/* for-requests\n\
             OTHER zeta/* * zeta-only\n",
        );
        let given = |repo, branch, listed: &[&str]| s.grant(repo, branch, false, &names(listed));
        assert_eq!(given("acme/app", "main", &["KEY"]).given, vec![("KEY".into(), "app-main".into())]);
        assert_eq!(given("acme/lib", "main", &["KEY"]).given, vec![("KEY".into(), "acme-main".into())]);
        assert_eq!(given("acme/lib", "dev", &["KEY"]).given, vec![("KEY".into(), "acme-any".into())]);
        let g = given("acme/app", "pull/7", &["KEY", "TOKEN", "OTHER", "UNKNOWN", "KEY"]);
        assert_eq!(g.given, vec![("KEY".into(), "acme-any".into()), ("TOKEN".into(), "for-requests".into())]);
        assert_eq!(g.withheld, names(&["OTHER"]), "UNKNOWN is not the file's: left alone");
        let g = given("acme-evil/app", "main", &["KEY", "TOKEN"]);
        assert_eq!((g.given, g.withheld), (vec![], names(&["KEY", "TOKEN"])));
        assert_eq!(given("acme/app", "main", &[]), Grant::default(), "nothing listed, nothing given");
        // `*` stops at `/`: a branch glob `*` grants no request (`pull/<N>`) and no `feature/x`.
        let s = secrets("KEY acme/* * plain\n");
        assert_eq!(s.grant("acme/app", "feature/x", false, &names(&["KEY"])).withheld, names(&["KEY"]));
        assert_eq!(s.grant("acme/deep/app", "main", false, &names(&["KEY"])).withheld, names(&["KEY"]));
    }

    #[test]
    fn a_fork_build_gets_nothing() {
        let s = secrets("KEY ** ** everyone\n");
        let g = s.grant("acme/app", "pull/3", true, &names(&["KEY"]));
        assert_eq!((g.given, g.withheld), (vec![], names(&["KEY"])));
    }
}
