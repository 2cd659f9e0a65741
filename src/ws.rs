//! What every WebSocket endpoint shares: the lesson's `/events/ws`, Socket.IO's and
//! Atmosphere's transports. `server` chooses the endpoint by path (its upgrade `match`); the
//! endpoint checks its own request (path, `Origin`, parameters), then calls `accept`:
//!
//! 1. a refused check is answered with its status, as any HTTP request;
//! 2. `Sec-WebSocket-Version` must be 13 (or 426), `Sec-WebSocket-Key` 16 bytes of base64
//!    (or 400);
//! 3. a place under `--max-parked` (or 503), taken only by a handshake that will be accepted;
//! 4. the lab writes the `101` itself, and the socket leaves HTTP for good
//!    (`Request::into_stream`), with whatever frames the client sent right behind its
//!    handshake.
//!
//! Also here: tungstenite's configuration for the lab's small frames, the socket as a
//! one-thread endpoint gives it to tungstenite (read only when the watcher said so), the
//! read-only half a two-thread endpoint's reader owns, the close frame, the drain after a close
//! we started, and frame sizes.

use crate::connection::Request;
use crate::http::HttpError;
use crate::stats::{GaugeGuard, Held, LessonCounters, Stats};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::WebSocket;

/// An accepted handshake: the socket, what the client already sent on it, and its place.
pub struct Upgraded<'lab> {
    pub stream: TcpStream,
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
}

impl<'lab> Upgraded<'lab> {
    /// The socket as tungstenite's, for an endpoint that reads and writes it in one place
    /// until it splits it: the connection's number and the place come along.
    pub fn into_websocket(
        self,
        config: WebSocketConfig,
    ) -> (WebSocket<TcpStream>, u64, Place<'lab>) {
        let socket =
            WebSocket::from_partially_read(self.stream, self.pending, Role::Server, Some(config));
        (socket, self.id, self.place)
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
    // 2. The protocol's.
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
    let (mut stream, pending) = request.into_stream()?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes())?;
    counters.wrote(answer.len());
    // From now on the socket blocks until a frame arrives; the writer's pings find dead peers.
    stream.set_read_timeout(None)?;
    let upgraded = Upgraded {
        stream,
        pending,
        id,
        place: Place {
            _held: held,
            // (The teacher's view counts the socket under the lesson its path belongs to:
            // `server::handle` did, as for any request.)
            _thread: stats.websocket_threads.enter(),
        },
    };
    Ok(Some((checked, upgraded)))
}

/// Limits, and buffers sized for the lab's small frames: tungstenite's defaults (128 KiB to
/// read into, 128 KiB to gather writes in) cost about 100 KiB of resident memory per
/// connection once touched (measured with `flood`, LESSONS.md Appendix A). 1 KiB reads a
/// chat line in one go (a bigger frame takes several reads; 4 KiB cost 3 KiB more per socket,
/// measured with `latency ws 1000`); a write buffer of 0 sends each frame at once, which our
/// writers want anyway (they flush after every frame).
pub fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .read_buffer_size(1024)
        .write_buffer_size(0)
}

/// `config` for the writing half, which never reads: its read buffer is the smallest
/// tungstenite takes (a full one cost 4 KiB per socket, measured with `latency ws 1000`).
pub fn writer_config(max_message: usize) -> WebSocketConfig {
    config(max_message).read_buffer_size(64)
}

/// The socket of an endpoint with one thread (the lesson's `/events/ws`): the thread reads
/// only when the socket watcher (`watcher`) has said bytes are there, one `read` per notice,
/// which therefore cannot block. Any other read is `WouldBlock`, which tungstenite takes as
/// "the rest has not come yet", keeping what it has of a frame. Writes go to the socket.
pub struct ReadWhenNoticed {
    stream: TcpStream,
    noticed: bool,
}

impl ReadWhenNoticed {
    pub fn new(stream: TcpStream) -> Self {
        ReadWhenNoticed {
            stream,
            noticed: false,
        }
    }

    /// The watcher's notice came: one read may go to the socket.
    pub fn noticed(&mut self) {
        self.noticed = true;
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl Read for ReadWhenNoticed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !std::mem::take(&mut self.noticed) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // Returns at once: the watcher saw bytes (or the end), and only this thread reads.
        self.stream.read(buf)
    }
}

impl Write for ReadWhenNoticed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // BLOCKS: while the send buffer is full, up to --write-timeout.
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The reading half of a two-thread endpoint (Socket.IO's, Atmosphere's, Bayeux's): reads go to the socket, writes go nowhere. tungstenite would answer
/// pings and closes from inside `read`; here the writer thread does that, so only one thread
/// ever writes to the socket.
pub struct ReadOnly(pub TcpStream);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len()) // dropped: the writer thread sends pongs and close replies itself
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A graceful end to a close we started: read and discard whatever the client still sends
/// (the rest of a message we refused, then its own close frame) until it closes its side,
/// for at most two seconds. Closing a socket with unread bytes in it makes the kernel send a
/// reset instead of a FIN, and the client would see "connection reset" (a browser: 1006)
/// instead of our close code. (`a_close_the_server_starts_ends_cleanly_without_a_reset`)
pub fn drain(mut stream: &TcpStream, id: u64) {
    let until = Instant::now() + Duration::from_secs(2);
    let mut buffer = [0u8; 16 * 1024];
    let mut drained = 0;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        // BLOCKS: until the client sends more, closes its side (0), or the two seconds pass.
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    log::debug!("ws {id} drained {drained} bytes after our close");
    let _ = stream.shutdown(Shutdown::Both);
}

pub fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_string().into(),
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
