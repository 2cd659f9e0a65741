//! What every test file shares: a lab on port 0, waiting on a condition, and a real browser.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod browser;

use reverse_ajax_lab::client;
use reverse_ajax_lab::{Config, RunningLab};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A lab on a free port with the generator off: the test publishes every event itself.
pub fn start_lab() -> RunningLab {
    start_lab_with(|_| {})
}

pub fn start_lab_with(tweak: impl FnOnce(&mut Config)) -> RunningLab {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config {
        addr: "127.0.0.1:0".into(),
        generator: None,
        ..Config::default()
    };
    tweak(&mut config);
    RunningLab::start(config).expect("the lab starts")
}

/// The lab's URL under its other name: a page served from here is cross-origin to the
/// lab's `http://127.0.0.1:PORT` endpoints.
pub fn on_localhost(lab: &RunningLab, path: &str) -> String {
    format!("http://localhost:{}{path}", lab.addr().port())
}

/// A generous deadline: tests wait on conditions, never on luck.
pub fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// Check `condition` until it holds; panic with `what` at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let end = deadline();
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stats(addr: SocketAddr) -> Value {
    client::get(addr, "/stats").unwrap().json()
}

/// Wait until the server holds nothing for clients: no connection (but the /stats one), no
/// parked request, no stream, no subscriber.
pub fn wait_for_baseline(addr: SocketAddr) {
    wait_until("/stats returns to its baseline", || {
        let s = stats(addr);
        s["connections"] == 0 && s["parked"] == 0 && s["streams"] == 0 && s["subscribers"] == 0
    });
}

/// A JSONP answer: 200, served as JavaScript, and never sniffed as anything else.
pub fn assert_is_script(answer: &reverse_ajax_lab::client::Response) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let content_type = answer.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("application/javascript"),
        "{content_type}"
    );
    assert_eq!(answer.header("X-Content-Type-Options"), Some("nosniff"));
}

/// A string no other test publishes.
pub fn marker(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The ids in an `{"events": [...]}` answer.
pub fn ids(answer: &Value) -> Vec<u64> {
    answer["events"]
        .as_array()
        .expect("an events array")
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}
