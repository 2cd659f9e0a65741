//! The wire mechanics two or more lessons share: writing a response by hand, writing a chunk,
//! reading a query, validating a callback, escaping for HTML and for scripts.
//!
//! Every response is written as text onto the socket (`Request::into_writer`), so the student
//! sees each header the server sends, and `/stats` can count the exact bytes on the wire.
//! Nothing sits between a write and the socket: a buffer there would hold streamed events
//! back (the buffering lesson, `lessons::buffering`, shows one).

use crate::stats::LessonCounters;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, Write};

pub use crate::connection::Request;

/// The paths whose requests may be held (long polls, streams, the frameworks' transports):
/// they count against a client's share (`--max-per-client`).
pub fn asks_for_events(url: &str) -> bool {
    url.starts_with("/events/")
        || url.starts_with("/socket.io/")
        || url.starts_with("/cometd")
        || url.starts_with("/pushlet/")
        || url.starts_with("/atmosphere/")
}

/// A 4xx/5xx answer: a status, a message for `{"error": ...}`, and optional extra headers.
#[derive(Debug)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, message)
    }

    /// 503 with `Retry-After: 2`: every refusal that a client should simply retry (every place
    /// under `--max-parked` taken, a client's share taken, the broker away).
    pub fn retry_later(message: impl Into<String>) -> HttpError {
        HttpError::new(503, message).with_header("Retry-After", "2")
    }

    /// The refusal when every place under `--max-parked` is taken.
    pub fn all_held(max_parked: usize) -> HttpError {
        HttpError::retry_later(format!(
            "{max_parked} requests are held already (--max-parked); retry shortly"
        ))
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> HttpError {
        self.headers.push((name, value.into()));
        self
    }

    /// Answer the request with this error as JSON. Nothing else has changed.
    pub fn reply(self, request: Request, counters: &LessonCounters) -> io::Result<()> {
        let body = json!({ "error": self.message }).to_string();
        let headers: Vec<(&str, &str)> =
            self.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        counters.error();
        write_response(
            request,
            self.status,
            "application/json",
            &headers,
            body.as_bytes(),
            counters,
        )
    }
}

pub use crate::request::reason;

/// The status line and headers, as they go on the wire. `Cache-Control: no-store` unless the
/// caller names its own: a cached poll would show old events as new.
pub fn head(status: u16, content_type: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n",
        reason(status)
    );
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("Cache-Control"))
    {
        head.push_str("Cache-Control: no-store\r\n");
    }
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head
}

/// Does `headers` already say `Connection: close`?
fn says_close(headers: &[(&str, &str)]) -> bool {
    headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("Connection") && v.eq_ignore_ascii_case("close"))
}

