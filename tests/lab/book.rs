//! The book runs as written: every shell command in the course (LESSONS.md), the reference
//! (REFERENCE.md) and README.md that needs only the lab and curl is run here against a lab on
//! a free port, and what the book says it prints is checked; every `cargo run` line names an
//! example that exists and flags the lab accepts; every test, file, Rust item and log line the
//! book names exists; every command has a PowerShell form; every link finds its heading; and
//! the course keeps its shape (an evening long, four parts a chapter, each linked to its
//! reference).
//!
//! How a line is read: a `sh` block's lines (a trailing `\` joins the next), each split into
//! its command and its comment. A command that talks to the lab (`127.0.0.1:8080`,
//! `localhost:8080`, `/dev/tcp/127.0.0.1/8080`) runs in one bash per block, in order, so a
//! variable set by one line (`SID=$(curl ...)`) serves the next, with 8080 and 8082 replaced
//! by the test lab's two ports. `curl` is a wrapper that gives every request 3 s and records
//! its status. Then:
//!
//! - a comment naming a status (`# 400`, `# -i shows the 101`) must be what came back;
//!   otherwise every answer must be a 2xx or a 101;
//! - a request may run out its 3 s only if the book says it is held (a stream with `-N`, a
//!   long poll, a comment saying "held" or "hangs");
//! - a comment that is output (it starts with `{` or `"`, perhaps after a status) must appear
//!   in what the line printed.

use crate::common::start_lab_with;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One command of a `sh` block, with where it came from.
#[derive(Clone, Debug)]
struct Line {
    file: &'static str,
    number: usize,
    command: String,
    comment: String,
}

/// The `sh` blocks of a Markdown file, as lines.
fn shell_blocks(file: &'static str) -> Vec<Vec<Line>> {
    fenced_blocks(file, "sh")
}

/// The blocks fenced as `language` (```` ```sh ````, ```` ```powershell ````) of a Markdown
/// file, as lines.
fn fenced_blocks(file: &'static str, language: &str) -> Vec<Vec<Line>> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let fence = format!("```{language}");
    let mut blocks = Vec::new();
    let mut block: Option<Vec<Line>> = None;
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.starts_with("```") {
            match block.take() {
                Some(done) => blocks.push(done),
                None if trimmed == fence => block = Some(Vec::new()),
                None => block = None,
            }
            continue;
        }
        let Some(lines) = block.as_mut() else {
            continue;
        };
        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        joined.push_str(trimmed);
        if let Some(continued) = joined.strip_suffix('\\') {
            pending = Some((start, format!("{continued} ")));
            continue;
        }
        if joined.trim().is_empty() {
            continue;
        }
        let (command, comment) = split_comment(&joined);
        lines.push(Line {
            file,
            number: start,
            command,
            comment,
        });
    }
    blocks
}

/// `cmd 'a # b' # comment` → (`cmd 'a # b'`, `comment`): a `#` after whitespace and outside
/// quotes starts the comment.
fn split_comment(line: &str) -> (String, String) {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => {
                return (
                    line[..at].trim().to_string(),
                    line[at + 1..].trim().to_string(),
                );
            }
            _ => {}
        }
        previous = c;
    }
    (line.trim().to_string(), String::new())
}

/// The book's two halves.
const BOOK: [&str; 2] = ["LESSONS.md", "REFERENCE.md"];

fn every_line() -> Vec<Vec<Line>> {
    let mut all = Vec::new();
    for file in BOOK.into_iter().chain(["README.md"]) {
        all.extend(shell_blocks(file));
        all.extend(powershell_as_bash(file));
    }
    all
}

