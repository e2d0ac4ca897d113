//! A manual run's parameters, `POST /build`'s `{"env": {"NAME": "value"}}`:
//! the rules of their names and sizes, and the names of the CI variables the
//! slave sets for steps (the one list: the slave sets only these, and no
//! parameter may take one). No I/O.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Names and values, in name order (the order steps and pages get them).
pub type Params = BTreeMap<String, String>;

/// Parameters one request may give.
pub const MAX_PARAMS: usize = 32;
/// Bytes of one value.
pub const MAX_VALUE: usize = 4096;
/// Bytes of one name.
pub const MAX_NAME: usize = 128;

/// The CI variables a step sees, each spelled once: the slave sets these
/// names and no others (`slave::build`'s `env` checks it), and a parameter
/// never takes one.
pub mod ci {
    pub const HOST: &str = "HOST";
    pub const SLAVE: &str = "SLAVE";
    pub const BRANCH: &str = "BRANCH";
    pub const COMMIT: &str = "COMMIT";
    pub const COMMIT_SHORT: &str = "COMMIT_SHORT";
    pub const MESSAGE: &str = "MESSAGE";
    pub const TAG: &str = "TAG";
    pub const TIMESTAMP: &str = "TIMESTAMP";
    pub const LOG: &str = "LOG";
    pub const OK: &str = "OK";
    pub const CI: &str = "CI";
    pub const CI_EVENT: &str = "CI_EVENT";
    pub const REPO: &str = "REPO";
    pub const BUILD_ID: &str = "BUILD_ID";
    pub const PULL_REQUEST: &str = "PULL_REQUEST";
    pub const BASE_BRANCH: &str = "BASE_BRANCH";
    pub const HEAD_BRANCH: &str = "HEAD_BRANCH";
    pub const HEAD_REPO: &str = "HEAD_REPO";
    pub const TAG_NAME: &str = "TAG_NAME";
}

/// Every CI variable's name.
pub const CI_VARIABLES: [&str; 19] = [
    ci::HOST,
    ci::SLAVE,
    ci::BRANCH,
    ci::COMMIT,
    ci::COMMIT_SHORT,
    ci::MESSAGE,
    ci::TAG,
    ci::TIMESTAMP,
    ci::LOG,
    ci::OK,
    ci::CI,
    ci::CI_EVENT,
    ci::REPO,
    ci::BUILD_ID,
    ci::PULL_REQUEST,
    ci::BASE_BRANCH,
    ci::HEAD_BRANCH,
    ci::HEAD_REPO,
    ci::TAG_NAME,
];

/// Why a body's parameters are refused: one sentence the sender can act on.
#[derive(Debug, PartialEq, Eq)]
pub struct ParamsError(pub String);

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The form of a body, as refusals show it.
const FORM: &str = r#"{"env": {"NAME": "value"}}"#;

/// Whether `name` may be a parameter: `[A-Z_][A-Z0-9_]*`, at most
/// [`MAX_NAME`] bytes, not a CI variable's.
pub fn check_name(name: &str) -> Result<(), ParamsError> {
    let shown: String = name.chars().take(40).collect();
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_uppercase() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return Err(ParamsError(format!("parameter name {shown:?} is not [A-Z_][A-Z0-9_]*")));
    }
    if name.len() > MAX_NAME {
        return Err(ParamsError(format!("parameter name {shown:?}... is longer than {MAX_NAME} bytes")));
    }
    if CI_VARIABLES.contains(&name) {
        return Err(ParamsError(format!("parameter {name} is a CI variable's name: the slave sets it for every step")));
    }
    Ok(())
}

/// Whether `name` and `value` may be a parameter: [`check_name`], and a
/// value of at most [`MAX_VALUE`] bytes without NUL.
pub fn check(name: &str, value: &str) -> Result<(), ParamsError> {
    check_name(name)?;
    if value.len() > MAX_VALUE {
        return Err(ParamsError(format!("parameter {name} is {} bytes: at most {MAX_VALUE}", value.len())));
    }
    if value.contains('\0') {
        return Err(ParamsError(format!("parameter {name} contains a NUL byte")));
    }
    Ok(())
}

