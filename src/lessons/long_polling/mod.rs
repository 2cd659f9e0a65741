//! # XHR long polling (长轮询): ask, and the server holds the request until it has an answer.
//!
//! ```text
//! GET /events/long-poll?since=4&timeout=30 HTTP/1.1
//!   (time passes: the connection's thread, serving req-9, is parked holding the request)
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
//!    *park*: the thread sleeps on the hub's bell, holding the request. (With
//!    `--parking queue` the request goes to the waiting room instead and the thread goes back
//!    to the pool: see `waiting_room`.)
//! 4. Wake on an event or the deadline. A parked thread is not reading its socket, so it
//!    wakes once a second too, and looks (`Request::client_left`): a client that closed its
//!    connection is answered at once, as at the deadline, and the thread is free.
//! 5. Answer with every event after the cursor (or none at the deadline). The connection then
//!    goes back to reading: this same thread reads the client's next poll.
//!
//! **The servlet original** (`mode=servlet`) parked requests without a cursor and handed each
//! event only to the requests parked at that instant: an event published while the client was
//! between two polls reached nobody. Run the page in that mode with a fast generator and watch
//! ids go missing.
//!
//! **What it costs**: one request per event (or per deadline when nothing happens), and one
//! parked thread per waiting client: its connection's own thread, and one file descriptor. A
//! held request cannot see its client leave by itself: it sleeps on its subscription, not its
//! socket, so it looks once a second; a client that vanishes without closing (no FIN: a
//! cable pulled) still costs its thread until the deadline. Proxies that time out idle
//! requests need the deadline below their limit.
//!
//! **Try it**: `cargo run --example long_polling`, open
//! <http://127.0.0.1:8080/lessons/long_polling>, or
//! `curl -s 'http://127.0.0.1:8080/events/long-poll?timeout=60'` and publish from another shell.

pub mod waiting_room;

use crate::connection::{request_label, Request};
use crate::http::{self, HttpError, Query};
use crate::hub::{Backlog, ClientLeft, Subscription, Wake};
use crate::lab::Lab;
use crate::lessons::events_answer;
use crate::stats::{Held, LessonCounters};
use crate::ParkingMode;
use std::io;
use std::time::{Duration, Instant};
use waiting_room::WaitingRoom;

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("long_polling");
    // 1–3. Read the input; answer at once if events are waiting, else park.
    let answer = Answer::new(AnswerForm::Json);
    match park(lab, room, request, query, answer.clone(), &counters) {
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
}

/// JSON, or a script calling a (validated) callback.
#[derive(Clone, Debug)]
pub enum AnswerForm {
    Json,
    Script(String),
}

impl Answer {
    /// An answer for a request arriving now.
    pub fn new(form: AnswerForm) -> Answer {
        Answer {
            form,
            arrived: Instant::now(),
        }
    }

    /// Step 5: every event after the cursor, or none at the deadline. The answer has a
    /// length, so the connection stays open for the client's next poll.
    pub fn write(
        &self,
        request: Request,
        backlog: &Backlog,
        cursor: u64,
        counters: &LessonCounters,
    ) -> io::Result<()> {
        counters.delivered(backlog.events.len());
        let answer = events_answer(backlog, cursor);
        log::debug!(
            "{} answered after {} ms",
            request_label(),
            self.arrived.elapsed().as_millis()
        );
        match &self.form {
            AnswerForm::Json => http::write_json(request, &answer, counters),
            AnswerForm::Script(callback) => {
                http::write_jsonp(request, callback, &answer, &[], counters)
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
    /// Look at the socket once a second for a client that left (`--departures on`).
    look: bool,
    /// Counts the requests let go because their client left.
    departed: &'lab std::sync::atomic::AtomicU64,
    _held: Held<'lab>,
}

impl ParkedRequest<'_> {
    /// Step 4. BLOCKS until the hub rings its bell for an event after our cursor, the deadline
    /// passes, or the client closes its connection. Returns the request to answer, the events
    /// (none at the deadline, or when the client left), and the cursor they follow.
    pub fn wait_for_events(self) -> (Request, Backlog, u64) {
        // (`self._held`, the place under --max-parked, is given back when this returns.)
        let (request, mut subscription, deadline) =
            (self.request, self.subscription, self.deadline);
        let cursor = subscription.cursor();
        let me = request_label();
        log::debug!("{me} parked after event {cursor}");
        // BLOCKS: this thread sleeps on the hub's bell, holding the request, until
        // `Hub::publish` rings it (one `notify_all` for every parked thread), the deadline
        // passes, or (looked for once a second) the client has closed its connection.
        match subscription.wait_or_notice_leaving(|| request.client_left(), self.look, deadline) {
            Wake::Events(backlog) => {
                log::debug!("{me} woken by {} events", backlog.events.len());
                (request, backlog, cursor)
            }
            Wake::Other(ClientLeft) | Wake::OtherGone => {
                // The answer goes into a closed connection, harmlessly.
                self.departed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
    room: &WaitingRoom,
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
        return room.hold(lab, request, cursor, deadline, answer, counters.clone());
    }
    // ...or on this thread.
    let Some(held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        return Parking::Refused(request, HttpError::all_held(lab.config.max_parked));
    };
    Parking::Parked(ParkedRequest {
        request,
        subscription,
        deadline,
        look: lab.config.departures,
        departed: &lab.stats.departed,
        _held: held,
    })
}
