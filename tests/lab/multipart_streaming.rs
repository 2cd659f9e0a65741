//! Multipart streaming: one MIME part per event, closed by the next boundary.

use crate::common;

use common::streams;

use common::{deadline, start_lab};
use reverse_ajax_lab::client::Stream;

// The claims every stream makes (`common::streams`): heartbeats, the limit, the cursor.
streams::stream_claims!(
    "/events/multipart",
    "Content-Type: application/json\r\n\r\n{\"heartbeat\":true}\r\n--lab-event\r\n",
    streams::json_ids
);

#[test]
fn each_event_is_a_whole_part_in_its_own_chunk() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/multipart", &[]).unwrap();
    assert_eq!(
        stream.header("Content-Type"),
        Some("multipart/x-mixed-replace; boundary=lab-event")
    );
    assert_eq!(
        stream.next_chunk(deadline()).unwrap().unwrap(),
        "--lab-event\r\n"
    );
    let part = |id, text: &str| {
        let json = format!("{{\"data\":\"{text}\",\"id\":{id}}}");
        format!("Content-Type: application/json\r\n\r\n{json}\r\n--lab-event\r\n")
    };
    streams::each_event_is_its_own_chunk(addr, &mut stream, &["part 1", "part 2"], part);
}

#[test]
fn page_reads_the_parts_with_fetch_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("multipart_streaming");
    common::browser::page_shows_a_published_event(
        lab.addr(),
        &mut page,
        Some("streams"),
        "multipart",
    );
}

/// From a cursor the ring has moved past: a `{"missed": k}` part first, then what it kept.
#[test]
fn a_cursor_past_the_ring_gets_a_missed_part_first() {
    let text = streams::stream_past_the_ring("/events/multipart");
    let missed = text.find(r#"{"missed":6}"#).expect("a missed part");
    assert!(missed < text.find("\"id\":7").expect("event 7"), "{text}");
    assert!(!text.contains("\"id\":6"), "{text}");
}
