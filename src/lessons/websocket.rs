//! # WebSocket: one HTTP handshake, then a full-duplex socket carrying frames both ways.
//!
//! ```text
//! GET /events/ws?since=4 HTTP/1.1               ← on the WebSocket port (HTTP port + 1)
//! Host: 127.0.0.1:8081
//! Upgrade: websocket
//! Connection: Upgrade
//! Origin: http://127.0.0.1:8080                  ← checked: a foreign page gets 403
//! Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==
//! Sec-WebSocket-Version: 13
//!
//! HTTP/1.1 101 Switching Protocols
//! Upgrade: websocket
//! Connection: Upgrade
//! Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
//!
//! ◄ text {"data":"At ...","id":5}                ← the backlog after since=4, then live events
//!   (time passes: ws-3-writer is parked on its subscription, ws-3 on the socket)
//! ► text "hello"                                  ← the client's frame is published to all...
//! ◄ text {"data":"hello","id":6}                 ← ...including back to the sender
//! ◄ ping                                          ← every heartbeat interval
//! ► pong                                          ← a peer that stops answering is dropped
//! ► close 1000                                    ← either side may close; the other echoes
//! ◄ close 1000
//! ```
//!
//! 1. `listen` binds a plain `std::net::TcpListener` on its own port. tiny_http's upgraded
//!    stream is one boxed object that two threads cannot share; a `TcpStream` can be split with
//!    `try_clone()` into a reading and a writing half (LESSONS.md, chapter 11).
//! 2. `handshake` runs tungstenite's server handshake with a callback that checks the path and
//!    the `Origin` (cross-site WebSocket hijacking: browsers send cookies with a WebSocket
//!    handshake from *any* page, so the server must refuse foreign origins) and reads `since`.
//! 3. Two threads per connection. `read_frames` (thread `ws-N`) blocks on the socket: it
//!    publishes the client's text frames and hands pongs, close replies and errors to the
//!    writer; it never writes itself, so frames from two threads can never interleave.
//!    `write_frames` (thread `ws-N-writer`) blocks on the subscription *and* the reader's
//!    channel: it sends events, pings on an interval, answers pings, and closes.
//! 4. Every ending (client close, server close, write error, silent peer) shuts the socket
//!    down, which ends the other thread too; dropping the subscription and the place frees them.
//!
//! **What it costs**: one handshake per connection (about 400 bytes both ways), then 2 bytes of
//! frame header per small event from the server (clients mask theirs: 6 bytes); two threads and
//! two file descriptors per client in this model (`try_clone` duplicates the socket's). Some proxies and old corporate firewalls do not
//! pass the `Upgrade`.
//!
//! **Try it**: `cargo run --example websocket`, open two tabs of
//! <http://127.0.0.1:8080/lessons/websocket> and chat; or with
//! `curl -N --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://127.0.0.1:8081/events/ws`
//! watch the 101 and the raw frames arrive.

