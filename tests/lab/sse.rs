//! Server-Sent Events: framing, resume from Last-Event-ID, and EventSource in Chromium.

use crate::common;

use common::streams;

use common::{
    browser::Browser, deadline, marker, start_lab, start_lab_with, stats, wait_for_baseline,
    wait_for_stat, wait_until,
};
use reverse_ajax_lab::client::{get, publish, request, Stream};

// The claims every stream makes (`common::streams`): heartbeats, the limit, the cursor.
streams::stream_claims!("/events/sse", ": heartbeat\n\n", ids_in);

fn ids_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

#[test]
fn framing_headers_retry_ids_and_one_data_line_per_line() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/sse", &[("Accept", "text/event-stream")]).unwrap();
    assert!(stream
        .header("Content-Type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(stream.header("Cache-Control"), Some("no-cache"));
    assert_eq!(stream.header("X-Accel-Buffering"), Some("no"));
    let prelude = stream.next_chunk(deadline()).unwrap().unwrap();
    assert!(prelude.starts_with("retry: 2000\n"), "{prelude:?}");
    wait_for_stat(addr, "streams", 1, "subscribed");
    publish(addr, "first line\nsecond line").unwrap();
    let block = stream.next_chunk(deadline()).unwrap().unwrap();
    assert_eq!(block, "id: 1\ndata: first line\ndata: second line\n\n");
}

#[test]
fn resume_after_disconnect_delivers_exactly_the_missed_events() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, "/events/sse?since=0", &[]).unwrap();
    publish(addr, "one").unwrap();
    publish(addr, "two").unwrap();
    let seen = stream
        .read_until(deadline(), |t| ids_in(t).len() == 2)
        .unwrap();
    assert_eq!(ids_in(&seen), vec![1, 2]);
    drop(stream);
    // While the client is away.
    for data in ["three", "four", "five"] {
        publish(addr, data).unwrap();
    }
    // The browser reconnects to the same URL (since=0) with Last-Event-ID: the header wins.
    let mut stream = Stream::open(addr, "/events/sse?since=0", &[("Last-Event-ID", "2")]).unwrap();
    let resumed = stream
        .read_until(deadline(), |t| ids_in(t).len() == 3)
        .unwrap();
    assert_eq!(ids_in(&resumed), vec![3, 4, 5]);
    assert!(resumed.contains("data: three\n") && resumed.contains("data: five\n"));
    publish(addr, "six").unwrap();
    let next = stream
        .read_until(deadline(), |t| !ids_in(t).is_empty())
        .unwrap();
    assert_eq!(ids_in(&next), vec![6], "nothing twice, nothing skipped");
}

#[test]
fn resuming_from_too_far_back_says_what_was_missed() {
    let _lab = start_lab_with(|c| c.history = 4);
    let addr = _lab.addr();
    for i in 0..10 {
        publish(addr, &format!("e{i}")).unwrap();
    }
    let mut stream = Stream::open(addr, "/events/sse", &[("Last-Event-ID", "0")]).unwrap();
    let text = stream
        .read_until(deadline(), |t| ids_in(t).len() == 4)
        .unwrap();
    assert!(text.contains("event: missed\ndata: 6\n\n"), "{text}");
    assert_eq!(ids_in(&text), vec![7, 8, 9, 10]);
}

#[test]
fn close_after_ends_the_stream_so_the_browser_reconnects() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for data in ["a", "b", "c"] {
        publish(addr, data).unwrap();
    }
    // Exactly two, even when more are waiting: the third comes on the reconnect.
    let answer = get(addr, "/events/sse?since=0&close_after=2").unwrap();
    assert_eq!(ids_in(&answer.body), vec![1, 2]);
    let resumed = request(
        addr,
        "GET",
        "/events/sse?close_after=1",
        &[("Last-Event-ID", "2")],
        b"",
    )
    .unwrap();
    assert_eq!(ids_in(&resumed.body), vec![3]);
    wait_for_baseline(addr);
}

