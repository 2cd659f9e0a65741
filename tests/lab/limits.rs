//! Nothing kills the lab: near its own limits it refuses, on the accept thread, without a thread. Run
//! against the real binary with a small descriptor limit (`--max-fds`), so each test's
//! numbers are the lab's alone.

use crate::common;

use common::{wait_until, ChildLab};
use reverse_ajax_lab::client::{get, Stream};
use std::net::TcpStream;

fn stats(lab: &ChildLab) -> serde_json::Value {
    common::stats(lab.addr)
}

/// Before its descriptors run out the lab refuses requests for events with 503 (at
/// `--max-parked`, lowered at start to what the descriptors allow, or at the gate, 80 % of
/// them, or on the accept thread), while `/stats` and the pages still answer. When the clients leave,
/// it takes new ones again, and its threads and descriptors return to the baseline.
#[test]
fn near_its_descriptor_limit_the_lab_refuses_clients_for_events_and_still_answers_stats() {
    let lab = ChildLab::start(&["--max-fds", "200", "--heartbeat", "1"]);
    let addr = lab.addr;
    let baseline = lab.resources();
    let mut streams = Vec::new();
    let refused = loop {
        let stream = match Stream::open(addr, "/events/stream", &[]) {
            Ok(stream) => stream,
            Err(e) => panic!("after {} streams ({}): {e}", streams.len(), stats(&lab)),
        };
        if stream.status == 503 {
            break stream;
        }
        assert_eq!(stream.status, 200);
        streams.push(stream);
        // (One descriptor and one thread each.)
        assert!(streams.len() < 200, "200 descriptors, and never refused");
    };
    assert_eq!(refused.header("Retry-After"), Some("2"));
    assert_eq!(refused.header("Connection"), Some("close"));
    assert!(
        streams.len() >= 40,
        "refused too early: {} streams",
        streams.len()
    );
    let s = stats(&lab);
    // Refused by whichever comes first: `--max-parked`, which the lab lowered at start to
    // what it can hold (`limits.holdable`), the gate, or the accept thread.
    assert_eq!(s["max_parked"], s["limits"]["holdable"], "{s}");
    let refusals = s["refused_near_limits"].as_u64().unwrap()
        + s["accept_thread"]["refused"].as_u64().unwrap()
        + s["lessons"]["fetch_streaming"]["errors"].as_u64().unwrap();
    assert!(refusals >= 1, "{s}");
    assert!(
        s["fds"].as_u64().unwrap() < 200,
        "refused before the limit: {s}"
    );
    assert_eq!(
        get(addr, "/lessons/sse").unwrap().status,
        200,
        "pages still answer"
    );
    drop(streams);
    wait_until("events are served again", || {
        get(addr, "/events/poll").unwrap().status == 200
    });
    lab.wait_for_resources(baseline);
}

/// A flood of connections that send nothing: each takes a connection thread until the gate
/// (80 % of the descriptors), then the accept thread answers the rest on the accept thread with no
/// thread: `/stats` and the pages at once, 503 and `Retry-After` for everything else. When
/// the flood leaves, events are served again.
#[test]
fn a_flood_of_idle_connections_is_answered_on_the_accept_thread_which_serves_stats_and_refuses_the_rest(
) {
    let lab = ChildLab::start(&["--max-fds", "200", "--idle-timeout", "60"]);
    let addr = lab.addr;
    // 180 connections: past the gate (160 descriptors, with the lab's own ten or so),
    // whichever of them the accept thread meets first.
    let flood: Vec<TcpStream> = (0..180)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    // Until the flood has been accepted up to the gate, /stats gets a thread of its own;
    // from then on the accept thread answers it.
    wait_until("the flood has taken the descriptors to the gate", || {
        get(addr, "/stats")
            .is_ok_and(|a| a.status == 200 && a.header("X-Lab-Answered-On").is_some())
    });
    assert!(lab.fds_from_proc() >= 150, "the gate is at 160 descriptors");
    // The teacher's view answers, from the accept thread, within 2 s. (While the accept thread is flooded it
    // takes only what a connection has sent by the time it is accepted, so a request that
    // was not yet there is refused with 503 and asked again, as a client would.)
    let on_the_accept_thread = |path: &str| {
        let started = std::time::Instant::now();
        loop {
            let answer = get(addr, path).unwrap();
            if answer.status == 200 {
                return (answer, started.elapsed());
            }
            assert_eq!(answer.status, 503, "{answer:?}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{path}"
            );
        }
    };
    let (answer, took) = on_the_accept_thread("/stats");
    assert!(answer.header("X-Lab-Answered-On").is_some(), "{answer:?}");
    assert!(
        took < std::time::Duration::from_secs(2),
        "/stats took {took:?}"
    );
    on_the_accept_thread("/lessons/sse");
    on_the_accept_thread("/assets/lab.js");
    // Requests for events, and anything else, are refused cleanly.
    let refused = get(addr, "/events/long-poll?timeout=5").unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("Retry-After"), Some("2"));
    assert_eq!(refused.header("Connection"), Some("close"));
    let refused = reverse_ajax_lab::client::post(addr, "/publish", "text/plain", "x").unwrap();
    assert_eq!(
        refused.status, 503,
        "publishing is not done on the accept thread"
    );
    // The flood leaves: events are served again, by connection threads.
    drop(flood);
    wait_until("events are served again, not on the accept thread", || {
        get(addr, "/events/poll")
            .is_ok_and(|r| r.status == 200 && r.header("X-Lab-Answered-On").is_none())
    });
    let s = stats(&lab);
    assert!(s["accept_thread"]["answered"].as_u64() >= Some(3), "{s}");
    assert!(s["accept_thread"]["refused"].as_u64() >= Some(2), "{s}");
}

