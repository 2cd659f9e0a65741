//! One connection, one thread: how the lab serves HTTP.
//!
//! ```text
//! accept:   client 127.0.0.1:51000 connects → conn-3 (an idle thread, or a new one)
//! conn-3:   reads  GET /events/long-poll?since=4 HTTP/1.1   ← the head, with httparse
//!           routes it: the long poll parks *this* thread, holding the request
//!   (time passes: event 5 is published; the hub wakes conn-3)
//! conn-3:   writes HTTP/1.1 200 OK ... {"events":[{"id":5,...}],"last":5}
//!           reads  GET /events/long-poll?since=5 HTTP/1.1   ← the same connection, again
//!   (30 s pass with no request: the idle timeout)
//! conn-3:   closes the connection, and waits in the pool for the next one
//! ```
//!
//! 1. `accept_loop`: accept a connection and give it a thread from the `Pool`: the thread
//!    that went idle last, or a new `conn-N` (with `--handlers N` at most N: a servlet
//!    container's `maxThreads`). Near the process's limits, or at the descriptor limit
//!    itself, the accept thread answers itself instead (`AcceptThreadAnswerer`): `/stats` and the pages, and
//!    503 for the rest.
//! 2. `serve`: read a request head (`crate::request`), its body, and hand the `Request` to
//!    the route's `match`. The `Request` owns the connection while the lesson answers.
//! 3. When the answer is complete (`ResponseWriter::keep_alive`) the connection comes back to
//!    this thread, which reads the next request; after a stream, `Connection: close`, or a
//!    refusal, it is closed. A request handed elsewhere (`--parking queue`'s waiting room)
//!    takes the connection along; when answered there it comes back to the pool, and a
//!    thread reads its next request.
//!
//! A parked thread is not reading its socket, so it cannot see its client leave by itself:
//! `Request::client_left` looks, without blocking, and parked long polls and streams look
//! once a second (`LOOK_EVERY`).
//!
//! **What it costs**: one thread per open connection, idle keep-alive connections included
//! (until `--idle-timeout`), and one descriptor. The servlet container of the articles did
//! exactly this, and so does the Rust Book's final chapter.

use crate::request::{self, Body, Framing, Head, HeadRead, Method, Refusal};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// How often a parked thread looks at its socket to see whether its client left.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

/// `every`, stretched by this thread's own share of a quarter of it (0 to 25 %, fixed per
/// thread, drawn at random). Work that every parked thread does once a period (a look, a
/// heartbeat) restarts from each event, so without it a thousand threads would all fall due
/// at the same instant, and an event published then would wait behind all of them.
pub fn out_of_phase(every: Duration) -> Duration {
    use std::hash::BuildHasher;
    thread_local! {
        static SHARE: u32 = {
            let random = std::collections::hash_map::RandomState::new();
            (random.hash_one(thread::current().id()) % 1000) as u32
        };
    }
    every + every / 4 * SHARE.with(|share| *share) / 1000
}

/// When a parked thread's next look at its socket is due (`LOOK_EVERY`, out of phase).
pub fn next_look() -> Instant {
    Instant::now() + out_of_phase(LOOK_EVERY)
}

/// What the connection threads need to know, and what they call.
pub struct Settings {
    /// A connection with no next request head for this long is closed.
    pub idle_timeout: Duration,
    /// A request's head and body must all come within this of its first byte, or 408.
    pub request_timeout: Duration,
    /// A write that cannot finish in this long fails (a client that stopped reading).
    pub write_timeout: Duration,
    /// The largest body read before routing; a larger one is left unread (`Body::TooLarge`).
    pub body_limit: usize,
    /// `--handlers N`: at most N connection threads (0: as many as the limits allow).
    pub handlers: usize,
    /// Connections one client address may have open at once (`ClientPlace`).
    pub max_connections_per_client: usize,
    /// Addresses not held to that share besides this machine's: trusted proxies, which carry
    /// the whole room (each client behind them is shared by its forwarded address instead,
    /// for what it holds).
    pub not_shared: Vec<std::net::IpAddr>,
}

/// The route: called on the connection's thread for every request.
pub type Handler = Box<dyn Fn(Request) + Send + Sync>;

