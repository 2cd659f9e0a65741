//! What the process can hold, and the gate that refuses before it runs out.
//!
//! A thread-per-connection server has two ceilings of its own, whatever the machine's memory:
//!
//! - **File descriptors** (`ulimit -n`): one per connection, a WebSocket too. At the limit
//!   `accept` fails; the accept loop backs off and answers on the accept thread with a
//!   descriptor it keeps spare (`connection::accept_loop`).
//! - **Threads**: one per connection, a WebSocket too (the socket watcher waits on every idle
//!   one for its client's frames, `watcher`). Each costs memory mappings: its stack and the
//!   stack's guard page, and the alternate signal stack and its guard page that Rust's std
//!   gives every thread (to print "stack overflow" instead of dying silently): four on Linux,
//!   measured at start (`mappings_per_thread`). Linux allows `vm.max_map_count` (65,530 here)
//!   mappings per process; past that a thread cannot start. `pid_max` and `threads-max`
//!   cap threads too. macOS caps threads per process (`kern.num_taskthreads`, 4,096 or more);
//!   Windows has no such cap, only memory: there the budget is unknown (`None`), and only
//!   descriptors are gated.
//!
//! What each OS tells, and what the lab does where it does not:
//!
//! | | Linux | macOS | Windows |
//! | --- | --- | --- | --- |
//! | descriptor limit | `getrlimit`, raised | `getrlimit`, raised to `kern.maxfilesperproc` | none: 65,536 assumed |
//! | thread budget | `/proc/sys` | `sysctl kern.num_taskthreads` | unknown: not gated |
//! | descriptors, threads in use | `/proc/self` | counted by the lab (`Capacity::count`) | counted by the lab |
//!
//! ```text
//! start:   descriptor limit 20000 (the hard limit; raised to 65,536 where allowed)
//!          a thread costs 4 mappings (measured): thread budget (65530 − 43 in use) / 4 = 16371
//!          descriptor limit → 16371 − 1024 = 15,347, so that the descriptor gate (80 % of it,
//!          12,277 connections) comes no later than the thread gate (80 % of the budget,
//!          13,096 threads: a thread per connection, and 1,024 for idle threads and the lab's own)
//! monitor: every 100 ms, how many descriptors and threads the process holds now
//! accept:  a connection arrives while descriptors > 80 % or threads > 80 % of budget
//!          → the accept thread answers itself: /stats and the pages, the rest 503, no thread started
//! ```
//!
//! 1. `Capacity::measure`: raise the soft descriptor limit to the hard one (and the hard one
//!    too, where the process may), read the thread budget; then `capacity` lowers the
//!    descriptor limit to what the thread budget can carry with `--max-parked` held requests.
//! 2. `Capacity::spawn_monitor`: a thread samples `/proc/self` so the accept loop can ask
//!    "near a limit?" without a system call per request.
//! 3. `Capacity::near_limit`: the gate's question, answered from the last sample.
//! 4. `give_memory_back`: when a flood has left (threads down to half of their peak, a
//!    thousand fewer or more), the monitor asks the allocator to return freed pages
//!    (`return_freed_memory`; the sessions' sweepers ask too, when a flood of sessions has
//!    expired).
//!
//! `--max-parked` does not enter the arithmetic: it bounds held requests, and every held
//! request is a connection the descriptor limit already counts. (It once did, and raising it
//! lowered what the lab could hold.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Step 4: ask the allocator to return its free pages to the system, and log the resident
/// memory before and after, with `why`. (Elsewhere than glibc the allocator decides alone.)
pub fn return_freed_memory(why: &str) {
    let before = crate::stats::resident_kib();
    // SAFETY: no arguments but a size to keep; glibc locks its arenas itself.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
    let after = crate::stats::resident_kib();
    log::info!(
        "{why}: resident memory {} → {} MiB",
        before.unwrap_or(0) / 1024,
        after.unwrap_or(0) / 1024
    );
}

/// Step 4's trigger: threads down to half their peak, and by a thousand at least (a class
/// closing its tabs is not a flood).
fn flood_has_left(busiest: u64, threads: u64) -> bool {
    busiest >= threads + 1000 && busiest >= threads * 2
}

/// `--max-fds`: a descriptor limit lower than the machine's, set before `capacity` is first
/// used (0: none).
static MAX_FDS: AtomicU64 = AtomicU64::new(0);

