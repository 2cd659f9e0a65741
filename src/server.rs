//! How a request reaches a lesson: one listener, one accept loop, one thread per request, and
//! a plain `match` on method and path.
//!
//! 1. `RunningLab::start` builds the listener itself (TCP_NODELAY, a large backlog: see
//!    `bind` below and LESSONS.md chapter 13) and hands it to tiny_http, which parses requests on its own threads.
//! 2. The `accept` thread takes each parsed request and spawns a named handler thread for it,
//!    `req-N`, the servlet container's request thread.
//! 3. `route` matches method and path and calls the lesson. Quick lessons answer and return;
//!    long polls and streams *park* on that thread, holding the request.
//!
//! Shared pages live here too: the index, lesson pages, `/publish` and `/stats`.

use crate::http::{self, HttpError, Query};
use crate::hub::Hub;
use crate::lessons::{self, LESSONS};
use crate::stats::{self, LessonCounters, Stats};
use crate::waiting_room::WaitingRoom;
use crate::{Config, ParkingMode};
use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};
use std::io;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use tiny_http::{Method, Request};

/// What every handler thread shares: the configuration, the hub and the counters.
pub struct Lab {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub stats: Stats,
    /// Long polls held without a thread (`--parking queue`).
    pub waiting_room: WaitingRoom,
    /// Where the HTTP server really listens (port 0 resolved).
    pub addr: SocketAddr,
    /// `ws://HOST:PORT/events/ws`: the WebSocket lesson's own listener.
    pub websocket_url: String,
}

impl Lab {
    /// Is `origin` one of the lab's own pages: the HTTP address, under either loopback name?
    /// (The WebSocket handshake and CORS both ask.)
    pub fn is_own_origin(&self, origin: &str) -> bool {
        let port = self.addr.port();
        origin == format!("http://{}", self.addr)
            || origin == format!("http://127.0.0.1:{port}")
            || origin == format!("http://localhost:{port}")
    }

    /// Counters for a lesson, with this request counted.
    pub fn count(&self, lesson: &'static str) -> LessonCounters {
        let counters = self.stats.lesson(lesson);
        counters.request();
        counters
    }
}

/// A started lab: its address and the threads that serve it.
pub struct RunningLab {
    pub lab: Arc<Lab>,
    accept: thread::JoinHandle<()>,
}

impl RunningLab {
    /// Step 1: bind, start the generator and the accept thread. Returns once the port is open,
    /// so a test can connect at once. `Err` is a message that tells the user what to do.
    pub fn start(config: Config) -> Result<RunningLab, String> {
        let addr = config.socket_addr()?;
        // Every accepted connection inherits these: no request head for `idle_timeout`
        // closes it, and a write that cannot finish in `write_timeout` fails (a stalled reader).
        let timeouts = Timeouts {
            read: Some(config.idle_timeout),
            write: Some(config.write_timeout),
        };
        let listener = bind(addr, timeouts).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "port {} busy: is another lesson running? try --addr 127.0.0.1:9000",
                addr.port()
            ),
            _ => format!("cannot listen on {addr}: {e}"),
        })?;
        let requested = addr;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("cannot start the HTTP server: {e}"))?;

        let hub = Hub::new(config.history, config.buffer);
        if let Some(range) = config.generator.clone() {
            crate::generator::spawn(hub.clone(), range)
                .map_err(|e| format!("cannot start the generator thread: {e}"))?;
        }
        let websocket = lessons::websocket::listen(&config, requested, addr)?;
        let lab = Arc::new(Lab {
            websocket_url: websocket.url(),
            config,
            hub,
            stats: Stats::default(),
            waiting_room: WaitingRoom::default(),
            addr,
        });

        if lab.config.parking == ParkingMode::Queue {
            let dispatcher_lab = lab.clone();
            thread::Builder::new()
                .name("dispatcher".into())
                .spawn(move || crate::waiting_room::dispatch(dispatcher_lab))
                .map_err(|e| format!("cannot start the dispatcher thread: {e}"))?;
        }
        websocket
            .spawn(lab.clone())
            .map_err(|e| format!("cannot start the WebSocket accept thread: {e}"))?;
        thread::Builder::new()
            .name("pump".into())
            .spawn(move || pump(addr))
            .map_err(|e| format!("cannot start the pump thread: {e}"))?;
        let accept_lab = lab.clone();
        let accept = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(accept_lab, server))
            .map_err(|e| format!("cannot start the accept thread: {e}"))?;
        Ok(RunningLab { lab, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.lab.addr
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.lab.addr, path)
    }

    /// Serve until the process ends.
    pub fn join(self) {
        let _ = self.accept.join();
    }
}

