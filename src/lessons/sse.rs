//! # Server-Sent Events: the standard stream, with reconnection built into the browser.
//!
//! `new EventSource(url)` opens a `text/event-stream` response and fires one `message` event
//! per block. When the connection breaks, the browser reconnects by itself after `retry:` ms
//! and sends `Last-Event-ID` with the last id it saw, so the server can resume exactly there.
//!
//! ```text
//! GET /events/sse?since=4 HTTP/1.1
//! Accept: text/event-stream
//!
//! HTTP/1.1 200 OK
//! Content-Type: text/event-stream
//! Cache-Control: no-cache
//! X-Accel-Buffering: no
//! Transfer-Encoding: chunked
//!
//! retry: 2000
//! : stream open              ← a comment: EventSource ignores it; curl shows you it's live
//!
//!   (time passes)
//! id: 5
//! data: At ...
//!
//! id: 6
//! data: two
//! data: lines                ← one data: line per line of the event
//!
//! : heartbeat                ← a comment, ignored by EventSource
//!   (the connection breaks; 2 s later the browser sends)
//! GET /events/sse?since=4 HTTP/1.1
//! Last-Event-ID: 6           ← wins over since: resume after 6
//! ```
//!
//! 1. The cursor: `Last-Event-ID` if the browser sent one (a reconnect), else `since`, else
//!    now. Both are validated.
//! 2. Prelude: `retry: 2000` (the reconnect delay) and a `: stream open` comment. The comment
//!    opens nothing (EventSource fires `open` on the response head); it tells a human with
//!    curl that the stream is live before the first event.
//! 3. Each event: `id:`, one `data:` per line (CR, LF and CRLF all end lines in SSE), and a
//!    blank line. Clients that resume from too far back get `event: missed` with the count.
//! 4. Heartbeats: a `: heartbeat` comment.
//!
//! `close_after=N` ends the stream after N events, so a class can watch `EventSource`
//! reconnect and resume from `Last-Event-ID` without a gap.
//!
//! **What it costs**: about 15 bytes of framing per event plus the chunk framing, one request
//! per connection, one held thread per client; reconnection and resume for free. Text only,
//! server to client only; browsers allow about six HTTP/1.1 connections per host, so many tabs
//! of one site share that budget (HTTP/2 lifts it). `X-Accel-Buffering: no` asks nginx-style
//! proxies not to buffer.
//!
//! **Try it**: `cargo run --example sse`, open <http://127.0.0.1:8080/lessons/sse>, or
//! `curl -N 'http://127.0.0.1:8080/events/sse?since=0'`, or
//! `curl -N -H 'Last-Event-ID: 3' http://127.0.0.1:8080/events/sse`.

use crate::connection::Request;
use crate::http::{self, Query};
use crate::hub::Event;
use crate::lab::Lab;
use crate::stream::{self, Framing};
use crate::waiting_room::WaitingRoom;
use std::io;

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("sse");
    // 1. The cursor: Last-Event-ID wins.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let since = match http::header(&request, "Last-Event-ID").map(str::trim) {
        None | Some("") => since,
        Some(text) => match http::parse_cursor(text, lab.hub.last_id()) {
            Ok(id) => id,
            Err(e) => return e.reply(request, &counters),
        },
    };
    // For the reconnect demonstration: end the stream after this many events.
    let close_after = match query.get("close_after") {
        None => None,
        Some(_) => match query.number("close_after", 0, 1, 1000) {
            Ok(n) => Some(n),
            Err(e) => return e.reply(request, &counters),
        },
    };
    let framing = framing();
    // From here this thread holds the response until the client leaves: it BLOCKS on its
    // subscription in `stream::serve`, woken by each publish (write a block) or by the
    // heartbeat interval (write a comment); the first failed write ends it.
    stream::serve(lab, room, request, since, close_after, &framing, &counters)
}

/// How SSE puts events on the wire (the behind_a_proxy lesson sends the same stream).
pub fn framing() -> Framing {
    Framing {
        content_type: "text/event-stream; charset=utf-8",
        headers: &[("Cache-Control", "no-cache")],
        // 2. The reconnect delay, and a comment for humans reading with curl.
        prelude: "retry: 2000\n: stream open\n\n".into(),
        frame: sse_frame,
        missed: |k| format!("event: missed\ndata: {k}\n\n"),
        heartbeat: ": heartbeat\n\n",
        unmarked: false,
    }
}

/// 3. One event block: its id, one `data:` line per line of text, a blank line.
pub fn sse_frame(event: &Event) -> String {
    let mut block = format!("id: {}\n", event.id);
    let text = event.data.replace("\r\n", "\n").replace('\r', "\n");
    for line in text.split('\n') {
        block.push_str("data: ");
        block.push_str(line);
        block.push('\n');
    }
    block.push('\n');
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_its_own_data_field() {
        let event = Event {
            id: 7,
            data: "a\nb\r\nc\rd".into(),
        };
        assert_eq!(
            sse_frame(&event),
            "id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let empty = Event {
            id: 8,
            data: String::new(),
        };
        assert_eq!(sse_frame(&empty), "id: 8\ndata: \n\n");
    }
}
