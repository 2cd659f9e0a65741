//! Every technique side by side, with the same clients and the same kind of events: the
//! articles' claims turned into numbers.
//!
//! ```text
//! cargo run --release --example compare                         # 100 clients, about a minute
//! cargo run --release --example compare -- --clients 50 --seconds 30 --speed 10
//! cargo run --release --example compare -- --only long-poll,long-poll-servlet,sse
//! cargo run --release --example compare -- --markdown           # the book's table on stdout too
//! ```
//!
//! The lab runs as a child process. For each technique in turn, `--clients` simulated clients
//! connect over real sockets while this program publishes events on the generator's schedule
//! (a uniform pause of 0–5 s), sped up `--speed` times; the run takes about `--seconds`,
//! shared equally among the techniques chosen (`--only`). At
//! `--speed 10` events come every 0–500 ms and pollers poll every 200 ms instead of 2 s, which
//! keeps every ratio (empty answers, requests and bytes per event) and divides polling's
//! latency by ten. Push techniques' latency is not scaled.
//!
//! Long-polling clients wait 50 ms (a network round trip) between an answer and their next
//! request, as a browser on a real network does; that gap is where the servlet's lossy mode
//! drops events.
//!
//! Each client counts every byte it sends and receives (request and response headers,
//! handshakes and frames included), the requests it makes, the answers that carried nothing,
//! and when each event reached it. An event published while a client was connected that never
//! reached it is *lost*. The table goes to stdout, and as Markdown and an SVG chart to
//! `target/compare/`.

mod common;

use common::{now_micros, percentile_ms, ChildLab};
use reverse_ajax_lab::client::{self, read_chunk, read_head};
use serde_json::Value;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The rows, in the articles' order. The servlet originals' modes have rows of their own.
const TECHNIQUES: &[(&str, &str)] = &[
    ("polling", "HTTP polling, every 2 s"),
    ("polling-servlet", "polling, servlet's drained queue"),
    ("piggyback", "piggyback (a form every 0-20 s)"),
    ("long-poll", "XHR long polling"),
    ("long-poll-servlet", "long polling, servlet's lossy mode"),
    ("iframe", "forever iframe"),
    ("stream", "fetch streaming (NDJSON)"),
    ("sse", "Server-Sent Events"),
    ("ws", "WebSocket"),
];

const END: &str = "__end__";

/// The gap a long-polling client leaves between an answer and its next request: a network
/// round trip. On loopback it would be microseconds, and the servlet's lossy mode would
/// almost never show its flaw.
const RTT_MS: u64 = 50;

fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |name: &str, default: u64| -> u64 {
        let at = args.iter().position(|a| a == name);
        at.and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let clients = number("--clients", 100) as usize;
    let seconds = number("--seconds", 60);
    let speed = number("--speed", 10).max(1);
    // A 1 s heartbeat lets the lab notice departed stream clients quickly between rows.
    let lab = ChildLab::start(&["--max-parked", "20000", "--heartbeat", "1"]);
    let ws_url = client::get(lab.addr, "/stats").expect("stats").json()["websocket"]
        .as_str()
        .expect("a WebSocket URL")
        .to_string();

    let drain_for = |key: &str| match key {
        "piggyback" => Duration::from_millis(20_000 / speed + 300),
        "polling" | "polling-servlet" => Duration::from_millis(2 * 2000 / speed + 300),
        _ => Duration::from_millis(300),
    };

    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|list| list.split(',').map(String::from).collect());
    let chosen: Vec<&(&str, &str)> = TECHNIQUES
        .iter()
        .filter(|(key, _)| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| o == key))
        })
        .collect();
    // Each chosen technique gets an equal share of the run: a publishing window, then a
    // drain in which clients may still collect what was published (a poll interval, a
    // piggyback pause). `--seconds 300 --only polling` is 300 s of polling.
    let share = Duration::from_secs(seconds) / chosen.len().max(1) as u32;
    let mut rows = Vec::new();
    let started = Instant::now();
    println!(
        "{clients} clients per technique, events every 0-{} ms (speed {speed}), polls every {} ms, \
         about {:.0} s per technique\n",
        5000 / speed,
        2000 / speed,
        share.as_secs_f64()
    );
    for (key, title) in chosen {
        eprintln!("[{:5.1} s] {key}", started.elapsed().as_secs_f64());
        let drain = drain_for(key);
        let window = share.saturating_sub(drain).max(Duration::from_secs(2));
        let row = run_technique(&lab, &ws_url, key, clients, speed, window, drain);
        println!("{}", row.line(title));
        rows.push((title.to_string(), row));
    }
    println!("\n(bytes: everything both ways on the wire per delivered event, headers included;");
    println!(" latency: publish→delivery; polling and piggyback latencies are {speed}x smaller than at real speed)");

    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/compare");
    let _ = std::fs::create_dir_all(&out);
    let markdown = markdown(&rows, clients, speed);
    let svg = svg(&rows);
    if args.iter().any(|a| a == "--markdown") {
        println!("\n{markdown}");
    }
    if std::fs::write(out.join("compare.md"), markdown).is_ok()
        && std::fs::write(out.join("compare.svg"), svg).is_ok()
    {
        println!("\nwrote {0}/compare.md and {0}/compare.svg", out.display());
    }
}