/// A WebSocket handshake meets the same gate: with the descriptors past 80 % (streams held
/// until the lab refuses), an upgrade is answered 503 with `Retry-After` on the accept thread, with
/// the handshake read first (so the client reads the 503, not a reset). When the clients
/// leave, upgrades succeed again.
#[test]
fn near_its_descriptor_limit_the_lab_refuses_upgrades_with_503() {
    let lab = ChildLab::start(&["--max-fds", "200", "--heartbeat", "1"]);
    let ws = stats(&lab)["websocket"].as_str().unwrap().to_string();
    let upgrade = || {
        let address = ws.trim_start_matches("ws://").split('/').next().unwrap();
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        match tungstenite::client(ws.as_str(), stream) {
            Ok(_) => Ok(101),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let retry = response.headers().get("Retry-After").cloned();
                Err((response.status().as_u16(), retry))
            }
            Err(e) => panic!("the upgrade neither succeeded nor was refused: {e}"),
        }
    };
    assert_eq!(upgrade(), Ok(101));
    let mut held = Vec::new();
    let mut refused = Vec::new();
    while refused.len() < 10 {
        let stream = Stream::open(lab.addr, "/events/stream", &[]).unwrap();
        match stream.status {
            200 => held.push(stream),
            503 => refused.push(stream),
            other => panic!("status {other}"),
        }
        assert!(held.len() < 200, "200 descriptors, and never refused");
    }
    let refusal = upgrade().expect_err("refused near the limit");
    assert_eq!(refusal.0, 503);
    assert_eq!(refusal.1.unwrap(), "2");
    drop((held, refused));
    wait_until("upgrades succeed again", || upgrade() == Ok(101));
}

/// `--max-parked` means what it says and never lowers what the lab can hold: with 20,000 and
/// with 100,000 the lab starts, chooses the same descriptor budget, and lowers a value above
/// what it can hold to that (`limits.holdable`), saying so at start. (It once did the
/// opposite: the larger the value, the smaller the descriptor limit, down to none.)
#[test]
fn a_large_max_parked_starts_the_lab_and_never_lowers_its_budget() {
    let small = ChildLab::start(&["--max-parked", "20000"]);
    let large = ChildLab::start(&["--max-parked", "100000"]);
    let (a, b) = (stats(&small), stats(&large));
    assert_eq!(a["limits"]["fd_limit"], b["limits"]["fd_limit"], "{a} {b}");
    let holdable = b["limits"]["holdable"].as_u64().unwrap();
    assert!(holdable >= 500, "{b}");
    assert!(holdable < b["limits"]["fd_limit"].as_u64().unwrap());
    assert_eq!(
        b["max_parked"].as_u64(),
        Some(holdable),
        "lowered to what it can hold"
    );
    assert!(a["max_parked"].as_u64() <= Some(20_000));
    assert_eq!(get(large.addr, "/events/poll").unwrap().status, 200);
}

