//! XHR long polling: parked requests, woken by events, bounded by deadlines and a limit.

use crate::common;

use common::{
    assert_stat, ids, marker, start_lab, start_lab_with, stats, wait_for_baseline, wait_for_stat,
    wait_until,
};
use reverse_ajax_lab::client::{self, get, publish};
use std::io::Read;
use std::net::TcpStream;
use std::thread;

/// Start a long poll on its own thread; returns the answer's JSON when it comes.
fn long_poll(addr: std::net::SocketAddr, path: &str) -> thread::JoinHandle<serde_json::Value> {
    let path = path.to_string();
    thread::spawn(move || get(addr, &path).unwrap().json())
}

#[test]
fn a_parked_client_gets_an_event_published_while_it_waits() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let waiting = long_poll(addr, "/events/long-poll?since=0&timeout=60");
    wait_for_stat(addr, "parked", 1, "the request is parked");
    assert!(!waiting.is_finished(), "held, not answered");
    publish(addr, "wake up").unwrap();
    let answer = waiting.join().unwrap();
    assert_eq!(ids(&answer), vec![1]);
    assert_eq!(answer["events"][0]["data"], "wake up");
    wait_for_baseline(addr);
}

#[test]
fn an_event_published_between_polls_is_still_delivered() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "first").unwrap();
    let answer = get(addr, "/events/long-poll?since=0").unwrap().json();
    assert_eq!(ids(&answer), vec![1], "waiting events are answered at once");
    // Between two polls: nobody is parked.
    publish(addr, "between").unwrap();
    let answer = get(addr, "/events/long-poll?since=1").unwrap().json();
    assert_eq!(ids(&answer), vec![2]);
    assert_eq!(answer["events"][0]["data"], "between");
}

#[test]
fn the_servlet_mode_loses_events_published_between_polls() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "between").unwrap(); // nobody parked: the original drops it
    let waiting = long_poll(addr, "/events/long-poll?mode=servlet&timeout=60");
    wait_for_stat(addr, "parked", 1, "the request is parked");
    publish(addr, "later").unwrap();
    let answer = waiting.join().unwrap();
    assert_eq!(ids(&answer), vec![2], "event 1 never reaches this client");
}

#[test]
fn the_deadline_answers_an_empty_list_with_the_cursor() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "old").unwrap();
    let answer = get(addr, "/events/long-poll?since=1&timeout=1")
        .unwrap()
        .json();
    common::assert_nothing_new(&answer, 1);
    assert_eq!(stats(addr)["lessons"]["long_polling"]["empty"], 1);
}

#[test]
fn two_hundred_parked_clients_all_receive_the_same_event() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let clients: Vec<_> = (0..200)
        .map(|_| long_poll(addr, "/events/long-poll?since=0&timeout=100"))
        .collect();
    wait_for_stat(addr, "parked", 200, "200 requests are parked");
    assert_eq!(stats(addr)["subscribers"], 200);
    publish(addr, "for everyone").unwrap();
    for client in clients {
        let answer = client.join().unwrap();
        assert_eq!(ids(&answer), vec![1]);
    }
    wait_for_baseline(addr);
}

/// A parked request sleeps on its subscription, not on its socket: so it wakes once a second
/// and looks at its socket (`Request::client_left`). A client that hangs up frees its thread
/// and subscription within seconds, not at its 60 s deadline; one that stays is left alone.
#[test]
fn a_client_that_hangs_up_is_released_long_before_its_deadline() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let staying = client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"").unwrap();
    let leaving = client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"").unwrap();
    common::hang_up_and_see_it_let_go(addr, leaving, "parked");
    assert_eq!(stats(addr)["departed"], 1);
    // The one that stayed is still parked, and gets the next event.
    publish(addr, "for the one that stayed").unwrap();
    let body = common::read_until_closed(staying);
    assert!(body.contains("for the one that stayed"), "{body}");
    wait_for_baseline(addr);
}

#[test]
fn beyond_the_limit_a_long_poll_gets_503_with_retry_after() {
    let _lab = start_lab_with(|c| c.max_parked = 2);
    let addr = _lab.addr();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"").unwrap())
        .collect();
    wait_for_stat(addr, "parked", 2, "two requests are parked");
    let refused = get(addr, "/events/long-poll?timeout=60").unwrap();
    assert_eq!(refused.status, 503);
    assert!(refused.header("Retry-After").is_some());
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("max-parked"));
    // The held ones still get their event.
    publish(addr, "still served").unwrap();
    for socket in held {
        let body = common::read_until_closed(socket);
        assert!(body.contains("still served"), "{body}");
    }
    wait_for_baseline(addr);
}

