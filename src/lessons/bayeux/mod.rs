//! # CometD's Bayeux: publish and subscribe on named channels, over a held `/meta/connect`.
//!
//! Bayeux is what Comet grew into: a handshake gives each client an id, the client subscribes
//! to channels (with wildcards), publishes to any of them, and keeps one `/meta/connect`
//! outstanding, which the server holds like chapter 5's long poll and answers with whatever
//! was delivered meanwhile. The server steers the client with *advice* (how long it holds a
//! connect, how long to wait before the next, whether to retry or handshake again).
//!
//! ```text
//! POST /cometd/handshake  [{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"id":"1"}]
//! 200 [{"channel":"/meta/handshake","successful":true,"clientId":"Zk…","advice":{"interval":0,"reconnect":"retry","timeout":20000},…}]
//! POST /cometd/connect    [{"channel":"/meta/connect","clientId":"Zk…","connectionType":"long-polling","advice":{"timeout":0},"id":"2"}]
//! 200 [{"channel":"/meta/connect","successful":true,"id":"2",…}]                    ← the first: at once
//! POST /cometd            [{"channel":"/meta/subscribe","subscription":"/lab/**","clientId":"Zk…","id":"3"}]
//! 200 [{"channel":"/meta/subscribe","successful":true,"subscription":"/lab/**","id":"3"}]
//! POST /cometd/connect    [{"channel":"/meta/connect","clientId":"Zk…","connectionType":"long-polling","id":"4"}]
//!   (time passes: req-9 is parked holding the connect, on the client's queue and the hub)
//! 200 [{"channel":"/lab/events","data":{"data":"At …","id":7}},{"channel":"/meta/connect","successful":true,"id":"4",…}]
//! ```
//!
//! 1. `handle`: long polling (`POST /cometd…`, a JSON batch) and callback polling (`GET` with
//!    `jsonp=` and `message=`, answered as a script) both become one batch of messages.
//! 2. `process`: each message in turn: handshake, subscribe, unsubscribe, disconnect,
//!    publish (to the hub on `/lab/events`, to the subscribers' queues on other channels, back
//!    to the sender on `/service/**`). Every reply echoes the message's `id`; an unknown
//!    `clientId` gets `402::Unknown client` with the advice to handshake again.
//! 3. `hold_connect`: a `/meta/connect` in the batch is answered last. The first is answered
//!    at once; later ones park on the client's queue and its hub feed until a delivery or the
//!    advised timeout, looking once a second whether the HTTP client closed its connection (if
//!    so, it is let go and its queue waits for the next connect). One connect at a time per
//!    client: a newer one answers the held one and takes its place. A connect held when its
//!    client disconnects is told `reconnect: none`.
//! 4. The `ack` extension: every connect answer is a numbered batch; the client names the last
//!    batch it got on its next connect, and anything after it is sent again, at once.
//! 5. `sweep`: one thread expires clients that stop connecting for `maxInterval` after their
//!    last connect answer, freeing their subscriptions.
//! 6. `websocket`: the same messages over a WebSocket at `/cometd` (the official client's
//!    first choice): replies at once, the connect held by the socket's one thread, which sends
//!    each delivery as it comes.
//!
//! **What it costs**: over long polling a request per delivery batch, plus a request per
//! subscribe or publish; over WebSocket a frame per delivery (about a quarter of long
//! polling's bytes for a small event: REFERENCE.md, chapter 16) and one thread per client; every
//! message carries its channel and usually an id; the client id ties a client to the server
//! that knows it (sticky sessions again).
//!
//! **Try it**: `cargo run --example bayeux`, open <http://127.0.0.1:8080/lessons/bayeux> in two
//! tabs; or by hand: `curl -s -d '[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]' http://127.0.0.1:8080/cometd`.

pub mod message;
pub mod websocket;

use crate::connection::Request;
use crate::http::{self, HttpError, Query};
use crate::hub::Wake;
use crate::lab::Lab;
use crate::request::Method;
use crate::sessions::{HubFeed, Outbox, SessionLimits, Sessions};
use crate::stats::LessonCounters;
use crossbeam_channel::Receiver;
use message::Message;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The server's advice: the flags' (`crate::config`).
pub use crate::config::BayeuxSettings as Settings;

