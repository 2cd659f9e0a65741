//! # The buffering trap: a stream that streams nothing until it ends.
//!
//! The articles blame "buffering" for Comet's troubles: somewhere between the server's code
//! and the browser, bytes wait for more bytes. This lab has such a place of its own. tiny_http's
//! streamed `Response` copies the body through a chunk encoder with an 8 KiB buffer that is
//! flushed only when full or at the end, behind a 1 KiB `BufWriter` for the headers. Small
//! events sit there until the stream ends.
//!
//! ```text
//! GET /events/buffered?count=3 HTTP/1.1
//!   (event 5 is published: nothing arrives, not even the headers)
//!   (event 6 is published: nothing arrives)
//!   (event 7 is published: the body ends, and everything arrives at once)
//! HTTP/1.1 200 OK
//! Transfer-Encoding: chunked
//!
//! {"id":5,...}\n{"id":6,...}\n{"id":7,...}\n
//! ```
//!
//! 1. Subscribe at the cursor.
//! 2. Give tiny_http a `Response` whose body is an `EventReader`: a `Read` that blocks on the
//!    subscription and yields one NDJSON line per event, and ends after `count` events.
//! 3. `Request::respond` copies the reader into the socket, through the buffers.
//!
//! The fix is what every other streaming lesson does (`crate::stream`): take the socket with
//! `Request::into_writer`, write the chunk frames by hand, and flush after each event.
//! `/events/stream` carries the same lines, each the moment it is published.
//!
//! **What it costs**: here, all the latency: an event waits for the `count`-th one. In the
//! wild, the same trap hides in proxies (nginx's `proxy_buffering`), compression middleware,
//! and servlet containers' response buffers.
//!
//! **Try it**: `cargo run --example buffering`, open
//! <http://127.0.0.1:8080/lessons/buffering>, or run
//! `curl -N 'http://127.0.0.1:8080/events/buffered?count=3'` beside
//! `curl -N 'http://127.0.0.1:8080/events/stream'` and publish three events.

use crate::http::{HttpError, Query};
use crate::hub::Subscription;
use crate::lab::Lab;
use crate::lessons::fetch_streaming::ndjson_line;
use crate::stats::LessonCounters;
use std::io::{self, Read};
use std::time::Instant;
use tiny_http::{Header, Request, Response, StatusCode};

pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("buffering");
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let count = match query.number("count", 5, 1, 100) {
        Ok(count) => count,
        Err(e) => return e.reply(request, &counters),
    };
    let Some(_held) = lab
        .stats
        .try_hold(&lab.stats.streams, lab.config.max_parked)
    else {
        return HttpError::all_held(lab.config.max_parked).reply(request, &counters);
    };
    // 1. Subscribe.
    let (backlog, subscription) = lab.hub.subscribe(since);
    let mut pending: Vec<u8> = Vec::new();
    for event in &backlog.events {
        pending.extend(ndjson_line(event).into_bytes());
    }
    // 2. A body that blocks on the subscription.
    let reader = EventReader {
        subscription,
        left: count.saturating_sub(backlog.events.len() as u64),
        pending,
        counters: counters.clone(),
        deadline: Instant::now() + lab.config.long_poll_max,
    };
    let content_type = Header::from_bytes("Content-Type", "application/x-ndjson").expect("valid");
    let response = Response::new(StatusCode(200), vec![content_type], reader, None, None);
    // 3. tiny_http copies it through its buffers. BLOCKS until the reader ends.
    request.respond(response)
}

/// A `Read` over a subscription: one NDJSON line per event, `count` events, then the end.
struct EventReader {
    subscription: Subscription,
    left: u64,
    pending: Vec<u8>,
    counters: LessonCounters,
    /// Even this demonstration must not hold a thread forever.
    deadline: Instant,
}

impl Read for EventReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            if self.left == 0 {
                return Ok(0); // the end: only now will tiny_http flush
            }
            // BLOCKS: until an event is published or the deadline passes.
            let Some(batch) = self.subscription.wait_for_events(self.deadline) else {
                return Ok(0);
            };
            for event in batch.events.iter().take(self.left as usize) {
                self.pending.extend(ndjson_line(event).into_bytes());
                self.left -= 1;
                self.counters.streamed(1);
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.counters.wrote(n);
        Ok(n)
    }
}
