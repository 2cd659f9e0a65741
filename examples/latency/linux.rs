//! The benchmark itself: its clients wait in `epoll`, and its figures come from `/proc`.

use crate::common::{self, now_micros, percentile_ms, ChildLab};
use reverse_ajax_lab::client;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const TECHNIQUES: &str = "long-poll stream sse ws socket.io";

/// `latency wakes N`: what waking N parked threads costs on this machine, with no network
/// at all. N threads wait, as the lab's parked requests do; one thread wakes them all, once
/// with a channel send each (a wake-up system call per thread, made one after another) and
/// once with one `Condvar::notify_all` (the hub's bell). Prints how long the waking thread
/// took and when the woken ones were running.
fn wakes(threads: usize) {
    use crossbeam_channel::bounded;
    use std::sync::{Arc, Barrier, Condvar, Mutex};
    for way in ["a channel send each", "one notify_all"] {
        for round in 1..=3 {
            let started = Arc::new(Mutex::new(None::<Instant>));
            let ready = Arc::new(Barrier::new(threads + 1));
            let bell = Arc::new((Mutex::new(false), Condvar::new()));
            let mut senders = Vec::new();
            let woken: Vec<_> = (0..threads)
                .map(|_| {
                    let (tx, rx) = bounded::<()>(1);
                    senders.push(tx);
                    let (ready, bell, started) = (ready.clone(), bell.clone(), started.clone());
                    let by_channel = way.starts_with("a channel");
                    std::thread::Builder::new()
                        .stack_size(64 * 1024)
                        .spawn(move || {
                            ready.wait();
                            if by_channel {
                                // BLOCKS: until the waker's send.
                                let _ = rx.recv_timeout(Duration::from_secs(30));
                            } else {
                                let (rung, wake) = &*bell;
                                let mut rung = rung.lock().unwrap();
                                while !*rung {
                                    // BLOCKS: until notify_all.
                                    rung = wake.wait(rung).unwrap();
                                }
                            }
                            let at = started.lock().unwrap().expect("the waker started");
                            at.elapsed()
                        })
                        .expect("a thread")
                })
                .collect();
            ready.wait();
            // Let every thread reach its wait.
            std::thread::sleep(Duration::from_millis(300));
            let at = Instant::now();
            *started.lock().unwrap() = Some(at);
            if way.starts_with("a channel") {
                for tx in &senders {
                    let _ = tx.try_send(());
                }
            } else {
                *bell.0.lock().unwrap() = true;
                bell.1.notify_all();
            }
            let waking = at.elapsed();
            let mut running: Vec<u128> = woken
                .into_iter()
                .map(|t| t.join().unwrap().as_micros())
                .collect();
            running.sort_unstable();
            let ms = |p| percentile_ms(&running, p).unwrap_or(f64::NAN);
            println!(
                "{way:>20}, round {round}: the waker took {:.2} ms; woken threads running: p50 {:.2} ms, p99 {:.2} ms",
                waking.as_secs_f64() * 1000.0,
                ms(0.5),
                ms(0.99)
            );
        }
    }
}

