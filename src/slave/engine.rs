//! The Docker Engine API, spoken over a blocking socket (`unix://` or
//! `tcp://`, SLAVE_DOCKER): images, networks, containers, and a container's
//! attached output. One request per connection (`Connection: close`), every
//! answer bounded in bytes and time; no async runtime, no CLI process.

use crate::payload::percent_encode;
use serde_json::{json, Value};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// The API version asked for: Docker 20.10 and every later engine answer it.
const API: &str = "/v1.41";
/// Most bytes of a JSON answer read (an image inspect is a few KiB).
const MAX_ANSWER: u64 = 4 * 1024 * 1024;
/// Most bytes of an answer's head.
const MAX_HEAD: usize = 64 * 1024;

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `unix:///var/run/docker.sock` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(Endpoint::Unix(PathBuf::from(path)));
            }
        } else if let Some(addr) = s.strip_prefix("tcp://") {
            if !addr.is_empty() && !addr.contains('/') {
                return Ok(Endpoint::Tcp(addr.to_string()));
            }
        }
        Err(format!("{s:?}: expected unix:///path/to/docker.sock or tcp://host:port"))
    }
}

/// What went wrong talking to the engine.
#[derive(Debug)]
pub enum EngineError {
    /// No engine answers at the endpoint (or the connection broke): transient.
    Unreachable(String),
    /// The engine answered `status` with this message (its own words).
    Refused { status: u16, message: String },
    /// The answer was not what the API says.
    Protocol(String),
}

impl EngineError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::Refused { status: 404, .. })
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Unreachable(why) => write!(f, "docker engine unreachable: {why}"),
            EngineError::Refused { message, .. } => write!(f, "{message}"),
            EngineError::Protocol(why) => write!(f, "docker engine answered oddly: {why}"),
        }
    }
}

/// An answer's status, headers, and the connection to read its body from.
type Head = (u16, Vec<(String, String)>, BufReader<Box<dyn Stream>>);

type Result<T, E = EngineError> = std::result::Result<T, E>;

trait Stream: Read + Write + Send {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()>;
    /// Ends what is written (the container's stdin), reading goes on.
    fn close_write(&self) -> io::Result<()>;
}

impl Stream for UnixStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Stream for std::net::TcpStream {
    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
    fn close_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// A container as the slave creates it.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    /// `host:container[:rw|ro]` bind mounts.
    pub binds: Vec<String>,
    pub network: Option<String>,
    /// Other names the container answers to on its network.
    pub aliases: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// `uid:gid` to run as, when set.
    pub user: Option<String>,
    pub memory_bytes: u64,
    pub nano_cpus: u64,
    /// Its stdin open for one attach (closed when that attach's input ends).
    pub stdin: bool,
}

impl ContainerSpec {
    fn body(&self) -> Value {
        let labels: serde_json::Map<String, Value> = self.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut host = json!({
            "Binds": self.binds,
            "Privileged": false,
            "CapDrop": ["NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP"],
            "SecurityOpt": ["no-new-privileges"],
            "PidsLimit": 4096,
            "Init": true,
        });
        if self.memory_bytes > 0 {
            host["Memory"] = json!(self.memory_bytes);
            host["MemorySwap"] = json!(self.memory_bytes);
        }
        if self.nano_cpus > 0 {
            host["NanoCpus"] = json!(self.nano_cpus);
        }
        let mut body = json!({
            "Image": self.image,
            "Cmd": if self.cmd.is_empty() { Value::Null } else { json!(self.cmd) },
            "Env": env,
            "WorkingDir": self.working_dir,
            "Labels": labels,
            "AttachStdout": true,
            "AttachStderr": true,
            "AttachStdin": self.stdin,
            "OpenStdin": self.stdin,
            "StdinOnce": self.stdin,
            "Tty": false,
            "HostConfig": host,
        });
        if let Some(user) = &self.user {
            body["User"] = json!(user);
        }
        if let Some(net) = &self.network {
            body["HostConfig"]["NetworkMode"] = json!(net);
            body["NetworkingConfig"] = json!({ "EndpointsConfig": { net: { "Aliases": self.aliases } } });
        }
        body
    }
}

