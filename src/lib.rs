//! # Reverse Ajax Lab
//!
//! A small, blocking, thread-per-request server that teaches every way a server can push data
//! to a browser: polling, JSONP, piggyback, long polling, streaming, Server-Sent Events and
//! WebSocket. Read it as much as you run it: start at [`server`] (how a request reaches a
//! lesson), then [`hub`] (where events come from), then one file under [`lessons`].
//!
//! ```text
//! generator thread ──► hub (ids, history ring, subscribers) ──► lesson handlers ──► browser
//!       ▲                       ▲                                   │
//! POST /publish,           one bell (notify_all),        one thread per request; long-poll and
//! WebSocket messages      a channel where a thread       streaming threads park holding the request
//!                         also waits for another
//! ```
//!
//! `cargo run` serves every lesson on <http://127.0.0.1:8080/>; `cargo run --example NAME`
//! serves one. LESSONS.md is the book that goes with the code.

pub mod broker;
pub mod classroom;
pub mod client;
pub mod connection;
pub mod generator;
pub mod http;
pub mod hub;
pub mod lab;
pub mod lessons;
pub mod limits;
pub mod listener;
pub mod request;
pub mod server;
pub mod stats;
pub mod stream;
pub mod waiting_room;
pub mod workarounds;

pub use hub::{Event, Hub, Subscription};
pub use lab::Lab;
pub use server::RunningLab;

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Everything a run of the lab can be told. `Config::default()` is what `cargo run` uses.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the HTTP server listens (`--addr`, `LAB_ADDR`).
    pub addr: String,
    /// `--ws-addr`: one more port serving the same lab (an alias: WebSockets upgrade on the
    /// HTTP port itself); `None`: no such port.
    pub ws_addr: Option<String>,
    /// Connections for events one client address may hold at once (a classroom's fair share).
    pub max_per_client: usize,
    /// `--handlers N`: at most N connection threads, a fixed pool like a servlet container's
    /// (0, the default: as many as the requests need, up to the limits).
    pub handlers: usize,
    /// The second HTTP port, another origin for the cross-origin lessons; `None`: the HTTP
    /// port + 2 (or any port for port 0).
    pub other_addr: Option<String>,
    /// The generator's pause between events in milliseconds; `None` switches it off.
    pub generator: Option<RangeInclusive<u64>>,
    /// Events the hub remembers for cursors (`since`, `Last-Event-ID`).
    pub history: usize,
    /// Events buffered per subscription with a channel (a WebSocket, a framework's session)
    /// before it must refill from history.
    pub buffer: usize,
    /// Largest request body accepted; larger gets 413.
    pub max_body: usize,
    /// Long polls and streams held at once; one more gets 503 with `Retry-After`.
    pub max_parked: usize,
    /// Long-poll deadline when the client names none, and the largest it may name.
    pub long_poll_timeout: Duration,
    pub long_poll_max: Duration,
    /// Streams write a heartbeat after this much silence (it also finds clients that left).
    pub heartbeat: Duration,
    /// A connection that sends no (next) request head for this long is closed.
    pub idle_timeout: Duration,
    /// A write that cannot finish in this long drops its client: a stalled reader.
    pub write_timeout: Duration,
    /// Lower the process's descriptor limit to this (to watch the limits in a class, and for
    /// tests); `None`: raise it as far as allowed.
    pub max_fds: Option<u64>,
    /// How a long poll waits: its own sleeping thread, or a place in the waiting room.
    pub parking: ParkingMode,
    /// Parked long polls and streams look at their socket once a second for a client that
    /// closed its connection (`Request::client_left`); off shows the blocking design's own
    /// blindness.
    pub departures: bool,
    /// Serve one lesson alone (the examples); `None` serves them all.
    pub only: Option<&'static str>,
    /// The Socket.IO lesson's Engine.IO timings (`--socket-io-*`).
    pub socket_io: lessons::socket_io::Settings,
    /// A Pushlets session with no listener and no request for this long expires.
    pub pushlets_timeout: Duration,
    /// `--redis URL`: events go through this Redis (the scale-out lesson); `None`: the hub
    /// numbers them in this process.
    pub redis: Option<String>,
    /// `--peer URL`: other labs sharing the broker; their pages count as the lab's own origin
    /// (the scale-out page reads both labs).
    pub peers: Vec<String>,
    /// An Atmosphere resource with no connection for this long is forgotten, with its cursor.
    pub atmosphere_timeout: Duration,
    /// The Bayeux lesson's advice (`--bayeux-*`).
    pub bayeux: lessons::bayeux::Settings,
}

