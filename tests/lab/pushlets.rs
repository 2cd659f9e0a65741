//! Pushlets: sessions, subjects, the three modes of the data channel, both formats, the
//! original's unescaped script output and ours, expiry; the page in Chromium.

use crate::common;

use common::browser::Browser;
use common::{assert_stat, start_lab_with, stats, wait_for_stat, wait_until};
use reverse_ajax_lab::client::{get, publish, Stream};
use reverse_ajax_lab::RunningLab;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const SRV: &str = "/pushlet/pushlet.srv";

fn lab() -> RunningLab {
    // Short, for the expiry test; longer than poll mode's longest pause between refreshes
    // (10 s, the original's default).
    start_lab_with(|c| c.pushlets_timeout = Duration::from_secs(12))
}

/// A control event in XML; the answer's body.
fn control(addr: SocketAddr, query: &str) -> (u16, String) {
    let answer = get(addr, &format!("{SRV}?{query}&p_format=xml")).unwrap();
    (answer.status, answer.body)
}

/// A session joined, subscribed to `/lab` and listening in `pull` mode: its id, and the
/// listen's answer (the ack and a refresh).
fn listening_in_pull_mode(addr: SocketAddr) -> (String, reverse_ajax_lab::client::Response) {
    let id = join(addr);
    subscribe(addr, &id, "/lab");
    let path = format!("{SRV}?p_event=listen&p_id={id}&p_mode=pull&p_format=xml");
    let listen = get(addr, &path).unwrap();
    (id, listen)
}

fn join(addr: SocketAddr) -> String {
    let (status, body) = control(addr, "p_event=join");
    assert_eq!(status, 200, "{body}");
    common::between(&body, "p_id=\"", "\"").to_string()
}

fn subscribe(addr: SocketAddr, id: &str, subject: &str) {
    let (status, body) = control(
        addr,
        &format!("p_event=subscribe&p_id={id}&p_subject={subject}"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("p_event=\"subscribe-ack\""), "{body}");
}

/// The `p_wait` of the refresh event in `body`.
fn p_wait(body: &str) -> u64 {
    let wait = common::between(body, "p_wait=\"", "\"");
    wait.parse()
        .unwrap_or_else(|_| panic!("p_wait {wait:?} in {body}"))
}

/// Read a stream until `needle` (or panic at the deadline); what was read.
fn read_until(stream: &mut Stream, needle: &str) -> String {
    stream
        .read_until(Instant::now() + Duration::from_secs(20), |text| {
            text.contains(needle)
        })
        .unwrap_or_else(|e| panic!("never read {needle:?}: {e}"))
}

/// Open session `id`'s data channel in stream mode (`format`: `xml`, `js`, `js&lab_mode=...`)
/// and read up to its listen-ack.
fn listen(addr: SocketAddr, id: &str, format: &str) -> Stream {
    let path = format!("{SRV}?p_event=listen&p_id={id}&p_mode=stream&p_format={format}");
    let mut stream = Stream::open(addr, &path, &[]).unwrap();
    read_until(&mut stream, "listen-ack");
    stream
}

#[test]
fn a_streaming_session_receives_hub_events_and_its_own_publish() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = join(addr);
    subscribe(addr, &id, "/lab");
    let mut stream = listen(addr, &id, "xml");
    wait_for_stat(addr, "streams", 1, "the stream is held");
    let event = publish(addr, "to the pushlet").unwrap();
    let seen = read_until(&mut stream, "to the pushlet");
    assert!(
        seen.contains(&format!(
            "p_subject=\"/lab/events\" id=\"{event}\" data=\"to the pushlet\""
        )),
        "{seen}"
    );
    let (status, body) = control(
        addr,
        &format!("p_event=publish&p_id={id}&p_subject=/lab/events&data=from+the+pushlet"),
    );
    assert_eq!(status, 200, "{body}");
    read_until(&mut stream, "from the pushlet");
    let polled = get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(
        polled["events"][1]["data"], "from the pushlet",
        "it went into the hub"
    );
}

