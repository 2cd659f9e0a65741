//! `--parking queue` (`waiting_room`): long polls, streams and WebSockets held without a thread
//! each, served by one dispatcher that never waits on a socket, and nothing lost.

use crate::common;

use common::{deadline, next_json, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client::{publish, Stream};
use reverse_ajax_lab::{ParkingMode, RunningLab};
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

type Socket = tungstenite::WebSocket<TcpStream>;

fn start_queue_lab(tweak: impl FnOnce(&mut reverse_ajax_lab::Config)) -> RunningLab {
    start_lab_with(|c| {
        c.parking = ParkingMode::Queue;
        tweak(c);
    })
}

fn websocket(lab: &RunningLab, query: &str) -> Socket {
    common::websocket_handshake(&format!("{}{query}", lab.lab.websocket_url), None).unwrap()
}

/// The ids in what a stream has sent so far (`id: N` in SSE, `"id":N` in ndjson).
fn ids_in(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|line| match line.strip_prefix("id: ") {
            Some(id) => id.parse().ok(),
            None => serde_json::from_str::<Value>(line).ok()?["id"].as_u64(),
        })
        .collect()
}

/// Four clients (two streams, two WebSockets) are held while no thread serves any of them;
/// every event, a WebSocket client's message among them, reaches every client once and in
/// order; when they leave, the lab holds nothing.
#[test]
fn streams_and_websockets_are_held_without_a_thread_and_miss_nothing() {
    let lab = start_queue_lab(|_| {});
    let addr = lab.addr();
    publish(addr, "before anyone").unwrap();
    let mut sse = Stream::open(addr, "/events/sse?since=0", &[]).unwrap();
    let mut ndjson = Stream::open(addr, "/events/stream?since=0", &[]).unwrap();
    let mut alice = websocket(&lab, "?since=0");
    let mut bob = websocket(&lab, "?since=0");
    wait_until("two streams and two WebSockets are held", || {
        let s = stats(addr);
        s["streams"] == 2 && s["websockets"] == 2 && s["watched_sockets"] == 2
    });
    // No thread holds any of them: no handler thread, no WebSocket thread.
    wait_until("no thread is left with a client", || {
        let s = stats(addr);
        s["connections"] == 0 && s["websocket_threads"] == 0
    });
    let lesson = &stats(addr)["lessons"]["websocket"];
    assert_eq!(
        lesson["requests"], 2,
        "two handshakes, two requests: {lesson}"
    );
    publish(addr, "two\nlines").unwrap();
    alice.send(Message::text("from alice")).unwrap();
    wait_for_stat(addr, "events_published", 3, "alice's message is published");
    publish(addr, "after alice").unwrap();
    for socket in [&mut alice, &mut bob] {
        let ids: Vec<Value> = (0..4).map(|_| next_json(socket)["id"].clone()).collect();
        assert_eq!(ids, [1, 2, 3, 4].map(Value::from));
    }
    let until = deadline();
    let text = sse.read_until(until, |t| t.contains("id: 4\n")).unwrap();
    assert_eq!(ids_in(&text), vec![1, 2, 3, 4], "{text}");
    assert!(text.contains("data: two\ndata: lines\n"), "{text}");
    let text = ndjson
        .read_until(until, |t| t.contains("\"id\":4"))
        .unwrap();
    assert_eq!(ids_in(&text), vec![1, 2, 3, 4], "{text}");
    // They leave: the WebSockets with a close, the streams by hanging up.
    for socket in [&mut alice, &mut bob] {
        common::close_cleanly(socket);
    }
    drop((sse, ndjson));
    wait_until("the lab holds nothing", || {
        let s = stats(addr);
        s["streams"] == 0 && s["websockets"] == 0 && s["watched_sockets"] == 0
    });
}

