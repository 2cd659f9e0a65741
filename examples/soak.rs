//! A soak with churn: clients of four techniques (long poll, fetch stream, SSE, WebSocket)
//! hold on for minutes while events flow, and keep leaving and coming back. Each second a
//! share of them (`--churn`, 2 %) drops, by a clean close, a reset, or a reset with a request
//! left half-answered, and comes back at once with its cursor; once a minute a burst of
//! connections (`--burst`) opens and resets at once. Every client checks that across all its
//! visits it got every event after its first cursor, once and in order. The lab's threads,
//! descriptors and memory are sampled all along, and again after the clients leave. It prints
//! figures; it never passes or fails.
//!
//! ```text
//! cargo run --release --example soak -- --minutes 12 --clients 2000 --rate 20
//! cargo run --release --example soak -- --minutes 4 --clients 2000 --queue   # the waiting room
//! ```
//!
//! The lab runs as a child process of this binary, with this binary's allocator (REFERENCE.md,
//! Appendix A, "Memory that stays level").

mod common;

use common::ChildLab;
use reverse_ajax_lab::client::{self, KeepAlive, Stream};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KINDS: [&str; 4] = ["long-poll", "ndjson", "sse", "websocket"];

/// How a visit ends.
#[derive(Clone, Copy)]
enum Leaving {
    /// A clean close (FIN; a WebSocket's close frame first).
    Close,
    /// A reset, as a phone that loses its network or a killed tab.
    Reset,
    /// A reset, then one more request sent and reset before its answer is read.
    Abandon,
}

/// What every client counts, summed.
#[derive(Default)]
struct Counts {
    delivered: AtomicU64,
    visits: AtomicU64,
    resets: AtomicU64,
    abandoned: AtomicU64,
    faults: AtomicU64,
    burst: AtomicU64,
}

fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |name: &str, default: u64| {
        let at = args.iter().position(|a| a == name);
        at.and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // `--seconds N` instead of minutes: the test command's smoke run (tests/lab/benchmarks.rs).
    let length = match args.iter().any(|a| a == "--seconds") {
        true => Duration::from_secs(number("--seconds", 10)),
        false => Duration::from_secs(number("--minutes", 2) * 60),
    };
    let clients = number("--clients", 200);
    let rate = number("--rate", 20).max(1);
    let churn = number("--churn", 2).clamp(1, 100);
    let burst = number("--burst", 300);
    // `--queue`: every long poll, stream and WebSocket in the waiting room (`--parking queue`).
    let queue = args.iter().any(|a| a == "--queue");
    let parking = if queue { "queue" } else { "thread" };
    let lab = ChildLab::start(&["--heartbeat", "2", "--parking", parking]);
    let addr = lab.addr;
    let ws_url = client::get(addr, "/stats").unwrap().json()["websocket"]
        .as_str()
        .unwrap()
        .to_string();
    let baseline = sample(&lab);
    println!(
        "soak: {} s, {clients} clients ({} each of {}), {rate} events/s, {churn} % leaving and coming back each second, a burst of {burst} resets a minute; --parking {parking}",
        length.as_secs(),
        clients / KINDS.len() as u64,
        KINDS.join(", ")
    );
    println!(
        "the lab at start: {} threads, {} descriptors, {} MiB resident\n",
        baseline.0, baseline.1, baseline.2
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());

    // The publisher.
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let _ = client::publish(addr, "soak");
                std::thread::sleep(Duration::from_millis(1000 / rate));
            }
        })
    };
    // The bursts: once a minute, `burst` connections ask for a stream and reset at once.
    let burster = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now() + (length / 2).min(Duration::from_secs(30));
            while !stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(60);
                let opened: Vec<TcpStream> = (0..burst)
                    .filter_map(|_| TcpStream::connect(addr).ok())
                    .collect();
                for mut socket in &opened {
                    let _ = write!(socket, "GET /events/sse HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                }
                for socket in opened {
                    reset(&socket);
                    counts.burst.fetch_add(1, Relaxed);
                }
            }
        })
    };
    // The clients: each keeps one technique and one cursor for the whole run.
    let first = latest(addr).expect("the lab answers /stats");
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, counts, ws_url) = (stop.clone(), counts.clone(), ws_url.clone());
            let kind = KINDS[i as usize % KINDS.len()];
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut owed = Owed {
                        start: first,
                        next: first + 1,
                    };
                    let mut seed = i * 2654435761 + 1;
                    while !stop.load(Relaxed) {
                        // Stay for a random time around 100 / churn seconds: `churn` % of
                        // the clients leave in any one second.
                        let mean_ms = 100_000 / churn;
                        let stay = Duration::from_millis(random(&mut seed) % (2 * mean_ms));
                        let leaving = match random(&mut seed) % 3 {
                            0 => Leaving::Close,
                            1 => Leaving::Reset,
                            _ => Leaving::Abandon,
                        };
                        let until = (Instant::now() + stay).min(Instant::now() + length);
                        let visit = visit(addr, &ws_url, kind, &mut owed, until, &stop, leaving);
                        counts.visits.fetch_add(1, Relaxed);
                        if !matches!(leaving, Leaving::Close) {
                            counts.resets.fetch_add(1, Relaxed);
                        }
                        if matches!(leaving, Leaving::Abandon) {
                            counts.abandoned.fetch_add(1, Relaxed);
                        }
                        if let Err(e) = visit {
                            counts.faults.fetch_add(1, Relaxed);
                            eprintln!("{kind}: {e}");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                    }
                    counts
                        .delivered
                        .fetch_add(owed.next - 1 - owed.start, Relaxed);
                })
                .expect("a client thread")
        })
        .collect();
    // Sample the lab every 10 s.
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(10).min(length));
        samples.push(sample(&lab));
    }
    stop.store(true, Relaxed);
    let _ = publisher.join();
    let _ = burster.join();
    for worker in workers {
        let _ = worker.join();
    }
    // The clients have gone: wait for the lab to see every one of them leave, and for its idle
    // connection threads to end (10 s idle).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = sample(&lab);
    while Instant::now() < deadline && (after.0 > baseline.0 + 2 || after.1 > baseline.1 + 2) {
        std::thread::sleep(Duration::from_secs(1));
        after = sample(&lab);
    }
    let s = client::get(addr, "/stats").unwrap().json();
    let c = &counts;
    println!(
        "visits {}, of which ended by a reset {} (with a request left half-answered {}); burst connections reset {}",
        c.visits.load(Relaxed),
        c.resets.load(Relaxed),
        c.abandoned.load(Relaxed),
        c.burst.load(Relaxed)
    );
    println!(
        "events owed and delivered {}, visits that lost, repeated or reordered an event {}",
        c.delivered.load(Relaxed),
        c.faults.load(Relaxed)
    );
    println!(
        "events published {}, slow consumers dropped {}, refused near limits {}",
        s["events_published"], s["slow_consumers"], s["refused_near_limits"]
    );
    let column = |i: usize| samples.iter().map(|s| [s.0, s.1, s.2][i]).collect();
    println!("threads: {}", range(column(0)));
    println!("fds:     {}", range(column(1)));
    let rss: Vec<u64> = column(2);
    println!("RSS MiB: {}", range(rss.clone()));
    let third = rss.len() / 3;
    if third > 0 {
        let first_third = *rss[..third].iter().max().unwrap_or(&0);
        let last_third = *rss[rss.len() - third..].iter().max().unwrap_or(&0);
        println!(
            "RSS MiB, largest in the first third {first_third}, in the last third {last_third}: {:+.0} %",
            (last_third as f64 / first_third.max(1) as f64 - 1.0) * 100.0
        );
    }
    println!(
        "after the clients left: {} threads, {} descriptors, {} MiB resident (at start: {}, {}, {})",
        after.0, after.1, after.2, baseline.0, baseline.1, baseline.2
    );
    // A long run waits for the lab's next `memory-trim` (every 10 s) too.
    if length >= Duration::from_secs(60) {
        std::thread::sleep(reverse_ajax_lab::memory::TRIM_EVERY + Duration::from_secs(1));
        println!("and 11 s later: {} MiB resident", sample(&lab).2);
    }
}

/// The lab's threads, descriptors and resident MiB, from /proc.
fn sample(lab: &ChildLab) -> (u64, u64, u64) {
    let pid = lab.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (field("Threads:"), fds, field("VmRSS:") / 1024)
}

fn range(v: Vec<u64>) -> String {
    let half = &v[v.len() / 2..];
    format!(
        "first {} · min {} · max {} · last {} · second half {}–{}",
        v.first().unwrap_or(&0),
        v.iter().min().unwrap_or(&0),
        v.iter().max().unwrap_or(&0),
        v.last().unwrap_or(&0),
        half.iter().min().unwrap_or(&0),
        half.iter().max().unwrap_or(&0)
    )
}

