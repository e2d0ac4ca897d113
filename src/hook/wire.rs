//! HTTP/1.1 on one client socket, every byte and second bounded: the head
//! (request line and headers) at most [`MAX_HEAD`], the body at most
//! HOOK_MAX_BODY, a whole request within HOOK_REQUEST_TIMEOUT of its first
//! byte, each read and write within HOOK_IDLE_TIMEOUT. Heads are parsed by
//! httparse into tiny_http's method, version and header types.
//!
//! Answers, whole ([`Conn::send`]) or streamed ([`Conn::start_stream`]), are
//! written by the one writer here ([`write_head`]). Not tiny_http's
//! `Response::raw_print`: its chunked encoder holds the body back until 8 KiB
//! are written, so a followed log would reach the client in 8 KiB lumps, and it
//! reads an unsized body to its end before answering HTTP/1.0.
//!
//! tiny_http's own connection reader grows a header line as long as the client
//! sends it and reads a head with no deadline, and it never hands over the
//! socket to bound it from outside, so the reading is done here.

use std::io::{BufWriter, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant, SystemTime};
use tiny_http::{HTTPVersion, Header, Method, StatusCode};

/// Request line and headers together, blank line included (answered 431 past it).
pub const MAX_HEAD: usize = 64 * 1024;
/// Socket reads are at most this long; the head buffer grows by it.
const CHUNK: usize = 8 * 1024;
/// A chunk-size line (with extensions) of a chunked body, at most.
const MAX_CHUNK_LINE: usize = 1024;
/// After a refusal, how long the client's remaining bytes are read and dropped
/// before closing, so that it reads the answer rather than a connection reset.
const LINGER: Duration = Duration::from_secs(2);

/// The bounds a connection is read under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: u64,
    /// HOOK_IDLE_TIMEOUT: silence allowed between requests and within one.
    pub idle: Duration,
    /// HOOK_REQUEST_TIMEOUT: a whole request, from its first byte.
    pub request: Duration,
}

/// A complete request.
pub struct Request {
    pub method: Method,
    /// The request target as sent (path and query).
    pub url: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// Whether the client may send another request on this connection.
    pub keep_alive: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| named(h, name)).map(|h| h.value.as_str())
    }

    pub fn path(&self) -> &str {
        self.url.split_once('?').map_or(&self.url, |(p, _)| p)
    }
}

/// The values of the header fields called `name` (any case), in order.
fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> {
    headers.iter().filter(move |h| named(h, name)).map(|h| h.value.as_str())
}

fn named(header: &Header, name: &str) -> bool {
    header.field.as_str().as_str().eq_ignore_ascii_case(name)
}

/// An answer: status, headers (Content-Type and the like; framing, `Date`
/// and `Connection` are the writer's) and, for [`Conn::send`], its body.
pub struct Answer {
    pub code: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// A request that is answered `code` with the reason `why`, then the
/// connection is closed.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: u16,
    pub why: String,
    /// Method and target, when the head was read.
    pub request: Option<(String, String)>,
}

fn refuse(code: u16, why: impl Into<String>) -> Refusal {
    Refusal { code, why: why.into(), request: None }
}

/// What reading a connection gave.
pub enum Next {
    Request(Request),
    /// Answer the refusal, then [`Conn::close_after_refusal`].
    Refused(Refusal),
    /// Nothing to answer: the client closed or went silent between requests,
    /// or dropped the connection mid-request. The reason is for debug logs.
    Closed(String),
}

enum Stop {
    Refused(Refusal),
    Closed(String),
}

impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Refused(r)
    }
}

/// The framing of a request's body.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed head.
#[derive(Debug)]
struct Head {
    method: Method,
    url: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// One client connection.
pub struct Conn {
    stream: TcpStream,
    limits: Limits,
    /// Bytes read and not yet used: the rest of a head, a body, pipelined requests.
    pending: Vec<u8>,
    /// The socket's read timeout as last set.
    timeout: Duration,
    /// A streamed answer is chunked (HTTP/1.1).
    chunked: bool,
}

impl Conn {
    /// Bounds every read and write of `stream` by HOOK_IDLE_TIMEOUT from here
    /// on (reads nearer a request's deadline get less, see [`Conn::fill`]).
    pub fn new(stream: TcpStream, limits: Limits) -> std::io::Result<Conn> {
        let idle = limits.idle.max(Duration::from_millis(1));
        stream.set_read_timeout(Some(idle))?;
        stream.set_write_timeout(Some(idle))?;
        Ok(Conn { stream, limits, pending: Vec::new(), timeout: idle, chunked: false })
    }

