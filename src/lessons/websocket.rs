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
//!   (time passes: ws 3's thread is parked on its subscription; the watcher, in poll(), on
//!   its socket)
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
//! 3. One thread per connection, the one that read the handshake (`conn-N`; it logs as
//!    `ws N`). It blocks on its subscription *and* on a notice from the lab's socket watcher
//!    (`watcher`), which waits in `poll(2)` on every idle WebSocket at once: a notice says
//!    the client sent something (or left). Woken by an event, it writes a text frame; by a notice, it reads the frames that
//!    are there (`read_frames`: such a read cannot block) and publishes them; by the heartbeat,
//!    it pings. Only this thread writes to the socket, so frames can never interleave.
//! 4. Every ending (client close, server close, write error, silent peer) ends the watch and
//!    shuts the socket; dropping the subscription and the place frees the rest.
//!
//! **What it costs**: one handshake per connection (about 400 bytes both ways), then 2 bytes of
//! frame header per small event from the server (clients mask theirs: 6 bytes); one thread
//! and one descriptor per client (about 23 KiB resident, measured with
//! `cargo run --release --example latency -- ws 1000`); one more wake-up per client frame
//! (the watcher's). A thread per direction would need no watcher, at twice the threads and
//! descriptors (37 KiB per client: `try_clone` gives the reader and the writer each a
//! descriptor). Some proxies and old corporate firewalls do not pass the `Upgrade`.
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
use crate::ws::{close_frame, drain, frame_size, next_frame, Upgraded, WatchedSocket};
use serde_json::json;
use std::io;
use std::net::Shutdown;
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

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

/// One WebSocket's conversation: what its thread owns or borrows.
struct Conversation<'a> {
    lab: &'a Lab,
    socket: WatchedSocket,
    subscription: Subscription,
    counters: &'a LessonCounters,
    /// When the client last sent anything (a pong counts): silent for two heartbeats, gone.
    last_heard: Instant,
    id: u64,
}

/// Why a conversation ended, and whether what the client still sends must be read first
/// (after a close we started: `ws::drain`).
struct Ended {
    why: String,
    drain: bool,
}

impl Ended {
    fn shut(why: impl Into<String>) -> Ended {
        Ended {
            why: why.into(),
            drain: false,
        }
    }
}

