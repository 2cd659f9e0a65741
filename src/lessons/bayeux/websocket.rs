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
//! client lives. As chapter 12, one thread per socket, the connection's: it parks on the
//! client's queue and feed (`wait_once`), and the socket watcher's notice reaches it there as
//! a nudge. Woken by the notice, it reads the batches that came and answers every message but
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
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::ws::{close_frame, drain, next_frame, WatchedSocket};
use crossbeam_channel::{bounded, Sender};
use serde_json::{json, Value};
use std::io;
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;

/// `/cometd` with `Upgrade: websocket`: our checks (the page's `Origin`), then the handshake
/// every WebSocket endpoint shares (`ws::accept`), then the session.
pub fn upgrade(lab: &Lab, bayeux: &Bayeux, request: Request) -> io::Result<()> {
    let counters = lab.count("bayeux");
    let client = lab.client(&request);
    let foreign = request
        .header("Origin")
        .is_some_and(|origin| !lab.is_own_origin(origin, &client));
    let checked = match foreign {
        true => Err((
            403,
            "this Origin may not use the lab's Bayeux server".into(),
        )),
        false => Ok(()),
    };
    let Some(((), upgraded)) = lab.accept_websocket(request, checked)? else {
        return Ok(()); // refused, and answered
    };
    let config = crate::ws::config(lab.config.max_body);
    let (socket, id, _place) = upgraded.into_watched_websocket(config);
    log::debug!("ws {id} is a bayeux websocket");
    let mut c = Conversation {
        lab,
        bayeux,
        socket,
        counters: &counters,
        id,
        served: None,
        wake_line: Arc::default(),
        last_heard: Instant::now(),
    };
    let why = converse(&mut c);
    log::debug!("ws {id} (bayeux) done: {why}");
    // The socket is going: the client is not holding a connect any more, and expires unless
    // it connects again (on a new socket, or over HTTP).
    if let Some(served) = c.served.take() {
        if served.held.is_some() {
            super::let_go_of_connect(bayeux, &served.client);
        }
    }
    let _ = c.socket.close(Some(close_frame(CloseCode::Normal, "")));
    let _ = c.socket.flush();
    let _ = c.socket.get_ref().stream().shutdown(Shutdown::Both);
    Ok(())
}

/// One Bayeux WebSocket's conversation: what its thread owns or borrows.
struct Conversation<'a> {
    lab: &'a Lab,
    bayeux: &'a Bayeux,
    socket: WatchedSocket,
    counters: &'a LessonCounters,
    id: u64,
    /// The client this socket serves, from its first connect on it: one at a time.
    served: Option<Served<'a>>,
    /// The served client's queue, where the watcher's notice wakes a thread parked on it.
    wake_line: Arc<Mutex<Option<Sender<Outgoing>>>>,
    /// When the client last sent a batch: a live one connects at least once per timeout.
    last_heard: Instant,
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
fn send(c: &mut Conversation<'_>, messages: &[Message]) -> io::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let text = Value::Array(messages.iter().cloned().map(Value::Object).collect()).to_string();
    let bytes = text.len();
    // BLOCKS: while the client's receive buffer and our send buffer are full, up to
    // --write-timeout.
    if let Err(e) = c.socket.send(tungstenite::Message::text(text)) {
        crate::ws::count_if_slow(&c.lab.stats, &e);
        return Err(io::Error::other(e));
    }
    c.counters.wrote(crate::ws::frame_size(bytes));
    Ok(())
}

