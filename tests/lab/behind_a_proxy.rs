//! Behind a real nginx: an unmarked stream held in its buffers, the marked one and buffering
//! off passing at once, a long poll past `proxy_read_timeout` answered 504 by nginx, a quiet
//! stream cut and a heartbeat keeping it, WebSocket with and without the upgrade headers,
//! who is who with and without `--trust-proxy` (forged headers changing nothing), and in
//! Chromium: the page through nginx, and six connections per host on HTTP/1.1 against one on
//! HTTP/2.

use crate::common;

use common::browser::Browser;
use common::nginx::Nginx;
use common::{deadline, start_lab, start_lab_with, stats, wait_for_baseline, wait_for_stat};
use reverse_ajax_lab::client::{get, publish, request_from, Stream};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;

/// The `id:` lines of SSE text.
fn sse_ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

/// Read `stream` until it has carried event `id`.
fn read_through(stream: &mut Stream, id: u64, seen: &mut String) {
    while !sse_ids(seen).contains(&id) {
        match stream.next_chunk(deadline()) {
            Ok(Some(chunk)) => seen.push_str(&chunk),
            other => panic!("the stream ended or stalled before event {id}: {other:?}"),
        }
    }
}

/// An event of about 250 bytes: sixteen of them fill one of nginx's 4 KiB buffers.
fn filler(n: u64) -> String {
    format!("event {n} {}", "x".repeat(240))
}

#[test]
fn an_unmarked_stream_waits_in_nginx_buffers_and_comes_in_a_burst() {
    let lab = start_lab();
    let nginx = Nginx::start(lab.addr(), |_| {});
    // nginx's defaults (/bare/): the lab's usual stream, which says X-Accel-Buffering: no...
    let mut marked = Stream::open(nginx.addr, "/bare/events/sse?since=0", &[]).unwrap();
    assert_eq!(marked.status, 200);
    // ...and the same without it, read in a thread that notes how many events had been
    // published when its first event came, and how many came in that first read.
    let published = Arc::new(AtomicU64::new(0));
    let (arrivals, arrived) = crossbeam_channel::unbounded();
    let counter = published.clone();
    let nginx_addr = nginx.addr;
    std::thread::spawn(move || {
        let mut unmarked =
            Stream::open(nginx_addr, "/bare/events/sse-unmarked?since=0", &[]).unwrap();
        let end = Instant::now() + Duration::from_secs(60);
        while let Ok(Some(chunk)) = unmarked.next_chunk(end) {
            let ids = sse_ids(&chunk);
            if !ids.is_empty()
                && arrivals
                    .send((counter.load(Ordering::SeqCst), ids))
                    .is_err()
            {
                return;
            }
        }
    });
    wait_for_stat(lab.addr(), "streams", 2, "both streams are held");

    // Publish one event at a time; the next only once the marked stream has this one.
    let mut seen = String::new();
    for n in 1..=40 {
        published.store(n, Ordering::SeqCst);
        assert_eq!(publish(lab.addr(), &filler(n)).unwrap(), n);
        read_through(&mut marked, n, &mut seen);
    }
    // Its first chunk from nginx is a full 4 KiB buffer: events 1 to 15 or so, at once, and
    // not before about that many were published. (Unbuffered, event 1 would come alone, as
    // soon as the marked stream's.)
    let (published_then, first_ids) = arrived.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(
        published_then >= 10,
        "the unmarked stream's first event came after {published_then} publishes: not held"
    );
    assert!(
        first_ids.len() >= 10 && first_ids[0] == 1,
        "the first chunk of the unmarked stream should be a burst from event 1: {first_ids:?}"
    );
    // Nothing is lost, only late: larger events push the rest out.
    let mut got = first_ids;
    let mut n = 40;
    while !got.contains(&40) {
        n += 1;
        assert!(n < 80, "the unmarked stream never caught up: {got:?}");
        publish(lab.addr(), &"y".repeat(5000)).unwrap();
        while let Ok((_, ids)) = arrived.try_recv() {
            got.extend(ids);
        }
        if !got.contains(&40) {
            if let Ok((_, ids)) = arrived.recv_timeout(Duration::from_millis(500)) {
                got.extend(ids);
            }
        }
    }
    assert_eq!(got[..40], (1..=40).collect::<Vec<u64>>()[..]);
}

