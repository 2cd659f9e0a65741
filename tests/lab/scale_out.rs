//! Scale-out through a real Redis: the same ids on two labs, clients of each technique moving
//! between them losing nothing, Redis killed and restarted mid-stream, a slow broker, a lab
//! that joins late; Socket.IO's sessions need the lab that made them; the page in Chromium.

use crate::common;

use common::browser::Browser;
use common::{deadline, ids, start_lab_with, stats, wait_until, RedisServer};
use reverse_ajax_lab::client::{get, post, publish, Stream};
use reverse_ajax_lab::RunningLab;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::Message;

/// A lab on `redis`, naming `peers` (the page reads them).
fn lab_on(redis: &RedisServer, peers: &[SocketAddr]) -> RunningLab {
    let url = redis.url();
    let peers = peers.iter().map(|p| format!("http://{p}")).collect();
    start_lab_with(|c| {
        c.redis = Some(url);
        c.peers = peers;
    })
}

fn two_labs(redis: &RedisServer) -> (RunningLab, RunningLab) {
    (lab_on(redis, &[]), lab_on(redis, &[]))
}

fn poll_ids(addr: SocketAddr, since: u64) -> Vec<u64> {
    ids(&get(addr, &format!("/events/poll?since={since}"))
        .unwrap()
        .json())
}

fn sse_ids(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .map(|id| id.parse().unwrap())
        .collect()
}

fn broker_connected(addr: SocketAddr) -> bool {
    stats(addr)["broker"]["connected"] == true
}

#[test]
fn both_labs_give_each_event_the_same_id() {
    let redis = RedisServer::start();
    let (a, b) = two_labs(&redis);
    let mut published = Vec::new();
    for n in 0..6 {
        let via = if n % 2 == 0 { a.addr() } else { b.addr() };
        published.push(publish(via, &format!("event {n}")).unwrap());
    }
    assert_eq!(published, (1..=6).collect::<Vec<u64>>());
    // Read your writes: each lab has its own event before its publish is answered (the last,
    // 6, went through B: B has it now; A reads it from Redis a moment later).
    assert_eq!(
        poll_ids(b.addr(), 5),
        vec![6],
        "B has its own write at once"
    );
    wait_until("lab A has all six", || poll_ids(a.addr(), 0).len() == 6);
    wait_until("lab B has all six", || poll_ids(b.addr(), 0).len() == 6);
    let on_a = get(a.addr(), "/events/poll?since=0").unwrap().json();
    let on_b = get(b.addr(), "/events/poll?since=0").unwrap().json();
    assert_eq!(on_a, on_b);
    assert_eq!(stats(a.addr())["broker"]["url"], redis.url());
}

#[test]
fn a_lab_that_joins_later_starts_from_the_stream() {
    let redis = RedisServer::start();
    let a = lab_on(&redis, &[]);
    for n in 0..3 {
        publish(a.addr(), &format!("early {n}")).unwrap();
    }
    let late = lab_on(&redis, &[]);
    // Its ring is the stream: a cursor from before it started is served.
    assert_eq!(poll_ids(late.addr(), 1), vec![2, 3]);
    assert_eq!(publish(late.addr(), "and on").unwrap(), 4);
}

#[test]
fn clients_moving_between_labs_miss_nothing() {
    let redis = RedisServer::start();
    let (a, b) = two_labs(&redis);
    let first = publish(a.addr(), "seen on A").unwrap();

    // SSE: read on A, leave, come back to B with Last-Event-ID.
    let mut sse = Stream::open(a.addr(), "/events/sse?since=0", &[]).unwrap();
    sse.read_until(deadline(), |t| sse_ids(t).contains(&first))
        .unwrap();
    drop(sse);
    let away: Vec<u64> = (0..3)
        .map(|n| publish(a.addr(), &format!("while moving {n}")).unwrap())
        .collect();
    let last_event_id = first.to_string();
    let mut sse = Stream::open(
        b.addr(),
        "/events/sse",
        &[("Last-Event-ID", last_event_id.as_str())],
    )
    .unwrap();
    let text = sse
        .read_until(deadline(), |t| sse_ids(t).contains(&away[2]))
        .unwrap();
    assert_eq!(sse_ids(&text), away);

    // Long polling: the cursor from A, the poll to B.
    let held = publish(b.addr(), "for the long poll").unwrap();
    let answer = get(a.addr(), &format!("/events/long-poll?since={}", away[2]))
        .unwrap()
        .json();
    assert_eq!(ids(&answer), vec![held]);
    let next = publish(a.addr(), "next").unwrap();
    let answer = get(b.addr(), &format!("/events/long-poll?since={held}"))
        .unwrap()
        .json();
    assert_eq!(ids(&answer), vec![next]);

    // WebSocket: reopened on the other lab with since.
    let url = format!("{}?since={held}", b.lab.websocket_url);
    let address = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut socket, _) = tungstenite::client(url.as_str(), stream).unwrap();
    let frame = socket.read().unwrap().into_text().unwrap();
    let event: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
    assert_eq!(event["id"], next);
    socket.send(Message::text("from the socket on B")).unwrap();
    let frame = socket.read().unwrap().into_text().unwrap();
    assert!(frame.contains("from the socket on B"), "{frame}");
    wait_until("A has B's socket's event too", || {
        poll_ids(a.addr(), next) == vec![next + 1]
    });
}

