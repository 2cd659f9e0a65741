//! The classroom: the lab bound to every interface and reached under another address.
//! `127.0.0.2`, `127.0.0.3`... are other addresses (and other origins) on Linux's loopback, so
//! a test can be a student's laptop: a browser at `http://127.0.0.2:PORT`, and clients whose
//! packets come *from* other addresses (their sockets bound there before connecting).

use crate::common;

use common::browser::Browser;
use common::{start_lab_with, wait_until};
use reverse_ajax_lab::client::{self, publish};
use reverse_ajax_lab::RunningLab;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::client::IntoClientRequest;

/// A lab on every interface (`0.0.0.0`), generator off.
fn open_lab(tweak: impl FnOnce(&mut reverse_ajax_lab::Config)) -> RunningLab {
    start_lab_with(|c| {
        c.addr = "0.0.0.0:0".into();
        c.ws_addr = Some("0.0.0.0:0".into());
        c.other_addr = Some("0.0.0.0:0".into());
        tweak(c);
    })
}

/// The lab's HTTP port at a loopback address.
fn at(lab: &RunningLab, ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), lab.addr().port())
}

fn stats_at(addr: SocketAddr) -> Value {
    client::get(addr, "/stats").unwrap().json()
}

/// `GET path` on `to`, sent from the address `from` (a student's machine).
fn get_from(from: &str, to: SocketAddr, path: &str) -> TcpStream {
    let mut stream = client::connect_from(from.parse().unwrap(), to).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {to}\r\n\r\n").unwrap();
    stream
}

fn status_of(stream: TcpStream) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    let mut rest = String::new();
    loop {
        let mut l = String::new();
        if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
            break;
        }
    }
    let _ = reader.read_line(&mut rest);
    (status, rest)
}

#[test]
fn the_urls_handed_out_are_built_from_the_address_the_browser_used() {
    let lab = open_lab(|_| {});
    let s = stats_at(at(&lab, "127.0.0.2"));
    let ws = s["websocket"].as_str().unwrap();
    assert!(ws.starts_with("ws://127.0.0.2:"), "{ws}");
    // Every address a student can type, none of them 0.0.0.0; the index shows each with a QR code.
    let urls: Vec<&str> = s["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        urls.contains(&format!("http://127.0.0.1:{}/", lab.addr().port()).as_str()),
        "{urls:?}"
    );
    assert!(urls.iter().all(|u| !u.contains("0.0.0.0")));
    let index = client::get(at(&lab, "127.0.0.2"), "/").unwrap().body;
    assert!(index.contains("Open the lab from another machine"));
    // A QR code for each address a phone can reach; loopback is this machine's own.
    let reachable = urls.iter().filter(|u| !u.contains("://127.")).count();
    assert_eq!(
        index.matches("<svg").count(),
        reachable,
        "a QR code per reachable URL"
    );
    let port = lab.addr().port();
    assert!(index.contains(&format!(
        "<a href=\"http://127.0.0.1:{port}/\">http://127.0.0.1:{port}/</a> (this machine only)"
    )));
    // The publish command as this browser reached the lab: it works typed on its machine.
    assert!(index.contains(&format!("curl -d hello http://127.0.0.2:{port}/publish")));
    // The other origin's port, for the cross-origin lessons.
    let script = client::get(at(&lab, "127.0.0.2"), "/assets/lab.js")
        .unwrap()
        .body;
    assert!(script.starts_with(&format!("const LAB_OTHER_PORT = {};", s["other_port"])));
}

#[test]
fn a_page_at_another_address_opens_the_websocket_and_a_foreign_page_still_cannot() {
    let lab = open_lab(|_| {});
    let port = lab.addr().port();
    let ws = stats_at(at(&lab, "127.0.0.2"))["websocket"]
        .as_str()
        .unwrap()
        .to_string();
    let open = |origin: &str, host: Option<&str>| {
        let mut request = ws.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        if let Some(host) = host {
            request.headers_mut().insert("Host", host.parse().unwrap());
        }
        tungstenite::connect(request)
            .map(|_| ())
            .map_err(|e| match e {
                tungstenite::Error::Http(response) => response.status().as_u16(),
                other => panic!("{other}"),
            })
    };
    assert_eq!(open(&format!("http://127.0.0.2:{port}"), None), Ok(()));
    assert_eq!(open("http://evil.example", None), Err(403));
    // The same host on another port, or another address, is another origin.
    assert_eq!(
        open(&format!("http://127.0.0.2:{}", port + 1), None),
        Err(403)
    );
    assert_eq!(open(&format!("http://127.0.0.3:{port}"), None), Err(403));
    // DNS rebinding: a name the attacker points at the lab's address is not the lab's.
    let rebound = format!(
        "evil.example:{}",
        ws.rsplit(':').next().unwrap().split('/').next().unwrap()
    );
    assert_eq!(
        open(&format!("http://evil.example:{port}"), Some(&rebound)),
        Err(403)
    );
    for origin in common::near_miss_origins(port) {
        assert_eq!(open(&origin, None), Err(403), "{origin}");
    }
}

