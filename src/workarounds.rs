//! Workarounds for two tiny_http 0.12 bugs and one crossbeam-channel habit, kept here, away
//! from the path a student reads first (`server` and `hub` call them and move on). Each is
//! reproduced by a test named below; if a later version fixes one, that test tells, and its
//! workaround can go.
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
//!    has. A panic is told from a panic on the other listener's threads by the Linux thread
//!    name tiny_http's threads inherit (`http-tiny-3`), so only the port that lost its accept
//!    thread gets a new server. Test: `the_lab_recovers_when_tiny_http_stops_accepting`
//!    (tests/limits.rs).
//!
//!    The same happens, harmlessly, whenever no connection arrives for `--idle-timeout`: the
//!    read timeout set on the listener (so that accepted sockets inherit it) also bounds
//!    `accept` itself on Linux, and tiny_http takes the "would block" for a failure. So that
//!    ending is routine here: a new server takes over at once, and the old one's thread ends
//!    once its connections can send nothing more (test:
//!    `an_idle_lab_keeps_serving_after_its_accept_times_out`).
//!
//!    While descriptors are short and no tiny_http server accepts, the supervisor keeps
//!    **the door** (`door`): it accepts the waiting connections itself with a descriptor
//!    kept spare, answers `/stats` and the pages, and refuses the rest with 503.
//!
//!    The thread that passes a server's requests on also sorts them into two lanes (`Lanes`),
//!    so that under a flood of requests for events `/stats` and the pages still go first.
//! 3. **The receive that spins before it sleeps** (`recv_deadline`): crossbeam's `recv` calls
//!    `sched_yield` a few times before sleeping, a context switch each when threads are many.
//!    Test: `crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not` (below).
//! 4. **The parked request that cannot see its client leave** (`departures`): tiny_http
//!    reads the FIN but cannot tell the handler; a thread reads the kernel's connection table
//!    and wakes parked long polls whose client closed.
//!    Test: `a_client_that_hangs_up_is_released_long_before_its_deadline` (tests/long_polling.rs).

use crossbeam_channel::{unbounded, Receiver, Sender};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::Request;

mod departures;
mod door;
pub use departures::{Departures, Watch};
pub use door::{Answer, DoorCounts, Knock};

/// Panics seen on tiny_http's threads (the only threads without a Rust name in this process:
/// every thread the lab starts has one), by listener (`http`, `other`): the part of the
/// thread's Linux name before `-tiny-`, which tiny_http's threads inherit from the thread that
/// started their server (`Generation::serve`).
static TINY_HTTP_PANICS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Panics seen on the tiny_http threads of listener `name`.
fn tiny_http_panics(name: &str) -> u64 {
    let panics = TINY_HTTP_PANICS.lock().unwrap_or_else(|e| e.into_inner());
    panics.get(name).copied().unwrap_or(0)
}

/// Every request that any generation of tiny_http server reads, in two lanes (`Lanes`).
pub struct Requests {
    /// Pages, `/stats`, publishing: whatever is answered at once.
    pages: Receiver<Request>,
    /// Requests for events (the ones that may be held).
    events: Receiver<Request>,
    /// Where every server (on every listener) sends what it reads.
    lanes: Lanes,
    idle_timeout: Duration,
    /// Routine replacements: `accept` timed out after `--idle-timeout` with no connection.
    pub idle_replacements: Arc<AtomicU64>,
    /// How many times tiny_http's accept thread died and a new server took over.
    pub restarts: Arc<AtomicU64>,
    /// What the door answers while tiny_http cannot accept (`answer_at_the_door`).
    answers: door::Answers,
    /// What the door did.
    pub door: Arc<DoorCounts>,
}

