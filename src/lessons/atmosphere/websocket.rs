//! Step 4: Atmosphere's WebSocket transport, `/atmosphere/lab` on the lab's WebSocket port.
//!
//! ```text
//! GET /atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=websocket&X-atmo-protocol=true  101
//! ◄ text 6f1c…e2|60000|X|                the handshake
//! ◄ text {"data":"At 10:41:07","id":12}  each broadcast, a frame
//! ► text hello                           the client's message: published to the hub
//! ► text X                               its heartbeat, every 60 s
//! ```
//!
//! As chapter 12, one thread: the connection's, which read the handshake. It parks on the hub
//! from the resource's cursor, as the HTTP transports do, and also on its stop line (a newer
//! connection takes over, a drop) and on the socket watcher's notice: woken by that, it reads
//! the client's frames (`read_messages`) and publishes them.

use super::protocol::{self, Params, PADDING};
use super::{attach, message, missed, Attached, Broadcaster, Broadcasters, Stop};
use crate::connection::Request;
use crate::hub::{Backlog, Either, Subscription, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::ws::{close_frame, drain, next_frame, WatchedSocket};
use std::io;
use std::net::Shutdown;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// The handshake's checks for `/atmosphere/lab`: our own origin, and the websocket transport.
pub fn check(
    lab: &Lab,
    broadcasters: &Broadcasters,
    path: &str,
    query: &crate::http::Query,
    origin: Option<&str>,
    client: &crate::forwarded::Client,
) -> Result<Accepted, (u16, String)> {
    if origin.is_some_and(|origin| !lab.is_own_origin(origin, client)) {
        return Err((403, "this Origin may not open the lab's WebSocket".into()));
    }
    // The page's "websocket refused": what a proxy that drops `Upgrade` does to a handshake,
    // so the client's fallback transport can be watched.
    if query.get("no-upgrade").is_some() {
        return Err((
            501,
            "no-upgrade: this handshake is refused on purpose".into(),
        ));
    }
    let params = Params::parse(query).map_err(|e| (400, e))?;
    if params.transport != protocol::Transport::WebSocket {
        return Err((400, "X-Atmosphere-Transport must be websocket here".into()));
    }
    let broadcaster = broadcasters.lookup(lab, path)?;
    Ok(Accepted {
        broadcaster,
        params,
    })
}

/// An accepted handshake: which broadcaster, with what parameters.
pub struct Accepted {
    broadcaster: Arc<Broadcaster>,
    params: Params,
}

/// `/atmosphere/NAME` with `Upgrade: websocket` (the server's upgrade `match`): our checks,
/// then the handshake every WebSocket endpoint shares (`ws::accept`).
pub fn upgrade(
    lab: &Lab,
    broadcasters: &Broadcasters,
    request: Request,
    path: &str,
    query: &crate::http::Query,
) -> io::Result<()> {
    let checked = check(
        lab,
        broadcasters,
        path,
        query,
        request.header("Origin"),
        &lab.client(&request),
    );
    let Some((accepted, upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    serve(lab, broadcasters, socket, id, accepted)
}

/// One Atmosphere WebSocket's conversation: what its thread owns or borrows.
struct Conversation<'a> {
    lab: &'a Lab,
    broadcaster: &'a Broadcaster,
    socket: WatchedSocket,
    attached: &'a Attached,
    track: bool,
    counters: &'a LessonCounters,
    /// When the client last sent anything: its heartbeat comes every 60 s.
    last_heard: Instant,
    id: u64,
}

/// How a conversation ended.
enum Ending {
    /// A stop (a newer connection, a drop): our close frame, then the client's reply drained.
    Stopped(String),
    /// The client closed, left or went silent, or a write failed: the socket is shut.
    Gone(String),
    /// A message over `--max-body`: our 1009, then the rest drained.
    TooLarge,
}

/// One Atmosphere WebSocket, from the handshake message to the close.
fn serve(
    lab: &Lab,
    broadcasters: &Broadcasters,
    socket: WatchedSocket,
    id: u64,
    accepted: Accepted,
) -> io::Result<()> {
    let Accepted {
        broadcaster,
        params,
    } = accepted;
    let counters = lab.count("atmosphere");
    let attached = attach(broadcasters, &broadcaster, &params);
    let (backlog, subscription) = attached.subscribe();
    let uuid = attached.resource.uuid.clone();
    log::debug!("ws {id} is atmosphere resource {uuid}");
    if attached.stop_line().is_none() {
        return Ok(()); // superseded before it began
    }
    let mut c = Conversation {
        lab,
        broadcaster: &broadcaster,
        socket,
        attached: &attached,
        track: params.track_size,
        counters: &counters,
        last_heard: Instant::now(),
        id,
    };
    // The client's `X-Heartbeat-Server`, else the lab's `--heartbeat`.
    let heartbeat = params.server_heartbeat.unwrap_or(lab.config.heartbeat);
    let ending = converse(&mut c, backlog, subscription, heartbeat);
    let why = match ending {
        Ending::Stopped(stop) => {
            let _ = c.socket.close(Some(close_frame(CloseCode::Away, &stop)));
            let _ = c.socket.flush();
            drain(c.socket.get_ref().stream(), id);
            stop
        }
        Ending::TooLarge => {
            let frame = close_frame(CloseCode::Size, "message too large");
            let _ = c.socket.close(Some(frame));
            let _ = c.socket.flush();
            drain(c.socket.get_ref().stream(), id);
            "a message too large".into()
        }
        Ending::Gone(why) => {
            let _ = c.socket.get_ref().stream().shutdown(Shutdown::Both);
            why
        }
    };
    log::debug!("ws {id} (atmosphere) done: {why}");
    Ok(())
}

/// The handshake, the backlog, then every broadcast as it comes, and the client's messages
/// whenever the watcher says they are there.
fn converse(
    c: &mut Conversation<'_>,
    backlog: Backlog,
    mut subscription: Subscription,
    heartbeat: Duration,
) -> Ending {
    if c.attached.handshake {
        let handshake = protocol::handshake(&c.attached.resource.uuid);
        if let Err(e) = send(c, &handshake) {
            return write_failed(c, e);
        }
    }
    // Frames that came with the handshake: no notice will come for them.
    if let Err(ending) = read_messages(c) {
        return ending;
    }
    let (watch, noticed) = match c.socket.get_ref().watch_with_channel(&c.lab.watcher) {
        Ok(watching) => watching,
        Err(e) => return Ending::Gone(format!("could not watch the socket: {e}")),
    };
    let mut batch = backlog;
    loop {
        if let Err(e) = send_batch(c, &batch) {
            return write_failed(c, e);
        }
        batch = loop {
            let heartbeat_due = Instant::now() + heartbeat;
            // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a
            // drop stops this one, the watcher says the client sent something, or the
            // heartbeat is due.
            match subscription.wait_for_events_or_either(&c.attached.stop, &noticed, heartbeat_due)
            {
                Wake::Events(batch) => break batch,
                Wake::Other(Either::First(Stop::Direct)) => {
                    if let Err(e) = send_direct(c) {
                        return write_failed(c, e);
                    }
                }
                Wake::Other(Either::First(stop)) => return Ending::Stopped(format!("{stop:?}")),
                Wake::Other(Either::Second(())) => {
                    if let Err(ending) = read_messages(c) {
                        return ending;
                    }
                    watch.again();
                }
                // (Never without a stop sent first; ended all the same.)
                Wake::OtherGone => return Ending::Stopped("stopped".into()),
                Wake::Deadline => {
                    // The client's heartbeat comes every 60 s: silent for 150, it has gone.
                    let silence = Duration::from_millis(protocol::CLIENT_HEARTBEAT_MS * 5 / 2);
                    if c.last_heard.elapsed() > silence {
                        return Ending::Gone("the client's heartbeat stopped".into());
                    }
                    if let Err(e) = send(c, PADDING) {
                        return write_failed(c, e);
                    }
                }
            }
        };
    }
}

/// One message, as a frame (with its length first when the client tracks message sizes).
fn send(c: &mut Conversation<'_>, text: &str) -> Result<(), tungstenite::Error> {
    let frame = protocol::frame(text, c.track);
    let bytes = frame.len();
    // BLOCKS: while the client's receive buffer and our send buffer are full, up to
    // --write-timeout.
    c.socket.send(Message::text(frame))?;
    c.counters.wrote(crate::ws::frame_size(bytes));
    Ok(())
}

/// What the hub woke us for, then messages for this resource alone.
fn send_batch(c: &mut Conversation<'_>, batch: &Backlog) -> Result<(), tungstenite::Error> {
    if batch.missed > 0 {
        send(c, &missed(batch.missed))?;
    }
    for event in &batch.events {
        send(c, &message(event))?;
        c.attached.resource.wrote(event.id);
        c.counters.streamed(1);
    }
    send_direct(c)
}

/// Messages for this resource alone (`X-Atmosphere-Target`).
fn send_direct(c: &mut Conversation<'_>) -> Result<(), tungstenite::Error> {
    for direct in c.attached.resource.take_direct() {
        send(c, &direct)?;
    }
    Ok(())
}

/// A write failed: the client left, or (after `--write-timeout`) stopped reading.
fn write_failed(c: &Conversation<'_>, e: tungstenite::Error) -> Ending {
    crate::ws::count_if_slow(&c.lab.stats, &e);
    Ending::Gone(format!("write failed: {e}"))
}

/// Every message that is there: each text frame is one for the hub, but the heartbeat. `Ok`
/// once the rest has not come yet.
fn read_messages(c: &mut Conversation<'_>) -> Result<(), Ending> {
    let (uuid, id) = (&c.attached.resource.uuid, c.id);
    loop {
        // Never blocks: one read of the bytes the watcher saw, else `None`.
        let Some(message) = next_frame(&mut c.socket) else {
            return Ok(());
        };
        c.last_heard = Instant::now();
        match message {
            Ok(Message::Text(text)) if text.as_str() == PADDING => continue,
            Ok(Message::Text(text)) if text.is_empty() => continue,
            Ok(Message::Text(text)) => match c.broadcaster.broadcast(c.lab, text.as_str()) {
                Ok(event) => {
                    log::debug!("atmosphere resource {uuid} published event {}", event.id)
                }
                // A filter's refusal drops the message (as Atmosphere's ABORT does).
                Err(super::BroadcastError::Filtered(why)) => {
                    log::debug!("atmosphere resource {uuid}: message refused: {}", why.0)
                }
                Err(super::BroadcastError::Unavailable(e)) => {
                    log::warn!("atmosphere resource {uuid}: not published: {e}")
                }
            },
            Ok(Message::Close(_)) => {
                // tungstenite has queued the echo of the client's close: send it, and end.
                let _ = c.socket.flush();
                return Err(Ending::Gone("the client closed the socket".into()));
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Capacity(e)) => {
                log::debug!("ws {id} (atmosphere): message too large: {e}");
                return Err(Ending::TooLarge);
            }
            Err(e) => return Err(Ending::Gone(format!("read ended: {e}"))),
        }
    }
}
