//! # Atmosphere: one broadcaster, every transport, and a client that falls back from one to the next.
//!
//! Atmosphere (the first article's Java framework) hides the transport behind one server API:
//! a `Broadcaster` is a named channel holding *suspended* resources (held requests, open
//! streams, sockets), and a message broadcast to it is written into each, whatever it is.
//! atmosphere.js picks a transport (WebSocket, SSE, streaming, long polling) and falls back to
//! another when the first fails. A *tracking id* names the client across its connections, so
//! a reconnecting client is sent what it missed from the broadcaster's cache. Here the
//! broadcaster `lab` is the hub, its cache the hub's history ring; any other name
//! (`/atmosphere/room-1`) is a room of its own, with a small hub and ring of its own.
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
//! 1. `handle`: one URL per broadcaster (`Broadcasters::lookup` makes it on first use);
//!    `X-Atmosphere-Transport` in the query says what a GET is (the client's messages come by
//!    POST, heartbeats too: a body of `X`).
//! 2. `attach`: the request finds its `Resource` by tracking id (`0`: a new one, announced by
//!    the handshake message). A resource remembers the last event written to it: its
//!    *cursor*. A newer connection for the same resource takes over and the older one ends.
//! 3. `long_poll`, `stream` (streaming and SSE) and `websocket::serve`: each subscribes to the
//!    hub from the resource's cursor (the backlog is the cache: what the client missed while
//!    away), then parks until the broadcast, writes it in its transport's framing, and moves
//!    the cursor. A parked long poll or stream looks once a second whether its client closed
//!    the connection (`--departures on`), and if so ends, the cursor left where it was.
//! 4. The websocket transport is the same URL with the WebSocket handshake: the connection's
//!    thread sees `Upgrade: websocket`, and the server's upgrade `match` hands it to
//!    `websocket::upgrade` (our checks, then the handshake every endpoint shares, `ws::accept`).
//! 5. `sweep` (thread `atmosphere-sweeper`): a resource with no connection for
//!    `--atmosphere-timeout` (60 s) is forgotten, and with it the cursor.
//!
//! **What it costs**: the transport's own costs (chapters 5, 10, 11 and 12), plus a handshake
//! message per connection and, with `TrackMessageSize`, a few bytes of length per message.
//! The cache is only as long as the hub's ring: a client away longer is told how many it
//! missed. A written message is not a delivered one: an event written into a connection that
//! dies unread is lost to this client (the tracking id names the client, not what it read).
//!
//! **Try it**: `cargo run --example atmosphere`, open <http://127.0.0.1:8080/lessons/atmosphere>;
//! or `curl -N 'http://127.0.0.1:8080/atmosphere/lab?X-Atmosphere-Transport=streaming&X-atmo-protocol=true&X-Atmosphere-tracking-id=0'`.

pub mod protocol;
pub mod websocket;

use crate::connection::request_label;
use crate::connection::Request;
use crate::http::{self, HttpError, Query};
use crate::hub::{Backlog, ClientLeft, Event, Subscription, Wake};
use crate::lab::Lab;
use crate::request::Method;
use crate::sessions::{self, SessionLimits, Sessions};
use crate::stats::LessonCounters;
use crossbeam_channel::{bounded, Receiver, Sender};
use protocol::{Params, Transport, PADDING};
use serde_json::json;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where the broadcasters are: `/atmosphere/NAME`. The broadcaster `lab` is the hub.
pub const PREFIX: &str = "/atmosphere/";
/// Named broadcasters besides `lab`, at most (each has a ring of its own).
const MAX_NAMED: usize = 16;
/// The cache (ring) of a named broadcaster other than `lab`.
const NAMED_HISTORY: usize = 256;
/// Messages written to one resource and waiting for its next connection, at most.
const MAX_DIRECT: usize = 32;

/// Why a connection stops before its client leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A newer connection for the same resource took over.
    Superseded,
    /// Dropped on purpose (`DELETE`, the page's button): as a proxy or a restart would.
    Dropped,
    /// The client closed its connection or went: a held stream looked at its socket
    /// (`ChunkedStream::client_left`).
    ClientGone,
    /// Not a stop: messages for this resource alone are waiting (`Resource::take_direct`).
    Direct,
}

