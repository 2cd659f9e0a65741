//! The broker: with `--redis URL`, every lab's hub is fed from one Redis stream, so clients
//! spread over several labs see the same events with the same ids.
//!
//! ```text
//! lab A: POST /publish "hi"  ──EVALSHA publish──►  Redis  INCR lab:last_id → 42
//!                                                         XADD lab:events 0-42 data "hi"
//! lab A: broker-reader ◄──XREAD BLOCK 1000 STREAMS lab:events 0-41──  0-42 "hi"  → hub.apply(42)
//! lab B: broker-reader ◄──XREAD BLOCK 1000 STREAMS lab:events 0-41──  0-42 "hi"  → hub.apply(42)
//! lab A: 200 {"id": 42}       ← once A's own hub has it (read your writes)
//! ```
//!
//! 1. `Broker::publish` runs one Lua script: the next id from a counter and the event appended
//!    to the stream under that id (`0-ID`, so stream ids and the lab's ids are the same
//!    numbers), the stream trimmed to about `--history` entries. One script is atomic: no
//!    other lab's event can come between the number and the append.
//! 2. The reader thread (`broker-reader`) blocks on `XREAD` and applies each entry to the hub,
//!    which fans it out exactly as a local publish would. Every lesson reads the hub, so every
//!    lesson works unchanged on top.
//! 3. The publisher waits (at most `TIMEOUT`) until its own hub has the event before
//!    answering, so a client that publishes and then polls from the answered id sees it.
//! 4. When Redis goes away: publishing answers 503 (`Unavailable`); held clients keep their
//!    connections; the reader reconnects with backoff and resumes from the last id its hub
//!    has. Redis without persistence forgets its counter when restarted; every publish
//!    and every reconnect first raises the counter to the highest id this lab has seen, so
//!    ids never go backwards for it.
//!
//! **What it costs**: a round trip to Redis per publish and a hop through the reader before
//! any client hears of it (chapter 20 measures both); one connection per publisher (up to
//! four) and one per reader.

use crate::hub::{Event, Hub};
use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The stream of events and the counter that numbers them.
pub const STREAM: &str = "lab:events";
pub const COUNTER: &str = "lab:last_id";
/// The longest a publisher waits on Redis (for a connection, the script, or its own event).
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// Publishing connections kept open at once.
const PUBLISHERS: usize = 4;
/// How long one `XREAD` blocks before it asks again, and the reader's socket timeout.
const READ_BLOCK_MS: u64 = 1000;
const READ_TIMEOUT: Duration = Duration::from_millis(READ_BLOCK_MS + 1000);

/// Step 1: number, append and trim in one atomic step. Also raises the counter to the
/// highest id this lab has seen (ARGV[3]) first: after Redis lost its data, ids go on from
/// where this lab's clients are instead of starting again at 1.
const PUBLISH: &str = r"
local seen = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[1]) or '0') < seen then
  redis.call('SET', KEYS[1], seen)
end
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. id, 'data', ARGV[1])
return id
";

/// Publishing failed: the broker is unreachable or too slow. Callers answer 503.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the broker (Redis) is unavailable: {}", self.0)
    }
}

/// What `/stats` shows of the broker.
#[derive(Default)]
struct Health {
    connected: bool,
    last_error: Option<String>,
}

pub struct Broker {
    url: String,
    client: redis::Client,
    history: usize,
    /// Idle publishing connections (`None`: a place for one not yet opened).
    publishers: (
        Sender<Option<redis::Connection>>,
        Receiver<Option<redis::Connection>>,
    ),
    health: Mutex<Health>,
    reconnects: AtomicU64,
    publish_errors: AtomicU64,
    /// The lab is stopping: the reader ends at its next turn (within `READ_BLOCK_MS`).
    stopping: std::sync::atomic::AtomicBool,
    reader: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Broker {
    /// Check the URL and reach Redis once (a lab started against no broker says so at once),
    /// then start the reader thread feeding `hub`.
    pub fn start(url: &str, hub: Arc<Hub>, history: usize) -> Result<Arc<Broker>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let (tx, rx) = bounded(PUBLISHERS);
        for _ in 0..PUBLISHERS {
            tx.send(None).expect("room for every place");
        }
        let broker = Arc::new(Broker {
            url: url.to_string(),
            client,
            history: history.max(1),
            publishers: (tx, rx),
            health: Mutex::default(),
            reconnects: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            stopping: Default::default(),
            reader: Mutex::default(),
        });
        let mut first = broker
            .connect(READ_TIMEOUT)
            .map_err(|e| format!("cannot reach Redis at {url}: {e}"))?;
        // The ring is the stream: start from what it holds.
        broker
            .load_history(&mut first, &hub)
            .map_err(|e| format!("cannot read {STREAM} from Redis at {url}: {e}"))?;
        let reader = broker.clone();
        let thread = std::thread::Builder::new()
            .name("broker-reader".into())
            .spawn(move || reader.read_forever(&hub, first))
            .map_err(|e| format!("cannot start the broker-reader thread: {e}"))?;
        *broker.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        log::info!("events go through Redis at {url} (stream {STREAM})");
        Ok(broker)
    }

    /// The lab is stopping: the reader thread ends within a read's block.
    pub fn stop(&self) {
        self.stopping.store(true, Relaxed);
    }

