//! Flood the lab and watch it live: thousands of connections that send nothing, hold long
//! polls, streams or WebSockets, all at once. It prints what was held and what refused, how
//! fast `/stats` and a lesson page answered meanwhile, and whether threads, descriptors and
//! memory went back to their baseline afterwards. It prints figures; it never passes or fails.
//!
//! ```text
//! cargo run --release --example flood                                  # every kind, 12,000 each
//! cargo run --release --example flood -- --kind idle --connections 12000
//! cargo run --release --example flood -- --kind long-poll --parking queue
//! cargo run --release --example flood -- --kind stream --connections 3000 --lab-args "--max-fds 4096"
//! cargo run --release --example flood -- --kind trickle --connections 11000 --from 127.0.0.3
//! ```
//!
//! Kinds: `idle` (connect, send nothing), `long-poll`, `stream` (SSE), `websocket`, `trickle`
//! (a `POST` whose 1,000-byte body stops after its first byte). `--from ADDR` opens the flood
//! from that address (Linux answers on all of 127.0.0.0/8; 127.0.0.1, this machine, has no
//! share), and then asks for events twenty times from another address, 127.0.0.2: one
//! client's flood must not lock the other out (`--max-connections-per-client`). The lab
//! runs as a child process with its default limits (plus `--lab-args`); this process raises
//! its own descriptor limit to hold its half of every connection. Its log (errors only) goes
//! to `/tmp/lab-bench-PID.log`; `LAB_RUST_LOG=debug` there shows each connection's life and
//! the accept thread refusing near the limits.

mod common;

use common::ChildLab;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let connections: usize =
        value("--connections").map_or(12_000, |v| v.parse().expect("a number"));
    let kinds: Vec<String> = value("--kind").map_or_else(
        || {
            ["idle", "long-poll", "stream", "websocket"]
                .map(String::from)
                .to_vec()
        },
        |k| vec![k],
    );
    let parking = value("--parking").unwrap_or_else(|| "thread".into());
    let from: Option<std::net::IpAddr> = value("--from").map(|v| v.parse().expect("an address"));
    let lab_args = value("--lab-args").unwrap_or_default();
    // This process holds one end of every connection.
    let own = reverse_ajax_lab::limits::capacity();
    println!(
        "flood: {connections} connections per kind, --parking {parking}; this process may hold {} descriptors\n",
        own.fd_limit
    );
    println!("| kind | held | refused | no answer yet | failed | /stats during (ms, worst) | page during (ms, worst) | peak threads | peak fds | back to baseline | RSS before → peak → after (MiB) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |");
    for kind in &kinds {
        let mut extra: Vec<&str> = vec!["--parking", &parking];
        extra.extend(lab_args.split_whitespace());
        let lab = ChildLab::start(&extra);
        let (row, other) = flood(&lab, kind, connections, from);
        println!("{row}");
        if let Some(other) = other {
            println!("  (from 127.0.0.2 during the flood: {other})");
        }
        if let Some(line) = lab
            .log_tail(1)
            .first()
            .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        {
            println!("  (the end of the lab's log: {line})");
        }
    }
}

struct Sample {
    threads: u64,
    fds: u64,
    rss_kib: u64,
}

/// Threads, descriptors and memory, read from `/proc` (not from `/stats`: a request would
/// itself take a connection thread).
fn sample(lab: &ChildLab) -> Option<Sample> {
    let pid = lab.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Sample {
        threads: field("Threads:")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
        rss_kib: field("VmRSS:")?,
    })
}

