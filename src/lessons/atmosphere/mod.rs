//! # Atmosphere: one broadcaster, every transport, and a client that falls back from one to the next.
//!
//! Atmosphere (the first article's Java framework) hides the transport behind one server API:
//! a `Broadcaster` is a named channel holding *suspended* resources (held requests, open
//! streams, sockets), and a message broadcast to it is written into each, whatever it is.
//! atmosphere.js picks a transport (WebSocket, SSE, streaming, long polling) and falls back to
//! another when the first fails. A *tracking id* names the client across its connections, so
//! a reconnecting client is sent what it missed from the broadcaster's cache. Here the
//! broadcaster `lab` is the hub, its cache the hub's history ring.
//!
//! ```text
//! GET /atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=long-polling
//!     &X-Atmosphere-TrackMessageSize=true&X-atmo-protocol=true     (and the framework version)
//! 200  41|6f1c…e2|60000|X|                   ← the handshake, answered at once: your id
//! GET /atmosphere/lab?X-Atmosphere-tracking-id=6f1c…e2&X-Atmosphere-Transport=long-polling…
//!   (time passes: req-12 is parked on the hub, holding the request for resource 6f1c…e2)
//! 200  28|{"data":"At 10:41:07","id":12}     ← the broadcast; the client polls again at once
//! POST /atmosphere/lab?X-Atmosphere-tracking-id=6f1c…e2…   body: hello
//! 200                                        ← published to the hub, so broadcast to everyone
//! ```
//!
//! 1. `handle`: one URL for everything; `X-Atmosphere-Transport` in the query says what a GET
//!    is (the client's messages come by POST, heartbeats too: a body of `X`).
//! 2. `attach`: the request finds its `Resource` by tracking id (`0`: a new one, announced by
//!    the handshake message). A resource remembers the last event written to it: its
//!    *cursor*. A newer connection for the same resource takes over and the older one ends.
//! 3. `long_poll`, `stream` (streaming and SSE) and `websocket::serve`: each subscribes to the
//!    hub from the resource's cursor (the backlog is the cache: what the client missed while
//!    away), then parks until the broadcast, writes it in its transport's framing, and moves
//!    the cursor.
//! 4. The HTTP port cannot upgrade (tiny_http), so a WebSocket asked for here is refused and
//!    atmosphere.js falls back; the same URL on the WebSocket port upgrades.
//! 5. `sweep` (thread `atmosphere-sweeper`): a resource with no connection for
//!    `--atmosphere-timeout` (60 s) is forgotten, and with it the cursor.
//!
//! **What it costs**: the transport's own costs (chapters 4, 8, 10, 11), plus a handshake
//! message per connection and, with `TrackMessageSize`, a few bytes of length per message.
//! The cache is only as long as the hub's ring: a client away longer is told how many it
//! missed. A written message is not a delivered one: an event written into a connection that
//! dies unread is lost to this client (the tracking id names the client, not what it read).
//!
//! **Try it**: `cargo run --example atmosphere`, open <http://127.0.0.1:8080/lessons/atmosphere>;
//! or `curl -N 'http://127.0.0.1:8080/atmosphere/lab?X-Atmosphere-Transport=streaming&X-atmo-protocol=true&X-Atmosphere-tracking-id=0'`.

pub mod protocol;
pub mod websocket;

use crate::http::{self, HttpError, Query};
use crate::hub::{Backlog, Event, Subscription, Wake};
use crate::lab::Lab;
use crate::lessons::long_polling::thread_name;
use crate::stats::LessonCounters;
use crossbeam_channel::{bounded, Receiver, Sender};
use protocol::{Params, Transport, PADDING};
use serde_json::json;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// The one broadcaster: the hub.
pub const BROADCASTER: &str = "/atmosphere/lab";

/// Why a connection stops before its client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A newer connection for the same resource took over.
    Superseded,
    /// Dropped on purpose (`DELETE`, the page's button): as a proxy or a restart would.
    Dropped,
    /// The WebSocket's reader saw the client close or go.
    ClientGone,
}

