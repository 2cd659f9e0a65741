//! # The socket watcher: one thread waits until any of many idle sockets has bytes to read, and
//! tells that socket's own thread.
//!
//! ```text
//! conn-7           (ws 7) parked on its channel: the hub's events, or the watcher's notice
//! socket-watcher   in poll() on ws 3, ws 7, ws 9 … and its wake-up pipe
//!   (time passes)
//! ► ws 7's client sends a frame
//! socket-watcher   poll() returns: ws 7 is readable → its notice; ws 7 leaves the set
//! conn-7           wakes, reads the frame (the bytes are there: the read cannot block),
//!                  handles it, then `Watch::again`: back in the set, back to its channel
//! ```
//!
//! A WebSocket's thread has two things to wait for at once: the hub's events and its client's
//! frames. A blocking `read` waits for one thing only, so a socket needed two threads, one
//! blocked on each (chapter 12's first design). Here the socket's thread waits on its channel
//! alone, and this one thread waits on every idle socket at once: the lesson's WebSocket,
//! Socket.IO's, Atmosphere's and Bayeux's. A servlet container does the same: Tomcat's NIO
//! connector has a `Poller` thread that watches idle connections and hands a readable one to
//! a worker.
//!
//! 1. `SocketWatcher::watch` takes a share of the socket (an `Arc`: the descriptor stays open
//!    until both the socket's thread and the watcher have let go) and what to do when it is
//!    readable (`notice`, which must not block: a `try_send`), and rings the watcher's
//!    wake-up pipe so that it takes the socket into its set.
//! 2. The watcher thread blocks in `poll(2)` on every socket in its set and on the pipe.
//! 3. A readable socket (bytes, or its client hung up: a read returns 0): its `notice` is
//!    called once, and it leaves the set. Its thread reads what is there and calls
//!    `Watch::again` to be watched again. (One notice per watch: a socket whose thread has not
//!    read yet would otherwise make `poll` return at once, over and over.)
//! 4. A `Watch` dropped: the watcher lets go of its share of the socket at its next turn.
//!
//! **What it costs**: one thread for the whole lab instead of one per socket (a thread's stack
//! and more each: REFERENCE.md, chapter 12, measures it), and for each frame a client sends,
//! one more wake-up (the watcher's) before its thread reads it. Each turn of `poll` walks
//! every socket watched: fine for sockets that rarely speak, costly for thousands that all do.
//!
//! Without `poll` (Windows, or `--cfg lab_portable`), each watch is a thread of its own blocked
//! in `peek`: the same contract, at the old price of a thread per socket.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// What to call when a watched socket becomes readable: must not block.
type Notice = Box<dyn Fn() + Send + Sync>;

/// One watched socket: a share of it, its notice, and whether its `Watch` is gone.
struct Entry {
    /// Shared with the socket's thread, so the descriptor stays open (and is never another
    /// socket's) until the watcher has let go of it too.
    stream: Arc<TcpStream>,
    notice: Notice,
    dropped: AtomicBool,
}

/// The lab's one watcher. Its thread starts with the lab (`start`), or else with the first
/// watch.
pub struct SocketWatcher {
    /// Watches alive (`/stats` `watched_sockets`): back to 0 when the clients have left.
    alive: Arc<AtomicUsize>,
    inner: imp::Watcher,
    /// The lab is stopping (`stop`): every watched socket's thread has been told, and a
    /// socket watched from now on is told at once.
    stopping: Arc<AtomicBool>,
}

/// A socket under watch. Dropping it ends the watch.
pub struct Watch {
    entry: Arc<Entry>,
    watcher: imp::Handle,
    alive: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
}

impl Default for SocketWatcher {
    fn default() -> Self {
        SocketWatcher {
            alive: Arc::new(AtomicUsize::new(0)),
            inner: Default::default(),
            stopping: Arc::default(),
        }
    }
}