use crate::http::Query;
use crate::hub::{Backlog, Subscription, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The bound WebSocket port, before its accept thread starts.
pub struct WebSocketListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl WebSocketListener {
    /// `ws://HOST:PORT/events/ws`, as `/stats` and the page see it.
    pub fn url(&self) -> String {
        format!("ws://{}/events/ws", self.addr)
    }

    /// Start the `ws-accept` thread.
    pub fn spawn(self, lab: Arc<Lab>) -> io::Result<()> {
        thread::Builder::new()
            .name("ws-accept".into())
            .spawn(move || accept_loop(lab, self.listener))?;
        Ok(())
    }
}

/// Step 1: bind `--ws-addr`, or the HTTP port + 1 (any free port when HTTP asked for port 0:
/// `requested` is the address as configured, `http` as bound).
pub fn listen(
    config: &crate::Config,
    requested: SocketAddr,
    http: SocketAddr,
) -> Result<WebSocketListener, String> {
    let addr: SocketAddr = match &config.ws_addr {
        Some(text) => text
            .parse()
            .map_err(|_| format!("--ws-addr {text:?} is not HOST:PORT"))?,
        None if requested.port() == 0 => SocketAddr::new(http.ip(), 0),
        None => SocketAddr::new(http.ip(), http.port().wrapping_add(1)),
    };
    // Writes time out (a stalled reader is dropped); reads do not: a quiet WebSocket is
    // fine, and the writer's pings find a dead one.
    let timeouts = crate::listener::Timeouts {
        read: None,
        write: Some(config.write_timeout),
    };
    let listener = crate::listener::bind(addr, timeouts).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => format!(
            "WebSocket port {} busy: is another lesson running? try --addr with another port, \
             or --ws-addr",
            addr.port()
        ),
        _ => format!("cannot listen for WebSockets on {addr}: {e}"),
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok(WebSocketListener { listener, addr })
}

fn accept_loop(lab: Arc<Lab>, listener: TcpListener) {
    let next_id = AtomicU64::new(1);
    // BLOCKS: until a client connects to the WebSocket port.
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // At the descriptor limit accept fails at once, again and again: pause, so
                // this thread does not spin while descriptors are given back.
                log::warn!("WebSocket accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // The gate (`limits`): near the process's own limits, refuse before any thread.
        if let Some(why) = crate::limits::capacity().near_limit() {
            lab.stats.refused_near_limits.fetch_add(1, Relaxed);
            log::debug!("refused a WebSocket near a limit: {why}");
            refuse_upgrade_here(&mut stream);
            continue;
        }
        // A classroom's fair share (`--max-per-client`), held for the socket's life.
        let share = match stream.peer_addr() {
            Ok(peer) => match lab.shares.take(peer.ip(), lab.config.max_per_client) {
                Some(share) => Some(share),
                None => {
                    log::debug!("refused a WebSocket: {} holds its share already", peer.ip());
                    refuse_upgrade_here(&mut stream);
                    continue;
                }
            },
            Err(_) => None,
        };
        let id = next_id.fetch_add(1, Relaxed);
        let lab = lab.clone();
        let spawned = thread::Builder::new()
            .name(format!("ws-{id}"))
            .spawn(move || {
                let _share = share;
                let _thread = lab.stats.websocket_threads.enter();
                match serve(&lab, stream, id) {
                    Ok(()) => log::debug!("ws {id} gone"),
                    Err(e) => log::debug!("ws {id} ended: {e}"),
                }
            });
        if let Err(e) = spawned {
            log::error!("no thread for ws {id}: {e}");
        }
    }
}

/// 503 on the accept thread itself, no thread started. Read the handshake first (briefly: a
/// client that sends nothing in 100 ms is not waited for): closing a socket with its request
/// unread would send a reset, and the client would see that instead of the 503.
fn refuse_upgrade_here(stream: &mut TcpStream) {
    let mut request = [0u8; 4096];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    // BLOCKS: at most 100 ms, until the handshake request arrives.
    let _ = stream.read(&mut request);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 2\r\nConnection: close\r\n\
          Content-Length: 0\r\n\r\n",
    );
    let _ = stream.shutdown(Shutdown::Write);
}

/// What the reader hands the writer.
enum ToWriter {
    /// Answer a ping.
    Pong(tungstenite::Bytes),
    /// Echo the client's close frame; the conversation is over, shut the socket.
    Close(CloseFrame),
    /// Our own close (1009, 1003): send it and stop writing, but leave the reading side to
    /// the reader, which drains what the client still sends before the socket is closed.
    CloseAndDrain(CloseFrame),
}