/// Write a complete answer framed by its length (or with no body), then let the connection
/// serve the next request, unless it must close: the client asked (`Connection: close`,
/// HTTP/1.0), its body was left unread, or `headers` say so. A closing answer says
/// `Connection: close`: a client that pools connections (Node's agent does by default) would
/// otherwise send its next request on a socket being closed, and see "socket hang up".
fn write_whole(
    request: Request,
    head: String,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<usize> {
    let (mut writer, wire, keep) = frame_whole(request, head, headers, body);
    writer.write_all(&wire)?;
    if keep {
        writer.keep_alive();
    }
    Ok(wire.len())
}

/// `write_whole`'s bytes (the head, its `Connection` header, and the body unless the request
/// was `HEAD`), the writer, and whether the connection may be kept.
fn frame_whole(
    request: Request,
    head: String,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (crate::connection::ResponseWriter, Vec<u8>, bool) {
    let writer = request.into_writer();
    let close = !writer.may_keep_alive() || says_close(headers);
    let mut wire = head.into_bytes();
    if close && !says_close(headers) {
        wire.extend_from_slice(b"Connection: close\r\n");
    }
    if !close && writer.is_http_1_0() {
        // HTTP/1.0 closes after each answer unless both sides say otherwise.
        wire.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    if !writer.head_only() {
        wire.extend_from_slice(body);
    }
    (writer, wire, !close)
}

/// A whole response with `Content-Length`: the keep-alive connection stays usable.
pub fn write_response(
    request: Request,
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    counters: &LessonCounters,
) -> io::Result<()> {
    let (mut writer, wire, keep) = whole_response(request, status, content_type, headers, body);
    // BLOCKS: while the socket's send buffer is full, up to --write-timeout.
    writer.write_all(&wire)?;
    if keep {
        writer.keep_alive();
    }
    counters.wrote(wire.len());
    Ok(())
}

/// `write_response` for a writer that must not wait (the waiting room's long polls): the
/// bytes of the whole response, the connection to send them on, and whether it may serve the
/// next request once they are out (then call `ResponseWriter::keep_alive`).
pub fn whole_response(
    request: Request,
    status: u16,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (crate::connection::ResponseWriter, Vec<u8>, bool) {
    let mut text = head(status, content_type, headers);
    text.push_str(&format!("Content-Length: {}\r\n", body.len()));
    frame_whole(request, text, headers, body)
}

/// `204 No Content` (a preflight's answer, the favicon's), with no body and no type.
pub fn write_no_content(
    request: Request,
    headers: &[(&str, &str)],
    counters: &LessonCounters,
) -> io::Result<()> {
    let mut text = "HTTP/1.1 204 No Content\r\n".to_string();
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    let written = write_whole(request, text, headers, &[])?;
    counters.wrote(written);
    Ok(())
}

pub fn write_json(request: Request, value: &Value, counters: &LessonCounters) -> io::Result<()> {
    let body = value.to_string();
    write_response(
        request,
        200,
        "application/json",
        &[],
        body.as_bytes(),
        counters,
    )
}

/// A JSONP answer: `/**/callback(json);` as `application/javascript` with `nosniff`. The
/// callback must already be validated (`Query::callback`); the JSON is escaped for a script.
pub fn write_jsonp(
    request: Request,
    callback: &str,
    value: &Value,
    extra_headers: &[(&str, &str)],
    counters: &LessonCounters,
) -> io::Result<()> {
    let mut headers = vec![("X-Content-Type-Options", "nosniff")];
    headers.extend_from_slice(extra_headers);
    write_response(
        request,
        200,
        JAVASCRIPT,
        &headers,
        jsonp_body(callback, value).as_bytes(),
        counters,
    )
}

/// A JSONP answer's type; it is sent with `X-Content-Type-Options: nosniff`.
pub const JAVASCRIPT: &str = "application/javascript; charset=utf-8";

/// A JSONP answer's body: `/**/callback(json);`, the JSON escaped for a script.
pub fn jsonp_body(callback: &str, value: &Value) -> String {
    format!("/**/{callback}({});", json_for_script(value))
}

/// An open response whose body is sent as HTTP/1.1 chunks, one per event, each flushed at once.
///
/// Nothing buffers between a frame and the socket: a buffer there would hold small events
/// back until it filled (see the buffering lesson).
///
/// To an HTTP/1.0 client (nginx talks HTTP/1.0 to its upstream unless told otherwise) there
/// is no chunked coding (RFC 9112 §6.1: a server must not send `Transfer-Encoding` to it):
/// the bytes go out as they are, and the end of the connection ends the body.
pub struct ChunkedStream {
    writer: crate::connection::ResponseWriter,
    counters: LessonCounters,
    /// HTTP/1.1: chunk frames; HTTP/1.0: the bytes alone, ended by closing.
    chunked: bool,
}

impl ChunkedStream {
    /// Take the connection and send the head. `Connection: close`, because the
    /// stream ends only when one side gives up; `X-Accel-Buffering: no` on every stream, so a
    /// proxy in front (nginx and its kin) passes each chunk on instead of collecting them.
    pub fn start(
        request: Request,
        content_type: &str,
        headers: &[(&str, &str)],
        counters: &LessonCounters,
    ) -> io::Result<ChunkedStream> {
        ChunkedStream::open(request, content_type, headers, true, counters)
    }

    /// The same stream without `X-Accel-Buffering: no`: what a server that never thought of
    /// proxies sends. The behind_a_proxy lesson shows what nginx then does with it.
    pub fn start_unmarked(
        request: Request,
        content_type: &str,
        headers: &[(&str, &str)],
        counters: &LessonCounters,
    ) -> io::Result<ChunkedStream> {
        ChunkedStream::open(request, content_type, headers, false, counters)
    }

    fn open(
        request: Request,
        content_type: &str,
        headers: &[(&str, &str)],
        tell_proxies_not_to_buffer: bool,
        counters: &LessonCounters,
    ) -> io::Result<ChunkedStream> {
        let chunked = request.head().minor_version >= 1;
        let mut text = head(200, content_type, headers);
        if tell_proxies_not_to_buffer {
            text.push_str("X-Accel-Buffering: no\r\n");
        }
        if chunked {
            text.push_str("Transfer-Encoding: chunked\r\n");
        }
        text.push_str("Connection: close\r\n\r\n");
        let mut writer = request.into_writer();
        writer.write_all(text.as_bytes())?;
        counters.wrote(text.len());
        Ok(ChunkedStream {
            writer,
            counters: counters.clone(),
            chunked,
        })
    }

    /// One chunk frame: size in hex, CRLF, the bytes, CRLF, then flush so it leaves now.
    /// The first failed write means the client has gone.
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(()); // an empty chunk would end the stream
        }
        if self.writer.head_only() {
            // A HEAD request has its head, and no body: the stream ends here.
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "HEAD: no body"));
        }
        // One write per frame: with three small writes, Nagle's algorithm (were it on) and
        // the peer's delayed ACK could hold the tail of the frame back for up to 200 ms.
        let frame = self.frame(data);
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        self.writer.write_all(&frame)?;
        self.counters.wrote(frame.len());
        Ok(())
    }

    /// Several chunk frames in one write: what a woken thread found waiting leaves together,
    /// one system call for the batch instead of one per event. Nothing waits for anything
    /// that is not already here.
    pub fn write_chunks<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> io::Result<()> {
        if self.writer.head_only() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "HEAD: no body"));
        }
        let frames = self.frames(chunks);
        if frames.is_empty() {
            return Ok(());
        }
        // BLOCKS: while the client's receive buffer and our send buffer are full, up to
        // --write-timeout.
        self.writer.write_all(&frames)?;
        self.counters.wrote(frames.len());
        Ok(())
    }

    /// Has the client closed its connection? (`Request::client_left`)
    pub fn client_left(&self) -> bool {
        self.writer.client_left()
    }

    /// Several chunk frames as the bytes to write, for a writer that cannot block
    /// (`waiting_room`); empty chunks are left out (one would end the stream).
    pub fn frames<'a>(&self, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut frames = Vec::new();
        for data in chunks.into_iter().filter(|data| !data.is_empty()) {
            frames.extend_from_slice(&self.frame(data));
        }
        frames
    }

    /// Write what the socket takes of `bytes` now, never waiting: how many it took
    /// (`WouldBlock` when none). The first error means the client has gone.
    pub fn write_without_waiting(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.writer.head_only() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "HEAD: no body"));
        }
        let n = self.writer.write_without_waiting(bytes)?;
        self.counters.wrote(n);
        Ok(n)
    }

    /// The last chunk, if the socket takes it now (a lab stopping does not wait on a client).
    pub fn finish_without_waiting(mut self) {
        if self.chunked {
            let _ = self.write_without_waiting(b"0\r\n\r\n");
        }
    }

    /// `data` as one chunk frame (size in hex, CRLF, the bytes, CRLF), or as itself to an
    /// HTTP/1.0 client.
    fn frame(&self, data: &[u8]) -> Vec<u8> {
        if !self.chunked {
            return data.to_vec();
        }
        let mut frame = format!("{:x}\r\n", data.len()).into_bytes();
        frame.extend_from_slice(data);
        frame.extend_from_slice(b"\r\n");
        frame
    }

    /// The zero-length chunk that ends the body (HTTP/1.0: closing the connection ends it).
    pub fn finish(mut self) -> io::Result<()> {
        if !self.writer.head_only() && self.chunked {
            self.writer.write_all(b"0\r\n\r\n")?;
            self.counters.wrote(5);
        }
        Ok(())
    }
}

