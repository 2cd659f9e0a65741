//! The waiting room (`--parking queue`): the servlet's `AsyncContext` idea, a held request
//! kept in a list instead of by a sleeping thread. Long polls wait here for an event; streams
//! and WebSockets, once their head (or `101`) and backlog are out, are held here between
//! events. One `dispatcher` thread serves them all, and never waits on a socket.
//!
//! ```text
//! req-9:       GET /events/long-poll?since=4 → nothing yet → into the room, its thread free
//! req-10:      GET /events/sse → head, backlog → into the room, its thread free
//! ws 11:       GET /events/ws → 101, backlog → into the room, its thread free
//!   (time passes: three clients held, no thread each)
//! dispatcher:  event 5 → req-9's answer, a chunk for req-10, a frame for ws 11, each
//!              written without waiting; req-9's connection back to the pool, for its
//!              next poll
//!   (time passes: ws 11's client stops reading; its socket's buffers fill up)
//! dispatcher:  event 9 → req-10 takes it; ws 11's socket takes half: the rest waits with
//!              it, and its next events wait in the hub's ring, behind its cursor
//!   (--write-timeout passes, ws 11's client still reads nothing)
//! dispatcher:  ws 11 dropped, a slow consumer; nobody waited for it
//! ```
//!
//! 1. `WaitingRoom::hold` (on the handler's thread): hand the connection over with its place
//!    under `--max-parked`, and ring the dispatcher. The thread goes back to the pool.
//! 2. `dispatch` (the `dispatcher` thread): sleep on one subscription to the hub, the
//!    doorbell (a connection arrived, or the socket watcher saw a held WebSocket's client send
//!    something), and the next due time (a deadline, a heartbeat, a look, a write to retry);
//!    then serve every held connection in turn (`HeldConnection::serve`:
//!    `lessons::long_polling`'s `HeldLongPoll`, `stream`'s `HeldStream`,
//!    `lessons::websocket`'s `HeldWebSocket`).
//! 3. A write offers the socket what it takes now (`connection::send_without_waiting`). What
//!    it does not take stays with the connection and goes first next time; meanwhile its
//!    new events wait in the ring, so it keeps `MOST_PER_PASS` bytes waiting at most.
//! 4. The endings: an answered long poll's connection goes back to the pool, to read the
//!    next poll; the others end as their protocol says; and for all, a client that closed
//!    its connection (looked for once a second), bytes the socket did not take within
//!    `--write-timeout` (a slow consumer, `WriteDeadline`), and the lab stopping.
//!
//! **What it costs**: no thread for a held client (its socket and what it keeps, a few hundred
//! bytes to a few KiB, and the kernel's buffers), so the ceiling moves from threads to file
//! descriptors. One thread writes everything, one `send` per client per event: the last of
//! ten thousand gets its event after the other 9,999 sends. A client that stops reading costs
//! the others nothing, since no write here waits. A held WebSocket's messages are published by
//! the dispatcher too: with `--redis` each publish waits for Redis's answer, and every held
//! client waits with it. A connection between two long polls (idle keep-alive) still has a
//! thread, reading: an event loop (epoll) would hold those without threads too.

use crate::hub::{Backlog, Either, Wake};
use crate::lab::Lab;
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the dispatcher looks at every held connection's socket for a client that left
/// (`--departures on`), as a parked thread does.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The most bytes of events a held connection is given in one pass (at least one event):
/// what a client that stops reading keeps waiting in memory, at most. The rest stays in the
/// hub's ring, behind its cursor.
pub const MOST_PER_PASS: usize = 64 * 1024;

/// How soon bytes a socket did not take are offered again.
pub const RETRY_UNSENT: Duration = Duration::from_millis(50);

/// A connection the dispatcher serves: a long poll, a stream, a WebSocket.
pub trait HeldConnection: Send {
    /// Step 3: what is due now (the rest of the last write, a long poll's answer, the events
    /// after its cursor, a heartbeat). `Err(Ended)` once it has ended (counted and logged): the dispatcher drops
    /// it, which closes it. Never blocks.
    fn serve(&mut self, lab: &Lab, pass: &mut Pass) -> Result<(), Ended>;

    /// When it next needs the dispatcher, unless an event or its client comes first (`last`:
    /// the newest event's id).
    fn due(&self, now: Instant, last: u64) -> Instant;

    /// After `serve` said `Ended`: what is left to do, on a thread of its own if it must wait
    /// (a WebSocket's close handshake). By default nothing: dropping it closes it.
    fn end(self: Box<Self>, _lab: &Arc<Lab>) {}

    /// The lab is stopping: end as its protocol says (a last chunk, close 1001), without
    /// waiting on the client.
    fn stop(self: Box<Self>, lab: &Lab);
}

/// A held connection has ended; dropping it closes it.
pub struct Ended;

