//! # Sessions: what a framework keeps for each client between its requests, bounded in count
//! and in time. Socket.IO's sessions, Bayeux's clients, Pushlets' sessions and Atmosphere's
//! resources all live in one of these.
//!
//! ```text
//! POST /cometd [{"channel":"/meta/handshake",…}]   ← a session opens: under both caps?
//! ◄ [{"successful":true,"clientId":"Zk…",…}]          yes: Zk… is due in 30 s
//! POST /cometd [{"channel":"/meta/handshake",…}]   ← the same client's 201st
//! ◄ [{"successful":false,"error":"503::…","advice":{"reconnect":"handshake","interval":…}}]
//!   (time passes: bayeux-sweeper sleeps until the earliest session is due)
//! bayeux-sweeper wakes: Zk… is due → the framework's look: gone (expired), or due again later
//! ```
//!
//! 1. `Sessions::open`: a new session, with a random id, if its client (the address
//!    `--trust-proxy` resolves) holds fewer than `--max-sessions-per-client` of this
//!    framework's sessions, and the framework fewer than `--max-sessions`. Otherwise
//!    `Refused`, counted for `/stats`, which the framework answers in its protocol's own
//!    words. Nothing is allocated for a refused session.
//! 2. `Sessions::look_at`: the framework says when its sweeper must look at a session next
//!    (a ping due, an expiry), no later than that. The times are kept in order (a `BTreeSet`),
//!    so an open or a touch costs a logarithm, not a scan of every session.
//! 3. The sweeper thread (`spawn_sweeper`) sleeps until the earliest session is due, and
//!    wakes early only when a session is due before that. For each session due it runs the
//!    framework's look, which does what is due (a ping, an expiry) and says when to look next.
//! 4. `Sessions::close`: the session is forgotten, and its client's place given back.
//!
//! Also here: `Outbox`, a session's queue for its client, bounded by count and allocated as
//! it fills rather than up front; and `HubFeed`, a session's subscription to the hub, lent to
//! whichever transport waits for the session, with the wait on both (`HubFeed::wait`).
//!
//! **What it costs**: one map entry and one ordered entry per session; an open, a touch or a
//! close takes the registry's lock for a logarithm of the sessions. (What the caps save, and
//! a flood of handshakes measured: REFERENCE.md, "What every framework shares".)

pub use crate::config::SessionLimits;
use crate::hub::{Subscription, Wake};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// Why a session was not opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The framework holds `--max-sessions` already.
    Everyone(usize),
    /// This client holds `--max-sessions-per-client` already.
    ThisClient(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Everyone(max) => write!(f, "the lab holds {max} sessions already"),
            Refused::ThisClient(max) => write!(f, "this client holds {max} sessions already"),
        }
    }
}

/// One framework's sessions: its registry, its caps and its sweeper's schedule.
pub struct Sessions<S> {
    /// The framework, for the logs.
    name: &'static str,
    limits: SessionLimits,
    inner: Mutex<Inner<S>>,
    /// The sweeper's wake-up line: rung when a session is due before the sweeper would wake.
    ring: Sender<()>,
    rung: Mutex<Option<Receiver<()>>>,
    refused: AtomicU64,
}

struct Inner<S> {
    by_id: HashMap<String, Entry<S>>,
    /// Sessions held per client address (no entry at zero).
    per_client: HashMap<IpAddr, usize>,
    /// When each session is due, earliest first.
    due: BTreeSet<(Instant, String)>,
    /// When the sweeper wakes next unless rung (`None`: when rung).
    sweeper_wakes: Option<Instant>,
}

struct Entry<S> {
    session: Arc<S>,
    client: IpAddr,
    due: Option<Instant>,
}