#[test]
fn one_address_holds_at_most_its_share_and_the_others_are_untouched() {
    let lab = open_lab(|c| c.max_per_client = 2);
    let addr = at(&lab, "127.0.0.2");
    let held: Vec<TcpStream> = (0..2)
        .map(|_| get_from("127.0.0.5", addr, "/events/long-poll?timeout=60"))
        .collect();
    wait_until("both are parked", || stats_at(addr)["parked"] == 2);
    let (status, body) = status_of(get_from("127.0.0.5", addr, "/events/long-poll?timeout=60"));
    assert_eq!(status, 503, "the third from the same address");
    assert!(body.contains("--max-per-client"), "{body}");
    let other = get_from("127.0.0.6", addr, "/events/long-poll?timeout=60");
    wait_until("another address still parks", || {
        stats_at(addr)["parked"] == 3
    });
    assert_eq!(stats_at(addr)["clients"], 2);
    // Pages and /stats are not counted against the share.
    assert_eq!(
        status_of(get_from("127.0.0.5", addr, "/lessons/sse")).0,
        200
    );
    drop(held);
    drop(other);
    publish(addr, "release").unwrap();
    wait_until("the shares are given back", || {
        stats_at(addr)["clients"] == 0
    });
    let again = get_from("127.0.0.5", addr, "/events/long-poll?timeout=60");
    wait_until("the address may park again", || {
        stats_at(addr)["parked"] == 1
    });
    drop(again);
}

#[test]
fn every_page_works_from_another_address_in_chromium() {
    let lab = open_lab(|_| {});
    let base = format!("http://127.0.0.2:{}", lab.addr().port());
    let browser = Browser::launch();
    // Each page receives an event published after it opened; the cross-origin ones reach the
    // lab's other port, their "other origin" in a classroom.
    // (Piggyback's page needs a form submitted: it is left out.)
    let mut lessons = common::techniques();
    lessons.retain(|lesson| *lesson != "piggyback");
    lessons.extend(["socket_io", "bayeux"]);
    for lesson in lessons {
        let mut page = browser.open(&format!("{base}/lessons/{lesson}"));
        let marker = common::marker(lesson);
        let published = std::time::Instant::now();
        // Publish until the page shows it (a page may still be connecting at first).
        let addr = lab.addr();
        let mut tries = 0;
        loop {
            publish(
                SocketAddr::new(IpAddr::from([127, 0, 0, 1]), addr.port()),
                &marker,
            )
            .unwrap();
            if page.eval(&format!(
                "document.getElementById('log').textContent.includes({:?})",
                format!("[event] {marker}")
            )) == Value::Bool(true)
            {
                break;
            }
            tries += 1;
            assert!(
                published.elapsed() < Duration::from_secs(25),
                "{lesson} never showed an event from 127.0.0.2 ({tries} publishes): {}",
                page.log_text()
            );
            std::thread::sleep(Duration::from_millis(700));
        }
    }
}

