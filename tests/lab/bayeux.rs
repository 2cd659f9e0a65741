//! Bayeux (CometD): the protocol by hand over raw HTTP (handshake, connects held and answered,
//! subscriptions with wildcards, publishing, errors, the ack extension, expiry), then the
//! official `cometd` client in Node (`tests/node/bayeux.mjs`) and in Chromium, and the page.

use crate::common;

use common::{assert_stat, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client::{get, post, publish, request};
use reverse_ajax_lab::RunningLab;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn lab() -> RunningLab {
    lab_holding(Duration::from_millis(2000), Duration::from_millis(1000))
}

/// A lab that holds a connect for `timeout` and forgets a client `max_interval` after its
/// last connect.
fn lab_holding(timeout: Duration, max_interval: Duration) -> RunningLab {
    start_lab_with(|c| {
        c.bayeux.timeout = timeout;
        c.bayeux.max_interval = max_interval;
    })
}

/// POST a batch; the replies.
fn send(addr: SocketAddr, batch: Value) -> Vec<Value> {
    let answer = post(addr, "/cometd", "application/json", &batch.to_string()).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json().as_array().unwrap().clone()
}

/// A handshaken client's id (with the ack extension when `acks`).
fn handshake(addr: SocketAddr, acks: bool) -> String {
    let replies = send(
        addr,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "1",
                "supportedConnectionTypes": ["long-polling"], "ext": {"ack": acks}}]),
    );
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    replies[0]["clientId"].as_str().unwrap().to_string()
}

fn connect(addr: SocketAddr, client: &str, ext: Value) -> Vec<Value> {
    send(
        addr,
        json!([{"channel": "/meta/connect", "clientId": client, "id": "c",
                "connectionType": "long-polling", "ext": ext}]),
    )
}

fn subscribe(addr: SocketAddr, client: &str, channel: &str) -> Value {
    let replies = send(
        addr,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": channel, "id": "s"}]),
    );
    replies[0].clone()
}

fn deliveries(replies: &[Value]) -> Vec<&Value> {
    replies
        .iter()
        .filter(|r| r["successful"].is_null())
        .collect()
}

#[test]
fn the_handshake_gives_an_id_the_connection_types_and_advice() {
    let lab = lab();
    let replies = send(
        lab.addr(),
        json!({"channel": "/meta/handshake", "version": "1.0", "id": "7",
               "supportedConnectionTypes": ["websocket", "long-polling"]}),
    );
    let reply = &replies[0];
    assert_eq!(reply["id"], "7", "the id is echoed");
    assert_eq!(
        reply["supportedConnectionTypes"],
        json!(["websocket", "long-polling", "callback-polling"])
    );
    assert_eq!(reply["advice"]["reconnect"], "retry");
    assert_eq!(reply["advice"]["timeout"], 2000);
    assert!(reply["clientId"].as_str().unwrap().len() >= 20);
    let refused = send(
        lab.addr(),
        json!([{"channel": "/meta/handshake", "version": "1.0", "supportedConnectionTypes": ["flash"]}]),
    );
    assert_eq!(refused[0]["successful"], false);
    assert!(refused[0]["error"].as_str().unwrap().starts_with("400::"));
}

#[test]
fn the_first_connect_is_answered_at_once_and_the_next_is_held_until_a_delivery() {
    let lab = lab();
    let addr = lab.addr();
    let client = handshake(addr, false);
    let started = Instant::now();
    assert_eq!(connect(addr, &client, json!({}))[0]["successful"], true);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the first connect is not held"
    );
    assert_eq!(subscribe(addr, &client, "/lab/*")["successful"], true);
    let held = std::thread::spawn({
        let client = client.clone();
        move || connect(addr, &client, json!({}))
    });
    wait_for_stat(addr, "parked", 1, "the connect is parked");
    let id = publish(addr, "to the held connect").unwrap();
    let replies = held.join().unwrap();
    assert_eq!(
        deliveries(&replies),
        vec![&json!({"channel": "/lab/events", "data": {"data": "to the held connect", "id": id}})]
    );
    assert_eq!(replies.last().unwrap()["channel"], "/meta/connect");
    // With nothing to deliver, the connect is answered at the advised timeout.
    let started = Instant::now();
    let replies = connect(addr, &client, json!({}));
    assert!(deliveries(&replies).is_empty() && started.elapsed() >= Duration::from_millis(1900));
}

