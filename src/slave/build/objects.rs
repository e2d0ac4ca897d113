//! A mirror's git objects read in this process, so that a build whose
//! steps are all reused starts no `git cat-file` or `git ls-tree` (a
//! process each, about a tenth of such a build). Loose objects, and objects
//! in version 2 packs with version 2 indexes (read in place, a few small
//! reads per lookup, never a whole index), their deltas resolved. Every
//! object handed out is hashed and checked against its id. Anything else —
//! an id not found (an alternate, a pack made since), a chain of deltas
//! deeper than [`MAX_DEPTH`], an object over [`MAX_SIZE`], a damaged file —
//! is `None`, and the caller asks git.

use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Largest object (and delta base) read here.
pub const MAX_SIZE: usize = 8 << 20;
/// What a version 2 pack starts with.
pub const PACK_HEADER: &[u8] = b"PACK\0\0\0\x02";
/// Most deltas followed to a whole object (git's default `--depth` is 50).
const MAX_DEPTH: usize = 64;

/// An object's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Commit,
    Tree,
    Blob,
    Tag,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Commit => "commit",
            Kind::Tree => "tree",
            Kind::Blob => "blob",
            Kind::Tag => "tag",
        }
    }

    fn from_pack(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Commit,
            2 => Kind::Tree,
            3 => Kind::Blob,
            4 => Kind::Tag,
            _ => return None,
        })
    }
}

/// One pack and its index, opened.
struct Pack {
    idx: File,
    pack: File,
    /// Objects in the pack.
    count: u32,
}

/// The objects of one repository (`<git dir>/objects`).
pub struct Objects {
    dir: PathBuf,
    packs: Vec<Pack>,
}

impl Objects {
    /// The objects of the bare repository `git_dir`, its packs' indexes
    /// opened (not read).
    pub fn open(git_dir: &Path) -> Objects {
        let dir = git_dir.join("objects");
        let mut packs = Vec::new();
        for entry in std::fs::read_dir(dir.join("pack")).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "idx") {
                if let Some(pack) = Pack::open(&path) {
                    packs.push(pack);
                }
            }
        }
        Objects { dir, packs }
    }

    /// The object `id` (40 hex digits): its kind and content.
    pub fn read(&self, id: &str) -> Option<(Kind, Vec<u8>)> {
        let raw = hex20(id)?;
        let (kind, data) = self.read_raw(&raw, 0)?;
        (object_id(kind, &data) == raw).then_some((kind, data))
    }

    /// Whether `id` is a commit here (read and checked, as [`Objects::read`]).
    pub fn is_commit(&self, id: &str) -> bool {
        matches!(self.read(id), Some((Kind::Commit, _)))
    }

    /// The tree of commit `id`.
    pub fn commit_tree(&self, id: &str) -> Option<String> {
        let (kind, data) = self.read(id)?;
        let hex = data.strip_prefix(b"tree ")?.get(..40)?;
        (kind == Kind::Commit && data.get(45) == Some(&b'\n')).then(|| String::from_utf8_lossy(hex).into_owned())
    }

    /// The entry at `path` (components without `/` at either end) under
    /// the tree `tree`: its mode (octal text, six digits as git prints it)
    /// and id; `Ok(None)` when there is none; `Err` when an object on the
    /// way cannot be read here.
    pub fn entry(&self, tree: &str, path: &str) -> Result<Option<(String, String)>, ()> {
        let mut at = (String::from("040000"), tree.to_string());
        for name in path.split('/') {
            if at.0 != "040000" {
                return Ok(None);
            }
            let (kind, data) = self.read(&at.1).ok_or(())?;
            if kind != Kind::Tree {
                return Err(());
            }
            let found = tree_entries(&data).ok_or(())?.find(|(_, n, _)| *n == name.as_bytes()).map(|(mode, _, id)| (mode, id));
            match found {
                Some(next) => at = next,
                None => return Ok(None),
            }
        }
        Ok(Some(at))
    }

    /// Kind and content, unchecked; `depth` deltas deep.
    fn read_raw(&self, id: &[u8; 20], depth: usize) -> Option<(Kind, Vec<u8>)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let hex = to_hex(id);
        if let Ok(file) = File::open(self.dir.join(&hex[..2]).join(&hex[2..])) {
            return loose(file);
        }
        self.packs.iter().find_map(|p| p.find(id).and_then(|at| self.unpack(p, at, depth)))
    }

    /// The object at `offset` in pack `p`.
    fn unpack(&self, p: &Pack, offset: u64, depth: usize) -> Option<(Kind, Vec<u8>)> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut head = [0u8; 32];
        let n = p.pack.read_at(&mut head, offset).ok()?;
        let head = &head[..n];
        let (code, size, mut used) = entry_header(head)?;
        if size > MAX_SIZE {
            return None;
        }
        let base = match code {
            6 => {
                let (back, len) = ofs_delta_offset(&head[used..])?;
                used += len;
                Some(self.unpack(p, offset.checked_sub(back)?, depth + 1)?)
            }
            7 => {
                let mut base_id = [0u8; 20];
                base_id.copy_from_slice(head.get(used..used + 20)?);
                used += 20;
                Some(self.read_raw(&base_id, depth + 1)?)
            }
            _ => None,
        };
        let data = inflate(&p.pack, offset + used as u64, size)?;
        match base {
            Some((kind, base)) => Some((kind, apply_delta(&base, &data)?)),
            None => Some((Kind::from_pack(code)?, data)),
        }
    }
}

