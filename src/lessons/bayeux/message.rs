//! Bayeux 1.0 messages and channels: the JSON the CometD client and the lab exchange.
//!
//! ```text
//! [{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"],"id":"1"}]
//! [{"channel":"/meta/handshake","successful":true,"clientId":"Zk…","version":"1.0",
//!   "supportedConnectionTypes":["long-polling","callback-polling"],"advice":{…},"id":"1"}]
//! [{"channel":"/meta/subscribe","subscription":"/chat/*","clientId":"Zk…","id":"3"}]
//! [{"channel":"/chat/room1","data":{"text":"hi"},"clientId":"Zk…","id":"4"}]    ← a publish
//! [{"channel":"/chat/room1","successful":true,"id":"4"}]                          ← its ack
//! [{"channel":"/chat/room1","data":{"text":"hi"}}]                                 ← a delivery
//! ```
//!
//! A request body is one message or an array of them; every answer is an array. Channels are
//! paths: `/meta/**` belongs to the protocol, `/service/**` answers only the sender, anything
//! else is broadcast. A subscription may end in `/*` (one more segment) or `/**` (any depth).

use serde_json::{json, Map, Value};

/// One message, as a JSON object (Bayeux messages carry many optional fields; the lab reads
/// the few it needs and echoes the `id`).
pub type Message = Map<String, Value>;

/// A whole batch that is not Bayeux: answered 400 as a whole.
#[derive(Debug, PartialEq, Eq)]
pub struct BadBatch(pub &'static str);

/// The most messages one request may carry (a larger batch gets 413).
pub const MAX_BATCH: usize = 100;

/// A batch as either transport receives it: its messages, or the one unsuccessful message
/// CometD answers a batch it cannot take with, and its status (413 too many messages, 400
/// not a batch of messages).
pub fn read_batch(text: &str) -> Result<Vec<Message>, (u16, Message)> {
    let (status, error) = match parse_batch(text) {
        Ok(batch) if batch.len() <= MAX_BATCH => return Ok(batch),
        Ok(_) => (413, "413::batch_too_large"),
        Err(BadBatch(why)) => {
            log::debug!("bayeux batch refused: {why}");
            (400, "400::batch_invalid")
        }
    };
    let mut refusal = Message::new();
    refusal.insert("successful".into(), json!(false));
    refusal.insert("error".into(), json!(error));
    Err((status, refusal))
}

/// A request body: one message or an array of them, each an object with a `channel`.
pub fn parse_batch(body: &str) -> Result<Vec<Message>, BadBatch> {
    let value: Value = serde_json::from_str(body).map_err(|_| BadBatch("the body is not JSON"))?;
    let items = match value {
        Value::Array(items) => items,
        Value::Object(object) => vec![Value::Object(object)],
        _ => {
            return Err(BadBatch(
                "Bayeux messages are an object or an array of objects",
            ))
        }
    };
    if items.is_empty() {
        return Err(BadBatch("an empty batch"));
    }
    items
        .into_iter()
        .map(|item| match item {
            Value::Object(message) => Ok(message),
            _ => Err(BadBatch("every message is a JSON object")),
        })
        .collect()
}

/// A message's channel, if it is a valid channel name.
pub fn channel(message: &Message) -> Option<&str> {
    message
        .get("channel")
        .and_then(Value::as_str)
        .filter(|c| is_channel(c))
}

/// `/a/b/c`: segments of letters, digits and `-_.!~*'()`; wildcards only as a whole last
/// segment (`*` or `**`), and only in subscriptions.
pub fn is_channel(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    segments.iter().enumerate().all(|(i, segment)| {
        let wildcard = *segment == "*" || *segment == "**";
        let plain = !segment.is_empty()
            && segment.len() <= 64
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!~'()".contains(&b));
        plain || (wildcard && i == segments.len() - 1)
    }) && name.len() <= 256
}

pub fn is_wildcard(name: &str) -> bool {
    name.ends_with("/*") || name.ends_with("/**")
}

/// Does the subscription `pattern` (a channel, or one ending in `/*` or `/**`) cover `channel`?
pub fn matches(pattern: &str, channel: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix("/**") {
        return channel
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1);
    }
    if let Some(prefix) = pattern.strip_suffix("/*") {
        return channel
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|last| !last.is_empty() && !last.contains('/'));
    }
    pattern == channel
}

