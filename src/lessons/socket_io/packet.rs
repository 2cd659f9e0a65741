//! Socket.IO v5 packets: what travels inside an Engine.IO message.
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON>]
//!
//! 0/lab,{"name":"ada"}                 CONNECT to /lab with an auth payload
//! 0/lab,{"sid":"…","pid":"…"}          its answer
//! 2/lab,["publish","hi"]               EVENT
//! 2/lab,7["publish","hi"]              EVENT asking for an ack (id 7)
//! 3/lab,7[{"id":12}]                   ACK 7
//! 51-["upload",{"_placeholder":true,"num":0}]   BINARY_EVENT, one attachment to follow
//! 4/random,{"message":"Invalid namespace"}      CONNECT_ERROR
//! 1/lab,                               DISCONNECT
//! ```
//!
//! The main namespace `/` is written by leaving it out. Binary attachments travel as their own
//! Engine.IO binary messages right after the packet, in order; the JSON holds placeholders.

use serde_json::Value;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    pub kind: Kind,
    pub namespace: String,
    pub ack_id: Option<u64>,
    pub data: Option<Value>,
    /// Binary attachments that follow (binary kinds only).
    pub attachments: usize,
}

/// Not a Socket.IO packet, or one whose payload does not fit its type: the connection ends.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPacket(pub &'static str);

impl fmt::Display for BadPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a Socket.IO packet: {}", self.0)
    }
}

/// Event names the protocol keeps for itself; a client may not emit them.
/// The most binary attachments one packet may announce: the real parser's `maxAttachments`
/// (socket.io-parser 4). More is a parse error, and the session closes.
pub const MAX_ATTACHMENTS: u64 = 10;

const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

impl Packet {
    pub fn new(kind: Kind, namespace: &str, data: Option<Value>) -> Packet {
        Packet {
            kind,
            namespace: namespace.into(),
            ack_id: None,
            data,
            attachments: 0,
        }
    }

    /// An EVENT (or BINARY_EVENT when there are attachments) with these arguments.
    pub fn event(namespace: &str, args: Vec<Value>, attachments: usize) -> Packet {
        let kind = if attachments > 0 {
            Kind::BinaryEvent
        } else {
            Kind::Event
        };
        Packet {
            attachments,
            ..Packet::new(kind, namespace, Some(Value::Array(args)))
        }
    }

    /// The ACK (or BINARY_ACK) answering `ack_id`.
    pub fn ack(namespace: &str, ack_id: u64, args: Vec<Value>, attachments: usize) -> Packet {
        let kind = if attachments > 0 {
            Kind::BinaryAck
        } else {
            Kind::Ack
        };
        Packet {
            ack_id: Some(ack_id),
            attachments,
            ..Packet::new(kind, namespace, Some(Value::Array(args)))
        }
    }

    pub fn encode(&self) -> String {
        let mut out = (self.kind as u8).to_string();
        if matches!(self.kind, Kind::BinaryEvent | Kind::BinaryAck) {
            out.push_str(&format!("{}-", self.attachments));
        }
        if self.namespace != "/" {
            out.push_str(&self.namespace);
            out.push(',');
        }
        if let Some(id) = self.ack_id {
            out.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        out
    }

    pub fn decode(text: &str) -> Result<Packet, BadPacket> {
        let kind = match text.as_bytes().first() {
            Some(b'0') => Kind::Connect,
            Some(b'1') => Kind::Disconnect,
            Some(b'2') => Kind::Event,
            Some(b'3') => Kind::Ack,
            Some(b'4') => Kind::ConnectError,
            Some(b'5') => Kind::BinaryEvent,
            Some(b'6') => Kind::BinaryAck,
            _ => return Err(BadPacket("unknown packet type")),
        };
        let mut rest = &text[1..];
        let mut attachments = 0;
        if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
            let (count, after) = rest
                .split_once('-')
                .ok_or(BadPacket("binary packet without an attachment count"))?;
            attachments = crate::http::whole_number(count)
                .filter(|&n| n <= MAX_ATTACHMENTS)
                .ok_or(BadPacket("bad attachment count"))? as usize;
            rest = after;
        }
        let mut namespace = "/".to_string();
        if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            namespace = rest[..end].to_string();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let ack_id = match digits {
            0 => None,
            _ => Some(
                crate::http::whole_number(&rest[..digits]).ok_or(BadPacket("ack id too large"))?,
            ),
        };
        rest = &rest[digits..];
        let data = match rest {
            "" => None,
            json => Some(serde_json::from_str(json).map_err(|_| BadPacket("payload is not JSON"))?),
        };
        let packet = Packet {
            kind,
            namespace,
            ack_id,
            data,
            attachments,
        };
        packet.check_payload()?;
        let binary = matches!(packet.kind, Kind::BinaryEvent | Kind::BinaryAck);
        if let Some(data) = packet.data.as_ref().filter(|_| binary) {
            if !placeholders_fit(data, packet.attachments) {
                // socket.io-parser's "illegal attachments": the client disconnects with a
                // parse error, and the reference server closes the connection.
                return Err(BadPacket(
                    "a placeholder names an attachment that does not come",
                ));
            }
        }
        Ok(packet)
    }

