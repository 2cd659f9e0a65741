//! What every WebSocket endpoint shares: the lesson's `/events/ws`, Socket.IO's and
//! Atmosphere's transports. `server` chooses the endpoint by path (its upgrade `match`); the
//! endpoint checks its own request (path, `Origin`, parameters), then calls `accept`:
//!
//! 1. a refused check is answered with its status, as any HTTP request;
//! 2. the request must be HTTP/1.1 (or 400), `Sec-WebSocket-Version` 13 (or 426),
//!    `Sec-WebSocket-Key` 16 bytes of base64 (or 400);
//! 3. a place under `--max-parked` (or 503), taken only by a handshake that will be accepted;
//! 4. the lab writes the `101` itself, and the socket leaves HTTP for good
//!    (`Request::into_stream`), with whatever frames the client sent right behind its
//!    handshake.
//!
//! Also here: tungstenite's configuration for the lab's small frames, the socket as an
//! endpoint's one thread gives it to tungstenite (read only when the socket watcher has said
//! bytes are there; every write on a deadline), and frame sizes. The conversation itself,
//! the same for every endpoint, is `conversation`.

use crate::connection::Request;
use crate::http::HttpError;
use crate::stats::{GaugeGuard, Held, LessonCounters, Stats};
use crate::watcher::{SocketWatcher, Watch};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::WebSocket;

/// An accepted handshake: the socket, what the client already sent on it, and its place.
pub struct Upgraded<'lab> {
    pub stream: Arc<TcpStream>,
    /// Frames the client sent right behind its handshake, already read.
    pub pending: Vec<u8>,
    /// The connection's number, for the logs (`ws N`).
    pub id: u64,
    pub place: Place<'lab>,
}

/// A WebSocket's place under `--max-parked` and in the WebSocket thread count, both given
/// back when it is dropped: keep it for as long as the socket is served.
pub struct Place<'lab> {
    _held: Held<'lab>,
    _thread: GaugeGuard<'lab>,
    /// The socket's place in the gate's count (`limits`), and among the sockets a stop
    /// shuts down: taken over from its HTTP connection.
    _counted: Option<crate::limits::Counted>,
    _registered: Option<crate::connection::Registered>,
    /// Its place in its client's share (`--max-connections-per-client`).
    _client: Option<crate::connection::ClientPlace>,
}

/// What a WebSocket held without a thread keeps of its `Place` (`Place::keep`): its places in
/// the gate's count, among the sockets a stop shuts down, and in its client's share. Its place
/// under `--max-parked` stays taken until `Stats::let_go`; it holds no thread.
pub struct KeptPlace {
    _counted: Option<crate::limits::Counted>,
    _registered: Option<crate::connection::Registered>,
    _client: Option<crate::connection::ClientPlace>,
}

impl Place<'_> {
    /// For a socket held without a thread (`waiting_room`): the thread's count is given back now, the
    /// place under `--max-parked` when the holder calls `Stats::let_go`.
    pub fn keep(self) -> KeptPlace {
        self._held.keep();
        KeptPlace {
            _counted: self._counted,
            _registered: self._registered,
            _client: self._client,
        }
    }
}

impl<'lab> Upgraded<'lab> {
    /// The socket as tungstenite's, for an endpoint with one thread (`ReadWhenNoticed`): the
    /// connection's number and the place come along. Frames the client sent behind its
    /// handshake are in tungstenite's buffer: read them (`next_frame`) before the first wait,
    /// as no notice will come for them.
    pub fn into_watched_websocket(
        self,
        config: WebSocketConfig,
    ) -> (Box<WatchedSocket>, u64, Place<'lab>) {
        let stream = ReadWhenNoticed::new(self.stream);
        let socket =
            WebSocket::from_partially_read(stream, self.pending, Role::Server, Some(config));
        (Box::new(socket), self.id, self.place)
    }
}