/// Lower the descriptor limit to `max` when the capacity is first measured (`--max-fds`).
pub fn cap_descriptors(max: u64) {
    MAX_FDS.store(max, Relaxed);
}

/// The process's capacity: measured, and its monitor started, on first use. (The limits
/// belong to the process, not to one lab: tests run many labs in one process.)
pub fn capacity() -> &'static Capacity {
    static CAPACITY: OnceLock<&'static Capacity> = OnceLock::new();
    CAPACITY.get_or_init(|| {
        let mut measured = Capacity::measure();
        // The budget must hold together: a thread for every connection, and a connection
        // for every descriptor. Both gates stand at 80 % of their limit, so the descriptor
        // limit may be the thread budget less 1,024 (idle threads and the lab's own): the
        // descriptor gate then comes first, and `accept` meets the descriptor limit before
        // any thread fails to start, which the lab survives. (An unknown budget carries
        // whatever the descriptor limit is.)
        let fitting = measured
            .thread_budget
            .map_or(u64::MAX, |budget| budget.saturating_sub(1024).max(64));
        let asked = MAX_FDS.load(Relaxed);
        let cap = if asked > 0 {
            asked.min(fitting)
        } else {
            fitting
        };
        if cap < measured.fd_limit {
            // The gate keeps to the lower figure even where the system's limit cannot be
            // lowered (`accept` then meets the gate before any limit of the system's).
            if !lower_descriptor_limit(cap) {
                log::debug!("the descriptor limit stays; the gate keeps to {cap}");
            }
            measured.fd_limit = cap;
        }
        let capacity: &'static Capacity = Box::leak(Box::new(measured));
        capacity.sample();
        if let Err(e) = capacity.spawn_monitor() {
            log::error!("no monitor thread ({e}): the gate will not see the limits coming");
        }
        capacity
    })
}

/// A connection or WebSocket counted by the gate (`Capacity::count`) until it is dropped.
pub struct Counted(&'static Capacity);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Relaxed);
    }
}

/// Descriptors and threads the lab holds of its own (listeners, the watcher, the sweepers,
/// the generator), added to what it counts where there is no `/proc`.
const OWN_WITHOUT_PROC: u64 = 32;

/// Refuse new requests above this share of a limit, to leave room for what is in flight.
const GATE_PERCENT: u64 = 80;

/// The process's ceilings and, from the monitor, how close it is to them.
#[derive(Debug, Default)]
pub struct Capacity {
    /// The descriptor limit in force (after raising it).
    pub fd_limit: u64,
    /// What it was when the lab started.
    pub fd_limit_at_start: u64,
    /// Threads the process can start before mappings, `pid_max` or `threads-max` run out
    /// (Linux), or before `kern.num_taskthreads` (macOS); `None` where the OS does not say
    /// (Windows, or Linux without `/proc`): then only descriptors are gated.
    pub thread_budget: Option<u64>,
    /// Memory mappings one thread costs, as measured at start (Linux); `None` elsewhere.
    pub mappings_per_thread: Option<u64>,
    fds_now: AtomicU64,
    threads_now: AtomicU64,
    /// Connections and WebSockets the lab holds now (`Capacity::count`): what the gate
    /// counts where there is no `/proc` to ask (macOS, Windows).
    held: AtomicU64,
    /// No `/proc`: the samples are `held`, what the lab counts itself.
    pub counts_itself: bool,
    /// When the last sample was taken, in ms since `EPOCH`.
    sampled_at: AtomicU64,
}

