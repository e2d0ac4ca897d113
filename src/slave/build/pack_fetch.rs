//! One pushed commit brought into a mirror over git's protocol v2 without
//! git's client: one request (`want <sha>`, `have <the branch's tip>`,
//! `done`, a thin pack), answered by `git upload-pack --stateless-rpc` for a
//! `file://` URL or by one POST to `<url>/git-upload-pack` over http(s).
//!
//! `git fetch` of one new commit is five processes and, over http, three
//! round trips: fetch, upload-pack (or remote-http, whose GET of
//! `info/refs` and POST of `ls-refs` each start the server's CGI again),
//! pack-objects, unpack-objects and a `rev-list` connectivity walk. Here the
//! commit's sha comes from the push (protocol v2 serves a `want` of any
//! object: no ref listing), the pack's objects are stored loose in this
//! process ([`crate::slave::build::objects`], each id computed from its
//! content), and the branch's loose ref is written like git writes it (a
//! `.lock` renamed). Anything unexpected — no ref to offer as `have`,
//! another answer than a pack, a pack over [`MAX_PACK`], a delta base not
//! readable here, a credential for the URL — is `Err`, and the caller runs
//! `git fetch` as before.
//!
//! Not done, unlike `git fetch`: the connectivity walk. A server that sends
//! a pack without objects the commit needs breaks only its own mirror (one
//! per repository and URL): that commit's checkout fails with git's missing
//! object error, and a reset build (`reset`) clones the mirror afresh.

use crate::slave::build::objects::PACK_HEADER;
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes of an answer kept (the pack and its framing); a larger push
/// is fetched by git, which streams it.
pub const MAX_PACK: usize = 4 << 20;
/// Longest an http answer may take, whatever the build's deadline.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Says what we are; the `git/` prefix is what forges look for in a smart client.
const USER_AGENT: &str = concat!("git/ci-backend-", env!("CARGO_PKG_VERSION"));

/// The protocol v2 `fetch` request for `want`, offering `have`.
pub fn request(want: &str, have: &str) -> Vec<u8> {
    let pkt = |text: &str| format!("{:04x}{text}", text.len() + 4);
    let (want, have) = (format!("want {want}\n"), format!("have {have}\n"));
    let mut out = pkt("command=fetch\n") + &pkt("object-format=sha1\n") + "0001";
    for arg in ["no-progress\n", "ofs-delta\n", "thin-pack\n", &want, &have, "done\n"] {
        out += &pkt(arg);
    }
    out += "0000";
    out.into_bytes()
}

/// Writes the pack an answer to [`request`] carries into `out`: the
/// `packfile` section's band 1, band 2 (progress) skipped, band 3 (the
/// server's error) an `Err` with its text. Returns the pack's length.
pub fn write_pack(answer: &[u8], out: &mut impl Write) -> Result<u64, String> {
    let mut rest = answer;
    let mut in_pack = false;
    let mut written = 0u64;
    loop {
        let (head, tail) = rest.split_at_checked(4).ok_or("the answer ended inside a packet")?;
        let len = std::str::from_utf8(head).ok().and_then(|h| usize::from_str_radix(h, 16).ok()).ok_or("not a packet line")?;
        match len {
            0 if in_pack => break,
            0..=2 => {
                rest = tail;
                continue;
            }
            3 => return Err("a packet of length 3".into()),
            _ => {}
        }
        let (data, tail) = tail.split_at_checked(len - 4).ok_or("the answer ended inside a packet")?;
        rest = tail;
        if !in_pack {
            // Sections before the pack (`acknowledgments`, `shallow-info`) are not asked for.
            in_pack = data == b"packfile\n";
            if !in_pack && data.starts_with(b"ERR ") {
                return Err(format!("the server answered {:?}", String::from_utf8_lossy(&data[4..]).trim_end()));
            }
            continue;
        }
        match data.split_first() {
            Some((1, pack)) => {
                // The header may come split across packets.
                let at = (written as usize).min(PACK_HEADER.len());
                let n = (PACK_HEADER.len() - at).min(pack.len());
                if pack[..n] != PACK_HEADER[at..at + n] {
                    return Err("the answer is not a version 2 pack".into());
                }
                out.write_all(pack).map_err(|e| format!("cannot write the pack: {e}"))?;
                written += pack.len() as u64;
            }
            Some((2, _)) => {}
            Some((3, why)) => return Err(format!("the server failed: {}", String::from_utf8_lossy(why).trim_end())),
            _ => return Err("a packet of no known band".into()),
        }
    }
    if written < PACK_HEADER.len() as u64 {
        return Err("the answer holds no pack".into());
    }
    Ok(written)
}

