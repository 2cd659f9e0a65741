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
//! cargo run --release --example latency -- ws 1000 --against peer --markdown  # and a table row
//! cargo run --release --example latency -- sse 1000 --throughput --against peer [--markdown]
//! cargo run --release --example latency -- wakes 1000      # what waking 1,000 threads costs
//! ```
//!
//! `--throughput` holds the clients and raises the event rate a fifth at a time (`--seconds`
//! each, 3 by default, up to `--max-rate`) until a step loses an event, cannot be sent at its
//! rate, or has a p99 of 100 ms or more; it prints the highest rate that passed. Events are
//! then published over one keep-alive connection, pipelined, so the publisher never waits
//! for an answer.
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
//!
//! Linux only: its clients wait in `epoll` (linux.rs), and it reads the lab's CPU and memory
//! from `/proc`. Elsewhere it says so and exits.

#[cfg(target_os = "linux")]
#[path = "../common/mod.rs"]
mod common;
#[cfg(target_os = "linux")]
mod linux;

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!(
        "latency: a Linux benchmark (its clients wait in epoll, its figures come from /proc)"
    );
    std::process::exit(2);
}