#[test]
fn subjects_reach_only_sessions_subscribed_to_a_prefix_of_them() {
    let _lab = lab();
    let addr = _lab.addr();
    let (chat, other, sender) = (join(addr), join(addr), join(addr));
    subscribe(addr, &chat, "/chat");
    subscribe(addr, &other, "/other");
    let (mut chat_stream, mut other_stream) =
        (listen(addr, &chat, "xml"), listen(addr, &other, "xml"));
    control(
        addr,
        &format!("p_event=publish&p_id={sender}&p_subject=/chat/room1&data=hello"),
    );
    control(
        addr,
        &format!("p_event=publish&p_id={sender}&p_subject=/other/x&data=marker"),
    );
    let seen = read_until(&mut chat_stream, "hello");
    assert!(seen.contains("p_subject=\"/chat/room1\""));
    // /other's stream gets its own marker, and nothing for /chat before it.
    let seen = read_until(&mut other_stream, "marker");
    assert!(!seen.contains("hello"), "{seen}");
    // Unsubscribed: no more.
    let (status, _) = control(addr, &format!("p_event=unsubscribe&p_id={chat}&p_sid=1"));
    assert_eq!(status, 200);
    control(
        addr,
        &format!("p_event=publish&p_id={sender}&p_subject=/chat/room1&data=gone"),
    );
    subscribe(addr, &chat, "/after");
    control(
        addr,
        &format!("p_event=publish&p_id={sender}&p_subject=/after/x&data=later"),
    );
    let seen = read_until(&mut chat_stream, "later");
    assert!(!seen.contains("gone"), "{seen}");
}

#[test]
fn pull_holds_until_an_event_then_asks_for_a_refresh_and_poll_answers_at_once() {
    let _lab = lab();
    let addr = _lab.addr();
    // pull: the listen-ack, and at once the refresh that says where to ask next.
    let (id, listen) = listening_in_pull_mode(addr);
    assert!(
        listen.body.contains("listen-ack") && listen.body.contains("p_event=\"refresh\""),
        "{}",
        listen.body
    );
    let held = std::thread::spawn({
        let id = id.clone();
        move || {
            get(
                addr,
                &format!("{SRV}?p_event=refresh&p_id={id}&p_mode=pull&p_format=xml"),
            )
            .unwrap()
        }
    });
    wait_for_stat(addr, "streams", 1, "the refresh is held");
    publish(addr, "for the pull").unwrap();
    let body = held.join().unwrap().body;
    assert!(
        body.contains("data=\"for the pull\"") && body.contains("p_event=\"refresh\""),
        "{body}"
    );
    // The pause a pull asks for: the original's default, 2 to 6 s, chosen at random.
    assert!((2000..=6000).contains(&p_wait(&body)), "{body}");
    // poll: answered at once, a heartbeat when nothing happened, and a pause of 6 to 10 s.
    let started = Instant::now();
    let poll = get(
        addr,
        &format!("{SRV}?p_event=refresh&p_id={id}&p_mode=poll&p_format=xml"),
    )
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(poll.body.contains("p_event=\"hb\""), "{}", poll.body);
    assert!(
        (6000..=10000).contains(&p_wait(&poll.body)),
        "{}",
        poll.body
    );
}

#[test]
fn join_listen_does_both_in_one_request() {
    let lab = lab();
    let path = format!("{SRV}?p_event=join-listen&p_subject=/lab&p_mode=stream&p_format=xml");
    let mut stream = Stream::open(lab.addr(), &path, &[]).unwrap();
    read_until(&mut stream, "join-listen-ack");
    wait_for_stat(lab.addr(), "streams", 1, "the stream is held");
    publish(lab.addr(), "joined and listening").unwrap();
    read_until(&mut stream, "joined and listening");
}

