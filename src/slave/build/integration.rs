//! `integration.yml` → steps. Parses and checks; runs nothing.
//!
//! The YAML event stream is consumed here rather than through a document
//! loader so that aliases and nesting are bounded (an alias bomb is refused,
//! not expanded) and every error names its line, step and key.

use super::inputs::{Input, MAX_INPUTS};
use super::when::{When, MAX_GLOBS};
use crate::glob::Glob;
use crate::payload::Event as BuildEvent;
use std::fmt;
use std::time::Duration;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Largest `integration.yml` read, in bytes.
pub const MAX_FILE: usize = 1 << 20;
const MAX_NODES: usize = 10_000;
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub title: String,
    pub shell: Vec<String>,
    /// Relative to the checkout; checked lexically to stay inside it.
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub debug: bool,
    /// Names of variables whose values are masked in the recorded output.
    pub secrets: Vec<String>,
    /// `image:`: run the snippets in a container of this image reference.
    pub image: Option<String>,
    /// `services:`: containers started beside a container step, reachable by name.
    pub services: Vec<Service>,
    /// `timeout:`: how long the step's snippets may run together (at most
    /// the build's own limit); `None`: until the build's limit.
    pub timeout: Option<Duration>,
    /// `when:`: the branch, event and changed files it runs for; `None`: always.
    pub when: Option<When>,
    /// `inputs:`: the paths and globs its pass depends on; `None`: never
    /// reused; `Some([])` (`inputs: []`): never reused either.
    pub inputs: Option<Vec<Input>>,
}

/// A service container of a step: `{name, image, env, command}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The host name the step reaches it by.
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Its command; empty: the image's own.
    pub command: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct IntegrationError(pub String);

impl fmt::Display for IntegrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
enum Node {
    Scalar { value: String, plain: bool, line: usize },
    Seq { items: Vec<Node>, line: usize },
    Map { entries: Vec<(String, Node)>, line: usize },
}

impl Node {
    fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    fn size(&self) -> usize {
        match self {
            Node::Scalar { .. } => 1,
            Node::Seq { items, .. } => 1 + items.iter().map(Node::size).sum::<usize>(),
            Node::Map { entries, .. } => 1 + entries.iter().map(|(_, v)| 1 + v.size()).sum::<usize>(),
        }
    }
}

enum Frame {
    Seq(Vec<Node>, usize, usize),
    /// entries, pending key, line, anchor
    Map(Vec<(String, Node)>, Option<String>, usize, usize),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, Node>,
    root: Option<Node>,
    nodes: usize,
    error: Option<String>,
}

impl Builder {
    fn fail(&mut self, msg: String) {
        if self.error.is_none() {
            self.error = Some(msg);
        }
    }

    fn push_node(&mut self, node: Node, anchor: usize) {
        self.nodes += node.size();
        if self.nodes > MAX_NODES {
            return self.fail(format!("line {}: document too large (over {MAX_NODES} nodes, aliases counted expanded)", node.line()));
        }
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(items, ..)) => items.push(node),
            Some(Frame::Map(entries, key, ..)) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => match node {
                    Node::Scalar { value, .. } => *key = Some(value),
                    other => {
                        let line = other.line();
                        self.fail(format!("line {line}: mapping keys must be plain strings"))
                    }
                },
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::Scalar(value, style, anchor, _) => {
                let plain = style == TScalarStyle::Plain;
                self.push_node(Node::Scalar { value, plain, line }, anchor)
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) if self.stack.len() >= MAX_DEPTH => {
                let _ = anchor;
                self.fail(format!("line {line}: nested deeper than {MAX_DEPTH} levels"))
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), line, anchor)),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(Vec::new(), None, line, anchor)),
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, line, anchor)) = self.stack.pop() {
                    self.nodes -= items.iter().map(Node::size).sum::<usize>();
                    self.push_node(Node::Seq { items, line }, anchor)
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, line, anchor)) = self.stack.pop() {
                    self.nodes -= entries.iter().map(|(_, v)| v.size()).sum::<usize>();
                    self.push_node(Node::Map { entries, line }, anchor)
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(node) => self.push_node(node, 0),
                None => self.fail(format!("line {line}: unknown alias")),
            },
            _ => {}
        }
    }
}