/// The clock the samples are stamped with.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Capacity {
    /// Step 1: raise the descriptor limit as far as allowed; read the thread budget.
    pub fn measure() -> Capacity {
        let (before, after) = raise_descriptor_limit();
        let mappings_per_thread = mappings_per_thread();
        let thread_budget = thread_budget(mappings_per_thread);
        let counts_itself = crate::stats::open_fds().is_none();
        if counts_itself {
            log::info!("no /proc: the gate counts the connections it holds itself");
        }
        if thread_budget.is_none() {
            log::info!("this OS gives no thread limit: only descriptors are gated");
        }
        Capacity {
            fd_limit: after,
            fd_limit_at_start: before,
            thread_budget,
            mappings_per_thread,
            counts_itself,
            ..Capacity::default()
        }
    }

    /// Step 2: sample descriptors and threads every 100 ms on a thread of its own.
    fn spawn_monitor(&'static self) -> std::io::Result<()> {
        let capacity = self;
        thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut busiest = 0;
                loop {
                    capacity.sample();
                    // Step 4: after a flood, give memory back.
                    let threads = capacity.threads_now.load(Relaxed);
                    busiest = busiest.max(threads);
                    if flood_has_left(busiest, threads) {
                        Capacity::give_memory_back(busiest, threads);
                        busiest = threads;
                    }
                    // BLOCKS: sleeps until the next sample is due; nothing else wakes it.
                    thread::sleep(Duration::from_millis(100));
                }
            })?;
        Ok(())
    }

    fn sample(&self) {
        self.sampled_at.store(now_ms(), Relaxed);
        // One cheap `stat` (exact on Linux 6.2 and later; older kernels get the listing).
        // Listing thousands of descriptors near the limits, as the lab once did, took
        // milliseconds per connection on the accept thread: an idle flood then held `/stats`
        // up for seconds in the backlog (measured with `flood`).
        // Without `/proc`: what the lab holds, each with a descriptor and a thread, and its
        // own few.
        let held = self.held.load(Relaxed) + OWN_WITHOUT_PROC;
        self.fds_now
            .store(crate::stats::open_fds().unwrap_or(held), Relaxed);
        self.threads_now
            .store(crate::stats::live_threads().unwrap_or(held), Relaxed);
    }

    /// Step 3: `Some(why)` when the process is above the gate on either limit. A sample up to
    /// 10 ms old answers far from the limits; past 60 % of one, up to 2 ms old (a flood opens
    /// hundreds of connections between two of the monitor's samples, but counting thousands
    /// of descriptors for every request would itself stall the accept loop; the descriptor
    /// limit set in `capacity` keeps an overshoot harmless).
    pub fn near_limit(&self) -> Option<String> {
        let close = |now: u64, limit: u64| now.saturating_mul(100) > limit.saturating_mul(60);
        let near = close(self.fds_now.load(Relaxed), self.fd_limit)
            || (self.thread_budget)
                .is_some_and(|budget| close(self.threads_now.load(Relaxed), budget));
        let (now, then) = (now_ms(), self.sampled_at.load(Relaxed));
        // One thread samples; the others use the figures as they are. (A thousand long polls
        // woken by one event all ask at once: each reading /proc would cost them all.)
        let stale = now.saturating_sub(then) > if near { 2 } else { 10 };
        if stale
            && self
                .sampled_at
                .compare_exchange(then, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.sample();
        }
        self.verdict(self.fds_now.load(Relaxed), self.threads_now.load(Relaxed))
    }

    /// The accept loop let a connection through the gate (or a WebSocket left HTTP with its
    /// own descriptor): one descriptor more, and one thread, for as long as the `Counted`
    /// lives. Counted at once, until the next sample counts for real, so that a flood faster
    /// than the samples (180 connections opened within one 10 ms sample) still meets the gate
    /// instead of slipping past it between two samples. Without `/proc` the count is all the
    /// gate has: a connection that ends must give its place back, or the gate would refuse
    /// everything once 80 % of the limit had been accepted over the whole run.
    pub fn count(&'static self) -> Counted {
        self.held.fetch_add(1, Relaxed);
        self.fds_now.fetch_add(1, Relaxed);
        self.threads_now.fetch_add(1, Relaxed);
        Counted(self)
    }

    /// Step 4. Freed memory stays with the allocator: glibc keeps the pages of its arenas for the
    /// next allocation, so after a flood of 12,000 connections the lab kept about 100 MiB it no
    /// longer used (`flood`, REFERENCE.md Appendix A). `malloc_trim` returns whatever whole pages are free.
    /// A real server would rather not grow that far: bounded pools, or an allocator that returns
    /// memory by itself.
    fn give_memory_back(busiest: u64, threads: u64) {
        return_freed_memory(&format!("threads down from {busiest} to {threads}"));
    }

    /// The gate's rule itself: above `GATE_PERCENT` of either limit, say which.
    fn verdict(&self, fds: u64, threads: u64) -> Option<String> {
        let above =
            |now: u64, limit: u64| now.saturating_mul(100) > limit.saturating_mul(GATE_PERCENT);
        if above(fds, self.fd_limit) {
            return Some(format!(
                "{fds} of {} file descriptors in use",
                self.fd_limit
            ));
        }
        if let Some(budget) = self.thread_budget.filter(|&budget| above(threads, budget)) {
            return Some(format!("{threads} of about {budget} threads in use"));
        }
        None
    }

    /// How many held connections the gate can let in: 80 % of the descriptor limit, less a
    /// few dozen for the lab's own (listeners, files, Redis).
    pub fn holdable(&self) -> usize {
        (self.fd_limit.saturating_mul(GATE_PERCENT) / 100).saturating_sub(32) as usize
    }

    /// Descriptors in use now, counted afresh.
    pub fn fds_fresh(&self) -> u64 {
        self.sample();
        self.fds_now.load(Relaxed)
    }

    /// What `/stats` shows under `"limits"`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            // "proc": descriptors and threads read from /proc; "itself": no /proc, the lab
            // counts what it holds.
            "counted_by": if self.counts_itself { "itself" } else { "proc" },
            "held": self.held.load(Relaxed),
            "fd_limit": self.fd_limit,
            "fd_limit_at_start": self.fd_limit_at_start,
            // null: the OS gives no thread limit (Windows), or /proc is missing.
            "thread_budget": self.thread_budget,
            "mappings_per_thread": self.mappings_per_thread,
            "gate_percent": GATE_PERCENT,
            "holdable": self.holdable(),
        })
    }
}

