//! Workarounds for two tiny_http 0.12 bugs, kept here, away from the path a student reads
//! first (`server` calls them and moves on). Each is reproduced by a test named below; if a
//! later tiny_http fixes one, that test tells, and its workaround can go.
//!
//! 1. **The pool race** (`pump`): tiny_http's connection pool can leave a freshly accepted
//!    connection queued, unread, behind busy threads for minutes.
//!    Test: `simultaneous_keep_alive_streams_are_all_served` (tests/lab.rs).
//! 2. **The accept thread that dies for good** (`Requests`): tiny_http accepts connections on
//!    one thread of its own. When `accept` fails (at the descriptor limit: "Too many open
//!    files") that thread ends its loop; when it cannot duplicate a socket or start a pool
//!    thread, it panics. Either way the port stops being served while the process stays up: a
//!    zombie. `Requests` notices both and starts a new tiny_http server on the same listening
//!    socket, once descriptors are free again; the old server still serves the connections it
//!    has. Test: `the_lab_recovers_when_tiny_http_stops_accepting` (tests/limits.rs).
//!
//!    The same happens, harmlessly, whenever no connection arrives for `--idle-timeout`: the
//!    read timeout set on the listener (so that accepted sockets inherit it) also bounds
//!    `accept` itself on Linux, and tiny_http takes the "would block" for a failure. So that
//!    ending is routine here: a new server takes over at once, and the old one's thread ends
//!    once its connections can send nothing more (test:
//!    `an_idle_lab_keeps_serving_after_its_accept_times_out`).

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// Panics seen on tiny_http's threads (the only unnamed threads in this process: every thread
/// the lab starts has a name).
static TINY_HTTP_PANICS: AtomicU64 = AtomicU64::new(0);

/// Every request that any generation of tiny_http server reads, in one channel.
pub struct Requests {
    requests: Receiver<Request>,
    /// Where every server (on every listener) sends what it reads.
    to_accept_loop: Sender<Request>,
    idle_timeout: Duration,
    /// Routine replacements: `accept` timed out after `--idle-timeout` with no connection.
    pub idle_replacements: Arc<AtomicU64>,
    /// How many times tiny_http's accept thread died and a new server took over.
    pub restarts: Arc<AtomicU64>,
}

impl Requests {
    /// Start tiny_http on `listener`, and the supervisor that replaces it when it stops
    /// accepting.
    pub fn start(listener: TcpListener, idle_timeout: Duration) -> Result<Requests, String> {
        watch_for_panics();
        let (to_accept_loop, requests) = bounded(1024);
        let requests = Requests {
            requests,
            to_accept_loop,
            idle_timeout,
            idle_replacements: Arc::new(AtomicU64::new(0)),
            restarts: Arc::new(AtomicU64::new(0)),
        };
        requests.also_serve(listener, "http")?;
        Ok(requests)
    }

    /// Serve one more listening socket into the same channel (the "other origin" port), with
    /// its own servers (threads `NAME-N`) and supervisor.
    pub fn also_serve(&self, listener: TcpListener, name: &'static str) -> Result<(), String> {
        let (stopped, stops) = unbounded();
        let generation = Generation {
            to_accept_loop: self.to_accept_loop.clone(),
            stopped,
            linger: self.idle_timeout + Duration::from_secs(5),
            name,
        };
        generation.serve(&listener, 0)?;
        let counts = (self.restarts.clone(), self.idle_replacements.clone());
        thread::Builder::new()
            .name(format!("{name}-supervisor"))
            .spawn(move || supervise(listener, generation, stops, counts))
            .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
        Ok(())
    }

    /// The next request, from whichever server read it.
    pub fn recv(&self) -> Option<Request> {
        // BLOCKS: until some tiny_http connection thread has read a whole request head.
        self.requests.recv().ok()
    }
}