/// Parses `integration.yml`'s text into steps; a step's `timeout:` may be
/// at most `max_timeout` (SLAVE_BUILD_TIMEOUT).
pub fn parse(text: &str, max_timeout: Duration) -> Result<Vec<Step>, IntegrationError> {
    let err = |m: String| IntegrationError(format!("integration.yml {m}"));
    if text.len() > MAX_FILE {
        return Err(err(format!("is larger than {MAX_FILE} bytes")));
    }
    check_compact_nesting(text).map_err(&err)?;
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut builder, false) {
        return Err(err(format!("line {}: invalid YAML: {}", e.marker().line(), e.info())));
    }
    if let Some(e) = builder.error {
        return Err(err(e));
    }
    let steps = match builder.root {
        None => return Err(err("line 1: is empty: expected a step or a list of steps".into())),
        Some(Node::Seq { items, .. }) => items,
        Some(map @ Node::Map { .. }) => vec![map],
        Some(Node::Scalar { line, .. }) => return Err(err(format!("line {line}: expected a step (a mapping) or a list of steps"))),
    };
    if steps.is_empty() {
        return Err(err("line 1: holds no steps".into()));
    }
    steps.iter().enumerate().map(|(i, node)| step(i + 1, node, max_timeout).map_err(&err)).collect()
}

/// The YAML parser recurses once per compact block indicator (`- - - x`)
/// with no limit of its own, so a line of thousands of them would overflow
/// the stack before our depth check sees an event: count them first.
fn check_compact_nesting(text: &str) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        let mut rest = line.trim_start_matches([' ', '\t']);
        let mut depth = 0;
        while let Some(after) = ["- ", "-\t", "? ", ": "].iter().find_map(|p| rest.strip_prefix(p)) {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(format!("line {}: nested deeper than {MAX_DEPTH} levels", n + 1));
            }
            rest = after.trim_start_matches([' ', '\t']);
        }
    }
    Ok(())
}

fn step(number: usize, node: &Node, max_timeout: Duration) -> Result<Step, String> {
    let Node::Map { entries, line } = node else {
        return Err(format!("line {}, step {number}: expected a mapping with \"step\" and \"shell\"", node.line()));
    };
    let title = entries.iter().find(|(k, _)| k == "step").and_then(|(_, v)| match v {
        Node::Scalar { value, .. } => Some(value.clone()),
        _ => None,
    });
    let at = |line: usize| match &title {
        Some(t) => format!("line {line}, step {number} ({t:?})"),
        None => format!("line {line}, step {number}"),
    };
    let mut s = Step {
        title: String::new(),
        shell: Vec::new(),
        cwd: None,
        env: Vec::new(),
        debug: false,
        secrets: Vec::new(),
        image: None,
        services: Vec::new(),
        timeout: None,
        when: None,
        inputs: None,
    };
    let (mut has_title, mut has_shell) = (false, false);
    for (key, value) in entries {
        let vline = value.line();
        match (key.as_str(), value) {
            ("step", Node::Scalar { value, .. }) => {
                s.title = value.clone();
                has_title = true;
            }
            ("step", _) => return Err(format!("{}: \"step\" must be a string", at(vline))),
            ("shell", Node::Scalar { value, plain, .. }) if !typed(value, *plain) => {
                s.shell = vec![value.clone()];
                has_shell = true;
            }
            ("shell", Node::Seq { items, .. }) => {
                for item in items {
                    match item {
                        Node::Scalar { value, plain, .. } if !typed(value, *plain) => s.shell.push(value.clone()),
                        _ => return Err(format!("{}: \"shell\" must be a string or a list of strings", at(item.line()))),
                    }
                }
                has_shell = true;
            }
            ("shell", _) => return Err(format!("{}: \"shell\" must be a string or a list of strings", at(vline))),
            ("cwd", Node::Scalar { value, .. }) => s.cwd = Some(check_cwd(value).map_err(|m| format!("{}: {m}", at(vline)))?),
            ("cwd", _) => return Err(format!("{}: \"cwd\" must be a string", at(vline))),
            ("env", Node::Map { entries, .. }) => s.env = env(entries, &at)?,
            ("env", _) => return Err(format!("{}: \"env\" must be a mapping of names to values", at(vline))),
            ("debug", Node::Scalar { value, plain: true, .. })
                if matches!(value.as_str(), "true" | "false" | "True" | "False" | "yes" | "no") =>
            {
                s.debug = matches!(value.as_str(), "true" | "True" | "yes");
            }
            ("debug", _) => return Err(format!("{}: \"debug\" must be true or false", at(vline))),
            ("secrets", Node::Seq { items, .. }) => {
                for item in items {
                    match item {
                        Node::Scalar { value, .. } if !value.is_empty() => s.secrets.push(value.clone()),
                        _ => return Err(format!("{}: \"secrets\" must be a list of variable names", at(item.line()))),
                    }
                }
            }
            ("secrets", _) => return Err(format!("{}: \"secrets\" must be a list of variable names", at(vline))),
            ("image", Node::Scalar { value, .. }) => s.image = Some(check_image(value).map_err(|m| format!("{}: {m}", at(vline)))?),
            ("image", _) => return Err(format!("{}: \"image\" must be an image reference (a string)", at(vline))),
            ("services", Node::Seq { items, .. }) => {
                for item in items {
                    s.services.push(service(item, &at)?);
                }
            }
            ("services", _) => return Err(format!("{}: \"services\" must be a list of {{name, image, env, command}}", at(vline))),
            ("timeout", value) => s.timeout = Some(timeout(value, max_timeout).map_err(|m| format!("{}: {m}", at(vline)))?),
            ("when", value) => s.when = Some(when(value, &at)?),
            ("inputs", value) => s.inputs = Some(inputs(value, &at)?),
            (other, _) => {
                return Err(format!(
                    "{}: unknown key {other:?} (keys: step, shell, cwd, env, debug, secrets, image, services, timeout, when, inputs)",
                    at(vline)
                ))
            }
        }
    }
    if !has_title {
        return Err(format!("{}: \"step\" (the title) is required", at(*line)));
    }
    if !has_shell {
        return Err(format!("{}: \"shell\" is required", at(*line)));
    }
    if let Some(twice) = s.services.iter().enumerate().find_map(|(i, a)| s.services[..i].iter().find(|b| b.name == a.name)) {
        return Err(format!("{}: two services are named {:?}", at(*line), twice.name));
    }
    Ok(s)
}

