//! The loop every streaming lesson shares: hold one response open and write each event into
//! it the moment it is published. The lessons differ only in their `Framing`: what goes on
//! the wire before the first event, around each event, and as a heartbeat.
//!
//! ```text
//! GET /events/stream?since=4
//! HTTP/1.1 200 OK
//! Transfer-Encoding: chunked
//!
//! 2c\r\n{"data":"At ...","id":5}\n\r\n      ← one chunk per event, written at once
//!   (time passes: the thread is parked on the hub's bell)
//! 1\r\n\n\r\n                                 ← a heartbeat after 15 s of silence
//! ```
//!
//! 1. Take a place under `--max-parked` (or 503), subscribe at the cursor.
//! 2. Take the connection (`Request::into_writer`) and write the head and the prelude.
//! 3. Write the backlog: events the client missed since its cursor.
//! 4. Park on the subscription until an event (write it) or the heartbeat interval (write a
//!    heartbeat). Both writes test the socket: the first one that fails means the client has
//!    gone, and returning drops the subscription and the place. A client that closes its
//!    connection is noticed sooner: the parked thread looks at its socket once a second
//!    (`ChunkedStream::client_left`), instead of waiting for the second heartbeat after it
//!    left (the first write into a closed connection still succeeds; the reset comes back).
//!
//! With `--parking queue`, step 4 is the waiting room's: after step 3 the stream goes there
//! as a `HeldStream` (its place kept, its subscription dropped) and this thread goes back to
//! the pool; the room's one dispatcher writes its events and heartbeats without waiting on
//! its socket (`waiting_room`).

use crate::connection::request_label;
use crate::connection::Request;
use crate::http::{ChunkedStream, HttpError};
use crate::hub::ClientLeft;
use crate::hub::{Event, Wake};
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::waiting_room::{Ended, HeldConnection, Pass, WaitingRoom, WriteDeadline, MOST_PER_PASS};
use crate::ParkingMode;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// How one streaming lesson puts events on the wire.
pub struct Framing {
    pub content_type: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    /// Written once, before any event (padding, `retry:`, a multipart boundary...).
    pub prelude: String,
    /// One event's bytes.
    pub frame: fn(&Event) -> String,
    /// "The ring no longer holds `k` of the events you asked for".
    pub missed: fn(u64) -> String,
    /// Written after a heartbeat interval with no event.
    pub heartbeat: &'static str,
    /// Without the `X-Accel-Buffering: no` that tells a proxy not to collect the stream
    /// (`ChunkedStream::start_unmarked`): only the behind_a_proxy lesson, to show why.
    pub unmarked: bool,
}