impl SocketWatcher {
    /// Step 1: watch `stream` until it is readable, then call `notice` (once).
    pub fn watch(
        &self,
        stream: &Arc<TcpStream>,
        notice: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Watch> {
        let entry = Arc::new(Entry {
            stream: stream.clone(),
            notice: Box::new(notice),
            dropped: AtomicBool::new(false),
        });
        let watcher = self.inner.handle()?;
        let watch = Watch {
            entry,
            watcher,
            alive: self.alive.clone(),
            stopping: self.stopping.clone(),
        };
        self.alive.fetch_add(1, Ordering::Relaxed);
        watch.again();
        Ok(watch)
    }

    /// Start the watcher's thread now rather than with the first watch, so that it is part
    /// of the lab's baseline from the start (`threads`, `fds` in `/stats`).
    pub fn start(&self) -> io::Result<()> {
        self.inner.handle().map(drop)
    }

    /// How many sockets are watched (or being read by their threads between two watches).
    pub fn watching(&self) -> usize {
        self.alive.load(Ordering::Relaxed)
    }

    /// The lab is stopping (`shutdown`): tell every watched socket's thread now (it wakes,
    /// finds nothing to read, sees `stopping` and closes its socket with 1001), and end the
    /// watcher's thread.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.inner.stop();
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The watcher's thread has ended (after `stop`), or never started.
    pub fn stopped(&self) -> bool {
        self.inner.stopped()
    }
}

impl Watch {
    /// Step 3: the thread has read what was there; watch the socket again. (While the lab
    /// stops, the thread is told at once instead: nobody watches any more.)
    pub fn again(&self) {
        if self.stopping.load(Ordering::SeqCst) {
            (self.entry.notice)();
            return;
        }
        self.watcher.add(&self.entry);
    }
}

impl Drop for Watch {
    /// Step 4.
    fn drop(&mut self) {
        self.entry.dropped.store(true, Ordering::SeqCst);
        self.watcher.forget(&self.entry);
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `poll(2)` and a wake-up pipe (a Unix socket pair: std has it).
#[cfg(all(unix, not(lab_portable)))]
mod imp {
    use super::Entry;
    use std::io::{self, Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    #[derive(Default)]
    pub struct Watcher {
        started: OnceLock<Handle>,
        thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    }

    /// What a `Watch` keeps of the watcher: the sockets to add, and the pipe's ringing end.
    #[derive(Clone)]
    pub struct Handle {
        shared: Arc<Shared>,
    }

    struct Shared {
        to_add: Mutex<Vec<Arc<Entry>>>,
        ring: UnixStream,
        stopping: std::sync::atomic::AtomicBool,
    }

    impl Watcher {
        /// The running watcher, started on first use.
        pub fn handle(&self) -> io::Result<Handle> {
            if let Some(handle) = self.started.get() {
                return Ok(handle.clone());
            }
            let (ring, hear) = UnixStream::pair()?;
            // Neither end may block: a full pipe has rung already.
            ring.set_nonblocking(true)?;
            hear.set_nonblocking(true)?;
            let shared = Arc::new(Shared {
                to_add: Mutex::new(Vec::new()),
                ring,
                stopping: Default::default(),
            });
            let handle = Handle { shared };
            // Two first watches at once: one thread wins; the other's pipe and thread are never
            // made (the thread is spawned only by the winner, below).
            let winner = self.started.get_or_init(|| handle.clone());
            if Arc::ptr_eq(&winner.shared, &handle.shared) {
                let shared = winner.shared.clone();
                let thread = std::thread::Builder::new()
                    .name("socket-watcher".into())
                    .spawn(move || watch_loop(&shared, hear))?;
                *self.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
                log::debug!("the socket watcher started");
            }
            Ok(winner.clone())
        }

        /// The watcher's thread tells every socket it watches, and ends.
        pub fn stop(&self) {
            if let Some(handle) = self.started.get() {
                handle.shared.stopping.store(true, Ordering::SeqCst);
                handle.ring();
            }
        }

        pub fn stopped(&self) -> bool {
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
            thread.as_ref().is_none_or(|thread| thread.is_finished())
        }
    }

    impl Handle {
        /// Into the set at the watcher's next turn; ring so that the turn is now.
        pub fn add(&self, entry: &Arc<Entry>) {
            self.shared
                .to_add
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.clone());
            self.ring();
        }

        /// The entry is marked dropped: ring, so the watcher lets go of it now.
        pub fn forget(&self, _entry: &Arc<Entry>) {
            self.ring();
        }

        fn ring(&self) {
            let _ = (&self.shared.ring).write(&[1]);
        }
    }

    /// Steps 2 and 3 (thread `socket-watcher`).
    fn watch_loop(shared: &Shared, mut hear: UnixStream) {
        let mut watched: Vec<Arc<Entry>> = Vec::new();
        let mut fds: Vec<libc::pollfd> = Vec::new();
        loop {
            watched.extend(
                shared
                    .to_add
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .drain(..),
            );
            // Step 4: a dropped watch's share of the socket is let go here.
            watched.retain(|entry| !entry.dropped.load(Ordering::SeqCst));
            fds.clear();
            fds.push(pollfd(hear.as_raw_fd()));
            fds.extend(watched.iter().map(|entry| pollfd(entry.stream.as_raw_fd())));
            // BLOCKS: until a watched socket is readable or hung up, or the pipe rings (a new
            // watch, a dropped one).
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds, and every descriptor in it
            // stays open during the call (`watched` and `hear` own them).
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    log::warn!("socket watcher: poll failed: {error}");
                    // BLOCKS: a moment, so a failing poll does not spin.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut rung = [0u8; 64];
                while matches!(hear.read(&mut rung), Ok(n) if n > 0) {}
                if shared.stopping.load(Ordering::SeqCst) {
                    for entry in watched.iter().filter(|e| !e.dropped.load(Ordering::SeqCst)) {
                        (entry.notice)();
                    }
                    log::debug!("the socket watcher ended: the lab is stopping");
                    return;
                }
            }
            // Step 3: each readable socket is told once, and leaves the set.
            let mut index = 0;
            watched.retain(|entry| {
                index += 1;
                if fds[index].revents == 0 {
                    return true;
                }
                if !entry.dropped.load(Ordering::SeqCst) {
                    (entry.notice)();
                }
                false
            });
        }
    }

    fn pollfd(fd: i32) -> libc::pollfd {
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }
    }
}

/// The portable watcher, with std alone: a thread per watch, blocked in `peek`.
#[cfg(any(not(unix), lab_portable))]
mod imp {
    use super::Entry;
    use crossbeam_channel::{bounded, Receiver, Sender};
    use std::io;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Watcher;