/// The book's text, both halves.
fn book_text() -> String {
    BOOK.iter()
        .map(|file| std::fs::read_to_string(root().join(file)).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The PowerShell commands that bash can run as they are, once `curl.exe` is `curl` and
/// `Select-Object -First 1` is `head -1` (PowerShell's double quotes mean what bash's do on
/// these lines); lines with PowerShell's own syntax (`$`, `{`, an expression in ` (...)`)
/// are left out.
fn powershell_as_bash(file: &'static str) -> Vec<Vec<Line>> {
    fenced_blocks(file, "powershell")
        .into_iter()
        .map(|block| {
            block
                .into_iter()
                .filter(|l| l.command.starts_with("curl.exe ") || l.command.starts_with("cargo "))
                .filter(|l| {
                    !l.command.contains('$')
                        && !l.command.contains('{')
                        && !l.command.contains(" (")
                })
                .map(|l| Line {
                    command: l
                        .command
                        .replacen("curl.exe ", "curl ", 1)
                        .replace("| Select-Object -First 1", "| head -1"),
                    ..l
                })
                .collect()
        })
        .collect()
}

fn talks_to_the_lab(command: &str) -> bool {
    [
        "127.0.0.1:8080",
        "localhost:8080",
        "/dev/tcp/127.0.0.1/8080",
    ]
    .iter()
    .any(|address| command.contains(address))
        && !command.starts_with("cargo ")
        // The Socket.IO protocol's suite needs a lab with its own timings: its test,
        // `the_socket_io_protocol_suite_passes_whole`, runs the book's command against one.
        && !command.contains("tests/node/socket.io-protocol/")
}

/// The status a comment names (`# 400: no form`, `# -i shows the 101`), if any: three digits
/// standing alone, not part of an address (`127.0.0.1`) or a time (`0.25`).
fn expected_status(comment: &str) -> Option<String> {
    let bytes = comment.as_bytes();
    let standalone = |at: usize| {
        let before = at.checked_sub(1).map(|i| bytes[i]);
        let joins = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'.');
        // `400:` ends a status; `127.0`, `80:12` and `x400` are something else.
        let after = match bytes.get(at + 3) {
            Some(b':') => bytes.get(at + 4).copied().filter(u8::is_ascii_digit),
            other => other.copied(),
        };
        !joins(before) && before != Some(b':') && !joins(after)
    };
    (0..bytes.len().saturating_sub(2))
        .find(|&at| {
            bytes[at..at + 3].iter().all(u8::is_ascii_digit)
                && (b'1'..=b'5').contains(&bytes[at])
                && standalone(at)
        })
        .map(|at| comment[at..at + 3].to_string())
}

/// The output a comment shows (`# {"code":0,...}`), if it is output and not prose.
/// A status may come first: `# 400: {"code":0,...}`.
fn expected_output(comment: &str) -> Option<&str> {
    let after_status = match expected_status(comment) {
        Some(status) if comment.starts_with(&status) => comment[3..].trim_start_matches(':').trim(),
        _ => comment,
    };
    let shown = after_status.starts_with('{') || after_status.starts_with('"');
    (shown && !after_status.contains("...") && !after_status.contains('…')).then_some(after_status)
}

fn may_be_held(line: &Line) -> bool {
    let c = &line.command;
    c.contains(" -N ")
        || c.contains(" -N")
        || c.contains("long-poll")
        || c.contains("refresh")
        || c.contains("/cometd")
        || c.contains("transport=polling&sid")
        || line.comment.contains("held")
        || line.comment.contains("hangs")
}

/// The `curl` the book's commands run: the real one, given 3 s, its heads dumped to learn
/// each answer's status, written to `$BOOK_LOG` as "line exit-code status".
fn curl_wrapper(dir: &Path) {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v curl"])
            .output()
            .expect("sh runs")
            .stdout,
    )
    .unwrap();
    let script = format!(
        "#!/bin/bash\n\
         heads=$(mktemp)\n\
         {} --max-time 3 -D \"$heads\" \"$@\"\n\
         code=$?\n\
         status=$(grep -a '^HTTP/' \"$heads\" | tail -1 | cut -d' ' -f2)\n\
         echo \"$BOOK_LINE $code ${{status:-none}}\" >> \"$BOOK_LOG\"\n\
         rm -f \"$heads\"\n\
         exit $code\n",
        real.trim()
    );
    let path = dir.join("curl");
    std::fs::write(&path, script).unwrap();
    Command::new("chmod")
        .args(["+x", path.to_str().unwrap()])
        .status()
        .unwrap();
}

/// What one line printed and what its requests answered.
struct Ran {
    output: String,
    exit: Option<i32>,
    requests: Vec<(i32, String)>,
}