/// The lab's threads by name, digits left out (`conn ×3601, ws-writer ×10`): what was left
/// behind. The lab names every thread it starts.
fn thread_names(lab: &ChildLab) -> String {
    let mut counts = std::collections::BTreeMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", lab.pid()));
    for task in tasks.into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name: String = comm
            .trim()
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let name = name.trim_end_matches('-').to_string();
        *counts.entry(name).or_insert(0) += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    counts
        .iter()
        .map(|(name, n)| format!("{name} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How long `path` takes to answer now (None: it did not, within 5 s).
/// How a probe of `/stats` or a page fared during a flood.
enum Probe {
    /// Answered 200 after this many ms.
    Answered(f64),
    /// Refused (503: on the accept thread, in a flood, before its request had arrived).
    Refused,
    /// No answer within 5 s.
    Unanswered,
}

fn answer_ms(addr: SocketAddr, path: &str) -> Probe {
    let started = Instant::now();
    let Ok(mut socket) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return Probe::Unanswered;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut head = [0u8; 12];
    if socket.write_all(request.as_bytes()).is_err() || socket.read_exact(&mut head).is_err() {
        return Probe::Unanswered;
    }
    match &head[9..12] {
        b"200" => Probe::Answered(started.elapsed().as_secs_f64() * 1000.0),
        _ => Probe::Refused,
    }
}

/// Twenty requests for events from 127.0.0.2 (another client than the flood's): how many
/// were answered 200, and the slowest.
fn another_client_asks(addr: SocketAddr) -> String {
    let (mut answered, mut worst) = (0, 0.0f64);
    for _ in 0..20 {
        let started = Instant::now();
        let Ok(mut socket) = reverse_ajax_lab::client::connect_from([127, 0, 0, 2].into(), addr)
        else {
            continue;
        };
        let _ = socket.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!(
            "GET /events/poll?since=0 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        );
        let mut head = [0u8; 12];
        if socket.write_all(request.as_bytes()).is_ok()
            && socket.read_exact(&mut head).is_ok()
            && &head[9..12] == b"200"
        {
            answered += 1;
            worst = worst.max(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    format!("/events/poll answered {answered} of 20, the slowest in {worst:.1} ms")
}

fn flood(
    lab: &ChildLab,
    kind: &str,
    n: usize,
    from: Option<std::net::IpAddr>,
) -> (String, Option<String>) {
    let addr = lab.addr;
    let ws_addr = lab.websocket_addr();
    let before = sample(lab).expect("a baseline");
    let request = match kind {
        "idle" => String::new(),
        "long-poll" => format!("GET /events/long-poll?timeout=120 HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "trickle" => {
            format!("POST /publish HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000\r\n\r\nx")
        }
        "stream" => format!("GET /events/sse HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "websocket" => format!(
            "GET /events/ws HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        other => panic!("unknown kind {other}"),
    };
    let target = if kind == "websocket" { ws_addr } else { addr };
    // Open everything, checking /stats and a page every 500 connections.
    let mut sockets = Vec::with_capacity(n);
    let mut failed = 0;
    let (mut worst_stats, mut worst_page) = (0.0f64, 0.0f64);
    let (mut unanswered_stats, mut unanswered_page) = (0, 0);
    let (mut refused_stats, mut refused_page) = (0, 0);
    let mut peak = Sample {
        threads: 0,
        fds: 0,
        rss_kib: 0,
    };
    let mut check = |peak: &mut Sample| {
        match answer_ms(addr, "/stats") {
            Probe::Answered(ms) => worst_stats = worst_stats.max(ms),
            Probe::Refused => refused_stats += 1,
            Probe::Unanswered => unanswered_stats += 1,
        }
        match answer_ms(addr, "/lessons/sse") {
            Probe::Answered(ms) => worst_page = worst_page.max(ms),
            Probe::Refused => refused_page += 1,
            Probe::Unanswered => unanswered_page += 1,
        }
        if let Some(s) = sample(lab) {
            peak.threads = peak.threads.max(s.threads);
            peak.fds = peak.fds.max(s.fds);
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
        }
    };
    for i in 0..n {
        let connected = match from {
            Some(from) => reverse_ajax_lab::client::connect_from(from, target),
            None => TcpStream::connect_timeout(&target, Duration::from_secs(5)),
        };
        match connected {
            Ok(mut socket) => {
                if request.is_empty() || socket.write_all(request.as_bytes()).is_ok() {
                    sockets.push(socket);
                } else {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
        if i % 500 == 499 {
            check(&mut peak);
        }
    }
    check(&mut peak);
    // Classify: a refusal (503) or a close has arrived by now; a held one has a 200/101 head
    // (streams, WebSockets) or nothing yet (a parked long poll, an idle connection).
    let settle = Instant::now() + Duration::from_secs(3);
    // Streams and WebSockets answer at once when held (200, 101): silence there is a
    // connection still waiting for its turn.
    let silent_is_held = kind == "idle" || kind == "long-poll" || kind == "trickle";
    let (mut held, mut refused, mut pending) = (0, 0, 0);
    for socket in &mut sockets {
        let left = settle
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = socket.set_read_timeout(Some(left.min(Duration::from_millis(1))));
        let mut head = [0u8; 12];
        match socket.read(&mut head) {
            Ok(0) => refused += 1,
            Ok(n) if n >= 12 && &head[9..12] == b"503" => refused += 1,
            Ok(_) => held += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && silent_is_held => held += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => pending += 1,
            Err(_) => refused += 1,
        }
    }
    check(&mut peak);
    let other = from.map(|_| another_client_asks(addr));
    drop(sockets);
    // Back to baseline: threads and descriptors within a handful, in at most 60 s (idle
    // connections wait for --idle-timeout; idle connection threads end after 10 s).
    let started = Instant::now();
    let mut after = sample(lab);
    while started.elapsed() < Duration::from_secs(60) {
        after = sample(lab);
        if after
            .as_ref()
            .is_some_and(|a| a.threads <= before.threads + 4 && a.fds <= before.fds + 4)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let back = match &after {
        Some(a) if a.threads <= before.threads + 4 && a.fds <= before.fds + 4 => {
            format!("yes, in {:.1} s", started.elapsed().as_secs_f64())
        }
        Some(a) => format!(
            "no: {} threads ({}), {} fds",
            a.threads,
            thread_names(lab),
            a.fds
        ),
        None => "no answer".into(),
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    let after_rss = after.map_or(0, |a| a.rss_kib);
    let during = |worst: f64, refused: usize, unanswered: usize| {
        let mut text = format!("{worst:.0}");
        if refused > 0 {
            text.push_str(&format!(" ({refused} refused)"));
        }
        if unanswered > 0 {
            text.push_str(&format!(" ({unanswered} unanswered)"));
        }
        text
    };
    let row = format!(
        "| {kind} | {held} | {refused} | {pending} | {failed} | {} | {} | {} | {} | {back} | {:.0} → {:.0} → {:.0} |",
        during(worst_stats, refused_stats, unanswered_stats),
        during(worst_page, refused_page, unanswered_page),
        peak.threads,
        peak.fds,
        mib(before.rss_kib),
        mib(peak.rss_kib),
        mib(after_rss),
    );
    (row, other)
}
