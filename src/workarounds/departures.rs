//! Workaround 4: **the parked request that cannot see its client leave** (tiny_http keeps
//! the socket to itself).
//!
//! A parked long poll sleeps on its subscription, not on its socket. When the client closes
//! the connection (a tab closed, `curl` stopped with Ctrl-C), its FIN reaches tiny_http's
//! reading thread, which sees the end and stops, but tiny_http has no way to tell the handler:
//! the parked thread held its request, its thread and two descriptors until the deadline (up to
//! 120 s; after a flood, thousands at once: LESSONS.md chapter 13). An event loop is told
//! (`EPOLLRDHUP`); so is a servlet container (`AsyncListener`). Here, nobody hands us the
//! socket to watch.
//!
//! The kernel knows, though: a connection whose client sent FIN and that the server has not
//! closed yet is in state `CLOSE_WAIT`, and `/proc/net/tcp` lists every connection with its
//! state and both addresses. One that the client reset (it closed with our data unread, as a
//! stream's client often does) is not listed at all any more, though our descriptor still
//! holds it. So a `departures` thread reads that table once a second while requests are
//! parked, and wakes each parked request whose client's connection is in `CLOSE_WAIT` there,
//! or missing.
//!
//! ```text
//! GET /events/long-poll?timeout=120   (from 127.0.0.1:51234; req-7 parks, and asks to be told)
//! (the client closes: FIN)
//! /proc/net/tcp: 0100007F:1F90 0100007F:C822 08 …   (08: CLOSE_WAIT, from 127.0.0.1:51234)
//! departures: wakes req-7, which answers at once, as at its deadline (into a closed
//!             connection: harmless), and frees its thread
//! ```
//!
//! 1. `Departures::watch`: a parked request registers its client's address and gets a
//!    `Watch`, a channel it waits on beside its subscription; dropping the `Watch` ends it.
//! 2. `Departures::look`: the thread's round: the connections on the lab's ports, and a
//!    message to each watch whose connection is in `CLOSE_WAIT` or gone.
//! 3. `connections`: parse `/proc/net/tcp` and `/proc/net/tcp6`.
//!
//! What it cannot see: a client that vanished without a FIN (a pulled cable, a sleeping
//! laptop); only the deadline frees those, as in any server. And it takes a half-closed
//! client (one that sent its request, then `shutdown(Write)`, and still reads) for gone, as
//! nginx does by default. Linux only: elsewhere the table does not exist, and deadlines free
//! everything as before. Test: `a_client_that_hangs_up_is_released_long_before_its_deadline`
//! (tests/long_polling.rs).

use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The kernel's number for `CLOSE_WAIT` in `/proc/net/tcp`.
const CLOSE_WAIT: u8 = 0x08;

/// Parked requests waiting to be told that their client left, by client address.
pub struct Departures {
    watched: Mutex<HashMap<SocketAddr, (u64, Sender<()>)>>,
    /// Watched clients missing from the last round's table: missing twice running is a reset.
    missing: Mutex<HashSet<SocketAddr>>,
    next_id: AtomicU64,
    /// The lab's listening ports: only connections to these are ours.
    ports: Vec<u16>,
    /// Requests woken because their client left.
    pub seen: AtomicU64,
}

/// A parked request's registration: `left` receives one message if its client goes.
pub struct Watch {
    departures: Arc<Departures>,
    peer: SocketAddr,
    id: u64,
    pub left: Receiver<()>,
}

impl Watch {
    /// Has the client gone? (Without taking the message.)
    pub fn has_left(&self) -> bool {
        !self.left.is_empty()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.departures.lock();
        if watched
            .get(&self.peer)
            .is_some_and(|(id, _)| *id == self.id)
        {
            watched.remove(&self.peer);
        }
    }
}