#[test]
fn the_unmarked_stream_is_the_sse_stream_without_the_header_that_asks_proxies_not_to_buffer() {
    let lab = start_lab();
    let id = publish(lab.addr(), "already here").unwrap();
    let mut marked = Stream::open(lab.addr(), "/events/sse?since=0", &[]).unwrap();
    let mut unmarked = Stream::open(lab.addr(), "/events/sse-unmarked?since=0", &[]).unwrap();
    assert_eq!(marked.header("X-Accel-Buffering"), Some("no"));
    assert_eq!(unmarked.header("X-Accel-Buffering"), None);
    assert_eq!(
        unmarked.header("Content-Type"),
        marked.header("Content-Type")
    );
    let until_event = |text: &str| text.contains(&format!("id: {id}\ndata: already here\n\n"));
    let marked_text = marked.read_until(deadline(), until_event).unwrap();
    let unmarked_text = unmarked.read_until(deadline(), until_event).unwrap();
    assert_eq!(marked_text, unmarked_text);
    // Bad input: the same 400 as the SSE lesson's.
    let answer = get(lab.addr(), "/events/sse-unmarked?since=abc").unwrap();
    assert_eq!(answer.status, 400);
    drop((marked, unmarked));
    wait_for_baseline(lab.addr());
}

#[test]
fn a_marked_stream_or_buffering_off_passes_each_event_at_once() {
    let lab = start_lab();
    let nginx = Nginx::start(lab.addr(), |_| {});
    let mut streams: Vec<(&str, Stream, String)> = [
        // nginx's defaults; the lab says X-Accel-Buffering: no.
        "/bare/events/sse?since=0",
        // nginx's defaults with proxy_buffering off; the lab says nothing.
        "/unbuffered/events/sse-unmarked?since=0",
        // The recommended location (HTTP/1.1 to the lab): nginx hands each chunk of a chunked
        // answer on as it parses it, marked or not (measured with nginx 1.22).
        "/events/sse-unmarked?since=0",
    ]
    .into_iter()
    .map(|path| {
        let stream = Stream::open(nginx.addr, path, &[]).unwrap();
        assert_eq!(stream.status, 200, "{path}");
        (path, stream, String::new())
    })
    .collect();
    wait_for_stat(lab.addr(), "streams", 3, "the three streams are held");
    // Each event must arrive before the next is published: a buffer would hold it.
    for n in 1..=3 {
        publish(lab.addr(), &format!("small {n}")).unwrap();
        for (path, stream, seen) in &mut streams {
            let end = Instant::now() + Duration::from_secs(10);
            while !sse_ids(seen).contains(&n) {
                match stream.next_chunk(end) {
                    Ok(Some(chunk)) => seen.push_str(&chunk),
                    other => panic!("{path}: event {n} was held back: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn a_long_poll_held_past_the_proxys_read_timeout_is_a_504_from_nginx() {
    let lab = start_lab();
    let nginx = Nginx::start(lab.addr(), |s| s.short_timeout = Duration::from_secs(2));
    // The lab would hold this one for 6 s; nginx waits 2 s for a byte.
    let started = Instant::now();
    let answer = get(
        nginx.addr,
        "/short-timeout/events/long-poll?since=0&timeout=6",
    )
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(answer.header("Server").unwrap_or("").starts_with("nginx"));
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "nginx gave up after {waited:?}"
    );
    // nginx closed its connection to the lab: the lab sees it leave and lets the poll go.
    wait_for_baseline(lab.addr());
    // A deadline below the proxy's timeout: the lab's own empty answer.
    let answer = get(
        nginx.addr,
        "/short-timeout/events/long-poll?since=0&timeout=1",
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["events"], serde_json::json!([]));
}

/// Read a stream through `/short-timeout/` until it ends or has carried `heartbeats`
/// heartbeats: (how long it lasted, the heartbeats seen, whether it was cut).
fn quiet_stream(nginx: &Nginx, heartbeats: usize) -> (Duration, usize, bool) {
    let started = Instant::now();
    let mut stream = Stream::open(nginx.addr, "/short-timeout/events/sse", &[]).unwrap();
    assert_eq!(stream.status, 200);
    let mut text = String::new();
    loop {
        let seen = text.matches(": heartbeat").count();
        if seen >= heartbeats {
            return (started.elapsed(), seen, false);
        }
        match stream.next_chunk(deadline()) {
            Ok(Some(chunk)) => text.push_str(&chunk),
            // nginx ends the answer (or breaks it off): the stream is cut.
            Ok(None) => return (started.elapsed(), seen, true),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => panic!("no end, no heartbeat"),
            Err(_) => return (started.elapsed(), seen, true),
        }
    }
}

#[test]
fn a_stream_quieter_than_the_proxys_read_timeout_is_cut_and_a_heartbeat_keeps_it() {
    // Heartbeats every 4 s, nginx waits 2 s: cut after 2 s of silence.
    let lab = start_lab_with(|c| c.heartbeat = Duration::from_secs(4));
    let nginx = Nginx::start(lab.addr(), |s| s.short_timeout = Duration::from_secs(2));
    let (lasted, heartbeats, cut) = quiet_stream(&nginx, 1);
    assert!(cut && heartbeats == 0, "the stream was not cut");
    assert!(
        lasted >= Duration::from_millis(1900),
        "cut after {lasted:?}"
    );
    wait_for_baseline(lab.addr());
    // Heartbeats every second: three of them, past the 2 s timeout, and still open.
    let lab = start_lab_with(|c| c.heartbeat = Duration::from_secs(1));
    let nginx = Nginx::start(lab.addr(), |s| s.short_timeout = Duration::from_secs(2));
    let (lasted, heartbeats, cut) = quiet_stream(&nginx, 3);
    assert!(!cut && heartbeats == 3, "cut after {lasted:?}");
    assert!(lasted >= Duration::from_millis(2900));
}

/// A WebSocket handshake through `proxy` at `path`, as a page of `origin` makes it.
fn websocket_through(
    proxy: SocketAddr,
    path: &str,
    origin: &str,
) -> Result<tungstenite::WebSocket<TcpStream>, tungstenite::Error> {
    common::websocket_handshake(&format!("ws://{proxy}{path}"), Some(origin))
}

#[test]
fn a_websocket_through_nginx_needs_upgrade_and_connection_passed_on() {
    let localhost: IpAddr = [127, 0, 0, 1].into();
    let lab = start_lab_with(|c| c.trusted_proxies = vec![localhost]);
    let nginx = Nginx::start(lab.addr(), |_| {});
    let page = format!("http://{}", nginx.addr);
    // The recommended location passes the handshake on: events flow through nginx.
    let mut socket = websocket_through(nginx.addr, "/events/ws?since=0", &page).unwrap();
    wait_for_stat(lab.addr(), "websockets", 1, "the socket is held");
    let id = publish(lab.addr(), "through nginx").unwrap();
    let text = loop {
        match socket.read().unwrap() {
            Message::Text(text) => break text.to_string(),
            _ => continue,
        }
    };
    assert!(text.contains("through nginx") && text.contains(&format!("\"id\":{id}")));
    socket.close(None).unwrap();
    // nginx's defaults drop Upgrade and Connection: the lab sees a plain GET, 426.
    match websocket_through(nginx.addr, "/bare/events/ws", &page) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 426),
        other => panic!("expected a 426, got {:?}", other.map(|_| "a socket")),
    }
    wait_for_baseline(lab.addr());
}

/// What the lab says it saw of a request to `path` sent from `from` to `to`.
fn who(from: IpAddr, to: SocketAddr, headers: &[(&str, &str)]) -> serde_json::Value {
    request_from(from, to, "/behind-a-proxy", headers)
        .unwrap()
        .json()
}

#[test]
fn with_trust_proxy_the_lab_believes_its_proxy_and_nobody_else() {
    // nginx connects to the lab from 127.0.0.3; its clients come from 127.0.0.5 and .6.
    let proxy: IpAddr = [127, 0, 0, 3].into();
    let (alice, bob): (IpAddr, IpAddr) = ([127, 0, 0, 5].into(), [127, 0, 0, 6].into());
    let lab = start_lab_with(|c| {
        c.trusted_proxies = vec![proxy];
        c.max_per_client = 2;
    });
    let nginx = Nginx::start(lab.addr(), |s| s.bind = Some(proxy));
    let page = format!("http://{}", nginx.addr);

    // Through nginx: the client nginx saw, and the browser's own origin and URLs.
    let seen = who(alice, nginx.addr, &[]);
    assert_eq!(
        seen["peer"].as_str().unwrap().split(':').next(),
        Some("127.0.0.3")
    );
    assert_eq!(seen["client"], "127.0.0.5");
    assert_eq!(seen["via_proxy"], true);
    assert_eq!(seen["origin"], page.as_str());
    assert_eq!(seen["websocket"], format!("ws://{}/events/ws", nginx.addr));
    // A client's own X-Forwarded-For through nginx is only a claim: still 127.0.0.5.
    let forged = [
        ("X-Forwarded-For", "10.9.9.9"),
        ("X-Forwarded-Host", "evil.example"),
    ];
    let seen = who(alice, nginx.addr, &forged);
    assert_eq!(seen["client"], "127.0.0.5");
    assert_eq!(
        seen["origin"],
        page.as_str(),
        "nginx sets X-Forwarded-Host itself"
    );
    // Straight to the lab, the same forgery changes nothing: 127.0.0.5 is not the proxy.
    let seen = who(alice, lab.addr(), &forged);
    assert_eq!(seen["client"], "127.0.0.5");
    assert_eq!(seen["via_proxy"], false);
    assert_eq!(seen["origin"], format!("http://{}", lab.addr()));

    // The index hands out the address the browser used: nginx's.
    let index = request_from(alice, nginx.addr, "/", &[]).unwrap().body;
    assert!(index.contains(&format!("href=\"{page}/\"")), "{index}");
    // The page's origin through nginx opens the WebSocket; a forged one does not.
    assert!(websocket_through(nginx.addr, "/events/ws", &page).is_ok());
    match websocket_through(nginx.addr, "/events/ws", "http://evil.example") {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| "a socket")),
    }

    // --max-per-client 2 counts each client behind nginx: Alice's third stream is refused,
    // Bob's first is not.
    let open = |from: IpAddr| Stream::open_from(from, nginx.addr, "/events/sse", &[]).unwrap();
    let held = [open(alice), open(alice)];
    assert!(held.iter().all(|s| s.status == 200));
    assert_eq!(open(alice).status, 503);
    let bobs = open(bob);
    assert_eq!(bobs.status, 200);
    drop((held, bobs));
    wait_for_baseline(lab.addr());
}

