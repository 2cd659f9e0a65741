//! Publish→delivery latency for N clients of one technique, measuring the server, not itself.
//!
//! ```text
//! cargo run --release --example latency -- long-poll 1      # one client
//! cargo run --release --example latency -- long-poll 1000   # a thousand
//! cargo run --release --example latency -- sse 1000 --events 100 --gap-ms 200
//! cargo run --release --example latency -- long-poll 1000 --queue   # --parking queue
//! cargo run --release --example latency -- socket.io 1000  # Socket.IO's /lab over its websocket transport
//! cargo run --release --example latency -- sse 1000 --redis redis://127.0.0.1:6379  # through Redis
//! cargo run --release --example latency -- long-poll 1000 --against peer  # and the Node peer
//! ```
//!
//! `--against peer` measures the lab and a single-threaded Node server speaking the same
//! contract (bench/peer/server.mjs, node:http and `ws`; `npm ci` there runs by itself the first
//! time), two rounds each, interleaved, and prints both and the ratio of their p99.
//!
//! The lab runs as a child process (so its CPU and memory are its own). Every client lives in
//! this process's one reading thread: non-blocking sockets watched by `epoll`, each read stamped
//! the moment its bytes come out of the kernel, so the clients add no threads of their own to
//! the two cores the lab runs on. A second thread publishes events by `POST /publish`, each
//! carrying the wall-clock microseconds it was sent (`@@<micros>@@`, a marker every framing
//! carries intact). It prints figures; it does not pass or fail.

mod common;

use common::{now_micros, percentile_ms, ChildLab};
use reverse_ajax_lab::client;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const TECHNIQUES: &str = "long-poll stream sse ws socket.io";

fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let technique = args.first().cloned().unwrap_or_else(|| "long-poll".into());
    let clients: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let events: u64 = flag(&args, "--events").unwrap_or(20);
    let gap_ms: u64 = flag(&args, "--gap-ms").unwrap_or(200);
    if !TECHNIQUES.split(' ').any(|t| t == technique) {
        eprintln!("usage: latency TECHNIQUE CLIENTS [--events N] [--gap-ms MS] [--queue] [--redis URL] [--against peer]; TECHNIQUE: {TECHNIQUES}");
        std::process::exit(2);
    }
    // This process holds one end of every connection.
    let _ = reverse_ajax_lab::limits::capacity();
    let parking = if args.iter().any(|a| a == "--queue") {
        "queue"
    } else {
        "thread"
    };
    let max_parked = (clients + 100).to_string();
    let mut lab_args = vec![
        "--parking",
        parking,
        "--max-parked",
        &max_parked,
        "--heartbeat",
        "120",
    ];
    // Through a broker (chapter 19): every publish goes to Redis and back.
    let redis = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1));
    if let Some(url) = redis {
        lab_args.extend(["--redis", url.as_str()]);
    }
    let run = Run {
        technique: technique.clone(),
        clients,
        events,
        gap_ms,
    };
    let against_peer = args
        .iter()
        .position(|a| a == "--against")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|who| who == "peer");
    if !against_peer {
        let lab = ChildLab::start(&lab_args);
        let measured = measure(&run, lab.addr, lab.websocket_addr(), lab.pid());
        println!("{technique} ({parking} parking): {clients} clients, {events} events {gap_ms} ms apart, delivered {}, lost {}", measured.delivered, measured.lost);
        measured.print();
        return;
    }
    // `--against peer`: the lab and the single-threaded Node peer (bench/peer), two rounds
    // each, interleaved (lab, peer, lab, peer), so a slow moment of the machine falls on both.
    if technique == "socket.io" {
        eprintln!("--against peer: the peer speaks long-poll, stream, sse and ws only");
        std::process::exit(2);
    }
    println!("{technique}: {clients} clients, {events} events {gap_ms} ms apart; the lab ({parking} parking) against the Node peer, interleaved");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=2 {
        let lab = ChildLab::start(&lab_args);
        let measured = measure(&run, lab.addr, lab.websocket_addr(), lab.pid());
        println!(
            "round {round}, lab:  delivered {}, lost {}",
            measured.delivered, measured.lost
        );
        measured.print();
        ours.push(measured);
        drop(lab);
        let peer = Peer::start();
        let measured = measure(&run, peer.addr, peer.addr, peer.pid());
        println!(
            "round {round}, peer: delivered {}, lost {}",
            measured.delivered, measured.lost
        );
        measured.print();
        theirs.push(measured);
    }
    let mean = |all: &[Measured], f: fn(&Measured) -> f64| {
        all.iter().map(f).sum::<f64>() / all.len() as f64
    };
    let (p50, p99) = (|m: &Measured| m.p50_ms, |m: &Measured| m.p99_ms);
    let (lab50, lab99) = (mean(&ours, p50), mean(&ours, p99));
    let (peer50, peer99) = (mean(&theirs, p50), mean(&theirs, p99));
    println!(
        "\nmean of the rounds: lab p50 {lab50:.2} ms, p99 {lab99:.2} ms; peer p50 {peer50:.2} ms, p99 {peer99:.2} ms; \
         p99 lab / peer {:.2}x ({})",
        lab99 / peer99,
        if lab99 <= peer99 { "the lab at or ahead" } else { "the lab behind" }
    );
}

