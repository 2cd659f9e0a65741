//! Counters behind `GET /stats`: what the server is holding right now, and what each lesson
//! has cost so far. Gauges go up through a guard and down when the guard drops, so a handler
//! that ends in any way (answer, timeout, broken pipe, panic) gives back what it took.

use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Per-lesson counters: requests, answers with no event, events delivered, bytes written.
#[derive(Clone, Default)]
pub struct LessonCounters(Arc<Counts>);

#[derive(Default)]
pub struct Counts {
    requests: AtomicU64,
    empty: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl LessonCounters {
    pub fn request(&self) {
        self.0.requests.fetch_add(1, Relaxed);
    }
    /// An answer carried `n` events (0 counts as an empty answer).
    pub fn delivered(&self, n: usize) {
        if n == 0 {
            self.0.empty.fetch_add(1, Relaxed);
        }
        self.0.events.fetch_add(n as u64, Relaxed);
    }
    /// A stream wrote `n` events (streams have no "empty answers").
    pub fn streamed(&self, n: usize) {
        self.0.events.fetch_add(n as u64, Relaxed);
    }
    pub fn wrote(&self, bytes: usize) {
        self.0.bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn error(&self) {
        self.0.errors.fetch_add(1, Relaxed);
    }
    fn to_json(&self) -> Value {
        json!({
            "requests": self.0.requests.load(Relaxed),
            "empty": self.0.empty.load(Relaxed),
            "events": self.0.events.load(Relaxed),
            "bytes": self.0.bytes.load(Relaxed),
            "errors": self.0.errors.load(Relaxed),
        })
    }
}

/// A count of things held right now (parked requests, open streams...).
#[derive(Default)]
pub struct Gauge(AtomicUsize);

impl Gauge {
    pub fn enter(&self) -> GaugeGuard<'_> {
        self.0.fetch_add(1, Relaxed);
        GaugeGuard(self)
    }
    pub fn get(&self) -> usize {
        self.0.load(Relaxed)
    }
    /// For a place `Held::keep` kept (`Stats::let_go`).
    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Relaxed);
    }
}

pub struct GaugeGuard<'a>(&'a Gauge);

/// A request held open (a parked long poll or a stream): its kind's guard and its place
/// under the `--max-parked` limit, both given back on drop.
pub struct Held<'a> {
    _kind: GaugeGuard<'a>,
    _held: GaugeGuard<'a>,
}

impl Held<'_> {
    /// For a holder that outlives this thread (a connection handed to `waiting_room`): the place
    /// stays taken until `Stats::let_go` gives it back.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Relaxed);
    }
}

#[derive(Default)]
pub struct Stats {
    /// Handler threads alive, each holding one HTTP request (plus WebSocket connections).
    pub connections: Gauge,
    /// Long polls waiting for an event.
    pub parked: Gauge,
    /// Streaming responses (iframe, multipart, ndjson, SSE) held open.
    pub streams: Gauge,
    pub websockets: Gauge,
    /// Threads serving WebSockets right now: one per connection, none for one held without a
    /// thread (`--parking queue`, `waiting_room`).
    pub websocket_threads: Gauge,
    /// Parked plus streams: what `--max-parked` limits.
    held: Gauge,
    /// Clients dropped because a write to them did not finish within `--write-timeout`.
    pub slow_consumers: AtomicU64,
    /// Requests refused with 503 because the process neared a limit of its own (`limits`).
    pub refused_near_limits: AtomicU64,
    /// Parked long polls and streams let go because their client closed its connection.
    pub departed: AtomicU64,
    lessons: Mutex<BTreeMap<&'static str, LessonCounters>>,
}

impl Stats {
    /// The counters for one lesson, created on first use.
    pub fn lesson(&self, name: &'static str) -> LessonCounters {
        let mut lessons = self.lessons.lock().unwrap_or_else(|p| p.into_inner());
        lessons.entry(name).or_default().clone()
    }

    /// Give back a place that `Held::keep` kept, of `kind`.
    pub fn let_go(&self, kind: &Gauge) {
        kind.sub(1);
        self.held.sub(1);
    }

    /// Take a place for a held request, or `None` when `max` are already held.
    pub fn try_hold<'a>(&'a self, kind: &'a Gauge, max: usize) -> Option<Held<'a>> {
        let held = self.held.enter();
        if self.held.get() > max {
            return None; // `held` drops and gives the place back
        }
        Some(Held {
            _kind: kind.enter(),
            _held: held,
        })
    }

    pub fn lessons_json(&self) -> Value {
        let lessons = self.lessons.lock().unwrap_or_else(|p| p.into_inner());
        let map: Map<String, Value> = lessons
            .iter()
            .map(|(name, c)| (name.to_string(), c.to_json()))
            .collect();
        Value::Object(map)
    }
}

/// Threads in this process, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn live_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Resident memory of this process in KiB, from `/proc/self/status` (Linux); `None` elsewhere.
pub fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|n| n.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors (one per connection, two per WebSocket); `None` off Linux.
///
/// Linux 6.2 and later report the count as the size of `/proc/self/fd`: one `stat`, however
/// many are open. Listing the directory instead costs a kernel lookup per descriptor, and the
/// gate asks often: under a thousand-client long-poll herd, listing took a fifth of the lab's
/// CPU (perf, REFERENCE.md chapter 14). Older kernels report 0, and get the listing.
pub fn open_fds() -> Option<u64> {
    match std::fs::metadata("/proc/self/fd").map(|m| m.len()) {
        Ok(count) if count > 0 => Some(count),
        _ => open_fds_by_listing(),
    }
}

/// Open file descriptors counted by listing `/proc/self/fd`: a few milliseconds at ten
/// thousand (the gate near a limit uses it on purpose: see `limits::Capacity::sample`).
pub fn open_fds_by_listing() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_descriptor_counts_follow_opened_and_closed_files() {
        // (Other tests' threads may open descriptors meanwhile: compare within a margin.)
        for count in [super::open_fds, super::open_fds_by_listing] {
            let before = count().unwrap();
            let files: Vec<std::fs::File> = (0..50)
                .map(|_| std::fs::File::open("/proc/self/status").unwrap())
                .collect();
            let during = count().unwrap();
            assert!(
                (48..=60).contains(&(during - before)),
                "{before} → {during}"
            );
            drop(files);
            let after = count().unwrap();
            assert!(after + 40 <= during, "{during} → {after}");
        }
    }
}
