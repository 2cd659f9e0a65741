//! Everything a run of the lab can be told: the flags, their `LAB_*` environment variables,
//! and the `Config` they make.
//!
//! The flags are declared once, in `Flags`, on clap: its derive turns each field's doc comment
//! into the help text, so `--help` cannot drift from what is parsed. `--addr=HOST:PORT` works as
//! well as `--addr HOST:PORT`, `--version` prints the version, and every flag has an
//! environment variable (`--max-parked` is `LAB_MAX_PARKED`); a flag beats its variable. Help
//! goes to stdout (exit 0), usage errors to stderr (exit 2).

use clap::{Parser, ValueEnum};
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
    /// Connections of any kind one client address may have open at once (being read, held,
    /// idle, WebSockets): at most half of what the lab can hold, so that one address never
    /// takes the room's. This machine and trusted proxies are not limited.
    pub max_connections_per_client: usize,
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
    /// Long polls, streams and WebSockets held at once; one more gets 503 with `Retry-After`.
    /// 0 (the default): as many as the lab can hold (`limits::Capacity::holdable`), set at start.
    pub max_parked: usize,
    /// Long-poll deadline when the client names none, and the largest it may name.
    pub long_poll_timeout: Duration,
    pub long_poll_max: Duration,
    /// Streams write a heartbeat after this much silence (it also finds clients that left).
    pub heartbeat: Duration,
    /// A connection that sends no (next) request head for this long is closed.
    pub idle_timeout: Duration,
    /// From a request's first byte, its head and body must all have come within this: else
    /// 408 and the connection closed (a client trickling bytes holds its thread no longer).
    pub request_timeout: Duration,
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
    pub socket_io: SocketIoSettings,
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
    pub bayeux: BayeuxSettings,
    /// The caps on each framework's sessions (`--max-sessions`, `--max-sessions-per-client`).
    pub sessions: SessionLimits,
    /// `--trust-proxy IP`: requests whose TCP peer is one of these addresses come through a
    /// proxy, and its `X-Forwarded-For`, `X-Forwarded-Host` and `X-Forwarded-Proto` say who
    /// the client is and how it reached the lab (the behind_a_proxy lesson). From anyone
    /// else, those headers are ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The caps on one framework's sessions (`--max-sessions`, `--max-sessions-per-client`;
/// `sessions`): Socket.IO's sessions, Bayeux's clients, Pushlets' sessions and Atmosphere's
/// resources are each capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Sessions of the framework, from every client together.
    pub max: usize,
    /// Sessions of the framework one client (one address) may hold.
    pub per_client: usize,
}

/// The Engine.IO server's settings (`--socket-io-*` flags; `lessons::socket_io`).
#[derive(Clone, Debug)]
pub struct SocketIoSettings {
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest polling body or WebSocket message accepted, in bytes.
    pub max_payload: usize,
}

impl Default for SocketIoSettings {
    fn default() -> SocketIoSettings {
        SocketIoSettings {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            connect_timeout: Duration::from_millis(45_000),
            max_payload: 1_000_000,
        }
    }
}

/// The Bayeux server's advice (`--bayeux-*` flags; `lessons::bayeux`).
#[derive(Clone, Debug)]
pub struct BayeuxSettings {
    /// How long a `/meta/connect` is held when nothing is delivered.
    pub timeout: Duration,
    /// A client that sends no connect for this long after its last answer expires.
    pub max_interval: Duration,
}

impl Default for BayeuxSettings {
    fn default() -> BayeuxSettings {
        BayeuxSettings {
            timeout: Duration::from_secs(20),
            max_interval: Duration::from_secs(10),
        }
    }
}

/// `--parking thread|queue`: see `waiting_room`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
            max_connections_per_client: 256,
            handlers: 0,
            generator: Some(0..=5000),
            history: 1024,
            buffer: 64,
            max_body: 64 * 1024,
            max_parked: 0,
            long_poll_timeout: Duration::from_secs(30),
            long_poll_max: Duration::from_secs(120),
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(20),
            write_timeout: Duration::from_secs(10),
            max_fds: None,
            parking: ParkingMode::Thread,
            departures: true,
            only: None,
            socket_io: SocketIoSettings::default(),
            bayeux: BayeuxSettings::default(),
            sessions: SessionLimits {
                max: 10_000,
                per_client: 200,
            },
            pushlets_timeout: Duration::from_secs(60),
            atmosphere_timeout: Duration::from_secs(60),
            redis: None,
            peers: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Reverse Ajax Lab: every way a server can push data to a browser.
