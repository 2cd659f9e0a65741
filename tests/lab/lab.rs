//! The foundation every lesson stands on: publishing, /stats, pages, and bad input.

use crate::common;

use common::{
    assert_stat, start_lab, start_lab_with, stats, wait_for_baseline, wait_for_stat, wait_until,
};
use reverse_ajax_lab::client::{get, post, request};
use reverse_ajax_lab::ParkingMode;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn publish_takes_text_or_json_and_numbers_from_one() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let first = post(addr, "/publish", "text/plain", "line one\nline two ✓").unwrap();
    assert_eq!(first.json()["id"], 1);
    let second = post(
        addr,
        "/publish",
        "application/json",
        r#"{"data": "from json"}"#,
    )
    .unwrap();
    assert_eq!(second.json()["id"], 2);
    let events = get(addr, "/events/poll?since=0").unwrap().json();
    assert_eq!(events["events"][0]["data"], "line one\nline two ✓");
    assert_eq!(events["events"][1]["data"], "from json");
    assert_eq!(stats(addr)["events_published"], 2);
}

#[test]
fn bad_input_gets_a_clear_4xx_and_the_server_lives_on() {
    let _lab = start_lab_with(|c| c.max_body = 1024);
    let addr = _lab.addr();
    let cases = [
        (
            "POST",
            "/publish",
            "application/json",
            "{not json".to_string(),
            400,
        ),
        (
            "POST",
            "/publish",
            "application/json",
            r#"{"data": 7}"#.to_string(),
            400,
        ),
        ("POST", "/publish", "text/plain", "x".repeat(2048), 413),
        ("GET", "/no/such/path", "", String::new(), 404),
        ("GET", "/lessons/nope", "", String::new(), 404),
        ("POST", "/events/poll", "text/plain", "x".to_string(), 405),
        ("GET", "/publish", "", String::new(), 405),
    ];
    for (method, path, content_type, body, status) in cases {
        let headers = [("Content-Type", content_type)];
        let headers = if content_type.is_empty() {
            &headers[..0]
        } else {
            &headers[..]
        };
        let answer = request(addr, method, path, headers, body.as_bytes()).unwrap();
        assert_eq!(answer.status, status, "{method} {path}");
        assert!(
            answer.json()["error"].is_string(),
            "{method} {path}: {}",
            answer.body
        );
        if status == 405 {
            assert!(
                answer.header("Allow").is_some(),
                "{method} {path} names Allow"
            );
        }
    }
    // Nothing was published by any of it, and the server still answers.
    assert_eq!(stats(addr)["events_published"], 0);
    assert_eq!(
        post(addr, "/publish", "text/plain", "fine").unwrap().status,
        200
    );
    wait_for_baseline(addr);
}

#[test]
fn the_index_links_every_lesson_and_pages_are_served() {
    let lab = start_lab();
    let addr = lab.addr();
    let index = get(addr, "/").unwrap();
    assert!(index
        .header("Content-Type")
        .unwrap()
        .starts_with("text/html"));
    for lesson in reverse_ajax_lab::lessons::LESSONS {
        assert!(index.body.contains(&format!("/lessons/{}", lesson.name)));
        let page = get(addr, &format!("/lessons/{}", lesson.name)).unwrap();
        assert_eq!(page.status, 200, "{}", lesson.name);
        assert!(
            page.body.contains("id=\"log\""),
            "{} has a log",
            lesson.name
        );
    }
    assert_eq!(get(addr, "/assets/lab.js").unwrap().status, 200);
    assert_eq!(get(addr, "/favicon.ico").unwrap().status, 204);
}

