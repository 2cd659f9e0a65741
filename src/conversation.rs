//! # One WebSocket conversation, driven the same way for every endpoint: the lesson's
//! `/events/ws`, Socket.IO's, Atmosphere's and Bayeux's.
//!
//! ```text
//! conn-7 (ws 7)  read the frames that came with the handshake
//!                watch the socket (the socket watcher's notice)
//!   (time passes: the thread is parked in the endpoint's wait)
//! ◄ text …       woken by the endpoint's source (an event, a session's packet): it writes
//! ► text …       woken by the notice: every frame that is there, each to the endpoint
//! ◄ ping         the endpoint's tick (its heartbeat), every interval
//! ► close 1000   the client closes: its close echoed, TCP closed at once
//! ```
//!
//! An endpoint (`Endpoint`) says only what is its own: what it waits on (`wait`), what it
//! does with a client's message (`on_message`) and on its tick (`on_tick`), and how it
//! cleans up (`ended`). The driver, `converse`, owns the rest:
//!
//! 1. the frames the client sent behind its handshake, read before the first wait (no notice
//!    will come for them);
//! 2. the watch, whose notice wakes the endpoint's wait (and nudges whatever else the
//!    endpoint names: Socket.IO's session, Bayeux's queue);
//! 3. the loop: the endpoint's wait (the thread **blocks** there), then every frame the
//!    notice announced, then the silence limit and the tick;
//! 4. the ending, the same for all (`Ending`), as RFC 6455 says:
//!    - the client closed: its close is echoed, and TCP closes at once (§5.5.1);
//!    - a frame broke the protocol: close 1002 (§7.4.1), 1007 for text that is not UTF-8
//!      (§8.1), 1009 for a message over the limit; an endpoint refuses a binary frame with
//!      1003. The close frame goes first, then our FIN at once (§7.1.7); what the client
//!      still sends is read and dropped until it closes too, or for two seconds, so that our
//!      close reaches it without a reset (`end`);
//!    - the client went silent, or a write failed: the socket is shut, no frame;
//!    - the lab is stopping (the watcher tells every socket): close 1001, "going away".
//!
//! Every write has a deadline (`Socket::send`): `--write-timeout` for the whole message, not
//! for each piece the kernel takes, so a client whose window stays shut is gone after it.
//!
//! (One trait, implemented by the four WebSocket endpoints: not a trait per transport, but
//! the four places one WebSocket loop used to be written out.)

use crate::stats::{LessonCounters, Stats};
use crate::watcher::SocketWatcher;
use crate::ws::{frame_size, next_frame, WatchedSocket};
use crossbeam_channel::Receiver;
use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

/// What an endpoint says and hears; `converse` does the rest.
pub trait Endpoint {
    /// **BLOCKS**: until the endpoint's own source has something for the client (which it
    /// writes, with `socket.send`), a notice arrives on `noticed` (the client sent
    /// something, or left), or `deadline` (the next tick) passes.
    fn wait(
        &mut self,
        socket: &mut Socket<'_>,
        noticed: &Receiver<()>,
        deadline: Instant,
    ) -> Result<(), Ending>;

    /// A text or binary message from the client.
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) -> Result<(), Ending>;

    /// The heartbeat is due: a ping, a padding, nothing.
    fn on_tick(&mut self, _socket: &mut Socket<'_>) -> Result<(), Ending> {
        Ok(())
    }

    /// How long until the next tick (asked after each one).
    fn tick_every(&self) -> Duration;

    /// Heard nothing for this long (no frame, no pong), the client has gone. `None`: the
    /// endpoint's protocol finds that out itself (Engine.IO's ping timeout).
    fn silence(&self) -> Option<Duration>;

    /// What else to wake when the watcher notices the client (a wait that is not on
    /// `noticed`). It must not block.
    fn nudge(&self) -> Option<Box<dyn Fn() + Send + Sync>> {
        None
    }

    /// The conversation ended, for any reason: the endpoint's own cleanup (its session).
    fn ended(&mut self, _ending: &Ending) {}
}

/// How a conversation ended: what `finish` does with the socket.
#[derive(Debug)]
pub enum Ending {
    /// The client sent its close, which was echoed: TCP closes at once.
    ClientClosed(String),
    /// We close: this frame (`None`: a close frame without a status, as Engine.IO sends),
    /// then our FIN at once.
    Close {
        code: Option<CloseCode>,
        reason: String,
        why: String,
    },
    /// The client is gone (silent, left, a write failed): the socket is shut, no frame.
    Gone(String),
}