#[test]
fn wildcards_cover_one_segment_or_any_depth_and_services_answer_the_sender_only() {
    let _lab = lab();
    let addr = _lab.addr();
    let (one, deep, other) = (
        handshake(addr, false),
        handshake(addr, false),
        handshake(addr, false),
    );
    for c in [&one, &deep, &other] {
        connect(addr, c, json!({}));
    }
    subscribe(addr, &one, "/chat/*");
    subscribe(addr, &deep, "/chat/**");
    subscribe(addr, &other, "/service/echo");
    let ack = send(
        addr,
        json!([{"channel": "/chat/room1/thread", "clientId": other, "data": {"t": 1}, "id": "p1"},
               {"channel": "/chat/room1", "clientId": other, "data": {"t": 2}, "id": "p2"},
               {"channel": "/service/echo", "clientId": one, "data": "only for one", "id": "p3"}]),
    );
    assert_eq!(
        ack[0],
        json!({"channel": "/chat/room1/thread", "successful": true, "id": "p1"})
    );
    let got = |c: &str| -> Vec<Value> {
        deliveries(&connect(addr, c, json!({})))
            .into_iter()
            .cloned()
            .collect()
    };
    assert_eq!(
        got(&one),
        vec![
            json!({"channel": "/chat/room1", "data": {"t": 2}}),
            // The echo service answers its caller under the request's id.
            json!({"channel": "/service/echo", "data": "only for one", "id": "p3"})
        ]
    );
    assert_eq!(got(&deep).len(), 2, "/chat/** covers both");
    // `other` published; nothing came back to it (it is subscribed to no chat channel, and
    // the echo went to `one`, who sent it). Its connect waits out the timeout.
    assert!(got(&other).is_empty());
}

#[test]
fn a_publish_on_lab_events_goes_into_the_hub() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    let ack = send(
        addr,
        json!([{"channel": "/lab/events", "clientId": client, "data": "from bayeux", "id": "9"}]),
    );
    assert_eq!(
        ack[0],
        json!({"channel": "/lab/events", "successful": true, "id": "9"})
    );
    let polled = get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(polled["events"][0]["data"], "from bayeux");
}

#[test]
fn bad_input_gets_bayeux_errors_and_changes_nothing() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    // Not Bayeux at all: 400 with an error message.
    for body in ["nonsense", "[]", "[1, 2]", "\"/meta/connect\""] {
        let answer = post(addr, "/cometd", "application/json", body).unwrap();
        assert_eq!(answer.status, 400, "{body}");
        assert!(answer.json()[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("400::"));
    }
    let huge: Vec<Value> = (0..101)
        .map(|_| json!({"channel": "/x", "clientId": client}))
        .collect();
    let answer = post(
        addr,
        "/cometd",
        "application/json",
        &Value::Array(huge).to_string(),
    )
    .unwrap();
    assert_eq!(answer.status, 413);
    assert_eq!(
        answer.json(),
        json!([{"successful": false, "error": "413::batch_too_large"}])
    );
    let error = |batch: Value| {
        send(addr, batch)[0]["error"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // CometD's error strings: CODE:REASON:NAME.
    let unknown_connect = send(
        addr,
        json!([{"channel": "/meta/connect", "connectionType": "long-polling"}]),
    );
    assert_told_to_handshake_again(&unknown_connect);
    // The advice to handshake rides on connect replies only, as CometD's.
    let unknown = send(
        addr,
        json!([{"channel": "/chat/x", "clientId": "nobody", "data": 1}]),
    );
    assert_eq!(unknown[0]["error"], "402::session_unknown");
    assert!(unknown[0]["advice"].is_null(), "{unknown:?}");
    // Each bad message (its fields beside the client id) and CometD's error for it.
    for (fields, want) in [
        (json!({}), "400::channel_missing"),
        (json!({"channel": "no-slash"}), "405::channel_invalid"),
        (
            json!({"channel": "/chat/*", "data": 1}),
            "400::channel_wild",
        ),
        (json!({"channel": "/chat/x"}), "400::data_missing"),
        (
            json!({"channel": "/meta/nope"}),
            "400::meta_channel_unknown",
        ),
        (
            json!({"channel": "/meta/subscribe"}),
            "403::subscription_missing",
        ),
        (
            json!({"channel": "/meta/subscribe", "subscription": 7}),
            "403::subscription_invalid",
        ),
        (
            json!({"channel": "/meta/subscribe", "subscription": "/meta/connect"}),
            "403::subscribe_failed",
        ),
    ] {
        let mut message = fields.clone();
        message["clientId"] = json!(client);
        assert_eq!(error(json!([message])), want, "{fields}");
    }
    assert_stat(addr, "bayeux_clients", 1, "the client is still known");
}

#[test]
fn a_newer_connect_answers_the_held_one_and_is_held_in_its_place() {
    let lab = lab();
    let addr = lab.addr();
    let client = handshake(addr, false);
    connect(addr, &client, json!({}));
    subscribe(addr, &client, "/lab/events");
    let older = std::thread::spawn({
        let client = client.clone();
        move || connect(addr, &client, json!({}))
    });
    wait_for_stat(addr, "parked", 1, "the connect is parked");
    // The client's network lost the older request; it connects again.
    let newer = std::thread::spawn({
        let client = client.clone();
        move || connect(addr, &client, json!({}))
    });
    // The older one is answered at once, empty and successful (no 409)...
    let answered = older.join().unwrap();
    assert_eq!(answered.len(), 1, "{answered:?}");
    assert_eq!(answered[0]["successful"], true);
    // ...and the newer one holds the client's place: it gets the next delivery.
    wait_for_stat(addr, "parked", 1, "the newer connect is parked");
    let id = publish(addr, "to the newer connect").unwrap();
    assert_eq!(deliveries(&newer.join().unwrap())[0]["data"]["id"], id);
}

#[test]
fn services_answer_the_caller_under_its_request_id_and_the_policy_denies_with_reasons() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    connect(addr, &client, json!({}));
    // A remote call: /service/time answers the caller, under the request's id.
    let call = send(
        addr,
        json!([{"channel": "/service/time", "clientId": client, "data": {}, "id": "41"}]),
    );
    assert_eq!(call[0]["successful"], true);
    let answer = connect(addr, &client, json!({}));
    let time = deliveries(&answer)[0];
    assert_eq!(time["channel"], "/service/time");
    assert_eq!(time["id"], "41");
    let millis = time["data"]["millis"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(millis) < 60_000, "{time}");
    // A service without a handler answers nothing but the publish's reply.
    let none = send(
        addr,
        json!([{"channel": "/service/nothing", "clientId": client, "data": {}, "id": "42"}]),
    );
    assert_eq!(none[0]["successful"], true);
    // The policy: /secret/** cannot be subscribed to, /announce/** cannot be published to.
    let secret = subscribe(addr, &client, "/secret/plans");
    assert_eq!(secret["error"], "403:secret_channel:subscribe_denied");
    let announce = send(
        addr,
        json!([{"channel": "/announce/all", "clientId": client, "data": "x", "id": "43"}]),
    );
    assert_eq!(announce[0]["error"], "403:read_only_channel:publish_denied");
    assert_eq!(
        subscribe(addr, &client, "/announce/all")["successful"],
        true
    );
}

#[test]
fn a_client_that_never_acknowledges_is_dropped_before_its_resends_outgrow_the_bound() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, true);
    connect(addr, &client, json!({"ack": 0}));
    subscribe(addr, &client, "/lab/events");
    for n in 0..300 {
        publish(addr, &format!("event {n}")).unwrap();
    }
    // It gets them all once, and never acknowledges the batch...
    let first = connect(addr, &client, json!({"ack": 0}));
    assert_eq!(deliveries(&first).len(), 300);
    // ...so its next connect, naming batch 0 again, is its last.
    let dropped = connect(addr, &client, json!({"ack": 0}));
    assert_eq!(
        dropped[0]["error"], "402::session_unknown",
        "{:?}",
        dropped[0]
    );
    assert_eq!(dropped[0]["advice"]["reconnect"], "handshake");
    wait_for_stat(addr, "bayeux_clients", 0, "the client is gone");
}

