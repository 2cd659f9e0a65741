//! An Engine.IO session: what survives from one polling request to the next, and across the
//! upgrade to a WebSocket.
//!
//! A session is two queues and a little state:
//!
//! - the **outbox**, a bounded channel of packet groups for the client (pings, acks, chat
//!   messages; a Socket.IO packet with binary attachments is one group, so nothing can slip
//!   between it and its attachments). Whoever is the transport right now drains it: a held
//!   polling GET, or the WebSocket's thread;
//! - the **feed**, the `/lab` socket's subscription to the hub, with its cursor. The transport
//!   waits on the outbox *and* the feed, as chapter 5's long poll waits on its subscription;
//!   the feed is handed from a held GET to the WebSocket's thread at the upgrade.
//!
//! The state says which transport serves the session, whether a GET or a POST is in progress
//! (one of each at a time), when the next ping is due and when a pong must have come, and
//! which Socket.IO namespaces the client has joined (`Socket`).
//!
//! **Recovery offsets.** Socket.IO's connection-state recovery appends an offset to every
//! broadcast a socket receives, and a reconnecting client sends back the last one it got. On
//! `/lab` two kinds of broadcast reach a socket: hub events (numbered by the hub) and room
//! messages (`said`, numbered per socket by its `SaidLog`). So the offset names both, `H.S`:
//! the last hub event and the last room message rendered for this client, stamped when the
//! transport takes the packet (`wait_for_packets`), never earlier, so an offset never claims
//! what the client was not sent. Recovery replays the hub events after `H` from the ring and
//! the room messages after `S` from the socket's log, which kept recording while it was away.

use super::engine_io::Packet as EioPacket;
use super::packet::Packet;
use super::Settings;
use crate::hub::{Event, Subscription, Wake};
use crate::sessions::{HubFeed, Outbox};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Groups the outbox holds before the client counts as a slow consumer and is closed.
pub const OUTBOX: usize = 256;
/// Questions to the client (`ask-me`) waiting for its ack at once, per session.
pub const MAX_ASKED: usize = 16;
/// How long a question waits for its ack before it is forgotten (a late answer is then
/// ignored, as an ack for an unknown id is).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(30);

/// Room messages a socket keeps for recovery (the newest; older ones are dropped).
pub const SAID_KEPT: usize = 64;

/// What a transport finds in the outbox.
#[derive(Debug)]
pub enum Outgoing {
    /// Packets to write, in order (one Socket.IO packet and its attachments, or a ping...).
    Packets(Vec<EioPacket>),
    /// A room message for `/lab` (`"said"`), numbered in its socket's `SaidLog`; its offset is
    /// stamped when a transport takes it.
    Said { seq: u64, said: Value },
    /// Nothing to write: look again (the feed changed hands or was replaced).
    Wake,
    /// The session's WebSocket has frames to read (the socket watcher's notice): a WebSocket's
    /// thread returns from `wait_for_packets` to read them; a held GET looks again.
    Noticed,
    /// The session ended and the client knows it (it asked, or its socket is gone): a held
    /// GET answers `6` (noop), a WebSocket writer just closes.
    End,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

/// One Socket.IO namespace the client has joined.
#[derive(Clone, Debug)]
pub struct Socket {
    /// Socket.IO's own id for this socket (not the Engine.IO `sid`).
    pub id: String,
    /// The private id that lets the client recover this socket (`/lab` only).
    pub pid: Option<String>,
    /// The chat name from the auth payload (`/lab`).
    pub name: String,
    pub rooms: BTreeSet<String>,
    /// `/lab`: the room messages sent to this socket, for recovery.
    pub said: SaidLog,
}

/// A socket's room messages, numbered from 1, the newest `SAID_KEPT` kept: what a recovery
/// replays after the client's offset. It records while the socket is kept for recovery too.
#[derive(Clone, Debug, Default)]
pub struct SaidLog {
    last: u64,
    kept: std::collections::VecDeque<(u64, Value)>,
}

impl SaidLog {
    /// Number `said` and keep it; its number.
    pub fn record(&mut self, said: Value) -> u64 {
        self.last += 1;
        if self.kept.len() == SAID_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back((self.last, said));
        self.last
    }

    /// The newest number given (0: none yet).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The kept messages after `seq`, in order, and how many after it are no longer kept.
    pub fn after(&self, seq: u64) -> (Vec<(u64, Value)>, u64) {
        let kept: Vec<(u64, Value)> = self
            .kept
            .iter()
            .filter(|(n, _)| *n > seq)
            .cloned()
            .collect();
        let first_kept = kept.first().map_or(self.last + 1, |(n, _)| *n);
        (kept, first_kept.saturating_sub(seq + 1))
    }
}

/// A recovery offset, `H.S`: the last hub event and the last room message rendered for a
/// client (a plain `H`, from a client of an earlier build, means no room message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offset {
    pub hub: u64,
    pub said: u64,
}