/// The reply to `message` on its channel: `successful`, and its `id` echoed.
pub fn reply(message: &Message, successful: bool) -> Message {
    let mut reply = Message::new();
    reply.insert(
        "channel".into(),
        message.get("channel").cloned().unwrap_or(json!(null)),
    );
    reply.insert("successful".into(), json!(successful));
    if let Some(id) = message.get("id") {
        reply.insert("id".into(), id.clone());
    }
    reply
}

/// A failed reply with Bayeux's error string, `CODE::name` (CometD's names, in snake case:
/// `402::session_unknown`), and the advice to follow.
pub fn error(message: &Message, code: u16, name: &str, reconnect: Option<&str>) -> Message {
    denied(message, code, "", name, reconnect)
}

/// `error` with the middle part Bayeux's error string has room for, its arguments: CometD
/// puts the reason there (`403:read_only:publish_denied`).
pub fn denied(
    message: &Message,
    code: u16,
    reason: &str,
    name: &str,
    reconnect: Option<&str>,
) -> Message {
    let mut reply = reply(message, false);
    reply.insert("error".into(), json!(format!("{code}:{reason}:{name}")));
    if let Some(reconnect) = reconnect {
        reply.insert(
            "advice".into(),
            json!({ "reconnect": reconnect, "interval": 0 }),
        );
    }
    reply
}

/// A delivery of `data` on `channel` to a subscriber.
pub fn delivery(channel: &str, data: Value) -> Message {
    let mut message = Message::new();
    message.insert("channel".into(), json!(channel));
    message.insert("data".into(), data);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wildcard_covers_one_segment_and_two_cover_any_depth() {
        assert!(matches("/chat/*", "/chat/room1"));
        assert!(!matches("/chat/*", "/chat/room1/x"));
        assert!(!matches("/chat/*", "/chat"));
        assert!(!matches("/chat/*", "/chatter/x"));
        assert!(matches("/chat/**", "/chat/room1/x"));
        assert!(matches("/chat/**", "/chat/room1"));
        assert!(!matches("/chat/**", "/chat"));
        assert!(!matches("/chat/**", "/chatroom/a"));
        assert!(matches("/lab/events", "/lab/events"));
        assert!(matches("/**", "/lab/events"));
    }

    #[test]
    fn channel_names_are_paths_with_wildcards_only_at_the_end() {
        for good in [
            "/chat/room1",
            "/a",
            "/chat/*",
            "/**",
            "/meta/connect",
            "/x-y_z.1",
        ] {
            assert!(is_channel(good), "{good}");
        }
        for bad in [
            "chat", "/", "/chat/", "//x", "/a/*/b", "/a b", "/a/**x", "/ünï", "/a?b",
        ] {
            assert!(!is_channel(bad), "{bad}");
        }
    }

    #[test]
    fn a_batch_is_an_object_or_an_array_of_objects() {
        assert_eq!(parse_batch(r#"{"channel":"/a"}"#).unwrap().len(), 1);
        assert_eq!(
            parse_batch(r#"[{"channel":"/a"},{"channel":"/b"}]"#)
                .unwrap()
                .len(),
            2
        );
        for bad in ["", "x", "[]", "[1]", "\"/a\"", "[{\"channel\":\"/a\"},2]"] {
            assert!(parse_batch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_echo_the_id_and_errors_carry_code_and_advice() {
        let message = parse_batch(r#"{"channel":"/meta/connect","id":"7"}"#)
            .unwrap()
            .remove(0);
        let e = error(&message, 402, "Unknown client", Some("handshake"));
        assert_eq!(
            Value::Object(e),
            json!({"channel": "/meta/connect", "successful": false, "id": "7",
                   "error": "402::Unknown client", "advice": {"reconnect": "handshake", "interval": 0}})
        );
    }
}