/// The repository a `file://` URL names, when it is a plain absolute path
/// (git decodes `%` escapes: such a URL is left to git).
pub fn local_path(url: &str) -> Option<&Path> {
    let path = url.strip_prefix("file://")?;
    (path.starts_with('/') && !path.contains('%')).then(|| Path::new(path))
}

/// Whether `url` is an http(s) URL this client may POST to: no user-info
/// (git's credentials are git's), no query or fragment.
pub fn plain_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else { return false };
    let authority = rest.split('/').next().unwrap_or("");
    !authority.is_empty() && !authority.contains('@') && !url.contains(['?', '#']) && !url.bytes().any(|b| b <= b' ' || b == 0x7f)
}

/// POSTs `body` to `<url>/git-upload-pack` and returns the answer's bytes
/// (at most [`MAX_PACK`]), within `timeout` (at most 30 seconds). No
/// redirect is followed and no credential is sent. A host that gave no git
/// answer (no connection, TLS it does not take — a private CA git knows of
/// and `SLAVE_CA_FILE` does not name, [`crate::slave::trust`] — another
/// status or content type) is left to git for [`SHUNNED_FOR`].
pub fn post(url: &str, body: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    let host = origin(url);
    if shunned(&host, None) {
        return Err(format!("{host} gave no git answer to an earlier request (left to git for a while)"));
    }
    let agent = AGENT.get_or_init(|| {
        let config = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).user_agent(USER_AGENT);
        config.tls_config(crate::slave::trust::tls()).build().into()
    });
    let endpoint = format!("{}/git-upload-pack", url.trim_end_matches('/'));
    let sent = agent
        .post(&endpoint)
        .header("Content-Type", "application/x-git-upload-pack-request")
        .header("Accept", "application/x-git-upload-pack-result")
        .header("Git-Protocol", "version=2")
        .config()
        .timeout_global(Some(timeout.min(HTTP_TIMEOUT)))
        .build()
        .send(body);
    let mut answer = sent.map_err(|e| {
        shunned(&host, Some(Instant::now()));
        format!("POST git-upload-pack: {e}")
    })?;
    let status = answer.status();
    let kind = answer.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if status != 200 || kind != "application/x-git-upload-pack-result" {
        shunned(&host, Some(Instant::now()));
        return Err(format!("POST git-upload-pack answered {status} ({kind})"));
    }
    answer.body_mut().with_config().limit(MAX_PACK as u64).read_to_vec().map_err(|e| format!("POST git-upload-pack: {e}"))
}

/// How long a host that gave no git answer is left to git.
pub const SHUNNED_FOR: Duration = Duration::from_secs(600);
/// Most hosts remembered (all forgotten when more).
const MAX_SHUNNED: usize = 1024;

/// `scheme://authority` of an http(s) URL.
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    format!("{scheme}://{}", rest.split('/').next().unwrap_or(""))
}

/// Whether `host` is left to git; `Some(now)` remembers it from now.
fn shunned(host: &str, since: Option<Instant>) -> bool {
    static HOSTS: OnceLock<Mutex<HashMap<String, Instant>>> = OnceLock::new();
    let mut hosts = HOSTS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(now) = since {
        if hosts.len() >= MAX_SHUNNED {
            hosts.clear();
        }
        hosts.insert(host.to_string(), now);
        return true;
    }
    match hosts.get(host) {
        Some(at) if at.elapsed() < SHUNNED_FOR => true,
        Some(_) => {
            hosts.remove(host);
            false
        }
        None => false,
    }
}

/// The loose ref file of branch `source` (`refs/heads/<name>`) in `mirror`,
/// when the name is one git writes as a plain path; `None` for any other.
fn loose_ref(mirror: &Path, source: &str) -> Option<PathBuf> {
    let branch = source.strip_prefix("refs/heads/")?;
    let plain = |c: &str| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock") && !c.bytes().any(|b| b < 0x20 || b == b'\\');
    (branch.split('/').all(plain) && !branch.contains("..")).then(|| mirror.join(source))
}

