//! # Pushlets: the observer pattern over HTTP: sessions, subjects, and a data channel that streams, pulls or polls.
//!
//! Pushlets (the second article's last framework) gives every client a session (`p_id`), lets
//! it subscribe to *subjects* (paths; a subscription to `/lab` receives `/lab/events`), and
//! delivers through one *data channel* in a mode the client picks: `stream` (one response that
//! never ends, a forever iframe), `pull` (a held request answered with what came, then a
//! `refresh` telling the client when to ask again), or `poll` (answered at once). Control
//! events (join, subscribe, publish, leave) are separate requests, each answered with an ack.
//!
//! ```text
//! GET /pushlet/pushlet.srv?p_event=join&p_format=xml
//! <event p_event="join-ack" p_id="Zk…" p_format="xml"/>
//! GET /pushlet/pushlet.srv?p_event=subscribe&p_id=Zk…&p_subject=/lab&p_format=xml
//! <event p_event="subscribe-ack" p_id="Zk…" p_subject="/lab" p_sid="1"/>
//! GET /pushlet/pushlet.srv?p_event=listen&p_id=Zk…&p_mode=stream&p_format=xml
//! <event p_event="listen-ack" p_id="Zk…" p_mode="stream"/>
//!   (time passes: req-9 is parked on the session's queue and the hub, holding the stream)
//! <event p_event="data" p_subject="/lab/events" id="7" data="At …" p_seq="1"/>
//!   (20 s without an event)
//! <event p_event="hb" p_seq="2"/>
//! ```
//!
//! 1. `handle`: one URL, `p_event` says what the request is. Control events are answered at
//!    once with their ack; `listen` (and `join-listen`, and `refresh` in pull and poll modes)
//!    open the data channel. The session keeps the format named at `join` and the mode named
//!    at `listen`: the original AJAX client names them only there.
//! 2. `Session`: a bounded queue of events for the client and, while a subscription covers
//!    `/lab/events`, a hub subscription (its feed). Publishing to any other subject puts the
//!    event in the queue of every session with a matching subscription.
//! 3. `data_channel`: write the events as they come (`stream`), or once then a `refresh`
//!    (`pull`: held up to 20 s; `poll`: at once), the refresh asking the client to wait a
//!    random 2–6 s (pull) or 6–10 s (poll), the original's defaults. With nothing to say, a
//!    `hb` (heartbeat) event. A published event is the request's own fields; each session
//!    receives it with its matching subscription's `p_sid` and `p_label`. A held response
//!    looks once a second whether its client closed the connection, and ends if so; the
//!    session and its queue live on for the next request.
//! 4. Formats: `js` is a page for a hidden iframe, each event a `parent.push(...)` call;
//!    `xml` is a stream of `<event .../>` elements; `xml-strict` (the original AJAX client's)
//!    one `<pushlet>` document per answer. The original wrote field values into the
//!    script unescaped, so an event containing `");` ran code in the page: `lab_mode=original`
//!    shows that; the lab escapes every value for where it lands.
//! 5. `sweep`: a session whose client has no data channel open and makes no request for
//!    `--pushlets-timeout` (60 s) expires (thread `pushlets-sweeper`), freeing its queue,
//!    subscriptions and hub feed.
//!
//! **What it costs**: a request per control event; in `pull` mode a request per batch and a
//! pause (`p_wait`) before the next; in `poll` mode mostly empty answers; in `stream` mode one
//! held response, as chapter 8's forever iframe.
//!
//! **Try it**: `cargo run --example pushlets`, open <http://127.0.0.1:8080/lessons/pushlets>;
//! or `curl -N 'http://127.0.0.1:8080/pushlet/pushlet.srv?p_event=join-listen&p_subject=/lab&p_mode=stream&p_format=xml'`.

use crate::connection::Request;
use crate::http::{self, escape_html, HttpError, Query};
use crate::hub::{Event, Wake};
use crate::lab::Lab;
use crate::sessions::{HubFeed, Outbox, Refused, SessionLimits, Sessions};
use crate::stats::LessonCounters;
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The hub's subject.
pub const HUB_SUBJECT: &str = "/lab/events";
/// Events queued for a session before its client counts as a slow consumer.
const QUEUE: usize = 256;
/// How long `pull` holds a refresh, and `stream` waits before a heartbeat (the original's
/// `queue.read.timeout.millis`).
const HOLD: Duration = Duration::from_secs(20);
/// The pause a `refresh` event asks for, a random one in these ranges (ms), as the original's
/// defaults (`pull.refresh.wait.*`, `poll.refresh.wait.*`): clients spread out their refreshes.
const PULL_WAIT_MS: (u64, u64) = (2000, 6000);
const POLL_WAIT_MS: (u64, u64) = (6000, 10000);
/// Subscriptions one session may hold.
const MAX_SUBSCRIPTIONS: usize = 32;