/// The two lanes from tiny_http's threads to the accept loop. Under a flood of requests for
/// events (thousands of long polls or streams at once) the accept loop falls behind, and in
/// one first-come queue a request for `/stats` or a page waited behind all of them (2–5 s,
/// measured with `flood`). So requests that are answered at once take their own lane, which
/// the accept loop empties first.
///
/// Both lanes are unbounded, like the queue inside tiny_http that they take over from (before
/// them, a bounded channel here only moved the waiting into tiny_http's queue). What waits in
/// them is what clients have sent and the accept loop has not yet taken: one request per
/// connection, or a few more from a client that pipelines, and connections are bounded by the
/// descriptor limit (`limits`). (Refusing requests for events once 1,024 waited was tried:
/// `/stats` answered as fast, but the lab's thread peak rose from 13,100–13,600 to
/// 15,200–15,700 of the ~16,380 it may have, in four floods of 12,000 long polls.)
#[derive(Clone)]
struct Lanes {
    pages: Sender<Request>,
    events: Sender<Request>,
}

impl Lanes {
    /// The lanes, and their receiving ends: pages, then requests for events.
    fn new() -> (Lanes, Receiver<Request>, Receiver<Request>) {
        let (pages, pages_rx) = unbounded();
        let (events, events_rx) = unbounded();
        (Lanes { pages, events }, pages_rx, events_rx)
    }

    /// Put the request in its lane (never blocks); `false` once the accept loop is gone.
    fn hand_on(&self, request: Request) -> bool {
        let lane = match crate::http::asks_for_events(request.url()) {
            true => &self.events,
            false => &self.pages,
        };
        lane.send(request).is_ok()
    }
}

impl Requests {
    /// Start tiny_http on `listener`, and the supervisor that replaces it when it stops
    /// accepting.
    pub fn start(listener: TcpListener, idle_timeout: Duration) -> Result<Requests, String> {
        watch_for_panics();
        let (lanes, pages, events) = Lanes::new();
        let requests = Requests {
            pages,
            events,
            lanes,
            idle_timeout,
            idle_replacements: Arc::new(AtomicU64::new(0)),
            restarts: Arc::new(AtomicU64::new(0)),
            answers: Arc::default(),
            door: Arc::default(),
        };
        requests.also_serve(listener, "http")?;
        Ok(requests)
    }

    /// Serve one more listening socket into the same channel (the "other origin" port), with
    /// its own servers (threads `NAME-N`) and supervisor.
    pub fn also_serve(&self, listener: TcpListener, name: &'static str) -> Result<(), String> {
        let (stopped, stops) = unbounded();
        let generation = Generation {
            lanes: self.lanes.clone(),
            stopped,
            idle_timeout: self.idle_timeout,
            name,
        };
        generation.serve(&listener, 0)?;
        let counts = (self.restarts.clone(), self.idle_replacements.clone());
        let door = door::Door::new(self.answers.clone(), self.door.clone());
        thread::Builder::new()
            .name(format!("{name}-supervisor"))
            .spawn(move || supervise(listener, generation, stops, counts, door))
            .map_err(|e| format!("cannot start the supervisor thread: {e}"))?;
        Ok(())
    }

    /// What the lab answers at the door (until this is called, the door refuses everything).
    pub fn answer_at_the_door(
        &self,
        answer: impl Fn(&Knock) -> Option<Answer> + Send + Sync + 'static,
    ) {
        let _ = self.answers.set(Box::new(answer));
    }

    /// The next request, from whichever server read it: a page before any request for events.
    pub fn recv(&self) -> Option<Request> {
        take_next(&self.pages, &self.events)
    }
}

/// The next request for the accept loop: any page first, then a request for events.
fn take_next(pages: &Receiver<Request>, events: &Receiver<Request>) -> Option<Request> {
    if let Ok(page) = pages.try_recv() {
        return Some(page);
    }
    // BLOCKS: until some tiny_http connection thread has read a whole request head.
    crossbeam_channel::select_biased! {
        recv(pages) -> page => page.ok(),
        recv(events) -> request => request.ok(),
    }
}

/// What `Generation::last_word` adds to the idle timeout.
const LAST_WORD_MARGIN: Duration = Duration::from_secs(5);