/// A client of one engine. Cheap to clone; every call opens its connection.
#[derive(Debug, Clone)]
pub struct Engine {
    endpoint: Endpoint,
    /// Each read and write of an API call.
    timeout: Duration,
}

/// An answer's status and body reader.
struct Answer {
    status: u16,
    body: Box<dyn Read + Send>,
}

impl Engine {
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Engine {
        Engine { endpoint, timeout }
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<Box<dyn Stream>> {
        let unreachable = |e: io::Error| EngineError::Unreachable(e.to_string());
        let stream: Box<dyn Stream> = match &self.endpoint {
            Endpoint::Unix(path) => {
                Box::new(UnixStream::connect(path).map_err(|e| EngineError::Unreachable(format!("{}: {e}", path.display())))?)
            }
            Endpoint::Tcp(addr) => Box::new(std::net::TcpStream::connect(addr).map_err(unreachable)?),
        };
        stream.set_timeouts(timeout).map_err(unreachable)?;
        Ok(stream)
    }

    /// Sends one request and reads the answer's head; the body is left to read.
    fn send(&self, method: &str, path: &str, body: Option<&Value>, extra: &str, timeout: Option<Duration>) -> Result<Head> {
        let mut stream = self.connect(timeout)?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let head = format!(
            "{method} {API}{path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: ci-backend\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        let broken = |e: io::Error| EngineError::Unreachable(format!("{method} {path}: {e}"));
        stream.write_all(head.as_bytes()).map_err(broken)?;
        stream.write_all(body.as_bytes()).map_err(broken)?;
        stream.flush().map_err(broken)?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => EngineError::Protocol(format!("{method} {path}: {e}")),
            _ => broken(e),
        })?;
        Ok((status, headers, reader))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<Answer> {
        let (status, headers, reader) = self.send(method, path, body, "Connection: close\r\n", Some(timeout))?;
        let header = |name: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let body: Box<dyn Read + Send> = if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            Box::new(Chunked { inner: reader, left: 0, done: false })
        } else if let Some(len) = header("Content-Length").and_then(|v| v.trim().parse::<u64>().ok()) {
            Box::new(reader.take(len))
        } else {
            Box::new(reader)
        };
        Ok(Answer { status, body })
    }

