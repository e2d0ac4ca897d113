//! The container backend: a step with `image:` runs each snippet in a fresh
//! container of that image, on a network of the step's own, with the
//! checkout mounted read-write at [`WORKSPACE`] and nothing else of the
//! host: not privileged, no Docker socket, memory, CPU and process limits,
//! as the build user's uid. Output, time limit and stop flag as for a bare
//! snippet; the container is killed when either ends it and removed after,
//! off the build's path ([`super::retire`]). A step's first snippet may run
//! in a container started before the build ([`super::warm`]).

use super::naming::{labels, random_suffix, SLAVE_LABEL, WORKSPACE};
use super::retire::Retirer;
use super::warm::{EndLine, Waiting, Warm};
use super::{Ran, OUTPUT_TAIL};
use crate::config::{ContainerSettings, ImagePull};
use crate::slave::build::integration::Service;
use crate::slave::engine::{ContainerSpec, Engine, EngineError};
use crate::slave::proc::process::{Exit, LineSink, Lines, Tail, TailBuf};
use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the time limit and the stop flag are looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long a stopping slave waits for its containers' removal.
const CLOSE_WAIT: Duration = Duration::from_secs(20);
/// How long a pull may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs a snippet with the image's bash if it has one, else its `/bin/sh`;
/// stderr joins stdout so the lines keep their order, as on the bare slave.
/// The snippet is `$1`: never part of this text.
pub(crate) const WRAPPER: &str = "exec 2>&1; if command -v bash >/dev/null 2>&1; then exec bash -c \"$1\"; fi; exec /bin/sh -c \"$1\"";

/// What a slave's container steps share: the engine and the settings.
pub(crate) struct Containers {
    pub engine: Engine,
    pub settings: ContainerSettings,
    /// This slave's [`SLAVE_LABEL`] value.
    pub slave_label: String,
    /// Removes what steps leave, off their builds' path.
    pub retire: Retirer,
    /// Containers started for branches' next builds.
    pub warm: Arc<Warm>,
}

impl Containers {
    /// The image id for `reference`, pulled as SLAVE_IMAGE_PULL says; `Err`
    /// is the reason to log after `* image <reference>: `.
    pub fn image(&self, reference: &str) -> Result<String, String> {
        let why = |e: EngineError| e.to_string();
        if self.settings.pull == ImagePull::Always {
            self.engine.pull(reference, PULL_TIMEOUT).map_err(why)?;
        }
        if let Some(id) = self.engine.image_id(reference).map_err(why)? {
            return Ok(id);
        }
        if self.settings.pull == ImagePull::Never {
            return Err("not on this slave's engine, and SLAVE_IMAGE_PULL=never".into());
        }
        self.engine.pull(reference, PULL_TIMEOUT).map_err(why)?;
        self.engine.image_id(reference).map_err(why)?.ok_or_else(|| "pulled, but the engine does not have it".into())
    }

    /// Removes every container and network this slave left (a SIGKILLed
    /// slave leaves its running step's): how many of each.
    pub fn sweep(&self) -> Result<(usize, usize), EngineError> {
        let containers = self.engine.containers_labelled(SLAVE_LABEL, &self.slave_label)?;
        for id in &containers {
            self.engine.remove(id)?;
        }
        let networks = self.engine.networks_labelled(SLAVE_LABEL, &self.slave_label)?;
        for id in &networks {
            self.engine.remove_network(id)?;
        }
        Ok((containers.len(), networks.len()))
    }

    /// The slave stops: the waiting containers are removed, and what steps
    /// left, within a bound (the next start's sweep removes the rest).
    pub fn close(&self) {
        self.warm.drain();
        if !self.retire.settle(CLOSE_WAIT) {
            log::warn!(
                "slave.containers_left: not all removed within {} seconds; the next start's sweep removes them",
                CLOSE_WAIT.as_secs()
            );
        }
    }

    /// A network for one step's containers, labelled for the sweep.
    pub fn network(&self, name: &str, build: &str) -> Result<String, EngineError> {
        self.engine.create_network(name, &self.labels(build))
    }

    /// Starts a service of a step on its network, reachable by its name;
    /// its container id. `Err` is the reason to log.
    pub fn start_service(&self, service: &Service, network: &str, build: &str) -> Result<String, String> {
        let image = self.image(&service.image).map_err(|why| format!("image {}: {why}", service.image))?;
        let spec = ContainerSpec {
            image,
            cmd: service.command.clone(),
            env: service.env.clone(),
            network: Some(network.to_string()),
            aliases: vec![service.name.clone()],
            labels: self.labels(build),
            memory_bytes: self.settings.memory_bytes,
            nano_cpus: self.settings.nano_cpus,
            ..Default::default()
        };
        let name = format!("ci-{build}-{}-{}", service.name, random_suffix());
        let id = self.engine.create(&name, &spec).map_err(|e| e.to_string())?;
        if let Err(e) = self.engine.start(&id) {
            let _ = self.engine.remove(&id);
            return Err(e.to_string());
        }
        Ok(id)
    }

    /// The last `lines` lines a service printed (for a failed step's log).
    pub fn service_tail(&self, id: &str, lines: u32) -> Vec<String> {
        match self.engine.logs_tail(id, lines) {
            Ok(bytes) => {
                let mut tail = TailBuf::new(OUTPUT_TAIL);
                tail.feed(&bytes);
                tail.finish().lines
            }
            Err(e) => vec![format!("(its log could not be read: {e})")],
        }
    }

    fn labels(&self, build: &str) -> Vec<(String, String)> {
        labels(&self.slave_label, build)
    }
}

