//! A step's `when:`: whether it runs for this build's branch, event and
//! changed files, and why not. No I/O: the changed files are given
//! ([`Changed`], read from the mirror by `workspace`).

use crate::glob::Glob;
use crate::payload::Event;

/// Most globs a `when` key lists.
pub const MAX_GLOBS: usize = 32;

/// `when:` of a step: every key given must hold; an empty list is a key
/// not given (the parser refuses empty lists).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct When {
    /// Globs of the record's branch (`pull/<N>`, `merge-requests/<N>`, `tags/<name>`).
    pub branch: Vec<Glob>,
    pub event: Vec<Event>,
    /// Globs of the files changed.
    pub path: Vec<Glob>,
}

/// The files a build changes: `before..sha` of a push, merge base..head of
/// a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Unknown, so everything counts as changed; why (for the log).
    All(String),
    Files(Vec<String>),
}

impl Changed {
    /// What the log says of it: `files=12` or `all="<why>"`.
    pub fn describe(&self) -> String {
        match self {
            Changed::All(why) => format!("all={}", crate::logging::quote(why)),
            Changed::Files(f) => format!("files={}", f.len()),
        }
    }
}

impl When {
    /// Why the branch or the event keeps the step from running; `None`: both hold.
    pub fn refuses_ref(&self, branch: &str, event: Event) -> Option<String> {
        if !self.branch.is_empty() && !self.branch.iter().any(|g| g.matches(branch)) {
            return Some(match self.branch.as_slice() {
                [one] => format!("branch {branch} does not match {one}"),
                many => format!("branch {branch} matches none of {}", list(many)),
            });
        }
        if !self.event.is_empty() && !self.event.contains(&event) {
            return Some(match self.event.as_slice() {
                [one] => format!("event {event} is not {one}"),
                many => format!("event {event} is none of {}", list(many)),
            });
        }
        None
    }

    /// Why the changed files keep the step from running; `None`: `path`
    /// holds (or is not given).
    pub fn refuses_paths(&self, changed: &Changed) -> Option<String> {
        let files = match (self.path.is_empty(), changed) {
            (true, _) | (false, Changed::All(_)) => return None,
            (false, Changed::Files(files)) => files,
        };
        if files.iter().any(|f| self.path.iter().any(|g| g.matches(f))) {
            return None;
        }
        let globs = match self.path.as_slice() {
            [one] => one.to_string(),
            many => format!("any of {}", list(many)),
        };
        Some(match files.len() {
            0 => format!("no file changed, none matches {globs}"),
            1 => format!("the 1 changed file does not match {globs}"),
            n => format!("none of the {n} changed files matches {globs}"),
        })
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(g: &[&str]) -> Vec<Glob> {
        g.iter().map(|g| Glob::new(g).unwrap()).collect()
    }

    #[test]
    fn branch_and_event_say_which_did_not_hold() {
        let w = When { branch: globs(&["release/*"]), ..When::default() };
        assert_eq!(w.refuses_ref("main", Event::Push).as_deref(), Some("branch main does not match release/*"));
        assert_eq!(w.refuses_ref("release/1.0", Event::Push), None);
        let w = When { branch: globs(&["main", "tags/*"]), event: vec![Event::Cron, Event::Manual], ..When::default() };
        assert_eq!(w.refuses_ref("pull/3", Event::Cron).as_deref(), Some("branch pull/3 matches none of main, tags/*"));
        assert_eq!(w.refuses_ref("main", Event::Push).as_deref(), Some("event push is none of cron, manual"));
        assert_eq!(w.refuses_ref("main", Event::Cron), None);
        assert_eq!(w.refuses_ref("tags/v1", Event::Manual), None);
        let w = When { event: vec![Event::Manual], ..When::default() };
        assert_eq!(w.refuses_ref("main", Event::Cron).as_deref(), Some("event cron is not manual"));
        assert_eq!(When::default().refuses_ref("anything", Event::Tag), None);
    }

    #[test]
    fn paths_hold_when_any_changed_file_matches_or_all_changed() {
        let w = When { path: globs(&["src/**", "Cargo.toml"]), ..When::default() };
        let files = |f: &[&str]| Changed::Files(f.iter().map(|s| s.to_string()).collect());
        assert_eq!(w.refuses_paths(&files(&["docs/a.md", "src/x/y.rs"])), None);
        assert_eq!(w.refuses_paths(&files(&["Cargo.toml"])), None);
        assert_eq!(w.refuses_paths(&Changed::All("new branch".into())), None);
        assert_eq!(
            w.refuses_paths(&files(&["docs/a.md", "README.md"])).as_deref(),
            Some("none of the 2 changed files matches any of src/**, Cargo.toml")
        );
        let one = When { path: globs(&["src/**"]), ..When::default() };
        assert_eq!(one.refuses_paths(&files(&["README.md"])).as_deref(), Some("the 1 changed file does not match src/**"));
        assert_eq!(one.refuses_paths(&files(&[])).as_deref(), Some("no file changed, none matches src/**"));
        assert_eq!(When::default().refuses_paths(&files(&[])), None);
    }
}
