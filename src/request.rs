//! Reading one HTTP/1.1 request off a connection: the head (with httparse), then the body,
//! framed exactly one way (RFC 9112), or refused.
//!
//! ```text
//! POST /publish HTTP/1.1\r\n              ← the request line: method, target, version
//! Host: 127.0.0.1:8080\r\n                ← HTTP/1.1 requires exactly one Host
//! Content-Length: 5\r\n                   ← the one framing: a length...
//! \r\n                                    ← the empty line ends the head
//! hello                                   ← ...or chunks: "5\r\nhello\r\n0\r\n\r\n"
//! ```
//!
//! 1. `read_head`: read until the empty line, under a deadline, at most `MAX_HEAD` bytes;
//!    httparse splits it, and refuses what RFC 9112 forbids in a head: whitespace before a
//!    header's colon, a header continued on the next line (obs-fold), CR, LF or NUL inside a
//!    value.
//! 2. `Framing::of`: how long is the body? Exactly one answer, or the request is refused. A
//!    request with both `Content-Length` and `Transfer-Encoding` is the classic smuggling
//!    trick: a proxy in front reads one, the server the other, and the second "request"
//!    hidden in the first one's body reaches the server unseen. So: both → 400; a transfer
//!    coding we do not know → 501; `chunked` not last → 400; two different lengths → 400.
//! 3. `read_body`: the bytes the framing names (chunked bodies decoded), at most `limit`;
//!    a larger body is left unread (`Body::TooLarge`) and the connection closed after the
//!    answer, since where the next request starts is unknown. Head and body share one
//!    deadline, `--request-timeout` from the request's first byte: a total, not a minimum
//!    rate, because what a thread per connection must bound is how long one request can hold
//!    its thread before it is answered (408 past it).
//!
//! Every refusal is a `Refusal`: a status, a message, and always `Connection: close`.
//! Unit tests below; raw-socket tests in tests/http.rs; a property test in
//! tests/properties.rs checks that no bytes panic this parser.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// The longest request target (path and query) accepted: beyond it, 414.
pub const MAX_TARGET: usize = 8 * 1024;
/// The longest header line accepted: beyond it, 431.
pub const MAX_HEADER_LINE: usize = 8 * 1024;
/// The largest head in all (request line and headers): beyond it, 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// At most this many header fields: beyond it, 431.
pub const MAX_HEADERS: usize = 100;
/// How much one read of a head asks the kernel for.
const READ_AT_ONCE: usize = 4096;

/// At most this many trailer fields after a chunked body, as for header fields: beyond
/// it, 431.
pub const MAX_TRAILERS: usize = MAX_HEADERS;

/// The request methods the lab tells apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Other(String),
}

impl Method {
    fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Other(other) => other,
        };
        f.write_str(text)
    }
}

/// A request head as read: method, target, minor version (0 or 1) and header fields.
#[derive(Clone, Debug)]
pub struct Head {
    pub method: Method,
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub minor_version: u8,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of header `name` (names compare without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, comma-separated lists split, trimmed.
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect()
    }

