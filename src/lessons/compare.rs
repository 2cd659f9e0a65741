//! # Every technique side by side: one tab, eleven clients, the same events.
//!
//! This lesson has no endpoint of its own. Its page (`html/compare.html`) opens one client of
//! every other lesson at once (polling, JSONP, CORS, piggyback, both long polls, the forever
//! iframe, multipart, fetch streaming, SSE, WebSocket), all receiving the same events. Each
//! row draws its own wire timeline and counts what its technique cost:
//!
//! ```text
//! technique           wire (last 30 s)                       requests empty events bytes/event wait
//! HTTP polling        ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮ ▮            15      5     12    ~180        ~1000 ms
//! XHR long polling    ▬▬▬▬▬▮▬▬▬▬▬▬▮▬▬▬▬▬▬▮▬▬▬▬▬                12      0     12    ~190          ~2 ms
//! Server-Sent Events  ▬▬▬▬┃▬▬▬▬▬┃▬▬▬▬▬▬┃▬▬▬▬▬▬▬                1       0     12    ~40           ~0 ms
//!   (time passes, left to right; ┃ is an event arriving on an open stream)
//! ```
//!
//! 1. The page takes the newest id as every client's starting cursor.
//! 2. It starts every client; each opens bars on its own timeline as it sends requests.
//! 3. The events: the generator's; or, when the lab runs with `--generator off`, the page's
//!    own, at random moments after a pause drawn as the generator draws its own, so that no
//!    event keeps step with a poll's timer. A row's wait for an event runs from the moment
//!    the first row received it (a stream, milliseconds after the publish) to its own
//!    arrival: one clock for every row.
//! 4. Every two seconds it reads `/stats` and shows each lesson's bytes written per event
//!    delivered.
//!
//! It is chapter 13's `compare` benchmark (`examples/compare.rs`), which measures the same
//! things with 100 clients each, happening in front of a class.
//!
//! **What it costs**: one tab holds seven long-lived connections (both long polls, the
//! iframe, multipart, NDJSON, SSE, WebSocket) besides its polls. Chromium allows six
//! HTTP/1.1 connections per host, so the page spreads its clients over two host names: JSONP,
//! CORS and the script-tag long poll reach the lab under its other name (as in their own
//! lessons), the WebSocket has its own port, and five held connections plus one for
//! everything else use the page's own host.
//!
//! **Try it**: `cargo run`, open <http://127.0.0.1:8080/lessons/compare> and watch the rows
//! for ten seconds: polling's row is a comb of short bars, long polling's a chain of long
//! ones, the streams one bar each with ticks.

use crate::lessons::Lesson;

/// The page, listed with the other lessons so the index links it.
pub const LESSON: Lesson = Lesson {
    name: "compare",
    chapter: 13,
    title: "Every technique side by side",
    idea: "One tab, every technique against the same events: timelines, requests, empty answers, bytes and latency.",
    page: include_str!("../../html/compare.html"),
    endpoints: &[],
};