/// `--parking thread|queue`: see `waiting_room`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParkingMode {
    /// Each parked long poll keeps its connection thread asleep on a subscription.
    Thread,
    /// Parked long polls wait in a list; one dispatcher thread answers them all.
    Queue,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1:8080".into(),
            ws_addr: None,
            other_addr: None,
            max_per_client: 50,
            handlers: 0,
            generator: Some(0..=5000),
            history: 1024,
            buffer: 64,
            max_body: 64 * 1024,
            max_parked: 6000,
            long_poll_timeout: Duration::from_secs(30),
            long_poll_max: Duration::from_secs(120),
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_fds: None,
            parking: ParkingMode::Thread,
            departures: true,
            only: None,
            socket_io: lessons::socket_io::Settings::default(),
            bayeux: lessons::bayeux::Settings::default(),
            pushlets_timeout: Duration::from_secs(60),
            atmosphere_timeout: Duration::from_secs(60),
            redis: None,
            peers: Vec::new(),
        }
    }
}

pub const USAGE: &str = "\
Reverse Ajax Lab: every way a server can push data to a browser.

Usage: reverse-ajax-lab [options]        (or: cargo run --example LESSON -- [options])

  --addr HOST:PORT       where to listen (default 127.0.0.1:8080; env LAB_ADDR)
  --ws-addr HOST:PORT    an alias: the same lab on one more port (WebSockets upgrade on
                         the HTTP port itself; nothing listens here unless given)
  --other-addr HOST:PORT the same lab as another origin, for the cross-origin lessons
                         (default: the HTTP port + 2)
  --generator MIN..MAX   pause between generated events in ms (default 0..5000), or off
  --history N            events kept for cursors (default 1024)
  --max-parked N         long polls and streams held at once (default 6000)
  --max-per-client N     ...of which one client address may hold (default 50)
  --heartbeat SECONDS    stream heartbeat interval (default 15)
  --idle-timeout SECONDS close a connection that sends no request for this long (default 30)
  --write-timeout SECONDS drop a client that takes longer to accept a write (default 10)
  --max-fds N            lower the descriptor limit to N, to watch the lab meet its limits
  --parking MODE         how long polls wait: thread (a sleeping thread each, default)
                         or queue (a waiting list answered by one dispatcher thread)
  --departures on|off    parked long polls and streams look at their socket once a second
                         for a client that left (default on; off: only deadlines and
                         heartbeats find it)
  --handlers N           a fixed pool of N connection threads, a servlet container's
                         maxThreads (default 0: as many as the connections need; chapter 4)
  --max-body BYTES       largest request body (default 65536)
  --socket-io-ping-interval MS   Engine.IO pings every MS (default 25000)
  --socket-io-ping-timeout MS    ...and closes a session whose pong is later (default 20000)
  --socket-io-connect-timeout MS ...or that joins no namespace in time (default 45000)
  --bayeux-timeout MS            Bayeux holds a /meta/connect this long (default 20000)
  --bayeux-max-interval MS       ...and forgets a client silent this long after (default 10000)
  --pushlets-timeout SECONDS     a Pushlets session nobody listens for expires (default 60)
  --atmosphere-timeout SECONDS   an Atmosphere client away this long is forgotten (default 60)
  --redis URL            share events with other labs through Redis
                         (redis://127.0.0.1:6379; chapter 19, scale-out)
  --peer URL             another lab on the same Redis (http://127.0.0.1:8090), whose
                         pages may read this one; repeat for more
  -h, --help             this text

Logs go to stderr; RUST_LOG=debug shows every request park, wake and leave.";

/// Why the flags did not give a `Config`: the user asked for help (print it on stdout, exit 0)
/// or made a usage error (print the message on stderr, exit 2).
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    Help,
    Usage(String),
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Usage(message)
    }
}

impl Config {
    /// `LAB_ADDR` and command-line flags over the defaults.
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Config, CliError> {
        Config::from_parts(std::env::var("LAB_ADDR").ok(), args)
    }