/// Steps 1–4 for a request whose endpoint has checked it (`checked`). `None` when the
/// handshake was refused (and answered). (It takes the lab's counters and limits rather than
/// the `Lab`, so that this module, which the lessons use, uses no lesson back.)
pub fn accept<'lab, T>(
    stats: &'lab Stats,
    max_parked: usize,
    counters: &LessonCounters,
    request: Request,
    checked: Result<T, (u16, String)>,
) -> io::Result<Option<(T, Upgraded<'lab>)>> {
    let id = request.number();
    // 1. The endpoint's own checks.
    let checked = match checked {
        Ok(checked) => checked,
        Err((status, message)) => {
            log::debug!("ws {id} handshake refused with {status}: {message}");
            HttpError::new(status, message).reply(request, counters)?;
            return Ok(None);
        }
    };
    // 2. The protocol's: HTTP/1.1 at least (RFC 6455 §4.1), version 13, a key.
    if request.head().minor_version == 0 {
        let message = "a WebSocket handshake needs HTTP/1.1";
        HttpError::bad_request(message).reply(request, counters)?;
        return Ok(None);
    }
    if request.header("Sec-WebSocket-Version") != Some("13") {
        HttpError::new(426, "this server speaks WebSocket version 13")
            .with_header("Sec-WebSocket-Version", "13")
            .reply(request, counters)?;
        return Ok(None);
    }
    let key = match request.header("Sec-WebSocket-Key") {
        Some(key)
            if data_encoding::BASE64
                .decode(key.as_bytes())
                .is_ok_and(|k| k.len() == 16) =>
        {
            key.to_string()
        }
        _ => {
            let message = "Sec-WebSocket-Key must be 16 bytes in base64";
            HttpError::bad_request(message).reply(request, counters)?;
            return Ok(None);
        }
    };
    // 3. A place under --max-parked, taken only by a handshake that will be accepted.
    let Some(held) = stats.try_hold(&stats.websockets, max_parked) else {
        HttpError::all_held(max_parked).reply(request, counters)?;
        return Ok(None);
    };
    // 4. The 101, and the socket leaves HTTP for good.
    let taken = request.into_stream();
    let stream = taken.stream;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    (&*stream).write_all(answer.as_bytes())?;
    counters.wrote(answer.len());
    // From now on the thread reads only bytes the socket watcher has seen, so no read waits;
    // pings and heartbeats find dead peers.
    stream.set_read_timeout(None)?;
    let upgraded = Upgraded {
        stream,
        pending: taken.pending,
        id,
        place: Place {
            _held: held,
            // (The teacher's view counts the socket under the lesson its path belongs to:
            // `server::handle` did, as for any request.)
            _thread: stats.websocket_threads.enter(),
            _counted: taken.counted,
            _registered: taken.registered,
            _client: taken.place,
        },
    };
    Ok(Some((checked, upgraded)))
}

/// Limits, and buffers sized for the lab's small frames: tungstenite's defaults (128 KiB to
/// read into, 128 KiB to gather writes in) stay resident once touched, in every connection.
/// 1 KiB reads a chat line in one go (a bigger frame takes several reads); a write buffer of
/// 0 sends each frame at once, which our writers want anyway (they flush after every frame).
/// REFERENCE.md ("Where a held connection's memory goes", Appendix A) measures both.
pub fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(1024)
        .write_buffer_size(0)
}

/// The socket of an endpoint with one thread: the thread reads only when the socket watcher
/// (`watcher`) has said bytes are there, and no read ever waits: it takes what is there
/// (`read_what_is_there`), and once nothing is, it is `WouldBlock`, which tungstenite takes as
/// "the rest has not come yet", keeping what it has of a frame. Writes go to the socket.
pub struct ReadWhenNoticed {
    /// Shared with the socket watcher while it watches (`SocketWatcher::watch`).
    stream: Arc<TcpStream>,
    /// Set by the watcher's notice, taken by the one read it lets through.
    noticed: Arc<AtomicBool>,
    /// `--write-timeout`, as the connection set it on the socket: the time a whole message
    /// has to go out (`begin_write`).
    write_timeout: Option<Duration>,
    /// When the message being written must be out.
    write_deadline: Option<Instant>,
    /// Held without a thread (`waiting_room`): no write ever waits; what the socket does not take
    /// stays in tungstenite's buffer (`WouldBlock`).
    never_wait: bool,
    /// The socket's send timeout as last set: it bounds each blocking `write`, and is brought
    /// down to what is left of the deadline when they differ by more than `SLACK`.
    send_timeout: Option<Duration>,
}

/// How far past its deadline a write may block, at most (see `ReadWhenNoticed::write`).
const SLACK: Duration = Duration::from_millis(250);

impl ReadWhenNoticed {
    pub fn new(stream: Arc<TcpStream>) -> Self {
        let write_timeout = stream.write_timeout().ok().flatten();
        ReadWhenNoticed {
            stream,
            noticed: Arc::default(),
            write_timeout,
            write_deadline: None,
            send_timeout: write_timeout,
            never_wait: false,
        }
    }

    /// A message (or a read, which may answer a ping or a close) begins: what it writes must
    /// be out within `--write-timeout` from now, however many pieces the kernel takes it in.
    /// (The socket's own send timeout starts again at every write that moves a byte: a
    /// client reading a trickle would hold the thread for ever.)
    pub fn begin_write(&mut self) {
        self.write_deadline = self.write_timeout.map(|timeout| Instant::now() + timeout);
    }

