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
use crate::conversation::{converse, Ending, Endpoint, Socket};
use crate::http::Query;
use crate::lab::Lab;
use crossbeam_channel::Receiver;
use std::io;
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
    /// A new session, born on this socket (opened by the check, so that a refusal under the
    /// caps is an HTTP answer; if the handshake fails after all, it expires unjoined).
    New(Arc<Session>),
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
        return match socket_io.open(Transport::WebSocket, client.ip) {
            Ok(session) => Ok(Accepted::New(session)),
            Err(_) => Err((
                super::TOO_MANY_SESSIONS.status,
                super::TOO_MANY_SESSIONS.message.into(),
            )),
        };
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
    let counters = lab.count("socket_io");
    let mut socket = Socket::new(socket, id, &counters, &lab.stats);
    let upgrading = matches!(accepted, Accepted::Upgrade(_));
    let session = match accepted {
        Accepted::Upgrade(session) => session,
        Accepted::Spare => {
            let why = "its session upgrades or has upgraded already";
            let ending = Ending::close(CloseCode::Policy, "already upgraded", why);
            crate::conversation::end(&mut socket, ending);
            return Ok(());
        }
        Accepted::New(session) => {
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
    let mut endpoint = SocketIoSocket {
        lab,
        socket_io,
        session,
        upgrading,
        upgrade_due: Instant::now() + UPGRADE_TIMEOUT,
        closer: None,
    };
    converse(&mut endpoint, &mut socket, &lab.watcher);
    Ok(())
}

/// What this endpoint adds to the conversation every WebSocket has: the session it carries,
/// and the upgrade.
struct SocketIoSocket<'a> {
    lab: &'a Lab,
    socket_io: &'a SocketIo,
    session: Arc<Session>,
    /// Still upgrading: only the probe and the upgrade may come, until `upgrade_due`.
    upgrading: bool,
    upgrade_due: Instant,
    /// Who ends the session, when it is not the client (a packet it could not parse).
    closer: Option<Closer>,
}

impl Endpoint for SocketIoSocket<'_> {
    /// During the upgrade, the notice alone (the probe, then the upgrade); then the session's
    /// packets, as a held GET waits for them.
    fn wait(
        &mut self,
        socket: &mut Socket<'_>,
        noticed: &Receiver<()>,
        deadline: Instant,
    ) -> Result<(), Ending> {
        if self.upgrading {
            if Instant::now() >= self.upgrade_due {
                return Err(Ending::close_without_status("no upgrade within 10 s"));
            }
            // BLOCKS: until the watcher says the client sent something (the probe, the
            // upgrade), or the upgrade's time is up.
            let _ = crate::workarounds::recv_deadline(noticed, deadline.min(self.upgrade_due));
            return Ok(());
        }
        // BLOCKS: until the outbox or the hub has something for this session, or the
        // watcher's notice (`Outgoing::Noticed`). (A GET that was held until the upgrade
        // handed the feed over; this thread picks it up.)
        let delivery = self.session.wait_for_packets(deadline, false);
        socket.counters.delivered(delivery.events);
        write_packets(socket, delivery.packets)?;
        if delivery.ended {
            // As Engine.IO's WebSocket transport: a close frame without a status.
            return Err(Ending::close_without_status("the session ended"));
        }
        Ok(())
    }

    /// Every frame is an Engine.IO packet for `receive`, but the probe and the upgrade, which
    /// are this transport's own business. A packet that cannot be read closes the socket at
    /// once, as the reference server does (a close frame without a status).
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) -> Result<(), Ending> {
        let packet = match message {
            Message::Text(text) => EngineIoPacket::decode(text.as_str()),
            // Over a WebSocket, binary packets are binary frames (no "b", no base64).
            Message::Binary(bytes) => Ok(EngineIoPacket::Binary(bytes.to_vec())),
            _ => return Ok(()),
        };
        let packet = packet.map_err(|e| self.protocol_error(e.to_string()))?;
        if !self.upgrading {
            return super::receive(self.lab, self.socket_io, &self.session, packet)
                .map_err(|why| self.protocol_error(why));
        }
        match packet {
            EngineIoPacket::Ping(data) if data == "probe" => {
                // A held GET ends with a noop, so the client can pause polling.
                if self.session.state().polling_get {
                    self.session.send(vec![EngineIoPacket::Noop]);
                }
                socket.send_text("3probe")
            }
            EngineIoPacket::Upgrade => {
                self.session.settle_upgrade(true);
                log::debug!(
                    "socket.io {} upgraded to ws {}",
                    self.session.sid,
                    socket.id
                );
                self.upgrading = false;
                Ok(())
            }
            _ => Err(self.protocol_error("a packet other than the probe or the upgrade".into())),
        }
    }

    fn tick_every(&self) -> Duration {
        hold_limit(&self.socket_io.settings)
    }

    /// Engine.IO's own pings find a silent client: its session ends.
    fn silence(&self) -> Option<Duration> {
        None
    }

    /// The watcher's notice also wakes the session's wait (`Outgoing::Noticed`).
    fn nudge(&self) -> Option<Box<dyn Fn() + Send + Sync>> {
        let session = self.session.clone();
        Some(Box::new(move || session.notice_frames()))
    }

    /// A socket that was upgrading leaves its session to polling, as if it had never come;
    /// otherwise the session ends with it.
    fn ended(&mut self, ending: &Ending) {
        if self.upgrading {
            self.session.settle_upgrade(false);
            return;
        }
        let closer = match self.closer {
            Some(closer) => closer,
            None if ending.by_client() => Closer::Client,
            None => Closer::Server,
        };
        super::close(
            self.socket_io,
            &self.session,
            closer,
            &format!("{ending:?}"),
        );
    }
}

impl SocketIoSocket<'_> {
    /// A packet that breaks the protocol: the session ends, and nothing is kept to recover.
    fn protocol_error(&mut self, why: String) -> Ending {
        if !self.upgrading {
            self.closer = Some(Closer::ProtocolError);
        }
        Ending::close_without_status(why)
    }
}

/// Write a delivery's packets: text frames for text packets, binary frames for attachments.
fn write_packets(socket: &mut Socket<'_>, packets: Vec<EngineIoPacket>) -> Result<(), Ending> {
    let mut wrote = false;
    for packet in packets {
        let message = match packet {
            // Nothing to say: a noop helps only a held GET.
            EngineIoPacket::Noop => continue,
            // (Engine.IO's WebSocket transport says its close with the close frame.)
            EngineIoPacket::Close => continue,
            EngineIoPacket::Binary(bytes) => Message::binary(bytes),
            packet => Message::text(packet.encode()),
        };
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        socket.send(message)?;
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

/// The pause between batches (see `write_packets`).
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