/// One client, across its connections: what Atmosphere calls an `AtmosphereResource`, found
/// again by its tracking id.
pub struct Resource {
    pub uuid: String,
    state: Mutex<ResourceState>,
}

struct ResourceState {
    /// The newest event id written to this client.
    cursor: u64,
    /// The connection holding the client now, and how to stop it.
    connection: Option<(u64, Sender<Stop>)>,
    next_connection: u64,
    transport: Transport,
    /// The lab sends the handshake again on the next long poll (after a drop it caused).
    handshake_again: bool,
    last_seen: Instant,
}

impl Resource {
    fn state(&self) -> MutexGuard<'_, ResourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events up to `id` have been written to this client.
    fn wrote(&self, id: u64) {
        let mut state = self.state();
        state.cursor = state.cursor.max(id);
    }
}

/// The broadcaster `lab`: every resource it knows, suspended (connected) or away. Its
/// messages are the hub's events, and its cache is the hub's ring.
#[derive(Default)]
pub struct Broadcaster {
    resources: Mutex<HashMap<String, Arc<Resource>>>,
    sweeper: super::Alarm,
}

impl Broadcaster {
    fn resources(&self) -> MutexGuard<'_, HashMap<String, Arc<Resource>>> {
        self.resources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `/stats`: resources known, and how many are connected now, by transport.
    pub fn to_json(&self) -> serde_json::Value {
        let resources: Vec<Arc<Resource>> = self.resources().values().cloned().collect();
        let mut connected: HashMap<&'static str, usize> = HashMap::new();
        for resource in &resources {
            let state = resource.state();
            if state.connection.is_some() {
                *connected.entry(state.transport.name()).or_default() += 1;
            }
        }
        json!({ "resources": resources.len(), "connected": connected })
    }

    /// Stop the connection holding `uuid` now; `false` if none does.
    fn drop_connection(&self, uuid: &str) -> bool {
        let Some(resource) = self.resources().get(uuid).cloned() else {
            return false;
        };
        let mut state = resource.state();
        let Some((_, stop)) = state.connection.take() else {
            return false;
        };
        state.handshake_again = true;
        stop.try_send(Stop::Dropped).is_ok()
    }
}

/// A connection attached to its resource (step 2); dropping it lets the resource go idle.
pub struct Attached {
    pub resource: Arc<Resource>,
    id: u64,
    pub(crate) stop: Receiver<Stop>,
    /// The handshake message is due on this connection.
    pub handshake: bool,
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut state = self.resource.state();
        if state
            .connection
            .as_ref()
            .is_some_and(|(id, _)| *id == self.id)
        {
            state.connection = None;
        }
        state.last_seen = Instant::now();
    }
}

impl Attached {
    /// The hub from this client's cursor: the backlog is what it missed.
    fn subscribe(&self, lab: &Lab) -> (Backlog, Subscription) {
        let cursor = self.resource.state().cursor;
        lab.hub.subscribe(cursor.min(lab.hub.last_id()))
    }

    /// A clone of this connection's stop line (the WebSocket's reader uses it).
    fn stop_line(&self) -> Option<Sender<Stop>> {
        let state = self.resource.state();
        state
            .connection
            .as_ref()
            .filter(|(id, _)| *id == self.id)
            .map(|(_, tx)| tx.clone())
    }
}