/// One row of the table.
#[derive(Default)]
struct Row {
    /// Events published in this row's window.
    events: u64,
    requests: u64,
    empty: u64,
    bytes: u64,
    delivered: u64,
    expected: u64,
    latencies: Vec<u128>,
    peak_threads: u64,
}

impl Row {
    fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.delivered)
    }
    fn empty_percent(&self) -> f64 {
        100.0 * self.empty as f64 / self.requests.max(1) as f64
    }
    fn bytes_per_event(&self) -> f64 {
        self.bytes as f64 / self.delivered.max(1) as f64
    }
    fn p(&self, p: f64) -> String {
        percentile_ms(&self.latencies, p).map_or("-".into(), |ms| format!("{ms:.1}"))
    }
    fn line(&self, title: &str) -> String {
        format!(
            "{title:36} events {:3}  requests {:6}  empty {:5.1}%  bytes/event {:7.0}  p50 {:>7} ms  p99 {:>7} ms  \
             lost {:5.1}%  peak threads {}",
            self.events,
            self.requests,
            self.empty_percent(),
            self.bytes_per_event(),
            self.p(0.5),
            self.p(0.99),
            100.0 * self.lost() as f64 / self.expected.max(1) as f64,
            self.peak_threads
        )
    }
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    requests: u64,
    empty: u64,
    ids: HashSet<u64>,
    latencies: Vec<u128>,
    /// The last event id published before this client was ready: it expects what follows.
    start_after: u64,
    /// Requests and empty answers count only while events are being published: not before
    /// the first, nor in the drain after the last.
    counting: Arc<AtomicBool>,
}

impl Seen {
    /// Record an event's arrival; returns false for the end marker.
    fn event(&mut self, id: u64, data: &str) -> bool {
        if data == END {
            return false;
        }
        if let Ok(sent) = data.parse::<u128>() {
            // Older events (a drained queue keeps them) belong to no row.
            if id > self.start_after && self.ids.insert(id) {
                self.latencies.push(now_micros().saturating_sub(sent));
            }
        }
        true
    }
}

/// A TCP stream that counts every byte both ways.
struct Counting {
    stream: TcpStream,
    bytes: Arc<Mutex<u64>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stream.read(buf)?;
        *self.bytes.lock().unwrap() += n as u64;
        Ok(n)
    }
}

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.stream.write(buf)?;
        *self.bytes.lock().unwrap() += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn connect(
    addr: SocketAddr,
    bytes: &Arc<Mutex<u64>>,
    until: Instant,
) -> io::Result<BufReader<Counting>> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(
        until.saturating_duration_since(Instant::now()) + Duration::from_secs(2),
    ))?;
    Ok(BufReader::new(Counting {
        stream,
        bytes: bytes.clone(),
    }))
}