/// One client, across its connections: what Atmosphere calls an `AtmosphereResource`, found
/// again by its tracking id.
pub struct Resource {
    pub uuid: String,
    /// The broadcaster it belongs to (its name: a tracking id is found again only there).
    broadcaster: String,
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
    /// Messages written to this resource alone (`Broadcaster::write_to`), not yet written to
    /// a connection; at most `MAX_DIRECT`.
    direct: std::collections::VecDeque<String>,
}

impl Resource {
    fn state(&self) -> MutexGuard<'_, ResourceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The messages written to this resource alone, taken to be written now.
    fn take_direct(&self) -> Vec<String> {
        self.state().direct.drain(..).collect()
    }

    /// Events up to `id` have been written to this client.
    fn wrote(&self, id: u64) {
        let mut state = self.state();
        state.cursor = state.cursor.max(id);
    }

    /// An answer moved the cursor to `moved_to` and then failed: back to `back_to`, unless a
    /// later connection has moved it further meanwhile.
    fn rewind(&self, moved_to: u64, back_to: u64) {
        let mut state = self.state();
        if state.cursor == moved_to {
            state.cursor = back_to;
        }
    }
}

/// A named channel and every resource it knows, suspended (connected) or away. Its messages
/// and its cache are a `Hub`'s: the lab's own for `lab` (the hub's events), a small one of its
/// own for any other name (a chat room; with `--redis`, local to this lab).
pub struct Broadcaster {
    pub name: String,
    hub: Arc<crate::hub::Hub>,
    /// Its resources in `Broadcasters::resources` (a room with none is freed in time).
    resources: AtomicUsize,
    /// The broadcaster's filter chain, applied in order to every message broadcast to it.
    filters: Vec<Filter>,
    /// A room (not `lab`) with no resource at all since then: freed after
    /// `--atmosphere-timeout` of that (`sweep`).
    empty_since: Mutex<Option<Instant>>,
}

/// One link of a broadcaster's filter chain (Atmosphere's `BroadcastFilter`): a message goes
/// on changed, or is refused with why.
#[derive(Debug)]
pub enum Filter {
    /// Words (whole, any case) replaced by asterisks.
    Mask(&'static [&'static str]),
    /// At most `per_second` messages a second to this broadcaster; more are refused.
    RateLimit {
        per_second: u32,
        window: Mutex<(Instant, u32)>,
    },
}

/// Why a filter refused a message.
#[derive(Debug)]
pub struct Refused(pub String);

impl Filter {
    fn name(&self) -> String {
        match self {
            Filter::Mask(words) => format!("mask {}", words.join(", ")),
            Filter::RateLimit { per_second, .. } => format!("at most {per_second} a second"),
        }
    }

    fn apply(&self, message: String) -> Result<String, Refused> {
        match self {
            Filter::Mask(words) => Ok(mask(&message, words)),
            Filter::RateLimit { per_second, window } => {
                let mut window = window.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if now.duration_since(window.0) >= Duration::from_secs(1) {
                    *window = (now, 0);
                }
                if window.1 >= *per_second {
                    return Err(Refused(format!(
                        "more than {per_second} messages a second to this broadcaster"
                    )));
                }
                window.1 += 1;
                Ok(message)
            }
        }
    }
}