/// The index numbers each lesson once, by its chapter, under the book's parts in order (it
/// once showed a list number and a chapter number, which disagreed from Socket.IO on: "14.
/// 15."); its publish command has the address and port the lab really has; on loopback it
/// says how to open the lab to a room.
#[test]
fn the_index_groups_the_lessons_by_part_with_one_number_each_and_real_commands() {
    let lab = start_lab();
    let addr = lab.addr();
    let index = get(addr, "/").unwrap().body;
    assert!(!index.contains("<ol"), "no list numbers of its own");
    let mut at = 0;
    for (part, chapters) in reverse_ajax_lab::lessons::PARTS {
        let heading = index[at..]
            .find(&format!("<h2>{part}</h2>"))
            .unwrap_or_else(|| panic!("{part} missing, or out of order"));
        at += heading;
        for lesson in reverse_ajax_lab::lessons::LESSONS {
            let item = format!(
                "<span class=\"chapter\">{}.</span> <a href=\"/lessons/{}\">",
                lesson.chapter, lesson.name
            );
            assert_eq!(index.matches(&item).count(), 1, "{item}");
            if chapters.contains(&lesson.chapter) {
                let next_part = index[at + 1..]
                    .find("<h2>")
                    .map_or(index.len(), |n| at + 1 + n);
                let found = index.find(&item).unwrap();
                assert!(
                    at < found && found < next_part,
                    "{} under {part}",
                    lesson.name
                );
            }
        }
    }
    let port = addr.port();
    assert!(
        index.contains(&format!("curl -d hello http://127.0.0.1:{port}/publish")),
        "the publish command with the real port"
    );
    assert!(index.contains(&format!(
        "curl.exe -d hello http://127.0.0.1:{port}/publish"
    )));
    assert!(
        index.contains(&format!("--addr 0.0.0.0:{port}")),
        "how to open it to a room"
    );
}

#[test]
fn an_example_serves_its_lesson_alone() {
    let _lab = start_lab_with(|c| c.only = Some("polling"));
    let addr = _lab.addr();
    let index = get(addr, "/").unwrap().body;
    assert!(index.contains("/lessons/polling"));
    assert!(!index.contains("/lessons/piggyback"));
    assert_eq!(get(addr, "/events/poll").unwrap().status, 200);
    assert_eq!(get(addr, "/events/jsonp?callback=f").unwrap().status, 404);
    assert_eq!(get(addr, "/lessons/jsonp_polling").unwrap().status, 404);
}

/// After a client of every kind has come and gone, the lab's own threads and descriptors
/// (read from `/proc/self` by the lab, in a child process so nothing else blurs them) are back
/// at their baseline exactly: a leak of one thread or one descriptor fails here.
#[test]
fn threads_and_descriptors_return_to_the_exact_baseline() {
    let lab = common::ChildLab::start(&["--heartbeat", "1"]);
    let addr = lab.addr;
    let baseline = lab.resources();
    assert!(
        baseline.0 >= 3,
        "the accept threads and the monitor: {baseline:?}"
    );

    // Quick requests of every kind.
    for path in [
        "/events/poll",
        "/events/jsonp?callback=f",
        "/events/cors",
        "/lessons/polling",
        "/stats",
        "/events/poll?since=x",
        "/nowhere",
    ] {
        for _ in 0..5 {
            get(addr, path).unwrap();
        }
    }
    post(
        addr,
        "/events/piggyback",
        "application/x-www-form-urlencoded",
        "name=A",
    )
    .unwrap();
    // Held ones: long polls answered by an event, streams, a WebSocket; then they all leave.
    let long_polls: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, "/events/long-poll?since=0&timeout=30")))
        .collect();
    let streams: Vec<_> = [
        "/events/stream",
        "/events/sse",
        "/events/multipart",
        "/events/iframe",
    ]
    .iter()
    .map(|path| reverse_ajax_lab::client::Stream::open(addr, path, &[]).unwrap())
    .collect();
    let ws_url = stats(addr)["websocket"].as_str().unwrap().to_string();
    let (socket, _) = tungstenite::connect(ws_url.as_str()).unwrap();
    wait_until("everything is held", || {
        let s = stats(addr);
        s["parked"] == 5 && s["streams"] == 4 && s["websockets"] == 1
    });
    reverse_ajax_lab::client::publish(addr, "for everyone").unwrap();
    for poll in long_polls {
        assert_eq!(poll.join().unwrap().unwrap().status, 200);
    }
    drop(streams);
    drop(socket);
    lab.wait_for_resources(baseline);
}