/// A Pushlets event: ordered fields (`p_event` first), all text.
pub type Fields = Vec<(String, String)>;

enum Queued {
    Event(Fields),
    /// The session ended (left or expired): stop the data channel.
    End,
    /// Look again (the hub feed changed).
    Wake,
}

struct State {
    /// Subscription id → (subjects, comma-separated as the client gave them; label).
    subscriptions: BTreeMap<u64, (String, Option<String>)>,
    /// The format chosen at `join` (the original answers every later request in it), and the
    /// mode chosen at `listen` (a `refresh` carrying only `p_id` is answered in it).
    format: Option<String>,
    mode: Option<String>,
    next_sid: u64,
    /// A subscription covers `/lab/events`: the session follows the hub (its feed).
    hub: bool,
    /// A data channel is open (no expiry meanwhile).
    listening: bool,
    last_seen: Instant,
    gone: bool,
    seq: u64,
}

pub struct Session {
    id: String,
    /// Events for the client, at most `QUEUE`, and nudges for its data channel.
    queue: Outbox<Queued>,
    state: Mutex<State>,
    /// The hub subscription, while the session follows the hub (lent to a data channel's
    /// wait).
    feed: HubFeed,
}

impl Session {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribed_to(&self, subject: &str) -> bool {
        self.matching(subject).is_some()
    }

    /// The first subscription that covers `subject` (one of its comma-separated subjects is
    /// a prefix of it): its id and label, which a data event carries as `p_sid`, `p_label`.
    fn matching(&self, subject: &str) -> Option<(u64, Option<String>)> {
        self.state()
            .subscriptions
            .iter()
            .find(|(_, (subjects, _))| subjects.split(',').any(|s| subject.starts_with(s)))
            .map(|(sid, (_, label))| (*sid, label.clone()))
    }
}

/// `event` as `session` receives it: with the id and label of its subscription that matched.
fn for_session(session: &Session, mut event: Fields) -> Fields {
    let subject = event
        .iter()
        .find(|(n, _)| n == "p_subject")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if let Some((sid, label)) = session.matching(&subject) {
        event.push(("p_sid".into(), sid.to_string()));
        if let Some(label) = label {
            event.push(("p_label".into(), label));
        }
    }
    event
}

/// A random wait in `range` (ms), for a `refresh` event.
fn refresh_wait(range: (u64, u64)) -> u64 {
    let spread = range.1 - range.0;
    let random = crate::lab::random_id()
        .bytes()
        .fold(0u64, |n, b| n.wrapping_mul(31).wrapping_add(u64::from(b)));
    range.0 + random % (spread + 1)
}

/// Every Pushlets session, under the caps (`sessions`).
pub struct Pushlets {
    sessions: Arc<Sessions<Session>>,
}

impl Pushlets {
    pub fn new(limits: SessionLimits) -> Pushlets {
        Pushlets {
            sessions: Arc::new(Sessions::new("pushlets", limits)),
        }
    }

    /// Sessions open now, and joins refused (for `/stats`).
    pub fn sessions_json(&self) -> serde_json::Value {
        self.sessions.to_json()
    }

    fn session(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.get(id)
    }