/// What the accept thread answers while the lab cannot take a connection: `Some((status, content
/// type, body))` for `/stats` and the pages, `None` (503) for the rest.
pub type AcceptThreadAnswer =
    Box<dyn Fn(&Head) -> Option<(u16, &'static str, Vec<u8>)> + Send + Sync>;

/// Idle connection threads, newest last, and (`--handlers N`, all N busy) connections
/// waiting for one, oldest first. One lock for both: a thread going idle takes a waiting
/// connection, or a connection arriving takes an idle thread, never neither.
#[derive(Default)]
struct Idle {
    threads: Vec<(u64, crossbeam_channel::Sender<Open>)>,
    /// Connections with no thread free: accepted ones that raced past the accept loop's
    /// wait, and ones coming back from the waiting room. Bounded by the gate, which counts
    /// every connection.
    waiting: std::collections::VecDeque<Open>,
}

/// The connection threads: idle ones waiting for a connection, and how many are alive.
pub struct Pool {
    settings: Settings,
    handler: Handler,
    idle: Mutex<Idle>,
    /// Signalled when a thread joins the idle stack (a fixed pool's accept loop waits).
    went_idle: Condvar,
    /// Connection threads alive, busy or idle.
    pub alive: AtomicUsize,
    /// The most connection threads alive at once since the lab started (`--handlers N`
    /// keeps it at N at most).
    pub alive_peak: AtomicUsize,
    /// Connections open now (each has a thread, or waits in the waiting room).
    pub open: AtomicUsize,
    next_thread: AtomicU64,
    next_connection: AtomicU64,
    /// What the accept thread did.
    pub accept_thread: AcceptThreadCounts,
    /// Every socket the lab holds (connections, and WebSockets that left HTTP), so that a
    /// stop can shut them all down (`Pool::stop`). Weak: an entry never keeps a socket open.
    sockets: Mutex<HashMap<u64, Weak<TcpStream>>>,
    /// The lab is stopping: the accept loops end, no thread waits for work.
    stopping: AtomicBool,
    /// Connections open now per client address (`ClientPlace`), and refusals past the share.
    per_client: Mutex<HashMap<std::net::IpAddr, usize>>,
    pub refused_over_share: AtomicU64,
    /// Refusals logged naming the client, once every 10 s per flood.
    refusals: crate::classroom::RefusalLog,
}

/// A connection's place in its client's share (`--max-connections-per-client`), given back
/// when dropped: with the connection, or with the WebSocket that took it over.
pub struct ClientPlace {
    pool: Arc<Pool>,
    ip: Option<std::net::IpAddr>,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let mut counts = self
            .pool
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

/// What the accept thread answered and refused.
#[derive(Default)]
pub struct AcceptThreadCounts {
    /// `/stats` and pages answered on the accept thread.
    pub answered: AtomicU64,
    /// Connections refused there with 503.
    pub refused: AtomicU64,
    /// `accept` failures (the descriptor limit, mostly), each followed by a back-off.
    pub accept_errors: AtomicU64,
}

impl Pool {
    pub fn new(settings: Settings, handler: Handler) -> Arc<Pool> {
        Arc::new(Pool {
            settings,
            handler,
            idle: Mutex::new(Idle::default()),
            went_idle: Condvar::new(),
            alive: AtomicUsize::new(0),
            alive_peak: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            next_thread: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            accept_thread: AcceptThreadCounts::default(),
            sockets: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            per_client: Mutex::new(HashMap::new()),
            refused_over_share: AtomicU64::new(0),
            refusals: Default::default(),
        })
    }

    /// The lab is stopping (`shutdown`): the accept loops end at their next connection (the
    /// caller makes one), idle threads end now, and every socket is shut down under the
    /// thread that serves it, whose next read or write fails (a parked thread sees it at
    /// its next look, within `LOOK_EVERY`).
    pub fn stop(&self) {
        self.stop_accepting();
        // Idle threads wait on these: dropped, their wait ends and so do they. Waiting
        // connections close as they are dropped.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.threads.clear();
        idle.waiting.clear();
        drop(idle);
        let sockets: Vec<Arc<TcpStream>> = self
            .sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        log::debug!("stopping: {} sockets shut down", sockets.len());
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// A place for a connection from `ip` in its client's share, or why not. This machine
    /// (`127.0.0.1`, `::1`) and trusted proxies are not held to a share.
    fn take_place(self: &Arc<Pool>, ip: std::net::IpAddr) -> Result<ClientPlace, String> {
        if crate::classroom::is_this_machine(ip) || self.settings.not_shared.contains(&ip) {
            return Ok(ClientPlace {
                pool: self.clone(),
                ip: None,
            });
        }
        let max = self.settings.max_connections_per_client;
        let mut counts = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            drop(counts);
            self.refused_over_share.fetch_add(1, Relaxed);
            let why = format!("{ip} has {max} connections open (--max-connections-per-client)");
            self.refusals.note(ip, &why);
            return Err(why);
        }
        *count += 1;
        Ok(ClientPlace {
            pool: self.clone(),
            ip: Some(ip),
        })
    }

    /// Client addresses with connections open now, and how many (the most first, at most
    /// `top`), for `/stats`.
    pub fn connections_per_client(&self, top: usize) -> Vec<(std::net::IpAddr, usize)> {
        let counts = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = counts.iter().map(|(ip, n)| (*ip, *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(top);
        all
    }

    /// The share in force (`--max-connections-per-client`, at most half of what the lab holds).
    pub fn max_connections_per_client(&self) -> usize {
        self.settings.max_connections_per_client
    }

    /// Connections waiting for a connection thread (`--handlers N`, all N busy).
    pub fn waiting_for_a_thread(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .waiting
            .len()
    }

    /// The accept loops end at their next connection, and no thread takes new work.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Is the lab stopping?
    pub fn stopping(&self) -> bool {
        self.stopping.load(Relaxed)
    }

    /// Keep `stream` among the sockets a stop shuts down, for as long as the guard lives.
    fn register(self: &Arc<Pool>, id: u64, stream: &Arc<TcpStream>) -> Registered {
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::downgrade(stream));
        Registered {
            pool: self.clone(),
            id,
        }
    }

    /// Give `open` a thread: the one that went idle last, else a new one; with `--handlers
    /// N` and all N busy, none: it waits for the next thread to finish (`wait_for_work`).
    /// (Handed out newest first, so under a steady load the same few threads stay busy and
    /// the others, left alone, end after 10 s idle: the pool is as large as the load needs.)
    fn serve(self: &Arc<Pool>, mut open: Open) {
        if self.stopping() {
            return; // (the connection is closed as it is dropped)
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((_, worker)) = idle.threads.pop() {
            // Room for one: never blocks. A thread that ended cannot be on the stack.
            match worker.send(open) {
                Ok(()) => return,
                Err(e) => open = e.into_inner(),
            }
        }
        // A hard cap: the count is checked and raised under the lock, so two connections
        // arriving at once (two accept threads, a burst back from the waiting room) cannot
        // both pass it.
        let size = self.settings.handlers;
        if size > 0 && self.alive.load(Relaxed) >= size {
            log::debug!(
                "conn {} waits for a connection thread: all {size} busy",
                open.id
            );
            idle.waiting.push_back(open);
            return;
        }
        let alive = self.alive.fetch_add(1, Relaxed) + 1;
        drop(idle);
        self.alive_peak.fetch_max(alive, Relaxed);
        let n = self.next_thread.fetch_add(1, Relaxed);
        let pool = self.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{n}"))
            .spawn(move || {
                let mut next = Some(open);
                while let Some(open) = next {
                    pool.serve_connection(open);
                    // BLOCKS: idle, until the accept loop hands this thread a connection,
                    // or 10 s pass and it ends.
                    next = pool.wait_for_work(n);
                }
                pool.alive.fetch_sub(1, Relaxed);
                pool.went_idle.notify_one();
            });
        if let Err(e) = spawned {
            self.alive.fetch_sub(1, Relaxed);
            // The connection went down with the closure, and is closed.
            log::error!("no thread for a connection: {e} (raise ulimit -u, or lower --max-parked)");
        }
    }

    /// A fixed pool (`--handlers N`), all N threads busy: wait until one is free. Every
    /// connection behind this one waits too, publishes included: parked long polls can hold
    /// all N, and then the publish that would wake them cannot get in (chapter 5, Pitfalls).
    fn wait_for_a_free_thread(&self) {
        let size = self.settings.handlers;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while idle.threads.is_empty() && self.alive.load(Relaxed) >= size {
            // BLOCKS: until a connection thread finishes a connection (or one ends, idle).
            idle = self
                .went_idle
                .wait_timeout(idle, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Called by thread `n` when its connection is closed: its next one, or `None` after
    /// 10 s idle (it then ends).
    fn wait_for_work(&self, n: u64) -> Option<Open> {
        if self.stopping() {
            return None;
        }
        let (worker, work) = crossbeam_channel::bounded(1);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // A connection that waited for a thread (`--handlers N`), oldest first.
        if let Some(open) = idle.waiting.pop_front() {
            return Some(open);
        }
        idle.threads.push((n, worker));
        drop(idle);
        self.went_idle.notify_one();
        // BLOCKS: until `serve` sends a connection, or 10 s pass.
        let until = Instant::now() + Duration::from_secs(10);
        if let Ok(open) = crate::workarounds::recv_deadline(&work, until) {
            return Some(open);
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.threads.iter().position(|(m, _)| *m == n) {
            Some(at) => {
                idle.threads.remove(at);
                None
            }
            // Taken off the stack just as the wait ended: the connection is on its way.
            None => {
                drop(idle);
                work.recv().ok()
            }
        }
    }

    /// `Expect: 100-continue`: the client waits for word before it sends its body. Any other
    /// expectation is refused (417).
    fn answer_expect(
        &self,
        open: &mut Open,
        head: &Head,
        framing: &Framing,
    ) -> Result<(), Refusal> {
        let Some(expect) = head.header("Expect") else {
            return Ok(());
        };
        if !expect.eq_ignore_ascii_case("100-continue") {
            let message = format!("Expect: {expect} is not supported");
            return Err(Refusal {
                status: 417,
                message,
            });
        }
        let too_large =
            matches!(framing, Framing::Length(n) if *n > self.settings.body_limit as u64);
        if head.minor_version == 1 && *framing != Framing::None && !too_large {
            let _ = (&*open.stream).write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        Ok(())
    }

    /// Step 2 and 3: requests one after another on one connection, on this thread.
    fn serve_connection(self: &Arc<Pool>, mut open: Open) {
        let id = open.id;
        loop {
            // BLOCKS: until a request head arrives, the client closes, or --idle-timeout.
            let idle = self.settings.idle_timeout;
            let within = self.settings.request_timeout;
            let read = request::read_head(&mut &*open.stream, &mut open.pending, idle, within);
            let (head, deadline) = match read {
                Ok(HeadRead::Head(head, length, deadline)) => {
                    open.pending.drain(..length);
                    // The read buffer's room goes back to the allocator: a held
                    // connection keeps only the bytes it was sent past the head.
                    open.pending.shrink_to_fit();
                    (head, deadline)
                }
                Ok(HeadRead::Closed) => {
                    log::debug!("conn {id} closed: the client left, or was idle");
                    return;
                }
                Ok(HeadRead::Refused(refusal)) => return open.refuse(refusal),
                Err(e) => {
                    log::debug!("conn {id} read failed: {e}");
                    return;
                }
            };
            let framing = match Framing::of(&head) {
                Ok(framing) => framing,
                Err(refusal) => return open.refuse(refusal),
            };
            if let Err(refusal) = self.answer_expect(&mut open, &head, &framing) {
                return open.refuse(refusal);
            }
            // BLOCKS (a body only): until it has come, or the request's deadline.
            let limit = self.settings.body_limit;
            let (stream, pending) = (&mut &*open.stream, &mut open.pending);
            let body = match request::read_body(stream, pending, &framing, limit, deadline) {
                Ok(body) => body,
                Err(refusal) => return open.refuse(refusal),
            };
            // The connection can serve another request only if this one's body was read
            // whole and the client did not ask to close.
            open.reusable = false;
            open.body_unread = body == Body::TooLarge;
            let number = REQUESTS.fetch_add(1, Relaxed);
            log::debug!("conn {id} req {number}: {} {}", head.method, head.target);
            let home = Arc::new(Home(Mutex::new(Slot::Waiting(None))));
            let request = Request {
                head,
                body,
                number,
                connection: Connection {
                    open: Some(open),
                    home: home.clone(),
                },
            };
            // The route, on this thread. A lesson that panics loses its connection (closed
            // as the request unwinds), never the thread or the lab.
            let route = std::panic::AssertUnwindSafe(|| (self.handler)(request));
            if std::panic::catch_unwind(route).is_err() {
                log::error!("conn {id} req {number}: the handler panicked; connection closed");
            }
            // Step 3: did the connection come back, and may it serve another request?
            match home.after_the_handler() {
                Some(back) if back.reusable => open = back,
                Some(back) => return back.close(),
                None => {
                    log::debug!("conn {id} handed on (waiting room or WebSocket)");
                    return;
                }
            }
        }
    }
}

/// Requests numbered across the process, for the logs (`req-17`).
static REQUESTS: AtomicU64 = AtomicU64::new(1);

/// A socket among those a stop shuts down (`Pool::register`), until this is dropped.
pub struct Registered {
    pool: Arc<Pool>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut sockets = self.pool.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.remove(&self.id);
    }
}

/// An accepted connection, with what this thread has read of it.
pub struct Open {
    /// Shared with nobody but a WebSocket that takes it over (`Request::into_stream`); the
    /// pool's registry keeps only a weak reference.
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    id: u64,
    /// Bytes read past the current request: the start of the next one (pipelining).
    pending: Vec<u8>,
    /// Set once a complete answer was written that leaves the connection usable.
    reusable: bool,
    /// The request's body was too large and left unread.
    body_unread: bool,
    pool: Arc<Pool>,
    /// Its place in the gate's count (`limits`), given back when the connection closes.
    counted: Option<crate::limits::Counted>,
    /// Its place among the sockets a stop shuts down.
    registered: Option<Registered>,
    /// Its place in its client's share.
    place: Option<ClientPlace>,
}

impl Open {
    /// A connection just accepted, counted open; nothing read from it yet.
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        pool: &Arc<Pool>,
        counted: crate::limits::Counted,
        place: ClientPlace,
    ) -> Open {
        let id = pool.next_connection.fetch_add(1, Relaxed);
        log::debug!("conn {id} from {peer}");
        pool.open.fetch_add(1, Relaxed);
        let stream = Arc::new(stream);
        Open {
            registered: Some(pool.register(id, &stream)),
            stream,
            peer,
            id,
            pending: Vec::new(),
            reusable: false,
            body_unread: false,
            pool: pool.clone(),
            counted: Some(counted),
            place: Some(place),
        }
    }

    /// Answer a request that broke the rules, and close.
    fn refuse(mut self, refusal: Refusal) {
        log::debug!(
            "conn {} refused with {}: {}",
            self.id,
            refusal.status,
            refusal.message
        );
        let body = serde_json::json!({ "error": refusal.message }).to_string();
        let answer = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nConnection: close\r\n\
             Content-Length: {}\r\n\r\n{body}",
            refusal.status,
            request::reason(refusal.status),
            body.len()
        );
        let _ = (&*self.stream).write_all(answer.as_bytes());
        self.body_unread = true;
        self.close();
    }

    /// Close: our side first, then, if the client may still be sending (a body we did not
    /// read, a refused head), read and discard until it closes (2 s and 16 MiB at most). Closing a socket with
    /// unread bytes makes the kernel send a reset, and the client might lose our answer.
    fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Write);
        if self.body_unread {
            let until = Instant::now() + Duration::from_secs(2);
            // On the heap: a stack page touched once stays resident for the thread's life.
            let mut sink = vec![0u8; 16 * 1024];
            let mut drained = 0;
            while drained < 16 << 20 {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                    break;
                }
                // BLOCKS: until the client sends more, closes its side, or the second passes.
                match (&*self.stream).read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        }
        log::debug!("conn {} closed by the lab", self.id);
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.pool.open.fetch_sub(1, Relaxed);
    }
}

/// Where a connection goes when its request is answered: back to the thread that read it,
/// if that thread still waits (the handler answered on it), else to the pool.
struct Home(Mutex<Slot>);

enum Slot {
    /// The reading thread is still in the handler; the connection comes back here.
    Waiting(Option<Open>),
    /// The reading thread has moved on: a reusable connection goes to the pool.
    Away,
}

impl Home {
    fn come_back(&self, open: Open) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *slot {
            Slot::Waiting(place) => *place = Some(open),
            Slot::Away if open.reusable => {
                let pool = open.pool.clone();
                drop(slot);
                pool.serve(open);
            }
            Slot::Away => {
                drop(slot);
                open.close();
            }
        }
    }

    /// The handler has returned: the connection, if it came back; else the handler gave it
    /// away, and from now on it comes back to the pool.
    fn after_the_handler(&self) -> Option<Open> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *slot, Slot::Away) {
            Slot::Waiting(back) => back,
            Slot::Away => None,
        }
    }
}

/// The connection, owned by the request (and then by its writer) while a lesson answers.
/// Dropped, it goes home (`Home`).
struct Connection {
    open: Option<Open>,
    home: Arc<Home>,
}

impl Connection {
    fn open(&self) -> &Open {
        self.open
            .as_ref()
            .expect("a connection is open until dropped")
    }
    fn open_mut(&mut self) -> &mut Open {
        self.open
            .as_mut()
            .expect("a connection is open until dropped")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.home.come_back(open);
        }
    }
}

