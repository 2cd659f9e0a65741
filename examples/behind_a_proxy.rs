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

use reverse_ajax_lab::lessons::behind_a_proxy::{nginx_config, NginxSetup, Tls};
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
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// The techniques measured, as `Reader::connect` asks for each.
    const TECHNIQUES: [&str; 4] = ["long-poll", "sse", "stream", "ws"];

    pub fn run(clients: usize) {
        let lab = reverse_ajax_lab::RunningLab::start(Config {
            addr: "127.0.0.1:0".into(),
            generator: None,
            max_parked: clients * 2 + 100,
            heartbeat: Duration::from_secs(120),
            ..Config::default()
        })
        .expect("the lab starts");
        let nginx = Nginx::start(lab.addr());
        println!(
            "{clients} clients per technique, 20 events 100 ms apart; the lab on {}, nginx on {}",
            lab.addr(),
            nginx.addr
        );
        println!("| technique | direct p50/p99 ms | through nginx p50/p99 ms | bytes/event direct | through nginx |");
        println!("| --- | --- | --- | --- | --- |");
        for technique in TECHNIQUES {
            let direct = once(technique, clients, lab.addr(), lab.addr());
            let proxied = once(technique, clients, nginx.addr, lab.addr());
            println!(
                "| {technique} | {:.1}/{:.1} | {:.1}/{:.1} | {:.0} | {:.0} |",
                direct.p50, direct.p99, proxied.p50, proxied.p99, direct.bytes, proxied.bytes
            );
        }
    }

    struct Figures {
        p50: f64,
        p99: f64,
        /// Bytes each client received per event (heads, framing and all).
        bytes: f64,
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
                let result = Reader::connect(&technique, target, since).map(|mut reader| {
                    start.wait();
                    reader.read_events(20)
                });
                let _ = done.send(result);
            });
        }
        // Everyone connected and asked (a held long poll, a stream's head, a handshake).
        start.wait();
        std::thread::sleep(Duration::from_millis(500)); // the last requests reach the lab
        for n in 0..20 {
            let sent = common::now_micros();
            client::publish(lab, &format!("@@{sent}@@ event {n}")).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut latencies = Vec::new();
        let mut bytes = 0usize;
        for _ in 0..clients {
            let (seen, read) = finished.recv().unwrap().expect("a client connects");
            latencies.extend(seen);
            bytes += read;
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        Figures {
            p50: at(0.5),
            p99: at(0.99),
            bytes: bytes as f64 / (clients * 20) as f64,
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
            let request = match technique {
                "long-poll" => long_poll(target, since),
                "sse" => format!("GET /events/sse?since={since} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
                "stream" => format!("GET /events/stream?since={since} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
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
        fn read_events(&mut self, count: usize) -> (Vec<u128>, usize) {
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
                // Every whole marker so far; keep what follows the last one.
                while let Some(open) = text.find("@@") {
                    let Some(close) = text[open + 2..].find("@@") else {
                        break;
                    };
                    if let Ok(sent) = text[open + 2..open + 2 + close].parse::<u128>() {
                        seen.push(arrived.saturating_sub(sent));
                        self.since += 1;
                    }
                    text.drain(..open + 2 + close + 2);
                }
                // A long poll's answer is whole when its body has come: ask again.
                if self.technique == "long-poll" && text.contains("\"last\":") {
                    text.clear();
                    let next = long_poll(self.target, self.since);
                    if self.socket.write_all(next.as_bytes()).is_err() {
                        break;
                    }
                }
            }
            (seen, self.read)
        }
    }

    fn long_poll(target: SocketAddr, since: u64) -> String {
        format!("GET /events/long-poll?since={since}&timeout=60 HTTP/1.1\r\nHost: {target}\r\n\r\n")
    }

    /// nginx with the lesson's config, on a free port, for as long as this lives.
    struct Nginx {
        child: Child,
        addr: SocketAddr,
    }

    impl Nginx {
        fn start(lab: SocketAddr) -> Nginx {
            let dir =
                std::env::temp_dir().join(format!("lab-nginx-measure-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut setup = NginxSetup::for_lab(lab, dir.clone());
            setup.listen = SocketAddr::from(([127, 0, 0, 1], port));
            std::fs::write(dir.join("nginx.conf"), nginx_config(&setup)).unwrap();
            let child = Command::new("nginx")
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .spawn()
                .expect("nginx runs (Debian: apt-get install nginx)");
            let end = Instant::now() + Duration::from_secs(30);
            while client::get(setup.listen, "/stats").is_err() {
                assert!(
                    Instant::now() < end,
                    "nginx did not start; see {}",
                    dir.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Nginx {
                child,
                addr: setup.listen,
            }
        }
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            // SIGTERM: nginx's master stops its workers, then itself (a SIGKILL would leave
            // the workers running).
            #[cfg(unix)]
            // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM)
            };
            #[cfg(not(unix))]
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