#[test]
fn bad_input_gets_400() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let bad = [
        "/events/long-poll?timeout=0",
        "/events/long-poll?timeout=-5",
        "/events/long-poll?timeout=99999",
        "/events/long-poll?timeout=soon",
        "/events/long-poll?since=x",
        "/events/long-poll?mode=nope",
    ];
    common::each_gets_400_saying_why(addr, &bad);
}

#[test]
fn page_shows_events_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("long_polling");
    page.wait_for_log("[client] request #1 waiting...");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, Some("parked"), "long");
    page.wait_for_log("[client] request #2 waiting...");
}

/// `--parking queue`: the servlet's AsyncContext idea, requests held without a thread each.
mod queue_parking {
    use super::*;
    use reverse_ajax_lab::ParkingMode;

    fn start_queue_lab() -> reverse_ajax_lab::RunningLab {
        start_lab_with(|c| c.parking = ParkingMode::Queue)
    }

    /// The room is told of departures too: a client that hangs up gives back its place (and
    /// its descriptors) within seconds, not at its deadline.
    #[test]
    fn a_client_that_hangs_up_leaves_the_room_long_before_its_deadline() {
        let lab = start_queue_lab();
        let addr = lab.addr();
        let staying = long_poll(addr, "/events/long-poll?since=0&timeout=60");
        let leaving = client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"").unwrap();
        common::hang_up_and_see_it_let_go(addr, leaving, "parked");
        publish(addr, "for the one that stayed").unwrap();
        assert_eq!(ids(&staying.join().unwrap()), vec![1]);
    }

    #[test]
    fn a_hundred_parked_requests_hold_no_handler_thread() {
        let lab = start_queue_lab();
        let addr = lab.addr();
        let clients: Vec<_> = (0..100)
            .map(|_| long_poll(addr, "/events/long-poll?since=0&timeout=100"))
            .collect();
        wait_for_stat(addr, "parked", 100, "100 requests are held");
        // Every handler thread has ended: the waiting room holds the requests.
        wait_for_stat(addr, "connections", 0, "no handler thread is left");
        publish(addr, "for everyone").unwrap();
        for client in clients {
            assert_eq!(ids(&client.join().unwrap()), vec![1]);
        }
        wait_for_stat(addr, "parked", 0, "the room is empty");
        assert_stat(addr, "subscribers", 1, "only the dispatcher's subscription");
    }

    #[test]
    fn deadlines_and_events_between_polls_work_as_with_threads() {
        let lab = start_queue_lab();
        let addr = lab.addr();
        publish(addr, "old").unwrap();
        let empty = get(addr, "/events/long-poll?since=1&timeout=1")
            .unwrap()
            .json();
        common::assert_nothing_new(&empty, 1);
        publish(addr, "between").unwrap();
        let answer = get(addr, "/events/long-poll?since=1").unwrap().json();
        assert_eq!(ids(&answer), vec![2]);
        let empty_script = "/events/long-poll-script?callback=f&since=2&timeout=1";
        let script = get(addr, empty_script).unwrap();
        assert_eq!(script.body, r#"/**/f({"events":[],"last":2});"#);
    }

    #[test]
    fn beyond_the_limit_the_room_answers_503() {
        let lab = start_lab_with(|c| {
            c.parking = ParkingMode::Queue;
            c.max_parked = 1;
        });
        let addr = lab.addr();
        let _held = client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"").unwrap();
        wait_for_stat(addr, "parked", 1, "one request is held");
        let refused = get(addr, "/events/long-poll?timeout=60").unwrap();
        assert_eq!(refused.status, 503);
        assert_eq!(refused.header("Retry-After"), Some("2"));
    }
}

#[test]
fn a_cursor_from_a_previous_run_is_taken_as_now() {
    // The lab restarted: ids began again at 1, but the page still holds since=5000.
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "one").unwrap();
    let answer = get(addr, "/events/poll?since=5000").unwrap().json();
    assert_eq!(answer["last"], 1, "the answer resynchronises the cursor");
    let waiting = long_poll(addr, "/events/long-poll?since=5000&timeout=60");
    wait_for_stat(addr, "parked", 1, "the request is parked");
    publish(addr, "two").unwrap();
    assert_eq!(
        ids(&waiting.join().unwrap()),
        vec![2],
        "not stuck waiting for id 5001"
    );
}

