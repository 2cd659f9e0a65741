//! What every handler thread shares: the lab's configuration, its hub, its counters and its
//! addresses. Every lesson takes a `&Lab`; `server` builds one and hands it to each thread.

use crate::hub::Hub;
use crate::stats::{LessonCounters, Stats};
use crate::waiting_room::WaitingRoom;
use crate::Config;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// What every handler thread shares: the configuration, the hub and the counters.
pub struct Lab {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub stats: Stats,
    /// Long polls held without a thread (`--parking queue`).
    pub waiting_room: WaitingRoom,
    /// Where the HTTP server really listens (port 0 resolved).
    pub addr: SocketAddr,
    /// `ws://HOST:PORT/events/ws`: the WebSocket lesson's own listener.
    pub websocket_url: String,
    /// How often tiny_http's accept thread died and was replaced (`workarounds`).
    pub accept_restarts: Arc<AtomicU64>,
    /// How often it ended, routinely, because no connection came for `--idle-timeout`.
    pub accept_idle_replacements: Arc<AtomicU64>,
    /// Every Socket.IO session (`lessons::socket_io`).
    pub socket_io: crate::lessons::socket_io::SocketIo,
    /// Every Bayeux client (`lessons::bayeux`).
    pub bayeux: crate::lessons::bayeux::Bayeux,
}

impl Lab {
    /// Is `origin` one of the lab's own pages: the HTTP address, under either loopback name?
    /// (The WebSocket handshake and CORS both ask.)
    pub fn is_own_origin(&self, origin: &str) -> bool {
        let port = self.addr.port();
        origin == format!("http://{}", self.addr)
            || origin == format!("http://127.0.0.1:{port}")
            || origin == format!("http://localhost:{port}")
    }

    /// Counters for a lesson, with this request counted.
    pub fn count(&self, lesson: &'static str) -> LessonCounters {
        let counters = self.stats.lesson(lesson);
        counters.request();
        counters
    }
}

/// An id nobody can guess (Socket.IO sessions, Bayeux clients): 15 random bytes from the
/// kernel, base64url (20 characters).
pub fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 15];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom (not Linux): std's hasher keys are random per process.
        use std::hash::{BuildHasher, Hasher};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::UNIX_EPOCH
                    .elapsed()
                    .map_or(0, |d| d.as_nanos()),
            );
            let n = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&n[..chunk.len()]);
        }
    }
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}