impl Offset {
    pub fn parse(text: &str) -> Option<Offset> {
        let (hub, said) = text.split_once('.').unwrap_or((text, "0"));
        Some(Offset {
            hub: crate::http::whole_number(hub)?,
            said: crate::http::whole_number(said)?,
        })
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.hub, self.said)
    }
}

/// Who ended the session, which decides what the transport still says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closer {
    /// The server (ping timeout, slow consumer): a `1` (close) packet is sent, and a `/lab`
    /// socket may be recovered.
    Server,
    /// The server, for a packet it could not parse or that broke the protocol: as `Server`,
    /// but nothing is kept for recovery (the real server recovers only after a transport
    /// close or error, a ping timeout or its own forced close, never after a parse error).
    ProtocolError,
    /// The client asked (`1`) or its transport went away.
    Client,
}

pub struct State {
    pub transport: Transport,
    /// A WebSocket has probed (`2probe`) and the upgrade is under way.
    pub upgrading: bool,
    pub polling_get: bool,
    pub polling_post: bool,
    pub closed: bool,
    pub next_ping: Instant,
    /// A ping is out: its pong must come by then.
    pub pong_due: Option<Instant>,
    /// No namespace joined yet: the client must CONNECT by then.
    pub connect_due: Option<Instant>,
    pub sockets: BTreeMap<String, Socket>,
    /// A binary packet waiting for its attachments.
    pub binary: Option<(Packet, Vec<Vec<u8>>)>,
    /// Server-to-client acks we wait for: ack id → the question asked, and when. At most
    /// `MAX_ASKED`, each forgotten after `ASK_TIMEOUT` (socket.io's `timeout()` on an emit).
    pub asked: HashMap<u64, (Value, Instant)>,
    pub next_ack_id: u64,
    /// `/lab`: the offset of what has been rendered for the client so far.
    pub rendered: Offset,
}

pub struct Session {
    pub sid: String,
    /// Packets for the client, at most `OUTBOX` groups, and nudges for its transport.
    outbox: Outbox<Outgoing>,
    state: Mutex<State>,
    /// Signalled when an upgrade ends (done, or given up): a GET that came during one waits.
    upgrade_settled: Condvar,
    /// The `/lab` socket's subscription to the hub, lent to the transport that waits.
    feed: HubFeed,
}

/// What a transport collected to write.
pub struct Delivery {
    pub packets: Vec<EioPacket>,
    /// The session ended: after writing, the transport closes too.
    pub ended: bool,
    /// Hub events among the packets (for the lesson's counters).
    pub events: usize,
    /// Nothing came before the deadline (the packets are a noop the wait added).
    pub nothing: bool,
}

impl Session {
    pub fn new(sid: String, transport: Transport, settings: &Settings) -> Session {
        let now = Instant::now();
        Session {
            sid,
            outbox: Outbox::new(OUTBOX),
            state: Mutex::new(State {
                transport,
                upgrading: false,
                polling_get: false,
                polling_post: false,
                closed: false,
                next_ping: now + settings.ping_interval,
                pong_due: None,
                connect_due: Some(now + settings.connect_timeout),
                sockets: BTreeMap::new(),
                binary: None,
                asked: HashMap::new(),
                next_ack_id: 0,
                rendered: Offset::default(),
            }),
            upgrade_settled: Condvar::new(),
            feed: HubFeed::default(),
        }
    }

