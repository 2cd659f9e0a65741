//! The hub: where every event is numbered, remembered and fanned out.
//!
//! Every lesson reads from the same hub, so the techniques differ only in how they carry an
//! event to the browser, never in which events exist.
//!
//! 1. `publish` gives the event the next id (from 1) and keeps it in a bounded history ring.
//! 2. It rings one bell for every waiting subscriber (`Condvar::notify_all`): each woken
//!    thread reads the events after its own cursor from the ring, and a subscriber whose
//!    cursor the ring has moved past is told how many it `missed`.
//! 3. A subscriber that must also wake for a notice of its own (a WebSocket's thread: its
//!    client sent a frame) waits on one of `GROUPS` group bells instead (`subscribe_noticed`):
//!    `publish` rings every group's, and a notice (`Notice::ring`) rings only its own group's,
//!    so one client's frame wakes a sixty-fourth of the sockets, not all of them.
//! 4. A subscriber that must also wait for something else (a framework's own queue) gets its
//!    own bounded channel (`subscribe_with_channel`) and `select!`s on both. The hub offers it the event with `try_send`: the hub never blocks on a slow
//!    client. A full channel raises the subscriber's `lagged` flag, and it refills from the
//!    ring.
//!
//! Why a bell and not a channel each: with a thousand parked threads, a thousand channel sends
//! are a thousand wake-up system calls, made one after another by the publishing thread (at
//! ten thousand WebSockets, channels put the last socket half a second behind the first). On
//! the lab's 2-core machine one `notify_all` (one call) has half the threads running in about
//! half the time the sends take (`cargo run --release --example latency -- wakes 1000`; the
//! figures are in REFERENCE.md chapter 14). Java calls the same idea `Object.notifyAll`.
//!
//! The servlet originals kept one `BlockingQueue` that every poll drained. That queue is kept
//! here too (`drain_shared_queue`), bounded, so the polling lesson can show how it splits events
//! between clients.

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The group bells of `subscribe_noticed`: a notice wakes one group, an event all of them.
pub const GROUPS: usize = 64;

/// One published event: a monotonic id and any Unicode text.
#[derive(Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub data: String,
}

impl Event {
    /// The wire shape every lesson uses: `{"id": 7, "data": "At ..."}`.
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "data": self.data })
    }
}

