//! Workaround 2, continued: **the door** (tiny_http owns `accept`, so it cannot refuse there).
//!
//! At the descriptor limit tiny_http's accept thread dies, and until descriptors are free
//! again (`supervise` waits for them) nobody accepts: every new connection waits in the
//! kernel's listening backlog, `/stats` and the teacher's page with them. Held long polls
//! keep their descriptors until their deadlines, so that wait was up to two minutes in a
//! flood (LESSONS.md chapter 13: 5–6 of 25 probes of `/stats` unanswered after 5 s).
//!
//! So while it waits, the supervisor keeps the door: it accepts the waiting connections
//! itself, one at a time, with a descriptor kept spare for the purpose (libev's trick for
//! `EMFILE`), answers `/stats` and the pages from the lab, and everything else with
//! `503 Service Unavailable` and `Retry-After: 2`, then closes.
//!
//! ```text
//! (12,000 long polls; the lab holds 6,000, at its descriptor limit)
//! tiny_http: accept → "Too many open files"; its accept thread ends
//! door:      close the spare descriptor, accept one connection, read its head (50 ms at most)
//!   GET /events/long-poll?timeout=120 HTTP/1.1    → 503, Retry-After: 2, Connection: close
//!   GET /stats HTTP/1.1                           → 200 {"parked":5709,…}, Connection: close
//!            close it, open the spare again; next
//! (time passes: deadlines answer, descriptors come back)
//! supervisor: below 90 % → a new tiny_http server accepts again; the door closes
//! ```
//!
//! 1. `Door::keep_while`: while the lab is short of descriptors, answer one knock at a time.
//! 2. `Door::answer_one`: give up the spare descriptor, accept, take the spare back.
//! 3. `read_head`: the request line and `Host`, from what the client has sent; a connection
//!    that has sent nothing gets 50 ms of grace, and none at all when others are waiting
//!    behind it (an idle flood must not hold the door).
//!
//! A real server owns its accept loop and does this as part of it (nginx, libev); here it is
//! a workaround, used only while tiny_http cannot accept. Test:
//! `at_the_descriptor_limit_the_door_answers_stats_and_refuses_the_rest_with_503`
//! (tests/limits.rs).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a client asked, as read at the door.
#[derive(Debug, PartialEq)]
pub struct Knock {
    pub method: String,
    /// Without its query.
    pub path: String,
    pub host: Option<String>,
}