#[test]
fn without_trust_proxy_the_whole_room_behind_nginx_is_one_client() {
    let proxy: IpAddr = [127, 0, 0, 3].into();
    let (alice, bob): (IpAddr, IpAddr) = ([127, 0, 0, 5].into(), [127, 0, 0, 6].into());
    let lab = start_lab_with(|c| c.max_per_client = 2);
    let nginx = Nginx::start(lab.addr(), |s| s.bind = Some(proxy));
    let page = format!("http://{}", nginx.addr);
    let seen = who(alice, nginx.addr, &[]);
    assert_eq!(seen["client"], "127.0.0.3", "everyone is nginx");
    assert_eq!(seen["via_proxy"], false);
    assert_eq!(
        seen["x_forwarded_for"], "127.0.0.5",
        "though nginx said who it was"
    );
    // The URLs handed out name the lab's own port, which the browser may not reach.
    assert_eq!(seen["origin"], format!("http://{}", lab.addr()));
    // The page's own origin looks foreign: its WebSocket is refused.
    match websocket_through(nginx.addr, "/events/ws", &page) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| "a socket")),
    }
    // Alice and Bob share one client's share.
    let open = |from: IpAddr| Stream::open_from(from, nginx.addr, "/events/sse", &[]).unwrap();
    let held = [open(alice), open(bob)];
    assert!(held.iter().all(|s| s.status == 200));
    assert_eq!(open(bob).status, 503, "Bob pays for Alice's stream");
    drop(held);
    wait_for_baseline(lab.addr());
}

