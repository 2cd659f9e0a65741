//! # XHR long polling (长轮询): ask, and the server holds the request until it has an answer.
//!
//! ```text
//! GET /events/long-poll?since=4&timeout=30 HTTP/1.1
//!   (time passes: the handler thread req-9 is parked, holding the request)
//!   (the generator publishes event 5; the hub wakes req-9)
//! HTTP/1.1 200 OK
//! Content-Type: application/json
//!
//! {"events":[{"data":"At ...","id":5}],"last":5}
//! GET /events/long-poll?since=5&timeout=30 HTTP/1.1      ← the client asks again at once
//!   (30 s pass with no event)
//! HTTP/1.1 200 OK
//!
//! {"events":[],"last":5}                                  ← the deadline: ask again
//! ```
//!
//! 1. Read the cursor and the deadline (`timeout`, 1–120 s, default 30). A timeout of 0 is
//!    refused: in the servlet original it meant "never time out", a request that can hang
//!    forever.
//! 2. Subscribe and read the backlog under one lock. Events already past the cursor (published
//!    while the client was between polls) are answered at once: nothing is lost.
//! 3. Otherwise take a place under `--max-parked` (or answer 503 with `Retry-After`) and
//!    *park*: the thread sleeps on its subscription channel, holding the request. (With
//!    `--parking queue` the request goes to the waiting room instead and the thread ends: see
//!    `crate::waiting_room`.)
//! 4. Wake on an event, the deadline, or word that the client closed its connection (then
//!    answer as at the deadline, at once: see `crate::workarounds::departures`).
//! 5. Answer with every event after the cursor (or none at the deadline). A request held past
//!    `--idle-timeout` is answered with `Connection: close` (see `Answer::write`).
//!
//! **The servlet original** (`mode=servlet`) parked requests without a cursor and handed each
//! event only to the requests parked at that instant: an event published while the client was
//! between two polls reached nobody. Run the page in that mode with a fast generator and watch
//! ids go missing.
//!
//! **What it costs**: one request per event (or per deadline when nothing happens), and one
//! parked thread per waiting client (plus tiny_http's connection thread: two threads and two
//! file descriptors per client here). A held request cannot see its client leave by itself: it
//! sleeps on its subscription, not its socket. The lab's departures thread reads the kernel's
//! table of connections once a second and wakes it; a client that vanishes without closing
//! (no FIN) still costs its thread until the deadline. Proxies that time out idle requests
//! need the deadline below their limit.
//!
//! **Try it**: `cargo run --example long_polling`, open
//! <http://127.0.0.1:8080/lessons/long_polling>, or
//! `curl -s 'http://127.0.0.1:8080/events/long-poll?timeout=60'` and publish from another shell.

use crate::http::{self, HttpError, Query};
use crate::hub::{Backlog, Subscription, Wake};
use crate::lab::Lab;
use crate::lessons::events_answer;
use crate::stats::{Held, LessonCounters};
use crate::workarounds::Watch;
use crate::ParkingMode;
use std::io;
use std::time::{Duration, Instant};
use tiny_http::Request;

pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("long_polling");
    // 1–3. Read the input; answer at once if events are waiting, else park.
    let answer = Answer::new(lab, AnswerForm::Json);
    match park(lab, request, query, answer.clone(), &counters) {
        // 5. (Events were already waiting.)
        Parking::Ready(request, backlog, cursor) => {
            answer.write(request, &backlog, cursor, &counters)
        }
        Parking::Parked(parked) => {
            // 4. BLOCKS until an event, the deadline, or the client closing its connection.
            let (request, backlog, cursor) = parked.wait_for_events();
            // 5.
            answer.write(request, &backlog, cursor, &counters)
        }
        // `--parking queue`: the waiting room holds the request; this thread is done.
        Parking::Queued => Ok(()),
        Parking::Refused(request, error) => error.reply(request, &counters),
    }
}

/// How a long poll's answer is written, and when its request arrived.
#[derive(Clone, Debug)]
pub struct Answer {
    pub form: AnswerForm,
    arrived: Instant,
    idle_timeout: Duration,
}

/// JSON, or a script calling a (validated) callback.
#[derive(Clone, Debug)]
pub enum AnswerForm {
    Json,
    Script(String),
}

impl Answer {
    /// An answer for a request arriving now.
    pub fn new(lab: &Lab, form: AnswerForm) -> Answer {
        Answer {
            form,
            arrived: Instant::now(),
            idle_timeout: lab.config.idle_timeout,
        }
    }

    /// Step 5: every event after the cursor, or none at the deadline.
    ///
    /// While a request is held, tiny_http is already reading the connection for the next
    /// request head, under `--idle-timeout` like any read. A request held longer than that
    /// has lost its connection's reader: the answer says `Connection: close`, so the client
    /// sends its next poll on a new connection instead of one the server no longer reads.
    /// (`a_keep_alive_connection_serves_the_next_poll_after_a_long_hold`)
    pub fn write(
        &self,
        request: Request,
        backlog: &Backlog,
        cursor: u64,
        counters: &LessonCounters,
    ) -> io::Result<()> {
        counters.delivered(backlog.events.len());
        let answer = events_answer(backlog, cursor);
        let reader_gone = http::outlasts_the_reader(self.arrived.elapsed(), self.idle_timeout);
        let close: &[(&str, &str)] = if reader_gone {
            &[("Connection", "close")]
        } else {
            &[]
        };
        match &self.form {
            AnswerForm::Json => {
                let body = answer.to_string();
                http::write_response(
                    request,
                    200,
                    "application/json",
                    close,
                    body.as_bytes(),
                    counters,
                )
            }
            AnswerForm::Script(callback) => {
                http::write_jsonp(request, callback, &answer, close, counters)
            }
        }
    }
}