///
/// Every lesson on one port (`cargo run`), or one lesson alone (`cargo run --example LESSON --
/// [options]`). Every option can also be set by its environment variable; an option given
/// here wins.
#[derive(Parser, Debug)]
#[command(
    name = "reverse-ajax-lab",
    version,
    after_help = "Logs go to stderr; RUST_LOG=debug shows every request park, wake and leave."
)]
struct Flags {
    /// Where to listen
    #[arg(
        long,
        env = "LAB_ADDR",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8080"
    )]
    addr: String,
    /// An alias: the same lab on one more port (WebSockets upgrade on the HTTP port itself;
    /// nothing listens here unless given)
    #[arg(long, env = "LAB_WS_ADDR", value_name = "HOST:PORT")]
    ws_addr: Option<String>,
    /// The same lab as another origin, for the cross-origin lessons [default: the HTTP port
    /// + 2]
    #[arg(long, env = "LAB_OTHER_ADDR", value_name = "HOST:PORT")]
    other_addr: Option<String>,
    /// Pause between generated events in ms, or off
    #[arg(long, env = "LAB_GENERATOR", value_name = "MIN..MAX", default_value = "0..5000",
          value_parser = generator)]
    generator: Generator,
    /// Events kept for cursors
    #[arg(long, env = "LAB_HISTORY", value_name = "N", default_value_t = 1024)]
    history: usize,
    /// Long polls, streams and WebSockets held at once (0: as many as the lab can hold)
    #[arg(long, env = "LAB_MAX_PARKED", value_name = "N", default_value_t = 0)]
    max_parked: usize,
    /// ...of which one client address may hold
    #[arg(
        long,
        env = "LAB_MAX_PER_CLIENT",
        value_name = "N",
        default_value_t = 50
    )]
    max_per_client: usize,
    /// Connections of any kind one client address may have open at once (at most half of
    /// what the lab can hold)
    #[arg(
        long,
        env = "LAB_MAX_CONNECTIONS_PER_CLIENT",
        value_name = "N",
        default_value_t = 256
    )]
    max_connections_per_client: usize,
    /// Sessions each framework (Socket.IO, Bayeux, Pushlets, Atmosphere) keeps at once
    #[arg(
        long,
        env = "LAB_MAX_SESSIONS",
        value_name = "N",
        default_value_t = 10_000
    )]
    max_sessions: usize,
    /// ...of which one client address may hold
    #[arg(
        long,
        env = "LAB_MAX_SESSIONS_PER_CLIENT",
        value_name = "N",
        default_value_t = 200
    )]
    max_sessions_per_client: usize,
    /// Stream heartbeat interval
    #[arg(long, env = "LAB_HEARTBEAT", value_name = "SECONDS", default_value = "15",
          value_parser = seconds)]
    heartbeat: Duration,
    /// Close a connection that sends no request for this long
    #[arg(long, env = "LAB_IDLE_TIMEOUT", value_name = "SECONDS", default_value = "30",
          value_parser = seconds)]
    idle_timeout: Duration,
    /// Answer 408 and close when a request's head and body have not all come this long after
    /// its first byte
    #[arg(long, env = "LAB_REQUEST_TIMEOUT", value_name = "SECONDS", default_value = "20",
          value_parser = seconds)]
    request_timeout: Duration,
    /// Drop a client that takes longer to accept a write
    #[arg(long, env = "LAB_WRITE_TIMEOUT", value_name = "SECONDS", default_value = "10",
          value_parser = seconds)]
    write_timeout: Duration,
    /// Lower the descriptor limit to N, to watch the lab meet its limits
    #[arg(long, env = "LAB_MAX_FDS", value_name = "N")]
    max_fds: Option<u64>,
    /// How long polls wait: a sleeping thread each (thread), or a waiting list answered by one
    /// dispatcher thread (queue)
    #[arg(
        long,
        env = "LAB_PARKING",
        value_name = "MODE",
        default_value = "thread"
    )]
    parking: ParkingMode,
    /// Parked long polls and streams look at their socket once a second for a client that
    /// left (off: only deadlines and heartbeats find it)
    #[arg(long, env = "LAB_DEPARTURES", value_name = "on|off", default_value = "on",
          value_parser = on_or_off, action = clap::ArgAction::Set)]
    departures: bool,
    /// A fixed pool of N connection threads, a servlet container's maxThreads (0: as many as
    /// the connections need; chapter 5)
    #[arg(long, env = "LAB_HANDLERS", value_name = "N", default_value_t = 0)]
    handlers: usize,
    /// Largest request body
    #[arg(long, env = "LAB_MAX_BODY", value_name = "BYTES", default_value_t = 64 * 1024)]
    max_body: usize,
    /// Engine.IO pings every MS
    #[arg(long, env = "LAB_SOCKET_IO_PING_INTERVAL", value_name = "MS", default_value = "25000",
          value_parser = millis)]
    socket_io_ping_interval: Duration,
    /// ...and closes a session whose pong is later
    #[arg(long, env = "LAB_SOCKET_IO_PING_TIMEOUT", value_name = "MS", default_value = "20000",
          value_parser = millis)]
    socket_io_ping_timeout: Duration,
    /// ...or that joins no namespace in time
    #[arg(long, env = "LAB_SOCKET_IO_CONNECT_TIMEOUT", value_name = "MS",
          default_value = "45000", value_parser = millis)]
    socket_io_connect_timeout: Duration,
    /// Bayeux holds a /meta/connect this long
    #[arg(long, env = "LAB_BAYEUX_TIMEOUT", value_name = "MS", default_value = "20000",
          value_parser = millis)]
    bayeux_timeout: Duration,
    /// ...and forgets a client silent this long after
    #[arg(long, env = "LAB_BAYEUX_MAX_INTERVAL", value_name = "MS", default_value = "10000",
          value_parser = millis)]
    bayeux_max_interval: Duration,
    /// A Pushlets session nobody listens for expires
    #[arg(long, env = "LAB_PUSHLETS_TIMEOUT", value_name = "SECONDS", default_value = "60",
          value_parser = seconds)]
    pushlets_timeout: Duration,
    /// An Atmosphere client away this long is forgotten
    #[arg(long, env = "LAB_ATMOSPHERE_TIMEOUT", value_name = "SECONDS", default_value = "60",
          value_parser = seconds)]
    atmosphere_timeout: Duration,
    /// Share events with other labs through Redis (redis://127.0.0.1:6379; chapter 20)
    #[arg(long, env = "LAB_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// Another lab on the same Redis (http://127.0.0.1:8090), whose pages may read this one;
    /// repeat for more (the variable takes them comma-separated)
    #[arg(long = "peer", env = "LAB_PEER", value_name = "URL", value_delimiter = ',',
          value_parser = peer)]
    peers: Vec<String>,
    /// The address of a proxy in front of the lab (nginx: 127.0.0.1); its X-Forwarded-For,
    /// -Host and -Proto then count, from it only (chapter on proxies); repeat for more
    #[arg(
        long = "trust-proxy",
        env = "LAB_TRUST_PROXY",
        value_name = "IP",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
}

