//! Step 6: Bayeux's `websocket` transport, at `/cometd` itself (the server's upgrade `match`).
//!
//! ```text
//! GET /cometd  Upgrade: websocket                                                   101
//! ► [{"channel":"/meta/handshake","supportedConnectionTypes":["websocket",…],"id":"1"}]
//! ◄ [{"channel":"/meta/handshake","successful":true,"clientId":"Zk…",…,"id":"1"}]
//! ► [{"channel":"/meta/connect","clientId":"Zk…","connectionType":"websocket","id":"2"}]
//! ◄ [{"channel":"/meta/connect","successful":true,"id":"2",…}]          ← the first: at once
//! ► [{"channel":"/meta/subscribe","subscription":"/lab/**","clientId":"Zk…","id":"3"}]
//! ◄ [{"channel":"/meta/subscribe","successful":true,…,"id":"3"}]
//! ► [{"channel":"/meta/connect","clientId":"Zk…","connectionType":"websocket","id":"4"}]
//!   (time passes: the connect is held by the socket's thread, parked on the client's queue and feed)
//! ◄ [{"channel":"/lab/events","data":{"data":"At …","id":7}}]   ← a delivery, at once
//!   (time passes: the advised timeout)
//! ◄ [{"channel":"/meta/connect","successful":true,"id":"4",…}]   ← the connect, at its timeout
//! ```
//!
//! The same messages as over HTTP (`process_messages`), on one socket for as long as the
//! client lives, in the conversation every WebSocket has (`conversation`). As chapter 12, one
//! thread per socket, the connection's: it parks on the client's queue and feed
//! (`wait_once`), and the socket watcher's notice reaches it there as a nudge. Woken by the notice, it reads the batches that came and answers every message but
//! the connect at once; a `/meta/connect` it holds for the advised timeout (counted as
//! parked), and meanwhile it sends each delivery the moment it comes, as CometD's own server
//! does. Under the ack extension deliveries ride only on connect
//! answers, numbered batches as over HTTP (CometD's `metaConnectDeliveryOnly`), so a client
//! that reconnects is sent again what it never acknowledged.

use super::{
    begin_connect, finish_connect, message, process_messages, wait_once, Bayeux, Client, Message,
    Outgoing, Woken,
};
use crate::connection::Request;
use crate::conversation::{converse, Ending, Endpoint, Socket};
use crate::lab::Lab;
use crate::sessions::Outbox;
use crossbeam_channel::Receiver;
use serde_json::Value;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `/cometd` with `Upgrade: websocket`: our checks (the page's `Origin`), then the handshake
/// every WebSocket endpoint shares (`ws::accept`), then the conversation.
pub fn upgrade(lab: &Lab, bayeux: &Bayeux, request: Request) -> io::Result<()> {
    let client = lab.client(&request);
    let checked = match request.header("Origin") {
        Some(origin) if !lab.is_own_origin(origin, &client) => {
            Err((403, lab.foreign_origin(origin, &request)))
        }
        _ => Ok(()),
    };
    let Some(((), upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    log::debug!("ws {id} is a bayeux websocket");
    let counters = lab.count("bayeux");
    let mut socket = Socket::new(socket, id, &counters, &lab.stats);
    let mut endpoint = BayeuxSocket {
        lab,
        bayeux,
        served: None,
        wake_line: Arc::default(),
        from: client.ip,
    };
    converse(&mut endpoint, &mut socket, &lab.watcher);
    Ok(())
}

/// What this endpoint adds to the conversation every WebSocket has: the client it serves,
/// and the connect it holds.
struct BayeuxSocket<'a> {
    lab: &'a Lab,
    bayeux: &'a Bayeux,
    /// The client this socket serves, from its first connect on it: one at a time.
    served: Option<Served<'a>>,
    /// The served client's queue, where the watcher's notice wakes a thread parked on it.
    wake_line: Arc<Mutex<Option<Outbox<Outgoing>>>>,
    /// The client's address, which a handshake on this socket counts under the caps.
    from: std::net::IpAddr,
}

/// The client a socket serves, and its connect if one is held.
struct Served<'lab> {
    client: Arc<Client>,
    /// The ack extension: deliveries ride only on connect answers.
    acks: bool,
    held: Option<HeldConnect<'lab>>,
    /// Under the ack extension: deliveries waiting for the next connect answer.
    waiting: Vec<Message>,
}

/// A connect the thread holds: the message, when it is due, its place among the parked.
struct HeldConnect<'lab> {
    message: Message,
    due: Instant,
    _parked: Option<crate::stats::Held<'lab>>,
}