/// Serve a stream from `since` until the client leaves (or, with `close_after`, until that
/// many events have been written: SSE uses it to show the browser reconnecting). Returns `Ok`
/// when the client has gone (the expected ending), `Err` only for a fault worth a warning.
pub fn serve(
    lab: &Lab,
    room: &WaitingRoom,
    request: Request,
    since: u64,
    close_after: Option<u64>,
    framing: &Framing,
    counters: &LessonCounters,
) -> io::Result<()> {
    // 1. A place, and a subscription from the cursor.
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.streams, lab.config.max_parked)
    else {
        let error = HttpError::all_held(lab.config.max_parked);
        return error.reply(request, counters);
    };
    let (backlog, mut subscription) = lab.hub.subscribe(since);
    let me = request_label();

    // 2. The head and the prelude.
    let start = match framing.unmarked {
        false => ChunkedStream::start,
        true => ChunkedStream::start_unmarked,
    };
    let mut stream = start(request, framing.content_type, framing.headers, counters)?;
    stream.write_chunk(framing.prelude.as_bytes())?;
    log::debug!("{me} streaming from event {since}");

    // 3. The backlog.
    if backlog.missed > 0 {
        stream.write_chunk((framing.missed)(backlog.missed).as_bytes())?;
    }
    // With `close_after`, never more than that many events: the client resumes after the
    // last one it got, from its cursor, and the rest come on the next connection.
    let budget = |written: u64| {
        close_after.map_or(usize::MAX, |limit| limit.saturating_sub(written) as usize)
    };
    let mut written_events = 0;
    let first = &backlog.events[..backlog.events.len().min(budget(0))];
    written_events += first.len() as u64;
    write_events(&mut stream, first, framing, counters)?;

    // `--parking queue`: the stream is held without this thread from here on
    // (`waiting_room`), unless it is to end after a few events (`close_after`).
    if lab.config.parking == ParkingMode::Queue && close_after.is_none() {
        let cursor = subscription.cursor();
        drop(subscription); // the dispatcher's one subscription serves every held stream
        _held.keep();
        let number = crate::connection::request_number();
        log::debug!("{me} stream held after event {cursor}, its thread ends");
        room.hold(Box::new(HeldStream {
            stream,
            cursor,
            frame: framing.frame,
            missed: framing.missed,
            heartbeat: framing.heartbeat,
            counters: counters.clone(),
            number,
            unsent: Vec::new(),
            deadline: WriteDeadline::default(),
            next_heartbeat: Instant::now()
                + crate::waiting_room::out_of_phase(lab.config.heartbeat, number),
        }));
        return Ok(());
    }

    // 4. Park, write, repeat.
    loop {
        if close_after.is_some_and(|limit| written_events >= limit) {
            log::debug!("{me} closing after {written_events} events, as asked");
            return stream.finish();
        }
        let wake_at = Instant::now() + crate::connection::out_of_phase(lab.config.heartbeat);
        // BLOCKS: on the hub's bell, until `Hub::publish` rings it, the heartbeat is due, or
        // the client closes its connection (looked for once a second).
        let look = lab.config.departures;
        // (A look also sees the lab stopping: the stream then ends whole, below.)
        let left = || lab.shutdown.is_stopping() || stream.client_left();
        let woke = subscription.wait_or_notice_leaving(left, look, wake_at);
        if lab.shutdown.is_stopping() {
            // The lab stops: the stream ends as a stream should (its last chunk), so the client
            // sees it end rather than break, and comes back to the next lab with its cursor.
            log::debug!("{me} ended: the lab is stopping");
            return stream.finish();
        }
        let written = match woke {
            Wake::Other(ClientLeft) | Wake::OtherGone => {
                lab.stats
                    .departed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::debug!(
                    "{me} its client closed the connection after event {}",
                    subscription.cursor()
                );
                return Ok(());
            }
            Wake::Events(batch) => {
                let events = &batch.events[..batch.events.len().min(budget(written_events))];
                written_events += events.len() as u64;
                if batch.missed > 0 {
                    stream.write_chunk((framing.missed)(batch.missed).as_bytes())?;
                }
                write_events(&mut stream, events, framing, counters)
            }
            Wake::Deadline => stream.write_chunk(framing.heartbeat.as_bytes()),
        };
        if let Err(e) = written {
            // The client left, or stopped reading: the write failed (at once, or after
            // `--write-timeout` with the socket's buffers full). Returning frees the thread,
            // the subscription and the place.
            if crate::http::is_write_timeout(&e) {
                lab.stats
                    .slow_consumers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::info!("{me} dropped a slow consumer: no progress for --write-timeout");
            } else {
                log::debug!("{me} gone after event {}: {e}", subscription.cursor());
            }
            return Ok(());
        }
    }
}

/// One chunk per event, and the whole batch in one write: every event in it has already
/// arrived, so none waits for another, and a thread that woke late for several events pays
/// one system call for them all.
fn write_events(
    stream: &mut ChunkedStream,
    events: &[std::sync::Arc<Event>],
    framing: &Framing,
    counters: &LessonCounters,
) -> io::Result<()> {
    let frames: Vec<String> = events.iter().map(|event| (framing.frame)(event)).collect();
    stream.write_chunks(frames.iter().map(String::as_bytes))?;
    counters.streamed(events.len());
    Ok(())
}