/// Step 3, then 4.
fn serve(lab: &Lab, upgraded: Upgraded<'_>, since: Option<u64>) -> io::Result<()> {
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    // No cursor: from now. One ahead of now (ids restarted): also now.
    let since = since.map_or(lab.hub.last_id(), |since| since.min(lab.hub.last_id()));
    let (backlog, subscription) = lab.hub.subscribe_with_channel(since);
    log::debug!("ws {id} open, from event {since}");
    let mut conversation = Conversation {
        lab,
        socket,
        subscription,
        counters: &lab.count("websocket"),
        last_heard: Instant::now(),
        id,
    };
    let ended = converse(&mut conversation, backlog);
    log::debug!("ws {id} done: {}", ended.why);
    // 4. The end, whatever it was.
    let stream = conversation.socket.get_ref().stream();
    match ended.drain {
        // BLOCKS: until the client closes its side, or two seconds pass.
        true => drain(stream, id),
        false => {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
    Ok(())
}

/// Step 3: the backlog, then whatever wakes the thread, until the conversation ends.
fn converse(c: &mut Conversation<'_>, backlog: Backlog) -> Ended {
    if let Err(e) = send_events(c, &backlog) {
        return write_failed(c, e);
    }
    // Frames the client sent right behind its handshake are in tungstenite's buffer already:
    // no notice will come for them.
    if let Err(ended) = read_frames(c) {
        return ended;
    }
    let (watch, noticed) = match c.socket.get_ref().watch_with_channel(&c.lab.watcher) {
        Ok(watching) => watching,
        Err(e) => return Ended::shut(format!("could not watch the socket: {e}")),
    };
    let heartbeat = c.lab.config.heartbeat;
    let mut next_ping = Instant::now() + heartbeat;
    loop {
        // BLOCKS: until an event, the watcher's notice (the client sent something, or left),
        // or the next ping is due.
        match c.subscription.wait_for_events_or(&noticed, next_ping) {
            Wake::Events(batch) => {
                if let Err(e) = send_events(c, &batch) {
                    return write_failed(c, e);
                }
            }
            Wake::Other(()) => {
                log::debug!("ws {} noticed: its client sent something, or left", c.id);
                if let Err(ended) = read_frames(c) {
                    return ended;
                }
                watch.again();
            }
            // (The watch holds the sender for as long as it lives.)
            Wake::OtherGone => return Ended::shut("the watch ended"),
            Wake::Deadline => {
                // Heard nothing for two intervals, not even a pong: the peer is gone.
                if c.last_heard.elapsed() > 2 * heartbeat {
                    return Ended::shut("the peer stopped answering pings");
                }
                if let Err(e) = c.socket.send(Message::Ping(Vec::new().into())) {
                    return write_failed(c, e);
                }
                next_ping = Instant::now() + heartbeat;
            }
        }
    }
}

/// Step 3, the client's side: every frame that is there, in turn. `Ok` once the rest has not
/// come yet; `Err` when the conversation is over.
fn read_frames(c: &mut Conversation<'_>) -> Result<(), Ended> {
    let id = c.id;
    loop {
        // Never blocks: one read of the bytes the watcher saw, else `None`.
        let Some(message) = next_frame(&mut c.socket) else {
            return Ok(());
        };
        c.last_heard = Instant::now();
        match message {
            Ok(Message::Text(text)) => {
                match c.lab.publish(text.as_str()) {
                    Ok(event) => log::debug!("ws {id} published event {}", event.id),
                    // (Only with --redis: the frame is not published; the socket lives on.)
                    Err(e) => log::warn!("ws {id}: the client's frame was not published: {e}"),
                }
            }
            Ok(Message::Binary(_)) => {
                return Err(close(c, CloseCode::Unsupported, "text frames only"));
            }
            // tungstenite has queued the pong: the next `read` sends it.
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => {
                // tungstenite has queued the echo of the client's close: send it, and end.
                let code = frame.map_or(CloseCode::Normal, |f| f.code);
                let _ = c.socket.flush();
                return Err(Ended::shut(format!("echoed the client's close {code}")));
            }
            Err(tungstenite::Error::Capacity(e)) => {
                log::debug!("ws {id} message too big: {e}");
                c.counters.error();
                return Err(close(c, CloseCode::Size, "message too big"));
            }
            Err(e) => return Err(Ended::shut(format!("read ended: {e}"))),
        }
    }
}

/// Our own close (1009, 1003): the frame, then a graceful end (the client's reply is drained).
fn close(c: &mut Conversation<'_>, code: CloseCode, reason: &str) -> Ended {
    let _ = c.socket.close(Some(close_frame(code, reason)));
    let _ = c.socket.flush();
    Ended {
        why: format!("closed with {code}"),
        drain: true,
    }
}

/// A write failed: the peer left, or (after `--write-timeout`) stopped reading.
fn write_failed(c: &Conversation<'_>, e: tungstenite::Error) -> Ended {
    crate::ws::count_if_slow(&c.lab.stats, &e);
    Ended::shut(format!("write failed: {e}"))
}

/// One text frame per event (and one for a `missed` notice).
fn send_events(c: &mut Conversation<'_>, batch: &Backlog) -> Result<(), tungstenite::Error> {
    if batch.missed > 0 {
        c.socket
            .send(Message::text(json!({ "missed": batch.missed }).to_string()))?;
    }
    for event in &batch.events {
        let text = event.to_json().to_string();
        let bytes = frame_size(text.len());
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        c.socket.send(Message::text(text))?;
        c.counters.streamed(1);
        c.counters.wrote(bytes);
    }
    Ok(())
}