#[test]
fn bad_input_gets_400() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let bad_header = request(addr, "GET", "/events/sse", &[("Last-Event-ID", "abc")], b"").unwrap();
    assert_eq!(bad_header.status, 400);
    assert_eq!(get(addr, "/events/sse?since=-2").unwrap().status, 400);
    assert_eq!(get(addr, "/events/sse?close_after=0").unwrap().status, 400);
    wait_for_baseline(addr);
}

#[test]
fn page_resumes_without_a_gap_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("sse");
    page.wait_for_log("[client] stream open");
    // Make the server drop the stream every 3 events: the page opens a new one that says so.
    page.eval("document.getElementById('drop').click()");
    page.wait_for_log("(the server drops it every 3 events)");
    // (The old stream is still held: the server learns it is gone at its next write.)
    wait_until("the new stream has been asked for", || {
        stats(lab.addr())["lessons"]["sse"]["requests"] == 2
    });
    // Seven events: the server ends the stream after 3 and after 6; EventSource reconnects
    // twice by itself, each time resuming from Last-Event-ID.
    let texts: Vec<String> = (0..7).map(|i| marker(&format!("sse{i}"))).collect();
    for text in &texts {
        publish(lab.addr(), text).unwrap();
    }
    for text in &texts {
        page.wait_for_log(&format!("[event] {text}"));
    }
    page.wait_for_log("[client] reconnected; the browser sent Last-Event-ID: 3");
    page.wait_for_log("[client] reconnected; the browser sent Last-Event-ID: 6");
    page.wait_for_text("reconnects", "2");
    assert!(!page.log_text().contains("gap!"), "{}", page.log_text());
}

#[test]
fn a_last_event_id_from_a_previous_run_resumes_from_now() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "before").unwrap();
    let mut stream = Stream::open(addr, "/events/sse", &[("Last-Event-ID", "9000")]).unwrap();
    wait_for_stat(addr, "streams", 1, "subscribed");
    publish(addr, "after").unwrap();
    let text = stream
        .read_until(deadline(), |t| !ids_in(t).is_empty())
        .unwrap();
    assert_eq!(ids_in(&text), vec![2]);
}

/// The wire timeline draws SSE as one open bar with a tick per event.
#[test]
fn timeline_draws_one_stream_with_a_tick_per_event() {
    let lab = start_lab();
    let addr = lab.addr();
    let (_browser, mut page) = common::browser::open_page(&lab, "/lessons/sse");
    page.wait_for_log("stream open");
    for i in 0..3 {
        publish(addr, &format!("tick {i}")).unwrap();
    }
    let bars = page.wait_for_bars("three ticks on the stream", |bars| {
        bars.iter().any(|b| b["ticks"] == 3)
    });
    assert_eq!(bars.len(), 1, "one connection for every event: {bars:?}");
    assert_eq!(bars[0]["kind"], "stream");
    assert_eq!(bars[0]["outcome"], "open");
}

/// EventSource gives up for good after a non-200 answer (it never reads Retry-After); the
/// page notices and reopens the stream itself, from its cursor.
#[test]
fn after_a_503_the_page_reopens_the_stream_itself() {
    let lab = start_lab_with(|c| {
        c.max_parked = 1;
        c.heartbeat = std::time::Duration::from_secs(1); // so the server notices the blocker leave
    });
    let addr = lab.addr();
    let browser = Browser::launch();
    // The one place is taken before the page asks.
    let blocker = reverse_ajax_lab::client::Stream::open(addr, "/events/stream", &[]).unwrap();
    wait_for_stat(addr, "streams", 1, "the blocker holds the only place");
    let mut page = browser.open(&lab.url("/lessons/sse"));
    page.wait_for_log("EventSource has given up for good");
    // (Not a wait for `streams` to read 0: the page may take the freed place before /stats
    // is asked, and the 0 never be seen.)
    drop(blocker);
    page.wait_for_log("stream open");
    let text = marker("after-503");
    publish(addr, &text).unwrap();
    page.wait_for_log(&format!("[event] {text}"));
}