/// A keep-alive request and its JSON answer, with a browser-like request head.
fn exchange(
    conn: &mut BufReader<Counting>,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<Value> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: lab\r\nUser-Agent: compare\r\nAccept: */*\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.get_mut().write_all(head.as_bytes())?;
    let (_, headers) = read_head(conn)?;
    let length: u64 = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut text = String::new();
    conn.take(length).read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

fn run_technique(
    lab: &ChildLab,
    ws_url: &str,
    key: &str,
    clients: usize,
    speed: u64,
    window: Duration,
    drain: Duration,
) -> Row {
    let addr = lab.addr;
    let bytes = Arc::new(Mutex::new(0u64));
    let stop_publishing = Instant::now() + window + Duration::from_secs(1);
    let until = stop_publishing + drain;
    let ready = Arc::new(std::sync::Barrier::new(clients + 1));
    let counting = Arc::new(AtomicBool::new(false));
    let start_id = client::get(addr, "/stats").unwrap().json()["events_published"]
        .as_u64()
        .unwrap_or(0);

    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (bytes, ready, key, ws_url) = (
                bytes.clone(),
                ready.clone(),
                key.to_string(),
                ws_url.to_string(),
            );
            let counting = counting.clone();
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut seen = Seen {
                        start_after: start_id,
                        counting,
                        ..Seen::default()
                    };
                    let mut gate = Gate {
                        barrier: &ready,
                        passed: false,
                    };
                    let result = run_client(
                        &key, addr, &ws_url, &bytes, &mut gate, &mut seen, speed, until, i,
                    );
                    // A client that failed before the gate must still pass it, or the run
                    // would wait for it forever.
                    gate.pass();
                    if let Err(e) = result {
                        if !matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) {
                            eprintln!("{key} client {i}: {e}");
                        }
                    }
                    seen
                })
                .expect("a client thread")
        })
        .collect();
    ready.wait();
    // Let streams and sockets finish their handshakes before the first event.
    thread::sleep(Duration::from_millis(300));

    // Publish on the generator's schedule; sample the server's threads meanwhile.
    let peak = Arc::new(Mutex::new(0u64));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(answer) = client::get(addr, "/stats") {
                    let threads = answer.json()["threads"].as_u64().unwrap_or(0);
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(threads);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut random = 0x2545_f491_4f6c_dd1d_u64 ^ now_micros() as u64;
    let mut published = Vec::new();
    while Instant::now() < stop_publishing {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        thread::sleep(Duration::from_millis(random % (5000 / speed + 1)));
        if Instant::now() >= stop_publishing {
            break;
        }
        match client::publish(addr, &now_micros().to_string()) {
            Ok(id) => {
                published.push(id);
                counting.store(true, Ordering::Relaxed);
            }
            Err(e) => eprintln!("publish failed: {e}"),
        }
    }
    counting.store(false, Ordering::Relaxed);
    // The drain: clients collect what is left, then the end marker releases the waiting ones.
    thread::sleep(drain);
    let _ = client::publish(addr, END);

    let mut row = Row::default();
    for handle in handles {
        let seen = handle.join().expect("client");
        row.requests += seen.requests;
        row.empty += seen.empty;
        row.delivered += seen.ids.len() as u64;
        row.expected += published
            .iter()
            .filter(|&&id| id > seen.start_after)
            .count() as u64;
        row.latencies.extend(seen.latencies);
    }
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    row.latencies.sort_unstable();
    row.events = published.len() as u64;
    row.bytes = *bytes.lock().unwrap();
    row.peak_threads = *peak.lock().unwrap();
    // Let the server drop what these clients left behind before the next row.
    wait_until_idle(addr);
    row
}

fn wait_until_idle(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if let Ok(answer) = client::get(addr, "/stats") {
            let s = answer.json();
            if s["parked"] == 0 && s["streams"] == 0 && s["websockets"] == 0 {
                return;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[allow(clippy::too_many_arguments)]
fn run_client(
    key: &str,
    addr: SocketAddr,
    ws_url: &str,
    bytes: &Arc<Mutex<u64>>,
    ready: &mut Gate<'_>,
    seen: &mut Seen,
    speed: u64,
    until: Instant,
    index: usize,
) -> io::Result<()> {
    let since = seen.start_after;
    let interval = Duration::from_millis(2000 / speed);
    let rtt = Duration::from_millis(RTT_MS);
    match key {
        "polling" | "polling-servlet" => {
            let mut conn = connect(addr, bytes, until)?;
            ready.pass();
            let mut cursor = since;
            // Clients start spread over one interval, as tabs opened at different times.
            thread::sleep(interval * index as u32 / 100);
            while Instant::now() < until {
                let path = if key == "polling" {
                    format!("/events/poll?since={cursor}")
                } else {
                    "/events/poll?mode=servlet".to_string()
                };
                let answer = exchange(&mut conn, "GET", &path, "")?;
                count_answer(seen, &answer, &mut cursor);
                thread::sleep(interval);
            }
        }
        "piggyback" => {
            let mut conn = connect(addr, bytes, until)?;
            ready.pass();
            let mut cursor = since;
            let mut random = 0x9e37_79b9_7f4a_7c15_u64 ^ ((index as u64 + 1) * 0x1000_0001);
            while Instant::now() < until {
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                thread::sleep(Duration::from_millis(random % (20_000 / speed + 1)));
                let path = format!("/events/piggyback?since={cursor}");
                let answer = exchange(
                    &mut conn,
                    "POST",
                    &path,
                    "name=Ada&email=ada%40example.org&age=36",
                )?;
                count_answer(seen, &answer, &mut cursor);
            }
        }
        "long-poll" | "long-poll-servlet" => {
            let mut conn = connect(addr, bytes, until)?;
            ready.pass();
            let mut cursor = since;
            while Instant::now() < until {
                let path = if key == "long-poll" {
                    format!("/events/long-poll?since={cursor}&timeout=30")
                } else {
                    "/events/long-poll?mode=servlet&timeout=30".to_string()
                };
                let answer = exchange(&mut conn, "GET", &path, "")?;
                if !count_answer(seen, &answer, &mut cursor) {
                    break;
                }
                // The answer's way back and the next request's way out, on a real network.
                thread::sleep(rtt);
            }
        }
        "iframe" | "stream" | "sse" => {
            let mut conn = connect(addr, bytes, until)?;
            let path = match key {
                "iframe" => format!("/events/iframe?since={since}"),
                "stream" => format!("/events/stream?since={since}"),
                _ => format!("/events/sse?since={since}"),
            };
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: lab\r\nUser-Agent: compare\r\nAccept: */*\r\n\r\n"
            );
            conn.get_mut().write_all(head.as_bytes())?;
            seen.requests += 1;
            read_head(&mut conn)?;
            ready.pass();
            let mut sse_id = 0;
            while let Some(chunk) = read_chunk(&mut conn)? {
                let text = String::from_utf8_lossy(&chunk);
                for line in text.lines() {
                    let event = match key {
                        "sse" => {
                            if let Some(id) = line.strip_prefix("id: ") {
                                sse_id = id.parse().unwrap_or(0);
                            }
                            line.strip_prefix("data: ").map(|d| (sse_id, d.to_string()))
                        }
                        "iframe" => line
                            .strip_prefix("<script>parent.onEvent(")
                            .and_then(|rest| rest.strip_suffix(")</script>"))
                            .and_then(|json| serde_json::from_str::<Value>(json).ok())
                            .map(|e| {
                                (
                                    e["id"].as_u64().unwrap_or(0),
                                    e["data"].as_str().unwrap_or("").to_string(),
                                )
                            }),
                        _ => serde_json::from_str::<Value>(line).ok().map(|e| {
                            (
                                e["id"].as_u64().unwrap_or(0),
                                e["data"].as_str().unwrap_or("").to_string(),
                            )
                        }),
                    };
                    if let Some((id, data)) = event {
                        if !seen.event(id, &data) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        "ws" => {
            let stream = TcpStream::connect(addr_of(ws_url))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(
                until.saturating_duration_since(Instant::now()) + Duration::from_secs(2),
            ))?;
            let counting = Counting {
                stream,
                bytes: bytes.clone(),
            };
            let url = format!("{ws_url}?since={since}");
            let (mut socket, _) =
                tungstenite::client(url.as_str(), counting).map_err(io::Error::other)?;
            seen.requests += 1;
            ready.pass();
            loop {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        let event: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                        let id = event["id"].as_u64().unwrap_or(0);
                        if !seen.event(id, event["data"].as_str().unwrap_or("")) {
                            let _ = socket.close(None);
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(io::Error::other(e)),
                }
            }
        }
        other => unreachable!("{other}"),
    }
    Ok(())
}