#[test]
fn the_ack_extension_resends_a_batch_the_client_never_acknowledged() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, true);
    let first = connect(addr, &client, json!({"ack": 0}));
    assert_eq!(first[0]["ext"]["ack"], 0);
    subscribe(addr, &client, "/lab/events");
    let id = publish(addr, "must arrive").unwrap();
    let replies = connect(addr, &client, json!({"ack": 0}));
    let batch = replies.last().unwrap()["ext"]["ack"].as_u64().unwrap();
    assert_eq!(deliveries(&replies)[0]["data"]["id"], id);
    // That answer was lost on the way: the next connect still names the old batch, and the
    // delivery comes again, before anything new.
    let next = publish(addr, "after it").unwrap();
    let again = connect(addr, &client, json!({"ack": 0}));
    let ids: Vec<&Value> = deliveries(&again)
        .iter()
        .map(|d| &d["data"]["id"])
        .collect();
    assert_eq!(ids, vec![&json!(id), &json!(next)]);
    // Acknowledged: never again.
    let last = again.last().unwrap()["ext"]["ack"].as_u64().unwrap();
    assert!(last > batch);
    publish(addr, "the newest").unwrap();
    let acked = connect(addr, &client, json!({"ack": last}));
    assert_eq!(deliveries(&acked).len(), 1, "{acked:?}");
}

#[test]
fn a_client_that_stops_connecting_expires_and_frees_its_subscription() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    connect(addr, &client, json!({}));
    subscribe(addr, &client, "/lab/**");
    assert_eq!(stats(addr)["subscribers"], 1);
    // No connect for --bayeux-max-interval (1 s here): forgotten.
    wait_until("the client expires", || {
        let s = stats(addr);
        s["bayeux_clients"] == 0 && s["subscribers"] == 0
    });
    let replies = connect(addr, &client, json!({}));
    assert_told_to_handshake_again(&replies);
}