#[test]
fn socket_io_sessions_need_the_lab_that_made_them_and_cursors_do_not() {
    let redis = RedisServer::start();
    let (a, b) = two_labs(&redis);
    let open = get(a.addr(), "/socket.io/?EIO=4&transport=polling").unwrap();
    let sid = common::between(&open.body, "\"sid\":\"", "\"");
    // The session lives in A's memory: B has never heard of it (a load balancer must be sticky).
    let on_b = get(
        b.addr(),
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .unwrap();
    assert_eq!(on_b.status, 400, "{}", on_b.body);
    assert!(on_b.body.contains("Session ID unknown"), "{}", on_b.body);
    // A cursor is understood anywhere.
    let id = publish(a.addr(), "anywhere").unwrap();
    wait_until("B serves the cursor from A", || {
        poll_ids(b.addr(), id - 1) == vec![id]
    });
}

#[test]
fn redis_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    let mut redis = RedisServer::start();
    let (a, b) = two_labs(&redis);
    let mut streams = [a.addr(), b.addr()].map(|addr| {
        let mut s = Stream::open(addr, "/events/sse?since=0", &[]).unwrap();
        s.read_until(deadline(), |t| t.contains("retry:")).unwrap();
        s
    });
    let mut texts = [String::new(), String::new()];
    let before: Vec<u64> = (0..3)
        .map(|n| publish(a.addr(), &format!("before {n}")).unwrap())
        .collect();
    for (s, text) in streams.iter_mut().zip(&mut texts) {
        text.push_str(&s.read_until(deadline(), |t| sse_ids(t).len() == 3).unwrap());
    }

    let joined = get(a.addr(), "/pushlet/pushlet.srv?p_event=join&p_format=xml").unwrap();
    let pid = common::between(&joined.body, "p_id=\"", "\"");

    redis.kill();
    for addr in [a.addr(), b.addr()] {
        let refused = post(addr, "/publish", "text/plain", "into the void").unwrap();
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.header("Retry-After"), Some("2"));
        assert!(refused.body.contains("broker"), "{}", refused.body);
    }
    // The lessons' own ways to publish refuse in their own forms.
    let atmosphere = "/atmosphere/lab?X-Atmosphere-Transport=long-polling";
    let refused = post(a.addr(), atmosphere, "text/plain", "void").unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    let pushlets = format!(
        "/pushlet/pushlet.srv?p_event=publish&p_id={pid}&p_subject=/lab/events&data=void&p_format=xml"
    );
    let refused = get(a.addr(), &pushlets).unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("nack"), "{}", refused.body);
    wait_until("both labs see the broker gone", || {
        !broker_connected(a.addr()) && !broker_connected(b.addr())
    });
    // The held clients keep their connections meanwhile.
    assert_eq!(stats(a.addr())["streams"], 1);
    assert_eq!(stats(b.addr())["streams"], 1);

    // Back, empty (no persistence): the labs reconnect and ids go on from 3.
    let _redis = RedisServer::on_port(redis.port);
    wait_until("both labs reconnect", || {
        broker_connected(a.addr()) && broker_connected(b.addr())
    });
    let after = [
        publish(b.addr(), "after 1").unwrap(),
        publish(a.addr(), "after 2").unwrap(),
    ];
    assert_eq!(after, [4, 5]);
    for (s, text) in streams.iter_mut().zip(&mut texts) {
        text.push_str(&s.read_until(deadline(), |t| t.contains("id: 5")).unwrap());
        assert_eq!(sse_ids(text), [before.clone(), after.to_vec()].concat());
    }
    assert!(stats(a.addr())["broker"]["reconnects"].as_u64().unwrap() >= 1);
}

#[test]
fn a_slow_broker_makes_publishing_answer_503_within_the_stated_timeout() {
    let redis = RedisServer::start();
    let a = lab_on(&redis, &[]);
    publish(a.addr(), "warm").unwrap();
    // Redis holds every write (and every script) for 4 s: a broker that has become slow.
    assert_eq!(
        redis
            .try_command(&["CLIENT", "PAUSE", "4000", "WRITE"])
            .unwrap(),
        "+OK"
    );
    let started = Instant::now();
    let answer = post(a.addr(), "/publish", "text/plain", "while slow").unwrap();
    let took = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.body);
    // The stated timeout is 1 s (broker::TIMEOUT); a little more for the round trips.
    assert!(took < Duration::from_millis(1800), "{took:?}");
    wait_until("publishing works again", || {
        post(a.addr(), "/publish", "text/plain", "again").is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn a_lab_started_against_no_redis_says_so() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let config = reverse_ajax_lab::Config {
        addr: "127.0.0.1:0".into(),
        generator: None,
        redis: Some(format!("redis://127.0.0.1:{port}")),
        ..Default::default()
    };
    let error = RunningLab::start(config)
        .err()
        .expect("no lab without its broker");
    assert!(error.contains("cannot reach Redis"), "{error}");
}

#[test]
fn the_page_shows_each_event_arriving_from_both_labs_with_one_id() {
    let redis = RedisServer::start();
    // Each names the other, so both HTTP ports are chosen first.
    let ports = [common::free_port(), common::free_port()];
    let lab = |me: u16, peer: u16| {
        let url = redis.url();
        start_lab_with(|c| {
            c.addr = format!("127.0.0.1:{me}");
            c.ws_addr = Some("127.0.0.1:0".into());
            c.other_addr = Some("127.0.0.1:0".into());
            c.redis = Some(url);
            c.peers = vec![format!("http://127.0.0.1:{peer}")];
        })
    };
    let (a, b) = (lab(ports[0], ports[1]), lab(ports[1], ports[0]));
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://{}/lessons/scale_out", a.addr()));
    page.wait_for("both labs are listed", "seen.labs.length === 2");
    let id = publish(b.addr(), "through B").unwrap();
    page.wait_for(
        "the event from both labs",
        &format!("(seen.arrivals[{id}] || []).length === 2"),
    );
    page.submit("publish-form", &[("via", "1"), ("text", "page via B")]);
    page.wait_for(
        "the page's own message from both labs",
        &format!("(seen.arrivals[{}] || []).length === 2", id + 1),
    );
}