fn serve(lab: &Lab, stream: TcpStream, id: u64) -> io::Result<()> {
    let counters = lab.count("websocket");
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.websockets, lab.config.max_parked)
    else {
        // Answer the upgrade with 503 by refusing in the handshake.
        let _ = handshake(lab, stream, |_| -> Result<(), _> {
            Err((503, "too many connections (--max-parked)".into()))
        });
        return Ok(());
    };
    // 2. The handshake: path, Origin and `since` (or a Socket.IO transport: its own lesson).
    let (socket, route) = match handshake(lab, stream, |request| check_request(lab, request)) {
        Ok(accepted) => accepted,
        Err(e) => {
            counters.error();
            return Err(e);
        }
    };
    // The teacher's view counts the socket under the lesson it belongs to.
    let ip = socket.get_ref().peer_addr().ok().map(|a| a.ip());
    let since = match route {
        Route::Events(since) => since,
        Route::SocketIo(session) => {
            let _in_progress = lab.activity.begin("socket_io", ip);
            return crate::lessons::socket_io::websocket::serve(lab, socket, id, session);
        }
        Route::Atmosphere(accepted) => {
            let _in_progress = lab.activity.begin("atmosphere", ip);
            return crate::lessons::atmosphere::websocket::serve(lab, socket, id, accepted);
        }
    };
    let _in_progress = lab.activity.begin("websocket", ip);
    // No cursor: from now. One ahead of now (ids restarted): also now.
    let since = since.map_or(lab.hub.last_id(), |since| since.min(lab.hub.last_id()));
    let (backlog, subscription) = lab.hub.subscribe(since);
    log::debug!("ws {id} open, from event {since}");

    // 3. Split: the reader keeps this thread, the writer gets its own.
    let read_half = socket.get_ref().try_clone()?;
    let write_half = socket.get_ref().try_clone()?;
    drop(socket);
    let config = ws_config(lab);
    let reader = WebSocket::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config));
    let writer = WebSocket::from_raw_socket(write_half, Role::Server, Some(config));
    let (to_writer, from_reader) = unbounded();
    let last_heard = AtomicU64::new(0);
    let started = Instant::now();

    // Scoped threads may borrow the lab; the scope ends when both halves have.
    let (last_heard, counters) = (&last_heard, &counters);
    thread::scope(|scope| -> io::Result<()> {
        let writer_thread = thread::Builder::new()
            .name(format!("ws-{id}-writer"))
            .spawn_scoped(scope, move || {
                let _thread = lab.stats.websocket_threads.enter();
                let ending = write_frames(Writing {
                    lab,
                    socket: writer,
                    subscription,
                    backlog,
                    from_reader,
                    heartbeat: lab.config.heartbeat,
                    last_heard,
                    started,
                    counters,
                });
                log::debug!("ws {id} writer done: {ending}");
            })?;
        // `read_frames` owns the sender: when it returns, the writer sees it gone.
        read_frames(lab, reader, to_writer, last_heard, started, counters, id);
        // BLOCKS: until the writer has shut the socket and ended too.
        let _ = writer_thread.join();
        Ok(())
    })
}

/// Step 2, with `decide` choosing to accept (and reading what the path needs) or to refuse.
fn handshake<T>(
    lab: &Lab,
    stream: TcpStream,
    decide: impl FnOnce(&Request) -> Result<T, (u16, String)>,
) -> io::Result<(WebSocket<TcpStream>, T)> {
    // A client that connects and says nothing must not hold the thread forever.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut accepted = None;
    // tungstenite's callback: accept with its response, or refuse with an HTTP answer.
    #[allow(clippy::result_large_err)] // the error type is tungstenite's, not ours to shrink
    let callback = |request: &Request, response: Response| match decide(request) {
        Ok(route) => {
            accepted = Some(route);
            Ok(response)
        }
        Err((status, message)) => Err(refuse(status, &message)),
    };
    let socket = tungstenite::accept_hdr_with_config(stream, callback, Some(ws_config(lab)))
        .map_err(|e| io::Error::other(format!("handshake refused or failed: {e}")))?;
    // From now on the socket blocks until a frame arrives; pings find dead peers.
    socket.get_ref().set_read_timeout(None)?;
    let accepted = accepted.ok_or_else(|| io::Error::other("accepted without a route"))?;
    Ok((socket, accepted))
}

/// What an accepted handshake leads to.
enum Route {
    /// This lesson's `/events/ws`, from `since` (or now).
    Events(Option<u64>),
    /// A Socket.IO WebSocket transport: a new session, or the upgrade of this one.
    SocketIo(crate::lessons::socket_io::websocket::Accepted),
    /// An Atmosphere client on its websocket transport.
    Atmosphere(crate::lessons::atmosphere::websocket::Accepted),
}

/// Limits, and buffers sized for the lab's small frames: tungstenite's defaults (128 KiB to
/// read into, 128 KiB to gather writes in) cost about 100 KiB of resident memory per
/// connection once touched (measured: `flood`, chapter 13). 4 KiB reads a small frame in one
/// go (a bigger one takes several reads); a write buffer of 0 sends each frame at once, which
/// our writer wants anyway (it flushes after every frame).
pub(crate) fn ws_config(lab: &Lab) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(lab.config.max_body))
        .max_frame_size(Some(lab.config.max_body))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// The handshake's checks: the path, the page's `Origin`, and `since`.
