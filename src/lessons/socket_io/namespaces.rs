//! What the lab's Socket.IO server does with packets: its three namespaces.
//!
//! - `/lab`, the lesson's own: the hub's events arrive as `"event"` with `{"id", "data"}` and
//!   the recovery offset; `emit("publish", text, ack)` publishes to the hub and
//!   is acked `{"id": N}`; `join`/`leave` rooms; `say` as socket.io's server-side broadcasts,
//!   never back to the sender: to a room's other members (`socket.to(room)`), to everyone
//!   else (`socket.broadcast`), leaving out a room's members (`except`); `disconnect-me`
//!   makes the server end the socket (DISCONNECT: "io server disconnect"); `ask-me` makes
//!   the *server* emit a `"question"` with an ack id, and the client's ack comes back as
//!   `"answered"`. CONNECT needs an auth payload with a `name`; without one
//!   it is refused with CONNECT_ERROR.
//! - `/` and `/custom` behave as the protocol's reference server for its conformance suite:
//!   CONNECT is answered with `"auth"` and the auth payload, `"message"` with
//!   `"message-back"` and the same arguments (attachments too), `"message-with-ack"` is acked
//!   with its arguments.
//! - `/room-NAME` (NAME: 1 to 32 letters, digits or `-`): dynamic namespaces, as
//!   `io.of(/^\/room-[\w-]+$/)` makes them: created by their first CONNECT, gone with their
//!   last socket, at most 16 at once. Their middleware (socket.io's `use`) checks the auth
//!   payload's `token` (`let-me-in`, this lab's teaching password) and refuses a CONNECT
//!   without it with `{message, data}`. A `say` goes to every other socket in the namespace.
//! - Any other namespace: CONNECT_ERROR `{"message": "Invalid namespace"}`.
//!
//! Any packet but CONNECT for a namespace the client has not joined is a protocol error: the
//! real server closes the connection ("invalid state"), and so does this one.

use super::packet::{Kind, Packet};
use super::session::{Closer, Offset, SaidLog, Session, Socket, MAX_ASKED};
use super::SocketIo;
use crate::lab::Lab;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The namespaces besides `/lab` that answer as the reference server does.
const REFERENCE_NAMESPACES: &[&str] = &["/", "/custom"];
/// Longest chat name and room name.
const MAX_NAME: usize = 32;
/// Rooms one `/lab` socket may be in at once.
const MAX_ROOMS: usize = 32;
/// Dynamic namespaces (`/room-*`) alive at once.
const MAX_DYNAMIC: usize = 16;
/// The token the dynamic namespaces' middleware asks for in the auth payload.
pub const ROOM_TOKEN: &str = "let-me-in";

