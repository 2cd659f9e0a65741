//! WebSocket: push, client publish, limits, Origin, pings, close, resume, and threads freed.

use crate::common;

use common::{
    assert_stat, browser::Browser, deadline, marker, next_json, start_lab, start_lab_with, stats,
    wait_for_baseline, wait_for_stat, wait_until,
};
use reverse_ajax_lab::client::{get, publish};
use reverse_ajax_lab::{ParkingMode, RunningLab};
use serde_json::Value;
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

type Socket = WebSocket<TcpStream>;

/// Connect to the lab's WebSocket with an optional Origin header.
fn connect(
    lab: &RunningLab,
    query: &str,
    origin: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    common::websocket_handshake(&format!("{}{query}", lab.lab.websocket_url), origin)
}

#[test]
fn the_server_pushes_each_event_as_a_text_frame() {
    let lab = start_lab();
    let mut socket = connect(&lab, "", None).unwrap();
    wait_for_stat(lab.addr(), "websockets", 1, "subscribed");
    publish(lab.addr(), "pushed\nwith a newline").unwrap();
    let event = next_json(&mut socket);
    assert_eq!(
        event,
        serde_json::json!({"id": 1, "data": "pushed\nwith a newline"})
    );
    let lesson = &stats(lab.addr())["lessons"]["websocket"];
    assert_eq!(
        lesson["requests"], 1,
        "one handshake, one request: {lesson}"
    );
}

#[test]
fn a_client_frame_is_published_to_everyone() {
    let lab = start_lab();
    let mut alice = connect(&lab, "", None).unwrap();
    let mut bob = connect(&lab, "", None).unwrap();
    wait_for_stat(lab.addr(), "subscribers", 2, "both subscribed");
    alice.send(Message::text("hello from alice")).unwrap();
    assert_eq!(next_json(&mut bob)["data"], "hello from alice");
    assert_eq!(next_json(&mut alice)["data"], "hello from alice");
    // And HTTP clients see it too: it is an ordinary event.
    let polled = get(lab.addr(), "/events/poll?since=0").unwrap().json();
    assert_eq!(polled["events"][0]["data"], "hello from alice");
}

#[test]
fn an_oversized_message_closes_with_1009() {
    let lab = start_lab_with(|c| c.max_body = 1024);
    let mut socket = connect(&lab, "", None).unwrap();
    common::assert_oversized_message_gets_1009(lab.addr(), &mut socket, 4096);
    wait_for_baseline(lab.addr());
}

#[test]
fn a_foreign_origin_gets_403_and_the_labs_own_origins_are_accepted() {
    let lab = start_lab();
    match connect(&lab, "", Some("http://evil.example")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected a 403, got {other}"),
        Ok(_) => panic!("a foreign origin was accepted"),
    }
    let own = format!("http://localhost:{}", lab.addr().port());
    assert!(connect(&lab, "", Some(&own)).is_ok());
    assert!(connect(&lab, "", Some(&format!("http://{}", lab.addr()))).is_ok());
    assert!(
        connect(&lab, "", None).is_ok(),
        "no Origin: not a browser, accepted"
    );
    match connect(&lab, "?since=oops", None) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}

/// Behind a proxy the lab does not trust (nginx's usual WebSocket configuration passes Host
/// on), every handshake from a page is refused for its Origin: the refusal says what the lab
/// saw and which `--trust-proxy` to give it, on each WebSocket endpoint that checks.
#[test]
fn a_refused_origin_behind_an_untrusted_proxy_says_which_trust_proxy_to_give() {
    use std::io::{Read, Write};
    let lab = start_lab();
    for path in [
        "/events/ws",
        "/cometd",
        "/atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=websocket",
    ] {
        let mut socket = common::connect(lab.addr());
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: 192.168.1.5:8081\r\nOrigin: http://192.168.1.5:8081\r\n\
             X-Forwarded-For: 192.168.1.20\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{path}: {answer}");
        assert!(answer.contains("192.168.1.5:8081"), "{path}: {answer}");
        assert!(
            answer.contains("--trust-proxy 127.0.0.1"),
            "{path}: {answer}"
        );
    }
}

#[test]
fn a_peer_that_answers_pings_stays_and_one_that_does_not_is_dropped() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let lab = start_lab_with(|c| c.heartbeat = Duration::from_millis(200));
    // This client reads all the time on its own thread (tungstenite answers each ping with a
    // pong as it reads), counting pings and handing text frames over.
    let mut lively = connect(&lab, "", None).unwrap();
    let pings = Arc::new(AtomicU64::new(0));
    let (texts, received) = crossbeam_channel::unbounded();
    let reader = {
        let pings = pings.clone();
        std::thread::spawn(move || loop {
            match lively.read() {
                Ok(Message::Ping(_)) => {
                    pings.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Text(text)) => {
                    let _ = texts.send(text.to_string());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        })
    };
    // This one never reads, so it never answers.
    let _silent = connect(&lab, "", None).unwrap();
    wait_for_stat(lab.addr(), "websockets", 1, "the silent peer is dropped");
    // Five intervals and more: the lively one answered every ping and stays.
    wait_until("five pings answered", || pings.load(Ordering::Relaxed) >= 5);
    assert_eq!(stats(lab.addr())["websockets"], 1);
    publish(lab.addr(), "still here").unwrap();
    let text = received.recv_deadline(deadline()).expect("the event");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["data"],
        "still here"
    );
    drop(reader);
}