fn random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn latest(addr: SocketAddr) -> Result<u64, String> {
    let stats = client::get(addr, "/stats").map_err(|e| e.to_string())?;
    Ok(stats.json()["events_published"].as_u64().unwrap_or(0))
}

/// Close with a reset rather than a FIN: what the lab sees of a client that vanished.
fn reset(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

/// One visit: connect from the cursor, read until `until`, leave as `leaving` says. Every id
/// after the cursor must come exactly once and in order (`Owed`).
fn visit(
    addr: SocketAddr,
    ws_url: &str,
    kind: &str,
    owed: &mut Owed,
    until: Instant,
    stop: &AtomicBool,
    leaving: Leaving,
) -> Result<(), String> {
    let going = || Instant::now() >= until || stop.load(Relaxed);
    let abandon = |path: &str| {
        if let Ok(mut socket) = TcpStream::connect(addr) {
            let _ = write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            reset(&socket);
        }
    };
    match kind {
        "long-poll" => {
            let path = |since: u64| format!("/events/long-poll?since={since}&timeout=5");
            let mut connection = KeepAlive::connect(addr).map_err(|e| e.to_string())?;
            while !going() {
                let answer = connection
                    .get(&path(owed.cursor()))
                    .map_err(|e| e.to_string())?;
                for id in ids_in(&answer.body) {
                    owed.check(id)?;
                }
            }
            match leaving {
                Leaving::Close => {}
                Leaving::Reset => reset(connection.socket()),
                Leaving::Abandon => {
                    reset(connection.socket());
                    abandon(&path(owed.cursor()));
                }
            }
        }
        "ndjson" | "sse" => {
            let path = match kind {
                "sse" => format!("/events/sse?since={}", owed.cursor()),
                _ => format!("/events/stream?since={}", owed.cursor()),
            };
            let mut stream = Stream::open(addr, &path, &[]).map_err(|e| e.to_string())?;
            // A chunk may end inside a line: only whole lines are read.
            let mut text = String::new();
            while !going() {
                let chunk =
                    match stream.next_chunk(until.min(Instant::now() + Duration::from_secs(1))) {
                        Ok(Some(chunk)) => chunk,
                        Ok(None) => return Err("the stream ended".into()),
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e.to_string()),
                    };
                text.push_str(&chunk);
                let Some(end) = text.rfind('\n') else {
                    continue;
                };
                for line in text[..end].lines() {
                    let id = match kind {
                        "sse" => line.strip_prefix("id: ").and_then(|id| id.parse().ok()),
                        _ => ids_in(line).first().copied(),
                    };
                    if let Some(id) = id {
                        owed.check(id)?;
                    }
                }
                text.drain(..=end);
            }
            match leaving {
                Leaving::Close => {}
                Leaving::Reset => reset(stream.socket()),
                Leaving::Abandon => {
                    reset(stream.socket());
                    abandon(&path);
                }
            }
        }
        _ => {
            let url = format!("{ws_url}?since={}", owed.cursor());
            let (mut socket, _) = tungstenite::connect(&url).map_err(|e| e.to_string())?;
            let tcp = match socket.get_ref() {
                tungstenite::stream::MaybeTlsStream::Plain(tcp) => tcp,
                _ => return Err("not a plain socket".into()),
            };
            let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
            while !going() {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        for id in ids_in(text.as_str()) {
                            owed.check(id)?;
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            match leaving {
                Leaving::Close => {
                    let _ = socket.close(None);
                    let _ = socket.flush();
                }
                Leaving::Reset => {
                    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
                        reset(tcp);
                    }
                }
                Leaving::Abandon => {
                    if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
                        reset(tcp);
                    }
                    abandon(&format!("/events/sse?since={}", owed.cursor()));
                }
            }
        }
    }
    Ok(())
}

fn ids_in(text: &str) -> Vec<u64> {
    text.split("\"id\":")
        .skip(1)
        .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// The ids a client is owed: every one after its first cursor, once, in order, across visits.
struct Owed {
    start: u64,
    next: u64,
}

impl Owed {
    /// Where the next visit starts: the last id received.
    fn cursor(&self) -> u64 {
        self.next - 1
    }

    fn check(&mut self, id: u64) -> Result<(), String> {
        if id != self.next {
            let (next, start) = (self.next, self.start);
            return Err(format!(
                "expected event {next}, got {id} (first cursor {start})"
            ));
        }
        self.next += 1;
        Ok(())
    }
}
