//! How the lab serves HTTP (src/connection.rs, src/request.rs), over raw sockets: one framing
//! per request (RFC 9112), heads that break the rules refused, keep-alive, pipelining, HEAD,
//! `Expect: 100-continue`, HTTP/1.0, and the timeouts. Every refusal changes nothing and the
//! lab lives on.

use crate::common;

use common::{start_lab, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Send `bytes` on a new connection and read until the lab closes it (or 10 s pass).
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut socket = common::connect(addr);
    socket.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status of the first answer to `bytes`.
fn status_of(addr: SocketAddr, bytes: &str) -> u16 {
    let answer = exchange(addr, bytes.as_bytes());
    answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

fn published(addr: SocketAddr) -> u64 {
    stats(addr)["events_published"].as_u64().unwrap()
}

const CLOSE: &str = "Connection: close\r\n";

#[test]
fn content_length_and_transfer_encoding_together_get_400_and_publish_nothing() {
    let _lab = start_lab();
    let addr = _lab.addr();
    // The smuggling classic: a proxy reads the length, the server the chunks (or the other
    // way round), and a second request hides in the first one's body.
    let smuggled = "POST /publish HTTP/1.1\r\nHost: lab\r\nContent-Length: 40\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /publish HTTP/1.1\r\nHost: lab\r\n\r\n";
    let answer = exchange(addr, smuggled.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "one answer: {answer}"
    );
    assert_eq!(published(addr), 0);
}

#[test]
fn a_transfer_coding_other_than_a_single_final_chunked_is_refused() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for coding in ["xchunked", "chunked, identity", "gzip, chunked", "identity"] {
        let request = format!(
            "POST /publish HTTP/1.1\r\nHost: lab\r\nTransfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        assert_eq!(status_of(addr, &request), 501, "{coding}");
    }
    let twice = "POST /publish HTTP/1.1\r\nHost: lab\r\nTransfer-Encoding: chunked\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(addr, twice), 400);
    assert_eq!(published(addr), 0);
}

#[test]
fn a_chunked_body_is_read_and_published() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: lab\r\n{CLOSE}Transfer-Encoding: chunked\r\n\r\n\
         6\r\nhello \r\n5;note=x\r\nworld\r\n0\r\n\r\n"
    );
    let answer = exchange(addr, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let poll = client::get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(poll["events"][0]["data"], "hello world");
}

#[test]
fn heads_that_break_the_rules_get_400_and_the_lab_lives_on() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for (why, head) in [
        (
            "no Host in HTTP/1.1",
            "POST /publish HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "two Hosts",
            "POST /publish HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "space before the colon",
            "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length : 1\r\n\r\nx",
        ),
        (
            "obs-fold",
            "POST /publish HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n 2\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "a bare CR in a value",
            "POST /publish HTTP/1.1\r\nHost: a\r\nX-A: 1\r2\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "a NUL in a value",
            "POST /publish HTTP/1.1\r\nHost: a\r\nX-A: 1\u{0}2\r\nContent-Length: 1\r\n\r\nx",
        ),
        (
            "two lengths",
            "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        ),
        (
            "a signed length",
            "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        ),
    ] {
        assert_eq!(status_of(addr, head), 400, "{why}");
    }
    assert_eq!(published(addr), 0, "nothing was published");
    assert_eq!(client::get(addr, "/stats").unwrap().status, 200);
}

#[test]
fn heads_and_bodies_over_the_limits_get_414_431_and_413() {
    let _lab = start_lab_with(|c| c.max_body = 1024);
    let addr = _lab.addr();
    let target = format!(
        "GET /stats?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(status_of(addr, &target), 414);
    let header = format!(
        "GET /stats HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(9000)
    );
    assert_eq!(status_of(addr, &header), 431);
    let body = format!(
        "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n{}",
        "c".repeat(2000)
    );
    assert_eq!(status_of(addr, &body), 413);
    assert_eq!(published(addr), 0);
}

#[test]
fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let lab = start_lab();
    let mut socket = common::connect(lab.addr());
    let head =
        "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    socket.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    socket.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    socket.write_all(b"hello").unwrap();
    let mut answer = [0u8; 15];
    socket.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK");
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let three = format!(
        "POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\none\
         POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\ntwo\
         GET /events/poll?since=0 HTTP/1.1\r\nHost: a\r\n{CLOSE}\r\n"
    );
    let answer = exchange(addr, three.as_bytes());
    let first = answer
        .find("{\"id\":1}")
        .expect("the first publish answered");
    let second = answer
        .find("{\"id\":2}")
        .expect("the second publish answered");
    let poll = answer.find("\"events\"").expect("the poll answered");
    assert!(first < second && second < poll, "{answer}");
    assert!(answer.contains("\"data\":\"one\"") && answer.contains("\"data\":\"two\""));
}

#[test]
fn head_is_answered_with_the_get_headers_and_no_body() {
    let lab = start_lab();
    let answer = exchange(
        lab.addr(),
        format!("HEAD /stats HTTP/1.1\r\nHost: a\r\n{CLOSE}\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let length: usize = answer
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 0, "the GET's length");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
}

#[test]
fn http_1_0_and_connection_close_end_the_connection_after_the_answer() {
    let _lab = start_lab();
    let addr = _lab.addr();
    // read_to_end returns only because the lab closes the connection.
    for request in [
        "GET /stats HTTP/1.0\r\n\r\n".to_string(),
        format!("GET /stats HTTP/1.1\r\nHost: a\r\n{CLOSE}\r\n"),
    ] {
        let started = Instant::now();
        let answer = exchange(addr, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5), "closed at once");
    }
}

#[test]
fn a_keep_alive_connection_serves_request_after_request() {
    let lab = start_lab();
    let mut socket = common::connect(lab.addr());
    let mut reader = std::io::BufReader::new(socket.try_clone().unwrap());
    for i in 1..=3 {
        let request = format!("POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\ne{i}");
        socket.write_all(request.as_bytes()).unwrap();
        let (status, headers) = client::read_head(&mut reader).unwrap();
        assert_eq!(status, 200);
        let length: u64 = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        let mut body = String::new();
        (&mut reader)
            .take(length)
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, format!("{{\"id\":{i}}}"));
    }
}

#[test]
fn a_stalled_head_is_closed_after_its_deadline() {
    let lab = start_lab_with(|c| c.request_timeout = Duration::from_secs(2));
    let mut socket = TcpStream::connect(lab.addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let started = Instant::now();
    // Half a head, and then nothing: the slowloris attack.
    socket
        .write_all(b"GET /stats HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let mut answer = String::new();
    let _ = socket.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let _lab = start_lab_with(|c| c.idle_timeout = Duration::from_secs(1));
    let addr = _lab.addr();
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    wait_until("the connection is open", || {
        stats(addr)["open_connections"].as_u64() >= Some(2)
    });
    let mut nothing = Vec::new();
    // Returns only when the lab closes the connection (0 bytes: its FIN).
    let read = socket.read_to_end(&mut nothing);
    assert!(matches!(read, Ok(0)), "{read:?}");
    wait_for_stat(
        addr,
        "open_connections",
        1,
        "no connection but the /stats one",
    );
}

#[test]
fn an_unknown_expectation_gets_417() {
    let lab = start_lab();
    let request =
        "POST /publish HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(status_of(lab.addr(), request), 417);
}

#[test]
fn a_stream_to_an_http_1_0_client_is_not_chunked_and_ends_with_the_connection() {
    // RFC 9112 §6.1: no Transfer-Encoding to an HTTP/1.0 client (nginx's default to its
    // upstream); the body is the bytes themselves, ended by closing.
    let lab = start_lab();
    let id = client::publish(lab.addr(), "for an old client").unwrap();
    let mut socket = common::connect(lab.addr());
    let ask = format!("GET /events/stream?since={} HTTP/1.0\r\n\r\n", id - 1);
    socket.write_all(ask.as_bytes()).unwrap();
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    while !text.contains("for an old client") {
        let n = socket.read(&mut buffer).unwrap();
        assert!(n > 0, "closed early: {text:?}");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    // The NDJSON line itself, no chunk size before it.
    assert!(body.starts_with("{\""), "{body:?}");
}

/// `chunk-size = 1*HEXDIG`: a sign, a space before it, `0x`, or an overlong number gets 400,
/// and nothing is published (a proxy in front might read such a size another way).
#[test]
fn a_chunk_size_that_is_not_hex_digits_alone_gets_400_and_publishes_nothing() {
    let lab = start_lab();
    let addr = lab.addr();
    let before = published(addr);
    for size in ["+5", " 5", "0x5", "5 ", "-5", "0000000000000005"] {
        let request = format!(
            "POST /publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             {size}\r\nhello\r\n0\r\n\r\n"
        );
        let answer = exchange(addr, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 400 "), "{size:?}: {answer}");
        assert!(answer.contains("chunk size"), "{size:?} says why: {answer}");
    }
    // An extension after whitespace is fine.
    let request = "POST /publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5 ;note=1\r\nhello\r\n0\r\n\r\n";
    assert!(exchange(addr, request.as_bytes()).starts_with("HTTP/1.1 200 "));
    assert_eq!(published(addr), before + 1, "only the valid one published");
}

/// Trailer fields after a chunked body are capped like header fields: 431 past a hundred.
#[test]
fn trailers_past_the_cap_get_431_and_publish_nothing() {
    let lab = start_lab();
    let before = published(lab.addr());
    let trailers = "X-T: 1\r\n".repeat(101);
    let request = format!(
        "POST /publish HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n{trailers}\r\n"
    );
    let answer = exchange(lab.addr(), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(published(lab.addr()), before);
}

/// One deadline for head and body (`--request-timeout`, from the request's first byte): a
/// body that trickles in a byte at a time, each byte well within any per-read wait, is ended
/// with 408 when the deadline passes, not when the body is complete. (Each read once waited
/// up to 10 s with nothing bounding the whole: a byte every 5 s held the thread for good.)
#[test]
fn a_trickling_body_is_ended_with_408_at_the_request_deadline() {
    let lab = start_lab_with(|c| c.request_timeout = Duration::from_secs(2));
    let before = published(lab.addr());
    let mut socket = common::connect(lab.addr());
    let started = Instant::now();
    socket
        .write_all(b"POST /publish HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        .unwrap();
    let mut writer = socket.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut sent = 0;
        // A byte every 200 ms: the whole body would take 20 s.
        while sent < 100 && writer.write_all(b"x").is_ok() {
            sent += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    });
    socket
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        answer.contains("--request-timeout"),
        "says which flag: {answer}"
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "ended at the deadline: {took:?}"
    );
    let _ = socket.shutdown(std::net::Shutdown::Both);
    assert!(
        trickle.join().unwrap() < 100,
        "before the body was complete"
    );
    assert_eq!(published(lab.addr()), before, "nothing published");
}

/// An HTTP/1.0 client that asks to keep the connection is told so (`Connection: keep-alive`:
/// 1.0 closes by default), and its next request is served on it.
#[test]
fn an_http_1_0_keep_alive_answer_says_keep_alive() {
    let lab = start_lab();
    let mut socket = common::connect(lab.addr());
    let mut reader = std::io::BufReader::new(socket.try_clone().unwrap());
    for _ in 0..2 {
        socket
            .write_all(b"GET /stats HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (status, headers) = client::read_head(&mut reader).unwrap();
        assert_eq!(status, 200);
        let says = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        assert_eq!(says("Connection").as_deref(), Some("keep-alive"));
        let length: u64 = says("Content-Length").unwrap().parse().unwrap();
        let mut body = Vec::new();
        (&mut reader).take(length).read_to_end(&mut body).unwrap();
    }
}

/// `HEAD` never gets a body, on any route: every lesson's endpoints, the pages, the
/// assets, streams and long polls included (the buffering lesson once wrote its stream).
#[test]
fn head_gets_no_body_on_any_route() {
    let lab = start_lab();
    let addr = lab.addr();
    let mut paths: Vec<String> = vec![
        "/".into(),
        "/teacher".into(),
        "/stats".into(),
        "/assets/lab.js".into(),
        "/assets/lab.css".into(),
        "/no-such-page".into(),
    ];
    for lesson in reverse_ajax_lab::lessons::LESSONS {
        paths.push(format!("/lessons/{}", lesson.name));
        for (_, path) in lesson.endpoints {
            paths.push(format!(
                "{path}?callback=f&timeout=1&count=1&EIO=4&transport=polling"
            ));
        }
    }
    std::thread::scope(|scope| {
        let checks: Vec<_> = paths
            .iter()
            .map(|path| {
                scope.spawn(move || {
                    let mut socket = common::connect(addr);
                    socket
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let request = format!("HEAD {path} HTTP/1.1\r\nHost: a\r\n{CLOSE}\r\n");
                    socket.write_all(request.as_bytes()).unwrap();
                    let mut answer = Vec::new();
                    let _ = socket.read_to_end(&mut answer);
                    let answer = String::from_utf8_lossy(&answer).into_owned();
                    let ends = answer.find("\r\n\r\n").map(|at| at + 4);
                    (path, ends == Some(answer.len()), answer)
                })
            })
            .collect();
        for check in checks {
            let (path, headless, answer) = check.join().unwrap();
            assert!(headless, "HEAD {path}: {answer:?}");
        }
    });
}
