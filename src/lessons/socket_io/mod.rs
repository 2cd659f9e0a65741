//! # Socket.IO: Engine.IO sessions (polling, then a WebSocket) carrying named events, acks and rooms.
//!
//! Socket.IO is two protocols. **Engine.IO v4** gives a session (`sid`) that starts on HTTP
//! long polling and upgrades to a WebSocket when it can; **Socket.IO v5** runs on top of it:
//! namespaces, named events, acknowledgements, rooms. The official `socket.io-client` speaks
//! both; this lesson is the server side, built from the lab's own parts: a held polling GET is
//! chapter 5's parked long poll, the `/lab` namespace's events come from the hub, and every
//! broadcast carries Socket.IO's recovery offset (`H.S`: the hub id and the socket's room
//! messages so far, `session::Offset`).
//!
//! ```text
//! GET /socket.io/?EIO=4&transport=polling                          ← handshake
//! 200  0{"maxPayload":1000000,"pingInterval":25000,"pingTimeout":20000,"sid":"Xq…","upgrades":["websocket"]}
//! POST /socket.io/?EIO=4&transport=polling&sid=Xq…   40/lab,{"name":"ada"}   ← CONNECT /lab
//! 200  ok
//! GET  /socket.io/?EIO=4&transport=polling&sid=Xq…
//! 200  40/lab,{"pid":"Zk…","sid":"p3…"}                             ← CONNECT answered
//! GET  /socket.io/?EIO=4&transport=polling&sid=Xq…
//!   (time passes: req-12 is parked on the session's outbox and the hub)
//! 200  42/lab,["event",{"id":7,"data":"At …"},"7.0"]                ← a hub event; "7.0" is its offset
//!                   ── the same port, with Upgrade: websocket ──
//! GET ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket&sid=Xq…   101
//! ► 2probe   ◄ 3probe                                               ← the probe
//!                   (the held GET is answered 6: noop, the client stops polling)
//! ► 5                                                               ← upgrade: from now on the socket
//! ► 42/lab,3["publish","hi"]   ◄ 43/lab,3[{"id":8}]                 ← an emit with an ack
//! ◄ 42/lab,["event",{"id":8,"data":"hi"},"8.0"]
//!   (pingInterval passes)
//! ◄ 2   ► 3                                                         ← the *server* pings in v4
//! ```
//!
//! 1. `handle` (HTTP): the handshake (`GET` without `sid`) makes a `Session`; a `GET` with
//!    `sid` parks on it (`Session::wait_for_packets`); a `POST` carries `\x1e`-separated
//!    packets from the client. One GET and one POST at a time: a second is a protocol error.
//! 2. `websocket::upgrade` (`/socket.io/` with `Upgrade: websocket`): a new session on a
//!    WebSocket, or the upgrade of a polling one (`2probe`, `3probe`, `6`, `5`).
//! 3. `receive`: every packet from the client, whatever its transport: pongs, closes, and
//!    Socket.IO packets (with their binary attachments), handed to `namespaces`.
//! 4. `heartbeat`: one thread for every session: pings each `pingInterval`, closes a session
//!    whose pong does not come within `pingTimeout`, or that joins no namespace within
//!    `connectTimeout`.
//! 5. `close`: the session leaves the registry; its transport is told (a `1`, or nothing when
//!    the client ended it); a `/lab` socket it had is kept for recovery for two minutes.
//!
//! **What it costs**: every Engine.IO packet carries a type character, every Socket.IO packet
//! its namespace and event name (about 30 bytes for a hub event before its data); polling
//! needs *sticky sessions* (every request of a session must reach the server that holds it,
//! unlike the lab's cursors); the upgrade is a second connection and a round trip that may
//! fail (then the session stays on polling, which is the fallback Socket.IO is known for).
//!
//! **Try it**: `cargo run --example socket_io`, open
//! <http://127.0.0.1:8080/lessons/socket_io> in two tabs, join a room and chat; or by hand:
//! `curl -s 'http://127.0.0.1:8080/socket.io/?EIO=4&transport=polling'`, then POST `40/lab,{"name":"me"}`
//! and GET with the `sid` it gave you.

mod engine_io;
pub mod namespaces;
mod packet;
mod session;
pub mod websocket;

pub use engine_io::Packet as EngineIoPacket;
pub use packet::{Kind, Packet};
pub use session::Session;

