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
//! As chapter 12, two threads: `ws-N` reads the client's frames and publishes them; the writer
//! `ws-N-writer` parks on the hub from the resource's cursor, as the HTTP transports do, and
//! stops when the reader reports the client gone or a newer connection takes over.

use super::protocol::{self, Params, PADDING};
use super::{attach, message, missed, Attached, Broadcaster, Broadcasters, Stop};
use crate::connection::Request;
use crate::hub::{Backlog, Subscription, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::ws::{close_frame, drain, ReadOnly};
use crossbeam_channel::Sender;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

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
    let (socket, id, _place) = upgraded.into_websocket(crate::ws::config(lab.config.max_body));
    serve(lab, broadcasters, socket, id, accepted)
}

/// One Atmosphere WebSocket, from the handshake message to the close.
fn serve(
    lab: &Lab,
    broadcasters: &Broadcasters,
    socket: WebSocket<TcpStream>,
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
    let read_half = socket.get_ref().try_clone()?;
    // The client sends its heartbeat every 60 s: silent for two and a half, it has gone.
    read_half.set_read_timeout(Some(std::time::Duration::from_millis(
        protocol::CLIENT_HEARTBEAT_MS * 5 / 2,
    )))?;
    let write_half = socket.get_ref().try_clone()?;
    drop(socket);
    let config = crate::ws::config(lab.config.max_body);
    let reader = WebSocket::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config));
    let writer_config = crate::ws::writer_config(lab.config.max_body);
    let mut writer = WebSocket::from_raw_socket(write_half, Role::Server, Some(writer_config));
    let Some(stop_line) = attached.stop_line() else {
        return Ok(()); // superseded before it began
    };
    let counters = &counters;
    let attached = &attached;
    thread::scope(|scope| -> io::Result<()> {
        let writer_thread = thread::Builder::new()
            .name(format!("ws-{id}-writer"))
            .spawn_scoped(scope, move || {
                let _thread = lab.stats.websocket_threads.enter();
                let ending = write_messages(
                    &mut writer,
                    attached,
                    backlog,
                    subscription,
                    params.track_size,
                    params.server_heartbeat.unwrap_or(lab.config.heartbeat),
                    counters,
                );
                let why = match ending {
                    Ok(stop) => {
                        let _ = writer.close(Some(close_frame(CloseCode::Away, &stop)));
                        let _ = writer.flush();
                        stop
                    }
                    Err(e) => {
                        // Ends the reader too.
                        let _ = writer.get_ref().shutdown(Shutdown::Both);
                        if let tungstenite::Error::Io(io) = &e {
                            if crate::http::is_write_timeout(io) {
                                lab.stats
                                    .slow_consumers
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        format!("write failed: {e}")
                    }
                };
                log::debug!("ws {id} (atmosphere) writer done: {why}");
                let _ = writer.get_ref().shutdown(Shutdown::Write);
            })?;
        read_messages(lab, &broadcaster, reader, stop_line, &uuid, id);
        // BLOCKS: until the writer has written its last frame.
        let _ = writer_thread.join();
        Ok(())
    })
}

/// The writer (`ws-N-writer`): the handshake, the backlog, then every broadcast as it comes.
fn write_messages(
    socket: &mut WebSocket<TcpStream>,
    attached: &Attached,
    backlog: Backlog,
    mut subscription: Subscription,
    track: bool,
    heartbeat: std::time::Duration,
    counters: &LessonCounters,
) -> Result<String, tungstenite::Error> {
    let mut send = |text: &str| -> Result<(), tungstenite::Error> {
        let frame = protocol::frame(text, track);
        let bytes = frame.len();
        socket.send(Message::text(frame))?;
        counters.wrote(crate::ws::frame_size(bytes));
        Ok(())
    };
    if attached.handshake {
        send(&protocol::handshake(&attached.resource.uuid))?;
    }
    let mut batch = backlog;
    loop {
        if batch.missed > 0 {
            send(&missed(batch.missed))?;
        }
        for event in &batch.events {
            send(&message(event))?;
            attached.resource.wrote(event.id);
            counters.streamed(1);
        }
        // Messages for this resource alone (`X-Atmosphere-Target`).
        for direct in attached.resource.take_direct() {
            send(&direct)?;
        }
        batch = loop {
            // The client's `X-Heartbeat-Server`, else the lab's `--heartbeat`.
            let heartbeat_due = Instant::now() + heartbeat;
            // BLOCKS: until `Hub::publish` wakes the subscription, the reader reports the
            // client gone, a newer connection or a drop stops this one, or the heartbeat is due.
            match subscription.wait_for_events_or(&attached.stop, heartbeat_due) {
                Wake::Events(batch) => break batch,
                Wake::Other(Stop::Direct) => {
                    for direct in attached.resource.take_direct() {
                        send(&direct)?;
                    }
                }
                Wake::Other(stop) => return Ok(format!("{stop:?}")),
                // (Never without a stop sent first; ended all the same.)
                Wake::OtherGone => return Ok("stopped".into()),
                Wake::Deadline => send(PADDING)?,
            }
        };
    }
}

/// The reader (`ws-N`): each text frame is a message for the hub, but the heartbeat.
fn read_messages(
    lab: &Lab,
    broadcaster: &Broadcaster,
    mut socket: WebSocket<ReadOnly>,
    stop: Sender<Stop>,
    uuid: &str,
    id: u64,
) {
    let ending = loop {
        // BLOCKS: until the client sends a frame, or the socket is shut down.
        match socket.read() {
            Ok(Message::Text(text)) if text.as_str() == PADDING => continue,
            Ok(Message::Text(text)) if text.is_empty() => continue,
            Ok(Message::Text(text)) => match broadcaster.broadcast(lab, text.as_str()) {
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
            Ok(Message::Close(_)) => break "the client closed the socket".to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Capacity(e)) => {
                log::debug!("ws {id} (atmosphere): message too large: {e}");
                let _ = stop.try_send(Stop::ClientGone);
                return drain(&socket.get_ref().0, id);
            }
            Err(e) => break format!("read ended: {e}"),
        }
    };
    log::debug!("ws {id} (atmosphere) reader done: {ending}");
    let _ = stop.try_send(Stop::ClientGone);
}
