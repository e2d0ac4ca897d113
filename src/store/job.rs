//! The job a push becomes in Redis: the `push` field of a build record and
//! the branch's last push (re-runs). One typed codec ([`Job`], serde) that
//! the hook writes and the slave reads.
//!
//! The stored JSON keeps the names and the key order (alphabetical) that
//! earlier versions wrote, and reads what they wrote: only `repo`, `branch`,
//! `sha` and `clone_url` are required; any other field that is missing, null
//! or of another type reads as empty, but for `event`, which then reads as
//! its branch tells ([`Event::of_branch`]).

use crate::payload::{Event, ForgeFacts, Params, Pull, Push};
use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};

/// A push as stored. Fields in alphabetical order: that is the order of the
/// JSON keys (what `serde_json::json!` wrote before this type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Written only when known, so a job without it keeps its bytes; read
    /// as unknown when absent or not a string (an earlier version's job).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    pub branch: String,
    pub clone_url: String,
    #[serde(default, deserialize_with = "lenient")]
    pub default_branch: Option<String>,
    /// `None` in jobs of earlier versions (and for an unknown name).
    #[serde(default, deserialize_with = "lenient")]
    pub event: Option<Event>,
    /// The forge's kind (`github`, `gitea`, `gitlab`), "" when unknown.
    #[serde(default, deserialize_with = "lenient")]
    pub forge: String,
    #[serde(default, deserialize_with = "lenient")]
    pub fork: bool,
    #[serde(default, deserialize_with = "strings")]
    pub hints: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub message: String,
    /// A manual run's parameters; absent (not written) when there are none.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    #[serde(default, deserialize_with = "lenient")]
    pub project_id: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub pull: Option<JobPull>,
    pub repo: String,
    pub sha: String,
    #[serde(default, deserialize_with = "lenient")]
    pub statuses_url: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub tag: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub web_url: Option<String>,
}

/// A pull/merge request's facts as stored (all four, or none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPull {
    pub base_branch: String,
    pub head_branch: String,
    pub head_repo: String,
    pub number: u64,
}

/// A field that does not read as `T` reads as `T::default()`.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(T::deserialize(v).unwrap_or_default())
}

/// A list of which only the strings count.
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_array().map(|a| a.iter().filter_map(|h| h.as_str().map(String::from)).collect()).unwrap_or_default())
}

impl Job {
    pub fn of(p: &Push) -> Job {
        Job {
            before: p.before.clone(),
            branch: p.branch.clone(),
            clone_url: p.clone_url.clone(),
            default_branch: p.default_branch.clone(),
            event: Some(p.event),
            forge: p.forge.kind.clone(),
            fork: p.fork,
            hints: p.hints.clone(),
            message: p.message.clone(),
            params: p.params.clone(),
            project_id: p.forge.project_id,
            pull: p.pull.as_ref().map(|q| JobPull {
                base_branch: q.base_branch.clone(),
                head_branch: q.head_branch.clone(),
                head_repo: q.head_repo.clone(),
                number: q.number,
            }),
            repo: p.repo.clone(),
            sha: p.sha.clone(),
            statuses_url: p.forge.statuses_url.clone(),
            tag: p.tag.clone(),
            web_url: p.forge.web_url.clone(),
        }
    }

    pub fn into_push(self) -> Push {
        Push {
            event: self.event.unwrap_or_else(|| Event::of_branch(&self.branch)),
            repo: self.repo,
            branch: self.branch,
            sha: self.sha,
            before: self.before,
            clone_url: self.clone_url,
            default_branch: self.default_branch,
            message: self.message,
            hints: self.hints,
            forge: ForgeFacts { kind: self.forge, web_url: self.web_url, statuses_url: self.statuses_url, project_id: self.project_id },
            pull: self.pull.map(|q| Pull {
                number: q.number,
                base_branch: q.base_branch,
                head_branch: q.head_branch,
                head_repo: q.head_repo,
            }),
            tag: self.tag,
            fork: self.fork,
            params: self.params,
        }
    }
}

/// The stored JSON of a push.
pub fn encode(push: &Push) -> String {
    serde_json::to_string(&Job::of(push)).expect("a job is plain strings, numbers and lists")
}