/// The parameters of an `env` value: an object of at most [`MAX_PARAMS`]
/// names ([`check_name`]), each a string of at most [`MAX_VALUE`] bytes
/// without NUL.
pub fn of_env(env: &Value) -> Result<Params, ParamsError> {
    let Some(map) = env.as_object() else {
        return Err(ParamsError(format!("\"env\" must be an object of names and string values, {FORM}")));
    };
    if map.len() > MAX_PARAMS {
        return Err(ParamsError(format!("{} parameters given: at most {MAX_PARAMS}", map.len())));
    }
    let mut params = Params::new();
    for (name, value) in map {
        let Some(value) = value.as_str() else {
            check_name(name)?;
            return Err(ParamsError(format!("parameter {name} must be a string")));
        };
        check(name, value)?;
        params.insert(name.clone(), value.to_string());
    }
    Ok(params)
}

/// The parameters of a `POST /build` body: none when it is empty; else a
/// JSON object whose `env` ([`of_env`]) is optional. Its other fields must
/// be those of a signed body (`signed`, checked by `crate::signature`), or
/// none (a bearer token's).
pub fn of_body(body: &[u8], signed: bool) -> Result<Params, ParamsError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Params::new());
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ParamsError(format!("the body is not JSON ({e}): send {FORM}")))?;
    let Some(object) = value.as_object() else {
        return Err(ParamsError(format!("the body must be a JSON object, {FORM}")));
    };
    if !signed {
        if let Some(other) = object.keys().find(|k| *k != "env") {
            return Err(ParamsError(format!("unknown field {other:?} in the body: with a bearer token it is {FORM}")));
        }
    }
    object.get("env").map_or(Ok(Params::new()), of_env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: &str) -> String {
        of_body(body.as_bytes(), false).expect_err(body).0
    }

    #[test]
    fn good_bodies() {
        assert_eq!(of_body(b"", false), Ok(Params::new()));
        assert_eq!(of_body(b" \n", true), Ok(Params::new()));
        assert_eq!(of_body(b"{}", false), Ok(Params::new()));
        let p = of_body(br#"{"env": {"TARGET": "prod", "_V2": "", "A": "x y\nz"}}"#, false).unwrap();
        let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("A", "x y\nz"), ("TARGET", "prod"), ("_V2", "")]);
        let signed = br#"{"at": 1, "action": "build", "repo": "a/b", "env": {"X": "1"}}"#;
        assert_eq!(of_body(signed, true).unwrap().get("X").map(String::as_str), Some("1"));
    }

    #[test]
    fn each_refusal_says_why() {
        assert!(refused(r#"{"env": {"target": "x"}}"#).contains("\"target\" is not [A-Z_][A-Z0-9_]*"));
        assert!(refused(r#"{"env": {"1A": "x"}}"#).contains("is not [A-Z_]"));
        assert!(refused(r#"{"env": {"A-B": "x"}}"#).contains("is not [A-Z_]"));
        assert!(refused(r#"{"env": {"": "x"}}"#).contains("\"\" is not"));
        assert!(refused(r#"{"env": {"COMMIT": "x"}}"#).contains("COMMIT is a CI variable's name"));
        assert!(refused(r#"{"env": {"A": 1}}"#).contains("A must be a string"));
        assert!(refused(r#"{"env": {"A": "a\u0000b"}}"#).contains("NUL"));
        assert!(refused(r#"{"env": ["A"]}"#).contains("\"env\" must be an object"));
        assert!(refused("not json").contains("not JSON"));
        assert!(refused("[1]").contains("must be a JSON object"));
        assert!(refused(r#"{"env": {}, "at": 1}"#).contains("unknown field \"at\""));
        let long = "A".repeat(MAX_NAME + 1);
        assert!(refused(&json!({"env": {long: "x"}}).to_string()).contains("longer than 128 bytes"));
        let ok_long = "A".repeat(MAX_NAME);
        assert!(of_body(json!({"env": {ok_long: "x"}}).to_string().as_bytes(), false).is_ok());
    }

    #[test]
    fn the_bounds_are_inclusive() {
        let names = |n: usize| (0..n).map(|i| (format!("P{i}"), json!("v"))).collect::<serde_json::Map<_, _>>();
        assert_eq!(of_env(&Value::Object(names(32))).map(|p| p.len()), Ok(32));
        assert_eq!(of_env(&Value::Object(names(33))).unwrap_err().0, "33 parameters given: at most 32");
        assert!(of_env(&json!({"V": "x".repeat(4096)})).is_ok());
        assert_eq!(of_env(&json!({"V": "x".repeat(4097)})).unwrap_err().0, "parameter V is 4097 bytes: at most 4096");
    }

    #[test]
    fn every_ci_variable_is_refused_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for name in CI_VARIABLES {
            assert!(seen.insert(name), "{name} twice");
            assert!(name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{name}");
            assert!(check_name(name).unwrap_err().0.contains("CI variable"), "{name}");
        }
    }
}