impl Pack {
    fn open(idx_path: &Path) -> Option<Pack> {
        let idx = File::open(idx_path).ok()?;
        let pack = File::open(idx_path.with_extension("pack")).ok()?;
        let mut head = [0u8; 8];
        idx.read_exact_at(&mut head, 0).ok()?;
        if head != *b"\xfftOc\0\0\0\x02" {
            return None;
        }
        let count = read_u32(&idx, 8 + 255 * 4)?;
        Some(Pack { idx, pack, count })
    }

    /// The offset of `id` in the pack, by a binary search of the index's
    /// ids within the fan-out's bounds.
    fn find(&self, id: &[u8; 20]) -> Option<u64> {
        let first = id[0] as u64;
        let lo = if first == 0 { 0 } else { read_u32(&self.idx, 8 + (first - 1) * 4)? };
        let hi = read_u32(&self.idx, 8 + first * 4)?;
        let (mut lo, mut hi) = (lo as u64, (hi.min(self.count)) as u64);
        let ids = 8 + 256 * 4;
        while lo < hi {
            let mid = (lo + hi) / 2;
            let mut here = [0u8; 20];
            self.idx.read_exact_at(&mut here, ids + mid * 20).ok()?;
            match here.cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let n = self.count as u64;
                    let offsets = ids + n * 20 + n * 4;
                    let small = read_u32(&self.idx, offsets + mid * 4)?;
                    if small & 0x8000_0000 == 0 {
                        return Some(small as u64);
                    }
                    let mut big = [0u8; 8];
                    self.idx.read_exact_at(&mut big, offsets + n * 4 + (small & 0x7fff_ffff) as u64 * 8).ok()?;
                    return Some(u64::from_be_bytes(big));
                }
            }
        }
        None
    }
}

/// Most bytes of a received pack's objects, inflated, held at once.
pub const MAX_UNPACKED: usize = 16 << 20;

