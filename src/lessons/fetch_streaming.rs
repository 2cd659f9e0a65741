//! # Fetch streaming: newline-delimited JSON read by `fetch()` as it arrives.
//!
//! What "XHR streaming" became: the page calls `fetch()`, takes `response.body.getReader()`,
//! and gets each chunk as the server flushes it. The format is the simplest there is: one JSON
//! event per line (`application/x-ndjson`).
//!
//! ```text
//! GET /events/stream?since=4 HTTP/1.1
//! HTTP/1.1 200 OK
//! Content-Type: application/x-ndjson
//! Transfer-Encoding: chunked
//!
//!   (time passes)
//! {"data":"At ...","id":5}
//! {"data":"two\nlines","id":6}        ← JSON escapes the newline: one event, one line
//!   (15 s of silence)
//!                                      ← a heartbeat: an empty line, skipped by readers
//! ```
//!
//! 1. Read the cursor; the shared loop takes a place and subscribes.
//! 2. No prelude.
//! 3. Each event: its JSON and `\n`, one chunk.
//! 4. Heartbeats: an empty line.
//!
//! **What it costs**: about 10 bytes of chunk framing around each event (the lightest HTTP
//! stream here), one request per connection, one held thread per client. The page must
//! reconnect itself (with `since`) when the stream breaks; SSE does that for you.
//!
//! **Try it**: `cargo run --example fetch_streaming`, open
//! <http://127.0.0.1:8080/lessons/fetch_streaming>, or
//! `curl -N 'http://127.0.0.1:8080/events/stream?since=0'`.

use crate::connection::Request;
use crate::http::Query;
use crate::hub::Event;
use crate::lab::Lab;
use crate::stream::{self, Framing};
use crate::waiting_room::WaitingRoom;
use std::io;

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("fetch_streaming");
    // 1. The cursor.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let framing = Framing {
        content_type: "application/x-ndjson",
        headers: &[],
        prelude: String::new(),
        frame: ndjson_line,
        missed: |k| format!("{{\"missed\":{k}}}\n"),
        heartbeat: "\n",
        unmarked: false,
    };
    // 4. From here this thread holds the response until the client leaves: it BLOCKS on its
    //    subscription in `stream::serve`, woken by each publish (write a frame) or by the
    //    heartbeat interval (write a heartbeat); the first failed write ends it.
    stream::serve(lab, room, request, since, None, &framing, &counters)
}

/// 3. One event, one line.
pub fn ndjson_line(event: &Event) -> String {
    format!("{}\n", event.to_json())
}