/// The hub's channel.
pub const HUB_CHANNEL: &str = "/lab/events";
/// The connection types served: `websocket` at `/cometd` itself (`websocket.rs`), and the two
/// HTTP ones.
const CONNECTION_TYPES: &[&str] = &["websocket", "long-polling", "callback-polling"];
/// Deliveries queued for a client before it counts as a slow consumer and is dropped.
const QUEUE: usize = 1024;
/// A handshake refused under the caps (`--max-sessions`) advises another after this long.
const REFUSED_RETRY_MS: u64 = 5000;
/// Under the ack extension: deliveries sent and not yet acknowledged before the client counts
/// as one that never acknowledges, and is dropped (rather than sent an ever larger batch).
const MAX_UNACKED: usize = 256;
/// The cookie that tells one browser's clients (its tabs) apart from another's.
const BROWSER_COOKIE: &str = "BAYEUX_BROWSER";
/// How often a browser's second client polls while its first holds the connect (CometD's
/// `multiSessionInterval`): the browser's few connections per host are not all held.
const MULTI_SESSION_INTERVAL_MS: u64 = 2000;

/// What a held connect finds in its client's queue.
enum Outgoing {
    Message(Message),
    /// The client disconnected or expired: answer now.
    End,
    /// Look again (the hub feed changed hands).
    Wake,
}

struct ClientState {
    subscriptions: BTreeSet<String>,
    /// Connects answered so far (the first is answered at once).
    connects: u64,
    connect_held: bool,
    /// The advice last sent: a connect reply repeats it only when it changes, or when the
    /// client's connect carries advice of its own (it may have forgotten ours: a reload).
    last_advice: Option<Value>,
    /// Another client of the same browser holds a connect: this one polls instead.
    multiple_clients: bool,
    /// A newer connect has come: the held one is to be answered now, and gives way.
    superseded: bool,
    /// When it expires if no connect comes (none while one is held).
    expires: Instant,
    gone: bool,
    /// Gone by its own `/meta/disconnect` (its held connect is told not to reconnect).
    disconnected: bool,
    /// A subscription covers `/lab/events`: the client has a hub feed.
    hub: bool,
    /// The ack extension: numbered batches not yet acknowledged.
    acks: bool,
    unacked: VecDeque<(u64, Message)>,
    batch: u64,
}

/// A handshaken client: its subscriptions, its queue of deliveries, its hub feed.
pub struct Client {
    id: String,
    /// Deliveries for the client, at most `QUEUE`, and nudges for the thread holding its
    /// connect.
    queue: Outbox<Outgoing>,
    state: Mutex<ClientState>,
    /// The hub subscription, while a subscription covers `/lab/events` (lent to a held
    /// connect for its wait).
    feed: HubFeed,
    /// Rung when a held connect is answered (a newer one waits for that to take its place).
    released: Condvar,
}

impl Client {
    fn state(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a delivery; `false` when the client stopped reading (its queue is full).
    fn deliver(&self, message: Message) -> bool {
        self.queue.push(Outgoing::Message(message))
    }
}

/// Every Bayeux client of the lab.
pub struct Bayeux {
    pub settings: Settings,
    /// Every handshaken client, under the caps (`sessions`).
    clients: Arc<Sessions<Client>>,
    /// Per browser (its `BAYEUX_BROWSER` cookie), the client holding a connect over HTTP now:
    /// an entry lives only while one is held.
    browsers: Mutex<HashMap<String, String>>,
}

impl Bayeux {
    pub fn new(settings: Settings, limits: SessionLimits) -> Bayeux {
        Bayeux {
            settings,
            clients: Arc::new(Sessions::new("bayeux", limits)),
            browsers: Mutex::new(HashMap::new()),
        }
    }

    /// Clients known now, and handshakes refused (for `/stats`).
    pub fn clients_json(&self) -> Value {
        self.clients.to_json()
    }

    fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.clients.get(id)
    }

    /// The browser's place for `client`'s held connect, or `None` when another client of the
    /// same browser holds one (given back when the place is dropped).
    fn browser_place<'a>(&'a self, browser: &str, client: &str) -> Option<BrowserPlace<'a>> {
        let mut browsers = self.browsers.lock().unwrap_or_else(|p| p.into_inner());
        match browsers.get(browser) {
            Some(holder) if holder != client => None,
            _ => {
                browsers.insert(browser.to_string(), client.to_string());
                Some(BrowserPlace {
                    bayeux: self,
                    browser: browser.to_string(),
                })
            }
        }
    }

    /// Forget a client: its subscriptions and feed go, a held connect is answered.
    fn forget(&self, client: &Client, why: &str) {
        self.clients.close(&client.id);
        client.state().gone = true;
        client.feed.set(None);
        client.queue.tell(Outgoing::End);
        log::debug!("bayeux client {} gone: {why}", client.id);
    }
}

