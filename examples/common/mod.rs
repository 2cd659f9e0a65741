//! What the benchmark examples share: the lab as a child process, `/stats`, and percentiles.
//! (A folder without `main.rs` is not an example of its own; `mod common;` brings it in.)
#![allow(dead_code)] // each example uses a different part

use reverse_ajax_lab::client;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// If this process was started as the lab (`--serve ARGS...`), serve and return true.
pub fn serve_if_asked() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("--serve") {
        return false;
    }
    reverse_ajax_lab::run_with_args(None, args[1..].iter().cloned());
    true
}

/// The lab in a child process (this same binary with `--serve`), on a free port, its log in
/// a file. Its threads, descriptors and memory are then its own to measure.
pub struct ChildLab {
    pub child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

impl ChildLab {
    pub fn start(extra: &[&str]) -> ChildLab {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_path = std::env::temp_dir().join(format!("lab-bench-{}.log", std::process::id()));
        let log = std::fs::File::create(&log_path).expect("a log file");
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .args([
                "--serve",
                "--addr",
                &addr.to_string(),
                "--other-addr",
                "127.0.0.1:0",
            ])
            .args(["--generator", "off"])
            .args(extra)
            // LAB_RUST_LOG=info (or debug) for more than errors in the log file.
            .env(
                "RUST_LOG",
                std::env::var("LAB_RUST_LOG").unwrap_or("error".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the lab starts");
        let end = Instant::now() + Duration::from_secs(30);
        while client::get(addr, "/stats").is_err() {
            assert!(Instant::now() < end, "the lab did not start");
            thread::sleep(Duration::from_millis(50));
        }
        ChildLab {
            child,
            addr,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the lab's WebSockets are (from `/stats`): the HTTP port itself.
    pub fn websocket_addr(&self) -> SocketAddr {
        client::get(self.addr, "/stats").expect("stats").json()["websocket"]
            .as_str()
            .and_then(|url| url.trim_start_matches("ws://").split('/').next())
            .and_then(|host| host.parse().ok())
            .expect("a WebSocket address in /stats")
    }

    /// The last lines the lab logged (what it said as it failed).
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<String> = log.lines().map(String::from).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for ChildLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wall-clock microseconds: both processes read the same clock.
pub fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// The p-th value (0.0..=1.0) of sorted microseconds, as milliseconds.
pub fn percentile_ms(sorted: &[u128], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0)
}