#[test]
fn callback_polling_answers_a_script_and_refuses_a_bad_callback() {
    let lab = lab();
    let message = "%5B%7B%22channel%22%3A%22%2Fmeta%2Fhandshake%22%2C%22version%22%3A%221.0%22%2C%22supportedConnectionTypes%22%3A%5B%22callback-polling%22%5D%7D%5D";
    let answer = get(
        lab.addr(),
        &format!("/cometd/handshake?jsonp=_cometd_jsonp_0&message={message}"),
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    common::assert_is_script(&answer);
    assert!(
        answer.body.starts_with("/**/_cometd_jsonp_0([{"),
        "{}",
        answer.body
    );
    let bad = get(
        lab.addr(),
        &format!("/cometd?jsonp=alert(1)//&message={message}"),
    )
    .unwrap();
    assert_eq!(bad.status, 400);
}

#[test]
fn long_polling_names_the_labs_other_origin_with_credentials() {
    let _lab = lab();
    let addr = _lab.addr();
    let other = common::own_other_origin(addr);
    let batch = r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]"#;
    let headers = [
        ("Origin", other.as_str()),
        ("Content-Type", "application/json"),
    ];
    let answer = request(addr, "POST", "/cometd", &headers, batch.as_bytes()).unwrap();
    common::assert_allows_with_credentials(&answer, &other);
    let preflight = common::from_origin(addr, "OPTIONS", "/cometd/handshake", &other);
    assert_eq!(preflight.status, 204);
    for origin in common::near_miss_origins(addr.port()) {
        let headers = [
            ("Origin", origin.as_str()),
            ("Content-Type", "application/json"),
        ];
        let answer = request(addr, "POST", "/cometd", &headers, batch.as_bytes()).unwrap();
        assert_eq!(answer.status, 403, "{origin}");
    }
    assert_stat(
        addr,
        "bayeux_clients",
        1,
        "only the allowed origin's handshake",
    );
}

// ---- The official client, in Node ---------------------------------------------------------

fn official_client(addr: SocketAddr, scenario: &str) -> Value {
    let args = [scenario.to_string(), format!("http://{addr}")];
    common::run_node("bayeux.mjs", "cometd", &args)
}

#[test]
fn the_official_client_stays_on_websocket_with_its_defaults_and_does_everything() {
    let lab = lab();
    let summary = official_client(lab.addr(), "basics");
    // Its first choice, WebSocket at /cometd, is taken.
    assert_eq!(
        summary["handshakes"],
        json!([{"successful": true, "transport": "websocket"}])
    );
    assert_eq!(summary["echo"], json!({"hello": "service"}));
    wait_until("both clients are gone", || {
        let s = stats(lab.addr());
        s["bayeux_clients"] == 0
            && s["subscribers"] == 0
            && s["parked"] == 0
            && s["websockets"] == 0
    });
}

#[test]
fn the_official_client_falls_back_to_long_polling_where_websocket_is_refused() {
    // nginx's defaults (`/bare/`) drop the upgrade headers: the lab sees a plain GET.
    let lab = lab();
    let nginx = common::nginx::Nginx::start(lab.addr(), |_| {});
    let args = [
        "fallback".to_string(),
        format!("http://{}/bare", nginx.addr),
    ];
    let summary = common::run_node("bayeux.mjs", "cometd", &args);
    assert_eq!(
        summary["handshakes"],
        json!([{"successful": false, "transport": "websocket"},
               {"successful": true, "transport": "long-polling"}])
    );
    assert_eq!(summary["transport"], "long-polling");
}

