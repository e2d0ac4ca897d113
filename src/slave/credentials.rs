//! Git credentials, bound to the hosts they are for. Read once at startup
//! from GIT_CREDENTIALS and GIT_CREDENTIALS_FILE (git credential-store lines,
//! `https://<user>:<token>@<host>[:<port>][/<path>]`), then taken out of the
//! process environment: the slave restarts itself without those variables and
//! receives the credentials through an inherited memfd, so that
//! /proc/<pid>/environ never holds them. A git command gets a credential only
//! when its URL is https and names that host, port and path prefix; git's
//! helper reads it from a pipe the slave fills for that one command.
//!
//! The forge tokens of commit statuses (SLAVE_FORGES, SLAVE_FORGES_FILE; see
//! `crate::slave::forge`) and the secrets per repository (SLAVE_SECRETS_FILE;
//! see `crate::slave::repo_secrets`) take the same way out of the environment,
//! in the same memfd.

use crate::slave::forge::ForgeLineError;
use crate::slave::repo_secrets::{RepoSecrets, SecretLineError};
use std::ffi::{CStr, OsString};
use std::fmt;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Credential-store lines, separated by newlines or spaces.
pub(crate) const INLINE: &str = "GIT_CREDENTIALS";
/// A file of such lines (a Docker secret, say), mode 0400 or 0600.
pub(crate) const FILE: &str = "GIT_CREDENTIALS_FILE";
/// The settings of earlier versions, which gave one password to every host.
const RETIRED: [&str; 3] = ["GIT_USERNAME", "GIT_PASSWORD", "GIT_NETRC"];
/// Set by the slave for itself when it restarts: the memfd holding the lines.
const HANDOVER: &str = "SLAVE_CREDENTIALS_FD";
const MEMFD_NAME: &CStr = c"ci-git-credentials";
/// Forge lines (`<kind> <api base> <token>`), and a file of them.
pub(crate) const FORGES: &str = "SLAVE_FORGES";
pub(crate) const FORGES_FILE: &str = "SLAVE_FORGES_FILE";
/// Separates the git lines from the forge lines in the memfd.
const FORGES_MARK: &str = "#forges\n";
/// Secrets per repository (`<NAME> <repo glob> <branch glob> <value>` lines).
pub(crate) const SECRETS_FILE: &str = "SLAVE_SECRETS_FILE";
/// Separates the forge lines from the secrets' lines in the memfd.
const SECRETS_MARK: &str = "#secrets\n";

/// The secrets taken out of the environment.
#[derive(Debug, Default)]
pub struct Taken {
    pub git: Credentials,
    pub forges: crate::slave::forge::Forges,
    pub secrets: RepoSecrets,
}

/// One credential: where it may go, and what it is.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credential {
    /// Lower case; an IPv6 address in brackets.
    host: String,
    port: u16,
    /// `""` (the whole host) or `/a/b`, no trailing `/`.
    path: String,
    username: String,
    password: String,
}

/// Every configured credential. Debug output names hosts, never values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials(Vec<Credential>);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({})", self.hosts())
    }
}