    /// Reads the next request.
    pub fn next_request(&mut self) -> Next {
        match self.read_request() {
            Ok(req) => Next::Request(req),
            Err(Stop::Refused(r)) => Next::Refused(r),
            Err(Stop::Closed(why)) => Next::Closed(why),
        }
    }

    fn read_request(&mut self) -> Result<Request, Stop> {
        let deadline = self.await_request()?;
        let head_len = self.read_head(deadline)?;
        let head = parse_head(&self.pending[..head_len])?;
        self.pending.drain(..head_len);
        let target = (head.method.to_string(), head.url.clone());
        let body = self.read_body(&head, deadline).map_err(|stop| match stop {
            Stop::Refused(r) => Stop::Refused(Refusal { request: Some(target), ..r }),
            closed => closed,
        })?;
        Ok(Request { method: head.method, url: head.url, version: head.version, headers: head.headers, body, keep_alive: head.keep_alive })
    }

    /// Waits for a request's first byte; returns its deadline. Until that byte
    /// the idle timeout applies. Empty lines before a request line are skipped
    /// (RFC 9112 section 2.2), under the deadline too.
    fn await_request(&mut self) -> Result<Instant, Stop> {
        let mut deadline = (!self.pending.is_empty()).then(|| Instant::now() + self.limits.request);
        loop {
            let blank = self.pending.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
            self.pending.drain(..blank);
            if !self.pending.is_empty() {
                return Ok(deadline.expect("set once a byte arrived"));
            }
            self.fill(CHUNK, deadline)?;
            deadline.get_or_insert_with(|| Instant::now() + self.limits.request);
        }
    }

    /// Reads until the blank line ending the head; returns the head's length.
    fn read_head(&mut self, deadline: Instant) -> Result<usize, Stop> {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(3);
            if let Some(at) = self.pending[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                return Ok(from + at + 4);
            }
            // Refused at once rather than once the head is complete: a TLS
            // handshake never completes one.
            if let Some(b) = self.pending[searched..].iter().find(|b| !b.is_ascii()) {
                return Err(non_ascii(self.pending[0], *b).into());
            }
            searched = self.pending.len();
            if self.pending.len() >= MAX_HEAD {
                return Err(refuse(431, format!("request line and headers exceed {MAX_HEAD} bytes: send a shorter request head")).into());
            }
            self.fill(CHUNK.min(MAX_HEAD - self.pending.len()), Some(deadline))?;
        }
    }

