//! How a request reaches a lesson: listeners, a thread per connection, and a plain `match` on
//! method and path.
//!
//! 1. `RunningLab::start` builds the listeners itself (TCP_NODELAY, a large backlog: see
//!    `listener`), starts the hub, the generator and the frameworks' timekeepers, and an
//!    accept thread per listener (`connection::accept_loop`): one thread per connection
//!    reads its requests (`crate::connection`).
//! 2. `handle` (on the connection's thread, for each request): a classroom's fair share, the
//!    teacher's view, then `route`, and a log line of how it ended.
//! 3. `route` matches method and path and calls the lesson. Quick lessons answer and return;
//!    long polls and streams *park* this thread, holding the request; a WebSocket handshake
//!    (`Upgrade: websocket`) takes the connection for good.
//!
//! Shared pages live here too: the index, lesson pages, `/publish` and `/stats`.

use crate::connection::{self, Pool, Request};
use crate::http::{self, HttpError, Query};
use crate::hub::Hub;
use crate::lab::Lab;
use crate::lessons::{self, LESSONS};
use crate::listener::bind;
use crate::request::Method;
use crate::stats::{self, Stats};
use crate::{Config, ParkingMode};
use serde_json::json;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// A started lab: its address and the threads that serve it. Dropped, it stops (`stop`,
/// without waiting).
pub struct RunningLab {
    pub lab: Arc<Lab>,
    /// The connection threads, whose sockets a stop shuts down.
    pool: Arc<Pool>,
    /// Each listener's accept thread, and the address a stop connects to, to wake it.
    accept: Vec<(SocketAddr, thread::JoinHandle<()>)>,
    /// The lab's other threads: the generator, the sweepers, the dispatcher.
    threads: Vec<thread::JoinHandle<()>>,
    stopping: bool,
}

impl RunningLab {
    /// Step 1: bind, start the generator and the accept thread. Returns once the port is open,
    /// so a test can connect at once. `Err` is a message that tells the user what to do.
    pub fn start(mut config: Config) -> Result<RunningLab, String> {
        let addr = config.socket_addr()?;
        let listener = bind(addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "port {} busy: is another lab still running? End it (Ctrl-C in its terminal), \
                 or try --addr {}",
                addr.port(),
                SocketAddr::new(addr.ip(), 9000)
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
        let capacity = crate::limits::capacity();
        // What the lab can hold, and why: each held connection is a descriptor and a thread.
        let threads = match (capacity.thread_budget, capacity.mappings_per_thread) {
            (Some(budget), Some(each)) => {
                format!("threads {budget} (a thread costs {each} memory mappings, measured)")
            }
            (Some(budget), None) => format!("threads {budget}"),
            (None, _) => "threads unknown".to_string(),
        };
        // (With `--parking queue` a waiting client has no thread, but a connection being read
        // still does, and any connection may be read: the budget stays a thread each.)
        let each = match config.parking {
            ParkingMode::Thread => "a descriptor and a thread each",
            ParkingMode::Queue => "a descriptor each, and a thread while a request is read",
        };
        log::info!(
            "descriptor limit {} (was {}), {threads}: up to {} connections held, {each}",
            capacity.fd_limit,
            capacity.fd_limit_at_start,
            capacity.holdable()
        );
        // --max-parked 0 (the default) is all the lab can hold; more than that is lowered
        // now, and said, rather than met as a failure deep in the accept loop.
        if config.max_parked == 0 {
            config.max_parked = capacity.holdable();
        } else if config.max_parked > capacity.holdable() {
            log::info!(
                "--max-parked {} is more than this machine can hold (descriptor limit {}, the \
                 gate at 80 %): lowered to {}",
                config.max_parked,
                capacity.fd_limit,
                capacity.holdable()
            );
            config.max_parked = capacity.holdable();
        }
        // The "other origin": the same lab on a second port, for the cross-origin lessons
        // wherever the browser comes from (LESSONS.md, "Teaching with the lab").
        let other_addr = match &config.other_addr {
            Some(text) => text
                .parse()
                .map_err(|_| format!("--other-addr {text:?} is not HOST:PORT"))?,
            None if requested.port() == 0 => SocketAddr::new(addr.ip(), 0),
            None => SocketAddr::new(addr.ip(), addr.port().wrapping_add(2)),
        };
        let other = bind(other_addr).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => format!(
                "the other-origin port {} is busy: try --other-addr with another port",
                other_addr.port()
            ),
            _ => format!("cannot listen on {other_addr}: {e}"),
        })?;
        let other_addr = other.local_addr().map_err(|e| e.to_string())?;
        // `--ws-addr`: only an alias now (WebSockets upgrade on the HTTP port itself), kept
        // for firewalls and scripts that still name a WebSocket port.
        let ws_alias = match &config.ws_addr {
            Some(text) => {
                let ws_addr: SocketAddr = text
                    .parse()
                    .map_err(|_| format!("--ws-addr {text:?} is not HOST:PORT"))?;
                Some(bind(ws_addr).map_err(|e| format!("cannot listen on {ws_addr}: {e}"))?)
            }
            None => None,
        };