fn check_request(lab: &Lab, request: &Request) -> Result<Route, (u16, String)> {
    let path = request.uri().path();
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let origin = request
        .headers()
        .get("Origin")
        .map(|o| o.to_str().unwrap_or(""));
    let host = request.headers().get("Host").and_then(|h| h.to_str().ok());
    // The frameworks' transports share this port: their own lessons check them.
    if path == "/socket.io/" {
        return crate::lessons::socket_io::websocket::check(lab, &query, origin, host)
            .map(Route::SocketIo);
    }
    if path.starts_with(crate::lessons::atmosphere::PREFIX) {
        return crate::lessons::atmosphere::websocket::check(lab, path, &query, origin, host)
            .map(Route::Atmosphere);
    }
    if path != "/events/ws" {
        return Err((
            404,
            "the WebSocket endpoints are /events/ws, /socket.io/ and /atmosphere/NAME".into(),
        ));
    }
    if let Some(origin) = origin {
        if !lab.is_own_origin(origin, host) {
            log::debug!("ws handshake refused: foreign Origin {origin:?}");
            return Err((403, "this Origin may not open the lab's WebSocket".into()));
        }
    }
    // No Origin at all: not a browser (browsers always send one), so no hijacking risk.
    match query.get("since") {
        None => Ok(Route::Events(None)),
        // Validated here; taken as at most the newest id once subscribed.
        Some(text) => crate::http::parse_cursor(text, u64::MAX)
            .map(|since| Route::Events(Some(since)))
            .map_err(|e| (400, e.message)),
    }
}

fn refuse(status: u16, message: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(json!({ "error": message }).to_string()));
    *response.status_mut() = tungstenite::http::StatusCode::from_u16(status)
        .unwrap_or(tungstenite::http::StatusCode::BAD_REQUEST);
    let headers = response.headers_mut();
    headers.insert(
        "Content-Type",
        "application/json".parse().expect("a header value"),
    );
    if status == 503 {
        // As every other refusal beyond --max-parked: when to try again.
        headers.insert("Retry-After", "2".parse().expect("a header value"));
    }
    response
}

/// The reading half: reads go to the socket, writes go nowhere. tungstenite would answer
/// pings and closes from inside `read`; here the writer thread does that, so only one thread
/// ever writes to the socket.
pub(crate) struct ReadOnly(pub(crate) TcpStream);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Step 3, the reader (thread `ws-N`).
fn read_frames(
    lab: &Lab,
    mut socket: WebSocket<ReadOnly>,
    to_writer: Sender<ToWriter>,
    last_heard: &AtomicU64,
    started: Instant,
    counters: &LessonCounters,
    id: u64,
) {
    loop {
        // BLOCKS: until the client sends a frame, or the socket is shut down.
        let message = socket.read();
        last_heard.store(started.elapsed().as_millis() as u64, Relaxed);
        match message {
            Ok(Message::Text(text)) => {
                match lab.hub.publish(text.as_str()) {
                    Ok(event) => log::debug!("ws {id} published event {}", event.id),
                    // (Only with --redis: the frame is not published; the socket lives on.)
                    Err(e) => log::warn!("ws {id}: the client's frame was not published: {e}"),
                }
            }
            Ok(Message::Binary(_)) => {
                let frame = close_frame(CloseCode::Unsupported, "text frames only");
                let _ = to_writer.send(ToWriter::CloseAndDrain(frame));
                return drain(socket.get_mut(), id);
            }
            Ok(Message::Ping(payload)) => {
                let _ = to_writer.send(ToWriter::Pong(payload));
            }
            Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => {
                // The client closes: the writer echoes its code, then shuts the socket.
                let code = frame.map_or(CloseCode::Normal, |f| f.code);
                log::debug!("ws {id} client closed with {code}");
                let _ = to_writer.send(ToWriter::Close(close_frame(code, "")));
                return;
            }
            Err(tungstenite::Error::Capacity(e)) => {
                log::debug!("ws {id} message too big: {e}");
                counters.error();
                let frame = close_frame(CloseCode::Size, "message too big");
                let _ = to_writer.send(ToWriter::CloseAndDrain(frame));
                return drain(socket.get_mut(), id);
            }
            Err(e) => {
                log::debug!("ws {id} read ended: {e}");
                return;
            }
        }
    }
}