/// `text` with each of `words` (a whole word, any case) replaced by as many asterisks.
fn mask(text: &str, words: &[&str]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if words.iter().any(|w| w.eq_ignore_ascii_case(word)) {
            out.extend(std::iter::repeat_n('*', word.chars().count()));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The chain each broadcaster gets: the hub (`lab`) a rate limit, so a loop in one page
/// cannot flood every lesson; a room a word mask too, as a chat would.
fn filters_for(name: &str) -> Vec<Filter> {
    let limit = |per_second| Filter::RateLimit {
        per_second,
        window: Mutex::new((Instant::now(), 0)),
    };
    match name {
        "lab" => vec![limit(50)],
        _ => vec![Filter::Mask(&["darn", "heck"]), limit(20)],
    }
}

impl Broadcaster {
    /// Publish a client's message to everyone suspended here (and, for `lab`, through the
    /// lab, so the other lessons and, with `--redis`, the other labs get it too).
    fn broadcast(&self, lab: &Lab, message: &str) -> Result<Arc<Event>, BroadcastError> {
        // The filter chain first: each link may change the message or refuse it.
        let mut message = message.to_string();
        for filter in &self.filters {
            message = filter.apply(message).map_err(BroadcastError::Filtered)?;
        }
        if Arc::ptr_eq(&self.hub, &lab.hub) {
            return lab.publish(message).map_err(BroadcastError::Unavailable);
        }
        Ok(self.hub.publish(message))
    }
}

/// Why a broadcast did not happen.
#[derive(Debug)]
pub enum BroadcastError {
    /// A filter refused it (429).
    Filtered(Refused),
    /// The broker is away (`--redis`; 503).
    Unavailable(crate::broker::Unavailable),
}

/// Every broadcaster, created on first use, and every resource.
pub struct Broadcasters {
    named: Mutex<HashMap<String, Arc<Broadcaster>>>,
    /// Every broadcaster's resources, under the caps (`sessions`), by tracking id.
    resources: Arc<Sessions<Resource>>,
    /// `--atmosphere-timeout`: a resource with no connection, and a room with no resource,
    /// for this long is forgotten.
    timeout: Duration,
}

impl Broadcasters {
    pub fn new(limits: SessionLimits, timeout: Duration) -> Broadcasters {
        Broadcasters {
            named: Mutex::default(),
            resources: Arc::new(Sessions::new("atmosphere", limits)),
            timeout,
        }
    }

    /// The resource `uuid`, if it belongs to `broadcaster`.
    fn resource(&self, broadcaster: &Broadcaster, uuid: &str) -> Option<Arc<Resource>> {
        self.resources
            .get(uuid)
            .filter(|r| r.broadcaster == broadcaster.name)
    }

    /// Forget the resource `uuid` (the old clients' `close`, or expired): a connection
    /// holding it is stopped.
    fn forget(&self, broadcaster: &Broadcaster, uuid: &str, why: &str) {
        let Some(resource) = self.resource(broadcaster, uuid) else {
            return;
        };
        if self.resources.close(uuid).is_none() {
            return; // (forgotten meanwhile)
        }
        if broadcaster.resources.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Its last: the room's time to be freed begins (the sweeper's own timer).
            *broadcaster
                .empty_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.resources.wake_sweeper();
        }
        if let Some((_, stop)) = resource.state().connection.take() {
            let _ = stop.try_send(Stop::Dropped);
        }
        log::debug!("atmosphere resource {uuid} forgotten: {why}");
    }

    /// Resources known now, and refused (for `/stats`).
    pub fn sessions_json(&self) -> serde_json::Value {
        self.resources.to_json()
    }

    fn named(&self) -> MutexGuard<'_, HashMap<String, Arc<Broadcaster>>> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broadcaster at `path` (`/atmosphere/NAME`), made on first use; `Err` with the
    /// status and why for a name that is not one, or one too many.
    pub fn lookup(&self, lab: &Lab, path: &str) -> Result<Arc<Broadcaster>, (u16, String)> {
        let name = path.strip_prefix(PREFIX).unwrap_or("");
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err((
                404,
                format!("no broadcaster {path:?}: /atmosphere/NAME, NAME up to 32 letters, digits, - or _"),
            ));
        }
        let mut named = self.named();
        if let Some(broadcaster) = named.get(name) {
            // A request is coming: the room is not to be freed under it
            // (`free_empty_rooms` looks again under the same lock), and its time to be freed
            // begins again from its next look.
            *broadcaster
                .empty_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = None;
            if name != "lab" && broadcaster.resources.load(Ordering::Acquire) == 0 {
                self.resources.wake_sweeper();
            }
            return Ok(broadcaster.clone());
        }
        let rooms = named.keys().filter(|n| *n != "lab").count();
        if name != "lab" && rooms >= MAX_NAMED {
            return Err((503, format!("{MAX_NAMED} broadcasters exist already")));
        }
        let hub = if name == "lab" {
            lab.hub.clone()
        } else {
            crate::hub::Hub::new(NAMED_HISTORY, lab.config.buffer)
        };
        let broadcaster = Arc::new(Broadcaster {
            name: name.to_string(),
            hub,
            resources: AtomicUsize::new(0),
            filters: filters_for(name),
            empty_since: Mutex::new(None),
        });
        named.insert(name.to_string(), broadcaster.clone());
        self.resources.wake_sweeper(); // (a room freed in time if it stays empty)
        Ok(broadcaster)
    }

    fn all(&self) -> Vec<Arc<Broadcaster>> {
        self.named().values().cloned().collect()
    }

    /// `/stats`: resources known, and how many are connected now, by transport, over every
    /// broadcaster; and the broadcasters' names.
    pub fn to_json(&self) -> serde_json::Value {
        let mut names = Vec::new();
        let mut count = 0;
        let mut connected: HashMap<&'static str, usize> = HashMap::new();
        for broadcaster in self.all() {
            names.push(broadcaster.name.clone());
        }
        for resource in self.resources.all() {
            count += 1;
            let state = resource.state();
            if state.connection.is_some() {
                *connected.entry(state.transport.name()).or_default() += 1;
            }
        }
        names.sort();
        let filters: serde_json::Map<String, serde_json::Value> = self
            .all()
            .iter()
            .map(|b| {
                let chain: Vec<String> = b.filters.iter().map(Filter::name).collect();
                (b.name.clone(), json!(chain))
            })
            .collect();
        json!({
            "resources": count,
            "connected": connected,
            "broadcasters": names,
            "filters": filters,
        })
    }
}

