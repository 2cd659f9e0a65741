//! Every benchmark example runs, in a smoke size: a few clients for a few seconds, against
//! its own lab (a child process), and prints its figures and exits 0. The figures are not
//! judged here (benchmarks print; tests do not time); that the benchmarks still run is. The
//! full sizes are the manual commands in README.md and REFERENCE.md, chapters 13 and 14 and Appendix A (`scripts/figures` runs them).
//!
//! The examples are built by the test command (`scripts/test` runs `cargo build --examples`
//! first); run alone, `cargo build --examples && cargo test --test benchmarks`.

use crate::common;

use std::path::PathBuf;
use std::process::Command;

/// `target/debug/examples/NAME`, beside this test binary's `deps/`.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("this test's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --examples` first (scripts/test does)",
        path.display()
    );
    path
}

/// Run benchmark `name` with `args` (in a scratch directory, so files it writes land there);
/// panic with its output unless it exits 0. Returns what it printed.
/// The row of a printed Markdown table whose first cell is `label`.
fn row<'a>(printed: &'a str, label: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("| {label} |")))
        .unwrap_or_else(|| panic!("no {label} row:\n{printed}"))
}

fn run(name: &str, args: &[&str]) -> String {
    let scratch = std::env::temp_dir().join(format!("lab-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let output = Command::new(example(name))
        .args(args)
        .current_dir(&scratch)
        .output()
        .expect("the benchmark starts");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} {args:?} exited with {}:\n{printed}",
        output.status
    );
    printed
}

#[test]
fn compare_prints_a_row_for_every_technique() {
    let printed = run(
        "compare",
        &["--clients", "2", "--seconds", "2", "--speed", "10"],
    );
    for row in [
        "HTTP polling",
        "piggyback",
        "XHR long polling",
        "forever iframe",
        "fetch streaming",
        "Server-Sent Events",
        "WebSocket",
    ] {
        let line = printed.lines().find(|l| l.starts_with(row));
        let line = line.unwrap_or_else(|| panic!("no {row} row:\n{printed}"));
        assert!(line.contains("p99") && line.contains("lost"), "{line}");
    }
}

