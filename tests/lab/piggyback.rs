//! Piggyback polling: events come only on the back of a real request.

use crate::common;

use common::{ids, marker, start_lab};
use reverse_ajax_lab::client::{post, publish};

const FORM: &str = "application/x-www-form-urlencoded";

/// Submit the form `fields` with the cursor `since`; the JSON answer.
fn submit(addr: std::net::SocketAddr, since: u64, fields: &str) -> serde_json::Value {
    let path = format!("/events/piggyback?since={since}");
    post(addr, &path, FORM, fields).unwrap().json()
}

#[test]
fn a_form_submission_brings_the_waiting_events() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "one").unwrap();
    publish(addr, "two").unwrap();
    let answer = submit(addr, 0, "name=Ada&email=ada%40example.org&age=36");
    assert_eq!(answer["formValid"], true);
    assert_eq!(answer["errors"], serde_json::json!({}));
    assert_eq!(ids(&answer), vec![1, 2]);
    assert_eq!(answer["last"], 2);
}

#[test]
fn an_invalid_form_gets_its_errors_and_still_the_events() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "one").unwrap();
    let answer = submit(addr, 0, "name=&email=nope&age=7");
    assert_eq!(answer["formValid"], false);
    for field in ["name", "email", "age"] {
        assert!(answer["errors"][field].is_string(), "{field}: {answer}");
    }
    assert_eq!(ids(&answer), vec![1]);
    let answer = submit(addr, 1, "name=Bo&email=bo%40x.org&age=200");
    assert_eq!(answer["formValid"], false);
    assert!(answer["errors"].get("name").is_none());
    assert!(answer["errors"]["age"].is_string());
}

#[test]
fn piggyback_never_answers_a_request_that_asked_for_nothing() {
    let _lab = start_lab();
    let addr = _lab.addr();
    publish(addr, "waiting").unwrap();
    for body in ["", "unrelated=1"] {
        let answer = post(addr, "/events/piggyback?since=0", FORM, body).unwrap();
        assert_eq!(answer.status, 400, "{body:?}");
        assert!(
            answer.json()["events"].is_null(),
            "no events without a form"
        );
    }
    let answer = post(addr, "/events/piggyback?since=x", FORM, "name=a").unwrap();
    assert_eq!(answer.status, 400);
    let stats = common::stats(addr);
    assert_eq!(stats["lessons"]["piggyback"]["events"], 0);
}

#[test]
fn page_brings_events_on_submit_in_chromium() {
    let (lab, _browser, mut page) = common::browser::open_lesson("piggyback");
    page.eval("document.getElementById('submit').click()");
    page.wait_for_log("[server] form valid? true");
    let text = marker("piggy");
    publish(lab.addr(), &text).unwrap();
    // Nothing arrives until the user acts: that is the lesson. Not for two seconds either.
    common::stays_true_for(
        std::time::Duration::from_secs(2),
        "the event waits for the user's next submit",
        || !page.log_text().contains(&text),
    );
    page.eval("document.querySelector('input[name=age]').value = '5'");
    page.eval("document.getElementById('submit').click()");
    page.wait_for_log(&format!("[event] {text}"));
    page.wait_for_log("[server] age:");
}