/// Where there is no `/proc` (macOS, Windows; here a mount namespace with an empty one) the
/// lab starts, gates descriptors only (no thread budget is made up) and counts what it holds itself: its
/// gate refuses while the connections are held, and lets clients in again once they have
/// closed. (Without `/proc` a debug build once panicked at start on the budget's arithmetic,
/// and a release build's gate only ever added, so that after 80 % of the descriptor limit
/// had been accepted over the whole run it refused everything for good.)
#[test]
fn without_proc_the_lab_starts_and_its_gate_counts_what_it_holds() {
    let lab = ChildLab::start_without_proc(&["--max-fds", "64", "--idle-timeout", "60"]);
    let limits = stats(&lab)["limits"].clone();
    assert_eq!(limits["counted_by"], "itself", "{limits}");
    // As on Windows: no thread limit to read, so none is made up.
    assert_eq!(limits["thread_budget"], serde_json::Value::Null, "{limits}");
    assert_eq!(stats(&lab)["fds"], serde_json::Value::Null);
    // Far more requests, one after another, than the gate would let in at once.
    for n in 0..150 {
        let answer = get(lab.addr, "/events/poll?since=0").unwrap();
        assert_eq!(
            answer.status, 200,
            "request {n}: the gate did not give places back"
        );
    }
    // Held all at once, they meet the gate...
    let held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(lab.addr).unwrap())
        .collect();
    wait_until("the gate counts the held connections", || {
        get(lab.addr, "/events/poll?since=0").unwrap().status == 503
    });
    // ...and once they close, clients are let in again.
    drop(held);
    wait_until("the gate gives their places back", || {
        get(lab.addr, "/events/poll?since=0").unwrap().status == 200
    });
}

/// `GET`/`POST` `path` sent from the address `from`: the answer's status (0: none).
fn status_from(from: &str, addr: std::net::SocketAddr, method: &str, path: &str) -> u16 {
    use std::io::{BufRead, Write};
    let Ok(mut stream) = reverse_ajax_lab::client::connect_from(from.parse().unwrap(), addr) else {
        return 0;
    };
    let body = if method == "POST" { "hello" } else { "" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(request.as_bytes());
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut line = String::new();
    let _ = std::io::BufReader::new(stream).read_line(&mut line);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// One student cannot lock the class out. One address (127.0.0.3) opens as many connections
/// as it can, each trickling a body it never finishes; the lab keeps it to its share
/// (`--max-connections-per-client`, at most half of what the lab holds: here 144 of 288),
/// refuses the rest on the accept thread, counts them, and another address (127.0.0.2) is
/// served every lesson request, every time. (Without the share, the flood filled the gate and
/// every request for events from the other address got 503.)
#[test]
fn one_address_flooding_with_trickling_connections_cannot_lock_another_out() {
    use std::io::Write;
    let lab = ChildLab::start(&["--max-fds", "400", "--request-timeout", "120"]);
    let addr = lab.addr;
    let shares = stats(&lab)["client_shares"].clone();
    let holdable = stats(&lab)["limits"]["holdable"].as_u64().unwrap();
    let share = shares["max_connections"].as_u64().unwrap();
    assert_eq!(share, holdable / 2, "{shares}");
    // The flood: every connection a head and one byte of a 1,000-byte body.
    let mut flood = Vec::new();
    for _ in 0..(2 * holdable) {
        if let Ok(mut stream) =
            reverse_ajax_lab::client::connect_from("127.0.0.3".parse().unwrap(), addr)
        {
            let _ = stream
                .write_all(b"POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nx");
            flood.push(stream);
        }
    }
    wait_until(
        "the flooding address holds its share and is refused the rest",
        || {
            let s = stats(&lab)["client_shares"].clone();
            s["busiest"][0]["client"] == "127.0.0.3"
                && s["busiest"][0]["connections"].as_u64() == Some(share)
                && s["connections_refused"].as_u64() >= Some(holdable)
        },
    );
    // Every lesson request from another address, three times over.
    // (The publish first: the buffered stream answers once it has an event to give.)
    let requests = [
        ("POST", "/publish"),
        ("GET", "/"),
        ("GET", "/lessons/polling"),
        ("GET", "/events/poll?since=0"),
        ("GET", "/events/jsonp?callback=f&since=0"),
        ("GET", "/events/cors?since=0"),
        ("GET", "/events/long-poll?since=0&timeout=1"),
        (
            "GET",
            "/events/long-poll-script?callback=f&since=0&timeout=1",
        ),
        ("GET", "/events/buffered?count=1&since=0"),
        ("GET", "/events/stream?since=0"),
        ("GET", "/events/sse?since=0"),
        ("GET", "/events/iframe?since=0"),
        ("GET", "/events/multipart?since=0"),
        ("GET", "/socket.io/?EIO=4&transport=polling"),
        ("GET", "/stats"),
    ];
    for round in 0..3 {
        for (method, path) in requests {
            assert_eq!(
                status_from("127.0.0.2", addr, method, path),
                200,
                "round {round}: {method} {path} from another address"
            );
        }
    }
    drop(flood);
}