    fn read_body(&mut self, head: &Head, deadline: Instant) -> Result<Vec<u8>, Stop> {
        let max = self.limits.max_body;
        let wants_body = match head.framing {
            Framing::None | Framing::Length(0) => false,
            Framing::Length(n) if n > max => return Err(too_big(max).into()),
            Framing::Length(_) | Framing::Chunked => true,
        };
        if wants_body && head.expect_continue && self.pending.is_empty() {
            self.send_raw(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        match head.framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => {
                let n = n as usize;
                let mut body = Vec::with_capacity(n.min(64 * 1024));
                self.take_body(&mut body, n, n, deadline)?;
                Ok(body)
            }
            Framing::Chunked => self.read_chunked(deadline),
        }
    }

    /// A chunked body: chunks up to the last (size 0), then trailer fields,
    /// read, bounded like a head, and ignored.
    fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, Stop> {
        let max = self.limits.max_body;
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, deadline)?;
            let line = line.ok_or_else(|| malformed_chunked("a chunk-size line longer than 1024 bytes"))?;
            let size = chunk_size(&line)?;
            if size == 0 {
                break;
            }
            if body.len() as u64 + size > max {
                return Err(too_big(max).into());
            }
            self.take_body(&mut body, size as usize, max as usize, deadline)?;
            while self.pending.len() < 2 {
                self.fill(CHUNK, Some(deadline))?;
            }
            if !self.pending.starts_with(b"\r\n") {
                return Err(malformed_chunked("a chunk is longer than its size").into());
            }
            self.pending.drain(..2);
        }
        let mut trailers = 0;
        loop {
            let Some(line) = self.read_line(MAX_HEAD.saturating_sub(trailers), deadline)? else {
                return Err(refuse(431, format!("trailer fields exceed {MAX_HEAD} bytes")).into());
            };
            if line.is_empty() {
                return Ok(body);
            }
            trailers += line.len() + 2;
        }
    }

    /// Moves the next `n` bytes of the body into `body`, which grows by
    /// doubling up to `cap`.
    fn take_body(&mut self, body: &mut Vec<u8>, n: usize, cap: usize, deadline: Instant) -> Result<(), Stop> {
        let mut left = n;
        while left > 0 {
            if self.pending.is_empty() {
                self.fill(CHUNK, Some(deadline))?;
            }
            let take = left.min(self.pending.len());
            grow(body, take, cap);
            body.extend(self.pending.drain(..take));
            left -= take;
        }
        Ok(())
    }

    /// One CRLF-terminated line (CRLF excluded), or `None` past `max` bytes.
    fn read_line(&mut self, max: usize, deadline: Instant) -> Result<Option<Vec<u8>>, Stop> {
        let mut searched: usize = 0;
        loop {
            let from = searched.saturating_sub(1);
            if let Some(at) = self.pending[from..].windows(2).position(|w| w == b"\r\n") {
                let end = from + at;
                if end > max {
                    return Ok(None);
                }
                let line = self.pending[..end].to_vec();
                self.pending.drain(..end + 2);
                return Ok(Some(line));
            }
            searched = self.pending.len();
            if self.pending.len() > max + 1 {
                return Ok(None);
            }
            self.fill(CHUNK, Some(deadline))?;
        }
    }

    /// Reads at most `max` more bytes into `pending`. Without a deadline
    /// (between requests) silence closes the connection; with one (mid-request)
    /// it is a 408 naming the limit that was hit.
    fn fill(&mut self, max: usize, deadline: Option<Instant>) -> Result<(), Stop> {
        let late = || {
            refuse(
                408,
                format!(
                    "the request took longer than HOOK_REQUEST_TIMEOUT ({} s) to arrive: send it at once",
                    self.limits.request.as_secs()
                ),
            )
        };
        let wait = match deadline {
            None => self.limits.idle,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(late().into());
                }
                self.limits.idle.min(left)
            }
        };
        let wait = wait.max(Duration::from_millis(1));
        if wait != self.timeout {
            self.stream.set_read_timeout(Some(wait)).map_err(|e| Stop::Closed(format!("cannot set the read timeout: {e}")))?;
            self.timeout = wait;
        }
        let mut buf = [0u8; CHUNK];
        loop {
            return match self.stream.read(&mut buf[..max.clamp(1, CHUNK)]) {
                Ok(0) if deadline.is_none() => Err(Stop::Closed("closed by the client".into())),
                Ok(0) => Err(Stop::Closed("closed by the client mid-request".into())),
                Ok(n) => {
                    self.pending.extend_from_slice(&buf[..n]);
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => match deadline {
                    None => Err(Stop::Closed("idle for HOOK_IDLE_TIMEOUT".into())),
                    Some(d) if Instant::now() >= d => Err(late().into()),
                    Some(_) => Err(refuse(
                        408,
                        format!("nothing received for HOOK_IDLE_TIMEOUT ({} s) in the middle of a request", self.limits.idle.as_secs()),
                    )
                    .into()),
                },
                Err(e) => Err(Stop::Closed(e.to_string())),
            };
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.stream.write_all(bytes).map_err(|e| Stop::Closed(e.to_string()))
    }

    /// Writes a whole answer with its `Content-Length`; no body for HEAD (nor
    /// for 1xx, 204, 304). `req` is the request answered; `None` for a
    /// refusal, which is answered HTTP/1.1 with `Connection: close`.
    pub fn send(&mut self, req: Option<&Request>, answer: &Answer) -> std::io::Result<()> {
        let version = req.map_or(HTTPVersion(1, 1), |r| r.version.clone());
        let close = req.is_none_or(|r| !r.keep_alive);
        let bodiless = matches!(answer.code, 100..=199 | 204 | 304) || req.is_some_and(|r| r.method == Method::Head);
        let mut out = BufWriter::with_capacity(CHUNK, &self.stream);
        write_head(&mut out, &version, answer, Framed::Length(answer.body.len()), close)?;
        if !bodiless {
            out.write_all(&answer.body)?;
        }
        out.flush()
    }

    /// Starts a streamed answer: status line and headers, then the body as
    /// [`Conn::chunk`]s — chunked for HTTP/1.1, delimited by the close for
    /// HTTP/1.0. The connection closes after it. A client that stops reading
    /// gets an error after HOOK_IDLE_TIMEOUT (the write timeout).
    pub fn start_stream(&mut self, req: &Request, answer: &Answer) -> std::io::Result<()> {
        self.chunked = req.version == HTTPVersion(1, 1);
        let framed = if self.chunked { Framed::Chunked } else { Framed::UntilClose };
        let mut out = BufWriter::with_capacity(CHUNK, &self.stream);
        write_head(&mut out, &req.version, answer, framed, true)?;
        out.flush()
    }

    /// One piece of a streamed answer, sent at once (nothing for an empty
    /// one, which would end it).
    pub fn chunk(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.chunked {
            return (&self.stream).write_all(data);
        }
        let mut piece = Vec::with_capacity(data.len() + 16);
        piece.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        piece.extend_from_slice(data);
        piece.extend_from_slice(b"\r\n");
        (&self.stream).write_all(&piece)
    }

    /// Ends a streamed answer and closes the connection.
    pub fn end_stream(self) -> std::io::Result<()> {
        if self.chunked {
            (&self.stream).write_all(b"0\r\n\r\n")?;
        }
        self.stream.shutdown(Shutdown::Write)
    }

    /// Whether the client closed its side (or reset): a non-blocking peek.
    pub fn client_gone(&self) -> bool {
        let mut byte = [0u8; 1];
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let gone = match self.stream.peek(&mut byte) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
        };
        let _ = self.stream.set_nonblocking(false);
        gone
    }

    /// Closes after a refusal: no more answers, then what the client still
    /// sends is read and dropped for at most [`LINGER`], in a small buffer, so
    /// that the answer is not lost to a reset.
    pub fn close_after_refusal(self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        let until = Instant::now() + LINGER;
        let mut buf = [0u8; 4096];
        let mut stream = &self.stream;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
}

