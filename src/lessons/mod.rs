//! One file per technique. Each opens with the idea, a wire transcript, its steps and its
//! costs; read one beside its chapter in LESSONS.md.
//!
//! This module holds the list of lessons (for the index page, the examples and the router's
//! 404/405 answers) and the one answer shape the request/response lessons share.

use crate::hub::Backlog;
use serde_json::{json, Value};

pub mod atmosphere;
pub mod bayeux;
pub mod behind_a_proxy;
pub mod buffering;
pub mod compare;
pub mod cors;
pub mod fetch_streaming;
pub mod forever_iframe;
pub mod jsonp_polling;
pub mod long_polling;
pub mod multipart_streaming;
pub mod piggyback;
pub mod polling;
pub mod pushlets;
pub mod scale_out;
pub mod script_long_polling;
pub mod socket_io;
pub mod sse;
pub mod websocket;

/// A lesson as the index page and the router see it.
pub struct Lesson {
    /// The one name shared by `src/lessons/`, `html/`, `examples/`, `tests/` and LESSONS.md.
    pub name: &'static str,
    /// Its chapter in LESSONS.md (the list is in the book's order).
    pub chapter: u8,
    pub title: &'static str,
    /// The idea in one line, shown on the index.
    pub idea: &'static str,
    /// The page, embedded so the lab runs from any directory.
    pub page: &'static str,
    /// (methods, path) this lesson answers.
    pub endpoints: &'static [(&'static str, &'static str)],
}

/// The book's parts, each with the chapters it holds (LESSONS.md), as the index groups them.
pub const PARTS: &[(&str, std::ops::RangeInclusive<u8>)] = &[
    ("Part I: Asking", 1..=4),
    ("Part II: Holding the request", 5..=6),
    ("Part III: Streaming, and the socket", 7..=12),
    ("Part IV: Measuring", 13..=14),
    ("Part V: The frameworks", 15..=19),
    ("Part VI: In production", 20..=21),
];