    fn end(&self, session: &Session, why: &str) {
        self.sessions.close(&session.id);
        session.state().gone = true;
        session.feed.set(None);
        session.queue.tell(Queued::End);
        log::debug!("pushlets session {} ended: {why}", session.id);
    }
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Step 1: everything on `/pushlet/pushlet.srv`.
pub fn handle(lab: &Lab, pushlets: &Pushlets, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("pushlets");
    let event = query.get("p_event").unwrap_or("").to_string();
    let known = query.get("p_id").and_then(|id| pushlets.session(id));
    // The format: asked for, else the session's (the original client names it only at join).
    let remembered = known.as_ref().and_then(|s| s.state().format.clone());
    let format_name = query
        .get("p_format")
        .map(str::to_string)
        .or(remembered)
        .unwrap_or_else(|| "js".into());
    let format = match format_name.as_str() {
        "js" => Format::Js {
            original: query.get("lab_mode") == Some("original"),
        },
        "xml" => Format::Xml,
        "xml-strict" => Format::XmlStrict,
        other => {
            let message = format!("p_format must be js, xml or xml-strict, not {other:?}");
            return HttpError::bad_request(message).reply(request, &counters);
        }
    };
    let session = match event.as_str() {
        "join" | "join-listen" => None,
        _ => match query.get("p_id").and_then(|id| pushlets.session(id)) {
            Some(session) => {
                session.state().last_seen = Instant::now();
                Some(session)
            }
            None => return nack(request, 400, &format, "unknown p_id: join first", &counters),
        },
    };
    // The mode: asked for, else the session's (a refresh names only its p_id), else stream.
    let remembered = session.as_ref().and_then(|s| s.state().mode.clone());
    let mode = query
        .get("p_mode")
        .map(str::to_string)
        .or(remembered)
        .unwrap_or_else(|| "stream".into());
    let mode = mode.as_str();
    if !["stream", "pull", "poll"].contains(&mode) {
        return nack(
            request,
            400,
            &format,
            "p_mode is stream, pull or poll",
            &counters,
        );
    }
    let name = format.name();
    // A join under the caps, or a nack that says why not (503, as Pushlets' server answers
    // when it cannot serve).
    let from = lab.client(&request).ip;
    let joined = |session: Option<Arc<Session>>| match session {
        Some(session) => Ok(session),
        None => join(lab, pushlets, name, from)
            .map_err(|refused| format!("no session: {refused}; join again later")),
    };
    match (event.as_str(), session) {
        ("join", _) => {
            let session = match joined(None) {
                Ok(session) => session,
                Err(why) => return nack(request, 503, &format, &why, &counters),
            };
            let ack = fields(&[
                ("p_event", "join-ack"),
                ("p_id", &session.id),
                ("p_format", name),
            ]);
            answer(request, 200, &format, &[ack], &counters)
        }
        ("join-listen" | "listen", session) => {
            let joining = session.is_none();
            let session = match joined(session) {
                Ok(session) => session,
                Err(why) => return nack(request, 503, &format, &why, &counters),
            };
            session.state().mode = Some(mode.to_string());
            let ack_name = if joining {
                "join-listen-ack"
            } else {
                "listen-ack"
            };
            let mut ack = fields(&[
                ("p_event", ack_name),
                ("p_id", &session.id),
                ("p_mode", mode),
                ("p_format", name),
            ]);
            // A subject to subscribe to, with its label, as a subscribe would.
            if let Some(subject) = query.get("p_subject") {
                match subscribe(lab, &session, subject, query.get("p_label")) {
                    Ok(sid) => {
                        ack.push(("p_sid".into(), sid.to_string()));
                        if let Some(label) = query.get("p_label") {
                            ack.push(("p_label".into(), label.to_string()));
                        }
                    }
                    Err(reason) => {
                        if joining {
                            pushlets.end(&session, "bad subject");
                        }
                        return nack(request, 400, &format, reason, &counters);
                    }
                }
            }
            data_channel(lab, request, &session, mode, format, Some(ack), &counters)
        }
        ("refresh", Some(session)) => {
            let ack = fields(&[("p_event", "refresh-ack"), ("p_id", &session.id)]);
            data_channel(lab, request, &session, mode, format, Some(ack), &counters)
        }
        ("subscribe", Some(session)) => {
            let subject = query.get("p_subject").unwrap_or("");
            match subscribe(lab, &session, subject, query.get("p_label")) {
                Ok(sid) => {
                    let sid = sid.to_string();
                    let mut ack = fields(&[
                        ("p_event", "subscribe-ack"),
                        ("p_id", &session.id),
                        ("p_subject", subject),
                        ("p_sid", &sid),
                    ]);
                    if let Some(label) = query.get("p_label") {
                        ack.push(("p_label".into(), label.to_string()));
                    }
                    answer(request, 200, &format, &[ack], &counters)
                }
                Err(reason) => nack(request, 400, &format, reason, &counters),
            }
        }
        ("unsubscribe", Some(session)) => {
            let sid = query.get("p_sid").and_then(http::whole_number);
            let removed = {
                let mut state = session.state();
                match sid {
                    Some(sid) => state.subscriptions.remove(&sid).is_some(),
                    None => {
                        state.subscriptions.clear();
                        true
                    }
                }
            };
            follow_the_hub(lab, &session);
            if !removed {
                return nack(request, 400, &format, "no such p_sid", &counters);
            }
            let ack = fields(&[("p_event", "unsubscribe-ack"), ("p_id", &session.id)]);
            answer(request, 200, &format, &[ack], &counters)
        }
        ("publish", Some(session)) => {
            let subject = query.get("p_subject").unwrap_or("");
            if let Err((status, reason)) = publish(lab, pushlets, &session, subject, query) {
                return nack(request, status, &format, &reason, &counters);
            }
            let ack = fields(&[("p_event", "publish-ack"), ("p_id", &session.id)]);
            answer(request, 200, &format, &[ack], &counters)
        }
        ("hb", Some(session)) => {
            let ack = fields(&[("p_event", "hb-ack"), ("p_id", &session.id)]);
            answer(request, 200, &format, &[ack], &counters)
        }
        ("leave", Some(session)) => {
            pushlets.end(&session, "left");
            let ack = fields(&[("p_event", "leave-ack"), ("p_id", &session.id)]);
            answer(request, 200, &format, &[ack], &counters)
        }
        (other, _) => {
            let reason = format!("unknown p_event {other:?}");
            nack(request, 400, &format, &reason, &counters)
        }
    }
}

fn join(
    lab: &Lab,
    pushlets: &Pushlets,
    format: &str,
    from: std::net::IpAddr,
) -> Result<Arc<Session>, Refused> {
    let expires = Instant::now() + lab.config.pushlets_timeout;
    let session = pushlets.sessions.open(from, expires, |id| Session {
        id,
        queue: Outbox::new(QUEUE),
        state: Mutex::new(State {
            subscriptions: BTreeMap::new(),
            format: Some(format.to_string()),
            mode: None,
            next_sid: 1,
            hub: false,
            listening: false,
            last_seen: Instant::now(),
            gone: false,
            seq: 0,
        }),
        feed: HubFeed::default(),
    })?;
    log::debug!("pushlets session {} joined", session.id);
    Ok(session)
}

fn is_subject_list(subjects: &str) -> bool {
    subjects.len() <= 512 && subjects.split(',').all(is_subject)
}

/// A subject is a path; a subscription receives every subject it is a prefix of.
fn is_subject(subject: &str) -> bool {
    subject.starts_with('/')
        && subject.len() <= 128
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b))
}

