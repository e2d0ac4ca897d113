//! Containers started before their step is known, so a container step
//! costs what its snippet costs and not what starting a container costs.
//!
//! After a build whose first container step ran (not a fork's), the slave
//! starts one container for that branch's next build: the same image, user
//! and checkout mount, on a network of its own, running only [`SHIM`], which
//! waits for its input. The next build of the branch, once it has read its
//! commit, takes the container if its first container step still wants the
//! same image (by id) and user, and the checkout is the same directory;
//! otherwise the container is removed and the step starts one as usual. A
//! build that finds none being made starts one while git fetches, and the
//! step waits for it. At most SLAVE_WARM_CONTAINERS wait at once (the least
//! recently made goes first); one that waited [`MAX_IDLE`] is removed.
//!
//! The input is a shell text this module writes: the working directory,
//! the environment (`export`, single-quoted), then the snippet run under
//! [`super::container`]'s wrapper, then a line carrying a nonce and the
//! snippet's exit code, so the result is known as soon as the snippet ends,
//! without waiting for the engine to stop the container. What is left of it
//! is killed and removed after (see [`super::retire`]: the branch's next
//! build waits for that). A snippet can print a forged end line only by
//! reading the nonce from its parent's memory; all it gains is ending its own
//! output early or choosing its own exit code, which it can anyway.
//!
//! Nothing of another build reaches a warm container: it is made fresh for
//! one build, has run nothing but the shim, and is used once.

use super::naming::{labels, random_suffix, WORKSPACE};
use super::retire::Retirer;
use crate::slave::engine::{ContainerSpec, Engine, EngineError};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What a warm container runs: it reads its whole input (POSIX `read`, no
/// other program of the image needed) and runs it.
pub const SHIM: &str = "s=; while IFS= read -r l; do s=\"$s$l\n\"; done; eval \"$s\"";

/// How long a made container waits for its build.
pub const MAX_IDLE: Duration = Duration::from_secs(600);
/// How long a step waits for a container being made for it.
const MAKING_WAIT: Duration = Duration::from_secs(10);
/// Branches whose last container step is remembered.
const RECIPES: usize = 4096;

/// What a container is made for: a branch's first container step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipe {
    /// The image id.
    pub image: String,
    /// `uid:gid`.
    pub user: String,
    /// The checkout on the host, mounted at [`WORKSPACE`].
    pub checkout: PathBuf,
}

/// A started container waiting for its input, on its own network.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub id: String,
    pub network: String,
}

struct Made {
    waiting: Waiting,
    recipe: Recipe,
    /// The checkout directory's (device, inode) when it was mounted.
    dir: (u64, u64),
    at: Instant,
}

#[derive(Default)]
struct State {
    made: HashMap<PathBuf, Made>,
    making: HashSet<PathBuf>,
    recipes: HashMap<PathBuf, (Recipe, Instant)>,
    wanted: Vec<PathBuf>,
    /// The slave stops: nothing more is made, what is made goes.
    closed: bool,
}

/// The waiting containers of one slave.
pub(crate) struct Warm {
    engine: Engine,
    retire: Retirer,
    /// SLAVE_WARM_CONTAINERS.
    max: usize,
    slave_label: String,
    memory_bytes: u64,
    nano_cpus: u64,
    state: Mutex<State>,
    changed: Condvar,
}