use crate::connection::Request;
use crate::http::{self, Query};
use crate::lab::Lab;
use crate::request::Method;
use crate::sessions::{Refused, SessionLimits, Sessions};
use crate::stats::LessonCounters;
use serde_json::{json, Value};
use session::{Closer, Socket, Transport};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Engine.IO server's settings: the flags' (`crate::config`).
pub use crate::config::SocketIoSettings as Settings;

/// How long a `/lab` socket whose session ended abnormally can still be recovered.
const RECOVERY_WINDOW: Duration = Duration::from_secs(120);
/// How long after a client's close its in-flight GET is still answered (with a noop).
const LAST_GET_GRACE: Duration = Duration::from_secs(1);
/// Recoverable sockets kept at most (the oldest go first).
const MAX_RECOVERABLE: usize = 10_000;

/// A `/lab` socket kept after its session ended, for the client to recover.
struct Recoverable {
    socket: Socket,
    until: Instant,
}

/// Every Socket.IO session of the lab.
pub struct SocketIo {
    pub settings: Settings,
    /// Every session, under the caps (`sessions`).
    sessions: Arc<Sessions<Session>>,
    recoverable: Mutex<HashMap<String, Recoverable>>,
    /// Held while a room message passes the sockets, and while a `/lab` socket moves between
    /// a session and `recoverable`: so each message meets each socket once, in one place or
    /// the other. (Without it, a message could be logged by a socket just before it moved and
    /// again in the recovery store, or miss a socket on its way back.) Taken before any
    /// session's state or `recoverable`.
    room_order: Mutex<()>,
    /// Polling sessions the client closed with no GET held, for a moment: see `last_get`.
    closed_by_client: Mutex<HashMap<String, Instant>>,
}

impl SocketIo {
    pub fn new(settings: Settings, limits: SessionLimits) -> SocketIo {
        SocketIo {
            settings,
            sessions: Arc::new(Sessions::new("socket.io", limits)),
            recoverable: Mutex::new(HashMap::new()),
            room_order: Mutex::new(()),
            closed_by_client: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions open now, and handshakes refused (for `/stats`).
    pub fn sessions_json(&self) -> Value {
        self.sessions.to_json()
    }

    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.sessions.get(sid)
    }

    /// **BLOCKS** while another room message passes the sockets, or a socket moves to or from
    /// the recovery store; the guard lets the next one go.
    fn room_order(&self) -> std::sync::MutexGuard<'_, ()> {
        self.room_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every session but none of their locks (to send to rooms).
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions.all()
    }

    /// A new session for the client at `from`, registered under the caps, its first ping
    /// (or connect deadline) on the heartbeat's schedule.
    fn open(&self, transport: Transport, from: IpAddr) -> Result<Arc<Session>, Refused> {
        let settings = &self.settings;
        let due = Instant::now() + settings.ping_interval.min(settings.connect_timeout);
        self.sessions
            .open(from, due, |sid| Session::new(sid, transport, settings))
    }

    /// The open packet's JSON; a session born on a WebSocket has nothing to upgrade to.
    fn open_packet(&self, session: &Session, transport: Transport) -> EngineIoPacket {
        let upgrades: &[&str] = match transport {
            Transport::Polling => &["websocket"],
            Transport::WebSocket => &[],
        };
        EngineIoPacket::Open(
            json!({
                "sid": session.sid,
                "upgrades": upgrades,
                "pingInterval": self.settings.ping_interval.as_millis() as u64,
                "pingTimeout": self.settings.ping_timeout.as_millis() as u64,
                "maxPayload": self.settings.max_payload,
            })
            .to_string(),
        )
    }

    fn keep_for_recovery(&self, pid: String, socket: Socket) {
        let mut recoverable = self.recoverable.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        recoverable.retain(|_, r| r.until > now);
        if recoverable.len() >= MAX_RECOVERABLE {
            if let Some(oldest) = recoverable
                .iter()
                .min_by_key(|(_, r)| r.until)
                .map(|(pid, _)| pid.clone())
            {
                recoverable.remove(&oldest);
            }
        }
        let until = now + RECOVERY_WINDOW;
        recoverable.insert(pid, Recoverable { socket, until });
    }

    /// A client closed this polling session while no GET was held; its GET may still be on
    /// the way (a POST and a GET travel on two connections and race each other).
    fn remember_closed(&self, sid: &str) {
        let mut closed = self
            .closed_by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        closed.retain(|_, until| *until > now);
        if closed.len() < MAX_RECOVERABLE {
            closed.insert(sid.to_string(), now + LAST_GET_GRACE);
        }
    }