#[test]
fn the_page_through_nginx_shows_the_buffered_stream_waiting_and_the_others_not() {
    let localhost: IpAddr = [127, 0, 0, 1].into();
    let lab = start_lab_with(|c| c.trusted_proxies = vec![localhost]);
    let nginx = Nginx::start(lab.addr(), |_| {});
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/lessons/behind_a_proxy", nginx.addr));
    page.wait_for(
        "the page knows it came through nginx",
        "document.getElementById('where').textContent.includes('through nginx (trusted')",
    );
    page.eval("document.getElementById('start-buffering').click()");
    wait_for_stat(lab.addr(), "streams", 4, "the four streams are held");
    publish(lab.addr(), "one small event").unwrap();
    page.wait_for(
        "B, C and D show the event",
        "['b', 'c', 'd'].every((n) => document.getElementById('count-' + n).textContent === '1')",
    );
    // A (nginx's defaults, unmarked) holds it in nginx's buffer.
    assert_eq!(
        page.eval("document.getElementById('count-a').textContent"),
        "0"
    );
    // The burst button fills the buffer: A gets them all, in a burst.
    page.eval("document.getElementById('burst').click()");
    page.wait_for(
        "A has caught up",
        "Number(document.getElementById('count-a').textContent) >= 16",
    );
    // The WebSocket: through / it opens; through nginx's defaults the browser sees it fail.
    page.eval("document.getElementById('ws-ok').click()");
    page.wait_for_log("[client] WebSocket open through /");
    page.eval("document.getElementById('ws-bare').click()");
    page.wait_for_log("[client] WebSocket through /bare/ closed: code 1006");
}