/// The mappings in this process's address space now (Linux: the lines of
/// `/proc/self/maps`); `None` where there is no `/proc`.
fn mappings_now() -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    Some(maps.lines().count() as u64)
}

/// What a thread costs in memory mappings, measured at the margin: threads are started and
/// wait until glibc has made all the malloc arenas it will (eight per core, each a mapping
/// or two, paid once), the mappings are counted, thirty-two more are started, and counted
/// again; the difference, divided by thirty-two and rounded to the nearest (other threads
/// starting meanwhile, in a test binary, can only raise it: the budget errs low). Between 2
/// and 8.
fn mappings_per_thread() -> Option<u64> {
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    let first = (8 * cores + 8).min(264);
    const MORE: u64 = 32;
    let (started, all_started) = std::sync::mpsc::channel::<()>();
    let (release, released) = crossbeam_channel::bounded::<()>(0);
    let mut waiting = Vec::new();
    let mut start = |n: usize| -> usize {
        let before = waiting.len();
        for _ in 0..n {
            let (started, released) = (started.clone(), released.clone());
            let spawned = thread::Builder::new()
                .name("measure".into())
                .spawn(move || {
                    let _ = started.send(());
                    // BLOCKS: until the counts are taken (`release` dropped).
                    let _ = released.recv();
                });
            waiting.extend(spawned.ok());
        }
        // BLOCKS: until every thread just started is running (each sends once, then waits).
        all_started.iter().take(waiting.len() - before).count()
    };
    start(first);
    let first = mappings_now();
    let more = start(MORE as usize) as u64;
    let then = mappings_now();
    drop(release);
    for thread in waiting {
        let _ = thread.join();
    }
    let added = then?.checked_sub(first?)?;
    log::debug!("{more} threads added {added} memory mappings");
    (more == MORE).then(|| ((added + MORE / 2) / MORE).clamp(2, 8))
}