/// How an answer's body is delimited.
enum Framed {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The head of every answer, whole or streamed: status line, `Date`, the
/// answer's headers, its framing, and `Connection` when the hook closes after
/// it (or keeps an HTTP/1.0 connection open).
fn write_head(out: &mut impl Write, version: &HTTPVersion, answer: &Answer, framed: Framed, close: bool) -> std::io::Result<()> {
    let reason = StatusCode(answer.code).default_reason_phrase();
    write!(out, "HTTP/{}.{} {} {reason}\r\n", version.0, version.1, answer.code)?;
    write!(out, "Date: {}\r\n", httpdate::fmt_http_date(SystemTime::now()))?;
    for (name, value) in &answer.headers {
        write!(out, "{name}: {value}\r\n")?;
    }
    match framed {
        Framed::Length(n) => write!(out, "Content-Length: {n}\r\n")?,
        Framed::Chunked => out.write_all(b"Transfer-Encoding: chunked\r\n")?,
        Framed::UntilClose => {}
    }
    if close {
        out.write_all(b"Connection: close\r\n")?;
    } else if *version == HTTPVersion(1, 0) {
        out.write_all(b"Connection: keep-alive\r\n")?;
    }
    out.write_all(b"\r\n")
}

fn too_big(max: u64) -> Refusal {
    refuse(413, format!("body larger than HOOK_MAX_BODY ({max} bytes)"))
}

fn malformed_chunked(what: &str) -> Refusal {
    refuse(400, format!("malformed chunked body: {what}"))
}

/// Makes room for `extra` more bytes, growing by doubling but never past `cap`.
fn grow(body: &mut Vec<u8>, extra: usize, cap: usize) {
    let need = body.len() + extra;
    if need > body.capacity() {
        let target = need.max(body.capacity() * 2).min(cap.max(need));
        body.reserve_exact(target - body.len());
    }
}

/// The size of a chunk from its line `<hex>[;extensions]`.
fn chunk_size(line: &[u8]) -> Result<u64, Refusal> {
    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
    let hex = std::str::from_utf8(hex).unwrap_or("").trim_matches(|c| c == ' ' || c == '\t');
    if hex.is_empty() || hex.len() > 15 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        return Err(refuse(400, format!("malformed chunked body: chunk size {shown:?} is not a hex number")));
    }
    Ok(u64::from_str_radix(hex, 16).expect("checked hex digits"))
}

