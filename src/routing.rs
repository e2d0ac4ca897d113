//! Hints → cluster; CRC32(repo) mod N → slave index. No I/O. The cluster
//! choice itself — the first live cluster, by (name length, name), whose
//! tokens include every hint — runs inside the queue's enqueue script, so it
//! reads live membership in the same atomic step that queues the job.

/// The capabilities a cluster name offers: `slave-jdk8-sbt` → slave, jdk8,
/// sbt. `None` when the name is not `slave` or `slave-<cap>-...`.
pub fn cluster_tokens(name: &str) -> Option<Vec<String>> {
    let mut parts = name.split('-');
    if parts.next() != Some("slave") {
        return None;
    }
    let mut tokens = vec!["slave".to_string()];
    for p in parts {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        tokens.push(p.to_ascii_lowercase());
    }
    Some(tokens)
}

/// Hints from a request path: `/JDK8+SBT` → jdk8, sbt (lower-cased).
pub fn parse_hints(path: &str) -> Vec<String> {
    path.trim_matches('/').split(['+', ' ']).filter(|h| !h.is_empty()).map(str::to_ascii_lowercase).collect()
}

/// CRC32 (IEEE) of the repository's full name.
pub fn repo_hash(repo: &str) -> u32 {
    crc32fast::hash(repo.as_bytes())
}

/// The slave index inside a cluster of `n` live slaves.
pub fn slave_index(repo: &str, n: u32) -> u32 {
    repo_hash(repo) % n.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_of_cluster_names() {
        assert_eq!(cluster_tokens("slave").unwrap(), vec!["slave"]);
        assert_eq!(cluster_tokens("slave-JDK8-sbt").unwrap(), vec!["slave", "jdk8", "sbt"]);
        assert!(cluster_tokens("worker").is_none());
        assert!(cluster_tokens("slave--x").is_none());
    }

    #[test]
    fn hints_are_lower_cased_tokens() {
        assert_eq!(parse_hints("/JDK8+SBT"), vec!["jdk8", "sbt"]);
        assert!(parse_hints("/").is_empty());
    }

    #[test]
    fn index_is_crc32_mod_n() {
        // python3 -c "import zlib; print(zlib.crc32(b'acme/app'))"
        assert_eq!(repo_hash("acme/app"), 3908819768);
        assert_eq!(slave_index("acme/app", 3), 3908819768 % 3);
        assert_eq!(slave_index("acme/app", 0), 0);
    }
}
