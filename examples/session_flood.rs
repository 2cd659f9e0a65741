//! A loop of handshakes from one client, against each framework: Socket.IO, Bayeux, Pushlets
//! and Atmosphere. One client opens sessions over a keep-alive connection as fast as the lab
//! answers and never comes back (a student's buggy loop, or any script); meanwhile a second
//! client (another loopback address) opens a session and asks `/stats` every 100 ms. It prints
//! what was opened and refused, what the second client got, how fast `/stats` answered, and
//! the lab's memory before, at its peak, and once the sessions have expired. It prints
//! figures; it never passes or fails.
//!
//! ```text
//! cargo run --release --example session_flood                          # 20,000 handshakes each
//! cargo run --release --example session_flood -- --handshakes 5000 --framework bayeux
//! cargo run --release --example session_flood -- --lab-args "--max-sessions-per-client 100000"
//! ```
//!
//! The lab runs as a child process with its default caps (plus `--lab-args`) and short
//! expiries (`--expire SECONDS`, 5 by default), so that the memory's return shows within the
//! run. Memory is read from `/proc` (0 where there is none).

mod common;

use common::ChildLab;
use reverse_ajax_lab::client;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A framework's handshake: method, path, body, and whether an answer opened a session.
struct Framework {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: &'static str,
    opened: fn(u16, &str) -> bool,
}

const FRAMEWORKS: [Framework; 4] = [
    Framework {
        name: "socket_io",
        method: "GET",
        path: "/socket.io/?EIO=4&transport=polling",
        body: "",
        opened: |status, body| status == 200 && body.starts_with("0{"),
    },
    Framework {
        name: "bayeux",
        method: "POST",
        path: "/cometd",
        body: r#"[{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"id":"1"}]"#,
        opened: |_, body| body.contains(r#""successful":true"#),
    },
    Framework {
        name: "pushlets",
        method: "GET",
        path: "/pushlet/pushlet.srv?p_event=join&p_format=xml",
        body: "",
        opened: |status, _| status == 200,
    },
    Framework {
        name: "atmosphere",
        method: "GET",
        path: "/atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=long-polling&X-atmo-protocol=true",
        body: "",
        opened: |status, _| status == 200,
    },
];

fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let handshakes: usize = value("--handshakes").map_or(20_000, |v| v.parse().expect("a number"));
    let only = value("--framework");
    let lab_args = value("--lab-args").unwrap_or_default();
    // Every framework's sessions expire after this long unheard from.
    let expire: u64 = value("--expire").map_or(5, |v| v.parse().expect("seconds"));
    let (ms, secs) = ((expire * 1000).to_string(), expire.to_string());
    let half_ms = (expire * 500).to_string();
    println!("session_flood: {handshakes} handshakes from one client per framework; {lab_args}\n");
    println!("| framework | handshakes | time (s) | opened | refused | second client: opened / refused | /stats worst (ms) | open at the end → after expiry | RSS before → peak → after expiry (MiB) |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for framework in FRAMEWORKS
        .iter()
        .filter(|f| only.as_deref().is_none_or(|o| o == f.name))
    {
        let mut extra: Vec<&str> = vec![
            "--socket-io-connect-timeout",
            &ms,
            "--bayeux-timeout",
            &half_ms,
            "--bayeux-max-interval",
            &half_ms,
            "--pushlets-timeout",
            &secs,
            "--atmosphere-timeout",
            &secs,
        ];
        extra.extend(lab_args.split_whitespace());
        let lab = ChildLab::start(&extra);
        println!("{}", flood(&lab, framework, handshakes));
    }
}

/// The lab's resident memory in KiB, from `/proc`.
fn rss_kib(lab: &ChildLab) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", lab.pid()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One request on a keep-alive connection, and its answer's status and body.
fn exchange(stream: &mut BufReader<TcpStream>, addr: SocketAddr, f: &Framework) -> (u16, String) {
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        f.method,
        f.path,
        f.body.len(),
        f.body
    );
    stream.get_mut().write_all(head.as_bytes()).expect("write");
    let (status, headers) = client::read_head(stream).expect("an answer");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if header("Transfer-Encoding").is_some_and(|v| v.contains("chunked")) {
        while let Some(chunk) = client::read_chunk(stream).expect("a chunk") {
            body.extend(chunk);
        }
    } else {
        let length: u64 = header("Content-Length").map_or(0, |v| v.parse().unwrap_or(0));
        stream.take(length).read_to_end(&mut body).expect("a body");
    }
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    BufReader::new(stream)
}

fn flood(lab: &ChildLab, f: &Framework, handshakes: usize) -> String {
    let addr = lab.addr;
    let before = rss_kib(lab);
    let done = Arc::new(AtomicBool::new(false));
    // The second client: a session and a /stats every 100 ms, from 127.0.0.2.
    let second = {
        let done = done.clone();
        let (method, path, body) = (f.method, f.path, f.body);
        let opened = f.opened;
        thread::spawn(move || {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
            let json = [("Content-Type", "application/json")];
            let (mut ok, mut refused, mut worst) = (0, 0, Duration::ZERO);
            while !done.load(Ordering::SeqCst) {
                match client::send_from(from, addr, method, path, &json, body.as_bytes()) {
                    Ok(answer) if opened(answer.status, &answer.body) => ok += 1,
                    _ => refused += 1,
                }
                let asked = Instant::now();
                let _ = client::send_from(from, addr, "GET", "/stats", &[], b"");
                worst = worst.max(asked.elapsed());
                thread::sleep(Duration::from_millis(100));
            }
            (ok, refused, worst)
        })
    };
    let started = Instant::now();
    let (mut opened, mut refused, mut peak) = (0, 0, before);
    let mut stream = connect(addr);
    for n in 0..handshakes {
        let (status, body) = exchange(&mut stream, addr, f);
        match (f.opened)(status, &body) {
            true => opened += 1,
            false => refused += 1,
        }
        if n % 1000 == 999 {
            peak = peak.max(rss_kib(lab));
        }
    }
    let took = started.elapsed();
    peak = peak.max(rss_kib(lab));
    done.store(true, Ordering::SeqCst);
    let (b_ok, b_refused, worst) = second.join().expect("the second client");
    drop(stream);
    // Then wait for the sessions to expire (`--expire`), and read the memory again.
    let until = Instant::now() + Duration::from_secs(60);
    let open = |lab: &ChildLab| {
        client::get(lab.addr, "/stats")
            .map(|s| s.json()["sessions"][f.name]["open"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    let open_at_end = open(lab);
    while open(lab) > 0 && Instant::now() < until {
        thread::sleep(Duration::from_millis(200));
    }
    let after = rss_kib(lab);
    let left = open(lab);
    let mib = |kib: u64| kib as f64 / 1024.0;
    format!(
        "| {} | {handshakes} | {:.1} | {opened} | {refused} | {b_ok} / {b_refused} | {:.0} | {open_at_end} → {left} | {:.0} → {:.0} → {:.0} |",
        f.name,
        took.as_secs_f64(),
        worst.as_secs_f64() * 1000.0,
        mib(before),
        mib(peak),
        mib(after)
    )
}
