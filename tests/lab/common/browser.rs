//! Headless Chromium, driven over the DevTools protocol with the tungstenite and serde_json
//! the lab already has. (The `headless_chrome` crate works too, but adds about 118 crates and
//! minutes to a cold build; this is all we need: open a tab, evaluate JavaScript, read the
//! answer.)

use reverse_ajax_lab::client;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    profile: PathBuf,
    devtools: SocketAddr,
}

/// The Chromium binary: `$CHROMIUM`, or the first of the usual names on PATH.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.into();
        }
    }
    panic!(
        "Chromium not found. The README's test command (scripts/test) installs it with \
         apt-get; or set CHROMIUM=/path/to/chromium."
    );
}

impl Browser {
    /// Start headless Chromium with a fresh profile and the DevTools port on a free port.
    pub fn launch() -> Browser {
        Browser::launch_with(&[])
    }

    /// `launch`, with more command-line flags (a certificate to trust, say).
    pub fn launch_with(extra: &[String]) -> Browser {
        let profile = super::fresh_temp_dir("chromium");
        let child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Chromium starts");
        // Chromium writes the port it chose into the profile.
        let port_file = profile.join("DevToolsActivePort");
        let end = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            assert!(
                Instant::now() < end,
                "Chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Browser {
            child,
            profile,
            devtools: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    /// A new tab showing `url`.
    pub fn open(&self, url: &str) -> Page {
        // The whole query of /json/new is the URL, percent-decoded: an unescaped `&` would
        // end it (`?a=1&b=2` opened as `?a=1`).
        let escaped: String = url
            .chars()
            .map(|c| match c {
                '%' => "%25".to_string(),
                '&' => "%26".to_string(),
                '#' => "%23".to_string(),
                '+' => "%2B".to_string(),
                ' ' => "%20".to_string(),
                c => c.to_string(),
            })
            .collect();
        let answer = client::request(
            self.devtools,
            "PUT",
            &format!("/json/new?{escaped}"),
            &[],
            b"",
        )
        .expect("DevTools answers /json/new");
        let target = answer.json();
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no debugger URL in {target}"));
        let (socket, _) = tungstenite::connect(ws_url).expect("DevTools WebSocket");
        let mut page = Page { socket, next_id: 1 };
        page.wait_for(
            "the page has loaded",
            "location.href !== 'about:blank' && document.readyState === 'complete'",
        );
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub struct Page {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// One DevTools command; events that arrive meanwhile are skipped.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(command.to_string()))
            .expect("send to DevTools");
        loop {
            let message = self.socket.read().expect("read from DevTools");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(text.as_str()).unwrap();
            if value["id"] == id {
                if let Some(error) = value.get("error") {
                    panic!("DevTools {method} failed: {error}");
                }
                return value["result"].clone();
            }
        }
    }

    /// Evaluate JavaScript in the page (awaiting a promise) and return its value.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("page threw evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// The text of the page's log.
    pub fn log_text(&mut self) -> String {
        let text = self.eval("(document.getElementById('log') || {}).textContent || ''");
        text.as_str().unwrap_or_default().to_string()
    }

    /// Wait until the page's log contains `needle`; on timeout, show the log.
    pub fn wait_for_log(&mut self, needle: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the page never logged {needle:?}; its log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until a JavaScript expression is true.
    pub fn wait_for(&mut self, what: &str, expression: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while self.eval(expression) != json!(true) {
            assert!(Instant::now() < end, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the element `id` shows exactly `text`.
    pub fn wait_for_text(&mut self, id: &str, text: &str) {
        let check = format!("document.getElementById({id:?})?.textContent === {text:?}");
        self.wait_for(&format!("#{id} to show {text:?}"), &check);
    }

    /// Fill in the form `form`'s fields (`(id, value)` each) and submit it, as a user would.
    pub fn submit(&mut self, form: &str, fields: &[(&str, &str)]) {
        let mut script = String::new();
        for (id, value) in fields {
            script.push_str(&format!(
                "document.getElementById({id:?}).value = {value:?}; "
            ));
        }
        script.push_str(&format!(
            "document.getElementById({form:?}).requestSubmit()"
        ));
        self.eval(&script);
    }

    /// The bars the page's wire timeline (`#wire`, drawn by lab.js) shows now, as the test
    /// reads them off the SVG: `{kind, outcome, ms, ticks, lane}` each.
    pub fn wire_bars(&mut self) -> Vec<Value> {
        let bars = self.eval(
            "[...document.querySelectorAll('#wire rect.bar')].map((r) => ({ kind: r.dataset.kind, \
             outcome: r.dataset.outcome, ms: Number(r.dataset.ms), ticks: Number(r.dataset.ticks), \
             lane: Number(r.dataset.lane) }))",
        );
        bars.as_array().cloned().unwrap_or_default()
    }

    /// Wait until the wire timeline's bars satisfy `condition`; return them then.
    pub fn wait_for_bars(
        &mut self,
        what: &str,
        condition: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let bars = self.wire_bars();
            if condition(&bars) {
                return bars;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting until {what}; bars: {bars:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A headless Chromium with `path` of `lab` open in it (keep the browser bound while the page
/// is used).
pub fn open_page(lab: &reverse_ajax_lab::RunningLab, path: &str) -> (Browser, Page) {
    let browser = Browser::launch();
    let page = browser.open(&lab.url(path));
    (browser, page)
}

/// A lesson's page served from `localhost` while its requests go to `127.0.0.1`: another
/// origin to the browser (the cross-origin lessons). The lab, the browser and the page.
pub fn open_lesson_cross_origin(name: &str) -> (reverse_ajax_lab::RunningLab, Browser, Page) {
    let lab = super::start_lab();
    let browser = Browser::launch();
    let page = browser.open(&super::on_localhost(&lab, &format!("/lessons/{name}")));
    (lab, browser, page)
}

/// What every lesson's page test starts with: a lab on a free port (generator off), a headless
/// Chromium, and the lesson's page open in it. Keep the browser bound while the page is used:
/// dropping it ends Chromium.
pub fn open_lesson(name: &str) -> (reverse_ajax_lab::RunningLab, Browser, Page) {
    let lab = super::start_lab();
    let (browser, page) = open_page(&lab, &format!("/lessons/{name}"));
    (lab, browser, page)
}

/// What every lesson page's test in Chromium checks in the end: wait until the lab holds the
/// page's connection (`held`: "parked", "streams" or "subscribers" in `/stats`, at least
/// one; `None` for a page that polls), publish a marker named `name`, and wait for the page
/// to log `[event] <marker>`. Returns the marker.
pub fn page_shows_a_published_event(
    addr: SocketAddr,
    page: &mut Page,
    held: Option<&str>,
    name: &str,
) -> String {
    if let Some(held) = held {
        super::wait_until(&format!("the page's connection is held ({held})"), || {
            super::stats(addr)[held].as_u64().unwrap_or(0) >= 1
        });
    }
    let text = super::marker(name);
    client::publish(addr, &text).unwrap();
    page.wait_for_log(&format!("[event] {text}"));
    text
}