/// Socket timeouts set on a listener, which Linux copies to every socket it accepts.
#[derive(Clone, Copy, Default)]
pub(crate) struct Timeouts {
    pub read: Option<std::time::Duration>,
    pub write: Option<std::time::Duration>,
}

/// A listener as tiny_http would make it, but with TCP_NODELAY (accepted sockets inherit it,
/// so one-event frames leave at once), a backlog of 4096 instead of std's 128, and read and
/// write timeouts (inherited too: tiny_http's own reads and every write of ours time out, with
/// no code in tiny_http or in the lessons).
pub(crate) fn bind(addr: SocketAddr, timeouts: Timeouts) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_read_timeout(timeouts.read)?;
    socket.set_write_timeout(timeouts.write)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A workaround for a measured tiny_http 0.12 bug: its connection pool decides between
/// "wake an idle pool thread" and "start a new one" by a count of idle threads that is stale
/// for a moment after a wake-up. Connections accepted in that moment all go to the one waking
/// thread, and the others wait in a queue until some pool thread finishes its connection. A
/// keep-alive connection (every browser's) or a stream finishes only when its client leaves,
/// so a queued connection can wait for minutes, its request unread.
///
/// Each connection a pool thread finishes lets it take one from the queue. So the pump sends
/// a tiny request (`GET /pump`, answered by the accept loop itself, unlogged) every quarter
/// second. When the answer comes at once, nothing is queued. When it does not, the pump's
/// request is itself stuck in the queue: the pump opens another connection right away, and
/// another, until one is answered; each one lets a queued connection through.
/// (`simultaneous_keep_alive_streams_are_all_served` in tests/lab.rs hangs without this.)
fn pump(addr: SocketAddr) {
    let mut unanswered: Vec<TcpStream> = Vec::new();
    loop {
        unanswered.retain(|socket| !answered(socket));
        let pause = if unanswered.is_empty() { 250 } else { 2 };
        // BLOCKS: sleeps a quarter second (2 ms while a probe goes unanswered).
        thread::sleep(std::time::Duration::from_millis(pause));
        if unanswered.len() < 256 {
            if let Ok(mut socket) = TcpStream::connect(addr) {
                if socket.write_all(b"GET /pump HTTP/1.0\r\n\r\n").is_ok() {
                    unanswered.push(socket);
                }
            }
        }
    }
}