#[test]
fn a_busy_port_says_what_to_do() {
    let lab = start_lab();
    let taken = lab.addr().to_string();
    let error = reverse_ajax_lab::RunningLab::start(reverse_ajax_lab::Config {
        addr: taken,
        generator: None,
        ..Default::default()
    })
    .err()
    .expect("the second lab cannot bind");
    assert!(
        error.contains("busy") && error.contains("--addr"),
        "{error}"
    );
}

/// Connections that arrive together, each holding a keep-alive stream, are all served: each
/// gets a thread of its own at once. (tiny_http 0.12's pool could leave one queued behind
/// busy threads for minutes; this test caught it.)
#[test]
fn simultaneous_keep_alive_streams_are_all_served() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Barrier};
    let lab = start_lab();
    let addr = lab.addr();
    let mut held = Vec::new();
    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(8));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut socket = common::connect(addr);
                    barrier.wait();
                    // No `Connection: close`: a browser's keep-alive request.
                    socket
                        .write_all(b"GET /events/stream HTTP/1.1\r\nHost: lab\r\n\r\n")
                        .unwrap();
                    let mut status = String::new();
                    let read = BufReader::new(socket.try_clone().unwrap()).read_line(&mut status);
                    (read.map(|_| status), socket)
                })
            })
            .collect();
        for client in clients {
            let (status, socket) = client.join().unwrap();
            let status = status.unwrap_or_else(|e| panic!("round {round}: no answer: {e}"));
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "round {round}: {status}"
            );
            held.push(socket);
        }
    }
}