    /// A call whose answer is JSON (or empty); a status of 300 or more is the
    /// engine's refusal, with its message.
    fn json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let answer = self.call(method, path, body, self.timeout)?;
        let mut bytes = Vec::new();
        answer
            .body
            .take(MAX_ANSWER)
            .read_to_end(&mut bytes)
            .map_err(|e| EngineError::Unreachable(format!("{method} {path}: reading the answer: {e}")))?;
        let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({ "message": String::from_utf8_lossy(&bytes).trim() }))
        };
        if answer.status >= 300 {
            let message = value["message"].as_str().unwrap_or("no message").to_string();
            return Err(EngineError::Refused { status: answer.status, message });
        }
        Ok(value)
    }

    pub fn ping(&self) -> Result<()> {
        let answer = self.call("GET", "/_ping", None, self.timeout)?;
        match answer.status {
            200 => Ok(()),
            s => Err(EngineError::Refused { status: s, message: format!("/_ping answered {s}") }),
        }
    }

    /// The id of a local image, `None` when the engine does not have it.
    pub fn image_id(&self, reference: &str) -> Result<Option<String>> {
        match self.json("GET", &format!("/images/{}/json", encode_ref(reference)), None) {
            Ok(v) => Ok(v["Id"].as_str().map(String::from)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pulls `reference` (its tag, `latest` when none), waiting up to
    /// `timeout`; the engine's progress stream is read and dropped, its
    /// error (a registry that does not answer, no such image) returned.
    pub fn pull(&self, reference: &str, timeout: Duration) -> Result<()> {
        let (image, tag) = split_reference(reference);
        let path = format!("/images/create?fromImage={}&tag={}", encode(image), encode(tag));
        let answer = self.call("POST", &path, None, timeout)?;
        let mut last_error = None;
        let mut reader = BufReader::new(answer.body.take(64 * 1024 * 1024));
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                        if let Some(e) = v["error"].as_str().or(v["message"].as_str().filter(|_| answer.status >= 300)) {
                            last_error = Some(e.to_string());
                        }
                    }
                }
                Err(e) => return Err(EngineError::Unreachable(format!("pulling {reference}: {e}"))),
            }
        }
        match last_error {
            Some(message) => Err(EngineError::Refused { status: answer.status.max(500), message }),
            None if answer.status >= 300 => {
                Err(EngineError::Refused { status: answer.status, message: format!("pull answered {}", answer.status) })
            }
            None => Ok(()),
        }
    }

    /// Creates a bridge network with `labels`; its id.
    pub fn create_network(&self, name: &str, labels: &[(String, String)]) -> Result<String> {
        let labels: serde_json::Map<String, Value> = labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let v = self.json(
            "POST",
            "/networks/create",
            Some(&json!({ "Name": name, "Driver": "bridge", "CheckDuplicate": true, "Labels": labels })),
        )?;
        v["Id"].as_str().map(String::from).ok_or_else(|| EngineError::Protocol("network create: no Id".into()))
    }

    pub fn remove_network(&self, id: &str) -> Result<()> {
        match self.json("DELETE", &format!("/networks/{}", encode(id)), None) {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// Networks carrying `label=value`.
    pub fn networks_labelled(&self, label: &str, value: &str) -> Result<Vec<String>> {
        let filters = json!({ "label": [format!("{label}={value}")] }).to_string();
        let v = self.json("GET", &format!("/networks?filters={}", encode(&filters)), None)?;
        Ok(v.as_array().map(|a| a.iter().filter_map(|n| n["Id"].as_str().map(String::from)).collect()).unwrap_or_default())
    }

    /// Creates a container; its id.
    pub fn create(&self, name: &str, spec: &ContainerSpec) -> Result<String> {
        let v = self.json("POST", &format!("/containers/create?name={}", encode(name)), Some(&spec.body()))?;
        v["Id"].as_str().map(String::from).ok_or_else(|| EngineError::Protocol("container create: no Id".into()))
    }

    /// The container's output from now on, stdout and stderr merged, until it
    /// exits (attach before start so nothing is missed). Reads block; the
    /// stream ends when the container does.
    pub fn attach(&self, id: &str) -> Result<Output> {
        let path = format!("/containers/{}/attach?stream=1&stdout=1&stderr=1", encode(id));
        let (status, _, reader) = self.send("POST", &path, None, "Connection: Upgrade\r\nUpgrade: tcp\r\n", Some(self.timeout))?;
        if status != 101 && status != 200 {
            return Err(EngineError::Refused { status, message: format!("attach answered {status}") });
        }
        // The output may pause for as long as a step runs quietly.
        reader.get_ref().set_timeouts(None).map_err(|e| EngineError::Unreachable(e.to_string()))?;
        Ok(Output { inner: Box::new(reader), left: 0 })
    }

    /// Gives a running container opened with [`ContainerSpec::stdin`] its
    /// whole input, then its output from now on, as [`Engine::attach`].
    pub fn attach_input(&self, id: &str, input: &[u8]) -> Result<Output> {
        let path = format!("/containers/{}/attach?stream=1&stdin=1&stdout=1&stderr=1", encode(id));
        let (status, _, mut reader) = self.send("POST", &path, None, "Connection: Upgrade\r\nUpgrade: tcp\r\n", Some(self.timeout))?;
        if status != 101 && status != 200 {
            return Err(EngineError::Refused { status, message: format!("attach answered {status}") });
        }
        let broken = |e: io::Error| EngineError::Unreachable(format!("attach {id}: {e}"));
        let stream = reader.get_mut();
        stream.write_all(input).map_err(broken)?;
        stream.flush().map_err(broken)?;
        stream.close_write().map_err(broken)?;
        stream.set_timeouts(None).map_err(broken)?;
        Ok(Output { inner: Box::new(reader), left: 0 })
    }

    /// Whether the container exists and runs.
    pub fn running(&self, id: &str) -> Result<bool> {
        match self.json("GET", &format!("/containers/{}/json", encode(id)), None) {
            Ok(v) => Ok(v["State"]["Running"].as_bool() == Some(true)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.json("POST", &format!("/containers/{}/start", encode(id)), None).map(drop)
    }

    /// Waits for the container to stop; its exit code.
    pub fn wait(&self, id: &str, timeout: Duration) -> Result<i64> {
        let answer = self.call("POST", &format!("/containers/{}/wait", encode(id)), None, timeout)?;
        let mut bytes = Vec::new();
        answer.body.take(MAX_ANSWER).read_to_end(&mut bytes).map_err(|e| EngineError::Unreachable(e.to_string()))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| EngineError::Protocol(format!("wait: {e}")))?;
        if answer.status >= 300 {
            return Err(EngineError::Refused { status: answer.status, message: v["message"].as_str().unwrap_or("").to_string() });
        }
        v["StatusCode"].as_i64().ok_or_else(|| EngineError::Protocol("wait: no StatusCode".into()))
    }

    /// SIGKILL; a container that already stopped or is gone is no error.
    pub fn kill(&self, id: &str) -> Result<()> {
        match self.json("POST", &format!("/containers/{}/kill", encode(id)), None) {
            Err(EngineError::Refused { status: 404 | 409, .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes a container, running or not, with its anonymous volumes.
    pub fn remove(&self, id: &str) -> Result<()> {
        match self.json("DELETE", &format!("/containers/{}?force=1&v=1", encode(id)), None) {
            Err(e) if e.is_not_found() => Ok(()),
            Err(EngineError::Refused { status: 409, .. }) => Ok(()), // removal already in progress
            other => other.map(drop),
        }
    }

    /// Containers (running or not) carrying `label=value`.
    pub fn containers_labelled(&self, label: &str, value: &str) -> Result<Vec<String>> {
        let filters = json!({ "label": [format!("{label}={value}")] }).to_string();
        let v = self.json("GET", &format!("/containers/json?all=1&filters={}", encode(&filters)), None)?;
        Ok(v.as_array().map(|a| a.iter().filter_map(|c| c["Id"].as_str().map(String::from)).collect()).unwrap_or_default())
    }

    /// The last `lines` lines a container printed (a service's, for a failed step).
    pub fn logs_tail(&self, id: &str, lines: u32) -> Result<Vec<u8>> {
        let answer = self.call("GET", &format!("/containers/{}/logs?stdout=1&stderr=1&tail={lines}", encode(id)), None, self.timeout)?;
        if answer.status >= 300 {
            return Err(EngineError::Refused { status: answer.status, message: format!("logs answered {}", answer.status) });
        }
        let mut out = Output { inner: answer.body, left: 0 };
        let mut bytes = Vec::new();
        (&mut out).take(MAX_ANSWER).read_to_end(&mut bytes).map_err(|e| EngineError::Unreachable(e.to_string()))?;
        Ok(bytes)
    }
}

/// A container's attached output: the engine's frames (`[stream, 0, 0, 0,
/// size as u32 big-endian]` then `size` bytes) read as one byte stream.
pub struct Output {
    inner: Box<dyn Read + Send>,
    /// Bytes of the current frame not read yet.
    left: usize,
}

impl Read for Output {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.left == 0 {
            let mut header = [0u8; 8];
            match self.inner.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            self.left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Ok(0);
        }
        self.left -= got;
        Ok(got)
    }
}

/// A chunked body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            (&mut self.inner).take(1024).read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= got as u64;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.inner.read_exact(&mut crlf)?;
        }
        Ok(got)
    }
}

/// The status and headers of an answer, at most [`MAX_HEAD`] bytes.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let mut total = 0;
    let mut line = String::new();
    let mut next = |line: &mut String| -> io::Result<()> {
        line.clear();
        let n = reader.take((MAX_HEAD - total) as u64).read_line(line)?;
        total += n;
        if n == 0 || !line.ends_with('\n') {
            return Err(if total >= MAX_HEAD { bad("answer head too long".into()) } else { io::ErrorKind::UnexpectedEof.into() });
        }
        Ok(())
    };
    next(&mut line)?;
    let status =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("status line {:?}", line.trim())))?;
    let mut headers = Vec::new();
    loop {
        next(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// `name[:tag]` or `name@digest` → (name, tag or digest); `latest` when none.
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (name, digest);
    }
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    }
}

