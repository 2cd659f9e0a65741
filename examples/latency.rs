//! Publish→delivery latency for N clients of one technique, in one process, over real sockets.
//!
//! ```text
//! cargo run --release --example latency -- long-poll 1      # one client
//! cargo run --release --example latency -- long-poll 1000   # a thousand
//! cargo run --release --example latency -- sse 1000 --events 100
//! cargo run --release --example latency -- long-poll 1000 --queue   # --parking queue
//! ```
//!
//! The lab runs in-process with the generator off. Each client is a thread speaking HTTP over
//! loopback; the benchmark publishes events straight into the hub, each carrying the
//! nanoseconds since the start, so every client can measure how long the event took to reach
//! it. It prints figures; it does not pass or fail.

use reverse_ajax_lab::client;
use reverse_ajax_lab::{Config, RunningLab};
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const TECHNIQUES: &str = "long-poll stream sse ws";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let technique = args
        .first()
        .map(String::as_str)
        .unwrap_or("long-poll")
        .to_string();
    let clients: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let events: u64 = flag(&args, "--events").unwrap_or(50);
    let gap_ms: u64 = flag(&args, "--gap-ms").unwrap_or(if clients > 100 { 100 } else { 20 });
    if !TECHNIQUES.split(' ').any(|t| t == technique) {
        eprintln!(
            "usage: latency TECHNIQUE CLIENTS [--events N] [--gap-ms MS]; TECHNIQUE: {TECHNIQUES}"
        );
        std::process::exit(2);
    }

    let lab = RunningLab::start(Config {
        addr: "127.0.0.1:0".into(),
        generator: None,
        max_parked: clients + 100,
        buffer: 1024,
        parking: if args.iter().any(|a| a == "--queue") {
            reverse_ajax_lab::ParkingMode::Queue
        } else {
            reverse_ajax_lab::ParkingMode::Thread
        },
        ..Config::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = lab.addr();
    let start = Instant::now();
    let ready = Arc::new(Barrier::new(clients + 1));
    let ws_url = format!("{}?since=0", lab.lab.websocket_url);

    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let ready = ready.clone();
            let technique = technique.clone();
            let ws_url = ws_url.clone();
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || match technique.as_str() {
                    "long-poll" => long_poll_client(addr, start, events, &ready),
                    "stream" => {
                        stream_client(addr, "/events/stream?since=0", start, events, &ready)
                    }
                    "sse" => stream_client(addr, "/events/sse?since=0", start, events, &ready),
                    "ws" => websocket_client(&ws_url, start, events, &ready),
                    _ => unreachable!(),
                })
                .expect("a client thread")
        })
        .collect();
    ready.wait();
    wait_for_subscribers(&lab, clients);

    let hub = lab.lab.hub.clone();
    for _ in 0..events {
        hub.publish(start.elapsed().as_nanos().to_string());
        thread::sleep(Duration::from_millis(gap_ms));
    }

    let mut latencies: Vec<Duration> = Vec::new();
    let mut lost = 0;
    for handle in handles {
        let seen = handle.join().expect("client thread");
        lost += events - seen.len() as u64;
        latencies.extend(seen);
    }
    latencies.sort();
    let stats = client::get(addr, "/stats").unwrap().json();
    let lesson = match technique.as_str() {
        "long-poll" => "long_polling",
        "stream" => "fetch_streaming",
        "ws" => "websocket",
        other => other,
    };
    let counters = &stats["lessons"][lesson];
    let delivered = latencies.len().max(1) as f64;
    println!(
        "{technique:10} clients {clients:5}  events {events:4}  delivered {:7}  lost {lost}",
        latencies.len()
    );
    println!(
        "  latency p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "  requests per delivered event {:.2}  server bytes per delivered event {:.0}  threads {}",
        counters["requests"].as_f64().unwrap_or(0.0) / delivered,
        counters["bytes"].as_f64().unwrap_or(0.0) / delivered,
        stats["threads"]
    );
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Wait until every client is parked, streaming or connected.
fn wait_for_subscribers(lab: &RunningLab, n: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    let stats = &lab.lab.stats;
    while stats.parked.get() + stats.streams.get() + stats.websockets.get() < n {
        assert!(Instant::now() < end, "clients did not all subscribe");
        thread::sleep(Duration::from_millis(10));
    }
}

/// The age of an event whose data is "nanoseconds since start".
fn age(start: Instant, data: &str) -> Duration {
    let sent = Duration::from_nanos(data.parse().unwrap_or(0));
    start.elapsed().saturating_sub(sent)
}

/// Long poll in a loop from cursor 0 until `events` have arrived.
fn long_poll_client(
    addr: SocketAddr,
    start: Instant,
    events: u64,
    ready: &Barrier,
) -> Vec<Duration> {
    ready.wait();
    let mut seen = Vec::new();
    let mut since = 0;
    while since < events {
        let answer = match client::get(addr, &format!("/events/long-poll?since={since}&timeout=60"))
        {
            Ok(answer) if answer.status == 200 => answer.json(),
            _ => break,
        };
        for event in answer["events"].as_array().into_iter().flatten() {
            seen.push(age(start, event["data"].as_str().unwrap_or("")));
        }
        since = answer["last"].as_u64().unwrap_or(since);
    }
    seen
}

/// Read a stream (NDJSON or SSE) until `events` have arrived. Both carry the data on one line:
/// NDJSON as `"data":"123"`, SSE as `data: 123`.
fn stream_client(
    addr: SocketAddr,
    path: &str,
    start: Instant,
    events: u64,
    ready: &Barrier,
) -> Vec<Duration> {
    let mut stream = client::Stream::open(addr, path, &[]).expect("stream opens");
    ready.wait();
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(600);
    while (seen.len() as u64) < events {
        let Ok(Some(chunk)) = stream.next_chunk(end) else {
            break;
        };
        for line in chunk.lines() {
            if let Some(data) = line.strip_prefix("data: ") {
                seen.push(age(start, data));
            } else if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(data) = json["data"].as_str() {
                    seen.push(age(start, data));
                }
            }
        }
    }
    seen
}

/// A WebSocket client: one text frame per event.
fn websocket_client(url: &str, start: Instant, events: u64, ready: &Barrier) -> Vec<Duration> {
    let (mut socket, _) = tungstenite::connect(url).expect("WebSocket connects");
    ready.wait();
    let mut seen = Vec::new();
    while (seen.len() as u64) < events {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let json: serde_json::Value =
                    serde_json::from_str(text.as_str()).unwrap_or_default();
                if let Some(data) = json["data"].as_str() {
                    seen.push(age(start, data));
                }
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    seen
}
