//! # Script-tag long polling (script标签长轮询): long polling across origins, one `<script>` per answer.
//!
//! The JSONP trick applied to long polling: the page adds a `<script src>` pointing at the
//! other origin; the server holds that request until an event (or the deadline), then answers
//! with a script calling the page's callback; the callback adds the next script tag.
//!
//! ```text
//! (page on http://localhost:8080, events on http://127.0.0.1:8080)
//! GET /events/long-poll-script?callback=lab.onEvents&since=4 HTTP/1.1
//!   (time passes: req-12 is parked, holding the script request; the page's tag is "loading")
//!   (event 5 is published)
//! HTTP/1.1 200 OK
//! Content-Type: application/javascript; charset=utf-8
//! X-Content-Type-Options: nosniff
//!
//! /**/lab.onEvents({"events":[{"data":"At ...","id":5}],"last":5});
//! ```
//!
//! 1. Validate the callback (as JSONP polling does: never reflected raw).
//! 2. Park exactly as XHR long polling does (`long_polling::answer`): cursor, deadline, the
//!    `--max-parked` limit.
//! 3. Wake and write the script.
//!
//! **What it costs**: as XHR long polling, plus JSONP's weaknesses: no status or error body
//! reaches the page (a failed tag says only "error"), and the page runs whatever the other
//! server sends. Some browsers show a spinning "loading" indicator while the tag is pending.
//!
//! **Try it**: `cargo run --example script_long_polling`, open
//! <http://localhost:8080/lessons/script_long_polling>, or
//! `curl -s 'http://127.0.0.1:8080/events/long-poll-script?callback=show&timeout=60'`.

use crate::connection::Request;
use crate::http::Query;
use crate::lab::Lab;
use crate::lessons::long_polling::{self, AnswerForm};
use crate::waiting_room::WaitingRoom;
use std::io;

pub fn handle(lab: &Lab, room: &WaitingRoom, request: Request, query: &Query) -> io::Result<()> {
    let counters = lab.count("script_long_polling");
    // 1. The callback, validated before anything is held.
    let callback = match query.callback() {
        Ok(name) => name.to_string(),
        Err(e) => return e.reply(request, &counters),
    };
    // 2 and 3. Events already waiting, or park (as XHR long polling does); the script.
    long_polling::answer(
        lab,
        room,
        request,
        query,
        AnswerForm::Script(callback),
        &counters,
    )
}
