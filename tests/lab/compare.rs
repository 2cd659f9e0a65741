//! Every technique side by side: the compare page runs a client of every lesson in one tab.

use crate::common;

use common::{browser::Browser, start_lab, stats, wait_until};

const ROWS: [&str; 11] = [
    "polling",
    "jsonp_polling",
    "cors",
    "piggyback",
    "long_polling",
    "script_long_polling",
    "forever_iframe",
    "multipart_streaming",
    "fetch_streaming",
    "sse",
    "websocket",
];

#[test]
fn every_technique_receives_the_pages_timed_events() {
    let lab = start_lab();
    let browser = Browser::launch();
    // The page publishes `compare <ms>` every 2 s itself (the lab's generator is off).
    let mut page = browser.open(&lab.url("/lessons/compare"));
    for name in ROWS {
        page.wait_for(
            &format!("the {name} row has received two events and timed them"),
            &format!(
                "(() => {{ const r = document.getElementById('row-{name}'); \
                 return !!r && Number(r.querySelector('td.events').textContent) >= 2 \
                 && r.querySelector('td.latency').textContent.includes('ms'); }})()"
            ),
        );
    }
    // Each row drew its own timeline; the polling row many requests, a stream row one.
    let requests = |page: &mut common::browser::Page, name: &str| -> u64 {
        page.eval(&format!(
            "Number(document.querySelector('#row-{name} td.requests').textContent)"
        ))
        .as_u64()
        .unwrap()
    };
    assert!(requests(&mut page, "polling") >= 2);
    assert_eq!(requests(&mut page, "sse"), 1);
    assert_eq!(requests(&mut page, "websocket"), 1);
    let drawn = page.eval("document.querySelectorAll('#compare svg.wire rect.bar').length");
    assert!(drawn.as_u64().unwrap() >= ROWS.len() as u64, "{drawn}");
    // And the server agrees: every lesson delivered events.
    wait_until("every lesson has delivered events on the server", || {
        let s = stats(lab.addr());
        ROWS.iter()
            .all(|name| s["lessons"][name]["events"].as_u64().unwrap_or(0) >= 2)
    });
}