pub fn main() {
    if common::serve_if_asked() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let technique = args.first().cloned().unwrap_or_else(|| "long-poll".into());
    let clients: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    if technique == "wakes" {
        return wakes(clients);
    }
    let events: u64 = flag(&args, "--events").unwrap_or(20);
    let gap_ms: u64 = flag(&args, "--gap-ms").unwrap_or(200);
    if !TECHNIQUES.split(' ').any(|t| t == technique) {
        eprintln!("usage: latency TECHNIQUE CLIENTS [--events N] [--gap-ms MS] [--queue] [--redis URL] [--against peer [--markdown]] [--throughput [--seconds S] [--max-rate R]]; TECHNIQUE: {TECHNIQUES}; or: latency wakes THREADS");
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
    // Every client is on this machine, one address: a framework's sessions are capped per
    // address (`--max-sessions-per-client`, 200), so the cap is raised to the clients.
    let max_sessions = (clients + 100).max(10_000).to_string();
    let mut lab_args = vec![
        "--parking",
        parking,
        "--max-parked",
        &max_parked,
        "--heartbeat",
        "120",
        "--max-sessions",
        &max_sessions,
        "--max-sessions-per-client",
        &max_sessions,
    ];
    // Through a broker (chapter 20): every publish goes to Redis and back.
    let redis = args
        .iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1));
    if let Some(url) = redis {
        lab_args.extend(["--redis", url.as_str()]);
    }
    let against_peer = args
        .iter()
        .position(|a| a == "--against")
        .and_then(|i| args.get(i + 1))
        .is_some_and(|who| who == "peer");
    if against_peer && technique == "socket.io" {
        eprintln!("--against peer: the peer speaks long-poll, stream, sse and ws only");
        std::process::exit(2);
    }
    let run = Run {
        technique: technique.clone(),
        clients,
        events,
        gap_ms,
    };
    if args.iter().any(|a| a == "--throughput") {
        let seconds = flag(&args, "--seconds").unwrap_or(3).max(1);
        let max_rate = flag(&args, "--max-rate").unwrap_or(u64::MAX);
        let rates: Vec<u64> = RATES.into_iter().filter(|&r| r <= max_rate).collect();
        println!("{technique} throughput: {clients} clients, {seconds} s at each rate; passes with nothing lost and p99 under 100 ms");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 1..=if against_peer { 2 } else { 1 } {
            let lab = ChildLab::start(&lab_args);
            println!("round {round}, lab ({parking} parking):");
            ours.push(throughput(
                &run,
                &rates,
                seconds,
                lab.addr,
                lab.websocket_addr(),
                lab.pid(),
            ));
            drop(lab);
            if against_peer {
                let peer = Peer::start();
                println!("round {round}, peer:");
                theirs.push(throughput(
                    &run,
                    &rates,
                    seconds,
                    peer.addr,
                    peer.addr,
                    peer.pid(),
                ));
            }
        }
        if args.iter().any(|a| a == "--markdown") {
            let servers = [("lab", &ours), ("peer", &theirs)];
            println!("\n| {clients} {technique} clients | highest rate that passed | server CPU there | p50 / p99 there | first rate over |");
            println!("| --- | ---: | ---: | ---: | --- |");
            for (server, climbs) in servers {
                for (round, climb) in climbs.iter().enumerate() {
                    let there = climb.at_best.map_or("-".into(), |(cpu, p50, p99)| {
                        format!("{:.0} % | {p50:.1} / {p99:.1} ms", cpu * 100.0)
                    });
                    let over = climb.over.map_or("none".into(), |(rate, p99, lost)| {
                        format!("{rate}/s: p99 {p99:.0} ms, {lost} lost")
                    });
                    println!(
                        "| {server}, round {} | {}/s | {there} | {over} |",
                        round + 1,
                        climb.best
                    );
                }
            }
        }
        let ours: Vec<u64> = ours.iter().map(|c| c.best).collect();
        let theirs: Vec<u64> = theirs.iter().map(|c| c.best).collect();
        let best = |all: &[u64]| all.iter().copied().min().unwrap_or(0);
        let rounds = |all: &[u64]| {
            let each: Vec<String> = all.iter().map(|r| format!("{r}/s")).collect();
            each.join(" and ")
        };
        print!(
            "\nhighest rate that passed every round: lab {}/s",
            best(&ours)
        );
        if against_peer {
            let (lab, peer) = (best(&ours), best(&theirs));
            print!(
                ", peer {peer}/s; lab / peer {:.2}x (round by round: lab {}, peer {})",
                lab as f64 / peer.max(1) as f64,
                rounds(&ours),
                rounds(&theirs)
            );
        }
        println!();
        return;
    }
    if !against_peer {
        let lab = ChildLab::start(&lab_args);
        let measured = measure(&run, lab.addr, lab.websocket_addr(), lab.pid());
        println!("{technique} ({parking} parking): {clients} clients, {events} events {gap_ms} ms apart, delivered {}, lost {}", measured.step.delivered, measured.step.lost);
        measured.print();
        return;
    }
    // `--against peer`: the lab and the single-threaded Node peer (bench/peer), two rounds
    // each, interleaved (lab, peer, lab, peer), so a slow moment of the machine falls on both.
    println!("{technique}: {clients} clients, {events} events {gap_ms} ms apart; the lab ({parking} parking) against the Node peer, interleaved");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=2 {
        let lab = ChildLab::start(&lab_args);
        let measured = measure(&run, lab.addr, lab.websocket_addr(), lab.pid());
        println!(
            "round {round}, lab:  delivered {}, lost {}",
            measured.step.delivered, measured.step.lost
        );
        measured.print();
        ours.push(measured);
        drop(lab);
        let peer = Peer::start();
        let measured = measure(&run, peer.addr, peer.addr, peer.pid());
        println!(
            "round {round}, peer: delivered {}, lost {}",
            measured.step.delivered, measured.step.lost
        );
        measured.print();
        theirs.push(measured);
    }
    let mean = |all: &[Measured], f: fn(&Measured) -> f64| {
        all.iter().map(f).sum::<f64>() / all.len() as f64
    };
    let (p50, p99) = (|m: &Measured| m.step.p50_ms, |m: &Measured| m.step.p99_ms);
    let (lab50, lab99) = (mean(&ours, p50), mean(&ours, p99));
    let (peer50, peer99) = (mean(&theirs, p50), mean(&theirs, p99));
    println!(
        "\nmean of the rounds: lab p50 {lab50:.2} ms, p99 {lab99:.2} ms, {:.1} µs CPU per event; \
         peer p50 {peer50:.2} ms, p99 {peer99:.2} ms, {:.1} µs CPU per event; p99 lab / peer {:.2}x ({})",
        mean(&ours, |m| m.step.cpu_us_per_event),
        mean(&theirs, |m| m.step.cpu_us_per_event),
        lab99 / peer99,
        if lab99 <= peer99 { "the lab at or ahead" } else { "the lab behind" }
    );
    // `--markdown`: the same means as one row of the book's table (scripts/figures prints
    // its header).
    if args.iter().any(|a| a == "--markdown") {
        let kib = mean(&ours, |m| m.kib_per_connection);
        let peer_kib = mean(&theirs, |m| m.kib_per_connection);
        let cpu = mean(&ours, |m| m.step.cpu_us_per_event);
        let peer_cpu = mean(&theirs, |m| m.step.cpu_us_per_event);
        let threads: Vec<String> = ours.iter().map(|m| m.threads.to_string()).collect();
        let label = match parking {
            "queue" => format!("{technique}, `--parking queue`"),
            _ => technique.clone(),
        };
        let requests = mean(&ours, |m| m.requests_per_event);
        let bytes = mean(&ours, |m| m.bytes_per_event);
        println!(
            "| {label} | {lab50:.1} / {lab99:.1} ms | {peer50:.1} / {peer99:.1} ms | {:.2}× | {kib:.1} / {peer_kib:.1} KiB | {cpu:.1} / {peer_cpu:.1} µs | {} | {requests:.2} / {bytes:.0} |",
            lab99 / peer99,
            threads.join(", ")
        );
    }
}

