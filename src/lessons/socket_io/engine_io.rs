//! Engine.IO v4 packets: the transport layer under Socket.IO, one character of type and a
//! payload.
//!
//! ```text
//! 0{"sid":"...","upgrades":["websocket"],...}   open      (server → client, first)
//! 1                                             close
//! 2  / 2probe                                   ping      (the server pings in v4)
//! 3  / 3probe                                   pong
//! 4hello                                        message   (a Socket.IO packet inside)
//! 5                                             upgrade   (client, over the new WebSocket)
//! 6                                             noop      (ends a held GET during upgrade)
//! bAQID                                         binary message, base64 (polling only)
//! ```
//!
//! Over polling several packets share one body, separated by the record separator `\x1e`;
//! over WebSocket each packet is one frame, and binary packets are binary frames.

use data_encoding::BASE64;
use std::fmt;

/// The record separator between packets in a polling body.
pub const SEPARATOR: char = '\x1e';

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Open(String),
    Close,
    Ping(String),
    Pong(String),
    Message(String),
    Binary(Vec<u8>),
    Upgrade,
    Noop,
}

/// A packet that is not Engine.IO: the session that sent it is closed.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPacket(pub String);

impl fmt::Display for BadPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an Engine.IO packet: {}", self.0)
    }
}

impl Packet {
    /// The text form: a WebSocket text frame, or one record of a polling body. Binary
    /// packets become `b` + base64 (the WebSocket transport sends them as binary frames).
    pub fn encode(&self) -> String {
        match self {
            Packet::Open(json) => format!("0{json}"),
            Packet::Close => "1".into(),
            Packet::Ping(data) => format!("2{data}"),
            Packet::Pong(data) => format!("3{data}"),
            Packet::Message(text) => format!("4{text}"),
            Packet::Binary(bytes) => format!("b{}", BASE64.encode(bytes)),
            Packet::Upgrade => "5".into(),
            Packet::Noop => "6".into(),
        }
    }

    /// One packet from its text form.
    pub fn decode(text: &str) -> Result<Packet, BadPacket> {
        let mut chars = text.chars();
        let kind = chars.next().ok_or_else(|| BadPacket("empty".into()))?;
        let rest = chars.as_str();
        Ok(match kind {
            '0' => Packet::Open(rest.into()),
            '1' => Packet::Close,
            '2' => Packet::Ping(rest.into()),
            '3' => Packet::Pong(rest.into()),
            '4' => Packet::Message(rest.into()),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            'b' => Packet::Binary(
                BASE64
                    .decode(rest.as_bytes())
                    .map_err(|_| BadPacket("binary packet with bad base64".into()))?,
            ),
            other => return Err(BadPacket(format!("unknown packet type {other:?}"))),
        })
    }
}

/// A polling body: the packets, separated by `\x1e`.
pub fn encode_payload(packets: &[Packet]) -> String {
    let records: Vec<String> = packets.iter().map(Packet::encode).collect();
    records.join(&SEPARATOR.to_string())
}

/// Every packet of a polling body (a POST from the client).
pub fn decode_payload(body: &str) -> Result<Vec<Packet>, BadPacket> {
    body.split(SEPARATOR).map(Packet::decode).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_type_round_trips() {
        let packets = [
            Packet::Open(r#"{"sid":"x"}"#.into()),
            Packet::Close,
            Packet::Ping("probe".into()),
            Packet::Pong(String::new()),
            Packet::Message("2[\"hi\"]".into()),
            Packet::Binary(vec![1, 2, 3]),
            Packet::Upgrade,
            Packet::Noop,
        ];
        for packet in packets {
            assert_eq!(Packet::decode(&packet.encode()), Ok(packet));
        }
    }

    #[test]
    fn binary_packets_are_base64_after_a_b() {
        assert_eq!(Packet::Binary(vec![1, 2, 3, 4]).encode(), "bAQIDBA==");
        assert_eq!(
            Packet::decode("bAQIDBA=="),
            Ok(Packet::Binary(vec![1, 2, 3, 4]))
        );
        assert!(Packet::decode("b!!").is_err());
    }

    #[test]
    fn a_payload_is_split_on_the_record_separator() {
        let body = "4hello\x1e2\x1ebAQID";
        let packets = decode_payload(body).unwrap();
        assert_eq!(
            packets,
            [
                Packet::Message("hello".into()),
                Packet::Ping(String::new()),
                Packet::Binary(vec![1, 2, 3])
            ]
        );
        assert_eq!(encode_payload(&packets), body);
    }

    #[test]
    fn unknown_types_and_empty_records_are_refused() {
        assert!(Packet::decode("").is_err());
        assert!(Packet::decode("9").is_err());
        assert!(decode_payload("4a\x1e\x1e4b").is_err());
    }
}
