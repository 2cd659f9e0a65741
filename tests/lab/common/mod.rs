//! What every test file shares: a lab on port 0, waiting on a condition, and a real browser.
#![allow(dead_code)] // each test file uses a different part of this module

pub mod browser;
pub mod nginx;
pub mod streams;

use reverse_ajax_lab::client;
use reverse_ajax_lab::{Config, RunningLab};
use serde_json::Value;
use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A lab on a free port with the generator off: the test publishes every event itself.
///
/// Dropping the handle stops it (`RunningLab::stop`'s steps, without waiting for its
/// threads), as a test's end drops it: so a test keeps the handle for as long as it talks to
/// the lab, even one that needs only its address (`let _lab = start_lab();`).
pub fn start_lab() -> RunningLab {
    start_lab_with(|_| {})
}

/// `start_lab`, with the configuration changed by `tweak` first.
pub fn start_lab_with(tweak: impl FnOnce(&mut Config)) -> RunningLab {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config {
        addr: "127.0.0.1:0".into(),
        generator: None,
        ..Config::default()
    };
    tweak(&mut config);
    RunningLab::start(config).expect("the lab starts")
}

/// The lab's URL under its other name: a page served from here is cross-origin to the
/// lab's `http://127.0.0.1:PORT` endpoints.
pub fn on_localhost(lab: &RunningLab, path: &str) -> String {
    format!("http://localhost:{}{path}", lab.addr().port())
}

/// A generous deadline: tests wait on conditions, never on luck.
pub fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// Check `condition` until it holds; panic with `what` at the deadline.
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let end = deadline();
    while !condition() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stats(addr: SocketAddr) -> Value {
    client::get(addr, "/stats").unwrap().json()
}

/// The techniques of the book's first three parts (chapters 1 to 12), in its order: each
/// lesson there but buffering, which is a pitfall of streaming rather than a way to push.
pub fn techniques() -> Vec<&'static str> {
    reverse_ajax_lab::lessons::LESSONS
        .iter()
        .filter(|lesson| lesson.chapter <= 12 && lesson.name != "buffering")
        .map(|lesson| lesson.name)
        .collect()
}

/// Wait until `/stats` says `key` is `want` (`what` names the moment, for the timeout).
pub fn wait_for_stat(addr: SocketAddr, key: &str, want: impl Into<Value>, what: &str) {
    let want = want.into();
    wait_until(&format!("{what} (/stats {key} = {want})"), || {
        stats(addr)[key] == want
    });
}

/// `/stats` says `key` is `want` now; `why` is what it means.
pub fn assert_stat(addr: SocketAddr, key: &str, want: impl Into<Value>, why: &str) {
    assert_eq!(stats(addr)[key], want.into(), "/stats {key}: {why}");
}

/// Each of `paths` is answered 400 with a JSON `error` that says what is wrong, and the lab
/// holds nothing for any of them afterwards.
pub fn each_gets_400_saying_why(addr: SocketAddr, paths: &[&str]) {
    for path in paths {
        let answer = client::get(addr, path).unwrap();
        assert_eq!(answer.status, 400, "{path}");
        let why = answer.json()["error"].as_str().map(str::len);
        assert!(why.is_some_and(|len| len > 5), "{path}: {}", answer.body);
    }
    wait_for_baseline(addr);
}

/// A raw connection to the lab, whose reads give up after 10 s (a test that waits for bytes
/// that never come fails instead of hanging).
pub fn connect(addr: SocketAddr) -> std::net::TcpStream {
    let socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

/// A new, empty directory for this test process (`lab-{what}-{pid}-{n}` in the temp dir).
pub fn fresh_temp_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lab-{what}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Everything `socket` sends until it closes (a held request's whole answer).
pub fn read_until_closed(socket: impl std::io::Read) -> String {
    let mut text = String::new();
    std::io::BufReader::new(socket)
        .read_to_string(&mut text)
        .unwrap();
    text
}

/// The text between the first `before` in `text` and the next `after` (an id in a body).
pub fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let rest = text
        .split_once(before)
        .unwrap_or_else(|| panic!("no {before:?} in {text}"))
        .1;
    rest.split_once(after).map_or(rest, |(found, _)| found)
}

/// Wait until the server holds nothing for clients: no connection (but the /stats one), no
/// parked request, no stream, no subscriber.
pub fn wait_for_baseline(addr: SocketAddr) {
    wait_until("/stats returns to its baseline", || {
        let s = stats(addr);
        s["connections"] == 0 && s["parked"] == 0 && s["streams"] == 0 && s["subscribers"] == 0
    });
}

/// A JSONP answer: 200, served as JavaScript, and never sniffed as anything else.
pub fn assert_is_script(answer: &reverse_ajax_lab::client::Response) {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let content_type = answer.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("application/javascript"),
        "{content_type}"
    );
    assert_eq!(answer.header("X-Content-Type-Options"), Some("nosniff"));
}