impl Broadcasters {
    /// `AtmosphereResource.write`: a message to the resource `uuid` of `broadcaster` alone,
    /// past the filters and the cache: written on its connection now, or on its next one.
    /// `Err`: its status and why.
    fn write_to(
        &self,
        broadcaster: &Broadcaster,
        uuid: &str,
        message: String,
    ) -> Result<(), (u16, String)> {
        let Some(resource) = self.resource(broadcaster, uuid) else {
            return Err((404, format!("no resource {uuid:?} on this broadcaster")));
        };
        let mut state = resource.state();
        if state.direct.len() >= MAX_DIRECT {
            let why = format!("{MAX_DIRECT} messages already wait for that resource");
            return Err((503, why));
        }
        state.direct.push_back(message);
        if let Some((_, line)) = &state.connection {
            let _ = line.try_send(Stop::Direct);
        }
        Ok(())
    }

    /// Stop the connection holding `uuid` on `broadcaster` now; `false` if none does.
    fn drop_connection(&self, broadcaster: &Broadcaster, uuid: &str) -> bool {
        let Some(resource) = self.resource(broadcaster, uuid) else {
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
    pub broadcaster: Arc<Broadcaster>,
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
    /// The broadcaster's hub from this client's cursor: the backlog is what it missed.
    fn subscribe(&self) -> (Backlog, Subscription) {
        let cursor = self.resource.state().cursor;
        let hub = &self.broadcaster.hub;
        hub.subscribe_with_channel(cursor.min(hub.last_id()))
    }

    /// A clone of this connection's stop line; `None` once a newer connection has taken over
    /// (the WebSocket checks before it begins).
    fn stop_line(&self) -> Option<Sender<Stop>> {
        let state = self.resource.state();
        state
            .connection
            .as_ref()
            .filter(|(id, _)| *id == self.id)
            .map(|(_, tx)| tx.clone())
    }
}

/// Step 2: the resource this request belongs to, and a connection attached to it; `Err`
/// when a new resource is refused under the caps (503).
pub fn attach(
    broadcasters: &Broadcasters,
    broadcaster: &Arc<Broadcaster>,
    params: &Params,
    from: IpAddr,
) -> Result<Attached, sessions::Refused> {
    let known = match params.tracking_id.as_str() {
        "0" => None,
        id if params.protocol => broadcasters.resource(broadcaster, id),
        _ => None,
    };
    let is_new = known.is_none();
    let make = |uuid| Resource {
        uuid,
        broadcaster: broadcaster.name.clone(),
        state: Mutex::new(ResourceState {
            cursor: broadcaster.hub.last_id(),
            connection: None,
            next_connection: 1,
            transport: params.transport,
            handshake_again: false,
            last_seen: Instant::now(),
            direct: Default::default(),
        }),
    };
    let resource = match known {
        Some(resource) => resource,
        // Without the protocol the client never learns its id: nothing to find again, and
        // nothing kept once its connection ends.
        None if !params.protocol => Arc::new(make(crate::lab::random_id())),
        None => {
            let first_look = Instant::now() + broadcasters.timeout;
            let resource = broadcasters.resources.open(from, first_look, make)?;
            broadcaster.resources.fetch_add(1, Ordering::AcqRel);
            log::debug!(
                "atmosphere resource {} created on {}",
                resource.uuid,
                broadcaster.name
            );
            resource
        }
    };
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
    Ok(Attached {
        broadcaster: broadcaster.clone(),
        resource,
        id,
        stop,
        handshake,
    })
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
pub fn handle(
    lab: &Lab,
    broadcasters: &Broadcasters,
    request: Request,
    path: &str,
    query: &Query,
) -> io::Result<()> {
    let counters = lab.count("atmosphere");
    let broadcaster = match broadcasters.lookup(lab, path) {
        Ok(broadcaster) => broadcaster,
        Err((status, message)) => return HttpError::new(status, message).reply(request, &counters),
    };
    if *request.method() == Method::Delete {
        // The lab's own control: drop a client's connection, to watch it come back.
        let uuid = query.get("X-Atmosphere-tracking-id").unwrap_or("");
        return if broadcasters.drop_connection(&broadcaster, uuid) {
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
        (Method::Post, _) => receive(lab, broadcasters, request, &broadcaster, &params, &counters),
        (Method::Get, Transport::LongPolling) => {
            long_poll(lab, broadcasters, request, &broadcaster, &params, &counters)
        }
        (Method::Get, Transport::Streaming | Transport::Sse) => {
            stream(lab, broadcasters, request, &broadcaster, &params, &counters)
        }
        (Method::Get, Transport::WebSocket) => {
            // Step 4: the websocket transport is a handshake (`Upgrade: websocket`), which
            // never reaches here (the server's upgrade `match` takes it to `websocket::upgrade`).
            let message =
                "the websocket transport needs the WebSocket handshake (Upgrade: websocket)";
            HttpError::new(426, message)
                .with_header("Upgrade", "websocket")
                .reply(request, &counters)
        }
        (Method::Get, Transport::Close) => {
            // The old clients' goodbye: forget the resource now rather than at the sweep.
            broadcasters.forget(&broadcaster, &params.tracking_id, "closed by its client");
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
    broadcasters: &Broadcasters,
    request: Request,
    broadcaster: &Broadcaster,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let body = match http::read_body(&request, lab.config.max_body) {
        Ok(body) => body,
        Err(error) => return error.reply(request, counters),
    };
    if let Some(resource) = broadcasters.resource(broadcaster, &params.tracking_id) {
        resource.state().last_seen = Instant::now();
    }
    if body == PADDING {
        // The client's heartbeat: it is alive; nothing to publish.
        return http::write_no_content(request, &[], counters);
    }
    if body.is_empty() {
        return HttpError::bad_request("an empty message").reply(request, counters);
    }
    // The lab's own `X-Atmosphere-Target=UUID`: to that resource alone.
    if let Some(target) = query_target(&request) {
        return match broadcasters.write_to(broadcaster, &target, body) {
            Ok(()) => http::write_no_content(request, &[], counters),
            Err((status, why)) => HttpError::new(status, why).reply(request, counters),
        };
    }
    match broadcaster.broadcast(lab, &body) {
        Ok(event) => {
            log::debug!(
                "atmosphere resource {} broadcast event {} on {}",
                params.tracking_id,
                event.id,
                broadcaster.name
            );
            http::write_no_content(request, &[], counters)
        }
        Err(BroadcastError::Filtered(Refused(why))) => HttpError::new(429, why)
            .with_header("Retry-After", "1")
            .reply(request, counters),
        Err(BroadcastError::Unavailable(e)) => {
            HttpError::retry_later(e.to_string()).reply(request, counters)
        }
    }
}

/// `X-Atmosphere-Target` in the request's query, if any.
fn query_target(request: &Request) -> Option<String> {
    let query = request.url().split_once('?')?.1;
    Query::parse(query)
        .get("X-Atmosphere-Target")
        .map(str::to_string)
}

/// Step 3, long polling: the handshake at once; after it, held until the broadcast.
fn long_poll(
    lab: &Lab,
    broadcasters: &Broadcasters,
    request: Request,
    broadcaster: &Arc<Broadcaster>,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let arrived = Instant::now();
    let attached = match attach(broadcasters, broadcaster, params, lab.client(&request).ip) {
        Ok(attached) => attached,
        Err(refused) => return too_many(request, refused, counters),
    };
    if attached.handshake {
        let body = protocol::frame(
            &protocol::handshake(&attached.resource.uuid),
            params.track_size,
        );
        return answer(request, &body, counters);
    }
    let Some(_held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        return HttpError::all_held(lab.config.max_parked).reply(request, counters);
    };
    let (backlog, mut subscription) = attached.subscribe();
    let me = request_label();
    let mut events = backlog;
    // Messages for this resource alone go first, in an answer of their own.
    let framed = |messages: Vec<String>| -> String {
        let track = params.track_size;
        messages.iter().map(|m| protocol::frame(m, track)).collect()
    };
    let direct = attached.resource.take_direct();
    if !direct.is_empty() {
        return answer(request, &framed(direct), counters);
    }
    if events.events.is_empty() && events.missed == 0 {
        log::debug!(
            "{me} parked for atmosphere resource {}",
            attached.resource.uuid
        );
        let deadline = arrived + lab.config.long_poll_timeout;
        let left = || request.client_left();
        // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a drop
        // stops this one, the deadline (then an empty answer, and the client polls again),
        // or (looked for once a second) the client closes its connection.
        let Some(woke) = park(lab, &mut subscription, &attached.stop, left, deadline) else {
            // Nothing was taken: the resource's cursor waits for its next request.
            log::debug!(
                "{me} atmosphere resource {}: its client left",
                attached.resource.uuid
            );
            return Ok(());
        };
        match woke {
            Wake::Events(batch) => events = batch,
            Wake::Other(Stop::Dropped) => {
                // An error, so the client treats it as a lost connection and reconnects.
                return HttpError::new(503, "dropped by the lab, as a proxy might")
                    .reply(request, counters);
            }
            Wake::Other(Stop::Direct) => {
                let body = framed(attached.resource.take_direct());
                return answer(request, &body, counters);
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
    let body = framed(messages);
    counters.delivered(carried.len());
    // The cursor moves past what this answer carries (past the gap, after a notice) *before*
    // the answer goes out: the client polls again the moment it reads it, and that poll must
    // find the cursor moved (else it gets the same events twice). A write that fails puts it
    // back.
    let before = attached.resource.state().cursor;
    let moved_to = carried
        .last()
        .map(|last| last.id)
        .or_else(|| events.events.first().map(|first| first.id - 1));
    if let Some(id) = moved_to {
        attached.resource.wrote(id);
    }
    let written = answer(request, &body, counters);
    if written.is_err() {
        attached.resource.rewind(moved_to.unwrap_or(before), before);
    }
    written
}

/// Step 3's wait, as every held request of the lab waits: on the hub and the resource's
/// `stop`, looking once a second (`--departures on`) whether the client closed its
/// connection. `None`, counted in `/stats` as `departed`, when it did.
fn park(
    lab: &Lab,
    subscription: &mut Subscription,
    stop: &Receiver<Stop>,
    client_left: impl Fn() -> bool,
    deadline: Instant,
) -> Option<Wake<Stop>> {
    let look = lab.config.departures;
    // BLOCKS: until an event, a stop, the deadline, or a look finds the client gone.
    match subscription.wait_for_events_or_notice_leaving(stop, client_left, look, deadline) {
        Ok(woke) => Some(woke),
        Err(ClientLeft) => {
            lab.stats
                .departed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }
    }
}

/// A long poll's answer: the connection stays open for the next poll.
fn answer(request: Request, body: &str, counters: &LessonCounters) -> io::Result<()> {
    let headers = [("Cache-Control", "no-cache")];
    let plain = "text/plain; charset=utf-8";
    http::write_response(request, 200, plain, &headers, body.as_bytes(), counters)
}

/// Step 3, streaming and SSE: one response, a message per chunk (or per `data:` event).
fn stream(
    lab: &Lab,
    broadcasters: &Broadcasters,
    request: Request,
    broadcaster: &Arc<Broadcaster>,
    params: &Params,
    counters: &LessonCounters,
) -> io::Result<()> {
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.streams, lab.config.max_parked)
    else {
        return HttpError::all_held(lab.config.max_parked).reply(request, counters);
    };
    let attached = match attach(broadcasters, broadcaster, params, lab.client(&request).ip) {
        Ok(attached) => attached,
        Err(refused) => return too_many(request, refused, counters),
    };
    let (backlog, mut subscription) = attached.subscribe();
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
    let me = request_label();
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
        let direct = |out: &mut http::ChunkedStream| -> io::Result<()> {
            for message in attached.resource.take_direct() {
                out.write_chunk(framed(&message).as_bytes())?;
            }
            Ok(())
        };
        direct(&mut out)?;
        loop {
            // The client's `X-Heartbeat-Server`, else the lab's `--heartbeat`.
            let heartbeat_due =
                Instant::now() + params.server_heartbeat.unwrap_or(lab.config.heartbeat);
            // BLOCKS: until `Hub::publish` wakes the subscription, a newer connection or a
            // drop stops this one, a message for this resource alone, the heartbeat is due, or
            // (looked for once a second) the client closes its connection.
            let left = || out.client_left();
            let Some(woke) = park(lab, &mut subscription, &attached.stop, left, heartbeat_due)
            else {
                return Ok(Stop::ClientGone);
            };
            match woke {
                Wake::Events(batch) => write(&batch, &mut out)?,
                Wake::Other(Stop::Direct) => direct(&mut out)?,
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

/// A new resource refused under the caps: 503, to come back later.
fn too_many(
    request: Request,
    refused: sessions::Refused,
    counters: &LessonCounters,
) -> io::Result<()> {
    HttpError::retry_later(format!("no new resource: {refused}")).reply(request, counters)
}

/// Step 5: start the sweeper thread (once, with the lab): it forgets each resource nobody has
/// connected for in `--atmosphere-timeout` when it is due (`sessions`), and frees rooms left
/// empty as long.
pub fn spawn_sweeper(
    broadcasters: Arc<Broadcasters>,
    stop: Receiver<()>,
) -> io::Result<JoinHandle<()>> {
    let resources = broadcasters.resources.clone();
    let (forgets, frees) = (broadcasters.clone(), broadcasters);
    resources.spawn_sweeper_with(
        "atmosphere-sweeper",
        stop,
        move |resource| {
            let timeout = forgets.timeout;
            let state = resource.state();
            if state.connection.is_some() {
                return Some(Instant::now() + timeout);
            }
            let expires = state.last_seen + timeout;
            drop(state);
            if expires > Instant::now() {
                return Some(expires);
            }
            if let Some(broadcaster) = forgets.named().get(&resource.broadcaster).cloned() {
                forgets.forget(&broadcaster, &resource.uuid, "away too long");
            }
            None
        },
        move || free_empty_rooms(&frees),
    )
}

/// Rooms (not `lab`, which is the hub) with no resource for the timeout are freed, ring and
/// all; when the next may be due.
fn free_empty_rooms(broadcasters: &Broadcasters) -> Option<Instant> {
    let now = Instant::now();
    let timeout = broadcasters.timeout;
    let mut next: Option<Instant> = None;
    let mut due = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
    // Under the map's lock, as `lookup` works: a request that looks a room up clears its
    // `empty_since`, and its time begins again.
    broadcasters.named().retain(|name, broadcaster| {
        if name == "lab" || broadcaster.resources.load(Ordering::Acquire) > 0 {
            return true;
        }
        let mut since = broadcaster
            .empty_since
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let at = *since.get_or_insert(now);
        if at + timeout <= now {
            log::debug!("atmosphere broadcaster {name} freed");
            return false;
        }
        due(at + timeout);
        true
    });
    next
}
