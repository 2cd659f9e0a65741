//! The buffering trap: a response written through an 8 KiB buffer holds small events until the stream ends,
//! while the hand-framed stream delivers each at once.

use crate::common;

use common::{deadline, marker, start_lab, wait_for_stat};
use reverse_ajax_lab::client::{self, publish, Stream};
use std::io::{ErrorKind, Read};

#[test]
fn buffering_holds_events_that_the_hand_framed_stream_already_delivered() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut prompt = Stream::open(addr, "/events/stream", &[]).unwrap();
    let mut buffered = client::open(addr, "GET", "/events/buffered?count=3", &[], b"").unwrap();
    wait_for_stat(addr, "subscribers", 2, "both streams are subscribed");

    for i in 1..=2 {
        publish(addr, &format!("e{i}")).unwrap();
        let chunk = prompt.next_chunk(deadline()).unwrap().unwrap();
        assert!(chunk.contains(&format!("\"id\":{i}")));
    }
    // Two events have reached the prompt client; the buffered one has not sent a single byte,
    // not even its status line.
    buffered.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    let peeked = buffered.peek(&mut probe);
    assert!(
        matches!(&peeked, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the buffered stream sent something early: {peeked:?}"
    );
    buffered.set_nonblocking(false).unwrap();

    // The third event ends the buffered body: now everything arrives at once.
    publish(addr, "e3").unwrap();
    let mut everything = String::new();
    buffered.read_to_string(&mut everything).unwrap();
    assert!(everything.starts_with("HTTP/1.1 200"));
    for i in 1..=3 {
        assert!(
            everything.contains(&format!("\"data\":\"e{i}\"")),
            "{everything}"
        );
    }
    wait_for_stat(addr, "subscribers", 1, "the buffered stream has let go");
    drop(prompt);
}

#[test]
fn bad_count_gets_400() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let bad = [
        "/events/buffered?count=0",
        "/events/buffered?count=1000",
        "/events/buffered?since=q",
    ];
    common::each_gets_400_saying_why(addr, &bad);
}

#[test]
fn page_shows_the_difference_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("buffering");
    wait_for_stat(
        lab.addr(),
        "subscribers",
        2,
        "both page streams are subscribed",
    );
    let texts: Vec<String> = (0..5).map(|i| marker(&format!("buf{i}"))).collect();
    publish(lab.addr(), &texts[0]).unwrap();
    page.wait_for_log(&format!("[prompt] [event] {}", texts[0]));
    assert!(!page.log_text().contains("[buffered] [event]"));
    for text in &texts[1..] {
        publish(lab.addr(), text).unwrap();
    }
    for text in &texts {
        page.wait_for_log(&format!("[buffered] [event] {text}"));
    }
}

/// Chapter 7's pitfall: every hand-framed stream asks proxies in front not to buffer it.
#[test]
fn every_stream_asks_proxies_not_to_buffer() {
    let lab = common::start_lab();
    for path in [
        "/events/stream",
        "/events/sse",
        "/events/multipart",
        "/events/iframe",
    ] {
        let stream = reverse_ajax_lab::client::Stream::open(lab.addr(), path, &[]).unwrap();
        assert_eq!(stream.status, 200, "{path}");
        assert_eq!(stream.header("X-Accel-Buffering"), Some("no"), "{path}");
    }
}