    /// `from_env_and_args` with `LAB_ADDR`'s value given (tests cannot set the environment safely).
    pub fn from_parts(
        lab_addr: Option<String>,
        args: impl IntoIterator<Item = String>,
    ) -> Result<Config, CliError> {
        let mut config = Config::default();
        let mut addr_from_flag = false;
        if let Some(addr) = lab_addr {
            config.addr = addr;
        }
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            if flag == "-h" || flag == "--help" {
                return Err(CliError::Help);
            }
            let mut value = || {
                args.next()
                    .ok_or_else(|| format!("{flag} needs a value (see --help)"))
            };
            match flag.as_str() {
                "--addr" => {
                    config.addr = value()?;
                    addr_from_flag = true;
                }
                "--ws-addr" => config.ws_addr = Some(value()?),
                "--other-addr" => config.other_addr = Some(value()?),
                "--max-per-client" => config.max_per_client = parse_number(&flag, &value()?)?,
                "--handlers" => config.handlers = parse_number(&flag, &value()?)?,
                "--generator" => config.generator = parse_range(&value()?)?,
                "--history" => config.history = parse_number(&flag, &value()?)?,
                "--max-parked" => config.max_parked = parse_number(&flag, &value()?)?,
                "--max-body" => config.max_body = parse_number(&flag, &value()?)?,
                "--heartbeat" => config.heartbeat = parse_seconds(&flag, &value()?)?,
                "--idle-timeout" => config.idle_timeout = parse_seconds(&flag, &value()?)?,
                "--write-timeout" => config.write_timeout = parse_seconds(&flag, &value()?)?,
                "--socket-io-ping-interval" => {
                    config.socket_io.ping_interval = parse_millis(&flag, &value()?)?
                }
                "--socket-io-ping-timeout" => {
                    config.socket_io.ping_timeout = parse_millis(&flag, &value()?)?
                }
                "--socket-io-connect-timeout" => {
                    config.socket_io.connect_timeout = parse_millis(&flag, &value()?)?
                }
                "--pushlets-timeout" => config.pushlets_timeout = parse_seconds(&flag, &value()?)?,
                "--redis" => config.redis = Some(value()?),
                "--peer" => {
                    let url = value()?;
                    let Some(authority) = url.strip_prefix("http://") else {
                        return Err(CliError::Usage(format!(
                            "--peer takes a lab's URL, like http://127.0.0.1:8090, not {url:?}"
                        )));
                    };
                    if authority.parse::<std::net::SocketAddr>().is_err()
                        && !authority.starts_with("localhost:")
                    {
                        return Err(CliError::Usage(format!(
                            "--peer takes http://IP:PORT or http://localhost:PORT, not {url:?}"
                        )));
                    }
                    config.peers.push(url.trim_end_matches('/').to_string())
                }
                "--atmosphere-timeout" => {
                    config.atmosphere_timeout = parse_seconds(&flag, &value()?)?
                }
                "--bayeux-timeout" => config.bayeux.timeout = parse_millis(&flag, &value()?)?,
                "--bayeux-max-interval" => {
                    config.bayeux.max_interval = parse_millis(&flag, &value()?)?
                }
                "--max-fds" => config.max_fds = Some(parse_number(&flag, &value()?)? as u64),
                "--departures" => {
                    config.departures = match value()?.as_str() {
                        "on" => true,
                        "off" => false,
                        other => {
                            return Err(
                                format!("--departures takes on or off, got {other:?}").into()
                            )
                        }
                    }
                }
                "--parking" => {
                    config.parking = match value()?.as_str() {
                        "thread" => ParkingMode::Thread,
                        "queue" => ParkingMode::Queue,
                        other => {
                            return Err(
                                format!("--parking takes thread or queue, got {other:?}").into()
                            )
                        }
                    }
                }
                other => return Err(format!("unknown option {other:?} (see --help)").into()),
            }
        }
        // A bad address is a usage error too: name where it came from.
        if config.socket_addr().is_err() {
            let source = if addr_from_flag { "--addr" } else { "LAB_ADDR" };
            return Err(format!("{source} {:?} is not HOST:PORT", config.addr).into());
        }
        if let Some(other) = &config.other_addr {
            if other.parse::<SocketAddr>().is_err() {
                return Err(format!("--other-addr {other:?} is not HOST:PORT").into());
            }
        }
        if let Some(ws) = &config.ws_addr {
            if ws
                .to_socket_addrs()
                .map_or(true, |mut a| a.next().is_none())
            {
                return Err(format!("--ws-addr {ws:?} is not HOST:PORT").into());
            }
        }
        Ok(config)
    }

    /// The address the HTTP server binds, resolved.
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        self.addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| format!("--addr {:?} is not HOST:PORT", self.addr))
    }
}

fn parse_number(flag: &str, text: &str) -> Result<usize, String> {
    text.parse()
        .map_err(|_| format!("{flag} takes a whole number, got {text:?}"))
}

