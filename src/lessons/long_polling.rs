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

use crate::connection::{request_label, Request, ResponseWriter};
use crate::http::{self, HttpError, Query};
use crate::hub::{Backlog, ClientLeft, Subscription, Wake};
use crate::lab::Lab;
use crate::lessons::events_answer;
use crate::stats::{Held, LessonCounters};
use crate::waiting_room::{Ended, HeldConnection, Pass, WaitingRoom, WriteDeadline};
use crate::ParkingMode;
use std::io::{self, Write};
use std::time::{Duration, Instant};

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("long_polling");
    answer(lab, room, request, query, AnswerForm::Json, &counters)
}

/// Steps 1–5 for an answer of `form` (the script-tag lesson's too).
pub fn answer(
    lab: &Lab,
    room: &WaitingRoom,
    request: Request,
    query: &Query,
    form: AnswerForm,
    counters: &LessonCounters,
) -> io::Result<()> {
    // 1–3. Read the input; answer at once if events are waiting, else park.
    let answer = Answer::new(form);
    match park(lab, room, request, query, answer.clone(), counters) {
        // 5. (Events were already waiting.)
        Parking::Ready(request, backlog, cursor) => {
            answer.write(request, &backlog, cursor, counters)
        }
        Parking::Parked(parked) => {
            // 4. BLOCKS until an event, the deadline, or the client closing its connection.
            let (request, backlog, cursor) = parked.wait_for_events();
            // 5.
            answer.write(request, &backlog, cursor, counters)
        }
        // `--parking queue`: the waiting room holds the request; this thread is done.
        Parking::Queued => Ok(()),
        Parking::Refused(request, error) => error.reply(request, counters),
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
        let (mut writer, wire, keep) = self.response(request, backlog, cursor, counters);
        // BLOCKS: while the socket's send buffer is full, up to --write-timeout.
        writer.write_all(&wire)?;
        counters.wrote(wire.len());
        if keep {
            writer.keep_alive();
        }
        Ok(())
    }

    /// The answer's bytes, the connection to send them on, and whether it then serves the
    /// client's next poll (`http::whole_response`).
    fn response(
        &self,
        request: Request,
        backlog: &Backlog,
        cursor: u64,
        counters: &LessonCounters,
    ) -> (ResponseWriter, Vec<u8>, bool) {
        counters.delivered(backlog.events.len());
        let answer = events_answer(backlog, cursor);
        log::debug!(
            "req-{} answered after {} ms",
            request.number(),
            self.arrived.elapsed().as_millis()
        );
        match &self.form {
            AnswerForm::Json => {
                let body = answer.to_string();
                http::whole_response(request, 200, "application/json", &[], body.as_bytes())
            }
            AnswerForm::Script(callback) => {
                let body = http::jsonp_body(callback, &answer);
                let nosniff = [("X-Content-Type-Options", "nosniff")];
                http::whole_response(request, 200, http::JAVASCRIPT, &nosniff, body.as_bytes())
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
    /// Handed to the waiting room (`--parking queue`, `HeldLongPoll`); it will answer.
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

    // 3. A place under the limit, then park...
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let Some(held) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
        return Parking::Refused(request, HttpError::all_held(lab.config.max_parked));
    };
    // ...in the waiting room (`--parking queue`), whose dispatcher answers it...
    if lab.config.parking == ParkingMode::Queue {
        drop(subscription); // the dispatcher's one subscription serves the whole room
        held.keep();
        log::debug!(
            "{} held in the waiting room after event {cursor}, its thread ends",
            request_label()
        );
        room.hold(Box::new(HeldLongPoll {
            request: Some(request),
            cursor,
            deadline,
            answer,
            counters: counters.clone(),
            sending: None,
            write_deadline: WriteDeadline::default(),
        }));
        return Parking::Queued;
    }
    // ...or on this thread.
    Parking::Parked(ParkedRequest {
        request,
        subscription,
        deadline,
        look: lab.config.departures,
        departed: &lab.stats.departed,
        _held: held,
    })
}

/// A long poll in the waiting room (`--parking queue`): held with no thread until an event
/// after its cursor, its deadline, or its client leaving; then the dispatcher offers its
/// answer to the socket without waiting, and once it is out the connection goes back to the
/// pool, where a thread reads the next poll.
struct HeldLongPoll {
    /// Until the answer is made (`None` once it is on its way, in `sending`).
    request: Option<Request>,
    cursor: u64,
    deadline: Instant,
    answer: Answer,
    counters: LessonCounters,
    sending: Option<Sending>,
    write_deadline: WriteDeadline,
}

/// An answer on its way: the connection, the bytes the socket has not taken, and whether the
/// connection then serves the next poll.
struct Sending {
    writer: ResponseWriter,
    unsent: Vec<u8>,
    keep: bool,
}

impl HeldConnection for HeldLongPoll {
    /// Steps 4 and 5 without a thread: answer when an event after the cursor is there, the
    /// deadline has passed, or the client has left; then send the answer.
    fn serve(&mut self, lab: &Lab, pass: &mut Pass) -> Result<(), Ended> {
        if let Some(request) = self.request.take() {
            let left = pass.look && request.client_left();
            let backlog = if left {
                lab.stats
                    .departed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::debug!("req-{} its client closed the connection", request.number());
                &Backlog::default()
            } else if self.cursor < pass.last {
                pass.since(lab, self.cursor)
            } else if pass.now >= self.deadline {
                &Backlog::default()
            } else {
                self.request = Some(request);
                return Ok(()); // still waiting
            };
            let (writer, unsent, keep) =
                (self.answer).response(request, backlog, self.cursor, &self.counters);
            self.sending = Some(Sending {
                writer,
                unsent,
                keep,
            });
        }
        self.send(lab, pass.now)
    }

    fn due(&self, now: Instant, last: u64) -> Instant {
        if self.sending.is_some() {
            now + crate::waiting_room::RETRY_UNSENT
        } else if self.cursor < last {
            now
        } else {
            self.deadline
        }
    }

    /// The lab is stopping: the answer (empty) if the socket takes it now; either way the
    /// connection closes.
    fn stop(mut self: Box<Self>, lab: &Lab) {
        lab.stats.let_go(&lab.stats.parked);
        if let Some(request) = self.request.take() {
            let empty = Backlog::default();
            let (mut writer, wire, _) =
                (self.answer).response(request, &empty, self.cursor, &self.counters);
            let _ = writer.write_without_waiting(&wire);
        }
    }
}

impl HeldLongPoll {
    /// Offer the answer to the socket: it takes what fits now. Out whole, the connection goes
    /// back to the pool (dropping the writer); not out within `--write-timeout`, it closes.
    fn send(&mut self, lab: &Lab, now: Instant) -> Result<(), Ended> {
        let Some(sending) = self.sending.as_mut() else {
            return Ok(());
        };
        match sending.writer.write_without_waiting(&sending.unsent) {
            Ok(n) => {
                self.counters.wrote(n);
                drop(sending.unsent.drain(..n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return self.ended(lab), // the client left: nothing else to undo
        }
        if sending.unsent.is_empty() {
            if sending.keep {
                sending.writer.keep_alive();
            }
            return self.ended(lab);
        }
        if self.write_deadline.overdue(true, lab, now) {
            log::info!(
                "a long poll dropped a slow consumer: its answer not out within --write-timeout"
            );
            return self.ended(lab);
        }
        Ok(())
    }

    /// Its place is given back; dropping it sends the connection home (`connection::Home`).
    fn ended(&self, lab: &Lab) -> Result<(), Ended> {
        lab.stats.let_go(&lab.stats.parked);
        Err(Ended)
    }
}
