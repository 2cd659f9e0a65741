//! # Stopping a lab: every thread it started ends, every socket it holds closes.
//!
//! ```text
//! ^C  (or a test drops its RunningLab)
//! main       RunningLab::stop: Shutdown::begin, the flag set and the line closed
//! accept     woken by a connection of the lab's own, sees the flag: ends, the port closes
//! generator  woken on the line: ends          (so do the sweepers and the dispatcher)
//! watcher    tells every idle WebSocket's thread: each sends close 1001 and ends
//! conn-*     every socket shut down: reads fail, parked threads see it at their next look
//! main       "stopped: every thread ended" (or which did not, within 10 s)
//! ```
//!
//! mini-redis's `Shutdown` is the model: one signal that every task listens for, here a flag
//! and a channel whose sender is dropped (every `recv` on it returns at once, for every
//! thread, now and later). Threads that wait on something else (a socket, a hub's bell)
//! are reached another way: the sockets are shut down under them (`connection::Pool::stop`).
//!
//! `RunningLab::stop` drives the steps and waits for the threads; dropping a `RunningLab`
//! begins the same stop and does not wait.

use crossbeam_channel::{Receiver, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The lab's stop: a flag, and a line that every background thread can wait on.
pub struct Shutdown {
    stopping: AtomicBool,
    /// Dropped by `begin`: then every receiver of `hear` is woken, for good.
    line: Mutex<Option<Sender<()>>>,
    hear: Receiver<()>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        let (line, hear) = crossbeam_channel::bounded(0);
        Shutdown {
            stopping: AtomicBool::new(false),
            line: Mutex::new(Some(line)),
            hear,
        }
    }
}

impl Shutdown {
    /// The lab is to stop: set the flag, close the line.
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.line.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The line, for a thread that waits on it beside its own channels (`select!`): a
    /// `recv` on it returns `Err` once the lab stops, and never anything else.
    pub fn line(&self) -> Receiver<()> {
        self.hear.clone()
    }

    /// **BLOCKS** for `pause`, or until the lab stops: `false` when it stopped.
    pub fn sleep(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        // BLOCKS: nothing is ever sent; the line closing (`begin`) ends the wait early.
        let _ = crate::workarounds::recv_deadline(&self.hear, until);
        !self.is_stopping()
    }
}

/// The signals that stop a lab run from a terminal: Ctrl-C (SIGINT) and `kill` (SIGTERM).
#[cfg(all(unix, not(lab_portable)))]
fn stop_signals() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset, which initialises it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Block SIGINT and SIGTERM in this thread, and so in every thread it starts from now on:
/// they wait, pending, for `wait_for_a_stop_signal` (call it before starting the lab).
#[cfg(all(unix, not(lab_portable)))]
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// **BLOCKS** until SIGINT (Ctrl-C) or SIGTERM comes (blocked first: `block_stop_signals`).
#[cfg(all(unix, not(lab_portable)))]
pub fn wait_for_a_stop_signal() {
    let set = stop_signals();
    let mut signal = 0;
    // SAFETY: a valid, initialised set, and a place for the signal's number.
    // BLOCKS: until one of the set is pending for the process.
    while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
    log::info!("signal {signal}: the lab stops");
}

/// With std alone (Windows, `--cfg lab_portable`), a signal cannot be waited for: Ctrl-C ends
/// the process, and the system closes its sockets.
#[cfg(any(not(unix), lab_portable))]
pub fn block_stop_signals() {}

/// With std alone: **BLOCKS** for good (Ctrl-C ends the process).
#[cfg(any(not(unix), lab_portable))]
pub fn wait_for_a_stop_signal() {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wakes_every_sleeper_at_once_and_every_later_one_too() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        assert!(
            shutdown.sleep(Duration::from_millis(10)),
            "not stopping yet"
        );
        let sleepers: Vec<_> = (0..4)
            .map(|_| {
                let shutdown = shutdown.clone();
                std::thread::spawn(move || shutdown.sleep(Duration::from_secs(60)))
            })
            .collect();
        let began = Instant::now();
        shutdown.begin();
        for sleeper in sleepers {
            assert!(!sleeper.join().unwrap(), "woken by the stop");
        }
        assert!(began.elapsed() < Duration::from_secs(10));
        assert!(
            !shutdown.sleep(Duration::from_secs(60)),
            "a later sleep returns at once"
        );
        assert!(shutdown.line().recv().is_err());
    }
}