/// What one run asks for.
struct Run {
    technique: String,
    clients: usize,
    events: u64,
    gap_ms: u64,
}

/// What one run measured of one server.
struct Measured {
    delivered: usize,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu: f64,
    kib_per_connection: f64,
    threads: serde_json::Value,
    requests_per_event: f64,
    bytes_per_event: f64,
}

impl Measured {
    fn print(&self) {
        println!(
            "  latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        );
        println!(
            "  server: CPU {:.0} %, {:.1} KiB resident per held connection, {} threads; {:.2} requests and {:.0} bytes per delivered event",
            self.cpu * 100.0,
            self.kib_per_connection,
            self.threads,
            self.requests_per_event,
            self.bytes_per_event,
        );
    }
}

/// The Node peer (bench/peer/server.mjs) as a child process on a free port, killed when
/// dropped. Installs its one package (`ws`) with `npm ci` the first time.
struct Peer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Peer {
    fn start() -> Peer {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peer");
        if !dir.join("node_modules/ws").exists() {
            let installed = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status();
            if !installed.is_ok_and(|s| s.success()) {
                eprintln!("the peer needs Node.js and `npm ci` in {}", dir.display());
                std::process::exit(2);
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = std::process::Command::new("node")
            .arg("server.mjs")
            .arg(addr.to_string())
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node starts (Node.js 20 or later)");
        let end = Instant::now() + Duration::from_secs(30);
        while client::get(addr, "/stats").is_err() {
            assert!(Instant::now() < end, "the peer did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Peer { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connect every client, wait until all are held, publish `events`, and measure.
fn measure(run: &Run, addr: SocketAddr, ws_addr: SocketAddr, pid: u32) -> Measured {
    let Run {
        technique,
        clients,
        events,
        gap_ms,
    } = run;
    let (technique, clients, events, gap_ms) = (technique.as_str(), *clients, *events, *gap_ms);
    let rss_before = proc_field(pid, "VmRSS:");
    // Connect every client and send its first request.
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(0) };
    assert!(epoll >= 0, "epoll_create1");
    let mut conns: Vec<Conn> = (0..clients)
        .map(|i| {
            let target = match technique {
                "ws" | "socket.io" => ws_addr,
                _ => addr,
            };
            let mut socket = TcpStream::connect(target).expect("connect");
            socket.set_nodelay(true).unwrap();
            socket
                .write_all(first_request(technique, addr, ws_addr).as_bytes())
                .unwrap();
            socket.set_nonblocking(true).unwrap();
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            let added = unsafe {
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event)
            };
            assert_eq!(added, 0, "epoll_ctl");
            Conn {
                socket,
                buffer: Vec::new(),
                since: 0,
                seen: Vec::new(),
                upgraded: false,
            }
        })
        .collect();
    let held = || {
        let s = client::get(addr, "/stats").unwrap().json();
        if technique == "socket.io" {
            // Held once its CONNECT to /lab has subscribed it to the hub.
            return s["subscribers"].as_u64().unwrap_or(0);
        }
        s["parked"].as_u64().unwrap_or(0)
            + s["streams"].as_u64().unwrap_or(0)
            + s["websockets"].as_u64().unwrap_or(0)
    };
    let end = Instant::now() + Duration::from_secs(120);
    while held() < clients as u64 {
        assert!(Instant::now() < end, "the clients did not all subscribe");
        pump_reads(
            epoll,
            &mut conns,
            technique,
            addr,
            Duration::from_millis(20),
        );
    }
    let rss_held = proc_field(pid, "VmRSS:");
    let cpu_before = cpu_ticks(pid);
    let started = Instant::now();

    // Publish on a second thread; read everything on this one.
    let publisher = std::thread::spawn(move || {
        for _ in 0..events {
            client::publish(addr, &format!("@@{}@@", now_micros())).expect("publish");
            std::thread::sleep(Duration::from_millis(gap_ms));
        }
    });
    let deadline =
        Instant::now() + Duration::from_millis(events * gap_ms) + Duration::from_secs(10);
    while Instant::now() < deadline && conns.iter().any(|c| (c.seen.len() as u64) < events) {
        pump_reads(
            epoll,
            &mut conns,
            technique,
            addr,
            Duration::from_millis(50),
        );
    }
    publisher.join().unwrap();
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0 / started.elapsed().as_secs_f64();

    let mut latencies: Vec<u128> = conns.iter().flat_map(|c| c.seen.iter().copied()).collect();
    latencies.sort_unstable();
    let lost = clients as u64 * events - latencies.len() as u64;
    let stats = client::get(addr, "/stats").unwrap().json();
    let lesson = match technique {
        "long-poll" => "long_polling",
        "stream" => "fetch_streaming",
        "ws" => "websocket",
        "socket.io" => "socket_io",
        other => other,
    };
    let counters = &stats["lessons"][lesson];
    let delivered = latencies.len().max(1) as f64;
    let ms = |p| percentile_ms(&latencies, p).unwrap_or(f64::NAN);
    Measured {
        delivered: latencies.len(),
        lost,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        cpu,
        kib_per_connection: rss_held.saturating_sub(rss_before) as f64 / clients as f64,
        threads: stats["threads"].clone(),
        requests_per_event: counters["requests"].as_f64().unwrap_or(0.0) / delivered,
        bytes_per_event: counters["bytes"].as_f64().unwrap_or(0.0) / delivered,
    }
}

/// One client: its socket, bytes not yet understood, its cursor, and the latencies it saw.
struct Conn {
    socket: TcpStream,
    buffer: Vec<u8>,
    since: u64,
    seen: Vec<u128>,
    /// Socket.IO: the 101 came and the CONNECT to /lab is sent.
    upgraded: bool,
}

fn first_request(technique: &str, addr: SocketAddr, ws_addr: SocketAddr) -> String {
    match technique {
        "long-poll" => long_poll_request(addr, 0),
        "stream" => format!("GET /events/stream?since=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "sse" => format!("GET /events/sse?since=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "socket.io" => format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        _ => format!(
            "GET /events/ws?since=0 HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    }
}

fn long_poll_request(addr: SocketAddr, since: u64) -> String {
    format!("GET /events/long-poll?since={since}&timeout=60 HTTP/1.1\r\nHost: {addr}\r\n\r\n")
}

/// Wait up to `timeout` for readable sockets; read each dry, stamping what arrives.
fn pump_reads(
    epoll: i32,
    conns: &mut [Conn],
    technique: &str,
    addr: SocketAddr,
    timeout: Duration,
) {
    let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    // BLOCKS: until some socket has bytes, or the timeout.
    // SAFETY: `ready` has room for the number of events we pass.
    let n = unsafe {
        libc::epoll_wait(
            epoll,
            ready.as_mut_ptr(),
            ready.len() as i32,
            timeout.as_millis() as i32,
        )
    };
    for event in ready.iter().take(n.max(0) as usize) {
        let conn = &mut conns[event.u64 as usize];
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match conn.socket.read(&mut chunk) {
                Ok(0) => break,
                Ok(k) => {
                    let arrived = now_micros();
                    conn.buffer.extend_from_slice(&chunk[..k]);
                    take_events(conn, technique, addr, arrived);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}

/// Find `@@micros@@` markers in what arrived; long polls also complete their answer and ask
/// again from the new cursor.
fn take_events(conn: &mut Conn, technique: &str, addr: SocketAddr, arrived: u128) {
    if technique == "socket.io" && !conn.upgraded {
        let text = String::from_utf8_lossy(&conn.buffer).into_owned();
        let Some(head_end) = text.find("\r\n\r\n") else {
            return;
        };
        conn.buffer.drain(..head_end + 4);
        // CONNECT to /lab in a masked text frame (clients mask; a zero key is a valid key).
        let payload = br#"40/lab,{"name":"bench"}"#;
        let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        let _ = conn.socket.write_all(&frame);
        conn.upgraded = true;
    }
    if technique == "long-poll" {
        // A whole answer: head, then Content-Length bytes.
        loop {
            let text = String::from_utf8_lossy(&conn.buffer).into_owned();
            let Some(head_end) = text.find("\r\n\r\n") else {
                return;
            };
            let length: usize = text[..head_end]
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if conn.buffer.len() < head_end + 4 + length {
                return;
            }
            let body = text[head_end + 4..head_end + 4 + length].to_string();
            conn.buffer.drain(..head_end + 4 + length);
            stamp(&body, arrived, &mut conn.seen);
            if let Some(last) = body
                .split("\"last\":")
                .nth(1)
                .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            {
                conn.since = last;
            }
            let _ = conn
                .socket
                .write_all(long_poll_request(addr, conn.since).as_bytes());
        }
    }
    // Streams and sockets: every complete marker, keeping a partial one for the next read.
    let text = String::from_utf8_lossy(&conn.buffer).into_owned();
    let marks: Vec<usize> = text.match_indices("@@").map(|(i, _)| i).collect();
    let cut = match marks.last() {
        Some(&last) if marks.len() % 2 == 1 => last, // an opened marker: keep it
        Some(&last) => last + 2,
        None if text.ends_with('@') => text.len() - 1, // maybe half of an opening "@@"
        None => text.len(),
    };
    stamp(&text[..cut], arrived, &mut conn.seen);
    conn.buffer.drain(..cut.min(conn.buffer.len()));
}

fn stamp(text: &str, arrived: u128, seen: &mut Vec<u128>) {
    for (i, part) in text.split("@@").enumerate() {
        if i % 2 == 1 {
            if let Ok(sent) = part.parse::<u128>() {
                seen.push(arrived.saturating_sub(sent));
            }
        }
    }
}

fn flag(args: &[String], name: &str) -> Option<u64> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

fn proc_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of the process, in clock ticks (100 a second).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}
