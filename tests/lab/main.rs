//! The lab's integration tests, in one binary (it links once, not once per lesson): a module
//! per lesson, each proving that lesson's claims over real sockets against a lab on port 0
//! and in headless Chromium, and the modules for what every lesson shares (the HTTP layer,
//! the limits, the classroom, the layout of the house, the benchmarks in a smoke size).
//!
//! `cargo test --test lab sse::` runs one lesson's tests; `scripts/test sse::` the same with
//! everything the tests need installed.

mod common;

mod atmosphere;
mod bayeux;
mod behind_a_proxy;
mod benchmarks;
mod book;
mod buffering;
mod classroom;
mod compare;
mod cors;
mod endings;
mod fetch_streaming;
mod forever_iframe;
mod http;
mod jsonp_polling;
mod lab;
mod layout;
mod limits;
mod long_polling;
mod multipart_streaming;
mod piggyback;
mod polling;
mod properties;
mod pushlets;
mod scale_out;
mod script_long_polling;
mod sessions;
mod socket_io;
mod sse;
mod waiting_room;
mod websocket;
