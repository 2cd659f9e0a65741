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

/// The page agrees with chapter 1: against the generator's schedule (a uniform pause, here
/// 0–500 ms) polls on their own timer (here 200 ms, `?interval=200`: chapter 1's 2 s and
/// 0–5 s, ten times faster) find about a third of their answers empty (36 % in theory), and
/// an event waits about half the interval (100 ms) for the poll that picks it up. (The page
/// once published on a 2 s timer beside its 2 s polls: every event then waited almost a whole
/// interval, 1.9 s, and 3–25 % of the answers were empty.)
#[test]
fn the_pages_polling_row_agrees_with_chapter_1() {
    let lab = common::start_lab_with(|c| c.generator = Some(0..=500));
    let browser = Browser::launch();
    let mut page = browser.open(&lab.url("/lessons/compare?interval=200"));
    // About 30 s of polls (a minute and a half allowed: the machine may be busy).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let enough = "typeof rows !== 'undefined' && rows.polling && rows.polling.requests >= 151";
    while page.eval(enough) != true {
        assert!(
            std::time::Instant::now() < until,
            "150 polls never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        page.eval("document.getElementById('auto').checked"),
        false,
        "the generator runs: the page does not publish as well"
    );
    let polling = page.eval(
        "(() => { const r = rows.polling; const s = [...r.latencies].sort((a, b) => a - b); \
         return { answers: r.requests - r.inFlight, empty: r.empty, \
         median: s[Math.floor(s.length / 2)], waits: s.length }; })()",
    );
    eprintln!("polling at 200 ms against events every 0–500 ms: {polling}");
    let answers = polling["answers"].as_f64().unwrap();
    let empty = polling["empty"].as_f64().unwrap() / answers;
    let median = polling["median"].as_f64().unwrap();
    assert!(
        (0.22..=0.50).contains(&empty),
        "a third empty, as chapter 1 says: {polling}"
    );
    assert!(
        (40.0..=160.0).contains(&median),
        "half the interval, as chapter 1 says: {polling}"
    );
    // The streams got each event first, or within milliseconds of the first.
    let sse = page.eval(
        "(() => { const s = [...rows.sse.latencies].sort((a, b) => a - b); \
         return s[Math.floor(s.length / 2)]; })()",
    );
    assert!(sse.as_f64().unwrap() < 40.0, "{sse}");
}