/// A client's ping is answered with a pong carrying its payload, by the socket's one thread
/// (tungstenite queues the pong as it reads the ping, and sends it on the next read).
#[test]
fn a_ping_from_the_client_is_answered_with_its_pong() {
    let lab = start_lab();
    let mut socket = connect(&lab, "", None).unwrap();
    socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
        .send(Message::Ping(b"are you there".to_vec().into()))
        .unwrap();
    loop {
        match socket.read().expect("a pong within the read timeout") {
            Message::Pong(payload) => break assert_eq!(&payload[..], b"are you there"),
            _ => continue, // (a server ping, or an event)
        }
    }
}

/// One thread per socket (the one that read its handshake), and one watch: a clean close
/// gives both back.
#[test]
fn a_clean_close_frees_the_thread_and_the_watch() {
    let lab = start_lab();
    let mut sockets: Vec<Socket> = (0..5).map(|_| connect(&lab, "", None).unwrap()).collect();
    wait_for_stat(
        lab.addr(),
        "watched_sockets",
        5,
        "five connected, five watched",
    );
    assert_stat(lab.addr(), "websocket_threads", 5, "one thread per socket");
    for socket in &mut sockets {
        common::close_cleanly(socket);
    }
    wait_for_baseline(lab.addr());
    wait_for_stat(
        lab.addr(),
        "websocket_threads",
        0,
        "no WebSocket thread left",
    );
    wait_for_stat(lab.addr(), "watched_sockets", 0, "no socket watched");
}

/// A frame that arrives in the same packet as the handshake is read with it, not left for a
/// notice that never comes (the watcher sees only bytes still in the kernel).
#[test]
fn a_frame_sent_right_behind_the_handshake_is_published() {
    use std::io::{Read, Write};
    let lab = start_lab();
    let text = marker("behind the handshake");
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut wire = format!(
        "GET /events/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        lab.addr()
    )
    .into_bytes();
    wire.extend([0x81, 0x80 | text.len() as u8]);
    wire.extend(mask);
    wire.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut socket = common::connect(lab.addr());
    socket.write_all(&wire).unwrap();
    let mut answer = [0u8; 12];
    socket.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");
    wait_until("the frame is published", || {
        let polled = get(lab.addr(), "/events/poll?since=0").unwrap().json();
        polled["events"][0]["data"] == text.as_str()
    });
}

#[test]
fn resume_with_since_gets_what_was_missed_first() {
    let lab = start_lab();
    for data in ["one", "two", "three"] {
        publish(lab.addr(), data).unwrap();
    }
    let mut socket = connect(&lab, "?since=1", None).unwrap();
    assert_eq!(next_json(&mut socket)["id"], 2);
    assert_eq!(next_json(&mut socket)["id"], 3);
    publish(lab.addr(), "four").unwrap();
    assert_eq!(next_json(&mut socket)["id"], 4);
}

#[test]
fn a_plain_get_of_the_websocket_endpoint_gets_426_and_the_url_is_the_http_port() {
    let lab = start_lab();
    let answer = get(lab.addr(), "/events/ws").unwrap();
    assert_eq!(answer.status, 426, "{}", answer.body);
    assert_eq!(answer.header("Upgrade"), Some("websocket"));
    assert_eq!(stats(lab.addr())["websocket"], lab.lab.websocket_url);
    assert_eq!(
        lab.lab.websocket_url,
        format!("ws://{}/events/ws", lab.addr()),
        "WebSockets upgrade on the HTTP port"
    );
}

#[test]
fn a_handshake_without_version_13_or_a_proper_key_is_refused() {
    let lab = start_lab();
    let handshake = |version: &str, key: &str| {
        let headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", version),
            ("Sec-WebSocket-Key", key),
        ];
        reverse_ajax_lab::client::request(lab.addr(), "GET", "/events/ws", &headers, b"").unwrap()
    };
    let old = handshake("8", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(old.status, 426);
    assert_eq!(old.header("Sec-WebSocket-Version"), Some("13"));
    assert_eq!(handshake("13", "c2hvcnQ=").status, 400, "a key of 5 bytes");
    assert_eq!(stats(lab.addr())["websockets"], 0);
}