/// An `env` mapping: names to strings (numbers and booleans as written, null as empty).
fn env(entries: &[(String, Node)], at: &dyn Fn(usize) -> String) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (k, v) in entries {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("{}: env name {k:?} is not a variable name", at(v.line())));
        }
        match v {
            Node::Scalar { value, plain, .. } => {
                let null = *plain && matches!(value.as_str(), "~" | "null" | "");
                out.push((k.clone(), if null { String::new() } else { value.clone() }))
            }
            _ => return Err(format!("{}: env value of {k:?} must be a string, number or boolean", at(v.line()))),
        }
    }
    Ok(out)
}

/// One `services:` entry.
fn service(node: &Node, at: &dyn Fn(usize) -> String) -> Result<Service, String> {
    let shape = || format!("{}: a service is a mapping of name, image, env and command", at(node.line()));
    let Node::Map { entries, line } = node else { return Err(shape()) };
    let mut svc = Service { name: String::new(), image: String::new(), env: Vec::new(), command: Vec::new() };
    for (key, value) in entries {
        let vline = value.line();
        match (key.as_str(), value) {
            ("name", Node::Scalar { value, .. }) => {
                let ok = !value.is_empty()
                    && value.len() <= 63
                    && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !value.starts_with('-');
                if !ok {
                    return Err(format!("{}: service name {value:?} must be a host name (a-z, 0-9, -; at most 63)", at(vline)));
                }
                svc.name = value.clone();
            }
            ("image", Node::Scalar { value, .. }) => svc.image = check_image(value).map_err(|m| format!("{}: {m}", at(vline)))?,
            ("env", Node::Map { entries, .. }) => svc.env = env(entries, at)?,
            ("command", Node::Seq { items, .. }) => {
                for item in items {
                    match item {
                        Node::Scalar { value, .. } => svc.command.push(value.clone()),
                        _ => return Err(format!("{}: a service's \"command\" must be a list of strings", at(item.line()))),
                    }
                }
            }
            ("name" | "image" | "env" | "command", _) => return Err(shape()),
            (other, _) => return Err(format!("{}: unknown service key {other:?} (keys: name, image, env, command)", at(vline))),
        }
    }
    if svc.name.is_empty() || svc.image.is_empty() {
        return Err(format!("{}: a service needs a name and an image", at(*line)));
    }
    Ok(svc)
}