fn addr_of(ws_url: &str) -> String {
    ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Every client passes the gate once, when it is connected (or has failed to connect).
struct Gate<'a> {
    barrier: &'a std::sync::Barrier,
    passed: bool,
}

impl Gate<'_> {
    fn pass(&mut self) {
        if !self.passed {
            self.passed = true;
            self.barrier.wait();
        }
    }
}

/// Count one JSON answer; returns false at the end marker. Requests and empty answers are
/// counted while events are being published, not in the drain after.
fn count_answer(seen: &mut Seen, answer: &Value, cursor: &mut u64) -> bool {
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    if seen.counting.load(Ordering::Relaxed) {
        seen.requests += 1;
        if events.is_empty() {
            seen.empty += 1;
        }
    }
    let mut going = true;
    for event in &events {
        let id = event["id"].as_u64().unwrap_or(0);
        going &= seen.event(id, event["data"].as_str().unwrap_or(""));
    }
    if let Some(last) = answer["last"].as_u64() {
        *cursor = last;
    }
    going
}

fn markdown(rows: &[(String, Row)], clients: usize, speed: u64) -> String {
    let mut md = format!(
        "{clients} clients per technique, generator sped up {speed}x (events every 0-{} ms, polls every {} ms).\n\n\
         | technique | events | requests | empty answers | bytes per delivered event | p50 ms | p99 ms | events lost | peak server threads |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        5000 / speed,
        2000 / speed
    );
    for (title, row) in rows {
        let _ = writeln!(
            md,
            "| {title} | {} | {} | {:.1} % | {:.0} | {} | {} | {:.1} % | {} |",
            row.events,
            row.requests,
            row.empty_percent(),
            row.bytes_per_event(),
            row.p(0.5),
            row.p(0.99),
            100.0 * row.lost() as f64 / row.expected.max(1) as f64,
            row.peak_threads
        );
    }
    md
}