    /// Is this GET the one that was on its way when the client closed? (Once only.)
    fn last_get(&self, sid: &str) -> bool {
        let mut closed = self
            .closed_by_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        closed
            .remove(sid)
            .is_some_and(|until| until > Instant::now())
    }

    /// A room message for the sockets kept for recovery that would have heard it: their logs
    /// record it, and a recovery replays it.
    fn record_for_the_absent(&self, hears: impl Fn(&Socket) -> bool, said: &Value) {
        let mut recoverable = self.recoverable.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for kept in recoverable.values_mut() {
            if kept.until > now && hears(&kept.socket) {
                kept.socket.said.record(said.clone());
            }
        }
    }

    /// The socket a client asks to recover, if it is still kept.
    fn recover(&self, pid: &str) -> Option<Socket> {
        let mut recoverable = self.recoverable.lock().unwrap_or_else(|p| p.into_inner());
        recoverable
            .remove(pid)
            .filter(|r| r.until > Instant::now())
            .map(|r| r.socket)
    }
}

/// An Engine.IO error: its own JSON form, `{"code": N, "message": "..."}`.
struct EioError {
    status: u16,
    code: u8,
    message: &'static str,
}

impl EioError {
    const fn new(status: u16, code: u8, message: &'static str) -> EioError {
        EioError {
            status,
            code,
            message,
        }
    }
}

const UNKNOWN_TRANSPORT: EioError = EioError::new(400, 0, "Transport unknown");
const UNKNOWN_SID: EioError = EioError::new(400, 1, "Session ID unknown");
const BAD_HANDSHAKE_METHOD: EioError = EioError::new(400, 2, "Bad handshake method");
const BAD_REQUEST: EioError = EioError::new(400, 3, "Bad request");
const FORBIDDEN: EioError = EioError::new(403, 4, "Forbidden");
const UNSUPPORTED_VERSION: EioError = EioError::new(400, 5, "Unsupported protocol version");
const TOO_LARGE: EioError = EioError::new(413, 3, "Payload too large");
/// A handshake over the caps (`--max-sessions`): refused as engine.io's `allowRequest`
/// refuses, 403 and code 4, with the reason as its message.
const TOO_MANY_SESSIONS: EioError = EioError::new(403, 4, "Too many sessions: try again later");
/// A GET to hold when `--max-parked` are held already: 503, in Engine.IO's error form.
const ALL_HELD: EioError = EioError::new(503, 3, "too many held requests (--max-parked)");

fn reply(
    lab: &Lab,
    request: Request,
    status: u16,
    content_type: &str,
    body: &str,
    counters: &LessonCounters,
) -> io::Result<()> {
    let headers = lab.cors_with_credentials(&request);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http::write_response(
        request,
        status,
        content_type,
        &headers,
        body.as_bytes(),
        counters,
    )
}

/// An Engine.IO payload (`text/plain`), with the page's CORS headers.
fn payload(lab: &Lab, request: Request, body: &str, counters: &LessonCounters) -> io::Result<()> {
    reply(
        lab,
        request,
        200,
        "text/plain; charset=UTF-8",
        body,
        counters,
    )
}

fn refuse(
    lab: &Lab,
    request: Request,
    error: EioError,
    counters: &LessonCounters,
) -> io::Result<()> {
    counters.error();
    let body = json!({ "code": error.code, "message": error.message }).to_string();
    reply(
        lab,
        request,
        error.status,
        "application/json",
        &body,
        counters,
    )
}

/// Step 1: everything on `/socket.io/` over HTTP.
pub fn handle(lab: &Lab, socket_io: &SocketIo, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("socket_io");
    if *request.method() == Method::Options {
        return lab.preflight_with_credentials(request, &counters);
    }
    if query.get("EIO") != Some("4") {
        return refuse(lab, request, UNSUPPORTED_VERSION, &counters);
    }
    match query.get("transport") {
        Some("polling") => {}
        // The WebSocket transport is a handshake (`Upgrade: websocket`), which the server's
        // upgrade `match` hands to `websocket::upgrade`; a plain GET for it is refused.
        _ => return refuse(lab, request, UNKNOWN_TRANSPORT, &counters),
    }
    if let Some(origin) = http::header(&request, "Origin") {
        if !lab.is_own_origin(origin, &lab.client(&request)) {
            return refuse(lab, request, FORBIDDEN, &counters);
        }
    }
    let Some(sid) = query.get("sid") else {
        if *request.method() != Method::Get {
            return refuse(lab, request, BAD_HANDSHAKE_METHOD, &counters);
        }
        return handshake(lab, socket_io, request, &counters);
    };
    let Some(session) = socket_io.session(sid) else {
        if *request.method() == Method::Get && socket_io.last_get(sid) {
            // The GET that raced the client's own close: answered as if it had come first.
            return payload(lab, request, &EngineIoPacket::Noop.encode(), &counters);
        }
        return refuse(lab, request, UNKNOWN_SID, &counters);
    };
    match *request.method() {
        Method::Get => poll(lab, socket_io, request, &session, &counters),
        Method::Post => post(lab, socket_io, request, &session, &counters),
        _ => refuse(lab, request, BAD_REQUEST, &counters),
    }
}

