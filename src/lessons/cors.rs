//! # CORS: a cross-origin poll the browser lets the page read, because the server says so.
//!
//! JSONP smuggled data across origins as a script. Cross-Origin Resource Sharing lets a plain
//! `fetch` do it: the browser sends the request with an `Origin` header, and lets the page read
//! the answer only if the server names that origin in `Access-Control-Allow-Origin`. A request
//! that is not "simple" (here: a custom header) is first *preflighted* with `OPTIONS`.
//!
//! ```text
//! (page on http://localhost:8080, events on http://127.0.0.1:8080)
//! OPTIONS /events/cors HTTP/1.1                         ← the browser asks first, by itself
//! Origin: http://localhost:8080
//! Access-Control-Request-Method: GET
//! Access-Control-Request-Headers: x-lab-client
//!
//! HTTP/1.1 204 No Content
//! Access-Control-Allow-Origin: http://localhost:8080
//! Access-Control-Allow-Methods: GET
//! Access-Control-Allow-Headers: X-Lab-Client
//! Access-Control-Max-Age: 600                            ← no new preflight for this URL for 10 min
//! Vary: Origin
//!
//! GET /events/cors?since=4 HTTP/1.1
//! Origin: http://localhost:8080
//! X-Lab-Client: cors-page
//!
//! HTTP/1.1 200 OK
//! Access-Control-Allow-Origin: http://localhost:8080
//! Vary: Origin
//!
//! {"events":[{"data":"At ...","id":5}],"last":5}
//! ```
//!
//! 1. `preflight` (OPTIONS): answer 204 with what may follow, but only to one of the lab's own
//!    origins, for GET and the one custom header it accepts; anything else gets 403.
//! 2. `handle` (GET): answer like HTTP polling. An allowed `Origin` is echoed in
//!    `Access-Control-Allow-Origin`, with `Vary: Origin` so no cache serves one origin's
//!    answer to another. A foreign origin gets the answer *without* the header: the server
//!    cannot stop the request, but the browser will not let that page read it.
//!
//! **What it costs**: the bytes of polling plus two or three headers, and one preflight per
//! `Max-Age` when the request is not simple. Unlike JSONP, the page runs no code from the
//! other server, sees real statuses and errors, and the server chooses who may read.
//!
//! **Try it**: `cargo run --example cors`, open <http://localhost:8080/lessons/cors>, or
//! `curl -si -H 'Origin: http://localhost:8080' 'http://127.0.0.1:8080/events/cors?since=0'`.

use crate::connection::Request;
use crate::http::{self, HttpError, Query};
use crate::lab::Lab;
use crate::lessons::events_answer;
use std::io;

/// The one non-simple header the lab accepts, to show a preflight.
pub const CLIENT_HEADER: &str = "X-Lab-Client";

/// Step 1: `OPTIONS /events/cors`, the browser's question before a non-simple request.
pub fn preflight(lab: &Lab, request: Request) -> io::Result<()> {
    // Counted apart, so `/stats` shows how rarely the browser asks (once per Max-Age).
    let counters = lab.count("cors_preflight");
    let origin = http::header(&request, "Origin").unwrap_or("").to_string();
    if !lab.is_own_origin(&origin, &lab.client(&request)) {
        let message = format!("origin {origin:?} may not read the lab's events");
        return HttpError::new(403, message).reply(request, &counters);
    }
    let method = http::header(&request, "Access-Control-Request-Method").unwrap_or("");
    let asked = http::header(&request, "Access-Control-Request-Headers").unwrap_or("");
    let headers_ok = asked
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .all(|h| h.eq_ignore_ascii_case(CLIENT_HEADER));
    if method != "GET" || !headers_ok {
        let message =
            format!("only GET with {CLIENT_HEADER} may follow, not {method} with {asked:?}");
        return HttpError::new(403, message).reply(request, &counters);
    }
    log::debug!("CORS preflight from {origin} allowed");
    let headers = [
        ("Access-Control-Allow-Origin", origin.as_str()),
        ("Access-Control-Allow-Methods", "GET"),
        ("Access-Control-Allow-Headers", CLIENT_HEADER),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    ];
    http::write_no_content(request, &headers, &counters)
}

/// Step 2: `GET /events/cors?since=N`, a poll whose answer names who may read it.
pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("cors");
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let backlog = lab.hub.since(since);
    counters.delivered(backlog.events.len());
    let body = events_answer(&backlog, since).to_string();
    let origin = http::header(&request, "Origin").unwrap_or("").to_string();
    let allow = lab.is_own_origin(&origin, &lab.client(&request));
    let headers: Vec<(&str, &str)> = if allow {
        vec![("Access-Control-Allow-Origin", &origin), ("Vary", "Origin")]
    } else {
        // Answered, but unreadable to a foreign page: the browser enforces it.
        vec![("Vary", "Origin")]
    };
    http::write_response(
        request,
        200,
        "application/json",
        &headers,
        body.as_bytes(),
        &counters,
    )
}