#[test]
fn the_teacher_view_counts_the_browsers_and_what_they_hold() {
    let lab = open_lab(|_| {});
    let addr = at(&lab, "127.0.0.2");
    let _polls = [
        get_from("127.0.0.7", addr, "/events/long-poll?timeout=60"),
        get_from("127.0.0.8", addr, "/events/long-poll?timeout=60"),
        get_from("127.0.0.8", addr, "/events/long-poll?timeout=60"),
    ];
    let _stream = get_from("127.0.0.9", addr, "/events/sse");
    // The frameworks are rows too: a Pushlets stream and an Atmosphere stream.
    let _pushlets = get_from(
        "127.0.0.10",
        addr,
        "/pushlet/pushlet.srv?p_event=join-listen&p_subject=/lab&p_mode=stream&p_format=xml",
    );
    let _atmosphere = get_from(
        "127.0.0.11",
        addr,
        "/atmosphere/lab?X-Atmosphere-Transport=streaming&X-atmo-protocol=true&X-Atmosphere-tracking-id=0",
    );
    wait_until("all are held", || {
        let s = stats_at(addr);
        s["parked"] == 3 && s["streams"] == 3
    });
    let browser = Browser::launch();
    let mut page = browser.open(&format!("http://127.0.0.2:{}/teacher", lab.addr().port()));
    let row = |lesson: &str, column: usize| {
        format!(
            "(document.querySelector('tr[data-lesson={lesson}]')?.children[{column}]?.textContent)"
        )
    };
    page.wait_for(
        "long polling: two browsers, three held",
        &format!(
            "{} === '2' && {} === '3'",
            row("long_polling", 1),
            row("long_polling", 2)
        ),
    );
    page.wait_for(
        "SSE: one browser, one held",
        &format!("{} === '1' && {} === '1'", row("sse", 1), row("sse", 2)),
    );
    for framework in ["pushlets", "atmosphere"] {
        page.wait_for(
            &format!("{framework}: one browser, one held"),
            &format!(
                "{} === '1' && {} === '1'",
                row(framework, 1),
                row(framework, 2)
            ),
        );
    }
    // The publish box reaches every student.
    page.eval("document.querySelector('#publish input').value = 'to the room'; document.querySelector('#publish').requestSubmit()");
    wait_until("the teacher's event is published", || {
        client::get(addr, "/events/poll?since=0").unwrap().json()["events"][0]["data"]
            == "to the room"
    });
}

/// What is wrong with the page in `page` on a phone, as JavaScript finds it: not laid out at
/// the phone's width (no viewport), a page wider than the screen (sideways scrolling), text
/// under 12 px (a wire timeline's text counts at the size it is drawn).
const PHONE_PROBLEMS: &str = r#"(() => {
  const problems = [];
  // (A page wider than its viewport, or without one, is zoomed out to fit: wider than 390.)
  if (window.innerWidth !== 390) problems.push('laid out ' + window.innerWidth + ' px wide');
  const wide = document.documentElement.scrollWidth;
  if (wide > window.innerWidth + 1) problems.push('scrolls sideways: ' + wide + ' px');
  for (const el of document.body.querySelectorAll('*')) {
    if (['TITLE', 'SCRIPT', 'STYLE', 'title'].includes(el.tagName)) continue;
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!text || box.width === 0 || box.height === 0) continue;
    let size = parseFloat(getComputedStyle(el).fontSize);
    const svg = el.closest('svg');
    if (svg && svg.viewBox && svg.viewBox.baseVal && svg.viewBox.baseVal.width) {
      size *= svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    }
    if (size < 11.99) {
      problems.push(el.tagName + ' "' + el.textContent.trim().slice(0, 30) + '" at ' + size.toFixed(1) + ' px');
    }
  }
  return problems.slice(0, 8);
})()"#;