/// The handshake: a new session, and its open packet as the answer.
fn handshake(
    lab: &Lab,
    socket_io: &SocketIo,
    request: Request,
    counters: &LessonCounters,
) -> io::Result<()> {
    let session = match socket_io.open(Transport::Polling, lab.client(&request).ip) {
        Ok(session) => session,
        Err(_) => return refuse(lab, request, TOO_MANY_SESSIONS, counters),
    };
    log::debug!("socket.io session {} opened on polling", session.sid);
    let open = socket_io.open_packet(&session, Transport::Polling).encode();
    payload(lab, request, &open, counters)
}

/// A held GET: the session's parked long poll.
fn poll(
    lab: &Lab,
    socket_io: &SocketIo,
    request: Request,
    session: &Arc<Session>,
    counters: &LessonCounters,
) -> io::Result<()> {
    {
        let mut state = session.state();
        if state.closed || state.transport != Transport::Polling {
            // Upgraded: polling requests with this sid are over.
            drop(state);
            return refuse(lab, request, BAD_REQUEST, counters);
        }
        if state.pong_due.is_some_and(|due| due <= Instant::now()) {
            drop(state);
            close(socket_io, session, Closer::Server, "ping timeout");
            return refuse(lab, request, UNKNOWN_SID, counters);
        }
        if state.upgrading {
            // A WebSocket has probed: this GET waits for the upgrade's outcome (briefly), so it
            // is refused if the upgrade is done and answered with a noop if not.
            drop(state);
            if session.wait_for_upgrade(Duration::from_millis(100)) {
                return refuse(lab, request, BAD_REQUEST, counters);
            }
            return payload(lab, request, &EngineIoPacket::Noop.encode(), counters);
        }
        if state.polling_get {
            // Two GETs at once: the client is confused (or two tabs share a sid).
            drop(state);
            close(
                socket_io,
                session,
                Closer::Server,
                "a second GET while one was held",
            );
            return refuse(lab, request, BAD_REQUEST, counters);
        }
        state.polling_get = true;
    }
    let Some(_held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        session.state().polling_get = false;
        return refuse(lab, request, ALL_HELD, counters);
    };
    log::debug!("socket.io {} GET parked", session.sid);
    let arrived = Instant::now();
    let deadline = arrived + session::hold_limit(&socket_io.settings);
    // Held in slices that end at each look (with --departures on), to see the client leave: packets
    // written into a connection whose client has gone would be lost, so the session is
    // closed instead, as the real engine.io does ("poll connection closed prematurely").
    let mut nothing = None;
    let left = || request.client_left();
    // BLOCKS: until the outbox or the hub has something for this session, the deadline, or
    // a look finds the client gone.
    let waited = crate::hub::wait_looking(deadline, lab.config.departures, left, |slice| {
        let delivery = session.wait_for_packets(slice, true);
        match delivery.nothing {
            true => nothing = Some(delivery),
            false => return Some(delivery),
        }
        None
    });
    let Ok(woke) = waited else {
        // (Closed while the GET still counts as held: not the race of a client's own close
        // packet, which `close` remembers to answer a late GET.)
        let why = "the held GET's client left (poll connection closed prematurely)";
        close(socket_io, session, Closer::Client, why);
        session.state().polling_get = false;
        return Ok(());
    };
    // (At the deadline: the noop the last wait added.)
    let delivery = woke.or(nothing).expect("at least one wait");
    session.state().polling_get = false;
    log::debug!(
        "socket.io {} GET answered with {} packet(s)",
        session.sid,
        delivery.packets.len()
    );
    counters.delivered(delivery.events);
    log::trace!("socket.io GET held {} ms", arrived.elapsed().as_millis());
    payload(
        lab,
        request,
        &engine_io::encode_payload(&delivery.packets),
        counters,
    )
}