#[test]
fn the_official_client_handshakes_again_when_the_lab_has_forgotten_it() {
    let lab = lab();
    let summary = official_client(lab.addr(), "rehandshake");
    assert_eq!(summary["unknown"][0], "402::session_unknown");
    // (Over long polling: the stall is XMLHttpRequest's. One handshake, and one more.)
    let successful = summary["handshakes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| *h == true)
        .count();
    assert_eq!(successful, 2, "{summary}");
}

#[test]
fn the_official_client_loses_nothing_when_a_connect_answer_is_lost() {
    // After a failed connect the client backs off a second before it connects again: the lab
    // must remember it that long (here the default maxInterval, 10 s).
    let lab = start_lab_with(|c| c.bayeux.timeout = Duration::from_millis(2000));
    let summary = official_client(lab.addr(), "ack");
    assert!(summary["dropped"].as_u64().unwrap() >= 2, "{summary}");
}

// ---- Chromium -----------------------------------------------------------------------------

#[test]
fn the_lesson_page_subscribes_publishes_and_receives() {
    let lab = lab();
    let (_browser, mut page) = common::browser::open_page(&lab, "/lessons/bayeux");
    page.wait_for(
        "a client id",
        "document.getElementById('client-id').textContent.length > 10",
    );
    wait_for_stat(lab.addr(), "parked", 1, "the page's connect is held");
    publish(lab.addr(), "to the page").unwrap();
    page.wait_for_log("[event] to the page");
    page.submit("sub-form", &[]);
    // The server's answer, not the page's own request (which names the channel too): the
    // subscribe and the publish travel on two connections, and a publish the server reads
    // first reaches no subscriber.
    page.wait_for_log("\"subscription\":\"/chat/*\",\"successful\":true");
    page.submit("pub-form", &[("data", "hello room")]);
    page.wait_for_log("[/chat/room1] {\"text\":\"hello room\"}");
    page.submit(
        "pub-form",
        &[("channel", "/service/echo"), ("data", "echo me")],
    );
    page.wait_for_log("[/service/echo] {\"text\":\"echo me\"}");
}

#[test]
fn the_official_client_runs_in_chromium_on_websocket_and_with_callback_polling_across_origins() {
    let lab = lab();
    let (browser, mut page) = common::browser::open_page(&lab, "/lessons/bayeux?client=official");
    page.wait_for_text("transport", "websocket");
    wait_until("its connect is held, on its socket", || {
        let s = stats(lab.addr());
        s["parked"] == 1 && s["websockets"] == 1
    });
    publish(lab.addr(), "to the official client").unwrap();
    page.wait_for_log("[event] to the official client");
    // A remote call from the console, as chapter 16's Try This does it.
    page.eval("cometd.remoteCall('time', {}, 5000, (m) => { window.timeReply = m; })");
    page.wait_for(
        "the time service answers the remote call",
        "window.timeReply !== undefined && window.timeReply.data.millis > 0",
    );
    // Served from localhost, talking to 127.0.0.1 by JSONP.
    let url = common::on_localhost(
        &lab,
        "/lessons/bayeux?client=official&transport=callback-polling&cross=1",
    );
    let mut page = browser.open(&url);
    page.wait_for_text("transport", "callback-polling");
    wait_for_stat(lab.addr(), "parked", 2, "both connects are held");
    publish(lab.addr(), "by script tag").unwrap();
    page.wait_for_log("[event] by script tag");
    page.submit(
        "pub-form",
        &[("channel", "/lab/events"), ("data", "from jsonp")],
    );
    page.wait_for_log("[event] from jsonp");
}

/// The replies to a message from a client the lab does not know (never handshaken, expired,
/// or gone): CometD's `402::session_unknown`, with the advice to handshake again.
fn assert_told_to_handshake_again(replies: &[Value]) {
    assert_eq!(replies[0]["error"], "402::session_unknown", "{replies:?}");
    assert_eq!(
        replies[0]["advice"]["reconnect"], "handshake",
        "{replies:?}"
    );
}

/// Every byte but letters and digits as `%XX`: a batch in a query.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A connect held past `--idle-timeout` keeps its connection: the thread holding it is not
/// reading, so no idle timeout runs, and once answered the same thread reads the client's
/// next connect on the same connection.
#[test]
fn a_connect_held_past_the_idle_timeout_keeps_its_connection() {
    let lab = start_lab_with(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.bayeux.timeout = Duration::from_millis(2000);
    });
    let addr = lab.addr();
    let client = handshake(addr, false);
    let connect = |id: &str| {
        let batch = json!([{"channel": "/meta/connect", "clientId": client, "id": id,
                            "connectionType": "callback-polling"}]);
        format!(
            "/cometd/connect?jsonp=cb&message={}",
            percent_encoded(&batch.to_string())
        )
    };
    let mut connection = reverse_ajax_lab::client::KeepAlive::connect(addr).unwrap();
    let first = connection.get(&connect("1")).unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.contains("\"successful\":true"), "{}", first.body);
    assert_eq!(first.header("Connection"), None, "answered at once");
    // BLOCKS (the test): held for the advised 2 s, twice the idle timeout.
    let second = connection.get(&connect("2")).unwrap();
    assert!(second.body.contains("/meta/connect"), "{}", second.body);
    assert_eq!(
        second.header("Connection"),
        None,
        "the connection stays open"
    );
    let third = connection.get(&connect("3")).unwrap();
    assert!(third.body.contains("\"id\":\"3\""), "{}", third.body);
}

// ---- The websocket transport, by hand ------------------------------------------------------

type Socket = tungstenite::WebSocket<std::net::TcpStream>;

/// A WebSocket to the lab's `/cometd`.
fn open_socket(addr: SocketAddr) -> Socket {
    common::websocket_handshake(
        &format!("ws://{addr}/cometd"),
        Some(&format!("http://{addr}")),
    )
    .unwrap()
}

fn send_frame(socket: &mut Socket, batch: Value) {
    socket
        .send(tungstenite::Message::text(batch.to_string()))
        .unwrap();
}

/// The next batch the lab sends.
fn next_batch(socket: &mut Socket) -> Vec<Value> {
    loop {
        match socket.read().unwrap() {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str::<Value>(text.as_str())
                    .unwrap()
                    .as_array()
                    .unwrap()
                    .clone()
            }
            _ => continue,
        }
    }
}

/// Handshake (with the ack extension when `acks`) and a first connect on `socket`; the id.
fn handshake_on(socket: &mut Socket, acks: bool) -> String {
    send_frame(
        socket,
        json!([{"channel": "/meta/handshake", "version": "1.0", "id": "1",
                "supportedConnectionTypes": ["websocket"], "ext": {"ack": acks}}]),
    );
    let reply = next_batch(socket);
    assert_eq!(reply[0]["successful"], true, "{reply:?}");
    let client = reply[0]["clientId"].as_str().unwrap().to_string();
    ws_connect(socket, &client, json!({"ack": 0}));
    let first = next_batch(socket);
    assert_eq!(
        first.last().unwrap()["channel"],
        "/meta/connect",
        "{first:?}"
    );
    send_frame(
        socket,
        json!([{"channel": "/meta/subscribe", "clientId": client, "subscription": "/lab/events", "id": "s"}]),
    );
    assert_eq!(next_batch(socket)[0]["successful"], true);
    client
}