pub const LESSONS: &[Lesson] = &[
    Lesson {
        name: "polling",
        chapter: 1,
        title: "HTTP polling",
        idea: "Ask every 2 seconds whether anything happened; most answers say no.",
        page: include_str!("../../html/polling.html"),
        endpoints: &[("GET", "/events/poll")],
    },
    Lesson {
        name: "jsonp_polling",
        chapter: 2,
        title: "JSONP polling",
        idea: "Polling across origins with a script tag, because a plain XHR to another origin is blocked.",
        page: include_str!("../../html/jsonp_polling.html"),
        endpoints: &[("GET", "/events/jsonp")],
    },
    Lesson {
        name: "cors",
        chapter: 3,
        title: "CORS polling",
        idea: "A plain fetch across origins, readable because the server names the page's origin.",
        page: include_str!("../../html/cors.html"),
        endpoints: &[("GET, OPTIONS", "/events/cors")],
    },
    Lesson {
        name: "piggyback",
        chapter: 4,
        title: "Piggyback polling",
        idea: "Never ask just for events: they ride along on requests the page makes anyway.",
        page: include_str!("../../html/piggyback.html"),
        endpoints: &[("POST", "/events/piggyback")],
    },
    Lesson {
        name: "long_polling",
        chapter: 5,
        title: "XHR long polling (Comet)",
        idea: "Ask once; the server holds the request until an event arrives or a deadline passes.",
        page: include_str!("../../html/long_polling.html"),
        endpoints: &[("GET", "/events/long-poll")],
    },
    Lesson {
        name: "script_long_polling",
        chapter: 6,
        title: "Script-tag long polling (Comet)",
        idea: "Long polling across origins: each held answer is a script that asks again.",
        page: include_str!("../../html/script_long_polling.html"),
        endpoints: &[("GET", "/events/long-poll-script")],
    },
    Lesson {
        name: "buffering",
        chapter: 7,
        title: "The buffering trap",
        idea: "The same stream through a buffered writer: nothing arrives until the stream ends.",
        page: include_str!("../../html/buffering.html"),
        endpoints: &[("GET", "/events/buffered")],
    },
    Lesson {
        name: "forever_iframe",
        chapter: 8,
        title: "Forever iframe (Comet streaming)",
        idea: "A hidden iframe loads a page that never ends; each event is one more <script> tag.",
        page: include_str!("../../html/forever_iframe.html"),
        endpoints: &[("GET", "/events/iframe")],
    },
    Lesson {
        name: "multipart_streaming",
        chapter: 9,
        title: "Multipart streaming (Comet streaming)",
        idea: "One multipart/x-mixed-replace response, one part per event, read with fetch().",
        page: include_str!("../../html/multipart_streaming.html"),
        endpoints: &[("GET", "/events/multipart")],
    },
    Lesson {
        name: "fetch_streaming",
        chapter: 10,
        title: "Fetch streaming (NDJSON)",
        idea: "fetch() reads a response that never ends, one JSON event per line, as it arrives.",
        page: include_str!("../../html/fetch_streaming.html"),
        endpoints: &[("GET", "/events/stream")],
    },
    Lesson {
        name: "sse",
        chapter: 11,
        title: "Server-Sent Events",
        idea: "The standard stream: EventSource reconnects by itself and resumes from Last-Event-ID.",
        page: include_str!("../../html/sse.html"),
        endpoints: &[("GET", "/events/sse")],
    },
    Lesson {
        name: "websocket",
        chapter: 12,
        title: "WebSocket",
        idea: "One handshake, then a full-duplex socket: events pushed as frames, your messages sent back.",
        page: include_str!("../../html/websocket.html"),
        // A handshake on the HTTP port (`Upgrade: websocket`); a plain GET is told so (426).
        endpoints: &[("GET", "/events/ws")],
    },
    // Every lesson above at once, in one tab.
    compare::LESSON,
    Lesson {
        name: "socket_io",
        chapter: 15,
        title: "Socket.IO (Engine.IO 4, Socket.IO 5)",
        idea: "A session that starts on long polling and upgrades to a WebSocket, carrying named events, acks and rooms.",
        page: include_str!("../../html/socket_io.html"),
        // Polling, and the websocket transport's handshake, at the same path.
        endpoints: &[("GET, POST, OPTIONS", "/socket.io/"), ("POST", "/socket.io/kick")],
    },
    Lesson {
        name: "bayeux",
        chapter: 16,
        title: "CometD's Bayeux protocol",
        idea: "Publish and subscribe on named channels, a client id from a handshake, and one held /meta/connect carrying every delivery.",
        page: include_str!("../../html/bayeux.html"),
        endpoints: &[("GET, POST, OPTIONS", "/cometd")],
    },
    Lesson {
        name: "pushlets",
        chapter: 17,
        title: "Pushlets",
        idea: "The observer pattern over HTTP: a session, subjects to subscribe to, and one data channel that streams, pulls or polls.",
        page: include_str!("../../html/pushlets.html"),
        endpoints: &[("GET, POST", "/pushlet/pushlet.srv")],
    },
    Lesson {
        name: "atmosphere",
        chapter: 18,
        title: "Atmosphere",
        idea: "One broadcaster over every transport: the client tries WebSocket, falls back to SSE, streaming or long polling, and resumes by its tracking id.",
        page: include_str!("../../html/atmosphere.html"),
        // Every transport here, the websocket transport's handshake too.
        endpoints: &[("GET, POST, DELETE", "/atmosphere/lab")],
    },
    Lesson {
        name: "scale_out",
        chapter: 20,
        title: "Scale-out through Redis",
        idea: "Two labs share one stream of events through Redis: the same ids everywhere, so a client can move with its cursor.",
        page: include_str!("../../html/scale_out.html"),
        // Run with --redis (and --peer); without it, the page says how.
        endpoints: &[("GET", "/scale-out")],
    },
    Lesson {
        name: "behind_a_proxy",
        chapter: 21,
        title: "Behind a proxy (nginx)",
        idea: "A real nginx in front: streams it buffers, holds it cuts, WebSockets it drops, and the lines that make it pass everything on.",
        page: include_str!("../../html/behind_a_proxy.html"),
        // Its page is meant to be opened through nginx (`cargo run --example behind_a_proxy`).
        endpoints: &[("GET", "/events/sse-unmarked"), ("GET", "/behind-a-proxy")],
    },
];