/// A dynamic namespace's name: `/room-` and 1 to 32 letters, digits or `-`.
fn is_dynamic(namespace: &str) -> bool {
    namespace.strip_prefix("/room-").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= MAX_NAME
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// The dynamic namespaces with a socket in them now (they exist while one does).
pub fn dynamic_namespaces(socket_io: &SocketIo) -> BTreeSet<String> {
    socket_io
        .all_sessions()
        .iter()
        .flat_map(|s| {
            s.state()
                .sockets
                .keys()
                .filter(|n| is_dynamic(n))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A server-initiated disconnect of `/lab`, as `socket.disconnect()` on the server:
/// DISCONNECT for `/lab`, and the socket goes. The client reports "io server disconnect" and
/// does not reconnect by itself; the session (and its other namespaces) stays.
pub fn disconnect_from_lab(lab: &Lab, socket_io: &SocketIo, session: &Arc<Session>) -> bool {
    let bye = Packet::new(Kind::Disconnect, "/lab", None);
    let joined = session.state().sockets.contains_key("/lab");
    if !joined {
        return false;
    }
    send(lab, socket_io, session, &bye, &[]);
    if session.state().sockets.remove("/lab").is_some() {
        session.clear_feed();
    }
    log::debug!(
        "socket.io {} disconnected from /lab by the server",
        session.sid
    );
    true
}

/// Who is on `/lab` now, for the teacher's view: each socket's id and chat name (at most
/// `limit` of them).
pub fn lab_sockets(socket_io: &SocketIo, limit: usize) -> Vec<Value> {
    socket_io
        .all_sessions()
        .iter()
        .filter_map(|s| {
            let state = s.state();
            state
                .sockets
                .get("/lab")
                .map(|socket| json!({ "id": socket.id, "name": socket.name }))
        })
        .take(limit)
        .collect()
}

/// The teacher's kick: end the `/lab` socket whose id is `socket_id`. `false` if none is.
pub fn kick(lab: &Lab, socket_io: &SocketIo, socket_id: &str) -> bool {
    let session = socket_io.all_sessions().into_iter().find(|s| {
        s.state()
            .sockets
            .get("/lab")
            .is_some_and(|socket| socket.id == socket_id)
    });
    session.is_some_and(|session| disconnect_from_lab(lab, socket_io, &session))
}

/// One Socket.IO packet (with its attachments) from the client.
pub fn receive(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    packet: Packet,
    attachments: Vec<Vec<u8>>,
) -> Result<(), String> {
    let namespace = packet.namespace.as_str();
    let joined = session.state().sockets.contains_key(namespace);
    if !joined && !matches!(packet.kind, Kind::Connect | Kind::ConnectError) {
        return Err(format!(
            "a packet for {namespace}, which this client has not joined"
        ));
    }
    match packet.kind {
        Kind::Connect => connect(lab, socket_io, session, namespace, packet.data.clone()),
        Kind::Disconnect => {
            let left = session.state().sockets.remove(namespace);
            if left.is_some() && namespace == "/lab" {
                session.clear_feed();
            }
            log::debug!("socket.io {} left {namespace}", session.sid);
            Ok(())
        }
        Kind::Event | Kind::BinaryEvent => {
            let socket = session.state().sockets.get(namespace).cloned();
            match socket {
                Some(socket) => event(lab, socket_io, session, &socket, &packet, attachments),
                None => Err(format!("an event for {namespace}, which this client left")),
            }
        }
        Kind::Ack | Kind::BinaryAck => {
            let id = packet.ack_id.ok_or("an ACK without an id")?;
            // An ack for no question waiting (never asked, answered already, or forgotten
            // after `ASK_TIMEOUT`) is ignored, as the real server's `onack` does.
            let Some((question, _)) = session.state().asked.remove(&id) else {
                log::debug!(
                    "socket.io {} ACK {id} for no question waiting: ignored",
                    session.sid
                );
                return Ok(());
            };
            let answer = packet.args().into_iter().next().unwrap_or(Value::Null);
            let said = json!({ "question": question, "answer": answer });
            send(
                lab,
                socket_io,
                session,
                &Packet::event(namespace, vec![json!("answered"), said], 0),
                &[],
            );
            Ok(())
        }
        Kind::ConnectError => Err("CONNECT_ERROR is for servers to send".into()),
    }
}

/// CONNECT: join a namespace (or be refused with CONNECT_ERROR).
fn connect(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    namespace: &str,
    auth: Option<Value>,
) -> Result<(), String> {
    if session.state().sockets.contains_key(namespace) {
        return Err(format!("a second CONNECT to {namespace}"));
    }
    let auth = auth.unwrap_or_else(|| json!({}));
    if REFERENCE_NAMESPACES.contains(&namespace) {
        let socket = Socket {
            id: crate::lab::random_id(),
            pid: None,
            name: String::new(),
            rooms: BTreeSet::new(),
            said: SaidLog::default(),
        };
        let answer = json!({ "sid": socket.id });
        joined(lab, socket_io, session, namespace, socket, answer);
        send(
            lab,
            socket_io,
            session,
            &Packet::event(namespace, vec![json!("auth"), auth], 0),
            &[],
        );
        return Ok(());
    }
    if is_dynamic(namespace) {
        // The namespace's middleware: the auth payload must carry the token.
        if auth["token"].as_str() != Some(ROOM_TOKEN) {
            let refusal = json!({
                "message": "not authorized",
                "data": { "reason": "token", "expected": "auth: {token}" },
            });
            refuse_connect(lab, socket_io, session, namespace, refusal);
            return Ok(());
        }
        // Made by its first CONNECT; at most MAX_DYNAMIC at once.
        let alive = dynamic_namespaces(socket_io);
        if !alive.contains(namespace) && alive.len() >= MAX_DYNAMIC {
            let refusal = json!({
                "message": "too many rooms",
                "data": { "max": MAX_DYNAMIC },
            });
            refuse_connect(lab, socket_io, session, namespace, refusal);
            return Ok(());
        }
        let socket = Socket {
            id: crate::lab::random_id(),
            pid: None,
            name: auth["name"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(MAX_NAME)
                .collect(),
            rooms: BTreeSet::new(),
            said: SaidLog::default(),
        };
        let answer = json!({ "sid": socket.id });
        joined(lab, socket_io, session, namespace, socket, answer);
        return Ok(());
    }
    if namespace != "/lab" {
        // As the real server: an unknown namespace is refused with a message only.
        let refusal = json!({ "message": "Invalid namespace" });
        refuse_connect(lab, socket_io, session, namespace, refusal);
        return Ok(());
    }
    let name = auth["name"].as_str().map(str::trim).unwrap_or("");
    if name.is_empty() || name.chars().count() > MAX_NAME {
        // A refusal by the namespace's own check (socket.io's middleware, `next(err)`):
        // `{message, data}`, the client's `err.data` saying what to fix.
        let refusal = json!({
            "message": "a name (1 to 32 characters) is required",
            "data": { "field": "name", "min": 1, "max": MAX_NAME },
        });
        refuse_connect(lab, socket_io, session, namespace, refusal);
        return Ok(());
    }
    // From taking the socket out of the recovery store until it sits in this session, with
    // what it missed queued, no room message may pass (`SocketIo::room_order`): one would
    // find the socket in neither place, or be queued before the older ones it missed.
    let order = socket_io.room_order();
    // Recovery: a known pid and an offset (`H.S`, see `session::Offset`) whose hub events the
    // ring, and whose room messages the socket's log, still cover.
    let recovered = match (auth["pid"].as_str(), auth["offset"].as_str()) {
        (Some(pid), Some(offset)) => socket_io
            .recover(pid)
            .zip(Offset::parse(offset))
            .filter(|(socket, offset)| socket.said.after(offset.said).1 == 0),
        _ => None,
    };
    let (socket, offset) = match recovered {
        Some((socket, offset)) => {
            let hub = offset.hub.min(lab.hub.last_id());
            let said = offset.said.min(socket.said.last());
            (socket, Offset { hub, said })
        }
        None => {
            let socket = Socket {
                id: crate::lab::random_id(),
                pid: Some(crate::lab::random_id()),
                name: name.to_string(),
                rooms: BTreeSet::new(),
                said: SaidLog::default(),
            };
            let fresh = Offset {
                hub: lab.hub.last_id(),
                said: 0,
            };
            (socket, fresh)
        }
    };
    let cursor = offset.hub;
    // Subscribe and read the backlog under one lock: nothing slips in between.
    let (backlog, subscription) = lab.hub.subscribe_with_channel(cursor);
    let (socket, recovered, offset) = if backlog.missed > 0 {
        // The ring has moved past the offset: this is a new socket after all.
        let fresh = Socket {
            pid: Some(crate::lab::random_id()),
            id: crate::lab::random_id(),
            rooms: BTreeSet::new(),
            name: name.to_string(),
            said: SaidLog::default(),
        };
        let from_now = Offset {
            hub: lab.hub.last_id(),
            said: 0,
        };
        (fresh, false, from_now)
    } else {
        let recovered = recovered_pid(&auth, &socket);
        (socket, recovered, offset)
    };
    // The room messages it missed, from its own log (a fresh socket's is empty).
    let (missed_said, _) = socket.said.after(offset.said);
    let answer = json!({ "sid": socket.id, "pid": socket.pid });
    log::debug!(
        "socket.io {} joined /lab as {:?} (recovered: {recovered}, from event {cursor})",
        session.sid,
        socket.name
    );
    let events = if recovered { &backlog.events[..] } else { &[] };
    {
        let mut state = session.state();
        if state.closed {
            // The session ended while we looked: the socket goes back to be recovered later.
            drop(state);
            if let Some(pid) = socket.pid.clone() {
                socket_io.keep_for_recovery(pid, socket);
            }
            return Ok(());
        }
        state.connect_due = None;
        state.sockets.insert(namespace.to_string(), socket);
        // What the client has been rendered so far: up to its offset.
        state.rendered = Offset {
            hub: events.last().map_or(offset.hub, |e| e.id),
            said: offset.said,
        };
    }
    // Queued in order, the guard still held: the missed events, the missed room messages,
    // then CONNECT, as the reference server does (its socket queues what it missed before
    // its CONNECT): the client buffers them and emits them just before "connect" (an app
    // that clears its state on "connect" loses them, with the real server as here). A full
    // outbox closes the session, after the guard is let go (closing takes it too).
    let mut full = false;
    if !events.is_empty() {
        // Every missed event, in order, as one group: before anything the feed brings.
        let group = events
            .iter()
            .map(|e| {
                let stamped = Offset {
                    hub: e.id,
                    said: offset.said,
                };
                super::session::lab_event(e, stamped)
            })
            .collect();
        full |= !session.send(group);
    }
    for (seq, said) in missed_said {
        full |= !session.say(seq, said);
    }
    full |= !session.emit(&Packet::new(Kind::Connect, namespace, Some(answer)), &[]);
    drop(order);
    if full {
        lab.stats
            .slow_consumers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::close(socket_io, session, Closer::Server, "slow consumer");
        return Ok(());
    }
    session.install_feed(subscription);
    Ok(())
}

fn recovered_pid(auth: &Value, socket: &Socket) -> bool {
    auth["pid"].as_str().is_some() && auth["pid"].as_str() == socket.pid.as_deref()
}

/// The socket joins `namespace`, and the CONNECT is answered with `answer`.
fn joined(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    namespace: &str,
    socket: Socket,
    answer: Value,
) {
    {
        let mut state = session.state();
        state.connect_due = None;
        state.sockets.insert(namespace.to_string(), socket);
    }
    let connected = Packet::new(Kind::Connect, namespace, Some(answer));
    send(lab, socket_io, session, &connected, &[]);
}

fn refuse_connect(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    namespace: &str,
    refusal: Value,
) {
    log::debug!("socket.io {} refused {namespace}: {refusal}", session.sid);
    let error = Packet::new(Kind::ConnectError, namespace, Some(refusal));
    send(lab, socket_io, session, &error, &[]);
}

/// Queue a packet; a client that does not read its outbox is closed.
fn send(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    packet: &Packet,
    attachments: &[Vec<u8>],
) {
    if !session.emit(packet, attachments) {
        lab.stats
            .slow_consumers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::close(
            socket_io,
            session,
            Closer::Server,
            "slow consumer (outbox full)",
        );
    }
}

/// An EVENT on a joined namespace.
fn event(
    lab: &Lab,
    socket_io: &SocketIo,
    session: &Arc<Session>,
    socket: &Socket,
    packet: &Packet,
    attachments: Vec<Vec<u8>>,
) -> Result<(), String> {
    let namespace = packet.namespace.as_str();
    let name = packet.event_name().unwrap_or("");
    let args = packet.args();
    let ack = |reply: Vec<Value>, attachments: &[Vec<u8>]| {
        if let Some(id) = packet.ack_id {
            send(
                lab,
                socket_io,
                session,
                &Packet::ack(namespace, id, reply, attachments.len()),
                attachments,
            );
        }
    };
    if is_dynamic(namespace) {
        // `say` to everyone else in this namespace (`socket.broadcast` there).
        if name == "say" {
            let text = args.first().and_then(|a| a["text"].as_str());
            let reply = match text {
                Some(text) => {
                    let said = json!({ "from": socket.name, "text": text });
                    let packet = Packet::event(namespace, vec![json!("said"), said], 0);
                    let mut delivered = 0;
                    for member in socket_io.all_sessions() {
                        let there = member.state().sockets.contains_key(namespace);
                        if member.sid != session.sid && there {
                            send(lab, socket_io, &member, &packet, &[]);
                            delivered += 1;
                        }
                    }
                    json!({ "delivered": delivered })
                }
                None => json!({ "error": "say takes {\"text\"}" }),
            };
            ack(vec![reply], &[]);
        }
        return Ok(());
    }
    if namespace != "/lab" {
        match name {
            "message" => {
                let mut back = vec![json!("message-back")];
                back.extend(args);
                let reply = Packet::event(namespace, back, attachments.len());
                send(lab, socket_io, session, &reply, &attachments);
            }
            "message-with-ack" => ack(args, &attachments),
            _ => {}
        }
        return Ok(());
    }
    match name {
        "publish" => {
            let reply = match args.first().and_then(Value::as_str) {
                Some(text) if text.len() <= lab.config.max_body => match lab.publish(text) {
                    Ok(event) => json!({ "id": event.id }),
                    Err(e) => json!({ "error": e.to_string() }),
                },
                Some(_) => json!({ "error": "longer than --max-body" }),
                None => json!({ "error": "publish takes a string" }),
            };
            ack(vec![reply], &[]);
        }
        "join" | "leave" => {
            let reply = match args.first().and_then(Value::as_str).and_then(room_name) {
                Some(room) => {
                    let mut state = session.state();
                    // The socket may have left `/lab` since this event was read (a DISCONNECT
                    // on the other transport during an upgrade): nothing to join then.
                    let Some(socket) = state.sockets.get_mut("/lab") else {
                        return Ok(());
                    };
                    let full = socket.rooms.len() >= MAX_ROOMS && !socket.rooms.contains(&room);
                    if name == "join" && full {
                        json!({ "error": format!("at most {MAX_ROOMS} rooms per socket") })
                    } else {
                        if name == "join" {
                            socket.rooms.insert(room.clone());
                        } else {
                            socket.rooms.remove(&room);
                        }
                        // The room and how many: never the whole list, which grows with it.
                        json!({ "room": room, "rooms": socket.rooms.len() })
                    }
                }
                None => json!({ "error": "a room is a name of 1 to 32 characters" }),
            };
            ack(vec![reply], &[]);
        }
        "say" => {
            // socket.io's server-side broadcasts, never back to the sender (who has its ack):
            // `{room, text}` is `socket.to(room).emit`, `{text}` alone `socket.broadcast.emit`,
            // and `except` leaves out a room's members (`.except(room)`).
            let said_args = args.first().cloned().unwrap_or(Value::Null);
            let room = said_args["room"].as_str().map(room_name);
            let except = said_args["except"].as_str().map(room_name);
            let text = said_args["text"].as_str();
            let reply = match (room, except, text) {
                (Some(None), _, _) | (_, Some(None), _) => {
                    json!({ "error": "a room is a name of 1 to 32 characters" })
                }
                (Some(Some(room)), _, Some(_)) if !socket.rooms.contains(&room) => {
                    json!({ "error": "join the room first" })
                }
                (room, except, Some(text)) => {
                    let (room, except) = (room.flatten(), except.flatten());
                    let said = json!({ "room": room, "from": socket.name, "text": text });
                    let audience = Audience {
                        sender: &session.sid,
                        room: room.as_deref(),
                        except: except.as_deref(),
                    };
                    json!({ "delivered": say(lab, socket_io, &audience, &said) })
                }
                _ => {
                    json!({ "error": "say takes {\"text\"} and may name a \"room\" and an \"except\"" })
                }
            };
            ack(vec![reply], &[]);
        }
        "disconnect-me" => {
            // A server-initiated disconnect, as `socket.disconnect()` on the server: the ack,
            // then DISCONNECT for `/lab`. The client reports "io server disconnect" and, by
            // socket.io's rule, does not reconnect by itself. The session (and any other
            // namespace on it) stays.
            ack(vec![json!({ "disconnecting": true })], &[]);
            disconnect_from_lab(lab, socket_io, session);
        }
        "ask-me" => {
            // The other direction: the server asks, the client's ack answers.
            let question = args.first().cloned().unwrap_or(Value::Null);
            let Some(id) = session.ask(question.clone()) else {
                let error = format!("{MAX_ASKED} questions are waiting for your answers already");
                ack(vec![json!({ "error": error })], &[]);
                return Ok(());
            };
            let mut asking = Packet::event("/lab", vec![json!("question"), question], 0);
            asking.ack_id = Some(id);
            send(lab, socket_io, session, &asking, &[]);
            ack(vec![json!({ "asked": id })], &[]);
        }
        // Unknown events are ignored, as Socket.IO does with no listener.
        _ => {}
    }
    Ok(())
}

fn room_name(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty() && text.chars().count() <= MAX_NAME).then(|| text.to_string())
}

/// Who hears a `say`: every `/lab` socket but the sender's, in `room` if one is named, and
/// not in `except`.
struct Audience<'a> {
    sender: &'a str,
    room: Option<&'a str>,
    except: Option<&'a str>,
}

impl Audience<'_> {
    fn includes(&self, socket: &Socket) -> bool {
        self.room.is_none_or(|room| socket.rooms.contains(room))
            && !self
                .except
                .is_some_and(|except| socket.rooms.contains(except))
    }
}

/// `"said"` to the audience; how many got it. Each hearer's `/lab` socket numbers it in its
/// log (the offset's `S`), and so do the sockets kept for recovery whose clients are away:
/// a recovery replays what they missed.
fn say(lab: &Lab, socket_io: &SocketIo, audience: &Audience<'_>, said: &Value) -> usize {
    let mut delivered = 0;
    let mut slow = Vec::new();
    // One room message at a time, and no socket moving to or from the recovery store while
    // this one passes: each socket logs it once, live or kept (`SocketIo::room_order`).
    let order = socket_io.room_order();
    for member in socket_io.all_sessions() {
        if member.sid == audience.sender {
            continue;
        }
        let seq = member
            .state()
            .sockets
            .get_mut("/lab")
            .filter(|socket| audience.includes(socket))
            .map(|socket| socket.said.record(said.clone()));
        let Some(seq) = seq else { continue };
        delivered += 1;
        if !member.say(seq, said.clone()) {
            slow.push(member);
        }
    }
    socket_io.record_for_the_absent(|socket| audience.includes(socket), said);
    drop(order);
    // Closing takes `room_order` itself, so the slow consumers go after it is let go.
    for member in slow {
        lab.stats
            .slow_consumers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        super::close(
            socket_io,
            &member,
            Closer::Server,
            "slow consumer (outbox full)",
        );
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lessons::socket_io::session::Transport;

    fn lab() -> Lab {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        Lab {
            config: crate::Config::default(),
            hub: crate::hub::Hub::new(64, 64),
            broker: None,
            stats: Default::default(),
            addr,
            websocket_url: String::new(),
            other_addr: addr,
            shares: Default::default(),
            activity: Default::default(),
            connections: Default::default(),
            watcher: Default::default(),
            shutdown: Default::default(),
        }
    }

    /// A session whose `/lab` socket (named `name`, with `auth`'s pid and offset if any) is
    /// in room `r`.
    fn joined_r(lab: &Lab, socket_io: &SocketIo, name: &str, auth: Value) -> Arc<Session> {
        let session = socket_io
            .open(Transport::Polling, std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap();
        let mut auth = auth;
        auth["name"] = json!(name);
        let connect = Packet::new(Kind::Connect, "/lab", Some(auth));
        receive(lab, socket_io, &session, connect, vec![]).unwrap();
        let mut state = session.state();
        let socket = state.sockets.get_mut("/lab").expect("joined /lab");
        socket.rooms.insert("r".into());
        drop(state);
        session
    }

    /// While room messages are said, a socket leaves (its session closes: it is kept for
    /// recovery) and comes back (a new session recovers it). Its log must end up holding every
    /// message once, in order: none logged twice by the live session and the recovery store,
    /// none lost between them. Repeated, because the two threads race.
    #[test]
    fn a_socket_moving_to_and_from_recovery_logs_each_room_message_once() {
        const SAID: u64 = 40;
        for round in 0..200 {
            let lab = lab();
            let socket_io = SocketIo::new(Default::default(), crate::Config::default().sessions);
            let sender = joined_r(&lab, &socket_io, "a", json!({}));
            let away = joined_r(&lab, &socket_io, "b", json!({}));
            let pid = away.state().sockets["/lab"].pid.clone().unwrap();
            let audience = Audience {
                sender: &sender.sid,
                room: Some("r"),
                except: None,
            };
            let back = std::thread::scope(|scope| {
                scope.spawn(|| {
                    for n in 1..=SAID {
                        say(&lab, &socket_io, &audience, &json!(n));
                    }
                });
                super::super::close(&socket_io, &away, Closer::Client, "test");
                let offset = format!("{}.0", lab.hub.last_id());
                let auth = json!({ "pid": pid, "offset": offset });
                joined_r(&lab, &socket_io, "b", auth)
            });
            let state = back.state();
            let socket = &state.sockets["/lab"];
            assert_eq!(socket.pid.as_deref(), Some(pid.as_str()), "round {round}");
            let (logged, lost) = socket.said.after(0);
            let logged: Vec<Value> = logged.into_iter().map(|(_, said)| said).collect();
            let every: Vec<Value> = (1..=SAID).map(|n| json!(n)).collect();
            assert_eq!((logged, lost), (every, 0), "round {round}");
        }
    }
}