    /// When the heartbeat must look at the session next: its ping, its pong's deadline, or
    /// (with no namespace joined) its connect's deadline.
    pub fn due(&self) -> Instant {
        let state = self.state();
        let due = state.pong_due.unwrap_or(state.next_ping);
        match state.connect_due {
            Some(connect_due) if state.sockets.is_empty() => due.min(connect_due),
            _ => due,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// End the upgrade (`upgraded`: to the WebSocket; else the session stays on polling) and
    /// wake a GET waiting for the outcome.
    pub fn settle_upgrade(&self, upgraded: bool) {
        let mut state = self.state();
        state.upgrading = false;
        if upgraded {
            state.transport = Transport::WebSocket;
        }
        drop(state);
        self.upgrade_settled.notify_all();
    }

    /// A GET came while a WebSocket probes: **BLOCKS** until the upgrade settles, at most
    /// `limit` (Engine.IO answers such GETs with a noop every 100 ms). `true`: upgraded.
    pub fn wait_for_upgrade(&self, limit: Duration) -> bool {
        let state = self.state();
        let (state, _) = self
            .upgrade_settled
            .wait_timeout_while(state, limit, |s| s.upgrading)
            .unwrap_or_else(|p| p.into_inner());
        state.transport == Transport::WebSocket
    }

    /// Queue packets for the client. `false`: the outbox is full, the client is not reading
    /// (the caller closes the session as a slow consumer).
    pub fn send(&self, packets: Vec<EioPacket>) -> bool {
        self.outbox.push(Outgoing::Packets(packets))
    }

    /// Queue a room message numbered `seq` in the `/lab` socket's log. `false`: the outbox is
    /// full (as `send`).
    pub fn say(&self, seq: u64, said: Value) -> bool {
        self.outbox.push(Outgoing::Said { seq, said })
    }

    /// Queue one Socket.IO packet with its attachments, as one group.
    pub fn emit(&self, packet: &Packet, attachments: &[Vec<u8>]) -> bool {
        let mut group = vec![EioPacket::Message(packet.encode())];
        group.extend(attachments.iter().cloned().map(EioPacket::Binary));
        self.send(group)
    }

    /// Tell the transport to look again (never lost: a nudge goes in past the outbox's cap).
    pub fn wake(&self) {
        self.outbox.tell(Outgoing::Wake);
    }

    /// The socket watcher saw frames on the session's WebSocket: wake its thread (never lost,
    /// as `wake`; and its thread looks at the notice whenever it wakes anyway).
    pub fn notice_frames(&self) {
        self.outbox.tell(Outgoing::Noticed);
    }

    /// The session is over; tell whoever holds the transport.
    pub fn end(&self, closer: Closer) {
        let last = match closer {
            Closer::Server | Closer::ProtocolError => Outgoing::Packets(vec![EioPacket::Close]),
            Closer::Client => Outgoing::End,
        };
        // (Past the outbox's cap too, by a little: a full outbox can still be told to end.)
        self.outbox.tell(last);
        self.clear_feed();
    }

    /// `/lab` joined: its subscription becomes the feed (a recovered backlog was queued in
    /// the outbox just before, and the outbox always goes first).
    pub fn install_feed(&self, subscription: Subscription) {
        self.feed.set(Some(subscription));
        // A transport parked without the feed picks it up.
        self.wake();
    }

    /// `/lab` left, or the session ended: the subscription goes (now, or when handed back).
    pub fn clear_feed(&self) {
        self.feed.set(None);
    }

    /// The parked wait of whatever transport serves the session: **BLOCKS** until the outbox
    /// has packets, the hub has events for `/lab`, or the deadline passes (then a noop).
    ///
    /// Outbox packets go before hub events in what is returned: a recovered backlog waits in
    /// the outbox, and the feed's events all come after it.
    ///
    /// `gather`: take everything queued (a polling answer carries it all in one body), or
    /// only what woke us (a WebSocket writes that, then comes back for the next: as
    /// Engine.IO's own writer does, which waits for one write to drain before the next).
    pub fn wait_for_packets(&self, deadline: Instant, gather: bool) -> Delivery {
        let mut front = Vec::new();
        let mut events = Vec::new();
        let mut fed = Vec::new();
        let mut ended = false;
        loop {
            // BLOCKS: until the generator (or anyone) publishes, or the outbox gets packets
            // (a ping from the heartbeat thread at the latest), or the deadline.
            let woke = self.feed.wait(&self.outbox, deadline, || Outgoing::Wake);
            match woke {
                Wake::Events(batch) => {
                    if batch.missed > 0 {
                        let missed = json!({ "missed": batch.missed });
                        let packet = Packet::event("/lab", vec![json!("missed"), missed], 0);
                        events.push(EioPacket::Message(packet.encode()));
                    }
                    fed.extend(batch.events);
                }
                Wake::Other(Outgoing::Packets(packets)) => front.extend(packets),
                Wake::Other(Outgoing::Said { seq, said }) => {
                    front.push(self.render_said(seq, said))
                }
                Wake::Other(Outgoing::End) => ended = true,
                Wake::Other(Outgoing::Wake) if Instant::now() < deadline => continue,
                Wake::Other(Outgoing::Noticed) if gather && Instant::now() < deadline => continue,
                Wake::Other(Outgoing::Wake | Outgoing::Noticed)
                | Wake::OtherGone
                | Wake::Deadline => {}
            }
            break;
        }
        // Whatever else is queued goes in the same answer; and always before hub events, so a
        // recovered backlog comes before anything the feed brought.
        while (gather || !events.is_empty() || !fed.is_empty()) && !ended {
            match self.outbox.rx.try_recv() {
                Ok(Outgoing::Packets(packets)) => front.extend(packets),
                Ok(Outgoing::Said { seq, said }) => front.push(self.render_said(seq, said)),
                Ok(Outgoing::Wake | Outgoing::Noticed) => {}
                Ok(Outgoing::End) => ended = true,
                Err(_) => break,
            }
        }
        // The feed's events come after the outbox's packets, each stamped with the room
        // messages rendered before it.
        let delivery_events = fed.len();
        for event in &fed {
            let mut state = self.state();
            state.rendered.hub = state.rendered.hub.max(event.id);
            let offset = Offset {
                hub: event.id,
                said: state.rendered.said,
            };
            drop(state);
            events.push(lab_event(event, offset));
        }
        front.extend(events);
        if front.contains(&EioPacket::Close) {
            ended = true;
        }
        let nothing = front.is_empty() && !ended;
        if front.is_empty() {
            // The deadline, or the session ended by the client: a noop ends the held GET.
            front.push(EioPacket::Noop);
        }
        Delivery {
            packets: front,
            ended,
            events: delivery_events,
            nothing,
        }
    }

    /// A room message as it goes out: `"said"`, the message and its offset (the hub events
    /// rendered so far, and this message's number).
    fn render_said(&self, seq: u64, said: Value) -> EioPacket {
        let mut state = self.state();
        state.rendered.said = state.rendered.said.max(seq);
        let offset = Offset {
            hub: state.rendered.hub,
            said: seq,
        };
        drop(state);
        let args = vec![json!("said"), said, json!(offset.to_string())];
        EioPacket::Message(Packet::event("/lab", args, 0).encode())
    }

    /// The next ack id for a question to the client; `None` while `MAX_ASKED` questions are
    /// still waiting for their answer (those older than `ASK_TIMEOUT` are forgotten first).
    pub fn ask(&self, question: Value) -> Option<u64> {
        let mut state = self.state();
        state
            .asked
            .retain(|_, (_, asked_at)| asked_at.elapsed() < ASK_TIMEOUT);
        if state.asked.len() >= MAX_ASKED {
            return None;
        }
        let id = state.next_ack_id;
        state.next_ack_id += 1;
        state.asked.insert(id, (question, Instant::now()));
        Some(id)
    }
}

/// A hub event on `/lab`: the event `"event"` with `{"id", "data"}` and, last, the offset the
/// client sends back to recover (`socket.io-client` keeps a trailing string argument).
pub fn lab_event(event: &Event, offset: Offset) -> EioPacket {
    let args = vec![json!("event"), event.to_json(), json!(offset.to_string())];
    EioPacket::Message(Packet::event("/lab", args, 0).encode())
}

/// How long a polling GET may be held: the heartbeat's ping ends it sooner.
pub fn hold_limit(settings: &Settings) -> Duration {
    settings.ping_interval + settings.ping_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_names_the_hub_event_and_the_room_message_and_reads_back() {
        let offset = Offset { hub: 7, said: 3 };
        assert_eq!(offset.to_string(), "7.3");
        assert_eq!(Offset::parse("7.3"), Some(offset));
        // A plain id (an older client's) means no room message yet.
        assert_eq!(Offset::parse("7"), Some(Offset { hub: 7, said: 0 }));
        for bad in ["", "x", "7.", ".3", "7.3.1", "-1.0", "7.x"] {
            assert_eq!(Offset::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_said_log_keeps_the_newest_and_says_how_many_after_a_number_it_lost() {
        let mut log = SaidLog::default();
        for n in 1..=(SAID_KEPT as u64 + 6) {
            assert_eq!(log.record(json!(n)), n);
        }
        assert_eq!(log.last(), SAID_KEPT as u64 + 6);
        // Everything after 10 is kept: nothing lost.
        let (after, lost) = log.after(10);
        assert_eq!((after.first().map(|(n, _)| *n), lost), (Some(11), 0));
        assert_eq!(after.len(), SAID_KEPT - 4);
        // After 2: 3 to 6 were dropped to keep the log bounded.
        let (after, lost) = log.after(2);
        assert_eq!((after.len(), lost), (SAID_KEPT, 4));
        // After the last: nothing, nothing lost.
        assert_eq!(log.after(log.last()), (Vec::new(), 0));
    }
}