/// One request: its head, its body (read before routing), and the connection to answer on.
pub struct Request {
    head: Head,
    body: Body,
    number: u64,
    connection: Connection,
}

impl Request {
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request target: path and query (`/events/poll?since=4`).
    pub fn url(&self) -> &str {
        &self.head.target
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        Some(&self.connection.open().peer)
    }

    /// This request's number, for the logs.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The body, read before routing (`Body::TooLarge` past the server's limit).
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Will the connection close after this answer (the client said so, or spoke HTTP/1.0)?
    pub fn wants_close(&self) -> bool {
        self.head.wants_close()
    }

    /// A `HEAD` request: answered as `GET`, without the body.
    pub fn is_head(&self) -> bool {
        self.head.method == Method::Head
    }

    /// Has the client closed its connection? Looks at the socket without blocking: a read
    /// that would wait means the client is still there; 0 bytes (its FIN) or an error (its
    /// reset) means it left. Bytes waiting (a pipelined request) mean it is still there.
    pub fn client_left(&self) -> bool {
        peek_says_gone(&self.connection.open().stream)
    }

    /// Take the connection to write the answer on.
    pub fn into_writer(self) -> ResponseWriter {
        ResponseWriter {
            head_only: self.is_head(),
            head_written: false,
            head_tail: Vec::new(),
            keep_alive_allowed: !self.wants_close(),
            http_1_0: self.head.minor_version == 0,
            connection: self.connection,
        }
    }