/// The capacity benchmark in both parking modes: every connection of the step is held.
#[test]
fn capacity_holds_every_connection_of_its_step_in_both_parking_modes() {
    for parking in ["thread", "queue"] {
        let printed = run("capacity", &["--steps", "20", "--parking", parking]);
        // A Markdown row, as the book shows it: | N | held | threads | ...
        let row = printed
            .lines()
            .find(|l| l.starts_with("| 20 |"))
            .unwrap_or_else(|| panic!("no row for 20 ({parking}):\n{printed}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], "20", "all 20 held ({parking}): {row}");
    }
}

#[test]
fn latency_measures_every_technique() {
    let with_threads = ["long-poll", "stream", "sse", "ws", "socket.io"].map(|t| (t, None));
    // `--queue`: long polls, streams and WebSockets in the waiting room (`waiting_room`).
    let without = ["long-poll", "stream", "sse", "ws"].map(|t| (t, Some("--queue")));
    for (technique, queue) in with_threads.into_iter().chain(without) {
        let mut args = vec![technique, "4", "--events", "4", "--gap-ms", "100"];
        args.extend(queue);
        let printed = run("latency", &args);
        if queue.is_some() {
            assert!(
                printed.contains("(queue parking)"),
                "{technique}:\n{printed}"
            );
        }
        assert!(
            printed.contains("latency p50") && printed.contains("per delivered event"),
            "{technique}:\n{printed}"
        );
        assert!(
            printed.contains("delivered 16, lost 0"),
            "{technique}:\n{printed}"
        );
    }
}

/// `--throughput` at a size that every step passes: it climbs the rates up to `--max-rate`,
/// delivers every event of every step, and names the top rate as the highest that passed.
#[test]
fn latency_throughput_climbs_the_rates_and_names_the_highest_that_passed() {
    let printed = run(
        "latency",
        &[
            "sse",
            "4",
            "--throughput",
            "--seconds",
            "1",
            "--max-rate",
            "30",
        ],
    );
    for rate in ["20/s", "25/s", "30/s"] {
        let step = printed
            .lines()
            .find(|l| l.trim_start().starts_with(rate))
            .unwrap_or_else(|| panic!("no {rate} step:\n{printed}"));
        assert!(step.contains("lost 0,"), "{step}");
    }
    assert!(
        printed.contains("highest rate that passed every round: lab 30/s"),
        "{printed}"
    );
}

/// `latency wakes N`: both ways of waking parked threads, three rounds each, timed.
#[test]
fn latency_wakes_times_a_send_each_against_one_notify_all() {
    let printed = run("latency", &["wakes", "50"]);
    for way in ["a channel send each, round 3", "one notify_all, round 3"] {
        assert!(printed.contains(way), "{way}:\n{printed}");
    }
    assert!(printed.contains("woken threads running: p50"), "{printed}");
}

#[test]
fn flood_holds_a_small_flood_of_every_kind_and_comes_back_to_baseline() {
    let printed = run("flood", &["--connections", "30"]);
    for kind in ["idle", "long-poll", "stream", "websocket"] {
        let row = row(&printed, kind);
        assert!(row.contains("yes, in"), "{kind} did not come back: {row}");
    }
}

#[test]
fn session_flood_refuses_past_the_cap_serves_the_second_client_and_expires_everything() {
    let printed = run(
        "session_flood",
        &[
            "--handshakes",
            "40",
            "--lab-args",
            "--max-sessions-per-client 25",
        ],
    );
    for framework in ["socket_io", "bayeux", "pushlets", "atmosphere"] {
        let row = row(&printed, framework);
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!((cells[4], cells[5]), ("25", "15"), "{row}");
        assert!(
            cells[6].ends_with("/ 0"),
            "the second client was refused: {row}"
        );
        assert!(
            cells[8].ends_with("→ 0"),
            "sessions left after expiry: {row}"
        );
    }
}

/// A short soak with fast churn (half the clients leave each second, by a close, a reset or a
/// request left half-answered, and come back from their cursor) and a burst of resets: no
/// event lost, repeated or reordered across the comings back, and the lab's descriptors back
/// to where they started once the clients have gone. In both parking modes.
#[test]
fn soak_loses_nothing_across_churn_and_gives_back_every_descriptor() {
    for queue in [None, Some("--queue")] {
        let mut args = vec!["--seconds", "4", "--clients", "8", "--rate", "10"];
        args.extend(["--churn", "50", "--burst", "20"]);
        args.extend(queue);
        let printed = run("soak", &args);
        let parking = if queue.is_some() { "queue" } else { "thread" };
        assert!(
            printed.contains(&format!("--parking {parking}")),
            "{printed}"
        );
        assert!(
            printed.contains("lost, repeated or reordered an event 0"),
            "{printed}"
        );
        let number_after = |text: &str, label: &str| -> u64 {
            let at = text
                .find(label)
                .unwrap_or_else(|| panic!("no {label:?}:\n{printed}"));
            text[at + label.len()..]
                .trim_start()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no number after {label:?}:\n{printed}"))
        };
        // Every client came back at least once, and the burst was reset.
        assert!(number_after(&printed, "visits") > 8, "{printed}");
        assert_eq!(
            number_after(&printed, "burst connections reset"),
            20,
            "{printed}"
        );
        // "the lab at start: T threads, F descriptors" and "after the clients left: T threads,
        // F descriptors": the descriptors back to within two.
        let descriptors = |label: &str| {
            let line = printed.lines().find(|l| l.starts_with(label)).unwrap();
            number_after(line, "threads,")
        };
        let (start, after) = (
            descriptors("the lab at start"),
            descriptors("after the clients left"),
        );
        assert!(after <= start + 2, "{parking}: {printed}");
    }
}

#[test]
fn scale_out_carries_every_event_to_both_labs_through_the_tests_redis() {
    let redis = common::RedisServer::start();
    let printed = run("scale_out", &["--bench", "2", "--redis", &redis.url()]);
    let line = printed
        .lines()
        .find(|l| l.contains("through one Redis"))
        .unwrap_or_else(|| panic!("no figures:\n{printed}"));
    // "... lab A has up to N, lab B up to N (expected N)": all three the same.
    let numbers: Vec<&str> = line
        .rsplit_once("lab A has up to ")
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(numbers.len(), 3, "{line}");
    assert!(numbers.iter().all(|n| *n == numbers[0]), "{line}");
}

/// `latency --against peer`: the lab and the single-threaded Node peer (bench/peer, installed
/// with `npm ci` by the benchmark itself), interleaved, with the ratio of their p99.
#[test]
fn latency_against_the_node_peer_prints_both_and_their_ratio() {
    let printed = run(
        "latency",
        &[
            "sse",
            "4",
            "--events",
            "4",
            "--gap-ms",
            "100",
            "--against",
            "peer",
        ],
    );
    assert_eq!(printed.matches("round ").count(), 4, "{printed}");
    assert!(printed.contains("p99 lab / peer"), "{printed}");
    assert_eq!(
        printed.matches("lost 0").count(),
        4,
        "nothing lost: {printed}"
    );
}

#[test]
fn behind_a_proxy_measures_every_technique_direct_and_through_nginx_losing_nothing() {
    // Its own lab in-process and its own nginx (scripts/test installs it) on free ports.
    let printed = run("behind_a_proxy", &["--measure", "3"]);
    for technique in [
        "polling",
        "long-poll",
        "script-long-poll",
        "iframe",
        "multipart",
        "stream",
        "sse",
        "ws",
    ] {
        let row = row(&printed, technique);
        assert!(row.ends_with("| 0/0 |"), "lost events: {row}");
    }
}

/// `scripts/figures`, the book's one command for its tables, is valid bash, knows its parts,
/// and refuses an unknown one before it builds or measures anything.
#[test]
fn the_figures_script_parses_and_refuses_an_unknown_part() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/figures");
    let syntax = Command::new("bash").args(["-n", script]).status().unwrap();
    assert!(syntax.success(), "bash -n {script}");
    let refused = Command::new(script).arg("no-such-part").output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    for part in [
        "compare", "latency", "capacity", "flood", "sessions", "soak", "proxy", "redis",
    ] {
        assert!(said.contains(part), "{said}");
    }
}