/// The sha the mirror holds for branch `source`, read as git reads it with
/// no process: its loose ref file, else its line in `packed-refs` (where a
/// clone leaves every branch). `None` for a link, a name git would refuse,
/// anything but 40 hex digits, or a `packed-refs` over [`MAX_PACKED_REFS`].
pub fn branch_tip(mirror: &Path, source: &str) -> Option<String> {
    let path = loose_ref(mirror, source)?;
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.is_file() => full_sha(std::fs::read_to_string(&path).ok()?.trim_end()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => packed_tip(mirror, source),
        _ => None,
    }
}

/// Most bytes of `packed-refs` read for one branch (some 16,000 refs); a
/// mirror with more offers no `have` from it, and git fetches.
pub const MAX_PACKED_REFS: u64 = 1 << 20;

/// `source`'s sha in the mirror's `packed-refs` (`<sha> <ref>` lines, after
/// a `#` header; a `^<sha>` line peels the tag above it).
fn packed_tip(mirror: &Path, source: &str) -> Option<String> {
    let path = mirror.join("packed-refs");
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() || meta.len() > MAX_PACKED_REFS {
        return None;
    }
    let text = std::fs::read(&path).ok()?;
    let line = text.split(|&b| b == b'\n').find(|line| line.get(41..) == Some(source.as_bytes()) && line.get(40) == Some(&b' '))?;
    full_sha(std::str::from_utf8(&line[..40]).ok()?)
}

fn full_sha(text: &str) -> Option<String> {
    (text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())).then(|| text.to_string())
}