/// Takes the credentials out of the environment; call it first thing in
/// `main`, before any thread exists. When GIT_CREDENTIALS or
/// GIT_CREDENTIALS_FILE is set, it checks them, then restarts the slave
/// (same executable and arguments) without them, handing the lines over in a
/// memfd; it returns in the restarted process. SLAVE_FORGES,
/// SLAVE_FORGES_FILE and SLAVE_SECRETS_FILE are taken the same way.
pub fn take() -> Result<Taken, SecretsError> {
    for name in RETIRED {
        if set(name).is_some() {
            return Err(SecretsError::Retired(name));
        }
    }
    if let Some(fd) = std::env::var_os(HANDOVER) {
        std::env::remove_var(HANDOVER);
        let text = read_handover(&fd)?;
        let (git, rest) = text.split_once(FORGES_MARK).unwrap_or((&text, ""));
        let (forges, secrets) = rest.split_once(SECRETS_MARK).unwrap_or((rest, ""));
        return Ok(Taken {
            git: Credentials::parse(git, "the credentials handed over at restart")?,
            forges: crate::slave::forge::Forges::parse(forges, "the forge tokens handed over at restart")?,
            secrets: RepoSecrets::parse(secrets, "the secrets handed over at restart")?,
        });
    }
    let (inline, file, forges, forges_file) = (set(INLINE), set(FILE), set(FORGES), set(FORGES_FILE));
    let secrets_file = set(SECRETS_FILE);
    if inline.is_none() && file.is_none() && forges.is_none() && forges_file.is_none() && secrets_file.is_none() {
        return Ok(Taken::default());
    }
    let mut all = Credentials::default();
    if let Some(value) = inline {
        let value = value.into_string().map_err(|_| SecretsError::NotUtf8(INLINE))?;
        all.0.extend(Credentials::parse(&value, INLINE)?.0);
    }
    if let Some(path) = file {
        all.0.extend(Credentials::parse(&read_file(FILE, &path)?, &format!("{FILE}={path:?}"))?.0);
    }
    let mut forge_lines = String::new();
    if let Some(value) = forges {
        let value = value.into_string().map_err(|_| SecretsError::NotUtf8(FORGES))?;
        forge_lines.push_str(&crate::slave::forge::Forges::parse(&value, FORGES)?.lines());
    }
    if let Some(path) = forges_file {
        let text = read_file(FORGES_FILE, &path)?;
        forge_lines.push_str(&crate::slave::forge::Forges::parse(&text, &format!("{FORGES_FILE}={path:?}"))?.lines());
    }
    let mut secret_lines = String::new();
    if let Some(path) = secrets_file {
        let text = read_file(SECRETS_FILE, &path)?;
        secret_lines = RepoSecrets::parse(&text, &format!("{SECRETS_FILE}={path:?}"))?.lines();
    }
    Err(restart_without_env(&format!("{}{FORGES_MARK}{forge_lines}{SECRETS_MARK}{secret_lines}", all.lines())))
}

/// A variable's value, when it is set and not blank.
fn set(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.to_string_lossy().trim().is_empty())
}

/// The file's lines; refused when anyone but its owner may read it, or when
/// its owner is neither root nor the slave's user.
fn read_file(name: &str, path: &OsString) -> Result<String, SecretsError> {
    let bad = |problem| SecretsError::File { what: format!("{name}={path:?}"), problem };
    let meta = std::fs::metadata(path).map_err(|e| bad(FileProblem::Read(e)))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(bad(FileProblem::Owner { uid: meta.uid(), me }));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(bad(FileProblem::Mode(meta.mode() & 0o7777)));
    }
    std::fs::read_to_string(path).map_err(|e| bad(FileProblem::Read(e)))
}

