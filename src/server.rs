//! How a request reaches a lesson: one listener, one accept loop, one thread per request, and
//! a plain `match` on method and path.
//!
//! 1. `RunningLab::start` builds the listener itself (TCP_NODELAY, a large backlog, read and
//!    write timeouts: see `bind` below) and hands it to tiny_http, which parses requests on its
//!    own threads (through `workarounds::Requests`, which replaces tiny_http if its accept
//!    thread dies). Parsed requests wait in two lanes: pages and `/stats` go ahead of
//!    requests for events, so a flood of long polls does not keep the teacher from `/stats`.
//! 2. The `accept` thread gives each parsed request a handler thread of its own for as long as
//!    it runs: one that finished a request and waits for the next (`IdleHandlers`, the servlet
//!    container's worker pool), or a new `handler-N` thread (with `--handlers N`, a fixed
//!    pool: it waits for one of the N to be free); near the process's own limits
//!    (`limits`), it answers requests for events with 503 instead.
//! 3. `route` matches method and path and calls the lesson. Quick lessons answer and return;
//!    long polls and streams *park* on that thread, holding the request.
//!
//! Shared pages live here too: the index, lesson pages, `/publish` and `/stats`.

use crate::http::{self, HttpError, Query};
use crate::hub::Hub;
use crate::lab::Lab;
use crate::lessons::{self, LESSONS};
use crate::listener::{bind, Timeouts};
use crate::stats::{self, Stats};
use crate::waiting_room::WaitingRoom;
use crate::workarounds;
use crate::{Config, ParkingMode};
use crossbeam_channel::{bounded, Sender};
use serde_json::json;
use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

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
        // The descriptor limit raised as far as allowed (or lowered: --max-fds), and the
        // monitor behind the gate.
        if let Some(max) = config.max_fds {
            crate::limits::cap_descriptors(max);
        }
        crate::limits::reserve_held(config.max_parked as u64);
        let capacity = crate::limits::capacity();
        log::debug!(
            "descriptor limit {} (was {}), thread budget {}",
            capacity.fd_limit,
            capacity.fd_limit_at_start,
            capacity.thread_budget
        );
        // tiny_http reads the requests (and is replaced if its accept thread dies).
        let requests = workarounds::Requests::start(listener, config.idle_timeout)?;
        // The "other origin": the same lab on a second port, for the cross-origin lessons
        // wherever the browser comes from (LESSONS.md, "Teaching with the lab").
        let other_addr = match &config.other_addr {
            Some(text) => text
                .parse()
                .map_err(|_| format!("--other-addr {text:?} is not HOST:PORT"))?,
            None if requested.port() == 0 => SocketAddr::new(addr.ip(), 0),
            None => SocketAddr::new(addr.ip(), addr.port().wrapping_add(2)),
        };
        let other = bind(other_addr, timeouts).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "the other-origin port {} is busy: try --other-addr with another port",
                other_addr.port()
            ),
            _ => format!("cannot listen on {other_addr}: {e}"),
        })?;
        let other_addr = other.local_addr().map_err(|e| e.to_string())?;
        requests.also_serve(other, "other")?;

        let hub = Hub::new(config.history, config.buffer);
        if let Some(url) = &config.redis {
            let broker = crate::broker::Broker::start(url, hub.clone(), config.history)?;
            hub.use_broker(broker);
        }
        if let Some(range) = config.generator.clone() {
            crate::generator::spawn(hub.clone(), range)
                .map_err(|e| format!("cannot start the generator thread: {e}"))?;
        }
        let websocket = lessons::websocket::listen(&config, requested, addr)?;
        let departures = workarounds::Departures::start(vec![addr.port(), other_addr.port()])
            .map_err(|e| format!("cannot start the departures thread: {e}"))?;
        let socket_io = config.socket_io.clone();
        let bayeux = config.bayeux.clone();
        let lab = Arc::new(Lab {
            websocket_url: websocket.url(),
            other_addr,
            shares: Arc::default(),
            activity: Arc::default(),
            config,
            hub,
            stats: Stats::default(),
            waiting_room: WaitingRoom::default(),
            addr,
            accept_restarts: requests.restarts.clone(),
            accept_idle_replacements: requests.idle_replacements.clone(),
            door: requests.door.clone(),
            departures,
            socket_io: lessons::socket_io::SocketIo::new(socket_io),
            bayeux: lessons::bayeux::Bayeux::new(bayeux),
            pushlets: Default::default(),
            atmosphere: Default::default(),
        });
        lessons::atmosphere::spawn_sweeper(lab.clone())
            .map_err(|e| format!("cannot start the Atmosphere sweeper thread: {e}"))?;
        lessons::pushlets::spawn_sweeper(lab.clone())
            .map_err(|e| format!("cannot start the Pushlets sweeper thread: {e}"))?;
        lessons::bayeux::spawn_sweeper(lab.clone())
            .map_err(|e| format!("cannot start the Bayeux sweeper thread: {e}"))?;
        lessons::socket_io::spawn_heartbeat(lab.clone())
            .map_err(|e| format!("cannot start the Socket.IO heartbeat thread: {e}"))?;

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
        workarounds::spawn_pump(addr, "pump")
            .and_then(|()| workarounds::spawn_pump(other_addr, "pump-other"))
            .map_err(|e| format!("cannot start the pump thread: {e}"))?;
        let door_lab = Arc::downgrade(&lab);
        requests.answer_at_the_door(move |knock| answer_at_the_door(&*door_lab.upgrade()?, knock));
        let accept_lab = lab.clone();
        let accept = thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(accept_lab, requests))
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