/// The push a stored JSON holds; `None` when it is not one (a poison job).
pub fn decode(text: &str) -> Option<Push> {
    serde_json::from_str::<Job>(text).ok().map(Job::into_push)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Push {
        Push {
            repo: "a/b".into(),
            branch: "main".into(),
            sha: "ab".repeat(20),
            before: None,
            clone_url: "file:///x".into(),
            default_branch: None,
            message: "m".into(),
            hints: vec!["jdk8".into()],
            forge: ForgeFacts {
                kind: "gitlab".into(),
                web_url: Some("https://gl.example/a/b".into()),
                statuses_url: None,
                project_id: Some(15),
            },
            pull: None,
            tag: None,
            fork: false,
            event: Event::Push,
            params: Params::new(),
        }
    }

    #[test]
    fn push_json_round_trips() {
        let p = sample();
        assert_eq!(decode(&encode(&p)), Some(p.clone()));
        let q = Push {
            branch: "pull/7".into(),
            pull: Some(Pull { number: 7, base_branch: "main".into(), head_branch: "fix/x".into(), head_repo: "them/b".into() }),
            fork: true,
            event: Event::PullRequest,
            ..p.clone()
        };
        assert_eq!(decode(&encode(&q)), Some(q.clone()));
        let t = Push { branch: "tags/v1.2".into(), tag: Some("v1.2".into()), event: Event::Tag, ..p.clone() };
        assert_eq!(decode(&encode(&t)), Some(t));
        let params = Params::from([("TARGET".to_string(), "prod \"eu\"\n".to_string()), ("A".to_string(), String::new())]);
        let m = Push { event: Event::Manual, params, ..p.clone() };
        assert!(encode(&m).contains(r#""message":"m","params":{"A":"","TARGET":"prod \"eu\"\n"},"project_id""#), "{}", encode(&m));
        assert_eq!(decode(&encode(&m)), Some(m));

        let b = Push { before: Some("cd".repeat(20)), ..p.clone() };
        assert!(encode(&b).starts_with(&format!(r#"{{"before":"{}","branch""#, "cd".repeat(20))), "{}", encode(&b));
        assert_eq!(decode(&encode(&b)), Some(b));
        // The stored event wins over what the branch would tell.
        for event in Event::ALL {
            let m = Push { event, ..q.clone() };
            assert_eq!(decode(&encode(&m)).map(|d| d.event), Some(event));
        }
    }

    #[test]
    fn jobs_without_an_event_read_as_their_branch_tells() {
        let job = |branch: &str, event: &str| format!(r#"{{"repo":"a/b","branch":"{branch}","sha":"ab","clone_url":"u"{event}}}"#);
        for (branch, want) in
            [("main", Event::Push), ("pull/3", Event::PullRequest), ("merge-requests/3", Event::PullRequest), ("tags/v1", Event::Tag)]
        {
            for absent in ["", r#","event":null"#, r#","event":"nightly""#, r#","event":7"#] {
                assert_eq!(decode(&job(branch, absent)).map(|p| p.event), Some(want), "{branch} {absent}");
            }
        }
        assert_eq!(decode(&job("main", r#","event":"cron""#)).map(|p| p.event), Some(Event::Cron));
    }

    #[test]
    fn the_stored_json_keeps_its_bytes() {
        // What the hand-written codec (serde_json::json!, keys sorted) stored, and `event`
        // since events are stored (in its alphabetical place).
        let old = r#"{"branch":"main","clone_url":"file:///x","default_branch":null,"forge":"gitlab","fork":false,"hints":["jdk8"],"message":"m","project_id":15,"pull":null,"repo":"a/b","sha":"abababababababababababababababababababab","statuses_url":null,"tag":null,"web_url":"https://gl.example/a/b"}"#;
        let now = old.replace(r#""default_branch":null,"#, r#""default_branch":null,"event":"push","#);
        assert_eq!(encode(&sample()), now);
        assert_eq!(decode(old), Some(sample()), "the old bytes read as the same push");
        let pull =
            Push { pull: Some(Pull { number: 7, base_branch: "m".into(), head_branch: "h".into(), head_repo: "r".into() }), ..sample() };
        assert!(encode(&pull).contains(r#""pull":{"base_branch":"m","head_branch":"h","head_repo":"r","number":7}"#));
    }

    #[test]
    fn push_json_of_earlier_versions_still_parses() {
        let old = r#"{"repo":"a/b","branch":"main","sha":"abababababababababababababababababababab","clone_url":"file:///x","default_branch":null,"message":"m","hints":[]}"#;
        let p = decode(old).expect("parses");
        assert_eq!(p.forge, ForgeFacts::default());
        assert_eq!((p.pull, p.tag, p.fork), (None, None, false));
    }

    #[test]
    fn odd_fields_read_as_empty_and_missing_essentials_refuse() {
        let odd = r#"{"repo":"a/b","branch":"main","sha":"ab","clone_url":"u","message":null,"hints":["x",1],"forge":7,"project_id":"15","pull":{"number":1},"fork":"yes","tag":3}"#;
        let p = decode(odd).expect("parses");
        assert_eq!((p.message.as_str(), p.hints, p.forge.kind.as_str()), ("", vec!["x".to_string()], ""));
        assert_eq!((p.forge.project_id, p.pull, p.fork, p.tag), (None, None, false, None));
        let odd_before = r#"{"repo":"a/b","branch":"main","sha":"ab","clone_url":"u","before":7}"#;
        assert_eq!(decode(odd_before).map(|p| p.before), Some(None));
        assert_eq!(decode(r#"{"repo":"a/b","branch":"main","sha":"ab"}"#), None);
        assert_eq!(decode(r#"{"repo":1,"branch":"main","sha":"ab","clone_url":"u"}"#), None);
        assert_eq!(decode("not json"), None);
    }
}