#[test]
fn chromium_waits_for_a_seventh_connection_on_http1_and_not_on_http2() {
    let lab = start_lab();
    let nginx = Nginx::start_with_tls(lab.addr());
    let browser = Browser::launch_with(&nginx.chromium_flags());

    // HTTP/1.1: six streams open, the seventh waits...
    let mut page = browser.open(&format!("http://{}/lessons/behind_a_proxy", nginx.addr));
    page.wait_for("the page is ready", "typeof seven === 'function'");
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol"),
        "http/1.1"
    );
    page.eval("seven()");
    wait_for_stat(lab.addr(), "streams", 6, "six streams are held");
    page.wait_for("six are open", "sevenOpen() === 6");
    common::stays_true_for(Duration::from_secs(1), "the seventh waits", || {
        stats(lab.addr())["streams"] == 6
    });
    // ...until one of the six closes: then it opens on that connection.
    page.eval("[...held][0].close()");
    page.wait_for(
        "the seventh opens",
        "[...held][6].readyState === EventSource.OPEN",
    );
    page.eval("closeAll()");
    wait_for_stat(lab.addr(), "streams", 0, "the lab lets them go");
    drop(page);

    // HTTP/2 through nginx's TLS port: all seven on one connection.
    let tls = nginx.tls.unwrap();
    let mut page = browser.open(&format!("https://{tls}/lessons/behind_a_proxy"));
    page.wait_for("the page is ready", "typeof seven === 'function'");
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation')[0].nextHopProtocol"),
        "h2"
    );
    page.eval("seven()");
    page.wait_for("all seven are open", "sevenOpen() === 7");
    wait_for_stat(lab.addr(), "streams", 7, "the lab holds seven streams");
}