/// The wire timeline draws a long poll as a long bar: held open until the event, then
/// answered (green), and the next one opened at once.
#[test]
fn timeline_draws_a_held_long_poll_as_a_long_bar() {
    let (lab, _browser, mut page) = common::browser::open_lesson("long_polling");
    page.wait_for_bars("a long poll has been held for 1.5 s", |bars| {
        bars.iter()
            .any(|b| b["outcome"] == "open" && b["ms"].as_u64().unwrap() >= 1500)
    });
    publish(lab.addr(), &marker("held")).unwrap();
    let bars = page.wait_for_bars(
        "the held poll is answered and the next one is open",
        |bars| {
            bars.iter().any(|b| b["outcome"] == "events")
                && bars.iter().any(|b| b["outcome"] == "open")
        },
    );
    let answered = bars.iter().find(|b| b["outcome"] == "events").unwrap();
    assert!(
        answered["ms"].as_u64().unwrap() >= 1500,
        "held until the event: {answered}"
    );
    assert!(
        bars.iter().all(|b| b["outcome"] != "empty"),
        "no deadline passed, so no empty answer: {bars:?}"
    );
}

/// Clients re-polling while events are published one at a time: every client gets every id
/// once, in order, and promptly. An event published between a handler's "nothing yet" and its
/// request entering the waiting room must still answer it (the room's re-check); without
/// that, the request is stranded until its 20 s deadline and this test fails.
fn every_racing_publish_reaches_every_client(parking: reverse_ajax_lab::ParkingMode) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 16;
    const ROUNDS: u64 = 400;
    let _lab = start_lab_with(|c| c.parking = parking);
    let addr = _lab.addr();
    let cursors: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let cursors = cursors.clone();
            thread::spawn(move || {
                let mut connection = client::KeepAlive::connect(addr).unwrap();
                let mut cursor = 0;
                while cursor < ROUNDS {
                    let path = format!("/events/long-poll?since={cursor}&timeout=20");
                    let answer = connection.get(&path).unwrap().json();
                    for id in ids(&answer) {
                        assert_eq!(id, cursor + 1, "client {i}: a gap or a repeat");
                        cursor = id;
                    }
                    cursors[i].store(cursor, Ordering::Release);
                }
            })
        })
        .collect();
    wait_until("every client is parked", || {
        stats(addr)["parked"] == CLIENTS as u64
    });
    for round in 1..=ROUNDS {
        publish(addr, &format!("round {round}")).unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while cursors.iter().any(|c| c.load(Ordering::Acquire) < round) {
            assert!(
                std::time::Instant::now() < end,
                "round {round}: a client never got the event (stranded until its deadline)"
            );
            thread::yield_now();
        }
    }
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn racing_publishes_reach_every_parked_thread() {
    every_racing_publish_reaches_every_client(reverse_ajax_lab::ParkingMode::Thread);
}

#[test]
fn racing_publishes_are_never_stranded_in_the_waiting_room() {
    every_racing_publish_reaches_every_client(reverse_ajax_lab::ParkingMode::Queue);
}

/// `--idle-timeout` closes connections that send no request; a held long poll is not idle:
/// a long poll held past the idle timeout is still answered.
#[test]
fn a_long_poll_outlives_the_idle_timeout_and_an_idle_connection_does_not() {
    let _lab = start_lab_with(|c| c.idle_timeout = std::time::Duration::from_secs(1));
    let addr = _lab.addr();
    let idle = TcpStream::connect(addr).unwrap();
    let waiting = long_poll(addr, "/events/long-poll?timeout=10");
    wait_for_stat(addr, "parked", 1, "the request is parked");
    // The idle connection is closed by the server: our read sees the end.
    let mut byte = [0u8; 1];
    idle.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let closed_at = std::time::Instant::now();
    assert_eq!(
        (&idle).read(&mut byte).unwrap_or(0),
        0,
        "closed without a word"
    );
    assert!(closed_at.elapsed() < std::time::Duration::from_secs(10));
    // Well past the idle timeout, the long poll is still held and answered.
    common::stays_true_for(
        std::time::Duration::from_millis(1500),
        "the long poll stays parked",
        || stats(addr)["parked"] == 1,
    );
    publish(addr, "worth the wait").unwrap();
    assert_eq!(ids(&waiting.join().unwrap()), vec![1]);
}

/// A keep-alive connection (every browser's) whose long poll was held past the idle timeout
/// keeps serving: the thread that held the poll answers it and reads the next poll on the
/// same connection. (The idle timeout counts only while the thread waits for a request.)
#[test]
fn a_keep_alive_connection_serves_the_next_poll_after_a_long_hold() {
    let _lab = start_lab_with(|c| c.idle_timeout = std::time::Duration::from_secs(1));
    let addr = _lab.addr();
    let mut connection = client::KeepAlive::connect(addr).unwrap();
    let first = connection
        .get("/events/long-poll?since=0&timeout=3")
        .unwrap();
    assert_eq!(
        ids(&first.json()),
        Vec::<u64>::new(),
        "the deadline answered"
    );
    assert_eq!(
        first.header("Connection"),
        None,
        "held 3 s, still keep-alive"
    );
    publish(addr, "next").unwrap();
    let second = connection
        .get("/events/long-poll?since=0&timeout=3")
        .unwrap();
    assert_eq!(ids(&second.json()), vec![1]);
    assert_eq!(second.header("Connection"), None, "keep-alive");
}