/// A stream held without a thread (`--parking queue`, `waiting_room`): the response, how far it has
/// gone, how it frames an event.
struct HeldStream {
    stream: ChunkedStream,
    /// The last event written (or offered to the socket).
    cursor: u64,
    frame: fn(&Event) -> String,
    missed: fn(u64) -> String,
    heartbeat: &'static str,
    counters: LessonCounters,
    /// The request's number, for the logs (`req-N`).
    number: u64,
    /// Bytes the socket has not taken yet: they go before anything else.
    unsent: Vec<u8>,
    deadline: WriteDeadline,
    next_heartbeat: Instant,
}

impl HeldConnection for HeldStream {
    /// Step 4 without a thread: the rest of the last write, else the events after the cursor,
    /// else a heartbeat when one is due.
    fn serve(&mut self, lab: &Lab, pass: &mut Pass) -> Result<(), Ended> {
        if pass.look && self.stream.client_left() {
            lab.stats.departed.fetch_add(1, Relaxed);
            return self.ended(lab, "its client closed the connection");
        }
        if !self.unsent.is_empty() {
            self.send(lab, pass.now)?;
            if !self.unsent.is_empty() {
                return Ok(()); // still full: the next events wait in the ring
            }
        }
        if self.cursor < pass.last {
            let backlog = pass.since(lab, self.cursor);
            let mut chunks = Vec::new();
            if backlog.missed > 0 {
                chunks.push((self.missed)(backlog.missed));
                self.cursor += backlog.missed;
            }
            let mut size = 0;
            for event in &backlog.events {
                if size >= MOST_PER_PASS {
                    break; // the rest on a later pass
                }
                chunks.push((self.frame)(event));
                size += chunks.last().map_or(0, String::len);
                self.cursor = event.id;
                self.counters.streamed(1);
            }
            self.unsent = self.stream.frames(chunks.iter().map(String::as_bytes));
        } else if pass.now >= self.next_heartbeat {
            self.unsent = self.stream.frames([self.heartbeat.as_bytes()]);
        } else {
            return Ok(());
        }
        self.next_heartbeat =
            pass.now + crate::waiting_room::out_of_phase(lab.config.heartbeat, self.number);
        self.send(lab, pass.now)
    }

    fn due(&self, now: Instant, last: u64) -> Instant {
        if !self.unsent.is_empty() {
            now + crate::waiting_room::RETRY_UNSENT
        } else if self.cursor < last {
            now // more than one pass's worth was waiting: the rest now
        } else {
            self.next_heartbeat
        }
    }

    /// The last chunk, if the socket takes it now.
    fn stop(self: Box<Self>, lab: &Lab) {
        lab.stats.let_go(&lab.stats.streams);
        self.stream.finish_without_waiting();
    }
}

impl HeldStream {
    /// Offer `unsent` to the socket: it takes what fits now, never waiting.
    fn send(&mut self, lab: &Lab, now: Instant) -> Result<(), Ended> {
        match self.stream.write_without_waiting(&self.unsent) {
            Ok(n) => drop(self.unsent.drain(..n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return self.ended(lab, &format!("gone: {e}")),
        }
        if self.deadline.overdue(!self.unsent.is_empty(), lab, now) {
            log::info!(
                "req-{} dropped a slow consumer: a write not done within --write-timeout",
                self.number
            );
            return self.ended(lab, "a slow consumer");
        }
        Ok(())
    }

    /// The stream has ended: its place is given back; dropping it closes the connection.
    fn ended(&self, lab: &Lab, why: &str) -> Result<(), Ended> {
        lab.stats.let_go(&lab.stats.streams);
        log::debug!("req-{} {why} after event {}", self.number, self.cursor);
        Err(Ended)
    }
}