impl Objects {
    /// Stores every object of `pack` (a version 2 pack, thin or not, as
    /// `git unpack-objects` takes it) as a loose object of this repository,
    /// each id computed from its content here. `Err` (and the caller asks
    /// git) for anything it does not take: a bad checksum, a delta whose
    /// base is neither in the pack nor readable here, more than
    /// [`MAX_UNPACKED`] bytes inflated. Returns how many objects it wrote.
    pub fn store_pack(&self, pack: &[u8]) -> Result<usize, String> {
        let body = pack.len().checked_sub(20).filter(|&n| n >= 12).ok_or("a pack too short")?;
        if pack[..8] != *PACK_HEADER || Sha1::digest(&pack[..body])[..] != pack[body..] {
            return Err("not a version 2 pack with its checksum".into());
        }
        let count = u32::from_be_bytes(pack[8..12].try_into().unwrap_or_default()) as usize;
        let mut held: Vec<(u64, Kind, Vec<u8>, [u8; 20])> = Vec::with_capacity(count.min(4096));
        // By id, for REF_DELTA bases in the pack: a lookup each, not a scan (a hostile pack of
        // 4 MiB holds some 190,000 entries).
        let mut by_id: HashMap<[u8; 20], usize> = HashMap::new();
        let (mut at, mut total) = (12usize, 0usize);
        for _ in 0..count {
            let offset = at as u64;
            let (code, size, used) = entry_header(pack.get(at..body).ok_or("an entry past the end")?).ok_or("a bad entry header")?;
            at += used;
            let base = match code {
                6 => {
                    let (back, len) = ofs_delta_offset(&pack[at..body]).ok_or("a bad delta offset")?;
                    at += len;
                    let from = offset.checked_sub(back).ok_or("a delta before the pack")?;
                    let i = held.binary_search_by_key(&from, |h| h.0).map_err(|_| "a delta's base is not an entry")?;
                    Some((held[i].1, held[i].2.clone()))
                }
                7 => {
                    let id: [u8; 20] = pack.get(at..at + 20).ok_or("an entry past the end")?.try_into().unwrap_or_default();
                    at += 20;
                    match by_id.get(&id).map(|&i| &held[i]) {
                        Some(h) => Some((h.1, h.2.clone())),
                        None => Some(self.read(&to_hex(&id)).ok_or("a delta's base is not here")?),
                    }
                }
                _ => None,
            };
            if size > MAX_SIZE {
                return Err("an object over the size read here".into());
            }
            // Every base counts too: the work a pack asks for is bounded, not only what it stores.
            total += base.as_ref().map_or(0, |(_, b)| b.len());
            let (data, used) = inflate_slice(&pack[at..body], size).ok_or("an entry that does not inflate")?;
            at += used;
            let (kind, data) = match base {
                Some((kind, base)) => (kind, apply_delta(&base, &data).ok_or("a delta that does not apply")?),
                None => (Kind::from_pack(code).ok_or("an entry of no known type")?, data),
            };
            total += data.len();
            if total > MAX_UNPACKED {
                return Err(format!("more than {MAX_UNPACKED} bytes inflated"));
            }
            let id = object_id(kind, &data);
            by_id.insert(id, held.len());
            held.push((offset, kind, data, id));
        }
        if at != body {
            return Err("bytes after the last entry".into());
        }
        for (_, kind, data, id) in &held {
            self.write_loose(*kind, data, id).map_err(|e| format!("cannot write an object: {e}"))?;
        }
        Ok(held.len())
    }

    /// One loose object, written beside and renamed into place (read only,
    /// as git leaves them); one already there is kept.
    fn write_loose(&self, kind: Kind, data: &[u8], id: &[u8; 20]) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let hex = to_hex(id);
        let dir = self.dir.join(&hex[..2]);
        let path = dir.join(&hex[2..]);
        if path.exists() {
            return Ok(());
        }
        if !dir.is_dir() {
            // Readable by the build user's clone through its alternates, whatever the slave's umask.
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let tmp = dir.join(format!("tmp_obj_{}_{}", std::process::id(), &hex[2..12]));
        let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(data.len() / 2 + 64), flate2::Compression::fast());
        z.write_all(format!("{} {}\0", kind.name(), data.len()).as_bytes())?;
        z.write_all(data)?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o444).open(&tmp)?;
        let written = file
            .write_all(&z.finish()?)
            .and_then(|_| file.set_permissions(std::fs::Permissions::from_mode(0o444)))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// Exactly `size` bytes inflated from the start of `input`, and how many
/// bytes of it the stream took.
fn inflate_slice(input: &[u8], size: usize) -> Option<(Vec<u8>, usize)> {
    let mut z = flate2::Decompress::new(true);
    let mut out = Vec::with_capacity(size + 1);
    loop {
        let before = (z.total_in(), z.total_out());
        let status = z.decompress_vec(&input[z.total_in() as usize..], &mut out, flate2::FlushDecompress::Finish).ok()?;
        if status == flate2::Status::StreamEnd {
            break;
        }
        if out.len() > size || (z.total_in(), z.total_out()) == before {
            return None;
        }
        out.reserve(1);
    }
    (out.len() == size).then_some((out, z.total_in() as usize))
}

/// The id git gives an object of `kind` holding `data`.
fn object_id(kind: Kind, data: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(format!("{} {}\0", kind.name(), data.len()));
    h.update(data);
    h.finalize().into()
}