fn subscribe(
    lab: &Lab,
    session: &Arc<Session>,
    subject: &str,
    label: Option<&str>,
) -> Result<u64, &'static str> {
    if !is_subject_list(subject) {
        return Err("p_subject must be a path like /lab/events, or several, comma-separated");
    }
    let sid = {
        let mut state = session.state();
        if state.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            return Err("too many subscriptions for one session (32)");
        }
        let sid = state.next_sid;
        state.next_sid += 1;
        let label = label.map(|l| l.chars().take(64).collect());
        state
            .subscriptions
            .insert(sid, (subject.to_string(), label));
        sid
    };
    follow_the_hub(lab, session);
    Ok(sid)
}

/// The hub feed is there while a subscription covers `/lab/events`.
fn follow_the_hub(lab: &Lab, session: &Session) {
    let wanted = session.subscribed_to(HUB_SUBJECT);
    let followed = std::mem::replace(&mut session.state().hub, wanted);
    if wanted && !followed {
        session
            .feed
            .set(Some(lab.hub.subscribe_with_channel(lab.hub.last_id()).1));
    } else if !wanted {
        // (A data channel's wait holding it drops it when it comes back.)
        session.feed.set(None);
    }
    session.queue.tell(Queued::Wake);
}

/// `publish`: to the hub on `/lab/events` (field `data`), else to every matching session. A
/// refusal says its status: 400 for bad input, 503 when the broker (`--redis`) is away.
fn publish(
    lab: &Lab,
    pushlets: &Pushlets,
    from: &Session,
    subject: &str,
    query: &Query,
) -> Result<(), (u16, String)> {
    if !is_subject(subject) {
        return Err((400, "p_subject must be a path like /chat/room1".into()));
    }
    let size: usize = query.all().iter().map(|(n, v)| n.len() + v.len()).sum();
    if size > lab.config.max_body {
        return Err((400, "the event is longer than --max-body".into()));
    }
    if subject == HUB_SUBJECT {
        // The hub's events are text: its field `data`.
        let Some(data) = query.get("data") else {
            return Err((400, "an event on /lab/events needs data (its text)".into()));
        };
        let event = lab.publish(data).map_err(|e| (503, e.to_string()))?;
        log::debug!("pushlets session {} published event {}", from.id, event.id);
        return Ok(());
    }
    // The event is the request itself, every field of it (`nick=bob&msg=hi` arrives as
    // `nick` and `msg`), as the original passes the request's event on, but for what only
    // the transport needs; marked as data, from this session.
    let mut event = fields(&[("p_event", "data"), ("p_subject", subject)]);
    for (name, value) in query.all() {
        if ![
            "p_event",
            "p_subject",
            "p_id",
            "p_format",
            "p_mode",
            "lab_mode",
        ]
        .contains(&name)
        {
            event.push((name.to_string(), value.to_string()));
        }
    }
    event.push(("p_from".into(), from.id.clone()));
    // `p_to`: to that one session alone, subscribed or not (the original's unicast).
    let targets: Vec<Arc<Session>> = match query.get("p_to") {
        Some(to) => pushlets.session(to).into_iter().collect(),
        None => pushlets
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.subscribed_to(subject))
            .collect(),
    };
    for session in targets {
        let event = for_session(&session, event.clone());
        if !session.queue.push(Queued::Event(event)) {
            pushlets.end(&session, "slow consumer (queue full)");
        }
    }
    Ok(())
}

