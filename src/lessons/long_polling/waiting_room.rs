//! The second way to park a long poll: the servlet's `AsyncContext` idea, a request held in a
//! list instead of by a sleeping thread.
//!
//! With `--parking thread` (the default), each parked long poll keeps its connection's thread
//! asleep on its own subscription: easy to read, one thread per waiting client. With
//! `--parking queue`, the handler puts the request (and with it the connection) in the
//! `WaitingRoom` and its thread goes back to the pool; one `dispatcher` thread, subscribed
//! once, answers every waiting request when an event comes and every expired one at its
//! deadline. An answered connection goes back to the pool, where a thread reads its next
//! request.
//!
//! ```text
//! req-9:       GET /events/long-poll?since=4 → nothing waiting → into the room → thread free
//! req-10:      GET /events/long-poll?since=4 → into the room → thread free
//!   (time passes: two requests held, zero threads)
//! dispatcher:  event 5 → takes both out of the room → writes two answers
//!              → both connections back to the pool, to read their next polls
//! ```
//!
//! 1. `hold` (on the handler's thread): under the room's lock, check again whether an event
//!    came after the cursor (it may have been published, and dispatched, since the handler
//!    looked); if so answer now, else add the request to the room.
//! 2. `dispatch` (the `dispatcher` thread): sleep on the one subscription, the room's "new
//!    request" channel, and the earliest deadline (a second at most while anyone waits);
//!    then answer what can be answered, and answer at once (empty, as at the deadline) the
//!    requests whose client closed its connection (`Request::client_left`, looked at once a
//!    second).
//!
//! **What it costs**: no thread per waiting client, so the ceiling moves from threads (memory
//! mappings, pid_max) to file descriptors. (A connection between requests, idle keep-alive,
//! still has its thread, reading; an event loop (epoll) would hold those without threads too.)
//! Every answer is written by one thread, one after the other: fine for small answers into
//! fresh sockets, but one client whose socket buffer is full would stall the rest (a real
//! server would write without blocking).

use super::{Answer, Parking};
use crate::connection::Request;
use crate::http::HttpError;
use crate::hub::{Either, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crossbeam_channel::{unbounded, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests held without a thread, and the channel that tells the dispatcher one arrived.
pub struct WaitingRoom {
    waiting: Mutex<Vec<Waiting>>,
    arrived: Sender<()>,
    arrivals: Receiver<()>,
}

/// One held request: what it asked for and how to answer it.
struct Waiting {
    request: Request,
    cursor: u64,
    deadline: Instant,
    answer: Answer,
    counters: LessonCounters,
    /// Look at the socket for a client that left (`--departures on`).
    look: bool,
}

impl Waiting {
    fn client_left(&self) -> bool {
        self.look && self.request.client_left()
    }
}

impl Default for WaitingRoom {
    fn default() -> WaitingRoom {
        let (arrived, arrivals) = unbounded();
        WaitingRoom {
            waiting: Mutex::new(Vec::new()),
            arrived,
            arrivals,
        }
    }
}

impl WaitingRoom {
    /// Step 1: hold the request (`Parking::Queued`), or answer it now if an event slipped in
    /// (also `Queued`: nothing is left for the handler to do). The request comes back with a
    /// 503 when `--max-parked` requests are held already.
    pub fn hold(
        &self,
        lab: &Lab,
        request: Request,
        cursor: u64,
        deadline: Instant,
        answer: Answer,
        counters: LessonCounters,
    ) -> Parking<'static> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if lab.hub.last_id() > cursor {
            drop(waiting);
            let _ = answer.write(request, &lab.hub.since(cursor), cursor, &counters);
            return Parking::Queued;
        }
        // A place under `--max-parked`, beside every stream and WebSocket: kept while the
        // request waits here, given back by `answer_and_leave`.
        let Some(place) = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked) else {
            return Parking::Refused(request, HttpError::all_held(lab.config.max_parked));
        };
        place.keep();
        waiting.push(Waiting {
            request,
            cursor,
            deadline,
            answer,
            counters,
            look: lab.config.departures,
        });
        drop(waiting);
        let _ = self.arrived.send(());
        log::debug!("request after event {cursor} held in the waiting room, its thread ends");
        Parking::Queued
    }

    /// Take out the requests `leaving` selects.
    fn take(&self, leaving: impl Fn(&Waiting) -> bool) -> Vec<Waiting> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let (gone, stay) = waiting.drain(..).partition(|w| leaving(w));
        *waiting = stay;
        gone
    }

    /// The earliest deadline in the room, but a second from now at most while anyone waits,
    /// to look for clients that left (`Waiting::client_left`).
    fn earliest_deadline(&self) -> Instant {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let far = Instant::now() + Duration::from_secs(3600);
        let look_again = Instant::now() + Duration::from_secs(1);
        let earliest = waiting.iter().map(|w| w.deadline).min();
        earliest.map_or(far, |deadline| deadline.min(look_again))
    }
}

/// Step 2: the `dispatcher` thread, started by the server in `--parking queue` mode.
pub fn dispatch(lab: Arc<Lab>, room: Arc<WaitingRoom>) {
    let (_, mut subscription) = lab.hub.subscribe_with_channel(lab.hub.last_id());
    let stop = lab.shutdown.line();
    loop {
        let deadline = room.earliest_deadline();
        // BLOCKS: until an event is published, a request arrives, a deadline passes, or the
        // lab stops.
        match subscription.wait_for_events_or_either(&room.arrivals, &stop, deadline) {
            Wake::Other(Either::Second(())) | Wake::OtherGone => {
                // The lab is stopping: every request still waiting is answered, empty.
                for waiting in room.take(|_| true) {
                    answer_and_leave(&lab, waiting, Default::default());
                }
                log::debug!("dispatcher ended: the lab is stopping");
                return;
            }
            Wake::Events(_) => {
                let last = lab.hub.last_id();
                let ready = room.take(|w| w.cursor < last);
                log::debug!("dispatcher: event {last} → {} held requests", ready.len());
                for waiting in ready {
                    let backlog = lab.hub.since(waiting.cursor);
                    answer_and_leave(&lab, waiting, backlog);
                }
            }
            Wake::Other(Either::First(())) => {} // a new arrival: look at the deadlines again
            Wake::Deadline => {
                let now = Instant::now();
                // Expired, or its client closed the connection: answered empty (the second
                // into a closed connection, harmlessly).
                for waiting in room.take(|w| w.deadline <= now || w.client_left()) {
                    if waiting.deadline > now {
                        lab.stats
                            .departed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    answer_and_leave(&lab, waiting, Default::default());
                }
            }
        }
    }
}

fn answer_and_leave(lab: &Lab, waiting: Waiting, backlog: crate::hub::Backlog) {
    lab.stats.let_go(&lab.stats.parked);
    let Waiting {
        request,
        cursor,
        answer,
        counters,
        ..
    } = waiting;
    // A client that left makes this write fail (or vanish): nothing else to undo. Written,
    // the connection goes back to the pool (`connection::Home`) to read the next request.
    let _ = answer.write(request, &backlog, cursor, &counters);
}