/// A string no other test publishes.
pub fn marker(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The ids in an `{"events": [...]}` answer.
pub fn ids(answer: &Value) -> Vec<u64> {
    answer["events"]
        .as_array()
        .expect("an events array")
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect()
}

/// An answer with no events whose cursor says `last`: nothing new, and where to ask next.
pub fn assert_nothing_new(answer: &Value, last: u64) {
    assert_eq!(ids(answer), Vec::<u64>::new(), "{answer}");
    assert_eq!(answer["last"], last, "{answer}");
}

/// The lab as a child process (the real binary), so its `/stats` `threads` and `fds` are the
/// lab's alone: a test binary runs its tests in parallel, and their threads would blur a count
/// taken in-process. Killed when dropped.
pub struct ChildLab {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl ChildLab {
    pub fn start(extra: &[&str]) -> ChildLab {
        ChildLab::start_with(extra, false)
    }

    /// `start`, in a mount namespace of its own with an empty `/proc`, as on macOS or
    /// Windows, where there is none (`unshare`, as root or in a user namespace of its own).
    pub fn start_without_proc(extra: &[&str]) -> ChildLab {
        ChildLab::start_with(extra, true)
    }

    fn start_with(extra: &[&str], without_proc: bool) -> ChildLab {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // LAB_CHILD_LOG=DIR keeps each child lab's debug log as DIR/lab-PORT.log.
        let log = std::env::var_os("LAB_CHILD_LOG").map(|dir| {
            std::fs::create_dir_all(&dir).expect("the log directory");
            let path = std::path::Path::new(&dir).join(format!("lab-{port}.log"));
            std::fs::File::create(path).expect("a log file")
        });
        let lab = env!("CARGO_BIN_EXE_reverse-ajax-lab");
        let mut command = std::process::Command::new(lab);
        if without_proc {
            command = std::process::Command::new("unshare");
            command.args(["--map-root-user", "--mount", "sh", "-c"]);
            command.arg(r#"mount -t tmpfs none /proc && exec "$0" "$@""#);
            command.arg(lab);
        }
        let child = command
            .args(["--addr", &addr.to_string()])
            .args(["--other-addr", "127.0.0.1:0"])
            .args(["--generator", "off"])
            .args(extra)
            .env("RUST_LOG", if log.is_some() { "debug" } else { "error" })
            .stdout(std::process::Stdio::null())
            .stderr(log.map_or_else(std::process::Stdio::null, std::process::Stdio::from))
            .spawn()
            .expect("the lab starts (without /proc: is unshare installed?)");
        wait_until("the child lab answers", || {
            client::get(addr, "/stats").is_ok()
        });
        ChildLab { child, addr }
    }

    /// Send the lab process `signal` (`libc::SIGSTOP` freezes it as a hung server would be,
    /// `SIGCONT` thaws it, `SIGKILL` ends it as a crash would).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; it only sends a signal.
        let sent = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(sent, 0, "kill({}, {signal})", self.child.id());
    }

    /// Threads of the lab process, read from `/proc` (no request: a request is activity).
    pub fn threads_from_proc(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The lab's own threads and open descriptors (as `/stats` reads them from inside, the
    /// request asking counted in both readings alike), once they hold still: two readings a
    /// quarter of a second apart that agree.
    pub fn resources(&self) -> (u64, u64) {
        let read = || {
            let s = stats(self.addr);
            (s["threads"].as_u64().unwrap(), s["fds"].as_u64().unwrap())
        };
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = read();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Wait until threads and descriptors are back at `baseline` or below: a leak of one
    /// fails (it stays above). Below is fine: the baseline may have caught a thread or a
    /// socket in passing (a pooled thread about to retire, an accept generation being
    /// replaced, the start's own /stats connection).
    pub fn wait_for_resources(&self, baseline: (u64, u64)) {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = stats(self.addr);
            let now = (s["threads"].as_u64().unwrap(), s["fds"].as_u64().unwrap());
            if now.0 <= baseline.0 && now.1 <= baseline.1 {
                return;
            }
            assert!(
                Instant::now() < end,
                "threads and descriptors {now:?} never returned to the baseline {baseline:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl ChildLab {
    /// Open descriptors of the lab process, read from `/proc`.
    pub fn fds_from_proc(&self) -> u64 {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map_or(0, |dir| dir.count() as u64)
    }

    /// The names of the lab's threads, from `/proc` (no request). The lab names every thread
    /// it starts (`conn-N`, `ws-N-writer`, `accept`, ...).
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .map(|dir| {
                dir.filter_map(|task| {
                    let comm = task.ok()?.path().join("comm");
                    Some(std::fs::read_to_string(comm).ok()?.trim().to_string())
                })
                .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ChildLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lab's own other origin: its port under the name `localhost` (its endpoints are
/// `127.0.0.1`), as a page served from there sends it.
pub fn own_other_origin(addr: SocketAddr) -> String {
    format!("http://localhost:{}", addr.port())
}

/// `method path` with an `Origin`, as a browser sends it from a page of that origin.
pub fn from_origin(addr: SocketAddr, method: &str, path: &str, origin: &str) -> client::Response {
    client::request(addr, method, path, &[("Origin", origin)], b"").unwrap()
}

/// The answer lets `origin` read it, cookies and all (`Allow-Credentials`).
pub fn assert_allows_with_credentials(answer: &client::Response, origin: &str) {
    assert_eq!(answer.header("Access-Control-Allow-Origin"), Some(origin));
    assert_eq!(
        answer.header("Access-Control-Allow-Credentials"),
        Some("true")
    );
}

/// Origins that look like the lab's own and are not: other hosts that start with its names,
/// its names on other ports or schemes, `null` (sandboxed frames, `file:` pages), upper case
/// (browsers always send lower case), a trailing slash. An Origin check must refuse each.
pub fn near_miss_origins(port: u16) -> Vec<String> {
    vec![
        "http://evil.example".into(),
        "http://localhost.evil.example".into(),
        format!("http://localhost.evil.example:{port}"),
        format!("http://127.0.0.1.evil.example:{port}"),
        format!("http://localhost:{}", port.wrapping_add(2)),
        format!("http://127.0.0.1:{port}0"),
        format!("http://127.0.0.1:{port}.evil.example"),
        "http://localhost".into(),
        "null".into(),
        format!("https://127.0.0.1:{port}"),
        format!("https://localhost:{port}"),
        format!("HTTP://LOCALHOST:{port}"),
        format!("http://127.0.0.1:{port}/"),
        format!("http://evil.example/http://127.0.0.1:{port}"),
    ]
}

/// Close `leaving` (one of two held clients, counted in `/stats` under `gauge`) and wait
/// until the lab lets go of it: within 10 s, long before any deadline or heartbeat the tests
/// set (the parked thread's look at its socket, `Request::client_left`).
pub fn hang_up_and_see_it_let_go(addr: SocketAddr, leaving: impl Sized, gauge: &str) {
    wait_until("both clients are held", || stats(addr)[gauge] == 2);
    let hung_up = Instant::now();
    drop(leaving);
    wait_until("the departed client is let go", || stats(addr)[gauge] == 1);
    let took = hung_up.elapsed();
    assert!(took < Duration::from_secs(10), "let go after {took:?}");
}

/// Check that `condition` holds throughout `window` (a claim about "nothing happens": it
/// must stay true for a while, not just at one instant).
pub fn stays_true_for(window: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(condition(), "it stopped being true that {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run one scenario of a framework's official client in Node (`tests/node/SCRIPT`, which
/// needs the npm package `package` that `npm ci` installs); its summary (the JSON after
/// "ok "). A failed scenario fails the test with everything it printed.
pub fn run_node(script: &str, package: &str, args: &[String]) -> Value {
    run_node_with(&[], script, package, args)
}

/// `run_node` with flags for node itself (`--experimental-websocket`: Node 20's WebSocket).
pub fn run_node_with(flags: &[&str], script: &str, package: &str, args: &[String]) -> Value {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(root)
            .join("node_modules")
            .join(package)
            .exists(),
        "the official client {package} is not installed: run `npm ci` (scripts/test does)"
    );
    let output = std::process::Command::new("node")
        .current_dir(root)
        .args(flags)
        .arg(format!("tests/node/{script}"))
        .args(args)
        .output()
        .expect("node runs (Node 20 or later)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} {args:?}: {stdout}{stderr}"
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ok "))
        .expect("a summary");
    serde_json::from_str(summary).unwrap()
}

/// A real `redis-server` (Debian's package; `scripts/test` installs it when missing) on a free
/// port with no persistence, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::on_port(free_port())
    }

    /// Start (or start again) on `port`: an empty Redis, as after a restart without persistence.
    pub fn on_port(port: u16) -> RedisServer {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs Debian's redis-server)");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        wait_until("redis-server answers PING", || {
            redis_command(port, &["PING"]).is_ok_and(|r| r == "+PONG")
        });
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        redis_command(self.port, args)
    }

    /// Kill it (as a crash would: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send `socket` a text message of `bytes` bytes, over the lab's limit, and expect the lab's
/// close frame with 1009 (message too big); then nothing was published, and the socket's
/// thread and watch are given back. Every WebSocket endpoint refuses the same way.
pub fn assert_oversized_message_gets_1009(
    addr: SocketAddr,
    socket: &mut tungstenite::WebSocket<std::net::TcpStream>,
    bytes: usize,
) {
    use tungstenite::protocol::frame::coding::CloseCode;
    let published = stats(addr)["events_published"].clone();
    socket
        .send(tungstenite::Message::text("x".repeat(bytes)))
        .unwrap();
    let close = loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Size));
    assert_eq!(
        stats(addr)["events_published"],
        published,
        "nothing was published"
    );
    wait_until("the socket's thread and watch are given back", || {
        let s = stats(addr);
        s["websocket_threads"] == 0 && s["watched_sockets"] == 0 && s["websockets"] == 0
    });
}

/// A WebSocket handshake to `url` (`ws://HOST:PORT/path`) over a new blocking connection
/// (reads time out after 20 s), as a page of `origin` makes it (`None`: not a browser): the
/// socket, or the error the server answered with (`Error::Http` carries its status).
pub fn websocket_handshake(
    url: &str,
    origin: Option<&str>,
) -> Result<tungstenite::WebSocket<std::net::TcpStream>, tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
    }
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let stream = std::net::TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    tungstenite::client(request, stream)
        .map(|(socket, _)| socket)
        .map_err(|e| match e {
            tungstenite::HandshakeError::Failure(e) => e,
            tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
        })
}

/// A port nobody listens on now (the kernel's pick, given back at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One command to the Redis on `port` over RESP; the first line of its answer.
pub fn redis_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

/// The next text frame of a WebSocket as JSON (pings are answered by tungstenite as it reads).
pub fn next_json(socket: &mut tungstenite::WebSocket<std::net::TcpStream>) -> Value {
    loop {
        match socket.read().expect("a frame") {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).unwrap()
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Close a WebSocket as a client does, and read until the server's close reply has come and
/// the connection ended cleanly.
pub fn close_cleanly(socket: &mut tungstenite::WebSocket<std::net::TcpStream>) {
    socket.close(None).unwrap();
    loop {
        match socket.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("unclean close: {e}"),
        }
    }
}

/// A connection to `addr` with a 4 KiB receive buffer: a client that stops reading then
/// leaves the lab's send buffer to fill.
pub fn connect_with_a_small_receive_buffer(addr: SocketAddr) -> std::net::TcpStream {
    let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    raw.set_recv_buffer_size(4096).unwrap();
    raw.connect(&addr.into()).unwrap();
    raw.into()
}
