//! Two labs on one Redis: `cargo run --example scale_out` (Redis on 127.0.0.1:6379: start one
//! with `redis-server --port 6379 --save ''`, or name another with `--redis URL`). Lab A on
//! 127.0.0.1:8080 (with the generator), lab B on 127.0.0.1:8090; each names the other as its
//! peer. Open http://127.0.0.1:8080/lessons/scale_out and publish through either.
//! `RUST_LOG=debug` shows each event arriving from the stream in both labs.
//!
//! `cargo run --release --example scale_out -- --bench 10` measures instead: two labs on free
//! ports, eight publishers (four per lab) posting as fast as they can for 10 s; prints the
//! events per second one Redis carried and checks that both labs received every one.

use reverse_ajax_lab::{client, Config, RunningLab};
use std::time::{Duration, Instant};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().position(|a| a == "--bench").map(|i| {
        args.remove(i);
        args.get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .map(|_| args.remove(i).parse().unwrap())
            .unwrap_or(10)
    });
    let mut shared = match Config::from_env_and_args(args) {
        Ok(config) => config,
        Err(reverse_ajax_lab::CliError::Help(text)) => {
            println!("{text}\nThis example also takes --bench [SECONDS].");
            std::process::exit(0);
        }
        Err(reverse_ajax_lab::CliError::Usage(message)) => {
            eprintln!(
                "{message}usage: cargo run --example scale_out [-- --redis URL] [--bench SECONDS]"
            );
            std::process::exit(2);
        }
    };
    let redis = shared
        .redis
        .get_or_insert_with(|| "redis://127.0.0.1:6379".into())
        .clone();
    let start = |config: Config| {
        RunningLab::start(config).unwrap_or_else(|e| {
            eprintln!(
                "{e}\nThe scale-out lesson needs Redis at {redis}: run `redis-server --port 6379 \
                 --save ''` (Debian: apt install redis-server), or pass --redis URL."
            );
            std::process::exit(1);
        })
    };
    if let Some(seconds) = bench {
        let quiet = |_| Config {
            addr: "127.0.0.1:0".into(),
            generator: None,
            ..shared.clone()
        };
        let labs = [start(quiet(())), start(quiet(()))];
        return throughput(&labs, Duration::from_secs(seconds));
    }
    // Before any thread starts: Ctrl-C is for this thread to hear.
    reverse_ajax_lab::shutdown::block_stop_signals();
    let (a, b) = ("127.0.0.1:8080", "127.0.0.1:8090");
    let config = |addr: &str, peer: &str, generator: bool| Config {
        addr: addr.into(),
        peers: vec![format!("http://{peer}")],
        generator: if generator {
            shared.generator.clone()
        } else {
            None
        },
        ..shared.clone()
    };
    let labs = [start(config(a, b, true)), start(config(b, a, false))];
    log::info!("lab A on http://{a}/lessons/scale_out, lab B on http://{b}/ (both on {redis})");
    // Ctrl-C stops both.
    reverse_ajax_lab::shutdown::wait_for_a_stop_signal();
    for lab in labs {
        let _ = lab.stop();
    }
}

/// Publishers on both labs for `length`; events per second, and every event on both labs.
fn throughput(labs: &[RunningLab; 2], length: Duration) {
    let first = client::get(labs[0].addr(), "/stats").unwrap().json()["events_published"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|n| {
                let addr = labs[n % 2].addr();
                scope.spawn(move || {
                    let (mut ok, mut refused) = (0, 0);
                    while started.elapsed() < length {
                        match client::publish(addr, "x") {
                            Ok(_) => ok += 1,
                            Err(_) => refused += 1,
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let took = started.elapsed().as_secs_f64();
    let published: u64 = counts.iter().map(|c| c.0).sum();
    let refused: u64 = counts.iter().map(|c| c.1).sum();
    let last = first + published;
    let end = Instant::now() + Duration::from_secs(10);
    let on = |lab: &RunningLab| {
        client::get(lab.addr(), "/stats").unwrap().json()["events_published"]
            .as_u64()
            .unwrap()
    };
    while labs.iter().any(|lab| on(lab) < last) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{published} events in {took:.1} s through one Redis for two labs: {:.0} events/s \
         ({refused} refused); lab A has up to {}, lab B up to {} (expected {last})",
        published as f64 / took,
        on(&labs[0]),
        on(&labs[1]),
    );
}