/// How one generation of tiny_http server hands on its requests and reports its end.
struct Generation {
    to_accept_loop: Sender<Request>,
    /// (generation, was it the routine idle timeout?)
    stopped: Sender<(u64, bool)>,
    /// After its accept thread ends, how long the old server may stay silent before its
    /// connections cannot send anything more (each is closed after `--idle-timeout`).
    linger: Duration,
    /// Its threads' names start with this (`http`, `other`).
    name: &'static str,
}

impl Generation {
    /// One tiny_http server on a copy of the listening socket, and a thread (`http-N`) that
    /// passes its requests on. When its accept thread ends, it reports on `stopped` and keeps
    /// passing on what its live connections still send, until they are silent for `linger`.
    fn serve(&self, listener: &TcpListener, generation: u64) -> Result<(), String> {
        let copy = listener
            .try_clone()
            .map_err(|e| format!("cannot copy the listening socket: {e}"))?;
        let server = tiny_http::Server::from_listener(copy, None)
            .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        let (to_accept_loop, stopped) = (self.to_accept_loop.clone(), self.stopped.clone());
        let (linger, name) = (self.linger, self.name);
        thread::Builder::new()
            .name(format!("{name}-{generation}"))
            .spawn(move || {
                let mut accepting = true;
                loop {
                    // BLOCKS: until this server has a request or its accept thread ended
                    // (after that: or until it has been silent for `linger`).
                    let next = if accepting {
                        server.recv().map(Some)
                    } else {
                        server.recv_timeout(linger)
                    };
                    match next {
                        Ok(Some(request)) => {
                            if to_accept_loop.send(request).is_err() {
                                return;
                            }
                        }
                        Ok(None) => return, // no connection of ours can send more
                        Err(e) => {
                            accepting = false;
                            let idle = e.kind() == io::ErrorKind::WouldBlock;
                            if idle {
                                log::debug!("tiny_http's accept timed out (no connection for --idle-timeout)");
                            } else {
                                log::error!("tiny_http stopped accepting connections: {e}");
                            }
                            let _ = stopped.send((generation, idle));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the {name}-{generation} thread: {e}"))?;
        Ok(())
    }
}

/// Wait for a server to stop accepting (an error it reported, or a panic on a tiny_http
/// thread), then start the next one, once descriptors are below 90 % of the limit again
/// (`--idle-timeout` closes idle connections meanwhile), so it does not die at once too.
fn supervise(
    listener: TcpListener,
    generation_of: Generation,
    stops: Receiver<(u64, bool)>,
    (restarts, idle_replacements): (Arc<AtomicU64>, Arc<AtomicU64>),
) {
    let mut panics_seen = TINY_HTTP_PANICS.load(Relaxed);
    let mut generation = 0;
    loop {
        // BLOCKS: until a server reports its accept thread stopped, or a quarter second
        // passes (to look for a panic on a tiny_http thread).
        let report = stops.recv_timeout(Duration::from_millis(250)).ok();
        let panics = TINY_HTTP_PANICS.load(Relaxed);
        if report.is_none() && panics == panics_seen {
            continue;
        }
        panics_seen = panics;
        let routine = report.is_some_and(|(_, idle)| idle);
        generation += 1;
        loop {
            let capacity = crate::limits::capacity();
            while capacity.fds_fresh() * 10 > capacity.fd_limit * 9 {
                // BLOCKS: sleeps until descriptors have been given back.
                thread::sleep(Duration::from_millis(100));
            }
            match generation_of.serve(&listener, generation) {
                Ok(()) => break,
                Err(e) => log::error!("{e}; trying again"),
            }
            // BLOCKS: a pause before trying again.
            thread::sleep(Duration::from_millis(100));
        }
        if routine {
            idle_replacements.fetch_add(1, Relaxed);
            log::debug!("a new tiny_http server (generation {generation}) accepts connections");
        } else {
            restarts.fetch_add(1, Relaxed);
            log::warn!("a new tiny_http server (generation {generation}) accepts connections");
        }
    }
}

/// Count panics on unnamed threads (tiny_http's), then let the usual hook print them.
fn watch_for_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current().name().is_none() {
                TINY_HTTP_PANICS.fetch_add(1, Relaxed);
            }
            previous(info);
        }));
    });
}