/// Step 2: the resource this request belongs to, and a connection attached to it.
pub fn attach(lab: &Lab, params: &Params) -> Attached {
    let known = match params.tracking_id.as_str() {
        "0" => None,
        id if params.protocol => lab.atmosphere.resources().get(id).cloned(),
        _ => None,
    };
    let is_new = known.is_none();
    let resource = known.unwrap_or_else(|| {
        let resource = Arc::new(Resource {
            uuid: crate::lab::random_id(),
            state: Mutex::new(ResourceState {
                cursor: lab.hub.last_id(),
                connection: None,
                next_connection: 1,
                transport: params.transport,
                handshake_again: false,
                last_seen: Instant::now(),
            }),
        });
        // Without the protocol the client never learns its id: nothing to find again.
        if params.protocol {
            lab.atmosphere
                .resources()
                .insert(resource.uuid.clone(), resource.clone());
            lab.atmosphere.sweeper.ring();
            log::debug!("atmosphere resource {} created", resource.uuid);
        }
        resource
    });
    let (tx, stop) = bounded(1);
    let mut state = resource.state();
    let id = state.next_connection;
    state.next_connection += 1;
    state.transport = params.transport;
    state.last_seen = Instant::now();
    if let Some((_, older)) = state.connection.replace((id, tx)) {
        let _ = older.try_send(Stop::Superseded);
    }
    // Long polling: the handshake once per resource (every poll after it carries the id);
    // every other transport: on every connection (the client reads one each time it connects).
    let handshake = params.protocol
        && match params.transport {
            Transport::LongPolling => is_new || std::mem::take(&mut state.handshake_again),
            _ => true,
        };
    drop(state);
    Attached {
        resource,
        id,
        stop,
        handshake,
    }
}

/// An event as a message: the hub's JSON, `{"data": …, "id": …}`.
fn message(event: &Event) -> String {
    event.to_json().to_string()
}

/// The ring had moved past the cursor: how many are gone.
fn missed(count: u64) -> String {
    json!({ "missed": count }).to_string()
}

/// Step 1: everything on `/atmosphere/NAME`.
pub fn handle(lab: &Lab, request: Request, path: &str, query: &Query) -> io::Result<()> {
    let counters = lab.count("atmosphere");
    if path != BROADCASTER {
        let message = format!("no broadcaster {path}: the lab's is {BROADCASTER}");
        return HttpError::new(404, message).reply(request, &counters);
    }
    if *request.method() == Method::Delete {
        // The lab's own control: drop a client's connection, to watch it come back.
        let uuid = query.get("X-Atmosphere-tracking-id").unwrap_or("");
        return if lab.atmosphere.drop_connection(uuid) {
            log::debug!("atmosphere resource {uuid}: connection dropped on request");
            http::write_no_content(request, &[], &counters)
        } else {
            HttpError::new(404, "no connected resource with that tracking id")
                .reply(request, &counters)
        };
    }
    let params = match Params::parse(query) {
        Ok(params) => params,
        Err(message) => return HttpError::bad_request(message).reply(request, &counters),
    };
    match (request.method(), params.transport) {
        (Method::Post, _) => receive(lab, request, &params, &counters),
        (Method::Get, Transport::LongPolling) => long_poll(lab, request, &params, &counters),
        (Method::Get, Transport::Streaming | Transport::Sse) => {
            stream(lab, request, &params, &counters)
        }
        (Method::Get, Transport::WebSocket) => {
            // Step 4: a browser's WebSocket fails on any answer but 101, and the client
            // falls back to its `fallbackTransport`.
            let message = format!(
                "this port cannot upgrade to a WebSocket (tiny_http); the same URL upgrades on \
                 the WebSocket port {}",
                lab.websocket_port()
            );
            HttpError::new(501, message).reply(request, &counters)
        }
        (Method::Get, Transport::Close) => {
            // The old clients' goodbye: forget the resource now rather than at the sweep.
            if let Some(resource) = lab.atmosphere.resources().remove(&params.tracking_id) {
                if let Some((_, stop)) = resource.state().connection.take() {
                    let _ = stop.try_send(Stop::Dropped);
                }
            }
            http::write_no_content(request, &[], &counters)
        }
        _ => HttpError::new(405, "GET or POST (or DELETE to drop a connection)")
            .with_header("Allow", "GET, POST, DELETE")
            .reply(request, &counters),
    }
}

