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
//!    the client sent something (or left). Both ring one bell: the subscription waits on one
//!    of the hub's group bells (`Hub::subscribe_noticed`), which every event rings, and the
//!    watcher's notice rings the same bell (`Notice::ring`), so an event is one wake-up call
//!    per group, not one per socket. Woken by an event, it writes a text frame; by a notice, it reads the frames that
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
use crate::conversation::{converse, Ending, Endpoint, Socket};
use crate::http::Query;
use crate::hub::{Backlog, Notice, Subscription, Wake};
use crate::lab::Lab;
use crate::ws::Upgraded;
use crossbeam_channel::Receiver;
use serde_json::json;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
            return Err((403, lab.foreign_origin(origin, request)));
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

/// What this endpoint adds to the conversation every WebSocket has (`conversation`): its
/// subscription to the hub, and its heartbeat.
struct LessonSocket<'a> {
    lab: &'a Lab,
    subscription: Subscription,
    /// Rung by the watcher when the client sends something (`nudge`).
    notice: Arc<Notice>,
    /// The backlog after the client's cursor, sent before the first wait.
    backlog: Option<Backlog>,
}

/// Step 3, then 4: the conversation, driven by `conversation::converse`.
fn serve(lab: &Lab, upgraded: Upgraded<'_>, since: Option<u64>) -> io::Result<()> {
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    // No cursor: from now. One ahead of now (ids restarted): also now.
    let since = since.map_or(lab.hub.last_id(), |since| since.min(lab.hub.last_id()));
    let (backlog, subscription, notice) = lab.hub.subscribe_noticed(since);
    log::debug!("ws {id} open, from event {since}");
    let counters = lab.count("websocket");
    let mut socket = Socket::new(socket, id, &counters, &lab.stats);
    let mut endpoint = LessonSocket {
        lab,
        subscription,
        notice,
        backlog: Some(backlog),
    };
    converse(&mut endpoint, &mut socket, &lab.watcher);
    Ok(())
}

impl Endpoint for LessonSocket<'_> {
    /// Step 3: the backlog first, then whatever wakes the thread.
    fn wait(
        &mut self,
        socket: &mut Socket<'_>,
        _noticed: &Receiver<()>,
        deadline: Instant,
    ) -> Result<(), Ending> {
        if let Some(backlog) = self.backlog.take() {
            return send_events(socket, &backlog);
        }
        // BLOCKS: on the group bell, until an event, the watcher's notice (the client sent
        // something, or left: `nudge` rang it), or the next ping is due.
        match self
            .subscription
            .wait_for_events_or_notice(&self.notice, deadline)
        {
            Wake::Events(batch) => send_events(socket, &batch),
            Wake::Other(()) | Wake::Deadline | Wake::OtherGone => Ok(()),
        }
    }

    /// The watcher's notice rings this socket's group bell (the thread waits there, not on
    /// the notice channel).
    fn nudge(&self) -> Option<Box<dyn Fn() + Send + Sync>> {
        let notice = self.notice.clone();
        Some(Box::new(move || notice.ring()))
    }

    /// Step 3, the client's side: a text frame is published to everyone, the sender too.
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) -> Result<(), Ending> {
        let id = socket.id;
        let Message::Text(text) = message else {
            return Err(Ending::close(
                CloseCode::Unsupported,
                "text frames only",
                "a binary frame",
            ));
        };
        match self.lab.publish(text.as_str()) {
            Ok(event) => log::debug!("ws {id} published event {}", event.id),
            // (Only with --redis: the frame is not published; the socket lives on.)
            Err(e) => log::warn!("ws {id}: the client's frame was not published: {e}"),
        }
        Ok(())
    }

    /// Every heartbeat interval, a ping: a peer that answers nothing is gone (`silence`).
    fn on_tick(&mut self, socket: &mut Socket<'_>) -> Result<(), Ending> {
        socket.send(Message::Ping(Vec::new().into()))
    }

    fn tick_every(&self) -> Duration {
        self.lab.config.heartbeat
    }

    /// Heard nothing for two intervals, not even a pong: the peer is gone.
    fn silence(&self) -> Option<Duration> {
        Some(2 * self.lab.config.heartbeat)
    }
}

/// One text frame per event (and one for a `missed` notice).
fn send_events(socket: &mut Socket<'_>, batch: &Backlog) -> Result<(), Ending> {
    if batch.missed > 0 {
        socket.send_text(json!({ "missed": batch.missed }).to_string())?;
    }
    for event in &batch.events {
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        socket.send_text(event.to_json().to_string())?;
        socket.counters.streamed(1);
    }
    Ok(())
}