/// Workaround 1. tiny_http's connection pool decides between "wake an idle pool thread" and
/// "start a new one" by a count of idle threads that is stale for a moment after a wake-up.
/// Connections accepted in that moment all go to the one waking thread, and the others wait
/// in a queue until some pool thread finishes its connection. A keep-alive connection (every
/// browser's) or a stream finishes only when its client leaves, so a queued connection can
/// wait for minutes, its request unread.
///
/// Each connection a pool thread finishes lets it take one from the queue. So the pump sends
/// a tiny request (`GET /pump`, answered by the accept loop itself, unlogged) every quarter
/// second. When the answer comes at once, nothing is queued. When it does not, the pump's
/// request is itself stuck in the queue: the pump opens another connection right away, and
/// another, until one is answered; each one lets a queued connection through.
///
/// The pump rests while no request has come for 10 s: a connection can only be stuck behind
/// others that are busy, and each probe wakes a waiting pool thread, which (measured here)
/// keeps tiny_http's idle threads from ever timing out after a flood. At rest they go within
/// seconds, and the process's thread count returns to its baseline.
pub fn spawn_pump(addr: SocketAddr, name: &str) -> io::Result<()> {
    thread::Builder::new()
        .name(name.into())
        .spawn(move || pump(addr))?;
    Ok(())
}

fn pump(addr: SocketAddr) {
    let mut unanswered: Vec<(TcpStream, Instant)> = Vec::new();
    loop {
        // Probes count against the process's own descriptors: give up on old ones (the port
        // may not be served at all for a while: see `Requests`).
        unanswered.retain(|(socket, sent)| !answered(socket) && sent.elapsed().as_secs() < 5);
        if unanswered.is_empty() && !recently_busy() {
            // BLOCKS: sleeps a quarter second; the lab is idle, nothing can be stuck.
            thread::sleep(Duration::from_millis(250));
            continue;
        }
        // Stuck: a probe unanswered for 100 ms is queued behind busy pool threads. (A probe
        // merely slow to answer is not: probing again at once would wake a pool thread every
        // few milliseconds, and idle pool threads, woken, never time out.)
        let stuck = unanswered
            .iter()
            .any(|(_, sent)| sent.elapsed() > Duration::from_millis(100));
        if (unanswered.is_empty() || stuck)
            && unanswered.len() < 256
            && crate::limits::capacity().near_limit().is_none()
        {
            if let Ok(mut socket) = TcpStream::connect(addr) {
                if socket.write_all(b"GET /pump HTTP/1.0\r\n\r\n").is_ok() {
                    unanswered.push((socket, Instant::now()));
                }
            }
        }
        let pause = match (unanswered.is_empty(), stuck) {
            (_, true) => 2,
            (true, false) => 250,
            (false, false) => 10,
        };
        // BLOCKS: sleeps a quarter second between probes (2 ms while one is stuck).
        thread::sleep(Duration::from_millis(pause));
    }
}

/// When the last request (not a probe) came, in ms since `START`.
static LAST_REQUEST_MS: AtomicU64 = AtomicU64::new(0);
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn ms_since_start() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The accept loop tells the pump a request came.
pub fn note_request() {
    LAST_REQUEST_MS.store(ms_since_start(), Relaxed);
}

fn recently_busy() -> bool {
    ms_since_start().saturating_sub(LAST_REQUEST_MS.load(Relaxed)) < 10_000
}

/// Has the lab answered (or closed) this pump connection?
fn answered(socket: &TcpStream) -> bool {
    let _ = socket.set_nonblocking(true);
    let mut byte = [0u8; 1];
    !matches!(socket.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The pump's probe, answered on the accept thread: no handler thread, no log, no count.
pub fn is_pump_probe(request: &Request) -> bool {
    request.url() == "/pump"
}

/// Answer the pump's probe.
pub fn answer_pump(request: Request) {
    let _ = request
        .into_writer()
        .write_all(b"HTTP/1.0 204 No Content\r\n\r\n");
}