/// Students bring phones: every page (the index, the teacher's view, every lesson's) is laid
/// out at the phone's width, scrolls only down, and has no text under 12 px, the wire
/// timeline's included, at 390 CSS px (an iPhone's width), in Chromium's phone emulation.
#[test]
fn every_page_reads_on_a_phone_390_px_wide() {
    let lab = common::start_lab();
    publish(lab.addr(), "something for the logs").unwrap();
    let browser = Browser::launch();
    let mut paths = vec!["/".to_string(), "/teacher".to_string()];
    paths.extend(
        reverse_ajax_lab::lessons::LESSONS
            .iter()
            .map(|lesson| format!("/lessons/{}", lesson.name)),
    );
    let mut failures = Vec::new();
    for path in paths {
        let mut page = browser.open(&lab.url(&path));
        let phone = serde_json::json!({
            "width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": true,
        });
        page.call("Emulation.setDeviceMetricsOverride", phone);
        // The page's own scripts have drawn what they draw at once (the wire timeline).
        page.wait_for("the phone's screen", "screen.width === 390");
        // The page's scripts redraw for the new width (the wire timeline, every 250 ms).
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let problems = loop {
            let problems = page.eval(PHONE_PROBLEMS);
            let fine = problems.as_array().is_some_and(|p| p.is_empty());
            if fine || std::time::Instant::now() > until {
                break problems;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if problems.as_array().is_some_and(|p| !p.is_empty()) {
            failures.push(format!("{path}: {problems}"));
        }
        // Away from the page, so its held connections do not take the browser's six.
        page.eval("location.href = 'about:blank'");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// If the lab dies in class, the teacher starts it again with the same command, and every
/// open page picks up by itself: polls and long polls ask again, EventSource, the WebSocket
/// page and socket.io-client reconnect, and each takes its cursor from the old run as "now"
/// (ids begin again at 1). Shown here with the pages of the class plan's segments open while
/// the lab stops and a new one starts on the same ports.
#[test]
fn the_lab_started_again_on_its_ports_is_picked_up_by_every_open_page() {
    let first = common::start_lab();
    let (addr, other) = (first.addr(), first.other_addr());
    let pages = [
        "polling",
        "jsonp_polling",
        "cors",
        "long_polling",
        "script_long_polling",
        "forever_iframe",
        "multipart_streaming",
        "fetch_streaming",
        "sse",
        "websocket",
        "socket_io",
        "bayeux",
        "pushlets",
        "atmosphere",
    ];
    // Three browsers, as a room has many: one browser opens at most six connections to a
    // host, and most of these pages hold one.
    let browsers: Vec<Browser> = (0..3).map(|_| Browser::launch()).collect();
    let mut open: Vec<_> = pages
        .iter()
        .enumerate()
        .map(|(i, name)| browsers[i % 3].open(&first.url(&format!("/lessons/{name}"))))
        .collect();
    // Each page is up and has an event from the first run (published until every page has
    // one: a page still joining misses what came before it).
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !open
        .iter_mut()
        .all(|page| page.log_text().contains("[event] before the restart"))
    {
        assert!(std::time::Instant::now() < until, "the pages never came up");
        publish(addr, "before the restart").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
    first.stop().expect("the first lab stops");
    // Down for a few seconds, as while a teacher types the command again: every page's
    // first attempts to come back fail, and it must keep trying.
    std::thread::sleep(Duration::from_secs(3));
    // The same command again: the same ports (a moment's retry while the old sockets close).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let started = RunningLab::start(reverse_ajax_lab::Config {
            addr: addr.to_string(),
            other_addr: Some(other.to_string()),
            generator: None,
            ..reverse_ajax_lab::Config::default()
        });
        match started {
            Ok(lab) => break lab,
            Err(e) if std::time::Instant::now() < until => {
                log::debug!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the lab does not start again on {addr}: {e}"),
        }
    };
    // Events of the new run reach every page, however often it is published meanwhile.
    let mut reached = vec![false; open.len()];
    let until = std::time::Instant::now() + Duration::from_secs(45);
    while reached.iter().any(|r| !r) {
        if std::time::Instant::now() >= until {
            let stuck: Vec<String> = pages
                .iter()
                .zip(open.iter_mut())
                .zip(&reached)
                .filter(|(_, r)| !**r)
                .map(|((name, page), _)| format!("{name}: {}", page.log_text()))
                .collect();
            panic!("pages that never picked up again:\n{}", stuck.join("\n"));
        }
        publish(second.addr(), "after the restart").unwrap();
        std::thread::sleep(Duration::from_millis(500));
        for (page, reached) in open.iter_mut().zip(reached.iter_mut()) {
            *reached = *reached || page.log_text().contains("[event] after the restart");
        }
    }
}

/// The phone check on the index page: it says whether this device reaches the other port
/// (the cross-origin lessons'), so that a blocked port is not mistaken for the CORS lesson's
/// deliberate refusal, and so does the CORS page itself. Open here; "blocked" where the other
/// port listens on loopback only, as a firewall would make it from a phone.
#[test]
fn the_index_tells_a_phone_whether_the_other_port_is_open() {
    let browser = Browser::launch();
    let lab = open_lab(|_| {});
    let mut page = browser.open(&format!("http://{}/", at(&lab, "127.0.0.2")));
    page.wait_for_text("other-port", "open");
    let closed = open_lab(|c| c.other_addr = Some("127.0.0.1:0".into()));
    let mut page = browser.open(&format!("http://{}/", at(&closed, "127.0.0.2")));
    page.wait_for(
        "the check to say blocked",
        "document.getElementById('other-port').textContent.startsWith('blocked: open TCP port')",
    );
    // The CORS lesson tells a closed port from its own deliberate refusal too.
    let mut cors = browser.open(&format!("http://{}/lessons/cors", at(&closed, "127.0.0.2")));
    cors.wait_for_log("at all: its port is closed (a firewall)");
    assert!(!cors.log_text().contains("on purpose"));
    let mut cors = browser.open(&format!("http://{}/lessons/cors", at(&lab, "127.0.0.2")));
    cors.wait_for_log("on purpose: /events/poll from");
    cors.wait_for_log("[client] no event");
}
