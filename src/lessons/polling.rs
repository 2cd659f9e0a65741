//! # HTTP polling (轮询): the browser asks on a timer, the server answers at once.
//!
//! ```text
//! GET /events/poll?since=4 HTTP/1.1            ← every 2 s, whether or not anything happened
//! HTTP/1.1 200 OK
//! Content-Type: application/json
//!
//! {"events":[],"last":4}                        ← "no event": a wasted round trip
//!   (2 s pass; the generator publishes event 5)
//! GET /events/poll?since=4 HTTP/1.1
//! HTTP/1.1 200 OK
//!
//! {"events":[{"data":"At 2026-11-21 15:40:06.123 UTC","id":5}],"last":5}
//! ```
//!
//! 1. Read the cursor: `since=N` asks for ids above N; no `since` means "from now".
//! 2. Copy what the hub's history holds after the cursor. Nothing is removed, so every client
//!    (every tab) gets every event, and a client that was away catches up.
//! 3. Answer at once, even when there is nothing: that empty answer is polling's cost.
//!
//! **The servlet original** (`mode=servlet`) kept one queue and drained it on every poll:
//! whoever polls first takes the events and the others never see them. Open two tabs in that
//! mode and watch the events split between them.
//!
//! **What it costs**: one request and response per interval per client, with its headers
//! (about 200 bytes here, several hundred more from a browser), whether or not anything
//! happened; an event waits on average half the interval. No thread is held between polls, and
//! it passes every proxy.
//!
//! **Try it**: `cargo run --example polling`, open <http://127.0.0.1:8080/lessons/polling>, or
//! `curl -s 'http://127.0.0.1:8080/events/poll?since=0'`.

use crate::connection::Request;
use crate::http::{self, Query};
use crate::lab::Lab;
use crate::lessons::events_answer;
use serde_json::{json, Value};
use std::io;

pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("polling");
    let answer = match query.get("mode") {
        None | Some("cursor") => {
            // 1. The cursor.
            let since = match query.since(lab.hub.last_id()) {
                Ok(since) => since,
                Err(e) => return e.reply(request, &counters),
            };
            // 2. A copy of what came after it.
            let backlog = lab.hub.since(since);
            counters.delivered(backlog.events.len());
            events_answer(&backlog, since)
        }
        Some("servlet") => {
            // The original's flaw, kept on purpose: draining takes the events away from
            // every other client.
            let events: Vec<Value> = lab
                .hub
                .drain_shared_queue()
                .iter()
                .map(|e| e.to_json())
                .collect();
            counters.delivered(events.len());
            json!({ "events": events, "last": lab.hub.last_id(), "mode": "servlet" })
        }
        Some(other) => {
            let message = format!("mode must be cursor or servlet, got {other:?}");
            return http::HttpError::bad_request(message).reply(request, &counters);
        }
    };
    // 3. Answer now, empty or not.
    http::write_json(request, &answer, &counters)
}