/// A browser's one held connect (`Bayeux::browser_place`).
struct BrowserPlace<'a> {
    bayeux: &'a Bayeux,
    browser: String,
}

impl Drop for BrowserPlace<'_> {
    fn drop(&mut self) {
        let mut browsers = self
            .bayeux
            .browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        browsers.remove(&self.browser);
    }
}

/// The `BAYEUX_BROWSER` cookie of a request, if it has one that could be ours (base64url,
/// as `random_id` makes them).
fn browser_cookie(request: &Request) -> Option<String> {
    http::header(request, "Cookie")?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Step 1: `/cometd` and every path under it.
pub fn handle(lab: &Lab, bayeux: &Bayeux, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("bayeux");
    if *request.method() == Method::Options {
        return lab.preflight_with_credentials(request, &counters);
    }
    let cors = lab.cors_with_credentials(&request);
    let headers: Vec<(&str, &str)> = cors.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let origin = http::header(&request, "Origin");
    let client = lab.client(&request);
    if let Some(origin) = origin.filter(|o| !lab.is_own_origin(o, &client)) {
        if *request.method() == Method::Post {
            let why = lab.foreign_origin(origin, &request);
            return HttpError::new(403, why).reply(request, &counters);
        }
    }
    // Callback polling: the batch in the query, the answer a script.
    let callback = match *request.method() {
        Method::Get => match query.get("jsonp") {
            Some(name) if http::is_callback_name(name) => Some(name.to_string()),
            Some(_) => {
                return HttpError::bad_request("jsonp must be a JavaScript identifier")
                    .reply(request, &counters)
            }
            None => {
                return HttpError::bad_request("GET needs jsonp= and message= (callback polling)")
                    .reply(request, &counters)
            }
        },
        Method::Post => None,
        _ => {
            return HttpError::new(405, "Bayeux takes POST (or GET with jsonp=)")
                .with_header("Allow", "GET, POST, OPTIONS")
                .reply(request, &counters)
        }
    };
    let body = match &callback {
        Some(_) => query.get("message").unwrap_or("").to_string(),
        None => match http::read_body(&request, lab.config.max_body) {
            Ok(body) => body,
            Err(error) => return error.reply(request, &counters),
        },
    };
    let batch = match message::read_batch(&body) {
        Ok(batch) => batch,
        Err((status, refusal)) => {
            if status == 400 {
                counters.error();
            }
            let error = Value::Array(vec![Value::Object(refusal)]);
            return answer(request, status, callback, &error, &headers, &counters);
        }
    };
    let transport = if callback.is_some() {
        "callback-polling"
    } else {
        "long-polling"
    };
    // The browser's cookie: given with a handshake to a browser that has none, so that two
    // of its clients (tabs) holding connects at once can be told apart (`hold_connect`).
    let mut browser = browser_cookie(&request);
    let mut headers = headers;
    let cookie;
    let handshaking = batch
        .iter()
        .any(|m| message::channel(m) == Some("/meta/handshake"));
    if browser.is_none() && handshaking {
        let id = crate::lab::random_id();
        cookie = format!("{BROWSER_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax");
        headers.push(("Set-Cookie", cookie.as_str()));
        browser = Some(id);
    }
    // 2, 3. Every message; a connect waits for its deliveries (BLOCKS, see hold_connect),
    // looking once a second whether its client has closed the connection.
    let left = || request.client_left();
    let left = lab.config.departures.then_some(&left as &dyn Fn() -> bool);
    let came = Came {
        transport,
        from: client.ip,
        browser: browser.as_deref(),
        left,
    };
    let replies = process(lab, bayeux, batch, came, &counters);
    answer(
        request,
        200,
        callback,
        &Value::Array(replies.into_iter().map(Value::Object).collect()),
        &headers,
        &counters,
    )
}

/// The answer: JSON, or (callback polling) a script calling the client's callback.
fn answer(
    request: Request,
    status: u16,
    callback: Option<String>,
    body: &Value,
    headers: &[(&str, &str)],
    counters: &LessonCounters,
) -> io::Result<()> {
    match callback {
        Some(callback) => http::write_jsonp(request, &callback, body, headers, counters),
        None => http::write_response(
            request,
            status,
            "application/json;charset=UTF-8",
            headers,
            body.to_string().as_bytes(),
            counters,
        ),
    }
}

/// Step 2: the batch's messages in order; a `/meta/connect` is held and answered last.
fn process(
    lab: &Lab,
    bayeux: &Bayeux,
    batch: Vec<Message>,
    came: Came<'_>,
    counters: &LessonCounters,
) -> Vec<Message> {
    let (mut replies, connect) = process_messages(lab, bayeux, batch, came.transport, came.from);
    if let Some((client, message)) = connect {
        let connect = Connect {
            client: &client,
            message: &message,
            transport: came.transport,
            browser: came.browser,
            left: came.left,
        };
        replies.extend(hold_connect(lab, bayeux, connect, counters));
    }
    replies
}

/// How a batch came over HTTP: its transport, the client's address (counted under the caps
/// by a handshake), its browser, and a look at its connection.
struct Came<'a> {
    transport: &'a str,
    from: IpAddr,
    browser: Option<&'a str>,
    left: Option<&'a dyn Fn() -> bool>,
}