/// Batches as they come, deliveries as they come, connects held and answered, until the
/// socket ends. Returns why it ended.
fn converse(c: &mut Conversation<'_>) -> String {
    // Batches that came with the handshake: no notice will come for them.
    if let Err(why) = read_batches(c) {
        return why;
    }
    let (tell, noticed) = bounded::<()>(1);
    let wake_line = c.wake_line.clone();
    let watch = c.socket.get_ref().watch(&c.lab.watcher, move || {
        let _ = tell.try_send(());
        // A thread parked on the client's queue hears it as a nudge.
        if let Some(queue) = wake_line.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = queue.try_send(Outgoing::Wake);
        }
    });
    let watch = match watch {
        Ok(watch) => watch,
        Err(e) => return format!("could not watch the socket: {e}"),
    };
    // A live client connects at least once per timeout: silent far longer, it has gone.
    let settings = &c.bayeux.settings;
    let silence = settings.timeout + settings.max_interval + Duration::from_secs(10);
    loop {
        let silent_at = c.last_heard + silence;
        match c.served.as_ref() {
            Some(served) => {
                let client = served.client.clone();
                let due = served
                    .held
                    .as_ref()
                    .map_or(silent_at, |h| h.due.min(silent_at));
                // BLOCKS: until a delivery, the watcher's notice (a nudge), the held
                // connect's timeout, or the client's end.
                let woken = wait_once(&client, due);
                if let Err(e) = deliver(c, woken) {
                    return format!("write failed: {e}");
                }
            }
            None => {
                // BLOCKS: until the watcher's notice (the client's first connect is to come),
                // or the silence is too long.
                let _ = crate::workarounds::recv_deadline(&noticed, silent_at);
            }
        }
        if c.socket.get_ref().noticed() {
            if let Err(why) = read_batches(c) {
                return why;
            }
            watch.again();
        } else if Instant::now() >= c.last_heard + silence {
            return "the client went silent".into();
        }
    }
}

/// What woke the thread on the client's queue or feed.
fn deliver(c: &mut Conversation<'_>, woken: Woken) -> io::Result<()> {
    let Some(mut served) = c.served.take() else {
        return Ok(());
    };
    let result = match woken {
        Woken::Deliveries(deliveries) if served.acks => {
            served.waiting.extend(deliveries);
            // Bounded as the client's queue is: a client that stops connecting while
            // deliveries pile up is a slow consumer, and goes.
            if served.waiting.len() > super::QUEUE {
                let why = "slow consumer (deliveries waiting for a connect)";
                c.bayeux.forget(&served.client, why);
                served.waiting.clear();
                Ok(())
            } else {
                answer_held(c, &mut served)
            }
        }
        Woken::Deliveries(deliveries) => {
            c.counters.delivered(deliveries.len());
            send(c, &deliveries)
        }
        // A newer connect over HTTP takes over: answer this one now. (A nudge is also the
        // watcher's notice: the caller reads.)
        Woken::Nudged if served.client.state().superseded => answer_held(c, &mut served),
        Woken::Nudged => Ok(()),
        Woken::TimeUp
            if served
                .held
                .as_ref()
                .is_some_and(|h| Instant::now() >= h.due) =>
        {
            answer_held(c, &mut served)
        }
        Woken::TimeUp => Ok(()),
        Woken::Ended => {
            // The client is gone: its held connect is answered, and the socket may serve
            // another (one that handshakes again on it).
            let result = match served.held.take() {
                Some(connect) => {
                    let answer = finish_connect(
                        c.bayeux,
                        &served.client,
                        &connect.message,
                        vec![],
                        c.counters,
                    );
                    send(c, &answer)
                }
                None => Ok(()),
            };
            *c.wake_line.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return result;
        }
    };
    c.served = Some(served);
    result
}

/// Answer the held connect, if any, with the deliveries waiting for it.
fn answer_held(c: &mut Conversation<'_>, served: &mut Served<'_>) -> io::Result<()> {
    let Some(connect) = served.held.take() else {
        return Ok(());
    };
    let out = std::mem::take(&mut served.waiting);
    let answer = finish_connect(c.bayeux, &served.client, &connect.message, out, c.counters);
    send(c, &answer)
}