fn hub_event(event: &Event) -> Fields {
    let id = event.id.to_string();
    fields(&[
        ("p_event", "data"),
        ("p_subject", HUB_SUBJECT),
        ("id", &id),
        ("data", &event.data),
    ])
}

/// Step 3: the data channel, in the session's mode.
fn data_channel(
    lab: &Lab,
    request: Request,
    session: &Arc<Session>,
    mode: &str,
    format: Format,
    ack: Option<Fields>,
    counters: &LessonCounters,
) -> io::Result<()> {
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.streams, lab.config.max_parked)
    else {
        return HttpError::all_held(lab.config.max_parked).reply(request, counters);
    };
    session.state().listening = true;
    let result = run_channel(lab, request, session, mode, &format, ack, counters);
    let mut state = session.state();
    state.listening = false;
    state.last_seen = Instant::now();
    result
}

fn run_channel(
    lab: &Lab,
    request: Request,
    session: &Arc<Session>,
    mode: &str,
    format: &Format,
    ack: Option<Fields>,
    counters: &LessonCounters,
) -> io::Result<()> {
    let mut out = http::ChunkedStream::start(request, format.content_type(), &[], counters)?;
    out.write_chunk(format.start().as_bytes())?;
    if let Some(ack) = &ack {
        out.write_chunk(format.event(ack).as_bytes())?;
    }
    let refresh = |out: &mut http::ChunkedStream| -> io::Result<()> {
        let wait = refresh_wait(if mode == "poll" {
            POLL_WAIT_MS
        } else {
            PULL_WAIT_MS
        });
        let url = format!(
            "/pushlet/pushlet.srv?p_event=refresh&p_id={}&p_mode={mode}&p_format={}{}",
            session.id,
            format.name(),
            match format {
                Format::Js { original: true } => "&lab_mode=original",
                _ => "",
            }
        );
        let refresh = fields(&[
            ("p_event", "refresh"),
            ("p_wait", &wait.to_string()),
            ("p_url", &url),
        ]);
        out.write_chunk(format.event(&refresh).as_bytes())?;
        out.write_chunk(format.refresh_trigger(&url, wait).as_bytes())?;
        out.write_chunk(format.end().as_bytes())
    };
    // Pull and poll: the listen-ack alone, then come back by refresh (a refresh-ack is
    // followed by the events, as any refresh).
    let listening = ack
        .as_ref()
        .is_some_and(|ack| ack[0].1.ends_with("listen-ack"));
    if listening && mode != "stream" {
        refresh(&mut out)?;
        return out.finish();
    }
    loop {
        let hold = if mode == "poll" { Duration::ZERO } else { HOLD };
        let deadline = Instant::now() + hold;
        // BLOCKS (stream, pull): until the session's queue or the hub has events for it, or
        // the hold ends (then a heartbeat); with `--departures on` in steps of a second, to
        // look whether the client closed its connection. One that did is let go at once:
        // nothing is taken from its queue, which waits for its next request.
        // (A look also sees the lab stopping: the session's stream then ends with an abort.)
        let left = || lab.shutdown.is_stopping() || out.client_left();
        let waited = crate::hub::wait_looking(deadline, lab.config.departures, left, |step| {
            let (events, ended) = wait_for_events(session, step);
            (!events.is_empty() || ended).then_some((events, ended))
        });
        if lab.shutdown.is_stopping() {
            let abort = fields(&[("p_event", "abort"), ("p_reason", "the lab is stopping")]);
            out.write_chunk(format.event(&abort).as_bytes())?;
            out.write_chunk(format.end().as_bytes())?;
            return out.finish();
        }
        let Ok(woke) = waited else {
            lab.stats
                .departed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log::debug!("pushlets session {}: its client left", session.id);
            return Ok(());
        };
        let (events, ended) = woke.unwrap_or_default();
        let mut batch = events;
        if batch.is_empty() && !ended {
            batch.push(fields(&[("p_event", "hb")]));
        }
        counters.delivered(batch.iter().filter(|e| e[0].1 == "data").count());
        for mut event in batch {
            let seq = {
                let mut state = session.state();
                state.seq += 1;
                state.seq
            };
            event.push(("p_seq".into(), seq.to_string()));
            // A failed write: the client has gone.
            out.write_chunk(format.event(&event).as_bytes())?;
        }
        if ended {
            let abort = fields(&[("p_event", "abort"), ("p_reason", "the session ended")]);
            out.write_chunk(format.event(&abort).as_bytes())?;
            out.write_chunk(format.end().as_bytes())?;
            return out.finish();
        }
        if mode != "stream" {
            refresh(&mut out)?;
            return out.finish();
        }
        session.state().last_seen = Instant::now();
    }
}

