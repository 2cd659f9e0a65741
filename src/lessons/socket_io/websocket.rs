//! Step 2: Engine.IO's WebSocket transport, at `/socket.io/` on the lab's one port.
//!
//! ```text
//! GET /socket.io/?EIO=4&transport=websocket&sid=Xq…   101     ← the upgrade of a polling session
//! ► 2probe                        the reader: "is this socket alive?"
//! ◄ 3probe                        the writer answers; a held GET is answered 6 (noop)
//! ► 5                             upgrade: the session's transport is now this socket
//! ◄ (every packet the outbox held, then events as they come)
//! ```
//!
//! Without `sid` the session is born here (its open packet says `"upgrades":[]`). As in
//! chapter 12, two threads per socket: `ws-N` reads and hands each packet to `receive`; the
//! writer `ws-N-writer` first answers the probe, then parks on the session like a held GET
//! does (`Session::wait_for_packets`) and writes what it finds, text frames for text packets
//! and binary frames for attachments.
//!
//! The handshake is an ordinary GET with `Upgrade: websocket`: the connection's thread reads
//! it, and the server's upgrade `match` hands it here, so the official client upgrades with
//! its default options.

use super::session::{hold_limit, Closer, Session, Transport};
use super::{EngineIoPacket, SocketIo};
use crate::connection::Request;
use crate::http::Query;
use crate::lab::Lab;
use crate::ws::{close_frame, drain, ReadOnly};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

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

/// The reader's news for the writer while the upgrade is under way.
enum Probe {
    /// `2probe` came: answer `3probe`.
    Probed,
    /// `5` came: this socket is the session's transport now.
    Upgraded,
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
    let (socket, id, _place) = upgraded.into_websocket(crate::ws::config(lab.config.max_body));
    serve(lab, socket_io, socket, id, accepted)
}

/// One Socket.IO WebSocket: a new session, the upgrade of a polling one, or a spare.
fn serve(
    lab: &Lab,
    socket_io: &SocketIo,
    mut socket: WebSocket<TcpStream>,
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
            drain(socket.get_ref(), id);
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
    let read_half = socket.get_ref().try_clone()?;
    let write_half = socket.get_ref().try_clone()?;
    drop(socket);
    let reader =
        WebSocket::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config(socket_io)));
    let writer_config = config(socket_io).read_buffer_size(64); // it never reads (ws::writer_config)
    let writer = WebSocket::from_raw_socket(write_half, Role::Server, Some(writer_config));
    let (to_writer, from_reader) = unbounded();
    let session = &session;
    let counters = &counters;
    thread::scope(|scope| -> io::Result<()> {
        let writer_thread = thread::Builder::new()
            .name(format!("ws-{id}-writer"))
            .spawn_scoped(scope, move || {
                let _thread = lab.stats.websocket_threads.enter();
                let mut writer = writer;
                let why = write_packets(
                    lab,
                    socket_io,
                    &mut writer,
                    session,
                    upgrading,
                    &from_reader,
                    counters,
                );
                log::debug!("ws {id} (socket.io) writer done: {why}");
                let _ = writer.get_ref().shutdown(Shutdown::Write);
            })?;
        read_packets(lab, socket_io, reader, session, upgrading, to_writer, id);
        // BLOCKS: until the writer has written its last frame.
        let _ = writer_thread.join();
        Ok(())
    })
}