/// One step's container runs: its image, network and checkout.
pub(crate) struct Step<'a> {
    pub containers: &'a Containers,
    /// The image id (resolved once for the step).
    pub image: String,
    pub network: String,
    /// The checkout on the host, mounted at [`WORKSPACE`].
    pub checkout: &'a Path,
    pub build: &'a str,
    /// `uid:gid` the snippets run as.
    pub user: String,
    /// A started container on [`Step::network`] for the first snippet.
    pub warm: Cell<Option<Waiting>>,
}

impl Step<'_> {
    /// Runs `script` in `dir` (a directory of the checkout) with exactly
    /// `env`, within `timeout`, stopping when `abort` is set.
    pub fn run(
        &self,
        script: &str,
        dir: &Path,
        env: &[(String, String)],
        timeout: Duration,
        abort: &AtomicBool,
        sink: Option<LineSink>,
    ) -> Ran {
        let started = Instant::now();
        let failed =
            |why: String| Ran { exit: Exit::SpawnFailed(why), elapsed: started.elapsed(), output: Tail { lines: vec![], dropped: 0 } };
        let rel = dir.strip_prefix(self.checkout).unwrap_or(Path::new(""));
        let working_dir = Path::new(WORKSPACE).join(rel).to_string_lossy().into_owned();
        if let Some(waiting) = self.warm.take() {
            let nonce = super::warm::nonce();
            match super::warm::input(&nonce, WRAPPER, script, &working_dir, env) {
                Some(input) => {
                    let engine = &self.containers.engine;
                    let ran =
                        self.watch(&waiting.id, || engine.attach_input(&waiting.id, &input), Some(&nonce), started, timeout, abort, sink);
                    self.containers.retire.container(waiting.id, self.checkout);
                    return ran.unwrap_or_else(|e| failed(format!("container: {e}")));
                }
                None => self.containers.retire.container(waiting.id, self.checkout),
            }
        }
        let spec = ContainerSpec {
            image: self.image.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), WRAPPER.into(), "ci-step".into(), script.into()],
            env: env.to_vec(),
            working_dir,
            binds: vec![format!("{}:{WORKSPACE}:rw", self.checkout.display())],
            network: Some(self.network.clone()),
            aliases: Vec::new(),
            labels: self.containers.labels(self.build),
            user: Some(self.user.clone()),
            memory_bytes: self.containers.settings.memory_bytes,
            nano_cpus: self.containers.settings.nano_cpus,
            stdin: false,
        };
        let engine = &self.containers.engine;
        let name = format!("ci-{}-{}", self.build, random_suffix());
        let id = match engine.create(&name, &spec) {
            Ok(id) => id,
            Err(e) => return failed(format!("container: {e}")),
        };
        let begin = || {
            let output = engine.attach(&id)?;
            engine.start(&id)?;
            Ok(output)
        };
        let ran = self.watch(&id, begin, None, started, timeout, abort, sink);
        self.containers.retire.container(id, self.checkout);
        ran.unwrap_or_else(|e| failed(format!("container: {e}")))
    }

    /// Watches container `id` from `begin` (its output, once it runs) until
    /// its snippet ends (the end line of `nonce`, or the output's end), its
    /// time is up or `abort` is set (then it is killed).
    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        id: &str,
        begin: impl FnOnce() -> Result<crate::slave::engine::Output, EngineError>,
        nonce: Option<&str>,
        started: Instant,
        timeout: Duration,
        abort: &AtomicBool,
        sink: Option<LineSink>,
    ) -> Result<Ran, EngineError> {
        let engine = &self.containers.engine;
        let output = begin()?;
        let end = nonce.map(EndLine::new);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let reader = std::thread::Builder::new()
            .name("container-output".into())
            .spawn(move || {
                let _ = done_tx.send(read_output(output, sink, end));
            })
            .map_err(|e| EngineError::Unreachable(format!("cannot start the output reader: {e}")))?;
        let deadline = started + timeout;
        let mut stopped = None;
        let (tail, code) = loop {
            match done_rx.recv_timeout(POLL) {
                Ok(read) => break read,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break (Tail { lines: vec![], dropped: 0 }, None),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            if stopped.is_none() {
                if abort.load(Ordering::SeqCst) {
                    stopped = Some(Exit::Aborted);
                } else if Instant::now() >= deadline {
                    stopped = Some(Exit::TimedOut);
                }
                if stopped.is_some() {
                    engine.kill(id)?;
                }
            }
        };
        let _ = reader.join();
        let exit = match (stopped, code) {
            (Some(exit), _) => exit,
            (None, Some(code)) => Exit::Code(code),
            (None, None) => Exit::Code(engine.wait(id, Duration::from_secs(30))? as i32),
        };
        Ok(Ran { exit, elapsed: started.elapsed(), output: tail })
    }
}

/// Reads a container's output to its end (or to `end`'s line): the
/// bounded tail, each line to `sink` as it comes, and the exit code the end
/// line gave.
fn read_output(mut output: impl Read, sink: Option<LineSink>, mut end: Option<EndLine>) -> (Tail, Option<i32>) {
    let mut tail = TailBuf::new(OUTPUT_TAIL);
    let mut lines = sink.map(Lines::new);
    let mut feed = |bytes: &[u8]| {
        tail.feed(bytes);
        if let Some(l) = lines.as_mut() {
            l.feed(bytes);
        }
    };
    let mut buf = vec![0u8; 8 * 1024];
    let mut code = None;
    loop {
        match output.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => match end.as_mut() {
                Some(end) => {
                    code = end.feed(&buf[..n], &mut feed);
                    if code.is_some() {
                        break;
                    }
                }
                None => feed(&buf[..n]),
            },
        }
    }
    if let (Some(end), None) = (end.as_mut(), code) {
        end.finish(&mut feed);
    }
    if let Some(l) = lines.as_mut() {
        l.finish();
    }
    (tail.finish(), code)
}