/// A `when:` mapping: `branch` and `path` a glob or a list of globs,
/// `event` an event name or a list of them; at least one key; no list empty
/// or longer than MAX_GLOBS.
fn when(node: &Node, at: &dyn Fn(usize) -> String) -> Result<When, String> {
    let Node::Map { entries, line } = node else {
        return Err(format!("{}: \"when\" must be a mapping of branch, event and path", at(node.line())));
    };
    if entries.is_empty() {
        return Err(format!("{}: \"when\" is empty: give branch, event or path", at(*line)));
    }
    let mut w = When::default();
    for (i, (key, value)) in entries.iter().enumerate() {
        let vline = value.line();
        if entries[..i].iter().any(|(k, _)| k == key) {
            return Err(format!("{}: \"when: {key}\" is given twice", at(vline)));
        }
        let what = match key.as_str() {
            "branch" | "path" => "a glob or a list of globs",
            "event" => "an event (push, pull_request, tag, cron, manual) or a list of them",
            other => return Err(format!("{}: unknown \"when\" key {other:?} (keys: branch, event, path)", at(vline))),
        };
        let shape = |l: usize| format!("{}: \"when: {key}\" must be {what}", at(l));
        let items: Vec<(&str, usize)> = match value {
            Node::Scalar { value, plain, line } => vec![(scalar_text(value, *plain).ok_or_else(|| shape(*line))?, *line)],
            Node::Seq { items, .. } if items.is_empty() => return Err(format!("{}: \"when: {key}\" is an empty list", at(vline))),
            Node::Seq { items, .. } if items.len() > MAX_GLOBS => {
                return Err(format!("{}: \"when: {key}\" lists more than {MAX_GLOBS} items", at(vline)))
            }
            Node::Seq { items, .. } => items
                .iter()
                .map(|item| match item {
                    Node::Scalar { value, plain, line } => scalar_text(value, *plain).map(|t| (t, *line)).ok_or_else(|| shape(*line)),
                    other => Err(shape(other.line())),
                })
                .collect::<Result<_, _>>()?,
            Node::Map { line, .. } => return Err(shape(*line)),
        };
        for (text, l) in items {
            match key.as_str() {
                "event" => w.event.push(BuildEvent::parse(text).ok_or_else(|| {
                    format!("{}: \"when: event\" {text:?} is not an event (push, pull_request, tag, cron, manual)", at(l))
                })?),
                _ => {
                    let glob = Glob::new(text).map_err(|e| format!("{}: \"when: {key}\": {e}", at(l)))?;
                    if key == "branch" { &mut w.branch } else { &mut w.path }.push(glob)
                }
            }
        }
    }
    Ok(w)
}

/// An `inputs:` list: at most MAX_INPUTS paths or globs; `[]` allowed.
fn inputs(node: &Node, at: &dyn Fn(usize) -> String) -> Result<Vec<Input>, String> {
    let shape = |l: usize| format!("{}: \"inputs\" must be a list of paths or globs", at(l));
    let Node::Seq { items, line } = node else { return Err(shape(node.line())) };
    if items.len() > MAX_INPUTS {
        return Err(format!("{}: \"inputs\" lists more than {MAX_INPUTS} items", at(*line)));
    }
    items
        .iter()
        .map(|item| match item {
            Node::Scalar { value, plain, line } => {
                let text = scalar_text(value, *plain).ok_or_else(|| shape(*line))?;
                Input::parse(text).map_err(|e| format!("{}: \"inputs\": {e}", at(*line)))
            }
            other => Err(shape(other.line())),
        })
        .collect()
}

/// A scalar read as text: a string or number as written; `None` for what
/// YAML reads as null or a boolean.
fn scalar_text(value: &str, plain: bool) -> Option<&str> {
    let not_text = plain && matches!(value, "" | "~" | "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE");
    (!not_text).then_some(value)
}

