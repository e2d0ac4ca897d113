//! Hints → cluster; CRC32(repo) → slave index by the cluster's rule
//! ([`Routing`]: mod N, or jump consistent hashing). No I/O. The cluster
//! choice itself — the first live cluster, by (name length, name), whose
//! tokens include every hint — runs inside the queue's enqueue script, so it
//! reads live membership in the same atomic step that queues the job. That
//! script only *selects* the index from what [`Routing::points`] and
//! [`repo_hash`] computed here (Lua has doubles, not 64-bit integers); a
//! test in tests/routing.rs holds its selection against [`Routing::index`].

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

/// How a repository's index inside a cluster of N live slaves is chosen
/// (HOOK_ROUTING; agreed through Redis, see `store::queue::agree_routing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// CRC32(repo) mod N: going from N to N+1 slaves moves about N/(N+1)
    /// of the repositories.
    Mod,
    /// Jump consistent hash of CRC32(repo) (Lamping & Veach 2014): N to N+1
    /// moves about 1/(N+1) of them, only to the new slave.
    Jump,
}

impl Routing {
    pub fn parse(s: &str) -> Option<Routing> {
        match s {
            "mod" => Some(Routing::Mod),
            "jump" => Some(Routing::Jump),
            _ => None,
        }
    }

    /// The word HOOK_ROUTING, the stored rule and ENQUEUE's Lua use.
    pub fn as_str(self) -> &'static str {
        match self {
            Routing::Mod => "mod",
            Routing::Jump => "jump",
        }
    }

    /// The slave index of `repo` inside a cluster of `n` live slaves (0 when
    /// `n` is 0).
    pub fn index(self, repo: &str, n: u32) -> u32 {
        let n = n.max(1);
        match self {
            Routing::Mod => repo_hash(repo) % n,
            Routing::Jump => jump_hash(u64::from(repo_hash(repo)), n),
        }
    }

    /// What ENQUEUE's Lua selects the index from besides the CRC: for jump,
    /// the repository's [`jump_points`]; for mod, none.
    pub fn points(self, repo: &str) -> Vec<u32> {
        match self {
            Routing::Mod => vec![],
            Routing::Jump => jump_points(u64::from(repo_hash(repo))),
        }
    }
}

/// Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm"
/// (2014), figure 1. Each step draws the next bucket the key jumps to.
fn jump_step(key: &mut u64, b: i64) -> i64 {
    *key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
    ((b + 1) as f64 * ((1u64 << 31) as f64 / ((*key >> 33) + 1) as f64)) as i64
}

/// The paper's `JumpConsistentHash(key, num_buckets)`: a bucket in 0..n.
pub fn jump_hash(mut key: u64, n: u32) -> u32 {
    let (mut b, mut j) = (0i64, 0i64);
    while j < i64::from(n.max(1)) {
        b = j;
        j = jump_step(&mut key, b);
    }
    b as u32
}

/// Every bucket the jump hash of `key` visits below 2^32, ascending, from 0
/// (about ln 2^32 ≈ 22 of them): `jump_hash(key, n)` is the largest one
/// below `n` ([`select_point`]), for every `n` a u32 holds.
pub fn jump_points(mut key: u64) -> Vec<u32> {
    let mut points = vec![];
    let mut j = 0i64;
    while j <= i64::from(u32::MAX) {
        points.push(j as u32);
        j = jump_step(&mut key, j);
    }
    points
}