/// Why the secrets could not be taken out of the environment: the variable,
/// file or entry at fault (quoted), never a secret's value.
#[derive(Debug)]
pub enum SecretsError {
    /// A variable this slave no longer reads.
    Retired(&'static str),
    /// A variable whose value is not UTF-8.
    NotUtf8(&'static str),
    /// A file named by a variable; `what` is `NAME="path"`.
    File {
        what: String,
        problem: FileProblem,
    },
    /// An entry of a credential list: where (`source`, entry `number`) and why.
    Entry {
        source: String,
        number: usize,
        why: EntryError,
    },
    /// A line of a forge list.
    Forge(ForgeLineError),
    /// A line of the secrets file.
    RepoSecret(SecretLineError),
    /// The handover variable does not name a credentials memfd of this slave.
    NotHandover(OsString),
    HandoverUnreadable(std::io::Error),
    /// The memfd for the restarted slave cannot be made.
    NoMemfd(std::io::Error),
    /// ... or written.
    NoHandover(std::io::Error),
    /// The slave cannot restart itself without the variables.
    Restart(std::io::Error),
}

/// What is wrong with a secrets file.
#[derive(Debug)]
pub enum FileProblem {
    Read(std::io::Error),
    /// Owned by `uid`, neither the slave's user (`me`) nor root.
    Owner {
        uid: u32,
        me: u32,
    },
    /// Readable by others: its mode.
    Mode(u32),
}

/// What is wrong with one credential entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    ClearText,
    /// Not `https://...` at all.
    Form,
    NoUserInfo,
    NoToken,
    BadUser,
    BadToken,
    EmptyUserOrToken,
    /// The `host[:port]` part, quoted.
    BadHost(String),
    QueryInPath,
}

/// The form every credential entry takes.
const FORM: &str = "expected https://<user>:<token>@<host>[:<port>][/<path>]";

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryError::ClearText => f.write_str("http:// is refused: the credential would travel in clear text; write https://"),
            EntryError::Form => f.write_str(FORM),
            EntryError::NoUserInfo => write!(f, "no <user>:<token>@ before the host; {FORM}"),
            EntryError::NoToken => write!(f, "no :<token> after the user; {FORM}"),
            EntryError::BadUser => f.write_str("the user is not valid percent-encoded text without control characters"),
            EntryError::BadToken => f.write_str("the token is not valid percent-encoded text without control characters"),
            EntryError::EmptyUserOrToken => write!(f, "empty user or token; {FORM}"),
            EntryError::BadHost(hostport) => write!(f, "{hostport:?} is not a host name or address with an optional port"),
            EntryError::QueryInPath => f.write_str("a path prefix cannot hold `?` or `#`"),
        }
    }
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretsError::Retired(name) => write!(
                f,
                "{name} is no longer read: it gave one password to whatever host a push named, over http:// too. \
                 Bind each credential to its host instead: GIT_CREDENTIALS='https://<user>:<token>@<host>' (one per host, \
                 separated by spaces or newlines), or the same lines in a file named by GIT_CREDENTIALS_FILE"
            ),
            SecretsError::NotUtf8(name) => write!(f, "{name}: not UTF-8"),
            SecretsError::File { what, problem: FileProblem::Read(e) } => write!(f, "{what}: cannot read: {e}"),
            SecretsError::File { what, problem: FileProblem::Owner { uid, me } } => {
                write!(f, "{what}: belongs to uid {uid}; it must belong to the slave's user (uid {me}) or root")
            }
            SecretsError::File { what, problem: FileProblem::Mode(mode) } => write!(
                f,
                "{what}: mode {mode:04o} lets other users read it; give it mode 0400 or 0600 (a Swarm secret: `mode: 0400`; \
                 a bind-mounted file: chmod 600 on the host)"
            ),
            SecretsError::Entry { source, number, why } => write!(f, "{source}, entry {number}: {why}"),
            SecretsError::Forge(e) => e.fmt(f),
            SecretsError::RepoSecret(e) => e.fmt(f),
            SecretsError::NotHandover(fd) => write!(f, "{HANDOVER}={fd:?}: not a credentials memfd of this slave"),
            SecretsError::HandoverUnreadable(e) => write!(f, "{HANDOVER}: cannot read: {e}"),
            SecretsError::NoMemfd(e) => write!(f, "cannot hand the credentials over (memfd_create): {e}"),
            SecretsError::NoHandover(e) => write!(f, "cannot hand the credentials over: {e}"),
            SecretsError::Restart(e) => write!(f, "cannot restart the slave without its credentials in the environment: {e}"),
        }
    }
}

impl std::error::Error for SecretsError {}

impl From<SecretLineError> for SecretsError {
    fn from(e: SecretLineError) -> SecretsError {
        SecretsError::RepoSecret(e)
    }
}

impl From<ForgeLineError> for SecretsError {
    fn from(e: ForgeLineError) -> SecretsError {
        SecretsError::Forge(e)
    }
}