/// Two bar charts, drawn by hand: bytes per delivered event, and p50 latency (log scale).
fn svg(rows: &[(String, Row)]) -> String {
    let bar_h = 22.0;
    let top = 50.0;
    let height = top + rows.len() as f64 * bar_h * 2.0 + 120.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    type Measure = Box<dyn Fn(&Row) -> f64>;
    let panels: [(&str, Measure, bool); 2] = [
        (
            "bytes on the wire per delivered event (log scale)",
            Box::new(|r: &Row| r.bytes_per_event()),
            true,
        ),
        (
            "publish→delivery p50, ms (log scale)",
            Box::new(|r: &Row| percentile_ms(&r.latencies, 0.5).unwrap_or(0.0)),
            true,
        ),
    ];
    for (p, (label, value, log)) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (rows.len() as f64 * bar_h + 60.0);
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{label}</text>",
            y0 - 10.0
        );
        let max = rows.iter().map(|(_, r)| value(r)).fold(1.0_f64, f64::max);
        for (i, (title, row)) in rows.iter().enumerate() {
            let v = value(row);
            let frac = if *log {
                (v.max(0.01).log10() + 2.0) / (max.log10() + 2.0)
            } else {
                v / max
            };
            let width = (frac.clamp(0.0, 1.0) * 500.0).max(1.0);
            let y = y0 + i as f64 * bar_h;
            let _ = writeln!(
                s,
                "<text x=\"10\" y=\"{:.0}\">{}</text><rect x=\"280\" y=\"{:.0}\" width=\"{width:.0}\" height=\"{:.0}\" fill=\"#4a7ab5\"/><text x=\"{:.0}\" y=\"{:.0}\">{v:.1}</text>",
                y + 15.0,
                escape(title),
                y + 3.0,
                bar_h - 6.0,
                285.0 + width,
                y + 15.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