/// The largest of the ascending `points` below `n` (0 when none): the
/// selection ENQUEUE's Lua makes for jump.
pub fn select_point(points: &[u32], n: u32) -> u32 {
    points.iter().copied().take_while(|&p| p < n.max(1)).last().unwrap_or(0)
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

    /// Computed apart from this code: `python3 tests/fixtures/routing/table.py` (zlib.crc32
    /// and the paper's jump hash in Python). Name, CRC32, then mod and jump at each N of NS.
    const NS: [u32; 12] = [1, 2, 3, 4, 5, 7, 10, 16, 100, 1000, 65536, 4294967295];
    #[rustfmt::skip]
    const TABLE: [(&str, u32, [u32; 12], [u32; 12]); 10] = [
    ("acme/app", 3908819768, [0, 0, 2, 0, 3, 0, 8, 8, 68, 768, 56120, 3908819768], [0, 1, 1, 1, 1, 1, 1, 1, 35, 639, 16422, 1203399094]),
    ("initech-cloud/client-blog", 3286673700, [0, 0, 0, 0, 0, 2, 0, 4, 0, 700, 43300, 3286673700], [0, 1, 1, 1, 1, 5, 5, 5, 84, 84, 41101, 206027680]),
    ("allenur/pipeline-js", 3722039330, [0, 0, 2, 2, 0, 2, 0, 2, 30, 330, 53282, 3722039330], [0, 0, 0, 0, 0, 0, 7, 15, 58, 849, 41461, 654969688]),
    ("yara-hill/proud-cli-ts", 2255161241, [0, 1, 2, 1, 1, 4, 1, 9, 41, 241, 1945, 2255161241], [0, 0, 0, 0, 0, 0, 7, 7, 36, 493, 39953, 3140522570]),
    ("umbrella-oss/parser_hub-legacy", 1119690673, [0, 1, 1, 1, 3, 3, 3, 1, 73, 673, 8113, 1119690673], [0, 0, 0, 0, 0, 5, 7, 13, 13, 204, 3746, 4032068965]),
    ("torvalds/linux", 2055713681, [0, 1, 2, 1, 1, 0, 1, 1, 81, 681, 45969, 2055713681], [0, 1, 1, 3, 3, 3, 9, 9, 30, 959, 64006, 3757982839]),
    ("rust-lang/cargo", 2050653079, [0, 1, 1, 3, 4, 6, 9, 7, 79, 79, 31639, 2050653079], [0, 1, 1, 3, 3, 6, 6, 6, 25, 221, 35313, 3451943691]),
    ("a/b", 133447708, [0, 0, 1, 0, 3, 2, 8, 12, 8, 708, 16412, 133447708], [0, 0, 0, 0, 0, 6, 6, 6, 76, 76, 17146, 2181648915]),
    ("x/y.z-1_2", 4162184214, [0, 0, 0, 2, 4, 6, 4, 6, 14, 214, 58390, 4162184214], [0, 0, 0, 3, 4, 4, 4, 14, 86, 995, 31396, 62414873]),
    ("group/sub/deep/project", 306566341, [0, 1, 1, 1, 1, 4, 1, 5, 41, 341, 54469, 306566341], [0, 0, 2, 2, 2, 5, 5, 5, 35, 963, 47197, 464111947]),
    ];

    #[test]
    fn the_rules_match_an_independent_table() {
        for (name, crc, mods, jumps) in TABLE {
            assert_eq!(repo_hash(name), crc, "{name}");
            for (i, n) in NS.into_iter().enumerate() {
                assert_eq!(Routing::Mod.index(name, n), mods[i], "mod: {name} n={n}");
                assert_eq!(Routing::Jump.index(name, n), jumps[i], "jump: {name} n={n}");
                assert_eq!(select_point(&Routing::Jump.points(name), n), jumps[i], "jump points: {name} n={n}");
            }
        }
    }

    #[test]
    fn selecting_from_the_jump_points_is_the_jump_hash_for_n_up_to_1000() {
        for i in 0..500 {
            let name = format!("owner-{}/repo-{i}", i % 37);
            let key = u64::from(repo_hash(&name));
            let points = jump_points(key);
            assert_eq!(points[0], 0, "{name}");
            assert!(points.windows(2).all(|w| w[0] < w[1]), "{name}: {points:?}");
            assert!(points.len() < 64, "{name}: {} points", points.len());
            for n in 1..=1000 {
                assert_eq!(select_point(&points, n), jump_hash(key, n), "{name} n={n}");
            }
        }
    }

    #[test]
    fn routing_words_round_trip() {
        for r in [Routing::Mod, Routing::Jump] {
            assert_eq!(Routing::parse(r.as_str()), Some(r));
        }
        assert_eq!(Routing::parse("Jump"), None);
    }

    /// 10,000 names `<owner>/<project>-<i>`: the share of repositories that move when a cluster
    /// grows from N to N+1 slaves, and the busiest slave's load over the mean at N, for both
    /// rules. Printed with `cargo test --lib moved_fraction -- --nocapture` (BENCHMARKS.md).
    #[test]
    fn moved_fraction_and_balance_of_both_rules_for_n_2_to_16() {
        const OWNERS: [&str; 8] = ["acme", "initech-cloud", "umbrella-oss", "globex", "hooli", "yara-hill", "allenur", "stark-ind"];
        const PROJECTS: [&str; 6] = ["app", "api-server", "client-blog", "pipeline-js", "parser_hub", "infra"];
        let names: Vec<String> =
            (0..10_000).map(|i| format!("{}/{}-{i}", OWNERS[i % OWNERS.len()], PROJECTS[(i / OWNERS.len()) % PROJECTS.len()])).collect();
        let mut failures = vec![];
        println!("N   mod moved  jump moved  1/(N+1)  mod max/mean  jump max/mean");
        for n in 2..=16u32 {
            let least = 1.0 / f64::from(n + 1);
            let mut row = format!("{n:<3}");
            let mut balances = vec![];
            for rule in [Routing::Mod, Routing::Jump] {
                let moved = names.iter().filter(|r| rule.index(r, n) != rule.index(r, n + 1)).count() as f64 / names.len() as f64;
                let mut load = vec![0u32; n as usize];
                for r in &names {
                    load[rule.index(r, n) as usize] += 1;
                }
                let max_over_mean = f64::from(*load.iter().max().unwrap()) * f64::from(n) / names.len() as f64;
                balances.push(max_over_mean);
                row.push_str(&format!(" {:>9.1} %", moved * 100.0));
                let expected = if rule == Routing::Jump { least } else { 1.0 - least };
                if (moved - expected).abs() > expected / 10.0 {
                    failures.push(format!("{rule:?} N={n}: moved {moved:.4}, expected {expected:.4} within 10 %"));
                }
                if max_over_mean > 1.15 {
                    failures.push(format!("{rule:?} N={n}: max/mean {max_over_mean:.3} over 1.15 ({load:?})"));
                }
            }
            println!("{row} {:>7.1} % {:>13.3} {:>14.3}", least * 100.0, balances[0], balances[1]);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn index_is_crc32_mod_n() {
        // python3 -c "import zlib; print(zlib.crc32(b'acme/app'))"
        assert_eq!(repo_hash("acme/app"), 3908819768);
        assert_eq!(Routing::Mod.index("acme/app", 3), 3908819768 % 3);
        assert_eq!(Routing::Mod.index("acme/app", 0), 0);
        assert_eq!(Routing::Jump.index("acme/app", 0), 0);
        assert_eq!(Routing::Jump.index("acme/app", 1), 0);
    }
}