    /// One watch's thread, armed by a message per watch.
    pub struct Handle {
        arm: Mutex<Option<Sender<Arc<Entry>>>>,
    }

    impl Watcher {
        pub fn handle(&self) -> io::Result<Handle> {
            Ok(Handle {
                arm: Mutex::new(None),
            })
        }

        /// Each watch's thread ends when its socket is shut down (`connection::Pool::stop`).
        pub fn stop(&self) {}

        pub fn stopped(&self) -> bool {
            true
        }
    }

    impl Handle {
        pub fn add(&self, entry: &Arc<Entry>) {
            let mut arm = self.arm.lock().unwrap_or_else(|p| p.into_inner());
            if arm.is_none() {
                let (tx, rx) = bounded(1);
                let spawned = std::thread::Builder::new()
                    .name("socket-watch".into())
                    .spawn(move || watch_one(rx));
                if let Err(e) = spawned {
                    log::warn!("socket watcher: no thread for a watch: {e}");
                    return;
                }
                *arm = Some(tx);
            }
            if let Some(arm) = arm.as_ref() {
                let _ = arm.try_send(entry.clone());
            }
        }

        /// Ends the watch's thread: no more arming. A thread blocked in `peek` ends at the
        /// socket's next byte or its end (every endpoint shuts its socket down when it is
        /// done); shutting the reading side here instead would make Windows reset a socket
        /// whose close is still being drained (`conversation::end`).
        pub fn forget(&self, _entry: &Arc<Entry>) {
            self.arm.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// Steps 2 and 3 for one socket (thread `socket-watch`).
    fn watch_one(arm: Receiver<Arc<Entry>>) {
        // BLOCKS: until the socket's thread watches again, or drops its watch.
        while let Ok(entry) = arm.recv() {
            // BLOCKS: until the socket has a byte to read, or hung up, or the watch is dropped.
            // `WouldBlock` says nothing is there: the waiting room's dispatcher made the socket
            // non-blocking for one write (`connection::send_without_waiting`) as this peek
            // began. A notice then would send its reader into a read that waits: peek again.
            while let Err(e) = entry.stream.peek(&mut [0u8; 1]) {
                if e.kind() != io::ErrorKind::WouldBlock || entry.dropped.load(Ordering::SeqCst) {
                    break;
                }
                // BLOCKS: a moment, while the write that made the socket non-blocking ends.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if entry.dropped.load(Ordering::SeqCst) {
                return;
            }
            (entry.notice)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver};
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    fn pair() -> (TcpStream, Arc<TcpStream>) {
        let (client, server) = crate::loopback_pair();
        (client, Arc::new(server))
    }

    fn watched(watcher: &SocketWatcher, server: &Arc<TcpStream>) -> (Watch, Receiver<()>) {
        let (tx, rx) = bounded(1);
        let watch = watcher
            .watch(server, move || {
                let _ = tx.try_send(());
            })
            .unwrap();
        (watch, rx)
    }

    const LONG: Duration = Duration::from_secs(10);
    const QUIET: Duration = Duration::from_millis(200);

    #[test]
    fn a_socket_with_bytes_is_noticed_once_until_it_is_watched_again() {
        let watcher = SocketWatcher::default();
        let (mut client, server) = pair();
        let (watch, noticed) = watched(&watcher, &server);
        assert!(noticed.recv_timeout(QUIET).is_err(), "quiet: no notice");
        client.write_all(b"one").unwrap();
        noticed.recv_timeout(LONG).expect("bytes: a notice");
        // Not read yet: still readable, but told once only.
        assert!(noticed.recv_timeout(QUIET).is_err(), "one notice per watch");
        let mut got = [0u8; 3];
        (&*server).read_exact(&mut got).unwrap();
        watch.again();
        assert!(noticed.recv_timeout(QUIET).is_err(), "read: quiet again");
        client.write_all(b"two").unwrap();
        noticed.recv_timeout(LONG).expect("watched again: a notice");
        assert_eq!(watcher.watching(), 1);
        drop(watch);
        assert_eq!(watcher.watching(), 0);
    }

    #[test]
    fn a_client_that_hangs_up_is_noticed() {
        let watcher = SocketWatcher::default();
        let (client, server) = pair();
        let (_watch, noticed) = watched(&watcher, &server);
        drop(client);
        noticed.recv_timeout(LONG).expect("a hang-up: a notice");
        assert_eq!((&*server).read(&mut [0u8; 8]).unwrap(), 0, "end of file");
    }

    #[test]
    fn many_sockets_are_told_apart() {
        let watcher = SocketWatcher::default();
        let pairs: Vec<_> = (0..20).map(|_| pair()).collect();
        let watches: Vec<_> = pairs.iter().map(|(_, s)| watched(&watcher, s)).collect();
        for (i, (client, _)) in pairs.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
            (&*client).write_all(&[i as u8]).unwrap();
        }
        let until = Instant::now() + LONG;
        for (i, (_, noticed)) in watches.iter().enumerate() {
            if i % 3 == 0 {
                noticed
                    .recv_deadline(until)
                    .unwrap_or_else(|_| panic!("socket {i}: no notice"));
            }
        }
        for (i, (_, noticed)) in watches.iter().enumerate() {
            if i % 3 != 0 {
                assert!(noticed.try_recv().is_err(), "socket {i} sent nothing");
            }
        }
    }

    #[test]
    fn a_dropped_watch_lets_go_of_its_socket() {
        let watcher = SocketWatcher::default();
        let (mut client, server) = pair();
        let (watch, noticed) = watched(&watcher, &server);
        assert_eq!(Arc::strong_count(&server), 2, "the watcher's share");
        drop(watch);
        assert_eq!(watcher.watching(), 0);
        // A byte ends a portable watch's `peek`; `poll`'s watcher has been rung already.
        client.write_all(b"x").unwrap();
        let until = Instant::now() + LONG;
        while Arc::strong_count(&server) > 1 {
            assert!(Instant::now() < until, "the watcher kept its share");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(noticed.try_recv().is_err(), "no notice after the drop");
        // Ours was the last share: dropping it closes the socket, and the client sees the end
        // (a FIN: the byte is read first, or the kernel would answer with a reset).
        (&*server).read_exact(&mut [0u8; 1]).unwrap();
        drop(server);
        client.set_read_timeout(Some(LONG)).unwrap();
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "the socket closed");
    }
}