    /// From now on no write waits (a socket held without a thread), or, `false`, writes wait
    /// again, up to the deadline (a thread lent to end it).
    pub fn never_wait(&mut self, never: bool) {
        self.never_wait = never;
    }

    /// Watch the socket: when it has bytes (or its client hung up), the watcher lets one read
    /// through and calls `wake`, which must not block (a `try_send` to what the thread waits
    /// on). One notice per watch: `Watch::again` once what was there has been read.
    pub fn watch(
        &self,
        watcher: &SocketWatcher,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Watch> {
        let noticed = self.noticed.clone();
        watcher.watch(&self.stream, move || {
            noticed.store(true, Ordering::SeqCst);
            wake();
        })
    }

    /// A notice came that no read has taken yet: the thread checks this whenever it wakes.
    pub fn noticed(&self) -> bool {
        self.noticed.load(Ordering::SeqCst)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Read for ReadWhenNoticed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The notice is taken by the first read after it. (The watcher cannot notice again
        // meanwhile: the socket is out of its set until `Watch::again`.)
        let noticed = self.noticed.swap(false, Ordering::SeqCst);
        read_what_is_there(&self.stream, buf, noticed)
    }
}

/// `recv(MSG_DONTWAIT)`: whatever is there, never waiting, so a thread woken by one notice
/// reads a whole large message at once (a 60 KB one came back in 0.5 ms this way, and in
/// 5 ms at one read per notice: `ReadWhenNoticed`'s portable read).
#[cfg(all(unix, not(lab_portable)))]
fn read_what_is_there(stream: &TcpStream, buf: &mut [u8], _noticed: bool) -> io::Result<usize> {
    crate::connection::recv_without_waiting(stream, buf, 0)
}

/// With std alone: one read per notice, which returns at once (the watcher saw bytes, or the
/// end, and only this thread reads); any other read is `WouldBlock`.
#[cfg(any(not(unix), lab_portable))]
fn read_what_is_there(mut stream: &TcpStream, buf: &mut [u8], noticed: bool) -> io::Result<usize> {
    if !noticed {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    stream.read(buf)
}

impl Write for ReadWhenNoticed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.never_wait {
            return crate::connection::send_without_waiting(&self.stream, buf);
        }
        if let Some(deadline) = self.write_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let message = "--write-timeout passed before the message was out";
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            }
            // Most messages go out in one write well within the timeout already set: no
            // system call then.
            if self
                .send_timeout
                .is_none_or(|set| set.abs_diff(left) > SLACK)
            {
                self.stream.set_write_timeout(Some(left))?;
                self.send_timeout = Some(left);
            }
        }
        // BLOCKS: while the send buffer is full, until the message's deadline.
        (&*self.stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // a TcpStream has no buffer of its own
    }
}

/// A one-thread endpoint's socket, as tungstenite's.
pub type WatchedSocket = WebSocket<ReadWhenNoticed>;

/// The next frame among the bytes already read or noticed: `None` once the rest has not come
/// yet (the next notice brings it). Never blocks.
pub fn next_frame(socket: &mut WatchedSocket) -> Option<tungstenite::Result<tungstenite::Message>> {
    // (A read may write: the pong to a ping, the echo of a close.)
    socket.get_mut().begin_write();
    match socket.read() {
        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => None,
        frame => Some(frame),
    }
}

/// A server frame's size on the wire: 2 header bytes, 2 or 8 more for longer payloads.
pub fn frame_size(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one notice lets the thread read, on both builds: everything that is there with
    /// `recv(MSG_DONTWAIT)`, one read's worth with std alone; never a read that waits.
    #[test]
    fn a_notice_lets_the_thread_read_what_is_there_and_no_read_waits() {
        let (mut client, server) = crate::loopback_pair();
        let mut socket = ReadWhenNoticed::new(Arc::new(server));
        let mut buf = [0u8; 1024];
        let nothing = socket.read(&mut buf).unwrap_err();
        assert_eq!(
            nothing.kind(),
            io::ErrorKind::WouldBlock,
            "no bytes, no notice"
        );
        client.write_all(&[7u8; 5000]).unwrap();
        // Wait until all 5,000 bytes are in the server's receive buffer.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while socket.stream().peek(&mut [0u8; 8192]).unwrap() < 5000 {
            assert!(std::time::Instant::now() < until, "the bytes never arrived");
        }
        socket.noticed.store(true, Ordering::SeqCst); // as the watcher does
        let mut read = 0;
        loop {
            match socket.read(&mut buf) {
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let expected = if cfg!(all(unix, not(lab_portable))) {
            5000
        } else {
            1024
        };
        assert_eq!(read, expected);
        assert!(!socket.noticed(), "the notice was taken");
    }
}