impl<S> Sessions<S> {
    pub fn new(name: &'static str, limits: SessionLimits) -> Sessions<S> {
        let (ring, rung) = crossbeam_channel::bounded(1);
        Sessions {
            name,
            limits,
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                per_client: HashMap::new(),
                due: BTreeSet::new(),
                sweeper_wakes: None,
            }),
            ring,
            rung: Mutex::new(Some(rung)),
            refused: AtomicU64::new(0),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner<S>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Step 1: a new session for `client`, made by `make` from its new id, due (for the
    /// sweeper's first look) at `due`; or why not.
    pub fn open(
        &self,
        client: IpAddr,
        due: Instant,
        make: impl FnOnce(String) -> S,
    ) -> Result<Arc<S>, Refused> {
        let mut inner = self.inner();
        let held = inner.per_client.get(&client).copied().unwrap_or(0);
        let refused = if inner.by_id.len() >= self.limits.max {
            Some(Refused::Everyone(self.limits.max))
        } else if held >= self.limits.per_client {
            Some(Refused::ThisClient(self.limits.per_client))
        } else {
            None
        };
        if let Some(refused) = refused {
            drop(inner);
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::debug!("{} session refused for {client}: {refused}", self.name);
            return Err(refused);
        }
        let id = crate::lab::random_id();
        let session = Arc::new(make(id.clone()));
        inner.per_client.insert(client, held + 1);
        inner.by_id.insert(
            id.clone(),
            Entry {
                session: session.clone(),
                client,
                due: None,
            },
        );
        self.schedule(&mut inner, &id, due);
        Ok(session)
    }

    pub fn get(&self, id: &str) -> Option<Arc<S>> {
        self.inner().by_id.get(id).map(|e| e.session.clone())
    }

    /// Every session, none of their locks taken.
    pub fn all(&self) -> Vec<Arc<S>> {
        self.inner()
            .by_id
            .values()
            .map(|e| e.session.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.inner().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Step 2: the sweeper looks at session `id` at `when`, or sooner if it was due sooner.
    pub fn look_at(&self, id: &str, when: Instant) {
        let mut inner = self.inner();
        self.schedule(&mut inner, id, when);
    }

    fn schedule(&self, inner: &mut Inner<S>, id: &str, when: Instant) {
        let Some(entry) = inner.by_id.get_mut(id) else {
            return; // closed meanwhile
        };
        if entry.due.is_some_and(|due| due <= when) {
            return;
        }
        if let Some(old) = entry.due.replace(when) {
            inner.due.remove(&(old, id.to_string()));
        }
        inner.due.insert((when, id.to_string()));
        if inner.sweeper_wakes.is_none_or(|wakes| when < wakes) {
            inner.sweeper_wakes = Some(when);
            let _ = self.ring.try_send(()); // (a ring already waiting says the same)
        }
    }

    /// Step 4: forget session `id`, giving its client's place back.
    pub fn close(&self, id: &str) -> Option<Arc<S>> {
        let mut inner = self.inner();
        let entry = inner.by_id.remove(id)?;
        if let Some(due) = entry.due {
            inner.due.remove(&(due, id.to_string()));
        }
        if let Some(held) = inner.per_client.get_mut(&entry.client) {
            *held -= 1;
            if *held == 0 {
                inner.per_client.remove(&entry.client);
            }
        }
        Some(entry.session)
    }

    /// Sessions refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `/stats`: sessions open, refused so far, and the caps.
    pub fn to_json(&self) -> Value {
        let inner = self.inner();
        json!({
            "open": inner.by_id.len(),
            "clients": inner.per_client.len(),
            "refused": self.refused(),
            "max": self.limits.max,
            "max_per_client": self.limits.per_client,
        })
    }

    /// The sessions due by `now`, taken off the schedule.
    fn take_due(&self, now: Instant) -> Vec<(String, Arc<S>)> {
        let mut inner = self.inner();
        let mut taken = Vec::new();
        while let Some((when, id)) = inner.due.first().cloned() {
            if when > now {
                break;
            }
            inner.due.pop_first();
            if let Some(entry) = inner.by_id.get_mut(&id) {
                entry.due = None;
                taken.push((id, entry.session.clone()));
            }
        }
        taken
    }
}

impl<S: Send + Sync + 'static> Sessions<S> {
    /// Step 3: start the sweeper thread `name` (once), until the lab stops (`stop`: its
    /// shutdown line, `shutdown::Shutdown::line`). `look` does what is due for a session (a
    /// ping, an expiry: closing it is the framework's business, through `close`) and says
    /// when to look at it next (`None`: not until the framework asks, with `look_at`).
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        name: &str,
        stop: Receiver<()>,
        look: impl Fn(&Arc<S>) -> Option<Instant> + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        self.spawn_sweeper_with(name, stop, look, || None)
    }

    /// `spawn_sweeper`, with a timer of the framework's own beside the sessions' (Atmosphere
    /// frees its empty rooms): `also` runs at every wake and says when it is due next; the
    /// framework rings for it sooner with `wake_sweeper`.
    pub fn spawn_sweeper_with(
        self: &Arc<Self>,
        name: &str,
        stop: Receiver<()>,
        look: impl Fn(&Arc<S>) -> Option<Instant> + Send + 'static,
        mut also: impl FnMut() -> Option<Instant> + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        let rung = self.rung.lock().unwrap_or_else(|p| p.into_inner()).take();
        let rung = rung.ok_or_else(|| std::io::Error::other("the sweeper runs already"))?;
        let sessions = self.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // The most sessions open since memory was last handed back.
                let mut peak = 0;
                loop {
                    peak = peak.max(sessions.len());
                    for (id, session) in sessions.take_due(Instant::now()) {
                        if let Some(next) = look(&session) {
                            sessions.look_at(&id, next);
                        }
                    }
                    let open = sessions.len();
                    if peak - open.min(peak) >= GIVE_BACK_AFTER && open <= peak / 2 {
                        let why = format!("{} sessions down from {peak} to {open}", sessions.name);
                        crate::limits::return_freed_memory(&why);
                        peak = open;
                    }
                    let also_due = also();
                    let far = Instant::now() + std::time::Duration::from_secs(3600);
                    let when = sessions.next_due(also_due).unwrap_or(far);
                    // BLOCKS: until the earliest session (or the framework's own timer) is
                    // due, a ring for one due sooner, or the lab's stop.
                    crossbeam_channel::select! {
                        recv(rung) -> _ => {}
                        recv(stop) -> _ => {
                            log::debug!("{} sweeper ended: the lab is stopping", sessions.name);
                            return;
                        }
                        default(when.saturating_duration_since(Instant::now())) => {}
                    }
                }
            })
    }

    /// Wake the sweeper now (the framework's own timer has something due sooner).
    pub fn wake_sweeper(&self) {
        let _ = self.ring.try_send(());
    }
}