    /// Does `Connection` name `token` (`close`, `keep-alive`, `upgrade`)?
    pub fn connection_has(&self, token: &str) -> bool {
        self.list("Connection")
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Does the client want this connection closed after the answer? HTTP/1.1 keeps it open
    /// unless told `close`; HTTP/1.0 closes it unless told `keep-alive`.
    pub fn wants_close(&self) -> bool {
        self.connection_has("close")
            || (self.minor_version == 0 && !self.connection_has("keep-alive"))
    }

    /// A WebSocket handshake: `GET`, `Upgrade: websocket`, `Connection: upgrade`.
    pub fn is_websocket_upgrade(&self) -> bool {
        self.method == Method::Get
            && self.connection_has("upgrade")
            && self
                .list("Upgrade")
                .iter()
                .any(|p| p.eq_ignore_ascii_case("websocket"))
    }
}

/// The reason phrase of a status the lab sends (`404` → `Not Found`).
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// A request the lab will not serve: the status, and why. The connection is closed after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// What reading a head came to.
#[derive(Debug)]
pub enum HeadRead {
    /// A head, how many bytes of the buffer it took, and when the whole request (its body
    /// too) must have come: `--request-timeout` after its first byte.
    Head(Head, usize, Instant),
    /// The client closed the connection (or it went idle) before a request began.
    Closed,
    /// A head that breaks the rules, or came too slowly: answer with this and close.
    Refused(Refusal),
}

/// Step 1: parse a head from the start of `buffer`, if it is all there. `Ok(None)`: not yet.
pub fn parse_head(buffer: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let length = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => {
            return match too_long(buffer) {
                Some(refusal) => Err(refusal),
                None => Ok(None),
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(e) => return Err(refuse(400, format!("malformed request head: {e}"))),
    };
    let target = parsed.path.unwrap_or("").to_string();
    if target.len() > MAX_TARGET {
        let message = format!(
            "the request target is {} bytes; the limit is {MAX_TARGET}",
            target.len()
        );
        return Err(refuse(414, message));
    }
    if length > MAX_HEAD {
        let message = format!("the request head is {length} bytes; the limit is {MAX_HEAD}");
        return Err(refuse(431, message));
    }
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let line = field.name.len() + 2 + field.value.len();
        if line > MAX_HEADER_LINE {
            let message = format!(
                "header {} is {line} bytes; the limit is {MAX_HEADER_LINE}",
                field.name
            );
            return Err(refuse(431, message));
        }
        // httparse lets bytes above 0x7F through (obs-text); the lab reads header values as
        // text, so they must be UTF-8.
        let value = std::str::from_utf8(field.value)
            .map_err(|_| refuse(400, format!("header {} is not UTF-8 text", field.name)))?;
        headers.push((field.name.to_string(), value.trim().to_string()));
    }
    let head = Head {
        method: Method::parse(parsed.method.unwrap_or("")),
        target,
        minor_version: parsed.version.unwrap_or(1),
        headers,
    };
    // HTTP/1.1 requires exactly one Host (RFC 9112, section 3.2).
    let hosts = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Host"))
        .count();
    if head.minor_version == 1 && hosts != 1 {
        return Err(refuse(
            400,
            format!("an HTTP/1.1 request needs exactly one Host header, got {hosts}"),
        ));
    }
    if hosts > 1 {
        return Err(refuse(400, "more than one Host header"));
    }
    Ok(Some((head, length)))
}

/// An incomplete head that is already over a limit: a request line with no end in sight
/// (414), or a head past `MAX_HEAD` (431).
fn too_long(buffer: &[u8]) -> Option<Refusal> {
    let line_ends = buffer.windows(2).any(|w| w == b"\r\n");
    if !line_ends && buffer.len() > MAX_TARGET + 32 {
        let message = format!("the request line is over {MAX_TARGET} bytes");
        return Some(refuse(414, message));
    }
    (buffer.len() > MAX_HEAD).then(|| {
        let message = format!("the request head is over {MAX_HEAD} bytes");
        refuse(431, message)
    })
}

/// Step 1 over a socket: read until a whole head is in `buffer` (which may already hold the
/// start of it: a pipelined request). Waits at most `idle` for the first byte; from it, the
/// whole request, head and body, has `within` (`--request-timeout`: a client that sends a
/// byte a minute holds its thread no longer, "slowloris").
pub fn read_head(
    stream: &mut impl ReadWithTimeout,
    buffer: &mut Vec<u8>,
    idle: Duration,
    within: Duration,
) -> io::Result<HeadRead> {
    let for_the_rest = within;
    let too_slow = || {
        Ok(HeadRead::Refused(refuse(
            408,
            "the request head came too slowly (--request-timeout)",
        )))
    };
    let mut deadline = (!buffer.is_empty()).then(|| Instant::now() + for_the_rest);
    loop {
        match parse_head(buffer) {
            Ok(Some((head, length))) => {
                let deadline = deadline.unwrap_or_else(|| Instant::now() + for_the_rest);
                return Ok(HeadRead::Head(head, length, deadline));
            }
            Ok(None) => {}
            Err(refusal) => return Ok(HeadRead::Refused(refusal)),
        }
        let wait = match deadline {
            None => idle,
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        };
        if wait.is_zero() {
            return too_slow();
        }
        stream.set_read_timeout_for(wait)?;
        // Read straight into the buffer's tail (on the heap): a 4 KiB array on the stack
        // would stay resident in every connection thread's stack for the thread's life.
        let filled = buffer.len();
        buffer.resize(filled + READ_AT_ONCE, 0);
        // BLOCKS: until the client sends bytes, closes, or `wait` passes.
        let read = stream.read(&mut buffer[filled..]);
        buffer.truncate(filled + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) if buffer.is_empty() => return Ok(HeadRead::Closed),
            Ok(0) => return Ok(HeadRead::Refused(refuse(400, "the head ended early"))),
            Ok(_) => {
                deadline.get_or_insert_with(|| Instant::now() + for_the_rest);
            }
            Err(e) if is_timeout(&e) && deadline.is_none() => return Ok(HeadRead::Closed),
            Err(e) if is_timeout(&e) => return too_slow(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A read timeout shows as `WouldBlock` on Unix and `TimedOut` on Windows.
pub fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A socket (or, in the unit tests, a byte slice) whose reads can be given a timeout.
pub trait ReadWithTimeout: Read {
    fn set_read_timeout_for(&mut self, wait: Duration) -> io::Result<()>;
}

impl ReadWithTimeout for std::net::TcpStream {
    fn set_read_timeout_for(&mut self, wait: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
    }
}

impl ReadWithTimeout for &std::net::TcpStream {
    fn set_read_timeout_for(&mut self, wait: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(wait.max(Duration::from_millis(1))))
    }
}

impl ReadWithTimeout for &[u8] {
    fn set_read_timeout_for(&mut self, _: Duration) -> io::Result<()> {
        Ok(())
    }
}

/// Step 2: how the body is framed.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body (no `Content-Length`, no `Transfer-Encoding`).
    None,
    Length(u64),
    Chunked,
}

impl Framing {
    /// The one framing RFC 9112 allows this head, or the refusal.
    pub fn of(head: &Head) -> Result<Framing, Refusal> {
        let codings = head.list("Transfer-Encoding");
        let lengths = head.list("Content-Length");
        if !codings.is_empty() && !lengths.is_empty() {
            return Err(refuse(
                400,
                "Content-Length and Transfer-Encoding together: one framing only",
            ));
        }
        if !codings.is_empty() {
            if head.minor_version == 0 {
                return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
            }
            if let Some(unknown) = codings.iter().find(|c| !c.eq_ignore_ascii_case("chunked")) {
                return Err(refuse(
                    501,
                    format!("transfer coding {unknown:?} is not implemented; only chunked is"),
                ));
            }
            if codings.len() > 1 {
                return Err(refuse(400, "chunked may be applied only once"));
            }
            return Ok(Framing::Chunked);
        }
        let Some(first) = lengths.first() else {
            return Ok(Framing::None);
        };
        let valid = |text: &&str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !lengths.iter().all(valid) || lengths.iter().any(|l| l != first) {
            return Err(refuse(
                400,
                format!("Content-Length must be one whole number of bytes, got {first:?}"),
            ));
        }
        first
            .parse()
            .map(Framing::Length)
            .map_err(|_| refuse(400, "Content-Length is too large a number"))
    }
}

/// Step 3's result: the body, or word that it was larger than allowed (left unread).
#[derive(Debug, PartialEq, Eq)]
pub enum Body {
    Read(Vec<u8>),
    TooLarge,
}

/// Step 3: read the body `framing` names, from `buffer` (bytes already read past the head)
/// and then the socket, at most `limit` bytes. Bytes past the body stay in `buffer`: the
/// start of the next (pipelined) request. All of it must have come by `deadline` (the
/// request's, from `read_head`), or 408.
pub fn read_body(
    stream: &mut impl ReadWithTimeout,
    buffer: &mut Vec<u8>,
    framing: &Framing,
    limit: usize,
    deadline: Instant,
) -> Result<Body, Refusal> {
    let mut source = Source {
        stream,
        buffer,
        deadline,
    };
    match framing {
        Framing::None => Ok(Body::Read(Vec::new())),
        Framing::Length(length) if *length > limit as u64 => Ok(Body::TooLarge),
        Framing::Length(length) => source.take(*length as usize).map(Body::Read),
        Framing::Chunked => read_chunked(&mut source, limit),
    }
}

/// A chunk's size, from its line (`chunk-size [ chunk-ext ]`): `chunk-size = 1*HEXDIG`, and
/// nothing else, as `Content-Length` is digits and nothing else. No sign, no `0x`, no space
/// before it (a proxy that reads `+5` or ` 5` another way would frame the body another way:
/// smuggling); whitespace only between it and an extension's `;` (BWS). At most 15 digits.
pub fn chunk_size(line: &[u8]) -> Result<usize, Refusal> {
    let (size, extension) = match line.iter().position(|&b| b == b';') {
        Some(at) => (&line[..at], true),
        None => (line, false),
    };
    let size = if extension {
        let end = size.iter().rposition(|&b| b != b' ' && b != b'\t');
        &size[..end.map_or(0, |end| end + 1)]
    } else {
        size
    };
    let shown = String::from_utf8_lossy(size);
    if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(refuse(
            400,
            format!("a chunk size must be hex digits and nothing else, got {shown:?}"),
        ));
    }
    if size.len() > 15 {
        return Err(refuse(
            400,
            format!("the chunk size {shown:?} is too large a number"),
        ));
    }
    // (Hex digits only, at most 15 of them: this cannot fail.)
    usize::from_str_radix(&shown, 16).map_err(|_| refuse(400, "bad chunk size"))
}

/// A chunked body (RFC 9112 §7.1): sized chunks until one of size 0, then trailer fields.
fn read_chunked<S: ReadWithTimeout>(
    source: &mut Source<'_, S>,
    limit: usize,
) -> Result<Body, Refusal> {
    let mut body = Vec::new();
    loop {
        // chunk-size [; extensions] CRLF
        let size = chunk_size(&source.line()?)?;
        if size == 0 {
            // Trailer fields, until the empty line, capped as header fields are; the lab
            // reads none of them.
            let (mut fields, mut bytes) = (0, 0);
            loop {
                let line = source.line()?;
                if line.is_empty() {
                    return Ok(Body::Read(body));
                }
                fields += 1;
                bytes += line.len() + 2;
                if fields > MAX_TRAILERS || bytes > MAX_HEAD {
                    return Err(refuse(
                        431,
                        format!("over {MAX_TRAILERS} trailer fields, or {MAX_HEAD} bytes of them"),
                    ));
                }
            }
        }
        if body.len() + size > limit {
            return Ok(Body::TooLarge);
        }
        body.extend(source.take(size)?);
        if !source.line()?.is_empty() {
            return Err(refuse(400, "a chunk did not end with CRLF"));
        }
    }
}

/// Bytes for the body: first what is already buffered, then the socket, until `deadline`.
struct Source<'a, S> {
    stream: &'a mut S,
    buffer: &'a mut Vec<u8>,
    deadline: Instant,
}

