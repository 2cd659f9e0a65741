//! # Scale-out: two labs behind one address share their events through Redis, and cursors let a client move between them.
//!
//! One server holds only so many connections (chapter 14). Run two, and an event published
//! on one must reach the clients of both, with the same id everywhere, or a client that moves
//! from one server to the other could not say where it left off. A broker does that:
//! `--redis URL` (see `crate::broker`) numbers every event in Redis and feeds every lab's hub
//! from one Redis stream. Every lesson runs unchanged on top.
//!
//! ```text
//! lab A (:8080) ◄─ POST /publish "hi" ─ a client
//!   EVALSHA: INCR lab:last_id → 7, XADD lab:events 0-7 data "hi"          → Redis
//!   (time passes: microseconds; each lab's broker-reader is parked on XREAD BLOCK)
//! lab A broker-reader ◄─ 0-7 "hi" ─ Redis ─ 0-7 "hi" ─► lab B broker-reader
//! lab A: SSE id: 7 data: hi                          lab B: SSE id: 7 data: hi
//! a client of A moves to B:  GET /events/sse  Last-Event-ID: 7  → B sends 8, 9… (nothing lost)
//! ```
//!
//! 1. `GET /scale-out` (`handle`) tells a page what this lab is: its broker's state, its
//!    WebSocket URL, and its peers (`--peer`), readable by the peers' pages too (CORS).
//! 2. The page opens a WebSocket to each lab from the same cursor and shows every event
//!    arriving from both, with one id.
//! 3. What makes moving painless is the cursor, not a session: any lab can answer "events
//!    after 7", because every lab has the same events under the same ids. A session (Socket.IO's
//!    `sid`, Bayeux's `clientId`) lives in one lab's memory, so its polls must go back to that
//!    lab: the "sticky sessions" a load balancer is asked for.
//!
//! **What it costs**: a Redis round trip per publish and one more hop before delivery
//! (chapter 20 measures both); a broker that must be up for anyone to publish.
//!
//! **Try it**: `redis-server --port 6379 --save ''` in one shell, `cargo run --example
//! scale_out` in another, open <http://127.0.0.1:8080/lessons/scale_out>.

use crate::connection::Request;
use crate::http;
use crate::lab::Lab;
use serde_json::json;
use std::io;

/// Step 1: this lab as a scale-out page needs it.
pub fn handle(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("scale_out");
    let client = lab.client(&request);
    let value = json!({
        "http": lab.base_url(&client, false),
        "websocket": format!("{}/events/ws", lab.base_url(&client, true)),
        "broker": lab.broker.as_ref().map(|b| b.to_json()),
        "events_published": lab.hub.last_id(),
        "peers": lab.config.peers,
    });
    // A peer's page reads this too: name its origin (only the lab's own and its peers').
    let mut headers = vec![("Vary", "Origin".to_string())];
    if let Some(origin) = http::header(&request, "Origin") {
        if lab.is_own_origin(origin, &client) {
            headers.push(("Access-Control-Allow-Origin", origin.to_string()));
        }
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    http::write_response(
        request,
        200,
        "application/json",
        &headers,
        value.to_string().as_bytes(),
        &counters,
    )
}
