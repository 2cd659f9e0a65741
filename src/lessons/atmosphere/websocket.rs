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
//! As chapter 12, one thread: the connection's, which read the handshake, in the conversation
//! every WebSocket has (`conversation`). It parks on the hub from the resource's cursor, as
//! the HTTP transports do, and also on its stop line (a newer connection takes over, a drop:
//! close 1001) and on the socket watcher's notice; each client message is broadcast, but its
//! heartbeat.

use super::protocol::{self, Params, PADDING};
use super::{attach, message, missed, Attached, Broadcaster, Broadcasters, Stop};
use crate::connection::Request;
use crate::conversation::{converse, Ending, Endpoint, Socket};
use crate::hub::{Backlog, Either, Subscription, Wake};
use crate::lab::Lab;
use crossbeam_channel::Receiver;
use std::io;
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
    request: &Request,
) -> Result<Accepted, (u16, String)> {
    let client = lab.client(request);
    if let Some(origin) = request.header("Origin") {
        if !lab.is_own_origin(origin, &client) {
            return Err((403, lab.foreign_origin(origin, request)));
        }
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
    // Attached before the 101, so that a resource refused under the caps is an HTTP answer.
    let attached = attach(broadcasters, &broadcaster, &params, client.ip)
        .map_err(|refused| (503, format!("no new resource: {refused}")))?;
    Ok(Accepted {
        broadcaster,
        attached,
        params,
    })
}

/// An accepted handshake: which broadcaster, the connection attached to its resource, with
/// what parameters.
pub struct Accepted {
    broadcaster: Arc<Broadcaster>,
    attached: Attached,
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
    let checked = check(lab, broadcasters, path, query, &request);
    let Some((accepted, upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    let Accepted {
        broadcaster,
        attached,
        params,
    } = accepted;
    let counters = lab.count("atmosphere");
    let (backlog, subscription) = attached.subscribe();
    log::debug!("ws {id} is atmosphere resource {}", attached.resource.uuid);
    if attached.stop_line().is_none() {
        return Ok(()); // superseded before it began
    }
    let mut socket = Socket::new(socket, id, &counters, &lab.stats);
    let mut endpoint = AtmosphereSocket {
        lab,
        broadcaster: &broadcaster,
        attached: &attached,
        subscription,
        track: params.track_size,
        // The client's `X-Heartbeat-Server`, else the lab's `--heartbeat`.
        heartbeat: params.server_heartbeat.unwrap_or(lab.config.heartbeat),
        backlog: Some(backlog),
    };
    converse(&mut endpoint, &mut socket, &lab.watcher);
    Ok(())
}

/// What this endpoint adds to the conversation every WebSocket has: the resource, its
/// subscription and stop line, and its heartbeat.
struct AtmosphereSocket<'a> {
    lab: &'a Lab,
    broadcaster: &'a Broadcaster,
    attached: &'a Attached,
    subscription: Subscription,
    /// The client tracks message sizes: each message goes with its length first.
    track: bool,
    heartbeat: Duration,
    /// The handshake message (if asked for) and the backlog, sent before the first wait.
    backlog: Option<Backlog>,
}

impl Endpoint for AtmosphereSocket<'_> {
    /// The handshake and the backlog first; then every broadcast as it comes, messages for
    /// this resource alone, and the stop line.
    fn wait(
        &mut self,
        socket: &mut Socket<'_>,
        noticed: &Receiver<()>,
        deadline: Instant,
    ) -> Result<(), Ending> {
        if let Some(backlog) = self.backlog.take() {
            if self.attached.handshake {
                let handshake = protocol::handshake(&self.attached.resource.uuid);
                self.send(socket, &handshake)?;
            }
            return self.send_batch(socket, &backlog);
        }
        // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a drop
        // stops this one, the watcher says the client sent something, or the heartbeat is due.
        match self
            .subscription
            .wait_for_events_or_either(&self.attached.stop, noticed, deadline)
        {
            Wake::Events(batch) => self.send_batch(socket, &batch),
            Wake::Other(Either::First(Stop::Direct)) => self.send_direct(socket),
            Wake::Other(Either::First(stop)) => Err(Ending::close(
                CloseCode::Away,
                format!("{stop:?}"),
                "stopped",
            )),
            Wake::Other(Either::Second(())) | Wake::Deadline => Ok(()),
            // (Never without a stop sent first; ended all the same.)
            Wake::OtherGone => Err(Ending::close(CloseCode::Away, "stopped", "stopped")),
        }
    }

    /// Each text message is broadcast, but the client's heartbeat.
    fn on_message(&mut self, socket: &mut Socket<'_>, message: Message) -> Result<(), Ending> {
        let uuid = &self.attached.resource.uuid;
        let Message::Text(text) = message else {
            return Ok(()); // (binary messages are not the lab's)
        };
        if text.as_str() == PADDING || text.is_empty() {
            return Ok(());
        }
        match self.broadcaster.broadcast(self.lab, text.as_str()) {
            Ok(event) => log::debug!("atmosphere resource {uuid} published event {}", event.id),
            // A filter's refusal drops the message (as Atmosphere's ABORT does).
            Err(super::BroadcastError::Filtered(why)) => {
                log::debug!("atmosphere resource {uuid}: message refused: {}", why.0)
            }
            Err(super::BroadcastError::Unavailable(e)) => {
                log::warn!("ws {} (atmosphere {uuid}): not published: {e}", socket.id)
            }
        }
        Ok(())
    }

    /// The server's heartbeat: a padding message.
    fn on_tick(&mut self, socket: &mut Socket<'_>) -> Result<(), Ending> {
        self.send(socket, PADDING)
    }

    fn tick_every(&self) -> Duration {
        self.heartbeat
    }

    /// The client's heartbeat comes every 60 s: silent for 150, it has gone.
    fn silence(&self) -> Option<Duration> {
        Some(Duration::from_millis(protocol::CLIENT_HEARTBEAT_MS * 5 / 2))
    }
}

impl AtmosphereSocket<'_> {
    /// One message, as a frame (with its length first when the client tracks message sizes).
    fn send(&self, socket: &mut Socket<'_>, text: &str) -> Result<(), Ending> {
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        socket.send_text(protocol::frame(text, self.track))
    }

    /// What the hub woke us for, then messages for this resource alone.
    fn send_batch(&self, socket: &mut Socket<'_>, batch: &Backlog) -> Result<(), Ending> {
        if batch.missed > 0 {
            self.send(socket, &missed(batch.missed))?;
        }
        for event in &batch.events {
            self.send(socket, &message(event))?;
            self.attached.resource.wrote(event.id);
            socket.counters.streamed(1);
        }
        self.send_direct(socket)
    }

    /// Messages for this resource alone (`X-Atmosphere-Target`).
    fn send_direct(&self, socket: &mut Socket<'_>) -> Result<(), Ending> {
        for direct in self.attached.resource.take_direct() {
            self.send(socket, &direct)?;
        }
        Ok(())
    }
}
