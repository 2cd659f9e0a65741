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
//!   (time passes: the connect is held by the writer, parked on the client's queue and feed)
//! ◄ [{"channel":"/lab/events","data":{"data":"At …","id":7}}]   ← a delivery, at once
//!   (time passes: the advised timeout)
//! ◄ [{"channel":"/meta/connect","successful":true,"id":"4",…}]   ← the connect, at its timeout
//! ```
//!
//! The same messages as over HTTP (`process_messages`), on one socket for as long as the
//! client lives. As chapter 12, two threads: `ws-N` reads batches and answers every message
//! but the connect at once; the writer `ws-N-writer` takes each `/meta/connect`, holds it for
//! the advised timeout (counted as parked), and meanwhile sends each delivery the moment it
//! comes, as CometD's own server does. Under the ack extension deliveries ride only on connect
//! answers, numbered batches as over HTTP (CometD's `metaConnectDeliveryOnly`), so a client
//! that reconnects is sent again what it never acknowledged.

use super::{
    begin_connect, finish_connect, message, process_messages, wait_once, Bayeux, Client, Message,
    Outgoing, Woken,
};
use crate::connection::Request;
use crate::lab::Lab;
use crate::stats::LessonCounters;
use crate::ws::{close_frame, drain, ReadOnly};
use serde_json::{json, Value};
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::Role;
use tungstenite::WebSocket;

/// What the reader hands the writer: the connect to take next, and whether the socket is
/// closing.
#[derive(Default)]
struct Handover {
    connect: Mutex<Option<Message>>,
    closing: AtomicBool,
}

/// The write half, shared: the reader writes its replies, the writer its deliveries.
type Writer = Mutex<WebSocket<TcpStream>>;

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
    let (socket, id, _place) = upgraded.into_websocket(crate::ws::config(lab.config.max_body));
    let read_half = socket.get_ref().try_clone()?;
    // A live client connects at least once per timeout: silent far longer, it has gone.
    let settings = &bayeux.settings;
    let silence = settings.timeout + settings.max_interval + Duration::from_secs(10);
    read_half.set_read_timeout(Some(silence))?;
    let write_half = socket.get_ref().try_clone()?;
    drop(socket);
    let config = crate::ws::config(lab.config.max_body);
    let reader = WebSocket::from_raw_socket(ReadOnly(read_half), Role::Server, Some(config));
    let writer = Mutex::new(WebSocket::from_raw_socket(
        write_half,
        Role::Server,
        Some(crate::ws::writer_config(lab.config.max_body)),
    ));
    log::debug!("ws {id} is a bayeux websocket");
    read_batches(lab, bayeux, reader, &writer, id, &counters);
    let mut writer = writer.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writer.close(Some(close_frame(CloseCode::Normal, "")));
    let _ = writer.flush();
    let _ = writer.get_ref().shutdown(Shutdown::Both);
    Ok(())
}

/// Send `messages` as one frame, a JSON array.
fn send(writer: &Writer, messages: &[Message], counters: &LessonCounters) -> io::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let text = Value::Array(messages.iter().cloned().map(Value::Object).collect()).to_string();
    let bytes = text.len();
    let mut socket = writer.lock().unwrap_or_else(|p| p.into_inner());
    // BLOCKS: while the client's receive buffer and our send buffer are full, up to
    // --write-timeout.
    socket
        .send(tungstenite::Message::text(text))
        .map_err(io::Error::other)?;
    counters.wrote(crate::ws::frame_size(bytes));
    Ok(())
}