/// Percent-encodes a path or query component.
fn encode(s: &str) -> String {
    percent_encode(s, b"")
}

/// Percent-encodes an image reference in a path: its `/`, `:` and `@` stay
/// (the engine's router matches `/images/{name:.*}/json` on them).
fn encode_ref(s: &str) -> String {
    percent_encode(s, b"/:@")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(Endpoint::parse("unix:///var/run/docker.sock"), Ok(Endpoint::Unix("/var/run/docker.sock".into())));
        assert_eq!(Endpoint::parse("tcp://127.0.0.1:2375"), Ok(Endpoint::Tcp("127.0.0.1:2375".into())));
        for bad in ["", "unix://relative", "http://x", "tcp://", "tcp://a/b"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_split_into_name_and_tag() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("busybox:1.36"), ("busybox", "1.36"));
        assert_eq!(split_reference("localhost:5000/team/img"), ("localhost:5000/team/img", "latest"));
        assert_eq!(split_reference("localhost:5000/team/img:v2"), ("localhost:5000/team/img", "v2"));
        assert_eq!(split_reference("img@sha256:abc"), ("img", "sha256:abc"));
    }

    #[test]
    fn frames_are_read_as_one_stream() {
        let mut bytes = vec![1, 0, 0, 0, 0, 0, 0, 3];
        bytes.extend_from_slice(b"ab\n");
        bytes.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        bytes.extend_from_slice(b"err\n");
        let mut out = Output { inner: Box::new(std::io::Cursor::new(bytes)), left: 0 };
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(text, "ab\nerr\n");
    }

    #[test]
    fn chunked_bodies_and_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut reader = BufReader::new(&raw[..]);
        let (status, headers) = read_head(&mut reader).unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers, vec![("Transfer-Encoding".to_string(), "chunked".to_string())]);
        let mut body = String::new();
        Chunked { inner: reader, left: 0, done: false }.read_to_string(&mut body).unwrap();
        assert_eq!(body, "abcde");
    }

    #[test]
    fn components_are_percent_encoded() {
        assert_eq!(encode("a/b:c d"), "a%2Fb%3Ac%20d");
        assert_eq!(encode("{\"label\":[\"x=y\"]}"), "%7B%22label%22%3A%5B%22x%3Dy%22%5D%7D");
    }
}