/// Parses a head (request line, header lines, blank line; CRLF throughout)
/// with httparse, after [`check_lines`].
fn parse_head(bytes: &[u8]) -> Result<Head, Refusal> {
    let text = check_lines(bytes)?;
    let request_line = text.split("\r\n").next().unwrap_or_default();
    // A slot per line: never too few, so never "too many headers".
    let mut slots = vec![httparse::EMPTY_HEADER; text.matches("\r\n").count()];
    let mut parsed = httparse::Request::new(&mut slots);
    // Complete, not Partial: `bytes` ends with the blank line.
    if let Err(e) = parsed.parse(bytes) {
        return Err(parse_error(e, request_line));
    }
    let url = parsed.path.unwrap_or_default().to_string();
    if !url.starts_with('/') {
        return Err(refuse(400, format!("malformed request target {:?}: expected an absolute path", cut(&url))));
    }
    let method: Method = parsed.method.unwrap_or_default().parse().map_err(|_| refuse(400, "malformed method"))?;
    let version = if parsed.version == Some(1) { HTTPVersion(1, 1) } else { HTTPVersion(1, 0) };
    let headers: Vec<Header> = parsed.headers.iter().map(|h| Header::from_bytes(h.name, h.value).expect("checked ASCII")).collect();
    let framing = framing(&headers, &version)?;
    let keep_alive = keep_alive(&headers, &version);
    let expect_continue = expect_continue(values(&headers, "expect").last(), &version)?;
    Ok(Head { method, url, version, headers, framing, keep_alive, expect_continue })
}

/// The head as text, refused first for what httparse would accept (non-ASCII
/// bytes, a bare CR or LF) or refuse without saying why (a folded line).
fn check_lines(bytes: &[u8]) -> Result<&str, Refusal> {
    if let Some(b) = bytes.iter().find(|b| !b.is_ascii()) {
        return Err(non_ascii(bytes[0], *b));
    }
    let text = std::str::from_utf8(bytes).expect("checked ASCII");
    for (n, line) in text.strip_suffix("\r\n\r\n").unwrap_or(text).split("\r\n").enumerate() {
        if line.contains(['\r', '\n']) {
            let which = if n == 0 { "the request line" } else { "a header line" };
            return Err(refuse(400, format!("{which} ends with a bare CR or LF: end lines with CRLF")));
        }
        if n > 0 && line.starts_with([' ', '\t']) {
            return Err(refuse(400, "a header line starts with white space (obsolete line folding): send each field on one line"));
        }
    }
    Ok(text)
}

/// The refusal of what httparse refused: a header line, or the request line
/// (505 for a version of HTTP other than 1.x).
fn parse_error(e: httparse::Error, line: &str) -> Refusal {
    match (e, &line.split(' ').collect::<Vec<_>>()[..]) {
        (httparse::Error::HeaderName | httparse::Error::HeaderValue, _) => {
            refuse(400, format!("malformed header line ({e}): expected `Name: value`"))
        }
        (_, [_, _, v]) if v.len() == 8 && v.starts_with("HTTP/") && v.as_bytes()[6] == b'.' && !matches!(*v, "HTTP/1.0" | "HTTP/1.1") => {
            refuse(505, format!("{v} is not supported: use HTTP/1.1"))
        }
        _ => refuse(400, format!("malformed request line {:?}: expected `METHOD /path HTTP/1.1`", cut(line))),
    }
}