    /// Take the socket itself (a WebSocket upgrade), with any bytes the client already sent
    /// past the head, and its places (in the gate's count, among the sockets a stop shuts
    /// down), to keep for as long as it is served. The connection never comes back to HTTP.
    pub fn into_stream(mut self) -> TakenOver {
        let mut open = self.connection.open.take().expect("open until dropped");
        TakenOver {
            stream: open.stream.clone(),
            pending: std::mem::take(&mut open.pending),
            counted: open.counted.take(),
            registered: open.registered.take(),
            place: open.place.take(),
        }
    }
}

/// A socket taken over from HTTP (`Request::into_stream`), with what came behind its head
/// and its places, which it gives back when dropped.
pub struct TakenOver {
    pub stream: Arc<TcpStream>,
    pub pending: Vec<u8>,
    pub counted: Option<crate::limits::Counted>,
    pub registered: Option<Registered>,
    pub place: Option<ClientPlace>,
}

/// The connection while an answer is written: writes go straight to the socket (no buffer:
/// each `write` is on the wire when it returns). Dropped, the connection goes home, to be
/// read again only if `keep_alive` was called.
pub struct ResponseWriter {
    connection: Connection,
    head_only: bool,
    /// `HEAD`: the head has gone out; what follows is a body, and is not sent.
    head_written: bool,
    /// `HEAD`: the last bytes of the head written so far (its end may span two writes).
    head_tail: Vec<u8>,
    keep_alive_allowed: bool,
    http_1_0: bool,
}