/// Restarts this executable without the credential variables, the lines in
/// a memfd it inherits. Returns only when that fails.
fn restart_without_env(lines: &str) -> SecretsError {
    // SAFETY: memfd_create takes a NUL-terminated name; no MFD_CLOEXEC, so
    // the restarted slave inherits it. The fd is owned by `file` from here.
    let fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), 0) };
    if fd < 0 {
        return SecretsError::NoMemfd(std::io::Error::last_os_error());
    }
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    if let Err(e) = file.write_all(lines.as_bytes()).and_then(|_| file.rewind()) {
        return SecretsError::NoHandover(e);
    }
    let fd = file.into_raw_fd();
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "slave".into());
    let err = Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env_remove(INLINE)
        .env_remove(FILE)
        .env_remove(FORGES)
        .env_remove(FORGES_FILE)
        .env_remove(SECRETS_FILE)
        .env(HANDOVER, fd.to_string())
        .exec();
    SecretsError::Restart(err)
}

/// Reads and closes the memfd named by SLAVE_CREDENTIALS_FD.
fn read_handover(fd: &OsString) -> Result<String, SecretsError> {
    let bad = || SecretsError::NotHandover(fd.clone());
    let fd: i32 = fd.to_str().and_then(|s| s.parse().ok()).filter(|n| *n > 2).ok_or_else(bad)?;
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).map_err(|_| bad())?;
    if !target.to_string_lossy().starts_with(&format!("/memfd:{}", MEMFD_NAME.to_string_lossy())) {
        return Err(bad());
    }
    // SAFETY: the fd is open (read_link saw it) and ours alone; File closes it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(SecretsError::HandoverUnreadable)?;
    Ok(text)
}

impl Credentials {
    /// Parses credential-store lines (separated by newlines or spaces; lines
    /// starting with `#` are comments). Errors name `source` and the entry,
    /// never a value.
    pub(crate) fn parse(text: &str, source: &str) -> Result<Credentials, SecretsError> {
        let entries = text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(str::split_whitespace);
        entries
            .enumerate()
            .map(|(i, e)| parse_entry(e).map_err(|why| SecretsError::Entry { source: source.to_string(), number: i + 1, why }))
            .collect::<Result<_, _>>()
            .map(Credentials)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `host[:port][/path]` of each credential, comma-separated (for logs).
    pub fn hosts(&self) -> String {
        self.0.iter().map(|c| format!("{}{}", c.authority(), c.path)).collect::<Vec<_>>().join(",")
    }

    /// The credential for `url`: https only; same host and port; the longest
    /// path prefix that matches (whole path components; `.git` and a
    /// trailing `/` ignored).
    pub(crate) fn for_url(&self, url: &str) -> Option<&Credential> {
        let (host, port, path) = https_parts(url)?;
        self.0.iter().filter(|c| c.host == host && c.port == port && path_under(&path, &c.path)).max_by_key(|c| c.path.len())
    }

    /// Configures a git command (before its subcommand) for `url`: no
    /// credential helper from any configuration file, and when a credential
    /// matches, one helper scoped by git itself to `https://<host>[:<port>]`
    /// that answers `get` from a pipe filled now. Nothing in git's
    /// environment, no file. Keep `cmd` until it has been spawned.
    pub(crate) fn configure(&self, cmd: &mut Command, url: Option<&str>) -> std::io::Result<()> {
        cmd.arg("-c").arg("credential.helper=");
        let Some(cred) = url.and_then(|u| self.for_url(u)) else { return Ok(()) };
        let (reader, mut writer) = std::io::pipe()?;
        writer.write_all(format!("username={}\npassword={}\n", cred.username, cred.password).as_bytes())?;
        drop(writer);
        let fd = reader.as_raw_fd();
        // `cat /proc/self/fd/N`, not `<&N`: git runs helpers with sh, which may
        // not take two-digit descriptors.
        cmd.arg("-c")
            .arg(format!("credential.https://{}.helper=!f() {{ test \"$1\" = get && cat /proc/self/fd/{fd}; }}; f", cred.authority()));
        // SAFETY: between fork and exec the closure only calls fcntl on a
        // descriptor that it owns (moved in), to let the child inherit it.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(reader.as_raw_fd(), libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// `text` with every password replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for c in &self.0 {
            if c.password.len() >= 3 && out.contains(&c.password) {
                out = out.replace(&c.password, "***");
            }
        }
        out
    }