    /// Has the reader thread ended?
    pub fn stopped(&self) -> bool {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        reader.as_ref().is_none_or(|thread| thread.is_finished())
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn connect(&self, read_timeout: Duration) -> redis::RedisResult<redis::Connection> {
        let connection = self.client.get_connection_with_timeout(TIMEOUT)?;
        connection.set_read_timeout(Some(read_timeout))?;
        connection.set_write_timeout(Some(TIMEOUT))?;
        Ok(connection)
    }

    /// Step 1 and 3: publish through Redis; the event as this lab's hub has it.
    pub fn publish(&self, hub: &Hub, data: String) -> Result<Arc<Event>, Unavailable> {
        // BLOCKS: until a publishing connection is free, at most TIMEOUT.
        let slot = self.publishers.1.recv_timeout(TIMEOUT).map_err(|_| {
            self.publish_errors.fetch_add(1, Relaxed);
            Unavailable(format!(
                "every publishing connection is busy for {TIMEOUT:?}"
            ))
        })?;
        let script = redis::Script::new(PUBLISH);
        let invoke = |connection: &mut redis::Connection| -> redis::RedisResult<u64> {
            // BLOCKS: on the round trip to Redis, at most TIMEOUT (the socket's timeouts).
            script
                .key(COUNTER)
                .key(STREAM)
                .arg(&data)
                .arg(self.history)
                .arg(hub.last_id())
                .invoke(connection)
        };
        let result = match slot {
            // A kept connection may have broken meanwhile (Redis restarted): one new try.
            Some(mut kept) => match invoke(&mut kept) {
                Err(e) if e.is_connection_dropped() && !e.is_timeout() => self
                    .connect(TIMEOUT)
                    .and_then(|mut fresh| invoke(&mut fresh).map(|id| (id, fresh))),
                other => other.map(|id| (id, kept)),
            },
            None => self
                .connect(TIMEOUT)
                .and_then(|mut fresh| invoke(&mut fresh).map(|id| (id, fresh))),
        };
        match result {
            Ok((id, connection)) => {
                let _ = self.publishers.0.send(Some(connection));
                // BLOCKS: until the reader has brought the event into this hub, at most TIMEOUT.
                Ok(hub
                    .wait_for(id, Instant::now() + TIMEOUT)
                    .unwrap_or_else(|| Arc::new(Event { id, data })))
            }
            Err(e) => {
                // The connection may be broken: the place is given back empty.
                let _ = self.publishers.0.send(None);
                self.publish_errors.fetch_add(1, Relaxed);
                log::warn!("publish through Redis failed: {e}");
                Err(Unavailable(e.to_string()))
            }
        }
    }

    /// Fill the hub from the newest `history` entries of the stream (at start).
    fn load_history(
        &self,
        connection: &mut redis::Connection,
        hub: &Hub,
    ) -> redis::RedisResult<()> {
        let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.history)
            .query(connection)?;
        for entry in newest.ids.iter().rev() {
            apply(hub, entry);
        }
        Ok(())
    }

    /// Step 2 and 4: the reader thread, for the life of the lab.
    fn read_forever(&self, hub: &Hub, first: redis::Connection) {
        let mut connection = Some(first);
        let mut backoff = Duration::from_millis(100);
        while !self.stopping.load(Relaxed) {
            let mut live = match connection.take() {
                Some(live) => live,
                None => match self.connect(READ_TIMEOUT) {
                    Ok(live) => {
                        self.reconnects.fetch_add(1, Relaxed);
                        log::info!("broker-reader reconnected to Redis at {}", self.url);
                        live
                    }
                    Err(e) => {
                        self.went_down(&e);
                        // BLOCKS: the backoff, doubling up to 2 s.
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                },
            };
            if let Err(e) = reseed(&mut live, hub.last_id()) {
                self.went_down(&e);
                continue;
            }
            *self.health() = Health {
                connected: true,
                last_error: None,
            };
            backoff = Duration::from_millis(100);
            while !self.stopping.load(Relaxed) {
                let from = format!("0-{}", hub.last_id());
                // BLOCKS: until Redis has entries after `from`, or READ_BLOCK_MS passes.
                let read: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(512)
                        .arg("BLOCK")
                        .arg(READ_BLOCK_MS)
                        .arg("STREAMS")
                        .arg(STREAM)
                        .arg(&from)
                        .query(&mut live);
                match read {
                    Ok(reply) => {
                        for key in reply.map(|r| r.keys).unwrap_or_default() {
                            for entry in &key.ids {
                                apply(hub, entry);
                            }
                        }
                    }
                    Err(e) => {
                        self.went_down(&e);
                        break;
                    }
                }
            }
        }
    }

    fn went_down(&self, e: &redis::RedisError) {
        let mut health = self.health();
        if health.connected || health.last_error.is_none() {
            log::warn!("broker-reader lost Redis at {}: {e}", self.url);
        }
        *health = Health {
            connected: false,
            last_error: Some(e.to_string()),
        };
    }

    /// `/stats` `broker`.
    pub fn to_json(&self) -> Value {
        let health = self.health();
        json!({
            "url": self.url,
            "connected": health.connected,
            "last_error": health.last_error,
            "reconnects": self.reconnects.load(Relaxed),
            "publish_errors": self.publish_errors.load(Relaxed),
        })
    }
}

/// One stream entry into the hub: its id is the stream id's sequence part (`0-42` → 42).
fn apply(hub: &Hub, entry: &redis::streams::StreamId) {
    let id = entry
        .id
        .split_once('-')
        .and_then(|(_, seq)| seq.parse::<u64>().ok());
    let data: Option<String> = entry.get("data");
    match (id, data) {
        (Some(id), Some(data)) => {
            hub.apply(id, data);
        }
        _ => log::warn!("skipped a stream entry the lab did not write: {}", entry.id),
    }
}

/// Raise the counter to `seen` if Redis has less (it lost its data, or never had it).
fn reseed(connection: &mut redis::Connection, seen: u64) -> redis::RedisResult<()> {
    redis::Script::new(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then \
           redis.call('SET', KEYS[1], ARGV[1]) end",
    )
    .key(COUNTER)
    .arg(seen)
    .invoke::<()>(connection)
}