/// A stream and a WebSocket whose clients stop reading fill their sockets; the dispatcher
/// never waits for them, so a client that reads gets every event while they are stuck, and
/// each stuck one is dropped within `--write-timeout` (and a second) of the write that could
/// not finish.
#[test]
fn a_client_that_stops_reading_holds_up_no_one_and_is_dropped_in_time() {
    let write_timeout = Duration::from_secs(2);
    let lab = start_queue_lab(|c| {
        c.write_timeout = write_timeout;
        c.max_body = 600 * 1024;
    });
    let addr = lab.addr();
    // Small receive buffers, never read after the head: the lab's send buffers fill.
    let stuck = |request: String| {
        let mut socket = common::connect_with_a_small_receive_buffer(addr);
        socket.write_all(request.as_bytes()).unwrap();
        socket
    };
    let _stuck_stream = stuck(format!("GET /events/sse HTTP/1.1\r\nHost: {addr}\r\n\r\n"));
    let _stuck_websocket = stuck(format!(
        "GET /events/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ));
    let mut reader = Stream::open(addr, "/events/sse", &[]).unwrap();
    wait_until("three clients are held", || {
        let s = stats(addr);
        s["streams"] == 2 && s["websockets"] == 1
    });
    // 12 MB each: far more than the stuck clients' buffers and the lab's hold.
    let big = "x".repeat(500 * 1024);
    let mut last = 0;
    for _ in 0..24 {
        last = publish(addr, &big).unwrap();
    }
    let published = Instant::now();
    let text = reader
        .read_until(deadline(), |t| t.contains(&format!("id: {last}\n")))
        .unwrap();
    assert_eq!(
        ids_in(&text).len(),
        24,
        "the reading client got every event"
    );
    wait_until("both stuck clients are dropped", || {
        stats(addr)["slow_consumers"] == 2
    });
    let dropped_after = published.elapsed();
    assert!(
        dropped_after < write_timeout + Duration::from_secs(1),
        "dropped {dropped_after:?} after the last publish, not within --write-timeout + 1 s"
    );
    wait_until("only the reader is held", || {
        let s = stats(addr);
        s["streams"] == 1 && s["websockets"] == 0
    });
}

/// A long poll whose client stops reading: its answer (one 6 MB event, more than the lab's
/// send buffer and the client's small receive buffer hold) is not out within
/// `--write-timeout`, so it is dropped, its place given back, and a client that reads got the
/// same answer meanwhile.
#[test]
fn a_long_poll_whose_answer_is_not_taken_is_dropped_and_holds_up_no_one() {
    let write_timeout = Duration::from_secs(2);
    let lab = start_queue_lab(|c| {
        c.write_timeout = write_timeout;
        c.max_body = 8 * 1024 * 1024;
    });
    let addr = lab.addr();
    let mut stuck = common::connect_with_a_small_receive_buffer(addr);
    write!(
        stuck,
        "GET /events/long-poll?timeout=60 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let reader = std::thread::spawn(move || {
        reverse_ajax_lab::client::get(addr, "/events/long-poll?since=0&timeout=60").unwrap()
    });
    wait_for_stat(addr, "parked", 2, "both long polls are held");
    publish(addr, &"x".repeat(6 * 1024 * 1024)).unwrap();
    let published = Instant::now();
    let answer = reader.join().unwrap();
    let read_after = published.elapsed();
    assert!(
        read_after < write_timeout,
        "the reader had its answer {read_after:?} after the publish: it waited for the stuck"
    );
    assert_eq!(answer.status, 200);
    assert!(answer.body.len() > 6 * 1024 * 1024, "{}", answer.body.len());
    wait_until("the stuck long poll is dropped", || {
        stats(addr)["slow_consumers"] == 1
    });
    let dropped_after = published.elapsed();
    assert!(
        dropped_after < write_timeout + Duration::from_secs(1),
        "dropped {dropped_after:?} after the publish, not within --write-timeout + 1 s"
    );
    wait_for_stat(addr, "parked", 0, "its place is given back");
}

/// A long poll answered from the room leaves its connection open: the next poll comes on
/// the same connection and is held and answered the same way, three times over.
#[test]
fn a_long_poll_answered_from_the_room_keeps_its_connection_for_the_next() {
    let lab = start_queue_lab(|_| {});
    let addr = lab.addr();
    let mut client = reverse_ajax_lab::client::KeepAlive::connect(addr).unwrap();
    let local = client.socket().local_addr().unwrap();
    for id in 1..=3u64 {
        let publisher = std::thread::spawn(move || {
            wait_until("the poll is held", || stats(addr)["parked"] == 1);
            publish(addr, &format!("event {id}")).unwrap();
        });
        let path = format!("/events/long-poll?since={}&timeout=30", id - 1);
        let answer = client.get(&path).unwrap().json();
        publisher.join().unwrap();
        assert_eq!(answer["events"][0]["id"], id, "{answer}");
        assert_eq!(
            client.socket().local_addr().unwrap(),
            local,
            "a new connection"
        );
    }
    assert_eq!(
        stats(addr)["open_connections"],
        2,
        "the client's and this /stats one"
    );
}

/// A held WebSocket ends as RFC 6455 says, like one with its own thread: a binary frame gets
/// 1003, a message over the limit 1009, each before a clean end of TCP; a client's close is
/// echoed and TCP closes at once.
#[test]
fn a_held_websocket_ends_with_its_close_code() {
    let lab = start_queue_lab(|c| c.max_body = 1024);
    let cases: [(Message, Option<CloseCode>); 3] = [
        (Message::binary(vec![1, 2, 3]), Some(CloseCode::Unsupported)),
        (Message::text("x".repeat(64 * 1024)), Some(CloseCode::Size)),
        (Message::Close(None), None),
    ];
    for (message, code) in cases {
        let mut socket = websocket(&lab, "");
        wait_for_stat(lab.addr(), "websocket_threads", 0, "the socket is held");
        socket.send(message).unwrap();
        let began = Instant::now();
        let mut closed_with = None;
        let ending = loop {
            match socket.read() {
                Ok(Message::Close(frame)) => closed_with = frame.map(|f| f.code),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(closed_with, code);
        assert!(
            matches!(ending, tungstenite::Error::ConnectionClosed),
            "{code:?}: after the close, {ending} instead of a clean end"
        );
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
    }
    wait_for_stat(lab.addr(), "websockets", 0, "every socket is let go");
}

/// The dispatcher keeps the heartbeats: a held stream gets its comment and a held WebSocket
/// its ping every interval; a WebSocket client that never answers (it reads nothing, so
/// sends no pong) is dropped after two, and a stream whose client hangs up is let go within
/// seconds.
#[test]
fn held_clients_get_heartbeats_and_the_silent_or_gone_are_let_go() {
    let lab = start_queue_lab(|c| c.heartbeat = Duration::from_secs(1));
    let addr = lab.addr();
    let mut stream = Stream::open(addr, "/events/sse", &[]).unwrap();
    let mut answering = websocket(&lab, "");
    let silent = websocket(&lab, "");
    wait_for_stat(addr, "websockets", 2, "two sockets are held");
    stream
        .read_until(deadline(), |t| t.contains(": heartbeat\n"))
        .unwrap();
    let pinged = loop {
        match answering.read().unwrap() {
            Message::Ping(_) => break true,
            _ => continue,
        }
    };
    assert!(pinged);
    // The answering socket pongs as it reads: it stays; the silent one goes.
    let until = Instant::now() + Duration::from_secs(20);
    while stats(addr)["websockets"] != 1 {
        assert!(
            Instant::now() < until,
            "the silent socket was never dropped"
        );
        answering
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = answering.read();
    }
    drop(silent);
    let leaving = Stream::open(addr, "/events/sse", &[]).unwrap();
    common::hang_up_and_see_it_let_go(addr, leaving, "streams");
}