fn ws_connect(socket: &mut Socket, client: &str, ext: Value) {
    send_frame(
        socket,
        json!([{"channel": "/meta/connect", "clientId": client, "id": "c",
                "connectionType": "websocket", "ext": ext}]),
    );
}

/// A frame over `--max-body` on `/cometd` gets 1009, and the socket's thread is given back.
#[test]
fn an_oversized_websocket_frame_gets_1009() {
    let _lab = start_lab_with(|c| c.max_body = 1024);
    let addr = _lab.addr();
    let mut socket = open_socket(addr);
    handshake_on(&mut socket, false);
    common::assert_oversized_message_gets_1009(addr, &mut socket, 4096);
}

#[test]
fn the_websocket_transport_sends_a_delivery_at_once_and_answers_the_connect_at_its_timeout() {
    let _lab = lab();
    let addr = _lab.addr();
    let mut socket = open_socket(addr);
    let client = handshake_on(&mut socket, false);
    ws_connect(&mut socket, &client, json!({}));
    wait_for_stat(
        addr,
        "parked",
        1,
        "the connect is held, and counted as parked",
    );
    let started = Instant::now();
    let id = publish(addr, "over the socket").unwrap();
    // The delivery comes alone, while the connect stays held.
    let batch = next_batch(&mut socket);
    assert_eq!(
        batch,
        vec![json!({"channel": "/lab/events", "data": {"data": "over the socket", "id": id}})]
    );
    assert_stat(addr, "parked", 1, "the connect is still held");
    // The connect's own answer comes at the advised timeout (2 s here).
    let batch = next_batch(&mut socket);
    assert_eq!(batch.len(), 1, "{batch:?}");
    assert_eq!(batch[0]["channel"], "/meta/connect");
    assert_eq!(batch[0]["successful"], true);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // A publish from the socket reaches the hub, and a service answers the sender.
    send_frame(
        &mut socket,
        json!([{"channel": "/service/echo", "clientId": client, "data": "ping", "id": "e"}]),
    );
    // Its reply (successful, no data) and the service's answer (the data, the same id), in
    // either order.
    let mut got = next_batch(&mut socket);
    got.extend(next_batch(&mut socket));
    assert!(
        got.iter()
            .any(|m| m["id"] == "e" && m["successful"] == true),
        "{got:?}"
    );
    assert!(
        got.iter().any(|m| m["id"] == "e" && m["data"] == "ping"),
        "{got:?}"
    );
    drop(socket);
    wait_until("the socket and its held connect are let go", || {
        let s = stats(addr);
        s["websockets"] == 0 && s["parked"] == 0
    });
    // Without connects, the client expires after maxInterval, as over HTTP.
    wait_for_stat(addr, "bayeux_clients", 0, "the client expires");
    common::wait_for_baseline(addr);
}

#[test]
fn under_the_ack_extension_the_websocket_delivers_with_connect_answers_and_resends_on_a_new_socket()
{
    let _lab = lab();
    let addr = _lab.addr();
    let mut socket = open_socket(addr);
    let client = handshake_on(&mut socket, true);
    ws_connect(&mut socket, &client, json!({"ack": 0}));
    wait_for_stat(addr, "parked", 1, "the connect is held");
    let id = publish(addr, "numbered").unwrap();
    // The delivery rides on the connect's answer, which numbers the batch.
    let batch = next_batch(&mut socket);
    assert_eq!(batch.len(), 2, "{batch:?}");
    assert_eq!(batch[0]["data"]["id"], id);
    assert_eq!(batch[1]["channel"], "/meta/connect");
    let number = batch[1]["ext"]["ack"].as_u64().unwrap();
    // The socket breaks before the client could acknowledge it; on a new socket, the next
    // connect names the batch before: the event comes again, at once.
    drop(socket);
    let mut socket = open_socket(addr);
    ws_connect(&mut socket, &client, json!({"ack": number - 1}));
    let again = next_batch(&mut socket);
    assert_eq!(again[0]["data"]["id"], id, "{again:?}");
    assert_eq!(again.last().unwrap()["channel"], "/meta/connect");
    // Acknowledged: the next connect is held, empty, until its timeout.
    let last = again.last().unwrap()["ext"]["ack"].as_u64().unwrap();
    ws_connect(&mut socket, &client, json!({"ack": last}));
    let started = Instant::now();
    let quiet = next_batch(&mut socket);
    assert_eq!(quiet.len(), 1, "nothing sent again: {quiet:?}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[test]
fn the_bayeux_websocket_refuses_a_foreign_origin_and_answers_bad_batches_with_errors() {
    let _lab = lab();
    let addr = _lab.addr();
    match common::websocket_handshake(&format!("ws://{addr}/cometd"), Some("http://evil.example")) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {:?}", other.map(|_| "a socket")),
    }
    let mut socket = open_socket(addr);
    socket.send(tungstenite::Message::text("not json")).unwrap();
    let error = next_batch(&mut socket);
    assert_eq!(
        error,
        [json!({"successful": false, "error": "400::batch_invalid"})]
    );
    // More messages than a batch may hold: CometD's refusal, as over HTTP.
    let huge: Vec<Value> = (0..101).map(|_| json!({"channel": "/x"})).collect();
    send_frame(&mut socket, Value::Array(huge));
    let error = next_batch(&mut socket);
    assert_eq!(
        error,
        [json!({"successful": false, "error": "413::batch_too_large"})]
    );
    // An unknown client: 402 with the advice to handshake; the socket lives on.
    ws_connect(&mut socket, "nobody", json!({}));
    let unknown = next_batch(&mut socket);
    assert_told_to_handshake_again(&unknown);
    let client = handshake_on(&mut socket, false);
    assert!(client.len() >= 20);
    // A connect over the socket that names an HTTP connection type is refused.
    send_frame(
        &mut socket,
        json!([{"channel": "/meta/connect", "clientId": client, "id": "x",
                "connectionType": "long-polling"}]),
    );
    let refused = next_batch(&mut socket);
    assert!(
        refused[0]["error"].as_str().unwrap().starts_with("400::"),
        "{refused:?}"
    );
}

#[test]
fn a_disconnect_answers_the_held_connect_with_the_advice_not_to_reconnect() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    connect(addr, &client, json!({}));
    let held = std::thread::spawn({
        let client = client.clone();
        move || connect(addr, &client, json!({}))
    });
    wait_for_stat(addr, "parked", 1, "the connect is parked");
    let goodbye = send(
        addr,
        json!([{"channel": "/meta/disconnect", "clientId": client, "id": "d"}]),
    );
    assert_eq!(goodbye[0]["successful"], true);
    let last = held.join().unwrap();
    let reply = last.last().unwrap();
    assert_eq!(reply["channel"], "/meta/connect");
    assert_eq!(reply["successful"], true, "{reply}");
    assert_eq!(reply["advice"]["reconnect"], "none", "{reply}");
    // Gone: a later connect is told to handshake again.
    let after = connect(addr, &client, json!({}));
    assert_told_to_handshake_again(&after);
}