/// The reader (`ws-N`): every frame is an Engine.IO packet for `receive`, but the probe and
/// the upgrade, which are this transport's own business.
fn read_packets(
    lab: &Lab,
    socket_io: &SocketIo,
    mut socket: WebSocket<ReadOnly>,
    session: &Arc<Session>,
    mut upgrading: bool,
    to_writer: Sender<Probe>,
    id: u64,
) {
    let ending = loop {
        // BLOCKS: until the client sends a frame, or the socket is shut down.
        let packet = match socket.read() {
            Ok(Message::Text(text)) => EngineIoPacket::decode(text.as_str()),
            // Over a WebSocket, binary packets are binary frames (no "b", no base64).
            Ok(Message::Binary(bytes)) => Ok(EngineIoPacket::Binary(bytes.to_vec())),
            Ok(Message::Close(_)) => break "the client closed the socket".to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Capacity(e)) => {
                super::close(
                    socket_io,
                    session,
                    Closer::Server,
                    &format!("over maxPayload: {e}"),
                );
                return drain(&socket.get_ref().0, id);
            }
            Err(e) => break format!("read ended: {e}"),
        };
        let packet = match packet {
            Ok(packet) => packet,
            Err(e) if upgrading => break e.to_string(),
            Err(e) => {
                super::close(socket_io, session, Closer::ProtocolError, &e.to_string());
                return drain(&socket.get_ref().0, id);
            }
        };
        if upgrading {
            match packet {
                EngineIoPacket::Ping(data) if data == "probe" => {
                    // A held GET ends with a noop, so the client can pause polling.
                    if session.state().polling_get {
                        session.send(vec![EngineIoPacket::Noop]);
                    }
                    let _ = to_writer.send(Probe::Probed);
                }
                EngineIoPacket::Upgrade => {
                    session.settle_upgrade(true);
                    log::debug!("socket.io {} upgraded to ws {id}", session.sid);
                    upgrading = false;
                    let _ = to_writer.send(Probe::Upgraded);
                }
                _ => break "a packet other than the probe or the upgrade".into(),
            }
            continue;
        }
        if let Err(why) = super::receive(lab, socket_io, session, packet) {
            super::close(socket_io, session, Closer::ProtocolError, &why);
            return drain(&socket.get_ref().0, id);
        }
    };
    log::debug!("ws {id} (socket.io) reader done: {ending}");
    if upgrading {
        // The probe failed: the session goes on polling, as if this socket never came.
        session.settle_upgrade(false);
    } else {
        super::close(socket_io, session, Closer::Client, &ending);
    }
    // Dropping `to_writer` tells a writer still waiting for the upgrade.
}

/// The writer (`ws-N-writer`): the probe's answer, then the session's packets.
fn write_packets(
    lab: &Lab,
    socket_io: &SocketIo,
    socket: &mut WebSocket<TcpStream>,
    session: &Arc<Session>,
    upgrading: bool,
    from_reader: &Receiver<Probe>,
    counters: &crate::stats::LessonCounters,
) -> String {
    if upgrading {
        let deadline = Instant::now() + UPGRADE_TIMEOUT;
        loop {
            // BLOCKS: until the reader reports the probe or the upgrade, or the timeout.
            match crate::workarounds::recv_deadline(from_reader, deadline) {
                Ok(Probe::Probed) => {
                    if let Err(e) = socket.send(Message::text("3probe")) {
                        return format!("write failed: {e}");
                    }
                }
                Ok(Probe::Upgraded) => break,
                Err(RecvTimeoutError::Disconnected) => return "the probe failed".into(),
                Err(RecvTimeoutError::Timeout) => {
                    session.settle_upgrade(false);
                    return "no upgrade within 10 s".into();
                }
            }
        }
        // A GET that was held until now hands the feed over; the writer picks it up.
    }
    loop {
        let deadline = Instant::now() + hold_limit(&socket_io.settings);
        // BLOCKS: until the outbox or the hub has something for this session.
        let delivery = session.wait_for_packets(deadline, false);
        counters.delivered(delivery.events);
        for packet in delivery.packets {
            let message = match packet {
                // Nothing to say: a noop helps only a held GET.
                EngineIoPacket::Noop => continue,
                EngineIoPacket::Binary(bytes) => Message::binary(bytes),
                packet => Message::text(packet.encode()),
            };
            let bytes = message.len();
            if let Err(e) = socket.send(message) {
                super::close(socket_io, session, Closer::Client, "a write failed");
                if let tungstenite::Error::Io(io) = &e {
                    if crate::http::is_write_timeout(io) {
                        lab.stats
                            .slow_consumers
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                return format!("write failed: {e}");
            }
            counters.wrote(crate::ws::frame_size(bytes));
        }
        if delivery.ended {
            let _ = socket.close(Some(close_frame(CloseCode::Normal, "")));
            let _ = socket.flush();
            return "the session ended".into();
        }
        // Engine.IO's writer sends a batch, then waits for it to drain before the next; the
        // pause lets the client read each batch on its own (a client that handles one message
        // per read, like the protocol suite's, misses the second of two that arrive at once).
        thread::sleep(DRAIN_PAUSE);
    }
}

/// The writer's pause between batches (see `write_packets`).
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