impl Warm {
    pub fn new(engine: Engine, retire: Retirer, settings: &crate::config::ContainerSettings, slave_label: String) -> Warm {
        Warm {
            engine,
            retire,
            max: settings.warm,
            slave_label,
            memory_bytes: settings.memory_bytes,
            nano_cpus: settings.nano_cpus,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The container made for `recipe`'s checkout, if it was made for
    /// exactly this and still waits; waits for one being made.
    pub fn take(&self, recipe: &Recipe) -> Option<Waiting> {
        if self.max == 0 {
            return None;
        }
        let deadline = Instant::now() + MAKING_WAIT;
        let mut state = self.lock();
        while state.making.contains(&recipe.checkout) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let made = state.made.remove(&recipe.checkout)?;
        drop(state);
        let fits = made.recipe == *recipe && dir_id(&recipe.checkout) == Some(made.dir) && made.at.elapsed() < MAX_IDLE;
        if fits && self.engine.running(&made.waiting.id).unwrap_or(false) {
            return Some(made.waiting);
        }
        log::info!("container.warm_unfit id={} checkout={}", made.waiting.id, recipe.checkout.display());
        self.discard(made);
        None
    }

    /// Asks for a container for `recipe`'s next build, made when
    /// [`Warm::make_wanted`] is called (after this build's result is stored).
    pub fn want(&self, recipe: Recipe) {
        if self.max == 0 {
            return;
        }
        let mut state = self.lock();
        let key = recipe.checkout.clone();
        if state.recipes.len() >= RECIPES && !state.recipes.contains_key(&key) {
            if let Some(oldest) = state.recipes.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone()) {
                state.recipes.remove(&oldest);
            }
        }
        state.recipes.insert(key.clone(), (recipe, Instant::now()));
        if !state.wanted.contains(&key) {
            state.wanted.push(key);
        }
    }

    /// Starts making what [`Warm::want`] asked for.
    pub fn make_wanted(self: &Arc<Self>) {
        let wanted = std::mem::take(&mut self.lock().wanted);
        for key in wanted {
            self.make(&key);
        }
    }

    /// A build of `checkout` starts: if none waits for it but its branch's
    /// last container step is known, one is made now, beside the fetch.
    pub fn prepare(self: &Arc<Self>, checkout: &Path) {
        if self.max > 0 {
            self.make(checkout);
        }
    }

    /// Makes a container for `checkout`'s remembered recipe, on a thread of
    /// its own, unless one is made or being made.
    fn make(self: &Arc<Self>, checkout: &Path) {
        let mut state = self.lock();
        let Some((recipe, _)) = state.recipes.get(checkout).cloned() else { return };
        if state.closed || state.made.contains_key(checkout) || state.making.contains(checkout) {
            return;
        }
        let stale: Vec<PathBuf> = state.made.iter().filter(|(_, m)| m.at.elapsed() >= MAX_IDLE).map(|(k, _)| k.clone()).collect();
        let mut gone: Vec<Made> = stale.iter().filter_map(|k| state.made.remove(k)).collect();
        while state.made.len() + state.making.len() >= self.max {
            let Some(oldest) = state.made.iter().min_by_key(|(_, m)| m.at).map(|(k, _)| k.clone()) else { break };
            gone.extend(state.made.remove(&oldest));
        }
        let room = state.made.len() + state.making.len() < self.max;
        if room {
            state.making.insert(checkout.to_path_buf());
        }
        drop(state);
        for made in gone {
            self.discard(made);
        }
        if !room {
            return;
        }
        let warm = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("warm".into()).spawn(move || {
            let made = warm.start(&recipe);
            let mut state = warm.lock();
            state.making.remove(&recipe.checkout);
            match made {
                Ok(made) if state.closed => warm.discard(made),
                Ok(made) => {
                    state.made.insert(recipe.checkout.clone(), made);
                }
                Err(e) => log::warn!(
                    "container.warm_failed checkout={} error={}",
                    recipe.checkout.display(),
                    crate::logging::quote(&e.to_string())
                ),
            }
            warm.changed.notify_all();
        });
        if spawned.is_err() {
            self.lock().making.remove(checkout);
            self.changed.notify_all();
        }
    }

    /// Creates the network and the container, and starts it.
    fn start(&self, recipe: &Recipe) -> Result<Made, EngineError> {
        let dir = dir_id(&recipe.checkout).ok_or_else(|| EngineError::Protocol("the checkout is gone".into()))?;
        let suffix = random_suffix();
        let labels = labels(&self.slave_label, "warm");
        let network = format!("ci-warm-{suffix}");
        self.engine.create_network(&network, &labels)?;
        let spec = ContainerSpec {
            image: recipe.image.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), SHIM.into()],
            env: Vec::new(),
            working_dir: WORKSPACE.into(),
            binds: vec![format!("{}:{WORKSPACE}:rw", recipe.checkout.display())],
            network: Some(network.clone()),
            aliases: Vec::new(),
            labels,
            user: Some(recipe.user.clone()),
            memory_bytes: self.memory_bytes,
            nano_cpus: self.nano_cpus,
            stdin: true,
        };
        let id = match self.engine.create(&format!("ci-warm-{suffix}"), &spec) {
            Ok(id) => id,
            Err(e) => {
                self.retire.network(network);
                return Err(e);
            }
        };
        if let Err(e) = self.engine.start(&id) {
            self.retire.container(id, &recipe.checkout);
            self.retire.network(network);
            return Err(e);
        }
        Ok(Made { waiting: Waiting { id, network }, recipe: recipe.clone(), dir, at: Instant::now() })
    }

    fn discard(&self, made: Made) {
        self.retire.container(made.waiting.id, &made.recipe.checkout);
        self.retire.network(made.waiting.network);
    }

    /// Removes every waiting container, and those being made once they are
    /// (the slave stops; nothing is made after).
    pub fn drain(&self) {
        let deadline = Instant::now() + MAKING_WAIT;
        let mut state = self.lock();
        state.closed = true;
        while !state.making.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let made: Vec<Made> = state.made.drain().map(|(_, m)| m).collect();
        drop(state);
        for m in made {
            self.discard(m);
        }
    }
}