/// `--generator`'s value: a range of milliseconds, or `off`.
#[derive(Clone, Debug)]
struct Generator(Option<RangeInclusive<u64>>);

/// Why the flags did not give a `Config`: the user asked for help or the version (print it on
/// stdout, exit 0), or made a usage error (print the message on stderr, exit 2).
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    Help(String),
    Usage(String),
}

impl Config {
    /// The `LAB_*` environment variables and the command-line flags over the defaults.
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Config, CliError> {
        let args = std::iter::once("reverse-ajax-lab".to_string()).chain(args);
        let flags = Flags::try_parse_from(args).map_err(|e| match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                CliError::Help(e.to_string())
            }
            _ => CliError::Usage(e.to_string()),
        })?;
        let defaults = Config::default();
        let config = Config {
            addr: flags.addr,
            ws_addr: flags.ws_addr,
            other_addr: flags.other_addr,
            generator: flags.generator.0,
            history: flags.history,
            max_parked: flags.max_parked,
            max_per_client: flags.max_per_client,
            max_connections_per_client: flags.max_connections_per_client,
            heartbeat: flags.heartbeat,
            idle_timeout: flags.idle_timeout,
            request_timeout: flags.request_timeout,
            write_timeout: flags.write_timeout,
            max_fds: flags.max_fds,
            parking: flags.parking,
            departures: flags.departures,
            handlers: flags.handlers,
            max_body: flags.max_body,
            socket_io: SocketIoSettings {
                ping_interval: flags.socket_io_ping_interval,
                ping_timeout: flags.socket_io_ping_timeout,
                connect_timeout: flags.socket_io_connect_timeout,
                ..defaults.socket_io
            },
            bayeux: BayeuxSettings {
                timeout: flags.bayeux_timeout,
                max_interval: flags.bayeux_max_interval,
            },
            sessions: SessionLimits {
                max: flags.max_sessions,
                per_client: flags.max_sessions_per_client,
            },
            pushlets_timeout: flags.pushlets_timeout,
            atmosphere_timeout: flags.atmosphere_timeout,
            redis: flags.redis,
            peers: flags.peers,
            trusted_proxies: flags.trusted_proxies,
            ..defaults
        };
        // A bad address is a usage error too.
        if config.socket_addr().is_err() {
            return Err(usage(format!(
                "--addr (or LAB_ADDR) {:?} is not HOST:PORT",
                config.addr
            )));
        }
        if let Some(other) = &config.other_addr {
            if other.parse::<SocketAddr>().is_err() {
                return Err(usage(format!("--other-addr {other:?} is not HOST:PORT")));
            }
        }
        if let Some(ws) = &config.ws_addr {
            if ws
                .to_socket_addrs()
                .map_or(true, |mut a| a.next().is_none())
            {
                return Err(usage(format!("--ws-addr {ws:?} is not HOST:PORT")));
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

/// A usage error in clap's own shape, so every one reads alike.
fn usage(message: String) -> CliError {
    CliError::Usage(format!(
        "error: {message}\n\nFor more information, try '--help'.\n"
    ))
}

fn millis(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1 ms".into()),
        Ok(n) => Ok(Duration::from_millis(n)),
        Err(_) => Err(format!(
            "takes a whole number of milliseconds, got {text:?}"
        )),
    }
}

fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => Err(format!("takes a whole number of seconds, got {text:?}")),
    }
}

