//! # Memory that stays level: what a thread per connection costs the allocator.
//!
//! ```text
//! 2,000 clients come and go for 12 minutes    glibc as it starts: resident memory climbs,
//!                                              45 → 108 MiB (+32 % from the first third to
//!                                              the last), and 19 MiB stay after they leave
//! the lab execs itself once, at start, with    the same run: 42 → 61 MiB (+9 %), and 14 MiB
//!   GLIBC_TUNABLES=glibc.malloc.tcache_count=1   after they leave
//! memory-trim, every 10 s: malloc_trim(0)      free pages go back to the kernel
//! ```
//!
//! glibc's `malloc` gives each thread a cache of freed chunks (its *tcache*: up to 7 chunks
//! of each of 64 sizes). A process with a few threads never notices. Two thousand connection
//! threads each keep their own cache of whatever sizes they happened to free, and those
//! chunks pin the pages they sit on: memory freed around them cannot be handed back, and new
//! allocations go elsewhere. Nothing leaks, but the resident size climbs under churn.
//!
//! 1. `shrink_thread_caches`: glibc reads its tunables once, when a program starts, from
//!    `GLIBC_TUNABLES`. So the lab, before it starts any thread, execs itself again (the same
//!    process, the same arguments) with `glibc.malloc.tcache_count=1`: one chunk of each size
//!    per thread. A thread that frees and allocates the same size again still skips the
//!    arena's lock; the pile of chunks a thread freed once and never reuses is gone. (With no
//!    cache at all, 0, memory is flatter still, but every `malloc` takes its arena's lock, and
//!    10,000 WebSocket threads on 16 arenas pay for it: REFERENCE.md, Appendix A.) A
//!    `GLIBC_TUNABLES` set already is left as it is: `glibc.malloc.tcache_count=7` (glibc's
//!    default) shows the climb.
//! 2. `spawn_trimmer`: one thread, `memory-trim`, which every `TRIM_EVERY` asks glibc to
//!    give back every whole free page in every arena (`malloc_trim(0)`: `madvise` on the
//!    free pages, not only each heap's top), so that memory freed when clients leave goes
//!    back to the kernel. It **blocks** on the lab's stop line between trims.
//!
//! Two allocators made for many threads were measured in the same soak and lost: mimalloc
//! (a heap per thread: 1.9 to 2.5 GiB) and jemalloc (level, but 171 to 201 MiB).
//! Elsewhere than Linux with glibc (and in the portable build) neither step exists: macOS's
//! and Windows' allocators give pages back themselves.
//!
//! **What it costs**: one exec at start (a millisecond); one `malloc_trim` every 10 s, which
//! walks every arena's free lists under that arena's lock. Latency and CPU per event are
//! within the noise of glibc's default (measured in REFERENCE.md, Appendix A).

use crossbeam_channel::Receiver;
use std::time::Duration;

/// How often freed memory is given back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// The tunable that keeps one chunk of each size per thread instead of seven.
pub const SMALL_THREAD_CACHES: &str = "glibc.malloc.tcache_count=1";

/// Step 1: exec this program again with small per-thread caches, unless `GLIBC_TUNABLES`
/// is set already. Call it before any thread starts. Returns only if it did not
/// exec (no glibc, the setting is there, or the exec failed: then the lab runs as it is).
pub fn shrink_thread_caches() {
    if !GLIBC {
        return;
    }
    // Set already (by this exec, or by someone tuning glibc by hand): theirs.
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // (Without /proc there is no path to this program: the lab goes on with the caches.)
    let Ok(program) = std::env::current_exe() else {
        return;
    };
    let error = exec(&program, SMALL_THREAD_CACHES);
    eprintln!("could not shrink glibc's per-thread malloc caches ({error}); going on as it is");
}

#[cfg(unix)]
fn exec(program: &std::path::Path, tunables: &str) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    // Does not return when it works: this process becomes the program again, same pid.
    std::process::Command::new(program)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .exec()
}

#[cfg(not(unix))]
fn exec(_program: &std::path::Path, _tunables: &str) -> std::io::Error {
    std::io::ErrorKind::Unsupported.into()
}

/// Step 2: the trimming thread, until `stop` (the lab's stop line) closes. `None`
/// where there is nothing to trim (no glibc).
pub fn spawn_trimmer(stop: Receiver<()>) -> std::io::Result<Option<std::thread::JoinHandle<()>>> {
    if !GLIBC {
        return Ok(None);
    }
    log::debug!(
        "memory: GLIBC_TUNABLES={:?}; freed pages given back every {} s",
        std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        TRIM_EVERY.as_secs()
    );
    let thread = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            // BLOCKS: until the next trim is due, or the lab stops (the line closes).
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                stop.recv_timeout(TRIM_EVERY)
            {
                let released = trim();
                log::trace!("memory-trim: freed pages given back: {released}");
            }
        })?;
    Ok(Some(thread))
}

/// Whether this build runs on glibc (Linux with glibc, not the portable build).
const GLIBC: bool = cfg!(all(
    target_os = "linux",
    target_env = "gnu",
    not(lab_portable)
));

/// Give every whole free page back to the kernel; whether any was.
#[cfg(all(target_os = "linux", target_env = "gnu", not(lab_portable)))]
fn trim() -> bool {
    // SAFETY: malloc_trim only inspects and releases the allocator's own free memory.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu", not(lab_portable))))]
fn trim() -> bool {
    false
}