/// What `POST /publish` publishes: a JSON body's `data` string (when the content type says
/// JSON), else the body as it is.
pub fn event_data(content_type: Option<&str>, body: String) -> Result<String, HttpError> {
    if !content_type.is_some_and(|t| t.contains("json")) {
        return Ok(body);
    }
    let value: Value = serde_json::from_str(&body)
        .map_err(|e| HttpError::bad_request(format!("the body claims JSON but is not: {e}")))?;
    match value.get("data") {
        Some(Value::String(data)) => Ok(data.clone()),
        _ => Err(HttpError::bad_request(
            r#"a JSON body must be {"data": "some text"}"#,
        )),
    }
}

/// A parsed query string (`a=1&b=two`), percent-decoded.
#[derive(Debug, Default)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(query: &str) -> Query {
        Query(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(name), percent_decode(value))
                })
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every parameter, by name (a name given twice keeps its last value).
    pub fn all(&self) -> Vec<(&str, &str)> {
        let mut all: Vec<(&str, &str)> = self
            .0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        all.sort();
        all
    }

    /// `since=N`: events with id > N. Absent means "from now", i.e. `now` (the newest id).
    /// A cursor *ahead* of `now` cannot come from this run (the lab restarted and its ids began
    /// again at 1): it is taken as `now`, and the answer's `last` resynchronises the client,
    /// which would otherwise wait forever for ids it has "already seen".
    pub fn since(&self, now: u64) -> Result<u64, HttpError> {
        match self.get("since") {
            None | Some("") => Ok(now),
            Some(text) => parse_cursor(text, now),
        }
    }

    /// A whole number in `min..=max` (seconds, a count...), or `default` when absent.
    pub fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, HttpError> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        match whole_number(text) {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(HttpError::bad_request(format!(
                "{name} must be a whole number from {min} to {max}, got {text:?}"
            ))),
        }
    }

    /// `callback=F` for JSONP: validated, never reflected raw (that would be XSS).
    pub fn callback(&self) -> Result<&str, HttpError> {
        let name = self
            .get("callback")
            .ok_or_else(|| HttpError::bad_request("callback is required"))?;
        if is_callback_name(name) {
            Ok(name)
        } else {
            Err(HttpError::bad_request(
                "callback must be a JavaScript identifier path like handle or lab.onEvents",
            ))
        }
    }
}