#[test]
fn the_cost_scenario_measures_both_transports_and_the_websocket_needs_no_request_per_event() {
    // The book's figures come from this scenario at 50 events; a smoke size here.
    let lab = lab();
    let args = [
        "cost".to_string(),
        format!("http://{}", lab.addr()),
        "5".into(),
    ];
    let figures = common::run_node("bayeux.mjs", "cometd", &args);
    assert_eq!(figures["websocket"]["requests_per_event"], 0.0, "{figures}");
    assert!(
        figures["long-polling"]["requests_per_event"]
            .as_f64()
            .unwrap()
            >= 0.8
    );
    let ws = figures["websocket"]["bytes_per_event"].as_u64().unwrap();
    let lp = figures["long-polling"]["bytes_per_event"].as_u64().unwrap();
    assert!(ws > 0 && ws < lp, "{figures}");
}

#[test]
fn advice_is_sent_on_the_handshake_and_then_only_when_it_changes_or_the_client_asks() {
    let _lab = lab();
    let addr = _lab.addr();
    let client = handshake(addr, false);
    // The client's first connect carries advice of its own (`timeout: 0`): ours comes back.
    let first = send(
        addr,
        json!([{"channel": "/meta/connect", "clientId": client, "id": "1",
                "connectionType": "long-polling", "advice": {"timeout": 0}}]),
    );
    assert_eq!(first[0]["advice"]["timeout"], 2000, "{first:?}");
    // Unchanged since: not repeated (the reply held for the timeout, with nothing to deliver).
    let quiet = connect(addr, &client, json!({}));
    assert!(quiet[0]["advice"].is_null(), "{quiet:?}");
    assert_eq!(quiet[0]["successful"], true);
    // Other replies never carry it.
    assert!(subscribe(addr, &client, "/chat/x")["advice"].is_null());
}

/// POST a batch with a `Cookie` header; the answer.
fn send_with_cookie(
    addr: SocketAddr,
    cookie: &str,
    batch: Value,
) -> reverse_ajax_lab::client::Response {
    request(
        addr,
        "POST",
        "/cometd",
        &[("Content-Type", "application/json"), ("Cookie", cookie)],
        batch.to_string().as_bytes(),
    )
    .unwrap()
}