/// The reader (`ws-N`): each text frame a batch, answered at once but for its connect, which
/// goes to the writer of that client (started with the first connect, and again for a client
/// that handshook anew on this socket).
fn read_batches(
    lab: &Lab,
    bayeux: &Bayeux,
    mut reader: WebSocket<ReadOnly>,
    writer: &Writer,
    id: u64,
    counters: &LessonCounters,
) {
    let handover = Handover::default();
    thread::scope(|scope| {
        let mut current: Option<(Arc<Client>, ScopedJoinHandle<'_, ()>)> = None;
        let ending = loop {
            // BLOCKS: until the client sends a frame, or the socket closes or stays silent.
            let text = match reader.read() {
                Ok(tungstenite::Message::Text(text)) => text,
                Ok(tungstenite::Message::Close(_)) => break "the client closed the socket".into(),
                Ok(_) => continue,
                Err(tungstenite::Error::Capacity(e)) => {
                    log::debug!("ws {id} (bayeux): message too large: {e}");
                    drain(&reader.get_ref().0, id);
                    break "a message too large".to_string();
                }
                Err(e) => break format!("read ended: {e}"),
            };
            let batch = match message::parse_batch(text.as_str()) {
                Ok(batch) if batch.len() > message::MAX_BATCH => {
                    let error = "413::batch_too_large";
                    let _ = send(writer, &[refusal(error)], counters);
                    continue;
                }
                Ok(batch) => batch,
                Err(message::BadBatch(why)) => {
                    counters.error();
                    log::debug!("ws {id} (bayeux) batch refused: {why}");
                    let _ = send(writer, &[refusal("400::batch_invalid")], counters);
                    continue;
                }
            };
            let (mut replies, connect) = process_messages(lab, bayeux, batch, "websocket");
            // The batch's other replies first, then its connect to the writer.
            let connect = match connect {
                Some((client, connect))
                    if current
                        .as_ref()
                        .is_some_and(|(c, w)| c.id != client.id && !w.is_finished()) =>
                {
                    let name = "socket_serves_another_client";
                    replies.push(message::error(&connect, 400, name, None));
                    None
                }
                other => other,
            };
            if let Err(e) = send(writer, &replies, counters) {
                break format!("write failed: {e}");
            }
            if let Some((client, connect)) = connect {
                // One live client per socket (checked above); a new writer for a new client
                // once the last one's has ended (it handshook again on this socket).
                if current.as_ref().is_none_or(|(c, _)| c.id != client.id) {
                    if let Some((_, old)) = current.take() {
                        let _ = old.join();
                    }
                    match spawn_writer(scope, lab, bayeux, &client, &handover, writer, id) {
                        Ok(handle) => current = Some((client.clone(), handle)),
                        Err(e) => break format!("no writer thread: {e}"),
                    }
                }
                *handover.connect.lock().unwrap_or_else(|p| p.into_inner()) = Some(connect);
                let _ = client.queue_tx.try_send(Outgoing::Wake);
            }
        };
        log::debug!("ws {id} (bayeux) reader done: {ending}");
        handover.closing.store(true, Ordering::SeqCst);
        if let Some((client, handle)) = current {
            let _ = client.queue_tx.try_send(Outgoing::Wake);
            // BLOCKS: until the writer has given back its held connect and ended.
            let _ = handle.join();
        }
    });
}

/// A batch that could not be read, answered as CometD does: one unsuccessful message.
fn refusal(error: &str) -> Message {
    let Value::Object(message) = json!({ "successful": false, "error": error }) else {
        unreachable!("an object")
    };
    message
}

fn spawn_writer<'scope>(
    scope: &'scope Scope<'scope, '_>,
    lab: &'scope Lab,
    bayeux: &'scope Bayeux,
    client: &Arc<Client>,
    handover: &'scope Handover,
    writer: &'scope Writer,
    id: u64,
) -> io::Result<ScopedJoinHandle<'scope, ()>> {
    let client = client.clone();
    thread::Builder::new()
        .name(format!("ws-{id}-writer"))
        .spawn_scoped(scope, move || {
            let _thread = lab.stats.websocket_threads.enter();
            let counters = lab.stats.lesson("bayeux");
            let ending = write_deliveries(lab, bayeux, &client, handover, writer, &counters);
            if let Err(e) = &ending {
                // Ends the reader too.
                let socket = writer.lock().unwrap_or_else(|p| p.into_inner());
                let _ = socket.get_ref().shutdown(Shutdown::Both);
                if crate::http::is_write_timeout(e) {
                    lab.stats
                        .slow_consumers
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            log::debug!("ws {id} (bayeux) writer for {} done: {ending:?}", client.id);
        })
}

/// A connect the writer holds: the message, when it is due, its place among the parked.
struct HeldConnect<'lab> {
    message: Message,
    due: Instant,
    _parked: Option<crate::stats::Held<'lab>>,
}