/// A connect to hold over HTTP: whose, the message, the transport, the browser it came from.
struct Connect<'a> {
    client: &'a Arc<Client>,
    message: &'a Message,
    transport: &'a str,
    browser: Option<&'a str>,
    /// Has the HTTP client closed its connection? Looked at once a second while the connect
    /// is held (`--departures on`).
    left: Option<&'a dyn Fn() -> bool>,
}

/// Every message of a batch but its `/meta/connect`, which comes back, with its client, for
/// the transport to hold (an HTTP request holds its thread; a WebSocket its socket's thread).
/// `from`: the client's address, which a handshake counts under the caps.
fn process_messages(
    lab: &Lab,
    bayeux: &Bayeux,
    batch: Vec<Message>,
    transport: &str,
    from: IpAddr,
) -> (Vec<Message>, Option<(Arc<Client>, Message)>) {
    let mut replies = Vec::new();
    let mut connect = None;
    for message in batch {
        let Some(channel) = message::channel(&message).map(str::to_string) else {
            let missing = message.get("channel").is_none_or(Value::is_null);
            replies.push(match missing {
                true => message::error(&message, 400, "channel_missing", None),
                false => message::error(&message, 405, "channel_invalid", None),
            });
            continue;
        };
        if channel == "/meta/handshake" {
            replies.push(handshake(bayeux, &message, transport, from));
            continue;
        }
        let client = message
            .get("clientId")
            .and_then(Value::as_str)
            .and_then(|id| bayeux.client(id));
        let Some(client) = client else {
            // The advice to handshake again goes on connect replies only (as CometD's).
            let advice = (channel == "/meta/connect").then_some("handshake");
            replies.push(message::error(&message, 402, "session_unknown", advice));
            continue;
        };
        match channel.as_str() {
            "/meta/connect" if connect.is_none() => connect = Some((client, message)),
            "/meta/connect" => replies.push(message::error(
                &message,
                400,
                "connect_twice_in_batch",
                None,
            )),
            "/meta/subscribe" | "/meta/unsubscribe" => replies.push(subscribe(
                lab,
                &client,
                &message,
                channel == "/meta/subscribe",
            )),
            "/meta/disconnect" => {
                client.state().disconnected = true;
                bayeux.forget(&client, "disconnected");
                replies.push(message::reply(&message, true));
            }
            meta if meta.starts_with("/meta/") => {
                replies.push(message::error(&message, 400, "meta_channel_unknown", None))
            }
            _ => replies.push(publish(lab, bayeux, &client, &message, &channel)),
        }
    }
    (replies, connect)
}