/// The framing of the body from the Content-Length and Transfer-Encoding fields.
fn framing(headers: &[Header], version: &HTTPVersion) -> Result<Framing, Refusal> {
    let lengths: Vec<&str> = values(headers, "content-length").collect();
    let encodings: Vec<&str> = values(headers, "transfer-encoding").collect();
    match (&lengths[..], &encodings[..]) {
        ([], []) => Ok(Framing::None),
        ([_, ..], [_, ..]) => Err(refuse(400, "both Transfer-Encoding and Content-Length: send one of them (RFC 9112 section 6.3)")),
        ([], [te]) if te.eq_ignore_ascii_case("chunked") && *version == HTTPVersion(1, 1) => Ok(Framing::Chunked),
        ([], [te]) if te.eq_ignore_ascii_case("chunked") => {
            Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request: send a Content-Length"))
        }
        ([], tes) => {
            Err(refuse(501, format!("Transfer-Encoding {:?} is not supported: send chunked or a Content-Length", cut(&tes.join(", ")))))
        }
        ([first, rest @ ..], []) => {
            if rest.iter().any(|l| l != first) {
                return Err(refuse(400, "Content-Length headers that disagree: send one"));
            }
            if first.is_empty() || first.len() > 19 || !first.bytes().all(|b| b.is_ascii_digit()) {
                return Err(refuse(400, format!("Content-Length {:?} is not a number of bytes", cut(first))));
            }
            Ok(Framing::Length(first.parse().expect("checked digits")))
        }
    }
}

/// Whether the client keeps the connection open after the answer.
fn keep_alive(headers: &[Header], version: &HTTPVersion) -> bool {
    let mut tokens = values(headers, "connection").flat_map(|v| v.split(',')).map(str::trim);
    match version {
        HTTPVersion(1, 1) => !tokens.any(|t| t.eq_ignore_ascii_case("close")),
        _ => tokens.any(|t| t.eq_ignore_ascii_case("keep-alive")),
    }
}

/// Whether the client waits for a `100 Continue` before sending the body.
fn expect_continue(expect: Option<&str>, version: &HTTPVersion) -> Result<bool, Refusal> {
    match expect {
        None => Ok(false),
        // HTTP/1.0 clients cannot ask for a 100 (RFC 9110 section 10.1.1): ignored.
        Some(_) if *version != HTTPVersion(1, 1) => Ok(false),
        Some(e) if e.eq_ignore_ascii_case("100-continue") => Ok(true),
        Some(e) => Err(refuse(417, format!("Expect {:?} is not supported: only 100-continue", cut(e)))),
    }
}

fn non_ascii(first: u8, b: u8) -> Refusal {
    if first == 0x16 {
        return refuse(400, "a TLS handshake on the hook's plain-HTTP port: use http://, or put a TLS proxy in front");
    }
    refuse(400, format!("the request head holds the non-ASCII byte 0x{b:02x}: percent-encode the path"))
}