/// How one generation of tiny_http server hands on its requests and reports its end.
struct Generation {
    lanes: Lanes,
    /// (generation, was it the routine idle timeout?)
    stopped: Sender<(u64, bool)>,
    /// tiny_http closes a connection that sends nothing for this long (`--idle-timeout`):
    /// after its accept thread ends, an old server whose connections have all been silent
    /// that long can read nothing more.
    idle_timeout: Duration,
    /// Its threads' names start with this (`http`, `other`).
    name: &'static str,
}

impl Generation {
    /// When connections silent since `since` can send no more: tiny_http closes them after
    /// `idle_timeout` without a byte, and the margin covers a head read in that moment.
    /// Before this, an old server's thread (and the five of tiny_http's that end with it)
    /// lingered a fixed 35 s after every idle replacement, and an idle lab never held still
    /// (LESSONS.md chapter 13). Two clients outlast it and go unheard: one that trickles a
    /// byte of its head per `--idle-timeout` (a real server bounds the time a whole head may
    /// take), and one whose request had a body and was held, and who then waits longer than
    /// the rest of the idle timeout before its next request on that connection (tiny_http
    /// reads such a connection again only after the answer; the lab's one held request
    /// with a body, Bayeux's connect, is followed at once by the next).
    fn last_word(since: Instant, idle_timeout: Duration) -> Instant {
        since + idle_timeout + LAST_WORD_MARGIN
    }