/// `--handlers 2`: a fixed pool of handler threads, as in a servlet container whose requests
/// cannot be suspended (chapter 5, Pitfalls).
mod fixed_pool {
    use super::*;
    use reverse_ajax_lab::ParkingMode;
    use std::time::{Duration, Instant};

    /// Two long polls parked in a lab with two handler threads, the first with a 2 s
    /// deadline and the second with 20 s; then a publish. How long the publish took, and
    /// what the long polls got. (The deadlines differ so that which poll frees a thread
    /// first, and so what each one gets, is not a race.)
    fn park_two_then_publish(parking: ParkingMode) -> (Duration, Vec<Vec<u64>>) {
        let lab = start_lab_with(|c| {
            c.handlers = 2;
            c.parking = parking;
        });
        let addr = lab.addr();
        let polls: Vec<_> = [2, 20]
            .iter()
            .map(|timeout| {
                long_poll(
                    addr,
                    &format!("/events/long-poll?since=0&timeout={timeout}"),
                )
            })
            .collect();
        // Read in-process: with both threads held, /stats itself would wait for one.
        wait_until("both long polls are held", || {
            lab.lab.stats.parked.get() == 2
        });
        let started = Instant::now();
        publish(addr, "wake up").unwrap();
        let took = started.elapsed();
        let got = polls.into_iter().map(|p| ids(&p.join().unwrap())).collect();
        (took, got)
    }

    #[test]
    fn parked_long_polls_that_fill_the_pool_keep_out_the_publish_that_would_wake_them() {
        let (took, got) = park_two_then_publish(ParkingMode::Thread);
        // The publish waited for a thread until the first long poll gave up at its deadline...
        assert!(
            took >= Duration::from_millis(1500),
            "published after {took:?}"
        );
        // ...so the first answered empty: the event it waited for could not get in. The
        // thread it freed then took the publish, which woke the second.
        assert_eq!(got, vec![Vec::<u64>::new(), vec![1]]);
    }

    /// Sixty threads that each do `request` at the same moment (a barrier lets them go).
    fn sixty_at_once<T: Send + 'static>(
        request: impl Fn() -> T + Send + Clone + 'static,
    ) -> Vec<std::thread::JoinHandle<T>> {
        let start = std::sync::Arc::new(std::sync::Barrier::new(60));
        (0..60)
            .map(|_| {
                let (start, request) = (start.clone(), request.clone());
                std::thread::spawn(move || {
                    start.wait();
                    request()
                })
            })
            .collect()
    }

    /// `--handlers N` is a hard cap: sixty long polls parked in the waiting room, all woken
    /// by one event and coming back to the pool at once, then sixty connections opened at
    /// once, never have more than N connection threads between them; the rest wait for a
    /// thread, and every one is answered. (Connections back from the waiting room once got a
    /// thread each, past the cap, and two accept threads could both pass its check.)
    #[test]
    fn a_race_of_many_connections_never_has_more_than_n_threads() {
        let lab = start_lab_with(|c| {
            c.handlers = 4;
            c.parking = ParkingMode::Queue;
        });
        let addr = lab.addr();
        let polls = sixty_at_once(move || {
            get(addr, "/events/long-poll?since=0&timeout=30")
                .unwrap()
                .json()
        });
        wait_until("sixty long polls are in the waiting room", || {
            lab.lab.stats.parked.get() == 60
        });
        publish(addr, "everyone back at once").unwrap();
        for poll in polls {
            assert_eq!(ids(&poll.join().unwrap()), vec![1]);
        }
        let burst = sixty_at_once(move || get(addr, "/events/poll?since=0").unwrap().status);
        for status in burst {
            assert_eq!(status.join().unwrap(), 200);
        }
        let pool = lab
            .lab
            .connections
            .get()
            .and_then(std::sync::Weak::upgrade)
            .unwrap();
        let peak = pool.alive_peak.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            peak <= 4,
            "{peak} connection threads at once, with --handlers 4"
        );
        assert_eq!(
            pool.waiting_for_a_thread(),
            0,
            "every waiting connection served"
        );
    }

    #[test]
    fn in_the_waiting_room_the_same_pool_stays_free_and_the_publish_wakes_them() {
        let (took, got) = park_two_then_publish(ParkingMode::Queue);
        assert!(took < Duration::from_secs(1), "published after {took:?}");
        assert_eq!(got, vec![vec![1], vec![1]]);
    }
}