/// The writer (`ws-N-writer`): takes each connect the reader hands over, holds it until the
/// advised timeout, and sends deliveries as they come (under the ack extension, with the
/// connect's answer instead).
fn write_deliveries(
    lab: &Lab,
    bayeux: &Bayeux,
    client: &Client,
    handover: &Handover,
    writer: &Writer,
    counters: &LessonCounters,
) -> io::Result<()> {
    let acks = client.state().acks;
    let mut held: Option<HeldConnect> = None;
    // Under the ack extension: deliveries waiting for the next connect answer.
    let mut waiting: Vec<Message> = Vec::new();
    loop {
        if handover.closing.load(Ordering::SeqCst) {
            // The socket is going: the client is not holding a connect any more, and expires
            // unless it connects again (on a new socket, or over HTTP).
            if held.take().is_some() {
                super::let_go_of_connect(bayeux, client);
            }
            return Ok(());
        }
        let next = handover
            .connect
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(message) = next {
            // A new connect while one is held: the held one is answered first.
            if let Some(connect) = held.take() {
                let out = std::mem::take(&mut waiting);
                let answer = finish_connect(bayeux, client, &connect.message, out, counters);
                send(writer, &answer, counters)?;
            }
            match begin_connect(bayeux, client, &message, "websocket") {
                Err(refused) => send(writer, &[refused], counters)?,
                Ok(at_once)
                    if at_once || super::asks_not_to_wait(&message) || !waiting.is_empty() =>
                {
                    let out = std::mem::take(&mut waiting);
                    send(
                        writer,
                        &finish_connect(bayeux, client, &message, out, counters),
                        counters,
                    )?;
                }
                Ok(_) => {
                    let parked = lab.stats.try_hold(&lab.stats.parked, lab.config.max_parked);
                    held = Some(HeldConnect {
                        message,
                        due: Instant::now() + bayeux.settings.timeout,
                        _parked: parked,
                    });
                }
            }
        }
        let due = held
            .as_ref()
            .map_or(Instant::now() + Duration::from_secs(3600), |h| h.due);
        // BLOCKS: until a delivery, a nudge from the reader (a connect, the socket closing),
        // the held connect's timeout, or the client's end.
        match wait_once(client, due) {
            Woken::Deliveries(deliveries) if acks => {
                waiting.extend(deliveries);
                // Bounded as the client's queue is: a client that stops connecting while
                // deliveries pile up is a slow consumer, and goes.
                if waiting.len() > super::QUEUE {
                    bayeux.forget(client, "slow consumer (deliveries waiting for a connect)");
                    waiting.clear();
                    continue;
                }
                if let Some(connect) = held.take() {
                    let out = std::mem::take(&mut waiting);
                    let answer = finish_connect(bayeux, client, &connect.message, out, counters);
                    send(writer, &answer, counters)?;
                }
            }
            Woken::Deliveries(deliveries) => {
                counters.delivered(deliveries.len());
                send(writer, &deliveries, counters)?;
            }
            Woken::Nudged => {
                // A newer connect over HTTP takes over: answer this one now.
                if client.state().superseded {
                    if let Some(connect) = held.take() {
                        let out = std::mem::take(&mut waiting);
                        let answer =
                            finish_connect(bayeux, client, &connect.message, out, counters);
                        send(writer, &answer, counters)?;
                    }
                }
            }
            Woken::TimeUp => {
                if let Some(connect) = held.take() {
                    let out = std::mem::take(&mut waiting);
                    let answer = finish_connect(bayeux, client, &connect.message, out, counters);
                    send(writer, &answer, counters)?;
                }
            }
            Woken::Ended => {
                if let Some(connect) = held.take() {
                    let answer = finish_connect(bayeux, client, &connect.message, vec![], counters);
                    send(writer, &answer, counters)?;
                }
                return Ok(());
            }
        }
    }
}