/// Runs a block's lab commands in one bash, in order.
fn run_block(lines: &[Line], port: u16, other_port: u16, bin: &Path, index: usize) -> Vec<Ran> {
    let log = bin.join(format!("block-{index}.log"));
    let mut script = String::from("set +e\n");
    for (i, line) in lines.iter().enumerate() {
        let command = line
            .command
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
            .replace("localhost:8080", &format!("localhost:{port}"))
            .replace(
                "/dev/tcp/127.0.0.1/8080",
                &format!("/dev/tcp/127.0.0.1/{port}"),
            )
            .replace(":8082", &format!(":{other_port}"));
        script.push_str(&format!(
            "export BOOK_LINE={i}\necho \"@@begin {i}\"\n{command}\necho \"\n@@end {i} $?\"\n"
        ));
    }
    let output = Command::new("timeout")
        .args(["60", "bash", "-c", &script])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("BOOK_LOG", &log)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    (0..lines.len())
        .map(|i| {
            let begin = format!("@@begin {i}\n");
            let from = stdout.find(&begin).map(|at| at + begin.len());
            let end = format!("\n@@end {i} ");
            let (text, exit) = match from {
                Some(from) => match stdout[from..].find(&end) {
                    Some(len) => {
                        let rest = &stdout[from + len + end.len()..];
                        let code = rest.split_whitespace().next().and_then(|c| c.parse().ok());
                        (stdout[from..from + len].to_string(), code)
                    }
                    None => (stdout[from..].to_string(), None),
                },
                None => (String::new(), None),
            };
            let requests = logged
                .lines()
                .filter_map(|l| {
                    let mut parts = l.split_whitespace();
                    let line: usize = parts.next()?.parse().ok()?;
                    let code: i32 = parts.next()?.parse().ok()?;
                    let status = parts.next()?.to_string();
                    (line == i).then_some((code, status))
                })
                .collect();
            Ran {
                output: text,
                exit,
                requests,
            }
        })
        .collect()
}

/// What is wrong with one line's run, if anything.
fn check(line: &Line, ran: &Ran, port: u16) -> Option<String> {
    let at = format!("{}:{}: {}", line.file, line.number, line.command);
    if ran.exit.is_none() {
        return Some(format!("{at}: did not finish"));
    }
    let expected = expected_status(&line.comment);
    if line.command.starts_with("curl ")
        || line.command.contains("$(curl ")
        || line.command.contains("| curl ")
        || line.command.contains("do curl ")
    {
        if ran.requests.is_empty() {
            return Some(format!("{at}: no request was made"));
        }
        for (code, status) in &ran.requests {
            let piped = line.command.contains('|');
            let exit_ok =
                *code == 0 || (*code == 28 && may_be_held(line)) || (*code == 23 && piped);
            if !exit_ok {
                return Some(format!("{at}: curl exited {code} (status {status})"));
            }
            let status_ok = match &expected {
                Some(want) => status == want || (status == "none" && may_be_held(line)),
                None => {
                    status.starts_with('2')
                        || status == "101"
                        || (status == "none" && *code == 28 && may_be_held(line))
                }
            };
            if !status_ok {
                return Some(format!(
                    "{at}: answered {status}, the book says {}",
                    expected.as_deref().unwrap_or("a success")
                ));
            }
        }
    } else if let Some(want) = &expected {
        if !ran.output.contains(want.as_str()) {
            return Some(format!(
                "{at}: printed {:?}, the book says {want}",
                ran.output
            ));
        }
    }
    if let Some(shown) = expected_output(&line.comment) {
        let shown = shown.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        if !ran.output.contains(&shown) {
            return Some(format!(
                "{at}: printed {:?}, the book shows {shown}",
                ran.output
            ));
        }
    }
    None
}