impl Ending {
    /// We close with `code`, saying `reason` on the wire; `why` for the log.
    pub fn close(code: CloseCode, reason: impl Into<String>, why: impl Into<String>) -> Ending {
        Ending::Close {
            code: Some(code),
            reason: reason.into(),
            why: why.into(),
        }
    }

    /// We close with a close frame that has no status (the client reads 1005), as Engine.IO's
    /// WebSocket transport does.
    pub fn close_without_status(why: impl Into<String>) -> Ending {
        Ending::Close {
            code: None,
            reason: String::new(),
            why: why.into(),
        }
    }

    pub fn gone(why: impl Into<String>) -> Ending {
        Ending::Gone(why.into())
    }

    /// The client's side ended the conversation (it closed, left or went silent), rather
    /// than us.
    pub fn by_client(&self) -> bool {
        !matches!(self, Ending::Close { .. })
    }

    pub fn why(&self) -> String {
        match self {
            Ending::ClientClosed(why) | Ending::Gone(why) => why.clone(),
            Ending::Close { code, why, .. } => match code {
                Some(code) => format!("closed with {code}: {why}"),
                None => format!("closed: {why}"),
            },
        }
    }
}

/// The socket as an endpoint writes to it: every write on a deadline, counted for its lesson.
pub struct Socket<'a> {
    /// On the heap: tungstenite's `WebSocket` is a few hundred bytes, and on the stack the
    /// frames that carried it into the conversation held it more than once, which took every
    /// WebSocket thread's deepest path into a fourth stack page, one it then keeps
    /// (REFERENCE.md, chapter 14, measures it).
    pub ws: Box<WatchedSocket>,
    /// The connection's number (`ws N` in the logs).
    pub id: u64,
    pub counters: &'a LessonCounters,
    stats: &'a Stats,
    /// When the client last sent anything (a pong counts).
    last_heard: Instant,
}

impl<'a> Socket<'a> {
    pub fn new(
        ws: Box<WatchedSocket>,
        id: u64,
        counters: &'a LessonCounters,
        stats: &'a Stats,
    ) -> Socket<'a> {
        Socket {
            ws,
            id,
            counters,
            stats,
            last_heard: Instant::now(),
        }
    }

    /// Send one message, whole within `--write-timeout`, and count its bytes. A failed write
    /// ends the conversation (a timeout counts a slow consumer in `/stats`).
    pub fn send(&mut self, message: Message) -> Result<(), Ending> {
        let bytes = frame_size(message.len());
        self.ws.get_mut().begin_write();
        // BLOCKS: while the client's receive buffer and our send buffer are full, until the
        // message is out or the deadline passes.
        if let Err(e) = self.ws.send(message) {
            if let tungstenite::Error::Io(io) = &e {
                if crate::http::is_write_timeout(io) {
                    self.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    log::info!(
                        "ws {} dropped a slow consumer: a message not out within --write-timeout",
                        self.id
                    );
                }
            }
            return Err(Ending::gone(format!("write failed: {e}")));
        }
        self.counters.wrote(bytes);
        Ok(())
    }

    pub fn send_text(&mut self, text: impl Into<String>) -> Result<(), Ending> {
        self.send(Message::text(text.into()))
    }

    /// The socket itself, for a holder without a thread (`waiting_room`).
    pub fn into_ws(self) -> Box<WatchedSocket> {
        self.ws
    }

    /// A notice came that no read has taken yet.
    pub fn noticed(&self) -> bool {
        self.ws.get_ref().noticed()
    }
}

/// Steps 1–4: the whole conversation, from the frames behind the handshake to the socket's
/// end. The endpoint's `ended` has run when it returns.
pub fn converse(endpoint: &mut impl Endpoint, socket: &mut Socket<'_>, watcher: &SocketWatcher) {
    let ending = talk(endpoint, socket, watcher).unwrap_err();
    log::debug!("ws {} done: {}", socket.id, ending.why());
    endpoint.ended(&ending);
    end(socket, ending);
}