/// A tree's entries: mode (six octal digits), name, id.
pub fn tree_entries(data: &[u8]) -> Option<impl Iterator<Item = (String, &[u8], String)> + '_> {
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let nul = space + rest[space..].iter().position(|&b| b == 0)?;
        let mode = std::str::from_utf8(&rest[..space])
            .ok()
            .filter(|m| !m.is_empty() && m.len() <= 6 && m.bytes().all(|b| (b'0'..=b'7').contains(&b)))?;
        let id: [u8; 20] = rest.get(nul + 1..nul + 21)?.try_into().ok()?;
        out.push((format!("{mode:0>6}"), &rest[space + 1..nul], to_hex(&id)));
        rest = &rest[nul + 21..];
    }
    Some(out.into_iter())
}

/// The type git prints for an entry's mode.
pub fn mode_kind(mode: &str) -> &'static str {
    match mode {
        "040000" => "tree",
        "160000" => "commit",
        _ => "blob",
    }
}

/// A loose object's kind and content.
fn loose(file: File) -> Option<(Kind, Vec<u8>)> {
    let mut raw = Vec::new();
    let limit = (MAX_SIZE + 64) as u64;
    flate2::read::ZlibDecoder::new(file.take(limit)).take(limit).read_to_end(&mut raw).ok()?;
    let nul = raw.iter().position(|&b| b == 0)?;
    let (kind, size) = std::str::from_utf8(&raw[..nul]).ok()?.split_once(' ')?;
    let size: usize = size.parse().ok()?;
    let kind = [Kind::Commit, Kind::Tree, Kind::Blob, Kind::Tag].into_iter().find(|k| k.name() == kind)?;
    let data = raw.split_off(nul + 1);
    (size == data.len()).then_some((kind, data))
}

/// A pack entry's type, size and header length.
fn entry_header(head: &[u8]) -> Option<(u8, usize, usize)> {
    let first = *head.first()?;
    let code = (first >> 4) & 7;
    let mut size = (first & 15) as usize;
    let (mut shift, mut used, mut more) = (4u32, 1usize, first & 0x80 != 0);
    while more {
        let b = *head.get(used)?;
        if shift > 60 {
            return None;
        }
        size |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        used += 1;
        more = b & 0x80 != 0;
    }
    Some((code, size, used))
}

/// An `OFS_DELTA`'s distance back to its base, and the bytes it took.
fn ofs_delta_offset(head: &[u8]) -> Option<(u64, usize)> {
    let mut b = *head.first()?;
    let mut back = (b & 0x7f) as u64;
    let mut used = 1;
    while b & 0x80 != 0 {
        b = *head.get(used)?;
        back = back.checked_add(1)?.checked_mul(128)? | (b & 0x7f) as u64;
        used += 1;
    }
    Some((back, used))
}

/// Exactly `size` bytes inflated from `file` at `offset`.
fn inflate(file: &File, offset: u64, size: usize) -> Option<Vec<u8>> {
    struct At<'a>(&'a File, u64);
    impl Read for At<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read_at(buf, self.1)?;
            self.1 += n as u64;
            Ok(n)
        }
    }
    let mut out = Vec::with_capacity(size);
    let reader = std::io::BufReader::with_capacity(16 * 1024, At(file, offset));
    flate2::bufread::ZlibDecoder::new(reader).take(size as u64 + 1).read_to_end(&mut out).ok()?;
    (out.len() == size).then_some(out)
}