/// The most threads the process can start, as the OS says (Linux: the smallest of the
/// mappings left under `vm.max_map_count` divided by what a thread costs, `pid_max` and
/// `threads-max`, from `/proc/sys`); `None` where it does not say.
#[cfg(not(target_os = "macos"))]
fn thread_budget(mappings_per_thread: Option<u64>) -> Option<u64> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let by_mappings = read("/proc/sys/vm/max_map_count").map(|most| {
        let left = most.saturating_sub(mappings_now().unwrap_or(0));
        left / mappings_per_thread.unwrap_or(4)
    });
    [
        by_mappings,
        read("/proc/sys/kernel/pid_max"),
        read("/proc/sys/kernel/threads-max"),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// macOS: its limit of threads per process, `kern.num_taskthreads`.
#[cfg(target_os = "macos")]
fn thread_budget(_mappings_per_thread: Option<u64>) -> Option<u64> {
    sysctl_number(c"kern.num_taskthreads")
}

/// A whole number from `sysctlbyname` (macOS), or `None`.
#[cfg(target_os = "macos")]
fn sysctl_number(name: &std::ffi::CStr) -> Option<u64> {
    let mut value: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>();
    // SAFETY: the kernel writes at most `size` bytes into `value`, and says how many.
    let status = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            (&mut value as *mut libc::c_int).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    (status == 0 && value > 0).then_some(value as u64)
}

/// The descriptor limit a server would like (a systemd unit often sets the same).
#[cfg_attr(all(target_os = "macos", not(lab_portable)), allow(dead_code))]
const WANTED_FDS: u64 = 65536;

/// Raise `RLIMIT_NOFILE`: the soft limit up to the hard one, and the hard one up to
/// `WANTED_FDS` where the process is allowed to (root, or `CAP_SYS_RESOURCE`). Returns the
/// soft limit before and after.
///
/// macOS's hard limit is "unlimited", which `setrlimit` refuses as a soft limit: there the
/// soft limit goes up to `kern.maxfilesperproc` (10,240 or more) at most.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
#[cfg(all(unix, not(lab_portable)))]
fn raise_descriptor_limit() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (0, 0);
        }
        let before = limit.rlim_cur as u64;
        let hard = limit.rlim_max;
        // The hard limit raised (allowed as root); else the soft one up to the hard one.
        #[cfg(not(target_os = "macos"))]
        let tries = [hard.max(WANTED_FDS as libc::rlim_t), hard];
        #[cfg(target_os = "macos")]
        let tries = {
            let most = sysctl_number(c"kern.maxfilesperproc").unwrap_or(10_240);
            [hard.min(most as libc::rlim_t); 2]
        };
        for wanted in tries {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted.max(hard),
            };
            if wanted >= limit.rlim_cur && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                break;
            }
        }
        // What is in force now (an OS may clamp what it was asked for, and say nothing).
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return (before, before);
        }
        (before, limit.rlim_cur as u64)
    }
}

/// Lower the soft descriptor limit (always allowed).
#[cfg(all(unix, not(lab_portable)))]
fn lower_descriptor_limit(max: u64) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_descriptor_limit`.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = max as libc::rlim_t;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    }
}

/// The portable fallback: no descriptor limit to read or raise (Windows has none of this
/// kind); the lab assumes `WANTED_FDS` and keeps to it itself.
#[cfg(any(not(unix), lab_portable))]
fn raise_descriptor_limit() -> (u64, u64) {
    (WANTED_FDS, WANTED_FDS)
}

/// The portable fallback: nothing to lower; the gate keeps to the lower figure by itself.
#[cfg(any(not(unix), lab_portable))]
fn lower_descriptor_limit(_max: u64) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_below_eighty_percent_and_closes_above() {
        let capacity = Capacity {
            fd_limit: 1000,
            thread_budget: Some(100),
            ..Capacity::default()
        };
        assert_eq!(capacity.verdict(800, 80), None);
        assert!(capacity.verdict(801, 80).unwrap().contains("801 of 1000"));
        assert!(capacity.verdict(10, 81).unwrap().contains("threads"));
    }

    /// Where the OS gives no thread limit (Windows, Linux without `/proc`), only descriptors
    /// are gated, and no figure overflows, however large.
    #[test]
    fn an_unknown_thread_budget_gates_descriptors_only_and_nothing_overflows() {
        let capacity = Capacity {
            fd_limit: u64::MAX,
            thread_budget: None,
            ..Capacity::default()
        };
        assert_eq!(capacity.verdict(u64::MAX / 2, u64::MAX), None);
        assert!(capacity.holdable() > 0);
        let capacity = Capacity {
            fd_limit: 1000,
            thread_budget: None,
            ..Capacity::default()
        };
        assert!(capacity.verdict(801, 0).is_some());
        assert_eq!(capacity.verdict(10, u64::MAX), None);
        assert_eq!(capacity.near_limit(), None);
    }

    #[test]
    fn the_descriptor_limit_is_never_lowered() {
        let capacity = Capacity::measure();
        assert!(capacity.fd_limit >= capacity.fd_limit_at_start);
        #[cfg(target_os = "linux")]
        if std::path::Path::new("/proc/sys").exists() {
            assert!(capacity.thread_budget > Some(100));
        }
    }

    #[test]
    fn memory_is_given_back_once_a_flood_has_left_not_when_a_class_leaves() {
        assert!(flood_has_left(13_000, 30));
        assert!(flood_has_left(2_000, 1_000));
        assert!(!flood_has_left(1_900, 1_000), "not down by a thousand");
        assert!(!flood_has_left(5_000, 3_000), "not down to half");
        assert!(!flood_has_left(120, 20), "a class closing its tabs");
    }
}
