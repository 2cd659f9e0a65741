//! JSONP polling: the answer is a script calling a validated callback, across origins.

use crate::common;

use common::{assert_is_script, start_lab};
use reverse_ajax_lab::client::{get, publish};

#[test]
fn the_answer_is_a_script_calling_the_callback() {
    let lab = start_lab();
    let addr = lab.addr();
    publish(addr, "one").unwrap();
    let answer = get(addr, "/events/jsonp?callback=lab.onEvents&since=0").unwrap();
    assert_is_script(&answer);
    assert_eq!(
        answer.body,
        r#"/**/lab.onEvents({"events":[{"data":"one","id":1}],"last":1});"#
    );
}

#[test]
fn event_data_cannot_break_out_of_the_script() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "</script><script>alert(1)</script>").unwrap();
    let answer = get(addr, "/events/jsonp?callback=cb&since=0").unwrap();
    assert!(!answer.body.contains("</script>"), "{}", answer.body);
    assert!(answer.body.contains(r"\u003c/script\u003e"));
}

#[test]
fn a_callback_that_is_not_an_identifier_is_refused() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for callback in ["alert(1)//", "a;b", "x%3Cscript%3E", "", "1abc", "a..b"] {
        let answer = get(addr, &format!("/events/jsonp?callback={callback}")).unwrap();
        assert_eq!(answer.status, 400, "{callback:?}");
        assert!(answer.header("Content-Type").unwrap().contains("json"));
        assert!(
            !answer.body.contains("alert(1)"),
            "never reflected: {}",
            answer.body
        );
    }
    let answer = get(addr, "/events/jsonp").unwrap();
    assert_eq!(answer.status, 400, "callback is required");
    let answer = get(addr, "/events/jsonp?callback=ok&since=x").unwrap();
    assert_eq!(answer.status, 400);
    // The server lives on.
    assert_eq!(get(addr, "/events/jsonp?callback=ok").unwrap().status, 200);
}

#[test]
fn page_polls_cross_origin_in_chromium() {
    // The page is on localhost; it polls 127.0.0.1, another origin.
    let (lab, _browser, mut page) = common::browser::open_lesson_cross_origin("jsonp_polling");
    page.wait_for_log("blocked by the same-origin policy");
    page.wait_for_log("[client] no event");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, None, "jsonp");
}
