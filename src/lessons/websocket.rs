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
//! and one descriptor per client, or, with `--parking queue`, the descriptor alone: the
//! dispatcher writes every socket's frames and reads what the watcher saw (`hold`); one
//! more wake-up per client frame (the watcher's). A thread per direction would need no
//! watcher, at twice the threads and descriptors (`try_clone` gives the reader and the writer
//! each a descriptor). REFERENCE.md, chapters 12 and 14, measures each. Some proxies and old
//! corporate firewalls do not pass the `Upgrade`.
//!
//! **Try it**: `cargo run --example websocket`, open two tabs of
//! <http://127.0.0.1:8080/lessons/websocket> and chat; or with
//! `curl -N --http1.1 -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' http://127.0.0.1:8080/events/ws`
//! watch the 101 and the raw frames arrive.

use crate::connection::Request;
use crate::conversation::{converse, next_message, Ending, Endpoint, Socket};
use crate::http::Query;
use crate::hub::{Backlog, Notice, Subscription, Wake};
use crate::lab::Lab;
use crate::waiting_room::{Ended, HeldConnection, Pass, WaitingRoom, WriteDeadline, MOST_PER_PASS};
use crate::ws::{Upgraded, WatchedSocket};
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
pub fn upgrade(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    // 2. Our checks (`Origin`, `since`), then the handshake every endpoint shares.
    let checked = check_request(lab, &request, query);
    let Some((since, upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    serve(lab, room, upgraded, since)
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
fn serve(
    lab: &Lab,
    room: &WaitingRoom,
    upgraded: Upgraded<'_>,
    since: Option<u64>,
) -> io::Result<()> {
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, place) = upgraded.into_watched_websocket(config);
    // No cursor: from now. One ahead of now (ids restarted): also now.
    let since = since.map_or(lab.hub.last_id(), |since| since.min(lab.hub.last_id()));
    if lab.config.parking == crate::ParkingMode::Queue {
        hold(lab, room, socket, id, place, since);
        return Ok(());
    }
    let (backlog, subscription, notice) = lab.hub.subscribe_noticed(since);
    log::debug!("ws {id} open, from event {since}");
    // (Its request was counted with the handshake, `Lab::accept_websocket`.)
    let counters = lab.stats.lesson("websocket");
    let mut socket = Socket::new(socket, id, &counters, &lab.stats);
    let mut endpoint = LessonSocket {
        lab,
        subscription,
        notice,
        backlog: Some(backlog),
    };
    converse(&mut endpoint, &mut socket, &lab.watcher);
    drop(place);
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

    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) -> Result<(), Ending> {
        on_message(self.lab, socket.id, message)
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

/// Step 3, the client's side: a text frame is published to everyone, the sender too.
fn on_message(lab: &Lab, id: u64, message: Message) -> Result<(), Ending> {
    let Message::Text(text) = message else {
        return Err(Ending::close(
            CloseCode::Unsupported,
            "text frames only",
            "a binary frame",
        ));
    };
    match lab.publish(text.as_str()) {
        Ok(event) => log::debug!("ws {id} published event {}", event.id),
        // (Only with --redis: the frame is not published; the socket lives on.)
        Err(e) => log::warn!("ws {id}: the client's frame was not published: {e}"),
    }
    Ok(())
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

/// `--parking queue`: the socket is held without a thread (`waiting_room`), and its dispatcher
/// writes its events, reads what its client sends when the watcher says so, and pings it.
/// The frames behind the handshake and the backlog go first, on this thread.
fn hold(
    lab: &Lab,
    room: &WaitingRoom,
    ws: Box<WatchedSocket>,
    id: u64,
    place: crate::ws::Place<'_>,
    since: u64,
) {
    let counters = lab.stats.lesson("websocket");
    let backlog = lab.hub.since(since);
    let cursor = backlog.last(since);
    let mut socket = Socket::new(ws, id, &counters, &lab.stats);
    let mut last_heard = Instant::now();
    let first = (|| {
        while let Some(message) = next_message(&mut socket.ws, &mut last_heard)? {
            on_message(lab, id, message)?;
        }
        send_events(&mut socket, &backlog)
    })();
    // The watcher's notice rings the dispatcher's doorbell.
    let doorbell = room.doorbell();
    let watch = first.and_then(|()| {
        let ring = move || {
            let _ = doorbell.try_send(());
        };
        let watch = socket.ws.get_ref().watch(&lab.watcher, ring);
        watch.map_err(|e| Ending::gone(format!("could not watch the socket: {e}")))
    });
    let watch = match watch {
        Ok(watch) => watch,
        Err(ending) => {
            log::debug!("ws {id} done: {}", ending.why());
            return crate::conversation::end(&mut socket, ending);
        }
    };
    let mut ws = socket.into_ws();
    ws.get_mut().never_wait(true);
    log::debug!("ws {id} held after event {cursor}, its thread ends");
    room.hold(Box::new(HeldWebSocket {
        ws,
        id,
        _place: place.keep(),
        watch: Some(watch),
        counters,
        cursor,
        deadline: WriteDeadline::default(),
        next_ping: Instant::now() + crate::waiting_room::out_of_phase(lab.config.heartbeat, id),
        last_heard,
        ending: None,
    }));
}

/// A WebSocket held without a thread (`--parking queue`): steps 3 and 4 by the dispatcher,
/// none of whose writes waits.
struct HeldWebSocket {
    ws: Box<WatchedSocket>,
    id: u64,
    _place: crate::ws::KeptPlace,
    /// The watcher's watch: its notice rings the dispatcher's doorbell.
    watch: Option<crate::watcher::Watch>,
    counters: crate::stats::LessonCounters,
    /// The last event written (or handed to tungstenite's buffer).
    cursor: u64,
    /// Bytes tungstenite holds that the socket has not taken yet.
    deadline: WriteDeadline,
    next_ping: Instant,
    last_heard: Instant,
    /// Why it ended (`serve` said `Ended`), for `end`.
    ending: Option<Ending>,
}

impl HeldConnection for HeldWebSocket {
    fn serve(&mut self, lab: &Lab, pass: &mut Pass) -> Result<(), Ended> {
        match self.step(lab, pass) {
            Ok(()) => Ok(()),
            Err(ending) => {
                self.ending = Some(ending);
                Err(Ended)
            }
        }
    }

    fn due(&self, now: Instant, last: u64) -> Instant {
        if self.deadline.waiting() {
            now + crate::waiting_room::RETRY_UNSENT
        } else if self.cursor < last {
            now // more than one pass's worth was waiting: the rest now
        } else {
            self.next_ping
        }
    }

    /// Step 4: the ending. A close we send waits for the client's (`conversation::end`), so
    /// it gets a thread of its own; the others are done at once.
    fn end(mut self: Box<Self>, lab: &Arc<Lab>) {
        let ending = self.ending.take().unwrap_or_else(|| Ending::gone("ended"));
        log::debug!("ws {} done: {}", self.id, ending.why());
        drop(self.watch.take());
        self.ws.get_mut().never_wait(false);
        if lab.shutdown.is_stopping() {
            lab.stats.let_go(&lab.stats.websockets);
            return self.close_going_away(); // not a thread each for ten thousand sockets
        }
        if !matches!(ending, Ending::Close { .. }) {
            lab.stats.let_go(&lab.stats.websockets);
            return crate::conversation::end_socket(&mut self.ws, self.id, ending);
        }
        // The socket keeps its place under `--max-parked` until its drain ends, as on a
        // thread of its own (a loop of refused handshakes cannot outrun the limit).
        let lab_for_thread = lab.clone();
        let closing = std::thread::Builder::new()
            .name(format!("ws-{}-close", self.id))
            .spawn(move || {
                // BLOCKS: in the drain, until the client closes its side or two seconds pass.
                crate::conversation::end_socket(&mut self.ws, self.id, ending);
                lab_for_thread
                    .stats
                    .let_go(&lab_for_thread.stats.websockets);
            });
        if let Err(e) = closing {
            // (The closure, and the socket with it, is dropped: shut without its close.)
            lab.stats.let_go(&lab.stats.websockets);
            log::warn!("no thread to close a WebSocket with ({e}): it is shut without its close");
        }
    }

    /// The lab is stopping: close 1001, if the socket takes it now.
    fn stop(mut self: Box<Self>, lab: &Lab) {
        lab.stats.let_go(&lab.stats.websockets);
        self.close_going_away();
    }
}

impl HeldWebSocket {
    /// Close 1001, if the socket takes it now, and shut it.
    fn close_going_away(&mut self) {
        let away = tungstenite::protocol::CloseFrame {
            code: CloseCode::Away,
            reason: "the lab is stopping".into(),
        };
        self.ws.get_mut().never_wait(true);
        let _ = self.ws.close(Some(away));
        let _ = self.ws.flush();
        let _ = self
            .ws
            .get_ref()
            .stream()
            .shutdown(std::net::Shutdown::Both);
    }

    /// Step 3 without a thread: what the client sent (when the watcher saw it), the rest of
    /// the last write, the events after the cursor, the ping.
    fn step(&mut self, lab: &Lab, pass: &mut Pass) -> Result<(), Ending> {
        let now = pass.now;
        if self.ws.get_ref().noticed() {
            while let Some(message) = next_message(&mut self.ws, &mut self.last_heard)? {
                on_message(lab, self.id, message)?;
            }
            if lab.watcher.stopping() {
                let why = "the lab is stopping";
                return Err(Ending::close(CloseCode::Away, why, why));
            }
            if let Some(watch) = &self.watch {
                watch.again();
            }
        }
        if now > self.last_heard + 2 * lab.config.heartbeat {
            return Err(Ending::gone("the client went silent"));
        }
        if self.deadline.waiting() {
            self.flush(lab, now)?;
            if self.deadline.waiting() {
                return Ok(()); // still full: the next events wait in the ring
            }
        }
        if self.cursor < pass.last {
            let backlog = pass.since(lab, self.cursor);
            let mut size = 0;
            let mut frames = Vec::new();
            if backlog.missed > 0 {
                frames.push(json!({ "missed": backlog.missed }).to_string());
                self.cursor += backlog.missed;
            }
            for event in &backlog.events {
                if size >= MOST_PER_PASS {
                    break; // the rest on a later pass
                }
                frames.push(event.to_json().to_string());
                size += frames.last().map_or(0, String::len);
                self.cursor = event.id;
                self.counters.streamed(1);
            }
            for frame in frames {
                self.write(frame)?;
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + crate::waiting_room::out_of_phase(lab.config.heartbeat, self.id);
            self.write_message(Message::Ping(Vec::new().into()))?;
        }
        self.flush(lab, now)
    }

    fn write(&mut self, text: String) -> Result<(), Ending> {
        self.write_message(Message::text(text))
    }

    /// Into tungstenite's buffer, and to the socket as far as it takes it now.
    fn write_message(&mut self, message: Message) -> Result<(), Ending> {
        let bytes = crate::ws::frame_size(message.len());
        match self.ws.write(message) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Ending::gone(format!("write failed: {e}"))),
        }
        self.counters.wrote(bytes);
        Ok(())
    }

    /// Offer the socket what tungstenite holds; bytes it has not taken within
    /// `--write-timeout` end the conversation (a slow consumer).
    fn flush(&mut self, lab: &Lab, now: Instant) -> Result<(), Ending> {
        let waiting = match self.ws.flush() {
            Ok(()) => false,
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => return Err(Ending::gone(format!("write failed: {e}"))),
        };
        if self.deadline.overdue(waiting, lab, now) {
            log::info!(
                "ws {} dropped a slow consumer: a message not out within --write-timeout",
                self.id
            );
            return Err(Ending::gone("a slow consumer"));
        }
        Ok(())
    }
}
