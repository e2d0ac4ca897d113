//! The Lua scripts, one verb per file in `scripts/`, shared functions in
//! `scripts/lib/`. Each script is `lib/keys.lua`, the libraries it uses and
//! its verb, in that order; it gets the key names as its first argument
//! ([`keys::script_prefixes`]) and touches no key it was not given.

use crate::store::keys;
use redis::{Script, ScriptInvocation};
use std::sync::OnceLock;

/// One verb: its source, made into a [`Script`] (its SHA) at first use.
pub(crate) struct Verb {
    source: &'static str,
    script: OnceLock<Script>,
}

impl Verb {
    const fn new(source: &'static str) -> Verb {
        Verb { source, script: OnceLock::new() }
    }

    /// An invocation with the key names already given as `ARGV[1]`; the
    /// verb's own arguments follow.
    pub(crate) fn prepare(&'static self) -> ScriptInvocation<'static> {
        let mut call = self.script.get_or_init(|| Script::new(self.source)).prepare_invoke();
        call.arg(keys::script_prefixes());
        call
    }
}

/// `lua!("lib", ...; "verb")`: keys.lua, then the libraries, then the verb.
macro_rules! lua {
    ($($lib:literal),* ; $verb:literal) => {
        Verb::new(concat!(
            include_str!("scripts/lib/keys.lua"),
            $(include_str!(concat!("scripts/lib/", $lib, ".lua")),)*
            include_str!(concat!("scripts/", $verb, ".lua"))
        ))
    };
}

pub(crate) static ENQUEUE: Verb = lua!("clock", "live", "record"; "enqueue");
pub(crate) static START: Verb = lua!("record"; "start");
pub(crate) static FINISH: Verb = lua!("record"; "finish");
pub(crate) static ABANDON: Verb = lua!(; "abandon");
pub(crate) static MOVE_ONE: Verb = lua!(; "move_one");
pub(crate) static STEAL: Verb = lua!("record"; "steal");
pub(crate) static REQUEUE_IDS: Verb = lua!(; "requeue_ids");
pub(crate) static CANCEL: Verb = lua!("record"; "cancel");
pub(crate) static LIVE_COUNT: Verb = lua!("clock", "live"; "live_count");
pub(crate) static CLAIM: Verb = lua!("clock", "live", "membership"; "claim");
pub(crate) static RENEW: Verb = lua!("clock", "live", "membership"; "renew");
pub(crate) static COMPACT: Verb = lua!("clock", "live", "membership"; "compact");
pub(crate) static RELEASE: Verb = lua!("clock", "live", "membership"; "release");
pub(crate) static QUEUED: Verb = lua!(; "queued");
pub(crate) static LISTING: Verb = lua!(; "listing");

#[cfg(test)]
pub(crate) static ALL: [&Verb; 15] = [
    &ENQUEUE,
    &START,
    &FINISH,
    &ABANDON,
    &MOVE_ONE,
    &STEAL,
    &REQUEUE_IDS,
    &CANCEL,
    &LIVE_COUNT,
    &CLAIM,
    &RENEW,
    &COMPACT,
    &RELEASE,
    &QUEUED,
    &LISTING,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Key names live in keys.rs alone: no script spells one.
    #[test]
    fn no_script_spells_a_key_name() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/scripts");
        let mut seen = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let spelled = text.contains(keys::NAMESPACE);
                assert!(!spelled, "{} spells a key name ({}...): take it from K (keys.rs)", path.display(), keys::NAMESPACE);
                seen += 1;
            }
        }
        assert!(seen >= ALL.len(), "only {seen} script files found");
    }

    /// Every script compiles (SCRIPT LOAD) on a real Redis, when
    /// redis-server is installed.
    #[test]
    fn every_script_loads() {
        let Some(mut redis) = crate::store::test_redis::TestRedis::start() else { return };
        for verb in ALL {
            let sha: String =
                redis::cmd("SCRIPT").arg("LOAD").arg(verb.source).query(&mut redis.conn).unwrap_or_else(|e| panic!("{e}\n{}", verb.source));
            assert_eq!(sha.len(), 40);
        }
    }
}