/// A hostile value quoted in an answer, at most 64 characters.
fn cut(s: &str) -> String {
    if s.chars().count() > 64 {
        format!("{}...", s.chars().take(64).collect::<String>())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, Refusal> {
        parse_head(text.as_bytes())
    }

    fn code(text: &str) -> u16 {
        match head(text) {
            Ok(_) => 0,
            Err(r) => r.code,
        }
    }

    #[test]
    fn a_plain_get_and_a_post_with_a_length() {
        let h = head("GET /status/a/b?branch=x HTTP/1.1\r\nHost: h\r\nAccept: application/json\r\n\r\n").unwrap();
        assert_eq!((h.method, h.url.as_str(), h.framing, h.keep_alive), (Method::Get, "/status/a/b?branch=x", Framing::None, true));
        assert_eq!(values(&h.headers, "accept").next(), Some("application/json"));
        let h = head("POST / HTTP/1.1\r\nContent-Length: 12\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(12), false));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!((h.framing, h.expect_continue), (Framing::Chunked, true));
        let h = head("GET /ping HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = head("GET /ping HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn malformed_heads_are_refused_with_their_code() {
        let table: &[(&str, u16)] = &[
            ("GET /ping HTTP/9.9\r\n\r\n", 505),
            ("GET /ping HTTP/1.2\r\n\r\n", 505),
            ("GET /ping HTTP/1.1\r\nX: a\u{1}b\r\n\r\n", 400),
            ("GET /ping HTTP/1.1 extra\r\n\r\n", 400),
            ("GET ping HTTP/1.1\r\n\r\n", 400),
            ("G(T /ping HTTP/1.1\r\n\r\n", 400),
            ("GET /p\u{7f}ng HTTP/1.1\r\n\r\n", 400),
            ("GET /\u{e9} HTTP/1.1\r\n\r\n", 400),
            ("GET /ping HTTP/1.1\r\nX: a\nY: b\r\n\r\n", 400),
            ("GET /ping HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET /ping HTTP/1.1\r\nNo colon\r\n\r\n", 400),
            ("GET /ping HTTP/1.1\r\nBad Name: v\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 0),
            ("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\n", 417),
            ("POST / HTTP/1.0\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\n", 0),
        ];
        let wrong: Vec<String> = table
            .iter()
            .filter(|(text, want)| code(text) != *want)
            .map(|(text, want)| format!("{text:?}: expected {want}, got {:?}", head(text).err()))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn refusals_quote_at_most_64_characters() {
        let long = format!("GET /ping HTTP/1.1\r\n{}\r\n\r\n", "x".repeat(10_000));
        let why = head(&long).unwrap_err().why;
        assert!(why.len() < 200, "{why}");
    }

    #[test]
    fn answer_heads_carry_their_framing_and_connection() {
        let answer = Answer { code: 503, headers: vec![("Retry-After", "5".into())], body: b"busy\n".to_vec() };
        let head = |version, framed, close| {
            let mut out = Vec::new();
            write_head(&mut out, &version, &answer, framed, close).unwrap();
            let text = String::from_utf8(out).unwrap();
            let (status, rest) = text.split_once("\r\n").unwrap();
            assert!(rest.starts_with("Date: ") && rest.ends_with("\r\n\r\n"), "{text:?}");
            let fields: Vec<String> = rest.lines().skip(1).filter(|l| !l.is_empty()).map(String::from).collect();
            (status.to_string(), fields)
        };
        let (status, fields) = head(HTTPVersion(1, 1), Framed::Length(5), false);
        assert_eq!(
            (status.as_str(), fields),
            ("HTTP/1.1 503 Service Unavailable", vec!["Retry-After: 5".into(), "Content-Length: 5".into()])
        );
        let (_, fields) = head(HTTPVersion(1, 1), Framed::Chunked, true);
        assert_eq!(fields[1..], ["Transfer-Encoding: chunked".to_string(), "Connection: close".into()]);
        let (status, fields) = head(HTTPVersion(1, 0), Framed::Length(5), false);
        assert_eq!((status.as_str(), &fields[2]), ("HTTP/1.0 503 Service Unavailable", &"Connection: keep-alive".to_string()));
        let (_, fields) = head(HTTPVersion(1, 0), Framed::UntilClose, true);
        assert_eq!(fields[1..], ["Connection: close".to_string()]);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a"), Ok(26));
        assert_eq!(chunk_size(b"0;name=value"), Ok(0));
        assert_eq!(chunk_size(b"FF "), Ok(255));
        for bad in [&b""[..], b"zz", b"-1", b"1234567890abcdef0", b";x"] {
            assert_eq!(chunk_size(bad).map_err(|r| r.code), Err(400), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn growth_never_passes_the_cap() {
        let mut v = Vec::with_capacity(10);
        v.extend_from_slice(&[0; 10]);
        grow(&mut v, 5, 16);
        assert!(v.capacity() >= 15 && v.capacity() <= 16, "{}", v.capacity());
    }
}