/// One pass over every held connection: its time, whether to look for clients that left, and
/// each cursor's backlog, read once (most connections share one, and the hub's lock is
/// taken once for them all).
pub struct Pass {
    pub now: Instant,
    /// The newest event's id as the pass began (the hub's lock taken once, not per client).
    pub last: u64,
    pub look: bool,
    backlogs: HashMap<u64, Backlog>,
}

impl Pass {
    /// The events after `cursor` (and what the ring no longer holds).
    pub fn since(&mut self, lab: &Lab, cursor: u64) -> &Backlog {
        self.backlogs
            .entry(cursor)
            .or_insert_with(|| lab.hub.since(cursor))
    }
}

/// When a write that the socket did not take whole began: it must end within
/// `--write-timeout`, however many pieces the socket takes it in.
#[derive(Default)]
pub struct WriteDeadline(Option<Instant>);

impl WriteDeadline {
    /// After an offer to the socket: are bytes still waiting whose write began
    /// `--write-timeout` ago or more? Then the client is a slow consumer (counted here).
    pub fn overdue(&mut self, waiting: bool, lab: &Lab, now: Instant) -> bool {
        if !waiting {
            self.0 = None;
            return false;
        }
        let began = *self.0.get_or_insert(now);
        let overdue = now.duration_since(began) >= lab.config.write_timeout;
        if overdue {
            lab.stats.slow_consumers.fetch_add(1, Relaxed);
        }
        overdue
    }

    pub fn waiting(&self) -> bool {
        self.0.is_some()
    }
}

/// `every`, plus up to a quarter more chosen by the connection's number: ten thousand
/// connections held at once do not all fall due for a heartbeat at the same instant.
pub fn out_of_phase(every: Duration, number: u64) -> Duration {
    let share = number.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    every + every / 4 * share as u32 / 1024
}

/// Connections handed over and not yet taken by the dispatcher, and its doorbell.
pub struct WaitingRoom {
    arriving: Mutex<Vec<Box<dyn HeldConnection>>>,
    doorbell: Sender<()>,
    rings: Receiver<()>,
}

impl Default for WaitingRoom {
    fn default() -> WaitingRoom {
        let (doorbell, rings) = bounded(1);
        WaitingRoom {
            arriving: Mutex::new(Vec::new()),
            doorbell,
            rings,
        }
    }
}

impl WaitingRoom {
    /// Step 1: hold `connection` (its place under `--max-parked` already taken, and kept
    /// until it ends: `Stats::let_go`). Its thread is free once this returns.
    pub fn hold(&self, connection: Box<dyn HeldConnection>) {
        self.arriving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(connection);
        let _ = self.doorbell.try_send(()); // (a ring already waiting says the same)
    }

    /// The doorbell, for whatever else wakes the dispatcher (the socket watcher's notice for
    /// a held WebSocket): ring it with `try_send`, which never blocks.
    pub fn doorbell(&self) -> Sender<()> {
        self.doorbell.clone()
    }

    fn take_arrivals(&self) -> Vec<Box<dyn HeldConnection>> {
        std::mem::take(&mut *self.arriving.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Step 2: the `dispatcher` thread, started by the server with `--parking queue`.
pub fn dispatch(lab: Arc<Lab>, room: Arc<WaitingRoom>) {
    let (_, mut subscription) = lab.hub.subscribe_with_channel(lab.hub.last_id());
    let stop = lab.shutdown.line();
    let mut held: Vec<Box<dyn HeldConnection>> = Vec::new();
    let mut next_look = Instant::now() + LOOK_EVERY;
    loop {
        let (now, last) = (Instant::now(), lab.hub.last_id());
        let wake_at = held
            .iter()
            .map(|connection| connection.due(now, last))
            .fold(next_look, Instant::min);
        // BLOCKS: until an event is published, the doorbell rings (a connection arrived, a
        // held WebSocket's client sent something), something held falls due, or the lab
        // stops.
        let woke = subscription.wait_for_events_or_either(&room.rings, &stop, wake_at);
        if matches!(woke, Wake::Other(Either::Second(())) | Wake::OtherGone) {
            for connection in held.drain(..).chain(room.take_arrivals()) {
                connection.stop(&lab);
            }
            log::debug!("dispatcher ended: the lab is stopping");
            return;
        }
        held.extend(room.take_arrivals());
        let now = Instant::now();
        let look_due = now >= next_look;
        if look_due {
            next_look = now + LOOK_EVERY;
        }
        let mut pass = Pass {
            now,
            last: lab.hub.last_id(),
            look: look_due && lab.config.departures,
            backlogs: HashMap::new(),
        };
        // In place: an ended connection's slot takes the last one (the order does not matter,
        // and ten thousand need no new list each pass).
        let mut i = 0;
        while i < held.len() {
            match held[i].serve(&lab, &mut pass) {
                Ok(()) => i += 1,
                Err(Ended) => held.swap_remove(i).end(&lab),
            }
        }
    }
}