#[test]
fn a_browsers_second_client_is_told_to_poll_while_its_first_holds_the_connect() {
    let lab = lab();
    let addr = lab.addr();
    // The handshake gives the browser its cookie.
    let handshake_batch = json!([{"channel": "/meta/handshake", "version": "1.0",
                                  "supportedConnectionTypes": ["long-polling"]}]);
    let answer = post(
        addr,
        "/cometd",
        "application/json",
        &handshake_batch.to_string(),
    )
    .unwrap();
    let set_cookie = answer.header("Set-Cookie").unwrap().to_string();
    assert!(set_cookie.starts_with("BAYEUX_BROWSER=") && set_cookie.contains("HttpOnly"));
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let first_tab = answer.json()[0]["clientId"].as_str().unwrap().to_string();
    // A second tab of the same browser (the same cookie) handshakes too: no new cookie.
    let second = send_with_cookie(addr, &cookie, handshake_batch.clone());
    assert!(second.header("Set-Cookie").is_none());
    let second_tab = second.json()[0]["clientId"].as_str().unwrap().to_string();
    let connect_as = |client: &str| json!([{"channel": "/meta/connect", "clientId": client, "connectionType": "long-polling"}]);
    for tab in [&first_tab, &second_tab] {
        send_with_cookie(addr, &cookie, connect_as(tab)); // the first connects: at once
    }
    // The first tab's connect is held...
    let held = std::thread::spawn({
        let (cookie, batch) = (cookie.clone(), connect_as(&first_tab));
        move || send_with_cookie(addr, &cookie, batch)
    });
    wait_for_stat(addr, "parked", 1, "the first tab's connect is held");
    // ...so the second's is answered at once, with the advice to poll.
    let started = Instant::now();
    let polled = send_with_cookie(addr, &cookie, connect_as(&second_tab)).json();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(polled[0]["successful"], true);
    assert_eq!(polled[0]["advice"]["multiple-clients"], true, "{polled}");
    assert_eq!(polled[0]["advice"]["interval"], 2000);
    // Another browser (no cookie) is held as usual.
    let other = handshake(addr, false);
    connect(addr, &other, json!({}));
    subscribe(addr, &other, "/lab/events");
    let other_held = std::thread::spawn(move || connect(addr, &other, json!({})));
    wait_for_stat(addr, "parked", 2, "both browsers hold a connect");
    publish(addr, "to all").unwrap();
    assert_eq!(held.join().unwrap().status, 200);
    assert!(!deliveries(&other_held.join().unwrap()).is_empty());
}

#[test]
fn a_client_that_falls_behind_the_ring_is_told_how_many_events_it_missed() {
    // A ring of 8 and a feed of 4: twenty events while the client is away lose twelve.
    let lab = start_lab_with(|c| {
        c.history = 8;
        c.buffer = 4;
        c.bayeux.timeout = Duration::from_millis(2000);
    });
    let addr = lab.addr();
    let client = handshake(addr, false);
    connect(addr, &client, json!({}));
    subscribe(addr, &client, "/lab/events");
    for n in 1..=20 {
        publish(addr, &format!("event {n}")).unwrap();
    }
    let replies = connect(addr, &client, json!({}));
    let got = deliveries(&replies);
    assert_eq!(got[0]["data"], json!({"missed": 12}), "{got:?}");
    let ids: Vec<u64> = got[1..]
        .iter()
        .map(|d| d["data"]["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (13..=20).collect::<Vec<u64>>());
}

#[test]
fn a_websocket_client_under_acks_that_stops_connecting_while_deliveries_pile_up_is_dropped() {
    // maxInterval a minute: only the bound can drop it this soon.
    let _lab = lab_holding(Duration::from_millis(2000), Duration::from_secs(60));
    let addr = _lab.addr();
    let mut socket = open_socket(addr);
    // Handshaken with acks, its first connect answered, subscribed: and no connect after.
    let _client = handshake_on(&mut socket, true);
    for n in 0..1300 {
        publish(addr, &format!("pile {n}")).unwrap();
    }
    wait_for_stat(
        addr,
        "bayeux_clients",
        0,
        "the client is dropped as a slow consumer",
    );
}

/// A held connect sleeps on its client's queue, not on its socket: it wakes once a second and
/// looks. One whose HTTP client hangs up is let go within seconds, not at the connect's
/// timeout (60 s here), and nothing queued for it is lost: the next connect carries it.
#[test]
fn a_held_connect_whose_client_hangs_up_is_let_go_and_its_deliveries_wait() {
    let _lab = lab_holding(Duration::from_secs(60), Duration::from_secs(60));
    let addr = _lab.addr();
    let (staying, leaving) = (handshake(addr, false), handshake(addr, false));
    subscribe(addr, &leaving, "/chat/a");
    let hold = |client: &str| {
        connect(addr, client, json!({})); // the first: answered at once
        let batch = json!([{"channel": "/meta/connect", "clientId": client, "id": "held",
                            "connectionType": "long-polling"}]);
        let headers = [("Content-Type", "application/json")];
        let body = batch.to_string();
        reverse_ajax_lab::client::open(addr, "POST", "/cometd", &headers, body.as_bytes()).unwrap()
    };
    let _held = hold(&staying);
    let hung_up = hold(&leaving);
    common::hang_up_and_see_it_let_go(addr, hung_up, "parked");
    assert_eq!(stats(addr)["departed"], 1);
    // Published after it left, delivered on its next connect.
    send(
        addr,
        json!([{"channel": "/chat/a", "clientId": staying, "data": "while you were away"}]),
    );
    let replies = connect(addr, &leaving, json!({}));
    let delivered = deliveries(&replies);
    assert_eq!(delivered[0]["data"], "while you were away", "{replies:?}");
}