/// Every batch that is there, answered at once but for its connect, which is held
/// (`take_connect`). `Ok` once the rest has not come yet; `Err` why the socket ends.
fn read_batches(c: &mut Conversation<'_>) -> Result<(), String> {
    let id = c.id;
    loop {
        // Never blocks: one read of the bytes the watcher saw, else `None`.
        let Some(frame) = next_frame(&mut c.socket) else {
            return Ok(());
        };
        c.last_heard = Instant::now();
        let text = match frame {
            Ok(tungstenite::Message::Text(text)) => text,
            Ok(tungstenite::Message::Close(_)) => {
                // tungstenite has queued the echo of the client's close: send it, and end.
                let _ = c.socket.flush();
                return Err("the client closed the socket".into());
            }
            Ok(_) => continue,
            Err(tungstenite::Error::Capacity(e)) => {
                log::debug!("ws {id} (bayeux): message too large: {e}");
                let _ = c
                    .socket
                    .close(Some(close_frame(CloseCode::Size, "message too large")));
                let _ = c.socket.flush();
                drain(c.socket.get_ref().stream(), id);
                return Err("a message too large".to_string());
            }
            Err(e) => return Err(format!("read ended: {e}")),
        };
        let batch = match message::parse_batch(text.as_str()) {
            Ok(batch) if batch.len() > message::MAX_BATCH => {
                let _ = send(c, &[refusal("413::batch_too_large")]);
                continue;
            }
            Ok(batch) => batch,
            Err(message::BadBatch(why)) => {
                c.counters.error();
                log::debug!("ws {id} (bayeux) batch refused: {why}");
                let _ = send(c, &[refusal("400::batch_invalid")]);
                continue;
            }
        };
        let (mut replies, connect) = process_messages(c.lab, c.bayeux, batch, "websocket");
        // A client that disconnected (in this batch or before) no longer holds the socket.
        if c.served.as_ref().is_some_and(|s| s.client.state().gone) {
            let _ = deliver(c, Woken::Ended);
        }
        // The batch's other replies first, then its connect.
        let connect = match connect {
            Some((client, connect))
                if c.served.as_ref().is_some_and(|s| s.client.id != client.id) =>
            {
                let name = "socket_serves_another_client";
                replies.push(message::error(&connect, 400, name, None));
                None
            }
            other => other,
        };
        if let Err(e) = send(c, &replies) {
            return Err(format!("write failed: {e}"));
        }
        if let Some((client, connect)) = connect {
            if let Err(e) = take_connect(c, client, connect) {
                return Err(format!("write failed: {e}"));
            }
        }
    }
}

/// A `/meta/connect`: the one held before it is answered first; this one is answered at once
/// (the first, one that asks not to wait, one with deliveries waiting) or held until its
/// timeout.
fn take_connect(c: &mut Conversation<'_>, client: Arc<Client>, message: Message) -> io::Result<()> {
    let mut served = match c.served.take() {
        Some(served) => served,
        None => {
            *c.wake_line.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.queue_tx.clone());
            let acks = client.state().acks;
            Served {
                acks,
                client,
                held: None,
                waiting: Vec::new(),
            }
        }
    };
    let result = hold_or_answer(c, &mut served, message);
    c.served = Some(served);
    result
}

fn hold_or_answer<'a>(
    c: &mut Conversation<'a>,
    served: &mut Served<'a>,
    message: Message,
) -> io::Result<()> {
    answer_held(c, served)?;
    match begin_connect(c.bayeux, &served.client, &message, "websocket") {
        Err(refused) => send(c, &[refused]),
        Ok(at_once)
            if at_once || super::asks_not_to_wait(&message) || !served.waiting.is_empty() =>
        {
            let out = std::mem::take(&mut served.waiting);
            let answer = finish_connect(c.bayeux, &served.client, &message, out, c.counters);
            send(c, &answer)
        }
        Ok(_) => {
            let stats = &c.lab.stats;
            let parked = stats.try_hold(&stats.parked, c.lab.config.max_parked);
            served.held = Some(HeldConnect {
                message,
                due: Instant::now() + c.bayeux.settings.timeout,
                _parked: parked,
            });
            Ok(())
        }
    }
}

/// A batch that could not be read, answered as CometD does: one unsuccessful message.
fn refusal(error: &str) -> Message {
    let Value::Object(message) = json!({ "successful": false, "error": error }) else {
        unreachable!("an object")
    };
    message
}