/// An answer from the lab: status, content type, body.
pub type Answer = (u16, &'static str, Vec<u8>);

/// What the lab answers at the door (`None`: 503). Set once the lab exists.
pub type Answers = Arc<OnceLock<Box<dyn Fn(&Knock) -> Option<Answer> + Send + Sync>>>;

/// What the door did, for `/stats`.
#[derive(Debug, Default)]
pub struct DoorCounts {
    /// Requests the lab answered at the door (`/stats`, pages).
    pub answered: AtomicU64,
    /// Connections refused with 503.
    pub refused: AtomicU64,
}

/// A supervisor's door, and the descriptor it keeps spare for it.
pub struct Door {
    answers: Answers,
    counts: Arc<DoorCounts>,
    spare: Option<File>,
}

/// How long a connection that has sent nothing may take to send its head.
const GRACE: Duration = Duration::from_millis(50);

/// Request heads longer than this are not read at the door (the connection gets 503).
const MAX_HEAD: usize = 8 * 1024;

impl Door {
    pub fn new(answers: Answers, counts: Arc<DoorCounts>) -> Door {
        Door {
            answers,
            counts,
            spare: File::open("/dev/null").ok(),
        }
    }

    /// Step 1: keep the door while `short()` says descriptors are short.
    pub fn keep_while(&mut self, listener: &TcpListener, short: impl Fn() -> bool) {
        let mut opened = false;
        let port = listener.local_addr().map_or(0, |a| a.port());
        while short() {
            if !opened {
                opened = true;
                log::warn!(
                    "at the descriptor limit: the door of port {port} answers /stats and pages, and 503 to the rest, until descriptors are free"
                );
            }
            // Answer whoever waits for 100 ms before asking `short()` again: counting
            // ten thousand descriptors takes milliseconds, more than an answer.
            let until = Instant::now() + Duration::from_millis(100);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                // BLOCKS: until a connection waits to be accepted, or `left` passes.
                if left.is_zero() || !waiting(listener, left.as_millis() as i32) {
                    break;
                }
                if !self.answer_one(listener) {
                    // BLOCKS: a pause, so a failing accept does not spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if opened {
            log::info!("descriptors are free again: the door of port {port} closes");
        }
    }

    /// Step 2: accept one connection with the spare descriptor, answer it, close it.
    /// `false` if it could not accept.
    fn answer_one(&mut self, listener: &TcpListener) -> bool {
        drop(self.spare.take());
        // (Does not block: `poll` said a connection waits. Had it gone meanwhile, `accept`
        // would wait for the next one, at most the listener's `--idle-timeout`.)
        let accepted = match listener.accept() {
            Ok((mut stream, peer)) => {
                let knock = read_head(&mut stream, listener);
                let answer = knock
                    .as_ref()
                    .and_then(|k| self.answers.get().and_then(|answer| answer(k)));
                let counter = match answer {
                    Some(_) => &self.counts.answered,
                    None => &self.counts.refused,
                };
                counter.fetch_add(1, Relaxed);
                log::debug!(
                    "door: {peer} asked {knock:?}; answered {}",
                    answer.is_some()
                );
                let _ = write_answer(&mut stream, answer);
                drain_and_close(stream);
                true
            }
            // Another thread took the descriptor first (or the client left): next time.
            Err(e) => {
                log::debug!("door: accept failed: {e}");
                false
            }
        };
        self.spare = File::open("/dev/null").ok();
        accepted
    }
}

/// Is a connection waiting on `listener`? Waits up to `ms` for one.
fn waiting(listener: &TcpListener, ms: i32) -> bool {
    let mut poll = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let ready = unsafe { libc::poll(&mut poll, 1, ms) };
    ready == 1 && poll.revents & libc::POLLIN != 0
}

/// Step 3: the request line and `Host`, if a whole head arrives in time.
fn read_head(stream: &mut TcpStream, listener: &TcpListener) -> Option<Knock> {
    let started = Instant::now();
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0; 2048];
    loop {
        let left = GRACE.checked_sub(started.elapsed())?;
        // A connection with nothing sent yet gets its grace only when nobody waits behind
        // it; otherwise it is asked once, without waiting. (Even 1 ms each was too long:
        // the kernel rounds a socket timeout up to its tick, and 500 idle connections
        // waiting ahead of `/stats` took 4.4 s to refuse.)
        let impatient = head.is_empty() && waiting(listener, 0);
        stream.set_nonblocking(impatient).ok()?;
        stream.set_read_timeout(Some(left)).ok()?;
        // BLOCKS: until the client sends, or `left` passes (not at all when impatient:
        // "would block" is an error, and the connection gets 503).
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            return parse_head(&head[..end]);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

/// The method, path and `Host` of a request head (without its blank line).
fn parse_head(head: &[u8]) -> Option<Knock> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?;
    if !request_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next()?.to_string();
    let host = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("host")
            .then(|| value.trim().to_string())
    });
    Some(Knock { method, path, host })
}

/// The lab's answer, or 503; either way `Connection: close`.
fn write_answer(stream: &mut TcpStream, answer: Option<Answer>) -> io::Result<()> {
    let (status, reason, content_type, body, retry) = match answer {
        Some((status, content_type, body)) => (status, "OK", content_type, body, ""),
        None => (
            503,
            "Service Unavailable",
            "text/plain; charset=utf-8",
            b"The lab is at its connection limit: try again in 2 s.\n".to_vec(),
            "Retry-After: 2\r\n",
        ),
    };
    let reason = if status == 404 { "Not Found" } else { reason };
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(Duration::from_millis(200)))?;
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {retry}Cache-Control: no-store\r\nX-Lab-Door: at the descriptor limit\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // BLOCKS: until the kernel takes the answer, 200 ms at most (a stalled reader).
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)
}

/// Close without a reset: send FIN, and read what the client already sent (a body, say)
/// so no unread byte makes the kernel answer the close with RST.
fn drain_and_close(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    if stream.set_nonblocking(true).is_ok() {
        let mut buffer = [0; 4096];
        for _ in 0..16 {
            if !matches!(stream.read(&mut buffer), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_gives_its_method_path_and_host() {
        let knock =
            parse_head(b"GET /stats?x=1 HTTP/1.1\r\nhOsT:  lab:8080 \r\nAccept: */*").unwrap();
        assert_eq!(
            knock,
            Knock {
                method: "GET".into(),
                path: "/stats".into(),
                host: Some("lab:8080".into())
            }
        );
        assert_eq!(parse_head(b"GET /stats").map(|k| k.path), None);
        assert_eq!(parse_head(b"GET /stats SMTP/1").map(|k| k.path), None);
        assert_eq!(parse_head(b"\xff\xfe"), None);
    }
}