/// A delta's result on `base`.
fn apply_delta(base: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    fn varint(d: &[u8], at: &mut usize) -> Option<usize> {
        let (mut value, mut shift) = (0usize, 0u32);
        loop {
            let b = *d.get(*at)?;
            *at += 1;
            if shift > 56 {
                return None;
            }
            value |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
    }
    let mut at = 0;
    if varint(delta, &mut at)? != base.len() {
        return None;
    }
    let size = varint(delta, &mut at)?;
    if size > MAX_SIZE {
        return None;
    }
    let mut out = Vec::with_capacity(size);
    while at < delta.len() {
        let op = delta[at];
        at += 1;
        if op & 0x80 != 0 {
            let (mut from, mut len) = (0usize, 0usize);
            for i in 0..4 {
                if op & (1 << i) != 0 {
                    from |= (*delta.get(at)? as usize) << (8 * i);
                    at += 1;
                }
            }
            for i in 0..3 {
                if op & (0x10 << i) != 0 {
                    len |= (*delta.get(at)? as usize) << (8 * i);
                    at += 1;
                }
            }
            if len == 0 {
                len = 0x10000;
            }
            out.extend_from_slice(base.get(from..from.checked_add(len)?)?);
        } else if op != 0 {
            out.extend_from_slice(delta.get(at..at + op as usize)?);
            at += op as usize;
        } else {
            return None;
        }
        if out.len() > size {
            return None;
        }
    }
    (out.len() == size).then_some(out)
}

fn read_u32(file: &File, at: u64) -> Option<u32> {
    let mut b = [0u8; 4];
    file.read_exact_at(&mut b, at).ok()?;
    Some(u32::from_be_bytes(b))
}

fn hex20(id: &str) -> Option<[u8; 20]> {
    if id.len() != 40 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(id.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn to_hex(id: &[u8; 20]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    /// A repository with packed objects (deltas among them) and loose ones.
    fn repo(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("objects-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src/deep/er")).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        let body: String = (0..400).map(|i| format!("line {i} of a file long enough to delta\n")).collect();
        for round in 0..3 {
            for i in 0..40 {
                std::fs::write(dir.join(format!("src/f{i}.txt")), format!("{body}{round} {i}\n")).unwrap();
            }
            std::fs::write(dir.join("src/deep/er/x.sh"), format!("echo {round}\n")).unwrap();
            std::fs::write(dir.join("integration.yml"), format!("step: x{round}\nshell: true\n")).unwrap();
            let _ = std::fs::remove_file(dir.join("link"));
            std::os::unix::fs::symlink("src/f1.txt", dir.join("link")).unwrap();
            git(&dir, &["add", "-A"]);
            git(&dir, &["update-index", "--chmod=+x", "src/deep/er/x.sh"]);
            git(&dir, &["-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", &format!("round {round}")]);
            if round == 1 {
                git(&dir, &["repack", "-q", "-adf", "--depth=5", "--window=50"]);
            }
        }
        dir
    }

    #[test]
    fn every_object_reads_as_git_reads_it_packed_deltified_or_loose() {
        let dir = repo("all");
        let objects = Objects::open(&dir.join(".git"));
        let verify = String::from_utf8(git(&dir, &["verify-pack", "-v", &find_idx(&dir)])).unwrap();
        assert!(verify.lines().filter(|l| l.split_whitespace().count() >= 7).count() > 10, "the pack holds deltas: {verify}");
        let all = String::from_utf8(git(&dir, &["cat-file", "--batch-all-objects", "--batch-check"])).unwrap();
        let (mut packed, mut loose_seen) = (0, 0);
        for line in all.lines() {
            let mut f = line.split(' ');
            let (id, kind) = (f.next().unwrap(), f.next().unwrap());
            let (got_kind, data) = objects.read(id).unwrap_or_else(|| panic!("{line} not read"));
            assert_eq!(got_kind.name(), kind, "{line}");
            assert_eq!(data, git(&dir, &["cat-file", kind, id]), "{line}");
            let hex = id.to_string();
            if dir.join(".git/objects").join(&hex[..2]).join(&hex[2..]).exists() {
                loose_seen += 1;
            } else {
                packed += 1;
            }
        }
        assert!(packed > 50 && loose_seen > 10, "packed {packed}, loose {loose_seen}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn find_idx(dir: &Path) -> String {
        let pack = dir.join(".git/objects/pack");
        let idx = std::fs::read_dir(&pack).unwrap().flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|e| e == "idx"));
        idx.unwrap().to_string_lossy().into_owned()
    }

    #[test]
    fn entries_are_what_ls_tree_lists() {
        let dir = repo("entries");
        let objects = Objects::open(&dir.join(".git"));
        for commit in ["HEAD", "HEAD~1", "HEAD~2"] {
            let sha = String::from_utf8(git(&dir, &["rev-parse", commit])).unwrap().trim().to_string();
            let tree = objects.commit_tree(&sha).unwrap();
            let paths = [
                "src",
                "src/f3.txt",
                "src/deep/er/x.sh",
                "src/deep",
                "link",
                "integration.yml",
                "gone",
                "src/gone",
                "link/x",
                "src/f1.txt/x",
            ];
            for path in paths {
                let ls = String::from_utf8(git(&dir, &["--literal-pathspecs", "ls-tree", "--full-tree", &sha, "--", path])).unwrap();
                let want = ls.lines().next().map(|l| l.split_once('\t').unwrap().0.to_string());
                let got = objects.entry(&tree, path).unwrap().map(|(mode, id)| format!("{mode} {} {id}", mode_kind(&mode)));
                assert_eq!(got, want, "{commit} {path}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_object_whose_content_is_not_its_id_is_not_read() {
        let dir = repo("forged");
        let objects = Objects::open(&dir.join(".git"));
        let id = String::from_utf8(git(&dir, &["rev-parse", "HEAD:integration.yml"])).unwrap().trim().to_string();
        let path = dir.join(".git/objects").join(&id[..2]).join(&id[2..]);
        assert!(objects.read(&id).is_some());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, b"blob 5\0evil\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, z.finish().unwrap()).unwrap();
        assert_eq!(objects.read(&id), None);
        for bad in ["", "zz", &"A".repeat(40), &format!("+{}", &id[1..])] {
            assert_eq!(objects.read(bad), None, "{bad}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[test]
    fn a_thin_pack_is_stored_loose_and_whole() {
        let dir = repo("thin");
        let bare = dir.with_extension("bare");
        let _ = std::fs::remove_dir_all(&bare);
        git(&dir, &["init", "-q", "--bare", &bare.to_string_lossy()]);
        git(&dir, &["push", "-q", &bare.to_string_lossy(), "HEAD~1:refs/heads/main"]);
        git(&bare, &["repack", "-q", "-ad"]);
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&dir).args(["pack-objects", "-q", "--thin", "--stdout", "--revs", "--delta-base-offset"]);
        let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"HEAD\n^HEAD~1\n").unwrap();
        let pack = child.wait_with_output().unwrap().stdout;
        let objects = Objects::open(&bare);
        let mut damaged = pack.clone();
        damaged[20] ^= 1;
        assert!(objects.store_pack(&damaged).unwrap_err().contains("checksum"));
        let n = objects.store_pack(&pack).unwrap();
        assert!(n >= 40, "{n} objects");
        let head = String::from_utf8(git(&dir, &["rev-parse", "HEAD"])).unwrap().trim().to_string();
        git(&bare, &["update-ref", "refs/heads/main", &head]);
        git(&bare, &["fsck", "--connectivity-only", "--no-dangling"]);
        assert_eq!(git(&bare, &["cat-file", "blob", "main:src/f3.txt"]), git(&dir, &["cat-file", "blob", "HEAD:src/f3.txt"]));
        let mode = std::fs::metadata(bare.join("objects").join(&head[..2]).join(&head[2..])).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o444);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&bare);
    }
    /// A pack entry's header: type `code`, `size`.
    fn entry(code: u8, mut size: usize) -> Vec<u8> {
        let mut out = vec![(code << 4) | (size & 15) as u8];
        size >>= 4;
        while size > 0 {
            *out.last_mut().unwrap() |= 0x80;
            out.push((size & 0x7f) as u8);
            size >>= 7;
        }
        out
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, data).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn a_pack_asking_for_unbounded_work_is_refused() {
        // One 200 KB blob and 20,000 deltas of one byte of it: each makes a 1-byte blob, but
        // resolving them all copies 4 GB of base.
        let blob = vec![b'x'; 200_000];
        let id: [u8; 20] = Sha1::digest([format!("blob {}\0", blob.len()).as_bytes(), &blob].concat()).into();
        let delta = vec![0xc0, 0x9a, 0x0c, 0x01, 0x90, 0x01];
        let n = 20_000u32;
        let mut pack = [PACK_HEADER.to_vec(), (n + 1).to_be_bytes().to_vec()].concat();
        pack.extend(entry(3, blob.len()));
        pack.extend(deflate(&blob));
        let one = [entry(7, delta.len()), id.to_vec(), deflate(&delta)].concat();
        for _ in 0..n {
            pack.extend(&one);
        }
        let sum = Sha1::digest(&pack);
        pack.extend(sum);
        let dir = std::env::temp_dir().join(format!("objects-work-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("objects")).unwrap();
        let err = Objects::open(&dir).store_pack(&pack).unwrap_err();
        assert!(err.contains("bytes inflated"), "{err}");
        assert!(std::fs::read_dir(dir.join("objects")).unwrap().next().is_none(), "nothing written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
