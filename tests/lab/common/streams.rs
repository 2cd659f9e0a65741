//! The claims every stream lesson makes (the forever iframe, multipart, fetch streaming,
//! SSE), proved once here and called by each lesson's tests with its own path and framing:
//!
//! - a quiet stream gets a heartbeat, and the heartbeats alone (`--departures off`) find a
//!   client that left: its thread and subscription are freed;
//! - beyond `--max-parked` a stream is refused with 503 and `Retry-After`;
//! - a cursor replays what was published after it first, then the stream goes on live;
//! - a cursor the ring has moved past gets the lesson's `missed` notice first.

use super::{deadline, start_lab_with, stats, wait_for_baseline, wait_until};

/// The first three claims above as three tests in the calling lesson's module, each named
/// for its claim: `stream_claims!(path, heartbeat, ids)`, with the lesson's path, the exact
/// bytes of its heartbeat, and how to read event ids out of its framing.
macro_rules! stream_claims {
    ($path:expr, $heartbeat:expr, $ids:expr) => {
        #[test]
        fn heartbeats_find_a_client_that_left_and_free_its_stream() {
            crate::common::streams::heartbeats_find_a_client_that_left($path, $heartbeat);
        }

        #[test]
        fn beyond_the_limit_a_stream_gets_503() {
            crate::common::streams::beyond_the_limit_a_stream_gets_503($path);
        }

        #[test]
        fn a_cursor_replays_what_was_missed_first() {
            crate::common::streams::a_cursor_replays_what_was_missed_first($path, $ids);
        }
    };
}
use reverse_ajax_lab::client::{self, Stream};
use std::time::Duration;
pub(crate) use stream_claims;

/// `"id":N` in every event, in order: the JSON every stream but SSE carries.
pub fn json_ids(text: &str) -> Vec<u64> {
    text.split("\"id\":")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Promptness, on an open `stream` whose prelude was read: once the lab holds it, each event
/// published (`texts`, in order) arrives as one chunk of its own, `frame(id, text)`, before the
/// next is even published.
pub fn each_event_is_its_own_chunk(
    addr: std::net::SocketAddr,
    stream: &mut Stream,
    texts: &[&str],
    frame: impl Fn(u64, &str) -> String,
) {
    super::wait_for_stat(addr, "streams", 1, "the stream is held");
    for text in texts {
        let id = client::publish(addr, text).unwrap();
        let chunk = stream.next_chunk(deadline()).unwrap().unwrap();
        assert_eq!(chunk, frame(id, text), "event {id}");
    }
}

/// After `--heartbeat` of silence, `heartbeat` arrives (after the lesson's prelude, if it has
/// one); with the look at the socket turned off (`--departures off`), only the writes that
/// fail can find a client that left, and they do: the lab returns to its baseline.
pub fn heartbeats_find_a_client_that_left(path: &str, heartbeat: &str) {
    let lab = start_lab_with(|c| {
        c.heartbeat = Duration::from_millis(200);
        c.departures = false; // the heartbeat alone must find the client gone
    });
    let addr = lab.addr();
    let mut stream = Stream::open(addr, path, &[]).unwrap();
    let text = stream
        .read_until(deadline(), |t| t.ends_with(heartbeat))
        .unwrap();
    assert!(
        !text.contains("\"id\""),
        "no event, only a heartbeat: {text}"
    );
    assert_eq!(stats(addr)["streams"], 1);
    drop(stream);
    wait_for_baseline(addr);
}

/// One stream holds the lab's only place (`--max-parked 1`): the next is refused with 503 and
/// `Retry-After`, never held, and a bad cursor is still a 400.
pub fn beyond_the_limit_a_stream_gets_503(path: &str) {
    let lab = start_lab_with(|c| c.max_parked = 1);
    let addr = lab.addr();
    let _held = Stream::open(addr, path, &[]).unwrap();
    wait_until("one stream is held", || stats(addr)["streams"] == 1);
    let refused = client::get(addr, path).unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("Retry-After").is_some());
    assert_eq!(stats(addr)["streams"], 1);
    let bad = client::get(addr, &format!("{path}?since=zz")).unwrap();
    assert_eq!(bad.status, 400);
}

/// Three events published, then a stream opened at `since=1`: events 2 and 3 come first
/// (`ids` reads them from the lesson's framing), then event 4 live.
pub fn a_cursor_replays_what_was_missed_first(path: &str, ids: impl Fn(&str) -> Vec<u64>) {
    let lab = start_lab_with(|_| {});
    let addr = lab.addr();
    for i in 1..=3 {
        client::publish(addr, &format!("e{i}")).unwrap();
    }
    let mut stream = Stream::open(addr, &format!("{path}?since=1"), &[]).unwrap();
    let text = stream
        .read_until(deadline(), |t| ids(t).len() >= 2)
        .unwrap();
    assert_eq!(ids(&text), vec![2, 3], "{text}");
    client::publish(addr, "e4").unwrap();
    let live = stream
        .read_until(deadline(), |t| !ids(t).is_empty())
        .unwrap();
    assert_eq!(ids(&live), vec![4], "{live}");
}

/// A stream opened at `since=0` on a lab whose ring keeps 4 of the 10 events published: the
/// text up to event 10, which must begin with the stream's `missed` notice for events 1–6.
pub fn stream_past_the_ring(path: &str) -> String {
    let lab = start_lab_with(|c| c.history = 4);
    let addr = lab.addr();
    for i in 1..=10 {
        client::publish(addr, &format!("e{i}")).unwrap();
    }
    let mut stream = Stream::open(addr, &format!("{path}?since=0"), &[]).unwrap();
    stream
        .read_until(deadline(), |t| t.contains("\"id\":10"))
        .unwrap()
}