        let hub = Hub::new(config.history, config.buffer);
        let broker = match &config.redis {
            Some(url) => Some(crate::broker::Broker::start(
                url,
                hub.clone(),
                config.history,
            )?),
            None => None,
        };
        let generator = config.generator.clone();
        let state = Arc::new(LessonState {
            socket_io: Arc::new(lessons::socket_io::SocketIo::new(
                config.socket_io.clone(),
                config.sessions,
            )),
            bayeux: Arc::new(lessons::bayeux::Bayeux::new(
                config.bayeux.clone(),
                config.sessions,
            )),
            atmosphere: Arc::new(lessons::atmosphere::Broadcasters::new(
                config.sessions,
                config.atmosphere_timeout,
            )),
            pushlets: Arc::new(lessons::pushlets::Pushlets::new(config.sessions)),
            waiting_room: Arc::default(),
        });
        let lab = Arc::new(Lab {
            websocket_url: format!("ws://{addr}/events/ws"),
            other_addr,
            shares: Arc::default(),
            activity: Arc::default(),
            config,
            hub,
            broker,
            stats: Stats::default(),
            addr,
            connections: Default::default(),
            watcher: Default::default(),
            shutdown: Default::default(),
        });
        lab.watcher
            .start()
            .map_err(|e| format!("cannot start the socket watcher thread: {e}"))?;
        let mut threads = Vec::new();
        if let Some(range) = generator {
            let generator = crate::generator::spawn(lab.clone(), range)
                .map_err(|e| format!("cannot start the generator thread: {e}"))?;
            threads.push(generator);
        }
        let stop = || lab.shutdown.line();
        let sweepers = [
            lessons::atmosphere::spawn_sweeper(state.atmosphere.clone(), stop()),
            lessons::pushlets::spawn_sweeper(lab.clone(), state.pushlets.clone()),
            lessons::bayeux::spawn_sweeper(state.bayeux.clone(), stop()),
            lessons::socket_io::spawn_heartbeat(state.socket_io.clone(), stop()),
        ];
        for sweeper in sweepers {
            threads.push(sweeper.map_err(|e| format!("cannot start a sweeper thread: {e}"))?);
        }
        let trimmer = crate::memory::spawn_trimmer(stop())
            .map_err(|e| format!("cannot start the memory-trim thread: {e}"))?;
        threads.extend(trimmer);

        if lab.config.parking == ParkingMode::Queue {
            let (dispatcher_lab, room) = (lab.clone(), state.waiting_room.clone());
            let dispatcher = thread::Builder::new()
                .name("dispatcher".into())
                .spawn(move || crate::waiting_room::dispatch(dispatcher_lab, room))
                .map_err(|e| format!("cannot start the dispatcher thread: {e}"))?;
            threads.push(dispatcher);
        }
        // The connection threads, shared by every listener. (They hold the lab; the lab
        // holds only what /stats reads of them.)
        let settings = connection::Settings {
            idle_timeout: lab.config.idle_timeout,
            request_timeout: lab.config.request_timeout,
            write_timeout: lab.config.write_timeout,
            body_limit: lab.config.max_body.max(lab.config.socket_io.max_payload),
            handlers: lab.config.handlers,
            // Half of what the gate lets in at most: one address never holds the room's share.
            max_connections_per_client: lab
                .config
                .max_connections_per_client
                .min(crate::limits::capacity().holdable() / 2)
                .max(1),
            not_shared: lab.config.trusted_proxies.clone(),
        };
        let (handler_lab, handler_state) = (lab.clone(), state.clone());
        let pool = Pool::new(
            settings,
            Box::new(move |request| handle(&handler_lab, &handler_state, request)),
        );
        let _ = lab.connections.set(Arc::downgrade(&pool));
        let mut accept = vec![spawn_accept("accept", listener, &pool, &lab, &state)?];
        accept.push(spawn_accept("accept-other", other, &pool, &lab, &state)?);
        if let Some(alias) = ws_alias {
            accept.push(spawn_accept("accept-ws", alias, &pool, &lab, &state)?);
        }
        Ok(RunningLab {
            lab,
            pool,
            accept,
            threads,
            stopping: false,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.lab.addr
    }

    /// The "other origin" of the cross-origin lessons (`--other-addr`, the port + 2).
    pub fn other_addr(&self) -> SocketAddr {
        self.lab.other_addr
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.lab.addr, path)
    }

