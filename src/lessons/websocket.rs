//! # WebSocket: one HTTP handshake, then a full-duplex socket carrying frames both ways.
//!
//! ```text
//! GET /events/ws?since=4 HTTP/1.1               ← on the HTTP port, like any request
//! Host: 127.0.0.1:8080
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
//! 1. The connection's thread reads the handshake like any request; `Upgrade: websocket`
//!    sends it to the server's upgrade `match`, and `/events/ws` comes here (`upgrade`).
//! 2. `check_request` checks the `Origin` (cross-site WebSocket hijacking: browsers send
//!    cookies with a WebSocket handshake from *any* page, so the server must refuse foreign
//!    origins) and reads `since`; then `ws::accept` checks the protocol's headers, writes the
//!    `101` and takes the socket from the HTTP layer (`Request::into_stream`), to run
//!    tungstenite on it.
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
//! two file descriptors per client in this model (`try_clone` duplicates the socket's: a
//! reader and a writer). Some proxies and old corporate firewalls do not pass the `Upgrade`.
//!
//! **Try it**: `cargo run --example websocket`, open two tabs of
//! <http://127.0.0.1:8080/lessons/websocket> and chat; or with
//! `curl -N --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://127.0.0.1:8080/events/ws`
//! watch the 101 and the raw frames arrive.

use crate::connection::Request;
use crate::http::Query;
use crate::hub::{Backlog, Subscription, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::ws::{close_frame, drain, frame_size, ReadOnly, Upgraded};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::json;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role};
use tungstenite::{Message, WebSocket};

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

/// `GET /events/ws` without `Upgrade: websocket` (a browser's address bar, a plain curl):
/// 426 Upgrade Required, naming the upgrade it needs.
pub fn without_upgrade(lab: &Lab, request: Request) -> io::Result<()> {
    let message = "a WebSocket endpoint: send the handshake (Upgrade: websocket)";
    crate::http::HttpError::new(426, message)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .reply(request, &lab.count("websocket"))
}

/// Steps 1 and 2: `GET /events/ws` with `Upgrade: websocket` (the server's upgrade `match`).
pub fn upgrade(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    // 2. Our checks (`Origin`, `since`), then the handshake every endpoint shares.
    let checked = check_request(lab, &request, query);
    let Some((since, upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    serve(lab, upgraded, since)
}

/// Step 3.
fn serve(lab: &Lab, upgraded: Upgraded<'_>, since: Option<u64>) -> io::Result<()> {
    let Upgraded {
        stream,
        pending,
        id,
        place: _place,
    } = upgraded;
    let counters = &lab.count("websocket");
    let config = crate::ws::config(lab.config.max_body);
    // No cursor: from now. One ahead of now (ids restarted): also now.
    let since = since.map_or(lab.hub.last_id(), |since| since.min(lab.hub.last_id()));
    let (backlog, subscription) = lab.hub.subscribe_with_channel(since);
    log::debug!("ws {id} open, from event {since}");

    // 3. Split: the reader keeps this thread, the writer gets its own.
    let read_half = ReadOnly(stream.try_clone()?);
    let reader = WebSocket::from_partially_read(read_half, pending, Role::Server, Some(config));
    let writer_config = crate::ws::writer_config(lab.config.max_body);
    let writer = WebSocket::from_raw_socket(stream, Role::Server, Some(writer_config));
    let (to_writer, from_reader) = unbounded();
    let last_heard = AtomicU64::new(0);
    let started = Instant::now();

    // Scoped threads may borrow the lab; the scope ends when both halves have.
    let last_heard = &last_heard;
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

/// The handshake's checks: the page's `Origin`, and `since`.
fn check_request(
    lab: &Lab,
    request: &Request,
    query: &Query,
) -> Result<Option<u64>, (u16, String)> {
    let origin = request.header("Origin");
    if let Some(origin) = origin {
        if !lab.is_own_origin(origin, &lab.client(request)) {
            log::debug!("ws handshake refused: foreign Origin {origin:?}");
            return Err((403, "this Origin may not open the lab's WebSocket".into()));
        }
    }
    // No Origin at all: not a browser (browsers always send one), so no hijacking risk.
    match query.get("since") {
        None => Ok(None),
        // Validated here; taken as at most the newest id once subscribed.
        Some(text) => crate::http::parse_cursor(text, u64::MAX)
            .map(Some)
            .map_err(|e| (400, e.message)),
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
                match lab.publish(text.as_str()) {
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