/// Points the mirror's loose ref `source` at `sha`, as git does: the new
/// value written to `<ref>.lock`, which is renamed over the ref. A `.lock`
/// already there (git at work, or a killed slave's) is an `Err`.
pub fn set_branch(mirror: &Path, source: &str, sha: &str) -> Result<(), String> {
    let path = loose_ref(mirror, source).ok_or_else(|| format!("{source:?} is not a plain branch name"))?;
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", lock.display());
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&lock).map_err(fail)?;
    let written = file
        .write_all(format!("{sha}\n").as_bytes())
        .and_then(|_| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
        .and_then(|_| std::fs::rename(&lock, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&lock);
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(data: &[u8]) -> Vec<u8> {
        let mut out = format!("{:04x}", data.len() + 4).into_bytes();
        out.extend(data);
        out
    }

    fn band(n: u8, data: &[u8]) -> Vec<u8> {
        pkt(&[&[n], data].concat())
    }

    #[test]
    fn the_request_is_what_git_sends_for_one_want() {
        let req = String::from_utf8(request(&"a".repeat(40), &"b".repeat(40))).unwrap();
        let want = format!(
            "0012command=fetch\n0017object-format=sha1\n00010010no-progress\n000eofs-delta\n000ethin-pack\n0032want {}\n0032have {}\n0009done\n0000",
            "a".repeat(40),
            "b".repeat(40)
        );
        assert_eq!(req, want);
    }

    #[test]
    fn the_pack_is_band_one_of_the_packfile_section() {
        let pack = b"PACK\0\0\0\x02\0\0\0\x01rest";
        let answer = [pkt(b"packfile\n"), band(2, b"counting"), band(1, &pack[..6]), band(1, &pack[6..]), b"0000".to_vec()].concat();
        let mut out = Vec::new();
        assert_eq!(write_pack(&answer, &mut out), Ok(pack.len() as u64));
        assert_eq!(out, pack);
    }

    #[test]
    fn anything_else_is_an_error_naming_why() {
        let pack = band(1, b"PACK\0\0\0\x02\0\0\0\x01");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            ([pkt(b"packfile\n"), band(3, b"oops\n"), b"0000".to_vec()].concat(), "the server failed: oops"),
            ([pkt(b"ERR upload-pack: not our ref\n")].concat(), "not our ref"),
            ([pkt(b"packfile\n"), band(1, b"GARBAGE!"), b"0000".to_vec()].concat(), "not a version 2 pack"),
            ([pkt(b"packfile\n"), pack.clone()].concat(), "ended inside a packet"),
            ([pkt(b"packfile\n"), pack[..7].to_vec()].concat(), "ended inside a packet"),
            ([pkt(b"packfile\n"), b"0000".to_vec()].concat(), "holds no pack"),
            (b"zzzz".to_vec(), "not a packet line"),
            (b"0003".to_vec(), "length 3"),
            ([pkt(b"packfile\n"), band(7, b"x"), b"0000".to_vec()].concat(), "no known band"),
            (b"<html>".to_vec(), "not a packet line"),
        ];
        for (answer, says) in cases {
            let err = write_pack(&answer, &mut Vec::new()).unwrap_err();
            assert!(err.contains(says), "{err:?} for {:?}", String::from_utf8_lossy(&answer));
        }
    }

    #[test]
    fn only_plain_urls_are_taken() {
        assert_eq!(local_path("file:///srv/a.git"), Some(Path::new("/srv/a.git")));
        for url in ["file://host/a.git", "file:///a%20b", "/srv/a.git", "ssh://h/a", "file:relative"] {
            assert_eq!(local_path(url), None, "{url}");
        }
        assert!(plain_http("https://git.example.com/acme/app.git"));
        assert!(plain_http("http://127.0.0.1:8080/git/a.git"));
        for url in ["https://u:p@h/a.git", "https://h/a.git?x=1", "https://h/a#b", "https:///a", "ftp://h/a", "https://h/a b"] {
            assert!(!plain_http(url), "{url}");
        }
    }

    #[test]
    fn a_branch_is_read_and_written_like_git_does() {
        let dir = std::env::temp_dir().join(format!("pack-fetch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sha = "c".repeat(40);
        set_branch(&dir, "refs/heads/feature/x", &sha).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("refs/heads/feature/x")).unwrap(), format!("{sha}\n"));
        assert_eq!(branch_tip(&dir, "refs/heads/feature/x"), Some(sha.clone()));
        // A lock already there is git (or a killed slave) at work: not overwritten.
        std::fs::write(dir.join("refs/heads/main.lock"), "").unwrap();
        assert!(set_branch(&dir, "refs/heads/main", &sha).unwrap_err().contains("main.lock"));
        for name in ["refs/heads/../x", "refs/heads/.hidden", "refs/heads/a.lock", "refs/tags/v1", "refs/heads/a\\b"] {
            assert!(set_branch(&dir, name, &sha).is_err(), "{name}");
            assert_eq!(branch_tip(&dir, name), None, "{name}");
        }
        std::fs::write(dir.join("refs/heads/short"), "abc\n").unwrap();
        assert_eq!(branch_tip(&dir, "refs/heads/short"), None);
        std::os::unix::fs::symlink(dir.join("refs/heads/feature/x"), dir.join("refs/heads/link")).unwrap();
        assert_eq!(branch_tip(&dir, "refs/heads/link"), None, "a link is not followed");
        // A clone's packed refs; a loose ref wins over its packed line, as in git.
        let packed = format!(
            "# pack-refs with: peeled fully-peeled sorted \n{a} refs/heads/main\n{a} refs/heads/packed\n{b} refs/heads/packed/not\n{a} refs/tags/v1\n^{b}\n{short} refs/heads/bad\n",
            a = "a".repeat(40),
            b = "b".repeat(40),
            short = "a".repeat(39)
        );
        std::fs::write(dir.join("packed-refs"), packed).unwrap();
        assert_eq!(branch_tip(&dir, "refs/heads/packed"), Some("a".repeat(40)));
        assert_eq!(branch_tip(&dir, "refs/heads/main"), Some("a".repeat(40)), "no loose ref (only its lock): the packed line");
        std::fs::remove_file(dir.join("refs/heads/main.lock")).unwrap();
        set_branch(&dir, "refs/heads/main", &sha).unwrap();
        assert_eq!(branch_tip(&dir, "refs/heads/main"), Some(sha.clone()), "the loose ref wins");
        assert_eq!(branch_tip(&dir, "refs/heads/bad"), None);
        assert_eq!(branch_tip(&dir, "refs/heads/pack"), None, "a prefix of a name is not the name");
        std::fs::write(dir.join("packed-refs"), vec![b'#'; MAX_PACKED_REFS as usize + 1]).unwrap();
        assert_eq!(branch_tip(&dir, "refs/heads/packed"), None, "past the bound");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