/// Step 2: a handler thread per request (an idle one, or a new one), unless the process is
/// near a limit of its own.
fn accept_loop(lab: Arc<Lab>, requests: workarounds::Requests) {
    let next_id = AtomicU64::new(1);
    let next_thread = AtomicU64::new(1);
    let idle = Arc::new(IdleHandlers::default());
    // BLOCKS: waits until tiny_http has read a whole request head from some connection.
    while let Some(request) = requests.recv() {
        if workarounds::is_pump_probe(&request) {
            workarounds::answer_pump(request);
            continue;
        }
        workarounds::note_request();
        // The gate: near the descriptor or thread limit, take no new client for events (the
        // pages and /stats still answer), and refuse here, without starting a thread.
        if request.url().starts_with("/events/") {
            if let Some(why) = crate::limits::capacity().near_limit() {
                lab.stats.refused_near_limits.fetch_add(1, Relaxed);
                log::debug!("refused {} near a limit: {why}", request.url());
                refuse_near_limit(request, &why);
                continue;
            }
        }
        let id = next_id.fetch_add(1, Relaxed);
        // A fixed pool (`--handlers N`), all N threads busy: this request waits for one, and
        // every request behind it waits too. Parked long polls can hold all N, and then the
        // publish that would wake them cannot get in: the Comet-era servlet container's
        // failure (chapter 4, Pitfalls; the waiting room frees its threads and escapes it).
        if lab.config.handlers > 0 {
            idle.wait_for_a_free_thread(lab.config.handlers);
        }
        // The handler thread that went idle last, if any; else a new one.
        let Some((id, request)) = idle.hand_over(id, request) else {
            continue;
        };
        let (lab, pool) = (lab.clone(), idle.clone());
        let n = next_thread.fetch_add(1, Relaxed);
        idle.alive.fetch_add(1, Relaxed);
        let spawned = thread::Builder::new()
            .name(format!("handler-{n}"))
            .spawn(move || {
                let mut next = Some((id, request));
                while let Some((id, request)) = next {
                    handle(&lab, id, request);
                    // BLOCKS: idle, until the accept loop hands this thread another request,
                    // or 10 s pass and it ends.
                    next = pool.wait_for_work(n);
                }
                pool.alive.fetch_sub(1, Relaxed);
                pool.went_idle.notify_one();
            });
        if let Err(e) = spawned {
            idle.alive.fetch_sub(1, Relaxed);
            // The request went down with the closure; tiny_http closes its connection.
            log::error!("no thread for req {id}: {e} (raise ulimit -u, or lower --max-parked)");
        }
    }
}

/// A request and its number, on its way to a handler thread.
type Job = (u64, Request);