impl<S: ReadWithTimeout> Source<'_, S> {
    /// Make sure at least `n` bytes are buffered.
    fn fill(&mut self, n: usize) -> Result<(), Refusal> {
        let too_slow = || {
            refuse(
                408,
                "the body came too slowly: the whole request must come within --request-timeout",
            )
        };
        while self.buffer.len() < n {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(too_slow());
            }
            self.stream
                .set_read_timeout_for(left)
                .map_err(|e| refuse(400, format!("could not read the body: {e}")))?;
            // Read into the buffer's own spare room, not a chunk on the stack: stack pages a
            // connection thread touches once stay resident for as long as it lives.
            let had = self.buffer.len();
            self.buffer.resize(had + 8192, 0);
            // BLOCKS: until the client sends more of its body, closes, or the deadline.
            let read = self.stream.read(&mut self.buffer[had..]);
            self.buffer.truncate(had + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(0) => return Err(refuse(400, "the body ended early")),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(too_slow()),
                Err(e) => return Err(refuse(400, format!("could not read the body: {e}"))),
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<Vec<u8>, Refusal> {
        self.fill(n)?;
        Ok(self.buffer.drain(..n).collect())
    }

    /// One line without its CRLF (a chunk size, a chunk's end, a trailer field), at most
    /// 4 KiB. A bare LF is not a line end here.
    fn line(&mut self) -> Result<Vec<u8>, Refusal> {
        let mut looked = 0;
        loop {
            if let Some(at) = self.buffer[looked..].windows(2).position(|w| w == b"\r\n") {
                let end = looked + at;
                let line: Vec<u8> = self.buffer.drain(..end + 2).take(end).collect();
                return Ok(line);
            }
            looked = self.buffer.len().saturating_sub(1);
            if self.buffer.len() > 4096 {
                return Err(refuse(400, "a chunk line is over 4 KiB"));
            }
            self.fill(self.buffer.len() + 1)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, Refusal> {
        parse_head(text.as_bytes())
    }

    fn status_of(text: &str) -> u16 {
        match head(text) {
            Err(refusal) => refusal.status,
            Ok(Some((head, _))) => match Framing::of(&head) {
                Ok(_) => 200,
                Err(refusal) => refusal.status,
            },
            Ok(None) => 0,
        }
    }

    #[test]
    fn a_plain_get_is_read_with_its_headers() {
        let (head, length) = head("GET /stats?x=1 HTTP/1.1\r\nHost: lab\r\nX-A: b \r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.target, "/stats?x=1");
        assert_eq!(head.header("x-a"), Some("b"));
        assert_eq!(
            length,
            "GET /stats?x=1 HTTP/1.1\r\nHost: lab\r\nX-A: b \r\n\r\n".len()
        );
        assert!(!head.wants_close());
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn the_framing_rules_of_rfc_9112() {
        let host = "Host: x\r\n";
        let ok = |extra: &str| status_of(&format!("POST / HTTP/1.1\r\n{host}{extra}\r\n"));
        assert_eq!(ok(""), 200);
        assert_eq!(ok("Content-Length: 5\r\n"), 200);
        assert_eq!(ok("Content-Length: 5\r\nContent-Length: 5\r\n"), 200);
        assert_eq!(ok("Transfer-Encoding: chunked\r\n"), 200);
        assert_eq!(
            ok("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
            400
        );
        assert_eq!(ok("Transfer-Encoding: xchunked\r\n"), 501);
        assert_eq!(ok("Transfer-Encoding: gzip, chunked\r\n"), 501);
        assert_eq!(ok("Transfer-Encoding: chunked, identity\r\n"), 501);
        assert_eq!(ok("Transfer-Encoding: chunked, chunked\r\n"), 400);
        assert_eq!(ok("Content-Length: 5\r\nContent-Length: 6\r\n"), 400);
        assert_eq!(ok("Content-Length: 5, 6\r\n"), 400);
        assert_eq!(ok("Content-Length: -5\r\n"), 400);
        assert_eq!(ok("Content-Length: 5x\r\n"), 400);
        assert_eq!(ok("Content-Length: +5\r\n"), 400);
        assert_eq!(ok("Content-Length: 99999999999999999999999\r\n"), 400);
    }

    #[test]
    fn heads_that_break_the_rules_are_refused() {
        assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 400, "no Host");
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("GET / HTTP/1.0\r\n\r\n"),
            200,
            "1.0 needs no Host"
        );
        assert_eq!(status_of("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
            400,
            "obs-fold"
        );
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"),
            400
        );
        assert_eq!(
            status_of("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n"),
            400
        );
        assert_eq!(status_of("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn heads_over_the_limits_get_414_and_431() {
        let long_target = format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(MAX_TARGET)
        );
        assert_eq!(status_of(&long_target), 414);
        let endless_line = format!("GET /{}", "a".repeat(MAX_TARGET + 100));
        assert_eq!(status_of(&endless_line), 414);
        let long_header = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_LINE)
        );
        assert_eq!(status_of(&long_header), 431);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: a\r\n"))
            .collect();
        assert_eq!(
            status_of(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
        let endless_head = format!(
            "GET / HTTP/1.1\r\n{}",
            "X-A: b\r\n".repeat(MAX_HEAD / 8 + 1)
        );
        assert_eq!(status_of(&endless_head), 431);
    }

    fn body_of(framing: Framing, wire: &str, limit: usize) -> (Result<Body, Refusal>, Vec<u8>) {
        let mut buffer = wire.as_bytes().to_vec();
        let mut empty: &[u8] = &[];
        let body = read_body(
            &mut empty,
            &mut buffer,
            &framing,
            limit,
            Instant::now() + Duration::from_secs(1),
        );
        (body, buffer)
    }

    #[test]
    fn a_chunked_body_is_decoded_and_the_next_request_stays() {
        let wire = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /";
        let (body, rest) = body_of(Framing::Chunked, wire, 100);
        assert_eq!(body, Ok(Body::Read(b"hello world".to_vec())));
        assert_eq!(rest, b"GET /");
    }

    #[test]
    fn bodies_over_the_limit_or_malformed_are_refused() {
        assert_eq!(body_of(Framing::Length(10), "", 5).0, Ok(Body::TooLarge));
        assert_eq!(
            body_of(Framing::Chunked, "a\r\n0123456789\r\n0\r\n\r\n", 5).0,
            Ok(Body::TooLarge)
        );
        assert_eq!(
            body_of(Framing::Chunked, "zz\r\n", 5).0.unwrap_err().status,
            400
        );
        assert_eq!(
            body_of(Framing::Chunked, "2\r\nabc\r\n", 5)
                .0
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            body_of(Framing::Length(3), "ab", 5).0.unwrap_err().status,
            400
        );
        let (body, rest) = body_of(Framing::Length(2), "abGET", 5);
        assert_eq!(
            (body, rest),
            (Ok(Body::Read(b"ab".to_vec())), b"GET".to_vec())
        );
    }

    /// `chunk-size = 1*HEXDIG`, as strictly as `Content-Length`'s digits: no sign, no
    /// space before it, no `0x`, no overlong number; whitespace only before an extension.
    #[test]
    fn a_chunk_size_is_hex_digits_and_nothing_else() {
        for ok in [
            "5",
            "05",
            "aB",
            "5;name=value",
            "5 ;name",
            "5\t; name",
            "fffffffffffffff",
        ] {
            assert!(chunk_size(ok.as_bytes()).is_ok(), "{ok:?}");
        }
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"5 ;x").unwrap(), 5);
        for bad in [
            "+5",
            " 5",
            "5 ",
            "0x5",
            "-5",
            "5.0",
            "",
            ";x",
            "g",
            "1_0",
            "5\t",
            "\t5",
            "1000000000000000",
        ] {
            let refusal = chunk_size(bad.as_bytes()).unwrap_err();
            assert_eq!(refusal.status, 400, "{bad:?}");
        }
        // Through the body reader: refused, nothing of the body taken as read.
        for wire in ["+5\r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n"] {
            assert_eq!(
                body_of(Framing::Chunked, wire, 100).0.unwrap_err().status,
                400
            );
        }
    }

    /// Trailer fields are capped as header fields are: a hundred at most.
    #[test]
    fn trailers_are_capped_like_headers() {
        let many = "T: x\r\n".repeat(MAX_TRAILERS + 1);
        let wire = format!("0\r\n{many}\r\n");
        assert_eq!(
            body_of(Framing::Chunked, &wire, 100).0.unwrap_err().status,
            431
        );
        let few = "T: x\r\n".repeat(MAX_TRAILERS);
        let wire = format!("0\r\n{few}\r\n");
        assert_eq!(
            body_of(Framing::Chunked, &wire, 100).0,
            Ok(Body::Read(Vec::new()))
        );
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let wants_close = |text: &str| head(text).unwrap().unwrap().0.wants_close();
        assert!(!wants_close("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(wants_close(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        assert!(wants_close("GET / HTTP/1.0\r\n\r\n"));
        assert!(!wants_close(
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        ));
    }

    #[test]
    fn a_websocket_handshake_is_recognised() {
        let text = "GET /events/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                    Connection: keep-alive, Upgrade\r\n\r\n";
        assert!(head(text).unwrap().unwrap().0.is_websocket_upgrade());
        let plain = "GET /events/ws HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(!head(plain).unwrap().unwrap().0.is_websocket_upgrade());
    }
}