/// An event id from a query or a `Last-Event-ID` header, taken as at most `now`.
pub fn parse_cursor(text: &str, now: u64) -> Result<u64, HttpError> {
    match whole_number(text.trim()) {
        Some(cursor) => Ok(cursor.min(now)),
        None => Err(HttpError::bad_request(format!(
            "an event id (since, Last-Event-ID) must be a non-negative integer, got {text:?}"
        ))),
    }
}

/// Digits only (no sign, no space, no `+` that Rust's own `parse` would take), fitting a u64.
pub fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi * 16 + lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// A dotted path of plain identifiers (`cb`, `jQuery123_456`, `lab.onEvents`), 1 to 128 bytes.
pub fn is_callback_name(name: &str) -> bool {
    name.len() <= 128
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// Text placed in HTML (element content or a quoted attribute).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON placed inside a `<script>`: no `<`, `>` or `&` survives, so `</script>` in an event
/// cannot close the element, and U+2028/U+2029 (line breaks to old JavaScript) are escaped.
pub fn json_for_script(value: &Value) -> String {
    let json = value.to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// The request's body (read before routing) as text, at most `limit` bytes; a larger one is
/// refused with 413.
pub fn read_body(request: &Request, limit: usize) -> Result<String, HttpError> {
    let body = match request.body() {
        crate::request::Body::Read(body) if body.len() <= limit => body.clone(),
        _ => return Err(too_large(limit)),
    };
    String::from_utf8(body).map_err(|_| HttpError::bad_request("the body must be UTF-8 text"))
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(413, format!("the body is larger than {limit} bytes"))
        .with_header("Connection", "close")
}

/// A header's value, if the request has it.
pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.header(name)
}

/// Did a write fail because the client stopped reading (`--write-timeout` ran out)? The
/// socket's send timeout shows as `WouldBlock` on Unix and `TimedOut` elsewhere.
pub fn is_write_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// An expected ending (the client left) rather than a fault worth a warning.
pub fn is_disconnect(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks() {
        for good in ["cb", "jQuery1_2", "lab.onEvents", "$", "_x.$y"] {
            assert!(is_callback_name(good), "{good}");
        }
        for bad in [
            "",
            "alert(1)//",
            "a..b",
            "1x",
            "a.",
            "x;y",
            "a b",
            "a-b",
            "<x>",
        ] {
            assert!(!is_callback_name(bad), "{bad}");
        }
    }

    #[test]
    fn script_json_cannot_close_the_element() {
        let value = json!({"data": "</script><script>alert(1)</script>&\u{2028}"});
        let out = json_for_script(&value);
        assert!(!out.contains('<') && !out.contains('>') && !out.contains('&'));
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), value);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("a=1&b=two+words&c=%3C%2Fx%3E&d=%zz&e");
        assert_eq!(q.get("b"), Some("two words"));
        assert_eq!(q.get("c"), Some("</x>"));
        assert_eq!(q.get("d"), Some("%zz"));
        assert_eq!(q.get("e"), Some(""));
        assert!(Query::parse("since=-1").since(0).is_err());
        assert_eq!(Query::parse("").since(9).unwrap(), 9);
        assert_eq!(Query::parse("since=4").since(9).unwrap(), 4);
        assert_eq!(
            Query::parse("since=99").since(9).unwrap(),
            9,
            "a future cursor is now"
        );
    }
}
