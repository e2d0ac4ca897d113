//! Log set-up and the `event key=value` line format operators read.

use std::fmt::Write as _;
use std::io::Write as _;

/// Starts env_logger on stdout: `<time> <LEVEL> <event> key=value ...`.
pub fn init() {
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder
        .target(env_logger::Target::Stdout)
        .format(|buf, record| {
            let ts = buf.timestamp_millis();
            writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
        })
        .init();
}

/// Formats one value for a `key=value` pair: quoted when it holds spaces,
/// quotes or nothing; control characters escaped so one event stays one line.
pub fn quote(value: &str) -> String {
    let plain = !value.is_empty() && value.chars().all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_string() };
    let user = userinfo.split(':').next().unwrap_or("");
    let slash = if rest.contains('/') { "/" } else { "" };
    format!("{scheme}://{user}:***@{host}{slash}{path}")
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote("acme/app"), "acme/app");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("x\ny"), "\"x\\ny\"");
    }
}
