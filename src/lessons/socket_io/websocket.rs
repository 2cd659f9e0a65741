//! Step 2: Engine.IO's WebSocket transport, at `/socket.io/` on the lab's one port.
//!
//! ```text
//! GET /socket.io/?EIO=4&transport=websocket&sid=Xq…   101     ← the upgrade of a polling session
//! ► 2probe                        the client: "is this socket alive?"
//! ◄ 3probe                        the socket's thread answers; a held GET is answered 6 (noop)
//! ► 5                             upgrade: the session's transport is now this socket
//! ◄ (every packet the outbox held, then events as they come)
//! ```
//!
//! Without `sid` the session is born here (its open packet says `"upgrades":[]`). As in
//! chapter 12, one thread per socket, the connection's, and the socket watcher's notice when
//! the client has sent something. During the upgrade it waits for that notice alone (the
//! probe, then the upgrade, within 10 s). Then it parks on the session like a held GET does
//! (`Session::wait_for_packets`; the notice arrives there as `Outgoing::Noticed`), writes
//! what it finds, text frames for text packets and binary frames for attachments, and reads
//! what the client sent, handing each packet to `receive`.
//!
//! The handshake is an ordinary GET with `Upgrade: websocket`: the connection's thread reads
//! it, and the server's upgrade `match` hands it here, so the official client upgrades with
//! its default options.

use super::session::{hold_limit, Closer, Session, Transport};
use super::{EngineIoPacket, SocketIo};
use crate::connection::Request;
use crate::http::Query;
use crate::lab::Lab;
use crate::ws::{close_frame, drain, next_frame, WatchedSocket};
use crossbeam_channel::bounded;
use std::io;
use std::net::Shutdown;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::Message;

/// How long a probed upgrade may take before the socket is given up (the session stays on
/// polling).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// What an accepted `/socket.io/` handshake is for.
pub enum Accepted {
    /// A new session, born on this socket.
    New,
    /// The upgrade of this polling session.
    Upgrade(Arc<Session>),
    /// A session that is upgrading or upgraded already: as Engine.IO does, the handshake
    /// succeeds and the socket is closed at once.
    Spare,
}

/// The handshake's checks for `/socket.io/`: Engine.IO v4, the websocket transport, our own
/// origin, and for an upgrade a known session (taken for this socket at once, so a second
/// socket with the same sid is a spare).
pub fn check(
    lab: &Lab,
    socket_io: &SocketIo,
    query: &Query,
    origin: Option<&str>,
    client: &crate::forwarded::Client,
) -> Result<Accepted, (u16, String)> {
    if query.get("EIO") != Some("4") {
        return Err((400, "Unsupported protocol version".into()));
    }
    if query.get("transport") != Some("websocket") {
        return Err((400, "Transport unknown".into()));
    }
    if origin.is_some_and(|origin| !lab.is_own_origin(origin, client)) {
        return Err((403, "Forbidden".into()));
    }
    let Some(sid) = query.get("sid") else {
        return Ok(Accepted::New);
    };
    let session = socket_io
        .session(sid)
        .ok_or((400, "Session ID unknown".to_string()))?;
    let mut state = session.state();
    if state.closed || state.upgrading || state.transport != Transport::Polling {
        return Ok(Accepted::Spare);
    }
    state.upgrading = true;
    drop(state);
    Ok(Accepted::Upgrade(session))
}

fn config(socket_io: &SocketIo) -> WebSocketConfig {
    crate::ws::config(socket_io.settings.max_payload)
}