/// The binary as a user runs it: help and the version on stdout and exit 0; every usage error
/// on stderr, exit 2, whether the value came from a flag (`--addr X` or `--addr=X`) or its
/// `LAB_*` variable.
#[test]
fn help_goes_to_stdout_and_usage_errors_exit_2() {
    use std::process::Command;
    let lab = env!("CARGO_BIN_EXE_reverse-ajax-lab");
    let help = Command::new(lab).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--generator <MIN..MAX>"), "{text}");
    assert!(
        text.contains("LAB_MAX_PARKED"),
        "every flag has its variable: {text}"
    );
    assert!(help.stderr.is_empty());
    let version = Command::new(lab).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let cases: [(&[&str], Option<&str>, &str); 6] = [
        (&["--addr", "nonsense"], None, "(or LAB_ADDR) \"nonsense\""),
        (&["--addr=nonsense"], None, "(or LAB_ADDR) \"nonsense\""),
        (&[], Some("nonsense"), "(or LAB_ADDR) \"nonsense\""),
        (&["--generator", "5..1"], None, "MIN (5) exceeds MAX (1)"),
        (&["--nope"], None, "unexpected argument '--nope'"),
        (
            &["--history"],
            None,
            "a value is required for '--history <N>'",
        ),
    ];
    for (args, lab_addr, message) in cases {
        let mut command = Command::new(lab);
        command.args(args).env_remove("LAB_ADDR");
        if let Some(value) = lab_addr {
            command.env("LAB_ADDR", value);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// The servlet original's generator wrote to every suspended response itself, so the first
/// `IOException` from one departed client ended the generator for everyone. Here it only
/// publishes into the hub; each client's own thread writes, and fails, alone.
#[test]
fn a_client_that_leaves_mid_stream_does_not_stop_the_generator() {
    let lab = common::start_lab_with(|c| {
        c.generator = Some(1..=5);
        c.heartbeat = std::time::Duration::from_millis(100);
    });
    let addr = lab.addr();
    let mut stream = reverse_ajax_lab::client::Stream::open(addr, "/events/stream", &[]).unwrap();
    stream.next_chunk(common::deadline()).unwrap().unwrap();
    drop(stream); // leaves mid-stream: the next writes to it fail
    wait_for_stat(addr, "streams", 0, "the departed stream is freed");
    let after = stats(addr)["events_published"].as_u64().unwrap();
    wait_until("the generator publishes on", || {
        stats(addr)["events_published"].as_u64().unwrap() >= after + 20
    });
}

/// Send raw bytes, read one answer: "STATUS headers... body". (The refusals below say
/// `Connection: close`; a client that honours it closes, as this one does by dropping.)
fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use std::io::{BufReader, Read, Write};
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    socket.write_all(bytes).unwrap();
    let mut reader = BufReader::new(socket);
    let (status, headers) = reverse_ajax_lab::client::read_head(&mut reader).unwrap();
    let length: u64 = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = String::new();
    reader.take(length).read_to_string(&mut body).unwrap();
    let close = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("Connection") && v == "close");
    assert!(close, "a refused head closes the connection");
    format!("{status} {body}")
}

/// Heads over the limits (8 KiB a line, 64 KiB in all) get 414 or 431 and close; nothing is
/// published, and the lab serves the next client.
#[test]
fn oversized_heads_get_414_or_431_and_change_nothing() {
    let _lab = start_lab();
    let addr = _lab.addr();
    let long_target = format!(
        "POST /publish?{} HTTP/1.1\r\nHost: lab\r\nContent-Length: 1\r\n\r\nx",
        "a".repeat(9000)
    );
    assert!(raw(addr, long_target.as_bytes()).starts_with("414 "));
    let long_line = format!(
        "POST /publish HTTP/1.1\r\nHost: lab\r\nX-Big: {}\r\nContent-Length: 1\r\n\r\nx",
        "b".repeat(9000)
    );
    let answer = raw(addr, long_line.as_bytes());
    assert!(answer.starts_with("431 "), "{answer}");
    assert!(
        answer.contains("X-Big"),
        "the answer names the header: {answer}"
    );
    // Many lines, each short, 2 MB in all.
    let mut many = String::from("POST /publish HTTP/1.1\r\nHost: lab\r\n");
    for i in 0..2000 {
        many.push_str(&format!("X-Line-{i}: {}\r\n", "c".repeat(1000)));
    }
    many.push_str("Content-Length: 1\r\n\r\nx");
    assert!(raw(addr, many.as_bytes()).starts_with("431 "));
    assert_stat(addr, "events_published", 0, "nothing was published");
    assert_eq!(
        get(addr, "/events/poll").unwrap().status,
        200,
        "the lab lives on"
    );
}

/// A Content-Length that is not one whole number (negative, with junk, or two that differ)
/// gets 400 and closes: nothing is published, not even an empty event.
#[test]
fn a_bad_content_length_gets_400_and_publishes_nothing() {
    let _lab = start_lab();
    let addr = _lab.addr();
    for length in ["-5", "5x", " ", "1, 2"] {
        let request =
            format!("POST /publish HTTP/1.1\r\nHost: lab\r\nContent-Length: {length}\r\n\r\nhello");
        let answer = raw(addr, request.as_bytes());
        assert!(answer.starts_with("400 "), "{length:?}: {answer}");
        assert!(answer.contains("Content-Length"), "{length:?}: {answer}");
    }
    let two = "POST /publish HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    assert!(raw(addr, two.as_bytes()).starts_with("400 "));
    assert_eq!(stats(addr)["events_published"], 0);
    assert_eq!(publish_ok(addr), 1, "a well-formed publish still works");
}

fn publish_ok(addr: std::net::SocketAddr) -> u64 {
    reverse_ajax_lab::client::publish(addr, "fine").unwrap()
}

/// A lab can be stopped (`RunningLab::stop`, as Ctrl-C does): its port closes, every
/// WebSocket gets close 1001 ("going away"), every held request, stream and idle connection
/// is closed, and every thread the lab started ends: its accept threads, the generator, the
/// sweepers, the dispatcher (`--parking queue`), the socket watcher and every connection
/// thread. In both parking modes.
#[test]
fn a_stopped_lab_closes_every_connection_and_ends_every_thread() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    for parking in [ParkingMode::Thread, ParkingMode::Queue] {
        let lab = common::start_lab_with(|c| {
            // A generator thread that must end too, and whose first event is a minute away:
            // the long poll stays held until the stop.
            c.generator = Some(60_000..=60_000);
            c.parking = parking;
        });
        let addr = lab.addr();
        let idle = common::connect(addr);
        let held: Vec<_> = ["/events/long-poll?timeout=60", "/events/stream"]
            .map(|path| reverse_ajax_lab::client::open(addr, "GET", path, &[], b"").unwrap())
            .into();
        let mut socket =
            common::websocket_handshake(&format!("ws://{addr}/events/ws"), None).unwrap();
        common::wait_until("a long poll, a stream and a WebSocket are held", || {
            let s = common::stats(addr);
            s["parked"] == 1 && s["streams"] == 1 && s["websockets"] == 1
        });
        let began = Instant::now();
        assert_eq!(lab.stop(), Ok(()), "{parking:?}: every thread ended");
        assert!(
            began.elapsed() < Duration::from_secs(8),
            "{:?}",
            began.elapsed()
        );
        // The WebSocket was told: 1001.
        let close = loop {
            match socket.read() {
                Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| f.code),
                Ok(_) => continue,
                Err(e) => panic!("{parking:?}: no close frame before {e}"),
            }
        };
        assert_eq!(close, Some(CloseCode::Away), "{parking:?}");
        // Every other connection is closed: what is left to read ends. The stream ends whole:
        // its last chunk, not a broken body.
        for (n, mut connection) in held.into_iter().chain([idle]).enumerate() {
            connection
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut rest = Vec::new();
            let end = connection.read_to_end(&mut rest);
            assert!(
                end.is_ok()
                    || end
                        .as_ref()
                        .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
                "{parking:?}: a connection still open: {end:?}"
            );
            if n == 1 {
                assert!(
                    rest.ends_with(b"0\r\n\r\n"),
                    "{parking:?}: the stream ended without its last chunk: {:?}",
                    String::from_utf8_lossy(&rest[rest.len().saturating_sub(80)..])
                );
            }
        }
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{parking:?}: the port is closed"
        );
    }
}

