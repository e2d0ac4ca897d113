//! Why a build runs: the event every job and build record carries, with its
//! wire names (the record's `event`, the steps' `CI_EVENT`, `when: event`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What made a build: a forge's push, tag push or pull/merge request, a
/// schedule, or someone asking (`POST /build`). The default is what an
/// empty record's branch tells: a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Event {
    #[default]
    Push,
    PullRequest,
    Tag,
    Cron,
    Manual,
}

impl Event {
    pub const ALL: [Event; 5] = [Event::Push, Event::PullRequest, Event::Tag, Event::Cron, Event::Manual];

    /// The wire name: the one spelling records, jobs and steps see.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Tag => "tag",
            Event::Cron => "cron",
            Event::Manual => "manual",
        }
    }

    /// The event of a wire name; `None` for any other text.
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// What a record or job written before events were stored was, told by
    /// its branch: `pull/<N>` and `merge-requests/<N>` (the names requests
    /// are recorded under) a request, `tags/<name>` a tag, else a push.
    pub fn of_branch(branch: &str) -> Event {
        if branch.starts_with("pull/") || branch.starts_with("merge-requests/") {
            Event::PullRequest
        } else if branch.starts_with("tags/") {
            Event::Tag
        } else {
            Event::Push
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        let name = String::deserialize(d)?;
        Event::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown event {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_issues_and_round_trip() {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, ["push", "pull_request", "tag", "cron", "manual"]);
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{e}\""));
            assert_eq!(serde_json::from_str::<Event>(&format!("\"{e}\"")).unwrap(), e);
        }
        for bad in ["", "Push", "pr", "pull-request", "push ", "schedule"] {
            assert_eq!(Event::parse(bad), None, "{bad:?}");
        }
        assert!(serde_json::from_str::<Event>("\"nightly\"").is_err());
        assert!(serde_json::from_str::<Event>("3").is_err());
    }

    #[test]
    fn records_without_an_event_are_told_by_their_branch() {
        for (branch, want) in [
            ("main", Event::Push),
            ("feature/pull/3", Event::Push),
            ("pulls", Event::Push),
            ("pull/12", Event::PullRequest),
            ("merge-requests/4", Event::PullRequest),
            ("tags/v1.2", Event::Tag),
            ("tags", Event::Push),
        ] {
            assert_eq!(Event::of_branch(branch), want, "{branch}");
        }
    }
}
