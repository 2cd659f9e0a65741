//! A deliberately tiny HTTP/1.1 client over `std::net::TcpStream`, for the tests and the
//! benchmarks. It shows what a browser sends and reads, byte for byte, and it lets a test
//! read a chunked stream frame by frame while the response is still open.

use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not (tests want to see it).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Send one request with `Connection: close` and read the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    read_response(open(addr, method, path, headers, body)?)
}

/// Read a whole answer from `stream`.
fn read_response(stream: TcpStream) -> io::Result<Response> {
    stream.set_read_timeout(Some(Duration::from_secs(150)))?;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader)?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader)? {
            body.extend(chunk);
        }
    } else if let Some(length) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<u64>().ok())
    {
        // Some servers (Chromium's DevTools) keep the connection open despite our `close`.
        reader.take(length).read_to_end(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

pub fn post(addr: SocketAddr, path: &str, content_type: &str, body: &str) -> io::Result<Response> {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", content_type)],
        body.as_bytes(),
    )
}

/// Publish an event through `POST /publish`; returns its id.
pub fn publish(addr: SocketAddr, data: &str) -> io::Result<u64> {
    let answer = post(addr, "/publish", "text/plain; charset=utf-8", data)?;
    answer.json()["id"]
        .as_u64()
        .ok_or_else(|| io::Error::other(format!("publish answered {answer:?}")))
}

/// Connect and send the request head and body; the caller reads the answer.
pub fn open(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<TcpStream> {
    send(TcpStream::connect(addr)?, addr, method, path, headers, body)
}

/// A connection to `addr` from the local address `from` (on Linux any 127.x.y.z is this
/// machine: a test plays several clients, or a proxy and its clients, on one machine).
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect(&addr.into())?;
    Ok(socket.into())
}

/// A GET, from the local address `from` (`connect_from`).
pub fn request_from(
    from: IpAddr,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    send_from(from, addr, "GET", path, headers, b"")
}

/// `request`, from the local address `from` (`connect_from`).
pub fn send_from(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let stream = send(connect_from(from, addr)?, addr, method, path, headers, body)?;
    read_response(stream)
}

/// Send the request head and body on `stream`, connected to `addr`.
fn send(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<TcpStream> {
    stream.set_nodelay(true)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut wire = head.into_bytes();
    wire.extend_from_slice(body);
    stream.write_all(&wire)?;
    Ok(stream)
}

/// The status line and headers.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, headers));
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
}

/// One chunk frame's payload, or `None` at the final zero-length chunk.
pub fn read_chunk(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let size = usize::from_str_radix(line.trim(), 16)
        .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
    let mut data = vec![0; size + 2];
    reader.read_exact(&mut data)?;
    data.truncate(size);
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(data))
}

/// An open streaming response, read one chunk frame at a time.
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl Stream {
    /// Open `GET path` and read the head; the body stays on the socket.
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> io::Result<Stream> {
        Stream::read_from(open(addr, "GET", path, headers, b"")?)
    }

    /// `open`, from the local address `from` (`connect_from`).
    pub fn open_from(
        from: IpAddr,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<Stream> {
        let stream = send(connect_from(from, addr)?, addr, "GET", path, headers, b"")?;
        Stream::read_from(stream)
    }

    fn read_from(stream: TcpStream) -> io::Result<Stream> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        Ok(Stream {
            status,
            headers,
            reader,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The socket under the stream (to reset it, as a client that vanishes does).
    pub fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// The next chunk's text; `None` when the stream ended. Errors after `deadline`.
    pub fn next_chunk(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.reader.get_ref().set_read_timeout(Some(left))?;
        Ok(read_chunk(&mut self.reader)?.map(|c| String::from_utf8_lossy(&c).into_owned()))
    }

    /// Read chunks until the text read so far satisfies `done`; returns all of it.
    pub fn read_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&str) -> bool,
    ) -> io::Result<String> {
        let mut text = String::new();
        while !done(&text) {
            match self.next_chunk(deadline)? {
                Some(chunk) => text.push_str(&chunk),
                None => return Err(io::Error::other(format!("stream ended early: {text:?}"))),
            }
        }
        Ok(text)
    }
}

/// One keep-alive connection for many requests, as a browser keeps one: no new TCP handshake
/// (and no socket left in TIME_WAIT) per poll. Answers must carry `Content-Length`.
pub struct KeepAlive {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(150)))?;
        Ok(KeepAlive {
            addr,
            reader: BufReader::new(stream),
        })
    }

    /// The socket under the connection (to reset it, as a client that vanishes does).
    pub fn socket(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        self.reader.get_mut().write_all(head.as_bytes())?;
        let (status, headers) = read_head(&mut self.reader)?;
        let length: u64 = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other("a keep-alive answer needs Content-Length"))?;
        let mut body = Vec::new();
        (&mut self.reader).take(length).read_to_end(&mut body)?;
        let response = Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        // As a browser does: a server that says it closes gets a new connection next time.
        if response
            .header("Connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            *self = KeepAlive::connect(self.addr)?;
        }
        Ok(response)
    }
}
