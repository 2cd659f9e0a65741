//! Script-tag long polling: held script requests, validated callbacks, cross-origin pages.

use crate::common;

use common::{assert_is_script, start_lab, stats, wait_for_baseline, wait_for_stat};
use reverse_ajax_lab::client::{get, publish};
use std::thread;

#[test]
fn a_held_script_calls_the_callback_when_an_event_arrives() {
    let lab = start_lab();
    let addr = lab.addr();
    let waiting = thread::spawn(move || {
        get(
            addr,
            "/events/long-poll-script?callback=lab.onEvents&since=0",
        )
        .unwrap()
    });
    wait_for_stat(addr, "parked", 1, "the script request is parked");
    publish(addr, "</script><b>x</b>").unwrap();
    let answer = waiting.join().unwrap();
    assert_is_script(&answer);
    assert_eq!(
        answer.body,
        r#"/**/lab.onEvents({"events":[{"data":"\u003c/script\u003e\u003cb\u003ex\u003c/b\u003e","id":1}],"last":1});"#
    );
    wait_for_baseline(addr);
}

#[test]
fn waiting_events_and_the_deadline_are_scripts_too() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "waiting").unwrap();
    let at_once = get(addr, "/events/long-poll-script?callback=f&since=0").unwrap();
    assert!(at_once.body.starts_with("/**/f({") && at_once.body.contains("waiting"));
    let empty_script = "/events/long-poll-script?callback=f&since=1&timeout=1";
    let empty = get(addr, empty_script).unwrap();
    assert_eq!(empty.body, r#"/**/f({"events":[],"last":1});"#);
}

#[test]
fn the_callback_is_validated_before_anything_is_held() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for callback in ["alert(1)//", "a;b", "", "x.1"] {
        let answer = get(
            addr,
            &format!("/events/long-poll-script?callback={callback}"),
        )
        .unwrap();
        assert_eq!(answer.status, 400, "{callback:?}");
        assert!(!answer.body.contains("alert(1)"));
    }
    assert_eq!(
        get(addr, "/events/long-poll-script?callback=f&timeout=0")
            .unwrap()
            .status,
        400
    );
    assert_eq!(stats(addr)["parked"], 0);
}

#[test]
fn page_chains_script_tags_cross_origin_in_chromium() {
    let (lab, _browser, mut page) =
        common::browser::open_lesson_cross_origin("script_long_polling");
    page.wait_for_log("[client] script #1 waiting...");
    common::browser::page_shows_a_published_event(lab.addr(), &mut page, Some("parked"), "script");
    page.wait_for_log("[client] script #2 waiting...");
}
