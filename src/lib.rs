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
//! serves one. LESSONS.md (the course) and REFERENCE.md are the book that goes with the code.

pub mod broker;
pub mod classroom;
pub mod client;
pub mod config;
pub mod connection;
pub mod conversation;
pub mod forwarded;
pub mod generator;
pub mod http;
pub mod hub;
pub mod lab;
pub mod lessons;
pub mod limits;
pub mod listener;
pub mod memory;
pub mod request;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod stats;
pub mod stream;
pub mod waiting_room;
pub mod watcher;
pub mod workarounds;
pub mod ws;

/// For unit tests that need a real socket: a client and the server's side of one loopback
/// connection.
#[cfg(test)]
pub(crate) fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

pub use config::{CliError, Config, ParkingMode};
pub use hub::{Event, Hub, Subscription};
pub use lab::Lab;
pub use server::RunningLab;

/// What `main` and every example do: read the flags, start, log the URL, serve forever.
pub fn run(only: Option<&'static str>) {
    run_with_args(only, std::env::args().skip(1));
}

/// `run` with the flags given here instead of the command line's (benchmarks start the lab
/// as a child process this way). On Linux with glibc, the program is first exec'd again with
/// glibc's per-thread malloc caches shrunk to one chunk a size, unless `GLIBC_TUNABLES` is set
/// (`memory`).
pub fn run_with_args(only: Option<&'static str>, args: impl IntoIterator<Item = String>) {
    // Before any thread starts: this may exec the program again (`memory`).
    memory::shrink_thread_caches();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut config = match Config::from_env_and_args(args) {
        Ok(config) => config,
        Err(CliError::Help(text)) => {
            print!("{text}");
            std::process::exit(0);
        }
        Err(CliError::Usage(message)) => {
            eprint!("{message}");
            std::process::exit(2);
        }
    };
    config.only = only;
    // Before any thread starts, so that every thread inherits it: Ctrl-C is for `main` to
    // hear (`RunningLab::serve_until_stopped`), not for the thread it happens to land on.
    crate::shutdown::block_stop_signals();
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
                // What the firewall must let in, for phones and laptops in the room.
                log::info!(
                    "Open TCP ports {} (pages, lessons, WebSockets) and {} (the other origin of \
                     the cross-origin lessons) in this machine's firewall",
                    lab.addr().port(),
                    lab.other_addr().port()
                );
            }
            lab.serve_until_stopped();
        }
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(1);
        }
    }
}