/// What one run asks for.
struct Run {
    technique: String,
    clients: usize,
    events: u64,
    gap_ms: u64,
}

/// What one run measured of one server: its one step, and what it held.
struct Measured {
    step: Step,
    kib_per_connection: f64,
    threads: serde_json::Value,
    requests_per_event: f64,
    bytes_per_event: f64,
}

impl Measured {
    fn print(&self) {
        println!(
            "  latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.step.p50_ms, self.step.p99_ms, self.step.max_ms
        );
        if let Some((n, slowest, typical)) = self.step.slowest_event {
            println!("  slowest event: #{n}, median {slowest:.2} ms across the clients (the events' median: {typical:.2} ms)");
        }
        // The load generator's own share: one thread, so a core at most. Well under one, it
        // reads what arrives as fast as it comes and is not what is measured.
        println!(
            "  clients: one thread, CPU {:.0} % of a core",
            self.step.clients_cpu * 100.0
        );
        println!(
            "  server: CPU {:.0} % ({:.1} µs per delivered event), {:.1} KiB resident per held connection, {} threads; {:.2} requests and {:.0} bytes per delivered event",
            self.step.cpu * 100.0,
            self.step.cpu_us_per_event,
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
    let rss_before = proc_field(pid, "VmRSS:");
    let mut clients = Clients::connect(&run.technique, run.clients, addr, ws_addr);
    let rss_held = proc_field(pid, "VmRSS:");
    let step = clients.step(
        run.events,
        Duration::from_millis(run.gap_ms),
        Duration::from_secs(10),
        pid,
    );
    let stats = client::get(addr, "/stats").unwrap().json();
    let lesson = match run.technique.as_str() {
        "long-poll" => "long_polling",
        "stream" => "fetch_streaming",
        "ws" => "websocket",
        "socket.io" => "socket_io",
        other => other,
    };
    let counters = &stats["lessons"][lesson];
    let delivered = step.delivered.max(1) as f64;
    Measured {
        step,
        kib_per_connection: rss_held.saturating_sub(rss_before) as f64 / run.clients as f64,
        threads: stats["threads"].clone(),
        requests_per_event: counters["requests"].as_f64().unwrap_or(0.0) / delivered,
        bytes_per_event: counters["bytes"].as_f64().unwrap_or(0.0) / delivered,
    }
}

/// The event rates `--throughput` tries, in events a second, lowest first: a fifth more
/// each step.
const RATES: [u64; 20] = [
    20, 25, 30, 36, 43, 52, 62, 75, 90, 108, 130, 156, 187, 225, 270, 324, 389, 467, 560, 672,
];

/// `--throughput`: the same clients held throughout, the rate raised step by step
/// (`--seconds` each) until a step loses an event, misses its rate, or has a p99 of 100 ms or
/// more. Returns the highest rate that passed (0 if none did).
/// What one climb of the rates found: the highest rate that passed, what the server spent
/// there, and the first rate that did not.
#[derive(Default)]
struct Climb {
    best: u64,
    /// At `best`: the server's CPU (fraction of one core), p50 and p99 in ms.
    at_best: Option<(f64, f64, f64)>,
    /// The first rate over: the rate, its p99, and what was lost.
    over: Option<(u64, f64, u64)>,
}

fn throughput(
    run: &Run,
    rates: &[u64],
    seconds: u64,
    addr: SocketAddr,
    ws_addr: SocketAddr,
    pid: u32,
) -> Climb {
    let mut clients = Clients::connect(&run.technique, run.clients, addr, ws_addr);
    let mut climb = Climb::default();
    for &rate in rates {
        let events = rate * seconds;
        let step = clients.step(
            events,
            Duration::from_micros(1_000_000 / rate),
            Duration::from_secs(5),
            pid,
        );
        let reached = step.achieved_rate >= rate as f64 * 0.95;
        let passed = step.lost == 0 && step.p99_ms < 100.0 && reached;
        println!(
            "  {rate:>5}/s: sent at {:.0}/s, delivered {}, lost {}, p50 {:.2} ms, p99 {:.2} ms, server CPU {:.0} % (clients {:.0} %){}",
            step.achieved_rate,
            step.delivered,
            step.lost,
            step.p50_ms,
            step.p99_ms,
            step.cpu * 100.0,
            step.clients_cpu * 100.0,
            if passed { "" } else { "  ← over" }
        );
        if !passed {
            climb.over = Some((rate, step.p99_ms, step.lost));
            break;
        }
        climb.best = rate;
        climb.at_best = Some((step.cpu, step.p50_ms, step.p99_ms));
    }
    climb
}

/// Every client of one run, read by this thread through one epoll set.
struct Clients {
    epoll: i32,
    conns: Vec<Conn>,
    technique: String,
    addr: SocketAddr,
}

/// What one step (a number of events at one rate) measured.
struct Step {
    delivered: usize,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    cpu: f64,
    /// The server's CPU time over the measured period, divided by the deliveries, in µs.
    cpu_us_per_event: f64,
    /// The event whose median latency across the clients was the highest (its number from
    /// 1, that median in ms), and the median of the events' medians: one event late for
    /// everyone (work done in phase by every thread) shows as a gap between the two.
    slowest_event: Option<(usize, f64, f64)>,
    /// This process's own CPU: the clients share the machine with the server.
    clients_cpu: f64,
    achieved_rate: f64,
}

impl Clients {
    /// Connect every client, send its first request, and wait until the server holds all.
    fn connect(technique: &str, clients: usize, addr: SocketAddr, ws_addr: SocketAddr) -> Clients {
        // SAFETY: epoll_create1 takes no pointers.
        let epoll = unsafe { libc::epoll_create1(0) };
        assert!(epoll >= 0, "epoll_create1");
        let conns: Vec<Conn> = (0..clients)
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
                // SAFETY: the descriptor is open and `event` lives through the call.
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
        let mut all = Clients {
            epoll,
            conns,
            technique: technique.to_string(),
            addr,
        };
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
            all.read_what_arrived(Duration::from_millis(20));
        }
        all
    }

    /// Publish `events`, one every `interval`, read until every client has them all (or
    /// `grace` after the last), and measure.
    fn step(&mut self, events: u64, interval: Duration, grace: Duration, pid: u32) -> Step {
        for conn in &mut self.conns {
            conn.seen.clear();
        }
        let cpu_before = cpu_ticks(pid);
        let own_before = cpu_ticks(std::process::id());
        let started = Instant::now();
        let publisher = Publisher::start(self.addr, events, interval);
        let mut deadline = None;
        while self.conns.iter().any(|c| (c.seen.len() as u64) < events) {
            if deadline.is_none() && publisher.is_finished() {
                deadline = Some(Instant::now() + grace);
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                break;
            }
            self.read_what_arrived(Duration::from_millis(20));
        }
        let sent_for = publisher.join().unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;
        let cpu = cpu_seconds / seconds;
        let clients_cpu = (cpu_ticks(std::process::id()) - own_before) as f64 / 100.0 / seconds;
        // Per event (the n-th each client saw): the median across the clients.
        let mut medians: Vec<(usize, f64)> = (0..events as usize)
            .filter_map(|n| {
                let mut at: Vec<u128> = self
                    .conns
                    .iter()
                    .filter_map(|c| c.seen.get(n).copied())
                    .collect();
                at.sort_unstable();
                percentile_ms(&at, 0.5).map(|ms| (n + 1, ms))
            })
            .collect();
        medians.sort_by(|a, b| a.1.total_cmp(&b.1));
        let slowest_event = medians
            .last()
            .map(|&(n, ms)| (n, ms, medians[medians.len() / 2].1));
        let mut latencies: Vec<u128> = self
            .conns
            .iter()
            .flat_map(|c| c.seen.iter().copied())
            .collect();
        latencies.sort_unstable();
        let ms = |p| percentile_ms(&latencies, p).unwrap_or(f64::NAN);
        Step {
            slowest_event,
            cpu_us_per_event: cpu_seconds * 1e6 / latencies.len().max(1) as f64,
            delivered: latencies.len(),
            lost: (self.conns.len() as u64 * events).saturating_sub(latencies.len() as u64),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: ms(1.0),
            cpu,
            clients_cpu,
            achieved_rate: if events < 2 {
                f64::INFINITY
            } else {
                (events - 1) as f64 / sent_for.as_secs_f64().max(1e-9)
            },
        }
    }

    /// Wait up to `timeout` for readable sockets; read each dry, stamping what arrives.
    fn read_what_arrived(&mut self, timeout: Duration) {
        let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        // BLOCKS: until some socket has bytes, or the timeout.
        // SAFETY: `ready` has room for the number of events we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll,
                ready.as_mut_ptr(),
                ready.len() as i32,
                timeout.as_millis() as i32,
            )
        };
        let mut chunk = vec![0u8; 64 * 1024];
        for event in ready.iter().take(n.max(0) as usize) {
            let conn = &mut self.conns[event.u64 as usize];
            loop {
                match conn.socket.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => {
                        let arrived = now_micros();
                        conn.buffer.extend_from_slice(&chunk[..k]);
                        take_events(conn, &self.technique, self.addr, arrived);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
    }
}

/// Publishes `events` over one keep-alive connection, one every `interval`, each stamped
/// with the microseconds it was written. Requests are pipelined (a second thread reads and
/// discards the answers), so a slow answer never holds the next event back; the thread
/// returns how long the sending took.
struct Publisher;

impl Publisher {
    fn start(
        addr: SocketAddr,
        events: u64,
        interval: Duration,
    ) -> std::thread::JoinHandle<Duration> {
        std::thread::spawn(move || {
            let mut socket = TcpStream::connect(addr).expect("the publisher connects");
            socket.set_nodelay(true).unwrap();
            let mut answers = socket.try_clone().unwrap();
            // BLOCKS: in read, until answers arrive or the connection closes.
            let drain = std::thread::spawn(move || {
                let mut sink = [0u8; 16 * 1024];
                while answers.read(&mut sink).is_ok_and(|n| n > 0) {}
            });
            let start = Instant::now();
            for i in 0..events {
                let due = start + interval * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let body = format!("@@{}@@", now_micros());
                let request = format!(
                    "POST /publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(request.as_bytes()).expect("publish");
            }
            let took = start.elapsed();
            let _ = socket.shutdown(std::net::Shutdown::Write);
            let _ = drain.join();
            took
        })
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

/// Every client starts "from now" (no `since`): with `--redis`, a lab starts with the
/// stream's history in its ring, events of an earlier run that are not this run's to time.
fn first_request(technique: &str, addr: SocketAddr, ws_addr: SocketAddr) -> String {
    match technique {
        "long-poll" => format!("GET /events/long-poll?timeout=60 HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "stream" => format!("GET /events/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "sse" => format!("GET /events/sse HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
        "socket.io" => format!(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
        _ => format!(
            "GET /events/ws HTTP/1.1\r\nHost: {ws_addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ),
    }
}

fn long_poll_request(addr: SocketAddr, since: u64) -> String {
    format!("GET /events/long-poll?since={since}&timeout=60 HTTP/1.1\r\nHost: {addr}\r\n\r\n")
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
    // (Bytes, not text: at a hundred thousand events a second this loop shares the machine
    // with the server, so it allocates nothing.)
    let buffer = &conn.buffer;
    let find = |from: usize| {
        buffer[from.min(buffer.len())..]
            .windows(2)
            .position(|pair| pair == b"@@")
            .map(|at| from + at)
    };
    let mut cut = 0;
    loop {
        let Some(open) = find(cut) else {
            // Maybe half of an opening "@@" at the end.
            cut = if buffer.ends_with(b"@") {
                buffer.len() - 1
            } else {
                buffer.len()
            };
            break;
        };
        let Some(close) = find(open + 2) else {
            cut = open; // an opened marker: keep it for the next read
            break;
        };
        let sent = std::str::from_utf8(&buffer[open + 2..close])
            .ok()
            .and_then(|digits| digits.parse::<u128>().ok());
        if let Some(sent) = sent {
            conn.seen.push(arrived.saturating_sub(sent));
        }
        cut = close + 2;
    }
    conn.buffer.drain(..cut);
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
