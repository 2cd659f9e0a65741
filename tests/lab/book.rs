//! The book runs as written: every shell command in LESSONS.md and README.md that needs only
//! the lab and curl is run here against a lab on a free port, and what the book says it
//! prints is checked; every `cargo run` line names an example that exists and flags the lab
//! accepts; every test the book names exists.
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

fn every_line() -> Vec<Vec<Line>> {
    let mut all = shell_blocks("LESSONS.md");
    all.extend(shell_blocks("README.md"));
    all.extend(powershell_as_bash("LESSONS.md"));
    all.extend(powershell_as_bash("README.md"));
    all
}

/// The PowerShell commands that bash can run as they are, once `curl.exe` is `curl` and
/// `Select-Object -First 1` is `head -1` (PowerShell's double quotes mean what bash's do on
/// these lines); lines with PowerShell's own syntax (`$`, `{`) are left out.
fn powershell_as_bash(file: &'static str) -> Vec<Vec<Line>> {
    fenced_blocks(file, "powershell")
        .into_iter()
        .map(|block| {
            block
                .into_iter()
                .filter(|l| l.command.starts_with("curl.exe ") || l.command.starts_with("cargo "))
                .filter(|l| !l.command.contains('$') && !l.command.contains('{'))
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
    let mut text = std::fs::read_to_string(root().join("LESSONS.md")).unwrap();
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

/// Part VII (teaching) is for any laptop: each of its `sh` blocks is followed by a
/// `powershell` block with as many commands, and a `cargo` command is the same in both.
#[test]
fn every_command_of_the_class_plan_has_a_powershell_form() {
    let text = std::fs::read_to_string(root().join("LESSONS.md")).unwrap();
    let part = &text[text.find("# Part VII").unwrap()..text.find("# Appendices").unwrap()];
    // The fences in order, each with its commands (comments and blank lines aside).
    let mut fences: Vec<(String, Vec<String>)> = Vec::new();
    let mut open: Option<(String, Vec<String>)> = None;
    for line in part.lines().map(str::trim) {
        if let Some(language) = line.strip_prefix("```") {
            match open.take() {
                Some(done) => fences.push(done),
                None => open = Some((language.to_string(), Vec::new())),
            }
        } else if let Some((_, commands)) = open.as_mut() {
            let (command, _) = split_comment(line);
            if !command.is_empty() {
                commands.push(command);
            }
        }
    }
    let shell: Vec<usize> = (0..fences.len()).filter(|&i| fences[i].0 == "sh").collect();
    assert!(shell.len() >= 8, "only {} sh blocks found", shell.len());
    for i in shell {
        let (_, bash) = &fences[i];
        let Some((language, powershell)) = fences.get(i + 1) else {
            panic!("{bash:?} has no PowerShell form after it");
        };
        assert_eq!(language, "powershell", "after {bash:?}");
        assert_eq!(bash.len(), powershell.len(), "{bash:?} and {powershell:?}");
        for (b, p) in bash.iter().zip(powershell) {
            if b.starts_with("cargo ") {
                assert_eq!(b, p, "a cargo command is the same in both");
            }
            assert!(
                !p.contains(" curl "),
                "curl is Invoke-WebRequest in PowerShell 5: {p}"
            );
        }
    }
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
