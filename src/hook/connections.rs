//! The hook's open connections, at most HOOK_MAX_CONNECTIONS. At the cap a
//! new connection is not refused: the oldest one still waiting for (or
//! trickling) its request is closed instead, so clients that hold sockets
//! without finishing requests cannot lock everyone else out — a flood only
//! ever closes its own oldest members.

use std::collections::BTreeMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) struct Connections {
    cap: usize,
    next: AtomicU64,
    /// By age: the first entry is the oldest connection.
    open: Mutex<BTreeMap<u64, Entry>>,
}

struct Entry {
    /// A handle on the socket, to close it from the accept loop.
    stream: TcpStream,
    since: Instant,
    /// Its thread is reading a request (or waiting for one); false while a
    /// worker answers it or a log is streamed to it.
    reading: Arc<AtomicBool>,
}

/// A connection's place among the open ones; dropping it gives the place back.
pub(crate) struct Ticket {
    id: u64,
    connections: Arc<Connections>,
    reading: Arc<AtomicBool>,
}

impl Ticket {
    /// Marks whether the connection is reading a request (then it may be
    /// closed to make room) or being answered (then it is not).
    pub fn reading(&self, reading: bool) {
        self.reading.store(reading, Ordering::SeqCst);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.connections.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl Connections {
    pub fn new(cap: usize) -> Arc<Connections> {
        Arc::new(Connections { cap: cap.max(1), next: AtomicU64::new(0), open: Mutex::new(BTreeMap::new()) })
    }

    /// Takes `stream` in, closing the oldest reading connection first when
    /// the cap is reached; `None` (the new one is closed) only when every
    /// open connection is being answered.
    pub fn admit(self: &Arc<Self>, stream: &TcpStream) -> Option<Ticket> {
        let handle = stream.try_clone().ok()?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.cap {
            let oldest = open.iter().find(|(_, e)| e.reading.load(Ordering::SeqCst)).map(|(id, _)| *id)?;
            let evicted = open.remove(&oldest).expect("found above");
            let _ = evicted.stream.shutdown(Shutdown::Both);
            log::info!(
                "http.evicted open={} age_ms={}: at HOOK_MAX_CONNECTIONS, the oldest connection still reading its request is closed",
                self.cap,
                evicted.since.elapsed().as_millis()
            );
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let reading = Arc::new(AtomicBool::new(true));
        open.insert(id, Entry { stream: handle, since: Instant::now(), reading: Arc::clone(&reading) });
        Some(Ticket { id, connections: Arc::clone(self), reading })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn at_the_cap_the_oldest_reading_connection_makes_room() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let connections = Connections::new(2);
        let (mut first_client, first) = pair(&listener);
        let (mut second_client, second) = pair(&listener);
        let t1 = connections.admit(&first).unwrap();
        let t2 = connections.admit(&second).unwrap();
        t1.reading(false); // being answered: never closed to make room
        let (_third_client, third) = pair(&listener);
        let t3 = connections.admit(&third).expect("room made by closing the second");
        assert_eq!(connections.len(), 2);
        t3.reading(false);
        let (_fourth_client, fourth) = pair(&listener);
        assert!(connections.admit(&fourth).is_none(), "every open connection is being answered");
        // A place given back is taken without closing anyone.
        drop(t3);
        let (_fifth_client, fifth) = pair(&listener);
        let _t5 = connections.admit(&fifth).expect("a free place");
        assert_eq!(connections.len(), 2);
        drop(t2);
        let mut byte = [0u8; 1];
        second_client.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        assert_eq!(second_client.read(&mut byte).unwrap(), 0, "the oldest reading connection was closed");
        first_client.set_read_timeout(Some(std::time::Duration::from_millis(50))).unwrap();
        assert!(first_client.read(&mut byte).is_err(), "the answered connection stays open (its read times out)");
        drop(t1);
    }
}