/// Steps 1–3, until the conversation ends (the `Err`).
fn talk(
    endpoint: &mut impl Endpoint,
    socket: &mut Socket<'_>,
    watcher: &SocketWatcher,
) -> Result<(), Ending> {
    // 1. Frames that came with the handshake are in tungstenite's buffer already.
    read_frames(endpoint, socket)?;
    // 2. The watch: its notice wakes `noticed`, and what the endpoint names.
    let (tell, noticed) = crossbeam_channel::bounded::<()>(1);
    let nudge = endpoint.nudge();
    let watch = socket.ws.get_ref().watch(watcher, move || {
        let _ = tell.try_send(()); // (a notice already waiting says the same)
        if let Some(nudge) = &nudge {
            nudge();
        }
    });
    let watch = watch.map_err(|e| Ending::gone(format!("could not watch the socket: {e}")))?;
    // 3. The loop.
    let mut next_tick = Instant::now() + endpoint.tick_every();
    loop {
        // BLOCKS: in the endpoint's wait, until its source has something, the watcher's
        // notice, or the next tick.
        endpoint.wait(socket, &noticed, next_tick)?;
        if socket.noticed() {
            log::trace!(
                "ws {} noticed: its client sent something, or left",
                socket.id
            );
            read_frames(endpoint, socket)?;
            // The lab is stopping: the watcher has told every socket (and watches no more).
            if watcher.stopping() {
                let why = "the lab is stopping";
                return Err(Ending::close(CloseCode::Away, why, why));
            }
            watch.again();
        }
        let now = Instant::now();
        if let Some(silence) = endpoint.silence() {
            if now > socket.last_heard + silence {
                return Err(Ending::gone("the client went silent"));
            }
        }
        if now >= next_tick {
            endpoint.on_tick(socket)?;
            next_tick = now + endpoint.tick_every();
        }
    }
}

/// Every frame that is there, in turn, each message to the endpoint. `Ok` once the rest has
/// not come yet.
fn read_frames(endpoint: &mut impl Endpoint, socket: &mut Socket<'_>) -> Result<(), Ending> {
    while let Some(message) = next_message(&mut socket.ws, &mut socket.last_heard)? {
        endpoint.on_message(socket, message)?;
    }
    Ok(())
}

/// The next text or binary message among the frames that are there (`None`: the rest has not
/// come yet). A ping or pong only says the client lives (tungstenite answers a ping itself);
/// a close, or a frame that breaks the protocol, ends the conversation. Any frame sets
/// `last_heard`.
pub fn next_message(
    ws: &mut WatchedSocket,
    last_heard: &mut Instant,
) -> Result<Option<Message>, Ending> {
    loop {
        // Never blocks: the bytes the watcher saw, else `None`.
        let Some(frame) = next_frame(ws) else {
            return Ok(None);
        };
        *last_heard = Instant::now();
        match frame {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => return Ok(Some(message)),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(frame)) => {
                // tungstenite has queued the echo of the client's close: send it, and end.
                let _ = ws.flush();
                let code = frame.map_or(CloseCode::Status, |f| f.code);
                return Err(Ending::ClientClosed(format!(
                    "the client closed with {code}"
                )));
            }
            Err(e) => return Err(refusal(e)),
        }
    }
}

/// What a read that failed means (RFC 6455 §7.4.1).
fn refusal(error: tungstenite::Error) -> Ending {
    use tungstenite::Error;
    match error {
        Error::Capacity(e) => Ending::close(CloseCode::Size, "message too big", e.to_string()),
        Error::Utf8(e) => Ending::close(CloseCode::Invalid, "text is not UTF-8", e),
        Error::Protocol(e) => Ending::close(CloseCode::Protocol, "protocol error", e.to_string()),
        e => Ending::gone(format!("read ended: {e}")),
    }
}

/// Step 4: the socket's end (also for a socket refused before any conversation).
pub fn end(socket: &mut Socket<'_>, ending: Ending) {
    end_socket(&mut socket.ws, socket.id, ending);
}

/// `end` for a socket without its `Socket` (one held without a thread, `waiting_room`).
pub fn end_socket(ws: &mut WatchedSocket, id: u64, ending: Ending) {
    match ending {
        Ending::ClientClosed(_) | Ending::Gone(_) => {
            let _ = ws.get_ref().stream().shutdown(Shutdown::Both);
        }
        Ending::Close { code, reason, .. } => {
            let frame = code.map(|code| CloseFrame {
                code,
                reason: reason.into(),
            });
            ws.get_mut().begin_write();
            let _ = ws.close(frame);
            let _ = ws.flush();
            let stream = ws.get_ref().stream();
            // Our FIN right behind the close frame: the client learns at once that we are done.
            let _ = stream.shutdown(Shutdown::Write);
            // BLOCKS: until the client closes its side, or two seconds pass.
            drain(stream, id);
        }
    }
}

/// After our close and FIN: read and drop whatever the client still sends (the rest of a
/// message we refused, its own close frame) until it closes its side, for at most two
/// seconds. Closing a socket with unread bytes in it makes the kernel send a reset, and a
/// reset can overtake our close frame: the client would see "connection reset" (a browser:
/// 1006) instead of our code. (`a_close_the_server_starts_ends_cleanly_without_a_reset`)
fn drain(mut stream: &TcpStream, id: u64) {
    let until = Instant::now() + Duration::from_secs(2);
    // On the heap: a stack page touched once stays resident for the thread's life.
    let mut buffer = vec![0u8; 16 * 1024];
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