/// `/socket.io/` with `Upgrade: websocket` (the server's upgrade `match`): our checks, then
/// the handshake every WebSocket endpoint shares (`ws::accept`).
pub fn upgrade(lab: &Lab, socket_io: &SocketIo, request: Request, query: &Query) -> io::Result<()> {
    let client = lab.client(&request);
    let checked = check(lab, socket_io, query, request.header("Origin"), &client);
    let Some((accepted, upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    // Messages up to Socket.IO's own `maxPayload`.
    let (socket, id, _place) = upgraded.into_watched_websocket(config(socket_io));
    serve(lab, socket_io, socket, id, accepted)
}

/// One Socket.IO WebSocket's conversation: what its thread owns or borrows.
struct Conversation<'a> {
    lab: &'a Lab,
    socket_io: &'a SocketIo,
    socket: WatchedSocket,
    session: &'a Arc<Session>,
    /// Still upgrading: only the probe and the upgrade may come.
    upgrading: bool,
    counters: &'a crate::stats::LessonCounters,
    id: u64,
}

/// How a conversation ended, and what is left to do with the socket.
enum Ending {
    /// Nothing more to say or read: shut the socket.
    Shut(String),
    /// A close we started (ours, or the session's end): what the client still sends is read
    /// first (`ws::drain`).
    Drain(String),
}

/// One Socket.IO WebSocket: a new session, the upgrade of a polling one, or a spare.
fn serve(
    lab: &Lab,
    socket_io: &SocketIo,
    mut socket: WatchedSocket,
    id: u64,
    accepted: Accepted,
) -> io::Result<()> {
    let counters = lab.count("socket_io");
    let upgrading = matches!(accepted, Accepted::Upgrade(_));
    let session = match accepted {
        Accepted::Upgrade(session) => session,
        Accepted::Spare => {
            log::debug!("ws {id} closed: its session upgrades or has upgraded already");
            let _ = socket.close(Some(close_frame(CloseCode::Policy, "already upgraded")));
            let _ = socket.flush();
            drain(socket.get_ref().stream(), id);
            return Ok(());
        }
        Accepted::New => {
            let session = socket_io.open(Transport::WebSocket);
            let open = socket_io.open_packet(&session, Transport::WebSocket);
            session.send(vec![open]);
            session
        }
    };
    log::debug!(
        "ws {id} is socket.io session {} ({})",
        session.sid,
        if upgrading { "upgrading" } else { "new" }
    );
    let mut c = Conversation {
        lab,
        socket_io,
        socket,
        session: &session,
        upgrading,
        counters: &counters,
        id,
    };
    let ending = converse(&mut c);
    if c.upgrading {
        // The probe failed: the session goes on polling, as if this socket never came.
        session.settle_upgrade(false);
    }
    let stream = c.socket.get_ref().stream();
    match ending {
        Ending::Shut(why) => {
            log::debug!("ws {id} (socket.io) done: {why}");
            let _ = stream.shutdown(Shutdown::Both);
        }
        Ending::Drain(why) => {
            log::debug!("ws {id} (socket.io) done: {why}");
            // BLOCKS: until the client closes its side, or two seconds pass.
            drain(stream, id);
        }
    }
    Ok(())
}

/// The upgrade (if this socket upgrades a polling session), then the session's packets and
/// the client's, until the session or the socket ends.
fn converse(c: &mut Conversation<'_>) -> Ending {
    // Frames that came with the handshake: no notice will come for them.
    if let Err(ending) = read_packets(c) {
        return ending;
    }
    let (tell, noticed) = bounded::<()>(1);
    let session = c.session.clone();
    let watch = c.socket.get_ref().watch(&c.lab.watcher, move || {
        let _ = tell.try_send(());
        session.notice_frames();
    });
    let watch = match watch {
        Ok(watch) => watch,
        Err(e) => return Ending::Shut(format!("could not watch the socket: {e}")),
    };
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    while c.upgrading {
        // BLOCKS: until the watcher says the client sent something (the probe, the upgrade),
        // or the upgrade's time is up.
        match crate::workarounds::recv_deadline(&noticed, deadline) {
            Ok(()) => {
                if let Err(ending) = read_packets(c) {
                    return ending;
                }
                watch.again();
            }
            Err(_) => return Ending::Shut("no upgrade within 10 s".into()),
        }
    }
    // A GET that was held until now hands the feed over; this thread picks it up.
    loop {
        let deadline = Instant::now() + hold_limit(&c.socket_io.settings);
        // BLOCKS: until the outbox or the hub has something for this session, or the
        // watcher's notice (`Outgoing::Noticed`).
        let delivery = c.session.wait_for_packets(deadline, false);
        if let Err(ending) = write_packets(c, delivery.packets, delivery.events) {
            return ending;
        }
        if delivery.ended {
            let _ = c.socket.close(Some(close_frame(CloseCode::Normal, "")));
            let _ = c.socket.flush();
            return Ending::Drain("the session ended".into());
        }
        if c.socket.get_ref().noticed() {
            if let Err(ending) = read_packets(c) {
                return ending;
            }
            watch.again();
        }
    }
}

/// Write a delivery's packets: text frames for text packets, binary frames for attachments.
fn write_packets(
    c: &mut Conversation<'_>,
    packets: Vec<EngineIoPacket>,
    events: usize,
) -> Result<(), Ending> {
    c.counters.delivered(events);
    let mut wrote = false;
    for packet in packets {
        let message = match packet {
            // Nothing to say: a noop helps only a held GET.
            EngineIoPacket::Noop => continue,
            EngineIoPacket::Binary(bytes) => Message::binary(bytes),
            packet => Message::text(packet.encode()),
        };
        let bytes = message.len();
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        if let Err(e) = c.socket.send(message) {
            super::close(c.socket_io, c.session, Closer::Client, "a write failed");
            crate::ws::count_if_slow(&c.lab.stats, &e);
            return Err(Ending::Shut(format!("write failed: {e}")));
        }
        c.counters.wrote(crate::ws::frame_size(bytes));
        wrote = true;
    }
    if wrote {
        // Engine.IO's writer sends a batch, then waits for it to drain before the next; the
        // pause lets the client read each batch on its own (a client that handles one
        // message per read, like the protocol suite's, misses the second of two that arrive
        // at once). BLOCKS: for the pause, 1 ms.
        thread::sleep(DRAIN_PAUSE);
    }
    Ok(())
}

/// The session closes because of us (`Closer::Server`, `Closer::ProtocolError`): Engine.IO's
/// close packet, which `close` queued, goes out before our side of the socket closes.
fn close_by_us(c: &mut Conversation<'_>, closer: Closer, why: &str) -> Ending {
    super::close(c.socket_io, c.session, closer, why);
    let queued = c.session.wait_for_packets(Instant::now(), true);
    let _ = write_packets(c, queued.packets, queued.events);
    Ending::Drain(why.to_string())
}

/// Every frame that is there: each is an Engine.IO packet for `receive`, but the probe and
/// the upgrade, which are this transport's own business. `Ok` once the rest has not come yet.
fn read_packets(c: &mut Conversation<'_>) -> Result<(), Ending> {
    let id = c.id;
    loop {
        // Never blocks: one read of the bytes the watcher saw, else `None`.
        let Some(frame) = next_frame(&mut c.socket) else {
            return Ok(());
        };
        let packet = match frame {
            Ok(Message::Text(text)) => EngineIoPacket::decode(text.as_str()),
            // Over a WebSocket, binary packets are binary frames (no "b", no base64).
            Ok(Message::Binary(bytes)) => Ok(EngineIoPacket::Binary(bytes.to_vec())),
            Ok(Message::Close(_)) => {
                // tungstenite has queued the echo of the client's close: send it, and end.
                let _ = c.socket.flush();
                return Err(client_gone(c, "the client closed the socket".into()));
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Capacity(e)) => {
                return Err(close_by_us(
                    c,
                    Closer::Server,
                    &format!("over maxPayload: {e}"),
                ));
            }
            Err(e) => return Err(client_gone(c, format!("read ended: {e}"))),
        };
        let packet = match packet {
            Ok(packet) => packet,
            Err(e) if c.upgrading => return Err(Ending::Shut(e.to_string())),
            Err(e) => return Err(close_by_us(c, Closer::ProtocolError, &e.to_string())),
        };
        if c.upgrading {
            match packet {
                EngineIoPacket::Ping(data) if data == "probe" => {
                    // A held GET ends with a noop, so the client can pause polling.
                    if c.session.state().polling_get {
                        c.session.send(vec![EngineIoPacket::Noop]);
                    }
                    if let Err(e) = c.socket.send(Message::text("3probe")) {
                        return Err(Ending::Shut(format!("write failed: {e}")));
                    }
                }
                EngineIoPacket::Upgrade => {
                    c.session.settle_upgrade(true);
                    log::debug!("socket.io {} upgraded to ws {id}", c.session.sid);
                    c.upgrading = false;
                }
                _ => {
                    let why = "a packet other than the probe or the upgrade";
                    return Err(Ending::Shut(why.into()));
                }
            }
            continue;
        }
        if let Err(why) = super::receive(c.lab, c.socket_io, c.session, packet) {
            return Err(close_by_us(c, Closer::ProtocolError, &why));
        }
    }
}

/// The client closed or left: the session ends with it (a probing socket leaves the session
/// to its polling).
fn client_gone(c: &Conversation<'_>, why: String) -> Ending {
    if !c.upgrading {
        super::close(c.socket_io, c.session, Closer::Client, &why);
    }
    Ending::Shut(why)
}

/// The pause between batches (see `write_packets`).
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
