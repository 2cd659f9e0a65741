//! The Atmosphere protocol as atmosphere.js 5 speaks it: what its query string says, the
//! handshake message, and message framing with `X-Atmosphere-TrackMessageSize`.
//!
//! ```text
//! GET /atmosphere/lab?X-Atmosphere-tracking-id=0&X-Atmosphere-Framework=5.0.7
//!     &X-Atmosphere-Transport=streaming&X-Atmosphere-TrackMessageSize=true&X-atmo-protocol=true
//! 41|6f1c…e2|60000|X|                ← the handshake, length-prefixed: tracking id, heartbeat, padding
//! 27|{"data":"hello","id":12}        ← each message: its length, '|', the message
//! 1|X                                ← a heartbeat: the padding alone, which the client skips
//! ```

use crate::http::Query;

/// The padding the handshake announces; a message that is exactly this is a heartbeat, both
/// ways (the client sends it too, every heartbeat interval).
pub const PADDING: &str = "X";
/// The client's heartbeat interval the handshake announces (its pushes of `X`).
pub const CLIENT_HEARTBEAT_MS: u64 = 60_000;

/// The four transports atmosphere.js knows (webtransport needs HTTP/3: not here), and the
/// old clients' `close` notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Sse,
    Streaming,
    LongPolling,
    Close,
}

impl Transport {
    pub fn parse(text: &str) -> Option<Transport> {
        Some(match text {
            "websocket" => Transport::WebSocket,
            "sse" => Transport::Sse,
            "streaming" => Transport::Streaming,
            "long-polling" => Transport::LongPolling,
            "close" => Transport::Close,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Streaming => "streaming",
            Transport::LongPolling => "long-polling",
            Transport::Close => "close",
        }
    }
}

/// What a request's query string says (atmosphere.js 5 puts every `X-Atmosphere-*` value
/// there, even for the HTTP transports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// `"0"` until the handshake has named one.
    pub tracking_id: String,
    pub transport: Transport,
    /// `X-atmo-protocol=true`: a handshake message first, and heartbeats.
    pub protocol: bool,
    /// `X-Atmosphere-TrackMessageSize=true`: every message prefixed with its length.
    pub track_size: bool,
    /// `X-Heartbeat-Server=N`: the client asks the server for a heartbeat every N seconds
    /// (1 to 300) on a connection that is quiet; `None`: the lab's `--heartbeat`.
    pub server_heartbeat: Option<std::time::Duration>,
}

impl Params {
    pub fn parse(query: &Query) -> Result<Params, String> {
        let transport = query.get("X-Atmosphere-Transport").unwrap_or("");
        let Some(transport) = Transport::parse(transport) else {
            return Err(format!(
                "X-Atmosphere-Transport must be websocket, sse, streaming, long-polling or \
                 close, not {transport:?}"
            ));
        };
        let tracking_id = query.get("X-Atmosphere-tracking-id").unwrap_or("0");
        let well_formed = tracking_id.len() <= 64
            && tracking_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if tracking_id.is_empty() || !well_formed {
            return Err("X-Atmosphere-tracking-id is 0 or the id the server gave".into());
        }
        let server_heartbeat = match query.get("X-Heartbeat-Server") {
            None => None,
            Some(text) => match crate::http::whole_number(text) {
                Some(seconds @ 1..=300) => Some(std::time::Duration::from_secs(seconds)),
                _ => return Err("X-Heartbeat-Server is a number of seconds, 1 to 300".into()),
            },
        };
        Ok(Params {
            tracking_id: tracking_id.to_string(),
            transport,
            protocol: query.get("X-atmo-protocol") == Some("true"),
            track_size: query.get("X-Atmosphere-TrackMessageSize") == Some("true"),
            server_heartbeat,
        })
    }
}

/// The first message on a connection with the protocol on: `tracking-id|heartbeat-ms|padding|`.
pub fn handshake(tracking_id: &str) -> String {
    format!("{tracking_id}|{CLIENT_HEARTBEAT_MS}|{PADDING}|")
}

/// One message as the client will split it: with size tracking, `LENGTH|MESSAGE`, where the
/// length counts UTF-16 code units, because the client measures with JavaScript's
/// `String.length` and cuts with `substring` (Java's `String.length()` counts the same way).
pub fn frame(message: &str, track_size: bool) -> String {
    if track_size {
        format!("{}|{message}", message.encode_utf16().count())
    } else {
        message.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_names_the_id_the_heartbeat_and_the_padding() {
        assert_eq!(handshake("abc"), "abc|60000|X|");
        // atmosphere.js splits on '|' and takes the first three fields.
        let message = handshake("abc");
        let fields: Vec<&str> = message.split('|').collect();
        assert_eq!(fields, ["abc", "60000", "X", ""]);
    }

    #[test]
    fn a_tracked_message_counts_utf16_units_not_bytes() {
        assert_eq!(frame("hello", true), "5|hello");
        assert_eq!(frame("hello", false), "hello");
        // "é" is 2 bytes, 1 unit; "😀" is 4 bytes, 2 units (a surrogate pair).
        assert_eq!(frame("é😀", true), "3|é😀");
        // A '|' inside the message is fine: the length says where it ends.
        assert_eq!(frame("a|b", true), "3|a|b");
    }

    #[test]
    fn params_come_from_the_query_string() {
        let query = Query::parse(
            "X-Atmosphere-tracking-id=0&X-Atmosphere-Framework=5.0.7\
             &X-Atmosphere-Transport=long-polling&X-atmo-protocol=true",
        );
        let params = Params::parse(&query).unwrap();
        assert_eq!(params.tracking_id, "0");
        assert_eq!(params.transport, Transport::LongPolling);
        assert!(params.protocol);
        assert!(!params.track_size);
    }

    #[test]
    fn a_bad_transport_or_tracking_id_is_refused() {
        for query in [
            "X-Atmosphere-Transport=carrier-pigeon",
            "",
            "X-Atmosphere-Transport=sse&X-Atmosphere-tracking-id=",
            "X-Atmosphere-Transport=sse&X-Atmosphere-tracking-id=%3Cscript%3E",
        ] {
            assert!(Params::parse(&Query::parse(query)).is_err(), "{query}");
        }
    }
}
