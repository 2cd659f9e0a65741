//! # Multipart streaming (多部分流): one response, one MIME part per event.
//!
//! `multipart/x-mixed-replace` was made for webcams: each part replaces the one before. Comet
//! used it to stream events: the server writes a part per event, and old Firefox's
//! `xhr.multipart = true` fired `onload` once per part. That flag was Firefox-only and is
//! gone; here the page reads the same bytes with `fetch()` and a stream reader and splits the
//! parts itself.
//!
//! ```text
//! GET /events/multipart?since=4 HTTP/1.1
//! HTTP/1.1 200 OK
//! Content-Type: multipart/x-mixed-replace; boundary=lab-event
//! Transfer-Encoding: chunked
//!
//! --lab-event
//!   (time passes)
//! Content-Type: application/json
//!
//! {"data":"At ...","id":5}
//! --lab-event
//! ```
//!
//! 1. Read the cursor; the shared loop takes a place and subscribes.
//! 2. Prelude: the first boundary line.
//! 3. Each event: part headers, a blank line, the JSON, and the *next* boundary, all in one
//!    chunk, so the client knows the part is complete the moment it arrives.
//! 4. Heartbeats are parts too: `{"heartbeat":true}`.
//!
//! **What it costs**: about 50 bytes of part headers and boundary per event, one request per
//! connection, one held thread per client. The articles warn of buffering: a proxy (or a
//! server's own writer, see the buffering lesson) may hold parts back.
//!
//! **Try it**: `cargo run --example multipart_streaming`, open
//! <http://127.0.0.1:8080/lessons/multipart_streaming>, or
//! `curl -N 'http://127.0.0.1:8080/events/multipart?since=0'`.

use crate::connection::Request;
use crate::http::Query;
use crate::hub::Event;
use crate::lab::Lab;
use crate::stream::{self, Framing};
use crate::waiting_room::WaitingRoom;
use std::io;

/// The boundary between parts. It cannot appear in a part: the JSON is one line and escapes
/// nothing into `--lab-event` at a line start.
pub const BOUNDARY: &str = "lab-event";

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("multipart_streaming");
    // 1. The cursor.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let framing = Framing {
        content_type: "multipart/x-mixed-replace; boundary=lab-event",
        headers: &[],
        // 2. The first boundary.
        prelude: format!("--{BOUNDARY}\r\n"),
        frame,
        missed: |k| part(&format!("{{\"missed\":{k}}}")),
        heartbeat: "Content-Type: application/json\r\n\r\n{\"heartbeat\":true}\r\n--lab-event\r\n",
        unmarked: false,
    };
    // 4. From here this thread holds the response until the client leaves: it BLOCKS on its
    //    subscription in `stream::serve`, woken by each publish (write a frame) or by the
    //    heartbeat interval (write a heartbeat); the first failed write ends it.
    stream::serve(lab, room, request, since, None, &framing, &counters)
}

/// 3. One event as a whole part, closed by the next boundary.
pub fn frame(event: &Event) -> String {
    part(&event.to_json().to_string())
}

fn part(json: &str) -> String {
    format!("Content-Type: application/json\r\n\r\n{json}\r\n--{BOUNDARY}\r\n")
}
