//! A throw-away redis-server on a Unix socket for the store's unit tests
//! (`None` when redis-server is not installed: those tests then pass
//! without it; the integration tests need it anyway).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct TestRedis {
    pub conn: redis::Connection,
    child: Child,
    dir: std::path::PathBuf,
}

impl TestRedis {
    pub(crate) fn start() -> Option<TestRedis> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).ok()?;
        let dir = std::env::temp_dir().join(format!("ci-store-test-{}", u64::from_le_bytes(id)));
        std::fs::create_dir_all(&dir).ok()?;
        let sock = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&sock)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let url = format!("unix://{}", sock.display());
        let until = Instant::now() + Duration::from_secs(10);
        let mut guard = Guard(Some(child), dir.clone());
        loop {
            if let Ok(conn) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                let child = guard.0.take()?;
                return Some(TestRedis { conn, child, dir });
            }
            assert!(Instant::now() < until, "redis-server did not answer on {url}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Kills the server if starting it failed half-way.
struct Guard(Option<Child>, std::path::PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