/// Has the lab answered (or closed) this pump connection?
fn answered(socket: &TcpStream) -> bool {
    let _ = socket.set_nonblocking(true);
    let mut byte = [0u8; 1];
    !matches!(socket.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Step 2: one named thread per request.
fn accept_loop(lab: Arc<Lab>, server: tiny_http::Server) {
    let next_id = AtomicU64::new(1);
    // BLOCKS: waits until tiny_http has read a whole request head from some connection.
    for request in server.incoming_requests() {
        if request.url() == "/pump" {
            // The pump's probe: answered here, no thread, no log, no count.
            let _ = request
                .into_writer()
                .write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
            continue;
        }
        let id = next_id.fetch_add(1, Relaxed);
        let lab = lab.clone();
        let spawned = thread::Builder::new()
            .name(format!("req-{id}"))
            .spawn(move || {
                let _connection = lab.stats.connections.enter();
                log::debug!("req {id} {} {}", request.method(), request.url());
                match route(&lab, request) {
                    Ok(()) => log::debug!("req {id} done"),
                    Err(e) if http::is_disconnect(&e) => log::debug!("req {id} gone: {e}"),
                    Err(e) if http::is_write_timeout(&e) => {
                        lab.stats.slow_consumers.fetch_add(1, Relaxed);
                        log::info!("req {id} dropped a slow consumer: {e}");
                    }
                    Err(e) => log::warn!("req {id} failed: {e}"),
                }
            });
        if let Err(e) = spawned {
            // The request went down with the closure; tiny_http closes its connection.
            log::error!("no thread for req {id}: {e} (raise ulimit -u, or lower --max-parked)");
        }
    }
}

/// Step 3: the whole routing table. Each arm names the lesson that owns the path.
fn route(lab: &Lab, request: Request) -> io::Result<()> {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let query = Query::parse(query);

    // Heads too large, or a body length that cannot be trusted: refused before any lesson.
    if let Err(error) = http::check_head(&request) {
        return error.reply(request, &lab.count("other"));
    }

    if let Some(owner) = lessons::owner_of(path) {
        if lab.config.only.is_some_and(|only| only != owner) {
            let counters = lab.count("other");
            let message = format!(
                "this example serves only the {} lesson",
                lab.config.only.unwrap_or_default()
            );
            return HttpError::new(404, message).reply(request, &counters);
        }
    }

    match (request.method(), path) {
        (Method::Get, "/") => index(lab, request),
        (Method::Get, "/stats") => stats_page(lab, request),
        (Method::Post, "/publish") => publish(lab, request),
        (Method::Get, "/assets/lab.js") => {
            asset(lab, request, "application/javascript", lessons::LAB_JS)
        }
        (Method::Get, "/assets/lab.css") => asset(lab, request, "text/css", lessons::LAB_CSS),
        // Browsers ask for it on every page; "nothing here" beats a 404 in every log.
        (Method::Get, "/favicon.ico") => {
            let mut writer = request.into_writer();
            writer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")?;
            writer.flush()
        }
        (Method::Get, p) if p.starts_with("/lessons/") => {
            lesson_page(lab, request, &p["/lessons/".len()..])
        }
        (Method::Get, "/events/poll") => lessons::polling::handle(lab, request, &query),
        (Method::Get, "/events/jsonp") => lessons::jsonp_polling::handle(lab, request, &query),
        (Method::Get, "/events/cors") => lessons::cors::handle(lab, request, &query),
        (Method::Options, "/events/cors") => lessons::cors::preflight(lab, request),
        (Method::Post, "/events/piggyback") => lessons::piggyback::handle(lab, request, &query),
        (Method::Get, "/events/long-poll") => lessons::long_polling::handle(lab, request, &query),
        (Method::Get, "/events/long-poll-script") => {
            lessons::script_long_polling::handle(lab, request, &query)
        }
        (Method::Get, "/events/iframe") => lessons::forever_iframe::handle(lab, request, &query),
        (Method::Get, "/events/multipart") => {
            lessons::multipart_streaming::handle(lab, request, &query)
        }
        (Method::Get, "/events/stream") => lessons::fetch_streaming::handle(lab, request, &query),
        (Method::Get, "/events/buffered") => lessons::buffering::handle(lab, request, &query),
        (Method::Get, "/events/sse") => lessons::sse::handle(lab, request, &query),
        (Method::Get, "/events/ws") => {
            let counters = lab.count("websocket");
            let message = format!("WebSockets have their own port: {}", lab.websocket_url);
            HttpError::bad_request(message).reply(request, &counters)
        }
        (_, path) => {
            let counters = lab.count("other");
            match lessons::allowed_methods(path) {
                Some(allow) => HttpError::new(405, format!("{path} answers {allow} only"))
                    .with_header("Allow", allow)
                    .reply(request, &counters),
                None => {
                    HttpError::new(404, format!("no such path: {path}")).reply(request, &counters)
                }
            }
        }
    }
}

/// `POST /publish`: text/plain is the event's data; `application/json` must be `{"data": "..."}`.
fn publish(lab: &Lab, mut request: Request) -> io::Result<()> {
    let counters = lab.count("publish");
    match read_event_data(lab, &mut request) {
        Ok(data) => {
            let event = lab.hub.publish(data);
            http::write_json(request, &json!({ "id": event.id }), &counters)
        }
        Err(error) => error.reply(request, &counters),
    }
}

fn read_event_data(lab: &Lab, request: &mut Request) -> Result<String, HttpError> {
    let body = http::read_body(request, lab.config.max_body)?;
    let is_json = http::header(request, "Content-Type").is_some_and(|t| t.contains("json"));
    let data = if is_json {
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| HttpError::bad_request(format!("the body claims JSON but is not: {e}")))?;
        match value.get("data") {
            Some(Value::String(data)) => data.clone(),
            _ => {
                return Err(HttpError::bad_request(
                    r#"a JSON body must be {"data": "some text"}"#,
                ))
            }
        }
    } else {
        body
    };
    Ok(data)
}

/// `GET /stats`: what the server holds now, and what each lesson has cost.
fn stats_page(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("stats");
    let s = &lab.stats;
    let value = json!({
        // Not counting the thread answering this request.
        "connections": s.connections.get().saturating_sub(1) + s.websockets.get(),
        "parked": s.parked.get(),
        "streams": s.streams.get(),
        "websockets": s.websockets.get(),
        "websocket_threads": s.websocket_threads.get(),
        "subscribers": lab.hub.subscriber_count(),
        "threads": stats::live_threads(),
        "fds": stats::open_fds(),
        "events_published": lab.hub.last_id(),
        "websocket": lab.websocket_url,
        "max_parked": lab.config.max_parked,
        "heartbeat_secs": lab.config.heartbeat.as_secs(),
        "parking": format!("{:?}", lab.config.parking).to_lowercase(),
        "slow_consumers": s.slow_consumers.load(Relaxed),
        "refused_near_limits": s.refused_near_limits.load(Relaxed),
        "idle_timeout_secs": lab.config.idle_timeout.as_secs(),
        "write_timeout_secs": lab.config.write_timeout.as_secs(),
        "lessons": s.lessons_json(),
    });
    http::write_json(request, &value, &counters)
}

/// `GET /`: every lesson (or the one an example serves) with its one-line idea.
fn index(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("index");
    let mut items = String::new();
    for lesson in LESSONS
        .iter()
        .filter(|l| lab.config.only.is_none_or(|only| only == l.name))
    {
        items.push_str(&format!(
            "<li><a href=\"/lessons/{name}\">{title}</a> <code>{endpoint}</code><br>{idea}</li>\n",
            name = lesson.name,
            title = http::escape_html(lesson.title),
            endpoint = http::escape_html(lesson.endpoints.first().map_or("", |e| e.1)),
            idea = http::escape_html(lesson.idea),
        ));
    }
    let body = lessons::INDEX_HTML.replace("{{lessons}}", &items);
    http::write_response(
        request,
        200,
        "text/html; charset=utf-8",
        &[],
        body.as_bytes(),
        &counters,
    )
}

fn lesson_page(lab: &Lab, request: Request, name: &str) -> io::Result<()> {
    let counters = lab.count("page");
    match LESSONS.iter().find(|l| l.name == name) {
        Some(lesson) if lab.config.only.is_none_or(|only| only == name) => http::write_response(
            request,
            200,
            "text/html; charset=utf-8",
            &[],
            lesson.page.as_bytes(),
            &counters,
        ),
        _ => HttpError::new(404, format!("no lesson named {name:?}")).reply(request, &counters),
    }
}

fn asset(lab: &Lab, request: Request, content_type: &str, body: &str) -> io::Result<()> {
    let counters = lab.count("page");
    http::write_response(request, 200, content_type, &[], body.as_bytes(), &counters)
}
