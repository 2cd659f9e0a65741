//! # JSONP polling (JSONP轮询): polling across origins by loading the answer as a script.
//!
//! A page may only read XHR/fetch answers from its own origin (unless the server sends CORS
//! headers), but it may load and run a `<script>` from anywhere. JSONP wraps the JSON in a call
//! to a function the page names, so "loading a script" becomes "receiving data".
//!
//! ```text
//! (the page is on http://localhost:8080; the events are on http://127.0.0.1:8080)
//! GET /events/jsonp?callback=lab.onEvents&since=4 HTTP/1.1
//! Host: 127.0.0.1:8080
//!
//! HTTP/1.1 200 OK
//! Content-Type: application/javascript; charset=utf-8
//! X-Content-Type-Options: nosniff
//!
//! /**/lab.onEvents({"events":[{"data":"At ...","id":5}],"last":5});
//! ```
//!
//! 1. Validate the callback: a dotted path of plain identifiers, nothing else. The name is
//!    reflected into our answer. The calling page runs whatever we send anyway, so the risk
//!    is to *this server's* origin: a raw `<script>…` name in a link, its answer taken for
//!    HTML (opened directly, or sniffed), would run as our page: reflected XSS.
//! 2. Read the cursor and the events after it, as HTTP polling does.
//! 3. Write `/**/F(json);`: the leading comment defuses old content-sniffing attacks that
//!    began the body with attacker bytes, `nosniff` stops the browser treating the answer as
//!    anything but script, and the JSON is escaped for a script context.
//!
//! **What it costs**: the same as polling, and the page must trust the server completely: the
//! answer runs as code in the page. Errors are invisible (a script tag reports only
//! "error", never a status or a body). CORS (a later lesson) replaced it.
//!
//! **Try it**: `cargo run --example jsonp_polling`, open
//! <http://localhost:8080/lessons/jsonp_polling>, or
//! `curl -s 'http://127.0.0.1:8080/events/jsonp?callback=show&since=0'`.

use crate::connection::Request;
use crate::http::{self, Query};
use crate::lab::Lab;
use crate::lessons::events_answer;
use std::io;

pub fn handle(lab: &Lab, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("jsonp_polling");
    // 1. The callback name, validated.
    let callback = match query.callback() {
        Ok(name) => name,
        Err(e) => return e.reply(request, &counters),
    };
    // 2. The cursor and what came after it.
    let since = match query.since(lab.hub.last_id()) {
        Ok(since) => since,
        Err(e) => return e.reply(request, &counters),
    };
    let backlog = lab.hub.since(since);
    counters.delivered(backlog.events.len());
    // 3. The script.
    http::write_jsonp(
        request,
        callback,
        &events_answer(&backlog, since),
        &[],
        &counters,
    )
}