impl ResponseWriter {
    /// The request was `HEAD`: write the head only.
    pub fn head_only(&self) -> bool {
        self.head_only
    }

    /// The request was HTTP/1.0: a connection kept alive must say so (`Connection:
    /// keep-alive`), as 1.0 closes by default.
    pub fn is_http_1_0(&self) -> bool {
        self.http_1_0
    }

    /// May the answer leave the connection open? (Not if the client asked to close.)
    pub fn may_keep_alive(&self) -> bool {
        self.keep_alive_allowed && !self.connection.open().body_unread
    }

    /// Has the client closed its connection? (`Request::client_left`)
    pub fn client_left(&self) -> bool {
        peek_says_gone(&self.connection.open().stream)
    }

    /// Write what the socket takes now, never waiting (`send_without_waiting`): the waiting
    /// room's writes, made by one thread for many. The bytes go as they are: a `HEAD`
    /// answer's must already be its head alone (`http::whole_response`).
    pub fn write_without_waiting(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_without_waiting(&self.connection.open().stream, buf)
    }

    /// The answer is complete and framed by its length: the connection may serve the next
    /// request (if `may_keep_alive`).
    pub fn keep_alive(&mut self) {
        if self.may_keep_alive() {
            self.connection.open_mut().reusable = true;
        }
    }
}

