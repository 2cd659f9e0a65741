//! CORS: the lab's own origins may read across origins; others may not; preflights answered.

use crate::common;

use common::{ids, start_lab};
use reverse_ajax_lab::client::{publish, request};

/// What Chromium sends before the page's fetch with its `X-Lab-Client` header.
fn preflight(addr: std::net::SocketAddr, origin: &str) -> reverse_ajax_lab::client::Response {
    let headers = [
        ("Origin", origin),
        ("Access-Control-Request-Method", "GET"),
        ("Access-Control-Request-Headers", "x-lab-client"),
    ];
    request(addr, "OPTIONS", "/events/cors", &headers, b"").unwrap()
}

#[test]
fn an_own_origin_is_named_in_the_answer() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "one").unwrap();
    let origin = common::own_other_origin(addr);
    let answer = common::from_origin(addr, "GET", "/events/cors?since=0", &origin);
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
    let _lab = start_lab();
    let addr = _lab.addr();
    let answer = common::from_origin(addr, "GET", "/events/cors", "http://evil.example");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Access-Control-Allow-Origin"), None);
    // And the plain polling endpoint never grants it, to anyone.
    let origin = common::own_other_origin(addr);
    let poll = common::from_origin(addr, "GET", "/events/poll", &origin);
    assert_eq!(poll.header("Access-Control-Allow-Origin"), None);
}

#[test]
fn preflights_allow_get_with_the_lab_header_from_own_origins_only() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let origin = common::own_other_origin(addr);
    let ok = preflight(addr, &origin);
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
    let (lab, _browser, mut page) = common::browser::open_lesson_cross_origin("cors");
    page.wait_for_log("blocked: no Access-Control-Allow-Origin");
    page.wait_for_log("[client] no event");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, None, "cors");
    // The custom header makes the browser preflight: one for `/events/cors`, one for
    // `?since=0` two seconds later, so two within three seconds of the page opening...
    let count = |lesson: &str| {
        common::stats(lab.addr())["lessons"][lesson]["requests"]
            .as_u64()
            .unwrap_or(0)
    };
    common::wait_until("two preflights", || count("cors_preflight") >= 2);
    // ...and its cache is per URL: polls that repeat a URL are not preflighted again. Over
    // the next three polls the URL changes once (the event moved `since`), so at most one
    // more preflight.
    let (preflights, polls) = (count("cors_preflight"), count("cors"));
    common::wait_until("three more polls", || count("cors") >= polls + 3);
    assert!(
        count("cors_preflight") <= preflights + 1,
        "a preflight per poll: the cache did not hold"
    );
}

/// Near misses are foreign: no permission to read, and their preflights are refused. A check
/// by prefix, by host alone or ignoring the port or scheme fails here.
#[test]
fn near_miss_origins_get_no_permission_and_no_preflight() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for origin in common::near_miss_origins(addr.port()) {
        let answer = common::from_origin(addr, "GET", "/events/cors", &origin);
        assert_eq!(answer.status, 200, "{origin}");
        assert_eq!(
            answer.header("Access-Control-Allow-Origin"),
            None,
            "{origin}"
        );
        let refused = preflight(addr, &origin);
        assert_eq!(refused.status, 403, "{origin}");
        assert_eq!(
            refused.header("Access-Control-Allow-Origin"),
            None,
            "{origin}"
        );
    }
}