/// A POST: the client's message, published to the hub (so broadcast to every transport), or
/// its heartbeat.
fn receive(
    lab: &Lab,
    mut request: Request,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let body = match http::read_body(&mut request, lab.config.max_body) {
        Ok(body) => body,
        Err(error) => return error.reply(request, counters),
    };
    if let Some(resource) = lab.atmosphere.resources().get(&params.tracking_id) {
        resource.state().last_seen = Instant::now();
    }
    if body == PADDING {
        // The client's heartbeat: it is alive; nothing to publish.
        return http::write_no_content(request, &[], counters);
    }
    if body.is_empty() {
        return HttpError::bad_request("an empty message").reply(request, counters);
    }
    match lab.hub.publish(body) {
        Ok(event) => {
            log::debug!(
                "atmosphere resource {} published event {}",
                params.tracking_id,
                event.id
            );
            http::write_no_content(request, &[], counters)
        }
        Err(e) => HttpError::retry_later(e.to_string()).reply(request, counters),
    }
}

/// Step 3, long polling: the handshake at once; after it, held until the broadcast.
fn long_poll(
    lab: &Lab,
    request: Request,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let arrived = Instant::now();
    let attached = attach(lab, params);
    if attached.handshake {
        let body = protocol::frame(
            &protocol::handshake(&attached.resource.uuid),
            params.track_size,
        );
        return answer(lab, request, arrived, &body, counters);
    }
    let Some(_held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        return HttpError::all_held(lab.config.max_parked).reply(request, counters);
    };
    let (backlog, mut subscription) = attached.subscribe(lab);
    let me = thread_name();
    let mut events = backlog;
    if events.events.is_empty() && events.missed == 0 {
        log::debug!(
            "{me} parked for atmosphere resource {}",
            attached.resource.uuid
        );
        let deadline = arrived + lab.config.long_poll_timeout;
        // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a drop
        // stops this one, or the deadline (then an empty answer, and the client polls again).
        match subscription.wait_for_events_or(&attached.stop, deadline) {
            Wake::Events(batch) => events = batch,
            Wake::Other(Stop::Dropped) => {
                // An error, so the client treats it as a lost connection and reconnects.
                return HttpError::new(503, "dropped by the lab, as a proxy might")
                    .reply(request, counters);
            }
            _ => {}
        }
    }
    // Without size tracking the client takes a whole answer as one message: one per answer,
    // and the rest wait for the next poll.
    let mut messages = Vec::new();
    if events.missed > 0 {
        messages.push(missed(events.missed));
    }
    let carried = match (params.track_size, messages.is_empty()) {
        (true, _) => &events.events[..],
        (false, true) => &events.events[..events.events.len().min(1)],
        (false, false) => &[],
    };
    messages.extend(carried.iter().map(|event| message(event)));
    let body: String = messages
        .iter()
        .map(|m| protocol::frame(m, params.track_size))
        .collect();
    counters.delivered(carried.len());
    answer(lab, request, arrived, &body, counters)?;
    // Written: the cursor moves past what this answer carried (past the gap, after a notice).
    if let Some(last) = carried.last() {
        attached.resource.wrote(last.id);
    } else if let Some(first) = events.events.first() {
        attached.resource.wrote(first.id - 1);
    }
    Ok(())
}

/// A long poll's answer. Held past `--idle-timeout`, tiny_http has stopped reading the
/// connection: say `Connection: close` (as chapter 4's `Answer::write` does).
fn answer(
    lab: &Lab,
    request: Request,
    arrived: Instant,
    body: &str,
    counters: &LessonCounters,
) -> io::Result<()> {
    let margin = (lab.config.idle_timeout / 4).min(Duration::from_secs(1));
    let mut headers = vec![("Cache-Control", "no-cache")];
    if arrived.elapsed() + margin >= lab.config.idle_timeout {
        headers.push(("Connection", "close"));
    }
    http::write_response(
        request,
        200,
        "text/plain; charset=utf-8",
        &headers,
        body.as_bytes(),
        counters,
    )
}