/// The (device, inode) of a directory: a checkout made anew is another
/// directory, and a container mounts the one it was started with.
fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// The input of a warm container: `script` run in `dir` (inside the
/// container) with `env`, under `wrapper`, then `\n<nonce> <exit code>\n`.
/// `None` when a name cannot be exported by a POSIX shell or a text holds a
/// NUL: such a snippet runs in a container made for it.
pub(crate) fn input(nonce: &str, wrapper: &str, script: &str, dir: &str, env: &[(String, String)]) -> Option<Vec<u8>> {
    let texts = [nonce, wrapper, script, dir].into_iter().chain(env.iter().map(|(_, v)| v.as_str()));
    if texts.clone().any(|t| t.contains('\0')) || !env.iter().all(|(k, _)| exportable(k)) {
        return None;
    }
    let mut s = String::with_capacity(texts.map(str::len).sum::<usize>() + 64 * env.len() + 256);
    s.push_str(&format!("__ci_n={}\n__ci_w={}\n__ci_c={}\n", quote(nonce), quote(wrapper), quote(script)));
    s.push_str(&format!("cd -- {} || exit 125\n", quote(dir)));
    for (k, v) in env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str("/bin/sh -c \"$__ci_w\" ci-step \"$__ci_c\" </dev/null\nprintf '\\n%s %d\\n' \"$__ci_n\" \"$?\"\n");
    Some(s.into_bytes())
}

/// A name `export` takes, and not one of the input's own.
fn exportable(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__ci_")
}

/// `text` single-quoted for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A fresh nonce for one input's end line.
pub(crate) fn nonce() -> String {
    let mut bytes = [0u8; 16];
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the end line `\n<nonce> <code>\n` in a stream of output: what
/// comes before it is the snippet's output.
pub(crate) struct EndLine {
    marker: Vec<u8>,
    held: Vec<u8>,
}

/// Digits (and a sign) an exit code's text may take.
const CODE_TEXT: usize = 12;

impl EndLine {
    pub fn new(nonce: &str) -> EndLine {
        EndLine { marker: format!("\n{nonce} ").into_bytes(), held: Vec::new() }
    }

    /// Takes the next bytes read; hands what is output to `out`. The exit
    /// code once the end line is complete (nothing after it is output).
    pub fn feed(&mut self, bytes: &[u8], out: &mut impl FnMut(&[u8])) -> Option<i32> {
        self.held.extend_from_slice(bytes);
        loop {
            let Some(at) = find(&self.held, &self.marker) else {
                // Keep what could be the start of the marker.
                let keep = (self.marker.len() - 1).min(self.held.len());
                let cut = self.held.len() - keep;
                out(&self.held[..cut]);
                self.held.drain(..cut);
                return None;
            };
            let rest = &self.held[at + self.marker.len()..];
            match rest.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    if let Some(code) = std::str::from_utf8(&rest[..nl]).ok().and_then(|t| t.parse::<i32>().ok()) {
                        out(&self.held[..at]);
                        self.held.clear();
                        return Some(code);
                    }
                }
                None if rest.len() <= CODE_TEXT => {
                    out(&self.held[..at]);
                    self.held.drain(..at);
                    return None;
                }
                None => {}
            }
            // Not an end line after all: the marker's newline is output.
            out(&self.held[..=at]);
            self.held.drain(..=at);
        }
    }

    /// The stream ended without an end line: what was held is output.
    pub fn finish(&mut self, out: &mut impl FnMut(&[u8])) {
        out(&self.held);
        self.held.clear();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_through(nonce: &str, chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut end = EndLine::new(nonce);
        let mut out = Vec::new();
        for chunk in chunks {
            if let Some(code) = end.feed(chunk, &mut |b| out.extend_from_slice(b)) {
                return (out, Some(code));
            }
        }
        end.finish(&mut |b| out.extend_from_slice(b));
        (out, None)
    }

    #[test]
    fn the_end_line_is_found_across_any_split_and_never_shown() {
        let text = b"one\ntwo\n\nabc 3\nthree\n\nabc 17\nafter";
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let (out, code) = run_through("abc", &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(code, Some(3), "cuts {cut} {cut2}");
                assert_eq!(out, b"one\ntwo\n", "cuts {cut} {cut2}");
            }
        }
    }

    #[test]
    fn a_marker_without_a_number_is_output_and_a_missing_end_keeps_everything() {
        let (out, code) = run_through("abc", &[b"x\nabc y\nz\nabc 0\n"]);
        assert_eq!((out.as_slice(), code), (&b"x\nabc y\nz"[..], Some(0)));
        let (out, code) = run_through("abc", &[b"x\nab", b"c 1"]);
        assert_eq!((out.as_slice(), code), (&b"x\nabc 1"[..], None));
    }

    #[test]
    fn input_quotes_every_text_and_refuses_what_sh_cannot_export() {
        let env = vec![("A".to_string(), "it's $HOME `x`\nline".to_string())];
        let text = String::from_utf8(input("n1", "w", "echo 'a'", "/ci/checkout/d d", &env).unwrap()).unwrap();
        assert!(text.contains("export A='it'\\''s $HOME `x`\nline'\n"), "{text}");
        assert!(text.contains("__ci_c='echo '\\''a'\\'''\n"), "{text}");
        assert!(text.contains("cd -- '/ci/checkout/d d' || exit 125\n"), "{text}");
        for bad in ["1A", "A-B", "", "__ci_c", "A B"] {
            assert!(input("n", "w", "s", "/", &[(bad.to_string(), "v".to_string())]).is_none(), "{bad:?}");
        }
        assert!(input("n", "w", "a\0b", "/", &[]).is_none());
    }
}
