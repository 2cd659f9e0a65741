//! # The buffering trap: a stream that streams nothing until it ends.
//!
//! The articles blame "buffering" for Comet's troubles: somewhere between the server's code
//! and the browser, bytes wait for more bytes. This lesson builds such a place on purpose, the
//! way it usually happens: the response goes through an 8 KiB `std::io::BufWriter`, which
//! sends its bytes only when it is full or flushed. (tiny_http, the lab's first HTTP layer,
//! did exactly this inside its streamed `Response`: that is how the lab found the trap.)
//! Small events sit in the buffer until the stream ends.
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
//! 2. Wrap the connection in a `BufWriter` of 8 KiB and write the head into it.
//! 3. Write each event's chunk frame into it as it comes, without `flush`, and after `count`
//!    events the last chunk and one `flush`: only now does anything reach the socket.
//!
//! The fix is what every other streaming lesson does (`crate::stream`): write each frame
//! straight to the socket, at once. `/events/stream` carries the same lines, each the moment
//! it is published.
//!
//! **What it costs**: here, all the latency: an event waits for the `count`-th one. In the
//! wild, the same trap hides in proxies (nginx's `proxy_buffering`), compression middleware,
//! and servlet containers' response buffers.
//!
//! **Try it**: `cargo run --example buffering`, open
//! <http://127.0.0.1:8080/lessons/buffering>, or run
//! `curl -N 'http://127.0.0.1:8080/events/buffered?count=3'` beside
//! `curl -N 'http://127.0.0.1:8080/events/stream'` and publish three events.

use crate::connection::Request;
use crate::http::{HttpError, Query};
use crate::lab::Lab;
use crate::lessons::fetch_streaming::ndjson_line;
use std::io::{self, BufWriter, Write};
use std::time::Instant;

/// The stream's head, written by hand: chunked, as a servlet's would be.
const HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\
                    Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\
                    Connection: close\r\n\r\n";

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
    // (HEAD: the head alone, at once; no stream to wait for.)
    if request.is_head() {
        request.into_writer().write_all(HEAD.as_bytes())?;
        counters.wrote(HEAD.len());
        return Ok(());
    }
    // 1. Subscribe.
    let (backlog, mut subscription) = lab.hub.subscribe(since);
    // Even this demonstration must not hold a thread forever.
    let deadline = Instant::now() + lab.config.long_poll_max;

    // 2. The trap: every byte goes into an 8 KiB buffer first.
    let mut out = BufWriter::with_capacity(8 * 1024, request.into_writer());
    out.write_all(HEAD.as_bytes())?;
    counters.wrote(HEAD.len());

    // 3. Each event's frame into the buffer, not onto the wire.
    let mut left = count;
    let mut batch = backlog.events;
    loop {
        for event in batch.iter().take(left as usize) {
            let line = ndjson_line(event);
            let frame = format!("{:x}\r\n{line}\r\n", line.len());
            out.write_all(frame.as_bytes())?; // no flush: the frame waits in the buffer
            counters.wrote(frame.len());
            counters.streamed(1);
            left -= 1;
        }
        if left == 0 {
            break;
        }
        // BLOCKS: until an event is published or the deadline passes.
        match subscription.wait_for_events(deadline) {
            Some(next) => batch = next.events,
            None => break,
        }
    }
    out.write_all(b"0\r\n\r\n")?;
    counters.wrote(5);
    // Only now does anything leave: the buffer is flushed once, at the end.
    out.flush()
}