/// Send `messages` as one frame, a JSON array.
fn send(socket: &mut Socket<'_>, messages: &[Message]) -> Result<(), Ending> {
    if messages.is_empty() {
        return Ok(());
    }
    let text = Value::Array(messages.iter().cloned().map(Value::Object).collect()).to_string();
    // BLOCKS: while the client's receive buffer and our send buffer are full, up to
    // --write-timeout.
    socket.send_text(text)
}

impl<'a> Endpoint for BayeuxSocket<'a> {
    /// Deliveries as they come, the held connect answered at its timeout; before the first
    /// connect, the notice alone.
    fn wait(
        &mut self,
        socket: &mut Socket<'_>,
        noticed: &Receiver<()>,
        deadline: Instant,
    ) -> Result<(), Ending> {
        let Some(served) = self.served.as_ref() else {
            // BLOCKS: until the watcher's notice (the client's first connect is to come), or
            // the tick.
            let _ = crate::workarounds::recv_deadline(noticed, deadline);
            return Ok(());
        };
        let client = served.client.clone();
        let due = served
            .held
            .as_ref()
            .map_or(deadline, |h| h.due.min(deadline));
        // BLOCKS: until a delivery, the watcher's notice (a nudge), the held connect's
        // timeout, or the client's end.
        let woken = wait_once(&client, due);
        self.deliver(socket, woken)
    }

    /// A batch, answered at once but for its connect, which is held (`take_connect`).
    fn on_message(
        &mut self,
        socket: &mut Socket<'_>,
        message: tungstenite::Message,
    ) -> Result<(), Ending> {
        let tungstenite::Message::Text(text) = message else {
            return Ok(()); // (Bayeux is JSON text)
        };
        let batch = match message::read_batch(text.as_str()) {
            Ok(batch) => batch,
            Err((status, refusal)) => {
                if status == 400 {
                    socket.counters.error();
                }
                return send(socket, &[refusal]);
            }
        };
        let (mut replies, connect) =
            process_messages(self.lab, self.bayeux, batch, "websocket", self.from);
        // A client that disconnected (in this batch or before) no longer holds the socket.
        if self.served.as_ref().is_some_and(|s| s.client.state().gone) {
            self.deliver(socket, Woken::Ended)?;
        }
        // The batch's other replies first, then its connect.
        let connect = match connect {
            Some((client, connect))
                if self
                    .served
                    .as_ref()
                    .is_some_and(|s| s.client.id != client.id) =>
            {
                let name = "socket_serves_another_client";
                replies.push(message::error(&connect, 400, name, None));
                None
            }
            other => other,
        };
        send(socket, &replies)?;
        match connect {
            Some((client, connect)) => self.take_connect(socket, client, connect),
            None => Ok(()),
        }
    }

    fn tick_every(&self) -> Duration {
        self.bayeux.settings.timeout
    }

    /// A live client connects at least once per timeout: silent far longer, it has gone.
    fn silence(&self) -> Option<Duration> {
        let settings = &self.bayeux.settings;
        Some(settings.timeout + settings.max_interval + Duration::from_secs(10))
    }

    /// A thread parked on the client's queue hears the watcher's notice as a nudge.
    fn nudge(&self) -> Option<Box<dyn Fn() + Send + Sync>> {
        let wake_line = self.wake_line.clone();
        Some(Box::new(move || {
            if let Some(queue) = wake_line.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                queue.tell(Outgoing::Wake);
            }
        }))
    }

    /// The socket is going: the client is not holding a connect any more, and expires unless
    /// it connects again (on a new socket, or over HTTP).
    fn ended(&mut self, _ending: &Ending) {
        if let Some(served) = self.served.take() {
            if served.held.is_some() {
                super::let_go_of_connect(self.bayeux, &served.client);
            }
        }
    }
}

