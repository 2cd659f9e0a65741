//! Multipart streaming: one MIME part per event, closed by the next boundary.

use crate::common;

use common::streams;

use common::{deadline, start_lab, wait_for_stat};
use reverse_ajax_lab::client::{publish, Stream};

#[test]
fn each_event_is_a_whole_part_in_its_own_chunk() {
    let addr = start_lab().addr();
    let mut stream = Stream::open(addr, "/events/multipart", &[]).unwrap();
    assert_eq!(
        stream.header("Content-Type"),
        Some("multipart/x-mixed-replace; boundary=lab-event")
    );
    assert_eq!(
        stream.next_chunk(deadline()).unwrap().unwrap(),
        "--lab-event\r\n"
    );
    wait_for_stat(addr, "streams", 1, "subscribed");
    for i in 1..=2 {
        publish(addr, &format!("part {i}")).unwrap();
        let chunk = stream.next_chunk(deadline()).unwrap().unwrap();
        assert_eq!(
            chunk,
            format!("Content-Type: application/json\r\n\r\n{{\"data\":\"part {i}\",\"id\":{i}}}\r\n--lab-event\r\n")
        );
    }
}

#[test]
fn heartbeats_are_parts_too_and_free_a_stream_whose_client_left() {
    let heartbeat = "Content-Type: application/json\r\n\r\n{\"heartbeat\":true}\r\n--lab-event\r\n";
    streams::heartbeats_find_a_client_that_left("/events/multipart", heartbeat);
}

#[test]
fn beyond_the_limit_a_stream_gets_503() {
    streams::beyond_the_limit_a_stream_gets_503("/events/multipart");
}

#[test]
fn a_cursor_replays_missed_parts_first() {
    streams::a_cursor_replays_what_was_missed_first("/events/multipart", streams::json_ids);
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