#[test]
fn the_js_format_escapes_every_value_and_the_original_did_not() {
    let _lab = lab();
    let addr = _lab.addr();
    let attack = r#""); parent.pwned = 1; ("</script><script>parent.pwned = 2</script>"#;
    let encoded = "%22)%3B%20parent.pwned%20%3D%201%3B%20(%22%3C%2Fscript%3E%3Cscript%3Eparent.pwned%20%3D%202%3C%2Fscript%3E";
    let frame = |original: bool| {
        let id = join(addr);
        subscribe(addr, &id, "/lab");
        let mode = if original { "&lab_mode=original" } else { "" };
        let mut stream = listen(addr, &id, &format!("js{mode}"));
        wait_for_stat(addr, "streams", 1, "the stream is held");
        control(
            addr,
            &format!("p_event=publish&p_id={id}&p_subject=/lab/events&data={encoded}"),
        );
        let seen = read_until(&mut stream, "p_seq");
        let seen = seen + &read_until(&mut stream, "</script>");
        // (A stream whose client left is noticed at its next write: leave instead.)
        control(addr, &format!("p_event=leave&p_id={id}"));
        wait_for_stat(addr, "streams", 0, "the stream is gone");
        seen
    };
    let ours = frame(false);
    assert!(!ours.contains("</script><script>parent.pwned"), "{ours}");
    assert!(!ours.contains(r#"""); parent.pwned"#), "{ours}");
    assert!(
        ours.contains(r#"\"); parent.pwned = 1; (\"\u003c/script\u003e"#),
        "{ours}"
    );
    let original = frame(true);
    assert!(
        original.contains(&format!("\"{attack}\"")),
        "the original wrote it raw: {original}"
    );
}

#[test]
fn bad_requests_get_a_nack_and_change_nothing() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = join(addr);
    for (query, reason) in [
        ("p_event=listen&p_id=nobody".to_string(), "unknown p_id"),
        (format!("p_event=dance&p_id={id}"), "unknown p_event"),
        (
            format!("p_event=subscribe&p_id={id}&p_subject=no-slash"),
            "p_subject",
        ),
        (
            format!("p_event=subscribe&p_id={id}&p_subject=/a%20b"),
            "p_subject",
        ),
        (format!("p_event=listen&p_id={id}&p_mode=fast"), "p_mode"),
        (
            format!("p_event=unsubscribe&p_id={id}&p_sid=99"),
            "no such p_sid",
        ),
    ] {
        let (status, body) = control(addr, &query);
        assert_eq!(status, 400, "{query}");
        assert!(
            body.contains("p_event=\"nack\"") && body.contains(reason),
            "{query}: {body}"
        );
    }
    assert_eq!(
        get(addr, &format!("{SRV}?p_event=join&p_format=swf"))
            .unwrap()
            .status,
        400
    );
    assert_eq!(stats(addr)["pushlets_sessions"], 1);
}

#[test]
fn leaving_ends_the_stream_and_a_session_nobody_listens_for_expires() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = join(addr);
    subscribe(addr, &id, "/lab");
    let mut stream = listen(addr, &id, "xml");
    control(addr, &format!("p_event=leave&p_id={id}"));
    read_until(&mut stream, "p_event=\"abort\"");
    wait_until("the session and its feed are gone", || {
        let s = stats(addr);
        s["pushlets_sessions"] == 0 && s["subscribers"] == 0 && s["streams"] == 0
    });
    // Joined and subscribed, never listening: gone after --pushlets-timeout (4 s here).
    let id = join(addr);
    subscribe(addr, &id, "/lab");
    assert_eq!(stats(addr)["subscribers"], 1);
    wait_until("the silent session expires", || {
        let s = stats(addr);
        s["pushlets_sessions"] == 0 && s["subscribers"] == 0
    });
    assert_eq!(control(addr, &format!("p_event=hb&p_id={id}")).0, 400);
}

#[test]
fn the_page_streams_pulls_and_polls_in_a_hidden_iframe() {
    let lab = lab();
    let (_browser, mut page) = common::browser::open_page(&lab, "/lessons/pushlets");
    for mode in ["stream", "pull", "poll"] {
        page.eval(&format!(
            "window.joined = null; document.getElementById('mode').value = '{mode}'; \
             join().then(() => {{ window.joined = pid; }})"
        ));
        page.wait_for(
            &format!("{mode}: the new session is listening"),
            "window.joined !== null && window.listeningFor === window.joined",
        );
        let marker = common::marker(mode);
        let end = Instant::now() + Duration::from_secs(20);
        // (Published until seen: the channel may be between two refreshes.)
        while page.eval(&format!(
            "document.getElementById('log').textContent.includes('[event] {marker}')"
        )) != serde_json::Value::Bool(true)
        {
            assert!(
                Instant::now() < end,
                "{mode}: the event never arrived: {}",
                page.log_text()
            );
            publish(lab.addr(), &marker).unwrap();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn in_chromium_the_originals_output_runs_an_events_code_and_ours_does_not() {
    let lab = lab();
    let browser = Browser::launch();
    for original in [true, false] {
        let mut page = browser.open(&format!("http://{}/lessons/pushlets", lab.addr()));
        // Rejoin (after the page's own join) and wait for *that* session's listen-ack.
        page.eval(&format!(
            "window.joined = null; document.getElementById('original').checked = {original}; \
             join().then(() => {{ window.joined = pid; }})"
        ));
        page.wait_for(
            "listening",
            "window.joined !== null && window.listeningFor === window.joined",
        );
        wait_for_stat(lab.addr(), "streams", 1, "its stream is held");
        publish(lab.addr(), r#""); parent.pwned = true; (""#).unwrap();
        publish(lab.addr(), "after the attack").unwrap();
        page.wait_for_log("after the attack");
        let pwned = page.eval("window.pwned === true");
        let channel = page
            .eval("document.getElementById('channel').contentDocument.body.innerHTML.slice(-400)");
        assert_eq!(
            pwned,
            serde_json::Value::Bool(original),
            "original: {original}: {channel}"
        );
        page.eval("fetch('/pushlet/pushlet.srv?p_event=leave&p_id=' + pid)");
        wait_for_stat(lab.addr(), "streams", 0, "the page's session ends");
    }
}

#[test]
fn a_session_that_falls_behind_the_ring_is_told_how_many_events_it_missed() {
    // A ring of 8 and a feed of 4: twenty events while nobody reads lose twelve.
    let lab = start_lab_with(|c| {
        c.history = 8;
        c.buffer = 4;
    });
    let addr = lab.addr();
    let (id, listen) = listening_in_pull_mode(addr);
    assert!(listen.body.contains("listen-ack"), "{}", listen.body);
    for n in 1..=20 {
        publish(addr, &format!("event {n}")).unwrap();
    }
    let poll = get(
        addr,
        &format!("{SRV}?p_event=refresh&p_id={id}&p_mode=poll&p_format=xml"),
    )
    .unwrap();
    assert!(poll.body.contains("missed=\"12\""), "{}", poll.body);
    assert!(poll.body.contains("data=\"event 20\""), "{}", poll.body);
    assert!(!poll.body.contains("data=\"event 12\""), "{}", poll.body);
}

/// One answer as the original ajax-pushlet-client.js reads it: a whole XML document (its
/// Xparse takes the root, `<pushlet>`, and each child element is an event), each event's
/// attributes unescaped.
fn xml_strict_events(
    addr: SocketAddr,
    query: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let answer = get(addr, &format!("{SRV}?{query}")).unwrap();
    assert_eq!(answer.status, 200, "{query}: {}", answer.body);
    assert_eq!(
        answer.header("Content-Type"),
        Some("text/xml; charset=utf-8")
    );
    let body = answer.body.trim();
    let inner = body
        .strip_prefix("<pushlet>")
        .and_then(|b| b.strip_suffix("</pushlet>"))
        .unwrap_or_else(|| panic!("not one <pushlet> document: {body}"));
    let unescape = |v: &str| {
        v.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    inner
        .split("<event ")
        .skip(1)
        .map(|element| {
            let attributes = element.trim_end().trim_end_matches("/>");
            attributes
                .split("\" ")
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(n, v)| (n.trim().to_string(), unescape(v.trim_end_matches('"'))))
                .collect()
        })
        .collect()
}

#[test]
fn the_original_ajax_client_joins_listens_subscribes_publishes_and_refreshes_unchanged() {
    let _lab = lab();
    let addr = _lab.addr();
    let ask = |query: &str| xml_strict_events(addr, query);
    // Exactly the requests ajax-pushlet-client.js v1.7 makes: the format and mode only at
    // join (and the mode at listen); every later request names only its p_id.
    let joined = ask("p_event=join&p_format=xml-strict&p_mode=pull");
    assert_eq!(joined[0]["p_event"], "join-ack");
    assert_eq!(joined[0]["p_format"], "xml-strict");
    let alice = joined[0]["p_id"].clone();
    let listened = ask(&format!(
        "p_event=listen&p_mode=pull&p_subject=%2Flab&p_id={alice}"
    ));
    assert_eq!(listened[0]["p_event"], "listen-ack");
    assert_eq!(listened[0]["p_sid"], "1");
    assert_eq!(listened[1]["p_event"], "refresh");
    let wait: u64 = listened[1]["p_wait"].parse().unwrap();
    assert!(
        (2000..=6000).contains(&wait),
        "the original's pull wait: {wait}"
    );
    // Bob: join-listen on two subjects at once, comma-separated; then a labelled one.
    let bob_joined = ask(
        "p_event=join-listen&p_format=xml-strict&p_mode=pull&p_subject=%2Fchat%2Fa%2C%2Fchat%2Fb",
    );
    assert_eq!(bob_joined[0]["p_event"], "join-listen-ack");
    let bob = bob_joined[0]["p_id"].clone();
    let subscribed = ask(&format!(
        "p_event=subscribe&p_subject=%2Fnews&p_label=headlines&p_id={bob}"
    ));
    assert_eq!(subscribed[0]["p_event"], "subscribe-ack");
    assert_eq!(subscribed[0]["p_sid"], "2");
    assert_eq!(subscribed[0]["p_label"], "headlines");
    // Alice publishes her own fields; a second event to /news, and one to Bob alone.
    let published = ask(&format!(
        "p_event=publish&p_subject=%2Fchat%2Fb&nick=alice&msg=hi%20%3Cthere%3E&p_id={alice}"
    ));
    assert_eq!(published[0]["p_event"], "publish-ack");
    ask(&format!(
        "p_event=publish&p_subject=%2Fnews&title=rain&p_id={alice}"
    ));
    ask(&format!(
        "p_event=publish&p_subject=%2Fprivate&p_to={bob}&note=psst&p_id={alice}"
    ));
    // Bob's refresh names only his p_id: answered in pull mode, in xml-strict.
    let refreshed = ask(&format!("p_event=refresh&p_id={bob}"));
    assert_eq!(refreshed[0]["p_event"], "refresh-ack");
    let data: Vec<_> = refreshed
        .iter()
        .filter(|e| e["p_event"] == "data")
        .collect();
    assert_eq!(data.len(), 3, "{refreshed:?}");
    assert_eq!(data[0]["p_subject"], "/chat/b");
    assert_eq!(data[0]["nick"], "alice");
    assert_eq!(data[0]["msg"], "hi <there>");
    assert_eq!(data[0]["p_from"], alice);
    assert_eq!(data[0]["p_sid"], "1");
    assert_eq!(data[1]["title"], "rain");
    assert_eq!(data[1]["p_sid"], "2");
    assert_eq!(data[1]["p_label"], "headlines");
    assert_eq!(data[2]["p_subject"], "/private");
    assert_eq!(data[2]["note"], "psst");
    assert_eq!(refreshed.last().unwrap()["p_event"], "refresh");
    // Alice hears the hub on /lab: a hub event, with her subscription's id.
    let id = publish(addr, "from the hub").unwrap();
    let hers = ask(&format!("p_event=refresh&p_id={alice}"));
    let hub: Vec<_> = hers.iter().filter(|e| e["p_event"] == "data").collect();
    assert_eq!(hub[0]["p_subject"], "/lab/events");
    assert_eq!(hub[0]["id"], id.to_string());
    assert_eq!(hub[0]["p_sid"], "1");
    let left = ask(&format!("p_event=leave&p_id={alice}"));
    assert_eq!(left[0]["p_event"], "leave-ack");
}

#[test]
fn a_session_holds_at_most_32_subscriptions() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = join(addr);
    for n in 0..32 {
        subscribe(addr, &id, &format!("/s{n}"));
    }
    let (status, body) = control(
        addr,
        &format!("p_event=subscribe&p_id={id}&p_subject=/one-more"),
    );
    assert_eq!(status, 400);
    assert!(body.contains("too many subscriptions"), "{body}");
}

/// A held Pushlets response sleeps on its session's queue; it looks at its socket once a
/// second, so a client that hangs up frees its thread within seconds rather than at the next
/// heartbeat (20 s), and the session lives on for its next request.
#[test]
fn a_stream_whose_client_hangs_up_is_let_go_long_before_its_heartbeat() {
    let _lab = lab();
    let addr = _lab.addr();
    let listen = |id: &str| {
        let path =
            format!("{SRV}?p_event=listen&p_id={id}&p_subject=/lab&p_mode=stream&p_format=xml");
        let mut stream = Stream::open(addr, &path, &[]).unwrap();
        read_until(&mut stream, "listen-ack");
        stream
    };
    let (staying, leaving) = (join(addr), join(addr));
    let _held = listen(&staying);
    let hung_up = listen(&leaving);
    common::hang_up_and_see_it_let_go(addr, hung_up, "streams");
    assert_eq!(stats(addr)["departed"], 1);
    assert_stat(addr, "pushlets_sessions", 2, "the session lives on");
}

/// A `js` page of a pull channel refreshes itself, as the original's pages did: after its
/// events, a script sends the hidden iframe to the refresh URL once `p_wait` has passed, so
/// the page around it only hears events (the original `js-pushlet-net.html` relied on that).
#[test]
fn a_js_pull_page_loads_the_next_by_itself_after_its_wait() {
    let _lab = lab();
    let addr = _lab.addr();
    let id = join(addr);
    subscribe(addr, &id, "/lab");
    let path = format!("{SRV}?p_event=listen&p_id={id}&p_mode=pull&p_format=js");
    let page = get(addr, &path).unwrap().body;
    let refresh_url = format!(
        "/pushlet/pushlet.srv?p_event=refresh\\u0026p_id={id}\\u0026p_mode=pull\\u0026p_format=js"
    );
    let trigger = page
        .find(&format!(
            "setTimeout(function () {{ document.location.href = \"{refresh_url}\"; }}, "
        ))
        .unwrap_or_else(|| panic!("no self-refresh in {page}"));
    let wait: u64 = page[trigger..]
        .split("}, ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap();
    assert!(
        (2000..=6000).contains(&wait),
        "the original's pull wait: {wait}"
    );
    assert!(page.trim_end().ends_with("</body></html>"), "{page}");
}

/// The events of a `js` page, read as the original JavaScript client reads them: every
/// `parent.push(name, value, name, value...)` call, its pairs in a map.
fn js_events(page: &str) -> Vec<std::collections::HashMap<String, String>> {
    page.split("<script>parent.push(")
        .skip(1)
        .map(|call| {
            let args = &call[..call.find(");</script>").expect("a whole call")];
            let args: Vec<String> = serde_json::from_str(&format!("[{args}]")).unwrap();
            args.chunks(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect()
        })
        .collect()
}

/// Exactly the requests the original JavaScript client (js-pushlet-client.js) builds: no
/// `p_format` anywhere (the server's default, `js`), the mode only at listen, `p_id` last on
/// every control request; each answer read from its `parent.push` calls.
#[test]
fn the_original_javascript_client_joins_listens_subscribes_publishes_and_leaves_unchanged() {
    let lab = lab();
    let addr = lab.addr();
    let control = |query: &str| js_events(&get(addr, &format!("{SRV}?{query}")).unwrap().body);
    // p_join(): the control frame loads the join.
    let joined = control("p_event=join");
    assert_eq!(joined[0]["p_event"], "join-ack");
    let id = joined[0]["p_id"].clone();
    // p_listen('/lab', 'stream'): the data frame loads the listen, and keeps it.
    let listen = format!("{SRV}?p_id={id}&p_event=listen&p_subject=/lab&p_mode=stream");
    let mut channel = Stream::open(addr, &listen, &[]).unwrap();
    assert_eq!(
        channel.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let page = read_until(&mut channel, "listen-ack");
    let ack = &js_events(&page)[0];
    assert_eq!(
        (ack["p_event"].as_str(), ack["p_mode"].as_str()),
        ("listen-ack", "stream")
    );
    assert_eq!(ack["p_sid"], "1", "its subject, /lab, subscribed");
    // p_heartbeat(), p_subscribe('/chat', 'room'), p_publish('/chat/a', 'nick', 'ann', ...).
    assert_eq!(
        control(&format!("p_event=hb&p_id={id}"))[0]["p_event"],
        "hb-ack"
    );
    let subscribed = control(&format!(
        "p_event=subscribe&p_subject=/chat&p_label=room&p_id={id}"
    ));
    assert_eq!(subscribed[0]["p_event"], "subscribe-ack");
    let sid = subscribed[0]["p_sid"].clone();
    let published = control(&format!(
        "p_event=publish&p_subject=/chat/a&nick=ann&msg=hi&p_id={id}"
    ));
    assert_eq!(published[0]["p_event"], "publish-ack");
    let page = read_until(&mut channel, "ann");
    let data = js_events(&page)
        .into_iter()
        .find(|e| e.get("nick").is_some_and(|n| n == "ann"))
        .unwrap();
    assert_eq!(
        (
            &data["p_event"],
            &data["p_subject"],
            &data["msg"],
            &data["p_label"],
            &data["p_sid"]
        ),
        (
            &"data".to_string(),
            &"/chat/a".to_string(),
            &"hi".to_string(),
            &"room".to_string(),
            &sid
        )
    );
    // p_unsubscribe(sid), then p_leave(): the data frame's page ends with an abort.
    let unsubscribed = control(&format!("p_event=unsubscribe&p_sid={sid}&p_id={id}"));
    assert_eq!(unsubscribed[0]["p_event"], "unsubscribe-ack");
    assert_eq!(
        control(&format!("p_event=leave&p_id={id}"))[0]["p_event"],
        "leave-ack"
    );
    let page = read_until(&mut channel, "</html>");
    assert!(
        js_events(&page).iter().any(|e| e["p_event"] == "abort"),
        "{page}"
    );
}
