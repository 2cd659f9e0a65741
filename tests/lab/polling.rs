//! HTTP polling: the claims of `src/lessons/polling.rs`, over real sockets.

use crate::common;

use common::{ids, marker, start_lab, stats};
use reverse_ajax_lab::client::{get, publish};

#[test]
fn every_poller_gets_every_event_with_a_cursor() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for i in 0..3 {
        publish(addr, &format!("event {i}")).unwrap();
    }
    // Two tabs polling from the same cursor each see all three: nothing is taken away.
    let first = get(addr, "/events/poll?since=0").unwrap().json();
    let second = get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(ids(&first), vec![1, 2, 3]);
    assert_eq!(ids(&second), vec![1, 2, 3]);
    assert_eq!(first["last"], 3);
    assert_eq!(first["events"][0]["data"], "event 0");
    // The next poll from the returned cursor has nothing new.
    let next = get(addr, "/events/poll?since=3").unwrap().json();
    common::assert_nothing_new(&next, 3);
}

#[test]
fn without_since_a_poll_starts_at_now() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "old news").unwrap();
    let answer = get(addr, "/events/poll").unwrap().json();
    common::assert_nothing_new(&answer, 1);
}

#[test]
fn servlet_mode_splits_events_between_pollers() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "a").unwrap();
    publish(addr, "b").unwrap();
    // Whoever polls first drains the one shared queue...
    let tab_a = get(addr, "/events/poll?mode=servlet").unwrap().json();
    let tab_b = get(addr, "/events/poll?mode=servlet").unwrap().json();
    assert_eq!(ids(&tab_a), vec![1, 2]);
    assert_eq!(
        ids(&tab_b),
        Vec::<u64>::new(),
        "the second tab never sees 1 and 2"
    );
    // ...and the next event goes to whichever asks next.
    publish(addr, "c").unwrap();
    let tab_b = get(addr, "/events/poll?mode=servlet").unwrap().json();
    let tab_a = get(addr, "/events/poll?mode=servlet").unwrap().json();
    assert_eq!(ids(&tab_b), vec![3]);
    assert_eq!(ids(&tab_a), Vec::<u64>::new());
}

#[test]
fn a_cursor_older_than_the_history_says_what_was_missed() {
    let lab = ten_events_in_a_ring_of_four();
    let answer = get(lab.addr(), "/events/poll?since=0").unwrap().json();
    assert_eq!(ids(&answer), vec![7, 8, 9, 10]);
    assert_eq!(answer["missed"], 6);
}

/// A lab whose ring keeps 4 events, after 10 were published.
fn ten_events_in_a_ring_of_four() -> reverse_ajax_lab::RunningLab {
    let lab = common::start_lab_with(|c| c.history = 4);
    for i in 0..10 {
        publish(lab.addr(), &format!("e{i}")).unwrap();
    }
    lab
}

#[test]
fn empty_answers_are_counted() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "x").unwrap();
    get(addr, "/events/poll?since=1").unwrap();
    get(addr, "/events/poll?since=1").unwrap();
    get(addr, "/events/poll?since=0").unwrap();
    // The counters move as each answer is written, a moment after the client has it: wait
    // for them (a wrong count never arrives, and the wait fails).
    common::wait_until(
        "3 requests, 2 empty, 1 event and their bytes are counted",
        || {
            let polling = &stats(addr)["lessons"]["polling"];
            polling["requests"] == 3
                && polling["empty"] == 2
                && polling["events"] == 1
                && polling["bytes"].as_u64().unwrap_or(0) > 100
        },
    );
}

#[test]
fn bad_input_gets_400_and_changes_nothing() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "kept").unwrap();
    let bad = [
        "/events/poll?since=abc",
        "/events/poll?since=-1",
        "/events/poll?since=1.5",
        "/events/poll?mode=bogus",
    ];
    common::each_gets_400_saying_why(addr, &bad);
    let answer = get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(ids(&answer), vec![1]);
}

#[test]
fn page_shows_events_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("polling");
    page.wait_for_log("[client] no event");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, None, "polled");
    page.wait_for_log("[client] 1 events");
}

/// The course's Try This: `?interval=200` makes the page poll ten times as often, with no
/// rebuild (the pages are built into the lab). Twenty polls come within about four seconds;
/// at the default 2 s they would take forty.
#[test]
fn the_page_polls_at_the_interval_its_address_asks_for_in_chromium() {
    let lab = start_lab();
    let (_browser, mut page) = common::browser::open_page(&lab, "/lessons/polling?interval=200");
    page.wait_for_log("[client] polling every 200 ms (?interval)");
    let started = std::time::Instant::now();
    let requests = || {
        stats(lab.addr())["lessons"]["polling"]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = requests();
    common::wait_until("twenty polls", || requests() >= before + 20);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "twenty polls took {:?}: not every 200 ms",
        started.elapsed()
    );
}

/// The wire timeline draws polling as a comb: short bars one after another in one lane,
/// grey when empty, green when the answer carried an event.
#[test]
fn timeline_draws_polls_as_short_bars_mostly_empty() {
    let (lab, _browser, mut page) = common::browser::open_lesson("polling");
    let empty =
        |bars: &[serde_json::Value]| bars.iter().filter(|b| b["outcome"] == "empty").count();
    let bars = page.wait_for_bars("two empty polls are drawn", |bars| empty(bars) >= 2);
    for bar in &bars {
        assert_eq!(bar["kind"], "request", "{bar}");
        assert_eq!(bar["lane"], 0, "polls never overlap: {bar}");
        if bar["outcome"] != "open" {
            assert!(
                bar["ms"].as_u64().unwrap() < 1000,
                "a poll is answered at once: {bar}"
            );
        }
    }
    publish(lab.addr(), &marker("drawn")).unwrap();
    let bars = page.wait_for_bars("a poll answered with an event is drawn", |bars| {
        bars.iter().any(|b| b["outcome"] == "events")
    });
    let answered = bars.iter().find(|b| b["outcome"] == "events").unwrap();
    assert!(answered["ms"].as_u64().unwrap() < 1000, "{answered}");
}

/// The original's shared queue grew without bound while nobody polled; ours keeps at most
/// `--history` events, the oldest dropped first.
#[test]
fn the_servlet_queue_is_bounded_by_the_history() {
    let lab = ten_events_in_a_ring_of_four();
    let drained = get(lab.addr(), "/events/poll?mode=servlet").unwrap().json();
    assert_eq!(ids(&drained), vec![7, 8, 9, 10]);
}