/// Against the machine's engine, when one answers and has the test image
/// (`ci-test/busybox:1`, built by tests/harness from Debian's static busybox).
#[cfg(test)]
mod engine_tests {
    use super::*;

    fn engine() -> Option<Engine> {
        let e = Engine::new(Endpoint::parse("unix:///var/run/docker.sock").ok()?, Duration::from_secs(30));
        match e.image_id("ci-test/busybox:1") {
            Ok(Some(_)) => Some(e),
            _ => {
                eprintln!("SKIPPED: no docker engine with ci-test/busybox:1 here");
                None
            }
        }
    }

    #[test]
    fn a_container_runs_prints_and_exits_with_its_code() {
        let Some(e) = engine() else { return };
        let spec = ContainerSpec {
            image: "ci-test/busybox:1".into(),
            cmd: vec!["sh".into(), "-c".into(), "exec 2>&1; echo out; echo err >&2; echo $X; pwd; exit 3".into()],
            env: vec![("X".into(), "y z".into())],
            working_dir: "/tmp".into(),
            labels: vec![("ci-backend.test".into(), "engine".into())],
            ..Default::default()
        };
        let id = e.create(&format!("ci-engine-test-{}", std::process::id()), &spec).unwrap();
        let mut out = e.attach(&id).unwrap();
        e.start(&id).unwrap();
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(e.wait(&id, Duration::from_secs(30)).unwrap(), 3);
        assert!(e.containers_labelled("ci-backend.test", "engine").unwrap().contains(&id));
        e.remove(&id).unwrap();
        assert_eq!(text, "out\nerr\ny z\n/tmp\n");
        assert!(!e.containers_labelled("ci-backend.test", "engine").unwrap().contains(&id));
        let missing = e.pull("ci-test/no-such-image:1", Duration::from_secs(30)).unwrap_err();
        assert!(!missing.to_string().is_empty());
        assert_eq!(e.image_id("ci-test/no-such-image:1").unwrap(), None);
    }
}