/// Paths every run serves, whichever lessons it serves.
const SHARED_ENDPOINTS: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/stats"),
    ("GET", "/teacher"),
    ("POST", "/publish"),
    ("GET", "/assets/lab.js"),
    ("GET", "/assets/lab.css"),
    ("GET", "/favicon.ico"),
];

pub const INDEX_HTML: &str = include_str!("../../html/index.html");
pub const LAB_JS: &str = include_str!("../../html/lab.js");
pub const LAB_CSS: &str = include_str!("../../html/lab.css");

/// The lesson that owns an endpoint path, if any.
pub fn owner_of(path: &str) -> Option<&'static str> {
    LESSONS
        .iter()
        .find(|l| l.endpoints.iter().any(|(_, p)| *p == path))
        .map(|l| l.name)
}

/// The lesson a request belongs to, for the teacher's view: its endpoints' owner, or the
/// lesson whose page it is (the frameworks' paths below their endpoint count too).
pub fn lesson_of(path: &str) -> Option<&'static str> {
    if let Some(name) = path.strip_prefix("/lessons/") {
        return LESSONS.iter().find(|l| l.name == name).map(|l| l.name);
    }
    if path.starts_with("/cometd") {
        return Some("bayeux");
    }
    if path.starts_with(atmosphere::PREFIX) {
        return Some("atmosphere");
    }
    owner_of(path)
}

/// The wake-up line of a framework's timekeeping thread (Socket.IO's heartbeat, the Bayeux and
/// Pushlets sweepers): the thread sleeps until its next deadline, and `ring` wakes it early
/// when something new may be due sooner (a session or client just arrived).
pub struct Alarm {
    tx: crossbeam_channel::Sender<()>,
    rx: std::sync::Mutex<Option<crossbeam_channel::Receiver<()>>>,
}

impl Default for Alarm {
    fn default() -> Alarm {
        let (tx, rx) = crossbeam_channel::unbounded();
        Alarm {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Alarm {
    pub fn ring(&self) {
        let _ = self.tx.send(());
    }

    /// Start the thread `name` running `keep_time` with this alarm's wake-ups (once: a
    /// second call does nothing).
    pub fn spawn(
        &self,
        name: &str,
        keep_time: impl FnOnce(&crossbeam_channel::Receiver<()>) + Send + 'static,
    ) -> std::io::Result<()> {
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return Ok(());
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || keep_time(&rx))?;
        Ok(())
    }
}

/// A file `npm ci` installed under `node_modules/` (a framework's official client, for a
/// page's `?client=official`), looked for in the current directory and in the lab's source
/// folder. The lab itself never needs one.
pub fn installed_client(path: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new("node_modules").join(path);
    [
        path.clone(),
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&path),
    ]
    .into_iter()
    .find_map(|p| std::fs::read(p).ok())
}

/// Answer with a script `npm ci` installed (`installed_client`), for lesson `lesson`'s page;
/// 404 naming `npm ci` when it is not there, or when `path` is `None` (not a file we serve).
pub fn serve_installed_client(
    lab: &crate::lab::Lab,
    request: crate::connection::Request,
    lesson: &'static str,
    path: Option<&str>,
) -> std::io::Result<()> {
    let counters = lab.count(lesson);
    match path.and_then(installed_client) {
        Some(script) => crate::http::write_response(
            request,
            200,
            "text/javascript; charset=utf-8",
            &[],
            &script,
            &counters,
        ),
        None => crate::http::HttpError::new(
            404,
            "not an installed client: run `npm ci` in the lab's folder",
        )
        .reply(request, &counters),
    }
}

/// For a 405: the methods a known path does answer (the `Allow` header).
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    if path.starts_with("/lessons/") {
        return Some("GET");
    }
    LESSONS
        .iter()
        .flat_map(|l| l.endpoints.iter())
        .chain(SHARED_ENDPOINTS)
        .find(|(_, p)| *p == path)
        .map(|(methods, _)| *methods)
}

/// `{"events": [...], "last": N}`, plus `"missed": k` when the ring had moved past `cursor`.
pub fn events_answer(backlog: &Backlog, cursor: u64) -> Value {
    let events: Vec<Value> = backlog.events.iter().map(|e| e.to_json()).collect();
    let mut answer = json!({ "events": events, "last": backlog.last(cursor) });
    if backlog.missed > 0 {
        answer["missed"] = json!(backlog.missed);
    }
    answer
}