/// The hub's end of a subscription with a channel: the channel, and a flag raised when an
/// event did not fit.
struct Subscriber {
    tx: Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

/// Events after a cursor, and how many the history ring could no longer supply.
#[derive(Debug, Default)]
pub struct Backlog {
    pub events: Vec<Arc<Event>>,
    pub missed: u64,
}

impl Backlog {
    /// The cursor a client should send next time: the last id it has now seen.
    pub fn last(&self, cursor: u64) -> u64 {
        self.events.last().map_or(cursor + self.missed, |e| e.id)
    }
}

pub struct Hub {
    state: Mutex<State>,
    /// The bell: rung (`notify_all`) whenever an event is added. Subscriptions without a
    /// channel wait on it, and so does a publisher through the broker waiting for its own.
    added: Condvar,
    /// The group bells (`subscribe_noticed`), all rung with `added`.
    group_bells: Vec<Condvar>,
    /// Publishers take turns fanning out (see `publish`).
    fan_out: Mutex<()>,
    history_size: usize,
    buffer_size: usize,
}

struct State {
    last_id: u64,
    history: VecDeque<Arc<Event>>,
    /// Subscriptions with a channel, by id.
    subscribers: BTreeMap<u64, Subscriber>,
    /// Subscriptions that wait on the bell (they need no entry: the bell rings for all).
    bell_subscribers: usize,
    /// Subscriptions waiting on each group bell (`subscribe_noticed`): only a group with
    /// some is rung.
    in_group: [usize; GROUPS],
    next_subscriber: u64,
    /// The servlet's single queue, drained by whichever poll comes first.
    shared_queue: VecDeque<Arc<Event>>,
}

impl Hub {
    /// `history_size` events are kept for cursors; each subscriber buffers `buffer_size`.
    pub fn new(history_size: usize, buffer_size: usize) -> Arc<Hub> {
        Arc::new(Hub {
            added: Condvar::new(),
            group_bells: (0..GROUPS).map(|_| Condvar::new()).collect(),
            fan_out: Mutex::new(()),
            state: Mutex::new(State {
                last_id: 0,
                history: VecDeque::with_capacity(history_size),
                subscribers: BTreeMap::new(),
                bell_subscribers: 0,
                in_group: [0; GROUPS],
                next_subscriber: 1,
                shared_queue: VecDeque::new(),
            }),
            history_size: history_size.max(1),
            buffer_size: buffer_size.max(1),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked while holding the lock leaves the state consistent (every
        // update below is a single push or remove), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Publish an event numbered here (step 1). (With `--redis`, `Lab::publish` goes through
    /// the broker instead, which numbers it in Redis and brings it back through `apply`.)
    pub fn publish(&self, data: impl Into<String>) -> Arc<Event> {
        self.add(None, data.into())
            .expect("a local id is always new")
    }

    /// An event numbered elsewhere (the broker's reader): added and fanned out like a local
    /// one; `None` for an id this hub already has (ids only grow).
    pub fn apply(&self, id: u64, data: String) -> Option<Arc<Event>> {
        self.add(Some(id), data)
    }

    /// Wait until the event `id` is here (a publisher through the broker, reading its own
    /// write); `None` at the deadline.
    pub fn wait_for(&self, id: u64, deadline: Instant) -> Option<Arc<Event>> {
        let mut state = self.lock();
        while state.last_id < id {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // BLOCKS: until `add` signals a new event, or the deadline.
            state = self
                .added
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        state.history.iter().rev().find(|e| e.id == id).cloned()
    }

    /// Step 1, 2 and 3: number (or take `id`), remember, ring the bell, send to the channels.
    /// Never blocks on a subscriber.
    ///
    /// The sends happen outside the state lock: each may wake a parked thread (a system call),
    /// and holding the lock through them would make the woken threads queue behind it.
    /// Publishers still take turns (`fan_out`), so every channel receives events in id order.
    fn add(&self, id: Option<u64>, data: String) -> Option<Arc<Event>> {
        let _turn = self.fan_out.lock().unwrap_or_else(|p| p.into_inner());
        let (event, subscribers, in_group) = {
            let mut state = self.lock();
            match id {
                Some(id) if id <= state.last_id => return None,
                Some(id) => state.last_id = id,
                None => state.last_id += 1,
            }
            let event = Arc::new(Event {
                id: state.last_id,
                data,
            });
            if state.history.len() == self.history_size {
                state.history.pop_front();
            }
            state.history.push_back(event.clone());
            if state.shared_queue.len() == self.history_size {
                state.shared_queue.pop_front();
            }
            state.shared_queue.push_back(event.clone());
            // Whoever subscribes from here on reads this event in its backlog instead.
            let subscribers: Vec<(u64, Sender<Arc<Event>>, Arc<AtomicBool>)> = state
                .subscribers
                .iter()
                .map(|(id, sub)| (*id, sub.tx.clone(), sub.lagged.clone()))
                .collect();
            (event, subscribers, state.in_group)
        };
        // Step 2. Every thread waiting on the bell wakes: one call, however many there are;
        // and one call per group bell that has anyone waiting on it.
        self.added.notify_all();
        for (bell, _) in self
            .group_bells
            .iter()
            .zip(in_group)
            .filter(|(_, n)| *n > 0)
        {
            bell.notify_all();
        }
        // Step 3. The channels, one `try_send` (and perhaps one wake-up) each.
        let mut delivered = 0;
        let mut gone = Vec::new();
        for (id, tx, lagged) in subscribers {
            match tx.try_send(event.clone()) {
                Ok(()) => delivered += 1,
                // The subscriber is behind: flag it, and it will refill from history.
                Err(TrySendError::Full(_)) => lagged.store(true, Ordering::Release),
                Err(TrySendError::Disconnected(_)) => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let mut state = self.lock();
            for id in gone {
                state.subscribers.remove(&id);
            }
        }
        log::debug!("event {}: bell rung, {} channels", event.id, delivered);
        Some(event)
    }

    /// The id of the newest event (0 before the first): "now" for a client with no cursor.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// Everything after `cursor` that the history ring still holds.
    pub fn since(&self, cursor: u64) -> Backlog {
        backlog(&self.lock(), cursor)
    }

    /// Subscribe (on the bell) and read the backlog under one lock, so no event can fall
    /// between the two. For a thread that waits for events and nothing else: a long poll, a
    /// stream.
    pub fn subscribe(self: &Arc<Self>, cursor: u64) -> (Backlog, Subscription) {
        let mut state = self.lock();
        let backlog = backlog(&state, cursor);
        state.bell_subscribers += 1;
        let cursor = backlog.last(cursor);
        drop(state);
        let subscription = Subscription {
            hub: self.clone(),
            channel: None,
            group: None,
            cursor,
        };
        (backlog, subscription)
    }

    /// Subscribe with a bounded channel of our own, for a thread that waits for events *or*
    /// something else (`Subscription::wait_for_events_or`): a WebSocket's thread, a
    /// framework's session. The backlog is read under the same lock.
    pub fn subscribe_with_channel(self: &Arc<Self>, cursor: u64) -> (Backlog, Subscription) {
        let (tx, rx) = bounded(self.buffer_size);
        let mut state = self.lock();
        let backlog = backlog(&state, cursor);
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        let lagged = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            tx,
            lagged: lagged.clone(),
        };
        state.subscribers.insert(id, subscriber);
        let cursor = backlog.last(cursor);
        drop(state);
        let subscription = Subscription {
            hub: self.clone(),
            channel: Some(Channel { id, rx, lagged }),
            group: None,
            cursor,
        };
        (backlog, subscription)
    }

    /// Subscribe on a group bell, with a `Notice` that wakes this subscription alone (and
    /// the rest of its group, who find nothing and sleep again): for a thread that waits for
    /// events *or* word that its client sent something (a WebSocket's). The backlog is read
    /// under the same lock.
    pub fn subscribe_noticed(
        self: &Arc<Self>,
        cursor: u64,
    ) -> (Backlog, Subscription, Arc<Notice>) {
        let mut state = self.lock();
        let backlog = backlog(&state, cursor);
        let group = (state.next_subscriber % GROUPS as u64) as usize;
        state.next_subscriber += 1;
        state.in_group[group] += 1;
        let cursor = backlog.last(cursor);
        drop(state);
        let subscription = Subscription {
            hub: self.clone(),
            channel: None,
            group: Some(group),
            cursor,
        };
        let notice = Arc::new(Notice {
            hub: self.clone(),
            group,
            raised: AtomicBool::new(false),
        });
        (backlog, subscription, notice)
    }

    /// How many subscriptions are open (parked long polls, streams, WebSockets).
    pub fn subscriber_count(&self) -> usize {
        let state = self.lock();
        state.subscribers.len() + state.bell_subscribers + state.in_group.iter().sum::<usize>()
    }

    /// The servlet original's behaviour: take whatever is queued, leaving nothing for others.
    pub fn drain_shared_queue(&self) -> Vec<Arc<Event>> {
        self.lock().shared_queue.drain(..).collect()
    }
}

fn backlog(state: &State, cursor: u64) -> Backlog {
    let cursor = cursor.min(state.last_id);
    let oldest_kept = state.history.front().map_or(state.last_id + 1, |e| e.id);
    // Ids from cursor+1 up to oldest_kept-1 have left the ring.
    let missed = oldest_kept.saturating_sub(cursor + 1);
    // The ring is in id order: find the first newer event by halving, not by walking it all
    // (every woken thread does this under the hub's lock).
    let first = state.history.partition_point(|e| e.id <= cursor);
    let events = state.history.range(first..).cloned().collect();
    Backlog { events, missed }
}

/// Word for one subscription of `subscribe_noticed` that something besides an event wants
/// its thread (its WebSocket's client sent a frame, or left).
pub struct Notice {
    hub: Arc<Hub>,
    group: usize,
    raised: AtomicBool,
}

impl Notice {
    /// Raise the notice and ring its group's bell. Never blocks but for the hub's lock, held
    /// for a moment: raised under it, so a thread between its look and its wait cannot miss it.
    pub fn ring(&self) {
        let state = self.hub.lock();
        self.raised.store(true, Ordering::Release);
        drop(state);
        self.hub.group_bells[self.group].notify_all();
    }
}

/// Why a parked thread woke without events or a deadline: its client closed the connection.
pub struct ClientLeft;

/// How every parked request waits (`--departures on`: `look`): in steps that end at its next
/// look (`connection::next_look`), each a `wait` until something wakes it (`Some`) or the
/// step ends (`None`); between steps, one look at the socket, which nobody reads while the
/// thread sleeps. `Ok(Some)`: woken; `Ok(None)`: the deadline passed; `Err`: the client left.
pub fn wait_looking<T>(
    deadline: Instant,
    look: bool,
    client_left: impl Fn() -> bool,
    mut wait: impl FnMut(Instant) -> Option<T>,
) -> Result<Option<T>, ClientLeft> {
    loop {
        let step = match look {
            true => deadline.min(crate::connection::next_look()),
            false => deadline,
        };
        // BLOCKS: in `wait`, until what it waits for, or the step ends.
        if let Some(woke) = wait(step) {
            return Ok(Some(woke));
        }
        if !look || Instant::now() >= deadline {
            return Ok(None);
        }
        if client_left() {
            return Err(ClientLeft);
        }
    }
}

/// Which of two other channels woke `Subscription::wait_for_events_or_either`.
pub enum Either<T, U> {
    First(T),
    Second(U),
}

/// What woke `Subscription::wait_for_events_or` (or `wait_or_notice_leaving`).
pub enum Wake<T> {
    Events(Backlog),
    Other(T),
    /// Every sender of the other channel is gone.
    OtherGone,
    Deadline,
}

/// A subscriber's end of the fan-out: the cursor of what it has seen, and, if it asked for
/// one, a channel. Dropping it unsubscribes, so a handler that ends for any reason frees its
/// place in the hub.
pub struct Subscription {
    hub: Arc<Hub>,
    channel: Option<Channel>,
    /// Its group bell (`Hub::subscribe_noticed`), if it waits on one.
    group: Option<usize>,
    cursor: u64,
}

/// A subscription's own channel (`Hub::subscribe_with_channel`).
struct Channel {
    id: u64,
    rx: Receiver<Arc<Event>>,
    lagged: Arc<AtomicBool>,
}

impl Subscription {
    /// Wait for the next events after our cursor, or `None` at the deadline.
    pub fn wait_for_events(&mut self, deadline: Instant) -> Option<Backlog> {
        let Some(rx) = self.channel.as_ref().map(|c| c.rx.clone()) else {
            return self.wait_on_the_bell(deadline);
        };
        loop {
            // BLOCKS: until `publish` sends into our channel or the deadline passes. (Not
            // crossbeam's own `recv_deadline`, which spins and yields first: `workarounds`.)
            let first = crate::workarounds::recv_deadline(&rx, deadline).ok()?;
            if let Some(batch) = self.take_batch(first) {
                return Some(batch);
            }
        }
    }

    /// Wait for events until `deadline` as a parked request does: when `look` is set
    /// (`--departures on`), in steps of `connection::LOOK_EVERY`, asking `client_left` (a look
    /// at the socket, which nobody reads while the thread sleeps here) between steps.
    pub fn wait_or_notice_leaving(
        &mut self,
        client_left: impl Fn() -> bool,
        look: bool,
        deadline: Instant,
    ) -> Wake<ClientLeft> {
        // BLOCKS: until `Hub::publish` rings the bell (or sends into our channel), the
        // deadline, or a look finds the client gone.
        match wait_looking(deadline, look, client_left, |step| {
            self.wait_for_events(step)
        }) {
            Ok(Some(backlog)) => Wake::Events(backlog),
            Ok(None) => Wake::Deadline,
            Err(left) => Wake::Other(left),
        }
    }

    /// The events after our cursor, read from the ring once the bell has rung for them.
    fn wait_on_the_bell(&mut self, deadline: Instant) -> Option<Backlog> {
        let mut state = self.hub.lock();
        while state.last_id <= self.cursor {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // BLOCKS: the connection's thread sleeps here, holding its request, until
            // `publish` rings the bell (`notify_all`) or the deadline passes.
            state = self
                .hub
                .added
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let batch = backlog(&state, self.cursor);
        self.cursor = batch.last(self.cursor);
        Some(batch)
    }

    /// Wait for the next events after our cursor or for `notice` (a subscription of
    /// `Hub::subscribe_noticed`, and its notice), or the deadline.
    pub fn wait_for_events_or_notice(&mut self, notice: &Notice, deadline: Instant) -> Wake<()> {
        let group = self
            .group
            .expect("a subscription of Hub::subscribe_noticed");
        let mut state = self.hub.lock();
        loop {
            if state.last_id > self.cursor {
                let batch = backlog(&state, self.cursor);
                self.cursor = batch.last(self.cursor);
                return Wake::Events(batch);
            }
            if notice.raised.swap(false, Ordering::AcqRel) {
                return Wake::Other(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Deadline;
            }
            // BLOCKS: the thread sleeps on its group's bell until `publish` rings every group
            // (an event), `Notice::ring` rings this one (its client, or a neighbour's), or the
            // deadline passes.
            state = self.hub.group_bells[group]
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Like `wait_for_events`, but also wakes for a message on `other` (a WebSocket's thread
    /// waits on events and on the socket watcher's notice). Only a subscription with a
    /// channel can wait on two things (`Hub::subscribe_with_channel`).
    pub fn wait_for_events_or<T>(&mut self, other: &Receiver<T>, deadline: Instant) -> Wake<T> {
        match self.wait_for_events_or_either(other, &crossbeam_channel::never::<()>(), deadline) {
            Wake::Events(batch) => Wake::Events(batch),
            Wake::Other(Either::First(message)) => Wake::Other(message),
            Wake::Other(Either::Second(())) | Wake::OtherGone => Wake::OtherGone,
            Wake::Deadline => Wake::Deadline,
        }
    }

    /// `wait_for_events_or` on two other channels (Atmosphere's WebSocket: its connection's
    /// stop line, and the socket watcher's notice). `OtherGone` when either has lost every
    /// sender.
    pub fn wait_for_events_or_either<T, U>(
        &mut self,
        first: &Receiver<T>,
        second: &Receiver<U>,
        deadline: Instant,
    ) -> Wake<Either<T, U>> {
        let rx = match &self.channel {
            Some(channel) => channel.rx.clone(),
            None => panic!("wait_for_events_or needs Hub::subscribe_with_channel"),
        };
        loop {
            let timeout = deadline.saturating_duration_since(Instant::now());
            // BLOCKS: until an event, a message on `first` or `second`, or the deadline.
            crossbeam_channel::select! {
                recv(rx) -> event => match event {
                    Ok(arrived) => {
                        if let Some(batch) = self.take_batch(arrived) {
                            return Wake::Events(batch);
                        }
                    }
                    Err(_) => return Wake::Deadline,
                },
                recv(first) -> message => return match message {
                    Ok(message) => Wake::Other(Either::First(message)),
                    Err(_) => Wake::OtherGone,
                },
                recv(second) -> message => return match message {
                    Ok(message) => Wake::Other(Either::Second(message)),
                    Err(_) => Wake::OtherGone,
                },
                default(timeout) => return Wake::Deadline,
            }
        }
    }

    /// `wait_for_events_or` as a parked request does it: when `look` is set (`--departures
    /// on`), in steps of `connection::LOOK_EVERY`, asking `client_left` between steps. `Err`
    /// when the client closed its connection before anything else woke us.
    pub fn wait_for_events_or_notice_leaving<T>(
        &mut self,
        other: &Receiver<T>,
        client_left: impl Fn() -> bool,
        look: bool,
        deadline: Instant,
    ) -> Result<Wake<T>, ClientLeft> {
        // BLOCKS: until an event, a message on `other`, the deadline, or a look finds the
        // client gone.
        let woke = wait_looking(deadline, look, client_left, |step| {
            match self.wait_for_events_or(other, step) {
                Wake::Deadline => None,
                woke => Some(woke),
            }
        })?;
        Ok(woke.unwrap_or(Wake::Deadline))
    }

    /// The first event plus whatever else is queued, refilled from history after an overflow;
    /// `None` if everything was already delivered.
    fn take_batch(&mut self, first: Arc<Event>) -> Option<Backlog> {
        let channel = self.channel.as_ref()?;
        let mut events = vec![first];
        events.extend(channel.rx.try_iter());
        let batch = if channel.lagged.swap(false, Ordering::AcqRel) {
            // Our channel overflowed while we were slow: the ring still has the rest.
            self.hub.since(self.cursor)
        } else {
            Backlog { events, missed: 0 }
        };
        let batch = Backlog {
            events: batch
                .events
                .into_iter()
                .filter(|e| e.id > self.cursor)
                .collect(),
            missed: batch.missed,
        };
        if batch.events.is_empty() && batch.missed == 0 {
            return None; // already delivered from history after an earlier overflow
        }
        self.cursor = batch.last(self.cursor);
        Some(batch)
    }

    /// The id of the last event this subscription has handed out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        match (&self.channel, self.group) {
            (Some(channel), _) => drop(state.subscribers.remove(&channel.id)),
            (None, Some(group)) => state.in_group[group] -= 1,
            (None, None) => state.bell_subscribers -= 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_numbered_elsewhere_keeps_its_id_and_a_repeat_is_ignored() {
        let hub = Hub::new(8, 8);
        let (_, mut sub) = hub.subscribe(0);
        assert_eq!(hub.apply(5, "five".into()).unwrap().id, 5);
        assert!(hub.apply(5, "again".into()).is_none());
        assert!(hub.apply(3, "older".into()).is_none());
        let batch = sub.wait_for_events(Instant::now()).unwrap();
        assert_eq!(batch.events.len(), 1);
        assert_eq!(hub.last_id(), 5);
        // A local publish after it goes on from there.
        assert_eq!(hub.publish("six").id, 6);
    }

    #[test]
    fn wait_for_returns_an_event_once_another_thread_adds_it() {
        let hub = Hub::new(8, 8);
        let adder = hub.clone();
        let waiting = std::thread::spawn(move || {
            adder.wait_for(2, Instant::now() + std::time::Duration::from_secs(10))
        });
        hub.apply(1, "one".into());
        hub.apply(2, "two".into());
        assert_eq!(waiting.join().unwrap().unwrap().data, "two");
        assert!(hub.wait_for(3, Instant::now()).is_none());
    }
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn ids_start_at_one_and_history_is_bounded() {
        let hub = Hub::new(3, 8);
        for i in 0..5 {
            hub.publish(format!("e{i}"));
        }
        let backlog = hub.since(0);
        let ids: Vec<u64> = backlog.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![3, 4, 5]);
        assert_eq!(backlog.missed, 2);
        assert_eq!(backlog.last(0), 5);
        assert_eq!(hub.since(5).events.len(), 0);
    }

    #[test]
    fn a_slow_subscriber_with_a_channel_refills_from_history() {
        let hub = Hub::new(100, 2);
        let (_, mut sub) = hub.subscribe_with_channel(0);
        for i in 0..10 {
            hub.publish(format!("e{i}"));
        }
        let batch = sub.wait_for_events(soon()).unwrap();
        let ids: Vec<u64> = batch.events.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=10).collect::<Vec<_>>());
        assert_eq!(batch.missed, 0);
    }

    #[test]
    fn a_subscriber_past_the_ring_is_told_what_it_missed() {
        for with_channel in [false, true] {
            let hub = Hub::new(4, 2);
            let (_, mut sub) = subscribe(&hub, 0, with_channel);
            for i in 0..10 {
                hub.publish(format!("e{i}"));
            }
            let batch = sub.wait_for_events(soon()).unwrap();
            assert_eq!(batch.missed, 6);
            assert_eq!(batch.events.first().unwrap().id, 7);
            assert_eq!(sub.cursor(), 10);
        }
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::new(4, 2);
        let (_, on_the_bell) = hub.subscribe(0);
        let (_, with_channel) = hub.subscribe_with_channel(0);
        assert_eq!(hub.subscriber_count(), 2);
        drop(on_the_bell);
        assert_eq!(hub.subscriber_count(), 1);
        drop(with_channel);
        assert_eq!(hub.subscriber_count(), 0);
    }

    #[test]
    fn one_bell_wakes_every_waiting_thread() {
        let hub = Hub::new(8, 2);
        let waiting: Vec<_> = (0..8)
            .map(|_| {
                let (_, mut sub) = hub.subscribe(0);
                std::thread::spawn(move || sub.wait_for_events(soon()).map(|b| b.events.len()))
            })
            .collect();
        hub.publish("one");
        for thread in waiting {
            assert_eq!(thread.join().unwrap(), Some(1));
        }
    }

    /// The group bells: an event wakes every noticed subscription, across all groups; a
    /// notice wakes its own subscription (raised before the wait or during it) and no other.
    #[test]
    fn group_bells_wake_everyone_for_an_event_and_one_for_its_notice() {
        let hub = Hub::new(8, 2);
        let subscribed: Vec<_> = (0..2 * GROUPS).map(|_| hub.subscribe_noticed(0)).collect();
        assert_eq!(hub.subscriber_count(), 2 * GROUPS);
        let waiting: Vec<_> = subscribed
            .into_iter()
            .map(|(_, mut sub, notice)| {
                std::thread::spawn(move || {
                    let woke = sub.wait_for_events_or_notice(&notice, soon());
                    matches!(woke, Wake::Events(b) if b.events.len() == 1)
                })
            })
            .collect();
        hub.publish("one");
        for thread in waiting {
            assert!(thread.join().unwrap(), "every group heard the event");
        }
        // A notice rung before the wait is not lost; one rung during it wakes it.
        let (_, mut sub, notice) = hub.subscribe_noticed(1);
        let (_, mut other, other_notice) = hub.subscribe_noticed(1);
        notice.ring();
        assert!(matches!(
            sub.wait_for_events_or_notice(&notice, soon()),
            Wake::Other(())
        ));
        let (rung, ringer) = (Instant::now(), notice.clone());
        let ringing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ringer.ring();
        });
        let woke = sub.wait_for_events_or_notice(&notice, soon());
        assert!(matches!(woke, Wake::Other(())), "woken by the notice");
        assert!(
            rung.elapsed() < Duration::from_secs(4),
            "not at the deadline"
        );
        ringing.join().unwrap();
        // The other subscription's notice was never raised: it waits out its deadline.
        let quick = Instant::now() + Duration::from_millis(100);
        assert!(matches!(
            other.wait_for_events_or_notice(&other_notice, quick),
            Wake::Deadline
        ));
    }

    #[test]
    fn a_bell_subscription_times_out_with_nothing_new() {
        let hub = Hub::new(8, 2);
        hub.publish("before");
        let (backlog, mut sub) = hub.subscribe(1);
        assert!(backlog.events.is_empty());
        let at = Instant::now() + Duration::from_millis(50);
        assert!(sub.wait_for_events(at).is_none());
        assert!(Instant::now() >= at);
    }

    fn subscribe(hub: &Arc<Hub>, cursor: u64, with_channel: bool) -> (Backlog, Subscription) {
        match with_channel {
            true => hub.subscribe_with_channel(cursor),
            false => hub.subscribe(cursor),
        }
    }

    /// Many publishers and subscribers at once, on a seeded random schedule: every
    /// subscription, of either kind, taken at any moment with any cursor, sees every id after
    /// its cursor exactly once and in order, backlog first, then live (with refills after
    /// overflow). Reading the backlog and registering the subscriber under two separate locks
    /// lets an event published between them reach neither: this test then finds a gap.
    #[test]
    fn concurrent_publishers_and_subscribers_never_lose_or_repeat_an_event() {
        const PUBLISHERS: u64 = 3;
        const PER_PUBLISHER: u64 = 3000;
        const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
        let hub = Hub::new(TOTAL as usize, 4); // a tiny buffer: overflows and refills too
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_PUBLISHER {
                        hub.publish(format!("p{p}-{i}"));
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let subscribers: Vec<_> = (0..4u64)
            .map(|seed| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    let mut random = 0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1);
                    let mut next = move || {
                        random ^= random << 13;
                        random ^= random >> 7;
                        random ^= random << 17;
                        random
                    };
                    let mut rounds = 0;
                    while hub.last_id() < TOTAL || rounds < 3 {
                        rounds += 1;
                        // Any cursor up to now, taken at any moment.
                        let now = hub.last_id();
                        let cursor = now.saturating_sub(next() % 50);
                        let (backlog, mut sub) = subscribe(&hub, cursor, seed % 2 == 0);
                        assert_eq!(backlog.missed, 0);
                        let mut expected = cursor + 1;
                        let check = |expected: &mut u64, events: &[Arc<Event>]| {
                            for event in events {
                                assert_eq!(event.id, *expected, "a gap or a repeat after {cursor}");
                                *expected += 1;
                            }
                        };
                        check(&mut expected, &backlog.events);
                        // Follow the live events for a random stretch.
                        let stretch = expected + next() % 200;
                        while expected <= stretch.min(TOTAL) {
                            let batch = sub
                                .wait_for_events(Instant::now() + Duration::from_secs(10))
                                .expect("the next event arrives");
                            assert_eq!(batch.missed, 0);
                            check(&mut expected, &batch.events);
                        }
                    }
                })
            })
            .collect();
        for thread in publishers.into_iter().chain(subscribers) {
            thread.join().unwrap();
        }
        assert_eq!(hub.last_id(), TOTAL);
        assert_eq!(hub.subscriber_count(), 0);
    }
}