/// The parked wait on the session's queue and its hub feed.
fn wait_for_events(session: &Session, deadline: Instant) -> (Vec<Fields>, bool) {
    let mut events = Vec::new();
    let mut ended = false;
    loop {
        // BLOCKS: until a publish on a subscribed subject, a hub event (when following the
        // hub), or the deadline.
        match session.feed.wait(&session.queue, deadline, || Queued::Wake) {
            Wake::Events(batch) => {
                // The ring moved past this session's place: say how many it lost.
                if batch.missed > 0 {
                    let missed = batch.missed.to_string();
                    events.push(fields(&[
                        ("p_event", "data"),
                        ("p_subject", HUB_SUBJECT),
                        ("missed", &missed),
                    ]));
                }
                events.extend(
                    batch
                        .events
                        .iter()
                        .map(|e| for_session(session, hub_event(e))),
                )
            }
            Wake::Other(Queued::Event(e)) => events.push(e),
            Wake::Other(Queued::End) => ended = true,
            // "Look again" (a subscription changed): even past the deadline, once more, for
            // what is ready now (a poll must not answer a heartbeat over waiting events).
            Wake::Other(Queued::Wake) => continue,
            _ => {}
        }
        break;
    }
    for queued in session.queue.rx.try_iter() {
        match queued {
            Queued::Event(e) => events.push(e),
            Queued::End => ended = true,
            Queued::Wake => {}
        }
    }
    (events, ended || session.state().gone)
}

/// Step 4: how events are written.
enum Format {
    /// A page for a hidden iframe; `original`: the values unescaped, as the servlet did.
    Js { original: bool },
    /// A stream of `<event .../>` elements (not one document: it has no root).
    Xml,
    /// One whole XML document per answer, `<pushlet>` around its events: what the original
    /// AJAX client (ajax-pushlet-client.js) asks for and parses.
    XmlStrict,
}

