//! A soak: clients of every technique join and leave for minutes while events flow. Each
//! client checks it got every event it was owed (every id after its cursor, once, in order,
//! until it left), and the lab's threads, descriptors and memory are sampled all along. It
//! prints figures; it never passes or fails.
//!
//! ```text
//! cargo run --release --example soak -- --minutes 10 --clients 60 --rate 20
//! ```

mod common;

use common::ChildLab;
use reverse_ajax_lab::client::{self, KeepAlive, Stream};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KINDS: [&str; 5] = ["poll", "long-poll", "ndjson", "sse", "websocket"];

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
    let minutes = number("--minutes", 2);
    // `--seconds N` instead of minutes: the test command's smoke run (tests/benchmarks.rs).
    let length = match args.iter().any(|a| a == "--seconds") {
        true => Duration::from_secs(number("--seconds", 10)),
        false => Duration::from_secs(minutes * 60),
    };
    let clients = number("--clients", 60);
    let rate = number("--rate", 20).max(1);
    let lab = ChildLab::start(&["--heartbeat", "2"]);
    let addr = lab.addr;
    let ws_url = client::get(addr, "/stats").unwrap().json()["websocket"]
        .as_str()
        .unwrap()
        .to_string();
    println!(
        "soak: {} s, {clients} clients joining and leaving, {rate} events/s\n",
        length.as_secs()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sessions = Arc::new(AtomicU64::new(0));
    let owed = Arc::new(AtomicU64::new(0));
    let faults = Arc::new(AtomicU64::new(0));

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
    // The clients: each joins with a technique, stays 1–10 s, checks, leaves, and again.
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (stop, sessions, owed, faults) =
                (stop.clone(), sessions.clone(), owed.clone(), faults.clone());
            let ws_url = ws_url.clone();
            std::thread::spawn(move || {
                let mut seed = i * 2654435761 + 1;
                while !stop.load(Relaxed) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let kind = KINDS[(seed % KINDS.len() as u64) as usize];
                    let stay = Duration::from_millis(1000 + seed % 9000);
                    match session(addr, &ws_url, kind, stay) {
                        Ok(n) => {
                            sessions.fetch_add(1, Relaxed);
                            owed.fetch_add(n, Relaxed);
                        }
                        Err(e) => {
                            faults.fetch_add(1, Relaxed);
                            eprintln!("{kind}: {e}");
                        }
                    }
                }
            })
        })
        .collect();
    // Sample the lab every 10 s.
    let started = Instant::now();
    let (mut threads, mut fds, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(10));
        let pid = lab.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        threads.push(field("Threads:"));
        rss.push(field("VmRSS:") / 1024);
        fds.push(std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64));
    }
    stop.store(true, Relaxed);
    let _ = publisher.join();
    for worker in workers {
        let _ = worker.join();
    }
    let range = |v: &[u64]| {
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
    };
    let s = client::get(addr, "/stats").unwrap().json();
    println!("sessions {}, events owed and delivered {}, sessions that lost, repeated or reordered an event {}", sessions.load(Relaxed), owed.load(Relaxed), faults.load(Relaxed));
    println!(
        "events published {}, slow consumers dropped {}, refused near limits {}",
        s["events_published"], s["slow_consumers"], s["refused_near_limits"]
    );
    println!("threads: {}", range(&threads));
    println!("fds:     {}", range(&fds));
    println!("RSS MiB: {}", range(&rss));
}

/// One client's visit: join at the newest id, read for `stay`, leave. Every id after the
/// cursor must come exactly once and in order; returns how many came.
fn session(addr: SocketAddr, ws_url: &str, kind: &str, stay: Duration) -> Result<u64, String> {
    let start = client::get(addr, "/stats")
        .map_err(|e| e.to_string())?
        .json()["events_published"]
        .as_u64()
        .unwrap_or(0);
    let until = Instant::now() + stay;
    let mut owed = Owed {
        start,
        next: start + 1,
    };
    let ids_in = |text: &str| -> Vec<u64> {
        text.split("\"id\":")
            .skip(1)
            .filter_map(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect()
    };
    match kind {
        "poll" | "long-poll" => {
            let mut connection = KeepAlive::connect(addr).map_err(|e| e.to_string())?;
            while Instant::now() < until {
                let path = if kind == "poll" {
                    format!("/events/poll?since={}", owed.next - 1)
                } else {
                    format!("/events/long-poll?since={}&timeout=5", owed.next - 1)
                };
                let answer = connection.get(&path).map_err(|e| e.to_string())?;
                for id in ids_in(&answer.body) {
                    owed.check(id)?;
                }
                if kind == "poll" {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        "ndjson" | "sse" => {
            let path = if kind == "sse" {
                "/events/sse"
            } else {
                "/events/stream"
            };
            let mut stream = Stream::open(addr, &format!("{path}?since={start}"), &[])
                .map_err(|e| e.to_string())?;
            let mut text = String::new();
            while Instant::now() < until {
                match stream.next_chunk(until) {
                    Ok(Some(chunk)) => text.push_str(&chunk),
                    _ => break,
                }
            }
            if kind == "sse" {
                for line in text.lines().filter_map(|l| l.strip_prefix("id: ")) {
                    owed.check(line.parse().map_err(|_| "a bad id line".to_string())?)?;
                }
            } else {
                for id in ids_in(&text) {
                    owed.check(id)?;
                }
            }
        }
        _ => {
            let (mut socket, _) = tungstenite::connect(format!("{ws_url}?since={start}"))
                .map_err(|e| e.to_string())?;
            if let tungstenite::stream::MaybeTlsStream::Plain(tcp) = socket.get_ref() {
                let _ = tcp.set_read_timeout(Some(Duration::from_millis(200)));
            }
            while Instant::now() < until {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        for id in ids_in(text.as_str()) {
                            owed.check(id)?;
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let _ = socket.close(None);
        }
    }
    Ok(owed.next - 1 - start)
}

/// The ids a client is owed: every one after its cursor, once, in order.
struct Owed {
    start: u64,
    next: u64,
}

impl Owed {
    fn check(&mut self, id: u64) -> Result<(), String> {
        if id != self.next {
            let (next, start) = (self.next, self.start);
            return Err(format!("expected event {next}, got {id} (cursor {start})"));
        }
        self.next += 1;
        Ok(())
    }
}