/// A POST: packets from the client, answered `ok`.
fn post(
    lab: &Lab,
    socket_io: &SocketIo,
    request: Request,
    session: &Arc<Session>,
    counters: &LessonCounters,
) -> io::Result<()> {
    {
        let mut state = session.state();
        if state.closed || state.transport != Transport::Polling {
            drop(state);
            return refuse(lab, request, BAD_REQUEST, counters);
        }
        if state.polling_post {
            drop(state);
            close(
                socket_io,
                session,
                Closer::Server,
                "a second POST while one was read",
            );
            return refuse(lab, request, BAD_REQUEST, counters);
        }
        state.polling_post = true;
    }
    let body = http::read_body(&request, socket_io.settings.max_payload);
    session.state().polling_post = false;
    // Engine.IO 4 sends binary over polling as base64 text (`b…`): octets are another
    // protocol's, and the reference server closes the session for them ("invalid content").
    if http::header(&request, "Content-Type") == Some("application/octet-stream") {
        close(
            socket_io,
            session,
            Closer::Server,
            "an application/octet-stream body",
        );
        return refuse(lab, request, BAD_REQUEST, counters);
    }
    let body = match body {
        Ok(body) => body,
        // Over maxPayload: refused, and the session lives on, as the reference server's does.
        Err(error) if error.status == 413 => return refuse(lab, request, TOO_LARGE, counters),
        Err(_) => {
            close(socket_io, session, Closer::Server, "an unreadable body");
            return refuse(lab, request, BAD_REQUEST, counters);
        }
    };
    let packets = match engine_io::decode_payload(&body) {
        Ok(packets) => packets,
        Err(e) => {
            close(socket_io, session, Closer::ProtocolError, &e.to_string());
            return refuse(lab, request, BAD_REQUEST, counters);
        }
    };
    for packet in packets {
        if let Err(why) = receive(lab, socket_io, session, packet) {
            close(socket_io, session, Closer::ProtocolError, &why);
            return refuse(lab, request, BAD_REQUEST, counters);
        }
    }
    reply(lab, request, 200, "text/html", "ok", counters)
}

/// Step 3: one packet from the client, from either transport. `Err` is a protocol error:
/// the caller closes the session.
pub fn receive(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    packet: EngineIoPacket,
) -> Result<(), String> {
    match packet {
        EngineIoPacket::Pong(_) => {
            let mut state = session.state();
            state.pong_due = None;
            state.next_ping = Instant::now() + socket_io.settings.ping_interval;
            Ok(())
        }
        EngineIoPacket::Close => {
            close(socket_io, session, Closer::Client, "the client closed");
            Ok(())
        }
        EngineIoPacket::Message(text) => {
            let packet = Packet::decode(&text).map_err(|e| e.to_string())?;
            if packet.attachments > 0 {
                let mut state = session.state();
                if state.binary.is_some() {
                    return Err("a binary packet before the last one's attachments".into());
                }
                state.binary = Some((packet, Vec::new()));
                return Ok(());
            }
            if session.state().binary.is_some() {
                return Err("a packet where an attachment was due".into());
            }
            namespaces::receive(lab, socket_io, session, packet, Vec::new())
        }
        EngineIoPacket::Binary(bytes) => {
            let complete = {
                let mut state = session.state();
                let Some((_, attachments)) = state.binary.as_mut() else {
                    return Err("an attachment that no packet announced".into());
                };
                attachments.push(bytes);
                let (packet, attachments) = state.binary.as_ref().expect("just checked");
                if attachments.len() == packet.attachments {
                    state.binary.take()
                } else {
                    None
                }
            };
            match complete {
                Some((packet, attachments)) => {
                    namespaces::receive(lab, socket_io, session, packet, attachments)
                }
                None => Ok(()),
            }
        }
        // In Engine.IO 4 the server pings and the client pongs; a client that pings (as v3
        // clients did) speaks another protocol, and the real server closes its session.
        // (The upgrade's `2probe` is the WebSocket reader's, before any packet comes here.)
        EngineIoPacket::Ping(_) => Err("a ping from the client (Engine.IO 3's direction)".into()),
        EngineIoPacket::Noop => Ok(()),
        EngineIoPacket::Open(_) | EngineIoPacket::Upgrade => {
            Err("an open or upgrade packet where none belongs".into())
        }
    }
}

