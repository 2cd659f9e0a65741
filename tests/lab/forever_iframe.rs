//! Forever iframe: an endless HTML page, one escaped script per event.

use crate::common;

use common::{
    browser::Browser, deadline, start_lab, start_lab_with, stats, wait_for_baseline, wait_until,
};
use reverse_ajax_lab::client::{publish, Stream};
use std::time::Duration;

#[test]
fn each_event_is_one_script_calling_the_parent() {
    let lab = start_lab();
    let addr = lab.addr();
    let mut stream = Stream::open(addr, "/events/iframe", &[]).unwrap();
    assert_eq!(
        stream.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let prelude = stream.next_chunk(deadline()).unwrap().unwrap();
    assert!(prelude.starts_with("<!doctype html>") && prelude.len() >= 1024);
    wait_until("subscribed", || stats(addr)["streams"] == 1);
    publish(addr, "hello").unwrap();
    let chunk = stream.next_chunk(deadline()).unwrap().unwrap();
    assert_eq!(
        chunk,
        "<script>parent.onEvent({\"data\":\"hello\",\"id\":1})</script>\n"
    );
}

#[test]
fn an_event_cannot_close_the_script_element() {
    let lab = start_lab();
    let addr = lab.addr();
    publish(addr, "</script><script>alert(1)</script>").unwrap();
    let mut stream = Stream::open(addr, "/events/iframe?since=0", &[]).unwrap();
    let text = stream
        .read_until(deadline(), |t| t.contains("onEvent"))
        .unwrap();
    let script = text.lines().find(|l| l.contains("onEvent")).unwrap();
    assert_eq!(script.matches("<script>").count(), 1, "{script}");
    assert_eq!(script.matches("</script>").count(), 1, "{script}");
    assert!(script.contains(r"\u003c/script\u003e\u003cscript\u003ealert(1)"));
}

#[test]
fn heartbeats_keep_the_parent_informed_and_free_a_stream_whose_client_left() {
    let lab = start_lab_with(|c| {
        c.heartbeat = Duration::from_millis(200);
        c.departures = false; // the heartbeat alone must find the client gone
    });
    let addr = lab.addr();
    let mut stream = Stream::open(addr, "/events/iframe", &[]).unwrap();
    stream.next_chunk(deadline()).unwrap(); // the prelude
    let beat = stream.next_chunk(deadline()).unwrap().unwrap();
    assert_eq!(beat, "<script>parent.onHeartbeat()</script>\n");
    drop(stream);
    wait_for_baseline(addr);
}

#[test]
fn page_runs_each_script_as_it_arrives_in_chromium() {
    let lab = start_lab();
    let browser = Browser::launch();
    let mut page = browser.open(&lab.url("/lessons/forever_iframe"));
    page.wait_for_log("[client] iframe connecting");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, Some("streams"), "iframe");
    // Hostile data stays data: shown as text, never run.
    publish(lab.addr(), "</script><script>parent.pwned=1</script>").unwrap();
    page.wait_for_log("[event] </script><script>parent.pwned=1</script>");
    assert_eq!(page.eval("typeof window.pwned"), "undefined");
}

/// From a cursor the ring has moved past: `parent.onMissed(k)` first, then what it kept.
#[test]
fn a_cursor_past_the_ring_calls_on_missed_first() {
    let text = common::stream_past_the_ring("/events/iframe");
    let missed = text
        .find("<script>parent.onMissed(6)</script>")
        .expect("onMissed");
    assert!(missed < text.find("\"id\":7").unwrap(), "{text}");
}