impl Format {
    fn name(&self) -> &'static str {
        match self {
            Format::Js { .. } => "js",
            Format::Xml => "xml",
            Format::XmlStrict => "xml-strict",
        }
    }

    fn content_type(&self) -> &'static str {
        match self {
            Format::Js { .. } => "text/html; charset=utf-8",
            Format::Xml => "text/plain; charset=utf-8",
            Format::XmlStrict => "text/xml; charset=utf-8",
        }
    }

    fn start(&self) -> String {
        match self {
            // Padded, as chapter 8's iframe: some browsers render nothing before 1 KiB.
            Format::Js { .. } => format!(
                "<!doctype html><html><head><meta charset=\"utf-8\"></head><body>\n<!-- {} -->\n",
                "padding ".repeat(128)
            ),
            Format::Xml => String::new(),
            Format::XmlStrict => "<pushlet>".into(),
        }
    }

    fn end(&self) -> &'static str {
        match self {
            Format::Js { .. } => "</body></html>\n",
            Format::Xml => "",
            Format::XmlStrict => "</pushlet>",
        }
    }

    /// What makes a `js` page of a pull or poll channel load the next by itself after `wait`
    /// ms, as the original's pages did: the hidden iframe refreshes itself, and the page
    /// around it (the original's `js-pushlet-net.html`, or ours) only hears the events. The
    /// XML formats leave that to the client (the refresh event says where and when).
    fn refresh_trigger(&self, url: &str, wait: u64) -> String {
        match self {
            Format::Js { .. } => {
                let url = http::json_for_script(&serde_json::Value::String(url.into()));
                format!("<script>setTimeout(function () {{ document.location.href = {url}; }}, {wait});</script>\n")
            }
            Format::Xml | Format::XmlStrict => String::new(),
        }
    }

    /// One event. In a script, every name and value is a JSON string made safe for a script
    /// element (`http::json_for_script`); in XML, an escaped attribute.
    fn event(&self, event: &Fields) -> String {
        match self {
            Format::Js { original: true } => {
                // The servlet original: values between double quotes, unescaped. A `"` ends
                // the string; `</script>` ends the element.
                let args: Vec<String> = event
                    .iter()
                    .map(|(n, v)| format!("'{n}', \"{v}\""))
                    .collect();
                format!("<script>parent.push({});</script>\n", args.join(", "))
            }
            Format::Js { original: false } => {
                let args: Vec<String> = event
                    .iter()
                    .flat_map(|(n, v)| [n, v])
                    .map(|s| http::json_for_script(&serde_json::Value::String(s.clone())))
                    .collect();
                format!("<script>parent.push({});</script>\n", args.join(", "))
            }
            Format::Xml | Format::XmlStrict => {
                let attributes: Vec<String> = event
                    .iter()
                    .map(|(n, v)| format!("{}=\"{}\"", escape_html(n), escape_html(v)))
                    .collect();
                format!("<event {}/>\n", attributes.join(" "))
            }
        }
    }
}

/// A refusal: a `nack` event saying why, with its HTTP status.
fn nack(
    request: Request,
    status: u16,
    format: &Format,
    reason: &str,
    counters: &LessonCounters,
) -> io::Result<()> {
    let nack = fields(&[("p_event", "nack"), ("p_reason", reason)]);
    answer(request, status, format, &[nack], counters)
}

/// A control event's answer: a whole document in the format asked for.
fn answer(
    request: Request,
    status: u16,
    format: &Format,
    events: &[Fields],
    counters: &LessonCounters,
) -> io::Result<()> {
    let mut body = format.start();
    for event in events {
        body.push_str(&format.event(event));
    }
    body.push_str(format.end());
    if status >= 400 {
        counters.error();
    }
    http::write_response(
        request,
        status,
        format.content_type(),
        &[],
        body.as_bytes(),
        counters,
    )
}

/// Step 5: start the sweeper thread (once, with the lab): it expires each session nobody
/// listens for when it is due (`sessions`).
pub fn spawn_sweeper(lab: Arc<Lab>, pushlets: Arc<Pushlets>) -> io::Result<JoinHandle<()>> {
    let sessions = pushlets.sessions.clone();
    let stop = lab.shutdown.line();
    sessions.spawn_sweeper("pushlets-sweeper", stop, move |session| {
        let timeout = lab.config.pushlets_timeout;
        let state = session.state();
        if state.listening {
            return Some(Instant::now() + timeout);
        }
        let expires = state.last_seen + timeout;
        drop(state);
        if expires > Instant::now() {
            return Some(expires);
        }
        let why = "no listener and no request for the session timeout";
        pushlets.end(session, why);
        None
    })
}