impl<S> Sessions<S> {
    /// When the sweeper must wake: the earliest session due, or `also` if sooner. (Noted, so
    /// that `look_at` rings only for a session due before then.)
    fn next_due(&self, also: Option<Instant>) -> Option<Instant> {
        let mut inner = self.inner();
        let next = inner.due.first().map(|(when, _)| *when);
        inner.sweeper_wakes = next;
        match (next, also) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Sessions gone (at least this many, and half of those open at the peak) before their memory
/// is handed back to the system (`limits::return_freed_memory`): glibc's allocator keeps what
/// was freed for the next allocation, so the lab would stay at its peak after a flood.
const GIVE_BACK_AFTER: usize = 256;

/// A session's queue for its client: at most `cap` items, or the client counts as a slow
/// consumer. Built on an unbounded channel, which allocates as it fills: a bounded one
/// allocates all its slots up front, before the client has received anything.
pub struct Outbox<T> {
    tx: Sender<T>,
    /// What the session's transport waits on.
    pub rx: Receiver<T>,
    cap: usize,
}

/// Room above an outbox's cap for what is not a message (an end, a nudge), so that a full
/// queue can still be told to stop.
const CONTROL_ROOM: usize = 8;

impl<T> Outbox<T> {
    pub fn new(cap: usize) -> Outbox<T> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Outbox { tx, rx, cap }
    }

    /// Queue a message; `false` when `cap` are waiting already (the client stopped reading).
    pub fn push(&self, item: T) -> bool {
        self.rx.len() < self.cap && self.tx.send(item).is_ok()
    }

    /// Queue what is not a message (an end, a nudge): past the cap too, by a little.
    pub fn tell(&self, item: T) {
        if self.rx.len() < self.cap + CONTROL_ROOM {
            let _ = self.tx.send(item);
        }
    }

    pub fn len(&self) -> usize {
        self.rx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

/// A session's subscription to the hub (its *feed*), there while the session follows the
/// hub, and lent to whichever transport waits for the session at the moment: a held GET, a
/// WebSocket's thread, a held connect. One wait at a time holds it; a second finds it lent
/// and waits on the outbox alone, and is nudged when the feed comes back.
pub struct HubFeed {
    slot: Mutex<FeedSlot>,
}

struct FeedSlot {
    subscription: Option<Subscription>,
    /// Bumped whenever the feed is replaced or removed, so that a wait handing back an old
    /// subscription drops it instead (which unsubscribes it).
    generation: u64,
    /// A wait found the feed lent: nudge it when it comes back.
    wanted: bool,
}

impl Default for HubFeed {
    fn default() -> HubFeed {
        HubFeed {
            slot: Mutex::new(FeedSlot {
                subscription: None,
                generation: 0,
                wanted: false,
            }),
        }
    }
}

impl HubFeed {
    fn slot(&self) -> MutexGuard<'_, FeedSlot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follow the hub with `subscription` from now on, or stop (`None`); a wait holding the
    /// old one drops it when it comes back.
    pub fn set(&self, subscription: Option<Subscription>) {
        let mut slot = self.slot();
        slot.generation += 1;
        slot.subscription = subscription;
    }

    /// The parked wait of whatever transport serves the session: **BLOCKS** until the hub
    /// has events for it, `outbox` has an item, or `deadline`. Without the feed (not
    /// following the hub, or lent to another wait), on the outbox alone. `nudge` goes into the
    /// outbox when this wait hands back a feed another wanted.
    pub fn wait<T>(
        &self,
        outbox: &Outbox<T>,
        deadline: Instant,
        nudge: impl FnOnce() -> T,
    ) -> Wake<T> {
        let (lent, generation) = {
            let mut slot = self.slot();
            let lent = slot.subscription.take();
            slot.wanted |= lent.is_none();
            (lent, slot.generation)
        };
        let Some(mut subscription) = lent else {
            // BLOCKS: until the outbox has an item, or the deadline.
            return match crate::workarounds::recv_deadline(&outbox.rx, deadline) {
                Ok(item) => Wake::Other(item),
                Err(RecvTimeoutError::Timeout) => Wake::Deadline,
                Err(RecvTimeoutError::Disconnected) => Wake::OtherGone,
            };
        };
        // BLOCKS: until a hub event, an item in the outbox, or the deadline.
        let woke = subscription.wait_for_events_or(&outbox.rx, deadline);
        let mut slot = self.slot();
        // Replaced or removed meanwhile: this one is dropped, which unsubscribes it.
        if slot.generation == generation {
            slot.subscription = Some(subscription);
            if std::mem::take(&mut slot.wanted) {
                drop(slot);
                outbox.tell(nudge());
            }
        }
        woke
    }
}

/// Another handle on the same queue, for whoever must nudge the session from elsewhere (the
/// socket watcher, with `tell`).
impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Outbox<T> {
        Outbox {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
            cap: self.cap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: usize, per_client: usize) -> SessionLimits {
        SessionLimits { max, per_client }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_client_gets_its_cap_and_others_go_on_until_the_lab_is_full() {
        let sessions = Sessions::new("test", limits(5, 3));
        let due = Instant::now() + Duration::from_secs(60);
        let mine: Vec<_> = (0..3)
            .map(|_| sessions.open(A, due, |id| id).unwrap())
            .collect();
        assert_eq!(sessions.open(A, due, |id| id), Err(Refused::ThisClient(3)));
        sessions.open(B, due, |id| id).unwrap();
        sessions.open(B, due, |id| id).unwrap();
        assert_eq!(sessions.open(B, due, |id| id), Err(Refused::Everyone(5)));
        assert_eq!(sessions.refused(), 2);
        // A place given back is a place to take again.
        sessions.close(&mine[0]).unwrap();
        sessions.open(A, due, |id| id).unwrap();
        assert_eq!(sessions.len(), 5);
        assert_eq!(sessions.to_json()["clients"], 2);
    }

    #[test]
    fn the_sweeper_looks_at_each_session_when_due_and_not_before() {
        let sessions = Arc::new(Sessions::new("test", limits(100, 100)));
        let (seen_tx, seen) = crossbeam_channel::unbounded();
        let closer = sessions.clone();
        let (_running, stop) = crossbeam_channel::bounded::<()>(0);
        sessions
            .spawn_sweeper("test-sweeper", stop, move |id: &Arc<String>| {
                let _ = seen_tx.send((id.to_string(), Instant::now()));
                closer.close(id);
                None
            })
            .unwrap();
        let start = Instant::now();
        let late = sessions
            .open(A, start + Duration::from_millis(300), |id| id)
            .unwrap();
        // Opened second, due first: the sweeper, asleep until the first, is woken for it.
        let early = sessions
            .open(A, start + Duration::from_millis(100), |id| id)
            .unwrap();
        let (first, at) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, *early);
        assert!(at >= start + Duration::from_millis(100));
        let (second, at) = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(second, *late);
        assert!(at >= start + Duration::from_millis(300));
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_later_look_does_not_put_off_an_earlier_one() {
        let sessions: Sessions<String> = Sessions::new("test", limits(10, 10));
        let now = Instant::now();
        let id = sessions
            .open(A, now + Duration::from_secs(5), |id| id)
            .unwrap();
        sessions.look_at(&id, now + Duration::from_secs(50));
        assert!(sessions.take_due(now + Duration::from_secs(6)).len() == 1);
    }

    #[test]
    fn a_feed_is_lent_to_one_wait_and_comes_back_with_a_nudge_for_the_one_that_wanted_it() {
        let hub = crate::hub::Hub::new(16, 16);
        let feed = Arc::new(HubFeed::default());
        let outbox = Outbox::<&str>::new(8);
        feed.set(Some(hub.subscribe_with_channel(hub.last_id()).1));
        // The first wait takes the feed and waits for an event.
        let first = {
            let (feed, outbox) = (feed.clone(), outbox.clone());
            let deadline = Instant::now() + Duration::from_secs(10);
            std::thread::spawn(move || feed.wait(&outbox, deadline, || "nudge"))
        };
        let until = Instant::now() + Duration::from_secs(10);
        while feed.slot().subscription.is_some() && Instant::now() < until {
            std::thread::yield_now();
        }
        // A second finds it lent: it waits on the outbox alone (and wants the feed).
        assert!(matches!(
            feed.wait(&outbox, Instant::now(), || "nudge"),
            Wake::Deadline
        ));
        hub.publish("one");
        assert!(matches!(first.join().unwrap(), Wake::Events(batch) if batch.events.len() == 1));
        // Back in its slot, and the wait that wanted it is told.
        assert!(feed.slot().subscription.is_some());
        assert_eq!(outbox.rx.try_recv(), Ok("nudge"));
        // Removed while lent: the lent one is dropped when it comes back.
        let first = {
            let (feed, outbox) = (feed.clone(), outbox.clone());
            let deadline = Instant::now() + Duration::from_millis(300);
            std::thread::spawn(move || feed.wait(&outbox, deadline, || "nudge"))
        };
        while feed.slot().subscription.is_some() && Instant::now() < until {
            std::thread::yield_now();
        }
        feed.set(None);
        assert!(matches!(first.join().unwrap(), Wake::Deadline));
        assert!(feed.slot().subscription.is_none());
        assert_eq!(hub.subscriber_count(), 0, "the dropped one unsubscribed");
    }

    #[test]
    fn an_outbox_holds_its_cap_and_still_takes_an_end() {
        let outbox = Outbox::new(2);
        assert!(outbox.push(1));
        assert!(outbox.push(2));
        assert!(!outbox.push(3), "a slow consumer");
        outbox.tell(0);
        assert_eq!(outbox.rx.try_iter().collect::<Vec<_>>(), vec![1, 2, 0]);
    }
}