/// The binary as a user runs it shrinks glibc's per-thread malloc caches by execing itself
/// once with `GLIBC_TUNABLES` (`memory::shrink_thread_caches`): the same process, serving,
/// with the tunable in its environment, and its `memory-trim` thread running. A
/// `GLIBC_TUNABLES` set already is left alone (`tcache_count=7`: glibc's own default, to see
/// the climb).
#[cfg(all(target_os = "linux", target_env = "gnu", not(lab_portable)))]
#[test]
fn the_lab_runs_with_small_per_thread_malloc_caches_unless_told_otherwise() {
    use std::process::{Command, Stdio};
    for (given, expected) in [
        (None, "glibc.malloc.tcache_count=1"),
        (
            Some("glibc.malloc.tcache_count=7"),
            "glibc.malloc.tcache_count=7",
        ),
    ] {
        let port = common::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_reverse-ajax-lab"));
        command
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--other-addr", "127.0.0.1:0", "--generator", "off"])
            .env_remove("GLIBC_TUNABLES")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(given) = given {
            command.env("GLIBC_TUNABLES", given);
        }
        let mut child = command.spawn().unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        wait_until("the lab answers", || get(addr, "/stats").is_ok());
        // The process we started is the one serving: an exec keeps its pid.
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        let tunables = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|v| v.strip_prefix("GLIBC_TUNABLES=").map(String::from));
        // And its `memory-trim` thread is there, to give freed pages back.
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tunables.as_deref(), Some(expected), "given {given:?}");
        assert!(threads.iter().any(|t| t == "memory-trim"), "{threads:?}");
    }
}