/// Step 5: end a session. Idempotent: the first caller wins.
pub fn close(socket_io: &SocketIo, session: &Arc<Session>, closer: Closer, why: &str) {
    // No room message may pass between taking the sockets and keeping them for recovery.
    let order = socket_io.room_order();
    let sockets = {
        let mut state = session.state();
        if state.closed {
            return;
        }
        state.closed = true;
        let polling = state.transport == Transport::Polling && !state.upgrading;
        if closer == Closer::Client && polling && !state.polling_get {
            socket_io.remember_closed(&session.sid);
        }
        std::mem::take(&mut state.sockets)
    };
    socket_io.sessions.close(&session.sid);
    // A `/lab` socket not left on purpose (its DISCONNECT removes it) can be recovered, but
    // not after a protocol error.
    let sockets = if closer == Closer::ProtocolError {
        Default::default()
    } else {
        sockets
    };
    for (_, socket) in sockets {
        if let Some(pid) = socket.pid.clone() {
            socket_io.keep_for_recovery(pid, socket);
        }
    }
    drop(order);
    session.end(closer);
    log::debug!("socket.io session {} closed: {why}", session.sid);
}

/// `POST /socket.io/kick?id=SOCKET`: the teacher's view ends a student's `/lab` socket (the
/// client hears "io server disconnect"). Only from the lab's own machine (`127.0.0.1`, `::1`,
/// or one of its interfaces' addresses), where the teacher sits: a student's browser gets 403.
pub fn kick(lab: &Lab, socket_io: &SocketIo, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("socket_io");
    let client = lab.client(&request);
    let localhost = [
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    let from_here = !client.via_proxy
        && (localhost.contains(&client.ip)
            || crate::classroom::interface_addresses().contains(&client.ip));
    if !from_here {
        return http::HttpError::new(403, "only the lab's own machine (the teacher) may kick")
            .reply(request, &counters);
    }
    let Some(id) = query.get("id") else {
        return http::HttpError::bad_request("kick needs id=SOCKET").reply(request, &counters);
    };
    if namespaces::kick(lab, socket_io, id) {
        log::info!("socket.io socket {id} kicked from the teacher's view");
        http::write_no_content(request, &[], &counters)
    } else {
        http::HttpError::new(404, "no /lab socket with that id").reply(request, &counters)
    }
}

/// `GET /vendor/socket.io.min.js`: the official browser client, from `node_modules` when
/// `npm ci` has put it there (in the current directory or the lab's source folder), for the
/// page's `?client=official`. The lab itself never needs it.
pub fn official_client(lab: &Lab, request: Request) -> io::Result<()> {
    let bundle = "socket.io-client/dist/socket.io.min.js";
    super::serve_installed_client(lab, request, "socket_io", Some(bundle))
}

/// Step 4: start the heartbeat thread (once, with the lab), the sessions' sweeper: at each
/// session's due time it pings, or closes a silent one (`heartbeat`).
pub fn spawn_heartbeat(
    socket_io: Arc<SocketIo>,
    stop: crossbeam_channel::Receiver<()>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let sessions = socket_io.sessions.clone();
    sessions.spawn_sweeper("socket.io-heartbeat", stop, move |session| {
        heartbeat(&socket_io, session)
    })
}

/// Step 4, for one session that is due: ping it, or close it if it is silent; when it is due
/// next (`None`: closed).
fn heartbeat(socket_io: &SocketIo, session: &Arc<Session>) -> Option<Instant> {
    let settings = &socket_io.settings;
    let now = Instant::now();
    let mut state = session.state();
    if state.closed {
        return None;
    }
    let late_pong = state.pong_due.is_some_and(|due| due <= now);
    let no_connect = state.sockets.is_empty() && state.connect_due.is_some_and(|due| due <= now);
    if late_pong || no_connect {
        drop(state);
        let why = if late_pong {
            "ping timeout"
        } else {
            "no CONNECT within the connect timeout"
        };
        close(socket_io, session, Closer::Server, why);
        return None;
    }
    if state.pong_due.is_none() && state.next_ping <= now {
        state.pong_due = Some(now + settings.ping_timeout);
        drop(state);
        if !session.send(vec![EngineIoPacket::Ping(String::new())]) {
            close(socket_io, session, Closer::Server, "slow consumer");
            return None;
        }
    } else {
        drop(state);
    }
    Some(session.due())
}