/// Our `AsyncContext`: a request the server holds while its thread sleeps on a subscription.
/// Dropping it (answered, timed out, or the thread failing) frees the subscription and the
/// place under `--max-parked`.
pub struct ParkedRequest<'lab> {
    pub request: Request,
    subscription: Subscription,
    deadline: Instant,
    /// Told if the client closes its connection (`workarounds::departures`).
    departure: Option<Watch>,
    _held: Held<'lab>,
}

impl ParkedRequest<'_> {
    /// Step 4. BLOCKS until the hub sends an event into our subscription, the deadline
    /// passes, or the departures thread says the client closed its connection. Returns the
    /// request to answer, the events (none at the deadline, or when the client left), and the
    /// cursor they follow.
    pub fn wait_for_events(self) -> (Request, Backlog, u64) {
        let ParkedRequest {
            request,
            mut subscription,
            deadline,
            departure,
            _held,
        } = self;
        let cursor = subscription.cursor();
        let me = thread_name();
        log::debug!("{me} parked after event {cursor}");
        let never = crossbeam_channel::never();
        let left = departure.as_ref().map_or(&never, |watch| &watch.left);
        match subscription.wait_for_events_or(left, deadline) {
            Wake::Events(backlog) => {
                log::debug!("{me} woken by {} events", backlog.events.len());
                (request, backlog, cursor)
            }
            Wake::Other(()) | Wake::OtherGone => {
                // The answer goes into a closed connection, harmlessly; and were the table
                // ever wrong, the client would just get an empty answer and ask again.
                log::debug!("{me} its client closed the connection: answering empty now");
                (request, Backlog::default(), cursor)
            }
            Wake::Deadline => {
                log::debug!("{me} deadline passed, answering empty");
                (request, Backlog::default(), cursor)
            }
        }
    }
}

/// What steps 1–3 decided.
pub enum Parking<'lab> {
    /// Events were already waiting: answer with them now, no parking.
    Ready(Request, Backlog, u64),
    Parked(ParkedRequest<'lab>),
    /// Handed to the waiting room (`--parking queue`); it will answer.
    Queued,
    /// Bad input or no place left: answer with the error.
    Refused(Request, HttpError),
}

/// Steps 1–3, shared with the script-tag lesson: read cursor and deadline, hand back the
/// events already waiting, park, or refuse.
pub fn park<'lab>(
    lab: &'lab Lab,
    request: Request,
    query: &Query,
    answer: Answer,
    counters: &LessonCounters,
) -> Parking<'lab> {
    // 1. The cursor and the deadline.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return Parking::Refused(request, e),
    };
    let max = lab.config.long_poll_max.as_secs();
    let default = lab.config.long_poll_timeout.as_secs().clamp(1, max);
    let timeout = match query.number("timeout", default, 1, max) {
        Ok(timeout) => timeout,
        Err(e) => return Parking::Refused(request, e),
    };
    let lossy = match query.get("mode") {
        None | Some("cursor") => false,
        Some("servlet") => true,
        Some(other) => {
            let message = format!("mode must be cursor or servlet, got {other:?}");
            return Parking::Refused(request, HttpError::bad_request(message));
        }
    };

    // 2. Subscribe and read the backlog under one lock. The servlet original had no cursor:
    //    it subscribed at "now", so whatever came between two polls is skipped.
    let cursor = if lossy { lab.hub.last_id() } else { since };
    let (backlog, subscription) = lab.hub.subscribe(cursor);
    if !backlog.events.is_empty() || backlog.missed > 0 {
        return Parking::Ready(request, backlog, cursor);
    }

    // 3. A place under the limit, then park: in the waiting room (`--parking queue`)...
    let deadline = Instant::now() + Duration::from_secs(timeout);
    if lab.config.parking == ParkingMode::Queue {
        drop(subscription); // the dispatcher's one subscription serves the whole room
        let room = &lab.waiting_room;
        return room.hold(lab, request, cursor, deadline, answer, counters.clone());
    }
    // ...or on this thread.
    let Some(held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        return Parking::Refused(request, HttpError::all_held(lab.config.max_parked));
    };
    let departure = lab.watch_departure(&request);
    Parking::Parked(ParkedRequest {
        request,
        subscription,
        deadline,
        departure,
        _held: held,
    })
}

/// `req-17`: the request this handler thread is serving, for the log. (Handler threads are
/// reused from one request to the next, so their own names, `handler-N`, say less.)
pub fn thread_name() -> String {
    format!("req-{}", REQUEST_ID.with(|id| id.get()))
}

thread_local! {
    /// The request this handler thread is serving now (handler threads serve one after another).
    static REQUEST_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Called by the server as a handler thread takes a request, for the logs.
pub fn set_request_id(id: u64) {
    REQUEST_ID.with(|cell| cell.set(id));
}
