//! Fetch streaming: one NDJSON line per event, each its own chunk, flushed at once.

use crate::common;

use common::streams;

use common::{deadline, start_lab, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client::{publish, Stream};
use std::time::Duration;

// The claims every stream makes (`common::streams`): heartbeats, the limit, the cursor.
streams::stream_claims!("/events/stream", "\n", streams::json_ids);

#[test]
fn promptness_each_event_is_its_own_chunk_while_the_response_is_open() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/stream", &[]).unwrap();
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("Content-Type"), Some("application/x-ndjson"));
    assert_eq!(stream.header("Transfer-Encoding"), Some("chunked"));
    // A newline in the data stays inside its JSON string: one line per event.
    let texts = ["line 1\nwith a newline", "line 2\nwith a newline"];
    let line = |id, text: &str| {
        let escaped = text.replace('\n', "\\n");
        format!("{{\"data\":\"{escaped}\",\"id\":{id}}}\n")
    };
    streams::each_event_is_its_own_chunk(addr, &mut stream, &texts, line);
}

#[test]
fn page_reads_the_stream_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("fetch_streaming");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, Some("streams"), "ndjson");
}

/// From a cursor the ring has moved past: a `{"missed": k}` line first, then what it kept.
#[test]
fn a_cursor_past_the_ring_gets_a_missed_line_first() {
    let text = streams::stream_past_the_ring("/events/stream");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], r#"{"missed":6}"#);
    assert!(lines[1].contains("\"id\":7"), "{text}");
    assert_eq!(lines.len(), 5, "{text}");
}

/// A stream is not idle: held past `--idle-timeout`, it still carries events.
#[test]
fn a_stream_outlives_the_idle_timeout() {
    let _lab = start_lab_with(|c| c.idle_timeout = Duration::from_secs(1));
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/stream", &[]).unwrap();
    common::stays_true_for(Duration::from_millis(2500), "the stream stays open", || {
        stats(addr)["streams"] == 1
    });
    publish(addr, "still streaming").unwrap();
    let chunk = stream.next_chunk(deadline()).unwrap().unwrap();
    assert!(chunk.contains("still streaming"), "{chunk}");
}

/// A client that closes its connection is noticed within seconds, not at the heartbeat: the
/// parked stream looks at its socket once a second (`ChunkedStream::client_left`). Without
/// that, the first heartbeat into the closed connection still succeeds, and only the second
/// one fails.
#[test]
fn a_stream_whose_client_hangs_up_is_let_go_long_before_its_next_heartbeat() {
    let _lab = start_lab_with(|c| c.heartbeat = Duration::from_secs(60));
    let addr = _lab.addr();
    let leaving = Stream::open(addr, "/events/stream", &[]).unwrap();
    let mut staying = Stream::open(addr, "/events/stream", &[]).unwrap();
    common::hang_up_and_see_it_let_go(addr, leaving, "streams");
    publish(addr, "for the one that stayed").unwrap();
    let chunk = staying.next_chunk(deadline()).unwrap().unwrap();
    assert!(chunk.contains("for the one that stayed"), "{chunk}");
}

/// A client that stops reading (a frozen tab) fills its socket's buffers; the next write then
/// blocks, for at most `--write-timeout`: the stream is dropped, counted as a slow consumer,
/// and its thread freed. A client that reads meanwhile gets every event, on time.
#[test]
fn a_stalled_reader_is_dropped_after_the_write_timeout_and_others_are_unaffected() {
    let lab = start_lab_with(|c| {
        c.write_timeout = Duration::from_secs(1);
        c.max_body = 1 << 20;
        c.buffer = 256;
        c.history = 256;
    });
    let addr = lab.addr();
    let _stalled = Stream::open(addr, "/events/stream", &[]).unwrap(); // never read again
    let mut lively = Stream::open(addr, "/events/stream", &[]).unwrap();
    wait_for_stat(addr, "streams", 2, "both streams are subscribed");
    let big = "x".repeat(512 * 1024);
    let mut received = 0;
    for _ in 0..64 {
        publish(addr, &big).unwrap();
        // The lively client keeps up: each event arrives before the next is published.
        let mut text = String::new();
        while !text.ends_with('\n') {
            text.push_str(&lively.next_chunk(deadline()).unwrap().unwrap());
        }
        received += 1;
    }
    assert_eq!(received, 64);
    // 32 MiB to the stalled client cannot all fit in socket buffers: it is dropped.
    wait_until("the stalled stream is dropped", || {
        let s = stats(addr);
        s["streams"] == 1 && s["slow_consumers"] == 1
    });
    publish(addr, "after the drop").unwrap();
    let chunk = lively.next_chunk(deadline()).unwrap().unwrap();
    assert!(chunk.contains("after the drop"), "{chunk}");
}
