//! Atmosphere: the handshake and tracking id, each transport's framing, size tracking, resume
//! from the cache after a drop, the refused WebSocket on the HTTP port, bad input, the
//! WebSocket port; the official atmosphere.js in Node and in Chromium; the lesson page.

use crate::common;

use common::browser::Browser;
use common::{deadline, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client::{get, post, publish, request, Stream};
use reverse_ajax_lab::RunningLab;
use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::Message;

const LAB: &str = "/atmosphere/lab";

fn lab() -> RunningLab {
    start_lab_with(|c| c.atmosphere_timeout = Duration::from_secs(2))
}

/// The query atmosphere.js sends: protocol on, size tracking as asked.
fn url(transport: &str, tracking_id: &str, track: bool) -> String {
    format!(
        "{LAB}?X-Atmosphere-tracking-id={tracking_id}&X-Atmosphere-Framework=5.0.7\
         &X-Atmosphere-Transport={transport}&X-atmo-protocol=true{}",
        if track {
            "&X-Atmosphere-TrackMessageSize=true"
        } else {
            ""
        }
    )
}

/// A new resource by long polling's handshake; its tracking id.
fn handshake(addr: SocketAddr, track: bool) -> String {
    let answer = get(addr, &url("long-polling", "0", track)).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let fields: Vec<&str> = answer.body.split('|').collect();
    let id = if track { fields[1] } else { fields[0] };
    let rest = if track { &fields[2..] } else { &fields[1..] };
    assert_eq!(rest, ["60000", "X", ""], "{}", answer.body);
    id.to_string()
}

fn event_id(message: &str) -> u64 {
    serde_json::from_str::<Value>(message).unwrap()["id"]
        .as_u64()
        .unwrap()
}

// ---- The wire -------------------------------------------------------------------------

#[test]
fn the_handshake_names_a_tracking_id_and_a_long_poll_is_held_until_the_broadcast() {
    let lab = lab();
    let answer = get(lab.addr(), &url("long-polling", "0", true)).unwrap();
    // "LENGTH|id|60000|X|", the length counting what follows the first bar.
    let (length, handshake) = answer.body.split_once('|').unwrap();
    assert_eq!(length.parse::<usize>().unwrap(), handshake.len());
    let id = handshake.split('|').next().unwrap().to_string();
    assert_eq!(stats(lab.addr())["atmosphere"]["resources"], 1);

    let addr = lab.addr();
    let held = std::thread::spawn(move || get(addr, &url("long-polling", &id, true)).unwrap());
    wait_for_stat(addr, "parked", 1, "the poll is parked");
    let published = publish(addr, "the broadcast").unwrap();
    let answer = held.join().unwrap();
    let (length, message) = answer.body.split_once('|').unwrap();
    assert_eq!(length.parse::<usize>().unwrap(), message.len());
    assert_eq!(event_id(message), published);
}

#[test]
fn without_size_tracking_each_poll_carries_one_message_and_none_is_lost() {
    let lab = lab();
    let id = handshake(lab.addr(), false);
    let published: Vec<u64> = (1..=3)
        .map(|n| publish(lab.addr(), &format!("event {n}|with a bar")).unwrap())
        .collect();
    // The client takes a whole answer as one message, so one event per answer, in order.
    let received: Vec<u64> = (0..3)
        .map(|_| {
            event_id(
                &get(lab.addr(), &url("long-polling", &id, false))
                    .unwrap()
                    .body,
            )
        })
        .collect();
    assert_eq!(received, published);
}

#[test]
fn a_dropped_stream_resumes_from_its_tracking_id_and_a_newcomer_starts_from_now() {
    let _lab = lab();
    let addr = _lab.addr();
    let mut stream = Stream::open(addr, &url("streaming", "0", true), &[]).unwrap();
    assert_eq!(stream.status, 200);
    let first = stream
        .read_until(deadline(), |t| t.ends_with("|X|"))
        .unwrap();
    let id = first.split('|').nth(1).unwrap().to_string();
    let before = publish(addr, "before").unwrap();
    stream
        .read_until(deadline(), |t| t.contains(&format!("\"id\":{before}")))
        .unwrap();

    // The lab drops the connection; the stream ends.
    let dropped = request(addr, "DELETE", &url("streaming", &id, true), &[], b"").unwrap();
    assert_eq!(dropped.status, 204);
    while stream.next_chunk(deadline()).unwrap().is_some() {}
    wait_until("nothing is connected", || {
        stats(addr)["atmosphere"]["connected"] == serde_json::json!({})
    });
    let away = [
        publish(addr, "away 1").unwrap(),
        publish(addr, "away 2").unwrap(),
    ];

    // Back with the id: the handshake, then exactly what was missed, then live events.
    let mut again = Stream::open(addr, &url("streaming", &id, true), &[]).unwrap();
    let text = again
        .read_until(deadline(), |t| t.contains(&format!("\"id\":{}", away[1])))
        .unwrap();
    assert!(
        text.starts_with(&format!("{}|{id}|", id.len() + 9)),
        "{text}"
    );
    assert!(!text.contains(&format!("\"id\":{before}")), "{text}");
    assert!(text.contains(&format!("\"id\":{}", away[0])), "{text}");
    // A newcomer (tracking id 0) hears only what comes after it.
    let mut newcomer = Stream::open(addr, &url("streaming", "0", true), &[]).unwrap();
    let hello = newcomer
        .read_until(deadline(), |t| t.ends_with("|X|"))
        .unwrap();
    assert!(!hello.contains("away"), "{hello}");
    let live = publish(addr, "live").unwrap();
    for s in [&mut again, &mut newcomer] {
        s.read_until(deadline(), |t| t.contains(&format!("\"id\":{live}")))
            .unwrap();
    }
}

#[test]
fn sse_sends_each_message_as_one_data_event_with_heartbeats() {
    let lab = start_lab_with(|c| c.heartbeat = Duration::from_secs(1));
    let mut stream = Stream::open(lab.addr(), &url("sse", "0", true), &[]).unwrap();
    assert_eq!(stream.header("Content-Type"), Some("text/event-stream"));
    stream
        .read_until(deadline(), |t| t.ends_with("|X|\n\n"))
        .unwrap();
    let id = publish(lab.addr(), "line").unwrap();
    let text = stream
        .read_until(deadline(), |t| t.contains("1|X\n\n") && t.contains("}\n\n"))
        .unwrap();
    let data = text
        .lines()
        .find(|l| l.contains("\"id\""))
        .unwrap()
        .strip_prefix("data: ")
        .unwrap();
    let (length, message) = data.split_once('|').unwrap();
    assert_eq!(length.parse::<usize>().unwrap(), message.len());
    assert_eq!(event_id(message), id);
}

#[test]
fn a_websocket_transport_without_the_handshake_gets_426_and_no_upgrade_is_refused() {
    let lab = lab();
    let answer = get(lab.addr(), &url("websocket", "0", true)).unwrap();
    assert_eq!(answer.status, 426, "{}", answer.body);
    assert_eq!(answer.header("Upgrade"), Some("websocket"));
    let handshake = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let path = format!("{}&no-upgrade=1", url("websocket", "0", true));
    let refused =
        reverse_ajax_lab::client::request(lab.addr(), "GET", &path, &handshake, b"").unwrap();
    assert_eq!(refused.status, 501, "{}", refused.body);
}

#[test]
fn bad_requests_get_4xx_and_change_nothing() {
    let _lab = lab();
    let addr = _lab.addr();
    let published = stats(addr)["events_published"].clone();
    let cases = [
        ("GET", format!("{LAB}?X-Atmosphere-Transport=pigeon"), 400),
        (
            "GET",
            format!("{LAB}?X-Atmosphere-Transport=sse&X-Atmosphere-tracking-id=%3Cb%3E"),
            400,
        ),
        (
            "GET",
            "/atmosphere/no.such?X-Atmosphere-Transport=sse".to_string(),
            404,
        ),
        (
            "GET",
            "/atmosphere/?X-Atmosphere-Transport=sse".to_string(),
            404,
        ),
        ("PUT", url("sse", "0", true), 405),
        ("DELETE", url("sse", "nobody", true), 404),
        ("POST", url("long-polling", "0", true), 400), // an empty message
    ];
    for (method, path, status) in cases {
        let answer = request(addr, method, &path, &[], b"").unwrap();
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
    // The client's heartbeat is not a message.
    let heartbeat = post(addr, &url("long-polling", "0", true), "text/plain", "X").unwrap();
    assert_eq!(heartbeat.status, 204);
    assert_eq!(stats(addr)["events_published"], published);
    assert_eq!(stats(addr)["atmosphere"]["resources"], 0);
}

#[test]
fn a_message_posted_by_a_client_is_broadcast_to_every_transport() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = handshake(addr, true);
    let mut sse = Stream::open(addr, &url("sse", "0", true), &[]).unwrap();
    sse.read_until(deadline(), |t| t.ends_with("|X|\n\n"))
        .unwrap();
    let posted = post(
        addr,
        &url("long-polling", &id, true),
        "text/plain",
        "hi <all>",
    )
    .unwrap();
    assert_eq!(posted.status, 204);
    sse.read_until(deadline(), |t| t.contains(r#""data":"hi <all>""#))
        .unwrap();
}

#[test]
fn a_named_broadcaster_is_a_room_of_its_own() {
    let _lab = lab();
    let addr = _lab.addr();
    let room = |transport: &str| {
        url(transport, "0", true).replace("/atmosphere/lab", "/atmosphere/room-1")
    };
    let mut in_room = Stream::open(addr, &room("streaming"), &[]).unwrap();
    in_room
        .read_until(deadline(), |t| t.ends_with("|X|"))
        .unwrap();
    let mut in_lab = Stream::open(addr, &url("streaming", "0", true), &[]).unwrap();
    in_lab
        .read_until(deadline(), |t| t.ends_with("|X|"))
        .unwrap();
    // A message posted to the room reaches the room only; a hub event reaches `lab` only.
    let posted = post(addr, &room("long-polling"), "text/plain", "to the room").unwrap();
    assert_eq!(posted.status, 204);
    let hub_event = publish(addr, "to the hub").unwrap();
    let lab_text = in_lab
        .read_until(deadline(), |t| t.contains("to the hub"))
        .unwrap();
    // (A second room message, posted after the hub event: had the hub event reached the
    // room, it would stand before this one.)
    post(addr, &room("long-polling"), "text/plain", "room again").unwrap();
    let room_text = in_room
        .read_until(deadline(), |t| t.contains("room again"))
        .unwrap();
    assert!(room_text.contains("to the room"), "{room_text}");
    assert!(!room_text.contains("to the hub"), "{room_text}");
    assert!(!lab_text.contains("to the room"), "{lab_text}");
    assert_eq!(stats(addr)["events_published"], hub_event);
    let names = stats(addr)["atmosphere"]["broadcasters"].clone();
    assert_eq!(names, serde_json::json!(["lab", "room-1"]));
}

#[test]
fn a_resource_away_longer_than_the_timeout_is_forgotten() {
    let lab = lab(); // --atmosphere-timeout 2 s
    let id = handshake(lab.addr(), true);
    assert_eq!(stats(lab.addr())["atmosphere"]["resources"], 1);
    wait_until("the resource is forgotten", || {
        stats(lab.addr())["atmosphere"]["resources"] == 0
    });
    // Its id now names nobody: the next poll is a new resource, with a new handshake.
    let answer = get(lab.addr(), &url("long-polling", &id, true)).unwrap();
    assert!(answer.body.ends_with("|60000|X|"), "{}", answer.body);
    assert!(!answer.body.contains(&id), "{}", answer.body);
    common::wait_for_baseline(lab.addr());
}

// ---- The WebSocket port ---------------------------------------------------------------

fn ws(lab: &RunningLab, origin: Option<&str>) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let port = lab.lab.websocket_port();
    let target = format!("ws://127.0.0.1:{port}{}", url("websocket", "0", false));
    match common::websocket_handshake(&target, origin) {
        Ok(socket) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_websocket_port_checks_the_origin_and_carries_messages_both_ways() {
    let lab = lab();
    for origin in common::near_miss_origins(lab.addr().port()) {
        assert_eq!(ws(&lab, Some(&origin)).err(), Some(403), "{origin}");
    }
    let own = format!("http://{}", lab.addr());
    let mut socket = ws(&lab, Some(&own)).unwrap();
    let first = socket.read().unwrap().into_text().unwrap();
    assert!(first.ends_with("|60000|X|"), "{first}");
    let id = publish(lab.addr(), "to the socket").unwrap();
    let message = socket.read().unwrap().into_text().unwrap();
    assert_eq!(event_id(message.as_str()), id);
    socket.send(Message::text("X")).unwrap(); // a heartbeat: published nowhere
    socket.send(Message::text("from the socket")).unwrap();
    let echoed = socket.read().unwrap().into_text().unwrap();
    assert!(echoed.contains("from the socket"), "{echoed}");
    assert_eq!(event_id(echoed.as_str()), id + 1);
    socket.close(None).unwrap();
    wait_until("the socket's threads end", || {
        let s = stats(lab.addr());
        s["websockets"] == 0 && s["websocket_threads"] == 0 && s["subscribers"] == 0
    });
}

/// A message over `--max-body` on the websocket transport gets 1009, is broadcast nowhere,
/// and the socket's thread is given back.
#[test]
fn an_oversized_websocket_message_gets_1009_and_is_broadcast_nowhere() {
    let lab = start_lab_with(|c| c.max_body = 1024);
    let mut socket = ws(&lab, None).unwrap();
    let handshake = socket.read().unwrap().into_text().unwrap();
    assert!(handshake.ends_with("|60000|X|"), "{handshake}");
    common::assert_oversized_message_gets_1009(lab.addr(), &mut socket, 4096);
}

// ---- The official client, in Node ------------------------------------------------------

fn run_official(scenario: &str) -> Value {
    // Held requests look at their sockets once a second (chapter 5); short holds and
    // heartbeats also find a client that vanished without closing, soon after it did.
    let lab = start_lab_with(|c| {
        c.long_poll_timeout = Duration::from_secs(2);
        c.heartbeat = Duration::from_secs(1);
    });
    let args = [
        scenario.to_string(),
        format!("http://{}", lab.addr()),
        lab.lab.websocket_port().to_string(),
    ];
    let summary = common::run_node_with(
        &["--experimental-websocket"],
        "atmosphere.mjs",
        "atmosphere.js",
        &args,
    );
    wait_until("every connection has ended", || {
        let s = stats(lab.addr());
        s["atmosphere"]["connected"] == serde_json::json!({})
            && s["subscribers"] == 0
            && s["websockets"] == 0
    });
    summary
}

#[test]
fn the_official_client_carries_events_both_ways_on_each_transport() {
    let summary = run_official("transports");
    for transport in ["long-polling", "streaming", "websocket"] {
        assert_eq!(summary[transport]["opened"], transport, "{summary}");
        assert_eq!(summary[transport]["failures"], serde_json::json!([]));
    }
}

#[test]
fn the_official_client_falls_back_when_the_websocket_is_refused() {
    let summary = run_official("fallback");
    assert_eq!(summary["failures"], serde_json::json!(["websocket"]));
    assert_eq!(summary["opened"], "long-polling");
}

#[test]
fn the_official_client_resumes_after_a_drop_with_nothing_lost() {
    let summary = run_official("resume");
    assert_eq!(summary["ids"], summary["expected"], "{summary}");
    assert_eq!(summary["reopens"], 1);
    // The events "while away" were published while nothing was connected.
    assert_eq!(summary["connectedWhileAway"], serde_json::json!({}));
}

// ---- Chromium ------------------------------------------------------------------------------

/// Open the page with `query`, wait for `transport` to open, then an event from the hub and
/// a message from the page must both arrive.
fn chat_over(browser: &Browser, lab: &RunningLab, query: &str, transport: &str) {
    let mut page = browser.open(&format!("http://{}/lessons/atmosphere?{query}", lab.addr()));
    page.wait_for(
        &format!("{transport} opens ({query})"),
        &format!("seen.transport === '{transport}' && seen.trackingId !== null && seen.opens > 0"),
    );
    let id = publish(lab.addr(), &format!("hub to {query}")).unwrap();
    page.wait_for(
        &format!("event {id} over {transport}"),
        &format!("seen.ids.includes({id})"),
    );
    page.eval(&format!(
        "document.getElementById('text').value = 'page says {transport}'; \
         document.getElementById('publish-form').requestSubmit()"
    ));
    page.wait_for_log(&format!("[event] page says {transport}"));
}

#[test]
fn the_official_bundle_works_on_every_transport_and_falls_back_in_chromium() {
    let lab = lab();
    let browser = Browser::launch();
    for transport in ["sse", "streaming", "long-polling", "websocket"] {
        chat_over(
            &browser,
            &lab,
            &format!("client=official&transport={transport}"),
            transport,
        );
    }
    // WebSocket refused (as behind a proxy that drops Upgrade): the fallback carries the chat.
    chat_over(
        &browser,
        &lab,
        "client=official&transport=websocket-refused&fallback=sse",
        "sse",
    );
}

#[test]
fn the_lesson_page_client_works_on_every_transport() {
    let lab = lab();
    let browser = Browser::launch();
    for transport in ["sse", "streaming", "long-polling", "websocket"] {
        chat_over(&browser, &lab, &format!("transport={transport}"), transport);
    }
    // The page shows the broadcaster's filter chain.
    let mut page = browser.open(&format!("http://{}/lessons/atmosphere", lab.addr()));
    page.wait_for_text("filters", "at most 50 a second");
}

#[test]
fn the_official_bundle_resumes_after_a_drop_with_nothing_lost() {
    let lab = lab();
    let (_browser, mut page) =
        common::browser::open_page(&lab, "/lessons/atmosphere?client=official&transport=sse");
    page.wait_for(
        "sse opens",
        "seen.transport === 'sse' && seen.trackingId !== null",
    );
    let before = publish(lab.addr(), "before").unwrap();
    page.wait_for("the first event", &format!("seen.ids.includes({before})"));
    page.eval("document.getElementById('drop').click()");
    wait_until("nothing is connected", || {
        stats(lab.addr())["atmosphere"]["connected"] == serde_json::json!({})
    });
    let away: Vec<u64> = (0..3)
        .map(|n| publish(lab.addr(), &format!("away {n}")).unwrap())
        .collect();
    page.wait_for("the reconnect", "seen.reopens === 1");
    let after = publish(lab.addr(), "after").unwrap();
    page.wait_for("a live event", &format!("seen.ids.includes({after})"));
    let ids = page.eval("JSON.stringify(seen.ids)");
    let expected: Vec<u64> = [before].into_iter().chain(away).chain([after]).collect();
    assert_eq!(
        ids.as_str().unwrap(),
        serde_json::to_string(&expected).unwrap()
    );
}

#[test]
fn the_lesson_page_falls_back_chats_resumes_and_draws_its_connections() {
    let lab = lab();
    let (_browser, mut page) = common::browser::open_page(&lab, "/lessons/atmosphere");
    // The default: WebSocket on this port, refused; the fallback is long polling.
    page.wait_for(
        "the fallback to long polling",
        "seen.transport === 'long-polling' && seen.failures.includes('websocket') && seen.trackingId !== null",
    );
    page.wait_for_log("◄ ");
    let id = publish(lab.addr(), "to the page").unwrap();
    page.wait_for("the event", &format!("seen.ids.includes({id})"));
    page.submit("publish-form", &[("text", "from the page")]);
    page.wait_for_log("[event] from the page");
    // Long polling draws a row of requests: the failed socket, then held polls.
    page.wait_for_bars("the socket's failure and polls", |bars| {
        bars.iter().any(|b| b["outcome"] == "error")
            && bars.iter().filter(|b| b["outcome"] == "events").count() >= 2
    });
    // Dropped by the lab: the page reconnects with its tracking id and misses nothing.
    page.eval("document.getElementById('drop').click()");
    page.wait_for_log("[lab] drop the connection of");
    let away = publish(lab.addr(), "while away").unwrap();
    page.wait_for(
        "the event sent while away",
        &format!("seen.ids.includes({away})"),
    );
    let ids = page.eval("JSON.stringify(seen.ids)");
    let ids: Vec<u64> = serde_json::from_str(ids.as_str().unwrap()).unwrap();
    assert_eq!(ids.iter().filter(|i| **i == away).count(), 1, "{ids:?}");
}

// ---- Broadcasters: filters, rooms, heartbeats ---------------------------------------------

#[test]
fn a_rooms_filter_chain_masks_words_and_limits_the_rate() {
    let _lab = lab();
    let addr = _lab.addr();
    let room =
        |transport: &str| url(transport, "0", true).replace("/atmosphere/lab", "/atmosphere/chat");
    let mut listener = Stream::open(addr, &room("streaming"), &[]).unwrap();
    listener
        .read_until(deadline(), |t| t.ends_with("|X|"))
        .unwrap();
    // The word mask: whole words, any case.
    let posted = post(
        addr,
        &room("long-polling"),
        "text/plain",
        "Darn, what the HECK? darning",
    )
    .unwrap();
    assert_eq!(posted.status, 204);
    let text = listener
        .read_until(deadline(), |t| t.contains("darning"))
        .unwrap();
    assert!(text.contains("****, what the ****? darning"), "{text}");
    // The rate limit: 20 a second to the room; more are refused with 429 and never broadcast.
    let statuses: Vec<u16> = (0..25)
        .map(|n| {
            post(
                addr,
                &room("long-polling"),
                "text/plain",
                &format!("burst {n}"),
            )
            .unwrap()
            .status
        })
        .collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|s| **s == 204).count() <= 20,
        "{statuses:?}"
    );
    // /stats shows each broadcaster's chain.
    let filters = stats(addr)["atmosphere"]["filters"]["chat"].clone();
    assert_eq!(
        filters,
        serde_json::json!(["mask darn, heck", "at most 20 a second"])
    );
}

#[test]
fn at_most_16_rooms_besides_lab_and_an_empty_room_is_freed() {
    let lab = lab(); // --atmosphere-timeout 2 s
    let addr = lab.addr();
    let room = |n: usize| {
        url("long-polling", "0", true).replace("/atmosphere/lab", &format!("/atmosphere/r{n}"))
    };
    assert_eq!(
        get(addr, &url("long-polling", "0", true)).unwrap().status,
        200
    );
    for n in 0..16 {
        assert_eq!(get(addr, &room(n)).unwrap().status, 200, "room {n}");
    }
    assert_eq!(get(addr, &room(16)).unwrap().status, 503, "a 17th room");
    // Their resources expire, then each empty room is freed after the timeout again.
    wait_until("every room is freed", || {
        stats(addr)["atmosphere"]["broadcasters"] == serde_json::json!(["lab"])
    });
    assert_eq!(
        get(addr, &room(16)).unwrap().status,
        200,
        "room for a new one"
    );
}

#[test]
fn the_clients_x_heartbeat_server_sets_the_streams_heartbeat() {
    // The lab's own heartbeat is 60 s here; the client asks for one every second.
    let _lab = start_lab_with(|c| {
        c.atmosphere_timeout = Duration::from_secs(2);
        c.heartbeat = Duration::from_secs(60);
    });
    let addr = _lab.addr();
    let path = format!("{}&X-Heartbeat-Server=1", url("streaming", "0", true));
    let mut stream = Stream::open(addr, &path, &[]).unwrap();
    let started = std::time::Instant::now();
    // The handshake, then the padding `1|X` as heartbeats: two of them within a few seconds.
    let text = stream
        .read_until(deadline(), |t| t.matches("1|X").count() >= 2)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    // Out of range: 400.
    let bad = format!("{}&X-Heartbeat-Server=0", url("streaming", "0", true));
    assert_eq!(get(addr, &bad).unwrap().status, 400);
}

#[test]
fn a_message_written_to_one_resource_reaches_it_alone_now_or_on_its_next_poll() {
    let _lab = lab();
    let addr = _lab.addr();
    // Two streaming clients; their ids come in their handshakes.
    let open = || {
        let mut stream = Stream::open(addr, &url("streaming", "0", true), &[]).unwrap();
        let text = stream
            .read_until(deadline(), |t| t.ends_with("|X|"))
            .unwrap();
        let id = text.split('|').nth(1).unwrap().to_string();
        (stream, id)
    };
    let ((mut alice, _), (mut bob, bob_id)) = (open(), open());
    let to = |target: &str| {
        format!(
            "{}&X-Atmosphere-Target={target}",
            url("long-polling", "0", true)
        )
    };
    assert_eq!(
        post(addr, &to(&bob_id), "text/plain", "for bob only")
            .unwrap()
            .status,
        204
    );
    bob.read_until(deadline(), |t| t.contains("for bob only"))
        .unwrap();
    // A broadcast after it reaches both: Alice's stream never carried Bob's message.
    post(
        addr,
        &url("long-polling", "0", true),
        "text/plain",
        "for everyone",
    )
    .unwrap();
    let alice_text = alice
        .read_until(deadline(), |t| t.contains("for everyone"))
        .unwrap();
    assert!(!alice_text.contains("for bob only"), "{alice_text}");
    // A long-polling client away between polls gets it on its next poll, first.
    let carol = handshake(addr, true);
    assert_eq!(
        post(addr, &to(&carol), "text/plain", "while away")
            .unwrap()
            .status,
        204
    );
    let answer = get(addr, &url("long-polling", &carol, true)).unwrap();
    assert!(answer.body.contains("while away"), "{}", answer.body);
    // An unknown resource: 404.
    assert_eq!(
        post(addr, &to("nobody"), "text/plain", "x").unwrap().status,
        404
    );
}

/// Held long polls and streams look at their sockets once a second: a client that hangs up is
/// let go within seconds, not at the long poll's deadline or the next heartbeat (60 s here),
/// and its resource keeps its place for its next connection.
#[test]
fn held_requests_whose_client_hangs_up_are_let_go_long_before_their_deadline() {
    let _lab = start_lab_with(|c| {
        c.long_poll_timeout = Duration::from_secs(60);
        c.heartbeat = Duration::from_secs(60);
    });
    let addr = _lab.addr();
    for (transport, gauge) in [("long-polling", "parked"), ("streaming", "streams")] {
        let hold = |id: &str| {
            reverse_ajax_lab::client::open(addr, "GET", &url(transport, id, true), &[], b"")
                .unwrap()
        };
        let (staying, leaving) = (handshake(addr, true), handshake(addr, true));
        let held = hold(&staying);
        let hung_up = hold(&leaving);
        common::hang_up_and_see_it_let_go(addr, hung_up, gauge);
        drop(held);
        wait_until("the other is let go too", || stats(addr)[gauge] == 0);
    }
    assert_eq!(stats(addr)["departed"], 4);
}
