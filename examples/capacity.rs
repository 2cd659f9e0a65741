//! How far thread-per-connection goes: hold N long polls (or SSE streams) at once, publish,
//! and report what the server held and how fast the event fanned out.
//!
//! ```text
//! cargo run --release --example capacity                          # long polls, --parking thread
//! cargo run --release --example capacity -- --parking queue       # the waiting room
//! cargo run --release --example capacity -- --technique sse --steps 1000,4000
//! cargo run --release --example capacity -- --close      # Connection: close (see below)
//! ```
//!
//! Clients send keep-alive requests, as browsers do: each connection has one thread (parked
//! while its request is held) and one descriptor. With `--close` the requests say
//! `Connection: close`: the same while held; the difference is only after the answer.
//!
//! The lab runs as a child process (this same binary with `--serve`), so its threads, file
//! descriptors and memory are its own: the report reads `/stats` and the child's
//! `/proc/PID/status`. For each step N the benchmark opens N connections, waits until the
//! server holds all N, records threads, descriptors and resident memory, publishes one event
//! (three times) and reads it from every connection with 16 reader threads, then closes them
//! all and waits for the server to let go. A step that cannot be held (connections refused,
//! or not all held within 60 s) is reported and ends the run: that is the ceiling.

mod common;

use common::{now_micros, percentile_ms, ChildLab};
use reverse_ajax_lab::client;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

const READERS: usize = 16;
const ROUNDS: usize = 3;

