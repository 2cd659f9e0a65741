//! # Forever iframe (隐藏的iframe): a hidden iframe whose page never finishes loading.
//!
//! The page puts a hidden `<iframe src="/events/iframe">` in itself. The server answers with an
//! HTML page that never ends: each event is one more `<script>` element, which the browser runs
//! as soon as it arrives, calling a function in the parent page.
//!
//! ```text
//! GET /events/iframe?since=4 HTTP/1.1
//! HTTP/1.1 200 OK
//! Content-Type: text/html; charset=utf-8
//! Transfer-Encoding: chunked
//!
//! <!doctype html><html><body><!-- 1 KiB of padding -->
//!   (time passes: req-20 is parked on its subscription)
//! <script>parent.onEvent({"data":"At ...","id":5})</script>
//!   (15 s of silence)
//! <script>parent.onHeartbeat()</script>
//! ```
//!
//! 1. Read the cursor; the shared loop (`stream::serve`) takes a place and subscribes.
//! 2. Prelude: the start of an HTML document and 1 KiB of padding (old browsers rendered
//!    nothing until they had about that much; today's do not need it, and it costs once).
//! 3. Each event: `<script>parent.onEvent(JSON)</script>`, the JSON escaped for a script
//!    context so an event reading `</script><script>alert(1)</script>` stays data.
//! 4. Heartbeats call `parent.onHeartbeat()`: the parent page has no other way to know the
//!    stream is alive. An iframe reports no error when its connection breaks; it just stops.
//!
//! **What it costs**: one request per connection, not per event; about 50 bytes of script tag
//! around each event; one held thread per client. Works in every browser that has iframes, and
//! the document grows forever (a real server would end the stream after some megabytes and
//! let the page reconnect). Buffering proxies may hold the events back.
//!
//! **Try it**: `cargo run --example forever_iframe`, open
//! <http://127.0.0.1:8080/lessons/forever_iframe>, or
//! `curl -N 'http://127.0.0.1:8080/events/iframe?since=0'`.

use crate::connection::Request;
use crate::http::{self, Query};
use crate::hub::Event;
use crate::lab::Lab;
use crate::stream::{self, Framing};
use crate::waiting_room::WaitingRoom;
use serde_json::json;
use std::io;

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("forever_iframe");
    // 1. The cursor.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let framing = Framing {
        content_type: "text/html; charset=utf-8",
        headers: &[],
        // 2. The document's start, padded.
        prelude: format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"></head><body>\n<!-- {} -->\n",
            "padding ".repeat(128)
        ),
        frame,
        missed: |k| format!("<script>parent.onMissed({k})</script>\n"),
        heartbeat: "<script>parent.onHeartbeat()</script>\n",
        unmarked: false,
    };
    // 4. From here this thread holds the response until the client leaves: it BLOCKS on its
    //    subscription in `stream::serve`, woken by each publish (write a frame) or by the
    //    heartbeat interval (write a heartbeat); the first failed write ends it.
    stream::serve(lab, room, request, since, None, &framing, &counters)
}

/// 3. One event as a script element.
pub fn frame(event: &Event) -> String {
    format!(
        "<script>parent.onEvent({})</script>\n",
        http::json_for_script(&json!(event.to_json()))
    )
}