impl ResponseWriter {
    /// `HEAD` (RFC 9110 §9.3.2): the head goes out, and never a body, whatever the route
    /// writes after it. The rest of the write that ends the head is dropped; any later write
    /// fails, which ends a stream's loop.
    fn write_head_only(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.head_written {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "HEAD: no body"));
        }
        let mut seen = std::mem::take(&mut self.head_tail);
        let before = seen.len();
        seen.extend_from_slice(buf);
        let stream = &*self.connection.open().stream;
        match seen.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(at) => {
                let end = at + 4 - before;
                // BLOCKS: while the socket's send buffer is full, up to --write-timeout.
                (&*stream).write_all(&buf[..end])?;
                self.head_written = true;
                Ok(buf.len())
            }
            None => {
                // BLOCKS: as above.
                let n = (&*stream).write(buf)?;
                let written = &seen[..before + n];
                self.head_tail = written[written.len().saturating_sub(3)..].to_vec();
                Ok(n)
            }
        }
    }
}

impl Write for ResponseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.head_only {
            return self.write_head_only(buf);
        }
        // BLOCKS: while the socket's send buffer is full, up to --write-timeout.
        (&*self.connection.open().stream).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `send` with `MSG_DONTWAIT`: as much of `buf` as the socket's send buffer takes now, never
/// waiting; `WouldBlock` when it takes nothing. The socket itself stays blocking for everyone
/// else. (The waiting room's writes, `waiting_room`.)
#[cfg(all(unix, not(lab_portable)))]
pub fn send_without_waiting(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // No SIGPIPE for a closed connection: Linux says so per call; Rust's runtime ignores the
    // signal everywhere else.
    #[cfg(target_os = "linux")]
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    #[cfg(not(target_os = "linux"))]
    let flags = libc::MSG_DONTWAIT;
    // SAFETY: a valid descriptor, and a buffer we own of the length we pass.
    again_if_interrupted(|| unsafe {
        libc::send(stream.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags)
    })
}