fn handshake(bayeux: &Bayeux, message: &Message, transport: &str, from: IpAddr) -> Message {
    let offered: Vec<&str> = message
        .get("supportedConnectionTypes")
        .and_then(Value::as_array)
        .map(|types| types.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !offered.iter().any(|t| CONNECTION_TYPES.contains(t)) && !offered.contains(&transport) {
        return message::error(message, 400, "connection_type_unsupported", None);
    }
    let acks = message
        .get("ext")
        .and_then(|ext| ext.get("ack"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let settings = &bayeux.settings;
    let expires = Instant::now() + settings.max_interval + settings.timeout;
    let opened = bayeux.clients.open(from, expires, |id| Client {
        id,
        queue: Outbox::new(QUEUE),
        state: Mutex::new(ClientState {
            subscriptions: BTreeSet::new(),
            connects: 0,
            connect_held: false,
            superseded: false,
            multiple_clients: false,
            last_advice: Some(advice(settings)),
            expires,
            gone: false,
            disconnected: false,
            hub: false,
            acks,
            unacked: VecDeque::new(),
            batch: 0,
        }),
        feed: HubFeed::default(),
        released: Condvar::new(),
    });
    let client = match opened {
        Ok(client) => client,
        // Refused under the caps: an unsuccessful handshake, advising another in a while (the
        // official client waits the interval, then handshakes again).
        Err(refused) => {
            let mut reply = message::error(message, 503, "too_many_clients", None);
            reply.insert(
                "advice".into(),
                json!({ "reconnect": "handshake", "interval": REFUSED_RETRY_MS }),
            );
            log::debug!("bayeux handshake refused: {refused}");
            return reply;
        }
    };
    log::debug!("bayeux client {} handshaken (acks: {acks})", client.id);
    let mut reply = message::reply(message, true);
    reply.insert("clientId".into(), json!(client.id));
    reply.insert("version".into(), json!("1.0"));
    reply.insert("supportedConnectionTypes".into(), json!(CONNECTION_TYPES));
    reply.insert("advice".into(), advice(settings));
    if acks {
        reply.insert(
            "ext".into(),
            json!({ "ack": { "enabled": true, "batch": 0 } }),
        );
    }
    reply
}

fn advice(settings: &Settings) -> Value {
    json!({
        "reconnect": "retry",
        "interval": 0,
        "timeout": settings.timeout.as_millis() as u64,
        "maxInterval": settings.max_interval.as_millis() as u64,
    })
}

/// `/meta/subscribe` and `/meta/unsubscribe`: one channel or an array of them.
fn subscribe(lab: &Lab, client: &Client, message: &Message, subscribing: bool) -> Message {
    let channels: Vec<&str> = match message.get("subscription") {
        None | Some(Value::Null) => {
            return message::error(message, 403, "subscription_missing", None);
        }
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if channels.is_empty() || channels.iter().any(|c| !message::is_channel(c)) {
        return message::error(message, 403, "subscription_invalid", None);
    }
    if channels.iter().any(|c| c.starts_with("/meta/")) {
        return message::error(message, 403, "subscribe_failed", None);
    }
    if subscribing {
        if let Some((channel, reason)) = channels
            .iter()
            .find_map(|c| authorize(Operation::Subscribe, c).err().map(|r| (c, r)))
        {
            log::debug!(
                "bayeux client {} denied subscribing to {channel}",
                client.id
            );
            return message::denied(message, 403, reason, "subscribe_denied", None);
        }
    }
    let mut state = client.state();
    for channel in &channels {
        if subscribing {
            state.subscriptions.insert(channel.to_string());
        } else {
            state.subscriptions.remove(*channel);
        }
    }
    // The hub feed follows: there while a subscription covers /lab/events, subscribed when
    // the first such subscription comes (a held connect picks it up when woken).
    let covers_hub = state
        .subscriptions
        .iter()
        .any(|s| message::matches(s, HUB_CHANNEL));
    let had_hub = std::mem::replace(&mut state.hub, covers_hub);
    drop(state);
    if covers_hub && !had_hub {
        let (_, subscription) = lab.hub.subscribe_with_channel(lab.hub.last_id());
        client.feed.set(Some(subscription));
    } else if !covers_hub {
        client.feed.set(None); // (a held connect drops the one it holds)
    }
    client.queue.tell(Outgoing::Wake);
    let mut reply = message::reply(message, true);
    reply.insert("subscription".into(), message["subscription"].clone());
    reply
}

/// A publish: to the hub on `/lab/events`, back to the sender on `/service/**`, to every
/// matching subscriber elsewhere. Acked without `data`.
fn publish(
    lab: &Lab,
    bayeux: &Bayeux,
    client: &Arc<Client>,
    message: &Message,
    channel: &str,
) -> Message {
    if message::is_wildcard(channel) {
        return message::error(message, 400, "channel_wild", None);
    }
    let Some(data) = message.get("data").cloned() else {
        return message::error(message, 400, "data_missing", None);
    };
    if let Err(reason) = authorize(Operation::Publish, channel) {
        log::debug!("bayeux client {} denied publishing to {channel}", client.id);
        return message::denied(message, 403, reason, "publish_denied", None);
    }
    if channel == HUB_CHANNEL {
        let text = match &data {
            Value::String(text) => Some(text.clone()),
            Value::Object(o) => o.get("data").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let Some(text) = text.filter(|t| t.len() <= lab.config.max_body) else {
            return message::error(message, 400, "data_invalid", None);
        };
        match lab.publish(text) {
            Ok(event) => {
                log::debug!("bayeux client {} published event {}", client.id, event.id)
            }
            Err(e) => {
                log::debug!("bayeux publish not taken: {e}");
                return message::error(message, 503, "broker_unavailable", None);
            }
        }
    } else if channel.starts_with("/service/") {
        // A service answers the sender alone, under the request's id (what CometD's
        // `remoteCall` waits for); a service with no handler answers nothing.
        if let Some(answer) = service(channel, data) {
            let mut delivery = message::delivery(channel, answer);
            if let Some(id) = message.get("id") {
                delivery.insert("id".into(), id.clone());
            }
            if !client.deliver(delivery) {
                bayeux.forget(client, "slow consumer");
            }
        }
    } else {
        let delivery = message::delivery(channel, data);
        for other in bayeux.clients.all() {
            let subscribed = other
                .state()
                .subscriptions
                .iter()
                .any(|s| message::matches(s, channel));
            if subscribed && !other.deliver(delivery.clone()) {
                bayeux.forget(&other, "slow consumer");
            }
        }
    }
    message::reply(message, true)
}

/// The services: handlers on the server for `/service/NAME`, each answering the caller.
/// `echo` sends the data back; `time` the server's clock.
fn service(channel: &str, data: Value) -> Option<Value> {
    match channel {
        "/service/echo" => Some(data),
        "/service/time" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Some(json!({ "millis": now.as_millis() as u64 }))
        }
        _ => None,
    }
}

/// What a client may do on a channel, as CometD's `SecurityPolicy` and channel authorizers
/// decide it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Operation {
    Subscribe,
    Publish,
}

/// The lab's policy: `/secret/**` cannot be subscribed to, `/announce/**` is read-only for
/// clients (the server alone speaks there). `Err` is the reason CometD puts in the middle of
/// its error string.
fn authorize(operation: Operation, channel: &str) -> Result<(), &'static str> {
    let under = |prefix: &str| channel == prefix || channel.starts_with(&format!("{prefix}/"));
    match operation {
        Operation::Subscribe if under("/secret") => Err("secret_channel"),
        Operation::Publish if under("/announce") => Err("read_only_channel"),
        _ => Ok(()),
    }
}

/// Step 3: the connect. **BLOCKS** (after the first) until a delivery or the timeout.
fn hold_connect(
    lab: &Lab,
    bayeux: &Bayeux,
    connect: Connect<'_>,
    counters: &LessonCounters,
) -> Vec<Message> {
    let Connect {
        client,
        message,
        transport,
        browser,
        left,
    } = connect;
    let at_once = match begin_connect(bayeux, client, message, transport) {
        Ok(at_once) => at_once,
        Err(refused) => return vec![refused],
    };
    let mut deliveries = Vec::new();
    if !at_once && !asks_not_to_wait(message) {
        // One held connect per browser: another client (tab) of the same browser holding one
        // already, this one is answered at once and told to poll (`multiple-clients`).
        let place = browser.map(|b| bayeux.browser_place(b, &client.id));
        let shared = matches!(place, Some(None));
        client.state().multiple_clients = shared;
        if shared {
            log::debug!("bayeux client {} shares its browser: polls", client.id);
            return finish_connect(bayeux, client, message, deliveries, counters);
        }
        if let Some(_held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) {
            log::debug!("bayeux client {} connect parked ({transport})", client.id);
            let deadline = Instant::now() + bayeux.settings.timeout;
            match wait_for_deliveries(client, deadline, left) {
                Some(ready) => deliveries = ready,
                None => {
                    // Its client closed the connection: nothing is taken from its queue
                    // (what waits there goes with its next connect), and no answer is worth
                    // writing. It expires unless it connects again, as after any connect.
                    lab.stats
                        .departed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::debug!(
                        "bayeux client {}: its held connect's client left",
                        client.id
                    );
                    let_go_of_connect(bayeux, client);
                    return Vec::new();
                }
            }
        }
    }
    finish_connect(bayeux, client, message, deliveries, counters)
}

/// A connect's checks, and the client marked as holding one: `Ok(true)` when it is to be
/// answered at once (the client's first connect, or one that left a batch unacknowledged,
/// sent again now), or the refusal to answer with.
fn begin_connect(
    bayeux: &Bayeux,
    client: &Client,
    message: &Message,
    transport: &str,
) -> Result<bool, Message> {
    let connection_type = message.get("connectionType").and_then(Value::as_str);
    let allowed = match transport {
        "websocket" => &["websocket"][..],
        _ => &["long-polling", "callback-polling"][..],
    };
    if connection_type.is_some_and(|t| !allowed.contains(&t)) {
        return Err(message::error(
            message,
            400,
            "connection_type_unsupported",
            None,
        ));
    }
    let acked = message
        .get("ext")
        .and_then(|ext| ext.get("ack"))
        .and_then(Value::as_u64);
    let mut state = client.state();
    if state.connect_held {
        // A newer connect: the held one is answered now and this one takes its place (its
        // request may be lost on the way, which the client could not know).
        state.superseded = true;
        client.queue.tell(Outgoing::Wake);
        let until = Instant::now() + Duration::from_secs(5);
        while state.connect_held {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(message::error(message, 409, "connect_held", Some("retry")));
            }
            // BLOCKS: until the held connect is answered (`finish_connect` rings), or 5 s.
            state = client
                .released
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.superseded = false;
    }
    state.connect_held = true;
    // 4. Acknowledged batches are done with; the rest goes again, at once. A client that
    //    never acknowledges is dropped before its resends outgrow MAX_UNACKED.
    if let Some(acked) = acked {
        state.unacked.retain(|(batch, _)| *batch > acked);
    }
    if state.unacked.len() > MAX_UNACKED {
        state.connect_held = false;
        drop(state);
        bayeux.forget(client, "it never acknowledges its deliveries");
        return Err(message::error(
            message,
            402,
            "session_unknown",
            Some("handshake"),
        ));
    }
    Ok(state.connects == 0 || !state.unacked.is_empty())
}

/// The client's `advice: {timeout: 0}`: answer at once (CometD sends it after a handshake).
fn asks_not_to_wait(message: &Message) -> bool {
    message
        .get("advice")
        .and_then(|a| a.get("timeout"))
        .and_then(Value::as_u64)
        == Some(0)
}

/// The connect's answer: `deliveries` and whatever else is queued, the reply with its advice,
/// numbered as a batch under the ack extension; the client no longer holds a connect.
fn finish_connect(
    bayeux: &Bayeux,
    client: &Client,
    message: &Message,
    mut deliveries: Vec<Message>,
    counters: &LessonCounters,
) -> Vec<Message> {
    // Whatever else is ready rides along: queued deliveries and hub events.
    loop {
        match wait_once(client, Instant::now()) {
            Woken::Deliveries(more) => deliveries.extend(more),
            Woken::Nudged => continue,
            Woken::TimeUp | Woken::Ended => break,
        }
    }
    counters.delivered(deliveries.len());
    let mut state = client.state();
    state.connect_held = false;
    client.released.notify_all();
    state.connects += 1;
    state.expires = Instant::now() + bayeux.settings.max_interval;
    bayeux.clients.look_at(&client.id, state.expires);
    let mut reply = message::reply(message, !state.gone || state.disconnected);
    if state.gone && !state.disconnected {
        reply.insert("error".into(), json!("402::session_unknown"));
    }
    if state.disconnected {
        // It said goodbye: its last connect ends, and it is told not to come back.
        reply.insert(
            "advice".into(),
            json!({ "reconnect": "none", "interval": 0 }),
        );
    } else if state.gone {
        reply.insert(
            "advice".into(),
            json!({ "reconnect": "handshake", "interval": 0 }),
        );
    } else {
        let mut now = advice(&bayeux.settings);
        if state.multiple_clients {
            now["multiple-clients"] = json!(true);
            now["interval"] = json!(MULTI_SESSION_INTERVAL_MS);
        }
        if message.get("advice").is_some() || state.last_advice.as_ref() != Some(&now) {
            reply.insert("advice".into(), now);
        }
    }
    if let Some(sent) = reply.get("advice") {
        state.last_advice = Some(sent.clone());
    }
    let mut out: Vec<Message> = Vec::new();
    if state.acks {
        // 4. Resend what is unacknowledged, then this batch's new deliveries.
        out.extend(state.unacked.iter().map(|(_, m)| m.clone()));
        if !deliveries.is_empty() {
            state.batch += 1;
            let batch = state.batch;
            state
                .unacked
                .extend(deliveries.iter().map(|m| (batch, m.clone())));
        }
        reply.insert("ext".into(), json!({ "ack": state.batch }));
        out.extend(deliveries);
    } else {
        out.extend(deliveries);
    }
    drop(state);
    out.push(reply);
    out
}

/// The client no longer holds a connect (its socket is going, or its HTTP client left): a
/// newer connect may take its place, and it expires unless one comes within `maxInterval`.
fn let_go_of_connect(bayeux: &Bayeux, client: &Client) {
    let mut state = client.state();
    state.connect_held = false;
    state.expires = Instant::now() + bayeux.settings.max_interval;
    client.released.notify_all();
    bayeux.clients.look_at(&client.id, state.expires);
}

/// The parked wait: the client's queue and, when subscribed to the hub, its feed, until a
/// delivery or `deadline` (a nudge that changes nothing waits on). With `left`, it wakes once
/// a second to look whether the HTTP client closed its connection: `None` when it did.
fn wait_for_deliveries(
    client: &Client,
    deadline: Instant,
    left: Option<&dyn Fn() -> bool>,
) -> Option<Vec<Message>> {
    let look = left.is_some();
    let client_left = || left.is_some_and(|left| left());
    let waited = crate::hub::wait_looking(deadline, look, client_left, |step| loop {
        // BLOCKS: until a delivery, a nudge, or the step ends (see `wait_once`).
        return match wait_once(client, step) {
            Woken::Deliveries(deliveries) => Some(deliveries),
            Woken::Nudged if Instant::now() < deadline && !client.state().superseded => continue,
            Woken::TimeUp => None,
            _ => Some(Vec::new()),
        };
    });
    waited.ok().map(Option::unwrap_or_default)
}

/// What woke a thread waiting for a client's deliveries.
enum Woken {
    Deliveries(Vec<Message>),
    /// Something changed (a subscription, a connect to take, a closing socket): look again.
    Nudged,
    TimeUp,
    /// The client is gone (disconnected, expired, dropped).
    Ended,
}

/// One wait on the client's queue and its hub feed. **BLOCKS** until one of them has
/// something, or `deadline`.
fn wait_once(client: &Client, deadline: Instant) -> Woken {
    // BLOCKS: until a publish on a subscribed channel, a hub event (when subscribed to the
    // hub), a nudge, or the deadline.
    match client.feed.wait(&client.queue, deadline, || Outgoing::Wake) {
        Wake::Events(batch) => {
            // The ring moved past this client's place: say how many it lost, first.
            let missed = (batch.missed > 0)
                .then(|| message::delivery(HUB_CHANNEL, json!({ "missed": batch.missed })));
            Woken::Deliveries(
                missed
                    .into_iter()
                    .chain(
                        batch
                            .events
                            .iter()
                            .map(|e| message::delivery(HUB_CHANNEL, e.to_json())),
                    )
                    .collect(),
            )
        }
        Wake::Other(Outgoing::Message(m)) => Woken::Deliveries(vec![m]),
        Wake::Other(Outgoing::Wake) => Woken::Nudged,
        Wake::Deadline => Woken::TimeUp,
        Wake::Other(Outgoing::End) | Wake::OtherGone => Woken::Ended,
    }
}

/// Step 5: start the sweeper thread (once, with the lab): it expires clients that stopped
/// connecting, each when it is due (`sessions`).
pub fn spawn_sweeper(bayeux: Arc<Bayeux>, stop: Receiver<()>) -> io::Result<JoinHandle<()>> {
    let clients = bayeux.clients.clone();
    clients.spawn_sweeper("bayeux-sweeper", stop, move |client| {
        let state = client.state();
        if state.connect_held {
            return None; // (its connect's end says when to look again)
        }
        if state.expires > Instant::now() {
            return Some(state.expires);
        }
        drop(state);
        bayeux.forget(client, "no connect within maxInterval");
        None
    })
}

/// `GET /vendor/cometd/FILE.js`: the official CometD client's modules, from `node_modules`
/// when `npm ci` has put them there, for the page's `?client=official`.
pub fn official_client(lab: &Lab, request: Request, file: &str) -> io::Result<()> {
    let safe = file.ends_with(".js")
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_');
    let path = format!("cometd/{file}");
    super::serve_installed_client(lab, request, "bayeux", safe.then_some(path.as_str()))
}