    /// One tiny_http server on a copy of the listening socket, and a thread (`http-N`) that
    /// passes its requests on. When its accept thread ends, it reports on `stopped` and keeps
    /// passing on what its live connections still send, until none of them can send more
    /// (`Generation::last_word`).
    fn serve(&self, listener: &TcpListener, generation: u64) -> Result<(), String> {
        let copy = listener
            .try_clone()
            .map_err(|e| format!("cannot copy the listening socket: {e}"))?;
        // tiny_http's threads have no name of their own: Linux gives a new thread its
        // creator's, so they are started from a thread named for them (`http-tiny-3`), and
        // `/proc` (and `flood`) can tell whose they are.
        let server = thread::Builder::new()
            .name(format!("{}-tiny-{generation}", self.name))
            .spawn(move || tiny_http::Server::from_listener(copy, None).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot start the HTTP server's thread: {e}"))?
            // BLOCKS: until tiny_http has started its accept thread (a moment).
            .join()
            .map_err(|_| "tiny_http panicked while starting".to_string())?
            .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        let (lanes, stopped) = (self.lanes.clone(), self.stopped.clone());
        let (idle_timeout, name) = (self.idle_timeout, self.name);
        thread::Builder::new()
            .name(format!("{name}-{generation}"))
            .spawn(move || {
                let mut last_request = Instant::now();
                // Once the accept thread has ended: when the last connection can send no more.
                let mut last_word: Option<Instant> = None;
                loop {
                    // BLOCKS: until this server has a request or its accept thread ended
                    // (after that: or until `last_word`).
                    let next = match last_word {
                        None => server.recv().map(Some),
                        Some(at) => server.recv_timeout(at.saturating_duration_since(Instant::now())),
                    };
                    match next {
                        Ok(Some(request)) => {
                            last_request = Instant::now();
                            if let Some(at) = last_word.as_mut() {
                                *at = (*at).max(Generation::last_word(last_request, idle_timeout));
                            }
                            if !lanes.hand_on(request) {
                                return;
                            }
                        }
                        Ok(None) => return, // no connection of ours can send more
                        Err(e) => {
                            let idle = e.kind() == io::ErrorKind::WouldBlock;
                            if idle {
                                log::debug!("tiny_http's accept timed out (no connection for --idle-timeout)");
                            } else {
                                log::error!("tiny_http stopped accepting connections: {e}");
                            }
                            // An idle ending accepted nothing for `idle_timeout`: its
                            // connections are older, and silent since `last_request` at the
                            // latest. A failing accept may have just accepted one.
                            let silent_since = if idle { last_request } else { Instant::now() };
                            last_word = Some(
                                Generation::last_word(silent_since, idle_timeout)
                                    .max(Instant::now() + LAST_WORD_MARGIN),
                            );
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
/// Until then, keep the door.
fn supervise(
    listener: TcpListener,
    generation_of: Generation,
    stops: Receiver<(u64, bool)>,
    (restarts, idle_replacements): (Arc<AtomicU64>, Arc<AtomicU64>),
    mut door: door::Door,
) {
    let name = generation_of.name;
    let mut panics_seen = tiny_http_panics(name);
    let mut generation = 0;
    loop {
        // BLOCKS: until a server reports its accept thread stopped, or a quarter second
        // passes (to look for a panic on a tiny_http thread).
        let report = stops.recv_timeout(Duration::from_millis(250)).ok();
        // An older generation's accept ending changes nothing: a newer one accepts. (Were
        // it replaced anyway, each of the two would be replaced at its own idle timeout,
        // and the listener would keep two servers for good: measured, ten `other-tiny`
        // threads instead of five after a flood whose panic was counted for both ports.)
        let report = report.filter(|&(stopped, _)| stopped == generation);
        let panics = tiny_http_panics(name);
        if report.is_none() && panics == panics_seen {
            continue;
        }
        panics_seen = panics;
        let mut routine = report.is_some_and(|(_, idle)| idle);
        generation += 1;
        loop {
            let capacity = crate::limits::capacity();
            // BLOCKS: answers at the door until descriptors have been given back.
            door.keep_while(&listener, || {
                capacity.fds_fresh() * 10 > capacity.fd_limit * 9
            });
            match generation_of.serve(&listener, generation) {
                Ok(()) => break,
                Err(e) => {
                    // (A routine replacement that cannot start, say for want of a descriptor
                    // to copy the listening socket into, is no longer routine.)
                    routine = false;
                    log::error!("{e}; trying again");
                }
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
                let listener = linux_thread_name()
                    .and_then(|n| n.split_once("-tiny-").map(|(l, _)| l.to_string()))
                    .unwrap_or_default();
                let mut panics = TINY_HTTP_PANICS.lock().unwrap_or_else(|e| e.into_inner());
                *panics.entry(listener).or_default() += 1;
            }
            previous(info);
        }));
    });
}

/// This thread's Linux name (what `/proc/self/task/N/comm` shows), asked of the kernel
/// directly: a panic at the descriptor limit cannot open a file to read it.
fn linux_thread_name() -> Option<String> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into the buffer.
    let ok = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0;
    let end = name.iter().position(|&b| b == 0)?;
    ok.then(|| String::from_utf8_lossy(&name[..end]).into_owned())
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

/// Workaround 3. crossbeam's `recv`, `recv_timeout` and `recv_deadline` do not sleep at once
/// on an empty channel: they spin, then call `sched_yield` four times, in case a message is
/// about to come. With a few threads that is cheap; with a thousand parked long polls woken by
/// one event on two cores, every handler that finishes yields four times on its way back to
/// sleep, each yield a context switch while others wait to run. `perf record -e
/// sched:sched_switch` on the lab during `latency long-poll 1000` counted 146,000 switches in
/// 4 s, 96,000 of them these yields (a quarter of the lab's CPU). crossbeam's `Select` registers and
/// sleeps with no spin, so this waits through `Select`: the switches halved, and long poll's
/// p50 / p99 went from 42 / 88 to 35 / 71 ms (medians of three interleaved runs; CPU 58 → 49 %).
/// Test: `crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not` (below).
///
/// Receive from `rx`, or `Err` at `deadline` (or when every sender is gone), going to sleep at
/// once when the channel is empty.
pub fn recv_deadline<T>(
    rx: &Receiver<T>,
    deadline: Instant,
) -> Result<T, crossbeam_channel::RecvTimeoutError> {
    let mut select = crossbeam_channel::Select::new();
    select.recv(rx);
    // BLOCKS: until a message (or the senders' end) or the deadline.
    match select.select_deadline(deadline) {
        Ok(operation) => operation
            .recv(rx)
            .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        Err(_) => Err(crossbeam_channel::RecvTimeoutError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::atomic::AtomicBool;

    /// tiny_http's threads have no Rust name, and inherit the Linux name of the thread that
    /// started their server: a panic on one is counted for that listener, and no other.
    #[test]
    fn a_panic_on_a_tiny_http_thread_is_counted_for_its_listener_only() {
        watch_for_panics();
        let before = tiny_http_panics("unit");
        let inner = thread::Builder::new()
            .name("unit-tiny-0".into())
            .spawn(|| {
                assert_eq!(linux_thread_name().as_deref(), Some("unit-tiny-0"));
                // As tiny_http starts its accept thread: unnamed.
                thread::spawn(|| panic!("(expected) as tiny_http's accept thread, at the limit"))
                    .join()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(inner.is_err(), "it panicked");
        assert_eq!(tiny_http_panics("unit"), before + 1);
        assert_eq!(tiny_http_panics("other-unit"), 0);
    }

    /// Pin the calling thread to `cpu`.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls get its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    /// The first CPU this process may run on.
    fn some_cpu() -> usize {
        // SAFETY: as above.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize)
                .find(|&cpu| libc::CPU_ISSET(cpu, &set))
                .unwrap_or(0)
        }
    }

    /// This thread's involuntary context switches so far (a `sched_yield` that let another
    /// thread run counts as one; going to sleep counts as voluntary).
    fn involuntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .map(|n| n.trim().parse().unwrap())
            .unwrap()
    }

    /// Twenty 2 ms waits on an empty channel, on a CPU shared with a busy thread: how many
    /// times did the waiting thread give the CPU away without going to sleep?
    fn yields_while_waiting(wait: fn(&Receiver<()>)) -> u64 {
        let cpu = some_cpu();
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            thread::spawn(move || {
                pin(cpu);
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let waiter = thread::spawn(move || {
            pin(cpu);
            let (_tx, rx) = bounded::<()>(1);
            let before = involuntary_switches();
            for _ in 0..20 {
                wait(&rx);
            }
            involuntary_switches() - before
        });
        let switches = waiter.join();
        stop.store(true, Relaxed);
        busy.join().unwrap();
        switches.unwrap()
    }

    #[test]
    fn crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not() {
        let theirs = yields_while_waiting(|rx| {
            let _ = rx.recv_timeout(Duration::from_millis(2));
        });
        let ours = yields_while_waiting(|rx| {
            let _ = recv_deadline(rx, Instant::now() + Duration::from_millis(2));
        });
        // If a later crossbeam sleeps at once, the first figure drops, and this workaround
        // can go.
        assert!(
            theirs >= 10,
            "crossbeam's recv gave way {theirs} times in 20 waits"
        );
        assert!(
            ours * 4 < theirs,
            "recv_deadline gave way {ours} times, crossbeam's {theirs}"
        );
    }

    /// A real request read by tiny_http from a real socket, and the client's end.
    fn request(server: &tiny_http::Server, path: &str) -> (Request, TcpStream) {
        let mut client = TcpStream::connect(server.server_addr().to_ip().unwrap()).unwrap();
        write!(client, "GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
        let request = server.recv_timeout(Duration::from_secs(10)).unwrap();
        (request.expect("a request within 10 s"), client)
    }

    #[test]
    fn a_page_goes_ahead_of_requests_for_events() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let (lanes, pages, events) = Lanes::new();
        let (first, _c1) = request(&server, "/events/long-poll");
        let (second, _c2) = request(&server, "/socket.io/?EIO=4&transport=polling");
        let (page, _c3) = request(&server, "/stats");
        for request in [first, second, page] {
            assert!(lanes.hand_on(request));
        }
        // The page came last and goes first; the others keep their order.
        assert_eq!(take_next(&pages, &events).unwrap().url(), "/stats");
        assert_eq!(
            take_next(&pages, &events).unwrap().url(),
            "/events/long-poll"
        );
        let last = take_next(&pages, &events).unwrap();
        assert!(last.url().starts_with("/socket.io/"));
    }
}