/// A system call that returns a count, or -1 with `errno`; made again if a signal
/// interrupted it (`EINTR`).
#[cfg(all(unix, not(lab_portable)))]
fn again_if_interrupted(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The portable send, with std alone: non-blocking for one write. (Only the dispatcher uses
/// the socket meanwhile.)
#[cfg(any(not(unix), lab_portable))]
pub fn send_without_waiting(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    stream.set_nonblocking(true)?;
    let sent = (&*stream).write(buf);
    let _ = stream.set_nonblocking(false);
    sent
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)`: one non-blocking look at the socket.
#[cfg(all(unix, not(lab_portable)))]
fn peek_says_gone(stream: &TcpStream) -> bool {
    match recv_without_waiting(stream, &mut [0u8; 1], libc::MSG_PEEK) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// `recv` with `MSG_DONTWAIT` (and `flags`): whatever the socket holds, never waiting for
/// more; `WouldBlock` when it holds nothing. The socket itself stays blocking for everyone
/// else. (A parked thread's look, `peek_says_gone`; a WebSocket's reads, `ws::ReadWhenNoticed`.)
#[cfg(all(unix, not(lab_portable)))]
pub fn recv_without_waiting(stream: &TcpStream, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let (fd, flags) = (stream.as_raw_fd(), flags | libc::MSG_DONTWAIT);
    // SAFETY: a valid descriptor, and a buffer we own of the length we pass.
    again_if_interrupted(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// The portable look, with std alone: non-blocking for one peek. (Only the thread holding the
/// request uses the socket meanwhile.)
#[cfg(any(not(unix), lab_portable))]
fn peek_says_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let gone = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        ),
    };
    let _ = stream.set_nonblocking(false);
    gone
}

/// Step 1: the accept loop of one listener (the HTTP port, the other origin's port).
pub fn accept_loop(listener: TcpListener, pool: Arc<Pool>, answer: AcceptThreadAnswer) {
    let mut spare = Spare::take();
    let mut back_off = Duration::from_millis(10);
    let mut answerer = AcceptThreadAnswerer {
        answer,
        last_silent: None,
    };
    loop {
        if pool.settings.handlers > 0 {
            pool.wait_for_a_free_thread();
        }
        // BLOCKS: until a client connects (a stop connects too: `RunningLab::stop`).
        let accepted = listener.accept();
        if pool.stopping() {
            log::debug!("accept loop ended: the lab is stopping");
            return;
        }
        let (stream, peer) = match accepted {
            Ok(accepted) => {
                back_off = Duration::from_millis(10);
                accepted
            }
            Err(e) => {
                pool.accept_thread.accept_errors.fetch_add(1, Relaxed);
                if is_out_of_descriptors(&e) {
                    answer_with_the_spare(&listener, &pool, &mut answerer, &mut spare);
                }
                log::debug!("accept failed: {e}; trying again in {back_off:?}");
                // BLOCKS: a short back-off, so the loop does not spin while descriptors
                // are given back.
                thread::sleep(back_off);
                back_off = (back_off * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(pool.settings.write_timeout));
        // The gate: near the descriptor or thread limit, no new thread; the accept thread answers.
        if let Some(why) = crate::limits::capacity().near_limit() {
            answerer.answer(&pool, stream, &why);
            continue;
        }
        // The share: one client address cannot take the room's connections.
        let place = match pool.take_place(peer.ip()) {
            Ok(place) => place,
            Err(why) => {
                answerer.answer(&pool, stream, &why);
                continue;
            }
        };
        let counted = crate::limits::capacity().count();
        pool.serve(Open::new(stream, peer, &pool, counted, place));
    }
}

/// Out of descriptors, on the accept thread: give back the spare descriptor, take the
/// waiting client with it, answer it, and take the spare again.
fn answer_with_the_spare(
    listener: &TcpListener,
    pool: &Arc<Pool>,
    answerer: &mut AcceptThreadAnswerer,
    spare: &mut Option<std::net::UdpSocket>,
) {
    drop(spare.take());
    if let Ok((stream, _)) = listener.accept() {
        answerer.answer(pool, stream, "no descriptor left");
    }
    *spare = Spare::take();
}

/// One descriptor kept in reserve, so that at the descriptor limit the accept thread can
/// still take a connection and answer it.
struct Spare;

impl Spare {
    fn take() -> Option<std::net::UdpSocket> {
        std::net::UdpSocket::bind("127.0.0.1:0").ok()
    }
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        true
    }
}

/// How long the accept thread waits for a head when it has been quiet. Every connection behind this
/// one waits too, so it is short: a client's request follows its connect within a
/// millisecond on a LAN.
const ACCEPT_THREAD_WAIT: Duration = Duration::from_millis(50);

/// The accept thread's own answer: it answers `/stats` and the pages and refuses the rest
/// with 503 and `Retry-After`, then closes. No thread is started.
struct AcceptThreadAnswerer {
    answer: AcceptThreadAnswer,
    /// When a connection last sent the accept thread nothing in time: within the last second, the
    /// accept thread is being flooded with silent connections.
    last_silent: Option<Instant>,
}

impl AcceptThreadAnswerer {
    /// Read the head briefly and answer. While silent connections flood it (one came in the
    /// last second) the accept thread does not wait for a head: it reads what has arrived, and once
    /// more after 200 µs (a request follows its connect by tens of microseconds). A client
    /// that waited in the backlog has long sent its request; one that has sent nothing (an
    /// idle flood's) is refused at once instead of holding up everyone behind it for
    /// `ACCEPT_THREAD_WAIT`. (Not with a 1 ms socket timeout: the kernel rounds it up to its tick, 4 ms
    /// here. Measured with `flood`: waiting 50 ms for each of ten thousand silent
    /// connections left `/stats` unanswered for the rest of the flood.)
    fn answer(&mut self, pool: &Pool, stream: TcpStream, why: &str) {
        let flooded = self
            .last_silent
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1));
        if !answer_on_the_accept_thread(pool, stream, &self.answer, why, !flooded) {
            self.last_silent = Some(Instant::now());
        }
    }
}

/// Answer one connection on the accept thread (`AcceptThreadAnswerer::answer`): waiting up to `ACCEPT_THREAD_WAIT` for its
/// head if `patient`, else taking only what has arrived already. `false`: it sent no head.
fn answer_on_the_accept_thread(
    pool: &Pool,
    mut stream: TcpStream,
    answer: &AcceptThreadAnswer,
    why: &str,
    patient: bool,
) -> bool {
    let mut buffer = Vec::new();
    let head = if patient {
        // BLOCKS: at most ACCEPT_THREAD_WAIT (twice, once the head has begun), for the head.
        let wait = ACCEPT_THREAD_WAIT;
        match request::read_head(&mut stream, &mut buffer, wait, wait) {
            Ok(HeadRead::Head(head, _, _)) => Some(head),
            _ => None,
        }
    } else {
        let mut arrived = [0u8; 8192];
        let _ = stream.set_nonblocking(true);
        let mut read = (&stream).read(&mut arrived).unwrap_or(0);
        if read == 0 {
            // A client's request follows its connect by some tens of microseconds: a moment
            // for it, far shorter than any socket timeout the kernel can keep.
            // BLOCKS: 200 µs.
            thread::sleep(Duration::from_micros(200));
            read = (&stream).read(&mut arrived).unwrap_or(0);
        }
        let _ = stream.set_nonblocking(false);
        request::parse_head(&arrived[..read])
            .ok()
            .flatten()
            .map(|(head, _)| head)
    };
    let spoke = head.is_some();
    let answer = head
        .as_ref()
        .filter(|h| h.method == Method::Get)
        .and_then(answer);
    let (status, content_type, body, extra) = match answer {
        Some((status, content_type, body)) => {
            pool.accept_thread.answered.fetch_add(1, Relaxed);
            (
                status,
                content_type,
                body,
                "X-Lab-Answered-On: accept-thread\r\n",
            )
        }
        None => {
            pool.accept_thread.refused.fetch_add(1, Relaxed);
            log::debug!("refused a connection on the accept thread: {why}");
            let message = format!("the lab is near its limits ({why}); retry shortly");
            let body = serde_json::json!({ "error": message }).to_string();
            let content_type = "application/json";
            (503, content_type, body.into_bytes(), "Retry-After: 2\r\n")
        }
    };
    let mut wire = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{extra}Cache-Control: no-store\r\n\
         Connection: close\r\nContent-Length: {}\r\n\r\n",
        request::reason(status),
        body.len()
    )
    .into_bytes();
    wire.extend(body);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
    let _ = stream.write_all(&wire);
    let _ = stream.shutdown(Shutdown::Write);
    spoke
}

#[cfg(test)]
mod tests {

    /// Periodic work falls due out of phase: within a quarter past the period, fixed for a
    /// thread, different across threads.
    #[test]
    fn every_thread_has_its_own_phase() {
        let every = Duration::from_secs(1);
        let mine = out_of_phase(every);
        assert_eq!(out_of_phase(every), mine, "fixed for a thread");
        let phases: Vec<Duration> = (0..8)
            .map(|_| thread::spawn(move || out_of_phase(every)).join().unwrap())
            .collect();
        for phase in &phases {
            assert!(*phase >= every && *phase <= every * 5 / 4, "{phase:?}");
        }
        assert!(phases.iter().any(|p| *p != phases[0]), "{phases:?}");
    }
    use super::*;

    /// The look a parked thread takes (`Request::client_left`), on both builds: the system's
    /// `recv` with flags, and the std-only fallback (`--cfg lab_portable`).
    #[test]
    fn a_peek_tells_a_client_that_left_from_one_that_waits_or_sends() {
        let (mut client, server) = crate::loopback_pair();
        assert!(!peek_says_gone(&server), "connected and quiet");
        client.write_all(b"GET").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // BLOCKS (the test): until the bytes are there.
        assert_eq!(server.peek(&mut [0u8; 8]).unwrap(), 3);
        assert!(
            !peek_says_gone(&server),
            "a pipelined request is no departure"
        );
        // The look leaves the socket as it was: a blocking read still reads.
        let mut got = [0u8; 3];
        (&server).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"GET");
        drop(client);
        let until = Instant::now() + Duration::from_secs(10);
        while !peek_says_gone(&server) {
            assert!(Instant::now() < until, "the client's FIN was never seen");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `req-17`: the request this connection thread is serving, for the log. (Connection threads
/// serve one request after another, so their own names, `conn-N`, say less.)
/// The number of the request this connection thread is serving (`request_label` without
/// its `req-`).
pub fn request_number() -> u64 {
    REQUEST_ID.with(|id| id.get())
}

pub fn request_label() -> String {
    format!("req-{}", REQUEST_ID.with(|id| id.get()))
}

thread_local! {
    /// The request this connection thread is serving now (they serve one after another).
    static REQUEST_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Called by the server as a connection thread takes a request, for the logs.
pub fn set_request_id(id: u64) {
    REQUEST_ID.with(|cell| cell.set(id));
}