impl<'a> BayeuxSocket<'a> {
    /// What woke the thread on the client's queue or feed.
    fn deliver(&mut self, socket: &mut Socket<'_>, woken: Woken) -> Result<(), Ending> {
        let Some(mut served) = self.served.take() else {
            return Ok(());
        };
        let result = match woken {
            Woken::Deliveries(deliveries) if served.acks => {
                served.waiting.extend(deliveries);
                // Bounded as the client's queue is: a client that stops connecting while
                // deliveries pile up is a slow consumer, and goes.
                if served.waiting.len() > super::QUEUE {
                    let why = "slow consumer (deliveries waiting for a connect)";
                    self.bayeux.forget(&served.client, why);
                    served.waiting.clear();
                    Ok(())
                } else {
                    self.answer_held(socket, &mut served)
                }
            }
            Woken::Deliveries(deliveries) => {
                socket.counters.delivered(deliveries.len());
                send(socket, &deliveries)
            }
            // A newer connect over HTTP takes over: answer this one now. (A nudge is also the
            // watcher's notice: the driver reads.)
            Woken::Nudged if served.client.state().superseded => {
                self.answer_held(socket, &mut served)
            }
            Woken::Nudged => Ok(()),
            Woken::TimeUp
                if served
                    .held
                    .as_ref()
                    .is_some_and(|h| Instant::now() >= h.due) =>
            {
                self.answer_held(socket, &mut served)
            }
            Woken::TimeUp => Ok(()),
            Woken::Ended => {
                // The client is gone: its held connect is answered, and the socket may serve
                // another (one that handshakes again on it).
                let result = match served.held.take() {
                    Some(connect) => {
                        let answer = finish_connect(
                            self.bayeux,
                            &served.client,
                            &connect.message,
                            vec![],
                            socket.counters,
                        );
                        send(socket, &answer)
                    }
                    None => Ok(()),
                };
                *self.wake_line.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return result;
            }
        };
        self.served = Some(served);
        result
    }

    /// Answer the held connect, if any, with the deliveries waiting for it.
    fn answer_held(&self, socket: &mut Socket<'_>, served: &mut Served<'_>) -> Result<(), Ending> {
        let Some(connect) = served.held.take() else {
            return Ok(());
        };
        let out = std::mem::take(&mut served.waiting);
        let answer = finish_connect(
            self.bayeux,
            &served.client,
            &connect.message,
            out,
            socket.counters,
        );
        send(socket, &answer)
    }

    /// A `/meta/connect`: the one held before it is answered first; this one is answered at
    /// once (the first, one that asks not to wait, one with deliveries waiting) or held until
    /// its timeout.
    fn take_connect(
        &mut self,
        socket: &mut Socket<'_>,
        client: Arc<Client>,
        message: Message,
    ) -> Result<(), Ending> {
        let mut served = match self.served.take() {
            Some(served) => served,
            None => {
                *self.wake_line.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(client.queue.clone());
                let acks = client.state().acks;
                Served {
                    acks,
                    client,
                    held: None,
                    waiting: Vec::new(),
                }
            }
        };
        let result = self.hold_or_answer(socket, &mut served, message);
        self.served = Some(served);
        result
    }

    fn hold_or_answer(
        &self,
        socket: &mut Socket<'_>,
        served: &mut Served<'a>,
        message: Message,
    ) -> Result<(), Ending> {
        self.answer_held(socket, served)?;
        match begin_connect(self.bayeux, &served.client, &message, "websocket") {
            Err(refused) => send(socket, &[refused]),
            Ok(at_once)
                if at_once || super::asks_not_to_wait(&message) || !served.waiting.is_empty() =>
            {
                let out = std::mem::take(&mut served.waiting);
                let answer =
                    finish_connect(self.bayeux, &served.client, &message, out, socket.counters);
                send(socket, &answer)
            }
            Ok(_) => {
                let stats = &self.lab.stats;
                let parked = stats.try_hold(&stats.parked, self.lab.config.max_parked);
                served.held = Some(HeldConnect {
                    message,
                    due: Instant::now() + self.bayeux.settings.timeout,
                    _parked: parked,
                });
                Ok(())
            }
        }
    }
}
