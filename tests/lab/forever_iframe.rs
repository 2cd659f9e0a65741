//! Forever iframe: an endless HTML page, one escaped script per event.

use crate::common;

use common::streams;

use common::{deadline, start_lab};
use reverse_ajax_lab::client::{publish, Stream};

// The claims every stream makes (`common::streams`): heartbeats, the limit, the cursor.
streams::stream_claims!(
    "/events/iframe",
    "<script>parent.onHeartbeat()</script>\n",
    streams::json_ids
);

#[test]
fn each_event_is_one_script_calling_the_parent() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/iframe", &[]).unwrap();
    assert_eq!(
        stream.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let prelude = stream.next_chunk(deadline()).unwrap().unwrap();
    assert!(prelude.starts_with("<!doctype html>") && prelude.len() >= 1024);
    let script = |id, text: &str| {
        format!("<script>parent.onEvent({{\"data\":\"{text}\",\"id\":{id}}})</script>\n")
    };
    streams::each_event_is_its_own_chunk(addr, &mut stream, &["hello", "again"], script);
}

#[test]
fn an_event_cannot_close_the_script_element() {
    let _lab = start_lab();
    let addr = _lab.addr();
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
fn page_runs_each_script_as_it_arrives_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("forever_iframe");
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
    let text = streams::stream_past_the_ring("/events/iframe");
    let missed = text
        .find("<script>parent.onMissed(6)</script>")
        .expect("onMissed");
    assert!(missed < text.find("\"id\":7").unwrap(), "{text}");
}