#[test]
fn two_tabs_chat_in_chromium() {
    let lab = start_lab();
    let browser = Browser::launch();
    let mut alice = browser.open(&lab.url("/lessons/websocket"));
    let mut bob = browser.open(&lab.url("/lessons/websocket"));
    alice.wait_for_log("[client] open: 101 Switching Protocols");
    bob.wait_for_log("[client] open: 101 Switching Protocols");
    let text = marker("chat");
    alice.eval(&format!(
        "document.getElementById('message').value = '{text}'; document.getElementById('chat').requestSubmit()"
    ));
    bob.wait_for_log(&format!("[event] {text}"));
    alice.wait_for_log(&format!("[event] {text}"));
    let pushed = marker("pushed");
    publish(lab.addr(), &pushed).unwrap();
    bob.wait_for_log(&format!("[event] {pushed}"));
}

/// Near misses of the lab's own origins are foreign: each handshake gets 403.
#[test]
fn near_miss_origins_get_403() {
    let lab = start_lab();
    for origin in common::near_miss_origins(lab.addr().port()) {
        match connect(&lab, "", Some(&origin)) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}")
            }
            Err(other) => panic!("{origin}: expected a 403, got {other}"),
            Ok(_) => panic!("{origin} was accepted"),
        }
    }
    wait_for_baseline(lab.addr());
}

/// From a cursor the ring has moved past: a `{"missed": k}` frame first, then what it kept.
#[test]
fn a_cursor_past_the_ring_gets_a_missed_frame_first() {
    let lab = start_lab_with(|c| c.history = 4);
    for i in 1..=10 {
        publish(lab.addr(), &format!("e{i}")).unwrap();
    }
    let mut socket = connect(&lab, "?since=0", None).unwrap();
    assert_eq!(next_json(&mut socket), serde_json::json!({"missed": 6}));
    assert_eq!(next_json(&mut socket)["id"], 7);
}

/// `--max-parked` counts long polls, streams and WebSockets together, each on its thread or
/// in the waiting room (`--parking queue`): with a long poll and a stream held under a limit
/// of two, the upgrade gets 503 with `Retry-After`, and so does one more long poll or stream;
/// a socket and a long poll fill the limit as well, and a stream is refused.
#[test]
fn the_limit_counts_long_polls_streams_and_websockets_together() {
    for parking in [ParkingMode::Thread, ParkingMode::Queue] {
        let lab = start_lab_with(|c| {
            c.max_parked = 2;
            c.parking = parking;
        });
        let addr = lab.addr();
        let _poll =
            reverse_ajax_lab::client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"")
                .unwrap();
        let _stream = reverse_ajax_lab::client::Stream::open(addr, "/events/sse", &[]).unwrap();
        wait_until("a long poll and a stream are held", || {
            let s = stats(addr);
            s["parked"] == 1 && s["streams"] == 1
        });
        match connect(&lab, "", None) {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503, "{parking:?}");
                assert!(response.headers().get("Retry-After").is_some());
            }
            Err(other) => panic!("{parking:?}: expected a 503, got {other}"),
            Ok(_) => panic!("{parking:?}: the upgrade went past --max-parked"),
        }
        for path in ["/events/long-poll?timeout=60", "/events/stream"] {
            let refused = get(addr, path).unwrap();
            assert_eq!(refused.status, 503, "{parking:?} {path}");
            assert_eq!(refused.header("Retry-After"), Some("2"), "{path}");
        }
        drop((_poll, _stream));
        wait_until("nothing is held", || {
            let s = stats(addr);
            s["parked"] == 0 && s["streams"] == 0
        });
        let _socket = connect(&lab, "", None).unwrap();
        let _poll =
            reverse_ajax_lab::client::open(addr, "GET", "/events/long-poll?timeout=60", &[], b"")
                .unwrap();
        wait_until("a socket and a long poll are held", || {
            let s = stats(addr);
            s["parked"] == 1 && s["websockets"] == 1
        });
        assert_eq!(
            get(addr, "/events/stream").unwrap().status,
            503,
            "{parking:?}"
        );
    }
}

/// A close the server starts is graceful: its close frame, then it reads what the client
/// still sends (the rest of the oversized message, the client's own close) before closing the
/// socket. Closing with unread bytes would make the kernel send a reset, and the client would
/// see its connection reset (a browser: 1006) instead of a clean end after the 1009.
#[test]
fn a_close_the_server_starts_ends_cleanly_without_a_reset() {
    let lab = start_lab_with(|c| c.max_body = 1024);
    for round in 0..5 {
        let mut socket = connect(&lab, "", None).unwrap();
        // Far more than the limit: most of it is still unread when the server decides.
        socket.send(Message::text("x".repeat(512 * 1024))).unwrap();
        let mut saw_close = false;
        let ending = loop {
            match socket.read() {
                Ok(Message::Close(frame)) => {
                    assert_eq!(frame.unwrap().code, CloseCode::Size);
                    saw_close = true;
                }
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(saw_close, "round {round}: no close frame before {ending}");
        assert!(
            matches!(ending, tungstenite::Error::ConnectionClosed),
            "round {round}: after the close frame, {ending} instead of a clean end"
        );
    }
    wait_for_baseline(lab.addr());
}
