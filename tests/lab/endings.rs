//! Every way a WebSocket ends, on every WebSocket endpoint (the lesson's, Socket.IO's,
//! Atmosphere's and Bayeux's, which share one conversation: `src/conversation.rs`), over a raw
//! socket that writes frames by hand, as RFC 6455 says: the close code first, then TCP closed
//! at once. In both parking modes: with `--parking queue`, the lesson's socket is held by the
//! waiting room's dispatcher rather than a thread of its own.

use crate::common::{self, start_lab_with};
use reverse_ajax_lab::ParkingMode;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The four endpoints, as a raw client opens them.
const ENDPOINTS: [&str; 4] = [
    "/events/ws",
    "/socket.io/?EIO=4&transport=websocket",
    "/atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Transport=websocket&X-atmo-protocol=true",
    "/cometd",
];

/// How soon after the ending our side of TCP must close: far less than the two seconds the
/// drain may wait for a client that never closes its side.
const AT_ONCE: Duration = Duration::from_millis(1000);

/// A WebSocket opened by hand: the handshake written, the 101 read.
fn open(addr: SocketAddr, path: &str, version: &str) -> (TcpStream, String) {
    let mut socket = common::connect(addr);
    write!(
        socket,
        "GET {path} {version}\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    // The head, byte by byte, so no frame after it is read with it.
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match socket.read(&mut byte).unwrap() {
            0 => break,
            _ => head.push(byte[0]),
        }
    }
    (socket, String::from_utf8_lossy(&head).into_owned())
}

/// A client frame: FIN and `first` (the flags and opcode byte), masked as a client must.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    out.extend(mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// What the server did after our frame: the close frame's status (`Some(None)`: a close
/// frame without one), and how long until its side of TCP closed.
struct Seen {
    close: Option<Option<u16>>,
    closed_after: Duration,
}

/// Read the server's frames (skipping data frames) until its TCP closes; note its close frame.
fn read_to_the_end(socket: &mut TcpStream, since: Instant) -> Seen {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match socket.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            Err(e) => panic!("the server never closed TCP: {e}"),
        }
    }
    let closed_after = since.elapsed();
    let mut close = None;
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (
                u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let payload = &bytes[at + header..(at + header + len).min(bytes.len())];
        if opcode == 0x8 {
            close =
                Some((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])));
        }
        at += header + len;
    }
    Seen {
        close,
        closed_after,
    }
}

/// Send `bytes` on a fresh socket to each endpoint; expect a close frame with `code` from
/// each (`code_for` says which, by endpoint), and TCP closed at once after it, though this
/// client never closes its side. In both parking modes: with `--parking queue` the lesson's
/// socket is held in the waiting room, without a thread.
fn each_endpoint_answers(bytes: &[u8], code_for: impl Fn(&str) -> Option<u16>, what: &str) {
    for parking in [ParkingMode::Thread, ParkingMode::Queue] {
        let lab = start_lab_with(|c| {
            c.max_body = 4096;
            c.socket_io.max_payload = 4096;
            c.parking = parking;
        });
        let addr = lab.addr();
        for path in ENDPOINTS {
            let (mut socket, head) = open(addr, path, "HTTP/1.1");
            assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
            let sent = Instant::now();
            socket.write_all(bytes).unwrap();
            let seen = read_to_the_end(&mut socket, sent);
            assert_eq!(
                seen.close,
                Some(code_for(path)),
                "{what} on {path}, {parking:?}"
            );
            assert!(
                seen.closed_after < AT_ONCE,
                "{what} on {path}, {parking:?}: TCP closed {:?} after, not at once",
                seen.closed_after
            );
        }
        common::wait_until("every socket's thread and watch are given back", || {
            let s = common::stats(addr);
            s["websocket_threads"] == 0 && s["watched_sockets"] == 0 && s["websockets"] == 0
        });
    }
}

#[test]
fn a_frame_with_a_reserved_bit_gets_1002() {
    each_endpoint_answers(&frame(0x80 | 0x40 | 0x1, b"hi"), |_| Some(1002), "RSV1");
}

#[test]
fn a_reserved_opcode_gets_1002() {
    each_endpoint_answers(&frame(0x80 | 0x3, b"hi"), |_| Some(1002), "opcode 3");
    each_endpoint_answers(&frame(0x80 | 0xb, b""), |_| Some(1002), "opcode 11");
}

#[test]
fn a_fragmented_control_frame_gets_1002() {
    each_endpoint_answers(&frame(0x9, b"ping"), |_| Some(1002), "a ping without FIN");
}

#[test]
fn a_continuation_without_a_start_gets_1002() {
    each_endpoint_answers(&frame(0x80, b"more"), |_| Some(1002), "a lone continuation");
}

#[test]
fn an_unmasked_client_frame_gets_1002() {
    each_endpoint_answers(&[0x81, 0x02, b'h', b'i'], |_| Some(1002), "unmasked");
}