    /// The credential-store lines again (values percent-encoded).
    fn lines(&self) -> String {
        self.0.iter().map(|c| format!("https://{}:{}@{}{}\n", encode(&c.username), encode(&c.password), c.authority(), c.path)).collect()
    }
}

impl Credential {
    /// `host` or `host:port` (port 443 left out), as git's URL scoping takes it.
    fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn parse_entry(entry: &str) -> Result<Credential, EntryError> {
    let lower = entry.to_ascii_lowercase();
    if lower.starts_with("http://") {
        return Err(EntryError::ClearText);
    }
    if !lower.starts_with("https://") {
        return Err(EntryError::Form);
    }
    let rest = &entry["https://".len()..];
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
        return Err(EntryError::NoUserInfo);
    };
    let (user, token) = userinfo.split_once(':').ok_or(EntryError::NoToken)?;
    let username = decode(user).ok_or(EntryError::BadUser)?;
    let password = decode(token).ok_or(EntryError::BadToken)?;
    if username.is_empty() || password.is_empty() {
        return Err(EntryError::EmptyUserOrToken);
    }
    let (host, port) = host_port(hostport).ok_or_else(|| EntryError::BadHost(hostport.to_string()))?;
    if path.contains(['?', '#']) {
        return Err(EntryError::QueryInPath);
    }
    Ok(Credential { host, port, path: normalize_path(path), username, password })
}

/// `(host, port, path)` of an https URL; None for any other scheme.
fn https_parts(url: &str) -> Option<(String, u16, String)> {
    let rest = url.get(..8).filter(|s| s.eq_ignore_ascii_case("https://")).map(|_| &url[8..])?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = host_port(hostport)?;
    let path = &rest[end..];
    let path = &path[..path.find(['?', '#']).unwrap_or(path.len())];
    Some((host, port, normalize_path(path)))
}

fn host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return None;
        }
        (format!("[{}]", addr.to_ascii_lowercase()), after)
    } else {
        let (host, after) = s.find(':').map_or((s, ""), |i| s.split_at(i));
        if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_') {
            return None;
        }
        (host.to_ascii_lowercase(), after)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => 443,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => return None,
    };
    Some((host, port))
}

/// `/a/b/` and `/a/b.git` → `/a/b`; `/` → ``.
fn normalize_path(path: &str) -> String {
    let p = path.trim_end_matches('/');
    p.strip_suffix(".git").unwrap_or(p).trim_end_matches('/').to_string()
}

/// Whether `path` is `prefix` or lies under it (whole components).
fn path_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// Percent-decoding; None for a bad escape, invalid UTF-8 or a control
/// character (git's credential protocol is line-based).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().filter(|v| !v.chars().any(char::is_control))
}