fn parse_millis(flag: &str, text: &str) -> Result<Duration, String> {
    match parse_number(flag, text)? {
        0 => Err(format!("{flag} must be at least 1 ms")),
        n => Ok(Duration::from_millis(n as u64)),
    }
}

fn parse_seconds(flag: &str, text: &str) -> Result<Duration, String> {
    match parse_number(flag, text)? {
        0 => Err(format!("{flag} must be at least 1 second")),
        n => Ok(Duration::from_secs(n as u64)),
    }
}

fn parse_range(text: &str) -> Result<Option<RangeInclusive<u64>>, String> {
    if text == "off" {
        return Ok(None);
    }
    let bad = || format!("--generator takes MIN_MS..MAX_MS or off, got {text:?}");
    let (min, max) = text.split_once("..").ok_or_else(bad)?;
    let (min, max): (u64, u64) = (
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    );
    if min > max {
        return Err(format!(
            "--generator {text:?}: MIN ({min}) exceeds MAX ({max}); write MIN_MS..MAX_MS"
        ));
    }
    Ok(Some(min..=max))
}

/// What `main` and every example do: read the flags, start, log the URL, serve forever.
pub fn run(only: Option<&'static str>) {
    run_with_args(only, std::env::args().skip(1));
}

/// `run` with the flags given here instead of the command line's (benchmarks start the lab
/// as a child process this way).
pub fn run_with_args(only: Option<&'static str>, args: impl IntoIterator<Item = String>) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = match Config::from_env_and_args(args) {
        Ok(config) => config,
        Err(CliError::Help) => {
            println!("{USAGE}");
            std::process::exit(0);
        }
        Err(CliError::Usage(message)) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    config.only = only;
    match RunningLab::start(config) {
        Ok(lab) => {
            let page = match only {
                Some(name) => format!("lessons/{name}"),
                None => String::new(),
            };
            let urls = classroom::student_urls(lab.addr(), &format!("/{page}"));
            let url = urls.first().cloned().unwrap_or_else(|| lab.url("/"));
            log::info!("Reverse Ajax Lab on {url} (WebSockets on the same port)");
            // Listening on every interface: every address a student can type.
            for other in urls.iter().skip(1) {
                log::info!("                also on {other}");
            }
            if lab.addr().ip().is_unspecified() {
                if let Some(teacher) = classroom::student_urls(lab.addr(), "/teacher").first() {
                    log::info!("Teacher's view: {teacher}");
                }
            }
            lab.join();
        }
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let args = ["--addr", "127.0.0.1:9000", "--generator", "off"].map(String::from);
        let config = Config::from_env_and_args(args).unwrap();
        assert_eq!(config.addr, "127.0.0.1:9000");
        assert!(config.generator.is_none());
        let args = ["--generator", "10..20"].map(String::from);
        assert_eq!(
            Config::from_env_and_args(args).unwrap().generator,
            Some(10..=20)
        );
        assert!(Config::from_env_and_args(["--nope".to_string()]).is_err());
        let args = ["--departures", "off"].map(String::from);
        assert!(!Config::from_env_and_args(args).unwrap().departures);
        assert!(usage_error(None, &["--departures", "no"]).contains("on or off"));
    }

    fn usage_error(lab_addr: Option<&str>, args: &[&str]) -> String {
        match Config::from_parts(
            lab_addr.map(String::from),
            args.iter().map(|a| a.to_string()),
        ) {
            Err(CliError::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn generator_range_backwards_says_min_exceeds_max() {
        let message = usage_error(None, &["--generator", "5..1"]);
        assert!(message.contains("MIN (5) exceeds MAX (1)"), "{message}");
    }

    #[test]
    fn bad_addresses_are_usage_errors_naming_their_source() {
        assert!(usage_error(Some("nonsense"), &[]).starts_with("LAB_ADDR \"nonsense\""));
        assert!(usage_error(None, &["--addr", "nonsense"]).starts_with("--addr \"nonsense\""));
        // A good --addr overrides a bad LAB_ADDR.
        assert!(Config::from_parts(
            Some("nonsense".into()),
            ["--addr", "127.0.0.1:1"].map(String::from)
        )
        .is_ok());
        assert!(usage_error(None, &["--ws-addr", "x"]).contains("--ws-addr"));
    }

    #[test]
    fn help_is_not_an_error_message() {
        assert_eq!(
            Config::from_parts(None, ["--help".to_string()]).unwrap_err(),
            CliError::Help
        );
    }
}
