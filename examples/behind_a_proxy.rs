//! The lab behind a real nginx: `cargo run --example behind_a_proxy` writes an nginx config
//! for the lab's address (the behind_a_proxy lesson's `nginx_config`), prints it and the
//! command that starts nginx with it, and serves every lesson (the page uses the SSE, long-poll
//! and WebSocket lessons' endpoints through nginx). Flags as for the lab (`-- --help`).
//!
//! Unless `--trust-proxy` is given, the lab trusts 127.0.0.1, where nginx connects from. With
//! a certificate in nginx's folder (the printed `openssl` command makes one), the config adds
//! an HTTP/2 server on port 8443.
//!
//! `cargo run --release --example behind_a_proxy -- --measure [CLIENTS]` measures instead:
//! the lab on a free port, nginx in front of it, and for each technique the same clients
//! direct and through nginx: latency (p50/p99) and bytes received per event.

mod common;

use reverse_ajax_lab::lessons::behind_a_proxy::{
    nginx_binary, nginx_config, NginxSetup, RunningNginx, Tls,
};
use reverse_ajax_lab::{CliError, Config};
use std::net::SocketAddr;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|a| a == "--measure") {
        let clients = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(100);
        return measure::run(clients);
    }
    let config = match Config::from_env_and_args(args.clone()) {
        Ok(config) => config,
        Err(CliError::Help(text)) => {
            println!("{text}\nThis example also takes --measure [CLIENTS].");
            return;
        }
        Err(CliError::Usage(message)) => {
            eprint!("{message}");
            std::process::exit(2);
        }
    };
    let lab: SocketAddr = config.socket_addr().unwrap_or_else(|message| {
        eprintln!("{message}");
        std::process::exit(2)
    });
    if config.trusted_proxies.is_empty() {
        args.extend(["--trust-proxy".into(), "127.0.0.1".into()]);
    }
    let dir = std::env::temp_dir().join("reverse-ajax-lab-nginx");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot make {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut setup = NginxSetup::for_lab(lab, dir.clone());
    let (certificate, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if certificate.exists() && key.exists() {
        setup.tls = Some(Tls {
            listen: SocketAddr::new(lab.ip(), 8443),
            certificate,
            key,
        });
    }
    let path = dir.join("nginx.conf");
    if let Err(e) = std::fs::write(&path, nginx_config(&setup)) {
        eprintln!("cannot write {}: {e}", path.display());
        std::process::exit(1);
    }
    println!("{}", nginx_config(&setup));
    println!("# The config above is in {}", path.display());
    println!(
        "# Start nginx with it (in another terminal; Debian: apt-get install nginx):\n\
         #   nginx -p {dir} -c {conf}\n\
         # then open http://{listen}/lessons/behind_a_proxy",
        dir = dir.display(),
        conf = path.display(),
        listen = setup.listen,
    );
    match &setup.tls {
        Some(tls) => println!(
            "#   and https://{}/lessons/behind_a_proxy (HTTP/2; the certificate is self-signed)",
            tls.listen
        ),
        None => println!(
            "# For HTTP/2 (port 8443), make a certificate, then run this example again:\n\
             #   openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN={ip} \
             -addext subjectAltName=IP:{ip} -keyout {dir}/key.pem -out {dir}/cert.pem",
            ip = lab.ip(),
            dir = dir.display()
        ),
    }
    reverse_ajax_lab::run_with_args(None, args);
}

/// `--measure`: direct against through nginx, per technique.
mod measure {
    use super::*;
    use reverse_ajax_lab::client;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// Events published per technique and per route.
    const EVENTS: usize = 20;

    /// The techniques measured, as `Reader::connect` asks for each.
    const TECHNIQUES: [&str; 8] = [
        "polling",
        "long-poll",
        "script-long-poll",
        "iframe",
        "multipart",
        "stream",
        "sse",
        "ws",
    ];

    pub fn run(clients: usize) {
        let lab = reverse_ajax_lab::RunningLab::start(Config {
            addr: "127.0.0.1:0".into(),
            generator: None,
            max_parked: clients * 2 + 100,
            heartbeat: Duration::from_secs(120),
            ..Config::default()
        })
        .expect("the lab starts");
        let nginx = start_nginx(lab.addr());
        println!(
            "{clients} clients per technique, {EVENTS} events 100 ms apart; the lab on {}, nginx on {}",
            lab.addr(),
            nginx.addr
        );
        println!("| technique | direct p50/p99 ms | through nginx p50/p99 ms | bytes/event direct | through nginx | lost direct/through |");
        println!("| --- | --- | --- | --- | --- | --- |");
        for technique in TECHNIQUES {
            let direct = once(technique, clients, lab.addr(), lab.addr());
            let proxied = once(technique, clients, nginx.addr, lab.addr());
            println!(
                "| {technique} | {:.1}/{:.1} | {:.1}/{:.1} | {:.0} | {:.0} | {}/{} |",
                direct.p50,
                direct.p99,
                proxied.p50,
                proxied.p99,
                direct.bytes,
                proxied.bytes,
                direct.lost,
                proxied.lost
            );
        }
    }

    struct Figures {
        p50: f64,
        p99: f64,
        /// Bytes each client received per event (heads, framing and all).
        bytes: f64,
        /// Events some client never received.
        lost: usize,
    }

    /// `clients` clients of `technique` on `target`; 20 events published on `lab`.
    fn once(technique: &str, clients: usize, target: SocketAddr, lab: SocketAddr) -> Figures {
        let since = client::get(lab, "/stats").unwrap().json()["events_published"]
            .as_u64()
            .unwrap();
        let (done, finished) = crossbeam_channel::unbounded();
        let start = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
        for _ in 0..clients {
            let (done, start, technique) = (done.clone(), start.clone(), technique.to_string());
            std::thread::spawn(move || {
                let reader = Reader::connect(&technique, target, since);
                start.wait();
                let _ = done.send(reader.map(|mut reader| reader.read_events(EVENTS)));
            });
        }
        // Everyone connected and asked; the held techniques wait until the lab holds them all
        // (the polls hold nothing: a moment for their first answers).
        start.wait();
        let held = |s: &serde_json::Value| {
            ["parked", "streams", "websockets"]
                .iter()
                .map(|k| s[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end
            && held(&client::get(lab, "/stats").unwrap().json()) < clients as u64
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for n in 0..EVENTS {
            let sent = common::now_micros();
            client::publish(lab, &format!("@@{sent}@@ event {n}")).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut latencies = Vec::new();
        let mut bytes = 0usize;
        let mut lost = 0;
        for _ in 0..clients {
            let (seen, read) = finished.recv().unwrap().expect("a client connects");
            lost += EVENTS - seen.len().min(EVENTS);
            latencies.extend(seen);
            bytes += read;
        }
        latencies.sort_unstable();
        let at = |q: f64| {
            let last = latencies.len().saturating_sub(1);
            latencies
                .get((last as f64 * q) as usize)
                .copied()
                .unwrap_or(0) as f64
                / 1000.0
        };
        Figures {
            p50: at(0.5),
            p99: at(0.99),
            bytes: bytes as f64 / (clients * EVENTS) as f64,
            lost,
        }
    }

    /// One client over a blocking socket, stamping each `@@micros@@` as it arrives.
    struct Reader {
        socket: TcpStream,
        technique: String,
        target: SocketAddr,
        since: u64,
        read: usize,
    }

    impl Reader {
        fn connect(technique: &str, target: SocketAddr, since: u64) -> std::io::Result<Reader> {
            let mut socket = TcpStream::connect(target)?;
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(Duration::from_secs(30)))?;
            let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let request = match technique {
                "polling" | "long-poll" | "script-long-poll" => ask(technique, target, since),
                "iframe" => get(&format!("/events/iframe?since={since}")),
                "multipart" => get(&format!("/events/multipart?since={since}")),
                "stream" => get(&format!("/events/stream?since={since}")),
                "sse" => get(&format!("/events/sse?since={since}")),
                _ => format!(
                    "GET /events/ws?since={since} HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                ),
            };
            socket.write_all(request.as_bytes())?;
            Ok(Reader {
                socket,
                technique: technique.into(),
                target,
                since,
                read: 0,
            })
        }

        /// Read until `count` markers have come: each one's latency in µs, and the bytes read.
        /// A stream's markers are stamped as they come; a polling technique's answer is read
        /// whole (by its `Content-Length`), stamped, and followed by the next request: at once
        /// for a long poll, 100 ms later for a poll.
        fn read_events(&mut self, count: usize) -> (Vec<u128>, usize) {
            let asks = matches!(
                self.technique.as_str(),
                "polling" | "long-poll" | "script-long-poll"
            );
            let mut seen = Vec::new();
            let mut text = String::new();
            let mut buffer = [0u8; 16384];
            let deadline = Instant::now() + Duration::from_secs(30);
            while seen.len() < count && Instant::now() < deadline {
                let n = match self.socket.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let arrived = common::now_micros();
                self.read += n;
                text.push_str(&String::from_utf8_lossy(&buffer[..n]));
                if !asks {
                    stamp(&mut text, arrived, &mut seen);
                    continue;
                }
                // Whole answers only: head, then Content-Length bytes.
                while let Some(end) = whole_answer(&text) {
                    let mut answer: String = text.drain(..end).collect();
                    let before = seen.len();
                    stamp(&mut answer, arrived, &mut seen);
                    self.since += (seen.len() - before) as u64;
                    if self.technique == "polling" {
                        std::thread::sleep(Duration::from_millis(100)); // the poll interval
                    }
                    let next = ask(&self.technique, self.target, self.since);
                    if self.socket.write_all(next.as_bytes()).is_err() {
                        return (seen, self.read);
                    }
                }
            }
            (seen, self.read)
        }
    }

    /// Stamp every whole `@@micros@@` marker in `text` as arrived at `arrived`, keeping what
    /// follows the last one.
    fn stamp(text: &mut String, arrived: u128, seen: &mut Vec<u128>) {
        while let Some(open) = text.find("@@") {
            let Some(close) = text[open + 2..].find("@@") else {
                return;
            };
            if let Ok(sent) = text[open + 2..open + 2 + close].parse::<u128>() {
                seen.push(arrived.saturating_sub(sent));
            }
            text.drain(..open + 2 + close + 2);
        }
    }

    /// Where the first whole answer in `text` ends, if it has all come.
    fn whole_answer(text: &str) -> Option<usize> {
        let head_end = text.find("\r\n\r\n")? + 4;
        let length: usize = text[..head_end].lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })?;
        (text.len() >= head_end + length).then_some(head_end + length)
    }

    /// A polling technique's request from `since`.
    fn ask(technique: &str, target: SocketAddr, since: u64) -> String {
        let path = match technique {
            "polling" => format!("/events/poll?since={since}"),
            "long-poll" => format!("/events/long-poll?since={since}&timeout=60"),
            _ => format!("/events/long-poll-script?callback=f&since={since}&timeout=60"),
        };
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    }

    /// nginx with the lesson's config on a free port, its files in a scratch folder.
    fn start_nginx(lab: SocketAddr) -> RunningNginx {
        let dir = std::env::temp_dir().join(format!("lab-nginx-measure-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut setup = NginxSetup::for_lab(lab, dir);
        setup.listen = SocketAddr::from(([127, 0, 0, 1], port));
        RunningNginx::start(&setup, nginx_binary())
            .expect("nginx runs (Debian: apt-get install nginx)")
    }
}