    /// Serve until the process is told to stop (Ctrl-C, or `kill`: SIGINT or SIGTERM), then
    /// stop; where signals cannot be waited for (Windows), until the process ends.
    pub fn serve_until_stopped(self) {
        crate::shutdown::wait_for_a_stop_signal();
        log::info!("stopping: every connection closes, every thread ends");
        match self.stop() {
            Ok(()) => log::info!("stopped"),
            Err(left) => log::warn!("stopped, but these threads did not end: {left:?}"),
        }
    }

    /// Stop the lab (`shutdown`): no new connection; every WebSocket closed with 1001, then
    /// every socket shut down; every thread the lab started ends, and the `Lab` is freed.
    /// **BLOCKS** until they have (10 s at most): `Err` names what had not.
    pub fn stop(mut self) -> Result<(), Vec<String>> {
        self.begin_stop(true);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.threads_left();
            if left.is_empty() {
                // Nothing but this `RunningLab` may hold the lab now. (A connection thread
                // counts itself gone a moment before it lets go of the pool, whose handler
                // holds the lab: a second at most.)
                let lab = Arc::downgrade(&self.lab);
                drop(self);
                let until = Instant::now() + Duration::from_secs(2);
                while lab.strong_count() > 0 {
                    if Instant::now() >= until {
                        return Err(vec!["the Lab, still held once every thread ended".into()]);
                    }
                    // BLOCKS: a moment, while the last threads let go.
                    thread::sleep(Duration::from_millis(10));
                }
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(left);
            }
            // BLOCKS: a moment, until the threads' next look at the time.
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// What has not ended yet: the threads by name, and how many connection threads
    /// (WebSockets' included) are still alive.
    fn threads_left(&self) -> Vec<String> {
        let mut left: Vec<String> = (self.accept.iter().map(|(_, thread)| thread))
            .chain(&self.threads)
            .filter(|thread| !thread.is_finished())
            .map(|thread| thread.thread().name().unwrap_or("?").to_string())
            .collect();
        let connections = self.pool.alive.load(Relaxed);
        if connections > 0 {
            left.push(format!("{connections} connection threads"));
        }
        if !self.lab.watcher.stopped() {
            left.push("socket-watcher".into());
        }
        if self.lab.broker.as_ref().is_some_and(|b| !b.stopped()) {
            left.push("broker-reader".into());
        }
        left
    }

    /// The stop's steps; `graceful`: WebSockets are given a moment to send their 1001
    /// before the sockets are shut down (a dropped lab does not wait for that).
    fn begin_stop(&mut self, graceful: bool) {
        if std::mem::replace(&mut self.stopping, true) {
            return;
        }
        let lab = &self.lab;
        log::debug!("stopping the lab on {}", lab.addr);
        // 1. The flag, and the line the generator, the sweepers and the dispatcher wait on.
        lab.shutdown.begin();
        if let Some(broker) = &lab.broker {
            broker.stop();
        }
        // 2. No new connection: each accept loop, woken by a connection of our own, ends.
        self.pool.stop_accepting();
        for (addr, _) in &self.accept {
            let _ = std::net::TcpStream::connect_timeout(&reachable(*addr), Duration::from_secs(1));
        }
        // 3. Every WebSocket's thread is told (its close: 1001).
        lab.watcher.stop();
        let until = Instant::now() + Duration::from_secs(1);
        while graceful && lab.stats.websocket_threads.get() > 0 && Instant::now() < until {
            // BLOCKS: a moment, while the WebSockets close.
            thread::sleep(Duration::from_millis(10));
        }
        // 4. Every stream ends whole (its last chunk) at its next look, within a second and
        // a quarter: a page sees it end, not break.
        let until = Instant::now() + Duration::from_millis(1500);
        while graceful && lab.stats.streams.get() > 0 && Instant::now() < until {
            // BLOCKS: a moment, while the streams end.
            thread::sleep(Duration::from_millis(10));
        }
        // 5. Then every socket the lab holds is shut down under its thread.
        self.pool.stop();
    }
}

impl Drop for RunningLab {
    /// A lab dropped stops, and does not wait for its threads (a test's lab, at its end).
    fn drop(&mut self) {
        self.begin_stop(false);
    }
}

/// Where to connect to reach a listener: its own address, or loopback for one that listens on
/// every interface.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// What the lessons own, held here and handed to each as it serves: only `server` knows them
/// all (as only mini-redis's `cmd` module knows every command), and no lesson imports the
/// module that holds it.
pub struct LessonState {
    /// Every Socket.IO session (`lessons::socket_io`).
    pub socket_io: Arc<lessons::socket_io::SocketIo>,
    /// Every Bayeux client (`lessons::bayeux`).
    pub bayeux: Arc<lessons::bayeux::Bayeux>,
    /// The Atmosphere broadcasters and their resources (`lessons::atmosphere`).
    pub atmosphere: Arc<lessons::atmosphere::Broadcasters>,
    /// Every Pushlets session (`lessons::pushlets`).
    pub pushlets: Arc<lessons::pushlets::Pushlets>,
    /// Long polls held without a thread (`--parking queue`; `lessons::long_polling`).
    /// Long polls, streams and WebSockets held without a thread (`--parking queue`), served
    /// by one dispatcher thread.
    pub waiting_room: Arc<crate::waiting_room::WaitingRoom>,
}

/// Step 1: an accept thread for `listener`, answering on the accept thread from `lab`.
fn spawn_accept(
    name: &str,
    listener: TcpListener,
    pool: &Arc<Pool>,
    lab: &Arc<Lab>,
    state: &Arc<LessonState>,
) -> Result<(SocketAddr, thread::JoinHandle<()>), String> {
    let addr = listener
        .local_addr()
        .map_err(|e| format!("the {name} listener has no address: {e}"))?;
    let pool = pool.clone();
    let answer_lab: Weak<Lab> = Arc::downgrade(lab);
    let answer_state = state.clone();
    let answer: connection::AcceptThreadAnswer = Box::new(move |head| {
        answer_on_the_accept_thread(&*answer_lab.upgrade()?, &answer_state, head)
    });
    let thread = thread::Builder::new()
        .name(name.into())
        .spawn(move || connection::accept_loop(listener, pool, answer))
        .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
    Ok((addr, thread))
}

/// Step 2: one request, start to end, on its connection's thread: route it, and log how it
/// ended.
fn handle(lab: &Lab, state: &LessonState, request: Request) {
    let id = request.number();
    let _connection = lab.stats.connections.enter();
    crate::connection::set_request_id(id);
    // The gates (`admit`). Behind a trusted proxy, the client is the one the proxy names.
    let client = lab.client(&request);
    let _share = match admit(lab, &request, client.ip) {
        Ok(share) => share,
        Err(refusal) => {
            log::debug!("req {id} refused: {}", refusal.message);
            let _ = refusal.reply(request, &lab.count("other"));
            return;
        }
    };
    // The teacher's view: which lesson this is, and from whom.
    let path = request.url().split('?').next().unwrap_or("");
    let _in_progress =
        lessons::lesson_of(path).map(|lesson| lab.activity.begin(lesson, Some(client.ip)));
    match route(lab, state, request) {
        Ok(()) => log::debug!("req {id} done"),
        Err(e) if http::is_disconnect(&e) => log::debug!("req {id} gone: {e}"),
        Err(e) if http::is_write_timeout(&e) => {
            lab.stats.slow_consumers.fetch_add(1, Relaxed);
            log::info!("req {id} dropped a slow consumer: {e}");
        }
        Err(e) => log::warn!("req {id} failed: {e}"),
    }
}

/// The gates a request for events passes (pages and /stats always pass): none near the
/// descriptor or thread limit, and at most --max-per-client held per client address at once
/// (a classroom's fair share, given back when the `Share` drops).
fn admit(
    lab: &Lab,
    request: &Request,
    client: std::net::IpAddr,
) -> Result<Option<crate::classroom::Share>, HttpError> {
    if !http::asks_for_events(request.url()) {
        return Ok(None);
    }
    if let Some(why) = crate::limits::capacity().near_limit() {
        lab.stats.refused_near_limits.fetch_add(1, Relaxed);
        let message = format!("the lab is near its limits ({why}); retry shortly");
        return Err(HttpError::retry_later(message).with_header("Connection", "close"));
    }
    match lab.shares.take(client, lab.config.max_per_client) {
        Some(share) => Ok(Some(share)),
        None => Err(HttpError::retry_later(format!(
            "{client} already holds {} connections for events (--max-per-client); close \
             some tabs",
            lab.config.max_per_client
        ))),
    }
}

/// Step 3: the whole routing table. Each arm names the lesson that owns the path.
fn route(lab: &Lab, state: &LessonState, request: Request) -> io::Result<()> {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let query = Query::parse(query);

    // A WebSocket handshake goes to the upgrade `match`.
    if request.head().is_websocket_upgrade() {
        return route_upgrade(lab, state, request, path, &query);
    }

    // `cargo run --example NAME` serves one lesson: another's paths are 404.
    if let Some(only) = lab.config.only {
        if lessons::owner_of(path).is_some_and(|owner| owner != only) {
            let message = format!("this example serves only the {only} lesson");
            return HttpError::new(404, message).reply(request, &lab.count("other"));
        }
    }

    // HEAD is answered as GET, without the body (`ResponseWriter::head_only`).
    let method = match request.method() {
        Method::Head => Method::Get,
        other => other.clone(),
    };
    match (method, path) {
        (Method::Get, "/") => index(lab, request),
        (Method::Get, "/stats") => stats_page(lab, state, request),
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
        (Method::Get, "/events/long-poll") => {
            lessons::long_polling::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/long-poll-script") => {
            lessons::script_long_polling::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/iframe") => {
            lessons::forever_iframe::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/multipart") => {
            lessons::multipart_streaming::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/stream") => {
            lessons::fetch_streaming::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/buffered") => lessons::buffering::handle(lab, request, &query),
        (Method::Get, "/events/sse") => {
            lessons::sse::handle(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/events/sse-unmarked") => {
            lessons::behind_a_proxy::unmarked_sse(lab, &state.waiting_room, request, &query)
        }
        (Method::Get, "/behind-a-proxy") => lessons::behind_a_proxy::who_is_who(lab, request),
        (Method::Get, "/vendor/socket.io.min.js") => {
            lessons::socket_io::official_client(lab, request)
        }
        (_, p) if p == "/cometd" || p.starts_with("/cometd/") => {
            lessons::bayeux::handle(lab, &state.bayeux, request, &query)
        }
        (Method::Get, p) if p.starts_with("/vendor/cometd/") => {
            lessons::bayeux::official_client(lab, request, &p["/vendor/cometd/".len()..])
        }
        (Method::Get | Method::Post, "/pushlet/pushlet.srv") => {
            lessons::pushlets::handle(lab, &state.pushlets, request, &query)
        }
        (Method::Get, "/scale-out") => lessons::scale_out::handle(lab, request),
        (Method::Get, "/vendor/atmosphere.js") => {
            lessons::atmosphere::official_client(lab, request)
        }
        (_, p) if p.starts_with("/atmosphere/") => {
            lessons::atmosphere::handle(lab, &state.atmosphere, request, p, &query)
        }
        (Method::Post, "/socket.io/kick") => {
            lessons::socket_io::kick(lab, &state.socket_io, request, &query)
        }
        (_, "/socket.io/") => lessons::socket_io::handle(lab, &state.socket_io, request, &query),
        (Method::Get, "/events/ws") => lessons::websocket::without_upgrade(lab, request),
        (_, path) => no_route(lab, request, path),
    }
}

/// Step 3, for a WebSocket handshake: the upgrade `match`. Each endpoint checks its own
/// request, then shares the handshake itself (`ws::accept`).
fn route_upgrade(
    lab: &Lab,
    state: &LessonState,
    request: Request,
    path: &str,
    query: &Query,
) -> io::Result<()> {
    match path {
        "/events/ws" => lessons::websocket::upgrade(lab, &state.waiting_room, request, query),
        "/socket.io/" => {
            lessons::socket_io::websocket::upgrade(lab, &state.socket_io, request, query)
        }
        p if p == "/cometd" || p.starts_with("/cometd/") => {
            lessons::bayeux::websocket::upgrade(lab, &state.bayeux, request)
        }
        p if p.starts_with(lessons::atmosphere::PREFIX) => {
            let broadcasters = &state.atmosphere;
            lessons::atmosphere::websocket::upgrade(lab, broadcasters, request, path, query)
        }
        _ => {
            let message = "the WebSocket endpoints are /events/ws, /socket.io/, /cometd and \
                           /atmosphere/NAME";
            let refused: Result<(), _> = Err((404, message.into()));
            lab.accept_websocket(request, refused).map(|_| ())
        }
    }
}

/// No arm matched: 405 with `Allow` for a known path asked with another method, else 404.
fn no_route(lab: &Lab, request: Request, path: &str) -> io::Result<()> {
    let counters = lab.count("other");
    match lessons::allowed_methods(path) {
        Some(allow) => HttpError::new(405, format!("{path} answers {allow} only"))
            .with_header("Allow", allow)
            .reply(request, &counters),
        None => HttpError::new(404, format!("no such path: {path}")).reply(request, &counters),
    }
}

/// `POST /publish`: text/plain is the event's data; `application/json` must be `{"data": "..."}`.
fn publish(lab: &Lab, request: Request) -> io::Result<()> {
    let counters = lab.count("publish");
    match read_event_data(lab, &request) {
        Ok(data) => match lab.publish(data) {
            Ok(event) => http::write_json(request, &json!({ "id": event.id }), &counters),
            // Only with --redis: the broker is down or too slow.
            Err(e) => HttpError::retry_later(e.to_string()).reply(request, &counters),
        },
        Err(error) => error.reply(request, &counters),
    }
}

fn read_event_data(lab: &Lab, request: &Request) -> Result<String, HttpError> {
    let body = http::read_body(request, lab.config.max_body)?;
    http::event_data(http::header(request, "Content-Type"), body)
}

/// `GET /stats`: what the server holds now, and what each lesson has cost.
fn stats_page(lab: &Lab, state: &LessonState, request: Request) -> io::Result<()> {
    let counters = lab.count("stats");
    let value = stats_json(lab, state, &lab.client(&request));
    http::write_json(request, &value, &counters)
}

/// What `/stats` shows to `client`.
fn stats_json(
    lab: &Lab,
    state: &LessonState,
    client: &crate::forwarded::Client,
) -> serde_json::Value {
    let s = &lab.stats;
    let pool = lab.connections.get().and_then(std::sync::Weak::upgrade);
    let pool = pool.as_deref();
    json!({
        // Requests being handled (WebSockets included: an upgraded request is handled until
        // its socket closes), not counting the one answering this.
        "connections": s.connections.get().saturating_sub(1),
        "parked": s.parked.get(),
        "streams": s.streams.get(),
        "websockets": s.websockets.get(),
        "websocket_threads": s.websocket_threads.get(),
        // WebSockets whose client's frames the socket watcher waits for (`watcher`).
        "watched_sockets": lab.watcher.watching(),
        // Open TCP connections, idle keep-alive ones included (each has its thread).
        "open_connections": pool.map_or(0, |p| p.open.load(Relaxed)),
        "connection_threads": pool.map_or(0, |p| p.alive.load(Relaxed)),
        // The most at once since the start (`--handlers N` keeps it at N), and connections
        // waiting for one now.
        "connection_threads_peak": pool.map_or(0, |p| p.alive_peak.load(Relaxed)),
        "waiting_for_a_connection_thread": pool.map_or(0, |p| p.waiting_for_a_thread()),
        // Each client address's share: connections of any kind (refused past it on the
        // accept thread), held requests for events (`--max-per-client`); the busiest five.
        "client_shares": pool.map(|p| serde_json::json!({
            "max_connections": p.max_connections_per_client(),
            "connections_refused": p.refused_over_share.load(Relaxed),
            "max_held": lab.config.max_per_client,
            "held_refused": lab.shares.refused.load(Relaxed),
            "busiest": p.connections_per_client(5).into_iter()
                .map(|(ip, n)| serde_json::json!({"client": ip.to_string(), "connections": n}))
                .collect::<Vec<_>>(),
        })),
        "socket_io_sessions": state.socket_io.sessions_json()["open"],
        // Socket.IO's dynamic namespaces (`/room-*`) alive now.
        "socket_io_namespaces": lessons::socket_io::namespaces::dynamic_namespaces(&state.socket_io),
        // Who is on Socket.IO's `/lab` (the first 100), for the teacher's kick.
        "socket_io_lab": lessons::socket_io::namespaces::lab_sockets(&state.socket_io, 100),
        "bayeux_clients": state.bayeux.clients_json()["open"],
        "pushlets_sessions": state.pushlets.sessions_json()["open"],
        "atmosphere": state.atmosphere.to_json(),
        // Each framework's sessions: open, the clients holding them, refused under the caps
        // (`--max-sessions`, `--max-sessions-per-client`), and the caps.
        "sessions": {
            "socket_io": state.socket_io.sessions_json(),
            "bayeux": state.bayeux.clients_json(),
            "pushlets": state.pushlets.sessions_json(),
            "atmosphere": state.atmosphere.sessions_json(),
        },
        "subscribers": lab.hub.subscriber_count(),
        "threads": stats::live_threads(),
        "fds": stats::open_fds(),
        "events_published": lab.hub.last_id(),
        // The generator's pause between events, in ms (`--generator`), or null when it is off.
        "generator": lab.config.generator.as_ref().map(|range| [range.start(), range.end()]),
        "broker": lab.broker.as_ref().map(|b| b.to_json()),
        // As the browser reached the lab: its Host, never the bind address (a classroom), or
        // its proxy's (`--trust-proxy`).
        "websocket": format!("{}/events/ws", lab.base_url(client, true)),
        "other_port": lab.other_addr.port(),
        "activity": lab.activity.to_json(),
        "clients": lab.shares.snapshot().len(),
        "urls": crate::classroom::student_urls(lab.addr, "/"),
        "max_parked": lab.config.max_parked,
        "heartbeat_secs": lab.config.heartbeat.as_secs(),
        "parking": format!("{:?}", lab.config.parking).to_lowercase(),
        "slow_consumers": s.slow_consumers.load(Relaxed),
        "departed": s.departed.load(Relaxed),
        "accept_thread": pool.map(|p| json!({
            "answered": p.accept_thread.answered.load(Relaxed),
            "refused": p.accept_thread.refused.load(Relaxed),
            "accept_errors": p.accept_thread.accept_errors.load(Relaxed),
        })),
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
    let body = index_html(lab, Some(&lab.client(&request)));
    http::write_response(
        request,
        200,
        "text/html; charset=utf-8",
        &[],
        body.as_bytes(),
        &counters,
    )
}

/// The index for `client` (`None` on the accept thread, where the peer is not known): the
/// lessons grouped by the book's parts, each under its chapter number; on every interface,
/// the addresses the room can open, with a QR code each; and a publish command with the
/// address this browser used.
fn index_html(lab: &Lab, client: Option<&crate::forwarded::Client>) -> String {
    let mut items = String::new();
    for (part, chapters) in lessons::PARTS {
        let in_part: Vec<&lessons::Lesson> = LESSONS
            .iter()
            .filter(|l| chapters.contains(&l.chapter))
            .filter(|l| lab.config.only.is_none_or(|only| only == l.name))
            .collect();
        if in_part.is_empty() {
            continue;
        }
        items.push_str(&format!(
            "<h2>{part}</h2>\n<ul class=\"lessons\">\n",
            part = http::escape_html(part)
        ));
        for lesson in in_part {
            items.push_str(&format!(
                "<li><span class=\"chapter\">{chapter}.</span> <a href=\"/lessons/{name}\">{title}</a> \
                 {endpoint}<br>{idea}</li>\n",
                chapter = lesson.chapter,
                name = lesson.name,
                title = http::escape_html(lesson.title),
                endpoint = lesson.endpoints.first().map_or(String::new(), |e| format!(
                    "<code>{}</code>",
                    http::escape_html(e.1)
                )),
                idea = http::escape_html(lesson.idea),
            ));
        }
        items.push_str("</ul>\n");
    }
    // Listening on every interface: the addresses students can type, with QR codes for those
    // a phone can reach (loopback is this machine's own). Behind a trusted proxy, the one
    // address that matters is the proxy's, as this browser used it.
    let through_proxy = client.filter(|c| c.via_proxy && c.host.is_some());
    let urls = match through_proxy {
        Some(client) => vec![format!("{}/", lab.base_url(client, false))],
        None => crate::classroom::student_urls(lab.addr, "/"),
    };
    let classroom = if lab.addr.ip().is_unspecified() || through_proxy.is_some() {
        let mut list = String::from(
            "<section id=\"classroom\"><h2>Open the lab from another machine</h2><ul class=\"urls\">\n",
        );
        let mut reachable = 0;
        for url in &urls {
            let this_machine_only = crate::classroom::is_loopback_url(url);
            reachable += usize::from(!this_machine_only);
            list.push_str(&format!(
                "<li><a href=\"{href}\">{text}</a> {qr}</li>\n",
                href = http::escape_html(url),
                text = http::escape_html(url),
                qr = if this_machine_only {
                    "(this machine only)".to_string()
                } else {
                    crate::classroom::qr_svg(url)
                },
            ));
        }
        list.push_str("</ul>");
        if reachable == 0 {
            list.push_str(
                "<p class=\"error\">This machine has no address but loopback: no phone can reach \
                 it. Join it to the room's network, or to your phone's hotspot \
                 (LESSONS.md, Part VII).</p>",
            );
        }
        // Does this device reach the other port? Checked by the page itself (index.html): a
        // blocked port is told apart from the CORS lesson's deliberate refusal.
        if through_proxy.is_none() {
            list.push_str(&format!(
                "<p>Port {port} from this device, for the cross-origin lessons: <b \
                 id=\"other-port\">checking…</b></p>",
                port = lab.other_addr.port()
            ));
        }
        list.push_str("<p>The teacher's view: <a href=\"/teacher\">/teacher</a>.</p></section>");
        list
    } else if lab.addr.ip().is_loopback() {
        format!(
            "<p class=\"hint\" id=\"classroom\">Listening on {} only: no other machine can \
             open it. For a class, start it with <code>cargo run --release -- --addr \
             0.0.0.0:{}</code>.</p>",
            lab.addr,
            lab.addr.port()
        )
    } else {
        String::new()
    };
    // The publish command, with the address this browser used (its Host), so that it works
    // as typed on the teacher's machine and on a student's.
    let base = match client {
        Some(client) => lab.base_url(client, false),
        None => format!("http://{}", crate::classroom::public_host(None, lab.addr)),
    };
    lessons::INDEX_HTML
        .replace("{{classroom}}", &classroom)
        .replace("{{lessons}}", &items)
        .replace(
            "{{publish}}",
            &http::escape_html(&format!("{base}/publish")),
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

/// The teacher's view (`/teacher`), served by the route and on the accept thread.
const TEACHER_HTML: &str = include_str!("../html/teacher.html");

/// The pages' script, the other origin's port first (`lab.otherOrigin()` needs it).
fn lab_js(lab: &Lab) -> String {
    let port = lab.other_addr.port();
    format!("const LAB_OTHER_PORT = {port};\n{}", lessons::LAB_JS)
}

/// What the lab answers on the accept thread, while it cannot give a connection a thread
/// (`connection::accept_loop`): `/stats` and the pages, so the teacher still sees the lab;
/// `None` (503) for the rest.
fn answer_on_the_accept_thread(
    lab: &Lab,
    state: &LessonState,
    head: &crate::request::Head,
) -> Option<(u16, &'static str, Vec<u8>)> {
    const HTML: &str = "text/html; charset=utf-8";
    let page = |body: &str| Some((200, HTML, body.as_bytes().to_vec()));
    let path = head.target.split('?').next().unwrap_or("");
    match path {
        "/stats" => {
            // The accept thread does not know the peer: no proxy is trusted here.
            let client = crate::forwarded::Client::of(head, lab.addr.ip(), &[]);
            let json = stats_json(lab, state, &client).to_string();
            Some((200, "application/json", json.into_bytes()))
        }
        "/" => page(&index_html(lab, None)),
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
