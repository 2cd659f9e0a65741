//! CORS: the lab's own origins may read across origins; others may not; preflights answered.

mod common;

use common::{browser::Browser, ids, marker, start_lab};
use reverse_ajax_lab::client::{publish, request};

#[test]
fn an_own_origin_is_named_in_the_answer() {
    let lab = start_lab();
    let addr = lab.addr();
    publish(addr, "one").unwrap();
    let origin = format!("http://localhost:{}", addr.port());
    let answer = request(
        addr,
        "GET",
        "/events/cors?since=0",
        &[("Origin", &origin)],
        b"",
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("Access-Control-Allow-Origin"),
        Some(origin.as_str())
    );
    assert_eq!(answer.header("Vary"), Some("Origin"));
    assert_eq!(ids(&answer.json()), vec![1]);
}

#[test]
fn a_foreign_origin_gets_the_answer_but_no_permission_to_read_it() {
    let lab = start_lab();
    let addr = lab.addr();
    let answer = request(
        addr,
        "GET",
        "/events/cors",
        &[("Origin", "http://evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Access-Control-Allow-Origin"), None);
    // And the plain polling endpoint never grants it, to anyone.
    let origin = format!("http://localhost:{}", addr.port());
    let poll = request(addr, "GET", "/events/poll", &[("Origin", &origin)], b"").unwrap();
    assert_eq!(poll.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn preflights_allow_get_with_the_lab_header_from_own_origins_only() {
    let lab = start_lab();
    let addr = lab.addr();
    let origin = format!("http://localhost:{}", addr.port());
    let ok = request(
        addr,
        "OPTIONS",
        "/events/cors",
        &[
            ("Origin", &origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-lab-client"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("Access-Control-Allow-Origin"),
        Some(origin.as_str())
    );
    assert_eq!(
        ok.header("Access-Control-Allow-Headers"),
        Some("X-Lab-Client")
    );
    assert_eq!(ok.header("Access-Control-Max-Age"), Some("600"));
    let refused = [
        ("http://evil.example", "GET", "x-lab-client"),
        (origin.as_str(), "DELETE", ""),
        (origin.as_str(), "GET", "authorization"),
    ];
    for (from, method, headers) in refused {
        let answer = request(
            addr,
            "OPTIONS",
            "/events/cors",
            &[
                ("Origin", from),
                ("Access-Control-Request-Method", method),
                ("Access-Control-Request-Headers", headers),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(answer.status, 403, "{from} {method} {headers}");
        assert!(answer.json()["error"].is_string());
        assert_eq!(answer.header("Access-Control-Allow-Origin"), None);
    }
    assert_eq!(
        request(addr, "GET", "/events/cors?since=x", &[], b"")
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        request(addr, "POST", "/events/cors", &[], b"x")
            .unwrap()
            .status,
        405
    );
}

#[test]
fn page_reads_across_origins_in_chromium() {
    let lab = start_lab();
    let browser = Browser::launch();
    let url = common::on_localhost(&lab, "/lessons/cors");
    let mut page = browser.open(&url);
    page.wait_for_log("blocked: no Access-Control-Allow-Origin");
    page.wait_for_log("[client] no event");
    let text = marker("cors");
    publish(lab.addr(), &text).unwrap();
    page.wait_for_log(&format!("[event] {text}"));
    // The custom header made the browser preflight (its cache is per URL, and `since` changes
    // the URL: see the chapter's pitfalls).
    let stats = common::stats(lab.addr());
    assert!(
        stats["lessons"]["cors_preflight"]["requests"]
            .as_u64()
            .unwrap()
            >= 1
    );
}