impl Departures {
    /// Watch for departures from connections to `ports`, on a thread of its own.
    pub fn start(ports: Vec<u16>) -> io::Result<Arc<Departures>> {
        let departures = Arc::new(Departures {
            watched: Mutex::default(),
            missing: Mutex::default(),
            next_id: AtomicU64::new(1),
            ports,
            seen: AtomicU64::new(0),
        });
        let watcher = departures.clone();
        thread::Builder::new()
            .name("departures".into())
            .spawn(move || loop {
                // BLOCKS: sleeps a second between rounds.
                thread::sleep(Duration::from_secs(1));
                watcher.look();
            })?;
        Ok(departures)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (u64, Sender<()>)>> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 1: tell me when the client at `peer` closes its connection.
    pub fn watch(self: &Arc<Self>, peer: SocketAddr) -> Watch {
        let (tell, left) = bounded(1);
        let id = self.next_id.fetch_add(1, Relaxed);
        let peer = plain(peer);
        self.lock().insert(peer, (id, tell));
        Watch {
            departures: self.clone(),
            peer,
            id,
            left,
        }
    }

    /// Step 2: one round: wake every watched request whose client has closed (FIN: the
    /// connection is in `CLOSE_WAIT`) or reset (RST: it is no longer in the table, in this
    /// round and the one before: the kernel builds the table while connections come and go,
    /// and a reading can miss one).
    fn look(&self) {
        if self.lock().is_empty() {
            return; // nothing parked: the table is not read at all
        }
        // Read before taking the lock: a watch registered meanwhile waits for the next round
        // (its connection would not be in this reading, and would look reset).
        let registered: Vec<SocketAddr> = self.lock().keys().copied().collect();
        let Some(table) = connections(&self.ports) else {
            return; // unreadable (at the descriptor limit, or not Linux): nothing is known
        };
        let mut missing = self.missing.lock().unwrap_or_else(|p| p.into_inner());
        let missed_before = std::mem::take(&mut *missing);
        let watched = self.lock();
        for peer in &registered {
            let gone = match table.get(peer) {
                Some(&state) => state == CLOSE_WAIT,
                None => {
                    missing.insert(*peer);
                    missed_before.contains(peer)
                }
            };
            let Some((_, tell)) = watched.get(peer).filter(|_| gone) else {
                continue;
            };
            log::debug!("departures: {peer} closed or reset its connection; waking its request");
            if tell.try_send(()).is_ok() {
                self.seen.fetch_add(1, Relaxed);
            }
        }
    }
}

/// IPv4 clients of an IPv6 listener appear as `::ffff:a.b.c.d`: one form for both.
fn plain(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Step 3: every connection to `ports`, by client address, with its state; `None` if a table
/// cannot be read (reading needs a descriptor; off Linux there is no table). A machine without
/// IPv6 has no `tcp6`: that one may be missing. (Never guess: a client missing from a table
/// that was not read would look reset, and be answered early.)
fn connections(ports: &[u16]) -> Option<HashMap<SocketAddr, u8>> {
    let mut found = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if table.ends_with('6') && e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => return None,
        };
        for line in text.lines().skip(1) {
            if let Some((local_port, remote, state)) = parse_line(line) {
                if ports.contains(&local_port) {
                    found.insert(plain(remote), state);
                }
            }
        }
    }
    Some(found)
}

/// One line of `/proc/net/tcp{,6}`: `sl local rem st …`, addresses as `HEX_IP:HEX_PORT`.
/// The IP is the kernel's bytes in memory order, 32-bit words in this machine's byte order.
fn parse_line(line: &str) -> Option<(u16, SocketAddr, u8)> {
    let mut fields = line.split_whitespace().skip(1);
    let local = fields.next()?;
    let remote = fields.next()?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    let (_, local_port) = local.split_once(':')?;
    let local_port = u16::from_str_radix(local_port, 16).ok()?;
    let (ip, port) = remote.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((local_port, SocketAddr::new(ip, port), state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn a_table_line_gives_the_local_port_the_client_and_the_state() {
        let v4 = "   3: 0100007F:1F90 0100007F:C822 08 00000000:00000000 00:00000000 00000000  0 0 12345 1";
        assert_eq!(
            parse_line(v4),
            Some((8080, "127.0.0.1:51234".parse().unwrap(), CLOSE_WAIT))
        );
        let v6 = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:C822 01 0";
        assert_eq!(
            parse_line(v6).map(|(port, peer, state)| (port, plain(peer), state)),
            Some((8080, "127.0.0.1:51234".parse().unwrap(), 1))
        );
        assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
    }

    /// A client that closes (FIN) and one that resets (RST): both watches are told, the
    /// watch of a client that stays is not, and a dropped watch is forgotten.
    #[test]
    fn a_watch_is_told_once_its_client_has_closed_or_reset_and_forgotten_when_dropped() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let departures = Arc::new(Departures {
            watched: Mutex::default(),
            missing: Mutex::default(),
            next_id: AtomicU64::new(1),
            ports: vec![port],
            seen: AtomicU64::new(0),
        });
        let mut clients = Vec::new();
        let mut watches = Vec::new();
        let mut server_sides = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            let (server_side, peer) = listener.accept().unwrap();
            server_sides.push(server_side);
            watches.push(departures.watch(peer));
        }
        // A client missing from one reading is not yet gone (a reading can miss one while
        // connections come and go); missing from two running, it is.
        let never_seen = departures.watch("127.0.0.1:9".parse().unwrap());
        departures.look();
        assert!(watches.iter().all(|w| !w.has_left()), "all still connected");
        assert!(!never_seen.has_left(), "missing from one reading only");
        departures.look();
        assert!(never_seen.has_left(), "missing from two readings running");
        drop(never_seen);
        let staying = clients.remove(2);
        let resetting = clients.remove(1);
        socket2::SockRef::from(&resetting)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(resetting); // RST: the server side leaves the table
        drop(clients); // FIN: the server side goes to CLOSE_WAIT
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !(watches[0].has_left() && watches[1].has_left()) {
            assert!(std::time::Instant::now() < deadline, "never told");
            departures.look();
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !watches[2].has_left(),
            "the client that stayed is still there"
        );
        drop(watches);
        assert!(departures.lock().is_empty());
        drop(staying);
    }
}