/// A graceful end to a close we started: read and discard whatever the client still sends
/// (the rest of a message we refused, then its own close frame) until it closes its side,
/// for at most two seconds. Closing a socket with unread bytes in it makes the kernel send a
/// reset instead of a FIN, and the client would see "connection reset" (a browser: 1006)
/// instead of our close code. (`a_close_the_server_starts_ends_cleanly_without_a_reset`)
pub(crate) fn drain(socket: &mut ReadOnly, id: u64) {
    let stream = &mut socket.0;
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

pub(crate) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_string().into(),
    }
}

/// Everything the writer thread owns or borrows.
struct Writing<'a> {
    lab: &'a Lab,
    socket: WebSocket<TcpStream>,
    subscription: Subscription,
    backlog: Backlog,
    from_reader: Receiver<ToWriter>,
    heartbeat: Duration,
    last_heard: &'a AtomicU64,
    started: Instant,
    counters: &'a LessonCounters,
}

/// Step 3, the writer (thread `ws-N-writer`). Returns why it ended; always shuts the socket
/// (for a close we started, only its writing side: the reader drains and closes the rest).
fn write_frames(mut w: Writing<'_>) -> String {
    let (ending, how) = write_until_done(&mut w);
    // 4. Shutting the socket wakes the reader's blocking read, whatever ended us.
    let _ = w.socket.get_ref().shutdown(how);
    ending
}

/// A write failed: the peer left, or (after `--write-timeout`) stopped reading.
fn write_failed(w: &Writing<'_>, e: tungstenite::Error) -> (String, Shutdown) {
    if let tungstenite::Error::Io(io) = &e {
        if crate::http::is_write_timeout(io) {
            w.lab.stats.slow_consumers.fetch_add(1, Relaxed);
            log::info!("ws dropped a slow consumer: no progress for --write-timeout");
        }
    }
    (format!("write failed: {e}"), Shutdown::Both)
}

fn write_until_done(w: &mut Writing<'_>) -> (String, Shutdown) {
    let ending = |why: String| (why, Shutdown::Both);
    let backlog = std::mem::take(&mut w.backlog);
    if let Err(e) = send_events(w, &backlog) {
        return write_failed(w, e);
    }
    let mut next_ping = Instant::now() + w.heartbeat;
    loop {
        // BLOCKS: until an event, a message from the reader, or the next ping is due.
        match w.subscription.wait_for_events_or(&w.from_reader, next_ping) {
            Wake::Events(batch) => {
                if let Err(e) = send_events(w, &batch) {
                    return write_failed(w, e);
                }
            }
            Wake::Other(ToWriter::Pong(payload)) => {
                if let Err(e) = w.socket.send(Message::Pong(payload)) {
                    return write_failed(w, e);
                }
            }
            Wake::Other(ToWriter::Close(frame)) => {
                let code = frame.code;
                // The echo of the client's close: nothing more comes from either side.
                let _ = w.socket.close(Some(frame));
                let _ = w.socket.flush();
                return ending(format!("echoed the client's close {code}"));
            }
            Wake::Other(ToWriter::CloseAndDrain(frame)) => {
                let code = frame.code;
                // Our close frame, then a FIN; the reader reads the client's reply.
                let _ = w.socket.close(Some(frame));
                let _ = w.socket.flush();
                return (format!("closed with {code}"), Shutdown::Write);
            }
            Wake::OtherGone => return ending("the reader ended".into()),
            Wake::Deadline => {
                // Heard nothing for two intervals, not even a pong: the peer is gone.
                let heard = Duration::from_millis(w.last_heard.load(Relaxed));
                if w.started.elapsed().saturating_sub(heard) > 2 * w.heartbeat {
                    return ending("the peer stopped answering pings".into());
                }
                if let Err(e) = w.socket.send(Message::Ping(Vec::new().into())) {
                    return write_failed(w, e);
                }
                next_ping = Instant::now() + w.heartbeat;
            }
        }
    }
}

/// One text frame per event (and one for a `missed` notice).
fn send_events(w: &mut Writing<'_>, batch: &Backlog) -> Result<(), tungstenite::Error> {
    if batch.missed > 0 {
        w.socket
            .send(Message::text(json!({ "missed": batch.missed }).to_string()))?;
    }
    for event in &batch.events {
        let text = event.to_json().to_string();
        let bytes = frame_size(text.len());
        w.socket.send(Message::text(text))?;
        w.counters.streamed(1);
        w.counters.wrote(bytes);
    }
    Ok(())
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