/// Handler threads that finished a request and wait for the next, newest last: the servlet
/// container's worker pool, grown on demand. A new request goes to the thread that went idle
/// *last*, so under a steady load the same few threads stay busy and the others, left alone,
/// end after 10 s idle: the pool is as large as the load needs, no larger. (Handed out oldest
/// first, every idle thread would get a request now and then and none would ever end.)
#[derive(Default)]
struct IdleHandlers {
    stack: Mutex<Vec<(u64, Sender<Job>)>>,
    /// Signalled when a thread joins the stack (a fixed pool's accept loop waits for it).
    went_idle: Condvar,
    /// Handler threads alive, busy or idle.
    alive: AtomicUsize,
}

impl IdleHandlers {
    /// A fixed pool of `size` threads, all alive and none idle: wait until one finishes its
    /// request. Every request behind this one waits too, pages and publishes included.
    fn wait_for_a_free_thread(&self, size: usize) {
        let mut stack = self.stack.lock().unwrap_or_else(|p| p.into_inner());
        while stack.is_empty() && self.alive.load(Relaxed) >= size {
            // BLOCKS: until a handler thread finishes its request (or one ends, idle).
            stack = self
                .went_idle
                .wait_timeout(stack, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Give the request to the newest idle thread; `Some` gives it back when there is none.
    fn hand_over(&self, id: u64, request: Request) -> Option<Job> {
        let newest = self.stack.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match newest {
            // Room for one: never blocks. (A thread that ended meanwhile cannot be on the stack.)
            Some((_, worker)) => worker.send((id, request)).err().map(|e| e.into_inner()),
            None => Some((id, request)),
        }
    }

    /// Called by handler thread `n` when it is done: its next request, or `None` after 10 s
    /// idle (it then ends).
    fn wait_for_work(&self, n: u64) -> Option<Job> {
        let (worker, work) = bounded(1);
        self.stack
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((n, worker));
        self.went_idle.notify_one();
        // BLOCKS: until `hand_over` sends a request, or 10 s pass.
        if let Ok(job) = workarounds::recv_deadline(&work, Instant::now() + Duration::from_secs(10))
        {
            return Some(job);
        }
        let mut stack = self.stack.lock().unwrap_or_else(|p| p.into_inner());
        match stack.iter().position(|(m, _)| *m == n) {
            Some(at) => {
                stack.remove(at);
                None
            }
            // Taken off the stack just as the wait ended: the request is on its way.
            None => {
                drop(stack);
                work.recv().ok()
            }
        }
    }
}

/// One request, start to end, on a handler thread: route it, and log how it ended.
fn handle(lab: &Lab, id: u64, request: Request) {
    let _connection = lab.stats.connections.enter();
    lessons::long_polling::set_request_id(id);
    log::debug!("req {id} {} {}", request.method(), request.url());
    // A classroom's fair share: each client address holds at most --max-per-client requests
    // for events at once (the held ones are what can pile up).
    let _share = match (http::asks_for_events(request.url()), request.remote_addr()) {
        (true, Some(peer)) => match lab.shares.take(peer.ip(), lab.config.max_per_client) {
            Some(share) => Some(share),
            None => {
                log::debug!("req {id} refused: {} holds its share already", peer.ip());
                let message = format!(
                    "this address already holds {} connections for events (--max-per-client); \
                     close some tabs",
                    lab.config.max_per_client
                );
                let _ = HttpError::retry_later(message).reply(request, &lab.count("other"));
                return;
            }
        },
        _ => None,
    };
    // The teacher's view: which lesson this is, and from whom.
    let path = request.url().split('?').next().unwrap_or("");
    let _in_progress = lessons::lesson_of(path).map(|lesson| {
        lab.activity
            .begin(lesson, request.remote_addr().map(|a| a.ip()))
    });
    match route(lab, request) {
        Ok(()) => log::debug!("req {id} done"),
        Err(e) if http::is_disconnect(&e) => log::debug!("req {id} gone: {e}"),
        Err(e) if http::is_write_timeout(&e) => {
            lab.stats.slow_consumers.fetch_add(1, Relaxed);
            log::info!("req {id} dropped a slow consumer: {e}");
        }
        Err(e) => log::warn!("req {id} failed: {e}"),
    }
}

/// 503 on the accept thread: `Connection: close` frees the connection's tiny_http thread
/// too, once the client closes.
fn refuse_near_limit(request: Request, why: &str) {
    let body = json!({ "error": format!("the lab is near its limits ({why}); retry shortly") })
        .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut writer = request.into_writer();
    let _ = writer.write_all(answer.as_bytes());
    let _ = writer.flush();
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
        (Method::Get, "/teacher") => asset(lab, request, "text/html; charset=utf-8", TEACHER_HTML),
        (Method::Post, "/publish") => publish(lab, request),
        (Method::Get, "/assets/lab.js") => {
            asset(lab, request, "application/javascript", &lab_js(lab))
        }
        (Method::Get, "/assets/lab.css") => asset(lab, request, "text/css", lessons::LAB_CSS),
        // Browsers ask for it on every page; "nothing here" beats a 404 in every log.
        (Method::Get, "/favicon.ico") => {
            http::write_no_content(request, &[], &lab.stats.lesson("other"))
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
        (Method::Get, "/vendor/socket.io.min.js") => {
            lessons::socket_io::official_client(lab, request)
        }
        (_, p) if p == "/cometd" || p.starts_with("/cometd/") => {
            lessons::bayeux::handle(lab, request, &query)
        }
        (Method::Get, p) if p.starts_with("/vendor/cometd/") => {
            lessons::bayeux::official_client(lab, request, &p["/vendor/cometd/".len()..])
        }
        (Method::Get | Method::Post, "/pushlet/pushlet.srv") => {
            lessons::pushlets::handle(lab, request, &query)
        }
        (Method::Get, "/scale-out") => lessons::scale_out::handle(lab, request),
        (Method::Get, "/vendor/atmosphere.js") => {
            lessons::atmosphere::official_client(lab, request)
        }
        (_, p) if p.starts_with("/atmosphere/") => {
            lessons::atmosphere::handle(lab, request, p, &query)
        }
        (_, "/socket.io/") => lessons::socket_io::handle(lab, request, &query),
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
        Ok(data) => match lab.hub.publish(data) {
            Ok(event) => http::write_json(request, &json!({ "id": event.id }), &counters),
            // Only with --redis: the broker is down or too slow.
            Err(e) => HttpError::retry_later(e.to_string()).reply(request, &counters),
        },
        Err(error) => error.reply(request, &counters),
    }
}

fn read_event_data(lab: &Lab, request: &mut Request) -> Result<String, HttpError> {
    let body = http::read_body(request, lab.config.max_body)?;
    http::event_data(http::header(request, "Content-Type"), body)
}

/// `GET /stats`: what the server holds now, and what each lesson has cost.
fn stats_page(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("stats");
    let value = stats_json(lab, http::header(&request, "Host"));
    http::write_json(request, &value, &counters)
}

/// What `/stats` shows; `host` is the `Host` the browser sent.
fn stats_json(lab: &Lab, host: Option<&str>) -> serde_json::Value {
    let s = &lab.stats;
    json!({
        // Not counting the thread answering this request.
        "connections": s.connections.get().saturating_sub(1) + s.websockets.get(),
        "parked": s.parked.get(),
        "streams": s.streams.get(),
        "websockets": s.websockets.get(),
        "websocket_threads": s.websocket_threads.get(),
        "socket_io_sessions": lab.socket_io.session_count(),
        "bayeux_clients": lab.bayeux.client_count(),
        "pushlets_sessions": lab.pushlets.session_count(),
        "atmosphere": lab.atmosphere.to_json(),
        "subscribers": lab.hub.subscriber_count(),
        "threads": stats::live_threads(),
        "fds": stats::open_fds(),
        "events_published": lab.hub.last_id(),
        "broker": lab.hub.broker().map(|b| b.to_json()),
        // As the browser reached the lab: its Host, never the bind address (a classroom).
        "websocket": format!(
            "ws://{}:{}/events/ws",
            crate::classroom::public_host(host, lab.addr),
            lab.websocket_port()
        ),
        "other_port": lab.other_addr.port(),
        "activity": lab.activity.to_json(),
        "clients": lab.shares.snapshot().len(),
        "urls": crate::classroom::student_urls(lab.addr, "/"),
        "max_parked": lab.config.max_parked,
        "heartbeat_secs": lab.config.heartbeat.as_secs(),
        "parking": format!("{:?}", lab.config.parking).to_lowercase(),
        "slow_consumers": s.slow_consumers.load(Relaxed),
        "departed": lab.departures.seen.load(Relaxed),
        "accept_restarts": lab.accept_restarts.load(Relaxed),
        "accept_idle_replacements": lab.accept_idle_replacements.load(Relaxed),
        "door": {
            "answered": lab.door.answered.load(Relaxed),
            "refused": lab.door.refused.load(Relaxed),
        },
        "limits": crate::limits::capacity().to_json(),
        "refused_near_limits": s.refused_near_limits.load(Relaxed),
        "idle_timeout_secs": lab.config.idle_timeout.as_secs(),
        "write_timeout_secs": lab.config.write_timeout.as_secs(),
        "lessons": s.lessons_json(),
    })
}

/// `GET /`: every lesson (or the one an example serves) with its one-line idea.
fn index(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("index");
    let body = index_html(lab);
    http::write_response(
        request,
        200,
        "text/html; charset=utf-8",
        &[],
        body.as_bytes(),
        &counters,
    )
}

fn index_html(lab: &Lab) -> String {
    let mut items = String::new();
    for lesson in LESSONS
        .iter()
        .filter(|l| lab.config.only.is_none_or(|only| only == l.name))
    {
        items.push_str(&format!(
            "<li><a href=\"/lessons/{name}\">{title}</a> {endpoint}<br>{idea}</li>\n",
            name = lesson.name,
            title = http::escape_html(lesson.title),
            endpoint = lesson.endpoints.first().map_or(String::new(), |e| format!(
                "<code>{}</code>",
                http::escape_html(e.1)
            )),
            idea = http::escape_html(lesson.idea),
        ));
    }
    // Listening on every interface: the addresses students can type, with QR codes.
    let urls = crate::classroom::student_urls(lab.addr, "/");
    let classroom = if lab.addr.ip().is_unspecified() {
        let mut list = String::from(
            "<section id=\"classroom\"><h2>Open the lab from another machine</h2><ul class=\"urls\">\n",
        );
        for url in &urls {
            list.push_str(&format!(
                "<li><a href=\"{href}\">{text}</a> {qr}</li>\n",
                href = http::escape_html(url),
                text = http::escape_html(url),
                qr = crate::classroom::qr_svg(url),
            ));
        }
        list.push_str(
            "</ul><p>The teacher's view: <a href=\"/teacher\">/teacher</a>.</p></section>",
        );
        list
    } else {
        String::new()
    };
    lessons::INDEX_HTML
        .replace("{{classroom}}", &classroom)
        .replace("{{lessons}}", &items)
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

/// The teacher's view (`/teacher`), served by the route and at the door.
const TEACHER_HTML: &str = include_str!("../html/teacher.html");

/// The pages' script, the other origin's port first (`lab.otherOrigin()` needs it).
fn lab_js(lab: &Lab) -> String {
    let port = lab.other_addr.port();
    format!("const LAB_OTHER_PORT = {port};\n{}", lessons::LAB_JS)
}

/// What the lab answers at the door, while tiny_http cannot accept (`workarounds::door`):
/// `/stats` and the pages, so the teacher still sees the lab; `None` (503) for the rest.
fn answer_at_the_door(lab: &Lab, knock: &workarounds::Knock) -> Option<workarounds::Answer> {
    const HTML: &str = "text/html; charset=utf-8";
    if knock.method != "GET" {
        return None;
    }
    let page = |body: &str| Some((200, HTML, body.as_bytes().to_vec()));
    match knock.path.as_str() {
        "/stats" => {
            let json = stats_json(lab, knock.host.as_deref()).to_string();
            Some((200, "application/json", json.into_bytes()))
        }
        "/" => page(&index_html(lab)),
        "/teacher" => page(TEACHER_HTML),
        "/assets/lab.js" => Some((200, "application/javascript", lab_js(lab).into_bytes())),
        "/assets/lab.css" => Some((200, "text/css", lessons::LAB_CSS.as_bytes().to_vec())),
        path => {
            let name = path.strip_prefix("/lessons/")?;
            let lesson = LESSONS.iter().find(|l| l.name == name)?;
            let shown = lab.config.only.is_none_or(|only| only == name);
            shown.then(|| (200, HTML, lesson.page.as_bytes().to_vec()))
        }
    }
}

fn asset(lab: &Lab, request: Request, content_type: &str, body: &str) -> io::Result<()> {
    let counters = lab.count("page");
    http::write_response(request, 200, content_type, &[], body.as_bytes(), &counters)
}
