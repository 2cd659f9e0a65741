//! Every technique side by side: the compare page runs a client of every lesson in one tab.

use crate::common;

use common::{browser::Browser, start_lab, stats, wait_until};

#[test]
fn every_technique_receives_the_pages_timed_events() {
    let lab = start_lab();
    let browser = Browser::launch();
    // The page publishes `compare <ms>` every 2 s itself (the lab's generator is off).
    let mut page = browser.open(&lab.url("/lessons/compare"));
    // A row per technique of the book's first three parts, and no other.
    let rows = common::techniques();
    let row_names = "[...document.querySelectorAll('tr[id^=\"row-\"]')].map(r => r.id.slice(4))";
    page.wait_for("the rows", &format!("{row_names}.length > 0"));
    let on_page = page.eval(row_names);
    assert_eq!(on_page, serde_json::json!(rows));
    for name in &rows {
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
    assert!(drawn.as_u64().unwrap() >= rows.len() as u64, "{drawn}");
    // And the server agrees: every lesson delivered events.
    wait_until("every lesson has delivered events on the server", || {
        let s = stats(lab.addr());
        rows.iter()
            .all(|name| s["lessons"][name]["events"].as_u64().unwrap_or(0) >= 2)
    });
}