/// Step 3, streaming and SSE: one response, a message per chunk (or per `data:` event).
fn stream(
    lab: &Lab,
    request: Request,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.streams, lab.config.max_parked)
    else {
        return HttpError::all_held(lab.config.max_parked).reply(request, counters);
    };
    let attached = attach(lab, params);
    let (backlog, mut subscription) = attached.subscribe(lab);
    let sse = params.transport == Transport::Sse;
    let framed = |text: &str| {
        let text = protocol::frame(text, params.track_size);
        if sse {
            format!("data: {text}\n\n")
        } else {
            text
        }
    };
    let content_type = if sse {
        "text/event-stream"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = http::ChunkedStream::start(
        request,
        content_type,
        &[("Cache-Control", "no-cache")],
        counters,
    )?;
    let me = thread_name();
    let uuid = &attached.resource.uuid;
    log::debug!(
        "{me} streams to atmosphere resource {uuid} ({})",
        params.transport.name()
    );
    let write = |batch: &Backlog, out: &mut http::ChunkedStream| -> io::Result<()> {
        if batch.missed > 0 {
            out.write_chunk(framed(&missed(batch.missed)).as_bytes())?;
        }
        for event in &batch.events {
            // A failed write: the client has gone.
            out.write_chunk(framed(&message(event)).as_bytes())?;
            attached.resource.wrote(event.id);
            counters.streamed(1);
        }
        Ok(())
    };
    let result = (|| -> io::Result<Stop> {
        if attached.handshake {
            out.write_chunk(framed(&protocol::handshake(uuid)).as_bytes())?;
        }
        write(&backlog, &mut out)?;
        loop {
            let heartbeat_due = Instant::now() + lab.config.heartbeat;
            // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a
            // drop stops this one, or the heartbeat is due.
            match subscription.wait_for_events_or(&attached.stop, heartbeat_due) {
                Wake::Events(batch) => write(&batch, &mut out)?,
                Wake::Other(stop) => return Ok(stop),
                // (Never without a stop sent first; ended all the same.)
                Wake::OtherGone => return Ok(Stop::Dropped),
                Wake::Deadline => out.write_chunk(framed(PADDING).as_bytes())?,
            }
        }
    })();
    match result {
        Ok(stop) => {
            log::debug!("{me} atmosphere resource {uuid}: stream ended ({stop:?})");
            out.finish()
        }
        Err(e) => {
            if http::is_write_timeout(&e) {
                lab.stats
                    .slow_consumers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            log::debug!("{me} atmosphere resource {uuid}: client gone ({e})");
            Ok(())
        }
    }
}

/// The official browser bundle from `npm ci` (`node_modules/atmosphere.js`), for the page's
/// `?client=official`.
pub fn official_client(lab: &Lab, request: Request) -> io::Result<()> {
    let bundle = "atmosphere.js/dist/atmosphere.global.js";
    super::serve_installed_client(lab, request, "atmosphere", Some(bundle))
}

/// Start the sweeper thread (once, with the lab).
pub fn spawn_sweeper(lab: Arc<Lab>) -> io::Result<()> {
    lab.clone()
        .atmosphere
        .sweeper
        .spawn("atmosphere-sweeper", lab, sweep)
}

/// Step 5: forget resources nobody has connected for in `--atmosphere-timeout`.
fn sweep(lab: &Lab, wake: &Receiver<()>) {
    loop {
        let now = Instant::now();
        let timeout = lab.config.atmosphere_timeout;
        let mut next = now + Duration::from_secs(3600);
        let resources: Vec<Arc<Resource>> = lab.atmosphere.resources().values().cloned().collect();
        for resource in resources {
            let state = resource.state();
            if state.connection.is_some() {
                next = next.min(now + timeout);
                continue;
            }
            let expires = state.last_seen + timeout;
            drop(state);
            if expires <= now {
                lab.atmosphere.resources().remove(&resource.uuid);
                log::debug!(
                    "atmosphere resource {} forgotten: away too long",
                    resource.uuid
                );
            } else {
                next = next.min(expires);
            }
        }
        // BLOCKS: until the next resource may expire, or a new one wakes us.
        let _ = wake.recv_deadline(next);
    }
}