    /// The payload each type allows (as socket.io-parser checks it).
    fn check_payload(&self) -> Result<(), BadPacket> {
        let ok = match (self.kind, &self.data) {
            (Kind::Connect, None | Some(Value::Object(_))) => true,
            (Kind::Disconnect, None) => true,
            (Kind::ConnectError, Some(Value::Object(_) | Value::String(_))) => true,
            (Kind::Event | Kind::BinaryEvent, Some(Value::Array(args))) => match args.first() {
                Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                Some(Value::Number(_)) => true,
                _ => false,
            },
            (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(BadPacket("payload does not fit the packet type"))
        }
    }

    /// An EVENT's name and arguments.
    pub fn event_name(&self) -> Option<&str> {
        match &self.data {
            Some(Value::Array(args)) => args.first().and_then(Value::as_str),
            _ => None,
        }
    }

    /// The arguments after an EVENT's name, or all of an ACK's.
    pub fn args(&self) -> Vec<Value> {
        let args = match &self.data {
            Some(Value::Array(args)) => args.clone(),
            _ => Vec::new(),
        };
        match self.kind {
            Kind::Event | Kind::BinaryEvent => args.into_iter().skip(1).collect(),
            _ => args,
        }
    }
}

/// Every placeholder (`{"_placeholder":true,"num":N}`) in `data` names one of `attachments`
/// attachments (0 to `attachments` − 1), as socket.io-parser's `reconstructPacket` demands of a
/// binary packet. (A packet that is not binary is not reconstructed: its placeholders are
/// plain objects.)
fn placeholders_fit(data: &Value, attachments: usize) -> bool {
    match data {
        Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => map
            .get("num")
            .and_then(Value::as_u64)
            .is_some_and(|num| num < attachments as u64),
        Value::Object(map) => map.values().all(|v| placeholders_fit(v, attachments)),
        Value::Array(items) => items.iter().all(|v| placeholders_fit(v, attachments)),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn at_most_ten_attachments_as_the_real_parser() {
        let ten = Packet::decode(r#"510-["x"]"#).unwrap();
        assert_eq!(ten.attachments, 10);
        assert!(Packet::decode(r#"511-["x"]"#).is_err());
        assert!(Packet::decode(r#"664-["x"]"#).is_err());
    }

    #[test]
    fn the_main_namespace_is_left_out_and_others_end_with_a_comma() {
        let p = Packet::event("/", vec![json!("hi"), json!(1)], 0);
        assert_eq!(p.encode(), r#"2["hi",1]"#);
        let p = Packet::new(Kind::Connect, "/lab", Some(json!({"sid": "a"})));
        assert_eq!(p.encode(), r#"0/lab,{"sid":"a"}"#);
        assert_eq!(
            Packet::new(Kind::Disconnect, "/lab", None).encode(),
            "1/lab,"
        );
    }

    #[test]
    fn ack_ids_and_attachments_are_read_and_written() {
        let text = r#"52-/lab,12["up",{"_placeholder":true,"num":0}]"#;
        let p = Packet::decode(text).unwrap();
        assert_eq!(p.kind, Kind::BinaryEvent);
        assert_eq!(p.attachments, 2);
        assert_eq!(p.namespace, "/lab");
        assert_eq!(p.ack_id, Some(12));
        assert_eq!(p.event_name(), Some("up"));
        let p = Packet::decode(r#"52-789["x"]"#).unwrap();
        assert_eq!(p.ack_id, Some(789));
        assert_eq!(p.encode(), r#"52-789["x"]"#);
        let ack = Packet::ack("/", 456, vec![json!(1)], 0);
        assert_eq!(ack.encode(), "3456[1]");
    }

    #[test]
    fn a_placeholder_past_the_attachments_is_refused_as_the_real_parser_does() {
        assert!(Packet::decode(r#"51-["up",{"_placeholder":true,"num":0}]"#).is_ok());
        for text in [
            r#"51-["up",{"_placeholder":true,"num":1}]"#,
            r#"51-["up",{"_placeholder":true,"num":-1}]"#,
            r#"51-["up",{"_placeholder":true}]"#,
            r#"52-["up",[{"x":{"_placeholder":true,"num":2}}]]"#,
        ] {
            assert!(Packet::decode(text).is_err(), "{text}");
        }
        assert!(Packet::decode(r#"2["up",{"_placeholder":true,"num":0}]"#).is_ok());
    }

    #[test]
    fn a_namespace_without_a_comma_ends_the_packet() {
        let p = Packet::decode("0/custom").unwrap();
        assert_eq!(p.namespace, "/custom");
        assert_eq!(p.data, None);
        let p = Packet::decode("1/custom").unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_str()),
            (Kind::Disconnect, "/custom")
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        for bad in [
            "",
            "4abc",                          // CONNECT_ERROR with a payload that is not JSON
            "9",                             // unknown type
            "2{}",                           // an event must be an array
            "2[]",                           // ...with a name
            r#"2abc["message-with-ack",1]"#, // an ack id must be digits
            r#"2["connect"]"#,               // reserved
            "0[1]",                          // CONNECT takes an object
            "1{}",                           // DISCONNECT takes nothing
            "5[\"x\"]",                      // binary without a count
            "599999999-[\"x\"]",
            "2999999999999999999999[\"x\"]",
        ] {
            assert!(Packet::decode(bad).is_err(), "{bad:?} accepted");
        }
    }
}