fn on_or_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("takes on or off, got {other:?}")),
    }
}

fn generator(text: &str) -> Result<Generator, String> {
    if text == "off" {
        return Ok(Generator(None));
    }
    let bad = || format!("takes MIN_MS..MAX_MS or off, got {text:?}");
    let (min, max) = text.split_once("..").ok_or_else(bad)?;
    let (min, max): (u64, u64) = (
        min.parse().map_err(|_| bad())?,
        max.parse().map_err(|_| bad())?,
    );
    if min > max {
        return Err(format!(
            "{text:?}: MIN ({min}) exceeds MAX ({max}); write MIN_MS..MAX_MS"
        ));
    }
    Ok(Generator(Some(min..=max)))
}

fn peer(url: &str) -> Result<String, String> {
    let Some(authority) = url.strip_prefix("http://") else {
        return Err(format!(
            "takes a lab's URL, like http://127.0.0.1:8090, not {url:?}"
        ));
    };
    let authority = authority.trim_end_matches('/');
    if authority.parse::<SocketAddr>().is_err() && !authority.starts_with("localhost:") {
        return Err(format!(
            "takes http://IP:PORT or http://localhost:PORT, not {url:?}"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, CliError> {
        Config::from_env_and_args(args.iter().map(|a| a.to_string()))
    }

    fn usage_error(args: &[&str]) -> String {
        match parse(args) {
            Err(CliError::Usage(message)) => message,
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn flags_take_their_value_after_a_space_or_an_equals_sign() {
        let config = parse(&["--addr", "127.0.0.1:9000", "--generator", "off"]).unwrap();
        assert_eq!(config.addr, "127.0.0.1:9000");
        assert!(config.generator.is_none());
        let config = parse(&["--addr=127.0.0.1:9001", "--generator=10..20"]).unwrap();
        assert_eq!(config.addr, "127.0.0.1:9001");
        assert_eq!(config.generator, Some(10..=20));
        assert!(!parse(&["--departures", "off"]).unwrap().departures);
        assert_eq!(
            parse(&["--parking=queue"]).unwrap().parking,
            ParkingMode::Queue
        );
        let config = parse(&["--peer", "http://127.0.0.1:1/", "--peer=http://localhost:2"]);
        assert_eq!(
            config.unwrap().peers,
            ["http://127.0.0.1:1", "http://localhost:2"]
        );
        let config = parse(&["--trust-proxy", "127.0.0.3", "--trust-proxy=::1"]).unwrap();
        assert_eq!(
            config.trusted_proxies,
            [
                "127.0.0.3".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
    }

    /// The defaults the help shows are the defaults `cargo run` uses: the flags with nothing
    /// given make `Config::default()`.
    #[test]
    fn no_flags_give_the_default_config() {
        if std::env::vars().any(|(name, _)| name.starts_with("LAB_")) {
            return; // a LAB_* variable in this environment changes the answer
        }
        let (parsed, default) = (parse(&[]).unwrap(), Config::default());
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        assert!(usage_error(&["--nope"]).contains("--nope"));
        assert!(usage_error(&["--departures", "no"]).contains("on or off"));
        assert!(usage_error(&["--generator", "5..1"]).contains("MIN (5) exceeds MAX (1)"));
        assert!(usage_error(&["--addr", "nonsense"]).contains("--addr"));
        assert!(usage_error(&["--ws-addr", "x"]).contains("--ws-addr"));
        assert!(usage_error(&["--heartbeat", "0"]).contains("at least 1 second"));
        assert!(usage_error(&["--peer", "127.0.0.1:1"]).contains("http://"));
        assert!(usage_error(&["--history"]).contains("--history"));
        assert!(usage_error(&["--trust-proxy", "nginx"]).contains("--trust-proxy"));
    }

    #[test]
    fn help_and_version_are_not_usage_errors() {
        let Err(CliError::Help(help)) = parse(&["--help"]) else {
            panic!("--help is help");
        };
        assert!(
            help.contains("--max-parked <N>") && help.contains("LAB_MAX_PARKED"),
            "{help}"
        );
        let Err(CliError::Help(version)) = parse(&["--version"]) else {
            panic!("--version is help");
        };
        assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    }
}