/// A `timeout:`: a whole number of seconds, from 1 to `max` (SLAVE_BUILD_TIMEOUT).
fn timeout(node: &Node, max: Duration) -> Result<Duration, String> {
    let max = max.as_secs();
    let why = || format!("\"timeout\" must be a whole number of seconds from 1 to {max} (SLAVE_BUILD_TIMEOUT)");
    let Node::Scalar { value, plain: true, .. } = node else { return Err(why()) };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(why());
    }
    match value.parse::<u64>() {
        Ok(secs) if (1..=max).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(why()),
    }
}

/// A plain scalar YAML reads as a number, boolean or null (not a string).
fn typed(value: &str, plain: bool) -> bool {
    plain
        && (matches!(value, "" | "~" | "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE")
            || value.parse::<f64>().is_ok())
}

/// An image reference as Docker reads it (`[host[:port]/]name[:tag][@digest]`):
/// lower-case names, `A-Za-z0-9._-` tags, at most 255 bytes, never an option.
pub(crate) fn check_image(image: &str) -> Result<String, String> {
    let ok_byte = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:@".contains(&b) || b.is_ascii_uppercase();
    if image.is_empty() || image.len() > 255 || image.starts_with(['-', '/', ':', '@']) || !image.bytes().all(ok_byte) {
        return Err(format!("image {image:?} is not an image reference ([host[:port]/]name[:tag][@sha256:...])"));
    }
    Ok(image.to_string())
}