#[test]
fn every_curl_command_in_the_book_runs_as_written() {
    let lab = start_lab_with(|_| {});
    let (port, other_port) = (lab.addr().port(), lab.lab.other_addr.port());
    let bin = std::env::temp_dir().join(format!("lab-book-{}", std::process::id()));
    std::fs::create_dir_all(&bin).unwrap();
    curl_wrapper(&bin);
    let blocks: Vec<Vec<Line>> = every_line()
        .into_iter()
        .map(|block| {
            block
                .into_iter()
                .filter(|l| talks_to_the_lab(&l.command))
                .collect::<Vec<_>>()
        })
        .filter(|block| !block.is_empty())
        .collect();
    let count: usize = blocks.iter().map(Vec::len).sum();
    assert!(
        count >= 40,
        "only {count} commands found: is the parser right?"
    );
    // Every block at once, each in its own bash: the held ones wait out their 3 s together.
    let problems: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = blocks
            .iter()
            .enumerate()
            .map(|(index, block)| {
                let bin = &bin;
                scope.spawn(move || {
                    let ran = run_block(block, port, other_port, bin, index);
                    block
                        .iter()
                        .zip(&ran)
                        .filter_map(|(line, ran)| check(line, ran, port))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|run| run.join().unwrap())
            .collect()
    });
    let _ = std::fs::remove_dir_all(&bin);
    assert!(
        problems.is_empty(),
        "{} of {count} commands do not do what the book says:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `cargo run [--release] [--example NAME] [-- FLAGS]`: the example exists, and where it is
/// the lab (or one lesson of it) the flags parse.
#[test]
fn every_cargo_command_in_the_book_names_a_real_example_and_real_flags() {
    let benchmarks = [
        "compare",
        "capacity",
        "latency",
        "flood",
        "soak",
        "scale_out",
    ];
    let mut problems = Vec::new();
    let mut count = 0;
    for line in every_line().into_iter().flatten() {
        let command = line
            .command
            .trim_start_matches("RUST_LOG=debug ")
            .to_string();
        if !command.starts_with("cargo run") {
            continue;
        }
        count += 1;
        let words: Vec<String> = shell_words(&command);
        let (ours, flags) = match words.iter().position(|w| w == "--") {
            Some(at) => (&words[..at], words[at + 1..].to_vec()),
            None => (&words[..], Vec::new()),
        };
        let example = ours
            .iter()
            .position(|w| w == "--example")
            .and_then(|at| ours.get(at + 1));
        if let Some(name) = example {
            let examples = root().join("examples");
            if !examples.join(format!("{name}.rs")).is_file()
                && !examples.join(name).join("main.rs").is_file()
            {
                problems.push(format!("{}:{}: no example {name}", line.file, line.number));
                continue;
            }
            if benchmarks.contains(&name.as_str()) || name == "behind_a_proxy" {
                continue; // its own flags, run small by tests/lab/benchmarks.rs
            }
        }
        if let Err(e) = reverse_ajax_lab::Config::from_env_and_args(flags.clone()) {
            problems.push(format!(
                "{}:{}: the lab refuses {flags:?}: {e:?}",
                line.file, line.number
            ));
        }
    }
    assert!(count >= 30, "only {count} cargo commands found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Words as the shell splits them, enough for the book's `cargo` lines (quotes, no escapes).
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in command.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            (_, c) => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Every test the book or the README names by its snake_case name is a function somewhere in
/// the tests or the source: a renamed test cannot leave the book pointing at nothing.
#[test]
fn every_test_the_book_names_exists() {
    let mut text = book_text();
    text.push_str(&std::fs::read_to_string(root().join("README.md")).unwrap());
    let mut functions = String::new();
    for dir in ["tests", "src"] {
        collect_sources(&root().join(dir), &mut functions);
    }
    let defined: std::collections::BTreeSet<&str> = functions
        .split("fn ")
        .skip(1)
        .map(|rest| {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    let mut missing = BTreeMap::new();
    // Every `code span` that is a test's name: snake_case, four words or more, perhaps after
    // its module (`queue_parking::...`).
    for span in text.split('`') {
        let name = span.rsplit("::").next().unwrap_or(span);
        let words: Vec<&str> = name.split('_').collect();
        let is_name = words.len() >= 4
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && words.iter().all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
            && span.split("::").all(|part| {
                part.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if is_name && !defined.contains(name) {
            missing.insert(name.to_string(), ());
        }
    }
    assert!(
        missing.is_empty(),
        "the book names tests that do not exist: {:?}",
        missing.keys().collect::<Vec<_>>()
    );
}

fn collect_sources(dir: &Path, into: &mut String) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_sources(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "mjs") {
            into.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

/// Every laptop a class brings: each `sh` block of the book is followed by a `powershell`
/// block with as many commands, and a `cargo` command is the same in both (but for how each
/// shell sets an environment variable).
#[test]
fn every_command_of_the_book_has_a_powershell_form() {
    let mut checked = 0;
    for file in BOOK {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        // The fences in order, each with its commands (comments and blank lines aside).
        let mut fences: Vec<(String, Vec<String>)> = Vec::new();
        let mut open: Option<(String, Vec<String>)> = None;
        let mut pending = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(language) = line.strip_prefix("```") {
                match open.take() {
                    Some(done) => fences.push(done),
                    None => open = Some((language.to_string(), Vec::new())),
                }
            } else if let Some((_, commands)) = open.as_mut() {
                pending.push_str(line);
                if let Some(continued) = pending.strip_suffix('\\') {
                    pending = format!("{continued} ");
                    continue;
                }
                let (command, _) = split_comment(&std::mem::take(&mut pending));
                if !command.is_empty() {
                    commands.push(command);
                }
            }
        }
        for (i, (language, bash)) in fences.iter().enumerate() {
            if language != "sh" {
                continue;
            }
            checked += 1;
            let Some((language, powershell)) = fences.get(i + 1) else {
                panic!("{file}: {bash:?} has no PowerShell form after it");
            };
            assert_eq!(language, "powershell", "{file}: after {bash:?}");
            assert_eq!(
                bash.len(),
                powershell.len(),
                "{file}: {bash:?} and {powershell:?}"
            );
            for (b, p) in bash.iter().zip(powershell) {
                let b = b.trim_start_matches("RUST_LOG=debug ");
                let p = p.trim_start_matches("$env:RUST_LOG = \"debug\"; ");
                if b.starts_with("cargo ") {
                    assert_eq!(b, p, "{file}: a cargo command is the same in both");
                }
                assert!(
                    !p.contains(" curl ") && !p.starts_with("curl "),
                    "{file}: curl is Invoke-WebRequest in PowerShell 5: {p}"
                );
            }
        }
    }
    assert!(checked >= 30, "only {checked} sh blocks found");
}

/// The log the class plan shows (Part VII, "The room") is what the lab prints on every
/// interface: the same lines, word for word, once the time, addresses and figures (the
/// machine's own) are set aside.
#[test]
fn the_class_plans_log_sample_is_what_the_lab_prints() {
    let text = std::fs::read_to_string(root().join("LESSONS.md")).unwrap();
    let room = &text[text.find("### The room").unwrap()..];
    let sample = &room[room.find("```text").unwrap() + 7..];
    let sample = &sample[..sample.find("```").unwrap()];
    let mut lab = Command::new(env!("CARGO_BIN_EXE_reverse-ajax-lab"))
        .args(["--addr", "0.0.0.0:0", "--other-addr", "0.0.0.0:0"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The last line of the sample is the last the lab prints at start.
    let mut printed = String::new();
    let mut reader = std::io::BufReader::new(lab.stderr.take().unwrap());
    while !printed.contains("in this machine's firewall") {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut reader, &mut line).unwrap() == 0 {
            break;
        }
        printed.push_str(&line);
    }
    let _ = lab.kill();
    let _ = lab.wait();
    // A timestamp, and every run of digits (addresses, ports, limits), made alike.
    let alike = |line: &str| -> String {
        let line = match line.find(" INFO") {
            Some(at) if line.starts_with('[') => &line[at..],
            _ => line,
        };
        let mut out = String::new();
        for c in line.chars() {
            if c.is_ascii_digit() {
                if !out.ends_with('N') {
                    out.push('N');
                }
            } else {
                out.push(c);
            }
        }
        out.trim_end().to_string()
    };
    let printed: Vec<String> = printed.lines().map(alike).collect();
    // (A machine with no address but loopback prints one URL, and no "also on".)
    let one_url = !printed.iter().any(|l| l.contains("also on"));
    for line in sample.lines().filter(|l| !l.trim().is_empty()) {
        if one_url && line.contains("also on") {
            continue;
        }
        assert!(
            printed.contains(&alike(line)),
            "the book shows {line:?}; the lab printed:\n{}",
            printed.join("\n")
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped but `-` and `_`, spaces as
/// `-`; a heading met again gets `-1`, `-2`...
fn anchors(file: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = std::collections::BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(title) = line.strip_prefix('#').filter(|_| !fenced) else {
            continue;
        };
        let title = title.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_default();
        anchors.insert(match *count {
            0 => slug.clone(),
            n => format!("{slug}-{n}"),
        });
        *count += 1;
    }
    anchors
}

/// Every link between the course, the reference and the README finds its file and heading:
/// the course says where the reference is, and the reference where the course is.
#[test]
fn every_link_of_the_book_finds_its_heading() {
    let mut broken = Vec::new();
    let mut count = 0;
    for file in BOOK.into_iter().chain(["README.md"]) {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for link in text.split("](").skip(1) {
            let Some(target) = link.split(')').next() else {
                continue;
            };
            if target.starts_with("http") || target.contains(' ') {
                continue;
            }
            count += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if path.is_empty() { file } else { path };
            if !root().join(path).exists() {
                broken.push(format!("{file}: ({target}): no file {path}"));
            } else if !anchor.is_empty() && !anchors(path).contains(anchor) {
                broken.push(format!(
                    "{file}: ({target}): no heading #{anchor} in {path}"
                ));
            }
        }
    }
    assert!(count >= 40, "only {count} links found");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The course is an evening: Parts I to V in 1,200 lines at most. Each chapter that names a
/// lesson has its Problem, Idea, Run It and one Try This, in that order and nothing else, and
/// links to its reference chapter, which links back.
#[test]
fn the_course_is_an_evening_and_each_chapter_links_to_its_reference() {
    let course = std::fs::read_to_string(root().join("LESSONS.md")).unwrap();
    let reference = std::fs::read_to_string(root().join("REFERENCE.md")).unwrap();
    let start = course.find("\n# Part I:").unwrap();
    let end = course.find("\n# Part VI:").unwrap();
    let evening = course[start..end].lines().count();
    assert!(evening <= 1200, "Parts I to V are {evening} lines");
    let course_anchors = anchors("LESSONS.md");
    let reference_anchors = anchors("REFERENCE.md");
    for chapter in course.split("\n## ").skip(1) {
        let heading = chapter.lines().next().unwrap();
        if !heading.starts_with("Chapter ") || !heading.contains('`') {
            continue;
        }
        let body = chapter.split("\n# ").next().unwrap();
        let parts: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("### "))
            .collect();
        assert_eq!(
            parts,
            ["The Problem", "The Idea", "Run It", "Try This"],
            "{heading}"
        );
        let try_this = &body[body.find("### Try This").unwrap()..];
        assert!(
            !try_this.contains("\n2. "),
            "{heading}: one Try This in the course (more go in the reference)"
        );
        let number = heading.split(':').next().unwrap();
        let link = first_link(try_this, "REFERENCE.md")
            .unwrap_or_else(|| panic!("{heading}: no link to its reference chapter"));
        assert!(
            link.starts_with(&number.to_lowercase().replace(' ', "-")),
            "{heading} links to #{link}"
        );
        assert!(reference_anchors.contains(link), "{heading}: #{link}");
        let back = reference
            .split("\n## ")
            .find(|c| c.starts_with(heading))
            .unwrap_or_else(|| panic!("REFERENCE.md has no \"## {heading}\""));
        let back_link = first_link(back, "LESSONS.md")
            .unwrap_or_else(|| panic!("REFERENCE.md's {heading} does not link back"));
        assert!(
            course_anchors.contains(back_link),
            "{heading}: back to #{back_link}"
        );
    }
}

/// The anchor of the first Markdown link to `file` in `text` (`[...](file#anchor)`).
fn first_link<'a>(text: &'a str, file: &str) -> Option<&'a str> {
    let rest = text.split(&format!("({file}#")).nth(1)?;
    rest.split(')').next()
}

/// Every line of the sources, for the names the book quotes.
fn sources() -> String {
    let mut text = String::new();
    for dir in ["src", "tests", "examples"] {
        collect_sources(&root().join(dir), &mut text);
    }
    text
}

/// Names the book quotes that are not the lab's own: the browser's, the JVM's, Rust's
/// standard library's, the frameworks' and the other crates' (checked by hand, once).
const NOT_OURS: &[&str] = &[
    "AsyncContext",
    "AsyncListener",
    "Arc",
    "BufWriter",
    "Condvar",
    "EventSource",
    "Mutex",
    "XMLHttpRequest",
    "WebSocket",
    "AtmosphereResource",
    "BroadcastFilter",
    "SecurityPolicy",
    "Broadcaster",
    "HttpServletResponse",
    "IOException",
    "Poller",
    "NioEndpoint",
    "TcpStream",
    "TcpListener",
    "SO_RCVTIMEO",
    "SO_SNDTIMEO",
    "MSG_DONTWAIT",
    "MSG_PEEK",
    "EAGAIN",
    "EMFILE",
    "ENFILE",
    "RUST_LOG",
    "TIME_WAIT",
    "CLOSE_WAIT",
    "TCP_NODELAY",
    "SCHED_BATCH",
    "GLIBC_TUNABLES",
    "RssAnon",
    "RssFile",
    "Instant",
    "Duration",
    "JoinHandle",
    "Option",
    "Result",
    "String",
    "Vec",
    "HashMap",
    "BTreeSet",
    "VecDeque",
    "Sender",
    "Receiver",
    "ReadableStream",
    "TextDecoder",
    "Error",
    "None",
    "Some",
    "Ok",
    "Err",
    // HTTP's headers and cookie attributes, a browser's stream, PowerShell's Select-*.
    "Allow",
    "Date",
    "Host",
    "Origin",
    "Referer",
    "Vary",
    "SameSite",
    "TextDecoderStream",
    "Select",
    // The frameworks' own (Atmosphere's, CometD's) and Java's.
    "TrackMessageSize",
    "BroadcasterCache",
    "Authorizer",
    "BlockingQueue",
];

/// Every name the book quotes as code that looks like one of the lab's: a file or folder of
/// the repository exists; a Rust path (`hub::Hub::publish`, `Request::client_left`) whose
/// first part is the lab's has every later part defined in the sources; a lone CamelCase
/// name is defined there (or is one of `NOT_OURS`). Renames cannot leave the book behind.
#[test]
fn every_name_the_book_quotes_is_real() {
    let sources = sources();
    let defined = |name: &str| {
        ["fn", "struct", "enum", "trait", "type", "const", "static", "mod", "macro_rules!"]
            .iter()
            .any(|kind| {
                sources.contains(&format!("{kind} {name}(")) // fn
                    || sources.contains(&format!("{kind} {name} "))
                    || sources.contains(&format!("{kind} {name}<"))
                    || sources.contains(&format!("{kind} {name};"))
                    || sources.contains(&format!("{kind} {name}:"))
            })
            // An enum's variant, a struct's field, a module's file.
            || sources.contains(&format!("    {name},"))
            || sources.contains(&format!("    {name}("))
            || sources.contains(&format!("    {name} {{"))
            || sources.contains(&format!("    pub {name}:"))
            || sources.contains(&format!("    {name}:"))
            || root().join(format!("src/{name}.rs")).exists()
            || root().join(format!("src/lessons/{name}.rs")).exists()
            || root().join(format!("src/lessons/{name}")).is_dir()
    };
    let ours = |first: &str| {
        if first.starts_with(|c: char| c.is_ascii_uppercase()) {
            defined(first) && !NOT_OURS.contains(&first)
        } else {
            root().join(format!("src/{first}.rs")).exists()
                || root().join(format!("src/lessons/{first}.rs")).exists()
                || root().join(format!("src/lessons/{first}")).is_dir()
                || sources.contains(&format!("mod {first}"))
        }
    };
    let mut missing = std::collections::BTreeSet::new();
    let mut checked = 0;
    for span in code_spans(&book_text()) {
        let span = span.as_str();
        if span.contains(char::is_whitespace) || span.is_empty() {
            continue;
        }
        let is_path = ["src/", "tests/", "html/", "examples/", "scripts/", "bench/"]
            .iter()
            .any(|p| span.starts_with(p));
        if is_path {
            // (A placeholder in capitals, `tests/lab/NAME.rs`, names no one file.)
            let placeholder = span
                .split(['/', '.', '-', '_'])
                .any(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase()));
            checked += 1;
            if !placeholder && !root().join(span.trim_end_matches('/')).exists() {
                missing.insert(span.to_string());
            }
            continue;
        }
        let words: Vec<&str> = span.trim_end_matches("()").split("::").collect();
        let identifier = |w: &str| {
            !w.is_empty()
                && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && w.starts_with(|c: char| c.is_ascii_alphabetic())
        };
        if !words.iter().all(|w| identifier(w)) {
            continue;
        }
        if words.len() == 1 {
            let name = words[0];
            let camel = name.starts_with(|c: char| c.is_ascii_uppercase())
                && name.chars().any(|c| c.is_ascii_lowercase())
                && !name.contains('_');
            if camel && !NOT_OURS.contains(&name) {
                checked += 1;
                if !defined(name) {
                    missing.insert(span.to_string());
                }
            }
            continue;
        }
        if !ours(words[0]) {
            continue; // std's, tungstenite's, a framework's
        }
        checked += 1;
        if !words[1..].iter().all(|w| defined(w)) {
            missing.insert(span.to_string());
        }
    }
    assert!(checked >= 150, "only {checked} names found");
    assert!(
        missing.is_empty(),
        "the book quotes names the code does not have: {missing:?}"
    );
}

/// Every line of a `log` block in the book is what the lab logs: it matches a format string
/// of the sources, each `{...}` in it standing for any text.
#[test]
fn every_log_line_the_book_shows_is_one_the_lab_prints() {
    let sources = sources();
    // The string literals of the sources, as (literal pieces between the placeholders).
    let formats: Vec<Vec<String>> = string_literals(&sources)
        .into_iter()
        .filter(|s| s.contains(' '))
        .map(|s: String| {
            let mut pieces = Vec::new();
            let mut piece = String::new();
            let mut depth = 0;
            let mut chars = s.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '{' if chars.peek() == Some(&'{') => {
                        chars.next();
                        piece.push('{');
                    }
                    '{' => {
                        depth += 1;
                        pieces.push(std::mem::take(&mut piece));
                    }
                    '}' if depth > 0 => depth -= 1,
                    '}' if chars.peek() == Some(&'}') => {
                        chars.next();
                        piece.push('}');
                    }
                    c if depth == 0 => piece.push(c),
                    _ => {}
                }
            }
            pieces.push(piece);
            pieces
        })
        // A format that is mostly placeholders (`"{} {}"`) would match any line.
        .filter(|pieces: &Vec<String>| {
            pieces
                .concat()
                .chars()
                .filter(char::is_ascii_alphabetic)
                .count()
                >= 6
        })
        .collect();
    let matches = |line: &str, pieces: &[String]| {
        let (first, rest) = pieces.split_first().unwrap();
        let Some(mut left) = line.strip_prefix(first.as_str()) else {
            return false;
        };
        if rest.is_empty() {
            return left.is_empty();
        }
        let (last, middle) = rest.split_last().unwrap();
        for piece in middle {
            match left.get(1..).and_then(|l| l.find(piece.as_str())) {
                Some(at) => left = &left[at + 1 + piece.len()..],
                None => return false,
            }
        }
        last.is_empty() || (left.len() > last.len() && left.ends_with(last.as_str()))
    };
    let mut lines = 0;
    let mut unknown = Vec::new();
    for file in BOOK {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let mut in_log = false;
        for line in text.lines() {
            let fence = line.trim_start();
            if fence.starts_with("```") {
                in_log = fence == "```log";
                continue;
            }
            if !in_log || line.trim().is_empty() {
                continue;
            }
            lines += 1;
            // `[time LEVEL target] message`: the message.
            let message = match line.split_once("] ") {
                Some((head, message)) if line.starts_with('[') && !head.contains(' ') => message,
                Some((head, message)) if line.starts_with('[') && head.split(' ').count() >= 3 => {
                    message
                }
                _ => line,
            };
            if !formats.iter().any(|f| matches(message.trim(), f)) {
                unknown.push(format!("{file}: {line}"));
            }
        }
    }
    assert!(lines >= 5, "only {lines} log lines found");
    assert!(
        unknown.is_empty(),
        "the book shows log lines the lab does not print:\n{}",
        unknown.join("\n")
    );
}

/// The `"..."` literals of Rust sources, escapes kept as written (`\\n` stays two characters),
/// a `'"'` character literal passed over.
fn string_literals(sources: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut chars = sources.chars();
    let mut previous = ' ';
    while let Some(c) = chars.next() {
        if c == '"' && previous != '\'' {
            let mut literal = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        literal.push(c);
                        if let Some(next) = chars.next() {
                            literal.push(next);
                        }
                    }
                    '"' => break,
                    c => literal.push(c),
                }
            }
            literals.push(literal);
            previous = '"';
            continue;
        }
        previous = c;
    }
    literals
}

/// The code spans of Markdown text outside its fenced blocks: a run of backticks, then
/// everything up to the next run of as many (so ``` `` a`b `` ``` is one span).
fn code_spans(markdown: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    let mut spans = Vec::new();
    let bytes = prose.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'`' {
            at += 1;
            continue;
        }
        let run = bytes[at..].iter().take_while(|&&b| b == b'`').count();
        let start = at + run;
        let fence = "`".repeat(run);
        let mut search = start;
        let end = loop {
            match prose[search..].find(&fence) {
                Some(found) => {
                    let end = search + found;
                    let after = prose[end..].bytes().take_while(|&b| b == b'`').count();
                    if after == run {
                        break Some(end);
                    }
                    search = end + after;
                }
                None => break None,
            }
        };
        match end {
            Some(end) => {
                spans.push(prose[start..end].trim().to_string());
                at = end + run;
            }
            None => at = start,
        }
    }
    spans
}

/// Every `cargo test --test lab NAME::` the book gives names a module of the test binary
/// (`mod NAME;` in tests/lab/main.rs), and its `--skip` leaves that module's tests alone.
#[test]
fn every_test_command_of_the_book_names_a_module_of_the_tests() {
    let main = std::fs::read_to_string(root().join("tests/lab/main.rs")).unwrap();
    let mut checked = 0;
    for span in code_spans(&book_text()) {
        let Some(rest) = span.strip_prefix("cargo test --test lab ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(module) = words.next().and_then(|w| w.strip_suffix("::")) else {
            continue;
        };
        checked += 1;
        assert!(
            main.contains(&format!("\nmod {module};\n")),
            "`{span}`: no `mod {module};` in tests/lab/main.rs"
        );
        // `--skip X` drops every test whose name holds X: never this module's own.
        let skips: Vec<&str> = rest
            .split("--skip ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        for skip in skips {
            assert!(
                !format!("{module}::").contains(skip),
                "`{span}` skips its own tests"
            );
        }
    }
    assert!(checked >= 20, "only {checked} test commands found");
}
