//! Workarounds for a remaining dependency's habits, kept here, away from the path a student
//! reads first (`hub` and `connection` call them and move on). Each is reproduced by a test
//! below; if a later version fixes one, that test tells, and its workaround can go.
//!
//! 1. **The receive that spins before it sleeps** (`recv_deadline`): crossbeam's `recv` calls
//!    `sched_yield` a few times before sleeping, a context switch each when threads are many.
//!    Test: `crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not` (below).

use crossbeam_channel::Receiver;
use std::time::Instant;

/// crossbeam's `recv`, `recv_timeout` and `recv_deadline` do not sleep at once
/// on an empty channel: they spin, then call `sched_yield` four times, in case a message is
/// about to come. With a few threads that is cheap; with hundreds of threads with channels
/// (WebSocket writers, framework sessions) going back to sleep after one event, every yield is
/// a context switch while others wait to run (REFERENCE.md chapter 14 has the measurement).
/// crossbeam's `Select` registers and sleeps with no spin, so this waits through `Select`.
/// Test: `crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not` (below).
///
/// Receive from `rx`, or `Err` at `deadline` (or when every sender is gone), going to sleep at
/// once when the channel is empty.
pub fn recv_deadline<T>(
    rx: &Receiver<T>,
    deadline: Instant,
) -> Result<T, crossbeam_channel::RecvTimeoutError> {
    let mut select = crossbeam_channel::Select::new();
    select.recv(rx);
    // BLOCKS: until a message (or the senders' end) or the deadline.
    match select.select_deadline(deadline) {
        Ok(operation) => operation
            .recv(rx)
            .map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
        Err(_) => Err(crossbeam_channel::RecvTimeoutError::Timeout),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crossbeam_channel::bounded;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    /// Pin the calling thread to `cpu`.
    fn pin(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls get its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    /// The first CPU this process may run on.
    fn some_cpu() -> usize {
        // SAFETY: as above.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
            (0..libc::CPU_SETSIZE as usize)
                .find(|&cpu| libc::CPU_ISSET(cpu, &set))
                .unwrap_or(0)
        }
    }

    /// This thread's involuntary context switches so far (a `sched_yield` that let another
    /// thread run counts as one; going to sleep counts as voluntary).
    fn involuntary_switches() -> u64 {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .map(|n| n.trim().parse().unwrap())
            .unwrap()
    }

    /// Twenty 2 ms waits on an empty channel, on a CPU shared with a busy thread: how many
    /// times did the waiting thread give the CPU away without going to sleep?
    fn yields_while_waiting(wait: fn(&Receiver<()>)) -> u64 {
        let cpu = some_cpu();
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            thread::spawn(move || {
                pin(cpu);
                while !stop.load(Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let waiter = thread::spawn(move || {
            pin(cpu);
            let (_tx, rx) = bounded::<()>(1);
            let before = involuntary_switches();
            for _ in 0..20 {
                wait(&rx);
            }
            involuntary_switches() - before
        });
        let switches = waiter.join();
        stop.store(true, Relaxed);
        busy.join().unwrap();
        switches.unwrap()
    }

    #[test]
    fn crossbeam_recv_yields_before_sleeping_and_recv_deadline_does_not() {
        let theirs = yields_while_waiting(|rx| {
            let _ = rx.recv_timeout(Duration::from_millis(2));
        });
        let ours = yields_while_waiting(|rx| {
            let _ = recv_deadline(rx, Instant::now() + Duration::from_millis(2));
        });
        // If a later crossbeam sleeps at once, the first figure drops, and this workaround
        // can go.
        assert!(
            theirs >= 10,
            "crossbeam's recv gave way {theirs} times in 20 waits"
        );
        assert!(
            ours * 4 < theirs,
            "recv_deadline gave way {ours} times, crossbeam's {theirs}"
        );
    }
}