fn main() {
    if common::serve_if_asked() {
        return; // this process was the lab
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let technique = value(&args, "--technique").unwrap_or_else(|| "long-poll".into());
    let parking = value(&args, "--parking").unwrap_or_else(|| "thread".into());
    let steps: Vec<usize> = value(&args, "--steps")
        .unwrap_or_else(|| "1000,2000,4000,6000,8000,10000,12000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let keep_alive = !args.iter().any(|a| a == "--close");
    if !matches!(technique.as_str(), "long-poll" | "sse") {
        eprintln!("--technique takes long-poll or sse");
        std::process::exit(2);
    }

    let lab = ChildLab::start(&[
        "--max-parked",
        "20000",
        "--heartbeat",
        "1",
        "--parking",
        &parking,
    ]);
    let addr = lab.addr;
    let baseline = sample(addr, lab.pid()).expect("the lab answers /stats");
    println!(
        "technique {technique}, parking {parking}, {}; baseline: threads {}, fds {}, RSS {} MiB",
        if keep_alive {
            "keep-alive"
        } else {
            "Connection: close"
        },
        baseline.threads,
        baseline.fds,
        baseline.rss_kib / 1024
    );
    println!("\n| N | held | threads | fds | KiB per connection | fan-out p50 | p99 | lost |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &n in &steps {
        match run_step(addr, lab.pid(), &technique, n, keep_alive, &baseline) {
            Ok(row) => println!("{row}"),
            Err(why) => {
                println!("| {n} | stopped: {why} |");
                println!("the end of the lab's log ({}):", lab.log_path().display());
                for line in lab.log_tail(3) {
                    println!("  {line}");
                }
                break;
            }
        }
    }
}

fn value(args: &[String], name: &str) -> Option<String> {
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

struct Sample {
    threads: u64,
    fds: u64,
    rss_kib: u64,
    held: u64,
}

/// What the server holds now. `Err` when it cannot even answer `/stats`, which at the
/// ceiling is the first thing to go (no thread for the request).
fn sample(addr: SocketAddr, pid: u32) -> Result<Sample, String> {
    let answer = client::get(addr, "/stats").map_err(|e| format!("/stats failed: {e}"))?;
    if answer.status != 200 {
        return Err(format!("/stats answered {}", answer.status));
    }
    let stats = answer.json();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(Sample {
        threads: stats["threads"].as_u64().unwrap_or(0),
        fds: stats["fds"].as_u64().unwrap_or(0),
        rss_kib,
        held: stats["parked"].as_u64().unwrap_or(0) + stats["streams"].as_u64().unwrap_or(0),
    })
}

fn run_step(
    addr: SocketAddr,
    pid: u32,
    technique: &str,
    n: usize,
    keep_alive: bool,
    baseline: &Sample,
) -> Result<String, String> {
    let since = client::get(addr, "/stats")
        .map_err(|e| e.to_string())?
        .json()["events_published"]
        .as_u64()
        .unwrap_or(0);
    let path = match technique {
        "sse" => format!("/events/sse?since={since}"),
        _ => format!("/events/long-poll?since={since}&timeout=120"),
    };
    // Open N connections (long polls hold a request each; streams hold a response).
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        match open(addr, &path, keep_alive) {
            Ok(socket) => sockets.push(BufReader::new(socket)),
            Err(e) => return Err(format!("connection {i} refused: {e}")),
        }
    }
    let end = Instant::now() + Duration::from_secs(60);
    let mut held = sample(addr, pid)?;
    while (held.held as usize) < n {
        if Instant::now() > end {
            return Err(format!("only {} of {n} held after 60 s", held.held));
        }
        thread::sleep(Duration::from_millis(100));
        held = sample(addr, pid)?;
    }
    let per_connection = held.rss_kib.saturating_sub(baseline.rss_kib) as f64 / n as f64;

    // Split the sockets among reader threads; publish; each reader reads every socket's event.
    let mut groups: Vec<Vec<BufReader<TcpStream>>> = (0..READERS).map(|_| Vec::new()).collect();
    for (i, socket) in sockets.into_iter().enumerate() {
        groups[i % READERS].push(socket);
    }
    let mut latencies = Vec::new();
    let mut lost = 0;
    let rounds = if technique == "sse" { ROUNDS } else { 1 };
    for round in 0..rounds {
        let readers: Vec<_> = groups
            .drain(..)
            .map(|mut group| {
                let technique = technique.to_string();
                thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut missing = 0;
                    for socket in &mut group {
                        match read_event(socket, &technique) {
                            Some(sent) => seen.push(now_micros().saturating_sub(sent)),
                            None => missing += 1,
                        }
                    }
                    (group, seen, missing)
                })
            })
            .collect();
        let data = now_micros().to_string();
        client::publish(addr, &data).map_err(|e| format!("publish {round}: {e}"))?;
        for reader in readers {
            let (group, seen, missing) = reader.join().expect("reader");
            latencies.extend(seen);
            lost += missing;
            groups.push(group);
        }
    }
    // Leave, and wait until the server has let go of everything.
    drop(groups);
    let end = Instant::now() + Duration::from_secs(60);
    while sample(addr, pid)?.held > 0 {
        if Instant::now() > end {
            return Err("the server still holds connections 60 s after the clients left".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
    latencies.sort_unstable();
    let at = |p: f64| percentile_ms(&latencies, p);
    let ms = |value: Option<f64>| value.map_or("-".into(), |ms| format!("{ms:.1} ms"));
    Ok(format!(
        "| {n} | {} | {} | {} | {per_connection:.1} | {} | {} | {lost} |",
        held.held,
        held.threads,
        held.fds,
        ms(at(0.5)),
        ms(at(0.99)),
    ))
}

/// Send the request as a browser would (keep-alive: the connection's thread reads its next
/// request after the answer), or with `Connection: close`.
fn open(addr: SocketAddr, path: &str, keep_alive: bool) -> std::io::Result<TcpStream> {
    use std::io::Write;
    let mut socket = TcpStream::connect(addr)?;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: {connection}\r\n\r\n");
    socket.write_all(head.as_bytes())?;
    Ok(socket)
}

/// Read one event from a long-poll answer or an SSE stream; returns the microsecond
/// timestamp it carries.
fn read_event(socket: &mut BufReader<TcpStream>, technique: &str) -> Option<u128> {
    let _ = socket
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(60)));
    if technique == "sse" {
        // Skip the head and prelude the first time; then lines until a data: line.
        let mut line = String::new();
        loop {
            line.clear();
            if socket.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return data.parse().ok();
            }
        }
    }
    let (_, headers) = client::read_head(socket).ok()?;
    let length: u64 = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))?
        .1
        .parse()
        .ok()?;
    let mut body = String::new();
    socket.take(length).read_to_string(&mut body).ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["events"][0]["data"].as_str()?.parse().ok()
}