#[test]
fn text_that_is_not_utf8_gets_1007() {
    each_endpoint_answers(&frame(0x81, &[0xc3, 0x28]), |_| Some(1007), "invalid UTF-8");
}

#[test]
fn a_message_over_the_limit_gets_1009() {
    each_endpoint_answers(&frame(0x81, &[b'x'; 5000]), |_| Some(1009), "5000 bytes");
}

/// Only the lesson refuses binary frames (1003); Socket.IO takes them as attachments (an
/// orphan one breaks its protocol), Atmosphere and Bayeux ignore them.
#[test]
fn a_binary_frame_gets_1003_where_it_is_refused() {
    let lab = start_lab_with(|_| {});
    let (mut socket, _) = open(lab.addr(), "/events/ws", "HTTP/1.1");
    let sent = Instant::now();
    socket.write_all(&frame(0x82, &[1, 2, 3])).unwrap();
    let seen = read_to_the_end(&mut socket, sent);
    assert_eq!(seen.close, Some(Some(1003)));
    assert!(seen.closed_after < AT_ONCE, "{:?}", seen.closed_after);
}

/// The client closes: its close is echoed with its code, and TCP closes at once (RFC 6455
/// §5.5.1: the server closes first).
#[test]
fn a_close_from_the_client_is_echoed_and_tcp_closes_at_once() {
    each_endpoint_answers(
        &frame(0x88, &1000u16.to_be_bytes()),
        |_| Some(1000),
        "close 1000",
    );
    each_endpoint_answers(
        &frame(0x88, &4000u16.to_be_bytes()),
        |_| Some(4000),
        "close 4000",
    );
}

/// A Socket.IO packet that cannot be read ends the connection at once, as the reference
/// server does: a close frame without a status (the client reads 1005).
#[test]
fn an_invalid_socket_io_packet_closes_at_once() {
    let lab = start_lab_with(|_| {});
    for packet in ["4abc", "42{}", "x", "43x[]"] {
        let (mut socket, head) = open(lab.addr(), ENDPOINTS[1], "HTTP/1.1");
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        socket.write_all(&frame(0x81, b"40")).unwrap();
        let sent = Instant::now();
        socket.write_all(&frame(0x81, packet.as_bytes())).unwrap();
        let seen = read_to_the_end(&mut socket, sent);
        assert_eq!(seen.close, Some(None), "{packet}");
        assert!(
            seen.closed_after < AT_ONCE,
            "{packet}: {:?}",
            seen.closed_after
        );
    }
}

/// RFC 6455 §4.1: the handshake must be HTTP/1.1. An HTTP/1.0 one is refused with 400 on
/// every endpoint, and no socket is held.
#[test]
fn an_http_1_0_handshake_is_refused() {
    let lab = start_lab_with(|_| {});
    for path in ENDPOINTS {
        let (_socket, head) = open(lab.addr(), path, "HTTP/1.0");
        assert!(head.starts_with("HTTP/1.1 400"), "{path}: {head}");
    }
    assert_eq!(common::stats(lab.addr())["websockets"], 0);
}

/// `--write-timeout` bounds a whole message, not each piece the kernel takes: a client that
/// reads only a trickle (1 KiB every 100 ms) while large events pile up is dropped within the
/// timeout and a second of the lab's last publish, and counted as a slow consumer. (The
/// socket's own send timeout starts again at every write that moves a byte: on it alone, this
/// client would hold its thread for as long as it trickles.) Every endpoint writes through
/// the one conversation (`Socket::send`); the lesson's is the one tried here.
#[test]
fn a_client_that_reads_a_trickle_is_dropped_within_the_write_timeout() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let write_timeout = Duration::from_secs(2);
    let lab = start_lab_with(|c| {
        c.write_timeout = write_timeout;
        c.max_body = 600 * 1024;
    });
    let addr = lab.addr();
    // A small receive buffer, so the lab's send buffer is what fills.
    let mut socket = common::connect_with_a_small_receive_buffer(addr);
    write!(
        socket,
        "GET /events/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    common::wait_until("the socket is held", || {
        common::stats(addr)["websocket_threads"] == 1
    });
    let done = Arc::new(AtomicBool::new(false));
    let trickle = {
        let done = done.clone();
        let mut socket = socket.try_clone().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            let until = Instant::now() + Duration::from_secs(30);
            while !done.load(Ordering::SeqCst) && Instant::now() < until {
                match socket.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) | Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
    };
    // 12 MB: far more than the lab's send buffer and the client's receive buffer hold.
    let big = "x".repeat(500 * 1024);
    for _ in 0..24 {
        reverse_ajax_lab::client::publish(addr, &big).unwrap();
    }
    let published = Instant::now();
    common::wait_until("the trickling client is dropped", || {
        common::stats(addr)["slow_consumers"] == 1
    });
    let dropped_after = published.elapsed();
    done.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    assert!(
        dropped_after < write_timeout + Duration::from_secs(1),
        "dropped {dropped_after:?} after the last publish, not within --write-timeout + 1 s"
    );
}