fn encode(s: &str) -> String {
    crate::payload::percent_encode(s, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(text: &str) -> Credentials {
        Credentials::parse(text, "test").unwrap()
    }

    #[test]
    fn entries_parse_with_percent_decoding_comments_and_spaces() {
        let c = creds("# ops\nhttps://ci%40acme:t%2Fk%3An@Git.Example.com/acme/ https://u:p@[::1]:8443\n\n  https://x:y@host:444/a.git");
        assert_eq!(c.0.len(), 3);
        assert_eq!((c.0[0].username.as_str(), c.0[0].password.as_str()), ("ci@acme", "t/k:n"));
        assert_eq!((c.0[0].host.as_str(), c.0[0].port, c.0[0].path.as_str()), ("git.example.com", 443, "/acme"));
        assert_eq!((c.0[1].host.as_str(), c.0[1].port, c.0[1].path.as_str()), ("[::1]", 8443, ""));
        assert_eq!((c.0[2].port, c.0[2].path.as_str()), (444, "/a"));
        assert_eq!(c.hosts(), "git.example.com/acme,[::1]:8443,host:444/a");
        assert_eq!(Credentials::parse(&c.lines(), "again").unwrap(), c, "{}", c.lines());
    }

    #[test]
    fn bad_entries_are_refused_without_showing_the_token() {
        let cases = [
            ("http://u:SECRET@host", "http:// is refused"),
            ("ssh://u:SECRET@host", "expected https://"),
            ("https://host/x", "no <user>:<token>@"),
            ("https://SECRET@host", "no :<token>"),
            ("https://u:@host", "empty user or token"),
            ("https://u:SECRET%0A@host", "the token is not valid"),
            ("https://u:SECRET%zz@host", "the token is not valid"),
            ("https://u:SECRET@host:0", "is not a host name"),
            ("https://u:SECRET@host:99999", "is not a host name"),
            ("https://u:SECRET@ho=st", "is not a host name"),
            ("https://u:SECRET@host/a?b", "cannot hold"),
        ];
        for (entry, want) in cases {
            let err = Credentials::parse(&format!("https://ok:ok@fine {entry}"), "GIT_CREDENTIALS").unwrap_err().to_string();
            assert!(err.starts_with("GIT_CREDENTIALS, entry 2: "), "{entry}: {err}");
            assert!(err.contains(want), "{entry}: {err}");
            assert!(!err.contains("SECRET"), "{entry}: the error shows the token: {err}");
        }
    }

    #[test]
    fn a_url_gets_the_credential_of_its_https_host_port_and_longest_path() {
        let c = creds("https://a:1@git.example.com https://b:2@git.example.com/acme https://c:3@git.example.com:8443 https://d:4@other");
        let user = |url: &str| c.for_url(url).map(|c| c.username.clone());
        assert_eq!(user("https://git.example.com/x/y.git").as_deref(), Some("a"));
        assert_eq!(user("HTTPS://GIT.example.com:443/acme/app.git").as_deref(), Some("b"));
        assert_eq!(user("https://someone@git.example.com/acme").as_deref(), Some("b"));
        assert_eq!(user("https://git.example.com/acme-evil/app.git").as_deref(), Some("a"));
        assert_eq!(user("https://git.example.com:8443/acme/app.git").as_deref(), Some("c"));
        assert_eq!(user("https://git.example.com:8444/app.git"), None);
        assert_eq!(user("http://git.example.com/acme/app.git"), None);
        assert_eq!(user("git@git.example.com:acme/app.git"), None);
        assert_eq!(user("ssh://git.example.com/acme/app.git"), None);
        assert_eq!(user("file:///git.example.com/acme"), None);
        assert_eq!(user("https://git.example.com.evil.net/acme"), None);
        assert_eq!(user("https://evil.net?git.example.com/acme"), None);
        assert_eq!(user("https://git.example.com@evil.net/acme"), None);
    }

    /// What real git's `credential fill` answers for `url` with the slave's
    /// configuration for it (the same `configure` the workspace calls).
    fn git_fill(c: &Credentials, configured_for: &str, asked: &str) -> String {
        let mut cmd = Command::new("git");
        c.configure(&mut cmd, Some(configured_for)).unwrap();
        cmd.args(["credential", "fill"])
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        child.stdin.take().unwrap().write_all(format!("url={asked}\n\n").as_bytes()).unwrap();
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    }

    #[test]
    fn git_gets_the_credential_for_its_https_host_only() {
        let c = creds("https://ci-user:tok%2Fen@git.example.com:8443/acme");
        let url = "https://git.example.com:8443/acme/app.git";
        assert_eq!(git_fill(&c, url, url), "protocol=https\nhost=git.example.com:8443\nusername=ci-user\npassword=tok/en\n");
        // Redirected or rewritten to plain http, another port or another host:
        // git itself does not ask the helper.
        for asked in ["http://git.example.com:8443/acme/app.git", "https://git.example.com/acme/app.git", "https://evil.net:8443/acme"] {
            assert_eq!(git_fill(&c, url, asked), "", "{asked}");
        }
        // No credential configured for the URL: no helper at all.
        assert_eq!(git_fill(&c, "https://git.example.com:8443/other/x.git", url), "");
        assert_eq!(git_fill(&c, "http://git.example.com:8443/acme/app.git", "http://git.example.com:8443/acme/app.git"), "");
    }
}