/// A `cwd` must stay inside the checkout: relative, and no `..` that climbs
/// above its root. Symlinks are checked again at run time.
fn check_cwd(cwd: &str) -> Result<String, String> {
    if cwd.starts_with('/') || cwd.contains('\0') {
        return Err(format!("cwd {cwd:?} leaves the checkout"));
    }
    let mut depth = 0i32;
    for part in cwd.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("cwd {cwd:?} leaves the checkout"));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(cwd.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn single_step_and_list() {
        let one = parse("step: hello\nshell: echo hi\n", HOUR).unwrap();
        assert_eq!(one[0].title, "hello");
        assert_eq!(one[0].shell, vec!["echo hi"]);
        let two =
            parse("- step: a\n  shell: [x, y]\n  cwd: sub\n  env: {N: 1, B: true}\n  debug: true\n- step: b\n  shell: z\n", HOUR).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].shell, vec!["x", "y"]);
        assert_eq!(two[0].env, vec![("N".into(), "1".into()), ("B".into(), "true".into())]);
        assert!(two[0].debug);
        assert_eq!(two[0].cwd.as_deref(), Some("sub"));
    }

    #[test]
    fn images_and_services() {
        let yml = "step: t\nimage: rust:1.87\nshell: cargo test\nservices:\n  - name: db\n    image: postgres:16\n    env: {POSTGRES_PASSWORD: x, PORT: 5432}\n    command: [postgres, -c, fsync=off]\n";
        let step = &parse(yml, HOUR).unwrap()[0];
        assert_eq!(step.image.as_deref(), Some("rust:1.87"));
        let want = Service {
            name: "db".into(),
            image: "postgres:16".into(),
            env: vec![("POSTGRES_PASSWORD".into(), "x".into()), ("PORT".into(), "5432".into())],
            command: vec!["postgres".into(), "-c".into(), "fsync=off".into()],
        };
        assert_eq!(step.services, vec![want]);
        let error = |yml: &str| parse(yml, HOUR).unwrap_err().0;
        assert!(error("step: t\nimage: -rm\nshell: x\n").contains("image \"-rm\" is not an image reference"));
        assert!(error("step: t\nimage: [a]\nshell: x\n").contains("\"image\" must be an image reference"));
        assert!(error("step: t\nshell: x\nservices:\n  - name: Db_1\n    image: a\n").contains("service name \"Db_1\" must be a host name"));
        assert!(error("step: t\nshell: x\nservices:\n  - name: db\n").contains("a service needs a name and an image"));
        assert!(error("step: t\nshell: x\nservices:\n  - {name: db, image: a, ports: [1]}\n").contains("unknown service key \"ports\""));
        assert!(error("step: t\nshell: x\nservices:\n  - {name: db, image: a}\n  - {name: db, image: b}\n")
            .contains("two services are named \"db\""));
    }

    #[test]
    fn errors_name_line_step_and_key() {
        let e = parse("- step: a\n  shell: x\n- step: build\n  shell: {a: 1}\n", HOUR).unwrap_err();
        assert_eq!(e.0, "integration.yml line 4, step 2 (\"build\"): \"shell\" must be a string or a list of strings");
        let e = parse("step: a\nshell: [x\n", HOUR).unwrap_err();
        assert!(e.0.starts_with("integration.yml line "), "{}", e.0);
        assert!(e.0.contains("invalid YAML"), "{}", e.0);
        let e = parse("step: a\nshell: x\ncwd: ../..\n", HOUR).unwrap_err();
        assert!(e.0.contains("cwd \"../..\" leaves the checkout"), "{}", e.0);
        assert!(parse("step: a\n", HOUR).unwrap_err().0.contains("\"shell\" is required"));
        assert!(parse("step: a\nshell: 42\n", HOUR).unwrap_err().0.contains("\"shell\" must be a string or a list of strings"));
        assert!(parse("step: a\nshell: [true]\n", HOUR).unwrap_err().0.contains("\"shell\" must be a string"));
        assert_eq!(parse("step: a\nshell: \"42\"\n", HOUR).unwrap()[0].shell, vec!["42"]);
        assert!(parse("step: a\nshel: x\n", HOUR).unwrap_err().0.contains("unknown key \"shel\""));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse(&bomb, HOUR).unwrap_err().0.contains("document too large"));
        let deep = format!("{}x{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep, HOUR).unwrap_err().0.contains("nested deeper"));
        let compact = format!("{}x\n", "- ".repeat(100_000));
        assert_eq!(parse(&compact, HOUR).unwrap_err().0, "integration.yml line 1: nested deeper than 32 levels");
    }

    #[test]
    fn secrets_are_names() {
        let s = parse("step: a\nshell: x\nsecrets: [TOKEN, KEY]\n", HOUR).unwrap();
        assert_eq!(s[0].secrets, vec!["TOKEN", "KEY"]);
        assert!(parse("step: a\nshell: x\nsecrets: TOKEN\n", HOUR).unwrap_err().0.contains("\"secrets\" must be a list"));
    }

    #[test]
    fn a_timeout_is_whole_seconds_up_to_the_build_timeout() {
        assert_eq!(parse("step: a\nshell: x\ntimeout: 90\n", HOUR).unwrap()[0].timeout, Some(Duration::from_secs(90)));
        assert_eq!(parse("step: a\nshell: x\n", HOUR).unwrap()[0].timeout, None);
        assert_eq!(parse("step: a\nshell: x\ntimeout: 3600\n", HOUR).unwrap()[0].timeout, Some(HOUR));
        for bad in ["0", "3601", "-5", "1.5", "10s", "\"30\"", "[30]", "99999999999999999999999", "~", "0x10"] {
            let e = parse(&format!("- step: a\n  shell: x\n- step: slow\n  shell: y\n  timeout: {bad}\n"), HOUR).unwrap_err();
            assert_eq!(
                e.0,
                "integration.yml line 5, step 2 (\"slow\"): \"timeout\" must be a whole number of seconds from 1 to 3600 (SLAVE_BUILD_TIMEOUT)",
                "{bad}"
            );
        }
    }

    #[test]
    fn when_reads_globs_and_events() {
        let s = parse("step: a\nshell: x\nwhen:\n  branch: [main, release/*]\n  event: push\n  path: src/**\n", HOUR).unwrap();
        let w = s[0].when.as_ref().unwrap();
        let shown: Vec<String> = w.branch.iter().map(|g| g.to_string()).collect();
        assert_eq!(shown, ["main", "release/*"]);
        assert_eq!(w.event, [BuildEvent::Push]);
        assert_eq!(w.path.len(), 1);
        assert_eq!(parse("step: a\nshell: x\n", HOUR).unwrap()[0].when, None);
        let w = &parse("step: a\nshell: x\nwhen: {event: [cron, manual], branch: 2024}\n", HOUR).unwrap()[0].when;
        assert_eq!(
            w.as_ref().map(|w| (w.event.clone(), w.branch[0].to_string())),
            Some((vec![BuildEvent::Cron, BuildEvent::Manual], "2024".into()))
        );
    }

    #[test]
    fn inputs_are_paths_or_globs_and_may_be_empty() {
        let s = parse("step: a\nshell: x\ninputs: [src/, \"**/*.c\", Cargo.lock]\n", HOUR).unwrap();
        let i = s[0].inputs.as_ref().unwrap();
        assert_eq!(i.len(), 3);
        assert_eq!(i[0], Input::Path("src".into()));
        assert!(matches!(&i[1], Input::Glob(g) if g.to_string() == "**/*.c"));
        assert_eq!(parse("step: a\nshell: x\ninputs: []\n", HOUR).unwrap()[0].inputs, Some(vec![]));
        assert_eq!(parse("step: a\nshell: x\n", HOUR).unwrap()[0].inputs, None);
        let error = |inputs: &str| parse(&format!("step: a\nshell: x\ninputs: {inputs}\n"), HOUR).unwrap_err().0;
        let at = "integration.yml line 3, step 1 (\"a\")";
        assert_eq!(error("src"), format!("{at}: \"inputs\" must be a list of paths or globs"));
        assert!(error("[../up]").contains("must be a relative path without . or .."), "{}", error("[../up]"));
        assert!(error("[/etc]").contains("must be a relative path"));
        assert!(error("[[a]]").contains("must be a list of paths or globs"));
        let many = format!("[{}]", (0..=MAX_INPUTS).map(|i| format!("f{i}")).collect::<Vec<_>>().join(", "));
        assert_eq!(error(&many), format!("{at}: \"inputs\" lists more than {MAX_INPUTS} items"));
    }

    #[test]
    fn a_bad_when_names_the_step_and_key() {
        let error =
            |when: &str| parse(&format!("- step: a\n  shell: x\n- step: deploy\n  shell: y\n  when: {when}\n"), HOUR).unwrap_err().0;
        let at = "integration.yml line 5, step 2 (\"deploy\")";
        assert_eq!(error("main"), format!("{at}: \"when\" must be a mapping of branch, event and path"));
        assert_eq!(error("{}"), format!("{at}: \"when\" is empty: give branch, event or path"));
        assert_eq!(error("{branches: main}"), format!("{at}: unknown \"when\" key \"branches\" (keys: branch, event, path)"));
        assert_eq!(error("{branch: {a: b}}"), format!("{at}: \"when: branch\" must be a glob or a list of globs"));
        assert_eq!(error("{path: [a, [b]]}"), format!("{at}: \"when: path\" must be a glob or a list of globs"));
        assert_eq!(error("{path: ~}"), format!("{at}: \"when: path\" must be a glob or a list of globs"));
        assert_eq!(error("{branch: []}"), format!("{at}: \"when: branch\" is an empty list"));
        assert_eq!(
            error("{event: [push, nightly]}"),
            format!("{at}: \"when: event\" \"nightly\" is not an event (push, pull_request, tag, cron, manual)")
        );
        assert_eq!(
            error("{event: true}"),
            format!("{at}: \"when: event\" must be an event (push, pull_request, tag, cron, manual) or a list of them")
        );
        assert_eq!(error("{path: \"a[b\"}"), format!("{at}: \"when: path\": glob \"a[b\" has an unclosed ["));
        let long = "x".repeat(257);
        assert_eq!(error(&format!("{{path: {long}}}")), format!("{at}: \"when: path\": glob \"{long}\" is longer than 256 bytes"));
        let many = vec!["a"; 33].join(", ");
        assert_eq!(error(&format!("{{path: [{many}]}}")), format!("{at}: \"when: path\" lists more than 32 items"));
        assert_eq!(error("{event: push, event: tag}"), format!("{at}: \"when: event\" is given twice"));
        // An unquoted glob starting with `*` is a YAML alias: refused with its line, as documented.
        assert_eq!(
            parse("step: a\nshell: x\nwhen: {path: *.md}\n", HOUR).unwrap_err().0,
            "integration.yml line 3: invalid YAML: while parsing node, found unknown anchor"
        );
    }

    #[test]
    fn inside_cwd_is_allowed() {
        assert!(check_cwd("a/../b").is_ok());
        assert!(check_cwd("a/../../b").is_err());
        assert!(check_cwd("/etc").is_err());
    }
}
