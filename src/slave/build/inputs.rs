//! A step's `inputs:` and its fingerprint: what a pass of the step depends
//! on, hashed, so a later build with the same fingerprint may reuse the pass
//! instead of running the step again. No I/O: the input trees are given
//! ([`Trees`], read from the mirror by `workspace`).

use crate::glob::Glob;
use sha2::{Digest, Sha256};

/// Most paths or globs an `inputs:` lists.
pub const MAX_INPUTS: usize = 32;
/// Changes whenever what the fingerprint covers changes: old passes are
/// then never found again.
const VERSION: &str = "ci-inputs-v1";

/// One entry of `inputs:`: a path in the checkout (a file or a directory)
/// or a glob over the commit's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Path(String),
    Glob(Glob),
}

impl Input {
    /// A text with `*`, `?`, `[` or `\` is a glob; any other a path,
    /// relative, without `.`, `..` or empty components (a trailing `/` is
    /// dropped).
    pub fn parse(text: &str) -> Result<Input, String> {
        if text.contains(['*', '?', '[', '\\']) {
            return Glob::new(text).map(Input::Glob).map_err(|e| e.to_string());
        }
        let path = text.strip_suffix('/').unwrap_or(text);
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.contains('\0')
            || path.contains('\n')
            || path.split('/').any(|part| matches!(part, "" | "." | ".."));
        if bad {
            return Err(format!("input {text:?} must be a relative path without . or .. (use ** for every file)"));
        }
        Ok(Input::Path(path.to_string()))
    }
}

/// The commit's objects the inputs name, as git lists them
/// (`<mode> <type> <id>` by path).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trees {
    /// The entries of the plain paths that exist (`ls-tree <sha> -- <paths>`).
    pub paths: Vec<(String, String)>,
    /// Every file of the commit (`ls-tree -r <sha>`), when a glob asks.
    pub files: Option<Vec<(String, String)>>,
}

/// Parses `git ls-tree -z` output: `<mode> SP <type> SP <id> TAB <path>` NUL.
pub fn parse_ls_tree(out: &str) -> Vec<(String, String)> {
    out.split('\0').filter_map(|entry| entry.split_once('\t')).map(|(what, path)| (path.to_string(), what.to_string())).collect()
}

/// What a step's pass depends on besides its inputs' content.
pub struct Recipe<'a> {
    pub repo: &'a str,
    pub shell: &'a [String],
    pub env: &'a [(String, String)],
    /// A manual run's parameters: they override `env`.
    pub params: &'a [(String, String)],
    pub image: Option<&'a str>,
    pub cwd: Option<&'a str>,
    /// The names of the secrets it is granted.
    pub secrets: &'a [String],
    /// Everything else of the step that changes how it runs (services, timeout).
    pub rest: String,
}

/// The fingerprint (64 hex digits) of a step with these inputs in `trees`;
/// `None` when a glob is asked and the files were not read.
pub fn fingerprint(recipe: &Recipe, inputs: &[Input], trees: &Trees) -> Option<String> {
    let mut h = Sha256::new();
    // Every field is length-prefixed: no two recipes hash the same bytes.
    let mut field = |tag: &str, value: &str| {
        for part in [tag, value] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    };
    field("version", VERSION);
    field("repo", recipe.repo);
    recipe.shell.iter().for_each(|s| field("shell", s));
    for (k, v) in recipe.env {
        field("env", k);
        field("=", v);
    }
    for (k, v) in recipe.params {
        field("param", k);
        field("=", v);
    }
    field("image", recipe.image.unwrap_or("-"));
    field("cwd", recipe.cwd.unwrap_or("-"));
    recipe.secrets.iter().for_each(|s| field("secret", s));
    field("rest", &recipe.rest);
    for input in inputs {
        match input {
            Input::Path(p) => {
                field("path", p);
                let found = trees.paths.iter().find(|(path, _)| path == p);
                field("object", found.map_or("missing", |(_, what)| what.as_str()));
            }
            Input::Glob(g) => {
                field("glob", &g.to_string());
                for (path, what) in trees.files.as_ref()?.iter().filter(|(path, _)| g.matches(path)) {
                    field("file", path);
                    field("object", what);
                }
            }
        }
    }
    Some(format!("{:x}", h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe<'a>(repo: &'a str, shell: &'a [String]) -> Recipe<'a> {
        Recipe { repo, shell, env: &[], params: &[], image: None, cwd: None, secrets: &[], rest: String::new() }
    }

    #[test]
    fn paths_and_globs_are_told_apart_and_checked() {
        assert_eq!(Input::parse("src/").unwrap(), Input::Path("src".into()));
        assert!(matches!(Input::parse("src/**/*.rs").unwrap(), Input::Glob(_)));
        for bad in ["", "/etc", "a/../b", ".", "./a", "a//b"] {
            assert!(Input::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_fingerprint_follows_inputs_repo_and_snippets() {
        let shell = vec!["make".to_string()];
        let ls = "100644 blob aaaa\tsrc/a.rs\x00100644 blob bbbb\tdocs/x.md\0";
        let files = Trees { paths: parse_ls_tree("040000 tree cccc\tsrc\0"), files: Some(parse_ls_tree(ls)) };
        let inputs = [Input::parse("src").unwrap(), Input::parse("**/*.rs").unwrap(), Input::parse("gone").unwrap()];
        let base = fingerprint(&recipe("a/b", &shell), &inputs, &files).unwrap();
        assert_eq!(base.len(), 64);
        let mut changed = files.clone();
        changed.files = Some(parse_ls_tree("100644 blob aaab\tsrc/a.rs\x00100644 blob bbbb\tdocs/x.md\0"));
        assert_ne!(fingerprint(&recipe("a/b", &shell), &inputs, &changed).unwrap(), base, "a matched file changed");
        let mut outside = files.clone();
        outside.files = Some(parse_ls_tree("100644 blob aaaa\tsrc/a.rs\x00100644 blob dddd\tdocs/x.md\0"));
        assert_eq!(fingerprint(&recipe("a/b", &shell), &inputs, &outside).unwrap(), base, "a file outside the inputs");
        assert_ne!(fingerprint(&recipe("a/c", &shell), &inputs, &files).unwrap(), base, "another repository");
        assert_ne!(fingerprint(&recipe("a/b", &["make test".to_string()]), &inputs, &files).unwrap(), base);
        let none = Trees { paths: vec![], files: None };
        assert_eq!(fingerprint(&recipe("a/b", &shell), &inputs, &none), None, "a glob without the files");
    }
}
